import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

final class CoordinatorCommitAnswerTests: XCTestCase {
    /// Only a commit answer that says "committed" acknowledges the branch. A 200 whose body
    /// cannot be read (or says something else) is a failed delivery, retried: counting it as an
    /// acknowledgement let the coordinator forget a transaction whose participant was still
    /// prepared, and that participant's inquiry then heard the presumed "aborted".
    func testA200CommitAnswerThatDoesNotSayCommittedIsNotAnAcknowledgement() throws {
        let rig = try NodeRig()
        let (env, log, node) = (rig.env, rig.log, rig.node)
        let txid = try JSONBody.value(BeginResponse.self, from: rig.call("POST", "/v1/transactions", "{}").body).txid
        for name in ["a", "b"] {
            XCTAssertEqual(try rig.call("POST", "/v1/transactions/\(txid)/branches", #"{"participant":"\#(name)","url":"http://\#(name)"}"#).status, 200)
        }
        var outcome: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/\(txid)/commit", headers: HTTPHeaders(), body: []),
                    ClosureSink { outcome = $0 })
        env.drain()
        XCTAssertEqual(env.sent.map(\.request.url), ["http://a/v1/2pc/prepare", "http://b/v1/2pc/prepare"])
        for i in 0..<2 {
            env.sent[i].completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","vote":"yes"}"#.utf8))))
        }
        env.drain()
        _ = try log.syncNow()  // the commit decision becomes durable
        env.drain()
        XCTAssertEqual(outcome?.status, 200)
        XCTAssertEqual(env.sent.count, 4)
        XCTAssertEqual(env.sent[2].request.url, "http://a/v1/2pc/commit")
        XCTAssertEqual(env.sent[3].request.url, "http://b/v1/2pc/commit")
        env.sent[2].completion(.success(HTTPClientResponse(status: 200, body: Array("{}".utf8))))
        env.sent[3].completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","status":"committed"}"#.utf8))))
        env.drain()

        let view = try JSONBody.value(TransactionView.self, from: rig.call("GET", "/v1/transactions/\(txid)").body)
        XCTAssertEqual(view.state, "committing", "not finished: branch a has not acknowledged")
        let a = try XCTUnwrap(view.branches.first { $0.participant == "a" })
        let b = try XCTUnwrap(view.branches.first { $0.participant == "b" })
        XCTAssertEqual(a.state, "commit-sent")
        XCTAssertTrue(a.lastError?.contains("commit") ?? false, a.lastError ?? "no error recorded")
        XCTAssertEqual(b.state, "committed")
    }
}

final class SubmitAdmissionTests: XCTestCase {
    /// Submissions toward a participant that does not answer are refused 503 once
    /// `Limits.submitRefusedAtQueuedMessages` messages to it are unanswered, before a
    /// transaction is opened. Admitted, their prepares failed on the full queue and each answered
    /// 200 "aborted" (a black-box probe: 35,087 of 40,000), which reads like a business "no".
    func testSubmissionsTowardAParticipantThatIsBehindAreRefused503() throws {
        let rig = try NodeRig()
        let (env, node) = (rig.env, rig.node)
        var refusals: [HTTPResponse] = []
        let limit = Limits.submitRefusedAtQueuedMessages
        for i in 0...limit {
            let body = #"{"branches":[{"participant":"a","url":"http://a","ops":[{"op":"add","key":"k\#(i)","delta":1}]},"#
                + #"{"participant":"b","url":"http://b","ops":[{"op":"add","key":"k\#(i)","delta":-1}]}]}"#
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/submit", headers: HTTPHeaders(), body: Array(body.utf8)),
                        ClosureSink { refusals.append($0) })
        }
        env.drain()
        XCTAssertEqual(env.sent.filter { $0.request.url == "http://a/v1/2pc/prepare" }.count, limit, "one prepare per admitted submission")
        XCTAssertEqual(refusals.count, 1, "only the last is answered now: \(refusals.map(\.status))")
        XCTAssertEqual(refusals.first?.status, 503)
        let text = String(decoding: refusals.first?.body ?? [], as: UTF8.self)
        XCTAssertTrue(text.contains("participant a has \(limit) messages sent and not yet answered"), text)
        // Answers bring it back under the bound: a votes no on three (a no-voter is sent no
        // abort), and the next submission is admitted.
        for s in env.sent.filter({ $0.request.url == "http://a/v1/2pc/prepare" }).prefix(3) {
            let txid = try XCTUnwrap(JSONBody.value(PrepareRequest.self, from: s.request.body).txid)
            s.completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","vote":"no","reason":"test"}"#.utf8))))
        }
        env.drain()
        XCTAssertLessThan(env.sent.filter { $0.request.url == "http://a/v1/2pc/abort" }.count, 3)
        // (b, never answered, now also has the aborts of those three: another participant.)
        let body = #"{"branches":[{"participant":"a","url":"http://a","ops":[{"op":"add","key":"z","delta":1}]},{"participant":"c","url":"http://c","ops":[{"op":"add","key":"z","delta":-1}]}]}"#
        var answered: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/submit", headers: HTTPHeaders(), body: Array(body.utf8)),
                    ClosureSink { answered = $0 })
        env.drain()
        XCTAssertNil(answered, "admitted: it waits for its votes, but: \(String(decoding: answered?.body ?? [], as: UTF8.self))")
    }
}

