import Chunking
@testable import Client
import Foundation
import GRDB
import Testing
import Wire

/// What keeps a push of a project with millions of files in step with its changes rather than its size (issue 29).
@Suite(.serialized)
struct ManyFilesTests {
    /// The agent reads its records of the project's files only once an operation needs them: a no-op push reads
    /// none. Shown with a record index that cannot be opened at all (a directory in its place): a no-op push does
    /// not notice, and a push with a change opens it, says it cannot, and goes on by hashing (the records are a
    /// cache). Read at the hello, as before, it failed every session.
    @Test func aNoOpPushDoesNotReadTheAgentsRecords() throws {
        let f = try SyncFixture()
        for i in 0..<20 { try f.write("src/m\(i).py", "x = \(i)\n") }
        let first = try f.push()
        #expect(first.status == 0, "\(first.stderr)")
        let state = f.remoteProject + "/.syncd/records.db"
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: state + suffix) }
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false)

        let noop = try f.push()
        #expect(noop.status == 0, "\(noop.stderr)")
        #expect(try noop.stats().filesChanged == 0)
        #expect(!noop.stderr.contains("records"), "the records were read: \(noop.stderr)")

        try f.write("src/m3.py", "x = 'changed'\n")
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(try edit.stats().filesChanged == 1)
        #expect(edit.stderr.contains("cannot read the project's records"), "\(edit.stderr)")
        #expect(f.read("src/m3.py", in: f.remoteProject) == Array("x = 'changed'\n".utf8))
    }
}

extension ManyFilesTests {
    /// The agent keeps replaced files in `.syncd/cache/` (for moves) up to 512 MiB between sessions, the oldest
    /// going first; what it holds is found by listing that directory, not by going over every record. A sparse
    /// 600 MiB file replaced goes over the bound and is dropped at the end of its push; a small one replaced stays.
    @Test func theAgentsCacheOfReplacedFilesStaysWithinItsBound() throws {
        let f = try SyncFixture()
        try f.write("small.txt", "one\n")
        let big = f.project + "/big.bin"
        #expect(FileManager.default.createFile(atPath: big, contents: nil))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
        try handle.write(contentsOf: Data("head".utf8))
        try handle.truncate(atOffset: 600 << 20)
        try handle.close()
        let first = try f.push()
        #expect(first.status == 0, "\(first.stderr)")
        let cache = f.remoteProject + "/.syncd/cache"
        func cached() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []).sorted() }
        #expect(cached().isEmpty)

        let rewrite = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
        try rewrite.write(contentsOf: Data("HEAD".utf8))
        try rewrite.close()
        let second = try f.push()
        #expect(second.status == 0, "\(second.stderr)")
        #expect(cached().isEmpty, "the 600 MiB old version went over the bound and was dropped: \(cached())")

        try f.write("small.txt", "two\n")
        #expect(try f.push().status == 0)
        #expect(cached().count == 1, "the small file's old version is kept: \(cached())")

    }
}

extension ManyFilesTests {
    /// A copy of small files the remote already holds goes as chunk lists, its data waiting to be asked for (and
    /// then taken from the remote's own files), though a whole-tree push no longer holds the record whole: the
    /// record is asked by digest.
    @Test func copiesOfSmallFilesGoWithoutTheirData() throws {
        let f = try SyncFixture()
        var generator = SystemRandomNumberGenerator()
        for i in 0..<40 { try f.write("src/f\(i).bin", (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &generator) }) }
        let first = try f.pushInProcess()
        #expect(first.errors.isEmpty && first.bytesSent > 4_000_000, "\(first.errors) \(first.bytesSent)")
        try FileManager.default.copyItem(atPath: f.project + "/src", toPath: f.project + "/copy")
        let copied = try f.pushInProcess()
        #expect(copied.errors.isEmpty && copied.filesChanged == 40, "\(copied.errors) \(copied.filesChanged)")
        #expect(copied.chunksSent == 0 && copied.bytesSent < 200_000, "the copies' data went over the link: \(copied.bytesSent) bytes")
        #expect(f.read("copy/f7.bin", in: f.remoteProject) == f.read("src/f7.bin"))
    }
}

