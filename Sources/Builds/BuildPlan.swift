import Client
import Chunking
import Dockerfile
import Foundation
import SyncConfig
import LocalState
import ProjectScan
import SyncRules
import SyncSystem

/// One image build to plan: where its context and Dockerfile are, its build args and target.
public struct BuildSpec: Sendable {
    /// The service name (compose), or the project's name for a lone Dockerfile.
    public var name: String
    /// The context directory, relative to the project ("" for the project itself).
    public var context: String
    /// The Dockerfile, relative to the context.
    public var dockerfile: String
    public var args: [String: String]
    public var target: String?

    public init(name: String, context: String = "", dockerfile: String = "Dockerfile", args: [String: String] = [:], target: String? = nil) {
        self.name = name
        self.context = context
        self.dockerfile = dockerfile
        self.args = args
        self.target = target
    }
}

/// What a build will read and which of its layers will be rebuilt: BuildKit's cache keys, worked out from the
/// local files. A layer's key chains the previous layer's key, the instruction (variables expanded) and, for a
/// COPY/ADD or bind mount from the context, every selected file's relative path, mode, size and content digest
/// (not its mtime, as BuildKit leaves it out). A layer whose key differs from the last recorded build is rebuilt,
/// and so is everything after it in its stage.
public struct BuildPlan: Sendable {
    public struct Layer: Sendable {
        /// The instruction's text as keyed (heredoc bodies and expanded values on further lines).
        public var instruction: String
        /// Its first line, as written.
        public var display: String { instruction.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? instruction }
        public var line: Int
        public var files: Int
        public var bytes: UInt64
        public var key: ChunkID
        /// Differs from the key recorded at the last build (true when none was recorded).
        public var changed: Bool
        /// Context files it selects (relative to the context), for push ordering.
        public var paths: [RelativePath]
    }

    public struct Stage: Sendable {
        public var name: String
        public var layers: [Layer]
    }

    public var spec: BuildSpec
    public var stages: [Stage]
    /// What `docker build` would send: every file of the context not excluded by the ignore file.
    public var contextFiles: Int
    public var contextBytes: UInt64
    /// What the build's instructions read from it.
    public var neededFiles: Int
    public var neededBytes: UInt64
    public var warnings: [String]
    /// The ignore file in effect, relative to the project ("" for none).
    public var ignoreFile: String

    /// Context files read by the earliest changed layer and the layers after it, earliest first: what a push
    /// should send first so the build can start.
    public var changedFilesInBuildOrder: [RelativePath] {
        var out: [RelativePath] = []
        var seen: Set<RelativePath> = []
        for stage in stages {
            guard let first = stage.layers.firstIndex(where: \.changed) else { continue }
            for layer in stage.layers[first...] {
                for p in layer.paths where seen.insert(p).inserted { out.append(p) }
            }
        }
        return out
    }

    /// A one-line account: "web: 2 of 7 layers rebuild (from COPY src/ /app/src/), 12 files, 1.2 MB needed of 412 MB".
    public var summary: String {
        let layers = stages.flatMap(\.layers)
        let changed = stages.flatMap { s in s.layers.firstIndex(where: \.changed).map { Array(s.layers[$0...]) } ?? [] }
        let first = changed.first.map { " (from \($0.display))" } ?? ""
        return "\(spec.name): \(changed.count) of \(layers.count) layers rebuild\(first); context: \(formatBytes(neededBytes)) read of \(formatBytes(contextBytes)) sent by docker build"
            + (warnings.isEmpty ? "" : "; \(warnings.count) warning(s)")
    }

