import CohortCore
import CohortHTTP
import CohortPosix

/// The result of one sink call.
public enum SinkResult: Sendable {
    /// One outcome per message, in order.
    case outcomes([DeliveryOutcome])
    /// The sink could not be reached (connection refused, timeout, 5xx): nothing is counted
    /// against the messages; the relay backs off and sends them again.
    case unavailable(String)
    /// The sink refused the call as too large (HTTP 413) for a batch of several messages:
    /// nothing is counted; the relay sends them again in smaller batches.
    case tooLarge(String)
    /// The sink answered and refused the call as a whole (an HTTP 4xx such as 400 or 422) for a
    /// batch of several messages: it may be one message's fault, so nothing is counted and the
    /// relay sends the batch again in halves, until a message refused alone is refused as a
    /// message. Counted against each, one bad message dead-lettered the batch's other keys.
    case refusedWhole(String)
    /// The sink answered 500 (an internal error): an outage, or one message the consumer cannot
    /// handle (an exception on it). Nothing is counted. For several messages the relay backs off
    /// as for an outage and sends the batch again in halves, so such a message holds up only its
    /// own key: sent again whole, its batch failed for ever and every key in it with it. For a
    /// message alone it is an outage, unless the sink acknowledged another call meanwhile: then
    /// the message's key backs off on its own and sends it alone from then on.
    case failedWhole(String)
}

/// Where a relay delivers. `deliver` is called on the relay's loop thread and must call
/// `completion` exactly once, on the loop thread.
public protocol OutboxSink: AnyObject {
    var name: String { get }
    func deliver(_ messages: [OutboxMessage], completion: @escaping (SinkResult) -> Void)
    func shutdown()
}

/// The relay's runtime: carries out `RelayMachine`'s actions against the outbox tables (on the
/// loop thread, synchronously: each is a short SQLite transaction) and the sink (asynchronously).
public final class OutboxRelay {
    /// Crash points a relay process reaches (`COHORT_CRASHPOINT`).
    public static let crashPoints = ["relay.after-sink-ack", "relay.after-record"]

    public let store: OutboxStore
    public let sink: OutboxSink
    public let loop: EventLoop
    public let holder: String
    public private(set) var machine: RelayMachine
    /// Problems worth a line in a log (database errors, lost lease); the library never prints.
    public var onProblem: ((String) -> Void)?
    /// The error of the last failed read of the table, while reads keep failing.
    public private(set) var lastStoreReadError: String?

    /// Why this relay cannot deliver now, for `/healthz`: reads of its table fail (a damaged
    /// or failing database; it retries with backoff). Nil when it can.
    public var unhealthyReason: String? {
        guard machine.storeReadFailuresInARow > 0 else { return nil }
        return "reading the outbox table failed \(machine.storeReadFailuresInARow) times in a row: \(lastStoreReadError ?? "?")"
    }
    /// Monotonic milliseconds: every time the machine sees (its timers: polling, backoff,
    /// lease renewal, rescans), so a wall-clock step back cannot stall them for its size.
    private let clock: () -> Int64
    /// Wall-clock milliseconds: only for what is stored or compared with stored values (the
    /// lease's expiry, which other relays read; delivered_ms and the retention cutoff, the
    /// latter through `retentionClock`; ages).
    private let wallClock: () -> Int64
    /// The cleanup's cutoff clock: a wall-clock step forward does not make delivered and
    /// discarded rows look older than they are (`RetentionClock`).
    private let retentionClock: RetentionClock
    private var tickTimer: TimerHandle?
    /// Sink calls that could not reach the sink, in a row, and when a line last said so
    /// (`reportSink`). Reporting only: the machine decides the retries.
    public private(set) var sinkFailuresInARow = 0
    private var sinkProblemReportedMs: Int64 = 0
    /// Since when (monotonic) and with what the sink has been failing, while it is.
    private var sinkFailingSinceMs: Int64 = 0
    private var lastSinkError = ""
    /// When a line last said that the sink refused a batch whole (`reportSink`).
    private var refusedWholeReportedMs: Int64?
    /// When a line last said that the sink failed on a message (`reportFailedOnAMessage`).
    private var failedAloneReportedMs: Int64?

