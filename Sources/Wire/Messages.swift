import Chunking
import SyncSystem

/// Why a pull left a remote file for later, as the daemon decides on it (never by reading the words).
public enum SkipKind: UInt8, Sendable {
    case other = 0
    /// Modified within the quiet time, or open for writing: a pull soon after will find it whole.
    case beingWritten = 1
    /// Changed while the agent read it.
    case changedWhileRead = 2
}

/// Wire protocol version spoken by this build. Peers with another version are refused at the handshake.
public let wireVersion: UInt16 = 9

/// Hard limit on one frame (type byte plus payload). Larger length prefixes end the session unread.
public let maxFrameLength = 2 << 20

/// Most chunk refs or indices carried by one list frame; longer lists continue in further frames.
public let maxListItems = 32768

/// Most paths named by one `remoteChanged` frame.
public let maxNotifiedPaths = 64

/// Why a session ended in an error, carried with its message: the other side decides by this, never by the text.
public enum ErrorReason: UInt8, Sendable, Equatable {
    case other = 0
    /// The agent cannot watch the pull paths (no inotify here, or nothing to watch): pull on a timer instead.
    case cannotWatch = 1
    /// A frame broke the protocol.
    case protocolViolation = 2
}

/// What a session is for.
public enum SessionRole: UInt8, Sendable {
    case push = 1
    case pull = 2
}

/// What one side believes is (or was) at a path on the other side; used to detect conflicting changes.
public enum PathState: Equatable, Sendable, CustomStringConvertible {
    case absent
    case file(ChunkID)
    /// A symlink and its target (bytes, like names).
    case symlink([UInt8])
    case directory

    public var description: String {
        switch self {
        case .absent: return "absent"
        case .file(let id): return "file \(id.hex.prefix(12))"
        case .symlink(let t): return "symlink -> \(displayPath(t))"
        case .directory: return "directory"
        }
    }
}

/// The client's first frame.
public struct Hello: Equatable, Sendable {
    public var role: SessionRole
    /// Project name: the directory under the remote root.
    public var project: String
    /// Absolute remote root; empty means the agent user's home directory.
    public var remoteRoot: String
    /// Remote-owned paths, relative to the project.
    public var pullPaths: [String]
    public var chunkMin: UInt32
    public var chunkAvg: UInt32
    public var chunkMax: UInt32
    /// The remote instance id the client last synced with ("" when it knows none). A push whose expectation
    /// fails is refused whole by the agent, so the client may send operations before it sees the welcome.
    public var expectInstance: String
    /// Whether the agent should compress the chunks it sends (pulls): the client knows the link, the agent not.
    public var compress: Bool
    /// With `compress`: bulk data only while zlib runs faster than the link (`compress: auto`; see
    /// `ChunkSender.linkRate`). On the wire, the compress flag's value 2.
    public var compressAdaptively = false
    /// The time stamp (`YYYYMMDD-HHMMSS`, the client's local time) in the names of the losing copies that forced
    /// operations of this session keep (`NAME.sync-conflict-<stamp>.EXT`).
    public var conflictStamp: String
    /// A pull: list these paths (any path of the project, to resolve a conflict) instead of the pull paths.
    public var roots: [[UInt8]]
    /// How long either side may wait without a byte from the other before it gives the session up (`timeout:`);
    /// each side sends `heartbeat` when it has sent nothing for a quarter of it.
    public var timeoutSeconds: UInt32 = Hello.defaultTimeoutSeconds
    /// The largest file the client sends or takes (`max_file_size:`): a declared size beyond it is refused
    /// before it costs anything.
    public var maxFileSize: UInt64 = Hello.defaultMaxFileSize
    /// The client's id for this remote ("" when it has none): a file it placed itself and nobody changed since is
    /// no conflict, even when the answer that placed it never reached it.
    public var clientID: String = ""

    public static let defaultTimeoutSeconds: UInt32 = 60
    public static let maxTimeoutSeconds: UInt32 = 86_400
    public static let defaultMaxFileSize: UInt64 = 1 << 40

