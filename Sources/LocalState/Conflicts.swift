import Chunking
import Foundation
import GRDB
import SyncRules
import SyncSystem

extension ConflictSide {
    /// kind, digest (16 bytes, zero when none), size, mtime, then the symlink target.
    func encoded() -> Data {
        var d = Data([kind.rawValue])
        d.append(LocalDatabase.encodeID(digest ?? ChunkID(low: 0, high: 0)))
        withUnsafeBytes(of: size.littleEndian) { d.append(contentsOf: $0) }
        withUnsafeBytes(of: mtimeNanos.littleEndian) { d.append(contentsOf: $0) }
        d.append(contentsOf: target ?? [])
        return d
    }

    static func decode(_ d: Data) -> ConflictSide? {
        let bytes = [UInt8](d)
        guard bytes.count >= 33, let kind = Kind(rawValue: bytes[0]) else { return nil }
        let digest = LocalDatabase.decodeID(Data(bytes[1..<17]))
        func u64(_ at: Int) -> UInt64 { bytes[at..<(at + 8)].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        return ConflictSide(kind: kind, digest: kind == .file ? digest : nil, target: kind == .symlink ? Array(bytes[33...]) : nil,
                            size: u64(17), mtimeNanos: Int64(bitPattern: u64(25)))
    }
}

extension LocalDatabase {
    /// Every conflict left by the last pushes and pulls, sorted by path.
    public func conflicts() throws -> [ConflictRecord] {
        try db.read { db in
            var out: [ConflictRecord] = []
            let rows = try Row.fetchCursor(db, sql: "SELECT path, side, since, message, local, remote, recorded FROM conflicts ORDER BY path")
            while let row = try rows.next() {
                let pathData: Data = row[0]
                let sideText: String = row[1]
                guard let path = try? RelativePath(bytes: [UInt8](pathData)), let found = ConflictRecord.Found(rawValue: sideText),
                      let local = ConflictSide.decode(row[4]), let remote = ConflictSide.decode(row[5]),
                      let recorded = ConflictSide.decode(row[6]) else { continue }
                out.append(ConflictRecord(path: path, found: found, sinceNanos: row[2], local: local, remote: remote,
                                          recorded: recorded, message: row[3]))
            }
            return out
        }
    }

    /// Records what a session found: `found` conflicts are added or refreshed (keeping when each was first
    /// found), `cleared` paths are no longer in conflict. With `allOf`, the session looked at every path of that
    /// kind, so every other conflict of the kind is gone too.
    public func noteConflicts(_ found: [ConflictRecord], cleared: [RelativePath], allOf kind: ConflictRecord.Found? = nil) throws {
        try db.write { db in
            let old = try Row.fetchAll(db, sql: "SELECT path, since FROM conflicts")
            var since: [Data: Int64] = [:]
            for row in old { since[row[0]] = row[1] }
            if let kind {
                let keep = Set(found.filter { $0.found == kind }.map { Data($0.path.bytes) })
                let stale = old.map { $0[0] as Data }.filter { !keep.contains($0) }
                let delete = try db.makeStatement(sql: "DELETE FROM conflicts WHERE path = ? AND side = ?")
                for path in stale { try delete.execute(arguments: [path, kind.rawValue]) }
            }
            let delete = try db.makeStatement(sql: "DELETE FROM conflicts WHERE path = ?")
            // Only paths that had a conflict have a row to delete (a first push clears 100k paths of none).
            for path in cleared where since[Data(path.bytes)] != nil { try delete.execute(arguments: [Data(path.bytes)]) }
            let insert = try db.makeStatement(sql: """
                INSERT OR REPLACE INTO conflicts (path, side, since, message, local, remote, recorded) VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
            for c in found {
                let key = Data(c.path.bytes)
                try insert.execute(arguments: [key, c.found.rawValue, since[key] ?? c.sinceNanos, c.message, c.local.encoded(),
                                               c.remote.encoded(), c.recorded.encoded()])
            }
        }
    }
}
