import ArgumentParser
import Builds
import Client
import Control
import Fleet
import Foundation
import SyncSystem

// `syncctl daemon install | uninstall | status | unit`: syncd as a systemd user service that can use the keys
// held in the user's ssh-agent.

struct DaemonService: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon", abstract: "Run syncd as a systemd user service: install, uninstall, status.",
        subcommands: [InstallService.self, UninstallService.self, ServiceStatus.self, ServiceUnit.self])
}

/// Where the unit and its drop-in go, and what they say.
struct ServiceFiles {
    static let unitName = "syncd.service"
    /// The unit a package installs (`make deb`); a user unit of the same name would hide it.
    static let packagedUnit = "/usr/lib/systemd/user/syncd.service"

    let environment: [String: String]

    var home: String { environment["HOME"] ?? NSHomeDirectory() }
    var configHome: String { environment["XDG_CONFIG_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? home + "/.config" }
    var unitDirectory: String { configHome + "/systemd/user" }
    var unitPath: String { unitDirectory + "/" + Self.unitName }
    var dropInDirectory: String { unitPath + ".d" }
    var dropInPath: String { dropInDirectory + "/ssh-agent.conf" }
    var runtimeDirectory: String? { environment["XDG_RUNTIME_DIR"].flatMap { $0.isEmpty ? nil : $0 } }

    /// The unit for a daemon at `executable`. No `After=network-online.target`: a user manager has no such
    /// target, and syncd reconnects by itself when the network comes.
    static func unit(executable: String) -> String {
        """
        # syncd: keeps ML projects in step with remote GPU hosts. Written by `syncctl daemon install`
        # (or a package); `syncctl daemon status` shows how it runs.
        # syncd reports READY/STATUS/STOPPING and watchdog pings over $NOTIFY_SOCKET; SIGHUP reloads the project
        # list; SIGTERM lets a session in flight finish, then exits 0.
        [Unit]
        Description=syncd: keeps ML projects in step with remote GPU hosts

        [Service]
        Type=notify
        ExecStart="\(escape(executable).replacingOccurrences(of: "$", with: "$$"))"
        ExecReload=/bin/kill -HUP $MAINPID
        WatchdogSec=30
        Restart=on-failure
        RestartSec=2
        TimeoutStopSec=60

        [Install]
        WantedBy=default.target

        """
    }

    /// The drop-in that hands the daemon the ssh-agent socket at `socket`.
    func dropIn(socket: String) -> String {
        var value = Self.escape(socket)
        // Under the runtime directory, `%t` keeps the line true for another login's (same) directory.
        if let runtime = runtimeDirectory, socket.hasPrefix(runtime + "/") {
            value = "%t/" + Self.escape(String(socket.dropFirst(runtime.count + 1)))
        }
        return """
            # Written by `syncctl daemon install`: the ssh-agent whose keys syncd uses (keys with a passphrase
            # live there). `syncctl daemon install` again rewrites it; `syncctl daemon uninstall` removes it.
            [Service]
            Environment="SSH_AUTH_SOCK=\(value)"

            """
    }

    /// A value as a unit file reads it: `%` doubled, and quotes and backslashes escaped inside the quotes.
    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "%", with: "%%").replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "\"", with: "\\\"")
    }

    /// The path a unit's `ExecStart=` line names, its quoting and escapes undone.
    static func execPath(inUnit text: String) -> String? {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("ExecStart=") }) else { return nil }
        var value = String(line.dropFirst("ExecStart=".count))
        if value.hasPrefix("\""), let end = value.dropFirst().firstIndex(of: "\"") {
            value = String(value[value.index(after: value.startIndex)..<end])
        } else {
            value = String(value.split(separator: " ").first ?? "")
        }
        return value.replacingOccurrences(of: "$$", with: "$").replacingOccurrences(of: "%%", with: "%")
            .replacingOccurrences(of: "\\\"", with: "\"").replacingOccurrences(of: "\\\\", with: "\\")
    }

    /// The socket named in the drop-in, as the daemon will see it; nil without a drop-in.
    func socketInDropIn() -> String? {
        guard let text = try? String(contentsOfFile: dropInPath, encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Environment=") {
            var value = String(line.dropFirst("Environment=".count))
            if value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 { value = String(value.dropFirst().dropLast()) }
            guard value.hasPrefix("SSH_AUTH_SOCK=") else { continue }
            value = String(value.dropFirst("SSH_AUTH_SOCK=".count))
            if value.hasPrefix("%t/"), let runtime = runtimeDirectory { value = runtime + "/" + value.dropFirst(3) }
            return value.replacingOccurrences(of: "\\\"", with: "\"").replacingOccurrences(of: "\\\\", with: "\\")
                .replacingOccurrences(of: "%%", with: "%")
        }
        return nil
    }

    /// The ssh-agent socket the daemon should use: the caller's `SSH_AUTH_SOCK`, else one of the agents that keep
    /// a fixed socket (systemd's ssh-agent unit, GNOME's keyring, 1Password), if it is there.
    func agentSocket() -> (path: String, found: String)? {
        if let given = environment["SSH_AUTH_SOCK"], !given.isEmpty, isSocket(given) { return (given, "SSH_AUTH_SOCK") }
        var candidates: [String] = []
        if let runtime = runtimeDirectory {
            candidates += [runtime + "/ssh-agent.socket", runtime + "/openssh_agent", runtime + "/gcr/ssh", runtime + "/keyring/ssh"]
        }
        candidates.append(home + "/.1password/agent.sock")
        return candidates.first(where: isSocket).map { ($0, "a fixed socket") }
    }

    /// A socket `ssh-agent` makes afresh at each login (`/tmp/ssh-XXXX/agent.PID`): naming it in the unit
    /// would go stale.
    static func changesEachLogin(_ socket: String) -> Bool {
        socket.hasPrefix("/tmp/ssh-") && (socket as NSString).lastPathComponent.hasPrefix("agent.")
    }

    func isSocket(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }
}

