import CohortCore
import CohortHTTP
import CohortPosix
import CohortSQLite
import Foundation

/// The consumer side: records (consumer, message id) in the same local SQLite transaction as the
/// message's effect, so a redelivered message is applied once.
///
/// ```swift
/// let inbox = try Inbox(path: "inventory.db", consumer: "inventory")
/// let results = try inbox.apply(batch) { tx, m in
///     try tx.execute("UPDATE stock SET reserved = reserved + ?1 WHERE sku = ?2", [.int(qty), .text(m.key)])
/// }
/// ```
///
/// The effect gets an `OutboxTransaction`: with `withOutbox: true` it can also enqueue replies,
/// which commit with the effect (consume, act and publish, atomically). Not thread-safe.
/// Thrown by an inbox effect that cannot apply its message now for a reason that is not the
/// message's (a row it needs is locked): the message is answered `busy`, nothing of it is kept,
/// and the relay sends it again later without counting an attempt.
public struct InboxBusy: Error, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

public final class Inbox {
    public static let crashPoints = ["inbox.after-commit"]

    public let connection: SQLiteConnection
    public let consumer: String
    /// The database's outbox name when opened `withOutbox`.
    public let outboxSource: String?
    /// Since this Inbox was opened: messages applied, and redeliveries skipped as duplicates.
    public private(set) var appliedCount = 0
    public private(set) var duplicateCount = 0

    /// Bounds the replies' undelivered messages when opened `withOutbox` (`Outbox.init`).
    let backlog: OutboxBacklogBound?

    public init(path: String, consumer: String, sync: SyncMode = .full, withOutbox: Bool = false,
                backlogMessagesMax: Int64 = Limits.outboxBacklogMessagesMax,
                backlogCountIntervalMs: Int64 = Limits.outboxBacklogCountIntervalMs) throws {
        guard !consumer.isEmpty, consumer.utf8.count <= Limits.outboxKeyBytesMax else {
            throw OutboxInputError("consumer name must be 1-\(Limits.outboxKeyBytesMax) bytes")
        }
        connection = try SQLiteConnection(path: path, sync: sync)
        self.consumer = consumer
        try connection.exec("""
            CREATE TABLE IF NOT EXISTS inbox(
              consumer TEXT NOT NULL, message_id TEXT NOT NULL, applied_ms INTEGER NOT NULL,
              PRIMARY KEY(consumer, message_id)) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS inbox_applied ON inbox(applied_ms);
            """)
        outboxSource = withOutbox ? try OutboxSchema.prepare(connection, name: nil) : nil
        // Replies are a producer's messages: their ids must not repeat after a restore either.
        if withOutbox { try OutboxSchema.raiseIDFloor(connection, wallMs: SystemClock.wallMs()) }
        backlog = withOutbox ? OutboxBacklogBound(messagesMax: backlogMessagesMax, countIntervalMs: backlogCountIntervalMs) : nil
    }

    public func close() { connection.close() }

    /// Whether this consumer already applied `messageID`.
    public func hasApplied(_ messageID: String) throws -> Bool {
        try !connection.query("SELECT 1 FROM inbox WHERE consumer = ?1 AND message_id = ?2",
                               [.text(consumer), .text(messageID)]).isEmpty
    }

