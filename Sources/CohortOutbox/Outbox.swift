import CohortCore
import CohortPosix
import CohortSQLite

/// The outbox tables, created in the service's own SQLite database next to its business tables.
///
/// `outbox.id` is `INTEGER PRIMARY KEY AUTOINCREMENT`: assigned inside the writer's transaction,
/// strictly increasing and never reused, even after rows are deleted — and, because every
/// producer's open raises the next id to at least the wall clock in microseconds
/// (`raiseIDFloor`), never reused after the database is restored from an older copy either: a
/// restored database would otherwise hand out again ids its consumers' inboxes already hold,
/// and they would drop the new messages as duplicates. SQLite lets one write
/// transaction run at a time per database file (across connections and processes), so a
/// transaction that took id N has committed or rolled back before any other can take N+1: ids
/// become visible in order. The relay still never trusts a cursor alone (see docs/outbox.md).
enum OutboxSchema {
    static let sql = """
        CREATE TABLE IF NOT EXISTS outbox(
          id INTEGER PRIMARY KEY AUTOINCREMENT,
          topic TEXT NOT NULL,
          key TEXT NOT NULL,
          payload TEXT NOT NULL,
          headers TEXT NOT NULL DEFAULT '{}',
          created_ms INTEGER NOT NULL,
          state INTEGER NOT NULL DEFAULT 0,
          attempts INTEGER NOT NULL DEFAULT 0,
          last_error TEXT,
          delivered_ms INTEGER,
          dead_ms INTEGER);
        CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE state = 0;
        CREATE INDEX IF NOT EXISTS outbox_dead ON outbox(id) WHERE state = 2;
        CREATE INDEX IF NOT EXISTS outbox_delivered ON outbox(delivered_ms) WHERE state = 1;
        CREATE INDEX IF NOT EXISTS outbox_discarded ON outbox(delivered_ms) WHERE state = 3;
        CREATE TABLE IF NOT EXISTS outbox_lease(
          id INTEGER PRIMARY KEY CHECK (id = 1),
          holder TEXT NOT NULL,
          token INTEGER NOT NULL,
          expires_ms INTEGER NOT NULL);
        INSERT OR IGNORE INTO outbox_lease(id, holder, token, expires_ms) VALUES(1, '', 0, 0);
        CREATE TABLE IF NOT EXISTS outbox_meta(name TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
        """

    /// Raises the table's AUTOINCREMENT counter to at least `floor`. Called with the wall clock
    /// in microseconds at every producer's open: ids issued before this open are below it as
    /// long as the producer made fewer than a million messages a second on average since its
    /// previous open and the clock did not go back (the coordinator's txid epochs rely on the
    /// same), so a copy restored from a backup continues above every id it ever issued.
    static func raiseIDFloor(_ c: SQLiteConnection, wallMs: Int64) throws {
        let floor = wallMs * 1000
        try c.transaction {
            let current = try c.query("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").first?.first?.int
            switch current {
            case nil:
                try c.run("INSERT INTO sqlite_sequence(name, seq) VALUES('outbox', ?1)", [.int(floor)])
            case let seq? where seq < floor:
                try c.run("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'outbox'", [.int(floor)])
            default:
                break
            }
        }
    }

    static let statePending: Int64 = 0
    static let stateDelivered: Int64 = 1
    static let stateDead: Int64 = 2
    /// A dead letter an operator gave up on (`OutboxStore.discard`): never delivered, no longer
    /// blocking its key. Kept as the record of that decision for the relay's retention, counted
    /// from the discard (its `delivered_ms`), then cleaned up as delivered rows are. Not part of
    /// the backlog (`OutboxBacklogBound` counts pending and dead rows): nothing will send it.
    static let stateDiscarded: Int64 = 3

