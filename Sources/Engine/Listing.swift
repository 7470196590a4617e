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
