#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Testing
import Wire

private func b(_ s: String) -> [UInt8] { Array(s.utf8) }

struct WireTests {
    static let samples: [Message] = [
        .hello(Hello(role: .pull, project: "p", remoteRoot: "/r", pullPaths: ["output", "checkpoint"], chunking: .default)),
        .hello(Hello(role: .push, project: "p", remoteRoot: "", pullPaths: [], chunking: .default, expectInstance: "00ff00ff00ff00ff00ff00ff00ff00ff")),
        .welcome(agentVersion: "0.1.0", projectDirectory: "/r/p", instance: "0123456789abcdef"),
        .fileBegin(FileHeader(op: 7, path: b("src/ü.py") + [0xE9], permissions: 0o755, mtimeNanos: -5, size: 99,
                              digest: ChunkID(low: 1, high: 2), base: .symlink(b("x")), chunkCount: 3, dataFollows: true, force: true)),
        .fileBegin(FileHeader(op: 8, path: b("ckpt.pt"), permissions: 0o644, mtimeNanos: 1, size: 1 << 40, digest: ChunkID(low: 0, high: 0),
                              base: .file(ChunkID(low: 1, high: 1)), chunkCount: 0, streamed: true)),
        .chunkList(op: 7, chunks: [ChunkRef(id: ChunkID(low: 3, high: 4), offset: 0, length: 10)]),
        .fileEnd(op: 8, size: 1 << 33, digest: ChunkID(low: 5, high: 9), chunkCount: 70_000),
        .chunkData(op: 7, index: 2, compressed: true, rawLength: 5, payload: [1, 2, 3]),
        .abort(op: 1, reason: "changed"),
        .symlink(op: 2, path: b("l"), target: [0xFF, 0x2F], base: .absent, force: false),
        .directory(op: 3, path: b("d"), permissions: 0o700, force: true),
        .delete(op: 4, path: b("x\n"), base: .directory, force: false),
        .endOfOperations, .done, .listEnd, .fetchEnd,
        .need(op: 5, indices: [0, 9]),
        .fetch(op: 6, indices: [1]),
        .result(OpResult(op: 8, status: .conflict, message: "m", current: .file(ChunkID(low: 5, high: 6)), currentSize: 12,
                         currentMtimeNanos: 99, keptAs: b("a.sync-conflict-20261201-000000.txt"))),
        .remoteEntry(RemoteEntry(op: 9, path: b("output/a"), state: .directory, permissions: 0o755, mtimeNanos: 1, size: 0, chunkCount: 0)),
        .skipped(path: b("output/b"), reason: "open"),
        .skipped(path: b("output/c"), reason: "open for writing by process 7", kind: .beingWritten),
        .remoteChanged(paths: [b("output/c"), [0x80]]),
        .hello(Hello(role: .pull, project: "p", remoteRoot: "/r", pullPaths: ["output"], chunking: .default,
                     conflictStamp: "20261201-073616", roots: [b("src/a.py"), [0xE9]])),
        .hello({
            var h = Hello(role: .pull, project: "p", remoteRoot: "", pullPaths: ["output"], chunking: .default)
            h.compressAdaptively = true
            return h
        }()),
        .hello(Hello(role: .pull, project: "p", remoteRoot: "", pullPaths: [], chunking: .default, compress: false)),
        .error(message: "boom", reason: .cannotWatch),
        .storePacks(store: "s3://b/p", signingRegion: "", packs: [StorePack(digest: ChunkID(low: 7, high: 8), url: "http://h/b/p?X-Amz-Signature=1")]),
        .storePacks(store: "s3://b/p", signingRegion: "eu-west-1", packs: [StorePack(digest: ChunkID(low: 9, high: 1), url: "http://h/b/p/packs/x")]),
        .storeChunks([StoreChunk(id: ChunkID(low: 2, high: 3), pack: 1, offset: 99, storedLength: 10, rawLength: 20, compressed: true)]),
        .storeTrouble(unreachable: false, pack: ChunkID(low: 4, high: 5), damaged: [ChunkID(low: 6, high: 7)], reason: "s3://b/p/packs/x.pack: altered"),
        .storeTrouble(unreachable: true, pack: ChunkID(low: 0, high: 0), damaged: [], reason: "3 reads failed"),
        .streamsOpen(count: 3),
        .streamsReady(address: "syncd-12-0af3", token: Array(0..<16)),
        .streamsReady(address: "", token: []),
        .join(token: [0xFF, 0, 7]),
        .applySnapshot(SnapshotApply(store: "s3://b/p", signingRegion: "", urlHead: "http://h/b/p/", urlQuery: "X-Amz-Expires=1",
                                     manifest: .init(digest: ChunkID(low: 1, high: 2), signature: Array(0..<32)),
                                     base: nil, packs: [], indexes: [], exceptions: [], force: false)),
        .applySnapshot(SnapshotApply(store: "s3://b/p", signingRegion: "eu-west-1", urlHead: "http://h/b/p/", urlQuery: "",
                                     manifest: .init(digest: ChunkID(low: 1, high: 2), signature: []),
                                     base: .init(digest: ChunkID(low: 3, high: 4), signature: []),
                                     packs: [.init(digest: ChunkID(low: 5, high: 6), signature: [])], indexes: [[]],
                                     exceptions: [(b("a"), .absent), (b("b"), nil), (b("c"), .file(ChunkID(low: 7, high: 8)))], force: true)),
        .applied({
            var s = ApplySummary()
            s.applied = 3; s.unchanged = 1; s.deleted = 2; s.bytesPlaced = 1 << 33
            s.others = [(b("c/2.txt"), OpResult(op: 4, status: .conflict, message: "changed", current: .file(ChunkID(low: 9, high: 9)),
                                                currentSize: 5, currentMtimeNanos: 6))]
            return s
        }()),
        .applied(ApplySummary()),
        .applied({
            var s = ApplySummary()
            s.unreadable = "s3://b/p/manifests/ab/ab….manifest: the store answered NoSuchKey (HTTP 404)"
            return s
        }()),
    ]

