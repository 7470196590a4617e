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

/// Ends the process with the CLI contract's exit codes: 0 ok, 1 error, 2 usage or config, 3 conflicts.
struct Exit: Error { let code: Int32 }

/// Every command names itself (`commandName:`): without a name, the argument parser derives one from the type's name
/// through `String(describing:)`, a runtime conformance search that cost a few milliseconds of every run.
struct Syncctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "syncctl",
        abstract: "Sync a project to a remote GPU host and bring outputs back.",
        version: "syncctl \(syncdVersion) (wire protocol \(wireVersion), libssh2 \(libssh2Version))",
        subcommands: [Init.self, Push.self, Pull.self, List.self, Chunks.self, Conflicts.self, Resolve.self, Snapshots.self,
                      Restore.self, Store.self, Add.self, Remove.self,
                      Status.self, Pause.self, Resume.self, Logs.self, DaemonService.self, Plan.self, Exec.self, Compose.self, Hook.self,
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
    static let configuration = CommandConfiguration(commandName: "init", abstract: "Write DIR/syncd.yaml.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(help: "SSH destination ([user@]host[:port], ssh config alias) or local:/abs/path.") var remote: String
    @Option(help: "Project name on the remote (default: the directory's name).") var name: String?
    @Option(name: .customLong("remote-root"), help: "Remote root directory (default: the login user's home).") var remoteRoot: String?
    @Flag(help: "Overwrite an existing syncd.yaml.") var force = false
    @Flag(name: .customLong("no-gitignore"), help: "In a git repository, send what git ignores too (gitignore: false).")
    var noGitignore = false

    func run() throws {
        let dir = URL(fileURLWithPath: directory).standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SyncError("\(dir) is not a directory", code: .usage)
        }
        let file = dir + "/" + ProjectConfig.fileName
        if FileManager.default.fileExists(atPath: file) && !force {
            throw SyncError("\(file) already exists; pass --force to overwrite it", code: .usage)
        }
        // A project inside another would be synced twice, and commands run here would find the inner one.
        if !force, let outer = Project.enclosing((dir as NSString).deletingLastPathComponent), dir != "/" {
            throw SyncError("\(dir) is inside the project at \(outer) (\(outer)/\(ProjectConfig.fileName)); "
                            + "pass --force to make a project of its own here", code: .usage)
        }
        let spec: RemoteSpec
        do { spec = try RemoteSpec(parsing: remote) } catch let e as ConfigError { throw SyncError("--remote: \(e)", code: .usage) }
        var config = ProjectConfig(name: name ?? (dir as NSString).lastPathComponent, remote: spec, remoteRoot: remoteRoot)
        config.ignore = []
        var report: [String] = []
        if let repository = Project.gitRepository(enclosing: dir), !noGitignore {
            config.gitignore = true
            let ignored = try Project.gitIgnored(in: dir, pull: config.pull)
            config.include = ignored.filter(\.looksLikeData).map(\.path)
            report.append("\(repository) is a git repository: gitignore: true, so what git ignores stays here (--no-gitignore: send it).")
            let left = ignored.filter { !$0.looksLikeData }
            if !left.isEmpty {
                let total = left.reduce(UInt64(0)) { $0 + $1.bytes }
                report.append("git's rules leave out \(left.count) path\(left.count == 1 ? "" : "s"), \(formatBytes(total)):")
                for p in left.prefix(10) {
                    report.append("  \(formatBytes(p.bytes).padding(toLength: 10, withPad: " ", startingAt: 0)) \(p.path)\(p.isDirectory ? "/" : "")")
                }
                if left.count > 10 { report.append("  … and \(left.count - 10) more (`syncctl ls --why PATH` says why a path is left out)") }
            }
            for p in ignored where p.looksLikeData {
                report.append("\(p.path)/ (\(formatBytes(p.bytes)), gitignored, looks like data: put under include:, so it reaches the host; "
                              + "take it out of include: in \(ProjectConfig.fileName) if it should not")
            }
        }
        // Validate by parsing what we are about to write.
        do { _ = try ProjectConfig.parse(config.yaml(), file: file, directoryName: (dir as NSString).lastPathComponent) } catch let e as ConfigError {
            throw SyncError(e.description, code: .usage)
        }
        try config.yaml().write(toFile: file, atomically: true, encoding: .utf8)
        printError("wrote \(file)")
        for line in report { print(line) }
    }
}

/// What `push` and `pull` both take.
struct SyncArguments: ParsableArguments {
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(help: "Override the config's remote.") var remote: String?
    @Flag(help: "Print one JSON object with the statistics on stdout.") var json = false
    @Flag(name: .shortAndLong, help: "No progress on stderr (by default: redrawn on a terminal, a line every 10 s otherwise).")
    var quiet = false
    @OptionGroup var state: StateOption

