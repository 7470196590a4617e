import Chunking
import Foundation
import LocalState
import SyncRules
import SyncSystem
import Wire

/// Where the losing version of a forced operation was kept: `copy` beside `path`, on `side` ("local" or
/// "remote").
public struct KeptCopy: Codable, Sendable, Equatable {
    public let path: RelativePath
    public let copy: RelativePath
    public let side: String
}

/// The stamp in this session's conflict copy names: the laptop's local time, `YYYYMMDD-HHMMSS`.
func conflictStamp() -> String { formatTime(wallClockNanos(), compact: true) }

/// `text` as one POSIX shell word.
public func shellQuote(_ text: String) -> String {
    if !text.isEmpty && text.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=:@,+%".contains($0) }) && text.unicodeScalars.allSatisfy(\.isASCII) {
        return text
    }
    return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// A path as a shell word, for commands suggested in messages.
func shellQuoted(_ path: RelativePath) -> String {
    if let text = String(validating: path.bytes, as: UTF8.self), !text.contains("\n") { return shellQuote(text) }
    // Not printable as one quoted word: bash's $'…' form, byte by byte.
    var out = "$'"
    for b in path.bytes {
        if b >= 0x20 && b < 0x7F && b != UInt8(ascii: "'") && b != UInt8(ascii: "\\") { out.unicodeScalars.append(Unicode.Scalar(b)) } else {
            out += String(format: "\\x%02x", b)
        }
    }
    return out + "'"
}

extension ConflictSide {
    /// "file 3a4f09c1b2e7 (12.0 KB, modified 2026-12-01 07:40:12)".
    var shown: String {
        switch kind {
        case .absent: return "absent"
        case .directory: return "a directory"
        case .symlink: return "a symlink to \(displayPath(target ?? []))"
        case .file:
            var text = "file \(digest.map { String($0.hex.prefix(12)) } ?? "?")"
            var details: [String] = []
            if size > 0 || mtimeNanos != 0 { details.append(formatBytes(size)) }
            if mtimeNanos != 0 { details.append("modified " + formatTime(mtimeNanos)) }
            if !details.isEmpty { text += " (" + details.joined(separator: ", ") + ")" }
            return text
        }
    }
}

/// One conflict as `syncctl conflicts` shows it.
public struct ConflictReport: Codable, Sendable {
    public struct Side: Codable, Sendable {
        public let kind: String
        public let size: UInt64?
        public let mtime: String?
        public let digest: String?
        public let target: RelativePath?
    }
    public let path: RelativePath
    /// "push": the remote changed a path this side owns; "pull": this side changed a remote-owned path.
    public let found: String
    /// When the conflict was first found (ISO 8601).
    public let since: String
    public let local: Side
    public let remote: Side
    public let recorded: Side
    public let message: String

    /// The sides are `local_side`, `remote_side` and `recorded_side`: `remote` is the remote's name everywhere
    /// else in syncctl's JSON (docs/JSON.md).
    enum CodingKeys: String, CodingKey {
        case path, found, since, message, local = "local_side", remote = "remote_side", recorded = "recorded_side"
    }
}

extension ConflictReport.Side {
    init(_ side: ConflictSide) {
        let iso = ISO8601DateFormatter()
        switch side.kind {
        case .absent: self.init(kind: "absent", size: nil, mtime: nil, digest: nil, target: nil)
        case .directory: self.init(kind: "directory", size: nil, mtime: nil, digest: nil, target: nil)
        case .symlink:
            self.init(kind: "symlink", size: nil, mtime: nil, digest: nil, target: side.target.flatMap { try? RelativePath(bytes: $0) })
        case .file:
            self.init(kind: "file", size: side.size,
                      mtime: side.mtimeNanos == 0 ? nil : iso.string(from: Date(timeIntervalSince1970: Double(side.mtimeNanos) / 1e9)),
                      digest: side.digest?.hex, target: nil)
        }
    }
}

extension Project {
    /// Every path in conflict, with each side as last seen by a sync (this side re-read from disk now).
    public func conflicts() throws -> [ConflictReport] {
        let state = try openState()
        let records = try state.conflicts()
        let cache = try state.loadFiles(paths: records.map(\.path))
        let iso = ISO8601DateFormatter()
        return records.map { record in
            var local = record.local
            if let st = try? tree.lstat(record.path) {
                switch st.kind {
                case .regular:
                    let digest = cache[record.path].flatMap { $0.stat.sameContentIdentity(as: st) ? $0.digest : nil }
                        ?? (try? FileChunker(chunking).chunk(tree.openForReading(record.path)).digest)
                    local = ConflictSide(kind: .file, digest: digest, size: st.size, mtimeNanos: st.mtimeNanos)
                case .directory: local = ConflictSide(kind: .directory)
                case .symlink:
                    let target = (try? tree.openParent(record.path, create: false)).flatMap { $0 }
                        .flatMap { try? Tree.readLink(at: $0, name: record.path.name, shown: record.path.description) }
                    local = ConflictSide(kind: .symlink, target: target)
                case .other: break
                }
            } else {
                local = .absent
            }
            return ConflictReport(path: record.path, found: record.found.rawValue,
                                  since: iso.string(from: Date(timeIntervalSince1970: Double(record.sinceNanos) / 1e9)),
                                  local: .init(local), remote: .init(record.remote), recorded: .init(record.recorded),
                                  message: record.message)
        }
    }

