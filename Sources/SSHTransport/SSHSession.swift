#if canImport(Glibc)
import Glibc
#endif
import CLibSSH2
import CSSHCipher
import Foundation
import SyncConfig
import SyncSystem

/// The libssh2 version string, for `--version`.
public var libssh2Version: String { String(cString: syncd_ssh_version()) }

private let libraryReady: Bool = { libssh2_init(0) == 0 }()

/// How to authenticate and verify, beyond what ssh_config says.
public struct SSHOptions: Sendable {
    /// syncd.yaml `identity:`, tried first after ssh-agent.
    public var identity: String?
    /// syncd.yaml `known_hosts:`; overrides UserKnownHostsFile.
    public var knownHosts: String?
    /// Home directory for `~` and defaults.
    public var home: String

    public init(identity: String? = nil, knownHosts: String? = nil, home: String = NSHomeDirectory()) {
        self.identity = identity
        self.knownHosts = knownHosts
        self.home = home
    }
}

/// One authenticated SSH connection. Used in blocking mode for short commands; `openStream` hands the session to
/// a pump thread for the long-running agent channel, after which the session belongs to that stream.
public final class SSHSession {
    let session: OpaquePointer
    let socket: Int32
    public let settings: SSHHostSettings
    public let user: String
    /// True while a stream owns the session (it shuts the session down when it ends).
    var handedOff = false

    /// Keepalives every `interval` seconds; the connection is taken for stalled once nothing came for `countMax`
    /// of them (ssh_config's ServerAliveInterval and ServerAliveCountMax; 15 and 4 unless set).
    public var keepalive: (interval: Int, countMax: Int) {
        (settings.serverAliveIntervalSeconds.flatMap { $0 > 0 ? $0 : nil } ?? 15, settings.serverAliveCountMax ?? 4)
    }

    /// Seconds since data last came in on the connection (the kernel's count), nil where it cannot say.
    func silentSeconds() -> Double? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(socket, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0 else { return nil }
        return Double(info.tcpi_last_data_recv) / 1000
    }

    /// Connects, verifies the host key against known_hosts, and authenticates.
    /// The handshake and authentication wait at most ConnectTimeout (30 s unless set), or `stallSeconds` (the
    /// session's `timeout:`) when that is shorter.
    public convenience init(settings: SSHHostSettings, options: SSHOptions, stallSeconds: Double? = nil) throws {
        precondition(libraryReady, "libssh2_init failed")
        let timeout = Self.timeout(settings, stallSeconds)
        let transport: (fd: Int32, proxy: ProxyTransport?)
        if let command = settings.proxyCommand {
            // The user's ProxyCommand carries the connection: this side never reaches the host by itself.
            let (fd, proxy) = try ProxyCommandTransport.start(command, host: settings.hostName)
            transport = (fd, proxy)
        } else if let first = settings.jumps.first {
            // ProxyJump: each hop through a channel of the one before, every hop's host key checked.
            var through = try SSHSession(settings: first, options: options, stallSeconds: stallSeconds)
            for hop in settings.jumps.dropFirst() {
                let (fd, proxy) = try JumpTransport.start(through: through, to: hop.hostName, port: hop.port)
                through = try SSHSession(settings: hop, options: options, stallSeconds: stallSeconds, transport: (fd, proxy))
            }
            let (fd, proxy) = try JumpTransport.start(through: through, to: settings.hostName, port: settings.port)
            transport = (fd, proxy)
        } else {
            transport = (try Self.connect(host: settings.hostName, port: settings.port, timeoutSeconds: timeout,
                                          family: settings.addressFamily, configFile: settings.configFile), nil)
            Trace.mark("ssh: TCP connected")
        }
        try self.init(settings: settings, options: options, stallSeconds: stallSeconds, transport: transport)
    }

