import Chunking
import SyncRules
import SyncSystem
import Testing
import Wire

/// What a push sends, as a table: one named row per case, in the style of mutagen's `TestReconcile` (issue 28,
/// item 1, a first part). `planPush` is given the local tree and what the last push recorded, and its operations
/// are written as short lines: `rm PATH (was BASE)`, `dir PATH`, `file PATH (over BASE)`, `link PATH -> T (over BASE)`.
/// These pin the push side down before it moves into a sync core of its own.
struct PlanPushTableTests {
    struct Row: CustomTestStringConvertible, Sendable {
        let name: String
        let local: [(String, String)]
        let pushed: [(String, String)]
        var leftAlone: Set<String> = []
        var everything = false
        var localModes: [String: UInt32] = [:]
        var pushedModes: [String: UInt32] = [:]
        let expected: [String]
        var testDescription: String { name }
    }

    static func id(_ content: String) -> ChunkID { ChunkID(hashing: Array(content.utf8)) }

    static func entry(_ path: String, _ spec: String, mode: UInt32) throws -> LocalEntry {
        let p = try RelativePath(path)
        switch spec.first {
        case "d":
            return LocalEntry(path: p, stat: FileStat(device: 1, inode: 1, kind: .directory, permissions: 0o755, size: 0, mtimeNanos: 1, ctimeNanos: 1),
                              content: nil, linkTarget: nil)
        case "l":
            return LocalEntry(path: p, stat: FileStat(device: 1, inode: 1, kind: .symlink, permissions: 0o777, size: 0, mtimeNanos: 1, ctimeNanos: 1),
                              content: nil, linkTarget: Array(spec.dropFirst(2).utf8))
        default:
            let text = String(spec.dropFirst(2))
            let content = text == "?" ? nil : ChunkedContent(chunks: [], digest: id(text), size: UInt64(text.utf8.count))
            return LocalEntry(path: p, stat: FileStat(device: 1, inode: 1, kind: .regular, permissions: mode, size: UInt64(text.utf8.count),
                                                      mtimeNanos: 1_000, ctimeNanos: 1_000),
                              content: content, linkTarget: nil)
        }
    }

    static func recorded(_ spec: String, mode: UInt32) -> SyncedEntry {
        switch spec.first {
        case "d": return SyncedEntry(kind: .directory, digest: nil, target: nil, permissions: mode == 0o644 ? 0o755 : mode, mtimeNanos: 0)
        case "l": return SyncedEntry(kind: .symlink, digest: nil, target: Array(spec.dropFirst(2).utf8), permissions: 0o777, mtimeNanos: 0)
        default:
            let text = String(spec.dropFirst(2))
            return SyncedEntry(kind: .file, digest: id(text), target: nil, permissions: mode, mtimeNanos: 1_000, size: UInt64(text.utf8.count))
        }
    }

    static func describe(_ state: PathState) -> String {
        switch state {
        case .absent: return "absent"
        case .directory: return "dir"
        case .symlink(let t): return "link " + String(decoding: t, as: UTF8.self)
        case .file(let digest):
            for candidate in ["a", "b", "c", "x", "y", "new", "old", ""] where id(candidate) == digest { return "file \(candidate)" }
            return "file ?"
        }
    }

    static func describe(_ op: PushOperation) -> String {
        switch op {
        case .delete(let path, let base): return "rm \(path) (was \(describe(base)))"
        case .directory(let e): return "dir \(e.path)"
        case .file(let e, let base): return "file \(e.path) (over \(describe(base)))"
        case .symlink(let e, let base): return "link \(e.path) -> \(String(decoding: e.linkTarget ?? [], as: UTF8.self)) (over \(describe(base)))"
        }
    }

