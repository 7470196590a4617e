#if canImport(Glibc)
import Glibc
#endif
import SyncSystem

/// The 6 magic bytes that open every syncd stream, before the 2-byte big-endian version.
public let wireMagic: [UInt8] = Array("SYNCD".utf8) + [0]

/// Reads length-prefixed frames from a byte stream, with a hard size limit and byte accounting. One thread reads
/// at a time; a reader may be handed from one thread to another (a pull's receiving thread, then the session's).
public final class FrameReader: @unchecked Sendable {  // `lock` guards the buffer, its bounds and `read`
    private let lock = Mutex()
    private let stream: ByteStream
    private var buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private var read: UInt64 = 0
    /// Bytes read from the stream so far (what crossed the transport).
    public var bytesRead: UInt64 {
        lock.withLock { read }
    }
    /// Called before the reader blocks on an empty buffer, so a pipelined writer can flush first. Set before the
    /// reader is first used; called with the reader's lock held, so it must not read.
    public var willBlock: (() throws -> Void)?

    public init(_ stream: ByteStream) {
        self.stream = stream
        buffer = .allocate(byteCount: maxFrameLength + 4 + 65536, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// True when a whole frame other than a heartbeat is already buffered (reading it will not block).
    public var hasBufferedFrame: Bool {
        return lock.withLock {
            while let length = bufferedFrameLengthLocked() {
                guard length >= 1, buffer[start + 4] == Message.heartbeatType else { return true }
                start += 4 + length
                if start == end { start = 0; end = 0 }
            }
            return false
        }
    }

    /// The length of the frame at the head of the buffer when all of it is there.
    private func bufferedFrameLengthLocked() -> Int? {
        guard end - start >= 4 else { return nil }
        let length = Int(UInt32(littleEndian: UnsafeRawBufferPointer(rebasing: buffer[start..<start + 4]).loadUnaligned(as: UInt32.self)))
        return end - start >= 4 + length ? length : nil
    }

    /// Fills until `count` bytes are buffered. Returns false on end of stream before any new byte.
    private func fill(_ count: Int, context: () -> String) throws -> Bool {
        while end - start < count {
            // Emptied: the next bytes go to the front, so that a link of small frames keeps using the same few
            // pages of the buffer rather than, in time, all of its 2 MB (a hundred hosts' links at once).
            if start == end { (start, end) = (0, 0) }
            if start > 0 && buffer.count - start < count {
                let pending = end - start
                if pending > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: pending) }
                start = 0
                end = pending
            }
            try willBlock?()
            let n = try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
            if n == 0 {
                if end - start == 0 { return false }
                throw ProtocolError("connection closed in the middle of \(context()) (\(end - start) of \(count) bytes)")
            }
            end += n
            read += UInt64(n)
        }
        return true
    }

    /// Reads and checks the peer's magic and version. Returns the peer's version.
    public func readHandshake() throws -> UInt16 {
        return try lock.withLock {
            guard try fill(8, context: { "the handshake" }) else {
                throw ProtocolError("the peer closed the connection before the handshake")
            }
            let head = Array(UnsafeRawBufferPointer(rebasing: buffer[start..<start + 8]))
            start += 8
            guard Array(head[0..<6]) == wireMagic else {
                let shown = head.map { $0 >= 32 && $0 < 127 ? String(UnicodeScalar($0)) : "." }.joined()
                throw ProtocolError("the peer is not speaking the syncd protocol (first bytes: \"\(shown)\")")
            }
            return UInt16(head[6]) << 8 | UInt16(head[7])
        }
    }

    /// Next frame; nil at a clean end of stream between frames.
    public func next() throws -> Message? {
        return try lock.withLock {
            guard let (type, payload) = try nextFrameLocked() else { return nil }
            return try Message.decode(type: type, payload: payload)
        }
    }

