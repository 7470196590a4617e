import Chunking
import Foundation
import GRDB
import SyncRules
import SyncSystem

/// A stat-cache row as read in path order: its chunk list stays encoded until asked for, since most files a
/// push looks at are unchanged and need only their identity and digest.
public struct CachedRow {
    public let path: [UInt8]
    public let stat: FileStat
    public let digest: ChunkID
    public let cachedAtNanos: Int64
    private let chunkData: Data

    init?(_ row: Row) {
        let pathData: Data = row[0]
        let digestData: Data = row[7]
        let chunkData: Data = row[8]
        // A row whose chunk list would not decode counts as no row, as when the cache is loaded whole: the file is
        // hashed again and the row rewritten.
        guard let digest = LocalDatabase.decodeID(digestData), chunkData.count % LocalDatabase.chunkRecordBytes == 0 else { return nil }
        path = [UInt8](pathData)
        stat = FileStat(device: UInt64(bitPattern: row[1]), inode: UInt64(bitPattern: row[2]), kind: .regular,
                        permissions: UInt32(row[3] as Int64), size: UInt64(row[4] as Int64), mtimeNanos: row[5], ctimeNanos: row[6])
        self.digest = digest
        self.chunkData = chunkData
        cachedAtNanos = row[9]
    }

    /// The file's chunks; nil when the row's list does not decode (the file is then hashed again).
    public func chunks() -> [ChunkRef]? { LocalDatabase.decodeChunks(chunkData) }

    /// True when `current` is the same file, unchanged, and it was not being modified when it was cached.
    public func isFresh(for current: FileStat) -> Bool {
        stat.sameContentIdentity(as: current) && stat.permissions == current.permissions
            && cachedAtNanos - current.mtimeNanos > 1_000_000_000
    }
}

/// The stat cache and one record read side by side in path order (bytewise, as SQLite keeps BLOB keys), for a
/// caller that walks the tree in the same order (`ProjectScanner.walkInPathOrder`) and merges the three as it
/// goes: one row of each in memory at a time, whatever the number of files. Made by
/// `LocalDatabase.readInPathOrder`, and used only inside it.
public final class PathOrderedRows {
    private let files: RowCursor
    private let record: RowCursor
    private var nextFile: CachedRow?
    private var nextRecorded: (path: [UInt8], entry: SyncedEntry?)?
    private var filesEnded = false
    private var recordEnded = false
    /// False once a cursor gave a path that was not after the one before it: the rows are not in the order the
    /// merge needs (never seen; a database written by other means), and what was merged cannot be trusted.
    public private(set) var inOrder = true
    /// The paths of stat-cache rows passed over, at most `staleLimit`: files the walk no longer finds (deleted,
    /// renamed, no longer regular files, or not walked: ignored, or below a pull path).
    public private(set) var staleCacheRows: [[UInt8]] = []
    public static let staleLimit = 65_536

    init(files: RowCursor, record: RowCursor) {
        self.files = files
        self.record = record
    }

    /// The stat cache's row at `path`, if it has one; rows before it are passed over.
    public func cached(at path: [UInt8]) throws -> CachedRow? {
        while true {
            if nextFile == nil && !filesEnded { try advanceFiles() }
            guard let row = nextFile else { return nil }
            if row.path.lexicographicallyPrecedes(path) {
                nextFile = nil
                if staleCacheRows.count < Self.staleLimit { staleCacheRows.append(row.path) }
                continue
            }
            guard row.path == path else { return nil }
            nextFile = nil
            return row
        }
    }

    /// Passes over the stat cache's rows after the last path asked for (a walk that went to the end), as stale.
    public func remainingCached() throws {
        while staleCacheRows.count < Self.staleLimit {
            if nextFile == nil && !filesEnded { try advanceFiles() }
            guard let row = nextFile else { return }
            nextFile = nil
            staleCacheRows.append(row.path)
        }
    }

    /// The record's entry at `path`, if it has one. Entries before it (paths gone from the walk) go to `gone`
    /// first, in order; once `gone` returns false, nil is returned at once and the entries after that one are left
    /// for later (a part of a push ends there).
    public func recorded(at path: [UInt8], gone: (RelativePath, SyncedEntry) throws -> Bool) throws -> SyncedEntry? {
        while true {
            if nextRecorded == nil && !recordEnded { try advanceRecord() }
            guard let row = nextRecorded else { return nil }
            if row.path.lexicographicallyPrecedes(path) {
                nextRecorded = nil
                if let entry = row.entry, let p = try? RelativePath(bytes: row.path), try !gone(p, entry) { return nil }
                continue
            }
            guard row.path == path else { return nil }
            nextRecorded = nil
            return row.entry
        }
    }

    /// The record's entries after the walk's last path, to `gone`, until it returns false.
    public func remainingRecorded(_ gone: (RelativePath, SyncedEntry) throws -> Bool) throws {
        while true {
            if nextRecorded == nil && !recordEnded { try advanceRecord() }
            guard let row = nextRecorded else { return }
            nextRecorded = nil
            if let entry = row.entry, let p = try? RelativePath(bytes: row.path), try !gone(p, entry) { return }
        }
    }

    private var lastFilePath: [UInt8]?
    private var lastRecordPath: [UInt8]?

    private func advanceFiles() throws {
        while let row = try files.next() {
            guard let cached = CachedRow(row) else { continue }
            if let last = lastFilePath, !last.lexicographicallyPrecedes(cached.path) { inOrder = false }
            lastFilePath = cached.path
            nextFile = cached
            return
        }
        filesEnded = true
    }

    private func advanceRecord() throws {
        guard let row = try record.next() else {
            recordEnded = true
            return
        }
        let pathData: Data = row[0]
        let path = [UInt8](pathData)
        if let last = lastRecordPath, !last.lexicographicallyPrecedes(path) { inOrder = false }
        lastRecordPath = path
        nextRecorded = (path, LocalDatabase.syncedEntry(row))
    }
}

extension LocalDatabase {
    /// Runs `body` with the stat cache and `record` open for reading in path order, in one read transaction; with
    /// `after`, from the first path after it (a walk taken up there).
    public func readInPathOrder<T>(_ record: Record, after: [UInt8]? = nil, _ body: (PathOrderedRows) throws -> T) throws -> T {
        try db.read { db in
            let from = after.map { ("WHERE path > ?", StatementArguments([Data($0)])) } ?? ("", StatementArguments())
            let files = try Row.fetchCursor(db, sql: "SELECT \(Self.fileColumns) FROM files \(from.0) ORDER BY path", arguments: from.1)
            let recorded = try Row.fetchCursor(db, sql: "SELECT \(Self.entryColumns) FROM \(record.rawValue) \(from.0) ORDER BY path",
                                               arguments: from.1)
            return try body(PathOrderedRows(files: files, record: recorded))
        }
    }
}
