import CohortCore
import CohortHTTP
@testable import CohortOutbox
import CohortPosix
import CohortSQLite
import Foundation
import XCTest

/// A consumer (or a proxy in front of it) that refuses a whole batch with a 4xx because of one
/// message in it: the real `cohort-relay` against a real HTTP inbox.
final class BatchRefusalTests: XCTestCase {
    /// An inbox endpoint on its own event loop: a real `Inbox` behind `InboxEndpoint`, except
    /// that a batch holding a payload marked `"poison":true` is answered 400 as a whole (a
    /// strict schema check, a WAF rule). `applied` lists (key, seq) in the order the inbox
    /// applied them, once each.
    final class StrictConsumer: @unchecked Sendable {
        let loop: EventLoop
        var server: HTTPServer!
        let inbox: Inbox
        let lock = NSLock()
        var applied: [(key: String, seq: Int)] = []
        var refusedWhole = 0
        var url: String { "http://127.0.0.1:\(server.port)/v1/inbox" }
        /// The answer to a batch holding a poison message.
        let refusal: Int

        init(dbPath: String, refusal: Int = 400) throws {
            self.refusal = refusal
            inbox = try Inbox(path: dbPath, consumer: "strict")
            loop = try EventLoop()
            loop.startThread()
            let done = DispatchSemaphore(value: 0)
            var made: Result<HTTPServer, Error>?
            loop.execute {
                made = Result { try HTTPServer(loop: self.loop, host: "127.0.0.1", port: 0) { req, r in r.send(self.handle(req)) } }
                done.signal()
            }
            done.wait()
            server = try made!.get()
        }

        func handle(_ req: HTTPRequest) -> HTTPResponse {
            if String(decoding: req.body, as: UTF8.self).contains(#""poison\":true"#) {
                lock.withLock { refusedWhole += 1 }
                return .error(refusal, "a message of this batch does not match the schema")
            }
            return InboxEndpoint.handle(req, inbox: inbox) { _, m in
                let o = try JSONParser.parse(Array(m.payload.utf8))
                guard case .object(let f) = o, case .int(let seq)? = f.first(where: { $0.0 == "seq" })?.1 else { return }
                self.lock.withLock { self.applied.append((m.key, Int(seq))) }
            } ?? .error(404, "no such path")
        }

        func stop() {
            let done = DispatchSemaphore(value: 0)
            loop.execute { self.server.shutdown(); done.signal() }
            done.wait()
            loop.stopAndJoin()
            inbox.close()
        }
    }

    /// One message that makes the consumer refuse its whole batch (400) cost every message of
    /// the batch an attempt: the heads of unrelated keys that shared its batches became dead
    /// letters with it, and (dead letters blocking their key) those keys stopped until an
    /// operator replayed each. With `--attempts 1` one refusal did it: all 20 keys' heads dead,
    /// 40 of 366 messages applied; with `--attempts 2` k19's head died too in the run tried (under
    /// load, with batches of the same keys retried together, the default 10 as well). Now a
    /// batch refused whole is sent again in halves, nothing counted, until the message is alone:
    /// only it is refused and dead-lettered, every other key delivers everything, in order.
    func testOneMessageThatGetsItsBatchRefusedWholeDeadLettersOnlyItself() throws {
        try runPoisonBatches(refusal: 400)
    }

    /// The same consumer answering 500 (an exception on the poison message) for its batches:
    /// a 500 is the sink's trouble, nothing counted, and the batch was sent again whole after
    /// the backoff, so every key whose head shared the poison's batch stopped for good: after a
    /// minute 40 of 366 messages applied, all 20 keys stuck, no dead letter, nothing said but
    /// the sink's trouble. Now a 500 for several messages sends them again in halves (after the
    /// same backoff): the other keys deliver everything, in order; the poison messages are
    /// never counted (a 500 is no refusal) and stay pending, each holding only its own key.
    func testOneMessageThatMakesTheConsumerFailItsBatchHoldsUpOnlyItsKey() throws {
        try runPoisonBatches(refusal: 500)
    }

