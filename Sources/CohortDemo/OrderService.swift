import CohortAgent
import CohortClient
import CohortCore
import CohortHTTP
import CohortKV
import CohortOutbox
import CohortPosix
import CohortRuntime
import Foundation

/// The order service of the demo. Orders live in its own SQLite file (`orders.sqlite`); for
/// 2PC and 3PC it is itself a Cohort participant (an embedded `AgentServer`) whose branch is the
/// order's key `order/{order_id}` in its participant store: that key exists exactly when the
/// global transaction committed, so the order row is settled from it (also after a crash).
public final class OrderService: RunnableServer {
    public struct Options {
        public var dataDirectory: String
        public var coordinatorURL: String
        public var inventoryURL: String
        public var host = "127.0.0.1"
        public var port = 0
        public var name = "orders"
        /// redis://HOST:PORT: outbox messages through Redis Streams instead of HTTP.
        public var broker: String?
        /// The address the coordinator calls the participant back on (default http://HOST:PORT).
        public var advertiseURL: String?
        /// Required on every call in and sent on every call out (`--token-file`).
        public var token: String?
        /// Problems worth logging (a lost broker connection); the library never prints.
        public var onProblem: (String) -> Void = { _ in }
        public init(dataDirectory: String, coordinatorURL: String, inventoryURL: String) {
            self.dataDirectory = dataDirectory
            self.coordinatorURL = coordinatorURL
            self.inventoryURL = inventoryURL
        }
    }

    public static let modes = ["2pc", "3pc", "tcc", "outbox"]
    /// A TCC order's one branch: the stock at the inventory.
    static let tccBranchID = "stock"
    /// The order service's own steps, then its participant's, relay's and inbox's
    /// (docs/demo.md, "Crash points").
    public static let ownCrashPoints = [
        "order-service.after-order-row-inserted",
        "order-service.after-order-row-committed-before-commit-call",
        "order-service.after-commit-answer-before-settle",
        "order-service.after-tcc-try-before-commit-call",
        "order-service.after-tcc-decision-before-settle",
        "order-service.after-outbox-commit",
    ]
    public static let crashPoints = ownCrashPoints + AgentServer.crashPoints + OutboxRelay.crashPoints + Inbox.crashPoints

    public let agent: AgentServer
    public let store: OrderStore
    private let options: Options
    private let api: APIPool
    private let workers = Workers()
    /// Orders in doubt, settled by one background thread (`settleInBackground`).
    private let inDoubtLock = NSLock()
    private var inDoubt: [String: OrderStore.Order] = [:]
    /// Orders found pending at start whose transaction the settler aborts before it asks about
    /// them (ids; kept until an abort reaches the coordinator).
    private var abandoned: Set<String> = []
    private var settlerRunning = false
    /// This service's own address, for its calls to its own participant (never leaves the host).
    private var selfURL = ""
    /// Where the inventory sends its answers to outbox orders (the `reply_to` of each
    /// `OrderPlaced`): the advertised address when there is one, since behind a proxy or a NAT
    /// the bind address is not one the inventory can reach.
    private(set) var replyURL = ""
    private var outbox: OrderOutbox!
    /// The inbox's rows past `Limits.inboxRetentionMsDefault`, aged by a clock a wall-clock step
    /// forward does not hurry (`InboxCleaner`).
    private var inboxCleaner: InboxCleaner!
    /// Called (on a worker thread) when the startup pass could not settle an order yet.
    public var onNote: ((String) -> Void)?

    public var port: Int { agent.port }
    public var recoveryNote: String? { agent.recoveryNote }

    public init(options: Options, loop: EventLoop, onFatal: @escaping (String) -> Void) throws {
        self.options = options
        api = APIPool(coordinatorURL: options.coordinatorURL, token: options.token)
        // The address before the data directory and the order store: a busy port leaves nothing
        // behind (see AgentServer), and the participant serves this socket.
        let listener = try HTTPServer.listen(host: options.host, port: options.port)
        try DataDirectory.create(options.dataDirectory)
        store = try OrderStore(path: options.dataDirectory + "/orders.sqlite")
        var agentOptions = AgentServer.Options(name: options.name, dataDirectory: options.dataDirectory + "/participant",
                                               coordinatorURL: options.coordinatorURL)
        agentOptions.host = options.host
        agentOptions.port = options.port
        agentOptions.listener = listener
        agentOptions.advertiseURL = options.advertiseURL
        agentOptions.token = options.token
        weak var weakSelf: OrderService?
        agentOptions.routes = { request, responder in weakSelf?.route(request, responder) ?? false }
        agent = try AgentServer(options: agentOptions, loop: loop, onFatal: onFatal)
        selfURL = "http://\(options.host):\(agent.port)"
        replyURL = (options.advertiseURL ?? selfURL) + "/v1/inbox"
        outbox = try OrderOutbox(path: options.dataDirectory + "/orders.sqlite", inventoryInbox: options.inventoryURL + "/v1/inbox",
                                 broker: options.broker, token: options.token, loop: loop, onProblem: options.onProblem)
        inboxCleaner = InboxCleaner(inbox: outbox.inbox, retentionMs: Limits.inboxRetentionMsDefault)
        weakSelf = self
        // Watched against `Limits.demoOrderWaitersMax` (past it a wait is answered 503), and the
        // way a test knows its request is held rather than sleeping and hoping it is. Read on
        // the loop thread, like `waiterCount`.
        agent.node.declareMetrics { m in
            m.sample("cohort_order_waits_held", help: "GET /v1/orders/{id}?wait_ms=N requests (and repeated placements) held until their order settles") { [weak self] in
                Double(self?.waiterCount ?? 0)
            }
        }
    }

