import Builds
import Client
import Foundation
import SSHTransport
import SyncConfig
import SyncSystem

extension Project {
    /// The hosts a push reaches and a pull reads: the `hosts:` list (or `remote:`), or with `hosts: swarm:MANAGER`
    /// the swarm's nodes as the manager lists them now, the manager first.
    public func hostList() throws -> [RemoteSpec] {
        guard let manager = config.swarmManager else { return config.allHosts }
        return try swarmNodes(manager: manager)
    }

    /// The nodes of the swarm `manager` manages, read over SSH with `docker node ls` and `docker node inspect`
    /// (with `docker_host:` as DOCKER_HOST). The manager is reached as configured; every other node as
    /// `[user@]ADDRESS[:port]` with the manager's user and port (an ssh_config entry for the addresses can say
    /// more). Drained nodes run no task and are left out; nodes that are down stay in, to be reported.
    func swarmNodes(manager: String) throws -> [RemoteSpec] {
        var script = ""
        if let host = config.dockerHost { script += "export DOCKER_HOST=\(shellQuote(host)); " }
        script += "docker info --format 'self {{.Swarm.NodeID}}' && docker node inspect"
            + " --format '{{.ID}} {{.Status.Addr}} {{.Spec.Availability}} {{.Description.Hostname}}' $(docker node ls -q)"
        let settings = try sshSettings(manager)
        let output: (status: Int32, stdout: [UInt8], stderr: String)
        do {
            let session = try SSHSession(settings: settings, options: SSHOptions(identity: config.identity, knownHosts: config.knownHosts))
            output = try session.run("sh -c \(shellQuote(script))")
        } catch let e as SSHError {
            throw SyncError("hosts: swarm:\(manager): \(e)")
        }
        let text = String(decoding: output.stdout, as: UTF8.self)
        guard output.status == 0 else {
            let why = output.stderr.trimmingCharacters(in: .whitespacesAndNewlines)
            throw SyncError("hosts: swarm:\(manager): cannot list the swarm's nodes there (docker node ls): "
                            + (why.isEmpty ? "exit status \(output.status)" : why)
                            + (why.contains("not a swarm manager") ? "; name a manager node" : ""))
        }
        return try Self.parseSwarmNodes(text, manager: manager, user: settings.user, port: settings.port)
    }

    /// What `swarmNodes` read: a `self ID` line, then `ID ADDRESS AVAILABILITY HOSTNAME` per node.
    static func parseSwarmNodes(_ text: String, manager: String, user: String?, port: Int) throws -> [RemoteSpec] {
        var selfID: Substring?
        var others: [(name: Substring, destination: String)] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.first == "self", fields.count == 2 { selfID = fields[1]; continue }
            guard fields.count >= 3 else { continue }
            if fields[0] == selfID || fields[2] == "drain" { continue }
            let address = fields[1].contains(":") ? "[\(fields[1])]" : String(fields[1])
            let destination = (user.map { "\($0)@" } ?? "") + address + (port == 22 ? "" : ":\(port)")
            others.append((fields.count > 3 ? fields[3] : fields[1], destination))
        }
        guard selfID != nil else {
            throw SyncError("hosts: swarm:\(manager): \(manager) is not in a swarm (docker info shows no node id); run `docker swarm init` there or name a manager")
        }
        return [.ssh(destination: manager)] + others.sorted { $0.name < $1.name }.map { .ssh(destination: $0.destination) }
    }
}
