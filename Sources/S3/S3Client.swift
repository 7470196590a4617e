import Foundation
@_exported import struct HTTP.AWSCredentials
@_exported import struct HTTP.CredentialsError
import HTTP
import SyncSystem

/// Where a store lives: the endpoint, the bucket and a key prefix (`s3://BUCKET/PREFIX`).
public struct S3Location: Sendable, Equatable, CustomStringConvertible {
    public var scheme: String
    /// `host[:port]`.
    public var host: String
    public var bucket: String
    /// Without leading or trailing '/'; "" for the bucket's root.
    public var prefix: String
    public var region: String
    /// The bucket in the path (`https://host/bucket/key`), as S3-compatible servers want; else in the host name
    /// (`https://bucket.s3.region.amazonaws.com/key`), as AWS prefers.
    public var pathStyle: Bool

    /// Parses `s3://BUCKET/PREFIX` with an endpoint URL (nil: AWS's endpoint for `region`).
    public init(url: String, endpoint: String?, region: String) throws {
        guard url.hasPrefix("s3://") else { throw S3Error.setting("store: '\(url)' is not an s3://BUCKET/PREFIX URL") }
        let rest = url.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        guard !bucket.isEmpty, bucket.allSatisfy({ $0.isLetter || $0.isNumber || "-._".contains($0) }) else {
            throw S3Error.setting("store: '\(url)' names no valid bucket")
        }
        self.bucket = bucket
        prefix = rest.dropFirst(bucket.count).split(separator: "/").joined(separator: "/")
        self.region = region
        let target = endpoint ?? "https://s3.\(region).amazonaws.com"
        guard let schemeEnd = target.range(of: "://") else { throw S3Error.setting("endpoint: '\(target)' is not a URL (http:// or https://)") }
        scheme = String(target[..<schemeEnd.lowerBound]).lowercased()
        guard scheme == "http" || scheme == "https" else { throw S3Error.setting("endpoint: '\(target)': only http and https") }
        host = String(target[schemeEnd.upperBound...].prefix { $0 != "/" })
        guard !host.isEmpty else { throw S3Error.setting("endpoint: '\(target)' names no host") }
        pathStyle = endpoint != nil || bucket.contains(".")
    }

    public var description: String { "s3://\(bucket)" + (prefix.isEmpty ? "" : "/" + prefix) }

    /// The full key of `name` under the prefix.
    public func key(_ name: String) -> String { prefix.isEmpty ? name : prefix + "/" + name }

    var requestHost: String { pathStyle ? host : "\(bucket).\(host)" }

    /// The request path for `key` ("" for the bucket itself).
    func path(_ key: String) -> String {
        let encoded = awsPercentEncode(key, keepSlash: true)
        return pathStyle ? "/\(bucket)" + (key.isEmpty ? "" : "/" + encoded) : "/" + encoded
    }
}

/// What went wrong with the store, naming the object, the bucket or the setting.
public enum S3Error: Error, CustomStringConvertible, Equatable {
    /// A setting (store:, endpoint:) that cannot be used.
    case setting(String)
    /// The server answered an error: HTTP status, S3 error code and message, about `what`.
    case server(what: String, status: Int, code: String, message: String)
    /// The request did not reach the server, or its answer broke off.
    case transport(what: String, reason: String)

    public var description: String {
        switch self {
        case .setting(let text): return text
        case .transport(let what, let reason): return "\(what): \(reason)"
        case .server(let what, let status, let code, let message):
            var hint = ""
            switch code {
            case "NoSuchBucket": hint = "; create the bucket, or fix store: in syncd.yaml"
            case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied":
                hint = "; check the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and their permissions"
            default: break
            }
            return "\(what): \(code.isEmpty ? "HTTP \(status)" : code)\(message.isEmpty ? "" : ": \(message)") (HTTP \(status))\(hint)"
        }
    }

    /// The S3 error code, for callers that act on one ("NoSuchKey").
    public var code: String? {
        if case .server(_, _, let code, _) = self { return code }
        return nil
    }
}

/// An object as a listing shows it.
public struct S3Object: Sendable, Equatable {
    /// The key without the location's prefix.
    public var name: String
    public var size: UInt64
    public var etag: String
    /// When it was written (seconds since the epoch; 0 when the listing did not say).
    public var lastModified: Double = 0
}