    @Test(arguments: 0..<samples.count)
    func roundTrip(index: Int) throws {
        let message = Self.samples[index]
        let (type, payload) = message.encode()
        let decoded = try payload.withUnsafeBytes { try Message.decode(type: type, payload: $0) }
        #expect(decoded == message)
    }

    @Test func truncatedPayloadsThrowNeverCrash() throws {
        for message in Self.samples {
            let (type, payload) = message.encode()
            for cut in 0..<payload.count {
                let prefix = Array(payload[0..<cut])
                if case .chunkData = message, cut >= 13 { continue }  // chunk payload bytes are opaque
                #expect(throws: ProtocolError.self) { try prefix.withUnsafeBytes { try Message.decode(type: type, payload: $0) } }
            }
        }
    }

    /// Every sample, with heartbeats between them, handed to `FrameDecoder` a few bytes at a time (as a poll loop
    /// reads them): the same messages come out, in order, each once all of it is in.
    @Test func theFrameDecoderTakesFramesApartAsTheyCome() throws {
        var stream = clientHandshake()
        for message in Self.samples { stream += encodedFrame(.heartbeat) + encodedFrame(message) }
        for step in [1, 3, 7, 4096] {
            var decoder = FrameDecoder()
            var out: [Message] = []
            var version: UInt16?
            var at = 0
            while at < stream.count {
                let end = min(at + step, stream.count)
                stream[at..<end].withUnsafeBytes { decoder.append($0) }
                at = end
                if version == nil { version = try decoder.handshake() }
                if version != nil { while let m = try decoder.next() { out.append(m) } }
            }
            #expect(version == wireVersion)
            #expect(out == Self.samples, "\(step) bytes at a time")
            #expect(decoder.isEmpty && decoder.bytesIn == UInt64(stream.count))
        }
    }

    @Test func theFrameDecoderRefusesWhatIsNotAFrame() {
        var decoder = FrameDecoder()
        Array("HTTP/1.1 400".utf8).withUnsafeBytes { decoder.append($0) }
        #expect(throws: ProtocolError.self) { try decoder.handshake() }
        var big = FrameDecoder()
        withUnsafeBytes(of: UInt32(maxFrameLength + 1).littleEndian) { big.append($0) }
        #expect(throws: ProtocolError.self) { try big.next() }
        var empty = FrameDecoder()
        [UInt8](repeating: 0, count: 4).withUnsafeBytes { empty.append($0) }
        #expect(throws: ProtocolError.self) { try empty.next() }
    }

