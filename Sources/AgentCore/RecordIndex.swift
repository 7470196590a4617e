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
///
/// A record holds its chunk list (20 bytes a chunk: id and length) unless the list is longer than a piece; then
/// the list is kept in `pieces`, a row per `pieceEntries` chunks keyed by path and piece number, so neither a
/// lookup nor a change of a 16 GiB file's record reads or writes its 5 MB list at once: an append rewrites the
/// pieces from the first one it changed, and memory stays at a piece.
final class RecordIndex {
    private let db: SQLiteConnection
    private let selectRecord, upsertRecord, deleteRecord, selectWithin: SQLiteStatement
    private let replaceChunk, deleteChunk, selectChunk: SQLiteStatement
    private let selectPieces, upsertPiece, deletePieces: SQLiteStatement
    /// The chunks a row of `pieces` holds (the last one of a record fewer); a list of at most this many is kept in
    /// its record. Fixed when the database is made (`meta`), so every record's pieces line up the same way.
    let pieceEntries: Int

    /// The schema this agent writes (`PRAGMA user_version`); a larger one was made by a newer agent, which this
    /// one does not write over. 1: records and chunk keys; 2: long chunk lists in pieces.
    private static let schemaVersion = 2

    /// Opens (making it if needed) the index at `path`; `pieceEntries` applies only to a database made now.
    init(path: String, pieceEntries newPieceEntries: Int = 4096) throws {
        precondition(newPieceEntries > 0)
        db = try SQLiteConnection(path: path, create: true)
        // The write-ahead log keeps the index whole through a kill or a power cut, with no fsync per commit; a
        // file system without shared memory (some network mounts) keeps the default journal and syncs fully.
        if try db.text("PRAGMA journal_mode = WAL") == "wal" {
            try db.execute("PRAGMA synchronous = NORMAL")
        }
        try db.execute("PRAGMA cache_size = -8192")  // 8 MiB of pages, whatever the project's size
        try Self.migrate(db, path: path, pieceEntries: newPieceEntries)
        guard let stored = try db.text("SELECT value FROM meta WHERE key = 'piece-entries'").flatMap({ Int($0) }), stored > 0 else {
            throw SQLiteError(code: 0, description: "\(path) does not say how many chunks a piece of a record holds")
        }
        pieceEntries = stored
        selectRecord = try db.prepare("SELECT record, recorded, pieced FROM records WHERE path = ?1")
        upsertRecord = try db.prepare("INSERT OR REPLACE INTO records(path, record, recorded, pieced) VALUES (?1, ?2, ?3, ?4)")
        deleteRecord = try db.prepare("DELETE FROM records WHERE path = ?1")
        selectWithin = try db.prepare("SELECT path FROM records WHERE path > ?1 AND path < ?2")
        replaceChunk = try db.prepare("INSERT OR REPLACE INTO chunks(id, path, offset, length) VALUES (?1, ?2, ?3, ?4)")
        deleteChunk = try db.prepare("DELETE FROM chunks WHERE id = ?1 AND path = ?2")
        selectChunk = try db.prepare("SELECT path, offset, length FROM chunks WHERE id = ?1 LIMIT 8")
        selectPieces = try db.prepare("SELECT piece, entries FROM pieces WHERE path = ?1 ORDER BY piece")
        upsertPiece = try db.prepare("INSERT OR REPLACE INTO pieces(path, piece, entries) VALUES (?1, ?2, ?3)")
        deletePieces = try db.prepare("DELETE FROM pieces WHERE path = ?1 AND piece >= ?2")
    }

