import Foundation

/// Where to connect and how, for one SSH destination: `~/.ssh/config` resolved for a host, with the
/// destination's own user and port taking precedence (as with ssh).
public struct SSHHostSettings: Equatable, Sendable {
    /// The name as given (alias or host).
    public var alias: String
    public var hostName: String
    public var user: String?
    public var port: Int = 22
    public var identityFiles: [String] = []
    public var userKnownHostsFiles: [String] = []
    /// "yes" (default), "accept-new", "no"/"off".
    public var strictHostKeyChecking: String = "yes"
    public var connectTimeoutSeconds: Int?
    public var serverAliveIntervalSeconds: Int?
    public var serverAliveCountMax: Int?
    /// `ProxyCommand` with `%h %p %r %n %%` expanded: run through `sh -c`, its stdin and stdout are the transport.
    public var proxyCommand: String?
    /// `ProxyJump`: the hops, in order, each with its own settings (the first with its own hops, if any). The
    /// connection to each goes through a `direct-tcpip` channel of the one before.
    public var jumps: [SSHHostSettings] = []
    /// `IdentitiesOnly yes`: only the configured identity files, and agent keys that are one of them.
    public var identitiesOnly = false
    /// `AddressFamily`: `inet`, `inet6`, or nil for either.
    public var addressFamily: String?
    /// The ssh_config file these settings were read from (for messages).
    public var configFile: String?

    public init(alias: String, hostName: String) {
        self.alias = alias
        self.hostName = hostName
    }
}

/// `~` and `~/…` against `home`; other paths unchanged.
public func expandTilde(_ path: String, home: String) -> String {
    if path == "~" { return home }
    if path.hasPrefix("~/") { return home + path.dropFirst(1) }
    return path
}

/// A parsed `[user@]host[:port]` (IPv6 literals in brackets: `[::1]:2222`).
public struct SSHDestination: Equatable, Sendable {
    public var user: String?
    public var host: String
    public var port: Int?

    public init(parsing text: String) throws {
        var rest = Substring(text)
        if let at = rest.lastIndex(of: "@") {
            user = String(rest[..<at])
            rest = rest[rest.index(after: at)...]
        }
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw ConfigError("destination '\(text)': missing ']' after an IPv6 address") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw ConfigError("destination '\(text)': bad port") }
                port = p
            } else if !after.isEmpty {
                throw ConfigError("destination '\(text)': unexpected text after ']'")
            }
        } else if let colon = rest.lastIndex(of: ":"), rest.firstIndex(of: ":") == colon {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65535).contains(p) else {
                throw ConfigError("destination '\(text)': bad port")
            }
            port = p
        } else {
            host = String(rest)
        }
        if host.isEmpty { throw ConfigError("destination '\(text)': empty host name") }
        if user?.isEmpty == true { throw ConfigError("destination '\(text)': empty user name") }
    }
}

/// The subset of ssh_config(5) syncd honours: Host blocks with `*`, `?` and `!` patterns (several per line),
/// first value wins, `Include` (relative to ~/.ssh, globs allowed), HostName, User, Port, IdentityFile,
/// IdentitiesOnly, UserKnownHostsFile, StrictHostKeyChecking, ConnectTimeout, ServerAliveInterval,
/// ServerAliveCountMax, AddressFamily, ProxyCommand and ProxyJump. A keyword that would change where or how to
/// connect and that syncd does not implement (`Match`, `ProxyUseFdpass`, `HostKeyAlias`, `Ciphers`, …) is an
/// error naming it, its file and line: the user's policy is never dropped in silence. Other keywords (forwarding,
/// multiplexing, terminal settings) do not change where the connection goes, and are ignored.
public struct SSHConfigFile {
    struct Line {
        let keyword: String
        let arguments: [String]
        let file: String
        let number: Int
        /// The line after its keyword (and `=`), as written: ProxyCommand's command, quotes and all.
        var rest: String = ""
    }

    private var lines: [Line] = []
    private let home: String
    /// The file read first (its Includes aside).
    private var root = ""

