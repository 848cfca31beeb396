import CohortClient
import CohortCore
import CohortHTTP
import CohortOutbox
import CohortPosix
import CohortRuntime
import CohortSQLite
import Foundation

/// Delivers each message to the inbox named by its `reply_to` header (the inventory answers
/// every `OrderPlaced` to the order service that sent it). Loop thread, like every sink.
///
/// `reply_to` comes from the message, so one bad address must not hold up the others: when
/// some addresses answer and others cannot be reached, the unreachable ones' messages count an
/// attempt each (and end in the dead letters after `outboxAttemptsMax`) instead of making the
/// whole batch unavailable, which is retried without end. Only when no address answers is the
/// batch unavailable (the order service is down: wait without spending attempts). At most
/// `Limits.demoReplyTargetsCachedMax` addresses keep a client; others get one per delivery.
///
/// With `replyTo` (`inventory-service --reply-to URL`) every message goes there instead,
/// whatever its header says: the header is fixed when the order is placed, so an order service
/// that moved (restarted on another port or host) would never hear the answers queued for its
/// old address. Read at delivery, so restarting the inventory with the flag redirects answers
/// already queued.
final class ReplySink: OutboxSink {
    let name = "reply-to"
    private let loop: EventLoop
    private let replyTo: String?
    private let token: String?
    private(set) var sinks: [String: HTTPOutboxSink] = [:]

    /// `replyTo`: a full inbox URL (`http://HOST:PORT/v1/inbox`) for every message, or nil to
    /// use each message's `reply_to` header. `token`: sent to every address.
    init(loop: EventLoop, replyTo: String? = nil, token: String? = nil) {
        self.loop = loop
        self.replyTo = replyTo
        self.token = token
    }

    func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void) {
        var groups: [String: [Int]] = [:]
        var outcomes = [DeliveryOutcome?](repeating: nil, count: messages.count)
        for (i, m) in messages.enumerated() {
            if let url = replyTo ?? m.headers["reply_to"], url.hasPrefix("http://"), url.utf8.count <= Limits.participantURLBytesMax {
                groups[url, default: []].append(i)
            } else {
                outcomes[i] = .rejected("message has no http:// reply_to header")
            }
        }
        var left = groups.count
        var unavailable: [(indexes: [Int], why: String)] = []
        var tooLarge: String?
        var refusedWhole: String?
        var failedWhole: String?
        if left == 0 { return completion(.outcomes(outcomes.map { $0! })) }
        let groupCount = groups.count
        for (url, indexes) in groups {
            let cached = sinks[url]
            let sink = cached ?? HTTPOutboxSink(url: url, loop: loop, bearerToken: token)
            let keep = cached == nil && sinks.count < Limits.demoReplyTargetsCachedMax
            if keep { sinks[url] = sink }
            sink.deliver(indexes.map { messages[$0] }) { [loop] result in
                if cached == nil && !keep { loop.execute { sink.shutdown() } }
                switch result {
                case .unavailable(let why): unavailable.append((indexes, why))
                case .tooLarge(let why): tooLarge = why
                case .refusedWhole(let why): refusedWhole = why
                case .failedWhole(let why): failedWhole = why
                case .outcomes(let got): for (k, i) in indexes.enumerated() where k < got.count { outcomes[i] = got[k] }
                }
                left -= 1
                guard left == 0 else { return }
                // One address took less than the batch: all of it again, in smaller batches
                // (what the other addresses applied comes back as duplicates).
                if let why = tooLarge { return completion(.tooLarge(why)) }
                // One address refused its part whole: all of it again, in halves, so only the
                // message at fault is refused (the others' applied ones come back as duplicates).
                if let why = refusedWhole { return completion(.refusedWhole(why)) }
                if let why = failedWhole { return completion(.failedWhole(why)) }
                if unavailable.count == groupCount { return completion(.unavailable(unavailable[0].why)) }
                for (indexes, why) in unavailable { for i in indexes { outcomes[i] = .rejected("reply_to unreachable: \(why)") } }
                completion(.outcomes(outcomes.map { $0 ?? .rejected("no answer for this message") }))
            }
        }
    }

    func shutdown() {
        for s in sinks.values { s.shutdown() }
        sinks = [:]
    }
}

