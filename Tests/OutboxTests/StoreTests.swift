import CohortCore
import CohortHTTP
@testable import CohortOutbox
import Foundation
import XCTest

func tempDB(_ name: String) -> String {
    let dir = NSTemporaryDirectory() + "outbox-test-\(UUID().uuidString.prefix(8))"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir + "/\(name).db"
}

struct Boom: Error {}

final class StoreTests: XCTestCase {
    /// A producer's database restored from an older copy hands out ids above every one it ever
    /// issued, because each open raises the next id to the wall clock in microseconds. Without
    /// the floor the restored copy reissued the ids sent after the copy was taken, and a
    /// consumer's inbox, which had applied those, dropped the new messages as duplicates.
    func testARestoredDatabaseNeverReissuesAnID() throws {
        func run(floors: (Int64?, Int64?)) throws -> (sent: Set<String>, afterRestore: [String]) {
            let path = tempDB("p")
            let backup = path + ".backup"
            var sent = Set<String>()
            do {
                let outbox = try Outbox(path: path, name: "orders", idFloorMs: floors.0)
                func enqueue(_ n: Int) throws {
                    for i in 0..<n {
                        let id = try outbox.transaction { try $0.enqueue(topic: "t", key: "k\(i)", payload: "{}") }
                        sent.insert("orders:\(id)")
                    }
                }
                try enqueue(3)
                try outbox.execute("VACUUM INTO '\(backup)'")   // the backup
                try enqueue(3)                                   // sent and applied after it
                outbox.close()
            }
            // Restore: the copy replaces the database (and its WAL goes).
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
            try FileManager.default.copyItem(atPath: backup, toPath: path)
            let restored = try Outbox(path: path, idFloorMs: floors.1)
            XCTAssertEqual(restored.source, "orders")
            let ids = try (0..<3).map { i in try restored.transaction { "orders:\(try $0.enqueue(topic: "t", key: "n\(i)", payload: "{}"))" } }
            return (sent, ids)
        }
        let floored = try run(floors: (1_800_000_000_000, 1_800_000_060_000))
        XCTAssertTrue(floored.sent.isDisjoint(with: floored.afterRestore), "reissued: \(floored.sent.intersection(floored.afterRestore))")
        XCTAssertEqual(floored.afterRestore.first, "orders:1800000060000001", "the floor is the clock in microseconds")
        // The same without the floor: the restored copy reissues ids 4, 5, 6.
        let plain = try run(floors: (nil, nil))
        XCTAssertEqual(plain.sent.intersection(plain.afterRestore), ["orders:4", "orders:5", "orders:6"])
    }

