import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncRules
import SyncSystem
import Wire

/// Scans a project and identifies file contents, reading only files whose stat identity changed.
package struct LocalScanner {
    let project: Project
    let state: LocalDatabase

    package init(project: Project, state: LocalDatabase) {
        self.project = project
        self.state = state
    }

    package struct Result {
        package var entries: [LocalEntry]
        package var warnings: [ScanWarning]
        var filesRead: Int
        var cache: [RelativePath: CachedFile]
        /// The records this run made (files read).
        var updated: [CachedFile] = []
    }

    /// A scan whose regular files not known from the stat cache still need hashing (`content` nil).
    struct Scan {
        package var entries: [LocalEntry]
        package var warnings: [ScanWarning]
        var cache: [RelativePath: CachedFile]
    }

    /// Walks the tree and fills contents from the stat cache. `roots` nil scans the local-owned part (pull paths
    /// excluded); otherwise only below `roots`.
    func scan(roots: [RelativePath]?) throws -> Scan {
        let rules = roots == nil ? project.rulesWithPullPaths : project.pullRules
        var scan: ScanResult
        do { scan = try ProjectScanner(tree: project.tree, rules: rules).scan(roots: roots) } catch {
            throw SyncError("scanning \(project.directory): \(error)")
        }
        if roots == nil, let git = project.rules.git { scan.warnings += git.skippedLines }
        // Below given roots (a pull's paths), only their own records are read, not the whole project's.
        let cache = roots == nil ? try state.loadFiles()
            : try state.loadFiles(paths: scan.entries.filter { $0.kind == .regular }.map(\.path))
        return try identify(scan, cache: cache)
    }

    /// Only the entries at `paths` (not below them), the local-owned ones: what a watcher reported.
    func scan(only paths: [RelativePath]) throws -> Scan {
        let scan: ScanResult
        do { scan = try ProjectScanner(tree: project.tree, rules: project.rulesWithPullPaths).entries(at: paths) } catch {
            throw SyncError("scanning \(project.directory): \(error)")
        }
        return try identify(scan, cache: try state.loadFiles(paths: scan.entries.filter { $0.kind == .regular }.map(\.path)))
    }

    /// The entries at `paths` themselves, pull paths included (the ignore rules still apply): what
    /// `resolve --keep local` sends.
    func scan(resolving paths: [RelativePath]) throws -> Scan {
        var scan: ScanResult
        do {
            // git's rules do not hide a pulled path's local copy.
            let (pulled, pushed) = (paths.filter(project.isPullPath), paths.filter { !project.isPullPath($0) })
            scan = try ProjectScanner(tree: project.tree, rules: project.rules).entries(at: pushed)
            let more = try ProjectScanner(tree: project.tree, rules: project.pullRules).entries(at: pulled)
            if !more.entries.isEmpty { scan.entries = (scan.entries + more.entries).sorted { $0.path < $1.path } }
            scan.warnings += more.warnings
        } catch {
            throw SyncError("scanning \(project.directory): \(error)")
        }
        return try identify(scan, cache: try state.loadFiles(paths: scan.entries.filter { $0.kind == .regular }.map(\.path)))
    }

    /// Fills in the content of files whose stat identity the cache knows.
    private func identify(_ scan: ScanResult, cache: [RelativePath: CachedFile]) throws -> Scan {
        var entries: [LocalEntry] = []
        entries.reserveCapacity(scan.entries.count)
        for e in scan.entries {
            var entry = LocalEntry(path: e.path, stat: e.stat, content: nil, linkTarget: e.linkTarget)
            if e.kind == .regular, let cached = cache[e.path], cached.isFresh(for: e.stat) {
                entry.content = ChunkedContent(chunks: cached.chunks, digest: cached.digest, size: cached.stat.size)
            }
            entries.append(entry)
        }
        return Scan(entries: entries, warnings: scan.warnings, cache: cache)
    }

    /// Reads and chunks one file; the record for the stat cache, or why the file is skipped this time.
    package static func hash(_ entry: LocalEntry, in project: Project, with chunker: FileChunker) -> Swift.Result<CachedFile, ScanWarning> {
        hash(entry, in: project, with: chunker, keepingUpTo: 0).map(\.file)
    }

    /// `hash`, keeping the bytes of a file of at most `keep` bytes as they were read (and found unchanged).
    package static func hash(_ entry: LocalEntry, in project: Project, with chunker: FileChunker,
                     keepingUpTo keep: Int) -> Swift.Result<(file: CachedFile, bytes: [UInt8]?), ScanWarning> {
        do {
            let fd = try project.tree.openForReading(entry.path)
            // A large file is hashed on several threads: the first file of a push is sent only once it is hashed.
            let (content, bytes) = entry.stat.size >= FileChunker.parallelThreshold
                ? (try chunker.chunk(fd, threads: FileChunker.processors), nil)
                : try chunker.chunk(fd, keepingUpTo: keep)
            let after = try fd.stat()
            guard after.sameContentIdentity(as: entry.stat) else {
                return .failure(ScanWarning(path: entry.path.description, message: "changed while being read; skipped this time"))
            }
            return .success((CachedFile(path: entry.path, stat: after, digest: content.digest, chunks: content.chunks,
                                        cachedAtNanos: wallClockNanos()), bytes))
        } catch {
            return .failure(ScanWarning(path: entry.path.description, message: "cannot read: \(error); skipped"))
        }
    }

    /// Scan and hash everything now.
    package func run(roots: [RelativePath]?) throws -> Result {
        try hashed(try scan(roots: roots))
    }

    /// `scan(only:)` with every file's content: the entries at `paths` (what a watcher reported), hashed where
    /// the stat cache does not vouch for them.
    package func run(only paths: [RelativePath]) throws -> Result {
        try hashed(try scan(only: paths))
    }

    /// Hashes the files of `scan` whose content the stat cache did not give, and saves what that learned.
    private func hashed(_ scanned: Scan) throws -> Result {
        var scan = scanned
        let chunker = FileChunker(project.chunking)
        var updated: [CachedFile] = []
        var entries: [LocalEntry] = []
        entries.reserveCapacity(scan.entries.count)
        for var entry in scan.entries {
            if entry.stat.kind == .regular && entry.content == nil {
                switch Self.hash(entry, in: project, with: chunker) {
                case .success(let record):
                    entry.content = ChunkedContent(chunks: record.chunks, digest: record.digest, size: record.stat.size)
                    scan.cache[record.path] = record
                    updated.append(record)
                case .failure(let warning):
                    scan.warnings.append(warning)
                    continue
                }
            }
            entries.append(entry)
        }
        try state.saveFiles(updated)
        return Result(entries: entries, warnings: scan.warnings, filesRead: updated.count, cache: scan.cache, updated: updated)
    }
}

