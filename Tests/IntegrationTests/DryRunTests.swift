import Foundation
import Testing

/// Issue 27, item 3: see before sending. `push --dry-run` changes nothing on either side and lists what a push
/// would do with rsync's itemize codes; `push -i` lists what it did.
struct DryRunTests {
    @Test func aDryRunListsWhatAPushWouldDoAndChangesNothing() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        try f.write("src/b.py", "b = 1\n")
        try f.write("data/w.bin", randomBytes(50_000, seed: 2701))
        #expect(try f.push().status == 0)
        try f.write("src/a.py", "a = 2  # longer\n")
        try f.write("src/new.py", "n = 1\n")
        try FileManager.default.removeItem(atPath: f.project + "/src/b.py")
        try f.write("data/w.bin", randomBytes(50_000, seed: 2701))  // rewritten, same bytes: not a change
        let env = ["XDG_STATE_HOME": f.state]
        let stateBefore = SyncFixture.describeTree(f.state)
        let remoteBefore = SyncFixture.describeTree(f.remoteProject)

        let dry = try run(binDirectory() + "/syncctl", ["push", f.project, "--dry-run"], env: env)
        #expect(dry.status == 0, "\(dry.stderr)")
        let lines = Set(dry.stdout.split(separator: "\n").map(String.init))
        #expect(lines.contains(">f.st...... src/a.py"), "\(dry.stdout)")
        #expect(lines.contains(">f+++++++++ src/new.py"), "\(dry.stdout)")
        #expect(lines.contains("*deleting   src/b.py"), "\(dry.stdout)")
        #expect(lines.contains(".f..t...... data/w.bin"), "a file rewritten as it was is an attribute change: \(dry.stdout)")
        #expect(dry.stderr.contains("would send 2 files") && dry.stderr.contains("delete 1"), "\(dry.stderr)")
        #expect(SyncFixture.describeTree(f.remoteProject) == remoteBefore, "the dry run changed the remote")
        #expect(SyncFixture.describeTree(f.state).keys == stateBefore.keys, "the dry run made local state")

        let json = try run(binDirectory() + "/syncctl", ["push", f.project, "-n", "--json"], env: env)
        #expect(try json.int("files_to_send") == 2 && json.int("deletions") == 1, "\(json.stdout)")

        // The push itself, itemized: what it did, in the same codes.
        let push = try run(binDirectory() + "/syncctl", ["push", f.project, "-i"], env: env)
        #expect(push.status == 0, "\(push.stderr)")
        let done = Set(push.stdout.split(separator: "\n").map(String.init))
        #expect(done.isSuperset(of: [">f.st...... src/a.py", ">f+++++++++ src/new.py", "*deleting   src/b.py"]), "\(push.stdout)")
        let after = try run(binDirectory() + "/syncctl", ["push", f.project, "-n"], env: env)
        #expect(after.stdout.isEmpty && after.stderr.contains("up to date"), "\(after.stdout)\(after.stderr)")
    }
}
