#if canImport(Glibc)
import Glibc
#endif

/// Why a path from the outside (the wire, a config) was refused.
public struct PathError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let reason: String
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }
    public var description: String { "refused path '\(path)': \(reason)" }
}

/// A validated path relative to a tree root: no leading '/', no empty, '.' or '..' components, no NUL.
public struct RelativePath: Hashable, Comparable, CustomStringConvertible, Sendable {
    /// Slash-separated form, as it travels on the wire.
    public let string: String
    /// The components, each a single file name. Made on demand: a scan holds 100k paths, and a stored array
    /// would cost each of them another allocation.
    public var components: [String] { string.split(separator: "/").map(String.init) }

    public init(_ string: String) throws {
        if string.isEmpty { throw PathError(path: string, reason: "empty path") }
        if string.utf8.count > 4096 { throw PathError(path: String(string.prefix(64)) + "…", reason: "longer than 4096 bytes") }
        if string.utf8.contains(0) { throw PathError(path: string, reason: "contains a NUL byte") }
        if string.hasPrefix("/") { throw PathError(path: string, reason: "absolute paths are not allowed") }
        let parts = string.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        for part in parts {
            if part.isEmpty { throw PathError(path: string, reason: "empty component (doubled or trailing '/')") }
            if part == "." || part == ".." { throw PathError(path: string, reason: "'\(part)' components are not allowed") }
            if part.utf8.count > 255 { throw PathError(path: string, reason: "a component is longer than 255 bytes") }
        }
        self.string = string
    }

    /// The path's last component.
    public var name: String {
        guard let slash = string.lastIndex(of: "/") else { return string }
        return String(string[string.index(after: slash)...])
    }
    /// The parent's components (empty at top level).
    public var parentComponents: ArraySlice<String> { components.dropLast() }
    /// The parent path as a string; "" at top level.
    public var parentString: String {
        guard let slash = string.lastIndex(of: "/") else { return "" }
        return String(string[..<slash])
    }

    /// True when `self` is `other` or lies below it.
    public func isWithin(_ other: RelativePath) -> Bool {
        string == other.string || string.hasPrefix(other.string + "/")
    }

    public var description: String { string }
    public static func < (a: RelativePath, b: RelativePath) -> Bool { a.string < b.string }
}

