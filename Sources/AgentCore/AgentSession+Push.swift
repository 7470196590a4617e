#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import SnapshotFormat
import ProjectScan
import Watch
import SyncRules
import SyncSystem
import Transfer
import Wire

// A push: files and their chunks, from the client, the store and the cache.
extension AgentSession {
    /// True while a file of the push still waits for frames from the client (its chunk list, data sent unasked,
    /// or chunks asked for).
    func waitsOnClient(_ file: PendingFile) -> Bool {
        file.path == nil || !file.listEnded || file.assembly == nil || file.asksClient || push.eagerFrames[file.header.op] != nil
    }

    /// Places the chunks the store answered with. Chunks it could not give intact are asked of the client instead
    /// (`need`): damaged ones are reported (`storeTrouble`) so the client uploads them again, and after a few reads
    /// that got no usable answer the push stops reading from the store altogether, saying so once.
    func receiveFetched(_ done: [StoreFetcher.Completion]) throws {
        for completion in done {
            guard let file = push.pending[completion.op], let assembly = file.assembly else { continue }
            file.fetching -= 1
            do {
                for piece in completion.chunks {
                    try piece.bytes.withUnsafeBytes { try assembly.write(index: piece.index, bytes: $0) }
                }
            } catch {
                assembly.suspend()
                push.pending[completion.op] = nil
                try reply(completion.op, .failed, "\(error)", .absent)
                continue
            }
            if let failure = completion.failure {
                try storeReadFailed(failure, damaged: completion.damaged, pack: completion.pack, chunks: completion.failed.map(\.chunk.id))
                file.asksClient = true
                try requestMissing(completion.op, completion.failed.map { UInt32($0.index) })
            }
            if assembly.isComplete {
                do { try finish(file) } catch let error where error is SystemError || error is PlacementError || error is AgentError {
                    push.pending[completion.op] = nil
                    try reply(completion.op, .failed, "\(error)", .absent)
                }
            }
        }
    }

    /// Tells the client what went wrong reading from the store; gives up on the store once it failed to answer
    /// `maxStoreFailures` times, sending the reads not begun yet to the client too.
    private func storeReadFailed(_ failure: StoreError, damaged: Bool, pack: ChunkID?, chunks: [ChunkID]) throws {
        push.apply?.storeTrouble = "\(failure)"
        if damaged {
            let new = chunks.filter { push.reportedDamage.insert($0).inserted }
            if !new.isEmpty {
                try writer.send(.storeTrouble(unreachable: false, pack: pack ?? ChunkID(low: 0, high: 0), damaged: new, reason: "\(failure)"))
            }
            return
        }
        // Said before the chunks are asked for, so that a client that may not send them (`store_fallback: no`)
        // knows why they are asked.
        push.storeFailures += 1
        guard !push.storeGivenUp, let fetcher = push.fetcher else { return }
        push.storeGivenUp = push.storeFailures >= Self.maxStoreFailures
        try writer.send(.storeTrouble(unreachable: true, pack: ChunkID(low: 0, high: 0), damaged: [], reason:
            "\(push.storeFailures) \(push.storeFailures == 1 ? "read" : "reads") of \(fetcher.store) at \(fetcher.endpoint) failed"
            + (push.storeGivenUp ? " and it stopped reading from there" : "") + ", the last: \(failure)"))
        guard push.storeGivenUp else { return }
        for job in fetcher.withdrawQueued() {
            guard let file = push.pending[job.op] else { continue }
            file.fetching -= 1
            file.asksClient = true
            try requestMissing(job.op, job.pieces.map { UInt32($0.index) })
        }
    }

    static let refusal = "the remote project was wiped or replaced since the last sync; nothing applied"

