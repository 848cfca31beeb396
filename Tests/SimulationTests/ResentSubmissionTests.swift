import CohortCore
@testable import CohortSim
import XCTest

/// The simulation's clients resend a submission left without an answer, with its request_id,
/// and half the seeds that submit keep only 8 finished transactions at the coordinator. A
/// resend then often finds its transaction forgotten: the committed-submission memory must
/// answer it, or the transfer applies twice and the balance check fails.
final class ResentSubmissionTests: XCTestCase {
    /// Seeds 2 (2PC) and 1733 (classic 3PC) apply a transfer twice with the memory off (among
    /// seeds 1-4000 so do 2PC seeds 494, 1151, 1404, ..., classic 1751, 2662 and 3899, quorum
    /// 3098 and 3995). Until session 25 seed 11 was the 3PC one; an inquiry that re-sends a
    /// waiting commit at once changed its timing, and it no longer resends into a forgotten
    /// transaction. Then 283 (classic) until session 32, whose stalls of the coordinator's
    /// sender in classic seeds (`Faults.senderStalls`) changed its timing too: no classic seed
    /// of 1-700 does it since.
    let seeds: [UInt64] = [2, 1733]

    func testResentSubmissionsPassWithTheMemory() {
        for seed in seeds {
            let config = Simulation.Config(seed: seed)
            XCTAssertEqual(config.faults.finishedKept, 8, "seed \(seed) no longer draws a small memory of finished transactions")
            XCTAssertGreaterThan(config.faults.submitPercent, 0)
            let result = Simulation(config: config).run()
            XCTAssertNil(result.failure, "seed \(seed): \(result.failure?.message ?? "")")
        }
    }

    func testWithoutTheMemoryTheBalanceCheckCatchesATransferAppliedTwice() {
        for seed in seeds {
            var config = Simulation.Config(seed: seed)
            config.committedSubmissionsKept = 0
            let result = Simulation(config: config).run()
            XCTAssertTrue(result.failure?.message.hasPrefix("balance of ") ?? false,
                          "seed \(seed): \(result.failure?.message ?? "passed"): a resend ran its work again and nothing noticed")
        }
    }
}
