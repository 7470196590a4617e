/// Why an SSH connection could not be made or used; each names the host and what to do.
public enum SSHError: Error, CustomStringConvertible {
    case resolve(host: String, reason: String, configFile: String?)
    case connectionRefused(host: String, port: Int)
    case timeout(host: String, port: Int, seconds: Int)
    case connect(host: String, port: Int, reason: String)
    case handshake(host: String, reason: String)
    /// The peer answered in something other than SSH, or closed before its greeting.
    case notSSH(host: String, port: Int)
    /// No SSH greeting came within the connect timeout.
    case noGreeting(host: String, port: Int, seconds: Int)
    case unknownHostKey(host: String, fingerprint: String, knownHosts: String, hostName: String, port: Int)
    case changedHostKey(host: String, fingerprint: String, file: String, line: Int?)
    case authentication(user: String, host: String, tried: [String])
    case passphraseUnavailable(key: String)
    case channel(host: String, reason: String)
    case agentInstall(host: String, reason: String)
    case architecture(host: String, remote: String, local: String)
    case disconnected(host: String, reason: String)
    case stalled(host: String, seconds: Int, interval: Int, countMax: Int)

    public var description: String {
        switch self {
        case .resolve(let host, let reason, let configFile):
            return "cannot resolve host '\(host)': \(reason); check the remote setting, or a HostName for it in "
                + (configFile.map { "\($0) (the ssh_config read)" } ?? "your ssh config")
        case .connectionRefused(let host, let port):
            return "connection to \(host) port \(port) refused: is sshd running there, and is the port right?"
        case .timeout(let host, let port, let seconds):
            return "connection to \(host) port \(port) timed out after \(seconds) s; check the network, the host and ConnectTimeout"
        case .connect(let host, let port, let reason):
            return "cannot connect to \(host) port \(port): \(reason)"
        case .handshake(let host, let reason):
            return "SSH handshake with \(host) failed: \(reason)"
        case .notSSH(let host, let port):
            return "the server at \(host):\(port) does not speak SSH (it sent no SSH greeting, or closed at once); is that the SSH port?"
        case .noGreeting(let host, let port, let seconds):
            return "no SSH greeting from \(host):\(port) within \(seconds) s (ConnectTimeout): the port accepts connections but says "
                + "nothing; is sshd there, or is a firewall holding the connection?"
        case .unknownHostKey(let host, let fingerprint, let knownHosts, let hostName, let port):
            return "host key for \(host) is not known (\(fingerprint)). Check that fingerprint with the host's owner, then record it: "
                + "ssh-keyscan\(port == 22 ? "" : " -p \(port)") \(hostName) >> \(knownHosts) "
                + "(or set StrictHostKeyChecking accept-new for this host)"
        case .changedHostKey(let host, let fingerprint, let file, let line):
            let at = line.map { "\(file):\($0)" } ?? file
            return "HOST KEY FOR \(host) HAS CHANGED (now \(fingerprint)); the key recorded at \(at) does not match. "
                + "Someone may be intercepting the connection, or the host was reinstalled. Refusing to connect; "
                + "if the change is expected, remove the old key (ssh-keygen -R \(host) -f \(file))"
        case .authentication(let user, let host, let tried):
            return "authentication as \(user) on \(host) failed (tried: \(tried.isEmpty ? "nothing usable" : tried.joined(separator: "; "))); "
                + "add your public key to ~\(user)/.ssh/authorized_keys there, load it into ssh-agent, or set identity: in syncd.yaml"
        case .passphraseUnavailable(let key):
            return "\(key) is encrypted and there is no terminal or SSH_ASKPASS to ask for its passphrase; load it into ssh-agent (ssh-add \(key))"
        case .channel(let host, let reason):
            return "SSH channel to \(host) failed: \(reason)"
        case .agentInstall(let host, let reason):
            return "cannot install syncd-agent on \(host): \(reason)"
        case .architecture(let host, let remote, let local):
            return "\(host) is a \(remote) machine but this syncd-agent is built for \(local); build syncd-agent for \(remote) and set agent_path"
        case .disconnected(let host, let reason):
            return "connection to \(host) lost: \(reason)"
        case .stalled(let host, let seconds, let interval, let countMax):
            return "connection to \(host) stalled: no answer to \(countMax) keepalives, nothing came for \(seconds) s "
                + "(ServerAliveInterval \(interval) x ServerAliveCountMax \(countMax)); the link or the host stopped moving data"
        }
    }
}
