import Chunking
import Foundation
import LocalState
import SyncRules
import SyncSystem

/// What `push --dry-run` found a push would do: each change with its rsync-style code, and the totals.
public struct PushPlan: Codable, Sendable {
    public struct Change: Codable, Sendable {
        /// rsync's itemize code: `>f+++++++++` a new file, `>f.st......` a changed one (s: size, t: time, p:
        /// permissions), `.f..t......` one whose content is as last pushed, `cd+++++++++` a new directory,
        /// `cL+++++++++` a new symlink, `*deleting  ` a deletion.
        public var code: String
        public var path: String
        /// The file's size (what sending it may cost at most).
        public var bytes: UInt64
    }
    public var remote: String
    public var changes: [Change] = []
    public var filesToSend = 0
    public var bytesToSend: UInt64 = 0
    public var deletions = 0
    public var directories = 0
    /// Files whose content is as last pushed, whose time or mode a push would set (`.f..t......`).
    public var attributesOnly = 0
    /// Files the stat cache could not vouch for, read and hashed to tell (nothing is recorded).
    public var filesRead = 0
    public var warnings: [String] = []

    enum CodingKeys: String, CodingKey {
        case remote, changes, warnings, deletions, directories
        case filesToSend = "files_to_send", bytesToSend = "bytes_to_send", filesRead = "files_read", attributesOnly = "attributes_only"
    }

    /// One line for people: what a push would do.
    public var summary: String {
        if changes.isEmpty { return "dry run: \(remote) is up to date as far as this machine knows; nothing was changed" }
        var parts = ["send \(filesToSend) file\(filesToSend == 1 ? "" : "s") (\(formatBytes(bytesToSend)) at most)"]
        if attributesOnly > 0 { parts.append("set the time or mode of \(attributesOnly) unchanged file\(attributesOnly == 1 ? "" : "s")") }
        if directories > 0 { parts.append("make or change \(directories) director\(directories == 1 ? "y" : "ies")") }
        if deletions > 0 { parts.append("delete \(deletions)") }
        return "dry run: a push to \(remote) would " + parts.joined(separator: ", ")
            + "; nothing was changed here or there (changes made on the remote since the last push are found by the push itself)"
    }
}

/// rsync's itemize code for `op`, given what the last push recorded there.
func itemizeCode(_ op: PushOperation, pushed: SyncedEntry?) -> String {
    func flags(_ e: LocalEntry, sizeAndTime: Bool) -> String {
        guard let old = pushed, old.kind == e.synced.kind else { return "+++++++++" }
        let s = sizeAndTime && old.size != e.stat.size ? "s" : "."
        let t = sizeAndTime && old.mtimeNanos != e.stat.mtimeNanos ? "t" : "."
        let p = old.permissions != e.stat.permissions ? "p" : "."
        return "." + s + t + p + "....."
    }
    switch op {
    case .file(let e, _):
        // The same content with other attributes (a file rewritten as it was): nothing to send, as rsync's `.f`.
        let same = pushed.map { $0.kind == .file && $0.digest != nil && $0.digest == e.content?.digest } ?? false
        return (same ? ".f" : ">f") + flags(e, sizeAndTime: true)
    case .symlink(let e, _): return "cL" + flags(e, sizeAndTime: false)
    case .directory(let e): return "cd" + flags(e, sizeAndTime: false)
    case .delete: return "*deleting  "
    }
}

extension PushSession {
    /// `push --dry-run`: what a push would send and delete, from the local tree and what the last push recorded.
    /// No connection is made, nothing is sent, and nothing is recorded: files the stat cache cannot vouch for are
    /// read and hashed to tell whether they changed, and forgotten.
    public func dryRun() throws -> PushPlan {
        let state = try project.openState()
        let pushed = try state.load(.pushed)
        var scan = try LocalScanner(project: project, state: state).scan(roots: nil)
        var plan = PushPlan(remote: project.config.remote.description)
        plan.warnings = scan.warnings.map(\.description)
        let chunker = FileChunker(project.chunking)
        for i in scan.entries.indices where scan.entries[i].stat.kind == .regular && scan.entries[i].content == nil {
            plan.filesRead += 1
            switch LocalScanner.hash(scan.entries[i], in: project, with: chunker) {
            case .success(let file): scan.entries[i].content = ChunkedContent(chunks: file.chunks, digest: file.digest, size: file.stat.size)
            case .failure(let warning): plan.warnings.append(warning.description)
            }
        }
        let local = scan.entries.filter { $0.stat.kind != .regular || $0.content != nil }
        for op in planPush(local: local, pushed: pushed, isLeftAlone: { [self] in isLeftAlone($0, $1) }) {
            var change = PushPlan.Change(code: itemizeCode(op, pushed: pushed[op.path]), path: op.path.description, bytes: 0)
            switch op {
            case .file(let e, _):
                guard change.code.hasPrefix(">") else { plan.attributesOnly += 1; break }
                change.bytes = e.stat.size
                plan.filesToSend += 1
                plan.bytesToSend += e.stat.size
            case .symlink: plan.filesToSend += 1
            case .directory: plan.directories += 1
            case .delete: plan.deletions += 1
            }
            plan.changes.append(change)
        }
        return plan
    }
}
