import Chunking
import Foundation
import SyncSystem
import Testing
import Wire

/// Issue 24, item 6: a broken or hostile peer on the transfer path. Its claims (sizes, holes, list lengths,
/// symlink targets) are checked before they cost anything, on both sides.
@Suite(.serialized)
struct HostilePeerTests {
    typealias Agent = AgentHostileInputTests

    /// 32768 hole refs of 4 GiB: 128 TiB of zeros in one 655 KB frame.
    static let holeBomb = (0..<maxListItems).map { _ in ChunkRef(id: .hole, offset: 0, length: UInt32.max) }
    static let holeBombSize = UInt64(maxListItems) * UInt64(UInt32.max)

    /// A file the size of 128 TiB of holes is refused by the agent at once, naming the path, instead of costing
    /// hours of hashing zeros; holes listed beyond a file's declared size end the session.
    @Test func theAgentRefusesAHoleBomb() throws {
        let box = try Agent.Sandbox()
        var messages: [Message] = [Agent.hello(box)]
        messages.append(.fileBegin(FileHeader(op: 1, path: Array("bomb.bin".utf8), permissions: 0o644, mtimeNanos: 0,
                                              size: Self.holeBombSize, digest: ChunkID(low: 1, high: 1), base: .absent,
                                              chunkCount: UInt32(maxListItems))))
        messages.append(.chunkList(op: 1, chunks: Self.holeBomb))
        messages += Agent.fileFrames(op: 2, path: "fine.txt", content: Array("fine".utf8))
        messages.append(.endOfOperations)
        let started = Date()
        let (status, stderr, replies) = try Agent.agent(Agent.frames(messages), timeout: 60)
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(status == 0, "\(stderr)")
        var results: [UInt32: OpResult] = [:]
        for case .result(let r) in replies { results[r.op] = r }
        #expect(results[1]?.status == .failed)
        #expect(results[1]?.message.contains("declared \(Self.holeBombSize) bytes, more than max_file_size") == true,
                "\(String(describing: results[1]))")
        #expect(results[2]?.status == .applied)
        #expect(!FileManager.default.fileExists(atPath: box.project + "/bomb.bin"))

        // A small declared size whose holes run past it: the peer lies, and the session ends saying so.
        var lying: [Message] = [Agent.hello(box)]
        lying.append(.fileBegin(FileHeader(op: 1, path: Array("small.bin".utf8), permissions: 0o644, mtimeNanos: 0, size: 4096,
                                           digest: ChunkID(low: 1, high: 1), base: .absent, chunkCount: 2)))
        lying.append(.chunkList(op: 1, chunks: Array(Self.holeBomb.prefix(2))))
        lying.append(.endOfOperations)
        let r = try Agent.agent(Agent.frames(lying), timeout: 60)
        #expect(r.status == 1)
        #expect(r.stderr.contains("small.bin") && r.stderr.contains("beyond the 4096 bytes"), "\(r.stderr)")
    }

    /// Symlink chains whose every link reads as inside but whose chain resolves outside (`a -> ..`, then a link
    /// through `a`) are refused by the agent, 2 to 5 links long; chains that stay inside are placed.
    @Test func theAgentRefusesSymlinkChainsThatLeaveTheTree() throws {
        let box = try Agent.Sandbox()
        var messages: [Message] = [Agent.hello(box)]
        var op: UInt32 = 0
        func link(_ path: String, _ target: String) {
            op += 1
            messages.append(.symlink(op: op, path: Array(path.utf8), target: Array(target.utf8), base: .absent, force: false))
        }
        for (name, target) in Self.chains { link(name, target) }
        messages.append(.endOfOperations)
        let (status, stderr, replies) = try Agent.agent(Agent.frames(messages))
        #expect(status == 0, "\(stderr)")
        var results: [String: OpResult] = [:]
        for case .result(let r) in replies { results[Self.chains[Int(r.op) - 1].0] = r }
        for (name, _) in Self.chains {
            let escapes = Self.escaping.contains(name)
            #expect(results[name]?.status == (escapes ? .failed : .applied), "\(name): \(String(describing: results[name]))")
            let placed = (try? FileManager.default.destinationOfSymbolicLink(atPath: box.project + "/" + name)) != nil
            #expect(placed == !escapes, "\(name) placed: \(placed)")
        }
        #expect(box.outsideContents.isEmpty)
    }

    /// Links in `out/`: every one reads as inside the project on its own; those in `escaping` resolve outside
    /// through the links before them (2 to 5 links long). The `s` chain of 5 stays inside.
    static let chains: [(String, String)] = [
        ("out/a", ".."), ("out/b", "a/.."),                                          // 2 links
        ("out/q1", ".."), ("out/q2", "q1"), ("out/q3", "q2/.."),                     // 3
        ("out/r1", ".."), ("out/r2", "r1"), ("out/r3", "r2"), ("out/r4", "r3/.."),   // 4
        ("out/t1", ".."), ("out/t2", "t1"), ("out/t3", "t2"), ("out/t4", "t3"), ("out/t5", "t4/../x"),  // 5
        ("out/s1", "s2"), ("out/s2", "s3"), ("out/s3", "s4"), ("out/s4", "s5"), ("out/s5", "../src/a.py"),
    ]
    static let escaping: Set<String> = ["out/b", "out/q3", "out/r4", "out/t5"]
}

