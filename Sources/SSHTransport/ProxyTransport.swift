#if canImport(Glibc)
import Glibc
#endif
import CLibSSH2
import Foundation
import SyncConfig
import SyncSystem

/// What carries an SSH session when it is not a TCP connection of its own: a `ProxyCommand` process, or a
/// `direct-tcpip` channel of the session to a `ProxyJump` host. Either way libssh2 gets one end of a socket pair;
/// `finish` tears the rest down once the session is done with it.
protocol ProxyTransport: AnyObject {
    func finish()
}

/// A socket pair with close-on-exec set; the first end is this process's.
func makeSocketPair() throws -> (Int32, Int32) {
    var ends: [Int32] = [0, 0]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
        throw SSHError.connect(host: "proxy", port: 0, reason: "socketpair: \(String(cString: strerror(errno)))")
    }
    return (ends[0], ends[1])
}

/// `ProxyCommand`: the command runs through `sh -c` with one end of a socket pair as its stdin and stdout (its
/// stderr is ours, as with ssh); the other end is the session's transport.
final class ProxyCommandTransport: ProxyTransport {
    private let pid: pid_t
    private var reaped = false

    private init(pid: pid_t) { self.pid = pid }

    static func start(_ command: String, host: String) throws -> (fd: Int32, transport: ProxyCommandTransport) {
        let (mine, theirs) = try makeSocketPair()
        defer { close(theirs) }
        do {
            let pid = try spawnProcess(["/bin/sh", "-c", command], stdin: .descriptor(theirs), stdout: .descriptor(theirs), stderr: .inherit)
            return (mine, ProxyCommandTransport(pid: pid))
        } catch {
            close(mine)
            throw SSHError.connect(host: host, port: 0, reason: "ProxyCommand '\(command)' could not be started: \(error)")
        }
    }

    /// The command has its stdin closed by now (the session closed its end); it is given two seconds to leave,
    /// then killed.
    func finish() {
        guard !reaped else { return }
        reaped = true
        var status: Int32 = 0
        for _ in 0..<200 {
            if waitpid(pid, &status, WNOHANG) == pid { return }
            usleep(10_000)
        }
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
    }

    deinit { finish() }
}

/// `ProxyJump`: a `direct-tcpip` channel of an authenticated session to the jump host, to the next host's address
/// and port, pumped to a socket pair by a thread of its own (libssh2 sessions are not shared between threads).
/// The jump session's host key was checked like any other.
final class JumpTransport: ProxyTransport, @unchecked Sendable {  // the pump thread owns `jump` and `channel` once started
    private let jump: SSHSession
    private let channel: OpaquePointer
    private let end: Int32
    /// Whether `finish` asked the pump to stop, and whether it still runs.
    private let pumpState = Locked<(stopped: Bool, running: Bool)>((false, true))

    private init(jump: SSHSession, channel: OpaquePointer, end: Int32) {
        self.jump = jump
        self.channel = channel
        self.end = end
    }

    /// Opens the channel to `host`:`port` through `jump`, and starts its pump.
    static func start(through jump: SSHSession, to host: String, port: Int) throws -> (fd: Int32, transport: JumpTransport) {
        guard let channel = libssh2_channel_direct_tcpip_ex(jump.session, host, Int32(port), "127.0.0.1", 22) else {
            throw SSHError.connect(host: host, port: port, reason: "the jump host \(jump.settings.hostName) could not open a channel to it: \(jump.lastError())")
        }
        let (mine, theirs) = try makeSocketPair()
        let transport = JumpTransport(jump: jump, channel: channel, end: theirs)
        jump.handedOff = true
        do {
            try LibraryThreads.start { transport.pump() }
        } catch {
            close(mine)
            close(theirs)
            libssh2_channel_free(channel)
            jump.handedOff = false
            throw SSHError.connect(host: host, port: port, reason: "cannot start the jump host's pump: \(error)")
        }
        return (mine, transport)
    }

    /// Copies both ways until either side ends, sending the jump session's keepalives meanwhile.
    private func pump() {
        let session = jump.session
        libssh2_session_set_blocking(session, 0)
        var toChannel: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var endOpen = true
        defer {
            libssh2_session_set_blocking(session, 1)
            libssh2_session_set_timeout(session, 2000)
            libssh2_channel_close(channel)
            libssh2_channel_free(channel)
            close(end)
            jump.shutdown()
            pumpState.withLock { $0.running = false }
        }
        while true {
            if pumpState.withLock({ $0.stopped }) { return }
            var progressed = false
            // Channel to socket pair.
            let n = buffer.withUnsafeMutableBytes { libssh2_channel_read_ex(channel, 0, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
            if n > 0 {
                var offset = 0
                while offset < n {
                    let w = buffer.withUnsafeBytes { write(end, $0.baseAddress! + offset, n - offset) }
                    if w < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                    if w <= 0 { return }
                    offset += w
                }
                progressed = true
            } else if n < 0 && Int32(n) != LIBSSH2_ERROR_EAGAIN {
                return
            }
            if libssh2_channel_eof(channel) != 0 && n <= 0 { shutdown(end, Int32(SHUT_WR)) }
            // Socket pair to channel.
            if endOpen && toChannel.isEmpty {
                let r = buffer.withUnsafeMutableBytes { recv(end, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
                if r > 0 { toChannel = Array(buffer[0..<r]); progressed = true }
                else if r == 0 { endOpen = false; libssh2_channel_send_eof(channel) }
                else if errno != EAGAIN && errno != EINTR { return }
            }
            if !toChannel.isEmpty {
                let w = toChannel.withUnsafeBytes { libssh2_channel_write_ex(channel, 0, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
                if w > 0 { toChannel.removeFirst(w); progressed = true }
                else if w < 0 && Int32(w) != LIBSSH2_ERROR_EAGAIN { return }
            }
            if !endOpen && toChannel.isEmpty && libssh2_channel_eof(channel) != 0 { return }
            var next: Int32 = 0
            libssh2_keepalive_send(session, &next)
            if !progressed {
                // Wait for either side: the jump host's socket (as libssh2 needs it) or our end of the pair.
                var fds = [pollfd(fd: jump.socket, events: Int16(POLLIN), revents: 0),
                           // Once our end said EOF it is left out: it would report POLLHUP for ever, and spin.
                           pollfd(fd: endOpen ? end : -1, events: Int16(toChannel.isEmpty ? POLLIN : 0), revents: 0)]
                let directions = libssh2_session_block_directions(session)
                if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { fds[0].events |= Int16(POLLOUT) }
                _ = poll(&fds, 2, 250)
            }
        }
    }

    /// Stops the pump (the inner session is closed) and waits a little for it.
    func finish() {
        pumpState.withLock { $0.stopped = true }
        pumpState.withLock(when: { !$0.running }, deadline: monotonicNanos() + 3_000_000_000) { _, _ in }
    }
}
