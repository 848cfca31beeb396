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
        // As `startProcess` does after a restart: new names grow the dictionary.
        let writer = Thread {
            for i in 0..<rounds {
                run.setPort("p\(i % 64)", 10_000 + i)
            }
            done.signal()
        }
        writer.start()
        for i in 0..<rounds { _ = run.url("p\(i % 64)") }
        done.wait()
        XCTAssertEqual(run.url("p63"), "http://127.0.0.1:\(10_000 + rounds - 1)")
        XCTAssertEqual(run.url("nobody"), "http://127.0.0.1:0")
    }

    /// `checkOutbox` builds the producer's URL while it holds `lock`: a first fix that read
    /// `ports` under `lock` (NSLock, not recursive) hung txscenario there for good.
    func testURLWhileHoldingTheRunLock() throws {
        let scenario = try Scenario.parse(Data(#"""
        {"name": "ports-lock", "topology": {"agents": 2},
         "workload": {"transfers": {"clients": 1, "duration": "1s"}}, "checks": ["atomicity"]}
        """#.utf8), file: "inline-ports-lock.json")
        let run = ScenarioRun(scenario: scenario, options: ScenarioRunner.Options(binDirectory: URL(fileURLWithPath: "/nonexistent")),
                              progress: { _ in })
        run.setPort("producer", 4321)
        let finished = DispatchSemaphore(value: 0)
        let box = URLBox()
        // On a thread of its own, so a deadlock fails this test instead of hanging the suite.
        Thread {
            run.lock.lock()
            box.value = run.url("producer")
            run.lock.unlock()
            finished.signal()
        }.start()
        XCTAssertEqual(finished.wait(timeout: .now() + 30), .success, "url deadlocked under the run's lock")
        XCTAssertEqual(box.value, "http://127.0.0.1:4321")
    }
}

private final class URLBox: @unchecked Sendable {
    var value = ""
}
