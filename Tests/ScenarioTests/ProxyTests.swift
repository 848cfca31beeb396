import CohortClient
import CohortPosix
@testable import CohortScenario
import Foundation
import XCTest

/// A tiny HTTP server counting the requests it gets; it answers each with the running count.
final class CountingServer: @unchecked Sendable {
    let listener: StreamListener
    private let lock = NSLock()
    private var n = 0
    private var stopped = false
    var count: Int { lock.lock(); defer { lock.unlock() }; return n }
    var port: Int { listener.port }

    /// `answerDelayMs`: how long each answer takes (a request still in flight when a window opens).
    init(answerDelayMs: Int = 0) throws {
        listener = try StreamListener()
        Thread { [self] in
            defer { acceptLoopEnded.signal() }
            while !isStopped {
                guard let c = listener.accept(timeoutMs: 50) else { continue }
                Thread { [self] in
                    var reader = MessageReader()
                    while reader.next(from: c, isResponse: false, timeoutMs: 5000) != nil {
                        lock.lock(); n += 1; let k = n; lock.unlock()
                        if answerDelayMs > 0 { Thread.sleep(forTimeInterval: Double(answerDelayMs) / 1000) }
                        let body = "\(k)"
                        c.writeAll(Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8))
                    }
                    c.close()
                }.start()
            }
        }.start()
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }
    /// Closes the listener once the accept loop has left it (after a sleep instead, ThreadSanitizer
    /// saw `close` race `accept` on a loaded machine). Call once.
    func stop() { lock.lock(); stopped = true; lock.unlock(); acceptLoopEnded.wait(); listener.close() }
    private let acceptLoopEnded = DispatchSemaphore(value: 0)
}

final class ProxyTests: XCTestCase {
    var server: CountingServer!
    var proxy: FaultProxy!

    override func setUpWithError() throws {
        server = try CountingServer()
        proxy = try FaultProxy(name: "test")
        proxy.setTarget(port: server.port)
        proxy.start()
    }

    override func tearDown() {
        proxy.stop()
        server.stop()
    }

    func rule(_ action: Scenario.NetworkAction, seconds: Double = 10, delayMs: Int64 = 0, match: String? = nil, probability: Double = 1) {
        proxy.addRule(FaultProxy.Rule(start: Date(), end: Date().addingTimeInterval(seconds), action: action,
                                      probability: probability, delayMs: delayMs, match: match, faultIndex: 0))
    }

    func get(_ path: String = "/x", timeoutMs: Int64 = 5000) -> (status: Int?, body: String, ms: Double) {
        let api = CohortAPI(coordinatorURL: proxy.url, connectTimeoutMs: 1000, requestTimeoutMs: timeoutMs)
        let t0 = Date()
        do {
            let r = try api.raw("POST", proxy.url + path, body: Array("{\"a\":1}".utf8))
            return (r.status, String(decoding: r.body, as: UTF8.self), Date().timeIntervalSince(t0) * 1000)
        } catch {
            return (nil, "\(error)", Date().timeIntervalSince(t0) * 1000)
        }
    }

    func testForwardsWithoutRules() {
        let api = CohortAPI(coordinatorURL: proxy.url)
        for i in 1...3 {  // one keep-alive connection, three requests
            let r = try? api.raw("GET", proxy.url + "/n")
            XCTAssertEqual(r?.status, 200)
            XCTAssertEqual(r.map { String(decoding: $0.body, as: UTF8.self) }, "\(i)")
        }
        XCTAssertEqual(server.count, 3)
        XCTAssertEqual(proxy.forwardedCount, 3)
    }

    func testDropNeverForwards() {
        rule(.drop)
        let r = get()
        XCTAssertNil(r.status, "a dropped request gets no answer")
        XCTAssertEqual(server.count, 0)
        XCTAssertEqual(proxy.actedCounts()[0], 1)
    }

    func testDropResponseForwardsButNeverAnswers() {
        rule(.dropResponse)
        let r = get()
        XCTAssertNil(r.status)
        XCTAssertEqual(server.count, 1, "the request was carried out")
    }

    func testDuplicateSendsTwiceAndReturnsTheFirstAnswer() {
        rule(.duplicate)
        let r = get()
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(r.body, "1")
        XCTAssertEqual(server.count, 2)
    }

    func testDelay() {
        rule(.delay, delayMs: 400)
        let r = get()
        XCTAssertEqual(r.status, 200)
        XCTAssertGreaterThanOrEqual(r.ms, 390)
        XCTAssertEqual(server.count, 1)
    }

    func testBlackholeHoldsUntilTheWindowCloses() {
        rule(.blackhole, seconds: 0.6)
        let r = get()
        XCTAssertNil(r.status)
        XCTAssertGreaterThanOrEqual(r.ms, 500, "held, not refused")
        XCTAssertEqual(server.count, 0)
        let after = get()
        XCTAssertEqual(after.status, 200, "healed once the window closed")
    }

    func testMatchOnlyActsOnMatchingRequests() {
        rule(.drop, match: "/v1/2pc/prepare")
        XCTAssertEqual(get("/v1/2pc/commit").status, 200)
        XCTAssertNil(get("/v1/2pc/prepare").status)
        XCTAssertEqual(server.count, 1)
    }

    /// A request forwarded just before a blackhole window opens, answered while it is open: the
    /// answer is swallowed when the whole link is cut, and delivered when the window only cuts
    /// matching requests (the request was not held; holding its answer could fill every
    /// exchange a sender allows itself with ones the receiver already acted on).
    func testAnAnswerInFlightWhenAWindowOpensIsSwallowedOnlyWhenTheWholeLinkIsCut() throws {
        let slow = try CountingServer(answerDelayMs: 400)
        defer { slow.stop() }
        proxy.setTarget(port: slow.port)
        for match in [nil, "/v1/2pc/commit"] as [String?] {
            let opens = Date().addingTimeInterval(0.15)
            proxy.addRule(FaultProxy.Rule(start: opens, end: opens.addingTimeInterval(1.0), action: .blackhole, probability: 1,
                                          delayMs: 0, match: match, faultIndex: 0))
            let r = get("/v1/2pc/commit")
            if match == nil {
                XCTAssertNil(r.status, "the whole link is cut: the answer is swallowed")
                XCTAssertGreaterThanOrEqual(r.ms, 1_000, "held until the window closed")
            } else {
                XCTAssertEqual(r.status, 200, "only matching requests are held; this one was forwarded before the window")
            }
            while Date() < opens.addingTimeInterval(1.05) { Thread.sleep(forTimeInterval: 0.05) }
        }
        XCTAssertEqual(slow.count, 2)
    }

    func testWindowInTheFutureDoesNothingYet() {
        proxy.addRule(FaultProxy.Rule(start: Date().addingTimeInterval(30), end: Date().addingTimeInterval(40), action: .drop))
        XCTAssertEqual(get().status, 200)
    }

    func testProbabilityActsOnSomeRequests() {
        rule(.drop, probability: 0.5)
        var dropped = 0
        for _ in 0..<40 where get().status == nil { dropped += 1 }
        XCTAssertGreaterThan(dropped, 5)
        XCTAssertLessThan(dropped, 35)
        XCTAssertEqual(server.count, 40 - dropped)
    }
}
