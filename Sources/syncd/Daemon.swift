import Engine
import Foundation
import ProjectScan
import SyncSystem
import Watch

/// Log lines: with journald's `<N>` priority prefixes when stderr is the journal (`JOURNAL_STREAM`), plain
/// otherwise. The last 1000 lines are kept for `syncctl logs`, and followers get new ones as they come.
enum Log {
    static let journal = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil
    static let lock = NSLock()
    private static var recent: [String] = []
    private static var followers: [Int: (String) -> Void] = [:]
    private static var nextFollower = 0
    private static let stamps = ISO8601DateFormatter()  // used under `lock`

    /// The kept lines, and (when `follow` is given) a token for `unfollow`; `follow` gets every later line.
    static func lines(follow: ((String) -> Void)? = nil) -> (lines: [String], token: Int?) {
        lock.lock()
        defer { lock.unlock() }
        guard let follow else { return (recent, nil) }
        nextFollower += 1
        followers[nextFollower] = follow
        return (recent, nextFollower)
    }

    static func unfollow(_ token: Int) {
        lock.lock()
        followers[token] = nil
        lock.unlock()
    }

    static func info(_ text: String) { write(6, text) }
    static func warning(_ text: String) { write(4, text) }
    static func error(_ text: String) { write(3, text) }

    private static func write(_ priority: Int, _ text: String) {
        lock.lock()
        defer { lock.unlock() }
        let stamp = stamps.string(from: Date())
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            FileHandle.standardError.write(Data((journal ? "<\(priority)>\(line)\n" : "syncd: \(line)\n").utf8))
            let kept = "\(stamp) \(line)"
            recent.append(kept)
            if recent.count > 1000 { recent.removeFirst(recent.count - 1000) }
            for follower in followers.values { follower(kept) }
        }
    }
}

/// sd_notify(3) over `$NOTIFY_SOCKET`: READY=1, STATUS=…, STOPPING=1, WATCHDOG=1. Silent without a socket.
final class Notifier {
    private let fd: Int32
    private var address = sockaddr_un()
    private var length: socklen_t = 0

    init() {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty,
              path.utf8.count < MemoryLayout.size(ofValue: address.sun_path) else { fd = -1; return }
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }  // abstract namespace
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
    }

    func send(_ state: String) {
        guard fd >= 0 else { return }
        var address = self.address
        _ = state.withCString { text in
            withUnsafePointer(to: &address) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), Int32(MSG_NOSIGNAL), $0, length) }
            }
        }
    }
}

/// One registered project: pushes when its watcher reports changes (and once at start), pulls on a timer.
/// Sessions run one at a time on the runner's thread; `stop` lets a session in flight finish.
final class ProjectRunner {
    let directory: String
    private let project: Project
    private var watcher: TreeWatcher!
    private let condition = NSCondition()
    /// Pushes and pulls asked for, started and done; `syncAndWait` waits on these.
    private struct Sessions {
        var wanted = false
        var started = 0
        var done = 0
        var result: Result<SyncStats, Error>?
    }
    private var pushes = Sessions(wanted: true)
    private var pulls = Sessions()
    private var stopping = false
    private var finished = false
    private var nextPull = Date()
    private let pullInterval: TimeInterval
    private var failures = 0
    // What `status` reports; all under `condition`.
    private var paused = false
    private var syncing: String?
    private var pendingChanges = 0
    private var lastPush: Date?
    private var lastPull: Date?
    private var lastError: String?
    private var conflictPaths: Set<String> = []
    private var bytesSent: UInt64 = 0
    private var bytesReceived: UInt64 = 0

    init(directory: String, pullInterval: TimeInterval) throws {
        self.directory = directory
        self.pullInterval = pullInterval
        project = try Project(directory: directory, options: SyncOptions(progress: false))
        var rules = project.rules
        for p in project.pullPaths { try? rules.add(pattern: p.string, source: "pull paths", line: 0) }
        watcher = TreeWatcher(tree: project.tree, rules: rules, quietMillis: 50, log: { Log.warning($0) }) { [weak self] event in
            guard let self else { return }
            condition.lock()
            switch event {
            case .changed(let paths): pendingChanges += paths.count
            case .rescan: pendingChanges += 1
            }
            condition.unlock()
            wantPush()
        }
    }

    func start() throws {
        try watcher.start()
        let thread = Thread { [self] in loop() }
        thread.name = "project"
        thread.start()
    }

    func wantPush() {
        condition.lock()
        pushes.wanted = true
        condition.signal()
        condition.unlock()
    }

