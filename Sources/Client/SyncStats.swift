import Chunking
import Foundation
import SyncRules
import SyncSystem

/// What a push or pull did; `syncctl --json` prints it as one object.
public struct SyncStats: Codable, Sendable {
    public var direction: String
    public var filesScanned = 0
    public var filesChanged = 0
    public var filesDeleted = 0
    public var filesMoved = 0
    /// Bytes of the changed files' contents (what a copy tool without deduplication would send).
    public var bytesLogical: UInt64 = 0
    /// Chunks making up the changed files.
    public var chunksTotal = 0
    /// Chunks whose bytes crossed the transport.
    public var chunksSent = 0
    /// Bytes written to / read from the transport, after compression, framing included.
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    /// Connections that carried chunk data: 1, or more for a push spread over extra streams (`streams:`).
    public var streams = 1
    public var durationMs: UInt64 = 0
    /// Each conflict the session found or left: its path, and a line on what each side holds and what to do.
    public var conflictList: [SyncConflict] = []
    /// How many conflicts.
    public var conflicts: Int { conflictList.count }
    public var conflictPaths: [RelativePath] { conflictList.map(\.path) }
    /// One line per conflict: what each side holds and what the last sync recorded.
    public var conflictMessages: [String] { conflictList.map(\.line) }
    /// The local project directory and its remote, which `--json` names (docs/JSON.md).
    public var project: String?
    public var remote: String?
    /// Paths pushed before and ignored now, left on the remote (`push --prune-ignored` deletes them).
    public var leftIgnored: [RelativePath] = []
    /// Losing versions of forced operations, and where they were kept.
    public var kept: [KeptCopy] = []
    /// A push through a store: what this machine uploaded to it (pack bytes), the snapshot it made, and each
    /// host's part.
    public var bytesUploaded: UInt64?
    public var snapshot: String?
    public var hosts: [HostResult]?
    /// Remote files a pull left for later because they were being written.
    public var skipped: [String] = []
    /// How many of them the agent said were being written (modified just now, or open for writing): the daemon
    /// pulls again soon for those. Not in `--json` (`skipped` says it in words).
    public var skippedBeingWritten = 0
    public var errors: [String] = []
    public var warnings: [String] = []
    /// Each file that failed, with its cause (and host): `errors` holds one line per cause once grouped
    /// (`groupFailures`), and `--json` has every one here.
    public var failures: [FileFailure] = []
    /// A first push to this remote: what it sent, and where the bytes are (told once, so a surprise shows).
    public var firstPush: TreeSummary?
    /// Each path a push changed, as `push --itemize` lists it (rsync's codes; see `PushPlan.Change`).
    public var itemized: [String] = []
    /// Chunks a host found damaged in the store, by pack (a push through the store mends those packs).
    public package(set) var storeDamaged: [ChunkID: [ChunkID]] = [:]
    /// The project's absolute directory on the remote, as the agent reported it.
    public var remoteDirectory: String?

    public init(direction: String) { self.direction = direction }

    enum CodingKeys: String, CodingKey {
        case direction
        case filesScanned = "files_scanned", filesChanged = "files_changed", filesDeleted = "files_deleted"
        case filesMoved = "files_moved", bytesLogical = "bytes_logical", chunksTotal = "chunks_total"
        case chunksSent = "chunks_sent", bytesSent = "bytes_sent", bytesReceived = "bytes_received"
        case durationMs = "duration_ms", conflictList = "conflicts", skipped, errors, warnings
        case leftIgnored = "left_ignored", kept, project, remote
        case bytesUploaded = "bytes_uploaded", snapshot, hosts
        case remoteDirectory = "remote_directory", streams, failures
    }

    /// Notes a conflict found by a sync: its line for a person (what each side holds, what was kept, how to settle
    /// it), and its record for `syncctl conflicts`. Every conflict of a push or a pull goes through here.
    mutating func conflict(_ record: ConflictRecord, into records: inout [ConflictRecord]) {
        conflictList.append(SyncConflict(path: record.path, message: record.message + "; " + record.advice(quotedPath: shellQuoted(record.path))))
        records.append(record)
    }

    /// Notes a conflict that lasts only this session and is not recorded (a file changed here while a pull ran:
    /// the next pull looks again).
    mutating func conflict(_ path: RelativePath, _ message: String) {
        conflictList.append(SyncConflict(path: path, message: message))
    }