    /// The sink's trouble for the admin list, while its calls keep failing: `txctl outbox URL
    /// list` showed 70 pending messages with 0 attempts and no error while the consumer was
    /// down (a game-day probe); only the relay's stderr knew.
    public var sinkTrouble: OutboxSinkTrouble? {
        guard sinkFailuresInARow > 0 else { return nil }
        return OutboxSinkTrouble(name: sink.name, failedCalls: sinkFailuresInARow, failingForMs: max(0, clock() - sinkFailingSinceMs),
                                 lastError: lastSinkError.clippedUTF8(toBytes: Limits.httpErrorMessageBytesMax))
    }
    private var running = false
    /// Set by the first `stop`, even one that comes before the start task ran: a SIGTERM in
    /// the relay's first moment ran its handler in the same loop pass as the queued start, so
    /// the start took the lease after the stop and the process exited holding it. The next
    /// relay then waited out the whole lease TTL (5 s) before it could deliver anything.
    private var stopped = false
    private let tickMs: Int64
    /// Another relay's lease row as this one last read it without taking it, and since when
    /// (monotonic) it has read it unchanged: once that is `Limits.outboxLeaseUnchangedTakeoverMs`,
    /// the row is taken whatever its wall-clock expiry says (`OutboxStore.takeLease`).
    private var leaseSeen: (lease: OutboxStore.Lease, sinceMs: Int64)?

    public init(store: OutboxStore, sink: OutboxSink, loop: EventLoop, config: RelayConfig = RelayConfig(),
                holder: String? = nil, seed: UInt64 = ProcessEnv.randomU64(),
                clock: @escaping () -> Int64 = { SystemClock.monotonicMs() },
                wallClock: @escaping () -> Int64 = { SystemClock.wallMs() }) {
        self.store = store
        self.sink = sink
        self.loop = loop
        self.holder = holder ?? "relay-\(ProcessEnv.pid)-\(String(ProcessEnv.randomU64() & 0xffffff, radix: 16))"
        machine = RelayMachine(config: config, seed: seed)
        self.clock = clock
        self.wallClock = wallClock
        retentionClock = RetentionClock(wallMs: wallClock(), monotonicMs: clock())
        tickMs = max(1, min(config.pollIntervalMs, 5))
    }

    /// Starts relaying (any thread; the work happens on the loop thread).
    public func start() {
        inLoop {
            guard !self.running, !self.stopped else { return }
            self.running = true
            self.feed(.start(nowMs: self.clock()))
            self.scheduleTick()
        }
    }

    /// New rows were committed: look now (any thread).
    public func wake() {
        loop.execute { [weak self] in
            guard let self, self.running else { return }
            self.feed(.wake(nowMs: self.clock()))
        }
    }

    /// An operator replayed a dead letter (loop thread).
    public func replayed() {
        inLoop { if self.running { self.feed(.replayed(nowMs: self.clock())) } }
    }

    /// Releases the lease and stops (loop thread).
    public func stop() {
        stopped = true
        guard running else { return }
        running = false
        if let t = tickTimer { loop.cancel(t) }
        tickTimer = nil
        feed(.stop(nowMs: clock()))
        sink.shutdown()
    }

    public var holdsLease: Bool { if case .held = machine.lease { return true }; return false }

    private func inLoop(_ body: @escaping () -> Void) {
        if loop.isInLoopThread { body() } else { loop.execute(body) }
    }

    private func scheduleTick() {
        tickTimer = loop.schedule(afterMs: tickMs) { [weak self] in
            guard let self, self.running else { return }
            self.feed(.tick(nowMs: self.clock()))
            self.scheduleTick()
        }
    }

