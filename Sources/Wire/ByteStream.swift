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
}

extension ByteStream {
    public var readinessFD: Int32? { nil }
}

/// A byte stream over two file descriptors (stdin/stdout of the agent, or pipes to a child process).
public final class FileDescriptorStream: ByteStream {
    private let input: Int32
    private var output: Int32
    private let name: String

    /// `name` describes the peer in errors ("agent stdout", "stdin").
    public init(input: Int32, output: Int32, name: String) {
        self.input = input
        self.output = output
        self.name = name
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
