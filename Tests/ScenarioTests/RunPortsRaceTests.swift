import Foundation
@testable import CohortScenario
import XCTest

/// `ScenarioRun.ports` is written by a restart (on a fault's thread) while the workload's
/// threads build URLs from it. ThreadSanitizer reported the unlocked read in `url` during
/// `Scenarios/86-outbox-random-kills.json`. This test is the sanitizer's: under
/// `swift test --sanitize=thread` it is flagged (a Swift access race in `ScenarioRun.url`) when
/// `url` reads without `lock`, and not with it; without the sanitizer it checks only the value.
final class RunPortsRaceTests: XCTestCase {
    func testURLReadsPortsUnderTheLock() throws {
        let scenario = try Scenario.parse(Data(#"""
        {"name": "ports-race", "topology": {"agents": 2},
         "workload": {"transfers": {"clients": 1, "duration": "1s"}}, "checks": ["atomicity"]}
        """#.utf8), file: "inline-ports-race.json")
        let run = ScenarioRun(scenario: scenario, options: ScenarioRunner.Options(binDirectory: URL(fileURLWithPath: "/nonexistent")),
                              progress: { _ in })
        let rounds = 64 * 32  // whole laps, so p63 is written last
        let done = DispatchSemaphore(value: 0)
        // As `startProcess` does after a restart: new names grow the dictionary, under `lock`.
        let writer = Thread {
            for i in 0..<rounds {
                run.lock.lock()
                run.ports["p\(i % 64)"] = 10_000 + i
                run.lock.unlock()
            }
            done.signal()
        }
        writer.start()
        for i in 0..<rounds { _ = run.url("p\(i % 64)") }
        done.wait()
        XCTAssertEqual(run.url("p63"), "http://127.0.0.1:\(10_000 + rounds - 1)")
        XCTAssertEqual(run.url("nobody"), "http://127.0.0.1:0")
    }
}
