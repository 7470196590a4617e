#if canImport(Glibc)
import Glibc
#endif
import CLibSSH2
import Foundation
import SyncSystem
import Wire

/// A byte stream over an SSH exec channel. libssh2 is not safe to call from two threads on one session, so one
/// pump thread (`SSHPump`, shared with other channels) owns the session in non-blocking mode: it moves bytes
/// between the channel and two bounded buffers and sleeps in poll() on the sockets and a wake-up pipe. Readers
/// and writers only touch the buffers.
///
/// Wake-ups are kept few, since on a small machine they cost as much as the copying: readers and writers wait
/// on separate conditions, a writer blocked on a full buffer is woken only once the buffer has drained to half,
/// and the pump is poked through its pipe only when it may be asleep with nothing to send.
public final class SSHChannelStream: ByteStream, PumpedChannel, @unchecked Sendable {  // `lock` guards the buffers and flags; only the pump thread touches the channel
    // Not a `Locked` value: readers and writers wait on conditions of their own (see above), where a `Locked`
    // value would wake both at every change.
    private let owner: SSHSession
    private let channel: OpaquePointer
    private let lock = Mutex()
    /// Signalled when inbound data arrives or the stream ends.
    private let readable = Condition()
    /// Signalled when the outbound buffer drains to `lowWater`, or the stream fails.
    private let writable = Condition()
    /// What came from the channel and waits for `read`, each piece in the memory libssh2 read it into (owned
    /// here, freed once read).
    private var inbound: [(bytes: UnsafeMutableRawBufferPointer, count: Int)] = []
    private var inboundOffset = 0
    private var inboundBytes = 0
    private var outbound: [[UInt8]] = []
    private var outboundOffset = 0
    private var outboundBytes = 0
    private var outputClosed = false
    private var inputEnded = false
    private var failure: SSHError?
    private var finished = false
    private var stderrTail: [UInt8] = []
    /// The remote command's exit status, once the channel closed.
    public private(set) var exitStatus: Int32?
    /// The thread that moves this channel's bytes (with other channels').
    private var pump: SSHPump?
    /// Polls readable while `read` would not wait (`readinessFD`): signalled and drained under `lock`, as that
    /// changes.
    private let readyPipe: WakePipe
    private var readySignalled = false
    private let bufferLimit = 16 << 20
    /// For `drainRate`: writes to libssh2, timed while a backlog waited.
    private var drain = DrainMeter()
    /// Output waiting that makes a backlog: the pump then never waits for the writer, so its pace is the link's.
    private static let backlogBytes = 1 << 20
    private var lowWater: Int { bufferLimit / 2 }
    /// What the pump asks libssh2 for at a time.
    private static let readSize = SSHPump.readSize
    private var stopRequested = false

    /// Whether the session is shut down when the channel ends (else it goes back to blocking mode for reuse).
    private var ownsSession: Bool
    /// Set once the ending pump has decided the session's fate; `adoptSession` comes too late after that.
    private var sessionSettled = false

    /// How long opening this channel took: one round trip to sshd.
    public let roundTripSeconds: Double?

    /// See `ByteStream.progressTimeout`; nil (the default) for a remote command that may be silent for long.
    public var progressTimeout: Double? {
        get {
            lock.withLock { timeout }
        }
        set {
            lock.withLock {
                timeout = newValue
            }
        }
    }
    private var timeout: Double?
    /// When the pump last took in data from the channel, and last handed some to libssh2 (`monotonicNanos`).
    private var lastInbound = monotonicNanos()
    private var lastOutbound = monotonicNanos()
    /// Who is at the other end, for `StalledError`.
    public var peerName: String

    init(session: SSHSession, channel: OpaquePointer, ownsSession: Bool, roundTrip: Double) {
        roundTripSeconds = roundTrip
        owner = session
        peerName = "\(session.settings.hostName):\(session.settings.port)"
        self.channel = channel
        self.ownsSession = ownsSession
        readyPipe = try! WakePipe()
        libssh2_session_set_blocking(session.session, 0)
        do { pump = try SSHPump.take(self) } catch {
            failure = .disconnected(host: session.settings.hostName, reason: "cannot start a thread for the connection: \(error)")
            finished = true
            inputEnded = true
            updateReadinessLocked()
        }
    }

