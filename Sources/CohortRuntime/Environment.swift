import CohortCore
import CohortHTTP
import CohortPosix

/// Everything a node (coordinator or participant runtime) needs from the world outside its
/// state machine and log: clocks, timers, a way onto its own thread, and outgoing requests.
/// `LoopEnvironment` is the real one (epoll loop, system clock, TCP); the simulation provides
/// a virtual one, so the same node code runs in both.
public protocol NodeEnvironment: AnyObject {
    /// Wall-clock milliseconds since the Unix epoch (timestamps, transaction id epochs).
    var wallMs: Int64 { get }
    /// Monotonic microseconds (latency measurements).
    var monotonicUs: UInt64 { get }
    /// Runs `task` on the node's thread after `afterMs`.
    func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer
    /// Runs `task` on the node's thread soon; callable from any thread.
    func execute(_ task: @escaping () -> Void)
    /// Sends a request; `completion` runs on the node's thread, exactly once.
    func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void)
    /// Fails with `.withdrawn` (saying `why`, and where it waited), before returning, every request sent with
    /// `withdrawKey` `key` that has not left this process yet; how many. Node's thread.
    func withdraw(key: String, because why: String) -> Int
    func randomU64() -> UInt64
    /// White-box hook for the simulation: a node is about to let `message` about `txid` leave,
    /// and the record backing it has LSN `lsn` while the log is durable up to `durableLSN`.
    /// The real environment does nothing; the simulation fails the run if `lsn > durableLSN`.
    func checkBacked(_ message: String, txid: String, lsn: UInt64, durableLSN: UInt64)
    /// Whether `checkBacked` checks anything: a node keeps the LSNs it would report only then
    /// (their table cost every branch a few hash lookups and an allocation for nothing).
    var checksBacking: Bool { get }
    /// TEST ONLY: a deliberate bug to switch on (see `TestOnlyBreak`).
    var testOnlyBreak: TestOnlyBreak { get }
}

extension NodeEnvironment {
    /// An environment that holds no request back (the simulated network delivers or loses a
    /// request once it is sent) has nothing to withdraw.
    public func withdraw(key: String, because why: String) -> Int { 0 }
    public func checkBacked(_ message: String, txid: String, lsn: UInt64, durableLSN: UInt64) {}
    public var checksBacking: Bool { false }
}

/// A timer a node can cancel.
public final class NodeTimer {
    private let cancelAction: () -> Void
    public init(cancel: @escaping () -> Void) { cancelAction = cancel }
    public func cancel() { cancelAction() }
}

/// Where a node sends the answer to a request: an HTTP connection, or the simulated network.
public protocol ResponseSink: AnyObject {
    func send(_ response: HTTPResponse)
}

extension HTTPResponder: ResponseSink {}

/// The real environment: an epoll event loop, the system clocks, an HTTP client.
public final class LoopEnvironment: NodeEnvironment {
    public let loop: EventLoop
    public let client: HTTPClient
    public let testOnlyBreak = TestOnlyBreak.fromEnvironment()

    public init(loop: EventLoop, client: HTTPClient) {
        self.loop = loop
        self.client = client
    }

    public var wallMs: Int64 { SystemClock.wallMs() }
    public var monotonicUs: UInt64 { SystemClock.monotonicNs() / 1000 }

    public func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer {
        let handle = loop.schedule(afterMs: afterMs, task)
        let loop = self.loop
        return NodeTimer { loop.cancel(handle) }
    }

    public func execute(_ task: @escaping () -> Void) { loop.execute(task) }

    public func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        client.send(request, completion: completion)
    }

    /// Requests still waiting in the HTTP client (for a connection, a lookup, a connect).
    public func withdraw(key: String, because why: String) -> Int { client.withdraw(key: key, because: why) }

    public func randomU64() -> UInt64 { ProcessEnv.randomU64() }
}