    /// Applies a batch in one local transaction, each message under its own savepoint: a message
    /// seen before is skipped (`duplicate`), one whose effect throws is rolled back alone
    /// (`failed`, with the error), the rest commit together (`applied`). Results in batch order.
    /// Throws only when the transaction itself fails (then nothing was applied).
    ///
    /// `skip`, asked before each message is touched, answers `skipped` for the ones it returns
    /// true for, at no cost in the database: the stream reader's later entries of a key whose
    /// earlier entry just failed in the same batch (each would otherwise cost an inbox row
    /// inserted, a savepoint rolled back and the row deleted, to learn it must wait).
    public func apply(_ messages: [WireMessage], nowMs: Int64 = SystemClock.wallMs(),
                      skip: ((WireMessage) -> Bool)? = nil,
                      _ effect: (OutboxTransaction, WireMessage) throws -> Void) throws -> [InboxResult] {
        let tx = OutboxTransaction(connection: connection, source: outboxSource ?? "", backlog: backlog)
        defer { tx.open = false }
        let results: [InboxResult] = try connection.transaction {
            var out: [InboxResult] = []
            out.reserveCapacity(messages.count)
            for m in messages {
                if let skip, skip(m) {
                    out.append(InboxResult(id: m.id, status: "skipped"))
                    continue
                }
                guard !m.id.isEmpty, m.id.utf8.count <= Limits.inboxMessageIDBytesMax else {
                    // No row: an empty id would dedupe every later empty one against it.
                    out.append(InboxResult(id: m.id, status: "failed",
                                           error: "message id must be 1-\(Limits.inboxMessageIDBytesMax) bytes (SOURCE:ID), got \(m.id.utf8.count): not applied"))
                    continue
                }
                let fresh = try connection.run("INSERT OR IGNORE INTO inbox(consumer, message_id, applied_ms) VALUES(?1, ?2, ?3)",
                                               [.text(consumer), .text(m.id), .int(nowMs)])
                if fresh == 0 {
                    out.append(InboxResult(id: m.id, status: "duplicate"))
                    continue
                }
                try connection.run("SAVEPOINT msg")
                do {
                    try effect(tx, m)
                    try connection.run("RELEASE msg")
                    out.append(InboxResult(id: m.id, status: "applied"))
                } catch {
                    try connection.run("ROLLBACK TO msg")
                    try connection.run("RELEASE msg")
                    // The inbox row was inserted before the savepoint: take it back out.
                    try connection.run("DELETE FROM inbox WHERE consumer = ?1 AND message_id = ?2", [.text(consumer), .text(m.id)])
                    // A full reply outbox is this consumer's own back-pressure, not the
                    // message's fault: as busy it is sent again later and never dead-lettered.
                    let busy = error is InboxBusy || error is OutboxBacklogFull
                    out.append(InboxResult(id: m.id, status: busy ? "busy" : "failed", error: "\(error)"))
                }
            }
            return out
        }
        for r in results {
            if r.status == "applied" { appliedCount += 1 } else if r.status == "duplicate" { duplicateCount += 1 }
        }
        CrashPoints.hit("inbox.after-commit")
        return results
    }

    /// Deletes up to `limit` inbox rows older than `beforeMs`; how many. Keep them longer than
    /// any message can stay pending or dead at a producer (see docs/outbox.md).
    public func cleanup(appliedBeforeMs: Int64, limit: Int = Limits.outboxCleanupRowsMax) throws -> Int {
        try connection.run(
            "DELETE FROM inbox WHERE (consumer, message_id) IN (SELECT consumer, message_id FROM inbox WHERE applied_ms < ?1 LIMIT ?2)",
            [.int(appliedBeforeMs), .int(Int64(limit))])
    }
}

/// Deletes an inbox's rows (its dedupe memory) once they are older than a retention, by a
/// `RetentionClock`: a wall-clock step forward as long as the retention (the rows' `applied_ms`
/// is the wall clock's) deleted every row at the next round, and the relay's resends after it
/// were applied again. Not thread-safe: one per inbox connection, on one thread.
public final class InboxCleaner {
    public let inbox: Inbox
    public let retentionMs: Int64
    private let wallClock: () -> Int64
    private let monotonicClock: () -> Int64
    private let retentionClock: RetentionClock
    /// The failure that ended the last round early (the database busy, say), nil when none did.
    public private(set) var lastError: Error?

    public init(inbox: Inbox, retentionMs: Int64,
                wallClock: @escaping () -> Int64 = { SystemClock.wallMs() },
                monotonicClock: @escaping () -> Int64 = { SystemClock.monotonicMs() }) {
        precondition(retentionMs > 0, "a retention of \(retentionMs) ms forgets at once")
        self.inbox = inbox
        self.retentionMs = retentionMs
        self.wallClock = wallClock
        self.monotonicClock = monotonicClock
        retentionClock = RetentionClock(wallMs: wallClock(), monotonicMs: monotonicClock())
    }

    /// The `applied_ms` below which rows go now.
    public var cutoffMs: Int64 { retentionClock.nowMs(wallMs: wallClock(), monotonicMs: monotonicClock()) - retentionMs }

    /// One round: statements of `Limits.outboxCleanupRowsMax` rows until fewer are left or
    /// `rowsMax` went (so a backlog cannot hold the caller's thread long); how many rows it
    /// deleted. A failed statement ends the round (`lastError`); the next round goes on.
    public func round(rowsMax: Int = Limits.inboxCleanupRoundRowsMax) -> Int {
        lastError = nil
        let cutoff = cutoffMs
        var deleted = 0
        while deleted < rowsMax {
            let limit = min(Limits.outboxCleanupRowsMax, rowsMax - deleted)
            do {
                let n = try inbox.cleanup(appliedBeforeMs: cutoff, limit: limit)
                deleted += n
                if n < limit { break }
            } catch {
                lastError = error
                break
            }
        }
        return deleted
    }
}

