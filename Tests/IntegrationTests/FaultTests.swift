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
        #expect(try again.stats().filesChanged == 0, "nothing changed since the new version was placed: \(again.stdout)")
        #expect(remoteDigest() == newDigest)
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    /// Quick pushes that ask for extra streams and end while those are still connecting (a 70 MB file the remote
    /// holds already, touched, and sparse so that hashing it takes no time): every one exits 0. The extra streams' SSH handshakes used to run on when the push
    /// returned, and `exit` tore libcrypto down under them (SIGSEGV after a complete, successful result).
    @Test func quickPushesWithExtraStreamsExitCleanly() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.addSetting("streams: 3")
        // Sparse (a hole but for its first bytes): hashed in no time, so the push is over before its streams join.
        try f.write("data/weights.bin", randomBytes(4096, seed: 2405))
        #expect(truncate(f.project + "/data/weights.bin", 70 << 20) == 0)
        let first = try f.sshctl(["push", f.project, "--json"])
        #expect(first.status == 0, "\(first.stderr)")
        let rounds = Int(ProcessInfo.processInfo.environment["SYNCD_EXIT_ROUNDS"] ?? "") ?? 300
        var failures: [String] = []
        let path = f.project + "/data/weights.bin"
        for round in 0..<rounds {
            // A new mtime: the file is planned (and streams asked for), then found unchanged on the remote.
            let stamp = Date(timeIntervalSince1970: 1_700_000_000 + Double(round))
            try FileManager.default.setAttributes([.modificationDate: stamp], ofItemAtPath: path)
            let r = try f.sshctl(["push", f.project, "--json"])
            if r.status != 0 { failures.append("round \(round): status \(r.status): \(r.stderr.suffix(300))") }
        }
        #expect(failures.isEmpty, "\(failures.count) of \(rounds) pushes failed: \(failures.prefix(3))")
    }

    /// Whether this machine lets the tests mount a small tmpfs (root, outside a locked-down container).
    static let canMountTmpfs: Bool = {
        let dir = NSTemporaryDirectory() + "syncd-tmpfs-probe-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard (try? run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir]))?.status == 0 else { return false }
        _ = try? run("/bin/umount", [dir])
        return true
    }()

    /// A remote with room for the project but not for two copies of its large file (a 96 MiB tmpfs, a 60 MiB
    /// file): a push killed once most of the file arrived (and once this side had hashed it whole, so the next
    /// push knows its content without reading it) is finished by the next push, which takes over what the dead
    /// one left instead of building a second copy and sends only what the remote lacks (plus 5%). A file there
    /// is no room for fails alone, saying how much room it needs and where, and advises no plain retry.
    @Test(.enabled(if: FaultTests.canMountTmpfs, "needs to mount a tmpfs"))
    func anInterruptedPushResumesOnAFullRemoteDisk() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.addSetting("streams: 1")
        let mounted = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=96m", "tmpfs", f.remoteRoot])
        #expect(mounted.status == 0, "\(mounted.stderr)")
        defer { _ = try? run("/bin/umount", ["-l", f.remoteRoot]) }
        let proxy = try CountingProxy(target: server.port, directory: f.base, rateMbit: 80)
        let big = randomBytes(60 << 20, seed: 2406)
        try f.write("data/big.bin", big)
        try f.write("src/train.py", "print('train')\n")
        try Self.point(f, server, at: proxy.port)
        let first = BackgroundRun { started in try f.sshctl(["push", f.project, "--json"], onStart: started) }
        var arrived = 0
        #expect(eventually(seconds: 60) {
            arrived = ResumeTests.partialBytes(in: f.remoteProject + "/data")
            return arrived >= 45 << 20
        }, "the first push never got going")
        if let process = first.process { kill(process.processIdentifier, SIGKILL) }
        #expect(first.wait(seconds: 30) != nil)
        #expect(eventually(seconds: 15) { Self.agents(of: server).isEmpty }, "the killed push's agent lives on")
        #expect(!FileManager.default.fileExists(atPath: f.remoteProject + "/data/big.bin"), "no partial file at the final path")

        try Self.point(f, server, at: server.port)
        let second = try f.sshctl(["push", f.project, "--json"])
        #expect(second.status == 0, "\(second.stderr)")
        let lacking = Double(big.count - arrived)
        let sent = Double(try second.stats().bytesSent.asInt)
        #expect(sent <= lacking * 1.05 + 256 * 1024, "sent \(Int(sent)) bytes; the remote lacked \(Int(lacking))")
        #expect(f.read("data/big.bin", in: f.remoteProject).map { ChunkID(hashing: $0) } == ChunkID(hashing: big))
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        let leftovers = (try FileManager.default.subpathsOfDirectory(atPath: f.remoteProject)).filter { $0.contains(".syncd-part.") }
        #expect(leftovers.isEmpty, "\(leftovers)")

        // No room for a second large file: it fails alone, naming the room it needs and where.
        try f.write("data/more.bin", randomBytes(60 << 20, seed: 2407))
        try f.write("src/eval.py", "print('eval')\n")
        let full = try f.sshctl(["push", f.project, "--json"])
        #expect(full.status == 1, "\(full.stderr)")
        let errors = (try? full.json())?["errors"] as? [String] ?? []
        #expect(errors.contains { $0.hasPrefix("data/more.bin:") && $0.contains("\(f.remoteProject) is full") && $0.contains("this file needs") && $0.contains("Make room there") },
                "\(errors)")
        #expect(!full.stderr.contains("run the push again"), "\(full.stderr)")
        #expect(f.read("src/eval.py", in: f.remoteProject) == Array("print('eval')\n".utf8), "the rest of the push went on")
    }

    /// The agents serving sessions of `server` (their command lines name its home).
    static func agents(of server: SSHServer) -> [pid_t] {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
        return pids.filter { pid in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
            let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return line.hasPrefix(server.home + "/.local/lib/syncd/agent-")
        }
    }

    /// A push whose link stays open but moves nothing (a frozen proxy) fails once nothing moved for `timeout:`,
    /// naming the host and the wait; the agent on the far side, whose input stopped too, exits within it.
    @Test func aStalledLinkFailsThePushAndTheAgentExits() throws {
        let (server, f, proxy) = try Self.linkThroughProxy(timeout: 3)
        defer { proxy.wake() }
        let r = try Self.pushThenStall(f, proxy, seed: 2403) { #expect(!Self.agents(of: server).isEmpty, "no agent runs for the push") }
        guard let r else { return }
        #expect(r.stderr.contains("127.0.0.1:\(proxy.port)") && r.stderr.contains("the link or the remote stalled"), "\(r.stderr)")
        #expect(eventually(seconds: 15) { Self.agents(of: server).isEmpty }, "the agent lives on: \(Self.agents(of: server))")
        // The link back, the next push completes.
        proxy.wake()
        let again = try f.sshctl(["push", f.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    /// ssh_config's ServerAliveInterval and ServerAliveCountMax are honoured: keepalives go out that often, and
    /// the connection is given up once that many went unanswered, whatever `timeout:` says.
    @Test func unansweredKeepalivesEndTheConnection() throws {
        let (server, f, proxy) = try Self.linkThroughProxy(timeout: 600, sshConfig: "  ServerAliveInterval 1\n  ServerAliveCountMax 3\n")
        defer { proxy.wake() }
        let r = try withExtendedLifetime(server) { try Self.pushThenStall(f, proxy, seed: 2404) }
        guard let r else { return }
        #expect(r.stderr.contains("ServerAliveInterval 1 x ServerAliveCountMax 3"), "\(r.stderr)")
    }

    /// A project reaching its sshd through a wanem link of 80 Mbit/s, with `timeout:` and lines added to its
    /// ssh_config host entry.
    static func linkThroughProxy(timeout: Int, sshConfig extra: String = "") throws -> (SSHServer, SyncFixture, CountingProxy) {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.addSetting("streams: 1")
        try f.addSetting("timeout: \(timeout)")
        let proxy = try CountingProxy(target: server.port, directory: f.base, rateMbit: 80)
        let config = server.sshConfig().replacingOccurrences(of: "Port \(server.port)", with: "Port \(proxy.port)") + extra
        try config.write(toFile: f.base + "/ssh_config", atomically: true, encoding: .utf8)
        return (server, f, proxy)
    }

    /// Pushes a 48 MiB file, stalls the link once 4 MiB arrived (after `beforeStall`), and returns how the push
    /// ended: a failure within 20 s of the stall (nil, recorded as an issue, when it still waited after 60 s).
    static func pushThenStall(_ f: SyncFixture, _ proxy: CountingProxy, seed: UInt64, beforeStall: () -> Void = {}) throws -> RunResult? {
        try f.write("data/big.bin", randomBytes(48 << 20, seed: seed))
        let push = BackgroundRun { started in try f.sshctl(["push", f.project, "--json"], onStart: started) }
        #expect(eventually(seconds: 60) { ResumeTests.partialBytes(in: f.remoteProject + "/data") >= 4 << 20 }, "the push never got going")
        beforeStall()
        proxy.stall()
        let stalled = Date()
        let r = push.wait(seconds: 60)
        #expect(r != nil, "the push still waits on a link that moves nothing")
        guard let r else { return nil }
        #expect(Date().timeIntervalSince(stalled) < 20, "the push took \(Date().timeIntervalSince(stalled)) s to give up")
        #expect(r.status == 1, "\(r.stderr)")
        return r
    }

    /// A remote that stops answering in the middle of a pull (its agent stopped, sshd alive and answering
    /// keepalives) fails the pull once nothing came for `timeout:`.
    @Test func aHungRemoteFailsThePull() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.addSetting("timeout: 3")
        try f.write("src/a.py", "a = 1\n")
        let first = try f.sshctl(["push", f.project, "--json"])
        #expect(first.status == 0, "\(first.stderr)")
        for i in 0..<20_000 { try f.write("output/d\(i / 500)/f\(i).txt", "output \(i)\n", in: f.remoteProject) }
        try f.age("output", seconds: 60)
        let pull = BackgroundRun { started in try f.sshctl(["pull", f.project, "--json"], onStart: started) }
        var stopped: [pid_t] = []
        #expect(eventually(seconds: 30) {
            stopped = Self.agents(of: server)
            return !stopped.isEmpty
        }, "no agent serves the pull")
        for pid in stopped { kill(pid, SIGSTOP) }
        defer { for pid in stopped { kill(pid, SIGKILL); kill(pid, SIGCONT) } }
        let at = Date()
        let r = pull.wait(seconds: 60)
        #expect(r != nil, "the pull still waits on a remote that answers nothing")
        guard let r else { return }
        #expect(Date().timeIntervalSince(at) < 20, "the pull took \(Date().timeIntervalSince(at)) s to give up")
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("nothing came from 127.0.0.1:\(server.port)"), "\(r.stderr)")
    }
}