extension ManyFilesTests {
    /// A file replaced by a directory that the rules now exclude, with one file in it brought back by an
    /// exception: the record's file is a parent of what is sent, though the walk never passes it (excluded), and
    /// it is cleared first so that the file below it can be placed.
    @Test func aFileBecomingAnExcludedDirectoryWithAnExceptionIsClearedFirst() throws {
        let f = try SyncFixture()
        try f.write("data", "a file at first\n")
        try f.write("src/a.py", "a\n")
        #expect(try f.pushInProcess().errors.isEmpty)
        try FileManager.default.removeItem(atPath: f.project + "/data")
        try f.write("data/keep.txt", "kept\n")
        try f.write("data/noise.bin", "noise\n")
        try f.write(".syncignore", "data\n!data/keep.txt\n")
        let pushed = try f.pushInProcess()
        #expect(pushed.errors.isEmpty && pushed.conflicts == 0, "\(pushed.errors) \(pushed.conflictList)")
        #expect(f.read("data/keep.txt", in: f.remoteProject) == Array("kept\n".utf8))
        #expect(f.read("data/noise.bin", in: f.remoteProject) == nil)
    }
}

/// The agent's records as an index on disk (issue 29): what it does with a state left by an older agent, a damaged
/// index and one made by a newer agent.
extension ManyFilesTests {
    /// The rows of the agent's record index, read the way any SQLite reader would.
    static func recordedPaths(_ f: SyncFixture) throws -> [String] {
        let queue = try DatabaseQueue(path: f.remoteProject + "/.syncd/records.db")
        return try queue.read { db in
            try Data.fetchAll(db, sql: "SELECT path FROM records ORDER BY path").map { String(decoding: $0, as: UTF8.self) }
        }
    }

