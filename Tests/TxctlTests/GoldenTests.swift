import CohortCore
@testable import CohortCtl
import Foundation
import XCTest

/// Rendering of fixed values compared with files in Golden/. `UPDATE_GOLDEN=1 swift test
/// --filter TxctlTests.GoldenTests` rewrites them; review the diff before committing.
final class GoldenTests: XCTestCase {
    // 2026-11-23T13:05:00.000Z
    static let now: Int64 = Clock.parseISO8601("2026-11-23T13:05:00.000Z")!

    static let committing = TransactionView(
        txid: "a58aaf0c-1a208a3ee86-1", protocol: "2pc", state: "committing", outcome: "committed", reason: nil,
        createdAt: "2026-11-23T13:01:48.000Z", finishedAt: nil, timeoutMs: 10_000,
        branches: [
            .init(participant: "a", url: "http://127.0.0.1:7001", state: "committed", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil, history: []),
            .init(participant: "b", url: "http://127.0.0.1:7002", state: "commit-sent", vote: "yes", attempts: 3,
                  lastError: "connect failed: Connection refused", nextRetryAt: "2026-11-23T13:05:28.000Z",
                  history: [.init(at: "2026-11-23T13:01:49.000Z", error: "connection closed before a complete response"),
                            .init(at: "2026-11-23T13:01:50.000Z", error: "connect failed: Connection refused")]),
        ],
        events: [
            .init(at: "2026-11-23T13:01:48.000Z", event: "begun", participant: nil, detail: "timeout 10000ms"),
            .init(at: "2026-11-23T13:01:48.500Z", event: "decided", participant: nil, detail: "commit (durable)"),
            .init(at: "2026-11-23T13:01:50.000Z", event: "parked", participant: "b", detail: "retry budget spent"),
        ],
        parked: true, audit: [])

    static let forced = TransactionView(
        txid: "a58aaf0c-1a208a3ee86-2", protocol: "2pc", state: "committed", outcome: "committed", reason: nil,
        createdAt: "2026-11-23T12:00:00.000Z", finishedAt: "2026-11-23T13:00:00.000Z", timeoutMs: 10_000,
        branches: [
            .init(participant: "a", url: "http://127.0.0.1:7001", state: "committed", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil),
            .init(participant: "b", url: "http://127.0.0.1:7002", state: "resolved-by-operator", vote: "yes", attempts: 12, lastError: "connect failed: Connection refused", nextRetryAt: nil),
        ],
        events: [.init(at: "2026-11-23T13:00:00.000Z", event: "forced", participant: nil, detail: "force-commit by ops@host: disk replaced")],
        parked: false,
        audit: [.init(at: "2026-11-23T13:00:00.000Z", operator: "ops@host", action: "force-commit", reason: "disk replaced",
                      detail: "stop waiting for b (recorded as resolved by operator)")])

    static let mixed = TransactionView(
        txid: "2b6a4173-1a208a4656c-1", protocol: "2pc", state: "heuristic-mixed", outcome: "aborted",
        reason: "no record at the coordinator (presumed abort)",
        createdAt: "2026-11-23T13:04:00.000Z", finishedAt: "2026-11-23T13:04:00.000Z", timeoutMs: 0,
        branches: [.init(participant: "a", url: "", state: "aborted", vote: nil, attempts: 0, lastError: nil, nextRetryAt: nil, heuristic: "committed")],
        events: [.init(at: "2026-11-23T13:04:00.000Z", event: "heuristic-reported", participant: "a", detail: "operator at a forced committed")])

    static let stats = StatsResponse(
        byState: ["committing": 1, "parked": 1, "committed": 40, "aborted": 2],
        totals: ["committed": 41, "aborted": 2], ratesPerS: ["committed": 0.5, "aborted": 0.0333],
        open: 1, parked: 1,
        commitLatency: .init(samples: 43, p50Ms: 3.25, p95Ms: 9.5, p99Ms: 12.125, maxMs: 20),
        uptimeS: 192)

