import CSQLite
#if canImport(Glibc)
import Glibc
#endif

/// A failed SQLite call: what was being done, SQLite's result code and its message.
struct SQLiteError: Error, CustomStringConvertible {
    let code: Int32
    let description: String

    /// The file is not a database, or is damaged: what can be thrown away and made again.
    var isDamage: Bool { code & 0xff == SQLITE_CORRUPT || code & 0xff == SQLITE_NOTADB }
}

/// One SQLite connection, used by one thread at a time, with the few calls the agent's record index needs.
final class SQLiteConnection {
    private let handle: OpaquePointer
    let path: String

    /// Opens (making it if `create`) the database at `path`.
    init(path: String, create: Bool) throws {
        var made: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &made, flags, nil)
        guard rc == SQLITE_OK, let made else {
            let message = made.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let made { sqlite3_close_v2(made) }
            throw SQLiteError(code: rc, description: "cannot open \(path): \(message)")
        }
        handle = made
        self.path = path
        sqlite3_extended_result_codes(handle, 1)
        // Another agent of the same project (a build next to a push) may hold the write lock for one batch.
        sqlite3_busy_timeout(handle, 10_000)
    }

    deinit { sqlite3_close_v2(handle) }

    fileprivate func check(_ rc: Int32, _ what: String) throws {
        guard rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE else {
            throw SQLiteError(code: rc, description: "\(what) in \(path): \(String(cString: sqlite3_errmsg(handle)))")
        }
    }

    /// Runs statements that return nothing the caller needs.
    func execute(_ sql: String) throws {
        try check(sqlite3_exec(handle, sql, nil, nil, nil), sql)
    }

    /// The first column of the first row of `sql`, as text (a pragma's answer).
    func text(_ sql: String) throws -> String? {
        let statement = try prepare(sql)
        return try statement.step() ? statement.text(0) : nil
    }

    func prepare(_ sql: String) throws -> SQLiteStatement {
        var made: OpaquePointer?
        try check(sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &made, nil), "preparing \(sql)")
        guard let made else { throw SQLiteError(code: SQLITE_MISUSE, description: "empty statement \(sql)") }
        return SQLiteStatement(made, connection: self, sql: sql)
    }
}

/// A prepared statement, reset and rebound for each use.
final class SQLiteStatement {
    private let handle: OpaquePointer
    private let connection: SQLiteConnection
    private let sql: String

    fileprivate init(_ handle: OpaquePointer, connection: SQLiteConnection, sql: String) {
        self.handle = handle
        self.connection = connection
        self.sql = sql
    }

    deinit { sqlite3_finalize(handle) }

    /// Starts a new use: the last one's row and bindings are dropped.
    @discardableResult
    func reset() -> SQLiteStatement {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
        return self
    }

    func bind(_ index: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { bind(index, $0) }
    }

    /// Binds a copy of `raw`'s bytes.
    func bind(_ index: Int32, _ raw: UnsafeRawBufferPointer) {
        // A zero-length blob still binds as a blob, not NULL.
        _ = sqlite3_bind_blob(handle, index, raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(raw.count), syncd_sqlite_transient())
    }

    func bind(_ index: Int32, _ value: Int64) { sqlite3_bind_int64(handle, index, value) }

    /// Steps once: true while there is a row to read.
    func step() throws -> Bool {
        let rc = sqlite3_step(handle)
        if rc == SQLITE_ROW { return true }
        defer { sqlite3_reset(handle) }
        try connection.check(rc, sql)
        return false
    }

    /// Steps a statement that returns no rows.
    func run() throws { while try step() {} }

    func blob(_ column: Int32) -> [UInt8] { withBlob(column) { Array($0) } }

    /// The column's bytes in place, valid until the next step or reset.
    func withBlob<T>(_ column: Int32, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count > 0, let base = sqlite3_column_blob(handle, column) else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        return try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }

    func text(_ column: Int32) -> String? {
        guard let text = sqlite3_column_text(handle, column) else { return nil }
        return String(cString: text)
    }
}
