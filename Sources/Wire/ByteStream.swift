#if canImport(Glibc)
import Glibc
#endif
import SyncSystem

/// A reliable, ordered, full-duplex byte pipe to the other side: a pair of pipes to a local agent
/// process, or an SSH exec channel. The wire protocol runs over any of them.
public protocol ByteStream: AnyObject {
    /// Reads some bytes; returns 0 at end of stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Writes all of `bytes`.
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Signals end of output to the peer; reads may go on.
    func closeWrite()
    /// A descriptor that polls readable when `read` would not block, when the stream has one.
    var readinessFD: Int32? { get }
    /// The link's round-trip time in seconds, when the transport knows it (0 for a pipe on this machine).
    var roundTripSeconds: Double? { get }
    /// Bytes written but not yet sent on (a transport with a buffer of its own); 0 when writes go straight out.
    var queuedOutputBytes: Int { get }
    /// How fast the transport sends on what is written to it, in bytes per second, measured over the time it had
    /// output waiting: what the link (cipher, socket, network) can carry, whatever the writer's pace. Nil until
    /// enough has been sent to tell, and for a transport that cannot see it.
    var drainRate: Double? { get }
    /// How long a read may wait for a byte, or a write for the peer to take one, before it fails with
    /// `StalledError`; nil waits as long as it takes. A peer that runs a `Heartbeat` is never silent for long.
    var progressTimeout: Double? { get set }
    /// Throws `StalledError` when nothing came from the peer for longer than `progressTimeout`: for a caller that
    /// waits on `readinessFD` itself, between its polls.
    func checkProgress() throws
    /// Writes what the stream takes now, without waiting for the peer; returns how many bytes it took (0: none
    /// now; try again once `writeReadinessFD` polls writable, or soon when there is none).
    func writeWithoutWaiting(_ bytes: UnsafeRawBufferPointer) throws -> Int
    /// A descriptor that polls writable when `writeWithoutWaiting` would take bytes, when the stream has one.
    var writeReadinessFD: Int32? { get }
}

extension ByteStream {
    public var readinessFD: Int32? { nil }
    public var roundTripSeconds: Double? { nil }
    public var queuedOutputBytes: Int { 0 }
    public var drainRate: Double? { nil }
    public var progressTimeout: Double? {
        get { nil }
        set {}  // a stream that cannot time its waits (in-memory, in tests) never stalls
    }
    public func checkProgress() throws {}
    public func writeWithoutWaiting(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        try write(bytes)
        return bytes.count
    }
    public var writeReadinessFD: Int32? { nil }
}

/// Nothing moved between this side and its peer for longer than the session allows: the link, or the peer,
/// stalled (a frozen proxy or NAT box, a hung host, a stopped process) without closing.
public struct StalledError: Error, CustomStringConvertible {
    /// Who was silent ("the agent on gpu-1:22", "the client").
    public let peer: String
    public let seconds: Double
    /// True when it was the peer that stopped taking what this side wrote.
    public let writing: Bool

    public init(peer: String, seconds: Double, writing: Bool) {
        self.peer = peer
        self.seconds = seconds
        self.writing = writing
    }

    public var description: String {
        let tenths = Int((seconds * 10).rounded())
        let waited = seconds >= 10 ? String(Int(seconds.rounded())) : "\(tenths / 10).\(tenths % 10)"
        return (writing ? "\(peer) took no data for \(waited) s" : "nothing came from \(peer) for \(waited) s")
            + ": the link or the remote stalled (timeout: in syncd.yaml sets how long to wait)"
    }
}

/// Times how fast a transport's far side takes bytes, from writes made while a backlog waited (the writer was
/// then not what held things up): the interval since the previous such write was all the far side's. The rate
/// is known once 4 MiB went out that way over at least 10 ms; a shorter sample says more about the socket or
/// pipe buffer than about the link. Not thread-safe: the owner serializes.
public struct DrainMeter: Sendable {
    private var bytes: UInt64 = 0
    private var nanos: UInt64 = 0
    /// When the last backlogged write returned (0: the backlog ran out since).
    private var lastBacklogged: UInt64 = 0

    public init() {}

    /// `count` bytes were just written; `backlogged` when at least the transport's threshold waited before.
    public mutating func wrote(_ count: Int, backlogged: Bool) {
        guard backlogged else {
            lastBacklogged = 0
            return
        }
        let now = monotonicNanos()
        if lastBacklogged != 0 {
            nanos += now - lastBacklogged
            bytes += UInt64(count)
        }
        lastBacklogged = now
    }

    /// Bytes per second, once known.
    public var rate: Double? {
        guard bytes >= 4 << 20, nanos >= 10_000_000 else { return nil }
        return Double(bytes) / (Double(nanos) / 1e9)
    }
}

