import Engine
import Foundation
import SyncSystem

/// Serves the control socket (see `ControlSocket`): accepts on its own thread, one thread per connection, and
/// refuses peers whose uid (SO_PEERCRED) is not the daemon's.
final class ControlServer {
    let path: String
    private let fd: Int32
    private let handle: ([String: Any]) -> [String: Any]

    init(path: String, handle: @escaping ([String: Any]) -> [String: Any]) throws {
        self.path = path
        self.handle = handle
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chmod(dir, 0o700)
        guard var address = ControlSocket.address(path) else { throw SyncError("control socket path too long: \(path)") }
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError(call: "socket", path: path, errno: errno) }
        let bound = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard bound, listen(fd, 16) == 0 else { throw SystemError(call: "bind/listen", path: path, errno: errno) }
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "control"
        thread.start()
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
            let thread = Thread { [self] in serve(FileDescriptor(raw: client, path: path)) }
            thread.start()
        }
    }

    private func serve(_ client: FileDescriptor) {
        var answer: [String: Any]
        // The request is read before the peer is judged, so that a refused client still gets its answer (a
        // close with unread data would reset the connection under it).
        let request = readRequest(client)
        let peer = peerUID(client.raw)
        if peer != getuid() {
            answer = ["ok": false, "error": "refused: peer uid \(peer.map(String.init) ?? "unknown") is not this daemon's uid \(getuid())"]
        } else if let request, request["command"] as? String == "logs", request["follow"] as? Bool == true {
            return follow(client)
        } else if let request {
            answer = handle(request)
        } else {
            answer = ["ok": false, "error": "expected one line of JSON"]
        }
        if var data = try? JSONSerialization.data(withJSONObject: answer) {
            data.append(UInt8(ascii: "\n"))
            _ = try? data.withUnsafeBytes { try client.writeAll($0) }
        }
    }

    /// `logs -f`: the kept lines, then every new one, one JSON line each, until the client goes away.
    private func follow(_ client: FileDescriptor) {
        let queue = NSCondition()
        var waiting: [String] = []
        var gone = false
        let (lines, token) = LogBook.lines { line in
            queue.lock()
            waiting.append(line)
            queue.signal()
            queue.unlock()
        }
        defer { if let token { LogBook.unfollow(token) } }
        func send(_ object: [String: Any]) -> Bool {
            guard var data = try? JSONSerialization.data(withJSONObject: object) else { return true }
            data.append(UInt8(ascii: "\n"))
            return (try? data.withUnsafeBytes { try client.writeAll($0) }) != nil
        }
        guard send(["ok": true, "lines": lines]) else { return }
        while !gone {
            queue.lock()
            while waiting.isEmpty { _ = queue.wait(until: Date().addingTimeInterval(1)); if waiting.isEmpty { break } }
            let batch = waiting
            waiting.removeAll()
            queue.unlock()
            // An idle second: probe the client with an empty batch, so a closed one is noticed.
            gone = !send(["lines": batch])
        }
    }

    private func readRequest(_ client: FileDescriptor) -> [String: Any]? {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !bytes.contains(UInt8(ascii: "\n")) && bytes.count < 65536 {
            guard let n = try? buffer.withUnsafeMutableBytes({ try client.read(into: $0) }), n > 0 else { break }
            bytes.append(contentsOf: buffer[0..<n])
        }
        guard let end = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(bytes[..<end]))) as? [String: Any]
    }
}
