import CohortHTTP
import CohortRuntime

/// A node environment a test drives by hand: tasks run when the test drains them (so a
/// durability callback can be held queued), timers fire only when the test fires them
/// (`fireTimers`), and each outgoing request waits, with its completion, for the test to answer
/// it (or never).
final class HandDrivenEnvironment: NodeEnvironment {
    var sent: [(request: HTTPClientRequest, completion: (Result<HTTPClientResponse, HTTPClientError>) -> Void)] = []
    var tasks: [() -> Void] = []
    /// Timers scheduled and neither fired nor cancelled, by the order they were set.
    private(set) var timers: [Int: (afterMs: Int64, task: () -> Void)] = [:]
    private var nextTimer = 0
    var wallMs: Int64 { 1_700_000_000_000 }
    /// Stands still unless a test moves it (a postponed checkpoint waits for it).
    var monotonicUs: UInt64 = 0
    let testOnlyBreak = TestOnlyBreak.none
    func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer {
        let id = nextTimer
        nextTimer += 1
        timers[id] = (afterMs, task)
        return NodeTimer { [weak self] in self?.timers[id] = nil }
    }
    /// The delays of the timers pending, in the order they were set.
    var pendingTimerDelaysMs: [Int64] { timers.keys.sorted().map { timers[$0]!.afterMs } }
    /// Fires (once) every pending timer set with `afterMs`, in the order they were set, then
    /// drains the tasks; how many fired.
    @discardableResult
    func fireTimers(afterMs: Int64) -> Int {
        let due = timers.keys.sorted().filter { timers[$0]!.afterMs == afterMs }
        for id in due {
            guard let timer = timers.removeValue(forKey: id) else { continue }
            timer.task()
        }
        drain()
        return due.count
    }
    func execute(_ task: @escaping () -> Void) { tasks.append(task) }
    func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        sent.append((request, completion))
    }
    func randomU64() -> UInt64 { 4 }
    func drain() {
        while !tasks.isEmpty { tasks.removeFirst()() }
    }
}