    /// 400 messages over 20 keys; n = 50, 100, ... (keys k10 and k0) are poison: a batch holding
    /// one is answered `refusal`. Key k10's first poison is its 3rd message (n = 50), k0's its
    /// 5th (n = 100). A 400 dead-letters (`--attempts 1`) the poison messages alone; a 500 leaves
    /// them pending. Either way every other message is applied once, in order per key.
    func runPoisonBatches(refusal: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let rig = try OutboxRig()
        defer { rig.stop() }
        _ = try rig.produce(["--count", "400", "--keys", "20", "--poison-every", "50"])
        let consumer = try StrictConsumer(dbPath: rig.consumerDB, refusal: refusal)
        defer { consumer.stop() }
        _ = try rig.start("cohort-relay", ["--db", rig.producerDB, "--sink", consumer.url, "--port", "0", "--attempts", "1"])
        let expectedApplied = 18 * 20 + 2 + 4
        let expectedDead = refusal == 400 ? 2 : 0
        let settled = try waitFor("the other keys delivered, the two poison heads held", timeoutMs: 60_000) {
            let c = try rig.outboxCounts()
            return c.dead == expectedDead && c.pending == 17 + 15 + 2 - expectedDead
                && consumer.lock.withLock { consumer.applied.count } == expectedApplied
        }
        let store = try OutboxStore(path: rig.producerDB)
        defer { store.close() }
        // The poison heads: dead letters after a 400; still pending, no attempt counted, after a 500.
        let held = try store.connection.query("SELECT key, payload, state, attempts, last_error FROM outbox WHERE key IN ('k0', 'k10') AND state IN (0, 2) AND payload LIKE '%\"poison\":true%' ORDER BY id LIMIT 2")
        let counts = try store.counts()
        XCTAssertTrue(settled, "applied \(consumer.lock.withLock { consumer.applied.count }) of \(expectedApplied); \(counts.pending) pending, \(counts.dead) dead", file: file, line: line)
        XCTAssertEqual(held.map { $0[0].text }, ["k10", "k0"], file: file, line: line)
        XCTAssertEqual(Set(held.map { $0[2].int }), [refusal == 400 ? 2 : 0], "dead after a 400, pending after a 500", file: file, line: line)
        XCTAssertEqual(Set(held.map { $0[3].int }), [refusal == 400 ? 1 : 0], "a 500 counts no attempt", file: file, line: line)
        // Either way the row names why its key waits (`txctl outbox URL list`).
        for row in held {
            XCTAssertTrue(row[4].text?.contains("HTTP \(refusal)") == true, "last_error: \(String(describing: row[4].text))", file: file, line: line)
        }
        XCTAssertEqual(try store.counts().dead, expectedDead, "only the poison messages are dead letters", file: file, line: line)
        XCTAssertGreaterThan(consumer.lock.withLock { consumer.refusedWhole }, 0, "the consumer did refuse batches whole", file: file, line: line)
        // Order per key, each applied once: seqs 1, 2, 3, ... with no gap and no repeat.
        var byKey: [String: [Int]] = [:]
        for a in consumer.lock.withLock({ consumer.applied }) { byKey[a.key, default: []].append(a.seq) }
        for (key, seqs) in byKey {
            XCTAssertEqual(seqs, Array(1...seqs.count), "key \(key)", file: file, line: line)
        }
        XCTAssertEqual(byKey["k10"]?.count, 2, "k10 stops before its poison message", file: file, line: line)
        XCTAssertEqual(byKey["k0"]?.count, 4, "k0 stops before its poison message", file: file, line: line)
    }

