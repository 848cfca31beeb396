import CohortClient
import Foundation
import XCTest

/// The point of three-phase commit, on real processes: when the coordinator dies after every
/// participant pre-committed, 3PC participants finish on their own; under 2PC the same
/// schedule leaves them in doubt until the coordinator returns.
final class ThreePhaseTests: XCTestCase {
    /// One transfer whose commit makes the coordinator exit at `point`; returns the workload.
    func transferWithCoordinatorCrash(_ cluster: Cluster, protocol commitProtocol: String) throws -> TransferWorkload {
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 4
        config.initialBalance = 100
        config.commitProtocol = commitProtocol
        config.requestTimeoutMs = 3_000
        let workload = TransferWorkload(config: config)
        try workload.setup()
        _ = workload.run(clients: 1, durationMs: 4_000, count: 1)
        XCTAssertNotNil(cluster.process(Cluster.coordinatorName)?.waitForExit(timeoutMs: 10_000), "the coordinator reached its crash point")
        return workload
    }

    func testThreePhaseParticipantsCommitWithoutTheCoordinator() throws {
        // The setup transaction commits before the crash point is armed: start without it,
        // then restart the coordinator armed.
        let cluster = try startCluster(agents: 2)
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 4
        config.initialBalance = 100
        config.commitProtocol = "3pc"
        let workload = TransferWorkload(config: config)
        try workload.setup()
        try cluster.restart(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": "coordinator.before-decision-logged"])
        _ = workload.run(clients: 1, durationMs: 4_000, count: 1)
        XCTAssertNotNil(cluster.process(Cluster.coordinatorName)?.waitForExit(timeoutMs: 10_000), "the coordinator died after every pre-commit")
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        // Coordinator down for good: the participants terminate on their own.
        let finished = eventually(timeoutMs: 15_000) {
            cluster.agentURLs.allSatisfy { ((try? api.inDoubtBranches($0).count) ?? 1) == 0 }
        }
        XCTAssertTrue(finished, "3PC participants did not finish without their coordinator")
        XCTAssertTrue(try workload.checkConservation().ok)
        let moved = try workload.balanceMismatches()
        XCTAssertEqual(moved.count, 2, "both legs of the transfer were committed by the participants (the workload saw no answer): \(moved)")
    }

    func testTwoPhaseParticipantsWaitForTheCoordinator() throws {
        let cluster = try startCluster(agents: 2)
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 4
        config.initialBalance = 100
        let workload = TransferWorkload(config: config)
        try workload.setup()
        try cluster.restart(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": "coordinator.after-decision-logged"])
        _ = workload.run(clients: 1, durationMs: 4_000, count: 1)
        XCTAssertNotNil(cluster.process(Cluster.coordinatorName)?.waitForExit(timeoutMs: 10_000))
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        Thread.sleep(forTimeInterval: 5)
        for url in cluster.agentURLs {
            XCTAssertEqual(try api.inDoubtBranches(url).count, 1, "2PC blocks: the branch at \(url) waits for its coordinator")
        }
        try cluster.restart(Cluster.coordinatorName, environment: [:], kill: false)
        XCTAssertTrue(eventually(timeoutMs: 15_000) {
            cluster.agentURLs.allSatisfy { ((try? api.inDoubtBranches($0).count) ?? 1) == 0 }
        }, "resolved once the coordinator is back")
        XCTAssertTrue(try workload.checkConservation().ok)
    }

    func testThreePhaseTransfersSurviveRandomKills() throws {
        let cluster = try startCluster(agents: 2)
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 20
        config.initialBalance = 100
        config.commitProtocol = "3pc"
        config.termination = "quorum"
        config.transactionTimeoutMs = 3_000
        config.connectTimeoutMs = 500
        let workload = TransferWorkload(config: config)
        try workload.setup()
        final class Box: @unchecked Sendable { var report: TransferWorkload.Report? }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        Thread { box.report = workload.run(clients: 4, durationMs: 6_000); done.signal() }.start()
        for victim in cluster.allNames.shuffled() {
            Thread.sleep(forTimeInterval: 1.2)
            cluster.kill9(victim)
            Thread.sleep(forTimeInterval: 0.3)
            try cluster.restart(victim)
        }
        done.wait()
        XCTAssertGreaterThan(box.report?.committed ?? 0, 0)
        let quiet = workload.waitQuiescent(timeoutMs: 45_000)
        XCTAssertTrue(quiet, workload.unsettled())
        let resolution = workload.resolveUnknown(timeoutMs: 20_000)
        XCTAssertEqual(resolution.unresolved, [])
        XCTAssertTrue(try workload.checkConservation().ok)
        XCTAssertEqual(try workload.balanceMismatches(), [], "each account as the committed 3PC transfers imply")
    }
}
