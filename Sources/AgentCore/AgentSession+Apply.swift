import Chunking
import SnapshotFormat
import SyncSystem
import Wire

/// A push the agent works out itself (`applySnapshot`): what it answers, kept for one summary.
final class ApplyRun {
    enum Role { case placing(size: UInt64), deleting, clearing }
    /// The operations not answered yet: their path, and what each does (`clearing`: the delete before something
    /// of another kind takes a path, counted with what follows it).
    var inFlight: [UInt32: (path: [UInt8], role: Role)] = [:]
    var summary = ApplySummary()
    var nextOp: UInt32 = 1
    /// Why the chunks about to be asked of the client (who has none to give here) could not come from the store.
    var storeTrouble: String?

    func note(_ r: OpResult) {
        guard let made = inFlight.removeValue(forKey: r.op) else { return }
        switch r.status {
        case .applied where r.keptAs.isEmpty, .unchanged:
            switch (made.role, r.status) {
            case (.clearing, _): break
            case (.deleting, _): summary.deleted += 1
            case (.placing, .unchanged): summary.unchanged += 1
            case (.placing(let size), _):
                summary.applied += 1
                summary.bytesPlaced += size
            }
        default:
            summary.others.append((made.path, r))
        }
    }
}

extension AgentSession {
    /// Operations in flight at once while a snapshot is applied: as a client's window bounds them.
    private static let applyWindow = 2048

    /// An answer to an operation: to the client, or, while a snapshot is applied, into its summary.
    func sendResult(_ r: OpResult) throws {
        if let apply = push.apply { apply.note(r) } else { try writer.send(.result(r)) }
    }

    /// Applies a snapshot from the store: reads its manifest, the base's, and the packs' indexes (each checked),
    /// then makes every change `ApplyPlan` finds as the operations a client would have sent, answered into the
    /// summary. Deletes go last, deepest first, so that a directory is empty when its turn comes.
    func applySnapshot(_ request: SnapshotApply) throws {
        guard !push.ended, push.apply == nil, push.highestBegun == 0, push.fetcher == nil else {
            throw ProtocolError("a snapshot to apply after operations, or a second one")
        }
        guard request.packs.count == request.indexes.count else { throw ProtocolError("snapshot apply: packs and indexes differ in number") }
        let apply = ApplyRun()
        push.apply = apply
        if push.refusing { return }  // a wiped or replaced remote: the client learns it from the welcome
        let fetcher = try StoreFetcher(store: request.store, signingRegion: request.signingRegion,
                                       stallSeconds: max(1, min(30, Int(timeoutSeconds / 2))))
        push.fetcher = fetcher
        fetcher.add(request.packs.map { StorePack(digest: $0.digest, url: request.url(StoreKeys.pack($0.digest), signature: $0.signature)) })
        // What cannot be read (no answer, an error status, an object that fails its check) is said in the summary,
        // and nothing is applied: the client pushes the usual way.
        let manifest: SnapshotManifest, base: SnapshotManifest?
        do {
            manifest = try readManifest(request.manifest, of: request, from: fetcher)
            base = try request.base.map { try readManifest($0, of: request, from: fetcher) }
            for (number, (pack, signature)) in zip(request.packs, request.indexes).enumerated() {
                let key = StoreKeys.index(pack.digest)
                let object = "\(request.store)/\(key)"
                let index = try PackIndex(decoding: try fetcher.readObject(request.url(key, signature: signature), object: object,
                                                                           limit: Self.largestIndex),
                                          pack: pack.digest, object: object)
                for e in index.entries where push.storeChunks[e.id] == nil { push.storeChunks[e.id] = StoreChunk(e, pack: UInt32(number)) }
            }
        } catch {
            apply.summary.unreadable = "\(error)"
            push.storeChunks.removeAll()
            return
        }
        // A path that changes kind is cleared first (a delete checked against the base), then made anew. What was a
        // directory is cleared with the deletes, deepest first, and made after them.
        var deletes: [(ApplyStep, clearing: Bool)] = []
        var afterDeletes: [ApplyStep] = []
        try ApplyPlan.steps(new: manifest.entries, base: base?.entries ?? [], exceptions: request.exceptions) { step in
            guard let entry = step.entry else { return deletes.append((step, false)) }
            if step.base != .absent && !Self.sameKind(step.base, ApplyPlan.state(of: entry)) {
                if step.base == .directory {
                    deletes.append((step, true))
                    afterDeletes.append(ApplyStep(path: step.path, entry: entry, base: .absent))
                    return
                }
                try applyDelete(ApplyStep(path: step.path, entry: nil, base: step.base), clearing: true, force: request.force)
                try applyMaking(ApplyStep(path: step.path, entry: entry, base: .absent), force: request.force)
                return
            }
            try applyMaking(step, force: request.force)
        }
        for (step, clearing) in deletes.reversed() {
            try applyDelete(ApplyStep(path: step.path, entry: nil, base: step.base), clearing: clearing, force: request.force)
        }
        for step in afterDeletes { try applyMaking(step, force: request.force) }
        Trace.mark("agent: applying snapshot \(request.manifest.digest.hex.prefix(12)): \(manifest.entries.count) entries, \(apply.nextOp - 1) operations")
    }