extension ScanWarning: Error {}

/// What a full push found in one pass over the tree (issue 29), or in one part of it: the walk in path order
/// merged, entry by entry, with the stat cache and the pushed record read from SQLite in the same order. Only what
/// the push must act on is kept: a no-op push holds nothing per file, whatever the project's size, and a push of
/// many changes works through the tree in parts of a bounded size (`resumeAfter`).
struct ChangedHere {
    /// Local entries to send (content from the stat cache when it vouches for the file, else nil: to hash).
    var changed: [LocalEntry] = []
    /// The pushed record's entries at the changed paths and at the paths deleted here: all a plan asks of it.
    var pushed: [RelativePath: SyncedEntry] = [:]
    /// Pushed paths gone from the walk because the rules now ignore them, left on the remote.
    var leftIgnored: [RelativePath] = []
    var scanned = 0
    var warnings: [ScanWarning] = []
    /// Whether the record had any entry in the part walked (else this is the first push).
    var pushedBefore = false
    /// Where the walk stopped, having found as many changes as a part holds: everything up to this path is in
    /// here, and the next part starts after it. Nil when the walk reached the end of the tree.
    var resumeAfter: [UInt8]?
    /// Directories to delete whose files in the record go on past `resumeAfter`: the remote deletes a directory
    /// only once it is empty, so each is deleted by the part that deletes the last of them (the next part is
    /// given these).
    var carried: [(RelativePath, SyncedEntry)] = []
}

