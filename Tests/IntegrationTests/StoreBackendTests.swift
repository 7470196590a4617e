import Chunking
import Foundation
import S3
import SnapshotFormat
import StoreClient
import SyncSystem
import Testing

/// Issue 25: every upload to the store is verified, on SeaweedFS and on moto's S3 server alike. A part sent as a
/// form (libcurl's default type) was kept by moto as 0 bytes with a 200 answer; nothing compared part ETags or
/// checked the finished object's size, so a 0-byte pack got its index.
@Suite(.serialized)
struct StoreBackendTests {
    static func client(_ backend: StoreBackend) throws -> S3Client {
        let server = try backend.server()
        let name = "v" + UUID().uuidString.prefix(12).lowercased()
        let location = try S3Location(url: "s3://\(name)/syncd", endpoint: server.endpoint, region: "us-east-1")
        let client = try S3Client(location: location, credentials: AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test"))
        try client.createBucket()
        return client
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func objectsAndPartsArriveWhole(_ backend: StoreBackend) throws {
        let s3 = try Self.client(backend)
        let small = randomBytes(300_000, seed: 2501)
        try s3.put("packs/small.bin", small)
        #expect(try s3.get("packs/small.bin") == small ? true : false, "\(backend): the object came back other than sent")
        let parts = [randomBytes(5 << 20, seed: 2502), randomBytes(5 << 20, seed: 2503), randomBytes(123_457, seed: 2504)]
        try s3.putMultipart("packs/big.bin", parts: parts)
        let whole = parts.flatMap { $0 }
        #expect(try s3.size("packs/big.bin") == UInt64(whole.count), "\(backend)")
        #expect(ChunkID(hashing: try s3.get("packs/big.bin")) == ChunkID(hashing: whole), "\(backend): the parts came back other than sent")
    }

    /// A pack over the multipart threshold goes up in parts, is checked whole, and only then gets its index.
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func aLargePackIsVerifiedBeforeItsIndex(_ backend: StoreBackend) throws {
        let store = SnapshotStore(client: try Self.client(backend))
        var pack = PackBuilder(capacity: 40 << 20)
        for i in 0..<160 {
            let chunk = randomBytes(256 << 10, seed: 2600 + UInt64(i))
            chunk.withUnsafeBytes { pack.add(id: ChunkID(hashing: $0), raw: $0, compressed: nil) }
        }
        let index = try store.put(pack)
        let digest = pack.finish().digest
        #expect(try store.packs() == [digest], "\(backend): the index is listed")
        #expect(ChunkID(hashing: try store.wholePack(digest)) == digest)
        for entry in index.entries.prefix(3) { _ = try store.chunk(entry, in: digest) }
    }
}

/// Issue 25, item 1: a store a team shares may lose packs this laptop's catalog still lists (a teammate's gc, a
/// bucket emptied or replaced, a lifecycle rule). A push never commits a snapshot that names a chunk the store
/// does not hold: the catalog follows the store, and what it lost goes up again.
@Suite(.serialized)
struct SharedStoreTests {
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func aPushAfterTheStoreLostPacksCommitsOnlyWhatItCanServe(_ backend: StoreBackend) throws {
        let f = try SyncFixture()
        let server = try backend.server()
        let s3 = try StoreBackendTests.client(backend)
        let bucket = s3.location.bucket
        let root = f.base + "/host1"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try "name: proj\nhosts: [\"local:\(root)\"]\nstore: s3://\(bucket)/team\nendpoint: \(server.endpoint)\n"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        try f.write("data/weights.bin", randomBytes(3 << 20, seed: 2701))
        for i in 0..<20 { try f.write("src/m\(i).py", "value = \(i)\n") }
        let env = ["XDG_STATE_HOME": f.state, "AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret]
        let first = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(first.status == 0, "\(first.stderr)")

        // The store loses every pack (its indexes too), behind this laptop's back.
        let team = try S3Client(location: try S3Location(url: "s3://\(bucket)/team", endpoint: server.endpoint, region: "us-east-1"),
                                credentials: AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test"))
        let lost = try team.list("packs/") + team.list("index/")
        #expect(!lost.isEmpty)
        for object in lost { try team.delete(object.name) }

        try f.write("src/m0.py", "value = 100  # edited\n")
        let second = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"], env: env)
        #expect(second.status == 0, "\(second.stderr)")
        let snapshot = try #require(try second.json()["snapshot"] as? String)
        // Every chunk of that snapshot is in the store again: it restores whole.
        let target = f.base + "/restored"
        let restore = try run(binDirectory() + "/syncctl", ["restore", snapshot, "--to", target, "--dir", f.project], env: env)
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(SyncFixture.describeTree(target) == SyncFixture.describeTree(f.project), "the restored tree differs")
    }
}

/// Issue 25, item 3: locks that go stale safely, as restic's. A lock names its host, pid and time and is written
/// again while held; one not refreshed for 30 minutes, or of this host and a pid that is gone, is a dead run's
/// and holds nothing; Ctrl-C and SIGTERM release it; `store unlock` removes stale ones.
@Suite(.serialized)
struct StoreLockTests {
    static func project(_ backend: StoreBackend) throws -> (SyncFixture, S3Client, [String: String]) {
        let f = try SyncFixture()
        let server = try backend.server()
        let bucket = try StoreBackendTests.client(backend).location.bucket
        let root = f.base + "/host1"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        try "name: proj\nhosts: [\"local:\(root)\"]\nstore: s3://\(bucket)/team\nendpoint: \(server.endpoint)\n"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        let team = try S3Client(location: try S3Location(url: "s3://\(bucket)/team", endpoint: server.endpoint, region: "us-east-1"),
                                credentials: AWSCredentials(accessKey: server.key, secretKey: server.secret, source: "test"))
        return (f, team, ["XDG_STATE_HOME": f.state, "AWS_ACCESS_KEY_ID": server.key, "AWS_SECRET_ACCESS_KEY": server.secret])
    }

    static func lockBody(host: String, pid: Int32, time: Double) -> [UInt8] {
        Array("syncd store lock\nkind push\nhost \(host)\npid \(pid)\ntime \(Int(time))\n".utf8)
    }

    static var thisHost: String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, buffer.count)
        return String(nulTerminated: buffer)
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func staleLocksHoldNothingAndUnlockRemovesThem(_ backend: StoreBackend) throws {
        let (f, team, env) = try Self.project(backend)
        func gc() throws -> RunResult { try run(binDirectory() + "/syncctl", ["store", "gc", f.project, "--keep", "1"], env: env) }
        let now = Date().timeIntervalSince1970
        // A push of this machine that died: its pid is gone.
        let dead = try spawnProcess(["/bin/true"])
        _ = waitForExit(dead)
        try team.put("locks/push-1-dead", Self.lockBody(host: Self.thisHost, pid: dead, time: now))
        let first = try gc()
        #expect(first.status == 0, "a dead process's lock held the store: \(first.stderr)")
        // A push elsewhere, live: gc backs off, and says how to clear a lock that is not.
        try team.put("locks/push-2-elsewhere", Self.lockBody(host: "elsewhere.example", pid: 1, time: now))
        let busy = try gc()
        #expect(busy.status == 1)
        #expect(busy.stderr.contains("a push is running") && busy.stderr.contains("syncctl store unlock"), "\(busy.stderr)")
        // The same lock, not refreshed for 31 minutes: stale.
        try team.put("locks/push-2-elsewhere", Self.lockBody(host: "elsewhere.example", pid: 1, time: now - 31 * 60))
        let later = try gc()
        #expect(later.status == 0, "a lock not refreshed for 31 minutes held the store: \(later.stderr)")
        // unlock removes the stale locks, not a live one; --all removes every one.
        try team.put("locks/push-3-live", Self.lockBody(host: "elsewhere.example", pid: 1, time: now))
        let unlock = try run(binDirectory() + "/syncctl", ["store", "unlock", f.project], env: env)
        #expect(unlock.status == 0, "\(unlock.stderr)")
        #expect(Set(try team.list("locks/").map(\.name)) == ["locks/push-3-live"], "\(unlock.stdout)")
        #expect(try run(binDirectory() + "/syncctl", ["store", "unlock", f.project, "--all"], env: env).status == 0)
        #expect(try team.list("locks/").isEmpty)
    }

    /// A held lock is written again while its run goes on.
    @Test func aHeldLockIsRefreshed() throws {
        let (_, team, _) = try Self.project(.seaweedfs)
        let lock = try StoreLock.take(.push, client: team, refreshEvery: 0.3)
        let written = try #require(try StoreLock.locks(team).first { $0.name == lock.name }).time
        #expect(eventually(seconds: 10) { ((try? StoreLock.locks(team).first { $0.name == lock.name })??.time ?? 0) > written })
        lock.release()
        #expect(try team.list("locks/").isEmpty)
    }

    /// A push stopped with SIGTERM (or Ctrl-C) in the middle of its upload leaves no lock behind.
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func aSignalledPushReleasesItsLock(_ backend: StoreBackend) throws {
        let (f, team, env) = try Self.project(backend)
        let server = try backend.server()
        let port = Int(server.endpoint.split(separator: ":").last!)!
        let proxy = try CountingProxy(target: port, directory: f.base, rateMbit: 16)
        let config = try String(contentsOfFile: f.project + "/syncd.yaml", encoding: .utf8)
            .replacingOccurrences(of: server.endpoint, with: "http://127.0.0.1:\(proxy.port)")
        try config.write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        try f.write("data/weights.bin", randomBytes(24 << 20, seed: 2801))
        var sawLock = false
        let r = try run(binDirectory() + "/syncctl", ["push", f.project], env: env, timeout: 120) { process in
            sawLock = eventually(seconds: 30) { ((try? team.list("locks/push-")) ?? []).isEmpty == false }
            usleep(500_000)
            kill(process.processIdentifier, SIGTERM)
        }
        #expect(sawLock, "the push never took its lock")
        #expect(r.status == 128 + SIGTERM, "\(r.stderr)")
        #expect(try team.list("locks/").isEmpty, "the interrupted push left its lock")
    }
}

/// Issue 25, item 4: one broken object never blocks unrelated work, `store check` finds and names every broken
/// object, and `store repair` mends what the project's files can mend. A corrupt index used to fail every push,
/// restore and gc of every laptop that had not read it yet; a ref whose manifest is missing failed every gc.
@Suite(.serialized)
struct StoreRepairTests {
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func brokenObjectsArePassedOverFoundAndRepaired(_ backend: StoreBackend) throws {
        let (f, team, env) = try StoreLockTests.project(backend)
        let syncctl = binDirectory() + "/syncctl"
        try f.write("data/weights.bin", randomBytes(3 << 20, seed: 2801))
        for i in 0..<10 { try f.write("src/m\(i).py", "value = \(i)\n") }
        let first = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(first.status == 0, "\(first.stderr)")
        let snapshot = try #require(try first.json()["snapshot"] as? String)
        let firstPacks = Set(try team.list("index/").map(\.name))
        try f.write("data/extra.bin", randomBytes(1 << 20, seed: 2802))
        let second = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(second.status == 0, "\(second.stderr)")
        let secondIndex = try #require(try team.list("index/").map(\.name).first { !firstPacks.contains($0) })

        // Damage: the second pack's index altered, a byte of the first pack flipped (inside a chunk), and a ref
        // naming a manifest that is not there.
        var index = try team.get(secondIndex)
        index[20] ^= 0xFF
        try team.put(secondIndex, index)
        let firstIndex = try #require(firstPacks.first)
        let firstPack = try #require(StoreKeys.packOfIndex(firstIndex))
        var pack = try team.get(StoreKeys.pack(firstPack))
        pack[PackBuilder.magic.count + 100] ^= 0x01
        try team.put(StoreKeys.pack(firstPack), pack)
        let nowhere = ChunkID(hashing: Array("no such manifest".utf8))
        let orphan = SnapshotRef(name: SnapshotRef.key(project: "proj", manifest: nowhere, createdNanos: 1_600_000_000_000_000_000),
                                 manifest: nowhere, files: 1, bytes: 1, newBytes: 0, createdNanos: 1_600_000_000_000_000_000)
        try team.put(orphan.name, orphan.encoded())

        // check names all three, and exits 1.
        let check = try run(syncctl, ["store", "check", f.project, "--read-data", "--json"], env: env)
        #expect(check.status == 1, "\(check.stderr)")
        let problems = (try check.json()["problems"] as? [[String: Any]]) ?? []
        let kinds = Set(problems.compactMap { $0["kind"] as? String })
        #expect(kinds.isSuperset(of: ["index", "chunk", "manifest"]), "\(check.stdout)")
        #expect(problems.contains { ($0["object"] as? String)?.hasSuffix(secondIndex) == true }, "\(check.stdout)")
        #expect(problems.contains { ($0["object"] as? String)?.hasSuffix(StoreKeys.pack(firstPack)) == true }, "\(check.stdout)")

        // A second laptop (its own state: it has read no index yet) pushes, lists and collects garbage all the same.
        var laptop2 = env
        laptop2["XDG_STATE_HOME"] = f.base + "/state2"
        try f.write("src/m0.py", "value = 100  # edited\n")
        let other = try run(syncctl, ["push", f.project, "--json", "--force"], env: laptop2)
        #expect(other.status == 0, "a broken index of another push stopped this one: \(other.stderr)")
        let warnings = (try other.json()["warnings"] as? [String]) ?? []
        #expect(warnings.contains { $0.contains(secondIndex) }, "the broken index is named in the warnings: \(other.stdout)")
        let listed = try run(syncctl, ["snapshots", f.project, "--json"], env: laptop2)
        #expect(listed.status == 0, "\(listed.stderr)")
        let gc = try run(syncctl, ["store", "gc", f.project, "--keep", "10", "--json"], env: laptop2)
        #expect(gc.status == 0, "a ref without its manifest stopped gc: \(gc.stderr)")

        // repair sets the broken objects aside, saves the pack's sound chunks, uploads the rest from the project.
        let repair = try run(syncctl, ["store", "repair", f.project, "--read-data", "--json"], env: env)
        #expect(repair.status == 0, "\(repair.stdout)\n\(repair.stderr)")
        let setAside = (try repair.json()["set_aside"] as? [String]) ?? []
        #expect(setAside.contains(secondIndex) && setAside.contains(orphan.name), "\(repair.stdout)")
        #expect(try team.list("broken/").count >= 3)
        let after = try run(syncctl, ["store", "check", f.project, "--read-data"], env: env)
        #expect(after.status == 0, "\(after.stdout)\n\(after.stderr)")

        // The first snapshot restores whole again (its damaged chunk came back from the project's files).
        try f.write("src/m0.py", "value = 0\n")
        try FileManager.default.removeItem(atPath: f.project + "/data/extra.bin")
        let target = f.base + "/restored"
        let restore = try run(syncctl, ["restore", snapshot, "--to", target, "--dir", f.project], env: env)
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(SyncFixture.describeTree(target) == SyncFixture.describeTree(f.project), "the restored tree differs")
    }
}

/// Review mends of issue 25's repair: gc keeps what a broken ref may name, and a pack whose every chunk is sound
/// (bytes past its end) is mended in place, not set aside.
@Suite(.serialized)
struct StoreRepairSafetyTests {
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func gcKeepsWhatABrokenRefMayNameAndRepairMendsInPlace(_ backend: StoreBackend) throws {
        let (f, team, env) = try StoreLockTests.project(backend)
        let syncctl = binDirectory() + "/syncctl"
        try f.write("data/w.bin", randomBytes(1 << 20, seed: 3301))
        let push = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(push.status == 0, "\(push.stderr)")
        let snapshot = try #require(try push.json()["snapshot"] as? String)
        let packs = try team.list("packs/").map(\.name)
        #expect(packs.count == 1)

        // A ref a newer syncd might write: gc cannot tell what it names, so it deletes no pack.
        let refName = try #require(try team.list("projects/").first?.name)
        var ref = try team.get(refName)
        ref.replaceSubrange(0..<16, with: Array("syncd snapshot 9".utf8))
        try team.put(refName, ref)
        let gc = try run(syncctl, ["store", "gc", f.project, "--keep", "5", "--grace", "0", "--json"], env: env)
        #expect(gc.status == 0, "\(gc.stderr)")
        #expect(try gc.json()["collection_deferred"] as? Bool == true, "\(gc.stdout)")
        #expect(try team.list("packs/").map(\.name) == packs, "gc deleted a pack a broken ref may name")
        ref.replaceSubrange(0..<16, with: Array("syncd snapshot 1".utf8))
        try team.put(refName, ref)

        // Bytes past the pack's end: every chunk is sound, and repair writes the pack again under its name.
        try team.put(packs[0], try team.get(packs[0]) + [1, 2, 3])
        let repair = try run(syncctl, ["store", "repair", f.project, "--json"], env: env)
        #expect(repair.status == 0, "\(repair.stdout)\(repair.stderr)")
        #expect(try team.list("packs/").map(\.name) == packs, "the sound pack was set aside")
        let check = try run(syncctl, ["store", "check", f.project, "--read-data"], env: env)
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
        let target = f.base + "/restored"
        let restore = try run(syncctl, ["restore", snapshot, "--to", target, "--dir", f.project], env: env)
        #expect(restore.status == 0, "\(restore.stderr)")
    }
}

/// Issue 25, item 6: a restore that fails leaves no partial target, and run again it resumes.
@Suite(.serialized)
struct RestoreResumeTests {
    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func aFailedRestoreLeavesNoPartialTargetAndResumes(_ backend: StoreBackend) throws {
        let (f, team, env) = try StoreLockTests.project(backend)
        let syncctl = binDirectory() + "/syncctl"
        for i in 0..<5 { try f.write("a/\(i).bin", randomBytes(100_000, seed: 3200 + UInt64(i))) }
        let last = randomBytes(10_000, seed: 3210)
        try f.write("z/last.bin", last)
        let push = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(push.status == 0, "\(push.stderr)")
        let snapshot = try #require(try push.json()["snapshot"] as? String)

        // The chunk of the last file in path order is altered in the store: the restore fails there.
        let indexKey = try #require(try team.list("index/").first?.name)
        let pack = try #require(StoreKeys.packOfIndex(indexKey))
        let index = try PackIndex(decoding: try team.get(indexKey), pack: pack, object: indexKey)
        let entry = try #require(index.entries.first { $0.id == ChunkID(hashing: last) })
        let original = try team.get(StoreKeys.pack(pack))
        var altered = original
        altered[Int(entry.offset) + 5] ^= 0x01
        try team.put(StoreKeys.pack(pack), altered)

        let target = f.base + "/restored"
        let failed = try run(syncctl, ["restore", snapshot, "--to", target, "--dir", f.project], env: env)
        #expect(failed.status != 0, "\(failed.stderr)")
        #expect(failed.stderr.contains("does not match its id"), "\(failed.stderr)")
        #expect(!FileManager.default.fileExists(atPath: target), "a failed restore left a partial target")

        // Mended, the restore runs again and resumes: only the last file's chunk is read.
        try team.put(StoreKeys.pack(pack), original)
        let again = try run(syncctl, ["restore", snapshot, "--to", target, "--dir", f.project, "--json"], env: env)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try again.stats().chunksSent == 1, "\(again.stdout)")
        #expect(((try again.json()["warnings"] as? [String]) ?? []).contains { $0.contains("resumed") }, "\(again.stdout)")
        #expect(SyncFixture.describeTree(target) == SyncFixture.describeTree(f.project), "the restored tree differs")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: f.base).filter { $0.contains("syncd-restore") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }
}

/// A restore's target is never replaced: a file or a directory with files in it is refused and left as it was; an
/// empty directory (a mount point) is restored in place.
@Suite(.serialized)
struct RestoreTargetTests {
    @Test func aRestoreNeverReplacesWhatIsThere() throws {
        guard StoreBackend.seaweedfs.available else { return }
        let (f, _, env) = try StoreLockTests.project(.seaweedfs)
        let syncctl = binDirectory() + "/syncctl"
        try f.write("src/a.py", "a = 1\n")
        let push = try run(syncctl, ["push", f.project, "--json"], env: env)
        let snapshot = try #require(try push.json()["snapshot"] as? String)

        let file = f.base + "/notes.txt"
        try "mine\n".write(toFile: file, atomically: true, encoding: .utf8)
        let onFile = try run(syncctl, ["restore", snapshot, "--to", file, "--dir", f.project], env: env)
        #expect(onFile.status == 2 && onFile.stderr.contains("not a directory"), "\(onFile.stderr)")
        #expect((try? String(contentsOfFile: file, encoding: .utf8)) == "mine\n", "the file was replaced")

        let full = f.base + "/full"
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        try "keep\n".write(toFile: full + "/keep.txt", atomically: true, encoding: .utf8)
        let onFull = try run(syncctl, ["restore", snapshot, "--to", full, "--dir", f.project], env: env)
        #expect(onFull.status == 2 && onFull.stderr.contains("not empty"), "\(onFull.stderr)")
        #expect(FileManager.default.fileExists(atPath: full + "/keep.txt"))

        let empty = f.base + "/mnt"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        let inPlace = try run(syncctl, ["restore", snapshot, "--to", empty, "--dir", f.project], env: env)
        #expect(inPlace.status == 0, "\(inPlace.stderr)")
        #expect(SyncFixture.describeTree(empty) == SyncFixture.describeTree(f.project), "the restored tree differs")
    }
}

/// Issue 25, items 4 and 5: a host that cannot use the store for part of a push gets it over its SSH link
/// instead. A chunk the store serves damaged used to fail that file on every new host forever, though the laptop
/// held the right bytes; a `host_endpoint` that accepts connections and never answers cost 30 s per file.
@Suite(.serialized)
struct StoreFallbackTests {
    static func configure(_ f: SyncFixture, bucket: String, endpoint: String, hosts: [String], extra: String = "") throws {
        for host in hosts { try FileManager.default.createDirectory(atPath: f.base + "/" + host, withIntermediateDirectories: true) }
        let list = hosts.map { "\"local:\(f.base)/\($0)\"" }.joined(separator: ", ")
        try "name: proj\nhosts: [\(list)]\nstore: s3://\(bucket)/team\nendpoint: \(endpoint)\n\(extra)"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
    }

    /// A host's copy as the project's: the remote-owned folders each host makes left out.
    static func hostTree(_ root: String) -> [String: String] {
        SyncFixture.describeTree(root).filter { !["output", "checkpoint"].contains($0.key) }
    }

    @Test(arguments: StoreBackend.allCases.filter(\.available))
    func aDamagedChunkComesOverTheLinkAndIsUploadedAgain(_ backend: StoreBackend) throws {
        let (f, team, env) = try StoreLockTests.project(backend)
        let server = try backend.server()
        let syncctl = binDirectory() + "/syncctl"
        try Self.configure(f, bucket: team.location.bucket, endpoint: server.endpoint, hosts: ["host1"])
        try f.write("data/weights.bin", randomBytes(2 << 20, seed: 2901))
        for i in 0..<8 { try f.write("src/m\(i).py", "value = \(i)\n") }
        let first = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(first.status == 0, "\(first.stderr)")

        // A byte of a chunk of the pack flipped in the store; then a new host joins.
        let packKey = try #require(try team.list("packs/").first?.name)
        var pack = try team.get(packKey)
        pack[PackBuilder.magic.count + 10] ^= 0x01
        try team.put(packKey, pack)
        try Self.configure(f, bucket: team.location.bucket, endpoint: server.endpoint, hosts: ["host1", "host2"])
        let second = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(second.status == 0, "the new host failed the damaged files: \(second.stdout)\n\(second.stderr)")
        #expect(Self.hostTree(f.base + "/host2/proj") == SyncFixture.describeTree(f.project), "host2 differs")
        let warnings = (try second.json()["warnings"] as? [String]) ?? []
        #expect(warnings.contains { $0.contains("found damage") } && warnings.contains { $0.contains("set aside") }, "\(warnings)")

        // The store is whole again: a third host reads everything from it without trouble.
        let check = try run(syncctl, ["store", "check", f.project, "--read-data"], env: env)
        #expect(check.status == 0, "\(check.stdout)\n\(check.stderr)")
        try Self.configure(f, bucket: team.location.bucket, endpoint: server.endpoint, hosts: ["host1", "host2", "host3"])
        let third = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(third.status == 0, "\(third.stderr)")
        #expect(!((try third.json()["warnings"] as? [String]) ?? []).contains { $0.contains("damage") }, "\(third.stdout)")
        #expect(Self.hostTree(f.base + "/host3/proj") == SyncFixture.describeTree(f.project), "host3 differs")
    }

    /// A host endpoint that accepts connections and never answers: after a few reads time out, the host gives up on
    /// the store and the push goes over SSH, with one warning naming it; `store_fallback: no` fails the host.
    @Test func aSilentHostEndpointFallsBackToSSH() throws {
        let backend = StoreBackend.seaweedfs
        guard backend.available else { return }
        let (f, team, env) = try StoreLockTests.project(backend)
        let server = try backend.server()
        let syncctl = binDirectory() + "/syncctl"
        // Listening, never accepting: connections complete (the kernel's backlog) and nothing ever answers.
        let (silent, port) = loopbackListener(answer: nil, backlog: 128)
        defer { close(silent) }
        let settings = "host_endpoint: http://127.0.0.1:\(port)\ntimeout: 4\n"
        try Self.configure(f, bucket: team.location.bucket, endpoint: server.endpoint, hosts: ["host1"], extra: settings)
        for i in 0..<40 { try f.write("src/f\(i).bin", randomBytes(20_000, seed: 3000 + UInt64(i))) }

        let started = Date()
        let push = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(push.status == 0, "\(push.stdout)\n\(push.stderr)")
        #expect(Date().timeIntervalSince(started) < 60, "the fallback took \(Date().timeIntervalSince(started)) s")
        let warnings = (try push.json()["warnings"] as? [String]) ?? []
        let named = warnings.filter { $0.contains("cannot read the store") }
        #expect(named.count == 1 && named[0].contains("127.0.0.1:\(port)") && named[0].contains("store_fallback: ssh"), "\(warnings)")
        #expect(Self.hostTree(f.base + "/host1/proj") == SyncFixture.describeTree(f.project), "host1 differs")

        // With store_fallback: no, the host's files fail, and the error says why.
        try Self.configure(f, bucket: team.location.bucket, endpoint: server.endpoint, hosts: ["host1"], extra: settings + "store_fallback: no\n")
        for i in 0..<40 { try f.write("src/f\(i).bin", randomBytes(20_000, seed: 3100 + UInt64(i))) }
        let refused = try run(syncctl, ["push", f.project, "--json"], env: env)
        #expect(refused.status != 0, "\(refused.stdout)")
        // Item 6: a failed file is not counted as changed, and forty files failing for one cause are one line.
        let report = try refused.json()
        let errors = (report["errors"] as? [String]) ?? []
        #expect(report["files_changed"] as? Int == 0, "\(refused.stdout)")
        #expect(((report["hosts"] as? [[String: Any]])?.first?["files_changed"] as? Int) == 0, "\(refused.stdout)")
        #expect((report["failures"] as? [Any])?.count == 41, "the forty files and syncd.yaml: \(refused.stdout)")
        let fileLines = errors.filter { $0.contains("store_fallback is no") }
        #expect(fileLines.count == 1 && fileLines[0].hasPrefix("41 files"), "\(errors)")
    }
}