    /// Works out the plan from the files on disk; `recorded` holds the layer keys of the last build.
    public static func make(project: Project, spec: BuildSpec, recorded: [String: String] = [:]) throws -> BuildPlan {
        let contextPath = spec.context.isEmpty ? project.directory : project.directory + "/" + spec.context
        let dockerfilePath = contextPath + "/" + spec.dockerfile
        let dockerfile: String?
        do { dockerfile = try readConfigFile(dockerfilePath) } catch { throw SyncError("\(spec.name): \(error)", code: .usage) }
        guard let text = dockerfile else { throw SyncError("\(spec.name): cannot read \(dockerfilePath)", code: .usage) }
        let shownFile = (spec.context.isEmpty ? "" : spec.context + "/") + spec.dockerfile
        let build: BuildFile
        do {
            build = try BuildFile(try DockerfileParser.parse(text, file: shownFile), buildArgs: spec.args, file: shownFile)
        } catch let e as DockerfileError {
            throw SyncError("\(e)", code: .usage)
        }
        let needed: [Int]
        do { needed = try build.stagesNeeded(target: spec.target) } catch let e as DockerfileError {
            throw SyncError("\(spec.name): \(e.message)", code: .usage)
        }

        let (rules, ignoreFile) = try contextRules(dockerfilePath: dockerfilePath, contextPath: contextPath, in: project)
        let context = try ContextFiles(project: project, contextPath: contextPath, contextRelative: spec.context, rules: rules)

        var plan = BuildPlan(spec: spec, stages: [], contextFiles: context.files.count,
                             contextBytes: context.files.values.reduce(0) { $0 + $1.size }, neededFiles: 0, neededBytes: 0,
                             warnings: build.notes, ignoreFile: ignoreFile)
        var finalKeys: [Int: ChunkID] = [:]
        var read: Set<RelativePath> = []
        for index in needed {
            let stage = build.stages[index]
            var key = stage.baseStage.flatMap { finalKeys[$0] } ?? ChunkID(hashing: Array("FROM \(stage.base)".utf8))
            var layers: [Layer] = []
            var invalidated = false
            for (n, step) in stage.steps.enumerated() {
                var input = Array("\(key.hex)\n\(step.text)\n".utf8)
                var selected: [RelativePath] = []
                for r in step.reads {
                    let (paths, missing) = context.select(r)
                    selected += paths
                    for source in missing {
                        plan.warnings.append("\(shownFile):\(step.line): \(step.keyword) \(source): no file in the context matches"
                                             + (ignoreFile.isEmpty ? "" : " (excluded by \(ignoreFile)?)"))
                    }
                }
                selected = Array(Set(selected)).sorted()
                for p in selected {
                    let f = context.files[p]!
                    input += p.bytes + Array("\0\(String(f.mode, radix: 8))\0\(f.size)\0\(f.digest.hex)\n".utf8)
                }
                for s in step.stageInputs { input += Array("stage:\(finalKeys[s]?.hex ?? "?")\n".utf8) }
                if let image = step.imageInput { input += Array("image:\(image)\n".utf8) }
                key = ChunkID(hashing: input)
                read.formUnion(selected)
                let recordKey = "\(stage.displayName)#\(n)"
                let changed = invalidated || recorded[recordKey] != key.hex
                if changed { invalidated = true }
                layers.append(Layer(instruction: step.text, line: step.line, files: selected.count,
                                    bytes: selected.reduce(0) { $0 + context.files[$1]!.size }, key: key, changed: changed,
                                    paths: selected))
            }
            finalKeys[index] = key
            plan.stages.append(Stage(name: stage.displayName, layers: layers))
        }
        if build.wholeContextMatters { read = Set(context.files.keys) }
        plan.neededFiles = read.count
        plan.neededBytes = read.reduce(0) { $0 + context.files[$1]!.size }

        plan.warnings += unreadWarnings(context, read: read, contextBytes: plan.contextBytes, ignoreFile: ignoreFile)
        return plan
    }

    /// The context's ignore rules: `<Dockerfile>.dockerignore` beside the Dockerfile replaces the context's
    /// .dockerignore. Returns them and the file they came from ("" for none), relative to the project.
    private static func contextRules(dockerfilePath: String, contextPath: String, in project: Project) throws -> (IgnoreRules, String) {
        var rules = IgnoreRules()
        for candidate in [dockerfilePath + ".dockerignore", contextPath + "/.dockerignore"] {
            let contents: String?
            do { contents = try readConfigFile(candidate) } catch { throw SyncError("\(error)", code: .usage) }
            guard let contents else { continue }
            do { try rules.add(fileContents: contents, source: candidate) } catch { throw SyncError("\(error)", code: .usage) }
            return (rules, String(candidate.dropFirst(project.directory.count + 1)))
        }
        return (rules, "")
    }

    /// Big parts of the context nobody reads: each worth a line in the ignore file.
    private static func unreadWarnings(_ context: ContextFiles, read: Set<RelativePath>, contextBytes: UInt64, ignoreFile: String) -> [String] {
        var unread: [RelativePath: UInt64] = [:]
        for (path, f) in context.files where !read.contains(path) {
            guard let top = try? RelativePath.top(path.firstComponent) else { continue }
            unread[top, default: 0] += f.size
        }
        let threshold = max(UInt64(1 << 20), contextBytes / 10)
        return unread.sorted(by: { $0.value > $1.value }).filter { $0.value >= threshold }.map { top, bytes in
            let isDir = context.files[top] == nil
            return "\(top)\(isDir ? "/" : "") (\(formatBytes(bytes))) is in the build context but no instruction reads it: add it to \(ignoreFile.isEmpty ? ".dockerignore" : ignoreFile)"
        }
    }

    /// The keys to record once this build is run, for the next plan's `changed`.
    public var keysToRecord: [String: String] {
        var out: [String: String] = [:]
        for stage in stages {
            for (n, layer) in stage.layers.enumerated() { out["\(stage.name)#\(n)"] = layer.key.hex }
        }
        return out
    }

