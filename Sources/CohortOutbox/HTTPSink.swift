import CohortCore
import CohortHTTP
import CohortPosix
import Foundation

/// Direct HTTP delivery: each batch is one `POST URL` with `{"messages": [...]}`; the consumer's
/// inbox endpoint answers 200 `{"results": [{"id", "status": "applied"|"duplicate"|"failed"|"busy", "error"?}]}`.
/// `applied` and `duplicate` acknowledge a message; `failed` refuses it (an attempt); `busy`
/// defers it (sent again after a backoff of its key, no attempt). A 4xx answer for a message
/// alone refuses it; for a batch of several it is `refusedWhole` (the relay sends the batch again
/// in halves, nothing counted, so only the message at fault is refused). Except 401, 403, 404
/// and 405, which are the consumer's
/// trouble (a token, a path), not the messages'; those, no answer, a timeout, 5xx, 408 or 429
/// mean the consumer is unavailable (nothing counted, the relay backs off); a 500 is
/// `failedWhole` (also backed off, a batch of several sent again in halves, so one message the
/// consumer fails on holds up only its key). 413 (body too large) says nothing about
/// the messages of a batch of several: `tooLarge`, the relay sends them in smaller batches; for a
/// message alone it is that message's refusal (it can never be delivered to this consumer).
public final class HTTPOutboxSink: OutboxSink {
    public let url: String
    public var name: String { url }
    let client: HTTPClient
    let timeoutMs: Int64

    public init(url: String, loop: EventLoop, bearerToken: String? = nil, timeoutMs: Int64 = Limits.outboxSinkTimeoutMs) {
        self.url = url
        self.timeoutMs = timeoutMs
        var cfg = HTTPClientConfig()
        cfg.bearerToken = bearerToken
        client = HTTPClient(loop: loop, config: cfg)
    }

    public func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void) {
        var body = "{\"messages\":["
        body.reserveCapacity(messages.count * 200)
        for (i, m) in messages.enumerated() {
            if i > 0 { body.append(",") }
            JSONText.message(m, into: &body)
        }
        body.append("]}")
        let request = HTTPClientRequest(method: "POST", url: url, headers: ["Content-Type": "application/json"],
                                        body: Array(body.utf8), timeoutMs: timeoutMs)
        client.send(request) { result in
            switch result {
            case .failure(let e):
                completion(.unavailable("POST \(self.url): \(e)"))
            case .success(let r):
                completion(HTTPOutboxSink.interpret(r, messages: messages, url: self.url))
            }
        }
    }

    static func interpret(_ r: HTTPClientResponse, messages: [OutboxMessage], url: String) -> SinkResult {
        if r.status == 200 {
            guard let decoded = try? InboxBatchResponse(wireJSON: r.body) else {
                return .unavailable("POST \(url): 200 with an unreadable body")
            }
            var byID: [String: InboxResult] = [:]
            for x in decoded.results { byID[x.id] = x }
            // Not one result for the batch's messages is the consumer's fault, not theirs:
            // counted as a refusal of each, a consumer that briefly answered `{"results":[]}`
            // dead-lettered the head of every key and stopped the outbox until each was
            // replayed by hand (a black-box probe). Sent again, as for a 5xx.
            if !messages.contains(where: { byID[$0.messageID] != nil }) {
                return .unavailable("POST \(url): 200 with no result for any of its \(messages.count) messages")
            }
            return .outcomes(messages.map { m in
                guard let x = byID[m.messageID] else { return .rejected("consumer gave no result for \(m.messageID)") }
                switch x.status {
                case "applied", "duplicate": return .acknowledged
                case "busy": return .deferred(x.error ?? "consumer is busy")
                default: return .rejected(x.error ?? "consumer answered \(x.status)")
                }
            })
        }
        if r.status == 500 {
            // An exception on one message answers 500 for its batch every time: sent again whole,
            // that batch, and every key in it, never got through (a consumer that failed on one
            // message stopped 20 keys for good). Halved, nothing counted, after the outage backoff.
            let text = String(decoding: r.body.prefix(200), as: UTF8.self)
            return .failedWhole(messages.count > 1 ? "POST \(url): HTTP 500 for the whole batch of \(messages.count) messages: \(text)"
                                                   : "POST \(url): HTTP 500: \(text)")
        }
        if r.status >= 500 || r.status == 408 || r.status == 429 {
            return .unavailable("POST \(url): HTTP \(r.status)")
        }
        // The consumer's configuration, not the messages: a rotated token (401, 403), a wrong
        // path (404) or method (405). Counted as a refusal of each message, it dead-lettered the
        // head of every key within half a minute, and every key stopped until each was replayed
        // by hand (a review). Sent again after a backoff, and said as the sink's trouble.
        if [401, 403, 404, 405].contains(r.status) {
            let text = String(decoding: r.body.prefix(200), as: UTF8.self)
            return .unavailable("POST \(url): HTTP \(r.status) for the whole batch (the consumer's token or address, not the messages): \(text)")
        }
        if r.status == 413 && messages.count > 1 {
            return .tooLarge("POST \(url): HTTP 413 for \(messages.count) messages")
        }
        let text = String(decoding: r.body.prefix(200), as: UTF8.self)
        // Another 4xx for several messages may be one message's fault (a consumer that cannot
        // read one answers 400 for the batch): sent again in halves, nothing counted, until the
        // message is alone. Counted against each, it dead-lettered the other keys' heads with it.
        if messages.count > 1 {
            return .refusedWhole("POST \(url): HTTP \(r.status) for the whole batch of \(messages.count) messages: \(text)")
        }
        return .outcomes(Array(repeating: .rejected("HTTP \(r.status): \(text)"), count: messages.count))
    }

    public func shutdown() { client.shutdown() }
}
