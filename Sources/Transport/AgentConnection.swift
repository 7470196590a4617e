import Foundation
import SyncSystem
import Wire

/// A running agent reached through some transport, with the byte stream the wire protocol runs over.
public protocol AgentConnection: AnyObject {
    /// The stream to the agent.
    var stream: ByteStream { get }
    /// Who the agent is, for messages ("local agent /usr/bin/syncd-agent").
    var peerDescription: String { get }
    /// Waits for the agent to end and returns a one-line account of how it ended, when abnormal.
    func finish() -> String?
    /// Ends the agent now.
    func terminate()
    /// After a session the agent ended with `done`: nothing it does from then on changes the outcome, so the
    /// connection may go without waiting for the agent's exit (over SSH that wait is a round trip).
    func release()
    /// True when the transport already wrote the client's greeting (handshake and hello) to the agent.
    var greetingSent: Bool { get }
}

extension AgentConnection {
    public var greetingSent: Bool { false }
    public func release() { _ = finish() }
}

/// Finds the `syncd-agent` binary: an explicit path, `$SYNCD_AGENT`, or beside the running executable.
public func locateAgentBinary(configured: String?) throws -> String {
    if let configured, !configured.isEmpty {
        let path = (configured as NSString).expandingTildeInPath
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw TransportError("agent_path '\(configured)' is not an executable file")
        }
        return path
    }
    if let env = ProcessInfo.processInfo.environment["SYNCD_AGENT"], !env.isEmpty {
        guard FileManager.default.isExecutableFile(atPath: env) else {
            throw TransportError("SYNCD_AGENT='\(env)' is not an executable file")
        }
        return env
    }
    let selfPath = Platform.executablePath() ?? CommandLine.arguments[0]
    let beside = ((selfPath as NSString).deletingLastPathComponent as NSString).appendingPathComponent("syncd-agent")
    guard FileManager.default.isExecutableFile(atPath: beside) else {
        throw TransportError("cannot find syncd-agent beside \(selfPath); install it there, set SYNCD_AGENT, or set agent_path in syncd.yaml")
    }
    return beside
}

/// A transport failure: the agent could not be started or reached.
public struct TransportError: Error, CustomStringConvertible {
    public let description: String
    public init(_ text: String) { description = text }
}

/// The agent as a local child process (`remote: local:/abs/path`), over pipes. Spawned with posix_spawn so that
/// this side owns every descriptor: nothing else closes or watches them.
public final class LocalAgentConnection: AgentConnection {
    public let stream: ByteStream
    public let peerDescription: String
    /// Process id of the agent, for tests and diagnostics.
    public let processIdentifier: pid_t
    private let stdinWrite: Int32
    private let stdoutRead: Int32
    private let stderrTail = StderrTail()
    private var exitStatus: Int32?

    public init(agentPath: String, arguments: [String] = ["serve"]) throws {
        peerDescription = "local agent \(agentPath)"
        // Close-on-exec from birth: another thread may spawn at any moment, and a pipe end it inherited would
        // keep this agent's stdin open after we close it. The child gets its ends through dup2.
        let toAgent: (read: Int32, write: Int32), fromAgent: (read: Int32, write: Int32), errors: (read: Int32, write: Int32)
        do {
            toAgent = try makePipe(nonBlocking: false)
            fromAgent = try makePipe(nonBlocking: false)
            errors = try makePipe(nonBlocking: false)
        } catch {
            throw TransportError("cannot make pipes for the agent: \(error)")
        }
        let pid: pid_t
        do {
            pid = try spawnProcess([agentPath] + arguments, stdin: .descriptor(toAgent.read),
                                   stdout: .descriptor(fromAgent.write), stderr: .descriptor(errors.write))
        } catch let error as SystemError {
            close(toAgent.read); close(fromAgent.write); close(errors.write)
            close(toAgent.write); close(fromAgent.read); close(errors.read)
            throw TransportError("cannot start \(agentPath): \(error.reason)")
        }
        close(toAgent.read); close(fromAgent.write); close(errors.write)
        enlargePipeBuffer(toAgent.write)
        enlargePipeBuffer(fromAgent.read)
        processIdentifier = pid
        stdinWrite = toAgent.write
        stdoutRead = fromAgent.read
        stream = FileDescriptorStream(input: stdoutRead, output: stdinWrite, name: "local agent", roundTrip: 0)
        do { try StderrRelay.shared.add(errors.read, tail: stderrTail) } catch {
            close(errors.read)
            stderrTail.done.set(())
        }
    }

    deinit {
        terminate()
        _ = finish()
        close(stdoutRead)
    }

    /// How long `finish` waits for the agent to exit once its input ended, before it kills it.
    public var exitGraceSeconds: Double = 60
    /// Set by `terminate`: the agent was told to stop, so a death by signal is this side's doing.
    private var terminated = false
    /// Set when `finish` had to kill an agent that would not exit (`killedStuck`: one not told to stop first).
    private var killedStuck = false
    private var killedHere = false

    /// Guards `exitStatus`, `terminated` and `killedStuck`: `terminate` may come from another thread than
    /// `finish` (a link dropped by the daemon's watcher while a session fails).
    private let stateLock = NSLock()
    private var stderrRead = false

