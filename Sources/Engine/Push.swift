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
    case delete(path: String, base: PathState)

    var path: String {
        switch self {
        case .file(let e, _), .symlink(let e, _), .directory(let e): return e.path.string
        case .delete(let p, _): return p
        }
    }
}

/// Works out what a push must send: compares the local snapshot with what was last pushed and orders the
/// operations: deletes first (children before their directory), then directories, then files and symlinks.
/// Deleting first clears the way for type changes, and a deleted file's content stays in the agent's cache,
/// so a moved file is renamed out of it on the remote instead of being copied or sent.
/// Files whose content is not known yet (`content` nil: their stat changed) are planned as changed; the sender
/// drops those that turn out unchanged once hashed.
func planPush(local: [LocalEntry], pushed: [String: SyncedEntry], isLeftAlone: (String) -> Bool) -> [PushOperation] {
    var byPath: [String: LocalEntry] = [:]
    for e in local { byPath[e.path.string] = e }
    var upserts: [LocalEntry] = []
    for e in local {
        guard let old = pushed[e.path.string] else { upserts.append(e); continue }
        let now = e.synced
        let differs: Bool
        switch now.kind {
        case .file: differs = now.digest == nil || old != now
        case .directory: differs = old.kind != .directory || old.permissions != now.permissions
        case .symlink: differs = old.kind != .symlink || old.target != now.target
        }
        if differs { upserts.append(e) }
    }
    var deleted = Set(pushed.keys.filter { byPath[$0] == nil && !isLeftAlone($0) })
    // Paths whose kind changes: what was there must go before the new kind can be placed.
    var clearFirst: Set<String> = []
    for e in upserts {
        if let old = pushed[e.path.string], old.kind != e.synced.kind { clearFirst.insert(e.path.string) }
        var parent = e.path.parentComponents
        while !parent.isEmpty {
            let p = parent.joined(separator: "/")
            if let old = pushed[p], old.kind != .directory { clearFirst.insert(p) }
            parent = parent.dropLast()
        }
    }
    var early: [String] = []
    for p in clearFirst {
        early.append(p)
        early.append(contentsOf: deleted.filter { $0.hasPrefix(p + "/") })
    }
    let earlySet = Set(early)
    deleted.subtract(earlySet)
    var ops: [PushOperation] = []
    for p in earlySet.union(deleted).sorted(by: >) { ops.append(.delete(path: p, base: pushed[p]!.pathState)) }
    let base: (LocalEntry) -> PathState = { e in
        earlySet.contains(e.path.string) ? .absent : (pushed[e.path.string]?.pathState ?? .absent)
    }
    for e in upserts where e.stat.kind == .directory { ops.append(.directory(e)) }
    for e in upserts where e.stat.kind != .directory {
        ops.append(e.stat.kind == .symlink ? .symlink(e, base: base(e)) : .file(e, base: base(e)))
    }
    return ops
}

/// New files whose content is that of a deleted file: moves and renames.
func countMoved(_ ops: [PushOperation], pushed: [String: SyncedEntry]) -> Int {
    var gone: Set<ChunkID> = []
    for case .delete(_, .file(let digest)) in ops { gone.insert(digest) }
    guard !gone.isEmpty else { return 0 }
    var moved = 0
    for case .file(let e, _) in ops where pushed[e.path.string] == nil {
        if let digest = e.content?.digest, gone.contains(digest) { moved += 1 }
    }
    return moved
}

/// Hashes the files a push has to identify, in push order, on a thread of its own, so that reading and chunking
/// overlap with connecting and sending instead of preceding them.
final class ContentHasher {
    private let project: Project
    private let entries: [(op: Int, entry: LocalEntry)]
    private let condition = NSCondition()
    private var results: [Int: Result<CachedFile, ScanWarning>] = [:]
    private var finished = false
    private var cancelled = false

    /// `ops` indices whose file entries have no content yet.
    init(project: Project, ops: [PushOperation]) {
        self.project = project
        var list: [(Int, LocalEntry)] = []
        for (index, op) in ops.enumerated() {
            if case .file(let e, _) = op, e.content == nil { list.append((index, e)) }
        }
        entries = list
    }

