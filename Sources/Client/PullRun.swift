import Chunking
import Foundation
import LocalState
import Placement
import ProjectScan
import SyncRules
import SyncSystem
import Transfer
import Transport
import Wire

/// One pull, from the listing to the record. `PullSession.run` calls the stages in order; each leaves what the
/// next one needs in the properties of its part below, and the record part collects what the pull changed.
final class PullRun {
    let session: PullSession
    let project: Project
    let link: AgentLink
    let state: LocalDatabase
    let buildSession: BuildSession
    /// Files are made durable in batches (one syncfs for many small ones, an fsync of its own on a worker for a
    /// large one) while the next ones come in; each is renamed once its data is durable, and the renames are
    /// durable before the state records them.
    let durability: DurableBatches<RelativePath>
    let progress: ProgressReporter
    private let bytesAtStart: (written: UInt64, read: UInt64)
    var stats = SyncStats(direction: "pull")
    private var forced: Bool { session.force || session.resolving != nil }

    // What this side knew before the pull.
    private var pulled: [RelativePath: SyncedEntry]
    private var pushed: [RelativePath: SyncedEntry]
    private let local: [RelativePath: LocalEntry]
    /// The chunks local files hold: what a file is built from before anything is fetched.
    private let held: HeldChunks

    // The record: what the pull changed, kept as it goes (`record`).
    private var changes: [(RelativePath, SyncedEntry?)] = []
    private var pushedChanges: [(RelativePath, SyncedEntry?)] = []
    private var cacheUpdates: [CachedFile] = []
    private var conflicts: [ConflictRecord] = []
    private var cleared: [RelativePath] = []
    private var complete = false

    // The listing.
    private var offers: [UInt32: Offer] = [:]
    private var order: [UInt32] = []
    private var skipped: Set<RelativePath> = []

    // The plan: files to build, and the chunks to fetch for them.
    private var building: [(op: UInt32, assembly: FileAssembly, offer: Offer, expected: FileStat?)] = []
    private var fetches: [(UInt32, [UInt32])] = []
    private var expectedBytes: UInt64 = 0

    // Receiving: files waiting for chunks, and those sealed and waiting to be durable.
    private var assemblies: [UInt32: (FileAssembly, Offer, FileStat?)] = [:]
    private var sealed: [UInt32: (FileAssembly, Offer, FileStat?)] = [:]
    private var merger: FrameInbox?
    private var extraStreams = 0

    init(session: PullSession, link: AgentLink, local side: PullSession.LocalSide) throws {
        self.session = session
        project = session.project
        self.link = link
        state = side.state
        buildSession = side.buildSession
        pulled = side.pulled
        pushed = side.pushed
        var local: [RelativePath: LocalEntry] = [:]
        for e in side.scan.entries { local[e.path] = e }
        self.local = local
        held = HeldChunks(tree: project.tree)
        for file in side.scan.cache.values { held.add(path: file.path, chunks: file.chunks) }
        durability = try DurableBatches<RelativePath>(fileSystem: project.tree.root)
        progress = ProgressReporter(label: "pull", options: project.options)
        bytesAtStart = (link.writer.bytesWritten, link.reader.bytesRead)
    }

    /// Takes the agent's welcome: a remote that was wiped or replaced since the last sync voids the records.
    func adoptWelcome() throws {
        if try state.adoptRemoteInstance(try link.readWelcome()) {
            // Nothing local may be deleted or called a conflict on the word of a remote that is gone.
            pulled = [:]
            pushed = [:]
            stats.warnings.append(replacedRemoteWarning(project))
        }
    }

    // MARK: the record

    /// Records that a path now holds what the remote holds.
    private func agreed(_ path: RelativePath, _ entry: SyncedEntry?) {
        if project.isPullPath(path) { changes.append((path, entry)) } else { pushedChanges.append((path, entry)) }
        cleared.append(path)
    }

    /// A path changed here since the last pull that the remote changed (or deleted) too: the local version stays.
    private func noteConflict(_ path: RelativePath, local: ConflictSide, remote: ConflictSide, recorded: ConflictSide) {
        let there = remote.kind == .absent ? "deleted on the remote but changed here since the last pull: here \(local.shown)"
                                           : "changed here since the last pull: here \(local.shown), the remote holds \(remote.shown)"
        stats.conflict(.found(.pull, at: path, nowNanos: wallClockNanos(), local: local, remote: remote, recorded: recorded,
                              message: there + ", the last pull recorded \(recorded.shown)"), into: &conflicts)
    }

