import CohortCore

/// How a relay behaves; defaults come from `Limits`.
public struct RelayConfig: Sendable, Equatable {
    public var batchMessagesMax = Limits.outboxBatchMessagesMax
    /// A batch's encoded size (`OutboxBatchBytes`) at most this; a message larger alone goes alone.
    public var batchBytesMax = Limits.outboxBatchBytesMax
    public var batchesInFlightMax = Limits.outboxBatchesInFlightMax
    public var loadedMessagesMax = Limits.outboxLoadedMessagesMax
    public var loadedPerKeyMax = Limits.outboxLoadedPerKeyMax
    public var loadedBytesMax = Limits.outboxLoadedBytesMax
    public var loadRowsMax = Limits.outboxLoadRowsMax
    /// A read's rows stop once they hold this many bytes (the runtime's store cuts there).
    public var loadPageBytesMax = Limits.outboxLoadPageBytesMax
    public var attemptsMax = Limits.outboxAttemptsMax
    public var retryDelayMsMin = Limits.outboxRetryDelayMsMin
    public var retryDelayMsMax = Limits.outboxRetryDelayMsMax
    public var sinkDownDelayMsMin = Limits.outboxSinkDownDelayMsMin
    public var sinkDownDelayMsMax = Limits.outboxSinkDownDelayMsMax
    public var leaseTTLMs = Limits.outboxLeaseTTLMs
    public var leaseRetryMs = Limits.outboxLeaseRetryMs
    public var pollIntervalMs = Limits.outboxPollIntervalMs
    public var rescanIntervalMs = Limits.outboxRescanIntervalMs
    public var retentionMs = Limits.outboxRetentionMsDefault
    public var cleanupRowsMax = Limits.outboxCleanupRowsMax
    public var cleanupIntervalMs = Limits.outboxCleanupIntervalMs
    /// A dead letter blocks the later messages of its key until it is replayed (the default:
    /// per-key order is the guarantee). When false, the key's next message goes on.
    public var deadLetterBlocksKey = true

    public init() {}
}

/// What the relay's runtime tells the state machine. Every event carries the time, from a
/// monotonic clock: the machine's times are only compared with each other (timers), never
/// stored, so a wall-clock step cannot stall or hurry them.
public enum RelayEvent: Equatable, Sendable {
    case start(nowMs: Int64)
    /// Periodic: lease renewal, polling, backoff expiry, cleanup.
    case tick(nowMs: Int64)
    /// New rows were committed (an in-process producer): look now instead of at the next poll.
    case wake(nowMs: Int64)
    case leaseAcquired(token: Int64, nowMs: Int64)
    case leaseUnavailable(nowMs: Int64)
    case leaseRenewed(nowMs: Int64)
    /// Renewal failed or a fenced write found another token: another relay holds the lease.
    case leaseLost(nowMs: Int64)
    /// Answer to `.load`: the rows, and (for a load from id 0) every key's smallest dead id.
    case loaded(afterID: Int64, rows: [OutboxMessage], deadKeys: [String: Int64]?, nowMs: Int64)
    /// Answer to `.load` or `.loadKey` when the read failed: tried again later (the next poll,
    /// tick or rescan), never taken as "no rows".
    case loadFailed(nowMs: Int64)
    /// Answer to `.deliver`: one outcome per message, in order.
    case delivered(batch: Int, outcomes: [DeliveryOutcome], nowMs: Int64)
    /// Answer to `.deliver` when the sink could not be reached at all (nothing counted against messages).
    case sinkUnavailable(batch: Int, reason: String, nowMs: Int64)
    /// Answer to `.deliver` when the sink refused the call as too large (HTTP 413): nothing
    /// counted; batches are made at most half this one's size, so the messages go again in
    /// smaller ones (a message alone that is too large is refused as a message), until enough
    /// batches in a row get through to double the bound again (`RelayMachine.batchBytesLimit`).
    case sinkTooLarge(batch: Int, reason: String, nowMs: Int64)
    /// Answer to `.deliver` when the sink answered and refused a batch of several messages as a
    /// whole (an HTTP 400 or 422 for the call): nothing counted; its messages go again at once in
    /// two batches of half as many (their keys stay busy meanwhile), and so on down to a message
    /// alone, whose refusal counts against it alone.
    case sinkRefusedWhole(batch: Int, reason: String, nowMs: Int64)
    /// Answer to `.deliver` when the sink answered with an internal error (HTTP 500): an outage,
    /// or one message the consumer fails on. Nothing counted. A batch of several is sent again in
    /// two batches of half as many (their keys busy meanwhile), and so on: at once if the sink
    /// acknowledged a message since the batch went out (it is up), else after the relay-wide
    /// backoff of `.sinkUnavailable`. A message alone: `.sinkUnavailable`, unless the sink
    /// acknowledged a message since it was sent; then its key backs off on its own, growing, and
    /// sends it alone from then on.
    case sinkFailedWhole(batch: Int, reason: String, nowMs: Int64)
    /// Answer to `.record`: `applied` false when the fencing token no longer held the lease.
    case recorded(batch: Int, applied: Bool, nowMs: Int64)
    case cleaned(deleted: Int, nowMs: Int64)
    /// An operator replayed a dead letter: re-read dead keys and pending rows.
    case replayed(nowMs: Int64)
    case stop(nowMs: Int64)
}