    /// Next frame other than chunk data; the chunk-data frames on the way are handed to `chunk` as they lie in
    /// this reader's buffer, not copied into messages (a pull's bulk). Nil at a clean end of stream between
    /// frames. The reader's lock is held while `chunk` runs: it must not use this reader.
    public func next(chunk: (ChunkFrame) throws -> Void) throws -> Message? {
        while true {
            switch try nextFrame(chunk: chunk) {
            case .message(let message): return message
            case .chunk, .heartbeat: continue
            case .end: return nil
            }
        }
    }

    /// What `nextFrame(chunk:)` read.
    public enum Frame {
        case message(Message)
        /// A chunk-data frame, handed to the closure.
        case chunk
        /// A heartbeat: nothing to act on, but the caller may look at its other sources before it reads again.
        case heartbeat
        /// A clean end of stream between frames.
        case end
    }

    /// One frame: chunk data is handed to `chunk` as it lies in this reader's buffer (and `.chunk` returned),
    /// anything else decoded. The reader's lock is held while `chunk` runs: it must not use this reader.
    public func nextFrame(chunk: (ChunkFrame) throws -> Void) throws -> Frame {
        return try lock.withLock {
            guard let (type, payload) = try frameLocked() else { return .end }
            if type == Message.heartbeatType && payload.isEmpty { return .heartbeat }
            guard type == ChunkFrame.type else { return .message(try Message.decode(type: type, payload: payload)) }
            try chunk(try ChunkFrame(payload: payload))
            return .chunk
        }
    }

    /// The next frame's type and payload, which stays valid in the buffer until the next fill. Heartbeats are
    /// skipped: they only prove the peer alive, which reading them already did.
    private func nextFrameLocked() throws -> (UInt8, UnsafeRawBufferPointer)? {
        while true {
            guard let (type, payload) = try frameLocked() else { return nil }
            if type == Message.heartbeatType && payload.isEmpty { continue }
            return (type, payload)
        }
    }

    private func frameLocked() throws -> (UInt8, UnsafeRawBufferPointer)? {
        guard try fill(4, context: { "a frame header" }) else { return nil }
        let length = Int(UInt32(littleEndian: UnsafeRawBufferPointer(rebasing: buffer[start..<start + 4]).loadUnaligned(as: UInt32.self)))
        guard length >= 1 else { throw ProtocolError("empty frame (length 0)") }
        guard length <= maxFrameLength else {
            throw ProtocolError("frame of \(length) bytes exceeds the limit of \(maxFrameLength)")
        }
        guard try fill(4 + length, context: { "a \(length)-byte frame" }) else {
            throw ProtocolError("connection closed in the middle of a frame")
        }
        let type = buffer[start + 4]
        let payload = UnsafeRawBufferPointer(rebasing: buffer[(start + 5)..<(start + 4 + length)])
        start += 4 + length
        if start == end { start = 0; end = 0 }
        return (type, payload)
    }
}

