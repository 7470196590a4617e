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
final class JoinedStreams: Sendable {
    enum Direction { case inbound, outbound }
    let direction: Direction
    let address: String
    let token: [UInt8]
    private let listener: Int32
    /// What inbound streams bring (a push).
    private let inbox: FrameInbox
    /// Where outbound streams take chunk frames from (a pull).
    private let lanes = ChunkLanes<QueuedOutput>()
    /// Streams admitted, whether the session is over, and why a stream failed, if one did.
    private let admission = Locked<(joined: Int, closed: Bool, failure: String?)>((0, false, nil))
    private let limit: Int

    /// How long an outbound stream may take nothing before it fails (the session's timeout).
    private let timeoutSeconds: Double

    /// Listens for up to `limit` streams; throws when no socket can be made.
    init(limit: Int, direction: Direction = .inbound, timeoutSeconds: Double) throws {
        self.limit = limit
        self.timeoutSeconds = timeoutSeconds
        self.direction = direction
        token = (0..<16).map { _ in UInt8.random(in: 0...255) }
        inbox = try FrameInbox(pollable: true)
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
        _ = try startThread { [self] in acceptStreams() }
    }

    /// Readable while frames may be queued: the session polls it beside its own input.
    var wakeFD: Int32 { inbox.wakeFD! }

    /// The next frame a joined stream brought, if one is queued; throws when a stream failed or ended early (its
    /// data is lost, so the push cannot complete).
    func take() throws -> Message? {
        switch inbox.poll() {
        case .frame(let message, _)?: return message
        case .failed(let error, _)?: throw AgentError("a joined stream of this push failed: \(error)")
        // The client closes its streams only once the push is answered: an end before that lost data.
        case .ended?: throw AgentError("a joined stream of this push failed: the stream ended before the push did")
        case .wake?, nil: return nil
        }
    }

    /// Whether a frame is queued.
    var hasQueued: Bool { inbox.hasQueued }

    /// The session ended: no more streams are taken, and frames still coming are dropped. Each stream ends when the
    /// client closes it (it does once the session is answered), which lets its joining agent exit.
    func close() {
        admission.withLock { $0.closed = true }
        inbox.close()
        // An outbound stream writes out what it holds, then ends.
        for lane in lanes.close() { lane.stream.closeWrite() }
        // Wakes the accept thread, which then closes the listener.
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// The writer for the next chunk frame of a pull: `main`'s or an outbound stream's, whichever has the fewest
    /// bytes waiting. Throws when a stream failed, since what it held is lost.
    func writer(main: FrameWriter) throws -> FrameWriter {
        if let failed = admission.withLock({ $0.failure }) { throw AgentError("a joined stream of this pull failed: \(failed)") }
        return lanes.writer(main: main, waiting: main.pendingBytes)
    }

    /// Hands what the outbound streams' writers hold to their threads (before the session says `done`).
    func flushOutputs() throws { try lanes.flush() }

    private func acceptStreams() {
        defer { Glibc.close(listener) }
        while true {
            let connection = syncd_accept(listener)
            if connection < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            if admission.withLock({ $0.closed }) {
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

    /// Serves one joined stream until its end. Closing `connection` at the end lets the joining agent exit.
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
        guard let number = try? admit(reader: reader, writer: FrameWriter(stream)) else { return }
        switch direction {
        case .inbound:
            inbox.pump(reader, source: number) { message in
                guard case .chunkData = message else {
                    throw ProtocolError("a joined stream carried frame type 0x\(String(message.encode().type, radix: 16)); only chunk data may")
                }
                return false
            }
        case .outbound:
            // A client that stops taking data fails the stream, and so the session, instead of holding it.
            stream.progressTimeout = timeoutSeconds
            let queued = QueuedOutput(name: "a joined stream of this pull")
            let writer = FrameWriter(queued)
            guard lanes.add(queued, writer: writer, waiting: { writer.pendingBytes + queued.queuedOutputBytes }) else { return }
            if let why = queued.drain(to: stream) {
                admission.withLock { if !$0.closed && $0.failure == nil { $0.failure = why } }
            }
        }
    }

    /// Reads a joining stream's handshake and token and answers it; the stream's number (from 1) once admitted,
    /// nil when it is refused (a wrong token, too many streams, or the session over).
    private func admit(reader: FrameReader, writer: FrameWriter) throws -> Int? {
        let version = try reader.readHandshake()
        guard version == wireVersion else { throw ProtocolError("a joining stream speaks protocol version \(version), not \(wireVersion)") }
        guard case .join(let presented)? = try reader.next(), presented.count == token.count else {
            throw ProtocolError("a joining stream did not present a join token first")
        }
        // Compared in full whatever differs first.
        guard zip(presented, token).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else { return nil }
        let number: Int? = admission.withLock { state in
            guard !state.closed, state.joined < limit else { return nil }
            state.joined += 1
            return state.joined
        }
        guard let number else { return nil }
        try writer.writeHandshake()
        try writer.flush()
        return number
    }
}
