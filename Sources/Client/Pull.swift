import Chunking
import Foundation
import LocalState
import Placement
import ProjectScan
import SyncConfig
import SyncRules
import SyncSystem
import Transport
import Wire

/// Runs a pull of the remote-owned paths into the local project.
public final class PullSession {
    private let project: Project

    private let link: AgentLink?
    /// `resolve --keep remote`: only these paths (any path of the project) are brought here, each forced.
    private let resolving: [RelativePath]?
    /// `pull --force`: a pulled path changed here and on the remote gets the remote version, and the local one
    /// is kept beside it as a conflict copy.
    public var force = false
    /// `pull_from: all`: this host's outputs go to `<pull path>/<hostFolder>/` here, not to the pull path itself.
    public var hostFolder: String?
    private let stamp = conflictStamp()

    /// With `link`, the pull runs over that persistent connection (the daemon's); without, it makes its own.
    /// With `resolving`, the remote versions of those paths replace the local ones, which are kept beside them.
    public init(project: Project, link: AgentLink? = nil, resolving: [RelativePath]? = nil) {
        self.project = project
        self.link = link
        self.resolving = resolving
    }

    /// True when `path` may be offered by the agent in this pull.
    private func isWanted(_ path: RelativePath) -> Bool {
        if let resolving { return resolving.contains { path.isWithin($0) } }
        return project.isPullPath(path)
    }

    /// Where a remote path lands here: itself, or with a host folder, the same path below the pull path's folder
    /// for this host (`output/x` to `output/gpu-2/x`).
    private func localPath(_ remote: RelativePath) throws -> RelativePath {
        guard let hostFolder, let root = project.pullPaths.first(where: { remote.isWithin($0) }) else { return remote }
        return try RelativePath(bytes: root.bytes + [UInt8(ascii: "/")] + Array(hostFolder.utf8) + remote.bytes.dropFirst(root.bytes.count))
    }

    /// The fetches a pull's sender thread sends after its first ones: handed over once the files are built from
    /// local chunks, then `fetchEnd` follows.
    private final class LaterFetches: @unchecked Sendable {  // `lock` guards both fields
        private let lock = Mutex()
        private let ready = Condition()
        private var batch: [(UInt32, [UInt32])] = []
        private var finished = false

        package func finish(_ fetches: [(UInt32, [UInt32])]) {
            lock.lock()
            batch = fetches
            finished = true
            ready.broadcast()
            lock.unlock()
        }

        func wait() -> [(UInt32, [UInt32])] {
            lock.lock()
            defer { lock.unlock() }
            while !finished { ready.wait(lock) }
            return batch
        }
    }

    private struct Offer {
        var entry: RemoteEntry
        var path: RelativePath
        var chunks: [ChunkRef] = []
        /// Chunks listed so far, and their bytes.
        var listed = 0
        var listedBytes: UInt64 = 0
        /// Why the file is not taken (too large to be real or to fit here); its list is read and dropped.
        var refused: String?

        /// Adds a part of the chunk list; the list may not run past the count or the size the entry declared.
        mutating func append(_ part: [ChunkRef]) throws {
            guard listed + part.count <= Int(entry.chunkCount) else {
                throw ProtocolError("\(path): the agent listed more than the \(entry.chunkCount) chunks it declared")
            }
            listed += part.count
            let before = listedBytes
            for c in part { listedBytes += UInt64(c.length) }
            guard listedBytes <= entry.size else {
                throw ProtocolError("\(path): the agent listed chunks (and holes) beyond the \(entry.size) bytes it declared")
            }
            guard refused == nil else { return }
            var offset = before
            for c in part {
                chunks.append(ChunkRef(id: c.id, offset: offset, length: c.length))
                offset += UInt64(c.length)
            }
        }
    }

