import Foundation
import SyncSystem
import Testing

/// Many hosts served from one thread (`ApplyLoop`): no thread per host on this machine, and a host whose link
/// stops moving is found and reported while the others finish.
extension MultiHostTests {
    /// A project in the shared test store with `count` `local:` hosts, each a directory of its own.
    static func projectWithLocalHosts(_ count: Int, settings: [String] = []) throws -> (SyncFixture, [String]) {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try newBucket(in: server)
        let roots = (1...count).map { f.base + "/host\($0)" }
        for r in roots { try FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true) }
        try configure(f, hosts: roots.map { "local:" + $0 }, endpoint: server.endpoint, bucket: bucket)
        for setting in ["agent_path: \(binDirectory())/syncd-agent"] + settings { try f.addSetting(setting) }
        return (f, roots)
    }

    /// The most threads a process had, sampled every 2 ms from `/proc` until `stop`.
    final class ThreadSampler: @unchecked Sendable {
        private let lock = NSLock()
        private var most = 0
        private var stopped = false
        private let done = DispatchSemaphore(value: 0)

        init(pid: pid_t) {
            Thread.detachNewThread { [self] in
                while !lock.withLock({ stopped }) {
                    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
                    if let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Threads:") }),
                       let n = Int(line.split(separator: "\t").last?.trimmingCharacters(in: .whitespaces) ?? "") {
                        lock.withLock { most = max(most, n) }
                    }
                    usleep(2000)
                }
                done.signal()
            }
        }

        func stop() -> Int {
            lock.withLock { stopped = true }
            done.wait()
            return lock.withLock { most }
        }
    }

    /// `syncctl push --json` of `f`, expected to reach all `hosts`; the most threads it ran.
    static func pushToEveryHost(_ f: SyncFixture, hosts: Int, env: [String: String]) throws -> Int {
        var sampler: ThreadSampler?
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env,
                        onStart: { sampler = ThreadSampler(pid: $0.processIdentifier) })
        let threads = sampler?.stop() ?? .max
        #expect(r.status == 0, "\(r.stderr)")
        let answered = (try r.json()["hosts"] as? [[String: Any]]) ?? []
        #expect(answered.count == hosts && answered.allSatisfy { $0["ok"] as? Bool == true }, "\(answered.filter { $0["ok"] as? Bool != true })")
        return threads
    }

    /// Forty hosts, a first push and an edit: each host ends up equal to the project, and syncctl's threads stay
    /// within a bound that does not grow with the hosts (it ran four a host: one pushing, one connecting, one for
    /// heartbeats, one copying the agent's stderr).
    @Test func fortyHostsAreServedWithoutAThreadEach() throws {
        let hosts = 40
        let (f, roots) = try Self.projectWithLocalHosts(hosts)
        for i in 0..<20 { try f.write("src/m\(i).py", "m = \(i)\n") }
        try f.write("data/weights.bin", randomBytes(1 << 20, seed: 3001))
        for round in 0..<2 {
            if round == 1 { try f.write("src/m3.py", "m = 'edited'\n") }
            let threads = try Self.pushToEveryHost(f, hosts: hosts, env: Self.env(f))
            // Its workers (16 at most) and a few threads of its own, however many hosts.
            #expect(threads <= 24, "push \(round + 1): syncctl ran \(threads) threads for \(hosts) hosts")
            let local = SyncFixture.describeTree(f.project)
            for root in roots {
                #expect(SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) == local, "\(root)")
            }
        }
    }

    /// Twenty SSH hosts (aliases of one sshd, each with a root of its own): every link is pumped by a few shared
    /// threads, so syncctl's threads stay within the same bound as for local hosts (it ran five a host: the four
    /// above and the SSH channel's pump).
    @Test(.enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
    func twentySSHHostsShareAFewPumpThreads() throws {
        let hosts = 20
        let server = try SeaweedServer.shared.get()
        let sshd = try SSHServer(extraConfig: "MaxStartups 64")  // the connections come at once
        let f = try SyncFixture()
        let config = f.base + "/ssh_config"
        try (1...hosts).map { sshd.sshConfig(alias: "gpu-\($0)") }.joined().write(toFile: config, atomically: true, encoding: .utf8)
        let bucket = try Self.newBucket(in: server)
        let roots = (1...hosts).map { f.base + "/root\($0)" }
        try ("name: \(f.name)\nhosts:\n" + (1...hosts).map { "  - {host: gpu-\($0), remote_root: \(roots[$0 - 1])}\n" }.joined()
             + "ssh_config: \(config)\nstore: s3://\(bucket)/team\nendpoint: \(server.endpoint)\n")
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        for i in 0..<10 { try f.write("src/m\(i).py", "m = \(i)\n") }
        // All twenty on one pump thread, as on a one-core machine.
        let threads = try Self.pushToEveryHost(f, hosts: hosts, env: Self.sshEnv(f).merging(["SYNCD_SSH_PUMPS": "1"]) { $1 })
        #expect(threads <= 28, "syncctl ran \(threads) threads for \(hosts) SSH hosts")
        let local = SyncFixture.describeTree(f.project)
        for root in roots {
            #expect(SyncFixture.describeTree(root + "/" + f.name, skipping: [".syncd", "output", "checkpoint"]) == local, "\(root)")
        }
    }

    /// One host's agent stops (SIGSTOP: its link stays open and carries nothing) as the push begins: the push
    /// reports that host as stalled within the session's timeout, the others finish, and the next push brings the
    /// host along.
    @Test func aHostWhoseLinkStallsIsReportedAndTheOthersFinish() throws {
        let (f, roots) = try Self.projectWithLocalHosts(3, settings: ["timeout: 2"])
        for i in 0..<10 { try f.write("src/m\(i).py", "m = \(i)\n") }
        let stopped = Locked<pid_t?>(nil)
        let started = Date()
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: Self.env(f), timeout: 120, onStart: { child in
            let pid = child.processIdentifier
            Thread.detachNewThread {
                // The first agent syncctl starts is stopped, before or after it has said a word.
                let deadline = Date().addingTimeInterval(60)
                while Date() < deadline && kill(pid, 0) == 0 {
                    // Once it runs the agent: stopped between fork and exec, it would hold up the spawn itself.
                    if let agent = ResumeTests.children(of: pid).first(where: { child in
                        let command = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(child)/cmdline"))) ?? Data()
                        return String(decoding: command, as: UTF8.self).contains("syncd-agent")
                    }) {
                        kill(agent, SIGSTOP)
                        stopped.withLock { $0 = agent }
                        return
                    }
                    usleep(500)
                }
            }
        })
        let took = Date().timeIntervalSince(started)
        let agent = try #require(stopped.current, "no agent was started")
        #expect(r.status != 0, "a host failed: \(r.stdout)")
        let answered = (try r.json()["hosts"] as? [[String: Any]]) ?? []
        let failed = answered.filter { $0["ok"] as? Bool != true }
        #expect(failed.count == 1 && answered.count == 3, "\(answered)")
        let why = failed.first?["error"] as? String ?? ""
        #expect(why.contains("nothing came from") || why.contains("took no data"), "\(why)")
        #expect(took < 60, "the stall is found within the timeout (2 s), and the stopped agent killed: \(took) s")
        #expect(kill(agent, 0) != 0, "the stopped agent \(agent) was killed")
        let local = SyncFixture.describeTree(f.project)
        let synced = roots.filter { SyncFixture.describeTree($0 + "/proj", skipping: [".syncd", "output", "checkpoint"]) == local }
        #expect(synced.count == 2, "the other hosts finished: \(synced)")

        let again = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: Self.env(f))
        #expect(again.status == 0, "\(again.stderr)")
        for root in roots {
            #expect(SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) == local, "\(root)")
        }
    }
}