    static let rows: [Row] = [
        Row(name: "nothing anywhere", local: [], pushed: [], expected: []),
        Row(name: "a new file", local: [("a", "f:a")], pushed: [], expected: ["file a (over absent)"]),
        Row(name: "an unchanged file", local: [("a", "f:a")], pushed: [("a", "f:a")], expected: []),
        Row(name: "a changed file", local: [("a", "f:b")], pushed: [("a", "f:a")], expected: ["file a (over file a)"]),
        Row(name: "a file not hashed yet is sent, the sender drops it if unchanged", local: [("a", "f:?")], pushed: [("a", "f:a")],
            expected: ["file a (over file a)"]),
        Row(name: "a mode change alone", local: [("a", "f:a")], pushed: [("a", "f:a")], localModes: ["a": 0o755],
            expected: ["file a (over file a)"]),
        Row(name: "a deleted file", local: [], pushed: [("a", "f:a")], expected: ["rm a (was file a)"]),
        Row(name: "a deleted file left alone (pull path or ignored now)", local: [], pushed: [("out", "f:a")], leftAlone: ["out"],
            expected: []),
        Row(name: "a new directory", local: [("d", "d")], pushed: [], expected: ["dir d"]),
        Row(name: "an unchanged directory", local: [("d", "d")], pushed: [("d", "d")], expected: []),
        Row(name: "a directory whose mode changed", local: [("d", "d")], pushed: [("d", "d")], pushedModes: ["d": 0o700],
            expected: ["dir d"]),
        Row(name: "a new directory with a file: the directory first", local: [("d", "d"), ("d/a", "f:a")], pushed: [],
            expected: ["dir d", "file d/a (over absent)"]),
        Row(name: "a deleted directory: children before parents", local: [], pushed: [("d", "d"), ("d/a", "f:a"), ("d/e", "d"), ("d/e/b", "f:b")],
            expected: ["rm d/e/b (was file b)", "rm d/e (was dir)", "rm d/a (was file a)", "rm d (was dir)"]),
        Row(name: "a file becoming a directory: the file goes first", local: [("p", "d"), ("p/a", "f:a")], pushed: [("p", "f:x")],
            expected: ["rm p (was file x)", "dir p", "file p/a (over absent)"]),
        Row(name: "a directory becoming a file: what was below goes first", local: [("p", "f:x")],
            pushed: [("p", "d"), ("p/a", "f:a")],
            expected: ["rm p/a (was file a)", "rm p (was dir)", "file p (over absent)"]),
        Row(name: "a file becoming a symlink", local: [("p", "l:target")], pushed: [("p", "f:x")],
            expected: ["rm p (was file x)", "link p -> target (over absent)"]),
        Row(name: "a symlink retargeted", local: [("p", "l:new")], pushed: [("p", "l:old")], expected: ["link p -> new (over link old)"]),
        Row(name: "an unchanged symlink", local: [("p", "l:t")], pushed: [("p", "l:t")], expected: []),
        Row(name: "a symlink becoming a file", local: [("p", "f:x")], pushed: [("p", "l:t")],
            expected: ["rm p (was link t)", "file p (over absent)"]),
        Row(name: "a rename: delete the old name, send the new", local: [("b", "f:a")], pushed: [("a", "f:a")],
            expected: ["rm a (was file a)", "file b (over absent)"]),
        Row(name: "a file placed under what was a file: the parent is cleared", local: [("p", "d"), ("p/q", "d"), ("p/q/a", "f:a")],
            pushed: [("p", "f:x")],
            expected: ["rm p (was file x)", "dir p", "dir p/q", "file p/q/a (over absent)"]),
        Row(name: "a restore sends every entry, changed or not", local: [("a", "f:a"), ("d", "d")], pushed: [("a", "f:a"), ("d", "d")],
            everything: true, expected: ["dir d", "file a (over file a)"]),
        Row(name: "a restore still deletes what the snapshot lacks", local: [("a", "f:a")], pushed: [("a", "f:a"), ("b", "f:b")],
            everything: true, expected: ["rm b (was file b)", "file a (over file a)"]),
        Row(name: "a left-alone directory keeps what is below it", local: [], pushed: [("out", "d"), ("out/x", "f:x")],
            leftAlone: ["out", "out/x"], expected: []),
        Row(name: "an empty file", local: [("e", "f:")], pushed: [], expected: ["file e (over absent)"]),
        Row(name: "a file emptied", local: [("e", "f:")], pushed: [("e", "f:a")], expected: ["file e (over file a)"]),
        Row(name: "deletes in reverse path order, files after directories are made", local: [("z", "d"), ("z/c", "f:c")],
            pushed: [("a", "f:a"), ("b", "f:b")],
            expected: ["rm b (was file b)", "rm a (was file a)", "dir z", "file z/c (over absent)"]),
        Row(name: "a type change below an unchanged directory", local: [("d", "d"), ("d/p", "d")], pushed: [("d", "d"), ("d/p", "f:x")],
            expected: ["rm d/p (was file x)", "dir d/p"]),
    ]

    @Test(arguments: rows)
    func planPushTable(_ row: Row) throws {
        let local = try row.local.map { try Self.entry($0.0, $0.1, mode: row.localModes[$0.0] ?? 0o644) }
        var pushed: [RelativePath: SyncedEntry] = [:]
        for (path, spec) in row.pushed { pushed[try RelativePath(path)] = Self.recorded(spec, mode: row.pushedModes[path] ?? 0o644) }
        let ops = planPush(local: local, pushed: pushed, everything: row.everything,
                           isLeftAlone: { path, _ in row.leftAlone.contains(path.description) })
        #expect(ops.map(Self.describe) == row.expected, "\(row.name)")
    }
}
