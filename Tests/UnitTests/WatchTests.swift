import Foundation
import ProjectScan
import SyncSystem
import Testing
import Watch

/// Collects what a watcher delivers, for assertions from the test thread, which waits on it (bounded) without
/// sleeping: every delivery wakes it.
final class Collected: Sendable {
    private let batches = Locked<[WatchEvent]>([])

    func add(_ event: WatchEvent) { batches.withLock { $0.append(event) } }

    var events: [WatchEvent] { batches.current }

    var paths: Set<String> { Self.paths(in: events) }

    private static func paths(in events: [WatchEvent]) -> Set<String> {
        events.reduce(into: Set<String>()) { all, e in if case .changed(let p) = e { all.formUnion(p.map(\.description)) } }
    }

    /// Waits (bounded) until `paths` holds all of `expected`.
    func waitFor(_ expected: Set<String>, seconds: Double = 5) -> Bool {
        batches.withLock(when: { expected.isSubset(of: Self.paths(in: $0)) }, deadline: monotonicNanos() + UInt64(seconds * 1e9)) { _, ready in ready }
    }

    /// Waits (bounded) until a rescan was asked for.
    func waitFor(rescan: Bool, seconds: Double = 5) -> Bool {
        batches.withLock(when: { $0.contains { if case .rescan = $0 { return true } else { return false } } },
                         deadline: monotonicNanos() + UInt64(seconds * 1e9)) { _, ready in ready }
    }

    func reset() { batches.withLock { $0.removeAll() } }
}

func defaultRules() -> IgnoreRules {
    var rules = IgnoreRules()
    for p in IgnoreRules.defaultPatterns { try! rules.add(pattern: p, source: "defaults", line: 0) }
    return rules
}

@Suite(.serialized)
final class WatchTests {
    let root: String

