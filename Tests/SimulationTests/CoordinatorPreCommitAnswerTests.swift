import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

final class CoordinatorPreCommitAnswerTests: XCTestCase {
    /// A participant that answers a pre-commit with anything but an acknowledgement (here 503:
    /// its log refused the pre-committed record) is alive and not pre-committed. The classic
    /// coordinator used to act on 409 only: a 503 left it to commit at the pre-commit timeout,
    /// presuming the participant had crashed, while that participant (never crashed, so free to
    /// decide alone) could abort on its own. Now it stops deciding and learns the outcome, as
    /// for a 409; a transport failure (no answer) still leaves it to the timeout.
    func testAPreCommitAnswered503StopsTheClassicCoordinatorDeciding() throws {
        let rig = try NodeRig()
        let (env, log) = (rig.env, rig.log)
        let txid = try JSONBody.value(BeginResponse.self, from: rig.call("POST", "/v1/transactions", #"{"protocol":"3pc","termination":"classic"}"#).body).txid
        for name in ["a", "b", "c"] {
            XCTAssertEqual(try rig.call("POST", "/v1/transactions/\(txid)/branches", #"{"participant":"\#(name)","url":"http://\#(name)"}"#).status, 200)
        }
        _ = try rig.send("POST", "/v1/transactions/\(txid)/commit")
        XCTAssertEqual(env.sent.map(\.request.url), ["http://a/v1/2pc/prepare", "http://b/v1/2pc/prepare", "http://c/v1/2pc/prepare"])
        for i in 0..<3 {
            env.sent[i].completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","vote":"yes"}"#.utf8))))
        }
        env.drain()
        _ = try log.syncNow()  // the pre-commit record becomes durable
        env.drain()
        let preCommits = env.sent.filter { $0.request.url.hasSuffix("/v1/3pc/precommit") }
        XCTAssertEqual(preCommits.count, 3)
        func state() throws -> String { try JSONBody.value(TransactionView.self, from: rig.call("GET", "/v1/transactions/\(txid)").body).state }
        // a acknowledges; c's answer is lost (no answer): the timeout still decides for it.
        preCommits[0].completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","status":"pre-committed"}"#.utf8))))
        preCommits[2].completion(.failure(.connectFailed("connection refused")))
        env.drain()
        XCTAssertEqual(try state(), "pre-committing", "no answer is not a refusal")
        // b answers 503.
        preCommits[1].completion(.success(HTTPClientResponse(status: 503, body: Array(#"{"error":"cannot log the pre-record now: log full; retry"}"#.utf8))))
        env.drain()
        XCTAssertEqual(try state(), "terminating", "b answered (503): it is alive, not failed; the coordinator must not commit without it")
    }
}
