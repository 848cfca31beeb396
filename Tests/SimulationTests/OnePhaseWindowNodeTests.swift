import CohortCoordinator
import CohortCore
import CohortHTTP
import CohortLog
import CohortRuntime
import XCTest

/// A one-phase commit leaves no record at the coordinator: its only participant's record is the
/// decision. Before one-phase windows, a client that lost the answer to such a commit and asked
/// after a coordinator restart read 404 ("never committed") and could run the work again. Now a
/// one-phase commit goes out only inside a durable window, and after a restart an unknown txid
/// of the earlier epoch inside it reads 410.
final class OnePhaseWindowNodeTests: XCTestCase {
    final class Node {
        let env = HandDrivenEnvironment()
        let node: CoordinatorNode
        let log: DurableLog
        init(storage: SimLogStorage, epoch: UInt64) throws {
            let (log, recovered) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual, preallocateBytes: 512))
            let config = Coordinator.Config(coordinatorID: "3fa90c1e", epoch: epoch)
            node = try CoordinatorNode(coordinatorID: "3fa90c1e", log: log, recovered: recovered, config: config,
                                       checkpointAfterBytes: 1 << 30, environment: env, onFatal: { XCTFail("fatal: \($0)") })
            node.start()
            self.log = log
        }
        func settle() throws {
            env.drain()
            _ = try log.syncNow()
            env.drain()
        }
        /// Sends a request; returns its answer if it came before the node needed a participant.
        func call(_ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse? {
            var answer: HTTPResponse?
            node.handle(try HTTPRequest.parsingTarget(method: method, target: target, headers: HTTPHeaders(), body: Array(body.utf8)),
                        ClosureSink { answer = $0 })
            try settle()
            return answer
        }
        /// Answers the oldest message the node sent a participant; returns its body.
        @discardableResult
        func answerParticipant(_ json: String) throws -> String {
            XCTAssertFalse(env.sent.isEmpty, "nothing was sent to the participant")
            let (request, completion) = env.sent.removeFirst()
            completion(.success(HTTPClientResponse(status: 200, body: Array(json.utf8))))
            try settle()
            return String(decoding: request.body, as: UTF8.self)
        }
        func beginWithOneBranch() throws -> String {
            let begun = try XCTUnwrap(try call("POST", "/v1/transactions", "{}"))
            let txid = try JSONBody.value(BeginResponse.self, from: begun.body).txid
            XCTAssertEqual(try call("POST", "/v1/transactions/\(txid)/branches", #"{"participant":"a","url":"http://a"}"#)?.status, 200)
            return txid
        }
    }

    func testAOnePhaseCommitLostInARestartIsAnswered410NotNeverCommitted() throws {
        let storage = SimLogStorage()
        let first = try Node(storage: storage, epoch: 1)

        // The first single-branch commit waits for its window's record to be durable, then goes
        // out in one phase.
        let answered = try first.beginWithOneBranch()
        var answer: HTTPResponse?
        first.node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/\(answered)/commit", headers: HTTPHeaders(), body: []),
                          ClosureSink { answer = $0 })
        first.env.drain()
        XCTAssertTrue(first.env.sent.isEmpty, "nothing goes out before the window is durable")
        try first.settle()
        XCTAssertTrue(try first.answerParticipant(#"{"txid":"\#(answered)","outcome":"committed"}"#).contains(#""one_phase":true"#))
        XCTAssertEqual(answer?.status, 200)

        // Inside the durable window: at once. Its answer is lost with the coordinator.
        let onePhase = try first.beginWithOneBranch()
        XCTAssertNil(try first.call("POST", "/v1/transactions/\(onePhase)/commit"))
        XCTAssertEqual(first.env.sent.count, 1, "inside the window it goes out at once")
        XCTAssertTrue(try first.answerParticipant(#"{"txid":"\#(onePhase)","outcome":"committed"}"#).contains(#""one_phase":true"#))
        XCTAssertEqual(try first.call("GET", "/v1/transactions/\(onePhase)")?.status, 200)
        let unusedOld = TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: 1_000_000)

        var rng = SplitMix64(seed: 7)
        storage.crash(mode: .dropUnsynced, rng: &rng)
        let second = try Node(storage: storage, epoch: 1)
        let gone = try XCTUnwrap(try second.call("GET", "/v1/transactions/\(onePhase)"))
        XCTAssertEqual(gone.status, 410, String(decoding: gone.body, as: UTF8.self))
        XCTAssertTrue(String(decoding: gone.body, as: UTF8.self).contains("one phase"))
        XCTAssertEqual(try second.call("POST", "/v1/transactions/\(onePhase)/commit")?.status, 410, "a repeated commit is not told 404 either")
        // The one whose answer came is not known after the restart either (no checkpoint took it);
        // ids past the window and another coordinator's ids are still unknown here.
        XCTAssertEqual(try second.call("GET", "/v1/transactions/\(answered)")?.status, 410)
        XCTAssertEqual(try second.call("GET", "/v1/transactions/\(unusedOld)")?.status, 404)
        XCTAssertEqual(try second.call("GET", "/v1/transactions/\(TxID(coordinatorID: "00000001", epoch: 1, sequence: 2))")?.status, 404)
        // A participant asking about it still hears presumed abort: a one-phase branch never
        // asks, and a two-phase one unknown here never committed.
        let inquiry = try XCTUnwrap(try second.call("GET", "/v1/transactions/\(onePhase)/outcome?participant=b"))
        XCTAssertTrue(String(decoding: inquiry.body, as: UTF8.self).contains("aborted"), String(decoding: inquiry.body, as: UTF8.self))

        // In the new epoch the window of the old one does not count: the first single-branch
        // commit records a new window again before it goes out.
        let fresh = try second.beginWithOneBranch()
        var freshAnswer: HTTPResponse?
        second.node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/transactions/\(fresh)/commit", headers: HTTPHeaders(), body: []),
                           ClosureSink { freshAnswer = $0 })
        second.env.drain()
        XCTAssertTrue(second.env.sent.isEmpty)
        try second.settle()
        XCTAssertTrue(try second.answerParticipant(#"{"txid":"\#(fresh)","outcome":"committed"}"#).contains(#""one_phase":true"#))
        XCTAssertEqual(freshAnswer?.status, 200)
    }
}