/// Stream names when messages go through Redis Streams (`--broker`).
enum DemoStreams {
    static let ordersPlaced = "cohort-demo.orders-placed"
    static let stockAnswers = "cohort-demo.stock-answers"
}

/// Runs a stream reader on a thread of its own until `stop()`.
final class StreamConsumer {
    let reader: RedisStreamReader
    private var thread: PosixThread?

    init(reader: RedisStreamReader) throws {
        self.reader = reader
        thread = try PosixThread(name: "stream-reader") { reader.run() }
    }

    func stop() { reader.stop() }
}

struct OrderPlaced {
    let order_id: String
    let sku: String
    let qty: Int64
    /// A message's payload read; nil when it is not an OrderPlaced.
    static func from(_ m: WireMessage) -> OrderPlaced? { try? OrderPlaced(wireJSON: Array(m.payload.utf8)) }
}

struct StockAnswer {
    let order_id: String
    let reason: String?
}

// In extensions, so the structs keep their memberwise initializers.
extension OrderPlaced: WireDecodable, WireEncodable {
    init(wire o: WireObject) throws { self.init(order_id: try o.string("order_id"), sku: try o.string("sku"), qty: try o.int64("qty")) }
    func writeWire(_ w: inout JSONWriter) { w.beginObject(); w.field("order_id", order_id); w.field("sku", sku); w.field("qty", qty); w.endObject() }
}

extension StockAnswer: WireDecodable, WireEncodable {
    init(wire o: WireObject) throws { self.init(order_id: try o.string("order_id"), reason: try o.optString("reason")) }
    func writeWire(_ w: inout JSONWriter) { w.beginObject(); w.field("order_id", order_id); w.field("reason", reason); w.endObject() }
}

/// The order service's side: orders written with their `OrderPlaced` in one local transaction,
/// a relay to the inventory's inbox, and an inbox for the answers.
final class OrderOutbox {
    let outbox: Outbox
    let relay: OutboxRelay
    let inbox: Inbox
    private let lock = NSLock()

    private(set) var consumer: StreamConsumer?

    /// With `broker` (redis://HOST:PORT) OrderPlaced goes to a stream and the answers are read
    /// from another; without it, both go by HTTP to the services' `/v1/inbox` (with `token`).
    init(path: String, inventoryInbox: String, broker: String?, token: String? = nil, loop: EventLoop, onProblem: @escaping (String) -> Void) throws {
        // No name: one is drawn at random when the database is created and kept in it (as the
        // inventory's is), so message ids (`SOURCE:ID`) are new to the inventory's inbox even
        // from a second order service or a re-created directory; a fixed "orders" made them
        // collide and the inbox dropped those orders as duplicates. A database created while the
        // name was fixed keeps "orders", so the ids of messages it has in flight do not change.
        outbox = try Outbox(path: path)
        let sink: OutboxSink = try broker.map { try makeOutboxSink(url: $0, stream: DemoStreams.ordersPlaced, loop: loop) }
            ?? HTTPOutboxSink(url: inventoryInbox, loop: loop, bearerToken: token)
        relay = OutboxRelay(store: try OutboxStore(path: path), sink: sink, loop: loop)
        relay.onProblem = onProblem
        inbox = try Inbox(path: path, consumer: "orders")
        let relay = self.relay
        outbox.onCommit = { relay.wake() }
        if let broker {
            // A consumer group of its own (its outbox's name): in one group shared by every
            // order service, each answer reached one of them, and an answer read by a service
            // without that order left the order pending at the other for good. With a group
            // each, every service reads every answer and settles its own orders.
            let reader = try RedisStreamReader(url: broker, stream: DemoStreams.stockAnswers, group: outbox.source, consumer: outbox.source,
                                               inbox: try Inbox(path: path, consumer: "orders"), effect: Self.applyAnswer)
            reader.onProblem = onProblem
            consumer = try StreamConsumer(reader: reader)
        }
    }

