import CohortCore
import CohortHTTP
import Foundation

/// Several protocol messages to one peer in one HTTP exchange: `POST /v1/batch`.
///
/// Under load many prepares and commits to the same participant are in flight at once; sending
/// them one HTTP request each costs a system call, a wake-up and a parse apiece on both sides.
/// A `BatchingSender` keeps at most `maxInFlight` exchanges open per peer and sends whatever
/// queued up meanwhile as one batch — the network analogue of group commit. At low load nothing
/// waits: a lone message goes out at once, as a plain request.
public struct BatchItem: Codable, Sendable {
    /// The path the message would have been posted to on its own, e.g. `/v1/2pc/prepare`.
    public let path: String
    /// Its JSON body, as text.
    public let body: String
    public init(path: String, body: String) {
        self.path = path
        self.body = body
    }
}

public struct BatchRequest: Codable, Sendable {
    public let messages: [BatchItem]
    public init(messages: [BatchItem]) { self.messages = messages }
}

public struct BatchAnswer: Codable, Sendable {
    public let status: Int
    public let body: String
    public init(status: Int, body: String) {
        self.status = status
        self.body = body
    }
}

public struct BatchResponse: Codable, Sendable {
    public let answers: [BatchAnswer]
    public init(answers: [BatchAnswer]) { self.answers = answers }
}

/// The size of a `POST /v1/batch` body as `BatchRequest.writeWire` writes it,
/// `{"messages":[M1,M2,...]}`: the envelope plus, for every message, its `{"path":P,"body":B}`
/// (both strings escaped) and a separator (one byte over: the first message has none).
public enum BatchBytes {
    /// `{"messages":[` and `]}`.
    public static let envelope = 15
    /// `{"path":` `,"body":` `}` and a comma around the two escaped strings.
    public static func cost(path: String, body: String) -> Int {
        18 + JSONWriter.stringBytes(path) + JSONWriter.stringBytes(body)
    }

    /// `body` as the UTF-8 of `String(decoding: body, as: UTF8.self)`, the text a batch carries:
    /// the bytes themselves when they are ASCII (every body the wire types write), else with
    /// invalid sequences replaced as that String does.
    static func text(_ body: [UInt8]) -> [UInt8] {
        var any: UInt8 = 0
        for b in body { any |= b }
        return any < 0x80 ? body : Array(String(decoding: body, as: UTF8.self).utf8)
    }
}

public final class BatchingSender {
    public typealias Completion = (Result<HTTPClientResponse, HTTPClientError>) -> Void

    private struct Queued {
        let path: String
        /// The body's text in UTF-8 (`BatchBytes.text`): sent as it is alone, escaped as a
        /// string in a batch. Kept as bytes: making a String of every body, and its bytes again
        /// for a lone message, was a validation and a copy per message.
        let body: [UInt8]
        /// `JSONWriter.stringBytes(body)` and what the message adds to a batch body
        /// (`BatchBytes.cost`), counted once (`counted()`) when the message may share a batch:
        /// a message that goes out alone, as most do below full load, is sent as it is and its
        /// escaped size never matters (counting it was 1.8% of the coordinator's instructions).
        private var sizes: (bodyStringBytes: Int, batchBytes: Int)?
        let timeoutMs: Int64
        let completion: Completion
        let queuedAtUs: UInt64
        /// What `withdraw(key:from:because:)` finds it by while it still waits in the queue.
        let withdrawKey: String?

        init(path: String, body: [UInt8], timeoutMs: Int64, completion: @escaping Completion, queuedAtUs: UInt64, withdrawKey: String?) {
            self.path = path
            self.body = body
            self.timeoutMs = timeoutMs
            self.completion = completion
            self.queuedAtUs = queuedAtUs
            self.withdrawKey = withdrawKey
        }

        /// The message's sizes, counted on first use.
        mutating func counted() -> (bodyStringBytes: Int, batchBytes: Int) {
            if let sizes { return sizes }
            let bodyStringBytes = body.withUnsafeBufferPointer { JSONWriter.stringBytes($0) }
            let counted = (bodyStringBytes: bodyStringBytes, batchBytes: 18 + JSONWriter.stringBytes(path) + bodyStringBytes)
            sizes = counted
            return counted
        }

