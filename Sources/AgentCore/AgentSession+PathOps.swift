#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import ProjectScan
import Watch
import SyncRules
import SyncSystem
import Wire

// A push's answers and its path operations: symlinks, directories, deletes, and what a conflict keeps.
extension AgentSession {
    /// Runs one path operation; a bad path or a file system error fails that operation only.
    func guardOp(_ body: () throws -> Void, fail: (String) throws -> Void) throws {
        do { try body() } catch let error as PathError {
            try fail("\(error)")
        } catch let error as SystemError {
            try fail(describeFailure(error))
        } catch let error as AgentError {
            try fail("\(error)")
        }
    }

    func reply(_ op: UInt32, _ status: OpStatus, _ message: String, _ current: PathState) throws {
        try sendResult(OpResult(op: op, status: status, message: message, current: current))
    }

    /// Answers a conflict: what the remote holds now (with size and mtime for a file) and what the sender
    /// believed it held, so the client can say both.
    func replyConflict(_ op: UInt32, _ path: RelativePath, _ current: PathState, _ st: FileStat?, base: PathState,
                               _ told: String? = nil) throws {
        let what = told ?? (current == .absent ? "deleted on the remote since the last sync" : "changed on the remote since the last sync")
        let isFile = st?.kind == .regular
        try sendResult(OpResult(op: op, status: .conflict,
                                message: "\(what): the remote holds \(describe(current, st)), the last sync recorded \(base)",
                                current: current, currentSize: isFile ? st!.size : 0,
                                currentMtimeNanos: isFile ? st!.mtimeNanos : 0))
    }

    func describe(_ state: PathState, _ st: FileStat?) -> String {
        guard case .file = state, let st else { return "\(state)" }
        return "\(state) (\(st.size) bytes, modified \(formatTime(st.mtimeNanos)))"
    }

    /// Keeps what is at `path` under a conflict name beside it (a forced operation's loser) and returns that
    /// name. Renamed without replacing anything; what the agent knows of it follows it.
    func keepAside(_ path: RelativePath) throws -> [UInt8] {
        tree.forgetDirectories()
        let kept = try tree.keepAside(path, stamp: conflictStamp)
        if let record = state.record(at: path) {
            dropRecord(path)
            if let st = try tree.lstat(kept) {
                state.put(FileRecord(path: kept, stat: st, digest: record.digest, chunks: record.chunks))
            }
        }
        for below in state.paths(within: path) { dropRecord(below) }
        return kept.name
    }

    /// A failure's text; a name the remote file system refuses (not in its encoding, a character it does not
    /// allow, too long) says so, and a full file system says how much room `assembly`'s file still needs and how
    /// much there is.
    func describeFailure(_ error: Error, building assembly: FileAssembly? = nil) -> String {
        if let e = error as? SystemError, [EILSEQ, ENAMETOOLONG, EINVAL].contains(e.errno) {
            return "the remote file system cannot hold this name (\(e.call): \(e.reason)); rename it here or add it to .syncignore"
        }
        if let e = error as? SystemError, Self.isFull(e.errno) {
            let free = tree.space()?.available ?? 0
            var text = "the remote file system at \(tree.rootPath) is full (\(e.call): \(e.reason)), with \(byteCount(free)) free"
            if let assembly {
                text += assembly.ended ? "; this file needs \(byteCount(assembly.bytesMissing)) more of its \(byteCount(assembly.size))"
                                       : "; this file needs at least \(byteCount(assembly.bytesMissing)) more of the \(byteCount(assembly.bytesListed)) listed so far"
            }
            return text + ". Make room there (or raise the quota), then push again"
        }
        return "\(error)"
    }

    /// True for the errors of a file system (or quota) with no room left.
    static func isFull(_ code: Int32) -> Bool { code == ENOSPC || code == EDQUOT }

