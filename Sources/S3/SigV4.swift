import COpenSSL
import Foundation

/// SHA-256 of `bytes`, as 64 lowercase hex digits.
public func sha256Hex<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    var out = [UInt8](repeating: 0, count: 32)
    Array(bytes).withUnsafeBytes { syncd_sha256($0.baseAddress, $0.count, &out) }
    return hex(out)
}

/// The MD5 of `bytes` (16 bytes): S3's integrity check of an upload (Content-MD5) and the ETag of a simple one.
func md5(_ bytes: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 16)
    _ = bytes.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { syncd_md5(b.baseAddress, b.count, $0.baseAddress!) } }
    return out
}

func hmacSHA256(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    key.withUnsafeBytes { k in data.withUnsafeBytes { d in _ = syncd_hmac_sha256(k.baseAddress, k.count, d.baseAddress, d.count, &out) } }
    return out
}

func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// RFC 3986 percent-encoding as SigV4 wants it: every byte but A–Z a–z 0–9 `-._~` as `%XX` (upper case); `/`
/// kept when `keepSlash`.
public func awsPercentEncode(_ text: String, keepSlash: Bool = false) -> String {
    var out = ""
    for b in text.utf8 {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(b))
        case UInt8(ascii: "/") where keepSlash:
            out.append("/")
        default:
            out += String(format: "%%%02X", b)
        }
    }
    return out
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`): request signing in the Authorization header, and presigned URLs
/// (query-string signing). Checked against AWS's published test suite and the S3 examples in
/// Tests/UnitTests/SigV4Tests.swift.
public struct SigV4: Sendable {
    public let accessKey: String
    public let secretKey: String
    public let sessionToken: String?
    public let region: String
    public let service: String
    /// S3 signs the path as sent (no normalization); other services remove `.` and `..` segments and doubled
    /// slashes first. Either way each byte is encoded once, as AWS's test suite has it.
    public var s3PathRules: Bool

    public init(accessKey: String, secretKey: String, sessionToken: String? = nil, region: String, service: String = "s3") {
        self.accessKey = accessKey
        self.secretKey = secretKey
        self.sessionToken = sessionToken
        self.region = region
        self.service = service
        s3PathRules = service == "s3"
    }

    /// `YYYYMMDD'T'HHMMSS'Z'` and `YYYYMMDD`, UTC.
    public static func timestamps(_ date: Date) -> (amzDate: String, day: String) {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&t, &parts)
        let day = String(format: "%04d%02d%02d", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday)
        return (day + String(format: "T%02d%02d%02dZ", parts.tm_hour, parts.tm_min, parts.tm_sec), day)
    }

    /// The canonical URI: the path as S3 wants it (`s3PathRules`), or normalized.
    public func canonicalURI(_ path: String) -> String {
        let raw = path.isEmpty ? "/" : path
        if s3PathRules { return awsPercentEncode(decodePercent(raw), keepSlash: true) }
        var parts: [String] = []
        for part in raw.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." { _ = parts.popLast(); continue }
            parts.append(String(part))
        }
        var normalized = "/" + parts.joined(separator: "/")
        if raw.hasSuffix("/") && normalized != "/" { normalized += "/" }
        return awsPercentEncode(decodePercent(normalized), keepSlash: true)
    }

    /// The canonical query string: each name and value decoded and encoded again, sorted by name then value.
    public func canonicalQuery(_ query: String) -> String {
        guard !query.isEmpty else { return "" }
        var pairs: [(String, String)] = []
        for item in query.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = awsPercentEncode(decodePercent(String(kv[0])))
            let value = kv.count > 1 ? awsPercentEncode(decodePercent(String(kv[1]))) : ""
            pairs.append((name, value))
        }
        pairs.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
        return pairs.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    /// Canonical headers (names in lower case, values trimmed with inner runs of spaces folded, repeated names
    /// joined by ",") and the signed header list.
    public static func canonicalHeaders(_ headers: [(String, String)]) -> (text: String, signed: String) {
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            let folded = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            merged[name.lowercased(), default: []].append(folded)
        }
        let names = merged.keys.sorted()
        let text = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        return (text, names.joined(separator: ";"))
    }

    /// The canonical request, for tests and for the request's signature.
    public func canonicalRequest(method: String, path: String, query: String, headers: [(String, String)], payloadHash: String) -> String {
        let (text, signed) = Self.canonicalHeaders(headers)
        return [method, canonicalURI(path), canonicalQuery(query), text, signed, payloadHash].joined(separator: "\n")
    }

    func scope(_ day: String) -> String { "\(day)/\(region)/\(service)/aws4_request" }

    /// The string to sign for a canonical request.
    public func stringToSign(canonicalRequest: String, amzDate: String) -> String {
        ["AWS4-HMAC-SHA256", amzDate, scope(String(amzDate.prefix(8))), sha256Hex(Array(canonicalRequest.utf8))].joined(separator: "\n")
    }

    /// The signature (hex) of `stringToSign` for `day`.
    public func signature(_ stringToSign: String, day: String) -> String {
        var key = hmacSHA256(key: Array(("AWS4" + secretKey).utf8), Array(day.utf8))
        key = hmacSHA256(key: key, Array(region.utf8))
        key = hmacSHA256(key: key, Array(service.utf8))
        key = hmacSHA256(key: key, Array("aws4_request".utf8))
        return hex(hmacSHA256(key: key, Array(stringToSign.utf8)))
    }

    /// Signs a request: returns `headers` plus `x-amz-date`, `x-amz-content-sha256` (S3), the session token when
    /// there is one, and `Authorization`. `headers` must hold `host`.
    public func sign(method: String, path: String, query: String, headers: [(String, String)], payloadHash: String,
                     date: Date = Date()) -> [(String, String)] {
        let (amzDate, day) = Self.timestamps(date)
        var all = headers + [("x-amz-date", amzDate)]
        if service == "s3" { all.append(("x-amz-content-sha256", payloadHash)) }
        if let sessionToken { all.append(("x-amz-security-token", sessionToken)) }
        let canonical = canonicalRequest(method: method, path: path, query: query, headers: all, payloadHash: payloadHash)
        let signed = Self.canonicalHeaders(all).signed
        let signature = signature(stringToSign(canonicalRequest: canonical, amzDate: amzDate), day: day)
        all.append(("Authorization", "AWS4-HMAC-SHA256 Credential=\(accessKey)/\(scope(day)), SignedHeaders=\(signed), Signature=\(signature)"))
        return all
    }

    /// A presigned URL: `scheme://host` + `path` with the signature in the query, good for `expires` seconds. Only
    /// `host` is signed, so whoever holds the URL needs nothing else (no secret) to use it.
    public func presign(method: String, scheme: String, host: String, path: String, query: String = "", expires: Int,
                        date: Date = Date()) -> String {
        let (amzDate, day) = Self.timestamps(date)
        var items = [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=" + awsPercentEncode("\(accessKey)/\(scope(day))"),
            "X-Amz-Date=\(amzDate)",
            "X-Amz-Expires=\(expires)",
            "X-Amz-SignedHeaders=host",
        ]
        if let sessionToken { items.append("X-Amz-Security-Token=" + awsPercentEncode(sessionToken)) }
        if !query.isEmpty { items.append(query) }
        let unsigned = canonicalQuery(items.joined(separator: "&"))
        let canonical = canonicalRequest(method: method, path: path, query: unsigned, headers: [("host", host)],
                                         payloadHash: "UNSIGNED-PAYLOAD")
        let signature = signature(stringToSign(canonicalRequest: canonical, amzDate: amzDate), day: day)
        return "\(scheme)://\(host)\(canonicalURI(path))?\(unsigned)&X-Amz-Signature=\(signature)"
    }
}

/// `%XX` escapes decoded (bytes that do not form UTF-8 are kept as the escapes were).
func decodePercent(_ text: String) -> String {
    guard text.contains("%") else { return text }
    var bytes: [UInt8] = []
    let utf8 = Array(text.utf8)
    var i = 0
    while i < utf8.count {
        if utf8[i] == UInt8(ascii: "%"), i + 2 < utf8.count,
           let v = UInt8(String(decoding: utf8[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) {
            bytes.append(v)
            i += 3
        } else {
            bytes.append(utf8[i])
            i += 1
        }
    }
    return String(validating: bytes, as: UTF8.self) ?? text
}
