import CSQLite
import CohortCore
import CohortPosix

/// One SQLite connection and its errors, shared by everything that keeps state in SQLite: the
/// agent's key-value store (its error type), the outbox, inbox and relay, the TCC barrier and
/// the demo services' own tables.

/// Why a SQLite call failed.
public struct SQLiteError: Error, CustomStringConvertible, Equatable {
    /// SQLite's (extended) result code.
    public let code: Int32
    public let message: String
    /// What was being done.
    public let context: String
    /// The database file, so that an operator reading the error knows which one to look at
    /// (a process may have several: a store, an outbox, a barrier table).
    public let file: String?
    public init(code: Int32, message: String, context: String, file: String? = nil) {
        self.code = code
        self.message = message
        self.context = context
        self.file = file
    }
    /// One line, as every error a program prints must be: a context quoting a statement of
    /// several lines (the store's schema) made a failed start on a full disk print four.
    public var description: String {
        "sqlite error \(code)\(file.map { " in \($0)" } ?? "") while \(SQLiteError.oneLine(context)): \(SQLiteError.oneLine(message))"
    }

    /// `text` with each run of whitespace (line breaks included) made one space.
    static func oneLine(_ text: String) -> String {
        guard text.contains(where: { $0.isNewline || $0 == "\t" }) else { return text }
        return text.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }

    /// Another connection held the write lock for longer than the busy timeout.
    public var isBusy: Bool { code & 0xff == SQLITE_BUSY || code & 0xff == SQLITE_LOCKED }
}

/// A value bound to, or read from, a SQL statement.
public enum SQLValue: Equatable, Sendable {
    case null
    case int(Int64)
    case double(Double)
    case text(String)
    case blob([UInt8])

    public var int: Int64? { if case .int(let v) = self { return v }; return nil }
    public var text: String? { if case .text(let v) = self { return v }; return nil }
}

/// SQLite's "copy the bytes now" destructor; the C macro is not imported into Swift.
public let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// How hard a commit waits for the disk. `full` syncs the WAL on every commit (a committed
/// message survives power loss); `normal` syncs only at checkpoints (survives a process crash,
/// not power loss).
public enum SyncMode: String, Sendable {
    case full = "FULL"
    case normal = "NORMAL"
}

/// One SQLite connection in WAL mode with cached prepared statements. Not thread-safe: one
/// thread uses it at a time.
public final class SQLiteConnection {
    /// Whether `path` names an in-memory database shared by this process's connections
    /// (`file:NAME?mode=memory&cache=shared`): the deterministic simulation's service "disks",
    /// which live as long as one connection to them is open and never touch a file.
    public static func isSharedMemoryURI(_ path: String) -> Bool {
        path.hasPrefix("file:") && path.contains("mode=memory") && path.contains("cache=shared")
    }

    public let path: String
    private(set) var db: OpaquePointer?
    private var cache: [String: OpaquePointer] = [:]
    private(set) var inTransaction = false
    /// Taken around every `transaction` (file `PATH-writelock`): SQLite's own busy handler polls
    /// with growing sleeps, so under a steady stream of producer commits a relay could wait
    /// seconds for the write lock; waiters on this lock are woken by the kernel on release.
    private let writeLock: FileLock?

    public init(path: String, sync: SyncMode = .full, busyTimeoutMs: Int32 = Limits.outboxBusyTimeoutMs,
                fairWriteLock: Bool = true) throws {
        self.path = path
        let inMemory = Self.isSharedMemoryURI(path)
        do {
            // An in-memory database has no file to put a lock beside: its connections share
            // one process, where SQLite's own locking orders them.
            writeLock = fairWriteLock && !inMemory ? try FileLock(path: path + "-writelock") : nil
        } catch {
            throw SQLiteError(code: SQLITE_CANTOPEN, message: "\(error)", context: "opening the write lock of \(path)")
        }
        db = try Self.openHandle(path: path, busyTimeoutMs: busyTimeoutMs, uri: inMemory)
        do {
            // An in-memory database has no journal file to put in WAL mode and nothing to sync:
            // a committed transaction is simply there for the next connection.
            if inMemory { return }
            let mode = try query("PRAGMA journal_mode=WAL").first?.first?.text
            guard mode?.lowercased() == "wal" else {
                throw SQLiteError(code: SQLITE_ERROR, message: "journal_mode is \(mode ?? "nil")", context: "enabling WAL on \(path)")
            }
            try exec("PRAGMA synchronous=\(sync.rawValue)")
        } catch {
            close()
            throw error
        }
    }

