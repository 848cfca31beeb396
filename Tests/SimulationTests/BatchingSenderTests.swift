import CohortCore
import CohortHTTP
import CohortRuntime
import XCTest

/// An environment whose requests stay open until the test answers them.
private final class HeldRequests: NodeEnvironment {
    var sent: [(request: HTTPClientRequest, completion: (Result<HTTPClientResponse, HTTPClientError>) -> Void)] = []
    var nowUs: UInt64 = 0
    var wallMs: Int64 { 0 }
    var monotonicUs: UInt64 { nowUs }
    let testOnlyBreak = TestOnlyBreak.none
    func schedule(afterMs: Int64, _ task: @escaping () -> Void) -> NodeTimer { NodeTimer {} }
    func execute(_ task: @escaping () -> Void) { task() }
    func send(_ request: HTTPClientRequest, _ completion: @escaping (Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        sent.append((request, completion))
    }
    func randomU64() -> UInt64 { 4 }
    /// The keys the sender asked this environment to withdraw requests by.
    var withdrawnKeys: [String] = []
    /// Whether it holds back the requests not answered yet, as an HTTP client holds those
    /// waiting for a connection: `withdraw` then fails those with the key as not sent (as a
    /// retry withdrawn for those in `retried`). Else none has left... nor can be withdrawn.
    var holdsBack = false
    var retried: Set<Int> = []
    private(set) var withdrawnRequests: Set<Int> = []
    func withdraw(key: String, because why: String) -> Int {
        withdrawnKeys.append(key)
        guard holdsBack else { return 0 }
        var n = 0
        for i in sent.indices where sent[i].request.withdrawKey == key && !withdrawnRequests.contains(i) {
            withdrawnRequests.insert(i)
            n += 1
            let waiting = "\(why), while still waiting in this host's HTTP client"
            sent[i].completion(.failure(retried.contains(i) ? .retryWithdrawn(waiting) : .withdrawn(waiting)))
        }
        return n
    }

    /// The paths one sent request carries: its own, or those of the messages in its batch.
    func paths(_ i: Int) throws -> [String] {
        let r = sent[i].request
        guard r.url.hasSuffix("/v1/batch") else { return [String(r.url.dropFirst("http://p".count))] }
        return try JSONBody.value(BatchRequest.self, from: r.body).messages.map(\.path)
    }

    /// Answers sent request `i` as the agent's server would: 413 for a body over
    /// `Limits.httpBodyBytesMax`, else 200 for every message in it.
    func answerAsAnAgent(_ i: Int) throws {
        if sent[i].request.body.count > Limits.httpBodyBytesMax {
            sent[i].completion(.success(HTTPClientResponse(status: 413, body: Array(#"{"error":"request body too large"}"#.utf8))))
        } else {
            try answer(i)
        }
    }

    /// Answers sent request `i` with 200 for every message in it.
    func answer(_ i: Int) throws {
        let r = sent[i].request
        if r.url.hasSuffix("/v1/batch") {
            let n = try JSONBody.value(BatchRequest.self, from: r.body).messages.count
            let body = JSONBody.encode(BatchResponse(answers: Array(repeating: BatchAnswer(status: 200, body: "{}"), count: n)))
            sent[i].completion(.success(HTTPClientResponse(status: 200, body: body)))
        } else {
            sent[i].completion(.success(HTTPClientResponse(status: 200, body: Array("{}".utf8))))
        }
    }
}

final class BatchingSenderTests: XCTestCase {
    /// A lone message leaves at once as a plain request; what queues while every exchange to
    /// the peer is busy leaves as one batch when one frees, each message getting its own answer;
    /// the wait for a free exchange is counted.
    func testMessagesQueueWhileTheExchangesAreBusyAndLeaveAsOneBatch() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var answered: [String] = []
        func send(_ path: String) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true) { result in
                if case .success(let r) = result, r.status == 200 { answered.append(path) }
            }
        }
        send("/v1/2pc/prepare?1")
        XCTAssertEqual(env.sent.count, 1)
        XCTAssertEqual(try env.paths(0), ["/v1/2pc/prepare?1"])
        send("/v1/2pc/commit?2")
        send("/v1/2pc/prepare?3")
        XCTAssertEqual(env.sent.count, 1, "the one exchange allowed is busy")
        env.nowUs = 500
        try env.answer(0)
        XCTAssertEqual(env.sent.count, 2)
        XCTAssertEqual(try env.paths(1), ["/v1/2pc/commit?2", "/v1/2pc/prepare?3"], "in order, in one batch")
        try env.answer(1)
        XCTAssertEqual(answered, ["/v1/2pc/prepare?1", "/v1/2pc/commit?2", "/v1/2pc/prepare?3"])
        XCTAssertEqual(sender.batchableMessagesSent, 3)
        XCTAssertEqual(sender.queueWaitUsTotal, 1_000, "two messages waited 500 µs each")
        XCTAssertEqual(sender.exchangesSent, 2)
    }

    /// A batch is capped by its encoded bytes, not only by its count: each message's JSON is
    /// escaped again inside the batch, and 256 messages of 5 KB would pass the agent's body
    /// limit, which refuses the whole batch with 413 (every prepare in it aborted).
    func testBatchesStayUnderTheBodyLimitTheirEscapedMessagesIncluded() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        // Quote-heavy like a prepare carrying work: escaping adds a backslash per quote.
        var body = #"{"txid":"3fa90c1e-18f3c2a9b10-2a","ops":["#
        while body.utf8.count < 5_000 { body += #"{"op":"add","key":"acct-000042","delta":-1},"# }
        body += #"{"op":"get","key":"acct-000042"}]}"#
        var statuses: [Int] = []
        let count = 600
        for i in 0..<count {
            sender.send(baseURL: "http://p", path: "/v1/2pc/prepare?\(i)", body: Array(body.utf8), batchable: true) { result in
                guard case .success(let r) = result else { return XCTFail("message \(i): \(result)") }
                statuses.append(r.status)
            }
        }
        var i = 0
        while i < env.sent.count {
            let request = env.sent[i].request
            XCTAssertLessThanOrEqual(request.body.count, Limits.batchBodyBytesMax, "exchange \(i)")
            if request.url.hasSuffix("/v1/batch") {
                let batch = try JSONBody.value(BatchRequest.self, from: request.body)
                // The count is exact: the envelope, and every message's cost (one separator fewer).
                XCTAssertEqual(request.body.count, BatchBytes.envelope - 1 + batch.messages.reduce(0) { $0 + BatchBytes.cost(path: $1.path, body: $1.body) })
                // Byte for byte what the wire type writes (the sender builds it from bytes).
                XCTAssertEqual(request.body, JSONBody.encode(batch))
            }
            try env.answerAsAnAgent(i)
            i += 1
        }
        XCTAssertEqual(statuses, Array(repeating: 200, count: count), "every message answered, none refused with its batch")
        XCTAssertEqual(sender.batchableMessagesSent, count)
        XCTAssertGreaterThanOrEqual(env.sent.count, 4, "several batches")
        XCTAssertLessThan(env.sent.count, count / 10, "still batched")
    }

    /// A message too large to share a batch goes alone, as a plain request (its 413, if the
    /// peer refuses it, is its own answer); the messages around it still batch.
    func testAMessageTooLargeToShareGoesAlone() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var answers: [String: Int] = [:]
        func send(_ path: String, _ body: String) {
            sender.send(baseURL: "http://p", path: path, body: Array(body.utf8), batchable: true) { result in
                if case .success(let r) = result { answers[path] = r.status }
            }
        }
        let big = #"{"txid":"t","ops":[""# + String(repeating: #"\""#, count: 400_000) + #""]}"#  // 800 KB escaped twice over
        send("/v1/2pc/prepare?0", "{}")
        send("/v1/2pc/prepare?1", "{}")
        send("/v1/2pc/prepare?big", big)
        send("/v1/2pc/prepare?2", "{}")
        send("/v1/2pc/prepare?3", "{}")
        try env.answer(0)
        XCTAssertEqual(try env.paths(1), ["/v1/2pc/prepare?1"], "alone: the next one does not fit beside it")
        try env.answerAsAnAgent(1)
        XCTAssertEqual(try env.paths(2), ["/v1/2pc/prepare?big"])
        XCTAssertEqual(env.sent[2].request.body, Array(big.utf8), "its own body, not escaped in a batch")
        try env.answerAsAnAgent(2)
        XCTAssertEqual(try env.paths(3), ["/v1/2pc/prepare?2", "/v1/2pc/prepare?3"])
        try env.answerAsAnAgent(3)
        XCTAssertEqual(answers, ["/v1/2pc/prepare?0": 200, "/v1/2pc/prepare?1": 200, "/v1/2pc/prepare?big": 200,
                                 "/v1/2pc/prepare?2": 200, "/v1/2pc/prepare?3": 200])
    }

    /// A batch the peer refuses as too large (413; a peer with a smaller limit than ours) is sent
    /// again in halves, down to single messages, and no message hears the batch's 413; a message
    /// sent alone and refused 413 gets that as its own answer. Order is kept.
    func testA413SplitsTheBatchAndOnlyALoneMessageHearsIt() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var answered: [(path: String, status: Int)] = []
        func send(_ path: String) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true) { result in
                guard case .success(let r) = result else { return XCTFail("\(path): \(result)") }
                answered.append((path, r.status))
            }
        }
        send("/v1/2pc/prepare?held")
        let paths = (0..<7).map { "/v1/2pc/commit?\($0)" } + ["/v1/2pc/commit?refused"]
        for p in paths { send(p) }
        try env.answer(0)
        // The peer takes at most 2 messages in a body, and never the one named "refused".
        var i = 1
        while i < env.sent.count {
            let inside = try env.paths(i)
            if inside.count > 2 || inside.contains("/v1/2pc/commit?refused") {
                env.sent[i].completion(.success(HTTPClientResponse(status: 413, body: Array(#"{"error":"too large"}"#.utf8))))
            } else {
                try env.answer(i)
            }
            i += 1
        }
        let exchanges = try (0..<env.sent.count).map { try env.paths($0) }
        XCTAssertEqual(Array(exchanges.dropFirst().prefix(2)), [paths, Array(paths[0..<4])], "all eight in one batch, then its first half")
        XCTAssertEqual(answered.map(\.path), ["/v1/2pc/prepare?held"] + paths, "each answered once, in order")
        XCTAssertEqual(answered.map(\.status), Array(repeating: 200, count: 8) + [413])
        XCTAssertEqual(sender.batchesSplit, 4, "8 → 4+4, each 4 → 2+2, and the 2 holding the refused one → 1+1")
        XCTAssertEqual(sender.batchableMessagesSent, 9, "a message re-sent in a half counts once")
    }

    /// A 200 to a batch whose body is not one answer per message says nothing about any message:
    /// each fails as in transport (a commit is retried), none hears the batch's 200 as its own.
    func testA200WithoutOneAnswerPerMessageFailsEveryMessage() throws {
        for wrong in ["{}", #"{"answers":[{"status":200,"body":"{}"}]}"#, "not json"] {
            let env = HeldRequests()
            let sender = BatchingSender(environment: env, maxInFlight: 1)
            var results: [Result<HTTPClientResponse, HTTPClientError>] = []
            for i in 0..<3 {
                sender.send(baseURL: "http://p", path: "/v1/2pc/commit?\(i)", body: Array("{}".utf8), batchable: true) { results.append($0) }
            }
            try env.answer(0)
            XCTAssertEqual(try env.paths(1).count, 2)
            env.sent[1].completion(.success(HTTPClientResponse(status: 200, body: Array(wrong.utf8))))
            XCTAssertEqual(results.count, 3)
            for r in results.dropFirst() {
                guard case .failure(.protocolError) = r else { return XCTFail("\(wrong): \(r)") }
            }
        }
    }

    /// A message still queued for a peer (every exchange to it busy) has not left this process,
    /// and can be withdrawn by its key: it is completed at once as not sent, saying why, and
    /// the peer's count of unanswered messages drops. A message in an exchange is not withdrawn
    /// by the sender (one the environment still holds is the environment's to withdraw); nor is
    /// one sent with another key or none; an unknown key withdraws nothing. A 3PC coordinator
    /// does this at the pre-commit timeout (session 31).
    func testOnlyAMessageStillQueuedIsWithdrawnByItsKey() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var results: [String: Result<HTTPClientResponse, HTTPClientError>] = [:]
        func send(_ path: String, key: String?) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true, withdrawKey: key) { results[path] = $0 }
        }
        send("/v1/3pc/precommit?inflight", key: "k")
        send("/v1/3pc/precommit?queued", key: "k")
        send("/v1/2pc/commit?other", key: "other")
        send("/v1/3pc/state?unkeyed", key: nil)
        XCTAssertEqual(env.sent.count, 1)
        XCTAssertEqual(env.sent[0].request.withdrawKey, "k", "a lone message carries its key to the environment")
        XCTAssertEqual(sender.unansweredCount("http://p"), 4)

        XCTAssertEqual(sender.withdraw(key: "nobody", from: ["http://p", "http://q"], because: "test"), 0)
        XCTAssertEqual(sender.unansweredCount("http://p"), 4, "an unknown key withdraws nothing")
        XCTAssertTrue(results.isEmpty)

        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://p"], because: "it had not left at the timeout"), 1)
        XCTAssertEqual(env.withdrawnKeys, ["nobody", "k"], "the environment is asked for what it holds back")
        guard case .failure(.withdrawn(let why))? = results["/v1/3pc/precommit?queued"] else {
            return XCTFail("the queued message was not completed as not sent: \(results)")
        }
        XCTAssertTrue(why.contains("it had not left at the timeout") && why.contains("queued"), why)
        XCTAssertFalse(HTTPClientError.withdrawn(why).mayBeFromADownPeer)
        XCTAssertEqual(Array(results.keys), ["/v1/3pc/precommit?queued"], "the one in the exchange is left alone")
        XCTAssertEqual(sender.unansweredCount("http://p"), 3)
        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://p"], because: "again"), 0, "nothing more under that key")

        // The exchange ends: the two left leave as one batch; the peer refuses it as too large
        // and it is sent again in halves, the second waiting while the first is in flight.
        try env.answer(0)
        XCTAssertEqual(try env.paths(1), ["/v1/2pc/commit?other", "/v1/3pc/state?unkeyed"], "the withdrawn one is not sent")
        env.sent[1].completion(.success(HTTPClientResponse(status: 413, body: Array(#"{"error":"too large"}"#.utf8))))
        XCTAssertEqual(try env.paths(2), ["/v1/2pc/commit?other"])
        XCTAssertEqual(sender.withdraw(key: "other", from: ["http://p"], because: "test"), 0, "sent once: in flight")
        send("/v1/3pc/precommit?split", key: "split")
        XCTAssertEqual(sender.unansweredCount("http://p"), 3)
        // "split" waits behind the refused batch's second half ("unkeyed").
        XCTAssertEqual(sender.withdraw(key: "split", from: ["http://p"], because: "test"), 1)
        XCTAssertEqual(sender.unansweredCount("http://p"), 2)
        try env.answer(2)
        XCTAssertEqual(try env.paths(3), ["/v1/3pc/state?unkeyed"], "the half waiting in split was not withdrawn")
        try env.answer(3)
        XCTAssertEqual(env.sent.count, 4)
        XCTAssertEqual(sender.unansweredCount("http://p"), 0)
        for path in ["/v1/3pc/precommit?inflight", "/v1/2pc/commit?other", "/v1/3pc/state?unkeyed"] {
            guard case .success(let r)? = results[path], r.status == 200 else { return XCTFail("\(path): \(String(describing: results[path]))") }
        }
    }

    /// A message in a batch that still waits in the environment (the HTTP client has no
    /// connection for it yet) has not left this process either: the batch is withdrawn whole,
    /// the messages with the key fail as withdrawn, saying where they waited, and the others go
    /// again at once as one exchange (a withdrawable one again while it holds a keyed message;
    /// a lone survivor goes as a plain request). Before session 32 a batch carried no key, and
    /// a pre-commit in it stayed until it left, late.
    func testAMessageInABatchStillInTheEnvironmentIsWithdrawnAndTheOthersGoAgain() throws {
        let env = HeldRequests()
        env.holdsBack = true
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var results: [String: Result<HTTPClientResponse, HTTPClientError>] = [:]
        func send(_ path: String, key: String?) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true, withdrawKey: key) { results[path] = $0 }
        }
        send("/v1/2pc/prepare?first", key: nil)
        send("/v1/3pc/precommit?k1", key: "k")
        send("/v1/2pc/commit?c", key: nil)
        send("/v1/3pc/precommit?k2", key: "k")
        send("/v1/3pc/precommit?o", key: "other")
        try env.answer(0)
        XCTAssertEqual(try env.paths(1), ["/v1/3pc/precommit?k1", "/v1/2pc/commit?c", "/v1/3pc/precommit?k2", "/v1/3pc/precommit?o"])
        XCTAssertNotNil(env.sent[1].request.withdrawKey, "a batch holding a withdrawable message can be withdrawn")

        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://q"], because: "test"), 0, "another peer's")
        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://p"], because: "at the timeout"), 2)
        for path in ["/v1/3pc/precommit?k1", "/v1/3pc/precommit?k2"] {
            guard case .failure(.withdrawn(let why))? = results[path] else { return XCTFail("\(path): \(String(describing: results[path]))") }
            XCTAssertTrue(why.contains("at the timeout") && why.contains("still waiting"), why)
        }
        XCTAssertEqual(results.count, 3, "the others are not completed: \(results.keys.sorted())")
        XCTAssertEqual(env.sent.count, 3, "the others went again at once")
        XCTAssertEqual(try env.paths(2), ["/v1/2pc/commit?c", "/v1/3pc/precommit?o"])
        XCTAssertNotNil(env.sent[2].request.withdrawKey)
        XCTAssertEqual(sender.unansweredCount("http://p"), 2)

        XCTAssertEqual(sender.withdraw(key: "other", from: ["http://p"], because: "at the timeout"), 1)
        XCTAssertEqual(try env.paths(3), ["/v1/2pc/commit?c"])
        XCTAssertNil(env.sent[3].request.withdrawKey, "the one left goes alone, with its own key (none)")
        try env.answer(3)
        guard case .success(let r)? = results["/v1/2pc/commit?c"], r.status == 200 else { return XCTFail("\(String(describing: results["/v1/2pc/commit?c"]))") }
        XCTAssertEqual(sender.unansweredCount("http://p"), 0)
        XCTAssertEqual(env.sent.count, 4)
        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://p"], because: "again"), 0)
    }

    /// A batch whose retry the HTTP client withdrew went out once already (on a kept-alive
    /// connection the peer closed): the withdrawn messages hear `retryWithdrawn`, the others go
    /// again, but none of them can be withdrawn as unsent any more: they may have reached the
    /// peer.
    func testTheOthersOfAWithdrawnRetryAreNotWithdrawnAgain() throws {
        let env = HeldRequests()
        env.holdsBack = true
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var results: [String: Result<HTTPClientResponse, HTTPClientError>] = [:]
        func send(_ path: String, key: String?) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true, withdrawKey: key) { results[path] = $0 }
        }
        send("/v1/2pc/prepare?first", key: nil)
        send("/v1/3pc/precommit?k", key: "k")
        send("/v1/3pc/precommit?o1", key: "other")
        send("/v1/3pc/precommit?o2", key: "other")
        try env.answer(0)
        env.retried.insert(1)
        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://p"], because: "at the timeout"), 1)
        guard case .failure(.retryWithdrawn)? = results["/v1/3pc/precommit?k"] else { return XCTFail("\(results)") }
        XCTAssertEqual(try env.paths(2), ["/v1/3pc/precommit?o1", "/v1/3pc/precommit?o2"])
        XCTAssertNil(env.sent[2].request.withdrawKey, "they may have reached the peer")
        XCTAssertEqual(sender.withdraw(key: "other", from: ["http://p"], because: "at the timeout"), 0)
        try env.answer(2)
        XCTAssertEqual(try results["/v1/3pc/precommit?o2"]?.get().status, 200)
        XCTAssertEqual(sender.unansweredCount("http://p"), 0)
    }

    /// A message in half of a batch the peer refused as too large (413), waiting here to be
    /// sent again, has not left either (the peer ran nothing of the batch): it is withdrawn,
    /// saying so, and the rest of its half goes when its turn comes. Before session 32 halves
    /// were kept whole and only a lone half in the environment could be withdrawn.
    func testAMessageInARefusedBatchsHalfIsWithdrawn() throws {
        let env = HeldRequests()
        let sender = BatchingSender(environment: env, maxInFlight: 1)
        var results: [String: Result<HTTPClientResponse, HTTPClientError>] = [:]
        func send(_ path: String, key: String?) {
            sender.send(baseURL: "http://p", path: path, body: Array("{}".utf8), batchable: true, withdrawKey: key) { results[path] = $0 }
        }
        send("/v1/2pc/prepare?first", key: nil)
        send("/v1/2pc/commit?1", key: nil)
        send("/v1/2pc/commit?2", key: nil)
        send("/v1/3pc/precommit?k", key: "k")
        send("/v1/2pc/commit?3", key: nil)
        try env.answer(0)
        env.sent[1].completion(.success(HTTPClientResponse(status: 413, body: Array(#"{"error":"too large"}"#.utf8))))
        XCTAssertEqual(try env.paths(2), ["/v1/2pc/commit?1", "/v1/2pc/commit?2"], "the first half in flight, the second waits")
        XCTAssertEqual(sender.withdraw(key: "k", from: ["http://p"], because: "at the timeout"), 1)
        guard case .failure(.withdrawn(let why))? = results["/v1/3pc/precommit?k"] else { return XCTFail("\(results)") }
        XCTAssertTrue(why.contains("at the timeout") && why.contains("refused as too large"), why)
        XCTAssertEqual(sender.unansweredCount("http://p"), 3)
        try env.answer(2)
        XCTAssertEqual(try env.paths(3), ["/v1/2pc/commit?3"], "the rest of its half")
        try env.answer(3)
        XCTAssertEqual(env.sent.count, 4)
        XCTAssertEqual(sender.unansweredCount("http://p"), 0)
        XCTAssertEqual(results.values.filter { (try? $0.get().status) == 200 }.count, 4)
    }

    /// `serveBatch` answers with what `BatchResponse` writes for the messages' answers, their
    /// bodies as text (an invalid UTF-8 sequence replaced, as a String of it would have it).
    func testABatchAnswerIsWhatTheWireTypeWrites() throws {
        let bodies: [[UInt8]] = [Array(#"{"txid":"t","vote":"yes"}"#.utf8), Array(#"{"error":"é \"q\" 中"}"#.utf8),
                                 [0x7B, 0x22, 0xFF, 0xC3, 0x22, 0x7D], [], Array("line\n\u{1}".utf8)]
        let batch = BatchRequest(messages: bodies.indices.map { BatchItem(path: "/v1/2pc/prepare?\($0)", body: "{}") })
        let request = HTTPRequest(method: "POST", target: "/v1/batch", path: "/v1/batch", body: JSONBody.encode(batch))
        final class Sink: ResponseSink {
            var responses: [HTTPResponse] = []
            func send(_ response: HTTPResponse) { responses.append(response) }
        }
        let sink = Sink()
        serveBatch(request, sink, allowedPrefixes: ["/v1/2pc/"]) { message, responder in
            let i = Int(message.query.keys.first!)!
            responder.send(HTTPResponse(status: 200 + i, body: bodies[i]))
        }
        XCTAssertEqual(sink.responses.count, 1)
        let expected = BatchResponse(answers: bodies.indices.map { BatchAnswer(status: 200 + $0, body: String(decoding: bodies[$0], as: UTF8.self)) })
        XCTAssertEqual(sink.responses.first?.body, JSONBody.encode(expected))
        XCTAssertEqual(try JSONBody.value(BatchResponse.self, from: sink.responses[0].body).answers.map(\.body),
                       bodies.map { String(decoding: $0, as: UTF8.self) })
    }
}