    public var json: [String: Any] {
        [
            "name": spec.name,
            "context_files": contextFiles, "context_bytes": contextBytes,
            "needed_files": neededFiles, "needed_bytes": neededBytes,
            "ignore_file": ignoreFile,
            "warnings": warnings,
            "stages": stages.map { stage in
                ["name": stage.name, "layers": stage.layers.map { layer in
                    ["instruction": layer.display, "line": layer.line, "files": layer.files, "bytes": layer.bytes,
                     "key": layer.key.hex, "changed": layer.changed] as [String: Any]
                }] as [String: Any]
            },
        ]
    }
}

/// The files of a build context as docker sees them (after the ignore file), with their content digests from
/// the project's stat cache (hashing only what it does not know).
struct ContextFiles {
    struct File {
        var mode: UInt32
        var size: UInt64
        var digest: ChunkID
    }

    /// Regular files and symlinks by path relative to the context.
    var files: [RelativePath: File] = [:]
    /// Every directory of the context, for selecting a source that names one.
    var directories: Set<RelativePath> = []

    init(project: Project, contextPath: String, contextRelative: String, rules: IgnoreRules) throws {
        let tree: Tree
        do { tree = try Tree(rootPath: contextPath, create: false) } catch {
            throw SyncError("build context \(contextPath): \(error)", code: .usage)
        }
        let scan = try ProjectScanner(tree: tree, rules: rules).scan()
        let prefix = contextRelative.isEmpty ? [] : Array(contextRelative.utf8) + [UInt8(ascii: "/")]
        let state = try project.openState()
        let regular = scan.entries.filter { $0.kind == .regular }
        let cache = try state.loadFiles(paths: regular.compactMap { try? RelativePath(bytes: prefix + $0.path.bytes) })
        let chunker = FileChunker(project.chunking)
        var fresh: [CachedFile] = []
        for e in scan.entries {
            switch e.kind {
            case .directory:
                directories.insert(e.path)
            case .symlink:
                files[e.path] = File(mode: 0o777, size: 0, digest: ChunkID(hashing: e.linkTarget ?? []))
            case .regular:
                let projectPath = try RelativePath(bytes: prefix + e.path.bytes)
                var digest: ChunkID
                if let cached = cache[projectPath], cached.isFresh(for: e.stat) {
                    digest = cached.digest
                } else {
                    let entry = LocalEntry(path: projectPath, stat: e.stat, content: nil, linkTarget: nil)
                    switch LocalScanner.hash(entry, in: project, with: chunker) {
                    case .success(let record):
                        digest = record.digest
                        fresh.append(record)
                    case .failure(let warning):
                        throw SyncError("build context: \(warning)")
                    }
                }
                files[e.path] = File(mode: e.stat.permissions, size: e.stat.size, digest: digest)
            case .other:
                continue
            }
        }
        try state.saveFiles(fresh)
    }

    /// The files a COPY/ADD source list selects, and the sources that select nothing.
    func select(_ read: BuildFile.ContextRead) -> (paths: [RelativePath], missing: [String]) {
        var out: [RelativePath] = []
        var missing: [String] = []
        let excludes = read.excludes.compactMap { try? IgnorePattern(glob: BuildFile.cleanSourcePattern($0)) }
        for source in read.sources {
            // nil: the whole context.
            var matchedRoots: [RelativePath?] = []
            if source == "." {
                matchedRoots = [nil]
            } else if let pattern = try? IgnorePattern(glob: source), pattern.hasWildcards {
                let depth = source.split(separator: "/").count
                for candidate in Array(files.keys) + Array(directories) where candidate.components.count == depth {
                    if pattern.matches(bytes: candidate.bytes) { matchedRoots.append(candidate) }
                }
            } else if let path = try? RelativePath(source), files[path] != nil || directories.contains(path) {
                matchedRoots = [path]
            }
            if matchedRoots.isEmpty { missing.append(source); continue }
            for root in matchedRoots {
                if let root, files[root] != nil {
                    if !isExcluded(name: root.name, relative: root.bytes, excludes) { out.append(root) }
                    continue
                }
                let skip = root.map { $0.bytes.count + 1 } ?? 0
                for path in files.keys where root == nil || path.isWithin(root!) {
                    if !isExcluded(name: Array(path.bytes.dropFirst(skip)), relative: path.bytes, excludes) { out.append(path) }
                }
            }
        }
        return (out, missing)
    }

    /// `--exclude` patterns are matched against the path below the source, and against the context path; a
    /// matching parent directory excludes what is inside it.
    private func isExcluded(name: [UInt8], relative: [UInt8], _ excludes: [IgnorePattern]) -> Bool {
        guard !excludes.isEmpty else { return false }
        for candidate in [name, relative] {
            var prefix: [UInt8] = []
            for component in candidate.split(separator: UInt8(ascii: "/")) {
                prefix = joinPath(prefix, Array(component))
                if excludes.contains(where: { $0.matches(bytes: prefix) }) { return true }
            }
        }
        return false
    }
}
