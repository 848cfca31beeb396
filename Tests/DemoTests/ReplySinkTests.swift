@testable import CohortDemo
import CohortCore
import CohortHTTP
import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// The inventory's answers go to each message's own `reply_to`: an address that cannot be
/// reached must not hold up the answers to the others.
final class ReplySinkTests: XCTestCase {
    func message(_ id: Int64, replyTo: String) -> OutboxMessage {
        OutboxMessage(id: id, source: "inventory", topic: "StockReserved", key: "o\(id)", payload: "{}",
                      headers: ["reply_to": replyTo], createdMs: 0)
    }

    /// An inbox on `loop` that applies every message it gets; `received` sees each batch's ids
    /// (on the loop thread).
    func inbox(on loop: EventLoop, received: @escaping ([String]) -> Void = { _ in }) throws -> HTTPServer {
        let ready = DispatchSemaphore(value: 0)
        var server: HTTPServer?
        loop.execute {
            server = try? HTTPServer(loop: loop, host: "127.0.0.1", port: 0) { request, responder in
                let batch = try? InboxBatch(wireJSON: request.body)
                received((batch?.messages ?? []).map(\.id))
                let results = (batch?.messages ?? []).map { InboxResult(id: $0.id, status: "applied") }
                responder.send(.jsonBytes(200, InboxBatchResponse(results: results).wireJSON))
            }
            ready.signal()
        }
        ready.wait()
        return try XCTUnwrap(server)
    }

    /// `messages` delivered through `sink` on `loop`'s thread; the sink's answer (waited for up to 20 s).
    func deliver(_ messages: [OutboxMessage], through sink: ReplySink, on loop: EventLoop) -> SinkResult? {
        let done = DispatchSemaphore(value: 0)
        var got: SinkResult?
        loop.execute { sink.deliver(messages) { got = $0; done.signal() } }
        XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
        return got
    }

    func testAnUnreachableReplyToCountsAnAttemptInsteadOfStallingTheBatch() throws {
        ProcessEnv.ignoreSIGPIPE()
        let loop = try EventLoop()
        loop.startThread()
        defer { loop.stopAndJoin() }
        let server = try inbox(on: loop)
        var sink: ReplySink?
        let ready = DispatchSemaphore(value: 0)
        loop.execute {
            sink = ReplySink(loop: loop)
            ready.signal()
        }
        ready.wait()
        defer {
            let done = DispatchSemaphore(value: 0)
            loop.execute { sink?.shutdown(); server.shutdown(); done.signal() }
            done.wait()
        }
        let live = "http://127.0.0.1:\(server.port)/v1/inbox"
        let (fd, deadPort) = try TCP.listen(host: "127.0.0.1", port: 0)
        TCP.close(fd)  // nothing listens there now
        let dead = "http://127.0.0.1:\(deadPort)/v1/inbox"

        func deliver(_ messages: [OutboxMessage]) -> SinkResult? { self.deliver(messages, through: sink!, on: loop) }
        guard case .outcomes(let mixed)? = deliver([message(1, replyTo: live), message(2, replyTo: dead), message(3, replyTo: live)]) else {
            return XCTFail("a batch with one unreachable address was held back whole")
        }
        XCTAssertEqual(mixed[0], .acknowledged)
        XCTAssertEqual(mixed[2], .acknowledged)
        guard case .rejected(let why) = mixed[1] else { return XCTFail("\(mixed[1])") }
        XCTAssertTrue(why.contains("reply_to unreachable"), why)
        // Nobody reachable: the batch is unavailable, and no attempt is spent.
        guard case .unavailable? = deliver([message(4, replyTo: dead)]) else { return XCTFail("expected unavailable") }
        // Many distinct addresses: answered all the same, with at most the cached number of clients kept.
        let many = (0..<(Limits.demoReplyTargetsCachedMax + 10)).map { message(Int64(10 + $0), replyTo: live + "?n=\($0)") }
        guard case .outcomes(let all)? = deliver(many) else { return XCTFail() }
        XCTAssertEqual(all, Array(repeating: .acknowledged, count: many.count))
        let counted = DispatchSemaphore(value: 0)
        var cached = 0
        loop.execute { cached = sink!.sinks.count; counted.signal() }
        counted.wait()
        XCTAssertEqual(cached, Limits.demoReplyTargetsCachedMax, "clients kept for every address a message named")
    }