    /// One record in the framing of agents before 0.16: length, then tag 1, the path, the stat, digest and chunks.
    static func olderRecord(_ path: String, in root: String) throws -> [UInt8] {
        var st = stat()
        #expect(lstat(root + "/" + path, &st) == 0)
        let content = Array(FileManager.default.contents(atPath: root + "/" + path) ?? Data())
        var w = PayloadWriter()
        w.u8(1)
        w.byteString(Array(path.utf8))
        w.u64(UInt64(st.st_dev)); w.u64(UInt64(st.st_ino)); w.u32(UInt32(st.st_mode & 0o7777)); w.u64(UInt64(st.st_size))
        w.i64(Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec))
        w.i64(Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec))
        w.id(ChunkID(hashing: content))
        w.u32(1)
        w.id(ChunkID(hashing: content)); w.u32(UInt32(content.count))
        return framed(w.bytes)
    }

    static func framed(_ payload: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt32(payload.count).littleEndian) { Array($0) } + payload
    }

    /// A project last served by an agent before 0.16 has `state` and `journal` and no index: the records are
    /// read into the index once (the journal's removal after the state's record wins, a torn tail is dropped)
    /// and the old files removed.
    @Test func anOlderAgentsStateIsReadIntoTheIndexOnce() throws {
        let f = try SyncFixture()
        for name in ["a.txt", "b.txt", "c.txt"] { try f.write(name, "\(name)\n") }
        #expect(try f.push().status == 0)
        let syncd = f.remoteProject + "/.syncd/"
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: syncd + "records.db" + suffix) }
        let state = Array("SYNCDST2".utf8) + (try Self.olderRecord("a.txt", in: f.remoteProject)) + (try Self.olderRecord("b.txt", in: f.remoteProject))
        var removal = PayloadWriter()
        removal.u8(2)
        removal.byteString(Array("b.txt".utf8))
        let journal = Self.framed(removal.bytes) + (try Self.olderRecord("c.txt", in: f.remoteProject)) + [9, 0, 0]
        #expect(FileManager.default.createFile(atPath: syncd + "state", contents: Data(state)))
        #expect(FileManager.default.createFile(atPath: syncd + "journal", contents: Data(journal)))

        try f.write("d.txt", "new\n")
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(!FileManager.default.fileExists(atPath: syncd + "state") && !FileManager.default.fileExists(atPath: syncd + "journal"))
        #expect(try Self.recordedPaths(f) == ["a.txt", "c.txt", "d.txt"])
    }

    /// An index a disk damaged is kept aside under another name and made again: the push goes on, hashing.
    @Test func aDamagedIndexIsSetAsideAndMadeAgain() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "a\n")
        #expect(try f.push().status == 0)
        let index = f.remoteProject + "/.syncd/records.db"
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: index + suffix) }
        #expect(FileManager.default.createFile(atPath: index, contents: Data(repeating: 0x5a, count: 8192)))

        try f.write("b.txt", "b\n")
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(edit.stderr.contains("records.db is damaged"), "\(edit.stderr)")
        #expect(FileManager.default.contents(atPath: index + ".damaged") == Data(repeating: 0x5a, count: 8192))
        #expect(try Self.recordedPaths(f) == ["b.txt"])
    }

    /// An index made by a newer agent (a larger schema version) is neither read nor written: the push hashes.
    @Test func aNewerAgentsIndexIsLeftAlone() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "a\n")
        #expect(try f.push().status == 0)
        let before = try Self.recordedPaths(f)
        #expect(before.contains("a.txt"))
        let queue = try DatabaseQueue(path: f.remoteProject + "/.syncd/records.db")
        try queue.writeWithoutTransaction { try $0.execute(sql: "PRAGMA user_version = 99") }
        try queue.close()

        try f.write("b.txt", "b\n")
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(edit.stderr.contains("made by a newer syncd-agent"), "\(edit.stderr)")
        #expect(try Self.recordedPaths(f) == before)
        #expect(f.read("b.txt", in: f.remoteProject) == Array("b\n".utf8))
    }
}

extension ManyFilesTests {
    /// After an append, only the chunk keys past the part both versions share are rewritten; every chunk of the
    /// new version is still found by its key: a copy of it goes without its data, and a copy of a chunk the
    /// append replaced is not served from where it no longer is.
    @Test func anAppendedFilesChunksAreAllStillFound() throws {
        let f = try SyncFixture()
        var generator = SystemRandomNumberGenerator()
        func random(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) } }
        let head = random(6 << 20)
        try f.write("big.bin", head)
        #expect(try f.pushInProcess().errors.isEmpty)
        try f.write("big.bin", head + random(2 << 20))
        let appended = try f.pushInProcess()
        #expect(appended.errors.isEmpty && appended.bytesSent < 3 << 20, "\(appended.errors) \(appended.bytesSent)")
        try FileManager.default.copyItem(atPath: f.project + "/big.bin", toPath: f.project + "/copy.bin")
        let copied = try f.pushInProcess()
        #expect(copied.errors.isEmpty && copied.chunksSent == 0, "\(copied.errors): \(copied.chunksSent) chunks sent")
        #expect(f.read("copy.bin", in: f.remoteProject) == f.read("big.bin"))
    }
}

/// A push with more changes than a part holds works through the tree in parts, each a session over the same link
/// recorded before the next is walked (issue 29): the laptop holds one part at a time, whatever the file count.
extension ManyFilesTests {
    /// Names that sort around the slash, so that parts end between a directory's entry, its neighbours and what is
    /// below it.
    static let partTree = ["a/1", "a/2/x", "a.txt", "a-b/3", "a0/4", "b/5", "b/6", "b.txt", "c/7/8/9", "c/10", "d", "e/11", "z"]

