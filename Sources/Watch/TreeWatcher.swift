#if canImport(Glibc)
import Glibc
#endif
import ProjectScan
import SyncSystem

/// What a watcher reports, after coalescing.
public enum WatchEvent: Equatable, Sendable {
    /// These paths (files or directories, relative to the tree) may have changed.
    case changed(Set<RelativePath>)
    /// Events were lost (the kernel queue overflowed): the whole tree must be compared again.
    case rescan(reason: String)
}

/// Watches a project tree and reports changed paths once they have been quiet for a moment.
///
/// On Linux it uses inotify, one watch per directory not ignored: a new directory gets its watch as it appears
/// and is then scanned, so files made inside it before the watch existed are reported too. `IN_Q_OVERFLOW` turns
/// into a `.rescan`. When the kernel refuses more watches (`fs.inotify.max_user_watches`), the watcher says
/// which limit to raise and polls that subtree instead. The `.polling` mode polls the whole tree (other
/// platforms, or inotify unavailable).
///
/// Events are coalesced: a batch is delivered once no event came for `quietMillis`, or after `maxHoldMillis` of
/// continuous changes, so a file written continuously goes out once it is quiet. Delivery runs on the watcher's
/// own thread.
public final class TreeWatcher {
    public enum Mode: Equatable { case inotify, polling(intervalMillis: Int) }

    private let tree: Tree
    private let rules: IgnoreRules
    private let mode: Mode
    private let quietMillis: Int
    private let maxHoldMillis: Int
    private let log: (String) -> Void
    private let deliver: (WatchEvent) -> Void
    /// Subtrees reported on (empty: the whole tree). Directories on the way to them are watched too, so a
    /// subtree that appears later is seen. Directories are named by their bytes here, [] being the root.
    private let scope: [[UInt8]]
    /// Report a file once it is complete (closed after writing, created, moved in, removed), not while it is
    /// being written: `IN_MODIFY` alone reports nothing.
    private let completedFilesOnly: Bool
    /// Names at the root reported even when the rules ignore them (the project's own config files).
    private let alwaysReported: Set<[UInt8]>

    /// The kernel's change reports (`.inotify` mode); nil when polling.
    private var events: DirectoryEvents?
    /// Wakes the thread for a request or a stop; made by `start`.
    private var wake: WakePipe?
    private var thread: pthread_t?
    /// Watch descriptor to directory path ("" is the root), and back.
    private var directories: [Int32: [UInt8]] = [:]
    private var watches: [[UInt8]: Int32] = [:]
    /// Subtrees polled because inotify refused them, with the stats of their last poll.
    private var polled: [[UInt8]: [RelativePath: FileStat]] = [:]
    private var pollInterval = 2000
    private var lastPoll: UInt64 = 0
    private var warnedAboutLimit = false

    private var pending: Set<RelativePath> = []
    private var pendingRescan: String?
    private var firstPending: UInt64 = 0
    private var lastEvent: UInt64 = 0
    /// Now, in nanoseconds, for the quiet period, the hold and the polls: the monotonic clock, or a test's, which
    /// moves only when the test says (the watcher then looks again within a quiet period of real time).
    private let clock: @Sendable () -> UInt64
    /// Paths noted and not delivered yet, for tests (read from any thread).
    private let pendingTotal = Locked(0)
    public var pendingCount: Int { pendingTotal.current }

    public init(tree: Tree, rules: IgnoreRules, mode: Mode = .inotify, quietMillis: Int = 75, maxHoldMillis: Int = 5000,
                scope: [RelativePath] = [], completedFilesOnly: Bool = false, alwaysReported: [String] = [],
                log: @escaping (String) -> Void = { printError($0) }, clock: @escaping @Sendable () -> UInt64 = monotonicNanos,
                deliver: @escaping (WatchEvent) -> Void) {
        self.clock = clock
        self.scope = scope.map(\.bytes)
        self.alwaysReported = Set(alwaysReported.map { Array($0.utf8) })
        self.completedFilesOnly = completedFilesOnly
        self.tree = tree
        self.rules = rules
        self.mode = mode
        self.quietMillis = quietMillis
        self.maxHoldMillis = maxHoldMillis
        self.log = log
        self.deliver = deliver
    }

    deinit { stop() }