    /// Notes that `path` failed because of `cause`: one line in `errors` (until grouped) and one in `failures`.
    mutating func fail(_ path: RelativePath, _ cause: String) {
        let failure = FileFailure(path: path.description, cause: cause)
        failures.append(failure)
        errors.append(failure.line)
    }

    /// Replaces the per-file lines of `errors` with one line per cause, saying how many files (on which hosts)
    /// and the first `showing` paths: a store every host could not read is one line, not one per file per host.
    public mutating func groupFailures(showing: Int = 3) {
        let perFile = Set(failures.map(\.line))
        // Once grouped, no per-file line is left to group (a second call changes nothing).
        guard failures.count > 1, errors.contains(where: perFile.contains) else { return }
        var order: [String] = []
        var byCause: [String: [FileFailure]] = [:]
        for f in failures {
            if byCause[f.cause] == nil { order.append(f.cause) }
            byCause[f.cause, default: []].append(f)
        }
        var grouped = errors.filter { !perFile.contains($0) }
        for cause in order {
            let group = byCause[cause]!
            if group.count == 1 {
                grouped.append(group[0].line)
                continue
            }
            var hosts: [String] = []
            for f in group { if let h = f.host, !hosts.contains(h) { hosts.append(h) } }
            let shown = group.prefix(showing).map(\.path).joined(separator: ", ")
            let more = group.count > showing ? " and \(group.count - showing) more" : ""
            grouped.append("\(group.count) files" + (hosts.isEmpty ? "" : " on \(hosts.joined(separator: ", "))") + ": \(cause) (\(shown)\(more))")
        }
        errors = grouped
    }

    /// What kind of failure this session ended with, if any: failed operations, else conflicts left.
    public var failure: SyncError.Code? {
        if !errors.isEmpty { return .failed }
        if conflicts > 0 { return .conflict }
        return nil
    }

    /// Exit status per the CLI contract, from `failure`: 1 when operations failed, 3 when conflicts were left, else 0.
    public var exitCode: Int32 { failure?.rawValue ?? 0 }

    /// The JSON object `--json` prints (docs/JSON.md): paths that are not UTF-8 carry `\udcXX` escapes (see `PathText`).
    public func json() -> String { JSONOutput.text(self) }

    enum SchemaKey: String, CodingKey { case schema }

    public func encode(to encoder: any Encoder) throws {
        var schema = encoder.container(keyedBy: SchemaKey.self)
        try schema.encode(JSONOutput.schema, forKey: .schema)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(direction, forKey: .direction)
        try c.encodeIfPresent(project, forKey: .project)
        try c.encodeIfPresent(remote, forKey: .remote)
        try c.encode(filesScanned, forKey: .filesScanned)
        try c.encode(filesChanged, forKey: .filesChanged)
        try c.encode(filesDeleted, forKey: .filesDeleted)
        try c.encode(filesMoved, forKey: .filesMoved)
        try c.encode(bytesLogical, forKey: .bytesLogical)
        try c.encode(chunksTotal, forKey: .chunksTotal)
        try c.encode(chunksSent, forKey: .chunksSent)
        try c.encode(bytesSent, forKey: .bytesSent)
        try c.encode(bytesReceived, forKey: .bytesReceived)
        try c.encode(streams, forKey: .streams)
        try c.encode(durationMs, forKey: .durationMs)
        try c.encode(conflictList, forKey: .conflictList)
        try c.encode(leftIgnored, forKey: .leftIgnored)
        try c.encode(kept, forKey: .kept)
        try c.encodeIfPresent(bytesUploaded, forKey: .bytesUploaded)
        try c.encodeIfPresent(snapshot, forKey: .snapshot)
        try c.encodeIfPresent(hosts, forKey: .hosts)
        try c.encode(skipped, forKey: .skipped)
        try c.encode(errors, forKey: .errors)
        try c.encode(warnings, forKey: .warnings)
        try c.encode(failures, forKey: .failures)
        try c.encodeIfPresent(remoteDirectory, forKey: .remoteDirectory)
    }