    deinit {
        for piece in inbound { piece.bytes.deallocate() }
    }

    private func wake() { pump?.wake() }

    /// Keeps `readyPipe` in step with whether a read would return at once; with the lock held.
    private func updateReadinessLocked() {
        let ready = inboundBytes > 0 || inputEnded || failure != nil
        if ready && !readySignalled { readyPipe.signal() } else if !ready && readySignalled { readyPipe.drain() }
        readySignalled = ready
    }

    public var readinessFD: Int32? { readyPipe.readFD }

    public func writeWithoutWaiting(_ bytes: UnsafeRawBufferPointer) throws -> Int {
        let (taken, pumpMayBeIdle) = try lock.withLock { () throws -> (Int, Bool) in
            if let failure { throw failure }
            if finished || exitStatus != nil {
                throw SSHError.disconnected(host: owner.settings.hostName, reason: "the remote command ended while data was still being sent to it")
            }
            let n = min(bytes.count, max(bufferLimit - outboundBytes, 0))
            guard n > 0 else { return (0, false) }
            let idle = outbound.isEmpty
            outbound.append(Array(UnsafeRawBufferPointer(rebasing: bytes[0..<n])))
            outboundBytes += n
            return (n, idle)
        }
        if pumpMayBeIdle { wake() }
        return taken
    }

    // MARK: ByteStream

    public var queuedOutputBytes: Int {
        lock.withLock { outboundBytes }
    }

    /// Measured only while at least 1 MiB waited to go (a writer slower than the link leaves it unknown).
    public var drainRate: Double? {
        lock.withLock { drain.rate }
    }

    /// Waits on `condition` (with the lock held) while `waiting` holds, failing with `StalledError` once nothing
    /// moved for `timeout` since `progress()` last changed.
    private func waitLocked(_ condition: Condition, writing: Bool, while waiting: () -> Bool) throws {
        while waiting() {
            guard let timeout else {
                condition.wait(lock)
                continue
            }
            let since = writing ? lastOutbound : lastInbound
            let deadline = since &+ UInt64(timeout * 1e9)
            let now = monotonicNanos()
            if now >= deadline { throw StalledError(peer: peerName, seconds: Double(now - since) / 1e9, writing: writing) }
            condition.wait(lock, until: deadline)
        }
    }

