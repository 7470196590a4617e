@testable import AgentCore
import Chunking
import Foundation
import GRDB
import SyncSystem
import Testing

/// The agent's record index with long chunk lists kept in pieces (issue 29): a list is read back whole, an append
/// or a shrink leaves every chunk of the new version found and none of what it dropped, damage reads as no record,
/// and an index an older agent made (lists in their records) is taken over.
@Suite
final class RecordIndexTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "record-index-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Each test's scratch database goes with it.
    deinit { try? FileManager.default.removeItem(atPath: directory) }

    var database: String { directory + "/records.db" }

    /// A file's record of `count` chunks, each `ChunkID(low: seed + i, high: i)` of length 100 + i.
    static func record(_ path: String, chunks count: Int, seed: UInt64 = 1000) throws -> FileRecord {
        var chunks: [ChunkRef] = []
        var offset: UInt64 = 0
        for i in 0..<count {
            chunks.append(ChunkRef(id: ChunkID(low: seed + UInt64(i), high: UInt64(i)), offset: offset, length: UInt32(100 + i)))
            offset += UInt64(100 + i)
        }
        let stat = FileStat(device: 1, inode: 2, kind: .regular, permissions: 0o644, size: offset, mtimeNanos: 5, ctimeNanos: 6)
        return FileRecord(path: try RelativePath(path), stat: stat, digest: ChunkID(low: seed, high: UInt64(count)), chunks: chunks,
                          recordedAtNanos: 7)
    }

    func pieces(of path: String) throws -> [Int] {
        let queue = try DatabaseQueue(path: database)
        defer { try? queue.close() }
        return try queue.read { db in
            try Int.fetchAll(db, sql: "SELECT length(entries) / 20 FROM pieces WHERE path = ? ORDER BY piece", arguments: [Data(path.utf8)])
        }
    }

    /// Every chunk of `record` is found at its place in it; none of `gone` is found in its file.
    func expectLocated(_ index: RecordIndex, _ record: FileRecord, gone: [ChunkRef] = []) throws {
        for c in record.chunks {
            let found = try index.locate(c.id) { $0 == record.path }
            #expect(found?.path == record.path && found?.offset == c.offset && found?.length == c.length, "chunk at \(c.offset)")
        }
        for c in gone {
            #expect(try index.locate(c.id) { $0 == record.path } == nil, "a dropped chunk at \(c.offset) is still found")
        }
    }

    @Test func aLongListIsKeptInPiecesAndReadBackWhole() throws {
        let index = try RecordIndex(path: database, pieceEntries: 4)
        let short = try Self.record("short.bin", chunks: 4, seed: 50)
        let long = try Self.record("long.bin", chunks: 10)
        try index.transaction {
            try index.put(short)
            try index.put(long)
        }
        #expect(try pieces(of: "short.bin") == [])
        #expect(try pieces(of: "long.bin") == [4, 4, 2])
        #expect(try index.record(at: short.path) == short)
        #expect(try index.record(at: long.path) == long)
        var listless = long
        listless.chunks = []
        #expect(try index.record(at: long.path, chunks: false) == listless)
        try expectLocated(index, long)
        try expectLocated(index, short)
    }

    /// An append keeps the pieces and keys of the part both versions share; a changed middle, a shrink into one
    /// piece, a shrink into the record and a removal each leave exactly the new version's chunks found.
    @Test func changesToALongListLeaveEveryChunkOfTheNewVersionFound() throws {
        let index = try RecordIndex(path: database, pieceEntries: 4)
        let first = try Self.record("f.bin", chunks: 10)
        try index.transaction { try index.put(first) }

        var appended = first
        let tail = try Self.record("f.bin", chunks: 15, seed: 9000).chunks[10...]
        appended.chunks.removeLast()  // the last chunk changes, as an append's does
        let last = first.chunks[9]
        var offset = last.offset
        for c in [ChunkRef(id: ChunkID(low: 77, high: 77), offset: 0, length: last.length + 5)] + Array(tail) {
            appended.chunks.append(ChunkRef(id: c.id, offset: offset, length: c.length))
            offset += UInt64(c.length)
        }
        try index.transaction { try index.put(appended) }
        #expect(try pieces(of: "f.bin") == [4, 4, 4, 3])
        #expect(try index.record(at: appended.path) == appended)
        try expectLocated(index, appended, gone: [last])

        var middle = appended
        middle.chunks[5].id = ChunkID(low: 55, high: 55)
        try index.transaction { try index.put(middle) }
        #expect(try index.record(at: middle.path) == middle)
        try expectLocated(index, middle, gone: [appended.chunks[5]])

        let shrunk = try Self.record("f.bin", chunks: 6)
        try index.transaction { try index.put(shrunk) }
        #expect(try pieces(of: "f.bin") == [4, 2])
        #expect(try index.record(at: shrunk.path) == shrunk)
        try expectLocated(index, shrunk, gone: Array(middle.chunks[6...]) + [middle.chunks[5]])

        let inline = try Self.record("f.bin", chunks: 3, seed: 4000)
        try index.transaction { try index.put(inline) }
        #expect(try pieces(of: "f.bin") == [])
        #expect(try index.record(at: inline.path) == inline)
        try expectLocated(index, inline, gone: shrunk.chunks)

        let again = try Self.record("f.bin", chunks: 9)
        try index.transaction { try index.put(again) }
        try index.transaction { try index.remove(again.path) }
        #expect(try pieces(of: "f.bin") == [])
        #expect(try index.record(at: again.path) == nil)
        try expectLocated(index, try Self.record("f.bin", chunks: 0), gone: again.chunks)
    }

    /// A record whose pieces do not add up (one lost) is no record, and a new version is written over it whole.
    @Test func aRecordWithAPieceMissingIsNoRecord() throws {
        let long = try Self.record("long.bin", chunks: 10)
        do {
            let index = try RecordIndex(path: database, pieceEntries: 4)
            try index.transaction { try index.put(long) }
        }
        let queue = try DatabaseQueue(path: database)
        try queue.write { try $0.execute(sql: "DELETE FROM pieces WHERE piece = 1") }
        try queue.close()

        let index = try RecordIndex(path: database)
        #expect(index.pieceEntries == 4, "the piece size is the database's")
        #expect(try index.record(at: long.path) == nil)
        #expect(try index.record(at: long.path, chunks: false) != nil)
        let next = try Self.record("long.bin", chunks: 11)
        try index.transaction { try index.put(next) }
        #expect(try index.record(at: next.path) == next)
        #expect(try pieces(of: "long.bin") == [4, 4, 3])
        try expectLocated(index, next)
    }

    /// An index made by an agent of schema 1 (every list in its record) is taken over: its records read as they
    /// were, and a long one is moved into pieces when it is next written, its keys kept right.
    @Test func anIndexOfSchemaOneIsTakenOver() throws {
        let old = try Self.record("big.bin", chunks: 9)
        let queue = try DatabaseQueue(path: database)
        try queue.writeWithoutTransaction { db in
            try db.execute(sql: """
                CREATE TABLE records(path BLOB PRIMARY KEY, record BLOB NOT NULL, recorded INTEGER NOT NULL) WITHOUT ROWID;
                CREATE TABLE chunks(id BLOB NOT NULL, path BLOB NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
                                    PRIMARY KEY (id, path)) WITHOUT ROWID;
                CREATE TABLE legacy_partials(directory BLOB PRIMARY KEY) WITHOUT ROWID;
                CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                PRAGMA user_version = 1;
                """)
            try db.execute(sql: "INSERT INTO records(path, record, recorded) VALUES (?, ?, 7)",
                           arguments: [Data("big.bin".utf8), Data(AgentState.encode(old))])
            for c in old.chunks {
                var key = Data(count: 16)
                key.withUnsafeMutableBytes {
                    $0.storeBytes(of: c.id.low.littleEndian, toByteOffset: 0, as: UInt64.self)
                    $0.storeBytes(of: c.id.high.littleEndian, toByteOffset: 8, as: UInt64.self)
                }
                try db.execute(sql: "INSERT INTO chunks VALUES (?, ?, ?, ?)",
                               arguments: [key, Data("big.bin".utf8), Int64(c.offset), Int64(c.length)])
            }
        }
        try queue.close()

        let index = try RecordIndex(path: database, pieceEntries: 4)
        #expect(try index.record(at: old.path) == old)
        var appended = try Self.record("big.bin", chunks: 12)
        appended.chunks[8].id = ChunkID(low: 88, high: 88)
        try index.transaction { try index.put(appended) }
        #expect(try pieces(of: "big.bin") == [4, 4, 4])
        #expect(try index.record(at: appended.path) == appended)
        try expectLocated(index, appended, gone: [old.chunks[8]])
        let reopened = try DatabaseQueue(path: database)
        #expect(try reopened.read { try Int.fetchOne($0, sql: "PRAGMA user_version") } == 2)
        try reopened.close()
    }
}
