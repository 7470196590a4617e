#if canImport(Glibc)
import Glibc
#endif
import Chunking
import Placement
import SyncSystem
import Wire

/// The agent's records on disk (`.syncd/records.db`): each file's record keyed by its path, and each chunk of a
/// recorded file keyed by the chunk's id and the path, so one lookup finds a record, the records below a
/// directory, or a file that holds a chunk, at any project size.
final class RecordIndex {
    private let db: SQLiteConnection
    private let selectRecord, upsertRecord, deleteRecord, selectWithin: SQLiteStatement
    private let replaceChunk, deleteChunk, selectChunk: SQLiteStatement

    /// The schema this agent writes (`PRAGMA user_version`); a larger one was made by a newer agent, which this
    /// one does not write over.
    private static let schemaVersion = 1

    init(path: String) throws {
        db = try SQLiteConnection(path: path, create: true)
        // The write-ahead log keeps the index whole through a kill or a power cut, with no fsync per commit; a
        // file system without shared memory (some network mounts) keeps the default journal and syncs fully.
        if try db.text("PRAGMA journal_mode = WAL") == "wal" {
            try db.execute("PRAGMA synchronous = NORMAL")
        }
        try db.execute("PRAGMA cache_size = -8192")  // 8 MiB of pages, whatever the project's size
        let version = Int(try db.text("PRAGMA user_version") ?? "0") ?? 0
        guard version <= Self.schemaVersion else {
            throw SQLiteError(code: 0, description: "\(path) has schema \(version), made by a newer syncd-agent (this one writes \(Self.schemaVersion))")
        }
        if version < Self.schemaVersion {
            try db.execute("""
                BEGIN IMMEDIATE;
                CREATE TABLE IF NOT EXISTS records(path BLOB PRIMARY KEY, record BLOB NOT NULL, recorded INTEGER NOT NULL) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS chunks(id BLOB NOT NULL, path BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
                                                  PRIMARY KEY (id, path)) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS legacy_partials(directory BLOB PRIMARY KEY) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                PRAGMA user_version = \(Self.schemaVersion);
                COMMIT;
                """)
        }
        selectRecord = try db.prepare("SELECT record, recorded FROM records WHERE path = ?1")
        upsertRecord = try db.prepare("INSERT OR REPLACE INTO records(path, record, recorded) VALUES (?1, ?2, ?3)")
        deleteRecord = try db.prepare("DELETE FROM records WHERE path = ?1")
        selectWithin = try db.prepare("SELECT path FROM records WHERE path > ?1 AND path < ?2")
        replaceChunk = try db.prepare("INSERT OR REPLACE INTO chunks(id, path, offset, length) VALUES (?1, ?2, ?3, ?4)")
        deleteChunk = try db.prepare("DELETE FROM chunks WHERE id = ?1 AND path = ?2")
        selectChunk = try db.prepare("SELECT path, offset, length FROM chunks WHERE id = ?1 LIMIT 8")
    }

    /// Runs `body` in one write transaction, rolled back if it throws.
    func transaction(_ body: () throws -> Void) throws {
        try db.execute("BEGIN IMMEDIATE")
        do {
            try body()
            try db.execute("COMMIT")
        } catch {
            try? db.execute("ROLLBACK")
            throw error
        }
    }

    /// The path's record; without `chunks`, with an empty chunk list (see `AgentState.record(at:chunks:)`).
    func record(at path: RelativePath, chunks: Bool = true) throws -> FileRecord? {
        let s = selectRecord.reset()
        s.bind(1, path.bytes)
        guard try s.step() else { return nil }
        let recorded = s.int64(1)
        let record = try s.withBlob(0) { raw -> FileRecord in
            var r = PayloadReader(raw, frame: "record of \(path)")
            let tag = try r.u8("tag")
            guard tag == 1 || tag == 7 else { throw ProtocolError("unknown record tag \(tag)") }
            return try AgentState.decode(&r, tag: tag, recordedAt: recorded, chunks: chunks)
        }
        s.reset()
        // A record stored under another path than its own is damage, not a record of this file.
        return record.path == path ? record : nil
    }

    /// Replaces the path's record, and its chunks in the chunk index. Only the chunks after the part the old and
    /// the new version share from the start are touched: an append to a 16 GiB file changes a few keys, not all
    /// 260,000 twice over. The two versions are compared as they are encoded (each chunk's id and length), the
    /// old one where SQLite holds it: neither list is decoded, so a large file's record costs its encoding and no
    /// more. (A chunk that occurs twice in a file has one key, at the occurrence written last; one whose only key
    /// was in the old version's tail and that the new one holds only in the shared part loses its key: a copy it
    /// could have served is then sent instead, never wrong bytes.)
    func put(_ record: FileRecord, encoded: [UInt8]) throws {
        let shared = try encoded.withUnsafeBytes { new -> Int in
            let newList = try Self.chunkEntries(new, of: record.path)
            return try dropChunkKeys(of: record.path) { old in
                let common = min(old.count, newList.count) / Self.chunkEntryBytes
                var shared = 0
                while shared < common
                        && memcmp(old.baseAddress! + shared * Self.chunkEntryBytes, newList.baseAddress! + shared * Self.chunkEntryBytes,
                                  Self.chunkEntryBytes) == 0 {
                    shared += 1
                }
                return shared
            }
        }
        let s = upsertRecord.reset()
        s.bind(1, record.path.bytes)
        s.bind(2, encoded)
        s.bind(3, record.recordedAtNanos)
        try s.run()
        for c in record.chunks[min(shared, record.chunks.count)...] where !c.id.isHole {
            let i = replaceChunk.reset()
            i.bind(1, Self.key(c.id))
            i.bind(2, record.path.bytes)
            i.bind(3, Int64(bitPattern: c.offset))
            i.bind(4, Int64(c.length))
            try i.run()
        }
    }

