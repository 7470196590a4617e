import Foundation
import Yams

/// YAML as syncd reads it: a file of bounded size whose tree, aliases expanded, stays small. An alias is cheap to
/// write and expands at load: 420 bytes of nested aliases reached 7.4 GB ("billion laughs"), and the daemon
/// reloads syncd.yaml on every edit. The tree is composed first (aliases shared, not copied), counted with a
/// bound, and only then turned into values (by syncd, not by Yams' constructors, which trap on some inputs).
enum BoundedYAML {
    static let maxFileBytes = configFileLimit
    /// Nodes the expanded tree may hold: far beyond any real syncd.yaml or compose file.
    static let maxNodes = 100_000

    /// The document in `text` as values (`[String: Any]`, `[Any]`, scalars), or nil for an empty one.
    static func load(_ text: String, file: String) throws -> Any? {
        guard text.utf8.count <= maxFileBytes else {
            throw ConfigError("\(file): \(text.utf8.count) bytes; a config file may have at most \(maxFileBytes) (1 MiB)")
        }
        // The parser recurses once per level of nesting: a file of brackets would exhaust the stack.
        let (depth, aliases) = scan(text)
        guard depth <= maxDepth else {
            throw ConfigError("\(file): YAML nested more than \(maxDepth) levels deep ([ and {); refused")
        }
        // Composing hashes each mapping key whole, aliases expanded, before any count can stop it: with k aliases
        // no tree passes about 3^(k/3) nodes, so few aliases keep even that bounded (32: some 65,000).
        guard aliases <= maxAliases else {
            throw ConfigError("\(file): \(aliases) YAML aliases (`*name`); a config file may use at most \(maxAliases); refused")
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch { throw ConfigError("\(file): not valid YAML: \(error)") }
        guard let node else { return nil }
        var budget = maxNodes
        guard fits(node, &budget) else {
            throw ConfigError("\(file): its YAML expands to more than \(maxNodes) nodes (aliases, `*name`, repeating an anchor's "
                              + "content?); refused")
        }
        return try value(node, file: file, depth: 0)
    }

    static let maxDepth = 64
    static let maxAliases = 32

    /// The deepest nesting of `[` and `{` outside quotes and comments (an upper bound of the flow nesting), and
    /// the aliases (`*name` where a node may start).
    static func scan(_ text: String) -> (depth: Int, aliases: Int) {
        var depth = 0, deepest = 0, aliases = 0
        var quote: UInt8?
        var comment = false
        var previous: UInt8 = 0x0A
        for c in text.utf8 {
            defer { previous = c }
            if comment { if c == 0x0A { comment = false }; continue }
            if let q = quote { if c == q { quote = nil }; continue }
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"): quote = c
            case UInt8(ascii: "#") where previous == 0x20 || previous == 0x0A || previous == 0x09: comment = true
            case UInt8(ascii: "*") where [0x20, 0x0A, 0x09, UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: ","), UInt8(ascii: ":"),
                                          UInt8(ascii: "?"), UInt8(ascii: "-")].contains(previous):
                aliases += 1
            case UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1; deepest = max(deepest, depth)
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth = max(0, depth - 1)
            default: break
            }
        }
        return (deepest, aliases)
    }

    /// A scalar as a value: quoted, a string; plain, a boolean (`true`/`false`, and YAML 1.1's `yes`/`no`/`on`/`off`),
    /// nothing (`~`, `null`, empty), a decimal or hexadecimal integer that fits, a decimal number, else a string. Yams'
    /// own constructors trap on some (a base-60 integer that overflows: `92999999999999999998:9`).
    static func value(_ scalar: Node.Scalar) -> Any {
        let text = scalar.string
        guard scalar.style == .plain else { return text }
        switch text {
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return true
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": return false
        case "", "~", "null", "Null", "NULL": return NSNull()
        default: break
        }
        if let n = Int(text) { return n }
        if text.hasPrefix("0x"), let n = Int(text.dropFirst(2), radix: 16) { return n }
        if text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), text.first.map({ $0.isNumber || $0 == "-" || $0 == "+" || $0 == "." }) == true,
           let d = Double(text), d.isFinite {
            return d
        }
        return text
    }

    /// A composed node as plain values: mappings as `[String: Any]` (keys must be scalars; `<<` merges, as YAML's
    /// merge key does), sequences as `[Any]`, scalars as Yams resolves them. Yams' own conversion traps on a key
    /// that is not a string.
    private static func value(_ node: Node, file: String, depth: Int) throws -> Any {
        guard depth <= maxDepth else { throw ConfigError("\(file): YAML nested more than \(maxDepth) levels deep; refused") }
        switch node {
        case .scalar(let scalar):
            return value(scalar)
        case .alias:
            throw ConfigError("\(file): an alias that was not resolved; refused")
        case .sequence(let sequence):
            return try sequence.map { try value($0, file: file, depth: depth + 1) }
        case .mapping(let mapping):
            var out: [String: Any] = [:]
            var merged: [String: Any] = [:]
            for (key, item) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw ConfigError("\(file):\(key.mark.map { "\($0.line):" } ?? "") a mapping key is not a string; refused")
                }
                if scalar.string == "<<" && scalar.style == .plain {
                    let sources: [Node]
                    switch item {
                    case .mapping: sources = [item]
                    case .sequence(let list): sources = Array(list)
                    default: throw ConfigError("\(file): `<<` must merge a mapping or a list of mappings")
                    }
                    for source in sources.reversed() {
                        guard let fields = try value(source, file: file, depth: depth + 1) as? [String: Any] else {
                            throw ConfigError("\(file): `<<` must merge a mapping or a list of mappings")
                        }
                        merged.merge(fields) { _, later in later }
                    }
                    continue
                }
                out[scalar.string] = try value(item, file: file, depth: depth + 1)
            }
            return merged.merging(out) { _, own in own }
        }
    }

    /// Counts `node`'s expanded tree against `budget`; false once it is spent (without looking further).
    private static func fits(_ node: Node, _ budget: inout Int) -> Bool {
        budget -= 1
        if budget < 0 { return false }
        switch node {
        case .scalar, .alias: return true
        case .mapping(let mapping):
            for (key, value) in mapping where !fits(key, &budget) || !fits(value, &budget) { return false }
            return true
        case .sequence(let sequence):
            for item in sequence where !fits(item, &budget) { return false }
            return true
        }
    }
}

/// Config files (syncd.yaml, compose files, ssh_config, Dockerfiles, ignore files) larger than this are refused
/// before they are read.
public let configFileLimit = 1 << 20

/// Reads the config file at `path` as UTF-8 text; nil when there is none. A file over `configFileLimit`, or one
/// that is not a regular file (a FIFO would block), is refused before it is read, naming it.
public func readConfigFile(_ path: String) throws -> String? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    if path == "/dev/null" { return "" }  // `--ssh-config /dev/null`, as with ssh -F
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw ConfigError("\(path): not a regular file") }
    guard st.st_size <= configFileLimit else {
        throw ConfigError("\(path): \(st.st_size) bytes; a config file may have at most \(configFileLimit) (1 MiB)")
    }
    guard let data = FileManager.default.contents(atPath: path) else { throw ConfigError("\(path): cannot read") }
    guard let text = String(data: data, encoding: .utf8) else { throw ConfigError("\(path): not UTF-8 text") }
    return text
}
