import Chunking
import Foundation
import GRDB
import SyncSystem

/// Where the store keeps a chunk: its pack, and its place there.
public struct StoredChunk: Sendable, Equatable {
    public var pack: ChunkID
    public var offset: UInt64
    public var storedLength: UInt32
    public var rawLength: UInt32
    public var compressed: Bool

    public init(pack: ChunkID, offset: UInt64, storedLength: UInt32, rawLength: UInt32, compressed: Bool) {
        self.pack = pack
        self.offset = offset
        self.storedLength = storedLength
        self.rawLength = rawLength
        self.compressed = compressed
    }
}

/// What this machine knows a store holds: its packs and every chunk in them, from the pack indexes. One SQLite
/// file per store location, shared by the projects that use it; refreshed by reading the indexes it has not
/// seen. Knowing a chunk here is a promise only as good as the store: a reader checks every chunk it gets.
public final class StoreCatalog {
    let db: DatabaseQueue
    public let path: String

    public init(path: String) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        var config = Configuration()
        config.journalMode = .wal
        config.busyMode = .timeout(10)
        db = try DatabaseQueue(path: path, configuration: config)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE packs (pack BLOB PRIMARY KEY, size INTEGER NOT NULL);
                CREATE TABLE chunks (id BLOB PRIMARY KEY, pack BLOB NOT NULL, offset INTEGER NOT NULL, stored INTEGER NOT NULL,
                    raw INTEGER NOT NULL, compressed INTEGER NOT NULL);
                """)
        }
        try migrator.migrate(db)
    }

    /// The packs known.
    public func packs() throws -> Set<ChunkID> {
        try db.read { db in
            var out: Set<ChunkID> = []
            let rows = try Row.fetchCursor(db, sql: "SELECT pack FROM packs")
            while let row = try rows.next() { if let id = StateStore.decodeID(row[0]) { out.insert(id) } }
            return out
        }
    }

    /// Records a pack and its chunks (a chunk already known in another pack keeps that place).
    public func add(pack: ChunkID, size: UInt64, chunks: [(ChunkID, StoredChunk)]) throws {
        try db.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO packs (pack, size) VALUES (?, ?)", arguments: [StateStore.encodeID(pack), Int64(size)])
            let insert = try db.makeStatement(sql: """
                INSERT OR IGNORE INTO chunks (id, pack, offset, stored, raw, compressed) VALUES (?, ?, ?, ?, ?, ?)
                """)
            let packData = StateStore.encodeID(pack)
            for (id, c) in chunks {
                try insert.execute(arguments: [StateStore.encodeID(id), packData, Int64(c.offset), Int64(c.storedLength),
                                               Int64(c.rawLength), c.compressed ? 1 : 0])
            }
        }
    }

    /// The places of those of `ids` the store holds.
    public func locations<S: Sequence>(_ ids: S) throws -> [ChunkID: StoredChunk] where S.Element == ChunkID {
        try db.read { db in
            var out: [ChunkID: StoredChunk] = [:]
            let select = try db.makeStatement(sql: "SELECT pack, offset, stored, raw, compressed FROM chunks WHERE id = ?")
            for id in ids where out[id] == nil {
                guard let row = try Row.fetchOne(select, arguments: [StateStore.encodeID(id)]), let pack = StateStore.decodeID(row[0]) else { continue }
                out[id] = StoredChunk(pack: pack, offset: UInt64(row[1] as Int64), storedLength: UInt32(row[2] as Int64),
                                      rawLength: UInt32(row[3] as Int64), compressed: (row[4] as Int64) != 0)
            }
            return out
        }
    }

    /// Forgets packs (deleted from the store) and their chunks.
    public func forget(packs: [ChunkID]) throws {
        try db.write { db in
            for pack in packs {
                try db.execute(sql: "DELETE FROM chunks WHERE pack = ?", arguments: [StateStore.encodeID(pack)])
                try db.execute(sql: "DELETE FROM packs WHERE pack = ?", arguments: [StateStore.encodeID(pack)])
            }
        }
    }
}
