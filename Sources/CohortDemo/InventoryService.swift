import CohortAgent
import CohortClient
import CohortCore
import CohortHTTP
import CohortKV
import CohortOutbox
import CohortPosix
import CohortRuntime
import CohortTCC
import Foundation

/// The inventory of the demo: stock per sku in the embedded participant's SQLite store, as keys
/// `available/{sku}`, `reserved/{sku}` and `sold/{sku}`. It is a Cohort participant (2PC and 3PC)
/// through `AgentServer`: an order's branch here is `add available/{sku} -qty (min 0)` and
/// `add sold/{sku} +qty`, so too little stock makes the branch vote no.
public final class InventoryService: RunnableServer {
    public struct Options {
        public var dataDirectory: String
        public var coordinatorURL: String
        public var host = "127.0.0.1"
        public var port = 0
        public var name = "inventory"
        /// redis://HOST:PORT: outbox messages through Redis Streams instead of HTTP.
        public var broker: String?
        /// The address the coordinator calls the participant back on (default http://HOST:PORT).
        public var advertiseURL: String?
        /// Required on every call in and sent on every call out (`--token-file`).
        public var token: String?
        /// The order service's base URL: every outbox answer goes to its `/v1/inbox` instead of
        /// the `reply_to` its `OrderPlaced` carried (`--reply-to`; HTTP delivery only).
        public var replyToURL: String?
        /// How long a TCC phase on a sku a 2PC/3PC branch holds locked waits for the locks
        /// (`--tcc-lock-wait-ms`, 0 to `Limits.demoTCCLockWaitMs`; 0: answered busy at once).
        public var tccLockWaitMs = Limits.demoTCCLockWaitMs
        /// TCC phases waiting so at once (`--tcc-lock-waiters-max`, 0 to `Limits.demoTCCLockWaitersMax`),
        /// on all skus together; on one sku at most `Limits.demoTCCLockWaitersPerSkuMax` of them.
        public var tccLockWaitersMax = Limits.demoTCCLockWaitersMax
        /// Problems worth logging (a lost broker connection); the library never prints.
        public var onProblem: (String) -> Void = { _ in }
        public init(dataDirectory: String, coordinatorURL: String) {
            self.dataDirectory = dataDirectory
            self.coordinatorURL = coordinatorURL
        }
    }

    /// The inventory's own steps (a TCC phase's local transaction committed, before its answer),
    /// then its participant's, relay's and inbox's (docs/demo.md, "Crash points").
    public static let ownCrashPoints = TCCPhase.allCases.map { "inventory-service.after-tcc-\($0.rawValue)-committed" }
    public static let crashPoints = ownCrashPoints + AgentServer.crashPoints + OutboxRelay.crashPoints + Inbox.crashPoints

    public let agent: AgentServer
    private let api: APIPool
    private let workers = Workers()
    private var selfURL = ""
    public private(set) var tcc: TCCResource!
    /// Purges finished TCC barrier rows past their retention, every `Limits.tccPurgeIntervalMs`.
    private var tccPurger: TCCBarrierPurger?
    private var outbox: InventoryOutbox!
    /// The inbox's rows past `Limits.inboxRetentionMsDefault`, aged by a clock a wall-clock step
    /// forward does not hurry (`InboxCleaner`).
    private var inboxCleaner: InboxCleaner!

    public var port: Int { agent.port }
    public var recoveryNote: String? { agent.recoveryNote }

