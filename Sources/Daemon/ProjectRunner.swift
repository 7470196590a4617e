import Builds
import Client
import Control
import Fleet
import Foundation
import Logging
import ProjectScan
import SyncConfig
import SyncSystem
import Watch

/// One registered project: pushes when its watcher reports changes (and once at start), pulls on a timer.
/// Sessions run one at a time on the runner's thread; `stop` lets a session in flight finish. An edit of the
/// project's syncd.yaml, .syncignore or .dockerignore reopens the project before the next session: a rescan, and
/// a new connection when the settings changed.
final class ProjectRunner: @unchecked Sendable {  // `condition` guards the state the runner thread shares with the control thread
    let directory: String
    /// Replaced only on the runner's thread (a settings change), under `condition`.
    private var project: Project
    private var currentWatcher: TreeWatcher
    /// Where the watchers send their events: to this runner, once it exists (its first watcher is made before).
    private let events = WatchEvents()
    private final class WatchEvents: @unchecked Sendable {  // `runner` is set once, before the watcher starts
        weak var runner: ProjectRunner?
    }
    /// Files at the project's root whose change is a change of how it syncs.
    static let settingsFiles = [ProjectConfig.fileName, ".syncignore", ".dockerignore"]
    private var settingsChanged = false
    /// The files outside the project whose rules it follows (`Project.outerIgnoreFiles`), as they were when it was
    /// opened; looked at again before each push and every few seconds: no watcher sees them.
    private var outerStamps: [(path: String, stamp: FileStamp?)] = []
    private var nextOuterLook = Date.distantPast
    private static let outerInterval: TimeInterval = 2
    private let condition = NSCondition()
    /// Pushes and pulls asked for, started and done; `syncAndWait` waits on these.
    private struct Sessions {
        var wanted = false
        var started = 0
        var done = 0
        var result: Result<SyncStats, Error>?
    }
    private var pushes = Sessions(wanted: true)
    /// Paths the watcher reported since the last push began; with `fullPushNeeded`, the whole project instead.
    private var changedPaths: Set<RelativePath> = []
    private var fullPushNeeded = true
    private static let incrementalLimit = 20_000
    private var pulls = Sessions()
    private var stopping = false
    private var finished = false
    private var nextPull = Date.distantPast
    private let pullInterval: TimeInterval
    private var failures = 0
    // What `status` reports; all under `condition`.
    private var paused = false
    private var syncing: String?
    private var pendingChanges = 0
    private var lastPush: Date?
    /// A project with several hosts: how each fared in the last push that reached any, and its snapshot.
    private var lastHosts: (hosts: [HostResult], snapshot: String?, uploaded: UInt64?)?
    private var lastPull: Date?
    /// The last failure, and what failed: settings that did not load are forgotten once new ones load; a failed
    /// sync once a sync succeeds.
    private var lastError: (cause: FailureCause, text: String)?
    private enum FailureCause { case settings, sync }
    /// While a failed session waits to be tried again: "stalled" when its link stopped moving data, else
    /// "disconnected"; and when it is tried again.
    private var retrying: String?
    private var retryAt: Date?
    /// How far the push or pull in flight is (its sessions report here).
    private let progress = Locked<SyncProgress?>(nil)
    private var conflicts: [SyncConflict] = []
    private var bytesSent: UInt64 = 0
    private var bytesReceived: UInt64 = 0

    /// Where the project's local state lives (nil: the default).
    private let stateDirectory: String?

    private let clock: any DaemonClock

    init(directory: String, pullInterval: TimeInterval, stateDirectory: String? = nil, clock: any DaemonClock = SystemClock()) throws {
        self.clock = clock
        self.stateDirectory = stateDirectory
        self.directory = directory
        self.pullInterval = pullInterval
        project = try Project(directory: directory, options: Self.options(stateDirectory, progress))
        outerStamps = project.outerIgnoreFiles.map { ($0, FileStamp(path: $0)) }
        currentWatcher = Self.makeWatcher(project, events)
        events.runner = self
    }

