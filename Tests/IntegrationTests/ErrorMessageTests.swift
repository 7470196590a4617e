import Foundation
import SyncConfig
import Testing

/// Issue 27, item 7: errors that finish the job: libssh2's failures in words, the command that records an unknown
/// host key, the ssh_config that was read, and "did you mean" for a mistyped setting.
@Suite(.serialized, .enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
struct ErrorMessageTests {
    @Test func connectionErrorsSayWhatIsWrongAndWhatToDo() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "a\n")
        let http = loopbackListener(answer: Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".utf8))
        defer { shutdown(http.fd, Int32(SHUT_RDWR)); close(http.fd) }
        let silent = loopbackListener(answer: nil)
        defer { close(silent.fd) }
        let config = f.base + "/ssh_config"
        try """
            Host web
              HostName 127.0.0.1
              Port \(http.port)
            Host mute
              HostName 127.0.0.1
              Port \(silent.port)
              ConnectTimeout 2
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let web = try f.sshctl(["push", f.project, "--remote", "web", "--ssh-config", config])
        #expect(web.status == 1 && web.stderr.contains("does not speak SSH") && web.stderr.contains("127.0.0.1:\(http.port)"), "\(web.stderr)")
        let mute = try f.sshctl(["push", f.project, "--remote", "mute", "--ssh-config", config])
        #expect(mute.status == 1 && mute.stderr.contains("no SSH greeting") && mute.stderr.contains("ConnectTimeout"), "\(mute.stderr)")
        let nowhere = try f.sshctl(["push", f.project, "--remote", "gpu-typo.invalid", "--ssh-config", config])
        #expect(nowhere.stderr.contains(config), "the ssh_config read is named: \(nowhere.stderr)")

        // An unknown host key: the command that records it, with its port and file.
        let sshd = try SSHServer()
        let strict = f.base + "/strict_config"
        try sshd.sshConfig(alias: "gpu-test", strict: "yes").write(toFile: strict, atomically: true, encoding: .utf8)
        let unknown = try f.sshctl(["push", f.project, "--remote", "gpu-test", "--ssh-config", strict])
        #expect(unknown.status == 1 && unknown.stderr.contains("ssh-keyscan -p \(sshd.port) 127.0.0.1 >> \(sshd.knownHosts)"), "\(unknown.stderr)")
    }

    @Test func aMistypedSettingSuggestsTheRightOne() throws {
        for (typo, right) in [("pul", "pull"), ("remote_rot", "remote_root"), ("hots", "hosts")] {
            do {
                _ = try ProjectConfig.parse("name: p\nremote: gpu\n\(typo): x\n", file: "syncd.yaml", directoryName: "p")
                Issue.record("\(typo) was accepted")
            } catch let e as ConfigError {
                #expect("\(e)".contains("did you mean '\(right)'?"), "\(e)")
            }
        }
    }
}

/// Issue 27, item 7: the agent's message printed once, no "run again to resume" where a retry cannot help, and a
/// pull from a remote nothing was pushed to says so and makes nothing there.
struct AgentErrorTests {
    @Test func whatTheAgentRefusesIsSaidOnceWithoutAFalsePromise() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "a\n")
        let rootFile = f.base + "/rootfile"
        try "not a directory\n".write(toFile: rootFile, atomically: true, encoding: .utf8)
        let env = ["XDG_STATE_HOME": f.state]
        let push = try run(binDirectory() + "/syncctl", ["push", f.project, "--remote", "local:" + rootFile], env: env)
        #expect(push.status == 1)
        let mentions = push.stderr.components(separatedBy: "Not a directory").count - 1
        #expect(mentions == 1, "the agent's message was printed \(mentions) times: \(push.stderr)")
        #expect(!push.stderr.contains("run the push again to resume") && push.stderr.contains("mend that, then push again"), "\(push.stderr)")

        let never = f.base + "/never"
        let pull = try run(binDirectory() + "/syncctl", ["pull", f.project, "--remote", "local:" + never], env: env)
        #expect(pull.status == 1 && pull.stderr.contains("nothing has been pushed"), "\(pull.stderr)")
        #expect(!FileManager.default.fileExists(atPath: never + "/" + f.name), "the pull made the project on the remote")
    }

    /// A remote root that is not there is made, and the push says so once (a typo in remote_root shows).
    @Test func aRemoteRootThatWasMadeIsNamed() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "a\n")
        let env = ["XDG_STATE_HOME": f.state]
        let typo = f.base + "/scratch/mee"
        let first = try run(binDirectory() + "/syncctl", ["push", f.project, "--remote", "local:" + typo], env: env)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stderr.contains("warning: the remote root \(typo) did not exist") && first.stderr.contains("fix remote_root"),
                "\(first.stderr)")
        #expect(f.read("a.txt", in: typo + "/" + f.name) == Array("a\n".utf8))
        try f.write("b.txt", "b\n")
        let second = try run(binDirectory() + "/syncctl", ["push", f.project, "--remote", "local:" + typo], env: env)
        #expect(second.status == 0 && !second.stderr.contains("did not exist"), "\(second.stderr)")
        // The fixture's own remote root existed: no warning there.
        let usual = try f.push()
        #expect(!usual.stderr.contains("did not exist"), "\(usual.stderr)")
    }
}

/// A loopback listener that never accepts (connections complete in the kernel's backlog, and nothing ever answers),
/// or with `answer`, one that writes it to each connection and closes it.
func loopbackListener(answer: [UInt8]?, backlog: Int32 = 8) -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    listen(fd, backlog)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    if let answer {
        let thread = Thread {
            for _ in 0..<4 {
                let client = accept(fd, nil, nil)
                if client < 0 { return }
                _ = answer.withUnsafeBytes { write(client, $0.baseAddress, $0.count) }
                close(client)
            }
        }
        thread.start()
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
