import Chunking
import SyncSystem
import Wire

/// One path a snapshot applied to a host changes: what the snapshot holds there (nil: it is to be deleted), and
/// what the last sync left there, which the host's copy is checked against as a sent operation's base is.
public struct ApplyStep: Equatable, Sendable {
    public let path: RelativePath
    public let entry: ManifestEntry?
    public let base: PathState
    /// The base snapshot's entry at the path, when `base` is what it says (not an exception).
    public let was: ManifestEntry?

    public init(path: RelativePath, entry: ManifestEntry?, base: PathState, was: ManifestEntry? = nil) {
        self.path = path
        self.entry = entry
        self.base = base
        self.was = was
    }
}

/// What applying a snapshot over the last synced state changes, worked out the same way on the host (which makes
/// the changes) and on the laptop (which records them): a walk of the snapshot's manifest, the base snapshot's,
/// and the exceptions, all three in manifest order (bytewise by path).
public enum ApplyPlan {
    /// What a manifest entry is, as a push's base and answers say.
    public static func state(of e: ManifestEntry) -> PathState {
        switch e.kind {
        case .file: return .file(e.digest ?? .empty)
        case .directory: return .directory
        case .symlink: return .symlink(e.target ?? [])
        }
    }

    /// Whether `new` differs from `old` in anything a push sends: what it is, its content, its mode, and a file's
    /// modification time.
    public static func differs(_ new: ManifestEntry, from old: ManifestEntry) -> Bool {
        guard new.kind == old.kind, state(of: new) == state(of: old), new.mode & 0o7777 == old.mode & 0o7777 else { return true }
        return new.kind == .file && new.mtimeNanos != old.mtimeNanos
    }

    /// Calls `body` for every path to change, in path order. A path whose exception is nil is left alone; one with
    /// an exception is compared with that state rather than the base snapshot's entry. Throws when a list is not in
    /// manifest order (the host's answer to a laptop that sent them so).
    public static func steps(new: [ManifestEntry], base: [ManifestEntry], exceptions: [(path: [UInt8], state: PathState?)],
                             _ body: (ApplyStep) throws -> Void) throws {
        var (i, j, k) = (0, 0, 0)
        var last: [UInt8]?
        while i < new.count || j < base.count || k < exceptions.count {
            // The smallest path of the three heads.
            var path: [UInt8]?
            func consider(_ p: [UInt8]) { if path == nil || p.lexicographicallyPrecedes(path!) { path = p } }
            if i < new.count { consider(new[i].path.bytes) }
            if j < base.count { consider(base[j].path.bytes) }
            if k < exceptions.count { consider(exceptions[k].path) }
            let at = path!
            if let last, !last.lexicographicallyPrecedes(at) {
                throw ProtocolError("snapshot apply: \(displayPath(at)) comes after \(displayPath(last)); the lists are not in path order")
            }
            last = at
            let n = i < new.count && new[i].path.bytes == at ? new[i] : nil
            let b = j < base.count && base[j].path.bytes == at ? base[j] : nil
            let hasException = k < exceptions.count && exceptions[k].path == at
            let exception = hasException ? exceptions[k].state : nil
            if n != nil { i += 1 }
            if b != nil { j += 1 }
            if hasException { k += 1 }
            if hasException && exception == nil { continue }
            let baseState = hasException ? exception! : (b.map(state) ?? .absent)
            if let n {
                let needed = hasException ? state(of: n) != baseState : b.map { differs(n, from: $0) } ?? true
                if needed { try body(ApplyStep(path: n.path, entry: n, base: baseState, was: hasException ? nil : b)) }
            } else if baseState != .absent {
                try body(ApplyStep(path: try RelativePath(bytes: at), entry: nil, base: baseState, was: hasException ? nil : b))
            }
        }
    }
}