    /// The daemon's sessions draw no progress; they tell `box`, which `status` reads.
    private static func options(_ stateDirectory: String?, _ box: Locked<SyncProgress?>) -> SyncOptions {
        var options = SyncOptions(stateDirectory: stateDirectory, progress: false)
        options.onProgress = { progress in box.withLock { $0 = progress.bytesTotal == 0 && progress.bytesDone == 0 ? nil : progress } }
        return options
    }

    private static let settingsPaths = Set(settingsFiles.compactMap { try? RelativePath($0) })

    private static func makeWatcher(_ project: Project, _ events: WatchEvents) -> TreeWatcher {
        let gitignore = project.config.gitignore
        return TreeWatcher(tree: project.tree, rules: project.rulesWithPullPaths, quietMillis: 50, alwaysReported: Self.settingsFiles,
                    log: { log.warning("\($0)") }) { event in events.runner?.watched(event, gitignore: gitignore) }
    }

    /// Notes what the watcher reported, and asks for a push.
    private func watched(_ event: WatchEvent, gitignore: Bool) {
        condition.withLock {
            switch event {
            case .changed(let paths):
                changedPaths.formUnion(paths)
                if !paths.isDisjoint(with: Self.settingsPaths) { settingsChanged = true }
                // git's rules are read once per opening of the project: a changed `.gitignore` opens it again.
                if gitignore && paths.contains(where: { $0.name.elementsEqual(".gitignore".utf8) }) { settingsChanged = true }
            case .rescan(let reason):
                fullPushNeeded = true
                log.warning("\(directory): \(reason); the next push compares the whole project")
            }
            pendingChanges = changedPaths.count + (fullPushNeeded ? 1 : 0)
        }
        wantPush()
    }

    /// The watcher in use (replaced when the settings change).
    private var watcher: TreeWatcher {
        condition.withLock { currentWatcher }
    }

    func start() throws {
        try watcher.start()
        try startDetachedThread(name: "project") { [self] in loop() }
    }

    /// Directories watched through inotify.
    var watchCount: Int { watcher.watchCount }

    /// Reopens the project after an edit of its settings files: new ignore rules (so a new watcher and a full
    /// comparison), and a new connection when syncd.yaml changed. Settings that do not load leave the old ones
    /// in use, and `status` says why. Runs on the runner's thread between sessions.
    private func reopenProject() {
        let fresh: Project
        do { fresh = try Project(directory: directory, options: Self.options(stateDirectory, progress)) } catch {
            log.error("\(directory): the changed settings do not load, so the previous ones stay in use: \(error)")
            condition.withLock {
                lastError = (.settings, "settings: \(error)")
            }
            return
        }
        let relink = fresh.config != project.config
        if relink, let link {
            link.close()
            self.link = nil
        }
        watcher.stop()
        let next = Self.makeWatcher(fresh, events)
        do { try next.start() } catch { log.error("\(directory): cannot watch after the settings changed: \(error)") }
        let stamps = fresh.outerIgnoreFiles.map { ($0, FileStamp(path: $0)) }
        condition.withLock {
            project = fresh
            outerStamps = stamps
            currentWatcher = next
            fullPushNeeded = true
            changedPaths.removeAll()
            if relink { connected = false }
            if lastError?.cause == .settings { lastError = nil }
        }
        log.info("\(directory): settings changed\(relink ? " (remote settings too: a new connection)" : ""); comparing the whole project again")
    }

    func wantPush() {
        condition.withLock {
            pushes.wanted = true
            condition.signal()
        }
    }

    /// Stops watching; a session in flight finishes first. Returns once the runner is idle.
    func stop() {
        watcher.stop()
        condition.withLock {
            stopping = true
            condition.broadcast()
            while !finished { condition.wait() }
        }
    }

    enum Kind: String { case push, pull }