    @Test func aFirstPushInPartsPlacesEverythingOnce() throws {
        let f = try SyncFixture()
        for (i, path) in Self.partTree.enumerated() { try f.write(path, "file \(i)\n") }
        let first = try f.pushInProcess(partSize: 3)
        #expect(first.errors.isEmpty && first.conflicts == 0, "\(first.errors) \(first.conflictList)")
        let files = Self.partTree.count + 1  // and syncd.yaml
        #expect(first.filesChanged == files && first.filesScanned == files + 9, "\(first.filesChanged) \(first.filesScanned)")
        #expect(first.firstPush?.files == files, "the first-push summary counts every part: \(String(describing: first.firstPush))")
        let (same, why) = f.treesMatch()
        #expect(same, "\(why)")
        let again = try f.pushInProcess(partSize: 3)
        #expect(again.errors.isEmpty && again.filesChanged == 0 && again.filesDeleted == 0, "every part was recorded: \(again.filesChanged)")
        // The same over the agent as a process of its own: its sessions follow one another on one connection.
        try f.write("a/2/x", "over a process\n")
        try f.write("z", "over a process\n")
        let overProcess = PushSession(project: try Project(directory: f.project, options: SyncOptions(stateDirectory: f.state, progress: false)))
        overProcess.partSize = 1
        let spawned = try overProcess.run()
        #expect(spawned.errors.isEmpty && spawned.filesChanged == 2, "\(spawned.errors) \(spawned.filesChanged)")
        #expect(f.read("z", in: f.remoteProject) == Array("over a process\n".utf8))
        // An edit in each of several parts, and a file deleted.
        for path in ["a/2/x", "b.txt", "e/11"] { try f.write(path, "edited \(path)\n") }
        try FileManager.default.removeItem(atPath: f.project + "/c/10")
        let edit = try f.pushInProcess(partSize: 1)
        #expect(edit.errors.isEmpty && edit.filesChanged == 3 && edit.filesDeleted == 1, "\(edit.errors) \(edit.filesChanged) \(edit.filesDeleted)")
        #expect(f.treesMatch().0)
    }

    /// A deleted directory and what the record has below it go in the same part, even when a changed neighbour
    /// (`a.txt`, between `a` and `a/`) fills the part: the remote deletes a directory only once it is empty, and
    /// took one split from its files for a directory holding files created there (a conflict). The same for a
    /// directory replaced by a file.
    @Test func aPartDoesNotEndBetweenADeletedDirectoryAndItsFiles() throws {
        let f = try SyncFixture()
        for (i, path) in Self.partTree.enumerated() { try f.write(path, "file \(i)\n") }
        #expect(try f.pushInProcess().errors.isEmpty)
        try FileManager.default.removeItem(atPath: f.project + "/a")
        try f.write("a.txt", "changed\n")
        try FileManager.default.removeItem(atPath: f.project + "/b")
        try f.write("b", "a file where a directory was\n")
        try f.write("b.txt", "changed too\n")
        let pushed = try f.pushInProcess(partSize: 1)
        #expect(pushed.errors.isEmpty && pushed.conflicts == 0, "\(pushed.errors) \(pushed.conflictList)")
        #expect(pushed.filesDeleted == 7, "a, a/1, a/2, a/2/x; b/5, b/6 and b's directory, replaced: \(pushed.filesDeleted)")
        let (same, why) = f.treesMatch()
        #expect(same, "\(why)")
    }

    /// A push conflict found in an early part stays recorded when the last part clears those a full push no longer
    /// finds.
    @Test func aConflictFoundInAnEarlyPartStaysRecorded() throws {
        let f = try SyncFixture()
        for (i, path) in Self.partTree.enumerated() { try f.write(path, "file \(i)\n") }
        #expect(try f.pushInProcess().errors.isEmpty)
        try f.write("a/1", "here\n")
        try f.write("a/1", "there\n", in: f.remoteProject)
        try f.write("z", "changed\n")
        let pushed = try f.pushInProcess(partSize: 1)
        #expect(pushed.conflictPaths.map(\.description) == ["a/1"], "\(pushed.conflictList)")
        #expect(try f.openInProcess().openState().conflicts().map(\.path.description) == ["a/1"])
        #expect(f.read("z", in: f.remoteProject) == Array("changed\n".utf8))
    }
}