    func project() throws -> Project {
        try Project(directory: directory, options: SyncOptions(remote: remote, stateDirectory: state.stateDirectory,
                                                               progress: !quiet, sshConfig: state.sshConfig))
    }
}

struct Push: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "push", abstract: "Send local changes to the remote.")
    @OptionGroup var options: SyncArguments
    @Flag(help: "Through the running syncd: return once everything changed before the call is on the remote.")
    var wait = false
    @Flag(help: "Keep the local version of every conflict (as `resolve --keep local`); the remote's is kept beside it.")
    var force = false
    @Flag(name: .customLong("prune-ignored"), help: "Delete on the remote what was pushed before and is ignored now (never a pull path).")
    var pruneIgnored = false
    @Flag(name: [.customShort("n"), .customLong("dry-run")],
          help: "Change nothing, here or on the remote: list what a push would send and delete (rsync's itemize codes), and the totals.")
    var dryRun = false
    @Flag(name: [.customShort("i"), .customLong("itemize"), .customShort("v"), .customLong("verbose")],
          help: "List each path the push changed, with rsync's itemize code (>f+++++++++ a new file, >f.st...... a changed one, *deleting).")
    var itemize = false

    func run() throws {
        if dryRun {
            let project = try options.project()
            let first = project.config.store != nil ? try project.forFirstHost() : project
            let session = PushSession(project: first)
            session.pruneIgnored = pruneIgnored
            let plan = try session.dryRun()
            for w in plan.warnings { printError("warning: \(w)") }
            if options.json {
                print(project.jsonText(plan))
            } else {
                for change in plan.changes { print("\(change.code) \(change.path)") }
            }
            if !options.json { print(plan.summary) }
            return
        }
        // Without a daemon, a push of our own is just as complete.
        if wait && !force && !pruneIgnored, let stats = try throughDaemon(.push, options.directory) {
            return report(stats, json: options.json, project: try? options.project())
        }
        let project = try options.project()
        Trace.mark("push: project opened")
        if project.config.store != nil {
            // Through the store, to every host at once.
            let push = StorePush(project: project)
            push.force = force
            push.pruneIgnored = pruneIgnored
            return report(try push.run(), json: options.json, itemize: itemize, project: project)
        }
        let session = PushSession(project: project)
        session.force = force
        session.pruneIgnored = pruneIgnored
        session.itemizes = itemize
        var stats = try session.run()
        if force {
            // Conflicts a pull left (remote-owned files changed here) go the same way.
            let pending = try project.conflictPathsFound(by: "pull")
            if !pending.isEmpty { stats.absorb(try PushSession(project: project, resolving: pending).run()) }
        }
        report(stats, json: options.json, itemize: itemize, project: project)
    }
}

struct Pull: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pull", abstract: "Bring remote-owned paths (output/, checkpoint/) back.")
    @OptionGroup var options: SyncArguments
    @Flag(help: "Through the running syncd: return once a pull that started after the call has finished.")
    var wait = false
    @Flag(help: "Keep the remote version of every conflict (as `resolve --keep remote`); the local one is kept beside it.")
    var force = false
    @Flag(name: [.customShort("i"), .customLong("itemize"), .customShort("v"), .customLong("verbose")],
          help: "List each path the pull brought back, with rsync's itemize code.")
    var itemize = false

    func run() throws {
        if wait && !force, let stats = try throughDaemon(.pull, options.directory) {
            return report(stats, json: options.json, project: try? options.project())
        }
        let project = try options.project()
        var stats = try project.pullFromHosts(force: force)
        if force {
            // Conflicts a push left (local-owned files changed on the remote) go the same way.
            let pending = try project.conflictPathsFound(by: "push")
            if !pending.isEmpty { stats.absorb(try PullSession(project: project, resolving: pending).run()) }
        }
        report(stats, json: options.json, itemize: itemize, project: project)
    }
}

struct Conflicts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conflicts", abstract: "Every path in conflict: each side's size, mtime and digest, what the last sync recorded, and since when.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var state: StateOption

    func run() throws {
        let project = try Project(directory: directory, options: SyncOptions(stateDirectory: state.stateDirectory))
        let conflicts = try project.conflicts()
        if json {
            struct Out: Encodable { let conflicts: [ConflictReport] }
            print(project.jsonText(Out(conflicts: conflicts)))
            return
        }
        if conflicts.isEmpty {
            printError("no conflicts in \(project.directory)")
            return
        }
        for c in conflicts {
            print("\(c.path)  (found by a \(c.found), since \(humanTime(c.since)))")
            for (label, side) in [("here", c.local), ("remote", c.remote), ("last sync", c.recorded)] {
                var line = "  \(label.padding(toLength: 10, withPad: " ", startingAt: 0)) \(side.kind)"
                if let digest = side.digest { line += " \(digest.prefix(12))" }
                if let size = side.size { line += ", \(formatBytes(size))" }
                if let mtime = side.mtime { line += ", modified \(humanTime(mtime))" }
                if let target = side.target { line += " -> \(target)" }
                print(line)
            }
        }
        printError("\(conflicts.count) conflict(s); `syncctl resolve PATH… --keep local|remote` picks a side (the other is kept as NAME.sync-conflict-…)")
    }
}