    /// Number of directories watched through inotify (read from any thread).
    public var watchCount: Int { watchTotal.current }
    private let watchTotal = Locked(0)
    private func publishCount() { watchTotal.withLock { $0 = watches.count } }

    /// Sets up the watches (or the first poll) and starts the watcher thread. Changes made after
    /// `start` returns are reported.
    public func start() throws {
        wake = try WakePipe()
        switch mode {
        case .inotify:
            do { events = try DirectoryEvents() } catch let e as SystemError {
                throw SystemError(call: e.call, path: tree.rootPath, errno: e.errno)
            }
            addWatches(below: [])
        case .polling(let interval):
            pollInterval = interval
            polled[[]] = statsBelow([])
        }
        lastPoll = clock()
        thread = try startThread { [self] in run() }
    }

    /// Delivers every change made before the call now, without waiting for quiet: the kernel queued their
    /// events when they were made, and the watcher thread reads them all before this returns.
    public func flush() { request(\.flush) }

    /// Reads every change waiting and delivers what the quiet period and the hold let go by the watcher's clock,
    /// then returns: for a test that moves the clock, in place of sleeping through a quiet period.
    public func settle() { request(\.settle) }

    /// Asks the thread for a flush or a settle and waits until it has done one asked for after this call.
    private func request(_ kind: WritableKeyPath<Requests, Tickets>) {
        guard thread != nil else { return }
        let ticket = requests.withLock { requests in
            requests[keyPath: kind].asked += 1
            return requests[keyPath: kind].asked
        }
        wake?.signal()
        requests.withLock(when: { $0[keyPath: kind].done >= ticket || $0.stop }) { _ in }
    }

    /// Requests numbered as they are asked for, and the last one the thread has done.
    private struct Tickets {
        var asked = 0
        var done = 0
        /// The ticket to do now, if one is outstanding.
        var outstanding: Int? { asked > done ? asked : nil }
    }
    private struct Requests {
        var flush = Tickets()
        var settle = Tickets()
        var stop = false
    }
    private let requests = Locked(Requests())

    /// Stops the thread (pending changes are dropped) and releases the watches.
    public func stop() {
        guard let handle = thread else { return }
        thread = nil
        requests.withLock { $0.stop = true }
        wake?.signal()
        pthread_join(handle, nil)
        events?.close()
        events = nil
        wake = nil
    }

    // MARK: the thread

    private func run() {
        guard let wake else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 * 1024, alignment: 8)
        defer { buffer.deallocate() }
        while true {
            var fds = [pollfd(fd: wake.readFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: events?.fd ?? -1, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, events != nil ? 2 : 1, timeoutMillis())
            var (flushTicket, settleTicket) = (0, 0)
            if fds[0].revents != 0 {
                wake.drain()
                let stop: Bool
                (stop, flushTicket, settleTicket) = requests.withLock { ($0.stop, $0.flush.outstanding ?? 0, $0.settle.outstanding ?? 0) }
                if stop { return }
            }
            if let events, fds[1].revents != 0 || flushTicket > 0 || settleTicket > 0 { events.read(into: buffer) { handle($0) } }
            if flushTicket > 0 {
                if !polled.isEmpty { pollSubtrees() }
                deliverPending()
            }
            if flushTicket > 0 || settleTicket > 0 {
                flushIfQuiet(now: clock())
                requests.withLock { requests in
                    if flushTicket > 0 { requests.flush.done = flushTicket }
                    if settleTicket > 0 { requests.settle.done = settleTicket }
                }
                continue
            }
            let now = clock()
            if !polled.isEmpty && now - lastPoll >= UInt64(pollInterval) * 1_000_000 {
                lastPoll = now
                pollSubtrees()
            }
            flushIfQuiet(now: clock())
        }
    }

    private func timeoutMillis() -> Int32 {
        var wait = Int.max
        let now = clock()
        if !pending.isEmpty || pendingRescan != nil {
            let quietAt = lastEvent + UInt64(quietMillis) * 1_000_000
            let holdAt = firstPending + UInt64(maxHoldMillis) * 1_000_000
            let due = min(quietAt, holdAt)
            wait = due > now ? Int((due - now) / 1_000_000) + 1 : 0
        }
        if !polled.isEmpty {
            let due = lastPoll + UInt64(pollInterval) * 1_000_000
            wait = min(wait, due > now ? Int((due - now) / 1_000_000) + 1 : 0)
        }
        return wait == Int.max ? -1 : Int32(min(wait, 60_000))
    }