    public func checkProgress() throws {
        try lock.withLock {
            guard let timeout, inboundBytes == 0 else { return }
            let now = monotonicNanos()
            if now &- lastInbound > UInt64(timeout * 1e9) {
                throw StalledError(peer: peerName, seconds: Double(now - lastInbound) / 1e9, writing: false)
            }
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        return try lock.withLock {
            try waitLocked(readable, writing: false) { inboundBytes == 0 && !inputEnded && failure == nil }
            if inboundBytes == 0 {
                if let failure { throw failure }
                return 0
            }
            var copied = 0
            while copied < buffer.count, let first = inbound.first {
                let n = min(buffer.count - copied, first.count - inboundOffset)
                (buffer.baseAddress! + copied).copyMemory(from: first.bytes.baseAddress! + inboundOffset, byteCount: n)
                copied += n
                inboundOffset += n
                if inboundOffset == first.count {
                    inbound.removeFirst()
                    first.bytes.deallocate()
                    inboundOffset = 0
                }
            }
            let wasFull = inboundBytes >= bufferLimit
            inboundBytes -= copied
            updateReadinessLocked()
            if wasFull { wake() }
            return copied
        }
    }

    /// Makes a stream opened with a lent session its owner: the session ends with the stream.
    public func adoptSession() {
        lock.withLock {
            if !sessionSettled { ownsSession = true }
        }
    }

    /// The first `count` bytes of the stream (fewer if it ends first), left in place for `read`.
    public func peek(_ count: Int) throws -> [UInt8] {
        return try lock.withLock {
            try waitLocked(readable, writing: false) { inboundBytes < count && !inputEnded && failure == nil }
            if inboundBytes == 0, let failure { throw failure }
            var out: [UInt8] = []
            var offset = inboundOffset
            for piece in inbound where out.count < count {
                let n = min(count - out.count, piece.count - offset)
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: piece.bytes[offset..<offset + n]))
                offset = 0
            }
            return out
        }
    }

    /// Everything up to the end of the stream, at most `limit` bytes.
    public func readToEnd(limit: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let n = try buffer.withUnsafeMutableBytes { try read(into: $0) }
            if n == 0 { break }
            out.append(contentsOf: buffer[0..<min(n, limit - out.count)])
        }
        return out
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        let pumpMayBeIdle = try lock.withLock {
            try waitLocked(writable, writing: true) { outboundBytes >= bufferLimit && failure == nil && !finished }
            if let failure { throw failure }
            // The remote command ended (the channel closed cleanly): nothing written now would be read.
            if finished || exitStatus != nil {
                throw SSHError.disconnected(host: owner.settings.hostName, reason: "the remote command ended while data was still being sent to it")
            }
            defer {
                outbound.append(Array(bytes))
                outboundBytes += bytes.count
            }
            return outbound.isEmpty
        }
        if pumpMayBeIdle { wake() }
    }

    public func closeWrite() {
        lock.withLock {
            outputClosed = true
        }
        wake()
    }

    /// Waits for the remote command to end; returns its exit status (nil if the connection failed first). With
    /// `seconds`, waits at most that long, then drops the connection (nil).
    public func waitForExit(seconds: Double? = nil) -> Int32? {
        let deadline = seconds.map { monotonicNanos() + UInt64($0 * 1e9) }
        let ended = lock.withLock {
            while !finished {
                guard let deadline else {
                    readable.wait(lock)
                    continue
                }
                if monotonicNanos() >= deadline { return false }
                readable.wait(lock, until: deadline)
            }
            return true
        }
        if !ended { abort() }
        return lock.withLock {
            while !finished { readable.wait(lock) }
            return exitStatus
        }
    }

    /// The connection failure that ended the stream, if any.
    public var error: SSHError? {
        lock.withLock { failure }
    }

    /// The last lines the remote command wrote to stderr.
    public var stderrText: String {
        return lock.withLock {
            // The remote's words reach a terminal: control characters escaped, lines kept.
            return String(decoding: stderrTail, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
                .map { displayText(String($0)) }.joined(separator: "\n")
        }
    }

    /// Drops the connection now.
    public func abort() {
        lock.withLock {
            stopRequested = true
        }
        wake()
    }

    // MARK: pump

    // The pump thread's alone, from one turn to the next.
    private var sentEOF = false
    private var nextKeepalive: UInt64 = 0
    /// Once the remote closed its side and all it sent was taken in: when closing gives up waiting for sshd (5 s),
    /// and whether this side's close went out.
    private var closing: (deadline: UInt64, sent: Bool)?

    /// The poll events libssh2 waits for on this session.
    private func blockedEvents() -> Int16 {
        let directions = libssh2_session_block_directions(owner.session)
        var events: Int16 = 0
        if directions & LIBSSH2_SESSION_BLOCK_INBOUND != 0 { events |= Int16(POLLIN) }
        if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events |= Int16(POLLOUT) }
        return events == 0 ? Int16(POLLIN) : events
    }

    /// One turn: moves what can move without waiting. Called only by this channel's pump thread.
    func turn(_ scratch: SSHPump.Scratch) -> PumpTurn {
        let session = owner.session
        let host = owner.settings.hostName
        if let closing { return closeChannel(closing) }
        // Every read of the channel, stderr's too, asks for the same length. libssh2 (1.10) sizes the window
        // adjustment a read sends by the length asked for, and when that send would block (as it does during a
        // key re-exchange) it sends the adjustment it built the first time on the next read but credits its own
        // window with the one the next read computed. A stdout read of 256 KiB cut off that way and finished by a
        // stderr read of 64 KiB left libssh2 believing in a window 192 KiB smaller than sshd's; once sshd used
        // the difference, libssh2 dropped the data beyond its window without a word, and a pull got a chunk whose
        // bytes did not match its id (a 2 MiB window and `RekeyLimit 1M`, about one pull in five on a busy
        // machine). With one length the adjustment sent and the one credited are always the same.
        /// Reads what stderr has (shown on this side's stderr, its tail kept); libssh2's count or error.
        func readStderr() -> Int {
            let e = scratch.readBuffer.withUnsafeMutableBytes { raw in
                syncd_ssh_channel_read_stderr(channel, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
            }
            if e > 0 {
                FileHandle.standardError.write(Data(scratch.readBuffer[0..<e]))
                lock.withLock {
                    stderrTail.append(contentsOf: scratch.readBuffer[0..<e])
                    if stderrTail.count > 8192 { stderrTail.removeFirst(stderrTail.count - 4096) }
                }
            }
            return e
        }
        var progressed = false
        let (stop, pendingFirst, pendingOffset, closeNow, roomToRead) = lock.withLock {
            (stopRequested, outbound.first, outboundOffset, outputClosed && outbound.isEmpty && !sentEOF, inboundBytes < bufferLimit)
        }
        if stop {
            fail(.disconnected(host: host, reason: "closed by syncd"))
            return settle()
        }

        // Outbound: one buffer at a time.
        if let chunk = pendingFirst {
            let n = chunk.withUnsafeBytes { raw in
                syncd_ssh_channel_write(channel, raw.baseAddress!.assumingMemoryBound(to: CChar.self) + pendingOffset,
                                        chunk.count - pendingOffset)
            }
            if n > 0 {
                progressed = true
                lock.withLock {
                    lastOutbound = monotonicNanos()
                    outboundOffset += n
                    let before = outboundBytes
                    outboundBytes -= n
                    drain.wrote(n, backlogged: before >= Self.backlogBytes)
                    if outboundOffset == chunk.count {
                        outbound.removeFirst()
                        outboundOffset = 0
                    }
                    if before > lowWater && outboundBytes <= lowWater { writable.broadcast() }
                }
            } else if n < 0 && n != LIBSSH2_ERROR_EAGAIN {
                fail(.disconnected(host: host, reason: owner.lastError()))
                return settle()
            }
        } else if closeNow {
            let rc = syncd_ssh_channel_send_eof(channel)
            if rc == 0 { sentEOF = true; progressed = true } else if rc != LIBSSH2_ERROR_EAGAIN {
                fail(.disconnected(host: host, reason: owner.lastError()))
                return settle()
            }
        }

        // Inbound, stderr first. Every libssh2 read first drains the socket into the session's packet list,
        // whatever stream the data is for, and the poll sees only the socket. So the stdout read comes last:
        // once it says EAGAIN, nothing for stdout waits inside libssh2. (The other way round, stdout data that
        // came in between the two reads sat in the list while the pump slept until the next keepalive: a pull
        // once waited 15 s for its last chunks.)
        let e = readStderr()
        if e > 0 { progressed = true } else if e < 0 && e != LIBSSH2_ERROR_EAGAIN {
            // Seen even while stdout is not read (its buffer full): a socket that failed would poll ready for ever.
            fail(.disconnected(host: host, reason: owner.lastError()))
            return settle()
        }
        var inboundEmpty = false
        if roomToRead {
            // Read into memory that is queued as it is (a bulk transfer is not copied again here); a short
            // read is copied out, so a trickle does not hold 256 KiB per piece, and the memory kept for the
            // next read.
            let piece = scratch.spare ?? .allocate(byteCount: Self.readSize, alignment: 16)
            let n = syncd_ssh_channel_read(channel, piece.baseAddress!.assumingMemoryBound(to: CChar.self), piece.count)
            scratch.spare = n >= Self.readSize / 4 ? nil : piece  // else the piece itself is queued below
            if n > 0 {
                progressed = true
                var queued = piece
                if n < Self.readSize / 4 {
                    queued = .allocate(byteCount: n, alignment: 16)
                    queued.copyMemory(from: UnsafeRawBufferPointer(rebasing: piece[0..<n]))
                }
                lock.withLock {
                    lastInbound = monotonicNanos()
                    inbound.append((queued, n))
                    inboundBytes += n
                    updateReadinessLocked()
                    readable.broadcast()
                }
            } else if n < 0 && n != LIBSSH2_ERROR_EAGAIN {
                fail(.disconnected(host: host, reason: owner.lastError()))
                return settle()
            } else {
                inboundEmpty = true
            }
        }

        // The remote closed its side and everything it sent has been taken in: the channel closes (a round trip to
        // sshd, waited for without blocking the pump), and then its exit status is known.
        if inboundEmpty && e <= 0 && libssh2_channel_eof(channel) != 0 {
            while readStderr() > 0 {}
            let closing = (deadline: monotonicNanos() + 5_000_000_000, sent: false)
            self.closing = closing
            return closeChannel(closing)
        }

        let now = monotonicNanos()
        if now >= nextKeepalive {
            // The keepalives sshd answers keep data coming on a live link; none for the count of them means a
            // link that stays open and carries nothing (OpenSSH's ServerAliveCountMax).
            if let silent = owner.silentSeconds(), silent >= Double(owner.keepalive.interval * owner.keepalive.countMax) {
                fail(.stalled(host: host, seconds: Int(silent), interval: owner.keepalive.interval, countMax: owner.keepalive.countMax))
                return settle()
            }
            var next: Int32 = 0
            if libssh2_keepalive_send(session, &next) == 0 { nextKeepalive = now + UInt64(max(next, 1)) * 1_000_000_000 }
        }
        if progressed { return .progressed }
        // Idle, the channel waits until the next keepalive is due.
        let until = min(max(nextKeepalive, now + 50_000_000), now + UInt64(owner.keepalive.interval) * 1_000_000_000)
        return .wait(pollfd(fd: owner.socket, events: blockedEvents(), revents: 0), nil, until: until)
    }

    /// Closes a channel the remote ended: this side's close, then sshd's, each a non-blocking call retried on
    /// later turns until `deadline`; then the exit status, and the channel is settled.
    private func closeChannel(_ state: (deadline: UInt64, sent: Bool)) -> PumpTurn {
        if lock.withLock({ stopRequested }) {
            fail(.disconnected(host: owner.settings.hostName, reason: "closed by syncd"))
            return settle()
        }
        var state = state
        let late = monotonicNanos() >= state.deadline
        if !state.sent {
            let rc = libssh2_channel_close(channel)
            if rc == LIBSSH2_ERROR_EAGAIN && !late {
                closing = state
                return .wait(pollfd(fd: owner.socket, events: blockedEvents(), revents: 0), nil, until: state.deadline)
            }
            state.sent = true
            closing = state
        }
        if libssh2_channel_wait_closed(channel) == LIBSSH2_ERROR_EAGAIN && !late {
            return .wait(pollfd(fd: owner.socket, events: blockedEvents(), revents: 0), nil, until: state.deadline)
        }
        lock.withLock {
            exitStatus = libssh2_channel_get_exit_status(channel)
            inputEnded = true
            updateReadinessLocked()
            readable.broadcast()
        }
        return settle()
    }

    /// The channel's end: freed, and its session shut down (or given back, in blocking mode, to whoever lent it);
    /// then readers and writers learn it finished.
    private func settle() -> PumpTurn {
        libssh2_channel_free(channel)
        let owns = lock.withLock {
            sessionSettled = true
            return ownsSession
        }
        if owns {
            // The goodbye may wait on the network, and a ProxyCommand's exit on the process: not on a shared pump.
            SSHPump.teardown { [owner] in owner.shutdown() }
        } else {
            libssh2_session_set_blocking(owner.session, 1)
            owner.handedOff = false
        }
        lock.withLock {
            finished = true
            inputEnded = true
            updateReadinessLocked()
            readable.broadcast()
            writable.broadcast()
        }
        return .finished
    }

    private func fail(_ error: SSHError) {
        lock.withLock {
            if failure == nil { failure = error }
            updateReadinessLocked()
            readable.broadcast()
            writable.broadcast()
        }
    }
}


