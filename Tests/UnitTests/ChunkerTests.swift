import Glibc
@testable import Chunking
import SyncSystem
import Testing

/// The FastCDC reference test image, from ../shared/testdata beside the repository.
func sekienImage() throws -> [UInt8] {
    var dir = #filePath
    for _ in 0..<3 { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
    let path = dir + "/../shared/testdata/SekienAkashita.jpg"
    let file = try FileDescriptor.open(path, flags: 0)
    let size = try file.stat().size
    return try file.readExactly(Int(size), at: 0)
}

struct ChunkerTests {
    /// (min, avg, max, normalization, expected (gear hash, length) pairs) from the reference's published tests.
    static let vectors: [(Int, Int, Int, Int, [(UInt64, Int)])] = [
        (4096, 16384, 65535, 1, [
            (17_968_276_318_003_433_923, 21325), (8_197_189_939_299_398_838, 17140),
            (13_019_990_849_178_155_730, 28084), (4_509_236_223_063_678_303, 18217),
            (2_504_464_741_100_432_583, 24700),
        ]),
        (8192, 32768, 131_072, 1, [(15_733_367_461_443_853_673, 66549), (6_321_136_627_705_800_457, 42917)]),
        (16384, 65536, 262_144, 1, [(2_504_464_741_100_432_583, 109_466)]),
        (4096, 16384, 65535, 0, [
            (443_122_261_039_895_162, 6634), (15_733_367_461_443_853_673, 59915),
            (10_460_176_299_449_652_894, 25597), (6_197_802_202_431_009_942, 5237),
            (6_321_136_627_705_800_457, 12083),
        ]),
        (8192, 16384, 32768, 3, [
            (10_718_006_254_707_412_376, 17350), (13_104_072_099_671_895_560, 19911),
            (12_322_483_109_039_221_194, 17426), (16_009_206_469_796_846_404, 17519),
            (2_473_608_525_189_754_172, 19940), (2_504_464_741_100_432_583, 17320),
        ]),
    ]

    @Test(arguments: 0..<vectors.count)
    func referenceCutPoints(vector: Int) throws {
        let (min, avg, max, level, expected) = Self.vectors[vector]
        let image = try sekienImage()
        #expect(image.count == 109_466)
        let cdc = FastCDC(try ChunkParameters(min: min, avg: avg, max: max, normalization: level))
        var got: [(UInt64, Int)] = []
        image.withUnsafeBytes { bytes in
            var start = 0
            while start < bytes.count {
                let cut = cdc.cut(UnsafeRawBufferPointer(rebasing: bytes[start...]))
                got.append((cut.hash, cut.length))
                start += cut.length
            }
        }
        #expect(got.map(\.0) == expected.map(\.0))
        #expect(got.map(\.1) == expected.map(\.1))
    }

    @Test func allZerosGiveMaximumChunks() throws {
        let zeros = [UInt8](repeating: 0, count: 10240)
        let cdc = FastCDC(try ChunkParameters(min: 64, avg: 256, max: 1024))
        zeros.withUnsafeBytes { bytes in
            let cut = cdc.cut(UnsafeRawBufferPointer(rebasing: bytes[0...]))
            #expect(cut.length == 1024)
            #expect(cut.hash == 14_169_102_344_523_991_076)
        }
    }

    /// `data` written to a file in `dir`; its path.
    static func blob(_ data: [UInt8], in dir: TempDir) throws -> String {
        let path = dir.path + "/blob"
        let out = try FileDescriptor.open(path, flags: O_WRONLY_CREAT_TRUNC)
        try data.withUnsafeBytes { try out.writeAll($0) }
        out.close()
        return path
    }

    @Test func fileChunkerMatchesInMemoryChunking() throws {
        var generator = SplitMix(seed: 7)
        let data = (0..<(3 << 20) + 12345).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let dir = try TempDir()
        let path = try Self.blob(data, in: dir)
        let chunker = FileChunker()
        let fromFile = try chunker.chunk(try FileDescriptor.open(path, flags: 0))
        let fromMemory = data.withUnsafeBytes { chunker.chunk(bytes: $0) }
        #expect(fromFile == fromMemory)
        #expect(fromFile.digest == ChunkID(hashing: data))
        #expect(fromFile.chunks.reduce(0) { $0 + UInt64($1.length) } == UInt64(data.count))
        #expect(fromFile.chunks.allSatisfy { $0.length <= 256 * 1024 })
    }

    @Test(arguments: [8 << 20, 512 << 10])
    func streamingChunkingEqualsWholeFileAndHandsOverEveryByteOnce(bufferSize: Int) throws {
        // Random data with a run of zeros (cuts at the largest size), more than a few buffers, and a tail that is
        // no whole buffer. The smallest buffer (two of the largest chunks) moves a tail into almost every next one.
        var generator = SplitMix(seed: 11)
        var data = (0..<(5 << 20)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        data += [UInt8](repeating: 0, count: 3 << 20)
        data += (0..<((9 << 20) + 4321)).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
        let dir = try TempDir()
        let path = try Self.blob(data, in: dir)
        let chunker = FileChunker()
        let expected = try chunker.chunk(try FileDescriptor.open(path, flags: 0))
        let pool = ReadBufferPool(size: bufferSize, keep: 2)
        var handed: [UInt8] = []
        var listed: [ChunkRef] = []
        var kept: [(ReadBuffer, Range<Int>)] = []
        let got = try chunker.chunkStreaming(try FileDescriptor.open(path, flags: 0), pool: pool) { chunks, buffer, range in
            #expect(chunks.first?.offset == UInt64(handed.count), "each hand-over starts where the last ended")
            #expect(UInt64(range.count) == chunks.reduce(0) { $0 + UInt64($1.length) })
            handed += UnsafeRawBufferPointer(rebasing: buffer.bytes[range])
            listed += chunks
            kept.append((buffer, range))  // held, as the sender holds parts until they are answered
        }
        #expect(got == expected)
        #expect(listed == expected.chunks)
        #expect(handed == data)
        #expect(kept.count > 2)
        // Read again from the held buffers at the end: nothing held was written over by later reads.
        let again = kept.flatMap { buffer, range in Array(UnsafeRawBufferPointer(rebasing: buffer.bytes[range])) }
        #expect(again == data)
    }

    @Test func rejectsBadParameters() {
        #expect(throws: ChunkParameterError.self) { try ChunkParameters(min: 10, avg: 256, max: 1024) }
        #expect(throws: ChunkParameterError.self) { try ChunkParameters(min: 4096, avg: 2048, max: 8192) }
        #expect(throws: ChunkParameterError.self) { try ChunkParameters(min: 4096, avg: 8192, max: 1 << 24) }
    }

    @Test func chunkIDHexRoundTrip() {
        let id = ChunkID(hashing: Array("hello".utf8))
        #expect(ChunkID(hex: id.hex) == id)
        #expect(id.hex.count == 32)
    }

    /// The agent binary's digest is remembered against the file's identity: used while that holds (the file is not
    /// read: a forged stamp shows through), never once the file changed, and not written for a file changed within
    /// the last second.
    @Test func fileDigestIsRememberedOnlyWhileTheFileIsTheSame() throws {
        let dir = try TempDir()
        let path = dir.path + "/agent", stamp = dir.path + "/.agent.checked"
        func write(seed: UInt64) throws {
            var rng = SplitMix(seed: seed)
            let bytes = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let file = try FileDescriptor.open(path, flags: O_WRONLY_CREAT_TRUNC)
            try bytes.withUnsafeBytes { try file.write($0, at: 0) }
        }
        func stampText() -> String? {
            guard let file = try? FileDescriptor.open(stamp, flags: O_RDONLY), let st = try? file.stat() else { return nil }
            return (try? file.readExactly(Int(st.size), at: 0)).map { String(decoding: $0, as: UTF8.self) }
        }
        try write(seed: 1)
        let first = try StreamingDigest.digest(ofFile: path)
        #expect(try StreamingDigest.digest(ofFile: path, rememberedIn: stamp) == first)
        #expect(stampText() == nil, "a file changed within the last second is not stamped")

        usleep(1_100_000)
        #expect(try StreamingDigest.digest(ofFile: path, rememberedIn: stamp) == first)
        let text = try #require(stampText())
        #expect(text.hasSuffix(" \(first.hex)\n"))

        // The same identity with another digest: the stamp is believed, so the file was not read.
        let forged = ChunkID(hashing: Array("not the file".utf8))
        let line = text.dropLast(33) + forged.hex + "\n"
        let out = try FileDescriptor.open(stamp, flags: O_WRONLY_CREAT_TRUNC)
        try Array(line.utf8).withUnsafeBytes { try out.write($0, at: 0) }
        #expect(try StreamingDigest.digest(ofFile: path, rememberedIn: stamp) == forged)

        // Rewritten in place with as many bytes: its ctime moved, so it is hashed again.
        try write(seed: 2)
        let second = try StreamingDigest.digest(ofFile: path)
        #expect(second != first)
        #expect(try StreamingDigest.digest(ofFile: path, rememberedIn: stamp) == second)

        // A stamp that is not one is ignored.
        let junk = try FileDescriptor.open(stamp, flags: O_WRONLY_CREAT_TRUNC)
        try Array("garbage".utf8).withUnsafeBytes { try junk.write($0, at: 0) }
        #expect(try StreamingDigest.digest(ofFile: path, rememberedIn: stamp) == second)
    }

    /// A large file chunked on several threads gives exactly the chunks and digest of one thread: random data
    /// (pieces meet at a shared cut), a long run of zeros across the piece bounds (no shared cut: the rest is
    /// chunked in order), and a repeating block.
    @Test(arguments: ["random", "zeros", "repeating"])
    func parallelChunkingEqualsSequential(kind: String) throws {
        let dir = try TempDir()
        let path = dir.path + "/data"
        var rng = SplitMix(seed: 7)
        func random(_ n: Int) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n)
            out.withUnsafeMutableBytes { raw in
                let words = raw.bindMemory(to: UInt64.self)
                for i in words.indices { words[i] = rng.next() }
            }
            return out
        }
        var bytes: [UInt8]
        switch kind {
        case "random": bytes = random(90 << 20)
        case "zeros": bytes = random(10 << 20) + [UInt8](repeating: 0, count: 60 << 20) + random(5 << 20)
        default:
            let block = random(3 << 20)
            bytes = []
            for _ in 0..<24 { bytes += block }
        }
        let out = try FileDescriptor.open(path, flags: O_WRONLY_CREAT_TRUNC)
        try bytes.withUnsafeBytes { try out.write($0, at: 0) }
        let chunker = FileChunker()
        let expected = try chunker.chunk(try FileDescriptor.open(path, flags: O_RDONLY))
        for threads in [2, 3, 4] {
            let got = try chunker.chunk(try FileDescriptor.open(path, flags: O_RDONLY), threads: threads)
            #expect(got == expected, "\(kind), \(threads) threads")
            #expect(chunker.lastParallelRun.pieces == threads)
            if kind == "random" { #expect(chunker.lastParallelRun.inOrderFrom == nil, "random pieces meet at a shared cut") }
            if kind == "zeros" { #expect(chunker.lastParallelRun.inOrderFrom != nil, "pieces inside the zeros share no cut") }
        }
    }
}
