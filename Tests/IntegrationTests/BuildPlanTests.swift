import Builds
import Client
import Control
import Fleet
import Foundation
import SyncSystem
import Testing

/// Layer keys and plans from real files: which layers an edit rebuilds.
@Suite(.serialized)
struct BuildPlanTests {
    static let dockerfile = """
        FROM python:3.11-slim AS base
        WORKDIR /app
        COPY --from=busybox:1.36 /bin/busybox /bin/busybox
        COPY requirements.txt .
        RUN pip install -r requirements.txt
        COPY src/ ./src/
        COPY config.yaml .
        CMD ["python", "src/train.py"]
        """

    private func fixture() throws -> (SyncFixture, Project) {
        let f = try SyncFixture()
        try f.write("Dockerfile", Self.dockerfile)
        try f.write(".dockerignore", "data/\n*.log\n")
        try f.write("requirements.txt", "torch\n")
        try f.write("src/train.py", "print('train')\n")
        try f.write("src/model.py", "class M: pass\n")
        try f.write("config.yaml", "lr: 0.1\n")
        try f.write("data/raw.bin", randomBytes(2_000_000, seed: 81))
        let p = try f.openProject()
        return (f, p)
    }

    /// The changed flags of the one stage, after recording the previous plan as built.
    private func changes(_ p: Project, _ edit: () throws -> Void) throws -> [Bool] {
        let before = try p.buildPlans().plans[0]
        try p.recordLayers(before)
        try edit()
        return try p.buildPlans().plans[0].stages[0].layers.map(\.changed)
    }

