import CSQLite
import CohortCore
import CohortSQLite

/// The committed state in SQLite. WAL with synchronous=NORMAL: a commit is not synced, because
/// the agent's log already is; after power loss SQLite holds a prefix of the applied commits and
/// `appliedLSN` (written in the same transaction) tells the agent where to resume replay.
///
/// Not thread-safe: one thread (the agent's event loop) uses it at a time.
public final class SQLiteKVStore: KVStore {
    public let path: String
    private var db: OpaquePointer?
    private var getStmt: OpaquePointer?
    private var upsertStmt: OpaquePointer?
    private var setLSNStmt: OpaquePointer?
    private var scanAllStmt: OpaquePointer?
    private var scanRangeStmt: OpaquePointer?
    private var begin: OpaquePointer?
    private var commitStmt: OpaquePointer?
    private var rollbackStmt: OpaquePointer?
    /// Cached: this connection is the only writer.
    private var lsn: UInt64 = 0

    /// `exclusive`: hold the file's lock for as long as the store is open (see below); false
    /// when other connections share the file.
    public init(path: String, busyTimeoutMs: Int32 = 5_000, exclusive: Bool = true) throws {
        self.path = path
        db = try SQLiteConnection.openHandle(path: path, busyTimeoutMs: busyTimeoutMs)
        do {
            // Before anything creates the file's first page (see the limit); a no-op for an
            // existing file.
            try exec("PRAGMA page_size=\(Limits.kvStorePageBytes)")
            // Only an agent's own process uses its store (others read it over HTTP), so it
            // holds the file's lock for good: SQLite then takes no POSIX locks per transaction
            // (7 fcntl calls per transfer at an agent, strace, round 5) and keeps the WAL index
            // in memory instead of a shared-memory file. It also refuses a second process opened
            // on the same file. Set before WAL is entered, or the index stays shared.
            if exclusive { try exec("PRAGMA locking_mode=EXCLUSIVE") }
            let mode = try queryText("PRAGMA journal_mode=WAL")
            guard mode?.lowercased() == "wal" else {
                throw SQLiteError(code: SQLITE_ERROR, message: "journal_mode is \(mode ?? "nil")", context: "enabling WAL", file: path)
            }
            try exec("PRAGMA synchronous=NORMAL")
            try exec(
                """
                CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY NOT NULL, ival INTEGER, sval TEXT,
                  CHECK ((ival IS NULL) <> (sval IS NULL))) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY NOT NULL, ival INTEGER NOT NULL) WITHOUT ROWID;
                INSERT OR IGNORE INTO meta(name, ival) VALUES('applied_lsn', 0);
                """)
            getStmt = try prepare("SELECT ival, sval FROM kv WHERE key = ?1")
            upsertStmt = try prepare(
                "INSERT INTO kv(key, ival, sval) VALUES(?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET ival = excluded.ival, sval = excluded.sval"
            )
            setLSNStmt = try prepare("UPDATE meta SET ival = ?1 WHERE name = 'applied_lsn'")
            scanAllStmt = try prepare("SELECT key, ival, sval FROM kv ORDER BY key LIMIT ?1")
            scanRangeStmt = try prepare(
                "SELECT key, ival, sval FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3")
            begin = try prepare("BEGIN IMMEDIATE")
            commitStmt = try prepare("COMMIT")
            rollbackStmt = try prepare("ROLLBACK")
            let stored = try queryInt("SELECT ival FROM meta WHERE name = 'applied_lsn'") ?? 0
            lsn = UInt64(bitPattern: stored)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    public func get(_ key: String) throws -> KVValue? {
        let stmt = live(getStmt)
        defer { sqlite3_reset(stmt) }
        try bindText(stmt, 1, key, "get")
        let rc = sqlite3_step(stmt)
        if rc == SQLITE_DONE { return nil }
        guard rc == SQLITE_ROW else { throw error(rc, "reading \(key)") }
        return try value(stmt, 0, key: key)
    }

    public func scanPage(prefix: String, after: String?, limit: Int, bytesMax: Int) throws -> KVScanPage {
        precondition(limit >= 0, "negative scan limit")
        let n = min(limit, Limits.scanItemsMax)
        // One row past the limit, to tell a full page from the end.
        let rows = Int64(n + 1)
        // The first key after `after` is `after` followed by a NUL byte, in byte order.
        let afterLower = after.map { Array($0.utf8) + [0] }
        let prefixBytes = Array(prefix.utf8)
        let lower = afterLower.map { $0.lexicographicallyPrecedes(prefixBytes) ? prefixBytes : $0 } ?? prefixBytes
        let upper = SQLiteKVStore.prefixUpperBound(prefixBytes)
        let stmt: OpaquePointer
        if lower.isEmpty && upper == nil {
            // Empty prefix and no `after` (a prefix of all 0xFF bytes UTF-8 never has): no bounds.
            stmt = live(scanAllStmt)
            try check(sqlite3_bind_int64(stmt, 1, rows), "scan")
        } else {
            stmt = live(scanRangeStmt)
            try bindBytes(stmt, 1, lower, "scan")
            // UTF-8 text never holds a 0xFF byte, so [0xFF] is above every key.
            try bindBytes(stmt, 2, upper ?? [0xFF], "scan")
            try check(sqlite3_bind_int64(stmt, 3, rows), "scan")
        }
        defer { sqlite3_reset(stmt) }
        var page = KVScanPage()
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error(rc, "scanning \(prefix)") }
            let key = columnText(stmt, 0) ?? ""
            // A prefix match on bytes, so a range bound that is not valid UTF-8 cannot let extra keys in.
            if !prefix.isEmpty && !key.utf8.starts(with: prefix.utf8) { continue }
            if !page.take(key, try value(stmt, 1, key: key), limit: n, bytesMax: bytesMax) { break }
        }
        return page
    }

