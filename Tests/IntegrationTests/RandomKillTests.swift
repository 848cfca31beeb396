import CohortClient
import Foundation
import XCTest

/// Transfers for ~10 s while the coordinator and the agents are killed -9 at random moments and
/// restarted; afterwards the money is conserved, nothing is unfinished or in doubt, and transfers
/// still commit.
final class RandomKillTests: XCTestCase {
    func testRandomKill9DuringTransfers() throws {
        let cluster = try startCluster(agents: 3)
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 30
        config.initialBalance = 100
        config.maxAmount = 20
        config.transactionTimeoutMs = 3_000
        config.connectTimeoutMs = 500
        config.requestTimeoutMs = 5_000
        let workload = TransferWorkload(config: config)
        try workload.setup()

        let done = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var report: TransferWorkload.Report? }
        let box = Box()
        Thread {
            box.report = workload.run(clients: 6, durationMs: 10_000)
            done.signal()
        }.start()

        var rng = SystemRandomNumberGenerator()
        let start = Date()
        var kills: [String] = []
        // Everyone is killed at least once, in a random order, then more at random.
        var order = cluster.allNames.shuffled(using: &rng)
        while Date().timeIntervalSince(start) < 8.5 {
            Thread.sleep(forTimeInterval: Double.random(in: 0.3...1.2, using: &rng))
            let victim = order.isEmpty ? cluster.allNames.randomElement(using: &rng)! : order.removeFirst()
            cluster.kill9(victim)
            kills.append(victim + "@" + String(format: "%.1fs", Date().timeIntervalSince(start)))
            Thread.sleep(forTimeInterval: Double.random(in: 0.05...0.8, using: &rng))
            try cluster.restart(victim)
        }
        done.wait()
        let report = try XCTUnwrap(box.report)
        print("random kill -9: \(kills.joined(separator: " ")); committed \(report.committed), aborted \(report.aborted), unknown \(report.unknown)")
        XCTAssertGreaterThanOrEqual(kills.count, cluster.allNames.count)
        XCTAssertGreaterThan(report.committed, 0)
        for name in cluster.allNames { XCTAssertTrue(cluster.isRunning(name), "\(name) is not running") }

        try assertRecovered(workload, cluster, context: "after random kills")

        let after = workload.run(clients: 3, count: 30)
        XCTAssertGreaterThan(after.committed, 0, "no transfer committed after the last restart: \(after.abortReasons)")
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), workload.unsettled())
        XCTAssertEqual(try workload.balanceMismatches(), [])
        XCTAssertTrue(try workload.checkConservation().ok)
    }
}
