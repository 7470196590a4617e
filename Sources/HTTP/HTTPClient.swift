import CCurl
import SyncSystem
#if canImport(Glibc)
import Glibc
#endif

/// An HTTP exchange that did not happen: the library is missing, the host is unreachable, the transfer broke.
/// (A response with an error status is not an error here; the caller reads it.)
public struct HTTPError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ text: String) { description = text }
}

/// libcurl, loaded once per process on first use (see `CCurl`): a host that never uses a store never needs it.
/// Immutable once made (the function table is only read), so it may be shared between threads.
final class CurlLibrary: @unchecked Sendable {
    let api: syncd_curl_api

    private init(api: syncd_curl_api) { self.api = api }

    /// Loaded on first use; a static let is initialized once, under the runtime's own lock.
    private static let loaded: Result<CurlLibrary, HTTPError> = {
        var api = syncd_curl_api()
        var error = [CChar](repeating: 0, count: 512)
        guard syncd_curl_load(&api, &error, error.count) == 0 else {
            let why = String(nulTerminated: error)
            return .failure(HTTPError("cannot load libcurl (\(why)); a project with a store needs libcurl 7.75 or later on this machine (Debian/Ubuntu: apt install libcurl4)"))
        }
        return .success(CurlLibrary(api: api))
    }()

    static func shared() throws -> CurlLibrary { try loaded.get() }

    var version: String { String(cString: syncd_curl_version(withUnsafePointer(to: api) { $0 })) }
}

/// What a server answered: status, headers (names in lower case) and body.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [String: String]
    public var body: [UInt8]

    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// One request.
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    /// Sent as given (name, value); libcurl adds Host and Content-Length.
    public var headers: [(String, String)]
    public var body: [UInt8]
    /// Signs the request with AWS Signature V4 for S3 in this region with these credentials (libcurl's
    /// CURLOPT_AWS_SIGV4), for a host that reads the store with credentials of its own.
    public var signing: (credentials: AWSCredentials, region: String)?

    public init(method: String, url: String, headers: [(String, String)] = [], body: [UInt8] = [],
                signing: (credentials: AWSCredentials, region: String)? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.signing = signing
    }
}

/// A connection to HTTP servers: one libcurl handle, reused between requests so that a keep-alive connection is
/// reused too. Not for use by two threads at once; make one per thread.
public final class HTTPConnection {
    private let curl: CurlLibrary
    private let handle: UnsafeMutableRawPointer
    /// Seconds to wait for a connection; a transfer slower than 1 KB/s for `stallSeconds` is abandoned.
    public var connectTimeout = 10
    public var stallSeconds = 30
    /// The most bytes an answer's body may hold; a longer one is abandoned with an error that says so.
    public var maxBodyBytes = Int.max

    public init() throws {
        curl = try CurlLibrary.shared()
        guard let made = curl.api.easy_init() else { throw HTTPError("curl_easy_init failed") }
        handle = made
    }

    deinit { curl.api.easy_cleanup(handle) }

    /// The libcurl version in use.
    public var libraryVersion: String { curl.version }