/// A push killed after the agent placed a file but before its answer came back: the client's record still names
/// what was there before, yet the file there is its own. The next push, with that file edited again (or put back
/// as it was), replaces it without calling it a conflict; a file changed on the remote since still is one.
@Suite struct LostAnswerTests {
    @Test func aFileThisClientPlacedIsNoConflictWhenItsAnswerWasLost() throws {
        let f = try SyncFixture()
        try f.write("a_config.yaml", "lr: 0.1\n")
        try f.write("b_notes.txt", "v1\n")
        try f.write("z_big.bin", randomBytes(160 << 20, seed: 2410))
        var killed = false
        _ = try f.syncctl(["push", f.project, "--json"]) { process in
            killed = eventually(seconds: 60) { f.read("b_notes.txt", in: f.remoteProject) != nil }
            kill(process.processIdentifier, SIGKILL)
        }
        #expect(killed, "the small files were never placed")
        // The killed client's agent sees its input end and goes.
        usleep(300_000)
        try f.write("a_config.yaml", "lr: 0.01\n")
        try f.write("b_notes.txt", "remote edit\n", in: f.remoteProject)
        let r = try f.push()
        #expect(r.status == 3, "\(r.stderr)")
        #expect(try r.count("conflicts") == 1, "only the file changed on the remote: \(r.stdout)")
        #expect(f.read("a_config.yaml", in: f.remoteProject) == Array("lr: 0.01\n".utf8), "its own placement replaced")
        #expect(f.read("b_notes.txt", in: f.remoteProject) == Array("remote edit\n".utf8), "the remote's edit kept")
    }
}

