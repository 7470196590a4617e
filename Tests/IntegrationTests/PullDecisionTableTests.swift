import Chunking
@testable import Engine
import Testing
import Wire

/// What a pull takes, as a table: `decidePull` and `decidePullOfDeletion`, one named row per case over three states
/// (here, the remote, what the last sync recorded), in the style of mutagen's `TestReconcile` (issue 28, item 1,
/// a first part; the push side is `PlanPushTableTests`).
struct PullDecisionTableTests {
    static let a = PathState.file(ChunkID(hashing: Array("a".utf8)))
    static let b = PathState.file(ChunkID(hashing: Array("b".utf8)))
    static let c = PathState.file(ChunkID(hashing: Array("c".utf8)))
    static let dir = PathState.directory
    static let link = PathState.symlink(Array("t".utf8))
    static let none = PathState.absent

    struct Row: CustomTestStringConvertible, Sendable {
        let name: String
        let local: PathState
        let remote: PathState
        let recorded: PathState?
        var force = false
        var resolving = false
        let expected: PullDecision
        var testDescription: String { name }
    }

    static let offered: [Row] = [
        Row(name: "new on the remote", local: none, remote: a, recorded: nil, expected: .take),
        Row(name: "the same on both sides, never recorded", local: a, remote: a, recorded: nil, expected: .same),
        Row(name: "the same on both sides, recorded", local: a, remote: a, recorded: a, expected: .same),
        Row(name: "changed on the remote only", local: a, remote: b, recorded: a, expected: .take),
        Row(name: "changed here only: the remote still holds what was pulled", local: b, remote: a, recorded: a, expected: .conflict),
        Row(name: "changed on both sides", local: b, remote: c, recorded: a, expected: .conflict),
        Row(name: "changed on both sides to the same content", local: b, remote: b, recorded: a, expected: .same),
        Row(name: "deleted here, unchanged there: stays deleted", local: none, remote: a, recorded: a, expected: .staysDeleted),
        Row(name: "deleted here, changed there: the new version comes", local: none, remote: b, recorded: a, expected: .take),
        Row(name: "made here and there, never synced, different", local: a, remote: b, recorded: nil, expected: .conflict),
        Row(name: "a local file where the remote has a new directory", local: a, remote: dir, recorded: nil, expected: .conflict),
        Row(name: "a directory on both sides", local: dir, remote: dir, recorded: nil, expected: .same),
        Row(name: "a file that became a directory there", local: a, remote: dir, recorded: a, expected: .take),
        Row(name: "a directory that became a file there", local: dir, remote: a, recorded: dir, expected: .take),
        Row(name: "a symlink retargeted there", local: link, remote: .symlink(Array("u".utf8)), recorded: link, expected: .take),
        Row(name: "forced over a local change", local: b, remote: c, recorded: a, force: true, expected: .keepLocalAsideThenTake),
        Row(name: "forced, local directory over a remote directory", local: dir, remote: dir, recorded: a, force: true, expected: .same),
        Row(name: "forced, local directory made where a file was, remote directory too", local: dir, remote: dir, recorded: nil,
            force: true, expected: .same),
        Row(name: "forced, a local directory where the remote has a file", local: dir, remote: a, recorded: b, force: true,
            expected: .keepLocalAsideThenTake),
        Row(name: "forced, unchanged here: simply taken", local: a, remote: b, recorded: a, force: true, expected: .take),
        Row(name: "resolve --keep remote of a path deleted here", local: none, remote: a, recorded: a, force: true, resolving: true,
            expected: .take),
        Row(name: "resolve --keep remote over a local edit", local: b, remote: a, recorded: a, force: true, resolving: true,
            expected: .keepLocalAsideThenTake),
        Row(name: "the remote wiped and made again: nothing recorded, same content", local: a, remote: a, recorded: nil, expected: .same),
        Row(name: "a local symlink where the remote has a file, never synced", local: link, remote: a, recorded: nil, expected: .conflict),
    ]

    static let deletions: [Row] = [
        Row(name: "deleted there, unchanged here: deleted here", local: a, remote: none, recorded: a, expected: .take),
        Row(name: "deleted on both sides: the record goes", local: none, remote: none, recorded: a, expected: .take),
        Row(name: "deleted there, changed here: a conflict, the local version stays", local: b, remote: none, recorded: a,
            expected: .conflict),
        Row(name: "deleted there, changed here, forced: kept aside", local: b, remote: none, recorded: a, force: true,
            expected: .keepLocalAsideThenTake),
        Row(name: "deleted there, a local directory now, forced: left", local: dir, remote: none, recorded: a, force: true,
            expected: .nothing),
        Row(name: "a directory deleted there, unchanged here", local: dir, remote: none, recorded: dir, expected: .take),
    ]

    @Test(arguments: offered)
    func anOfferedEntry(_ row: Row) {
        #expect(decidePull(local: row.local, remote: row.remote, recorded: row.recorded, forced: row.force, resolving: row.resolving)
                == row.expected, "\(row.name)")
    }

    @Test(arguments: deletions)
    func aRemoteDeletion(_ row: Row) {
        #expect(decidePullOfDeletion(local: row.local, recorded: row.recorded ?? .absent, force: row.force) == row.expected, "\(row.name)")
    }
}