    @Test func anEditRebuildsItsLayerAndTheOnesAfterIt() throws {
        let (f, p) = try fixture()
        let first = try p.buildPlans().plans[0]
        #expect(first.stages.map(\.name) == ["base"])
        #expect(first.stages[0].layers.map(\.display) == [
            "WORKDIR /app", "COPY --from=busybox:1.36 /bin/busybox /bin/busybox", "COPY requirements.txt .",
            "RUN pip install -r requirements.txt", "COPY src/ ./src/", "COPY config.yaml .", "CMD [\"python\", \"src/train.py\"]",
        ])
        #expect(first.stages[0].layers.allSatisfy { $0.changed }, "nothing recorded yet: everything builds")
        #expect(first.stages[0].layers.map(\.files) == [0, 0, 1, 0, 2, 1, 0])

        // Layers:            WORKDIR, --from, requirements, RUN, src, config, CMD
        #expect(try changes(p) { try f.write("src/model.py", "class M: x = 1\n") }
                == [false, false, false, false, true, true, true])
        #expect(try changes(p) { try f.write("requirements.txt", "torch\nnumpy\n") }
                == [false, false, true, true, true, true, true])
        #expect(try changes(p) { try f.write("data/raw.bin", randomBytes(100, seed: 82)) } == Array(repeating: false, count: 7),
                "a file excluded by .dockerignore changes nothing")
        #expect(try changes(p) { try f.write("train.log", "noise\n") } == Array(repeating: false, count: 7))
        #expect(try changes(p) { try f.age("src/train.py", in: f.project, seconds: 100) } == Array(repeating: false, count: 7),
                "mtime is not part of the key")
        #expect(try changes(p) { chmod(f.project + "/src/train.py", 0o755) } == [false, false, false, false, true, true, true],
                "the mode is")
        #expect(try changes(p) { try f.write("notes.md", "not copied\n") } == Array(repeating: false, count: 7),
                "a new file no instruction selects changes nothing")
    }

    @Test func buildArgsTargetsAndStagesFromAnotherStage() throws {
        let f = try SyncFixture()
        try f.write("Dockerfile", """
            ARG PY=3.11
            FROM python:$PY AS deps
            COPY requirements.txt .
            RUN pip wheel -r requirements.txt -w /wheels
            FROM python:$PY AS app
            COPY --from=deps /wheels /wheels
            COPY src/ /app/src/
            """)
        try f.write("requirements.txt", "torch\n")
        try f.write("src/a.py", "a\n")
        let p = try f.openProject()
        var plan = try p.buildPlans().plans[0]
        #expect(plan.stages.map(\.name) == ["deps", "app"])
        try p.recordLayers(plan)
        try f.write("src/a.py", "a2\n")
        plan = try p.buildPlans().plans[0]
        #expect(plan.stages[0].layers.map(\.changed) == [false, false])
        #expect(plan.stages[1].layers.map(\.changed) == [false, true], "the --from layer does not change with the context")
        try p.recordLayers(plan)
        try f.write("requirements.txt", "torch\nnumpy\n")
        plan = try p.buildPlans().plans[0]
        #expect(plan.stages[0].layers.map(\.changed) == [true, true])
        #expect(plan.stages[1].layers.map(\.changed) == [true, true], "…but with the stage it copies from")
        #expect(plan.changedFilesInBuildOrder.map(\.description) == ["requirements.txt", "src/a.py"], "what the earliest changed layer reads goes first")
    }

    @Test func composeServicesWarningsAndJSON() throws {
        let f = try SyncFixture()
        try f.write("compose.yaml", """
            services:
              trainer:
                build:
                  context: ./trainer
                  dockerfile: Dockerfile.gpu
                  args: {BASE: "alpine:3.19"}
                volumes:
                  - ./output:/work/output
                  - ./checkpoint:/work/checkpoint
                  - ./.git:/work/git:ro
                  - cache:/root/.cache
              db:
                image: postgres
            """)
        try f.write("trainer/Dockerfile.gpu", "ARG BASE\nFROM $BASE\nCOPY code/ /code/\n")
        try f.write("trainer/Dockerfile.gpu.dockerignore", "**/*.tmp\n")
        try f.write("trainer/code/a.py", "a\n")
        try f.write("trainer/code/b.tmp", "scratch\n")
        try f.write("trainer/weights/big.bin", randomBytes(3_000_000, seed: 83))
        let r = try f.syncctl(["plan", f.project, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
        let services = out["services"] as? [[String: Any]] ?? []
        #expect(services.count == 1)
        #expect(services.first?["name"] as? String == "trainer")
        #expect(services.first?["ignore_file"] as? String == "trainer/Dockerfile.gpu.dockerignore")
        let layers = ((services.first?["stages"] as? [[String: Any]])?.first?["layers"] as? [[String: Any]]) ?? []
        #expect(layers.map { $0["instruction"] as? String } == ["COPY code/ /code/"])
        #expect(layers.first?["files"] as? Int == 1, "b.tmp is excluded by the Dockerfile's own ignore file")
        #expect(layers.first?["changed"] as? Bool == true)
        #expect((layers.first?["key"] as? String)?.count == 32)
        #expect((services.first?["context_bytes"] as? Int ?? 0) > 3_000_000)
        #expect((services.first?["needed_bytes"] as? Int ?? 0) < 100)
        let warnings = services.first?["warnings"] as? [String] ?? []
        #expect(warnings.contains { $0.hasPrefix("weights/ (") && $0.contains("add it to trainer/Dockerfile.gpu.dockerignore") }, "\(warnings)")
        let composeWarnings = out["warnings"] as? [String] ?? []
        #expect(composeWarnings.contains { $0.contains("./.git") && $0.contains("ignored by syncd") }, "\(composeWarnings)")
        #expect(!composeWarnings.contains { $0.contains("./output") }, "pull paths are synced (the other way)")
        let text = try f.syncctl(["plan", f.project, "--service", "trainer"])
        #expect(text.status == 0)
        #expect(text.stdout.contains("rebuild") && text.stdout.contains("COPY code/ /code/"), "\(text.stdout)")
        #expect(try f.syncctl(["plan", f.project, "--service", "db"]).status == 2)
    }
}

/// The push order for a build: what the earliest changed layer reads goes first.
struct PushOrderTests {
    @Test func filesOfTheEarliestChangedLayerAreSentFirst() throws {
        let f = try SyncFixture()
        try f.write("Dockerfile", "FROM alpine\nCOPY requirements.txt /\nCOPY src/ /src/\n")
        try f.write("requirements.txt", "torch\n")
        for name in ["a", "b", "c"] { try f.write("src/\(name).py", name) }
        for name in ["zz1", "zz2"] { try f.write("notes/\(name).md", name) }
        let p = try f.openProject()
        let plan = try p.buildPlans().plans[0]
        #expect(plan.changedFilesInBuildOrder.map(\.description) == ["requirements.txt", "src/a.py", "src/b.py", "src/c.py"])
        let session = PushSession(project: p)
        session.firstPaths = [try RelativePath("src/c.py"), try RelativePath("requirements.txt")]
        let order = try session.plannedOrder()
        let files = order.filter { !$0.hasSuffix("/") }
        #expect(Array(files.prefix(2)) == ["src/c.py", "requirements.txt"], "\(order)")
        #expect(order.firstIndex(of: "src/") ?? 99 < order.firstIndex(of: "src/c.py") ?? 0, "directories still come before their files")
    }
}

/// `syncctl exec`: push, then the command in the remote project directory, its output and exit status.
@Suite(.serialized)
struct ExecTests {
    @Test func execPushesThenRunsInTheRemoteProject() throws {
        let f = try SyncFixture()
        try f.write("src/job.sh", "echo \"job in $(pwd)\"; echo oops >&2; exit 7\n")
        let r = try f.syncctl(["exec", "--dir", f.project, "--", "sh", "src/job.sh"])
        #expect(r.status == 7, "the command's exit status: \(r.stderr)")
        #expect(r.stdout == "job in \(f.remoteProject)\n", "\(r.stdout)")
        #expect(r.stderr.contains("oops"))
        let shell = try f.syncctl(["exec", "--dir", f.project, "--no-push", "--", "test -f src/job.sh && echo 'quoted words' | wc -w"])
        #expect(shell.status == 0, "\(shell.stderr)")
        #expect(shell.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "2")
        let words = try f.syncctl(["exec", "--dir", f.project, "--no-push", "--", "printf", "%s|", "two words", "$HOME"])
        #expect(words.stdout == "two words|$HOME|", "several words are quoted one by one: \(words.stdout)")
        #expect(try f.syncctl(["exec", "--dir", f.project]).status == 2)
    }

    @Test(.enabled(if: sshdAvailable, "needs /usr/sbin/sshd (openssh-server) and root"))
    func execOverSSHStreamsOutputAndStatus() throws {
        let server = try SSHServer()
        let f = try SyncFixture()
        try f.useSSH(server)
        try f.write("run.sh", "for i in 1 2 3; do echo line $i; done; echo to-stderr >&2; exit 4\n")
        let r = try f.sshctl(["exec", "--dir", f.project, "--", "sh", "run.sh"])
        #expect(r.status == 4, "\(r.stderr)")
        #expect(r.stdout == "line 1\nline 2\nline 3\n")
        #expect(r.stderr.contains("to-stderr"))
    }
}

/// `syncctl hook pre-build` and `syncctl compose-override`.
@Suite(.serialized)
struct HookTests {
    @Test func preBuildPushesAndSaysWhatRebuilds() throws {
        let f = try SyncFixture()
        try f.write("Dockerfile", "FROM alpine\nCOPY requirements.txt /\nCOPY src/ /src/\n")
        try f.write("requirements.txt", "torch\n")
        try f.write("src/a.py", "a\n")
        var r = try f.syncctl(["hook", "pre-build", f.project])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("\(f.name): 2 of 2 layers rebuild (from COPY requirements.txt /)"), "\(r.stdout)")
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a\n".utf8), "pushed before it returns")
        r = try f.syncctl(["hook", "pre-build", f.project])
        #expect(r.stdout.hasPrefix("\(f.name): 0 of 2 layers rebuild"), "\(r.stdout)")
        try f.write("src/a.py", "a2\n")
        r = try f.syncctl(["hook", "pre-build", f.project])
        #expect(r.stdout.hasPrefix("\(f.name): 1 of 2 layers rebuild (from COPY src/ /src/)"), "\(r.stdout)")
        #expect(f.read("src/a.py", in: f.remoteProject) == Array("a2\n".utf8))
    }

    @Test func composeOverrideNamesTheRemotePaths() throws {
        let f = try SyncFixture()
        try f.write("docker-compose.yml", """
            services:
              trainer:
                build: .
                volumes:
                  - ./output:/work/output
                  - ./data:/data:ro
                  - /scratch:/scratch
            """)
        try f.write("Dockerfile", "FROM alpine\n")
        let r = try f.syncctl(["compose-override", f.project])
        #expect(r.status == 0, "\(r.stderr)")
        let text = (try? String(contentsOfFile: f.project + "/docker-compose.override.yml", encoding: .utf8)) ?? ""
        #expect(text.contains("- \"\(f.remoteProject)/output:/work/output\""), "\(text)")
        #expect(text.contains("- \"\(f.remoteProject)/data:/data:ro\""), "\(text)")
        #expect(!text.contains("/scratch"), "absolute mounts are left as they are")
        #expect(try f.syncctl(["compose-override", f.project]).status == 0, "its own file is rewritten")
        try "services: {}\n".write(toFile: f.project + "/docker-compose.override.yml", atomically: true, encoding: .utf8)
        let refused = try f.syncctl(["compose-override", f.project])
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("was not written by syncctl"), "\(refused.stderr)")
    }
}
