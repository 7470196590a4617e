import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncConfig
import SyncSystem
import SSHTransport
import Transport
import Wire

/// Errors the engine reports to the user, each with its exit code.
public struct SyncError: Error, CustomStringConvertible {
    /// 1: runtime error; 2: usage or configuration error.
    public let exitCode: Int32
    public let description: String
    public init(_ text: String, exitCode: Int32 = 1) {
        self.description = text
        self.exitCode = exitCode
    }
}

/// Options that come from the command line rather than the config file.
public struct SyncOptions: Sendable {
    /// Overrides the config's `remote:`.
    public var remote: String?
    /// Where local state lives; default `$XDG_STATE_HOME/syncd` (or `~/.local/state/syncd`).
    public var stateDirectory: String?
    /// Show progress on stderr (only honoured when stderr is a terminal).
    public var progress: Bool = true
    /// ssh_config file to read instead of `~/.ssh/config` (overrides the config's `ssh_config:`).
    public var sshConfig: String?

    public init(remote: String? = nil, stateDirectory: String? = nil, progress: Bool = true, sshConfig: String? = nil) {
        self.remote = remote
        self.stateDirectory = stateDirectory
        self.progress = progress
        self.sshConfig = sshConfig
    }
}

/// A project opened for a push, pull or listing: its config, ignore rules, tree and local state.
public final class Project {
    public let directory: String
    public let config: ProjectConfig
    public let tree: Tree
    public let rules: IgnoreRules
    public let pullPaths: [RelativePath]
    public let chunking: ChunkParameters
    let options: SyncOptions

    /// Opens the project at `directory`. Config and ignore-file problems throw `SyncError` with exit code 2.
    public init(directory: String, options: SyncOptions = SyncOptions()) throws {
        let absolute = URL(fileURLWithPath: directory).standardizedFileURL.path
        self.directory = absolute
        self.options = options
        var config: ProjectConfig
        do {
            config = try ProjectConfig.load(projectDirectory: absolute)
            if let remote = options.remote { config.remote = try RemoteSpec(parsing: remote) }
        } catch let e as ConfigError {
            throw SyncError(e.description, exitCode: 2)
        }
        self.config = config
        do {
            tree = try Tree(rootPath: absolute, create: false)
        } catch {
            throw SyncError("project directory \(absolute): \(error)", exitCode: 2)
        }
        var rules = IgnoreRules()
        do {
            for p in IgnoreRules.defaultPatterns { try rules.add(pattern: p, source: "built-in defaults", line: 0) }
            try rules.add(pattern: agentStateDirectoryName, source: "built-in defaults", line: 0)
            let ignoreFile = absolute + "/.syncignore"
            if let data = FileManager.default.contents(atPath: ignoreFile) {
                try rules.add(fileContents: String(decoding: data, as: UTF8.self), source: ignoreFile)
            }
            for (i, p) in config.ignore.enumerated() {
                try rules.add(pattern: p, source: absolute + "/" + ProjectConfig.fileName + " ignore[\(i)]", line: i + 1)
            }
        } catch let e as IgnoreRuleError {
            throw SyncError(e.description, exitCode: 2)
        }
        self.rules = rules
        do {
            pullPaths = try config.pull.map { try RelativePath($0) }
        } catch {
            throw SyncError("\(absolute)/\(ProjectConfig.fileName): setting 'pull': \(error)", exitCode: 2)
        }
        do {
            let d = ChunkParameters.default
            chunking = try ChunkParameters(min: config.chunkMin ?? d.minSize, avg: config.chunkAvg ?? d.avgSize,
                                           max: config.chunkMax ?? d.maxSize)
        } catch {
            throw SyncError("\(absolute)/\(ProjectConfig.fileName): chunk sizes: \(error)", exitCode: 2)
        }
    }

    /// True when `path` is remote-owned.
    public func isPullPath(_ path: RelativePath) -> Bool { pullPaths.contains { path.isWithin($0) } }

    /// The local state database for this project and remote.
    func openState() throws -> StateStore {
        let env = ProcessInfo.processInfo.environment
        let base = options.stateDirectory
            ?? env["XDG_STATE_HOME"].map { $0 + "/syncd" }
            ?? (NSHomeDirectory() + "/.local/state/syncd")
        let key = ChunkID(hashing: Array("\(directory)\n\(config.remote)\n\(config.remoteRoot ?? "")\n\(config.name)".utf8))
        let path = "\(base)/projects/\(config.name)-\(key.hex.prefix(16)).sqlite"
        do { return try StateStore(path: path) } catch {
            throw SyncError("cannot open local state \(path): \(error)")
        }
    }

