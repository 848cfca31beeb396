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

    func testClocks() {
        let a = SystemClock.monotonicMs()
        usleep(20_000)
        XCTAssertGreaterThanOrEqual(SystemClock.monotonicMs() - a, 19)
        XCTAssertGreaterThan(SystemClock.wallMs(), 1_600_000_000_000)
        XCTAssertNotEqual(ProcessEnv.randomU64(), ProcessEnv.randomU64())
        XCTAssertGreaterThan(ProcessEnv.pid, 0)
    }
}
