import SyncSystem
import Wire

// What a session's extra streams (`Message.streamsOpen`) carry, written once for both sides. How a stream comes to
// be is each side's own: the client opens an SSH connection whose agent joins the session, and the agent accepts
// it on a socket and checks its token. Once a stream is there, both sides move data over it the same way:
// - the side that sends chunk data (the client in a push, the agent in a pull) sends each chunk over whichever
//   stream, its own connection included, has the least waiting to go out (`ChunkLanes`);
// - the side that receives (the agent in a push, the client in a pull) reads each stream on a thread of its own
//   into one queue, bounded by the chunk bytes it holds (`FrameInbox`).

/// The streams a session sends chunk data over besides its own connection, each with its frame writer.
public final class ChunkLanes<Stream>: @unchecked Sendable {  // `lanes` is Locked; `Stream` is only handed back
    public struct Lane {
        public let stream: Stream
        public let writer: FrameWriter
        /// Bytes written to the lane and not yet sent on (its writer's and its transport's).
        public let waiting: () -> Int
    }
    private let lanes = Locked<(open: [Lane], closed: Bool)>(([], false))

    public init() {}

    /// Adds a stream that joined; false, and nothing added, once the lanes are closed (the caller drops it).
    public func add(_ stream: Stream, writer: FrameWriter, waiting: @escaping () -> Int) -> Bool {
        lanes.withLock { set in
            guard !set.closed else { return false }
            set.open.append(Lane(stream: stream, writer: writer, waiting: waiting))
            return true
        }
    }

    /// The lanes open now.
    public var open: [Lane] { lanes.withLock { $0.open } }

    /// Whether the lanes are closed (the session is over).
    public var isClosed: Bool { lanes.withLock { $0.closed } }

    /// The writer for the next chunk: `main`'s or a lane's, whichever has the fewest bytes waiting.
    public func writer(main: FrameWriter, waiting: Int) -> FrameWriter {
        let open = self.open
        guard !open.isEmpty else { return main }
        return leastLoaded(main: main, waiting: waiting, others: open.map { ($0.writer, $0.waiting()) })
    }

    /// Sends on what each lane's writer holds.
    public func flush() throws {
        for lane in open { try lane.writer.flush() }
    }

    /// Takes no more lanes and returns those that were open, for the caller to end.
    public func close() -> [Lane] {
        lanes.withLock { set in
            defer { (set.open, set.closed) = ([], true) }
            return set.open
        }
    }
}

/// Frames from several connections taken in one place: a thread per connection reads its frames into one queue
/// bounded by the chunk bytes it holds (32 MiB), so a fast stream waits for the taker rather than filling memory.
/// The taker either waits in `next` or, when it polls descriptors of its own, takes with `poll` and waits on
/// `wakeFD` beside them.
public final class FrameInbox: Sendable {
    public enum Item {
        case frame(Message, source: Int)
        /// Source `source` ended cleanly between frames.
        case ended(source: Int)
        case failed(Error, source: Int)
        /// Something changed that the taker may want to look at (`wake`).
        case wake
    }
    private let queue: BoundedQueue<Item>
    private let readBySource = Locked<[Int: UInt64]>([:])
    private let wakePipe: WakePipe?

    /// `pollable` makes a `wakeFD` for a taker that polls.
    public init(pollable: Bool = false) throws {
        let pipe = pollable ? try WakePipe() : nil
        wakePipe = pipe
        queue = BoundedQueue(limit: 32 << 20, cost: { item in
            if case .frame(let message, _) = item { return message.payloadBytes }
            return 0
        }, filled: pipe.map { pipe in { pipe.signal() } })
    }

    /// Readable while an item may be waiting (made `pollable` only).
    public var wakeFD: Int32? { wakePipe?.readFD }

    /// Bytes read so far from the sources other than 0 (the joined streams).
    public var extraBytesRead: UInt64 { readBySource.withLock { $0.filter { $0.key != 0 }.values.reduce(0, +) } }

