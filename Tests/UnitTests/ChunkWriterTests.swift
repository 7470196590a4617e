import Chunking
import Foundation
import Placement
import SyncSystem
import Testing
import Transfer
import Wire

/// The data plane's receiving end, which the agent (a push) and the client (a pull) share: chunk data as it comes
/// off the wire, inflated, checked against the file's list, and written.
struct ChunkWriterTests {
    /// A file of two chunks being built in a fresh tree.
    static func assembly(_ a: [UInt8], _ b: [UInt8]) throws -> (FileAssembly, String) {
        let root = NSTemporaryDirectory() + "syncd-cw-" + UUID().uuidString.prefix(8)
        let tree = try Tree(rootPath: root, create: true)
        guard let sessions = try tree.openDirectory([Array("sessions".utf8)], create: true) else { throw SystemError(call: "mkdir", path: root, errno: EIO) }
        let session = try BuildSession(sessionsIn: sessions, shown: root + "/sessions")
        let chunks = [ChunkRef(id: ChunkID(hashing: a), offset: 0, length: UInt32(a.count)),
                      ChunkRef(id: ChunkID(hashing: b), offset: UInt64(a.count), length: UInt32(b.count))]
        let assembly = try FileAssembly(tree: tree, path: try RelativePath("f.bin"), digest: ChunkID(hashing: a + b), size: UInt64(a.count + b.count),
                                        chunkList: chunks, session: session)
        return (assembly, root)
    }

    @Test func plainAndCompressedChunksAreWrittenAndCheckedOnes() throws {
        let a = [UInt8](repeating: 1, count: 5000), b = Array((0..<3000).map { UInt8($0 % 7) })
        let (assembly, root) = try Self.assembly(a, b)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let writer = ChunkWriter()
        try a.withUnsafeBytes { try writer.write($0, compressed: false, rawLength: a.count, index: 0, into: assembly, shown: "f.bin") }
        let packed = try #require(b.withUnsafeBytes { ChunkCompressor().compress($0) }, "the pattern compresses")
        try packed.withUnsafeBytes { try writer.write($0, compressed: true, rawLength: b.count, index: 1, into: assembly, shown: "f.bin") }
        #expect(assembly.isComplete)
    }

    /// A chunk that repeats in a file is asked for once and written everywhere it is; an id that shares only its
    /// low half with another of the file (how the assembly keys its first indices) is a chunk of its own.
    @Test func aRepeatedChunkIsAskedForOnceAndALookalikeIdIsNotARepeat() throws {
        let root = NSTemporaryDirectory() + "syncd-cw-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let tree = try Tree(rootPath: root, create: true)
        guard let sessions = try tree.openDirectory([Array("sessions".utf8)], create: true) else { throw SystemError(call: "mkdir", path: root, errno: EIO) }
        let session = try BuildSession(sessionsIn: sessions, shown: root + "/sessions")
        let a = [UInt8](repeating: 1, count: 5000), b = [UInt8](repeating: 2, count: 3000)
        let (idA, idB) = (ChunkID(hashing: a), ChunkID(hashing: b))
        let lookalike = ChunkID(low: idA.low, high: idA.high ^ 1)
        let assembly = try FileAssembly(tree: tree, streaming: try RelativePath("f.bin"), session: session)
        _ = try assembly.append([ChunkRef(id: idA, offset: 0, length: 5000), ChunkRef(id: idB, offset: 0, length: 3000)])
        _ = try assembly.append([ChunkRef(id: lookalike, offset: 0, length: 5000), ChunkRef(id: idA, offset: 0, length: 5000)])
        #expect(assembly.missingIndices == [0, 1, 2], "a once, b, and the lookalike as a chunk of its own")
        try a.withUnsafeBytes { try assembly.write(index: 0, bytes: $0) }
        #expect(assembly.missingIndices == [1, 2] && assembly.present == [true, false, false, true], "a written at 0 and at 3")
        #expect(throws: PlacementError.self) { try a.withUnsafeBytes { try assembly.write(index: 2, bytes: $0) } }
    }

    @Test func whatDoesNotFitTheListIsTheSendersError() throws {
        let a = [UInt8](repeating: 1, count: 5000), b = [UInt8](repeating: 2, count: 3000)
        let (assembly, root) = try Self.assembly(a, b)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let writer = ChunkWriter()
        func refusal(_ body: () throws -> Void) -> String {
            do { try body() } catch let e as ProtocolError { return "\(e)" } catch { return "not a protocol error: \(error)" }
            return "accepted"
        }
        #expect(refusal { try a.withUnsafeBytes { try writer.write($0, compressed: false, rawLength: a.count, index: 2, into: assembly, shown: "f.bin") } }
                .contains("f.bin: chunk 2 does not fit"))
        #expect(refusal { try b.withUnsafeBytes { try writer.write($0, compressed: false, rawLength: b.count, index: 0, into: assembly, shown: "f.bin") } }
                .contains("does not fit"), "a length that is not chunk 0's")
        #expect(refusal { try b.withUnsafeBytes { try writer.write($0, compressed: false, rawLength: a.count, index: 0, into: assembly, shown: "f.bin") } }
                .contains("length mismatch"))
        let wrong = [UInt8](repeating: 9, count: 5000)
        #expect(refusal { try wrong.withUnsafeBytes { try writer.write($0, compressed: false, rawLength: 5000, index: 0, into: assembly, shown: "f.bin") } }
                .contains("does not match its id"))
        #expect(refusal { try [UInt8](repeating: 0xFF, count: 40).withUnsafeBytes {
            try writer.write($0, compressed: true, rawLength: 5000, index: 0, into: assembly, shown: "f.bin")
        } }.contains("compressed chunk"))
        #expect(!assembly.isComplete)
    }
}
