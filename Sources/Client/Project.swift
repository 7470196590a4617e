import Chunking
import Foundation
import LocalState
import Placement
import ProjectScan
import SyncConfig
import SyncSystem
import SSHTransport
import Transport
import Wire

/// Errors the engine reports to the user, each with its exit code.
public struct SyncError: Error, CustomStringConvertible {
    /// What kind of failure, and with it the exit status a command ends with.
    public enum Code: Int32, Sendable {
        /// Something failed while doing the work (a link, a file system, the remote): exit status 1.
        case failed = 1
        /// The command or the configuration is wrong, and trying again will not help: exit status 2.
        case usage = 2
        /// The work is done but paths were left in conflict: exit status 3.
        case conflict = 3
    }
    public let code: Code
    public let description: String
    /// The error underneath, when this one says what it meant for the command (a link that failed, for a push).
    public let cause: Error?
    /// The session failed because nothing moved on its link for its timeout (see `StalledError`).
    public var stalled = false

    public var exitCode: Int32 { code.rawValue }

    public init(_ text: String, code: Code = .failed) {
        self.description = text
        self.code = code
        cause = nil
    }

    /// A session's failure, marked `stalled` when `cause` was a link or peer that stopped moving data.
    public init(_ text: String, cause: Error) {
        self.description = text
        self.code = (cause as? SyncError)?.code ?? .failed
        self.cause = cause
        stalled = cause is StalledError || { if case .stalled? = cause as? SSHError { return true } else { return false } }()
    }
}

/// Options that come from the command line rather than the config file.
public struct SyncOptions: Sendable {
    /// Overrides the config's `remote:`.
    public var remote: String?
    /// Where local state lives; default `$XDG_STATE_HOME/syncd` (or `~/.local/state/syncd`).
    public var stateDirectory: String?
    /// Show progress on stderr: redrawn on a terminal, a line every 10 s otherwise (`--quiet`: false).
    public var progress: Bool = true
    /// Told how a push or pull in flight is going, a few times a second; a finished one reports all zeros.
    public var onProgress: (@Sendable (SyncProgress) -> Void)?
    /// ssh_config file to read instead of `~/.ssh/config` (overrides the config's `ssh_config:`).
    public var sshConfig: String?
    /// Makes the connection to the agent instead of `remote:` (tests run the agent's session in-process over a
    /// pipe pair); the hello still names `remote:`'s root.
    public var connectAgent: (@Sendable () throws -> AgentConnection)?

    public init(remote: String? = nil, stateDirectory: String? = nil, progress: Bool = true, sshConfig: String? = nil) {
        self.remote = remote
        self.stateDirectory = stateDirectory
        self.progress = progress
        self.sshConfig = sshConfig
    }
}

/// A project opened for a push, pull or listing: its config, ignore rules, tree and local state.
public final class Project: Sendable {
    public let directory: String
    public let config: ProjectConfig
    public let tree: Tree
    public let rules: IgnoreRules
    /// syncd's own rules without git's: what a pull's paths are scanned with, since git's rules decide what a push
    /// sends, never what a pull brings back.
    public let pullRules: IgnoreRules
    public let pullPaths: [RelativePath]
    /// The files outside the project whose rules it follows (with `gitignore: true`, in a repository): the
    /// repository's `info/exclude` and the `.gitignore` files above the project, there or not. A watcher of the
    /// project does not see them: the daemon looks at them itself.
    public let outerIgnoreFiles: [String]
    public let chunking: ChunkParameters
    package let options: SyncOptions

    /// The project `directory` belongs to: the nearest directory at or above it holding a `syncd.yaml`, as git
    /// finds its repository from any subdirectory; nil when there is none up to the root.
    public static func enclosing(_ directory: String) -> String? {
        var candidate = URL(fileURLWithPath: directory).standardizedFileURL.path
        for _ in 0..<4096 {
            if FileManager.default.fileExists(atPath: (candidate == "/" ? "" : candidate) + "/" + ProjectConfig.fileName) { return candidate }
            guard candidate != "/" else { return nil }
            candidate = (candidate as NSString).deletingLastPathComponent
        }
        return nil
    }

