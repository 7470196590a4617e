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

/// Issue 26, item 2: numbers in ssh_config too large for the calls that take them are errors naming the file and
/// line (ConnectTimeout 2147484 once overflowed an Int32 in every connection).
struct SSHConfigNumberTests {
    @Test func hugeNumbersAreErrorsNamingTheLine() throws {
        for (keyword, value) in [("ConnectTimeout", "2147484"), ("ServerAliveInterval", "99999999999999999999"), ("ServerAliveCountMax", "-1"),
                                 ("Port", "70000")] {
            let (path, home) = try SSHConfigTests().write("Host gpu\n  \(keyword) \(value)\n")
            do {
                _ = try SSHConfigFile(path: path, home: home).settings(for: "gpu")
                Issue.record("\(keyword) \(value) was accepted")
            } catch let e as ConfigError {
                #expect("\(e)".contains("\(path):2"), "\(e)")
            }
        }
    }
}

/// Issue 26, item 1: what syncd does not implement of the user's policy is an error naming it, never dropped.
struct SSHConfigPolicyTests {
    @Test func unimplementedConnectionKeywordsAreErrorsNamingFileAndLine() throws {
        for (line, keyword) in [("Match host gpu", "Match"), ("ProxyUseFdpass yes", "proxyusefdpass"), ("HostKeyAlias other", "hostkeyalias"),
                                ("Ciphers aes256-gcm@openssh.com", "ciphers"), ("BindAddress 10.0.0.1", "bindaddress")] {
            let (path, home) = try SSHConfigTests().write("Host gpu\n  User me\n\(line.hasPrefix("Match") ? "" : "  ")\(line)\n")
            do {
                _ = try SSHConfigFile(path: path, home: home).settings(for: "gpu")
                Issue.record("\(line) was dropped in silence")
            } catch let e as ConfigError {
                #expect("\(e)".contains("\(path):3") && "\(e)".contains(keyword), "\(e)")
            }
        }
        // Values that change nothing, and keywords that do not change where the connection goes, are fine.
        let (path, home) = try SSHConfigTests().write("Host gpu\n  ProxyUseFdpass no\n  ForwardAgent yes\n  ControlMaster auto\n")
        _ = try SSHConfigFile(path: path, home: home).settings(for: "gpu")
    }

    @Test func proxySettingsAndTokens() throws {
        let (path, home) = try SSHConfigTests().write("""
            Host gpu
              HostName 10.0.0.5
              User me
              Port 2200
              IdentitiesOnly yes
              ProxyCommand nc -X connect -x proxy:3128 %h %p # %r %n %%
            Host inner
              ProxyJump bastion,ops@jump2:2222
            Host bastion
              HostName 192.0.2.1
              ProxyJump outer
            Host direct
              ProxyJump none
              ProxyCommand ssh -W %h:%p other
            """)
        let config = try SSHConfigFile(path: path, home: home)
        let gpu = try config.settings(for: "gpu")
        #expect(gpu.identitiesOnly)
        #expect(gpu.proxyCommand == "nc -X connect -x proxy:3128 10.0.0.5 2200 # me gpu %", "\(gpu.proxyCommand ?? "")")
        let inner = try config.settings(for: "inner")
        #expect(inner.jumps.map(\.hostName) == ["192.0.2.1", "jump2"])
        #expect(inner.jumps[0].jumps.map(\.hostName) == ["outer"], "the first hop keeps its own ProxyJump")
        #expect(inner.jumps[1].user == "ops" && inner.jumps[1].port == 2222)
        // `none` is a first value too: what follows does not apply.
        let direct = try config.settings(for: "direct")
        #expect(direct.proxyCommand == nil && direct.jumps.isEmpty)
        // The command as written, quotes and all (sh reads them): AWS's SSM recipe.
        let (ssm, ssmHome) = try SSHConfigTests().write("Host i-*\n  ProxyCommand sh -c \"aws ssm start-session --target %h --parameters 'portNumber=%p'\"\n")
        #expect(try SSHConfigFile(path: ssm, home: ssmHome).settings(for: "i-0abc").proxyCommand
                == "sh -c \"aws ssm start-session --target i-0abc --parameters 'portNumber=22'\"")
        // A destination a shell would interpret never reaches one.
        let (any, anyHome) = try SSHConfigTests().write("Host *\n  ProxyCommand nc %h %p\n")
        for hostile in ["a$(touch${IFS}x)", "b;id", "-oProxyCommand=x", "u`id`@h"] {
            #expect(throws: ConfigError.self, "\(hostile)") { try SSHConfigFile(path: any, home: anyHome).settings(for: hostile) }
        }
        // A token syncd does not know is an error.
        let (bad, badHome) = try SSHConfigTests().write("Host gpu\n  ProxyCommand connect %z\n")
        #expect(throws: ConfigError.self) { try SSHConfigFile(path: bad, home: badHome).settings(for: "gpu") }
    }
}
