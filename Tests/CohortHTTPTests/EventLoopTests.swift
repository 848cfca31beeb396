import XCTest
import Foundation
import CohortPosix

final class EventLoopTests: XCTestCase {
    func testTimersRunInDeadlineOrderAndCancelWorks() throws {
        let loop = try EventLoop()
        loop.startThread()
        defer { loop.stopAndJoin() }
        let done = DispatchSemaphore(value: 0)
        var order: [Int] = []
        loop.execute {
            loop.schedule(afterMs: 30) { order.append(3) }
            let cancelled = loop.schedule(afterMs: 10) { order.append(99) }
            loop.schedule(afterMs: 10) { order.append(2) }
            loop.schedule(afterMs: 0) { order.append(1) }
            loop.cancel(cancelled)
            XCTAssertFalse(cancelled.isPending)
            loop.schedule(afterMs: 50) { done.signal() }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertEqual(order, [1, 2, 3])
    }

    func testExecuteFromManyThreadsRunsOnLoopThreadInOrder() throws {
        let loop = try EventLoop()
        loop.startThread()
        defer { loop.stopAndJoin() }
        XCTAssertFalse(loop.isInLoopThread)
        let done = DispatchSemaphore(value: 0)
        var seen: [Int] = []
        var allOnLoop = true
        for i in 0..<1000 {
            loop.execute {
                allOnLoop = allOnLoop && loop.isInLoopThread
                seen.append(i)
                if i == 999 { done.signal() }
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertEqual(seen, Array(0..<1000))
        XCTAssertTrue(allOnLoop)
    }

    /// A task that blocks the loop for 30 ms counts as busy time and as a stall (over the 5 ms
    /// threshold set here); the counters are what /metrics exports.
    func testBusyTimeAndStallsAreCounted() throws {
        let loop = try EventLoop()
        loop.stallNs = 5_000_000
        loop.startThread()
        defer { loop.stopAndJoin() }
        let done = DispatchSemaphore(value: 0)
        loop.execute { usleep(30_000) }
        loop.execute { done.signal() }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        let read = DispatchSemaphore(value: 0)
        var busyNs: UInt64 = 0, stalls: UInt64 = 0, longestNs: UInt64 = 0
        // Read on the loop thread, after the pass that ran the tasks has finished.
        loop.execute {
            loop.schedule(afterMs: 1) {
                (busyNs, stalls, longestNs) = (loop.busyNsTotal, loop.stallsTotal, loop.longestBusyNs)
                read.signal()
            }
        }
        XCTAssertEqual(read.wait(timeout: .now() + 5), .success)
        XCTAssertGreaterThanOrEqual(stalls, 1)
        XCTAssertGreaterThanOrEqual(longestNs, 30_000_000)
        XCTAssertGreaterThanOrEqual(busyNs, longestNs)
    }

    func testClocks() {
        let a = SystemClock.monotonicMs()
        usleep(20_000)
        XCTAssertGreaterThanOrEqual(SystemClock.monotonicMs() - a, 19)
        XCTAssertGreaterThan(SystemClock.wallMs(), 1_600_000_000_000)
        XCTAssertNotEqual(ProcessEnv.randomU64(), ProcessEnv.randomU64())
        XCTAssertGreaterThan(ProcessEnv.pid, 0)
    }
}