    private func note(_ path: RelativePath) {
        let now = clock()
        if pending.isEmpty && pendingRescan == nil { firstPending = now }
        pending.insert(path)
        pendingTotal.withLock { $0 = pending.count }
        lastEvent = now
    }

    private func flushIfQuiet(now: UInt64) {
        guard !pending.isEmpty || pendingRescan != nil else { return }
        let quiet = now - lastEvent >= UInt64(quietMillis) * 1_000_000
        let held = now - firstPending >= UInt64(maxHoldMillis) * 1_000_000
        guard quiet || held else { return }
        deliverPending()
    }

    private func deliverPending() {
        guard !pending.isEmpty || pendingRescan != nil else { return }
        pendingTotal.withLock { $0 = 0 }
        if let reason = pendingRescan {
            pendingRescan = nil
            pending.removeAll()
            deliver(.rescan(reason: reason))
        } else {
            let batch = pending
            pending.removeAll()
            deliver(.changed(batch))
        }
    }

    private func handle(_ event: DirectoryEvents.Event) {
        let (watch, name, change, isDirectory): (Int32, [UInt8], DirectoryEvents.Change, Bool)
        switch event {
        case .overflow:
            // Events were dropped: everything is compared again, and watches are checked for new directories.
            let now = clock()
            if pending.isEmpty && pendingRescan == nil { firstPending = now }
            pendingRescan = "the kernel's inotify queue overflowed (fs.inotify.max_queued_events)"
            lastEvent = now
            addWatches(below: [])
            return
        case .watchGone(let wd):
            guard let directory = directories[wd] else { return }
            directories[wd] = nil
            if watches[directory] == wd { watches[directory] = nil }
            publishCount()
            return
        case .directoryGone(let wd):
            if let directory = directories[wd], inScope(directory), let path = try? RelativePath(bytes: directory) { note(path) }
            return
        case .entry(let wd, let entry, let what, let directoryEntry):
            (watch, name, change, isDirectory) = (wd, entry, what, directoryEntry)
        }
        guard let directory = directories[watch], !name.isEmpty else { return }
        let bytes = joinPath(directory, name)
        if name.starts(with: partialFilePrefix.utf8) { return }
        guard let relative = try? RelativePath(bytes: bytes) else { return }
        let path = bytes
        if directory.isEmpty && alwaysReported.contains(name) {
            note(relative)
            return
        }
        if rules.isExcluded(path, isDirectory: isDirectory) && !(isDirectory && rules.mayBringBack(below: path)) { return }
        if !inScope(path) {
            // Only a directory leading into the scope matters here: watch it so the scope is seen when it appears.
            if isDirectory && leadsIntoScope(path) && !change.isDisjoint(with: [.created, .movedHere]) {
                addWatches(below: path)
                for inner in listing(below: path) where inScope(inner.bytes) { note(inner) }
            }
            return
        }
        if completedFilesOnly && !isDirectory && !isCompleted(change, path: relative) { return }
        if isDirectory && !change.isDisjoint(with: [.movedAway, .deleted]) { dropWatches(below: path) }
        if isDirectory && !change.isDisjoint(with: [.created, .movedHere]) {
            // Watch first, then scan: whatever was made in it before the watch existed is reported by the scan,
            // whatever comes after by the watch.
            addWatches(below: path)
            for inner in listing(below: path) { note(inner) }
        }
        note(relative)
    }

    /// For `completedFilesOnly`: a file written and closed, moved, removed or chmod'ed; a symlink made. A file
    /// just created or being written is not complete yet (its close will come).
    private func isCompleted(_ change: DirectoryEvents.Change, path: RelativePath) -> Bool {
        if !change.isDisjoint(with: [.closedAfterWriting, .movedHere, .movedAway, .deleted, .attributes]) { return true }
        if change.contains(.created), let st = try? tree.lstat(path) {
            return st.kind == .symlink
        }
        return false
    }

    // MARK: scope

    private func inScope(_ path: [UInt8]) -> Bool {
        scope.isEmpty || scope.contains { path == $0 || path.starts(with: $0 + [UInt8(ascii: "/")]) }
    }