    /// Opens the project `directory` is in (see `enclosing`). Config and ignore-file problems throw `SyncError`
    /// with exit code 2.
    public init(directory: String, options: SyncOptions = SyncOptions()) throws {
        let given = URL(fileURLWithPath: directory).standardizedFileURL.path
        guard let absolute = Self.enclosing(given) else {
            throw SyncError("no \(ProjectConfig.fileName) in \(given) or any directory above it; `syncctl init --remote DEST` makes one",
                            code: .usage)
        }
        self.directory = absolute
        self.options = options
        var config: ProjectConfig
        do {
            config = try ProjectConfig.load(projectDirectory: absolute)
            if let remote = options.remote { config.remote = try RemoteSpec(parsing: remote) }
            // A host of `hosts:` may have a remote root of its own.
            if let root = config.hostRoots[config.remote.description] { config.remoteRoot = root }
        } catch let e as ConfigError {
            throw SyncError(e.description, code: .usage)
        }
        self.config = config
        do {
            tree = try Tree(rootPath: absolute, create: false)
        } catch {
            throw SyncError("project directory \(absolute): \(error)", code: .usage)
        }
        var rules = IgnoreRules()
        do {
            for p in IgnoreRules.defaultPatterns { try rules.add(pattern: p, source: "built-in defaults", line: 0) }
            try rules.add(pattern: agentStateDirectoryName, source: "built-in defaults", line: 0)
            let ignoreFile = absolute + "/.syncignore"
            if let text = try readConfigFile(ignoreFile) {
                try rules.add(fileContents: text, source: ignoreFile)
            }
            for (i, p) in config.ignore.enumerated() {
                try rules.add(pattern: p, source: absolute + "/" + ProjectConfig.fileName + " ignore[\(i)]", line: i + 1)
            }
        } catch let e as IgnoreRuleError {
            throw SyncError(e.description, code: .usage)
        }
        pullRules = rules
        outerIgnoreFiles = config.gitignore ? Self.outerIgnoreFiles(projectDirectory: absolute).map(\.path) : []
        if config.gitignore {
            let git = Self.gitIgnore(projectDirectory: absolute, tree: tree)
            let includes = config.include.enumerated().map { (text: $0.element, origin: "\(ProjectConfig.fileName) include[\($0.offset)]") }
            do { try rules.add(git: git, includes: includes) } catch let e as IgnoreRuleError {
                throw SyncError("\(absolute)/\(e.description)", code: .usage)
            }
        }
        self.rules = rules
        do {
            pullPaths = try config.pull.map { try RelativePath($0) }
        } catch {
            throw SyncError("\(absolute)/\(ProjectConfig.fileName): setting 'pull': \(error)", code: .usage)
        }
        do {
            let d = ChunkParameters.default
            chunking = try ChunkParameters(min: config.chunkMin ?? d.minSize, avg: config.chunkAvg ?? d.avgSize,
                                           max: config.chunkMax ?? d.maxSize)
        } catch {
            throw SyncError("\(absolute)/\(ProjectConfig.fileName): chunk sizes: \(error)", code: .usage)
        }
    }

    /// git's rules for the project in `projectDirectory`: the repository holding it (the nearest directory above
    /// with a `.git`) gives `info/exclude` and the `.gitignore` files between its root and the project; the
    /// project's own are read as the scan meets them. Outside a repository only the project's `.gitignore` files count.
    static func gitIgnore(projectDirectory: String, tree: Tree) -> GitIgnore {
        var outer: [(text: String, source: String, base: String)] = []
        // A file that is there but cannot be taken (over 1 MiB, not UTF-8, not a regular file) is said, not passed over.
        var unread: [ScanWarning] = []
        let files = outerIgnoreFiles(projectDirectory: projectDirectory)
        for file in files {
            do {
                if let text = try readConfigFile(file.path) { outer.append((text, file.path, file.base)) }
            } catch {
                let why = "\(error)".hasPrefix(file.path + ": ") ? String("\(error)".dropFirst(file.path.count + 2)) : "\(error)"
                unread.append(ScanWarning(path: file.path, message: "\(why); not read, so git's rules in it do not apply"))
            }
        }
        return GitIgnore(tree: tree, projectPrefix: files.first?.prefix ?? "", outerFiles: outer, unread: unread)
    }