    public init(role: SessionRole, project: String, remoteRoot: String, pullPaths: [String], chunking: ChunkParameters,
                expectInstance: String = "", compress: Bool = true, conflictStamp: String = "", roots: [[UInt8]] = []) {
        self.role = role
        self.conflictStamp = conflictStamp
        self.roots = roots
        self.compress = compress
        self.expectInstance = expectInstance
        self.project = project
        self.remoteRoot = remoteRoot
        self.pullPaths = pullPaths
        chunkMin = UInt32(chunking.minSize)
        chunkAvg = UInt32(chunking.avgSize)
        chunkMax = UInt32(chunking.maxSize)
    }
}

/// Metadata of a file being sent: the path, its content digest and how many chunks follow in list frames.
public struct FileHeader: Equatable, Sendable {
    public var op: UInt32
    /// The path's bytes; the receiver validates them.
    public var path: [UInt8]
    public var permissions: UInt32
    public var mtimeNanos: Int64
    public var size: UInt64
    public var digest: ChunkID
    /// What the sender believes is at the path on the receiving side now (its last synced state).
    public var base: PathState
    public var chunkCount: UInt32
    /// The sender sends the data of every distinct chunk right after the chunk list, without waiting to be
    /// asked (small files the receiver is not known to hold: one round trip less). The receiver takes what it
    /// lacks and drops the rest; it sends no `need` for such a file.
    public var dataFollows: Bool
    /// When the path changed on the receiving side (a conflict), the receiver keeps what is there under a
    /// conflict name beside it and places this file anyway (`resolve --keep local`, `push --force`). Allowed
    /// on pull paths too: the user chose the local version of a remote-owned file.
    public var force: Bool
    /// The sender cuts the file while it sends it (a large file, read once): `digest` and `chunkCount` are not
    /// known yet (zero) and `size` is what the file's stat said. The chunk list follows in frames as the file is
    /// cut, the receiver answers each list frame with a `need` (see there), and `fileEnd` ends the list with the
    /// real size, digest and count (or `abort` gives the file up).
    public var streamed: Bool

    public init(op: UInt32, path: [UInt8], permissions: UInt32, mtimeNanos: Int64, size: UInt64, digest: ChunkID,
                base: PathState, chunkCount: UInt32, dataFollows: Bool = false, force: Bool = false, streamed: Bool = false) {
        self.dataFollows = dataFollows
        self.streamed = streamed
        self.force = force
        self.op = op
        self.path = path
        self.permissions = permissions
        self.mtimeNanos = mtimeNanos
        self.size = size
        self.digest = digest
        self.base = base
        self.chunkCount = chunkCount
    }
}

/// How an operation ended on the receiving side.
public enum OpStatus: UInt8, Sendable {
    /// The change was made.
    case applied = 0
    /// The receiver already had it; nothing was written.
    case unchanged = 1
    /// The path changed on the receiving side since the last sync; left alone.
    case conflict = 2
    /// The operation could not be done (message says why); the session goes on.
    case failed = 3
}

/// The answer to one operation.
public struct OpResult: Equatable, Sendable {
    public var op: UInt32
    public var status: OpStatus
    public var message: String
    /// What is at the path on the receiving side after the operation.
    public var current: PathState
    /// Size and modification time of `current` when it is a file (0 otherwise): what a conflict report shows.
    public var currentSize: UInt64
    public var currentMtimeNanos: Int64
    /// A forced operation: the name (in the same directory) under which the losing version was kept; empty when
    /// nothing was in the way.
    public var keptAs: [UInt8]

    public init(op: UInt32, status: OpStatus, message: String, current: PathState, currentSize: UInt64 = 0,
                currentMtimeNanos: Int64 = 0, keptAs: [UInt8] = []) {
        self.op = op
        self.status = status
        self.message = message
        self.current = current
        self.currentSize = currentSize
        self.currentMtimeNanos = currentMtimeNanos
        self.keptAs = keptAs
    }
}

