import Client
import Foundation
import SSHTransport
import SyncConfig
import SyncSystem

/// Runs a command in the project's directory on the remote (`syncctl exec`, `syncctl compose`): over its own SSH
/// exec channel, or as a local process for `local:` remotes. Its stdout and stderr stream to ours as they come,
/// and its exit status is returned.
public enum RemoteCommand {
    /// `words` as one shell command line: a single word is taken as shell text (`'make && ls'`), several are
    /// quoted one by one (`python train.py --name "my run"`).
    public static func commandLine(_ words: [String]) -> String {
        words.count == 1 ? words[0] : words.map(shellQuote).joined(separator: " ")
    }

    /// `docker compose ARGS`, or `docker-compose ARGS` where the compose plugin is missing.
    public static func composeLine(_ arguments: [String]) -> String {
        let args = arguments.map(shellQuote).joined(separator: " ")
        return "if docker compose version >/dev/null 2>&1; then exec docker compose \(args); else exec docker-compose \(args); fi"
    }

    /// Runs `line` in the remote project directory; returns its exit status.
    public static func run(project: Project, _ line: String) throws -> Int32 {
        var script = "cd \(remoteDirectory(project)) || exit 125; "
        if let host = project.config.dockerHost { script += "export DOCKER_HOST=\(shellQuote(host)); " }
        if let snapshot = project.lastSnapshot() { script += "export SYNCD_SNAPSHOT=\(shellQuote(snapshot)); " }
        script += line
        switch project.config.remote {
        case .local:
            return try runLocally(script)
        case .ssh(let destination):
            let settings = try project.sshSettings(destination)
            let session: SSHSession
            do {
                session = try SSHSession(settings: settings, options: SSHOptions(identity: project.config.identity,
                                                                                 knownHosts: project.config.knownHosts))
            } catch let e as SSHError {
                throw SyncError("ssh \(destination): \(e)")
            }
            let stream = try session.openStream("sh -c \(shellQuote(script))")
            stream.closeWrite()
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
            defer { buffer.deallocate() }
            while true {
                let n: Int
                do { n = try stream.read(into: buffer) } catch { break }
                if n == 0 { break }
                var done = 0
                while done < n {
                    let w = write(1, buffer.baseAddress! + done, n - done)
                    if w <= 0 { break }
                    done += w
                }
            }
            guard let status = stream.waitForExit() else {
                throw SyncError("ssh \(destination): the connection ended before the command did\(stream.error.map { ": \($0)" } ?? "")")
            }
            return status
        }
    }

    /// The remote project directory as a shell word: the remote root's, or under the login user's home.
    static func remoteDirectory(_ project: Project) -> String {
        if case .local(let root) = project.config.remote {
            return shellQuote((project.config.remoteRoot ?? root) + "/" + project.config.name)
        }
        if let root = project.config.remoteRoot { return shellQuote(root + "/" + project.config.name) }
        return "\"$HOME\"/" + shellQuote(project.config.name)
    }

    private static func runLocally(_ script: String) throws -> Int32 {
        let pid: pid_t
        do {
            pid = try spawnProcess(["/bin/sh", "-c", script])
        } catch let error as SystemError {
            throw SyncError("cannot start /bin/sh: \(error.reason)")
        }
        return waitForExit(pid)
    }
}

extension Project {
    /// A bind mount's source is a directory unless it is a file here (docker makes a missing one a directory).
    func mountIsDirectory(_ source: String) -> Bool {
        guard let path = try? RelativePath(source), let st = try? tree.lstat(path) else { return true }
        return st.kind != .regular
    }

    /// The builds of this project: one per compose service with `build:`, or the lone `Dockerfile` at the root.
    /// Warnings name compose bind mounts whose source syncd does not sync.
    public func buildSpecs() throws -> (specs: [BuildSpec], compose: ComposeFile?, warnings: [String]) {
        let compose: ComposeFile?
        do { compose = try ComposeFile.load(directory: directory) } catch let e as ConfigError {
            throw SyncError(e.description, code: .usage)
        }
        guard let compose else {
            guard FileManager.default.fileExists(atPath: directory + "/Dockerfile") else { return ([], nil, []) }
            return ([BuildSpec(name: config.name)], nil, [])
        }
        var specs: [BuildSpec] = []
        var warnings: [String] = []
        for service in compose.services {
            if let build = service.build {
                guard let context = BuildSpec.relativeContext(build.context) else {
                    warnings.append("services.\(service.name).build.context '\(build.context)' is outside the project; not planned")
                    continue
                }
                specs.append(BuildSpec(name: service.name, context: context, dockerfile: build.dockerfile, args: build.args, target: build.target))
            }
            for mount in service.mounts {
                guard let source = mount.relativeSource else { continue }
                if source.hasPrefix("..") {
                    warnings.append("services.\(service.name): the bind mount \(mount.source) is outside the project, so it is not synced")
                } else if let path = try? RelativePath(source), isPullPath(path) {
                    continue
                } else if source != "." && rules.isExcluded(Array(source.utf8), isDirectory: mountIsDirectory(source)) {
                    warnings.append("services.\(service.name): the bind mount \(mount.source) -> \(mount.target) is ignored by syncd, so it is empty or stale on the remote")
                }
            }
        }
        return (specs, compose, warnings)
    }

    /// The key under which a build's layer keys are recorded in the local state.
    func layerRecordKey(_ spec: BuildSpec) -> String { "build-layers:" + spec.name }

    /// The layer keys recorded at the last build of `spec`.
    public func recordedLayers(_ spec: BuildSpec) throws -> [String: String] {
        guard let text = try openState().value(layerRecordKey(spec)), let data = text.data(using: .utf8),
              let map = try? JSONSerialization.jsonObject(with: data) as? [String: String] else { return [:] }
        return map
    }

    /// Records `plan`'s keys as the last build's.
    public func recordLayers(_ plan: BuildPlan) throws {
        let data = try JSONSerialization.data(withJSONObject: plan.keysToRecord, options: [.sortedKeys])
        try openState().setValue(String(decoding: data, as: UTF8.self), for: layerRecordKey(plan.spec))
    }

    /// The plans of every build, compared with the last recorded builds.
    public func buildPlans(service: String? = nil) throws -> (plans: [BuildPlan], warnings: [String]) {
        let (specs, _, warnings) = try buildSpecs()
        var chosen = specs
        if let service {
            chosen = specs.filter { $0.name == service }
            guard !chosen.isEmpty else {
                throw SyncError("no service '\(service)' with a build; services with one: \(specs.map(\.name).joined(separator: ", "))", code: .usage)
            }
        }
        return (try chosen.map { try BuildPlan.make(project: self, spec: $0, recorded: try recordedLayers($0)) }, warnings)
    }
}

extension BuildSpec {
    /// A compose `build.context` as a path relative to the project; nil when it leaves the project or is a URL.
    static func relativeContext(_ context: String) -> String? {
        if context.contains("://") || context.hasPrefix("/") { return nil }
        var parts: [Substring] = []
        for p in context.split(separator: "/") where p != "." && !p.isEmpty {
            if p == ".." { return nil }
            parts.append(p)
        }
        return parts.joined(separator: "/")
    }
}