    /// The local version loses (a forced pull or a resolve): kept beside, under a conflict name.
    private func keepLocalAside(_ path: RelativePath) throws {
        let copy = try project.tree.keepAside(path, stamp: session.stamp)
        stats.kept.append(KeptCopy(path: path, copy: copy, side: "local"))
    }

    /// What the last sync recorded at `path`, on its owner's side.
    private func recorded(_ path: RelativePath) -> SyncedEntry? { project.isPullPath(path) ? pulled[path] : pushed[path] }

    /// After a failure: what was placed (its renames made durable first) stays recorded, so the next pull resumes.
    func recordWhatIsPlaced() {
        _ = durability.flush()
        try? state.update(.pulled, changes)
        try? state.update(.pushed, pushedChanges)
        try? state.saveFiles(cacheUpdates)
    }

    /// The end of a pull: everything it changed recorded, and its conflicts noted. A whole pull looked at every
    /// remote-owned path: a pull conflict it did not find again is gone.
    func record() throws -> SyncStats {
        stats.remoteDirectory = link.remoteDirectory
        if let made = link.takeCreatedRoot() { stats.warnings.append(made) }
        try state.update(.pulled, changes)
        try state.update(.pushed, pushedChanges)
        try state.saveFiles(cacheUpdates)
        try state.noteConflicts(conflicts, cleared: cleared, allOf: complete && session.resolving == nil ? .pull : nil)
        return stats
    }

    func countBytes() {
        complete = true
        if session.resolving != nil {
            // A path left on the remote is not resolved.
            stats.errors += stats.skipped.map { "not resolved: \($0)" }
            stats.skipped = []
        }
        stats.bytesSent = link.writer.bytesWritten - bytesAtStart.written
        stats.bytesReceived = link.reader.bytesRead - bytesAtStart.read + (merger?.extraBytesRead ?? 0)
    }

    /// An entry the agent offered, with its chunk list as it comes.
    struct Offer {
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

    // MARK: 1. the listing

    /// Reads the agent's listing: an entry per remote path (with its chunk list, which may come in parts), the
    /// paths it skipped and why, then `listEnd`.
    func list() throws {
        while true {
            guard let message = try link.reader.next() else { throw SyncError("the agent closed the connection during the listing") }
            switch message {
            case .remoteEntry(let e):
                try offer(e)
            case .chunkList(let op, let chunks):
                // Appended in place: a copy of the list per frame made a long one cost quadratic time.
                guard offers[op] != nil else { throw ProtocolError("chunk list for unknown entry \(op)") }
                try offers[op]!.append(chunks)
            case .skipped(let path, let reason, let kind):
                if let p = try? RelativePath(bytes: path) { skipped.insert(p) }
                stats.skipped.append("\(displayPath(path)): \(displayText(reason))")
                if kind == .beingWritten { stats.skippedBeingWritten += 1 }
            case .listEnd:
                stats.filesScanned = order.count
                Trace.mark("pull: listing of \(order.count) entries")
                return
            case .error(let m, let reason):
                throw AgentSaid(message: displayText(m), reason: reason)
            default:
                throw ProtocolError("unexpected frame type 0x\(String(message.encode().type, radix: 16)) during the listing")
            }
        }
    }

    private func offer(_ e: RemoteEntry) throws {
        let path: RelativePath
        do { path = try RelativePath(bytes: e.path) } catch { throw ProtocolError("the agent offered a bad path: \(error)") }
        guard session.isWanted(path) else { throw ProtocolError("the agent offered \(path), which this pull did not ask for") }
        guard offers[e.op] == nil else { throw ProtocolError("the agent offered entry \(e.op) twice") }
        var offer = Offer(entry: e, path: try session.localPath(path))
        if case .file = e.state, let why = project.tree.refusal(ofFileSize: e.size, largest: project.config.maxFileSize) {
            offer.refused = why
            stats.fail(offer.path, why)
        }
        offers[e.op] = offer
        order.append(e.op)
    }

    // MARK: 2. the plan

