import Chunking
@testable import Client
import Foundation
import LocalState
import SyncSystem
import Testing

/// Files larger than what goes unasked are cut while they are sent (wire v5 `streamed`): the agent asks for
/// chunks part by part, the client answers from the bytes it just read, and the end of the list carries the
/// digest. Through the real syncctl and syncd-agent.
@Suite(.serialized)
struct StreamedFileTests {
    /// A push with phase tracing on: the trace says how many chunks were sent from memory and how many read again.
    static func tracedPush(_ f: SyncFixture, _ extra: [String] = []) throws -> RunResult {
        try run(binDirectory() + "/syncctl", ["push", f.project, "--json"] + extra, env: ["XDG_STATE_HOME": f.state, "SYNCD_TRACE": "1"])
    }

    /// (sent from memory, read from their files), from the trace.
    static func chunkSources(_ r: RunResult) -> (memory: Int, files: Int)? {
        guard let line = r.stderr.split(separator: "\n").first(where: { $0.contains("chunks sent from memory") }) else { return nil }
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count >= 2 else { return nil }
        return (numbers[numbers.count - 2], numbers[numbers.count - 1])
    }

    static func mtime(_ path: String) -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else { return -1 }
        return st.st_mtim.tv_sec
    }

    @Test func largeFilesAreReadOnceAndArriveWhole() throws {
        let f = try SyncFixture()
        // Just past the unasked limit, more than one read buffer (8 MiB) of the chunker, and more than the 32 MiB
        // the sender keeps while parts wait for their answers: each is listed in parts.
        var big = randomBytes(40 << 20, seed: 31)
        var middle = randomBytes(9 << 20, seed: 32)
        try f.write("data/small.bin", randomBytes(300_000, seed: 30))
        try f.write("data/middle.bin", middle)
        try f.write("data/big.bin", big)
        let first = try Self.tracedPush(f)
        #expect(first.status == 0, "\(first.stderr)")
        var (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        let sources = Self.chunkSources(first)
        #expect(sources != nil, "the trace names where chunks came from: \(first.stderr)")
        #expect(sources?.files == 0, "every chunk went from the bytes the hasher read")
        #expect((sources?.memory ?? 0) == (try first.stats().chunksSent))
        // The hasher keeps no list of a streamed file; the sender saves the file in the stat cache with the list
        // it sent, whole: every chunk, each where the one before it ended, each the hash of its bytes.
        let cache = try Project(directory: f.project, options: SyncOptions(stateDirectory: f.state + "/syncd", progress: false))
            .openState().loadFiles()
        let cached = cache[try RelativePath("data/big.bin")]
        #expect(cached?.digest == ChunkID(hashing: big) && (cached?.chunks.count ?? 0) > 100, "\(String(describing: cached?.chunks.count))")
        var end: UInt64 = 0
        for c in cached?.chunks ?? [] {
            #expect(c.offset == end && c.id == ChunkID(hashing: Array(big[Int(c.offset)..<(Int(c.offset) + Int(c.length))])))
            end = c.offset + UInt64(c.length)
        }
        #expect(end == UInt64(big.count))

        // An insertion in the middle of one file and an append to another: a few chunks cross, from memory.
        big.insert(contentsOf: randomBytes(1000, seed: 33), at: big.count / 2)
        middle += randomBytes(5000, seed: 34)
        try f.write("data/big.bin", big)
        try f.write("data/middle.bin", middle)
        let edit = try Self.tracedPush(f)
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(try edit.stats().filesChanged == 2)
        #expect(try edit.stats().bytesSent.asInt < 2_000_000, "\(edit.stdout)")
        #expect(Self.chunkSources(edit)?.files == 0)
        (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        #expect(f.read("data/big.bin", in: f.remoteProject) == big)

        // Touched, not changed: the list crosses, no data, and the remote copy takes the new mtime in place.
        let touched = Date(timeIntervalSinceNow: -3600)
        try FileManager.default.setAttributes([.modificationDate: touched], ofItemAtPath: f.project + "/data/big.bin")
        let inode = try FileManager.default.attributesOfItem(atPath: f.remoteProject + "/data/big.bin")[.systemFileNumber] as? Int
        let touch = try f.push()
        #expect(touch.status == 0, "\(touch.stderr)")
        #expect(try touch.stats().chunksSent == 0)
        #expect(try touch.stats().bytesSent.asInt < 100_000, "only the chunk list: \(touch.stdout)")
        #expect(Self.mtime(f.remoteProject + "/data/big.bin") == Self.mtime(f.project + "/data/big.bin"))
        #expect(try FileManager.default.attributesOfItem(atPath: f.remoteProject + "/data/big.bin")[.systemFileNumber] as? Int == inode,
                "the file was left in place, not written again")

        // Moved: the remote moves its copy, nothing crosses but lists.
        try FileManager.default.createDirectory(atPath: f.project + "/moved", withIntermediateDirectories: true)
        try FileManager.default.moveItem(atPath: f.project + "/data/middle.bin", toPath: f.project + "/moved/middle.bin")
        let move = try f.push()
        #expect(move.status == 0, "\(move.stderr)")
        #expect(try move.stats().chunksSent == 0, "\(move.stdout)")
        #expect(try move.stats().filesMoved == 1, "\(move.stdout)")
        (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    @Test func aStreamedFileChangedOnBothSidesWaitsForItsDigest() throws {
        // The agent cannot know a streamed file's digest before its list ends: when the remote copy is not what
        // the last push left, the answer waits for it. The same new content on both sides is no conflict; other
        // content is one, and the remote's version stays.
        let f = try SyncFixture()
        try f.write("data/w.bin", randomBytes(3 << 20, seed: 51))
        #expect(try f.push().status == 0)
        let both = randomBytes(3 << 20, seed: 52)
        try f.write("data/w.bin", both)
        try f.write("data/w.bin", both, in: f.remoteProject)
        let same = try f.push()
        #expect(same.status == 0, "\(same.stderr)")
        #expect(try same.count("conflicts") == 0)
        #expect(try same.stats().chunksSent == 0)

        let local = randomBytes(3 << 20, seed: 53), remote = randomBytes(3 << 20, seed: 54)
        try f.write("data/w.bin", local)
        try f.write("data/w.bin", remote, in: f.remoteProject)
        let clash = try f.push()
        #expect(clash.status == 3, "\(clash.stderr)")
        #expect(try clash.count("conflicts") == 1)
        #expect(f.read("data/w.bin", in: f.remoteProject) == remote)
        let leftovers = (try FileManager.default.subpathsOfDirectory(atPath: f.remoteProject)).filter { $0.contains(".syncd-part.") }
        #expect(leftovers.isEmpty, "\(leftovers)")

        // Forced: the remote's version is kept aside, and the local one placed. The agent could ask for its chunks
        // only once the digest was known, after each part was answered and let go: they are read again.
        let forced = try Self.tracedPush(f, ["--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect((Self.chunkSources(forced)?.files ?? 0) > 0, "\(forced.stderr)")
        #expect(f.read("data/w.bin", in: f.remoteProject) == local)
        let kept = (try FileManager.default.contentsOfDirectory(atPath: f.remoteProject + "/data")).filter { $0.contains("sync-conflict") }
        #expect(kept.count == 1, "\(kept)")
        #expect(kept.first.flatMap { f.read("data/" + $0, in: f.remoteProject) } == remote)
    }
}
