import CohortClient
import Foundation
import XCTest

/// `--poll-us N` on every server: the event loop polls for N microseconds before it sleeps.
final class PollTests: XCTestCase {
    /// The flag reaches the coordinator's and the agents' loops: with it, transfers one after
    /// another find most of their messages by polling (`cohort_event_loop_polled_passes_total`).
    func testPollUsReachesTheEventLoops() throws {
        let cluster = try startCluster(coordinatorArguments: ["--poll-us", "1000"], agentArguments: ["--poll-us", "1000"])
        _ = try runTxbenchJSON(cluster, clients: 1, transfers: 50)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        for url in [cluster.coordinatorURL] + cluster.agentURLs {
            let metrics = try api.metrics(url)
            let value = try XCTUnwrap(metrics["cohort_event_loop_polled_passes_total"], "\(url): no polled-passes counter")
            XCTAssertGreaterThan(value, 25, "\(url) found few events by polling")
        }
    }

    func testPollUsOutOfRangeIsAUsageError() throws {
        let dir = NSTemporaryDirectory() + "poll-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let servers: [(String, [String])] = [
            ("cohortd", ["--data", dir + "/c", "--port", "0"]),
            ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", "http://127.0.0.1:1"]),
            ("inventory-service", ["--data", dir + "/i", "--port", "0", "--coordinator", "http://127.0.0.1:1"]),
        ]
        for (program, args) in servers {
            for value in ["-1", "1001", "fast"] {
                let r = try runToCompletion(try binDirectory().appendingPathComponent(program), args + ["--poll-us", value])
                XCTAssertEqual(r.status, 2, "\(program) --poll-us \(value): \(r.stderr)")
                XCTAssertTrue(r.stderr.hasPrefix("error:") && r.stderr.contains("--poll-us"), r.stderr)
            }
        }
    }
}
