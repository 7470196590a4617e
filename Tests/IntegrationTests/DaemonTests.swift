import Foundation
import SyncSystem
import Testing

/// A unix datagram socket standing in for systemd's $NOTIFY_SOCKET: collects what the daemon reports.
final class NotifyListener {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let ok = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard ok else { throw FixtureError("cannot bind \(path)") }
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Waits (bounded) for a datagram containing `line`; returns every datagram seen meanwhile.
    func waitFor(_ line: String, seconds: Int = 10) -> (found: Bool, seen: [String]) {
        var seen: [String] = []
        let deadline = Date().addingTimeInterval(TimeInterval(seconds))
        while Date() < deadline {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 1, 200) > 0 else { continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { continue }
            let text = String(decoding: buffer[0..<n], as: UTF8.self)
            seen.append(text)
            if text.split(separator: "\n").contains(Substring(line)) { return (true, seen) }
        }
        return (false, seen)
    }
}

/// Starts `words` with extra environment, stdout and stderr to `log`; returns its pid. The child keeps no other
/// descriptor of this process (see `spawnProcess`): a long-lived one must not hold another test's pipes open.
func spawnDaemon(_ words: [String], env: [String: String], log: String) throws -> pid_t {
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    do {
        return try spawnProcess(words, environment: environment, stdin: .null, stdout: .append(log), stderr: .append(log))
    } catch {
        throw FixtureError("cannot start \(words[0]): \(error)")
    }
}

