import Foundation
import S3
import Testing

/// AWS's published Signature Version 4 test suite (SigV4Vectors/, one directory per case: the request `.req`, and
/// the canonical request `.creq`, string to sign `.sts` and Authorization header `.authz` it must give).
enum SigV4Suite {
    static let directory: String = {
        var dir = #filePath
        dir = String(dir[..<dir.lastIndex(of: "/")!])
        return dir + "/SigV4Vectors"
    }()

    /// Every case directory (those holding a .req), relative names.
    static let cases: [String] = {
        let fm = FileManager.default
        let all = (fm.enumerator(atPath: directory)?.allObjects as? [String]) ?? []
        return all.filter { $0.hasSuffix(".req") }.map { ($0 as NSString).deletingLastPathComponent }.sorted()
    }()

    struct Request {
        var method: String
        var path: String
        var query: String
        var headers: [(String, String)]
        var body: [UInt8]
    }

    /// Parses a .req: request line, headers (a line starting with white space continues the previous one's
    /// values), a blank line, the body.
    static func parse(_ text: String) -> Request {
        let lines = text.components(separatedBy: "\n")
        let first = lines[0]
        let method = String(first.prefix { $0 != " " })
        var target = String(first.dropFirst(method.count + 1))
        if let r = target.range(of: " HTTP/", options: .backwards) { target = String(target[..<r.lowerBound]) }
        let path = String(target.prefix { $0 != "?" })
        let query = target.count > path.count ? String(target.dropFirst(path.count + 1)) : ""
        var headers: [(String, String)] = []
        var i = 1
        while i < lines.count, !lines[i].isEmpty {
            let line = lines[i]
            if line.first == " " || line.first == "\t", let last = headers.last {
                headers.append((last.0, line.trimmingCharacters(in: .whitespaces)))
            } else if let colon = line.firstIndex(of: ":") {
                headers.append((String(line[..<colon]), String(line[line.index(after: colon)...])))
            }
            i += 1
        }
        let body = i + 1 < lines.count ? lines[(i + 1)...].joined(separator: "\n") : ""
        return Request(method: method, path: path, query: query, headers: headers, body: Array(body.utf8))
    }

    static func read(_ file: String) -> String? { try? String(contentsOfFile: directory + "/" + file, encoding: .utf8) }
}

struct SigV4Tests {
    let signer = SigV4(accessKey: "AKIDEXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", region: "us-east-1",
                       service: "service")

    @Test func theSuiteIsHere() {
        #expect(SigV4Suite.cases.count >= 25, "\(SigV4Suite.cases)")
    }

    @Test(arguments: SigV4Suite.cases)
    func publishedVectors(name: String) throws {
        let base = name + "/" + (name as NSString).lastPathComponent
        let request = SigV4Suite.parse(try #require(SigV4Suite.read(base + ".req")))
        let amzDate = request.headers.first { $0.0.lowercased() == "x-amz-date" }?.1 ?? ""
        var s = signer
        if name.contains("post-sts-header-before") { s = SigV4(accessKey: s.accessKey, secretKey: s.secretKey, region: s.region, service: s.service) }
        let creq = s.canonicalRequest(method: request.method, path: request.path, query: request.query, headers: request.headers,
                                      payloadHash: sha256Hex(request.body))
        #expect(creq == SigV4Suite.read(base + ".creq"), "canonical request of \(name)")
        let sts = s.stringToSign(canonicalRequest: creq, amzDate: amzDate)
        #expect(sts == SigV4Suite.read(base + ".sts"), "string to sign of \(name)")
        let signed = SigV4.canonicalHeaders(request.headers).signed
        let authz = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/\(amzDate.prefix(8))/us-east-1/service/aws4_request, "
            + "SignedHeaders=\(signed), Signature=\(s.signature(sts, day: String(amzDate.prefix(8))))"
        #expect(authz == SigV4Suite.read(base + ".authz"), "Authorization of \(name)")
    }

    /// AWS's S3 examples (sig-v4-header-based-auth, sigv4-query-string-auth): examplebucket, 2013-05-24.
    let s3 = SigV4(accessKey: "AKIAIOSFODNN7EXAMPLE", secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region: "us-east-1")
    let exampleDate = Date(timeIntervalSince1970: 1_369_353_600)  // 20130524T000000Z

    @Test func s3GetObjectWithRange() {
        let headers = s3.sign(method: "GET", path: "/test.txt", query: "", headers: [("host", "examplebucket.s3.amazonaws.com"), ("range", "bytes=0-9")],
                              payloadHash: sha256Hex([UInt8]()), date: exampleDate)
        let authorization = headers.first { $0.0 == "Authorization" }?.1 ?? ""
        #expect(authorization.hasSuffix("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"), "\(authorization)")
        #expect(authorization.contains("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date"))
    }

    @Test func s3PresignedGet() {
        let url = s3.presign(method: "GET", scheme: "https", host: "examplebucket.s3.amazonaws.com", path: "/test.txt", expires: 86400,
                             date: exampleDate)
        #expect(url == "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
                + "&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404", "\(url)")
    }

