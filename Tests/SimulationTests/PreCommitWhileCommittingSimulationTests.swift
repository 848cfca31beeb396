import XCTest
@testable import CohortSim

/// `txscenario simulate --protocol 3pc --seed 310620` (a sweep of session 31, quorum
/// termination with duplicates and failing fsyncs, coordinator-lost): quorum 3PC committed on
/// the quorum's acknowledgement and sent the commit to b while b's own pre-committed record was
/// still being written; a duplicate of the coordinator's pre-commit then reached b while its
/// commit record was written, and b acknowledged it at once: "durability: b sent pre-record ack
/// ... before its record (lsn 187) was durable". It now waits for the commit record
/// (`PreCommitWhileCommittingTests` has the schedule by hand).
final class PreCommitWhileCommittingSimulationTests: XCTestCase {
    func testSeed310620KeepsEveryPreCommitAcknowledgementBehindItsRecord() {
        let config = Simulation.Config(seed: 310620, workload: .threePhase)
        XCTAssertEqual(config.faults.protocolName, "3pc-quorum", "the seed no longer draws the fault mix that found it: \(config.faults.description)")
        let result = Simulation(config: config).run()
        XCTAssertNil(result.failure, "\(result.failure?.message ?? "")\n" + (result.failure?.trace.suffix(20).joined(separator: "\n") ?? ""))
    }
}
