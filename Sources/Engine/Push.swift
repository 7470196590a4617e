import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncSystem
import Transport
import Wire

/// One operation of a push, in the order it is sent.
enum PushOperation {
    case file(LocalEntry, base: PathState)
    case symlink(LocalEntry, base: PathState)
    case directory(LocalEntry)
    case delete(path: RelativePath, base: PathState)

    var path: RelativePath {
        switch self {
        case .file(let e, _), .symlink(let e, _), .directory(let e): return e.path
        case .delete(let p, _): return p
        }
    }

    /// What the sender believes the remote holds at the path.
    var base: PathState {
        switch self {
        case .file(_, let base), .symlink(_, let base), .delete(_, let base): return base
        case .directory: return .absent
        }
    }
}

/// Works out what a push must send: compares the local snapshot with what was last pushed and orders the
/// operations: deletes first (children before their directory), then directories, then files and symlinks.
/// Deleting first clears the way for type changes, and a deleted file's content stays in the agent's cache,
/// so a moved file is renamed out of it on the remote instead of being copied or sent.
/// Files whose content is not known yet (`content` nil: their stat changed) are planned as changed; the sender
/// drops those that turn out unchanged once hashed. Pushed paths for which `isLeftAlone` holds are neither
/// deleted nor compared. With `everything`, every local entry is sent, changed since the last push or not, so
/// that the agent compares each with what the remote holds (a restore: the remote must end up exactly so).
func planPush(local: [LocalEntry], pushed: [RelativePath: SyncedEntry], everything: Bool = false,
              isLeftAlone: (RelativePath) -> Bool) -> [PushOperation] {
    var present: Set<RelativePath> = []
    present.reserveCapacity(local.count)
    for e in local { present.insert(e.path) }
    var upserts: [LocalEntry] = []
    for e in local {
        guard let old = pushed[e.path], !everything else { upserts.append(e); continue }
        let now = e.synced
        let differs: Bool
        switch now.kind {
        case .file: differs = now.digest == nil || old != now
        case .directory: differs = old.kind != .directory || old.permissions != now.permissions
        case .symlink: differs = old.kind != .symlink || old.target != now.target
        }
        if differs { upserts.append(e) }
    }
    var deleted = Set(pushed.keys.filter { !present.contains($0) && !isLeftAlone($0) })
    // Paths whose kind changes: what was there must go before the new kind can be placed.
    var clearFirst: Set<RelativePath> = []
    for e in upserts {
        if let old = pushed[e.path], old.kind != e.synced.kind { clearFirst.insert(e.path) }
        var parent = e.path.parent
        while let p = parent {
            if let old = pushed[p], old.kind != .directory { clearFirst.insert(p) }
            parent = p.parent
        }
    }
    var early: [RelativePath] = []
    for p in clearFirst {
        early.append(p)
        early.append(contentsOf: deleted.filter { $0.isWithin(p) && $0 != p })
    }
    let earlySet = Set(early)
    deleted.subtract(earlySet)
    var ops: [PushOperation] = []
    for p in earlySet.union(deleted).sorted(by: >) { ops.append(.delete(path: p, base: pushed[p]!.pathState)) }
    let base: (LocalEntry) -> PathState = { e in
        earlySet.contains(e.path) ? .absent : (pushed[e.path]?.pathState ?? .absent)
    }
    for e in upserts where e.stat.kind == .directory { ops.append(.directory(e)) }
    for e in upserts where e.stat.kind != .directory {
        ops.append(e.stat.kind == .symlink ? .symlink(e, base: base(e)) : .file(e, base: base(e)))
    }
    return ops
}

/// New files whose content is that of a deleted file: moves and renames.
func countMoved(_ ops: [PushOperation], pushed: [RelativePath: SyncedEntry]) -> Int {
    var gone: Set<ChunkID> = []
    for case .delete(_, .file(let digest)) in ops { gone.insert(digest) }
    guard !gone.isEmpty else { return 0 }
    var moved = 0
    for case .file(let e, _) in ops where pushed[e.path] == nil {
        if let digest = e.content?.digest, gone.contains(digest) { moved += 1 }
    }
    return moved
}

/// Hashes the files a push has to identify, in push order, on a thread of its own, so that reading and chunking
/// overlap with connecting and sending instead of preceding them. Each result is handed over once (the sender
/// keeps it), and the records go to the stat cache in batches as they are made, so a push of 100k new files
/// does not hold them all twice.
final class ContentHasher {
    private let project: Project
    private let state: StateStore
    private let entries: [(op: Int, entry: LocalEntry)]
    private let condition = NSCondition()
    private var results: [Int: Result<Hashed, ScanWarning>] = [:]
    private var finished = false
    private var cancelled = false
    /// True while the sender waits in `result(for:)`: only then is it woken.
    private var waiting = false
    private static let saveBatch = 4096
    /// Bytes of small files kept with their results so the sender need not read them again, at most
    /// `keptLimit` at once (beyond it a file is read again when sent).
    private var keptBytes = 0
    private static let keptLimit = 64 << 20
    static let keepFilesUpTo = 64 << 10

    /// A file's content, and its bytes when it is small and was read whole.
    struct Hashed {
        var file: CachedFile
        var bytes: [UInt8]?
    }