        /// The sizes of a message that was counted (every message of a batch of two or more was).
        var countedSizes: (bodyStringBytes: Int, batchBytes: Int) {
            guard let sizes else { preconditionFailure("a batched message was not counted") }
            return sizes
        }
    }

    private struct Peer {
        var inFlight = 0
        /// Messages sent to the peer and not answered yet: queued, split, or in an exchange.
        var unanswered = 0

        /// One exchange is over, `answered` of its messages with their answer (one access to
        /// the table for both counts).
        mutating func exchangeEnded(answered: Int) {
            inFlight -= 1
            unanswered -= answered
        }
        var queue: [Queued] = []
        /// Messages to send again before the queue, in order, one exchange each: the halves of
        /// batches the peer refused as too large (413), and what is left of a batch some of
        /// whose messages were withdrawn while it waited in the environment. None has an
        /// answer yet.
        var split: [Resend] = []

        /// Nothing in flight or waiting: the table need not keep it.
        var isIdle: Bool { inFlight == 0 && queue.isEmpty && split.isEmpty }

        /// Queues `item`, unless the queue is full (false).
        mutating func enqueue(_ item: Queued) -> Bool {
            guard queue.count < Limits.httpClientQueueMax else { return false }
            unanswered += 1
            queue.append(item)
            return true
        }

        /// Takes the messages of the next exchange, if one is free and something waits (see
        /// `sendNext`), and counts it in flight. `resent`: a refused or withdrawn batch's part.
        mutating func nextExchange(maxInFlight: Int, batchBytesMax: Int) -> (items: [Queued], resent: Bool, mayHaveLeft: Bool)? {
            guard inFlight < maxInFlight else { return nil }
            let items: [Queued]
            let resent: Bool
            var mayHaveLeft = false
            if !split.isEmpty {
                let next = split.removeFirst()
                items = next.items
                mayHaveLeft = next.mayHaveLeft
                resent = true
            } else if !queue.isEmpty {
                var take = 1
                if queue.count > 1 {
                    var bytes = BatchBytes.envelope + queue[0].counted().batchBytes
                    // In order: a message that does not fit ends the batch (it leads the next one).
                    while take < min(queue.count, Limits.batchMessagesMax) {
                        let more = queue[take].counted().batchBytes
                        guard bytes + more <= batchBytesMax else { break }
                        bytes += more
                        take += 1
                    }
                }
                items = Array(queue.prefix(take))
                queue.removeFirst(take)
                resent = false
            } else {
                return nil
            }
            inFlight += 1
            return (items, resent, mayHaveLeft)
        }
    }

    /// Messages that go again as one exchange (`Peer.split`).
    private struct Resend {
        var items: [Queued]
        /// Where they wait, as `withdraw` tells one it takes out.
        let waiting: String
        /// They may have reached the peer already: the HTTP client had sent their batch once,
        /// on a kept-alive connection the peer closed, when its retry was withdrawn. Then none
        /// of them is withdrawn as unsent (nor sent with its key).
        let mayHaveLeft: Bool
    }

    /// A multi-message batch handed to the environment that carries a message with a
    /// `withdrawKey`, until its completion runs: `withdraw` asks the environment to withdraw
    /// it (by `batchWithdrawKey`) while it has not left this process.
    private final class PendingBatch {
        let baseURL: String
        let items: [Queued]
        /// Set by `withdraw` while the environment withdraws the batch: the key of the
        /// messages to take out of it. The others are sent again.
        var withdrawingKey: String?
        /// Set by the batch's completion: how many messages it completed as withdrawn.
        var withdrawn = 0
        init(baseURL: String, items: [Queued]) {
            self.baseURL = baseURL
            self.items = items
        }
    }

    private let environment: NodeEnvironment
    private let maxInFlight: Int
    private let batchBytesMax: Int
    private var peers: [String: Peer] = [:]
    /// Batches in the environment holding a withdrawable message, by the number they were
    /// handed out under (`batchWithdrawKey`).
    private var pendingBatches: [UInt64: PendingBatch] = [:]
    private var batchesWithKeys: UInt64 = 0
    public private(set) var exchangesSent = 0
    /// Batchable messages sent, and the microseconds they waited in total for a free exchange
    /// (all `maxInFlight` exchanges to their peer were busy). A message re-sent in half of a
    /// refused batch counts once.
    public private(set) var batchableMessagesSent = 0
    public private(set) var queueWaitUsTotal: UInt64 = 0
    /// Batches the peer refused as too large (413) and that were sent again in two halves.
    public private(set) var batchesSplit = 0