/// fs.inotify.max_queued_events: how many events the kernel holds for an inotify instance before it overflows.
let queuedEventLimit = Int((try? String(contentsOfFile: "/proc/sys/fs/inotify/max_queued_events", encoding: .utf8))?
    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 16384

/// Creates `path` with open, write and close, three inotify events (FileManager may write aside and rename).
func writeRaw(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw FixtureError("cannot create \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    guard write(fd, text, text.utf8.count) == text.utf8.count else { throw FixtureError("cannot write \(path)") }
}

/// Waits (bounded) until `condition` holds.
func eventually(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(20_000)
    }
    return condition()
}

@Suite(.serialized)
struct DaemonTests {
    @Test func daemonPushesChangesReportsToSystemdAndStopsCleanly() throws {
        let f = try SyncFixture()
        try f.write("src/train.py", "print(1)\n")
        let config = f.base + "/config"
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let env = ["XDG_CONFIG_HOME": config, "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime]
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        let add = try run(binDirectory() + "/syncctl", ["add", f.project], env: env)
        #expect(add.status == 0, "\(add.stderr)")
        #expect((try? String(contentsOfFile: config + "/syncd/projects", encoding: .utf8)) == f.project + "\n")

        let notify = try NotifyListener(path: f.base + "/notify.sock")
        let log = f.base + "/syncd.log"
        let pid = try spawnDaemon([binDirectory() + "/syncd", "--pull-interval", "1"],
                                  env: env.merging(["NOTIFY_SOCKET": notify.path]) { $1 }, log: log)
        var exited = false
        defer { if !exited { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) } }
        let ready = notify.waitFor("READY=1")
        #expect(ready.found, "no READY=1; saw \(ready.seen)")

        // The first push at start, then every change once quiet: new files, edits, new directories, deletes.
        #expect(eventually { f.read("src/train.py", in: f.remoteProject) == Array("print(1)\n".utf8) })
        try f.write("src/train.py", "print(2)\n")
        try FileManager.default.createDirectory(atPath: f.project + "/data/new/deep", withIntermediateDirectories: true)
        try f.write("data/new/deep/x.bin", randomBytes(50_000, seed: 61))
        #expect(eventually { f.read("src/train.py", in: f.remoteProject) == Array("print(2)\n".utf8) })
        #expect(eventually { f.read("data/new/deep/x.bin", in: f.remoteProject) == randomBytes(50_000, seed: 61) })
        try FileManager.default.removeItem(atPath: f.project + "/data/new")
        #expect(eventually { !FileManager.default.fileExists(atPath: f.remoteProject + "/data/new") })
        // A directory replaced by a file: the paths reported below it are gone, not a reason to fail the push.
        try f.write("data/swap/inner.bin", randomBytes(20_000, seed: 62))
        #expect(eventually { f.read("data/swap/inner.bin", in: f.remoteProject) == randomBytes(20_000, seed: 62) })
        try FileManager.default.removeItem(atPath: f.project + "/data/swap")
        try f.write("data/swap", "a file now\n")
        #expect(eventually { f.read("data/swap", in: f.remoteProject) == Array("a file now\n".utf8) },
                "\((try? String(contentsOfFile: f.base + "/syncd.log", encoding: .utf8))?.suffix(1500) ?? "")")

        // The control socket: push --wait returns once the change is on the remote.
        try f.write("src/waited.py", "w = 1\n")
        let waited = try ctl(["push", f.project, "--wait", "--json"])
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(f.read("src/waited.py", in: f.remoteProject) == Array("w = 1\n".utf8), "on the remote when push --wait returns")
        #expect(try waited.stats().filesChanged <= 1)
        let statusRun = try ctl(["status", "--json"])
        #expect(statusRun.status == 0, "\(statusRun.stderr)")
        let projects = ((try JSONSerialization.jsonObject(with: Data(statusRun.stdout.utf8)) as? [String: Any])?["projects"] as? [[String: Any]]) ?? []
        #expect(projects.first?["project"] as? String == f.project)
        #expect(projects.first?["last_push"] is String)
        #expect((projects.first?["bytes_sent"] as? Int ?? 0) > 50_000)

        // Paused: changes wait (and are counted), push --wait says why, resume sends them.
        #expect(try ctl(["pause", f.project]).status == 0)
        try f.write("src/paused.py", "p = 1\n")
        func pausedStatus() throws -> [String: Any]? {
            ((try JSONSerialization.jsonObject(with: Data(try ctl(["status", "--json"]).stdout.utf8)) as? [String: Any])?["projects"] as? [[String: Any]])?.first
        }
        // Once the watcher has counted the change, it is known and held: not pushed while paused.
        #expect(eventually { ((try? pausedStatus())??["pending_changes"] as? Int ?? 0) >= 1 }, "the change was not counted")
        #expect(try pausedStatus()?["state"] as? String == "paused")
        #expect(f.read("src/paused.py", in: f.remoteProject) == nil, "nothing is pushed while paused")
        let refused = try ctl(["push", f.project, "--wait"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("paused"), "\(refused.stderr)")
        #expect(try ctl(["resume", f.project]).status == 0)
        #expect(eventually { f.read("src/paused.py", in: f.remoteProject) == Array("p = 1\n".utf8) })

        // logs: the kept lines; logs -f: and the new ones as they come.
        let logs = try ctl(["logs"])
        #expect(logs.status == 0, "\(logs.stderr)")
        #expect(logs.stdout.contains("\(f.project): watching"), "\(logs.stdout)")
        let followed = f.base + "/follow.out"
        let follower = try spawnDaemon([binDirectory() + "/syncctl", "logs", "-f"], env: env, log: followed)
        defer { kill(follower, SIGKILL); var s: Int32 = 0; waitpid(follower, &s, 0) }
        // Following once it has shown the kept lines.
        #expect(eventually { ((try? String(contentsOfFile: followed, encoding: .utf8)) ?? "").contains("\(f.project): watching") })
        #expect(try ctl(["pause"]).status == 0)
        #expect(eventually { ((try? String(contentsOfFile: followed, encoding: .utf8)) ?? "").contains("\(f.project): paused") },
                "logs -f did not show the new line")
        #expect(try ctl(["resume"]).status == 0)

        // Another uid is refused by SO_PEERCRED even when the socket is reachable to it.
        if FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser") && getuid() == 0 {
            chmod(runtime, 0o755)
            chmod(runtime + "/syncd", 0o755)
            chmod(runtime + "/syncd/control.sock", 0o777)
            // syncctl of another user does not trust a directory that is not its own (issue 26, item 5)...
            let stranger = try run("/usr/sbin/runuser", ["-u", "nobody", "--", "/usr/bin/env", "XDG_RUNTIME_DIR=\(runtime)",
                                                         binDirectory() + "/syncctl", "status"])
            #expect(stranger.status != 0)
            #expect(stranger.stderr.contains("belongs to uid 0"), "\(stranger.stderr)")
            // ...and a client of another uid that connects anyway is refused by the daemon.
            let script = "s = __import__('socket').socket(__import__('socket').AF_UNIX); s.connect('\(runtime)/syncd/control.sock'); "
                + "s.sendall(b'{\"command\":\"status\"}\\n'); print(s.recv(65536).decode())"
            let raw = try run("/usr/sbin/runuser", ["-u", "nobody", "--", "/usr/bin/env", "python3", "-c", script])
            #expect(raw.stdout.contains("refused: peer uid"), "\(raw.stdout) \(raw.stderr)")
            chmod(runtime + "/syncd", 0o700)
        }

        // A checkpoint written on the remote comes back by the periodic pull, or at once with pull --wait.
        try f.write("checkpoint/c1.pt", randomBytes(100_000, seed: 62), in: f.remoteProject)
        try f.age("checkpoint/c1.pt", in: f.remoteProject)
        #expect(eventually { f.read("checkpoint/c1.pt") == randomBytes(100_000, seed: 62) })
        try f.write("checkpoint/c2.pt", randomBytes(100_000, seed: 63), in: f.remoteProject)
        try f.age("checkpoint/c2.pt", in: f.remoteProject)
        let pulled = try ctl(["pull", f.project, "--wait", "--json"])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(f.read("checkpoint/c2.pt") == randomBytes(100_000, seed: 63), "here when pull --wait returns")

        kill(pid, SIGTERM)
        let stopping = notify.waitFor("STOPPING=1")
        #expect(stopping.found, "no STOPPING=1; saw \(stopping.seen)")
        var status: Int32 = 0
        #expect(eventually { waitpid(pid, &status, WNOHANG) == pid }, "syncd did not exit after SIGTERM")
        exited = true
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 0, "exit status \(status); log: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        let (same, diff) = f.treesMatch(ignoring: [])
        #expect(same, "\(diff)")
    }

    @Test func sigtermDuringAPushFinishesItThenARestartHasNothingLeft() throws {
        let f = try SyncFixture()
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime]
        #expect(try run(binDirectory() + "/syncctl", ["add", f.project], env: env).status == 0)
        for i in 0..<4 { try f.write("data/w\(i).bin", randomBytes(40 << 20, seed: UInt64(70 + i))) }
        let log = f.base + "/syncd.log"
        func start() throws -> pid_t { try spawnDaemon([binDirectory() + "/syncd", "--pull-interval", "60"], env: env, log: log) }
        let first = try start()
        // Wait until the first push is under way, then ask the daemon to stop.
        #expect(eventually(seconds: 10) {
            let r = try? run(binDirectory() + "/syncctl", ["status", "--json"], env: env)
            return r?.stdout.contains("\"syncing\"") == true
        })
        kill(first, SIGTERM)
        var status: Int32 = 0
        #expect(eventually(seconds: 60) { waitpid(first, &status, WNOHANG) == first }, "syncd did not exit after SIGTERM")
        #expect(status == 0, "exit status \(status); log: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        // The push in flight was finished, not abandoned half-way: a restart has nothing left to send.
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
        let second = try start()
        defer { kill(second, SIGKILL); var s: Int32 = 0; waitpid(second, &s, 0) }
        let waited = try run(binDirectory() + "/syncctl", ["push", f.project, "--wait", "--json"], env: env)
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(try waited.stats().chunksSent == 0)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"), "systemd-analyze is not installed"))
    func userUnitVerifies() throws {
        let f = try SyncFixture()
        // The unit a package installs, as `syncctl daemon unit` prints it.
        let unit = f.base + "/syncd.service"
        let printed = try run(binDirectory() + "/syncctl", ["daemon", "unit", "--exec", binDirectory() + "/syncd"])
        #expect(printed.status == 0, "\(printed.stderr)")
        try printed.stdout.write(toFile: unit, atomically: true, encoding: .utf8)
        let home = f.base + "/home"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let r = try run("/usr/bin/systemd-analyze", ["--user", "verify", unit], env: ["HOME": home, "XDG_RUNTIME_DIR": runtime])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "verify complained: \(r.stderr)")
        let text = try String(contentsOfFile: unit, encoding: .utf8)
        for line in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID"] {
            #expect(text.contains(line), "the unit has \(line)")
        }
    }

    @Test func theRunningDaemonHearsAddAndRemoveAndAppliesSettingsEdits() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a\n")
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime]
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        func statusProjects() throws -> [[String: Any]] {
            ((try JSONSerialization.jsonObject(with: Data(try ctl(["status", "--json"]).stdout.utf8)) as? [String: Any])?["projects"] as? [[String: Any]]) ?? []
        }
        let notify = try NotifyListener(path: f.base + "/notify.sock")
        let log = f.base + "/syncd.log"
        func logText() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        let pid = try spawnDaemon([binDirectory() + "/syncd", "--pull-interval", "600"],
                                  env: env.merging(["NOTIFY_SOCKET": notify.path]) { $1 }, log: log)
        defer { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) }
        #expect(notify.waitFor("READY=1").found)
        #expect(try statusProjects().isEmpty)

        // add, with no SIGHUP and no reload: status shows it on return, and an edit is on the remote within a second.
        let added = try ctl(["add", f.project])
        #expect(added.status == 0, "\(added.stderr)")
        #expect(added.stderr.contains("syncd is syncing \(f.project) now"), "\(added.stderr)")
        #expect(try statusProjects().first?["project"] as? String == f.project)
        #expect(eventually { f.read("src/a.py", in: f.remoteProject) != nil }, "\(logText())")
        try f.write("src/b.py", "b\n")
        #expect(eventually(seconds: 1) { f.read("src/b.py", in: f.remoteProject) == Array("b\n".utf8) }, "\(logText())")

        // .syncignore edited: the new rules apply at once.
        try f.write(".syncignore", "*.log\n")
        // A push that waits takes the edit in first (the project is reopened before the next session).
        #expect(try ctl(["push", f.project, "--wait"]).status == 0)
        try f.write("train.log", "noise\n")
        try f.write("src/c.py", "c\n")
        #expect(try ctl(["push", f.project, "--wait"]).status == 0, "\(logText())")
        #expect(f.read("src/c.py", in: f.remoteProject) != nil, "\(logText())")
        #expect(f.read("train.log", in: f.remoteProject) == nil, "ignored after the edit: \(logText())")

        // syncd.yaml edited to another remote: a new link, and the whole project goes there.
        let otherRoot = f.base + "/remote2"
        try FileManager.default.createDirectory(atPath: otherRoot, withIntermediateDirectories: true)
        let yaml = try String(contentsOfFile: f.project + "/syncd.yaml", encoding: .utf8)
        try yaml.replacingOccurrences(of: "local:" + f.remoteRoot, with: "local:" + otherRoot)
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        #expect(eventually(seconds: 5) { f.read("src/c.py", in: otherRoot + "/" + f.name) == Array("c\n".utf8) }, "\(logText())")
        #expect(logText().contains("settings changed"), "\(logText())")

        // remove: the daemon stops syncing it at once.
        let removed = try ctl(["remove", f.project])
        #expect(removed.status == 0, "\(removed.stderr)")
        #expect(removed.stderr.contains("syncd stopped syncing"), "\(removed.stderr)")
        #expect(try statusProjects().isEmpty)
        try f.write("src/d.py", "d\n")
        usleep(500_000)
        #expect(f.read("src/d.py", in: otherRoot + "/" + f.name) == nil)
    }

    @Test func addRefusesADirectoryWithoutConfigAndRemoveNamesUnknownOnes() throws {
        let f = try SyncFixture()
        let env = ["XDG_CONFIG_HOME": f.base + "/config"]
        let bare = f.base + "/bare"
        try FileManager.default.createDirectory(atPath: bare, withIntermediateDirectories: true)
        let add = try run(binDirectory() + "/syncctl", ["add", bare], env: env)
        #expect(add.status == 2)
        #expect(add.stderr.contains("syncd.yaml"), "\(add.stderr)")
        let remove = try run(binDirectory() + "/syncctl", ["remove", bare], env: env)
        #expect(remove.status == 2)
        #expect(remove.stderr.contains("is not in"), "\(remove.stderr)")
    }

    @Test(.enabled(if: queuedEventLimit <= 200_000, "fs.inotify.max_queued_events is too large to overflow in a test"))
    func aBurstLargerThanTheInotifyQueueAndRenamesEndWithIdenticalTrees() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a\n")
        try f.write("src/pkg/m.py", "m\n")
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime]
        #expect(try run(binDirectory() + "/syncctl", ["add", f.project], env: env).status == 0)
        let log = f.base + "/syncd.log"
        func logText() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        let pid = try spawnDaemon([binDirectory() + "/syncd", "--pull-interval", "600"], env: env, log: log)
        defer { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) }
        #expect(eventually { f.read("src/a.py", in: f.remoteProject) != nil })

        // The daemon is stopped (a busy laptop) while more events than the kernel queues arrive: create, modify
        // and close-write per file, in a directory already watched. It finds the overflow when it runs again.
        kill(pid, SIGSTOP)
        let files = queuedEventLimit / 3 + 500
        for i in 0..<files { try writeRaw(f.project + "/src/burst\(i).py", "\(i)\n") }
        try FileManager.default.moveItem(atPath: f.project + "/src/a.py", toPath: f.project + "/src/renamed.py")
        try FileManager.default.moveItem(atPath: f.project + "/src/pkg", toPath: f.project + "/src/pkg2")
        kill(pid, SIGCONT)
        #expect(eventually(seconds: 30) { f.treesMatch().0 }, "\(f.treesMatch().1)\n\(logText())")
        #expect(logText().contains("overflowed"), "\(files) files overflowed the \(queuedEventLimit)-event queue: \(logText())")
        #expect(f.read("src/pkg2/m.py", in: f.remoteProject) == Array("m\n".utf8))
        #expect(f.read("src/a.py", in: f.remoteProject) == nil)

        // A project the daemon does not run: push --wait pushes by itself; pause names the problem.
        let other = try SyncFixture()
        try other.write("x.py", "x\n")
        let own = try run(binDirectory() + "/syncctl", ["push", other.project, "--wait", "--json"], env: env.merging(["XDG_STATE_HOME": other.state]) { $1 })
        #expect(own.status == 0, "\(own.stderr)")
        #expect(other.read("x.py", in: other.remoteProject) == Array("x\n".utf8))
        let pause = try run(binDirectory() + "/syncctl", ["pause", other.project], env: env)
        #expect(pause.status == 1 && pause.stderr.contains("is not registered"), "\(pause.stderr)")
    }
}
