import Builds
import Client
import Control
import Fleet
import Foundation
import SyncSystem
import Testing
import Transport

/// One connection to the agent carrying many sessions (what the daemon keeps per project), and the agent's
/// watch of the remote-owned paths between sessions.
@Suite(.serialized)
struct LinkTests {
    /// The agent's process id behind a link to a `local:` remote.
    private func agentPID(_ link: AgentLink) -> pid_t? { (link.connection as? LocalAgentConnection)?.processIdentifier }

    @Test func oneConnectionCarriesPushesAndPullsInTurn() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        let p = try f.openProject()
        let link = try AgentLink.open(project: p)
        defer { link.close() }
        let agent = agentPID(link)
        #expect(agent != nil)

        var stats = try PushSession(project: p, link: link).run()
        #expect(stats.filesChanged == 2, "src/a.py and syncd.yaml")
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a = 1\n".utf8))
        try f.write("src/a.py", "a = 2\n")
        try f.write("src/b.py", "b = 1\n")
        stats = try PushSession(project: p, link: link).run()
        #expect(stats.filesChanged == 2)
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a = 2\n".utf8))
        stats = try PushSession(project: p, link: link).run()
        #expect(stats.filesChanged == 0 && stats.chunksSent == 0, "nothing changed, nothing sent")

        try f.write("output/r.bin", randomBytes(300_000, seed: 91), in: f.remoteProject)
        try f.age("output/r.bin", in: f.remoteProject)
        stats = try PullSession(project: p, link: link).run()
        #expect(stats.filesChanged == 1)
        #expect(f.read("output/r.bin") == randomBytes(300_000, seed: 91))
        // Byte counts are per session, not the link's running totals.
        #expect(stats.bytesReceived > 300_000 && stats.bytesReceived < 400_000, "\(stats.bytesReceived)")

        try f.write("src/c.py", "c = 1\n")
        stats = try PushSession(project: p, link: link).run()
        #expect(stats.filesChanged == 1)
        #expect(!link.isClosed)
        #expect(agentPID(link) == agent, "every session ran in the same agent process")
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }

    /// The daemon holds SSH connections while it spawns local agents: a child must inherit none of them, or a
    /// connection the daemon closes stays open in the child.
    @Test(.enabled(if: sshdAvailable, "needs sshd as root"))
    func aSpawnedLocalAgentInheritsNoSSHConnection() throws {
        let server = try SSHServer()
        let remote = try SyncFixture()
        let config = try remote.useSSH(server)
        try "name: \(remote.name)\nremote: gpu-test\nremote_root: \(remote.remoteRoot)\nssh_config: \(config)\nagent_path: \(agentForSSH)\n"
            .write(toFile: remote.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        let sshLink = try AgentLink.open(project: try remote.openProject())
        defer { sshLink.close() }
        let sockets = tcpSocketInodes(toPort: server.port)
        #expect(!sockets.isEmpty, "the SSH connection shows in /proc/net/tcp")

        let f = try SyncFixture()
        let localLink = try AgentLink.open(project: try f.openProject())
        defer { localLink.close() }
        let pid = try #require(agentPID(localLink))
        let held = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")
        })
        let leaked = held.intersection(sockets.map { "socket:[\($0)]" })
        #expect(leaked.isEmpty, "the local agent holds the SSH connection: \(leaked)")
    }

    /// The whole of a /proc file, read until end of file: its size says 0, and a read by that size returns
    /// only the first page of a long one.
    private func readProcFile(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Inodes of the TCP sockets (IPv4 and IPv6) whose remote end is `port`, from /proc/net.
    private func tcpSocketInodes(toPort port: Int) -> Set<String> {
        var inodes: Set<String> = []
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in readProcFile(table).split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                guard fields.count > 9, let colon = fields[2].lastIndex(of: ":"),
                      Int(fields[2][fields[2].index(after: colon)...], radix: 16) == port else { continue }
                inodes.insert(String(fields[9]))
            }
        }
        return inodes
    }

    @Test func theAgentReportsARemoteFileOnlyOnceItIsClosed() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        try FileManager.default.createDirectory(atPath: f.remoteProject + "/checkpoint", withIntermediateDirectories: true)
        let p = try f.openProject()
        let link = try AgentLink.open(project: p)
        defer { link.close() }
        _ = try PushSession(project: p, link: link).run()
        _ = try PullSession(project: p, link: link).run()

        // The first watch reports at once: what finished before the watcher started was not seen.
        var reports = try watch(link) { _ in }
        #expect(reports.count == 1)

        // A file written in pieces, open all along: nothing while it is written, one report after its close.
        let content = randomBytes(600_000, seed: 92)
        let started = Date()
        reports = try watch(link) { closedAt in
            let path = f.remoteProject + "/checkpoint/slow.pt"
            // Made in place (not written aside and renamed, as FileManager.createFile does).
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            for piece in 0..<6 {
                _ = content[(piece * 100_000)..<((piece + 1) * 100_000)].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                usleep(250_000)
            }
            close(fd)
            closedAt(Date())
        }
        #expect(reports.count >= 1)
        #expect(reports.allSatisfy { $0.at >= ($0.closedAt ?? .distantFuture) }, "reported before the file was closed: \(reports)")
        #expect(reports.first?.paths == ["checkpoint/slow.pt"], "\(reports)")
        if let first = reports.first, let closed = first.closedAt {
            print("remote file closed → reported in \(Int(first.at.timeIntervalSince(closed) * 1000)) ms (written over \(Int(closed.timeIntervalSince(started) * 1000)) ms)")
        }
        let stats = try PullSession(project: p, link: link).run()
        #expect(stats.skipped.isEmpty, "\(stats.skipped)")
        let pulled = f.read("checkpoint/slow.pt")
        let whole = pulled == content  // compared aside: a failure should not print 600 kB of bytes
        #expect(whole, "the whole file comes at once, without waiting 2 s: \(pulled?.count ?? 0) bytes")
    }

    private struct Report: CustomStringConvertible {
        var paths: [String]
        var at: Date
        var closedAt: Date?
        var description: String { "\(paths) at \(at) (closed \(closedAt.map { "\($0)" } ?? "-"))" }
    }

    private final class Reports: @unchecked Sendable {  // `lock` guards list and closedAt
        let lock = NSLock()
        var list: [Report] = []
        var closedAt: Date?
    }

    /// Watches while `work` runs on another thread, then 1.5 s more; returns the reports.
    private func watch(_ link: AgentLink, _ work: @escaping @Sendable (_ closedAt: (Date) -> Void) -> Void) throws -> [Report] {
        let box = Reports()
        try link.beginWatch()
        let listener = Thread {
            try? link.listen { paths in
                box.lock.lock()
                box.list.append(Report(paths: paths.map(\.description), at: Date()))
                box.lock.unlock()
            }
        }
        listener.start()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            work { at in box.lock.lock(); box.closedAt = at; box.lock.unlock() }
            done.signal()
        }
        done.wait()
        usleep(1_500_000)
        try link.endWatch()
        #expect(eventually(seconds: 5) { listener.isFinished })
        box.lock.lock()
        defer { box.lock.unlock() }
        return box.list.map { var r = $0; r.closedAt = box.closedAt; return r }
    }
}

