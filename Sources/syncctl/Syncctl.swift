import ArgumentParser
import Chunking
import Engine
import Foundation
import SyncConfig
import SSHTransport
import SyncSystem
import Wire

/// Ends the process with the CLI contract's exit codes: 0 ok, 1 error, 2 usage or config, 3 conflicts.
struct Exit: Error { let code: Int32 }

struct Syncctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "syncctl",
        abstract: "Sync a project to a remote GPU host and bring outputs back.",
        version: "syncctl \(syncdVersion) (wire protocol \(wireVersion), libssh2 \(libssh2Version))",
        subcommands: [Init.self, Push.self, Pull.self, List.self, Chunks.self, Conflicts.self, Resolve.self, Snapshots.self,
                      Restore.self, Store.self, Add.self, Remove.self,
                      Status.self, Pause.self, Resume.self, Logs.self, Plan.self, Exec.self, Compose.self, Hook.self,
                      ComposeOverride.self]
    )
}

struct StateOption: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: "Directory for local state (default: $XDG_STATE_HOME/syncd).")
    var stateDirectory: String?
    @Option(name: .customLong("ssh-config"), help: "ssh_config file to use instead of ~/.ssh/config.")
    var sshConfig: String?
}

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write DIR/syncd.yaml.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(help: "SSH destination ([user@]host[:port], ssh config alias) or local:/abs/path.") var remote: String
    @Option(help: "Project name on the remote (default: the directory's name).") var name: String?
    @Option(name: .customLong("remote-root"), help: "Remote root directory (default: the login user's home).") var remoteRoot: String?
    @Flag(help: "Overwrite an existing syncd.yaml.") var force = false

    func run() throws {
        let dir = URL(fileURLWithPath: directory).standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SyncError("\(dir) is not a directory", exitCode: 2)
        }
        let file = dir + "/" + ProjectConfig.fileName
        if FileManager.default.fileExists(atPath: file) && !force {
            throw SyncError("\(file) already exists; pass --force to overwrite it", exitCode: 2)
        }
        let spec: RemoteSpec
        do { spec = try RemoteSpec(parsing: remote) } catch let e as ConfigError { throw SyncError("--remote: \(e)", exitCode: 2) }
        var config = ProjectConfig(name: name ?? (dir as NSString).lastPathComponent, remote: spec, remoteRoot: remoteRoot)
        config.ignore = []
        // Validate by parsing what we are about to write.
        do { _ = try ProjectConfig.parse(config.yaml(), file: file, directoryName: (dir as NSString).lastPathComponent) } catch let e as ConfigError {
            throw SyncError(e.description, exitCode: 2)
        }
        try config.yaml().write(toFile: file, atomically: true, encoding: .utf8)
        printError("wrote \(file)")
    }
}

/// What `push` and `pull` both take.
struct SyncArguments: ParsableArguments {
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(help: "Override the config's remote.") var remote: String?
    @Flag(help: "Print one JSON object with the statistics on stdout.") var json = false
    @OptionGroup var state: StateOption

    func project() throws -> Project {
        try Project(directory: directory, options: SyncOptions(remote: remote, stateDirectory: state.stateDirectory,
                                                               sshConfig: state.sshConfig))
    }
}

struct Push: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send local changes to the remote.")
    @OptionGroup var options: SyncArguments
    @Flag(help: "Through the running syncd: return once everything changed before the call is on the remote.")
    var wait = false
    @Flag(help: "Keep the local version of every conflict (as `resolve --keep local`); the remote's is kept beside it.")
    var force = false
    @Flag(name: .customLong("prune-ignored"), help: "Delete on the remote what was pushed before and is ignored now (never a pull path).")
    var pruneIgnored = false

    func run() throws {
        // Without a daemon, a push of our own is just as complete.
        if wait && !force && !pruneIgnored, let stats = try throughDaemon("push", options.directory) {
            return report(stats, json: options.json)
        }
        let project = try options.project()
        Trace.mark("push: project opened")
        if project.config.store != nil {
            // Through the store, to every host at once.
            let push = StorePush(project: project)
            push.force = force
            push.pruneIgnored = pruneIgnored
            return report(try push.run(), json: options.json)
        }
        let session = PushSession(project: project)
        session.force = force
        session.pruneIgnored = pruneIgnored
        var stats = try session.run()
        if force {
            // Conflicts a pull left (remote-owned files changed here) go the same way.
            let pending = try project.conflictPathsFound(by: "pull")
            if !pending.isEmpty { stats.absorb(try PushSession(project: project, resolving: pending).run()) }
        }
        report(stats, json: options.json)
    }
}

struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Bring remote-owned paths (output/, checkpoint/) back.")
    @OptionGroup var options: SyncArguments
    @Flag(help: "Through the running syncd: return once a pull that started after the call has finished.")
    var wait = false
    @Flag(help: "Keep the remote version of every conflict (as `resolve --keep remote`); the local one is kept beside it.")
    var force = false

    func run() throws {
        if wait && !force, let stats = try throughDaemon("pull", options.directory) { return report(stats, json: options.json) }
        let project = try options.project()
        var stats = try project.pullFromHosts(force: force)
        if force {
            // Conflicts a push left (local-owned files changed on the remote) go the same way.
            let pending = try project.conflictPathsFound(by: "push")
            if !pending.isEmpty { stats.absorb(try PullSession(project: project, resolving: pending).run()) }
        }
        report(stats, json: options.json)
    }
}

struct Conflicts: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Every path in conflict: each side's size, mtime and digest, what the last sync recorded, and since when.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var state: StateOption

    func run() throws {
        let project = try Project(directory: directory, options: SyncOptions(stateDirectory: state.stateDirectory))
        let conflicts = try project.conflicts()
        if json {
            struct Out: Encodable { let conflicts: [ConflictReport] }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(PathText.publicJSON(Array(try encoder.encode(Out(conflicts: conflicts)))))
            return
        }
        if conflicts.isEmpty {
            printError("no conflicts in \(project.directory)")
            return
        }
        for c in conflicts {
            print("\(c.path)  (found by a \(c.found), since \(c.since))")
            for (label, side) in [("here", c.local), ("remote", c.remote), ("last sync", c.recorded)] {
                var line = "  \(label.padding(toLength: 10, withPad: " ", startingAt: 0)) \(side.kind)"
                if let digest = side.digest { line += " \(digest.prefix(12))" }
                if let size = side.size { line += ", \(formatBytes(size))" }
                if let mtime = side.mtime { line += ", modified \(mtime)" }
                if let target = side.target { line += " -> \(target)" }
                print(line)
            }
        }
        printError("\(conflicts.count) conflict(s); `syncctl resolve PATH… --keep local|remote` picks a side (the other is kept as NAME.sync-conflict-…)")
    }
}

struct Snapshots: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The project's snapshots in its store: time, id, files, bytes, new bytes.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let project = try Project(directory: directory)
        let list = try project.snapshots()
        if json {
            struct Out: Encodable { let snapshots: [SnapshotListing] }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(Out(snapshots: list)), as: UTF8.self))
            return
        }
        if list.isEmpty { printError("no snapshots of \(project.config.name) yet; `syncctl push` makes one") }
        for s in list {
            print("\(s.time)  \(s.id)  \(s.files) files  \(formatBytes(s.bytes))  \(formatBytes(s.newBytes)) new")
        }
    }
}

struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Materialize a snapshot exactly: in a new local directory, or on one of the hosts from the store.")
    @Argument(help: "The snapshot: its id (or a unique prefix), as `syncctl snapshots` shows it.") var snapshot: String
    @Option(name: .customLong("to"), help: "An empty or new directory to restore into.") var target: String?
    @Option(name: .customLong("host"), help: "A host of the project (as hosts: names it): its copy becomes the snapshot, read from the store.")
    var host: String?
    @Option(name: .customLong("dir"), help: "Project directory (default: the current directory).") var directory: String = "."
    @Flag(help: "On the host, replace what was changed there since the last push too (kept beside as a conflict copy).")
    var force = false
    @Flag(help: "Print one JSON object with the statistics on stdout.") var json = false

    func validate() throws {
        guard (target == nil) != (host == nil) else { throw ValidationError("give one of --to DIR or --host H") }
        if force && host == nil { throw ValidationError("--force is for --host (a directory given to --to must be empty)") }
    }

    func run() throws {
        let project = try Project(directory: directory)
        if let host {
            let restore = StorePush(project: project)
            restore.force = force
            let stats = try restore.restore(snapshot, host: host)
            if !json && stats.errors.isEmpty { printError("restored snapshot \(stats.snapshot ?? snapshot) on \(host)") }
            return report(stats, json: json)
        }
        let stats = try project.restore(snapshot, to: target!)
        if !json { printError("restored snapshot \(stats.snapshot ?? snapshot) into \(stats.remoteDirectory ?? target!)") }
        report(stats, json: json)
    }
}

struct Store: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The snapshot store.", subcommands: [GC.self])

    struct GC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gc",
            abstract: "Delete this project's snapshots beyond what is kept, then the packs and manifests no kept snapshot uses.")
        @Argument(help: "Project directory.") var directory: String = "."
        @Option(help: "Keep the newest N snapshots.") var keep: Int?
        @Option(name: .customLong("keep-days"), help: "Keep the snapshots of the last D days.") var keepDays: Double?
        @Option(help: "Leave objects younger than this many seconds (a push may be writing them).") var grace: Double = 3600
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let project = try Project(directory: directory)
            let stats = try project.collectGarbage(keep: keep, keepDays: keepDays, grace: grace)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                print(String(decoding: try encoder.encode(stats), as: UTF8.self))
            } else {
                printError("store gc: kept \(stats.snapshotsKept) snapshots, deleted \(stats.snapshotsDeleted); deleted \(stats.packsDeleted) packs and "
                           + "\(stats.manifestsDeleted) manifests, \(formatBytes(stats.bytesFreed)) freed")
            }
        }
    }
}

struct Resolve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Settle conflicts: keep the local or the remote version of each PATH; the other is kept beside it as NAME.sync-conflict-YYYYMMDD-HHMMSS.EXT.")
    @Argument(help: "Paths relative to the project (or absolute, inside it).") var paths: [String]
    @Option(help: "local: send the local version over the remote one; remote: bring the remote version here.")
    var keep: Side
    @Option(name: .customLong("dir"), help: "Project directory (default: the current directory).") var directory: String = "."
    @Flag(help: "Print one JSON object with the statistics on stdout.") var json = false
    @OptionGroup var state: StateOption

    enum Side: String, ExpressibleByArgument { case local, remote }

    func run() throws {
        let project = try Project(directory: directory, options: SyncOptions(stateDirectory: state.stateDirectory,
                                                                               sshConfig: state.sshConfig))
        let targets = try paths.map { try project.relativePath(forArgument: $0) }
        let stats = keep == .local ? try PushSession(project: project, resolving: targets).run()
                                   : try PullSession(project: project, resolving: targets).run()
        for k in stats.kept {
            printError("kept the \(k.side) version of \(k.path) as \(k.copy) (\(k.side == "local" ? "here" : "on the remote"))")
        }
        report(stats, json: json)
    }
}

/// A push or pull run by the daemon for `directory`; nil when no daemon runs.
func throughDaemon(_ command: String, _ directory: String) throws -> SyncStats? {
    let dir = URL(fileURLWithPath: directory).standardizedFileURL.path
    guard let answer = try ControlSocket.request(["command": command, "project": dir]) else { return nil }
    // A project the daemon does not run is synced by this process, just as completely.
    if answer["unregistered"] as? Bool == true { return nil }
    let data = try JSONSerialization.data(withJSONObject: answer["stats"] ?? [:])
    return try JSONDecoder().decode(SyncStats.self, from: data)
}

