#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import SyncSystem
import Wire

/// What the agent knows about one regular file it placed or hashed: enough to trust the file unread while its
/// stat identity is unchanged, and to copy its chunks into other files.
struct FileRecord: Equatable {
    var path: RelativePath
    var stat: FileStat
    var digest: ChunkID
    var chunks: [ChunkRef]
    /// The client that placed this content (its `Hello.clientID`; "" when unknown or hashed here).
    var placedBy = ""
    /// When the record was made, or, for one an earlier process made, when this one opened the state (wall clock;
    /// the index keeps the time it was made). File times are coarse (a kernel tick), so a file changed in the same
    /// tick as it was recorded keeps its stat: a record made within a second of the file's last change is not
    /// trusted to say the file is unchanged (`isRacy`).
    var recordedAtNanos: Int64 = wallClockNanos()

    /// True when the file may have changed since, unseen in its stat.
    var isRacy: Bool { recordedAtNanos - stat.ctimeNanos < 1_000_000_000 }
}

/// The agent's persistent state in `<project>/.syncd/`: the project's instance id, and the records of the files it
/// placed or hashed in `records.db`, a SQLite B-tree keyed by path with a second one keyed by chunk id (issue 29).
/// Nothing is read until an operation asks (a no-op push reads nothing), and a lookup reads one key, so neither a
/// session nor an agent kept between sessions holds one record per file of the project.
///
/// Changes are committed in batches (`commitRecords`, at the latest when answers go out); a record a kill loses
/// costs only hashing that file again, and every record is checked against the file's stat before it is trusted.
final class AgentState {
    private let directory: FileDescriptor
    /// The project root, to name the database when /proc is not there to name it through `directory`.
    private let rootPath: String
    /// A random id made with the state directory: a client that finds another one knows the remote project was
    /// wiped or replaced since it last synced, and stops trusting what it remembers of it.
    let instance: String

    /// The record index, opened at the first operation that needs it; nil before that, and once it failed.
    private var index: RecordIndex?
    private var opened = false
    /// Records changed since the last commit: a record, or nil for one removed. Bounded by `commitBatch`.
    private var pending: [RelativePath: FileRecord?] = [:]
    /// Where the chunks of the pending records are, until they are committed with them.
    private var pendingChunks: [ChunkID: ChunkLocation] = [:]
    private static let commitBatch = 2048
    /// The most chunks the pending records' map holds (about 1 MB) before they are committed.
    private static let commitChunks = 16_384
    private let openedAtNanos = wallClockNanos()

    /// Opens (making it if needed) the state directory under the project root; its records are read on demand.
    init(project: Tree) throws {
        guard let dir = try project.openDirectory([Array(agentStateDirectoryName.utf8)], create: true) else {
            throw PlacementErrorText("cannot make \(agentStateDirectoryName)/ in \(project.rootPath)")
        }
        directory = dir
        rootPath = project.rootPath
        instance = try Self.loadInstance(dir)
    }

