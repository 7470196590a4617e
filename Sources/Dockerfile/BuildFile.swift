import Foundation

/// A Dockerfile resolved for one build: build args applied, stages linked, and for each instruction what it
/// reads from the build context.
public struct BuildFile: Sendable {
    public var stages: [Stage]
    /// What the model cannot follow (ONBUILD, a custom frontend); when not empty, the whole context matters.
    public var notes: [String]
    public var wholeContextMatters: Bool { !notes.isEmpty }

    public struct Stage: Sendable {
        public var index: Int
        public var name: String?
        /// The base image after expansion, or the name of the stage it builds on.
        public var base: String
        public var baseStage: Int?
        public var steps: [Step]
        public var line: Int
        public var displayName: String { name ?? "stage \(index)" }
    }

    /// One instruction of a stage.
    public struct Step: Sendable {
        public var keyword: String
        /// The instruction with variables expanded, as shown and hashed (heredoc bodies included).
        public var text: String
        public var line: Int
        /// What it reads from the build context; empty for most instructions.
        public var reads: [ContextRead]
        /// Stages whose result it reads (`COPY --from=stage`, `RUN --mount=from=stage`).
        public var stageInputs: [Int]
        /// An image it reads from (`COPY --from=image`); its content is outside the context.
        public var imageInput: String?
    }

    /// Sources of one COPY/ADD (or bind mount) in the context: cleaned relative paths, maybe with wildcards.
    public struct ContextRead: Equatable, Sendable {
        public var sources: [String]
        /// `--exclude` patterns, matched below each source.
        public var excludes: [String]
        public init(sources: [String], excludes: [String] = []) {
            self.sources = sources
            self.excludes = excludes
        }
    }