    init() throws {
        root = NSTemporaryDirectory() + "syncd-watch-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: root + "/src", withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func write(_ relative: String, _ text: String) throws {
        let path = root + "/" + relative
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: false, encoding: .utf8)
    }

    func watcher(_ collected: Collected, rules: IgnoreRules = defaultRules(), mode: TreeWatcher.Mode = .inotify) throws -> TreeWatcher {
        let w = TreeWatcher(tree: try Tree(rootPath: root, create: false), rules: rules, mode: mode, quietMillis: 50,
                            log: { _ in }, deliver: { collected.add($0) })
        try w.start()
        return w
    }

    @Test func filesCreatedModifiedRenamedAndDeletedAreReported() throws {
        let got = Collected()
        let w = try watcher(got)
        defer { w.stop() }
        try write("src/a.py", "1")
        #expect(got.waitFor(["src/a.py"]))
        try write("src/a.py", "2")
        try FileManager.default.moveItem(atPath: root + "/src/a.py", toPath: root + "/src/b.py")
        #expect(got.waitFor(["src/a.py", "src/b.py"]))
        got.reset()
        try FileManager.default.removeItem(atPath: root + "/src/b.py")
        #expect(got.waitFor(["src/b.py"]))
    }

    @Test func newDirectoriesAreWatchedAndScanned() throws {
        let got = Collected()
        let w = try watcher(got)
        defer { w.stop() }
        // Made in one go: the files may exist before the watch on their directory does; the scan finds them.
        try FileManager.default.createDirectory(atPath: root + "/data/raw/deep", withIntermediateDirectories: true)
        for i in 0..<50 { try write("data/raw/deep/f\(i).bin", "\(i)") }
        #expect(got.waitFor(Set((0..<50).map { "data/raw/deep/f\($0).bin" })))
        // And later changes in it come through its own watch.
        got.reset()
        w.settle()
        try write("data/raw/deep/late.bin", "late")
        #expect(got.waitFor(["data/raw/deep/late.bin"]))
        #expect(w.watchCount == 5, "root, src, data, data/raw, data/raw/deep")
    }

    @Test func renamedDirectoryReportsUnderItsNewName() throws {
        let got = Collected()
        try write("src/pkg/m.py", "x")
        let w = try watcher(got)
        defer { w.stop() }
        try FileManager.default.moveItem(atPath: root + "/src/pkg", toPath: root + "/src/lib")
        #expect(got.waitFor(["src/pkg", "src/lib", "src/lib/m.py"]))
        got.reset()
        w.settle()
        try write("src/lib/m.py", "y")
        #expect(got.waitFor(["src/lib/m.py"]))
        #expect(!got.paths.contains("src/pkg/m.py"), "the old name's watch is gone")
    }

    @Test func ignoredTreesAreNotWatched() throws {
        var rules = defaultRules()
        try rules.add(pattern: "node_modules", source: "test", line: 1)
        for i in 0..<20 { try write("node_modules/pkg\(i)/index.js", "x") }
        let got = Collected()
        let w = try watcher(got, rules: rules)
        defer { w.stop() }
        #expect(w.watchCount == 2, "root and src only, not the 41 directories of node_modules")
        try write("node_modules/pkg1/index.js", "changed")
        try write("src/real.py", "y")
        #expect(got.waitFor(["src/real.py"]))
        #expect(!got.paths.contains { $0.hasPrefix("node_modules") })
    }

    @Test func aFileWrittenContinuouslyIsReportedOnceQuiet() throws {
        let now = Locked<UInt64>(1_000_000_000)
        let got = Collected()
        let w = TreeWatcher(tree: try Tree(rootPath: root, create: false), rules: defaultRules(), quietMillis: 50,
                            log: { _ in }, clock: { now.current }, deliver: { got.add($0) })
        try w.start()
        defer { w.stop() }
        try write("src/log.txt", "")
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: root + "/src/log.txt"))
        // Twenty writes 10 ms apart by the watcher's clock, each read by it before the next.
        for i in 0..<20 {
            try handle.write(contentsOf: Data("line \(i)\n".utf8))
            w.settle()
            now.withLock { $0 += 10_000_000 }
        }
        try handle.close()
        w.settle()
        #expect(got.events.isEmpty, "still within 50 ms of the last write")
        now.withLock { $0 += 50_000_000 }
        w.settle()
        #expect(got.events.count == 1 && got.paths == ["src/log.txt"], "twenty writes make one batch: \(got.events)")
    }

    /// The quiet period and the hold follow the clock the watcher is given: writes coalesce into one batch while
    /// it stands still, nothing goes out a nanosecond before the quiet period ends, and a path changed without
    /// pause still goes once the hold is up. `settle` in place of sleeping: no timing in this test.
    @Test func theQuietPeriodAndTheHoldFollowTheClockItIsGiven() throws {
        let now = Locked<UInt64>(1_000_000_000)
        let got = Collected()
        let w = TreeWatcher(tree: try Tree(rootPath: root, create: false), rules: defaultRules(), quietMillis: 1000, maxHoldMillis: 5000,
                            log: { _ in }, clock: { now.current }, deliver: { got.add($0) })
        try w.start()
        defer { w.stop() }
        for i in 0..<20 { try write("src/log.txt", "line \(i)\n") }
        w.settle()
        #expect(w.pendingCount == 1 && got.events.isEmpty, "twenty writes, one path held: \(got.events)")
        now.withLock { $0 += 999_999_999 }
        w.settle()
        #expect(got.events.isEmpty, "a nanosecond before the quiet period ends")
        now.withLock { $0 += 1 }
        w.settle()
        #expect(got.paths == ["src/log.txt"] && got.events.count == 1, "quiet: one batch \(got.events)")

        // Written again every 0.9 s of the clock: never quiet, delivered once held for 5 s.
        got.reset()
        for _ in 0..<5 {
            try write("src/log.txt", "more\n")
            w.settle()
            #expect(got.events.isEmpty)
            now.withLock { $0 += 900_000_000 }
        }
        try write("src/log.txt", "more\n")
        w.settle()
        #expect(got.events.isEmpty, "4.5 s held, still changing")
        now.withLock { $0 += 500_000_000 }
        w.settle()
        #expect(got.paths == ["src/log.txt"], "held 5 s: delivered though it never went quiet")
    }

    @Test func pollingModeSeesTheSameChanges() throws {
        let got = Collected()
        try write("src/keep.py", "k")
        let w = try watcher(got, mode: .polling(intervalMillis: 100))
        defer { w.stop() }
        try write("src/new.py", "n")
        try FileManager.default.removeItem(atPath: root + "/src/keep.py")
        #expect(got.waitFor(["src/new.py", "src/keep.py"]))
    }

    @Test func flushDeliversEverythingMadeBeforeItWithoutWaitingForQuiet() throws {
        let got = Collected()
        // A quiet period far longer than the test: only flush can deliver in time.
        let w = TreeWatcher(tree: try Tree(rootPath: root, create: false), rules: defaultRules(), quietMillis: 60_000,
                            maxHoldMillis: 60_000, log: { _ in }, deliver: { got.add($0) })
        try w.start()
        defer { w.stop() }
        for i in 0..<50 { try write("src/f\(i).py", "\(i)") }
        w.flush()
        #expect(got.paths.isSuperset(of: Set((0..<50).map { "src/f\($0).py" })), "flush returned before delivering: \(got.paths.count) paths")
        w.flush()  // nothing pending: returns at once
    }

    @Test func scopedWatcherReportsOnlyCompletedFilesUnderItsScope() throws {
        let got = Collected()
        let now = Locked<UInt64>(1_000_000_000)
        let w = TreeWatcher(tree: try Tree(rootPath: root, create: false), rules: IgnoreRules(), quietMillis: 50,
                            scope: [try RelativePath("out/ckpt")], completedFilesOnly: true, log: { _ in }, clock: { now.current },
                            deliver: { got.add($0) })
        try w.start()
        defer { w.stop() }
        // The scope does not exist yet: its parents are watched so it is seen when it appears.
        try FileManager.default.createDirectory(atPath: root + "/out/ckpt", withIntermediateDirectories: true)
        w.settle()
        now.withLock { $0 += 50_000_000 }
        w.settle()
        #expect(got.paths.contains("out/ckpt"))
        let fd = open(root + "/out/ckpt/a.pt", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        _ = Glibc.write(fd, "partial", 7)
        // Long past the quiet period and the hold by the watcher's clock: still open, so still not complete.
        w.settle()
        now.withLock { $0 += 60_000_000_000 }
        w.settle()
        #expect(!got.paths.contains("out/ckpt/a.pt"), "reported while still open for writing")
        close(fd)
        w.settle()
        now.withLock { $0 += 50_000_000 }
        w.settle()
        #expect(got.paths.contains("out/ckpt/a.pt"), "not reported after its close")
        try write("src/outside.py", "x")
        try FileManager.default.createSymbolicLink(atPath: root + "/out/ckpt/latest", withDestinationPath: "a.pt")
        w.settle()
        now.withLock { $0 += 50_000_000 }
        w.settle()
        #expect(got.paths.contains("out/ckpt/latest"), "a symlink is complete when made")
        #expect(!got.paths.contains("src/outside.py") && !got.paths.contains("out"), "outside the scope: \(got.paths)")
    }

    /// The watcher thread is held inside a delivery (as a slow consumer would hold it) while more events than
    /// the kernel queues arrive: the queue overflows and the watcher asks for a full rescan.
    @Test(.enabled(if: queuedEventLimit <= 200_000, "fs.inotify.max_queued_events is too large to overflow in a test"))
    func aQueueOverflowAsksForARescan() throws {
        let got = Collected()
        let held = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let first = NSLock()
        var holding = true
        let w = TreeWatcher(tree: try Tree(rootPath: root, create: false), rules: defaultRules(), quietMillis: 50,
                            log: { _ in }, deliver: { event in
            first.lock()
            let hold = holding
            holding = false
            first.unlock()
            if hold { held.signal(); _ = release.wait(timeout: .now() + 30) }
            got.add(event)
        })
        try w.start()
        defer { w.stop() }
        try write("src/first.py", "1")
        #expect(held.wait(timeout: .now() + 5) == .success, "the first change was never delivered")
        // Create, modify and close-write per file: three events each.
        let files = queuedEventLimit / 3 + 500
        for i in 0..<files {
            let fd = open(root + "/src/burst\(i)", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            _ = Glibc.write(fd, "x", 1)
            close(fd)
        }
        release.signal()
        #expect(got.waitFor(rescan: true), "no rescan after \(files * 3) events into a \(queuedEventLimit)-event queue")
    }
}

/// fs.inotify.max_queued_events: how many events the kernel holds for an inotify instance before it overflows.
let queuedEventLimit = Int((try? String(contentsOfFile: "/proc/sys/fs/inotify/max_queued_events", encoding: .utf8))?
    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 16384