/// A fake `local:` agent: a script that writes `frames` (an agent's handshake first) and then reads its input
/// to the end, for the client's side of a hostile peer.
struct FakeAgent {
    static func install(_ f: SyncFixture, frames: [Message]) throws {
        let bytes = AgentHostileInputTests.frames(frames)
        try bytes.write(to: URL(fileURLWithPath: f.base + "/frames.bin"))
        let script = f.base + "/fake-agent"
        try "#!/bin/sh\ncat '\(f.base)/frames.bin'\nexec cat > /dev/null\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        try f.addSetting("agent_path: \(script)")
    }

    static func welcome(_ f: SyncFixture) -> Message {
        .welcome(agentVersion: "fake", projectDirectory: f.remoteProject, instance: String(repeating: "ab", count: 16))
    }
}

@Suite(.serialized)
struct HostileAgentTests {
    /// A remote entry declaring 128 TiB of holes is refused by the pull, naming the path, before anything is
    /// hashed; the pull ends at once.
    @Test func aPullRefusesAHoleBomb() throws {
        let f = try SyncFixture()
        let entry = RemoteEntry(op: 1, path: Array("output/bomb.bin".utf8), state: .file(ChunkID(low: 1, high: 1)), permissions: 0o644,
                                mtimeNanos: 0, size: HostilePeerTests.holeBombSize, chunkCount: UInt32(maxListItems))
        try FakeAgent.install(f, frames: [FakeAgent.welcome(f), .remoteEntry(entry), .chunkList(op: 1, chunks: HostilePeerTests.holeBomb),
                                          .listEnd, .done])
        let started = Date()
        let r = try run(binDirectory() + "/syncctl", ["pull", f.project, "--json"], env: ["XDG_STATE_HOME": f.state], timeout: 60)
        #expect(Date().timeIntervalSince(started) < 30, "the pull took \(Date().timeIntervalSince(started)) s")
        #expect(r.status == 1, "\(r.stderr)")
        let errors = (try? r.json())?["errors"] as? [String] ?? []
        #expect(errors.contains { $0.contains("output/bomb.bin") && $0.contains("max_file_size") }, "\(r.stdout) \(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.project + "/output/bomb.bin"))
    }

    /// Seconds a pull takes to read one entry's chunk list of `frames` full frames, which a fake agent sends
    /// before it ends the session with an error (so nothing after the listing is timed).
    static func listingSeconds(frames: Int) throws -> Double {
        let f = try SyncFixture()
        let count = frames * maxListItems
        let part = Array(repeating: ChunkRef(id: ChunkID(hashing: Array("x".utf8)), offset: 0, length: 1), count: maxListItems)
        let entry = RemoteEntry(op: 1, path: Array("output/long.bin".utf8), state: .file(ChunkID(low: 2, high: 2)), permissions: 0o644,
                                mtimeNanos: 0, size: UInt64(count), chunkCount: UInt32(count))
        try FakeAgent.install(f, frames: [FakeAgent.welcome(f), .remoteEntry(entry)]
                                  + Array(repeating: Message.chunkList(op: 1, chunks: part), count: frames)
                                  + [.error(message: "the fake agent ends here", reason: .other)])
        let started = Date()
        let r = try run(binDirectory() + "/syncctl", ["pull", f.project], env: ["XDG_STATE_HOME": f.state], timeout: 300)
        #expect(r.stderr.contains("the fake agent ends here"), "\(r.stderr)")
        return Date().timeIntervalSince(started)
    }

