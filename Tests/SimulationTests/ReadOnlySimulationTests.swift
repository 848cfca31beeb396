import XCTest
@testable import CohortSim
import CohortRuntime

/// Branches that only read (`Faults.readOnlyPercent`, session 38): before, every simulated
/// transfer wrote on every agent, so no branch ever voted read-only and the read-only paths
/// (a reader let go at prepare, a one-phase commit answered `"vote": "read-only"`, 3PC backups'
/// commits reaching readers, the restore check around them) never met the simulation's faults.
final class ReadOnlySimulationTests: XCTestCase {
    private func runSeeds(_ seeds: ClosedRange<UInt64>, _ workload: Simulation.Workload, breakMode: TestOnlyBreak = .none,
                     _ each: (Simulation.Config, Simulation.Result) -> Void) {
        for seed in seeds {
            var config = Simulation.Config(seed: seed, workload: workload)
            config.faults.readOnlyPercent = 40
            config.breakMode = breakMode
            each(config, Simulation(config: config).run())
        }
    }

    /// Every shape commits under faults and every check passes: readers only (one-phase when
    /// alone), mixed, and readers of every account whose reads add up to the money.
    func testReadOnlyBranchesCommitUnderFaults() {
        for workload in [Simulation.Workload.atomicCommit, .threePhase] {
            var readOnly = 0, mixed = 0, sums = 0
            runSeeds(1...6, workload) { config, result in
                XCTAssertNil(result.failure, "\(workload) seed \(config.seed) (\(config.faults)): \(result.failure?.message ?? "")\n" +
                             (result.failure?.trace.suffix(30).joined(separator: "\n") ?? ""))
                readOnly += result.readOnlyCommitted
                mixed += result.mixedCommitted
                sums += result.readSumsChecked
            }
            XCTAssertGreaterThan(readOnly, 0, "\(workload): no transaction of readers only committed")
            XCTAssertGreaterThan(mixed, 0, "\(workload): no transaction with a writer and readers committed")
            XCTAssertGreaterThan(sums, 0, "\(workload): no reader of every account committed")
        }
    }

    /// A seed drawing no read-only share draws nothing more: such runs are as before.
    func testTheShareIsDrawnFromTheSeedAndOftenZero() {
        let shares = (UInt64(1)...60).map { Simulation.Config(seed: $0).faults.readOnlyPercent }
        XCTAssertEqual(Set(shares), [0, 20, 40])
        let threePhase = (UInt64(1)...60).map { Simulation.Config(seed: $0, workload: .threePhase).faults.readOnlyPercent }
        XCTAssertEqual(Set(threePhase), [0, 20, 40])
        XCTAssertEqual(Simulation.Config(seed: 5).faults.readOnlyPercent, Simulation.Config(seed: 5).faults.readOnlyPercent)
    }

    /// The isolation check bites: readers that drop their shared locks once their work is
    /// answered read transfers half applied, and a committed reader of every account then
    /// reads a sum that is off.
    func testReadsWithoutTheirLocksAreCaught() {
        var caught: [String] = []
        runSeeds(1...12, .atomicCommit, breakMode: .readLocksReleasedEarly) { _, result in
            if let f = result.failure { caught.append(f.message) }
        }
        XCTAssertFalse(caught.isEmpty, "no run caught readers without their locks")
        XCTAssertTrue(caught.allSatisfy { $0.hasPrefix("isolation:") }, caught.joined(separator: "\n"))
    }
}