    /// `inventory-service --reply-to URL`: every answer goes there, whatever address the order
    /// named (an order service that moved to another port since the order was placed).
    func testAConfiguredReplyToOverridesTheMessagesAddress() throws {
        ProcessEnv.ignoreSIGPIPE()
        let loop = try EventLoop()
        loop.startThread()
        defer { loop.stopAndJoin() }
        var received: [String] = []
        let server = try inbox(on: loop) { received += $0 }
        let live = "http://127.0.0.1:\(server.port)/v1/inbox"
        let (fd, deadPort) = try TCP.listen(host: "127.0.0.1", port: 0)
        TCP.close(fd)  // the order service's old address: nothing listens there now
        var sink: ReplySink?
        let done = DispatchSemaphore(value: 0)
        var got: SinkResult?
        loop.execute {
            sink = ReplySink(loop: loop, replyTo: live)
            sink!.deliver([self.message(1, replyTo: "http://127.0.0.1:\(deadPort)/v1/inbox"), self.message(2, replyTo: "")]) {
                got = $0
                done.signal()
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
        defer {
            let stopped = DispatchSemaphore(value: 0)
            loop.execute { sink?.shutdown(); server.shutdown(); stopped.signal() }
            stopped.wait()
        }
        guard case .outcomes(let outcomes)? = got else { return XCTFail("\(String(describing: got))") }
        XCTAssertEqual(outcomes, [.acknowledged, .acknowledged], "both answers went to the configured address")
        XCTAssertEqual(received.count, 2)
    }
    /// An address that refuses its part of a batch whole (400 for two messages) makes the whole
    /// batch `refusedWhole`: the relay sends it again in halves, nothing counted, until the
    /// message at fault is alone. A lone message's 400 is that message's refusal.
    func testAnAddressRefusingItsPartWholeHasTheBatchSplit() throws {
        ProcessEnv.ignoreSIGPIPE()
        let loop = try EventLoop()
        loop.startThread()
        defer { loop.stopAndJoin() }
        let live = try inbox(on: loop)
        let ready = DispatchSemaphore(value: 0)
        var strict: HTTPServer?
        var sink: ReplySink?
        loop.execute {
            strict = try? HTTPServer(loop: loop, host: "127.0.0.1", port: 0) { _, r in r.send(.error(400, "one message is unreadable")) }
            sink = ReplySink(loop: loop)
            ready.signal()
        }
        ready.wait()
        let refusing = "http://127.0.0.1:\(try XCTUnwrap(strict).port)/v1/inbox"
        let liveURL = "http://127.0.0.1:\(live.port)/v1/inbox"
        defer {
            let done = DispatchSemaphore(value: 0)
            loop.execute { sink?.shutdown(); live.shutdown(); strict?.shutdown(); done.signal() }
            done.wait()
        }
        func deliver(_ messages: [OutboxMessage]) -> SinkResult? { self.deliver(messages, through: sink!, on: loop) }
        guard case .refusedWhole(let why)? = deliver([message(1, replyTo: refusing), message(2, replyTo: liveURL), message(3, replyTo: refusing)]) else {
            return XCTFail("a part refused whole was counted against its messages")
        }
        XCTAssertTrue(why.contains("HTTP 400 for the whole batch of 2 messages"), why)
        guard case .outcomes(let alone)? = deliver([message(4, replyTo: refusing), message(5, replyTo: liveURL)]) else { return XCTFail() }
        XCTAssertEqual(alone[1], .acknowledged)
        guard case .rejected = alone[0] else { return XCTFail("\(alone[0])") }
    }
}