/// S3's `LastModified` (`2026-12-01T07:36:16.000Z`) as seconds since the epoch; 0 when it does not parse.
func parseS3Time(_ text: String) -> Double {
    let digits = text.split(whereSeparator: { !$0.isNumber }).map { Int($0) ?? 0 }
    guard digits.count >= 6 else { return 0 }
    var parts = tm()
    parts.tm_year = Int32(digits[0] - 1900)
    parts.tm_mon = Int32(digits[1] - 1)
    parts.tm_mday = Int32(digits[2])
    parts.tm_hour = Int32(digits[3])
    parts.tm_min = Int32(digits[4])
    parts.tm_sec = Int32(digits[5])
    return Double(timegm(&parts))
}

/// A client for one store location. Each thread uses its own: it keeps one HTTP connection.
public final class S3Client {
    public let location: S3Location
    private let signer: SigV4
    private let http: HTTPConnection

    public init(location: S3Location, credentials: AWSCredentials) throws {
        self.location = location
        signer = SigV4(accessKey: credentials.accessKey, secretKey: credentials.secretKey, sessionToken: credentials.sessionToken,
                       region: location.region)
        do { http = try HTTPConnection() } catch let e as HTTPError { throw S3Error.transport(what: location.description, reason: e.description) }
    }

    /// A client for the same location and credentials, for another thread.
    public func copy() throws -> S3Client {
        try S3Client(location: location, credentials: AWSCredentials(accessKey: signer.accessKey, secretKey: signer.secretKey,
                                                                     sessionToken: signer.sessionToken, source: ""))
    }

    private func shown(_ key: String) -> String { "s3://\(location.bucket)/\(key)" }

    /// Sends one signed request; an error status throws `S3Error.server` unless it is in `accepting`.
    ///
    /// Every request with a body says what it carries (`application/octet-stream` unless the caller says
    /// otherwise: left to libcurl, a part went out as a form and one server stored it as 0 bytes) and carries its
    /// MD5 (`Content-MD5`), which the server checks before it keeps anything. An ETag answered for an upload that
    /// is an MD5 (32 hex digits) must be the body's.
    @discardableResult
    func send(_ method: String, key: String, query: String = "", headers: [(String, String)] = [], body: [UInt8] = [],
              accepting: Set<Int> = []) throws -> HTTPResponse {
        let path = location.path(key)
        var headers = headers
        var bodyMD5: [UInt8]?
        if !body.isEmpty || method == "PUT" {
            if !headers.contains(where: { $0.0 == "content-type" }) { headers.append(("content-type", "application/octet-stream")) }
            let digest = md5(body)
            bodyMD5 = digest
            headers.append(("content-md5", Data(digest).base64EncodedString()))
        }
        let signed = signer.sign(method: method, path: path, query: query, headers: [("host", location.requestHost)] + headers,
                                 payloadHash: sha256Hex(body))
        let url = "\(location.scheme)://\(location.requestHost)\(path)" + (query.isEmpty ? "" : "?" + query)
        let response: HTTPResponse
        do {
            response = try http.perform(HTTPRequest(method: method, url: url, headers: signed.filter { $0.0 != "host" }, body: body))
        } catch let e as HTTPError {
            throw S3Error.transport(what: key.isEmpty ? "s3://\(location.bucket)" : shown(key), reason: e.description)
        }
        if (200..<300).contains(response.status) {
            // (An object kept with SSE-KMS has an ETag that is no MD5; the server checked Content-MD5 all the same.)
            if method == "PUT", let bodyMD5, let etag = response.headers["etag"], response.headers["x-amz-server-side-encryption"] != "aws:kms" {
                let hex = etag.trimmingCharacters(in: CharacterSet(charactersIn: "\" "))
                if hex.count == 32, hex.allSatisfy(\.isHexDigit), hex.lowercased() != bodyMD5.map({ String(format: "%02x", $0) }).joined() {
                    throw S3Error.server(what: key.isEmpty ? "s3://\(location.bucket)" : shown(key), status: response.status, code: "BadDigest",
                                         message: "the store answered ETag \(hex) for \(body.count) bytes whose MD5 is another; it did not keep what was sent")
                }
            }
            return response
        }
        if accepting.contains(response.status) { return response }
        let code = XMLFields(response.body).first("Code") ?? ""
        let message = XMLFields(response.body).first("Message") ?? ""
        throw S3Error.server(what: key.isEmpty ? "s3://\(location.bucket) at \(location.scheme)://\(location.host)" : shown(key),
                             status: response.status, code: code.isEmpty && response.status == 404 ? (key.isEmpty ? "NoSuchBucket" : "NoSuchKey") : code,
                             message: message)
    }

