import Foundation
import SyncConfig
import SyncSystem
import Testing

struct ConfigAndPathTests {
    @Test func parsesAFullConfig() throws {
        let c = try ProjectConfig.parse("""
            name: object-tracking
            remote: ubuntu@gpu-box:2222
            remote_root: /home/ubuntu
            pull: [output, checkpoint/, ./logs]
            ignore: ["*.tmp"]
            """, file: "syncd.yaml", directoryName: "dir")
        #expect(c.name == "object-tracking")
        #expect(c.remote == .ssh(destination: "ubuntu@gpu-box:2222"))
        #expect(c.pull == ["output", "checkpoint", "logs"])
        #expect(c.ignore == ["*.tmp"])
        let d = try ProjectConfig.parse("remote: local:/srv/x\n", file: "syncd.yaml", directoryName: "dir")
        #expect(d.name == "dir")
        #expect(d.pull == ["output", "checkpoint"])
        #expect(d.remote == .local(root: "/srv/x"))
    }

    @Test(arguments: [
        ("remote: x\npul: [a]\n", "unknown setting 'pul'"),
        ("name: x\n", "'remote' is missing"),
        ("remote: local:relative\n", "absolute path"),
        ("remote: x\npull: [../up]\n", "'pull'"),
        ("remote: x\nname: a/b\n", "'name'"),
        ("remote: x\nremote_root: home\n", "'remote_root'"),
        ("remote: [x\n", "not valid YAML"),
        ("remote: x\npull_from: some\n", "'pull_from' must be first or all"),
        ("hosts: swarm:m\n", "several hosts need a store"),
        ("hosts: gpu-1\nstore: s3://b/p\n", "swarm:MANAGER"),
        ("hosts: [local:/a/gpu, local:/b/gpu]\nstore: s3://b/p\npull_from: all\n", "two hosts share a name"),
    ])
    func badConfigsNameTheSetting(text: String, expected: String) {
        do {
            _ = try ProjectConfig.parse(text, file: "syncd.yaml", directoryName: "d")
            Issue.record("accepted: \(text)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
            #expect("\(error)".contains("syncd.yaml"))
        }
    }

    @Test func initWritesWhatParses() throws {
        var c = ProjectConfig(name: "my proj", remote: .local(root: "/tmp/r x"), remoteRoot: nil)
        c.ignore = ["*.tmp", "!keep"]
        let back = try ProjectConfig.parse(c.yaml(), file: "f", directoryName: "d")
        #expect(back == c)
    }

    @Test(arguments: ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "a\u{0}b"])
    func relativePathRefuses(path: String) {
        #expect(throws: PathError.self) { try RelativePath(path) }
    }

    @Test func hostsAndAStore() throws {
        let c = try ProjectConfig.parse("hosts: [gpu-1, \"ubuntu@10.0.0.7:2222\", local:/srv/x]\nstore: s3://team/syncd\nendpoint: http://127.0.0.1:8333\n",
                                        file: "f", directoryName: "d")
        #expect(c.allHosts.map(\.description) == ["gpu-1", "ubuntu@10.0.0.7:2222", "local:/srv/x"])
        #expect(c.remote.description == "gpu-1", "pulls come from the first host")
        #expect(c.store == "s3://team/syncd" && c.endpoint == "http://127.0.0.1:8333")
        let rooted = try ProjectConfig.parse("hosts: [{host: gpu-1, remote_root: /data/a}, gpu-2]\nremote_root: /srv\nstore: s3://t/s\n",
                                             file: "f", directoryName: "d")
        #expect(rooted.allHosts.map(\.description) == ["gpu-1", "gpu-2"] && rooted.hostRoots == ["gpu-1": "/data/a"] && rooted.remoteRoot == "/srv")
        for (text, says) in [("hosts: [a, b]\n", "need a store"), ("hosts: [a, a]\nstore: s3://b\n", "twice"),
                             ("remote: x\nhosts: [y]\n", "disagree"), ("remote: x\nendpoint: http://e\n", "needs store"),
                             ("remote: x\nstore: https://b\n", "s3://BUCKET/PREFIX"), ("hosts: []\n", "empty"),
                             ("remote: x\nstore: s3://b\nendpoint: e.com\n", "http:// or https://"),
                             ("hosts: [{host: a, remote_root: rel}]\n", "absolute path"), ("hosts: [{host: a, root: /x}]\n", "unknown key 'root'")] {
            #expect(throws: ConfigError.self) { try ProjectConfig.parse(text, file: "f", directoryName: "d") }
            do { _ = try ProjectConfig.parse(text, file: "f", directoryName: "d") } catch {
                #expect("\(error)".contains(says), "\(text): \(error)")
            }
        }
    }