    static func timeout(_ settings: SSHHostSettings, _ stallSeconds: Double?) -> Int {
        min(settings.connectTimeoutSeconds ?? 30, stallSeconds.map { max(Int($0.rounded(.up)), 1) } ?? Int.max)
    }

    /// A session over `transport`: a connected socket, and what carries it when it is not a TCP connection.
    init(settings: SSHHostSettings, options: SSHOptions, stallSeconds: Double?, transport: (fd: Int32, proxy: ProxyTransport?)) throws {
        self.settings = settings
        user = settings.user ?? ProcessInfo.processInfo.environment["USER"] ?? String(cString: getpwuid(getuid()).pointee.pw_name)
        let timeout = Self.timeout(settings, stallSeconds)
        socket = transport.fd
        proxy = transport.proxy
        socketKey = LibraryThreads.register(socket: socket)
        guard let s = syncd_ssh_session_init() else {
            LibraryThreads.unregister(socket: socketKey)
            close(socket)
            proxy?.finish()
            throw SSHError.handshake(host: settings.hostName, reason: "libssh2 could not allocate a session")
        }
        session = s
        libssh2_session_set_blocking(session, 1)
        libssh2_session_set_timeout(session, timeout * 1000)
        do {
            let rc = libssh2_session_handshake(session, socket)
            if rc != 0 {
                // libssh2's codes in words: what a person can act on.
                switch rc {
                case LIBSSH2_ERROR_TIMEOUT: throw SSHError.noGreeting(host: settings.hostName, port: settings.port, seconds: timeout)
                case LIBSSH2_ERROR_BANNER_RECV, LIBSSH2_ERROR_SOCKET_DISCONNECT, LIBSSH2_ERROR_SOCKET_RECV, LIBSSH2_ERROR_KEX_FAILURE,
                     LIBSSH2_ERROR_PROTO:
                    throw SSHError.notSSH(host: settings.hostName, port: settings.port)
                default: throw SSHError.handshake(host: settings.hostName, reason: lastError())
                }
            }
            Trace.mark("ssh: key exchange done (\(negotiatedMethods), CTR keystream batched: \(syncd_cipher_batching() != 0 ? "yes" : "no"))")
            try verifyHostKey(options: options)
            try authenticate(options: options)
            Trace.mark("ssh: authenticated")
            // Blocking calls made later (opening a channel, an agent upload, a short command) fail once nothing
            // moved for the session's timeout.
            libssh2_session_set_timeout(session, (stallSeconds.map { max(Int($0.rounded(.up)), 1) } ?? max(timeout, 60)) * 1000)
            libssh2_keepalive_config(session, 1, UInt32(keepalive.interval))
        } catch {
            // Every stored property is set, so deinit runs and closes the session and socket.
            throw error
        }
    }

    deinit {
        if !handedOff { shutdown() }
    }

    func shutdown() {
        libssh2_session_set_blocking(session, 1)
        // The goodbye is a courtesy: over a link that stalled it is not waited for long.
        libssh2_session_set_timeout(session, 300)
        libssh2_session_disconnect_ex(session, 11, "syncd: done", "")
        libssh2_session_free(session)
        LibraryThreads.unregister(socket: socketKey)
        close(socket)
        proxy?.finish()
    }

    /// What carries the connection when it is not a TCP connection of its own (ProxyCommand, ProxyJump).
    private let proxy: ProxyTransport?

    /// The socket's key in `LibraryThreads`, which shuts it down if the process exits while it is open.
    private let socketKey: UInt64

    /// The negotiated cipher and MAC, client to server ("aes128-ctr/hmac-sha2-256").
    public var negotiatedMethods: String {
        let cipher = libssh2_session_methods(session, LIBSSH2_METHOD_CRYPT_CS).map { String(cString: $0) } ?? "?"
        let mac = libssh2_session_methods(session, LIBSSH2_METHOD_MAC_CS).map { String(cString: $0) } ?? "?"
        return "\(cipher)/\(mac)"
    }

