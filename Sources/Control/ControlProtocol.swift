import Client
import Foundation

/// A request on the daemon's control socket (see `ControlSocket`): one line of JSON per connection, as in
/// `{"version": 1, "command": "push", "project": "/abs/dir"}`. Both sides of the socket are built from this
/// type: syncctl encodes it, syncd decodes it, and anything that does not decode is answered with an error
/// that says what was wrong, never a crash.
public struct ControlRequest: Codable, Sendable, Equatable {
    /// The control protocol this build speaks. A request from a newer one is refused by name, so that a syncctl
    /// newer than the running syncd says "restart syncd" rather than failing obscurely.
    /// 2: conflicts as objects (docs/JSON.md), status with remote, progress and retry_in_seconds.
    public static let currentVersion = 2
    /// A request line longer than this is refused unread.
    public static let maxLineBytes = 65536

    public enum Command: String, Codable, Sendable, CaseIterable {
        case status, push, pull, pause, resume, logs, reload
    }

    public var version: Int
    public var command: Command
    /// The project's absolute directory; all projects (status, pause, resume) when nil.
    public var project: String?
    /// `logs`: keep sending new lines until the client goes away.
    public var follow: Bool?

    public init(_ command: Command, project: String? = nil, follow: Bool? = nil) {
        version = Self.currentVersion
        self.command = command
        self.project = project
        self.follow = follow
    }

    enum CodingKeys: String, CodingKey { case version, command, project, follow }

    /// Decodes with messages that name the field at fault, and refuses a newer version before reading more.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        guard let version = try? c.decodeIfPresent(Int.self, forKey: .version) else {
            throw ControlProtocolError("the request has no integer \"version\" (this syncd speaks control protocol version \(Self.currentVersion))")
        }
        guard version <= Self.currentVersion, version >= 1 else {
            throw ControlProtocolError("the request is control protocol version \(version), and this syncd speaks version \(Self.currentVersion); "
                                       + "restart syncd so that it matches syncctl")
        }
        self.version = version
        guard let text = try? c.decode(String.self, forKey: .command) else {
            throw ControlProtocolError("the request has no \"command\" string")
        }
        guard let command = Command(rawValue: text) else {
            throw ControlProtocolError("unknown command '\(text)' (known: \(Command.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self.command = command
        do {
            project = try c.decodeIfPresent(String.self, forKey: .project)
            follow = try c.decodeIfPresent(Bool.self, forKey: .follow)
        } catch {
            throw ControlProtocolError("\"project\" must be a string and \"follow\" a boolean")
        }
    }

    /// The request a line holds; throws `ControlProtocolError` naming what is wrong with it.
    public static func decode(line: [UInt8]) throws -> ControlRequest {
        guard line.count <= maxLineBytes else { throw ControlProtocolError("the request is longer than \(maxLineBytes) bytes") }
        guard (try? JSONSerialization.jsonObject(with: Data(line))) is [String: Any] else {
            throw ControlProtocolError("the request is not a JSON object: \(String(decoding: line.prefix(80), as: UTF8.self))")
        }
        do { return try JSONDecoder().decode(ControlRequest.self, from: Data(line)) } catch let error as ControlProtocolError {
            throw error
        } catch {
            throw ControlProtocolError("malformed request: \(error)")
        }
    }
}

/// Why a control request was refused.
public struct ControlProtocolError: Error, CustomStringConvertible {
    public let description: String
    public init(_ text: String) { description = text }
}

/// One project as `status` shows it (`syncctl status --json` prints a list of these; absent values are null).
public struct ProjectStatus: Codable, Sendable, Equatable {
    public var project: String
    /// idle, syncing, paused, or between a failed session and the next try: stalled (its link stopped moving
    /// data for the timeout) or disconnected; connecting while a session opens its link; error when it did not start.
    public var state: String
    public var connected: Bool
    public var pendingChanges: Int
    /// ISO 8601 times of the last push and pull that went through.
    public var lastPush: String?
    public var lastPull: String?
    /// The remote it syncs with, as written in its syncd.yaml.
    public var remote: String?
    /// Paths in conflict, with what the session that found each said.
    public var conflicts: [SyncConflict]
    /// What the last push through a store uploaded.
    public var bytesUploaded: UInt64?
    /// While a failed session waits to be tried again: in how many seconds.
    public var retryInSeconds: Int?
    /// A push or pull in flight: how far it is.
    public var progress: SyncProgress?
    public var bytesSent: UInt64
    public var bytesReceived: UInt64
    public var lastError: String?
    /// A push through a store: the snapshot it made, and each host's part.
    public var snapshot: String?
    public var hosts: [HostStatus]