/// The syncd binary beside this syncctl (they are installed together).
func daemonExecutable() throws -> String {
    let me = Platform.executablePath() ?? CommandLine.arguments[0]
    let path = (me as NSString).deletingLastPathComponent + "/syncd"
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw SyncError("no syncd beside syncctl (looked for \(path)); install the three binaries together", code: .usage)
    }
    return path
}

/// Runs `systemctl --user ARGS`, waiting at most `seconds`; nil when there is no systemctl.
func systemctl(_ arguments: [String], environment: [String: String], seconds: Int = 30) -> (status: Int32, output: String)? {
    guard let tool = ["/usr/bin/systemctl", "/bin/systemctl"].first(where: FileManager.default.isExecutableFile) else { return nil }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tool)
    process.arguments = ["--user"] + arguments
    process.environment = environment
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    process.standardInput = FileHandle.nullDevice
    do { try process.run() } catch { return (127, "\(error)") }
    let done = DispatchSemaphore(value: 0)
    nonisolated(unsafe) var output = Data()
    DispatchQueue.global().async {
        output = pipe.fileHandleForReading.readDataToEndOfFile()
        done.signal()
    }
    if done.wait(timeout: .now() + .seconds(seconds)) == .timedOut {
        process.terminate()
        return (124, "systemctl --user \(arguments.joined(separator: " ")) did not answer within \(seconds) s")
    }
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
}