    private static func sameKind(_ a: PathState, _ b: PathState) -> Bool {
        switch (a, b) {
        case (.file, .file), (.symlink, .symlink), (.directory, .directory), (.absent, .absent): return true
        default: return false
        }
    }

    /// The operation a client would have sent to make `step`'s entry.
    private func applyMaking(_ step: ApplyStep, force: Bool) throws {
        guard let apply = push.apply, let entry = step.entry else { return }
        let op = apply.nextOp
        apply.nextOp += 1
        apply.inFlight[op] = (step.path.bytes, .placing(size: entry.kind == .file ? entry.size : 0))
        let fail: (String) throws -> Void = { try self.reply(op, .failed, $0, .absent) }
        switch entry.kind {
        case .directory:
            try guardOp({ try applyDirectory(op, step.path.bytes, entry.mode, force: force) }, fail: fail)
        case .symlink:
            try guardOp({ try applySymlink(op, step.path.bytes, entry.target ?? [], step.base, force: force) }, fail: fail)
        case .file:
            let header = FileHeader(op: op, path: step.path.bytes, permissions: entry.mode, mtimeNanos: entry.mtimeNanos, size: entry.size,
                                    digest: entry.digest ?? .empty, base: step.base, chunkCount: UInt32(entry.chunks.count), force: force)
            try begin(header)
            if !entry.chunks.isEmpty, push.pending[op] != nil { try list(op, entry.chunks) }
        }
        try keepApplyPace()
    }

    private func applyDelete(_ step: ApplyStep, clearing: Bool, force: Bool) throws {
        guard let apply = push.apply else { return }
        let op = apply.nextOp
        apply.nextOp += 1
        apply.inFlight[op] = (step.path.bytes, clearing ? .clearing : .deleting)
        try guardOp({ try applyDelete(op, step.path.bytes, step.base, force: force) }) { try self.reply(op, .failed, $0, .absent) }
        try keepApplyPace()
    }

    /// Waits for placing and reading to catch up while the window is full. Each wait in it is bounded (a store
    /// read by its stall limit, the disk by its own); if the window still does not move for four session timeouts,
    /// the apply ends with an error rather than wait on.
    private func keepApplyPace() throws {
        var (fewest, since) = (Int.max, monotonicNanos())
        let limit = UInt64(max(60, timeoutSeconds * 4) * 1e9)
        while push.pending.count + push.sealed.count >= Self.applyWindow {
            try waitForFetchesOrFlushes()
            let waiting = push.pending.count + push.sealed.count
            if waiting < fewest {
                (fewest, since) = (waiting, monotonicNanos())
            } else if monotonicNanos() - since > limit {
                throw AgentError("applying the snapshot stopped moving: \(waiting) files have waited \(limit / 1_000_000_000) s to be placed")
            }
        }
    }

    /// A manifest read from the store and checked against its digest.
    private func readManifest(_ object: SnapshotApply.Object, of request: SnapshotApply, from fetcher: StoreFetcher) throws -> SnapshotManifest {
        let key = StoreKeys.manifest(object.digest)
        let name = "\(fetcher.store)/\(key)"
        return try SnapshotManifest(decoding: try fetcher.readObject(request.url(key, signature: object.signature), object: name,
                                                                     limit: Self.largestManifest),
                                    digest: object.digest, object: name)
    }

    /// The largest manifest an apply reads (a deflated manifest of tens of millions of entries), and the largest
    /// pack index (a 32 MB pack of the smallest chunks lists about 16k of 41 bytes; packs may be larger).
    static let largestManifest = 2 << 30
    static let largestIndex = 256 << 20

    /// The chunks of file `op` the store could not give: with a snapshot applied there is no client to ask, so
    /// the file fails, saying why.
    func failApplied(_ op: UInt32, missing: [UInt32]) throws {
        guard let apply = push.apply, let file = push.pending[op] else { return }
        let why = apply.storeTrouble.map { "the store could not give \(missing.count) of its chunks: \($0)" }
            ?? "\(missing.count) of its chunks are in none of the snapshot's packs"
        try giveUp(file, why)
    }

    /// The summary, in frames of at most `maxListItems` outcomes.
    func sendApplySummary() throws {
        guard let apply = push.apply else { return }
        var summary = apply.summary
        let others = summary.others
        var start = 0
        repeat {
            let end = min(start + maxListItems, others.count)
            summary.others = Array(others[start..<end])
            try writer.send(.applied(summary))
            summary = ApplySummary()
            start = end
        } while start < others.count
    }
}
