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
    /// When this process made or loaded the record (wall clock). File times are coarse (a kernel tick), so a
    /// file changed in the same tick as it was recorded keeps its stat: a record made within a second of the
    /// file's last change is not trusted to say the file is unchanged (`isRacy`).
    var recordedAtNanos: Int64 = wallClockNanos()

    /// True when the file may have changed since, unseen in its stat.
    var isRacy: Bool { recordedAtNanos - stat.ctimeNanos < 1_000_000_000 }
}

/// The agent's persistent state in `<project>/.syncd/`: a state file rewritten at the end of a session and an
/// append-only journal. Records of placed files are journaled in batches (`flushJournal`, at the latest when
/// answers go out); a record a kill loses costs only hashing that file again. What must be on disk before the
/// fact is written at once: a directory that is about to hold a temporary file.
final class AgentState {
    /// The records, read from disk on first use (issue 29): a session that asks nothing of them (a no-op push,
    /// a build) does not load, and hold, one per file of the project.
    var records: [RelativePath: FileRecord] {
        ensureLoaded()
        return loadedRecords
    }
    private var loadedRecords: [RelativePath: FileRecord] = [:]
    /// Whether the state file and the journal have been read, and whether that failed (then nothing is written
    /// over the state file, which may hold more than this process could read).
    private var isLoaded = false
    private var loadFailed = false
    /// Directories that may hold temporary files of an agent from before build sessions (see
    /// `sweepLegacyPartials`); today's sessions list theirs in their own leases (`BuildSession`).
    private var partialDirectories: Set<[UInt8]> = []
    private let directory: FileDescriptor
    private var journal: FileDescriptor?
    /// A random id made with the state directory: a client that finds another one knows the remote project was
    /// wiped or replaced since it last synced, and stops trusting what it remembers of it.
    let instance: String
    /// State files written now may hold records with the client that placed them (tag 7): `SYNCDST2`, which agents
    /// before 0.14 do not read at all (they hash again) rather than read in part. `SYNCDST1` is still read.
    private static let stateMagic = Array("SYNCDST2".utf8)
    private static let olderStateMagic = Array("SYNCDST1".utf8)