extension LocalScanner {
    /// The local-owned tree (pull paths left out) compared with the last push as it is walked: see `ChangedHere`.
    /// `everything` sends every entry (a restore). Pushed paths gone here are deleted unless `isLeftAlone`;
    /// those `isIgnored` are reported as left. The walk starts after the path `after` (nil: at the start), with
    /// the directories to delete an earlier part `carried`, and stops once `limit` changes (deletes included) are
    /// found, also among the record's paths gone here (a deleted dataset). A part ends where it can: never between
    /// a directory replaced by a file and what the record has below it, which the remote must delete first; a
    /// directory deleted is carried on with its files. Nil when the database's rows or the walk turn out not to be
    /// in path order (neither should happen): the caller then compares the whole tree in memory.
    func changedSinceLastPush(everything: Bool, after: [UInt8]? = nil, carried: [(RelativePath, SyncedEntry)] = [], limit: Int = .max,
                              isLeftAlone: @escaping (RelativePath, SyncedEntry) -> Bool,
                              isIgnored: @escaping (RelativePath, SyncedEntry) -> Bool) throws -> ChangedHere? {
        let scanner = ProjectScanner(tree: project.tree, rules: project.rulesWithPullPaths)
        return try changedInPathOrder(everything: everything, after: after, carried: carried, limit: limit, walked: true,
                                      isLeftAlone: isLeftAlone, isIgnored: isIgnored) { visit in
            do {
                return try scanner.walkInPathOrderAhead(after: after) { scanned in
                    try visit(LocalEntry(path: scanned.path, stat: scanned.stat, content: nil, linkTarget: scanned.linkTarget))
                }.warnings
            } catch {
                throw SyncError("scanning \(project.directory): \(error)")
            }
        }
    }

    /// `changedSinceLastPush` for a tree already scanned and hashed, in path order (a store push's, or a restored
    /// snapshot's, the same for every host): merged with this host's record, so that a host's push holds what
    /// changed for it rather than a copy of its whole record. Nil when `tree` is not in path order.
    func changedInFixedTree(_ tree: [LocalEntry], everything: Bool, after: [UInt8]? = nil, carried: [(RelativePath, SyncedEntry)] = [],
                            limit: Int = .max, isLeftAlone: @escaping (RelativePath, SyncedEntry) -> Bool,
                            isIgnored: @escaping (RelativePath, SyncedEntry) -> Bool) throws -> ChangedHere? {
        // Where the part after `after` starts (the tree is sorted; one that is not is found out by the merge).
        var start = 0
        if let after {
            var high = tree.count
            while start < high {
                let middle = (start + high) / 2
                if after.lexicographicallyPrecedes(tree[middle].path.bytes) { high = middle } else { start = middle + 1 }
            }
        }
        return try changedInPathOrder(everything: everything, after: after, carried: carried, limit: limit, walked: false,
                                      isLeftAlone: isLeftAlone, isIgnored: isIgnored) { visit in
            for entry in tree[start...] where !(try visit(entry)) { break }
            return []
        }
    }