/// One remote-owned entry offered by the agent during a pull; a file's chunk list follows in list frames.
public struct RemoteEntry: Equatable, Sendable {
    public var op: UInt32
    public var path: [UInt8]
    public var state: PathState
    public var permissions: UInt32
    public var mtimeNanos: Int64
    public var size: UInt64
    public var chunkCount: UInt32

    public init(op: UInt32, path: [UInt8], state: PathState, permissions: UInt32, mtimeNanos: Int64, size: UInt64,
                chunkCount: UInt32) {
        self.op = op
        self.path = path
        self.state = state
        self.permissions = permissions
        self.mtimeNanos = mtimeNanos
        self.size = size
        self.chunkCount = chunkCount
    }
}

/// A pack of the snapshot store a push may fetch chunks from: its digest, and a URL that reads it (presigned:
/// no credential travels).
public struct StorePack: Equatable, Sendable {
    public var digest: ChunkID
    public var url: String
    public init(digest: ChunkID, url: String) {
        self.digest = digest
        self.url = url
    }
}

/// Where the store holds a chunk: pack number (in the order of `storePacks`), offset, stored and raw length.
public struct StoreChunk: Equatable, Sendable {
    public var id: ChunkID
    public var pack: UInt32
    public var offset: UInt64
    public var storedLength: UInt32
    public var rawLength: UInt32
    public var compressed: Bool
    public init(id: ChunkID, pack: UInt32, offset: UInt64, storedLength: UInt32, rawLength: UInt32, compressed: Bool) {
        self.id = id
        self.pack = pack
        self.offset = offset
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.compressed = compressed
    }
}

/// Chunks a push may have the agent read from the snapshot store rather than send them over the link: the
/// store's name, its packs with URLs the agent can read (presigned), and where each chunk is.
public struct StoreSource: Sendable {
    public var name: String
    public var packs: [StorePack]
    public var chunks: [ChunkID: StoreChunk]
    /// Empty when the pack URLs are presigned; else the store's region, and the host signs its requests with
    /// credentials of its own (`host_credentials: own`).
    public var signingRegion: String

    public init(name: String, packs: [StorePack], chunks: [ChunkID: StoreChunk], signingRegion: String = "") {
        self.name = name
        self.packs = packs
        self.chunks = chunks
        self.signingRegion = signingRegion
    }
}

/// A push the host works out for itself (`applySnapshot`): which snapshot to materialize and what the last sync
/// left there, so that the link carries a few hundred bytes whatever the project's size. The host reads both
/// manifests and the packs' indexes from the store, walks them in path order beside its own tree, and makes every
/// change the push would have sent, each checked against `base` as a sent operation is.
///
/// Objects are named by digest (their keys follow from it, `StoreKeys`) and a 32-byte signature each: every URL
/// is `urlHead` + key, then, when `urlQuery` is not empty (presigned), `?` + `urlQuery` + `&X-Amz-Signature=` + the
/// signature in hex. So a pack costs 80 bytes, not two URLs of 400.
public struct SnapshotApply: Equatable, Sendable {
    /// An object of the store the host reads: its digest, and the signature of its presigned URL (empty: plain).
    public struct Object: Equatable, Sendable {
        public var digest: ChunkID
        public var signature: [UInt8]
        public init(digest: ChunkID, signature: [UInt8]) {
            self.digest = digest
            self.signature = signature
        }
    }

    /// `s3://bucket/prefix`, for messages.
    public var store: String
    /// As in `storePacks`: empty when the URLs are presigned.
    public var signingRegion: String
    /// The URL of an object up to its key (`http://host:port/bucket/prefix/`), and the presigned query without the
    /// signature (empty for plain URLs, `host_credentials: own`).
    public var urlHead: String
    public var urlQuery: String
    /// The snapshot to materialize (its manifest).
    public var manifest: Object
    /// What the host held after the last sync, as a snapshot it applied; nil when nothing was synced to it.
    public var base: Object?
    /// The packs holding the chunks the host may need: each pack's digest and signature, and its index's signature.
    public var packs: [Object]
    public var indexes: [[UInt8]]
    /// Paths whose last-synced state is not the base snapshot's: that state, or nil for a path to leave alone
    /// (pushed earlier, ignored now and not pruned). In path order.
    public var exceptions: [(path: [UInt8], state: PathState?)]
    public var force: Bool

