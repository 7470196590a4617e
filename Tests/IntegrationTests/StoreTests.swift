import Chunking
import Foundation
import S3
import SnapshotFormat
import StoreClient
import SyncSystem
import Testing
import Wire

/// The store's objects against a real S3 server: packs, indexes, manifests and refs written, read back, and
/// refused when altered.
@Suite(.serialized)
struct StoreTests {
    /// A pack of `count` chunks (every other one compressible), and their bytes by id.
    static func makePack(_ count: Int, seed: UInt64) -> (PackBuilder, [ChunkID: [UInt8]]) {
        var pack = PackBuilder()
        var chunks: [ChunkID: [UInt8]] = [:]
        let compressor = ChunkCompressor(level: 1)
        for i in 0..<count {
            let bytes = i % 2 == 0 ? randomBytes(40_000 + i, seed: seed &+ UInt64(i))
                : Array(String(repeating: "epoch,loss\n\(i),0.5\n", count: 2000).utf8)
            let id = ChunkID(hashing: bytes)
            bytes.withUnsafeBytes { pack.add(id: id, raw: $0, compressed: compressor.compress($0)) }
            chunks[id] = bytes
        }
        return (pack, chunks)
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func packsAndIndexesGoInAndEveryChunkComesBackChecked(_ backend: StoreBackend) throws {
        let store = SnapshotStore(client: try StoreBackendTests.client(backend))
        let (a, chunksA) = Self.makePack(12, seed: 1)
        let (b, chunksB) = Self.makePack(5, seed: 2)
        let indexA = try store.put(a)
        let indexB = try store.put(b)
        #expect(indexA.entries.contains { $0.compressed } && indexA.entries.contains { !$0.compressed })
        #expect(Set(try store.packs()) == [indexA.pack, indexB.pack])
        let read = try store.index(indexA.pack)
        #expect(read == indexA)
        for entry in read.entries { #expect(try store.chunk(entry, in: indexA.pack) == chunksA[entry.id]) }
        for entry in try store.index(indexB.pack).entries { #expect(try store.chunk(entry, in: indexB.pack) == chunksB[entry.id]) }
        #expect(ChunkID(hashing: try store.wholePack(indexA.pack)) == indexA.pack)

        // A pack with one byte flipped: the chunk there is refused, named by the pack's key; the others still read.
        var altered = try store.wholePack(indexB.pack)
        let victim = try #require(indexB.entries.first { !$0.compressed })
        altered[Int(victim.offset) + 100] ^= 0x01
        try store.client.put(StoreKeys.pack(indexB.pack), altered)
        do { _ = try store.chunk(victim, in: indexB.pack); Issue.record("an altered chunk was accepted") } catch let e as StoreError {
            #expect(e.object.hasSuffix(StoreKeys.pack(indexB.pack)) && e.reason.contains("does not match its id"), "\(e)")
        }
        #expect(throws: StoreError.self) { try store.wholePack(indexB.pack) }
        let other = try #require(indexB.entries.first { $0.id != victim.id })
        #expect(try store.chunk(other, in: indexB.pack) == chunksB[other.id])

        // A truncated index, and an index under another pack's name, are refused.
        let indexBytes = indexA.encoded()
        try store.client.put(StoreKeys.index(indexA.pack), Array(indexBytes.dropLast(7)))
        do { _ = try store.index(indexA.pack); Issue.record("a truncated index was accepted") } catch let e as StoreError {
            #expect(e.reason.contains("checksum"), "\(e)")
        }
        try store.client.put(StoreKeys.index(indexA.pack), indexB.encoded())
        #expect(throws: StoreError.self) { try store.index(indexA.pack) }
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func largePacksGoUpInParts(_ backend: StoreBackend) throws {
        let store = SnapshotStore(client: try StoreBackendTests.client(backend))
        var pack = PackBuilder()
        var chunks: [ChunkID: [UInt8]] = [:]
        for i in 0..<80 {
            let bytes = randomBytes(256 << 10, seed: UInt64(100 + i))
            let id = ChunkID(hashing: bytes)
            bytes.withUnsafeBytes { pack.add(id: id, raw: $0, compressed: nil) }
            chunks[id] = bytes
        }
        #expect(pack.bytes.count > SnapshotStore.multipartThreshold)
        let index = try store.put(pack)
        #expect(try store.client.size(StoreKeys.pack(index.pack)) == UInt64(pack.bytes.count))
        let last = try #require(index.entries.last)
        #expect(try store.chunk(last, in: index.pack) == chunks[last.id])
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func manifestsAndRefsNameWhatTheyHold(_ backend: StoreBackend) throws {
        let store = SnapshotStore(client: try StoreBackendTests.client(backend))
        let odd = try RelativePath(bytes: Array("data/caf".utf8) + [0xE9] + Array(".csv".utf8))
        let manifest = SnapshotManifest(project: "proj", createdNanos: 1_796_112_000_000_000_000, entries: [
            ManifestEntry(path: try RelativePath("src"), kind: .directory, mode: 0o755, mtimeNanos: 0, size: 0),
            ManifestEntry(path: odd, kind: .file, mode: 0o644, mtimeNanos: 5, size: 30,
                          digest: ChunkID(low: 1, high: 2), chunks: [ChunkRef(id: ChunkID(low: 3, high: 4), offset: 0, length: 10),
                                                                     ChunkRef(id: .hole, offset: 10, length: 20)]),
            ManifestEntry(path: try RelativePath("latest"), kind: .symlink, mode: 0o777, mtimeNanos: 0, size: 0, target: [0x61, 0xFF]),
        ])
        let digest = try store.put(manifest)
        #expect(try store.manifest(digest) == manifest)
        #expect(manifest.chunkIDs == [ChunkID(low: 3, high: 4)], "holes are no chunks")

        var refs: [SnapshotRef] = []
        for (i, t) in [Int64(1_796_112_000), 1_796_112_060, 1_796_112_120].enumerated() {
            let ref = SnapshotRef(name: SnapshotRef.key(project: "proj", manifest: digest, createdNanos: t * 1_000_000_000), manifest: digest,
                                  files: 3, bytes: 30, newBytes: UInt64(10 * i), createdNanos: t * 1_000_000_000)
            try store.put(ref)
            refs.append(ref)
        }
        let listed = try store.snapshots("proj").refs
        #expect(listed == refs, "oldest first")
        #expect(listed.first?.name.range(of: #"^projects/proj/snapshots/\d{8}T\d{6}\.\d{9}Z-[0-9a-f]{12}$"#, options: .regularExpression) != nil)
        #expect(try store.snapshots("other").refs.isEmpty)

        // An altered manifest is refused, named.
        var stored = try store.client.get(StoreKeys.manifest(digest))
        stored[stored.count - 3] ^= 0x10
        try store.client.put(StoreKeys.manifest(digest), stored)
        do { _ = try store.manifest(digest); Issue.record("an altered manifest was accepted") } catch let e as StoreError {
            #expect(e.object.hasSuffix(StoreKeys.manifest(digest)) && e.reason.contains("do not hash to its name"), "\(e)")
        }
        do { _ = try store.manifest(ChunkID(low: 9, high: 9)); Issue.record("a missing manifest was found") } catch let e as S3Error {
            #expect(e.code == "NoSuchKey", "\(e)")
        }
    }
}