    func start() {
        let thread = Thread { [self] in
            let chunker = FileChunker(project.chunking)
            for (op, entry) in entries {
                condition.lock()
                let stop = cancelled
                condition.unlock()
                if stop { break }
                let result = Snapshotter.hash(entry, in: project, with: chunker)
                condition.lock()
                results[op] = result
                condition.broadcast()
                condition.unlock()
            }
            condition.lock()
            finished = true
            condition.broadcast()
            condition.unlock()
        }
        thread.name = "hasher"
        thread.start()
    }

    /// The content of the file of operation `op`, waiting for it when needed.
    func result(for op: Int) -> Result<CachedFile, ScanWarning> {
        condition.lock()
        defer { condition.unlock() }
        while results[op] == nil && !finished { condition.wait() }
        return results[op] ?? .failure(ScanWarning(path: "?", message: "not hashed"))
    }

    /// Stops hashing after the current file and waits; returns the records made, for the stat cache.
    func stop() -> [CachedFile] {
        condition.lock()
        cancelled = true
        while !finished { condition.wait() }
        let records = results.values.compactMap { try? $0.get() }
        condition.unlock()
        return records
    }
}

/// Runs a push of a project to its remote.
public final class PushSession {
    private let project: Project
    /// Files in flight at once; bounds agent memory, not latency (no round trip per file).
    private let window = 2048

    public init(project: Project) { self.project = project }

    public func run() throws -> SyncStats {
        let started = monotonicNanos()
        do { return try runOnce(started: started) } catch is RemoteReplaced {
            // What was remembered of the remote is dropped; compare everything again, once.
            var stats = try runOnce(started: started)
            stats.warnings.insert(replacedRemoteWarning(project), at: 0)
            return stats
        }
    }

