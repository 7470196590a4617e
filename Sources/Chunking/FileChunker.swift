import CSystemShims
import SyncSystem
#if canImport(Glibc)
import Glibc
#endif

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

    /// Holes shorter than this are read as data (zeros): a file with many small holes would otherwise cut
    /// its chunks at each one.
    public static let minimumHole: UInt64 = 64 << 10
    /// The largest hole one chunk ref stands for; longer holes take several.
    static let largestHoleRef: UInt64 = 1 << 30

    /// Chunks everything in `file`, from its start. A sparse file (fewer blocks allocated than its size says)
    /// is read region by region with SEEK_DATA/SEEK_HOLE: its holes are not read, and each becomes a hole ref
    /// (`ChunkID.hole`); the whole-file digest covers them as the zeros they read as.
    public func chunk(_ file: FileDescriptor) throws -> ChunkedContent {
        digest.reset()
        var chunks: [ChunkRef] = []
        var st = stat()
        try syscall("fstat", path: file.path) { fstat(file.raw, &st) }
        let size = UInt64(max(st.st_size, 0))
        if UInt64(st.st_blocks) * 512 >= size || (st.st_mode & S_IFMT) != S_IFREG {
            let end = try chunkRegion(file, from: 0, to: nil, into: &chunks)
            return ChunkedContent(chunks: chunks, digest: digest.finish(), size: end)
        }
        var offset: UInt64 = 0
        var whole = true
        for region in try dataRegions(file, size: size) {
            if region.start > offset { appendHole(region.start - offset, at: offset, into: &chunks) }
            offset = try chunkRegion(file, from: region.start, to: region.end, into: &chunks)
            // Cut short while being read: the caller sees the file's stat change and reads it again later.
            if offset < region.end { whole = false; break }
        }
        if whole && offset < size {
            appendHole(size - offset, at: offset, into: &chunks)
            offset = size
        }
        return ChunkedContent(chunks: chunks, digest: digest.finish(), size: offset)
    }

    /// Like `chunk(_:)`, and for a file of at most `keep` bytes read whole in one go (not sparse), the bytes
    /// read too: a caller that sends the file then needs no second read.
    public func chunk(_ file: FileDescriptor, keepingUpTo keep: Int) throws -> (content: ChunkedContent, bytes: [UInt8]?) {
        let content = try chunk(file)
        guard content.size <= UInt64(keep), content.size <= UInt64(buffer.count), keptWhole,
              !content.chunks.contains(where: \.id.isHole) else { return (content, nil) }
        return (content, Array(UnsafeRawBufferPointer(rebasing: buffer[0..<Int(content.size)])))
    }

    /// True when the last `chunkRegion` read its whole region from offset 0 into the buffer without moving it.
    private var keptWhole = false
    var lastParallelRun = ParallelRun()

    private func appendHole(_ length: UInt64, at start: UInt64, into chunks: inout [ChunkRef]) {
        var offset = start
        var left = length
        while left > 0 {
            let piece = min(left, Self.largestHoleRef)
            chunks.append(ChunkRef(id: .hole, offset: offset, length: UInt32(piece)))
            offset += piece
            left -= piece
        }
        digest.updateZeros(length)
    }

    /// The regions of a sparse file that hold data, holes shorter than `minimumHole` counted as data.
    private func dataRegions(_ file: FileDescriptor, size: UInt64) throws -> [(start: UInt64, end: UInt64)] {
        var regions: [(start: UInt64, end: UInt64)] = []
        var offset: UInt64 = 0
        while offset < size {
            let data = syncd_seek_data(file.raw, Int64(offset))
            if data < 0 {
                if errno == ENXIO { break }  // only a hole is left
                throw SystemError(call: "lseek(SEEK_DATA)", path: file.path, errno: errno)
            }
            let hole = syncd_seek_hole(file.raw, data)
            if hole < 0 { throw SystemError(call: "lseek(SEEK_HOLE)", path: file.path, errno: errno) }
            let start = UInt64(data), end = min(UInt64(hole), size)
            if let last = regions.last, start - last.end < Self.minimumHole {
                regions[regions.count - 1].end = end
            } else if start < end {
                regions.append((start, end))
            }
            offset = max(end, start + 1)
        }
        // A short hole at the very start is data too.
        if let first = regions.first, first.start > 0 && first.start < Self.minimumHole { regions[0].start = 0 }
        return regions
    }

    /// FastCDC over the bytes from `start` to `end` (nil: to the end of the file), read with pread; returns where
    /// the reading stopped. With `stopAfter`, it stops at the first cut at or past that offset. Each chunk feeds
    /// the whole-file digest unless `digesting` is false.
    private func chunkRegion(_ file: FileDescriptor, from start: UInt64, to end: UInt64?, into chunks: inout [ChunkRef],
                             stopAfter: UInt64? = nil, digesting: Bool = true) throws -> UInt64 {
        var filled = 0
        var begin = 0
        var readOffset = start
        var fileOffset = start
        var eof = false
        let maxSize = cdc.parameters.maxSize
        keptWhole = start == 0
        while true {
            if !eof && filled - begin < maxSize {
                if begin > 0 {
                    keptWhole = false
                    let pending = filled - begin
                    if pending > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + begin, byteCount: pending) }
                    filled = pending
                    begin = 0
                }
                while filled < buffer.count {
                    var want = buffer.count - filled
                    if let end { want = Int(min(UInt64(want), end - readOffset)) }
                    if want == 0 { eof = true; break }
                    let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + want)]), at: readOffset)
                    if n == 0 { eof = true; break }
                    filled += n
                    readOffset += UInt64(n)
                    if n < want { eof = true; break }
                }
            }
            if begin == filled { break }
            let window = UnsafeRawBufferPointer(rebasing: buffer[begin..<filled])
            let length = cdc.cut(window).length
            let bytes = UnsafeRawBufferPointer(rebasing: window[0..<length])
            chunks.append(ChunkRef(id: ChunkID(hashing: bytes), offset: fileOffset, length: UInt32(length)))
            if digesting { digest.update(bytes) }
            fileOffset += UInt64(length)
            begin += length
            if let stopAfter, fileOffset >= stopAfter { break }
        }
        return fileOffset
    }

    /// Feeds the whole-file digest with the bytes from `start` to the end of the file; returns the end.
    private func digestRest(_ file: FileDescriptor, from start: UInt64) throws -> UInt64 {
        var offset = start
        while true {
            let n = try file.read(into: buffer, at: offset)
            if n == 0 { return offset }
            digest.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            offset += UInt64(n)
        }
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

extension FileChunker {
    /// How the last `chunk(_:threads:)` went: pieces chunked apart, and whether the rest was chunked in order
    /// after two pieces shared no cut (for tests).
    struct ParallelRun: Equatable {
        var pieces = 1
        var inOrderFrom: UInt64?
    }

    /// This machine's online processors: how many threads `chunk(_:threads:)` is usually given.
    public static let processors = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    /// Files at least this large are worth chunking on several threads (`chunk(_:threads:)`).
    public static let parallelThreshold: UInt64 = 32 << 20

    /// `chunk(_:)` on up to `threads` threads (at most 4), with the same result: what the agent hashes before a
    /// pull can offer a new checkpoint is otherwise done on one core while the others wait.
    ///
    /// The file is cut into pieces, and each piece is chunked from its start as if a chunk began there, and on
    /// past its end by `lookahead` bytes. A cut depends only on the bytes since the previous cut, so once two
    /// pieces' cut sequences share a cut they agree from there on: the chunks of the file are those of the first
    /// piece up to its first cut that is also a cut of the second piece, then the second piece's, and so on. Where
    /// two pieces share no cut within the lookahead (long runs of zeros, cut at the maximum size on two grids)
    /// the rest is chunked here, in order. The first worker also feeds the whole-file digest, which must see
    /// the bytes in order, so its piece is the smallest. Sparse and small files take `chunk(_:)`.
    public func chunk(_ file: FileDescriptor, threads: Int) throws -> ChunkedContent {
        var st = stat()
        try syscall("fstat", path: file.path) { fstat(file.raw, &st) }
        let size = UInt64(max(st.st_size, 0))
        let count = min(threads, 4, Int(size / (Self.parallelThreshold / 2)))
        lastParallelRun = ParallelRun()
        guard count > 1, (st.st_mode & S_IFMT) == S_IFREG, UInt64(st.st_blocks) * 512 >= size else { return try chunk(file) }
        lastParallelRun.pieces = count

        // Digesting alone is about 4x cheaper than chunking and hashing: the first worker's share makes its
        // piece plus the digest of the rest take as long as another worker's piece.
        let others = Double(count - 1)
        let firstShare = max(0.05, (1 / others - 0.25) / (1 + 1 / others - 0.25))
        var bounds: [UInt64] = [0, UInt64(Double(size) * firstShare)]
        for k in 1..<(count - 1) { bounds.append(bounds[1] + (size - bounds[1]) * UInt64(k) / UInt64(count - 1)) }
        bounds.append(size)
        let lookahead = UInt64(16 * cdc.parameters.maxSize)

        let pieces = IndexedResults<Result<[ChunkRef], Error>>(count: count)
        var threadsStarted: [pthread_t] = []
        defer { for t in threadsStarted { pthread_join(t, nil) } }
        for k in 1..<count {
            let parameters = cdc.parameters
            let (from, until) = (bounds[k], bounds[k + 1] + lookahead)
            let work = {
                var chunks: [ChunkRef] = []
                _ = try FileChunker(parameters).chunkRegion(file, from: from, to: nil, into: &chunks, stopAfter: until, digesting: false)
                return chunks
            }
            // No thread to be had: that piece is chunked here.
            do { threadsStarted.append(try startThread { pieces.set(k, Result { try work() }) }) } catch { pieces.set(k, Result { try work() }) }
        }
        digest.reset()
        var merged: [ChunkRef] = []
        let firstEnd = try chunkRegion(file, from: 0, to: nil, into: &merged, stopAfter: bounds[1] + lookahead)
        let digestedTo = try digestRest(file, from: firstEnd)
        for t in threadsStarted { pthread_join(t, nil) }
        threadsStarted = []

        func end(_ c: ChunkRef) -> UInt64 { c.offset + UInt64(c.length) }
        pieceByPiece: for k in 1..<count {
            guard let result = pieces[k] else { throw SystemError(call: "chunk worker (no result)", path: nil, errno: EIO) }
            let piece = try result.get()
            var startIndex: [UInt64: Int] = [:]
            for (i, c) in piece.enumerated() { startIndex[c.offset] = i }
            guard let shared = merged.firstIndex(where: { end($0) >= bounds[k] && startIndex[end($0)] != nil }) else {
                lastParallelRun.inOrderFrom = merged.last.map(end) ?? 0
                _ = try chunkRegion(file, from: merged.last.map(end) ?? 0, to: nil, into: &merged, digesting: false)
                break pieceByPiece
            }
            let from = startIndex[end(merged[shared])]!
            merged.removeSubrange((shared + 1)...)
            merged += piece[from...]
        }
        // The file changed size while it was read: its workers saw different ends. The caller's stat check sees
        // the change; what is returned is at least whole.
        if (merged.last.map(end) ?? 0) != digestedTo { return try chunk(file) }
        return ChunkedContent(chunks: merged, digest: digest.finish(), size: digestedTo)
    }
}
