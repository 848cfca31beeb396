import CohortCore
@testable import CohortOutbox
import Foundation
import XCTest

/// The inbox reads batches and the relay reads answers with the hand-written JSON: they must read
/// what the relay writes (and what Foundation writes) the way Codable does, and refuse bad shapes.
final class WireTests: XCTestCase {
    func testBatchesAndAnswersReadAsCodableReadsThem() throws {
        let odd = "q\"uote \\ é\n😀"
        let messages = [
            OutboxMessage(id: 7, source: "orders", topic: "OrderPlaced", key: "sku-1", payload: #"{"order_id":"o\"1","qty":2}"#,
                          headers: ["reply_to": "http://h:1/v1/inbox", "x": odd], createdMs: 1_700_000_000_123, attempts: 0),
            OutboxMessage(id: 8, source: "orders", topic: odd, key: odd, payload: odd, createdMs: 0, attempts: 3),
        ]
        var text = "{\"messages\":["
        for (i, m) in messages.enumerated() {
            if i > 0 { text.append(",") }
            JSONText.message(m, into: &text)
        }
        text.append("]}")
        let ours = try InboxBatch(wireJSON: Array(text.utf8))
        let theirs = try JSONDecoder().decode(InboxBatch.self, from: Data(text.utf8))
        XCTAssertEqual(ours.messages, theirs.messages)
        XCTAssertEqual(ours.messages.map(\.seq), [7, 8])
        XCTAssertEqual(ours.messages[0].headers["x"], odd)

        let answer = InboxBatchResponse(results: [InboxResult(id: "orders:7", status: "applied"),
                                                  InboxResult(id: "orders:8", status: "failed", error: odd)])
        let back = try JSONDecoder().decode(InboxBatchResponse.self, from: Data(answer.wireJSON))
        XCTAssertEqual(back.results, answer.results)
        XCTAssertEqual(try InboxBatchResponse(wireJSON: Array(try JSONEncoder().encode(answer))).results, answer.results)

        XCTAssertEqual(JSONText.parseHeaders(JSONText.headers(["a": odd, "b": ""])), ["a": odd, "b": ""])
        XCTAssertEqual(JSONText.parseHeaders(#"{"a":1}"#), [:])
        XCTAssertEqual(JSONText.parseHeaders("not json"), [:])
    }

    func testBadBatchesAreRefusedNamingTheField() {
        func refusal(_ text: String) -> WireJSONError? {
            do { _ = try InboxBatch(wireJSON: Array(text.utf8)); return nil } catch { return error as? WireJSONError }
        }
        let good = #"{"id":"s:1","source":"s","seq":1,"topic":"t","key":"k","payload":"p","headers":{},"created_ms":0}"#
        XCTAssertNil(refusal("{\"messages\":[\(good)]}"))
        XCTAssertEqual(refusal(#"{"messages":[{"id":"s:1"}]}"#), .missingField("messages.0.source"))
        XCTAssertEqual(refusal("{\"messages\":[\(good),\(good.replacingOccurrences(of: "\"seq\":1", with: "\"seq\":\"1\""))]}"),
                       .wrongType("messages.1.seq"))
        XCTAssertEqual(refusal("{\"messages\":[\(good.replacingOccurrences(of: "{}", with: "{\"h\":2}"))]}"), .wrongType("messages.0.headers.h"))
        XCTAssertEqual(refusal("{\"messages\":[\(good.replacingOccurrences(of: ",\"headers\":{}", with: ""))]}"), .missingField("messages.0.headers"))
        XCTAssertEqual(refusal(#"{"messages":3}"#), .wrongType("messages"))
        XCTAssertEqual(refusal("{}"), .missingField("messages"))
        if case .malformed? = refusal("{\"messages\":[") {} else { XCTFail("a torn body is malformed") }
    }

    /// The relay sizes batches without encoding them: the count must be exactly what is written.
    func testWireBytesIsTheEncodedLength() {
        let odd = "q\"uote \\ é\n😀\u{01}\u{1f}\t\r\u{7f}"
        let messages = [
            OutboxMessage(id: 7, source: "orders", topic: "OrderPlaced", key: "sku-1", payload: #"{"order_id":"o\"1"}"#,
                          headers: ["reply_to": "http://h:1/v1/inbox", "x": odd], createdMs: 1_700_000_000_123),
            OutboxMessage(id: .max, source: odd, topic: odd, key: odd, payload: String(repeating: odd, count: 100), createdMs: -5),
            OutboxMessage(id: 1, source: "s", topic: "t", key: "k", payload: "", createdMs: 0),
        ]
        for m in messages {
            var text = ""
            JSONText.message(m, into: &text)
            XCTAssertEqual(m.wireBytes, text.utf8.count, text)
        }
    }

    /// A payload within `outboxPayloadBytesMax` whose JSON could not fit in one sink call alone
    /// (control characters are escaped into six bytes) is refused at enqueue; the largest plain
    /// payload, with the largest topic, key and headers, fits.
    func testAMessageThatCouldNotFitInABatchAloneIsRefusedAtEnqueue() throws {
        let outbox = try Outbox(path: tempDB("p"), name: String(repeating: "n", count: Limits.outboxSourceBytesMax))
        let control = String(repeating: "\u{01}", count: Limits.outboxPayloadBytesMax)
        XCTAssertThrowsError(try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: control) }) { e in
            XCTAssertTrue("\(e)".contains("does not fit in one sink call"), "\(e)")
        }
        var headers: [String: String] = [:]
        for i in 0..<Limits.outboxHeadersMax { headers[String(format: "%02d", i)] = String(repeating: "\u{02}", count: Limits.outboxHeaderBytesMax / Limits.outboxHeadersMax - 2) }
        let big = String(repeating: "x", count: Limits.outboxPayloadBytesMax)
        let side = String(repeating: "\u{03}", count: Limits.outboxKeyBytesMax)
        XCTAssertNoThrow(try outbox.transaction { try $0.enqueue(topic: side, key: side, payload: big, headers: headers) })
        // 150 KiB of control characters is 900 KiB of JSON: still fits.
        XCTAssertNoThrow(try outbox.transaction { try $0.enqueue(topic: "t", key: "k", payload: String(repeating: "\u{01}", count: 150 << 10)) })
        let rows = try OutboxStore(path: outbox.connection.path).pending(afterID: 0, limit: 10)
        XCTAssertEqual(rows.count, 2)
        for m in rows { XCTAssertLessThanOrEqual(OutboxBatchBytes.envelope + OutboxBatchBytes.cost(m), Limits.outboxBatchBytesMax) }
        XCTAssertLessThan(Limits.outboxBatchBytesMax, Limits.httpBodyBytesMax)
    }
}
