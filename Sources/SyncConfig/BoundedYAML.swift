import Foundation
import Yams

/// YAML as syncd reads it: a file of bounded size whose tree, aliases expanded, stays small. An alias is cheap to
/// write and expands at load: 420 bytes of nested aliases reached 7.4 GB ("billion laughs"), and the daemon
/// reloads syncd.yaml on every edit. The tree is composed first (aliases shared, not copied), counted with a
/// bound, and only then turned into values.
enum BoundedYAML {
    static let maxFileBytes = configFileLimit
    /// Nodes the expanded tree may hold: far beyond any real syncd.yaml or compose file.
    static let maxNodes = 100_000

    /// The document in `text` as values (`[String: Any]`, `[Any]`, scalars), or nil for an empty one.
    static func load(_ text: String, file: String) throws -> Any? {
        guard text.utf8.count <= maxFileBytes else {
            throw ConfigError("\(file): \(text.utf8.count) bytes; a config file may have at most \(maxFileBytes) (1 MiB)")
        }
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch { throw ConfigError("\(file): not valid YAML: \(error)") }
        guard let node else { return nil }
        var budget = maxNodes
        guard fits(node, &budget) else {
            throw ConfigError("\(file): its YAML expands to more than \(maxNodes) nodes (aliases, `*name`, repeating an anchor's "
                              + "content?); refused")
        }
        return node.any
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
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw ConfigError("\(path): not a regular file") }
    guard st.st_size <= configFileLimit else {
        throw ConfigError("\(path): \(st.st_size) bytes; a config file may have at most \(configFileLimit) (1 MiB)")
    }
    guard let data = FileManager.default.contents(atPath: path) else { throw ConfigError("\(path): cannot read") }
    guard let text = String(data: data, encoding: .utf8) else { throw ConfigError("\(path): not UTF-8 text") }
    return text
}
