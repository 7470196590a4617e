import Chunking
import Foundation
import Testing

/// Files kept beside `name` in `directory` as conflict copies (`NAME.sync-conflict-*.EXT`).
func conflictCopies(of name: String, in directory: String) -> [String] {
    let stem = (name as NSString).deletingPathExtension
    let ext = (name as NSString).pathExtension
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.filter { $0.hasPrefix(stem + ".sync-conflict-") && (ext.isEmpty || $0.hasSuffix("." + ext)) }.sorted()
}

func text(_ bytes: [UInt8]?) -> String? { bytes.map { String(decoding: $0, as: UTF8.self) } }

extension SyncFixture {
    /// A file pushed, then changed here to `local` and on the remote to `remote`: a push conflict.
    func makePushConflict(_ path: String, local: String, remote: String) throws {
        try write(path, "base\n")
        #expect(try push().status == 0)
        try write(path, local)
        try write(path, remote, in: remoteProject)
    }

    /// Remote files pulled, then each changed there and here: pull conflicts (`changes`: path, local, remote).
    func makePullConflicts(_ changes: [(String, String, String)]) throws {
        for (path, _, _) in changes {
            try write(path, "ckpt 1\n", in: remoteProject)
            try age(path)
        }
        #expect(try pull().status == 0)
        for (path, local, remote) in changes {
            try write(path, local)
            try write(path, remote, in: remoteProject)
            try age(path, seconds: 5)
        }
    }

    func makePullConflict(_ path: String, local: String, remote: String) throws { try makePullConflicts([(path, local, remote)]) }

    func conflictsJSON() throws -> [[String: Any]] {
        let r = try syncctl(["conflicts", project, "--json"])
        guard r.status == 0, let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let list = object["conflicts"] as? [[String: Any]] else { throw FixtureError("conflicts --json: \(r.stderr) \(r.stdout)") }
        return list
    }
}

@Suite(.serialized)
struct ConflictTests {
    @Test func aPushConflictIsListedWithBothSidesAndWhatTheLastSyncRecorded() throws {
        let f = try SyncFixture()
        // Pushed within a second of being written (the stat cache cannot trust it), then changed on both sides.
        try f.write("src/model.py", "v1\n")
        #expect(try f.push().status == 0)
        try f.write("src/model.py", "local edit\n")
        try f.write("src/model.py", "remote edit!\n", in: f.remoteProject)
        let r = try f.push()
        #expect(r.status == 3, "\(r.stderr)")
        let v1 = ChunkID(hashing: Array("v1\n".utf8)).hex
        #expect(r.stderr.contains("the last sync recorded file \(v1.prefix(12))"), "the record holds what was pushed: \(r.stderr)")
        #expect(!r.stderr.contains("expected absent") && !r.stderr.contains("recorded absent"), "\(r.stderr)")
        #expect(r.stderr.contains("the remote holds file \(ChunkID(hashing: Array("remote edit!\n".utf8)).hex.prefix(12)) (13 bytes"), "\(r.stderr)")
        #expect(text(f.read("src/model.py", in: f.remoteProject)) == "remote edit!\n", "the remote's version is untouched")

        let list = try f.conflictsJSON()
        #expect(list.count == 1)
        let c = try #require(list.first)
        #expect(c["path"] as? String == "src/model.py")
        #expect(c["found"] as? String == "push")
        #expect(c["since"] is String)
        let local = c["local_side"] as? [String: Any], remote = c["remote_side"] as? [String: Any], recorded = c["recorded_side"] as? [String: Any]
        #expect(local?["size"] as? Int == 11 && local?["digest"] as? String == ChunkID(hashing: Array("local edit\n".utf8)).hex)
        #expect(remote?["size"] as? Int == 13 && remote?["digest"] as? String == ChunkID(hashing: Array("remote edit!\n".utf8)).hex)
        #expect(remote?["mtime"] is String && local?["mtime"] is String)
        #expect(recorded?["digest"] as? String == v1 && recorded?["size"] as? Int == 3)

        // Still in conflict on the next push, since when is kept.
        usleep(1_100_000)
        #expect(try f.push().status == 3)
        #expect(try f.conflictsJSON().first?["since"] as? String == c["since"] as? String)
    }

