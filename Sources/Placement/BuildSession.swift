#if canImport(Glibc)
import Glibc
#endif
import Chunking
import CSystemShims
import SyncSystem

/// The temporary files one process builds in a tree, kept apart from every other process's.
///
/// A file being built is named `.syncd-part.<session id>.<hash of its final name>`, so two sessions never build
/// into one inode, whatever their timing: a superseded session that wakes up writes only into files of its own.
/// Each session holds an exclusive `flock` on its lease, `<sessions>/<id>`, for as long as it lives. The kernel
/// drops the lock only with the session's last descriptor of it, so a lease that can be locked belongs to a
/// session that is gone for good; what it left may then be taken over (renamed to the taker's name and resumed,
/// `adoptLeftover`) or removed (`sweep`, `reclaimDead`). The lease lists the directories its session made
/// temporary files in, written before the first one there, so they can always be found.
///
/// `placing` serialises the changes of final paths (check what is there, then rename or remove) across the
/// sessions of one tree: a session with a stale view then sees what another placed and reports a conflict
/// instead of replacing it.
public final class BuildSession {
    /// 16 hex digits, random.
    public let id: String
    /// The sessions directory, nil for a session that shares its tree with no one (`unshared()`).
    private let directory: FileDescriptor?
    private let lease: FileDescriptor?
    private let placeLock: FileDescriptor?
    /// Directories noted in the lease (and so possibly holding temporary files of this session).
    private var noted: Set<[UInt8]> = []
    /// Sessions found gone, their leases locked by this one until swept.
    private var dead: [(id: String, lease: FileDescriptor, directories: Set<[UInt8]>)] = []
    /// The longest `placing` waits for another session to finish placing.
    public static let placementWaitSeconds = 30

