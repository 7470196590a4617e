import Chunking
import Foundation
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
    public var conflicts = 0
    public var conflictPaths: [RelativePath] = []
    /// One line per conflict: what each side holds and what the last sync recorded.
    public var conflictMessages: [String] = []
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
    public internal(set) var storeDamaged: [ChunkID: [ChunkID]] = [:]
    /// The project's absolute directory on the remote, as the agent reported it.
    public var remoteDirectory: String?

    public init(direction: String) { self.direction = direction }

    enum CodingKeys: String, CodingKey {
        case direction
        case filesScanned = "files_scanned", filesChanged = "files_changed", filesDeleted = "files_deleted"
        case filesMoved = "files_moved", bytesLogical = "bytes_logical", chunksTotal = "chunks_total"
        case chunksSent = "chunks_sent", bytesSent = "bytes_sent", bytesReceived = "bytes_received"
        case durationMs = "duration_ms", conflicts, conflictPaths = "conflict_paths", skipped, errors, warnings
        case conflictMessages = "conflict_messages", leftIgnored = "left_ignored", kept
        case bytesUploaded = "bytes_uploaded", snapshot, hosts
        case remoteDirectory = "remote_directory", streams, failures
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

    /// Exit code per the CLI contract: 1 when operations failed, 3 when conflicts were left, else 0.
    public var exitCode: Int32 {
        if !errors.isEmpty { return 1 }
        if conflicts > 0 { return 3 }
        return 0
    }

    /// The JSON object `--json` prints: paths that are not UTF-8 carry `\udcXX` escapes (see `PathText`).
    public func json() -> String { PathText.publicJSON(Array(internalJSON().utf8)) }

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

/// Progress on stderr when it is a terminal: bytes, rate, ETA. Thread safe.
final class ProgressReporter {
    private let enabled: Bool
    private let label: String
    private let start = Date()
    private var lastDraw = Date.distantPast
    private let lock = NSLock()
    private var drawn = false

    init(label: String, enabled: Bool) {
        self.label = label
        self.enabled = enabled && isatty(2) != 0
    }

    func update(done: UInt64, total: UInt64) {
        guard enabled else { return }
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) > 0.2 else { return }
        lastDraw = now
        let elapsed = max(now.timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        var line = "\r\(label): \(formatBytes(done))"
        if total > 0 { line += " / \(formatBytes(total))" }
        line += "  \(formatBytes(UInt64(rate)))/s"
        if total > done && rate > 0 { line += "  ETA \(Int(Double(total - done) / rate))s" }
        FileHandle.standardError.write(Data((line + "\u{1B}[K").utf8))
        drawn = true
    }

    func finish() {
        guard enabled, drawn else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