    /// Feeds an event and carries out the resulting actions, feeding their synchronous answers.
    /// Each action keeps the lease it was decided under: once an earlier action of the same feed
    /// finds the lease lost (a renewal, a fenced write), the rest are stale and skipped (a
    /// `deliver` would only send duplicates, the database work is refused or ignored anyway).
    func feed(_ event: RelayEvent) {
        var queue = machine.on(event).map { ($0, machine.lease) }
        var i = 0
        while i < queue.count {
            let (action, lease) = queue[i]
            i += 1
            if case .held = lease, lease != machine.lease { continue }
            if let next = perform(action) {
                queue.append(contentsOf: machine.on(next).map { ($0, machine.lease) })
            }
        }
    }

    private func problem(_ s: String) { onProblem?(s) }

    /// A line when the sink stops answering, one every `Limits.outboxSinkProblemReportIntervalMs`
    /// while it stays down, and one when it answers again: a relay whose sink was down used to
    /// say nothing at all, while its messages piled up.
    private func reportSink(_ result: SinkResult, nowMs: Int64) {
        switch result {
        case .unavailable(let reason), .failedWhole(let reason):
            sinkFailuresInARow += 1
            lastSinkError = reason
            if sinkFailuresInARow == 1 { sinkFailingSinceMs = nowMs }
            if sinkFailuresInARow == 1 {
                problem("sink \(sink.name) unavailable: \(reason); messages stay pending and are sent again after a backoff")
            } else if nowMs - sinkProblemReportedMs >= Limits.outboxSinkProblemReportIntervalMs {
                problem("sink \(sink.name) still unavailable after \(sinkFailuresInARow) calls in a row: \(reason)")
            } else {
                return
            }
            sinkProblemReportedMs = nowMs
        case .refusedWhole(let reason):
            // A consumer that refuses a batch for one message is worth a line (it costs calls),
            // but a bisection makes several in a row: at most one every report interval.
            if Self.reportDue(&refusedWholeReportedMs, nowMs: nowMs) {
                problem("sink \(sink.name) refused a batch as a whole: \(reason); sent again in halves, nothing counted, until the message at fault is alone")
            }
            fallthrough
        case .outcomes, .tooLarge:
            if sinkFailuresInARow > 0 {
                problem("sink \(sink.name) answers again after \(sinkFailuresInARow) failed calls")
                sinkFailuresInARow = 0
            }
        }
    }

    /// Whether a line last said at `lastMs` (nil: never) may be said again at `nowMs`, at most one
    /// every `Limits.outboxSinkProblemReportIntervalMs`; if so, `lastMs` becomes `nowMs`.
    private static func reportDue(_ lastMs: inout Int64?, nowMs: Int64) -> Bool {
        guard lastMs.map({ nowMs - $0 >= Limits.outboxSinkProblemReportIntervalMs }) ?? true else { return false }
        lastMs = nowMs
        return true
    }

    /// A call the sink failed (HTTP 500) while it took other calls: a message it fails on. At
    /// most one line every `Limits.outboxSinkProblemReportIntervalMs`, since finding the message
    /// takes several calls and it is sent again and again.
    private func reportFailedOnAMessage(_ messages: [OutboxMessage], reason: String, nowMs: Int64) {
        guard Self.reportDue(&failedAloneReportedMs, nowMs: nowMs) else { return }
        if messages.count == 1 {
            problem("sink \(sink.name) failed on message \(messages[0].messageID) (key \(messages[0].key)) alone while it took other calls: \(reason); its key waits and sends it again after a backoff, nothing counted")
        } else {
            problem("sink \(sink.name) failed a batch of \(messages.count) messages while it took other calls: \(reason); sent again in halves, nothing counted, to find the message it fails on")
        }
    }

