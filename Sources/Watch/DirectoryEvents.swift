#if canImport(Glibc)
import Glibc
#endif
import SyncSystem

/// The kernel's reports of changes in watched directories, decoded into what `TreeWatcher` acts on. On Linux this
/// is inotify, one watch per directory; a macOS port puts FSEvents behind the same surface (its `MustScanSubDirs`
/// is an `overflow`). Every inotify constant of the laptop side is in this file.
struct DirectoryEvents {
    /// What happened to an entry of a watched directory.
    struct Change: OptionSet {
        let rawValue: UInt32
        static let created = Change(rawValue: UInt32(IN_CREATE))
        static let deleted = Change(rawValue: UInt32(IN_DELETE))
        static let modified = Change(rawValue: UInt32(IN_MODIFY))
        static let closedAfterWriting = Change(rawValue: UInt32(IN_CLOSE_WRITE))
        static let movedAway = Change(rawValue: UInt32(IN_MOVED_FROM))
        static let movedHere = Change(rawValue: UInt32(IN_MOVED_TO))
        static let attributes = Change(rawValue: UInt32(IN_ATTRIB))
    }

    enum Event {
        /// Events were lost: everything must be compared again.
        case overflow
        /// The watch `watch` is gone (its directory was removed or moved, or the watch dropped).
        case watchGone(Int32)
        /// The watched directory itself was deleted or moved.
        case directoryGone(Int32)
        /// The entry `name` of the directory of `watch` changed.
        case entry(watch: Int32, name: [UInt8], change: Change, isDirectory: Bool)
    }

    /// Readable when events wait (for `poll`).
    let fd: Int32

    init() throws {
        fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw SystemError(call: "inotify_init1", path: nil, errno: errno) }
    }

    func close() { _ = Glibc.close(fd) }

    private static let mask = UInt32(IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
        | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)

    /// Watches the directory at `absolute` (not following a symlink); its watch, or the errno that refused it
    /// (ENOSPC: the watch limit is reached).
    func watch(_ absolute: [UInt8]) -> Result<Int32, SystemError> {
        let wd = withCName(absolute) { inotify_add_watch(fd, $0, Self.mask) }
        return wd >= 0 ? .success(wd) : .failure(SystemError(call: "inotify_add_watch", path: displayPath(absolute), errno: errno))
    }

    func unwatch(_ watch: Int32) { inotify_rm_watch(fd, watch) }

    /// Reads every event waiting, through `buffer`, handing each to `each`.
    func read(into buffer: UnsafeMutableRawBufferPointer, _ each: (Event) -> Void) {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n <= 0 { return }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= n {
                let event = buffer.baseAddress!.advanced(by: offset).assumingMemoryBound(to: inotify_event.self).pointee
                let nameStart = buffer.baseAddress!.advanced(by: offset + MemoryLayout<inotify_event>.size)
                let name: [UInt8] = event.len > 0
                    ? Array(UnsafeBufferPointer(start: nameStart.assumingMemoryBound(to: UInt8.self),
                                                count: strlen(nameStart.assumingMemoryBound(to: CChar.self))))
                    : []
                each(Self.decode(event, name: name))
                offset += MemoryLayout<inotify_event>.size + Int(event.len)
            }
        }
    }

    private static func decode(_ event: inotify_event, name: [UInt8]) -> Event {
        let mask = event.mask
        if mask & UInt32(IN_Q_OVERFLOW) != 0 { return .overflow }
        if mask & UInt32(IN_IGNORED) != 0 { return .watchGone(event.wd) }
        if name.isEmpty {
            return mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF) != 0 ? .directoryGone(event.wd)
                : .entry(watch: event.wd, name: [], change: [], isDirectory: true)
        }
        return .entry(watch: event.wd, name: name, change: Change(rawValue: mask), isDirectory: mask & UInt32(IN_ISDIR) != 0)
    }

    /// How many watches this user may have, for the message when the limit is reached.
    static var watchLimit: String {
        Platform.kernelFile("/proc/sys/fs/inotify/max_user_watches").map { String($0.filter(\.isNumber)) } ?? "?"
    }
}