public enum DeliveryOutcome: Equatable, Sendable {
    /// The sink acknowledged (durably stored, or applied by the consumer).
    case acknowledged
    /// The sink answered and refused this message; counts as an attempt.
    case rejected(String)
    /// The sink did not take this message for a reason that is not the message's (a Redis
    /// error reply: out of memory, loading, read-only replica...): no attempt is counted, the
    /// message is sent again after the same backoff as an unreachable sink.
    case notTaken(String)
    /// The consumer could not apply this message now for a reason that is not the message's (an
    /// inbox answered `busy`: a row it needs is locked): no attempt is counted; the key backs off
    /// as after a refusal, and the other keys go on.
    case deferred(String)
}

/// What the state machine asks its runtime to do.
public enum RelayAction: Equatable, Sendable {
    case acquireLease
    case renewLease(token: Int64)
    case releaseLease(token: Int64)
    /// Read pending rows with id > `afterID` (id order, at most `limit`); with `afterID == 0`
    /// also the dead keys. Answer with `.loaded`.
    case load(afterID: Int64, limit: Int)
    /// Read pending rows of one key with id > `afterID` (id order, at most `limit`): the rows of
    /// a key that were left out of memory (`loadedPerKeyMax`). Answer with `.loaded` (no dead keys).
    case loadKey(key: String, afterID: Int64, limit: Int)
    /// Send these messages to the sink (at most one per key). Answer with `.delivered` or `.sinkUnavailable`.
    case deliver(batch: Int, messages: [OutboxMessage])
    /// Write the batch's results, fenced by `token`. Answer with `.recorded`.
    case record(batch: Int, write: RelayWrite, token: Int64)
    /// Delete up to `limit` rows delivered, or discarded by an operator, more than `retentionMs`
    /// ago (by the wall clock, as `delivered_ms` is stored). Answer with `.cleaned`.
    case cleanup(retentionMs: Int64, limit: Int)
}

/// The relay's decisions, with no I/O, clock or randomness of its own: a value that takes events
/// and returns actions. Per-key order: a key has at most one message in flight, and its next one
/// is sent only after the previous one's result is durably recorded. Across keys, batches.
public struct RelayMachine: Sendable {
    public enum LeaseState: Equatable, Sendable {
        case idle
        case acquiring
        case held(token: Int64)
        case stopped
    }

    struct KeyQueue: Sendable {
        /// Sorted by id; `head` is the next to deliver.
        var messages: [OutboxMessage] = []
        var head = 0
        /// In a batch, or its result not yet recorded.
        var busy = false
        /// Not before this time (backoff after a refusal).
        var retryAtMs: Int64 = 0
        /// The head's id when it is sent alone (not batched with other keys): it failed alone
        /// while other calls got through (`.sinkFailedWhole`), or was refused alone after a
        /// split. Batched again, it failed or was refused with its batch, and the batch was
        /// halved again each time. -1: none.
        var aloneID: Int64 = -1
        /// The head's failures alone in a row (HTTP 500 while the sink took other calls): its
        /// own backoff grows with them, as a refusal's does with its attempts.
        var failuresAlone = 0
        var count: Int { messages.count - head }
        var first: OutboxMessage? { head < messages.count ? messages[head] : nil }

        mutating func popFirst() {
            failuresAlone = 0
            head += 1
            if head > 64 && head * 2 > messages.count {
                messages.removeFirst(head)
                head = 0
            }
        }

        /// In id order, but never before a head that is in a batch: the batch's result pops the
        /// head it sent (a replayed row found by a rescan, with dead letters not blocking, went
        /// before it, and the sent message stayed to be sent again).
        mutating func insert(_ m: OutboxMessage) {
            if let last = messages.last, last.id > m.id {
                var i = messages.count
                let floor = head + (busy ? 1 : 0)
                while i > floor && messages[i - 1].id > m.id { i -= 1 }
                messages.insert(m, at: i)
            } else {
                messages.append(m)
            }
        }
    }

    struct Batch: Sendable {
        var messages: [OutboxMessage]
        var write: RelayWrite?
        /// When it was sent, and whether it is a half of a batch the sink refused or failed whole.
        var sentMs: Int64 = 0
        var split = false
    }

