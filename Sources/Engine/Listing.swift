import Chunking
import Foundation
import ProjectScan
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
        let scan: ScanResult
        do { scan = try ProjectScanner(tree: tree, rules: rulesWithPullPaths).scan() } catch {
            throw SyncError("scanning \(directory): \(error)")
        }
        let paths = scan.entries.map { e -> ListedPath in
            let kind: String
            switch e.kind {
            case .directory: kind = "directory"
            case .symlink: kind = "symlink"
            default: kind = "file"
            }
            return ListedPath(path: e.path, kind: kind, size: e.kind == .regular ? e.stat.size : 0)
        }
        return (paths, scan.warnings.map(\.description))
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
        var byTop: [String: Directory] = [:]
        for e in entries {
            if e.kind == .directory { directories += 1 }
            guard e.kind == .regular else { continue }
            files += 1
            bytes += e.size
            let components = e.path.description.split(separator: "/", maxSplits: 1)
            let top = components.count > 1 ? String(components[0]) + "/" : "."
            byTop[top, default: Directory(path: top, files: 0, bytes: 0)].files += 1
            byTop[top, default: Directory(path: top, files: 0, bytes: 0)].bytes += e.size
        }
        largest = Array(byTop.values.sorted { ($0.bytes, $1.path) > ($1.bytes, $0.path) }.prefix(keep))
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