/// Frames taken apart from bytes handed in as they come, for a caller that reads many links from one thread and
/// must never wait on one: `append` what a read gave, then take `handshake` once and `next` until it says nil.
/// The same checks as `FrameReader`: the magic, a frame's length within `maxFrameLength`. Memory is what is
/// buffered, a frame at most: a link of small frames costs a few KB.
public struct FrameDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0
    /// Bytes handed in so far (what crossed the transport).
    public private(set) var bytesIn: UInt64 = 0

    public init() {}

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 16)
            start = 0
        }
        buffer.append(contentsOf: bytes)
        bytesIn += UInt64(bytes.count)
    }

    /// Whether nothing is buffered (a clean end of stream is one between frames).
    public var isEmpty: Bool { start == buffer.count }

    /// The peer's version, once its magic and version are in; nil until then.
    public mutating func handshake() throws -> UInt16? {
        guard buffer.count - start >= 8 else { return nil }
        let head = Array(buffer[start..<start + 8])
        guard Array(head[0..<6]) == wireMagic else {
            let shown = head.map { $0 >= 32 && $0 < 127 ? String(UnicodeScalar($0)) : "." }.joined()
            throw ProtocolError("the peer is not speaking the syncd protocol (first bytes: \"\(shown)\")")
        }
        consume(8)
        return UInt16(head[6]) << 8 | UInt16(head[7])
    }

    /// The next whole frame other than a heartbeat; nil until one is all in.
    public mutating func next() throws -> Message? {
        while buffer.count - start >= 4 {
            let length = Int(buffer[start]) | Int(buffer[start + 1]) << 8 | Int(buffer[start + 2]) << 16 | Int(buffer[start + 3]) << 24
            guard length >= 1 else { throw ProtocolError("empty frame (length 0)") }
            guard length <= maxFrameLength else { throw ProtocolError("frame of \(length) bytes exceeds the limit of \(maxFrameLength)") }
            guard buffer.count - start >= 4 + length else { return nil }
            let type = buffer[start + 4]
            defer { consume(4 + length) }
            if type == Message.heartbeatType && length == 1 { continue }
            return try buffer.withUnsafeBytes { raw in
                try Message.decode(type: type, payload: UnsafeRawBufferPointer(rebasing: raw[(start + 5)..<(start + 4 + length)]))
            }
        }
        return nil
    }

    private mutating func consume(_ count: Int) {
        start += count
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.capacity <= 1 << 16)
            start = 0
        } else if start >= 1 << 16 && start * 2 >= buffer.count {
            buffer.removeFirst(start)
            start = 0
        }
    }
}

/// A frame as bytes on the wire: its length, type and payload (what `FrameWriter.send` queues), for a caller that
/// writes without a `FrameWriter`.
public func encodedFrame(_ message: Message) -> [UInt8] {
    let (type, payload) = message.encode()
    precondition(payload.count + 1 <= maxFrameLength, "frame too large to send")
    var bytes: [UInt8] = []
    bytes.reserveCapacity(payload.count + 5)
    withUnsafeBytes(of: UInt32(payload.count + 1).littleEndian) { bytes.append(contentsOf: $0) }
    bytes.append(type)
    bytes.append(contentsOf: payload)
    return bytes
}

/// The opening bytes of a session from the client: its handshake and `hello`. A transport writes them as soon
/// as the agent can read them (see `AgentConnection.greetingSent`), saving the round trip of waiting for the
/// agent's own handshake first.
public func clientGreeting(_ hello: Hello) -> [UInt8] { clientGreeting(.hello(hello)) }

/// The client's handshake followed by `first`, encoded as one frame (a hello, or a joining stream's `join`).
public func clientGreeting(_ first: Message) -> [UInt8] {
    clientHandshake() + encodedFrame(first)
}

/// The client's handshake alone: magic and version. A connection kept for many sessions opens with it, and
/// each session then begins with its hello.
public func clientHandshake() -> [UInt8] {
    wireMagic + [UInt8(wireVersion >> 8), UInt8(wireVersion & 0xFF)]
}