    private func runOnce(started: UInt64) throws -> SyncStats {
        var stats = SyncStats(direction: "push")
        let state = try project.openState()
        let pushed = try state.load(.pushed)
        // The operations go out right behind the hello, without waiting for the welcome: the agent refuses them
        // all if its instance is not the one expected (a wiped or replaced remote).
        let hello = Hello(role: .push, project: project.config.name, remoteRoot: project.remoteRootForAgent,
                          pullPaths: project.pullPaths.map(\.string), chunking: project.chunking,
                          expectInstance: try state.remoteInstance() ?? "")
        let connecting = PendingConnection(project: project) { _ in clientGreeting(hello) }
        let scan: Snapshotter.Scan
        let planned: [PushOperation]
        do {
            scan = try Snapshotter(project: project, state: state).scan(roots: nil)
            Trace.mark("push: scanned \(scan.entries.count) entries")
            planned = planPush(local: scan.entries, pushed: pushed) { path in
                guard let rel = try? RelativePath(path) else { return true }
                return self.project.isPullPath(rel) || self.project.rules.isExcluded(path)
            }
        } catch {
            connecting.cancel()
            throw error
        }
        stats.filesScanned = scan.entries.count
        let hasher = ContentHasher(project: project, ops: planned)
        hasher.start()
        let connection: AgentConnection
        do { connection = try connecting.wait() } catch {
            try? state.saveFiles(hasher.stop())
            throw error
        }
        Trace.mark("push: connected (round trip \(connection.stream.roundTripSeconds.map { String(format: "%.2f ms", $0 * 1000) } ?? "unknown"))")
        let totalBytes = planned.reduce(UInt64(0)) { sum, op in
            if case .file(let e, _) = op { return sum + e.stat.size }
            return sum
        }
        let progress = ProgressReporter(label: "push", enabled: project.options.progress)
        let pipeline = PushPipeline(project: project, connection: connection, ops: planned, pushed: pushed, hasher: hasher,
                                    window: window, progress: progress, totalBytes: totalBytes) { instance in
            if try state.adoptRemoteInstance(instance) { throw RemoteReplaced() }
        }
        let outcome: PipelineOutcome
        do {
            outcome = try pipeline.run()
        } catch let error as RemoteReplaced {
            progress.finish()
            try? state.saveFiles(hasher.stop())
            connection.terminate()
            _ = connection.finish()
            throw error
        } catch {
            progress.finish()
            try? state.saveFiles(hasher.stop())
            throw SyncError("push to \(project.config.remote) failed: \(closeAfterFailure(connection, error)); run the push again to resume")
        }
        progress.finish()
        Trace.mark("push: pipeline done")
        try state.saveFiles(hasher.stop())
        if let why = connection.finish() { stats.warnings.append(why) }
        Trace.mark("push: agent finished")
        let ops = outcome.ops
        stats.warnings = scan.warnings.map(\.description) + outcome.skipped.map(\.description) + stats.warnings
        stats.filesMoved = countMoved(ops, pushed: pushed)
        stats.chunksSent = outcome.chunksSent
        stats.bytesSent = outcome.bytesSent
        stats.bytesReceived = outcome.bytesReceived

        var changes: [(String, SyncedEntry?)] = []
        for (index, op) in ops.enumerated() {
            let id = UInt32(index + 1)
            if outcome.notSent.contains(id) {
                // Hashed and found as last pushed: the remote has it already. Unreadable files have a warning.
                if case .file(let e, _) = op, e.content != nil { changes.append((e.path.string, e.synced)) }
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
            switch result.status {
            case .applied, .unchanged:
                switch op {
                case .file(let e, _), .symlink(let e, _), .directory(let e): changes.append((e.path.string, e.synced))
                case .delete(let p, _): changes.append((p, nil))
                }
            case .conflict:
                stats.conflicts += 1
                stats.conflictPaths.append(op.path)
                printError("conflict: \(op.path): \(result.message)")
            case .failed:
                if outcome.aborted.contains(id) {
                    stats.warnings.append("\(op.path): changed while being pushed; it goes with the next push")
                } else {
                    stats.errors.append("\(op.path): \(result.message)")
                }
            }
        }
        try state.update(.pushed, changes)
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }
}

struct PipelineOutcome {
    /// The operations with every file's content filled in.
    var ops: [PushOperation] = []
    /// Operations not sent: files found unchanged once hashed, or unreadable (see `skipped`).
    var notSent: Set<UInt32> = []
    var skipped: [ScanWarning] = []
    var results: [UInt32: OpResult] = [:]
    var aborted: Set<UInt32> = []
    var chunksSent = 0
    var bytesSent: UInt64 = 0
    var bytesReceived: UInt64 = 0
}

/// The pipelined exchange: this thread sends operations and requested chunks, a reader thread collects the
/// agent's requests and answers. Only the window of files in flight ever makes the sender wait.
final class PushPipeline {
    private let project: Project
    private let connection: AgentConnection
    private var ops: [PushOperation]
    private let pushed: [String: SyncedEntry]
    private let hasher: ContentHasher
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
    private var results: [UInt32: OpResult] = [:]
    /// Sender-thread only.
    private var outcome = PipelineOutcome()
    private var bytesDone: UInt64 = 0
    private var openFile: (op: UInt32, fd: FileDescriptor)?

    init(project: Project, connection: AgentConnection, ops: [PushOperation], pushed: [String: SyncedEntry], hasher: ContentHasher,
         window: Int, progress: ProgressReporter, totalBytes: UInt64, checkInstance: @escaping (String) throws -> Void) {
        self.checkInstance = checkInstance
        sender = ChunkSender(compress: project.compresses(roundTrip: connection.stream.roundTripSeconds))
        self.project = project
        self.connection = connection
        self.ops = ops
        self.pushed = pushed
        remoteDigests = Set(pushed.values.compactMap(\.digest))
        self.hasher = hasher
        self.window = window
        self.progress = progress
        self.totalBytes = totalBytes
        reader = FrameReader(connection.stream)
        writer = FrameWriter(connection.stream)
    }

