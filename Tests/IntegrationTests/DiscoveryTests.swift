import Foundation
import Testing

/// Issue 27, item 4: every command run inside a project's subdirectory finds the nearest syncd.yaml above it, as
/// git finds its repository; `init` inside a project refuses without --force.
struct DiscoveryTests {
    @Test func commandsFindTheProjectFromASubdirectory() throws {
        let f = try SyncFixture()
        try f.write("src/deep/model.py", "w = 1\n")
        let deep = f.project + "/src/deep"
        let env = ["XDG_STATE_HOME": f.state]
        let push = try run(binDirectory() + "/syncctl", ["push", "--json"], env: env, cwd: deep)
        #expect(push.status == 0, "\(push.stderr)")
        #expect(f.read("src/deep/model.py", in: f.remoteProject) == Array("w = 1\n".utf8), "the project's root was not pushed")
        let listed = try run(binDirectory() + "/syncctl", ["ls"], env: env, cwd: deep)
        #expect(listed.status == 0 && listed.stdout.contains("src/deep/model.py"), "\(listed.stdout)\(listed.stderr)")

        // Outside any project: the error says where it looked.
        let outside = NSTemporaryDirectory() + "syncd-noproject-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
        let none = try run(binDirectory() + "/syncctl", ["ls"], env: env, cwd: outside)
        #expect(none.status == 2 && none.stderr.contains("or any directory above it"), "\(none.stderr)")

        // init inside the project refuses, naming it; --force makes a project of its own there.
        let refused = try run(binDirectory() + "/syncctl", ["init", deep, "--remote", "local:" + f.base + "/elsewhere"], env: env)
        #expect(refused.status == 2 && refused.stderr.contains("inside the project at \(f.project)"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: deep + "/syncd.yaml"))
        let forced = try run(binDirectory() + "/syncctl", ["init", deep, "--remote", "local:" + f.base + "/elsewhere", "--force"], env: env)
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(FileManager.default.fileExists(atPath: deep + "/syncd.yaml"))
    }
}
