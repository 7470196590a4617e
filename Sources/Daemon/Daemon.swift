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

/// Where a daemon finds its projects, its control socket and its state: from the environment
/// (`XDG_CONFIG_HOME`, `XDG_RUNTIME_DIR`, `XDG_STATE_HOME`), as the `syncd` executable does, or given.
public struct DaemonSettings: Sendable {
    public var pullInterval: TimeInterval
    public var registry: ProjectRegistry
    public var controlPath: String
    /// The local state directory (nil: `$XDG_STATE_HOME/syncd`, else `~/.local/state/syncd`).
    public var stateDirectory: String?
    /// When pulls are due and how long failures back off (tests: a `ManualClock`).
    public var clock: any DaemonClock = SystemClock()

    public init(pullInterval: TimeInterval = 10, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.pullInterval = pullInterval
        registry = ProjectRegistry(environment: environment)
        controlPath = ControlSocket.path(environment: environment)
        stateDirectory = environment["XDG_STATE_HOME"].map { $0 + "/syncd" }
    }
}

/// The daemon: runs the registered projects and answers the control socket from `run` until `stop`.
/// The `syncd` executable wires SIGTERM and SIGINT to `stop` and SIGHUP to `reloadProjects`; tests drive it
/// in-process.
public final class Daemon: @unchecked Sendable {  // `runners` is touched only on the `signals` queue
    private let notifier = Notifier()
    private var runners: [String: ProjectRunner] = [:]
    private let settings: DaemonSettings
    private var pullInterval: TimeInterval { settings.pullInterval }
    private let signals = DispatchQueue(label: "signals")
    private let done = DispatchSemaphore(value: 0)

    public init(settings: DaemonSettings) { self.settings = settings }

    /// Lets sessions in flight finish, then makes `run` return.
    public func stop() { done.signal() }

    /// Reads the project list again: new projects start, removed ones stop.
    public func reloadProjects() {
        signals.async { [self] in
            log.info("reloading the project list")
            notifier.send("RELOADING=1")
            reload()
            notifier.send("READY=1\nSTATUS=\(status)")
        }
    }

    /// Runs until `stop`; returns the exit status (1 when the control socket cannot be opened).
    public func run() -> Int32 {
        startWatchdog()
        signals.sync { _ = reload() }
        let control: ControlServer
        do { control = try ControlServer(path: settings.controlPath) { [self] in answer($0) } } catch {
            log.error("cannot open the control socket: \(error)")
            return 1
        }
        notifier.send("READY=1\nSTATUS=\(status)")
        log.info("running \(runners.count) project(s); \(status)")
        done.wait()
        notifier.send("STOPPING=1")
        control.close()
        log.info("stopping: letting sessions in flight finish")
        signals.sync {
            for runner in runners.values { runner.stop() }
            runners.removeAll()
        }
        log.info("stopped")
        return 0
    }

    /// Answers one control request (on the connection's thread).
    private func answer(_ request: ControlRequest) -> ControlAnswer {
        let project = request.project.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        let all = signals.sync { Array(runners.values) }
        let chosen = project.map { p in all.filter { $0.directory == p } } ?? all
        if let project, chosen.isEmpty {
            if let why = signals.sync(execute: { notStarted[project] }) {
                return .failure("\(project) is registered with syncd but did not start: \(why)")
            }
            return .failure("\(project) is not registered with syncd (`syncctl add \(project)`)", unregistered: true)
        }
        var answer = ControlAnswer()
        switch request.command {
        case .status:
            answer.pid = getpid()
            var statuses = chosen.map(\.status)
            // A registered project that could not start (its syncd.yaml does not load, say) shows with why.
            if project == nil {
                for (dir, why) in signals.sync(execute: { notStarted }) {
                    statuses.append(ProjectStatus(project: dir, state: "error", connected: false, pendingChanges: 0, lastPush: nil,
                                                  lastPull: nil, conflicts: [], bytesSent: 0, bytesReceived: 0, lastError: why,
                                                  snapshot: nil, hosts: []))
                }
            }
            answer.projects = statuses.sorted { $0.project < $1.project }
        case .push, .pull:
            guard let runner = chosen.first, chosen.count == 1 else { return .failure("\(request.command.rawValue) needs one project") }
            switch runner.syncAndWait(request.command == .push ? .push : .pull) {
            case .success(let stats): answer.stats = stats
            case .failure(let error): return .failure("\(error)")
            }
        case .logs:
            answer.lines = LogBook.lines().lines
        case .reload:
            // `syncctl add` / `remove`: the project list changed; runners start and stop before the answer, so
            // `status` shows the change at once.
            answer.failed = signals.sync { reload() }
            answer.directories = signals.sync { runners.keys.sorted() }
        case .pause, .resume:
            for runner in chosen { runner.setPaused(request.command == .pause) }
            answer.directories = chosen.map(\.directory)
        }
        return answer
    }

    /// Registered projects that could not start, with why (on `signals`); `status` lists them.
    private var notStarted: [String: String] = [:]

    private var status: String {
        runners.isEmpty ? "no projects registered; add one with `syncctl add DIR`" : "syncing \(runners.count) project(s)"
    }

    /// Starts runners for newly registered projects and stops those no longer registered; returns the projects
    /// that could not start, with why. Runs on `signals`.
    @discardableResult
    private func reload() -> [String: String] {
        let wanted: [String]
        do { wanted = try settings.registry.list() } catch {
            log.error("cannot read the project list: \(error)")
            return ["": "cannot read the project list: \(error)"]
        }
        var failed: [String: String] = [:]
        defer { notStarted = failed }
        for (dir, runner) in runners where !wanted.contains(dir) {
            runner.stop()
            runners[dir] = nil
            log.info("\(dir): removed")
        }
        for dir in wanted where runners[dir] == nil {
            do {
                let started = monotonicNanos()
                let runner = try ProjectRunner(directory: dir, pullInterval: pullInterval, stateDirectory: settings.stateDirectory, clock: settings.clock)
                try runner.start()
                runners[dir] = runner
                log.info("\(dir): watching (\(runner.watchCount) directories, set up in \((monotonicNanos() - started) / 1_000_000) ms)")
            } catch {
                log.error("\(dir): not started: \(error)")
                failed[dir] = "not started: \(error); once it is mended, `syncctl add \(dir)` starts it"
            }
        }
        return failed
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