    /// Starts the agent for this project's remote.
    /// `greeting` (given the link's round-trip time) is written by transports that can send it before the agent
    /// answers (see `clientGreeting`).
    func connect(greeting: ((Double?) -> [UInt8])? = nil) throws -> AgentConnection {
        switch config.remote {
        case .local:
            let agent: String
            do { agent = try locateAgentBinary(configured: config.agentPath) } catch let e as TransportError {
                throw SyncError(e.description, exitCode: 2)
            }
            do { return try LocalAgentConnection(agentPath: agent) } catch {
                throw SyncError("\(error)")
            }
        case .ssh(let destination):
            let home = NSHomeDirectory()
            let configPath = expandTilde(options.sshConfig ?? config.sshConfig ?? "~/.ssh/config", home: home)
            let settings: SSHHostSettings
            do {
                settings = try SSHConfigFile(path: configPath, home: home).settings(for: destination)
            } catch let e as ConfigError {
                throw SyncError("remote '\(destination)': \(e)", exitCode: 2)
            }
            let agent: String
            do { agent = try locateAgentBinary(configured: config.agentPath) } catch let e as TransportError {
                throw SyncError(e.description, exitCode: 2)
            }
            do {
                return try SSHAgentConnection(settings: settings, options: SSHOptions(identity: config.identity, knownHosts: config.knownHosts, home: home),
                                              agentBinary: agent, greeting: greeting)
            } catch let e as SSHError {
                throw SyncError("ssh \(destination): \(e)")
            }
        }
    }

    /// Whether chunk data sent over a link with this round-trip time is compressed (`compress:` in syncd.yaml).
    func compresses(roundTrip: Double?) -> Bool {
        switch config.compress {
        case .always: return true
        case .never: return false
        case .auto: return worthCompressing(roundTrip: roundTrip)
        }
    }

    /// The remote root sent to the agent ("" lets the agent use its user's home).
    var remoteRootForAgent: String {
        if case .local(let root) = config.remote { return config.remoteRoot ?? root }
        return config.remoteRoot ?? ""
    }
}

/// A connection to the project's agent being made on a thread of its own, so the SSH handshake, authentication
/// and agent start overlap with scanning the project.
final class PendingConnection {
    private let condition = NSCondition()
    private var outcome: Result<AgentConnection, Error>?
    private var abandoned = false

    init(project: Project, greeting: @escaping (Double?) -> [UInt8]) {
        let thread = Thread { [self] in
            let result = Result { () throws -> AgentConnection in
                let connection = try project.connect(greeting: greeting)
                if !connection.greetingSent {
                    try greeting(connection.stream.roundTripSeconds).withUnsafeBytes { try connection.stream.write($0) }
                }
                return connection
            }
            condition.lock()
            outcome = result
            let drop = abandoned
            condition.broadcast()
            condition.unlock()
            if drop, case .success(let connection) = result {
                connection.terminate()
                _ = connection.finish()
            }
        }
        thread.name = "connect"
        thread.start()
    }

    /// The connection, once made; rethrows what stopped it.
    func wait() throws -> AgentConnection {
        condition.lock()
        defer { condition.unlock() }
        while outcome == nil { condition.wait() }
        return try outcome!.get()
    }

    /// Nobody will use the connection: it is closed as soon as it is made.
    func cancel() {
        condition.lock()
        abandoned = true
        let made = outcome
        condition.unlock()
        if case .success(let connection)? = made {
            connection.terminate()
            _ = connection.finish()
        }
    }
}

/// Reads the agent's handshake and welcome (the answer to the greeting); returns the remote's instance id.
func readWelcome(_ reader: FrameReader, from connection: AgentConnection) throws -> String {
    let version = try reader.readHandshake()
    guard version == wireVersion else {
        throw SyncError("\(connection.peerDescription) speaks protocol version \(version), this syncctl speaks \(wireVersion); install matching versions")
    }
    guard let welcome = try reader.next() else { throw SyncError("\(connection.peerDescription) closed the connection after the handshake") }
    if case .error(let message) = welcome { throw SyncError("agent: \(message)") }
    guard case .welcome(_, _, let instance) = welcome else { throw ProtocolError("expected welcome, got frame type \(welcome.encode().type)") }
    return instance
}

/// Ends a connection whose session failed with `error`; returns what to tell the user. What the agent said (a
/// full disk, say) wins over how the connection then ended, which was our doing; otherwise how the agent or
/// the link ended is the better account ("the agent exited with status 1: …").
func closeAfterFailure(_ connection: AgentConnection, _ error: Error) -> String {
    connection.terminate()
    let why = connection.finish()
    if let e = error as? SyncError, e.description.hasPrefix("agent:") { return e.description }
    return why ?? "\(error)"
}
