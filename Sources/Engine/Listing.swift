import Chunking
import Foundation
import ProjectScan
import SyncSystem

/// One path a push would send.
public struct ListedPath: Codable, Sendable {
    public let path: String
    public let kind: String
    public let size: UInt64
}

extension Project {
    /// What a push would send, after the ignore rules, pull paths left out; plus scan warnings.
    public func listPushable() throws -> (paths: [ListedPath], warnings: [String]) {
        var rules = self.rules
        for p in pullPaths { try? rules.add(pattern: p.string, source: "pull paths", line: 0) }
        let scan: ScanResult
        do { scan = try ProjectScanner(tree: tree, rules: rules).scan() } catch {
            throw SyncError("scanning \(directory): \(error)")
        }
        let paths = scan.entries.map { e -> ListedPath in
            let kind: String
            switch e.kind {
            case .directory: kind = "directory"
            case .symlink: kind = "symlink"
            default: kind = "file"
            }
            return ListedPath(path: e.path.string, kind: kind, size: e.kind == .regular ? e.stat.size : 0)
        }
        return (paths, scan.warnings.map(\.description))
    }
}