struct InstallService: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Write the user unit (and a drop-in naming your ssh-agent's socket), then enable and start syncd.")
    @Flag(name: .customLong("no-start"), help: "Only write the files; do not call systemctl.") var noStart = false

    func run() throws {
        let files = ServiceFiles(environment: ProcessInfo.processInfo.environment)
        let executable = try daemonExecutable()
        let fm = FileManager.default
        try fm.createDirectory(atPath: files.unitDirectory, withIntermediateDirectories: true)
        if fm.fileExists(atPath: ServiceFiles.packagedUnit) && executable == "/usr/bin/syncd" {
            // The package's unit runs this very binary: only the drop-in is ours to write. A user unit an earlier
            // install wrote would hide it (and start another binary): it goes.
            if let old = try? String(contentsOfFile: files.unitPath, encoding: .utf8), old.contains("syncctl daemon install") {
                try fm.removeItem(atPath: files.unitPath)
                print("unit: removed \(files.unitPath), which an earlier install wrote and which would hide the package's")
            }
            print("unit: \(ServiceFiles.packagedUnit) (from the package)")
        } else {
            try ServiceFiles.unit(executable: executable).write(toFile: files.unitPath, atomically: true, encoding: .utf8)
            print("unit: wrote \(files.unitPath) (ExecStart=\(executable))")
        }
        var importSocket = false
        if let (socket, found) = files.agentSocket() {
            if ServiceFiles.changesEachLogin(socket) {
                // Naming it would be stale after the next login; the manager's environment is refreshed instead.
                try? fm.removeItem(atPath: files.dropInPath)
                importSocket = true
                print("ssh-agent: \(socket) (from \(found)) changes at each login, so it is not written into the unit: "
                      + "add `systemctl --user import-environment SSH_AUTH_SOCK` to your shell's profile, "
                      + "or run an agent with a fixed socket (systemctl --user enable --now ssh-agent)")
            } else {
                try fm.createDirectory(atPath: files.dropInDirectory, withIntermediateDirectories: true)
                try files.dropIn(socket: socket).write(toFile: files.dropInPath, atomically: true, encoding: .utf8)
                print("ssh-agent: wrote \(files.dropInPath) (SSH_AUTH_SOCK=\(socket), from \(found))")
            }
        } else {
            try? fm.removeItem(atPath: files.dropInPath)
            print("ssh-agent: none found (no SSH_AUTH_SOCK here, and no agent with a fixed socket): the daemon uses key "
                  + "files without a passphrase only; run `syncctl daemon install` again from a shell with the agent")
        }
        if noStart {
            print("not started (--no-start): systemctl --user daemon-reload && systemctl --user enable --now syncd")
            return
        }
        let env = ProcessInfo.processInfo.environment
        var steps = [["daemon-reload"], ["enable", "syncd"], ["restart", "syncd"]]
        if importSocket { steps.insert(["import-environment", "SSH_AUTH_SOCK"], at: 0) }
        for step in steps {
            // A restart waits for READY, which syncd sends once every project's watches are set up: give it time.
            guard let (status, output) = systemctl(step, environment: env, seconds: step.first == "restart" ? 180 : 30) else {
                throw SyncError("the files are written, but there is no systemctl here: run \(executable) yourself (it stays in the foreground)")
            }
            if status == 124 {
                throw SyncError("the files are written, but `systemctl --user \(step.joined(separator: " "))` did not finish within the time "
                                + "given; `syncctl daemon status` shows whether syncd came up (`journalctl --user -u syncd` says why not)")
            }
            guard status == 0 else {
                throw SyncError("the files are written, but `systemctl --user \(step.joined(separator: " "))` failed (status \(status))"
                                + (output.isEmpty ? "" : ": \(output)")
                                + "; without a user manager (a container, an ssh session without lingering: `loginctl enable-linger`), "
                                + "run \(executable) yourself")
            }
        }
        print("syncd: enabled and started; `syncctl daemon status` shows it, `syncctl add DIR` gives it a project")
    }
}

