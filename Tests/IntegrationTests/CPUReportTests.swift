import CohortClient
import Foundation
import XCTest

/// Every server exports `process_cpu_seconds_total`, and txbench turns it into CPU per committed
/// transaction for each process, for the servers together, and for itself.
final class CPUReportTests: XCTestCase {
    func testTxbenchReportsCPUPerCommit() throws {
        let cluster = try startCluster()
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        var before: [String: Double] = [:]
        for url in [cluster.coordinatorURL] + cluster.agentURLs {
            let cpu = try XCTUnwrap(try api.metrics(url)["process_cpu_seconds_total"], "\(url) exports no process_cpu_seconds_total")
            XCTAssertGreaterThan(cpu, 0, url)
            before[url] = cpu
        }
        let object = try runTxbenchJSON(cluster, clients: 2, transfers: 200)
        for url in [cluster.coordinatorURL] + cluster.agentURLs {
            XCTAssertGreaterThan(try XCTUnwrap(try api.metrics(url)["process_cpu_seconds_total"]), before[url]!, "\(url): CPU did not grow")
        }
        let processes = try XCTUnwrap(object["per_process"] as? [[String: Any]], "\(object)")
        XCTAssertEqual(processes.count, 3, "\(object)")
        var sum = 0.0
        for p in processes {
            let cpu = try XCTUnwrap(p["cpu_us_per_commit"] as? Double, "\(p)")
            // A transfer costs tens to hundreds of microseconds per process, never nothing and
            // never a second.
            XCTAssertGreaterThan(cpu, 1, "\(p)")
            XCTAssertLessThan(cpu, 1_000_000, "\(p)")
            sum += cpu
        }
        let total = try XCTUnwrap(object["cpu_us_per_commit"] as? Double, "\(object)")
        XCTAssertEqual(total, sum, accuracy: sum * 0.001)
        XCTAssertGreaterThan(try XCTUnwrap(object["load_generator_cpu_us_per_commit"] as? Double, "\(object)"), 1)
    }
}
