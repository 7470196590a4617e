#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Foundation
import SyncConfig
import SyncSystem
import Transport
import Wire

/// The agent on an SSH host. One exec channel both checks and starts it: the remote shell runs
/// `~/.local/lib/syncd/agent-<digest> serve` when that exists and the machine matches, and the agent checks its
/// own digest before it speaks. Otherwise the shell answers `syncd-agent-missing <machine>`, and the agent is
/// uploaded (temporary name, chmod, rename) and started again. A connection to a host with the agent installed
/// thus costs one channel, no extra round trip.
public final class SSHAgentConnection: AgentConnection {
    public var stream: ByteStream { channel }
    public let peerDescription: String
    private let channel: SSHChannelStream
    /// True when this connection uploaded the agent.
    public let installedAgent: Bool
    static let missingMarker = "syncd-agent-missing"

    /// The greeting (made for the channel's round-trip time) goes to the agent right after the exec request,
    /// before its first answer is awaited.
    public let greetingSent: Bool

    /// With `join` (the address a push's agent gave), the agent started is an extra stream of that push
    /// (`syncd-agent join`) instead of a session of its own.
    /// `digestStamp`: a file where the agent binary's digest is remembered (see `StreamingDigest.digest(ofFile:rememberedIn:)`).
    public init(settings: SSHHostSettings, options: SSHOptions, agentBinary: String, digestStamp: String? = nil,
                greeting: ((Double?) throws -> [UInt8])? = nil, join: String? = nil, timeoutSeconds: Double = 60) throws {
        greetingSent = greeting != nil
        let destination = "\(settings.user.map { $0 + "@" } ?? "")\(settings.hostName):\(settings.port)"
        peerDescription = "agent on \(destination)"
        let host = settings.hostName
        let session = try SSHSession(settings: settings, options: options, stallSeconds: timeoutSeconds)
        let digest = try digestStamp.map { try StreamingDigest.digest(ofFile: agentBinary, rememberedIn: $0).hex } ?? Self.digest(ofFile: agentBinary)
        Trace.mark("ssh: agent binary hashed")
        let local = machineName()
        let verb = join.map { "join --expect-digest \(digest) \($0)" } ?? "serve --expect-digest \(digest)"
        let start = """
            p="$HOME/.local/lib/syncd/agent-\(digest)"; m=$(uname -m); \
            if [ "$m" = "\(local)" ] && [ -x "$p" ]; then exec "$p" \(verb); fi; \
            echo "\(Self.missingMarker) $m"
            """
        var uploaded = false
        while true {
            let channel = try session.openStream(start, lend: true)
            // A remote that never answers (a hung shell, a full disk) fails the connection instead of holding it.
            channel.progressTimeout = timeoutSeconds
            Trace.mark("ssh: agent command started")
            // If the agent is missing, the shell never reads this: it is dropped with the channel. The shell may
            // even have answered and ended already, and then the write fails; its answer is read below.
            var unsent: Error?
            if let greeting {
                let bytes = try greeting(channel.roundTripSeconds)
                do { try bytes.withUnsafeBytes { try channel.write($0) } } catch { unsent = error }
            }
            let first = try channel.peek(wireMagic.count)
            Trace.mark("ssh: first bytes from the remote")
            if first == wireMagic {
                if let unsent { throw unsent }
                channel.adoptSession()
                self.channel = channel
                break
            }
            // Not the agent: the shell's answer, or a failure to run it.
            let answer = String(decoding: try channel.readToEnd(limit: 4096), as: UTF8.self)
            let status = channel.waitForExit(seconds: timeoutSeconds)
            let words = answer.split(whereSeparator: \.isWhitespace).map(String.init)
            guard words.first == Self.missingMarker else {
                let why = channel.stderrText.trimmingCharacters(in: .whitespacesAndNewlines)
                throw SSHError.agentInstall(host: host, reason: "starting the agent failed (status \(status.map(String.init) ?? "unknown"))"
                    + (why.isEmpty ? "" : ": \(why)") + (answer.isEmpty ? "" : "; it printed: \(answer.prefix(200))"))
            }
            let machine = words.count > 1 ? words[1] : "unknown"
            guard machine == local else { throw SSHError.architecture(host: host, remote: machine, local: local) }
            guard !uploaded else {
                // Uploaded, yet it does not start or does not match its digest (it says so on stderr).
                let why = channel.stderrText.trimmingCharacters(in: .whitespacesAndNewlines)
                _ = try? session.run("rm -f \"$HOME/.local/lib/syncd/agent-\(digest)\"")
                throw SSHError.agentInstall(host: host, reason: "the uploaded agent did not start" + (why.isEmpty ? "" : ": \(why)") + "; removed it")
            }
            try Self.upload(agentBinary, digest: digest, over: session, host: host)
            uploaded = true
        }
        installedAgent = uploaded
    }

    /// How many agent binaries a host keeps in ~/.local/lib/syncd: each upload removes all but the newest ones
    /// (a running agent is unaffected; its file stays until it exits).
    static let keptAgents = 3

    private static func upload(_ agentBinary: String, digest: String, over session: SSHSession, host: String) throws {
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: agentBinary)))
        let upload = """
            set -e; d="$HOME/.local/lib/syncd"; mkdir -p "$d"; t="$d/.agent-\(digest).$$"; trap 'rm -f "$t"' EXIT; \
            cat > "$t"; chmod 755 "$t"; mv -f "$t" "$d/agent-\(digest)"; trap - EXIT; \
            ls -1t "$d"/agent-* 2>/dev/null | tail -n +\(keptAgents + 1) | while IFS= read -r old; do rm -f -- "$old"; done
            """
        let result = try session.run(upload, stdin: bytes)
        guard result.status == 0 else {
            let why = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw SSHError.agentInstall(host: host, reason: why.isEmpty ? "upload exited with status \(result.status)" : why)
        }
    }

    /// XXH3-128 of a file, hex: the agent's identity on the remote.
    public static func digest(ofFile path: String) throws -> String {
        try StreamingDigest.digest(ofFile: path).hex
    }

    /// How long `finish` waits for the agent to exit once its input ended, before it drops the connection.
    public var exitGraceSeconds: Double = 60

    public func finish() -> String? {
        channel.closeWrite()
        let status = channel.waitForExit(seconds: exitGraceSeconds)
        // Closed by `terminate`: how it ended is our doing, and says nothing the caller's error does not.
        let closedHere = terminated.current
        if closedHere && status == nil { return nil }
        if let error = channel.error, !closedHere { return error.description }
        guard let status else { return "the agent ended without an exit status" }
        if status != 0 {
            let last = channel.stderrText.split(separator: "\n").last.map(String.init) ?? ""
            return "the agent exited with status \(status)" + (last.isEmpty ? "" : ": \(last)")
        }
        return nil
    }

    /// Set when `terminate` closed a channel that was still healthy (a link is dropped from another thread than the
    /// one that finishes it).
    private let terminated = Locked(false)

    /// Drops the connection without waiting for the agent's exit status: the agent, done, sees its input end
    /// and exits, and sshd needs no answer from here.
    public func release() {
        terminate()
        _ = finish()
    }

    public func terminate() {
        let healthy = channel.error == nil && channel.exitStatus == nil
        if healthy { terminated.withLock { $0 = true } }
        channel.abort()
    }
}
