import Foundation
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
            return ((try? JSONSerialization.jsonObject(with: Data((r?.stdout ?? "").utf8))) as? [[String: Any]])?.first ?? [:]
        }
        // status --json says what happened: connected again, idle, nothing pending, the pull's 1.5 MB came in.
        #expect(eventually(seconds: 5) { status()["state"] as? String == "idle" })
        let project = status()
        #expect(project["connected"] as? Bool == true)
        #expect(project["state"] as? String == "idle")
        #expect(project["pending_changes"] as? Int == 0)
        #expect(project["last_push"] is String && project["last_pull"] is String)
        #expect((project["bytes_received"] as? Int ?? 0) > 1_500_000, "\(project)")
        #expect((project["conflicts"] as? [String]) == [])

        kill(pid, SIGTERM)
        var code: Int32 = 0
        #expect(eventually { waitpid(pid, &code, WNOHANG) == pid }, "syncd did not exit after SIGTERM")
        exited = true
        if ProcessInfo.processInfo.environment["SYNCD_TEST_SHOW_LOG"] != nil { print(logText()) }
        #expect(code == 0, "exit status \(code); log:\n\(logText())")
        let (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
        #expect(same, "\(diff)")
    }
}