    public init(environment: NodeEnvironment, maxInFlight: Int = Limits.batchExchangesInFlightPerPeer,
                batchBytesMax: Int = Limits.batchBodyBytesMax) {
        self.environment = environment
        self.maxInFlight = maxInFlight
        self.batchBytesMax = batchBytesMax
    }

    /// Messages sent alone (to peers not known to take batches) and not answered yet, by peer;
    /// a batchable peer's are counted in its `Peer`, with no second lookup per message.
    private var unansweredAlone: [String: Int] = [:]

    /// Messages sent to `baseURL` and not answered yet, batched or not: how far behind the
    /// peer is, for admission.
    public func unansweredCount(_ baseURL: String) -> Int { (peers[baseURL]?.unanswered ?? 0) + (unansweredAlone[baseURL] ?? 0) }

    /// Sends `body` to `baseURL + path`, alone or in a batch with others to the same peer.
    /// `batchable` is false for peers not known to serve `/v1/batch`. `withdrawKey`: the
    /// message may be withdrawn by it (`withdraw(key:from:because:)`) for as long as it has not
    /// left this process.
    public func send(baseURL: String, path: String, body: [UInt8], batchable: Bool,
                     timeoutMs: Int64 = Limits.httpClientRequestTimeoutMs, withdrawKey: String? = nil,
                     completion: @escaping Completion) {
        guard batchable else {
            exchangesSent += 1
            unansweredAlone[baseURL, default: 0] += 1
            environment.send(HTTPClientRequest(method: "POST", url: baseURL + path, body: body, timeoutMs: timeoutMs,
                                               withdrawKey: withdrawKey)) { [weak self] result in
                if let self {
                    if let n = self.unansweredAlone[baseURL], n > 1 { self.unansweredAlone[baseURL] = n - 1 } else { self.unansweredAlone.removeValue(forKey: baseURL) }
                }
                completion(result)
            }
            return
        }
        let queued = Queued(path: path, body: BatchBytes.text(body), timeoutMs: timeoutMs,
                            completion: completion, queuedAtUs: environment.monotonicUs, withdrawKey: withdrawKey)
        // In the table, not on a copy: a copy's queue shared its storage with the table's, so
        // appending to it copied the whole queue.
        guard peers[baseURL, default: Peer()].enqueue(queued) else {
            environment.execute { completion(.failure(.queueFull)) }
            return
        }
        flush(baseURL)
    }

    /// Withdraws every message sent with `withdrawKey` `key` that has not left this process:
    /// those still queued for one of `baseURLs` (every exchange to the peer busy); those in a
    /// refused batch's half that waits here to be sent again (the peer ran nothing of the
    /// batch); and those the environment still holds (`NodeEnvironment.withdraw`): a lone
    /// request, or a batch, waiting in the HTTP client for a connection. Such a batch is
    /// withdrawn whole and its other messages go again at once, ahead of the queue, as one
    /// exchange. Each withdrawn message is completed, before this returns, with `.withdrawn`
    /// saying `why` and where it waited (`.retryWithdrawn` from the HTTP client for a retry). Not a message in an exchange that left, nor one that
    /// may have reached the peer once already (`Resend.mayHaveLeft`). How many were withdrawn.
    ///
    /// A 3PC coordinator withdraws a transaction's pre-commits at its pre-commit timeout: one
    /// still here never reached its participant, which is alive and uncertain, not crashed.
    @discardableResult
    public func withdraw(key: String, from baseURLs: [String], because why: String) -> Int {
        var withdrawn: [(item: Queued, waiting: String)] = []
        for baseURL in baseURLs {
            guard var peer = peers[baseURL] else { continue }
            let before = withdrawn.count
            if peer.queue.contains(where: { $0.withdrawKey == key }) {
                let waiting = "while still queued in this process behind \(peer.inFlight) exchange(s) in flight to the peer"
                peer.queue.removeAll { item in
                    guard item.withdrawKey == key else { return false }
                    withdrawn.append((item, waiting))
                    return true
                }
            }
            for i in peer.split.indices where !peer.split[i].mayHaveLeft && peer.split[i].items.contains(where: { $0.withdrawKey == key }) {
                let waiting = peer.split[i].waiting
                peer.split[i].items.removeAll { item in
                    guard item.withdrawKey == key else { return false }
                    withdrawn.append((item, waiting))
                    return true
                }
            }
            guard withdrawn.count > before else { continue }
            peer.split.removeAll { $0.items.isEmpty }
            peer.unanswered -= withdrawn.count - before
            // A queue waits only behind exchanges in flight, so the entry normally stays (it
            // goes when the last ends, as in `sendNext`'s `done`).
            if peer.inFlight == 0, peer.queue.isEmpty, peer.split.isEmpty { peers.removeValue(forKey: baseURL) } else { peers[baseURL] = peer }
        }
        // The books are right before any completion runs: a completion may send again.
        for (item, waiting) in withdrawn {
            item.completion(.failure(.withdrawn("\(why), \(waiting)")))
        }
        var count = withdrawn.count + environment.withdraw(key: key, because: why)
        if !pendingBatches.isEmpty {
            let holding = pendingBatches.filter { _, batch in
                baseURLs.contains(batch.baseURL) && batch.items.contains { $0.withdrawKey == key }
            }.keys.sorted()
            for id in holding {
                // A completion run by an earlier withdrawal may have sent, not ended, others.
                guard let batch = pendingBatches[id] else { continue }
                batch.withdrawingKey = key
                _ = environment.withdraw(key: batchWithdrawKey(id), because: why)
                batch.withdrawingKey = nil
                count += batch.withdrawn
            }
        }
        return count
    }