    public init(project: String, state: String, connected: Bool, pendingChanges: Int, lastPush: String?, lastPull: String?,
                conflicts: [SyncConflict], bytesSent: UInt64, bytesReceived: UInt64, lastError: String?, snapshot: String?, hosts: [HostStatus]) {
        self.project = project
        self.state = state
        self.connected = connected
        self.pendingChanges = pendingChanges
        self.lastPush = lastPush
        self.lastPull = lastPull
        self.conflicts = conflicts
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.lastError = lastError
        self.snapshot = snapshot
        self.hosts = hosts
    }

    enum CodingKeys: String, CodingKey {
        case project, remote, state, connected, conflicts, snapshot, hosts, bytesUploaded = "bytes_uploaded", progress
        case retryInSeconds = "retry_in_seconds"
        case pendingChanges = "pending_changes", lastPush = "last_push", lastPull = "last_pull"
        case bytesSent = "bytes_sent", bytesReceived = "bytes_received", lastError = "last_error"
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(project, forKey: .project)
        try c.encodeIfPresent(remote, forKey: .remote)
        try c.encodeIfPresent(bytesUploaded, forKey: .bytesUploaded)
        try c.encodeIfPresent(retryInSeconds, forKey: .retryInSeconds)
        try c.encodeIfPresent(progress, forKey: .progress)
        try c.encode(state, forKey: .state)
        try c.encode(connected, forKey: .connected)
        try c.encode(pendingChanges, forKey: .pendingChanges)
        try c.encode(lastPush, forKey: .lastPush)
        try c.encode(lastPull, forKey: .lastPull)
        try c.encode(conflicts, forKey: .conflicts)
        try c.encode(bytesSent, forKey: .bytesSent)
        try c.encode(bytesReceived, forKey: .bytesReceived)
        try c.encode(lastError, forKey: .lastError)
        try c.encode(snapshot, forKey: .snapshot)
        try c.encode(hosts, forKey: .hosts)
    }
}

/// One host's part of a project's last push through a store.
public struct HostStatus: Codable, Sendable, Equatable {
    public var host: String
    public var ok: Bool
    public var error: String?
    public var filesChanged: Int
    public var bytesSent: UInt64

    public init(host: String, ok: Bool, error: String?, filesChanged: Int, bytesSent: UInt64) {
        self.host = host
        self.ok = ok
        self.error = error
        self.filesChanged = filesChanged
        self.bytesSent = bytesSent
    }

    enum CodingKeys: String, CodingKey { case host, ok, error, filesChanged = "files_changed", bytesSent = "bytes_sent" }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(host, forKey: .host)
        try c.encode(ok, forKey: .ok)
        try c.encode(error, forKey: .error)
        try c.encode(filesChanged, forKey: .filesChanged)
        try c.encode(bytesSent, forKey: .bytesSent)
    }
}

/// The daemon's answer to a `ControlRequest`: `ok`, or `error` (with `unregistered` when the project is not
/// one the daemon runs, which the caller then syncs on its own), and what the command returns.
public struct ControlAnswer: Codable, Sendable {
    public var version = ControlRequest.currentVersion
    public var ok: Bool
    public var error: String?
    public var unregistered: Bool?
    /// status: the daemon's pid and its projects.
    public var pid: Int32?
    public var projects: [ProjectStatus]?
    /// pause, resume, reload: the project directories concerned (reload: those running now).
    public var directories: [String]?
    /// reload: projects that could not start, with why.
    public var failed: [String: String]?
    /// push, pull: what the session did.
    public var stats: SyncStats?
    /// logs: log lines (a batch of them, for `follow`).
    public var lines: [String]?

    public init(ok: Bool = true) { self.ok = ok }

    public static func failure(_ message: String, unregistered: Bool? = nil) -> ControlAnswer {
        var answer = ControlAnswer(ok: false)
        answer.error = message
        answer.unregistered = unregistered
        return answer
    }

    /// The answer as one line of JSON, newline included.
    public func line() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var data = (try? encoder.encode(self)) ?? Data(#"{"ok":false,"error":"the answer could not be encoded"}"#.utf8)
        data.append(UInt8(ascii: "\n"))
        return data
    }
}