    /// Sends `request` and reads the whole answer.
    public func perform(_ request: HTTPRequest) throws -> HTTPResponse {
        let box = ResponseBox(limit: maxBodyBytes)
        let retained = Unmanaged.passRetained(box)
        defer { retained.release() }
        var api = curl.api
        curl.api.easy_reset(handle)
        var list: UnsafeMutablePointer<curl_slist>?
        defer { if let list { api.slist_free_all(list) } }
        // "Expect: 100-continue" costs a round trip per upload; servers answer errors after the body anyway. (Not
        // for a request libcurl signs: it would sign the removed header as an empty one the server never sees.)
        var headers = request.headers
        if !request.body.isEmpty && request.signing == nil { headers.append(("Expect", "")) }
        if let token = request.signing?.credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
        for (name, value) in headers {
            list = api.slist_append(list, value.isEmpty ? "\(name):" : "\(name): \(value)")
        }
        var errorText = [CChar](repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        let code: CURLcode = request.body.withUnsafeBytes { body in
            errorText.withUnsafeMutableBufferPointer { errorBuffer in
                withUnsafeMutablePointer(to: &api) { p in
                    var rc = CURLE_OK
                    func set(_ option: CURLoption, _ value: Int) { if rc == CURLE_OK { rc = syncd_curl_setopt_long(p, handle, option, value) } }
                    func set(_ option: CURLoption, pointer: UnsafeRawPointer?) {
                        if rc == CURLE_OK { rc = syncd_curl_setopt_pointer(p, handle, option, pointer) }
                    }
                    request.url.withCString { url in
                        request.method.withCString { method in
                            set(CURLOPT_URL, pointer: url)
                            set(CURLOPT_NOSIGNAL, 1)
                            set(CURLOPT_CONNECTTIMEOUT, connectTimeout)
                            set(CURLOPT_LOW_SPEED_LIMIT, 1024)
                            set(CURLOPT_LOW_SPEED_TIME, stallSeconds)
                            set(CURLOPT_ERRORBUFFER, pointer: errorBuffer.baseAddress)
                            set(CURLOPT_HTTPHEADER, pointer: UnsafeRawPointer(list))
                            if let signing = request.signing {
                                // Both strings are copied by libcurl when set.
                                "aws:amz:\(signing.region):s3".withCString { set(CURLOPT_AWS_SIGV4, pointer: $0) }
                                "\(signing.credentials.accessKey):\(signing.credentials.secretKey)".withCString { set(CURLOPT_USERPWD, pointer: $0) }
                            }
                            set(CURLOPT_WRITEDATA, pointer: retained.toOpaque())
                            set(CURLOPT_HEADERDATA, pointer: retained.toOpaque())
                            if rc == CURLE_OK { rc = syncd_curl_setopt_callback(p, handle, CURLOPT_WRITEFUNCTION, responseBody) }
                            if rc == CURLE_OK { rc = syncd_curl_setopt_callback(p, handle, CURLOPT_HEADERFUNCTION, responseHeader) }
                            switch request.method {
                            case "GET": break
                            case "HEAD": set(CURLOPT_NOBODY, 1)
                            default:
                                set(CURLOPT_CUSTOMREQUEST, pointer: method)
                                // The body is read in place: it outlives the transfer.
                                set(CURLOPT_POSTFIELDS, pointer: body.baseAddress ?? UnsafeRawPointer(bitPattern: 1))
                                if rc == CURLE_OK { rc = syncd_curl_setopt_offset(p, handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count)) }
                            }
                            if rc == CURLE_OK { rc = p.pointee.easy_perform(handle) }
                        }
                    }
                    return rc
                }
            }
        }
        guard code == CURLE_OK else {
            if box.overflowed {
                throw HTTPError("\(request.method) \(Self.redacted(request.url)): the answer is longer than the \(maxBodyBytes) bytes accepted; refused")
            }
            let detail = String(nulTerminated: errorText)
            let reason = detail.isEmpty ? curl.api.easy_strerror(code).map { String(cString: $0) } ?? "error \(code.rawValue)" : detail
            throw HTTPError("\(request.method) \(Self.redacted(request.url)): \(reason)")
        }
        var status = 0
        _ = withUnsafePointer(to: curl.api) { syncd_curl_getinfo_long($0, handle, CURLINFO_RESPONSE_CODE, &status) }
        return HTTPResponse(status: status, headers: box.headers, body: box.body)
    }

    /// A URL without its query (which may carry a signature), for messages.
    public static func redacted(_ url: String) -> String {
        guard let q = url.firstIndex(of: "?") else { return url }
        return String(url[..<q]) + "?…"
    }
}

private final class ResponseBox {
    var body: [UInt8] = []
    var headers: [String: String] = [:]
    let limit: Int
    /// The body went past `limit`: the transfer was stopped.
    var overflowed = false
    init(limit: Int) { self.limit = limit }
}

private let responseBody: syncd_curl_data_callback = { data, size, count, context in
    let box = Unmanaged<ResponseBox>.fromOpaque(context!).takeUnretainedValue()
    let n = size * count
    if n > box.limit - box.body.count {
        box.overflowed = true
        return 0  // libcurl ends the transfer with a write error
    }
    if n > 0, let data { data.withMemoryRebound(to: UInt8.self, capacity: n) { box.body.append(contentsOf: UnsafeBufferPointer(start: $0, count: n)) } }
    return n
}

private let responseHeader: syncd_curl_data_callback = { data, size, count, context in
    let box = Unmanaged<ResponseBox>.fromOpaque(context!).takeUnretainedValue()
    let n = size * count
    guard n > 0, let data else { return n }
    let line = data.withMemoryRebound(to: UInt8.self, capacity: n) { String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self) }
    if line.hasPrefix("HTTP/") {
        box.headers.removeAll()  // a new response (after a redirect or 100 Continue)
    } else if let colon = line.firstIndex(of: ":") {
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t\r\n")
        box.headers[name] = value
    }
    return n
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = self
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}
