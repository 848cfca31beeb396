import CohortClient
import Foundation
import XCTest

/// Every crash point of the coordinator and the agent: arm it on one process, run transfers until
/// that process exits with 137, restart it without the crash point, and check that everything
/// settles with the money conserved and every branch agreeing with its transaction's outcome.
final class CrashPointTests: XCTestCase {
    /// Points every committed or aborted transfer passes through: these must be reached.
    static let mustReach: Set<String> = [
        "coordinator.before-prepare-send", "coordinator.after-prepare-send",
        "coordinator.before-decision-logged", "coordinator.after-decision-logged",
        "coordinator.after-commit-replied", "coordinator.before-commit-send", "coordinator.after-commit-send",
        "coordinator.before-abort-send", "coordinator.after-abort-send",
        "coordinator.before-end-logged", "coordinator.after-end-logged",
        "agent.before-register-send", "agent.after-register-send",
        "agent.before-prepared-logged", "agent.after-prepared-logged", "agent.after-vote-sent",
        "agent.before-commit-logged", "agent.after-commit-logged", "agent.after-commit-applied", "agent.after-ack-sent",
        "agent.before-abort-logged", "agent.after-abort-logged",
    ]

    func crashPoints(_ program: String) throws -> [String] {
        let r = try runToCompletion(try binDirectory().appendingPathComponent(program), [], environment: ["COHORT_CRASHPOINT": "list"])
        XCTAssertEqual(r.status, 0, "\(program) with COHORT_CRASHPOINT=list")
        return r.stdout.split(separator: "\n").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func testCoordinatorCrashPoints() throws {
        let points = try crashPoints("cohortd")
        XCTAssertGreaterThanOrEqual(points.count, 8)
        try runAll(points, target: Cluster.coordinatorName)
    }

    func testAgentCrashPoints() throws {
        let points = try crashPoints("cohort-agent")
        XCTAssertGreaterThanOrEqual(points.count, 8)
        try runAll(points, target: "a")
    }

    func runAll(_ points: [String], target: String) throws {
        var reached: [String] = []
        var notReached: [String] = []
        for point in points {
            let t0 = Date()
            let hit = try crashAndRecover(point: point, target: target)
            if hit { reached.append(point) } else { notReached.append(point) }
            print("  \(point): \(hit ? "reached" : "not reached"), recovered in a run of " + String(format: "%.1f s", Date().timeIntervalSince(t0)))
        }
        print("crash points reached on \(target): \(reached.count)/\(points.count): \(reached.joined(separator: " "))")
        if !notReached.isEmpty { print("crash points NOT reached on \(target): \(notReached.joined(separator: " "))") }
        for p in notReached where Self.mustReach.contains(p) {
            XCTFail("crash point \(p) was not reached by transfers")
        }
    }

    /// One run; true when the armed process exited at the point.
    func crashAndRecover(point: String, target: String) throws -> Bool {
        let cluster = try startCluster(agents: 2)
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 8
        config.initialBalance = 20
        config.maxAmount = 15 // often more than a balance: no votes and aborts happen too
        config.transactionTimeoutMs = 3_000
        config.connectTimeoutMs = 500
        config.requestTimeoutMs = 5_000
        let workload = TransferWorkload(config: config)
        try workload.setup()
        // Arm the point only now, so setup does not trip it.
        cluster.terminate(target)
        let armed = try cluster.startProcess(target, environment: ["COHORT_CRASHPOINT": point])

        final class Flag: @unchecked Sendable {
            private let lock = NSLock()
            private var value = false
            func set() { lock.lock(); value = true; lock.unlock() }
            var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
        }
        let stop = Flag()
        let done = DispatchSemaphore(value: 0)
        Thread {
            _ = workload.run(clients: 4, durationMs: 15_000, stop: { stop.isSet })
            done.signal()
        }.start()

        // Generous limits: the machine may be busy; a point that is reached usually is within 1 s.
        var status = armed.waitForExit(timeoutMs: 4_000)
        if status == nil && point.contains("inquiry") && target != Cluster.coordinatorName {
            // Agents ask for outcomes they are not told: take the coordinator away for a while.
            cluster.kill9(Cluster.coordinatorName)
            status = armed.waitForExit(timeoutMs: 3_000)
            try cluster.restart(Cluster.coordinatorName)
        }
        if status == nil { status = armed.waitForExit(timeoutMs: 3_000) }
        stop.set()
        done.wait()

        let reached = status != nil
        if let status {
            XCTAssertEqual(status, 137, "\(point): exit status")
            XCTAssertFalse(armed.wasSignalled, "\(point): the process should exit at the point, not be killed")
            try cluster.startProcess(target, environment: [:])
        }
        if !cluster.isRunning(Cluster.coordinatorName) { try cluster.restart(Cluster.coordinatorName) }
        try assertRecovered(workload, cluster, context: point)
        // And it still works.
        let after = workload.run(clients: 2, count: 6)
        XCTAssertGreaterThan(after.committed + after.aborted, 0, "\(point): no transfer completed after recovery")
        XCTAssertTrue(workload.waitQuiescent(timeoutMs: 20_000), "\(point): \(workload.unsettled())")
        XCTAssertTrue(try workload.checkConservation().ok, "\(point): conservation after more transfers")
        cluster.stop()
        return reached
    }
}
