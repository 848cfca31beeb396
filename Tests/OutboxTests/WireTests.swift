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
}