func report(_ stats: SyncStats, json: Bool) {
    for w in stats.warnings { printError("warning: \(w)") }
    for h in stats.hosts ?? [] where stats.hosts!.count > 1 || !h.ok {
        printError("\(h.host): " + (h.error ?? "\(h.filesChanged) changed, \(h.filesDeleted) deleted, \(formatBytes(h.bytesSent)) over the link"
                                                + (h.conflicts > 0 ? ", \(h.conflicts) conflict(s)" : "")))
    }
    if let uploaded = stats.bytesUploaded {
        printError("store: \(formatBytes(uploaded)) uploaded; snapshot \(stats.snapshot ?? "?")")
    }
    for c in stats.conflictMessages { printError("conflict: \(c)") }
    for s in stats.skipped { printError("skipped: \(s)") }
    for e in stats.errors { printError("error: \(e)") }
    if json { print(stats.json()) } else { printError(stats.summary()) }
    if stats.exitCode != 0 { exitWith(stats.exitCode) }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the paths a push would send.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Flag(help: "Print JSON (names that are not UTF-8 carry \\udcXX escapes, see README).") var json = false
    @Flag(name: [.customShort("0"), .customLong("print0")], help: "Print each path's bytes as they are, ended by NUL.")
    var print0 = false

    func run() throws {
        let project = try Project(directory: directory)
        let (paths, warnings) = try project.listPushable()
        for w in warnings { printError("warning: \(w)") }
        if json {
            struct Out: Encodable { let paths: [ListedPath] }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(PathText.publicJSON(Array(try encoder.encode(Out(paths: paths)))))
        } else if print0 {
            // The names' bytes as they are, each ended by NUL, as `find -print0` writes them.
            var out: [UInt8] = []
            for p in paths { out += p.path.bytes + [0] }
            FileHandle.standardOutput.write(Data(out))
        } else {
            for p in paths { print(p.kind == "directory" ? p.path.description + "/" : p.path.description) }
        }
    }
}

struct Chunks: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a file's chunk boundaries and ids.")
    @Argument(help: "The file.") var file: String
    @Option(help: "Minimum chunk size.") var min: Int = ChunkParameters.default.minSize
    @Option(help: "Average chunk size.") var avg: Int = ChunkParameters.default.avgSize
    @Option(help: "Maximum chunk size.") var max: Int = ChunkParameters.default.maxSize
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let parameters: ChunkParameters
        do { parameters = try ChunkParameters(min: min, avg: avg, max: max) } catch {
            throw SyncError("--min/--avg/--max: \(error)", exitCode: 2)
        }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(file, flags: O_RDONLY) } catch { throw SyncError("\(error)") }
        let content = try FileChunker(parameters).chunk(fd)
        if json {
            struct Item: Encodable { let offset: UInt64; let length: UInt32; let id: String }
            struct Out: Encodable { let file: String; let size: UInt64; let digest: String; let min: Int; let avg: Int; let max: Int; let chunks: [Item] }
            let out = Out(file: file, size: content.size, digest: content.digest.hex, min: min, avg: avg, max: max,
                          chunks: content.chunks.map { Item(offset: $0.offset, length: $0.length, id: $0.id.hex) })
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(out), as: UTF8.self))
        } else {
            print("# \(file): \(content.size) bytes, \(content.chunks.count) chunks (\(parameters)), digest \(content.digest.hex)")
            for c in content.chunks { print("\(c.offset)\t\(c.length)\t\(c.id.hex)") }
        }
    }
}

func exitWith(_ code: Int32) -> Never {
    fflush(stdout)
    exit(code)
}

struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Register DIR with the syncd daemon (it watches and syncs it).")
    @Argument(help: "Project directory (with a syncd.yaml).") var directory: String = "."

    func run() throws {
        let registry = ProjectRegistry()
        let added = try registry.add(directory)
        printError(added ? "added \(directory) to \(registry.file)" : "\(directory) is already in \(registry.file)")
        try tellDaemon(directory, starting: true)
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop the syncd daemon from syncing DIR (its files stay).")
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
    let dir = URL(fileURLWithPath: directory).standardizedFileURL.path
    guard let answer = try ControlSocket.request(["command": "reload"]) else {
        printError("syncd is not running; it \(starting ? "syncs" : "leaves") \(dir) \(starting ? "from" : "alone from") its next start")
        return
    }
    if let why = (answer["failed"] as? [String: String])?[dir] {
        throw SyncError("syncd could not start syncing \(dir): \(why)")
    }
    let running = (answer["projects"] as? [String] ?? []).contains(dir)
    printError(starting ? (running ? "syncd is syncing \(dir) now" : "syncd did not take \(dir) up; see `syncctl logs`")
                        : (running ? "syncd still runs \(dir); see `syncctl logs`" : "syncd stopped syncing \(dir)"))
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "What the running syncd is doing, per project.")
    @Flag(help: "Print the daemon's answer as JSON.") var json = false

    func run() throws {
        guard let answer = try ControlSocket.request(["command": "status"]) else {
            throw SyncError("syncd is not running (no control socket at \(ControlSocket.path()))")
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: answer["projects"] ?? [], options: [.sortedKeys])
            print(PathText.publicJSON([UInt8](data)))
            return
        }
        let projects = answer["projects"] as? [[String: Any]] ?? []
        if projects.isEmpty { print("syncd (pid \(answer["pid"] ?? "?")): no projects; `syncctl add DIR`") }
        for p in projects {
            var line = "\(p["project"] ?? "?"): \(p["state"] ?? "?"), \(p["pending_changes"] ?? 0) pending"
            if let push = p["last_push"] as? String { line += ", last push \(push)" }
            if let pull = p["last_pull"] as? String { line += ", last pull \(pull)" }
            if let conflicts = p["conflicts"] as? [String], !conflicts.isEmpty {
                line += ", conflicts: " + conflicts.map { (try? RelativePath(text: $0).description) ?? $0 }.joined(separator: " ")
            }
            if let error = p["last_error"] as? String { line += ", last error: \(error)" }
            if let snapshot = p["snapshot"] as? String { line += ", snapshot \(snapshot.prefix(12))" }
            print(line)
            for h in p["hosts"] as? [[String: Any]] ?? [] {
                let how = h["ok"] as? Bool == true ? "ok, \(h["files_changed"] ?? 0) changed in the last push" : "failed: \(h["error"] as? String ?? "see the log")"
                print("  \(h["host"] ?? "?"): \(how)")
            }
        }
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop the running syncd from syncing DIR (all projects without DIR).")
    @Argument(help: "Project directory.") var directory: String?
    func run() throws { try pauseOrResume("pause", directory) }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Let the running syncd sync DIR again (all projects without DIR).")
    @Argument(help: "Project directory.") var directory: String?
    func run() throws { try pauseOrResume("resume", directory) }
}

func pauseOrResume(_ command: String, _ directory: String?) throws {
    var request: [String: Any] = ["command": command]
    if let directory { request["project"] = URL(fileURLWithPath: directory).standardizedFileURL.path }
    guard let answer = try ControlSocket.request(request) else {
        throw SyncError("syncd is not running (no control socket at \(ControlSocket.path()))")
    }
    if answer["unregistered"] as? Bool == true { throw SyncError("syncd: \(answer["error"] as? String ?? "not registered")") }
    for p in answer["projects"] as? [String] ?? [] { printError("\(command)d \(p)") }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The running syncd's recent log lines.")
    @Flag(name: .shortAndLong, help: "Keep printing new lines as they come (Ctrl-C to stop).") var follow = false

    func run() throws {
        let running = try ControlSocket.stream(["command": "logs", "follow": follow]) { object in
            for line in object["lines"] as? [String] ?? [] { print(line) }
            fflush(stdout)
            return true
        }
        guard running else { throw SyncError("syncd is not running (no control socket at \(ControlSocket.path()))") }
    }
}

