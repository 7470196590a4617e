import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncRules
import SyncSystem
import Transport
import Transfer
import Wire

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

/// What a host's agent said of the store during a push.
struct StoreTrouble: Sendable {
    /// Set once it stopped reading from the store: why.
    var unreachable: String?
    /// Chunks the store served damaged, by pack, and what the agent said of them.
    var damaged: [ChunkID: [ChunkID]] = [:]
    var reasons: [String] = []
}

/// The pipelined exchange: this thread sends operations and requested chunks, a reader thread collects the
/// agent's requests and answers. Only the window of files in flight ever makes the sender wait.
final class PushPipeline: @unchecked Sendable {  // what the reader thread shares is in `shared` (Locked); the rest is the sender thread's
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
    /// How many operations may wait for their answers at once.
    private let opsInFlight: Int
    private let reader: FrameReader
    private let writer: FrameWriter
    private let progress: ProgressReporter
    private let totalBytes: UInt64
    private let sender: ChunkSender
    /// Whether the remote holds content with this digest anywhere, as the pushed record says: asked of the whole
    /// record (which `pushed` holds only part of) for a small file that would otherwise go with its data.
    private let remoteHolds: (ChunkID) -> Bool
    /// The largest file sent with its data, unasked (see `send`).
    static let eagerLimit: UInt64 = 256 << 10

    /// What the reader thread (the agent's answers) and the sender thread share.
    private struct Shared {
        /// Chunks the agent asked for, not yet sent.
        var needs: [(UInt32, [UInt32])] = []
        /// Operations sent and not yet answered.
        var inFlight = 0
        var agentDone = false
        var fatal: Error?
        var results: OpAnswers
        /// Extra connections for chunk data, once the agent said where they join.
        var streams: ExtraStreams?
        /// What the agent said of the store (`storeTrouble`).
        var trouble = StoreTrouble()
        /// Counts the hasher's signals that a streamed file has more (each wakes a sender waiting for it).
        var hasherSignals = 0
    }
    private let shared: Locked<Shared>
    /// Sender-thread only.
    private var outcome = PipelineOutcome()
    private var bytesDone: UInt64 = 0
    /// The chunks not held in memory are read from their files.
    private let files: FileChunkSource
    /// The bytes of the file being sent, as the hasher read them (small files only): sent from memory.
    private var heldBytes: (op: UInt32, bytes: [UInt8])?
    /// Streamed files whose list has not ended: the chunks listed so far.
    private var streamedChunks: [UInt32: [ChunkRef]] = [:]
    /// The parts of streamed files listed and not yet answered, oldest first, with their bytes: the agent answers
    /// each list frame with one `need`, and a part is let go once every frame of it was answered and served.
    /// Beyond `keptLimit` bytes of them, no further part is listed until answers come.
    private var keptParts: [(op: UInt32, first: Int, count: Int, offset: UInt64, buffer: ReadBuffer, range: Range<Int>, framesThrough: Int)] = []
    private var keptBytes = 0
    static let keptLimit = 32 << 20
    /// Streamed files this side gave up on before their list ended (or found unchanged at its end): what the agent
    /// asked of them meanwhile is not sent.
    private var abandoned: Set<UInt32> = []
    /// For each streamed file, the list frames sent and those answered so far.
    private var listFrames: [UInt32: (sent: Int, answered: Int)] = [:]
    /// Chunks sent from memory (as the hasher read them), and those read from their files (traced at the end).
    private var sentFromMemory = 0
    /// Store chunks whose places the agent has been told, and how many packs (sender thread only).
    private var placesSent: Set<ChunkID> = []
    /// The packs told to the agent, by their number in the feed, with the number the agent knows each by (the
    /// order sent): a pack goes ahead of the first place in it, so a push of a few files names a few packs (a
    /// presigned URL is about 400 bytes), not every pack of the project.
    private var packNumbers: [UInt32: UInt32] = [:]
    /// How many extra connections were asked for.
    private var streamsAsked = 0
    /// A push sends this much at least before it asks for extra streams: below it, their SSH handshakes cost more
    /// than they could save.
    static let streamsThreshold: UInt64 = 64 << 20
    /// Why extra streams could not be opened (told as warnings).
    private(set) var streamWarnings: [String] = []
    /// With `store_fallback: no`: once the agent gives up on the store, what it asks for is refused, not sent.
    var storeFallback = true
    /// Files whose chunks this side refused to send (sender thread only).
    private var refused: Set<UInt32> = []

