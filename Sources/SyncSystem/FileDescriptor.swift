import CSystemShims
#if canImport(Glibc)
import Glibc
#endif

/// What kind of file system object a path names.
public enum FileKind: UInt8, Sendable, Equatable {
    case regular = 1
    case directory = 2
    case symlink = 3
    case other = 4

    init(mode: mode_t) {
        switch mode & S_IFMT {
        case S_IFREG: self = .regular
        case S_IFDIR: self = .directory
        case S_IFLNK: self = .symlink
        default: self = .other
        }
    }
}

/// The parts of `struct stat` the sync engine keys on.
public struct FileStat: Equatable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public var kind: FileKind
    /// Permission bits only (07777).
    public var permissions: UInt32
    public var size: UInt64
    public var mtimeNanos: Int64
    public var ctimeNanos: Int64

    public init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
        kind = FileKind(mode: st.st_mode)
        permissions = UInt32(st.st_mode & 0o7777)
        size = UInt64(st.st_size)
        mtimeNanos = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
        ctimeNanos = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
    }

    public init(device: UInt64, inode: UInt64, kind: FileKind, permissions: UInt32, size: UInt64,
                mtimeNanos: Int64, ctimeNanos: Int64) {
        self.device = device
        self.inode = inode
        self.kind = kind
        self.permissions = permissions
        self.size = size
        self.mtimeNanos = mtimeNanos
        self.ctimeNanos = ctimeNanos
    }

    /// True when both describe the same unchanged file: same device, inode, size, mtime and ctime.
    public func sameContentIdentity(as other: FileStat) -> Bool {
        device == other.device && inode == other.inode && size == other.size
            && mtimeNanos == other.mtimeNanos && ctimeNanos == other.ctimeNanos
    }
}

/// An owned file descriptor, closed when the value goes away.
public final class FileDescriptor {
    /// The raw descriptor; valid until `close()` or deinit.
    public private(set) var raw: Int32
    /// The path this descriptor was opened for, used in error messages.
    public let path: String

    public init(raw: Int32, path: String) {
        self.raw = raw
        self.path = path
    }

    deinit { if raw >= 0 { Glibc.close(raw) } }

    /// Closes now; later calls are no-ops.
    public func close() {
        if raw >= 0 { Glibc.close(raw); raw = -1 }
    }

    /// Opens `path` (absolute or relative to the working directory).
    public static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) throws -> FileDescriptor {
        let fd = try syscall("open", path: path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(raw: fd, path: path)
    }

    public func stat() throws -> FileStat {
        var st = Glibc.stat()
        try syscall("fstat", path: path) { fstat(raw, &st) }
        return FileStat(st)
    }

    /// Reads up to `count` bytes at `offset`; fewer only at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = try syscall("pread", path: path) {
                pread(raw, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads exactly `count` bytes at `offset`, or throws naming the short file.
    public func readExactly(_ count: Int, at offset: UInt64) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { try read(into: $0, at: offset) }
        if n != count { throw SystemError(call: "pread (file shorter than expected)", path: path, errno: EIO) }
        return bytes
    }

    /// Sequential read from the current position; returns 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try syscall("read", path: path) { Glibc.read(raw, buffer.baseAddress!, buffer.count) }
    }

    /// Writes all of `buffer` at `offset`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = try syscall("pwrite", path: path) {
                pwrite(raw, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            done += n
        }
    }

    /// Writes all of `buffer` at the current position.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = try syscall("write", path: path) { Glibc.write(raw, buffer.baseAddress! + done, buffer.count - done) }
            done += n
        }
    }

    public func sync() throws { try syscall("fsync", path: path) { fsync(raw) } }

    /// Asks the kernel to start writing dirty pages back without waiting (a hint; errors are ignored).
    public func startWriteback() {
        Platform.startWriteback(raw)
    }

    public func truncate(_ size: UInt64) throws { try syscall("ftruncate", path: path) { ftruncate(raw, off_t(size)) } }

    public func setPermissions(_ mode: UInt32) throws {
        try syscall("fchmod", path: path) { fchmod(raw, mode_t(mode)) }
    }

    /// Sets access and modification time to `mtimeNanos`.
    public func setModificationTime(_ mtimeNanos: Int64) throws {
        var times = [timespec](repeating: timespec(), count: 2)
        times[0] = timespec(tv_sec: Int(mtimeNanos / 1_000_000_000), tv_nsec: Int(mtimeNanos % 1_000_000_000))
        times[1] = times[0]
        try syscall("futimens", path: path) { futimens(raw, times) }
    }
}