    /// Carries out one action; returns the answer when it is immediate.
    private func perform(_ action: RelayAction) -> RelayEvent? {
        let now = clock()
        switch action {
        case .acquireLease:
            do {
                let unchangedMs = max(machine.config.leaseTTLMs, Limits.outboxLeaseUnchangedTakeoverMs)
                let stale = leaseSeen.flatMap { now - $0.sinceMs >= unchangedMs ? $0.lease : nil }
                let wallNow = wallClock()
                switch try store.takeLease(holder: holder, nowMs: wallNow, ttlMs: machine.config.leaseTTLMs, ifUnchanged: stale) {
                case .acquired(let token):
                    if let stale, let seen = leaseSeen, !stale.holder.isEmpty, stale.holder != holder, stale.expiresMs > wallNow {
                        problem("took the relay lease from \(stale.holder) (token \(stale.token)): its row was unchanged for \(now - seen.sinceMs) ms, "
                                + "though its expiry was still \(stale.expiresMs - wallNow) ms ahead by this clock (a wall clock stepped back since it was written?)")
                    }
                    leaseSeen = nil
                    return .leaseAcquired(token: token, nowMs: now)
                case .held(let lease):
                    if leaseSeen?.lease != lease { leaseSeen = (lease, now) }
                    return .leaseUnavailable(nowMs: now)
                }
            } catch {
                problem("taking the relay lease: \(error)")
                return .leaseUnavailable(nowMs: now)
            }
        case .renewLease(let token):
            do {
                if try store.renewLease(holder: holder, token: token, nowMs: wallClock(), ttlMs: machine.config.leaseTTLMs) {
                    return .leaseRenewed(nowMs: now)
                }
                problem("lost the relay lease (token \(token)): another relay holds it")
                return .leaseLost(nowMs: now)
            } catch {
                // Could not renew: keep going; the lease either renews next time or expires, and
                // then a fenced write or the next renewal finds out.
                problem("renewing the relay lease: \(error)")
                return nil
            }
        case .releaseLease(let token):
            do { try store.releaseLease(holder: holder, token: token) } catch { problem("releasing the relay lease: \(error)") }
            return nil
        case .load(let afterID, let limit):
            do {
                if afterID == 0 {
                    let (rows, dead) = try store.pendingAndDeadKeys(afterID: 0, limit: limit, bytesMax: machine.config.loadPageBytesMax)
                    return .loaded(afterID: afterID, rows: rows, deadKeys: dead, nowMs: now)
                }
                return .loaded(afterID: afterID, rows: try store.pending(afterID: afterID, limit: limit, bytesMax: machine.config.loadPageBytesMax), deadKeys: nil, nowMs: now)
            } catch {
                lastStoreReadError = "\(error)"
                problem("reading pending messages: \(error)")
                return .loadFailed(nowMs: now)
            }
        case .loadKey(let key, let afterID, let limit):
            do {
                return .loaded(afterID: afterID, rows: try store.pending(key: key, afterID: afterID, limit: limit, bytesMax: machine.config.loadPageBytesMax), deadKeys: nil, nowMs: now)
            } catch {
                lastStoreReadError = "\(error)"
                problem("reading pending messages of a key: \(error)")
                return .loadFailed(nowMs: now)
            }
        case .deliver(let batch, let messages):
            sink.deliver(messages) { [weak self] result in
                guard let self, self.running else { return }
                let t = self.clock()
                if case .failedWhole(let reason) = result {
                    // The sink's trouble (said as such) only if the machine takes it so; else a
                    // message's, found by halving its batch or backed off by its key.
                    let downBefore = self.machine.sinkDownTotal
                    self.feed(.sinkFailedWhole(batch: batch, reason: reason, nowMs: t))
                    if self.machine.sinkDownTotal > downBefore {
                        self.reportSink(.unavailable(reason), nowMs: t)
                    } else {
                        self.reportFailedOnAMessage(messages, reason: reason, nowMs: t)
                    }
                    return
                }
                self.reportSink(result, nowMs: t)
                switch result {
                case .outcomes(let o): self.feed(.delivered(batch: batch, outcomes: o, nowMs: t))
                case .unavailable(let reason): self.feed(.sinkUnavailable(batch: batch, reason: reason, nowMs: t))
                case .tooLarge(let reason): self.feed(.sinkTooLarge(batch: batch, reason: reason, nowMs: t))
                case .refusedWhole(let reason): self.feed(.sinkRefusedWhole(batch: batch, reason: reason, nowMs: t))
                case .failedWhole(let reason): self.feed(.sinkFailedWhole(batch: batch, reason: reason, nowMs: t))
                }
            }
            return nil
        case .record(let batch, let write, let token):
            if !write.delivered.isEmpty { CrashPoints.hit("relay.after-sink-ack") }
            do {
                let applied = try store.record(write, holder: holder, token: token, nowMs: wallClock())
                if !applied { problem("fenced: another relay took the lease; results of \(write.delivered.count + write.failed.count + write.dead.count) messages not recorded") }
                CrashPoints.hit("relay.after-record")
                return .recorded(batch: batch, applied: applied, nowMs: now)
            } catch {
                // Rolled back: treat it like a lost lease (start over from the table); the
                // messages are delivered again and consumers dedupe them.
                problem("recording delivery results: \(error)")
                return .recorded(batch: batch, applied: false, nowMs: now)
            }
        case .cleanup(let retentionMs, let limit):
            do {
                let cutoff = retentionClock.nowMs(wallMs: wallClock(), monotonicMs: now) - retentionMs
                return .cleaned(deleted: try store.cleanup(deliveredBeforeMs: cutoff, limit: limit), nowMs: now)
            } catch {
                problem("deleting delivered and discarded rows: \(error)")
                return .cleaned(deleted: 0, nowMs: now)
            }
        }
    }

