import CSQLite
import CohortCore

/// A value bound to or read from SQLite.
public enum SQLValue: Equatable, Sendable {
    case null
    case int(Int64)
    case real(Double)
    case text(String)

    public var intValue: Int64? { if case .int(let i) = self { return i }; return nil }
    public var textValue: String? { if case .text(let s) = self { return s }; return nil }
}

/// What went wrong in the TCC library. Business code throws `.refused` to turn a try down
/// (the local transaction rolls back, the service answers 409).
public enum TCCError: Error, Equatable, CustomStringConvertible {
    /// SQLite failed (code, message, what the library was doing).
    case sqlite(code: Int32, message: String, context: String)
    /// The business refused the phase (e.g. not enough stock); nothing was kept.
    case refused(String)
    /// The call contradicts what the barrier holds (confirm with no try, cancel after confirm).
    case conflict(String)
    /// The request is malformed.
    case badRequest(String)

    public var description: String {
        switch self {
        case .sqlite(let code, let message, let context): return "sqlite error \(code) while \(context): \(message)"
        case .refused(let m): return "refused: \(m)"
        case .conflict(let m): return "conflict: \(m)"
        case .badRequest(let m): return "bad request: \(m)"
        }
    }
}

private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// One SQLite connection (WAL, busy timeout). Not thread-safe: one thread uses it at a time;
/// `TCCResource` keeps a pool and hands each phase its own.
public final class SQLiteConnection {
    public let path: String
    private var db: OpaquePointer?
    private var statements: [String: OpaquePointer] = [:]

    /// Whether `path` names an in-memory database shared by this process's connections
    /// (`file:NAME?mode=memory&cache=shared`): the deterministic simulation's service "disks",
    /// which live as long as one connection to them is open and never touch a file.
    public static func isSharedMemoryURI(_ path: String) -> Bool {
        path.hasPrefix("file:") && path.contains("mode=memory") && path.contains("cache=shared")
    }

    public init(path: String, busyTimeoutMs: Int32 = 10_000) throws {
        self.path = path
        var handle: OpaquePointer?
        let inMemory = Self.isSharedMemoryURI(path)
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | (inMemory ? SQLITE_OPEN_URI : 0)
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw TCCError.sqlite(code: rc, message: message, context: "opening \(path)")
        }
        db = handle
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, busyTimeoutMs)
        // An in-memory database has no journal file to put in WAL mode and nothing to sync: a
        // committed transaction is simply there for the next connection.
        if inMemory { return }
        do {
            let mode = try query("PRAGMA journal_mode=WAL").first?.first?.textValue
            guard mode?.lowercased() == "wal" else {
                throw TCCError.sqlite(code: SQLITE_ERROR, message: "journal_mode is \(mode ?? "nil")", context: "enabling WAL")
            }
            // FULL: a phase's answer promises its effect survives a power loss.
            try execute("PRAGMA synchronous=FULL")
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public func close() {
        for s in statements.values { sqlite3_finalize(s) }
        statements = [:]
        if let db { sqlite3_close_v2(db) }
        db = nil
    }

    /// Runs a script of statements with no parameters (schema creation).
    public func script(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? "error"
            sqlite3_free(message)
            throw TCCError.sqlite(code: rc, message: text, context: "running a script")
        }
    }

    /// Runs one statement; returns the number of rows it changed.
    @discardableResult
    public func execute(_ sql: String, _ params: [SQLValue] = []) throws -> Int {
        let stmt = try prepared(sql, params)
        defer { sqlite3_reset(stmt); sqlite3_clear_bindings(stmt) }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            if rc == SQLITE_ROW { continue }
            throw failure(rc, sql)
        }
        return Int(sqlite3_changes(db))
    }

    /// Runs one query; returns its rows.
    public func query(_ sql: String, _ params: [SQLValue] = []) throws -> [[SQLValue]] {
        let stmt = try prepared(sql, params)
        defer { sqlite3_reset(stmt); sqlite3_clear_bindings(stmt) }
        var rows: [[SQLValue]] = []
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw failure(rc, sql) }
            var row: [SQLValue] = []
            for i in 0..<sqlite3_column_count(stmt) {
                switch sqlite3_column_type(stmt, i) {
                case SQLITE_INTEGER: row.append(.int(sqlite3_column_int64(stmt, i)))
                case SQLITE_FLOAT: row.append(.real(sqlite3_column_double(stmt, i)))
                case SQLITE_NULL: row.append(.null)
                default: row.append(.text(sqlite3_column_text(stmt, i).map { String(cString: $0) } ?? ""))
                }
            }
            rows.append(row)
        }
        return rows
    }

    /// Runs `body` inside `BEGIN IMMEDIATE` … `COMMIT` (the write lock is taken at the start,
    /// so two phases of one branch never interleave); rolls back if it throws.
    public func immediateTransaction<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        try execute("BEGIN IMMEDIATE")
        do {
            let value = try body(self)
            try execute("COMMIT")
            return value
        } catch {
            _ = try? execute("ROLLBACK")
            throw error
        }
    }

    private func prepared(_ sql: String, _ params: [SQLValue]) throws -> OpaquePointer {
        let stmt: OpaquePointer
        if let s = statements[sql] {
            stmt = s
        } else {
            var s: OpaquePointer?
            let rc = sqlite3_prepare_v2(db, sql, -1, &s, nil)
            guard rc == SQLITE_OK, let s else { throw failure(rc, sql) }
            if statements.count >= 256 {
                for old in statements.values { sqlite3_finalize(old) }
                statements = [:]
            }
            statements[sql] = s
            stmt = s
        }
        for (i, p) in params.enumerated() {
            let index = Int32(i + 1)
            let rc: Int32
            switch p {
            case .null: rc = sqlite3_bind_null(stmt, index)
            case .int(let v): rc = sqlite3_bind_int64(stmt, index, v)
            case .real(let v): rc = sqlite3_bind_double(stmt, index, v)
            case .text(let v): rc = sqlite3_bind_text(stmt, index, v, -1, sqliteTransient)
            }
            guard rc == SQLITE_OK else { throw failure(rc, sql) }
        }
        return stmt
    }

    private func failure(_ rc: Int32, _ sql: String) -> TCCError {
        .sqlite(code: rc, message: db.map { String(cString: sqlite3_errmsg($0)) } ?? "closed", context: String(sql.prefix(80)))
    }
}