    /// Opens `path` read-write (created if missing) for use by one thread at a time, with
    /// extended result codes and `busyTimeoutMs`; `uri` reads `path` as a `file:` URI.
    public static func openHandle(path: String, busyTimeoutMs: Int32, uri: Bool = false) throws -> OpaquePointer {
        if !uri { try refuseIfNotADatabase(path) }
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | (uri ? SQLITE_OPEN_URI : 0)
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw SQLiteError(code: rc, message: message, context: "opening \(path)")
        }
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, busyTimeoutMs)
        return handle
    }

    /// A file that exists but does not start with SQLite's header is refused before SQLite
    /// opens it: opening it read-write and closing it again lets SQLite act on a `-wal` file
    /// beside it (checkpoint it into the damaged file, or delete it), which would destroy the
    /// committed pages the WAL may still hold.
    ///
    /// An empty or missing file is a new database to SQLite, which then deletes the `-wal` file
    /// beside it (and a `-journal` one): when that file is not empty it may hold every committed
    /// row (an empty main file beside a full WAL is what a truncated or deleted database leaves
    /// after a clean stop), so the open is refused and both files are left as they are.
    ///
    /// Only the first open of a path in a process looks: closing any descriptor of a file drops
    /// every POSIX lock this process holds on it, SQLite's included, so looking again while a
    /// connection is open would undo that connection's locks.
    static func refuseIfNotADatabase(_ path: String) throws {
        let first = headerCheckedLock.withLock { headerCheckedPaths.insert(path).inserted }
        guard first else { return }
        let mainBytes = PosixFS.fileSizeBytes(path)
        guard let mainBytes, mainBytes > 0 else {
            try refuseIfJournalBesideNoDatabase(path, exists: mainBytes != nil)
            return
        }
        let header: [UInt8]
        do {
            let file = try PosixFile(path: path, create: false, readOnly: true)
            defer { file.close() }
            header = try file.pread(count: 16, offset: 0)
        } catch {
            throw SQLiteError(code: SQLITE_CANTOPEN, message: "\(error)", context: "opening \(path)")
        }
        guard header != Array("SQLite format 3\0".utf8) else { return }
        headerCheckedLock.withLock { _ = headerCheckedPaths.remove(path) }  // refused: look again next time
        throw SQLiteError(code: SQLITE_NOTADB,
                          message: "\(path) is not a SQLite database (it does not start with SQLite's header); refusing to open it, as opening could change it and the WAL beside it",
                          context: "opening \(path)")
    }

    /// `path` is empty or missing (`exists` says which): refused when a non-empty `-wal` or
    /// `-journal` file is beside it, which SQLite would delete on opening a new database.
    private static func refuseIfJournalBesideNoDatabase(_ path: String, exists: Bool) throws {
        for suffix in ["-wal", "-journal"] {
            guard let journalBytes = PosixFS.fileSizeBytes(path + suffix), journalBytes > 0 else { continue }
            headerCheckedLock.withLock { _ = headerCheckedPaths.remove(path) }  // refused: look again next time
            let what = exists ? "is empty (0 bytes)" : "does not exist"
            throw SQLiteError(code: SQLITE_CANTOPEN,
                              message: "\(path) \(what) but \(path)\(suffix) beside it holds \(journalBytes) bytes, which may be the database's committed rows; refusing to open it, as SQLite would take it for a new database and delete \(path)\(suffix). Restore the database file (or, to start afresh, remove both)",
                              context: "opening \(path)")
        }
    }

    private static let headerCheckedLock = PosixConditionLock()
    nonisolated(unsafe) private static var headerCheckedPaths: Set<String> = []

    deinit { close() }

    public func close() {
        guard let handle = db else { return }
        for s in cache.values { sqlite3_finalize(s) }
        cache.removeAll()
        sqlite3_close_v2(handle)
        db = nil
    }

    private func live() throws -> OpaquePointer {
        guard let db else { throw SQLiteError(code: SQLITE_MISUSE, message: "connection closed", context: "using the connection", file: path) }
        return db
    }

    func error(_ rc: Int32, _ context: String) -> SQLiteError {
        let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        return SQLiteError(code: rc, message: message, context: context, file: path)
    }

    /// Runs one or more statements without parameters or results.
    public func exec(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(try live(), sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(message)
            throw SQLiteError(code: rc, message: text, context: "executing \(sql.prefix(80))", file: path)
        }
    }

    private func statement(_ sql: String) throws -> OpaquePointer {
        if let s = cache[sql] { return s }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(try live(), sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "preparing \(sql.prefix(120))") }
        if cache.count >= 256 {
            for s in cache.values { sqlite3_finalize(s) }
            cache.removeAll()
        }
        cache[sql] = stmt
        return stmt
    }

    private func bind(_ stmt: OpaquePointer, _ params: [SQLValue], _ sql: String) throws {
        for (i, p) in params.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch p {
            case .null: rc = sqlite3_bind_null(stmt, idx)
            case .int(let v): rc = sqlite3_bind_int64(stmt, idx, v)
            case .double(let v): rc = sqlite3_bind_double(stmt, idx, v)
            case .text(let s):
                var s = s
                rc = s.withUTF8 { buf -> Int32 in
                    guard let base = buf.baseAddress, buf.count > 0 else {
                        return sqlite3_bind_text(stmt, idx, "", 0, sqliteTransient)
                    }
                    return sqlite3_bind_text(stmt, idx, UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self),
                                             Int32(buf.count), sqliteTransient)
                }
            case .blob(let b):
                rc = b.withUnsafeBytes { buf in
                    sqlite3_bind_blob(stmt, idx, buf.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(buf.count), sqliteTransient)
                }
            }
            guard rc == SQLITE_OK else { throw error(rc, "binding parameter \(idx) of \(sql.prefix(80))") }
        }
    }

    private func column(_ stmt: OpaquePointer, _ i: Int32) -> SQLValue {
        switch sqlite3_column_type(stmt, i) {
        case SQLITE_NULL: return .null
        case SQLITE_INTEGER: return .int(sqlite3_column_int64(stmt, i))
        case SQLITE_FLOAT: return .double(sqlite3_column_double(stmt, i))
        case SQLITE_BLOB:
            let n = Int(sqlite3_column_bytes(stmt, i))
            guard n > 0, let p = sqlite3_column_blob(stmt, i) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: p, count: n)))
        default:
            guard let p = sqlite3_column_text(stmt, i) else { return .text("") }
            let n = Int(sqlite3_column_bytes(stmt, i))
            return .text(String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self))
        }
    }

    /// Runs a statement; the number of rows it changed.
    @discardableResult
    public func run(_ sql: String, _ params: [SQLValue] = []) throws -> Int {
        let stmt = try statement(sql)
        defer { sqlite3_reset(stmt); sqlite3_clear_bindings(stmt) }
        try bind(stmt, params, sql)
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            if rc == SQLITE_ROW { continue }
            throw error(rc, "running \(sql.prefix(120))")
        }
        return Int(sqlite3_changes(try live()))
    }

    /// Runs a query; every row as an array of column values.
    public func query(_ sql: String, _ params: [SQLValue] = []) throws -> [[SQLValue]] {
        var rows: [[SQLValue]] = []
        try forEachRow(sql, params) { rows.append($0) }
        return rows
    }

    public func forEachRow(_ sql: String, _ params: [SQLValue] = [], _ body: ([SQLValue]) throws -> Void) throws {
        try forEachRowWhile(sql, params) { try body($0); return true }
    }

    /// Rows until `body` returns false (the rest of the statement's rows are not read).
    public func forEachRowWhile(_ sql: String, _ params: [SQLValue] = [], _ body: ([SQLValue]) throws -> Bool) throws {
        let stmt = try statement(sql)
        defer { sqlite3_reset(stmt); sqlite3_clear_bindings(stmt) }
        try bind(stmt, params, sql)
        let n = sqlite3_column_count(stmt)
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error(rc, "querying \(sql.prefix(120))") }
            var row: [SQLValue] = []
            row.reserveCapacity(Int(n))
            for i in 0..<n { row.append(column(stmt, i)) }
            guard try body(row) else { break }
        }
    }

    public var lastInsertRowID: Int64 { db.map { sqlite3_last_insert_rowid($0) } ?? 0 }

    /// Whether SQLite itself has a transaction open: some errors (a full disk, an I/O error)
    /// roll back the whole transaction, not just the failing statement.
    public var sqliteTransactionOpen: Bool { db.map { sqlite3_get_autocommit($0) == 0 } ?? false }

    /// BEGIN ... COMMIT around reads: in WAL mode every statement of `body` sees the same
    /// snapshot (taken at its first read), while writers go on. No write lock is taken.
    public func readTransaction<T>(_ body: () throws -> T) throws -> T {
        precondition(!inTransaction, "nested SQLiteConnection transaction")
        return try bracketed("BEGIN DEFERRED", body)
    }

    /// BEGIN IMMEDIATE ... COMMIT around `body`; ROLLBACK when it throws. IMMEDIATE takes the
    /// write lock at the start, so two writers never deadlock upgrading from a read.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        precondition(!inTransaction, "nested SQLiteConnection.transaction")
        if let writeLock {
            do { try writeLock.lock() } catch {
                throw SQLiteError(code: SQLITE_IOERR, message: "\(error)", context: "taking the write lock of \(path)")
            }
        }
        defer { writeLock?.unlock() }
        return try bracketed("BEGIN IMMEDIATE", body)
    }

    /// `begin`, `body`, COMMIT; ROLLBACK when the body or the commit throws.
    private func bracketed<T>(_ begin: String, _ body: () throws -> T) throws -> T {
        try run(begin)
        inTransaction = true
        defer { inTransaction = false }
        let result: T
        do {
            result = try body()
            try run("COMMIT")
        } catch {
            _ = try? run("ROLLBACK")
            throw error
        }
        return result
    }
}