    @Test func symlinkContainment() throws {
        let ab = try RelativePath("a/b")
        #expect(symlinkStaysInside(linkPath: ab, target: Array("c".utf8)))
        #expect(symlinkStaysInside(linkPath: ab, target: Array("../c".utf8)))
        #expect(symlinkStaysInside(linkPath: ab, target: Array("./../c/d".utf8)))
        #expect(symlinkStaysInside(linkPath: try RelativePath("a/b/c"), target: Array("../../x/y".utf8)))
        // `..` after a name goes wherever a link by that name leads: refused, whatever the text adds up to.
        #expect(!symlinkStaysInside(linkPath: ab, target: Array("./x/../../c".utf8)))
        #expect(!symlinkStaysInside(linkPath: ab, target: Array("x/..".utf8)))
        #expect(symlinkEscapes(linkPath: ab, target: Array("x/..".utf8))?.contains("after a name") == true)
        #expect(!symlinkStaysInside(linkPath: ab, target: Array("../../c".utf8)))
        #expect(!symlinkStaysInside(linkPath: ab, target: Array("".utf8)))
        #expect(!symlinkStaysInside(linkPath: ab, target: Array("x/../../../c".utf8)))
        #expect(!symlinkStaysInside(linkPath: try RelativePath("a"), target: Array("/etc/passwd".utf8)))
        #expect(cleanPath("a/./b/../c/") == "a/c")
        #expect(cleanPath("/../x") == "/x")
    }
}

/// Issue 26, item 4: config parsing is bounded. 420 bytes of nested YAML aliases reached 7.4 GB of memory.
struct BoundedConfigTests {
    static let laughs: String = {
        var text = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].enumerated() {
            let previous = i == 0 ? "a" : ["b", "c", "d", "e", "f", "g", "h", "i"][i - 1]
            text += "\(name): &\(name) [" + Array(repeating: "*\(previous)", count: 9).joined(separator: ",") + "]\n"
        }
        return "name: p\nremote: gpu\n" + text + "laughs: *i\n"
    }()

    @Test func aliasesThatExpandPastTheBoundAreRefused() throws {
        #expect(Self.laughs.utf8.count < 1000)
        do {
            _ = try ProjectConfig.parse(Self.laughs, file: "/p/syncd.yaml", directoryName: "p")
            Issue.record("accepted")
        } catch let e as ConfigError {
            #expect("\(e)".hasPrefix("/p/syncd.yaml: ") && "\(e)".contains("refused"), "\(e)")
        }
        // Few aliases that still expand past the bound (4 levels of 9, each level one alias used 9 times over a
        // list of lists), and an alias used as a mapping key (composing hashes keys whole): refused, at once.
        var wide = "a: &a [" + Array(repeating: "[x, x, x, x, x, x, x, x, x, x]", count: 60).joined(separator: ", ") + "]\n"
        wide += "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c]\n"
        #expect(throws: ConfigError.self) { try ProjectConfig.parse(wide, file: "/p/syncd.yaml", directoryName: "p") }
        #expect(throws: ConfigError.self) {
            try ProjectConfig.parse(Self.laughs.replacingOccurrences(of: "laughs: *i\n", with: "? *i\n: 1\n"), file: "/p/syncd.yaml", directoryName: "p")
        }
        // A few aliases, as compose files use them, are fine.
        let dir = NSTemporaryDirectory() + "syncd-compose-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "x-env: &env {A: 1}\nservices:\n  a: {build: ., environment: *env}\n  b: {image: busybox, environment: *env}\n"
            .write(toFile: dir + "/compose.yaml", atomically: true, encoding: .utf8)
        #expect(try ComposeFile.load(directory: dir)?.services.count == 2)
        try ("services:\n  a: {build: .}\n" + Self.laughs.replacingOccurrences(of: "name: p\nremote: gpu\n", with: ""))
            .write(toFile: dir + "/compose.yaml", atomically: true, encoding: .utf8)
        #expect(throws: ConfigError.self) { try ComposeFile.load(directory: dir) }
    }

    @Test func configFilesPastTheSizeCapAreRefusedUnread() throws {
        let dir = NSTemporaryDirectory() + "syncd-big-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try ("name: p\nremote: gpu\n" + String(repeating: "# padding\n", count: 120_000)).write(toFile: dir + "/syncd.yaml", atomically: true, encoding: .utf8)
        do {
            _ = try ProjectConfig.load(projectDirectory: dir)
            Issue.record("accepted")
        } catch let e as ConfigError {
            #expect("\(e)".contains(dir + "/syncd.yaml") && "\(e)".contains("at most"), "\(e)")
        }
        mkfifo(dir + "/fifo", 0o600)
        #expect(throws: ConfigError.self) { try readConfigFile(dir + "/fifo") }
    }
}