    /// Reads `reader` on a thread of its own (see `pump`).
    public func read(_ reader: FrameReader, source: Int, handshake: Bool = false,
                     last: @escaping @Sendable (Message) throws -> Bool = { _ in false }) {
        do {
            try startDetachedThread(name: "frames-\(source)") { [self] in
                pump(reader, source: source, handshake: handshake, last: last)
            }
        } catch {
            queue.put(.failed(error, source: source))
        }
    }

    /// Reads `reader` into the queue until its end, a failure (what `last` throws for a frame that may not come
    /// is one), a frame `last` says is its last (a connection whose next frames belong to someone else), or
    /// `close`.
    public func pump(_ reader: FrameReader, source: Int, handshake: Bool = false, last: (Message) throws -> Bool = { _ in false }) {
        do {
            if handshake { _ = try reader.readHandshake() }
            while let message = try reader.next() {
                readBySource.withLock { $0[source] = reader.bytesRead }
                let isLast = try last(message)
                guard queue.put(.frame(message, source: source)), !isLast else { return }
            }
            queue.put(.ended(source: source))
        } catch {
            queue.put(.failed(error, source: source))
        }
    }

    /// Lets the taker look again (a stream's attempt to join settled).
    public func wake() { queue.put(.wake) }

    /// The next item, waiting for one.
    public func next() -> Item { queue.take() ?? .failed(ProtocolError("the session's frames were closed"), source: 0) }

    /// The next item if one is queued, without waiting. After nil, `wakeFD` polls readable once one is.
    public func poll() -> Item? {
        wakePipe?.drain()
        return queue.poll()
    }

    /// Whether an item is queued.
    public var hasQueued: Bool { !queue.isEmpty }

    /// Done with the frames: what is queued is dropped, and every reading thread stops at its next frame.
    public func close() { queue.discard() }
}

extension Message {
    /// The chunk bytes a frame holds, for bounding queues of frames.
    public var payloadBytes: Int {
        if case .chunkData(_, _, _, _, let payload) = self { return payload.count }
        return 0
    }
}

/// A stream whose writes queue (up to 8 MiB) for a thread of its own to write out (`drain`), so that a slow
/// connection never stalls the session while another has room. The agent's outbound joined streams are these;
/// the client's SSH connections queue in their own pump threads.
public final class QueuedOutput: ByteStream, Sendable {
    private let pieces = BoundedQueue<[UInt8]>(limit: 8 << 20, cost: { $0.count })
    private let state = Locked<(queued: Int, failure: String?)>((0, nil))
    private let name: String

    /// `name` is what errors call it ("a joined stream of this pull").
    public init(name: String) { self.name = name }

    /// Bytes queued here: what the stream still has to send, besides what its frame writer holds.
    public var queuedOutputBytes: Int { state.withLock { $0.queued } }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int { 0 }

    /// Fails once the stream failed or was closed: a failed `drain` closes the queue, so no write waits on it.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        state.withLock { $0.queued += bytes.count }
        guard pieces.put(Array(bytes)) else {
            let failure = state.withLock { $0.failure }
            throw ProtocolError(failure.map { "\(name) failed: \($0)" } ?? "\(name) was closed")
        }
    }

    /// No more writes: the stream writes out what it holds, then `drain` returns.
    public func closeWrite() { pieces.close() }

    /// Writes the queue to `stream` until closed and empty; returns why it stopped early, if it did (the writes
    /// still queued and to come then fail with it).
    public func drain(to stream: ByteStream) -> String? {
        while let piece = pieces.take() {
            do { try piece.withUnsafeBytes { try stream.write($0) } } catch {
                state.withLock { $0.failure = "\(error)" }
                pieces.discard()
                return "\(error)"
            }
            state.withLock { $0.queued -= piece.count }
        }
        return nil
    }
}
