#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import ProjectScan
import Watch
import SyncSystem
import Transfer
import Wire

/// A fatal session error on the agent side; sent to the client as an error frame, then the agent exits.
public struct AgentError: Error, CustomStringConvertible {
    public let description: String
    /// Why, as the client is told it (`Message.error`).
    public let reason: ErrorReason
    init(_ text: String, reason: ErrorReason = .other) {
        description = text
        self.reason = reason
    }
}

/// One client session served over a byte stream: handshake, hello, then a push or a pull.
/// Frames are handled in arrival order on one thread, and replies are flushed before the agent waits for
/// input, so the client can keep many files in flight without a round trip per file. The only other threads
/// are the sync workers of `durability`: a finished file is sealed here, made durable there (in a batch with
/// others, see `DurableBatches`), and renamed into place here once it is.
public final class AgentSession {
    let stream: ByteStream

    let reader: FrameReader

    let writer: FrameWriter

    /// Makes sealed files durable before their renames, and renames durable before their answers; made for the
    /// project's tree when it is opened.
    var durability: DurableBatches<OpResult>?

    /// Syncs in flight at most (each holds a descriptor): a sixteenth of the descriptors this process may open,
    /// at most 256.
    static let maxSyncs = OpenFiles.budget(share: 1.0 / 16, most: 256)

    /// Temporary files held open at most while their chunks come (older ones are closed and reopened on demand).
    static let maxOpenAssemblies = OpenFiles.budget(share: 1.0 / 32, most: 32)

    /// Renames whose answers wait for durability with no batch to carry them are synced at this many.
    static let maxUnsyncedAnswers = 512

    let homeDirectory: String

    /// The project a session serves, opened by its hello: its tree, its state, and this agent's build session in
    /// it (its temporary files, apart from every other session's). A connection kept for many sessions keeps it.
    struct OpenedProject {
        let path: String
        let tree: Tree
        let state: AgentState
        let building: BuildSession
    }
    private var opened: OpenedProject?

    /// The open project: every session runs after its hello opened one.
    private var project: OpenedProject {
        guard let opened else { preconditionFailure("a session ran before its hello opened a project") }
        return opened
    }
    var tree: Tree { project.tree }
    var state: AgentState { project.state }
    var building: BuildSession { project.building }

    /// Where each chunk of a recorded file is, to copy it into new files: the record index's chunk keys.
    var held: HeldChunks {
        if let indexedHeld { return indexedHeld }
        let made = HeldChunks(tree: tree) { [state] in state.locate($0) }
        indexedHeld = made
        return made
    }
    private var indexedHeld: HeldChunks?

    var chunker = FileChunker()

    var pullPaths: [RelativePath] = []

    /// The stamp in the names of losing copies kept by forced operations (see `Hello.conflictStamp`).
    var conflictStamp = ""

    /// A pull that lists these paths instead of the pull paths (resolving conflicts); empty otherwise.
    var pullRoots: [RelativePath] = []

    /// Writes the chunks a push sends into their files.
    let chunkWriter = ChunkWriter()


    public init(stream: ByteStream, homeDirectory: String) {
        self.stream = stream
        reader = FrameReader(stream)
        writer = FrameWriter(stream)
        self.homeDirectory = homeDirectory
        reader.willBlock = { [unowned self] in
            try notifyLock.withLock {
                try commitWhileIdle()
                try writer.flush()
                try checkDraining()
            }
        }
    }

    deinit {
        durability?.shutdown()
    }

    /// Serves sessions until the client closes the connection between two of them. Errors are reported to the
    /// client (when it still listens) and rethrown; they end the connection.
    /// The session's timeout (`Hello.timeoutSeconds`): input that stays silent this long, or output the client
    /// does not take for this long, ends the connection, and with it this agent.
    var timeoutSeconds = Double(Hello.defaultTimeoutSeconds)

    /// Keeps the client sure this agent is alive while it works without a word (hashing, syncing).
    var heartbeat: Heartbeat?

    public func run() throws {
        stream.progressTimeout = timeoutSeconds
        defer { heartbeat?.stop() }
        do {
            try writer.writeHandshake()
            heartbeat = Heartbeat(writer: writer, timeoutSeconds: timeoutSeconds)
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
            heartbeat?.stop()
            // A stalled client would not read the account either: the link is given up at once.
            var told = false
            if !(error is StalledError) {
                let reason = (error as? AgentError)?.reason ?? (error is ProtocolError ? .protocolViolation : .other)
                told = (try? writer.send(.error(message: "\(error)", reason: reason))) != nil && (try? writer.flush()) != nil
            }
            durability?.shutdown()
            push.pending.values.forEach { $0.assembly?.suspend() }
            push.sealed.values.forEach { $0.assembly?.suspend() }
            try? opened?.state.save()
            // Told to the client, which prints it: not printed here a second time.
            throw told ? AgentReported(error: error) : error
        }
    }