    /// The connection has sent the handshake and hello already; operations follow at once, and the reader thread
    /// checks the agent's handshake and welcome as they arrive.
    func run() throws -> PipelineOutcome {
        let readerThread = Thread { [self] in readLoop() }
        readerThread.start()

        for index in ops.indices {
            let id = UInt32(index + 1)
            if case .file(var e, let base) = ops[index], e.content == nil {
                switch hasher.result(for: index) {
                case .success(let record):
                    e.content = ChunkedContent(chunks: record.chunks, digest: record.digest, size: record.stat.size)
                    ops[index] = .file(e, base: base)
                    if pushed[e.path.string] == e.synced {
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
                try writer.flush()
                condition.lock()
                while needs.isEmpty && !agentDone && fatal == nil { condition.wait() }
                condition.unlock()
            }
        }
        try writer.flush()
        outcome.bytesSent = writer.bytesWritten
        condition.lock()
        outcome.bytesReceived = reader.bytesRead
        outcome.results = results
        condition.unlock()
        outcome.ops = ops
        return outcome
    }

    private func readLoop() {
        do {
            try checkInstance(try readWelcome(reader, from: connection))
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
                if fatal == nil { fatal = SyncError("\(connection.peerDescription) closed the connection") }
                return
            case .need(let op, let indices)?:
                needs.append((op, indices))
            case .result(let r)?:
                results[r.op] = r
                inFlight -= 1
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
                try writer.flush()
                condition.lock()
                while inFlight >= window && needs.isEmpty && fatal == nil { condition.wait() }
                condition.unlock()
            }
        }
    }

    private func send(_ op: PushOperation, id: UInt32) throws {
        switch op {
        case .file(let e, let base):
            let content = e.content!
            // A small file whose content the remote is not known to hold goes with its data, unasked: one round
            // trip less for an edit. Content the remote has (a move, a copy, an undo) waits to be asked.
            let eager = content.size <= Self.eagerLimit && !content.chunks.isEmpty && !remoteDigests.contains(content.digest)
            try writer.send(.fileBegin(FileHeader(op: id, path: e.path.string, permissions: e.stat.permissions,
                                                  mtimeNanos: e.stat.mtimeNanos, size: content.size, digest: content.digest,
                                                  base: base, chunkCount: UInt32(content.chunks.count), dataFollows: eager)))
            var start = 0
            while start < content.chunks.count {
                let end = min(start + maxListItems, content.chunks.count)
                try writer.send(.chunkList(op: id, chunks: Array(content.chunks[start..<end])))
                start = end
            }
            if eager {
                var seen: Set<ChunkID> = []
                let distinct = content.chunks.indices.filter { seen.insert(content.chunks[$0].id).inserted }.map { UInt32($0) }
                try sendChunks(op: id, indices: distinct)
            }
        case .symlink(let e, let base):
            try writer.send(.symlink(op: id, path: e.path.string, target: e.linkTarget ?? "", base: base))
        case .directory(let e):
            try writer.send(.directory(op: id, path: e.path.string, permissions: e.stat.permissions))
        case .delete(let path, let base):
            try writer.send(.delete(op: id, path: path, base: base))
        }
    }

    private func serviceNeeds() throws {
        condition.lock()
        let batch = needs
        needs.removeAll()
        condition.unlock()
        for (op, indices) in batch { try sendChunks(op: op, indices: indices) }
    }

    private func sendChunks(op: UInt32, indices: [UInt32]) throws {
        guard op >= 1, Int(op) <= ops.count, case .file(let entry, _) = ops[Int(op) - 1], let content = entry.content else {
            throw ProtocolError("the agent asked for chunks of operation \(op), which is not a file")
        }
        if outcome.aborted.contains(op) { return }
        let fd: FileDescriptor
        if let open = openFile, open.op == op { fd = open.fd } else {
            do { fd = try project.tree.openForReading(entry.path) } catch {
                outcome.aborted.insert(op)
                try writer.send(.abort(op: op, reason: "cannot read \(entry.path) locally: \(error)"))
                return
            }
            openFile = (op, fd)
        }
        for index in indices {
            guard Int(index) < content.chunks.count else { throw ProtocolError("the agent asked for chunk \(index) of \(entry.path), which has \(content.chunks.count)") }
            let chunk = content.chunks[Int(index)]
            guard try sender.send(chunk, index: index, op: op, from: fd, to: writer) else {
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
