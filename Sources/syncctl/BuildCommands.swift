import ArgumentParser
import Chunking
import Builds
import Client
import Control
import Fleet
import Foundation
import SyncConfig
import SSHTransport
import SyncSystem
import Wire

// Builds on the remote: plan, exec, compose, the pre-build hook, the compose override.

struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Per image layer: what it reads from the build context, its cache key, and whether it rebuilds.")
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(help: "Only this compose service.") var service: String?
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let project = try Project(directory: directory)
        let (plans, warnings) = try project.buildPlans(service: service)
        if plans.isEmpty && warnings.isEmpty {
            throw SyncError("\(project.directory): no compose file with a build and no Dockerfile", code: .usage)
        }
        if json {
            print(project.jsonText(JSONValue(["services": plans.map(\.json), "warnings": warnings] as [String: Any])))
            return
        }
        for w in warnings { print("warning: \(w)") }
        for plan in plans { printPlan(plan) }
    }
}

func printPlan(_ plan: BuildPlan) {
    print("\(plan.spec.name): context \(plan.spec.context.isEmpty ? "." : plan.spec.context), \(plan.spec.dockerfile)"
          + (plan.spec.target.map { ", target \($0)" } ?? "") + (plan.ignoreFile.isEmpty ? "" : ", ignore file \(plan.ignoreFile)"))
    for stage in plan.stages {
        // Unnamed stages are already called "stage N"; stage names cannot hold a space.
        print("  " + (stage.name.hasPrefix("stage ") ? stage.name : "stage \(stage.name)"))
        for layer in stage.layers {
            let head = layer.display
            let files = layer.files > 0 ? "  (\(layer.files) file\(layer.files == 1 ? "" : "s"), \(formatBytes(layer.bytes)))" : ""
            print("    \(layer.changed ? "rebuild" : "cached ") \(layer.key.hex.prefix(12))  \(head)\(files)")
        }
    }
    print("  context: docker build sends \(plan.contextFiles) files, \(formatBytes(plan.contextBytes)); this build reads \(plan.neededFiles) files, \(formatBytes(plan.neededBytes))")
    for w in plan.warnings { print("  warning: \(w)") }
}

/// Options shared by the commands that push and then act on the remote.
struct RemoteRunOptions: ParsableArguments {
    @Option(name: .customLong("dir"), help: "Project directory (default: the current directory).") var directory: String = "."
    @Flag(name: .customLong("no-push"), help: "Do not push first.") var noPush = false
}

/// Pushes for a build: through the daemon when it runs (its push is complete on return), else a push of our
/// own that sends what the earliest changed layer reads first. Records the layer keys as the last build's.
func pushForBuild(_ project: Project, quiet: Bool = false) throws -> [BuildPlan] {
    let (plans, warnings) = try project.buildPlans()
    for w in warnings { printError("warning: \(w)") }
    let stats: SyncStats
    if project.config.store != nil {
        stats = try StorePush(project: project).run()
    } else if let viaDaemon = try throughDaemon(.push, project.directory) {
        stats = viaDaemon
    } else {
        let session = PushSession(project: project)
        let prefixFor: (BuildPlan) -> String = { $0.spec.context.isEmpty ? "" : $0.spec.context + "/" }
        session.firstPaths = plans.flatMap { plan in
            plan.changedFilesInBuildOrder.compactMap { try? RelativePath(bytes: Array(prefixFor(plan).utf8) + $0.bytes) }
        }
        stats = try session.run()
    }
    for e in stats.errors { printError("error: \(e)") }
    if !quiet { printError(stats.summary()) }
    if let failure = stats.failure { throw SyncError("the push did not complete; not going on", code: failure) }
    return plans
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec", abstract: "Push, then run CMD in the project's directory on the remote; ends with CMD's exit status.",
        discussion: "One argument is run by the remote shell as written ('make && ls'); several are quoted one by one.")
    @OptionGroup var options: RemoteRunOptions
    @Argument(parsing: .captureForPassthrough, help: "The command.") var command: [String] = []

    func run() throws {
        // `exec --help` is about syncctl; `exec -- --help` runs `--help` there.
        if ["-h", "--help"].contains(command.first) { throw CleanExit.helpRequest(self) }
        let words = command.first == "--" ? Array(command.dropFirst()) : command
        guard !words.isEmpty else { throw SyncError("syncctl exec needs a command: syncctl exec -- CMD ARGS…", code: .usage) }
        let project = try Project(directory: options.directory, options: SyncOptions(progress: false))
        if !options.noPush { _ = try pushForBuild(project, quiet: true) }
        exitWith(try RemoteCommand.run(project: project, RemoteCommand.commandLine(words)))
    }
}