    public let config: RelayConfig
    public private(set) var lease: LeaseState = .idle
    var rng: SplitMix64
    var queues: [String: KeyQueue] = [:]
    var ready: [String] = []
    var readyHead = 0
    var inReady: Set<String> = []
    /// Keys backing off, and the earliest time one of them is due.
    var delayed: Set<String> = []
    var delayedDueMs: Int64 = .max
    var known: Set<Int64> = []
    /// Messages held in memory (all keys), and their `heldBytes`.
    public private(set) var loadedCount = 0
    public private(set) var loadedBytes = 0
    /// Keys whose pending rows from this id on are not all in memory: a key holds at most
    /// `loadedPerKeyMax` messages (one while blocked by a dead letter), so one busy or blocked
    /// key cannot fill the window and stop every other key. Invariant: every pending row of the
    /// key below this id is held (or in a batch); none from it on is. Rows of the key from this
    /// id on are left out by the tail and the rescan (taking a later one would let it overtake
    /// the left-out ones) and come back, in id order, by `.loadKey` once the key runs low.
    var missing: [String: Int64] = [:]
    /// Keys that may need a `.loadKey` (checked again when their turn comes).
    var refills: [String] = []
    var inRefills: Set<String> = []
    /// Highest id read by the tail scan.
    public private(set) var cursor: Int64 = 0
    var tailMore = true
    enum Loading: Equatable, Sendable { case tail(limit: Int), rescan, key(String, afterID: Int64, limit: Int) }
    var loading: Loading?
    /// A rescan in progress reads ids in (rescanAfter, rescanEnd].
    var rescanAfter: Int64?
    var rescanEnd: Int64 = 0
    var deadKeys: [String: Int64] = [:]
    /// During a rescan: keys whose dead letter the first page's list no longer names (a replay)
    /// or names later, with the id they were held at and the one to take (`Int64.max`: none)
    /// once the rescan's last page is in. Unblocked at the first page, a key sent its held head
    /// at once, and a replayed dead letter on a later page went after it: out of order (a review).
    var deadKeysAfterRescan: [String: (held: Int64, next: Int64)] = [:]
    var batches: [Int: Batch] = [:]
    var nextBatch = 1
    /// Halves of batches the sink refused or failed whole (`.sinkRefusedWhole`,
    /// `.sinkFailedWhole`), sent before any new batch, within `batchesInFlightMax` (and after a
    /// relay-wide backoff). Their keys stay busy until each half's result is
    /// recorded, so a key still has one message in flight at most.
    var splits: [[OutboxMessage]] = []
    /// When the sink last acknowledged a message: a lone message that fails after that while its
    /// call was out is the message's trouble, not the sink's (`.sinkFailedWhole`).
    var lastAcknowledgedMs: Int64 = .min
    /// Batches the sink refused whole since start (for metrics).
    public private(set) var refusedWholeTotal: UInt64 = 0
    var sinkDownAttempts = 0
    /// The byte bound batches are made with: `config.batchBytesMax`, lowered by `.sinkTooLarge`
    /// (a consumer that takes less; kept across leases, it is the consumer's), and doubled
    /// again, up to `config.batchBytesMax`, after `Limits.outboxBatchBytesRegrowAfterBatches`
    /// batches in a row that the sink took whole and that used more than half of it (one 413,
    /// from a proxy reconfigured for a minute, used to halve it until the relay restarted).
    public private(set) var batchBytesLimit: Int
    /// Batches taken whole in a row since the bound was last lowered or raised (counted only
    /// while it is below `config.batchBytesMax`, and only batches of more than half of it: a
    /// trickle of small batches says nothing about whether larger ones get through).
    public private(set) var batchesTakenAtTheLimit = 0
    var sinkDownUntilMs: Int64 = 0
    public private(set) var lastSinkError: String?
    /// Reads of the table that failed in a row (0 once one succeeds), and no read before
    /// `loadNotBeforeMs` meanwhile: capped exponential backoff, as for the sink.
    public private(set) var storeReadFailuresInARow = 0
    var loadNotBeforeMs: Int64 = 0
    var nextLeaseTryMs: Int64 = 0
    var nextRenewMs: Int64 = 0
    var nextPollMs: Int64 = 0
    var nextRescanMs: Int64 = 0
    var nextCleanupMs: Int64 = 0
    var cleaning = false

    /// Counters since start (for metrics).
    public private(set) var deliveredTotal: UInt64 = 0
    public private(set) var failedTotal: UInt64 = 0
    public private(set) var deadTotal: UInt64 = 0
    public private(set) var sinkDownTotal: UInt64 = 0
    public private(set) var fencedTotal: UInt64 = 0
    public private(set) var storeReadFailuresTotal: UInt64 = 0