    /// Creates the tables if missing and returns the outbox's source name (set once, kept).
    static func prepare(_ c: SQLiteConnection, name: String?) throws -> String {
        try c.transaction {
            try c.exec(sql)
            if let stored = try c.query("SELECT value FROM outbox_meta WHERE name = 'source'").first?.first?.text {
                return stored
            }
            if let name, name.isEmpty || name.utf8.count > Limits.outboxSourceBytesMax {
                throw OutboxNameError("the outbox's name must be 1-\(Limits.outboxSourceBytesMax) bytes, got \(name.utf8.count)")
            }
            let source = name ?? "outbox-" + String(ProcessEnv.randomU64() & 0xffff_ffff_ffff, radix: 16)
            try c.run("INSERT INTO outbox_meta(name, value) VALUES('source', ?1)", [.text(source)])
            return source
        }
    }
}

/// An outbox name out of bounds (`Limits.outboxSourceBytesMax`), refused when the outbox is
/// first named: every message id carries it.
public struct OutboxNameError: Error, CustomStringConvertible, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// An enqueue refused because the outbox already holds `messagesMax` undelivered messages
/// (`Limits.outboxBacklogMessagesMax`): its relay is not getting them out. The transaction it
/// was part of rolls back, business rows included; a service answers 503.
public struct OutboxBacklogFull: Error, CustomStringConvertible, Equatable {
    public let undelivered: Int64
    public let messagesMax: Int64
    public var description: String {
        "the outbox holds \(undelivered) undelivered messages, its limit of \(messagesMax): its relay is not delivering (sink down or slower than the producers?); nothing of this transaction was kept"
    }
}

/// Bounds an outbox's undelivered messages, counted now and then rather than on every enqueue
/// (a count scans the pending and dead indexes). One per connection; not thread-safe.
final class OutboxBacklogBound {
    let messagesMax: Int64
    let countIntervalMs: Int64
    /// Undelivered messages at the last count plus those this connection enqueued since (some
    /// may have rolled back, or been delivered: an estimate from above until the next count).
    private var estimate: Int64 = 0
    private var countedAtMs: Int64?
    /// How long the last count took. The count holds the database's write lock (it runs in the
    /// enqueuing transaction) and grows with the backlog: 50-70 ms at a million rows, so at ten
    /// million a count a second would hold the lock over half the time. Counts are kept at
    /// least `countSpacingFactor` times their own length apart (5% of the lock at most).
    private var lastCountMs: Int64 = 0
    static let countSpacingFactor: Int64 = 20

    init(messagesMax: Int64, countIntervalMs: Int64) {
        precondition(messagesMax > 0 && countIntervalMs >= 0)
        self.messagesMax = messagesMax
        self.countIntervalMs = countIntervalMs
    }

    /// Called inside the write transaction before a message is inserted.
    func admit(_ c: SQLiteConnection, nowMs: Int64) throws {
        // An interval of 0 counts before every message (exact, for tests and tiny outboxes).
        let spacingMs = countIntervalMs == 0 ? 0 : max(countIntervalMs, lastCountMs * Self.countSpacingFactor)
        if countedAtMs.map({ nowMs - $0 >= spacingMs }) ?? true {
            estimate = try c.query("SELECT (SELECT COUNT(*) FROM outbox WHERE state = 0) + (SELECT COUNT(*) FROM outbox WHERE state = 2)").first?.first?.int ?? 0
            countedAtMs = SystemClock.monotonicMs()
            lastCountMs = countedAtMs! - nowMs
        }
        guard estimate < messagesMax else { throw OutboxBacklogFull(undelivered: estimate, messagesMax: messagesMax) }
        estimate += 1
    }
}

/// The producer side: a service's database with an outbox table. Business writes and messages
/// commit in one local transaction:
///
/// ```swift
/// let outbox = try Outbox(path: "orders.db")
/// try outbox.transaction { tx in
///     try tx.execute("INSERT INTO orders(id, sku, qty) VALUES(?1, ?2, ?3)", [.text(id), .text(sku), .int(qty)])
///     try tx.enqueue(topic: "orders", key: sku, payload: #"{"order":"\#(id)"}"#)
/// }
/// ```
///
/// Not thread-safe: one Outbox (one connection) per thread.
public final class Outbox {
    public let connection: SQLiteConnection
    /// This outbox's name; message ids are `SOURCE:ID`.
    public let source: String
    /// Called after every commit that enqueued messages (e.g. to wake an in-process relay).
    public var onCommit: (() -> Void)?

