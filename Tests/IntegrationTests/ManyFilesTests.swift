import Foundation
import Testing

/// What keeps a push of a project with millions of files in step with its changes rather than its size (issue 29).
@Suite(.serialized)
struct ManyFilesTests {
    /// The agent reads its records of the project's files only once an operation needs them: a no-op push reads
    /// none. Shown with a state file that cannot be read at all (a directory in its place): a no-op push does not
    /// notice, and a push with a change reads it, says it cannot, and goes on by hashing (the records are a
    /// cache). Read at the hello, as before, it failed every session.
    @Test func aNoOpPushDoesNotReadTheAgentsRecords() throws {
        let f = try SyncFixture()
        for i in 0..<20 { try f.write("src/m\(i).py", "x = \(i)\n") }
        let first = try f.push()
        #expect(first.status == 0, "\(first.stderr)")
        let state = f.remoteProject + "/.syncd/state"
        try? FileManager.default.removeItem(atPath: state)
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false)

        let noop = try f.push()
        #expect(noop.status == 0, "\(noop.stderr)")
        #expect(try noop.stats().filesChanged == 0)
        #expect(!noop.stderr.contains("state"), "the records were read: \(noop.stderr)")

        try f.write("src/m3.py", "x = 'changed'\n")
        let edit = try f.push()
        #expect(edit.status == 0, "\(edit.stderr)")
        #expect(try edit.stats().filesChanged == 1)
        #expect(edit.stderr.contains("cannot read the project's state"), "\(edit.stderr)")
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
