import Chunking
import Foundation
import ObjectStore
import Store
import StoreClient
import Testing

/// Issue 25: every upload to the store is verified, on SeaweedFS and on moto's S3 server alike. A part sent as a
/// form (libcurl's default type) was kept by moto as 0 bytes with a 200 answer; nothing compared part ETags or
/// checked the finished object's size, so a 0-byte pack got its index.
@Suite(.serialized)
struct StoreBackendTests {
    static func client(_ backend: StoreBackend) throws -> S3Client {
        let server = try backend.server()
        let name = "v" + UUID().uuidString.prefix(12).lowercased()
        let location = try S3Location(url: "s3://\(name)/syncd", endpoint: server.endpoint, region: "us-east-1")
        let client = try S3Client(location: location, credentials: AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test"))
        try client.createBucket()
        return client
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func objectsAndPartsArriveWhole(_ backend: StoreBackend) throws {
        let s3 = try Self.client(backend)
        let small = randomBytes(300_000, seed: 2501)
        try s3.put("packs/small.bin", small)
        #expect(try s3.get("packs/small.bin") == small ? true : false, "\(backend): the object came back other than sent")
        let parts = [randomBytes(5 << 20, seed: 2502), randomBytes(5 << 20, seed: 2503), randomBytes(123_457, seed: 2504)]
        try s3.putMultipart("packs/big.bin", parts: parts)
        let whole = parts.flatMap { $0 }
        #expect(try s3.size("packs/big.bin") == UInt64(whole.count), "\(backend)")
        #expect(ChunkID(hashing: try s3.get("packs/big.bin")) == ChunkID(hashing: whole), "\(backend): the parts came back other than sent")
    }

    /// A pack over the multipart threshold goes up in parts, is checked whole, and only then gets its index.
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func aLargePackIsVerifiedBeforeItsIndex(_ backend: StoreBackend) throws {
        let store = SnapshotStore(client: try Self.client(backend))
        var pack = PackBuilder(capacity: 40 << 20)
        for i in 0..<160 {
            let chunk = randomBytes(256 << 10, seed: 2600 + UInt64(i))
            chunk.withUnsafeBytes { pack.add(id: ChunkID(hashing: $0), raw: $0, compressed: nil) }
        }
        let index = try store.put(pack)
        let digest = pack.finish().digest
        #expect(try store.packs() == [digest], "\(backend): the index is listed")
        #expect(ChunkID(hashing: try store.wholePack(digest)) == digest)
        for entry in index.entries.prefix(3) { _ = try store.chunk(entry, in: digest) }
    }
}
