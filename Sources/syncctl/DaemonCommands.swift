import ArgumentParser
import Chunking
import Builds
import Client
import Control
import Fleet
import Foundation
import SyncConfig
import SSHTransport
import SyncSystem
import Wire

// Talking to the running syncd over its control socket: add, remove, status, pause, resume, logs.

struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Register DIR with the syncd daemon (it watches and syncs it).")
    @Argument(help: "Project directory (with a syncd.yaml).") var directory: String = "."

    func run() throws {
        let registry = ProjectRegistry()
        let added = try registry.add(directory)
        printError(added ? "added \(directory) to \(registry.file)" : "\(directory) is already in \(registry.file)")
        try tellDaemon(directory, starting: true)
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Stop the syncd daemon from syncing DIR (its files stay).")
    @Argument(help: "Project directory.") var directory: String = "."

    func run() throws {
        let registry = ProjectRegistry()
        guard try registry.remove(directory) else { throw SyncError("\(directory) is not in \(registry.file)", code: .usage) }
        printError("removed \(directory) from \(registry.file)")
        try tellDaemon(directory, starting: false)
    }
}

/// Has a running syncd read the project list again, and says what became of `directory`.
func tellDaemon(_ directory: String, starting: Bool) throws {
    let given = URL(fileURLWithPath: directory).standardizedFileURL.path
    let dir = Project.enclosing(given) ?? given
    guard let answer = try ControlSocket.request(ControlRequest(.reload)) else {
        printError("syncd is not running; it \(starting ? "syncs" : "leaves") \(dir) \(starting ? "from" : "alone from") its next start. "
                   + daemonStartHint)
        return
    }
    if let why = answer.failed?[dir] {
        throw SyncError("syncd could not start syncing \(dir): \(why)")
    }
    let running = (answer.directories ?? []).contains(dir)
    printError(starting ? (running ? "syncd is syncing \(dir) now" : "syncd did not take \(dir) up; see `syncctl logs`")
                        : (running ? "syncd still runs \(dir); see `syncctl logs`" : "syncd stopped syncing \(dir)"))
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "What the running syncd is doing, per project.")
    @Flag(help: "Print the daemon's answer as JSON.") var json = false
    @Flag(help: "Redraw in place every second until Ctrl-C.") var watch = false

    func run() throws {
        if watch { return try watchStatus() }
        guard let answer = try ControlSocket.request(ControlRequest(.status)) else {
            throw daemonNotRunning()
        }
        if json {
            // One object: the daemon, and each project with its remote (docs/JSON.md).
            struct Out: Encodable { let pid: Int32?; let projects: [ProjectStatus] }
            print(JSONOutput.text(Out(pid: answer.pid, projects: answer.projects ?? []), project: nil))
            return
        }
        print(Self.render(answer, now: Date()), terminator: "")
    }

    /// Draws the status, then draws it again in place each second (the screen cleared from the top, as `watch`
    /// does), until Ctrl-C; a daemon that stops or starts shows as such.
    private func watchStatus() throws {
        let terminal = isatty(1) != 0
        while true {
            let text: String
            if let answer = try? ControlSocket.request(ControlRequest(.status)) {
                text = Self.render(answer, now: Date())
            } else {
                text = "syncd is not running. \(daemonStartHint)\n"
            }
            let stamp = "syncctl status --watch: every 1 s, Ctrl-C to stop (\(formatTime(wallClockNanos())))\n\n"
            // On a terminal: home and clear below, then the new text; elsewhere each view follows the last.
            print((terminal ? "\u{1B}[H\u{1B}[J" : "") + stamp + text, terminator: terminal ? "" : "\n")
            fflush(nil)
            sleep(1)
        }
    }

    /// The daemon's answer as lines a person reads: each project, its remote, and the truth about it.
    static func render(_ answer: ControlAnswer, now: Date) -> String {
        let projects = answer.projects ?? []
        var out = ""
        if projects.isEmpty { out += "syncd (pid \(answer.pid.map(String.init) ?? "?")): no projects; `syncctl add DIR`\n" }
        let iso = ISO8601DateFormatter()
        func ago(_ text: String?) -> String? {
            guard let text, let date = iso.date(from: text) else { return nil }
            return formatAgo(now.timeIntervalSince(date))
        }
        for p in projects {
            out += "\(p.project) -> \(p.remote ?? "?")\n"
            var state = p.state
            if let seconds = p.retryInSeconds { state += ", retrying in \(seconds) s" }
            if p.state == "syncing", let progress = p.progress { state += ": \(progress.description)" }
            var facts = [state]
            if p.pendingChanges > 0 { facts.append("\(p.pendingChanges) change\(p.pendingChanges == 1 ? "" : "s") waiting") }
            facts.append(ago(p.lastPush).map { "last push \($0)" } ?? "never pushed")
            if let pull = ago(p.lastPull) { facts.append("last pull \(pull)") }
            out += "  " + facts.joined(separator: ", ") + "\n"
            if !p.conflicts.isEmpty {
                out += "  conflicts (`syncctl conflicts`): " + p.conflicts.map(\.path.description).joined(separator: " ") + "\n"
            }
            if let error = p.lastError { out += "  \(p.state == "error" ? "error" : "last error"): \(error)\n" }
            if let snapshot = p.snapshot {
                out += "  snapshot \(snapshot.prefix(12))" + (p.bytesUploaded.map { ", \(formatBytes($0)) uploaded" } ?? "") + "\n"
            }
            for h in p.hosts {
                let how = h.ok ? "ok, \(h.filesChanged) changed in the last push" : "failed: \(h.error ?? "see the log")"
                out += "  \(h.host): \(how)\n"
            }
        }
        return out
    }
}