    /// Runs `body`, which needs room in the project; when the file system is full, what sessions that are gone
    /// left behind is removed first (their temporary files), and `body` is tried once more.
    @discardableResult
    func makingRoom<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as SystemError where Self.isFull(error.errno) {
            building.findDeadSessions()
            guard building.reclaimDead(in: tree) > 0 else { throw error }
            return try body()
        }
    }

    func updateMetadata(_ path: RelativePath, _ st: FileStat, _ header: FileHeader) throws {
        guard st.permissions != header.permissions & 0o777 || st.mtimeNanos != header.mtimeNanos else { return }
        guard let parent = try tree.openParent(path, create: false) else { return }
        let file = try Tree.openFile(at: parent, name: path.name, flags: O_RDONLY, shown: path.description)
        try file.setPermissions(header.permissions & 0o777)
        try file.setModificationTime(header.mtimeNanos)
        if var record = state.record(at: path) {
            record.stat = try file.stat()
            state.put(record)
        }
    }

    /// Runs `change` with what is at `path` now, while no other session of the project changes a final path
    /// (`BuildSession.placing`): what is there is found first (which may mean hashing a file) and confirmed by
    /// its stat under the lock, or found again if it changed meanwhile. `change` returns the answer, which is sent
    /// once the lock is let go.
    func changing(_ path: RelativePath, _ change: (PathState, FileStat?) throws -> () throws -> Void) throws {
        let (found, foundStat) = try currentState(path)
        let answer = try building.placing {
            let now = try tree.lstat(path)
            let same = (now == nil && foundStat == nil)
                || (now != nil && foundStat != nil && now!.kind == foundStat!.kind && now!.sameContentIdentity(as: foundStat!))
            if same { return try change(found, foundStat) }
            let (current, st) = try currentState(path)
            return try change(current, st)
        }
        try answer()
    }

    func applySymlink(_ op: UInt32, _ raw: [UInt8], _ target: [UInt8], _ base: PathState, force: Bool) throws {
        let path = try checkedPath(raw)
        if isPullPath(path) && !force { throw AgentError("\(path) is remote-owned (a pull path); push refused") }
        if let why = symlinkEscapes(linkPath: path, target: target) {
            throw PathError(path: path.description, reason: "symlink to \(displayPath(target)): its target \(why); not placed")
        }
        try changing(path) { current, st in
            var keptAs: [UInt8] = []
            switch decidePushAtRemote(current: current, incoming: .symlink(target), base: base, forced: force) {
            case .same: return { try self.reply(op, .unchanged, "", current) }
            case .conflict, .staysDeleted, .nothing: return { try self.replyConflict(op, path, current, st, base: base) }
            case .keepAsideThenTake: keptAs = try keepAside(path)
            case .take: break
            }
            guard let parent = try tree.openParent(path, create: true) else { throw AgentError("cannot make the directory of \(path)") }
            try Tree.placeSymlink(at: parent, name: path.name, target: target, shown: path.description,
                                  temporaryName: building.linkName(for: path.name))
            if state.record(at: path) != nil { dropRecord(path) }
            return { try self.sendResult(OpResult(op: op, status: .applied, message: "", current: .symlink(target), keptAs: keptAs)) }
        }
    }

    func applyDirectory(_ op: UInt32, _ raw: [UInt8], _ permissions: UInt32, force: Bool) throws {
        let path = try checkedPath(raw)
        if isPullPath(path) && !pullPaths.contains(path) && !force {
            throw AgentError("\(path) is remote-owned (a pull path); push refused")
        }
        try changing(path) { current, st in
            var keptAs: [UInt8] = []
            // A directory is sent as new (its base absent): whatever else is there is in its way.
            switch decidePushAtRemote(current: current, incoming: .directory, base: .absent, forced: force) {
            case .same:
                if let st, st.permissions & 0o777 != permissions & 0o777, let dir = try tree.openDirectory(path, create: false) {
                    try dir.setPermissions(permissions & 0o777)
                    return { try self.reply(op, .applied, "", .directory) }
                }
                return { try self.reply(op, .unchanged, "", .directory) }
            case .conflict, .staysDeleted, .nothing:
                return { try self.replyConflict(op, path, current, st, base: .absent, "a \(current) is in the way on the remote") }
            case .keepAsideThenTake: keptAs = try keepAside(path)
            case .take: break
            }
            guard let dir = try tree.openDirectory(path, create: true) else { throw AgentError("cannot make \(path)") }
            try dir.setPermissions(permissions & 0o777)
            return { try self.sendResult(OpResult(op: op, status: .applied, message: "", current: .directory, keptAs: keptAs)) }
        }
    }

    func applyDelete(_ op: UInt32, _ raw: [UInt8], _ base: PathState, force: Bool) throws {
        let path = try checkedPath(raw)
        if isPullPath(path) && !force { throw AgentError("\(path) is remote-owned (a pull path); push refused") }
        try changing(path) { current, st in
            let decision = decidePushAtRemote(current: current, incoming: .absent, base: base,
                                              currentIsBase: matchesBase(base, current, path, st), forced: force)
            if decision == .same { return { try self.reply(op, .unchanged, "", .absent) } }
            if current == .directory { tree.forgetDirectories() }
            guard let parent = try tree.openParent(path, create: false) else { return { try self.reply(op, .unchanged, "", .absent) } }
            switch decision {
            case .same: return { try self.reply(op, .unchanged, "", .absent) }
            case .conflict, .staysDeleted, .nothing: return { try self.replyConflict(op, path, current, st, base: base) }
            case .keepAsideThenTake:
                // Deleted here, changed there: the remote's version is kept under a conflict name.
                let keptAs = try keepAside(path)
                durability!.renamed(OpResult(op: op, status: .applied, message: "", current: .absent, keptAs: keptAs), directory: nil)
                return {}
            case .take: break
            }
            if current == .directory {
                if withCName(path.name, { unlinkat(parent.raw, $0, AT_REMOVEDIR) }) != 0 {
                    if errno == ENOTEMPTY || errno == EEXIST {
                        let names = (try? tree.openDirectory(path, create: false)).flatMap { $0 }.map { (try? Tree.list($0)) ?? [] } ?? []
                        let shown = names.prefix(3).map { displayPath($0.name) }.joined(separator: ", ")
                        return { try self.replyConflict(op, path, .directory, st, base: base, "the directory holds files created on the remote (\(shown)); kept") }
                    }
                    throw SystemError(call: "rmdir", path: path.description, errno: errno)
                }
            } else {
                var stashed: ChunkID?
                if let st = try Tree.lstat(at: parent, name: path.name, shown: path.description), st.kind == .regular { stashed = stash(path, stat: st) }
                try Tree.remove(at: parent, name: path.name, isDirectory: false, shown: path.description)
                if let stashed { refreshStash(stashed) }
            }
            dropRecord(path)
            // Durable, and answered, with the next sync of renames.
            durability!.renamed(OpResult(op: op, status: .applied, message: "", current: .absent), directory: (path.parentBytes, parent))
            return {}
        }
    }

    func dropRecord(_ path: RelativePath) {
        held.willChange(path)
        state.remove(path)
    }

    /// Records `record` in place of the path's old one; the state's index of chunks, which `held` reads, follows.
    func replaceRecord(_ record: FileRecord) {
        held.willChange(record.path)
        state.put(record)
    }
}

/// `n` bytes for a person: "812 KiB", "3.4 GiB".
func byteCount(_ n: UInt64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(n)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(n) bytes" }
    let tenths = Int((value * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) \(units[unit])"
}