/// What a turn of the pump left for a channel.
enum PumpTurn {
    /// Bytes moved: another turn at once.
    case progressed
    /// Nothing to do until a descriptor is ready (the session's socket, and another the channel copies from), the
    /// channel is poked, or `until` (a keepalive, a deadline).
    case wait(pollfd, pollfd?, until: UInt64)
    /// The channel ended and is settled: the pump lets it go.
    case finished
}

/// Something an `SSHPump` moves bytes for, a turn at a time, without ever waiting: an exec channel's stream, or
/// a ProxyJump's forwarding channel.
protocol PumpedChannel: AnyObject {
    /// One turn; called only by the channel's pump thread.
    func turn(_ scratch: SSHPump.Scratch) -> PumpTurn
}

/// The threads that move SSH channels' bytes: a few for the whole process (one a core, eight at most), each serving
/// the channels given to it from one poll loop, so that a hundred hosts' links cost no thread each. A new channel
/// goes to the pump with the fewest; a pump's thread runs while it has channels (and is joined at exit, see
/// `LibraryThreads`).
final class SSHPump: @unchecked Sendable {  // `state` is shared under its lock; `run` is the thread's
    /// What a pump's turns share: the memory reads go into.
    final class Scratch {
        var readBuffer = [UInt8](repeating: 0, count: SSHPump.readSize)
        var spare: UnsafeMutableRawBufferPointer?
        deinit { spare?.deallocate() }
    }
    static let readSize = 256 * 1024

