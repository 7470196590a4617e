import Chunking
import Foundation
import LocalState
import S3
import SnapshotFormat
import StoreClient
import SyncSystem
import Testing

/// ../shared/tools/wanem as a byte counter between a client and a loopback server: what crossed, counted
/// outside the tool under test. With `rateMbit`, a slow link; `stall()` makes it a link that stays open and
/// moves nothing (wanem stopped with SIGSTOP: its sockets stay, unread), `wake()` lets it go on.
final class CountingProxy {
    let port: Int
    let stats: String
    private let pid: pid_t

    init(target: Int, directory: String, rateMbit: Double = 0) throws {
        var dir = #filePath
        for _ in 0..<3 { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
        let wanem = dir + "/../shared/tools/wanem"
        guard FileManager.default.isExecutableFile(atPath: wanem) else { throw FixtureError("no \(wanem)") }
        port = freePortForTest()
        stats = directory + "/wanem-\(port).json"
        pid = try spawnDaemon(["/usr/bin/env", "python3", wanem, "--listen", "127.0.0.1:\(port)", "--target", "127.0.0.1:\(target)",
                               "--rate-mbit", "\(rateMbit)", "--stats", stats, "--max-seconds", "600"],
                              env: [:], log: directory + "/wanem-\(port).log")
        guard eventually(seconds: 10, { !portIsFree(self.port) }) else { throw FixtureError("wanem did not listen on \(port)") }
    }

    func stall() { kill(pid, SIGSTOP) }

    func wake() { kill(pid, SIGCONT) }

    deinit {
        // Not SIGTERM: wanem then waits for open connections (a client's keep-alive) to close.
        kill(pid, SIGKILL)
        kill(pid, SIGCONT)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    /// Bytes from the client to the server so far (the file is rewritten at most every 50 ms, and when a
    /// connection closes).
    func upBytes() -> Int {
        usleep(150_000)
        guard let data = FileManager.default.contents(atPath: stats),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return 0 }
        return object["up_bytes"] as? Int ?? 0
    }

    /// Bytes from the server to its clients so far.
    func downBytes() -> Int {
        usleep(150_000)
        guard let data = FileManager.default.contents(atPath: stats),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return 0 }
        return object["down_bytes"] as? Int ?? 0
    }
}

@Suite(.serialized)
struct StoreUploaderTests {
    static func files(_ root: String, _ names: [String]) throws -> [UploadFile] {
        let chunker = FileChunker()
        return try names.map { name in
            UploadFile(path: try RelativePath(name), chunks: try chunker.chunk(try FileDescriptor.open(root + "/" + name, flags: O_RDONLY)).chunks)
        }
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func eachChunkLeavesThisMachineOnceAndTheStoreCountsIt(_ backend: StoreBackend) throws {
        let server = try backend.server()
        let f = try SyncFixture()
        let port = try #require(server.endpoint.split(separator: ":").last.flatMap { Int($0) })
        let proxy = try CountingProxy(target: port, directory: f.base)
        let bucket = "u" + UUID().uuidString.prefix(12).lowercased()
        let credentials = AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test")
        let location = try S3Location(url: "s3://\(bucket)/team", endpoint: "http://127.0.0.1:\(proxy.port)", region: "us-east-1")
        try S3Client(location: location, credentials: credentials).createBucket()

        // 6 MB of random data, a copy of one of those files, 1 MB of CSV that compresses, and small sources.
        for i in 0..<3 { try f.write("data/w\(i).bin", randomBytes(2 << 20, seed: UInt64(10 + i))) }
        try f.write("data/copy.bin", randomBytes(2 << 20, seed: 10))
        try f.write("data/log.csv", String(repeating: "epoch,step,loss,acc\n", count: 52_000))
        for i in 0..<20 { try f.write("src/m\(i).py", "print(\(i))\n") }
        let names = (0..<3).map { "data/w\($0).bin" } + ["data/copy.bin", "data/log.csv"] + (0..<20).map { "src/m\($0).py" }
        let files = try Self.files(f.project, names)
        let distinct = Set(files.flatMap { $0.chunks.map(\.id) })

        let uploader = StoreUploader(location: location, credentials: credentials,
                                     catalog: try StoreCatalog(path: f.base + "/catalog-a.sqlite"), threads: 3, packTarget: 2 << 20)
        let before = proxy.upBytes()
        let tree = try Tree(rootPath: f.project, create: false)
        let stats = try uploader.upload(files, from: tree)
        let sent = proxy.upBytes() - before
        #expect(stats.chunksUploaded == distinct.count, "each chunk once, the copy's too: \(stats)")
        #expect(stats.packs >= 3, "several packs, uploaded by several threads: \(stats)")
        #expect(stats.bytesUploaded < UInt64(6 << 20) + 200_000, "the CSV is compressed, the copy not sent again: \(stats)")
        #expect(stats.bytesUploaded > UInt64(6 << 20))
        #expect(sent > Int(stats.bytesUploaded) && sent < Int(stats.bytesUploaded) + 300_000,
                "counted at the store's port: \(sent) bytes for \(stats.bytesUploaded) of packs")

        let manifest = SnapshotManifest(project: "proj", createdNanos: wallClockNanos(), entries: files.map {
            ManifestEntry(path: $0.path, kind: .file, mode: 0o644, mtimeNanos: 0, size: $0.chunks.reduce(0) { $0 + UInt64($1.length) },
                          digest: ChunkID(low: 1, high: 1), chunks: $0.chunks)
        })
        let ref = try uploader.commit(manifest, uploaded: stats)
        let store = SnapshotStore(client: try S3Client(location: location, credentials: credentials))
        #expect(try store.snapshots("proj").refs == [ref])
        #expect(ref.newBytes == stats.bytesUploaded && ref.files == names.count)

        // Pushed again: nothing to upload. From another machine (a new catalog): it reads the indexes, then
        // uploads nothing either.
        let again = proxy.upBytes()
        #expect(try uploader.upload(files, from: tree) == UploadStats())
        let other = StoreUploader(location: location, credentials: credentials, catalog: try StoreCatalog(path: f.base + "/catalog-b.sqlite"))
        #expect(try other.refresh().added == stats.packs)
        #expect(try other.upload(files, from: tree) == UploadStats())
        #expect(proxy.upBytes() - again < 20_000, "only requests, no chunk: \(proxy.upBytes() - again)")

        // An appended file sends its new tail; a file changed since it was chunked stops the upload, named.
        try f.write("data/log.csv", String(repeating: "epoch,step,loss,acc\n", count: 52_000) + String(repeating: "x", count: 100_000))
        let appended = try uploader.upload(try Self.files(f.project, ["data/log.csv"]), from: tree)
        #expect(appended.chunksUploaded >= 1 && appended.chunksUploaded <= 3, "\(appended)")
        try f.write("data/new.bin", randomBytes(1 << 20, seed: 98))
        let stale = try Self.files(f.project, ["data/new.bin"])
        try f.write("data/new.bin", randomBytes(1 << 20, seed: 99))
        do { _ = try uploader.upload(stale, from: tree); Issue.record("a changed file was uploaded") } catch let e as ChangedWhileUploading {
            #expect(e.path.description == "data/new.bin")
        }
    }
}