    /// Opens a session whose leases live in `directory` (made if needed); `shown` names it in errors.
    public init(sessionsIn directory: FileDescriptor, shown: String) throws {
        let id = Self.newID()
        self.id = id
        self.directory = directory
        let temp = id + ".new"
        let fd = try syscall("openat", path: shown + "/" + temp) {
            openat(directory.raw, temp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        let made = FileDescriptor(raw: fd, path: shown + "/" + id)
        // Locked before it is given its name: nobody can ever find this lease unlocked while this session lives.
        try syscall("flock", path: made.path) { flock(fd, LOCK_EX | LOCK_NB) }
        try syscall("renameat", path: made.path) { renameat(directory.raw, temp, directory.raw, id) }
        lease = made
        let lockFD = try syscall("openat", path: shown + "/place.lock") {
            openat(directory.raw, "place.lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        placeLock = FileDescriptor(raw: lockFD, path: shown + "/place.lock")
    }

    private init() {
        id = Self.newID()
        directory = nil
        lease = nil
        placeLock = nil
    }

    /// A session for a tree no other session works in (a restore into a new directory): unique names, nothing
    /// to take over, no lock.
    public static func unshared() -> BuildSession { BuildSession() }

    deinit {
        // A session that ends with no temporary file left removes its lease; otherwise the lease stays, unlocked,
        // for a later session to take over what it lists.
        if let directory, let lease, noted.isEmpty {
            _ = unlinkat(directory.raw, id, 0)
            lease.close()
        }
    }

    private static func newID() -> String {
        let value = UInt64.random(in: 0...UInt64.max)
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The temporary name of `path` in this session: `.syncd-part.<id>.<hash of the final name>`.
    public func partName(for path: RelativePath) -> String { Self.partName(session: id, name: path.name) }

    /// A name for a symlink about to replace `name` in one rename: `.syncd-part.<id>.link.<hash of the name>`.
    public func linkName(for name: [UInt8]) -> [UInt8] {
        Array((Self.partName(session: id, name: name) + ".link").utf8)
    }

    static func partName(session: String, name: [UInt8]) -> String {
        let hash = String(ChunkID(hashing: name).low, radix: 16)
        return partialFilePrefix + session + "." + String(repeating: "0", count: 16 - hash.count) + hash
    }

    /// The session id in a temporary file's name (`.syncd-part.<id>.…`); nil for any other name (an older
    /// agent's temporary files, whose names carry no session).
    public static func owner(ofPartName name: [UInt8]) -> String? {
        let prefix = Array(partialFilePrefix.utf8)
        guard name.count > prefix.count + 17, name.starts(with: prefix), name[prefix.count + 16] == UInt8(ascii: ".") else { return nil }
        let id = name[prefix.count..<prefix.count + 16]
        guard id.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else { return nil }
        return String(decoding: id, as: UTF8.self)
    }

    /// Notes in the lease that this session is about to make a temporary file in `directory` (its path bytes).
    /// Must precede the file, so that whatever a kill leaves is listed.
    public func willBuild(in directory: [UInt8]) throws {
        guard let lease, !noted.contains(directory) else { return }
        var record: [UInt8] = []
        withUnsafeBytes(of: UInt32(directory.count).littleEndian) { record.append(contentsOf: $0) }
        record += directory
        let end = try lease.stat().size
        try record.withUnsafeBytes { try lease.write($0, at: end) }
        noted.insert(directory)
    }

    /// Looks for sessions gone since they made temporary files (their leases can be locked now), and keeps their
    /// leases locked, so that no other session sweeps what this one may take over. Call at the start of a push.
    public func findDeadSessions() {
        guard let directory, let names = try? Tree.list(directory) else { return }
        // A lease a session made but never named (it died in between): it lists nothing, and goes once it is a
        // minute old (a session names its lease within microseconds of making it, locked only from the flock on).
        let now = wallClockNanos()
        for entry in names where entry.kind == .regular && entry.name.count == 20 && entry.name.suffix(4).elementsEqual(".new".utf8) {
            guard let st = try? Tree.lstat(at: directory, name: entry.name, shown: ""), now - st.mtimeNanos > 60_000_000_000 else { continue }
            let fd = withCName(entry.name) { openat(directory.raw, $0, O_RDWR | O_NOFOLLOW | O_CLOEXEC) }
            guard fd >= 0 else { continue }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { _ = withCName(entry.name) { unlinkat(directory.raw, $0, 0) } }
            close(fd)
        }
        for entry in names where entry.kind == .regular && entry.name.count == 16 {
            let other = String(decoding: entry.name, as: UTF8.self)
            guard other != id, !dead.contains(where: { $0.id == other }) else { continue }
            let fd = openat(directory.raw, other, O_RDWR | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { continue }
            let held = FileDescriptor(raw: fd, path: other)
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }  // alive, or being swept by another session
            dead.append((other, held, Self.readDirectories(held)))
        }
    }

    private static func readDirectories(_ lease: FileDescriptor) -> Set<[UInt8]> {
        guard let size = try? lease.stat().size, size > 0, size < 64 << 20,
              let bytes = try? lease.readExactly(Int(size), at: 0) else { return [] }
        var out: Set<[UInt8]> = []
        var offset = 0
        while offset + 4 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16 | Int(bytes[offset + 3]) << 24
            guard offset + 4 + length <= bytes.count else { break }  // a torn last record
            out.insert(Array(bytes[(offset + 4)..<(offset + 4 + length)]))
            offset += 4 + length
        }
        return out
    }

    /// Takes over the temporary file a gone session left for `path` in `parent` (its directory), renaming it to
    /// this session's name, where nothing of this session's is yet. Returns true when one was taken over.
    /// `willBuild(in:)` must have been called for the directory.
    @discardableResult
    public func adoptLeftover(for path: RelativePath, in parent: FileDescriptor) -> Bool {
        let directory = path.parentBytes
        let mine = Array(partName(for: path).utf8)
        for gone in dead where gone.directories.contains(directory) {
            let theirs = Array(Self.partName(session: gone.id, name: path.name).utf8)
            let rc = withCName(theirs) { from in withCName(mine) { Platform.renameNoReplace(in: parent.raw, from: from, to: $0) } }
            if rc == 0 { return true }
            if errno == EEXIST { return false }  // this session has one already: that one is resumed
        }
        return false
    }

    /// Removes the temporary files of gone sessions (those `findDeadSessions` found), and their leases; returns
    /// the bytes freed. What another session took over meanwhile has its name, and is not touched.
    @discardableResult
    public func reclaimDead(in tree: Tree) -> UInt64 {
        guard let sessions = directory else { return 0 }
        var freed: UInt64 = 0
        for gone in dead {
            for dir in gone.directories {
                freed += Self.removeParts(in: tree, directory: dir) { Self.owner(ofPartName: $0) == gone.id }
            }
            _ = unlinkat(sessions.raw, gone.id, 0)
            gone.lease.close()
        }
        dead.removeAll()
        return freed
    }

    /// At the end of a push with every file placed or given up: removes this session's own temporary files
    /// (for which `inUse` is false) and everything gone sessions left, and forgets the directories cleared.
    public func sweep(in tree: Tree, inUse: ([UInt8]) -> Bool = { _ in false }) {
        var kept = false
        for dir in noted {
            Self.removeParts(in: tree, directory: dir) { name in
                guard Self.owner(ofPartName: name) == id else { return false }
                if inUse(name) { kept = true; return false }
                return true
            }
        }
        if !kept, let lease, !noted.isEmpty, (try? lease.truncate(0)) != nil { noted.removeAll() }
        reclaimDead(in: tree)
    }

    /// Removes the temporary files in `directory` whose names `matches` accepts; returns their bytes.
    @discardableResult
    public static func removeParts(in tree: Tree, directory: [UInt8], where matches: ([UInt8]) -> Bool) -> UInt64 {
        let components = directory.isEmpty ? [] : directory.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map(Array.init)
        guard let dir = try? tree.openDirectory(components, create: false), let entries = try? Tree.list(dir) else { return 0 }
        var freed: UInt64 = 0
        for entry in entries where entry.kind != .directory && entry.name.starts(with: partialFilePrefix.utf8) && matches(entry.name) {
            let shown = displayPath(joinPath(directory, entry.name))
            let size = (try? Tree.lstat(at: dir, name: entry.name, shown: shown))?.size ?? 0
            if (try? Tree.remove(at: dir, name: entry.name, isDirectory: false, shown: shown)) != nil { freed += size }
        }
        return freed
    }

    /// Runs `body`, which changes final paths (checks what is there, then renames or removes), while no other
    /// session of the tree does the same. Waits at most `placementWaitSeconds` for another session.
    public func placing<T>(_ body: () throws -> T) throws -> T {
        guard let placeLock else { return try body() }
        var waited = 0
        while flock(placeLock.raw, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else { throw SystemError(call: "flock", path: placeLock.path, errno: errno) }
            waited += 1
            guard waited <= Self.placementWaitSeconds * 100 else {
                throw PlacementError(path: placeLock.path, message: "another syncd session of this project held the placement lock for \(Self.placementWaitSeconds) s; try again")
            }
            usleep(10_000)
        }
        defer { _ = flock(placeLock.raw, LOCK_UN) }
        return try body()
    }
}