    private static let pumps: [SSHPump] = (0..<count).compactMap { _ in try? SSHPump() }
    /// One a core, eight at most; `SYNCD_SSH_PUMPS` (1 to 8) sets it (tests run every channel on one, as a
    /// one-core machine would).
    private static var count: Int {
        if let set = ProcessInfo.processInfo.environment["SYNCD_SSH_PUMPS"].flatMap(Int.init), (1...8).contains(set) { return set }
        return min(max(ProcessInfo.processInfo.activeProcessorCount, 1), 8)
    }
    private let wakePipe: WakePipe
    private let state = Locked<(channels: [PumpedChannel], running: Bool)>(([], false))

    private init() throws { wakePipe = try WakePipe() }

    /// Gives `channel` to the pump with the fewest channels, and returns that pump.
    static func take(_ channel: PumpedChannel) throws -> SSHPump {
        guard let pump = pumps.min(by: { $0.state.current.channels.count < $1.state.current.channels.count }) else {
            throw SSHError.disconnected(host: "", reason: "no wake-up pipe for the SSH pump")
        }
        try pump.add(channel)
        return pump
    }

    private func add(_ channel: PumpedChannel) throws {
        let start = state.withLock { state in
            state.channels.append(channel)
            defer { state.running = true }
            return !state.running
        }
        if start {
            do { try LibraryThreads.start { [self] in run() } } catch {
                state.withLock { state in
                    state.channels.removeAll { $0 === channel }
                    state.running = !state.channels.isEmpty
                }
                throw error
            }
        }
        wake()
    }

