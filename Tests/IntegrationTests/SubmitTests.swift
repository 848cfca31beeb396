import CohortClient
import CohortCore
import Foundation
import XCTest

/// `POST /v1/transactions/submit` against real processes: the ops travel with the prepares.
final class SubmitTests: XCTestCase {
    func testSubmittedTransferCommitsAndARefusedOneChangesNothing() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        XCTAssertEqual(try api.participantName(a), "a")
        let setup = try api.submit([("a", a, [.set("x", 100)]), ("b", b, [.set("y", 0)])])
        XCTAssertEqual(setup.outcome, "committed")
        XCTAssertTrue(try eventually { try api.transaction(setup.txid)?.state == "committed" })
        let move = try api.submit([("a", a, [.add("x", -30, min: 0)]), ("b", b, [.add("y", 30)])])
        XCTAssertEqual(move.outcome, "committed")
        // The answer comes once the decision is durable; the second phase may still be on its way.
        XCTAssertTrue(try eventually { try api.transaction(move.txid)?.state == "committed" })
        XCTAssertEqual(try api.kv(a, "x"), .int(70))
        XCTAssertEqual(try api.kv(b, "y"), .int(30))
        let tooMuch = try api.submit([("a", a, [.add("x", -300, min: 0)]), ("b", b, [.add("y", 300)])])
        XCTAssertEqual(tooMuch.outcome, "aborted")
        XCTAssertTrue(tooMuch.reason?.contains("a voted no") == true, tooMuch.reason ?? "")
        XCTAssertEqual(try api.kv(a, "x"), .int(70), "a refused transfer changes nothing")
        XCTAssertEqual(try api.kv(b, "y"), .int(30))
        // The outcome is answered once decided; b's prepared branch hears the abort a moment
        // later and holds y until then. The next transfer, submitted at once, could find y
        // held by this older transaction and be refused (wait-die): once in CI.
        XCTAssertTrue(try eventually { try api.branches(b).isEmpty }, "b heard the abort")
        let view = try XCTUnwrap(try api.transaction(move.txid))
        XCTAssertEqual(view.events.first?.event, "submitted")
        // 3PC too.
        let three = try api.submit([("a", a, [.add("x", -1)]), ("b", b, [.add("y", 1)])], protocol: "3pc")
        XCTAssertEqual(three.outcome, "committed")
        XCTAssertTrue(try eventually { try api.transaction(three.txid)?.state == "committed" })
        XCTAssertEqual(try api.kv(b, "y"), .int(31))
        // A participant that is down: the prepare fails, the transaction aborts, nothing changes.
        cluster.kill9("b")
        let down = try api.submit([("a", a, [.add("x", -1)]), ("b", b, [.add("y", 1)])])
        XCTAssertEqual(down.outcome, "aborted")
        XCTAssertTrue(try eventually { try api.inDoubtBranches(a).isEmpty })
        XCTAssertEqual(try api.kv(a, "x"), .int(69))
    }

    /// `cohortd --submitted-work-bytes-max`: with room for one submission of about 600 KB, a
    /// second one, sent while the first waits for a paused participant's vote, is answered 503
    /// with the reason and runs nothing; once the first is decided the next is admitted. With
    /// the flag not reaching the coordinator (the 256 MiB default), the second is admitted.
    func testCohortdsSubmittedWorkFlagBoundsTheWorkHeld() throws {
        let cluster = try startCluster(agents: 2, coordinatorArguments: ["--submitted-work-bytes-max", "1048576"])
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        let filler = String(repeating: "x", count: 60_000)
        func work(_ tag: String) -> [(participant: String, url: String, ops: [WorkOp])] {
            let ops: [WorkOp] = (0..<5).map { .set("\(tag)-\($0)", .string(filler)) }
            return [("a", a, ops), ("b", b, ops)]
        }
        let agentB = try XCTUnwrap(cluster.process("b"))
        agentB.pause()
        var resumed = false
        defer { if !resumed { agentB.resume() } }
        let firstDone = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var firstOutcome: Result<String, Error>?
        Thread.detachNewThread {
            firstOutcome = Result { try CohortAPI(coordinatorURL: cluster.coordinatorURL).submit(work("one"), timeoutMs: 60_000).outcome }
            firstDone.signal()
        }
        func held() throws -> Double { try api.metrics(cluster.coordinatorURL)["cohort_submitted_work_bytes"] ?? 0 }
        XCTAssertTrue(try eventually { try held() > 500_000 }, "the first submission's work was never held")
        do {
            let second = try api.submit(work("two"))
            XCTFail("a second submission past the bound was admitted: \(second.outcome)")
        } catch let error as CohortAPIError {
            XCTAssertEqual(error.status, 503, "\(error)")
            XCTAssertTrue("\(error)".contains("would pass the limit (1048576)"), "\(error)")
        }
        XCTAssertGreaterThan(try held(), 500_000, "the first was still held when the second was refused")
        agentB.resume()
        resumed = true
        XCTAssertEqual(firstDone.wait(timeout: .now() + 60), .success, "the first submission was never answered")
        XCTAssertNoThrow(try firstOutcome?.get())
        XCTAssertTrue(try eventually { try held() == 0 }, "the first's work was never let go")
        XCTAssertEqual(try api.submit(work("three")).outcome, "committed")
        XCTAssertEqual(try api.kv(a, "two-0"), nil, "the refused submission ran nothing")
    }

    /// A resend of a committed submission after the coordinator forgot its transaction (here
    /// after one newer finished one, `--finished-kept 1`) and after a kill -9 and restart: the
    /// answer is the first run's outcome and txid, and the money moved once. Before committed
    /// submissions were remembered apart from their transactions it ran the transfer again.
    func testAResendAfterTheTransactionIsForgottenAndTheCoordinatorKilledRunsNothing() throws {
        let cluster = try startCluster(agents: 2, coordinatorArguments: ["--finished-kept", "1", "--submissions-kept", "1000",
                                                                          "--checkpoint-after-bytes", "4096"])
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        XCTAssertEqual(try api.submit([("a", a, [.set("x", 100)]), ("b", b, [.set("y", 0)])]).outcome, "committed")
        let move: [(participant: String, url: String, ops: [WorkOp])] = [("a", a, [.add("x", -30, min: 0)]), ("b", b, [.add("y", 30)])]
        let first = try api.submit(move, requestID: "pay-once")
        XCTAssertEqual(first.outcome, "committed")
        for i in 0..<3 {
            XCTAssertEqual(try api.submit([("a", a, [.set("n\(i)", 1)]), ("b", b, [.set("n\(i)", 1)])]).outcome, "committed")
        }
        XCTAssertTrue(try eventually { try api.transaction(first.txid)?.forgotten == true },
                      "the first transfer was never forgotten")
        /// What `GET` says of a forgotten transaction: its outcome, from the ledger.
        func forgottenOutcome(_ txid: String) throws -> String? {
            let view = try api.transaction(txid)
            XCTAssertEqual(view?.forgotten, true, txid)
            return view?.outcome
        }
        func resendIsAnswered(_ when: String) throws {
            let again = try api.submit(move, requestID: "pay-once")
            XCTAssertEqual(again.outcome, "committed", when)
            XCTAssertEqual(again.txid, first.txid, "\(when): the resend ran as a new transaction")
            XCTAssertEqual(try api.kv(a, "x"), .int(70), when)
            XCTAssertEqual(try api.kv(b, "y"), .int(30), when)
            XCTAssertEqual(try forgottenOutcome(first.txid), "committed", when)
        }
        try resendIsAnswered("in memory")
        let metrics = try api.metrics(cluster.coordinatorURL)
        XCTAssertEqual(metrics["cohort_committed_submissions_kept"], 1, "only pay-once had a request_id")
        XCTAssertEqual(metrics["cohort_submissions_repeated_total{from=\"memory\"}"], 1)
        cluster.kill9("coordinator")
        _ = try cluster.restart("coordinator", kill: false)
        try resendIsAnswered("after kill -9, from the log")
        // An abort leaves no log record (presumed abort): only a checkpoint keeps its outcome.
        let refused = try api.submit([("a", a, [.add("x", -1_000, min: 0)]), ("b", b, [.add("y", 1_000)])])
        XCTAssertEqual(refused.outcome, "aborted")
        // Transactions until a checkpoint (every 4 KiB of log) is taken after the abort left
        // `finished` (the first of them pushes it out): the log before that checkpoint, with
        // pay-once's records, is gone, so only the checkpoint can still hold the request_id and
        // the abort's outcome.
        func committedFiller(_ i: Int) throws {
            XCTAssertEqual(try api.submit([("a", a, [.set("m\(i)", 1)]), ("b", b, [.set("m\(i)", 1)])]).outcome, "committed")
        }
        func checkpoints() throws -> Double { try api.metrics(cluster.coordinatorURL)["cohort_log_checkpoints_total"] ?? 0 }
        try committedFiller(0)
        let checkpointsBefore = try checkpoints()
        var i = 1
        while try checkpoints() == checkpointsBefore && i < 300 {
            try committedFiller(i)
            i += 1
        }
        XCTAssertGreaterThan(try checkpoints(), checkpointsBefore, "no checkpoint after \(i) transactions")
        // `cohort_log_checkpoints_total` counts a checkpoint when it is appended; a commit after
        // it is answered once its decision is durable, and so is everything logged before it.
        try committedFiller(i)
        XCTAssertEqual(try forgottenOutcome(refused.txid), "aborted", "in memory")
        cluster.kill9("coordinator")
        _ = try cluster.restart("coordinator", kill: false)
        try resendIsAnswered("after kill -9, from a checkpoint")
        // The abort's outcome came back from the checkpoint's ledger.
        XCTAssertEqual(try forgottenOutcome(refused.txid), "aborted", "after kill -9, from a checkpoint")
    }

    func testRepeatedAndStrayPreparesWithWorkAreNotStagedAgain() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        let done = try api.submit([("a", a, [.set("x", 10)]), ("b", b, [.set("y", 10)])])
        XCTAssertEqual(done.outcome, "committed")
        XCTAssertTrue(try eventually { try api.transaction(done.txid)?.state == "committed" })
        func prepare(_ txid: String, _ ops: String) throws -> PrepareResponse {
            let body = #"{"txid":"\#(txid)","one_phase":false,"timeout_ms":2000,"ops":\#(ops)}"#
            let r = try api.raw("POST", a + "/v1/2pc/prepare", body: Array(body.utf8))
            XCTAssertEqual(r.status, 200, String(decoding: r.body, as: UTF8.self))
            return try PrepareResponse(wireJSON: r.body)
        }
        // A late duplicate of a finished branch's prepare: answered from memory, ops not staged.
        XCTAssertEqual(try prepare(done.txid, #"[{"op":"add","key":"x","delta":1000}]"#).vote, "yes")
        XCTAssertEqual(try api.kv(a, "x"), .int(10))
        XCTAssertTrue(try api.inDoubtBranches(a).isEmpty)
        // A prepare with work for a transaction the coordinator never had (a zombie): the branch
        // stages and votes, then asks the coordinator, is told aborted, and changes nothing.
        let coordinatorID = String(done.txid.split(separator: "-")[0])
        let stray = "\(coordinatorID)-1-99999"
        XCTAssertEqual(try prepare(stray, #"[{"op":"add","key":"x","delta":1000}]"#).vote, "yes")
        XCTAssertEqual(try api.inDoubtBranches(a).map(\.txid), [stray])
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try api.inDoubtBranches(a).isEmpty }, "the stray branch never resolved")
        XCTAssertEqual(try api.kv(a, "x"), .int(10))
        // Work that cannot be staged is a no vote, not an error.
        let bad = try prepare("\(coordinatorID)-1-99998", #"[{"op":"bogus","key":"x"}]"#)
        XCTAssertEqual(bad.vote, "no")
        XCTAssertTrue(bad.reason?.contains("invalid ops") == true, bad.reason ?? "")
    }

    /// Two branches whose URLs reach one agent (here `localhost` and `127.0.0.1`): the agent
    /// refuses the work named for the other participant, and the transaction aborts. Without the
    /// check, both prepares met one staged branch at a, the second branch's work was never
    /// staged, and the transaction committed without it.
    func testWorkNamedForAnotherParticipantIsRefused() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = cluster.url("a")
        let alias = a.replacingOccurrences(of: "127.0.0.1", with: "localhost")
        XCTAssertNotEqual(alias, a, "the test needs a second spelling of a's URL")
        let r = try api.submit([("a", a, [.set("x", 1)]), ("b", alias, [.set("y", 2)])])
        XCTAssertEqual(r.outcome, "aborted")
        XCTAssertTrue(r.reason?.contains("this is participant a, not b") == true, r.reason ?? "")
        XCTAssertTrue(try eventually { try api.branches(a).isEmpty }, "a heard the abort")
        XCTAssertNil(try api.kv(a, "x"))
        XCTAssertNil(try api.kv(a, "y"))
    }

    /// A number reaches the participant as the client wrote it. `1.0000000000000000001` is not a
    /// whole number, so agent a refuses the op and nothing moves; the coordinator used to pass
    /// the ops on through a double, which wrote `1.0`, and the transfer committed moving 1.
    func testAFractionNextToAWholeNumberIsNotTakenForIt() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        XCTAssertEqual(try api.submit([("a", a, [.set("x", 100)]), ("b", b, [.set("y", 0)])]).outcome, "committed")
        XCTAssertTrue(try eventually { try api.branches(a).isEmpty && api.branches(b).isEmpty })
        let body = #"{"branches":[{"participant":"a","url":"\#(a)","ops":[{"op":"add","key":"x","delta":-1.0000000000000000001}]},"#
            + #"{"participant":"b","url":"\#(b)","ops":[{"op":"add","key":"y","delta":1.0000000000000000001}]}]}"#
        let r = try api.raw("POST", cluster.coordinatorURL + "/v1/transactions/submit", body: Array(body.utf8))
        let text = String(decoding: r.body, as: UTF8.self)
        XCTAssertTrue(text.contains(#""outcome":"aborted""#), text)
        XCTAssertTrue(text.contains("delta: must be an integer"), text)
        XCTAssertTrue(try eventually { try api.branches(a).isEmpty && api.branches(b).isEmpty })
        XCTAssertEqual(try api.kv(a, "x"), .int(100))
        XCTAssertEqual(try api.kv(b, "y"), .int(0))
        // The agent's own work call reads it the same way; written `1.0`, it is 1.
        let work = try api.raw("POST", a + "/v1/work", body: Array(#"{"txid":"0000abcd-1-1","ops":[{"op":"add","key":"x","delta":1.0000000000000000001}]}"#.utf8))
        XCTAssertEqual(work.status, 400, String(decoding: work.body, as: UTF8.self))
        XCTAssertTrue(String(decoding: work.body, as: UTF8.self).contains("ops[0].delta"))
        let whole = try api.submit([("a", a, [.add("x", -1)]), ("b", b, [.add("y", 1)])])
        XCTAssertEqual(whole.outcome, "committed")
    }

    func testBadSubmitBodiesAreRefused() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = cluster.url("a")
        func status(_ body: String) throws -> (Int, String) {
            let r = try api.raw("POST", cluster.coordinatorURL + "/v1/transactions/submit", body: Array(body.utf8))
            return (r.status, String(decoding: r.body, as: UTF8.self))
        }
        for body in ["", "[", "{}", #"{"branches":[]}"#, #"{"branches":[{"participant":"a","url":"\#(a)"}]}"#,
                     #"{"branches":[{"participant":"a","url":"\#(a)","ops":{}}]}"#,
                     #"{"protocol":"tcc","branches":[{"participant":"a","url":"\#(a)","ops":[]}]}"#,
                     #"{"protocol":"4pc","branches":[{"participant":"a","url":"\#(a)","ops":[]}]}"#,
                     #"{"timeout_ms":-1,"branches":[{"participant":"a","url":"\#(a)","ops":[]}]}"#,
                     #"{"branches":[{"participant":"a","url":"\#(a)","ops":[]},{"participant":"a","url":"\#(a)","ops":[]}]}"#] {
            let (s, text) = try status(body)
            XCTAssertEqual(s, 400, "\(body) -> \(text)")
            XCTAssertTrue(text.contains("\"error\""), text)
        }
        XCTAssertEqual(try api.unfinished().count, 0, "no refused body opened a transaction")
    }
}
