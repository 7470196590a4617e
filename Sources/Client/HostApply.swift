import Chunking
import Foundation
import LocalState
import ProjectScan
import SnapshotFormat
import SyncRules
import SyncSystem
import Wire

/// A host's part of a push through the store, worked out by the host (`applySnapshot`): this machine sends which
/// snapshot to apply, the snapshot the host's last sync is compared with, and where the host's record here differs
/// from that snapshot; the host reads the rest from the store and answers with a summary. The link carries a few
/// hundred bytes whatever the project's size. Afterwards the record here follows what the host applied, exactly
/// as a push's answers would have made it.
package final class HostApply: @unchecked Sendable {  // one thread at a time: see `ApplyLoop`
    let project: Project
    let new: (manifest: SnapshotManifest, digest: ChunkID)
    let base: (manifest: SnapshotManifest, digest: ChunkID)?
    /// The request without its exceptions (the same for every host).
    let request: SnapshotApply
    package var pruneIgnored = false
    /// Whether `push -i`'s lines are made (the first host's).
    package var itemizes = false
    /// After `conclude`: the host could not read everything from the store (the snapshot, or chunks): a push of the
    /// file list is to follow, which finds just what is still to send.
    package private(set) var needsPush = false
    /// Once the welcome showed the remote wiped or replaced (`noteReplaced`): what the push that follows says.
    package private(set) var replaced: String?
    /// More paths than this where the record differs from the base: the host gets a push of its own instead.
    package var exceptionLimit = HostApply.defaultExceptionLimit
    package static let defaultExceptionLimit = 4096

    /// The packs (and index URLs) holding chunks, for those of the files this host's exceptions add.
    let morePacks: @Sendable (Set<ChunkID>) throws -> [(SnapshotApply.Object, [UInt8])]

    package init(project: Project, new: (SnapshotManifest, ChunkID), base: (SnapshotManifest, ChunkID)?, request: SnapshotApply,
                 morePacks: @escaping @Sendable (Set<ChunkID>) throws -> [(SnapshotApply.Object, [UInt8])]) {
        self.project = project
        self.new = new
        self.base = base
        self.request = request
        self.morePacks = morePacks
    }

    // What `prepare` works out, for the steps that follow (each runs on one thread at a time: see `ApplyLoop`).
    private var started: UInt64 = 0
    private var state: LocalDatabase?
    private var exceptions: [(path: [UInt8], state: PathState?)] = []
    private var prepared: SnapshotApply?
    private var greeting: Hello?

    /// The first step: the exceptions and the request for this host, and the session's hello; false when the host
    /// gets a push of the file list instead (more exceptions than `exceptionLimit`).
    func prepare() throws -> Bool {
        started = monotonicNanos()
        let state = try project.openState()
        self.state = state
        guard let exceptions = try exceptions(state) else { return false }
        self.exceptions = exceptions
        var request = self.request
        request.exceptions = exceptions
        if !exceptions.isEmpty {
            // The files this host gets because of its exceptions: their packs too, beside those every host is told of.
            var theirs: Set<ChunkID> = []
            try ApplyPlan.steps(new: new.manifest.entries, base: base?.manifest.entries ?? [], exceptions: exceptions) { step in
                for c in step.entry?.chunks ?? [] where !c.id.isHole { theirs.insert(c.id) }
            }
            let told = Set(request.packs.map(\.digest))
            for (pack, index) in try morePacks(theirs) where !told.contains(pack.digest) {
                request.packs.append(pack)
                request.indexes.append(index)
            }
        }
        prepared = request
        var hello = Hello(role: .push, project: project.config.name, remoteRoot: project.remoteRootForAgent,
                          pullPaths: project.pullPaths.map { String(decoding: $0.bytes, as: UTF8.self) }, chunking: project.chunking,
                          expectInstance: try state.remoteInstance() ?? "", conflictStamp: conflictStamp())
        project.limit(&hello)
        hello.clientID = try state.clientID()
        greeting = hello
        return true
    }

    /// The second step: the connection, with the client's handshake and hello written. The link's heartbeats are
    /// its driver's to send (no thread of its own).
    func connect() throws -> AgentLink {
        guard let greeting else { throw SyncError("internal: \(project.config.remote) connected before it was prepared") }
        let bytes: @Sendable (Double?) throws -> [UInt8] = { _ in clientGreeting(greeting) }
        let connection = try project.connect(greeting: bytes)
        if !connection.greetingSent { try bytes(nil).withUnsafeBytes { try connection.stream.write($0) } }
        let link = AgentLink(connection: connection, persistent: false, timeoutSeconds: project.config.timeoutSeconds, heartbeats: false)
        guard link.connection.stream.readinessFD != nil else {
            _ = link.fail(SyncError("no readiness descriptor"))
            throw SyncError("internal: the link to \(project.config.remote) cannot be waited on with others")
        }
        return link
    }

    /// What follows the hello on the link: the request and the end of operations.
    func requestBytes() -> [UInt8] {
        guard let prepared else { return [] }
        return encodedFrame(.applySnapshot(prepared)) + encodedFrame(.endOfOperations)
    }

    /// Whether the remote's instance, from its welcome, is not the one the record here is of (wiped or replaced
    /// since): known from what `prepare` read, without the database.
    func isReplaced(by instance: String) -> Bool {
        guard let expected = greeting?.expectInstance, !expected.isEmpty else { return false }
        return expected != instance
    }

    /// Records the remote's instance (dropping the record of a replaced one: everything is compared again).
    func adoptRemote(_ instance: String) throws {
        guard let state, !instance.isEmpty else { return }
        _ = try state.adoptRemoteInstance(instance)
    }

    /// The last step, once the agent said `done`: the record follows what the host applied.
    func conclude(link: AgentLink, summary: ApplySummary, trouble: StoreTrouble, bytesSent: UInt64, bytesReceived: UInt64) throws -> SyncStats {
        guard let state else { throw SyncError("internal: \(project.config.remote) concluded before it was prepared") }
        var stats = SyncStats(direction: "push")
        stats.remoteDirectory = link.remoteDirectory
        if let made = link.takeCreatedRoot() { stats.warnings.append(made) }
        // Whatever the host could not read from the store, a push of the file list takes over: it finds just what
        // the apply left (the record followed every change made), and deals with the store as a push does (its
        // damaged chunks over the link, `store_fallback`).
        needsPush = !summary.unreadable.isEmpty || trouble.unreachable != nil || !trouble.damaged.isEmpty
        if !summary.unreadable.isEmpty {
            Trace.mark("push: \(project.config.remote) cannot read the snapshot from the store: \(displayText(summary.unreadable)); pushing the file list")
        }
        // The agent answers `done` only once every operation it made is answered: each step not among `others`
        // was applied. When it could not read the snapshot it made none, and nothing is recorded.
        if summary.unreadable.isEmpty { try record(summary, exceptions: exceptions, state: state, into: &stats) }
        stats.storeDamaged.merge(trouble.damaged) { $0 + $1 }
        stats.filesScanned = new.manifest.entries.count
        stats.bytesSent = bytesSent
        stats.bytesReceived = bytesReceived
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        Trace.mark("push: applied snapshot \(new.digest.hex.prefix(12)) over \(base.map { $0.digest.hex.prefix(12) } ?? "nothing"), "
                   + "\(exceptions.count) exceptions: \(summary.applied) applied, \(summary.deleted) deleted, \(summary.others.count) otherwise; "
                   + "\(stats.bytesSent) bytes sent, \(stats.bytesReceived) received")
        return stats
    }

    /// The remote was wiped or replaced: what the push of the file list that follows says.
    func noteReplaced() { replaced = replacedRemoteWarning(project) }

    /// How a failed exchange is reported, once the link is dropped.
    func failure(_ error: Error, link: AgentLink) -> Error {
        SyncError("push to \(project.config.remote) failed: \(link.fail(error)); run the push again to resume", cause: error)
    }

    /// Where this host's record differs from the base snapshot (in path order), and the paths the base has that
    /// the snapshot does not because they are ignored now (left alone unless pruned); nil past `exceptionLimit`.
    private func exceptions(_ state: LocalDatabase) throws -> [(path: [UInt8], state: PathState?)]? {
        let baseEntries = base?.manifest.entries ?? []
        let newPaths = new.manifest.entries
        var out: [(path: [UInt8], state: PathState?)] = []
        var tooMany = false
        var n = 0  // the next of `newPaths` not behind the base entry looked at
        func add(_ path: [UInt8], _ s: PathState?) -> Bool {
            out.append((path, s))
            tooMany = out.count > exceptionLimit
            return !tooMany
        }
        func recordedOnly(_ path: RelativePath, _ entry: SyncedEntry) throws -> Bool {
            project.isPullPath(path) ? true : add(path.bytes, entry.pathState)
        }
        try state.readInPathOrder(.pushed) { rows in
            for e in baseEntries {
                let recorded = try rows.recorded(at: e.path.bytes, gone: recordedOnly)
                if tooMany { return }
                while n < newPaths.count && newPaths[n].path.bytes.lexicographicallyPrecedes(e.path.bytes) { n += 1 }
                let inNew = n < newPaths.count && newPaths[n].path == e.path
                if !inNew && !pruneIgnored && project.rules.isExcluded(e.path.bytes, isDirectory: e.kind == .directory) {
                    if !add(e.path.bytes, nil) { return }
                    continue
                }
                let had = recorded?.pathState ?? .absent
                if had != ApplyPlan.state(of: e) && !add(e.path.bytes, had) { return }
            }
            try rows.remainingRecorded(recordedOnly)
        }
        return tooMany ? nil : out
    }

    /// The record follows the host: every step of the plan (the host's own, worked out again here) that the host
    /// did not answer otherwise is recorded, in batches; conflicts and failures are counted as a push's are (a
    /// failure not at all when a push of the file list follows, which sends that file again).
    private func record(_ summary: ApplySummary, exceptions: [(path: [UInt8], state: PathState?)], state: LocalDatabase,
                        into stats: inout SyncStats) throws {
        var otherwise: [[UInt8]: OpResult] = [:]
        for (path, r) in summary.others { otherwise[path] = r }
        // The conflicts recorded before, which a path applied now clears (few; the paths applied may be millions).
        let recordedConflicts = Set(try state.conflicts().map(\.path))
        var changes: [(RelativePath, SyncedEntry?)] = []
        var conflicts: [ConflictRecord] = []
        var cleared: [RelativePath] = []
        let now = wallClockNanos()
        var out = stats
        try ApplyPlan.steps(new: new.manifest.entries, base: base?.manifest.entries ?? [], exceptions: exceptions) { step in
            let path = step.path
            let answer = otherwise[path.bytes]
            if let r = answer {
                if !r.keptAs.isEmpty, let copy = try? path.replacingName(with: r.keptAs) {
                    out.kept.append(KeptCopy(path: path, copy: copy, side: "remote"))
                }
                switch r.status {
                case .conflict:
                    let local = step.entry.map { e in ConflictSide(ApplyPlan.state(of: e), size: e.size, mtimeNanos: e.mtimeNanos) } ?? .absent
                    out.conflict(.found(.push, at: path, nowNanos: now, local: local,
                                        remote: ConflictSide(r.current, size: r.currentSize, mtimeNanos: r.currentMtimeNanos),
                                        recorded: ConflictSide(step.base), message: displayText(r.message)), into: &conflicts)
                    return
                case .failed:
                    if !needsPush { out.fail(path, displayText(r.message)) }
                    return
                case .applied, .unchanged:
                    break
                }
            }
            if let e = step.entry {
                if e.kind != .directory { out.filesChanged += 1 }
                out.bytesLogical += e.kind == .file ? e.size : 0
                out.chunksTotal += e.chunks.count
            } else {
                out.filesDeleted += 1
            }
            if itemizes { out.itemized.append(Self.itemized(step) + " " + path.description) }
            changes.append((path, step.entry.map { LocalEntry(manifest: $0).synced }))
            if recordedConflicts.contains(path) { cleared.append(path) }
            if changes.count >= 4096 {  // a hundred hosts recording at once hold a few MB each
                try state.update(.pushed, changes)
                changes.removeAll(keepingCapacity: true)
            }
        }
        try state.update(.pushed, changes)
        stats = out
        try state.noteConflicts(conflicts, cleared: cleared, allOf: nil)
    }

    /// `push -i`'s code for a step, as a push of the file list would have said it.
    static func itemized(_ step: ApplyStep) -> String {
        let before = step.was.map { LocalEntry(manifest: $0).synced }
        guard let e = step.entry else { return itemizeCode(.delete(path: step.path, base: step.base), pushed: before) }
        let entry = LocalEntry(manifest: e)
        switch e.kind {
        case .file: return itemizeCode(.file(entry, base: step.base), pushed: before)
        case .symlink: return itemizeCode(.symlink(entry, base: step.base), pushed: before)
        case .directory: return itemizeCode(.directory(entry), pushed: before)
        }
    }
}

