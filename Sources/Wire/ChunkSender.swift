import Chunking
import SyncSystem

/// Sends chunks of local files: reads each one, checks it still matches its id, and queues it as a chunk-data
/// frame, compressed when that pays. One per sending thread: it owns a read buffer and a compressor.
public final class ChunkSender {
    /// zlib level 6 for the first `tightBudget` bytes of a session, level 1 after that: a small transfer (an edit,
    /// an appended log) is compressed as hard as rsync -z does, and a bulk transfer is not slowed to 26 MB/s
    /// per core (level 6 on CSV here; level 1 runs at 136 MB/s for 11% less gain).
    private let tight = ChunkCompressor(level: 6)
    private let fast = ChunkCompressor(level: 1)
    private static let tightBudget = 16 << 20
    private var bytesSeen = 0
    private var policy = CompressionPolicy()
    private let compression: Bool
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ChunkParameters.largestMaxSize, alignment: 16)

    /// `compress` false sends every chunk raw (a link faster than zlib; see `worthCompressing`).
    public init(compress: Bool = true) { compression = compress }

    deinit { buffer.deallocate() }

    /// Queues `chunk` (number `index` of file `op`) read from `file`. Returns false, sending nothing, when the file
    /// no longer holds those bytes: it changed since it was chunked.
    public func send(_ chunk: ChunkRef, index: UInt32, op: UInt32, from file: FileDescriptor, to writer: FrameWriter) throws -> Bool {
        let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(chunk.length)])
        let n = try file.read(into: view, at: chunk.offset)
        guard n == Int(chunk.length), ChunkID(hashing: UnsafeRawBufferPointer(view)) == chunk.id else { return false }
        try send(chunk, index: index, op: op, bytes: UnsafeRawBufferPointer(view), to: writer)
        return true
    }

    /// The chunks of file `op` that follow are of a file named `name` (its last component): its type may say
    /// they are not worth compressing (`CompressionHint`).
    public func begin(op: UInt32, name: some BidirectionalCollection<UInt8>) { policy.begin(op: op, name: name) }

    /// Queues `chunk` from `bytes`, which hold it as it was read when it was hashed (so it matches its id).
    public func send(_ chunk: ChunkRef, index: UInt32, op: UInt32, bytes: UnsafeRawBufferPointer, to writer: FrameWriter) throws {
        bytesSeen += bytes.count
        let compressor = bytesSeen <= Self.tightBudget ? tight : fast
        if compression, let packed = policy.compress(bytes, op: op, offset: chunk.offset, with: compressor) {
            try packed.withUnsafeBytes { try writer.sendChunk(op: op, index: index, compressed: true, rawLength: chunk.length, bytes: $0) }
        } else {
            try writer.sendChunk(op: op, index: index, compressed: false, rawLength: chunk.length, bytes: bytes)
        }
    }
}