    /// The merge both of the above run: `entries` calls `visit` with each entry in path order (a file's content
    /// nil when the stat cache is to vouch for it) until it returns false, and returns the warnings it had.
    /// `walked`: the entries are this machine's tree as walked now, so the stat cache's rows it passed over are
    /// of files that are gone.
    private func changedInPathOrder(everything: Bool, after: [UInt8]?, carried: [(RelativePath, SyncedEntry)], limit: Int, walked: Bool,
                                    isLeftAlone: @escaping (RelativePath, SyncedEntry) -> Bool, isIgnored: @escaping (RelativePath, SyncedEntry) -> Bool,
                                    entries: ((LocalEntry) throws -> Bool) throws -> [ScanWarning]) throws -> ChangedHere? {
        var found = ChangedHere()
        // The directories this part deletes, in path order.
        var deletedDirectories = carried
        for (path, entry) in carried { found.pushed[path] = entry }
        var deletes = 0  // the carried directories are a few (nested), and counting them could leave no room
        // The end of the record's rows below the last directory this part replaces with a file (its path and a
        // '0', which follows '/'): the part may not end before the walk is past it.
        var openUntil: [UInt8] = []
        func mayEnd(at path: [UInt8]) -> Bool {
            found.changed.count + deletes >= limit && !path.lexicographicallyPrecedes(openUntil)
        }
        var stoppedAt: [UInt8]?
        var staleCacheRows: [[UInt8]] = []
        let inOrder = try state.readInPathOrder(.pushed, after: after) { rows -> Bool in
            func gone(_ path: RelativePath, _ entry: SyncedEntry) -> Bool {
                found.pushedBefore = true
                switch decidePush(local: nil, pushed: entry, everything: everything, leftAlone: isLeftAlone(path, entry)) {
                case .delete:
                    found.pushed[path] = entry
                    deletes += 1
                    if entry.kind == .directory { deletedDirectories.append((path, entry)) }
                case .leaveAlone: if isIgnored(path, entry) { found.leftIgnored.append(path) }
                case .send, .unchanged: break
                }
                guard mayEnd(at: path.bytes) else { return true }
                stoppedAt = path.bytes
                return false
            }
            var walkInOrder = true
            var last: [UInt8] = after ?? []
            found.warnings = try entries { given -> Bool in
                found.scanned += 1
                if (found.scanned > 1 || after != nil) && !last.lexicographicallyPrecedes(given.path.bytes) { walkInOrder = false }
                last = given.path.bytes
                let pushed = try rows.recorded(at: given.path.bytes, gone: gone)
                // Full among the paths gone before this one: it is the next part's.
                if stoppedAt != nil {
                    found.scanned -= 1
                    return false
                }
                if pushed != nil { found.pushedBefore = true }
                var entry = given
                var cached: CachedRow?
                if entry.stat.kind == .regular && entry.content == nil, let row = try rows.cached(at: entry.path.bytes), row.isFresh(for: entry.stat) {
                    cached = row
                    // Enough to compare with the record; the chunk list is read only for a file that is sent.
                    entry.content = ChunkedContent(chunks: [], digest: row.digest, size: row.stat.size)
                }
                if decidePush(local: entry, pushed: pushed, everything: everything) == .send {
                    if let cached { entry.content = cached.chunks().map { ChunkedContent(chunks: $0, digest: cached.digest, size: cached.stat.size) } }
                    found.changed.append(entry)
                    if let pushed {
                        found.pushed[entry.path] = pushed
                        if pushed.kind == .directory && entry.stat.kind != .directory {
                            let end = entry.path.bytes + [UInt8(ascii: "0")]
                            if openUntil.lexicographicallyPrecedes(end) { openUntil = end }
                        }
                    }
                }
                guard mayEnd(at: entry.path.bytes) else { return true }
                stoppedAt = entry.path.bytes
                return false
            }
            if stoppedAt == nil {
                try rows.remainingRecorded(gone)
                if walked { try rows.remainingCached() }
            }
            if walked { staleCacheRows = rows.staleCacheRows }
            return rows.inOrder && walkInOrder
        }
        guard inOrder else { return nil }
        // The stat cache forgets the files the walk passed over (a bounded number a push), except those below a
        // pull path, which the walk does not enter and a pull compares with: it does not keep a row for every
        // file the project ever had.
        let stale = staleCacheRows.compactMap { try? RelativePath(bytes: $0) }.filter { !project.isPullPath($0) }
        try? state.saveFiles([], removing: stale)
        found.resumeAfter = stoppedAt
        // A deleted directory with record paths past where the part ends ("data" ending at "data/b/7") waits for
        // the part that deletes the last of them.
        if let end = stoppedAt {
            for (path, entry) in deletedDirectories where end.lexicographicallyPrecedes(path.bytes + [UInt8(ascii: "0")]) {
                found.pushed[path] = nil
                found.carried.append((path, entry))
            }
        }
        if walked && after == nil, let git = project.rules.git { found.warnings += git.skippedLines }
        // A plan clears a path before what is placed below it when the record has something other than a
        // directory there (a file the user replaced with a directory). Such a parent the walk passed as unchanged
        // or left alone is not in `pushed` yet: looked up for the parents of what is sent, a few paths. A part
        // after the first may have such a parent in an earlier part.
        if found.pushedBefore || after != nil {
            var parents: Set<RelativePath> = []
            for e in found.changed {
                var parent = e.path.parent
                while let p = parent, found.pushed[p] == nil, parents.insert(p).inserted { parent = p.parent }
            }
            for (path, entry) in try state.load(.pushed, paths: Array(parents), subtrees: []) where entry.kind != .directory {
                found.pushed[path] = entry
            }
        }
        return found
    }
}