    func servePush() throws {
        let durability = durability!
        // What sessions that are gone left may be taken over by this one, file by file; the rest goes at the end.
        building.findDeadSessions()
        state.beginPush()
        tree.cachesDirectories(true)
        // The push's own state (`push`) was made new for it; what holds resources is let go here. Files still
        // pending after a failure stay in it until the session's error handling suspends them.
        defer {
            state.endPush()
            push.joinedStreams?.close()
            push.joinedStreams = nil
            tree.cachesDirectories(false)
            push.fetcher?.shutdown()
            push.fetcher = nil
            push.storeChunks.removeAll()
        }
        while !push.ended || !push.pending.isEmpty || !push.sealed.isEmpty || drainingGivenUp {
            let draining = drainingGivenUp
            if push.ended && push.pending.isEmpty && !draining {
                durability.closeBatch()
                try handle(durability.wait())
                continue
            }
            if push.ended && !draining && !push.pending.values.contains(where: waitsOnClient) {
                // Everything still missing comes from the store: wait for it (and for fsyncs), not for input.
                try waitForFetchesOrFlushes()
                continue
            }
            if durability.outstanding > 0 { try handle(durability.take()) }
            if let fetcher = push.fetcher, fetcher.outstanding > 0 { try receiveFetched(fetcher.takeCompletions()) }
            if durability.waitingRenames >= Self.maxUnsyncedAnswers && durability.outstanding == 0 && !durability.hasOpenBatch {
                try syncDirectoriesAndAnswer()
            }
            let drainingOnly = push.ended && push.pending.isEmpty && push.sealed.isEmpty && draining
            if drainingOnly && !push.onlyDraining { push.lastArrivalNanos = monotonicNanos() }  // the wait starts now
            push.onlyDraining = drainingOnly
            let (next, joined) = try nextPushMessage { try receiveChunk($0) }
            let message: Message
            switch next {
            case .chunk, .heartbeat: continue
            case .end:
                throw AgentError("the client closed the connection in the middle of a push; finished files are kept and the next push resumes")
            case .message(let m): message = m
            }
            if joined, case .chunkData(let op, let index, let compressed, let rawLength, let payload) = message {
                try takeJoinedChunk(op: op, index: index, compressed: compressed, rawLength: rawLength, payload: payload)
                continue
            }
            try take(message)
        }
        try syncDirectoriesAndAnswer()
        // Every operation is answered: this session's temporary files, and what sessions that are gone left, are
        // stale. Those of other sessions still running are theirs.
        building.sweep(in: tree)
        state.sweepLegacyPartials(in: tree)
        if push.cacheGrew { evictCache() }
        push.cacheGrew = false
        try sendApplySummary()
        // The state is a cache of what was hashed: one that cannot be written (a full disk) costs hashing again,
        // not the push.
        do { try state.save() } catch { printError("syncd-agent: cannot save the project's state: \(error)") }
        try writer.send(.done)
    }