    /// The key a batch holding withdrawable messages is handed to the environment with: one
    /// the environment's other users (keys of their own messages) cannot have.
    private func batchWithdrawKey(_ id: UInt64) -> String { "batch \(id) of sender \(ObjectIdentifier(self))" }

    /// Sends what waits for `baseURL` while it has exchanges free.
    private func flush(_ baseURL: String) {
        while sendNext(baseURL) {}
    }

    /// The next exchange to `baseURL`, if one is free and something waits: a refused batch's
    /// half first, else the queue's head and as many after it as fit in one batch, by count and
    /// by encoded bytes. A message too large to share a batch goes alone.
    private func sendNext(_ baseURL: String) -> Bool {
        // Taken from the peer in the table, in place (see `send`).
        guard let i = peers.index(forKey: baseURL),
              let (items, resent, mayHaveLeft) = peers.values[i].nextExchange(maxInFlight: maxInFlight, batchBytesMax: batchBytesMax)
        else { return false }
        exchangesSent += 1
        if !resent {
            let nowUs = environment.monotonicUs
            batchableMessagesSent += items.count
            for item in items { queueWaitUsTotal &+= nowUs &- item.queuedAtUs }
        }
        // `answered`: how many of `items` got their answer (all, unless the batch was split
        // and sent again).
        let done: (_ answered: Int) -> Void = { [weak self] answered in
            guard let self else { return }
            // Found once and changed in place: `peers[baseURL]?.…` moved the whole `Peer` out
            // of the table and back (a heap frame per call), and a second lookup copied it.
            if let i = self.peers.index(forKey: baseURL) {
                self.peers.values[i].exchangeEnded(answered: answered)
                if self.peers.values[i].isIdle { self.peers.remove(at: i) }
            }
            self.flush(baseURL)
        }
        if items.count == 1 {
            // Alone, as a plain request: its answer is its own, 413 included.
            let item = items[0]
            environment.send(HTTPClientRequest(method: "POST", url: baseURL + item.path, body: item.body, timeoutMs: item.timeoutMs,
                                               withdrawKey: mayHaveLeft ? nil : item.withdrawKey)) { result in
                item.completion(result)
                done(1)
            }
            return true
        }
        // A batch waits as long as its most patient message would have.
        let timeoutMs = items.map(\.timeoutMs).max() ?? Limits.httpClientRequestTimeoutMs
        var pendingID: UInt64?
        if !mayHaveLeft, items.contains(where: { $0.withdrawKey != nil }) {
            batchesWithKeys += 1
            pendingID = batchesWithKeys
            pendingBatches[batchesWithKeys] = PendingBatch(baseURL: baseURL, items: items)
        }
        environment.send(HTTPClientRequest(method: "POST", url: baseURL + "/v1/batch", body: Self.batchBody(items), timeoutMs: timeoutMs,
                                           withdrawKey: pendingID.map(batchWithdrawKey))) { [weak self] result in
            var answered = items.count
            let pending = pendingID.flatMap { self?.pendingBatches.removeValue(forKey: $0) }
            if let self, let pending, let key = pending.withdrawingKey, case .failure(let error) = result {
                // Withdrawn by `withdraw` for the messages with `key`, before it left: they
                // fail as the environment says; the others go again at once, ahead of the
                // queue. Unless the HTTP client had sent the batch once already and withdrew
                // its retry (`retryWithdrawn`): then the others may have reached the peer, and
                // are not withdrawn again as unsent.
                let gone = items.filter { $0.withdrawKey == key }
                let rest = items.filter { $0.withdrawKey != key }
                var mayHaveLeft = false
                if case .retryWithdrawn = error { mayHaveLeft = true }
                if !rest.isEmpty {
                    self.peers[baseURL]?.split.insert(Resend(items: rest, waiting: "while in a batch waiting in this process to be sent again, after messages of it were withdrawn",
                                                             mayHaveLeft: mayHaveLeft), at: 0)
                }
                pending.withdrawn = gone.count
                for item in gone { item.completion(.failure(error)) }
                done(gone.count)
                return
            }
            switch result {
            case .failure(let error):
                for item in items { item.completion(.failure(error)) }
            case .success(let response) where response.status == 413:
                // Too large for the peer (a smaller body limit than ours, or a count gone
                // wrong): nothing in it ran, and no message is to blame. Send it again in two
                // halves, ahead of the queue; a lone message's 413 is its own answer.
                guard let self else {
                    for item in items { item.completion(.success(response)) }
                    return
                }
                let half = items.count / 2
                answered = 0
                self.batchesSplit += 1
                let waiting = "while in half of a batch the peer refused as too large, waiting in this process to be sent again"
                self.peers[baseURL]?.split.insert(contentsOf: [Resend(items: Array(items[..<half]), waiting: waiting, mayHaveLeft: mayHaveLeft),
                                                               Resend(items: Array(items[half...]), waiting: waiting, mayHaveLeft: mayHaveLeft)], at: 0)
            case .success(let response) where response.status == 200:
                if let answers = try? JSONBody.value(BatchResponse.self, from: response.body).answers, answers.count == items.count {
                    for (item, answer) in zip(items, answers) {
                        item.completion(.success(HTTPClientResponse(status: answer.status, body: Array(answer.body.utf8))))
                    }
                } else {
                    // A 200 without one answer per message says nothing about any of them: the
                    // batch's 200 is not a message's 200 (a commit would count as acknowledged
                    // by a participant that never heard it). Every message failed in transport
                    // and is retried as such.
                    let error = HTTPClientError.protocolError("the answer to a batch of \(items.count) messages does not hold one answer per message")
                    for item in items { item.completion(.failure(error)) }
                }
            case .success(let response):
                // The peer refused the batch as a whole (400, 401, 503...): every message gets that answer.
                for item in items { item.completion(.success(response)) }
            }
            done(answered)
        }
        return true
    }

