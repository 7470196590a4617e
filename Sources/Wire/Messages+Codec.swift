import Chunking
import SyncSystem

// Every frame's type byte and payload layout: encoding, and decoding through bounds-checked reads.
extension Message {
    var typeByte: UInt8 {
        switch self {
        case .hello: return 0x01
        case .welcome: return 0x02
        case .fileBegin: return 0x10
        case .chunkList: return 0x11
        case .chunkData: return 0x12
        case .fileEnd: return 0x19
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
        case .storeTrouble: return 0x62
        case .applySnapshot: return 0x63
        case .applied: return 0x64
        case .streamsOpen: return 0x18
        case .streamsReady: return 0x33
        case .join: return 0x03
        case .heartbeat: return Message.heartbeatType
        case .error: return 0x7F
        }
    }

    /// The type byte of `heartbeat`, which readers skip without decoding.
    static let heartbeatType: UInt8 = 0x04

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
            w.u8(h.compress ? (h.compressAdaptively ? 2 : 1) : 0)
            w.string(h.conflictStamp)
            w.u32(UInt32(h.roots.count))
            for r in h.roots { w.byteString(r) }
            w.u32(h.timeoutSeconds)
            w.u64(h.maxFileSize)
            w.string(h.clientID)
        case .welcome(let version, let dir, let instance, let created):
            w.string(version); w.string(dir); w.string(instance); w.string(created)
        case .fileBegin(let f):
            w.u32(f.op); w.byteString(f.path); w.u32(f.permissions); w.i64(f.mtimeNanos); w.u64(f.size); w.id(f.digest)
            Message.encode(f.base, into: &w)
            w.u32(f.chunkCount)
            w.u8((f.dataFollows ? 1 : 0) | (f.force ? 2 : 0) | (f.streamed ? 4 : 0))
        case .fileEnd(let op, let size, let digest, let count):
            w.u32(op); w.u64(size); w.id(digest); w.u32(count)
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
        case .endOfOperations, .done, .listEnd, .fetchEnd, .watch, .watchEnd, .watchEnded, .heartbeat:
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
        case .storeTrouble(let unreachable, let pack, let damaged, let reason):
            w.u8(unreachable ? 1 : 0)
            w.id(pack)
            w.u32(UInt32(damaged.count))
            for id in damaged { w.id(id) }
            w.string(reason)
        case .applySnapshot(let a):
            w.string(a.store); w.string(a.signingRegion); w.string(a.urlHead); w.string(a.urlQuery)
            w.id(a.manifest.digest); w.byteString(a.manifest.signature)
            w.u8(a.base == nil ? 0 : 1)
            if let base = a.base { w.id(base.digest); w.byteString(base.signature) }
            w.u32(UInt32(a.packs.count))
            for (p, index) in zip(a.packs, a.indexes) { w.id(p.digest); w.byteString(p.signature); w.byteString(index) }
            w.u32(UInt32(a.exceptions.count))
            for e in a.exceptions {
                w.byteString(e.path)
                if let state = e.state { Message.encode(state, into: &w) } else { w.u8(0xFF) }
            }
            w.u8(a.force ? 1 : 0)
        case .applied(let s):
            w.u32(s.applied); w.u32(s.unchanged); w.u32(s.deleted); w.u64(s.bytesPlaced); w.string(s.unreadable)
            w.u32(UInt32(s.others.count))
            for (path, r) in s.others {
                w.byteString(path)
                Message.encode(r, into: &w)
            }
        case .remoteChanged(let paths):
            w.u32(UInt32(paths.count))
            for p in paths { w.byteString(p) }
        case .need(let op, let indices), .fetch(let op, let indices):
            w.u32(op); w.u32(UInt32(indices.count))
            for i in indices { w.u32(i) }
        case .result(let r):
            Message.encode(r, into: &w)
        case .remoteEntry(let e):
            w.u32(e.op); w.byteString(e.path); Message.encode(e.state, into: &w); w.u32(e.permissions); w.i64(e.mtimeNanos)
            w.u64(e.size); w.u32(e.chunkCount)
        case .skipped(let path, let reason, let kind):
            w.byteString(path); w.string(reason); w.u8(kind.rawValue)
        case .streamsOpen(let count):
            w.u8(count)
        case .streamsReady(let address, let token):
            w.string(address); w.byteString(token)
        case .join(let token):
            w.byteString(token)
        case .error(let message, let reason):
            w.string(message); w.u8(reason.rawValue)
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

