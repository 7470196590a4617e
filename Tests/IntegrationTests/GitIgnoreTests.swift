import Foundation
import Testing

/// Issue 27, item 2: `gitignore: true` applies git's rules to what a push sends (never to what a pull brings
/// back), `include:` sends what they exclude, `init` in a repository sets it up, and `ls --why` names the rule.
struct GitIgnoreTests {
    /// Files in every shape gitignore(5) describes, and ignore files that exercise each rule.
    static let files = [
        "a.log", "keep.log", "dir/b.log", "dir/keep.log", "build", "src/build/out.o", "top-only.txt", "src/top-only.txt",
        "data/important.csv", "data/x.bin", "docs/a/b/c.tmp", "docs/c.tmp", "docs/c.txt", "bx.bin", "ax.bin", "#hash",
        "trailing ", "m.pyc", "m.py", "cache/f", "src/cache", "foo/bar", "foo/a/b/bar", "foo/barn", "sub/x.csv",
        "sub/sub-keep.csv", "sub/local.txt", "sub/d/local.txt", "sub/nested/f", "sub/d/nested/f", "secret.key",
        "src/secret.key", "sub/d/x.csv", "sub/d/again.log", "sub/d/.gitignore", "Weird[1].txt", "deep/one/two/three.md",
        "x/abz", "x/a/q/z", "x.bak",
    ]
    static let rootIgnore = """
        # comment
        *.log
        !keep.log
        build/
        /top-only.txt
        data/
        !data/important.csv
        docs/**/*.tmp
        [!a]x.bin
        \\#hash
        trailing\\ 
        *.py[co]
        cache
        foo/**/bar
        Weird\\[1\\].txt
        deep/*/two
        x/a**z
        [[:space:]]*.bak

        """
    static let subIgnore = """
        *.csv
        !sub-keep.csv
        /local.txt
        nested/
        """
    static let deeperIgnore = "!x.csv\n!again.log\n"

