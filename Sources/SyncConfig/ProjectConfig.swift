import Foundation
import Yams

/// A configuration problem: the file, the setting and what to do. Maps to exit code 2.
public struct ConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ text: String) { description = text }
}

/// Where the agent runs.
public enum RemoteSpec: Equatable, Sendable, CustomStringConvertible {
    /// The agent as a local subprocess; `root` is the remote root.
    case local(root: String)
    /// An SSH destination: `[user@]host[:port]` or an ssh_config alias.
    case ssh(destination: String)

    /// Parses the `remote:` setting.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasPrefix("local:") {
            let root = String(trimmed.dropFirst("local:".count))
            guard root.hasPrefix("/") else {
                throw ConfigError("remote '\(text)': a local remote needs an absolute path, as in local:/srv/sync")
            }
            self = .local(root: root)
        } else {
            guard !trimmed.isEmpty, !trimmed.contains(" ") else {
                throw ConfigError("remote '\(text)' is not an SSH destination ([user@]host[:port] or an ssh config alias) or local:/abs/path")
            }
            self = .ssh(destination: trimmed)
        }
    }

    public var description: String {
        switch self {
        case .local(let root): return "local:\(root)"
        case .ssh(let destination): return destination
        }
    }
}

/// `syncd.yaml` at a project's root.
public struct ProjectConfig: Equatable, Sendable {
    public static let fileName = "syncd.yaml"
    public static let knownKeys = ["name", "remote", "remote_root", "pull", "ignore", "identity", "known_hosts",
                                   "ssh_config", "agent_path", "chunk_min", "chunk_avg", "chunk_max", "compress", "docker_host",
                                   "hosts", "store", "endpoint", "host_endpoint", "region", "pull_from",
                                   "host_credentials", "store_fallback", "streams", "timeout", "max_file_size",
                                   "gitignore", "include"]

    /// When chunk data is zlib-compressed: `auto` over SSH but not through pipes to a `local:` agent (where it
    /// could only cost CPU), or `always`, or `never`.
    public enum Compression: String, Sendable, CaseIterable { case auto, always, never }

    /// Which hosts a pull brings outputs back from: the first (where rank 0 writes), or every host, each into
    /// `<pull path>/<host>/`.
    public enum PullFrom: String, Sendable, CaseIterable { case first, all }

    public var name: String
    public var remote: RemoteSpec
    public var remoteRoot: String?
    public var pull: [String]
    public var ignore: [String]
    /// `gitignore: true`: git's ignore rules (nested `.gitignore` files, `.git/info/exclude`) also decide what a
    /// push sends, never what a pull brings back.
    public var gitignore = false
    /// Paths that a push sends although git's rules exclude them (a gitignored dataset), as patterns.
    public var include: [String] = []
    public var identity: String?
    public var knownHosts: String?
    public var sshConfig: String?
    /// Path of the syncd-agent binary to run; default: beside the running executable.
    public var agentPath: String?
    public var chunkMin: Int?
    public var chunkAvg: Int?
    public var chunkMax: Int?
    public var compress: Compression = .auto
    /// How many SSH connections a large push or pull spreads its chunk data over (`streams:`): nil for `auto`,
    /// which is half this machine's cores, at most 4; 1 keeps every session on one connection.
    public var streams: Int?
    /// How long a session waits without a byte from the other side before it fails, in seconds (`timeout:`,
    /// 1 to 86400, default 60). Both sides send a heartbeat after a quarter of it in silence.
    public var timeoutSeconds = 60
    /// The largest file a push sends or a pull takes, in bytes (`max_file_size:`, default 1 TiB): a size
    /// declared beyond it (or beyond what the receiving file system holds) is refused before it costs anything.
    public var maxFileSize: UInt64 = 1 << 40
    /// `DOCKER_HOST` for `syncctl compose` and `exec` on the remote (a rootless or non-default daemon).
    public var dockerHost: String?
    /// Every host a push reaches (`hosts:`), the first being `remote`; just `remote` without the setting.
    public var hosts: [RemoteSpec] = []
    /// `hosts: swarm:MANAGER`: the hosts are the nodes of the Docker Swarm that MANAGER (an SSH destination, also
    /// `remote`) manages, read from `docker node ls` there when a push or pull needs them.
    public var swarmManager: String?
    /// A host's own remote root, from a `{host: H, remote_root: /path}` item of `hosts:`, keyed by the host as
    /// written; the others use `remote_root:`.
    public var hostRoots: [String: String] = [:]
    /// The snapshot store, `s3://BUCKET/PREFIX`: chunks go there once, and every host reads what it lacks.
    public var store: String?
    /// The store's endpoint for the laptop (default: `AWS_ENDPOINT_URL`, else AWS's for `region`), and for the
    /// hosts (default: the same).
    public var endpoint: String?
    public var hostEndpoint: String?
    public var region: String?
    public var pullFrom: PullFrom = .first
    /// How hosts read the store: with URLs this machine presigns (no secret reaches a host), or with credentials
    /// of their own (`own`: an instance role's, or the host's ~/.aws/credentials).
    public var hostCredentialsOwn = false
    /// When a host cannot read the store (`host_endpoint` unreachable or silent), its push goes over its SSH link
    /// instead, with a warning (`store_fallback: ssh`, the default); `no` fails that host's files.
    public var storeFallback = true

