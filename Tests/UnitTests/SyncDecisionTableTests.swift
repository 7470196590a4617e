import Chunking
import SyncRules
import Testing
import Wire

/// The three-way check of both directions, as tables: one named row per case over three states (the written side,
/// the offered side, what the last sync recorded), in the style of mutagen's `TestReconcile`. What a pull takes
/// (`decidePull`, `decidePullOfDeletion`) and what the agent does with each operation of a push
/// (`decidePushAtRemote`) all start from `threeWay`; what a push sends is `PlanPushTableTests`.
struct SyncDecisionTableTests {
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
        let expected: SyncDecision
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
        Row(name: "forced over a local change", local: b, remote: c, recorded: a, force: true, expected: .keepAsideThenTake),
        Row(name: "forced, local directory over a remote directory", local: dir, remote: dir, recorded: a, force: true, expected: .same),
        Row(name: "forced, local directory made where a file was, remote directory too", local: dir, remote: dir, recorded: nil,
            force: true, expected: .same),
        Row(name: "forced, a local directory where the remote has a file", local: dir, remote: a, recorded: b, force: true,
            expected: .keepAsideThenTake),
        Row(name: "forced, unchanged here: simply taken", local: a, remote: b, recorded: a, force: true, expected: .take),
        Row(name: "resolve --keep remote of a path deleted here", local: none, remote: a, recorded: a, force: true, resolving: true,
            expected: .take),
        Row(name: "resolve --keep remote over a local edit", local: b, remote: a, recorded: a, force: true, resolving: true,
            expected: .keepAsideThenTake),
        Row(name: "the remote wiped and made again: nothing recorded, same content", local: a, remote: a, recorded: nil, expected: .same),
        Row(name: "a local symlink where the remote has a file, never synced", local: link, remote: a, recorded: nil, expected: .conflict),
    ]

    static let deletions: [Row] = [
        Row(name: "deleted there, unchanged here: deleted here", local: a, remote: none, recorded: a, expected: .take),
        Row(name: "deleted on both sides: the record goes", local: none, remote: none, recorded: a, expected: .take),
        Row(name: "deleted there, changed here: a conflict, the local version stays", local: b, remote: none, recorded: a,
            expected: .conflict),
        Row(name: "deleted there, changed here, forced: kept aside", local: b, remote: none, recorded: a, force: true,
            expected: .keepAsideThenTake),
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
        #expect(decidePullOfDeletion(local: row.local, recorded: row.recorded ?? .absent, forced: row.force) == row.expected, "\(row.name)")
    }

    /// One operation of a push at the agent: `current` is what the remote holds, `incoming` what the push places
    /// (`.absent`: a delete), `base` what the client believes the remote holds.
    struct PushRow: CustomTestStringConvertible, Sendable {
        let name: String
        let current: PathState
        let incoming: PathState
        let base: PathState
        var currentIsBase: Bool? = nil
        var force = false
        let expected: SyncDecision
        var testDescription: String { name }
    }

    static let pushed: [PushRow] = [
        PushRow(name: "a new file", current: none, incoming: a, base: none, expected: .take),
        PushRow(name: "a file changed here, unchanged there", current: a, incoming: b, base: a, expected: .take),
        PushRow(name: "a file the remote already holds", current: b, incoming: b, base: a, expected: .same),
        PushRow(name: "changed on both sides", current: c, incoming: b, base: a, expected: .conflict),
        PushRow(name: "changed on both sides, forced: the remote's kept aside", current: c, incoming: b, base: a, force: true,
                expected: .keepAsideThenTake),
        PushRow(name: "deleted on the remote, changed here: a conflict", current: none, incoming: b, base: a, expected: .conflict),
        PushRow(name: "deleted on the remote, changed here, forced: placed, nothing to keep", current: none, incoming: b, base: a,
                force: true, expected: .take),
        PushRow(name: "made on both sides, never synced, different", current: c, incoming: b, base: none, expected: .conflict),
        PushRow(name: "a file the agent placed for this client, though the client's record differs", current: c, incoming: b, base: a,
                currentIsBase: true, expected: .take),
        PushRow(name: "a directory where a file goes", current: dir, incoming: a, base: none, expected: .conflict),
        PushRow(name: "a new directory, a file in the way", current: a, incoming: dir, base: none, expected: .conflict),
        PushRow(name: "a new directory, a file in the way, forced", current: a, incoming: dir, base: none, force: true,
                expected: .keepAsideThenTake),
        PushRow(name: "a directory the remote already has", current: dir, incoming: dir, base: none, expected: .same),
        PushRow(name: "a symlink retargeted here", current: link, incoming: .symlink(Array("u".utf8)), base: link, expected: .take),
        PushRow(name: "a symlink retargeted on both sides", current: .symlink(Array("v".utf8)), incoming: .symlink(Array("u".utf8)),
                base: link, expected: .conflict),
        PushRow(name: "a delete of what the remote still holds", current: a, incoming: none, base: a, expected: .take),
        PushRow(name: "a delete of what the remote changed", current: b, incoming: none, base: a, expected: .conflict),
        PushRow(name: "a delete of what the remote changed, forced: kept aside", current: b, incoming: none, base: a, force: true,
                expected: .keepAsideThenTake),
        PushRow(name: "a delete of what the remote deleted too", current: none, incoming: none, base: a, expected: .same),
        PushRow(name: "a delete of a file the remote made a directory", current: dir, incoming: none, base: a, expected: .conflict),
    ]

    @Test(arguments: pushed)
    func anOperationOfAPush(_ row: PushRow) {
        #expect(decidePushAtRemote(current: row.current, incoming: row.incoming, base: row.base, currentIsBase: row.currentIsBase,
                                   forced: row.force) == row.expected, "\(row.name)")
    }

    /// The comparison itself, the same in both directions.
    @Test func theThreeWayComparison() {
        let (a, b, c, none) = (Self.a, Self.b, Self.c, Self.none)
        #expect(threeWay(current: a, incoming: a, base: nil) == .alreadyEqual)
        #expect(threeWay(current: a, incoming: b, base: a) == .unchangedHere)
        #expect(threeWay(current: none, incoming: a, base: nil) == .unchangedHere, "never synced: as if absent then")
        #expect(threeWay(current: none, incoming: a, base: a) == .deletedHere(changedThere: false))
        #expect(threeWay(current: none, incoming: b, base: a) == .deletedHere(changedThere: true))
        #expect(threeWay(current: c, incoming: b, base: a) == .changedBoth)
        #expect(threeWay(current: c, incoming: b, base: a, currentIsBase: true) == .unchangedHere)
        #expect(threeWay(current: a, incoming: b, base: a, currentIsBase: false) == .changedBoth)
    }
}
