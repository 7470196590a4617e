import Chunking
import SyncSystem
import Wire

/// The state of a path as both sides last agreed on it. Equality leaves out `size`, which the digest decides.
public struct SyncedEntry: Sendable, Equatable {
    public enum Kind: Int, Sendable { case file = 1, directory = 2, symlink = 3 }
    public var kind: Kind
    /// File digest (files) — nil otherwise.
    public var digest: ChunkID?
    /// Symlink target (bytes) — nil otherwise.
    public var target: [UInt8]?
    public var permissions: UInt32
    public var mtimeNanos: Int64
    /// A file's size, for reports; nil when not recorded (entries made before it was).
    public var size: UInt64?

    public init(kind: Kind, digest: ChunkID?, target: [UInt8]?, permissions: UInt32, mtimeNanos: Int64, size: UInt64? = nil) {
        self.size = size
        self.kind = kind
        self.digest = digest
        self.target = target
        self.permissions = permissions
        self.mtimeNanos = mtimeNanos
    }

    public static func == (a: SyncedEntry, b: SyncedEntry) -> Bool {
        a.kind == b.kind && a.digest == b.digest && a.target == b.target && a.permissions == b.permissions
            && a.mtimeNanos == b.mtimeNanos
    }
}

/// One local entry with its content identity.
public struct LocalEntry: Sendable {
    public let path: RelativePath
    public let stat: FileStat
    public var content: ChunkedContent?
    public let linkTarget: [UInt8]?

    public init(path: RelativePath, stat: FileStat, content: ChunkedContent?, linkTarget: [UInt8]?) {
        self.path = path
        self.stat = stat
        self.content = content
        self.linkTarget = linkTarget
    }

    /// What it is, as the other side compares it.
    public var state: PathState {
        switch stat.kind {
        case .directory: return .directory
        case .symlink: return .symlink(linkTarget ?? [])
        default: return .file(content?.digest ?? ChunkID(low: 0, high: 0))
        }
    }

    /// What is recorded once the other side holds it too.
    public var synced: SyncedEntry {
        switch stat.kind {
        case .directory: return SyncedEntry(kind: .directory, digest: nil, target: nil, permissions: stat.permissions, mtimeNanos: 0)
        case .symlink: return SyncedEntry(kind: .symlink, digest: nil, target: linkTarget, permissions: 0o777, mtimeNanos: 0)
        default:
            return SyncedEntry(kind: .file, digest: content?.digest, target: nil, permissions: stat.permissions, mtimeNanos: stat.mtimeNanos,
                               size: content?.size ?? stat.size)
        }
    }
}

extension SyncedEntry {
    public var pathState: PathState {
        switch kind {
        case .directory: return .directory
        case .symlink: return .symlink(target ?? [])
        case .file: return .file(digest ?? ChunkID(low: 0, high: 0))
        }
    }
}
