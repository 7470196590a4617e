import Foundation
import SyncSystem
import Testing

/// Issue 26, item 1: the user's SSH policy is honoured, never bypassed. `ProxyJump` was ignored: with the
/// bastion down `ssh gpu-inner` failed while `syncctl push` went straight to the inner host.
@Suite(.serialized, .enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
struct ProxyTests {
    static func hostBlock(_ alias: String, _ server: SSHServer, port: Int? = nil, key: String? = nil, extra: String = "") -> String {
        """
        Host \(alias)
          HostName 127.0.0.1
          Port \(port ?? server.port)
          User root
          IdentityFile \(key ?? server.clientKey)
          UserKnownHostsFile \(server.knownHosts)
          StrictHostKeyChecking accept-new
        \(extra)
        """
    }

    @Test func aPushThroughABastionGoesThroughItAndFailsWithoutIt() throws {
        let bastion = try SSHServer()
        let inner = try SSHServer()
        let f = try SyncFixture()
        // The bastion is reached through a byte counter: what went through it is counted outside syncd.
        let counter = try CountingProxy(target: bastion.port, directory: f.base)
        let config = Self.hostBlock("bastion", bastion, port: counter.port) + "\n"
            + Self.hostBlock("gpu-inner", inner, extra: "  ProxyJump bastion")
        _ = try f.useSSH(inner, config: config, alias: "gpu-inner")
        let weights = randomBytes(2 << 20, seed: 2601)
        try f.write("data/weights.bin", weights)

        let push = try f.sshctl(["push", f.project, "--json"])
        #expect(push.status == 0, "\(push.stderr)")
        #expect(f.read("data/weights.bin", in: f.remoteProject) == weights ? true : false, "the file did not arrive")
        #expect(counter.upBytes() > 2 << 20, "the push did not go through the bastion: \(counter.upBytes()) bytes crossed it")
        // The inner host's key was checked (and recorded) like the bastion's.
        let known = (try? String(contentsOfFile: inner.knownHosts, encoding: .utf8)) ?? ""
        #expect(known.contains("[127.0.0.1]:\(inner.port)"), "\(known)")

        // A pull brings 24 MB back through the jump: more than the socket pair that carries it holds at once, so
        // the jump's copy waits on it without holding up the session that reads it. One pump thread runs both
        // (`SYNCD_SSH_PUMPS=1`, as on a one-core machine), and ends both.
        let outputs = randomBytes(24 << 20, seed: 2602)
        try FileManager.default.createDirectory(atPath: f.remoteProject + "/output", withIntermediateDirectories: true)
        try Data(outputs).write(to: URL(fileURLWithPath: f.remoteProject + "/output/run.bin"))
        // Finished a minute ago (a pull leaves a file that is still being written).
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-60)], ofItemAtPath: f.remoteProject + "/output/run.bin")
        let pull = try f.sshctl(["pull", f.project, "--json"], env: ["SYNCD_SSH_PUMPS": "1"])
        #expect(pull.status == 0, "\(pull.stderr)")
        #expect(f.read("output/run.bin") == outputs ? true : false, "the output did not come back whole: \(pull.stdout)")

        // The bastion down: the push fails, naming it, rather than going around it.
        bastion.stop()
        try f.write("src/edit.py", "x = 1\n")
        let down = try f.sshctl(["push", f.project])
        #expect(down.status != 0, "the push went around a bastion that is down: \(down.stderr)")
        #expect(f.read("src/edit.py", in: f.remoteProject) == nil)
    }

    /// A chain of two jumps, given as `user@host:port` (no Host block for the second).
    @Test func aChainOfJumpsWithUserHostPort() throws {
        let first = try SSHServer()
        let second = try SSHServer()
        let inner = try SSHServer()
        // One key for all three, so the second hop needs no Host block of its own.
        try FileManager.default.removeItem(atPath: second.dir + "/authorized_keys")
        try FileManager.default.copyItem(atPath: first.clientKey + ".pub", toPath: second.dir + "/authorized_keys")
        let f = try SyncFixture()
        let counter = try CountingProxy(target: first.port, directory: f.base)
        let config = Self.hostBlock("first", first, port: counter.port) + "\n" + """
            Host 127.0.0.1
              IdentityFile \(first.clientKey)
              UserKnownHostsFile \(first.knownHosts)
              StrictHostKeyChecking accept-new
            """ + "\n" + Self.hostBlock("gpu-inner", inner, extra: "  ProxyJump first,root@127.0.0.1:\(second.port)")
        _ = try f.useSSH(inner, config: config, alias: "gpu-inner")
        try f.write("a.txt", "through two hops\n")
        let push = try f.sshctl(["push", f.project])
        #expect(push.status == 0, "\(push.stderr)")
        #expect(f.read("a.txt", in: f.remoteProject) == Array("through two hops\n".utf8))
        #expect(counter.upBytes() > 10_000, "the push did not go through the first hop")
    }

    @Test func aProxyCommandRunningSSHW() throws {
        let bastion = try SSHServer()
        let inner = try SSHServer()
        let f = try SyncFixture()
        let command = "ssh -q -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=\(bastion.knownHosts) "
            + "-i \(bastion.clientKey) -p \(bastion.port) -W %h:%p root@127.0.0.1"
        _ = try f.useSSH(inner, config: Self.hostBlock("gpu-inner", inner, extra: "  ProxyCommand \(command)"), alias: "gpu-inner")
        try f.write("src/train.py", "lr = 1\n")
        let push = try f.sshctl(["push", f.project])
        #expect(push.status == 0, "\(push.stderr)")
        #expect(f.read("src/train.py", in: f.remoteProject) == Array("lr = 1\n".utf8))

        // The bastion down: the ProxyCommand fails, and so does the push.
        bastion.stop()
        try f.write("src/train.py", "lr = 2\n")
        let down = try f.sshctl(["push", f.project])
        #expect(down.status != 0, "\(down.stderr)")
    }

    /// IdentitiesOnly: the agent's keys that are not one of the identity files are not offered.
    @Test func identitiesOnlyKeepsTheAgentsOtherKeysOut() throws {
        let inner = try SSHServer()
        let f = try SyncFixture()
        let other = f.base + "/other_key"
        try SSHServer.keygen(other)  // not authorized on the server
        let socketPath = f.base + "/agent.sock"
        let agent = try spawnProcess(["/usr/bin/ssh-agent", "-D", "-a", socketPath], stdin: .null, stdout: .null, stderr: .null)
        defer { kill(agent, SIGKILL); _ = waitForExit(agent) }  // ssh-agent -D does not leave on SIGTERM
        #expect(eventually(seconds: 10) { FileManager.default.fileExists(atPath: socketPath) })
        let added = try run("/usr/bin/ssh-add", [inner.clientKey], env: ["SSH_AUTH_SOCK": socketPath])
        #expect(added.status == 0, "\(added.stderr)")
        let env = ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": socketPath]
        try f.write("a.txt", "a\n")

        // Without IdentitiesOnly the agent's key gets in; with it, only other_key is tried, and refused.
        _ = try f.useSSH(inner, config: Self.hostBlock("gpu-inner", inner, key: other), alias: "gpu-inner")
        let open = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(open.status == 0, "\(open.stderr)")
        _ = try f.useSSH(inner, config: Self.hostBlock("gpu-inner", inner, key: other, extra: "  IdentitiesOnly yes"), alias: "gpu-inner")
        try f.write("a.txt", "b\n")
        let only = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(only.status != 0, "a key that is not an identity file was offered: \(only.stderr)")
        #expect(only.stderr.contains("IdentitiesOnly"), "\(only.stderr)")
    }
}
