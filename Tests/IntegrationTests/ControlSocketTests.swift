import Foundation
import SyncSystem
import Testing

/// Issue 26, item 5: the control socket's directory is the user's own, and syncctl talks only to a daemon of its
/// own uid. Another local user could make `/tmp/syncd-<uid>` (or the runtime directory's `syncd/`) first, and
/// stand in for syncd.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root, to make files of another uid"))
struct ControlSocketTests {
    static let nobody: uid_t = 65534

    func status(_ runtime: String) throws -> RunResult {
        try run(binDirectory() + "/syncctl", ["status"], env: ["XDG_RUNTIME_DIR": runtime])
    }

    @Test func aDirectoryOfAnotherUserOrASymlinkIsRefused() throws {
        let f = try SyncFixture()
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime + "/syncd", withIntermediateDirectories: true)
        chmod(runtime + "/syncd", 0o700)
        #expect(chown(runtime + "/syncd", Self.nobody, gid_t(Self.nobody)) == 0)
        let other = try status(runtime)
        #expect(other.status != 0 && other.stderr.contains("belongs to uid \(Self.nobody)"), "\(other.stderr)")

        // The daemon will not use it either.
        let log = f.base + "/syncd.log"
        let daemon = try spawnProcess(["/usr/bin/env", "XDG_RUNTIME_DIR=\(runtime)", "XDG_CONFIG_HOME=\(f.base)/config", "XDG_STATE_HOME=\(f.state)",
                                       binDirectory() + "/syncd"], stdin: .null, stdout: .append(log), stderr: .append(log))
        var waitStatus: Int32 = 0
        let exited = eventually(seconds: 15) { waitpid(daemon, &waitStatus, WNOHANG) == daemon }
        if !exited { kill(daemon, SIGKILL); _ = waitForExit(daemon) }
        let said = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(exited && waitStatus != 0 && said.contains("belongs to uid \(Self.nobody)"), "\(said)")

        try FileManager.default.removeItem(atPath: runtime + "/syncd")
        try FileManager.default.createDirectory(atPath: f.base + "/elsewhere", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: runtime + "/syncd", withDestinationPath: f.base + "/elsewhere")
        let link = try status(runtime)
        #expect(link.status != 0 && link.stderr.contains("symlink"), "\(link.stderr)")
    }

    @Test func aListenerOfAnotherUidGetsNothing() throws {
        let f = try SyncFixture()
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime + "/syncd", withIntermediateDirectories: true)
        chmod(runtime + "/syncd", 0o700)
        let socketPath = runtime + "/syncd/control.sock"
        let heard = f.base + "/heard"
        // Bound as root in our directory, listening as another uid (the credentials a peer sees are the
        // listener's): what it receives goes to `heard`.
        let script = """
            os = __import__("os"); socket = __import__("socket")
            s = socket.socket(socket.AF_UNIX); s.bind("\(socketPath)"); os.setgid(\(Self.nobody)); os.setuid(\(Self.nobody)); s.listen(1)
            c, _ = s.accept(); c.settimeout(5)
            data = b""
            try:
                data = c.recv(65536)
            except Exception:
                pass
            open("\(heard)", "wb").write(data) if os.access("\(f.base)", os.W_OK) else None
            """
        chmod(f.base, 0o777)
        let fake = try spawnProcess(["/usr/bin/env", "python3", "-c", script], stdin: .null, stdout: .null, stderr: .null)
        defer { kill(fake, SIGKILL); _ = waitForExit(fake) }
        #expect(eventually(seconds: 10) { FileManager.default.fileExists(atPath: socketPath) })
        usleep(200_000)
        let r = try status(runtime)
        #expect(r.status != 0 && r.stderr.contains("runs as uid \(Self.nobody)"), "\(r.stderr)")
        _ = waitForExit(fake)
        let received = FileManager.default.contents(atPath: heard).map { Array($0) } ?? []
        #expect(received.isEmpty, "the fake daemon heard: \(String(decoding: received, as: UTF8.self))")
    }
}