    static func applyAnswer(_ tx: OutboxTransaction, _ m: WireMessage) throws {
        let answer = try StockAnswer(wireJSON: Array(m.payload.utf8))
        let status: String
        var reason: String?
        switch m.topic {
        case "StockReserved": status = "confirmed"
        case "StockRejected":
            // The inventory answers StockRejected only when it has too little of the sku; its
            // own words (which name the sku and qty) are the detail.
            status = "rejected"
            reason = RejectionReason.make(DemoRejection.insufficientStock, answer.reason ?? "the inventory answered StockRejected")
        default: throw OutboxInputError("unknown topic \(m.topic.prefix(40))")
        }
        _ = try tx.execute("UPDATE orders SET status = ?2, reason = ?3 WHERE order_id = ?1 AND status = 'pending'",
                           [.text(answer.order_id), .text(status), reason.map { .text($0) } ?? .null])
    }

    /// Any thread. Throws (and writes nothing) when an order with `requestID` exists.
    func place(orderID: String, sku: String, qty: Int64, requestID: String?, replyTo: String) throws {
        let payload = String(decoding: OrderPlaced(order_id: orderID, sku: sku, qty: qty).wireJSON, as: UTF8.self)
        lock.lock()
        defer { lock.unlock() }
        try outbox.transaction { tx in
            _ = try tx.execute("""
                INSERT INTO orders(order_id, sku, qty, mode, status, txid, created_ms, request_id)
                VALUES(?1, ?2, ?3, 'outbox', 'pending', NULL, ?4, ?5)
                """, [.text(orderID), .text(sku), .int(qty), .int(SystemClock.wallMs()), requestID.map { .text($0) } ?? .null])
            try tx.enqueue(topic: "OrderPlaced", key: sku, payload: payload, headers: ["reply_to": replyTo])
        }
    }

    /// `POST /v1/inbox` (loop thread): StockReserved confirms, StockRejected rejects.
    func handleInbox(_ request: HTTPRequest) -> HTTPResponse? {
        InboxEndpoint.handle(request, inbox: inbox, Self.applyAnswer)
    }
}

/// The inventory's side: an inbox for `OrderPlaced` whose effect (take the stock, or not) and
/// answer (`StockReserved` / `StockRejected`, to the order's `reply_to`) commit together in the
/// participant store's SQLite file, and a relay for the answers.
final class InventoryOutbox {
    let inbox: Inbox
    let relay: OutboxRelay

    private(set) var consumer: StreamConsumer?

    /// With `broker`, OrderPlaced is read from a stream (each batch applied on the loop thread,
    /// like the HTTP inbox) and the answers go to another stream; else both go by HTTP.
    /// `replyTo` (HTTP only): the inbox URL every answer goes to instead of its `reply_to`;
    /// `token`, sent with every answer.
    init(path: String, broker: String?, replyTo: String? = nil, token: String? = nil, loop: EventLoop, busy: @escaping (String) -> Bool,
         onProblem: @escaping (String) -> Void) throws {
        inbox = try Inbox(path: path, consumer: "inventory", withOutbox: true)
        let sink: OutboxSink = try broker.map { try makeOutboxSink(url: $0, stream: DemoStreams.stockAnswers, loop: loop) }
            ?? ReplySink(loop: loop, replyTo: replyTo, token: token)
        relay = OutboxRelay(store: try OutboxStore(path: path), sink: sink, loop: loop)
        relay.onProblem = onProblem
        if let broker {
            let relay = self.relay
            let reader = try RedisStreamReader(url: broker, stream: DemoStreams.ordersPlaced, group: "inventory", consumer: "inventory",
                                               inbox: inbox) { tx, m in
                // On the loop thread (runApply below): a locked sku leaves the entry pending; it is claimed again later.
                if let p = OrderPlaced.from(m), busy(p.sku) {
                    throw InboxBusy("sku \(p.sku) is locked by a 2PC/3PC branch; retry")
                }
                try Self.applyOrderPlaced(tx, m)
            }
            reader.runApply = { body in
                var result: Result<[InboxResult], Error>?
                let done = DispatchSemaphore(value: 0)
                loop.execute {
                    result = Result { try body() }
                    relay.wake()
                    done.signal()
                }
                done.wait()
                return try result!.get()
            }
            reader.onProblem = onProblem
            consumer = try StreamConsumer(reader: reader)
        }
    }