    public init(config: RelayConfig = RelayConfig(), seed: UInt64) {
        self.config = config
        batchBytesLimit = config.batchBytesMax
        rng = SplitMix64(seed: seed)
    }

    public var inFlightBatches: Int { batches.count }
    public var blockedKeys: Int {
        queues.reduce(0) { n, kv in n + (isBlocked(kv.key, kv.value) ? 1 : 0) }
    }

    public mutating func on(_ event: RelayEvent) -> [RelayAction] {
        var out: [RelayAction] = []
        switch event {
        case .start(let now):
            guard lease == .idle else { return [] }
            lease = .acquiring
            nextLeaseTryMs = now
            out.append(.acquireLease)

        case .tick(let now):
            tick(now, &out)

        case .wake(let now):
            if case .held = lease {
                tailMore = true
                loadIfNeeded(now, &out)
            }

        case .leaseAcquired(let token, let now):
            guard lease == .acquiring else { return [] }
            lease = .held(token: token)
            resetMemory()
            nextRenewMs = now + config.leaseTTLMs / 3
            nextRescanMs = now + config.rescanIntervalMs
            nextCleanupMs = now
            tailMore = true
            loadIfNeeded(now, &out)

        case .leaseUnavailable(let now):
            guard lease == .acquiring else { return [] }
            nextLeaseTryMs = now + config.leaseRetryMs

        case .leaseRenewed(let now):
            if case .held = lease { nextRenewMs = now + config.leaseTTLMs / 3 }

        case .leaseLost(let now):
            loseLease(now)

        case .loaded(let afterID, let rows, let dead, let now):
            guard case .held = lease, let kind = loading else { return [] }
            loading = nil
            storeReadFailuresInARow = 0
            loadNotBeforeMs = 0
            loaded(kind, afterID: afterID, rows: rows, dead: dead, now)
            dispatch(now, &out)
            loadIfNeeded(now, &out)

        case .loadFailed(let now):
            guard case .held = lease, let kind = loading else { return [] }
            loading = nil
            storeReadFailuresTotal += 1
            storeReadFailuresInARow += 1
            loadNotBeforeMs = now + backoffDelayMs(attempt: storeReadFailuresInARow, minMs: Limits.outboxStoreRetryDelayMsMin,
                                                   maxMs: Limits.outboxStoreRetryDelayMsMax, rng: &rng)
            switch kind {
            case .tail:
                tailMore = false
                nextPollMs = now + config.pollIntervalMs
            case .rescan:
                rescanAfter = nil
            case .key(let key, _, _):
                // Not now (that would read again at once, in a loop): at the next tick.
                if inRefills.insert(key).inserted { refills.append(key) }
            }

        case .delivered(let id, let outcomes, let now):
            guard case .held(let token) = lease, var b = batches[id], b.write == nil else { return [] }
            noteBatchTakenWhole(b.messages)
            if outcomes.contains(.acknowledged) { lastAcknowledgedMs = now }
            // Refused alone after its batch was refused whole: its next attempts go alone, so
            // its batch is not refused whole and halved again at each one.
            if b.split, b.messages.count == 1, case .rejected? = outcomes.first, let m = b.messages.first {
                queues[m.key]?.aloneID = m.id
            }
            var w = RelayWrite()
            var notTaken: String?
            for (i, m) in b.messages.enumerated() {
                let outcome = i < outcomes.count ? outcomes[i] : .rejected("sink gave no result for this message")
                switch outcome {
                case .acknowledged:
                    w.delivered.append(m.id)
                case .notTaken(let reason):
                    // Written nowhere: the key is freed when the batch is recorded and its
                    // message goes again after the sink-down backoff.
                    notTaken = notTaken ?? reason

                case .deferred(let reason):
                    // A failure that keeps the message's attempts: the key backs off, nothing dies.
                    w.failed.append(.init(id: m.id, attempts: m.attempts, error: reason))
                case .rejected(let reason):
                    let attempts = m.attempts + 1
                    if attempts >= config.attemptsMax {
                        w.dead.append(.init(id: m.id, attempts: attempts, error: reason))
                    } else {
                        w.failed.append(.init(id: m.id, attempts: attempts, error: reason))
                    }
                }
            }
            if let reason = notTaken {
                sinkDown(reason, now)
            } else {
                sinkDownAttempts = 0
            }
            b.write = w
            batches[id] = b
            out.append(.record(batch: id, write: w, token: token))

        case .sinkUnavailable(let id, let reason, let now):
            guard case .held = lease, let b = batches.removeValue(forKey: id) else { return [] }
            sinkDown(reason, now)
            for m in b.messages {
                queues[m.key]?.busy = false
                markMaybeReady(m.key, now)
            }

        case .sinkTooLarge(let id, let reason, let now):
            guard case .held = lease, let b = batches.removeValue(forKey: id) else { return [] }
            lastSinkError = reason
            let bytes = b.messages.reduce(OutboxBatchBytes.envelope) { $0 + OutboxBatchBytes.cost($1) }
            // Half the messages' bytes: a batch of two messages of equal size splits in two.
            batchBytesLimit = max(1, min(batchBytesLimit, OutboxBatchBytes.envelope + (bytes - OutboxBatchBytes.envelope) / 2))
            batchesTakenAtTheLimit = 0
            for m in b.messages {
                queues[m.key]?.busy = false
                markMaybeReady(m.key, now)
            }
            dispatch(now, &out)

        case .sinkRefusedWhole(let id, let reason, let now):
            guard case .held = lease, let b = batches.removeValue(forKey: id) else { return [] }
            refusedWholeTotal += 1
            guard b.messages.count > 1 else {
                // A sink should answer a message alone per message; if it does not, this is
                // that message's refusal.
                batches[id] = b
                return on(.delivered(batch: id, outcomes: [.rejected(reason)], nowMs: now))
            }
            splitInHalves(b.messages)
            dispatch(now, &out)

        case .sinkFailedWhole(let id, let reason, let now):
            guard case .held = lease, let b = batches[id] else { return [] }
            guard b.messages.count > 1 else {
                // Alone: the sink took another call since this one went out, so it is up and
                // it is this message it fails on. Its key backs off on its own (growing with
                // `failuresAlone`, no attempt counted) and sends it alone from now on; a
                // relay-wide backoff at each such failure slowed every key while many of them
                // were retried. Written as a failure that keeps its attempts (as `deferred`), so
                // the row shows the error: `txctl outbox URL list` names the message its key
                // waits on, where only the relay's memory knew it.
                let m = b.messages[0]
                guard lastAcknowledgedMs >= b.sentMs, queues[m.key] != nil else {
                    return on(.sinkUnavailable(batch: id, reason: reason, nowMs: now))
                }
                lastSinkError = reason
                queues[m.key]!.aloneID = m.id
                queues[m.key]!.failuresAlone += 1
                return on(.delivered(batch: id, outcomes: [.deferred(reason)], nowMs: now))
            }
            batches[id] = nil
            // The sink acknowledged another call since this one went out: it is up, and it is
            // a message of this batch it fails on; halved at once. Otherwise an outage, maybe:
            // the halves wait for the relay-wide backoff, which at every halving also held up
            // every key while many such messages were being found.
            if lastAcknowledgedMs >= b.sentMs {
                lastSinkError = reason
            } else {
                sinkDown(reason, now)
            }
            splitInHalves(b.messages)
            dispatch(now, &out)

        case .recorded(let id, let applied, let now):
            guard case .held = lease, let b = batches[id], let w = b.write else { return [] }
            batches[id] = nil
            guard applied else {
                fencedTotal += 1
                loseLease(now)
                return []
            }
            let delivered = Set(w.delivered)
            let dead = Dictionary(w.dead.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            let failed = Dictionary(w.failed.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
            for m in b.messages {
                guard var q = queues[m.key] else { continue }
                q.busy = false
                if delivered.contains(m.id) || dead[m.id] != nil {
                    if q.first?.id == m.id { q.popFirst() }
                    known.remove(m.id)
                    loadedCount -= 1
                    loadedBytes -= m.heldBytes
                    if delivered.contains(m.id) {
                        deliveredTotal += 1
                    } else {
                        deadTotal += 1
                        if config.deadLetterBlocksKey { deadKeys[m.key] = min(deadKeys[m.key] ?? .max, m.id) }
                        // Died (again) during a rescan: the list the rescan's first page brought
                        // is older than this; the key stays blocked when the rescan ends (a review).
                        deadKeysAfterRescan.removeValue(forKey: m.key)
                    }
                } else if let f = failed[m.id] {
                    failedTotal += 1
                    if q.first?.id == m.id { q.messages[q.head].attempts = f.attempts }
                    // A message failing alone (`failuresAlone`) backs off as if each failure were an attempt.
                    q.retryAtMs = now + backoffDelayMs(attempt: max(f.attempts, q.failuresAlone), minMs: config.retryDelayMsMin,
                                                        maxMs: config.retryDelayMsMax, rng: &rng)
                }
                if q.count == 0 {
                    queues[m.key] = nil
                } else {
                    queues[m.key] = q
                    // A key that just got blocked keeps only its head in memory.
                    trim(m.key)
                    markMaybeReady(m.key, now)
                }
                noteRefill(m.key)
            }
            dispatch(now, &out)
            loadIfNeeded(now, &out)

        case .cleaned(let deleted, let now):
            cleaning = false
            nextCleanupMs = deleted >= config.cleanupRowsMax ? now : now + config.cleanupIntervalMs

        case .replayed(let now):
            if case .held = lease { startRescan(now, &out) }

        case .stop:
            if case .held(let token) = lease { out.append(.releaseLease(token: token)) }
            lease = .stopped
            resetMemory()
        }
        return out
    }

    // MARK: internals

    /// The sink answered a batch per message: its body was not too large. Enough such batches
    /// near the lowered bound in a row double it (`batchBytesLimit`).
    mutating func noteBatchTakenWhole(_ messages: [OutboxMessage]) {
        guard batchBytesLimit < config.batchBytesMax else { return }
        let bytes = messages.reduce(OutboxBatchBytes.envelope) { $0 + OutboxBatchBytes.cost($1) }
        guard bytes > batchBytesLimit / 2 else { return }
        batchesTakenAtTheLimit += 1
        guard batchesTakenAtTheLimit >= Limits.outboxBatchBytesRegrowAfterBatches else { return }
        batchesTakenAtTheLimit = 0
        batchBytesLimit = batchBytesLimit > config.batchBytesMax / 2 ? config.batchBytesMax : batchBytesLimit * 2
    }

    /// The rescan's last page is in: every replayed dead letter it found is queued, so the keys
    /// held for it go on. (A rescan dropped for a failed read keeps them held until the next.)
    mutating func finishRescan(_ now: Int64) {
        let after = deadKeysAfterRescan
        deadKeysAfterRescan = [:]
        for (k, change) in after.sorted(by: { $0.key < $1.key }) {
            // A message of the key that died meanwhile changed the entry: it stands.
            guard deadKeys[k] == change.held else { continue }
            deadKeys[k] = change.next == .max ? nil : change.next
            markMaybeReady(k, now)
            if missing[k] != nil { noteRefill(k) }
        }
    }

    mutating func resetMemory() {
        queues = [:]
        ready = []
        readyHead = 0
        inReady = []
        delayed = []
        delayedDueMs = .max
        known = []
        loadedCount = 0
        loadedBytes = 0
        missing = [:]
        refills = []
        inRefills = []
        cursor = 0
        tailMore = true
        loading = nil
        rescanAfter = nil
        deadKeys = [:]
        deadKeysAfterRescan = [:]
        batches = [:]
        splits = []
        lastAcknowledgedMs = .min
        cleaning = false
    }

    /// The sink could not take (some of) a batch: the whole relay backs off.
    mutating func sinkDown(_ reason: String, _ now: Int64) {
        sinkDownTotal += 1
        lastSinkError = reason
        sinkDownAttempts += 1
        sinkDownUntilMs = now + backoffDelayMs(attempt: sinkDownAttempts, minMs: config.sinkDownDelayMsMin,
                                               maxMs: config.sinkDownDelayMsMax, rng: &rng)
    }

    mutating func loseLease(_ now: Int64) {
        guard case .held = lease else { return }
        lease = .acquiring
        resetMemory()
        nextLeaseTryMs = now + config.leaseRetryMs
    }

    func isBlocked(_ key: String, _ q: KeyQueue) -> Bool {
        guard let first = q.first else { return false }
        return isBlocked(key, id: first.id)
    }

    /// Message `id` of `key` waits behind a dead letter of its key.
    func isBlocked(_ key: String, id: Int64) -> Bool {
        guard config.deadLetterBlocksKey, let dead = deadKeys[key] else { return false }
        return dead < id
    }

    /// How many messages `key` may hold in memory: a blocked key only its head (the rest would
    /// sit there until a replay, taking the room of keys that can go).
    func keyCap(_ key: String, id: Int64) -> Int {
        isBlocked(key, id: id) ? 1 : max(1, config.loadedPerKeyMax)
    }

    /// Leaves the messages of `key` past its cap out of memory (they come back by `.loadKey`).
    mutating func trim(_ key: String) {
        guard var q = queues[key], let first = q.first else { return }
        let cap = keyCap(key, id: first.id)
        guard q.count > cap else { return }
        let keep = q.head + cap
        let dropped = q.messages[keep...]
        for m in dropped {
            known.remove(m.id)
            loadedBytes -= m.heldBytes
        }
        loadedCount -= dropped.count
        missing[key] = min(missing[key] ?? .max, dropped.first!.id)
        q.messages.removeSubrange(keep...)
        queues[key] = q
    }

    /// Queues `key` for a `.loadKey` if it has rows out of memory and is running low.
    mutating func noteRefill(_ key: String) {
        guard needsRefill(key), inRefills.insert(key).inserted else { return }
        refills.append(key)
    }

    func needsRefill(_ key: String) -> Bool {
        guard let from = missing[key] else { return false }
        // Blocked: the rows would only wait; the replay's rescan brings the key back.
        if isBlocked(key, id: from) { return false }
        return (queues[key]?.count ?? 0) <= config.loadedPerKeyMax / 2
    }

    mutating func markMaybeReady(_ key: String, _ now: Int64) {
        guard let q = queues[key], !q.busy, q.count > 0, !isBlocked(key, q) else { return }
        if q.retryAtMs > now {
            delayed.insert(key)
            delayedDueMs = min(delayedDueMs, q.retryAtMs)
            return
        }
        if inReady.insert(key).inserted { ready.append(key) }
    }

    mutating func tick(_ now: Int64, _ out: inout [RelayAction]) {
        switch lease {
        case .acquiring:
            if now >= nextLeaseTryMs {
                nextLeaseTryMs = now + config.leaseRetryMs
                out.append(.acquireLease)
            }
            return
        case .held(let token):
            if now >= nextRenewMs {
                nextRenewMs = now + config.leaseTTLMs / 3
                out.append(.renewLease(token: token))
            }
        case .idle, .stopped:
            return
        }
        if now >= delayedDueMs {
            let keys = delayed
            delayed = []
            delayedDueMs = .max
            for k in keys { markMaybeReady(k, now) }
        }
        if now >= nextRescanMs && rescanAfter == nil {
            startRescan(now, &out)
        } else if now >= nextPollMs {
            tailMore = true
        }
        loadIfNeeded(now, &out)
        dispatch(now, &out)
        if !cleaning && now >= nextCleanupMs {
            cleaning = true
            out.append(.cleanup(retentionMs: config.retentionMs, limit: config.cleanupRowsMax))
        }
    }

    mutating func startRescan(_ now: Int64, _ out: inout [RelayAction]) {
        nextRescanMs = now + config.rescanIntervalMs
        rescanAfter = 0
        rescanEnd = cursor
        loadIfNeeded(now, &out)
    }

    mutating func loadIfNeeded(_ now: Int64, _ out: inout [RelayAction]) {
        guard case .held = lease, loading == nil, now >= loadNotBeforeMs else { return }
        if let after = rescanAfter {
            loading = .rescan
            out.append(.load(afterID: after, limit: config.loadRowsMax))
            return
        }
        while let key = refills.first {
            refills.removeFirst()
            inRefills.remove(key)
            guard needsRefill(key), let from = missing[key] else { continue }
            let limit = max(1, config.loadedPerKeyMax - (queues[key]?.count ?? 0))
            loading = .key(key, afterID: from - 1, limit: limit)
            out.append(.loadKey(key: key, afterID: from - 1, limit: limit))
            return
        }
        let room = config.loadedMessagesMax - loadedCount
        guard tailMore, room > 0, loadedBytes < config.loadedBytesMax else { return }
        let limit = min(config.loadRowsMax, room)
        loading = .tail(limit: limit)
        out.append(.load(afterID: cursor, limit: limit))
    }

    mutating func loaded(_ kind: Loading, afterID: Int64, rows: [OutboxMessage], dead: [String: Int64]?, _ now: Int64) {
        if let dead {
            let fresh = config.deadLetterBlocksKey ? dead : [:]
            var next = fresh
            deadKeysAfterRescan = [:]
            if kind == .rescan {
                // The replayed row may be on a later page: its key stays held at the old dead
                // letter until the rescan has taken it in (`finishRescan`).
                for (k, held) in deadKeys where (fresh[k] ?? .max) > held {
                    next[k] = held
                    deadKeysAfterRescan[k] = (held, fresh[k] ?? .max)
                }
            }
            deadKeys = next
            for k in queues.keys { markMaybeReady(k, now) }
            // A replayed dead letter unblocks its key: its left-out rows may be loaded again.
            for k in missing.keys { noteRefill(k) }
        }
        if case .key(let key, let after, let asked) = kind {
            guard after == afterID, let from = missing[key], from - 1 == after else { return }
            // Every row of the key below `from` is held, so these go after them, in order.
            missing[key] = nil
            // take() leaves a row out (and sets `missing` again) only past the key's cap.
            for m in rows where m.key == key && m.id > after {
                if !take(m, now) { break }
            }
            if pageWasFull(rows, asked: asked), missing[key] == nil, let last = rows.last {
                // A full page: more of the key may follow.
                missing[key] = last.id + 1
            }
            noteRefill(key)
            return
        }
        if kind == .rescan, let after = rescanAfter, after == afterID {
            // A rescan page: rows we do not hold yet (a replayed dead letter; a row a cursor would
            // have missed) are taken in, whatever the memory bound says: there are few of them.
            var last = after
            for m in rows {
                last = m.id
                if m.id > rescanEnd { break }
                take(m, now)
            }
            if !pageWasFull(rows, asked: config.loadRowsMax) || last >= rescanEnd {
                rescanAfter = nil
                finishRescan(now)
            } else {
                rescanAfter = last
            }
            return
        }
        guard case .tail(let asked) = kind, afterID == cursor else { return }
        for m in rows where m.id > cursor {
            cursor = m.id
            take(m, now)
        }
        if !pageWasFull(rows, asked: asked) {
            tailMore = false
            nextPollMs = now + config.pollIntervalMs
        }
    }

    /// Whether a read may have stopped before the table's end: at its row limit, or at its
    /// bytes (`loadPageBytesMax`, where the store cuts a page of large messages short).
    func pageWasFull(_ rows: [OutboxMessage], asked: Int) -> Bool {
        rows.count >= asked || rows.reduce(0) { $0 + $1.heldBytes } >= config.loadPageBytesMax
    }

    /// Holds `m` in memory unless its key is at its cap or has earlier rows out of memory;
    /// false when `m` was left out (it stays pending in the table).
    @discardableResult
    mutating func take(_ m: OutboxMessage, _ now: Int64) -> Bool {
        guard !known.contains(m.id) else { return true }
        if let from = missing[m.key], m.id >= from { return false }
        var q = queues[m.key] ?? KeyQueue()
        if q.count >= keyCap(m.key, id: q.first.map { min($0.id, m.id) } ?? m.id) {
            guard let last = q.messages.last, last.id > m.id else {
                missing[m.key] = m.id
                return false
            }
            // `m` goes before the key's last held message (a replayed row, found by a rescan):
            // hold `m` and leave that one out instead, so the held rows stay a prefix of the
            // key's pending rows. A lone head in a batch cannot be left out: one over the cap.
            if !(q.count == 1 && q.busy) {
                q.messages.removeLast()
                known.remove(last.id)
                loadedCount -= 1
                loadedBytes -= last.heldBytes
                missing[m.key] = last.id
            }
        }
        known.insert(m.id)
        loadedCount += 1
        loadedBytes += m.heldBytes
        q.insert(m)
        queues[m.key] = q
        markMaybeReady(m.key, now)
        return true
    }

    /// Queues `messages` (a batch of several the sink refused or failed whole) to go again as
    /// two batches of half as many, ahead of new batches (`dispatch`).
    private mutating func splitInHalves(_ messages: [OutboxMessage]) {
        precondition(messages.count > 1, "a message alone is not split")
        let half = messages.count / 2
        splits.append(Array(messages[..<half]))
        splits.append(Array(messages[half...]))
    }

    mutating func dispatch(_ now: Int64, _ out: inout [RelayAction]) {
        guard case .held = lease, now >= sinkDownUntilMs else { return }
        // Halves of a batch refused or failed whole go first: their keys are busy until then.
        while batches.count < config.batchesInFlightMax && !splits.isEmpty {
            let msgs = splits.removeFirst()
            let id = nextBatch
            nextBatch += 1
            batches[id] = Batch(messages: msgs, write: nil, sentMs: now, split: true)
            out.append(.deliver(batch: id, messages: msgs))
        }
        while batches.count < config.batchesInFlightMax && readyHead < ready.count {
            var msgs: [OutboxMessage] = []
            var bytes = OutboxBatchBytes.envelope
            var aloneLater: [String] = []
            while msgs.count < config.batchMessagesMax && readyHead < ready.count {
                let key = ready[readyHead]
                guard var q = queues[key], !q.busy, let m = q.first, !isBlocked(key, q) else {
                    readyHead += 1
                    inReady.remove(key)
                    continue
                }
                if q.retryAtMs > now {
                    readyHead += 1
                    inReady.remove(key)
                    delayed.insert(key)
                    delayedDueMs = min(delayedDueMs, q.retryAtMs)
                    continue
                }
                // A head that goes alone gets a batch of its own: put back in line after this one.
                let alone = q.aloneID == m.id
                if alone && !msgs.isEmpty {
                    readyHead += 1
                    inReady.remove(key)
                    aloneLater.append(key)
                    continue
                }
                // Full by size: the key stays first in line for the next batch. A message too
                // large for any batch still goes, alone (the sink then refuses it as a message).
                let cost = OutboxBatchBytes.cost(m)
                if !msgs.isEmpty && bytes + cost > batchBytesLimit { break }
                readyHead += 1
                inReady.remove(key)
                bytes += cost
                q.busy = true
                queues[key] = q
                msgs.append(m)
                if alone { break }
            }
            for key in aloneLater where inReady.insert(key).inserted { ready.append(key) }
            if readyHead > 1024 && readyHead * 2 > ready.count {
                ready.removeFirst(readyHead)
                readyHead = 0
            }
            if msgs.isEmpty { break }
            let id = nextBatch
            nextBatch += 1
            batches[id] = Batch(messages: msgs, write: nil, sentMs: now)
            out.append(.deliver(batch: id, messages: msgs))
        }
    }
}