    /// The same object with paths in their lossless text form, for the control socket (JSONSerialization
    /// cannot hold the surrogate escapes of the public form).
    public func internalJSON() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(self)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// A short human summary for stderr.
    public func summary() -> String {
        let seconds = formatSeconds(Double(durationMs) / 1000)
        if direction == "push" && filesChanged == 0 && filesDeleted == 0 && filesMoved == 0 && conflicts == 0 && errors.isEmpty {
            return "push: up to date" + (remoteDirectory.map { " (\($0))" } ?? "") + "; \(filesScanned) paths looked at, \(seconds)"
        }
        var s = "\(direction): \(filesChanged) \(direction == "pull" ? "received" : "changed"), \(filesDeleted) deleted"
        if filesMoved > 0 { s += ", \(filesMoved) moved" }
        // "3/40 chunks" only where the total is known to hold what was sent.
        let chunks = chunksTotal >= chunksSent && chunksTotal > 0 ? "\(chunksSent)/\(chunksTotal) chunk\(chunksTotal == 1 ? "" : "s")"
            : "\(chunksSent) chunk\(chunksSent == 1 ? "" : "s")"
        s += "; \(chunks) \(direction == "pull" ? "fetched" : "sent"), \(formatBytes(bytesSent)) out, \(formatBytes(bytesReceived)) in, \(seconds)"
        if conflicts > 0 { s += "; \(conflicts) conflict\(conflicts == 1 ? "" : "s")" }
        if direction == "push", let dir = remoteDirectory { s += "; in \(dir)" }
        return s
    }
}

/// A conflict a push or pull found: both sides changed `path` since the last sync (docs/JSON.md, "conflict").
public struct SyncConflict: Codable, Sendable, Equatable {
    public var path: RelativePath
    public var message: String
    /// The host it is on, in a push to several.
    public var host: String?

    public init(path: RelativePath, message: String, host: String? = nil) {
        self.path = path
        self.message = message
        self.host = host
    }

    /// Its line for a person: "[HOST: ]PATH: message".
    public var line: String { (host.map { "\($0): " } ?? "") + "\(path): \(message)" }
}

/// One file that failed, and why.
public struct FileFailure: Codable, Sendable, Equatable {
    public var host: String?
    public var path: String
    public var cause: String

    init(path: String, cause: String) {
        self.path = path
        self.cause = cause
    }

    /// Its line in `errors`, as it reads before grouping.
    var line: String { (host.map { "\($0): " } ?? "") + "\(path): \(cause)" }
}

/// Durations as people read them: `0.4 s`, `48.2 s`, `12 min 5 s`.
public func formatSeconds(_ seconds: Double) -> String {
    if seconds < 60 { return String(format: "%.1f s", seconds) }
    let whole = Int(seconds.rounded())
    return whole < 3600 ? "\(whole / 60) min \(whole % 60) s" : "\(whole / 3600) h \(whole % 3600 / 60) min"
}

/// 1.5 MB style sizes.
public func formatBytes(_ n: UInt64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var value = Double(n)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 { value /= 1000; unit += 1 }
    return unit == 0 ? "\(n) B" : String(format: "%.1f %@", value, units[unit])
}

/// How far a sync in flight is: what the daemon's `status` shows.
public struct SyncProgress: Codable, Sendable, Equatable {
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var bytesPerSecond: Double
    public var etaSeconds: Int?

    enum CodingKeys: String, CodingKey {
        case bytesDone = "bytes_done", bytesTotal = "bytes_total", bytesPerSecond = "bytes_per_second", etaSeconds = "eta_seconds"
    }

    /// "1.2 MB / 40.0 MB, 3.1 MB/s, 12 s left"
    public var description: String {
        var text = formatBytes(bytesDone) + (bytesTotal > 0 ? " / \(formatBytes(bytesTotal))" : "")
        text += ", \(formatBytes(UInt64(bytesPerSecond)))/s"
        if let eta = etaSeconds { text += ", \(formatSeconds(Double(eta))) left" }
        return text
    }
}

/// Progress of a push or pull: redrawn in place on stderr when it is a terminal, a line every 10 s when it is not
/// (a CI log), none with `--quiet`; and handed to `SyncOptions.onProgress` (the daemon's status). Thread safe.
final class ProgressReporter {
    private let draw: Bool
    private let lines: Bool
    private let observer: (@Sendable (SyncProgress) -> Void)?
    private let label: String
    private let start = Date()
    /// When each output was last given, and whether a line was drawn (to clear at the end).
    private struct Shown {
        var lastDraw = Date.distantPast
        var lastLine = Date()
        var lastObserved = Date.distantPast
        var drawn = false
    }
    private let shown = Locked(Shown())

    init(label: String, options: SyncOptions) {
        self.label = label
        let terminal = isatty(2) != 0
        draw = options.progress && terminal
        lines = options.progress && !terminal
        observer = options.onProgress
    }

