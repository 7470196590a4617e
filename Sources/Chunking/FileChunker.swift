import SyncSystem

/// One chunk of a file: its id, where it starts and how long it is.
public struct ChunkRef: Equatable, Hashable, Sendable {
    public var id: ChunkID
    public var offset: UInt64
    public var length: UInt32

    public init(id: ChunkID, offset: UInt64, length: UInt32) {
        self.id = id
        self.offset = offset
        self.length = length
    }
}

/// A file cut into chunks, with the digest of its whole content.
public struct ChunkedContent: Equatable, Sendable {
    public var chunks: [ChunkRef]
    public var digest: ChunkID
    public var size: UInt64

    public init(chunks: [ChunkRef], digest: ChunkID, size: UInt64) {
        self.chunks = chunks
        self.digest = digest
        self.size = size
    }
}

/// Cuts files into FastCDC chunks and hashes each chunk and the whole file in one pass.
/// One instance per thread: it owns a read buffer.
public final class FileChunker {
    public let cdc: FastCDC
    private let buffer: UnsafeMutableRawBufferPointer
    private let digest = StreamingDigest()

    public init(_ parameters: ChunkParameters = .default) {
        cdc = FastCDC(parameters)
        let size = max(8 << 20, 4 * parameters.maxSize)
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
    }

    deinit { buffer.deallocate() }

    /// Chunks everything read from `file`, from its start.
    public func chunk(_ file: FileDescriptor) throws -> ChunkedContent {
        digest.reset()
        var chunks: [ChunkRef] = []
        var filled = 0
        var start = 0
        var fileOffset: UInt64 = 0
        var eof = false
        let maxSize = cdc.parameters.maxSize
        while true {
            if !eof && filled - start < maxSize {
                if start > 0 {
                    let pending = filled - start
                    if pending > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: pending) }
                    filled = pending
                    start = 0
                }
                while filled < buffer.count {
                    let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
                    if n == 0 { eof = true; break }
                    filled += n
                }
            }
            if start == filled { break }
            let window = UnsafeRawBufferPointer(rebasing: buffer[start..<filled])
            let length = cdc.cut(window).length
            let bytes = UnsafeRawBufferPointer(rebasing: window[0..<length])
            chunks.append(ChunkRef(id: ChunkID(hashing: bytes), offset: fileOffset, length: UInt32(length)))
            digest.update(bytes)
            fileOffset += UInt64(length)
            start += length
        }
        return ChunkedContent(chunks: chunks, digest: digest.finish(), size: fileOffset)
    }

    /// Chunks an in-memory buffer (used by tests and benchmarks).
    public func chunk(bytes: UnsafeRawBufferPointer) -> ChunkedContent {
        digest.reset()
        var chunks: [ChunkRef] = []
        var start = 0
        while start < bytes.count {
            let window = UnsafeRawBufferPointer(rebasing: bytes[start...])
            let length = cdc.cut(window).length
            let piece = UnsafeRawBufferPointer(rebasing: window[0..<length])
            chunks.append(ChunkRef(id: ChunkID(hashing: piece), offset: UInt64(start), length: UInt32(length)))
            digest.update(piece)
            start += length
        }
        return ChunkedContent(chunks: chunks, digest: digest.finish(), size: UInt64(bytes.count))
    }
}
