import Foundation
import Yams

/// What syncd needs of a Compose project: the services that build an image (context, Dockerfile, args,
/// target) and their bind mounts with relative paths. Read from `compose.yaml` (or `compose.yml`,
/// `docker-compose.yml`, `docker-compose.yaml`), with `compose.override.yaml` (or the other spellings) on top,
/// the way `docker compose` merges them: build settings key by key, mounts by target path.
public struct ComposeFile: Equatable, Sendable {
    public struct Service: Equatable, Sendable {
        public var name: String
        public var build: Build?
        public var mounts: [Mount]
    }

    public struct Build: Equatable, Sendable {
        /// Relative to the compose file's directory ("." for it).
        public var context: String
        public var dockerfile: String
        public var args: [String: String]
        public var target: String?
    }

    public struct Mount: Equatable, Sendable {
        /// As written: `./output` (a bind mount relative to the compose file), `/abs/path`, or a volume name.
        public var source: String
        public var target: String
        public var readOnly: Bool
        /// The source relative to the compose directory when it is a relative bind mount ("output"), else nil.
        public var relativeSource: String? {
            guard source.hasPrefix("./") || source == "." || source.hasPrefix("../") else { return nil }
            var parts: [Substring] = []
            for p in source.split(separator: "/") where p != "." && !p.isEmpty { parts.append(p) }
            return parts.isEmpty ? "." : parts.joined(separator: "/")
        }
    }

    public var files: [String]
    public var services: [Service]

    public static let mainNames = ["compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml"]
    public static let overrideNames = ["compose.override.yaml", "compose.override.yml", "docker-compose.override.yml",
                                       "docker-compose.override.yaml"]

    /// Reads the compose files in `directory`; nil when there is none.
    public static func load(directory: String) throws -> ComposeFile? {
        let fm = FileManager.default
        guard let main = mainNames.first(where: { fm.fileExists(atPath: directory + "/" + $0) }) else { return nil }
        var files = [main]
        if let over = overrideNames.first(where: { fm.fileExists(atPath: directory + "/" + $0) }) { files.append(over) }
        var merged: [String: Service] = [:]
        var order: [String] = []
        for file in files {
            let path = directory + "/" + file
            guard let text = try readConfigFile(path) else { throw ConfigError("\(path): cannot read") }
            for service in try parse(text, file: file) {
                if var existing = merged[service.name] {
                    existing.merge(service)
                    merged[service.name] = existing
                } else {
                    merged[service.name] = service
                    order.append(service.name)
                }
            }
        }
        return ComposeFile(files: files, services: order.map { merged[$0]! })
    }

    /// The services of one compose file's text (`file` names it in messages).
    public static func parse(_ text: String, file: String) throws -> [Service] {
        let node = try BoundedYAML.load(text, file: file)
        guard let root = node as? [String: Any] else { throw ConfigError("\(file): expected a mapping at the top") }
        guard let services = root["services"] as? [String: Any] else { return [] }
        var out: [Service] = []
        for name in services.keys.sorted() {
            guard let body = services[name] as? [String: Any] else { throw ConfigError("\(file): services.\(name) is not a mapping") }
            var service = Service(name: name, build: nil, mounts: [])
            switch body["build"] {
            case nil: break
            case let context as String:
                service.build = Build(context: context, dockerfile: "Dockerfile", args: [:], target: nil)
            case let map as [String: Any]:
                var build = Build(context: (map["context"] as? String) ?? ".", dockerfile: (map["dockerfile"] as? String) ?? "Dockerfile",
                                  args: [:], target: map["target"] as? String)
                build.args = try stringMap(map["args"], at: "\(file): services.\(name).build.args")
                service.build = build
            default:
                throw ConfigError("\(file): services.\(name).build must be a path or a mapping")
            }
            if let volumes = body["volumes"] as? [Any] {
                for (i, v) in volumes.enumerated() {
                    if let short = v as? String {
                        let parts = short.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                        guard parts.count >= 2 else { continue }  // an anonymous volume
                        service.mounts.append(Mount(source: parts[0], target: parts[1], readOnly: parts.count > 2 && parts[2].contains("ro")))
                    } else if let long = v as? [String: Any] {
                        guard (long["type"] as? String ?? "volume") == "bind" else { continue }
                        guard let source = long["source"] as? String, let target = long["target"] as? String else {
                            throw ConfigError("\(file): services.\(name).volumes[\(i)]: a bind mount needs source and target")
                        }
                        service.mounts.append(Mount(source: source, target: target, readOnly: long["read_only"] as? Bool ?? false))
                    }
                }
            }
            out.append(service)
        }
        return out
    }

    /// `args:` as a mapping or as a list of `KEY=VALUE` (a bare `KEY` takes the value from the environment).
    static func stringMap(_ value: Any?, at place: String) throws -> [String: String] {
        switch value {
        case nil: return [:]
        case let map as [String: Any]:
            return map.reduce(into: [:]) { $0[$1.key] = "\($1.value)" }
        case let list as [Any]:
            var out: [String: String] = [:]
            for item in list {
                let text = "\(item)"
                if let eq = text.firstIndex(of: "=") {
                    out[String(text[..<eq])] = String(text[text.index(after: eq)...])
                } else if let env = ProcessInfo.processInfo.environment[text] {
                    out[text] = env
                }
            }
            return out
        default:
            throw ConfigError("\(place) must be a mapping or a list")
        }
    }
}

extension ComposeFile.Service {
    /// An override file's service on top of this one.
    mutating func merge(_ other: ComposeFile.Service) {
        if let b = other.build {
            if var mine = build {
                mine.context = b.context
                if b.dockerfile != "Dockerfile" { mine.dockerfile = b.dockerfile }
                mine.args.merge(b.args) { $1 }
                mine.target = b.target ?? mine.target
                build = mine
            } else {
                build = b
            }
        }
        for m in other.mounts {
            mounts.removeAll { $0.target == m.target }
            mounts.append(m)
        }
    }
}
