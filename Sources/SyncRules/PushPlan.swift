import Chunking
import SyncSystem
import Wire

/// What a push does with one path, decided from the local entry and what the last push recorded there alone.
public enum PushChange: Equatable, Sendable {
    /// The remote holds it as it is here: nothing to send.
    case unchanged
    /// New or changed here (or its content not known yet): sent.
    case send
    /// Pushed before and gone here: deleted on the remote.
    case delete
    /// Pushed before, gone from what this push looks at, and not to be deleted (now ignored, without
    /// `--prune-ignored`): left where it is.
    case leaveAlone
}

/// One path's push decision. `local` nil: the path is gone here; `pushed` nil: it was never pushed. A file whose
/// content is not known yet (its stat changed, `content` nil) is sent; the sender drops it if hashing shows it
/// unchanged. With `everything`, every local entry is sent, so that the agent compares each with what the remote
/// holds. `leftAlone` is asked only of a path gone here.
public func decidePush(local: LocalEntry?, pushed: SyncedEntry?, everything: Bool = false, leftAlone: Bool = false) -> PushChange {
    guard let local else {
        guard pushed != nil else { return .unchanged }
        return leftAlone ? .leaveAlone : .delete
    }
    guard let old = pushed, !everything else { return .send }
    let now = local.synced
    let differs: Bool
    switch now.kind {
    case .file: differs = now.digest == nil || old != now
    case .directory: differs = old.kind != .directory || old.permissions != now.permissions
    case .symlink: differs = old.kind != .symlink || old.target != now.target
    }
    return differs ? .send : .unchanged
}

/// One operation of a push, in the order it is sent.
public enum PushOperation: Sendable {
    case file(LocalEntry, base: PathState)
    case symlink(LocalEntry, base: PathState)
    case directory(LocalEntry)
    case delete(path: RelativePath, base: PathState)

    public var path: RelativePath {
        switch self {
        case .file(let e, _), .symlink(let e, _), .directory(let e): return e.path
        case .delete(let p, _): return p
        }
    }

    /// What the sender believes the remote holds at the path.
    public var base: PathState {
        switch self {
        case .file(_, let base), .symlink(_, let base), .delete(_, let base): return base
        case .directory: return .absent
        }
    }
}

/// Works out what a push must send: compares the local tree with what was last pushed and orders the
/// operations: deletes first (children before their directory), then directories, then files and symlinks.
/// Deleting first clears the way for type changes, and a deleted file's content stays in the agent's cache,
/// so a moved file is renamed out of it on the remote instead of being copied or sent.
/// Files whose content is not known yet (`content` nil: their stat changed) are planned as changed; the sender
/// drops those that turn out unchanged once hashed. Pushed paths for which `isLeftAlone` holds are neither
/// deleted nor compared. With `everything`, every local entry is sent, changed since the last push or not, so
/// that the agent compares each with what the remote holds (a restore: the remote must end up exactly so).
public func planPush(local: [LocalEntry], pushed: [RelativePath: SyncedEntry], everything: Bool = false,
              isLeftAlone: (RelativePath, SyncedEntry) -> Bool) -> [PushOperation] {
    // Only what was pushed can be deleted: the local paths among those are all the check needs (none, for a
    // first push), and the entries to send are indices into `local`, not a copy of it.
    var present: Set<RelativePath> = []
    if !pushed.isEmpty {
        for e in local where pushed[e.path] != nil { present.insert(e.path) }
    }
    let upserts = local.indices.lazy.filter { decidePush(local: local[$0], pushed: pushed[local[$0].path], everything: everything) == .send }
        .map { local[$0] }
    var deleted = Set(pushed.filter { !present.contains($0.key) && decidePush(local: nil, pushed: $0.value, everything: everything,
                                                                               leftAlone: isLeftAlone($0.key, $0.value)) == .delete }.keys)
    // Paths whose kind changes: what was there must go before the new kind can be placed.
    var clearFirst: Set<RelativePath> = []
    for e in upserts where !pushed.isEmpty {
        if let old = pushed[e.path], old.kind != e.synced.kind { clearFirst.insert(e.path) }
        var parent = e.path.parent
        while let p = parent {
            if let old = pushed[p], old.kind != .directory { clearFirst.insert(p) }
            parent = p.parent
        }
    }
    var early: [RelativePath] = []
    for p in clearFirst {
        early.append(p)
        early.append(contentsOf: deleted.filter { $0.isWithin(p) && $0 != p })
    }
    let earlySet = Set(early)
    deleted.subtract(earlySet)
    var ops: [PushOperation] = []
    for p in earlySet.union(deleted).sorted(by: >) { ops.append(.delete(path: p, base: pushed[p]!.pathState)) }
    let base: (LocalEntry) -> PathState = { e in
        earlySet.contains(e.path) ? .absent : (pushed[e.path]?.pathState ?? .absent)
    }
    for e in upserts where e.stat.kind == .directory { ops.append(.directory(e)) }
    for e in upserts where e.stat.kind != .directory {
        ops.append(e.stat.kind == .symlink ? .symlink(e, base: base(e)) : .file(e, base: base(e)))
    }
    return ops
}

/// New files whose content is that of a deleted file: moves and renames.
public func countMoved(_ ops: [PushOperation], pushed: [RelativePath: SyncedEntry]) -> Int {
    var gone: Set<ChunkID> = []
    for case .delete(_, .file(let digest)) in ops { gone.insert(digest) }
    guard !gone.isEmpty else { return 0 }
    var moved = 0
    for case .file(let e, _) in ops where pushed[e.path] == nil {
        if let digest = e.content?.digest, gone.contains(digest) { moved += 1 }
    }
    return moved
}