    /// One frame of a push other than chunk data.
    private func take(_ message: Message) throws {
        if push.apply != nil && message != .endOfOperations {
            throw ProtocolError("a snapshot to apply is followed only by the end of operations, not a frame of type 0x\(String(message.encode().type, radix: 16))")
        }
        switch message {
        case .fileBegin(let header):
            try begin(header)
        case .chunkList(let op, let chunks) where push.pending[op]?.listEnded == false:
            try continueStreamed(push.pending[op]!, chunks)
        case .fileEnd(let op, let size, let digest, let count):
            guard let file = push.pending[op], !file.listEnded else {
                throw ProtocolError("end of the chunk list of operation \(op), which is no streamed file being listed")
            }
            try endStreamed(file, size: size, digest: digest, count: count)
        case .chunkList(let op, let chunks):
            try list(op, chunks)
        case .abort(let op, let reason):
            push.eagerFrames[op] = nil
            push.asked[op] = nil
            if let file = push.pending.removeValue(forKey: op) {
                file.assembly?.suspend()
                push.openAssemblies.removeAll { $0 == op }
                if file.asksClient { push.givenUp.insert(op) }
                // A file refused already was answered then.
                if file.path != nil { try reply(op, .failed, "sender gave up: \(reason)", .absent) }
            }
        case .symlink(let op, _, _, _, _) where push.refusing, .directory(let op, _, _, _) where push.refusing,
             .delete(let op, _, _, _) where push.refusing:
            try reply(op, .failed, Self.refusal, .absent)
        case .symlink(let op, let path, let target, let base, let force):
            try guardOp { try applySymlink(op, path, target, base, force: force) } fail: { try reply(op, .failed, $0, .absent) }
        case .directory(let op, let path, let permissions, let force):
            try guardOp { try applyDirectory(op, path, permissions, force: force) } fail: { try reply(op, .failed, $0, .absent) }
        case .delete(let op, let path, let base, let force):
            try guardOp { try applyDelete(op, path, base, force: force) } fail: { try reply(op, .failed, $0, .absent) }
        case .endOfOperations:
            push.ended = true
        case .storePacks(let store, let signingRegion, let packs):
            guard !push.ended else { throw ProtocolError("store packs after end of operations") }
            if push.fetcher == nil {
                push.fetcher = try StoreFetcher(store: store, signingRegion: signingRegion, stallSeconds: max(1, min(30, Int(timeoutSeconds / 2))))
            }
            push.fetcher!.add(packs)
        case .applySnapshot(let request):
            try applySnapshot(request)
        case .storeChunks(let chunks):
            guard let fetcher = push.fetcher else { throw ProtocolError("store chunks before any store pack") }
            for c in chunks where Int(c.pack) < fetcher.packs.count { push.storeChunks[c.id] = c }
        case .streamsOpen(let count):
            guard !push.ended, push.joinedStreams == nil else { throw ProtocolError("streams asked for twice, or after end of operations") }
            // Over a transport without a descriptor to poll (in-process tests) there are no extra streams.
            if stream.readinessFD != nil, count > 0, let streams = try? JoinedStreams(limit: min(Int(count), Self.maxJoinedStreams),
                                                                                             timeoutSeconds: timeoutSeconds) {
                push.joinedStreams = streams
                try writer.send(.streamsReady(address: streams.address, token: streams.token))
            } else {
                try writer.send(.streamsReady(address: "", token: []))
            }
            try writer.flush()
        default:
            throw ProtocolError("unexpected frame during a push: \(message.encode().type)")
        }
    }

    /// Chunk data that came over a joined stream: written into its file, or dropped when the file is done with.
    private func takeJoinedChunk(op: UInt32, index: UInt32, compressed: Bool, rawLength: UInt32, payload: [UInt8]) throws {
        arrived(op)
        guard let file = push.pending[op], let assembly = file.assembly else {
            if op <= push.highestBegun { return }
            throw ProtocolError("a joined stream brought chunk data for operation \(op), which was never begun")
        }
        try payload.withUnsafeBytes {
            try receiveChunk(file, assembly, index: Int(index), compressed: compressed, rawLength: Int(rawLength), payload: $0)
        }
    }

    /// A file's header: its path checked (a refused one is answered, its list read and dropped), then built at
    /// once if it lists no chunks, or begun as its list streams in.
    func begin(_ header: FileHeader) throws {
        guard !push.ended else { throw ProtocolError("file frame after end of operations") }
        guard push.pending[header.op] == nil else { throw ProtocolError("operation id \(header.op) reused while in flight") }
        push.highestBegun = max(push.highestBegun, header.op)
        let path: RelativePath
        do {
            if push.refusing { throw AgentError(Self.refusal) }
            path = try checkedPath(header.path)
            // A size beyond what this side accepts is refused before its list costs anything.
            if let why = tree.refusal(ofFileSize: header.size, largest: maxFileSize) { throw AgentError(why) }
        } catch {
            try reply(header.op, .failed, "\(error)", .absent)
            if header.chunkCount > 0 || header.streamed { push.pending[header.op] = PendingFile(header: header, path: nil) }
            return
        }
        let file = PendingFile(header: header, path: path)
        push.pending[header.op] = file
        if header.streamed {
            try beginStreamed(file)
        } else if header.chunkCount == 0 {
            try startFile(file)
        }
    }

