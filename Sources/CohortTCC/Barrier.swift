import CohortCore
import CohortSQLite
import Foundation

/// The three phases of a TCC branch.
public enum TCCPhase: String, Sendable, CaseIterable {
    case `try`
    case confirm
    case cancel
}

/// What a phase did, as decided by the barrier.
public enum TCCPhaseOutcome: Equatable, Sendable {
    /// The business code ran and its change committed with the barrier row. `result` is the
    /// try's result (nil for confirm and cancel).
    case done(result: JSONValue?)
    /// This phase already ran for the branch: nothing ran now. A repeated try answers the first
    /// try's result.
    case duplicate(result: JSONValue?)
    /// A cancel with no try before it: the fact is recorded (it fences a late try), nothing ran.
    case emptyCancel
    /// A try that arrived after its branch's cancel (or after its deadline): refused, nothing ran.
    case hanging(String)

    public var wireStatus: String {
        switch self {
        case .done: return "done"
        case .duplicate: return "duplicate"
        case .emptyCancel: return "empty-cancel"
        case .hanging: return "hanging"
        }
    }
}

/// The sub-transaction barrier: one table in the service's own database, written in the same
/// local transaction as the business change.
///
/// `tcc_barrier(resource, txid, branch_id, op, note, result, at_ms)`, primary key
/// `(resource, txid, branch_id, op)`:
/// - try inserts its `try` row (note `tried`, and the digest of its payload); if the row is
///   already there with note `fence`, the branch was cancelled first and the try is refused
///   (hanging); with note `tried` and a `cancel` row, the branch was cancelled after its try
///   ran and the try is refused (hanging) too: its reservation is gone, and "duplicate" with the
///   first result would report it held; with note `tried` and no cancel it is a duplicate and
///   answers the first result (also after a confirm: the reservation was made, and sold),
///   unless its payload differs from the first try's: then it is refused as a conflict, because
///   the caller reused a branch id for other work and answering "duplicate" would tell it that
///   work was reserved when it was not.
/// - cancel inserts the *origin* `try` row with note `fence` if none exists (then this is an
///   empty cancel: nothing to undo, and the fence refuses a late try), then its own `cancel`
///   row; if that row already exists the cancel is a duplicate.
/// - confirm requires a `tried` try row, inserts its `confirm` row (duplicate if present).
/// Every phase runs under `BEGIN IMMEDIATE`: SQLite's write lock serializes a try and a cancel
/// of the same branch, and the unique key decides which came first.
///
/// A phase that would start a branch (a try, or a cancel with no try: its fence) is refused with
/// `TCCError.barrierFull` when the resource already holds `rowsMax` rows: a cancel must leave a
/// fence and rows go only after the retention, so without a bound a flood of cancels with
/// made-up txids grows the table for as long as the retention. Phases of a branch already there
/// still run (its confirm or cancel adds one row past the bound at most).
public enum TCCBarrier {
    public static let schema = """
        CREATE TABLE IF NOT EXISTS tcc_barrier(
          resource TEXT NOT NULL, txid TEXT NOT NULL, branch_id TEXT NOT NULL, op TEXT NOT NULL,
          note TEXT NOT NULL, result TEXT, at_ms INTEGER NOT NULL, payload_digest TEXT,
          PRIMARY KEY(resource, txid, branch_id, op)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS tcc_barrier_finished ON tcc_barrier(op, at_ms);
        """

    /// Creates the table, or adds `payload_digest` to one made by a version without it (its
    /// old try rows keep a NULL digest, and a repeated try of those is answered as before).
    static func migrate(_ db: SQLiteConnection) throws {
        try db.exec(schema)
        let columns = try db.query("PRAGMA table_info(tcc_barrier)").compactMap { $0[1].text }
        if !columns.contains("payload_digest") {
            try db.exec("ALTER TABLE tcc_barrier ADD COLUMN payload_digest TEXT")
        }
    }

