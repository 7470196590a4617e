import Chunking
import Foundation
import GRDB
import SyncSystem
import SyncRules

/// A file as last read: its stat identity, content digest and chunk list. Valid while the identity is unchanged.
public struct CachedFile: Sendable, Equatable {
    public var path: RelativePath
    public var stat: FileStat
    public var digest: ChunkID
    public var chunks: [ChunkRef]
    /// When the entry was written; entries whose mtime is too close to it are not trusted (racy writes).
    public var cachedAtNanos: Int64

    public init(path: RelativePath, stat: FileStat, digest: ChunkID, chunks: [ChunkRef], cachedAtNanos: Int64) {
        self.path = path
        self.stat = stat
        self.digest = digest
        self.chunks = chunks
        self.cachedAtNanos = cachedAtNanos
    }

    /// True when `current` is the same file, unchanged, and it was not being modified when it was cached.
    public func isFresh(for current: FileStat) -> Bool {
        stat.sameContentIdentity(as: current) && stat.permissions == current.permissions
            && cachedAtNanos - current.mtimeNanos > 1_000_000_000
    }
}

/// Opens (and makes, with its directory) an SQLite file in WAL mode. Another connection may hold the lock for a
/// moment (a store closing checkpoints its WAL; syncctl and the daemon share a project's file): it waits for it
/// rather than fail.
func openDatabase(_ path: String) throws -> DatabaseQueue {
    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    var config = Configuration()
    config.journalMode = .wal
    config.busyMode = .timeout(10)
    return try DatabaseQueue(path: path, configuration: config)
}

/// Local persistent state of one project and remote, in SQLite: the stat cache, the record of what the last pushes
/// placed on the remote and of what the last pulls took from it, and the conflicts left.
public final class LocalDatabase {
    let db: DatabaseQueue
    public let path: String