    public init(options: Options, loop: EventLoop, onFatal: @escaping (String) -> Void) throws {
        guard (0...Limits.demoTCCLockWaitMs).contains(options.tccLockWaitMs),
              (0...Limits.demoTCCLockWaitersMax).contains(options.tccLockWaitersMax) else {
            throw UsageError("the TCC lock wait must be 0-\(Limits.demoTCCLockWaitMs) ms and its waiters 0-\(Limits.demoTCCLockWaitersMax)")
        }
        tccWaits = SkuLockWaits(waitMs: options.tccLockWaitMs, waitersMax: options.tccLockWaitersMax)
        api = APIPool(coordinatorURL: options.coordinatorURL, token: options.token)
        var agentOptions = AgentServer.Options(name: options.name, dataDirectory: options.dataDirectory, coordinatorURL: options.coordinatorURL)
        agentOptions.host = options.host
        agentOptions.port = options.port
        agentOptions.advertiseURL = options.advertiseURL
        // The participant's server requires it (so every route of this service does, TCC phases
        // too) and its client sends it to the coordinator.
        agentOptions.token = options.token
        weak var weakSelf: InventoryService?
        agentOptions.routes = { request, responder in weakSelf?.route(request, responder) ?? false }
        // The TCC and outbox tables below live in the same SQLite file, on connections of their own.
        agentOptions.storeIsExclusive = false
        agent = try AgentServer(options: agentOptions, loop: loop, onFatal: onFatal)
        selfURL = "http://\(options.host):\(agent.port)"
        let agent = self.agent
        tcc = try InventoryTCC.make(databasePath: options.dataDirectory + "/kv.sqlite") { key in
            !agent.node.resource.lockHolders(key).isEmpty
        }
        // TCC phases waiting for a sku's locks look again as soon as a branch lets go of keys,
        // instead of polling the lock table (the deadline timer only ends waits).
        agent.node.resource.onKeysReleased = { _ in weakSelf?.keysReleased() }
        tcc.afterCommit = { phase, outcome in
            if case .done = outcome { CrashPoints.hit("inventory-service.after-tcc-\(phase.rawValue)-committed") }
        }
        outbox = try InventoryOutbox(path: options.dataDirectory + "/kv.sqlite", broker: options.broker,
                                     replyTo: options.replyToURL.map { $0 + "/v1/inbox" }, token: options.token, loop: loop, busy: { sku in
            !agent.node.resource.lockHolders("available/\(sku)").isEmpty || !agent.node.resource.lockHolders("sold/\(sku)").isEmpty
        }, onProblem: options.onProblem)
        inboxCleaner = InboxCleaner(inbox: outbox.inbox, retentionMs: Limits.inboxRetentionMsDefault)
        weakSelf = self
    }

    /// Every `Limits.demoMaintenanceIntervalMs` on the loop: inbox rows past
    /// `Limits.inboxRetentionMsDefault`. Failures wait for the next round. (Finished TCC barrier
    /// rows have their own timer: `TCCBarrierPurger`, started in `run()`.)
    private func maintain() {
        _ = inboxCleaner.round(rowsMax: Limits.outboxCleanupRowsMax)
        _ = agent.loop.schedule(afterMs: Limits.demoMaintenanceIntervalMs) { [weak self] in self?.maintain() }
    }

    public func run() throws {
        _ = agent.loop.schedule(afterMs: Limits.demoMaintenanceIntervalMs) { [weak self] in self?.maintain() }
        let loop = agent.loop
        let purger = TCCBarrierPurger(resource: tcc) { ms, body in _ = loop.schedule(afterMs: ms, body) }
        tccPurger = purger
        agent.node.declareMetrics { m in
            tcc.declareMetrics(m, purger: purger)
            m.sample("cohort_demo_tcc_phases_waiting", help: "TCC phases waiting for their sku's 2PC/3PC locks",
                     labels: "resource=\"\(tcc.name)\"") { [weak self] in Double(self?.tccWaits.count ?? 0) }
            for result in TCCLockWaitResult.allCases {
                m.sample("cohort_demo_tcc_lock_waits_total", type: "counter",
                         help: "TCC phases that found their sku locked by a 2PC/3PC branch, by how their wait ended",
                         labels: "resource=\"\(tcc.name)\",result=\"\(result.rawValue)\"") { [weak self] in
                    Double(self?.tccWaitResults[result] ?? 0)
                }
            }
        }
        purger.start()
        outbox.relay.start()
        try agent.run()
    }

    public func shutdown() {
        tccPurger?.stop()
        outbox.consumer?.stop()
        outbox.relay.stop()
        agent.shutdown()
    }