    /// Opens (creating if needed) the database at `path`. `name` names the outbox the first time
    /// only; afterwards the stored name is used. `idFloorMs` (the wall clock; nil leaves ids as
    /// they are, for tests that want small ones) sets the least id the next message takes, in
    /// microseconds of it: see `OutboxSchema.raiseIDFloor`.
    /// `backlogMessagesMax` bounds the undelivered messages (`OutboxBacklogFull`), counted
    /// every `backlogCountIntervalMs` by this connection.
    public init(path: String, sync: SyncMode = .full, name: String? = nil, idFloorMs: Int64? = SystemClock.wallMs(),
                backlogMessagesMax: Int64 = Limits.outboxBacklogMessagesMax,
                backlogCountIntervalMs: Int64 = Limits.outboxBacklogCountIntervalMs) throws {
        connection = try SQLiteConnection(path: path, sync: sync)
        source = try OutboxSchema.prepare(connection, name: name)
        if let idFloorMs { try OutboxSchema.raiseIDFloor(connection, wallMs: idFloorMs) }
        backlog = OutboxBacklogBound(messagesMax: backlogMessagesMax, countIntervalMs: backlogCountIntervalMs)
    }

    let backlog: OutboxBacklogBound

    /// Runs `body` in one local transaction (BEGIN IMMEDIATE ... COMMIT). If it throws, the
    /// transaction rolls back: no business row and no message remain.
    public func transaction<T>(_ body: (OutboxTransaction) throws -> T) throws -> T {
        let tx = OutboxTransaction(connection: connection, source: source, backlog: backlog)
        defer { tx.open = false }
        let result = try connection.transaction { try body(tx) }
        if tx.enqueued > 0 { onCommit?() }
        return result
    }

    /// Runs SQL outside a transaction (schema setup for business tables, reads).
    public func execute(_ sql: String) throws { try connection.exec(sql) }

    public func query(_ sql: String, _ params: [SQLValue] = []) throws -> [[SQLValue]] {
        try connection.query(sql, params)
    }

    public func close() { connection.close() }
}

/// The handle passed to `Outbox.transaction`: business SQL and messages in the same transaction.
public final class OutboxTransaction {
    let connection: SQLiteConnection
    /// The outbox's name (part of every message's JSON, so of its size).
    let source: String
    var open = true
    var enqueued = 0

    let backlog: OutboxBacklogBound?

    init(connection: SQLiteConnection, source: String, backlog: OutboxBacklogBound?) {
        self.connection = connection
        self.source = source
        self.backlog = backlog
    }

    private func live() throws {
        guard open else { throw OutboxInputError("transaction used after it ended") }
    }

    /// Runs a business statement; the number of rows it changed.
    @discardableResult
    public func execute(_ sql: String, _ params: [SQLValue] = []) throws -> Int {
        try live()
        return try connection.run(sql, params)
    }

    public func query(_ sql: String, _ params: [SQLValue] = []) throws -> [[SQLValue]] {
        try live()
        return try connection.query(sql, params)
    }

    /// The rowid of the last row this connection inserted (e.g. an AUTOINCREMENT business id).
    public var lastInsertRowID: Int64 { connection.lastInsertRowID }

    /// Adds a message; it becomes visible to the relay when (and only if) the transaction commits.
    /// Returns its id.
    @discardableResult
    public func enqueue(topic: String, key: String, payload: String, headers: [String: String] = [:],
                        nowMs: Int64 = SystemClock.wallMs()) throws -> Int64 {
        try live()
        try OutboxValidation.check(topic: topic, key: key, payload: payload, headers: headers, source: source, nowMs: nowMs)
        try backlog?.admit(connection, nowMs: SystemClock.monotonicMs())
        try connection.run(
            "INSERT INTO outbox(topic, key, payload, headers, created_ms) VALUES(?1, ?2, ?3, ?4, ?5)",
            [.text(topic), .text(key), .text(payload), .text(JSONText.headers(headers)), .int(nowMs)])
        enqueued += 1
        return connection.lastInsertRowID
    }
}

