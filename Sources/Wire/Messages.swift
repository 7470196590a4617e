import Chunking
import SyncSystem

/// Wire protocol version spoken by this build. Peers with another version are refused at the handshake.
public let wireVersion: UInt16 = 4

/// Hard limit on one frame (type byte plus payload). Larger length prefixes end the session unread.
public let maxFrameLength = 2 << 20

/// Most chunk refs or indices carried by one list frame; longer lists continue in further frames.
public let maxListItems = 32768

/// Most paths named by one `remoteChanged` frame.
public let maxNotifiedPaths = 64

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
    /// The time stamp (`YYYYMMDD-HHMMSS`, the client's local time) in the names of the losing copies that forced
    /// operations of this session keep (`NAME.sync-conflict-<stamp>.EXT`).
    public var conflictStamp: String
    /// A pull: list these paths (any path of the project, to resolve a conflict) instead of the pull paths.
    public var roots: [[UInt8]]

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

    public init(op: UInt32, path: [UInt8], permissions: UInt32, mtimeNanos: Int64, size: UInt64, digest: ChunkID,
                base: PathState, chunkCount: UInt32, dataFollows: Bool = false, force: Bool = false) {
        self.dataFollows = dataFollows
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
    case welcome(agentVersion: String, projectDirectory: String, instance: String)
    case fileBegin(FileHeader)
    /// Part of the chunk list of file `op` (push: sender's file; pull: remote entry).
    case chunkList(op: UInt32, chunks: [ChunkRef])
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
    /// The agent lacks these chunks (indices into the file's chunk list).
    case need(op: UInt32, indices: [UInt32])
    case result(OpResult)
    /// The session's work is complete; the side receiving it may close.
    case done
    case remoteEntry(RemoteEntry)
    /// A remote-owned file that was not offered because it is being written.
    case skipped(path: [UInt8], reason: String)
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
    /// Streams (a push with much to send): the client asks for up to `count` more connections to carry chunk
    /// data beside this one, so the encryption of a large push is spread over several sshd processes and client
    /// threads. The agent answers `streamsReady` with where a joining agent finds it and the token a joining
    /// connection presents (`join`, its first frame after the handshake). A joined stream carries only
    /// `chunkData` asked for by `need`; every other frame stays on this connection, and data that comes after
    /// its file was given up is dropped.
    case streamsOpen(count: UInt8)
    case streamsReady(address: String, token: [UInt8])
    case join(token: [UInt8])
    /// A fatal error; the sender closes after it.
    case error(message: String)

    var typeByte: UInt8 {
        switch self {
        case .hello: return 0x01
        case .welcome: return 0x02
        case .fileBegin: return 0x10
        case .chunkList: return 0x11
        case .chunkData: return 0x12
        case .abort: return 0x13
        case .symlink: return 0x14
        case .directory: return 0x15
        case .delete: return 0x16
        case .endOfOperations: return 0x17
        case .need: return 0x30
        case .result: return 0x31
        case .done: return 0x32
        case .remoteEntry: return 0x40
        case .skipped: return 0x42
        case .listEnd: return 0x43
        case .fetch: return 0x44
        case .fetchEnd: return 0x45
        case .watch: return 0x50
        case .remoteChanged: return 0x51
        case .watchEnd: return 0x52
        case .watchEnded: return 0x53
        case .storePacks: return 0x60
        case .storeChunks: return 0x61
        case .streamsOpen: return 0x18
        case .streamsReady: return 0x33
        case .join: return 0x03
        case .error: return 0x7F
        }
    }

    /// Type byte and payload of this message.
    public func encode() -> (type: UInt8, payload: [UInt8]) {
        var w = PayloadWriter()
        switch self {
        case .hello(let h):
            w.u8(h.role.rawValue)
            w.string(h.project)
            w.string(h.remoteRoot)
            w.u32(UInt32(h.pullPaths.count))
            for p in h.pullPaths { w.string(p) }
            w.u32(h.chunkMin); w.u32(h.chunkAvg); w.u32(h.chunkMax)
            w.string(h.expectInstance)
            w.u8(h.compress ? 1 : 0)
            w.string(h.conflictStamp)
            w.u32(UInt32(h.roots.count))
            for r in h.roots { w.byteString(r) }
        case .welcome(let version, let dir, let instance):
            w.string(version); w.string(dir); w.string(instance)
        case .fileBegin(let f):
            w.u32(f.op); w.byteString(f.path); w.u32(f.permissions); w.i64(f.mtimeNanos); w.u64(f.size); w.id(f.digest)
            Message.encode(f.base, into: &w)
            w.u32(f.chunkCount)
            w.u8((f.dataFollows ? 1 : 0) | (f.force ? 2 : 0))
        case .chunkList(let op, let chunks):
            w.u32(op); w.u32(UInt32(chunks.count))
            for c in chunks { w.id(c.id); w.u32(c.length) }
        case .chunkData(let op, let index, let compressed, let rawLength, let payload):
            w.u32(op); w.u32(index); w.u8(compressed ? 1 : 0); w.u32(rawLength); w.raw(payload)
        case .abort(let op, let reason):
            w.u32(op); w.string(reason)
        case .symlink(let op, let path, let target, let base, let force):
            w.u32(op); w.byteString(path); w.byteString(target); Message.encode(base, into: &w); w.u8(force ? 1 : 0)
        case .directory(let op, let path, let permissions, let force):
            w.u32(op); w.byteString(path); w.u32(permissions); w.u8(force ? 1 : 0)
        case .delete(let op, let path, let base, let force):
            w.u32(op); w.byteString(path); Message.encode(base, into: &w); w.u8(force ? 1 : 0)
        case .endOfOperations, .done, .listEnd, .fetchEnd, .watch, .watchEnd, .watchEnded:
            break
        case .storePacks(let store, let signingRegion, let packs):
            w.string(store)
            w.string(signingRegion)
            w.u32(UInt32(packs.count))
            for p in packs { w.id(p.digest); w.string(p.url) }
        case .storeChunks(let chunks):
            w.u32(UInt32(chunks.count))
            for c in chunks {
                w.id(c.id); w.u32(c.pack); w.u64(c.offset); w.u32(c.storedLength); w.u32(c.rawLength); w.u8(c.compressed ? 1 : 0)
            }
        case .remoteChanged(let paths):
            w.u32(UInt32(paths.count))
            for p in paths { w.byteString(p) }
        case .need(let op, let indices), .fetch(let op, let indices):
            w.u32(op); w.u32(UInt32(indices.count))
            for i in indices { w.u32(i) }
        case .result(let r):
            w.u32(r.op); w.u8(r.status.rawValue); w.string(r.message); Message.encode(r.current, into: &w)
            w.u64(r.currentSize); w.i64(r.currentMtimeNanos); w.byteString(r.keptAs)
        case .remoteEntry(let e):
            w.u32(e.op); w.byteString(e.path); Message.encode(e.state, into: &w); w.u32(e.permissions); w.i64(e.mtimeNanos)
            w.u64(e.size); w.u32(e.chunkCount)
        case .skipped(let path, let reason):
            w.byteString(path); w.string(reason)
        case .streamsOpen(let count):
            w.u8(count)
        case .streamsReady(let address, let token):
            w.string(address); w.byteString(token)
        case .join(let token):
            w.byteString(token)
        case .error(let message):
            w.string(message)
        }
        return (typeByte, w.bytes)
    }

    static func encode(_ state: PathState, into w: inout PayloadWriter) {
        switch state {
        case .absent: w.u8(0)
        case .file(let id): w.u8(1); w.id(id)
        case .symlink(let target): w.u8(2); w.byteString(target)
        case .directory: w.u8(3)
        }
    }

    static func decodeState(_ r: inout PayloadReader) throws -> PathState {
        switch try r.u8("state tag") {
        case 0: return .absent
        case 1: return .file(try r.id("state digest"))
        case 2: return .symlink(try r.byteString("symlink target"))
        case 3: return .directory
        case let tag: throw ProtocolError("unknown path state tag \(tag)")
        }
    }

    static func decodeFlag(_ r: inout PayloadReader) throws -> Bool {
        let flag = try r.u8("force flag")
        guard flag <= 1 else { throw ProtocolError("unknown force flag \(flag)") }
        return flag == 1
    }

    /// Decodes one frame. Throws `ProtocolError` for unknown types, truncation, bad UTF-8 or trailing bytes.
    public static func decode(type: UInt8, payload: UnsafeRawBufferPointer) throws -> Message {
        let name = "type 0x" + String(type, radix: 16)
        var r = PayloadReader(payload, frame: name)
        let message: Message
        switch type {
        case 0x01:
            guard let role = SessionRole(rawValue: try r.u8("role")) else { throw ProtocolError("hello: unknown session role") }
            let project = try r.string("project")
            let root = try r.string("remote root")
            let n = try r.count("pull paths", itemSize: 4, limit: 1024)
            var paths: [String] = []
            for _ in 0..<n { paths.append(try r.string("pull path")) }
            var h = Hello(role: role, project: project, remoteRoot: root, pullPaths: paths, chunking: .default)
            h.chunkMin = try r.u32("chunk min"); h.chunkAvg = try r.u32("chunk avg"); h.chunkMax = try r.u32("chunk max")
            h.expectInstance = try r.string("expected instance")
            h.compress = try r.u8("compress flag") != 0
            h.conflictStamp = try r.string("conflict stamp", limit: 64)
            let roots = try r.count("roots", itemSize: 4, limit: 65536)
            for _ in 0..<roots { h.roots.append(try r.byteString("root")) }
            message = .hello(h)
        case 0x02:
            message = .welcome(agentVersion: try r.string("agent version"), projectDirectory: try r.string("project directory"),
                               instance: try r.string("instance"))
        case 0x10:
            let op = try r.u32("op")
            let path = try r.byteString("path")
            let perms = try r.u32("permissions")
            let mtime = try r.i64("mtime")
            let size = try r.u64("size")
            let digest = try r.id("digest")
            let base = try decodeState(&r)
            let count = try r.u32("chunk count")
            let flags = try r.u8("flags")
            guard flags <= 3 else { throw ProtocolError("file header: unknown flags \(flags)") }
            message = .fileBegin(FileHeader(op: op, path: path, permissions: perms, mtimeNanos: mtime, size: size,
                                            digest: digest, base: base, chunkCount: count, dataFollows: flags & 1 != 0,
                                            force: flags & 2 != 0))
        case 0x11:
            let op = try r.u32("op")
            let n = try r.count("chunks", itemSize: 20, limit: maxListItems)
            var chunks: [ChunkRef] = []
            chunks.reserveCapacity(n)
            for _ in 0..<n {
                let id = try r.id("chunk id")
                chunks.append(ChunkRef(id: id, offset: 0, length: try r.u32("chunk length")))
            }
            message = .chunkList(op: op, chunks: chunks)
        case 0x12:
            let op = try r.u32("op")
            let index = try r.u32("index")
            let flags = try r.u8("flags")
            guard flags <= 1 else { throw ProtocolError("chunk data: unknown flags \(flags)") }
            let rawLength = try r.u32("raw length")
            guard rawLength <= UInt32(ChunkParameters.largestMaxSize) else {
                throw ProtocolError("chunk data: raw length \(rawLength) exceeds the largest chunk size")
            }
            message = .chunkData(op: op, index: index, compressed: flags == 1, rawLength: rawLength, payload: r.rest())
        case 0x13:
            message = .abort(op: try r.u32("op"), reason: try r.string("reason"))
        case 0x14:
            message = .symlink(op: try r.u32("op"), path: try r.byteString("path"), target: try r.byteString("target"),
                               base: try decodeState(&r), force: try decodeFlag(&r))
        case 0x15:
            message = .directory(op: try r.u32("op"), path: try r.byteString("path"), permissions: try r.u32("permissions"),
                                 force: try decodeFlag(&r))
        case 0x16:
            message = .delete(op: try r.u32("op"), path: try r.byteString("path"), base: try decodeState(&r),
                              force: try decodeFlag(&r))
        case 0x17: message = .endOfOperations
        case 0x30, 0x44:
            let op = try r.u32("op")
            let n = try r.count("indices", itemSize: 4, limit: maxListItems)
            var indices: [UInt32] = []
            indices.reserveCapacity(n)
            for _ in 0..<n { indices.append(try r.u32("index")) }
            message = type == 0x30 ? .need(op: op, indices: indices) : .fetch(op: op, indices: indices)
        case 0x31:
            let op = try r.u32("op")
            guard let status = OpStatus(rawValue: try r.u8("status")) else { throw ProtocolError("result: unknown status") }
            let text = try r.string("message", limit: 65536)
            let current = try decodeState(&r)
            message = .result(OpResult(op: op, status: status, message: text, current: current, currentSize: try r.u64("size"),
                                       currentMtimeNanos: try r.i64("mtime"), keptAs: try r.byteString("kept as", limit: 255)))
        case 0x32: message = .done
        case 0x40:
            let op = try r.u32("op")
            let path = try r.byteString("path")
            let state = try decodeState(&r)
            message = .remoteEntry(RemoteEntry(op: op, path: path, state: state, permissions: try r.u32("permissions"),
                                               mtimeNanos: try r.i64("mtime"), size: try r.u64("size"),
                                               chunkCount: try r.u32("chunk count")))
        case 0x42: message = .skipped(path: try r.byteString("path"), reason: try r.string("reason"))
        case 0x43: message = .listEnd
        case 0x45: message = .fetchEnd
        case 0x50: message = .watch
        case 0x51:
            let n = try r.count("changed paths", itemSize: 4, limit: maxNotifiedPaths)
            var paths: [[UInt8]] = []
            for _ in 0..<n { paths.append(try r.byteString("changed path")) }
            message = .remoteChanged(paths: paths)
        case 0x52: message = .watchEnd
        case 0x53: message = .watchEnded
        case 0x60:
            let store = try r.string("store", limit: 4096)
            let signingRegion = try r.string("signing region", limit: 256)
            let n = try r.count("store packs", itemSize: 20, limit: maxListItems)
            var packs: [StorePack] = []
            packs.reserveCapacity(n)
            for _ in 0..<n { packs.append(StorePack(digest: try r.id("pack digest"), url: try r.string("pack url", limit: 16384))) }
            message = .storePacks(store: store, signingRegion: signingRegion, packs: packs)
        case 0x61:
            let n = try r.count("store chunks", itemSize: 37, limit: maxStoreChunks)
            var chunks: [StoreChunk] = []
            chunks.reserveCapacity(n)
            for _ in 0..<n {
                let id = try r.id("chunk id")
                let pack = try r.u32("pack")
                let offset = try r.u64("offset")
                let stored = try r.u32("stored length")
                let raw = try r.u32("raw length")
                let flag = try r.u8("flags")
                guard flag <= 1, raw <= UInt32(ChunkParameters.largestMaxSize) else { throw ProtocolError("store chunk: bad flags or length") }
                chunks.append(StoreChunk(id: id, pack: pack, offset: offset, storedLength: stored, rawLength: raw, compressed: flag == 1))
            }
            message = .storeChunks(chunks)
        case 0x18: message = .streamsOpen(count: try r.u8("stream count"))
        case 0x33: message = .streamsReady(address: try r.string("stream address", limit: 100), token: try r.byteString("stream token", limit: 64))
        case 0x03: message = .join(token: try r.byteString("stream token", limit: 64))
        case 0x7F: message = .error(message: try r.string("message", limit: 65536))
        default:
            throw ProtocolError("unknown frame type 0x\(String(type, radix: 16))")
        }
        try r.finish()
        return message
    }
}