    // MARK: metrics

    /// Declares the outbox metrics in `registry` (read at render time, on the loop thread).
    public func registerMetrics(_ registry: MetricsRegistry) {
        var cached: (at: Int64, counts: OutboxStore.Counts)?
        let counts: () -> OutboxStore.Counts = { [weak self] in
            guard let self else { return OutboxStore.Counts(pending: 0, dead: 0, delivered: 0) }
            let now = self.clock()
            if let c = cached, now - c.at < 100 { return c.counts }
            let c = (try? self.store.counts()) ?? OutboxStore.Counts(pending: 0, dead: 0, delivered: 0)
            cached = (now, c)
            return c
        }
        registry.sample("cohort_outbox_pending", help: "Messages committed and not yet delivered (dead letters excluded)") {
            Double(counts().pending)
        }
        registry.sample("cohort_outbox_oldest_pending_age_seconds", help: "Age of the oldest pending message") { [weak self] in
            guard let self, let t = counts().oldestPendingCreatedMs else { return 0 }
            return Double(max(0, self.wallClock() - t)) / 1000
        }
        registry.sample("cohort_outbox_dead_letters", help: "Messages moved to dead letters and not replayed") {
            Double(counts().dead)
        }
        registry.sample("cohort_outbox_delivered_total", type: "counter", help: "Messages the sink acknowledged, recorded as delivered") { [weak self] in
            Double(self?.machine.deliveredTotal ?? 0)
        }
        registry.sample("cohort_outbox_store_read_failures_total", type: "counter", help: "Reads of the outbox table that failed (retried with backoff)") { [weak self] in
            Double(self?.machine.storeReadFailuresTotal ?? 0)
        }
        registry.sample("cohort_outbox_failed_total", type: "counter", help: "Delivery attempts the sink refused") { [weak self] in
            Double(self?.machine.failedTotal ?? 0)
        }
        registry.sample("cohort_outbox_dead_lettered_total", type: "counter", help: "Messages moved to dead letters by this relay") { [weak self] in
            Double(self?.machine.deadTotal ?? 0)
        }
        registry.sample("cohort_outbox_sink_unavailable_total", type: "counter", help: "Sink calls that could not reach the sink") { [weak self] in
            Double(self?.machine.sinkDownTotal ?? 0)
        }
        registry.sample("cohort_outbox_refused_whole_total", type: "counter", help: "Sink calls refused as a whole for several messages (sent again in halves, nothing counted)") { [weak self] in
            Double(self?.machine.refusedWholeTotal ?? 0)
        }
        registry.sample("cohort_outbox_fenced_total", type: "counter", help: "Writes refused because another relay held the lease") { [weak self] in
            Double(self?.machine.fencedTotal ?? 0)
        }
        registry.sample("cohort_outbox_lease_held", help: "1 while this relay holds the outbox lease") { [weak self] in
            (self?.holdsLease ?? false) ? 1 : 0
        }
    }
}