    /// Decides each offered entry (`decidePull`) and acts on what needs no data: directories, symlinks, the
    /// losers of forced conflicts kept aside. Files to take get an assembly, and the chunks no local file holds
    /// are planned to be fetched first.
    func plan() throws {
        for op in order {
            guard let offer = offers[op], offer.refused == nil else { continue }
            do {
                try take(op, offer)
            } catch let error as ProtocolError {
                throw error
            } catch {
                stats.errors.append("\(error)")
            }
        }
        let chunksOf = Dictionary(building.map { ($0.op, $0.assembly.chunks) }, uniquingKeysWith: { a, _ in a })
        expectedBytes = fetches.reduce(UInt64(0)) { sum, f in sum + f.1.reduce(UInt64(0)) { $0 + UInt64(chunksOf[f.0]![Int($1)].length) } }
        Trace.mark("pull: decided; \(fetches.count) files to fetch")
    }

    private func take(_ op: UInt32, _ offer: Offer) throws {
        let key = offer.path
        var now = local[key]
        var current = now?.state ?? .absent
        let remote = offer.entry.state
        let remoteSynced = PullSession.synced(offer.entry)
        switch decidePull(local: current, remote: remote, recorded: recorded(key)?.pathState, forced: forced,
                          resolving: session.resolving != nil) {
        case .same:
            if recorded(key) != remoteSynced || session.resolving != nil { agreed(key, remoteSynced) } else { cleared.append(key) }
            return
        case .staysDeleted, .nothing:
            return
        case .conflict:
            noteConflict(key, local: ConflictSide(now), remote: ConflictSide(remote, size: offer.entry.size, mtimeNanos: offer.entry.mtimeNanos),
                         recorded: ConflictSide(recorded(key)?.pathState ?? .absent, synced: recorded(key)))
            return
        case .keepAsideThenTake:
            try keepLocalAside(key)
            (now, current) = (nil, .absent)
        case .take:
            break
        }
        switch remote {
        case .directory:
            if current != .absent { throw SyncError("\(key): a \(current) is in the way of a remote directory") }
            _ = try project.tree.openDirectory(offer.path, create: true)
            agreed(key, remoteSynced)
        case .symlink(let target):
            if let why = symlinkEscapes(linkPath: key, target: target) {
                throw SyncError("\(key): remote symlink to \(displayPath(target)): its target \(why); not pulled")
            }
            if let parent = try project.tree.openParent(offer.path, create: true) {
                try Tree.placeSymlink(at: parent, name: offer.path.name, target: target, shown: offer.path.description)
            }
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
            return
        }
    }

    // MARK: 3. fetching, and building from local chunks

    /// Asks for what is missing and builds what local chunks can give meanwhile. Requests go out on a thread of
    /// their own: first those planned, then any a local chunk turns out not to give (its file changed since it
    /// was recorded), handed over once every file has been built as far as local chunks go.
    func fetchAndBuildFromLocalChunks() throws {
        // Much to fetch: the agent is asked for extra connections to send over (see `ExtraStreams`), and every
        // connection is read on a thread of its own into one queue.
        extraStreams = expectedBytes >= PushPipeline.streamsThreshold ? project.streamCount - 1 : 0
        if extraStreams > 0 {
            let merged = try FrameInbox()
            merged.read(link.reader, source: 0) { message in
                if case .done = message { return true }
                if case .error = message { return true }
                return false
            }
            merger = merged
        }
        let later = OneShot<[(UInt32, [UInt32])]>()
        try startSender(first: fetches, then: later, extraStreams: extraStreams)
        var more: [(UInt32, [UInt32])] = []
        defer { later.set(more) }
        let chunksOf = Dictionary(building.map { ($0.op, $0.assembly.chunks) }, uniquingKeysWith: { a, _ in a })
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
        Trace.mark("pull: built from local chunks")
    }

    /// The thread that sends the fetches: `first`, then what `then` hands over, then `fetchEnd`. A send that
    /// fails closes the output, which ends the pull on this side.
    private func startSender(first: [(UInt32, [UInt32])], then later: OneShot<[(UInt32, [UInt32])]>, extraStreams: Int) throws {
        let writer = link.writer
        try startDetachedThread(name: "pull-fetches") {
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
                try send(first)
                try writer.flush()
                try send(later.wait())
                try writer.send(.fetchEnd)
                try writer.flush()
            } catch {
                writer.closeOutput()
            }
        }
    }

    // MARK: 4. receiving

