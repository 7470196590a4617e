import Wire

/// How a path compares across a sync, seen from the side that would be written (the remote in a push, this side in
/// a pull): what is there now (`current`), what the other side offers (`incoming`), and what both held at the last
/// sync (`base`). Every conflict rule of both directions starts from this one comparison.
public enum ThreeWay: Equatable, Sendable {
    /// `current` already is `incoming`: nothing to write.
    case alreadyEqual
    /// `current` is what the last sync recorded: only the other side changed it, and its version is taken.
    case unchangedHere
    /// `current` is gone, though the last sync recorded something: deleted on this side since. `changedThere`
    /// says whether the other side changed it meanwhile.
    case deletedHere(changedThere: Bool)
    /// `current` changed since the last sync, and is not what the other side offers: changed on both sides.
    case changedBoth
}

/// Compares three states of one path. `base` nil means the path was never synced (as if it were absent then).
/// `currentIsBase` overrides the plain comparison of `current` with `base` when the writer knows more than the
/// states say (the agent: a file it placed itself, unchanged since, though under another digest).
public func threeWay(current: PathState, incoming: PathState, base: PathState?, currentIsBase: Bool? = nil) -> ThreeWay {
    if current == incoming { return .alreadyEqual }
    let last = base ?? .absent
    if currentIsBase ?? (current == last) { return .unchangedHere }
    if current == .absent { return .deletedHere(changedThere: incoming != last) }
    return .changedBoth
}

/// What a sync does with one path, in either direction.
public enum SyncDecision: Equatable, Sendable {
    /// Both sides hold the same: at most the record is brought up to date.
    case same
    /// Synced once, deleted on the written side since, unchanged on the other: it stays deleted (a pull).
    case staysDeleted
    /// Changed on the written side since the last sync, and not forced: that version stays, a conflict is reported.
    case conflict
    /// Forced over a change: what is there is kept aside under a conflict name first, then the offer is taken.
    case keepAsideThenTake
    /// Forced over a directory by a directory (or a deletion of one): nothing to do to it.
    case nothing
    /// The offer is taken: placed, or (for a deletion) what is there deleted or the record dropped.
    case take
}

/// What the agent does with one operation of a push: `incoming` is what the push places (`.absent` for a delete),
/// `base` what the client believes the remote holds. A forced operation wins over a change on the remote, whose
/// version is kept beside it; one over a deletion on the remote just places the local version.
public func decidePushAtRemote(current: PathState, incoming: PathState, base: PathState, currentIsBase: Bool? = nil,
                               forced: Bool) -> SyncDecision {
    switch threeWay(current: current, incoming: incoming, base: base, currentIsBase: currentIsBase) {
    case .alreadyEqual: return .same
    case .unchangedHere: return .take
    case .deletedHere: return forced ? .take : .conflict
    case .changedBoth: return forced ? .keepAsideThenTake : .conflict
    }
}

/// What a pull does with a remote entry it is offered: `local` is here, `remote` there, `recorded` what the last
/// sync recorded (nil: never synced). `forced` is `pull --force` or a resolve, `resolving` a resolve alone
/// (`resolve --keep remote`, which brings back even a file deleted here).
public func decidePull(local: PathState, remote: PathState, recorded: PathState?, forced: Bool, resolving: Bool) -> SyncDecision {
    switch threeWay(current: local, incoming: remote, base: recorded) {
    case .alreadyEqual: return .same
    case .unchangedHere: return .take
    case .deletedHere(let changedThere): return changedThere || resolving ? .take : .staysDeleted
    case .changedBoth:
        guard forced else { return .conflict }
        return remote == .directory && local == .directory ? .nothing : .keepAsideThenTake
    }
}

/// A pulled path the remote no longer has (`recorded`: what the last pull placed).
public func decidePullOfDeletion(local: PathState, recorded: PathState, forced: Bool) -> SyncDecision {
    switch threeWay(current: local, incoming: .absent, base: recorded) {
    case .alreadyEqual, .unchangedHere, .deletedHere: return .take
    case .changedBoth:
        guard forced else { return .conflict }
        return local == .directory ? .nothing : .keepAsideThenTake
    }
}