    /// libssh2's text for the last error on this session.
    func lastError() -> String {
        var message: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        let code = libssh2_session_last_error(session, &message, &length, 0)
        let text = message.map { String(cString: $0) } ?? "unknown error"
        return "\(text) (libssh2 \(code))"
    }

    // MARK: TCP

    /// The receive window of a stream: what sshd may send before it hears back, sized to carry 400 MB/s over the
    /// round trip, between 2 MiB (OpenSSH's own window) and 16 MiB. A window is also what sshd holds in memory
    /// when this side reads slower than the remote command writes, as on loopback where the client is the
    /// slower end: there a 16 MiB window made sshd grow, fault in and zero its buffers, and spend about twice
    /// the CPU of the 2 MiB one on a pull. A long link (50 ms and more) keeps the 16 MiB it needs. Unknown
    /// round trip: 16 MiB.
    public static func receiveWindow(roundTripSeconds: Double?) -> UInt32 {
        let least = 2 << 20, most = 16 << 20
        guard let rtt = roundTripSeconds, rtt.isFinite, rtt >= 0 else { return UInt32(most) }
        return UInt32(min(max(rtt * 400e6, Double(least)), Double(most)))
    }

    /// The kernel's smoothed round-trip time of the connection (several samples by the time the session is
    /// authenticated); nil where it cannot say. A TCP proxy in the way (the bench's wanem) hides the hops beyond it.
    public func tcpRoundTripSeconds() -> Double? {
        var info = tcp_info()
        var length = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(socket, Int32(IPPROTO_TCP), TCP_INFO, &info, &length) == 0, info.tcpi_rtt > 0 else { return nil }
        return Double(info.tcpi_rtt) / 1e6
    }

