import Chunking
import Foundation
import ProjectScan
import SyncConfig
import SyncSystem

/// One path a push would send.
public struct ListedPath: Codable, Sendable {
    public let path: RelativePath
    public let kind: String
    public let size: UInt64
}

extension Project {
    /// What a push would send, after the ignore rules, pull paths left out; plus scan warnings.
    public func listPushable() throws -> (paths: [ListedPath], warnings: [String]) {
        var paths: [ListedPath] = []
        let warnings = try walkPushable { paths.append($0) }
        return (paths, warnings)
    }

    /// Hands each path a push would send to `each` as the tree is walked, in byte order of the paths, holding
    /// none of them (`ls` of a million files); returns the scan's warnings. Without `sizes`, files are not
    /// statted (a file's kind comes with its directory's listing, as `find` has it) and their sizes are 0.
    public func walkPushable(sizes: Bool = true, _ each: (ListedPath) throws -> Void) throws -> [String] {
        let warnings: [ScanWarning]
        do {
            warnings = try ProjectScanner(tree: tree, rules: rulesWithPullPaths).walkInPathOrder(statting: sizes) { e in
                let kind: String
                switch e.kind {
                case .directory: kind = "directory"
                case .symlink: kind = "symlink"
                default: kind = "file"
                }
                try each(ListedPath(path: e.path, kind: kind, size: e.kind == .regular ? e.stat.size : 0))
            }
        } catch {
            throw SyncError("scanning \(directory): \(error)")
        }
        return (warnings + (rules.git?.skippedLines ?? [])).map(\.description)
    }
}

/// Totals of a tree a push sends, and where its bytes are: `ls --summary`, and a first push's report.
public struct TreeSummary: Codable, Sendable, CustomStringConvertible {
    public struct Directory: Codable, Sendable {
        public var path: String
        public var files: Int
        public var bytes: UInt64
    }
    public var files = 0
    public var directories = 0
    public var bytes: UInt64 = 0
    /// The top-level directories (and `.` for files at the root) holding the most bytes, largest first.
    public var largest: [Directory] = []

    /// Sums `entries` (path, kind, size), keeping the `keep` largest top-level directories.
    public init<S: Sequence>(_ entries: S, keep: Int = 5) where S.Element == (path: RelativePath, kind: FileKind, size: UInt64) {
        var sum = Sum()
        for e in entries { sum.add(e.path, kind: e.kind, size: e.size) }
        self = sum.summary(keep: keep)
    }

    init() {}

    /// Sums entries one at a time, holding a total per top-level directory only.
    public struct Sum {
        private var total = TreeSummary()
        private var byTop: [[UInt8]: Directory] = [:]

        public init() {}

        public mutating func add(_ path: RelativePath, kind: FileKind, size: UInt64) {
            if kind == .directory { total.directories += 1 }
            guard kind == .regular else { return }
            total.files += 1
            total.bytes += size
            let top = path.bytes.firstIndex(of: UInt8(ascii: "/")).map { Array(path.bytes[..<$0]) } ?? []
            if byTop[top] == nil {
                let shown = top.isEmpty ? "." : (try? RelativePath(bytes: top)).map { $0.description + "/" } ?? "?"
                byTop[top] = Directory(path: shown, files: 0, bytes: 0)
            }
            byTop[top]!.files += 1
            byTop[top]!.bytes += size
        }

        /// The totals, with the `keep` largest top-level directories.
        public func summary(keep: Int = 5) -> TreeSummary {
            var out = total
            out.largest = Array(byTop.values.sorted { ($0.bytes, $1.path) > ($1.bytes, $0.path) }.prefix(keep))
            return out
        }
    }

    /// "1,204 files, 312.5 MB in 40 directories; largest: data/ 300.1 MB (1,000 files), src/ 2.3 MB (180 files)"
    public var description: String {
        var text = "\(files) file\(files == 1 ? "" : "s"), \(formatBytes(bytes)) in \(directories) director\(directories == 1 ? "y" : "ies")"
        if !largest.isEmpty {
            text += "; largest: " + largest.map { "\($0.path) \(formatBytes($0.bytes)) (\($0.files) file\($0.files == 1 ? "" : "s"))" }
                .joined(separator: ", ")
        }
        return text
    }
}

/// Why a push sends a path or leaves it out: `syncctl ls --why`.
public struct PathVerdict: Codable, Sendable {
    public let path: String
    public let sent: Bool
    public let reason: String
}