    /// `InboxEndpoint` answered 400 for a whole batch when one message in it could not be read:
    /// every message of the batch lost an attempt. Now each message is read on its own; one
    /// that cannot be read is answered `failed` in its own result (`duplicate` when its id was
    /// applied before: dedupe first), the others apply. Only a body that is not
    /// `{"messages": [...]}` at all is a 400.
    func testTheInboxEndpointAnswersAnUnreadableMessageInItsOwnResult() throws {
        let inbox = try Inbox(path: tempDB("strict-endpoint"), consumer: "c")
        defer { inbox.close() }
        var effects: [String] = []
        func post(_ body: String) -> HTTPResponse? {
            InboxEndpoint.handle(HTTPRequest(method: "POST", target: "/v1/inbox", path: "/v1/inbox", body: Array(body.utf8)), inbox: inbox) { _, m in
                effects.append(m.id)
            }
        }
        func message(_ id: String, seq: String = "1", headers: String? = #""headers":{}"#) -> String {
            #"{"id":"\#(id)","source":"s","seq":\#(seq),"topic":"t","key":"k\#(id)","payload":"p",\#(headers.map { $0 + "," } ?? "")"created_ms":1}"#
        }
        XCTAssertEqual(post(#"{"messages":["# + message("s:9") + "]}")?.status, 200)
        XCTAssertEqual(effects, ["s:9"])
        let r = post(#"{"messages":["# + [message("s:1"), message("s:2", seq: #""x""#), message("s:9", headers: nil), #"{"nope":1}"#, message("s:3", headers: #""headers":{"a":1}"#)].joined(separator: ",") + "]}")
        XCTAssertEqual(r?.status, 200, String(decoding: r?.body ?? [], as: UTF8.self))
        let results = try InboxBatchResponse(wireJSON: r?.body ?? []).results
        XCTAssertEqual(results.map(\.id), ["s:1", "s:2", "s:9", "", "s:3"], "one result per item, in batch order")
        XCTAssertEqual(results.map(\.status), ["applied", "failed", "duplicate", "failed", "failed"])
        XCTAssertEqual(results[1].error, #"message 1 of the batch cannot be read: field "messages.1.seq" has the wrong type: not applied"#)
        XCTAssertEqual(results[3].error, #"message 3 of the batch cannot be read: missing field "messages.3.id": not applied"#)
        XCTAssertEqual(results[4].error, #"message 4 of the batch cannot be read: field "messages.4.headers.a" has the wrong type: not applied"#)
        XCTAssertEqual(effects, ["s:9", "s:1"], "only the readable new message was applied")
        XCTAssertFalse(try inbox.hasApplied("s:2"), "no inbox row for a message not applied")
        // A batch of unreadable messages only: answered per message, nothing applied.
        let only = post(#"{"messages":["# + message("s:4", seq: "1.5") + "]}")
        XCTAssertEqual(only?.status, 200)
        XCTAssertEqual(try InboxBatchResponse(wireJSON: only?.body ?? []).results.map(\.status), ["failed"])
        // The body as a whole not a batch: 400, as before.
        for body in ["", "[]", "{", #"{"messages":{}}"#, #"{"messages":null}"#, #"{"mess":[]}"#, #"{"messages":[],"messages":[]}"#] {
            XCTAssertEqual(post(body)?.status, 400, body)
        }
        let many = #"{"messages":["# + Array(repeating: "{}", count: Limits.outboxBatchMessagesMax + 1).joined(separator: ",") + "]}"
        XCTAssertEqual(post(many)?.status, 413)
        XCTAssertEqual(effects, ["s:9", "s:1"])
    }

    /// The consumer's database failing the batch's own statements (here its inbox table gone)
    /// is the consumer down, as `docs/outbox.md` asks of every consumer: 503, which the relay
    /// retries whole after a backoff with nothing counted. It was 500, which the relay halves
    /// down to single messages and then holds each one's key back as that message's fault.
    func testTheInboxEndpointAnswersItsDatabaseFailingTheBatch503() throws {
        let path = tempDB("endpoint-db-down")
        let inbox = try Inbox(path: path, consumer: "c")
        defer { inbox.close() }
        var effects: [String] = []
        let body = #"{"messages":[{"id":"s:1","source":"s","seq":1,"topic":"t","key":"k","payload":"p","headers":{},"created_ms":1}]}"#
        func post() -> HTTPResponse? {
            InboxEndpoint.handle(HTTPRequest(method: "POST", target: "/v1/inbox", path: "/v1/inbox", body: Array(body.utf8)), inbox: inbox) { _, m in
                effects.append(m.id)
            }
        }
        let other = try SQLiteConnection(path: path)
        _ = try other.run("DROP TABLE inbox")
        other.close()
        let r = post()
        XCTAssertEqual(r?.status, 503, String(decoding: r?.body ?? [], as: UTF8.self))
        XCTAssertTrue(String(decoding: r?.body ?? [], as: UTF8.self).contains("database unavailable"), String(decoding: r?.body ?? [], as: UTF8.self))
        XCTAssertEqual(effects, [], "nothing applied")
    }
}