    /// Asks for a push (or pull) and waits for one that started after the call: when it returns, everything
    /// changed before the call is on the remote (or here).
    func syncAndWait(_ kind: Kind) -> Result<SyncStats, Error> {
        // Every change made before this call reaches the runner first (their events are already queued).
        if kind == .push { watcher.flush() }
        return condition.withLock {
            if paused { return .failure(SyncError("\(directory) is paused; `syncctl resume` first")) }
            let target = (kind == .push ? pushes : pulls).started + 1
            if kind == .push { pushes.wanted = true } else { pulls.wanted = true }
            condition.broadcast()
            func done() -> Int { kind == .push ? pushes.done : pulls.done }
            while done() < target && !stopping { condition.wait() }
            if done() < target { return .failure(SyncError("syncd is stopping")) }
            return (kind == .push ? pushes : pulls).result ?? .failure(SyncError("no \(kind.rawValue) ran"))
        }
    }

    func setPaused(_ value: Bool) {
        condition.withLock {
            paused = value
            if !value { pushes.wanted = true }
            condition.broadcast()
        }
        log.info("\(directory): \(value ? "paused" : "resumed")")
    }

    var status: ProjectStatus {
        return condition.withLock {
            let iso = ISO8601DateFormatter()
            // While a session connects, it is not syncing yet.
            let state = paused ? "paused" : retrying ?? (syncing != nil ? (connected || project.config.store != nil ? "syncing" : "connecting") : "idle")
            var status = ProjectStatus(project: directory, state: state, connected: connected,
                                       pendingChanges: pendingChanges, lastPush: lastPush.map { iso.string(from: $0) },
                                       lastPull: lastPull.map { iso.string(from: $0) }, conflicts: conflicts,
                                       bytesSent: bytesSent, bytesReceived: bytesReceived, lastError: lastError?.text, snapshot: lastHosts?.snapshot,
                                       hosts: (lastHosts?.hosts ?? []).map {
                                           HostStatus(host: $0.host, ok: $0.ok, error: $0.error, filesChanged: $0.filesChanged, bytesSent: $0.bytesSent)
                                       })
            status.remote = project.config.remote.description
            status.bytesUploaded = lastHosts?.uploaded
            status.retryInSeconds = retryAt.map { max(0, Int($0.timeIntervalSince(clock.now()).rounded(.up))) }
            if syncing != nil { status.progress = progress.current }
            return status
        }
    }

    /// What the runner does next.
    private enum Step {
        case stop, idle, reopen
        /// A session: for a push, the paths the watcher reported (nil: the whole project).
        case session(Kind, only: Set<RelativePath>?)
    }

    private func loop() {
        while true {
            switch condition.withLock({ nextStep() }) {
            case .stop:
                link?.close()
                return
            case .idle:
                idle()
            case .reopen:
                reopenProject()
            case .session(let kind, let only):
                let result = session(kind) {
                    // A project with a store pushes through it to every host (a snapshot per push), built from the
                    // last one and the paths the watcher reported.
                    if kind == .push && project.config.store != nil {
                        let push = StorePush(project: project)
                        push.changedPaths = only
                        return try push.run()
                    }
                    let link = try connectedLink()
                    guard kind == .push else { return try project.pullFromHosts(link: link) }
                    let push = PushSession(project: project, link: link, changedPaths: only)
                    push.itemizes = false  // the daemon reports counts, not each path
                    return try push.run()
                }
                condition.withLock {
                    if kind == .push { pushEnded(result, only: only) } else { pullEnded(result) }
                    syncing = nil
                    connected = link.map { !$0.isClosed } ?? false
                    condition.broadcast()
                }
                // A full push of a big project frees most of what it allocated; give it back to the system rather
                // than keep it resident while idle.
                Platform.releaseFreeMemory()
            }
        }
    }

    /// Decides what comes next (`condition` held), and for a session notes that it started.
    private func nextStep() -> Step {
        if stopping {
            finished = true
            condition.broadcast()
            return .stop
        }
        guard !paused && (pushes.wanted || pulls.wanted || clock.now() >= nextPull) else { return .idle }
        if outerIgnoreFilesChanged() { settingsChanged = true }
        if settingsChanged {
            settingsChanged = false
            return .reopen
        }
        let kind: Kind = pushes.wanted ? .push : .pull
        // What the watcher reported since the last push; everything after a start, a lost event or a push
        // that went wrong, and when so much changed that one scan is cheaper.
        var only: Set<RelativePath>?
        if kind == .push {
            pushes.wanted = false
            pushes.started += 1
            only = fullPushNeeded || changedPaths.count > Self.incrementalLimit ? nil : changedPaths
            changedPaths.removeAll()
            fullPushNeeded = false
            pendingChanges = 0
        } else {
            pulls.wanted = false
            pulls.started += 1
        }
        syncing = kind.rawValue
        return .session(kind, only: only)
    }