public struct OutboxStoreError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What a relay (and the admin API) does to the outbox tables, on the relay's own connection.
/// Every write that changes a message's state first checks the fencing token in the same
/// transaction, so a relay that lost its lease cannot mark anything.
public final class OutboxStore {
    public let connection: SQLiteConnection
    public let source: String

    /// `requireOutboxTable`: refuse a database without an outbox table instead of creating
    /// one (a separate relay process): a mistyped or mixed-up `--db` (the consumer's database,
    /// another service's) would otherwise get the tables and a relay that delivers nothing.
    public init(path: String, sync: SyncMode = .normal, requireOutboxTable: Bool = false) throws {
        connection = try SQLiteConnection(path: path, sync: sync)
        if requireOutboxTable, try connection.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").isEmpty {
            connection.close()
            throw OutboxStoreError("\(path) has no outbox table; is it the service's database? The service creates the table when it opens its outbox, so start the service first")
        }
        source = try OutboxSchema.prepare(connection, name: nil)
    }

    public func close() { connection.close() }

    // MARK: lease

    public struct Lease: Equatable, Sendable {
        public let holder: String
        public let token: Int64
        public let expiresMs: Int64
    }

    public func lease() throws -> Lease {
        let r = try connection.query("SELECT holder, token, expires_ms FROM outbox_lease WHERE id = 1")
        guard let row = r.first else { return Lease(holder: "", token: 0, expiresMs: 0) }
        return Lease(holder: row[0].text ?? "", token: row[1].int ?? 0, expiresMs: row[2].int ?? 0)
    }

    /// Takes the lease when free, expired or already ours; every take issues a new, larger token.
    /// Also when the row is still `ifUnchanged`: a row the caller has read unchanged for longer
    /// than any live holder leaves it unrenewed (`Limits.outboxLeaseUnchangedTakeoverMs`, on
    /// the caller's monotonic clock), whatever its expiry says (see `takeLease`).
    public func acquireLease(holder: String, nowMs: Int64, ttlMs: Int64, ifUnchanged: Lease? = nil) throws -> Int64? {
        if case .acquired(let token) = try takeLease(holder: holder, nowMs: nowMs, ttlMs: ttlMs, ifUnchanged: ifUnchanged) { return token }
        return nil
    }

    /// What `takeLease` found.
    public enum LeaseTake: Equatable, Sendable {
        case acquired(token: Int64)
        /// Another relay's lease, not expired: the row as read in the same transaction.
        case held(Lease)
    }

    /// `acquireLease`, answering the row it found when it did not take it. The expiry is the
    /// holder's wall clock; a holder that died just after its clock was stepped back (NTP, a VM
    /// restored from a snapshot) left an expiry that lies the step ahead, and a standby that
    /// trusted it alone waited out the step (an hour's step: an hour without delivery). A live
    /// holder changes the row at every renewal (`renewLease`), so a row unchanged for longer
    /// than the longest lease is no live relay's: the caller passes it as `ifUnchanged`.
    public func takeLease(holder: String, nowMs: Int64, ttlMs: Int64, ifUnchanged: Lease? = nil) throws -> LeaseTake {
        try connection.transaction {
            let l = try lease()
            guard l.holder.isEmpty || l.holder == holder || l.expiresMs <= nowMs || l == ifUnchanged else { return .held(l) }
            let token = l.token + 1
            try connection.run("UPDATE outbox_lease SET holder = ?1, token = ?2, expires_ms = ?3 WHERE id = 1",
                               [.text(holder), .int(token), .int(nowMs + ttlMs)])
            return .acquired(token: token)
        }
    }

    /// Extends the lease if `token` still holds it. The row always changes (an expiry equal to
    /// the one stored, from a wall clock standing still or stepped back just so, is written one
    /// later), so standbys can tell a live holder from a dead one by change alone (`takeLease`).
    public func renewLease(holder: String, token: Int64, nowMs: Int64, ttlMs: Int64) throws -> Bool {
        try connection.transaction {
            try connection.run("UPDATE outbox_lease SET expires_ms = CASE WHEN expires_ms = ?1 THEN ?1 + 1 ELSE ?1 END WHERE id = 1 AND holder = ?2 AND token = ?3",
                               [.int(nowMs + ttlMs), .text(holder), .int(token)]) == 1
        }
    }

    public func releaseLease(holder: String, token: Int64) throws {
        try connection.transaction {
            _ = try connection.run("UPDATE outbox_lease SET expires_ms = 0, holder = '' WHERE id = 1 AND holder = ?1 AND token = ?2",
                                   [.text(holder), .int(token)])
        }
    }

    // MARK: reading

    /// Pending rows with id > `afterID`, in id order.
    /// Pending rows with id > `afterID`, in id order: at most `limit`, and no more once they hold
    /// `bytesMax` (`OutboxMessage.heldBytes`; the row that reaches it is included).
    public func pending(afterID: Int64, limit: Int, bytesMax: Int = Limits.outboxLoadPageBytesMax) throws -> [OutboxMessage] {
        try rows("SELECT id, topic, key, payload, headers, created_ms, attempts FROM outbox WHERE state = 0 AND id > ?1 ORDER BY id LIMIT ?2",
                 [.int(afterID), .int(Int64(limit))], bytesMax: bytesMax)
    }

    private func rows(_ sql: String, _ params: [SQLValue], bytesMax: Int) throws -> [OutboxMessage] {
        var out: [OutboxMessage] = []
        var bytes = 0
        try connection.forEachRowWhile(sql, params) { r in
            let m = row(r)
            out.append(m)
            bytes += m.heldBytes
            return bytes < bytesMax
        }
        return out
    }

    /// Pending rows of one key with id > `afterID`, in id order. The relay reads these for a
    /// key whose rows it left out of memory; the pending index is walked from `afterID`.
    public func pending(key: String, afterID: Int64, limit: Int, bytesMax: Int = Limits.outboxLoadPageBytesMax) throws -> [OutboxMessage] {
        try rows("SELECT id, topic, key, payload, headers, created_ms, attempts FROM outbox WHERE state = 0 AND id > ?1 AND key = ?3 ORDER BY id LIMIT ?2",
                 [.int(afterID), .int(Int64(limit)), .text(key)], bytesMax: bytesMax)
    }

    private func row(_ r: [SQLValue]) -> OutboxMessage {
        OutboxMessage(id: r[0].int ?? 0, source: source, topic: r[1].text ?? "", key: r[2].text ?? "",
                      payload: r[3].text ?? "", headers: JSONText.parseHeaders(r[4].text ?? "{}"),
                      createdMs: r[5].int ?? 0, attempts: Int(r[6].int ?? 0))
    }

    /// A rescan's first page: every key's smallest dead id and the pending rows, from one
    /// snapshot. Read as two separate statements, a replay committed between them (by another
    /// process: a standby relay's admin API) would show its key unblocked without the replayed
    /// row, and the key's next message would overtake it. Within the snapshot the dead keys are
    /// read first all the same: were they ever older than the rows, a stale dead key only blocks
    /// for longer (a replayed row equal to it still goes first). `betweenReads` is for tests.
    func pendingAndDeadKeys(afterID: Int64, limit: Int, bytesMax: Int = Limits.outboxLoadPageBytesMax, betweenReads: () throws -> Void = {}) throws
        -> (rows: [OutboxMessage], deadKeys: [String: Int64]) {
        try connection.readTransaction {
            let dead = try deadKeys()
            try betweenReads()
            return (try pending(afterID: afterID, limit: limit, bytesMax: bytesMax), dead)
        }
    }

    /// For every key with a dead letter, its smallest dead id.
    public func deadKeys() throws -> [String: Int64] {
        var out: [String: Int64] = [:]
        try connection.forEachRow("SELECT key, MIN(id) FROM outbox WHERE state = 2 GROUP BY key") { r in
            out[r[0].text ?? ""] = r[1].int ?? 0
        }
        return out
    }

    // MARK: fenced writes

    /// Applies one batch's results if `token` still holds the lease; false (nothing written)
    /// when another relay took it.
    public func record(_ w: RelayWrite, holder: String, token: Int64, nowMs: Int64) throws -> Bool {
        try connection.transaction {
            let l = try lease()
            guard l.token == token, l.holder == holder else { return false }
            for id in w.delivered {
                try connection.run("UPDATE outbox SET state = 1, delivered_ms = ?1 WHERE id = ?2 AND state = 0",
                                   [.int(nowMs), .int(id)])
            }
            for f in w.failed {
                try connection.run("UPDATE outbox SET attempts = ?1, last_error = ?2 WHERE id = ?3 AND state = 0",
                                   [.int(Int64(f.attempts)), .text(f.error.clippedUTF8(toBytes: Limits.outboxErrorBytesMax)), .int(f.id)])
            }
            for f in w.dead {
                try connection.run(
                    "UPDATE outbox SET state = 2, attempts = ?1, last_error = ?2, dead_ms = ?3 WHERE id = ?4 AND state = 0",
                    [.int(Int64(f.attempts)), .text(f.error.clippedUTF8(toBytes: Limits.outboxErrorBytesMax)), .int(nowMs), .int(f.id)])
            }
            return true
        }
    }

    /// Deletes up to `limit` rows delivered, or discarded by an operator, before
    /// `deliveredBeforeMs` (a discarded row's `delivered_ms` is its discard time); how many it
    /// deleted. Delivered rows go first. Discarded rows were never cleaned up, so each discard
    /// stayed in the table for good. Two statements, each on its own partial index (one over
    /// both states could use neither and would scan the table).
    public func cleanup(deliveredBeforeMs: Int64, limit: Int) throws -> Int {
        try connection.transaction {
            let delivered = try connection.run(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 1 AND delivered_ms < ?1 LIMIT ?2)",
                [.int(deliveredBeforeMs), .int(Int64(limit))])
            guard delivered < limit else { return delivered }
            return delivered + (try connection.run(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 3 AND delivered_ms < ?1 LIMIT ?2)",
                [.int(deliveredBeforeMs), .int(Int64(limit - delivered))]))
        }
    }

    // MARK: admin

    public struct Counts: Equatable, Sendable {
        public var pending: Int
        public var dead: Int
        public var delivered: Int
        /// Wall-clock ms of the oldest pending message's enqueue, nil when none is pending.
        public var oldestPendingCreatedMs: Int64?
    }

    public func counts() throws -> Counts {
        let p = try connection.query("SELECT COUNT(*) FROM outbox WHERE state = 0").first?.first?.int ?? 0
        let d = try connection.query("SELECT COUNT(*) FROM outbox WHERE state = 2").first?.first?.int ?? 0
        let del = try connection.query("SELECT COUNT(*) FROM outbox WHERE state = 1").first?.first?.int ?? 0
        let oldest = try connection.query("SELECT created_ms FROM outbox WHERE state = 0 ORDER BY id LIMIT 1").first?.first?.int
        return Counts(pending: Int(p), dead: Int(d), delivered: Int(del), oldestPendingCreatedMs: oldest)
    }

    public typealias Row = OutboxMessageView

    /// Pending (or, with `dead`, dead-lettered) messages, oldest first.
    public func list(dead: Bool, limit: Int) throws -> [Row] {
        var out: [Row] = []
        try connection.forEachRow(
            // The payload's bytes: `length()` of TEXT counts characters, and stops at a NUL.
            "SELECT id, topic, key, attempts, created_ms, last_error, dead_ms, length(CAST(payload AS BLOB)) FROM outbox WHERE state = ?1 ORDER BY id LIMIT ?2",
            [.int(dead ? OutboxSchema.stateDead : OutboxSchema.statePending), .int(Int64(min(limit, Limits.outboxListMax)))]) { r in
            let id = r[0].int ?? 0
            out.append(Row(id: id, messageID: "\(source):\(id)", topic: r[1].text ?? "", key: r[2].text ?? "",
                           state: dead ? "dead" : "pending", attempts: Int(r[3].int ?? 0), createdMs: r[4].int ?? 0,
                           lastError: r[5].text, deadMs: r[6].int, payloadBytes: Int(r[7].int ?? 0)))
        }
        return out
    }

    public enum ReplayResult: Equatable, Sendable {
        case replayed
        case notFound
        case notDead(state: String)
    }

    /// Makes a dead letter pending again with its attempts reset; it keeps its id, so a consumer
    /// that did apply it once still dedupes it.
    public func replay(id: Int64) throws -> ReplayResult {
        try changeDeadLetter(id) {
            try connection.run("UPDATE outbox SET state = 0, attempts = 0, last_error = NULL, dead_ms = NULL WHERE id = ?1", [.int(id)])
        }
    }

    /// Gives up on dead letter `id`: it is never delivered, and its key's later messages go on
    /// (a poison message whose fix never comes blocked its key for good: replay only made it
    /// dead again). The row stays, with `reason` in its last error, as the record of what was
    /// dropped, until the relay's retention has passed since `nowMs` (`cleanup`). `.replayed`
    /// means it was discarded. The reason is kept to `Limits.httpErrorMessageBytesMax` bytes of
    /// UTF-8, cut between characters and marked "..." (it was cut at that many characters: up
    /// to four times the bytes).
    public func discard(id: Int64, reason: String, nowMs: Int64) throws -> ReplayResult {
        try changeDeadLetter(id) {
            try connection.run("UPDATE outbox SET state = ?2, last_error = ?3, delivered_ms = ?4 WHERE id = ?1",
                               [.int(id), .int(OutboxSchema.stateDiscarded),
                                .text("discarded by an operator: " + reason.clippedUTF8(toBytes: Limits.httpErrorMessageBytesMax)), .int(nowMs)])
        }
    }

    /// Runs `change` in one transaction if message `id` is a dead letter; else says what it is.
    private func changeDeadLetter(_ id: Int64, _ change: () throws -> Void) throws -> ReplayResult {
        try connection.transaction {
            guard let row = try connection.query("SELECT state FROM outbox WHERE id = ?1", [.int(id)]).first else {
                return .notFound
            }
            switch row[0].int ?? -1 {
            case OutboxSchema.stateDead:
                try change()
                return .replayed
            case OutboxSchema.statePending: return .notDead(state: "pending")
            case OutboxSchema.stateDiscarded: return .notDead(state: "discarded")
            default: return .notDead(state: "delivered")
            }
        }
    }
}