/// Whether chunk data is worth compressing on a link: always over a network, never through a pipe to a
/// process on this machine (round trip 0), where it could only cost CPU. Skipping it on fast networks as well
/// (round trip under 1 ms) was measured with Bench/compare on loopback SSH: no faster in wall time, and an edit
/// then sent 1.7 times the bytes of rsync -az.
public func worthCompressing(roundTrip: Double?) -> Bool {
    guard let roundTrip else { return true }
    return roundTrip > 0
}

/// A byte stream over two file descriptors (stdin/stdout of the agent, or pipes to a child process).
public final class FileDescriptorStream: ByteStream {
    private let input: Int32
    private var output: Int32
    private let name: String
    public let roundTripSeconds: Double?
    /// For `drainRate` (with `measuresDrain`): what the output pipe must hold for a write to count as waiting on
    /// the reader (half of it), and the meter.
    private let backlogBytes: Int32
    private var drain = DrainMeter()

    /// `name` describes the peer in errors ("agent stdout", "stdin"); `roundTrip` is 0 for pipes to a local
    /// process, nil when the far end is unknown (the agent's stdio, fed by sshd). With `measuresDrain`, and an
    /// output that is a pipe, the stream times how fast the far end empties it (`drainRate`): for the agent, sshd's
    /// pace, which is the link's.
    public init(input: Int32, output: Int32, name: String, roundTrip: Double? = nil, measuresDrain: Bool = false) {
        self.input = input
        self.output = output
        self.name = name
        roundTripSeconds = roundTrip
        backlogBytes = measuresDrain ? (pipeBufferSize(output) ?? 0) / 2 : 0
        // Writes wait in poll, where they can be timed, never inside write(2).
        _ = fcntl(output, F_SETFL, fcntl(output, F_GETFL) | O_NONBLOCK)
    }

    /// Measured only over writes that found the pipe at least half full (the writer was not what kept it empty).
    public var drainRate: Double? { drain.rate }

    public var progressTimeout: Double?

    /// When a byte last came in (reads are made by one thread at a time).
    private var lastInput = monotonicNanos()

    /// Waits (at most until `progressTimeout` after the last progress) for `fd` to be ready for `events`. Ready
    /// is looked at first: a reader that was busy for long finds what came meanwhile, and only a descriptor still
    /// not ready past the deadline means the peer was silent (nothing unread means nothing came since `since`).
    private func waitReady(_ fd: Int32, _ events: Int32, since: UInt64, writing: Bool) throws {
        var pfd = pollfd(fd: fd, events: Int16(events), revents: 0)
        var wait: Int32 = 0
        while true {
            let rc = poll(&pfd, 1, wait)
            if rc > 0 { return }
            if rc < 0 && errno != EINTR { throw SystemError(call: "poll", path: name, errno: errno) }
            guard let timeout = progressTimeout else {
                wait = -1
                continue
            }
            let deadline = since &+ UInt64(timeout * 1e9)
            let now = monotonicNanos()
            guard now < deadline else { throw StalledError(peer: name, seconds: Double(now - since) / 1e9, writing: writing) }
            wait = Int32(min((deadline - now) / 1_000_000 + 1, 60_000))
        }
    }

    public func checkProgress() throws {
        guard let timeout = progressTimeout else { return }
        let now = monotonicNanos()
        if now &- lastInput > UInt64(timeout * 1e9) {
            throw StalledError(peer: name, seconds: Double(now - lastInput) / 1e9, writing: false)
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if progressTimeout != nil { try waitReady(input, POLLIN, since: lastInput, writing: false) }
        let n = try syscall("read", path: name) { Glibc.read(input, buffer.baseAddress!, buffer.count) }
        if n > 0 { lastInput = monotonicNanos() }
        return n
    }

    public var readinessFD: Int32? { input }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        let backlogged = backlogBytes > 0 && (bytesWaitingInPipe(output) ?? 0) >= backlogBytes
        var done = 0
        var progressed = monotonicNanos()
        while done < bytes.count {
            let n = Glibc.write(output, bytes.baseAddress! + done, bytes.count - done)
            if n > 0 {
                done += n
                progressed = monotonicNanos()
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                try waitReady(output, POLLOUT, since: progressed, writing: true)
            } else if n < 0 && errno != EINTR {
                throw SystemError(call: "write", path: name, errno: errno)
            }
        }
        if backlogBytes > 0 { drain.wrote(bytes.count, backlogged: backlogged) }
    }

    public func writeWithoutWaiting(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        guard bytes.count > 0 else { return 0 }
        while true {
            let n = Glibc.write(output, bytes.baseAddress!, bytes.count)
            if n >= 0 { return n }
            if errno == EAGAIN || errno == EWOULDBLOCK { return 0 }
            if errno != EINTR { throw SystemError(call: "write", path: name, errno: errno) }
        }
    }

    public var writeReadinessFD: Int32? { output >= 0 ? output : nil }

    public func closeWrite() {
        if output >= 0 { Glibc.close(output); output = -1 }
    }
}
