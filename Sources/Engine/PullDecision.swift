import Wire

/// What a pull does with one path, decided from three states alone: what is here, what the remote holds, and what
/// the last sync recorded. The rules live here, away from the I/O, so that a table can pin them down
/// (`PullDecisionTableTests`); `PullSession` acts on the answer.
enum PullDecision: Equatable {
    /// Both sides hold the same: at most the record is brought up to date.
    case same
    /// Pulled once, deleted here since, unchanged there: it stays deleted.
    case staysDeleted
    /// Changed here since the last sync, and not forced: the local version stays, and a conflict is reported.
    case conflict
    /// Forced over a local change: the local version is kept aside first, then the remote's is taken.
    case keepLocalAsideThenTake
    /// Forced over a local directory by a directory (or a deletion): nothing to do to it.
    case nothing
    /// The remote's version is taken: placed here, or (for a deletion) the local copy deleted or the record dropped.
    case take
}

/// A remote entry offered to a pull. `recorded` is nil when the path was never synced; `forced` is `pull --force`
/// or a resolve, `resolving` a resolve alone (`resolve --keep remote`).
func decidePull(local: PathState, remote: PathState, recorded: PathState?, forced: Bool, resolving: Bool) -> PullDecision {
    if local == remote { return .same }
    let last = recorded ?? .absent
    if local == .absent && !resolving && recorded != nil && remote == last { return .staysDeleted }
    if local != .absent && local != last {
        guard forced else { return .conflict }
        if remote == .directory && local == .directory { return .nothing }
        return .keepLocalAsideThenTake
    }
    return .take
}

/// A pulled path the remote no longer has (`recorded`: what the last pull placed).
func decidePullOfDeletion(local: PathState, recorded: PathState, force: Bool) -> PullDecision {
    if local == .absent || local == recorded { return .take }
    guard force else { return .conflict }
    return local == .directory ? .nothing : .keepLocalAsideThenTake
}