// MARK: builds

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Per image layer: what it reads from the build context, its cache key, and whether it rebuilds.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(help: "Only this compose service.") var service: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let project = try Project(directory: directory)
        let (plans, warnings) = try project.buildPlans(service: service)
        if plans.isEmpty && warnings.isEmpty {
            throw SyncError("\(project.directory): no compose file with a build and no Dockerfile", exitCode: 2)
        }
        if json {
            let out: [String: Any] = ["services": plans.map(\.json), "warnings": warnings]
            print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        for w in warnings { print("warning: \(w)") }
        for plan in plans { printPlan(plan) }
    }
}

func printPlan(_ plan: BuildPlan) {
    print("\(plan.spec.name): context \(plan.spec.context.isEmpty ? "." : plan.spec.context), \(plan.spec.dockerfile)"
          + (plan.spec.target.map { ", target \($0)" } ?? "") + (plan.ignoreFile.isEmpty ? "" : ", ignore file \(plan.ignoreFile)"))
    for stage in plan.stages {
        // Unnamed stages are already called "stage N"; stage names cannot hold a space.
        print("  " + (stage.name.hasPrefix("stage ") ? stage.name : "stage \(stage.name)"))
        for layer in stage.layers {
            let head = layer.display
            let files = layer.files > 0 ? "  (\(layer.files) file\(layer.files == 1 ? "" : "s"), \(formatBytes(layer.bytes)))" : ""
            print("    \(layer.changed ? "rebuild" : "cached ") \(layer.key.hex.prefix(12))  \(head)\(files)")
        }
    }
    print("  context: docker build sends \(plan.contextFiles) files, \(formatBytes(plan.contextBytes)); this build reads \(plan.neededFiles) files, \(formatBytes(plan.neededBytes))")
    for w in plan.warnings { print("  warning: \(w)") }
}

/// Options shared by the commands that push and then act on the remote.
struct RemoteRunOptions: ParsableArguments {
    @Option(name: .customLong("dir"), help: "Project directory (default: the current directory).") var directory: String = "."
    @Flag(name: .customLong("no-push"), help: "Do not push first.") var noPush = false
}

/// Pushes for a build: through the daemon when it runs (its push is complete on return), else a push of our
/// own that sends what the earliest changed layer reads first. Records the layer keys as the last build's.
func pushForBuild(_ project: Project, quiet: Bool = false) throws -> [BuildPlan] {
    let (plans, warnings) = try project.buildPlans()
    for w in warnings { printError("warning: \(w)") }
    let stats: SyncStats
    if project.config.store != nil {
        stats = try StorePush(project: project).run()
    } else if let viaDaemon = try throughDaemon("push", project.directory) {
        stats = viaDaemon
    } else {
        let session = PushSession(project: project)
        let prefixFor: (BuildPlan) -> String = { $0.spec.context.isEmpty ? "" : $0.spec.context + "/" }
        session.firstPaths = plans.flatMap { plan in
            plan.changedFilesInBuildOrder.compactMap { try? RelativePath(bytes: Array(prefixFor(plan).utf8) + $0.bytes) }
        }
        stats = try session.run()
    }
    for e in stats.errors { printError("error: \(e)") }
    if !quiet { printError(stats.summary()) }
    guard stats.exitCode == 0 else { throw SyncError("the push did not complete; not going on", exitCode: stats.exitCode) }
    return plans
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Push, then run CMD in the project's directory on the remote; ends with CMD's exit status.",
        discussion: "One argument is run by the remote shell as written ('make && ls'); several are quoted one by one.")
    @OptionGroup var options: RemoteRunOptions
    @Argument(parsing: .captureForPassthrough, help: "The command.") var command: [String] = []

    func run() throws {
        let words = command.first == "--" ? Array(command.dropFirst()) : command
        guard !words.isEmpty else { throw SyncError("syncctl exec needs a command: syncctl exec -- CMD ARGS…", exitCode: 2) }
        let project = try Project(directory: options.directory, options: SyncOptions(progress: false))
        if !options.noPush { _ = try pushForBuild(project, quiet: true) }
        exitWith(try RemoteCommand.run(project: project, RemoteCommand.commandLine(words)))
    }
}

