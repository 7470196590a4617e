import Chunking
import Testing
import Transfer
import Wire

/// `ChunkSender` with a link rate: past its first 2 MB, it compresses only while zlib outpaces the link, and
/// whatever it decides, the chunks decode to the bytes that were sent.
@Suite struct AdaptiveCompressionTests {
    /// Bytes written, kept in memory, and read back from the start.
    final class Memory: ByteStream {
        var bytes: [UInt8] = []
        var readOffset = 0
        func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            let n = min(buffer.count, bytes.count - readOffset)
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + readOffset, byteCount: n) }
            readOffset += n
            return n
        }
        func write(_ data: UnsafeRawBufferPointer) throws { bytes.append(contentsOf: data) }
        func closeWrite() {}
    }

    /// 64 KiB chunks of CSV-like text that zlib shrinks about by half, each different.
    static let chunks: [[UInt8]] = {
        var generator = SystemRandomNumberGenerator()
        return (0..<96).map { _ in
            var text = ""
            while text.utf8.count < 65536 {
                text += "\(UInt32.random(in: 0...99_999, using: &generator)),\(Double.random(in: 0..<3, using: &generator)),0.5\n"
            }
            return Array(text.utf8.prefix(65536))
        }
    }()

    /// Sends every chunk through a sender whose link runs at `rate` (nil closure: no link rate at all), and
    /// returns how many went compressed, having checked each decodes to its bytes.
    private func compressedCount(linkRate: (() -> Double?)?) throws -> Int {
        let stream = Memory()
        let writer = FrameWriter(stream)
        let sender = ChunkSender(compress: true, linkRate: linkRate)
        sender.begin(op: 1, name: Array("log.csv".utf8))
        var offset: UInt64 = 0
        for (index, chunk) in Self.chunks.enumerated() {
            let ref = ChunkRef(id: ChunkID(hashing: chunk), offset: offset, length: UInt32(chunk.count))
            try chunk.withUnsafeBytes { try sender.send(ref, index: UInt32(index), op: 1, bytes: $0, to: writer) }
            offset += UInt64(chunk.count)
        }
        try writer.flush()
        let reader = FrameReader(stream)
        let decompressor = ChunkDecompressor()
        var out = [UInt8](repeating: 0, count: 65536)
        var compressed = 0
        for expected in Self.chunks.indices {
            guard case .chunkData(_, let index, let packed, let rawLength, let payload)? = try reader.next() else {
                Issue.record("chunk \(expected): no chunk frame")
                return -1
            }
            #expect(Int(index) == expected && Int(rawLength) == Self.chunks[expected].count)
            if packed {
                compressed += 1
                try out.withUnsafeMutableBytes { o in
                    try payload.withUnsafeBytes { try decompressor.decompress($0, rawLength: Int(rawLength), into: o) }
                }
                #expect(out == Self.chunks[expected], "chunk \(expected) decodes to other bytes")
            } else {
                #expect(payload == Self.chunks[expected], "chunk \(expected) sent raw is not its bytes")
            }
        }
        return compressed
    }

    @Test func withoutALinkRateEveryChunkThatShrinksIsCompressed() throws {
        #expect(try compressedCount(linkRate: nil) == Self.chunks.count)
    }

    @Test func aLinkSlowerThanZlibGetsEveryChunkCompressed() throws {
        // One byte a second: a backed-up link that zlib outpaces by far.
        #expect(try compressedCount(linkRate: { 1 }) == Self.chunks.count)
    }

    @Test func aLinkFasterThanZlibGetsBulkRawButForProbes() throws {
        // The first 2 MB (32 chunks) at level 6; then 1 MiB (16 chunks) at level 1 to learn its speed, and of
        // the bulk chunks after those, one in `probeEvery`.
        let rest = Self.chunks.count - 32 - 16
        let expected = 32 + 16 + rest / ChunkSender.probeEvery
        #expect(try compressedCount(linkRate: { 1e15 }) == expected)
    }

    @Test func aLinkThatNeverBackedUpGetsBulkRawButForProbes() throws {
        // No rate known: the link takes bytes faster than they come.
        let bulk = Self.chunks.count - 32
        #expect(try compressedCount(linkRate: { nil }) == 32 + bulk / ChunkSender.probeEvery)
    }
}
