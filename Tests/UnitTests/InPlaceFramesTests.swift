import Chunking
import Glibc
import SyncSystem
import Testing
import Transfer
import Wire

/// Chunk data built in the writer's buffer (`ChunkSender.send(from:)`) and handed over in the reader's
/// (`FrameReader.next(chunk:)`): the same bytes on the wire and the same checks as the copying paths.
@Suite struct InPlaceFramesTests {
    /// Bytes written, kept in memory, and read back from the start in pieces of at most `readSize`.
    final class Memory: ByteStream {
        var bytes: [UInt8] = []
        var readOffset = 0
        var readSize = Int.max
        func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            let n = min(buffer.count, bytes.count - readOffset, readSize)
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + readOffset, byteCount: n) }
            readOffset += n
            return n
        }
        func write(_ data: UnsafeRawBufferPointer) throws { bytes.append(contentsOf: data) }
        func closeWrite() {}
    }

    /// A 3 MB file on disk: CSV text zlib shrinks, then random bytes it does not. Its content and chunks.
    static func sampleFile(in dir: TempDir) throws -> (path: String, bytes: [UInt8], content: ChunkedContent) {
        var rng = SplitMix(seed: 7)
        var text = ""
        while text.utf8.count < 1_500_000 { text += "\(rng.next() % 100_000),\(rng.next() % 1000),0.5\n" }
        let bytes = Array(text.utf8) + (0..<1_500_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let path = dir.path + "/weights.csv"
        let fd = FileDescriptor(raw: open(path, O_WRONLY_CREAT_TRUNC | O_CLOEXEC, 0o644), path: path)
        try bytes.withUnsafeBytes { try fd.writeAll($0) }
        let reading = FileDescriptor(raw: open(path, O_RDONLY | O_CLOEXEC), path: path)
        return (path, bytes, try FileChunker().chunk(reading))
    }

    @Test func chunksReadIntoTheWriterMatchChunksCopiedIn() throws {
        let dir = try TempDir()
        let (path, bytes, content) = try Self.sampleFile(in: dir)
        let file = FileDescriptor(raw: open(path, O_RDONLY | O_CLOEXEC), path: path)
        let inPlace = Memory(), copied = Memory()
        let inPlaceWriter = FrameWriter(inPlace), copiedWriter = FrameWriter(copied)
        let inPlaceSender = ChunkSender(compress: true), copiedSender = ChunkSender(compress: true)
        for sender in [inPlaceSender, copiedSender] { sender.begin(op: 3, name: Array("weights.csv".utf8)) }
        for (index, chunk) in content.chunks.enumerated() {
            #expect(try inPlaceSender.send(chunk, index: UInt32(index), op: 3, from: file, to: inPlaceWriter))
            try bytes.withUnsafeBytes { all in
                let view = UnsafeRawBufferPointer(rebasing: all[Int(chunk.offset)..<Int(chunk.offset) + Int(chunk.length)])
                try copiedSender.send(chunk, index: UInt32(index), op: 3, bytes: view, to: copiedWriter)
            }
        }
        try inPlaceWriter.send(.done)
        try copiedWriter.send(.done)
        try inPlaceWriter.flush()
        try copiedWriter.flush()
        #expect(inPlace.bytes == copied.bytes, "reading into the writer's buffer changed what goes on the wire")

        // Read back in place, in pieces that split frames: every chunk is the file's bytes, then `done`.
        inPlace.readSize = 4093
        let reader = FrameReader(inPlace)
        let decompressor = ChunkDecompressor()
        var out = [UInt8](repeating: 0, count: ChunkParameters.largestMaxSize)
        var seen = 0, compressed = 0, raw = 0
        let last = try reader.next { frame in
            let chunk = content.chunks[Int(frame.index)]
            #expect(frame.op == 3 && Int(frame.index) == seen && frame.rawLength == chunk.length)
            let expected = Array(bytes[Int(chunk.offset)..<Int(chunk.offset) + Int(chunk.length)])
            if frame.compressed {
                compressed += 1
                try out.withUnsafeMutableBytes { try decompressor.decompress(frame.payload, rawLength: Int(frame.rawLength), into: $0) }
                #expect(Array(out[0..<Int(frame.rawLength)]) == expected, "chunk \(seen) inflates to other bytes")
            } else {
                raw += 1
                #expect(Array(frame.payload) == expected, "chunk \(seen) sent raw is not its bytes")
            }
            seen += 1
        }
        #expect(last == .done)
        #expect(seen == content.chunks.count)
        #expect(compressed > 0 && raw > 0, "the sample should hold both kinds of chunk: \(compressed) compressed, \(raw) raw")
        #expect(try reader.next() == nil)
    }

    @Test func aFileChangedSinceItWasChunkedSendsNothing() throws {
        let dir = try TempDir()
        let (path, _, content) = try Self.sampleFile(in: dir)
        let edit = FileDescriptor(raw: open(path, O_WRONLY | O_CLOEXEC), path: path)
        let chunk = content.chunks[1]
        try [UInt8(ascii: "#")].withUnsafeBytes { try edit.write($0, at: chunk.offset + 10) }
        let file = FileDescriptor(raw: open(path, O_RDONLY | O_CLOEXEC), path: path)
        let stream = Memory()
        let writer = FrameWriter(stream)
        let sender = ChunkSender(compress: true)
        #expect(try sender.send(content.chunks[0], index: 0, op: 1, from: file, to: writer))
        let before = writer.pendingBytes
        #expect(try !sender.send(chunk, index: 1, op: 1, from: file, to: writer))
        #expect(writer.pendingBytes == before, "a refused chunk left bytes in the writer")
        try writer.send(.abort(op: 1, reason: "changed"))
        try writer.flush()
        var indices: [UInt32] = []
        let next = try FrameReader(stream).next { indices.append($0.index) }
        #expect(indices == [0])
        #expect(next == .abort(op: 1, reason: "changed"))
    }

    /// A frame as it goes on the wire: length, type, payload.
    private static func frame(_ type: UInt8, _ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt32(payload.count + 1).littleEndian) { out.append(contentsOf: $0) }
        return out + [type] + payload
    }

    private static func chunkPayload(flags: UInt8, rawLength: UInt32, data: [UInt8]) -> [UInt8] {
        var w = PayloadWriter()
        w.u32(9)
        w.u32(0)
        w.u8(flags)
        w.u32(rawLength)
        w.raw(data)
        return w.bytes
    }

    @Test(arguments: [
        chunkPayload(flags: 2, rawLength: 3, data: [1, 2, 3]),
        chunkPayload(flags: 0, rawLength: UInt32(ChunkParameters.largestMaxSize) + 1, data: [1]),
        Array(chunkPayload(flags: 0, rawLength: 3, data: []).prefix(11)),
    ])
    func malformedChunkFramesAreRefusedAsWhenDecoded(payload: [UInt8]) throws {
        let decoded = #expect(throws: ProtocolError.self) {
            try payload.withUnsafeBytes { try Message.decode(type: ChunkFrame.type, payload: $0) }
        }
        let stream = Memory()
        stream.bytes = Self.frame(ChunkFrame.type, payload)
        var handed = 0
        let inPlace = #expect(throws: ProtocolError.self) { _ = try FrameReader(stream).next { _ in handed += 1 } }
        #expect(decoded == inPlace)
        #expect(handed == 0)
    }
}