    public func finish() -> String? {
        stream.closeWrite()
        let (first, status, terminated, killedStuck, killedHere) = stateLock.withLock {
            let first = !stderrRead
            stderrRead = true
            if exitStatus == nil { exitStatus = reap() }
            return (first, exitStatus!, self.terminated, self.killedStuck, self.killedHere)
        }
        // The first to finish waits (a little) for the end of what the agent wrote to stderr.
        if first { _ = stderrTail.done.wait(until: monotonicNanos() + 2_000_000_000) }
        let signal = status & 0x7F
        if killedStuck { return "the agent did not exit within \(Int(exitGraceSeconds)) s of its input's end; killed it" }
        // Ended by the signal this side sent: the caller's own error says what went wrong. (A SIGKILL from elsewhere,
        // which may land just as this side decides to stop the agent, is still reported.)
        if signal != 0 {
            let ours = (signal == SIGTERM && terminated) || (signal == SIGKILL && killedHere)
            return ours ? nil : "the agent was killed by signal \(signal)"
        }
        let code = (status >> 8) & 0xFF
        guard code != 0 else { return nil }
        let text = stderrTail.lastLine
        return "the agent exited with status \(code)" + (text.isEmpty ? "" : ": \(text)")
    }

    /// Waits for the agent's exit, at most `exitGraceSeconds` (5 s once told to stop), then kills it with SIGKILL.
    /// With `stateLock` held: the only place the child is reaped.
    private func reap() -> Int32 {
        var status: Int32 = 0
        let grace = terminated ? 5 : exitGraceSeconds
        let deadline = monotonicNanos() + UInt64(grace * 1e9)
        while true {
            let r = waitpid(processIdentifier, &status, WNOHANG)
            if r == processIdentifier { return status }
            if r < 0 && errno != EINTR { return Self.unknownStatus }
            if monotonicNanos() >= deadline { break }
            // Lets `terminate` from another thread through meanwhile.
            stateLock.unlock()
            usleep(5_000)
            stateLock.lock()
        }
        killedStuck = !terminated
        killedHere = true
        kill(processIdentifier, SIGKILL)
        while waitpid(processIdentifier, &status, 0) < 0 {
            if errno != EINTR { return Self.unknownStatus }
        }
        return status
    }

    /// What `finish` reports when the exit status could not be had (exit code 255).
    private static let unknownStatus: Int32 = 0xFF00

    public func terminate() {
        stateLock.withLock {
            guard exitStatus == nil else { return }
            // An agent that is gone already (killed, crashed) keeps its own account of how it ended; the child is
            // only signalled while unreaped, so its pid cannot belong to another process yet.
            var status: Int32 = 0
            if waitpid(processIdentifier, &status, WNOHANG) == processIdentifier {
                exitStatus = status
                return
            }
            terminated = true
            kill(processIdentifier, SIGTERM)
        }
    }
}

/// What local agents write to stderr, copied through to this process's stderr as it comes, with each agent's
/// tail kept: one thread for all of them, however many agents run (a push to a hundred `local:` hosts).
final class StderrRelay: @unchecked Sendable {  // `sources` is shared under its lock; the thread is started once
    static let shared = StderrRelay()
    private let wake: WakePipe?
    private let sources = Locked<(tails: [Int32: StderrTail], started: Bool)>(([:], false))

    private init() { wake = try? WakePipe() }

    /// Copies what comes from `fd` until its end, then closes it and marks `tail` done.
    func add(_ fd: Int32, tail: StderrTail) throws {
        guard let wake else { throw TransportError("no wake-up pipe for the agents' stderr") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let start = sources.withLock { sources in
            sources.tails[fd] = tail
            defer { sources.started = true }
            return !sources.started
        }
        if start {
            do { try startDetachedThread(name: "agents-stderr") { [self] in run(wake) } } catch {
                // No thread: whatever was added meanwhile is given up too (its end marked), not left waiting.
                let stranded = sources.withLock { sources in
                    defer { sources = ([:], false) }
                    return sources.tails
                }
                for (other, tail) in stranded where other != fd {
                    close(other)
                    tail.done.set(())
                }
                throw error
            }
        }
        wake.signal()
    }

    private func run(_ wake: WakePipe) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let tails = sources.current.tails
            var fds = [pollfd(fd: wake.readFD, events: Int16(POLLIN), revents: 0)]
            fds += tails.keys.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            if poll(&fds, nfds_t(fds.count), -1) < 0 { continue }
            wake.drain()
            for f in fds.dropFirst() where f.revents != 0 {
                guard let tail = tails[f.fd] else { continue }
                var ended = false
                // A few reads a turn: an agent that never stops writing does not keep the others' lines waiting.
                for _ in 0..<16 {
                    let n = buffer.withUnsafeMutableBytes { read(f.fd, $0.baseAddress!, $0.count) }
                    if n > 0 {
                        _ = buffer.withUnsafeBytes { write(2, $0.baseAddress!, n) }
                        tail.append(buffer[0..<n])
                        continue
                    }
                    if n < 0 && errno == EINTR { continue }
                    ended = !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break
                }
                if ended {
                    sources.withLock { _ = $0.tails.removeValue(forKey: f.fd) }
                    close(f.fd)
                    tail.done.set(())
                }
            }
        }
    }
}

/// The end of what an agent wrote to stderr, kept by the relay that copies it through.
final class StderrTail: Sendable {
    private let bytes = Locked<[UInt8]>([])
    /// Set once stderr reached its end.
    let done = OneShot<Void>()

    func append(_ more: ArraySlice<UInt8>) {
        bytes.withLock { bytes in
            bytes.append(contentsOf: more)
            if bytes.count > 8192 { bytes.removeFirst(bytes.count - 4096) }
        }
    }

    var lastLine: String {
        String(decoding: bytes.current, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
    }
}

