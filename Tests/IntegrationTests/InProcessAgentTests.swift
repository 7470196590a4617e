import AgentCore
@testable import Client
import Foundation
import SyncSystem
import Testing
import Transport
import Wire

/// The agent's session on a thread of this process, joined to the client by a pipe pair: client and agent together
/// for tests where the binaries are not the point. No process starts, no binary is hashed, and a test reads the
/// typed `SyncStats` a session returns.
final class InProcessAgent: AgentConnection {
    let stream: ByteStream
    let peerDescription = "in-process agent"
    private let clientEnds: (read: Int32, write: Int32)
    private let thread: pthread_t
    /// How the session ended: nil, or what it threw.
    private let ended = OneShot<String?>()
    private var joined = false

    init(home: String) throws {
        signal(SIGPIPE, SIG_IGN)
        let toAgent = try makePipe(nonBlocking: false), fromAgent = try makePipe(nonBlocking: false)
        clientEnds = (fromAgent.read, toAgent.write)
        stream = FileDescriptorStream(input: fromAgent.read, output: toAgent.write, name: "in-process agent", roundTrip: 0)
        let agentSide = FileDescriptorStream(input: toAgent.read, output: fromAgent.write, name: "client")
        thread = try startThread(name: "agent") { [ended] in
            var account: String?
            do { try AgentSession(stream: agentSide, homeDirectory: home).run() } catch { account = "\(error)" }
            agentSide.closeWrite()
            close(toAgent.read)
            ended.set(account)
        }
    }

    func finish() -> String? {
        stream.closeWrite()
        if !joined {
            joined = true
            pthread_join(thread, nil)
            close(clientEnds.read)
        }
        return ended.current ?? nil
    }

    func terminate() { stream.closeWrite() }
}

extension SyncFixture {
    /// The fixture's project, with its agent in-process.
    func openInProcess() throws -> Project {
        var options = SyncOptions(stateDirectory: state, progress: false)
        let home = base
        options.connectAgent = { try InProcessAgent(home: home) }
        return try Project(directory: project, options: options)
    }

    /// `partSize`: the most changes one part of the push holds (see `PushSession.partSize`).
    func pushInProcess(force: Bool = false, partSize: Int? = nil) throws -> SyncStats {
        let session = PushSession(project: try openInProcess())
        session.force = force
        if let partSize { session.partSize = partSize }
        return try session.run()
    }

    func pullInProcess(force: Bool = false) throws -> SyncStats {
        let session = PullSession(project: try openInProcess())
        session.force = force
        return try session.run()
    }
}