    /// A part of a file's chunk list (not a streamed one); the whole list starts the file.
    func list(_ op: UInt32, _ chunks: [ChunkRef]) throws {
        guard let file = push.pending[op], file.assembly == nil else { throw ProtocolError("chunk list for unknown operation \(op)") }
        guard file.chunks.count + chunks.count <= Int(file.header.chunkCount) else {
            throw ProtocolError("\(displayPath(file.header.path)): more chunks than the \(file.header.chunkCount) announced")
        }
        var offset = file.chunks.last.map { $0.offset + UInt64($0.length) } ?? 0
        for c in chunks {
            file.chunks.append(ChunkRef(id: c.id, offset: offset, length: c.length))
            offset += UInt64(c.length)
        }
        guard offset <= file.header.size else {
            throw ProtocolError("\(displayPath(file.header.path)): chunks (and holes) listed beyond the \(file.header.size) bytes announced")
        }
        if file.chunks.count == Int(file.header.chunkCount) {
            if file.header.dataFollows {
                let coming = Set(file.chunks.lazy.map(\.id).filter { !$0.isHole }).count
                if coming > 0 { push.eagerFrames[op] = coming }
            }
            if file.path == nil { push.pending[op] = nil; return }
            try startFile(file)
        }
    }

    func startFile(_ file: PendingFile) throws {
        let path = try file.placedPath()
        let header = file.header
        do {
            if isPullPath(path) && !header.force {
                throw AgentError("\(path) is remote-owned (a pull path); push refused")
            }
            guard file.chunks.count == Int(header.chunkCount) else { throw ProtocolError("\(path): chunk list incomplete") }
            var (current, st) = try currentState(path)
            switch decidePushAtRemote(current: current, incoming: .file(header.digest), base: header.base,
                                      currentIsBase: matchesBase(header.base, current, path, st), forced: header.force) {
            case .same:
                if let st { try updateMetadata(path, st, header) }
                push.pending[header.op] = nil
                return try reply(header.op, .unchanged, "", current)
            case .conflict, .staysDeleted, .nothing:
                push.pending[header.op] = nil
                return try replyConflict(header.op, path, current, st, base: header.base)
            case .keepAsideThenTake:
                file.keptAs = try keepAside(path)
                (current, st) = (.absent, nil)
            case .take:
                break
            }
            file.targetStat = st
            if current == .absent, try adoptCached(file) { return }
            let assembly = try makingRoom {
                try FileAssembly(tree: tree, path: path, digest: header.digest, size: header.size, chunkList: file.chunks,
                                 permissions: header.permissions, session: building)
            }
            file.assembly = assembly
            try makingRoom { try assembly.fill(from: held) }
            if assembly.isComplete {
                try finish(file)
            } else {
                noteOpen(header.op)
                // Data sent unasked is on its way; only what is still missing after it is asked for. What the
                // snapshot store holds is read from there; the rest is asked of the client.
                if push.eagerFrames[header.op] == nil {
                    let missing = assembly.missingIndices
                    let reading = push.storeGivenUp ? nil : push.fetcher
                    let fromStore = missing.compactMap { i in push.storeChunks[assembly.chunks[Int(i)].id].map { (index: Int(i), chunk: $0) } }
                    if let reading, !fromStore.isEmpty { file.fetching += reading.submit(op: header.op, fromStore) }
                    let fromClient = missing.filter { push.storeChunks[assembly.chunks[Int($0)].id] == nil || reading == nil }
                    if !fromClient.isEmpty {
                        file.asksClient = true
                        try requestMissing(header.op, fromClient)
                    }
                }
            }
        } catch let error where error is PathError || error is SystemError || error is AgentError || error is PlacementError {
            file.assembly?.suspend()
            push.pending[header.op] = nil
            try reply(header.op, .failed, describeFailure(error, building: file.assembly), .absent)
        }
    }