struct UninstallService: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall", abstract: "Stop and disable syncd, and remove the unit and drop-in `daemon install` wrote.")

    func run() throws {
        let files = ServiceFiles(environment: ProcessInfo.processInfo.environment)
        if let (status, output) = systemctl(["disable", "--now", "syncd"], environment: ProcessInfo.processInfo.environment), status != 0,
           !output.contains("does not exist") && !output.contains("not loaded") {
            printError("warning: systemctl --user disable --now syncd: \(output)")
        }
        var removed: [String] = []
        for path in [files.dropInPath, files.unitPath] where FileManager.default.fileExists(atPath: path) {
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            guard text.contains("syncctl daemon install") else {
                printError("warning: \(path) was not written by `syncctl daemon install`; left as it is")
                continue
            }
            try FileManager.default.removeItem(atPath: path)
            removed.append(path)
        }
        rmdir(files.dropInDirectory)  // only when empty: other drop-ins there (`systemctl --user edit`) are the user's
        _ = systemctl(["daemon-reload"], environment: ProcessInfo.processInfo.environment)
        print(removed.isEmpty ? "nothing to remove" : "removed " + removed.joined(separator: ", "))
    }
}

struct ServiceStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "How syncd runs: its unit, systemd's view, the ssh-agent it gets, and whether it answers.")

    func run() throws {
        let env = ProcessInfo.processInfo.environment
        let files = ServiceFiles(environment: env)
        let fm = FileManager.default
        if fm.fileExists(atPath: files.unitPath) {
            let text = (try? String(contentsOfFile: files.unitPath, encoding: .utf8)) ?? ""
            let exec = ServiceFiles.execPath(inUnit: text) ?? "?"
            print("unit: \(files.unitPath) (ExecStart=\(exec)\(fm.isExecutableFile(atPath: exec) ? "" : ", which is missing"))")
        } else if fm.fileExists(atPath: ServiceFiles.packagedUnit) {
            print("unit: \(ServiceFiles.packagedUnit) (from the package)")
        } else {
            print("unit: none; `syncctl daemon install` writes one")
        }
        if let (_, enabled) = systemctl(["is-enabled", "syncd"], environment: env) {
            // One word (enabled, disabled, not-found, …) when the user manager answers; a sentence when it does not.
            if enabled.isEmpty || enabled.contains(" ") {
                print("systemd: the user manager does not answer\(enabled.isEmpty ? "" : " (\(enabled.split(separator: "\n")[0]))")")
            } else {
                let active = systemctl(["is-active", "syncd"], environment: env)?.output ?? ""
                print("systemd: \(enabled), " + (active.isEmpty || active.contains(" ")
                    ? "and the user manager does not answer\(active.isEmpty ? "" : " (\(active.split(separator: "\n")[0]))")" : active))
            }
        } else {
            print("systemd: no systemctl here")
        }
        if let socket = files.socketInDropIn() {
            print("ssh-agent: \(socket) (\(files.dropInPath))\(files.isSocket(socket) ? "" : "; no socket there now: keys in the agent cannot be used")")
        } else {
            print("ssh-agent: not named in the unit; the daemon gets the user manager's SSH_AUTH_SOCK, if any")
        }
        if let answer = try ControlSocket.request(ControlRequest(.status)) {
            print("daemon: running (pid \(answer.pid.map(String.init) ?? "?")), \(answer.projects?.count ?? 0) project(s)")
        } else {
            print("daemon: not running. \(daemonStartHint)")
            throw ExitCode(3)
        }
    }
}

struct ServiceUnit: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unit", abstract: "Print the user unit (for packaging).")
    @Option(name: .customLong("exec"), help: "The daemon's path in ExecStart (default: the syncd beside syncctl).")
    var executable: String?

    func run() throws {
        print(ServiceFiles.unit(executable: try executable ?? daemonExecutable()), terminator: "")
    }
}

/// How to start the daemon, for "syncd is not running".
let daemonStartHint = "Start it with `syncctl daemon install` (a systemd user service), or run `syncd` in a terminal."

/// The error for a command that needs the running daemon.
func daemonNotRunning() -> SyncError {
    SyncError("syncd is not running (no control socket at \(ControlSocket.path())). \(daemonStartHint)")
}