    /// Takes in the chunks asked for, over this connection and any extra streams, until the agent is done (and,
    /// with extra streams, every chunk is in or every stream has ended). A file the agent gives up (it changed
    /// there while being sent) is skipped; one still missing chunks at the end fails.
    func receive() throws {
        let receiver = ChunkReceiver(run: self)
        defer {
            receiver.streams?.abort()
            // Whatever is still read into the merger is not wanted: its threads go.
            merger?.close()
        }
        while let message = try receiver.nextFrame() {
            switch message {
            case .abort(let op, let reason):
                if let (assembly, offer, _) = assemblies.removeValue(forKey: op) {
                    assembly.suspend()
                    stats.skipped.append("\(offer.path): \(reason)")
                    skipped.insert(offer.path)
                }
            case .done:
                receiver.agentDone = true
            case .streamsReady(let address, let token) where merger != nil && receiver.streams == nil:
                if !address.isEmpty, let merger {
                    receiver.streams = ExtraStreams(project: project, address: address, token: token, count: extraStreams,
                                                    joined: { connection, n in merger.read(FrameReader(connection.stream), source: n, handshake: true) },
                                                    settled: { merger.wake() })
                }
            case .error(let m, let reason):
                throw AgentSaid(message: displayText(m), reason: reason)
            default:
                throw ProtocolError("unexpected frame type 0x\(String(message.encode().type, radix: 16)) during the pull")
            }
            // Over this connection alone, `done` is the last frame.
            if case .done = message, merger == nil { break }
        }
        for (_, (assembly, offer, _)) in assemblies {
            assembly.suspend()
            stats.fail(offer.path, "the agent did not send every chunk")
        }
        if let extra = receiver.streams {
            stats.streams = 1 + extra.state.joined
            for why in extra.finish() { stats.warnings.append("an extra stream could not be opened, so the pull used fewer: \(why)") }
            receiver.streams = nil
        }
        Trace.mark("pull: every chunk in")
    }

    /// Reads the pull's frames and writes chunk data where it goes on the way (through `ChunkWriter`, as the agent does).
    private final class ChunkReceiver {
        unowned let run: PullRun
        let chunkWriter = ChunkWriter()
        var streams: ExtraStreams?
        var agentDone = false
        private var streamsEnded = 0
        private var received: UInt64 = 0
        /// The file last written to: the others are kept closed.
        private var open: UInt32?

        init(run: PullRun) { self.run = run }

        /// With extra streams, `done` can come ahead of data still on its way over them: the pull is over once
        /// every chunk asked for is in, or every stream has ended.
        private func over() -> Bool {
            guard agentDone else { return false }
            guard let streams else { return true }
            let (joined, connecting) = streams.state
            return run.assemblies.isEmpty || (!connecting && streamsEnded >= joined)
        }