struct Resolve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve", abstract: "Settle conflicts: keep the local or the remote version of each PATH; the other is kept beside it as NAME.sync-conflict-YYYYMMDD-HHMMSS.EXT.")
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
        report(stats, json: json, project: project)
    }
}

/// A push or pull run by the daemon for `directory`; nil when no daemon runs.
func throughDaemon(_ command: ControlRequest.Command, _ directory: String) throws -> SyncStats? {
    let given = URL(fileURLWithPath: directory).standardizedFileURL.path
    let dir = Project.enclosing(given) ?? given
    guard let answer = try ControlSocket.request(ControlRequest(command, project: dir)) else { return nil }
    // A project the daemon does not run is synced by this process, just as completely.
    if answer.unregistered == true { return nil }
    guard let stats = answer.stats else { throw SyncError("syncd answered the \(command.rawValue) without its statistics") }
    return stats
}

func report(_ stats: SyncStats, json: Bool, itemize: Bool = false, project: Project?) {
    var stats = stats
    stats.groupFailures()
    if let project {
        stats.project = project.directory
        if stats.remote == nil { stats.remote = project.config.remote.description }
    }
    if itemize && !json { for line in stats.itemized { print(line) } }
    if let first = stats.firstPush, !json { print("first push: \(first)") }
    // A pull names what it brought back (every path with -i; else the first few).
    if stats.direction == "pull" && !itemize && !json && !stats.itemized.isEmpty {
        let names = stats.itemized.map { String($0.dropFirst(12)) }
        print("received " + names.prefix(10).joined(separator: ", ") + (names.count > 10 ? " and \(names.count - 10) more (-i lists them)" : ""))
    }
    for w in stats.warnings { printError("warning: \(w)") }
    for h in stats.hosts ?? [] where stats.hosts!.count > 1 || !h.ok {
        printError("\(h.host): " + (h.error ?? "\(h.filesChanged) changed, \(h.filesDeleted) deleted, \(formatBytes(h.bytesSent)) over the link"
                                                + (h.conflicts.isEmpty ? "" : ", \(h.conflicts.count) conflict\(h.conflicts.count == 1 ? "" : "s")")))
    }
    if let uploaded = stats.bytesUploaded, !json {
        print("store: \(formatBytes(uploaded)) uploaded; snapshot \(stats.snapshot ?? "?")")
    }
    for c in stats.conflictMessages { printError("conflict: \(c)") }
    for s in stats.skipped { printError("skipped: \(s)") }
    for e in stats.errors { printError("error: \(e)") }
    // The summary is the command's output (stdout); progress, warnings and errors go to stderr.
    if json { print(stats.json()) } else { print(stats.summary()) }
    if stats.exitCode != 0 { exitWith(stats.exitCode) }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the paths a push would send.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Flag(help: "Print JSON (names that are not UTF-8 carry \\udcXX escapes, see README).") var json = false
    @Flag(name: [.customShort("0"), .customLong("print0")], help: "Print each path's bytes as they are, ended by NUL.")
    var print0 = false
    @Flag(help: "Only the totals, and the top-level directories holding the most bytes.") var summary = false
    @Option(name: .customLong("why"), help: ArgumentHelp("Say whether a push sends PATH and which rule, in which file, decided it.",
                                                          valueName: "PATH"))
    var why: [String] = []

    func run() throws {
        if !why.isEmpty {
            // PATH as the shell sees it: relative to the working directory, which may be below the project.
            let project = try Project(directory: directory == "." ? FileManager.default.currentDirectoryPath : directory)
            var verdicts: [PathVerdict] = []
            for text in why {
                let absolute = URL(fileURLWithPath: text).standardizedFileURL.path
                guard absolute.hasPrefix(project.directory + "/") else {
                    throw SyncError("--why \(text): \(absolute) is not inside the project at \(project.directory)", code: .usage)
                }
                let relative: RelativePath
                do { relative = try RelativePath(String(absolute.dropFirst(project.directory.count + 1))) } catch {
                    throw SyncError("--why \(text): \(error)", code: .usage)
                }
                verdicts.append(try project.why(relative))
            }
            for w in project.rules.git?.skippedLines ?? [] { printError("warning: \(w)") }
            if json {
                struct Out: Encodable { let verdicts: [PathVerdict] }
                return print(project.jsonText(Out(verdicts: verdicts)))
            }
            for v in verdicts { print("\(v.path): \(v.sent ? "sent" : "not sent"): \(v.reason)") }
            return
        }
        let project = try Project(directory: directory)
        // Written as the tree is walked, nothing held per path: a million files list in the time of the walk.
        var sum = TreeSummary.Sum()
        var out: [UInt8] = []
        out.reserveCapacity(1 << 16)
        // `--json` prints what `jsonText` would of `{"paths": [...]}`, in pieces: the keys are sorted, and
        // "paths" comes before the keys every report carries.
        let listsJSON = json && !summary
        let encoder = JSONOutput.encoder()
        if listsJSON { out += Array(#"{"paths":["#.utf8) }
        var listed = 0
        // Paths alone need no stat of each file; the summary and JSON have sizes.
        let warnings = try project.walkPushable(sizes: summary || json) { p in
            if summary {
                sum.add(p.path, kind: p.kind == "file" ? .regular : p.kind == "directory" ? .directory : .symlink, size: p.size)
                return
            }
            if listsJSON {
                if listed > 0 { out.append(UInt8(ascii: ",")) }
                out += Array(JSONOutput.text(p, with: encoder).utf8)
            } else if print0 {
                // With -0 the names' bytes as they are, each ended by NUL, as `find -print0` writes them.
                out += p.path.bytes
                out.append(0)
            } else {
                out += Array(p.path.description.utf8)
                if p.kind == "directory" { out.append(UInt8(ascii: "/")) }
                out.append(UInt8(ascii: "\n"))
            }
            listed += 1
            if out.count >= 1 << 16 {
                Self.write(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        if listsJSON {
            struct Nothing: Encodable { func encode(to encoder: any Encoder) throws {} }
            out += Array("],".utf8) + Array(project.jsonText(Nothing()).utf8.dropFirst()) + [UInt8(ascii: "\n")]
        }
        Self.write(out)
        for w in warnings { printError("warning: \(w)") }
        if listsJSON { return }
        if summary {
            let totals = sum.summary(keep: 10)
            if json { return print(project.jsonText(totals)) }
            print("\(totals.files) files, \(formatBytes(totals.bytes)) in \(totals.directories) directories")
            for d in totals.largest { print("  \(formatBytes(d.bytes).padding(toLength: 10, withPad: " ", startingAt: 0)) \(d.files) files\t\(d.path)") }
        }
    }
}

extension List {
    /// Writes to standard output; a reader that went away (`ls | head`) ends the listing quietly, as `print`'s
    /// lost writes did, instead of the failed write trapping.
    static func write(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        do { try FileHandle.standardOutput.write(contentsOf: Data(bytes)) } catch { Foundation.exit(0) }
    }
}

struct Chunks: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chunks", abstract: "Show a file's chunk boundaries and ids.")
    @Argument(help: "The file.") var file: String
    @Option(help: "Minimum chunk size.") var min: Int = ChunkParameters.default.minSize
    @Option(help: "Average chunk size.") var avg: Int = ChunkParameters.default.avgSize
    @Option(help: "Maximum chunk size.") var max: Int = ChunkParameters.default.maxSize
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let parameters: ChunkParameters
        do { parameters = try ChunkParameters(min: min, avg: avg, max: max) } catch {
            throw SyncError("--min/--avg/--max: \(error)", code: .usage)
        }
        let fd: FileDescriptor
        do { fd = try FileDescriptor.open(file, flags: O_RDONLY) } catch { throw SyncError("\(error)") }
        let content = try FileChunker(parameters).chunk(fd)
        if json {
            struct Item: Encodable { let offset: UInt64; let length: UInt32; let id: String }
            struct Out: Encodable { let file: String; let size: UInt64; let digest: String; let min: Int; let avg: Int; let max: Int; let chunks: [Item] }
            let out = Out(file: file, size: content.size, digest: content.digest.hex, min: min, avg: avg, max: max,
                          chunks: content.chunks.map { Item(offset: $0.offset, length: $0.length, id: $0.id.hex) })
            print(JSONOutput.text(out, project: nil))
        } else {
            print("# \(file): \(content.size) bytes, \(content.chunks.count) chunks (\(parameters)), digest \(content.digest.hex)")
            for c in content.chunks { print("\(c.offset)\t\(c.length)\t\(c.id.hex)") }
        }
    }
}

/// Leaves the process once no thread can touch libssh2 or libcrypto any more (see `LibraryThreads`): `exit` runs
/// their cleanup. Should a thread not end within 5 s, the process leaves without running it (`_exit`).
func exitWith(_ code: Int32) -> Never {
    fflush(nil)
    if LibraryThreads.stopAll(seconds: 5) { exit(code) }
    _exit(code)
}