    init(project: Project, link: AgentLink, ops: [PushOperation], pushed: [RelativePath: SyncedEntry], hasher: ContentHasher,
         window: Int, progress: ProgressReporter, totalBytes: UInt64, force: Bool, storeFeed: StoreFeed?,
         readsLocalFiles: Bool = true, remoteHolds: @escaping (ChunkID) -> Bool = { _ in false },
         checkInstance: @escaping (String) throws -> Void) {
        self.remoteHolds = remoteHolds
        self.checkInstance = checkInstance
        self.readsLocalFiles = readsLocalFiles
        self.force = force
        self.storeFeed = storeFeed
        sender = ChunkSender(compress: project.compresses(roundTrip: link.connection.stream.roundTripSeconds))
        files = FileChunkSource(tree: project.tree)
        self.project = project
        self.link = link
        self.ops = ops
        shared = Locked(Shared(results: OpAnswers(count: ops.count)))
        self.pushed = pushed
        self.hasher = hasher
        opsInFlight = window
        self.progress = progress
        self.totalBytes = totalBytes
        reader = link.reader
        writer = link.writer
        bytesAtStart = (writer.bytesWritten, reader.bytesRead)
        if project.config.compress == .auto { sender.linkRate = { [unowned self] in linkRate() } }
    }

    /// What the main connection and the joined streams carry per second between them, once the main one's is known.
    private func linkRate() -> Double? {
        guard let main = link.connection.stream.drainRate else { return nil }
        return main + (streams?.drainRate ?? 0)
    }

    /// The link's byte counts when this session began (a persistent link carries many sessions).
    private let bytesAtStart: (written: UInt64, read: UInt64)

    /// The connection has sent the handshake and hello already; operations follow at once, and the reader thread
    /// checks the agent's handshake and welcome as they arrive.
    package func run() throws -> PipelineOutcome {
        do { return try exchange() } catch {
            // A transport error here often follows the agent's own account of what went wrong (it said so and
            // exited), which the reader thread is about to take in: that is the better message.
            let reported = shared.withLock(when: { $0.fatal != nil || $0.agentDone }, deadline: monotonicNanos() + 500_000_000) { shared, _ in
                shared.fatal
            }
            if let reported = reported as? AgentSaid { throw reported }
            throw error
        }
    }