    /// The largest file the client accepts (`Hello.maxFileSize`): a larger declared size is refused.
    var maxFileSize = Hello.defaultMaxFileSize

    /// The client of the session (`Hello.clientID`).
    var clientID = ""

    /// True when what is at `path` now counts as `base`, what the client believes is there: it is, or it is a
    /// file this very client placed and nobody changed since (the answer that placed it was lost to a kill or a
    /// cut, so the client's record still names what was there before).
    func matchesBase(_ base: PathState, _ current: PathState, _ path: RelativePath, _ st: FileStat?) -> Bool {
        if current == base { return true }
        guard !clientID.isEmpty, case .file(let digest) = current, let st, let record = state.record(at: path, chunks: false) else { return false }
        return record.digest == digest && record.placedBy == clientID && record.stat.sameContentIdentity(as: st)
    }

    func serve(_ hello: Hello) throws {
        clientID = hello.clientID
        maxFileSize = hello.maxFileSize
        timeoutSeconds = Double(hello.timeoutSeconds)
        stream.progressTimeout = timeoutSeconds
        heartbeat?.setTimeout(seconds: timeoutSeconds)
        try open(hello)
        switch hello.role {
        case .push: try servePush()
        case .pull:
            notifyLock.withLock {
                remoteDirty = false
                remoteChanges.removeAll()
            }
            // With a watcher, a file is known to be finished once it was closed and the watcher then saw nothing
            // for a while; without one, only its age tells. Resolving a conflict, the user chose the version there
            // now: only a file some process holds open for writing is left.
            let lister = PullLister(tree: tree, roots: pullRoots.isEmpty ? pullPaths : pullRoots,
                                    quietNanos: !pullRoots.isEmpty ? 0 : watcher == nil ? quietPeriodNanos : watchedQuietNanos,
                                    recordFor: { path, st in
                                        let r = try self.record(for: path, stat: st)
                                        return (r.digest, r.chunks)
                                    }, recordAll: { self.recordAll($0) })
            try servePull(lister, compress: hello.compress, compressAdaptively: hello.compressAdaptively)
            try state.save()
        }
    }

    var watcher: TreeWatcher?

    /// Guards the writer while a watch is on (the watcher thread sends `remoteChanged`), and the fields below.
    let notifyLock = Mutex()

    var watching = false

    var remoteDirty = false

    var remoteChanges: Set<RelativePath> = []

    /// Answers `watch`: reports completed remote-owned files as they come, until the client's `watchEnd`.
    func watchUntilEnded() throws {
        if watcher == nil {
            guard !pullPaths.isEmpty else { throw AgentError("watch: the project has no pull paths", reason: .cannotWatch) }
            let started = TreeWatcher(tree: tree, rules: IgnoreRules(), quietMillis: Self.watchQuietMillis, maxHoldMillis: 5000,
                                      scope: pullPaths, completedFilesOnly: true,
                                      log: { printError("syncd-agent: \($0)") }) { [unowned self] event in remoteEvent(event) }
            do { try started.start() } catch { throw AgentError("watch: cannot watch the pull paths: \(error)", reason: .cannotWatch) }
            watcher = started
            // Whatever was finished between the last pull and now went unseen: the client should look once.
            notifyLock.withLock {
                remoteDirty = true
            }
        }
        try notifyLock.withLock {
            watching = true
            try sendRemoteChangesLocked()
        }
        guard let message = try reader.next() else { return }
        guard case .watchEnd = message else {
            throw ProtocolError("expected watchEnd during a watch, got type 0x\(String(message.encode().type, radix: 16))")
        }
        try notifyLock.withLock {
            watching = false
            try writer.send(.watchEnded)
            try writer.flush()
        }
    }

    /// On the watcher's thread.
    func remoteEvent(_ event: WatchEvent) {
        notifyLock.withLock {
            if case .changed(let paths) = event {
                for p in paths where remoteChanges.count < maxNotifiedPaths { remoteChanges.insert(p) }
            }
            remoteDirty = true
            if watching { _ = try? sendRemoteChangesLocked() }
        }
    }

    func sendRemoteChangesLocked() throws {
        guard remoteDirty else { return }
        try writer.send(.remoteChanged(paths: remoteChanges.sorted().map(\.bytes)))
        try writer.flush()
        remoteDirty = false
        remoteChanges.removeAll()
    }

    func stopWatching() {
        watcher?.stop()
        watcher = nil
    }

    /// The watcher reports once nothing happened in the pull paths for this long.
    static let watchQuietMillis = 300

