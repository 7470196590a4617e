import Glibc
import SyncSystem

/// One entry of a project tree as found on disk.
public struct ScannedEntry: Sendable, Equatable {
    public let path: RelativePath
    public let stat: FileStat
    /// The target, for symlinks (bytes, like names).
    public let linkTarget: [UInt8]?

    public var kind: FileKind { stat.kind }
}

/// Something the scan left out and the user should hear about.
public struct ScanWarning: Sendable, Equatable, CustomStringConvertible {
    public let path: String
    public let message: String
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { "\(path): \(message)" }
}

/// What a scan found: entries sorted by path (parents before children), and warnings.
public struct ScanResult: Sendable {
    public var entries: [ScannedEntry]
    public var warnings: [ScanWarning]
}


/// Walks a project tree without following symlinks, applying ignore rules.
public struct ProjectScanner {
    public let tree: Tree
    public let rules: IgnoreRules

    public init(tree: Tree, rules: IgnoreRules) {
        self.tree = tree
        self.rules = rules
    }

    /// Scans the whole tree, or only below `roots` when given (paths that do not exist are skipped).
    public func scan(roots: [RelativePath]? = nil) throws -> ScanResult {
        var result = ScanResult(entries: [], warnings: [])
        if let roots {
            for root in roots {
                guard let st = try tree.lstat(root) else { continue }
                let isDirectory = st.kind == .directory
                if rules.isExcluded(root.bytes, isDirectory: isDirectory) && !(isDirectory && rules.mayBringBack(below: root.bytes)) { continue }
                if isDirectory {
                    if !rules.isExcluded(root.bytes, isDirectory: true) { result.entries.append(ScannedEntry(path: root, stat: st, linkTarget: nil)) }
                    guard let dir = try tree.openDirectory(root, create: false) else { continue }
                    try walk(dir, prefix: root.bytes, into: &result)
                } else if let parent = try tree.openParent(root, create: false) {
                    try visit(name: root.name, kind: st.kind, in: parent, prefix: root.parentBytes, into: &result)
                }
            }
        } else {
            try walk(tree.root, prefix: [], into: &result)
        }
        return result
    }

    /// The entries at `paths` themselves, not what is below them: what a watcher reported changed. Paths that
    /// do not exist, are ignored, or lie below an ignored directory give nothing.
    public func entries(at paths: [RelativePath]) throws -> ScanResult {
        var result = ScanResult(entries: [], warnings: [])
        for path in paths {
            var ancestor: [UInt8] = []
            var hidden = false
            for component in path.parentComponents {
                ancestor = joinPath(ancestor, component)
                if rules.isExcluded(ancestor, isDirectory: true) && !rules.mayBringBack(below: ancestor) { hidden = true; break }
            }
            if hidden { continue }
            // A directory on the way that is a file or a symlink now (a directory replaced since the path was
            // reported) leaves nothing at the path: it is gone, as when the directory is.
            let parent: FileDescriptor?
            do { parent = try tree.openParent(path, create: false) } catch is PathError { continue }
            guard let parent, let st = try Tree.lstat(at: parent, name: path.name, shown: path.description) else { continue }
            try visit(name: path.name, kind: st.kind, in: parent, prefix: path.parentBytes, recurse: false, into: &result)
        }
        return result
    }

    private func walk(_ dir: FileDescriptor, prefix: [UInt8], into result: inout ScanResult) throws {
        for item in try Tree.list(dir) {
            try visit(name: item.name, kind: item.kind, in: dir, prefix: prefix, into: &result)
        }
    }

    private func visit(name: [UInt8], kind: FileKind, in dir: FileDescriptor, prefix: [UInt8], recurse: Bool = true,
                       into result: inout ScanResult) throws {
        let found = try examine(name: name, kind: kind, in: dir, prefix: prefix, parentsChecked: recurse, warnings: &result.warnings)
        if let entry = found.entry { result.entries.append(entry) }
        guard recurse, found.descend, let path = found.entry?.path ?? (try? RelativePath(bytes: joinPath(prefix, name))) else { return }
        let child: FileDescriptor
        do {
            child = try Tree.openChildDirectory(dir, name: name, shown: path.description)
        } catch {
            result.warnings.append(ScanWarning(path: path.description, message: "\(error); skipped"))
            return
        }
        try walk(child, prefix: path.bytes, into: &result)
    }