    private func exchange() throws -> PipelineOutcome {
        try startDetachedThread(name: "push-answers") { [self] in readLoop() }
        var finished = false
        defer {
            if let streams {
                if finished { streamWarnings = streams.finish() } else { streams.abort() }
            }
        }
        if readsLocalFiles, totalBytes >= Self.streamsThreshold, project.streamCount > 1 {
            streamsAsked = project.streamCount - 1
            try writer.send(.streamsOpen(count: UInt8(streamsAsked)))
        }

        for index in ops.indices {
            let id = UInt32(index + 1)
            if case .file(var e, let base) = ops[index], e.content == nil {
                switch hasher.result(for: index) {
                case .streaming(let stream):
                    try waitForWindow()
                    try sendStreamed(e, base: base, id: id, from: stream)
                    continue
                case .done(.success(let hashed)):
                    let record = hashed.file
                    heldBytes = hashed.bytes.map { (UInt32(index + 1), $0) }
                    e.content = ChunkedContent(chunks: record.chunks, digest: record.digest, size: record.stat.size)
                    ops[index] = .file(e, base: base)
                    if pushed[e.path] == e.synced && !force {
                        outcome.notSent.insert(id)
                        continue
                    }
                case .done(.failure(let warning)):
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
            let (over, idle) = try shared.withLock { shared in
                if let fatal = shared.fatal { throw fatal }
                return (shared.agentDone && shared.needs.isEmpty, shared.needs.isEmpty)
            }
            if over { break }
            if idle {
                try flushAll()
                try waitForReader { $0.needs.isEmpty && !$0.agentDone && $0.fatal == nil }
            }
        }
        try flushAll()
        finished = true
        Trace.mark("push: chunks sent from memory \(sentFromMemory), read from their files \(files.chunksRead)")
        if storeFeed != nil { Trace.mark("push: named \(packNumbers.count) of the store's packs, \(placesSent.count) chunk places") }
        let streams = self.streams
        outcome.bytesSent = writer.bytesWritten - bytesAtStart.written + (streams?.bytesWritten ?? 0)
        outcome.streams = 1 + (streams?.carryingCount ?? 0)
        outcome.bytesReceived = reader.bytesRead - bytesAtStart.read
        outcome.results = shared.withLock { $0.results }
        outcome.ops = ops
        return outcome
    }

    /// After `run` failed: the operations and whatever answers came before the failure (operations without an
    /// answer count as not answered).
    func answeredSoFar() -> PipelineOutcome {
        var partial = outcome
        partial.results = shared.withLock { $0.results }
        partial.ops = ops
        return partial
    }

    /// What the agent said of the store in this push.
    var storeTrouble: StoreTrouble {
        shared.withLock { $0.trouble }
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
            guard shared.withLock({ take(message, into: &$0) }) else { return }
        }
    }

    /// Takes in one frame of the agent's (`shared` held); false once the reading is over.
    private func take(_ message: Message?, into shared: inout Shared) -> Bool {
        func fail(_ error: Error) -> Bool {
            if shared.fatal == nil { shared.fatal = error }
            return false
        }
        switch message {
        case nil:
            return fail(SyncError("\(link.connection.peerDescription) closed the connection"))
        case .need(let op, let indices)?:
            shared.needs.append((op, indices))
        case .storeTrouble(let unreachable, let pack, let damaged, let said)?:
            let reason = displayText(said)
            if unreachable {
                shared.trouble.unreachable = reason
            } else {
                shared.trouble.damaged[pack, default: []] += damaged
                shared.trouble.reasons.append(reason)
            }
        case .result(var r)?:
            r.message = displayText(r.message)  // the agent's words reach a terminal
            guard shared.results.record(r) else { return fail(ProtocolError("the agent answered operation \(r.op), which was not sent")) }
            shared.inFlight -= 1
        case .streamsReady(let address, let token)? where streamsAsked > 0 && shared.streams == nil:
            // An empty address: the agent offers no streams (it cannot poll its input, say).
            if !address.isEmpty { shared.streams = ExtraStreams(project: project, address: address, token: token, count: streamsAsked) }
        case .done?:
            shared.agentDone = true
            return false
        case .error(let text, let reason)?:
            return fail(AgentSaid(message: displayText(text), reason: reason))
        case let other?:
            return fail(ProtocolError("unexpected frame type 0x\(String(other.encode().type, radix: 16)) from the agent"))
        }
        return true
    }

    private func fail(_ error: Error) {
        shared.withLock { shared in if shared.fatal == nil { shared.fatal = error } }
    }

    /// The extra connections, once the agent said where they join.
    private var streams: ExtraStreams? { shared.withLock { $0.streams } }

    private func waitForWindow() throws {
        while true {
            try serviceNeeds()
            let (room, mustWait) = try shared.withLock { shared in
                if let fatal = shared.fatal { throw fatal }
                guard shared.inFlight < opsInFlight && shared.needs.isEmpty else { return (false, shared.needs.isEmpty) }
                shared.inFlight += 1
                return (true, false)
            }
            if room { return }
            if mustWait {
                try flushAll()
                try waitForReader { $0.inFlight >= opsInFlight && $0.needs.isEmpty && $0.fatal == nil }
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
            let eager = readsLocalFiles && content.size <= Self.eagerLimit
                && content.chunks.contains { !$0.id.isHole && !placesSent.contains($0.id) } && !remoteHolds(content.digest)
            try writer.send(.fileBegin(FileHeader(op: id, path: e.path.bytes, permissions: e.stat.permissions,
                                                  mtimeNanos: e.stat.mtimeNanos, size: content.size, digest: content.digest,
                                                  base: base, chunkCount: UInt32(content.chunks.count), dataFollows: eager,
                                                  force: force)))
            try sendList(content.chunks, of: id)
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

    /// A large file cut while it is sent: each part of its chunk list goes out as the hasher cuts it, with its
    /// bytes kept in `keptParts` for the chunks the agent will ask for; the end says the size and digest. Chunks
    /// other files wait for are sent meanwhile. A file the agent answered early (refused) is cut short.
    private func sendStreamed(_ e: LocalEntry, base: PathState, id: UInt32, from stream: FileStream) throws {
        stream.onReady { [unowned self] in
            shared.withLock { $0.hasherSignals += 1 }
        }
        try writer.send(.fileBegin(FileHeader(op: id, path: e.path.bytes, permissions: e.stat.permissions, mtimeNanos: e.stat.mtimeNanos,
                                              size: e.stat.size, digest: .empty, base: base, chunkCount: 0, force: force, streamed: true)))
        streamedChunks[id] = []
        var ended = false
        defer {
            streamedChunks[id] = nil
            if !ended { abandoned.insert(id) }
        }
        while true {
            try serviceNeeds()
            let answered = try shared.withLock { shared in
                if let fatal = shared.fatal { throw fatal }
                return shared.results[id] != nil
            }
            if answered {
                stream.cancel()
                try writer.send(.abort(op: id, reason: "answered before its chunk list ended"))
                return
            }
            // Enough bytes wait for answers: the hasher waits too, once its queue is full.
            let next = keptBytes < Self.keptLimit ? stream.next() : .nothingYet
            switch next {
            case .batch(let batch):
                let first = streamedChunks[id]!.count
                streamedChunks[id]!.append(contentsOf: batch.chunks)
                var frames = listFrames[id] ?? (0, 0)
                frames.sent += try sendList(batch.chunks, of: id)
                listFrames[id] = frames
                // The agent answers each part as it comes: the sooner it has it, the sooner its bytes are let go.
                try writer.flush()
                if let offset = batch.chunks.first?.offset {
                    keptParts.append((id, first, batch.chunks.count, offset, batch.buffer, batch.range, frames.sent))
                    keptBytes += batch.range.count
                }
            case .end(.whole(var file)):
                // The hasher kept no list of its own: this one is the file's.
                file.chunks = streamedChunks.removeValue(forKey: id) ?? []
                hasher.saveStreamed(file)
                let content = ChunkedContent(chunks: file.chunks, digest: file.digest, size: file.stat.size)
                var entry = e
                entry.content = content
                ops[Int(id) - 1] = .file(entry, base: base)
                if pushed[e.path] == entry.synced && !force {
                    // As last pushed after all (touched, or a change within the stat cache's second): not a change,
                    // just as for a file hashed before it is sent. The agent answers it failed, which is not counted.
                    outcome.notSent.insert(id)
                    try writer.send(.abort(op: id, reason: "\(e.path) is what the last push left"))
                    return
                }
                try writer.send(.fileEnd(op: id, size: content.size, digest: content.digest, chunkCount: UInt32(content.chunks.count)))
                ended = true
                return
            case .end(.changed):
                outcome.aborted.insert(id)
                try writer.send(.abort(op: id, reason: "\(e.path) changed locally while being pushed"))
                return
            case .end(.failed(let why)):
                try writer.send(.abort(op: id, reason: why))
                return
            case .nothingYet:
                try flushAll()
                let full = keptBytes >= Self.keptLimit
                try waitForReader { $0.needs.isEmpty && $0.fatal == nil && $0.results[id] == nil && (full || !stream.isReady) }
            }
        }
    }

    /// Sends `chunks` of file `op` in as many list frames as they take; returns how many.
    @discardableResult
    private func sendList(_ chunks: [ChunkRef], of op: UInt32) throws -> Int {
        var start = 0, frames = 0
        while start < chunks.count {
            let end = min(start + maxListItems, chunks.count)
            try writer.send(.chunkList(op: op, chunks: Array(chunks[start..<end])))
            frames += 1
            start = end
        }
        return frames
    }

    /// Counts a `need` of a streamed file as the answer to its next list frame, if any is unanswered; then lets
    /// go of the parts of that file whose frames are all answered (after the need was served).
    private func noteAnswered(_ op: UInt32) {
        guard var frames = listFrames[op], frames.answered < frames.sent else { return }
        frames.answered += 1
        listFrames[op] = frames
        keptParts.removeAll { part in
            guard part.op == op, part.framesThrough <= frames.answered else { return false }
            keptBytes -= part.range.count
            return true
        }
        if frames.answered == frames.sent && streamedChunks[op] == nil { listFrames[op] = nil }
    }

    /// Where the store holds the chunks of `content` that the agent has not been told of yet, ahead of the file's
    /// operation (so a push of a few files does not carry the places of the whole project), with the packs they
    /// are in that it has not been told of (numbered in the order sent); waits for the packs an upload still going
    /// on will hold.
    private func sendPlaces(of content: ChunkedContent, from feed: StoreFeed) throws {
        var seen: Set<ChunkID> = []
        let wanted = content.chunks.compactMap { c in !c.id.isHole && !placesSent.contains(c.id) && seen.insert(c.id).inserted ? c.id : nil }
        guard !wanted.isEmpty else { return }
        // What was sent so far goes out before waiting: the agent works on it meanwhile.
        if !feed.isReady(for: wanted) { try writer.flush() }
        let found = try feed.places(of: wanted)
        var places = found.places
        var packs: [StorePack] = []
        for i in places.indices {
            if let known = packNumbers[places[i].pack] {
                places[i].pack = known
                continue
            }
            let number = UInt32(packNumbers.count)
            packNumbers[places[i].pack] = number
            packs.append(found.pack(places[i].pack))
            places[i].pack = number
        }
        for start in stride(from: 0, to: packs.count, by: 2000) {
            try writer.send(.storePacks(store: feed.name, signingRegion: feed.signingRegion, packs: Array(packs[start..<min(start + 2000, packs.count)])))
        }
        for start in stride(from: 0, to: places.count, by: maxStoreChunks) {
            try writer.send(.storeChunks(Array(places[start..<min(start + maxStoreChunks, places.count)])))
        }
        for p in places { placesSent.insert(p.id) }
    }

    private func serviceNeeds() throws {
        let batch = shared.withLock { shared in
            defer { shared.needs.removeAll() }
            return shared.needs
        }
        for (op, indices) in batch {
            try sendChunks(op: op, indices: indices)
            noteAnswered(op)
        }
    }

    /// Waits for the reader thread while `waiting` holds for what they share. With extra streams it wakes each
    /// second and throws if one failed, since the agent would then wait for data that never comes.
    private func waitForReader(while waiting: (Shared) -> Bool) throws {
        while true {
            let streams = shared.withLock(when: { !waiting($0) || $0.streams != nil }) { shared -> ExtraStreams? in
                guard waiting(shared) else { return nil }
                return shared.streams
            }
            guard let streams else { return }
            let still = shared.withLock(when: { !waiting($0) }, deadline: monotonicNanos() + 1_000_000_000) { _, ready in !ready }
            guard still else { return }
            if let broken = streams.failure() { throw SyncError("an extra stream of this push failed: \(broken)") }
        }
    }

    /// Sends what the main connection's writer and every joined stream's hold.
    private func flushAll() throws {
        try writer.flush()
        try streams?.flush()
    }

    /// Sends chunks of file `op`. Data sent unasked (`eager`) follows its file's frames on this connection; data
    /// the agent asked for may go over any stream. Bytes still in memory (a small file as hashed, the last parts of
    /// streamed files) are sent from there; the rest is read again, and checked against its id.
    private func sendChunks(op: UInt32, indices: [UInt32], eager: Bool = false) throws {
        if abandoned.contains(op) || indices.isEmpty { return }
        guard op >= 1, Int(op) <= ops.count, case .file(let entry, _) = ops[Int(op) - 1],
              let chunks = entry.content?.chunks ?? streamedChunks[op] else {
            throw ProtocolError("the agent asked for chunks of operation \(op), which is not a file")
        }
        if outcome.aborted.contains(op) { return }
        sender.begin(op: op, name: entry.path.name)
        let (streams, unreachable, damaged) = shared.withLock { shared in
            let unreachable = shared.trouble.unreachable
            // With store_fallback: no, chunks the store served damaged are still sent (that is about the store's
            // bytes, not the host's reach); the rest is refused once the host could not read the store.
            return (eager ? nil : shared.streams, unreachable,
                    storeFallback || unreachable == nil ? [] : Set(shared.trouble.damaged.values.joined()))
        }
        let onlyDamaged = indices.allSatisfy { Int($0) < chunks.count && damaged.contains(chunks[Int($0)].id) }
        guard readsLocalFiles && (storeFallback || unreachable == nil || onlyDamaged) else {
            // Not `aborted` (a file that changed while read, a warning): the agent answers it failed, with this.
            guard refused.insert(op).inserted else { return }
            let why = readsLocalFiles ? "the host cannot read the store (see the error above) and store_fallback is no"
                : "the agent asked this machine for chunks, but a restore reads only from the store" + (unreachable.map { " (\($0))" } ?? "")
            // No path in it: the same cause for every file, so the report groups them.
            try writer.send(.abort(op: op, reason: why))
            return
        }
        let mainStream = link.connection.stream
        for index in indices {
            guard Int(index) < chunks.count, !chunks[Int(index)].id.isHole else {
                throw ProtocolError("the agent asked for chunk \(index) of \(entry.path), which has \(chunks.count) (holes are never sent)")
            }
            let chunk = chunks[Int(index)]
            let target = streams?.writer(main: writer, mainStream: mainStream) ?? writer
            do {
                if try !send(chunk, index: index, op: op, path: entry.path, to: target) { return }
            } catch where target !== writer {
                throw SyncError("an extra stream of this push failed: \(error)")
            }
            outcome.chunksSent += 1
            bytesDone += UInt64(chunk.length)
        }
        progress.update(done: bytesDone, total: totalBytes)
    }

    /// Sends one chunk from memory when it is there, else from the file; false (the file given up) when the file
    /// no longer holds it.
    private func send(_ chunk: ChunkRef, index: UInt32, op: UInt32, path: RelativePath, to target: FrameWriter) throws -> Bool {
        if let held = heldBytes, held.op == op {
            try held.bytes.withUnsafeBytes { whole in
                try sender.send(chunk, index: index, op: op, bytes: UnsafeRawBufferPointer(rebasing: whole[Int(chunk.offset)..<Int(chunk.offset) + Int(chunk.length)]), to: target)
            }
            sentFromMemory += 1
            return true
        }
        if let part = keptParts.last(where: { $0.op == op && $0.first <= Int(index) && Int(index) < $0.first + $0.count }) {
            let start = part.range.lowerBound + Int(chunk.offset - part.offset)
            try sender.send(chunk, index: index, op: op, bytes: UnsafeRawBufferPointer(rebasing: part.buffer.bytes[start..<start + Int(chunk.length)]),
                            to: target)
            sentFromMemory += 1
            return true
        }
        switch try files.send(chunk, index: index, op: op, path: path, by: sender, to: target) {
        case .sent:
            return true
        case .unreadable(let error):
            outcome.aborted.insert(op)
            try writer.send(.abort(op: op, reason: "cannot read \(path) locally: \(error)"))
        case .changed:
            outcome.aborted.insert(op)
            try writer.send(.abort(op: op, reason: "\(path) changed locally while being pushed"))
        }
        return false
    }
}