    /// Notes how a push went (`condition` held): what it did not cover is looked at next time.
    private func pushEnded(_ result: Result<SyncStats, Error>, only: Set<RelativePath>?) {
        switch result {
        case .failure:
            if let only { changedPaths.formUnion(only) } else { fullPushNeeded = true }
        case .success(let stats) where !stats.errors.isEmpty:
            // The agent failed some operation: look at everything next time. (A file skipped here, being
            // unreadable or changed while read, is reported again by the watcher when it changes.)
            fullPushNeeded = true
        default: break
        }
        pendingChanges = changedPaths.count + (fullPushNeeded ? 1 : 0)
        pushes.result = result
        if case .success(let stats) = result, let hosts = stats.hosts { lastHosts = (hosts, stats.snapshot, stats.bytesUploaded) }
        pushes.done = pushes.started
        if case .success = result { lastPush = clock.now() }
    }

    /// Notes how a pull went (`condition` held), and when the next is due.
    private func pullEnded(_ result: Result<SyncStats, Error>) {
        pulls.result = result
        pulls.done = pulls.started
        if case .success = result { lastPull = clock.now() }
        // A remote file still being written is looked at again soon (1, 2, 4 … s), not at the next
        // periodic pull: its close may come without a watcher event we can use (a busy writer).
        if case .success(let stats) = result, stats.skippedBeingWritten > 0 {
            deferredPulls += 1
            nextPull = clock.now().addingTimeInterval(min(pullInterval, pow(2.0, Double(deferredPulls - 1))))
        } else {
            deferredPulls = 0
            nextPull = clock.now().addingTimeInterval(link != nil && watchWorks ? max(pullInterval, Self.watchedPullInterval) : pullInterval)
        }
    }

    // MARK: the persistent connection

    /// The connection to the agent, kept between sessions; remade after a failure (with the session's backoff).
    private var link: AgentLink?
    private var connected = false
    /// Pulls in a row that left files because they were being written.
    private var deferredPulls = 0
    /// False once the agent could not watch (no pull paths, or an error): pulls then come every `pullInterval`.
    private var watchWorks = true
    /// With the agent watching the remote, a periodic pull is only a safety net.
    private static let watchedPullInterval: TimeInterval = 300

    private func connectedLink() throws -> AgentLink {
        if let link, !link.isClosed { return link }
        link = nil
        let made = try AgentLink.open(project: project)
        log.info("\(directory): connected to \(made.connection.peerDescription)")
        link = made
        watchWorks = !project.pullPaths.isEmpty
        condition.withLock {
            connected = true
        }
        return made
    }

    /// Waits for the next thing to do. Meanwhile the agent watches the remote-owned paths and reports completed
    /// files, which are then pulled at once; a link that fails here is dropped and remade by the next session.
    private func idle() {
        guard let link, !link.isClosed, watchWorks, !paused else {
            condition.withLock {
                waitForWork()
            }
            return
        }
        do { try link.beginWatch() } catch {
            lostLink(link, error)
            return
        }
        let listener = WatchListener(link: link) { [self] paths in
            condition.withLock {
                pulls.wanted = true
                condition.signal()
            }
            log.debug("\(directory): remote changed: \(paths.prefix(5).map(\.description).joined(separator: ", "))\(paths.count > 5 ? " …" : "")")
        } ended: { [self] in
            condition.withLock {
                condition.signal()
            }
        }
        condition.withLock {
            waitForWork(interrupted: { listener.finished })
        }
        let failed = listener.stop()
        if let failed {
            if let e = failed as? AgentSaid, e.reason == .cannotWatch {
                // The agent cannot watch here: fall back to periodic pulls, on the same connection.
                log.warning("\(directory): the remote cannot be watched (\(e)); pulling every \(Int(pullInterval)) s")
                watchWorks = false
            }
            lostLink(link, failed)
        }
    }

