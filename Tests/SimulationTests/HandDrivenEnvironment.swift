import CohortHTTP
import CohortRuntime

/// A node environment a test drives by hand: tasks run when the test drains them (so a
/// durability callback can be held queued), timers never fire, and each outgoing request waits,
/// with its completion, for the test to answer it (or never).
final class HandDrivenEnvironment: NodeEnvironment {
    var sent: [(request: HTTPClientRequest, completion: (Result<HTTPClientResponse, HTTPClientError>) -> Void)] = []
    var tasks: [() -> Void] = []
    var wallMs: Int64 { 1_700_000_000_000 }
    var monotonicUs: UInt64 { 0 }
    let testOnlyBreak = TestOnlyBreak.none
    func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer { NodeTimer {} }
    func execute(_ task: @escaping () -> Void) { tasks.append(task) }
    func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        sent.append((request, completion))
    }
    func randomU64() -> UInt64 { 4 }
    func drain() {
        while !tasks.isEmpty { tasks.removeFirst()() }
    }
}
