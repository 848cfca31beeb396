import XCTest
@testable import CohortSim

/// 3PC's promise: with the coordinator gone for good, the participants (up, connected) finish
/// every prepared branch among themselves, all alike. `--protocol 3pc` runs that lose the
/// coordinator at the heal check it (docs/simulation.md, "Without the coordinator").
final class CoordinatorLostSimulationTests: XCTestCase {
    /// Seeds 11, 64 (quorum) and 50 (classic) blocked before the session-27 3PC review fixes:
    /// in 11 and 50 the backup elected was a peer with no branch (a, which never got its
    /// prepare: a phantom backup); in 64 the backup a pre-aborted, and b and c, with no branch,
    /// refused its pre-abort, so no abort quorum ever formed. 1 and 7 are a classic and a
    /// quorum seed that passed before too. 772 (classic) blocked after those fixes: a recovered
    /// branch whose peers never had the transaction answered `unknown`, no word, and it waited
    /// for ever; now it asks them to pre-abort, and they promise never to vote yes.
    func testParticipantsFinishEveryBranchWithoutTheCoordinator() {
        var failures: [String] = []
        var undecided: [UInt64: Int] = [:]
        var terminations: Set<String> = []
        for seed: UInt64 in [1, 7, 11, 50, 64, 772] {
            var config = Simulation.Config(seed: seed, workload: .threePhase)
            config.faults.coordinatorLost = true
            XCTAssertTrue(config.faults.description.hasSuffix(" coordinator-lost") || config.faults.description.contains(" coordinator-lost "),
                          config.faults.description)
            terminations.insert(config.faults.protocolName)
            let result = Simulation(config: config).run()
            undecided[seed] = result.undecidedAtCoordinatorLoss
            if let f = result.failure { failures.append("seed \(seed): \(f.message)\n" + f.trace.suffix(20).joined(separator: "\n")) }
        }
        XCTAssertEqual(failures, [])
        XCTAssertEqual(terminations, ["3pc-quorum", "3pc-classic"])
        // Every seed left branches for the participants to finish alone, or passing proves little.
        XCTAssertTrue(undecided.values.allSatisfy { $0 > 0 }, "\(undecided)")
    }

    /// A third of the 3PC seeds lose the coordinator on their own; 2PC and TCC runs never do.
    func testTheSeedDrawsWhichRunsLoseTheCoordinator() {
        let lost = (UInt64(1)...60).filter { Simulation.Config(seed: $0, workload: .threePhase).faults.coordinatorLost }
        XCTAssertGreaterThan(lost.count, 10)
        XCTAssertLessThan(lost.count, 30)
        XCTAssertFalse((UInt64(1)...60).contains { Simulation.Config(seed: $0).faults.coordinatorLost })
        XCTAssertFalse((UInt64(1)...20).contains { Simulation.Config(seed: $0, workload: .tcc).faults.coordinatorLost })
    }

    func testTheFlagNeedsThreePhase() {
        for bad in [["--coordinator-lost"], ["--protocol", "2pc", "--coordinator-lost"], ["--protocol", "tcc", "--coordinator-lost"],
                    ["--protocol", "3pc", "--coordinator-lost=yes"]] {
            var out: [String] = [], errors: [String] = []
            XCTAssertEqual(CohortSimCommand.run(arguments: bad, errorOutput: { errors.append($0) }) { out.append($0) }, 2, "\(bad)")
            XCTAssertEqual(out, [])
            XCTAssertTrue(errors.first?.contains("--coordinator-lost") ?? false, "\(errors)")
        }
        var out: [String] = []
        XCTAssertEqual(CohortSimCommand.run(arguments: ["--protocol", "3pc", "--coordinator-lost", "--seed", "2", "--runs", "1"]) { out.append($0) }, 0,
                       out.joined(separator: "\n"))
        XCTAssertTrue(out.contains { $0.contains("1 lost the coordinator at the heal") }, out.joined(separator: "\n"))
    }
}