        /// The next frame of the pull other than chunk data, from this connection or a joined one; nil once it is
        /// over. Chunk data is written on the way: over this connection alone, straight from the reader's buffer.
        func nextFrame() throws -> Message? {
            guard let merger = run.merger else {
                let message = try run.link.reader.next {
                    try self.write(op: $0.op, index: $0.index, compressed: $0.compressed, rawLength: $0.rawLength, payload: $0.payload)
                }
                guard let message else { throw SyncError("the agent closed the connection during the pull") }
                return message
            }
            while !over() {
                switch merger.next() {
                case .frame(.chunkData(let op, let index, let compressed, let rawLength, let payload), _):
                    try payload.withUnsafeBytes { try write(op: op, index: index, compressed: compressed, rawLength: rawLength, payload: $0) }
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

        /// Writes chunk `index` of file `op` where it goes (its payload as it came: compressed or not).
        private func write(op: UInt32, index: UInt32, compressed: Bool, rawLength: UInt32, payload: UnsafeRawBufferPointer) throws {
            guard let (assembly, offer, expected) = run.assemblies[op] else { return }
            if open != op, let previous = open { run.assemblies[previous]?.0.suspend() }
            open = op
            try chunkWriter.write(payload, compressed: compressed, rawLength: Int(rawLength), index: Int(index), into: assembly,
                                  shown: offer.path.description)
            run.stats.chunksSent += 1
            received += UInt64(rawLength)
            run.progress.update(done: received, total: run.expectedBytes)
            if assembly.isComplete {
                run.assemblies[op] = nil
                try run.seal(op, assembly, offer, expected: expected)
            }
            if !run.sealed.isEmpty { try run.settle(run.durability.take()) }
        }
    }

    // MARK: placing

    /// Hands a complete file to `durability`; it is placed once its data is durable (see `settle`).
    private func seal(_ op: UInt32, _ assembly: FileAssembly, _ offer: Offer, expected: FileStat?) throws {
        try durability.add(sealing: assembly, op: op, permissions: offer.entry.permissions, mtimeNanos: offer.entry.mtimeNanos)
        sealed[op] = (assembly, offer, expected)
        // Group commit: while a sync runs, the files sealed meanwhile wait for the next one.
        if durability.outstanding == 0 { durability.closeBatch() }
    }

    /// Renames the files whose data became durable, unless the local file changed since the decision.
    private func settle(_ progress: DurableBatches<RelativePath>.Progress) throws {
        for (op, error) in progress.durable {
            guard let (assembly, offer, expected) = sealed.removeValue(forKey: op) else { continue }
            guard error == 0 else {
                assembly.discard()
                stats.errors.append("\(offer.path): \(SystemError(call: "fsync", path: offer.path.description, errno: error))")
                continue
            }
            if let (cached, parent) = try buildSession.placing({ try commit(assembly, offer, expected: expected) }) {
                cacheUpdates.append(cached)
                agreed(offer.path, PullSession.synced(offer.entry))
                durability.renamed(offer.path, directory: (offer.path.parentBytes, parent))
            }
        }
    }

    /// The last files: durable, renamed, and the renames durable.
    func placeTheLast() throws {
        durability.closeBatch()
        while durability.outstanding > 0 { try settle(durability.wait()) }
        _ = durability.flush()
        Trace.mark("pull: received and placed")
    }

    private struct LocalConflict: Error {}

    /// Renames a sealed, durable file into place unless the local file changed since the decision; returns its new
    /// cache entry and the directory the rename changed, or nil on conflict.
    private func commit(_ assembly: FileAssembly, _ offer: Offer, expected: FileStat?) throws -> (CachedFile, FileDescriptor)? {
        let parent: FileDescriptor?
        do {
            parent = try assembly.commit(expectingNothing: expected == nil) { now in
                if !FileAssembly.targetUnchanged(now, since: expected) { throw LocalConflict() }
            }
        } catch is LocalConflict {
            assembly.discard()
            stats.conflict(offer.path, "changed here during the pull; the local version is kept, and the next pull looks again")
            return nil
        }
        guard let parent, let st = try project.tree.lstat(offer.path) else { return nil }
        return (CachedFile(path: offer.path, stat: st, digest: assembly.digest, chunks: assembly.chunks, cachedAtNanos: wallClockNanos()), parent)
    }

    // MARK: 5. deleting

    /// What the remote no longer has, children first: a resolve keeps the local version aside; a pull deletes
    /// what is unchanged here since the last pull (`decidePullOfDeletion`).
    func deleteWhatTheRemoteDeleted() throws {
        let offered = Set(offers.values.map(\.path))
        if let resolving = session.resolving {
            // Keeping the remote's version of a path it no longer has: the local one goes aside.
            for key in resolving where !offered.contains(key) && !skipped.contains(key) {
                if local[key] != nil {
                    try keepLocalAside(key)
                    stats.filesDeleted += 1
                }
                agreed(key, nil)
            }
            return
        }
        for key in pulled.keys.sorted(by: >) where !offered.contains(key) && !skipped.contains(key) && project.isPullPath(key) {
            try delete(key, recorded: pulled[key]!)
        }
    }

    private func delete(_ key: RelativePath, recorded: SyncedEntry) throws {
        let last = recorded.pathState
        let current = local[key]?.state ?? .absent
        switch decidePullOfDeletion(local: current, recorded: last, forced: session.force) {
        case .take where current == .absent:
            changes.append((key, nil))
            return
        case .take, .same, .staysDeleted:
            break
        case .nothing:
            return
        case .conflict:
            noteConflict(key, local: ConflictSide(local[key]), remote: .absent, recorded: ConflictSide(last, synced: recorded))
            return
        case .keepAsideThenTake:
            try keepLocalAside(key)
            stats.filesDeleted += 1
            agreed(key, nil)
            return
        }
        guard let parent = try project.tree.openParent(key, create: false) else { return }
        if current == .directory {
            if withCName(key.name, { unlinkat(parent.raw, $0, AT_REMOVEDIR) }) != 0 { return }
        } else {
            try Tree.remove(at: parent, name: key.name, isDirectory: false, shown: key.description)
        }
        stats.filesDeleted += 1
        agreed(key, nil)
    }
}