    /// The TCC phases that arrived in one pass of the event loop, in local transactions of up to
    /// `Limits.tccPhasesPerCommitMax` phases: one SQLite sync for all of them instead of one
    /// each. A phase holds the loop through its sync (it runs between the participant's store
    /// operations, see InventoryTCC), so syncing one at a time kept the loop busy all the time
    /// at 8 clients of TCC orders (docs/benchmarks.md, round 10).
    ///
    /// A phase whose sku's keys a 2PC/3PC branch holds locked does not run then (it would race
    /// the branch's prepared values): it waits in `tccWaits` and runs once a branch releases
    /// the keys (`keysReleased`), through the barrier like any phase, so a try whose cancel
    /// came while it waited is refused then and reserves nothing. A try is known busy before it
    /// runs (its payload names the sku); a confirm or cancel only when it runs (its sku is the
    /// reservation's: `InventoryTCC.SkuBusy`, its savepoint undone). Past
    /// `Limits.demoTCCLockWaitMs`, or with `Limits.demoTCCLockWaitersMax` waiting (or
    /// `Limits.demoTCCLockWaitersPerSkuMax` on its sku), it runs and is answered as before
    /// waiting existed: a try 409 (the order rejected), a confirm or
    /// cancel 503 (the coordinator retries), saying how long it waited.
    private func runQueuedTCC() {
        let nowMs = SystemClock.monotonicMs()
        var runnable: [QueuedPhase] = []
        for entry in tccQueued {
            if entry.busyNote == nil, let sku = InventoryTCC.sku(ofTry: entry.call), skuBusy(sku) {
                if let refused = wait(entry, sku: sku, nowMs: nowMs) { runnable.append(refused) }
            } else {
                runnable.append(entry)
            }
        }
        tccQueued.removeAll()
        while !runnable.isEmpty {
            let batch = Array(runnable.prefix(Limits.tccPhasesPerCommitMax))
            runnable.removeFirst(batch.count)
            for (entry, result) in zip(batch, tcc.runBatch(batch.map(\.call))) {
                if case .failure(let busy as InventoryTCC.SkuBusy) = result {
                    var note = entry.busyNote
                    if note == nil {
                        guard let refused = wait(entry, sku: busy.sku, nowMs: nowMs) else { continue }
                        note = refused.busyNote
                    }
                    entry.responder.send(.error(503, "\(busy) (\(note ?? ""))"))
                } else if let note = entry.busyNote, case .failure(let error as TCCError) = result, case .refused(let why) = error,
                          let sku = InventoryTCC.sku(ofTry: entry.call), why == InventoryTCC.busyRefusal(sku: sku) {
                    entry.responder.send(.error(409, "\(why) (\(note))"))
                } else {
                    entry.responder.send(tcc.response(entry.call, result))
                }
            }
        }
        armTCCWaitTimer()
    }

    /// Holds `entry` until its sku is free; nil when it waits, else the entry to run now with
    /// the note its busy answer carries (too many wait already, on all skus or on its own, or
    /// its wait ran out).
    private func wait(_ entry: QueuedPhase, sku: String, nowMs: Int64) -> QueuedPhase? {
        var held = entry
        held.waitingSinceMs = entry.waitingSinceMs ?? nowMs
        switch tccWaits.wait(held, sku: sku, sinceMs: held.waitingSinceMs!, nowMs: nowMs) {
        case .held:
            return nil
        case .full:
            tccWaitResults[.full, default: 0] += 1
            held.busyNote = "no more may wait: \(tccWaits.count) TCC phases wait for locks here already, the limit"
        case .skuFull:
            tccWaitResults[.skuFull, default: 0] += 1
            held.busyNote = "no more may wait for sku \(sku): \(tccWaits.count(sku: sku)) TCC phases wait for its locks already, the limit per sku"
        case .usedUp:
            tccWaitResults[.timedOut, default: 0] += 1
            held.busyNote = "waited \(nowMs - held.waitingSinceMs!) ms for its 2PC/3PC locks, the limit"
        }
        return held
    }

    /// A branch released keys: the waiting phases whose sku is free now run (on the loop,
    /// after the commit or abort that released them).
    private func keysReleased() {
        guard !tccWaits.isEmpty, !tccRecheckQueued else { return }
        tccRecheckQueued = true
        agent.loop.execute { [weak self] in
            self?.tccRecheckQueued = false
            self?.recheckTCCWaits()
        }
    }

