@testable import CohortAgent
@testable import CohortCore
import CohortHTTP
@testable import CohortKV
import CohortLog
import CohortRuntime
import XCTest

/// A store that, once closed, records any use instead of stopping the process as the real
/// stores do ("SQLiteKVStore used after close" is a precondition), so a test can report it.
private final class CloseWatchingStore: KVStore {
    let inner = MemoryKVStore()
    private(set) var closed = false
    private(set) var usedAfterClose: [String] = []
    private func open(_ use: String) -> Bool {
        if closed { usedAfterClose.append(use) }
        return !closed
    }
    func get(_ key: String) throws -> KVValue? { open("get \(key)") ? try inner.get(key) : nil }
    func scanPage(prefix: String, after: String?, limit: Int, bytesMax: Int) throws -> KVScanPage {
        open("scan") ? try inner.scanPage(prefix: prefix, after: after, limit: limit, bytesMax: bytesMax) : KVScanPage()
    }
    func apply(_ commits: [KVCommit]) throws {
        if open("apply LSNs \(commits.map(\.lsn))") { try inner.apply(commits) }
    }
    func appliedLSN() throws -> UInt64 { open("appliedLSN") ? try inner.appliedLSN() : 0 }
    func makeDurable() throws { if open("makeDurable") { try inner.makeDurable() } }
    func close() {
        closed = true
        inner.close()
    }
}