    @Test func randomBytesNeverCrashTheDecoder() {
        var rng = SplitMix(seed: 42)
        for _ in 0..<20000 {
            let type = UInt8(truncatingIfNeeded: rng.next())
            let count = Int(rng.next() % 64)
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            _ = try? bytes.withUnsafeBytes { try Message.decode(type: type, payload: $0) }
        }
    }

    @Test func hugeCountsAreRefusedBeforeAllocation() {
        var w = PayloadWriter()
        w.u32(1)
        w.u32(UInt32.max)
        let bytes = w.bytes
        #expect(throws: ProtocolError.self) { try bytes.withUnsafeBytes { try Message.decode(type: 0x30, payload: $0) } }
        #expect(throws: ProtocolError.self) { try bytes.withUnsafeBytes { try Message.decode(type: 0x11, payload: $0) } }
    }

    @Test func compressionRoundTripAndSkipsIncompressible() throws {
        let compressor = ChunkCompressor()
        let decompressor = ChunkDecompressor()
        let text = Array(String(repeating: "epoch,loss,accuracy\n1,0.5,0.9\n", count: 2000).utf8)
        let packed = try #require(text.withUnsafeBytes { compressor.compress($0) })
        #expect(packed.count < text.count / 4)
        var out = [UInt8](repeating: 0, count: text.count)
        try packed.withUnsafeBytes { p in try out.withUnsafeMutableBytes { try decompressor.decompress(p, rawLength: text.count, into: $0) } }
        #expect(out == text)
        var rng = SplitMix(seed: 1)
        let noise = (0..<65536).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        #expect(noise.withUnsafeBytes { compressor.compress($0) } == nil)
        // A payload that inflates to more than announced is refused.
        var small = [UInt8](repeating: 0, count: 10)
        #expect(throws: ProtocolError.self) {
            try packed.withUnsafeBytes { p in try small.withUnsafeMutableBytes { try decompressor.decompress(p, rawLength: 10, into: $0) } }
        }
        #expect(throws: ProtocolError.self) {
            try noise.withUnsafeBytes { p in try small.withUnsafeMutableBytes { try decompressor.decompress(p, rawLength: 10, into: $0) } }
        }
    }
}

/// Issue 24: what a peer claims in a chunk list is checked before it costs anything, and a reader that was busy
/// finds what came meanwhile instead of taking the peer for stalled.
struct WireLimitTests {
    static func decodeList(_ chunks: [ChunkRef]) throws -> Message {
        let (type, payload) = Message.chunkList(op: 1, chunks: chunks).encode()
        return try payload.withUnsafeBytes { try Message.decode(type: type, payload: $0) }
    }

    @Test func chunkListsRefuseEmptyAndOversizedChunks() throws {
        let id = ChunkID(hashing: Array("x".utf8))
        #expect(throws: ProtocolError.self) { try Self.decodeList([ChunkRef(id: id, offset: 0, length: 0)]) }
        #expect(throws: ProtocolError.self) { try Self.decodeList([ChunkRef(id: .hole, offset: 0, length: 0)]) }
        let big = UInt32(ChunkParameters.largestMaxSize) + 1
        #expect(throws: ProtocolError.self) { try Self.decodeList([ChunkRef(id: id, offset: 0, length: big)]) }
        // A hole may be large: it is never sent.
        _ = try Self.decodeList([ChunkRef(id: .hole, offset: 0, length: UInt32.max), ChunkRef(id: id, offset: 0, length: big - 1)])
    }

    @Test func aReaderThatWasBusyFindsWhatCameMeanwhile() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let stream = FileDescriptorStream(input: fds[0], output: fds[1], name: "test pipe")
        stream.progressTimeout = 0.2
        // The peer wrote, then this side was busy past the timeout before it read.
        try [UInt8](repeating: 7, count: 10).withUnsafeBytes { try stream.write($0) }
        usleep(400_000)
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = try buffer.withUnsafeMutableBytes { try stream.read(into: $0) }
        #expect(n == 10)
        // Nothing more comes: the next read gives up after the timeout, naming the peer.
        do {
            _ = try buffer.withUnsafeMutableBytes { try stream.read(into: $0) }
            Issue.record("a read on a silent peer returned")
        } catch let error as StalledError {
            #expect("\(error)".contains("nothing came from test pipe"))
        }
    }
}