    /// Builds the repository in `f.project`; returns what git itself says a push should send: the files git
    /// neither tracks nor ignores (`git ls-files --others --exclude-standard`), all of them here.
    func makeRepository(_ f: SyncFixture) throws -> Set<String> {
        for name in Self.files { try f.write(name, "x") }
        try f.write(".gitignore", Self.rootIgnore)
        try f.write("sub/.gitignore", Self.subIgnore)
        try f.write("sub/d/.gitignore", Self.deeperIgnore)
        let git = try run("/usr/bin/git", ["init", "-q", f.project])
        #expect(git.status == 0, "\(git.stderr)")
        try "secret.key\n".write(toFile: f.project + "/.git/info/exclude", atomically: true, encoding: .utf8)
        // git alone, without this machine's global excludes (which syncd does not read).
        let isolated = ["HOME": f.base, "XDG_CONFIG_HOME": f.base + "/xdg", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"]
        let listed = try run("/usr/bin/git", ["-C", f.project, "ls-files", "-z", "--others", "--exclude-standard"], env: isolated)
        #expect(listed.status == 0, "\(listed.stderr)")
        return Set(listed.stdout.split(separator: "\0").map(String.init))
    }

    /// The files (not directories) `syncctl ls` lists.
    func listedFiles(_ f: SyncFixture) throws -> Set<String> {
        let r = try f.syncctl(["ls", f.project, "--print0"])
        #expect(r.status == 0, "\(r.stderr)")
        var isDirectory: ObjCBool = false
        return Set(r.stdout.split(separator: "\0").map(String.init).filter {
            FileManager.default.fileExists(atPath: f.project + "/" + $0, isDirectory: &isDirectory) && !isDirectory.boolValue
        })
    }

    @Test func aPushSendsWhatGitWouldTrack() throws {
        let f = try SyncFixture()
        let expected = try makeRepository(f)
        // Without the setting, everything goes, as before.
        let before = try listedFiles(f)
        #expect(before.isSuperset(of: Set(Self.files)), "\(Set(Self.files).subtracting(before))")

        try f.addSetting("gitignore: true")
        let listed = try listedFiles(f)
        let extra = listed.subtracting(expected).sorted(), missing = expected.subtracting(listed).sorted()
        #expect(listed == expected, "sent but git ignores: \(extra); git keeps but not sent: \(missing)")
        // The rules this table is about, spelled out, so that a git that changed would not silently pass it.
        for path in ["a.log", "data/important.csv", "src/build/out.o", "sub/nested/f", "secret.key", "docs/c.tmp", "bx.bin",
                     "trailing ", "#hash", "Weird[1].txt", "deep/one/two/three.md", "foo/a/b/bar", "x/abz"] {
            #expect(!listed.contains(path), "\(path) was to be ignored")
        }
        for path in ["keep.log", "build", "src/top-only.txt", "ax.bin", "sub/sub-keep.csv", "sub/d/x.csv", "sub/d/local.txt",
                     "sub/d/again.log", "foo/barn", "m.py", ".gitignore", "x/a/q/z", "x.bak"] {
            #expect(listed.contains(path), "\(path) was to be sent")
        }

        // The line git reads and syncd cannot (a POSIX class) is not passed over in silence.
        let ls = try f.syncctl(["ls", f.project])
        #expect(ls.stderr.contains("warning: .gitignore:18: `[[:space:]]*.bak`") && ls.stderr.contains("passed over"), "\(ls.stderr)")

        let push = try f.push()
        #expect(push.status == 0, "\(push.stderr)")
        #expect(f.read("keep.log", in: f.remoteProject) != nil)
        #expect(f.read("a.log", in: f.remoteProject) == nil && f.read("data/x.bin", in: f.remoteProject) == nil)
    }

    @Test func includeSendsAGitignoredDatasetAndWhyNamesTheRule() throws {
        let f = try SyncFixture()
        _ = try makeRepository(f)
        try f.addSetting("gitignore: true")
        try f.addSetting("include: [data, \"sub/**/*.csv\"]")
        let listed = try listedFiles(f)
        for path in ["data/important.csv", "data/x.bin", "sub/x.csv"] { #expect(listed.contains(path), "\(path) was to be included") }
        #expect(!listed.contains("a.log") && !listed.contains("sub/nested/f"))

        let why = try run(binDirectory() + "/syncctl", ["ls", "--why", "a.log", "--why", "data/x.bin", "--why", "sub/nested/f",
                                                         "--why", "keep.log", "--why", "output/x", "--why", "m.py"],
                          env: ["XDG_STATE_HOME": f.state], cwd: f.project)
        #expect(why.status == 0, "\(why.stderr)")
        let lines = why.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 6, "\(why.stdout)")
        guard lines.count == 6 else { return }
        #expect(lines[0].hasPrefix("a.log: not sent") && lines[0].contains(".gitignore:2") && lines[0].contains("`*.log`"), "\(lines[0])")
        #expect(lines[1].hasPrefix("data/x.bin: sent") && lines[1].contains("include[0]"), "\(lines[1])")
        #expect(lines[2].hasPrefix("sub/nested/f: not sent") && lines[2].contains("sub/.gitignore:4")
                && lines[2].contains("sub/nested/ is ignored"), "\(lines[2])")
        #expect(lines[3].hasPrefix("keep.log: sent") && lines[3].contains("re-included by .gitignore:3"), "\(lines[3])")
        #expect(lines[4].hasPrefix("output/x: not sent") && lines[4].contains("pull path"), "\(lines[4])")
        #expect(lines[5].hasPrefix("m.py: sent") && lines[5].contains("no ignore rule"), "\(lines[5])")

        // From a subdirectory, PATH is relative to it.
        let inSub = try run(binDirectory() + "/syncctl", ["ls", "--why", "x.csv"], env: ["XDG_STATE_HOME": f.state],
                            cwd: f.project + "/sub")
        #expect(inSub.status == 0 && inSub.stdout.hasPrefix("sub/x.csv: sent"), "\(inSub.stdout)\(inSub.stderr)")
    }

