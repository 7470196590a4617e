#if canImport(Glibc)
import Glibc
#endif
import CSystemShims
import SyncSystem
import Transfer
import Wire

/// The extra connections of one push or pull (`Message.streamsOpen`). The agent listens on a unix socket in the
/// abstract namespace; a joining agent (`syncd-agent join`, started by its own SSH connection) connects, hands
/// over its stdin and stdout, and waits. The stream's first frames are the client's handshake and `join` with
/// this session's token; after that it carries chunk data only.
///
/// - `inbound` (a push): a thread per stream reads its frames into one queue, which the session takes from as
///   it takes frames from its own connection.
/// - `outbound` (a pull): the session writes chunk frames to whichever stream has the least queued (`writer`);
///   a thread per stream writes its queue out.
///
/// Only processes of this user may join (SO_PEERCRED), and only with the token, which went to the client over
/// the main connection.
final class JoinedStreams: @unchecked Sendable {  // all mutable state is guarded by `lock`
    enum Direction { case inbound, outbound }
    let direction: Direction
    let address: String
    let token: [UInt8]
    /// Readable while frames are queued: the session polls it beside its own input.
    let wakeFD: Int32
    private let wakeWrite: Int32
    private let listener: Int32
    private let lock = Mutex()
    private let roomy = Condition()
    private var queue: [Message] = []
    private var head = 0
    private var queuedBytes = 0
    private var closed = false
    private var failure: String?
    private var joined = 0
    private let limit: Int
    /// Outbound streams admitted so far.
    private var outputs: [JoinedOutput] = []
    /// Bytes of chunk data queued at most; a stream's reader waits beyond it (and so, through sshd, the client).
    private static let queueLimit = 32 << 20

    /// How long an outbound stream may take nothing before it fails (the session's timeout).
    private let timeoutSeconds: Double

    /// Listens for up to `limit` streams; throws when no socket can be made.
    init(limit: Int, direction: Direction = .inbound, timeoutSeconds: Double) throws {
        self.limit = limit
        self.timeoutSeconds = timeoutSeconds
        self.direction = direction
        token = (0..<16).map { _ in UInt8.random(in: 0...255) }
        var listening: Int32 = -1
        var name = ""
        for _ in 0..<8 {
            name = "syncd-\(getpid())-" + (0..<8).map { _ in String(UInt8.random(in: 0...15), radix: 16) }.joined()
            listening = syncd_listen_abstract(name)
            if listening >= 0 || errno != EADDRINUSE { break }
        }
        guard listening >= 0 else { throw SystemError(call: "listen", path: "@" + name, errno: errno) }
        listener = listening
        address = name
        var fds: [Int32] = [0, 0]
        guard syncd_pipe(&fds, 1) == 0 else {
            Glibc.close(listening)
            throw SystemError(call: "pipe2", path: "joined streams", errno: errno)
        }
        (wakeFD, wakeWrite) = (fds[0], fds[1])
        _ = try startThread { [self] in acceptStreams() }
    }

    deinit {
        Glibc.close(wakeFD)
        Glibc.close(wakeWrite)
    }

    /// The next frame a joined stream brought, if one is queued; throws when a stream failed (its data is lost,
    /// so the push cannot complete).
    func take() throws -> Message? {
        lock.lock()
        defer { lock.unlock() }
        if let failure { throw AgentError("a joined stream of this push failed: \(failure)") }
        guard head < queue.count else { return nil }
        let message = queue[head]
        head += 1
        if case .chunkData(_, _, _, _, let payload) = message { queuedBytes -= payload.count }
        if head == queue.count {
            queue.removeAll(keepingCapacity: true)
            head = 0
            var drain = [UInt8](repeating: 0, count: 64)
            while read(wakeFD, &drain, drain.count) > 0 {}
        }
        roomy.broadcast()
        return message
    }

    /// Whether a frame is queued.
    var hasQueued: Bool {
        lock.lock()
        defer { lock.unlock() }
        return head < queue.count || failure != nil
    }