struct Compose: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compose", abstract: "Push, then run `docker compose ARGS` (or docker-compose) in the project's directory on the remote.")
    @OptionGroup var options: RemoteRunOptions
    @Argument(parsing: .captureForPassthrough, help: "Arguments for docker compose.") var arguments: [String] = []

    func run() throws {
        // `compose --help` is about syncctl, in a project or not; `compose -- --help` asks docker compose.
        if ["-h", "--help"].contains(arguments.first) { throw CleanExit.helpRequest(self) }
        let args = arguments.first == "--" ? Array(arguments.dropFirst()) : arguments
        let project = try Project(directory: options.directory, options: SyncOptions(progress: false))
        var plans: [BuildPlan] = []
        if !options.noPush {
            plans = try pushForBuild(project, quiet: true)
            for plan in plans { printError(plan.summary) }
        }
        let status = try RemoteCommand.run(project: project, RemoteCommand.composeLine(args))
        if status == 0 { for plan in plans { try project.recordLayers(plan) } }
        exitWith(status)
    }
}

struct Hook: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "hook", abstract: "Hooks to call from make, a shell alias or git.",
                                                    subcommands: [PreBuild.self])

    struct PreBuild: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "pre-build",
            abstract: "Before `docker compose up --build` on the remote: push --wait, then one line per image saying what rebuilds.")
        @Argument(help: "Project directory.") var directory: String = "."

        func run() throws {
            let project = try Project(directory: directory, options: SyncOptions(progress: false))
            let plans = try pushForBuild(project, quiet: true)
            for plan in plans {
                print(plan.summary)
                try project.recordLayers(plan)
            }
        }
    }
}

struct ComposeOverride: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compose-override",
        abstract: "Write a compose override file whose bind mounts name the remote's absolute paths (for DOCKER_HOST=ssh://…).")
    @Argument(help: "Project directory.") var directory: String = "."
    @Option(name: .customLong("remote-dir"), help: "The project's directory on the remote (default: asked of the agent by a push).")
    var remoteDirectory: String?

    func run() throws {
        let project = try Project(directory: directory, options: SyncOptions(progress: false))
        guard let compose = try project.buildSpecs().compose else {
            throw SyncError("\(project.directory): no compose file (compose.yaml or docker-compose.yml)", code: .usage)
        }
        let remoteDir: String
        if let remoteDirectory { remoteDir = remoteDirectory } else {
            let stats = try PushSession(project: project).run()
            guard let dir = stats.remoteDirectory else { throw SyncError("the agent did not say where the project is") }
            remoteDir = dir
        }
        let name = compose.files[0].hasPrefix("compose.") ? "compose.override.yaml" : "docker-compose.override.yml"
        let path = project.directory + "/" + name
        let marker = "# written by syncctl compose-override"
        if let existing = try? String(contentsOfFile: path, encoding: .utf8), !existing.hasPrefix(marker) {
            throw SyncError("\(path) exists and was not written by syncctl; move it aside or merge by hand", code: .usage)
        }
        var lines = [marker + ": bind mounts point at \(remoteDir) on the remote", "services:"]
        for service in compose.services {
            let mounts = service.mounts.compactMap { m -> String? in
                guard let rel = m.relativeSource else { return nil }
                return "\(rel == "." ? remoteDir : remoteDir + "/" + rel):\(m.target)\(m.readOnly ? ":ro" : "")"
            }
            guard !mounts.isEmpty else { continue }
            lines.append("  \(service.name):")
            lines.append("    volumes:")
            for m in mounts { lines.append("      - \"\(m)\"") }
        }
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        printError("wrote \(path)")
    }
}
