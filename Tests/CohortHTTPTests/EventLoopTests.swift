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

    func testPassObserversBracketEveryTaskAndTimer() throws {
        let loop = try EventLoop()
        let lock = NSLock()
        var steps: [String] = []
        func note(_ step: String) { lock.withLock { steps.append(step) } }
        loop.observePasses(start: { note("start") }, end: { note("end") })
        loop.startThread()
        defer { loop.stopAndJoin() }
        let done = DispatchSemaphore(value: 0)
        loop.execute {
            note("task")
            loop.schedule(afterMs: 20) { note("timer") }
            loop.schedule(afterMs: 40) { done.signal() }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        // Let the pass that signalled end.
        let ended = DispatchSemaphore(value: 0)
        loop.execute { ended.signal() }
        XCTAssertEqual(ended.wait(timeout: .now() + 5), .success)
        Thread.sleep(forTimeInterval: 0.05)
        let seen = lock.withLock { steps }
        for work in ["task", "timer"] {
            let i = try XCTUnwrap(seen.firstIndex(of: work))
            XCTAssertEqual(seen[..<i].last { $0 != "task" && $0 != "timer" }, "start", "\(work) runs inside a pass: \(seen)")
            XCTAssertEqual(seen[(i + 1)...].first { $0 != "task" && $0 != "timer" }, "end", "\(work)'s pass ends: \(seen)")
        }
        var open = false
        for step in seen where step == "start" || step == "end" {
            XCTAssertNotEqual(open, step == "start", "passes never nest or overlap: \(seen)")
            open = step == "start"
        }
        XCTAssertFalse(open, "the last pass ended: \(seen)")
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

    /// With `pollUs` set, a task submitted just after the loop finished the last one is found
    /// by the poll (the loop did not sleep); without it the loop always sleeps in between. Timers
    /// still fire while the loop polls.
    func testPollingFindsEventsBeforeSleeping() throws {
        func polledPasses(pollUs: Int64) throws -> UInt64 {
            let loop = try EventLoop()
            loop.pollUs = pollUs
            loop.startThread()
            defer { loop.stopAndJoin() }
            let answered = DispatchSemaphore(value: 0)
            for _ in 0..<200 {
                loop.execute { answered.signal() }
                XCTAssertEqual(answered.wait(timeout: .now() + 5), .success)
                // Let the loop finish its pass and start waiting: a task that comes while the
                // pass still runs is taken without any wait, polled or not.
                usleep(200)
            }
            let fired = DispatchSemaphore(value: 0)
            var polled: UInt64 = 0
            let startMs = SystemClock.monotonicMs()
            var firedAfterMs: Int64 = 0
            loop.execute {
                loop.schedule(afterMs: 20) {
                    firedAfterMs = SystemClock.monotonicMs() - startMs
                    polled = loop.polledPassesTotal
                    fired.signal()
                }
            }
            XCTAssertEqual(fired.wait(timeout: .now() + 5), .success)
            XCTAssertGreaterThanOrEqual(firedAfterMs, 19)
            XCTAssertLessThan(firedAfterMs, 1_000)
            return polled
        }
        XCTAssertEqual(try polledPasses(pollUs: 0), 0)
        // The test thread submits the next task 0.2 ms after the last one's answer: most of the
        // 200 must be found by a 1 ms poll (all of them on a quiet machine).
        XCTAssertGreaterThanOrEqual(try polledPasses(pollUs: 1_000), 100)
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
