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
            guard let parent = try tree.openParent(path, create: false),
                  let st = try Tree.lstat(at: parent, name: path.name, shown: path.description) else { continue }
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
        let bytes = joinPath(prefix, name)
        if name.starts(with: partialFilePrefix.utf8) { return }
        // A walk goes into no excluded directory unless something below it may be brought back: then the
        // parents need no matching.
        let excluded = rules.isExcluded(bytes, isDirectory: kind == .directory, parentsChecked: recurse)
        if excluded && (kind != .directory || !rules.mayBringBack(below: bytes)) { return }
        let path: RelativePath
        do { path = try RelativePath(bytes: bytes) } catch {
            result.warnings.append(ScanWarning(path: displayPath(bytes), message: "\(error); skipped"))
            return
        }
        let pathString = path.description
        guard let st = try Tree.lstat(at: dir, name: name, shown: pathString) else { return }
        switch st.kind {
        case .directory:
            if !excluded { result.entries.append(ScannedEntry(path: path, stat: st, linkTarget: nil)) }
            guard recurse else { return }
            let child: FileDescriptor
            do {
                child = try Tree.openChildDirectory(dir, name: name, shown: pathString)
            } catch {
                result.warnings.append(ScanWarning(path: pathString, message: "\(error); skipped"))
                return
            }
            try walk(child, prefix: bytes, into: &result)
        case .regular:
            if !excluded { result.entries.append(ScannedEntry(path: path, stat: st, linkTarget: nil)) }
        case .symlink:
            if excluded { return }
            let target = try Tree.readLink(at: dir, name: name, shown: pathString)
            if let why = symlinkEscapes(linkPath: path, target: target) {
                result.warnings.append(ScanWarning(path: pathString, message: "symlink to \(displayPath(target)): its target \(why); skipped"))
            } else {
                result.entries.append(ScannedEntry(path: path, stat: st, linkTarget: target))
            }
        case .other:
            if !excluded { result.warnings.append(ScanWarning(path: pathString, message: "not a regular file, directory or symlink; skipped")) }
        }
    }
}
