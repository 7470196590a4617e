import Foundation
import Testing

/// A dockerd of the test's own: data root, exec root, socket and pidfile in a temporary directory, no iptables
/// and no default bridge (builds and containers run with network none). A base image is made with
/// `docker import` from a busybox rootfs, since there is no registry.
final class Dockerd {
    let dir = NSTemporaryDirectory() + "syncd-dockerd-" + UUID().uuidString.prefix(8)
    var socket: String { dir + "/docker.sock" }
    private var pid: pid_t?
    /// Why dockerd could not start; nil when it runs.
    private(set) var failure: String?

    static let docker = "/usr/bin/docker"
    static var installed: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/sbin/dockerd") && FileManager.default.isExecutableFile(atPath: docker)
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/docker-compose") && getuid() == 0
    }

    init() {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        do {
            pid = try spawnDaemon(["/usr/sbin/dockerd", "--data-root", dir + "/data", "--exec-root", dir + "/exec",
                                   "--host", "unix://" + socket, "--pidfile", dir + "/docker.pid",
                                   "--iptables=false", "--bridge=none"], env: [:], log: dir + "/dockerd.log")
        } catch {
            failure = "\(error)"
            return
        }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if (try? run(Self.docker, ["-H", "unix://" + socket, "info"]))?.status == 0 { return }
            var status: Int32 = 0
            if let pid, waitpid(pid, &status, WNOHANG) == pid { self.pid = nil; break }
            usleep(200_000)
        }
        let log = (try? String(contentsOfFile: dir + "/dockerd.log", encoding: .utf8)) ?? ""
        failure = "dockerd did not start: " + log.split(separator: "\n").suffix(3).joined(separator: " | ")
        stop()
    }

    func docker(_ arguments: [String], stdin: Data? = nil) throws -> RunResult {
        try run(Self.docker, ["-H", "unix://" + socket] + arguments, stdin: stdin)
    }

    /// Imports a busybox rootfs as `name`.
    func importBusybox(as name: String) throws {
        let rootfs = dir + "/rootfs"
        try FileManager.default.createDirectory(atPath: rootfs + "/bin", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: rootfs + "/tmp", withIntermediateDirectories: true)
        guard let busybox = ["/usr/bin/busybox", "/bin/busybox"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw FixtureError("busybox is not installed (busybox-static)")
        }
        try FileManager.default.copyItem(atPath: busybox, toPath: rootfs + "/bin/busybox")
        for tool in ["sh", "ls", "cat", "wc", "echo", "mkdir"] {
            try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + tool, withDestinationPath: "busybox")
        }
        let tar = try run("/bin/tar", ["-C", rootfs, "-cf", dir + "/rootfs.tar", "."])
        guard tar.status == 0 else { throw FixtureError("tar: \(tar.stderr)") }
        let r = try docker(["import", dir + "/rootfs.tar", name])
        guard r.status == 0 else { throw FixtureError("docker import: \(r.stderr)") }
    }

    func stop() {
        guard let child = pid else { return }
        kill(child, SIGTERM)
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(20)
        while waitpid(child, &status, WNOHANG) == 0 && Date() < deadline { usleep(100_000) }
        if waitpid(child, &status, WNOHANG) == 0 { kill(child, SIGKILL); waitpid(child, &status, 0) }
        pid = nil
    }

    deinit {
        stop()
        _ = try? run("/bin/umount", ["-R", "-l", dir + "/exec"])
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// The classic builder's account of a build: for each step after FROM, whether it came from the cache.
func builderSteps(_ output: String) -> [(instruction: String, cached: Bool)] {
    let lines = output.split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }
    var steps: [(String, Bool)] = []
    for (i, line) in lines.enumerated() where line.hasPrefix("Step ") {
        guard let colon = line.range(of: " : ") else { continue }
        let instruction = String(line[colon.upperBound...])
        if instruction.uppercased().hasPrefix("FROM ") { continue }
        let next = i + 1 < lines.count ? lines[i + 1] : ""
        steps.append((instruction, next.hasPrefix("---> Using cache")))
    }
    return steps
}