    /// Resolves `syntax` with `buildArgs` (compose `args:` or `--build-arg`).
    public init(_ syntax: DockerfileSyntax, buildArgs: [String: String] = [:], file: String = "Dockerfile") throws {
        stages = []
        notes = []
        if let frontend = syntax.directives["syntax"], !Self.isStockFrontend(frontend) {
            notes.append("custom frontend '# syntax=\(frontend)': its instructions cannot be modelled, so the whole context counts")
        }
        var globalArgs: [String: String] = [:]
        var stageArgs: [String: String] = [:]
        var env: [String: String] = [:]
        var envByStage: [[String: String]] = []
        func fail(_ line: Int, _ message: String) -> DockerfileError { DockerfileError(file: file, line: line, message: message) }
        func lexer(_ scope: [String: String]) -> ShellWords { ShellWords(escape: syntax.escape) { scope[$0] } }

        func append(_ raw: RawInstruction, text: String) throws {
            guard !stages.isEmpty else { throw fail(raw.line, "\(raw.keyword) before the first FROM") }
            stages[stages.count - 1].steps.append(Step(keyword: raw.keyword, text: text, line: raw.line, reads: [], stageInputs: [], imageInput: nil))
        }
        func append(_ raw: RawInstruction, copy: RawInstruction, lexer: ShellWords) throws {
            guard !stages.isEmpty else { throw fail(raw.line, "\(raw.keyword) before the first FROM") }
            let args = try Self.arguments(raw.rest, lexer: lexer, file: file, line: raw.line)
            guard args.count >= 2 else { throw fail(raw.line, "\(raw.keyword) needs a source and a destination") }
            let sources = args.dropLast()
            var step = Step(keyword: raw.keyword, text: "", line: raw.line, reads: [], stageInputs: [], imageInput: nil)
            let flags = try raw.flags.map { ($0.name, try lexer.expand($0.value)) }
            step.text = ([raw.keyword] + flags.map { "--\($0.0)" + ($0.1.isEmpty ? "" : "=\($0.1)") } + args).joined(separator: " ")
                + raw.heredocs.map { "\n" + $0.body + $0.name }.joined()
            if let from = flags.last(where: { $0.0 == "from" })?.1 {
                if let stage = stageIndex(from) { step.stageInputs = [stage] } else { step.imageInput = from }
            } else {
                let heredocNames = Set(raw.heredocs.map { "<<" + $0.name } + raw.heredocs.map { "<<-" + $0.name })
                var fromContext: [String] = []
                for source in sources {
                    if heredocNames.contains(source) || source.hasPrefix("<<") { continue }  // made by the heredoc
                    if raw.keyword == "ADD" && Self.isRemote(source) { continue }             // fetched, not read
                    fromContext.append(Self.cleanSource(source))
                }
                if !fromContext.isEmpty {
                    step.reads = [ContextRead(sources: fromContext, excludes: flags.filter { $0.0 == "exclude" }.map(\.1))]
                }
            }
            stages[stages.count - 1].steps.append(step)
        }
        func append(_ raw: RawInstruction, run: RawInstruction, lexer: ShellWords) throws {
            guard !stages.isEmpty else { throw fail(raw.line, "RUN before the first FROM") }
            var step = Step(keyword: "RUN", text: "", line: raw.line, reads: [], stageInputs: [], imageInput: nil)
            var shown: [String] = []
            for (name, rawValue) in raw.flags {
                let value = try lexer.expand(rawValue)
                shown.append("--\(name)" + (value.isEmpty ? "" : "=\(value)"))
                guard name == "mount" else { continue }
                var fields: [String: String] = [:]
                for part in value.split(separator: ",") {
                    let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    fields[String(kv[0]).lowercased()] = kv.count == 2 ? String(kv[1]) : "true"
                }
                guard (fields["type"] ?? "bind") == "bind" else { continue }
                let source = fields["source"] ?? fields["src"] ?? "."
                if let from = fields["from"] {
                    if let stage = stageIndex(from) { step.stageInputs.append(stage) } else { step.imageInput = from }
                } else {
                    step.reads.append(ContextRead(sources: [Self.cleanSource(source)]))
                }
            }
            // The command itself is not expanded by the frontend (the shell does it at build time).
            step.text = (["RUN"] + shown + [raw.rest]).joined(separator: " ") + raw.heredocs.map { "\n" + $0.body + $0.name }.joined()
            stages[stages.count - 1].steps.append(step)
        }
        func stageIndex(_ reference: String) -> Int? {
            if let n = Int(reference), n >= 0, n < stages.count - 1 { return n }
            return stages.firstIndex { $0.name == reference.lowercased() }
        }
        for raw in syntax.instructions {
            let inStage = !stages.isEmpty
            let scope = inStage ? stageArgs.merging(env) { $1 } : globalArgs
            do {
                switch raw.keyword {
                case "ARG":
                    var shown: [String] = []
                    for word in try lexer(scope).words(raw.rest) {
                        let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                        let name = String(parts[0])
                        let value = buildArgs[name] ?? (parts.count == 2 ? String(parts[1]) : (inStage ? globalArgs[name] : nil))
                        if inStage { stageArgs[name] = value } else { globalArgs[name] = value }
                        shown.append(name + (value.map { "=" + $0 } ?? ""))
                    }
                    // In a stage an ARG's value reaches later RUN steps, so it is part of the chain of keys.
                    if inStage { try append(raw, text: "ARG " + shown.joined(separator: " ")) }
                case "FROM":
                    let words = try lexer(globalArgs).words(raw.rest)
                    guard let image = words.first else { throw fail(raw.line, "FROM without an image") }
                    var name: String?
                    if words.count >= 3, words[1].uppercased() == "AS" { name = words[2].lowercased() }
                    let baseStage = stages.firstIndex { $0.name == image.lowercased() }
                    stages.append(Stage(index: stages.count, name: name, base: image, baseStage: baseStage, steps: [], line: raw.line))
                    env = baseStage.map { envByStage[$0] } ?? [:]
                    envByStage.append(env)
                    stageArgs = [:]
                case "ONBUILD":
                    notes.append("ONBUILD at line \(raw.line): triggers run in later builds and are not modelled, so the whole context counts")
                    try append(raw, text: "ONBUILD " + raw.rest)
                case "ENV":
                    guard inStage else { throw fail(raw.line, "ENV before the first FROM (only ARG may come before it)") }
                    for (k, v) in try Self.keyValues(raw.rest, lexer: lexer(scope)) { env[k] = v }
                    envByStage[stages.count - 1] = env
                    try append(raw, text: "ENV " + raw.rest)
                case "COPY", "ADD":
                    try append(raw, copy: raw, lexer: lexer(scope))
                case "RUN":
                    try append(raw, run: raw, lexer: lexer(scope))
                default:
                    // Shown as written; where variables were expanded, their values are part of the key too.
                    var text = raw.keyword + " " + raw.rest
                    if raw.rest.contains("$") { text += "\n# expanded: " + (try lexer(scope).words(raw.rest).joined(separator: " ")) }
                    try append(raw, text: text)
                }
            } catch let e as ShellWords.ExpansionError {
                throw fail(raw.line, "\(raw.keyword): \(e)")
            }
        }
        guard !stages.isEmpty else { throw fail(1, "no FROM instruction") }
    }

