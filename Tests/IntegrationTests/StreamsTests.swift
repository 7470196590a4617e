import Foundation
import Testing

/// `streams:`: a large push spreads its chunk data over extra SSH connections, which join the push's agent.
@Suite(.serialized, .enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
struct StreamsTests {
    /// A project over the threshold (64 MiB to send): two large files, small ones, an executable and an empty
    /// file.
    static func fill(_ f: SyncFixture) throws {
        try f.write("data/a.bin", randomBytes(40 << 20, seed: 71))
        try f.write("data/b.bin", randomBytes(36 << 20, seed: 72))
        for i in 0..<200 { try f.write("src/m\(i).py", "x = \(i)\n" + String(repeating: "y = x * 2\n", count: i)) }
        try f.write("run.sh", Array("#!/bin/sh\necho hi\n".utf8), mode: 0o755)
        try f.write("src/__init__.py", "")
    }

    static func use(_ server: SSHServer, _ f: SyncFixture, streams: Int) throws {
        try f.useSSH(server)
        try f.addSetting("streams: \(streams)")
    }

    /// Join processes (`syncd-agent join`) running now.
    static func joiners() -> [pid_t] {
        let r = try? run("/usr/bin/pgrep", ["-f", "syncd/agent-[0-9a-f]* join"])
        return r.map { $0.stdout.split(separator: "\n").compactMap { pid_t($0) } } ?? []
    }

    static func joinersLeft() -> Int { joiners().count }

    /// Kills the sshd that serves each joined stream's connection (the joining agent's parent): the connection
    /// drops as a network failure would drop it.
    static func dropJoinedStreams() {
        for pid in joiners() {
            if let parent = parent(of: pid), parent > 1 { kill(parent, SIGKILL) }
        }
    }

    static func parent(of pid: pid_t) -> pid_t? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? pid_t(fields[1]) : nil
    }

    /// Paths whose type, mode, size or content differ between the two remotes (syncd.yaml differs by design).
    static func differences(_ a: SyncFixture, _ b: SyncFixture) -> [String] {
        let left = SyncFixture.describeTree(a.remoteProject), right = SyncFixture.describeTree(b.remoteProject)
        return Set(left.keys).union(right.keys).filter { $0 != "syncd.yaml" && left[$0] != right[$0] }.sorted()
    }

    @Test func multiStreamPushGivesTheSameTreeAsASingleOne() throws {
        let server = try SSHServer()
        let many = try SyncFixture(), one = try SyncFixture()
        try Self.use(server, many, streams: 3)
        try Self.use(server, one, streams: 1)
        for f in [many, one] { try Self.fill(f) }

        let spread = try many.sshctl(["push", many.project, "--json"])
        #expect(spread.status == 0, "\(spread.stderr)")
        #expect(try spread.stats().streams >= 2, "the push did not use its extra streams: \(spread.stdout)")
        let single = try one.sshctl(["push", one.project, "--json"])
        #expect(single.status == 0, "\(single.stderr)")
        #expect(try single.stats().streams == 1)
        for f in [many, one] {
            let (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
            #expect(same, "\(diff)")
        }
        #expect(Self.differences(many, one).isEmpty, "\(Self.differences(many, one))")

        // An edit inside one large file, an append to the other, and a new large file: the second push sends a
        // mix of new and known chunks, spread again.
        for f in [many, one] {
            var a = f.read("data/a.bin")!
            a.replaceSubrange((20 << 20)..<((20 << 20) + 4096), with: randomBytes(4096, seed: 73))
            try f.write("data/a.bin", a)
            try f.write("data/b.bin", f.read("data/b.bin")! + randomBytes(3 << 20, seed: 74))
            try f.write("data/c.bin", randomBytes(66 << 20, seed: 75))
        }
        let again = try many.sshctl(["push", many.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try again.stats().streams >= 2, "\(again.stdout)")
        let againOne = try one.sshctl(["push", one.project, "--json"])
        #expect(againOne.status == 0, "\(againOne.stderr)")
        #expect(try again.stats().chunksSent == (try againOne.stats().chunksSent), "both push the same chunks")
        for f in [many, one] {
            let (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
            #expect(same, "\(diff)")
            let parts = try findPrint0(f.remoteProject).filter { String(decoding: $0, as: UTF8.self).contains(".syncd-part.") }
            #expect(parts.isEmpty, "temporary files left: \(parts.map { String(decoding: $0, as: UTF8.self) })")
        }
        #expect(Self.differences(many, one).isEmpty, "\(Self.differences(many, one))")
        // Each joined stream's process exits once its push is over.
        #expect(eventually(seconds: 5) { Self.joinersLeft() == 0 }, "join processes still running after the push")
    }

    /// A pull with much to fetch reads over extra streams too: the files that arrive are the remote's, byte for
    /// byte, as with one stream, both for a new checkpoint and for one that shares most of its chunks with the
    /// last.
    @Test func multiStreamPullGivesTheSameFilesAsASingleOne() throws {
        let server = try SSHServer()
        let many = try SyncFixture(), one = try SyncFixture()
        try Self.use(server, many, streams: 3)
        try Self.use(server, one, streams: 1)
        let checkpoint = randomBytes(72 << 20, seed: 77)
        for f in [many, one] {
            try f.write("src/train.py", "print('train')\n")
            #expect(try f.sshctl(["push", f.project, "--json"]).status == 0)
            try f.write("checkpoint/step-1.pt", checkpoint, in: f.remoteProject)
            for i in 0..<50 { try f.write("output/log-\(i).txt", "step \(i)\n", in: f.remoteProject) }
            try f.age("checkpoint/step-1.pt", in: f.remoteProject)
            for i in 0..<50 { try f.age("output/log-\(i).txt", in: f.remoteProject) }
        }
        let spread = try many.sshctl(["pull", many.project, "--json"])
        #expect(spread.status == 0, "\(spread.stderr)")
        #expect(try spread.stats().streams >= 2, "the pull did not use its extra streams: \(spread.stdout)")
        #expect(try spread.stats().bytesReceived.asInt >= 72 << 20)
        let single = try one.sshctl(["pull", one.project, "--json"])
        #expect(single.status == 0, "\(single.stderr)")
        #expect(try single.stats().streams == 1)
        for f in [many, one] {
            let (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
            #expect(same, "\(diff)")
            #expect(f.read("checkpoint/step-1.pt") == checkpoint ? true : false)
        }

        // A fine-tuned copy: 90% of its chunks are the last checkpoint's, the rest (far over the threshold
        // still) crosses the streams.
        var tuned = checkpoint
        for k in 0..<8 { tuned.replaceSubrange((k * (9 << 20))..<(k * (9 << 20) + (1 << 20)), with: randomBytes(1 << 20, seed: 78 + UInt64(k))) }
        tuned += randomBytes(64 << 20, seed: 90)
        for f in [many, one] {
            try f.write("checkpoint/step-2.pt", tuned, in: f.remoteProject)
            try f.age("checkpoint/step-2.pt", in: f.remoteProject)
        }
        let again = try many.sshctl(["pull", many.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try again.stats().streams >= 2, "\(again.stdout)")
        let againOne = try one.sshctl(["pull", one.project, "--json"])
        #expect(againOne.status == 0, "\(againOne.stderr)")
        #expect(try again.stats().chunksSent == (try againOne.stats().chunksSent), "both fetch the same chunks")
        for f in [many, one] {
            let (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
            #expect(same, "\(diff)")
            #expect(f.read("checkpoint/step-2.pt") == tuned ? true : false)
        }
        #expect(eventually(seconds: 5) { Self.joinersLeft() == 0 }, "join processes still running after the pull")
    }

    /// A joined stream of a pull dropped midway: the pull ends with an error (never a hang), keeps what it has,
    /// and the next one completes the file.
    @Test func droppedStreamFailsThePullCleanlyAndTheNextCompletes() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try Self.use(server, f, streams: 2)
        try f.write("src/train.py", "print('train')\n")
        #expect(try f.sshctl(["push", f.project, "--json"]).status == 0)
        let checkpoint = randomBytes(160 << 20, seed: 79)
        try f.write("checkpoint/big.pt", checkpoint, in: f.remoteProject)
        try f.age("checkpoint/big.pt", in: f.remoteProject)
        var killed = false
        let started = Date()
        let r = try f.sshctl(["pull", f.project, "--json"]) { process in
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline && process.isRunning {
                if ResumeTests.partialBytes(in: f.project + "/checkpoint") >= 16 << 20, !Self.joiners().isEmpty {
                    Self.dropJoinedStreams()
                    killed = true
                    return
                }
                usleep(2000)
            }
        }
        #expect(killed, "the pull finished before a stream could be dropped")
        #expect(Date().timeIntervalSince(started) < 60, "the pull took \(Date().timeIntervalSince(started)) s to end")
        if r.status != 0 { #expect(r.status == 1, "\(r.stderr)") }
        let again = try f.sshctl(["pull", f.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(f.read("checkpoint/big.pt") == checkpoint ? true : false, "contents differ")
    }

    /// A joined stream dropped in the middle of a push (the sshd serving its connection killed, early and late):
    /// the push fails with a message that says to run it again, or completes, and never hangs; the next push
    /// completes the tree.
    @Test(arguments: [8, 96])
    func droppedStreamFailsThePushCleanlyAndTheNextResumes(megabytes: Int) throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try Self.use(server, f, streams: 2)
        let big = randomBytes(160 << 20, seed: 76)
        try f.write("data/big.bin", big)
        var killed = false
        let started = Date()
        let r = try f.sshctl(["push", f.project, "--json"]) { process in
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline && process.isRunning {
                if ResumeTests.partialBytes(in: f.remoteProject + "/data") >= megabytes << 20, !Self.joiners().isEmpty {
                    Self.dropJoinedStreams()
                    killed = true
                    return
                }
                usleep(2000)
            }
        }
        #expect(killed, "the push finished before a stream could be dropped")
        #expect(Date().timeIntervalSince(started) < 60, "the push took \(Date().timeIntervalSince(started)) s to end")
        if r.status != 0 {
            #expect(r.status == 1)
            #expect(r.stderr.contains("resume"), "\(r.stderr)")
        }
        let again = try f.sshctl(["push", f.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(f.read("data/big.bin", in: f.remoteProject) == big ? true : false, "contents differ")
    }
}