extension ManyFilesTests {
    /// A deleted dataset goes in parts too: the record's paths gone here count toward a part, which may end among
    /// them, and each directory waits for the part that deletes the last of its files (the remote deletes only an
    /// empty one). One part held every delete before.
    @Test func aDeletedTreeIsDeletedInParts() throws {
        let f = try SyncFixture()
        for d in ["a", "b"] { for i in 0..<4 { try f.write("data/\(d)/\(i)", "\(d)\(i)\n") } }
        try f.write("data.txt", "beside it\n")
        try f.write("z", "after it\n")
        #expect(try f.pushInProcess().errors.isEmpty)
        try FileManager.default.removeItem(atPath: f.project + "/data")
        let session = PushSession(project: try f.openInProcess())
        session.partSize = 2
        let pushed = try session.run()
        #expect(pushed.errors.isEmpty && pushed.conflicts == 0, "\(pushed.errors) \(pushed.conflictList)")
        #expect(pushed.filesDeleted == 11, "8 files, data/a, data/b and data: \(pushed.filesDeleted)")
        #expect(session.parts >= 5, "the deletes went in parts of 2: \(session.parts)")
        #expect(!FileManager.default.fileExists(atPath: f.remoteProject + "/data"))
        let (same, why) = f.treesMatch()
        #expect(same, "\(why)")
    }
}

extension ManyFilesTests {
    /// The stat cache's paths, as this machine keeps them for the fixture's project.
    static func cachedPaths(_ f: SyncFixture) throws -> [String] {
        let state = try Project(directory: f.project, options: SyncOptions(stateDirectory: f.state + "/syncd", progress: false)).openState()
        return try state.loadFiles().keys.map(\.description).sorted()
    }

    /// A push forgets the stat-cache rows of files the walk no longer finds, before, between and after the files
    /// it does (a deleted directory, a deleted file, a file replaced by a directory, the last paths), and keeps
    /// those below a pull path, which the walk does not enter and a pull compares with. Before, every file the
    /// project ever had kept its row, and every whole-tree push read past them all.
    @Test func aPushForgetsTheCachedFilesThatAreGone() throws {
        let f = try SyncFixture()
        for name in ["a.txt", "b.txt", "gone/c.txt", "gone/d.txt", "m.txt", "zz.txt"] { try f.write(name, "\(name)\n") }
        #expect(try f.push().status == 0)
        try f.write("output/o.txt", "made there\n", in: f.remoteProject)
        try f.age("output/o.txt")
        let pulled = try f.pull()
        #expect(pulled.status == 0, "\(pulled.stderr)")
        let before = try Self.cachedPaths(f)
        #expect(before == ["a.txt", "b.txt", "gone/c.txt", "gone/d.txt", "m.txt", "output/o.txt", "syncd.yaml", "zz.txt"], "\(before) \(pulled.stdout)")

        try FileManager.default.removeItem(atPath: f.project + "/gone")
        try FileManager.default.removeItem(atPath: f.project + "/b.txt")
        try FileManager.default.removeItem(atPath: f.project + "/m.txt")
        try f.write("m.txt/inside.txt", "now a directory\n")
        try FileManager.default.removeItem(atPath: f.project + "/zz.txt")
        let pushed = try f.push()
        #expect(pushed.status == 0, "\(pushed.stderr)")
        let after = try Self.cachedPaths(f)
        #expect(after == ["a.txt", "m.txt/inside.txt", "output/o.txt", "syncd.yaml"], "\(after)")
        let (same, diff) = f.treesMatch()
        #expect(same, "\(diff)")
    }
}
