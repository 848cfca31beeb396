import CohortClient
import Foundation
import XCTest

/// Presumed abort, counted through /metrics: what is forced and what is sent for a commit with a
/// read-only branch, and for an abort caused by a no vote.
final class PresumedAbortMetricsTests: XCTestCase {
    let forced = "cohort_log_forced_records_total"
    let prepare = "cohort_messages_sent_total{type=\"prepare\"}"
    let commit = "cohort_messages_sent_total{type=\"commit\"}"
    let abort = "cohort_messages_sent_total{type=\"abort\"}"

    func snapshot(_ api: CohortAPI, _ cluster: Cluster) throws -> [String: [String: Double]] {
        var out: [String: [String: Double]] = [:]
        for name in cluster.allNames { out[name] = try api.metrics(cluster.url(name)) }
        return out
    }

    func delta(_ before: [String: [String: Double]], _ after: [String: [String: Double]], _ name: String, _ key: String) -> Double {
        (after[name]?[key] ?? 0) - (before[name]?[key] ?? 0)
    }

    func testCommitWithTwoUpdateBranchesAndOneReadOnly() throws {
        let cluster = try startCluster(agents: 3)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b, c) = (cluster.url("a"), cluster.url("b"), cluster.url("c"))
        let before = try snapshot(api, cluster)

        let txid = try api.begin()
        _ = try api.agentWork(a, txid, [.add("x", 5)])
        _ = try api.agentWork(b, txid, [.add("y", -5)])
        let read = try api.agentWork(c, txid, [.get("z")])
        XCTAssertNil(read.values?["z"], "z was never written")
        let outcome = try api.commit(txid)
        XCTAssertEqual(outcome.outcome, "committed")
        // The second phase finishes after the reply: wait until both update branches acknowledged.
        XCTAssertTrue(try eventually { try api.transaction(txid)?.state == "committed" }, "transaction never finished")
        XCTAssertEqual(try api.kv(a, "x"), .int(5))
        XCTAssertEqual(try api.kv(b, "y"), .int(-5))
        let view = try XCTUnwrap(try api.transaction(txid))
        XCTAssertEqual(view.branches.count, 3)
        XCTAssertEqual(view.branches.first { $0.participant == "c" }?.vote, "read-only")

        let after = try snapshot(api, cluster)
        XCTAssertEqual(delta(before, after, "coordinator", forced), 1, "coordinator forces only the commit decision")
        XCTAssertEqual(delta(before, after, "a", forced), 2, "an update branch forces prepared and committed")
        XCTAssertEqual(delta(before, after, "b", forced), 2, "an update branch forces prepared and committed")
        XCTAssertEqual(delta(before, after, "c", forced), 0, "a read-only branch forces nothing")
        XCTAssertEqual(delta(before, after, "coordinator", prepare), 3)
        XCTAssertEqual(delta(before, after, "coordinator", commit), 2, "no commit to the read-only branch")
        XCTAssertEqual(delta(before, after, "coordinator", abort), 0)
        // The apply to each update branch's store is timed; the read-only branch applies nothing.
        XCTAssertGreaterThan(delta(before, after, "a", "cohort_store_apply_seconds_total"), 0)
        XCTAssertGreaterThan(delta(before, after, "b", "cohort_store_apply_seconds_total"), 0)
        XCTAssertEqual(delta(before, after, "c", "cohort_store_apply_seconds_total"), 0)
        XCTAssertNotNil(after["a"]?["cohort_store_apply_slow_total"], "the slow-apply counter is exported")
        for name in cluster.allNames {
            XCTAssertGreaterThan(delta(before, after, name, "cohort_event_loop_busy_seconds_total"), 0, name)
            XCTAssertNotNil(after[name]?["cohort_event_loop_stalls_total"], name)
            XCTAssertNotNil(after[name]?["cohort_event_loop_longest_busy_seconds"], name)
            XCTAssertNotNil(after[name]?["cohort_log_group_commit_wait_seconds_total"], name)
            XCTAssertNotNil(after[name]?["cohort_batch_queue_wait_seconds_total"], name)
        }
        // The coordinator's forced decision and the agents' prepared records were real fdatasyncs.
        for name in ["coordinator", "a", "b"] {
            XCTAssertGreaterThan(delta(before, after, name, "cohort_log_sync_seconds_total"), 0, name)
            XCTAssertGreaterThan(after[name]?["cohort_log_longest_sync_seconds"] ?? 0, 0, name)
            XCTAssertNotNil(after[name]?["cohort_log_slow_syncs_total"], name)
        }
        XCTAssertGreaterThanOrEqual(delta(before, after, "coordinator", "cohort_batch_messages_sent_total"), 4, "3 prepares and 2 commits went through the batching sender")
    }

    func testAbortAfterANoVote() throws {
        let cluster = try startCluster(agents: 3)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        let before = try snapshot(api, cluster)

        let txid = try api.begin()
        _ = try api.agentWork(a, txid, [.add("x", 7)])
        // A missing key counts as 0: taking 5 with min 0 makes b vote no.
        _ = try api.agentWork(b, txid, [.add("empty", -5, min: 0)])
        let outcome = try api.commit(txid)
        XCTAssertEqual(outcome.outcome, "aborted")
        XCTAssertTrue(try eventually { try api.transaction(txid)?.state == "aborted" })
        // The yes-voter learns the abort (nobody waits for its answer): wait until it has.
        XCTAssertTrue(try eventually { try api.branches(a).isEmpty && (try api.metrics(a)["cohort_transactions_total{outcome=\"aborted\"}"] ?? 0) >= 1 },
                      "the yes-voter never aborted: \((try? api.branches(a)).map { "\($0)" } ?? "?")")
        XCTAssertNil(try api.kv(a, "x"), "aborted work must not be visible")
        XCTAssertNil(try api.kv(b, "empty"))

        let after = try snapshot(api, cluster)
        XCTAssertEqual(delta(before, after, "coordinator", forced), 0, "presumed abort: the coordinator forces nothing for an abort")
        XCTAssertEqual(delta(before, after, "a", forced), 1, "the yes-voter forces its prepared record only")
        XCTAssertEqual(delta(before, after, "b", forced), 0, "the no-voter forces nothing")
        XCTAssertEqual(delta(before, after, "c", forced), 0)
        XCTAssertEqual(delta(before, after, "coordinator", prepare), 2)
        XCTAssertEqual(delta(before, after, "coordinator", abort), 1, "abort goes to the yes-voter only")
        XCTAssertEqual(delta(before, after, "coordinator", commit), 0)
    }
}
