import Foundation
import SyncConfig
import Testing

struct SSHConfigTests {
    func write(_ text: String, _ name: String = "config") throws -> (String, String) {
        let dir = NSTemporaryDirectory() + "syncd-sshcfg-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir + "/.ssh", withIntermediateDirectories: true)
        try text.write(toFile: dir + "/.ssh/" + name, atomically: true, encoding: .utf8)
        return (dir + "/.ssh/" + name, dir)
    }

    @Test func firstValueWinsAndPatterns() throws {
        let (path, home) = try write("""
            Host gpu-box
              HostName 10.0.0.5
              User ubuntu
              IdentityFile ~/.ssh/gpu_key
            Host gpu-* !gpu-test
              Port 2222
              User nobody
              StrictHostKeyChecking accept-new
            Host *
              Port 22
              IdentityFile ~/.ssh/id_ed25519
              ServerAliveInterval 30
              SomeFutureKeyword yes
            """)
        let s = try SSHConfigFile(path: path, home: home).settings(for: "gpu-box")
        #expect(s.hostName == "10.0.0.5")
        #expect(s.user == "ubuntu")
        #expect(s.port == 2222)
        #expect(s.identityFiles == [home + "/.ssh/gpu_key", home + "/.ssh/id_ed25519"])
        #expect(s.strictHostKeyChecking == "accept-new")
        #expect(s.serverAliveIntervalSeconds == 30)
        let negated = try SSHConfigFile(path: path, home: home).settings(for: "gpu-test")
        #expect(negated.port == 22)
        #expect(negated.strictHostKeyChecking == "yes")
    }

    @Test func destinationOverridesUserAndPort() throws {
        let (path, home) = try write("Host box\n  User ubuntu\n  Port 2200\n")
        let s = try SSHConfigFile(path: path, home: home).settings(for: "root@box:2301")
        #expect(s.user == "root")
        #expect(s.port == 2301)
        let v6 = try SSHDestination(parsing: "me@[::1]:2022")
        #expect(v6.host == "::1")
        #expect(v6.port == 2022)
        #expect(v6.user == "me")
        #expect(throws: ConfigError.self) { try SSHDestination(parsing: "host:notaport") }
    }

    @Test func includeIsRelativeToDotSSHAndKeepsOrder() throws {
        let (path, home) = try write("Include conf.d/*.conf\nHost *\n  User fallback\n")
        try FileManager.default.createDirectory(atPath: home + "/.ssh/conf.d", withIntermediateDirectories: true)
        try "Host lab\n  HostName 127.0.0.1\n  User labuser\n".write(toFile: home + "/.ssh/conf.d/lab.conf", atomically: true, encoding: .utf8)
        let s = try SSHConfigFile(path: path, home: home).settings(for: "lab")
        #expect(s.hostName == "127.0.0.1")
        #expect(s.user == "labuser")
        #expect(try SSHConfigFile(path: path, home: home).settings(for: "other").user == "fallback")
    }

    @Test func badPortNamesFileAndLine() throws {
        let (path, home) = try write("Host x\n  Port eighty\n")
        do {
            _ = try SSHConfigFile(path: path, home: home).settings(for: "x")
            Issue.record("accepted a bad port")
        } catch {
            #expect("\(error)".contains(path + ":2"))
        }
    }
}