/// Pushes of only what a watcher reported (the daemon's), against full scans.
@Suite(.serialized)
struct IncrementalPushTests {
    @Test func reportedPathsArePushedAndWhatWasBelowAGoneDirectoryIsDeleted() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a\n")
        try f.write("src/pkg/b.py", "b\n")
        try f.write("src/pkg/deep/c.py", "c\n")
        try f.write("notes.txt", "n\n")
        let p = try f.openProject()
        _ = try PushSession(project: p).run()

        // A change nobody reported is not looked at; the reported ones are.
        try f.write("notes.txt", "unreported\n")
        try f.write("src/a.py", "a2\n")
        try FileManager.default.removeItem(atPath: f.project + "/src/pkg")
        try f.write("src/pkg", "now a file\n")
        var stats = try PushSession(project: p, changedPaths: [try RelativePath("src/a.py"), try RelativePath("src/pkg")]).run()
        #expect(stats.errors.isEmpty, "\(stats.errors)")
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a2\n".utf8))
        #expect(f.read("src/pkg", in: f.remoteProject) == Array("now a file\n".utf8), "the directory became a file")
        #expect(f.read("notes.txt", in: f.remoteProject) == Array("n\n".utf8), "an unreported path is left for a full push")
        #expect(stats.filesDeleted == 4, "src/pkg/b.py, src/pkg/deep/c.py, src/pkg/deep and the directory src/pkg: \(stats.filesDeleted)")

        // A reported path that is gone, and an ignored one, are handled like a scan would.
        try FileManager.default.removeItem(atPath: f.project + "/src/a.py")
        try f.write(".git/HEAD", "ref\n")
        stats = try PushSession(project: p, changedPaths: Set(try ["src/a.py", ".git/HEAD", "never/existed"].map { try RelativePath($0) })).run()
        #expect(stats.filesDeleted == 1)
        #expect(f.read("src/a.py", in: f.remoteProject) == nil)
        #expect(f.read(".git/HEAD", in: f.remoteProject) == nil, "ignored")

        // A full push finds what was not reported, and nothing else is left to do.
        stats = try PushSession(project: p).run()
        #expect(stats.filesChanged == 1)
        let (same, diff) = f.treesMatch(ignoring: [".git", ".git/HEAD"])
        #expect(same, "\(diff)")
    }
}