    func testBusinessRowsAndMessagesCommitTogetherOrNotAtAll() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path, name: "orders")
        try outbox.execute("CREATE TABLE orders(id TEXT PRIMARY KEY)")
        var commits = 0
        outbox.onCommit = { commits += 1 }
        let id = try outbox.transaction { tx -> Int64 in
            try tx.execute("INSERT INTO orders(id) VALUES(?1)", [.text("o1")])
            return try tx.enqueue(topic: "orders", key: "o1", payload: "{}", headers: ["h": "v"])
        }
        XCTAssertThrowsError(try outbox.transaction { tx in
            try tx.execute("INSERT INTO orders(id) VALUES(?1)", [.text("o2")])
            try tx.enqueue(topic: "orders", key: "o2", payload: "{}")
            throw Boom()
        })
        XCTAssertEqual(commits, 1, "only the committed transaction wakes the relay")
        XCTAssertEqual(try outbox.query("SELECT id FROM orders").map { $0[0] }, [.text("o1")])
        let store = try OutboxStore(path: path)
        let pending = try store.pending(afterID: 0, limit: 10)
        XCTAssertEqual(pending.map(\.id), [id], "the rolled-back message does not exist")
        XCTAssertEqual(pending[0].messageID, "orders:\(id)")
        XCTAssertEqual(pending[0].headers, ["h": "v"])
        // Bad input gets a typed error and writes nothing.
        XCTAssertThrowsError(try outbox.transaction { tx in try tx.enqueue(topic: "", key: "k", payload: "") }) { e in
            XCTAssertTrue(e is OutboxInputError, "\(e)")
        }
        XCTAssertThrowsError(try outbox.transaction { tx in
            try tx.enqueue(topic: "t", key: String(repeating: "k", count: Limits.outboxKeyBytesMax + 1), payload: "")
        })
        XCTAssertEqual(try store.counts().pending, 1)
    }

    /// The table of undelivered messages is bounded: past `backlogMessagesMax` (pending and
    /// dead-lettered together) an enqueue throws `OutboxBacklogFull` and the whole business
    /// transaction rolls back; once messages are delivered there is room again. Before the
    /// bound a sink down for long grew the table until the disk was full.
    func testAnEnqueuePastTheBacklogBoundRollsTheTransactionBack() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path, backlogMessagesMax: 3, backlogCountIntervalMs: 0)
        try outbox.execute("CREATE TABLE orders(id TEXT PRIMARY KEY)")
        func order(_ id: String) throws {
            try outbox.transaction { tx in
                try tx.execute("INSERT INTO orders(id) VALUES(?1)", [.text(id)])
                try tx.enqueue(topic: "orders", key: id, payload: "{}")
            }
        }
        for i in 0..<3 { try order("o\(i)") }
        XCTAssertThrowsError(try order("o3")) { e in
            XCTAssertEqual(e as? OutboxBacklogFull, OutboxBacklogFull(undelivered: 3, messagesMax: 3))
            XCTAssertTrue("\(e)".contains("relay is not delivering"), "\(e)")
        }
        XCTAssertEqual(try outbox.query("SELECT COUNT(*) FROM orders").first?.first, .int(3), "the refused order's row rolled back too")
        try outbox.execute("UPDATE outbox SET state = 2 WHERE key = 'o0'")  // a dead letter still counts
        XCTAssertThrowsError(try order("o3"))
        try outbox.execute("UPDATE outbox SET state = 1 WHERE key = 'o1'")  // delivered: room for one
        try order("o3")
        XCTAssertThrowsError(try order("o4"))
        // A dead letter an operator discarded is no longer backlog: nothing will send it.
        let store = try OutboxStore(path: path)
        let o0 = try XCTUnwrap(try outbox.query("SELECT id FROM outbox WHERE key = 'o0'").first?.first?.int)
        XCTAssertEqual(try store.discard(id: o0, reason: "r", nowMs: 1), .replayed)
        try order("o4")
        XCTAssertThrowsError(try order("o5"))

        // Between counts a producer adds what it enqueued itself: the bound holds without a
        // count per message, and a delivery is seen at the next count.
        let counting = try Outbox(path: path, backlogMessagesMax: 5, backlogCountIntervalMs: 3_600_000)
        for i in 0..<2 { try counting.transaction { try $0.enqueue(topic: "t", key: "c\(i)", payload: "{}") } }
        XCTAssertThrowsError(try counting.transaction { try $0.enqueue(topic: "t", key: "c2", payload: "{}") }) { e in
            XCTAssertEqual(e as? OutboxBacklogFull, OutboxBacklogFull(undelivered: 5, messagesMax: 5))
        }
    }

    /// A consumer whose reply outbox is full answers `busy` for the message (it comes again
    /// later) rather than `failed`, which counts toward dead-lettering a message that did
    /// nothing wrong.
    func testAFullReplyOutboxDefersTheMessage() throws {
        let inbox = try Inbox(path: tempDB("c"), consumer: "c", withOutbox: true, backlogMessagesMax: 1, backlogCountIntervalMs: 0)
        let m1 = WireMessage(id: "s:1", source: "s", seq: 1, topic: "t", key: "k", payload: "{}", headers: [:], createdMs: 0)
        let m2 = WireMessage(id: "s:2", source: "s", seq: 2, topic: "t", key: "k", payload: "{}", headers: [:], createdMs: 0)
        let reply: (OutboxTransaction, WireMessage) throws -> Void = { tx, w in try tx.enqueue(topic: "replies", key: w.key, payload: "{}") }
        XCTAssertEqual(try inbox.apply([m1], reply).map(\.status), ["applied"])
        let second = try inbox.apply([m2], reply)
        XCTAssertEqual(second.map(\.status), ["busy"])
        XCTAssertTrue(second[0].error?.contains("undelivered") ?? false, "\(second)")
        XCTAssertFalse(try inbox.hasApplied("s:2"), "nothing of the deferred message was kept")
    }

    /// A read of large messages stops at its byte bound (the row that reaches it included),
    /// however many rows it may take.
    func testAReadOfLargeMessagesStopsAtItsBytes() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        let big = String(repeating: "x", count: 100_000)
        for i in 0..<10 { _ = try outbox.transaction { try $0.enqueue(topic: "t", key: "k\(i % 3)", payload: big) } }
        let store = try OutboxStore(path: path)
        XCTAssertEqual(try store.pending(afterID: 0, limit: 100, bytesMax: 250_000).count, 3, "3 x 100 KB reach 250 KB")
        XCTAssertEqual(try store.pending(afterID: 0, limit: 100, bytesMax: 1).count, 1, "at least one row")
        XCTAssertEqual(try store.pending(afterID: 0, limit: 100).count, 10)
        XCTAssertEqual(try store.pending(key: "k0", afterID: 0, limit: 100, bytesMax: 150_000).count, 2)
    }

    /// An effect that throws `InboxBusy` answers `busy`, keeps nothing (the message applies when
    /// it comes again), and the consumer's HTTP answer reads as deferred, not refused.
    func testABusyEffectKeepsNothingAndIsDeferred() throws {
        let inbox = try Inbox(path: tempDB("c"), consumer: "c")
        try inbox.connection.exec("CREATE TABLE effects(id TEXT)")
        let m = WireMessage(id: "s:1", source: "s", seq: 1, topic: "t", key: "k", payload: "{}", headers: [:], createdMs: 0)
        var locked = true
        func apply() throws -> [InboxResult] {
            try inbox.apply([m]) { tx, w in
                if locked { throw InboxBusy("k is locked") }
                try tx.execute("INSERT INTO effects(id) VALUES(?1)", [.text(w.id)])
            }
        }
        let first = try apply()
        XCTAssertEqual(first.map(\.status), ["busy"])
        locked = false
        XCTAssertEqual(try apply().map(\.status), ["applied"], "nothing of the busy try was kept")
        XCTAssertEqual(try apply().map(\.status), ["duplicate"])
        let body = InboxBatchResponse(results: first).wireJSON
        let out = OutboxMessage(id: 1, source: "s", topic: "t", key: "k", payload: "{}", createdMs: 0)
        guard case .outcomes(let o) = HTTPOutboxSink.interpret(HTTPClientResponse(status: 200, headers: HTTPHeaders(), body: body), messages: [out], url: "u") else {
            return XCTFail()
        }
        XCTAssertEqual(o, [.deferred("k is locked")])
    }

    /// A 200 with no result for any message of the batch is the consumer's fault: sent again
    /// (unavailable), not a refusal of each message, which dead-lettered the head of every key
    /// when a consumer briefly answered `{"results":[]}`. A result missing for some messages
    /// only still refuses those.
    func testABatchAnsweredWithNoResultsIsSentAgain() {
        let a = OutboxMessage(id: 1, source: "s", topic: "t", key: "k", payload: "{}", createdMs: 0)
        let b = OutboxMessage(id: 2, source: "s", topic: "t", key: "j", payload: "{}", createdMs: 0)
        func answer(_ json: String) -> SinkResult {
            HTTPOutboxSink.interpret(HTTPClientResponse(status: 200, headers: HTTPHeaders(), body: Array(json.utf8)), messages: [a, b], url: "u")
        }
        guard case .unavailable(let why) = answer(#"{"results":[]}"#) else { return XCTFail("empty results refused each message") }
        XCTAssertTrue(why.contains("no result for any of its 2 messages"), why)
        guard case .unavailable = answer(#"{"results":[{"id":"other:9","status":"applied"}]}"#) else { return XCTFail("foreign ids refused each message") }
        guard case .outcomes(let o) = answer(#"{"results":[{"id":"s:1","status":"applied"}]}"#) else { return XCTFail() }
        XCTAssertEqual(o.first, .acknowledged)
        guard case .rejected? = o.last else { return XCTFail("\(o)") }
    }

    /// A 401, 403, 404 or 405 for a batch is the consumer's configuration (a rotated token, a
    /// wrong path), not the messages: sent again, as for a 5xx. Counted as a refusal of each,
    /// it dead-lettered the head of every key. A 400 or a lone message's 413 still refuses.
    func testAConsumersAuthOrRouteErrorIsSentAgainNotRefused() {
        let a = OutboxMessage(id: 1, source: "s", topic: "t", key: "k", payload: "{}", createdMs: 0)
        func answer(_ status: Int) -> SinkResult {
            HTTPOutboxSink.interpret(HTTPClientResponse(status: status, headers: HTTPHeaders(), body: Array("no".utf8)), messages: [a], url: "u")
        }
        for status in [401, 403, 404, 405] {
            guard case .unavailable(let why) = answer(status) else { return XCTFail("HTTP \(status) refused the message") }
            XCTAssertTrue(why.contains("HTTP \(status) for the whole batch"), why)
        }
        for status in [400, 413, 422] {
            guard case .outcomes(let o) = answer(status), case .rejected? = o.first else { return XCTFail("HTTP \(status) should refuse the message") }
        }
        // For several messages a 4xx may be one message's fault: refused whole, nothing counted
        // (the relay splits the batch); counted against each, it dead-lettered the others.
        let b = OutboxMessage(id: 2, source: "s", topic: "t", key: "k2", payload: "{}", createdMs: 0)
        for status in [400, 409, 422] {
            let r = HTTPOutboxSink.interpret(HTTPClientResponse(status: status, headers: HTTPHeaders(), body: Array("bad".utf8)), messages: [a, b], url: "u")
            guard case .refusedWhole(let why) = r else { return XCTFail("HTTP \(status) for two messages: \(r)") }
            XCTAssertTrue(why.contains("HTTP \(status) for the whole batch of 2 messages: bad"), why)
        }
        // A 500: maybe one message the consumer fails on (several are sent again in halves after
        // the outage backoff; the relay tells a message alone from an outage).
        let failed = HTTPOutboxSink.interpret(HTTPClientResponse(status: 500, headers: HTTPHeaders(), body: Array("boom".utf8)), messages: [a, b], url: "u")
        guard case .failedWhole(let why) = failed else { return XCTFail("HTTP 500 for two messages: \(failed)") }
        XCTAssertTrue(why.contains("HTTP 500 for the whole batch of 2 messages: boom"), why)
        guard case .failedWhole(let alone) = answer(500) else { return XCTFail("HTTP 500 for one message") }
        XCTAssertEqual(alone, "POST u: HTTP 500: no")
        for status in [502, 503, 504] {
            guard case .unavailable = HTTPOutboxSink.interpret(HTTPClientResponse(status: status, headers: HTTPHeaders(), body: []), messages: [a, b], url: "u") else {
                return XCTFail("HTTP \(status) is an outage")
            }
        }
    }

    func testIdsNeverGoBackwardsEvenAfterDeletes() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        let a = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "1") }
        let store = try OutboxStore(path: path)
        let token = try XCTUnwrap(store.acquireLease(holder: "r", nowMs: 0, ttlMs: 1000))
        XCTAssertTrue(try store.record(RelayWrite(delivered: [a]), holder: "r", token: token, nowMs: 0))
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 1, limit: 10), 1)
        let b = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "2") }
        XCTAssertGreaterThan(b, a, "AUTOINCREMENT: a deleted id is never handed out again")
    }

    func testLeaseFencesAStaleRelay() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        let id = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "1") }
        let a = try OutboxStore(path: path)
        let b = try OutboxStore(path: path)
        let ta = try XCTUnwrap(a.acquireLease(holder: "A", nowMs: 1000, ttlMs: 500))
        XCTAssertNil(try b.acquireLease(holder: "B", nowMs: 1200, ttlMs: 500), "held and not expired")
        XCTAssertTrue(try a.renewLease(holder: "A", token: ta, nowMs: 1400, ttlMs: 500))
        XCTAssertNil(try b.acquireLease(holder: "B", nowMs: 1800, ttlMs: 500), "renewed until 1900")
        let tb = try XCTUnwrap(b.acquireLease(holder: "B", nowMs: 1900, ttlMs: 500))
        XCTAssertGreaterThan(tb, ta)
        // A comes back from a pause: every write it tries is refused, and nothing changes.
        XCTAssertFalse(try a.record(RelayWrite(delivered: [id]), holder: "A", token: ta, nowMs: 2000))
        XCTAssertFalse(try a.renewLease(holder: "A", token: ta, nowMs: 2000, ttlMs: 500))
        XCTAssertEqual(try a.counts().pending, 1)
        XCTAssertTrue(try b.record(RelayWrite(delivered: [id]), holder: "B", token: tb, nowMs: 2000))
        XCTAssertEqual(try a.counts(), OutboxStore.Counts(pending: 0, dead: 0, delivered: 1, oldestPendingCreatedMs: nil))
    }

    func testDeadLettersListAndReplay() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        let id = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "1") }
        let other = try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: "2") }
        let store = try OutboxStore(path: path)
        let t = try XCTUnwrap(store.acquireLease(holder: "r", nowMs: 0, ttlMs: 1000))
        XCTAssertTrue(try store.record(RelayWrite(dead: [.init(id: id, attempts: 10, error: "HTTP 422")]), holder: "r", token: t, nowMs: 5))
        let dead = try store.list(dead: true, limit: 10)
        XCTAssertEqual(dead.map(\.id), [id])
        XCTAssertEqual(dead[0].lastError, "HTTP 422")
        XCTAssertEqual(dead[0].attempts, 10)
        XCTAssertEqual(try store.list(dead: false, limit: 10).map(\.id), [other])
        XCTAssertEqual(try store.deadKeys(), ["k": id])
        XCTAssertEqual(try store.replay(id: other), .notDead(state: "pending"))
        XCTAssertEqual(try store.replay(id: 999), .notFound)
        XCTAssertEqual(try store.replay(id: id), .replayed)
        let again = try store.pending(afterID: 0, limit: 10)
        XCTAssertEqual(again.map(\.id), [id, other], "replayed with its id: before the key's later message")
        XCTAssertEqual(again[0].attempts, 0)
    }

    /// Text kept by the store is bounded in bytes, cut between characters: a discard's reason
    /// (`Limits.httpErrorMessageBytesMax`) and a refusal's error (`Limits.outboxErrorBytesMax`)
    /// were cut at that many characters, so four-byte ones kept four times the bytes. The admin
    /// list's `payload_bytes` counts bytes: SQL `length()` of the TEXT payload counted characters
    /// and stopped at a NUL.
    func testStoredTextIsBoundedInBytesAndPayloadBytesCountsBytes() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        let payloads = ["{\"sku\":\"café\"}", "a\u{0}b", String(repeating: "😀", count: 100)]
        var ids: [Int64] = []
        for (i, p) in payloads.enumerated() { ids.append(try outbox.transaction { try $0.enqueue(topic: "t", key: "k\(i)", payload: p) }) }
        let store = try OutboxStore(path: path)
        let t = try XCTUnwrap(store.acquireLease(holder: "r", nowMs: 0, ttlMs: 1000))
        let longError = String(repeating: "é", count: Limits.outboxErrorBytesMax)   // 2 bytes each
        XCTAssertTrue(try store.record(RelayWrite(failed: [.init(id: ids[0], attempts: 1, error: longError)],
                                                  dead: [.init(id: ids[1], attempts: 10, error: longError), .init(id: ids[2], attempts: 10, error: "x")]),
                                       holder: "r", token: t, nowMs: 5))
        XCTAssertEqual(try store.list(dead: false, limit: 10).map(\.payloadBytes), [payloads[0].utf8.count], "é is two bytes")
        let dead = try store.list(dead: true, limit: 10)
        XCTAssertEqual(dead.map(\.payloadBytes), [3, 400], "a NUL and what follows it count; 😀 is four bytes")
        for e in [try store.list(dead: false, limit: 10)[0].lastError, dead[0].lastError] {
            let e = try XCTUnwrap(e)
            XCTAssertLessThanOrEqual(e.utf8.count, Limits.outboxErrorBytesMax)
            XCTAssertTrue(e.hasSuffix("é..."), e)
        }
        // A reason of 4-byte characters, fewer characters than the bound but more bytes.
        let reason = String(repeating: "😀", count: Limits.httpErrorMessageBytesMax / 2)
        XCTAssertEqual(try store.discard(id: ids[2], reason: reason, nowMs: 10), .replayed)
        let kept = try XCTUnwrap(store.connection.query("SELECT last_error FROM outbox WHERE id = ?1", [.int(ids[2])]).first?.first?.text)
        let prefix = "discarded by an operator: "
        XCTAssertTrue(kept.hasPrefix(prefix + "😀"), kept)
        XCTAssertTrue(kept.hasSuffix("😀..."), "cut between characters: \(kept.suffix(8))")
        XCTAssertLessThanOrEqual(kept.utf8.count, prefix.utf8.count + Limits.httpErrorMessageBytesMax)
        XCTAssertGreaterThan(kept.utf8.count, prefix.utf8.count + Limits.httpErrorMessageBytesMax - 8, "as much as fits")
        // A short reason is kept whole.
        XCTAssertEqual(try store.discard(id: ids[1], reason: "payload v1 dropped ✓", nowMs: 10), .replayed)
        XCTAssertEqual(try store.connection.query("SELECT last_error FROM outbox WHERE id = ?1", [.int(ids[1])]).first?.first?.text,
                       prefix + "payload v1 dropped ✓")
    }

    func testCleanupDeletesOnlyOldDeliveredRowsInSmallBatches() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        var ids: [Int64] = []
        for i in 0..<10 { ids.append(try outbox.transaction { try $0.enqueue(topic: "t", key: "k\(i)", payload: "") }) }
        let store = try OutboxStore(path: path)
        let t = try XCTUnwrap(store.acquireLease(holder: "r", nowMs: 0, ttlMs: 1000))
        XCTAssertTrue(try store.record(RelayWrite(delivered: Array(ids[0..<6])), holder: "r", token: t, nowMs: 100))
        XCTAssertTrue(try store.record(RelayWrite(delivered: [ids[6]]), holder: "r", token: t, nowMs: 900))
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 500, limit: 4), 4)
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 500, limit: 4), 2)
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 500, limit: 4), 0)
        let c = try store.counts()
        XCTAssertEqual(c.delivered, 1, "delivered within the retention period stays")
        XCTAssertEqual(c.pending, 3)
    }

    /// Rows an operator discarded go after the retention too, counted from their discard: they
    /// stayed for good, one more row per discard. Delivered rows go first within a batch's limit.
    func testCleanupDeletesDiscardedRowsAfterTheRetentionFromTheirDiscard() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        var ids: [Int64] = []
        for i in 0..<5 { ids.append(try outbox.transaction { try $0.enqueue(topic: "t", key: "k\(i)", payload: "") }) }
        let store = try OutboxStore(path: path)
        let t = try XCTUnwrap(store.acquireLease(holder: "r", nowMs: 0, ttlMs: 1000))
        let dead = Array(ids[0..<3]).map { RelayWrite.Failure(id: $0, attempts: 1, error: "422") }
        XCTAssertTrue(try store.record(RelayWrite(delivered: [ids[3]], dead: dead), holder: "r", token: t, nowMs: 100))
        // Two discarded early, one late; the dead letter made at 100 is discarded at 900.
        XCTAssertEqual(try store.discard(id: ids[0], reason: "r", nowMs: 200), .replayed)
        XCTAssertEqual(try store.discard(id: ids[1], reason: "r", nowMs: 300), .replayed)
        XCTAssertEqual(try store.discard(id: ids[2], reason: "r", nowMs: 900), .replayed)
        func discarded() throws -> [Int64] {
            try store.connection.query("SELECT id FROM outbox WHERE state = 3 ORDER BY id").map { $0[0].int ?? 0 }
        }
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 150, limit: 10), 1, "the delivered row alone")
        XCTAssertEqual(try discarded(), Array(ids[0..<3]), "discards newer than the cutoff stay")
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 500, limit: 1), 1)
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 500, limit: 1), 1)
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 500, limit: 1), 0)
        XCTAssertEqual(try discarded(), [ids[2]], "the one discarded at 900 stays until its own retention passed")
        XCTAssertEqual(try store.cleanup(deliveredBeforeMs: 901, limit: 10), 1)
        XCTAssertEqual(try discarded(), [])
        XCTAssertEqual(try store.counts().pending, 1, "pending rows are never cleaned up")
        // Each statement has its partial index: no scan of the table.
        for state in [1, 3] {
            let plan = try store.connection.query(
                "EXPLAIN QUERY PLAN SELECT id FROM outbox WHERE state = \(state) AND delivered_ms < 1 LIMIT 1").map { $0.last?.text ?? "" }
            XCTAssertTrue(plan.contains { $0.contains(state == 1 ? "outbox_delivered" : "outbox_discarded") }, "\(plan)")
        }
    }

    /// The inbox's rows (its dedupe memory) are aged by a `RetentionClock`: a wall-clock step
    /// forward as long as the retention deleted them all at the next cleanup, and a relay's
    /// resend after it was applied again. A step back keeps them longer; real time (both clocks)
    /// deletes them, in statements of `Limits.outboxCleanupRowsMax` up to a round's bound.
    func testInboxCleanupIsNotHurriedByAWallClockStepForward() throws {
        let inbox = try Inbox(path: tempDB("c"), consumer: "inv")
        var wall: Int64 = 1_000_000_000
        var mono: Int64 = 5_000
        let retention: Int64 = 60_000
        let cleaner = InboxCleaner(inbox: inbox, retentionMs: retention, wallClock: { wall }, monotonicClock: { mono })
        let batch = (0..<1_200).map { WireMessage(id: "s:\($0)", source: "s", seq: 1, topic: "t", key: "k", payload: "{}", headers: [:], createdMs: 0) }
        _ = try inbox.apply(batch, nowMs: wall) { _, _ in }
        func rows() throws -> Int64 { try inbox.connection.query("SELECT COUNT(*) FROM inbox").first?.first?.int ?? 0 }
        wall += 10 * retention   // the step
        XCTAssertEqual(cleaner.round(), 0, "a step of the wall clock alone deletes nothing")
        XCTAssertEqual(try rows(), 1_200)
        mono += retention / 2
        wall += retention / 2
        XCTAssertEqual(cleaner.round(), 0, "half the retention has passed")
        wall -= 20 * retention   // and a step back
        mono += retention / 2 + 1
        XCTAssertEqual(cleaner.round(), 0, "a step back keeps them longer")
        wall += 20 * retention
        XCTAssertEqual(cleaner.round(rowsMax: 700), 700, "a round stops at its bound")
        XCTAssertEqual(cleaner.round(), 500)
        XCTAssertNil(cleaner.lastError)
        XCTAssertEqual(try rows(), 0)
        // A row applied now (by the stepped wall clock) stays for its retention.
        _ = try inbox.apply([WireMessage(id: "s:new", source: "s", seq: 1, topic: "t", key: "k", payload: "{}", headers: [:], createdMs: 0)],
                            nowMs: wall) { _, _ in }
        mono += retention - 1
        XCTAssertEqual(cleaner.round(), 0)
        XCTAssertTrue(try inbox.hasApplied("s:new"))
    }

    func testInboxAppliesEachMessageOnceAndRollsBackAFailedEffectAlone() throws {
        let path = tempDB("c")
        let inbox = try Inbox(path: path, consumer: "inv")
        try inbox.connection.exec("CREATE TABLE stock(sku TEXT PRIMARY KEY, n INTEGER)")
        try inbox.connection.run("INSERT INTO stock VALUES('a', 0)")
        func wire(_ id: String, _ payload: String) -> WireMessage {
            WireMessage(id: id, source: "s", seq: 1, topic: "t", key: "a", payload: payload, headers: [:], createdMs: 0)
        }
        let effect: (OutboxTransaction, WireMessage) throws -> Void = { tx, m in
            try tx.execute("UPDATE stock SET n = n + 1 WHERE sku = 'a'")
            if m.payload == "bad" { throw Boom() }
        }
        var r = try inbox.apply([wire("s:1", "ok"), wire("s:2", "bad"), wire("s:1", "ok")], effect)
        XCTAssertEqual(r.map(\.status), ["applied", "failed", "duplicate"])
        r = try inbox.apply([wire("s:1", "ok"), wire("s:2", "ok")], effect)
        XCTAssertEqual(r.map(\.status), ["duplicate", "applied"])
        XCTAssertEqual(try inbox.connection.query("SELECT n FROM stock").first?.first, .int(2), "each effect exactly once")
        XCTAssertTrue(try inbox.hasApplied("s:2"))
        XCTAssertEqual(inbox.duplicateCount, 2)
    }

    /// A hand-built producer's empty ids: before the bound, the second empty-id message was
    /// answered `duplicate` and never applied (its effect lost without a trace).
    func testInboxRefusesEmptyAndOverlongMessageIDsWithoutARow() throws {
        let inbox = try Inbox(path: tempDB("c"), consumer: "inv")
        try inbox.connection.exec("CREATE TABLE seen(payload TEXT)")
        func wire(_ id: String, _ payload: String) -> WireMessage {
            WireMessage(id: id, source: "s", seq: 1, topic: "t", key: "a", payload: payload, headers: [:], createdMs: 0)
        }
        let effect: (OutboxTransaction, WireMessage) throws -> Void = { tx, m in
            _ = try tx.execute("INSERT INTO seen VALUES(?1)", [.text(m.payload)])
        }
        let long = String(repeating: "x", count: Limits.inboxMessageIDBytesMax + 1)
        let r = try inbox.apply([wire("", "first"), wire("", "second"), wire(long, "long"), wire("s:1", "ok")], effect)
        XCTAssertEqual(r.map(\.status), ["failed", "failed", "failed", "applied"])
        XCTAssertTrue(r[0].error?.contains("message id must be 1-") == true, "\(r[0])")
        XCTAssertEqual(try inbox.connection.query("SELECT payload FROM seen").map { $0.first }, [.text("ok")])
        XCTAssertFalse(try inbox.hasApplied(""), "no inbox row for a refused id")
        let longest = String(repeating: "y", count: Limits.inboxMessageIDBytesMax)
        XCTAssertEqual(try inbox.apply([wire(longest, "edge")], effect).map(\.status), ["applied"])
    }

    func testAnOutboxNameIsBounded() throws {
        XCTAssertThrowsError(try Outbox(path: tempDB("o"), name: "")) { XCTAssertTrue("\($0)".contains("name must be 1-128 bytes")) }
        XCTAssertThrowsError(try Outbox(path: tempDB("o"), name: String(repeating: "n", count: Limits.outboxSourceBytesMax + 1)))
        XCTAssertEqual(try Outbox(path: tempDB("o"), name: String(repeating: "n", count: Limits.outboxSourceBytesMax)).source.utf8.count,
                       Limits.outboxSourceBytesMax)
    }

    func testRESPParserHandlesPartialAndBadInput() throws {
        var p = RESPParser()
        let bytes = Array("+OK\r\n$5\r\nhello\r\n*2\r\n:12\r\n$-1\r\n-ERR no\r\n*-1\r\n".utf8)
        // Fed one byte at a time, values come out exactly when complete.
        var values: [RESPValue] = []
        for b in bytes {
            p.feed([b])
            while let v = try p.next() { values.append(v) }
        }
        XCTAssertEqual(values, [.simple("OK"), .bulk(Array("hello".utf8)), .array([.integer(12), .bulk(nil)]), .error("ERR no"), .array(nil)])
        var bad = RESPParser()
        bad.feed(Array("?what\r\n".utf8))
        XCTAssertThrowsError(try bad.next())
        var huge = RESPParser()
        huge.feed(Array("$99999999999\r\n".utf8))
        XCTAssertThrowsError(try huge.next())
        var deep = RESPParser()
        deep.feed(Array(String(repeating: "*1\r\n", count: 20).utf8))
        XCTAssertThrowsError(try deep.next())
        XCTAssertEqual(RESPEncoder.encode(["XADD", "s", "*"]), Array("*3\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n".utf8))
        XCTAssertThrowsError(try parseRedisURL("http://x"))
        XCTAssertEqual(try parseRedisURL("redis://127.0.0.1:6380").port, 6380)
    }

    /// A rescan reads dead keys and pending rows from one snapshot: a replay committed by
    /// another connection between the two reads cannot show the key unblocked without its
    /// replayed row (the key's next message would overtake it).
    func testDeadKeysAndPendingRowsComeFromOneSnapshot() throws {
        let path = tempDB("p")
        let outbox = try Outbox(path: path)
        let first = try outbox.transaction { try $0.enqueue(topic: "t", key: "a", payload: "1") }
        _ = try outbox.transaction { try $0.enqueue(topic: "t", key: "a", payload: "2") }
        let store = try OutboxStore(path: path)
        let token = try XCTUnwrap(store.acquireLease(holder: "r", nowMs: 0, ttlMs: 1000))
        XCTAssertTrue(try store.record(RelayWrite(dead: [.init(id: first, attempts: 3, error: "x")]), holder: "r", token: token, nowMs: 0))
        let admin = try OutboxStore(path: path)
        let (rows, dead) = try store.pendingAndDeadKeys(afterID: 0, limit: 10) {
            XCTAssertEqual(try admin.replay(id: first), .replayed)
        }
        XCTAssertEqual(rows.contains { $0.id == first }, dead["a"] == nil,
                       "either still dead and not pending, or replayed and pending: \(rows.map(\.id)) \(dead)")
        XCTAssertEqual(dead["a"], first, "the snapshot from before the replay")
        // The next read sees the replay.
        let after = try store.pendingAndDeadKeys(afterID: 0, limit: 10)
        XCTAssertEqual(after.rows.first?.id, first)
        XCTAssertEqual(after.deadKeys, [:])
    }
}

final class ConsumerNameTests: XCTestCase {
    /// The default consumer name follows the inbox database, not the process: the same file is
    /// the same consumer after a restart (its unacknowledged entries are its own again at once).
    func testTheDefaultConsumerNameFollowsTheDatabase() {
        let a = RedisStreamReader.defaultConsumerName(inboxPath: "/data/consumer.db", currentDirectory: "/x")
        XCTAssertEqual(a, RedisStreamReader.defaultConsumerName(inboxPath: "/data/consumer.db", currentDirectory: "/y"))
        XCTAssertEqual(a, RedisStreamReader.defaultConsumerName(inboxPath: "consumer.db", currentDirectory: "/data"))
        XCTAssertNotEqual(a, RedisStreamReader.defaultConsumerName(inboxPath: "/data/other.db", currentDirectory: "/x"))
        XCTAssertTrue(a.hasPrefix("consumer-"))
    }
}
