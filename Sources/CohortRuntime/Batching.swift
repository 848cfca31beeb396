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

public final class BatchingSender {
    public typealias Completion = (Result<HTTPClientResponse, HTTPClientError>) -> Void

    private struct Queued {
        let path: String
        let body: [UInt8]
        let timeoutMs: Int64
        let completion: Completion
        let queuedAtUs: UInt64
    }

    private struct Peer {
        var inFlight = 0
        var queue: [Queued] = []
    }

    private let environment: NodeEnvironment
    private let maxInFlight: Int
    private var peers: [String: Peer] = [:]
    public private(set) var exchangesSent = 0
    /// Batchable messages sent, and the microseconds they waited in total for a free exchange
    /// (all `maxInFlight` exchanges to their peer were busy).
    public private(set) var batchableMessagesSent = 0
    public private(set) var queueWaitUsTotal: UInt64 = 0

    public init(environment: NodeEnvironment, maxInFlight: Int = Limits.batchExchangesInFlightPerPeer) {
        self.environment = environment
        self.maxInFlight = maxInFlight
    }

    /// Sends `body` to `baseURL + path`, alone or in a batch with others to the same peer.
    /// `batchable` is false for peers not known to serve `/v1/batch`.
    public func send(baseURL: String, path: String, body: [UInt8], batchable: Bool,
                     timeoutMs: Int64 = Limits.httpClientRequestTimeoutMs, completion: @escaping Completion) {
        guard batchable else {
            exchangesSent += 1
            environment.send(HTTPClientRequest(method: "POST", url: baseURL + path, body: body, timeoutMs: timeoutMs), completion)
            return
        }
        var peer = peers[baseURL] ?? Peer()
        guard peer.queue.count < Limits.httpClientQueueMax else {
            environment.execute { completion(.failure(.queueFull)) }
            return
        }
        peer.queue.append(Queued(path: path, body: body, timeoutMs: timeoutMs, completion: completion, queuedAtUs: environment.monotonicUs))
        peers[baseURL] = peer
        flush(baseURL)
    }

    private func flush(_ baseURL: String) {
        guard var peer = peers[baseURL], peer.inFlight < maxInFlight, !peer.queue.isEmpty else { return }
        let take = min(peer.queue.count, Limits.batchMessagesMax)
        let items = Array(peer.queue.prefix(take))
        peer.queue.removeFirst(take)
        peer.inFlight += 1
        peers[baseURL] = peer
        exchangesSent += 1
        let nowUs = environment.monotonicUs
        batchableMessagesSent += items.count
        for item in items { queueWaitUsTotal &+= nowUs &- item.queuedAtUs }
        let done: () -> Void = { [weak self] in
            guard let self else { return }
            self.peers[baseURL]?.inFlight -= 1
            if let p = self.peers[baseURL], p.inFlight == 0, p.queue.isEmpty { self.peers.removeValue(forKey: baseURL) }
            self.flush(baseURL)
        }
        if items.count == 1 {
            let item = items[0]
            environment.send(HTTPClientRequest(method: "POST", url: baseURL + item.path, body: item.body, timeoutMs: item.timeoutMs)) { result in
                item.completion(result)
                done()
            }
            return
        }
        let batch = BatchRequest(messages: items.map { BatchItem(path: $0.path, body: String(decoding: $0.body, as: UTF8.self)) })
        // A batch waits as long as its most patient message would have.
        let timeoutMs = items.map(\.timeoutMs).max() ?? Limits.httpClientRequestTimeoutMs
        environment.send(HTTPClientRequest(method: "POST", url: baseURL + "/v1/batch", body: JSONBody.encode(batch), timeoutMs: timeoutMs)) { result in
            switch result {
            case .failure(let error):
                for item in items { item.completion(.failure(error)) }
            case .success(let response):
                if response.status == 200, let answers = try? JSONBody.value(BatchResponse.self, from: response.body),
                   answers.answers.count == items.count {
                    for (item, answer) in zip(items, answers.answers) {
                        item.completion(.success(HTTPClientResponse(status: answer.status, body: Array(answer.body.utf8))))
                    }
                } else {
                    // The peer refused the batch as a whole: every message gets that answer.
                    for item in items { item.completion(.success(response)) }
                }
            }
            done()
        }
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
        var answers: [BatchAnswer?]
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
            collector.answers[i] = BatchAnswer(status: response.status, body: String(decoding: response.body, as: UTF8.self))
            collector.remaining -= 1
            if collector.remaining == 0 {
                collector.responder.send(.jsonBytes(200, JSONBody.encode(BatchResponse(answers: collector.answers.map { $0! }))))
            }
        }
        handle(item, sink)
    }
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