extension LocalEntry {
    /// A manifest's entry as the local entry a push compares and sends (its stat as the manifest has it: no device,
    /// inode or ctime).
    package init(manifest e: ManifestEntry) {
        let kind: FileKind = e.kind == .directory ? .directory : e.kind == .symlink ? .symlink : .regular
        let stat = FileStat(device: 0, inode: 0, kind: kind, permissions: e.mode, size: e.size, mtimeNanos: e.mtimeNanos, ctimeNanos: 0)
        let content = e.kind == .file ? ChunkedContent(chunks: e.chunks, digest: e.digest ?? .empty, size: e.size) : nil
        self.init(path: e.path, stat: stat, content: content, linkTarget: e.target)
    }
}

extension SyncStats {
    /// Adds what an apply did before a push of the file list finished the host's part: its counts, bytes and
    /// lines (its conflicts the push finds again, the record being as it was there).
    package mutating func addApplied(_ applied: SyncStats) {
        filesChanged += applied.filesChanged
        filesDeleted += applied.filesDeleted
        bytesLogical += applied.bytesLogical
        chunksTotal += applied.chunksTotal
        bytesSent += applied.bytesSent
        bytesReceived += applied.bytesReceived
        kept = applied.kept + kept
        itemized = applied.itemized + itemized
        warnings = applied.warnings + warnings
        storeDamaged.merge(applied.storeDamaged) { $0 + $1 }
    }
}