    /// The URL of the object at `key` whose signature is `signature`.
    public func url(_ key: String, signature: [UInt8]) -> String {
        guard !urlQuery.isEmpty else { return urlHead + key }
        let hex = signature.map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined()
        return urlHead + key + "?" + urlQuery + "&X-Amz-Signature=" + hex
    }

    public init(store: String, signingRegion: String, urlHead: String, urlQuery: String, manifest: Object, base: Object?, packs: [Object],
                indexes: [[UInt8]], exceptions: [(path: [UInt8], state: PathState?)], force: Bool) {
        self.store = store
        self.signingRegion = signingRegion
        self.urlHead = urlHead
        self.urlQuery = urlQuery
        self.manifest = manifest
        self.base = base
        self.packs = packs
        self.indexes = indexes
        self.exceptions = exceptions
        self.force = force
    }

    public static func == (a: SnapshotApply, b: SnapshotApply) -> Bool {
        a.store == b.store && a.signingRegion == b.signingRegion && a.urlHead == b.urlHead && a.urlQuery == b.urlQuery
            && a.manifest == b.manifest && a.base == b.base && a.packs == b.packs
            && a.indexes == b.indexes && a.force == b.force && a.exceptions.count == b.exceptions.count
            && zip(a.exceptions, b.exceptions).allSatisfy { $0.path == $1.path && $0.state == $1.state }
    }
}

/// What an `applySnapshot` did: counts, and each operation that did not simply apply (a conflict, a failure, a
/// forced one whose loser was kept) with its path.
public struct ApplySummary: Equatable, Sendable {
    public var applied: UInt32 = 0
    public var unchanged: UInt32 = 0
    public var deleted: UInt32 = 0
    public var bytesPlaced: UInt64 = 0
    public var others: [(path: [UInt8], result: OpResult)] = []
    /// Set when the host could not read the snapshot, its base or a pack's index from the store (why): nothing was
    /// applied, and the client pushes to it the usual way.
    public var unreadable = ""

    public init() {}

    public static func == (a: ApplySummary, b: ApplySummary) -> Bool {
        a.applied == b.applied && a.unchanged == b.unchanged && a.deleted == b.deleted && a.bytesPlaced == b.bytesPlaced && a.unreadable == b.unreadable
            && a.others.count == b.others.count && zip(a.others, b.others).allSatisfy { $0.path == $1.path && $0.result == $1.result }
    }
}

/// Most chunk places in one `storeChunks` frame.
public let maxStoreChunks = 32768