    /// Runs the waiting phases whose sku is free, and those whose wait ran out (they answer busy).
    private func recheckTCCWaits() {
        let nowMs = SystemClock.monotonicMs()
        let (ready, expired) = tccWaits.take(nowMs: nowMs, busy: skuBusy)
        tccWaitResults[.ran, default: 0] += ready.count
        tccWaitResults[.timedOut, default: 0] += expired.count
        for w in ready { tccQueued.append(w.entry) }
        for (w, waitedMs) in expired {
            var entry = w.entry
            entry.busyNote = "waited \(waitedMs) ms for its 2PC/3PC locks, the limit"
            tccQueued.append(entry)
        }
        if tccQueued.isEmpty { armTCCWaitTimer() } else { runQueuedTCC() }
    }

    /// A timer for the earliest wait's end (the release of keys wakes the rest).
    private func armTCCWaitTimer() {
        guard let deadlineMs = tccWaits.nextDeadlineMs else { return }
        if let at = tccWaitTimerAtMs, at <= deadlineMs { return }
        tccWaitTimerAtMs = deadlineMs
        _ = agent.loop.schedule(afterMs: max(0, deadlineMs - SystemClock.monotonicMs())) { [weak self] in
            guard let self else { return }
            if self.tccWaitTimerAtMs == deadlineMs { self.tccWaitTimerAtMs = nil }
            self.recheckTCCWaits()
        }
    }

    private func skuBusy(_ sku: String) -> Bool {
        let resource = agent.node.resource!
        return InventoryTCC.keys(sku).contains { !resource.lockHolders($0).isEmpty }
    }

    struct Stock: Codable { let sku: String; let available: Int64; let reserved: Int64; let sold: Int64 }

    /// A TCC phase to run, and its caller.
    struct QueuedPhase {
        let call: TCCResource.PhaseCall
        let responder: HTTPResponder
        /// When it first found its sku locked (monotonic ms).
        var waitingSinceMs: Int64?
        /// Set once it waits no more (its wait ran out, or too many waited): it runs, and a busy
        /// answer says why it did not wait longer.
        var busyNote: String?
    }

    /// How a TCC phase's wait for its sku's locks ended (`cohort_demo_tcc_lock_waits_total`).
    enum TCCLockWaitResult: String, CaseIterable {
        /// The sku was freed; the phase ran (and may have met the barrier's refusal).
        case ran
        /// Still locked after `Limits.demoTCCLockWaitMs`: answered busy.
        case timedOut = "timed-out"
        /// `Limits.demoTCCLockWaitersMax` were waiting (`--tcc-lock-waiters-max`), on all skus
        /// together: answered busy at once.
        case full
        /// `Limits.demoTCCLockWaitersPerSkuMax` were waiting for its sku: answered busy at once,
        /// while phases on other skus may still wait.
        case skuFull = "sku-full"
    }

    /// TCC phases read in this pass of the event loop, run together at its end.
    private var tccQueued: [QueuedPhase] = []
    /// TCC phases waiting for their sku's 2PC/3PC locks.
    private var tccWaits: SkuLockWaits<QueuedPhase>
    private var tccWaitResults: [TCCLockWaitResult: Int] = [:]
    private var tccRecheckQueued = false
    /// When the armed wait timer fires (monotonic ms); nil when none is armed.
    private var tccWaitTimerAtMs: Int64?

