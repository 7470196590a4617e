import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncRules
import SyncSystem
import Transport
import Wire

/// Runs a push of a project to its remote.
public final class PushSession {
    let project: Project
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
    /// Whether `stats.itemized` lists each path changed (`push -i`): a line per file, which a first push of a
    /// million files need not hold when no one prints it.
    public var itemizes = true
    /// Chunks the agent reads from the snapshot store (its own fast link) instead of receiving them over this one.
    public var storeSource: StoreSource?
    /// Instead of `storeSource`: places that grow while the push runs (the packs of an upload still going on).
    package var storeFeed: StoreFeed?
    /// Called once the agent is connected (the hello sent), before any operation.
    package var onConnected: (() -> Void)?
    /// The tree to push instead of scanning: the local one as a scan just found it (a push through the store to
    /// several hosts scans once), or with `restoring` a snapshot's entries, every chunk in `storeSource`; then no
    /// local file is read, and every entry is compared on the remote.
    package var fixedTree: [LocalEntry]?
    package var restoring = false

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

    /// Pushed paths that a push leaves alone: pull paths, and (unless pruning) paths now ignored. What was pushed
    /// says whether the path is a directory, which git's `dir/` patterns need.
    func isLeftAlone(_ path: RelativePath, _ pushed: SyncedEntry) -> Bool {
        project.isPullPath(path) || (!pruneIgnored && project.rules.isExcluded(path.bytes, isDirectory: pushed.kind == .directory))
    }

    /// The paths a full push would send now, in sending order (directories with a trailing "/"); for tests and
    /// diagnostics.
    public func plannedOrder() throws -> [String] {
        let state = try project.openState()
        let scan = try LocalScanner(project: project, state: state).scan(roots: nil)
        var ops = planPush(local: scan.entries, pushed: try state.load(.pushed), isLeftAlone: isLeftAlone)
        if !firstPaths.isEmpty { ops = Self.sendingFirst(firstPaths, in: ops) }
        return ops.map { if case .directory = $0 { return $0.path.description + "/" } else { return $0.path.description } }
    }