    /// The body `BatchRequest.writeWire` writes for `items`, built in one buffer of its exact
    /// size from the counts made when it was formed (no second escape count, no growth).
    private static func batchBody(_ items: [Queued]) -> [UInt8] {
        var size = BatchBytes.envelope - 1
        for item in items { size += item.countedSizes.batchBytes }
        let bytes = batchEnvelope(key: "messages", items, capacity: size, field: { $0.field("path", $1.path) },
                                  body: { ($0.body, $0.countedSizes.bodyStringBytes) })
        assert(bytes.count == size, "a batch's size miscounted")
        return bytes
    }
}

/// Serves `POST /v1/batch`: runs each message through `handle` as if it had come alone, and
/// answers once every message has its answer, in order.
public func serveBatch(_ request: HTTPRequest, _ responder: ResponseSink, allowedPrefixes: [String],
                       handle: (HTTPRequest, ResponseSink) -> Void) {
    let batch: BatchRequest
    switch JSONBody.decode(BatchRequest.self, from: request.body) {
    case .failure(let e): return responder.send(.requestError(e))
    case .success(let b): batch = b
    }
    guard !batch.messages.isEmpty, batch.messages.count <= Limits.batchMessagesMax else {
        return responder.send(.error(400, "a batch holds 1-\(Limits.batchMessagesMax) messages"))
    }
    for item in batch.messages where !allowedPrefixes.contains(where: { item.path.hasPrefix($0) }) {
        return responder.send(.error(400, "a batch may hold only \(allowedPrefixes.joined(separator: ", ")) messages, not \(item.path.prefix(80))"))
    }
    final class Collector: @unchecked Sendable {
        /// Each message's answer: its status and its body's text (`BatchBytes.text`) with that
        /// text's escaped size, so that the batch's answer is written in one buffer.
        var answers: [(status: Int, body: [UInt8], stringBytes: Int)?]
        var remaining: Int
        let responder: ResponseSink
        init(count: Int, responder: ResponseSink) {
            answers = Array(repeating: nil, count: count)
            remaining = count
            self.responder = responder
        }
    }
    var requests: [HTTPRequest] = []
    requests.reserveCapacity(batch.messages.count)
    for item in batch.messages {
        do {
            requests.append(try HTTPRequest.parsingTarget(method: "POST", target: item.path, headers: request.headers, body: Array(item.body.utf8)))
        } catch {
            return responder.send(.error(400, "a batch message has a malformed path: \(item.path.prefix(80))"))
        }
    }
    let collector = Collector(count: batch.messages.count, responder: responder)
    for (i, item) in requests.enumerated() {
        let sink = ClosureSink { response in
            guard collector.answers[i] == nil else { return }
            let text = BatchBytes.text(response.body)
            collector.answers[i] = (response.status, text, text.withUnsafeBufferPointer { JSONWriter.stringBytes($0) })
            collector.remaining -= 1
            if collector.remaining == 0 {
                collector.responder.send(.jsonBytes(200, batchResponseBody(collector.answers.map { $0! })))
            }
        }
        // The rule the server applies to plain requests (`HTTPRequest.hasEmptySegment`).
        if item.hasEmptySegment { sink.send(item.emptySegmentAnswer) } else { handle(item, sink) }
    }
}