/// Every frame of the protocol.
///
/// A connection carries one session after another (hello … done), as long as the client keeps it open; the
/// daemon keeps one per project. Between sessions the client may send `watch`: the agent then watches the
/// pull paths and says `remoteChanged` when files there were completed (closed after writing, then quiet),
/// until the client sends `watchEnd`, answered by `watchEnded`, after which the next hello may follow.
public enum Message: Equatable, Sendable {
    case hello(Hello)
    /// Agent's answer to hello: its version and the absolute project directory it serves.
    /// `instance` names this copy of the remote project: it changes when the project directory is wiped or replaced.
    /// `createdRoot`: the remote root, when this session had to make it (it did not exist); empty otherwise.
    case welcome(agentVersion: String, projectDirectory: String, instance: String, createdRoot: String = "")
    case fileBegin(FileHeader)
    /// Part of the chunk list of file `op` (push: sender's file; pull: remote entry).
    case chunkList(op: UInt32, chunks: [ChunkRef])
    /// The end of a streamed file's chunk list (`FileHeader.streamed`): the file as it was cut.
    case fileEnd(op: UInt32, size: UInt64, digest: ChunkID, chunkCount: UInt32)
    /// One chunk's bytes, zlib (raw deflate) compressed when `compressed`.
    case chunkData(op: UInt32, index: UInt32, compressed: Bool, rawLength: UInt32, payload: [UInt8])
    /// The sender gives up on file `op` (it changed while being read, say).
    case abort(op: UInt32, reason: String)
    /// Path operations; `force` as in `FileHeader.force`.
    case symlink(op: UInt32, path: [UInt8], target: [UInt8], base: PathState, force: Bool)
    case directory(op: UInt32, path: [UInt8], permissions: UInt32, force: Bool)
    case delete(op: UInt32, path: [UInt8], base: PathState, force: Bool)
    /// The client has sent every operation of this push.
    case endOfOperations
    /// The agent lacks these chunks (indices into the file's chunk list). Each list frame of a streamed file is
    /// answered with exactly one, empty when nothing of it is wanted, before any other `need` of that file: the
    /// client keeps a part's bytes until then.
    case need(op: UInt32, indices: [UInt32])
    case result(OpResult)
    /// The session's work is complete; the side receiving it may close.
    case done
    case remoteEntry(RemoteEntry)
    /// A remote-owned file that was not offered, why in words (for a person) and by kind (for a program).
    case skipped(path: [UInt8], reason: String, kind: SkipKind = .other)
    case listEnd
    /// The client asks for these chunks of remote entry `op`.
    case fetch(op: UInt32, indices: [UInt32])
    case fetchEnd
    /// Between sessions: tell me when remote-owned files change (see the type's comment).
    case watch
    /// Remote-owned paths completed since the last pull (at most `maxNotifiedPaths`; more may have changed).
    case remoteChanged(paths: [[UInt8]])
    /// The client ends a `watch`; the agent answers `watchEnded` once nothing more of the watch will come.
    case watchEnd
    case watchEnded
    /// A push that may take chunks from the snapshot store instead of the link (after hello, before the
    /// operations): `store` names it in messages (`s3://bucket/prefix`), then its packs, in as many frames as
    /// they need; `storeChunks` frames say where each chunk is. The agent reads what it lacks from there, checks
    /// every chunk, and asks the client (`need`) only for chunks the store does not hold. `signingRegion` is
    /// empty when the pack URLs are presigned, else the region to sign them in with the host's own credentials.
    case storePacks(store: String, signingRegion: String, packs: [StorePack])
    case storeChunks([StoreChunk])
    /// Instead of operations (after hello; `endOfOperations` follows): the host works out the push itself from the
    /// store (see `SnapshotApply`), and answers `applied` before `done` rather than a `result` per operation.
    /// `storeTrouble` frames may come first; a chunk the store cannot give fails its file. `applied` comes in as
    /// many frames as its outcomes need (`maxListItems` at most each); their counts add up.
    case applySnapshot(SnapshotApply)
    case applied(ApplySummary)
    /// The agent could not use the store for part of a push, and asks the client (`need`) for those chunks
    /// instead. `damaged`: chunks of `pack` that the store served altered or cut short (the client uploads them
    /// again). `unreachable`: a read got no usable answer (no connection, a stall, an error status); after a few the
    /// agent stops reading from the store for the rest of the push, and says so (`pack` and `damaged` then say
    /// nothing). Sent before the `need` for those chunks. `reason` names the object and what went wrong.
    case storeTrouble(unreachable: Bool, pack: ChunkID, damaged: [ChunkID], reason: String)
    /// Streams (a push with much to send): the client asks for up to `count` more connections to carry chunk
    /// data beside this one, so the encryption of a large push is spread over several sshd processes and client
    /// threads. The agent answers `streamsReady` with where a joining agent finds it and the token a joining
    /// connection presents (`join`, its first frame after the handshake). A joined stream carries only
    /// `chunkData` asked for by `need`; every other frame stays on this connection, and data that comes after
    /// its file was given up is dropped.
    case streamsOpen(count: UInt8)
    case streamsReady(address: String, token: [UInt8])
    case join(token: [UInt8])
    /// A fatal error, and why (a reason the other side decides by; the message is for a person); the sender
    /// closes after it.
    case error(message: String, reason: ErrorReason)
    /// Sent by either side when it has sent nothing for a while (see `Hello.timeoutSeconds`): proof that it and
    /// the link are alive. Readers skip it (`FrameReader` never returns it).
    case heartbeat
}