    static func applyOrderPlaced(_ tx: OutboxTransaction, _ m: WireMessage) throws {
        guard m.topic == "OrderPlaced" else { throw OutboxInputError("unknown topic \(m.topic.prefix(40))") }
        let p = try OrderPlaced(wireJSON: Array(m.payload.utf8))
        guard validSku(p.sku), p.qty > 0 else { throw OutboxInputError("bad OrderPlaced payload") }
        let taken = try tx.execute("UPDATE kv SET ival = ival - ?2 WHERE key = ?1 AND ival >= ?2",
                                   [.text("available/\(p.sku)"), .int(p.qty)]) == 1
        if taken {
            _ = try tx.execute("INSERT INTO kv(key, ival, sval) VALUES(?1, ?2, NULL) ON CONFLICT(key) DO UPDATE SET ival = COALESCE(ival, 0) + ?2",
                               [.text("sold/\(p.sku)"), .int(p.qty)])
        }
        let answer = StockAnswer(order_id: p.order_id, reason: taken ? nil : RejectionReason.notEnoughStock(sku: p.sku, qty: p.qty))
        try tx.enqueue(topic: taken ? "StockReserved" : "StockRejected", key: p.order_id,
                       payload: String(decoding: answer.wireJSON, as: UTF8.self),
                       headers: ["reply_to": m.headers["reply_to"] ?? ""])
    }

    /// `POST /v1/inbox` (loop thread). A message for a sku that a 2PC/3PC branch holds locked is
    /// answered `busy` (sent again later, no attempt counted) and the rest of the batch applies:
    /// a 503 for the whole batch held back every sku while one branch was in doubt.
    func handleInbox(_ request: HTTPRequest, busy: (String) -> Bool) -> HTTPResponse {
        guard let batch = try? InboxBatch(wireJSON: request.body) else {
            return .error(400, "body must be {\"messages\": [...]}")
        }
        guard batch.messages.count <= Limits.outboxBatchMessagesMax else {
            return .error(413, "\(batch.messages.count) messages in one batch exceed \(Limits.outboxBatchMessagesMax)")
        }
        if TestOnlyBreak.fromEnvironment() == .inboxForgetsDuplicates {
            // TEST ONLY (debug builds): no memory of applied messages, so redeliveries apply again.
            for m in batch.messages {
                _ = try? inbox.connection.run("DELETE FROM inbox WHERE consumer = ?1 AND message_id = ?2", [.text(inbox.consumer), .text(m.id)])
            }
        }
        do {
            let results = try inbox.apply(batch.messages) { tx, m in
                if let p = OrderPlaced.from(m), busy(p.sku) { throw InboxBusy("sku \(p.sku) is locked by a 2PC/3PC branch; retry") }
                try Self.applyOrderPlaced(tx, m)
            }
            relay.wake()
            return .jsonBytes(200, InboxBatchResponse(results: results).wireJSON)
        } catch {
            return .error(503, "inbox transaction failed: \(error)")
        }
    }
}