    public func run() throws -> SyncStats {
        let started = monotonicNanos()
        var stats = SyncStats(direction: "pull")
        var greeting = Hello(role: .pull, project: project.config.name, remoteRoot: project.remoteRootForAgent,
                             pullPaths: project.pullPaths.map { String(decoding: $0.bytes, as: UTF8.self) }, chunking: project.chunking,
                             conflictStamp: stamp, roots: resolving?.map(\.bytes) ?? [])
        // The remote this machine synced with before: one that is gone since was wiped (and is made again); with
        // none, a remote without the project was never pushed to, and the agent makes nothing there.
        greeting.expectInstance = ((try? project.openState().remoteInstance()) ?? nil) ?? ""
        project.limit(&greeting)
        let hello = greeting
        let project = self.project
        // Connecting starts first, while the local state opens and the pull paths are looked at.
        let connecting = PendingConnection(project: project, link: link) { roundTrip in
            var h = hello
            h.compress = project.compresses(roundTrip: roundTrip)
            h.compressAdaptively = project.config.compress == .auto
            return h
        }
        let state: LocalDatabase
        var pulled: [RelativePath: SyncedEntry]
        var pushed: [RelativePath: SyncedEntry]
        let scan: LocalScanner.Result
        do {
            state = try project.openState()
            pulled = try state.load(.pulled)
            // What this pull brings in is recorded where its owner's side is: the pulled record for pull paths,
            // the pushed one for the local-owned paths a resolve brings from the remote.
            pushed = try resolving.map { try state.load(.pushed, paths: $0, subtrees: $0) } ?? [:]
            // With a host folder too, every pull path is looked at: what other hosts' pulls brought is where this
            // one finds the chunks it need not fetch (the same checkpoint from every rank).
            scan = try LocalScanner(project: project, state: state).run(roots: resolving ?? project.pullPaths)
        } catch {
            connecting.cancel()
            throw error
        }
        let buildSession: BuildSession
        do { buildSession = try project.openBuildSession() } catch {
            connecting.cancel()
            throw error
        }
        buildSession.findDeadSessions()
        var local: [RelativePath: LocalEntry] = [:]
        for e in scan.entries { local[e.path] = e }
        let held = HeldChunks(tree: project.tree)
        for file in scan.cache.values { held.add(path: file.path, chunks: file.chunks) }

        Trace.mark("pull: local scan of \(scan.entries.count) entries")
        let link = try connecting.wait()
        Trace.mark("pull: connected")
        let reader = link.reader
        let writer = link.writer
        let bytesAtStart = (written: writer.bytesWritten, read: reader.bytesRead)
        let progress = ProgressReporter(label: "pull", options: project.options)
        var changes: [(RelativePath, SyncedEntry?)] = []
        var pushedChanges: [(RelativePath, SyncedEntry?)] = []
        var cacheUpdates: [CachedFile] = []
        var conflicts: [ConflictRecord] = []
        var cleared: [RelativePath] = []
        var complete = false
        /// Records that a path now holds what the remote holds.
        func agreed(_ path: RelativePath, _ entry: SyncedEntry?) {
            if project.isPullPath(path) { changes.append((path, entry)) } else { pushedChanges.append((path, entry)) }
            cleared.append(path)
        }
        func recorded(_ path: RelativePath) -> SyncedEntry? { project.isPullPath(path) ? pulled[path] : pushed[path] }
        // Files are made durable in batches (one syncfs for many small ones, an fsync of its own on a worker for a
        // large one) while the next ones come in; each is renamed once its data is durable, and the renames are
        // durable before the state records them.
        let durability = try DurableBatches<RelativePath>(fileSystem: project.tree.root)
        defer { durability.shutdown() }
        var sealed: [UInt32: (FileAssembly, Offer, FileStat?)] = [:]
        /// Hands a complete file to `durability`; it is placed once its data is durable (see `settle`).
        func seal(_ op: UInt32, _ assembly: FileAssembly, _ offer: Offer, expected: FileStat?) throws {
            let alone = durability.syncsAlone(size: assembly.size, device: assembly.device)
            let fd = try assembly.seal(permissions: offer.entry.permissions, mtimeNanos: offer.entry.mtimeNanos, startWriteback: alone)
            try durability.add(op: op, fd: fd, size: assembly.size, device: assembly.device)
            // Renamed by name once durable; `durability` keeps a descriptor of its own where it needs one.
            assembly.suspend()
            sealed[op] = (assembly, offer, expected)
            // Group commit: while a sync runs, the files sealed meanwhile wait for the next one.
            if durability.outstanding == 0 { durability.closeBatch() }
        }
        /// Renames the files whose data became durable, unless the local file changed since the decision.
        func settle(_ progress: DurableBatches<RelativePath>.Progress) throws {
            for (op, error) in progress.durable {
                guard let (assembly, offer, expected) = sealed.removeValue(forKey: op) else { continue }
                guard error == 0 else {
                    assembly.discard()
                    stats.errors.append("\(offer.path): \(SystemError(call: "fsync", path: offer.path.description, errno: error))")
                    continue
                }
                if let (cached, parent) = try buildSession.placing({ try commit(assembly, offer, expected: expected, stats: &stats) }) {
                    cacheUpdates.append(cached)
                    agreed(offer.path, Self.synced(offer.entry))
                    durability.renamed(offer.path, directory: (offer.path.parentBytes, parent))
                }
            }
        }
        do {
            if try state.adoptRemoteInstance(try link.readWelcome()) {
                // Nothing local may be deleted or called a conflict on the word of a remote that is gone.
                pulled = [:]
                pushed = [:]
                stats.warnings.append(replacedRemoteWarning(project))
            }

            // 1. The listing.
            var offers: [UInt32: Offer] = [:]
            var order: [UInt32] = []
            var skipped: Set<RelativePath> = []
            listing: while true {
                guard let message = try reader.next() else { throw SyncError("the agent closed the connection during the listing") }
                switch message {
                case .remoteEntry(let e):
                    let path: RelativePath
                    do { path = try RelativePath(bytes: e.path) } catch { throw ProtocolError("the agent offered a bad path: \(error)") }
                    guard isWanted(path) else { throw ProtocolError("the agent offered \(path), which this pull did not ask for") }
                    guard offers[e.op] == nil else { throw ProtocolError("the agent offered entry \(e.op) twice") }
                    var offer = Offer(entry: e, path: try localPath(path))
                    if case .file = e.state, let why = project.tree.refusal(ofFileSize: e.size, largest: project.config.maxFileSize) {
                        offer.refused = why
                        stats.fail(offer.path, why)
                    }
                    offers[e.op] = offer
                    order.append(e.op)
                case .chunkList(let op, let chunks):
                    // Appended in place: a copy of the list per frame made a long one cost quadratic time.
                    guard offers[op] != nil else { throw ProtocolError("chunk list for unknown entry \(op)") }
                    try offers[op]!.append(chunks)
                case .skipped(let path, let reason, let kind):
                    if let p = try? RelativePath(bytes: path) { skipped.insert(p) }
                    stats.skipped.append("\(displayPath(path)): \(displayText(reason))")
                    if kind == .beingWritten { stats.skippedBeingWritten += 1 }
                case .listEnd:
                    break listing
                case .error(let m, let reason):
                    throw AgentSaid(message: displayText(m), reason: reason)
                default:
                    throw ProtocolError("unexpected frame type 0x\(String(message.encode().type, radix: 16)) during the listing")
                }
            }
            stats.filesScanned = order.count
            Trace.mark("pull: listing of \(order.count) entries")

            // 2. Decide. What the local chunks cannot give is asked for first; the rest is built from them while
            // it comes (see 3).
            var assemblies: [UInt32: (FileAssembly, Offer, FileStat?)] = [:]
            var building: [(op: UInt32, assembly: FileAssembly, offer: Offer, expected: FileStat?)] = []
            var fetches: [(UInt32, [UInt32])] = []
            for op in order {
                guard let offer = offers[op], offer.refused == nil else { continue }
                let key = offer.path
                var now = local[key]
                var current = now?.state ?? .absent
                let last = recorded(key)?.pathState ?? .absent
                let remote = offer.entry.state
                let remoteSynced = Self.synced(offer.entry)
                switch decidePull(local: current, remote: remote, recorded: recorded(key)?.pathState, forced: force || resolving != nil,
                                  resolving: resolving != nil) {
                case .same:
                    if recorded(key) != remoteSynced || resolving != nil { agreed(key, remoteSynced) } else { cleared.append(key) }
                    continue
                case .staysDeleted, .nothing:
                    continue
                case .conflict:
                    let localSide = ConflictSide(now), remoteSide = ConflictSide(remote, size: offer.entry.size, mtimeNanos: offer.entry.mtimeNanos)
                    let recordedSide = ConflictSide(last, synced: recorded(key))
                    stats.conflict(.found(.pull, at: key, nowNanos: wallClockNanos(), local: localSide, remote: remoteSide, recorded: recordedSide,
                                          message: "changed here since the last pull: here \(localSide.shown), the remote holds "
                                              + "\(remoteSide.shown), the last pull recorded \(recordedSide.shown)"), into: &conflicts)
                    continue
                case .keepAsideThenTake:
                    // The local version loses: kept beside, under a conflict name.
                    let copy = try project.tree.keepAside(key, stamp: stamp)
                    stats.kept.append(KeptCopy(path: key, copy: copy, side: "local"))
                    (now, current) = (nil, .absent)
                case .take:
                    break
                }
                do {
                    switch remote {
                    case .directory:
                        if current != .absent { throw SyncError("\(key): a \(current) is in the way of a remote directory") }
                        _ = try project.tree.openDirectory(offer.path, create: true)
                        agreed(key, remoteSynced)
                    case .symlink(let target):
                        if let why = symlinkEscapes(linkPath: key, target: target) {
                            throw SyncError("\(key): remote symlink to \(displayPath(target)): its target \(why); not pulled")
                        }
                        try placeSymlink(offer.path, target: target)
                        agreed(key, remoteSynced)
                        stats.filesChanged += 1
                        stats.itemized.append("cL+++++++++ \(offer.path)")
                    case .file(let digest):
                        guard offer.chunks.count == Int(offer.entry.chunkCount) else { throw ProtocolError("\(key): chunk list incomplete") }
                        let assembly = try FileAssembly(tree: project.tree, path: offer.path, digest: digest, size: offer.entry.size,
                                                        chunkList: offer.chunks, session: buildSession)
                        stats.filesChanged += 1
                        stats.itemized.append("\(current == .absent ? ">f+++++++++" : ">f.st......") \(offer.path)")
                        stats.bytesLogical += offer.entry.size
                        stats.chunksTotal += offer.chunks.count
                        building.append((op, assembly, offer, now?.stat))
                        // Closed until its chunks come: a pull of thousands of files holds no descriptor for each.
                        assembly.suspend()
                        let lacking = assembly.missingIndices.filter { !held.contains(assembly.chunks[Int($0)].id) }
                        if !lacking.isEmpty { fetches.append((op, lacking)) }
                    case .absent:
                        continue
                    }
                } catch let error as ProtocolError {
                    throw error
                } catch {
                    stats.errors.append("\(error)")
                }
            }

            Trace.mark("pull: decided; \(fetches.count) files to fetch")
            // 3. Fetch what is missing: requests go out on their own thread, first those decided above, then any
            // a local chunk turns out not to give (its file changed since it was recorded), while this thread
            // builds files from local chunks and then takes in the chunks that come.
            let chunksOf = Dictionary(building.map { ($0.op, $0.assembly.chunks) }, uniquingKeysWith: { a, _ in a })
            let expectedBytes = fetches.reduce(UInt64(0)) { sum, f in
                sum + f.1.reduce(UInt64(0)) { $0 + UInt64(chunksOf[f.0]![Int($1)].length) }
            }
            // Much to fetch: the agent is asked for extra connections to send over (see `ExtraStreams`), and
            // every connection is read on a thread of its own into one queue.
            let extraStreams = expectedBytes >= PushPipeline.streamsThreshold ? project.streamCount - 1 : 0
            let merger: FrameMerger? = extraStreams > 0 ? FrameMerger() : nil
            if let merger {
                merger.read(reader, source: 0) { message in
                    if case .done = message { return true }
                    if case .error = message { return true }
                    return false
                }
            }
            let requests = fetches
            let later = LaterFetches()
            let sender = Thread {
                func send(_ batch: [(UInt32, [UInt32])]) throws {
                    for (op, indices) in batch {
                        var start = 0
                        while start < indices.count {
                            let end = min(start + maxListItems, indices.count)
                            try writer.send(.fetch(op: op, indices: Array(indices[start..<end])))
                            start = end
                        }
                    }
                }
                do {
                    if extraStreams > 0 {
                        try writer.send(.streamsOpen(count: UInt8(extraStreams)))
                        try writer.flush()
                    }
                    try send(requests)
                    try writer.flush()
                    try send(later.wait())
                    try writer.send(.fetchEnd)
                    try writer.flush()
                } catch {
                    writer.closeOutput()
                }
            }
            sender.start()
            var more: [(UInt32, [UInt32])] = []
            do {
                defer { later.finish(more) }
                let asked = Dictionary(fetches.map { f in (f.0, Set(f.1.map { chunksOf[f.0]![Int($0)].id })) }, uniquingKeysWith: { a, _ in a })
                for (op, assembly, offer, expected) in building {
                    do {
                        try assembly.fill(from: held)
                        if assembly.isComplete {
                            try seal(op, assembly, offer, expected: expected)
                            try settle(durability.take())
                        } else {
                            assembly.suspend()
                            assemblies[op] = (assembly, offer, expected)
                            let lacking = assembly.missingIndices.filter { !(asked[op]?.contains(assembly.chunks[Int($0)].id) ?? false) }
                            if !lacking.isEmpty { more.append((op, lacking)) }
                        }
                    } catch let error as ProtocolError {
                        throw error
                    } catch {
                        stats.errors.append("\(error)")
                    }
                }
            }
            Trace.mark("pull: built from local chunks")
            let decompressor = ChunkDecompressor()
            let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: ChunkParameters.largestMaxSize, alignment: 16)
            defer { scratch.deallocate() }
            var received: UInt64 = 0
            var open: UInt32?
            var streams: ExtraStreams?
            defer { streams?.abort() }
            var agentDone = false
            var streamsEnded = 0
            /// With extra streams, `done` can come ahead of data still on its way over them: the pull is over once
            /// every chunk asked for is in, or every stream has ended.
            func over() -> Bool {
                guard agentDone else { return false }
                guard let streams else { return true }
                let (joined, connecting) = streams.state
                return assemblies.isEmpty || (!connecting && streamsEnded >= joined)
            }
            /// Writes chunk `index` of file `op` where it goes (its payload as it came: compressed or not).
            func receive(op: UInt32, index: UInt32, compressed: Bool, rawLength: UInt32, payload: UnsafeRawBufferPointer) throws {
                guard let (assembly, offer, expected) = assemblies[op] else { return }
                if open != op, let previous = open { assemblies[previous]?.0.suspend() }
                open = op
                if compressed {
                    try decompressor.decompress(payload, rawLength: Int(rawLength), into: scratch)
                    try assembly.write(index: Int(index), bytes: UnsafeRawBufferPointer(rebasing: scratch[0..<Int(rawLength)]))
                } else {
                    try assembly.write(index: Int(index), bytes: payload)
                }
                stats.chunksSent += 1
                received += UInt64(rawLength)
                progress.update(done: received, total: expectedBytes)
                if assembly.isComplete {
                    assemblies[op] = nil
                    try seal(op, assembly, offer, expected: expected)
                }
                if !sealed.isEmpty { try settle(durability.take()) }
            }
            /// The next frame of the pull other than chunk data, from this connection or a joined one; nil once it
            /// is over. Chunk data is written on the way: over this connection alone, straight from the reader's
            /// buffer.
            func nextFrame() throws -> Message? {
                guard let merger else {
                    let message = try reader.next { try receive(op: $0.op, index: $0.index, compressed: $0.compressed, rawLength: $0.rawLength, payload: $0.payload) }
                    guard let message else { throw SyncError("the agent closed the connection during the pull") }
                    return message
                }
                while !over() {
                    switch merger.next() {
                    case .frame(.chunkData(let op, let index, let compressed, let rawLength, let payload), _):
                        try payload.withUnsafeBytes { try receive(op: op, index: index, compressed: compressed, rawLength: rawLength, payload: $0) }
                    case .frame(let message, _): return message
                    case .ended(source: 0): throw SyncError("the agent closed the connection during the pull")
                    case .ended: streamsEnded += 1
                    case .failed(let error, source: 0): throw error
                    case .failed(let error, _): throw SyncError("an extra stream of this pull failed: \(error)")
                    case .wake: continue
                    }
                }
                return nil
            }
            receive: while true {
                guard let message = try nextFrame() else { break receive }
                switch message {
                case .abort(let op, let reason):
                    if let (assembly, offer, _) = assemblies.removeValue(forKey: op) {
                        assembly.suspend()
                        stats.skipped.append("\(offer.path): \(reason)")
                        skipped.insert(offer.path)
                    }
                case .done:
                    agentDone = true
                    if merger == nil { break receive }
                case .streamsReady(let address, let token) where merger != nil && streams == nil:
                    if !address.isEmpty, let merger {
                        streams = ExtraStreams(project: project, address: address, token: token, count: extraStreams,
                                               joined: { connection, n in
                                                   merger.read(FrameReader(connection.stream), source: n, handshake: true)
                                               }, settled: { merger.wake() })
                    }
                case .error(let m, let reason):
                    throw AgentSaid(message: displayText(m), reason: reason)
                default:
                    throw ProtocolError("unexpected frame type 0x\(String(message.encode().type, radix: 16)) during the pull")
                }
            }
            for (_, (assembly, offer, _)) in assemblies {
                assembly.suspend()
                stats.fail(offer.path, "the agent did not send every chunk")
            }
            if let extra = streams {
                stats.streams = 1 + extra.state.joined
                for why in extra.finish() { stats.warnings.append("an extra stream could not be opened, so the pull used fewer: \(why)") }
                streams = nil
            }

            Trace.mark("pull: every chunk in")
            // The last files: durable, renamed, and the renames durable.
            durability.closeBatch()
            while durability.outstanding > 0 { try settle(durability.wait()) }
            _ = durability.flush()
            Trace.mark("pull: received and placed")
            // 4. Remote deletions, children first.
            let offered = Set(offers.values.map(\.path))
            if let resolving {
                // Keeping the remote's version of a path it no longer has: the local one goes aside.
                for key in resolving where !offered.contains(key) && !skipped.contains(key) {
                    if local[key] != nil {
                        let copy = try project.tree.keepAside(key, stamp: stamp)
                        stats.kept.append(KeptCopy(path: key, copy: copy, side: "local"))
                        stats.filesDeleted += 1
                    }
                    agreed(key, nil)
                }
            } else {
                for key in pulled.keys.sorted(by: >) where !offered.contains(key) && !skipped.contains(key) {
                    guard project.isPullPath(key) else { continue }
                    let last = pulled[key]!.pathState
                    let current = local[key]?.state ?? .absent
                    switch decidePullOfDeletion(local: current, recorded: last, forced: force) {
                    case .take where current == .absent:
                        changes.append((key, nil))
                        continue
                    case .take, .same, .staysDeleted:
                        break
                    case .nothing:
                        continue
                    case .conflict:
                        let localSide = ConflictSide(local[key]), recordedSide = ConflictSide(last, synced: pulled[key])
                        stats.conflict(.found(.pull, at: key, nowNanos: wallClockNanos(), local: localSide, remote: .absent, recorded: recordedSide,
                                              message: "deleted on the remote but changed here since the last pull: here \(localSide.shown), "
                                                  + "the last pull recorded \(recordedSide.shown)"), into: &conflicts)
                        continue
                    case .keepAsideThenTake:
                        let copy = try project.tree.keepAside(key, stamp: stamp)
                        stats.kept.append(KeptCopy(path: key, copy: copy, side: "local"))
                        stats.filesDeleted += 1
                        agreed(key, nil)
                        continue
                    }
                    guard let parent = try project.tree.openParent(key, create: false) else { continue }
                    if current == .directory {
                        if withCName(key.name, { unlinkat(parent.raw, $0, AT_REMOVEDIR) }) != 0 { continue }
                    } else {
                        try Tree.remove(at: parent, name: key.name, isDirectory: false, shown: key.description)
                    }
                    stats.filesDeleted += 1
                    agreed(key, nil)
                }
            }
            complete = true
            if resolving != nil {
                // A path left on the remote is not resolved.
                stats.errors += stats.skipped.map { "not resolved: \($0)" }
                stats.skipped = []
            }
            stats.bytesSent = writer.bytesWritten - bytesAtStart.written
            stats.bytesReceived = reader.bytesRead - bytesAtStart.read + (merger?.extraBytesRead ?? 0)
        } catch {
            progress.finish()
            // What was renamed is recorded only once the renames are durable.
            _ = durability.flush()
            try? state.update(.pulled, changes)
            try? state.update(.pushed, pushedChanges)
            try? state.saveFiles(cacheUpdates)
            let next = (error as? AgentSaid)?.atStart == true ? "mend that, then pull again" : "run the pull again to resume"
            throw SyncError("pull from \(project.config.remote) failed: \(link.fail(error)); \(next)", cause: error)
        }
        progress.finish()
        link.endSession()
        // Every file is placed or given up: this pull's temporary files, and those of pulls that are gone, are stale.
        buildSession.sweep(in: project.tree)
        stats.remoteDirectory = link.remoteDirectory
        if let made = link.takeCreatedRoot() { stats.warnings.append(made) }
        try state.update(.pulled, changes)
        try state.update(.pushed, pushedChanges)
        try state.saveFiles(cacheUpdates)
        // A whole pull looked at every remote-owned path: a pull conflict it did not find again is gone.
        try state.noteConflicts(conflicts, cleared: cleared, allOf: complete && resolving == nil ? .pull : nil)
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    private static func synced(_ e: RemoteEntry) -> SyncedEntry {
        switch e.state {
        case .directory: return SyncedEntry(kind: .directory, digest: nil, target: nil, permissions: e.permissions, mtimeNanos: 0)
        case .symlink(let t): return SyncedEntry(kind: .symlink, digest: nil, target: t, permissions: 0o777, mtimeNanos: 0)
        case .file(let d): return SyncedEntry(kind: .file, digest: d, target: nil, permissions: e.permissions, mtimeNanos: e.mtimeNanos, size: e.size)
        case .absent: return SyncedEntry(kind: .file, digest: nil, target: nil, permissions: 0, mtimeNanos: 0)
        }
    }

