import Foundation
import SyncSystem
import Testing

let sshdPath = "/usr/sbin/sshd"
let sshdAvailable = FileManager.default.isExecutableFile(atPath: sshdPath) && getuid() == 0

/// A throwaway OpenSSH server on 127.0.0.1 with its own host key, an authorized client key and a temporary
/// home directory for the login user (so the agent is installed there, not in the real home).
final class SSHServer {
    let dir: String
    private(set) var port = 0
    let clientKey: String
    var home: String { dir + "/home" }
    var knownHosts: String { dir + "/known_hosts" }
    /// sshd's pid. Spawned with posix_spawn, not Foundation's Process, whose child reaper blocks on a
    /// long-lived child and then never reaps the short ones.
    private var pid: pid_t?

    /// Lines added to sshd_config (`RekeyLimit 1M`, say).
    private let extraConfig: String

    init(extraConfig: String = "") throws {
        self.extraConfig = extraConfig
        dir = NSTemporaryDirectory() + "syncd-sshd-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir + "/home", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        clientKey = dir + "/client_ed25519"
        try Self.keygen(dir + "/host_ed25519")
        try Self.keygen(clientKey)
        try FileManager.default.copyItem(atPath: clientKey + ".pub", toPath: dir + "/authorized_keys")
        // A free port can be taken by another test's server between the probe and sshd's bind: then sshd
        // says so in its log (or exits) and another port is tried.
        var attempt = 0
        while true {
            attempt += 1
            port = try Self.freePort()
            try writeConfig()
            do {
                try start()
                return
            } catch is BindFailure where attempt < 5 {
                continue
            }
        }
    }

    private struct BindFailure: Error, CustomStringConvertible {
        var description: String
    }

    private func writeConfig() throws {
        try """
            Port \(port)
            ListenAddress 127.0.0.1\(Self.hasIPv6Loopback ? "\nListenAddress [::1]" : "")
            HostKey \(dir)/host_ed25519
            AuthorizedKeysFile \(dir)/authorized_keys
            PidFile \(dir)/sshd.pid
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PubkeyAuthentication yes
            PermitRootLogin yes
            SetEnv HOME=\(dir)/home
            LogLevel ERROR
            \(extraConfig)
            """.write(toFile: dir + "/sshd_config", atomically: true, encoding: .utf8)
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    static func keygen(_ path: String) throws {
        let r = try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path])
        guard r.status == 0 else { throw FixtureError("ssh-keygen failed: \(r.stderr)") }
    }

    /// True when ::1 can be bound here (then sshd listens on it too).
    static let hasIPv6Loopback: Bool = {
        let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in6()
        addr.sin6_family = sa_family_t(AF_INET6)
        addr.sin6_addr = in6addr_loopback
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) == 0 }
        }
    }()

    /// A loopback port nobody listens on right now.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw FixtureError("cannot find a free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    func start() throws {
        let log = dir + "/sshd.log"
        let config = dir + "/sshd_config"
        let child: pid_t
        do {
            child = try spawnProcess([sshdPath, "-D", "-e", "-f", config], stdin: .null, stdout: .null, stderr: .append(log))
        } catch {
            throw FixtureError("cannot start sshd: \(error)")
        }
        pid = child
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            // Someone listening is not enough: it must be this sshd, alive and bound to every address.
            let logText = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            var status: Int32 = 0
            let exited = waitpid(child, &status, WNOHANG) == child
            if logText.contains("Bind to port") || logText.contains("Cannot bind") || exited {
                if !exited { kill(child, SIGTERM); waitpid(child, &status, 0) }
                pid = nil
                try? FileManager.default.removeItem(atPath: log)
                throw BindFailure(description: "sshd could not listen on port \(port): \(logText)")
            }
            if Self.canConnect(port) {
                usleep(20_000)  // a failed bind on ::1 comes just after the one on 127.0.0.1
                let later = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                if later.contains("Bind to port") { continue }
                return
            }
            usleep(20_000)
        }
        throw FixtureError("sshd did not start listening on port \(port)")
    }

    func stop() {
        guard let child = pid else { return }
        kill(child, SIGTERM)
        var status: Int32 = 0
        waitpid(child, &status, 0)
        pid = nil
    }

    /// Restarts sshd with a newly generated host key (what a reinstalled host looks like).
    func changeHostKey() throws {
        stop()
        try? FileManager.default.removeItem(atPath: dir + "/host_ed25519")
        try? FileManager.default.removeItem(atPath: dir + "/host_ed25519.pub")
        try Self.keygen(dir + "/host_ed25519")
        try start()
    }

    /// Kills the per-connection sshd processes: every open SSH connection drops, the listener stays.
    func dropConnections() {
        guard let pid else { return }
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        for child in text.split(separator: " ").compactMap({ Int32($0) }) { kill(child, SIGKILL) }
    }

    static func canConnect(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// An ssh_config for this server under `alias`.
    func sshConfig(alias: String = "gpu-test", strict: String? = "accept-new", key: String? = nil, host: String = "127.0.0.1") -> String {
        var text = """
            Host \(alias)
              HostName \(host)
              Port \(port)
              User root
              IdentityFile \(key ?? clientKey)
              UserKnownHostsFile \(knownHosts)
            """
        if let strict { text += "\n  StrictHostKeyChecking \(strict)" }
        return text + "\n"
    }
}

/// The agent the tests deploy: the static release build when present, else the debug one beside syncctl.
var agentForSSH: String {
    FileManager.default.isExecutableFile(atPath: releaseAgent) ? releaseAgent : binDirectory() + "/syncd-agent"
}

extension SyncFixture {
    /// Points this project at `server` through an ssh_config file; returns that file's path.
    @discardableResult
    func useSSH(_ server: SSHServer, config: String? = nil, alias: String = "gpu-test") throws -> String {
        let path = base + "/ssh_config"
        try (config ?? server.sshConfig(alias: alias)).write(toFile: path, atomically: true, encoding: .utf8)
        try "name: \(name)\nremote: \(alias)\nremote_root: \(remoteRoot)\nssh_config: \(path)\n"
            .write(toFile: project + "/syncd.yaml", atomically: true, encoding: .utf8)
        return path
    }

    func sshctl(_ arguments: [String], env more: [String: String] = [:], onStart: ((RunningChild) -> Void)? = nil) throws -> RunResult {
        try run(binDirectory() + "/syncctl", arguments,
                env: ["XDG_STATE_HOME": state, "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": ""].merging(more) { $1 }, onStart: onStart)
    }
}

/// Starts a long-running helper with stdio on /dev/null, outside Foundation's Process (see SSHServer.pid).
func spawnQuietly(_ words: [String]) throws -> pid_t {
    do {
        return try spawnProcess(words, stdin: .null, stdout: .null, stderr: .null)
    } catch {
        throw FixtureError("cannot start \(words[0]): \(error)")
    }
}
