import CohortClient
import Foundation
import XCTest

/// Shared helpers: clusters that stop at teardown, and polling.
extension XCTestCase {
    /// A started cluster (coordinator + `agents`), stopped and removed when the test ends.
    func startCluster(agents: Int = 2, environment: [String: [String: String]] = [:],
                      coordinatorArguments: [String] = [], agentArguments: [String] = [],
                      file: StaticString = #filePath, line: UInt = #line) throws -> Cluster {
        var options = Cluster.Options()
        options.agents = agents
        options.environment = environment
        options.coordinatorArguments = coordinatorArguments
        options.agentArguments = agentArguments
        options.keepData = ProcessInfo.processInfo.environment["COHORT_KEEP_TEST_DATA"] != nil
        let cluster = try Cluster(options: options)
        addTeardownBlock { cluster.stop() }
        try cluster.start()
        return cluster
    }

    /// A cluster of two agents with x = 100 at a and y = 0 at b, committed: the cluster, a
    /// client of its coordinator, and the agents' URLs.
    func clusterWithXAndY() throws -> (Cluster, CohortAPI, String, String) {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        let setup = try api.begin()
        _ = try api.agentWork(a, setup, [.set("x", 100)])
        _ = try api.agentWork(b, setup, [.set("y", 0)])
        XCTAssertEqual(try api.commit(setup).outcome, "committed")
        XCTAssertTrue(try eventually { try api.transaction(setup)?.state == "committed" })
        return (cluster, api, a, b)
    }

    /// Polls `condition` every 20 ms until it holds or `timeoutMs` passes; its last value.
    @discardableResult
    func eventually(timeoutMs: Int = 10_000, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            if try condition() { return true }
            if Date() > deadline { return false }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }
}

func binDirectory() throws -> URL { try Cluster.findBinDirectory() }

/// `txbench --json` against a running cluster: `transfers` transfers by `clients` clients over 20
/// accounts per agent, no warm-up; the parsed report (the test fails unless txbench exits 0).
func runTxbenchJSON(_ cluster: Cluster, clients: Int, transfers: Int,
                    file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
    let r = try runToCompletion(try binDirectory().appendingPathComponent("txbench"),
                                ["--coordinator", cluster.coordinatorURL, "--agents", cluster.agentURLs.joined(separator: ","),
                                 "--clients", String(clients), "--transfers", String(transfers), "--warmup", "0s", "--accounts", "20", "--json"],
                                timeoutMs: 120_000)
    XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
    return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout, file: file, line: line)
}

/// The post-crash checks every recovery test makes: nothing unfinished or in doubt, every unknown
/// outcome resolved, the total unchanged, each account exactly as the committed transfers imply,
/// and every committed transfer shown as committed by the coordinator.
func assertRecovered(_ workload: TransferWorkload, _ cluster: Cluster, context: String,
                     file: StaticString = #filePath, line: UInt = #line) throws {
    let quiet = workload.waitQuiescent(timeoutMs: 45_000)
    XCTAssertTrue(quiet, "\(context): not quiescent: \(workload.unsettled())", file: file, line: line)
    let resolution = workload.resolveUnknown(timeoutMs: 20_000)
    XCTAssertEqual(resolution.unresolved, [], "\(context): outcomes still unknown", file: file, line: line)
    let c = try workload.checkConservation()
    XCTAssertTrue(c.ok, "\(context): total balance \(c.total), expected \(c.expected)", file: file, line: line)
    let mismatches = try workload.balanceMismatches()
    XCTAssertEqual(mismatches, [], "\(context): accounts differ from the committed transfers", file: file, line: line)
    let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
    XCTAssertEqual(try api.unfinished().count, 0, "\(context): unfinished transactions", file: file, line: line)
    for url in cluster.agentURLs {
        XCTAssertEqual(try api.inDoubtBranches(url).count, 0, "\(context): in-doubt branches at \(url)", file: file, line: line)
    }
    var notCommitted: [String] = []
    for txid in workload.committedTxids {
        let tx = try api.transaction(txid)
        if tx?.state != "committed" { notCommitted.append("\(txid): \(tx?.state ?? "unknown (404)")") }
    }
    XCTAssertEqual(notCommitted, [], "\(context): transfers reported committed but not committed at the coordinator", file: file, line: line)
}