/// An HTTP inbox endpoint for the HTTP sink: `POST PATH` with `{"messages": [...]}`.
public enum InboxEndpoint {
    /// One item of a batch as read: a message, or why it cannot be read (with its `id` when the
    /// item has one string `id`, so the answer can name it).
    enum Item {
        case message(WireMessage)
        case unreadable(id: String?, why: String)
    }

    /// The batch's items, each read on its own: an item that is not a message does not make the
    /// others unreadable. Throws only when the body as a whole is not `{"messages": [...]}`.
    static func readBatch(_ body: [UInt8]) throws -> [Item] {
        let o = try WireObject(bytes: body)
        guard let list = o["messages"] else { throw WireJSONError.missingField("messages") }
        guard case .array(let nodes) = list else {
            if case .null = list { throw WireJSONError.nullField("messages") }
            throw WireJSONError.wrongType("messages")
        }
        return nodes.indices.map { k in
            do {
                return .message(try WireMessage(wire: WireObject(nodes[k], path: "messages.\(k)")))
            } catch {
                var id: String?
                if case .object(let members) = nodes[k] {
                    let ids = members.filter { $0.0 == "id" }
                    if ids.count == 1, case .string(let s) = ids[0].1 { id = s }
                }
                return .unreadable(id: id, why: "\(error)")
            }
        }
    }

    /// Answers `POST path` (default `/v1/inbox`); nil for any other request. A message that
    /// cannot be read is answered `failed` in its own result (`duplicate` when its id was applied
    /// before), not with a 400 for the batch: the relay counts a 400 for a message alone against
    /// it, and sends a batch refused whole again in halves, one call and more per bad message.
    public static func handle(_ req: HTTPRequest, path: String = "/v1/inbox", inbox: Inbox,
                              _ effect: (OutboxTransaction, WireMessage) throws -> Void) -> HTTPResponse? {
        guard req.path == path else { return nil }
        guard req.method == "POST" else { return .error(405, "use POST \(path)") }
        let items: [Item]
        do {
            items = try readBatch(req.body)
        } catch {
            return .error(400, "body must be {\"messages\": [{\"id\", \"source\", \"seq\", \"topic\", \"key\", \"payload\", \"headers\", \"created_ms\"}]}: \(error)")
        }
        guard items.count <= Limits.outboxBatchMessagesMax else {
            return .error(413, "\(items.count) messages in one batch exceed \(Limits.outboxBatchMessagesMax)")
        }
        do {
            let messages = items.compactMap { if case .message(let m) = $0 { return m }; return nil }
            var applied = messages.isEmpty ? [] : try inbox.apply(messages, effect)[...]
            var results: [InboxResult] = []
            results.reserveCapacity(items.count)
            for (k, item) in items.enumerated() {
                switch item {
                case .message:
                    results.append(applied.removeFirst())
                case .unreadable(let id, let why):
                    // Dedupe first: a message applied before (by a consumer that could still
                    // read it) is acknowledged again, not refused into a dead letter.
                    if let id, !id.isEmpty, id.utf8.count <= Limits.inboxMessageIDBytesMax, try inbox.hasApplied(id) {
                        results.append(InboxResult(id: id, status: "duplicate"))
                    } else {
                        results.append(InboxResult(id: id ?? "", status: "failed", error: "message \(k) of the batch cannot be read: \(why): not applied"))
                    }
                }
            }
            return .jsonBytes(200, InboxBatchResponse(results: results).wireJSON)
        } catch let e as SQLiteError where e.isBusy {
            return .error(503, "database busy: \(e)")
        } catch let e as SQLiteError {
            // Effects' errors are answered per message inside `apply`; what reaches here is the
            // database failing the batch's own statements (disk full, I/O error, a damaged or
            // read-only file): this consumer is down, not the messages bad. 503 makes the relay
            // back off and send the batch again, nothing counted; a 500 had it halve the batch
            // down to single messages, each of them then held back as if it were the fault.
            return .error(503, "database unavailable: \(e)")
        } catch {
            return .error(500, "applying messages: \(error)")
        }
    }
}
