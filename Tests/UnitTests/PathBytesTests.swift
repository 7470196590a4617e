import Chunking
import Foundation
import ProjectScan
import SyncSystem
import Testing

struct PathBytesTests {
    @Test func pathsCompareAndHashByBytes() throws {
        let nfc = try RelativePath(bytes: Array("caf".utf8) + [0xC3, 0xA9])
        let nfd = try RelativePath(bytes: Array("cafe".utf8) + [0xCC, 0x81])
        #expect(nfc != nfd, "NFC and NFD are two names, as on disk")
        #expect(Set([nfc, nfd]).count == 2)
        #expect(nfc.description == "café" && nfd.description == "café")
        let latin1 = try RelativePath(bytes: [0x64, 0x2F, 0xE9])
        let d = try RelativePath("d"), d2 = try RelativePath("d2")
        #expect(latin1.name == [0xE9] && latin1.parentBytes == [0x64] && latin1.parent == d)
        #expect(latin1.isWithin(d) && !latin1.isWithin(d2))
        let a = try RelativePath("a"), ab = try RelativePath("a/b"), a0 = try RelativePath("a0")
        #expect(a < ab && ab < a0)
    }

    @Test(arguments: [[UInt8]("a/../b".utf8), [0x2F, 0x61], [0x61, 0, 0x62], [], [0x61, 0x2F], [0x2E], Array(repeating: 0x61, count: 256)])
    func hostilePathsAreRefused(bytes: [UInt8]) {
        #expect(throws: PathError.self) { try RelativePath(bytes: bytes) }
    }

    @Test func displayEscapesOnlyWhatIsNotPlainText() {
        #expect(displayPath(Array("src/model.py".utf8)) == "src/model.py")
        #expect(displayPath(Array("données/été.csv".utf8)) == "données/été.csv")
        #expect(displayPath(Array("caf".utf8) + [0xE9] + Array(".jpg".utf8)) == "\"caf\\xe9.jpg\"")
        #expect(displayPath(Array("a\nb\tc".utf8)) == "\"a\\nb\\tc\"")
        #expect(displayPath(Array("x\u{1}".utf8)) == "\"x\\x01\"")
        #expect(displayPath(Array("\"q\"".utf8)) == "\"\\\"q\\\"\"", "a leading quote is quoted, so no two names look alike")
        #expect(displayPath(Array("back\\slash".utf8)) == "back\\slash")
        #expect(displayPath([0xED, 0xA0, 0x80]) == "\"\\xed\\xa0\\x80\"", "an encoded surrogate is not UTF-8")
    }

    @Test func pathTextIsLosslessForAnyBytes() throws {
        var state: UInt64 = 42
        for _ in 0..<2000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 1...24) {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                var b = UInt8(truncatingIfNeeded: state >> 33)
                if b == 0 || b == 0x2F { b = 0x80 }
                bytes.append(b)
            }
            bytes += [0xEF, 0xB7, 0x90]  // a literal U+FDD0 in every one
            let text = PathText.encode(bytes)
            #expect(PathText.decode(text) == bytes, "\(bytes)")
        }
        #expect(PathText.encode(Array("plain/ütf8".utf8)) == "plain/ütf8")
        #expect(PathText.decode(String(Unicode.Scalar(UInt32(0xFDD0))!)) == nil, "a lone marker is no text form")
    }

    @Test func publicJSONWritesSurrogateEscapes() throws {
        struct Box: Encodable { let path: RelativePath }
        let path = try RelativePath(bytes: Array("d/caf".utf8) + [0xE9, 0x80] + [0xEF, 0xB7, 0x90] + Array("ü".utf8))
        let json = PathText.publicJSON(Array(try JSONEncoder().encode(Box(path: path))))
        #expect(json == "{\"path\":\"d\\/caf\\udce9\\udc80\\ufdd0ü\"}", "\(json)")
        // The text form (what the control socket carries) decodes back exactly.
        let back = try JSONDecoder().decode([String: RelativePath].self, from: try JSONEncoder().encode(["path": path]))
        #expect(back["path"] == path)
    }

    @Test func conflictCopyNamesFollowSyncthing() {
        func name(_ s: String, attempt: Int = 0) -> String {
            String(decoding: conflictCopyName(Array(s.utf8), stamp: "20261201-073616", attempt: attempt), as: UTF8.self)
        }
        #expect(name("model.pt") == "model.sync-conflict-20261201-073616.pt")
        #expect(name("archive.tar.gz") == "archive.tar.sync-conflict-20261201-073616.gz")
        #expect(name("Makefile") == "Makefile.sync-conflict-20261201-073616")
        #expect(name(".env") == ".env.sync-conflict-20261201-073616")
        #expect(name("a.txt", attempt: 2) == "a.sync-conflict-20261201-073616-2.txt")
        let long = conflictCopyName(Array(String(repeating: "é", count: 120).utf8) + Array(".bin".utf8), stamp: "20261201-073616")
        #expect(long.count <= 255)
        #expect(String(validating: long, as: UTF8.self) != nil, "cut at a character boundary")
        #expect(IgnorePatternCheck.matchesConflictCopies(name("model.pt")))
    }

    @Test func sparseFilesAreChunkedByRegionWithTheDigestOfTheirBytes() throws {
        let dir = try TempDir()
        let sparse = dir.path + "/sparse.img"
        let dense = dir.path + "/dense.img"
        let size: UInt64 = 64 << 20
        var image = [UInt8](repeating: 0, count: Int(size))
        let pieces: [(UInt64, Int)] = [(0, 5000), (20 << 20, 300_000), (40 << 20 + 123, 70_000)]
        for (i, (offset, length)) in pieces.enumerated() {
            for j in 0..<length { image[Int(offset) + j] = UInt8(truncatingIfNeeded: (j &* 31) ^ (i &* 7) &+ 1) }
        }
        let sfd = try FileDescriptor.open(sparse, flags: O_RDWR | O_CREAT | O_TRUNC)
        try sfd.truncate(size)
        for (offset, length) in pieces {
            try image.withUnsafeBytes { try sfd.write(UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<(Int(offset) + length)]), at: offset) }
        }
        let dfd = try FileDescriptor.open(dense, flags: O_RDWR | O_CREAT | O_TRUNC)
        try image.withUnsafeBytes { try dfd.write($0, at: 0) }
        try sfd.sync()
        try dfd.sync()

        let chunker = FileChunker()
        let a = try chunker.chunk(try FileDescriptor.open(sparse, flags: O_RDONLY))
        let b = try chunker.chunk(try FileDescriptor.open(dense, flags: O_RDONLY))
        #expect(a.size == size && b.size == size)
        #expect(a.digest == b.digest, "one digest for the same bytes, sparse or not")
        #expect(a.digest == ChunkID(hashing: image))
        let holes = a.chunks.filter(\.id.isHole)
        #expect(holes.reduce(UInt64(0)) { $0 + UInt64($1.length) } > size - (2 << 20), "the holes are not chunked")
        #expect(!b.chunks.contains { $0.id.isHole }, "a dense file has no hole refs")
        var offset: UInt64 = 0
        for c in a.chunks {
            #expect(c.offset == offset)
            offset += UInt64(c.length)
        }
        #expect(offset == size)
    }
}

/// The default ignore rules leave conflict copies out.
enum IgnorePatternCheck {
    static func matchesConflictCopies(_ name: String) -> Bool {
        var rules = IgnoreRules()
        for p in IgnoreRules.defaultPatterns { try? rules.add(pattern: p, source: "test", line: 0) }
        return rules.isExcluded("src/" + name) && rules.isExcluded(name)
    }
}