    /// The header of a streamed file: whether it may be built while its list comes (see `PendingFile.asksEarly`).
    func beginStreamed(_ file: PendingFile) throws {
        let path = try file.placedPath()
        do {
            if isPullPath(path) && !file.header.force {
                throw AgentError("\(path) is remote-owned (a pull path); push refused")
            }
            let (current, st) = try currentState(path)
            file.asksEarly = matchesBase(file.header.base, current, path, st)
            file.targetStat = st
        } catch let error where error is PathError || error is SystemError || error is AgentError {
            try giveUp(file, describeFailure(error))
        }
    }

    /// A part of a streamed file's list, answered with one `need` (empty when nothing of it is wanted): the
    /// client keeps each part's bytes until that answer came, so it reads nothing twice. Once a chunk comes that
    /// this side does not hold (the file's content is new, so it can be neither unchanged nor moved), the file is
    /// built as its list comes: chunks held here are copied, and the others asked for.
    func continueStreamed(_ file: PendingFile, _ chunks: [ChunkRef]) throws {
        file.listedCount += chunks.count
        for c in chunks { file.listedBytes += UInt64(c.length) }
        // Past what this side accepts, the file is given up before its holes or chunks cost anything.
        if file.path != nil, let why = tree.refusal(ofFileSize: file.listedBytes, largest: maxFileSize) {
            try giveUp(file, "its chunk list reached \(file.listedBytes) bytes: \(why)")
            return try acknowledge(file.header.op, [])
        }
        // A file answered already drops its list.
        try acknowledge(file.header.op, file.path == nil ? [] : try buildStreamed(file, chunks))
    }

    /// What of `chunks` (the next part of `file`'s list) the client must send.
    private func buildStreamed(_ file: PendingFile, _ chunks: [ChunkRef]) throws -> [UInt32] {
        let path = try file.placedPath()
        do {
            let list: [ChunkRef]
            if file.assembly == nil {
                var offset = file.chunks.last.map { $0.offset + UInt64($0.length) } ?? 0
                for c in chunks {
                    file.chunks.append(ChunkRef(id: c.id, offset: offset, length: c.length))
                    offset += UInt64(c.length)
                }
                guard file.asksEarly, chunks.contains(where: { !$0.id.isHole && !held.contains($0.id) }) else { return [] }
                file.assembly = try makingRoom { try FileAssembly(tree: tree, streaming: path, permissions: file.header.permissions, session: building) }
                noteOpen(file.header.op)
                list = file.chunks
                file.chunks = []
            } else {
                list = chunks
            }
            let assembly = file.assembly!
            let added = try makingRoom { try assembly.append(list, filling: held) }
            let wanted = assembly.missingIndices(in: added)
            if !wanted.isEmpty { file.asksClient = true }
            return wanted
        } catch let error where error is PathError || error is SystemError || error is AgentError || error is PlacementError {
            try giveUp(file, describeFailure(error, building: file.assembly))
            return []
        }
    }

    /// The answer to one list frame of a streamed file: exactly one `need`, so that the client can count them.
    private func acknowledge(_ op: UInt32, _ wanted: [UInt32]) throws {
        if wanted.count <= maxListItems {
            if !wanted.isEmpty { push.asked[op, default: 0] += wanted.count }
            try writer.send(.need(op: op, indices: wanted))
        } else {
            try requestMissing(op, wanted)  // a late start of a huge file: the client reads what it no longer holds
        }
    }

    /// The end of a streamed file's list. A file not built yet takes the usual way (unchanged, a conflict, a move,
    /// or built now); one being built is placed once its last chunks are in.
    func endStreamed(_ file: PendingFile, size: UInt64, digest: ChunkID, count: UInt32) throws {
        let op = file.header.op
        let listed = file.listedCount
        guard Int(count) == listed else {
            throw ProtocolError("\(displayPath(file.header.path)): the chunk list ended after \(listed) chunks, but its end says \(count)")
        }
        file.header.size = size
        file.header.digest = digest
        file.header.chunkCount = count
        file.listEnded = true
        guard file.path != nil else {
            push.pending[op] = nil
            return
        }
        guard let assembly = file.assembly else { return try startFile(file) }
        do {
            try assembly.end(size: size, digest: digest)
            if assembly.isComplete { try finish(file) }
        } catch let error where error is SystemError || error is PlacementError || error is AgentError {
            try giveUp(file, describeFailure(error, building: assembly))
        }
    }

