import Chunking
import Foundation
import LocalState
import Placement
import ProjectScan
import SyncConfig
import SyncRules
import SyncSystem
import Transport
import Wire

/// Runs a pull of the remote-owned paths into the local project.
public final class PullSession {
    let project: Project

    private let link: AgentLink?
    /// `resolve --keep remote`: only these paths (any path of the project) are brought here, each forced.
    let resolving: [RelativePath]?
    /// `pull --force`: a pulled path changed here and on the remote gets the remote version, and the local one
    /// is kept beside it as a conflict copy.
    public var force = false
    /// `pull_from: all`: this host's outputs go to `<pull path>/<hostFolder>/` here, not to the pull path itself.
    public var hostFolder: String?
    let stamp = conflictStamp()

    /// With `link`, the pull runs over that persistent connection (the daemon's); without, it makes its own.
    /// With `resolving`, the remote versions of those paths replace the local ones, which are kept beside them.
    public init(project: Project, link: AgentLink? = nil, resolving: [RelativePath]? = nil) {
        self.project = project
        self.link = link
        self.resolving = resolving
    }

    /// True when `path` may be offered by the agent in this pull.
    func isWanted(_ path: RelativePath) -> Bool {
        if let resolving { return resolving.contains { path.isWithin($0) } }
        return project.isPullPath(path)
    }

    /// Where a remote path lands here: itself, or with a host folder, the same path below the pull path's folder
    /// for this host (`output/x` to `output/gpu-2/x`).
    func localPath(_ remote: RelativePath) throws -> RelativePath {
        guard let hostFolder, let root = project.pullPaths.first(where: { remote.isWithin($0) }) else { return remote }
        return try RelativePath(bytes: root.bytes + [UInt8(ascii: "/")] + Array(hostFolder.utf8) + remote.bytes.dropFirst(root.bytes.count))
    }

    /// Runs the pull: connects while the local side is looked at, then the stages of `PullRun` in order: the
    /// listing, the plan, fetching (and building from local chunks), receiving, deleting, and the record.
    public func run() throws -> SyncStats {
        let started = monotonicNanos()
        let project = self.project
        let hello = makeHello()
        // Connecting starts first, while the local state opens and the pull paths are looked at.
        let connecting = PendingConnection(project: project, link: link) { roundTrip in
            var h = hello
            h.compress = project.compresses(roundTrip: roundTrip)
            h.compressAdaptively = project.config.compress == .auto
            return h
        }
        let local: LocalSide
        do { local = try lookHere() } catch {
            connecting.cancel()
            throw error
        }
        Trace.mark("pull: local scan of \(local.scan.entries.count) entries")
        let link = try connecting.wait()
        Trace.mark("pull: connected")
        let run = try PullRun(session: self, link: link, local: local)
        defer { run.durability.shutdown() }
        do {
            try run.adoptWelcome()
            try run.list()
            try run.plan()
            try run.fetchAndBuildFromLocalChunks()
            try run.receive()
            try run.placeTheLast()
            try run.deleteWhatTheRemoteDeleted()
            run.countBytes()
        } catch {
            run.progress.finish()
            // What was placed stays recorded: the next pull resumes from it.
            run.recordWhatIsPlaced()
            let next = (error as? AgentSaid)?.atStart == true ? "mend that, then pull again" : "run the pull again to resume"
            throw SyncError("pull from \(project.config.remote) failed: \(link.fail(error)); \(next)", cause: error)
        }
        run.progress.finish()
        link.endSession()
        // Every file is placed or given up: this pull's temporary files, and those of pulls that are gone, are stale.
        local.buildSession.sweep(in: project.tree)
        var stats = try run.record()
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }

    private func makeHello() -> Hello {
        var greeting = Hello(role: .pull, project: project.config.name, remoteRoot: project.remoteRootForAgent,
                             pullPaths: project.pullPaths.map { String(decoding: $0.bytes, as: UTF8.self) }, chunking: project.chunking,
                             conflictStamp: stamp, roots: resolving?.map(\.bytes) ?? [])
        // The remote this machine synced with before: one that is gone since was wiped (and is made again); with
        // none, a remote without the project was never pushed to, and the agent makes nothing there.
        greeting.expectInstance = ((try? project.openState().remoteInstance()) ?? nil) ?? ""
        project.limit(&greeting)
        return greeting
    }

    /// What a pull needs of this side before the listing: the records, the paths it may change as they are, and
    /// the chunks their files hold.
    struct LocalSide {
        let state: LocalDatabase
        let pulled: [RelativePath: SyncedEntry]
        /// With a resolve, the pushed records of the paths it brings (their owner's side); else empty.
        let pushed: [RelativePath: SyncedEntry]
        let scan: LocalScanner.Result
        let buildSession: BuildSession
    }

    private func lookHere() throws -> LocalSide {
        let state = try project.openState()
        // What this pull brings in is recorded where its owner's side is: the pulled record for pull paths,
        // the pushed one for the local-owned paths a resolve brings from the remote.
        let pushed = try resolving.map { try state.load(.pushed, paths: $0, subtrees: $0) } ?? [:]
        // With a host folder too, every pull path is looked at: what other hosts' pulls brought is where this
        // one finds the chunks it need not fetch (the same checkpoint from every rank).
        let scan = try LocalScanner(project: project, state: state).run(roots: resolving ?? project.pullPaths)
        let buildSession = try project.openBuildSession()
        buildSession.findDeadSessions()
        return LocalSide(state: state, pulled: try state.load(.pulled), pushed: pushed, scan: scan, buildSession: buildSession)
    }

    static func synced(_ e: RemoteEntry) -> SyncedEntry {
        switch e.state {
        case .directory: return SyncedEntry(kind: .directory, digest: nil, target: nil, permissions: e.permissions, mtimeNanos: 0)
        case .symlink(let t): return SyncedEntry(kind: .symlink, digest: nil, target: t, permissions: 0o777, mtimeNanos: 0)
        case .file(let d): return SyncedEntry(kind: .file, digest: d, target: nil, permissions: e.permissions, mtimeNanos: e.mtimeNanos, size: e.size)
        case .absent: return SyncedEntry(kind: .file, digest: nil, target: nil, permissions: 0, mtimeNanos: 0)
        }
    }
}
