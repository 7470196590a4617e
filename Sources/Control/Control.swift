import Client
import Foundation
import SyncSystem

/// The daemon's control socket: `$XDG_RUNTIME_DIR/syncd/control.sock` (a 0700 directory), or
/// `/tmp/syncd-<uid>/control.sock` without a runtime directory. One request per connection: a line of JSON
/// (`ControlRequest`), answered by a line of JSON (`ControlAnswer`: `{"ok": true, …}` or `{"ok": false,
/// "error": "…"}`). The daemon serves only peers of its own uid.
public enum ControlSocket {
    public static func path(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return runtime + "/syncd/control.sock" }
        return "/tmp/syncd-\(getuid())/control.sock"
    }

    /// Checks that `directory` (the control socket's) is this user's own: a real directory, not a symlink, owned
    /// by this uid, with no access for anyone else (made so with `create`, when missing or too open). Another
    /// local user could otherwise make `/tmp/syncd-<uid>` first and put a daemon of theirs in front of syncctl.
    /// Returns false when it does not exist (and `create` is false).
    @discardableResult
    public static func checkDirectory(_ directory: String, create: Bool) throws -> Bool {
        if create && mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw SyncError("cannot make the control socket's directory \(directory): \(String(cString: strerror(errno)))")
        }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT && !create { return false }
            let why = errno == ELOOP || errno == ENOTDIR ? "it is a symlink or not a directory" : String(cString: strerror(errno))
            throw SyncError("the control socket's directory \(directory) cannot be trusted: \(why); remove it and start syncd again")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SystemError(call: "fstat", path: directory, errno: errno) }
        guard st.st_uid == getuid() else {
            throw SyncError("the control socket's directory \(directory) belongs to uid \(st.st_uid), not to you (uid \(getuid())): "
                            + "another user may be standing in for syncd; remove it (as root) and start syncd again")
        }
        if st.st_mode & 0o077 != 0 {
            guard create, fchmod(fd, 0o700) == 0 else {
                throw SyncError("the control socket's directory \(directory) is open to other users (mode \(String(st.st_mode & 0o777, radix: 8))); "
                                + "chmod 700 it, or start syncd again")
            }
        }
        return true
    }

    /// Fills a `sockaddr_un` for `path`; nil when the path is too long for one.
    public static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return address
    }

    /// Sends one request to the running daemon and returns its answer; nil when no daemon listens.
    public static func request(_ body: ControlRequest, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ControlAnswer? {
        var answer: ControlAnswer?
        guard try stream(body, environment: environment, each: { answer = $0; return false }) else { return nil }
        guard let answer else { throw SyncError("syncd closed the control connection without an answer") }
        return answer
    }

    /// Sends one request and hands each JSON line of the answer to `each` until the daemon closes the
    /// connection or `each` returns false. Returns false when no daemon listens.
    @discardableResult
    public static func stream(_ body: ControlRequest, environment: [String: String] = ProcessInfo.processInfo.environment,
                              each: (ControlAnswer) throws -> Bool) throws -> Bool {
        let path = path(environment: environment)
        guard var address = address(path) else { return false }
        guard try checkDirectory((path as NSString).deletingLastPathComponent, create: false) else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError(call: "socket", path: path, errno: errno) }
        let file = FileDescriptor(raw: fd, path: path)
        let connected = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard connected else {
            if errno == ENOENT || errno == ECONNREFUSED { return false }
            throw SyncError("cannot reach syncd at \(path): \(String(cString: strerror(errno)))")
        }
        // Nothing is sent to a process of another user.
        let peer = Platform.peerUID(fd)
        guard peer == getuid() else {
            throw SyncError("the process listening at \(path) runs as uid \(peer.map(String.init) ?? "unknown"), not as you (uid \(getuid())); "
                            + "refusing to talk to it")
        }
        var line = try JSONEncoder().encode(body)
        line.append(UInt8(ascii: "\n"))
        signal(SIGPIPE, SIG_IGN)
        _ = try? line.withUnsafeBytes { try file.writeAll($0) }  // a refusing daemon may answer before reading
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var first = true
        while true {
            while let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(pending[..<end])
                pending.removeSubrange(...end)
                let object: ControlAnswer
                do { object = try JSONDecoder().decode(ControlAnswer.self, from: Data(line)) } catch {
                    throw SyncError("syncd at \(path) sent an answer this syncctl cannot read (\(error)): \(String(decoding: line.prefix(200), as: UTF8.self)); "
                                    + "if syncd is older than this syncctl, restart it (systemctl --user restart syncd)")
                }
                // A project the daemon does not run is the caller's to handle (it syncs on its own).
                if first && !object.ok && object.unregistered != true {
                    throw SyncError("syncd: \(object.error ?? "request refused")")
                }
                first = false
                if try !each(object) { return true }
            }
            let n = try buffer.withUnsafeMutableBytes { try file.read(into: $0) }
            if n == 0 { return true }
            pending.append(contentsOf: buffer[0..<n])
        }
    }
}