    /// Serves; first settles, in the background, every order a crash left pending.
    ///
    /// The request that placed such an order died with the previous process, so nothing will
    /// call its commit: left alone, its transaction would hold its reservation (and a client's
    /// re-send of its request id, which waits for the order) until the coordinator expires it
    /// (the transaction's timeout, 10 s by default). The settler aborts it first. If the dead process's
    /// commit call got there before, the coordinator refuses the abort and keeps its decision,
    /// which the settler then reads: the order settles as the coordinator decided either way.
    public func run() throws {
        let pending = (try? store.list(status: "pending")) ?? []
        for order in pending where order.mode != "outbox" { settleInBackground(order, abandoned: true) }
        _ = agent.loop.schedule(afterMs: Limits.demoMaintenanceIntervalMs) { [weak self] in self?.maintain() }
        outbox.relay.start()
        try agent.run()
    }

    /// Inbox rows past `Limits.inboxRetentionMsDefault`, every `Limits.demoMaintenanceIntervalMs`.
    private func maintain() {
        _ = inboxCleaner.round(rowsMax: Limits.outboxCleanupRowsMax)
        _ = agent.loop.schedule(afterMs: Limits.demoMaintenanceIntervalMs) { [weak self] in self?.maintain() }
    }

    public func shutdown() {
        // A graceful stop answers every request it took: held waits get the order as it is now
        // (most likely still pending) before the server closes their connections, which
        // dropped them unanswered (the session-28 game day). A signal's stop runs on the loop.
        if agent.loop.isInLoopThread {
            for orderID in Array(waiters.keys) { answerWaiters(orderID) }
        }
        outbox.consumer?.stop()
        outbox.relay.stop()
        agent.shutdown()
    }

    struct OrderBody: WireDecodable {
        let sku: String
        let qty: Int64
        let mode: String
        /// The client's key for this order: a repeat with the same one is the same order.
        let requestID: String?
        /// The contract's fields and `request_id`: anything else is refused, naming it.
        static let fields = ["sku", "qty", "mode", "request_id"]
        init(wire o: WireObject) throws {
            try o.refuseUnknownFields(Self.fields)
            sku = try o.string("sku")
            qty = try o.int64("qty")
            mode = try o.string("mode")
            requestID = try o.optString("request_id")
        }
    }

    static let requestIDRule = "request_id must be 1-\(Limits.demoRequestIDBytesMax) printable ASCII characters, no spaces"