    /// A try's payload as the barrier remembers it: its length and two checksums of its
    /// canonical bytes (object keys sorted, as `JSONValue.node` writes them), so a retry of the
    /// same try matches whatever order its keys arrived in. Not a defence against an attacker
    /// (a caller who can send tries can send any payload); it catches a branch id reused by
    /// mistake, where 96 bits make a false "same payload" vanishingly unlikely.
    static func payloadDigest(_ payload: JSONValue?) -> String {
        guard let payload else { return "none" }
        var w = JSONWriter()
        w.value(payload.node)
        let bytes = w.bytes
        var fnv: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { fnv = (fnv ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return "\(bytes.count):\(String(CRC32C.checksum(bytes), radix: 16)):\(String(fnv, radix: 16))"
    }

    /// The digest a version before session 30 kept for `payload`: it read every number that is
    /// not a 64-bit integer as a double and wrote that double back as Swift prints it (`1.50` as
    /// `1.5`, `1e2` as `100.0`). A coordinator now passes the client's text on, so without this
    /// its retry of a try an older participant ran (the answer lost as that process stopped for
    /// the upgrade) was refused as other work and the transaction cancelled (a review, session
    /// 30). Matching it as well costs nothing new: the old digest was all that was compared then.
    static func legacyPayloadDigest(_ payload: JSONValue?) -> String {
        func asDoubles(_ v: JSONValue) -> JSONValue {
            switch v {
            case .number(let text):
                guard let d = Double(text), d.isFinite else { return v }
                return .double(d)
            case .array(let items): return .array(items.map(asDoubles))
            case .object(let members): return .object(members.mapValues(asDoubles))
            case .null, .bool, .int, .string: return v
            }
        }
        return payloadDigest(payload.map(asDoubles))
    }

    /// How many barrier rows a resource holds, and how many it may hold before a new branch is
    /// refused.
    struct Room {
        /// The resource's rows, counting those this transaction added so far.
        let rows: Int
        let rowsMax: Int
        var isFull: Bool { rows >= rowsMax }
    }

    /// Runs `phase` of a branch through the barrier inside the caller's open transaction;
    /// `business` is called only when the business code must run. Throws to roll back.
    /// `rowsAdded` grows by each row inserted (kept only if the transaction commits).
    static func run(_ db: SQLiteConnection, resource: String, phase: TCCPhase, txid: String, branchID: String, payload: JSONValue?,
                    nowMs: Int64, deadlineMs: Int64?, skewMarginMs: Int64, room: Room, rowsAdded: inout Int,
                    testOnlyIgnoreFence: Bool = false, business: () throws -> JSONValue?) throws -> TCCPhaseOutcome {
        let key: [SQLValue] = [.text(resource), .text(txid), .text(branchID)]
        var added = 0
        defer { rowsAdded += added }
        func insert(_ op: String, _ note: String, digest: String? = nil) throws -> Bool {
            let inserted = try db.run("INSERT INTO tcc_barrier(resource, txid, branch_id, op, note, at_ms, payload_digest) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                                      key + [.text(op), .text(note), .int(nowMs), digest.map(SQLValue.text) ?? .null]) == 1
            if inserted { added += 1 }
            return inserted
        }
        func row(_ op: String) throws -> (note: String, result: JSONValue?, payloadDigest: String?)? {
            guard let r = try db.query("SELECT note, result, payload_digest FROM tcc_barrier WHERE resource = ?1 AND txid = ?2 AND branch_id = ?3 AND op = ?4",
                                       key + [.text(op)]).first else { return nil }
            let result = r[1].text.flatMap { try? JSONValue(node: JSONParser.parse(Array($0.utf8))) }
            return (r[0].text ?? "", result, r[2].text)
        }
        /// Refuses a phase that would start a branch while the barrier is full; read only then,
        /// so a phase costs no extra query below the bound.
        func refuseANewBranchWhenFull() throws {
            guard room.isFull, try row("try") == nil else { return }
            throw TCCError.barrierFull("the TCC barrier of resource \(resource) holds \(room.rows) rows, its limit of \(room.rowsMax): "
                + "a \(phase.rawValue) of a new branch is refused until finished branches are purged (their rows go once past the barrier's retention); "
                + "the confirm and cancel of branches already tried still run")
        }
        switch phase {
        case .try:
            try refuseANewBranchWhenFull()
            let digest = payloadDigest(payload)
            if try insert("try", "tried", digest: digest) {
                // Subtracted from the clock, not added to the deadline: the deadline comes from
                // a request body, and near Int64.max the sum would overflow and stop the process.
                if let deadlineMs, nowMs - skewMarginMs > deadlineMs {
                    // Too late to matter to the coordinator, and possibly older than the barrier's
                    // retention: fence it like a cancelled branch.
                    try db.run("UPDATE tcc_barrier SET note = 'fence' WHERE resource = ?1 AND txid = ?2 AND branch_id = ?3 AND op = 'try'", key)
                    return .hanging("try arrived after its deadline")
                }
                let result = try business()
                if let result {
                    var w = JSONWriter()
                    w.value(result.node)
                    let text = String(decoding: w.bytes, as: UTF8.self)
                    try db.run("UPDATE tcc_barrier SET result = ?4 WHERE resource = ?1 AND txid = ?2 AND branch_id = ?3 AND op = 'try'", key + [.text(text)])
                }
                return .done(result: result)
            }
            let existing = try row("try")
            let cancelled = try row("cancel") != nil
            if existing?.note == "fence" {
                #if DEBUG
                if testOnlyIgnoreFence {
                    // The deliberate bug: reserve although the branch was cancelled first.
                    try db.run("UPDATE tcc_barrier SET note = 'tried' WHERE resource = ?1 AND txid = ?2 AND branch_id = ?3 AND op = 'try'", key)
                    return .done(result: try business())
                }
                #endif
                return .hanging(cancelled ? "the branch was cancelled before its try arrived" : "the branch's try came after its deadline and was refused")
            }
            // Before the payload check: whatever this try carries, the branch is over, and its
            // cancel released what the first try reserved.
            if cancelled { return .hanging("the branch was cancelled after its try ran; what the try reserved was released") }
            if let first = existing?.payloadDigest, first != digest, first != legacyPayloadDigest(payload) {
                throw TCCError.conflict("try repeated with a different payload: branch \(branchID) of \(txid) was tried with other work; use a new branch id for new work")
            }
            return .duplicate(result: existing?.result)
        case .confirm:
            guard let tried = try row("try") else { throw TCCError.conflict("confirm of a branch that was never tried") }
            guard tried.note == "tried" else { throw TCCError.conflict("confirm of a branch that was cancelled") }
            guard try insert("confirm", "confirmed") else { return .duplicate(result: nil) }
            if try row("cancel") != nil { throw TCCError.conflict("confirm of a branch that was cancelled") }
            _ = try business()
            return .done(result: nil)
        case .cancel:
            try refuseANewBranchWhenFull()
            // No try row: insert the fence. A fence already there (a try refused past its
            // deadline): the try never ran either. Both are empty cancels.
            let empty = try insert("try", "fence") || (try row("try"))?.note == "fence"
            guard try insert("cancel", empty ? "empty-cancel" : "cancelled") else { return .duplicate(result: nil) }
            if empty { return .emptyCancel }
            if try row("confirm") != nil { throw TCCError.conflict("cancel of a branch that was confirmed") }
            _ = try business()
            return .done(result: nil)
        }
    }

    /// Deletes `resource`'s barrier rows of branches finished (confirmed or cancelled) more
    /// than `retentionMs` ago, at most `limit` branches, inside the caller's open transaction;
    /// returns how many branches and rows it removed.
    /// A branch with only a try row is never removed: its confirm or cancel is still coming.
    /// Except a try fenced for arriving past its deadline, whose branch may have no cancel
    /// coming (a try more than the retention late, or a made-up one): kept for good, such rows
    /// filled the barrier's bound for good, and a later try is refused by its deadline again
    /// anyway (a review).
    /// Only the resource's own rows: resources sharing a database keep their own retention.
    static func purge(_ db: SQLiteConnection, resource: String, nowMs: Int64, retentionMs: Int64, limit: Int) throws -> (branches: Int, rows: Int) {
        let branches = try db.query("""
            SELECT DISTINCT resource, txid, branch_id FROM tcc_barrier
            WHERE resource = ?3 AND (op IN ('confirm', 'cancel') OR (op = 'try' AND note = 'fence')) AND at_ms < ?1 LIMIT ?2
            """, [.int(nowMs - retentionMs), .int(Int64(limit)), .text(resource)])
        var rows = 0
        for b in branches {
            rows += try db.run("DELETE FROM tcc_barrier WHERE resource = ?1 AND txid = ?2 AND branch_id = ?3", b)
        }
        return (branches.count, rows)
    }

    /// The rows `resource` holds (read once, when a resource opens; then kept by its phases and purges).
    static func rowCount(_ db: SQLiteConnection, resource: String) throws -> Int {
        Int(try db.query("SELECT COUNT(*) FROM tcc_barrier WHERE resource = ?1", [.text(resource)]).first?[0].int ?? 0)
    }
}