struct Compose: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Push, then run `docker compose ARGS` (or docker-compose) in the project's directory on the remote.")
    @OptionGroup var options: RemoteRunOptions
    @Argument(parsing: .captureForPassthrough, help: "Arguments for docker compose.") var arguments: [String] = []

    func run() throws {
        let args = arguments.first == "--" ? Array(arguments.dropFirst()) : arguments
        let project = try Project(directory: options.directory, options: SyncOptions(progress: false))
        var plans: [BuildPlan] = []
        if !options.noPush {
            plans = try pushForBuild(project, quiet: true)
            for plan in plans { printError(plan.summary) }
        }
        let status = try RemoteCommand.run(project: project, RemoteCommand.composeLine(args))
        if status == 0 { for plan in plans { try project.recordLayers(plan) } }
        exitWith(status)
    }
}

struct Hook: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Hooks to call from make, a shell alias or git.",
                                                    subcommands: [PreBuild.self])

    struct PreBuild: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pre-build",
            abstract: "Before `docker compose up --build` on the remote: push --wait, then one line per image saying what rebuilds.")
        @Argument(help: "Project directory.") var directory: String = "."

        func run() throws {
            let project = try Project(directory: directory, options: SyncOptions(progress: false))
            let plans = try pushForBuild(project, quiet: true)
            for plan in plans {
                print(plan.summary)
                try project.recordLayers(plan)
            }
        }
    }
}

struct ComposeOverride: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compose-override",
        abstract: "Write a compose override file whose bind mounts name the remote's absolute paths (for DOCKER_HOST=ssh://…).")
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(name: .customLong("remote-dir"), help: "The project's directory on the remote (default: asked of the agent by a push).")
    var remoteDirectory: String?

    func run() throws {
        let project = try Project(directory: directory, options: SyncOptions(progress: false))
        guard let compose = try project.buildSpecs().compose else {
            throw SyncError("\(project.directory): no compose file (compose.yaml or docker-compose.yml)", exitCode: 2)
        }
        let remoteDir: String
        if let remoteDirectory { remoteDir = remoteDirectory } else {
            let stats = try PushSession(project: project).run()
            guard let dir = stats.remoteDirectory else { throw SyncError("the agent did not say where the project is") }
            remoteDir = dir
        }
        let name = compose.files[0].hasPrefix("compose.") ? "compose.override.yaml" : "docker-compose.override.yml"
        let path = project.directory + "/" + name
        let marker = "# written by syncctl compose-override"
        if let existing = try? String(contentsOfFile: path, encoding: .utf8), !existing.hasPrefix(marker) {
            throw SyncError("\(path) exists and was not written by syncctl; move it aside or merge by hand", exitCode: 2)
        }
        var lines = [marker + ": bind mounts point at \(remoteDir) on the remote", "services:"]
        for service in compose.services {
            let mounts = service.mounts.compactMap { m -> String? in
                guard let rel = m.relativeSource else { return nil }
                return "\(rel == "." ? remoteDir : remoteDir + "/" + rel):\(m.target)\(m.readOnly ? ":ro" : "")"
            }
            guard !mounts.isEmpty else { continue }
            lines.append("  \(service.name):")
            lines.append("    volumes:")
            for m in mounts { lines.append("      - \"\(m)\"") }
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        printError("wrote \(path)")
    }
}