    /// Where git's rules for the project come from outside it, lowest precedence first: the repository's
    /// `info/exclude` (base "") and the `.gitignore` of each directory from the repository's root down to the
    /// project's parent (base: that directory, repository-relative); each with the project's place in the
    /// repository (`prefix`). Empty outside a repository.
    static func outerIgnoreFiles(projectDirectory: String) -> [(path: String, base: String, prefix: String)] {
        // The repository is found from where the project really is (a symlinked checkout).
        let projectDirectory = URL(fileURLWithPath: projectDirectory).resolvingSymlinksInPath().path
        guard let repository = gitRepository(enclosing: projectDirectory) else { return [] }
        let prefix = repository == projectDirectory ? "" : String(projectDirectory.dropFirst(repository == "/" ? 1 : repository.count + 1))
        var files: [(path: String, base: String, prefix: String)] = []
        if let gitDirectory = gitDirectory(of: repository) { files.append((gitDirectory + "/info/exclude", "", prefix)) }
        var base = ""
        for component in prefix.split(separator: "/") {
            files.append((repository + (base.isEmpty ? "" : "/" + base) + "/.gitignore", base, prefix))
            base += (base.isEmpty ? "" : "/") + component
        }
        return files
    }

    /// The root of the git repository holding `directory` (absolute): the nearest directory at or above it with a
    /// `.git`; nil outside any.
    public static func gitRepository(enclosing directory: String) -> String? {
        // Where the directory really is: a symlinked checkout belongs to the repository it points into.
        var candidate = URL(fileURLWithPath: directory).resolvingSymlinksInPath().path
        for _ in 0..<4096 {
            if FileManager.default.fileExists(atPath: (candidate == "/" ? "" : candidate) + "/.git") { return candidate }
            guard candidate != "/" else { return nil }
            candidate = (candidate as NSString).deletingLastPathComponent
        }
        return nil
    }