    /// `ops` indices whose file entries have no content yet.
    init(project: Project, state: StateStore, ops: [PushOperation]) {
        self.project = project
        self.state = state
        var list: [(Int, LocalEntry)] = []
        for (index, op) in ops.enumerated() {
            if case .file(let e, _) = op, e.content == nil { list.append((index, e)) }
        }
        entries = list
    }

    func start() {
        let thread = Thread { [self] in
            let chunker = FileChunker(project.chunking)
            var unsaved: [CachedFile] = []
            for (op, entry) in entries {
                condition.lock()
                let stop = cancelled
                condition.unlock()
                if stop { break }
                condition.lock()
                let keep = keptBytes < Self.keptLimit ? Self.keepFilesUpTo : 0
                condition.unlock()
                let result = Snapshotter.hash(entry, in: project, with: chunker, keepingUpTo: keep).map { Hashed(file: $0.file, bytes: $0.bytes) }
                if case .success(let hashed) = result { unsaved.append(hashed.file) }
                condition.lock()
                results[op] = result
                if case .success(let hashed) = result { keptBytes += hashed.bytes?.count ?? 0 }
                if waiting { condition.broadcast() }
                condition.unlock()
                if unsaved.count >= Self.saveBatch {
                    // The stat cache is an optimisation: a failed write only costs hashing again next time.
                    try? state.saveFiles(unsaved)
                    unsaved.removeAll(keepingCapacity: true)
                }
            }
            try? state.saveFiles(unsaved)
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "hasher"
        thread.start()
    }

    /// The content of the file of operation `op`, waiting for it when needed; asked for once per operation.
    func result(for op: Int) -> Result<Hashed, ScanWarning> {
        condition.lock()
        defer { condition.unlock() }
        while results[op] == nil && !finished {
            waiting = true
            condition.wait()
            waiting = false
        }
        let result = results.removeValue(forKey: op) ?? .failure(ScanWarning(path: "?", message: "not hashed"))
        if case .success(let hashed) = result { keptBytes -= hashed.bytes?.count ?? 0 }
        return result
    }

    /// Stops hashing after the current file and waits until what was hashed is in the stat cache.
    func stop() {
        condition.lock()
        cancelled = true
        while !finished { condition.wait() }
        condition.unlock()
    }
}

/// Runs a push of a project to its remote.
public final class PushSession {
    private let project: Project
    /// Files in flight at once; bounds agent memory, not latency (no round trip per file). Well above the agent's
    /// batch of small files made durable together (2000), so the next batch fills while one is synced.
    private let window = 8192

    private let link: AgentLink?
    private let changedPaths: Set<RelativePath>?
    /// `resolve --keep local`: only these paths are sent, each forced, pull paths included.
    private let resolving: [RelativePath]?
    /// Files to send before the others, in this order (what the earliest changed image layer reads).
    public var firstPaths: [RelativePath] = []
    /// `push --force`: a path changed on both sides gets the local version, and the remote's version is kept
    /// beside it as a conflict copy.
    public var force = false
    /// `push --prune-ignored`: paths pushed before that are ignored now are deleted on the remote (never a pull
    /// path); without it they are left there and reported.
    public var pruneIgnored = false
    /// Chunks the agent reads from the snapshot store (its own fast link) instead of receiving them over this one.
    public var storeSource: StoreSource?
    /// Instead of `storeSource`: places that grow while the push runs (the packs of an upload still going on).
    var storeFeed: StoreFeed?
    /// Called once the agent is connected (the hello sent), before any operation.
    var onConnected: (() -> Void)?
    /// The tree to push instead of scanning: the local one as a scan just found it (a push through the store to
    /// several hosts scans once), or with `restoring` a snapshot's entries, every chunk in `storeSource`; then no
    /// local file is read, and every entry is compared on the remote.
    var fixedTree: [LocalEntry]?
    var restoring = false

    /// With `link`, the push runs over that persistent connection (the daemon's); without, it makes its own.
    /// With `changedPaths` (what a watcher reported), only those paths are looked at, and what was below those
    /// that are gone; without, the whole project is scanned. With `resolving`, only those paths are sent, and
    /// the remote's version of each is kept beside it where it differs (`resolve --keep local`).
    public init(project: Project, link: AgentLink? = nil, changedPaths: Set<RelativePath>? = nil, resolving: [RelativePath]? = nil) {
        self.project = project
        self.link = link
        self.changedPaths = changedPaths
        self.resolving = resolving
    }

    public func run() throws -> SyncStats {
        let started = monotonicNanos()
        do { return try runOnce(started: started, only: changedPaths) } catch is RemoteReplaced {
            // What was remembered of the remote is dropped; compare everything again, once.
            var stats = try runOnce(started: started, only: nil)
            stats.warnings.insert(replacedRemoteWarning(project), at: 0)
            return stats
        }
    }