    /// Stops watching; a session in flight finishes first. Returns once the runner is idle.
    func stop() {
        watcher.stop()
        condition.lock()
        stopping = true
        condition.broadcast()
        while !finished { condition.wait() }
        condition.unlock()
    }

    enum Kind: String { case push, pull }

    /// Asks for a push (or pull) and waits for one that started after the call: when it returns, everything
    /// changed before the call is on the remote (or here).
    func syncAndWait(_ kind: Kind) -> Result<SyncStats, Error> {
        condition.lock()
        defer { condition.unlock() }
        if paused { return .failure(SyncError("\(directory) is paused; `syncctl resume` first")) }
        let target = (kind == .push ? pushes : pulls).started + 1
        if kind == .push { pushes.wanted = true } else { pulls.wanted = true }
        condition.broadcast()
        func done() -> Int { kind == .push ? pushes.done : pulls.done }
        while done() < target && !stopping { condition.wait() }
        if done() < target { return .failure(SyncError("syncd is stopping")) }
        return (kind == .push ? pushes : pulls).result ?? .failure(SyncError("no \(kind.rawValue) ran"))
    }

    func setPaused(_ value: Bool) {
        condition.lock()
        paused = value
        if !value { pushes.wanted = true }
        condition.broadcast()
        condition.unlock()
        Log.info("\(directory): \(value ? "paused" : "resumed")")
    }

    var status: [String: Any] {
        condition.lock()
        defer { condition.unlock() }
        let iso = ISO8601DateFormatter()
        return [
            "project": directory,
            "state": paused ? "paused" : (syncing != nil ? "syncing" : "idle"),
            "connected": syncing != nil,
            "pending_changes": pendingChanges,
            "last_push": lastPush.map { iso.string(from: $0) } ?? NSNull(),
            "last_pull": lastPull.map { iso.string(from: $0) } ?? NSNull(),
            "conflicts": conflictPaths.sorted(),
            "bytes_sent": bytesSent,
            "bytes_received": bytesReceived,
            "last_error": lastError ?? NSNull(),
        ]
    }

    private func loop() {
        while true {
            condition.lock()
            while !stopping {
                if !paused && (pushes.wanted || pulls.wanted || Date() >= nextPull) { break }
                if paused { condition.wait() } else { _ = condition.wait(until: nextPull) }
            }
            if stopping {
                finished = true
                condition.broadcast()
                condition.unlock()
                return
            }
            let kind: Kind = pushes.wanted ? .push : .pull
            if kind == .push {
                pushes.wanted = false
                pushes.started += 1
                pendingChanges = 0
            } else {
                pulls.wanted = false
                pulls.started += 1
            }
            syncing = kind.rawValue
            condition.unlock()
            let result = kind == .push ? session(kind) { try PushSession(project: project).run() }
                                       : session(kind) { try PullSession(project: project).run() }
            condition.lock()
            if kind == .push {
                pushes.result = result
                pushes.done = pushes.started
                lastPush = Date()
            } else {
                pulls.result = result
                pulls.done = pulls.started
                lastPull = Date()
                nextPull = Date().addingTimeInterval(pullInterval)
            }
            syncing = nil
            condition.broadcast()
            condition.unlock()
        }
    }

    @discardableResult
    private func session(_ kind: Kind, _ body: () throws -> SyncStats) -> Result<SyncStats, Error> {
        do {
            let stats = try body()
            failures = 0
            condition.lock()
            lastError = nil
            bytesSent += stats.bytesSent
            bytesReceived += stats.bytesReceived
            if kind == .push || stats.conflicts > 0 { conflictPaths = Set(stats.conflictPaths) }
            condition.unlock()
            if stats.filesChanged + stats.filesDeleted > 0 || stats.conflicts > 0 {
                Log.info("\(directory): \(stats.summary())")
            }
            return .success(stats)
        } catch {
            failures += 1
            // Back off: 1, 2, 4 … 30 s, then try again (a dropped network, a sleeping laptop).
            let delay = min(30.0, pow(2.0, Double(failures - 1)))
            Log.error("\(directory): \(kind.rawValue) failed: \(error); retrying in \(Int(delay)) s")
            condition.lock()
            lastError = "\(kind.rawValue): \(error)"
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
            _ = condition.wait(until: Date().addingTimeInterval(delay))
            condition.unlock()
            return .failure(error)
        }
    }
}

