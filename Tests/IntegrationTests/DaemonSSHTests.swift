import Foundation
import SyncSystem
import Testing

/// The daemon against a real sshd: one SSH connection per project kept across sessions, remote files pulled
/// as soon as the agent sees them completed, and a reconnection after the connection drops.
@Suite(.serialized, .enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
struct DaemonSSHTests {
    @Test func keepsOneConnectionPullsCompletedRemoteFilesAtOnceAndReconnects() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.write("src/train.py", "print(1)\n")
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime,
                   "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": ""]
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        #expect(try ctl(["add", f.project]).status == 0)
        let log = f.base + "/syncd.log"
        func logText() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        func connections() -> Int { logText().components(separatedBy: ": connected to ").count - 1 }
        // The periodic pull is far away: whatever comes back below came because the agent reported it.
        let pid = try spawnDaemon([binDirectory() + "/syncd", "--pull-interval", "600"], env: env, log: log)
        var exited = false
        defer { if !exited { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) } }

        #expect(eventually(seconds: 15) { f.read("src/train.py", in: f.remoteProject) == Array("print(1)\n".utf8) }, "\(logText())")
        for i in 0..<3 {
            try f.write("src/edit\(i).py", "e = \(i)\n")
            let waited = try ctl(["push", f.project, "--wait", "--json"])
            #expect(waited.status == 0, "\(waited.stderr)")
            #expect(f.read("src/edit\(i).py", in: f.remoteProject) == Array("e = \(i)\n".utf8))
        }
        #expect(connections() == 1, "pushes share one connection; log:\n\(logText())")
        // A renamed directory: the watcher reports both names; what was below the old one goes.
        try FileManager.default.moveItem(atPath: f.project + "/src", toPath: f.project + "/code")
        let moved = try ctl(["push", f.project, "--wait", "--json"])
        #expect(moved.status == 0, "\(moved.stderr)")
        #expect(f.read("code/edit2.py", in: f.remoteProject) == Array("e = 2\n".utf8))
        #expect(!FileManager.default.fileExists(atPath: f.remoteProject + "/src"), "the old directory is gone on the remote")

        // A checkpoint written on the remote in pieces, open all along: it must never show up here partly
        // written, and must come once closed.
        let content = randomBytes(1_500_000, seed: 93)
        let remotePath = f.remoteProject + "/checkpoint/slow.pt"
        try FileManager.default.createDirectory(atPath: f.remoteProject + "/checkpoint", withIntermediateDirectories: true)
        let fd = open(remotePath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        var sawPartial = false
        for piece in 0..<5 {
            _ = content[(piece * 300_000)..<((piece + 1) * 300_000)].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            for _ in 0..<8 {
                if f.read("checkpoint/slow.pt") != nil { sawPartial = true }
                usleep(50_000)
            }
        }
        close(fd)
        let closed = Date()
        #expect(!sawPartial, "the checkpoint appeared locally while still being written")
        #expect(eventually(seconds: 10) { f.read("checkpoint/slow.pt") == content }, "\(logText())")
        print("remote checkpoint closed → whole on the laptop in \(Int(Date().timeIntervalSince(closed) * 1000)) ms")
        #expect(connections() == 1, "pulls share the connection too")

        // The connection drops (the laptop slept, the network went): the daemon connects again and carries on.
        server.dropConnections()
        #expect(eventually(seconds: 15) { logText().contains("connection to the agent lost") }, "\(logText())")
        try f.write("code/after.py", "after = 1\n")
        #expect(eventually(seconds: 20) { f.read("code/after.py", in: f.remoteProject) == Array("after = 1\n".utf8) }, "\(logText())")
        #expect(connections() == 2, "one reconnection; log:\n\(logText())")
        func status() -> [String: Any] {
            let r = try? ctl(["status", "--json"])
            return (((try? JSONSerialization.jsonObject(with: Data((r?.stdout ?? "").utf8))) as? [String: Any])?["projects"] as? [[String: Any]])?.first ?? [:]
        }
        // status --json says what happened: connected again, idle, nothing pending, the pull's 1.5 MB came in.
        #expect(eventually(seconds: 5) { status()["state"] as? String == "idle" })
        let project = status()
        #expect(project["connected"] as? Bool == true)
        #expect(project["state"] as? String == "idle")
        #expect(project["pending_changes"] as? Int == 0)
        #expect(project["last_push"] is String && project["last_pull"] is String)
        #expect((project["bytes_received"] as? Int ?? 0) > 1_500_000, "\(project)")
        #expect((project["conflicts"] as? [Any])?.isEmpty == true)

        kill(pid, SIGTERM)
        var code: Int32 = 0
        #expect(eventually { waitpid(pid, &code, WNOHANG) == pid }, "syncd did not exit after SIGTERM")
        exited = true
        if ProcessInfo.processInfo.environment["SYNCD_TEST_SHOW_LOG"] != nil { print(logText()) }
        #expect(code == 0, "exit status \(code); log:\n\(logText())")
        let (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
        #expect(same, "\(diff)")
    }

    /// Issue 27, item 8: under systemd the daemon gets only what the unit gives it. `syncctl daemon install`
    /// writes a drop-in naming the ssh-agent socket, and a daemon started as bare as systemd starts it (`env -i`
    /// plus the unit's settings) pushes with the one key that lives only in the agent. Without the drop-in's
    /// setting, the same daemon cannot log in.
    @Test func theInstalledServiceUsesTheKeyInSshAgent() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server, config: server.sshConfig(key: f.base + "/missing-key"))  // no usable key file
        try f.addSetting("agent_path: \(agentForSSH)")
        try f.write("src/train.py", "print(1)\n")
        let socket = f.base + "/agent.sock"
        let agent = try spawnQuietly(["/usr/bin/ssh-agent", "-D", "-a", socket])
        defer { kill(agent, SIGKILL); var s: Int32 = 0; waitpid(agent, &s, 0) }
        #expect(eventually(seconds: 5) { (try? run("/usr/bin/ssh-add", ["-l"], env: ["SSH_AUTH_SOCK": socket]))?.status == 1 })
        #expect(try run("/usr/bin/ssh-add", [server.clientKey], env: ["SSH_AUTH_SOCK": socket]).status == 0)

        let home = f.base + "/home"
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let user = ["HOME": home, "XDG_RUNTIME_DIR": runtime, "XDG_CONFIG_HOME": "", "XDG_STATE_HOME": ""]
        let install = try run(binDirectory() + "/syncctl", ["daemon", "install", "--no-start"], env: user.merging(["SSH_AUTH_SOCK": socket]) { $1 })
        #expect(install.status == 0, "\(install.stderr)")
        let unitPath = home + "/.config/systemd/user/syncd.service"
        let unit = try String(contentsOfFile: unitPath, encoding: .utf8)
        let dropIn = try String(contentsOfFile: unitPath + ".d/ssh-agent.conf", encoding: .utf8)
        #expect(!unit.contains("network-online"), "a user manager has no network-online.target")
        // What systemd would start: ExecStart, and the environment the drop-in sets.
        let exec = unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }
            .map { String($0.dropFirst(10)).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
        #expect(exec == binDirectory() + "/syncd", "\(unit)")
        let assignment = dropIn.split(separator: "\n").first { $0.hasPrefix("Environment=") }
            .map { String($0.dropFirst("Environment=".count)).trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
        #expect(assignment == "SSH_AUTH_SOCK=" + socket, "\(dropIn)")
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") {
            let verify = try run("/usr/bin/systemd-analyze", ["--user", "verify", unitPath], env: ["HOME": home, "XDG_RUNTIME_DIR": runtime])
            #expect(verify.status == 0 && verify.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(verify.stderr)")
        }
        let status = try run(binDirectory() + "/syncctl", ["daemon", "status"], env: user)
        #expect(status.status == 3 && status.stdout.contains("ssh-agent: \(socket)") && status.stdout.contains("not running")
                && status.stdout.contains("ExecStart=\(binDirectory())/syncd)"),
                "\(status.stdout)\(status.stderr)")
        #expect(try run(binDirectory() + "/syncctl", ["add", f.project], env: user).status == 0)

        // As bare as systemd's: env -i, then what a user manager always sets, then the unit's own settings.
        var bare = ["HOME": home, "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin",
                    "XDG_RUNTIME_DIR": runtime]
        let log = f.base + "/syncd.log"
        func logText() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        func startDaemon(_ environment: [String: String]) throws -> pid_t {
            try spawnProcess([exec ?? "", "--pull-interval", "600"], environment: environment, stdin: .null,
                             stdout: .append(log), stderr: .append(log))
        }
        func stop(_ pid: pid_t) { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) }

        // Without the drop-in's line: no key.
        let without = try startDaemon(bare)
        #expect(eventually(seconds: 20) { logText().contains("authentication as root") }, "\(logText())")
        stop(without)
        #expect(f.read("src/train.py", in: f.remoteProject) == nil)

        if let assignment, let equals = assignment.firstIndex(of: "=") {
            bare[String(assignment[..<equals])] = String(assignment[assignment.index(after: equals)...])
        }
        let with = try startDaemon(bare)
        defer { stop(with) }
        #expect(eventually(seconds: 20) { f.read("src/train.py", in: f.remoteProject) == Array("print(1)\n".utf8) }, "\(logText())")
        let running = try run(binDirectory() + "/syncctl", ["daemon", "status"], env: user)
        #expect(running.status == 0 && running.stdout.contains("daemon: running"), "\(running.stdout)\(running.stderr)")

        // uninstall removes what install wrote, and nothing of the user's (an override from `systemctl --user edit`).
        let override = unitPath + ".d/override.conf"
        try "[Service]\nNice=5\n".write(toFile: override, atomically: true, encoding: .utf8)
        let uninstall = try run(binDirectory() + "/syncctl", ["daemon", "uninstall"], env: user)
        #expect(uninstall.status == 0, "\(uninstall.stderr)")
        #expect(!FileManager.default.fileExists(atPath: unitPath) && !FileManager.default.fileExists(atPath: unitPath + ".d/ssh-agent.conf"))
        #expect(FileManager.default.fileExists(atPath: override), "uninstall removed the user's own drop-in")
    }
}
