import CohortClient
import Foundation
import XCTest

final class CommitRideTests: XCTestCase {
    /// `cohort-agent --commit-ride-us N`: how long an interactive branch's commit record waits
    /// for the next prepare's sync before it syncs alone. One client's transfers come one after
    /// another, so at 0 every commit record syncs alone (about two syncs per transfer at each
    /// agent: the prepare's and the commit's), and at 10 ms it rides with the next transfer's
    /// prepare (about one).
    func testCommitRideSetsWhetherCommitRecordsSyncAlone() throws {
        func agentSyncsPerCommit(rideUs: Int) throws -> [Double] {
            var options = Cluster.Options()
            options.agentArguments = ["--commit-ride-us", String(rideUs)]
            let cluster = try Cluster(options: options)
            defer { cluster.stop() }
            try cluster.start()
            let object = try runTxbenchJSON(cluster, clients: 1, transfers: 60)
            let processes = try XCTUnwrap(object["per_process"] as? [[String: Any]], "\(object)")
            let agents = processes.filter { ($0["name"] as? String ?? "").hasPrefix("agent") }
            XCTAssertEqual(agents.count, 2, "\(object)")
            return agents.map { $0["syncs_per_commit"] as? Double ?? 0 }
        }
        for s in try agentSyncsPerCommit(rideUs: 0) { XCTAssertGreaterThan(s, 1.6, "commit records sync alone") }
        for s in try agentSyncsPerCommit(rideUs: 10_000) { XCTAssertLessThan(s, 1.4, "commit records ride with the next prepare") }
    }

    func testCommitRideOutOfRangeIsAUsageError() throws {
        for value in ["-1", "10001", "soon"] {
            let r = try runToCompletion(try binDirectory().appendingPathComponent("cohort-agent"),
                                        ["--name", "a", "--data", NSTemporaryDirectory() + "ride-\(UUID().uuidString.prefix(8))", "--port", "0",
                                         "--coordinator", "http://127.0.0.1:1", "--commit-ride-us", value])
            XCTAssertEqual(r.status, 2, "\(value): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("--commit-ride-us"), r.stderr)
        }
    }
}