    /// The git directory of the repository at `root`: `.git` itself, or where a `.git` file (a worktree, a
    /// submodule) points, and then that worktree's common directory, which holds `info/exclude`.
    private static func gitDirectory(of root: String) -> String? {
        let dotGit = root + "/.git"
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dotGit, isDirectory: &isDirectory) else { return nil }
        if isDirectory.boolValue { return dotGit }
        guard let text = try? readConfigFile(dotGit), text.hasPrefix("gitdir:") else { return nil }
        var target = text.dropFirst("gitdir:".count).trimmingCharacters(in: .whitespacesAndNewlines)
        if !target.hasPrefix("/") { target = root + "/" + target }
        if let common = try? readConfigFile(target + "/commondir") {
            let path = common.trimmingCharacters(in: .whitespacesAndNewlines)
            return path.hasPrefix("/") ? path : target + "/" + path
        }
        return target
    }

    /// True when `path` is remote-owned.
    public func isPullPath(_ path: RelativePath) -> Bool { pullPaths.contains { path.isWithin($0) } }

    /// The ignore rules with the pull paths added: what a push looks at.
    public var rulesWithPullPaths: IgnoreRules {
        var rules = self.rules
        for p in pullPaths { try? rules.add(pattern: String(decoding: p.bytes, as: UTF8.self), source: "pull paths", line: 0) }
        return rules
    }

    /// This machine's syncd state: `--state-dir`, else `$XDG_STATE_HOME/syncd`, else `~/.local/state/syncd`.
    package var stateBase: String {
        options.stateDirectory ?? ProcessInfo.processInfo.environment["XDG_STATE_HOME"].map { $0 + "/syncd" }
            ?? (NSHomeDirectory() + "/.local/state/syncd")
    }

    /// The local state database for this project and remote.
    package func openState() throws -> LocalDatabase {
        let base = stateBase
        let key = ChunkID(hashing: Array("\(directory)\n\(config.remote)\n\(config.remoteRoot ?? "")\n\(config.name)".utf8))
        let path = "\(base)/projects/\(config.name)-\(key.hex.prefix(16)).sqlite"
        do { return try LocalDatabase(path: path) } catch {
            throw SyncError("cannot open local state \(path): \(error)")
        }
    }

    /// A session for the temporary files a pull builds in this project (see `BuildSession`), whose lease sits
    /// in this machine's state directory, one folder per project directory: every pull into the directory (the
    /// daemon's, a CLI's) keeps apart from the others, and takes over what one that is gone left.
    func openBuildSession() throws -> BuildSession {
        let key = ChunkID(hashing: Array(directory.utf8))
        let path = "\(stateBase)/sessions/\(config.name)-\(key.hex.prefix(16))"
        do {
            try Tree.makeDirectories(path)
            return try BuildSession(sessionsIn: try FileDescriptor.open(path, flags: O_RDONLY | O_DIRECTORY), shown: path)
        } catch {
            throw SyncError("cannot open the build sessions of \(directory) in \(path): \(error)")
        }
    }

    /// Starts the agent for this project's remote.
    /// `greeting` (given the link's round-trip time) is written by transports that can send it before the agent
    /// answers (see `clientGreeting`).
    /// The SSH settings for `destination` from the ssh_config in effect.
    package func sshSettings(_ destination: String) throws -> SSHHostSettings {
        let home = NSHomeDirectory()
        let configPath = expandTilde(options.sshConfig ?? config.sshConfig ?? "~/.ssh/config", home: home)
        do {
            return try SSHConfigFile(path: configPath, home: home).settings(for: destination)
        } catch let e as ConfigError {
            throw SyncError("remote '\(destination)': \(e)", code: .usage)
        }
    }

    /// With `join` (SSH remotes only), the agent started joins the session at that address as an extra stream
    /// (see `ExtraStreams`).
    func connect(greeting: ((Double?) throws -> [UInt8])? = nil, join: String? = nil) throws -> AgentConnection {
        if let connectAgent = options.connectAgent {
            if join != nil { throw SyncError("extra streams need an SSH remote") }
            return try connectAgent()
        }
        switch config.remote {
        case .local:
            if join != nil { throw SyncError("extra streams need an SSH remote") }
            let agent: String
            do { agent = try locateAgentBinary(configured: config.agentPath) } catch let e as TransportError {
                throw SyncError(e.description, code: .usage)
            }
            do {
                let connection = try LocalAgentConnection(agentPath: agent)
                connection.exitGraceSeconds = Double(config.timeoutSeconds)
                return connection
            } catch {
                throw SyncError("\(error)")
            }
        case .ssh(let destination):
            let home = NSHomeDirectory()
            let settings = try sshSettings(destination)
            let agent: String
            do { agent = try locateAgentBinary(configured: config.agentPath) } catch let e as TransportError {
                throw SyncError(e.description, code: .usage)
            }
            // The binary's digest is remembered in the state directory, per binary path.
            let stamp = "\(stateBase)/agent-digest-\(ChunkID(hashing: Array(agent.utf8)).hex.prefix(16))"
            do {
                let connection = try SSHAgentConnection(settings: settings, options: SSHOptions(identity: config.identity, knownHosts: config.knownHosts, home: home),
                                                        agentBinary: agent, digestStamp: stamp, greeting: greeting, join: join,
                                                        timeoutSeconds: Double(config.timeoutSeconds))
                connection.exitGraceSeconds = Double(config.timeoutSeconds)
                return connection
            } catch let e as StalledError {
                throw SyncError("ssh \(destination)\(join == nil ? "" : " (extra stream)"): \(e)")
            } catch let e as SSHError {
                throw SyncError("ssh \(destination)\(join == nil ? "" : " (extra stream)"): \(e)")
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

    /// The session's limits, as syncd.yaml sets them: the timeout both sides keep, the largest file.
    func limit(_ hello: inout Hello) {
        hello.timeoutSeconds = UInt32(config.timeoutSeconds)
        hello.maxFileSize = config.maxFileSize
    }

    /// The remote root sent to the agent ("" lets the agent use its user's home).
    var remoteRootForAgent: String {
        if case .local(let root) = config.remote { return config.remoteRoot ?? root }
        return config.remoteRoot ?? ""
    }
}

/// The client's end of a connection to the agent, with the framed reader and writer over it: used for one
/// session (syncctl), or kept for many (the daemon keeps one per project, so a session costs no SSH handshake,
/// no authentication and no agent start).
public final class AgentLink: @unchecked Sendable {
    public let connection: AgentConnection
    let reader: FrameReader
    let writer: FrameWriter
    /// Kept open after a session, for the next one.
    public let persistent: Bool
    /// What the link learned and whether it is still usable, read and written from the session's threads.
    private struct State {
        var handshakeRead = false
        /// The project's absolute directory on the remote, from the last welcome.
        var directory: String?
        /// A remote root the agent had to make for the last session, until `takeCreatedRoot` reports it.
        var createdRoot: String?
        /// Set once the link failed or was closed: it must not carry another session.
        var closed = false
    }
    private let state = Locked(State())

    public var remoteDirectory: String? { state.current.directory }

    /// The warning for a remote root the agent made (it did not exist): said once.
    public func takeCreatedRoot() -> String? {
        let made = state.withLock { state in defer { state.createdRoot = nil }; return state.createdRoot }
        return made.map {
            "the remote root \(displayText($0)) did not exist on \(connection.peerDescription) and was made; "
                + "if that is not where the project belongs, fix remote_root in \(ProjectConfig.fileName)"
        }
    }

    public var isClosed: Bool { state.current.closed }

    /// Marks the link closed; returns whether it was open.
    private func markClosed() -> Bool {
        state.withLock { state in defer { state.closed = true }; return !state.closed }
    }

    /// Keeps the agent sure this side is alive while it has nothing to say (see `Heartbeat`); nil when whoever
    /// drives the link sends them (`ApplyLoop`).
    private let heartbeat: Heartbeat?

    /// The link's reads and writes fail once nothing moved for `timeoutSeconds` (the agent sends heartbeats
    /// meanwhile, and this side does too: a thread of the link's own, unless `heartbeats` is false).
    init(connection: AgentConnection, persistent: Bool, timeoutSeconds: Int, heartbeats: Bool = true) {
        self.connection = connection
        self.persistent = persistent
        connection.stream.progressTimeout = Double(timeoutSeconds)
        reader = FrameReader(connection.stream)
        writer = FrameWriter(connection.stream)
        heartbeat = heartbeats ? Heartbeat(writer: writer, timeoutSeconds: Double(timeoutSeconds)) : nil
    }

    /// Connects to the project's agent for many sessions.
    public static func open(project: Project) throws -> AgentLink {
        let connection = try project.connect(greeting: { _ in clientHandshake() })
        if !connection.greetingSent {
            try clientHandshake().withUnsafeBytes { try connection.stream.write($0) }
        }
        return AgentLink(connection: connection, persistent: true, timeoutSeconds: project.config.timeoutSeconds)
    }

    /// Reads the agent's handshake (once per connection) and the welcome that answers a hello; returns the
    /// remote's instance id.
    func readWelcome() throws -> String {
        if !state.current.handshakeRead {
            try checkVersion(try reader.readHandshake())
            state.withLock { $0.handshakeRead = true }
        }
        guard let welcome = try reader.next() else { throw SyncError("\(connection.peerDescription) closed the connection before its welcome") }
        return try welcomed(welcome)
    }

    /// Checks the agent's handshake version.
    func checkVersion(_ version: UInt16) throws {
        guard version == wireVersion else {
            throw SyncError("\(connection.peerDescription) speaks protocol version \(version), this syncctl speaks \(wireVersion); install matching versions")
        }
    }

    /// Takes in the agent's answer to a hello (read by whoever drives the link); returns the remote's instance id.
    func welcomed(_ welcome: Message) throws -> String {
        if case .error(let message, let reason) = welcome { throw AgentSaid(message: displayText(message), reason: reason, atStart: true) }
        guard case .welcome(_, let directory, let instance, let created) = welcome else {
            throw ProtocolError("expected welcome, got frame type \(welcome.encode().type)")
        }
        state.withLock { state in
            state.directory = directory
            if !created.isEmpty { state.createdRoot = created }
        }
        return instance
    }

    /// Ends a session that went well (the agent said `done`, with everything recorded on its side). A link for
    /// one session lets the agent go (see `AgentConnection.release`); a persistent link stays open, and so does
    /// any link with `another` session to carry (the next part of a push).
    func endSession(another: Bool = false) {
        guard !persistent && !another && markClosed() else { return }
        heartbeat?.stop()
        connection.release()
    }

    /// Ends the link after a failed session; returns what to tell the user. What the agent said (a full disk,
    /// say) wins over how the connection then ended, which was our doing; otherwise how the agent or the link
    /// ended is the better account ("the agent exited with status 1: …").
    func fail(_ error: Error) -> String {
        _ = markClosed()
        connection.terminate()
        heartbeat?.stop()
        let why = connection.finish()
        if let said = error as? AgentSaid { return said.description }
        return why ?? "\(error)"
    }

    /// Closes the link between sessions: the agent sees the end of input and exits.
    public func close() {
        guard markClosed() else { return }
        heartbeat?.stop()
        _ = connection.finish()
    }

    /// Drops the link at once (a dead network): whoever is reading it gets an error.
    public func abort() {
        _ = markClosed()
        connection.terminate()
        heartbeat?.stop()
    }

    // MARK: watching the remote between sessions

    /// Asks the agent to report completed remote-owned files until `endWatch`.
    public func beginWatch() throws {
        try writer.send(.watch)
        try writer.flush()
    }

    /// Reads the agent's reports until the watch ends (`watchEnded`); `changed` gets each report's paths. Runs on
    /// a thread of its own while the owner waits for other work; throws when the link fails.
    public func listen(changed: ([RelativePath]) -> Void) throws {
        while true {
            guard let message = try reader.next() else { throw SyncError("\(connection.peerDescription) closed the connection") }
            switch message {
            case .remoteChanged(let paths): changed(paths.compactMap { try? RelativePath(bytes: $0) })
            case .watchEnded: return
            case .error(let text, let reason): throw AgentSaid(message: displayText(text), reason: reason)
            default: throw ProtocolError("unexpected frame type 0x\(String(message.encode().type, radix: 16)) during a watch")
            }
        }
    }

    /// Ends a watch; `listen` returns once the agent confirms.
    public func endWatch() throws {
        try writer.send(.watchEnd)
        try writer.flush()
    }
}

/// The link a session runs over, being made: a new connection is made on a thread of its own, so the SSH
/// handshake, authentication and agent start overlap with scanning the project; a persistent link given by
/// the caller only needs the session's hello.
final class PendingConnection: @unchecked Sendable {
    /// The link or why there is none, once known; what `wait` waits for.
    private let outcome = OneShot<Result<AgentLink, Error>>()
    /// The same outcome beside whether the caller gave up on it, changed together: exactly one of the connecting
    /// thread and `cancel` closes a link nobody will use.
    private let decided = Locked<(made: Result<AgentLink, Error>?, abandoned: Bool)>((nil, false))

    /// `hello` is given the link's round-trip time (nil when unknown); it may wait for what the caller is still
    /// reading (a push's hello waits for its local state), and what it throws fails the connection.
    init(project: Project, link: AgentLink?, hello: @escaping @Sendable (Double?) throws -> Hello) {
        if let link, !link.isClosed {
            var result = Result {
                try link.writer.send(.hello(hello(link.connection.stream.roundTripSeconds)))
                try link.writer.flush()
                return link
            }
            if case .failure(let error) = result { result = .failure(SyncError("the connection to the agent failed: \(link.fail(error))")) }
            decide(result)
            return
        }
        let greeting: @Sendable (Double?) throws -> [UInt8] = { clientGreeting(try hello($0)) }
        // Joined before the process exits (it may be in an SSH handshake when the session ends).
        let connecting = { [self] in
            Trace.mark("connect: started")
            let result = Result { () throws -> AgentLink in
                let connection = try project.connect(greeting: greeting)
                if !connection.greetingSent {
                    try greeting(connection.stream.roundTripSeconds).withUnsafeBytes { try connection.stream.write($0) }
                }
                return AgentLink(connection: connection, persistent: false, timeoutSeconds: project.config.timeoutSeconds)
            }
            if decide(result), case .success(let link) = result { _ = link.fail(SyncError("abandoned")) }
        }
        do { try LibraryThreads.start(connecting) } catch {
            decide(.failure(SyncError("cannot start a thread to connect: \(error)")))
        }
    }

    /// Records the outcome and wakes `wait`; true when the caller had given up on it already.
    @discardableResult
    private func decide(_ result: Result<AgentLink, Error>) -> Bool {
        let abandoned = decided.withLock { state in
            state.made = result
            return state.abandoned
        }
        outcome.set(result)
        return abandoned
    }

    /// The link, once made; rethrows what stopped it.
    func wait() throws -> AgentLink { try outcome.wait().get() }

    /// Nobody will use the link: a new connection is closed as soon as it is made; a persistent link is
    /// closed too, since its agent is now in the middle of a session nobody will finish.
    func cancel() {
        let made = decided.withLock { state in
            state.abandoned = true
            return state.made
        }
        if case .success(let link)? = made { _ = link.fail(SyncError("abandoned")) }
    }
}

/// The agent ended the session with an error of its own (an `error` frame), escaped for a terminal. A retry does
/// not mend what it reports by itself (a remote root that is a file, a permission): the message says so.
public struct AgentSaid: Error, CustomStringConvertible {
    public let message: String
    /// Why, as the agent gave it: what the client decides by.
    public let reason: ErrorReason
    /// Said instead of a welcome: the agent could not open the project (its remote root, its name, its
    /// directory), which a retry does not mend.
    public var atStart = false
    public init(message: String, reason: ErrorReason = .other, atStart: Bool = false) {
        self.message = message
        self.reason = reason
        self.atStart = atStart
    }
    public var description: String { "agent: \(message)" }
}

extension Project {
    /// The id of the snapshot the last push through the store made (what `exec` and `compose` export as
    /// `SYNCD_SNAPSHOT`); nil without a store.
    public func lastSnapshot() -> String? {
        guard config.store != nil else { return nil }
        return try? openState().value("last_snapshot")
    }
}
