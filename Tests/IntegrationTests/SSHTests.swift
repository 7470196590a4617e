import Foundation
import SSHTransport
import SyncConfig
import Testing
import Wire

@Suite(.serialized, .enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
struct SSHTests {
    @Test func pushAndPullRoundTripOverSSH() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.write("src/train.py", "print('gpu')\n")
        try f.write("data/blob.bin", randomBytes(5_000_000, seed: 41))
        try FileManager.default.createSymbolicLink(atPath: f.project + "/latest", withDestinationPath: "src/train.py")
        let r = try f.sshctl(["push", f.project, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        var (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
        #expect(same, "\(diff)")
        try f.write("output/result.bin", randomBytes(2_000_000, seed: 42), in: f.remoteProject)
        try f.age("output/result.bin")
        let p = try f.sshctl(["pull", f.project, "--json"])
        #expect(p.status == 0, "\(p.stderr)")
        (same, diff) = f.treesMatch(ignoring: ["syncd.yaml"])
        #expect(same, "\(diff)")
        #expect(try p.stats().bytesReceived.asInt > 2_000_000)
    }

    @Test func oddNamesAndPullPathsOverSSH() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try NameBytesTests.makeOddTree(f.project)
        let r = try f.sshctl(["push", f.project, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let local = try findPrint0(f.project, skipping: ["syncd.yaml"])
        #expect(try findPrint0(f.remoteProject, skipping: [".syncd", "output", "checkpoint", "syncd.yaml"]) == local)
        #expect(NameBytesTests.contents(f.remoteProject, local) == NameBytesTests.contents(f.project, local))
        // The pull paths are there, made by the login user, before any container runs.
        for dir in ["output", "checkpoint"] {
            var st = stat()
            #expect(lstat(f.remoteProject + "/" + dir, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR)
            #expect(st.st_uid == getuid())
        }
        try writeFile(in: f.remoteProject + "/output", named: OddNames.latin1, randomBytes(100_000, seed: 9))
        try writeFile(in: f.remoteProject + "/output", named: OddNames.nfd, Array("nfd".utf8))
        #expect(try run("/usr/bin/find", [f.remoteProject + "/output", "-type", "f", "-exec", "touch", "-d", "1 minute ago", "{}", "+"]).status == 0)
        let p = try f.sshctl(["pull", f.project, "--json"])
        #expect(p.status == 0, "\(p.stderr)")
        let there = try findPrint0(f.remoteProject + "/output")
        #expect(there.count == 2)
        #expect(try findPrint0(f.project + "/output") == there)
        #expect(NameBytesTests.contents(f.project + "/output", there) == NameBytesTests.contents(f.remoteProject + "/output", there))
    }

    @Test(.enabled(if: SSHServer.hasIPv6Loopback, "this machine has no ::1"))
    func pushOverIPv6Loopback() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server, config: server.sshConfig(host: "::1"))
        try f.write("src/v6.py", "print('v6')\n")
        let r = try f.sshctl(["push", f.project, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(f.read("src/v6.py", in: f.remoteProject) == Array("print('v6')\n".utf8))
        let known = (try? String(contentsOfFile: server.knownHosts, encoding: .utf8)) ?? ""
        #expect(known.contains("[::1]:\(server.port)"), "the host key is recorded under the v6 address: \(known)")
    }

    @Test func sshConfigAliasWithInclude() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let included = f.base + "/included.conf"
        try server.sshConfig(alias: "gpu-box-7", strict: nil).write(toFile: included, atomically: true, encoding: .utf8)
        let main = """
            # settings for all GPU boxes, first value wins
            Host gpu-* !gpu-box-9
              StrictHostKeyChecking accept-new
              ConnectTimeout 5
            Include \(included)
            Host *
              Port 1
              UnknownKeyword whatever
            """
        try f.useSSH(server, config: main, alias: "gpu-box-7")
        try f.write("a.txt", "via alias")
        let r = try f.sshctl(["push", f.project, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(f.read("a.txt", in: f.remoteProject) == Array("via alias".utf8))
    }

    @Test func unknownHostRefusedThenAcceptedWithAcceptNew() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server, config: server.sshConfig(strict: nil))
        try f.write("a.txt", "x")
        let refused = try f.sshctl(["push", f.project])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("not known"), "\(refused.stderr)")
        #expect(refused.stderr.contains("SHA256:"))
        #expect(!FileManager.default.fileExists(atPath: server.knownHosts))
        try f.useSSH(server, config: server.sshConfig(strict: "accept-new"))
        let accepted = try f.sshctl(["push", f.project])
        #expect(accepted.status == 0, "\(accepted.stderr)")
        let recorded = (try? String(contentsOfFile: server.knownHosts, encoding: .utf8)) ?? ""
        #expect(recorded.contains("[127.0.0.1]:\(server.port) ssh-ed25519"))
        // Now known: strict checking passes too, also once the file is hashed (ssh-keygen -H).
        try f.useSSH(server, config: server.sshConfig(strict: "yes"))
        #expect(try f.sshctl(["push", f.project]).status == 0)
        let hash = try run("/usr/bin/ssh-keygen", ["-H", "-f", server.knownHosts])
        #expect(hash.status == 0, "\(hash.stderr)")
        let hashed = (try? String(contentsOfFile: server.knownHosts, encoding: .utf8)) ?? ""
        #expect(hashed.hasPrefix("|1|"))
        let strict = try f.sshctl(["push", f.project])
        #expect(strict.status == 0, "\(strict.stderr)")
        try server.changeHostKey()
        let changed = try f.sshctl(["push", f.project])
        #expect(changed.status == 1)
        #expect(changed.stderr.contains(server.knownHosts + ":1"), "\(changed.stderr)")
    }

    @Test func changedHostKeyIsAlwaysRefused() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.write("a.txt", "x")
        #expect(try f.sshctl(["push", f.project]).status == 0)
        try server.changeHostKey()
        let r = try f.sshctl(["push", f.project])
        #expect(r.status == 1)
        #expect(r.stderr.contains("HAS CHANGED"), "\(r.stderr)")
        #expect(r.stderr.contains("SHA256:"))
        #expect(r.stderr.contains(server.knownHosts + ":1"), "names the known_hosts file and line")
    }

    @Test func wrongKeyIsRefused() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let stranger = f.base + "/stranger"
        try SSHServer.keygen(stranger)
        try f.useSSH(server, config: server.sshConfig(key: stranger))
        try f.write("a.txt", "x")
        let r = try f.sshctl(["push", f.project])
        #expect(r.status == 1)
        #expect(r.stderr.contains("authentication as root"), "\(r.stderr)")
        #expect(r.stderr.contains(stranger))
    }

    @Test func agentIsDeployedAndVerified() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.write("a.txt", "x")
        #expect(try f.sshctl(["push", f.project]).status == 0)
        let installDir = server.home + "/.local/lib/syncd"
        let digest = try SSHAgentConnection.digest(ofFile: agentForSSH)
        let installed = installDir + "/agent-" + digest
        #expect(FileManager.default.isExecutableFile(atPath: installed))
        try FileManager.default.removeItem(atPath: installDir)
        try f.write("b.txt", "y")
        #expect(try f.sshctl(["push", f.project]).status == 0)
        #expect(FileManager.default.isExecutableFile(atPath: installed), "the agent is back")
        #expect(try SSHAgentConnection.digest(ofFile: installed) == digest)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: installDir).filter { $0.hasPrefix(".agent-") }
        #expect(leftovers.isEmpty)

        // A damaged agent (bytes appended) refuses to serve; it is replaced and the push goes through.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: installed))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("damage".utf8))
        try handle.close()
        try f.write("c.txt", "z")
        let repaired = try f.sshctl(["push", f.project])
        #expect(repaired.status == 0, "\(repaired.stderr)")
        #expect(repaired.stderr.contains("damaged or replaced"), "\(repaired.stderr)")
        #expect(try SSHAgentConnection.digest(ofFile: installed) == digest)
        #expect(f.read("c.txt", in: f.remoteProject) == Array("z".utf8))
    }

    /// The client computes AES-CTR keystream 4 KiB at a time under libssh2 (CSSHCipher): both ways, through
    /// rekeys (sshd rekeys every 1 MB here, so each direction gets new cipher contexts many times), the bytes
    /// arrive as sent, with the batching on and with it turned off.
    @Test func bytesSurviveRekeysWithAndWithoutKeystreamBatching() throws {
        let server = try SSHServer(extraConfig: "RekeyLimit 1M")
        for batching in ["1", "0"] {
            let f = try SyncFixture()
            try f.useSSH(server)
            let data = randomBytes(24 << 20, seed: batching == "1" ? 5 : 6)
            try f.write("data/blob.bin", data)
            let pushed = try pushThenPull(f, env: ["SYNCD_SSH_CIPHER_BATCH": batching], pushing: ("data/blob.bin", data),
                                          pulling: ("output/result.bin", randomBytes(24 << 20, seed: batching == "1" ? 7 : 8)),
                                          what: "batching \(batching)")
            #expect(pushed.stderr.contains("CTR keystream batched: \(batching == "1" ? "yes" : "no")"), "\(pushed.stderr.prefix(2000))")
        }
    }

    /// Pushes the project (which holds `pushing`) over SSH with tracing on, checks the file arrived, then writes
    /// `pulling` on the remote, pulls and checks it came back. Returns the push's result for its trace.
    private func pushThenPull(_ f: SyncFixture, env extra: [String: String], pushing: (path: String, bytes: [UInt8]),
                              pulling: (path: String, bytes: [UInt8]), what: String) throws -> RunResult {
        let env = ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": "", "SYNCD_TRACE": "1"]
            .merging(extra) { $1 }
        let pushed = try run(binDirectory() + "/syncctl", ["push", f.project], env: env)
        #expect(pushed.status == 0, "\(pushed.stderr)")
        #expect(f.read(pushing.path, in: f.remoteProject) == pushing.bytes, "push, \(what)")
        try f.write(pulling.path, pulling.bytes, in: f.remoteProject)
        try f.age(pulling.path)
        let pulled = try run(binDirectory() + "/syncctl", ["pull", f.project], env: env)
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(f.read(pulling.path) == pulling.bytes, "pull, \(what)")
        return pushed
    }

    /// `compress: auto` weighs zlib against the link for bulk data (the trace says what it chose), `always` does
    /// not; either way compressible files arrive as they were, both ways.
    @Test func compressionSettingsAllDeliverTheSameBytes() throws {
        let server = try SSHServer()
        for (setting, seed) in [("auto", UInt64(11)), ("always", 12), ("never", 13)] {
            let f = try SyncFixture()
            try f.useSSH(server)
            try f.addSetting("compress: \(setting)")
            // Digits, commas and newlines from random bytes: zlib shrinks it to about half.
            func csv(_ bytes: Int, seed: UInt64) -> [UInt8] {
                randomBytes(bytes, seed: seed).enumerated().map { i, b in
                    i % 32 == 31 ? 0x0A : i % 8 == 7 ? 0x2C : 0x30 + b % 10
                }
            }
            let data = csv(6 << 20, seed: seed)
            try f.write("data/metrics.csv", data)
            let pushed = try pushThenPull(f, env: [:], pushing: ("data/metrics.csv", data),
                                          pulling: ("output/log.csv", csv(6 << 20, seed: seed + 100)), what: "compress: \(setting)")
            #expect(pushed.stderr.contains("for bulk data (zlib ") == (setting == "auto"), "compress: \(setting): \(pushed.stderr.suffix(1500))")
        }
    }

    /// Where no agent is installed, the shell answers and ends; a greeting written after that fails, and the
    /// answer is still read: the agent is installed and started, and it speaks.
    @Test func agentIsInstalledWhenTheShellEndsBeforeTheGreeting() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let config = try f.useSSH(server)
        let settings = try SSHConfigFile(path: config, home: f.base).settings(for: "gpu-test")
        let greetings = Counter()
        let connection = try SSHAgentConnection(settings: settings, options: SSHOptions(identity: nil, knownHosts: nil, home: f.base),
                                                agentBinary: agentForSSH, greeting: { _ in
                                                    greetings.add()
                                                    usleep(700_000)  // the shell of the first try is gone by now
                                                    return clientHandshake()
                                                })
        #expect(connection.installedAgent)
        #expect(greetings.value == 2, "one greeting per exec channel")
        #expect(try FrameReader(connection.stream).readHandshake() == wireVersion)
        connection.terminate()
    }

    /// A stream's window follows the round trip: loopback gets OpenSSH's 2 MiB (sshd then holds no more than that
    /// for a reader slower than the command), a long link up to 16 MiB, so that the window never caps it below
    /// 400 MB/s; a round trip nobody could measure keeps 16 MiB.
    @Test func streamWindowFollowsTheRoundTrip() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let config = try f.useSSH(server)
        let settings = try SSHConfigFile(path: config, home: f.base).settings(for: "gpu-test")
        let session = try SSHSession(settings: settings, options: SSHOptions(identity: nil, knownHosts: nil, home: f.base))
        let rtt = try #require(session.tcpRoundTripSeconds(), "the kernel gave no round trip for a connected socket")
        #expect(rtt > 0 && rtt < 0.005, "loopback round trip \(rtt) s")
        #expect(SSHSession.receiveWindow(roundTripSeconds: rtt) == 2 << 20)
        #expect(SSHSession.receiveWindow(roundTripSeconds: 0.010) == 4_000_000)
        #expect(SSHSession.receiveWindow(roundTripSeconds: 0.050) == 16 << 20)
        #expect(SSHSession.receiveWindow(roundTripSeconds: 2.0) == 16 << 20)
        #expect(SSHSession.receiveWindow(roundTripSeconds: nil) == 16 << 20)
        #expect(SSHSession.receiveWindow(roundTripSeconds: .nan) == 16 << 20)
    }

    @Test func connectionFailuresHaveClearMessages() throws {
        let f = try SyncFixture()
        try f.write("a.txt", "x")
        // Nobody listening.
        let closedPort = try SSHServer.freePort()
        try "Host dead\n  HostName 127.0.0.1\n  Port \(closedPort)\n".write(toFile: f.base + "/dead.conf", atomically: true, encoding: .utf8)
        var r = try f.sshctl(["push", f.project, "--remote", "dead", "--ssh-config", f.base + "/dead.conf"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("refused"), "\(r.stderr)")
        // Something listening that never speaks SSH: the handshake times out after ConnectTimeout.
        let silent = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(silent) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(silent, $0, len) == 0 && listen(silent, 4) == 0 && getsockname(silent, $0, &len) == 0 }
        }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        try "Host mute\n  HostName 127.0.0.1\n  Port \(port)\n  ConnectTimeout 2\n".write(toFile: f.base + "/mute.conf", atomically: true, encoding: .utf8)
        let started = Date()
        r = try f.sshctl(["push", f.project, "--remote", "mute", "--ssh-config", f.base + "/mute.conf"])
        #expect(r.status == 1)
        #expect(r.stderr.lowercased().contains("timed out") || r.stderr.lowercased().contains("timeout"), "\(r.stderr)")
        #expect(Date().timeIntervalSince(started) < 30)
        // A host name that does not resolve.
        r = try f.sshctl(["push", f.project, "--remote", "no-such-host.invalid", "--ssh-config", "/dev/null"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("no-such-host.invalid"), "\(r.stderr)")
    }

    @Test func droppedConnectionMidPushThenResume() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        let big = randomBytes(192 << 20, seed: 43)
        try f.write("data/big.bin", big)
        var dropped = false
        let r = try f.sshctl(["push", f.project, "--json"]) { process in
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline && process.isRunning {
                if ResumeTests.partialBytes(in: f.remoteProject + "/data") >= big.count / 3 {
                    server.dropConnections()
                    dropped = true
                    return
                }
                usleep(2000)
            }
        }
        #expect(dropped, "the push finished before the connection could be dropped")
        #expect(r.status == 1)
        #expect(r.stderr.contains("resume"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.remoteProject + "/data/big.bin"))
        usleep(300_000)
        let again = try f.sshctl(["push", f.project, "--json"])
        #expect(again.status == 0, "\(again.stderr)")
        let sent = try again.stats().chunksSent, total = try again.stats().chunksTotal
        #expect(Double(sent) <= Double(total) * 0.75, "resumed push sent \(sent) of \(total) chunks")
        #expect(f.read("data/big.bin", in: f.remoteProject) == big ? true : false, "contents differ")
    }
}