    /// The smallest byte string greater than every string starting with `prefix`.
    static func prefixUpperBound(_ prefix: [UInt8]) -> [UInt8]? {
        var b = prefix
        while let last = b.last {
            if last < 0xFF {
                b[b.count - 1] = last + 1
                return b
            }
            b.removeLast()
        }
        return nil
    }

    public func apply(_ commits: [KVCommit]) throws {
        let start = lsn
        let todo = commits.filter { $0.lsn > start }
        if todo.isEmpty { return }
        try step(live(begin), "beginning apply")
        do {
            let up = live(upsertStmt)
            var maxLSN = start
            for c in todo {
                for w in c.writes {
                    defer { sqlite3_reset(up) }
                    try bindText(up, 1, w.key, "apply")
                    switch w.value {
                    case .int(let i):
                        try check(sqlite3_bind_int64(up, 2, i), "apply")
                        try check(sqlite3_bind_null(up, 3), "apply")
                    case .string(let s):
                        try check(sqlite3_bind_null(up, 2), "apply")
                        try bindText(up, 3, s, "apply")
                    }
                    try step(up, "writing \(w.key) at lsn \(c.lsn)")
                }
                maxLSN = max(maxLSN, c.lsn)
            }
            let set = live(setLSNStmt)
            defer { sqlite3_reset(set) }
            try check(sqlite3_bind_int64(set, 1, Int64(bitPattern: maxLSN)), "apply")
            try step(set, "recording applied lsn \(maxLSN)")
            try step(live(commitStmt), "committing apply")
            lsn = maxLSN
        } catch {
            // Best effort: if COMMIT itself failed SQLite may already have rolled back.
            let rb = live(rollbackStmt)
            _ = sqlite3_step(rb)
            sqlite3_reset(rb)
            throw error
        }
    }

    public func appliedLSN() throws -> UInt64 {
        _ = live(db)
        return lsn
    }

    public func makeDurable() throws {
        var logFrames: Int32 = 0
        var checkpointed: Int32 = 0
        // FULL syncs the WAL, copies it into the database file and syncs that; SQLITE_BUSY means
        // a reader kept it from finishing, so durability was not reached.
        let rc = sqlite3_wal_checkpoint_v2(live(db), nil, SQLITE_CHECKPOINT_FULL, &logFrames, &checkpointed)
        if rc & 0xff == SQLITE_BUSY || rc & 0xff == SQLITE_LOCKED { throw KVStoreBusy(reason: error(rc, "checkpointing").description) }
        guard rc == SQLITE_OK else { throw error(rc, "checkpointing") }
    }