    /// Answers a file failed. While a streamed file's list still comes, what follows of it is read and dropped.
    func giveUp(_ file: PendingFile, _ message: String) throws {
        let op = file.header.op
        file.assembly?.suspend()
        push.openAssemblies.removeAll { $0 == op }
        if file.asksClient { push.givenUp.insert(op) }
        if file.listEnded {
            push.pending[op] = nil
        } else {
            let dropping = PendingFile(header: file.header, path: nil)
            dropping.listedCount = file.listedCount
            dropping.listedBytes = file.listedBytes
            push.pending[op] = dropping
        }
        try reply(op, .failed, message, .absent)
    }

    /// A new file whose content the cache holds whole (the old half of a move, deleted earlier in this push) is
    /// linked out of the cache into place: no byte is copied or sent. Returns false when the cache cannot serve.
    func adoptCached(_ file: PendingFile) throws -> Bool {
        let path = try file.placedPath()
        let header = file.header
        // A cached file's chunks are in the store: a file whose first chunk is not (every file of a first push)
        // cannot be in the cache, and is not looked for.
        guard let first = file.chunks.first(where: { !$0.id.isHole }), held.contains(first.id) else { return false }
        let cachedPath = Self.cachePath(header.digest)
        let name = cachedPath.name
        guard let record = state.record(at: cachedPath), record.digest == header.digest,
              let cache = try tree.openDirectory(Self.cacheDirectory, create: false),
              let st = try Tree.lstat(at: cache, name: name, shown: cachedPath.description), st.kind == .regular,
              record.stat.sameContentIdentity(as: st),
              let parent = try tree.openParent(path, create: true)
        else { return false }
        // Linked and taken out of the cache while no other session places anything, so that no two paths get
        // the one inode.
        let linked = try building.placing { () throws -> Bool in
            let cached = try Tree.openFile(at: cache, name: name, flags: O_RDONLY, shown: cachedPath.description)
            guard let now = try? cached.stat(), now.sameContentIdentity(as: st) else { return false }
            try cached.setPermissions(header.permissions & 0o777)
            try cached.setModificationTime(header.mtimeNanos)
            // A link, not a rename, so that whatever appeared at the target meanwhile is never replaced (EEXIST).
            guard withCName(name, { from in withCName(path.name) { linkat(cache.raw, from, parent.raw, $0, 0) } }) == 0 else {
                return false
            }
            _ = withCName(name) { unlinkat(cache.raw, $0, 0) }
            return true
        }
        guard linked else { return false }
        dropRecord(cachedPath)
        if let placed = try tree.lstat(path) {
            var moved = FileRecord(path: path, stat: placed, digest: header.digest, chunks: record.chunks)
            moved.placedBy = clientID
            replaceRecord(moved)
        } else {
            held.willChange(path)
        }
        push.pending[header.op] = nil
        durability!.renamed(OpResult(op: header.op, status: .applied, message: "moved within the remote", current: .file(header.digest),
                                     keptAs: file.keptAs), directory: (path.parentBytes, parent))
        return true
    }

    func requestMissing(_ op: UInt32, _ assembly: FileAssembly) throws {
        if let file = push.pending[op] { file.asksClient = true }
        try requestMissing(op, assembly.missingIndices)
    }

    func requestMissing(_ op: UInt32, _ missing: [UInt32]) throws {
        if push.apply != nil { return try failApplied(op, missing: missing) }
        var start = 0
        while start < missing.count {
            let end = min(start + maxListItems, missing.count)
            push.asked[op, default: 0] += end - start
            try writer.send(.need(op: op, indices: Array(missing[start..<end])))
            start = end
        }
    }

    /// Keeps at most `maxOpenAssemblies` temporary files open; older ones are closed and reopened on demand.
    func noteOpen(_ op: UInt32) {
        push.openAssemblies.append(op)
        if push.openAssemblies.count > Self.maxOpenAssemblies {
            let old = push.openAssemblies.removeFirst()
            push.pending[old]?.assembly?.suspend()
        }
    }

