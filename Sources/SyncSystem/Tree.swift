import CSystemShims
#if canImport(Glibc)
import Glibc
#endif

/// A directory tree that is only ever entered with openat and O_NOFOLLOW, so that no path
/// given to it can reach outside: symlinks on the way are refused, not followed.
public final class Tree: @unchecked Sendable {  // what changes is in `directories` and `knownCapacity`, both Locked
    /// Absolute path of the root, for messages.
    public let rootPath: String
    /// The open root directory.
    public let root: FileDescriptor

    /// Directories opened by path, handed out again by later openings while caching is on (the agent, during a
    /// push: four openings per placed file otherwise). A cached descriptor follows its directory if something
    /// else moves it meanwhile; the agent forgets them all whenever it removes or moves a directory itself, and
    /// at the end of each push.
    private let directories = Locked(OpenDirectories())
    private struct OpenDirectories {
        /// By path under the root; nil while caching is off.
        var cache: [[UInt8]: FileDescriptor]?
        /// Devices of open directories (`device(of:)`), while caching.
        var devices: [ObjectIdentifier: UInt64] = [:]
    }

    /// Turns the cache of open directories on or off (off forgets them).
    public func cachesDirectories(_ on: Bool) {
        directories.withLock { $0 = OpenDirectories(cache: on ? [:] : nil) }
    }

    /// The device of an open directory under the root: the root's own unless caching is off or it differs (a
    /// mount inside the tree), remembered per descriptor while caching.
    public func device(of directory: FileDescriptor) throws -> UInt64 {
        if let known = directories.withLock({ $0.devices[ObjectIdentifier(directory)] }) { return known }
        let device = try directory.stat().device
        directories.withLock { open in
            if open.cache != nil { open.devices[ObjectIdentifier(directory)] = device }
        }
        return device
    }

    /// Forgets the open directories cached so far (after a directory was removed or moved).
    public func forgetDirectories() {
        directories.withLock { open in
            if open.cache != nil { open = OpenDirectories(cache: [:]) }
        }
    }

    /// Opens (and with `create`, makes) the directory at `rootPath`. The root itself may be reached through symlinks.
    public init(rootPath: String, create: Bool) throws {
        self.rootPath = rootPath
        if create { try Tree.makeDirectories(rootPath) }
        root = try FileDescriptor.open(rootPath, flags: O_RDONLY | O_DIRECTORY)
    }

