#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import ProjectScan
import Watch
import SyncSystem
import Wire

// MARK: - Bounded cache of replaced and deleted files

extension AgentSession {
    /// Upper bound on the bytes kept in `.syncd/cache/` between sessions, so remote disk use stays close to the
    /// project's size. Within a push the cache may hold more (every file deleted so far, whatever its size, so
    /// that a moved file of any size is found); the oldest entries go when the push ends.
    static let cacheLimit: UInt64 = 512 << 20

    static let cacheDirectory = [Array(agentStateDirectoryName.utf8), Array("cache".utf8)]

    static let cacheRoot = try! RelativePath(agentStateDirectoryName + "/cache")

    /// Where the cache keeps a file with content `digest`.
    static func cachePath(_ digest: ChunkID) -> RelativePath { try! cacheRoot.appending(Array(digest.hex.utf8)) }

    /// Keeps the content of a file about to be replaced or deleted, as a hard link (no data is copied), so its
    /// chunks stay available: a moved file is linked back out whole (`adoptCached`), and an edit undone or a
    /// file moved across a type change costs no transfer.
    /// Returns the digest it stashed under, for `refreshStash` once the original path is gone.
    @discardableResult
    func stash(_ path: RelativePath, stat st: FileStat) -> ChunkID? {
        guard let record = state.record(at: path), record.stat.sameContentIdentity(as: st), record.stat.size > 0,
              let parent = try? tree.openParent(path, create: false),
              let cache = try? tree.openDirectory(Self.cacheDirectory, create: true)
        else { return nil }
        let name = Array(record.digest.hex.utf8)
        if withCName(path.name, { from in withCName(name) { linkat(parent.raw, from, cache.raw, $0, 0) } }) != 0 && errno != EEXIST {
            return nil
        }
        guard let linked = try? Tree.lstat(at: cache, name: name, shown: record.digest.hex), linked.kind == .regular else { return nil }
        let cachedPath = Self.cachePath(record.digest)
        push.cacheGrew = true
        state.put(FileRecord(path: cachedPath, stat: linked, digest: record.digest, chunks: record.chunks))
        return record.digest
    }

    /// Unlinking or replacing the original changes the cached inode's ctime; the record follows, so the entry
    /// is still recognised as unchanged.
    func refreshStash(_ digest: ChunkID) {
        let cachedPath = Self.cachePath(digest)
        guard var record = state.record(at: cachedPath),
              let cache = try? tree.openDirectory(Self.cacheDirectory, create: false),
              let st = try? Tree.lstat(at: cache, name: cachedPath.name, shown: cachedPath.description), st.inode == record.stat.inode
        else { return }
        record.stat = st
        state.put(record)
    }

    /// Drops the oldest cached files until the cache fits its bound.
    /// What the cache holds is found by listing its directory, not by going over every record of the project.
    func evictCache() {
        guard let cache = try? tree.openDirectory(Self.cacheDirectory, create: false), let names = try? Tree.list(cache) else { return }
        var cached = names.compactMap { item in (try? Self.cacheRoot.appending(item.name)).flatMap { state.record(at: $0) } }
        var total = cached.reduce(UInt64(0)) { $0 + $1.stat.size }
        guard total > Self.cacheLimit else { return }
        cached.sort { $0.stat.ctimeNanos < $1.stat.ctimeNanos }
        for record in cached where total > Self.cacheLimit {
            try? Tree.remove(at: cache, name: record.path.name, isDirectory: false, shown: record.path.description)
            dropRecord(record.path)
            total -= record.stat.size
        }
    }
}