    private static func loadInstance(_ dir: FileDescriptor) throws -> String {
        func read() -> String? {
            let fd = openat(dir.raw, "instance", O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            let file = FileDescriptor(raw: fd, path: ".syncd/instance")
            var bytes = [UInt8](repeating: 0, count: 64)
            let n = (try? bytes.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }) ?? 0
            let text = String(decoding: bytes[0..<n], as: UTF8.self)
            return text.count == 32 && text.allSatisfy(\.isHexDigit) ? text : nil
        }
        if let existing = read() { return existing }
        var random = [UInt8](repeating: 0, count: 16)
        let urandom = try FileDescriptor.open("/dev/urandom", flags: O_RDONLY)
        guard try random.withUnsafeMutableBytes({ try urandom.read(into: $0) }) == random.count else {
            throw PlacementErrorText("cannot read 16 random bytes from /dev/urandom for .syncd/instance")
        }
        let made = random.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
        // Written to a temporary name and linked into place, so two agents starting at once agree on one id.
        let temp = "instance.\(getpid())"
        let fd = try syscall("openat", path: ".syncd/" + temp) {
            openat(dir.raw, temp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        let file = FileDescriptor(raw: fd, path: ".syncd/" + temp)
        try Array(made.utf8).withUnsafeBytes { try file.write($0, at: 0) }
        try file.sync()
        let linked = linkat(dir.raw, temp, dir.raw, "instance", 0) == 0
        unlinkat(dir.raw, temp, 0)
        Tree.syncDirectory(dir)
        if !linked, let winner = read() { return winner }
        return made
    }

    /// The whole file, or nil when there is none; a file that is there but cannot be opened is an error, not
    /// an absence (it must not be written over as if it were new).
    private func readWhole(_ name: String) throws -> [UInt8]? {
        let fd = openat(directory.raw, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw SystemError(call: "openat", path: ".syncd/" + name, errno: errno)
        }
        let file = FileDescriptor(raw: fd, path: ".syncd/" + name)
        let size = try file.stat().size
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let n = try bytes.withUnsafeMutableBytes { try file.read(into: $0, at: 0) }
        return Array(bytes[0..<n])
    }

    /// True when the state directory is still the one this object opened: the instance id is the same. Records
    /// are read from disk at each lookup, so a connection kept open across sessions sees other agents' changes.
    func isCurrent() -> Bool { (try? Self.loadInstance(directory)) == instance }

    // MARK: Lookups

    /// The record of `path`, if the agent has one.
    /// The path's record; without `chunks`, its chunk list is left empty (not decoded): all that deciding whether
    /// the file is what was recorded needs, and a 16 GiB file's list is 8 MB.
    func record(at path: RelativePath, chunks: Bool = true) -> FileRecord? {
        if let changed = pending[path] { return changed }
        guard var record = withIndex({ try $0.record(at: path, chunks: chunks) }) ?? nil else { return nil }
        // As when records were loaded whole: one made before this process opened the state counts as made then
        // (see `FileRecord.recordedAtNanos`), one made since keeps its time.
        record.recordedAtNanos = max(record.recordedAtNanos, openedAtNanos)
        return record
    }

    /// The recorded paths strictly below `path`, in byte order.
    func paths(within path: RelativePath) -> [RelativePath] {
        var found = Set(withIndex { try $0.paths(within: path) } ?? [])
        for (changed, record) in pending where changed.isWithin(path) && changed != path {
            if record == nil { found.remove(changed) } else { found.insert(changed) }
        }
        return found.sorted { $0.bytes.lexicographicallyPrecedes($1.bytes) }
    }

    /// A recorded file that holds chunk `id`, and where; nil when none does. The caller reads and checks it.
    func locate(_ id: ChunkID) -> ChunkLocation? {
        if let location = pendingChunks[id], case .some(.some) = pending[location.path] { return location }
        return withIndex { index in
            try index.locate(id) { pending[$0] == nil }
        } ?? nil
    }

    // MARK: Changes

    func put(_ record: FileRecord) {
        pending[record.path] = .some(record)
        // A large file's chunks are found through the index at once rather than kept here as well until the batch
        // is committed: a 16 GiB file has 260,000.
        if record.chunks.count > Self.commitChunks { return commitRecords() }
        for c in record.chunks where !c.id.isHole {
            pendingChunks[c.id] = ChunkLocation(path: record.path, offset: c.offset, length: c.length)
        }
        if pending.count >= Self.commitBatch || pendingChunks.count >= Self.commitChunks { commitRecords() }
    }

    func remove(_ path: RelativePath) {
        pending[path] = .some(nil)
        if pending.count >= Self.commitBatch { commitRecords() }
    }

    /// Writes the changes kept so far, in one transaction.
    func commitRecords() {
        guard !pending.isEmpty else { return }
        let changes = pending
        pending.removeAll(keepingCapacity: true)
        pendingChunks.removeAll(keepingCapacity: true)
        // The records are an optimisation: a failed commit only costs hashing again later.
        _ = withIndex { index in
            try index.transaction {
                for (path, record) in changes {
                    if let record { try index.put(record) } else { try index.remove(path) }
                }
            }
        }
    }

    /// Commits what is pending; called at the end of every session.
    func save() throws { commitRecords() }

    /// Runs `body` on the index, opening it first; nil when it cannot be opened or `body` fails (reported once,
    /// after which the records are left alone for this process: files are hashed again, nothing is written).
    private func withIndex<T>(_ body: (RecordIndex) throws -> T) -> T? {
        if !opened {
            opened = true
            index = openIndex()
        }
        guard let index else { return nil }
        do { return try body(index) } catch {
            printError("syncd-agent: the project's records in .syncd/records.db failed (\(error)); files are hashed again")
            self.index = nil
            return nil
        }
    }

    private func openIndex() -> RecordIndex? {
        // Named through the directory already opened (no link followed on the way); the name itself must not be a
        // link either, and SQLite opens its -wal and -shm files beside it.
        let name = access("/proc/self/fd", F_OK) == 0 ? "/proc/self/fd/\(directory.raw)/records.db"
                                                       : rootPath + "/" + agentStateDirectoryName + "/records.db"
        do {
            var st = stat()
            if fstatat(directory.raw, "records.db", &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFLNK {
                throw PlacementErrorText(".syncd/records.db is a symbolic link")
            }
            let made: RecordIndex
            do { made = try RecordIndex(path: name) } catch let error as SQLiteError where error.isDamage {
                // Damaged (a disk that lost writes): set aside, and the files are hashed again into a new one.
                printError("syncd-agent: .syncd/records.db is damaged (\(error)); it is kept as records.db.damaged and files are hashed again")
                renameat(directory.raw, "records.db", directory.raw, "records.db.damaged")
                for suffix in ["-wal", "-shm"] { unlinkat(directory.raw, "records.db" + suffix, 0) }
                made = try RecordIndex(path: name)
            }
            try importOlderState(into: made)
            return made
        } catch {
            printError("syncd-agent: cannot read the project's records in .syncd/records.db (\(error)); files are hashed again")
            return nil
        }
    }

    // MARK: The state file and journal of agents before 0.16

    /// Agents before 0.16 kept their records in `state` (`SYNCDST1`/`SYNCDST2`, rewritten whole) and `journal`
    /// (appended). They are read once into the index, in one transaction that also marks them read, and removed.
    private static let stateMagic = Array("SYNCDST2".utf8)
    private static let olderStateMagic = Array("SYNCDST1".utf8)

    private func importOlderState(into index: RecordIndex) throws {
        let state = try readWhole("state")
        let journal = try readWhole("journal")
        guard state != nil || journal != nil else { return }
        if try !index.hasImportedOlderState() {
            try index.transaction {
                if let state, state.count >= 8, [Self.stateMagic, Self.olderStateMagic].contains(Array(state[0..<8])) {
                    try Self.replay(state[8...], into: index)
                }
                if let journal { try Self.replay(journal[...], into: index) }
                try index.markImportedOlderState()
            }
        }
        for name in ["state", "journal", "state.tmp"] { unlinkat(directory.raw, name, 0) }
        Tree.syncDirectory(directory)
    }

    /// Applies framed records; stops quietly at a torn or unreadable tail (a write cut off by a kill).
    private static func replay(_ bytes: ArraySlice<UInt8>, into index: RecordIndex) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset + 4 <= raw.count {
                let length = Int(UInt32(littleEndian: UnsafeRawBufferPointer(rebasing: raw[offset..<offset + 4]).loadUnaligned(as: UInt32.self)))
                guard length > 0, offset + 4 + length <= raw.count else { return }
                var r = PayloadReader(UnsafeRawBufferPointer(rebasing: raw[(offset + 4)..<(offset + 4 + length)]), frame: "state record")
                offset += 4 + length
                guard let tag = try? r.u8("tag") else { return }
                switch tag {
                case 1, 7:
                    guard let record = try? decode(&r, tag: tag, recordedAt: wallClockNanos()) else { return }
                    try index.put(record)
                case 2:
                    guard let path = try? RelativePath(bytes: try r.byteString("path")) else { return }
                    try index.remove(path)
                case 3:
                    // One record per temporary file (agents before 0.13).
                    guard let partial = try? RelativePath(bytes: try r.byteString("partial")) else { return }
                    try index.addPartialDirectory(partial.parentBytes)
                case 4:
                    continue
                case 5:
                    guard let directory = try? r.byteString("directory") else { return }
                    try index.addPartialDirectory(directory)
                case 6:
                    try index.clearPartialDirectories()
                default:
                    return
                }
            }
        }
    }

    /// A record as written: tag 1, or 7 with the client that placed it; the path first. Without `chunks`, its
    /// list is written empty (the record index keeps a long list in pieces of its own).
    static func encode(_ record: FileRecord, chunks: Bool = true) -> [UInt8] {
        let listed = chunks ? record.chunks.count : 0
        // Exactly what is written: one byte over would double a large file's buffer.
        var w = PayloadWriter(capacity: 69 + record.path.bytes.count + listed * 20
                                        + (record.placedBy.isEmpty ? 0 : 4 + record.placedBy.utf8.count))
        w.u8(record.placedBy.isEmpty ? 1 : 7)
        w.byteString(record.path.bytes)
        w.u64(record.stat.device); w.u64(record.stat.inode); w.u32(record.stat.permissions); w.u64(record.stat.size)
        w.i64(record.stat.mtimeNanos); w.i64(record.stat.ctimeNanos)
        w.id(record.digest)
        w.u32(UInt32(listed))
        for c in record.chunks[..<listed] { w.id(c.id); w.u32(c.length) }
        if !record.placedBy.isEmpty { w.string(record.placedBy) }
        return w.bytes
    }

    /// Reads what `encode` wrote, after its tag.
    static func decode(_ r: inout PayloadReader, tag: UInt8, recordedAt: Int64, chunks wanted: Bool = true) throws -> FileRecord {
        let path = try RelativePath(bytes: try r.byteString("path"))
        let st = FileStat(device: try r.u64("dev"), inode: try r.u64("ino"), kind: .regular, permissions: try r.u32("perm"),
                          size: try r.u64("size"), mtimeNanos: try r.i64("mtime"), ctimeNanos: try r.i64("ctime"))
        let digest = try r.id("digest")
        let n = try r.count("chunks", itemSize: 20, limit: Int.max)
        var chunks: [ChunkRef] = []
        if wanted { chunks.reserveCapacity(n) }
        var offset: UInt64 = 0
        for _ in 0..<n where !wanted {
            _ = try r.id("id")
            _ = try r.u32("len")
        }
        for _ in 0..<(wanted ? n : 0) {
            let id = try r.id("id")
            let length = try r.u32("len")
            chunks.append(ChunkRef(id: id, offset: offset, length: length))
            offset += UInt64(length)
        }
        var record = FileRecord(path: path, stat: st, digest: digest, chunks: chunks, recordedAtNanos: recordedAt)
        if tag == 7 { record.placedBy = try r.string("placed by") }
        return record
    }

    // MARK: Older agents on the same project

    /// Held shared while a push runs: an agent from before build sessions (0.14) on the same project sweeps every
    /// temporary file only when it can take this lock exclusive, so it never removes those of a push running here.
    private var pushLock: FileDescriptor?

    func beginPush() {
        if pushLock == nil {
            let fd = openat(directory.raw, "push.lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { return }
            pushLock = FileDescriptor(raw: fd, path: ".syncd/push.lock")
        }
        // Bounded: an older agent holds it exclusive only for its short sweep.
        for _ in 0..<3000 where flock(pushLock!.raw, LOCK_SH | LOCK_NB) != 0 { usleep(10_000) }
    }

    func endPush() {
        if let pushLock { _ = flock(pushLock.raw, LOCK_UN) }
    }

    /// Removes the temporary files an agent from before build sessions (0.14) left in the directories it
    /// journaled, and forgets those directories. Their names carry no session; today's agents never make such names.
    /// Done only once the records were opened for some other reason, so a session that needs nothing of them does
    /// not open them for this.
    func sweepLegacyPartials(in tree: Tree) {
        guard opened, let directories = withIndex({ try $0.partialDirectories() }), !directories.isEmpty else { return }
        for directory in directories {
            BuildSession.removeParts(in: tree, directory: directory) { BuildSession.owner(ofPartName: $0) == nil }
        }
        _ = withIndex { index in try index.transaction { try index.clearPartialDirectories() } }
    }
}

/// A plain-text error from the agent's own checks.
struct PlacementErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ text: String) { description = text }
}