    /// Pokes the thread out of its poll.
    func wake() { wakePipe.signal() }

    /// What may block once a channel ended (a session's goodbye, a proxy's exit), run off the pumps in order, on a
    /// thread of its own that runs while there is any (and is joined at exit, see `LibraryThreads`).
    private static let teardowns = Locked<(work: [() -> Void], running: Bool)>(([], false))

    static func teardown(_ body: @escaping () -> Void) {
        let start = teardowns.withLock { t in
            t.work.append(body)
            defer { t.running = true }
            return !t.running
        }
        guard start else { return }
        do { try LibraryThreads.start { runTeardowns() } } catch { runTeardowns() }
    }

    private static func runTeardowns() {
        while let next = teardowns.withLock({ t -> (() -> Void)? in
            if t.work.isEmpty {
                t.running = false
                return nil
            }
            return t.work.removeFirst()
        }) { next() }
    }

    private func run() {
        let scratch = Scratch()
        while true {
            let channels = state.withLock { state in
                if state.channels.isEmpty { state.running = false }
                return state.channels
            }
            if channels.isEmpty { return }
            var progressed = false
            var ended: [PumpedChannel] = []
            var fds = [pollfd(fd: wakePipe.readFD, events: Int16(POLLIN), revents: 0)]
            var until = UInt64.max
            for channel in channels {
                switch channel.turn(scratch) {
                case .progressed: progressed = true
                case .finished: ended.append(channel)
                case .wait(let first, let second, let deadline):
                    fds.append(first)
                    if let second { fds.append(second) }
                    until = min(until, deadline)
                }
            }
            if !ended.isEmpty {
                state.withLock { state in state.channels.removeAll { c in ended.contains { $0 === c } } }
                continue
            }
            if progressed { continue }
            let now = monotonicNanos()
            let wait = until == .max ? 1000 : Int32(min((until > now ? until - now : 0) / 1_000_000, 60_000))
            _ = poll(&fds, nfds_t(fds.count), wait)
            wakePipe.drain()
        }
    }
}
