import Chunking
import SyncSystem

/// Where a chunk's bytes can be found in a file of a tree.
public struct ChunkLocation: Sendable, Equatable {
    public var path: RelativePath
    public var offset: UInt64
    public var length: UInt32

    public init(path: RelativePath, offset: UInt64, length: UInt32) {
        self.path = path
        self.offset = offset
        self.length = length
    }
}

/// The chunks one side already holds in the files of its tree. Reads are verified: a file that changed
/// since it was indexed yields nil for the chunks it no longer holds, never wrong bytes.
///
/// Either the locations are kept here, as `add` and `remove` report them, or an index on disk answers for
/// them (`finder`, the agent's record index, which follows the records itself).
public final class HeldChunks {
    public let tree: Tree
    private var locations: [ChunkID: ChunkLocation] = [:]
    private let finder: ((ChunkID) -> ChunkLocation?)?
    /// Chunks the finder placed where a read found other bytes, not asked of it again.
    private var stale: Set<ChunkID> = []
    private var openFile: (path: RelativePath, fd: FileDescriptor)?

    public init(tree: Tree, finder: ((ChunkID) -> ChunkLocation?)? = nil) {
        self.tree = tree
        self.finder = finder
    }

    /// Records that `path` holds `chunks` (with their offsets).
    public func add(path: RelativePath, chunks: [ChunkRef]) {
        guard finder == nil else { return }
        for c in chunks where !c.id.isHole { locations[c.id] = ChunkLocation(path: path, offset: c.offset, length: c.length) }
    }

    /// Forgets every location in `path` (the file is about to change or go away).
    public func remove(path: RelativePath, chunks: [ChunkRef]) {
        if finder == nil {
            for c in chunks where locations[c.id]?.path == path { locations[c.id] = nil }
        }
        willChange(path)
    }

    /// Stops reading from `path`, which is about to change or go away: all a finder's user need say, since the
    /// finder's index follows the files itself.
    public func willChange(_ path: RelativePath) {
        if openFile?.path == path { openFile = nil }
    }

    private func location(_ id: ChunkID) -> ChunkLocation? {
        guard let finder else { return locations[id] }
        return stale.contains(id) ? nil : finder(id)
    }

    public func contains(_ id: ChunkID) -> Bool { location(id) != nil }

    /// Reads a chunk into `buffer` (at least `length` bytes) and checks its id; false when it is not available.
    public func read(_ id: ChunkID, length: UInt32, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard let location = location(id), location.length == length else { return false }
        do {
            let fd: FileDescriptor
            if let open = openFile, open.path == location.path {
                fd = open.fd
            } else {
                fd = try tree.openForReading(location.path)
                openFile = (location.path, fd)
            }
            let target = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(length)])
            guard try fd.read(into: target, at: location.offset) == Int(length),
                  ChunkID(hashing: UnsafeRawBufferPointer(target)) == id
            else {
                forget(id)
                return false
            }
            return true
        } catch {
            forget(id)
            return false
        }
    }

    private func forget(_ id: ChunkID) {
        if finder == nil { locations[id] = nil } else { stale.insert(id) }
    }
}