    /// One name in `dir`: its entry, unless the rules exclude it (or it is a symlink out of the tree, or not a
    /// file, directory or symlink: then a warning), and whether a walk goes below it (a directory not excluded,
    /// or excluded with something below it that the rules may bring back).
    private func examine(name: [UInt8], kind: FileKind, in dir: FileDescriptor, prefix: [UInt8], parentsChecked: Bool,
                         statting: Bool = true, warnings: inout [ScanWarning]) throws -> (entry: ScannedEntry?, descend: Bool) {
        let bytes = joinPath(prefix, name)
        if name.starts(with: partialFilePrefix.utf8) { return (nil, false) }
        // A walk goes into no excluded directory unless something below it may be brought back: then the
        // parents need no matching.
        let excluded = rules.isExcluded(bytes, isDirectory: kind == .directory, parentsChecked: parentsChecked)
        if excluded && (kind != .directory || !rules.mayBringBack(below: bytes)) { return (nil, false) }
        let path: RelativePath
        do { path = try RelativePath(bytes: bytes) } catch {
            warnings.append(ScanWarning(path: displayPath(bytes), message: "\(error); skipped"))
            return (nil, false)
        }
        // The path is spelled for people only when something is wrong with it: a walk stats every entry.
        let st: FileStat
        if !statting && (kind == .regular || kind == .directory) {
            st = FileStat(device: 0, inode: 0, kind: kind, permissions: 0, size: 0, mtimeNanos: 0, ctimeNanos: 0)
        } else {
            guard let found = try Tree.lstat(at: dir, name: name, shown: path.description) else { return (nil, false) }
            st = found
        }
        var pathString: String { path.description }
        switch st.kind {
        case .directory:
            return (excluded ? nil : ScannedEntry(path: path, stat: st, linkTarget: nil), true)
        case .regular:
            return (excluded ? nil : ScannedEntry(path: path, stat: st, linkTarget: nil), false)
        case .symlink:
            if excluded { return (nil, false) }
            let target = try Tree.readLink(at: dir, name: name, shown: pathString)
            if let why = symlinkEscapes(linkPath: path, target: target) {
                warnings.append(ScanWarning(path: pathString, message: "symlink to \(displayPath(target)): its target \(why); skipped"))
                return (nil, false)
            }
            return (ScannedEntry(path: path, stat: st, linkTarget: target), false)
        case .other:
            if !excluded { warnings.append(ScanWarning(path: pathString, message: "not a regular file, directory or symlink; skipped")) }
            return (nil, false)
        }
    }
}

extension ProjectScanner {
    /// Walks the whole tree and hands each entry to `visit` in byte order of its path, the order SQLite keeps the
    /// local database's paths in, so that a caller can merge the walk with those records as it goes (issue 29).
    /// A directory's own entry `a` comes before `a.txt`, and what is below it (`a/…`) after `a.txt` and before
    /// `a0`, since `.` sorts before `/` and `0` after it: in each directory the entries are ordered by name, and
    /// the walk below a directory by its name with a `/` added. Only the listings of the directories on the way
    /// down are held, never the tree. Returns the warnings.
    ///
    /// Without `statting`, a file or directory whose kind the directory listing gives is not looked at further:
    /// its entry's stat holds that kind and nothing else (zeros), which is all a list of paths needs.
    public func walkInPathOrder(statting: Bool = true, _ visit: (ScannedEntry) throws -> Void) throws -> [ScanWarning] {
        try walkInPathOrder(statting: statting, after: nil) { entry in
            try visit(entry)
            return true
        }.warnings
    }

    /// The same walk, taken up after the path `after` (the entries after it in path order; nil: all of them), and
    /// stopped as soon as `visit` returns false: a caller that works through a large tree in parts resumes with
    /// the last path it saw. Only the directories on the way down to `after` are listed again; what sorts before
    /// it is neither looked at nor entered. `stopped` says whether `visit` ended the walk.
    public func walkInPathOrder(statting: Bool = true, after: [UInt8]?, _ visit: (ScannedEntry) throws -> Bool) throws
        -> (warnings: [ScanWarning], stopped: Bool) {
        var warnings: [ScanWarning] = []
        let stopped = try !walkInPathOrder(tree.root, prefix: [], after: after, statting: statting, visit, &warnings)
        return (warnings, stopped)
    }