    /// Brings the schema up to `schemaVersion`, in one transaction that reads the version it starts from (two
    /// agents opening one project at once take turns, and the second finds nothing to do).
    private static func migrate(_ db: SQLiteConnection, path: String, pieceEntries: Int) throws {
        try db.execute("BEGIN IMMEDIATE")
        do {
            let version = Int(try db.text("PRAGMA user_version") ?? "0") ?? 0
            guard version <= schemaVersion else {
                throw SQLiteError(code: 0, description: "\(path) has schema \(version), made by a newer syncd-agent (this one writes \(schemaVersion))")
            }
            if version < 1 {
                try db.execute("""
                    CREATE TABLE IF NOT EXISTS records(path BLOB PRIMARY KEY, record BLOB NOT NULL, recorded INTEGER NOT NULL) WITHOUT ROWID;
                    CREATE TABLE IF NOT EXISTS chunks(id BLOB NOT NULL, path BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
                                                      PRIMARY KEY (id, path)) WITHOUT ROWID;
                    CREATE TABLE IF NOT EXISTS legacy_partials(directory BLOB PRIMARY KEY) WITHOUT ROWID;
                    CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    """)
            }
            if version < 2 {
                // `pieced`: how many chunks the record's list has in `pieces`; 0 when the list is in the record.
                try db.execute("""
                    ALTER TABLE records ADD COLUMN pieced INTEGER NOT NULL DEFAULT 0;
                    CREATE TABLE IF NOT EXISTS pieces(path BLOB NOT NULL, piece INTEGER NOT NULL, entries BLOB NOT NULL,
                                                      PRIMARY KEY (path, piece)) WITHOUT ROWID;
                    INSERT OR IGNORE INTO meta(key, value) VALUES ('piece-entries', '\(pieceEntries)');
                    PRAGMA user_version = \(schemaVersion);
                    """)
            }
            try db.execute("COMMIT")
        } catch {
            try? db.execute("ROLLBACK")
            throw error
        }
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

    /// The path's record; without `chunks`, with an empty chunk list (see `AgentState.record(at:chunks:)`). A
    /// record whose pieces do not add up to its list (damage) is no record: the file is hashed again.
    func record(at path: RelativePath, chunks: Bool = true) throws -> FileRecord? {
        let s = selectRecord.reset()
        s.bind(1, path.bytes)
        guard try s.step() else { return nil }
        let recorded = s.int64(1), pieced = s.int64(2)
        var record = try s.withBlob(0) { raw -> FileRecord in
            var r = PayloadReader(raw, frame: "record of \(path)")
            let tag = try r.u8("tag")
            guard tag == 1 || tag == 7 else { throw ProtocolError("unknown record tag \(tag)") }
            return try AgentState.decode(&r, tag: tag, recordedAt: recorded, chunks: chunks)
        }
        s.reset()
        // A record stored under another path than its own is damage, not a record of this file.
        guard record.path == path else { return nil }
        if chunks && pieced > 0 {
            guard pieced <= Int64(Int32.max) else { return nil }
            record.chunks.reserveCapacity(Int(pieced))
            var offset: UInt64 = 0
            let whole = try entries(of: path, count: Int(pieced)) { _, run in
                for i in 0..<(run.count / Self.entryBytes) {
                    let (id, length) = Self.entry(run, i)
                    record.chunks.append(ChunkRef(id: id, offset: offset, length: length))
                    offset += UInt64(length)
                }
            }
            guard whole else { return nil }
        }
        return record
    }

    /// Replaces the path's record, and its chunks in the chunk index. Only the chunks after the part the old and
    /// the new version share from the start are touched, and only the pieces from the one where they part: an
    /// append to a 16 GiB file changes a few keys and a piece or two, not 260,000 keys twice over. The old
    /// version is compared where SQLite holds it, a piece at a time, never decoded. (A chunk that occurs twice in
    /// a file has one key, at the occurrence written last; one whose only key was in the old version's tail and
    /// that the new one holds only in the shared part loses its key: a copy it could have served is then sent
    /// instead, never wrong bytes.)
    func put(_ record: FileRecord) throws {
        let path = record.path
        let new = record.chunks
        let (oldPieced, shared) = try dropChunkKeys(of: path) { run, first in
            // The entries of this run both versions share, from its first.
            var i = 0
            let n = run.count / Self.entryBytes
            while i < n && first + i < new.count {
                let (id, length) = Self.entry(run, i)
                guard id == new[first + i].id && length == new[first + i].length else { break }
                i += 1
            }
            return i
        }
        let pieced = new.count > pieceEntries ? new.count : 0
        let s = upsertRecord.reset()
        s.bind(1, path.bytes)
        s.bind(2, AgentState.encode(record, chunks: pieced == 0))
        s.bind(3, record.recordedAtNanos)
        s.bind(4, Int64(pieced))
        try s.run()
        if pieced > 0 {
            // The pieces before the one where the versions part are already written, when the old list was in
            // pieces too (they line up: the piece size is the database's).
            let firstPiece = oldPieced > 0 ? min(shared, new.count) / pieceEntries : 0
            var buffer = [UInt8](repeating: 0, count: pieceEntries * Self.entryBytes)
            var piece = firstPiece
            while piece * pieceEntries < new.count {
                let range = (piece * pieceEntries)..<min(new.count, (piece + 1) * pieceEntries)
                buffer.withUnsafeMutableBytes { out in
                    for (k, c) in new[range].enumerated() {
                        out.storeBytes(of: c.id.low.littleEndian, toByteOffset: k * Self.entryBytes, as: UInt64.self)
                        out.storeBytes(of: c.id.high.littleEndian, toByteOffset: k * Self.entryBytes + 8, as: UInt64.self)
                        out.storeBytes(of: c.length.littleEndian, toByteOffset: k * Self.entryBytes + 16, as: UInt32.self)
                    }
                }
                let p = upsertPiece.reset()
                p.bind(1, path.bytes)
                p.bind(2, Int64(piece))
                buffer.withUnsafeBytes { p.bind(3, UnsafeRawBufferPointer(rebasing: $0[..<(range.count * Self.entryBytes)])) }
                try p.run()
                piece += 1
            }
            // Pieces past the new list's end (a list that shrank, or damage).
            try dropPieces(of: path, from: piece)
        } else if oldPieced > 0 {
            try dropPieces(of: path, from: 0)
        }
        for c in new[min(shared, new.count)...] where !c.id.isHole {
            let i = replaceChunk.reset()
            i.bind(1, Self.key(c.id))
            i.bind(2, path.bytes)
            i.bind(3, Int64(bitPattern: c.offset))
            i.bind(4, Int64(c.length))
            try i.run()
        }
    }

    func remove(_ path: RelativePath) throws {
        let (pieced, _) = try dropChunkKeys(of: path) { _, _ in 0 }
        if pieced > 0 { try dropPieces(of: path, from: 0) }
        let s = deleteRecord.reset()
        s.bind(1, path.bytes)
        try s.run()
    }

    private func dropPieces(of path: RelativePath, from piece: Int) throws {
        let d = deletePieces.reset()
        d.bind(1, path.bytes)
        d.bind(2, Int64(piece))
        try d.run()
    }

    /// Deletes the chunk keys of the path's recorded version from the first entry the two versions do not share:
    /// `sharing(run, first)` says how many entries of a run (its first is entry `first` of the list) the new
    /// version shares, and the runs are offered in order until one is not shared whole. Returns how many chunks
    /// the old version had in pieces, and how many entries are shared (0 when nothing is recorded, or the record
    /// does not decode: then no key is known to delete).
    private func dropChunkKeys(of path: RelativePath,
                               sharing: (UnsafeRawBufferPointer, Int) throws -> Int) throws -> (pieced: Int, shared: Int) {
        let s = selectRecord.reset()
        defer { s.reset() }
        s.bind(1, path.bytes)
        guard try s.step() else { return (0, 0) }
        let pieced = Int(clamping: s.int64(2))
        var shared = 0
        var parted = false
        func visit(_ run: UnsafeRawBufferPointer, _ first: Int) throws {
            var from = 0
            if !parted {
                from = try sharing(run, first)
                shared = first + from
                parted = from < run.count / Self.entryBytes
            }
            for i in from..<(run.count / Self.entryBytes) {
                let (id, _) = Self.entry(run, i)
                if id.isHole { continue }
                let d = deleteChunk.reset()
                d.bind(1, Self.key(id))
                d.bind(2, path.bytes)
                try d.run()
            }
        }
        if pieced > 0 {
            // A list whose pieces do not add up is damage: the keys found are dropped, none is trusted shared.
            guard try entries(of: path, count: pieced, { first, run in try visit(run, first) }) else {
                return (pieced, 0)
            }
        } else {
            try s.withBlob(0) { raw in
                guard let old = try? Self.chunkEntries(raw, of: path) else { return }
                try visit(old, 0)
            }
        }
        return (pieced, shared)
    }

    /// Calls `body` with the path's chunk entries kept in pieces, a piece at a time, with the index of the piece's
    /// first entry. False when the pieces are not whole (damage): one missing, one of another size than the
    /// database's (only the last may be shorter), or not `count` entries in all.
    private func entries(of path: RelativePath, count: Int, _ body: (Int, UnsafeRawBufferPointer) throws -> Void) throws -> Bool {
        let s = selectPieces.reset()
        defer { s.reset() }
        s.bind(1, path.bytes)
        let full = pieceEntries * Self.entryBytes
        var expected = 0
        var seen = 0
        while try s.step() {
            let whole = try s.withBlob(1) { run -> Bool in
                let n = run.count / Self.entryBytes
                guard s.int64(0) == Int64(expected), run.count > 0, run.count % Self.entryBytes == 0,
                      run.count == full || (run.count < full && seen + n == count), seen + n <= count else { return false }
                try body(seen, run)
                seen += n
                expected += 1
                return true
            }
            guard whole else { return false }
        }
        return seen == count
    }

    /// A chunk's entry in an encoded list: its id and length (`AgentState.encode`).
    private static let entryBytes = 20

    private static func entry(_ run: UnsafeRawBufferPointer, _ i: Int) -> (ChunkID, UInt32) {
        let at = i * entryBytes
        return (ChunkID(low: UInt64(littleEndian: run.loadUnaligned(fromByteOffset: at, as: UInt64.self)),
                        high: UInt64(littleEndian: run.loadUnaligned(fromByteOffset: at + 8, as: UInt64.self))),
                UInt32(littleEndian: run.loadUnaligned(fromByteOffset: at + 16, as: UInt32.self)))
    }

    /// The chunk entries of an encoded record, where they lie in it.
    private static func chunkEntries(_ raw: UnsafeRawBufferPointer, of path: RelativePath) throws -> UnsafeRawBufferPointer {
        var r = PayloadReader(raw, frame: "record of \(path)")
        let tag = try r.u8("tag")
        guard tag == 1 || tag == 7 else { throw ProtocolError("unknown record tag \(tag)") }
        _ = try r.byteString("path")
        _ = try r.u64("dev"); _ = try r.u64("ino"); _ = try r.u32("perm"); _ = try r.u64("size")
        _ = try r.i64("mtime"); _ = try r.i64("ctime")
        _ = try r.id("digest")
        let n = try r.count("chunks", itemSize: entryBytes, limit: Int.max)
        return UnsafeRawBufferPointer(rebasing: r.restInPlace()[..<(n * entryBytes)])
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
