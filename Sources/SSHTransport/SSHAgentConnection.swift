#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Foundation
import SyncConfig
import SyncSystem
import Transport
import Wire

/// The agent on an SSH host: connect, make sure `~/.local/lib/syncd/agent-<digest>` is there (uploading and
/// verifying it when it is not), then run it on an exec channel whose stdio carries the wire protocol.
public final class SSHAgentConnection: AgentConnection {
    public var stream: ByteStream { channel }
    public let peerDescription: String
    private let channel: SSHChannelStream
    /// True when this connection uploaded the agent.
    public let installedAgent: Bool

    public init(settings: SSHHostSettings, options: SSHOptions, agentBinary: String) throws {
        let destination = "\(settings.user.map { $0 + "@" } ?? "")\(settings.hostName):\(settings.port)"
        peerDescription = "agent on \(destination)"
        let session = try SSHSession(settings: settings, options: options)
        let digest = try Self.digest(ofFile: agentBinary)
        let remotePath = "\"$HOME/.local/lib/syncd/agent-\(digest)\""
        let probe = "uname -m; if test -x \(remotePath); then \(remotePath) --digest; else echo missing; fi"
        var answer = try Self.probe(session, probe, host: settings.hostName)
        let local = Self.localMachine()
        guard answer.machine == local else {
            throw SSHError.architecture(host: settings.hostName, remote: answer.machine, local: local)
        }
        var installed = false
        if answer.agent != digest {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: agentBinary)))
            let upload = """
                set -e; d="$HOME/.local/lib/syncd"; mkdir -p "$d"; t="$d/.agent-\(digest).$$"; trap 'rm -f "$t"' EXIT; \
                cat > "$t"; chmod 755 "$t"; mv -f "$t" "$d/agent-\(digest)"; trap - EXIT
                """
            let result = try session.run(upload, stdin: bytes)
            guard result.status == 0 else {
                let why = result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
                throw SSHError.agentInstall(host: settings.hostName, reason: why.isEmpty ? "upload exited with status \(result.status)" : why)
            }
            answer = try Self.probe(session, probe, host: settings.hostName)
            guard answer.agent == digest else {
                _ = try? session.run("rm -f \(remotePath)")
                throw SSHError.agentInstall(host: settings.hostName,
                                            reason: "the uploaded agent reports digest '\(answer.agent)', expected \(digest); removed it")
            }
            installed = true
        }
        installedAgent = installed
        channel = try session.openStream("exec \(remotePath) serve")
    }

    private static func probe(_ session: SSHSession, _ command: String, host: String) throws -> (machine: String, agent: String) {
        let result = try session.run(command)
        let lines = String(decoding: result.stdout, as: UTF8.self).split(separator: "\n").map {
            $0.trimmingCharacters(in: .whitespaces)
        }
        guard result.status == 0, lines.count >= 2 else {
            throw SSHError.agentInstall(host: host, reason: "probing the host failed (status \(result.status)): \(result.stderr)")
        }
        return (lines[0], lines[1])
    }

    /// XXH3-128 of a file, hex: the agent's identity on the remote.
    public static func digest(ofFile path: String) throws -> String {
        try StreamingDigest.digest(ofFile: path).hex
    }

    static func localMachine() -> String {
        var name = utsname()
        uname(&name)
        return withUnsafePointer(to: &name.machine) { $0.withMemoryRebound(to: CChar.self, capacity: 65) { String(cString: $0) } }
    }

    public func finish() -> String? {
        channel.closeWrite()
        let status = channel.waitForExit()
        if let error = channel.error { return error.description }
        guard let status else { return "the agent ended without an exit status" }
        if status != 0 {
            let last = channel.stderrText.split(separator: "\n").last.map(String.init) ?? ""
            return "the agent exited with status \(status)" + (last.isEmpty ? "" : ": \(last)")
        }
        return nil
    }

    public func terminate() { channel.abort() }
}
