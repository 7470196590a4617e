import Builds
import Client
import Control
import Fleet
import Foundation
import SyncSystem

/// Serves the control socket (see `ControlSocket`): accepts on its own thread, one thread per connection, and
/// refuses peers whose uid (SO_PEERCRED) is not the daemon's.
final class ControlServer: Sendable {
    let path: String
    private let fd: Int32
    private let handle: @Sendable (ControlRequest) -> ControlAnswer

    init(path: String, handle: @escaping @Sendable (ControlRequest) -> ControlAnswer) throws {
        self.path = path
        self.handle = handle
        let dir = (path as NSString).deletingLastPathComponent
        // Its parent ($XDG_RUNTIME_DIR, or /tmp) may need making; the directory itself must be this user's own.
        try FileManager.default.createDirectory(atPath: (dir as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try ControlSocket.checkDirectory(dir, create: true)
        guard var address = ControlSocket.address(path) else { throw SyncError("control socket path too long: \(path)") }
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError(call: "socket", path: path, errno: errno) }
        let bound = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard bound, listen(fd, 16) == 0 else { throw SystemError(call: "bind/listen", path: path, errno: errno) }
        try startDetachedThread(name: "control") { [self] in acceptLoop() }
    }

    func close() {
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }

    private func acceptLoop() {
        while true {
            let client = acceptConnection(fd)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            let connection = FileDescriptor(raw: client, path: path)
            // Without a thread for it, the connection is closed (its descriptor goes with `connection`).
            try? startDetachedThread(name: "control-client") { [self] in serve(connection) }
        }
    }

    private func serve(_ client: FileDescriptor) {
        let answer: ControlAnswer
        // The request is read before the peer is judged, so that a refused client still gets its answer (a
        // close with unread data would reset the connection under it).
        let request = readRequest(client)
        let peer = Platform.peerUID(client.raw)
        if peer != getuid() {
            answer = .failure("refused: peer uid \(peer.map(String.init) ?? "unknown") is not this daemon's uid \(getuid())")
        } else {
            switch request {
            case .success(let request) where request.command == .logs && request.follow == true:
                return follow(client)
            case .success(let request):
                answer = handle(request)
            case .failure(let error):
                answer = .failure("\(error)")
            }
        }
        _ = try? answer.line().withUnsafeBytes { try client.writeAll($0) }
        if !answer.ok { drain(client) }
    }

    /// After refusing a request: ends our side, then reads what the client still sends (bounded by bytes and
    /// time), so that closing with unread data does not reset the connection before the client reads the answer.
    private func drain(_ client: FileDescriptor) {
        shutdown(client.raw, Int32(SHUT_WR))
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(client.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 65536)
        var left = 16 << 20
        while left > 0, let n = try? buffer.withUnsafeMutableBytes({ try client.read(into: $0) }), n > 0 { left -= n }
    }

    /// `logs -f`: the kept lines, then every new one, one JSON line each, until the client goes away.
    private func follow(_ client: FileDescriptor) {
        // Log lines on their way to the client: the logging thread puts, this connection's thread takes.
        let queue = BoundedQueue<String>(limit: .max)
        let (lines, token) = LogBook.lines { queue.put($0) }
        defer { if let token { LogBook.unfollow(token) } }
        func send(_ batch: [String]) -> Bool {
            var answer = ControlAnswer()
            answer.lines = batch
            return (try? answer.line().withUnsafeBytes { try client.writeAll($0) }) != nil
        }
        guard send(lines) else { return }
        // An idle second gives an empty batch: it probes the client, so a closed one is noticed.
        while send(queue.takeAll(waitingUntil: monotonicNanos() + 1_000_000_000)) {}
    }

    /// The request line, decoded; or why there is none: no line, a line too long, or one that does not decode.
    private func readRequest(_ client: FileDescriptor) -> Result<ControlRequest, ControlProtocolError> {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !bytes.contains(UInt8(ascii: "\n")) && bytes.count <= ControlRequest.maxLineBytes {
            guard let n = try? buffer.withUnsafeMutableBytes({ try client.read(into: $0) }), n > 0 else { break }
            bytes.append(contentsOf: buffer[0..<n])
        }
        guard let end = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            return .failure(ControlProtocolError(bytes.count > ControlRequest.maxLineBytes
                ? "the request is longer than \(ControlRequest.maxLineBytes) bytes" : "expected one line of JSON, ended by a newline"))
        }
        return Result { try ControlRequest.decode(line: Array(bytes[..<end])) }.mapError { $0 as? ControlProtocolError ?? ControlProtocolError("\($0)") }
    }
}