    func check(_ name: String, _ actual: String, file: StaticString = #filePath, line: UInt = #line) {
        let path = "\(packageRoot)/Tests/TxctlTests/Golden/\(name)"
        if ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] == "1" {
            try? actual.write(toFile: path, atomically: true, encoding: .utf8)
            return
        }
        guard let expected = try? String(contentsOfFile: path, encoding: .utf8) else {
            return XCTFail("missing golden file \(path); run with UPDATE_GOLDEN=1", file: file, line: line)
        }
        XCTAssertEqual(actual, expected, "golden \(name) differs", file: file, line: line)
    }

    func testListTable() {
        check("list.txt", Render.listTable([Self.mixed, Self.committing, Self.forced], nowMs: Self.now))
        XCTAssertEqual(Render.listTable([], nowMs: Self.now), "no transactions\n")
    }

    func testListJSON() {
        check("list.json", JSONOut.encode(TransactionList(transactions: [Self.committing])))
    }

    func testShow() {
        check("show-committing.txt", Render.show(Self.committing, nowMs: Self.now))
        check("show-forced.txt", Render.show(Self.forced, nowMs: Self.now))
        check("show-forced.json", JSONOut.encode(Self.forced))
        // Known only from the ledger: an abort says its reason is no longer kept.
        let forgotten = TransactionView(forgotten: TxID("2b6a4173-1a208a4656c-2")!, protocol: "3pc", state: "aborted", outcome: "aborted")
        check("show-forgotten-aborted.txt", Render.show(forgotten, nowMs: Self.now))
        let c = Self.committing
        let quorum = TransactionView(txid: c.txid, protocol: "3pc", state: c.state, outcome: c.outcome, reason: c.reason, createdAt: c.createdAt!,
                                     finishedAt: c.finishedAt, timeoutMs: c.timeoutMs!, branches: c.branches, events: c.events, termination: "quorum")
        XCTAssertTrue(Render.show(quorum, nowMs: Self.now).contains("protocol: 3pc (quorum termination)\n"), Render.show(quorum, nowMs: Self.now))
    }

    func testExplain() {
        check("explain-committing.txt", Explain.render(Explain.explain(Self.committing, nowMs: Self.now), nowMs: Self.now))
        check("explain-committing.json", JSONOut.encode(Explain.explain(Self.committing, nowMs: Self.now)))
        check("explain-forced.txt", Explain.render(Explain.explain(Self.forced, nowMs: Self.now), nowMs: Self.now))
        check("explain-mixed.txt", Explain.render(Explain.explain(Self.mixed, nowMs: Self.now), nowMs: Self.now))
        // Known only from the coordinator's ledger (no branches): the sentence built from the
        // branches lost its subject ("disagree:  the opposite, every other participant").
        let forgottenMixed = TransactionView(forgotten: TxID("2b6a4173-1a208a4656c-1")!, protocol: "2pc", state: "heuristic-mixed", outcome: "committed")
        check("explain-mixed-forgotten.txt", Explain.render(Explain.explain(forgottenMixed, nowMs: Self.now), nowMs: Self.now))
    }

    /// Forcing what already holds (a committed transaction forced to commit, kept or only in
    /// the ledger) changes nothing and writes no audit record; txctl said "recorded in the
    /// audit trail" all the same.
    func testAForceThatChangedNothingSaysSo() {
        let none = ForceResponse(txid: "a58aaf0c-1a208a3ee86-1", outcome: "committed", dryRun: false, effects: [])
        XCTAssertEqual(Render.force(none, where: "at the coordinator"),
                       "a58aaf0c-1a208a3ee86-1 is already committed at the coordinator: nothing was forced, nothing recorded.\n")
        let already = ForceResponse(txid: "a58aaf0c-1a208a3ee86-1", outcome: "committed", dryRun: false, effects: ["nothing to do: a58aaf0c-1a208a3ee86-1 is already committed"])
        XCTAssertEqual(Render.force(already, where: "at the coordinator"), "a58aaf0c-1a208a3ee86-1 is already committed at the coordinator: nothing was forced.\n",
                       "no claim of an audit record that was not written")
        let some = ForceResponse(txid: "a58aaf0c-1a208a3ee86-1", outcome: "committed", dryRun: false, effects: ["stop re-sending commit to b"])
        XCTAssertTrue(Render.force(some, where: "at the coordinator").hasPrefix("forced a58aaf0c-1a208a3ee86-1 to committed at the coordinator; recorded in the audit trail. It did:\n"))
    }

    /// A sink that keeps failing is the first thing `outbox list` says.
    func testOutboxListSaysTheSinkIsUnavailable() {
        let l = Txctl.OutboxList(source: "orders", pending: 70, dead: 0, leaseHeld: true, oldestPendingAgeMs: 35_000,
                                 sinkUnavailable: OutboxSinkTrouble(name: "http://127.0.0.1:7201/v1/inbox", failedCalls: 19, failingForMs: 34_000,
                                                                    lastError: "POST http://127.0.0.1:7201/v1/inbox: connect failed"),
                                 messages: [])
        let text = Render.outboxList(l, dead: false, nowMs: Self.now)
        XCTAssertTrue(text.contains("SINK UNAVAILABLE: http://127.0.0.1:7201/v1/inbox has failed its last 19 calls, for 34s: POST http://127.0.0.1:7201/v1/inbox: connect failed"), text)
        var fine = l
        fine.sinkUnavailable = nil
        XCTAssertFalse(Render.outboxList(fine, dead: false, nowMs: Self.now).contains("SINK"))
    }

    /// The dead-letter list ends with the follow-up commands for the outbox the operator named,
    /// ready to paste; it printed a literal "URL" (a docs audit, session 29).
    func testDeadLettersNameTheOutboxInTheirFollowUp() {
        let m = OutboxMessageView(id: 7, messageID: "m-7", topic: "stock", key: "apple", state: "dead", attempts: 5,
                                  createdMs: Self.now - 60_000, lastError: "HTTP 422: no such sku", deadMs: Self.now - 1_000, payloadBytes: 40)
        let l = Txctl.OutboxList(source: "orders", pending: 0, dead: 1, leaseHeld: true, oldestPendingAgeMs: nil,
                                 sinkUnavailable: nil, messages: [m])
        let text = Render.outboxList(l, dead: true, nowMs: Self.now, url: "http://127.0.0.1:7202")
        XCTAssertTrue(text.contains("replay one with: txctl outbox http://127.0.0.1:7202 replay ID"), text)
        XCTAssertTrue(text.contains("txctl outbox http://127.0.0.1:7202 discard ID --reason"), text)
    }

    func testExplainOffersOnlyAllowedForces() {
        let e = Explain.explain(Self.committing, nowMs: Self.now)
        XCTAssertFalse(e.finished)
        XCTAssertEqual(e.blocking.map(\.participant), ["b"])
        XCTAssertTrue(e.actions.contains { $0.contains("txctl commit a58aaf0c-1a208a3ee86-1 --force --reason") })
        XCTAssertFalse(e.actions.contains { $0.contains("txctl abort") }, "abort contradicts the durable decision")
        XCTAssertTrue(e.actions.contains { $0.contains("txctl retry a58aaf0c-1a208a3ee86-1") })
        let m = Explain.explain(Self.mixed, nowMs: Self.now)
        XCTAssertTrue(m.finished)
        XCTAssertTrue(m.actions.contains { $0.contains("repair the data by hand at a") })
        XCTAssertFalse(m.actions.contains { $0.contains("--force") })
    }

    /// A 3PC transaction the coordinator stopped deciding itself is explained with the reason its
    /// timeline gives (session 31: a pre-commit still inside the coordinator at the pre-commit
    /// timeout), not as a restart or a participant's termination protocol.
    func testExplainTerminatingSaysWhyFromTheTimeline() {
        let why = "b did not acknowledge the pre-commit: the pre-commit never left this coordinator: it was withdrawn unsent at the pre-commit timeout (2000 ms), while still queued in this process behind 4 exchange(s) in flight to the peer"
        let view = TransactionView(txid: "a58aaf0c-1a208a3ee86-3", protocol: "3pc", state: "terminating", outcome: nil, reason: nil,
                                   createdAt: "2026-11-23T13:04:00.000Z", finishedAt: nil, timeoutMs: 10_000,
                                   branches: [.init(participant: "a", url: "http://127.0.0.1:7001", state: "pre-committed", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil),
                                              .init(participant: "b", url: "http://127.0.0.1:7002", state: "pre-commit-sent", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil)],
                                   events: [.init(at: "2026-11-23T13:04:02.000Z", event: "terminating", participant: nil, detail: why)], parked: false, audit: [])
        let e = Explain.explain(view, nowMs: Self.now)
        XCTAssertTrue(e.summary.contains("(terminating): " + why), e.summary)
        XCTAssertFalse(e.summary.contains("it restarted after its pre-commit"), e.summary)
    }

    /// The 3PC states past pre-commit were explained as "in state terminating, which this
    /// txctl does not know": now each says what it waits for, and offers no forced decision
    /// (the coordinator refuses them there).
    func testExplainThreePhaseStates() {
        func view(_ state: String, _ b: String) -> TransactionView {
            TransactionView(txid: "a58aaf0c-1a208a3ee86-3", protocol: "3pc", state: state, outcome: nil, reason: nil,
                            createdAt: "2026-11-23T13:04:00.000Z", finishedAt: nil, timeoutMs: 10_000,
                            branches: [.init(participant: "a", url: "http://127.0.0.1:7001", state: "pre-committed", vote: "yes", attempts: 1, lastError: nil, nextRetryAt: nil),
                                       .init(participant: "b", url: "http://127.0.0.1:7002", state: b, vote: "yes", attempts: 2,
                                             lastError: "connect failed: Connection refused", nextRetryAt: nil)],
                            events: [], parked: false, audit: [])
        }
        let pre = Explain.explain(view("pre-committing", "pre-commit-sent"), nowMs: Self.now)
        XCTAssertTrue(pre.summary.contains("pre-commit is durable") && pre.summary.contains("b (pre-commit-sent"), pre.summary)
        XCTAssertEqual(pre.blocking.map(\.participant), ["b"])
        let term = Explain.explain(view("terminating", "pre-commit-sent"), nowMs: Self.now)
        XCTAssertTrue(term.summary.contains("no longer decides (terminating)"), term.summary)
        XCTAssertEqual(term.blocking.map(\.participant), ["a", "b"])
        for e in [pre, term] {
            XCTAssertFalse(e.summary.contains("does not know"), e.summary)
        }
        XCTAssertFalse(pre.actions.contains { $0.contains("--force") }, "\(pre.actions)")
        // A force at a terminating coordinator is accepted only when every participant has no
        // branch left (session 27); explain offers it for that case alone.
        XCTAssertEqual(term.actions.filter { $0.contains("--force") }.count, 1, "\(term.actions)")
        XCTAssertTrue(term.actions.contains { $0.contains("--force") && $0.contains("no branch left") }, "\(term.actions)")
        XCTAssertTrue(term.actions.contains { $0.contains("txctl agent URL show a58aaf0c-1a208a3ee86-3") })
    }

    func testStats() {
        check("stats.txt", Render.stats(Self.stats))
        check("stats.json", JSONOut.encode(Self.stats))
    }

    func testWatchFrame() {
        check("watch.txt", Watch.frame(url: "http://127.0.0.1:7000", stats: Self.stats, unfinished: [Self.committing],
                                       error: nil, nowMs: Self.now, intervalMs: 1000))
    }

    func testForceAndAgentRendering() {
        let r = ForceResponse(txid: "a58aaf0c-1a208a3ee86-1", outcome: "committed", dryRun: true,
                              effects: ["stop waiting for b (recorded as resolved by operator)", "end the transaction as committed"])
        check("force-dry-run.txt", Render.force(r, where: "at the coordinator"))
        check("force.json", JSONOut.encode(r))
        let held: [BranchKey] = [.init(key: "acct-1", lock: "exclusive", ops: ["add"]), .init(key: "rate", lock: "shared", ops: ["get"]),
                                 .init(key: "note x", lock: "exclusive", ops: nil)]
        let l = BranchList(branches: [.init(txid: "2b6a4173-1a208a4656c-1", state: "prepared", coordinator: "http://127.0.0.1:7000", keys: held, keysTotal: 11),
                                      .init(txid: "2b6a4173-1a208a4656c-2", state: "active", coordinator: "http://127.0.0.1:7000")])
        check("agent-list.txt", Render.branchList(l))
        check("agent-list.json", JSONOut.encode(l))
        let byKey = BranchList(branches: [.init(txid: "2b6a4173-1a208a4656c-1", state: "prepared", coordinator: "http://127.0.0.1:7000", keys: held, keysTotal: 3)],
                               key: "acct-1", waiters: ["2b6a4173-1a208a4656c-7"])
        check("agent-list-key.txt", Render.branchList(byKey))
        let forced = ForceResponse(txid: "2b6a4173-1a208a4656c-1", outcome: "aborted", dryRun: false,
                                   effects: ["branch 2b6a4173-1a208a4656c-1 aborted by operator ops@host (heuristic); still asking the coordinator"],
                                   keys: held, keysTotal: 3)
        check("agent-force.txt", Render.force(forced, where: "at participant http://127.0.0.1:7001", recorded: "recorded durably at the participant as a heuristic decision"))
        check("agent-force.json", JSONOut.encode(forced))
        let d = BranchDetail(txid: "2b6a4173-1a208a4656c-1", state: "heuristic-committed", coordinator: "http://127.0.0.1:7000",
                             writeSetBytes: 22, inquiries: 4, lastInquiryError: "connect failed: Connection refused",
                             heuristic: .init(outcome: "committed", reason: "coordinator lost", operator: "ops@host", at: "2026-11-23T13:04:00.000Z"))
        check("agent-show.txt", Render.branchDetail(d))
        let p = BranchDetail(txid: "2b6a4173-1a208a4656c-1", state: "prepared", coordinator: "http://127.0.0.1:7000",
                             writeSetBytes: 40, inquiries: 12, lastInquiryError: "connect failed: Connection refused", heuristic: nil, keys: held, keysTotal: 3)
        check("agent-show-keys.txt", Render.branchDetail(p))
        check("agent-show.json", JSONOut.encode(d))
    }

    func testHelpers() {
        XCTAssertEqual(Clock.parseISO8601("1970-01-01T00:00:01.500Z"), 1500)
        XCTAssertEqual(Clock.parseISO8601(TimeFormat.iso8601(ms: 1_795_000_123_456)), 1_795_000_123_456)
        XCTAssertNil(Clock.parseISO8601("yesterday"))
        XCTAssertEqual(Render.formatNumber(0.5), "0.5")
        XCTAssertEqual(Render.formatNumber(12.125), "12.13")
        XCTAssertEqual(Render.formatNumber(3), "3")
        XCTAssertEqual(JSONOut.encode(["a": [Int]()]), "{\n  \"a\": []\n}\n")
        XCTAssertEqual(JSONOut.encode(["k": "a,b:{c}"]), "{\n  \"k\": \"a,b:{c}\"\n}\n")
    }
}