    /// The same walk with the listings, the stats and the ignore rules on a thread of their own, ahead of `visit`
    /// on this one: a caller that merges the walk with the local database (a no-op push) no longer waits for the
    /// kernel's stats between rows, and on two cores the two halves overlap. At most `batches` batches of
    /// `batch` entries wait between the threads, so the walk holds no more than that beyond what the plain walk
    /// does. Once `visit` returns false (or throws) the walker stops at its next entry, and this returns when it
    /// has; what it walked past the last entry visited is dropped, as a caller that resumes `after` that entry
    /// expects. Warnings are those of what the walker looked at, which may run a little past that entry.
    public func walkInPathOrderAhead(after: [UInt8]?, batch: Int = 256, batches: Int = 16,
                                     _ visit: (ScannedEntry) throws -> Bool) throws -> (warnings: [ScanWarning], stopped: Bool) {
        let queue = BoundedQueue<[ScannedEntry]>(limit: batches)
        let outcome = Locked<Result<[ScanWarning], Error>>(.success([]))  // the walker's, set before it closes the queue
        let walker = try startThread(name: "walk ahead") { [self] in
            var pending: [ScannedEntry] = []
            pending.reserveCapacity(batch)
            let result = Result { () throws -> [ScanWarning] in
                let walked = try walkInPathOrder(after: after) { entry in
                    pending.append(entry)
                    guard pending.count == batch else { return true }
                    defer { pending.removeAll(keepingCapacity: true) }
                    return queue.put(pending)
                }
                if !walked.stopped && !pending.isEmpty { queue.put(pending) }
                return walked.warnings
            }
            outcome.withLock { $0 = result }
            queue.close()
        }
        var stopped = false
        let visited = Result { () throws -> Void in
            taking: while let entries = queue.take() {
                for entry in entries where try !visit(entry) {
                    stopped = true
                    break taking
                }
            }
        }
        // However the visits ended, the walker is stopped and joined before its outcome is read.
        queue.discard()
        pthread_join(walker, nil)
        try visited.get()
        return (try outcome.current.get(), stopped)
    }

    /// Returns false once `visit` did.
    private func walkInPathOrder(_ dir: FileDescriptor, prefix: [UInt8], after: [UInt8]?, statting: Bool,
                                 _ visit: (ScannedEntry) throws -> Bool, _ warnings: inout [ScanWarning]) throws -> Bool {
        // Each name as an entry (its name the key) and, for a directory walked, as the walk below it (its name and
        // a slash); names hold no slash, so no two keys are equal. Resuming, a walk below carries `after` on only
        // when `after` lies below it.
        var steps: [(key: [UInt8], entry: ScannedEntry?, below: [UInt8]?, after: [UInt8]?)] = []
        for item in try Tree.list(dir) {
            var wantEntry = true, wantBelow = item.kind == .directory, belowAfter: [UInt8]?
            if let after {
                let full = joinPath(prefix, item.name)
                wantEntry = after.lexicographicallyPrecedes(full)
                if wantBelow {
                    let below = full + [UInt8(ascii: "/")]
                    if after.starts(with: below) { belowAfter = after } else { wantBelow = after.lexicographicallyPrecedes(below) }
                }
                if !wantEntry && !wantBelow { continue }
            }
            let found = try examine(name: item.name, kind: item.kind, in: dir, prefix: prefix, parentsChecked: true, statting: statting,
                                    warnings: &warnings)
            if wantEntry, let entry = found.entry { steps.append((item.name, entry, nil, nil)) }
            if wantBelow && found.descend { steps.append((item.name + [UInt8(ascii: "/")], nil, item.name, belowAfter)) }
        }
        steps.sort { $0.key.lexicographicallyPrecedes($1.key) }
        for step in steps {
            if let entry = step.entry {
                if try !visit(entry) { return false }
                continue
            }
            guard let name = step.below else { continue }
            let bytes = joinPath(prefix, name)
            let child: FileDescriptor
            do {
                child = try Tree.openChildDirectory(dir, name: name, shown: displayPath(bytes))
            } catch {
                warnings.append(ScanWarning(path: displayPath(bytes), message: "\(error); skipped"))
                continue
            }
            if try !walkInPathOrder(child, prefix: bytes, after: step.after, statting: statting, visit, &warnings) { return false }
        }
        return true
    }
}