@Suite(.serialized, .enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
struct SSHCredentialTests {
    /// An ed25519 key protected by `passphrase`, authorized on `server`.
    static func encryptedKey(_ server: SSHServer, _ f: SyncFixture, passphrase: String) throws -> String {
        let key = f.base + "/locked_ed25519"
        let r = try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", passphrase, "-f", key])
        #expect(r.status == 0)
        let pub = try String(contentsOfFile: key + ".pub", encoding: .utf8)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: server.dir + "/authorized_keys"))
        handle.seekToEndOfFile()
        handle.write(Data(pub.utf8))
        try handle.close()
        return key
    }

    @Test func encryptedKeyWithoutTerminalOrAskpassFailsClearly() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let key = try Self.encryptedKey(server, f, passphrase: "correct horse")
        try f.useSSH(server, config: server.sshConfig(key: key))
        try f.write("a.txt", "x")
        let r = try run("/usr/bin/setsid", ["-w", binDirectory() + "/syncctl", "push", f.project],
                        env: ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": "", "SSH_ASKPASS": ""])
        #expect(r.status == 1)
        #expect(r.stderr.contains("encrypted"), "\(r.stderr)")
        #expect(r.stderr.contains(key))
    }

    @Test func encryptedKeyWithAskpass() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let key = try Self.encryptedKey(server, f, passphrase: "correct horse")
        let askpass = f.base + "/askpass.sh"
        try "#!/bin/sh\necho 'correct horse'\n".write(toFile: askpass, atomically: true, encoding: .utf8)
        chmod(askpass, 0o755)
        try f.useSSH(server, config: server.sshConfig(key: key))
        try f.write("a.txt", "x")
        let r = try run("/usr/bin/setsid", ["-w", binDirectory() + "/syncctl", "push", f.project],
                        env: ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": "", "SSH_ASKPASS": askpass])
        #expect(r.status == 0, "\(r.stderr)")
    }

    /// Each new syncd version uploads its agent to the host; the host keeps the newest three (issue 27, item 8).
    @Test func aHostKeepsTheLastThreeAgents() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.write("a.txt", "x")
        let original = try Data(contentsOf: URL(fileURLWithPath: agentForSSH))
        var digests: [String] = []
        for version in 0..<5 {
            // Another build of the agent: the same program with other bytes at its end, so another digest.
            let copy = f.base + "/agent-v\(version)"
            try (original + Data("syncd test build \(version)".utf8)).write(to: URL(fileURLWithPath: copy))
            chmod(copy, 0o755)
            let r = try run(binDirectory() + "/syncctl", ["push", f.project, "--json"],
                            env: ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": copy, "SSH_AUTH_SOCK": ""])
            #expect(r.status == 0, "\(r.stderr)")
            let installed = try FileManager.default.contentsOfDirectory(atPath: server.home + "/.local/lib/syncd")
                .filter { $0.hasPrefix("agent-") }
            digests.append(contentsOf: installed.filter { !digests.contains($0) })
            #expect(installed.count == min(version + 1, 3), "after \(version + 1) versions: \(installed)")
            // Never the one in use.
            #expect(digests.last.map(installed.contains) == true)
            usleep(20_000)  // distinct modification times
        }
        #expect(digests.count == 5, "\(digests)")
    }

    @Test func sshAgentIsTriedFirst() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let socketPath = f.base + "/agent.sock"
        // ssh-agent in the foreground, spawned directly so it inherits none of our pipes.
        let agentPID = try spawnQuietly(["/usr/bin/ssh-agent", "-D", "-a", socketPath])
        defer {
            kill(agentPID, SIGKILL)
            var status: Int32 = 0
            waitpid(agentPID, &status, 0)
        }
        // The socket file appears at bind, before ssh-agent listens: wait until it answers (ssh-add -l says 1,
        // "no identities", rather than 2, "cannot connect").
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, (try? run("/usr/bin/ssh-add", ["-l"], env: ["SSH_AUTH_SOCK": socketPath]))?.status != 1 {
            usleep(10_000)
        }
        let add = try run("/usr/bin/ssh-add", [server.clientKey], env: ["SSH_AUTH_SOCK": socketPath])
        #expect(add.status == 0, "\(add.stderr)")
        // No IdentityFile at all: only the agent can authenticate.
        let config = server.sshConfig(key: f.base + "/missing-key")
        try f.useSSH(server, config: config)
        try f.write("a.txt", "x")
        let r = try run(binDirectory() + "/syncctl", ["push", f.project],
                        env: ["XDG_STATE_HOME": f.state, "SYNCD_AGENT": agentForSSH, "SSH_AUTH_SOCK": socketPath])
        #expect(r.status == 0, "\(r.stderr)")
    }

    /// Whether this machine lets the tests mount a small tmpfs (root in a container may not).
    static let canMountTmpfs: Bool = {
        let dir = NSTemporaryDirectory() + "syncd-mount-probe-" + UUID().uuidString.prefix(8)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard let r = try? run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir]), r.status == 0 else { return false }
        _ = try? run("/bin/umount", [dir])
        return true
    }()

    @Test(.enabled(if: canMountTmpfs, "cannot mount a tmpfs here to make a full disk"))
    func remoteDiskFullIsReportedAndNothingIsTorn() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        let small = f.base + "/small-disk"
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        let mount = try run("/bin/mount", ["-t", "tmpfs", "-o", "size=4m", "tmpfs", small])
        try #require(mount.status == 0, "cannot mount a small tmpfs here (\(mount.stderr)); skipping the full-disk check")
        defer { _ = try? run("/bin/umount", [small]) }
        try f.useSSH(server)
        try "name: \(f.name)\nremote: gpu-test\nremote_root: \(small)\nssh_config: \(f.base)/ssh_config\n"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        try f.write("a_small.txt", "fits")
        try f.write("big.bin", randomBytes(8 << 20, seed: 51))
        let r = try f.sshctl(["push", f.project, "--json"])
        #expect(r.status == 1)
        // Larger than the whole file system: refused before a byte is written, naming the file and the room.
        #expect(r.stderr.contains("big.bin: declared 8388608 bytes, more than the whole file system at \(small)/\(f.name) holds"),
                "\(r.stderr) \(r.stdout)")
        #expect(!FileManager.default.fileExists(atPath: small + "/\(f.name)/big.bin"), "no torn file at the final path")
        #expect(FileManager.default.contents(atPath: small + "/\(f.name)/a_small.txt") == Data("fits".utf8))
    }
}

/// A count shared with a closure that may run on another thread.
final class Counter: @unchecked Sendable {  // `lock` guards count
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