@Suite(.serialized, .enabled(if: sshdAvailable && Dockerd.installed, "needs sshd, dockerd, /usr/bin/docker and docker-compose, as root"))
struct DockerTests {
    @Test func composeUpThroughSSHAndTheRebuiltLayersAreThePlannedOnes() throws {
        let dockerd = Dockerd()
        defer { dockerd.stop() }
        if let failure = dockerd.failure {
            print("SKIPPED composeUpThroughSSHAndTheRebuiltLayersAreThePlannedOnes: \(failure)")
            return
        }
        try dockerd.importBusybox(as: "syncd-test-base:latest")
        let server = try SSHServer()
        let f = try SyncFixture()
        let sshConfig = try f.useSSH(server)
        try "name: \(f.name)\nremote: gpu-test\nremote_root: \(f.remoteRoot)\nssh_config: \(sshConfig)\ndocker_host: unix://\(dockerd.socket)\n"
            .write(toFile: f.project + "/syncd.yaml", atomically: true, encoding: .utf8)
        try f.write("Dockerfile", """
            FROM syncd-test-base
            WORKDIR /app
            COPY requirements.txt .
            RUN wc -c requirements.txt > deps.txt
            COPY src/ src/
            RUN ls src > files.txt
            CMD ["sh", "-c", "cat /app/src/msg.txt > /work/output/result.txt; echo ckpt > /work/checkpoint/c.pt"]
            """)
        try f.write("compose.yaml", """
            services:
              trainer:
                build:
                  context: .
                  network: none
                network_mode: none
                volumes:
                  - ./output:/work/output
                  - ./checkpoint:/work/checkpoint
            """)
        try f.write("requirements.txt", "numpy\n")
        try f.write("src/msg.txt", "hello\n")
        try f.write("notes.md", "not in any layer\n")

        // First run: everything builds; the container writes through the relative bind mounts on the remote.
        var up = try f.sshctl(["compose", "--dir", f.project, "--", "up", "--build"])
        #expect(up.status == 0, "\(up.stdout)\n\(up.stderr)")
        #expect(builderSteps(up.stdout + up.stderr).count == 6, "\(up.stdout)")
        #expect(f.read("output/result.txt", in: f.remoteProject) == Array("hello\n".utf8))
        // A one-shot pull leaves files younger than 2 s (a writer it cannot see may still be at work).
        for path in ["output/result.txt", "checkpoint/c.pt"] { try f.age(path, in: f.remoteProject) }
        let pulled = try f.sshctl(["pull", f.project, "--json"])
        #expect(pulled.status == 0, "\(pulled.stderr)")
        #expect(f.read("output/result.txt") == Array("hello\n".utf8))
        #expect(f.read("checkpoint/c.pt") == Array("ckpt\n".utf8))

        // One edit: plan says which layers rebuild; docker's build must agree step for step.
        try f.write("src/msg.txt", "edited\n")
        let plan = try f.sshctl(["plan", f.project, "--json"])
        #expect(plan.status == 0, "\(plan.stderr)")
        let service = ((try JSONSerialization.jsonObject(with: Data(plan.stdout.utf8)) as? [String: Any])?["services"] as? [[String: Any]])?.first
        let layers = ((service?["stages"] as? [[String: Any]])?.first?["layers"] as? [[String: Any]]) ?? []
        let predicted = layers.map { $0["changed"] as? Bool ?? true }
        #expect(predicted == [false, false, false, true, true, true], "\(plan.stdout)")
        let build = try f.sshctl(["compose", "--dir", f.project, "--", "build"])
        #expect(build.status == 0, "\(build.stdout)\n\(build.stderr)")
        let steps = builderSteps(build.stdout + build.stderr)
        #expect(steps.map { !$0.cached } == predicted, "docker rebuilt \(steps.filter { !$0.cached }.map(\.instruction)); plan predicted \(predicted)")

        // And a file no layer reads: nothing rebuilds, as predicted.
        try f.write("notes.md", "still not in any layer\n")
        let quiet = try f.sshctl(["plan", f.project, "--json"])
        #expect(!quiet.stdout.contains("\"changed\":true"), "\(quiet.stdout)")
        let rebuild = try f.sshctl(["compose", "--dir", f.project, "--", "build"])
        #expect(builderSteps(rebuild.stdout + rebuild.stderr).allSatisfy { $0.cached }, "\(rebuild.stdout)")

        up = try f.sshctl(["compose", "--dir", f.project, "--", "up"])
        #expect(up.status == 0, "\(up.stderr)")
        for path in ["output/result.txt", "checkpoint/c.pt"] { try f.age(path, in: f.remoteProject) }
        #expect(try f.sshctl(["pull", f.project]).status == 0)
        #expect(f.read("output/result.txt") == Array("edited\n".utf8))
        _ = try? f.sshctl(["compose", "--dir", f.project, "--no-push", "--", "down"])
    }
}
