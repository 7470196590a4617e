import Chunking
import Builds
import Client
import Control
import Fleet
import Foundation
import LocalState
import S3
import SnapshotFormat
import StoreClient
import SyncSystem
import Testing
import Wire

/// A push whose chunks the agent reads from the store: the link carries the file list and the answers only.
@Suite(.serialized)
struct StorePushTests {
    /// A fresh bucket, and an uploader for it with a catalog under `base`.
    static func uploader(_ base: String, _ backend: StoreBackend) throws -> StoreUploader {
        let server = try backend.server()
        let credentials = AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test")
        let location = try S3Location(url: "s3://p\(UUID().uuidString.prefix(12).lowercased())/syncd", endpoint: server.endpoint, region: "us-east-1")
        try S3Client(location: location, credentials: credentials).createBucket()
        let uploader = StoreUploader(location: location, credentials: credentials, catalog: try StoreCatalog(path: base + "/catalog.sqlite"),
                                     packTarget: 1 << 20)
        return uploader
    }

    /// The project's regular files with their chunks, as a push would see them.
    static func files(_ f: SyncFixture, _ names: [String]) throws -> [UploadFile] {
        try names.map { name in
            UploadFile(path: try RelativePath(name), chunks: try FileChunker().chunk(try FileDescriptor.open(f.project + "/" + name, flags: O_RDONLY)).chunks)
        }
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func theAgentReadsFromTheStoreAndTheLinkCarriesNoChunk(_ backend: StoreBackend) throws {
        let f = try SyncFixture()
        var names: [String] = []
        for i in 0..<3 { try f.write("data/shard\(i).bin", randomBytes(3 << 20, seed: UInt64(200 + i))); names.append("data/shard\(i).bin") }
        for i in 0..<30 { try f.write("src/mod\(i).py", "x = \(i)\n" + String(repeating: "#", count: i * 10)); names.append("src/mod\(i).py") }
        let uploader = try Self.uploader(f.base, backend)
        let files = try Self.files(f, names)
        let uploaded = try uploader.upload(files, from: try Tree(rootPath: f.project, create: false))
        #expect(uploaded.rawBytes > UInt64(9 << 20))
        let source = try uploader.source(for: files)
        #expect(source.packs.count >= 9 && source.chunks.count == Set(files.flatMap { $0.chunks.map(\.id) }).count)

        let session = PushSession(project: try f.openProject())
        session.storeSource = source
        let stats = try session.run()
        #expect(stats.errors.isEmpty, "\(stats.errors)")
        #expect(stats.chunksSent <= 1, "only syncd.yaml's chunk, which the store lacks, travels: \(stats.chunksSent)")
        #expect(stats.bytesSent < 150_000, "9 MB of data, and the link carried \(stats.bytesSent) bytes")
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")

        // A file the store lacks comes over the link as ever, in the same push as store reads.
        try f.write("data/new.bin", randomBytes(1 << 20, seed: 300))
        try f.write("data/shard0.bin", randomBytes(3 << 20, seed: 201))  // now the content of shard1: in the store
        let mixed = PushSession(project: try f.openProject())
        mixed.storeSource = source
        let second = try mixed.run()
        #expect(second.errors.isEmpty, "\(second.errors)")
        #expect(second.chunksSent >= 4, "new.bin's chunks came from the laptop: \(second.chunksSent)")
        #expect(second.bytesSent < UInt64(1 << 20) + 200_000, "shard0's new content came from the store: \(second.bytesSent)")
        #expect(f.treesMatch().0, "\(f.treesMatch().1)")
    }

    /// The agent checks every chunk it reads from the store: a chunk the store serves altered is never placed; it is
    /// asked of this machine instead, and the warning names the object (issue 25, item 4).
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func anAlteredChunkIsRefusedByTheAgentNamingItAndComesOverTheLink(_ backend: StoreBackend) throws {
        let f = try SyncFixture()
        try f.write("data/blob.bin", randomBytes(2 << 20, seed: 400))
        try f.write("data/other.bin", randomBytes(600_000, seed: 401))
        let uploader = try Self.uploader(f.base, backend)
        let files = try Self.files(f, ["data/blob.bin", "data/other.bin"])
        _ = try uploader.upload(files, from: try Tree(rootPath: f.project, create: false))
        let source = try uploader.source(for: files)
        // Flip a byte in the pack that holds blob.bin's first chunk.
        let first = try #require(files[0].chunks.first)
        let place = try #require(source.chunks[first.id])
        let pack = source.packs[Int(place.pack)].digest
        let server = try backend.server()
        let client = try S3Client(location: uploader.location, credentials: AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test"))
        var bytes = try client.get(StoreKeys.pack(pack))
        bytes[Int(place.offset) + Int(place.storedLength) / 2] ^= 0x40
        try client.put(StoreKeys.pack(pack), bytes)

        let session = PushSession(project: try f.openProject())
        session.storeSource = source
        let stats = try session.run()
        #expect(stats.errors.isEmpty, "\(stats.errors)")
        let warning = stats.warnings.first { $0.contains("found damage in the store") } ?? ""
        #expect(warning.contains("\(uploader.location)/\(StoreKeys.pack(pack))"), "names the object: \(stats.warnings)")
        #expect(warning.contains("does not match its id"), "\(stats.warnings)")
        #expect(stats.storeDamaged[pack] == [first.id], "\(stats.storeDamaged)")
        #expect(f.read("data/blob.bin", in: f.remoteProject) == randomBytes(2 << 20, seed: 400) ? true : false, "the file is whole, its chunk from here")
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: f.remoteProject + "/data"))?.filter { $0.hasPrefix(".syncd-part.") } ?? []
        #expect(leftovers.isEmpty, "\(leftovers)")
        if pack != source.packs[Int(source.chunks[files[1].chunks[0].id]!.pack)].digest {
            #expect(f.read("data/other.bin", in: f.remoteProject) == randomBytes(600_000, seed: 401), "the rest arrives")
        }
        // Without the store, the next push sends it over the link and completes.
        let again = try PushSession(project: try f.openProject()).run()
        #expect(again.errors.isEmpty, "\(again.errors)")
        #expect(f.read("data/blob.bin", in: f.remoteProject) == randomBytes(2 << 20, seed: 400) ? true : false, "contents differ")
    }