    /// The file operations for `paths` moved to the front of the files, in the order of `paths`; deletes and
    /// directories stay ahead of them.
    static func sendingFirst(_ paths: [RelativePath], in ops: [PushOperation]) -> [PushOperation] {
        var rank: [RelativePath: Int] = [:]
        for (i, p) in paths.enumerated() where rank[p] == nil { rank[p] = i }
        let firstFile = ops.firstIndex { if case .file = $0 { return true } else { return false } } ?? ops.count
        let head = ops[..<firstFile]
        var early: [(Int, PushOperation)] = []
        var rest: [PushOperation] = []
        for op in ops[firstFile...] {
            if case .file = op, let r = rank[op.path] { early.append((r, op)) } else { rest.append(op) }
        }
        return Array(head) + early.sorted { $0.0 < $1.0 }.map(\.1) + rest
    }

    /// Pushed paths that a push leaves alone: pull paths, and (unless pruning) paths now ignored.
    private func isLeftAlone(_ path: RelativePath) -> Bool {
        project.isPullPath(path) || (!pruneIgnored && project.rules.isExcluded(path.bytes))
    }

    /// The paths a full push would send now, in sending order (directories with a trailing "/"); for tests and
    /// diagnostics.
    public func plannedOrder() throws -> [String] {
        let state = try project.openState()
        let scan = try Snapshotter(project: project, state: state).scan(roots: nil)
        var ops = planPush(local: scan.entries, pushed: try state.load(.pushed), isLeftAlone: isLeftAlone)
        if !firstPaths.isEmpty { ops = Self.sendingFirst(firstPaths, in: ops) }
        return ops.map { if case .directory = $0 { return $0.path.description + "/" } else { return $0.path.description } }
    }

    /// The operations of `resolve --keep local`: each path as it is here now (a delete where it is gone), its
    /// base what the last sync recorded (the pulled snapshot for a pull path).
    private func resolveOperations(_ paths: [RelativePath], state: StateStore) throws -> (ops: [PushOperation], scan: Snapshotter.Scan) {
        let scan = try Snapshotter(project: project, state: state).scan(resolving: paths)
        let pushed = try state.load(.pushed, paths: paths, subtrees: [])
        let pulled = try state.load(.pulled, paths: paths, subtrees: [])
        var ops: [PushOperation] = []
        var found: Set<RelativePath> = []
        for e in scan.entries {
            found.insert(e.path)
            let base = (project.isPullPath(e.path) ? pulled[e.path] : pushed[e.path])?.pathState ?? .absent
            switch e.stat.kind {
            case .directory: ops.append(.directory(e))
            case .symlink: ops.append(.symlink(e, base: base))
            default: ops.append(.file(e, base: base))
            }
        }
        for p in paths where !found.contains(p) {
            let base = (project.isPullPath(p) ? pulled[p] : pushed[p])?.pathState ?? .absent
            ops.insert(.delete(path: p, base: base), at: 0)
        }
        return (ops, scan)
    }