    /// Waits on `condition` (held) until a session is due, the runner stops, or `interrupted` says so.
    private func waitForWork(interrupted: () -> Bool = { false }) {
        while !stopping && !interrupted() {
            if !paused && (pushes.wanted || pulls.wanted || clock.now() >= nextPull) { return }
            if !paused && !outerStamps.isEmpty && clock.now() >= nextOuterLook {
                nextOuterLook = clock.now().addingTimeInterval(Self.outerInterval)
                // An edit of git's rules above the project: the next push opens it again with them.
                if outerIgnoreFilesChanged() {
                    pushes.wanted = true
                    return
                }
            }
            if paused { condition.wait() } else { clock.wait(condition, until: outerStamps.isEmpty ? nextPull : min(nextPull, nextOuterLook)) }
        }
    }

    /// Whether a file outside the project whose rules it follows changed (appeared, went, was edited) since the
    /// project was opened (`condition` held).
    private func outerIgnoreFilesChanged() -> Bool {
        outerStamps.contains { FileStamp(path: $0.path) != $0.stamp }
    }

    private func lostLink(_ lost: AgentLink, _ error: Error) {
        lost.abort()
        _ = lost.connection.finish()
        if link === lost { link = nil }
        condition.withLock {
            connected = false
            // Whatever happened meanwhile on the remote is looked at once the link is back.
            pulls.wanted = true
        }
        log.warning("\(directory): connection to the agent lost: \(error); reconnecting")
    }

    @discardableResult
    private func session(_ kind: Kind, _ body: () throws -> SyncStats) -> Result<SyncStats, Error> {
        do {
            let stats = try body()
            failures = 0
            condition.withLock {
                lastError = nil
                bytesSent += stats.bytesSent
                bytesReceived += stats.bytesReceived
                if kind == .push || stats.conflicts > 0 { conflicts = stats.conflictList }
            }
            if stats.filesChanged + stats.filesDeleted > 0 || stats.conflicts > 0 {
                log.info("\(directory): \(stats.summary())")
            }
            for c in stats.conflictMessages { log.warning("\(directory): conflict: \(c)") }
            for e in stats.errors { log.error("\(directory): \(e)") }
            return .success(stats)
        } catch {
            failures += 1
            if let link, link.isClosed { self.link = nil }
            // Back off: 1, 2, 4 … 30 s, then try again (a dropped network, a sleeping laptop).
            let delay = min(30.0, pow(2.0, Double(failures - 1)))
            log.error("\(directory): \(kind.rawValue) failed: \(error); retrying in \(Int(delay)) s")
            condition.withLock {
                lastError = (.sync, "\(kind.rawValue): \(error)")
                connected = link != nil
                // Waiters learn of the failure now; the push itself is tried again after the pause.
                if kind == .push {
                    pushes.result = .failure(error)
                    pushes.done = pushes.started
                    pushes.wanted = true
                } else {
                    pulls.result = .failure(error)
                    pulls.done = pulls.started
                }
                condition.broadcast()
                retrying = (error as? SyncError)?.stalled == true ? "stalled" : "disconnected"
                let until = clock.now().addingTimeInterval(delay)
                retryAt = until
                while !stopping && clock.now() < until { clock.wait(condition, until: until) }
                retrying = nil
                retryAt = nil
            }
            return .failure(error)
        }
    }
}

/// What a file looked like (its identity, size and modification time), to tell an edit without reading it.
struct FileStamp: Equatable {
    let device: UInt64
    let inode: UInt64
    let size: Int64
    let mtime: timespec

    /// Nil when there is nothing at `path`.
    init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        (device, inode, size, mtime) = (UInt64(st.st_dev), UInt64(st.st_ino), Int64(st.st_size), st.st_mtim)
    }

    static func == (a: FileStamp, b: FileStamp) -> Bool {
        a.device == b.device && a.inode == b.inode && a.size == b.size && a.mtime.tv_sec == b.mtime.tv_sec && a.mtime.tv_nsec == b.mtime.tv_nsec
    }
}