/// Buffers frames and writes them to a byte stream. Frames from several threads never interleave (a sender
/// thread and a reader answering for it may share one).
public final class FrameWriter: @unchecked Sendable {  // `lock` guards the buffer, `used` and `written`
    private let lock = Mutex()
    private let stream: ByteStream
    private static let flushThreshold = 512 * 1024
    /// Frames queued so far fill `buffer[0..<used]`. It holds a whole frame past the threshold, so a frame is
    /// always built in place (chunk data read straight into it; see `sendChunk(op:index:rawLength:fill:)`).
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: flushThreshold + maxFrameLength + 4, alignment: 16)
    private var used = 0
    private var written: UInt64 = 0
    /// When the stream last took bytes from this writer (`monotonicNanos`).
    private var lastWrite = monotonicNanos()
    /// Bytes written to the stream so far.
    public var bytesWritten: UInt64 {
        lock.withLock { written }
    }

    public init(_ stream: ByteStream) {
        self.stream = stream
    }

    deinit { buffer.deallocate() }

    /// The stream's `drainRate`: how fast what this writer flushes is carried on.
    public var drainRate: Double? { stream.drainRate }

    public func writeHandshake() throws {
        try lock.withLock {
            appendLocked(wireMagic)
            appendLocked([UInt8(wireVersion >> 8), UInt8(wireVersion & 0xFF)])
            try flushLocked()
        }
    }

    private func appendLocked(_ bytes: some Collection<UInt8>) {
        UnsafeMutableRawBufferPointer(rebasing: buffer[used..<used + bytes.count]).copyBytes(from: bytes)
        used += bytes.count
    }

    private func appendLocked(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        (buffer.baseAddress! + used).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        used += bytes.count
    }

    private func appendLocked(_ value: UInt32) {
        buffer.storeBytes(of: value.littleEndian, toByteOffset: used, as: UInt32.self)
        used += 4
    }

    /// Queues a frame; writes when the buffer is large.
    public func send(_ message: Message) throws {
        let (type, payload) = message.encode()
        precondition(payload.count + 1 <= maxFrameLength, "frame too large to send")
        try lock.withLock {
            appendLocked(UInt32(payload.count + 1))
            buffer[used] = type
            used += 1
            payload.withUnsafeBytes { appendLocked($0) }
            if used >= Self.flushThreshold { try flushLocked() }
        }
    }

    /// Queues a chunk-data frame straight from `bytes`, without building an intermediate message.
    public func sendChunk(op: UInt32, index: UInt32, compressed: Bool, rawLength: UInt32, bytes: UnsafeRawBufferPointer) throws {
        precondition(chunkFrameHeader + bytes.count <= maxFrameLength, "chunk frame too large to send")
        try lock.withLock {
            appendChunkHeaderLocked(op: op, index: index, compressed: compressed, rawLength: rawLength, payload: bytes.count)
            appendLocked(bytes)
            if used >= Self.flushThreshold { try flushLocked() }
        }
    }

    /// What `sendChunk(op:index:rawLength:fill:)`'s `fill` put in the room it was given.
    public enum ChunkFill {
        /// The chunk's raw bytes, all `rawLength` of them: sent as they are.
        case raw
        /// Sent instead of the raw bytes (fewer of them).
        case compressed([UInt8])
        /// Nothing: no frame is sent.
        case nothing
    }

    /// Queues a chunk-data frame whose bytes `fill` puts straight into this writer's buffer: it is handed room
    /// for `rawLength` bytes there (read a file into it, say), so the chunk is not copied on its way to the
    /// stream. The writer's lock is held meanwhile: `fill` must not use this writer. Returns false when `fill`
    /// sent nothing.
    public func sendChunk(op: UInt32, index: UInt32, rawLength: UInt32, fill: (UnsafeMutableRawBufferPointer) throws -> ChunkFill) throws -> Bool {
        precondition(chunkFrameHeader + Int(rawLength) <= maxFrameLength, "chunk frame too large to send")
        return try lock.withLock {
            let frameStart = used
            let payloadStart = frameStart + 4 + chunkFrameHeader
            let room = UnsafeMutableRawBufferPointer(rebasing: buffer[payloadStart..<payloadStart + Int(rawLength)])
            let payload: Int
            let compressed: Bool
            switch try fill(room) {
            case .nothing:
                return false
            case .raw:
                (payload, compressed) = (Int(rawLength), false)
            case .compressed(let packed):
                precondition(packed.count <= Int(rawLength), "compressed chunk larger than its raw bytes")
                packed.withUnsafeBytes { room.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                (payload, compressed) = (packed.count, true)
            }
            appendChunkHeaderLocked(op: op, index: index, compressed: compressed, rawLength: rawLength, payload: payload)
            used = payloadStart + payload
            if used >= Self.flushThreshold { try flushLocked() }
            return true
        }
    }

    /// Bytes of a chunk-data frame between its length prefix and its payload: type, op, index, flags, raw length.
    private var chunkFrameHeader: Int { 1 + 4 + 4 + 1 + 4 }

    private func appendChunkHeaderLocked(op: UInt32, index: UInt32, compressed: Bool, rawLength: UInt32, payload: Int) {
        appendLocked(UInt32(chunkFrameHeader + payload))
        buffer[used] = ChunkFrame.type
        used += 1
        appendLocked(op)
        appendLocked(index)
        buffer[used] = compressed ? 1 : 0
        used += 1
        appendLocked(rawLength)
    }

    /// Writes everything queued.
    public func flush() throws {
        try lock.withLock {
            try flushLocked()
        }
    }

    private func flushLocked() throws {
        guard used > 0 else { return }
        try stream.write(UnsafeRawBufferPointer(rebasing: buffer[0..<used]))
        written += UInt64(used)
        used = 0
        lastWrite = monotonicNanos()
    }

    /// Sends a heartbeat (with whatever else is queued) when nothing went out for `idleNanos`, unless another
    /// thread is writing right now (that write is proof of life enough). Returns false once the stream failed.
    public func heartbeatIfIdle(_ idleNanos: UInt64) -> Bool {
        lock.withLockIfFree {
            guard monotonicNanos() &- lastWrite >= idleNanos else { return true }
            appendLocked(UInt32(1))
            buffer[used] = Message.heartbeatType
            used += 1
            do { try flushLocked() } catch { return false }
            return true
        } ?? true
    }

    /// Ends the stream's output (after a failure on the writing side: the peer then sees the end).
    public func closeOutput() {
        lock.withLock {
            stream.closeWrite()
        }
    }

    /// Number of queued bytes not yet written.
    public var pendingBytes: Int {
        lock.withLock { used }
    }
}