    /// True for a directory above some scope root ([] for the tree's root).
    private func leadsIntoScope(_ path: [UInt8]) -> Bool {
        path.isEmpty || scope.contains { $0.starts(with: path + [UInt8(ascii: "/")]) }
    }

    // MARK: watches

    /// Adds watches for `relative` and every directory below it that is not ignored.
    private func addWatches(below relative: [UInt8]) {
        var stack = [relative]
        while let dir = stack.popLast() {
            if polled[dir] != nil { continue }
            let absolute = dir.isEmpty ? Array(tree.rootPath.utf8) : Array(tree.rootPath.utf8) + [UInt8(ascii: "/")] + dir
            guard let events else { continue }
            let wd: Int32
            switch events.watch(absolute) {
            case .success(let made): wd = made
            case .failure(let error):
                if error.errno == ENOSPC {
                    fallBackToPolling(dir)
                } else if error.errno != ENOENT && error.errno != ENOTDIR {
                    log("syncd: cannot watch \(displayPath(absolute)): \(String(cString: strerror(error.errno)))")
                }
                continue
            }
            if let old = directories[wd], old != dir { watches[old] = nil }
            directories[wd] = dir
            watches[dir] = wd
            for child in subdirectories(of: dir) { stack.append(child) }
        }
        publishCount()
    }

    private func dropWatches(below path: [UInt8]) {
        let below = path + [UInt8(ascii: "/")]
        for (dir, wd) in watches where dir == path || dir.starts(with: below) {
            events?.unwatch(wd)
            watches[dir] = nil
            directories[wd] = nil
        }
        for dir in polled.keys where dir == path || dir.starts(with: below) { polled[dir] = nil }
        publishCount()
    }

    private func fallBackToPolling(_ dir: [UInt8]) {
        if !warnedAboutLimit {
            warnedAboutLimit = true
            let limit = DirectoryEvents.watchLimit
            log("syncd: the inotify watch limit is reached (fs.inotify.max_user_watches = \(limit)); raise it, e.g. "
                + "`sysctl fs.inotify.max_user_watches=524288`. Until then \(dir.isEmpty ? "the project" : displayPath(dir + [UInt8(ascii: "/")])) "
                + "and other unwatched directories are scanned every \(pollInterval / 1000) s.")
        }
        polled[dir] = statsBelow(dir)
    }

    private func subdirectories(of dir: [UInt8]) -> [[UInt8]] {
        guard let fd = try? openDirectory(dir), let items = try? Tree.list(fd) else { return [] }
        var out: [[UInt8]] = []
        for item in items where item.kind == .directory {
            let path = joinPath(dir, item.name)
            if rules.isExcluded(path, isDirectory: true) && !rules.mayBringBack(below: path) { continue }
            if !inScope(path) && !leadsIntoScope(path) { continue }
            out.append(path)
        }
        return out
    }

    private func openDirectory(_ dir: [UInt8]) throws -> FileDescriptor? {
        dir.isEmpty ? tree.root : try tree.openDirectory(try RelativePath(bytes: dir), create: false)
    }

    /// Every path below `dir` (not ignored), for a directory that just appeared.
    private func listing(below dir: [UInt8]) -> [RelativePath] {
        guard let path = try? RelativePath(bytes: dir), let scan = try? ProjectScanner(tree: tree, rules: rules).scan(roots: [path]) else { return [] }
        return scan.entries.map(\.path)
    }

    // MARK: polling

    private func statsBelow(_ dir: [UInt8]) -> [RelativePath: FileStat] {
        let roots = dir.isEmpty ? nil : (try? RelativePath(bytes: dir)).map { [$0] }
        if !dir.isEmpty && roots == nil { return [:] }
        guard let scan = try? ProjectScanner(tree: tree, rules: rules).scan(roots: roots) else { return [:] }
        var out: [RelativePath: FileStat] = [:]
        for e in scan.entries where inScope(e.path.bytes) { out[e.path] = e.stat }
        return out
    }

    private func pollSubtrees() {
        for (dir, before) in polled {
            let now = statsBelow(dir)
            for (path, st) in now where before[path].map({ !$0.sameContentIdentity(as: st) || $0.permissions != st.permissions }) ?? true {
                note(path)
            }
            for path in before.keys where now[path] == nil { note(path) }
            polled[dir] = now
        }
    }
}