    public func close() {
        guard let handle = db else { return }
        for stmt in [getStmt, upsertStmt, setLSNStmt, scanAllStmt, scanRangeStmt, begin, commitStmt, rollbackStmt] {
            sqlite3_finalize(stmt)
        }
        getStmt = nil; upsertStmt = nil; setLSNStmt = nil; scanAllStmt = nil
        scanRangeStmt = nil; begin = nil; commitStmt = nil; rollbackStmt = nil
        sqlite3_close_v2(handle)
        db = nil
    }

    // MARK: helpers

    private func live(_ p: OpaquePointer?) -> OpaquePointer {
        guard let p else { preconditionFailure("SQLiteKVStore used after close") }
        return p
    }

    private func error(_ rc: Int32, _ context: String) -> SQLiteError {
        let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        return SQLiteError(code: rc, message: message, context: context, file: path)
    }

    private func check(_ rc: Int32, _ context: String) throws {
        guard rc == SQLITE_OK else { throw error(rc, context) }
    }

    private func step(_ stmt: OpaquePointer, _ context: String) throws {
        let rc = sqlite3_step(stmt)
        sqlite3_reset(stmt)
        guard rc == SQLITE_DONE || rc == SQLITE_ROW else { throw error(rc, context) }
    }

    private func prepare(_ sql: String) throws -> OpaquePointer {
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(live(db), sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc, "preparing \(sql)") }
        return stmt
    }

    /// Tests only: runs SQL on the store's own connection (nothing else may open the file).
    func executeForTesting(_ sql: String) throws { try exec(sql) }
    func pageBytesForTesting() throws -> Int64? { try queryInt("PRAGMA page_size") }

    private func exec(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(live(db), sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? ""
            sqlite3_free(message)
            throw SQLiteError(code: rc, message: text, context: "executing \(sql)", file: path)
        }
    }

    private func queryText(_ sql: String) throws -> String? {
        let stmt = try prepare(sql)
        defer { sqlite3_finalize(stmt) }
        let rc = sqlite3_step(stmt)
        guard rc == SQLITE_ROW || rc == SQLITE_DONE else { throw error(rc, sql) }
        return rc == SQLITE_ROW ? columnText(stmt, 0) : nil
    }

    private func queryInt(_ sql: String) throws -> Int64? {
        let stmt = try prepare(sql)
        defer { sqlite3_finalize(stmt) }
        let rc = sqlite3_step(stmt)
        guard rc == SQLITE_ROW || rc == SQLITE_DONE else { throw error(rc, sql) }
        return rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : nil
    }

    private func bindText(_ stmt: OpaquePointer, _ index: Int32, _ s: String, _ context: String) throws {
        var s = s
        let rc = s.withUTF8 { buf -> Int32 in
            guard let base = buf.baseAddress, buf.count > 0 else {
                // An empty string must still bind as TEXT, not NULL.
                return sqlite3_bind_text(stmt, index, "", 0, sqliteTransient)
            }
            return sqlite3_bind_text(
                stmt, index, UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self), Int32(buf.count),
                sqliteTransient)
        }
        try check(rc, context)
    }

    /// Binds raw bytes as TEXT: the prefix bound may not be valid UTF-8, and BINARY collation
    /// compares TEXT by bytes, so this is what a range over keys needs.
    private func bindBytes(_ stmt: OpaquePointer, _ index: Int32, _ b: [UInt8], _ context: String) throws {
        let rc = b.withUnsafeBufferPointer { buf in
            sqlite3_bind_text(stmt, index, UnsafeRawPointer(buf.baseAddress!).assumingMemoryBound(to: CChar.self), Int32(buf.count), sqliteTransient)
        }
        try check(rc, context)
    }

    private func columnText(_ stmt: OpaquePointer, _ col: Int32) -> String? {
        guard let p = sqlite3_column_text(stmt, col) else { return nil }
        let n = Int(sqlite3_column_bytes(stmt, col))
        return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
    }

    /// Reads (ival, sval) starting at column `col`.
    private func value(_ stmt: OpaquePointer, _ col: Int32, key: String) throws -> KVValue {
        if sqlite3_column_type(stmt, col) != SQLITE_NULL {
            return .int(sqlite3_column_int64(stmt, col))
        }
        if let s = columnText(stmt, col + 1) { return .string(s) }
        throw SQLiteError(code: SQLITE_CORRUPT, message: "row has neither ival nor sval", context: "reading \(key)", file: path)
    }
}