/// Two laptops pushing one project at once (or the daemon and a CLI push): each session builds in files of its
/// own, and the placements take turns, so the remote file is always one laptop's version whole (forced, each
/// keeps the other's aside instead of writing into it).
@Suite struct ConcurrentSessionTests {
    @Test func twoLaptopsPushingOneProjectAtOnceNeverMixTheirFiles() throws {
        let a = try SyncFixture()
        let b = try SyncFixture()
        // b's project is a second laptop's copy of a's: the same remote project.
        try "name: \(a.name)\nremote: local:\(a.remoteRoot)\n".write(toFile: b.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        var versions: Set<ChunkID> = []
        for round in 0..<6 {
            let va = randomBytes(24 << 20, seed: 2500 + UInt64(round)), vb = randomBytes(24 << 20, seed: 2600 + UInt64(round))
            versions.formUnion([ChunkID(hashing: va), ChunkID(hashing: vb)])
            try a.write("data/model.bin", va)
            try b.write("data/model.bin", vb)
            let first = BackgroundRun { started in try a.syncctl(["push", a.project, "--json", "--force"], onStart: started) }
            let second = try b.syncctl(["push", b.project, "--json", "--force"])
            let other = first.wait(seconds: 120)
            #expect(other != nil)
            for r in [second, other].compactMap({ $0 }) {
                #expect([0, 3].contains(r.status), "round \(round): \(r.stderr)")
            }
            let placed = a.read("data/model.bin", in: a.remoteProject).map { ChunkID(hashing: $0) }
            #expect(placed.map { versions.contains($0) } == true, "round \(round): the remote file is no version written")
        }
        let parts = (try FileManager.default.subpathsOfDirectory(atPath: a.remoteProject)).filter { $0.contains(".syncd-part.") }
        #expect(parts.isEmpty, "\(parts)")
    }
}

/// A `local:` agent that misbehaves: the client bounds every wait on it and reports what it found itself.
@Suite struct LocalAgentFaultTests {
    /// An "agent" (a shell script) for `f`: `body` runs with TERM ignored, as an agent that ignores SIGTERM.
    static func fakeAgent(_ f: SyncFixture, _ body: String) throws {
        let path = f.base + "/fake-agent"
        try "#!/bin/sh\ntrap '' TERM\n\(body)\n".write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        try f.addSetting("agent_path: \(path)")
        try f.addSetting("timeout: 2")
    }