    /// The daemon's next snapshot is the last one with the watched paths looked at again (issue 30): a path gone
    /// or no longer a directory takes what was below it; new entries go in path order; an entry whose directory
    /// neither snapshot nor scan has is a sign of a change the watcher missed, and the whole project is walked.
    @Test func theNextSnapshotIsTheLastWithTheWatchedPathsLookedAtAgain() throws {
        func entry(_ path: String, _ kind: ManifestEntry.Kind, _ text: String = "") throws -> ManifestEntry {
            let bytes = Array(text.utf8)
            let content = kind == .file ? [ChunkRef(id: ChunkID(hashing: bytes), offset: 0, length: UInt32(bytes.count))] : []
            return ManifestEntry(path: try RelativePath(path), kind: kind, mode: kind == .directory ? 0o755 : 0o644, mtimeNanos: 1,
                                 size: UInt64(bytes.count), digest: kind == .file ? ChunkID(hashing: bytes) : nil, chunks: content)
        }
        let previous = SnapshotManifest(project: "p", createdNanos: 1, entries: [
            try entry("data", .directory), try entry("data/a", .directory), try entry("data/a.txt", .file, "t"),
            try entry("data/a/1", .file, "1"), try entry("data/a/deep", .directory), try entry("data/a/deep/2", .file, "2"),
            try entry("data/b", .directory), try entry("data/b/3", .file, "3"), try entry("data/b0", .file, "b0"),
            try entry("src", .directory), try entry("src/x", .file, "x"),
        ])
        // data/a is a file now, data/b is gone, data/c is new with a file, src/x was edited.
        let scanned = [try entry("data/a", .file, "A"), try entry("data/c", .directory), try entry("data/c/n", .file, "n"),
                       try entry("src/x", .file, "x2")].map(StorePush.entry)
        let changed: Set<RelativePath> = Set(try ["data/a", "data/b", "data/c", "data/c/n", "src/x"].map { try RelativePath($0) })
        let merged = try #require(StorePush.merge(previous, changed: changed, scanned: scanned))
        #expect(merged.map(\.path.description) == ["data", "data/a", "data/a.txt", "data/b0", "data/c", "data/c/n", "src", "src/x"])
        #expect(merged.first { $0.path.description == "data/a" }?.stat.kind == .regular)
        #expect(merged.first { $0.path.description == "src/x" }?.content?.digest == ChunkID(hashing: Array("x2".utf8)))
        let lost = [try entry("data/z/q", .file, "q")].map(StorePush.entry)
        #expect(StorePush.merge(previous, changed: [try RelativePath("data/z/q")], scanned: lost) == nil, "data/z was never reported")
        #expect(StorePush.merge(previous, changed: [], scanned: [])?.map(\.path) == previous.entries.map(\.path), "nothing changed")
    }
}
