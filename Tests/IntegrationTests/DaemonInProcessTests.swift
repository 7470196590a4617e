import Daemon
import Engine
import Foundation
import Testing

/// The daemon as a library: run in this process against a project directory and a real agent, driven through
/// its control socket as syncctl drives it, and stopped the way SIGTERM stops the executable.
@Suite(.serialized)
struct DaemonInProcessTests {
    @Test func theDaemonRunsInProcessAnswersItsSocketPushesAndStops() throws {
        let f = try SyncFixture()
        try f.write("src/train.py", "print(1)\n")
        let yaml = f.project + "/syncd.yaml"
        try (String(contentsOfFile: yaml, encoding: .utf8) + "agent_path: \(binDirectory())/syncd-agent\n")
            .write(toFile: yaml, atomically: true, encoding: .utf8)
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime]
        #expect(try ProjectRegistry(environment: env).add(f.project))

        let daemon = Daemon(settings: DaemonSettings(pullInterval: 60, environment: env))
        final class Exit: @unchecked Sendable {  // written once by the daemon's thread, read after `done`
            var code: Int32 = -1
            let done = DispatchSemaphore(value: 0)
        }
        let exit = Exit()
        let thread = Thread {
            exit.code = daemon.run()
            exit.done.signal()
        }
        thread.start()
        var stopped = false
        defer { if !stopped { daemon.stop(); _ = exit.done.wait(timeout: .now() + 30) } }

        // The control socket answers once the daemon is up; the project is running and pushed at start.
        #expect(eventually { (try? ControlSocket.request(["command": "status"], environment: env)) != nil })
        let status = try #require(try ControlSocket.request(["command": "status"], environment: env))
        let projects = status["projects"] as? [[String: Any]] ?? []
        #expect(projects.map { $0["project"] as? String } == [f.project], "\(status)")
        #expect(eventually { f.read("src/train.py", in: f.remoteProject) == Array("print(1)\n".utf8) })

        // A change is pushed by the watcher, and a push asked for over the socket answers with its statistics.
        try f.write("src/train.py", "print(2)\n")
        #expect(eventually { f.read("src/train.py", in: f.remoteProject) == Array("print(2)\n".utf8) })
        try f.write("src/new.py", "x = 1\n")
        let push = try #require(try ControlSocket.request(["command": "push", "project": f.project], environment: env))
        #expect(push["ok"] as? Bool == true, "\(push)")
        #expect(f.read("src/new.py", in: f.remoteProject) == Array("x = 1\n".utf8))

        // An unknown command is an error answer; the daemon goes on.
        #expect(throws: SyncError.self) { try ControlSocket.request(["command": "fly"], environment: env) }
        #expect((try? ControlSocket.request(["command": "status"], environment: env)) != nil)

        daemon.stop()
        stopped = true
        #expect(exit.done.wait(timeout: .now() + 30) == .success, "run did not return after stop")
        #expect(exit.code == 0)
        #expect(!FileManager.default.fileExists(atPath: runtime + "/syncd/control.sock"))
    }
}