    /// Writes an object (replacing any by that name).
    public func put(_ name: String, _ body: [UInt8], contentType: String = "application/octet-stream") throws {
        try send("PUT", key: location.key(name), headers: [("content-type", contentType)], body: body)
    }

    /// Reads an object, or the bytes `range` of it.
    public func get(_ name: String, range: Range<UInt64>? = nil) throws -> [UInt8] {
        var headers: [(String, String)] = []
        if let range { headers.append(("range", "bytes=\(range.lowerBound)-\(range.upperBound - 1)")) }
        let response = try send("GET", key: location.key(name), headers: headers)
        if let range, response.status == 200, response.body.count > Int(range.count) {
            // A server that ignored the range sent it all.
            return Array(response.body[Int(range.lowerBound)..<Int(range.upperBound)])
        }
        return response.body
    }

    /// Reads each of `names`, up to `connections` at a time (this client and copies of it, on threads joined
    /// before it returns); each name's object or why it could not be read, in the order given.
    public func getAll(_ names: [String], connections: Int) throws -> [Result<[UInt8], Error>] {
        let results = IndexedResults<Result<[UInt8], Error>>(count: names.count)
        let readers = max(1, min(connections, names.count / 4))
        var clients: [S3Client] = [self]
        for _ in 1..<max(readers, 1) { clients.append(try copy()) }
        let work = { (client: S3Client) in
            while let i = results.claim() { results.set(i, Result { try client.get(names[i]) }) }
        }
        var threads: [pthread_t] = []
        defer { for t in threads { pthread_join(t, nil) } }
        for client in clients.dropFirst() {
            // No thread to be had: the others (this one at least) do its share.
            if let t = try? startThread({ work(client) }) { threads.append(t) }
        }
        work(self)
        for t in threads { pthread_join(t, nil) }
        threads = []
        return names.indices.map { results[$0] ?? .failure(S3Error.transport(what: shown(names[$0]), reason: "not read")) }
    }

    /// An object's size, or nil when there is none by that name.
    public func size(_ name: String) throws -> UInt64? {
        let response = try send("HEAD", key: location.key(name), accepting: [404])
        if response.status == 404 { return nil }
        return response.headers["content-length"].flatMap { UInt64($0) }
    }

    public func delete(_ name: String) throws {
        try send("DELETE", key: location.key(name), accepting: [404])
    }

    /// Every object whose name (under the location's prefix) starts with `prefix`, in key order, after `startAfter`.
    public func list(_ prefix: String, startAfter: String? = nil) throws -> [S3Object] {
        var out: [S3Object] = []
        var token: String?
        let full = location.key(prefix)
        let strip = location.prefix.isEmpty ? 0 : location.prefix.count + 1
        for _ in 0..<100_000 {
            var query = "list-type=2&prefix=" + awsPercentEncode(full)
            if let token { query += "&continuation-token=" + awsPercentEncode(token) }
            else if let startAfter { query += "&start-after=" + awsPercentEncode(location.key(startAfter)) }
            let response = try send("GET", key: "", query: query)
            let xml = XMLFields(response.body)
            for item in xml.elements("Contents") {
                let fields = XMLFields(Array(item.utf8))
                guard let key = fields.first("Key"), key.count >= strip else { continue }
                out.append(S3Object(name: String(key.dropFirst(strip)), size: UInt64(fields.first("Size") ?? "0") ?? 0,
                                    etag: fields.first("ETag") ?? "", lastModified: parseS3Time(fields.first("LastModified") ?? "")))
            }
            guard xml.first("IsTruncated") == "true", let next = xml.first("NextContinuationToken") else { return out }
            token = next
        }
        return out
    }