/// One batch's results, written in one fenced transaction.
public struct RelayWrite: Equatable, Sendable {
    public struct Failure: Equatable, Sendable {
        public var id: Int64
        public var attempts: Int
        public var error: String
        public init(id: Int64, attempts: Int, error: String) {
            self.id = id
            self.attempts = attempts
            self.error = error
        }
    }
    public var delivered: [Int64] = []
    public var failed: [Failure] = []
    public var dead: [Failure] = []
    public init(delivered: [Int64] = [], failed: [Failure] = [], dead: [Failure] = []) {
        self.delivered = delivered
        self.failed = failed
        self.dead = dead
    }
}

extension OutboxStore {
    /// Stops a relay (`stop`, e.g. SIGSTOP) at a moment it holds no write transaction on
    /// `database`, for tests and the scenario runner. SQLite has one writer per file: a relay
    /// stopped inside one of its short write transactions holds every writer of the database
    /// and no other relay can take its lease until it runs again (docs/outbox.md), so a test of
    /// fencing would test nothing. Probes the write lock (waiting out other writers' short
    /// transactions) and, if the stopped relay holds it, lets it run 10 ms and stops it again.
    /// Returns how many stops it took, or nil when every one landed inside (left stopped).
    public static func stopOutsideWriteTransaction(database: String, attemptsMax: Int = 20,
                                                   stop: () -> Void, resume: () -> Void) -> Int? {
        for attempt in 1...attemptsMax {
            stop()
            if let probe = try? SQLiteConnection(path: database, busyTimeoutMs: 300) {
                defer { probe.close() }
                if (try? probe.exec("BEGIN IMMEDIATE")) != nil {
                    try? probe.exec("ROLLBACK")
                    return attempt
                }
            }
            guard attempt < attemptsMax else { return nil }
            resume()
            PosixThread.sleep(milliseconds: 10)
        }
        return nil
    }
}