    /// The hosts a push reaches.
    public var allHosts: [RemoteSpec] { hosts.isEmpty ? [remote] : hosts }

    /// The folder under each pull path that holds a host's outputs with `pull_from: all`: an SSH destination
    /// as written, a `local:` root by its last component.
    public static func folderName(for host: RemoteSpec) -> String {
        switch host {
        case .ssh(let destination): return destination
        case .local(let root): return (root as NSString).lastPathComponent
        }
    }

    public init(name: String, remote: RemoteSpec, remoteRoot: String? = nil, pull: [String] = ["output", "checkpoint"],
                ignore: [String] = []) {
        self.name = name
        self.remote = remote
        self.remoteRoot = remoteRoot
        self.pull = pull
        self.ignore = ignore
    }

    /// Reads `<projectDirectory>/syncd.yaml`. Errors name the file and the setting.
    public static func load(projectDirectory: String) throws -> ProjectConfig {
        let file = projectDirectory + "/" + fileName
        guard let text = try readConfigFile(file) else {
            throw ConfigError("\(file): not found; run `syncctl init \(projectDirectory) --remote DEST` first")
        }
        return try parse(text, file: file, directoryName: (projectDirectory as NSString).lastPathComponent)
    }

    /// Parses config text; `file` is used in messages, `directoryName` is the default project name.
    public static func parse(_ text: String, file: String, directoryName: String) throws -> ProjectConfig {
        let node = try BoundedYAML.load(text, file: file)
        let map: [String: Any]
        if node == nil { map = [:] } else if let m = node as? [String: Any] { map = m } else {
            throw ConfigError("\(file): expected a mapping of settings (name:, remote:, …)")
        }
        for key in map.keys where !knownKeys.contains(key) {
            if let near = closest(key, among: knownKeys) {
                throw ConfigError("\(file): unknown setting '\(key)'; did you mean '\(near)'?")
            }
            throw ConfigError("\(file): unknown setting '\(key)' (known: \(knownKeys.joined(separator: ", ")))")
        }
        func string(_ key: String) throws -> String? {
            guard let v = map[key] else { return nil }
            if let s = v as? String { return s }
            if let i = v as? Int { return String(i) }
            throw ConfigError("\(file): setting '\(key)' must be a string")
        }
        func list(_ key: String) throws -> [String]? {
            guard let v = map[key] else { return nil }
            if let a = v as? [Any] {
                return try a.map {
                    guard let s = $0 as? String else { throw ConfigError("\(file): '\(key)' must be a list of strings") }
                    return s
                }
            }
            throw ConfigError("\(file): setting '\(key)' must be a list, as in \(key): [a, b]")
        }
        func int(_ key: String) throws -> Int? {
            guard let v = map[key] else { return nil }
            guard let i = v as? Int, i > 0 else { throw ConfigError("\(file): setting '\(key)' must be a positive integer") }
            return i
        }
        var hosts: [RemoteSpec] = []
        var swarmManager: String?
        var hostRoots: [String: String] = [:]
        if let text = map["hosts"] as? String {
            guard text.hasPrefix("swarm:"), case .ssh(let manager)? = try? RemoteSpec(parsing: String(text.dropFirst("swarm:".count))) else {
                throw ConfigError("\(file): setting 'hosts' must be a list of hosts, as in hosts: [gpu-1, gpu-2], or swarm:MANAGER (an SSH destination), not '\(text)'")
            }
            swarmManager = manager
            hosts = [.ssh(destination: manager)]
        } else if let items = map["hosts"] {
            guard let list = items as? [Any] else {
                throw ConfigError("\(file): setting 'hosts' must be a list, as in hosts: [gpu-1, gpu-2], or swarm:MANAGER")
            }
            guard !list.isEmpty else { throw ConfigError("\(file): setting 'hosts' is empty; name at least one host, or use remote:") }
            for item in list {
                var text: String
                var root: String?
                if let s = item as? String {
                    text = s
                } else if let m = item as? [String: Any], let h = m["host"] as? String {
                    if let bad = m.keys.first(where: { $0 != "host" && $0 != "remote_root" }) {
                        throw ConfigError("\(file): setting 'hosts': unknown key '\(bad)' for host \(h) (known: host, remote_root)")
                    }
                    text = h
                    root = m["remote_root"] as? String
                    guard let root, root.hasPrefix("/") else {
                        throw ConfigError("\(file): setting 'hosts': host \(h) needs remote_root: as an absolute path")
                    }
                } else {
                    throw ConfigError("\(file): setting 'hosts': each host is a destination or {host: H, remote_root: /path}")
                }
                do { hosts.append(try RemoteSpec(parsing: text)) } catch let e as ConfigError {
                    throw ConfigError("\(file): setting 'hosts': \(e.description)")
                }
                if let root { hostRoots[hosts.last!.description] = root }
            }
            guard Set(hosts.map(\.description)).count == hosts.count else { throw ConfigError("\(file): setting 'hosts' names a host twice") }
        }
        let remote: RemoteSpec
        if let remoteText = try string("remote") {
            do { remote = try RemoteSpec(parsing: remoteText) } catch let e as ConfigError {
                throw ConfigError("\(file): setting 'remote': \(e.description)")
            }
            if !hosts.isEmpty && remote != hosts[0] {
                throw ConfigError("\(file): 'remote' and 'hosts' disagree: with hosts:, leave remote: out (the first host is where pulls come from)")
            }
        } else if let first = hosts.first {
            remote = first
        } else {
            throw ConfigError("\(file): setting 'remote' is missing (an SSH destination, or local:/abs/path; or hosts: [a, b] with a store)")
        }
        let name = try string("name") ?? directoryName
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw ConfigError("\(file): setting 'name' must be a single directory name, not '\(name)'")
        }
        var config = ProjectConfig(name: name, remote: remote)
        config.remoteRoot = try string("remote_root")
        if let root = config.remoteRoot, !root.hasPrefix("/") {
            throw ConfigError("\(file): setting 'remote_root' must be an absolute path, not '\(root)'")
        }
        if let pull = try list("pull") {
            for p in pull where cleanRelative(p) == nil {
                throw ConfigError("\(file): setting 'pull': '\(p)' must be a relative path inside the project")
            }
            config.pull = pull.compactMap(cleanRelative)
        }
        config.ignore = try list("ignore") ?? []
        if let value = map["gitignore"] {
            guard let flag = value as? Bool else {
                throw ConfigError("\(file): setting 'gitignore' must be true or false, not '\(value)'")
            }
            config.gitignore = flag
        }
        config.include = try list("include") ?? []
        for p in config.include where cleanRelative(p.hasPrefix("/") ? String(p.dropFirst()) : p) == nil {
            throw ConfigError("\(file): setting 'include': '\(p)' must be a path or pattern inside the project")
        }
        if !config.include.isEmpty && !config.gitignore {
            throw ConfigError("\(file): setting 'include' brings back paths git's rules exclude, and needs gitignore: true")
        }
        if let text = try string("compress") {
            guard let mode = Compression(rawValue: text) else {
                throw ConfigError("\(file): setting 'compress' must be auto, always or never, not '\(text)'")
            }
            config.compress = mode
        }
        if let text = try string("streams"), text != "auto" {
            guard let n = Int(text), (1...8).contains(n) else {
                throw ConfigError("\(file): setting 'streams' must be auto or a number of connections from 1 to 8, not '\(text)'")
            }
            config.streams = n
        }
        if let text = try string("timeout") {
            guard let n = Int(text), (1...86_400).contains(n) else {
                throw ConfigError("\(file): setting 'timeout' must be a number of seconds from 1 to 86400, not '\(text)'")
            }
            config.timeoutSeconds = n
        }
        if let text = try string("max_file_size") {
            guard let bytes = parseByteSize(text), bytes > 0 else {
                throw ConfigError("\(file): setting 'max_file_size' must be a size such as 500G, 2T or 1073741824 (bytes), not '\(text)'")
            }
            config.maxFileSize = bytes
        }
        config.identity = try string("identity")
        config.knownHosts = try string("known_hosts")
        config.sshConfig = try string("ssh_config")
        config.agentPath = try string("agent_path")
        config.dockerHost = try string("docker_host")
        config.chunkMin = try int("chunk_min")
        config.chunkAvg = try int("chunk_avg")
        config.chunkMax = try int("chunk_max")
        config.hosts = hosts
        config.swarmManager = swarmManager
        config.hostRoots = hostRoots
        config.store = try string("store")
        if let store = config.store, !store.hasPrefix("s3://") || store.dropFirst(5).isEmpty {
            throw ConfigError("\(file): setting 'store' must be an S3 URL, s3://BUCKET/PREFIX, not '\(store)'")
        }
        config.endpoint = try string("endpoint")
        config.hostEndpoint = try string("host_endpoint")
        config.region = try string("region")
        for (key, value) in [("endpoint", config.endpoint), ("host_endpoint", config.hostEndpoint)] {
            if let value, !(value.hasPrefix("http://") || value.hasPrefix("https://")) {
                throw ConfigError("\(file): setting '\(key)' must be an http:// or https:// URL, not '\(value)'")
            }
        }
        if config.store == nil, let key = ["endpoint", "host_endpoint", "region", "host_credentials", "store_fallback"].first(where: { map[$0] != nil }) {
            throw ConfigError("\(file): setting '\(key)' needs store: s3://BUCKET/PREFIX")
        }
        if let text = try string("host_credentials") {
            guard text == "presigned" || text == "own" else {
                throw ConfigError("\(file): setting 'host_credentials' must be presigned or own, not '\(text)'")
            }
            config.hostCredentialsOwn = text == "own"
        }
        // YAML reads a bare `no` as false (and `yes` as true).
        if let flag = map["store_fallback"] as? Bool {
            config.storeFallback = flag
        } else if let text = try string("store_fallback") {
            guard text == "ssh" || text == "no" else {
                throw ConfigError("\(file): setting 'store_fallback' must be ssh or no, not '\(text)'")
            }
            config.storeFallback = text == "ssh"
        }
        if let text = try string("pull_from") {
            guard let mode = PullFrom(rawValue: text) else {
                throw ConfigError("\(file): setting 'pull_from' must be first or all, not '\(text)'")
            }
            config.pullFrom = mode
        }
        if config.pullFrom == .all {
            let folders = config.allHosts.map(folderName)
            if let bad = folders.first(where: { $0.isEmpty || $0 == "." || $0 == ".." || $0.contains("/") }) {
                throw ConfigError("\(file): setting 'pull_from: all' cannot name a folder after the host '\(bad)'")
            }
            if Set(folders).count != folders.count {
                throw ConfigError("\(file): setting 'pull_from: all' puts each host's outputs in a folder named after it, "
                                  + "and two hosts share a name (\(folders.joined(separator: ", ")))")
            }
        }
        if (hosts.count > 1 || swarmManager != nil) && config.store == nil {
            throw ConfigError("\(file): several hosts need a store (store: s3://BUCKET/PREFIX), so that each chunk leaves this machine once")
        }
        return config
    }

    /// The YAML text `syncctl init` writes.
    public func yaml() -> String {
        var lines = ["name: \(quoted(name))", "remote: \(quoted(remote.description))"]
        if let remoteRoot { lines.append("remote_root: \(quoted(remoteRoot))") }
        lines.append("pull: [\(pull.map(quoted).joined(separator: ", "))]")
        lines.append("ignore: [\(ignore.map(quoted).joined(separator: ", "))]")
        if gitignore {
            lines.append("# git's ignore rules (.gitignore files, .git/info/exclude) decide what a push sends; include: sends paths they exclude.")
            lines.append("gitignore: true")
            lines.append("include: [\(include.map(quoted).joined(separator: ", "))]")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private func quoted(_ s: String) -> String {
        let safe = s.allSatisfy { $0.isLetter || $0.isNumber || "-_./@:~".contains($0) } && !s.isEmpty && !s.hasPrefix("~") && !s.hasPrefix("@")
        return safe ? s : "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

/// A relative path cleaned to slash form without '.', '..', leading or trailing '/'; nil when it leaves the project.
func cleanRelative(_ p: String) -> String? {
    var parts: [Substring] = []
    for part in p.split(separator: "/") where part != "." {
        if part == ".." { return nil }
        parts.append(part)
    }
    if p.hasPrefix("/") || parts.isEmpty { return nil }
    return parts.joined(separator: "/")
}

/// `1073741824`, `512K`, `100M`, `500G`, `2T` (binary units, an optional trailing `B` or `iB`); nil when it is
/// none of those or does not fit 64 bits.
func parseByteSize(_ text: String) -> UInt64? {
    var digits = text.trimmingCharacters(in: .whitespaces).uppercased()
    for suffix in ["IB", "B"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
        digits.removeLast(suffix.count)
        break
    }
    let shifts: [Character: UInt64] = ["K": 10, "M": 20, "G": 30, "T": 40, "P": 50]
    var shift: UInt64 = 0
    if let last = digits.last, let s = shifts[last] {
        shift = s
        digits.removeLast()
    }
    guard let value = UInt64(digits) else { return nil }
    let (scaled, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
    return overflow ? nil : scaled
}

/// The candidate nearest `word` (edit distance, at most a third of its length, and at most 3), if one is that near.
public func closest(_ word: String, among candidates: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let saved = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = saved
            }
        }
        return a.isEmpty ? b.count : row[b.count]
    }
    let w = Array(word.lowercased())
    let scored = candidates.map { ($0, distance(w, Array($0))) }.min { $0.1 < $1.1 }
    guard let (best, d) = scored, d <= min(3, max(1, w.count / 3)) else { return nil }
    return best
}