    /// Notes that a chunk asked of the client for `op` came; false when none was asked (it came unasked).
    @discardableResult
    func arrived(_ op: UInt32) -> Bool {
        guard let count = push.asked[op] else { return false }
        push.asked[op] = count > 1 ? count - 1 : nil
        push.lastArrivalNanos = monotonicNanos()
        return true
    }

    /// Called before the reader waits: a push that waits only for chunks of failed files, while none came for the
    /// session's timeout (the client sends heartbeats, not them), ends with an error rather than wait for ever.
    func checkDraining() throws {
        guard push.onlyDraining, monotonicNanos() &- push.lastArrivalNanos > UInt64(timeoutSeconds * 1e9) else { return }
        let missing = push.asked.filter { push.pending[$0.key] == nil }.values.reduce(0, +)
        throw AgentError("\(missing) chunks asked for files that failed never came in \(Int(timeoutSeconds)) s; the push ends here")
    }

    /// True while chunks asked for by files given up or failed since are still on their way: the push is not
    /// over before they came (or the client gave those files up too), or they would arrive after its `done`.
    var drainingGivenUp: Bool { push.asked.keys.contains { push.pending[$0] == nil } }

    /// Chunk data that came over the main connection (read in place by `nextPushMessage`).
    func receiveChunk(_ frame: ChunkFrame) throws {
        let op = frame.op
        let wasAsked = arrived(op)
        let eager = push.eagerFrames[op]
        if let eager { push.eagerFrames[op] = eager > 1 ? eager - 1 : nil }
        guard let file = push.pending[op], let assembly = file.assembly else {
            // Sent unasked for a file already placed, unchanged or refused, or asked for by a file given up or
            // failed since.
            if eager != nil || wasAsked || push.givenUp.contains(op) { return }
            throw ProtocolError("chunk data for operation \(op), which is not waiting for data")
        }
        try receiveChunk(file, assembly, index: Int(frame.index), compressed: frame.compressed, rawLength: Int(frame.rawLength),
                         payload: frame.payload)
        if eager == 1, push.pending[op] != nil, !assembly.isComplete {
            // Everything announced has come and the file is still short: ask, as for any other file.
            try requestMissing(op, assembly)
        }
    }

    func receiveChunk(_ file: PendingFile, _ assembly: FileAssembly, index: Int, compressed: Bool, rawLength: Int,
                              payload: UnsafeRawBufferPointer) throws {
        do {
            try makingRoom {
                try chunkWriter.write(payload, compressed: compressed, rawLength: rawLength, index: index, into: assembly,
                                      shown: assembly.path.description)
            }
        } catch let error as SystemError where Self.isFull(error.errno) {
            // No room even after what gone sessions left was cleared: this file fails, saying how much it needs,
            // and what arrived of it goes, leaving its room to the rest of the push.
            push.givenUp.insert(file.header.op)
            let message = describeFailure(error, building: assembly)
            try giveUp(file, message)
            assembly.discard()
            return
        }
        if assembly.isComplete {
            do { try finish(file) } catch let error where error is SystemError || error is PlacementError || error is AgentError {
                push.pending[file.header.op] = nil
                try reply(file.header.op, .failed, "\(error)", .absent)
            }
        }
    }

    struct ConflictAtPlacement: Error { let current: FileStat? }

    /// A file has all its chunks: check and seal it here, and hand it to `durability`; `commitSynced` renames it
    /// once it is durable.
    func finish(_ file: PendingFile) throws {
        let header = file.header
        guard let assembly = file.assembly, let durability else { return }
        push.pending[header.op] = nil
        push.openAssemblies.removeAll { $0 == header.op }
        try durability.add(sealing: assembly, op: header.op, permissions: header.permissions, mtimeNanos: header.mtimeNanos)
        push.sealed[header.op] = file
        if durability.outstanding >= Self.maxSyncs { try handle(durability.wait()) }
    }
}