    /// The paths in conflict now, as recorded by the last pushes and pulls.
    func conflictPaths(found: ConflictRecord.Found? = nil) throws -> [RelativePath] {
        try openState().conflicts().filter { found == nil || $0.found == found }.map(\.path)
    }
}

extension Project {
    /// The paths in conflict found by a push ("push") or a pull ("pull").
    public func conflictPathsFound(by kind: String) throws -> [RelativePath] {
        try conflictPaths(found: ConflictRecord.Found(rawValue: kind))
    }

    /// A path given on the command line, as a path of this project: absolute (inside the project), or relative
    /// to the current directory when that is inside the project, else to the project's root. The bytes are
    /// taken from the process's own argv, so a name that is not UTF-8 arrives exact.
    public func relativePath(forArgument argument: String) throws -> RelativePath {
        let raw = rawArgument(argument)
        let root = Array(directory.utf8)
        var absolute: [UInt8]
        if raw.first == UInt8(ascii: "/") {
            absolute = raw
        } else {
            let cwd = Array(FileManager.default.currentDirectoryPath.utf8)
            let insideRoot = cwd == root || cwd.starts(with: root + [UInt8(ascii: "/")])
            absolute = (insideRoot ? cwd : root) + [UInt8(ascii: "/")] + raw
        }
        var parts: [[UInt8]] = []
        for part in absolute.split(separator: UInt8(ascii: "/")) {
            if part.elementsEqual([UInt8(ascii: ".")]) { continue }
            if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) { _ = parts.popLast(); continue }
            parts.append(Array(part))
        }
        let rootParts = root.split(separator: UInt8(ascii: "/")).map(Array.init)
        guard parts.count > rootParts.count, Array(parts.prefix(rootParts.count)) == rootParts else {
            throw SyncError("\(argument): not a path inside the project \(directory)", code: .usage)
        }
        do {
            return try RelativePath(bytes: parts.dropFirst(rootParts.count).joined(separator: [UInt8(ascii: "/")]).map { $0 })
        } catch {
            throw SyncError("\(argument): \(error)", code: .usage)
        }
    }
}

/// The bytes of the command-line argument that reads as `argument` (Swift's arguments are repaired UTF-8, so a
/// name that is not UTF-8 would otherwise be lost); `argument`'s own UTF-8 when none matches.
func rawArgument(_ argument: String) -> [UInt8] {
    for i in 1..<Int(CommandLine.argc) {
        guard let pointer = CommandLine.unsafeArgv[i] else { continue }
        if String(cString: pointer) == argument {
            return Array(UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self), count: strlen(pointer)))
        }
    }
    return Array(argument.utf8)
}

extension SyncStats {
    /// Adds what a second session of the same command did (`push --force` resolving pull conflicts too).
    /// Starts every line meant for a person (conflicts, errors, warnings, skipped paths) with `host`, for a
    /// summary of several hosts.
    package mutating func attribute(to host: String) {
        for i in conflictList.indices where conflictList[i].host == nil { conflictList[i].host = host }
        for keyPath in [\SyncStats.errors, \.warnings, \.skipped] {
            self[keyPath: keyPath] = self[keyPath: keyPath].map { "\(host): \($0)" }
        }
        for i in failures.indices where failures[i].host == nil { failures[i].host = host }
    }

    public mutating func absorb(_ other: SyncStats) {
        filesScanned += other.filesScanned
        filesChanged += other.filesChanged
        filesDeleted += other.filesDeleted
        bytesLogical += other.bytesLogical
        chunksTotal += other.chunksTotal
        chunksSent += other.chunksSent
        bytesSent += other.bytesSent
        bytesReceived += other.bytesReceived
        durationMs += other.durationMs
        conflictList += other.conflictList
        skipped += other.skipped
        skippedBeingWritten += other.skippedBeingWritten
        errors += other.errors
        failures += other.failures
        itemized += other.itemized
        warnings += other.warnings
        kept += other.kept
    }
}