/// Pushes and pulls through an in-process agent, checked on the typed stats.
@Suite(.serialized)
struct InProcessAgentTests {
    @Test func aPushAndAPullRoundTrip() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "print(1)\n")
        try f.write("data/b.bin", [UInt8](repeating: 7, count: 300_000))
        let first = try f.pushInProcess()
        #expect(first.errors.isEmpty, "\(first.errors)")
        let config = try #require(f.read("syncd.yaml")).count
        #expect(first.filesChanged == 3, "the two files and syncd.yaml")
        #expect(first.bytesLogical == UInt64(300_009 + config))
        #expect(f.read("data/b.bin", in: f.remoteProject) == [UInt8](repeating: 7, count: 300_000))

        let again = try f.pushInProcess()
        #expect(again.filesChanged == 0 && again.chunksSent == 0, "a second push sends nothing")

        try f.write("output/run.log", "step 1\n", in: f.remoteProject)
        try f.age("output/run.log")
        let pulled = try f.pullInProcess()
        #expect(pulled.errors.isEmpty, "\(pulled.errors)")
        #expect(pulled.filesChanged == 1)
        #expect(text(f.read("output/run.log")) == "step 1\n")
    }

    /// The three-way check on both sides, end to end: a conflict each way, then settled by force.
    @Test func conflictsEachWayAreTypedAndForceSettlesThem() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "base\n")
        try f.write("gone.txt", "base\n")
        #expect(try f.pushInProcess().errors.isEmpty)
        try f.write("a.txt", "mine\n")
        try f.write("a.txt", "theirs\n", in: f.remoteProject)
        try f.write("gone.txt", "mine\n")
        try FileManager.default.removeItem(atPath: f.remoteProject + "/gone.txt")
        let conflicted = try f.pushInProcess()
        #expect(conflicted.exitCode == 3 && conflicted.failure == .conflict)
        #expect(Set(conflicted.conflictList.map(\.path.description)) == ["a.txt", "gone.txt"])
        #expect(conflicted.conflictList.first { $0.path.description == "gone.txt" }?.message.contains("deleted on the remote") == true)

        let forced = try f.pushInProcess(force: true)
        #expect(forced.conflicts == 0 && forced.errors.isEmpty, "\(forced.conflictList) \(forced.errors)")
        #expect(forced.kept.map(\.path.description) == ["a.txt"], "only the remote's edit is kept aside: \(forced.kept)")
        #expect(text(f.read("gone.txt", in: f.remoteProject)) == "mine\n")

        try f.write("output/m.txt", "remote 1\n", in: f.remoteProject)
        try f.age("output/m.txt")
        #expect(try f.pullInProcess().filesChanged == 1)
        try f.write("output/m.txt", "local\n")
        try f.write("output/m.txt", "remote 2\n", in: f.remoteProject)
        try f.age("output/m.txt", seconds: 5)
        let pullConflict = try f.pullInProcess()
        #expect(pullConflict.conflictList.map(\.path.description) == ["output/m.txt"])
        #expect(pullConflict.conflictList.first?.message.contains("pull --force") == true)
        let forcedPull = try f.pullInProcess(force: true)
        #expect(forcedPull.conflicts == 0 && text(f.read("output/m.txt")) == "remote 2\n")
        #expect(forcedPull.kept.map(\.side) == ["local"])
    }

    /// A whole-tree push compares the walk with the record as it goes, in byte order of the paths (issue 29):
    /// names that sort around the slash (`a`, `a!`, `a.txt`, `a/…`, `a0`), a directory becoming a file, a file
    /// becoming a directory, deletions at the start, middle and end of the order, a path now ignored. The
    /// remote ends up as the tree, and a push after it finds nothing to send.
    @Test func aWholeTreePushMergesTheWalkWithTheRecordInPathOrder() throws {
        let f = try SyncFixture()
        for path in ["a!", "a.txt", "a/x", "a/y/z", "a0/w", "b/inner", "c.dat", "zz/last", "AA"] { try f.write(path, "v1 \(path)\n") }
        let first = try f.pushInProcess()
        #expect(first.errors.isEmpty && first.filesChanged == 10, "\(first.errors) \(first.filesChanged)")
        #expect(first.firstPush?.files == 10)

        let fm = FileManager.default
        try fm.removeItem(atPath: f.project + "/a")            // a directory becomes a file
        try f.write("a", "now a file\n")
        try fm.removeItem(atPath: f.project + "/b/inner")      // a file's directory becomes ... a file
        try fm.removeItem(atPath: f.project + "/b")
        try f.write("b", "b as a file\n")
        try fm.removeItem(atPath: f.project + "/c.dat")        // a file becomes a directory
        try f.write("c.dat/in", "inside\n")
        try fm.removeItem(atPath: f.project + "/AA")           // the first path in byte order goes
        try fm.removeItem(atPath: f.project + "/zz/last")      // and the last
        try f.write("a.txt", "v2\n")
        try f.write(".syncignore", "a0\n")                    // a0/ is left on the remote, and said so
        let second = try f.pushInProcess()
        #expect(second.errors.isEmpty && second.conflicts == 0, "\(second.errors) \(second.conflictList)")
        #expect(second.leftIgnored.map(\.description).sorted() == ["a0", "a0/w"], "\(second.leftIgnored)")
        #expect(second.firstPush == nil)
        for path in ["a", "a!", "a.txt", "b", "c.dat/in", ".syncignore", "syncd.yaml"] {
            #expect(f.read(path, in: f.remoteProject) == f.read(path), "\(path) differs on the remote")
        }
        for gone in ["a/x", "b/inner", "AA", "zz/last"] { #expect(f.read(gone, in: f.remoteProject) == nil, "\(gone) is still on the remote") }
        #expect(f.read("a0/w", in: f.remoteProject) != nil, "ignored now, so left alone")

        let third = try f.pushInProcess()
        #expect(third.filesChanged == 0 && third.filesDeleted == 0 && third.chunksSent == 0, "a push after it sends nothing")
        #expect(third.filesScanned == 9, "a, a!, a.txt, b, c.dat, c.dat/in, zz, .syncignore, syncd.yaml: \(third.filesScanned)")
    }
}