    /// A watched file last modified this long ago, and open for writing by no process, is offered by a pull.
    let watchedQuietNanos: Int64 = 250_000_000

    func open(_ hello: Hello) throws {
        let name = hello.project
        guard !name.isEmpty, !name.contains("/"), name != ".", name != "..", !name.utf8.contains(0) else {
            throw AgentError("project name '\(name)' is not a single directory name")
        }
        let root = hello.remoteRoot.isEmpty ? homeDirectory : hello.remoteRoot
        guard root.hasPrefix("/") else { throw AgentError("remote root '\(root)' is not an absolute path") }
        let projectPath = cleanPath(root + "/" + name)
        // A remote root that is not there is made, and the client is told: a typo in remote_root shows.
        var rootStat = stat()
        let createdRoot = lstat(root, &rootStat) != 0 && errno == ENOENT ? root : ""
        // A connection kept for many sessions keeps the project open between them, unless it was replaced or
        // another agent changed its state meanwhile.
        if projectPath != openProjectPath || !(isStillCurrent()) {
            stopWatching()
            // A pull from a remote nothing was pushed to makes nothing there, and says so.
            var st = stat()
            if hello.role == .pull && hello.expectInstance.isEmpty && lstat(projectPath, &st) != 0 && errno == ENOENT {
                throw AgentError("nothing has been pushed to \(projectPath) yet (push first; a pull makes nothing on the remote)")
            }
            opened = nil
            let tree = try Tree(rootPath: projectPath, create: true)
            // Out of descriptors: the temporary files held open are closed too (each reopens when next written).
            tree.onDescriptorShortage = (pthread_self(), { [unowned self] in
                for op in push.openAssemblies { push.pending[op]?.assembly?.suspend() }
                push.openAssemblies.removeAll()
            })
            durability?.shutdown()
            durability = try DurableBatches(fileSystem: tree.root)
            opened = OpenedProject(path: projectPath, tree: tree, state: try AgentState(project: tree), building: try Self.buildSession(in: tree))
            indexedHeld = nil
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
        // A push that expected another instance of this project (wiped or replaced since) is refused whole.
        if hello.role == .push {
            push = PushInProgress(refusing: !hello.expectInstance.isEmpty && hello.expectInstance != state.instance)
        }
        try writer.send(.welcome(agentVersion: syncdVersion, projectDirectory: projectPath, instance: state.instance,
                                 createdRoot: createdRoot))
    }

    var openProjectPath: String? { opened?.path }

    static func buildSession(in tree: Tree) throws -> BuildSession {
        let components = [Array(agentStateDirectoryName.utf8), Array("sessions".utf8)]
        guard let sessions = try tree.openDirectory(components, create: true) else {
            throw AgentError("cannot make \(agentStateDirectoryName)/sessions in \(tree.rootPath)")
        }
        return try BuildSession(sessionsIn: sessions, shown: tree.rootPath + "/" + agentStateDirectoryName + "/sessions")
    }

    func isStillCurrent() -> Bool {
        guard let tree = opened?.tree, let state = opened?.state, let root = try? tree.root.stat() else { return false }
        var now = stat()
        guard stat(tree.rootPath, &now) == 0, UInt64(now.st_dev) == root.device, UInt64(now.st_ino) == root.inode else { return false }
        return state.isCurrent()
    }

    /// Validates a path from the wire: relative, clean, outside `.syncd/`.
    func checkedPath(_ raw: [UInt8]) throws -> RelativePath {
        let path = try RelativePath(bytes: raw)
        if path.firstComponent.elementsEqual(agentStateDirectoryName.utf8) || path.nameHasPrefix(partialFilePrefix) {
            throw PathError(path: path.description, reason: "reserved for syncd's own state")
        }
        return path
    }

    /// The local time as `YYYYMMDD-HHMMSS`, for conflict copies when the client sent no stamp.
    static func stamp() -> String { formatTime(wallClockNanos(), compact: true) }

    func isPullPath(_ path: RelativePath) -> Bool { pullPaths.contains { path.isWithin($0) } }

    /// What is at `path` now; regular files are identified by digest (from the record when the stat is unchanged).
    func currentState(_ path: RelativePath) throws -> (PathState, FileStat?) {
        guard let st = try tree.lstat(path) else { return (.absent, nil) }
        switch st.kind {
        case .directory: return (.directory, st)
        case .symlink:
            guard let parent = try tree.openParent(path, create: false) else { return (.absent, nil) }
            return (.symlink(try Tree.readLink(at: parent, name: path.name, shown: path.description)), st)
        // Deciding whether a push may replace it: a record made in the same second as the file's last change is
        // checked by reading the file.
        case .regular: return (.file(try record(for: path, stat: st, trustRacy: false, chunks: false).digest), st)
        case .other: throw AgentError("\(path): not a regular file, directory or symlink on the remote; remove it by hand")
        }
    }

    /// Hashes, on several threads, those of `files` that have no record matching their stat and are too small to
    /// be hashed on several threads themselves, and records them here, so that `record(for:stat:)` then finds
    /// them. Many small files read from a cold cache otherwise wait on the disk one after another (a pull listed
    /// 20 000 new outputs in 4.1 s that way). A file that cannot be read, or changes while read, is left to
    /// `record(for:stat:)`.
    func recordAll(_ files: [(RelativePath, FileStat)]) {
        let missing = files.filter { path, st in
            st.size < FileChunker.parallelThreshold && !(state.record(at: path, chunks: false).map { $0.stat.sameContentIdentity(as: st) } ?? false)
        }
        guard missing.count > 1 else { return }
        let results = IndexedResults<(ChunkedContent, FileStat)>(count: missing.count)
        let parameters = chunker.cdc.parameters
        let tree: Tree = self.tree
        var threads: [pthread_t] = []
        for _ in 0..<min(missing.count, max(4, FileChunker.processors)) {
            let worker = {
                let chunker = FileChunker(parameters)
                while let i = results.claim() {
                    guard let fd = try? tree.openForReading(missing[i].0), let content = try? chunker.chunk(fd), let after = try? fd.stat()
                    else { continue }
                    results.set(i, (content, after))
                }
            }
            guard let thread = try? startThread(worker) else { break }
            threads.append(thread)
        }
        for thread in threads { pthread_join(thread, nil) }
        for (i, (path, st)) in missing.enumerated() {
            guard let (content, after) = results[i], after.sameContentIdentity(as: st) else { continue }
            replaceRecord(FileRecord(path: path, stat: after, digest: content.digest, chunks: content.chunks))
        }
    }

    /// The record for a regular file, re-hashing it when its stat identity changed (or, unless `trustRacy`, when
    /// the record is racy). Without `chunks`, a record found is returned with an empty chunk list (see
    /// `AgentState.record(at:chunks:)`).
    func record(for path: RelativePath, stat st: FileStat, trustRacy: Bool = true, chunks: Bool = true) throws -> FileRecord {
        let known = state.record(at: path, chunks: chunks)
        if let r = known, r.stat.sameContentIdentity(as: st), trustRacy || !r.isRacy { return r }
        let fd = try tree.openForReading(path)
        let content = try chunker.chunk(fd, threads: FileChunker.processors)
        let after = try fd.stat()
        var record = FileRecord(path: path, stat: after, digest: content.digest, chunks: content.chunks)
        // Hashed again (its stat changed, or the record was too fresh to trust), the same content is still what
        // its client placed.
        if let old = known, old.digest == record.digest { record.placedBy = old.placedBy }
        // A file modified while being read is not recorded, so it is hashed again next time.
        if after.sameContentIdentity(as: st) {
            replaceRecord(record)
        } else {
            held.willChange(path)
        }
        return record
    }

    // MARK: - The push in progress (served in AgentSession+Push.swift)

    final class PendingFile {
        /// A streamed file's gets its size, digest and chunk count from `fileEnd`.
        var header: FileHeader
        /// nil when the path was refused (or a streamed file was answered before its list ended): the chunk list
        /// is read and dropped.
        let path: RelativePath?

        /// The path of a file that was not refused: only those are checked, built and placed (a refused one is read
        /// and dropped), so this failing is this agent's mistake, said as such rather than a crash.
        func placedPath() throws -> RelativePath {
            guard let path else { throw AgentError("operation \(header.op) was refused, yet reached placing") }
            return path
        }
        /// The chunk list so far; a streamed file being built early keeps it in its assembly instead.
        var chunks: [ChunkRef] = []
        /// False while a streamed file's list is still coming; how many chunks it listed so far, and their bytes.
        var listEnded: Bool
        var listedCount = 0
        var listedBytes: UInt64 = 0
        /// A streamed file whose path holds what the client last saw: what it lacks is asked for as its list
        /// comes. Otherwise every answer waits for the digest at the end.
        var asksEarly = false
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
            listEnded = !header.streamed
        }
    }

    /// What belongs to the push being served, and to it alone: made new for each push.
    var push = PushInProgress(refusing: false)

    /// Reads from the store that fail without an answer this many times end reading from the store for the push.
    static let maxStoreFailures = 3
}

/// An error the session already sent to its client (an `error` frame): the client shows it, so the agent's own
/// stderr need not.
public struct AgentReported: Error, CustomStringConvertible {
    public let error: Error
    public var description: String { "\(error)" }
}