    /// One entry's chunk list in many frames is read in time linear in its length (each frame used to copy the
    /// list so far: 131 MB of frames took 25 s). Eight times the frames may take at most sixteen times as long
    /// (linear gives eight, less the fixed cost of starting; the copies gave 34 here). The best of two runs each,
    /// so that other tests running meanwhile do not decide it.
    @Test func aLongChunkListCostsLinearTime() throws {
        let short = min(try Self.listingSeconds(frames: 25), try Self.listingSeconds(frames: 25))
        let long = min(try Self.listingSeconds(frames: 200), try Self.listingSeconds(frames: 200))
        #expect(long < short * 16, "25 frames: \(short) s, 200 frames: \(long) s")
    }

    /// The same symlink chains as the agent refuses, on a remote: its agent does not offer those that resolve
    /// outside (reported as skipped), and the others arrive.
    @Test func aPullLeavesSymlinkChainsThatLeaveTheTree() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        #expect(try f.push().status == 0)
        try FileManager.default.createDirectory(atPath: f.remoteProject + "/output/out", withIntermediateDirectories: true)
        for (name, target) in HostilePeerTests.chains {
            try FileManager.default.createSymbolicLink(atPath: f.remoteProject + "/output/" + name, withDestinationPath: target)
        }
        try f.age("output", seconds: 60)
        let r = try f.pull()
        #expect(r.status == 0, "\(r.stderr)")
        let skipped = (try? r.json())?["skipped"] as? [String] ?? []
        for (name, _) in HostilePeerTests.chains {
            let placed = (try? FileManager.default.destinationOfSymbolicLink(atPath: f.project + "/output/" + name)) != nil
            let escapes = HostilePeerTests.escaping.contains(name)
            #expect(placed == !escapes, "output/\(name) placed: \(placed)")
            if escapes { #expect(skipped.contains { $0.hasPrefix("output/\(name):") }, "\(skipped)") }
        }
    }

    /// A hostile agent offering those chains: the pull places the links that stay inside and refuses the others
    /// itself, naming each.
    @Test func aPullRefusesSymlinkChainsAHostileAgentOffers() throws {
        let f = try SyncFixture()
        var frames: [Message] = [FakeAgent.welcome(f), .remoteEntry(RemoteEntry(op: 1, path: Array("output/out".utf8), state: .directory,
                                                                                permissions: 0o755, mtimeNanos: 0, size: 0, chunkCount: 0))]
        for (i, (name, target)) in HostilePeerTests.chains.enumerated() {
            frames.append(.remoteEntry(RemoteEntry(op: UInt32(i + 2), path: Array("output/\(name)".utf8), state: .symlink(Array(target.utf8)),
                                                   permissions: 0o777, mtimeNanos: 0, size: 0, chunkCount: 0)))
        }
        try FakeAgent.install(f, frames: frames + [.listEnd, .done])
        let r = try run(binDirectory() + "/syncctl", ["pull", f.project, "--json"], env: ["XDG_STATE_HOME": f.state], timeout: 60)
        #expect(r.status == 1, "\(r.stderr)")
        let errors = (try? r.json())?["errors"] as? [String] ?? []
        for (name, _) in HostilePeerTests.chains {
            let placed = (try? FileManager.default.destinationOfSymbolicLink(atPath: f.project + "/output/" + name)) != nil
            let escapes = HostilePeerTests.escaping.contains(name)
            #expect(placed == !escapes, "output/\(name) placed: \(placed)")
            if escapes { #expect(errors.contains { $0.hasPrefix("output/\(name):") && $0.contains("after a name") }, "\(errors)") }
        }
    }
}

/// Issue 26, item 6: text from the remote reaches the terminal escaped, as paths do: an agent's error or skip
/// reason holding escape sequences (retitle the terminal, clear the screen, hide a line with a carriage return)
/// is printed with them as `\x1b`, `\r`.
@Suite(.serialized)
struct RemoteTextTests {
    static let hostile = "\u{1B}]0;pwned\u{07}\u{1B}[2J\rall is well"

    @Test func anAgentsSkipReasonAndErrorAreEscaped() throws {
        let f = try SyncFixture()
        try FakeAgent.install(f, frames: [FakeAgent.welcome(f), .skipped(path: Array("output/x".utf8), reason: Self.hostile),
                                          .error(message: Self.hostile, reason: .other)])
        let r = try run(binDirectory() + "/syncctl", ["pull", f.project], env: ["XDG_STATE_HOME": f.state], timeout: 60)
        #expect(r.status != 0)
        #expect(!r.stderr.contains("\u{1B}") && !r.stderr.contains("\r") && !r.stderr.contains("\u{07}"), "raw control characters reached the terminal")
        #expect(r.stderr.contains("\\x1b]0;pwned\\x07\\x1b[2J\\rall is well"), "\(r.stderr.debugDescription)")
    }
}
