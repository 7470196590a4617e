import Client
import SyncConfig
import SyncSystem
import Transport

extension Project {
    /// A pull as `pull_from:` says. `first`: from the first host, into the pull paths (over `link` when given).
    /// `all`: from every host in turn, each into `<pull path>/<host>/`, so a host's outputs never overwrite
    /// another's. In turn, not at once: the bytes cross this machine's one link either way, and a file that a
    /// host holds like one pulled before (a checkpoint every rank wrote) is built from the chunks here and not
    /// fetched again. A host that cannot be reached is reported and the others go on.
    public func pullFromHosts(force: Bool = false, link: AgentLink? = nil) throws -> SyncStats {
        guard config.pullFrom == .all else {
            let session = PullSession(project: self, link: link)
            session.force = force
            return try session.run()
        }
        let started = monotonicNanos()
        var stats = SyncStats(direction: "pull")
        var results: [HostResult] = []
        for (i, host) in try hostList().enumerated() {
            do {
                let session = PullSession(project: try forHost(host), link: i == 0 ? link : nil)
                session.force = force
                session.hostFolder = ProjectConfig.folderName(for: host)
                var s = try session.run()
                results.append(HostResult(host: host.description, stats: s))
                s.attribute(to: host.description)
                stats.absorb(s)
            } catch {
                results.append(HostResult(host: host.description, ok: false, error: "\(error)"))
                stats.errors.append("\(host): \(error); the next pull tries it again")
            }
        }
        stats.hosts = results
        stats.durationMs = (monotonicNanos() - started) / 1_000_000
        return stats
    }
}