    /// Uploads `parts` as one object by multipart upload (each part but the last at least 5 MiB); aborted on
    /// failure, so no part is left behind.
    public func putMultipart(_ name: String, parts: [[UInt8]]) throws {
        let key = location.key(name)
        let created = try send("POST", key: key, query: "uploads")
        guard let upload = XMLFields(created.body).first("UploadId") else {
            throw S3Error.server(what: shown(key), status: created.status, code: "", message: "no UploadId in the answer to CreateMultipartUpload")
        }
        let uploadQuery = "uploadId=" + awsPercentEncode(upload)
        do {
            var etags: [String] = []
            for (i, part) in parts.enumerated() {
                let response = try send("PUT", key: key, query: "partNumber=\(i + 1)&" + uploadQuery, body: part)
                etags.append(response.headers["etag"] ?? "")
            }
            var xml = "<CompleteMultipartUpload>"
            for (i, etag) in etags.enumerated() { xml += "<Part><PartNumber>\(i + 1)</PartNumber><ETag>\(xmlEscaped(etag))</ETag></Part>" }
            xml += "</CompleteMultipartUpload>"
            let done = try send("POST", key: key, query: uploadQuery, headers: [("content-type", "application/xml")], body: Array(xml.utf8))
            // CompleteMultipartUpload may answer 200 with an error inside.
            if let code = XMLFields(done.body).first("Code") {
                throw S3Error.server(what: shown(key), status: done.status, code: code, message: XMLFields(done.body).first("Message") ?? "")
            }
            // The object is the parts together, or it is not kept.
            let expected = parts.reduce(UInt64(0)) { $0 + UInt64($1.count) }
            let stored = try size(name)
            guard stored == expected else {
                try? delete(name)
                throw S3Error.server(what: shown(key), status: done.status, code: "IncompleteBody",
                                     message: "the store holds \(stored.map { "\($0) bytes" } ?? "nothing") after the upload of \(expected); removed")
            }
        } catch {
            _ = try? send("DELETE", key: key, query: uploadQuery, accepting: [404])
            throw error
        }
    }

    /// The object's plain URL, for a reader that signs its own requests.
    public func objectURL(_ name: String) -> String { links.objectURL(name) }

    /// A URL that reads the object `name` (or its bytes `range` with a Range header) for `expires` seconds, with
    /// no credentials: what hosts are given.
    public func presignedGet(_ name: String, expires: Int) -> String { links.presignedGet(name, expires: expires) }

    /// URLs of this client's objects, made without it (any thread may use them).
    public var links: S3Links { S3Links(location: location, signer: signer) }

    /// Makes the bucket (for tests and first use); an existing bucket of this owner is fine.
    public func createBucket() throws {
        try send("PUT", key: "", accepting: [409])
    }
}

/// Just enough XML for S3's flat answers: the text of elements by name (entities decoded).
struct XMLFields {
    let text: String
    init(_ bytes: [UInt8]) { text = String(decoding: bytes, as: UTF8.self) }

    /// The inner text of every `<name>…</name>`, in order.
    func elements(_ name: String) -> [String] {
        var out: [String] = []
        var rest = text[...]
        let open = "<\(name)>", close = "</\(name)>"
        while let start = rest.range(of: open), let end = rest[start.upperBound...].range(of: close) {
            out.append(String(rest[start.upperBound..<end.lowerBound]))
            rest = rest[end.upperBound...]
        }
        return out
    }

    func first(_ name: String) -> String? { elements(name).first.map(xmlUnescaped) }
}

func xmlUnescaped(_ s: String) -> String {
    guard s.contains("&") else { return s }
    return s.replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
        .replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
        .replacingOccurrences(of: "&#34;", with: "\"").replacingOccurrences(of: "&amp;", with: "&")
}

func xmlEscaped(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}

/// URLs of the objects at one location, plain or presigned: what hosts are handed. Needs no connection, so one
/// value serves every thread.
public struct S3Links: Sendable {
    public let location: S3Location
    let signer: SigV4

    public func objectURL(_ name: String) -> String {
        "\(location.scheme)://\(location.requestHost)\(location.path(location.key(name)))"
    }

    public func presignedGet(_ name: String, expires: Int, date: Date = Date()) -> String {
        signer.presign(method: "GET", scheme: location.scheme, host: location.requestHost, path: location.path(location.key(name)),
                       expires: expires, date: date)
    }
}

