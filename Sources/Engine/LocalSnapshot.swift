import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncSystem
import Wire

/// One local entry with its content identity.
struct LocalEntry {
    let path: RelativePath
    let stat: FileStat
    var content: ChunkedContent?
    let linkTarget: String?

    var state: PathState {
        switch stat.kind {
        case .directory: return .directory
        case .symlink: return .symlink(linkTarget ?? "")
        default: return .file(content?.digest ?? ChunkID(low: 0, high: 0))
        }
    }

    var synced: SyncedEntry {
        switch stat.kind {
        case .directory: return SyncedEntry(kind: .directory, digest: nil, target: nil, permissions: stat.permissions, mtimeNanos: 0)
        case .symlink: return SyncedEntry(kind: .symlink, digest: nil, target: linkTarget, permissions: 0o777, mtimeNanos: 0)
        default: return SyncedEntry(kind: .file, digest: content?.digest, target: nil, permissions: stat.permissions, mtimeNanos: stat.mtimeNanos)
        }
    }
}

extension SyncedEntry {
    var pathState: PathState {
        switch kind {
        case .directory: return .directory
        case .symlink: return .symlink(target ?? "")
        case .file: return .file(digest ?? ChunkID(low: 0, high: 0))
        }
    }
}

/// Scans a project and identifies file contents, reading only files whose stat identity changed.
struct Snapshotter {
    let project: Project
    let state: StateStore

    struct Result {
        var entries: [LocalEntry]
        var warnings: [ScanWarning]
        var filesRead: Int
        var cache: [String: CachedFile]
    }

    /// `roots` nil scans the local-owned part (pull paths excluded); otherwise only below `roots`.
    func run(roots: [RelativePath]?) throws -> Result {
        var rules = project.rules
        if roots == nil {
            for p in project.pullPaths { try? rules.add(pattern: p.string, source: "pull paths", line: 0) }
        }
        let scan: ScanResult
        do { scan = try ProjectScanner(tree: project.tree, rules: rules).scan(roots: roots) } catch {
            throw SyncError("scanning \(project.directory): \(error)")
        }
        var cache = try state.loadFiles()
        var updated: [CachedFile] = []
        var entries: [LocalEntry] = []
        entries.reserveCapacity(scan.entries.count)
        let chunker = FileChunker(project.chunking)
        var warnings = scan.warnings
        let now = wallClockNanos()
        for e in scan.entries {
            var entry = LocalEntry(path: e.path, stat: e.stat, content: nil, linkTarget: e.linkTarget)
            if e.kind == .regular {
                if let cached = cache[e.path.string], cached.isFresh(for: e.stat) {
                    entry.content = ChunkedContent(chunks: cached.chunks, digest: cached.digest, size: cached.stat.size)
                } else {
                    do {
                        let fd = try project.tree.openForReading(e.path)
                        let content = try chunker.chunk(fd)
                        let after = try fd.stat()
                        guard after.sameContentIdentity(as: e.stat) else {
                            warnings.append(ScanWarning(path: e.path.string, message: "changed while being read; skipped this time"))
                            continue
                        }
                        entry.content = content
                        let record = CachedFile(path: e.path.string, stat: after, digest: content.digest, chunks: content.chunks, cachedAtNanos: now)
                        cache[e.path.string] = record
                        updated.append(record)
                    } catch {
                        warnings.append(ScanWarning(path: e.path.string, message: "cannot read: \(error); skipped"))
                        continue
                    }
                }
            }
            entries.append(entry)
        }
        try state.saveFiles(updated)
        return Result(entries: entries, warnings: warnings, filesRead: updated.count, cache: cache)
    }
}