    private func runOnce(started: UInt64, only: Set<RelativePath>?) throws -> SyncStats {
        var stats = SyncStats(direction: "push")
        let state = try project.openState()
        // Connecting starts first: it is most of a small push's time, and runs while the state loads and the tree
        // is scanned. The operations go out right behind the hello, without waiting for the welcome: the agent
        // refuses them all if its instance is not the one expected (a wiped or replaced remote).
        let hello = Hello(role: .push, project: project.config.name, remoteRoot: project.remoteRootForAgent,
                          pullPaths: project.pullPaths.map { String(decoding: $0.bytes, as: UTF8.self) }, chunking: project.chunking,
                          expectInstance: try state.remoteInstance() ?? "", conflictStamp: conflictStamp())
        let connecting = PendingConnection(project: project, link: link) { _ in hello }
        var pushed: [RelativePath: SyncedEntry] = [:]
        var knownScan: Snapshotter.Scan?
        var resolveOps: [PushOperation]?
        do {
            if let fixedTree {
                pushed = try state.load(.pushed)
                knownScan = Snapshotter.Scan(entries: fixedTree, warnings: [], cache: [:])
            } else if let resolving {
                let (ops, scan) = try resolveOperations(resolving, state: state)
                pushed = try state.load(.pushed, paths: resolving, subtrees: [])
                resolveOps = ops
                knownScan = scan
            } else if let only {
                let paths = only.sorted()
                let scan = try Snapshotter(project: project, state: state).scan(only: paths)
                let directories = Set(scan.entries.filter { $0.stat.kind == .directory }.map(\.path))
                // What was below a path that is no longer a directory is gone too.
                pushed = try state.load(.pushed, paths: paths, subtrees: paths.filter { !directories.contains($0) })
                knownScan = scan
                Trace.mark("push: looked at \(paths.count) reported paths")
            } else {
                pushed = try state.load(.pushed)
                Trace.mark("push: loaded \(pushed.count) pushed entries")
            }
        } catch {
            connecting.cancel()
            throw error
        }
        let scan: Snapshotter.Scan
        var planned: [PushOperation]
        do {
            scan = try knownScan ?? Snapshotter(project: project, state: state).scan(roots: nil)
            Trace.mark("push: scanned \(scan.entries.count) entries")
            planned = resolveOps ?? planPush(local: scan.entries, pushed: pushed, everything: restoring, isLeftAlone: isLeftAlone)
        } catch {
            connecting.cancel()
            throw error
        }
        if resolveOps == nil {
            // Pushed earlier, ignored now: left on the remote unless pruned, and said so.
            let present = Set(scan.entries.map(\.path))
            stats.leftIgnored = pushed.keys.filter {
                !present.contains($0) && !project.isPullPath($0) && project.rules.isExcluded($0.bytes)
            }.sorted()
            if pruneIgnored { stats.leftIgnored = [] }
            if !stats.leftIgnored.isEmpty {
                stats.warnings.append("left on the remote: \(stats.leftIgnored.count) path\(stats.leftIgnored.count == 1 ? "" : "s") now ignored"
                                      + " (\(stats.leftIgnored.prefix(3).map(\.description).joined(separator: ", "))"
                                      + (stats.leftIgnored.count > 3 ? ", …" : "") + "); `syncctl push --prune-ignored` deletes them there")
            }
        }
        stats.filesScanned = scan.entries.count
        if !firstPaths.isEmpty { planned = Self.sendingFirst(firstPaths, in: planned) }
        let hasher = ContentHasher(project: project, state: state, ops: planned)
        hasher.start()
        let link: AgentLink
        do { link = try connecting.wait() } catch {
            hasher.stop()
            throw error
        }
        onConnected?()
        Trace.mark("push: connected (round trip \(link.connection.stream.roundTripSeconds.map { String(format: "%.2f ms", $0 * 1000) } ?? "unknown"))")
        let totalBytes = planned.reduce(UInt64(0)) { sum, op in
            if case .file(let e, _) = op { return sum + e.stat.size }
            return sum
        }
        let progress = ProgressReporter(label: "push", enabled: project.options.progress)
        let pipeline = PushPipeline(project: project, link: link, ops: planned, pushed: pushed, hasher: hasher,
                                    window: window, progress: progress, totalBytes: totalBytes,
                                    force: force || resolving != nil, storeFeed: storeFeed ?? storeSource.map { StoreFeed($0, complete: true) },
                                    readsLocalFiles: !restoring) { instance in
            if try state.adoptRemoteInstance(instance) { throw RemoteReplaced() }
        }
        planned = []  // the pipeline owns the operations now: filling in contents copies nothing
        let outcome: PipelineOutcome
        do {
            outcome = try pipeline.run()
        } catch let error as RemoteReplaced {
            progress.finish()
            hasher.stop()
            _ = link.fail(error)
            throw error
        } catch {
            progress.finish()
            hasher.stop()
            let why = link.fail(error)
            // What the agent answered before the failure is on the remote: the record says so, so that the next
            // push compares against it rather than against nothing.
            var partial = SyncStats(direction: "push")
            let answered = pipeline.answeredSoFar()
            try? record(answered, pushed: pushed, state: state, into: &partial, allOf: nil)
            throw SyncError("push to \(project.config.remote) failed: \(why); run the push again to resume")
        }
        progress.finish()
        Trace.mark("push: pipeline done")
        hasher.stop()
        if let why = link.endSession() { stats.warnings.append(why) }
        stats.remoteDirectory = link.remoteDirectory
        Trace.mark("push: session ended")
        let ops = outcome.ops
        stats.warnings = scan.warnings.map(\.description) + outcome.skipped.map(\.description) + stats.warnings
        stats.filesMoved = countMoved(ops, pushed: pushed)
        stats.chunksSent = outcome.chunksSent
        stats.bytesSent = outcome.bytesSent
        stats.bytesReceived = outcome.bytesReceived
        stats.streams = outcome.streams
        stats.warnings += pipeline.streamWarnings.map { "an extra stream could not be opened, so the push used fewer: \($0)" }

        Trace.mark("push: recording")
        // A full push looked at every local-owned path: a push conflict it did not find again is gone.
        try record(outcome, pushed: pushed, state: state, into: &stats, allOf: only == nil && resolving == nil ? .push : nil)
        Trace.mark("push: recorded")
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    /// Counts what the agent did into `stats`, and records it: the pushed (and, for pull paths a resolve sent,
    /// the pulled) snapshot, and the conflicts found and cleared.
    private func record(_ outcome: PipelineOutcome, pushed: [RelativePath: SyncedEntry], state: StateStore,
                        into stats: inout SyncStats, allOf: ConflictRecord.Found?) throws {
        let ops = outcome.ops
        var changes: [(RelativePath, SyncedEntry?)] = []
        var pulledChanges: [(RelativePath, SyncedEntry?)] = []
        var conflicts: [ConflictRecord] = []
        var cleared: [RelativePath] = []
        let now = wallClockNanos()
        for (index, op) in ops.enumerated() {
            let id = UInt32(index + 1)
            if outcome.notSent.contains(id) {
                // Hashed and found as last pushed: the remote has it already. Unreadable files have a warning.
                if case .file(let e, _) = op, e.content != nil { changes.append((e.path, e.synced)) }
                continue
            }
            switch op {
            case .file(let e, _):
                stats.filesChanged += 1
                stats.bytesLogical += e.content?.size ?? 0
                stats.chunksTotal += e.content?.chunks.count ?? 0
            case .symlink: stats.filesChanged += 1
            case .delete: stats.filesDeleted += 1
            case .directory: break
            }
            guard let result = outcome.results[id] else {
                stats.errors.append("\(op.path): no answer from the agent")
                continue
            }
            if !result.keptAs.isEmpty, let copy = try? op.path.replacingName(with: result.keptAs) {
                stats.kept.append(KeptCopy(path: op.path, copy: copy, side: "remote"))
            }
            switch result.status {
            case .applied, .unchanged:
                let entry: SyncedEntry?
                switch op {
                case .file(let e, _), .symlink(let e, _), .directory(let e): entry = e.synced
                case .delete: entry = nil
                }
                if project.isPullPath(op.path) { pulledChanges.append((op.path, entry)) } else { changes.append((op.path, entry)) }
                cleared.append(op.path)
            case .conflict:
                stats.conflicts += 1
                stats.conflictPaths.append(op.path)
                let message = "\(op.path): \(result.message); both versions kept (`syncctl resolve \(shellQuoted(op.path))"
                    + " --keep local|remote`, or `push --force`)"
                stats.conflictMessages.append(message)
                conflicts.append(ConflictRecord(path: op.path, found: .push, sinceNanos: now, local: localSide(op),
                                                remote: ConflictSide(result.current, size: result.currentSize, mtimeNanos: result.currentMtimeNanos),
                                                recorded: ConflictSide(op.base, synced: pushed[op.path]), message: result.message))
            case .failed:
                if outcome.aborted.contains(id) && !restoring {
                    stats.warnings.append("\(op.path): changed while being pushed; it goes with the next push")
                } else {
                    stats.errors.append("\(op.path): \(result.message)")
                }
            }
        }
        Trace.mark("push: answers counted")
        try state.update(.pushed, changes)
        try state.update(.pulled, pulledChanges)
        Trace.mark("push: snapshot written")
        try state.noteConflicts(conflicts, cleared: cleared, allOf: allOf)
    }

    private func localSide(_ op: PushOperation) -> ConflictSide {
        switch op {
        case .file(let e, _):
            return ConflictSide(kind: .file, digest: e.content?.digest, size: e.stat.size, mtimeNanos: e.stat.mtimeNanos)
        case .symlink(let e, _): return ConflictSide(kind: .symlink, target: e.linkTarget)
        case .directory: return ConflictSide(kind: .directory)
        case .delete: return .absent
        }
    }
}

/// The agent's answers to a push, compactly: a status byte per operation, and the whole answer for the few
/// that say more (a message, a conflict, a kept copy): a push of 100k files keeps 100k answers.
struct OpAnswers {
    private var statuses: [UInt8]
    private var details: [UInt32: OpResult] = [:]
    private static let none: UInt8 = 0xFF