final class AgentNodeTests: XCTestCase {
    private func makeNode(_ env: HandDrivenEnvironment, store: KVStore) throws -> AgentNode {
        let (log, recovered) = try DurableLog.open(storage: SimLogStorage(), config: DurableLogConfig(syncMode: .manual, preallocateBytes: 512))
        let node = try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                                 log: log, recovered: recovered, store: store, config: Participant.Config(name: "a"),
                                 checkpointAfterBytes: 1 << 30, environment: env, onFatal: { XCTFail("fatal: \($0)") })
        node.advertiseURL = "http://a"
        node.start()
        env.drain()
        return node
    }

    /// Sends one request and drains the tasks it queued; nil when it went unanswered.
    private func call(_ node: AgentNode, _ env: HandDrivenEnvironment, _ method: String, _ target: String, _ body: String = "") throws -> HTTPResponse? {
        var answer: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: method, target: target, headers: HTTPHeaders(), body: Array(body.utf8)),
                    ClosureSink { answer = $0 })
        env.drain()
        return answer
    }

    /// A request to an unknown /v1/3pc/ path is answered 404 and leaves nothing tracked. It used
    /// to be tracked first (its txid kept for the answer) and then answered past `respond`, so
    /// every such request left its txid entry behind for good.
    func testUnknownThreePhasePathIsAnswered404AndLeavesNothingTracked() throws {
        let env = HandDrivenEnvironment()
        let node = try makeNode(env, store: MemoryKVStore())
        let txid = "0000abcd-1-1"
        XCTAssertEqual(node.trackedRequestCount, 0)

        // A known 3PC message is tracked and answered through `respond`: nothing stays.
        let state = try XCTUnwrap(try call(node, env, "POST", "/v1/3pc/state", #"{"txid":"\#(txid)"}"#), "state query unanswered")
        XCTAssertEqual(state.status, 200, String(decoding: state.body, as: UTF8.self))
        XCTAssertEqual(node.trackedRequestCount, 0, "an answered state query is no longer tracked")

        // Unknown messages, each with a well-formed body (the old route decoded it and tracked it).
        for (i, kind) in ["docommit", "precommitx", "nope"].enumerated() {
            let answer = try XCTUnwrap(try call(node, env, "POST", "/v1/3pc/\(kind)", #"{"txid":"0000abcd-1-\#(i + 2)"}"#), "/v1/3pc/\(kind) unanswered")
            XCTAssertEqual(answer.status, 404, "/v1/3pc/\(kind): \(String(decoding: answer.body, as: UTF8.self))")
        }
        XCTAssertEqual(node.trackedRequestCount, 0, "requests to unknown /v1/3pc/ paths left txid entries behind")
    }

    /// A durability callback already queued when the node stops does nothing: the server closes
    /// the store right after `stop()`, and applying the commit that sync made durable used to
    /// stop the process ("SQLiteKVStore used after close", a SIGTERM under load). The commit
    /// is in the log; the next start applies it.
    func testADurabilityCallbackQueuedBeforeStopIsIgnored() throws {
        let env = HandDrivenEnvironment()
        let store = CloseWatchingStore()
        let node = try makeNode(env, store: store)
        let txid = "0000abcd-1-1"

        // An unregistered branch staged, then a one-phase commit: the commit record is appended
        // and the answer waits for it to be durable.
        let staged = try XCTUnwrap(try call(node, env, "POST", "/v1/work",
                                            #"{"txid":"\#(txid)","register":false,"ops":[{"op":"set","key":"k","value":42}]}"#))
        XCTAssertEqual(staged.status, 200, String(decoding: staged.body, as: UTF8.self))
        var committed: HTTPResponse?
        node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/2pc/prepare", headers: HTTPHeaders(),
                                                  body: Array(#"{"txid":"\#(txid)","one_phase":true}"#.utf8)),
                    ClosureSink { committed = $0 })
        env.drain()
        XCTAssertNil(committed, "answered before the commit record was durable")
        XCTAssertTrue(env.tasks.isEmpty)

        // The sync makes the record durable; its callback is queued on the node's thread...
        let durable = try XCTUnwrap(try node.log.syncNow(), "nothing was waiting for a sync")
        XCTAssertEqual(env.tasks.count, 1, "the durability callback is queued")

        // ...and the node stops and the store is closed before it runs (AgentServer.shutdown).
        node.stop()
        node.log.close()
        store.close()
        env.drain()

        XCTAssertEqual(store.usedAfterClose, [], "the stopped node used the closed store")
        XCTAssertNil(committed, "the stopped node answered the commit")
        store.inner.reopen()
        XCTAssertNil(try store.inner.get("k"), "the stopped node applied the commit")
        XCTAssertEqual(try store.inner.appliedLSN(), 0)
        XCTAssertGreaterThanOrEqual(node.log.durableLSN, durable, "the commit stays in the log for the next start")
    }

    /// A simulated disk holding `records`, synced.
    private func synced(_ records: [Participant.Record]) throws -> (SimLogStorage, DurableLogConfig) {
        let storage = SimLogStorage()
        let config = DurableLogConfig(syncMode: .manual, preallocateBytes: 512)
        let (log, _) = try DurableLog.open(storage: storage, config: config)
        for r in records {
            let e = ParticipantRecordCoding.encode(r)
            _ = try log.append(type: e.type, payload: e.payload, force: true)
        }
        _ = try log.syncNow()
        log.close()
        return (storage, config)
    }

    /// An agent started on a log whose branch `txid` an operator forced to abort and whose
    /// coordinator then said committed (heuristic-mixed, its report not yet acknowledged).
    private func startedWithAnUnreportedMixedBranch(_ txid: String) throws -> (HandDrivenEnvironment, AgentNode) {
        let (storage, config) = try synced([
            .prepared(txid, coordinatorURL: "http://coordinator:1", writeSet: KVResource.encodeWriteSet([("k", .int(1))]), threePhase: nil),
            .heuristic(txid, outcome: .aborted, reason: "coordinator lost", operatorName: "oncall", atMs: 5),
            .heuristicResolved(txid, coordinatorOutcome: .committed, mixed: true),
        ])
        let env = HandDrivenEnvironment()
        let (log, recovered) = try DurableLog.open(storage: storage, config: config)
        let node = try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                                 log: log, recovered: recovered, store: MemoryKVStore(), config: Participant.Config(name: "a"),
                                 checkpointAfterBytes: 1 << 30, environment: env, onFatal: { XCTFail("fatal: \($0)") })
        node.start()
        env.drain()
        return (env, node)
    }

    /// A heuristic-mixed branch whose report the coordinator never acknowledged reports again
    /// when the agent starts. The state machine asked for it, but the node's start kept only
    /// inquiries and timers of the recovery's actions, so the report was never sent (a review).
    /// Acknowledged (200), it is owed no more.
    func testAnUnacknowledgedHeuristicReportIsSentAtTheStart() throws {
        let (env, node) = try startedWithAnUnreportedMixedBranch("3fa90c1e-1-1")
        let reports = env.sent.filter { $0.request.url.hasSuffix("/heuristic") }
        XCTAssertEqual(reports.map(\.request.url), ["http://coordinator:1/v1/transactions/3fa90c1e-1-1/heuristic"])
        XCTAssertEqual(node.machine.unreportedMixed.count, 1)
        reports.first?.completion(.success(HTTPClientResponse(status: 200, headers: HTTPHeaders(), body: Array(#"{"txid":"3fa90c1e-1-1","mixed":true}"#.utf8))))
        env.drain()
        XCTAssertTrue(node.machine.unreportedMixed.isEmpty, "acknowledged: owed no more")
        node.stop()
        node.log.close()
    }

    /// A branch forced to commit whose coordinator's abort arrives while its forget record is
    /// being written: once the coordinator has its answer, a crash (recovery from only the
    /// synced records) still finds the branch heuristic-mixed, and the report goes again. The
    /// mark used to be logged only once the forget was durable, and the abort answered at
    /// once: a crash between the forget's sync and the mark's came back forgotten, not mixed,
    /// and the coordinator, which sends an abort once, never heard (a review).
    func testACrashAfterAnsweringTheAbortDuringAForgetKeepsTheMixedMark() throws {
        let txid = "3fa90c1e-1-1"
        let (storage, config) = try synced([
            .prepared(txid, coordinatorURL: "http://coordinator:1", writeSet: KVResource.encodeWriteSet([("k", .int(1))]), threePhase: nil),
            .heuristic(txid, outcome: .committed, reason: "coordinator lost", operatorName: "oncall", atMs: 5),
        ])
        var crashed = false  // the dead log's close fails, as a crashed process's would
        func open(_ env: HandDrivenEnvironment) throws -> AgentNode {
            let (log, recovered) = try DurableLog.open(storage: storage, config: config)
            let node = try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                                     log: log, recovered: recovered, store: MemoryKVStore(), config: Participant.Config(name: "a"),
                                     checkpointAfterBytes: 1 << 30, environment: env, onFatal: { if !crashed { XCTFail("fatal: \($0)") } })
            node.start()
            env.drain()
            return node
        }
        func post(_ node: AgentNode, _ env: HandDrivenEnvironment, _ target: String, _ body: String, into answer: @escaping (HTTPResponse) -> Void) throws {
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: target, headers: HTTPHeaders(), body: Array(body.utf8)),
                        ClosureSink(answer))
            env.drain()
        }
        let env = HandDrivenEnvironment()
        let node = try open(env)
        XCTAssertEqual(node.machine.state(of: txid), .heuristicCommitted)
        var forgot: HTTPResponse?
        var abortAnswer: HTTPResponse?
        try post(node, env, "/v1/branches/\(txid)/forget", #"{"reason":"coordinator decommissioned","operator":"carol"}"#) { forgot = $0 }
        XCTAssertNil(forgot, "answered before the forget record was durable")
        XCTAssertEqual(node.machine.state(of: txid), .forgetting)
        // The coordinator's abort arrives while the forget record is written.
        try post(node, env, "/v1/2pc/abort", #"{"txid":"\#(txid)"}"#) { abortAnswer = $0 }
        XCTAssertNil(abortAnswer, "the abort was answered before a durable record carried the mixed mark")
        // One sync: the coordinator has its answer then...
        _ = try node.log.syncNow()
        env.drain()
        XCTAssertEqual(forgot?.status, 200)
        XCTAssertEqual(abortAnswer?.status, 200)
        XCTAssertEqual(node.machine.heuristicMixed[txid]?.outcome, .committed)
        // ...and the agent crashes before anything else reaches the disk.
        // (Crashed before the log is closed: closing runs a last sync.)
        node.stop()
        var rng = SplitMix64(seed: 7)
        storage.crash(mode: .dropUnsynced, rng: &rng)
        crashed = true
        node.log.close()
        crashed = false

        let env2 = HandDrivenEnvironment()
        let restarted = try open(env2)
        XCTAssertEqual(restarted.machine.heuristicMixed[txid]?.outcome, .committed, "the crash lost the heuristic-mixed mark")
        XCTAssertEqual(restarted.machine.forgottenHeuristics[txid]?.decision.outcome, .committed)
        XCTAssertEqual(env2.sent.filter { $0.request.url.hasSuffix("/heuristic") }.map(\.request.url),
                       ["http://coordinator:1/v1/transactions/\(txid)/heuristic"], "the report is owed again")
        XCTAssertTrue(env2.sent.allSatisfy { !$0.request.url.contains("/outcome") }, "a forgotten branch asks nobody")
        restarted.stop()
        restarted.log.close()
    }

    /// A heuristic-mixed report whose quick tries all failed goes again every
    /// `Limits.heuristicReportRetryIntervalMs` while unacknowledged (a coordinator back after an
    /// hour still hears, without waiting for a restart), and the series stops once it is
    /// acknowledged.
    func testAReportOutOfQuickTriesIsSentAgainEveryIntervalUntilAcknowledged() throws {
        let txid = "3fa90c1e-1-1"
        let (env, node) = try startedWithAnUnreportedMixedBranch(txid)
        let slow = Limits.heuristicReportRetryIntervalMs, quick = Limits.retryDelayMsMax
        func reports() -> [Int] { env.sent.indices.filter { env.sent[$0].request.url.hasSuffix("/v1/transactions/\(txid)/heuristic") } }
        func answerLast(_ status: Int) {
            guard let last = reports().last else { return XCTFail("no report sent") }
            env.sent[last].completion(.success(HTTPClientResponse(status: status, headers: HTTPHeaders(), body: Array(#"{"error":"down"}"#.utf8))))
            env.drain()
        }
        // The quick series: each failed try brings the next after `retryDelayMsMax`.
        for attempt in 1...Limits.heuristicReportAttemptsMax {
            XCTAssertEqual(reports().count, attempt)
            answerLast(503)
            if attempt < Limits.heuristicReportAttemptsMax { XCTAssertEqual(env.fireTimers(afterMs: quick), 1, "try \(attempt + 1)") }
        }
        // Out of quick tries: nothing more until the slow interval has passed.
        XCTAssertEqual(env.pendingTimerDelaysMs.filter { $0 == slow }.count, 1, "\(env.pendingTimerDelaysMs)")
        XCTAssertEqual(env.fireTimers(afterMs: quick), 0)
        XCTAssertEqual(reports().count, Limits.heuristicReportAttemptsMax, "sent before the interval")
        XCTAssertEqual(env.fireTimers(afterMs: slow), 1)
        XCTAssertEqual(reports().count, Limits.heuristicReportAttemptsMax + 1, "not sent again after the interval")
        // That series fails too: another interval, another report.
        for _ in 1...Limits.heuristicReportAttemptsMax {
            answerLast(503)
            env.fireTimers(afterMs: quick)
        }
        XCTAssertEqual(reports().count, 2 * Limits.heuristicReportAttemptsMax)
        XCTAssertEqual(env.fireTimers(afterMs: slow), 1)
        XCTAssertEqual(reports().count, 2 * Limits.heuristicReportAttemptsMax + 1)
        // Acknowledged: owed no more, and nothing is scheduled or sent again.
        answerLast(200)
        XCTAssertTrue(node.machine.unreportedMixed.isEmpty)
        XCTAssertEqual(env.pendingTimerDelaysMs.filter { $0 == slow || $0 == quick }, [], "the series goes on after the acknowledgement")
        env.fireTimers(afterMs: slow)
        env.fireTimers(afterMs: quick)
        XCTAssertEqual(reports().count, 2 * Limits.heuristicReportAttemptsMax + 1)
        node.stop()
        node.log.close()
    }

    /// A work call's gets return at most `Limits.workValuesBytesMax` of keys and values (400
    /// past it), and the answers an agent keeps for request_id retries are bounded together
    /// (`Limits.workAnswersKeptBytesMax`: past it a new request_id is answered 503 and nothing
    /// is staged) and let go when their branch ends. 256 gets of 64 KiB values answered 16 MiB,
    /// and up to 256 such answers per branch were kept until it ended, outside every bound.
    func testWorkAnswersAreBoundedAndTheKeptOnesTogether() throws {
        let store = MemoryKVStore()
        let value = String(repeating: "v", count: Limits.stringValueBytesMax)
        try store.apply([KVCommit(lsn: 1, writes: (0..<16).map { (key: "k\($0)", value: KVValue.string(value)) })])
        let env = HandDrivenEnvironment()
        let node = try makeNode(env, store: store)
        func gets(_ keys: Range<Int>) -> String { keys.map { #"{"op":"get","key":"k\#($0)"}"# }.joined(separator: ",") }
        func text(_ r: HTTPResponse) -> String { String(decoding: r.body.prefix(300), as: UTF8.self) }

        // 16 values of 64 KiB in one call: past the bound, the call fails (and dooms its branch).
        let tooMany = try XCTUnwrap(try call(node, env, "POST", "/v1/work",
                                             #"{"txid":"0000abcd-1-1","register":false,"ops":[\#(gets(0..<16))]}"#))
        XCTAssertEqual(tooMany.status, 400, text(tooMany))
        XCTAssertTrue(text(tooMany).contains("read fewer keys per call"), text(tooMany))

        // Calls within it, each with its own request_id, are kept until the budget is used up.
        let txid = "0000abcd-1-2"
        let keysPerCall = Limits.workValuesBytesMax / (Limits.stringValueBytesMax + 4)
        XCTAssertGreaterThan(keysPerCall, 1)
        func work(_ requestID: String?) throws -> HTTPResponse {
            let id = requestID.map { #","request_id":"\#($0)""# } ?? ""
            return try XCTUnwrap(try call(node, env, "POST", "/v1/work",
                                          #"{"txid":"\#(txid)","register":false\#(id),"ops":[\#(gets(0..<keysPerCall))]}"#))
        }
        var answered = 0
        var first: HTTPResponse?
        var refused: HTTPResponse?
        while answered < Limits.requestIDsPerBranchMax {
            let r = try work("r\(answered)")
            guard r.status == 200 else { refused = r; break }
            first = first ?? r
            answered += 1
        }
        let answerBytes = try XCTUnwrap(first).body.count
        XCTAssertGreaterThan(answerBytes, keysPerCall * Limits.stringValueBytesMax)
        let refusal = try XCTUnwrap(refused, "\(answered) answers kept, \(node.workAnswersKeptBytes) bytes")
        XCTAssertEqual(refusal.status, 503, text(refusal))
        XCTAssertTrue(text(refusal).contains("work answers for request_id retries"), text(refusal))
        XCTAssertGreaterThanOrEqual(node.workAnswersKeptBytes, Limits.workAnswersKeptBytesMax)
        XCTAssertLessThan(node.workAnswersKeptBytes, Limits.workAnswersKeptBytesMax + answerBytes)
        let metrics = String(decoding: try XCTUnwrap(try call(node, env, "GET", "/metrics", "")).body, as: UTF8.self)
        XCTAssertTrue(metrics.contains("cohort_work_answers_kept_bytes \(node.workAnswersKeptBytes)\n"), "the gauge an operator watches")
        // Nothing of the refused call was staged, and the branch goes on: a kept answer is
        // given again, and a call without a request_id still runs.
        let again = try work("r0")
        XCTAssertEqual(again.status, 200)
        XCTAssertEqual(again.body, first?.body)
        XCTAssertEqual(try work(nil).status, 200)

        // The branch ends (aborted): its kept answers go, and new request_ids are taken again.
        let abort = try XCTUnwrap(try call(node, env, "POST", "/v1/2pc/abort", #"{"txid":"\#(txid)"}"#))
        XCTAssertEqual(abort.status, 200, text(abort))
        XCTAssertEqual(node.workAnswersKeptBytes, 0)
        let later = try XCTUnwrap(try call(node, env, "POST", "/v1/work",
                                           #"{"txid":"0000abcd-1-3","register":false,"request_id":"x","ops":[\#(gets(0..<1))]}"#))
        XCTAssertEqual(later.status, 200, text(later))
        XCTAssertEqual(node.workAnswersKeptBytes, later.body.count)
        node.stop()
        node.log.close()
    }

    /// A branch restored in doubt whose inquiry failed waits on its coordinator (an entry in
    /// `unreachableCoordinators`, backing off); the coordinator's own answer to a registration
    /// (new work joining through it) wakes it, a refusal too: a coordinator back from a
    /// restart answers 404 for a transaction it lost. Until session 37 only a 200 woke it. A
    /// registration that failed in transport, or a 503 (a proxy, or the coordinator shedding
    /// load), does not; the work call is answered as before (503, to retry; 404).
    func testTheCoordinatorsRefusalOfARegistrationWakesABranchWaitingOnIt() throws {
        let txid = "3fa90c1e-1-1"
        let (storage, config) = try synced([
            .prepared(txid, coordinatorURL: "http://coordinator:1", writeSet: KVResource.encodeWriteSet([("k", .int(1))]), threePhase: nil),
        ])
        let env = HandDrivenEnvironment()
        let (log, recovered) = try DurableLog.open(storage: storage, config: config)
        let node = try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                                 log: log, recovered: recovered, store: MemoryKVStore(), config: Participant.Config(name: "a"),
                                 checkpointAfterBytes: 1 << 30, environment: env, onFatal: { XCTFail("fatal: \($0)") })
        node.advertiseURL = "http://a"
        node.start()
        env.drain()
        let inquiry = try XCTUnwrap(env.sent.firstIndex { $0.request.url.contains("/v1/transactions/\(txid)/outcome") }, "asks at the start")
        env.sent[inquiry].completion(.failure(.connectFailed("connection refused")))
        env.drain()
        XCTAssertEqual(node.machine.unreachableCoordinators, ["http://coordinator:1": txid])

        /// Work on a new transaction: its registration's answer is `answer`.
        func work(_ n: Int, _ answer: Result<HTTPClientResponse, HTTPClientError>) throws -> HTTPResponse? {
            let sentBefore = env.sent.count
            var reply: HTTPResponse?
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/work", headers: HTTPHeaders(),
                                                      body: Array(#"{"txid":"0000abcd-1-\#(n)","ops":[{"op":"set","key":"w\#(n)","value":1}]}"#.utf8)),
                        ClosureSink { reply = $0 })
            env.drain()
            let sent = env.sent[sentBefore...].filter { $0.request.url.hasSuffix("/v1/transactions/0000abcd-1-\(n)/branches") }
            XCTAssertEqual(sent.count, 1, "one registration for work \(n)")
            sent.first?.completion(answer)
            env.drain()
            return reply
        }
        func answer(_ status: Int, _ body: String) -> Result<HTTPClientResponse, HTTPClientError> {
            .success(HTTPClientResponse(status: status, headers: HTTPHeaders(), body: Array(body.utf8)))
        }
        XCTAssertEqual(try work(1, .failure(.timeout))?.status, 503)
        XCTAssertEqual(node.machine.unreachableCoordinators, ["http://coordinator:1": txid], "no answer: still unreachable")
        XCTAssertEqual(try work(2, answer(503, #"{"error":"too many connections"}"#))?.status, 503)
        XCTAssertEqual(node.machine.unreachableCoordinators, ["http://coordinator:1": txid], "a 503 does not show it up")
        // A proxy that could not reach the coordinator (502) or gave up waiting (504): the
        // work's caller hears 503 (retry), not 409 (refused), and nothing wakes.
        XCTAssertEqual(try work(5, answer(502, "<html>bad gateway</html>"))?.status, 503)
        XCTAssertEqual(try work(6, answer(504, "<html>gateway timeout</html>"))?.status, 503)
        XCTAssertEqual(node.machine.unreachableCoordinators, ["http://coordinator:1": txid], "a 502 or 504 does not show it up")
        XCTAssertEqual(try work(3, answer(404, "<html>404</html>"))?.status, 404)
        XCTAssertEqual(node.machine.unreachableCoordinators, ["http://coordinator:1": txid], "a proxy's page does not show it up")
        let timersBefore = Set(env.timers.keys)
        XCTAssertEqual(try work(4, answer(404, #"{"error":"unknown transaction 0000abcd-1-4"}"#))?.status, 404)
        XCTAssertEqual(node.machine.unreachableCoordinators, [:], "the coordinator's own 404 shows it up")
        let set = env.timers.filter { !timersBefore.contains($0.key) }.map(\.value.afterMs)
        XCTAssertEqual(set.count, 1, "the waiting branch's inquiry is set again: \(set)")
        XCTAssertLessThan(set.first ?? .max, Limits.inquiryDelayMs)
        XCTAssertEqual(try work(7, answer(409, #"{"error":"transaction 0000abcd-1-7 is committing"}"#))?.status, 409, "a refusal stays one")
        node.stop()
        node.log.close()
    }

    /// The coordinator's registration answer names the commit this agent acknowledged last
    /// (`last_acknowledged_commit`): one its data neither holds nor let go (a directory restored
    /// from an older copy) fails the work with 503 naming it, stages nothing, and every later
    /// work call and prepare from that coordinator is refused too. Bad values from a fake
    /// coordinator: a malformed or huge string fails the work with a clear 503 and marks
    /// nothing; a wrong JSON type leaves the answer unreadable, which the agent has always
    /// taken with the default timeout (its prepare then carries the field, and a wrong type
    /// there is a 400, a no vote). A figure for another incarnation is ignored.
    func testARegistrationAnswerNamingALostCommitRefusesTheWork() throws {
        func text(_ r: HTTPResponse?) -> String { r.map { String(decoding: $0.body.prefix(600), as: UTF8.self) } ?? "no answer" }
        /// Sends registered work for `txid` and answers its registration with `answer`.
        func work(_ node: AgentNode, _ env: HandDrivenEnvironment, _ txid: String, registrationAnswer answer: String) throws -> HTTPResponse? {
            var reply: HTTPResponse?
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/work", headers: HTTPHeaders(),
                                                      body: Array(#"{"txid":"\#(txid)","ops":[{"op":"set","key":"k","value":1}]}"#.utf8)),
                        ClosureSink { reply = $0 })
            env.drain()
            let registration = try XCTUnwrap(env.sent.last(where: { $0.request.url.hasSuffix("/v1/transactions/\(txid)/branches") }), "no registration")
            registration.completion(.success(HTTPClientResponse(status: 200, headers: HTTPHeaders(), body: Array(answer.utf8))))
            env.drain()
            return reply
        }
        func health(_ node: AgentNode, _ env: HandDrivenEnvironment) throws -> String { text(try call(node, env, "GET", "/healthz")) }

        let env = HandDrivenEnvironment()
        let node = try makeNode(env, store: MemoryKVStore())
        let refused = try work(node, env, "0000abcd-1-5", registrationAnswer: #"{"txid":"0000abcd-1-5","timeout_ms":5000,"last_acknowledged_commit":"0000abcd-1-4"}"#)
        XCTAssertEqual(refused?.status, 503, text(refused))
        XCTAssertTrue(text(refused).contains("0000abcd-1-4") && text(refused).contains("older than what it acknowledged"), text(refused))
        XCTAssertNil(node.machine.branches["0000abcd-1-5"], "nothing staged")
        let degraded = try health(node, env)
        XCTAssertTrue(degraded.contains(#""status":"ok""#) && degraded.contains(#""problem":"#) && degraded.contains("0000abcd-1-4"), degraded)
        // Later work (named at commit: no registration) and a prepare are refused as well.
        let named = try call(node, env, "POST", "/v1/work", #"{"txid":"0000abcd-1-6","register":false,"ops":[{"op":"set","key":"k","value":1}]}"#)
        XCTAssertEqual(named?.status, 503, text(named))
        let prepare = try call(node, env, "POST", "/v1/2pc/prepare", #"{"txid":"0000abcd-1-7","ops":[{"op":"set","key":"k","value":1}],"participant":"a"}"#)
        XCTAssertTrue(text(prepare).contains(#""vote":"no""#) && text(prepare).contains("0000abcd-1-4"), text(prepare))
        let metrics = String(decoding: try XCTUnwrap(try call(node, env, "GET", "/metrics")).body, as: UTF8.self)
        XCTAssertTrue(metrics.contains("cohort_stale_data_coordinators 1\n"), metrics)
        XCTAssertTrue(metrics.contains("cohort_stale_data_refusals_total 3\n"), metrics)
        node.stop()
        node.log.close()

        // Bad values from a fake coordinator, each on a fresh agent.
        let huge = String(repeating: "7", count: 100_000)
        for (answer, status, says) in [
            (#"{"txid":"0000abcd-1-5","timeout_ms":5000,"last_acknowledged_commit":"junk"}"#, 503, "malformed last_acknowledged_commit"),
            (#"{"txid":"0000abcd-1-5","timeout_ms":5000,"last_acknowledged_commit":"\#(huge)"}"#, 503, "malformed last_acknowledged_commit"),
            (#"{"txid":"0000abcd-1-5","timeout_ms":5000,"last_acknowledged_commit":"ffffffff-1-4"}"#, 503, "not a txid of the coordinator"),
            (#"{"txid":"0000abcd-1-5","timeout_ms":5000,"last_acknowledged_commit":5}"#, 200, "staged"),
            (#"{"txid":"0000abcd-1-5","timeout_ms":5000,"last_acknowledged_commit":null}"#, 200, "staged"),
        ] {
            let env = HandDrivenEnvironment()
            let node = try makeNode(env, store: MemoryKVStore())
            let r = try work(node, env, "0000abcd-1-5", registrationAnswer: answer)
            XCTAssertEqual(r?.status, status, "\(answer.prefix(120)): \(text(r))")
            XCTAssertTrue(text(r).contains(says), text(r))
            XCTAssertLessThan(r?.body.count ?? 0, 1_000, "the answer quotes at most a bounded part of the value")
            XCTAssertTrue(node.machine.staleForCoordinators.isEmpty, "a bad value marks nothing")
            XCTAssertFalse(try health(node, env).contains("problem"))
            // A prepare carrying another incarnation's figure is not this directory's to check.
            let other = try call(node, env, "POST", "/v1/2pc/prepare",
                                 #"{"txid":"0000abcd-1-9","last_acknowledged_commit":"0000abcd-1-4","last_acknowledged_incarnation":"00000000000000ff"}"#)
            XCTAssertTrue(text(other).contains("no work for this transaction here"), text(other))
            XCTAssertTrue(node.machine.staleForCoordinators.isEmpty)
            node.stop()
            node.log.close()
        }
    }

    /// A 3PC backup's commit (`"backup": true`) for a txid this agent neither holds nor let go
    /// is acknowledged and marks nothing: a backup sends it to every peer that answered its
    /// round `unknown`, which a reader that restarted does (its read-only vote is not logged).
    /// It used to be refused 503 and to mark the coordinator stale, so the reader refused all
    /// new work from it (a review, session 37). The coordinator's own commit still does.
    func testABackupsCommitForAnUnknownTxidIsNoSignOfLostData() throws {
        func text(_ r: HTTPResponse?) -> String { r.map { String(decoding: $0.body.prefix(600), as: UTF8.self) } ?? "no answer" }
        let env = HandDrivenEnvironment()
        let node = try makeNode(env, store: MemoryKVStore())
        let backup = try call(node, env, "POST", "/v1/2pc/commit", #"{"txid":"0000abcd-1-4","backup":true}"#)
        XCTAssertEqual(backup?.status, 200, text(backup))
        XCTAssertTrue(node.machine.staleForCoordinators.isEmpty, "a backup's commit marked the coordinator stale")
        XCTAssertFalse(text(try call(node, env, "GET", "/healthz")).contains("problem"))
        // Bad inputs: a clear 400, nothing marked.
        for bad in [#"{"txid":"junk","backup":true}"#, #"{"txid":"0000abcd-1-4","backup":"yes"}"#, #"{"txid":"0000abcd-1-4","backup":1}"#, "not json"] {
            let r = try call(node, env, "POST", "/v1/2pc/commit", bad)
            XCTAssertEqual(r?.status, 400, "\(bad): \(text(r))")
        }
        XCTAssertTrue(node.machine.staleForCoordinators.isEmpty)
        let own = try call(node, env, "POST", "/v1/2pc/commit", #"{"txid":"0000abcd-1-5"}"#)
        XCTAssertEqual(own?.status, 503, text(own))
        XCTAssertEqual(node.machine.staleForCoordinators["0000abcd"]?.description, "0000abcd-1-5")
        node.stop()
        node.log.close()
    }
}