    /// Reads `path` (a missing file is an empty config). `home` expands `~`.
    public init(path: String, home: String = NSHomeDirectory()) throws {
        self.home = home
        root = path
        try load(path, depth: 0)
    }

    /// Config `text` as if read from `file` (its Includes are read from disk).
    public init(text: String, file: String, home: String = NSHomeDirectory()) throws {
        self.home = home
        root = file
        try load(text: text, path: file, depth: 0)
    }

    private mutating func load(_ path: String, depth: Int) throws {
        guard depth < 16 else { throw ConfigError("\(path): Include nested too deeply") }
        guard let text = try readConfigFile(path) else { return }
        try load(text: text, path: path, depth: depth)
    }

    private mutating func load(text: String, path: String, depth: Int) throws {
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            let words = Self.split(String(raw))
            guard let first = words.first, !first.hasPrefix("#") else { continue }
            var keyword = first
            var arguments = Array(words.dropFirst())
            if let eq = keyword.firstIndex(of: "=") {
                let value = String(keyword[keyword.index(after: eq)...])
                keyword = String(keyword[..<eq])
                if !value.isEmpty { arguments.insert(value, at: 0) }
            } else if arguments.first == "=" {
                arguments.removeFirst()
            }
            keyword = keyword.lowercased()
            if keyword == "include" {
                for pattern in arguments {
                    var full = expandTilde(pattern)
                    if !full.hasPrefix("/") { full = home + "/.ssh/" + full }
                    for match in Self.glob(full) {
                        // Include is spliced in place, keeping the Host context of the including file.
                        try load(match, depth: depth + 1)
                    }
                }
                continue
            }
            lines.append(Line(keyword: keyword, arguments: arguments, file: path, number: number, rest: Self.rest(of: String(raw))))
        }
    }

    /// The text after a line's keyword and its separator (spaces, or `=` with spaces around it), unchanged.
    static func rest(of line: String) -> String {
        var text = Substring(line.trimmingCharacters(in: .whitespaces))
        text = text.drop { !($0 == " " || $0 == "\t" || $0 == "=") }
        text = text.drop { $0 == " " || $0 == "\t" }
        if text.first == "=" { text = text.dropFirst().drop { $0 == " " || $0 == "\t" } }
        return String(text).trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
    }

    /// Splits a config line into words, honouring double quotes.
    static func split(_ line: String) -> [String] {
        var words: [String] = []
        var current = ""
        var quoted = false
        var has = false
        for ch in line {
            if ch == "\"" { quoted.toggle(); has = true; continue }
            if !quoted && (ch == " " || ch == "\t" || ch == "\r") {
                if has { words.append(current); current = ""; has = false }
                continue
            }
            current.append(ch)
            has = true
        }
        if has { words.append(current) }
        return words
    }

    static func glob(_ pattern: String) -> [String] {
        guard pattern.contains("*") || pattern.contains("?") else { return [pattern] }
        var g = glob_t()
        defer { globfree(&g) }
        guard Foundation.glob(pattern, 0, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }
    }

    private func expandTilde(_ path: String) -> String { SyncConfig.expandTilde(path, home: home) }

    /// True when `host` matches a Host line's patterns: some positive pattern matches and no negated one does.
    static func hostMatches(_ host: String, patterns: [String]) -> Bool {
        var matched = false
        for raw in patterns {
            for p in raw.split(separator: ",").map(String.init) {
                if p.hasPrefix("!") {
                    if wildcard(String(p.dropFirst()), host) { return false }
                } else if wildcard(p, host) {
                    matched = true
                }
            }
        }
        return matched
    }

    /// `*` and `?` matching, case-insensitive, as ssh does for host names.
    static func wildcard(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern.lowercased().utf8), t = Array(text.lowercased().utf8)
        var pi = 0, ti = 0, starP = -1, starT = 0
        while ti < t.count {
            if pi < p.count && (p[pi] == UInt8(ascii: "?") || p[pi] == t[ti]) { pi += 1; ti += 1 }
            else if pi < p.count && p[pi] == UInt8(ascii: "*") { starP = pi; starT = ti; pi += 1 }
            else if starP >= 0 { pi = starP + 1; starT += 1; ti = starT }
            else { return false }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }

    /// A whole number of seconds (or a count) from 0 or 1 up to a day: syncd waits in milliseconds, and a
    /// larger number would not fit the calls that take them.
    static func seconds(_ value: String, _ line: Line, atLeast least: Int, counting: Bool = false) throws -> Int {
        guard let n = Int(value), n >= least, n <= 86_400 else {
            throw ConfigError("\(line.file):\(line.number): \(line.keyword) '\(value)' must be \(counting ? "a count" : "a number of seconds") from \(least) to 86400")
        }
        return n
    }

    /// Keywords that change where or how a connection is made which syncd does not implement, with the values
    /// that change nothing (and so are accepted).
    static let unimplemented: [String: Set<String>] = [
        "proxyusefdpass": ["no"], "canonicalizehostname": ["no"], "bindaddress": [], "bindinterface": [], "hostkeyalias": [],
        "certificatefile": [], "pkcs11provider": ["none"], "securitykeyprovider": ["internal"], "identityagent": ["SSH_AUTH_SOCK"],
        "kexalgorithms": [], "ciphers": [], "macs": [], "hostkeyalgorithms": [], "pubkeyacceptedalgorithms": [],
        "pubkeyacceptedkeytypes": [], "tunnel": ["no"], "gatewayports": ["no"], "hostbasedauthentication": ["no"],
        "revokedhostkeys": [], "verifyhostkeydns": ["no"],
    ]

    /// Settings for `destination` (an alias or `[user@]host[:port]`).
    public func settings(for destinationText: String) throws -> SSHHostSettings {
        try settings(for: destinationText, depth: 0)
    }

    private func settings(for destinationText: String, depth: Int) throws -> SSHHostSettings {
        guard depth < 8 else { throw ConfigError("ProxyJump to \(destinationText): more than 8 hops (a loop?)") }
        let destination = try SSHDestination(parsing: destinationText)
        var s = SSHHostSettings(alias: destination.host, hostName: destination.host)
        s.configFile = root
        var seen: Set<String> = []
        var active = true
        var proxyCommand: (String, Line)?
        var proxyJump: (String, Line)?
        for line in lines {
            switch line.keyword {
            case "host":
                active = Self.hostMatches(destination.host, patterns: line.arguments)
                continue
            case "match":
                throw ConfigError("\(line.file):\(line.number): Match blocks are not supported by syncd (its conditions could change where "
                                  + "\(destination.host) is reached); use Host blocks, or a config file of its own (ssh_config: in syncd.yaml)")
            default:
                break
            }
            guard active, let value = line.arguments.first else { continue }
            let firstTime = !seen.contains(line.keyword)
            switch line.keyword {
            case "hostname": if firstTime { s.hostName = value.replacingOccurrences(of: "%h", with: destination.host) }
            case "user": if firstTime { s.user = value }
            case "port":
                if firstTime {
                    guard let p = Int(value), (1...65535).contains(p) else {
                        throw ConfigError("\(line.file):\(line.number): Port '\(value)' is not a port number")
                    }
                    s.port = p
                }
            case "identityfile": s.identityFiles.append(expandTilde(value))
            case "userknownhostsfile": if firstTime { s.userKnownHostsFiles = line.arguments.map(expandTilde) }
            case "stricthostkeychecking": if firstTime { s.strictHostKeyChecking = value.lowercased() }
            case "connecttimeout": if firstTime { s.connectTimeoutSeconds = try Self.seconds(value, line, atLeast: 1) }
            case "serveraliveinterval": if firstTime { s.serverAliveIntervalSeconds = try Self.seconds(value, line, atLeast: 0) }
            case "serveralivecountmax": if firstTime { s.serverAliveCountMax = try Self.seconds(value, line, atLeast: 1, counting: true) }
            case "identitiesonly":
                if firstTime { s.identitiesOnly = try Self.flag(value, line) }
            case "addressfamily":
                guard ["any", "inet", "inet6"].contains(value.lowercased()) else {
                    throw ConfigError("\(line.file):\(line.number): AddressFamily '\(value)' must be any, inet or inet6")
                }
                if firstTime { s.addressFamily = value.lowercased() == "any" ? nil : value.lowercased() }
            case "proxycommand":
                // The first of ProxyCommand and ProxyJump wins, as in ssh.
                if !seen.contains("proxycommand") && !seen.contains("proxyjump") && value.lowercased() != "none" {
                    proxyCommand = (line.rest, line)  // as written: sh reads its quotes
                }
                seen.insert("proxyjump")
            case "proxyjump":
                if !seen.contains("proxycommand") && !seen.contains("proxyjump") && value.lowercased() != "none" {
                    proxyJump = (line.arguments.joined(separator: ","), line)
                }
                seen.insert("proxycommand")
            default:
                if let harmless = Self.unimplemented[line.keyword], !harmless.contains(value.lowercased()) && !harmless.contains(value) {
                    throw ConfigError("\(line.file):\(line.number): \(line.keyword) is not supported by syncd, and it changes how "
                                      + "\(destination.host) is reached; remove it for this host (or use a config file of its own: ssh_config: in syncd.yaml)")
                }
            }
            seen.insert(line.keyword)
        }
        if let user = destination.user { s.user = user }
        if let port = destination.port { s.port = port }
        if let (command, line) = proxyCommand {
            s.proxyCommand = try Self.expandTokens(command, s, line)
        } else if let (list, line) = proxyJump {
            for (i, hop) in list.split(separator: ",").map({ String($0).trimmingCharacters(in: .whitespaces) }).enumerated() {
                let text = hop.hasPrefix("ssh://") ? String(hop.dropFirst(6)) : hop
                do {
                    var jump = try settings(for: text, depth: depth + 1)
                    if i > 0 { jump.jumps = []; jump.proxyCommand = nil }  // later hops go through the earlier ones
                    s.jumps.append(jump)
                } catch let e as ConfigError {
                    throw ConfigError("\(line.file):\(line.number): ProxyJump \(hop): \(e)")
                }
            }
        }
        return s
    }

    static func flag(_ value: String, _ line: Line) throws -> Bool {
        switch value.lowercased() {
        case "yes", "true": return true
        case "no", "false": return false
        default: throw ConfigError("\(line.file):\(line.number): \(line.keyword) '\(value)' must be yes or no")
        }
    }

    /// `%h` (host name), `%p` (port), `%r` (user), `%n` (the name as given) and `%%`, as ssh expands them. The
    /// command goes to a shell: a host or user name holding anything a shell would interpret (a destination from
    /// a cloned repository's syncd.yaml, or from a swarm's node list) is refused, as OpenSSH 9.6 refuses them.
    static func expandTokens(_ text: String, _ s: SSHHostSettings, _ line: Line) throws -> String {
        let user = s.user ?? ProcessInfo.processInfo.environment["USER"] ?? "root"
        for (what, value) in [("host name", s.hostName), ("user name", user), ("host", s.alias)] {
            let safe = !value.isEmpty && !value.hasPrefix("-")
                && value.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "._-:[]%@".unicodeScalars.contains($0) }
            guard safe else {
                throw ConfigError("\(line.file):\(line.number): \(line.keyword): the \(what) '\(value)' holds characters a shell would "
                                  + "interpret; refused")
            }
        }
        var out = ""
        var iterator = text.makeIterator()
        while let ch = iterator.next() {
            guard ch == "%" else { out.append(ch); continue }
            switch iterator.next() {
            case "h": out += s.hostName
            case "p": out += String(s.port)
            case "r": out += user
            case "n": out += s.alias
            case "%": out += "%"
            case let other:
                throw ConfigError("\(line.file):\(line.number): \(line.keyword): '%\(other.map(String.init) ?? "")' is not a token syncd expands (%h %p %r %n %%)")
            }
        }
        return out
    }
}