    /// The push ended: no more streams are taken, and frames still coming are dropped. Each stream ends when the
    /// client closes it (it does once the push is answered), which lets its joining agent exit.
    func close() {
        lock.lock()
        closed = true
        queue.removeAll()
        head = 0
        queuedBytes = 0
        roomy.broadcast()
        let streams = outputs
        outputs = []
        lock.unlock()
        // An outbound stream writes out what it holds, then ends.
        for output in streams { output.closeWrite() }
        // Wakes the accept thread, which then closes the listener.
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// The writer for the next chunk frame of a pull: `main`'s or an outbound stream's, whichever has the fewest
    /// bytes waiting. Throws when a stream failed, since what it held is lost.
    func writer(main: FrameWriter) throws -> FrameWriter {
        lock.lock()
        let streams = outputs
        let failed = failure
        lock.unlock()
        if let failed { throw AgentError("a joined stream of this pull failed: \(failed)") }
        return leastLoaded(main: main, waiting: main.pendingBytes, others: streams.map { ($0.writer, $0.waiting) })
    }

    /// Hands what the outbound streams' writers hold to their threads (before the session says `done`).
    func flushOutputs() throws {
        lock.lock()
        let streams = outputs
        lock.unlock()
        for output in streams { try output.writer.flush() }
    }

    private func acceptStreams() {
        defer { Glibc.close(listener) }
        while true {
            let connection = syncd_accept(listener)
            if connection < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            lock.lock()
            let stop = closed
            lock.unlock()
            if stop {
                Glibc.close(connection)
                return
            }
            guard Platform.peerUID(connection) == getuid() else {
                Glibc.close(connection)
                continue
            }
            var fds: [Int32] = [-1, -1]
            guard syncd_receive_fds(connection, &fds, 2) == 2 else {
                for fd in fds where fd >= 0 { Glibc.close(fd) }
                Glibc.close(connection)
                continue
            }
            let (input, output) = (fds[0], fds[1])
            do {
                _ = try startThread { [self] in serve(input: input, output: output, connection: connection) }
            } catch {
                Glibc.close(input)
                Glibc.close(output)
                Glibc.close(connection)
            }
        }
    }

    /// Reads one joined stream until its end. Closing `connection` at the end lets the joining agent exit.
    private func serve(input: Int32, output: Int32, connection: Int32) {
        defer {
            Glibc.close(input)
            Glibc.close(output)
            Glibc.close(connection)
        }
        enlargePipeBuffer(input)
        enlargePipeBuffer(output)
        let stream = FileDescriptorStream(input: input, output: output, name: "joined stream")
        let reader = FrameReader(stream)
        var admitted = false
        do {
            let version = try reader.readHandshake()
            guard version == wireVersion else { throw ProtocolError("a joining stream speaks protocol version \(version), not \(wireVersion)") }
            guard case .join(let presented)? = try reader.next(), presented.count == token.count else {
                throw ProtocolError("a joining stream did not present a join token first")
            }
            // Compared in full whatever differs first.
            guard zip(presented, token).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else { return }
            lock.lock()
            let refused = closed || joined >= limit
            if !refused { joined += 1 }
            lock.unlock()
            if refused { return }
            admitted = true
            let writer = FrameWriter(stream)
            try writer.writeHandshake()
            try writer.flush()
            if direction == .outbound {
                // A client that stops taking data fails the stream, and so the session, instead of holding it.
                stream.progressTimeout = timeoutSeconds
                let output = JoinedOutput()
                lock.lock()
                let late = closed
                if !late { outputs.append(output) }
                lock.unlock()
                if late { return }
                if let why = output.drain(to: stream) { throw AgentError(why) }
                return
            }
            while let message = try reader.next() {
                guard case .chunkData(_, _, _, _, let payload) = message else {
                    throw ProtocolError("a joined stream carried frame type 0x\(String(message.encode().type, radix: 16)); only chunk data may")
                }
                lock.lock()
                while !closed && queuedBytes > Self.queueLimit { roomy.wait(lock) }
                if closed {
                    lock.unlock()
                    continue
                }
                if head == queue.count {
                    var byte: UInt8 = 1
                    _ = write(wakeWrite, &byte, 1)
                }
                queue.append(message)
                queuedBytes += payload.count
                lock.unlock()
            }
            // The client closes its streams only once the push is answered: an end before that lost data.
            throw ProtocolError("the stream ended before the push did")
        } catch {
            guard admitted else { return }
            lock.lock()
            let report = !closed && failure == nil
            if report { failure = "\(error)" }
            lock.unlock()
            if report {
                var byte: UInt8 = 1
                _ = write(wakeWrite, &byte, 1)
            }
        }
    }
}

/// What the session writes to one outbound joined stream: frames queue here (up to a bound) and the stream's
/// thread writes them out, so a slow connection never stalls the session while another has room.
final class JoinedOutput: ByteStream, @unchecked Sendable {  // `lock` guards the queue, `closed` and `failure`
    private(set) lazy var writer = FrameWriter(self)
    private let lock = Mutex()
    private let changed = Condition()
    private var pieces: [[UInt8]] = []
    private var queued = 0
    private var closed = false
    private var failure: String?
    private static let limit = 8 << 20

    /// Bytes queued, in the writer and here: what the stream still has to send.
    var waiting: Int {
        let buffered = writer.pendingBytes
        lock.lock()
        defer { lock.unlock() }
        return queued + buffered
    }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { 0 }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        lock.lock()
        defer { lock.unlock() }
        while queued >= Self.limit && failure == nil && !closed { changed.wait(lock) }
        if let failure { throw AgentError("a joined stream of this pull failed: \(failure)") }
        guard !closed else { throw AgentError("a joined stream of this pull was closed") }
        pieces.append(Array(bytes))
        queued += bytes.count
        changed.broadcast()
    }

    func closeWrite() {
        lock.lock()
        closed = true
        changed.broadcast()
        lock.unlock()
    }

    /// Writes the queue to `stream` until closed and empty; returns why it stopped early, if it did.
    func drain(to stream: ByteStream) -> String? {
        while true {
            lock.lock()
            while pieces.isEmpty && !closed { changed.wait(lock) }
            if pieces.isEmpty {
                lock.unlock()
                return nil
            }
            let batch = pieces
            pieces.removeAll(keepingCapacity: true)
            lock.unlock()
            for piece in batch {
                do { try piece.withUnsafeBytes { try stream.write($0) } } catch {
                    lock.lock()
                    failure = "\(error)"
                    changed.broadcast()
                    lock.unlock()
                    return "\(error)"
                }
                lock.lock()
                queued -= piece.count
                changed.broadcast()
                lock.unlock()
            }
        }
    }
}