    init(count: Int) { statuses = Array(repeating: Self.none, count: count) }

    /// False when `result.op` is not an operation of this push.
    mutating func record(_ result: OpResult) -> Bool {
        guard result.op >= 1, Int(result.op) <= statuses.count else { return false }
        statuses[Int(result.op) - 1] = result.status.rawValue
        if !result.message.isEmpty || result.status == .conflict || !result.keptAs.isEmpty { details[result.op] = result }
        return true
    }

    /// The answer to `op` (for a plain one, `current` is not kept); nil when none came.
    subscript(op: UInt32) -> OpResult? {
        guard op >= 1, Int(op) <= statuses.count, let status = OpStatus(rawValue: statuses[Int(op) - 1]) else { return nil }
        return details[op] ?? OpResult(op: op, status: status, message: "", current: .absent)
    }
}

struct PipelineOutcome {
    /// The operations with every file's content filled in.
    var ops: [PushOperation] = []
    /// Operations not sent: files found unchanged once hashed, or unreadable (see `skipped`).
    var notSent: Set<UInt32> = []
    var skipped: [ScanWarning] = []
    var results = OpAnswers(count: 0)
    var aborted: Set<UInt32> = []
    var chunksSent = 0
    var bytesSent: UInt64 = 0
    var bytesReceived: UInt64 = 0
    var streams = 1
}

/// The pipelined exchange: this thread sends operations and requested chunks, a reader thread collects the
/// agent's requests and answers. Only the window of files in flight ever makes the sender wait.
final class PushPipeline {
    private let project: Project
    private let link: AgentLink
    private var ops: [PushOperation]
    private let pushed: [RelativePath: SyncedEntry]
    private let hasher: ContentHasher
    /// Every operation is sent forced (see `FileHeader.force`).
    private let force: Bool
    private let storeFeed: StoreFeed?
    /// False when the tree pushed is not the local one (a restore): every chunk must come from the store.
    private let readsLocalFiles: Bool
    private let checkInstance: (String) throws -> Void
    private let window: Int
    private let reader: FrameReader
    private let writer: FrameWriter
    private let progress: ProgressReporter
    private let totalBytes: UInt64
    private let sender: ChunkSender
    /// Digests of every file the remote holds as far as the last push knows.
    private let remoteDigests: Set<ChunkID>
    private static let eagerLimit: UInt64 = 256 << 10