/// The body `BatchResponse.writeWire` writes for these answers, in one buffer of (about) its size.
private func batchResponseBody(_ answers: [(status: Int, body: [UInt8], stringBytes: Int)]) -> [UInt8] {
    // `{"answers":[` `]}`, and per answer `{"status":` up to 20 digits `,"body":` `}` and a comma.
    var size = 14
    for a in answers { size += 40 + a.stringBytes }
    return batchEnvelope(key: "answers", answers, capacity: size, field: { $0.field("status", $1.status) },
                         body: { ($0.body, $0.stringBytes) })
}

/// `{"KEY":[{FIELD,"body":B},...]}`, a batch's request or answer: each item's one other field
/// written by `field`, and its body, JSON text carried as a string, from its UTF-8 bytes and
/// their counted escaped length.
private func batchEnvelope<Item>(key: StaticString, _ items: [Item], capacity: Int,
                                 field: (inout JSONWriter, Item) -> Void,
                                 body: (Item) -> (utf8: [UInt8], stringBytes: Int)) -> [UInt8] {
    var w = JSONWriter(capacity: capacity)
    w.beginObject()
    w.key(static: key)
    w.beginArray()
    for item in items {
        w.beginObject()
        field(&w, item)
        w.key(static: "body")
        let (utf8, stringBytes) = body(item)
        utf8.withUnsafeBufferPointer { w.value(utf8: $0, stringBytes: stringBytes) }
        w.endObject()
    }
    w.endArray()
    w.endObject()
    return w.bytes
}

/// A response sink that calls a closure.
public final class ClosureSink: ResponseSink {
    private let action: (HTTPResponse) -> Void
    public init(_ action: @escaping (HTTPResponse) -> Void) { self.action = action }
    public func send(_ response: HTTPResponse) { action(response) }
}

extension BatchRequest: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(messages: try o.objects("messages") { BatchItem(path: try $0.string("path"), body: try $0.string("body")) })
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.key("messages")
        w.beginArray()
        for m in messages { w.beginObject(); w.field("path", m.path); w.field("body", m.body); w.endObject() }
        w.endArray()
        w.endObject()
    }
}

extension BatchResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(answers: try o.objects("answers") { BatchAnswer(status: try $0.int("status"), body: try $0.string("body")) })
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.key("answers")
        w.beginArray()
        for a in answers { w.beginObject(); w.field("status", a.status); w.field("body", a.body); w.endObject() }
        w.endArray()
        w.endObject()
    }
}
