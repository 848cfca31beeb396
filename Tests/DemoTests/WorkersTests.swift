@testable import CohortDemo
import Foundation
import XCTest

/// The services' blocking work runs on threads of their own: as many items run at once as
/// there are (up to the limit), however long each blocks.
final class WorkersTests: XCTestCase {
    /// Each item blocks until every other one has started. With Dispatch (what Workers used to
    /// be) only a handful ran at first on Linux and the rest waited behind them: a restarted
    /// order service's settling loops starved new orders.
    func testBlockedItemsDoNotHoldBackTheOthers() {
        let workers = Workers(maxThreads: 24)
        let n = 24
        let started = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        for _ in 0..<n {
            done.enter()
            _ = workers.run {
                started.signal()
                release.wait()
                done.leave()
            }
        }
        // One deadline for all of them (generous: they start within milliseconds). Dispatch on
        // Linux added about one thread a second for blocked work: 24 items took ~22 s.
        let deadline = DispatchTime.now() + 5
        var running = 0
        for _ in 0..<n where started.wait(timeout: deadline) == .success { running += 1 }
        XCTAssertEqual(running, n, "every blocked item runs at once")
        for _ in 0..<n { release.signal() }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
    }

    /// Past the limit, items wait for a free thread, then all run.
    func testPastTheLimitItemsWaitForAFreeThread() {
        let workers = Workers(maxThreads: 2)
        let lock = NSLock()
        var order: [Int] = []
        let gate = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        for i in 0..<2 {
            done.enter()
            _ = workers.run { gate.wait(); lock.lock(); order.append(i); lock.unlock(); done.leave() }
        }
        for i in 2..<6 {
            done.enter()
            _ = workers.run { lock.lock(); order.append(i); lock.unlock(); done.leave() }
        }
        Thread.sleep(forTimeInterval: 0.2)
        lock.lock(); XCTAssertEqual(order, [], "both threads are blocked: nothing else runs"); lock.unlock()
        gate.signal(); gate.signal()
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        lock.lock(); XCTAssertEqual(order.sorted(), Array(0..<6)); lock.unlock()
    }

    /// With every thread busy, only `waitingMax` items wait; the next is refused (the services
    /// answer 503), and once threads free up items are taken again.
    func testPastTheWaitingLimitItemsAreRefused() {
        let workers = Workers(maxThreads: 2, waitingMax: 3)
        let gate = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        var accepted: [Bool] = []
        for _ in 0..<6 {
            done.enter()
            let ok = workers.run { gate.wait(); done.leave() }
            if !ok { done.leave() }
            accepted.append(ok)
        }
        XCTAssertEqual(accepted, [true, true, true, true, true, false], "2 running, 3 waiting, the 6th refused")
        for _ in 0..<5 { gate.signal() }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        XCTAssertTrue(workers.run {}, "taken again once the queue drained")
    }
}