    @Test func s3PathsAreNotNormalized() {
        #expect(s3.canonicalURI("/a/./b//c.txt") == "/a/./b//c.txt")
        #expect(s3.canonicalURI("/caf%C3%A9 x.txt") == "/caf%C3%A9%20x.txt")
        #expect(signer.canonicalURI("/a/./b//../c") == "/a/c")
    }
}

struct AWSCredentialTests {
    @Test func environmentFirstThenTheProfile() throws {
        let dir = try TempDir()
        let file = dir.path + "/credentials"
        try """
            [default]
            aws_access_key_id = AKIADEFAULT
            aws_secret_access_key = defaultsecret
            # a comment
            [team]
            aws_access_key_id=AKIATEAM
            aws_secret_access_key=teamsecret
            aws_session_token = tok
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let env = ["AWS_SHARED_CREDENTIALS_FILE": file]
        #expect(try AWSCredentials.resolve(environment: env, home: dir.path).accessKey == "AKIADEFAULT")
        let team = try AWSCredentials.resolve(environment: env.merging(["AWS_PROFILE": "team"]) { $1 }, home: dir.path)
        #expect(team.accessKey == "AKIATEAM" && team.secretKey == "teamsecret" && team.sessionToken == "tok")
        #expect(team.source.contains("[team]"))
        let fromEnv = try AWSCredentials.resolve(environment: env.merging(["AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s"]) { $1 },
                                                 home: dir.path)
        #expect(fromEnv.accessKey == "AKIAENV" && fromEnv.source == "AWS_ACCESS_KEY_ID")
        #expect(throws: CredentialsError.self) { try AWSCredentials.resolve(environment: env.merging(["AWS_PROFILE": "nope"]) { $1 }, home: dir.path) }
        #expect(throws: CredentialsError.self) { try AWSCredentials.resolve(environment: ["AWS_ACCESS_KEY_ID": "x"], home: dir.path) }
        do { _ = try AWSCredentials.resolve(environment: [:], home: dir.path + "/none") } catch {
            #expect("\(error)".contains("AWS_ACCESS_KEY_ID") && "\(error)".contains("/none/.aws/credentials"), "\(error)")
        }
    }

    @Test func locationsParseAndAddressKeys() throws {
        let aws = try S3Location(url: "s3://team-bucket/syncd/runs/", endpoint: nil, region: "eu-west-1")
        #expect(aws.host == "s3.eu-west-1.amazonaws.com" && !aws.pathStyle && aws.prefix == "syncd/runs")
        #expect(aws.key("packs/x") == "syncd/runs/packs/x")
        let local = try S3Location(url: "s3://b", endpoint: "http://127.0.0.1:8333", region: "us-east-1")
        #expect(local.pathStyle && local.prefix == "" && local.key("k") == "k" && local.scheme == "http")
        #expect(throws: S3Error.self) { try S3Location(url: "https://b/p", endpoint: nil, region: "us-east-1") }
        #expect(throws: S3Error.self) { try S3Location(url: "s3://b/p", endpoint: "ftp://x", region: "us-east-1") }
    }
}
