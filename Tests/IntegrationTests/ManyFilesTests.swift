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