    /// The operations of `resolve --keep local`: each path as it is here now (a delete where it is gone), its
    /// base what the last sync recorded (the pulled snapshot for a pull path).
    private func resolveOperations(_ paths: [RelativePath], state: LocalDatabase) throws -> (ops: [PushOperation], scan: LocalScanner.Scan) {
        let scan = try LocalScanner(project: project, state: state).scan(resolving: paths)
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
        let state: LocalDatabase
        var connecting: PendingConnection
        (state, connecting) = try greet(over: link)
        // A push of the whole tree works through it in parts of at most `partSize` changes, each a session of its
        // own over the same link, recorded before the next is walked: memory stays bounded whatever the number
        // of files to send (issue 29). A push with files to send first (a build's) is one part, so they go first.
        parts = 0
        var resumeAfter: [UInt8]?
        var carried: [(RelativePath, SyncedEntry)] = []
        var firstPush: TreeSummary.Sum? = TreeSummary.Sum()
        var leftIgnored: [RelativePath] = []
        // The scan's warnings, each once: a part's walk may look a little past where the part ends (the rest of a
        // directory's listing, the walker running ahead), and the next part looks there again.
        var front: [String] = []
        var frontSeen: Set<String> = []
        var conflictsSoFar: [ConflictRecord] = []
        let progress = ProgressReporter(label: "push", options: project.options)
        defer { progress.finish() }
        repeat {
            var known: KnownHere
            var scan: LocalScanner.Scan
            var planned: [PushOperation]
            do {
                known = try lookHere(state: state, only: only, after: resumeAfter, carried: carried, limit: firstPaths.isEmpty ? partSize : .max)
                scan = try known.scan ?? LocalScanner(project: project, state: state).scan(roots: nil)
                let scanWasKnown = known.scan != nil
                known.scan = nil  // one reference to the entries, dropped once they are planned
                Trace.mark("push: scanned \(scan.entries.count) entries")
                planned = known.resolveOps ?? planPush(local: scan.entries, pushed: known.pushed, everything: restoring, isLeftAlone: isLeftAlone)
                // A first push (nothing recorded in any part) sends every entry, summed part by part.
                if fixedTree != nil || (known.whole.map({ $0.pushedBefore }) ?? (!known.pushed.isEmpty || scanWasKnown)) { firstPush = nil }
            } catch {
                connecting.cancel()
                throw error
            }
            resumeAfter = known.whole?.resumeAfter
            carried = known.whole?.carried ?? []
            parts += 1
            let pushed = known.pushed
            if known.resolveOps == nil { leftIgnored += known.whole?.leftIgnored ?? ignoredNow(scan: scan, pushed: pushed) }
            stats.filesScanned += known.whole?.scanned ?? scan.entries.count
            if firstPush != nil { for e in scan.entries { firstPush?.add(e.path, kind: e.stat.kind, size: e.stat.size) } }
            // The plan holds what is sent; the scan's copy of every entry goes (a first push of a million files).
            scan.entries = []
            if !firstPaths.isEmpty { planned = Self.sendingFirst(firstPaths, in: planned) }
            let more = resumeAfter != nil
            let (outcome, pipeline) = try send(&planned, pushed: pushed, askRecord: known.whole?.pushedBefore ?? true,
                                               state: state, connecting: connecting, progress: progress, another: more, into: &stats)
            for line in scan.warnings.map(\.description) + outcome.skipped.map(\.description) where frontSeen.insert(line).inserted {
                front.append(line)
            }
            summarize(outcome, of: pipeline, pushed: pushed, into: &stats)
            Trace.mark("push: recording")
            // A full push looked at every local-owned path: a push conflict it did not find again is gone.
            try record(outcome, pushed: pushed, state: state, into: &stats, conflictsSoFar: &conflictsSoFar,
                       allOf: only == nil && resolving == nil && !more ? .push : nil)
            Trace.mark("push: recorded")
            if more {
                connecting = try greet(state: state, over: try connecting.wait()).1
            }
        } while resumeAfter != nil
        if let firstPush { stats.firstPush = firstPush.summary() }
        noteLeftIgnored(leftIgnored, into: &stats)
        stats.warnings = front + stats.warnings
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    /// The most changes a part of a push holds (see `runOnce`): about 30 MB of entries and plan. Tests make it
    /// small.
    package var partSize = PushSession.defaultPartSize
    package static let defaultPartSize = 65_536
    /// How many parts the last run took (for tests).
    package private(set) var parts = 0

    /// Opens the local state and starts connecting. Connecting starts first: it is most of a small push's time, and
    /// runs while the state opens and loads and the tree is scanned. The hello, which names the remote instance the
    /// state remembers, is waited for only when the agent is up. The operations go out right behind it, without
    /// waiting for the welcome: the agent refuses them all if its instance is not the one expected (a wiped or
    /// replaced remote). A later part of a push passes the `state` already open and the link its first part made.
    private func greet(state opened: LocalDatabase? = nil, over link: AgentLink?) throws -> (LocalDatabase, PendingConnection) {
        // The hello, for the connecting thread, which waits for it once the agent is up: it fails with this
        // thread's error if there is none.
        let waiting = OneShot<Result<Hello, Error>>()
        let fresh = link == nil ? PendingConnection(project: project, link: nil) { _ in try waiting.wait().get() } : nil
        let state: LocalDatabase
        var greeting: Hello
        do {
            state = try opened ?? project.openState()
            greeting = Hello(role: .push, project: project.config.name, remoteRoot: project.remoteRootForAgent,
                          pullPaths: project.pullPaths.map { String(decoding: $0.bytes, as: UTF8.self) }, chunking: project.chunking,
                          expectInstance: try state.remoteInstance() ?? "", conflictStamp: conflictStamp())
            project.limit(&greeting)
            greeting.clientID = try state.clientID()
        } catch {
            waiting.set(.failure(error))
            fresh?.cancel()
            throw error
        }
        let hello = greeting
        waiting.set(.success(hello))
        Trace.mark("push: state opened")
        return (state, fresh ?? PendingConnection(project: project, link: link) { _ in hello })
    }

    /// What a push knows before it scans: the pushed records it compares with, and, unless the whole project is
    /// scanned, the entries it looks at (a fixed tree, a resolve's paths, or what a watcher reported).
    private struct KnownHere {
        var pushed: [RelativePath: SyncedEntry] = [:]
        var scan: LocalScanner.Scan?
        var resolveOps: [PushOperation]?
        /// For a walk of the whole tree merged with the record: how many entries it saw, the pushed paths it left
        /// because they are ignored now, and whether anything had been pushed before. `pushed` then holds only
        /// the record's entries the plan needs.
        /// With `resumeAfter`, the walk stopped there with a part's worth of changes (see `runOnce`).
        var whole: (scanned: Int, leftIgnored: [RelativePath], pushedBefore: Bool, resumeAfter: [UInt8]?,
                    carried: [(RelativePath, SyncedEntry)])?
    }

    private func lookHere(state: LocalDatabase, only: Set<RelativePath>?, after: [UInt8]?, carried: [(RelativePath, SyncedEntry)],
                          limit: Int) throws -> KnownHere {
        var known = KnownHere()
        if let fixedTree {
            if let found = try LocalScanner(project: project, state: state)
                .changedInFixedTree(fixedTree, everything: restoring, after: after, carried: carried, limit: limit,
                                    isLeftAlone: isLeftAlone, isIgnored: isIgnoredNow) {
                // As for a walk of the whole tree: this host's record read beside the tree, only its changes kept.
                known.pushed = found.pushed
                known.scan = LocalScanner.Scan(entries: found.changed, warnings: [], cache: [:])
                known.whole = (found.scanned, found.leftIgnored, found.pushedBefore, found.resumeAfter, found.carried)
                Trace.mark("push: merged \(found.scanned) entries of the tree given with the record, \(found.changed.count) to send")
            } else {
                known.pushed = try state.load(.pushed)
                known.scan = LocalScanner.Scan(entries: fixedTree, warnings: [], cache: [:])
            }
        } else if let resolving {
            let (ops, scan) = try resolveOperations(resolving, state: state)
            known.pushed = try state.load(.pushed, paths: resolving, subtrees: [])
            known.resolveOps = ops
            known.scan = scan
        } else if let only {
            let paths = only.sorted()
            let scan = try LocalScanner(project: project, state: state).scan(only: paths)
            let directories = Set(scan.entries.filter { $0.stat.kind == .directory }.map(\.path))
            // What was below a path that is no longer a directory is gone too.
            known.pushed = try state.load(.pushed, paths: paths, subtrees: paths.filter { !directories.contains($0) })
            known.scan = scan
            Trace.mark("push: looked at \(paths.count) reported paths")
        } else if let found = try LocalScanner(project: project, state: state)
                    .changedSinceLastPush(everything: restoring, after: after, carried: carried, limit: limit,
                                          isLeftAlone: isLeftAlone, isIgnored: isIgnoredNow) {
            // The whole tree, merged with the stat cache and the record as it is walked: only changes are kept.
            known.pushed = found.pushed
            known.scan = LocalScanner.Scan(entries: found.changed, warnings: found.warnings, cache: [:])
            known.whole = (found.scanned, found.leftIgnored, found.pushedBefore, found.resumeAfter, found.carried)
            Trace.mark("push: walked \(found.scanned) entries, \(found.changed.count) to send")
        } else {
            known.pushed = try state.load(.pushed)
            Trace.mark("push: loaded \(known.pushed.count) pushed entries")
        }
        return known
    }

    /// A pushed path the rules now ignore (not a pull path): left on the remote unless pruned, and said so.
    private func isIgnoredNow(_ path: RelativePath, _ entry: SyncedEntry) -> Bool {
        !project.isPullPath(path) && project.rules.isExcluded(path.bytes, isDirectory: entry.kind == .directory)
    }

    /// Pushed earlier, ignored now, as the record's paths missing from a scan (a whole-tree walk finds them as it
    /// goes).
    private func ignoredNow(scan: LocalScanner.Scan, pushed: [RelativePath: SyncedEntry]) -> [RelativePath] {
        guard !pushed.isEmpty else { return [] }
        let present = Set(scan.entries.map(\.path))
        return pushed.filter { !present.contains($0.key) && isIgnoredNow($0.key, $0.value) }.keys.sorted()
    }

    /// Pushed earlier, ignored now: left on the remote unless pruned, and said so.
    private func noteLeftIgnored(_ found: [RelativePath], into stats: inout SyncStats) {
        stats.leftIgnored = pruneIgnored ? [] : found
        if !stats.leftIgnored.isEmpty {
            stats.warnings.append("left on the remote: \(stats.leftIgnored.count) path\(stats.leftIgnored.count == 1 ? "" : "s") now ignored"
                                  + " (\(stats.leftIgnored.prefix(3).map(\.description).joined(separator: ", "))"
                                  + (stats.leftIgnored.count > 3 ? ", …" : "") + "); `syncctl push --prune-ignored` deletes them there")
        }
    }

    /// Hashes what the plan needs while the link comes up, then runs the pipeline over it. A failure records what
    /// the agent answered before it, so that the next push compares against what is on the remote.
    /// With `another`, the link stays open for the next part's session.
    private func send(_ planned: inout [PushOperation], pushed: [RelativePath: SyncedEntry], askRecord: Bool, state: LocalDatabase,
                      connecting: PendingConnection, progress: ProgressReporter, another: Bool,
                      into stats: inout SyncStats) throws -> (PipelineOutcome, PushPipeline) {
        // A large file is cut while it is sent, so that it is read once, unless its size and mtime are what the
        // last push recorded: then it is most likely unchanged (hashed again only because the stat cache could not
        // vouch for it), which is best found before anything is sent.
        let streams: ((LocalEntry) -> Bool)? = restoring || storeFeed != nil || storeSource != nil ? nil : { entry in
            guard let last = pushed[entry.path] else { return true }
            return last.size != entry.stat.size || last.mtimeNanos != entry.stat.mtimeNanos
        }
        let hasher = ContentHasher(project: project, state: state, ops: planned, streams: streams)
        try hasher.start()
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
        let pipeline = PushPipeline(project: project, link: link, ops: planned, pushed: pushed, hasher: hasher,
                                    window: window, progress: progress, totalBytes: totalBytes,
                                    force: force || resolving != nil, storeFeed: storeFeed ?? storeSource.map { StoreFeed($0, complete: true) },
                                    readsLocalFiles: !restoring, remoteHolds: { digest in
                                        // A first push's record is empty: nothing to ask.
                                        askRecord && ((try? state.pushedHolds(digest)) ?? false)
                                    }) { instance in
            if try state.adoptRemoteInstance(instance) { throw RemoteReplaced() }
        }
        pipeline.storeFallback = project.config.storeFallback
        planned = []  // the pipeline owns the operations now: filling in contents copies nothing
        let outcome: PipelineOutcome
        do {
            outcome = try pipeline.run()
        } catch let error as RemoteReplaced {
            hasher.stop()
            _ = link.fail(error)
            throw error
        } catch {
            hasher.stop()
            let why = link.fail(error)
            // What the agent answered before the failure is on the remote: the record says so, so that the next
            // push compares against it rather than against nothing.
            var partial = SyncStats(direction: "push")
            var conflicts: [ConflictRecord] = []
            try? record(pipeline.answeredSoFar(), pushed: pushed, state: state, into: &partial, conflictsSoFar: &conflicts, allOf: nil)
            // A link that failed resumes with the next push; what the agent refused needs mending first.
            let next = (error as? AgentSaid)?.atStart == true ? "mend that, then push again" : "run the push again to resume"
            throw SyncError("push to \(project.config.remote) failed: \(why); \(next)", cause: error)
        }
        progress.partDone(bytes: totalBytes)
        Trace.mark("push: pipeline done")
        hasher.stop()
        link.endSession(another: another)
        stats.remoteDirectory = link.remoteDirectory
        if let made = link.takeCreatedRoot() { stats.warnings.append(made) }
        Trace.mark("push: session ended")
        return (outcome, pipeline)
    }

    /// What the pipeline counted, and what the remote said of the store.
    private func summarize(_ outcome: PipelineOutcome, of pipeline: PushPipeline, pushed: [RelativePath: SyncedEntry],
                           into stats: inout SyncStats) {
        // Added to what earlier parts of the push counted.
        stats.filesMoved += countMoved(outcome.ops, pushed: pushed)
        stats.chunksSent += outcome.chunksSent
        stats.bytesSent += outcome.bytesSent
        stats.bytesReceived += outcome.bytesReceived
        stats.streams = max(stats.streams, outcome.streams)
        for why in pipeline.streamWarnings {
            let line = "an extra stream could not be opened, so the push used fewer: \(why)"
            if !stats.warnings.contains(line) { stats.warnings.append(line) }
        }
        let trouble = pipeline.storeTrouble
        if let why = trouble.unreachable {
            let line = "\(project.config.remote) cannot read the store: \(why)"
            if project.config.storeFallback { stats.warnings.append(line + "; this push went to it over SSH instead (store_fallback: ssh)") }
            else { stats.errors.append(line + "; its files were not sent (store_fallback: no)") }
        }
        for reason in trouble.reasons {
            stats.warnings.append("\(project.config.remote) found damage in the store: \(reason); it got those chunks over SSH instead")
        }
        stats.storeDamaged.merge(trouble.damaged) { $0 + $1 }
    }

    /// Counts what the agent did into `stats`, and records it: the pushed (and, for pull paths a resolve sent,
    /// the pulled) snapshot, and the conflicts found and cleared. `conflictsSoFar` gathers the conflicts earlier
    /// parts of the push found, so that the last can say with `allOf` which of those recorded are gone.
    private func record(_ outcome: PipelineOutcome, pushed: [RelativePath: SyncedEntry], state: LocalDatabase,
                        into stats: inout SyncStats, conflictsSoFar: inout [ConflictRecord], allOf: ConflictRecord.Found?) throws {
        let ops = outcome.ops
        var changes: [(RelativePath, SyncedEntry?)] = []
        changes.reserveCapacity(ops.count)  // one allocation, not a doubling one, for a first push's million
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
            guard let result = outcome.results[id] else {
                stats.errors.append("\(op.path): no answer from the agent")
                continue
            }
            if !result.keptAs.isEmpty, let copy = try? op.path.replacingName(with: result.keptAs) {
                stats.kept.append(KeptCopy(path: op.path, copy: copy, side: "remote"))
            }
            switch result.status {
            case .applied, .unchanged:
                if result.status == .applied && itemizes { stats.itemized.append(itemizeCode(op, pushed: pushed[op.path]) + " " + op.path.description) }
                // Only what the remote now holds counts as changed: a file that failed or conflicted did not change.
                switch op {
                case .file(let e, _):
                    stats.filesChanged += 1
                    stats.bytesLogical += e.content?.size ?? 0
                    stats.chunksTotal += e.content?.chunks.count ?? 0
                case .symlink: stats.filesChanged += 1
                case .delete: stats.filesDeleted += 1
                case .directory: break
                }
                let entry: SyncedEntry?
                switch op {
                case .file(let e, _), .symlink(let e, _), .directory(let e): entry = e.synced
                case .delete: entry = nil
                }
                if project.isPullPath(op.path) { pulledChanges.append((op.path, entry)) } else { changes.append((op.path, entry)) }
                cleared.append(op.path)
            case .conflict:
                stats.conflict(.found(.push, at: op.path, nowNanos: now, local: localSide(op),
                                      remote: ConflictSide(result.current, size: result.currentSize, mtimeNanos: result.currentMtimeNanos),
                                      recorded: ConflictSide(op.base, synced: pushed[op.path]), message: result.message), into: &conflicts)
            case .failed:
                if outcome.aborted.contains(id) && !restoring {
                    stats.warnings.append("\(op.path): changed while being pushed; it goes with the next push")
                } else {
                    stats.fail(op.path, result.message)
                }
            }
        }
        Trace.mark("push: answers counted")
        try state.update(.pushed, changes)
        try state.update(.pulled, pulledChanges)
        Trace.mark("push: snapshot written")
        try state.noteConflicts(allOf == nil ? conflicts : conflictsSoFar + conflicts, cleared: cleared, allOf: allOf)
        conflictsSoFar += conflicts
    }

    private func localSide(_ op: PushOperation) -> ConflictSide {
        switch op {
        case .file(let e, _), .symlink(let e, _): return ConflictSide(e)
        case .directory: return ConflictSide(kind: .directory)
        case .delete: return .absent
        }
    }
}

/// The remote project is not the one the local state describes (wiped or replaced since the last sync).
struct RemoteReplaced: Error {}

func replacedRemoteWarning(_ project: Project) -> String {
    "the remote copy of \(project.config.name) was wiped or replaced since the last sync; everything was compared again"
}