final class TransactionListBoundTests: XCTestCase {
    /// `GET /v1/transactions` stops at `Limits.transactionsListedBytesMax` and says so: 10,000
    /// parked transactions made a 31 MB answer, built on the event loop and larger than txctl
    /// reads.
    func testTheListIsBoundedInBytesAndSaysItWasCut() throws {
        let rig = try NodeRig()
        // Transactions with a long-named branch each, enough for more than the bound.
        let name = String(repeating: "p", count: 100)
        for _ in 0..<8_000 {
            let txid = try JSONBody.value(BeginResponse.self, from: rig.call("POST", "/v1/transactions", "{}").body).txid
            XCTAssertEqual(try rig.call("POST", "/v1/transactions/\(txid)/branches", #"{"participant":"\#(name)","url":"http://\#(name)"}"#).status, 200)
        }
        let small = try rig.call("GET", "/v1/transactions?limit=10")
        XCTAssertEqual(try JSONBody.value(TransactionList.self, from: small.body).transactions.count, 10)
        XCTAssertNil(try JSONBody.value(TransactionList.self, from: small.body).truncated)
        let all = try rig.call("GET", "/v1/transactions?limit=20000")
        XCTAssertEqual(all.status, 200)
        XCTAssertLessThanOrEqual(all.body.count, Limits.transactionsListedBytesMax + 1_000)
        let list = try JSONBody.value(TransactionList.self, from: all.body)
        XCTAssertEqual(list.truncated, true)
        XCTAssertGreaterThan(list.transactions.count, 1_000)
        XCTAssertLessThan(list.transactions.count, 8_000)
    }
}

/// A coordinator node on a hand-driven environment and a log in memory: sends are recorded,
/// and answered only when a test completes them.
struct NodeRig {
    let env = HandDrivenEnvironment()
    let log: DurableLog
    let node: CoordinatorNode

    /// `unsyncedBytesMax`: the log's back-pressure bound (default: the real one). `onFatal`:
    /// what a fatal error does (default: fail the test).
    init(unsyncedBytesMax: Int = Limits.unsyncedBytesMax, onFatal: @escaping (String) -> Void = { XCTFail("fatal: \($0)") }) throws {
        let (log, recovered) = try DurableLog.open(storage: SimLogStorage(),
                                                   config: DurableLogConfig(syncMode: .manual, unsyncedBytesMax: unsyncedBytesMax, preallocateBytes: 512))
        self.log = log
        node = try CoordinatorNode(coordinatorID: "3fa90c1e", log: log, recovered: recovered,
                                   config: Coordinator.Config(coordinatorID: "3fa90c1e", epoch: 1),
                                   checkpointAfterBytes: 1 << 30, environment: env, onFatal: onFatal)
        node.start()
    }

    /// Hands the request to the node and returns its answer, if it gave one by the time the
    /// environment ran dry.
    func send(_ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse? {
        var answer: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: method, target: target, headers: HTTPHeaders(), body: Array(body.utf8)),
                    ClosureSink { answer = $0 })
        env.drain()
        return answer
    }

    func call(_ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse {
        try XCTUnwrap(try send(method, target, body), "\(method) \(target) unanswered")
    }
}

final class SubmissionRecordRefusedTests: XCTestCase {
    /// A submission's request_id record goes to the log just before its decision. When the log
    /// refuses it (full), the decision is refused too and the transaction aborts: committed
    /// without it, a client resending the same request_id after a restart would run the work a
    /// second time (a review: a sync round between the two appends can free room for the
    /// decision alone). Here the request_id record is larger than the log's unsynced room and
    /// the decision fits.
    func testADecisionWhoseSubmissionRecordWasRefusedIsRefusedToo() throws {
        let requestID = String(repeating: "r", count: Limits.requestIDBytesMax)
        let submissionBytes = 17 + CoordinatorRecordCoding.encode(.submission(try XCTUnwrap(TxID("3fa90c1e-1-1")), requestID: requestID)).payload.count
        var fatal: String?
        let rig = try NodeRig(unsyncedBytesMax: submissionBytes - 1, onFatal: { fatal = $0 })
        let (env, log, node) = (rig.env, rig.log, rig.node)
        _ = try log.syncNow()
        env.drain()
        let body = #"{"request_id":"\#(requestID)","branches":[{"participant":"a","url":"http://a","ops":[{"op":"add","key":"k","delta":1}]},"#
            + #"{"participant":"b","url":"http://b","ops":[{"op":"add","key":"k","delta":-1}]}]}"#
        var answer: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/submit", headers: HTTPHeaders(), body: Array(body.utf8)),
                    ClosureSink { answer = $0 })
        env.drain()
        XCTAssertEqual(env.sent.map(\.request.url), ["http://a/v1/2pc/prepare", "http://b/v1/2pc/prepare"])
        let txid = try XCTUnwrap(JSONBody.value(PrepareRequest.self, from: env.sent[0].request.body).txid)
        for i in 0..<2 {
            env.sent[i].completion(.success(HTTPClientResponse(status: 200, body: Array(#"{"txid":"\#(txid)","vote":"yes"}"#.utf8))))
        }
        env.drain()
        _ = try log.syncNow()
        env.drain()
        XCTAssertNil(fatal)
        let outcome = try JSONBody.value(OutcomeResponse.self, from: try XCTUnwrap(answer, "unanswered").body)
        XCTAssertEqual(outcome.outcome, "aborted", "committed without its request_id record")
        XCTAssertEqual(Set(env.sent.dropFirst(2).map(\.request.url)), ["http://a/v1/2pc/abort", "http://b/v1/2pc/abort"])
    }
}
