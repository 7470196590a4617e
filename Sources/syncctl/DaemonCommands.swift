import ArgumentParser
import Chunking
import Engine
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
        guard try registry.remove(directory) else { throw SyncError("\(directory) is not in \(registry.file)", exitCode: 2) }
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

    func run() throws {
        guard let answer = try ControlSocket.request(ControlRequest(.status)) else {
            throw daemonNotRunning()
        }
        let projects = answer.projects ?? []
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(PathText.publicJSON([UInt8](try encoder.encode(projects))))
            return
        }
        if projects.isEmpty { print("syncd (pid \(answer.pid.map(String.init) ?? "?")): no projects; `syncctl add DIR`") }
        for p in projects {
            var line = "\(p.project): \(p.state), \(p.pendingChanges) pending"
            if let push = p.lastPush { line += ", last push \(push)" }
            if let pull = p.lastPull { line += ", last pull \(pull)" }
            if !p.conflicts.isEmpty {
                line += ", conflicts: " + p.conflicts.map { (try? RelativePath(text: $0).description) ?? $0 }.joined(separator: " ")
            }
            if let error = p.lastError { line += ", last error: \(error)" }
            if let snapshot = p.snapshot { line += ", snapshot \(snapshot.prefix(12))" }
            print(line)
            for h in p.hosts {
                let how = h.ok ? "ok, \(h.filesChanged) changed in the last push" : "failed: \(h.error ?? "see the log")"
                print("  \(h.host): \(how)")
            }
        }
    }
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
