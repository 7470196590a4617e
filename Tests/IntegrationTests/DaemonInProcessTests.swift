import Daemon
import Builds
import Client
import Control
import Fleet
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
        #expect(eventually { (try? ControlSocket.request(ControlRequest(.status), environment: env)) != nil })
        let status = try #require(try ControlSocket.request(ControlRequest(.status), environment: env))
        #expect(status.ok && status.version == ControlRequest.currentVersion)
        #expect(status.projects?.map(\.project) == [f.project])
        #expect(eventually { f.read("src/train.py", in: f.remoteProject) == Array("print(1)\n".utf8) })

        // A change is pushed by the watcher, and a push asked for over the socket answers with its statistics.
        try f.write("src/train.py", "print(2)\n")
        #expect(eventually { f.read("src/train.py", in: f.remoteProject) == Array("print(2)\n".utf8) })
        try f.write("src/new.py", "x = 1\n")
        let push = try #require(try ControlSocket.request(ControlRequest(.push, project: f.project), environment: env))
        #expect(push.ok, "\(push.error ?? "")")
        #expect(push.stats?.direction == "push")
        #expect(f.read("src/new.py", in: f.remoteProject) == Array("x = 1\n".utf8))

        // Requests that do not decode are answered with an error that names what is wrong; the daemon goes on.
        let socket = ControlSocket.path(environment: env)
        let refused: [(String, [UInt8])] = [
            ("not a JSON object", Array("hello\n".utf8)),
            ("not a JSON object", Array("[1, 2]\n".utf8)),
            ("longer than 65536 bytes", [UInt8](repeating: UInt8(ascii: "x"), count: 200_000) + [0x0A]),
            ("expected one line of JSON", Array(#"{"version": 1, "command": "status"}"#.utf8)),
            ("version 99", Array(#"{"version": 99, "command": "status"}"#.utf8) + [0x0A]),
            ("no integer \"version\"", Array(#"{"command": "status"}"#.utf8) + [0x0A]),
            ("unknown command 'fly'", Array(#"{"version": 1, "command": "fly"}"#.utf8) + [0x0A]),
            ("\"project\" must be a string", Array(#"{"version": 1, "command": "pause", "project": 7}"#.utf8) + [0x0A]),
        ]
        for (expected, bytes) in refused {
            let line = try Self.exchange(bytes, socket: socket, closeAfterWriting: expected.hasPrefix("expected"))
            let answer = try JSONDecoder().decode(ControlAnswer.self, from: Data(line.utf8))
            #expect(!answer.ok && answer.error?.contains(expected) == true, "\(expected): \(line)")
        }
        // A project the daemon does not run: answered as such, for the caller to sync on its own.
        let elsewhere = try ControlSocket.request(ControlRequest(.push, project: f.base + "/elsewhere"), environment: env)
        #expect(elsewhere?.unregistered == true && elsewhere?.ok == false)
        #expect(try ControlSocket.request(ControlRequest(.status), environment: env)?.projects?.count == 1)

        daemon.stop()
        stopped = true
        #expect(exit.done.wait(timeout: .now() + 30) == .success, "run did not return after stop")
        #expect(exit.code == 0)
        #expect(!FileManager.default.fileExists(atPath: runtime + "/syncd/control.sock"))
    }

    /// The backoff after failures, 1, 2, 4 … 30 s, walked through by moving the daemon's clock: no sleeping, where
    /// the real clock would take 61 s to get there.
    @Test func aFailingProjectBacksOffByTheClockItIsGiven() throws {
        let f = try SyncFixture()
        try f.pointAtNothing()
        let clock = ManualClock()
        let daemon = try BackgroundDaemon(f, clock: clock)
        let env = daemon.env
        func retryIn() -> Int? {
            (try? ControlSocket.request(ControlRequest(.status), environment: env))?.projects?.first?.retryInSeconds
        }
        let started = Date()
        for expected in [1, 2, 4, 8, 16, 30, 30] {
            #expect(eventually(seconds: 20) { retryIn() == expected }, "expected a retry in \(expected) s, status says \(String(describing: retryIn()))")
            // Half way, nothing happens; at the deadline, the next try fails and backs off further.
            clock.advance(by: Double(expected) / 2)
            #expect(retryIn() == expected - expected / 2, "the wait counts down with the clock")
            clock.advance(by: Double(expected) - Double(expected) / 2)
        }
        #expect(Date().timeIntervalSince(started) < 30, "the backoff followed the clock it was given, not the wall's")
    }

    /// An agent that stops answering (a hung remote) is not `syncing` for ever: the push fails once nothing came
    /// for `timeout:`, and the project shows as stalled, with the error, until the next try.
    @Test func aStalledProjectShowsAsStalled() throws {
        let f = try SyncFixture()
        try f.write("src/train.py", "print(1)\n")
        let agent = f.base + "/silent-agent"
        try "#!/bin/sh\nexec sleep 600\n".write(toFile: agent, atomically: true, encoding: .utf8)
        chmod(agent, 0o755)
        try f.addSetting("agent_path: \(agent)")
        try f.addSetting("timeout: 2")
        let daemon = try BackgroundDaemon(f)
        let env = daemon.env
        var seen: ProjectStatus?
        #expect(eventually(seconds: 30) {
            seen = (try? ControlSocket.request(ControlRequest(.status), environment: env))??.projects?.first
            return seen?.state == "stalled"
        }, "last status: \(String(describing: seen))")
        #expect(seen?.lastError?.contains("nothing came from local agent") == true, "\(String(describing: seen?.lastError))")
    }

    /// Writes `bytes` to the control socket at `socket` as a client would (ending its side when asked), and
    /// returns the answer's first line.
    static func exchange(_ bytes: [UInt8], socket path: String, closeAfterWriting: Bool) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        guard var address = ControlSocket.address(path) else { throw FixtureError("socket path too long") }
        let connected = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard connected else { throw FixtureError("cannot connect to \(path)") }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // the daemon answered and stopped reading
            offset += n
        }
        if closeAfterWriting { shutdown(fd, Int32(SHUT_WR)) }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !answer.contains(0x0A) {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            answer += buffer[0..<n]
        }
        return String(decoding: answer.prefix { $0 != 0x0A }, as: UTF8.self)
    }
}

/// The daemon run in this process on a thread of its own for `f`'s project (registered in an environment of the
/// fixture's), stopped when this goes away.
final class BackgroundDaemon {
    let env: [String: String]
    private let daemon: Daemon
    private let done = DispatchSemaphore(value: 0)

    init(_ f: SyncFixture, clock: (any DaemonClock)? = nil) throws {
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime]
        guard try ProjectRegistry(environment: env).add(f.project) else { throw FixtureError("\(f.project) was registered already") }
        var settings = DaemonSettings(pullInterval: 60, environment: env)
        if let clock { settings.clock = clock }
        daemon = Daemon(settings: settings)
        let (daemon, done) = (daemon, done)
        Thread.detachNewThread {
            _ = daemon.run()
            done.signal()
        }
    }

    deinit {
        daemon.stop()
        _ = done.wait(timeout: .now() + 30)
    }
}

extension SyncFixture {
    /// Points the project at a host nothing listens on: every connection is refused. Returns the port.
    @discardableResult
    func pointAtNothing() throws -> Int {
        let port = freePortForTest()
        try "Host nowhere\n  HostName 127.0.0.1\n  Port \(port)\n  User root\n".write(toFile: base + "/ssh_config",
                                                                                              atomically: true, encoding: .utf8)
        try "name: proj\nremote: nowhere\nssh_config: \(base)/ssh_config\n".write(toFile: project + "/syncd.yaml", atomically: true, encoding: .utf8)
        return port
    }
}
