import SyncSystem
#if canImport(Glibc)
import Glibc
#endif

/// A read buffer that a cut file's bytes are handed over in: the chunker reads into it, and whoever sends the
/// chunks keeps it as long as it needs them. Its memory goes back to the pool it came from when the last
/// reference goes.
public final class ReadBuffer: @unchecked Sendable {  // written by one thread before it is handed over, then read only
    public let bytes: UnsafeMutableRawBufferPointer
    private let pool: ReadBufferPool

    fileprivate init(_ bytes: UnsafeMutableRawBufferPointer, pool: ReadBufferPool) {
        self.bytes = bytes
        self.pool = pool
    }

    deinit { pool.giveBack(bytes) }
}

/// Buffers of one size, kept for reuse (at most `keep` idle ones), so that a large file is not read into fresh
/// pages each time: the kernel would fault and zero every one of them.
public final class ReadBufferPool: @unchecked Sendable {  // `idle` is Locked; `size` and `keep` are set once
    public let size: Int
    private let keep: Int
    private let idle = Locked<[UnsafeMutableRawBufferPointer]>([])

    public init(size: Int, keep: Int) {
        self.size = size
        self.keep = keep
    }

    deinit { for b in idle.current { b.deallocate() } }

    public func take() -> ReadBuffer {
        let reused = idle.withLock { $0.popLast() }
        return ReadBuffer(reused ?? .allocate(byteCount: size, alignment: 64), pool: self)
    }

    fileprivate func giveBack(_ bytes: UnsafeMutableRawBufferPointer) {
        let kept = idle.withLock { idle in
            guard idle.count < keep else { return false }
            idle.append(bytes)
            return true
        }
        if !kept { bytes.deallocate() }
    }
}

extension FileChunker {
    /// Whether `file` is a regular file with every block allocated (no holes), as `chunkStreaming` needs.
    public static func isDense(_ file: FileDescriptor) -> Bool {
        var st = stat()
        guard fstat(file.raw, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return false }
        return UInt64(st.st_blocks) * 512 >= UInt64(max(st.st_size, 0))
    }

    /// `chunk(_:)` for a file without holes (`isDense`), handing the chunks over as they are cut, with the bytes
    /// they were cut from and without copying them: the file is read into buffers from `pool`, and each call of
    /// `emit` gets the next chunks (offsets from the file's start), the buffer and where in it they are. Only the
    /// cut-off tail of a buffer (less than the largest chunk) is copied into the next one. An error `emit` throws
    /// stops the reading and is thrown. Without `keepingChunks`, the chunks are forgotten once handed over, and
    /// the content returned has none (a caller that keeps them itself need not have a 16 GiB file's list twice).
    public func chunkStreaming(_ file: FileDescriptor, pool: ReadBufferPool, keepingChunks: Bool = true,
                               emit: ([ChunkRef], ReadBuffer, Range<Int>) throws -> Void) throws -> ChunkedContent {
        let maxSize = cdc.parameters.maxSize
        precondition(pool.size >= 2 * maxSize, "a read buffer holds two of the largest chunks at least")
        let digest = StreamingDigest()
        var chunks: [ChunkRef] = []
        var buffer = pool.take()
        var filled = 0, begin = 0, emittedFrom = 0
        var emittedChunks = 0
        var readOffset: UInt64 = 0, fileOffset: UInt64 = 0
        var eof = false
        func handOver() throws {
            guard emittedChunks < chunks.count else { return }
            try emit(Array(chunks[emittedChunks...]), buffer, emittedFrom..<begin)
            emittedChunks = chunks.count
            emittedFrom = begin
            if !keepingChunks {
                chunks.removeAll(keepingCapacity: true)
                emittedChunks = 0
            }
        }
        while true {
            if !eof && filled - begin < maxSize {
                if begin > 0 {
                    // What was cut goes with this buffer; the rest starts the next one.
                    try handOver()
                    let next = pool.take()
                    let pending = filled - begin
                    if pending > 0 { next.bytes.baseAddress!.copyMemory(from: buffer.bytes.baseAddress! + begin, byteCount: pending) }
                    buffer = next
                    filled = pending
                    begin = 0
                    emittedFrom = 0
                }
                while filled < buffer.bytes.count {
                    let want = buffer.bytes.count - filled
                    let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[filled...]), at: readOffset)
                    filled += n
                    readOffset += UInt64(n)
                    if n < want { eof = true; break }
                }
            }
            if begin == filled { break }
            let window = UnsafeRawBufferPointer(rebasing: buffer.bytes[begin..<filled])
            let length = cdc.cut(window).length
            let piece = UnsafeRawBufferPointer(rebasing: window[0..<length])
            chunks.append(ChunkRef(id: ChunkID(hashing: piece), offset: fileOffset, length: UInt32(length)))
            digest.update(piece)
            fileOffset += UInt64(length)
            begin += length
        }
        try handOver()
        return ChunkedContent(chunks: chunks, digest: digest.finish(), size: fileOffset)
    }
}