/// An ISO 8601 time (as JSON carries it) the way every message shows one: `YYYY-MM-DD HH:MM:SS`, local time.
func humanTime(_ iso: String) -> String {
    guard let date = ISO8601DateFormatter().date(from: iso) else { return iso }
    return formatTime(Int64(date.timeIntervalSince1970 * 1e9))
}

/// "just now", "12 s ago", "3 min ago", "2 h ago", "4 days ago".
func formatAgo(_ seconds: TimeInterval) -> String {
    let s = max(0, Int(seconds))
    if s < 1 { return "just now" }
    if s < 60 { return "\(s) s ago" }
    if s < 3600 { return "\(s / 60) min ago" }
    if s < 86_400 { return "\(s / 3600) h ago" }
    return "\(s / 86_400) day\(s / 86_400 == 1 ? "" : "s") ago"
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Stop the running syncd from syncing DIR (all projects without DIR).")
    @Argument(help: "Project directory.") var directory: String?
    func run() throws { try pauseOrResume(.pause, directory) }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Let the running syncd sync DIR again (all projects without DIR).")
    @Argument(help: "Project directory.") var directory: String?
    func run() throws { try pauseOrResume(.resume, directory) }
}

func pauseOrResume(_ command: ControlRequest.Command, _ directory: String?) throws {
    let request = ControlRequest(command, project: directory.map {
        let given = URL(fileURLWithPath: $0).standardizedFileURL.path
        return Project.enclosing(given) ?? given
    })
    guard let answer = try ControlSocket.request(request) else {
        throw daemonNotRunning()
    }
    if answer.unregistered == true { throw SyncError("syncd: \(answer.error ?? "not registered")") }
    for p in answer.directories ?? [] { printError("\(command.rawValue)d \(p)") }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "The running syncd's recent log lines.")
    @Flag(name: .shortAndLong, help: "Keep printing new lines as they come (Ctrl-C to stop).") var follow = false

    func run() throws {
        let running = try ControlSocket.stream(ControlRequest(.logs, follow: follow)) { answer in
            for line in answer.lines ?? [] { print(line) }
            fflush(nil)
            return true
        }
        guard running else { throw daemonNotRunning() }
    }
}