    /// An operation's answer: in a `result` frame, and for each outcome of an `applied` one.
    static func encode(_ r: OpResult, into w: inout PayloadWriter) {
        w.u32(r.op); w.u8(r.status.rawValue); w.string(r.message); Message.encode(r.current, into: &w)
        w.u64(r.currentSize); w.i64(r.currentMtimeNanos); w.byteString(r.keptAs)
    }

    static func decodeResult(_ r: inout PayloadReader) throws -> OpResult {
        let op = try r.u32("op")
        guard let status = OpStatus(rawValue: try r.u8("status")) else { throw ProtocolError("result: unknown status") }
        let text = try r.string("message", limit: 65536)
        let current = try decodeState(&r)
        return OpResult(op: op, status: status, message: text, current: current, currentSize: try r.u64("size"),
                        currentMtimeNanos: try r.i64("mtime"), keptAs: try r.byteString("kept as", limit: 255))
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
            let compression = try r.u8("compress flag")
            guard compression <= 2 else { throw ProtocolError("hello: unknown compress flag \(compression)") }
            h.compress = compression != 0
            h.compressAdaptively = compression == 2
            h.conflictStamp = try r.string("conflict stamp", limit: 64)
            let roots = try r.count("roots", itemSize: 4, limit: 65536)
            for _ in 0..<roots { h.roots.append(try r.byteString("root")) }
            h.timeoutSeconds = try r.u32("timeout")
            guard (1...Hello.maxTimeoutSeconds).contains(h.timeoutSeconds) else {
                throw ProtocolError("hello: timeout \(h.timeoutSeconds) s is outside 1...\(Hello.maxTimeoutSeconds)")
            }
            h.maxFileSize = try r.u64("largest file size")
            h.clientID = try r.string("client id", limit: 64)
            message = .hello(h)
        case 0x02:
            message = .welcome(agentVersion: try r.string("agent version"), projectDirectory: try r.string("project directory"),
                               instance: try r.string("instance"), createdRoot: try r.string("created root"))
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
            guard flags <= 7 else { throw ProtocolError("file header: unknown flags \(flags)") }
            guard flags & 5 != 5 else { throw ProtocolError("file header: a streamed file cannot send its data unasked") }
            message = .fileBegin(FileHeader(op: op, path: path, permissions: perms, mtimeNanos: mtime, size: size,
                                            digest: digest, base: base, chunkCount: count, dataFollows: flags & 1 != 0,
                                            force: flags & 2 != 0, streamed: flags & 4 != 0))
        case 0x19:
            message = .fileEnd(op: try r.u32("op"), size: try r.u64("size"), digest: try r.id("digest"), chunkCount: try r.u32("chunk count"))
        case 0x11:
            let op = try r.u32("op")
            let n = try r.count("chunks", itemSize: 20, limit: maxListItems)
            var chunks: [ChunkRef] = []
            chunks.reserveCapacity(n)
            for _ in 0..<n {
                let id = try r.id("chunk id")
                let length = try r.u32("chunk length")
                // A chunk of no bytes adds nothing but work; one larger than any chunk size is no chunk (holes,
                // which are never sent, may be up to 4 GiB).
                guard length > 0 else { throw ProtocolError("chunk list: a chunk of 0 bytes") }
                guard id.isHole || length <= UInt32(ChunkParameters.largestMaxSize) else {
                    throw ProtocolError("chunk list: a chunk of \(length) bytes, more than the largest chunk size \(ChunkParameters.largestMaxSize)")
                }
                chunks.append(ChunkRef(id: id, offset: 0, length: length))
            }
            message = .chunkList(op: op, chunks: chunks)
        case ChunkFrame.type:
            let f = try ChunkFrame(&r)
            message = .chunkData(op: f.op, index: f.index, compressed: f.compressed, rawLength: f.rawLength, payload: Array(f.payload))
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
            message = .result(try decodeResult(&r))
        case 0x32: message = .done
        case 0x40:
            let op = try r.u32("op")
            let path = try r.byteString("path")
            let state = try decodeState(&r)
            message = .remoteEntry(RemoteEntry(op: op, path: path, state: state, permissions: try r.u32("permissions"),
                                               mtimeNanos: try r.i64("mtime"), size: try r.u64("size"),
                                               chunkCount: try r.u32("chunk count")))
        case 0x42:
            let path = try r.byteString("path"), reason = try r.string("reason"), code = try r.u8("skip kind")
            guard let kind = SkipKind(rawValue: code) else { throw ProtocolError("skipped: unknown kind \(code)") }
            message = .skipped(path: path, reason: reason, kind: kind)
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
        case 0x62:
            let flag = try r.u8("unreachable")
            guard flag <= 1 else { throw ProtocolError("store trouble: bad flag \(flag)") }
            let pack = try r.id("pack")
            let n = try r.count("damaged chunks", itemSize: 16, limit: maxListItems)
            var damaged: [ChunkID] = []
            damaged.reserveCapacity(n)
            for _ in 0..<n { damaged.append(try r.id("chunk id")) }
            message = .storeTrouble(unreachable: flag == 1, pack: pack, damaged: damaged, reason: try r.string("reason", limit: 4096))
        case 0x63:
            let store = try r.string("store", limit: 4096)
            let signingRegion = try r.string("signing region", limit: 256)
            let urlHead = try r.string("url head", limit: 4096)
            let urlQuery = try r.string("url query", limit: 8192)
            let manifest = SnapshotApply.Object(digest: try r.id("manifest digest"), signature: try r.byteString("manifest signature", limit: 64))
            let base: SnapshotApply.Object?
            switch try r.u8("base flag") {
            case 0: base = nil
            case 1: base = SnapshotApply.Object(digest: try r.id("base digest"), signature: try r.byteString("base signature", limit: 64))
            case let flag: throw ProtocolError("apply snapshot: unknown base flag \(flag)")
            }
            let n = try r.count("snapshot packs", itemSize: 24, limit: maxListItems * 4)
            var packs: [SnapshotApply.Object] = [], indexes: [[UInt8]] = []
            for _ in 0..<n {
                packs.append(SnapshotApply.Object(digest: try r.id("pack digest"), signature: try r.byteString("pack signature", limit: 64)))
                indexes.append(try r.byteString("index signature", limit: 64))
            }
            let m = try r.count("exceptions", itemSize: 5, limit: maxListItems)
            var exceptions: [(path: [UInt8], state: PathState?)] = []
            for _ in 0..<m {
                let path = try r.byteString("exception path")
                if r.peekU8() == 0xFF { _ = try r.u8("leave alone"); exceptions.append((path, nil)) } else {
                    exceptions.append((path, try Message.decodeState(&r)))
                }
            }
            message = .applySnapshot(SnapshotApply(store: store, signingRegion: signingRegion, urlHead: urlHead, urlQuery: urlQuery,
                                                   manifest: manifest, base: base, packs: packs, indexes: indexes, exceptions: exceptions,
                                                   force: try Message.decodeFlag(&r)))
        case 0x64:
            var s = ApplySummary()
            s.applied = try r.u32("applied"); s.unchanged = try r.u32("unchanged"); s.deleted = try r.u32("deleted")
            s.bytesPlaced = try r.u64("bytes placed")
            s.unreadable = try r.string("unreadable", limit: 65536)
            let n = try r.count("outcomes", itemSize: 30, limit: maxListItems)
            for _ in 0..<n {
                let path = try r.byteString("outcome path")
                s.others.append((path, try decodeResult(&r)))
            }
            message = .applied(s)
        case 0x18: message = .streamsOpen(count: try r.u8("stream count"))
        case 0x33: message = .streamsReady(address: try r.string("stream address", limit: 100), token: try r.byteString("stream token", limit: 64))
        case 0x03: message = .join(token: try r.byteString("stream token", limit: 64))
        case 0x7F:
            let text = try r.string("message", limit: 65536)
            // A reason this side does not know is read as `other`: the message still says what happened.
            message = .error(message: text, reason: ErrorReason(rawValue: try r.u8("error reason")) ?? .other)
        case Message.heartbeatType: message = .heartbeat
        default:
            throw ProtocolError("unknown frame type 0x\(String(type, radix: 16))")
        }
        try r.finish()
        return message
    }
}

/// A chunk-data frame as it lies in a reader's buffer (`FrameReader.next(chunk:)`): the fields of
/// `Message.chunkData`, with the payload not copied out.
public struct ChunkFrame {
    public static let type: UInt8 = 0x12
    public let op: UInt32
    public let index: UInt32
    public let compressed: Bool
    public let rawLength: UInt32
    /// Valid only while the frame is being handled.
    public let payload: UnsafeRawBufferPointer

    init(_ r: inout PayloadReader) throws {
        op = try r.u32("op")
        index = try r.u32("index")
        let flags = try r.u8("flags")
        guard flags <= 1 else { throw ProtocolError("chunk data: unknown flags \(flags)") }
        compressed = flags == 1
        rawLength = try r.u32("raw length")
        guard rawLength <= UInt32(ChunkParameters.largestMaxSize) else {
            throw ProtocolError("chunk data: raw length \(rawLength) exceeds the largest chunk size")
        }
        payload = r.restInPlace()
    }

    init(payload: UnsafeRawBufferPointer) throws {
        var r = PayloadReader(payload, frame: "type 0x12")
        try self.init(&r)
    }
}
