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
public final class HeldChunks {
    public let tree: Tree
    private var locations: [ChunkID: ChunkLocation] = [:]
    private var openFile: (path: RelativePath, fd: FileDescriptor)?

    public init(tree: Tree) { self.tree = tree }

    public var count: Int { locations.count }

    /// Records that `path` holds `chunks` (with their offsets).
    public func add(path: RelativePath, chunks: [ChunkRef]) {
        for c in chunks where !c.id.isHole { locations[c.id] = ChunkLocation(path: path, offset: c.offset, length: c.length) }
    }

    /// Forgets every location in `path` (the file is about to change or go away).
    public func remove(path: RelativePath, chunks: [ChunkRef]) {
        for c in chunks where locations[c.id]?.path == path { locations[c.id] = nil }
        if openFile?.path == path { openFile = nil }
    }

    public func contains(_ id: ChunkID) -> Bool { locations[id] != nil }

    /// Reads a chunk into `buffer` (at least `length` bytes) and checks its id; false when it is not available.
    public func read(_ id: ChunkID, length: UInt32, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard let location = locations[id], location.length == length else { return false }
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
                locations[id] = nil
                return false
            }
            return true
        } catch {
            locations[id] = nil
            return false
        }
    }
}
