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
/// and port, pumped to a socket pair by a shared pump thread (`SSHPump`; libssh2 sessions are not shared between
/// threads, and each hop has a session of its own). The jump session's host key was checked like any other.
final class JumpTransport: ProxyTransport, PumpedChannel, @unchecked Sendable {  // the pump thread owns `jump`, `channel` and the copy's state once started
    private let jump: SSHSession
    private let channel: OpaquePointer
    private let end: Int32
    /// Whether `finish` asked the pump to stop, and whether it still runs.
    private let pumpState = Locked<(stopped: Bool, running: Bool)>((false, true))
    private var pump: SSHPump?
    // The copy's state, from one turn to the next.
    private var toChannel: [UInt8] = []
    private var toEnd: [UInt8] = []
    private var endOpen = true

    private init(jump: SSHSession, channel: OpaquePointer, end: Int32) {
        self.jump = jump
        self.channel = channel
        self.end = end
    }

    /// Opens the channel to `host`:`port` through `jump`, and gives it to a pump.
    static func start(through jump: SSHSession, to host: String, port: Int) throws -> (fd: Int32, transport: JumpTransport) {
        guard let channel = libssh2_channel_direct_tcpip_ex(jump.session, host, Int32(port), "127.0.0.1", 22) else {
            throw SSHError.connect(host: host, port: port, reason: "the jump host \(jump.settings.hostName) could not open a channel to it: \(jump.lastError())")
        }
        let (mine, theirs) = try makeSocketPair()
        _ = fcntl(theirs, F_SETFL, fcntl(theirs, F_GETFL) | O_NONBLOCK)
        let transport = JumpTransport(jump: jump, channel: channel, end: theirs)
        jump.handedOff = true
        libssh2_session_set_blocking(jump.session, 0)
        do {
            transport.pump = try SSHPump.take(transport)
        } catch {
            libssh2_session_set_blocking(jump.session, 1)
            close(mine)
            close(theirs)
            libssh2_channel_free(channel)
            jump.handedOff = false
            throw SSHError.connect(host: host, port: port, reason: "cannot start the jump host's pump: \(error)")
        }
        return (mine, transport)
    }

    /// One turn of the copy both ways, until either side ends, with the jump session's keepalives.
    func turn(_ scratch: SSHPump.Scratch) -> PumpTurn {
        if pumpState.withLock({ $0.stopped }) { return settle() }
        let session = jump.session
        var progressed = false
        // Channel to socket pair. Our end is non-blocking: what the pair does not take now waits for a later turn
        // (the session reading the pair's other end may be pumped by this very thread), and the channel is not
        // read meanwhile.
        var n = 0
        if toEnd.isEmpty {
            n = scratch.readBuffer.withUnsafeMutableBytes {
                libssh2_channel_read_ex(channel, 0, $0.baseAddress!.assumingMemoryBound(to: CChar.self), min($0.count, 64 << 10))
            }
            if n > 0 {
                toEnd = Array(scratch.readBuffer[0..<n])
                progressed = true
            } else if n < 0 && Int32(n) != LIBSSH2_ERROR_EAGAIN {
                return settle()
            }
        }
        if !toEnd.isEmpty {
            let w = toEnd.withUnsafeBytes { write(end, $0.baseAddress!, $0.count) }
            if w > 0 {
                toEnd.removeFirst(w)
                progressed = true
            } else if !(w < 0 && (errno == EAGAIN || errno == EINTR)) {
                return settle()
            }
        }
        if libssh2_channel_eof(channel) != 0 && n <= 0 && toEnd.isEmpty { shutdown(end, Int32(SHUT_WR)) }
        // Socket pair to channel.
        if endOpen && toChannel.isEmpty {
            let r = scratch.readBuffer.withUnsafeMutableBytes { recv(end, $0.baseAddress!, min($0.count, 64 << 10), Int32(MSG_DONTWAIT)) }
            if r > 0 { toChannel = Array(scratch.readBuffer[0..<r]); progressed = true }
            else if r == 0 { endOpen = false; libssh2_channel_send_eof(channel) }
            else if errno != EAGAIN && errno != EINTR { return settle() }
        }
        if !toChannel.isEmpty {
            let w = toChannel.withUnsafeBytes { libssh2_channel_write_ex(channel, 0, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
            if w > 0 { toChannel.removeFirst(w); progressed = true }
            else if w < 0 && Int32(w) != LIBSSH2_ERROR_EAGAIN { return settle() }
        }
        if !endOpen && toChannel.isEmpty && toEnd.isEmpty && libssh2_channel_eof(channel) != 0 { return settle() }
        var next: Int32 = 0
        libssh2_keepalive_send(session, &next)
        if progressed { return .progressed }
        let now = monotonicNanos()
        // Wait for either side: the jump host's socket (as libssh2 needs it) or our end of the pair; once our end
        // said EOF it is left out (it would report POLLHUP for ever, and spin).
        var socket = pollfd(fd: jump.socket, events: Int16(POLLIN), revents: 0)
        if libssh2_session_block_directions(session) & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { socket.events |= Int16(POLLOUT) }
        var events: Int16 = endOpen && toChannel.isEmpty ? Int16(POLLIN) : 0
        if !toEnd.isEmpty { events |= Int16(POLLOUT) }
        let ours = events != 0 ? pollfd(fd: end, events: events, revents: 0) : nil
        return .wait(socket, ours, until: now + UInt64(max(next, 1)) * 1_000_000_000)
    }

    /// The copy's end: the pair's end closed; the channel closed and the jump session shut down off the pumps
    /// (each may wait on the jump host a moment).
    private func settle() -> PumpTurn {
        close(end)
        pumpState.withLock { $0.running = false }
        SSHPump.teardown { [jump, channel] in
            libssh2_session_set_blocking(jump.session, 1)
            libssh2_session_set_timeout(jump.session, 2000)
            libssh2_channel_close(channel)
            libssh2_channel_free(channel)
            jump.shutdown()
        }
        return .finished
    }

    /// Stops the copy (the inner session is closed): its next turn ends it. Not waited for: this may run on the
    /// teardown of the session this hop carries, and the hop's pump goes on by itself.
    func finish() {
        pumpState.withLock { $0.stopped = true }
        pump?.wake()
    }
}
