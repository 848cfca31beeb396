import Foundation
import XCTest

/// `txctl submission REQUEST_ID` (`GET /v1/submissions/{request_id}`) against real processes:
/// what became of a submission, without sending it again.
final class SubmissionLookupTests: ServersTestCase {
    override class var directoryName: String { "submission-lookup" }

    func testASubmissionIsFoundWhileKeptAndFromTheMemoryAfterAndNothingRuns() throws {
        let c = try start("cohortd", ["--data", dir + "/c", "--port", "0", "--finished-kept", "1"])
        let a = try start("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", c.url])
        let b = try start("cohort-agent", ["--name", "b", "--data", dir + "/b", "--port", "0", "--coordinator", c.url])
        func submit(_ requestID: String, _ key: String) throws -> String {
            let body = #"{"request_id": "\#(requestID)", "branches": [{"participant": "a", "url": "\#(a.url)", "ops": [{"op": "add", "key": "\#(key)", "delta": 1}]}, {"participant": "b", "url": "\#(b.url)", "ops": [{"op": "add", "key": "\#(key)", "delta": 1}]}]}"#
            let (status, answer) = try http("POST", c.url + "/v1/transactions/submit", body)
            XCTAssertEqual(status, 200, "\(answer)")
            XCTAssertEqual(answer["outcome"] as? String, "committed")
            return try XCTUnwrap(answer["txid"] as? String)
        }
        func txctl(_ args: [String]) throws -> CtlResult {
            try runProcess(try binary("txctl"), args, env: ["COHORT_COORDINATOR": c.url])
        }
        let first = try submit("order 17/a", "x")  // a space and a slash: escaped in the URL
        let kept = try txctl(["submission", "order 17/a"])
        XCTAssertEqual(kept.status, 0, kept.err)
        XCTAssertTrue(kept.out.contains("transaction \(first)") && kept.out.contains("txctl show \(first)"), kept.out)

        _ = try submit("later-1", "y")
        _ = try submit("later-2", "y")
        let (gone, goneView) = try http("GET", c.url + "/v1/transactions/" + first)
        XCTAssertEqual(gone, 200, "the first transaction is forgotten, its outcome in the ledger")
        XCTAssertEqual(goneView["forgotten"] as? Bool, true, "\(goneView)")
        XCTAssertEqual(goneView["state"] as? String, "committed")
        let shown = try txctl(["show", first])
        XCTAssertEqual(shown.status, 0, shown.err)
        XCTAssertTrue(shown.out.contains("committed") && shown.out.contains("forgotten: the coordinator no longer keeps"), shown.out)
        let explained = try txctl(["explain", first])
        XCTAssertEqual(explained.status, 0, explained.err)
        XCTAssertTrue(explained.out.contains("is finished: committed") && explained.out.contains("only this outcome"), explained.out)
        let remembered = try txctl(["submission", "order 17/a", "--json"])
        XCTAssertEqual(remembered.status, 0, remembered.err)
        let view = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(remembered.out.utf8)) as? [String: Any])
        XCTAssertEqual(view["txid"] as? String, first)
        XCTAssertEqual(view["outcome"] as? String, "committed")
        XCTAssertEqual(view["transaction_kept"] as? Bool, false)
        XCTAssertEqual(view["request_id"] as? String, "order 17/a")
        let text = try txctl(["submission", "order 17/a"])
        XCTAssertTrue(text.out.contains("forgotten") && text.out.contains(first), text.out)

        let unknown = try txctl(["submission", "never-sent"])
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.err.hasPrefix("error: no submission") && unknown.err.contains("would run"), unknown.err)
        let tooLong = try txctl(["submission", String(repeating: "r", count: 129)])
        XCTAssertEqual(tooLong.status, 2, tooLong.err)
        let (bad, _) = try http("GET", c.url + "/v1/submissions/" + String(repeating: "r", count: 129))
        XCTAssertEqual(bad, 400)
        // Looking ran nothing: x was added once.
        let (_, value) = try http("GET", a.url + "/v1/kv/x")
        XCTAssertEqual(value["value"] as? Int, 1)
    }
}
