#if canImport(Glibc)
import Glibc
#endif
import CSystemShims

/// The calls only Linux has that the laptop side makes, one small interface per capability. A port (macOS:
/// docs/ARCHITECTURE.md, "Platform", names each counterpart) is a second implementation of these, not a hunt
/// through the code. File watching (`Watch.TreeWatcher`: inotify) and the service manager (`Daemon.Notifier`:
/// sd_notify) are types of their own in their modules; the agent stays Linux-only and calls what it needs directly.
public enum Platform {
    // MARK: the process

    /// This executable's path (Linux: the /proc/self/exe link), or nil.
    public static func executablePath() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        return n > 0 ? String(nulTerminated: Array(buffer[0..<n])) : nil
    }

    /// This process's resident memory in bytes (Linux: /proc/self/statm), or nil.
    public static func residentBytes() -> UInt64? {
        guard let text = kernelFile("/proc/self/statm") else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = UInt64(fields[1]) else { return nil }
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// The first bytes (at most 128) of a small file the kernel makes (/proc, /sys) as text, or nil.
    public static func kernelFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = read(fd, &buffer, buffer.count)
        return n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
    }

    /// Gives heap memory freed by a big job back to the system, so an idle process stays small (glibc: malloc_trim).
    public static func releaseFreeMemory() { syncd_release_free_memory() }

    /// Caps the heap arenas of this process (glibc: mallopt(M_ARENA_MAX)): a long-lived process with many
    /// short-lived threads keeps less memory resident.
    public static func limitHeapArenas(_ count: Int32 = 2) { syncd_limit_malloc_arenas(count) }

    /// Allocations of `bytes` or more get pages of their own, given back when freed (glibc: a fixed
    /// M_MMAP_THRESHOLD): a list that grows with a large file, reallocated as it grows and freed at the file's end,
    /// does not stay resident. Left to itself glibc raises the threshold to the largest block freed (up to
    /// 32 MiB) and keeps such blocks in the heap: the agent's peak for a 64 MiB append to a 16 GiB file was
    /// 72 MiB with it, 52 MiB without.
    public static func mapLargeAllocations(atLeast bytes: Int32 = 256 << 10) { syncd_map_large_allocations(bytes) }

    // MARK: peer credentials

    /// The uid of the peer of a connected unix socket (Linux: SO_PEERCRED); nil when it cannot be had.
    public static func peerUID(_ fd: Int32) -> uid_t? {
        let uid = syncd_peer_uid(fd)
        return uid < 0 ? nil : uid_t(uid)
    }

    // MARK: durability

    /// Makes every file written on the file system of `fd` durable at once (Linux: syncfs); 0, or -1 with errno.
    public static func syncFileSystem(_ fd: Int32) -> Int32 { syncd_syncfs(fd) }

    /// Starts writing a file's dirty pages back without waiting (Linux: sync_file_range); a hint.
    public static func startWriteback(_ fd: Int32) { _ = syncd_start_writeback(fd) }

    /// Frees the blocks of a range of a file, which then reads as zeros (Linux: fallocate with PUNCH_HOLE);
    /// 0, or -1 with errno.
    public static func punchHole(_ fd: Int32, offset: Int64, length: Int64) -> Int32 { syncd_punch_hole(fd, offset, length) }

    /// Renames `from` to `to` in the same directory unless `to` exists (Linux: renameat2 with RENAME_NOREPLACE);
    /// 0, or -1 with errno (EEXIST when something is there).
    public static func renameNoReplace(in directory: Int32, from: UnsafePointer<CChar>, to: UnsafePointer<CChar>) -> Int32 {
        syncd_rename_noreplace(directory, from, directory, to)
    }
}
