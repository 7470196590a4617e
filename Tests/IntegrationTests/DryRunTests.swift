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
        #expect(dry.stdout.contains("would send 2 files") && dry.stdout.contains("delete 1"), "\(dry.stdout)")
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
        // Nothing to list: the summary alone, on stdout (a command's output; stderr is for progress and warnings).
        #expect(after.stdout.split(separator: "\n").count == 1 && after.stdout.contains("up to date"), "\(after.stdout)\(after.stderr)")
    }
}

/// Issue 27, item 3: a first push and `ls --summary` show the totals and where the bytes are; a pull names what it
/// brought back.
struct SummaryTests {
    @Test func firstPushAndLsSummaryShowTheLargestDirectoriesAndAPullNamesItsFiles() throws {
        let f = try SyncFixture()
        try f.write("data/big.bin", randomBytes(300_000, seed: 2711))
        try f.write("src/a.py", "a = 1\n")
        let env = ["XDG_STATE_HOME": f.state]
        let ls = try run(binDirectory() + "/syncctl", ["ls", f.project, "--summary"], env: env)
        #expect(ls.status == 0 && ls.stdout.contains("3 files") && ls.stdout.contains("data/"), "\(ls.stdout)")
        #expect(ls.stdout.split(separator: "\n").dropFirst().first?.hasSuffix("data/") == true, "largest first: \(ls.stdout)")
        let json = try run(binDirectory() + "/syncctl", ["ls", f.project, "--summary", "--json"], env: env)
        #expect(try json.int("files") == 3, "\(json.stdout)")

        let first = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(first.status == 0 && first.stdout.contains("first push: 3 files") && first.stdout.contains("largest: data/"), "\(first.stdout)")
        try f.write("src/a.py", "a = 2\n")
        let second = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(!second.stdout.contains("first push"), "\(second.stdout)")
        #expect(second.stdout.contains("push: 1 changed") && second.stdout.contains("; in \(f.remoteProject)"), "\(second.stdout)")
        let noop = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(noop.stdout.contains("push: up to date") && noop.stderr.isEmpty, "\(noop.stdout)\(noop.stderr)")

        try f.write("output/run1.log", "loss 0.1\n", in: f.remoteProject)
        try f.age("output/run1.log", in: f.remoteProject)
        let pull = try run(binDirectory() + "/syncctl", ["pull", f.project], env: env)
        #expect(pull.status == 0 && pull.stdout.contains("received output/run1.log"), "\(pull.stdout)")
        #expect(pull.stdout.contains("pull: 1 received") && pull.stdout.contains("1/1 chunk fetched"), "\(pull.stdout)")
    }
}