/// The daemon: runs the registered projects until SIGTERM or SIGINT; SIGHUP reloads the project list.
final class Daemon {
    private let notifier = Notifier()
    private var runners: [String: ProjectRunner] = [:]
    private let pullInterval: TimeInterval
    private let signals = DispatchQueue(label: "signals")
    private var sources: [DispatchSourceSignal] = []
    private let done = DispatchSemaphore(value: 0)

    init(pullInterval: TimeInterval) { self.pullInterval = pullInterval }

    func run() -> Int32 {
        for sig in [SIGTERM, SIGINT, SIGHUP] { signal(sig, SIG_IGN) }
        signal(SIGPIPE, SIG_IGN)  // a control client that goes away must not take the daemon with it
        for sig in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: sig, queue: signals)
            source.setEventHandler { [done] in done.signal() }
            source.resume()
            sources.append(source)
        }
        let hup = DispatchSource.makeSignalSource(signal: SIGHUP, queue: signals)
        hup.setEventHandler { [self] in
            Log.info("reloading the project list (SIGHUP)")
            notifier.send("RELOADING=1")
            reload()
            notifier.send("READY=1\nSTATUS=\(status)")
        }
        hup.resume()
        sources.append(hup)
        startWatchdog()

        signals.sync { reload() }
        let control: ControlServer
        do { control = try ControlServer(path: ControlSocket.path()) { [self] in answer($0) } } catch {
            Log.error("cannot open the control socket: \(error)")
            return 1
        }
        notifier.send("READY=1\nSTATUS=\(status)")
        Log.info("running \(runners.count) project(s); \(status)")
        done.wait()
        notifier.send("STOPPING=1")
        control.close()
        Log.info("stopping: letting sessions in flight finish")
        signals.sync {
            for runner in runners.values { runner.stop() }
            runners.removeAll()
        }
        Log.info("stopped")
        return 0
    }

    /// Answers one control request (on the connection's thread).
    private func answer(_ request: [String: Any]) -> [String: Any] {
        let command = request["command"] as? String ?? ""
        let project = (request["project"] as? String).map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        let all = signals.sync { Array(runners.values) }
        let chosen = project.map { p in all.filter { $0.directory == p } } ?? all
        if project != nil && chosen.isEmpty {
            return ["ok": false, "error": "\(project!) is not registered with syncd (`syncctl add \(project!)`)"]
        }
        switch command {
        case "status":
            return ["ok": true, "pid": Int(getpid()), "projects": chosen.sorted { $0.directory < $1.directory }.map(\.status)]
        case "push", "pull":
            guard let runner = chosen.first, chosen.count == 1 else { return ["ok": false, "error": "\(command) needs one project"] }
            switch runner.syncAndWait(command == "push" ? .push : .pull) {
            case .success(let stats):
                let object = (try? JSONSerialization.jsonObject(with: Data(stats.json().utf8))) ?? [:]
                return ["ok": true, "stats": object]
            case .failure(let error):
                return ["ok": false, "error": "\(error)"]
            }
        case "logs":
            return ["ok": true, "lines": Log.lines().lines]
        case "pause", "resume":
            for runner in chosen { runner.setPaused(command == "pause") }
            return ["ok": true, "projects": chosen.map(\.directory)]
        default:
            return ["ok": false, "error": "unknown command '\(command)'"]
        }
    }

    private var status: String {
        runners.isEmpty ? "no projects registered; add one with `syncctl add DIR`" : "syncing \(runners.count) project(s)"
    }

    /// Starts runners for newly registered projects and stops those no longer registered. Runs on `signals`.
    private func reload() {
        let wanted: [String]
        do { wanted = try ProjectRegistry().list() } catch {
            Log.error("cannot read the project list: \(error)")
            return
        }
        for (dir, runner) in runners where !wanted.contains(dir) {
            runner.stop()
            runners[dir] = nil
            Log.info("\(dir): removed")
        }
        for dir in wanted where runners[dir] == nil {
            do {
                let runner = try ProjectRunner(directory: dir, pullInterval: pullInterval)
                try runner.start()
                runners[dir] = runner
                Log.info("\(dir): watching")
            } catch {
                Log.error("\(dir): not started: \(error)")
            }
        }
    }

    private func startWatchdog() {
        guard let text = ProcessInfo.processInfo.environment["WATCHDOG_USEC"], let usec = Double(text), usec > 0 else { return }
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "watchdog"))
        timer.schedule(deadline: .now(), repeating: usec / 2e6)
        timer.setEventHandler { [notifier] in notifier.send("WATCHDOG=1") }
        timer.resume()
        watchdog = timer
    }

    private var watchdog: DispatchSourceTimer?
}