    /// What is at a path here, for a conflict report.
    private struct LocalConflict: Error {}

    /// Renames a sealed, durable file into place unless the local file changed since the decision; returns its new
    /// cache entry and the directory the rename changed, or nil on conflict.
    private func commit(_ assembly: FileAssembly, _ offer: Offer, expected: FileStat?, stats: inout SyncStats) throws -> (CachedFile, FileDescriptor)? {
        let parent: FileDescriptor?
        do {
            parent = try assembly.commit(expectingNothing: expected == nil) { now in
                let same = (now == nil && expected == nil) || (now != nil && expected != nil && now!.sameContentIdentity(as: expected!))
                if !same { throw LocalConflict() }
            }
        } catch is LocalConflict {
            assembly.discard()
            stats.conflict(offer.path, "changed here during the pull; the local version is kept, and the next pull looks again")
            return nil
        }
        guard let parent, let st = try project.tree.lstat(offer.path) else { return nil }
        return (CachedFile(path: offer.path, stat: st, digest: assembly.digest, chunks: assembly.chunks, cachedAtNanos: wallClockNanos()), parent)
    }

    private func placeSymlink(_ path: RelativePath, target: [UInt8]) throws {
        guard let parent = try project.tree.openParent(path, create: true) else { return }
        try Tree.placeSymlink(at: parent, name: path.name, target: target, shown: path.description)
    }
}