    /// Opens (making it if needed) the state directory under the project root and loads the state file plus the journal.
    init(project: Tree) throws {
        guard let dir = try project.openDirectory([Array(agentStateDirectoryName.utf8)], create: true) else {
            throw PlacementErrorText("cannot make \(agentStateDirectoryName)/ in \(project.rootPath)")
        }
        directory = dir
        instance = try Self.loadInstance(dir)
        let fd = try syscall("openat", path: ".syncd/journal") {
            openat(dir.raw, "journal", O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        journal = FileDescriptor(raw: fd, path: ".syncd/journal")
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

    /// True when the files on disk are still the ones this object last read or wrote: no other agent changed the
    /// state, and the instance id is the same. A connection kept open across sessions reuses the loaded state then.
    func isCurrent() -> Bool {
        func size(_ name: String) -> Int? {
            var st = stat()
            return fstatat(directory.raw, name, &st, AT_SYMLINK_NOFOLLOW) == 0 ? Int(st.st_size) : nil
        }
        guard (try? Self.loadInstance(directory)) == instance else { return false }
        // Nothing read yet: nothing to be stale.
        guard isLoaded else { return true }
        return (size("journal") ?? 0) == journalBytes && (size("state") ?? 0) == stateBytes
    }

    /// Bytes in the state file and in the journal: the state file is rewritten only once the journal is large next
    /// to it, so a small push does not rewrite (and fsync) the state of a 100k-file project.
    private var stateBytes = 0
    private var journalBytes = 0

    /// Reads the state file and the journal, once. A read that fails (an I/O error: a torn tail is not one)
    /// leaves the records empty, so files are hashed again; the state file is then left as it is.
    private func ensureLoaded() {
        guard !isLoaded else { return }
        isLoaded = true
        do { try load() } catch {
            loadFailed = true
            loadedRecords = [:]
            printError("syncd-agent: cannot read the project's state (\(error)); files are hashed again")
        }
    }

    private func load() throws {
        if let whole = try readWhole("state"), whole.count >= 8,
           [Self.stateMagic, Self.olderStateMagic].contains(Array(whole[0..<8])) {
            // A record takes at least 80 bytes (a small file with one chunk): room for them all without rehashing.
            loadedRecords.reserveCapacity(whole.count / 80)
            replay(Array(whole[8...]))
            stateBytes = whole.count
        }
        if let journal = try readWhole("journal") {
            replay(journal)
            journalBytes = journal.count
        }
    }

    /// Applies framed records; stops quietly at a torn or unreadable tail (a write cut off by a kill).
    private func replay(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset + 4 <= raw.count {
                let length = Int(UInt32(littleEndian: UnsafeRawBufferPointer(rebasing: raw[offset..<offset + 4]).loadUnaligned(as: UInt32.self)))
                guard length > 0, offset + 4 + length <= raw.count else { return }
                var r = PayloadReader(UnsafeRawBufferPointer(rebasing: raw[(offset + 4)..<(offset + 4 + length)]), frame: "state record")
                offset += 4 + length
                guard (try? apply(&r)) != nil else { return }
            }
        }
    }

    private func apply(_ r: inout PayloadReader) throws {
        let tag = try r.u8("tag")
        switch tag {
        case 1, 7:
            let path = try RelativePath(bytes: try r.byteString("path"))
            let st = FileStat(device: try r.u64("dev"), inode: try r.u64("ino"), kind: .regular, permissions: try r.u32("perm"),
                              size: try r.u64("size"), mtimeNanos: try r.i64("mtime"), ctimeNanos: try r.i64("ctime"))
            let digest = try r.id("digest")
            let n = try r.count("chunks", itemSize: 20, limit: Int.max)
            var chunks: [ChunkRef] = []
            chunks.reserveCapacity(n)
            var offset: UInt64 = 0
            for _ in 0..<n {
                let id = try r.id("id")
                let length = try r.u32("len")
                chunks.append(ChunkRef(id: id, offset: offset, length: length))
                offset += UInt64(length)
            }
            var record = FileRecord(path: path, stat: st, digest: digest, chunks: chunks)
            if tag == 7 { record.placedBy = try r.string("placed by") }
            loadedRecords[path] = record
        case 2:
            loadedRecords[try RelativePath(bytes: try r.byteString("path"))] = nil
        case 3:
            // Written by agents before 0.13: one record per temporary file.
            let partial = try RelativePath(bytes: try r.byteString("partial"))
            partialDirectories.insert(partial.parentBytes)
        case 4:
            _ = try r.byteString("partial")
        case 5:
            partialDirectories.insert(try r.byteString("directory"))
        case 6:
            partialDirectories.removeAll()
        case let tag:
            throw ProtocolError("unknown state record \(tag)")
        }
    }

    private static func encode(_ record: FileRecord) -> [UInt8] {
        var w = PayloadWriter(capacity: 80 + record.chunks.count * 20)
        // 7: a record with the client that placed it (agents before 0.14 know only 1, and stop at 7).
        w.u8(record.placedBy.isEmpty ? 1 : 7)
        w.byteString(record.path.bytes)
        w.u64(record.stat.device); w.u64(record.stat.inode); w.u32(record.stat.permissions); w.u64(record.stat.size)
        w.i64(record.stat.mtimeNanos); w.i64(record.stat.ctimeNanos)
        w.id(record.digest)
        w.u32(UInt32(record.chunks.count))
        for c in record.chunks { w.id(c.id); w.u32(c.length) }
        if !record.placedBy.isEmpty { w.string(record.placedBy) }
        return w.bytes
    }

    /// Journal records not written yet.
    private var unwritten: [UInt8] = []

    private func appendJournal(_ payload: [UInt8]) {
        withUnsafeBytes(of: UInt32(payload.count).littleEndian) { unwritten.append(contentsOf: $0) }
        unwritten.append(contentsOf: payload)
        if unwritten.count >= 64 << 10 { flushJournal() }
    }

    /// Writes the journal records kept so far.
    func flushJournal() {
        guard !unwritten.isEmpty else { return }
        // The journal is an optimisation: a failed append only costs re-hashing later.
        _ = try? unwritten.withUnsafeBytes { try journal?.writeAll($0) }
        journalBytes += unwritten.count
        unwritten.removeAll(keepingCapacity: true)
    }

    func put(_ record: FileRecord) {
        ensureLoaded()
        loadedRecords[record.path] = record
        appendJournal(Self.encode(record))
    }

    func remove(_ path: RelativePath) {
        ensureLoaded()
        // With a state that could not be read, the removal is journaled anyway: a later reading of it must not
        // bring the record back.
        guard loadedRecords.removeValue(forKey: path) != nil || loadFailed else { return }
        var w = PayloadWriter()
        w.u8(2)
        w.byteString(path.bytes)
        appendJournal(w.bytes)
    }

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
    /// Done only once the state is read for some other reason, so a session that needs nothing of it does not
    /// read it for this.
    func sweepLegacyPartials(in tree: Tree) {
        guard isLoaded, !partialDirectories.isEmpty else { return }
        for directory in partialDirectories {
            BuildSession.removeParts(in: tree, directory: directory) { BuildSession.owner(ofPartName: $0) == nil }
        }
        partialDirectories.removeAll()
        appendJournal([6])
    }

    /// Folds the journal into the state file (written atomically) once the journal has grown past a quarter of
    /// the state file, or 1 MiB; until then the journal, replayed at load, is the record.
    func save() throws {
        flushJournal()
        guard isLoaded, !loadFailed, journalBytes > max(1 << 20, stateBytes / 4) else { return }
        var body = Self.stateMagic
        for record in loadedRecords.values {
            let payload = Self.encode(record)
            withUnsafeBytes(of: UInt32(payload.count).littleEndian) { body.append(contentsOf: $0) }
            body.append(contentsOf: payload)
        }
        for directory in partialDirectories {
            var w = PayloadWriter()
            w.u8(5)
            w.byteString(directory)
            withUnsafeBytes(of: UInt32(w.bytes.count).littleEndian) { body.append(contentsOf: $0) }
            body.append(contentsOf: w.bytes)
        }
        let fd = try syscall("openat", path: ".syncd/state.tmp") {
            openat(directory.raw, "state.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        let tmp = FileDescriptor(raw: fd, path: ".syncd/state.tmp")
        try body.withUnsafeBytes { try tmp.writeAll($0) }
        try tmp.sync()
        try syscall("renameat", path: ".syncd/state") { renameat(directory.raw, "state.tmp", directory.raw, "state") }
        Tree.syncDirectory(directory)
        try journal?.truncate(0)
        stateBytes = body.count
        journalBytes = 0
    }
}

/// A plain-text error from the agent's own checks.
struct PlacementErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ text: String) { description = text }
}
