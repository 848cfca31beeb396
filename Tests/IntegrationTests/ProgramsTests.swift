import CohortClient
import Foundation
import XCTest

/// The supervising programs end to end (debug builds), and the metrics parser they rely on.
final class ProgramsTests: XCTestCase {
    func testQuickstartKillsAndRestartsTheCoordinatorAndConservesMoney() throws {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("cohort-quickstart"), ["--duration", "4s"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stdout: \(r.stdout)\nstderr: \(r.stderr)")
        XCTAssertTrue(r.stdout.contains("total balance: 200000 before, 200000 after — unchanged"), r.stdout)
        XCTAssertTrue(r.stdout.contains("in doubt at the end: 0"), r.stdout)
        XCTAssertTrue(r.stdout.contains("coordinator killed with kill -9"), r.stdout)
        XCTAssertTrue(r.stdout.contains("coordinator restarted on the same port"), r.stdout)
        let committed = r.stdout.split(separator: "\n").first { $0.contains("committed  ") }
            .flatMap { $0.split(separator: " ").last }.flatMap { Int($0) }
        XCTAssertGreaterThan(committed ?? 0, 0, r.stdout)
    }

    func testTxbenchJSON() throws {
        let r = try runToCompletion(try binDirectory().appendingPathComponent("txbench"),
                                    ["--clients", "2", "--duration", "1s", "--warmup", "0s", "--accounts", "20", "--json"], timeoutMs: 120_000)
        XCTAssertEqual(r.status, 0, "stderr: \(r.stderr)")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertGreaterThan(object["committed"] as? Int ?? 0, 0)
        XCTAssertEqual((object["conservation"] as? [String: Any])?["ok"] as? Bool, true)
        if object["aborted"] as? Int == 0 { // aborted transfers would add messages without a commit
            // Two update branches per transfer: register, prepare, vote, commit and ack once each.
            XCTAssertEqual(object["messages_per_commit"] as? Double ?? 0, 10, accuracy: 0.01, r.stdout)
            // The coordinator forces its decision, each agent its prepared and committed records.
            XCTAssertEqual(object["forced_records_per_commit"] as? Double ?? 0, 5, accuracy: 0.01, r.stdout)
        }
        XCTAssertGreaterThan(object["syncs_per_commit"] as? Double ?? 0, 0)
        let latency = try XCTUnwrap(object["latency_ms"] as? [String: Double])
        XCTAssertLessThanOrEqual(latency["p50"]!, latency["p99"]!)
        XCTAssertLessThanOrEqual(latency["p99"]!, latency["max"]!)
    }

    func testMetricsParsing() {
        let text = """
        # HELP cohort_log_syncs_total fdatasync calls
        # TYPE cohort_log_syncs_total counter
        cohort_log_syncs_total 42
        cohort_messages_sent_total{type="prepare"} 3
        cohort_messages_sent_total{type="commit"} 2.5
        cohort_in_doubt 0

        garbage
        """
        let m = CohortAPI.parseMetrics(text)
        XCTAssertEqual(m["cohort_log_syncs_total"], 42)
        XCTAssertEqual(m["cohort_messages_sent_total{type=\"prepare\"}"], 3)
        XCTAssertEqual(m["cohort_messages_sent_total{type=\"commit\"}"], 2.5)
        XCTAssertEqual(m["cohort_in_doubt"], 0)
        XCTAssertEqual(m.count, 4)
        XCTAssertEqual(metricsDelta(["a": 1, "b": 2], ["a": 4, "c": 1]), ["a": 3, "b": -2, "c": 1])
        let l = LatencySummary((1...100).map(Double.init))
        XCTAssertEqual(l.p50, 50)
        XCTAssertEqual(l.p99, 99)
        XCTAssertEqual(l.max, 100)
    }
}
