import Chunking
import Foundation
import GRDB
import SnapshotFormat
import SyncSystem

/// Where the store keeps a chunk: its pack, and its entry in that pack's index.
public struct StoredChunk: Sendable, Equatable {
    public var pack: ChunkID
    public var entry: PackEntry
}

/// What this machine knows a store holds: its packs and every chunk in them, from the pack indexes. One SQLite
/// file per store location, shared by the projects that use it; refreshed by reading the indexes it has not
/// seen. Knowing a chunk here is a promise only as good as the store: a reader checks every chunk it gets.
public final class StoreCatalog: Sendable {
    let db: DatabaseQueue
    public let path: String

    public init(path: String) throws {
        self.path = path
        db = try openDatabase(path)
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE packs (pack BLOB PRIMARY KEY, size INTEGER NOT NULL);
                CREATE TABLE chunks (id BLOB PRIMARY KEY, pack BLOB NOT NULL, offset INTEGER NOT NULL, stored INTEGER NOT NULL,
                    raw INTEGER NOT NULL, compressed INTEGER NOT NULL);
                """)
        }
        // Refs are written once and never changed (a new push is a new name), so a ref read once is known by name.
        migrator.registerMigration("v2") { db in
            try db.execute(sql: "CREATE TABLE refs (name TEXT PRIMARY KEY, body BLOB NOT NULL)")
        }
        try migrator.migrate(db)
    }

    /// The bodies of those of `names` read before.
    public func refBodies(_ names: [String]) throws -> [String: [UInt8]] {
        try db.read { db in
            var out: [String: [UInt8]] = [:]
            let select = try db.makeStatement(sql: "SELECT body FROM refs WHERE name = ?")
            for name in names {
                if let data = try Data.fetchOne(select, arguments: [name]) { out[name] = Array(data) }
            }
            return out
        }
    }

    /// Keeps refs' bodies (each checked by its reader first) so that they are not read from the store again.
    public func rememberRefs(_ bodies: [(name: String, body: [UInt8])]) throws {
        guard !bodies.isEmpty else { return }
        try db.write { db in
            let insert = try db.makeStatement(sql: "INSERT OR REPLACE INTO refs (name, body) VALUES (?, ?)")
            for (name, body) in bodies { try insert.execute(arguments: [name, Data(body)]) }
        }
    }

    /// Forgets refs the store no longer lists (gc'd, set aside).
    public func forgetRefs(_ names: [String]) throws {
        guard !names.isEmpty else { return }
        try db.write { db in
            for name in names { try db.execute(sql: "DELETE FROM refs WHERE name = ?", arguments: [name]) }
        }
    }

    /// Forgets where the store keeps `ids` (found damaged): they are uploaded again by the next upload that needs
    /// them, into a pack of their own, and found there from then on.
    public func forget(chunks ids: [ChunkID]) throws {
        try db.write { db in
            for id in ids { try db.execute(sql: "DELETE FROM chunks WHERE id = ?", arguments: [LocalDatabase.encodeID(id)]) }
        }
    }

    /// The packs known.
    public func packs() throws -> Set<ChunkID> {
        try db.read { db in
            var out: Set<ChunkID> = []
            let rows = try Row.fetchCursor(db, sql: "SELECT pack FROM packs")
            while let row = try rows.next() { if let id = LocalDatabase.decodeID(row[0]) { out.insert(id) } }
            return out
        }
    }

    /// Records a pack from its index (a chunk already known in another pack keeps that place).
    public func add(_ index: PackIndex) throws {
        let pack = index.pack
        try db.write { db in
            try db.execute(sql: "INSERT OR REPLACE INTO packs (pack, size) VALUES (?, ?)", arguments: [LocalDatabase.encodeID(pack), Int64(index.size)])
            let insert = try db.makeStatement(sql: """
                INSERT OR IGNORE INTO chunks (id, pack, offset, stored, raw, compressed) VALUES (?, ?, ?, ?, ?, ?)
                """)
            let packData = LocalDatabase.encodeID(pack)
            for e in index.entries {
                try insert.execute(arguments: [LocalDatabase.encodeID(e.id), packData, Int64(e.offset), Int64(e.storedLength),
                                               Int64(e.rawLength), e.compressed ? 1 : 0])
            }
        }
    }

    /// The places of those of `ids` the store holds.
    public func locations<S: Sequence>(_ ids: S) throws -> [ChunkID: StoredChunk] where S.Element == ChunkID {
        try db.read { db in
            var out: [ChunkID: StoredChunk] = [:]
            let select = try db.makeStatement(sql: "SELECT pack, offset, stored, raw, compressed FROM chunks WHERE id = ?")
            for id in ids where out[id] == nil {
                guard let row = try Row.fetchOne(select, arguments: [LocalDatabase.encodeID(id)]), let pack = LocalDatabase.decodeID(row[0]) else { continue }
                out[id] = StoredChunk(pack: pack, entry: PackEntry(id: id, offset: UInt64(row[1] as Int64), storedLength: UInt32(row[2] as Int64),
                                                                   rawLength: UInt32(row[3] as Int64), compressed: (row[4] as Int64) != 0))
            }
            return out
        }
    }

    /// Forgets packs (deleted from the store) and their chunks.
    public func forget(packs: [ChunkID]) throws {
        try db.write { db in
            for pack in packs {
                try db.execute(sql: "DELETE FROM chunks WHERE pack = ?", arguments: [LocalDatabase.encodeID(pack)])
                try db.execute(sql: "DELETE FROM packs WHERE pack = ?", arguments: [LocalDatabase.encodeID(pack)])
            }
        }
    }
}