/// A thread that keeps a connection's far side sure this side is alive: whenever `writer` has sent nothing for
/// `interval`, it sends a heartbeat frame. The far side fails the session once nothing at all came for its
/// timeout (four intervals), so a peer that is busy (hashing, syncing a large file, waiting for its user) is
/// never taken for a dead one, and a dead one is found within the timeout.
public final class Heartbeat: Sendable {
    private let writer: FrameWriter
    private let state: Locked<(intervalNanos: UInt64, stopping: Bool, thread: pthread_t?)>

    /// Starts sending on `writer` every `timeoutSeconds / 4` of quiet.
    public init(writer: FrameWriter, timeoutSeconds: Double) {
        self.writer = writer
        state = Locked((Self.interval(timeoutSeconds), false, nil))
        let thread = try? startThread { [self] in run() }
        state.withLock { $0.thread = thread }
    }

    deinit { stop() }

    public static func interval(_ timeoutSeconds: Double) -> UInt64 { UInt64(max(timeoutSeconds / 4, 0.05) * 1e9) }

    /// A new timeout (the next session's hello said so).
    public func setTimeout(seconds: Double) { state.withLock { $0.intervalNanos = Self.interval(seconds) } }

    /// Every half interval (or at once when the interval changes), a heartbeat if the writer has been idle.
    private func run() {
        var interval = state.withLock { $0.intervalNanos }
        while true {
            let stopping = state.withLock(when: { $0.stopping || $0.intervalNanos != interval },
                                          deadline: monotonicNanos() + interval / 2) { state, _ in
                interval = state.intervalNanos
                return state.stopping
            }
            if stopping || !writer.heartbeatIfIdle(interval) { return }
        }
    }

    /// Stops and joins the thread; later calls do nothing.
    public func stop() {
        let running = state.withLock { state in
            state.stopping = true
            defer { state.thread = nil }
            return state.thread
        }
        if let running { pthread_join(running, nil) }
    }
}
