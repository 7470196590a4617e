#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import ProjectScan
import Watch
import SyncSystem
import Wire

/// A fatal session error on the agent side; sent to the client as an error frame, then the agent exits.
public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    init(_ text: String) { description = text }
}

/// One client session served over a byte stream: handshake, hello, then a push or a pull.
/// Frames are handled in arrival order on one thread, and replies are flushed before the agent waits for
/// input, so the client can keep many files in flight without a round trip per file. The only other threads
/// are the sync workers of `durability`: a finished file is sealed here, made durable there (in a batch with
/// others, see `DurableBatches`), and renamed into place here once it is.
public final class AgentSession {
    private let stream: ByteStream
    private let reader: FrameReader
    private let writer: FrameWriter
    /// Makes sealed files durable before their renames, and renames durable before their answers; made for the
    /// project's tree when it is opened.
    private var durability: DurableBatches<OpResult>?
    /// Files sealed and waiting to be durable, by operation id.
    private var sealed: [UInt32: PendingFile] = [:]
    /// Syncs in flight at most (each holds a descriptor).
    private static let maxSyncs = 256
    /// Renames whose answers wait for durability with no batch to carry them are synced at this many.
    private static let maxUnsyncedAnswers = 512
    private let homeDirectory: String
    private var tree: Tree!
    private var state: AgentState!
    private var store: ChunkStore!
    private var chunker = FileChunker()
    private var pullPaths: [RelativePath] = []
    /// The stamp in the names of losing copies kept by forced operations (see `Hello.conflictStamp`).
    private var conflictStamp = ""
    /// A pull that lists these paths instead of the pull paths (resolving conflicts); empty otherwise.
    private var pullRoots: [RelativePath] = []
    private let decompressor = ChunkDecompressor()
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: ChunkParameters.largestMaxSize, alignment: 16)

    public init(stream: ByteStream, homeDirectory: String) {
        self.stream = stream
        reader = FrameReader(stream)
        writer = FrameWriter(stream)
        self.homeDirectory = homeDirectory
        reader.willBlock = { [unowned self] in
            notifyLock.lock()
            defer { notifyLock.unlock() }
            try commitWhileIdle()
            try writer.flush()
        }
    }

    deinit {
        durability?.shutdown()
        scratch.deallocate()
    }

    /// Serves sessions until the client closes the connection between two of them. Errors are reported to the
    /// client (when it still listens) and rethrown; they end the connection.
    public func run() throws {
        do {
            try writer.writeHandshake()
            let version = try reader.readHandshake()
            guard version == wireVersion else {
                throw AgentError("protocol version mismatch: client speaks \(version), this agent speaks \(wireVersion); install matching syncd versions")
            }
            guard case .hello(let first)? = try reader.next() else { throw ProtocolError("expected a hello frame first") }
            var hello = first
            while true {
                try serve(hello)
                try writer.flush()
                // Between sessions: the next hello, a watch, or the end of the connection.
                var next = try reader.next()
                while case .watch? = next {
                    try watchUntilEnded()
                    next = try reader.next()
                }
                guard let message = next else { break }
                guard case .hello(let h) = message else {
                    throw ProtocolError("expected a hello or watch frame between sessions, got type 0x\(String(message.encode().type, radix: 16))")
                }
                hello = h
            }
            stopWatching()
        } catch {
            stopWatching()
            try? writer.send(.error(message: "\(error)"))
            try? writer.flush()
            durability?.shutdown()
            pending.values.forEach { $0.assembly?.suspend() }
            sealed.values.forEach { $0.assembly?.suspend() }
            try? state?.save()
            throw error
        }
    }

    private func serve(_ hello: Hello) throws {
        try open(hello)
        switch hello.role {
        case .push: try servePush()
        case .pull:
            notifyLock.lock()
            remoteDirty = false
            remoteChanges.removeAll()
            notifyLock.unlock()
            // With a watcher, a file is known to be finished once it was closed and the watcher then saw nothing
            // for a while; without one, only its age tells. Resolving a conflict, the user chose the version there
            // now: only a file some process holds open for writing is left.
            try servePull(tree: tree, roots: pullRoots.isEmpty ? pullPaths : pullRoots, chunker: chunker, recordFor: { path, st in
                let r = try self.record(for: path, stat: st)
                return (r.digest, r.chunks)
            }, quietNanos: !pullRoots.isEmpty ? 0 : watcher == nil ? quietPeriodNanos : watchedQuietNanos, compress: hello.compress,
               reader: reader, writer: writer)
            try state.save()
        }
    }

    // MARK: - Watching the pull paths between sessions

    private var watcher: TreeWatcher?
    /// Guards the writer while a watch is on (the watcher thread sends `remoteChanged`), and the fields below.
    private let notifyLock = Mutex()
    private var watching = false
    private var remoteDirty = false
    private var remoteChanges: Set<RelativePath> = []

    /// Answers `watch`: reports completed remote-owned files as they come, until the client's `watchEnd`.
    private func watchUntilEnded() throws {
        if watcher == nil {
            guard !pullPaths.isEmpty else { throw AgentError("watch: the project has no pull paths") }
            let started = TreeWatcher(tree: tree, rules: IgnoreRules(), quietMillis: Self.watchQuietMillis, maxHoldMillis: 5000,
                                      scope: pullPaths, completedFilesOnly: true,
                                      log: { printError("syncd-agent: \($0)") }) { [unowned self] event in remoteEvent(event) }
            do { try started.start() } catch { throw AgentError("watch: cannot watch the pull paths: \(error)") }
            watcher = started
            // Whatever was finished between the last pull and now went unseen: the client should look once.
            notifyLock.lock()
            remoteDirty = true
            notifyLock.unlock()
        }
        notifyLock.lock()
        watching = true
        let sent = Result { try sendRemoteChangesLocked() }
        notifyLock.unlock()
        try sent.get()
        guard let message = try reader.next() else { return }
        guard case .watchEnd = message else {
            throw ProtocolError("expected watchEnd during a watch, got type 0x\(String(message.encode().type, radix: 16))")
        }
        notifyLock.lock()
        defer { notifyLock.unlock() }
        watching = false
        try writer.send(.watchEnded)
        try writer.flush()
    }

    /// On the watcher's thread.
    private func remoteEvent(_ event: WatchEvent) {
        notifyLock.lock()
        defer { notifyLock.unlock() }
        if case .changed(let paths) = event {
            for p in paths where remoteChanges.count < maxNotifiedPaths { remoteChanges.insert(p) }
        }
        remoteDirty = true
        if watching { _ = try? sendRemoteChangesLocked() }
    }

    private func sendRemoteChangesLocked() throws {
        guard remoteDirty else { return }
        try writer.send(.remoteChanged(paths: remoteChanges.sorted().map(\.bytes)))
        try writer.flush()
        remoteDirty = false
        remoteChanges.removeAll()
    }

    private func stopWatching() {
        watcher?.stop()
        watcher = nil
    }

    /// The watcher reports once nothing happened in the pull paths for this long.
    private static let watchQuietMillis = 300
    /// A watched file last modified this long ago, and open for writing by no process, is offered by a pull.
    private let watchedQuietNanos: Int64 = 250_000_000

    private func open(_ hello: Hello) throws {
        let name = hello.project
        guard !name.isEmpty, !name.contains("/"), name != ".", name != "..", !name.utf8.contains(0) else {
            throw AgentError("project name '\(name)' is not a single directory name")
        }
        let root = hello.remoteRoot.isEmpty ? homeDirectory : hello.remoteRoot
        guard root.hasPrefix("/") else { throw AgentError("remote root '\(root)' is not an absolute path") }
        let projectPath = cleanPath(root + "/" + name)
        // A connection kept for many sessions keeps the project open between them, unless it was replaced or
        // another agent changed its state meanwhile.
        if projectPath != openProjectPath || !(isStillCurrent()) {
            stopWatching()
            tree = try Tree(rootPath: projectPath, create: true)
            durability?.shutdown()
            durability = try DurableBatches(fileSystem: tree.root)
            state = try AgentState(project: tree)
            store = ChunkStore(tree: tree)
            for record in state.records.values { store.add(path: record.path, chunks: record.chunks) }
            openProjectPath = projectPath
        }
        let paths = try hello.pullPaths.map { try RelativePath($0) }
        if paths != pullPaths { stopWatching() }
        pullPaths = paths
        conflictStamp = hello.conflictStamp.isEmpty ? Self.stamp() : hello.conflictStamp
        pullRoots = try hello.roots.map { try checkedPath($0) }
        if hello.role == .push {
            // Every pull path is a directory from the first push on, made by this user, so that a container's
            // bind mount of ./output finds it rather than making a root-owned one the next pull cannot read.
            for p in pullPaths { _ = try? tree.openDirectory(p, create: true) }
        }
        chunker = FileChunker(try ChunkParameters(min: Int(hello.chunkMin), avg: Int(hello.chunkAvg), max: Int(hello.chunkMax)))
        refusing = hello.role == .push && !hello.expectInstance.isEmpty && hello.expectInstance != state.instance
        try writer.send(.welcome(agentVersion: syncdVersion, projectDirectory: projectPath, instance: state.instance))
    }

    private var openProjectPath: String?

    private func isStillCurrent() -> Bool {
        guard let tree, let state, let root = try? tree.root.stat() else { return false }
        var now = stat()
        guard stat(tree.rootPath, &now) == 0, UInt64(now.st_dev) == root.device, UInt64(now.st_ino) == root.inode else { return false }
        return state.isCurrent()
    }

    // MARK: - Current state of a path

    /// Validates a path from the wire: relative, clean, outside `.syncd/`.
    private func checkedPath(_ raw: [UInt8]) throws -> RelativePath {
        let path = try RelativePath(bytes: raw)
        if path.firstComponent.elementsEqual(agentStateDirectoryName.utf8) || path.nameHasPrefix(partialFilePrefix) {
            throw PathError(path: path.description, reason: "reserved for syncd's own state")
        }
        return path
    }

    /// The local time as `YYYYMMDD-HHMMSS`, for conflict copies when the client sent no stamp.
    private static func stamp() -> String { formatTime(wallClockNanos(), compact: true) }

    private func isPullPath(_ path: RelativePath) -> Bool { pullPaths.contains { path.isWithin($0) } }

    /// What is at `path` now; regular files are identified by digest (from the record when the stat is unchanged).
    private func currentState(_ path: RelativePath) throws -> (PathState, FileStat?) {
        guard let st = try tree.lstat(path) else { return (.absent, nil) }
        switch st.kind {
        case .directory: return (.directory, st)
        case .symlink:
            guard let parent = try tree.openParent(path, create: false) else { return (.absent, nil) }
            return (.symlink(try Tree.readLink(at: parent, name: path.name, shown: path.description)), st)
        // Deciding whether a push may replace it: a record made in the same second as the file's last change is
        // checked by reading the file.
        case .regular: return (.file(try record(for: path, stat: st, trustRacy: false).digest), st)
        case .other: throw AgentError("\(path): not a regular file, directory or symlink on the remote; remove it by hand")
        }
    }

    /// The record for a regular file, re-hashing it when its stat identity changed (or, unless `trustRacy`, when
    /// the record is racy).
    private func record(for path: RelativePath, stat st: FileStat, trustRacy: Bool = true) throws -> FileRecord {
        if let r = state.records[path], r.stat.sameContentIdentity(as: st), trustRacy || !r.isRacy { return r }
        let fd = try tree.openForReading(path)
        let content = try chunker.chunk(fd)
        let after = try fd.stat()
        if let old = state.records[path] { store.remove(path: old.path, chunks: old.chunks) }
        let record = FileRecord(path: path, stat: after, digest: content.digest, chunks: content.chunks)
        // A file modified while being read is not recorded, so it is hashed again next time.
        if after.sameContentIdentity(as: st) {
            state.put(record)
            store.add(path: path, chunks: content.chunks)
        }
        return record
    }

    // MARK: - Push

    private final class PendingFile {
        let header: FileHeader
        /// nil when the path was refused: the chunk list is read and dropped.
        let path: RelativePath!
        var chunks: [ChunkRef] = []
        var assembly: FileAssembly?
        var targetStat: FileStat?
        /// A forced file: the name the remote's version was kept under.
        var keptAs: [UInt8] = []
        /// Store reads in flight for it, and whether it waits for chunks from the client too.
        var fetching = 0
        var asksClient = false
        init(header: FileHeader, path: RelativePath?) {
            self.header = header
            self.path = path
        }
    }

    private var pending: [UInt32: PendingFile] = [:]
    /// Data frames still to come for files sent with `dataFollows`: taken while the file is being built, dropped
    /// once it is placed, unchanged or refused.
    private var eagerFrames: [UInt32: Int] = [:]
    /// A push that reads chunks from the snapshot store: the reader, and where each chunk is.
    private var fetcher: StoreFetcher?
    private var storeChunks: [ChunkID: StoreChunk] = [:]

    /// True while a file of the push still waits for frames from the client (its chunk list, data sent unasked,
    /// or chunks asked for).
    private func waitsOnClient(_ file: PendingFile) -> Bool {
        file.path == nil || file.assembly == nil || file.asksClient || eagerFrames[file.header.op] != nil
    }

    /// Places the chunks the store answered with; a file whose read failed is answered failed, naming the object.
    private func receiveFetched(_ done: [StoreFetcher.Completion]) throws {
        for completion in done {
            guard let file = pending[completion.op], let assembly = file.assembly else { continue }
            file.fetching -= 1
            switch completion.result {
            case .success(let pieces):
                do {
                    for piece in pieces {
                        try piece.bytes.withUnsafeBytes { try assembly.write(index: piece.index, bytes: $0) }
                    }
                } catch {
                    assembly.suspend()
                    pending[completion.op] = nil
                    try reply(completion.op, .failed, "\(error)", .absent)
                    continue
                }
                if assembly.isComplete {
                    do { try finish(file) } catch let error where error is SystemError || error is PlacementError || error is AgentError {
                        pending[completion.op] = nil
                        try reply(completion.op, .failed, "\(error)", .absent)
                    }
                }
            case .failure(let error):
                assembly.suspend()
                pending[completion.op] = nil
                try reply(completion.op, .failed, "\(error)", .absent)
            }
        }
    }

    /// Waits until store reads or fsyncs complete, and handles them.
    private func waitForFetchesOrFlushes() throws {
        let durability = durability!
        if durability.outstanding == 0 { durability.closeBatch() }
        var fds = [pollfd(fd: durability.completionFD, events: Int16(POLLIN), revents: 0)]
        if let fetcher { fds.append(pollfd(fd: fetcher.completionFD, events: Int16(POLLIN), revents: 0)) }
        if poll(&fds, nfds_t(fds.count), 1000) < 0 && errno != EINTR { throw SystemError(call: "poll", path: "agent", errno: errno) }
        try handle(durability.take())
        if let fetcher { try receiveFetched(fetcher.takeCompletions()) }
        if durability.outstanding == 0 && !durability.hasOpenBatch { try syncDirectoriesAndAnswer() }
    }

    /// The client expected another instance of this project (it was wiped or replaced since): every operation
    /// of this push is refused unapplied, since its bases describe a remote that is gone.
    private var refusing = false
    private static let refusal = "the remote project was wiped or replaced since the last sync; nothing applied"

    private var openAssemblies: [UInt32] = []
    /// The push's extra connections, once the client asked for them.
    private var joinedStreams: JoinedStreams?
    /// The highest operation id of a file begun in this push: chunk data a joined stream brings for an id up to it
    /// whose file is no longer pending arrived after the file was given up or finished, and is dropped.
    private var highestBegun: UInt32 = 0

    private func servePush() throws {
        var ended = false
        let durability = durability!
        try state.beginPush()
        tree.cachesDirectories(true)
        highestBegun = 0
        defer {
            joinedStreams?.close()
            joinedStreams = nil
            tree.cachesDirectories(false)
            fetcher?.shutdown()
            fetcher = nil
            storeChunks.removeAll()
        }
        while !ended || !pending.isEmpty || !sealed.isEmpty {
            if ended && pending.isEmpty {
                durability.closeBatch()
                try handle(durability.wait())
                continue
            }
            if ended && !pending.values.contains(where: waitsOnClient) {
                // Everything still missing comes from the store: wait for it (and for fsyncs), not for input.
                try waitForFetchesOrFlushes()
                continue
            }
            if durability.outstanding > 0 { try handle(durability.take()) }
            if let fetcher, fetcher.outstanding > 0 { try receiveFetched(fetcher.takeCompletions()) }
            if durability.waitingRenames >= Self.maxUnsyncedAnswers && durability.outstanding == 0 && !durability.hasOpenBatch {
                try syncDirectoriesAndAnswer()
            }
            let (next, joined) = try nextPushMessage()
            guard let message = next else {
                throw AgentError("the client closed the connection in the middle of a push; finished files are kept and the next push resumes")
            }
            if joined, case .chunkData(let op, let index, let compressed, let rawLength, let payload) = message {
                guard let file = pending[op], let assembly = file.assembly else {
                    if op <= highestBegun { continue }
                    throw ProtocolError("a joined stream brought chunk data for operation \(op), which was never begun")
                }
                try receiveChunk(file, assembly, index: Int(index), compressed: compressed, rawLength: Int(rawLength), payload: payload)
                continue
            }
            switch message {
            case .fileBegin(let header):
                guard !ended else { throw ProtocolError("file frame after end of operations") }
                guard pending[header.op] == nil else { throw ProtocolError("operation id \(header.op) reused while in flight") }
                highestBegun = max(highestBegun, header.op)
                let path: RelativePath
                do {
                    if refusing { throw AgentError(Self.refusal) }
                    path = try checkedPath(header.path)
                } catch {
                    try reply(header.op, .failed, "\(error)", .absent)
                    if header.chunkCount > 0 { pending[header.op] = PendingFile(header: header, path: nil) }
                    continue
                }
                let file = PendingFile(header: header, path: path)
                pending[header.op] = file
                if header.chunkCount == 0 { try startFile(file) }
            case .chunkList(let op, let chunks):
                guard let file = pending[op], file.assembly == nil else { throw ProtocolError("chunk list for unknown operation \(op)") }
                guard file.chunks.count + chunks.count <= Int(file.header.chunkCount) else {
                    throw ProtocolError("\(displayPath(file.header.path)): more chunks than the \(file.header.chunkCount) announced")
                }
                var offset = file.chunks.last.map { $0.offset + UInt64($0.length) } ?? 0
                for c in chunks {
                    file.chunks.append(ChunkRef(id: c.id, offset: offset, length: c.length))
                    offset += UInt64(c.length)
                }
                if file.chunks.count == Int(file.header.chunkCount) {
                    if file.header.dataFollows {
                        let coming = Set(file.chunks.lazy.map(\.id).filter { !$0.isHole }).count
                        if coming > 0 { eagerFrames[op] = coming }
                    }
                    if file.path == nil { pending[op] = nil; continue }
                    try startFile(file)
                }
            case .chunkData(let op, let index, let compressed, let rawLength, let payload):
                let eager = eagerFrames[op]
                if let eager { eagerFrames[op] = eager > 1 ? eager - 1 : nil }
                guard let file = pending[op], let assembly = file.assembly else {
                    if eager != nil { continue }  // sent unasked for a file already placed, unchanged or refused
                    throw ProtocolError("chunk data for operation \(op), which is not waiting for data")
                }
                try receiveChunk(file, assembly, index: Int(index), compressed: compressed, rawLength: Int(rawLength), payload: payload)
                if eager == 1, pending[op] != nil, !assembly.isComplete {
                    // Everything announced has come and the file is still short: ask, as for any other file.
                    try requestMissing(op, assembly)
                }
            case .abort(let op, let reason):
                eagerFrames[op] = nil
                if let file = pending.removeValue(forKey: op) {
                    file.assembly?.suspend()
                    try reply(op, .failed, "sender gave up: \(reason)", .absent)
                }
            case .symlink(let op, _, _, _, _) where refusing, .directory(let op, _, _, _) where refusing,
                 .delete(let op, _, _, _) where refusing:
                try reply(op, .failed, Self.refusal, .absent)
            case .symlink(let op, let path, let target, let base, let force):
                try guardOp { try applySymlink(op, path, target, base, force: force) } fail: { try reply(op, .failed, $0, .absent) }
            case .directory(let op, let path, let permissions, let force):
                try guardOp { try applyDirectory(op, path, permissions, force: force) } fail: { try reply(op, .failed, $0, .absent) }
            case .delete(let op, let path, let base, let force):
                try guardOp { try applyDelete(op, path, base, force: force) } fail: { try reply(op, .failed, $0, .absent) }
            case .endOfOperations:
                ended = true
            case .storePacks(let store, let signingRegion, let packs):
                guard !ended else { throw ProtocolError("store packs after end of operations") }
                if fetcher == nil { fetcher = try StoreFetcher(store: store, signingRegion: signingRegion) }
                fetcher!.add(packs)
            case .storeChunks(let chunks):
                guard let fetcher else { throw ProtocolError("store chunks before any store pack") }
                for c in chunks where Int(c.pack) < fetcher.packs.count { storeChunks[c.id] = c }
            case .streamsOpen(let count):
                guard !ended, joinedStreams == nil else { throw ProtocolError("streams asked for twice, or after end of operations") }
                // Over a transport without a descriptor to poll (in-process tests) there are no extra streams.
                if stream.readinessFD != nil, count > 0, let streams = try? JoinedStreams(limit: min(Int(count), Self.maxJoinedStreams)) {
                    joinedStreams = streams
                    try writer.send(.streamsReady(address: streams.address, token: streams.token))
                } else {
                    try writer.send(.streamsReady(address: "", token: []))
                }
                try writer.flush()
            default:
                throw ProtocolError("unexpected frame during a push: \(message.encode().type)")
            }
        }
        try syncDirectoriesAndAnswer()
        // Every operation is answered: temporary files no push is building any more are stale.
        state.endPush(in: tree)
        if cacheGrew { evictCache() }
        cacheGrew = false
        try state.save()
        try writer.send(.done)
    }

    // MARK: - Bounded cache of replaced and deleted files

    /// Upper bound on the bytes kept in `.syncd/cache/` between sessions, so remote disk use stays close to the
    /// project's size. Within a push the cache may hold more (every file deleted so far, whatever its size, so
    /// that a moved file of any size is found); the oldest entries go when the push ends.
    static let cacheLimit: UInt64 = 512 << 20
    private static let cacheDirectory = [Array(agentStateDirectoryName.utf8), Array("cache".utf8)]
    private static let cacheRoot = try! RelativePath(agentStateDirectoryName + "/cache")

    /// Where the cache keeps a file with content `digest`.
    private static func cachePath(_ digest: ChunkID) -> RelativePath { try! cacheRoot.appending(Array(digest.hex.utf8)) }

    /// Keeps the content of a file about to be replaced or deleted, as a hard link (no data is copied), so its
    /// chunks stay available: a moved file is linked back out whole (`adoptCached`), and an edit undone or a
    /// file moved across a type change costs no transfer.
    /// Returns the digest it stashed under, for `refreshStash` once the original path is gone.
    @discardableResult
    private func stash(_ path: RelativePath, stat st: FileStat) -> ChunkID? {
        guard let record = state.records[path], record.stat.sameContentIdentity(as: st), record.stat.size > 0,
              let parent = try? tree.openParent(path, create: false),
              let cache = try? tree.openDirectory(Self.cacheDirectory, create: true)
        else { return nil }
        let name = Array(record.digest.hex.utf8)
        if withCName(path.name, { from in withCName(name) { linkat(parent.raw, from, cache.raw, $0, 0) } }) != 0 && errno != EEXIST {
            return nil
        }
        guard let linked = try? Tree.lstat(at: cache, name: name, shown: record.digest.hex), linked.kind == .regular else { return nil }
        let cachedPath = Self.cachePath(record.digest)
        cacheGrew = true
        state.put(FileRecord(path: cachedPath, stat: linked, digest: record.digest, chunks: record.chunks))
        store.add(path: cachedPath, chunks: record.chunks)
        return record.digest
    }

    /// Unlinking or replacing the original changes the cached inode's ctime; the record follows, so the entry
    /// is still recognised as unchanged.
    private func refreshStash(_ digest: ChunkID) {
        let cachedPath = Self.cachePath(digest)
        guard var record = state.records[cachedPath],
              let cache = try? tree.openDirectory(Self.cacheDirectory, create: false),
              let st = try? Tree.lstat(at: cache, name: cachedPath.name, shown: cachedPath.description), st.inode == record.stat.inode
        else { return }
        record.stat = st
        state.put(record)
    }

    /// Set when this session added to the cache; only then can it have outgrown its bound.
    private var cacheGrew = false

    /// Drops the oldest cached files until the cache fits its bound.
    private func evictCache() {
        var cached = state.records.values.filter { $0.path.parent == Self.cacheRoot }
        var total = cached.reduce(UInt64(0)) { $0 + $1.stat.size }
        guard total > Self.cacheLimit, let cache = try? tree.openDirectory(Self.cacheDirectory, create: false) else { return }
        cached.sort { $0.stat.ctimeNanos < $1.stat.ctimeNanos }
        for record in cached where total > Self.cacheLimit {
            try? Tree.remove(at: cache, name: record.path.name, isDirectory: false, shown: record.path.description)
            dropRecord(record.path)
            total -= record.stat.size
        }
    }

    /// Runs one path operation; a bad path or a file system error fails that operation only.
    private func guardOp(_ body: () throws -> Void, fail: (String) throws -> Void) throws {
        do { try body() } catch let error as PathError {
            try fail("\(error)")
        } catch let error as SystemError {
            try fail(describeFailure(error))
        } catch let error as AgentError {
            try fail("\(error)")
        }
    }

    private func reply(_ op: UInt32, _ status: OpStatus, _ message: String, _ current: PathState) throws {
        try writer.send(.result(OpResult(op: op, status: status, message: message, current: current)))
    }

    /// Answers a conflict: what the remote holds now (with size and mtime for a file) and what the sender
    /// believed it held, so the client can say both.
    private func replyConflict(_ op: UInt32, _ path: RelativePath, _ current: PathState, _ st: FileStat?, base: PathState,
                               _ what: String = "changed on the remote since the last sync") throws {
        let isFile = st?.kind == .regular
        try writer.send(.result(OpResult(op: op, status: .conflict,
                                         message: "\(what): the remote holds \(describe(current, st)), the last sync recorded \(base)",
                                         current: current, currentSize: isFile ? st!.size : 0,
                                         currentMtimeNanos: isFile ? st!.mtimeNanos : 0)))
    }

    private func describe(_ state: PathState, _ st: FileStat?) -> String {
        guard case .file = state, let st else { return "\(state)" }
        return "\(state) (\(st.size) bytes, modified \(formatTime(st.mtimeNanos)))"
    }

    /// Keeps what is at `path` under a conflict name beside it (a forced operation's loser) and returns that
    /// name. Renamed without replacing anything; what the agent knows of it follows it.
    private func keepAside(_ path: RelativePath) throws -> [UInt8] {
        tree.forgetDirectories()
        let kept = try tree.keepAside(path, stamp: conflictStamp)
        if let record = state.records[path] {
            dropRecord(path)
            if let st = try tree.lstat(kept) {
                state.put(FileRecord(path: kept, stat: st, digest: record.digest, chunks: record.chunks))
                store.add(path: kept, chunks: record.chunks)
            }
        }
        for below in state.records.keys where below.isWithin(path) { dropRecord(below) }
        return kept.name
    }

    private func startFile(_ file: PendingFile) throws {
        let header = file.header
        do {
            if isPullPath(file.path) && !header.force {
                throw AgentError("\(file.path!) is remote-owned (a pull path); push refused")
            }
            guard file.chunks.count == Int(header.chunkCount) else { throw ProtocolError("\(file.path!): chunk list incomplete") }
            var (current, st) = try currentState(file.path)
            if current == .file(header.digest), let st {
                try updateMetadata(file.path, st, header)
                pending[header.op] = nil
                return try reply(header.op, .unchanged, "", current)
            }
            if current != header.base {
                guard header.force, current != .absent else {
                    pending[header.op] = nil
                    return try replyConflict(header.op, file.path, current, st, base: header.base)
                }
                file.keptAs = try keepAside(file.path)
                (current, st) = (.absent, nil)
            }
            file.targetStat = st
            if current == .absent, try adoptCached(file) { return }
            // Journaled before the temporary file exists, so that a kill leaves nothing a sweep cannot find.
            state.noteTemporaryFile(in: file.path.parentBytes)
            let assembly = try FileAssembly(tree: tree, path: file.path, digest: header.digest, size: header.size, chunkList: file.chunks,
                                            permissions: header.permissions)
            file.assembly = assembly
            try assembly.fill(from: store)
            if assembly.isComplete {
                try finish(file)
            } else {
                noteOpen(header.op)
                // Data sent unasked is on its way; only what is still missing after it is asked for. What the
                // snapshot store holds is read from there; the rest is asked of the client.
                if eagerFrames[header.op] == nil {
                    let missing = assembly.missingIndices
                    let fromStore = missing.compactMap { i in storeChunks[assembly.chunks[Int(i)].id].map { (index: Int(i), chunk: $0) } }
                    if let fetcher, !fromStore.isEmpty { file.fetching += fetcher.submit(op: header.op, fromStore) }
                    let fromClient = missing.filter { storeChunks[assembly.chunks[Int($0)].id] == nil || fetcher == nil }
                    if !fromClient.isEmpty {
                        file.asksClient = true
                        try requestMissing(header.op, fromClient)
                    }
                }
            }
        } catch let error where error is PathError || error is SystemError || error is AgentError || error is PlacementError {
            file.assembly?.suspend()
            pending[header.op] = nil
            try reply(header.op, .failed, describeFailure(error), .absent)
        }
    }

    /// A failure's text; a name the remote file system refuses (not in its encoding, a character it does not
    /// allow, too long) says so.
    private func describeFailure(_ error: Error) -> String {
        if let e = error as? SystemError, [EILSEQ, ENAMETOOLONG, EINVAL].contains(e.errno) {
            return "the remote file system cannot hold this name (\(e.call): \(e.reason)); rename it here or add it to .syncignore"
        }
        return "\(error)"
    }

    /// A new file whose content the cache holds whole (the old half of a move, deleted earlier in this push) is
    /// linked out of the cache into place: no byte is copied or sent. Returns false when the cache cannot serve.
    private func adoptCached(_ file: PendingFile) throws -> Bool {
        let header = file.header
        // A cached file's chunks are in the store: a file whose first chunk is not (every file of a first push)
        // cannot be in the cache, and is not looked for.
        guard let first = file.chunks.first(where: { !$0.id.isHole }), store.contains(first.id) else { return false }
        let cachedPath = Self.cachePath(header.digest)
        let name = cachedPath.name
        guard let record = state.records[cachedPath], record.digest == header.digest,
              let cache = try tree.openDirectory(Self.cacheDirectory, create: false),
              let st = try Tree.lstat(at: cache, name: name, shown: cachedPath.description), st.kind == .regular,
              record.stat.sameContentIdentity(as: st),
              let parent = try tree.openParent(file.path, create: true)
        else { return false }
        let cached = try Tree.openFile(at: cache, name: name, flags: O_RDONLY, shown: cachedPath.description)
        try cached.setPermissions(header.permissions & 0o777)
        try cached.setModificationTime(header.mtimeNanos)
        // A link, not a rename, so that whatever appeared at the target meanwhile is never replaced (EEXIST).
        guard withCName(name, { from in withCName(file.path.name) { linkat(cache.raw, from, parent.raw, $0, 0) } }) == 0 else {
            return false
        }
        _ = withCName(name) { unlinkat(cache.raw, $0, 0) }
        dropRecord(cachedPath)
        if let old = state.records[file.path] { store.remove(path: old.path, chunks: old.chunks) }
        if let placed = try tree.lstat(file.path) {
            state.put(FileRecord(path: file.path, stat: placed, digest: header.digest, chunks: record.chunks))
            store.add(path: file.path, chunks: record.chunks)
        }
        pending[header.op] = nil
        durability!.renamed(OpResult(op: header.op, status: .applied, message: "moved within the remote", current: .file(header.digest),
                                     keptAs: file.keptAs), directory: (file.path.parentBytes, parent))
        return true
    }

    private func requestMissing(_ op: UInt32, _ assembly: FileAssembly) throws {
        if let file = pending[op] { file.asksClient = true }
        try requestMissing(op, assembly.missingIndices)
    }

    private func requestMissing(_ op: UInt32, _ missing: [UInt32]) throws {
        var start = 0
        while start < missing.count {
            let end = min(start + maxListItems, missing.count)
            try writer.send(.need(op: op, indices: Array(missing[start..<end])))
            start = end
        }
    }

    /// Keeps at most 32 temporary files open; older ones are closed and reopened on demand.
    private func noteOpen(_ op: UInt32) {
        openAssemblies.append(op)
        if openAssemblies.count > 32 {
            let old = openAssemblies.removeFirst()
            pending[old]?.assembly?.suspend()
        }
    }

    private func receiveChunk(_ file: PendingFile, _ assembly: FileAssembly, index: Int, compressed: Bool, rawLength: Int,
                              payload: [UInt8]) throws {
        guard index < assembly.chunks.count, Int(assembly.chunks[index].length) == rawLength else {
            throw ProtocolError("\(file.path!): chunk \(index) does not fit the file's chunk list")
        }
        do {
            if compressed {
                try payload.withUnsafeBytes { try decompressor.decompress($0, rawLength: rawLength, into: scratch) }
                try assembly.write(index: index, bytes: UnsafeRawBufferPointer(rebasing: scratch[0..<rawLength]))
            } else {
                guard payload.count == rawLength else { throw ProtocolError("\(file.path!): chunk \(index) length mismatch") }
                try payload.withUnsafeBytes { try assembly.write(index: index, bytes: $0) }
            }
        } catch let error as PlacementError {
            throw ProtocolError("\(error)")
        }
        if assembly.isComplete {
            do { try finish(file) } catch let error where error is SystemError || error is PlacementError || error is AgentError {
                pending[file.header.op] = nil
                try reply(file.header.op, .failed, "\(error)", .absent)
            }
        }
    }

    private struct ConflictAtPlacement: Error { let current: FileStat? }

    /// A file has all its chunks: check and seal it here, and hand it to `durability`; `commitSynced` renames it
    /// once it is durable.
    private func finish(_ file: PendingFile) throws {
        let header = file.header
        guard let assembly = file.assembly, let durability else { return }
        pending[header.op] = nil
        openAssemblies.removeAll { $0 == header.op }
        let alone = durability.syncsAlone(size: header.size, device: assembly.device)
        let part = try assembly.seal(permissions: header.permissions, mtimeNanos: header.mtimeNanos, startWriteback: alone)
        do {
            try durability.add(op: header.op, fd: part, size: header.size, device: assembly.device)
        } catch {
            assembly.suspend()
            throw error
        }
        sealed[header.op] = file
        // Renamed by name once durable; `durability` keeps a descriptor of its own where it needs one.
        assembly.suspend()
        if durability.outstanding >= Self.maxSyncs { try handle(durability.wait()) }
    }

    /// Sends the answers `progress` made durable, and renames the files it made durable.
    private func handle(_ progress: DurableBatches<OpResult>.Progress) throws {
        if !progress.answers.isEmpty { state.flushJournal() }
        for (answer, error) in progress.answers { try writer.send(.result(Self.answer(answer, syncError: error))) }
        try commitSynced(progress.durable)
    }

    /// `answer`, or a failure when the sync that was to make it durable failed (the change may not survive a crash;
    /// the next push compares again).
    private static func answer(_ answer: OpResult, syncError: Int32) -> OpResult {
        guard syncError != 0, answer.status == .applied else { return answer }
        return OpResult(op: answer.op, status: .failed, message: "the change could not be made durable: \(SystemError(call: "sync", path: "remote project", errno: syncError))",
                        current: .absent, keptAs: answer.keptAs)
    }

    /// Renames durable files into place; their answers go out once the renames are durable too.
    private func commitSynced(_ done: [(op: UInt32, error: Int32)]) throws {
        guard !done.isEmpty, let durability else { return }
        for completion in done {
            let op = completion.op
            guard let file = sealed.removeValue(forKey: op), let assembly = file.assembly else { continue }
            let header = file.header
            if completion.error != 0 {
                assembly.discard()
                durability.renamed(OpResult(op: op, status: .failed, message: "\(SystemError(call: "fsync", path: file.path.description, errno: completion.error))",
                                            current: .absent, keptAs: file.keptAs), directory: nil)
                continue
            }
            let parent: FileDescriptor?
            do {
                var stashed: ChunkID?
                parent = try assembly.commit(expectingNothing: file.targetStat == nil) { now in
                    let same = (now == nil && file.targetStat == nil)
                        || (now != nil && file.targetStat != nil && now!.sameContentIdentity(as: file.targetStat!) && now!.kind == file.targetStat!.kind)
                    if !same { throw ConflictAtPlacement(current: now) }
                    if let now, now.kind == .regular { stashed = self.stash(file.path, stat: now) }
                }
                if let stashed { refreshStash(stashed) }
            } catch is ConflictAtPlacement {
                assembly.discard()
                let (current, st) = (try? currentState(file.path)) ?? (.absent, nil)
                let isFile = st?.kind == .regular
                durability.renamed(OpResult(op: op, status: .conflict,
                                            message: "changed on the remote while the new version was being sent: the remote holds \(describe(current, st))",
                                            current: current, currentSize: isFile ? st!.size : 0, currentMtimeNanos: isFile ? st!.mtimeNanos : 0,
                                            keptAs: file.keptAs), directory: nil)
                continue
            } catch let error where error is SystemError || error is PlacementError || error is PathError {
                assembly.discard()
                durability.renamed(OpResult(op: op, status: .failed, message: describeFailure(error), current: .absent,
                                            keptAs: file.keptAs), directory: nil)
                continue
            }
            if let old = state.records[file.path] { store.remove(path: old.path, chunks: old.chunks) }
            if let st = try tree.lstat(file.path) {
                state.put(FileRecord(path: file.path, stat: st, digest: header.digest, chunks: assembly.chunks))
                store.add(path: file.path, chunks: assembly.chunks)
            }
            durability.renamed(OpResult(op: op, status: .applied, message: assembly.resumedCount > 0 ? "resumed \(assembly.resumedCount) chunks" : "",
                                        current: .file(header.digest), keptAs: file.keptAs),
                               directory: parent.map { (file.path.parentBytes, $0) })
        }
    }

    /// Makes the renames so far durable (an fsync per directory, or one of the file system) and sends their answers.
    private func syncDirectoriesAndAnswer() throws {
        guard let durability else { return }
        let answers = durability.flush()
        if !answers.isEmpty { state.flushJournal() }
        for (answer, error) in answers { try writer.send(.result(Self.answer(answer, syncError: error))) }
    }

    /// Called before the reader waits for input: while fsyncs are in flight, waits for whichever comes
    /// first, input or completed fsyncs, and places and answers for the latter, so the client never waits
    /// on answers the agent could give.
    ///
    /// Files sealed meanwhile are handed to `durability` when no sync is in flight (group commit): while one runs,
    /// the next batch fills, so a steady stream of small files costs one sync per batch, not one per pause.
    private func commitWhileIdle(alsoWaking extra: Int32? = nil) throws {
        guard let durability else { return }
        guard let input = stream.readinessFD else {
            durability.closeBatch()
            while durability.outstanding > 0 { try handle(durability.wait()) }
            return try syncDirectoriesAndAnswer()
        }
        while true {
            if durability.outstanding == 0 { durability.closeBatch() }
            let fetching = fetcher.map { $0.outstanding > 0 } ?? false
            if durability.outstanding == 0 && !fetching { return try syncDirectoriesAndAnswer() }
            var fds = [pollfd(fd: input, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: durability.completionFD, events: Int16(POLLIN), revents: 0)]
            if let fetcher { fds.append(pollfd(fd: fetcher.completionFD, events: Int16(POLLIN), revents: 0)) }
            if let extra { fds.append(pollfd(fd: extra, events: Int16(POLLIN), revents: 0)) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 && errno != EINTR { throw SystemError(call: "poll", path: "agent input", errno: errno) }
            try handle(durability.take())
            if let fetcher { try receiveFetched(fetcher.takeCompletions()) }
            if fds[0].revents != 0 || (extra != nil && fds.last!.revents != 0) { return }
        }
    }

    /// Extra connections one push may have at most.
    static let maxJoinedStreams = 8

    /// The next frame of a push, from this connection or, once the client asked for streams, from any joined
    /// one (`joined`). While neither has a frame, it does what `commitWhileIdle` does and sends the answers.
    private func nextPushMessage() throws -> (message: Message?, joined: Bool) {
        guard let streams = joinedStreams, let input = stream.readinessFD else { return (try reader.next(), false) }
        while true {
            if let message = try streams.take() { return (message, true) }
            if reader.hasBufferedFrame { return (try reader.next(), false) }
            notifyLock.lock()
            do {
                try commitWhileIdle(alsoWaking: streams.wakeFD)
                try writer.flush()
            } catch {
                notifyLock.unlock()
                throw error
            }
            notifyLock.unlock()
            if streams.hasQueued { continue }
            var fds = [pollfd(fd: input, events: Int16(POLLIN), revents: 0), pollfd(fd: streams.wakeFD, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, -1) < 0 && errno != EINTR { throw SystemError(call: "poll", path: "agent input", errno: errno) }
            if fds[0].revents == 0 { continue }
            return (try reader.next(), false)
        }
    }

    private func updateMetadata(_ path: RelativePath, _ st: FileStat, _ header: FileHeader) throws {
        guard st.permissions != header.permissions & 0o777 || st.mtimeNanos != header.mtimeNanos else { return }
        guard let parent = try tree.openParent(path, create: false) else { return }
        let file = try Tree.openFile(at: parent, name: path.name, flags: O_RDONLY, shown: path.description)
        try file.setPermissions(header.permissions & 0o777)
        try file.setModificationTime(header.mtimeNanos)
        if var record = state.records[path] {
            record.stat = try file.stat()
            state.put(record)
        }
    }

    private func applySymlink(_ op: UInt32, _ raw: [UInt8], _ target: [UInt8], _ base: PathState, force: Bool) throws {
        let path = try checkedPath(raw)
        if isPullPath(path) && !force { throw AgentError("\(path) is remote-owned (a pull path); push refused") }
        guard symlinkStaysInside(linkPath: path, target: target) else {
            throw PathError(path: path.description, reason: "symlink target \(displayPath(target)) points outside the project")
        }
        let (current, st) = try currentState(path)
        if current == .symlink(target) { return try reply(op, .unchanged, "", current) }
        var keptAs: [UInt8] = []
        if current != base {
            guard force, current != .absent else { return try replyConflict(op, path, current, st, base: base) }
            keptAs = try keepAside(path)
        }
        guard let parent = try tree.openParent(path, create: true) else { throw AgentError("cannot make the directory of \(path)") }
        try Tree.placeSymlink(at: parent, name: path.name, target: target, shown: path.description)
        if state.records[path] != nil { dropRecord(path) }
        try writer.send(.result(OpResult(op: op, status: .applied, message: "", current: .symlink(target), keptAs: keptAs)))
    }

    private func applyDirectory(_ op: UInt32, _ raw: [UInt8], _ permissions: UInt32, force: Bool) throws {
        let path = try checkedPath(raw)
        if isPullPath(path) && !pullPaths.contains(path) && !force {
            throw AgentError("\(path) is remote-owned (a pull path); push refused")
        }
        let (current, st) = try currentState(path)
        if current == .directory, let st {
            if st.permissions & 0o777 != permissions & 0o777, let dir = try tree.openDirectory(path, create: false) {
                try dir.setPermissions(permissions & 0o777)
                return try reply(op, .applied, "", .directory)
            }
            return try reply(op, .unchanged, "", .directory)
        }
        var keptAs: [UInt8] = []
        if current != .absent {
            guard force else { return try replyConflict(op, path, current, st, base: .absent, "a \(current) is in the way on the remote") }
            keptAs = try keepAside(path)
        }
        guard let dir = try tree.openDirectory(path, create: true) else { throw AgentError("cannot make \(path)") }
        try dir.setPermissions(permissions & 0o777)
        try writer.send(.result(OpResult(op: op, status: .applied, message: "", current: .directory, keptAs: keptAs)))
    }

    private func applyDelete(_ op: UInt32, _ raw: [UInt8], _ base: PathState, force: Bool) throws {
        let path = try checkedPath(raw)
        if isPullPath(path) && !force { throw AgentError("\(path) is remote-owned (a pull path); push refused") }
        let (current, st) = try currentState(path)
        if current == .absent { return try reply(op, .unchanged, "", .absent) }
        if current == .directory { tree.forgetDirectories() }
        guard let parent = try tree.openParent(path, create: false) else { return try reply(op, .unchanged, "", .absent) }
        if current != base {
            guard force else { return try replyConflict(op, path, current, st, base: base) }
            // Deleted here, changed there: the remote's version is kept under a conflict name.
            let keptAs = try keepAside(path)
            durability!.renamed(OpResult(op: op, status: .applied, message: "", current: .absent, keptAs: keptAs), directory: nil)
            return
        }
        if current == .directory {
            if withCName(path.name, { unlinkat(parent.raw, $0, AT_REMOVEDIR) }) != 0 {
                if errno == ENOTEMPTY || errno == EEXIST {
                    let names = (try? tree.openDirectory(path, create: false)).flatMap { $0 }.map { (try? Tree.list($0)) ?? [] } ?? []
                    let shown = names.prefix(3).map { displayPath($0.name) }.joined(separator: ", ")
                    return try replyConflict(op, path, .directory, st, base: base, "the directory holds files created on the remote (\(shown)); kept")
                }
                throw SystemError(call: "rmdir", path: path.description, errno: errno)
            }
        } else {
            var stashed: ChunkID?
            if let st = try Tree.lstat(at: parent, name: path.name, shown: path.description), st.kind == .regular { stashed = stash(path, stat: st) }
            try Tree.remove(at: parent, name: path.name, isDirectory: false, shown: path.description)
            if let stashed { refreshStash(stashed) }
        }
        dropRecord(path)
        // Durable, and answered, with the next sync of renames.
        durability!.renamed(OpResult(op: op, status: .applied, message: "", current: .absent), directory: (path.parentBytes, parent))
    }

    private func dropRecord(_ path: RelativePath) {
        if let old = state.records[path] { store.remove(path: old.path, chunks: old.chunks) }
        state.remove(path)
    }
}

/// A wall-clock time in nanoseconds, local time: `YYYY-MM-DD HH:MM:SS` for messages, or `YYYYMMDD-HHMMSS` (compact).
func formatTime(_ nanos: Int64, compact: Bool = false) -> String {
    var seconds = time_t(nanos / 1_000_000_000)
    var parts = tm()
    localtime_r(&seconds, &parts)
    func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
    let (d, t, between) = compact ? ("", "", "-") : ("-", ":", " ")
    return "\(parts.tm_year + 1900)\(d)\(two(parts.tm_mon + 1))\(d)\(two(parts.tm_mday))\(between)"
        + "\(two(parts.tm_hour))\(t)\(two(parts.tm_min))\(t)\(two(parts.tm_sec))"
}
