import Chunking
import Foundation
import SyncSystem
import Testing

/// A command run on a thread of its own, for a test that does something else meanwhile (stalls its link, runs
/// another session).
final class BackgroundRun: @unchecked Sendable {  // `lock` guards result and child
    private let lock = NSLock()
    private let finished = DispatchSemaphore(value: 0)
    private var result: RunResult?
    private var child: RunningChild?

    init(_ body: @escaping @Sendable (@escaping (RunningChild) -> Void) throws -> RunResult) {
        Thread.detachNewThread { [self] in
            let r = (try? body { started in
                self.lock.lock()
                self.child = started
                self.lock.unlock()
            }) ?? RunResult(status: -1, stdout: "", stderr: "could not run")
            lock.lock()
            result = r
            lock.unlock()
            finished.signal()
        }
    }

    /// The process, once started.
    var process: RunningChild? {
        lock.lock()
        defer { lock.unlock() }
        return child
    }

    /// Waits (at most `seconds`) for the command to end.
    func wait(seconds: Double) -> RunResult? {
        guard finished.wait(timeout: .now() + seconds) == .success else { return nil }
        lock.lock()
        defer { lock.unlock() }
        return result
    }
}

/// Issue 24: what a session does when its link stalls, its peer lies or its host is short of descriptors or
/// room, over real SSH where the fault is on the link.
@Suite(.serialized, .enabled(if: sshdAvailable, "needs root and /usr/sbin/sshd"))
struct FaultTests {
    /// The ssh_config of `f` pointing at `port` (the server itself, or a proxy in front of it).
    static func point(_ f: SyncFixture, _ server: SSHServer, at port: Int) throws {
        let config = server.sshConfig().replacingOccurrences(of: "Port \(server.port)", with: "Port \(port)")
        try config.write(toFile: f.base + "/ssh_config", atomically: true, encoding: .utf8)
    }

    /// A push whose link stalls in the middle of a large file, while its agent lives on, is superseded by a push
    /// of a new version over another connection. When the stalled link wakes, the old session goes on writing
    /// what it had: never into the file the new session placed. The final path holds the new version, whole.
    @Test func aSupersededSessionNeverWritesIntoAPlacedFile() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.addSetting("streams: 1")
        let proxy = try CountingProxy(target: server.port, directory: f.base, rateMbit: 120)
        let old = randomBytes(48 << 20, seed: 2401)
        let new = randomBytes(48 << 20, seed: 2402)
        try f.write("data/big.bin", old)
        try Self.point(f, server, at: proxy.port)
        let slow = BackgroundRun { started in try f.sshctl(["push", f.project, "--json"], onStart: started) }
        let remoteData = f.remoteProject + "/data"
        #expect(eventually(seconds: 60) { ResumeTests.partialBytes(in: remoteData) >= 12 << 20 }, "the slow push never got going")
        proxy.stall()
        defer { proxy.wake() }
        // What was already on its way reaches the old agent; then nothing moves on that link.
        usleep(1_500_000)
        try f.write("data/big.bin", new)
        try Self.point(f, server, at: server.port)
        let fast = try f.sshctl(["push", f.project, "--json"])
        #expect(fast.status == 0, "\(fast.stderr)")
        let newDigest = ChunkID(hashing: new)
        func remoteDigest() -> ChunkID? { f.read("data/big.bin", in: f.remoteProject).map { ChunkID(hashing: $0) } }
        #expect(remoteDigest() == newDigest, "the new version is placed")
        proxy.wake()
        let late = slow.wait(seconds: 120)
        #expect(late != nil, "the superseded push never ended")
        #expect(late?.status != 0, "the superseded push cannot succeed: the remote holds a newer version (\(late?.stderr ?? ""))")
        #expect(remoteDigest() == newDigest, "the placed file holds \(remoteDigest()?.hex ?? "nothing"), not the new version whole")
        let again = try f.sshctl(["push", f.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try again.int("files_changed") == 0, "nothing changed since the new version was placed: \(again.stdout)")
        #expect(remoteDigest() == newDigest)
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }
}