    static func validRequestID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= Limits.demoRequestIDBytesMax && id.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f }
    }

    /// What placing an order came to: how it settled (nil: still pending), or the order
    /// another request with the same request id placed first (this one placed nothing), or
    /// nothing at all because no transaction could begin (why, for the client's 503).
    enum Placement {
        case settled(OrderStore.Outcome?)
        case repeated(OrderStore.Order)
        case notPlaced(String)
    }
    /// `POST /v1/orders`' answer: `reason` only for a rejected order (one rejected before
    /// reasons were kept has none).
    struct Created: WireEncodable {
        let order_id: String
        let status: String
        let reason: String?
        init(order_id: String, status: String, reason: String?) {
            self.order_id = order_id
            self.status = status
            self.reason = reason
        }
        init(_ order: OrderStore.Order) { self.init(order_id: order.orderID, status: order.status, reason: order.reason) }
        init(_ orderID: String, _ outcome: OrderStore.Outcome?) {
            self.init(order_id: orderID, status: outcome?.status ?? "pending", reason: outcome?.reason)
        }
        func writeWire(_ w: inout JSONWriter) {
            w.beginObject(); w.field("order_id", order_id); w.field("status", status); w.field("reason", reason); w.endObject()
        }
    }

    /// `GET /v1/orders`' answer, `{"orders": [...], "next_after"?}`: the orders up to the one
    /// that would take it past `bytesMax` (the first always goes), and `next_after`, the last
    /// order given, when that cut some off or `more` are left past `orders`.
    static func orderPage(_ orders: [OrderStore.Order], more: Bool, bytesMax: Int) -> [UInt8] {
        var body = Array(#"{"orders":["#.utf8)
        var given = 0
        for order in orders {
            let encoded = order.wireJSON
            if given > 0 && body.count + 1 + encoded.count > bytesMax { break }
            if given > 0 { body.append(UInt8(ascii: ",")) }
            body += encoded
            given += 1
        }
        body.append(UInt8(ascii: "]"))
        if given > 0 && (given < orders.count || more) {
            var next = JSONWriter()
            next.value(orders[given - 1].orderID)
            body += Array(#","next_after":"#.utf8) + next.bytes
        }
        body.append(UInt8(ascii: "}"))
        return body
    }

    private func route(_ request: HTTPRequest, _ responder: HTTPResponder) -> Bool {
        if let response = outbox.handleInbox(request) {
            responder.send(response)
            // Answers may have settled orders that clients wait for.
            if waiterCount > 0 { recheckWaiters() }
            return true
        }
        // The outbox admin API (`txctl outbox URL list|replay|discard`), as every relay host serves it:
        // a dead-lettered OrderPlaced can be seen and sent again.
        if let response = OutboxAdminAPI.handle(request, relay: outbox.relay, nowMs: SystemClock.wallMs()) {
            responder.send(response)
            return true
        }
        let parts = request.pathComponents
        guard parts.count >= 2, parts[0] == "v1", parts[1] == "orders" else { return false }
        switch (request.method, parts.count) {
        case ("POST", 2):
            place(request, responder)
        case ("GET", 2):
            let status = request.query["status"]
            if let status, !["pending", "confirmed", "rejected"].contains(status) {
                responder.send(.error(400, "status must be pending, confirmed or rejected"))
                return true
            }
            let limit = request.query["limit"].map { Int($0) ?? 0 } ?? Limits.demoOrdersListedMax
            guard limit >= 1, limit <= Limits.demoOrdersListedMax else {
                responder.send(.error(400, "limit must be 1-\(Limits.demoOrdersListedMax)"))
                return true
            }
            do {
                let page = try store.list(status: status, after: request.query["after"], limit: limit)
                responder.send(.jsonBytes(200, Self.orderPage(page.orders, more: page.more, bytesMax: Limits.demoOrdersListedBytesMax)))
            } catch let e as OrderStoreError {
                responder.send(.error(400, e.description))
            } catch {
                responder.send(.error(500, "order store read failed: \(error)"))
            }
        case ("GET", 3):
            var waitMs: Int64 = 0
            if let text = request.query["wait_ms"] {
                guard let ms = Int64(text), ms >= 0, ms <= Limits.demoOrderWaitMsMax else {
                    responder.send(.error(400, "wait_ms must be an integer 0-\(Limits.demoOrderWaitMsMax)"))
                    return true
                }
                waitMs = ms
            }
            do {
                guard let order = try store.get(parts[2]) else {
                    responder.send(.error(404, "no order \(parts[2].prefix(80))"))
                    return true
                }
                guard order.status == "pending", waitMs > 0 else {
                    responder.send(.jsonBytes(200, order.wireJSON))
                    return true
                }
                guard waiterCount < Limits.demoOrderWaitersMax else {
                    responder.send(.error(503, "\(Limits.demoOrderWaitersMax) clients already wait for orders; retry, or ask without wait_ms"))
                    return true
                }
                wait(for: order.orderID, responder, waitMs: waitMs)
            } catch {
                responder.send(.error(500, "order store read failed: \(error)"))
            }
        default:
            responder.send(.error(405, "no route for \(request.method) \(request.path)"))
        }
        return true
    }

    // MARK: - waiting for an order to settle (`GET /v1/orders/{id}?wait_ms=N`)

    private final class OrderWaiter {
        let responder: HTTPResponder
        /// A repeated `POST /v1/orders` (answered 201 `{"order_id", "status"}`), not a `GET`.
        let placing: Bool
        var timer: TimerHandle?
        init(_ responder: HTTPResponder, placing: Bool) {
            self.responder = responder
            self.placing = placing
        }
    }

    /// Clients waiting for a pending order, by order id; loop thread only.
    private var waiters: [String: [OrderWaiter]] = [:]
    private var waiterCount = 0
    private var recheckScheduled = false

    /// Holds the request until the order settles (an answer in the inbox, or the settling of a
    /// 2PC/3PC/TCC order) or `waitMs` passes, then answers with the order as it is then. A
    /// client of an outbox order learns its outcome in one request instead of polling.
    private func wait(for orderID: String, _ responder: HTTPResponder, waitMs: Int64, placing: Bool = false) {
        let waiter = OrderWaiter(responder, placing: placing)
        waiter.timer = agent.loop.schedule(afterMs: waitMs) { [weak self, weak waiter] in
            guard let self, let waiter else { return }
            self.answerWaiters(orderID, only: waiter)
        }
        waiters[orderID, default: []].append(waiter)
        waiterCount += 1
        scheduleRecheck()
    }

    /// Answers the clients waiting on `orderID` (all of them, or only `only`, whose wait ran out)
    /// with the order as it is now.
    private func answerWaiters(_ orderID: String, only: OrderWaiter? = nil) {
        guard let list = waiters[orderID] else { return }
        let answering = only.map { w in list.filter { $0 === w } } ?? list
        let staying = list.filter { w in !answering.contains { $0 === w } }
        waiters[orderID] = staying.isEmpty ? nil : staying
        waiterCount -= answering.count
        let order: Result<OrderStore.Order?, Error> = Result { try store.get(orderID) }
        for w in answering {
            if let t = w.timer { agent.loop.cancel(t) }
            switch order {
            case .success(let o?): w.responder.send(.jsonBytes(w.placing ? 201 : 200, w.placing ? Created(o).wireJSON : o.wireJSON))
            case .success(nil): w.responder.send(.error(404, "no order \(orderID.prefix(80))"))
            case .failure(let error): w.responder.send(.error(500, "order store read failed: \(error)"))
            }
        }
    }

    /// Answers the waiters whose order is no longer pending.
    private func recheckWaiters() {
        for orderID in Array(waiters.keys) {
            if let status = try? store.get(orderID)?.status, status != "pending" { answerWaiters(orderID) }
        }
    }

    /// While anyone waits, reads their orders again every `Limits.demoOrderWaitRecheckMs`.
    private func scheduleRecheck() {
        guard !recheckScheduled, waiterCount > 0 else { return }
        recheckScheduled = true
        _ = agent.loop.schedule(afterMs: Limits.demoOrderWaitRecheckMs) { [weak self] in
            guard let self else { return }
            self.recheckScheduled = false
            self.recheckWaiters()
            self.scheduleRecheck()
        }
    }

    private func place(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let body: OrderBody
        switch decodeBody(OrderBody.self, request) {
        case .failure(let e): return responder.send(.error(400, e.description))
        case .success(let b): body = b
        }
        guard validSku(body.sku) else { return responder.send(.error(400, skuRule)) }
        guard body.qty > 0, body.qty <= Limits.demoOrderQtyMax else {
            return responder.send(.error(400, "qty must be 1-\(Limits.demoOrderQtyMax)"))
        }
        guard Self.modes.contains(body.mode) else {
            return responder.send(.error(400, "mode must be one of \(Self.modes.joined(separator: ", "))"))
        }
        if let requestID = body.requestID, !Self.validRequestID(requestID) {
            return responder.send(.error(400, Self.requestIDRule))
        }
        if body.mode == "outbox" {
            // The order and its OrderPlaced commit together; the inventory's answer settles it.
            // A repeated request id is found by its unique index, which refuses the whole write
            // (no read first: it would take the store's lock, held through other orders' syncs).
            let id = UUID().uuidString.lowercased()
            do {
                try outbox.place(orderID: id, sku: body.sku, qty: body.qty, requestID: body.requestID, replyTo: replyURL)
            } catch let full as OutboxBacklogFull {
                // Nothing was written; the order can be sent again once the relay catches up.
                return responder.send(.error(503, "\(full)"))
            } catch {
                // A repeat: the unique request id refused this one's row.
                if let requestID = body.requestID, let existing = try? store.get(requestID: requestID) {
                    return answerRepeat(existing, body, responder)
                }
                return responder.send(.error(500, "order store write failed: \(error)"))
            }
            CrashPoints.hit("order-service.after-outbox-commit")
            return responder.send(.jsonBytes(201, Created(id, nil).wireJSON))
        }
        let order = OrderStore.Order(orderID: UUID().uuidString.lowercased(), sku: body.sku, qty: body.qty, mode: body.mode,
                                     status: "pending", txid: nil, requestID: body.requestID)
        let loop = agent.loop
        let accepted = workers.run { [self] in
            let placed = Result { order.mode == "tcc" ? try self.runTCC(order) : try self.runAtomic(order) }
            loop.execute {
                switch placed {
                case .success(.settled(let outcome)): responder.send(.jsonBytes(201, Created(order.orderID, outcome).wireJSON))
                case .success(.repeated(let existing)): self.answerRepeat(existing, body, responder)
                // Nothing was written: the client may send the same request id again later.
                case .success(.notPlaced(let why)): responder.send(.error(503, why))
                case .failure(let error): responder.send(.error(500, "order store write failed: \(error)"))
                }
            }
        }
        if !accepted { responder.send(.error(503, "too many orders waiting for a worker (\(Limits.demoOrdersWaitingMax)); try again")) }
    }

    /// A `POST /v1/orders` whose request id names an order already placed (loop thread): that
    /// order, placed once. A different body under the same id is a client's mistake: 409. A
    /// 2PC/3PC/TCC order still pending is being placed (or settled) on behalf of the first
    /// request; this one waits for it as the first does, up to `Limits.demoSettleWaitMs`, and
    /// is then answered with the status it has. An outbox order answers at once, as the first did.
    private func answerRepeat(_ existing: OrderStore.Order, _ body: OrderBody, _ responder: HTTPResponder) {
        guard existing.sku == body.sku, existing.qty == body.qty, existing.mode == body.mode else {
            return responder.send(.error(409, "request_id \(body.requestID ?? "") already placed order \(existing.orderID) "
                                         + "(sku \(existing.sku), qty \(existing.qty), mode \(existing.mode)); another order needs another request_id"))
        }
        if existing.status == "pending", existing.mode != "outbox", waiterCount < Limits.demoOrderWaitersMax {
            return wait(for: existing.orderID, responder, waitMs: Limits.demoSettleWaitMs, placing: true)
        }
        responder.send(.jsonBytes(201, Created(existing).wireJSON))
    }

    /// Writes the order row unless its request id has one already: then that order, and
    /// nothing was written.
    private func insertUnlessRepeated(_ row: OrderStore.Order) throws -> OrderStore.Order? {
        do {
            try store.insert(row)
            return nil
        } catch {
            if let requestID = row.requestID, let existing = try? store.get(requestID: requestID) { return existing }
            throw error
        }
    }

    /// What `beginOrder` did: the pending row is written with this transaction; or nothing is
    /// written because no transaction could begin (why); or another request with the same
    /// request id placed its order first (nothing written; a transaction begun is aborted).
    enum Begun {
        case txid(String)
        case coordinatorUnavailable(String)
        case repeated(OrderStore.Order)
    }

    /// Begins the order's transaction, then writes the order row carrying its txid: one synced
    /// SQLite write per order where a row and then its txid took two, and none of it on the
    /// event loop, which also serves this participant's branches. When no transaction can begin
    /// nothing is written: the order was never placed, so its request id stays free and the
    /// client can send it again once the coordinator is back (a row written `rejected` kept
    /// that request id rejected for good, and told the client nothing of why). A crash between
    /// the begin and the row leaves a transaction without work, which the coordinator aborts
    /// when it expires, and no order.
    private func beginOrder(_ order: OrderStore.Order, protocol: String) throws -> Begun {
        // A repeated request id (a client whose answer was lost) is found when the row's insert
        // meets the unique index: a read first cost every order a wait for the store's lock,
        // held through other orders' synced writes (8% of the demo rows' throughput), and a
        // repeat only costs a transaction begun and aborted.
        var row = order
        let txid: String
        do {
            txid = try api.with { try $0.begin(protocol: `protocol`) }
        } catch {
            // An order placed earlier under this request id (its answer was lost) is still
            // that order, coordinator or not.
            if let requestID = order.requestID, let existing = try store.get(requestID: requestID) { return .repeated(existing) }
            return .coordinatorUnavailable("coordinator unavailable: \(error); the order was not placed, send it again later")
        }
        row.txid = txid
        let repeated: OrderStore.Order?
        do {
            repeated = try insertUnlessRepeated(row)
        } catch {
            _ = try? api.with { try $0.abort(txid) }
            throw error
        }
        if let repeated {
            // Nothing joined it: abort now rather than leave it to expire.
            _ = try? api.with { try $0.abort(txid) }
            return .repeated(repeated)
        }
        CrashPoints.hit("order-service.after-order-row-inserted")
        return .txid(txid)
    }

    /// 2PC / 3PC: the order's branch here and the stock's branch at the inventory commit or
    /// abort together. Returns how the order settled (or the order a repeat of its request id
    /// placed first, or that nothing was placed); throws only when the order row cannot be
    /// written.
    private func runAtomic(_ order: OrderStore.Order) throws -> Placement {
        let id: String
        switch try beginOrder(order, protocol: order.mode == "3pc" ? "3pc" : "2pc") {
        case .txid(let txid): id = txid
        case .coordinatorUnavailable(let why): return .notPlaced(why)
        case .repeated(let existing): return .repeated(existing)
        }
        return .settled(placeAtomic(order, id))
    }

    /// How the order settled; nil while that is unknown (it is then settled in the background).
    private func placeAtomic(_ order: OrderStore.Order, _ id: String) -> OrderStore.Outcome? {
        do {
            return try api.with { api -> OrderStore.Outcome in
                // Staging failed: the transaction is aborted here, and the coordinator's reason
                // would only say so ("aborted by client"); what failed, and where, is the reason.
                func stage(_ url: String, _ ops: [WorkOp], _ what: String) throws -> OrderStore.Outcome? {
                    do {
                        _ = try api.agentWork(url, id, ops)
                        return nil
                    } catch {
                        _ = try? api.abort(id)
                        let outcome = OrderStore.Outcome.rejected(reason: RejectionReason.make(DemoRejection.aborted, "\(what) failed: \(error)"))
                        try store.settle(order.orderID, outcome)
                        return outcome
                    }
                }
                if let failed = try stage(selfURL, [.set("order/\(order.orderID)", order.qty)],
                                          "staging the order at the order service's participant") {
                    return failed
                }
                if let failed = try stage(options.inventoryURL, [.add("available/\(order.sku)", -order.qty, min: 0),
                                                                 .add("sold/\(order.sku)", order.qty)],
                                          "staging the stock at the inventory") {
                    return failed
                }
                CrashPoints.hit("order-service.after-order-row-committed-before-commit-call")
                let answer = try api.commit(id)
                var outcome = answer.outcome == "committed"
                    ? OrderStore.Outcome.confirmed : .rejected(reason: RejectionReason.fromAbort(answer.reason, sku: order.sku, qty: order.qty))
                if TestOnlyBreak.fromEnvironment() == .orderStatusInverted {
                    // TEST ONLY (debug builds): the wrong status for the transaction's outcome.
                    outcome = outcome == .confirmed ? .rejected(reason: RejectionReason.make(DemoRejection.aborted, "test only: status inverted")) : .confirmed
                }
                CrashPoints.hit("order-service.after-commit-answer-before-settle")
                try store.settle(order.orderID, outcome)
                return outcome
            }
        } catch {
            // The answer was lost (coordinator or network down): our own branch knows.
            return settleAfterLostAnswer(order, txid: id)
        }
    }

    /// A call failed mid-order (the order row and its transaction exist): its outcome is looked
    /// up for a while, then, still unsure, answered pending and settled in the background.
    private func settleAfterLostAnswer(_ order: OrderStore.Order, txid: String) -> OrderStore.Outcome? {
        var o = order
        o.txid = txid
        if let outcome = settle(o, waitMs: Limits.demoSettleWaitMs) { return outcome }
        settleInBackground(o)
        return nil
    }

    /// Why an order settled rejected away from its commit answer (a lost answer, a restart):
    /// the coordinator's reason, asked once; it may be down, or have forgotten the transaction.
    private func abortReason(_ order: OrderStore.Order, txid: String, _ api: CohortAPI) -> String {
        do {
            guard let view = try api.transaction(txid) else {
                return RejectionReason.make(DemoRejection.aborted, "the coordinator has no record of the transaction "
                                            + "(lost in a restart before it decided, or forgotten since)")
            }
            return RejectionReason.fromAbort(view.reason, sku: order.sku, qty: order.qty)
        } catch {
            return RejectionReason.make(DemoRejection.aborted, "the transaction did not commit; the coordinator could not be asked why: \(error)")
        }
    }

    /// The outcome of a 2PC/3PC order from this participant's own branch: once the branch is
    /// no longer open here, the order key exists exactly when the transaction committed.
    /// Returned only once the order row holds it: when writing it fails (a full disk), nil at
    /// once, and the order is asked about again (the settler's next round), so a client is never
    /// told an outcome its order's row does not show. Such writes were ignored: a client was
    /// answered `confirmed` while `GET /v1/orders/{id}` said `pending`, and the settler let the
    /// order go, so it stayed pending after the space was freed, until a restart.
    private func settle(_ order: OrderStore.Order, waitMs: Int64) -> OrderStore.Outcome? {
        let deadline = Date().addingTimeInterval(Double(waitMs) / 1000)
        return api.with { api -> OrderStore.Outcome? in
            while true {
                let row = try? store.get(order.orderID)
                if let row, let outcome = Self.settledOutcome(row) { return outcome }
                guard let txid = order.txid else {
                    // Only an order service from before the txid went into the row's insert
                    // wrote a row without one: its crash left an order never placed.
                    let outcome = OrderStore.Outcome.rejected(reason: RejectionReason.make(DemoRejection.orderService,
                                                                                         "it restarted before the order had a transaction"))
                    return recorded(order, outcome)
                }
                if order.mode == "tcc" {
                    // The row's age (an order placed just now has none in `order`).
                    let ageMs = row.map { SystemClock.wallMs() - $0.createdMs } ?? Int64.max
                    if let status = settleTCC(txid, ageMs: ageMs, api) {
                        let outcome = status == "confirmed" ? OrderStore.Outcome.confirmed : .rejected(reason: abortReason(order, txid: txid, api))
                        return recorded(order, outcome)
                    }
                    if Date() > deadline { return nil }
                    Thread.sleep(forTimeInterval: 0.2)
                    continue
                }
                if let r = try? api.raw("GET", selfURL + "/v1/branches/\(txid)") {
                    let branch = Self.ownBranch(status: r.status, body: r.body)
                    if branch != .open, let present = try? (api.kv(selfURL, "order/\(order.orderID)") != nil) {
                        switch branch {
                        case .heuristic(let state):
                            let outcome: OrderStore.Outcome = present ? .confirmed
                                : .rejected(reason: RejectionReason.make(DemoRejection.aborted, "an operator forced the order's branch at the order service (\(state))"))
                            guard let settled = recorded(order, outcome) else { return nil }
                            onNote?("order \(order.orderID) settled \(settled.status) from an operator's decision at this participant (branch \(txid) "
                                    + "\(state)); the coordinator's outcome may differ: txctl agent \(selfURL) show \(txid)")
                            return settled
                        default:
                            // Without our branch the transaction cannot commit: abort it now so the
                            // coordinator agrees at once instead of when the transaction expires
                            // (a crash between the begin and the work leaves it open).
                            if !present { _ = try? api.abort(txid) }
                            return recorded(order, present ? .confirmed : .rejected(reason: abortReason(order, txid: txid, api)))
                        }
                    }
                }
                if Date() > deadline { return nil }
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
    }

    /// Orders whose outcome could not be written, said once each (`onNote`) until it is.
    private var unwrittenNoted: Set<String> = []

    /// Writes `outcome` into the pending order's row; what the row then holds, or nil when the
    /// write failed (the order stays pending and `settle` is asked again later).
    private func recorded(_ order: OrderStore.Order, _ outcome: OrderStore.Outcome) -> OrderStore.Outcome? {
        do {
            let wrote = try store.settle(order.orderID, outcome)
            inDoubtLock.withLock { _ = unwrittenNoted.remove(order.orderID) }
            if wrote { return outcome }
            // No longer pending: another settling got there first, and the row says how.
            if let row = try store.get(order.orderID), let settled = Self.settledOutcome(row) { return settled }
            return outcome
        } catch {
            let first = inDoubtLock.withLock { unwrittenNoted.insert(order.orderID).inserted }
            if first {
                onNote?("order \(order.orderID): its outcome (\(outcome.status)) could not be written to the order store: \(error); "
                        + "it stays pending and is written again every \(Limits.demoSettleRoundMs) ms")
            }
            return nil
        }
    }

    /// A row's outcome once it is no longer pending. Every row this service rejects carries a
    /// reason; one rejected before reasons were kept is said to be so, as it cannot say why.
    static func settledOutcome(_ row: OrderStore.Order) -> OrderStore.Outcome? {
        switch row.status {
        case "pending": return nil
        case "confirmed": return .confirmed
        default: return .rejected(reason: row.reason ?? RejectionReason.make(DemoRejection.aborted, "rejected before reasons were kept"))
        }
    }

    /// TCC: the coordinator drives the inventory's reserve (try), then confirm or cancel; the
    /// order goes pending → confirmed, or → rejected when the reservation was refused/cancelled.
    private func runTCC(_ order: OrderStore.Order) throws -> Placement {
        let id: String
        switch try beginOrder(order, protocol: "tcc") {
        case .txid(let txid): id = txid
        case .coordinatorUnavailable(let why): return .notPlaced(why)
        case .repeated(let existing): return .repeated(existing)
        }
        return .settled(placeTCC(order, id))
    }

    /// How the order settled; nil while that is unknown (it is then settled in the background).
    private func placeTCC(_ order: OrderStore.Order, _ id: String) -> OrderStore.Outcome? {
        do {
            return try api.with { api -> OrderStore.Outcome in
                let base = options.inventoryURL + "/v1/tcc/inventory"
                let branch = TCCBranchRequest(branchID: Self.tccBranchID, tryURL: base + "/try", confirmURL: base + "/confirm",
                                              cancelURL: base + "/cancel",
                                              payload: .object(["sku": .string(order.sku), "qty": .int(order.qty)]))
                let r = try api.raw("POST", options.coordinatorURL + "/v1/transactions/\(id)/tcc-branches", body: branch.wireJSON)
                if r.status != 200 {
                    // Refused or failed try: the coordinator cancels the transaction. Its answer
                    // says why (the try's own refusal, e.g. too little stock, inside it).
                    _ = try? api.abort(id)
                    let error = (try? ErrorBody(wireJSON: r.body).error) ?? "HTTP \(r.status) registering the stock's branch"
                    let outcome = OrderStore.Outcome.rejected(reason: RejectionReason.fromAbort(error, sku: order.sku, qty: order.qty))
                    try store.settle(order.orderID, outcome)
                    return outcome
                }
                CrashPoints.hit("order-service.after-tcc-try-before-commit-call")
                let answer = try api.commit(id)
                let outcome = answer.outcome == "committed"
                    ? OrderStore.Outcome.confirmed : .rejected(reason: RejectionReason.fromAbort(answer.reason, sku: order.sku, qty: order.qty))
                CrashPoints.hit("order-service.after-tcc-decision-before-settle")
                try store.settle(order.orderID, outcome)
                return outcome
            }
        } catch {
            return settleAfterLostAnswer(order, txid: id)
        }
    }

    /// What the coordinator says about a TCC order's transaction.
    enum TCCCoordinatorView: Equatable {
        case state(String)
        /// 404 or 410: it has no record. It forgets finished transactions past
        /// `Limits.finishedTransactionsKept` (410 for one that may have been confirmed), and
        /// one that had no branch record when it restarted; either way nothing more happens.
        case forgotten
        case unreachable
    }

    /// What the inventory's TCC barrier says about the order's branch
    /// (`GET /v1/tcc/inventory/branches/{txid}/stock`, `TCCResource.branchState`).
    enum TCCBranchView: Equatable {
        case state(String, retentionMs: Int64)
        case unreachable
    }

    /// A TCC order's status, or nil while it cannot be known yet. The coordinator's word first:
    /// `committed`/`confirming` → confirmed, `aborted`/`cancelling` → rejected. Otherwise (it
    /// forgot the transaction, cannot be reached, or has not decided) the inventory's barrier,
    /// the durable fact at the one place that took the stock: a confirm ran → confirmed; a
    /// cancel ran, or the try was fenced → rejected. A forgotten transaction with no barrier
    /// rows at all never reached its try (the coordinator forces a branch record before it
    /// calls a try, and one it forgot can no longer call it) — unless the rows were purged:
    /// that is ruled out only while the order is younger than the barrier's retention, less a
    /// clock-skew margin for each of the two services' clocks. Older, the order is left
    /// pending: a guess could record a sold order as rejected. A 404 alone never rejects an
    /// order: the coordinator forgets confirmed transactions too.
    static func tccStatus(coordinator: TCCCoordinatorView, branch: TCCBranchView?, orderAgeMs: Int64) -> String? {
        if case .state(let state) = coordinator {
            switch state {
            case "committed", "confirming": return "confirmed"
            case "aborted", "cancelling": return "rejected"
            default: break
            }
        }
        guard case .state(let branchState, let retentionMs)? = branch else { return nil }
        switch branchState {
        case "confirmed": return "confirmed"
        case "cancelled", "fenced": return "rejected"
        case "none" where coordinator == .forgotten && orderAgeMs < retentionMs - 2 * Limits.tccClockSkewMarginMs: return "rejected"
        default: return nil
        }
    }

    struct TCCBranchAnswer: Decodable { let state: String; let barrier_retention_ms: Int64 }

    /// Asks the coordinator, and when it does not settle the order, the inventory.
    private func settleTCC(_ txid: String, ageMs: Int64, _ api: CohortAPI) -> String? {
        let coordinator: TCCCoordinatorView
        switch try? api.raw("GET", options.coordinatorURL + "/v1/transactions/\(txid)") {
        case let r? where r.status == 404 || r.status == 410: coordinator = .forgotten
        case let r? where r.status == 200:
            coordinator = (try? JSONDecoder().decode(TransactionView.self, from: Data(r.body))).map { .state($0.state) } ?? .unreachable
        default: coordinator = .unreachable
        }
        if let status = Self.tccStatus(coordinator: coordinator, branch: nil, orderAgeMs: ageMs) { return status }
        let branch: TCCBranchView
        if let r = try? api.raw("GET", options.inventoryURL + "/v1/tcc/inventory/branches/\(txid)/\(Self.tccBranchID)"), r.status == 200,
           let answer = try? JSONDecoder().decode(TCCBranchAnswer.self, from: Data(r.body)) {
            branch = .state(answer.state, retentionMs: answer.barrier_retention_ms)
        } else {
            branch = .unreachable
        }
        return Self.tccStatus(coordinator: coordinator, branch: branch, orderAgeMs: ageMs)
    }

    struct BranchState: Decodable { let state: String }

    /// Where this participant's own branch of a 2PC/3PC order stands (`GET /v1/branches/{txid}`
    /// here: its status and body).
    enum OwnBranch: Equatable {
        /// Still open: the order key says nothing yet.
        case open
        /// Finished (committed or aborted), or unknown here (404: never joined, or forgotten):
        /// the order key exists exactly when the transaction committed.
        case finished
        /// An operator forced the branch (`heuristic-committed`, `heuristic-aborted`, or
        /// `heuristic-mixed` once the coordinator's outcome turned out different). The forced
        /// outcome is applied here and final for this participant, so the order key settles the
        /// order as the operator decided; the coordinator's outcome may differ, which is the
        /// operator's to reconcile (and is noted). Left open, the order would stay pending
        /// until the coordinator answered, and for ever for a mixed branch.
        case heuristic(String)
    }

    static func ownBranch(status: Int, body: [UInt8]) -> OwnBranch {
        if status == 404 { return .finished }
        guard status == 200, let state = try? JSONDecoder().decode(BranchState.self, from: Data(body)).state else { return .open }
        switch state {
        case "committed", "aborted": return .finished
        case "heuristic-committed", "heuristic-aborted", "heuristic-mixed": return .heuristic(state)
        default: return .open
        }
    }

    /// Orders whose outcome is not known yet (found pending at start, or an answer lost for
    /// longer than `demoSettleWaitMs`): one background thread asks again about each of them,
    /// round after round, until every one is settled. One thread for all of them, not one each:
    /// a coordinator down for long must not take every order worker.
    private func settleInBackground(_ order: OrderStore.Order, abandoned: Bool = false) {
        inDoubtLock.lock()
        inDoubt[order.orderID] = order
        if abandoned && order.txid != nil { self.abandoned.insert(order.orderID) }
        let start = !settlerRunning
        settlerRunning = true
        inDoubtLock.unlock()
        onNote?("order \(order.orderID) (txid \(order.txid ?? "none")) still in doubt; asking again every \(Limits.demoSettleRoundMs) ms")
        guard start else { return }
        let thread = Thread { [weak self] in self?.settleRounds() }
        thread.name = "order-settler"
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Asks the coordinator to abort the transaction of an order found pending at start (see
    /// `run`). True once the coordinator answered, whatever it answered: an abort (200), or a
    /// refusal because it decided commit first (409), or no such transaction (404: forgotten
    /// or never begun), all of which `settle` then reads. False when the answer was lost.
    private func abortAbandoned(_ order: OrderStore.Order) -> Bool {
        guard let txid = order.txid else { return true }
        do {
            _ = try api.with { try $0.abort(txid) }
            return true
        } catch CohortAPIError.transport {
            return false
        } catch {
            return true
        }
    }

    private func settleRounds() {
        while true {
            inDoubtLock.lock()
            let round = Array(inDoubt.values)
            if round.isEmpty {
                settlerRunning = false
                inDoubtLock.unlock()
                return
            }
            let toAbort = round.filter { abandoned.contains($0.orderID) }
            inDoubtLock.unlock()
            for order in toAbort where abortAbandoned(order) {
                inDoubtLock.lock()
                abandoned.remove(order.orderID)
                inDoubtLock.unlock()
            }
            for order in round where settle(order, waitMs: 0) != nil {
                inDoubtLock.lock()
                inDoubt[order.orderID] = nil
                abandoned.remove(order.orderID)
                inDoubtLock.unlock()
            }
            Thread.sleep(forTimeInterval: Double(Limits.demoSettleRoundMs) / 1000)
        }
    }
}
