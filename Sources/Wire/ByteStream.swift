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
}

extension ByteStream {
    public var readinessFD: Int32? { nil }
    public var roundTripSeconds: Double? { nil }
    public var queuedOutputBytes: Int { 0 }
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

    /// `name` describes the peer in errors ("agent stdout", "stdin"); `roundTrip` is 0 for pipes to a local
    /// process, nil when the far end is unknown (the agent's stdio, fed by sshd).
    public init(input: Int32, output: Int32, name: String, roundTrip: Double? = nil) {
        self.input = input
        self.output = output
        self.name = name
        roundTripSeconds = roundTrip
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try syscall("read", path: name) { Glibc.read(input, buffer.baseAddress!, buffer.count) }
    }

    public var readinessFD: Int32? { input }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = try syscall("write", path: name) { Glibc.write(output, bytes.baseAddress! + done, bytes.count - done) }
            done += n
        }
    }

    public func closeWrite() {
        if output >= 0 { Glibc.close(output); output = -1 }
    }
}