    /// Opens or creates the database at `path` (its directory is created).
    public init(path: String) throws {
        self.path = path
        db = try openDatabase(path)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE files (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, perm INTEGER, size INTEGER,
                    mtime INTEGER, ctime INTEGER, digest BLOB, chunks BLOB, cached_at INTEGER);
                CREATE TABLE pushed (path TEXT PRIMARY KEY, kind INTEGER, digest BLOB, target TEXT, perm INTEGER, mtime INTEGER);
                CREATE TABLE pulled (path TEXT PRIMARY KEY, kind INTEGER, digest BLOB, target TEXT, perm INTEGER, mtime INTEGER);
                """)
        }
        migrator.registerMigration("v2-meta") { db in
            try db.execute(sql: "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        }
        migrator.registerMigration("v3-byte-paths") { db in
            // Names are bytes: paths and symlink targets become BLOBs (compared bytewise), keeping every record.
            try db.execute(sql: """
                CREATE TABLE files3 (path BLOB PRIMARY KEY, dev INTEGER, ino INTEGER, perm INTEGER, size INTEGER,
                    mtime INTEGER, ctime INTEGER, digest BLOB, chunks BLOB, cached_at INTEGER);
                INSERT INTO files3 SELECT CAST(path AS BLOB), dev, ino, perm, size, mtime, ctime, digest, chunks, cached_at FROM files;
                DROP TABLE files;
                ALTER TABLE files3 RENAME TO files;
                """)
            for table in ["pushed", "pulled"] {
                try db.execute(sql: """
                    CREATE TABLE \(table)3 (path BLOB PRIMARY KEY, kind INTEGER, digest BLOB, target BLOB, perm INTEGER, mtime INTEGER,
                        size INTEGER);
                    INSERT INTO \(table)3 SELECT CAST(path AS BLOB), kind, digest, CAST(target AS BLOB), perm, mtime, NULL FROM \(table);
                    DROP TABLE \(table);
                    ALTER TABLE \(table)3 RENAME TO \(table);
                    """)
            }
            try db.execute(sql: """
                CREATE TABLE conflicts (path BLOB PRIMARY KEY, side TEXT NOT NULL, since INTEGER NOT NULL, message TEXT NOT NULL,
                    local BLOB NOT NULL, remote BLOB NOT NULL, recorded BLOB NOT NULL)
                """)
        }
        migrator.registerMigration("v4-pushed-digests") { db in
            // Whether the remote holds some content is asked of the record by digest (a copy's data waits to be
            // asked for), without loading the record whole.
            try db.execute(sql: "CREATE INDEX pushed_digest ON pushed (digest)")
        }
        try migrator.migrate(db)
    }

    /// Whether the pushed record holds a file with content `digest` anywhere.
    public func pushedHolds(_ digest: ChunkID) throws -> Bool {
        try db.read { db in
            try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM pushed WHERE digest = ?)", arguments: [Self.encodeID(digest)]) ?? false
        }
    }

    // MARK: small values

    /// A value kept under `key` (the layer keys of the last build, say); nil when none.
    public func value(_ key: String) throws -> String? {
        try db.read { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [key]) }
    }

    public func setValue(_ value: String, for key: String) throws {
        try db.write { db in try db.execute(sql: "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", arguments: [key, value]) }
    }

    // MARK: remote identity

    /// This side's id for the remote (16 hex digits, made on first use): the agent remembers which client placed
    /// each file, so that a file this client placed in a push whose answer was lost (a kill, a cut) is not taken
    /// for a change made on the remote.
    public func clientID() throws -> String {
        try db.write { db in
            if let id = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'client_id'") { return id }
            let hex = String(UInt64.random(in: 0...UInt64.max), radix: 16)
            let id = String(repeating: "0", count: 16 - hex.count) + hex
            try db.execute(sql: "INSERT INTO meta (key, value) VALUES ('client_id', ?)", arguments: [id])
            return id
        }
    }

    /// The remote project's instance id as of the last sync (see the agent's `.syncd/instance`).
    public func remoteInstance() throws -> String? {
        try db.read { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'remote_instance'") }
    }

    /// Records the remote's instance id. When it differs from the one recorded, the pushed and pulled records
    /// describe a remote that is gone and are dropped in the same transaction; returns true then.
    @discardableResult
    public func adoptRemoteInstance(_ instance: String) throws -> Bool {
        try db.write { db in
            let old = try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'remote_instance'")
            if old == instance { return false }
            try db.execute(sql: "INSERT OR REPLACE INTO meta (key, value) VALUES ('remote_instance', ?)", arguments: [instance])
            guard old != nil else { return false }
            try db.execute(sql: "DELETE FROM pushed")
            try db.execute(sql: "DELETE FROM pulled")
            return true
        }
    }

    // MARK: stat cache

    /// How many files the stat cache knows.
    public func fileCount() throws -> Int {
        try db.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM files") ?? 0 }
    }

    public func loadFiles() throws -> [RelativePath: CachedFile] {
        try db.read { db in
            var out: [RelativePath: CachedFile] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT \(Self.fileColumns) FROM files")
            while let row = try rows.next() {
                if let file = Self.cachedFile(row) { out[file.path] = file }
            }
            return out
        }
    }

    /// The stat cache's records for `paths` only.
    public func loadFiles(paths: [RelativePath]) throws -> [RelativePath: CachedFile] {
        try db.read { db in
            var out: [RelativePath: CachedFile] = [:]
            let select = try db.makeStatement(sql: "SELECT \(Self.fileColumns) FROM files WHERE path = ?")
            for path in paths {
                if let row = try Row.fetchOne(select, arguments: [Data(path.bytes)]), let file = Self.cachedFile(row) { out[path] = file }
            }
            return out
        }
    }

    static let fileColumns = "path, dev, ino, perm, size, mtime, ctime, digest, chunks, cached_at"

    /// A row read whole: `CachedRow` with its chunk list decoded.
    private static func cachedFile(_ row: Row) -> CachedFile? {
        guard let cached = CachedRow(row), let path = try? RelativePath(bytes: cached.path), let chunks = cached.chunks() else { return nil }
        return CachedFile(path: path, stat: cached.stat, digest: cached.digest, chunks: chunks, cachedAtNanos: cached.cachedAtNanos)
    }

    public func saveFiles(_ files: [CachedFile], removing removed: [RelativePath] = []) throws {
        guard !files.isEmpty || !removed.isEmpty else { return }
        try db.write { db in
            let insert = try db.makeStatement(sql: """
                INSERT OR REPLACE INTO files (path, dev, ino, perm, size, mtime, ctime, digest, chunks, cached_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            for f in files {
                try insert.execute(arguments: [Data(f.path.bytes), Int64(bitPattern: f.stat.device), Int64(bitPattern: f.stat.inode),
                                               Int64(f.stat.permissions), Int64(f.stat.size), f.stat.mtimeNanos, f.stat.ctimeNanos,
                                               Self.encodeID(f.digest), Self.encodeChunks(f.chunks), f.cachedAtNanos])
            }
            let delete = try db.makeStatement(sql: "DELETE FROM files WHERE path = ?")
            for p in removed { try delete.execute(arguments: [Data(p.bytes)]) }
        }
    }

    // MARK: records

    /// Which record: what was pushed, or what was pulled (the tables keep their names).
    public enum Record: String { case pushed, pulled }

    public func load(_ record: Record) throws -> [RelativePath: SyncedEntry] {
        try db.read { db in
            var out: [RelativePath: SyncedEntry] = [:]
            let rows = try Row.fetchCursor(db, sql: "SELECT \(Self.entryColumns) FROM \(record.rawValue)")
            while let row = try rows.next() { Self.addEntry(row, to: &out) }
            return out
        }
    }

