import CohortCore
@testable import CohortSim
import XCTest

/// Half the simulation's seeds keep only 8 finished transactions at the coordinator, and its
/// clients resend a commit left without an answer. Most transactions are then forgotten long
/// before the final check, which judges each one the ledger of forgotten outcomes still holds by
/// that ledger, against what the participants applied (2PC/3PC) or what every TCC service saw
/// and the client was told.
final class ForgottenOutcomeSimulationTests: XCTestCase {
    /// The first `count` seeds of `workload` among 1-60 that keep 8 finished transactions.
    func smallMemorySeeds(_ workload: Simulation.Workload, count: Int) throws -> [UInt64] {
        let seeds = (1...60).map(UInt64.init).filter { Simulation.Config(seed: $0, workload: workload).faults.finishedKept == 8 }.prefix(count)
        XCTAssertEqual(seeds.count, count, "too few \(workload) seeds among 1-60 keep a small memory of finished transactions")
        return Array(seeds)
    }

    func testForgottenTransactionsAreJudgedByTheLedgerAndItMatchesTheParticipants() throws {
        for workload in [Simulation.Workload.atomicCommit, .threePhase, .tcc] {
            var checked = 0
            // Several seeds: one with many crashes and few commits loses most of its ledger
            // (aborts leave no record, and checkpoints are rare when little is logged).
            for seed in try smallMemorySeeds(workload, count: 4) {
                var config = Simulation.Config(seed: seed, workload: workload)
                // A 3PC seed that loses its coordinator at the heal restarts it 55 s later from
                // its log: the transactions it rebuilds are known again, not forgotten, so the
                // ledger judges none of them (seeds 2 and 4: 5 each kept, 0 lost).
                config.faults.coordinatorLost = false
                // The ledger holds transactions that wrote: these seeds were chosen before
                // transactions had read-only branches (session 38), and the 3PC ones commit
                // little; with readers their handful of forgotten writers was gone (0 judged).
                config.faults.readOnlyPercent = 0
                let result = Simulation(config: config).run()
                XCTAssertNil(result.failure, "\(workload) seed \(seed): \(result.failure?.message ?? "")")
                checked += result.forgottenOutcomesChecked
            }
            XCTAssertGreaterThan(checked, 5, "\(workload): the ledger was hardly consulted")
        }
    }

    func testWithoutTheLedgerNothingIsJudgedByIt() throws {
        let seed = try smallMemorySeeds(.atomicCommit, count: 2)[1]
        var config = Simulation.Config(seed: seed, workload: .atomicCommit)
        config.forgottenOutcomesKept = 0
        let result = Simulation(config: config).run()
        XCTAssertNil(result.failure, "seed \(seed): \(result.failure?.message ?? "")")
        XCTAssertEqual(result.forgottenOutcomesChecked, 0)
    }
}