    private let condition = NSCondition()
    private var needs: [(UInt32, [UInt32])] = []
    private var inFlight = 0
    private var agentDone = false
    private var fatal: Error?
    /// Written by the reader thread under `condition`.
    private var results: OpAnswers
    /// Sender-thread only.
    private var outcome = PipelineOutcome()
    private var bytesDone: UInt64 = 0
    private var openFile: (op: UInt32, fd: FileDescriptor)?
    /// The bytes of the file being sent, as the hasher read them (small files only): sent from memory.
    private var heldBytes: (op: UInt32, bytes: [UInt8])?
    /// Store chunks whose places the agent has been told, and how many packs (sender thread only).
    private var placesSent: Set<ChunkID> = []
    private var packsSent = 0
    /// Extra connections for chunk data, once the agent said where they join (set by the reader thread under
    /// `condition`), and how many were asked for.
    private var streams: ExtraStreams?
    private var streamsAsked = 0
    /// A push sends this much at least before it asks for extra streams: below it, their SSH handshakes cost more
    /// than they could save.
    static let streamsThreshold: UInt64 = 64 << 20
    /// Why extra streams could not be opened (told as warnings).
    private(set) var streamWarnings: [String] = []

    init(project: Project, link: AgentLink, ops: [PushOperation], pushed: [RelativePath: SyncedEntry], hasher: ContentHasher,
         window: Int, progress: ProgressReporter, totalBytes: UInt64, force: Bool, storeFeed: StoreFeed?,
         readsLocalFiles: Bool = true, checkInstance: @escaping (String) throws -> Void) {
        self.checkInstance = checkInstance
        self.readsLocalFiles = readsLocalFiles
        self.force = force
        self.storeFeed = storeFeed
        sender = ChunkSender(compress: project.compresses(roundTrip: link.connection.stream.roundTripSeconds))
        self.project = project
        self.link = link
        self.ops = ops
        results = OpAnswers(count: ops.count)
        self.pushed = pushed
        remoteDigests = Set(pushed.values.compactMap(\.digest))
        self.hasher = hasher
        self.window = window
        self.progress = progress
        self.totalBytes = totalBytes
        reader = link.reader
        writer = link.writer
        bytesAtStart = (writer.bytesWritten, reader.bytesRead)
    }

    /// The link's byte counts when this session began (a persistent link carries many sessions).
    private let bytesAtStart: (written: UInt64, read: UInt64)

    /// The connection has sent the handshake and hello already; operations follow at once, and the reader thread
    /// checks the agent's handshake and welcome as they arrive.
    func run() throws -> PipelineOutcome {
        do { return try exchange() } catch {
            // A transport error here often follows the agent's own account of what went wrong (it said so and
            // exited), which the reader thread is about to take in: that is the better message.
            condition.lock()
            let deadline = Date().addingTimeInterval(0.5)
            while fatal == nil && !agentDone && Date() < deadline { _ = condition.wait(until: deadline) }
            let reported = fatal
            condition.unlock()
            if let reported = reported as? SyncError, reported.description.hasPrefix("agent:") { throw reported }
            throw error
        }
    }

    private func exchange() throws -> PipelineOutcome {
        let readerThread = Thread { [self] in readLoop() }
        readerThread.start()
        var finished = false
        defer {
            condition.lock()
            let streams = self.streams
            condition.unlock()
            if let streams {
                if finished { streamWarnings = streams.finish() } else { streams.abort() }
            }
        }
        if readsLocalFiles, totalBytes >= Self.streamsThreshold, project.streamCount > 1 {
            streamsAsked = project.streamCount - 1
            try writer.send(.streamsOpen(count: UInt8(streamsAsked)))
        }
        if let storeFeed { try sendPacks(storeFeed.packs(from: 0), of: storeFeed) }

        for index in ops.indices {
            let id = UInt32(index + 1)
            if case .file(var e, let base) = ops[index], e.content == nil {
                switch hasher.result(for: index) {
                case .success(let hashed):
                    let record = hashed.file
                    heldBytes = hashed.bytes.map { (UInt32(index + 1), $0) }
                    e.content = ChunkedContent(chunks: record.chunks, digest: record.digest, size: record.stat.size)
                    ops[index] = .file(e, base: base)
                    if pushed[e.path] == e.synced && !force {
                        outcome.notSent.insert(id)
                        continue
                    }
                case .failure(let warning):
                    outcome.notSent.insert(id)
                    outcome.skipped.append(warning)
                    continue
                }
            }
            try waitForWindow()
            try send(ops[index], id: id)
            heldBytes = nil
        }
        try writer.send(.endOfOperations)
        Trace.mark("push: all operations sent")
        while true {
            try serviceNeeds()
            condition.lock()
            if let fatal { condition.unlock(); throw fatal }
            if agentDone && needs.isEmpty { condition.unlock(); break }
            let idle = needs.isEmpty
            condition.unlock()
            if idle {
                try flushAll()
                condition.lock()
                var broken: String?
                while needs.isEmpty && !agentDone && fatal == nil && broken == nil { broken = waitWatchingStreams() }
                condition.unlock()
                if let broken { throw SyncError("an extra stream of this push failed: \(broken)") }
            }
        }
        try flushAll()
        finished = true
        condition.lock()
        let streams = self.streams
        condition.unlock()
        outcome.bytesSent = writer.bytesWritten - bytesAtStart.written + (streams?.bytesWritten ?? 0)
        outcome.streams = 1 + (streams?.carryingCount ?? 0)
        condition.lock()
        outcome.bytesReceived = reader.bytesRead - bytesAtStart.read
        outcome.results = results
        condition.unlock()
        outcome.ops = ops
        return outcome
    }