    static func connect(host: String, port: Int, timeoutSeconds: Int, family: String? = nil, configFile: String? = nil) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = family == "inet" ? AF_INET : family == "inet6" ? AF_INET6 : AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw SSHError.resolve(host: host, reason: String(cString: gai_strerror(rc)), configFile: configFile)
        }
        defer { freeaddrinfo(list) }
        var lastError: SSHError = .connect(host: host, port: port, reason: "no usable address")
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let ai = entry {
            entry = ai.pointee.ai_next
            let fd = Glibc.socket(ai.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { continue }
            let flags = fcntl(fd, F_GETFL)
            _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
            var result = Glibc.connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen)
            if result != 0 && errno == EINPROGRESS {
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let ready = poll(&pfd, 1, Int32(timeoutSeconds * 1000))
                if ready == 0 {
                    close(fd)
                    lastError = .timeout(host: host, port: port, seconds: timeoutSeconds)
                    continue
                }
                var soError: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
                result = soError == 0 ? 0 : -1
                errno = soError
            }
            if result != 0 {
                let code = errno
                close(fd)
                lastError = code == ECONNREFUSED ? .connectionRefused(host: host, port: port)
                    : .connect(host: host, port: port, reason: String(cString: strerror(code)))
                continue
            }
            _ = fcntl(fd, F_SETFL, flags)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            // A peer gone without a word (a laptop that slept, a dropped network) fails the connection once sent
            // data (keepalives included) stays unacknowledged for a minute, instead of after the kernel's 15.
            var unacknowledgedMillis: UInt32 = 60_000
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, &unacknowledgedMillis, socklen_t(MemoryLayout<UInt32>.size))
            var size: Int32 = 4 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            return fd
        }
        throw lastError
    }

    // MARK: host key

    /// The name known_hosts records for this host: `host`, or `[host]:port` off port 22.
    var knownHostsName: String { settings.port == 22 ? settings.hostName : "[\(settings.hostName)]:\(settings.port)" }

    private func verifyHostKey(options: SSHOptions) throws {
        var keyLength = 0
        var keyType: Int32 = 0
        guard let key = libssh2_session_hostkey(session, &keyLength, &keyType) else {
            throw SSHError.handshake(host: settings.hostName, reason: "the server sent no host key")
        }
        let fingerprint = hostKeyFingerprint()
        let files = options.knownHosts.map { [expandTilde($0, home: options.home)] }
            ?? (settings.userKnownHostsFiles.isEmpty ? [options.home + "/.ssh/known_hosts"] : settings.userKnownHostsFiles.map { expandTilde($0, home: options.home) })
        guard let hosts = libssh2_knownhost_init(session) else {
            throw SSHError.handshake(host: settings.hostName, reason: "libssh2 could not allocate a known-hosts list")
        }
        defer { libssh2_knownhost_free(hosts) }
        for file in files where FileManager.default.fileExists(atPath: file) {
            if libssh2_knownhost_readfile(hosts, file, LIBSSH2_KNOWNHOST_FILE_OPENSSH) < 0 {
                throw SSHError.handshake(host: settings.hostName, reason: "cannot read known hosts file \(file): \(lastError())")
            }
        }
        let typeBits = Self.knownHostKeyBits(keyType)
        var found: UnsafeMutablePointer<libssh2_knownhost>?
        let check = libssh2_knownhost_checkp(hosts, settings.hostName, Int32(settings.port), key, keyLength,
                                             LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | typeBits, &found)
        switch check {
        case LIBSSH2_KNOWNHOST_CHECK_MATCH:
            return
        case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
            let recorded = found.flatMap { $0.pointee.key.map { String(cString: $0) } }
            var where_ = files.first ?? "known_hosts"
            var line: Int?
            if let recorded {
                for file in files {
                    guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
                    for (i, l) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where l.contains(recorded) {
                        where_ = file
                        line = i + 1
                        break
                    }
                    if line != nil { break }
                }
            }
            throw SSHError.changedHostKey(host: knownHostsName, fingerprint: fingerprint, file: where_, line: line)
        case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
            let policy = settings.strictHostKeyChecking
            guard policy == "accept-new" || policy == "no" || policy == "off" else {
                throw SSHError.unknownHostKey(host: knownHostsName, fingerprint: fingerprint, knownHosts: files.first ?? "~/.ssh/known_hosts",
                                              hostName: settings.hostName, port: settings.port)
            }
            var added: UnsafeMutablePointer<libssh2_knownhost>?
            guard libssh2_knownhost_addc(hosts, knownHostsName, nil, key, keyLength, nil, 0,
                                         LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | typeBits, &added) == 0,
                  let added else {
                throw SSHError.handshake(host: settings.hostName, reason: "cannot record the new host key: \(lastError())")
            }
            var buffer = [CChar](repeating: 0, count: 8192)
            var written = 0
            guard libssh2_knownhost_writeline(hosts, added, &buffer, buffer.count, &written, LIBSSH2_KNOWNHOST_FILE_OPENSSH) == 0 else {
                throw SSHError.handshake(host: settings.hostName, reason: "cannot format the new host key: \(lastError())")
            }
            let file = files.first ?? options.home + "/.ssh/known_hosts"
            try appendLine(String(nulTerminated: buffer), to: file)
            printError("syncd: added host key for \(knownHostsName) (\(fingerprint)) to \(file)")
        default:
            throw SSHError.handshake(host: settings.hostName, reason: "host key check failed: \(lastError())")
        }
    }

    private func appendLine(_ line: String, to file: String) throws {
        let dir = (file as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SSHError.handshake(host: settings.hostName, reason: "cannot write \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var text = line
        if !text.hasSuffix("\n") { text += "\n" }
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }

    /// `SHA256:<base64>` like ssh prints.
    func hostKeyFingerprint() -> String {
        guard let raw = libssh2_hostkey_hash(session, LIBSSH2_HOSTKEY_HASH_SHA256) else { return "unknown fingerprint" }
        let bytes = UnsafeRawBufferPointer(start: raw, count: 32)
        var b64 = Data(bytes).base64EncodedString()
        while b64.hasSuffix("=") { b64.removeLast() }
        return "SHA256:" + b64
    }

    static func knownHostKeyBits(_ type: Int32) -> Int32 {
        switch type {
        case LIBSSH2_HOSTKEY_TYPE_RSA: return LIBSSH2_KNOWNHOST_KEY_SSHRSA
        case LIBSSH2_HOSTKEY_TYPE_DSS: return LIBSSH2_KNOWNHOST_KEY_SSHDSS
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521
        case LIBSSH2_HOSTKEY_TYPE_ED25519: return LIBSSH2_KNOWNHOST_KEY_ED25519
        default: return LIBSSH2_KNOWNHOST_KEY_UNKNOWN
        }
    }

    // MARK: authentication

    private func authenticate(options: SSHOptions) throws {
        var tried: [String] = []
        var candidates: [String] = []
        if let identity = options.identity { candidates.append(expandTilde(identity, home: options.home)) }
        candidates += settings.identityFiles.map { expandTilde($0, home: options.home) }
        if candidates.isEmpty {
            candidates = ["id_ed25519", "id_ecdsa", "id_rsa"].map { options.home + "/.ssh/" + $0 }
                .filter { FileManager.default.fileExists(atPath: $0) }
        }
        // No userauth_list ("none") first: the first real attempt makes the service request, one round trip less.
        // With IdentitiesOnly, the agent may offer only keys that are one of the identity files.
        if let socketPath = ProcessInfo.processInfo.environment["SSH_AUTH_SOCK"], !socketPath.isEmpty {
            if tryAgent(&tried, only: settings.identitiesOnly ? Set(candidates.compactMap(Self.publicKeyBlob)) : nil) { return }
        }
        var seen: Set<String> = []
        for key in candidates where seen.insert(key).inserted {
            guard FileManager.default.fileExists(atPath: key) else {
                tried.append("\(key) (missing)")
                continue
            }
            var passphrase: String?
            if PrivateKeyFile.isEncrypted(path: key) {
                passphrase = try Passphrase.ask(for: key)
            }
            let publicKey = FileManager.default.fileExists(atPath: key + ".pub") ? key + ".pub" : nil
            let rc = libssh2_userauth_publickey_fromfile_ex(session, user, UInt32(user.utf8.count), publicKey, key, passphrase)
            if rc == 0 { return }
            tried.append("\(key) (\(rc == LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED || rc == LIBSSH2_ERROR_AUTHENTICATION_FAILED ? "refused by the server" : lastError()))")
        }
        throw SSHError.authentication(user: user, host: settings.hostName, tried: tried)
    }

    /// The key blob of `key`'s public half (`key.pub`: "type base64 comment"), nil when there is none.
    static func publicKeyBlob(_ key: String) -> [UInt8]? {
        guard let text = try? String(contentsOfFile: key + ".pub", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let data = Data(base64Encoded: String(fields[1])) else { return nil }
        return Array(data)
    }

    private func tryAgent(_ tried: inout [String], only allowed: Set<[UInt8]>? = nil) -> Bool {
        guard let agent = libssh2_agent_init(session) else { return false }
        defer { libssh2_agent_disconnect(agent); libssh2_agent_free(agent) }
        guard libssh2_agent_connect(agent) == 0, libssh2_agent_list_identities(agent) == 0 else {
            tried.append("ssh-agent (not reachable)")
            return false
        }
        var previous: UnsafeMutablePointer<libssh2_agent_publickey>?
        var identity: UnsafeMutablePointer<libssh2_agent_publickey>?
        var count = 0
        var skipped = 0
        while libssh2_agent_get_identity(agent, &identity, previous) == 0, let current = identity {
            previous = current
            if let allowed, !allowed.contains(Array(UnsafeBufferPointer(start: current.pointee.blob, count: Int(current.pointee.blob_len)))) {
                skipped += 1
                continue
            }
            count += 1
            if libssh2_agent_userauth(agent, user, current) == 0 { return true }
        }
        tried.append(count == 0 ? "ssh-agent (no keys\(skipped > 0 ? " among the identity files, IdentitiesOnly" : ""))" : "ssh-agent (\(count) keys refused)")
        return false
    }

    // MARK: commands

    /// Runs `command` on the remote in blocking mode; returns exit status, stdout and stderr.
    public func run(_ command: String, stdin: [UInt8]? = nil) throws -> (status: Int32, stdout: [UInt8], stderr: String) {
        guard let channel = syncd_ssh_channel_open_session(session) else {
            throw SSHError.channel(host: settings.hostName, reason: lastError())
        }
        defer { libssh2_channel_free(channel) }
        guard syncd_ssh_channel_exec(channel, command) == 0 else {
            throw SSHError.channel(host: settings.hostName, reason: "cannot run '\(command)': \(lastError())")
        }
        if let stdin {
            var offset = 0
            while offset < stdin.count {
                let n = stdin.withUnsafeBytes { raw in
                    syncd_ssh_channel_write(channel, raw.baseAddress!.assumingMemoryBound(to: CChar.self) + offset, min(stdin.count - offset, 1 << 20))
                }
                if n < 0 { throw SSHError.channel(host: settings.hostName, reason: "writing to '\(command)': \(lastError())") }
                offset += n
            }
        }
        syncd_ssh_channel_send_eof(channel)
        var out: [UInt8] = []
        var err: [UInt8] = []
        var buffer = [CChar](repeating: 0, count: 65536)
        while true {
            let n = syncd_ssh_channel_read(channel, &buffer, buffer.count)
            if n < 0 { throw SSHError.channel(host: settings.hostName, reason: "reading from '\(command)': \(lastError())") }
            if n == 0 { break }
            out.append(contentsOf: buffer[0..<n].map { UInt8(bitPattern: $0) })
        }
        while true {
            let n = syncd_ssh_channel_read_stderr(channel, &buffer, buffer.count)
            if n <= 0 { break }
            err.append(contentsOf: buffer[0..<n].map { UInt8(bitPattern: $0) })
        }
        libssh2_channel_close(channel)
        libssh2_channel_wait_closed(channel)
        let status = libssh2_channel_get_exit_status(channel)
        return (status, out, String(decoding: err, as: UTF8.self))
    }

    /// Starts `command` and returns a full-duplex stream to it, driven by its own thread. No other call may use
    /// the session while the stream runs. The stream owns the session and shuts it down when it ends, unless
    /// `lend` is set: then the session is usable again once `waitForExit()` returns, or the stream takes it
    /// over with `adoptSession()`.
    public func openStream(_ command: String, lend: Bool = false) throws -> SSHChannelStream {
        // Opening the channel and starting the command are one round trip to sshd each: the shorter of the two
        // is the stream's estimate of the link's round-trip time (the other may include a hiccup on either side).
        let opening = monotonicNanos()
        let window = Self.receiveWindow(roundTripSeconds: tcpRoundTripSeconds())
        Trace.mark("ssh: stream window \(window >> 10) KiB")
        guard let channel = libssh2_channel_open_ex(session, "session", 7, window, 32768, nil, 0) else {
            throw SSHError.channel(host: settings.hostName, reason: lastError())
        }
        let opened = monotonicNanos()
        guard syncd_ssh_channel_exec(channel, command) == 0 else {
            libssh2_channel_free(channel)
            throw SSHError.channel(host: settings.hostName, reason: "cannot run '\(command)': \(lastError())")
        }
        handedOff = true
        let roundTrip = Double(min(opened - opening, monotonicNanos() - opened)) / 1e9
        return SSHChannelStream(session: self, channel: channel, ownsSession: !lend, roundTrip: roundTrip)
    }
}