    /// `mkdir -p` for a trusted absolute path (the configured root).
    public static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw SystemError(call: "mkdir", path: current, errno: errno)
            }
        }
    }

    /// Opens the directory named by `components` under the root, walking one component at a time with
    /// O_NOFOLLOW. With `create`, missing directories are made (mode 0755). Returns nil when a component
    /// is missing and `create` is false. Throws when a component is a symlink or not a directory.
    public func openDirectory<C: Collection>(_ components: C, create: Bool) throws -> FileDescriptor?
    where C.Element == [UInt8] {
        var path: [UInt8] = []
        for name in components {
            if !path.isEmpty { path.append(slash) }
            path += name
        }
        let (cached, caching) = directories.withLock { ($0.cache?[path], $0.cache != nil) }
        if let cached { return cached }
        let opened = try withDescriptors { try openUncached(components, path: path, create: create) }
        if let opened, !path.isEmpty, caching {
            directories.withLock { open in
                guard let count = open.cache?.count else { return }
                if count >= cacheLimit { open = OpenDirectories(cache: [:]) }
                open.cache![path] = opened
            }
        }
        return opened
    }

    /// Directories the cache holds at most: an eighth of the descriptors this process may open, at most 1024.
    private let cacheLimit = OpenFiles.budget(share: 1.0 / 8, most: 1024)

    /// Runs `body`, which opens a descriptor; when the process has none left, the cached directories are closed
    /// (`onDescriptorShortage` is asked to close what else it can) and `body` is tried once more.
    public func withDescriptors<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as SystemError where OpenFiles.exhausted(error.errno) {
            forgetDirectories()
            if let (owner, close) = onDescriptorShortage, pthread_equal(owner, pthread_self()) != 0 { close() }
            return try body()
        }
    }

    /// Called when the process ran out of descriptors, to close what its owner keeps open; only on the thread
    /// that set it (other threads sharing the tree, a watcher's, only drop the cached directories).
    public var onDescriptorShortage: (owner: pthread_t, close: () -> Void)?

    private func openUncached<C: Collection>(_ components: C, path: [UInt8], create: Bool) throws -> FileDescriptor?
    where C.Element == [UInt8] {
        // One openat2 for the whole path when the kernel has it; anything but success or "absent" (a symlink on
        // the way, a directory to make, an old kernel) takes the walk below, which names what is wrong.
        if Tree.resolvesBeneath, !path.isEmpty {
            let fd = withCName(path) { syncd_open_beneath(root.raw, $0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            if fd >= 0 { return FileDescriptor(raw: fd, path: displayPath(path)) }
            if errno == ENOENT && !create { return nil }
            if OpenFiles.exhausted(errno) { throw SystemError(call: "open", path: displayPath(path), errno: errno) }
        }
        var current = FileDescriptor(raw: try syscall("dup", path: rootPath) { dup(root.raw) }, path: "")
        var walked: [UInt8] = []
        for name in components {
            walked = joinPath(walked, name)
            var fd = withCName(name) { openat(current.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            if fd < 0 && errno == ENOENT && create {
                if withCName(name, { mkdirat(current.raw, $0, 0o755) }) != 0 && errno != EEXIST {
                    throw SystemError(call: "mkdirat", path: displayPath(walked), errno: errno)
                }
                fd = withCName(name) { openat(current.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            }
            if fd < 0 {
                let code = errno
                if code == ENOENT { return nil }
                if code == ELOOP || code == ENOTDIR {
                    throw PathError(path: displayPath(walked), reason: "is a symlink or a file, not a directory; refusing to go through it")
                }
                throw SystemError(call: "openat", path: displayPath(walked), errno: code)
            }
            current = FileDescriptor(raw: fd, path: displayPath(walked))
        }
        return current
    }

    /// Whether this kernel has openat2 with RESOLVE_BENEATH (Linux 5.6 and later), probed once.
    private static let resolvesBeneath: Bool = {
        let root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { return false }
        defer { close(root) }
        let fd = syncd_open_beneath(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { close(fd) }
        return fd >= 0
    }()

    /// Opens a directory by its path under the root (nil: the root itself); see `openDirectory(_:create:)`.
    public func openDirectory(_ path: RelativePath?, create: Bool) throws -> FileDescriptor? {
        try openDirectory(path?.components ?? [], create: create)
    }

    /// Opens the parent directory of `path`; nil when it does not exist and `create` is false.
    public func openParent(_ path: RelativePath, create: Bool) throws -> FileDescriptor? {
        try openDirectory(path.parentComponents, create: create)
    }

    /// lstat of a path under the root; nil when it (or a parent) does not exist.
    public func lstat(_ path: RelativePath) throws -> FileStat? {
        guard let parent = try openParent(path, create: false) else { return nil }
        return try Tree.lstat(at: parent, name: path.name, shown: path.description)
    }

    /// lstat of `name` in an open directory; nil when absent.
    public static func lstat(at dir: FileDescriptor, name: [UInt8], shown: @autoclosure () -> String) throws -> FileStat? {
        var st = Glibc.stat()
        if withCName(name, { fstatat(dir.raw, $0, &st, AT_SYMLINK_NOFOLLOW) }) != 0 {
            if errno == ENOENT { return nil }
            let code = errno
            throw SystemError(call: "fstatat", path: shown(), errno: code)
        }
        return FileStat(st)
    }

    /// Opens a regular file for reading without following a final symlink.
    public func openForReading(_ path: RelativePath) throws -> FileDescriptor {
        try withDescriptors { try openForReadingOnce(path) }
    }

    private func openForReadingOnce(_ path: RelativePath) throws -> FileDescriptor {
        // One openat2 when the kernel has it, without touching the file's access time where that is allowed (a
        // read for hashing or sending is not a use); a symlink on the way or an old kernel takes the walk below.
        if Tree.resolvesBeneath {
            var fd = withCName(path.bytes) { syncd_open_beneath(root.raw, $0, O_RDONLY | O_CLOEXEC | syncd_o_noatime) }
            if fd < 0 && errno == EPERM { fd = withCName(path.bytes) { syncd_open_beneath(root.raw, $0, O_RDONLY | O_CLOEXEC) } }
            if fd >= 0 { return FileDescriptor(raw: fd, path: path.description) }
            if errno == ENOENT || OpenFiles.exhausted(errno) { throw SystemError(call: "open", path: path.description, errno: errno) }
        }
        guard let parent = try openParent(path, create: false) else {
            throw SystemError(call: "open", path: path.description, errno: ENOENT)
        }
        return try Tree.openFile(at: parent, name: path.name, flags: O_RDONLY, shown: path.description)
    }

    /// Opens `name` in an open directory with `flags` (plus O_NOFOLLOW and O_CLOEXEC).
    public static func openFile(at dir: FileDescriptor, name: [UInt8], flags: Int32, mode: mode_t = 0o600,
                                shown: String) throws -> FileDescriptor {
        let fd = try syscall("openat", path: shown) {
            withCName(name) { openat(dir.raw, $0, flags | O_NOFOLLOW | O_CLOEXEC, mode) }
        }
        return FileDescriptor(raw: fd, path: shown)
    }

    /// Reads a symlink's target, as bytes.
    public static func readLink(at dir: FileDescriptor, name: [UInt8], shown: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 4097)
        let n = try syscall("readlinkat", path: shown) {
            withCName(name) { cname in buffer.withUnsafeMutableBytes { readlinkat(dir.raw, cname, $0.baseAddress!, 4096) } }
        }
        return Array(buffer[0..<n])
    }

    /// Lists a directory: names (without "." and "..") and their kinds, sorted bytewise by name.
    public static func list(_ dir: FileDescriptor) throws -> [(name: [UInt8], kind: FileKind)] {
        let copy = try syscall("dup", path: dir.path) { dup(dir.raw) }
        guard let stream = fdopendir(copy) else {
            let code = errno
            Glibc.close(copy)
            throw SystemError(call: "fdopendir", path: dir.path, errno: code)
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var result: [([UInt8], FileKind)] = []
        while let entry = readdir(stream) {
            let name: [UInt8] = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: UInt8.self, capacity: 256) { p in Array(UnsafeBufferPointer(start: p, count: strlen(UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self)))) }
            }
            if name == [dot] || name == [dot, dot] { continue }
            let kind: FileKind
            switch Int32(entry.pointee.d_type) {
            case Int32(DT_REG): kind = .regular
            case Int32(DT_DIR): kind = .directory
            case Int32(DT_LNK): kind = .symlink
            case Int32(DT_UNKNOWN):
                var st = Glibc.stat()
                if withCName(name, { fstatat(dir.raw, $0, &st, AT_SYMLINK_NOFOLLOW) }) != 0 { continue }
                kind = FileKind(mode: st.st_mode)
            default: kind = .other
            }
            result.append((name, kind))
        }
        return result.sorted { $0.0.lexicographicallyPrecedes($1.0) }
    }

    /// Removes a file, symlink or empty directory in an open directory. Absent is not an error.
    public static func remove(at dir: FileDescriptor, name: [UInt8], isDirectory: Bool, shown: String) throws {
        if withCName(name, { unlinkat(dir.raw, $0, isDirectory ? AT_REMOVEDIR : 0) }) != 0 {
            if errno == ENOENT { return }
            throw SystemError(call: isDirectory ? "rmdir" : "unlink", path: shown, errno: errno)
        }
    }

    /// Opens a subdirectory of an open directory, refusing symlinks.
    public static func openChildDirectory(_ dir: FileDescriptor, name: [UInt8], shown: String) throws -> FileDescriptor {
        let fd = try syscall("openat", path: shown) {
            withCName(name) { openat(dir.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        }
        return FileDescriptor(raw: fd, path: shown)
    }

    /// Removes a whole subtree below an open directory, never following symlinks.
    public static func removeTree(at dir: FileDescriptor, name: [UInt8], shown: String) throws {
        guard let st = try lstat(at: dir, name: name, shown: shown) else { return }
        if st.kind == .directory {
            let child = try openChildDirectory(dir, name: name, shown: shown)
            for entry in try list(child) {
                try removeTree(at: child, name: entry.name, shown: shown + "/" + displayPath(entry.name))
            }
            try remove(at: dir, name: name, isDirectory: true, shown: shown)
        } else {
            try remove(at: dir, name: name, isDirectory: false, shown: shown)
        }
    }

    /// Renames `from` to `to` in one directory, failing with EEXIST rather than replacing what is at `to`.
    public static func renameNoReplace(at dir: FileDescriptor, from: [UInt8], to: [UInt8], shown: String) throws {
        try syscall("renameat2", path: shown) {
            withCName(from) { f in withCName(to) { t in Platform.renameNoReplace(in: dir.raw, from: f, to: t) } }
        }
    }

    /// Keeps what is at `path` (a file, symlink or directory) under a conflict copy name beside it
    /// (`conflictCopyName`), never replacing anything there; returns the copy's path.
    public func keepAside(_ path: RelativePath, stamp: String) throws -> RelativePath {
        guard let parent = try openParent(path, create: false) else {
            throw SystemError(call: "rename", path: path.description, errno: ENOENT)
        }
        for attempt in 0..<100 {
            let name = conflictCopyName(path.name, stamp: stamp, attempt: attempt)
            do {
                try Tree.renameNoReplace(at: parent, from: path.name, to: name, shown: path.description)
            } catch let error as SystemError where error.errno == EEXIST {
                continue
            }
            Tree.syncDirectory(parent)
            return try path.replacingName(with: name)
        }
        throw PathError(path: path.description, reason: "no free conflict copy name beside it (100 exist)")
    }

    /// Makes `name` in `dir` a symlink to `target`, replacing what is there in one rename (a temporary link,
    /// `temporaryName` or a random one, is made beside it first), and syncs the directory.
    public static func placeSymlink(at dir: FileDescriptor, name: [UInt8], target: [UInt8], shown: String,
                                    temporaryName: [UInt8]? = nil) throws {
        let temp = temporaryName ?? Array((partialFilePrefix + "link." + String(UInt32.random(in: 0...UInt32.max), radix: 16)).utf8)
        try? remove(at: dir, name: temp, isDirectory: false, shown: shown)
        try syscall("symlinkat", path: shown) { withCName(target) { t in withCName(temp) { symlinkat(t, dir.raw, $0) } } }
        do {
            try syscall("renameat", path: shown) { withCName(temp) { t in withCName(name) { renameat(dir.raw, t, dir.raw, $0) } } }
        } catch {
            try? remove(at: dir, name: temp, isDirectory: false, shown: shown)
            throw error
        }
        syncDirectory(dir)
    }

    /// The size of the file system the tree is on, read once (asked for every file a push or pull declares).
    private var capacity: UInt64? {
        knownCapacity.withLock { known in
            if known == nil { known = space()?.total ?? 0 }
            return known
        }
    }
    private let knownCapacity = Locked<UInt64?>(nil)

    /// The size of the file system the tree is on, and the bytes free to this user there; nil where it cannot say.
    public func space() -> (total: UInt64, available: UInt64)? {
        var st = statvfs()
        guard fstatvfs(root.raw, &st) == 0 else { return nil }
        return (UInt64(st.f_blocks) * UInt64(st.f_frsize), UInt64(st.f_bavail) * UInt64(st.f_frsize))
    }

    /// Why a file of `size` bytes cannot be taken into this tree, or nil when it can: more than `largest` (the
    /// configured `max_file_size`), or more than the whole file system holds. Checked before the file costs
    /// anything, whatever its sender claims.
    public func refusal(ofFileSize size: UInt64, largest: UInt64) -> String? {
        if size > largest { return "declared \(size) bytes, more than max_file_size (\(largest)); refused" }
        if let total = capacity, total > 0, size > total {
            return "declared \(size) bytes, more than the whole file system at \(rootPath) holds (\(total)); refused"
        }
        return nil
    }

    /// fsync on a directory, so that a rename in it is durable.
    public static func syncDirectory(_ dir: FileDescriptor) {
        _ = fsync(dir.raw)
    }
}