    /// The stages `target` needs (itself, its bases, and what it copies or mounts from), in file order.
    /// `target` nil means the last stage.
    public func stagesNeeded(target: String?) throws -> [Int] {
        let start: Int
        if let target {
            guard let found = stages.firstIndex(where: { $0.name == target.lowercased() }) else {
                throw DockerfileError(file: "Dockerfile", line: 0, message: "target stage '\(target)' not found; stages: \(stages.compactMap(\.name).joined(separator: ", "))")
            }
            start = found
        } else {
            start = stages.count - 1
        }
        var needed: Set<Int> = []
        var stack = [start]
        while let s = stack.popLast() {
            guard needed.insert(s).inserted else { continue }
            if let b = stages[s].baseStage { stack.append(b) }
            for step in stages[s].steps { stack.append(contentsOf: step.stageInputs) }
        }
        return needed.sorted()
    }

    // MARK: helpers

    static func isStockFrontend(_ ref: String) -> Bool {
        var r = ref.lowercased()
        for prefix in ["docker.io/", "index.docker.io/"] where r.hasPrefix(prefix) { r.removeFirst(prefix.count) }
        if let at = r.firstIndex(of: "@") { r = String(r[..<at]) }
        let name = r.split(separator: ":", maxSplits: 1).first.map(String.init) ?? r
        return name == "docker/dockerfile" || name == "docker/dockerfile-upstream"
    }

    static func isRemote(_ source: String) -> Bool {
        let s = source.lowercased()
        return s.hasPrefix("http://") || s.hasPrefix("https://") || s.hasPrefix("git@") || s.hasPrefix("git://")
            || s.hasPrefix("ssh://") || (s.hasSuffix(".git") && s.contains("://"))
    }

    /// A source as a path relative to the context: leading "/" and "./" dropped, "." for the whole context.
    public static func cleanSource(_ source: String) -> String {
        var parts: [Substring] = []
        for part in source.split(separator: "/") {
            if part == "." || part.isEmpty { continue }
            if part == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(part)
        }
        return parts.isEmpty ? "." : parts.joined(separator: "/")
    }

    /// An `--exclude` pattern as a path pattern: "./" and a leading "/" dropped.
    public static func cleanSourcePattern(_ pattern: String) -> String {
        let cleaned = cleanSource(pattern)
        return cleaned == "." ? "*" : cleaned
    }

    /// JSON form (`["a", "b"]`) or shell words.
    static func arguments(_ rest: String, lexer: ShellWords, file: String, line: Int) throws -> [String] {
        let t = rest.trimmingWhitespace()
        if t.hasPrefix("["), let data = t.data(using: .utf8),
           let array = try? JSONSerialization.jsonObject(with: data) as? [String] {
            return try array.map { try lexer.expand($0) }
        }
        return try lexer.words(rest)
    }

    /// `ENV a=1 b="two words"` or the legacy `ENV a one value`.
    static func keyValues(_ rest: String, lexer: ShellWords) throws -> [(String, String)] {
        let words = try lexer.words(rest)
        guard let first = words.first else { return [] }
        if !first.contains("=") {
            let value = rest.trimmingWhitespace().dropFirst(first.count).trimmingCharactersSpace()
            return [(first, try lexer.expand(String(value)))]
        }
        return words.map { word in
            let kv = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (String(kv[0]), kv.count == 2 ? String(kv[1]) : "")
        }
    }
}

extension Substring {
    fileprivate func trimmingCharactersSpace() -> Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" { s = s.dropFirst() }
        return s
    }
}