    /// An agent that speaks no protocol and ignores SIGTERM: the push reports what it found wrong (not how the
    /// agent was then stopped), and kills the agent when it does not go.
    @Test func anAgentThatIgnoresSigtermDoesNotHoldTheClient() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        try Self.fakeAgent(f, "printf 'GARBAGE!'; exec sleep 600")
        let started = Date()
        let r = try run(binDirectory() + "/syncctl", ["push", f.project], env: ["XDG_STATE_HOME": f.state], timeout: 60)
        #expect(Date().timeIntervalSince(started) < 30, "the push took \(Date().timeIntervalSince(started)) s")
        #expect(r.status == 1)
        #expect(r.stderr.contains("not speaking the syncd protocol"), "\(r.stderr)")
        #expect(!r.stderr.contains("killed by signal"), "\(r.stderr)")
    }

    /// An agent that says nothing at all: the push fails once nothing came for `timeout:`.
    @Test func aSilentAgentFailsThePushWithinTheTimeout() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        try Self.fakeAgent(f, "exec sleep 600")
        let started = Date()
        let r = try run(binDirectory() + "/syncctl", ["push", f.project], env: ["XDG_STATE_HOME": f.state], timeout: 60)
        #expect(Date().timeIntervalSince(started) < 30, "the push took \(Date().timeIntervalSince(started)) s")
        #expect(r.status == 1)
        #expect(r.stderr.contains("nothing came from local agent"), "\(r.stderr)")
    }

    /// A stock host's 1024 descriptors, or fewer: an agent (and a syncctl) held to 256 places a project of 5000
    /// directories, as ImageNet's train/ and val/ have 1000 each, and pulls them back.
    @Test func aLowOpenFileLimitPlacesManyDirectories() throws {
        let f = try SyncFixture()
        let wrapper = f.base + "/agent-256"
        try "#!/bin/sh\nulimit -n 256 || exit 97\nexec \(binDirectory())/syncd-agent \"$@\"\n".write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        try f.addSetting("agent_path: \(wrapper)")
        for d in 0..<5000 { try f.write("data/train/n\(d)/img.jpg", "image \(d)\n") }
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr.prefix(2000))")
        #expect(try r.stats().filesChanged == 5001, "\(r.stdout.prefix(500))")
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        // The other way, with syncctl itself held to 256 too.
        for d in 0..<5000 { try f.write("output/run/e\(d)/metrics.json", "{\"epoch\": \(d)}\n", in: f.remoteProject) }
        try f.age("output", seconds: 60)
        #expect(try run("/usr/bin/find", [f.remoteProject + "/output", "-exec", "touch", "-d", "1 minute ago", "{}", "+"]).status == 0)
        let pull = try run("/bin/sh", ["-c", "ulimit -n 256 && exec \"$0\" pull \"$1\" --json", binDirectory() + "/syncctl", f.project],
                           env: ["XDG_STATE_HOME": f.state])
        #expect(pull.status == 0, "\(pull.stderr.prefix(1500))")
        #expect(f.read("output/run/e4999/metrics.json") == Array("{\"epoch\": 4999}\n".utf8))
        let (again, diffAgain) = f.treesMatch()
        #expect(again, "\(diffAgain)")
    }
}