    @Test func resolveKeepLocalSendsItAndKeepsTheRemoteVersionBeside() throws {
        let f = try SyncFixture()
        try f.makePushConflict("src/train.py", local: "mine\n", remote: "theirs\n")
        #expect(try f.push().status == 3)
        let r = try f.syncctl(["resolve", "--dir", f.project, "src/train.py", "--keep", "local"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(text(f.read("src/train.py", in: f.remoteProject)) == "mine\n")
        let copies = conflictCopies(of: "train.py", in: f.remoteProject + "/src")
        #expect(copies.count == 1, "\(copies)")
        #expect(copies.first.map { text(f.read("src/" + $0, in: f.remoteProject)) } == "theirs\n", "the losing version is kept")
        #expect(copies.first?.range(of: #"^train\.sync-conflict-\d{8}-\d{6}\.py$"#, options: .regularExpression) != nil, "\(copies)")
        #expect(r.stderr.contains("kept the remote version of src/train.py as src/\(copies.first ?? "?")"), "\(r.stderr)")
        #expect(try f.conflictsJSON().isEmpty)
        let again = try f.push()
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try again.stats().filesChanged == 0)
    }

    @Test func resolveKeepRemoteBringsItHereAndKeepsTheLocalVersionBeside() throws {
        let f = try SyncFixture()
        try f.makePushConflict("notes.md", local: "mine\n", remote: "theirs\n")
        #expect(try f.push().status == 3)
        let r = try f.syncctl(["resolve", "notes.md", "--dir", f.project, "--keep", "remote"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(text(f.read("notes.md")) == "theirs\n")
        let copies = conflictCopies(of: "notes.md", in: f.project)
        #expect(copies.count == 1, "\(copies)")
        #expect(copies.first.map { text(f.read($0)) } == "mine\n")
        #expect(try f.conflictsJSON().isEmpty)
        // The local copy is not synced, and both sides agree on notes.md now.
        let again = try f.push()
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try again.stats().filesChanged == 0, "\(again.stdout)")
        #expect(conflictCopies(of: "notes.md", in: f.remoteProject).isEmpty)
    }

    @Test func pullConflictsResolveBothWays() throws {
        let f = try SyncFixture()
        try f.makePullConflicts([("checkpoint/a.pt", "my tweak\n", "ckpt 2\n"), ("checkpoint/b.pt", "my tweak b\n", "ckpt 2b\n")])
        let p = try f.pull()
        #expect(p.status == 3, "\(p.stderr)")
        #expect(p.stderr.contains("the last pull recorded file \(ChunkID(hashing: Array("ckpt 1\n".utf8)).hex.prefix(12))"), "\(p.stderr)")
        #expect(Set(try f.conflictsJSON().compactMap { $0["path"] as? String }) == ["checkpoint/a.pt", "checkpoint/b.pt"])
        #expect(try f.conflictsJSON().allSatisfy { $0["found"] as? String == "pull" })

        #expect(try f.syncctl(["resolve", "--dir", f.project, "checkpoint/a.pt", "--keep", "remote"]).status == 0)
        #expect(text(f.read("checkpoint/a.pt")) == "ckpt 2\n")
        #expect(conflictCopies(of: "a.pt", in: f.project + "/checkpoint").map { text(f.read("checkpoint/" + $0)) } == ["my tweak\n"])

        let keep = try f.syncctl(["resolve", "--dir", f.project, f.project + "/checkpoint/b.pt", "--keep", "local"])
        #expect(keep.status == 0, "\(keep.stderr)")
        #expect(text(f.read("checkpoint/b.pt", in: f.remoteProject)) == "my tweak b\n", "sent over the remote's, a pull path or not")
        #expect(conflictCopies(of: "b.pt", in: f.remoteProject + "/checkpoint").map { text(f.read("checkpoint/" + $0, in: f.remoteProject)) }
                == ["ckpt 2b\n"])
        #expect(try f.conflictsJSON().isEmpty)
        // The remote's copies stay there: a pull does not bring them.
        let after = try f.pull()
        #expect(after.status == 0, "\(after.stderr)")
        #expect(conflictCopies(of: "b.pt", in: f.project + "/checkpoint").isEmpty)
    }

    @Test func forcedPushAndPullKeepTheLosersAsCopies() throws {
        let f = try SyncFixture()
        try f.makePushConflict("a.txt", local: "local a\n", remote: "remote a\n")
        try f.makePullConflict("output/log.txt", local: "local log\n", remote: "remote log\n")
        #expect(try f.push().status == 3)
        #expect(try f.pull().status == 3)
        #expect(try f.conflictsJSON().count == 2)

        // push --force: the local version wins every conflict, the push's and the pull's.
        let pushed = try f.syncctl(["push", f.project, "--force", "--json"])
        #expect(pushed.status == 0, "\(pushed.stderr)")
        #expect(text(f.read("a.txt", in: f.remoteProject)) == "local a\n")
        #expect(text(f.read("output/log.txt", in: f.remoteProject)) == "local log\n")
        #expect(conflictCopies(of: "a.txt", in: f.remoteProject).map { text(f.read($0, in: f.remoteProject)) } == ["remote a\n"])
        #expect(conflictCopies(of: "log.txt", in: f.remoteProject + "/output").count == 1)
        let kept = (try pushed.json()["kept"] as? [[String: Any]]) ?? []
        #expect(kept.count == 2 && kept.allSatisfy { $0["side"] as? String == "remote" }, "\(pushed.stdout)")
        #expect(try f.conflictsJSON().isEmpty)

        // pull --force: the remote version wins.
        let g = try SyncFixture()
        try g.makePushConflict("b.txt", local: "local b\n", remote: "remote b\n")
        try g.makePullConflict("output/m.txt", local: "local m\n", remote: "remote m\n")
        #expect(try g.push().status == 3)
        #expect(try g.pull().status == 3)
        let pulled = try g.syncctl(["pull", g.project, "--force", "--json"])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(text(g.read("b.txt")) == "remote b\n")
        #expect(text(g.read("output/m.txt")) == "remote m\n")
        #expect(conflictCopies(of: "b.txt", in: g.project).map { text(g.read($0)) } == ["local b\n"])
        #expect(conflictCopies(of: "m.txt", in: g.project + "/output").map { text(g.read("output/" + $0)) } == ["local m\n"])
        #expect(try g.conflictsJSON().isEmpty)
        #expect(try g.push().stats().filesChanged == 0, "the copies are not pushed")
    }

    /// Deleted on the remote, changed here: a conflict, and one that `resolve --keep local` and `push --force`
    /// settle by placing the local version (there is nothing of the remote's to keep aside). Both used to answer
    /// the same conflict again, so the advice the conflict gave could never work.
    @Test func aFileDeletedOnTheRemoteAndChangedHereIsAConflictThatForceSettles() throws {
        let f = try SyncFixture()
        for name in ["a.txt", "b.txt"] {
            try f.write(name, "base\n")
        }
        #expect(try f.push().status == 0)
        for name in ["a.txt", "b.txt"] {
            try f.write(name, "mine \(name)\n")
            try FileManager.default.removeItem(atPath: f.remoteProject + "/" + name)
        }
        let r = try f.push()
        #expect(r.status == 3, "\(r.stderr)")
        #expect(r.stderr.contains("the remote holds absent"), "\(r.stderr)")
        #expect(Set(try f.conflictsJSON().compactMap { $0["path"] as? String }) == ["a.txt", "b.txt"])

        let keep = try f.syncctl(["resolve", "--dir", f.project, "a.txt", "--keep", "local"])
        #expect(keep.status == 0, "\(keep.stderr)")
        #expect(text(f.read("a.txt", in: f.remoteProject)) == "mine a.txt\n")
        let forced = try f.syncctl(["push", f.project, "--force", "--json"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(text(f.read("b.txt", in: f.remoteProject)) == "mine b.txt\n")
        #expect(conflictCopies(of: "b.txt", in: f.remoteProject).isEmpty, "nothing of the remote's to keep")
        #expect(try f.conflictsJSON().isEmpty)
        #expect(try f.push().stats().filesChanged == 0)
    }

    @Test func pathsThatBecomeIgnoredAreReportedThenPrunedButNeverAPullPath() throws {
        let f = try SyncFixture()
        for i in 0..<3 { try f.write("scratch/tmp\(i).bin", "t\(i)") }
        try f.write("keep.py", "k")
        try f.write("output/run.log", "remote log", in: f.remoteProject)
        #expect(try f.push().status == 0)
        try f.write(".syncignore", "scratch/\n*.log\n")
        let r = try f.push()
        #expect(r.status == 0, "\(r.stderr)")
        let left = (try r.json()["left_ignored"] as? [String]) ?? []
        #expect(left == ["scratch", "scratch/tmp0.bin", "scratch/tmp1.bin", "scratch/tmp2.bin"], "\(r.stdout)")
        #expect(r.stderr.contains("left on the remote: 4 paths now ignored"), "\(r.stderr)")
        #expect(f.read("scratch/tmp0.bin", in: f.remoteProject) != nil, "reported, not deleted")

        let pruned = try f.syncctl(["push", f.project, "--prune-ignored", "--json"])
        #expect(pruned.status == 0, "\(pruned.stderr)")
        #expect(try pruned.stats().filesDeleted == 4, "\(pruned.stdout)")
        #expect(!FileManager.default.fileExists(atPath: f.remoteProject + "/scratch"))
        #expect(f.read("output/run.log", in: f.remoteProject) != nil, "a pull path is never pruned")
        #expect(f.read("keep.py", in: f.remoteProject) != nil)
        let quiet = try f.push()
        #expect(((try quiet.json()["left_ignored"] as? [String]) ?? ["?"]).isEmpty)
    }

    @Test func aPulledFileDeletedHereStaysDeletedUntilTheRemoteChangesIt() throws {
        let f = try SyncFixture()
        try f.write("checkpoint/e1.pt", "epoch 1\n", in: f.remoteProject)
        try f.write("checkpoint/old/e0.pt", "epoch 0\n", in: f.remoteProject)
        try f.age("checkpoint/e1.pt")
        try f.age("checkpoint/old/e0.pt")
        #expect(try f.pull().status == 0)
        try FileManager.default.removeItem(atPath: f.project + "/checkpoint/e1.pt")
        try FileManager.default.removeItem(atPath: f.project + "/checkpoint/old")
        let again = try f.pull()
        #expect(again.status == 0, "\(again.stderr)")
        #expect(f.read("checkpoint/e1.pt") == nil, "deleted here, unchanged there: not brought back")
        #expect(!FileManager.default.fileExists(atPath: f.project + "/checkpoint/old"))
        #expect(try again.stats().filesChanged == 0)
        #expect(f.read("checkpoint/e1.pt", in: f.remoteProject) != nil, "nor deleted on the remote")

        try f.write("checkpoint/e1.pt", "epoch 1, rewritten\n", in: f.remoteProject)
        try f.age("checkpoint/e1.pt", seconds: 5)
        #expect(try f.pull().status == 0)
        #expect(text(f.read("checkpoint/e1.pt")) == "epoch 1, rewritten\n", "changed on the remote after the deletion: back")
        #expect(f.read("checkpoint/old/e0.pt") == nil)
    }

    @Test func theRemoteHasEveryPullPathFromTheFirstPush() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a")
        #expect(try f.push().status == 0)
        for dir in ["output", "checkpoint"] {
            var st = stat()
            #expect(lstat(f.remoteProject + "/" + dir, &st) == 0, "\(dir) is on the remote")
            #expect(st.st_mode & S_IFMT == S_IFDIR)
            #expect(st.st_uid == getuid(), "made by the agent's user, not by a container")
        }
        #expect(!FileManager.default.fileExists(atPath: f.project + "/output"), "nothing is made here")
    }
}