    /// The record's entries at `paths`, and every entry below each of `subtrees`.
    public func load(_ record: Record, paths: [RelativePath], subtrees: [RelativePath]) throws -> [RelativePath: SyncedEntry] {
        try db.read { db in
            var out: [RelativePath: SyncedEntry] = [:]
            let one = try db.makeStatement(sql: "SELECT \(Self.entryColumns) FROM \(record.rawValue) WHERE path = ?")
            for path in paths {
                if let row = try Row.fetchOne(one, arguments: [Data(path.bytes)]) { Self.addEntry(row, to: &out) }
            }
            // Below "a/b": every path from "a/b/" up to, not including, "a/b0" ('0' follows '/'; BLOBs compare bytewise).
            let below = try db.makeStatement(sql: "SELECT \(Self.entryColumns) FROM \(record.rawValue) WHERE path >= ? AND path < ?")
            for root in subtrees {
                let rows = try Row.fetchCursor(below, arguments: [Data(root.bytes + [UInt8(ascii: "/")]), Data(root.bytes + [UInt8(ascii: "0")])])
                while let row = try rows.next() { Self.addEntry(row, to: &out) }
            }
            return out
        }
    }

    static let entryColumns = "path, kind, digest, target, perm, mtime, size"

    private static func addEntry(_ row: Row, to out: inout [RelativePath: SyncedEntry]) {
        let pathData: Data = row[0]
        guard let entry = syncedEntry(row), let path = try? RelativePath(bytes: [UInt8](pathData)) else { return }
        out[path] = entry
    }

    /// A record's row (`entryColumns`) as an entry; nil for a kind this version does not know.
    static func syncedEntry(_ row: Row) -> SyncedEntry? {
        guard let kind = SyncedEntry.Kind(rawValue: row[1]) else { return nil }
        let digestData: Data? = row[2]
        let targetData: Data? = row[3]
        return SyncedEntry(kind: kind, digest: digestData.flatMap(decodeID), target: targetData.map { [UInt8]($0) },
                           permissions: UInt32(row[4] as Int64), mtimeNanos: row[5], size: (row[6] as Int64?).map { UInt64($0) })
    }

    /// Applies changes to a record in one transaction: a nil entry removes the path.
    public func update(_ record: Record, _ changes: [(RelativePath, SyncedEntry?)]) throws {
        guard !changes.isEmpty else { return }
        try db.write { db in
            let insert = try db.makeStatement(sql: "INSERT OR REPLACE INTO \(record.rawValue) (path, kind, digest, target, perm, mtime, size) VALUES (?, ?, ?, ?, ?, ?, ?)")
            let delete = try db.makeStatement(sql: "DELETE FROM \(record.rawValue) WHERE path = ?")
            for (path, entry) in changes {
                if let e = entry {
                    try insert.execute(arguments: [Data(path.bytes), e.kind.rawValue, e.digest.map(Self.encodeID), e.target.map { Data($0) },
                                                   Int64(e.permissions), e.mtimeNanos, e.size.map { Int64($0) }])
                } else {
                    try delete.execute(arguments: [Data(path.bytes)])
                }
            }
        }
    }

    // MARK: encoding

    static func encodeID(_ id: ChunkID) -> Data {
        var d = Data(capacity: 16)
        withUnsafeBytes(of: id.low.littleEndian) { d.append(contentsOf: $0) }
        withUnsafeBytes(of: id.high.littleEndian) { d.append(contentsOf: $0) }
        return d
    }

    static func decodeID(_ d: Data) -> ChunkID? {
        guard d.count == 16 else { return nil }
        return d.withUnsafeBytes { raw in
            ChunkID(low: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                    high: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
    }

    static func encodeChunks(_ chunks: [ChunkRef]) -> Data {
        var d = Data(capacity: chunks.count * 20)
        for c in chunks {
            withUnsafeBytes(of: c.id.low.littleEndian) { d.append(contentsOf: $0) }
            withUnsafeBytes(of: c.id.high.littleEndian) { d.append(contentsOf: $0) }
            withUnsafeBytes(of: c.length.littleEndian) { d.append(contentsOf: $0) }
        }
        return d
    }

    /// Bytes of one chunk in an encoded chunk list: its id (16) and length (4).
    static let chunkRecordBytes = 20

    static func decodeChunks(_ d: Data) -> [ChunkRef]? {
        guard d.count % chunkRecordBytes == 0 else { return nil }
        return d.withUnsafeBytes { raw in
            var out: [ChunkRef] = []
            out.reserveCapacity(d.count / 20)
            var offset: UInt64 = 0
            var i = 0
            while i < raw.count {
                let id = ChunkID(low: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)),
                                 high: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)))
                let length = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i + 16, as: UInt32.self))
                out.append(ChunkRef(id: id, offset: offset, length: length))
                offset += UInt64(length)
                i += 20
            }
            return out
        }
    }
}