    /// After `run` failed: the operations and whatever answers came before the failure (operations without an
    /// answer count as not answered).
    func answeredSoFar() -> PipelineOutcome {
        var partial = outcome
        condition.lock()
        partial.results = results
        condition.unlock()
        partial.ops = ops
        return partial
    }

    private func readLoop() {
        do {
            try checkInstance(try link.readWelcome())
            Trace.mark("push: welcome")
        } catch {
            fail(error)
            return
        }
        while true {
            let message: Message?
            do { message = try reader.next() } catch {
                fail(error)
                return
            }
            condition.lock()
            defer { condition.broadcast(); condition.unlock() }
            switch message {
            case nil:
                if fatal == nil { fatal = SyncError("\(link.connection.peerDescription) closed the connection") }
                return
            case .need(let op, let indices)?:
                needs.append((op, indices))
            case .result(let r)?:
                guard results.record(r) else {
                    if fatal == nil { fatal = ProtocolError("the agent answered operation \(r.op), which was not sent") }
                    return
                }
                inFlight -= 1
            case .streamsReady(let address, let token)? where streamsAsked > 0 && streams == nil:
                // An empty address: the agent offers no streams (it cannot poll its input, say).
                if !address.isEmpty { streams = ExtraStreams(project: project, address: address, token: token, count: streamsAsked) }
            case .done?:
                agentDone = true
                return
            case .error(let text)?:
                if fatal == nil { fatal = SyncError("agent: \(text)") }
                return
            case let other?:
                if fatal == nil { fatal = ProtocolError("unexpected frame type 0x\(String(other.encode().type, radix: 16)) from the agent") }
                return
            }
        }
    }

    private func fail(_ error: Error) {
        condition.lock()
        if fatal == nil { fatal = error }
        condition.broadcast()
        condition.unlock()
    }

    private func waitForWindow() throws {
        while true {
            try serviceNeeds()
            condition.lock()
            if let fatal { condition.unlock(); throw fatal }
            if inFlight < window && needs.isEmpty {
                inFlight += 1
                condition.unlock()
                return
            }
            let mustWait = needs.isEmpty
            condition.unlock()
            if mustWait {
                try flushAll()
                condition.lock()
                var broken: String?
                while inFlight >= window && needs.isEmpty && fatal == nil && broken == nil { broken = waitWatchingStreams() }
                condition.unlock()
                if let broken { throw SyncError("an extra stream of this push failed: \(broken)") }
            }
        }
    }

    private func send(_ op: PushOperation, id: UInt32) throws {
        switch op {
        case .file(let e, let base):
            let content = e.content!
            // A small file whose content the remote is not known to hold goes with its data, unasked: one round
            // trip less for an edit. Content the remote has (a move, a copy, an undo) waits to be asked.
            // Nor does a file whose chunks the agent reads from the store.
            if let storeFeed { try sendPlaces(of: content, from: storeFeed) }
            let eager = readsLocalFiles && content.size <= Self.eagerLimit && !remoteDigests.contains(content.digest)
                && content.chunks.contains { !$0.id.isHole && !placesSent.contains($0.id) }
            try writer.send(.fileBegin(FileHeader(op: id, path: e.path.bytes, permissions: e.stat.permissions,
                                                  mtimeNanos: e.stat.mtimeNanos, size: content.size, digest: content.digest,
                                                  base: base, chunkCount: UInt32(content.chunks.count), dataFollows: eager,
                                                  force: force)))
            var start = 0
            while start < content.chunks.count {
                let end = min(start + maxListItems, content.chunks.count)
                try writer.send(.chunkList(op: id, chunks: Array(content.chunks[start..<end])))
                start = end
            }
            if eager {
                var seen: Set<ChunkID> = []
                let distinct = content.chunks.indices.filter {
                    !content.chunks[$0].id.isHole && seen.insert(content.chunks[$0].id).inserted
                }.map { UInt32($0) }
                try sendChunks(op: id, indices: distinct, eager: true)
            }
        case .symlink(let e, let base):
            try writer.send(.symlink(op: id, path: e.path.bytes, target: e.linkTarget ?? [], base: base, force: force))
        case .directory(let e):
            try writer.send(.directory(op: id, path: e.path.bytes, permissions: e.stat.permissions, force: force))
        case .delete(let path, let base):
            try writer.send(.delete(op: id, path: path.bytes, base: base, force: force))
        }
    }

    /// Packs of the store, numbered in the order sent: those known at the start go ahead of the operations, the
    /// others (uploaded meanwhile) ahead of the first file that needs them.
    private func sendPacks(_ packs: ArraySlice<StorePack>, of feed: StoreFeed) throws {
        var start = packs.startIndex
        repeat {
            let end = min(start + 2000, packs.endIndex)
            try writer.send(.storePacks(store: feed.name, signingRegion: feed.signingRegion, packs: Array(packs[start..<end])))
            start = end
        } while start < packs.endIndex
        packsSent = packs.endIndex
    }