/// A directory tree that is only ever entered with openat and O_NOFOLLOW, so that no path
/// given to it can reach outside: symlinks on the way are refused, not followed.
public final class Tree {
    /// Absolute path of the root, for messages.
    public let rootPath: String
    /// The open root directory.
    public let root: FileDescriptor

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
    where C.Element == String {
        var current = FileDescriptor(raw: try syscall("dup", path: rootPath) { dup(root.raw) }, path: "")
        var walked: [String] = []
        for name in components {
            walked.append(name)
            let shown = walked.joined(separator: "/")
            var fd = openat(current.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 && errno == ENOENT && create {
                if mkdirat(current.raw, name, 0o755) != 0 && errno != EEXIST {
                    throw SystemError(call: "mkdirat", path: shown, errno: errno)
                }
                fd = openat(current.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            if fd < 0 {
                let code = errno
                if code == ENOENT { return nil }
                if code == ELOOP || code == ENOTDIR {
                    throw PathError(path: shown, reason: "is a symlink or a file, not a directory; refusing to go through it")
                }
                throw SystemError(call: "openat", path: shown, errno: code)
            }
            current = FileDescriptor(raw: fd, path: shown)
        }
        return current
    }

    /// lstat of a path under the root; nil when it (or a parent) does not exist.
    public func lstat(_ path: RelativePath) throws -> FileStat? {
        guard let parent = try openDirectory(path.parentComponents, create: false) else { return nil }
        return try Tree.lstat(at: parent, name: path.name, shown: path.string)
    }

    /// lstat of `name` in an open directory; nil when absent.
    public static func lstat(at dir: FileDescriptor, name: String, shown: String) throws -> FileStat? {
        var st = Glibc.stat()
        if fstatat(dir.raw, name, &st, AT_SYMLINK_NOFOLLOW) != 0 {
            if errno == ENOENT { return nil }
            throw SystemError(call: "fstatat", path: shown, errno: errno)
        }
        return FileStat(st)
    }

    /// Opens a regular file for reading without following a final symlink.
    public func openForReading(_ path: RelativePath) throws -> FileDescriptor {
        guard let parent = try openDirectory(path.parentComponents, create: false) else {
            throw SystemError(call: "open", path: path.string, errno: ENOENT)
        }
        let fd = try syscall("openat", path: path.string) {
            openat(parent.raw, path.name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        }
        return FileDescriptor(raw: fd, path: path.string)
    }

    /// Reads a symlink's target.
    public static func readLink(at dir: FileDescriptor, name: String, shown: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = try syscall("readlinkat", path: shown) { readlinkat(dir.raw, name, &buffer, 4096) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Lists a directory: names (without "." and "..") and their kinds, sorted by name.
    public static func list(_ dir: FileDescriptor) throws -> [(name: String, kind: FileKind)] {
        let copy = try syscall("dup", path: dir.path) { dup(dir.raw) }
        guard let stream = fdopendir(copy) else {
            let code = errno
            Glibc.close(copy)
            throw SystemError(call: "fdopendir", path: dir.path, errno: code)
        }
        defer { closedir(stream) }
        rewinddir(stream)
        var result: [(String, FileKind)] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            let kind: FileKind
            switch Int32(entry.pointee.d_type) {
            case Int32(DT_REG): kind = .regular
            case Int32(DT_DIR): kind = .directory
            case Int32(DT_LNK): kind = .symlink
            case Int32(DT_UNKNOWN):
                var st = Glibc.stat()
                if fstatat(dir.raw, name, &st, AT_SYMLINK_NOFOLLOW) != 0 { continue }
                kind = FileKind(mode: st.st_mode)
            default: kind = .other
            }
            result.append((name, kind))
        }
        return result.sorted { $0.0 < $1.0 }
    }

    /// Removes a file, symlink or empty directory in an open directory. Absent is not an error.
    public static func remove(at dir: FileDescriptor, name: String, isDirectory: Bool, shown: String) throws {
        if unlinkat(dir.raw, name, isDirectory ? AT_REMOVEDIR : 0) != 0 {
            if errno == ENOENT { return }
            throw SystemError(call: isDirectory ? "rmdir" : "unlink", path: shown, errno: errno)
        }
    }

    /// Opens a subdirectory of an open directory, refusing symlinks.
    public static func openChildDirectory(_ dir: FileDescriptor, name: String, shown: String) throws -> FileDescriptor {
        let fd = try syscall("openat", path: shown) { openat(dir.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        return FileDescriptor(raw: fd, path: shown)
    }

    /// Removes a whole subtree below an open directory, never following symlinks.
    public static func removeTree(at dir: FileDescriptor, name: String, shown: String) throws {
        guard let st = try lstat(at: dir, name: name, shown: shown) else { return }
        if st.kind == .directory {
            let fd = try syscall("openat", path: shown) {
                openat(dir.raw, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            }
            let child = FileDescriptor(raw: fd, path: shown)
            for entry in try list(child) {
                try removeTree(at: child, name: entry.name, shown: shown + "/" + entry.name)
            }
            try remove(at: dir, name: name, isDirectory: true, shown: shown)
        } else {
            try remove(at: dir, name: name, isDirectory: false, shown: shown)
        }
    }

    /// Makes `name` in `dir` a symlink to `target`, replacing what is there in one rename (a temporary link
    /// is made beside it first), and syncs the directory.
    public static func placeSymlink(at dir: FileDescriptor, name: String, target: String, shown: String) throws {
        let temp = partialFilePrefix + "link." + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try syscall("symlinkat", path: shown) { symlinkat(target, dir.raw, temp) }
        do {
            try syscall("renameat", path: shown) { renameat(dir.raw, temp, dir.raw, name) }
        } catch {
            try? remove(at: dir, name: temp, isDirectory: false, shown: temp)
            throw error
        }
        syncDirectory(dir)
    }

    /// fsync on a directory, so that a rename in it is durable.
    public static func syncDirectory(_ dir: FileDescriptor) {
        _ = fsync(dir.raw)
    }
}