extension Project {
    /// What decides `path` (relative to the project): a pull path, or the ignore rule and the file it is in.
    public func why(_ path: RelativePath) throws -> PathVerdict {
        let shown = path.description
        let isDirectory = try tree.lstat(path)?.kind == .directory
        if let pull = pullPaths.first(where: { path.isWithin($0) }) {
            return PathVerdict(path: shown, sent: false, reason: "below the pull path \(pull)/ in \(ProjectConfig.fileName): "
                               + "the remote's, brought back by `syncctl pull` and never sent")
        }
        if path.nameHasPrefix(partialFilePrefix) {
            return PathVerdict(path: shown, sent: false, reason: "a file a pull is still building (\(partialFilePrefix)…)")
        }
        let (excluded, reason) = rules.explain(path.bytes, isDirectory: isDirectory)
        return PathVerdict(path: shown, sent: !excluded, reason: reason)
    }
}

/// A path git's rules leave out of a push, with what is below it: what `syncctl init` shows in a repository.
public struct GitIgnoredPath: Sendable {
    public let path: String
    public let isDirectory: Bool
    public let files: Int
    public let bytes: UInt64
    /// A directory that looks like a dataset (named `data` or `datasets`, or large and not a tool's): `init` puts
    /// it under `include:`.
    public let looksLikeData: Bool
}

extension Project {
    /// Directories that tools make and that are never data, whatever their size.
    static let toolDirectories: Set<String> = [
        ".venv", "venv", "env", ".env", ".tox", ".nox", "node_modules", "__pycache__", ".mypy_cache", ".pytest_cache",
        ".ruff_cache", ".cache", ".ipynb_checkpoints", "wandb", "runs", "mlruns", "lightning_logs", "logs", "log",
        "build", "dist", ".eggs", "site-packages", ".idea", ".vscode", "target", ".gradle", ".terraform",
    ]

    /// The highest paths git's rules exclude in the project at `directory` (its `.gitignore` files and the
    /// repository's `info/exclude`), largest first; `pull` paths are left out (a pull brings them back anyway).
    public static func gitIgnored(in directory: String, pull: [String]) throws -> [GitIgnoredPath] {
        let tree = try Tree(rootPath: directory, create: false)
        let git = gitIgnore(projectDirectory: directory, tree: tree)
        var defaults = IgnoreRules()
        for p in IgnoreRules.defaultPatterns { try defaults.add(pattern: p, source: "built-in defaults", line: 0) }
        let pullPaths = Set(pull)
        var found: [GitIgnoredPath] = []
        var budget = 2_000_000  // entries looked at, so that init on a huge tree still ends
        func sizeBelow(_ dir: FileDescriptor) -> (files: Int, bytes: UInt64) {
            var total = (files: 0, bytes: UInt64(0))
            guard budget > 0, let items = try? Tree.list(dir) else { return total }
            for item in items {
                budget -= 1
                if item.kind == .directory {
                    if let child = try? Tree.openChildDirectory(dir, name: item.name, shown: "") {
                        let below = sizeBelow(child)
                        total.files += below.files
                        total.bytes += below.bytes
                    }
                } else if item.kind == .regular, let st = try? Tree.lstat(at: dir, name: item.name, shown: "") {
                    total.files += 1
                    total.bytes += st.size
                }
            }
            return total
        }
        func walk(_ dir: FileDescriptor, prefix: [UInt8]) {
            guard budget > 0, let items = try? Tree.list(dir) else { return }
            for item in items {
                budget -= 1
                let bytes = prefix.isEmpty ? item.name : prefix + [UInt8(ascii: "/")] + item.name
                let text = String(decoding: bytes, as: UTF8.self)
                if defaults.isExcluded(bytes) || pullPaths.contains(text) { continue }
                let isDirectory = item.kind == .directory
                if git.isIgnored(bytes, isDirectory: isDirectory, parentsChecked: true) {
                    var size = (files: 0, bytes: UInt64(0))
                    var isVirtualEnv = false
                    if isDirectory, let child = try? Tree.openChildDirectory(dir, name: item.name, shown: text) {
                        size = sizeBelow(child)
                        if case .some(.some) = try? Tree.lstat(at: child, name: Array("pyvenv.cfg".utf8), shown: "") { isVirtualEnv = true }
                    } else if let st = try? Tree.lstat(at: dir, name: item.name, shown: text) {
                        size = (1, st.size)
                    }
                    let name = String(decoding: item.name, as: UTF8.self)
                    let dataName = ["data", "dataset", "datasets"].contains(name.lowercased())
                    let large = size.bytes >= 100 << 20
                    let looksLikeData = isDirectory && !isVirtualEnv && !toolDirectories.contains(name)
                        && !name.hasSuffix(".egg-info") && (dataName || large)
                    found.append(GitIgnoredPath(path: text, isDirectory: isDirectory, files: size.files, bytes: size.bytes,
                                                looksLikeData: looksLikeData))
                } else if isDirectory, let child = try? Tree.openChildDirectory(dir, name: item.name, shown: text) {
                    walk(child, prefix: bytes)
                }
            }
        }
        walk(tree.root, prefix: [])
        return found.sorted { ($0.bytes, $1.path) > ($1.bytes, $0.path) }
    }
}