    /// git's rules decide what a push sends, never what a pull brings back: a gitignored `output/` still comes back,
    /// and a push with git's rules does not delete it on the remote.
    @Test func aGitignoredOutputIsStillPulled() throws {
        let f = try SyncFixture()
        try f.write("train.py", "print(1)\n")
        try f.write(".gitignore", "output/\ncheckpoint/\n*.tmp\n")
        try f.addSetting("gitignore: true")
        #expect(try f.push().status == 0)
        try f.write("output/result.txt", "0.93\n", in: f.remoteProject)
        try f.write("output/run.tmp", "scratch\n", in: f.remoteProject)
        try f.age("output/result.txt", in: f.remoteProject)
        try f.age("output/run.tmp", in: f.remoteProject)
        let pull = try f.pull()
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(f.read("output/result.txt") == Array("0.93\n".utf8))
        #expect(f.read("output/run.tmp") == Array("scratch\n".utf8), "git's *.tmp kept a pulled file from coming back")
        // A second pull sees the local copies as its own and changes nothing; a push leaves them alone on the remote.
        let again = try f.pull()
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try f.push().status == 0)
        #expect(f.read("output/result.txt", in: f.remoteProject) == Array("0.93\n".utf8))
        // Deleted there and unchanged here: the pull deletes the local copy, which it must see to do so.
        try FileManager.default.removeItem(atPath: f.remoteProject + "/output/run.tmp")
        let deleted = try f.pull()
        #expect(deleted.status == 0, "\(deleted.stderr)")
        #expect(f.read("output/run.tmp") == nil, "a gitignored pulled file deleted on the remote stayed here")
        // The local copy counts in the three-way check: edited on both sides is a conflict, and nothing is lost.
        try f.write("output/result.txt", "0.95 (edited here)\n")
        try f.write("output/result.txt", "0.97 (rerun there)\n", in: f.remoteProject)
        try f.age("output/result.txt", in: f.remoteProject)
        let both = try f.pull()
        let conflicts = (try? both.json())?["conflicts"]
        #expect((conflicts as? Int) == 1 || (conflicts as? [Any])?.count == 1, "\(both.stdout)")
        let kept = try FileManager.default.contentsOfDirectory(atPath: f.project + "/output").compactMap { f.read("output/" + $0) }
        #expect(kept.contains(Array("0.95 (edited here)\n".utf8)), "the local edit of a pulled file was lost")
    }

    @Test func initInARepositorySetsGitignoreAndIncludesData() throws {
        let base = NSTemporaryDirectory() + "syncd-gitinit-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let project = base + "/repo"
        try FileManager.default.createDirectory(atPath: project + "/.venv/lib", withIntermediateDirectories: true)
        #expect(try run("/usr/bin/git", ["init", "-q", project]).status == 0)
        func write(_ path: String, _ bytes: Int) throws {
            try FileManager.default.createDirectory(atPath: ((project + "/" + path) as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            try Data(repeating: 7, count: bytes).write(to: URL(fileURLWithPath: project + "/" + path))
        }
        try write(".gitignore", 0)
        try ".venv/\nwandb/\ndata/\noutput/\n*.log\n".write(toFile: project + "/.gitignore", atomically: true, encoding: .utf8)
        try write(".venv/pyvenv.cfg", 10)
        try write(".venv/lib/torch.so", 300_000)
        try write("wandb/run-1/events", 20_000)
        try write("data/train/0001.jpg", 50_000)
        try write("output/model.pt", 1000)
        try write("train.log", 100)
        try write("train.py", 100)
        let state = base + "/state"
        let r = try run(binDirectory() + "/syncctl", ["init", project, "--remote", "local:" + base + "/remote"],
                        env: ["XDG_STATE_HOME": state], cwd: base)
        #expect(r.status == 0, "\(r.stderr)")
        let config = try String(contentsOfFile: project + "/syncd.yaml", encoding: .utf8)
        #expect(config.contains("gitignore: true") && config.contains("include: [data]"), "\(config)")
        #expect(r.stdout.contains(".venv/") && r.stdout.contains("wandb/") && r.stdout.contains("train.log"), "\(r.stdout)")
        #expect(!r.stdout.contains("output"), "a pull path was reported as left out: \(r.stdout)")
        #expect(r.stdout.contains("data/") && r.stdout.contains("include:"), "\(r.stdout)")
        // Largest first.
        let venv = r.stdout.range(of: ".venv/"), wandb = r.stdout.range(of: "wandb/")
        #expect(venv != nil && wandb != nil && venv!.lowerBound < wandb!.lowerBound, "\(r.stdout)")

        let listed = try run(binDirectory() + "/syncctl", ["ls"], env: ["XDG_STATE_HOME": state], cwd: project)
        #expect(listed.stdout.contains("data/train/0001.jpg") && listed.stdout.contains("train.py"), "\(listed.stdout)")
        #expect(!listed.stdout.contains(".venv") && !listed.stdout.contains("train.log"), "\(listed.stdout)")

        // --no-gitignore leaves git's rules out.
        let plain = try run(binDirectory() + "/syncctl", ["init", project, "--remote", "local:" + base + "/remote", "--force", "--no-gitignore"],
                            env: ["XDG_STATE_HOME": state], cwd: base)
        #expect(plain.status == 0, "\(plain.stderr)")
        #expect(!(try String(contentsOfFile: project + "/syncd.yaml", encoding: .utf8)).contains("gitignore"))
    }

    /// A directory pushed before git's `dir/` rule applied is left on the remote (and said so), not planned for a
    /// delete that leaves its files and reads as a conflict on every push.
    @Test func aDirectoryPushedBeforeADirRuleIsLeftAlone() throws {
        let f = try SyncFixture()
        try f.write("build/out.o", "o")
        try f.write("src/a.py", "a")
        #expect(try f.push().status == 0)
        try f.write(".gitignore", "build/\n")
        try f.addSetting("gitignore: true")
        let r = try f.push()
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(try r.count("conflicts") == 0, "\(r.stdout)")
        let left = (try r.json()["left_ignored"] as? [String]) ?? []
        #expect(Set(left) == ["build", "build/out.o"], "\(r.stdout)")
        #expect(f.read("build/out.o", in: f.remoteProject) != nil)
        let again = try f.push()
        let remaining = try again.count("conflicts")
        #expect(again.status == 0 && remaining == 0, "\(again.stdout)")
    }

    /// A project in a subdirectory of a repository: the repository's `.gitignore` and `info/exclude` apply below it,
    /// and a project inside a directory git ignores is warned about.
    @Test func aProjectInsideARepositoryFollowsTheRulesAboveIt() throws {
        let base = NSTemporaryDirectory() + "syncd-gitsub-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let repo = base + "/repo"
        #expect(try run("/usr/bin/git", ["init", "-q", repo]).status == 0)
        try "*.log\nml/local.tmp\nscratch/\n".write(toFile: repo + "/.gitignore", atomically: true, encoding: .utf8)
        try "*.secret\n".write(toFile: repo + "/.git/info/exclude", atomically: true, encoding: .utf8)
        for (dir, files) in [("ml", ["train.py", "run.log", "local.tmp", "key.secret"]), ("scratch/exp", ["x.py"])] {
            try FileManager.default.createDirectory(atPath: repo + "/" + dir, withIntermediateDirectories: true)
            for name in files { try "x".write(toFile: repo + "/" + dir + "/" + name, atomically: true, encoding: .utf8) }
        }
        let state = base + "/state"
        let env = ["XDG_STATE_HOME": state]
        // Through a symlink to the checkout, as ~/proj -> /data/repo/ml would be.
        try FileManager.default.createSymbolicLink(atPath: base + "/link", withDestinationPath: repo + "/ml")
        for (project, expected) in [(base + "/link", ["syncd.yaml", "train.py"]), (repo + "/scratch/exp", ["syncd.yaml", "x.py"])] {
            let initialized = try run(binDirectory() + "/syncctl", ["init", project, "--remote", "local:" + base + "/remote"], env: env)
            #expect(initialized.status == 0, "\(initialized.stderr)")
            let config = try String(contentsOfFile: project + "/syncd.yaml", encoding: .utf8)
            #expect(config.contains("gitignore: true"))
            let ls = try run(binDirectory() + "/syncctl", ["ls", project], env: env)
            #expect(ls.stdout.split(separator: "\n").map(String.init).sorted() == expected, "\(project): \(ls.stdout)")
            if project.hasSuffix("exp") {
                #expect(ls.stderr.contains("scratch/: git ignores this directory, which holds the project"), "\(ls.stderr)")
            }
        }
    }

    /// A `.gitignore` above the project that cannot be read (here over 1 MiB) is named in a warning, not passed
    /// over in silence: its rules do not apply, and the user learns why a file it ignores is sent.
    @Test func anOuterGitignoreThatCannotBeReadIsSaid() throws {
        let base = NSTemporaryDirectory() + "syncd-gitbig-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let repo = base + "/repo"
        #expect(try run("/usr/bin/git", ["init", "-q", repo]).status == 0)
        try ("*.log\n" + String(repeating: "# padding\n", count: 120_000)).write(toFile: repo + "/.gitignore", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: repo + "/ml", withIntermediateDirectories: true)
        for name in ["train.py", "run.log"] { try "x".write(toFile: repo + "/ml/" + name, atomically: true, encoding: .utf8) }
        let env = ["XDG_STATE_HOME": base + "/state"]
        #expect(try run(binDirectory() + "/syncctl", ["init", repo + "/ml", "--remote", "local:" + base + "/remote"], env: env).status == 0)
        let ls = try run(binDirectory() + "/syncctl", ["ls", repo + "/ml"], env: env)
        #expect(ls.stdout.split(separator: "\n").map(String.init).sorted() == ["run.log", "syncd.yaml", "train.py"], "\(ls.stdout)")
        #expect(ls.stderr.contains(repo + "/.gitignore") && ls.stderr.contains("not read, so git's rules in it do not apply"), "\(ls.stderr)")
    }

    /// The daemon follows git's rules from outside what it watches too: an edit of the repository's
    /// `info/exclude` (in `.git`, which is never watched) is seen before the next push, so the file it now
    /// excludes, made right after, stays here.
    @Test func theDaemonFollowsAnEditedInfoExclude() throws {
        let f = try SyncFixture()
        #expect(try run("/usr/bin/git", ["init", "-q", f.project]).status == 0)
        try f.write("src/a.py", "a = 1\n")
        try f.addSetting("gitignore: true")
        let daemon = try TestDaemon(f)
        defer { withExtendedLifetime(daemon) {} }
        #expect(eventually(seconds: 20) { f.read("src/a.py", in: f.remoteProject) != nil }, "\((try? String(contentsOfFile: daemon.log, encoding: .utf8)) ?? "")")
        try "*.log\n".write(toFile: f.project + "/.git/info/exclude", atomically: false, encoding: .utf8)
        try f.write("src/train.log", "loss 0.1\n")
        try f.write("src/b.py", "b = 2\n")
        // (Generous bounds: the daemon's pushes share two cores with the whole test run.)
        let log = { (try? String(contentsOfFile: daemon.log, encoding: .utf8)) ?? "" }
        #expect(eventually(seconds: 60) { f.read("src/b.py", in: f.remoteProject) != nil }, "\(log())")
        let waited = try daemon.ctl(["push", "--wait", f.project])
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(f.read("src/train.log", in: f.remoteProject) == nil, "the daemon pushed what the edited info/exclude excludes: \(log())")

        // And with nothing else changed, the edit alone is seen within seconds: a file it no longer excludes goes.
        try "".write(toFile: f.project + "/.git/info/exclude", atomically: false, encoding: .utf8)
        #expect(eventually(seconds: 60) { f.read("src/train.log", in: f.remoteProject) != nil }, "info/exclude emptied, not seen: \(log())")
    }

    /// The daemon reads git's rules again when a `.gitignore` changes: a file the new rule ignores stays here.
    @Test func theDaemonFollowsAnEditedGitignore() throws {
        let f = try SyncFixture()
        try f.write("src/a.py", "a = 1\n")
        try f.addSetting("gitignore: true")
        let daemon = try TestDaemon(f)
        defer { withExtendedLifetime(daemon) {} }
        #expect(eventually(seconds: 20) { f.read("src/a.py", in: f.remoteProject) != nil }, "\((try? String(contentsOfFile: daemon.log, encoding: .utf8)) ?? "")")
        try f.write("src/.gitignore", "*.log\n")
        #expect(eventually(seconds: 20) { f.read("src/.gitignore", in: f.remoteProject) != nil })
        try f.write("src/train.log", "loss 0.1\n")
        try f.write("src/b.py", "b = 2\n")
        #expect(eventually(seconds: 20) { f.read("src/b.py", in: f.remoteProject) != nil })
        let waited = try daemon.ctl(["push", "--wait", f.project])
        #expect(waited.status == 0, "\(waited.stderr)")
        #expect(f.read("src/train.log", in: f.remoteProject) == nil, "the daemon pushed what the edited .gitignore ignores")
    }
}