    private func route(_ request: HTTPRequest, _ responder: HTTPResponder) -> Bool {
        switch tcc.parse(request) {
        case nil:
            break
        case .refused(let response)?:
            responder.send(response)
            return true
        case .call(let call)?:
            tccQueued.append(QueuedPhase(call: call, responder: responder))
            if tccQueued.count == 1 { agent.loop.execute { [weak self] in self?.runQueuedTCC() } }
            return true
        }
        if let response = tcc.handleBranchQuery(request) {
            responder.send(response)
            return true
        }
        // The outbox admin API (`txctl outbox URL list|replay|discard`), as every relay host serves it:
        // a dead-lettered answer (an order service that moved) can be seen and sent again.
        if let response = OutboxAdminAPI.handle(request, relay: outbox.relay, nowMs: SystemClock.wallMs()) {
            responder.send(response)
            return true
        }
        let parts = request.pathComponents
        switch (request.method, parts.count) {
        case ("POST", 2) where parts == ["v1", "inbox"]:
            let resource = agent.node.resource!
            responder.send(outbox.handleInbox(request) { sku in
                !resource.lockHolders("available/\(sku)").isEmpty || !resource.lockHolders("sold/\(sku)").isEmpty
            })
        case ("POST", 2) where parts == ["v1", "stock"]:
            setStock(request, responder)
        case ("GET", 3) where parts[0] == "v1" && parts[1] == "stock":
            let sku = parts[2]
            guard validSku(sku) else { responder.send(.error(400, skuRule)); return true }
            do {
                func value(_ key: String) throws -> Int64? {
                    if case .int(let i)? = try agent.node.resource.get(key) { return i }
                    return nil
                }
                guard let available = try value("available/\(sku)") else {
                    responder.send(.error(404, "no stock set for sku \(sku)"))
                    return true
                }
                responder.send(.json(200, Stock(sku: sku, available: available, reserved: try value("reserved/\(sku)") ?? 0,
                                                sold: try value("sold/\(sku)") ?? 0)))
            } catch {
                responder.send(.error(500, "store read failed: \(error)"))
            }
        default:
            return false
        }
        return true
    }

    /// Setup only: a one-branch Cohort transaction at this participant sets the sku's keys.
    ///
    /// Refused (409) while the sku is in use: a 2PC/3PC branch holding its keys, or TCC
    /// reservations not yet confirmed or cancelled. Setting `reserved` to 0 under a reservation
    /// would send it negative at the reservation's confirm or cancel, and the at-rest sums
    /// would never hold again.
    private func setStock(_ request: HTTPRequest, _ responder: HTTPResponder) {
        let body: StockRequest
        switch decodeBody(StockRequest.self, request) {
        case .failure(let e): return responder.send(.error(400, e.description))
        case .success(let b): body = b
        }
        guard validSku(body.sku) else { return responder.send(.error(400, skuRule)) }
        guard body.available >= 0, body.available <= Int64(Int32.max) else {
            return responder.send(.error(400, "available must be 0-\(Int32.max)"))
        }
        let keys = ["available/\(body.sku)", "reserved/\(body.sku)", "sold/\(body.sku)"]
        let resource = agent.node.resource!
        if keys.contains(where: { !resource.lockHolders($0).isEmpty }) {
            return responder.send(.error(409, "sku \(body.sku) is locked by a transaction in progress; set its stock once it finished"))
        }
        let tcc = self.tcc!
        let busy = TCCReservations.stockSetRefusal(sku: body.sku)
        do {
            if try InventoryTCC.reservations(tcc, sku: body.sku) > 0 { return responder.send(.error(409, busy)) }
        } catch {
            return responder.send(.error(503, "reservations read failed: \(error)"))
        }
        let loop = agent.loop
        let selfURL = self.selfURL
        let accepted = workers.run { [api] in
            let response: HTTPResponse
            do {
                response = try api.with { api -> HTTPResponse in
                    let txid = try api.begin()
                    do {
                        _ = try api.agentWork(selfURL, txid, [.set(keys[0], body.available), .set(keys[1], 0), .set(keys[2], 0)])
                        // Checked again under the branch's locks: a try that came after the check
                        // above is in the table now, and none can come until the outcome (a try
                        // on a locked sku waits for its release, or is refused).
                        if try InventoryTCC.reservations(tcc, sku: body.sku) > 0 {
                            _ = try? api.abort(txid)
                            return .error(409, busy)
                        }
                    } catch CohortAPIError.http(409, let message) {
                        _ = try? api.abort(txid)
                        return .error(409, "sku \(body.sku) is locked by a transaction in progress (\(message)); set its stock once it finished")
                    } catch {
                        _ = try? api.abort(txid)
                        throw error
                    }
                    return try api.commit(txid).outcome == "committed"
                        ? .json(200, Stock(sku: body.sku, available: body.available, reserved: 0, sold: 0))
                        : .error(409, "setting stock of \(body.sku) aborted (busy sku?); try again")
                }
            } catch {
                response = .error(503, "setting stock failed: \(error)")
            }
            loop.execute { responder.send(response) }
        }
        if !accepted { responder.send(.error(503, "too many requests waiting for a worker (\(Limits.demoOrdersWaitingMax)); try again")) }
    }
}