/// A pipe whose two ends are close-on-exec from birth (and non-blocking when asked), so a process spawned by
/// any thread never inherits them; a child gets an end only through an explicit dup2.
public func makePipe(nonBlocking: Bool) throws -> (read: Int32, write: Int32) {
    var ends: [Int32] = [-1, -1]
    guard syncd_pipe(&ends, nonBlocking ? 1 : 0) == 0 else { throw SystemError(call: "pipe2", path: nil, errno: errno) }
    return (ends[0], ends[1])
}

/// The buffer a bulk stream's pipe is given: 1 MiB, Linux's cap for an unprivileged process
/// (/proc/sys/fs/pipe-max-size), against the default 64 KiB.
public let bulkPipeBytes: Int32 = 1 << 20

/// Gives the pipe at `fd` a buffer of `bytes`, where the kernel allows, and returns the size it has now; nil (and
/// nothing changed) for a descriptor that is no pipe, or past the user's share of pipe memory. sshd feeds the
/// agent's stdin through a pipe, and with 64 KiB in it sshd and the agent take turns on the CPU every 64 KiB: a
/// 500 MB push went 10-20% faster with 1 MiB (Bench/RESULTS.md).
@discardableResult
public func enlargePipeBuffer(_ fd: Int32, to bytes: Int32 = bulkPipeBytes) -> Int32? {
    let size = syncd_grow_pipe(fd, bytes)
    return size > 0 ? size : nil
}

/// The buffer size of the pipe at `fd`; nil when it is no pipe.
public func pipeBufferSize(_ fd: Int32) -> Int32? {
    let size = syncd_pipe_size(fd)
    return size > 0 ? size : nil
}

/// Bytes written to the pipe at `fd` (either end) and not read yet; nil when it is no pipe.
public func bytesWaitingInPipe(_ fd: Int32) -> Int32? {
    let n = syncd_pipe_queued(fd)
    return n >= 0 ? n : nil
}

/// Accepts a connection on a listening socket; the new socket is close-on-exec from birth. -1 with errno set.
public func acceptConnection(_ listener: Int32) -> Int32 { syncd_accept(listener) }

/// The process's budget of open descriptors. A stock host gives a session a soft limit of 1024 (and a hard one
/// far above): `raiseLimit` lifts the soft limit to the hard one at start, and every cache of descriptors takes
/// its size from `budget`, so a project of many directories never runs out where closing one would do.
public enum OpenFiles {
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 1 << 20); returns the soft limit now in force.
    @discardableResult
    public static func raiseLimit() -> Int {
        var limits = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return 1024 }
        let wanted = min(limits.rlim_max, 1 << 20)
        if limits.rlim_cur < wanted {
            var raised = limits
            raised.rlim_cur = wanted
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { limits = raised }
        }
        return Int(limits.rlim_cur)
    }

    /// The soft limit in force.
    public static var limit: Int {
        var limits = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return 1024 }
        return Int(min(limits.rlim_cur, 1 << 20))
    }

    /// How many descriptors a cache may hold that takes `share` of the limit: at most `most`, at least 4.
    public static func budget(share: Double, most: Int) -> Int {
        max(4, min(most, Int(Double(limit) * share)))
    }

    /// True for the errors that mean this process (or the system) has no descriptor to give.
    public static func exhausted(_ code: Int32) -> Bool { code == EMFILE || code == ENFILE }
}

/// A pipe that tells a thread waiting in poll(2) that something is ready for it: `signal` puts a byte in,
/// `drain` takes every byte out. Signals that come before a drain are merged into one wake.
public final class WakePipe: Sendable {
    /// Polls readable after a `signal` and until the next `drain`.
    public let readFD: Int32
    private let writeFD: Int32

    public init() throws { (readFD, writeFD) = try makePipe(nonBlocking: true) }

    deinit {
        close(readFD)
        close(writeFD)
    }

    /// Makes `readFD` readable (a full pipe is readable already, so a failed write loses nothing).
    public func signal() {
        var byte: UInt8 = 1
        _ = write(writeFD, &byte, 1)
    }

    /// Empties the pipe; call before looking at what the signals were about, so that one sent meanwhile is kept.
    public func drain() {
        var sink = [UInt8](repeating: 0, count: 64)
        while read(readFD, &sink, sink.count) > 0 {}
    }
}