    /// Bytes of the parts of a push already done (see `PushSession`): what a part's pipeline reports adds to them.
    private let earlierParts = Locked<UInt64>(0)

    /// A part of a push is over; the next part's progress counts on from its `bytes`.
    func partDone(bytes: UInt64) {
        earlierParts.withLock { $0 += bytes }
    }

    func update(done part: UInt64, total partTotal: UInt64) {
        let earlier = earlierParts.current
        let (done, given) = (earlier + part, partTotal == 0 ? 0 : earlier + partTotal)
        // A file that grew while it was read makes more bytes than the scan counted: never "278 MB / 24 MB".
        let total = given == 0 ? 0 : max(given, done)
        InFlight.note(label, done: done, total: total)
        guard draw || lines || observer != nil else { return }
        shown.withLock { shown in report(done: done, total: total, shown: &shown) }
    }

    private func report(done: UInt64, total: UInt64, shown: inout Shown) {
        let now = Date()
        let elapsed = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        let progress = SyncProgress(bytesDone: done, bytesTotal: total, bytesPerSecond: rate,
                                    etaSeconds: total > done && rate > 0 ? Int(Double(total - done) / rate) : nil)
        if let observer, now.timeIntervalSince(shown.lastObserved) > 0.2 {
            shown.lastObserved = now
            observer(progress)
        }
        if draw && now.timeIntervalSince(shown.lastDraw) > 0.2 {
            shown.lastDraw = now
            FileHandle.standardError.write(Data(("\r\(label): \(progress.description)" + "\u{1B}[K").utf8))
            shown.drawn = true
        }
        if lines && now.timeIntervalSince(shown.lastLine) >= 10 {
            shown.lastLine = now
            FileHandle.standardError.write(Data("\(label): \(progress.description)\n".utf8))
        }
    }

    package func finish() {
        InFlight.clear()
        if let observer { observer(SyncProgress(bytesDone: 0, bytesTotal: 0, bytesPerSecond: 0, etaSeconds: nil)) }
        guard draw, shown.current.drawn else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

/// The push or pull this process has in flight, for what Ctrl-C prints (see `interruptedSummary`).
public enum InFlight {
    private static let current = Locked<(label: String, done: UInt64, total: UInt64)?>(nil)

    static func note(_ label: String, done: UInt64, total: UInt64) { current.withLock { $0 = (label, done, total) } }

    static func clear() { current.withLock { $0 = nil } }

    /// What reached the other side before an interruption, and that the next run resumes; nil when nothing was in
    /// flight.
    public static func interruptedSummary() -> String? {
        guard let (label, done, total) = current.current else { return nil }
        let amount = formatBytes(done) + (total > 0 ? " of \(formatBytes(total))" : "")
        if label == "pull" {
            return "pull interrupted: \(amount) received; no file was left half-written here, and the next pull resumes"
                + " (what arrived is not fetched again)"
        }
        return "\(label) interrupted: \(amount) sent; the files placed on the remote are whole, no file there is half-written,"
            + " and the next push resumes (the chunks the remote holds are not sent again)"
    }
}

/// One host's part of a push or pull to several.
public struct HostResult: Codable, Sendable {
    public var host: String
    /// The push reached the host and did all it could (conflicts aside).
    public var ok: Bool
    public var error: String?
    public var filesChanged = 0
    public var filesDeleted = 0
    public var chunksSent = 0
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var conflicts: [SyncConflict] = []
    public var errors: [String] = []

    package init(host: String, ok: Bool, error: String? = nil) {
        self.host = host
        self.ok = ok
        self.error = error
    }

    /// What a host's push did.
    package init(host: String, stats s: SyncStats) {
        self.init(host: host, ok: s.errors.isEmpty)
        filesChanged = s.filesChanged
        filesDeleted = s.filesDeleted
        chunksSent = s.chunksSent
        bytesSent = s.bytesSent
        bytesReceived = s.bytesReceived
        conflicts = s.conflictList
        var grouped = s
        grouped.groupFailures()
        errors = grouped.errors
    }

    enum CodingKeys: String, CodingKey {
        case host, ok, error, errors, conflicts
        case filesChanged = "files_changed", filesDeleted = "files_deleted", chunksSent = "chunks_sent"
        case bytesSent = "bytes_sent", bytesReceived = "bytes_received"
    }
}
