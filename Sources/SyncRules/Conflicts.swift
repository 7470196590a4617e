import Chunking
import SyncSystem
import Wire

/// One side of a conflict, or what the last sync recorded: what was at the path, with size and mtime for a file.
public struct ConflictSide: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case absent = 0, file = 1, directory = 2, symlink = 3 }
    public var kind: Kind
    public var digest: ChunkID?
    public var target: [UInt8]?
    public var size: UInt64
    public var mtimeNanos: Int64

    public init(kind: Kind, digest: ChunkID? = nil, target: [UInt8]? = nil, size: UInt64 = 0, mtimeNanos: Int64 = 0) {
        self.kind = kind
        self.digest = digest
        self.target = target
        self.size = size
        self.mtimeNanos = mtimeNanos
    }

    public static let absent = ConflictSide(kind: .absent)

    /// What a path state says, with a file's size and mtime.
    public init(_ state: PathState, size: UInt64 = 0, mtimeNanos: Int64 = 0) {
        switch state {
        case .absent: self.init(kind: .absent)
        case .directory: self.init(kind: .directory)
        case .symlink(let target): self.init(kind: .symlink, target: target)
        case .file(let digest): self.init(kind: .file, digest: digest, size: size, mtimeNanos: mtimeNanos)
        }
    }

    /// What the last sync recorded: `base`, with the size and mtime kept in the record.
    public init(_ base: PathState, synced: SyncedEntry?) {
        self.init(base, size: synced?.size ?? 0, mtimeNanos: synced?.mtimeNanos ?? 0)
    }

    /// What a local entry is, with a file's size and mtime.
    public init(_ entry: LocalEntry?) {
        guard let entry else { self.init(kind: .absent); return }
        switch entry.stat.kind {
        case .directory: self.init(kind: .directory)
        case .symlink: self.init(kind: .symlink, target: entry.linkTarget)
        default: self.init(kind: .file, digest: entry.content?.digest, size: entry.stat.size, mtimeNanos: entry.stat.mtimeNanos)
        }
    }
}

/// A path left in conflict by a push or a pull: both sides changed it since the last sync.
public struct ConflictRecord: Sendable, Equatable {
    /// Where it was found: `push` (the remote changed a local-owned path) or `pull` (this side changed a
    /// remote-owned one).
    public enum Found: String, Sendable { case push, pull }
    public var path: RelativePath
    public var found: Found
    /// When it was first found (wall clock, ns); kept while the conflict lasts.
    public var sinceNanos: Int64
    public var local: ConflictSide
    public var remote: ConflictSide
    /// What the last sync recorded at the path (what both sides held then).
    public var recorded: ConflictSide
    public var message: String

    public init(path: RelativePath, found: Found, sinceNanos: Int64, local: ConflictSide, remote: ConflictSide,
                recorded: ConflictSide, message: String) {
        self.path = path
        self.found = found
        self.sinceNanos = sinceNanos
        self.local = local
        self.remote = remote
        self.recorded = recorded
        self.message = message
    }
}

extension ConflictRecord {
    /// The record of a conflict found now. `message` says what each side holds (without the path); the advice on
    /// settling it follows from the sides (`advice`).
    public static func found(_ found: Found, at path: RelativePath, nowNanos: Int64, local: ConflictSide, remote: ConflictSide,
                             recorded: ConflictSide, message: String) -> ConflictRecord {
        ConflictRecord(path: path, found: found, sinceNanos: nowNanos, local: local, remote: remote, recorded: recorded, message: message)
    }

    /// What was kept and how to settle it, for the line a person reads: a pull that meets a remote deletion keeps
    /// the local version (there is no remote one); otherwise both are, and forcing the direction that found it
    /// settles it.
    public func advice(quotedPath: String) -> String {
        let resolve = "`syncctl resolve \(quotedPath) --keep local|remote`"
        if found == .pull && remote.kind == .absent { return "the local version is kept (\(resolve))" }
        return "both versions kept (\(resolve), or `\(found.rawValue) --force`)"
    }
}