    func remove(_ path: RelativePath) throws {
        _ = try dropChunkKeys(of: path) { _ in 0 }
        let s = deleteRecord.reset()
        s.bind(1, path.bytes)
        try s.run()
    }

    /// Deletes the chunk keys of the path's recorded version from the index entry `keep(list)` on, where `list` is
    /// its encoded chunk entries; returns that index (0 when nothing is recorded, or the record does not decode:
    /// then no key is known to delete).
    private func dropChunkKeys(of path: RelativePath, from keep: (UnsafeRawBufferPointer) throws -> Int) throws -> Int {
        let s = selectRecord.reset()
        defer { s.reset() }
        s.bind(1, path.bytes)
        guard try s.step() else { return 0 }
        return try s.withBlob(0) { raw -> Int in
            guard let old = try? Self.chunkEntries(raw, of: path) else { return 0 }
            let from = try keep(old)
            var i = from * Self.chunkEntryBytes
            while i + Self.chunkEntryBytes <= old.count {
                let id = ChunkID(low: UInt64(littleEndian: old.loadUnaligned(fromByteOffset: i, as: UInt64.self)),
                                 high: UInt64(littleEndian: old.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)))
                i += Self.chunkEntryBytes
                if id.isHole { continue }
                let d = deleteChunk.reset()
                d.bind(1, Self.key(id))
                d.bind(2, path.bytes)
                try d.run()
            }
            return from
        }
    }

    /// A chunk's entry in an encoded record: its id and length (`AgentState.encode`).
    private static let chunkEntryBytes = 20

    /// The chunk entries of an encoded record, where they lie in it.
    private static func chunkEntries(_ raw: UnsafeRawBufferPointer, of path: RelativePath) throws -> UnsafeRawBufferPointer {
        var r = PayloadReader(raw, frame: "record of \(path)")
        let tag = try r.u8("tag")
        guard tag == 1 || tag == 7 else { throw ProtocolError("unknown record tag \(tag)") }
        _ = try r.byteString("path")
        _ = try r.u64("dev"); _ = try r.u64("ino"); _ = try r.u32("perm"); _ = try r.u64("size")
        _ = try r.i64("mtime"); _ = try r.i64("ctime")
        _ = try r.id("digest")
        let n = try r.count("chunks", itemSize: chunkEntryBytes, limit: Int.max)
        return UnsafeRawBufferPointer(rebasing: r.restInPlace()[..<(n * chunkEntryBytes)])
    }

    /// The recorded paths strictly below `path`: keys between `path/` and `path0` ('0' follows '/').
    func paths(within path: RelativePath) throws -> [RelativePath] {
        let s = selectWithin.reset()
        s.bind(1, path.bytes + [UInt8(ascii: "/")])
        s.bind(2, path.bytes + [UInt8(ascii: "0")])
        var found: [RelativePath] = []
        while try s.step() {
            if let below = try? RelativePath(bytes: s.blob(0)) { found.append(below) }
        }
        return found
    }

    /// A file that holds chunk `id`, among those `usable` accepts.
    func locate(_ id: ChunkID, usable: (RelativePath) -> Bool) throws -> ChunkLocation? {
        let s = selectChunk.reset()
        s.bind(1, Self.key(id))
        defer { s.reset() }
        while try s.step() {
            guard let path = try? RelativePath(bytes: s.blob(0)), usable(path) else { continue }
            return ChunkLocation(path: path, offset: UInt64(bitPattern: s.int64(1)), length: UInt32(truncatingIfNeeded: s.int64(2)))
        }
        return nil
    }

    /// A chunk id as a key: its 16 bytes, low half first, little-endian (as the store writes ids).
    private static func key(_ id: ChunkID) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16)
        bytes.withUnsafeMutableBytes {
            $0.storeBytes(of: id.low.littleEndian, toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: id.high.littleEndian, toByteOffset: 8, as: UInt64.self)
        }
        return bytes
    }

    // MARK: Directories of older agents' temporary files

    func partialDirectories() throws -> [[UInt8]] {
        let s = try db.prepare("SELECT directory FROM legacy_partials")
        var found: [[UInt8]] = []
        while try s.step() { found.append(s.blob(0)) }
        return found
    }

    func addPartialDirectory(_ directory: [UInt8]) throws {
        let s = try db.prepare("INSERT OR IGNORE INTO legacy_partials(directory) VALUES (?1)")
        s.bind(1, directory)
        try s.run()
    }

    func clearPartialDirectories() throws { try db.execute("DELETE FROM legacy_partials") }

    func hasImportedOlderState() throws -> Bool {
        try db.text("SELECT value FROM meta WHERE key = 'imported-state'") != nil
    }

    func markImportedOlderState() throws {
        try db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('imported-state', '1')")
    }
}