    /// Where the store holds the chunks of `content` that the agent has not been told of yet, ahead of the file's
    /// operation (so a push of a few files does not carry the places of the whole project); waits for the packs
    /// an upload still going on will hold.
    private func sendPlaces(of content: ChunkedContent, from feed: StoreFeed) throws {
        var seen: Set<ChunkID> = []
        let wanted = content.chunks.compactMap { c in !c.id.isHole && !placesSent.contains(c.id) && seen.insert(c.id).inserted ? c.id : nil }
        guard !wanted.isEmpty else { return }
        // What was sent so far goes out before waiting: the agent works on it meanwhile.
        if !feed.isReady(for: wanted) { try writer.flush() }
        let (packs, places) = try feed.places(of: wanted, packsFrom: packsSent)
        if !packs.isEmpty { try sendPacks(packs, of: feed) }
        var start = 0
        while start < places.count {
            let end = min(start + maxStoreChunks, places.count)
            try writer.send(.storeChunks(Array(places[start..<end])))
            start = end
        }
        for p in places { placesSent.insert(p.id) }
    }

    private func serviceNeeds() throws {
        condition.lock()
        let batch = needs
        needs.removeAll()
        condition.unlock()
        for (op, indices) in batch { try sendChunks(op: op, indices: indices) }
    }

    /// Waits on `condition` (held) for the reader thread. With extra streams it wakes each second and returns
    /// why one failed, if one did, since the agent would then wait for data that never comes.
    private func waitWatchingStreams() -> String? {
        guard let streams else {
            condition.wait()
            return nil
        }
        _ = condition.wait(until: Date().addingTimeInterval(1))
        return streams.failure()
    }

    /// Sends what the main connection's writer and every joined stream's hold.
    private func flushAll() throws {
        try writer.flush()
        condition.lock()
        let streams = self.streams
        condition.unlock()
        try streams?.flush()
    }

    /// Sends chunks of file `op`. Data sent unasked (`eager`) follows its file's frames on this connection; data
    /// the agent asked for may go over any stream.
    private func sendChunks(op: UInt32, indices: [UInt32], eager: Bool = false) throws {
        guard op >= 1, Int(op) <= ops.count, case .file(let entry, _) = ops[Int(op) - 1], let content = entry.content else {
            throw ProtocolError("the agent asked for chunks of operation \(op), which is not a file")
        }
        if outcome.aborted.contains(op) { return }
        sender.begin(op: op, name: entry.path.name)
        guard readsLocalFiles else {
            outcome.aborted.insert(op)
            try writer.send(.abort(op: op, reason: "\(entry.path): the agent asked this machine for chunks, but a restore reads only from the store"))
            return
        }
        if let held = heldBytes, held.op == op {
            try held.bytes.withUnsafeBytes { whole in
                for index in indices {
                    guard Int(index) < content.chunks.count, !content.chunks[Int(index)].id.isHole else {
                        throw ProtocolError("the agent asked for chunk \(index) of \(entry.path), which has \(content.chunks.count) (holes are never sent)")
                    }
                    let chunk = content.chunks[Int(index)]
                    try sender.send(chunk, index: index, op: op, bytes: UnsafeRawBufferPointer(rebasing: whole[Int(chunk.offset)..<Int(chunk.offset) + Int(chunk.length)]), to: writer)
                    outcome.chunksSent += 1
                    bytesDone += UInt64(chunk.length)
                }
            }
            progress.update(done: bytesDone, total: totalBytes)
            return
        }
        let fd: FileDescriptor
        if let open = openFile, open.op == op { fd = open.fd } else {
            do { fd = try project.tree.openForReading(entry.path) } catch {
                outcome.aborted.insert(op)
                try writer.send(.abort(op: op, reason: "cannot read \(entry.path) locally: \(error)"))
                return
            }
            openFile = (op, fd)
        }
        condition.lock()
        let streams = eager ? nil : self.streams
        condition.unlock()
        let mainStream = link.connection.stream
        for index in indices {
            guard Int(index) < content.chunks.count, !content.chunks[Int(index)].id.isHole else {
                throw ProtocolError("the agent asked for chunk \(index) of \(entry.path), which has \(content.chunks.count) (holes are never sent)")
            }
            let chunk = content.chunks[Int(index)]
            let target = streams?.writer(main: writer, mainStream: mainStream) ?? writer
            let sent: Bool
            do { sent = try sender.send(chunk, index: index, op: op, from: fd, to: target) } catch where target !== writer {
                throw SyncError("an extra stream of this push failed: \(error)")
            }
            guard sent else {
                outcome.aborted.insert(op)
                try writer.send(.abort(op: op, reason: "\(entry.path) changed locally while being pushed"))
                return
            }
            outcome.chunksSent += 1
            bytesDone += UInt64(chunk.length)
            progress.update(done: bytesDone, total: totalBytes)
        }
    }
}

/// The remote project is not the one the local state describes (wiped or replaced since the last sync).
struct RemoteReplaced: Error {}

func replacedRemoteWarning(_ project: Project) -> String {
    "the remote copy of \(project.config.name) was wiped or replaced since the last sync; everything was compared again"
}
