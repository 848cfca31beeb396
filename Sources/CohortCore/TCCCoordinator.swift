/// The TCC (try / confirm / cancel) coordinator as a pure state machine, next to `Coordinator`
/// in `cohortd`. No I/O, clock or randomness: the runtime feeds events with the time and carries
/// out the actions (log appends, HTTP calls to branch URLs, timers, replies).
///
/// Presumed cancel: a branch record is forced before its try is called, so every branch that
/// may have reserved something is known after a crash; a confirm decision is forced before
/// anyone hears "committed". On restart a decided transaction re-drives its confirms, every other
/// one with branch records is cancelled. Confirm and cancel are retried with capped backoff and
/// jitter until a 2xx; past the retry budget the transaction is `parked` (still retried, slowly).
public struct TCCCoordinator {
    /// The reason of a transaction its initiator aborted (`POST .../abort`): an initiator that
    /// reads reasons (the demo's order service) tells its own aborts from others by it.
    public static let initiatorAbortReason = "aborted by the initiator"
    public struct Config: Sendable {
        public var openTransactionsMax = Limits.openTransactionsMax
        /// Confirming and cancelling transactions, bounded apart from the undecided ones.
        public var settlingTransactionsMax = Limits.committingTransactionsMax
        public var branchesPerTransactionMax = Limits.tccBranchesPerTransactionMax
        public var timeoutMsDefault = Limits.transactionTimeoutMsDefault
        public var timeoutMsMax = Limits.transactionTimeoutMsMax
        public var retryDelayMsMin = Limits.retryDelayMsMin
        public var retryDelayMsMax = Limits.retryDelayMsMax
        public var retryBudgetAttempts = Limits.retryBudgetAttempts
        public var retryBudgetMs = Limits.retryBudgetMs
        public var parkedRetryDelayMs = Limits.parkedRetryDelayMs
        public var finishedTransactionsKept = Limits.finishedTransactionsKept
        /// The coordinator whose txids this machine runs (they come from its sequence), for
        /// the ledger of forgotten outcomes; empty keeps no ledger.
        public var coordinatorID = ""
        public var forgottenOutcomesKept = Limits.forgottenOutcomesKept
        public var openBranchBytesMax = Limits.tccOpenBranchBytesMax
        public var finishedKeptBytesMax = Limits.tccFinishedKeptBytesMax
        /// Bytes of audit entries a checkpoint holds (`Limits.operatorAuditsKeptBytesMax`; a
        /// parameter so tests can reach it).
        public var auditsInSnapshotBytesMax = Limits.operatorAuditsKeptBytesMax
        public var seed: UInt64 = 1
        public init() {}
    }

    public enum State: String, Sendable, CaseIterable {
        case active
        /// Confirm decision appended, not yet durable.
        case deciding
        case confirming
        case cancelling
        case committed
        case aborted
        public var isFinished: Bool { self == .committed || self == .aborted }
    }

    public enum BranchState: String, Sendable, CaseIterable {
        /// Branch record appended, not yet durable: its try is not called yet.
        case registering
        case trying
        case tried
        case tryFailed = "try-failed"
        case confirming
        case confirmed
        case cancelling
        case cancelled
        /// An operator ended the wait for this branch's confirm or cancel (`txctl commit|abort
        /// --force` on a confirming or cancelling transaction): it is no longer called.
        case resolvedByOperator = "resolved-by-operator"
    }

    public enum Call: String, Sendable { case `try`, confirm, cancel }

    public struct BranchSpec: Equatable, Sendable {
        public let branchID: String
        public let tryURL: String
        public let confirmURL: String
        public let cancelURL: String
        public let payload: JSONValue?
        /// The payload's size in the log's binary form (`TCCRecordCoding.encodeJSON`).
        public let payloadLogBytes: Int
        public init(branchID: String, tryURL: String, confirmURL: String, cancelURL: String, payload: JSONValue?) {
            self.branchID = branchID
            self.tryURL = tryURL
            self.confirmURL = confirmURL
            self.cancelURL = cancelURL
            self.payload = payload
            payloadLogBytes = payload.map { TCCRecordCoding.encodedJSONBytes($0) } ?? 0
        }

        /// What the coordinator holds for this branch, about as logged (counted against
        /// `openBranchBytesMax` and `finishedKeptBytesMax`).
        var heldBytes: Int { 64 + branchID.utf8.count + tryURL.utf8.count + confirmURL.utf8.count + cancelURL.utf8.count + payloadLogBytes }

        /// The same branch without its payload, which nothing needs once the transaction ended.
        var withoutPayload: BranchSpec {
            payload == nil ? self : BranchSpec(branchID: branchID, tryURL: tryURL, confirmURL: confirmURL, cancelURL: cancelURL, payload: nil)
        }
    }

    public struct Branch: Sendable {
        public internal(set) var spec: BranchSpec
        public var state: BranchState
        public var attempts = 0
        public var lastError: String?
        public var nextRetryAtMs: Int64?
        public var history: [Coordinator.Attempt] = []
        var waiter: RequestID?
        /// Re-sent because its service answered again (`tccServiceDownMsMin`) since its own retry
        /// timer last fired, and not left without an answer since: a branch its service refused
        /// when woken (an HTTP error status, `isRefusal`: a poison confirm) is not woken again
        /// before that timer re-sends it. Woken again at every later answer, it was called every
        /// second or two at a service answering calls a second or more apart (each answer ended
        /// a spell its own failure began), instead of every 30 s (a review). One whose woken call
        /// got no answer (the service went down again) is woken at the service's next return.
        var wokenSinceRetry = false
    }

    public struct Transaction: Sendable {
        public let txid: TxID
        public var state: State
        public let createdAtMs: Int64
        public let timeoutMs: Int64
        public var branches: [Branch] = []
        public var outcome: Outcome?
        public var reason: String?
        /// When the confirm decision was durable, or when cancelling started (retry budget clock).
        public var settleStartedAtMs: Int64?
        public var finishedAtMs: Int64?
        public var parked = false
        public var events: [Coordinator.TimelineEvent] = []
        /// Operators' forced decisions on this transaction (each one durable before it acted).
        public var audit: [Coordinator.AuditEntry] = []
        var commitWaiters: [RequestID] = []
        func index(_ id: String) -> Int? { branches.firstIndex { $0.spec.branchID == id } }
        public var deadlineMs: Int64 { createdAtMs + timeoutMs }
        var heldBytes: Int { branches.reduce(0) { $0 + $1.spec.heldBytes } }
        /// What a finished transaction holds in memory: its branches (without payloads, with
        /// their attempt histories), its timeline and its operators' audit entries. Each of
        /// those is bounded in count only, and an entry or an event carries a reason of up to
        /// `reasonBytesMax`: counted, so that `finishedKeptBytesMax` bounds the whole.
        var finishedKeptBytes: Int {
            let branchBytes = branches.reduce(0) { sum, b in
                sum + b.spec.heldBytes + (b.lastError?.utf8.count ?? 0)
                    + b.history.reduce(0) { $0 + $1.keptBytes }
            }
            let eventBytes = events.reduce(0) { $0 + $1.keptBytes }
            return 128 + (reason?.utf8.count ?? 0) + branchBytes + eventBytes + audit.reduce(0) { $0 + OperatorAudits.keptBytes($1) }
        }
        /// Adds an operator's entry, keeping the newest `auditEntriesPerTransactionMax`.
        mutating func appendAudit(_ entry: Coordinator.AuditEntry) {
            audit.append(entry)
            if audit.count > Limits.auditEntriesPerTransactionMax { audit.removeFirst(audit.count - Limits.auditEntriesPerTransactionMax) }
        }
    }

    public enum TryResult: Equatable, Sendable {
        case succeeded(JSONValue?)
        /// The service answered with an error status (e.g. 409: not enough stock).
        case refused(status: Int, error: String)
        /// No answer (connection failed, timed out) or an unreadable one: it may have run.
        case failed(String)
    }

    public enum Event {
        case begin(RequestID, txid: TxID, timeoutMs: Int64?)
        case register(RequestID, txid: String, BranchSpec)
        case branchDurable(TxID, branchID: String)
        /// The branch record could not be appended (log full): nothing was called.
        case branchRefused(TxID, branchID: String, reason: String)
        case tryAnswered(TxID, branchID: String, TryResult)
        case commit(RequestID, txid: String)
        case abort(RequestID, txid: String)
        case decisionDurable(TxID)
        case decisionRefused(TxID, reason: String)
        /// A confirm or cancel call's answer: nil error for a 2xx. `status`: the HTTP status the
        /// service answered, nil when none came (connection refused or reset, timed out).
        case settled(TxID, branchID: String, Call, error: String?, status: Int? = nil)
        case timerFired(Timer)
        /// An operator forces an outcome (`txctl commit|abort TXID --force`).
        case force(RequestID, txid: String, Coordinator.ForceRequest)
        /// The audit record of a forced decision is durable: carry the decision out.
        case auditDurable(TxID)
        /// The audit record could not be appended (log full): nothing was forced.
        case auditRefused(TxID, reason: String)
        /// An operator asks to re-send the pending confirms or cancels now (`txctl retry`).
        case retryNow(RequestID, txid: String)
    }

    public enum Timer: Hashable, Sendable {
        case timeout(TxID)
        case retry(TxID, branchID: String)
    }

    public enum Reply: Equatable, Sendable {
        case begun(TxID, timeoutMs: Int64)
        case tried(TxID, branchID: String, result: JSONValue?)
        case outcome(TxID, Outcome, reason: String?)
        /// What a forced decision did (or, for a dry run, would do).
        case forced(TxID, outcome: Outcome, dryRun: Bool, effects: [String])
        /// The branches whose confirm or cancel was sent again.
        case retried(TxID, branches: [String])
        case error(RequestError)
    }

    public enum Record: Equatable, Sendable {
        /// Forced before the branch's try is called.
        case branch(TxID, BranchSpec, createdAtMs: Int64, timeoutMs: Int64)
        /// Forced before "committed" is answered or any confirm is sent.
        case confirmDecision(TxID, branchIDs: [String], atMs: Int64)
        /// Unforced, once every branch confirmed or cancelled.
        case end(TxID, Outcome)
        /// Forced before an operator's decision takes effect. `resolvesPending`: it ends a
        /// confirming or cancelling transaction without waiting for the branches still pending;
        /// otherwise a forced commit is the confirm decision and a forced abort a cancel.
        case audit(TxID, Coordinator.AuditEntry, outcome: Outcome, resolvesPending: Bool)

        public var txid: TxID {
            switch self {
            case .branch(let t, _, _, _), .confirmDecision(let t, _, _), .end(let t, _), .audit(let t, _, _, _): return t
            }
        }
    }

    public enum Action: Equatable {
        case reply(RequestID, Reply)
        case call(TxID, branchID: String, Call, url: String, TCCPhaseRequest)
        case log(Record, force: Bool)
        case setTimer(Timer, afterMs: Int64)
        case cancelTimer(Timer)
    }

    public struct Stats: Sendable {
        public var committed: UInt64 = 0
        public var aborted: UInt64 = 0
        /// Commits, aborts and registrations of forgotten transactions answered from the ledger.
        public var answeredFromLedger: UInt64 = 0
    }

    public let config: Config
    private var rng: SplitMix64
    public var open: [TxID: Transaction] { openTable.byID }
    /// Confirming and cancelling transactions are counted apart: decided, they wait only on
    /// their services, and bounded together with the undecided ones, a service that stopped
    /// answering confirms filled the 10,000 and refused every new TCC transaction.
    private var openTable = OpenTransactions<Transaction>()
    /// Branches confirmed or cancelled since this machine was made. A settle is not logged (a
    /// repeat is harmless while the service keeps the branch's barrier rows), so the runtime's
    /// timed checkpoint watches this too: with nothing logged after a checkpoint, a branch
    /// confirmed later stayed `confirming` in the newest checkpoint for good, and a restart
    /// after its service purged the rows got 409 "never tried" for ever (a review).
    public private(set) var branchesSettledTotal: UInt64 = 0
    /// Open transactions decided and confirming or cancelling their branches.
    public var settlingCount: Int { openTable.settlingCount }
    public private(set) var finished: [TxID: Transaction] = [:]
    private var finishedOrder: [TxID] = []
    private var finishedOrderHead = 0
    /// The newest confirmed transaction let go of `finished` (see `ForgottenCommits`).
    public private(set) var forgottenCommits = ForgottenCommits()
    /// Outcomes of transactions no longer in `finished` (kept in snapshots; see `OutcomeLedger`).
    public private(set) var outcomeLedger: OutcomeLedger
    /// `heldBytes` of every open transaction, and of every finished one kept.
    public private(set) var openBranchBytes = 0
    public private(set) var finishedKeptBytes = 0
    public private(set) var stats = Stats()
    /// The largest epoch of any txid recovered (the runtime raises `Coordinator`'s epoch past it).
    public private(set) var maxEpochSeen: UInt64 = 0
    /// What was last heard from each service (by origin, `http://host:port`) that has branches
    /// waiting on a retry timer; see `Limits.tccServiceDownMsMin`. Not logged: after a restart
    /// every confirming or cancelling branch is called at once anyway.
    private(set) var services: [String: ServiceWatch] = [:]
    /// Branches woken because their service came back (`tccServiceDownMsMin`) since this machine
    /// was made.
    public private(set) var branchesWokenTotal: UInt64 = 0

    /// Whether the service `url` calls is being woken: it answered after a spell of failures of
    /// at least `tccServiceDownMsMin` and branches still wait there (read by the simulation, to
    /// count the answers that arrive meanwhile).
    public func isWaking(serviceOf url: String) -> Bool {
        !services.isEmpty && services[Self.origin(of: url)]?.recovering == true
    }

    struct BranchRef: Hashable {
        let txid: TxID
        let branchID: String
    }

    struct ServiceWatch {
        /// The first failed call since the last answer; nil while the service answers.
        var downSinceMs: Int64?
        /// A spell of at least `tccServiceDownMsMin` ended: each answer wakes one more waiting
        /// branch, until a call fails again.
        var recovering = false
        /// Branches whose call here failed, oldest first. An entry goes stale when its branch is
        /// called again (woken included), settles, or is resolved by an operator; stale ones are
        /// skipped when read, dropped from the head by `forgetStale` and from anywhere when the
        /// list doubles (`compactAtCount`), so it stays within twice the branches really waiting.
        var waiting: [BranchRef] = []
        var waitingHead = 0
        var compactAtCount = 16
        var waitingCount: Int { waiting.count - waitingHead }
    }

    /// Forced decisions whose audit record is being written, by transaction.
    private var pendingForces: [TxID: (request: RequestID, force: Coordinator.ForceRequest, entry: Coordinator.AuditEntry, resolvesPending: Bool)] = [:]

    public init(config: Config = Config()) {
        self.config = config
        rng = SplitMix64(seed: config.seed ^ 0x7CC7_CC7C)
        outcomeLedger = OutcomeLedger(coordinatorID: config.coordinatorID, entriesKept: config.forgottenOutcomesKept)
    }

    public var unfinishedCount: Int { openTable.count }
    public var parkedCount: Int { openTable.byID.values.reduce(0) { $0 + ($1.parked ? 1 : 0) } }
    public func transaction(_ txid: TxID) -> Transaction? { openTable.byID[txid] ?? finished[txid] }

    /// `transaction(txid) != nil` without copying the transaction out.
    public func holds(_ txid: TxID) -> Bool { openTable.byID.index(forKey: txid) != nil || finished.index(forKey: txid) != nil }

    /// The outcome of a TCC transaction no longer kept whole, from the ledger.
    public func forgottenOutcome(_ txid: TxID) -> Outcome? {
        guard !holds(txid) else { return nil }
        return outcomeLedger.lookup(txid)?.outcome
    }

    /// `GET /v1/transactions/{txid}` of a TCC transaction known only from the ledger.
    public func forgottenView(_ txid: TxID) -> TransactionView? {
        guard let outcome = forgottenOutcome(txid) else { return nil }
        return TransactionView(forgotten: txid, protocol: "tcc", state: outcome.rawValue, outcome: outcome.rawValue)
    }

    private mutating func answerFromLedger(_ text: String) -> (TxID, Outcome)? {
        guard let txid = TxID(text), let outcome = forgottenOutcome(txid) else { return nil }
        stats.answeredFromLedger += 1
        return (txid, outcome)
    }
    /// Every transaction, newest first.
    public func allTransactions() -> [Transaction] {
        (Array(openTable.byID.values) + Array(finished.values)).sorted { $0.txid > $1.txid }
    }

    // MARK: - events

    public mutating func on(_ event: Event, nowMs: Int64) -> [Action] {
        switch event {
        case .begin(let request, let txid, let timeoutMs):
            let settling = openTable.settlingCount
            guard openTable.count - settling < config.openTransactionsMax else {
                return [.reply(request, .error(RequestError(503, "too many open TCC transactions (limit \(config.openTransactionsMax) undecided); retry later")))]
            }
            guard settling < config.settlingTransactionsMax else {
                return [.reply(request, .error(RequestError(503, "\(settling) TCC transactions wait for their services to confirm or cancel (limit \(config.settlingTransactionsMax)); new ones are refused until they do: txctl list --state parked shows which")))]
            }
            let timeout = timeoutMs ?? config.timeoutMsDefault
            guard timeout > 0, timeout <= config.timeoutMsMax else {
                return [.reply(request, .error(RequestError(400, "timeout_ms must be between 1 and \(config.timeoutMsMax)")))]
            }
            var tx = Transaction(txid: txid, state: .active, createdAtMs: nowMs, timeoutMs: timeout)
            note(&tx, nowMs, "begun", detail: "tcc, timeout \(timeout)ms")
            openTable[txid] = tx
            return [.setTimer(.timeout(txid), afterMs: timeout), .reply(request, .begun(txid, timeoutMs: timeout))]
        case .register(let request, let text, let spec):
            return register(request, text, spec, nowMs: nowMs)
        case .branchDurable(let txid, let id):
            guard var tx = openTable.byID[txid], let i = tx.index(id), tx.branches[i].state == .registering else { return [] }
            tx.branches[i].state = .trying
            note(&tx, nowMs, "try-sent", branch: id)
            openTable[txid] = tx
            return [call(tx, i, .try)]
        case .branchRefused(let txid, let id, let reason):
            guard var tx = openTable.byID[txid], let i = tx.index(id), tx.branches[i].state == .registering else { return [] }
            let waiter = tx.branches[i].waiter
            openBranchBytes -= tx.branches[i].spec.heldBytes
            tx.branches.remove(at: i)
            openTable[txid] = tx
            return waiter.map { [.reply($0, .error(RequestError(503, "cannot record the branch: \(reason)")))] } ?? []
        case .tryAnswered(let txid, let id, let result):
            // A service's error text is kept (timeline, reason, checkpoint): bounded here.
            switch result {
            case .refused(let status, let error):
                return tryAnswered(txid, id, .refused(status: status, error: error.clippedUTF8(toBytes: Limits.reasonBytesMax)), nowMs: nowMs)
            case .failed(let error):
                return tryAnswered(txid, id, .failed(error.clippedUTF8(toBytes: Limits.reasonBytesMax)), nowMs: nowMs)
            case .succeeded(let value?):
                // The try's result, as the service answered it, goes to the client: at most
                // `tccPayloadBytesMax` of JSON, as a payload. A larger one (up to a response's
                // 4 MiB) is a failed try, so the reservation it made is cancelled.
                var w = JSONWriter()
                w.value(value.node)
                guard w.bytes.count <= Limits.tccPayloadBytesMax else {
                    return tryAnswered(txid, id, .failed("the try answered a result of \(w.bytes.count) bytes of JSON, over the limit of \(Limits.tccPayloadBytesMax)"), nowMs: nowMs)
                }
                return tryAnswered(txid, id, result, nowMs: nowMs)
            case .succeeded(nil):
                return tryAnswered(txid, id, result, nowMs: nowMs)
            }
        case .commit(let request, let text):
            return commit(request, text, nowMs: nowMs)
        case .abort(let request, let text):
            switch lookup(text) {
            case .failure(let e):
                guard let (txid, outcome) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
                if outcome == .committed {
                    return [.reply(request, .error(RequestError(409, "transaction \(txid) is already committed; it cannot be aborted")))]
                }
                return [.reply(request, .outcome(txid, .aborted, reason: Coordinator.forgottenAbortReason))]
            case .success(let txid):
                let tx = transaction(txid)!
                if pendingForces[txid] != nil, tx.state == .active {
                    return [.reply(request, .error(RequestError(409, "an operator's forced decision on \(txid) is being recorded; look again in a moment")))]
                }
                switch tx.state {
                case .active:
                    var actions = startCancel(txid, reason: Self.initiatorAbortReason, nowMs: nowMs)
                    actions.append(.reply(request, .outcome(txid, .aborted, reason: Self.initiatorAbortReason)))
                    return actions
                case .cancelling, .aborted:
                    return [.reply(request, .outcome(txid, .aborted, reason: tx.reason))]
                case .deciding:
                    // The confirm decision is being written: committed unless it cannot be.
                    return [.reply(request, .error(RequestError(409, "transaction \(txid) is being committed; it cannot be aborted (look again for its outcome)")))]
                case .confirming, .committed:
                    return [.reply(request, .error(RequestError(409, "transaction \(txid) is already committed; it cannot be aborted")))]
                }
            }
        case .decisionDurable(let txid):
            guard var tx = openTable.byID[txid], tx.state == .deciding else { return [] }
            tx.state = .confirming
            tx.outcome = .committed
            tx.settleStartedAtMs = nowMs
            note(&tx, nowMs, "decided", detail: "confirm")
            var actions: [Action] = tx.commitWaiters.map { .reply($0, .outcome(txid, .committed, reason: nil)) }
            tx.commitWaiters = []
            for i in tx.branches.indices {
                tx.branches[i].state = .confirming
                actions.append(call(tx, i, .confirm))
            }
            openTable[txid] = tx
            if tx.branches.isEmpty { actions += finish(txid, nowMs: nowMs) }
            return actions
        case .decisionRefused(let txid, let reason):
            guard let tx = openTable.byID[txid], tx.state == .deciding else { return [] }
            return startCancel(txid, reason: "the confirm decision could not be recorded: \(reason)", nowMs: nowMs)
        case .settled(let txid, let id, let phase, let error, let status):
            return settled(txid, id, phase, error: error, status: status, nowMs: nowMs)
        case .force(let request, let text, let force):
            return forceRequested(request, text, force, nowMs: nowMs)
        case .auditDurable(let txid):
            return auditDurable(txid, nowMs: nowMs)
        case .auditRefused(let txid, let reason):
            guard let pending = pendingForces.removeValue(forKey: txid) else { return [] }
            return [.reply(pending.request, .error(RequestError(503, "cannot record the forced decision: \(reason)")))]
        case .retryNow(let request, let text):
            return retryNow(request, text, nowMs: nowMs)
        case .timerFired(let timer):
            switch timer {
            case .timeout(let txid):
                guard let tx = openTable.byID[txid], tx.state == .active else { return [] }
                // An operator's decision is being recorded: it decides (a cancel now could
                // contradict a forced commit whose audit record becomes durable).
                if pendingForces[txid] != nil { return [.setTimer(.timeout(txid), afterMs: Limits.retryDelayMsMin)] }
                return startCancel(txid, reason: "timed out after \(tx.timeoutMs)ms", nowMs: nowMs)
            case .retry(let txid, let id):
                guard var tx = openTable.byID[txid], let i = tx.index(id) else { return [] }
                let phase: Call
                switch tx.branches[i].state {
                case .confirming: phase = .confirm
                case .cancelling: phase = .cancel
                default: return []
                }
                tx.branches[i].nextRetryAtMs = nil
                tx.branches[i].wokenSinceRetry = false
                openTable[txid] = tx
                return [call(tx, i, phase)]
            }
        }
    }

    /// The 410 for an unknown txid that may be a confirmed transaction this machine forgot.
    public func forgottenRefusal(_ txid: TxID) -> RequestError? {
        forgottenCommits.refusal(txid, kept: config.finishedTransactionsKept)
    }

    private func lookup(_ text: String) -> Result<TxID, RequestError> {
        guard let txid = TxID(text) else { return .failure(RequestError(400, "malformed txid \"\(text.prefix(80))\"")) }
        guard transaction(txid) != nil else {
            return .failure(forgottenRefusal(txid) ?? RequestError(404, "unknown TCC transaction \(text)"))
        }
        return .success(txid)
    }

    /// Whether `text` names a TCC transaction this machine knows.
    public func owns(_ text: String) -> Bool { TxID(text).map { holds($0) } ?? false }

    private mutating func register(_ request: RequestID, _ text: String, _ spec: BranchSpec, nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            guard let (txid, outcome) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            return [.reply(request, .error(RequestError(409, "transaction \(txid) is \(outcome.rawValue) (forgotten); branches can be added only while it is active")))]
        case .success(let t): txid = t
        }
        var tx = transaction(txid)!
        guard tx.state == .active else {
            return [.reply(request, .error(RequestError(409, "transaction \(txid) is \(tx.state.rawValue); branches can be added only while it is active")))]
        }
        guard pendingForces[txid] == nil else {
            return [.reply(request, .error(RequestError(409, "an operator's forced decision on \(txid) is being recorded; no branch can be added")))]
        }
        guard !spec.branchID.isEmpty, spec.branchID.utf8.count <= Limits.tccBranchIDBytesMax else {
            return [.reply(request, .error(RequestError(400, "branch_id must be 1-\(Limits.tccBranchIDBytesMax) bytes")))]
        }
        for url in [spec.tryURL, spec.confirmURL, spec.cancelURL] {
            guard url.hasPrefix("http://"), url.utf8.count > 7, url.utf8.count <= Limits.participantURLBytesMax else {
                return [.reply(request, .error(RequestError(400, "try_url, confirm_url and cancel_url must be http:// URLs of at most \(Limits.participantURLBytesMax) bytes")))]
            }
        }
        // The log reads a payload back only up to this size, in its own form: a longer one
        // logged would leave a log the coordinator cannot start from.
        guard spec.payloadLogBytes <= Limits.tccPayloadBytesMax else {
            return [.reply(request, .error(RequestError(413, "the payload takes \(spec.payloadLogBytes) bytes in the log, more than \(Limits.tccPayloadBytesMax) (many small numbers or strings take more there than as JSON)")))]
        }
        guard tx.index(spec.branchID) == nil else {
            return [.reply(request, .error(RequestError(409, "branch \(spec.branchID) is already registered in \(txid)")))]
        }
        guard tx.branches.count < config.branchesPerTransactionMax else {
            return [.reply(request, .error(RequestError(409, "transaction \(txid) has \(config.branchesPerTransactionMax) branches, the limit")))]
        }
        guard openBranchBytes + spec.heldBytes <= config.openBranchBytesMax else {
            return [.reply(request, .error(RequestError(503, "the coordinator holds \(openBranchBytes) bytes of open TCC branches, near its limit of \(config.openBranchBytesMax); try again once some transactions end")))]
        }
        var branch = Branch(spec: spec, state: .registering)
        branch.waiter = request
        tx.branches.append(branch)
        openBranchBytes += spec.heldBytes
        note(&tx, nowMs, "branch-registered", branch: spec.branchID)
        openTable[txid] = tx
        return [.log(.branch(txid, spec, createdAtMs: tx.createdAtMs, timeoutMs: tx.timeoutMs), force: true)]
    }

    private mutating func tryAnswered(_ txid: TxID, _ id: String, _ result: TryResult, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], let i = tx.index(id), tx.branches[i].state == .trying else { return [] }
        let waiter = tx.branches[i].waiter
        tx.branches[i].waiter = nil
        let url = tx.branches[i].spec.tryURL
        if case .failed = result {
            serviceFailed(url: url, waiting: nil, nowMs: nowMs)
            return tryAnswered(tx, i, result, waiter: waiter, nowMs: nowMs)
        }
        // A try refused (4xx) was answered too: the service is up. Woken after this
        // transaction is stored, so that nothing overwrites what waking changed.
        let actions = tryAnswered(tx, i, result, waiter: waiter, nowMs: nowMs)
        return actions + serviceAnswered(url: url, nowMs: nowMs)
    }

    private mutating func tryAnswered(_ tx: Transaction, _ i: Int, _ result: TryResult, waiter: RequestID?, nowMs: Int64) -> [Action] {
        var tx = tx
        let txid = tx.txid
        let id = tx.branches[i].spec.branchID
        switch result {
        case .succeeded(let value):
            tx.branches[i].state = .tried
            note(&tx, nowMs, "tried", branch: id)
            openTable[txid] = tx
            return waiter.map { [.reply($0, .tried(txid, branchID: id, result: value))] } ?? []
        case .refused(_, let error), .failed(let error):
            tx.branches[i].state = .tryFailed
            tx.branches[i].lastError = error
            note(&tx, nowMs, "try-failed", branch: id, detail: error)
            openTable[txid] = tx
            var actions: [Action] = []
            if let waiter {
                let status: Int
                if case .refused(let s, _) = result, s == 409 { status = 409 } else { status = 502 }
                actions.append(.reply(waiter, .error(RequestError(status, "try of branch \(id) failed: \(error); the transaction is cancelled"))))
            }
            return actions + startCancel(txid, reason: "try of branch \(id) failed: \(error)", nowMs: nowMs)
        }
    }

    private mutating func commit(_ request: RequestID, _ text: String, nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            guard let (txid, outcome) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            return [.reply(request, .outcome(txid, outcome, reason: outcome == .aborted ? Coordinator.forgottenAbortReason : nil))]
        case .success(let t): txid = t
        }
        var tx = transaction(txid)!
        if pendingForces[txid] != nil, tx.state == .active {
            return [.reply(request, .error(RequestError(409, "an operator's forced decision on \(txid) is being recorded; look again in a moment")))]
        }
        switch tx.state {
        case .active:
            if let pending = tx.branches.first(where: { $0.state == .registering || $0.state == .trying }) {
                return [.reply(request, .error(RequestError(409, "the try of branch \(pending.spec.branchID) has not answered yet; commit once every try answered")))]
            }
            // A transaction without branches takes this path too: its confirm decision (naming no
            // branch) is the only record of it. Answered "committed" at once with nothing logged,
            // after a restart the same txid read as cancelled (presumed cancel: `GET` 404), an
            // outcome flip (a review).
            tx.state = .deciding
            tx.commitWaiters.append(request)
            note(&tx, nowMs, "deciding", detail: "confirm")
            openTable[txid] = tx
            return [.cancelTimer(.timeout(txid)),
                    .log(.confirmDecision(txid, branchIDs: tx.branches.map(\.spec.branchID), atMs: nowMs), force: true)]
        case .deciding:
            tx.commitWaiters.append(request)
            openTable[txid] = tx
            return []
        case .confirming, .committed:
            return [.reply(request, .outcome(txid, .committed, reason: nil))]
        case .cancelling, .aborted:
            return [.reply(request, .outcome(txid, .aborted, reason: tx.reason))]
        }
    }

    /// Cancels every registered branch (tried, failed, or with its try unanswered).
    private mutating func startCancel(_ txid: TxID, reason: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid] else { return [] }
        tx.state = .cancelling
        tx.outcome = .aborted
        tx.reason = tx.reason ?? reason
        tx.settleStartedAtMs = nowMs
        note(&tx, nowMs, "cancelling", detail: reason)
        var actions: [Action] = [.cancelTimer(.timeout(txid))]
        actions += tx.commitWaiters.map { .reply($0, .outcome(txid, .aborted, reason: tx.reason)) }
        tx.commitWaiters = []
        for i in tx.branches.indices where tx.branches[i].state != .cancelled {
            if let w = tx.branches[i].waiter {
                actions.append(.reply(w, .error(RequestError(409, "transaction \(txid) was cancelled (\(reason)) before the try of branch \(tx.branches[i].spec.branchID) answered"))))
                tx.branches[i].waiter = nil
            }
            tx.branches[i].state = .cancelling
            tx.branches[i].attempts = 0
            actions.append(call(tx, i, .cancel))
        }
        openTable[txid] = tx
        if tx.branches.isEmpty { actions += finish(txid, nowMs: nowMs) }
        return actions
    }

    private mutating func settled(_ txid: TxID, _ id: String, _ phase: Call, error: String?, status: Int?, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], let i = tx.index(id) else { return [] }
        let error = error?.clippedUTF8(toBytes: Limits.reasonBytesMax)
        let expected: BranchState = phase == .confirm ? .confirming : .cancelling
        guard tx.branches[i].state == expected else { return [] }
        var actions: [Action] = []
        if let error {
            tx.branches[i].attempts += 1
            tx.branches[i].lastError = error
            tx.branches[i].history.append(Coordinator.Attempt(atMs: nowMs, error: error))
            if tx.branches[i].history.count > Limits.attemptHistoryKept { tx.branches[i].history.removeFirst() }
            if !tx.parked, tx.branches[i].attempts >= config.retryBudgetAttempts || nowMs - (tx.settleStartedAtMs ?? nowMs) >= config.retryBudgetMs {
                tx.parked = true
                note(&tx, nowMs, "parked", branch: id, detail: "retry budget spent; still retried every \(config.parkedRetryDelayMs)ms: \(error)")
            }
            let delay = tx.parked ? config.parkedRetryDelayMs
                : backoffDelayMs(attempt: tx.branches[i].attempts, minMs: config.retryDelayMsMin, maxMs: config.retryDelayMsMax, rng: &rng)
            tx.branches[i].nextRetryAtMs = nowMs + delay
            let refused = Self.isRefusal(status)
            // Woken and left without an answer: the service went down again (it flaps), so the
            // branch waits for the service's next return like any other.
            if !refused { tx.branches[i].wokenSinceRetry = false }
            openTable[txid] = tx
            let waiting = tx.branches[i].wokenSinceRetry ? nil : BranchRef(txid: txid, branchID: id)
            let url = Self.url(of: tx.branches[i].spec, phase)
            let timer: [Action] = [.setTimer(.retry(txid, branchID: id), afterMs: delay)]
            if refused, !services.isEmpty, services[Self.origin(of: url)]?.recovering == true {
                // Refused by a service that answers again: this branch's failure (a poison
                // confirm), not the service's. It counts as an answer, so the waking goes on: a
                // poison among the first 32 woken ended it, and every other branch at that
                // service waited for its parked delay (a review: 28 s for 300 instead of 0.6 s).
                // Listed after the waking, so that it is not the one woken.
                let woken = serviceAnswered(url: url, nowMs: nowMs)
                if let waiting { serviceFailed(url: url, waiting: waiting, nowMs: nowMs, marksDown: false) }
                return timer + woken
            }
            serviceFailed(url: url, waiting: waiting, nowMs: nowMs)
            return timer
        }
        let url = Self.url(of: tx.branches[i].spec, phase)
        tx.branches[i].state = phase == .confirm ? .confirmed : .cancelled
        tx.branches[i].nextRetryAtMs = nil
        branchesSettledTotal += 1
        note(&tx, nowMs, phase == .confirm ? "confirmed" : "cancelled", branch: id)
        actions.append(.cancelTimer(.retry(txid, branchID: id)))
        openTable[txid] = tx
        let done = tx.branches.allSatisfy { $0.state == .confirmed || $0.state == .cancelled }
        if done { actions += finish(txid, nowMs: nowMs) }
        // After this transaction is stored: waking may change another of its branches.
        return actions + serviceAnswered(url: url, nowMs: nowMs)
    }

    private mutating func finish(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard var tx = openTable.removeValue(forKey: txid) else { return [] }
        openBranchBytes -= tx.heldBytes
        let outcome = tx.outcome ?? .aborted
        tx.state = outcome == .committed ? .committed : .aborted
        tx.finishedAtMs = nowMs
        tx.parked = false
        note(&tx, nowMs, tx.state.rawValue)
        if outcome == .committed { stats.committed += 1 } else { stats.aborted += 1 }
        if !services.isEmpty {
            // Its branches wait no more (an operator may have ended the wait of some whose
            // service never answers again): their services' lists may be left with nothing.
            let phase: Call = outcome == .committed ? .confirm : .cancel
            for b in tx.branches { forgetStale(Self.origin(of: Self.url(of: b.spec, phase))) }
        }
        remember(tx)
        // Only a transaction with branch records needs an end record.
        return tx.branches.isEmpty ? [] : [.log(.end(txid, outcome), force: false)]
    }

    /// Keeps a finished transaction, without its payloads (nothing calls its
    /// branches again), within `finishedTransactionsKept` and `finishedKeptBytesMax`.
    private mutating func remember(_ ended: Transaction) {
        var tx = ended
        for i in tx.branches.indices {
            tx.branches[i].spec = tx.branches[i].spec.withoutPayload
        }
        if let replaced = finished.updateValue(tx, forKey: tx.txid) {
            finishedKeptBytes -= replaced.finishedKeptBytes
        } else {
            finishedOrder.append(tx.txid)
        }
        finishedKeptBytes += tx.finishedKeptBytes
        while finishedOrder.count - finishedOrderHead > config.finishedTransactionsKept
                || (finishedKeptBytes > config.finishedKeptBytesMax && finishedOrder.count - finishedOrderHead > 1) {
            if let gone = finished.removeValue(forKey: finishedOrder[finishedOrderHead]) {
                finishedKeptBytes -= gone.finishedKeptBytes
                if gone.outcome == .committed { forgottenCommits.forget(gone.txid) }
                if let outcome = gone.outcome { outcomeLedger.record(gone.txid, .init(outcome: outcome, heuristicMixed: false, threePhase: false)) }
            }
            finishedOrderHead += 1
        }
        if finishedOrderHead > 1024 && finishedOrderHead * 2 > finishedOrder.count {
            finishedOrder.removeFirst(finishedOrderHead)
            finishedOrderHead = 0
        }
    }

    static func url(of spec: BranchSpec, _ phase: Call) -> String {
        switch phase {
        case .try: return spec.tryURL
        case .confirm: return spec.confirmURL
        case .cancel: return spec.cancelURL
        }
    }

    /// `http://host:port` of a branch URL (registration checked the `http://` prefix and that
    /// the HTTP client can call it): the service a call reaches, whatever its path or query.
    /// The authority ends where the client's does (`/` or `?`: `http://inv:7001?op=confirm`
    /// was a service of its own, apart from the `?op=try` that answered), in lower case, with
    /// the port the client connects to (`http://inv` is `http://inv:80`).
    static func origin(of url: String) -> String {
        let rest = url.utf8.dropFirst("http://".count)
        let end = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? url.utf8.endIndex
        let authority = url[rest.startIndex..<end].lowercased()
        return "http://" + authority + (authority.contains(":") ? "" : ":80")
    }

    /// An HTTP answer that refuses the call: the service is up, the branch failed. A gateway's
    /// 502 or 504 says the service behind it did not answer, and a 429 or 503 asks to back off:
    /// no answer, like a connection refused.
    static func isRefusal(_ status: Int?) -> Bool {
        guard let status else { return false }
        return status != 429 && !(502...504).contains(status)
    }

    /// A call to `url`'s service failed: a spell of failures starts (or goes on), and `waiting` (a
    /// branch now on its retry timer) is woken when the service answers again after the spell.
    /// With `marksDown` false only `waiting` is listed (the call was refused by a service that
    /// is answering).
    private mutating func serviceFailed(url: String, waiting: BranchRef?, nowMs: Int64, marksDown: Bool = true) {
        guard waiting != nil || !services.isEmpty else { return }
        let service = Self.origin(of: url)
        guard waiting != nil || services[service] != nil else { return }
        var watch = services[service] ?? ServiceWatch()
        if marksDown {
            if watch.downSinceMs == nil { watch.downSinceMs = nowMs }
            watch.recovering = false
        }
        if let waiting {
            watch.waiting.append(waiting)
            if watch.waitingCount > watch.compactAtCount { compact(&watch, service) }
        }
        services[service] = watch
    }

    /// A call to `url`'s service was answered. After a spell of failures of at least
    /// `tccServiceDownMsMin`, wakes `tccWokenAtRecoveryMax` of its waiting branches, and while
    /// recovering, one more per answer.
    private mutating func serviceAnswered(url: String, nowMs: Int64) -> [Action] {
        // Nothing waits anywhere (the usual case): no origin to cut out of the URL.
        guard !services.isEmpty else { return [] }
        let service = Self.origin(of: url)
        guard var watch = services[service] else { return [] }
        var wake = 0
        if let since = watch.downSinceMs {
            if nowMs - since >= Limits.tccServiceDownMsMin {
                watch.recovering = true
                wake = Limits.tccWokenAtRecoveryMax
            }
            watch.downSinceMs = nil
        } else if watch.recovering {
            wake = 1
        }
        var actions: [Action] = []
        while wake > 0, watch.waitingHead < watch.waiting.count {
            let ref = watch.waiting[watch.waitingHead]
            watch.waitingHead += 1
            guard let (i, phase) = waitingBranch(ref), var tx = openTable.byID[ref.txid], let due = tx.branches[i].nextRetryAtMs else { continue }
            tx.branches[i].nextRetryAtMs = nil
            tx.branches[i].wokenSinceRetry = true
            note(&tx, nowMs, "woken", branch: ref.branchID,
                 detail: "\(service) answers again: \(phase.rawValue) re-sent now, not in \(TimeFormat.duration(ms: max(due - nowMs, 0)))")
            openTable[ref.txid] = tx
            branchesWokenTotal += 1
            actions += [.cancelTimer(.retry(ref.txid, branchID: ref.branchID)), call(tx, i, phase)]
            wake -= 1
        }
        services[service] = watch
        forgetStale(service)
        return actions
    }

    /// The index and pending call of the branch `ref` names while it waits on its retry timer
    /// and may be woken; nil once it no longer does (called again, settled, resolved by an
    /// operator, finished, or woken since its timer last fired).
    private func waitingBranch(_ ref: BranchRef) -> (Int, Call)? {
        guard let tx = openTable.byID[ref.txid], let i = tx.index(ref.branchID), tx.branches[i].nextRetryAtMs != nil,
              !tx.branches[i].wokenSinceRetry else { return nil }
        switch tx.branches[i].state {
        case .confirming: return (i, .confirm)
        case .cancelling: return (i, .cancel)
        default: return nil
        }
    }

    /// Drops the entries at the head of `service`'s list whose branches no longer wait, and the
    /// service once none is left. Called wherever a branch may stop waiting without a call of
    /// its own to follow (an answer to another call, an operator's forced end): without it a
    /// service's entry outlived its branches (a brief failure answered on retry, or a dead
    /// service whose transactions were forced), one per origin ever failing, for good; and
    /// `serviceAnswered` no longer took its quick way out once any service had failed (a review).
    /// A branch that stops waiting by being called again is dropped when that call is answered
    /// (or listed again if it fails), so a service is kept only while a branch of its list
    /// waits or has a call in flight: at most one per such branch.
    private mutating func forgetStale(_ service: String) {
        guard var watch = services[service] else { return }
        while watch.waitingHead < watch.waiting.count, waitingBranch(watch.waiting[watch.waitingHead]) == nil {
            watch.waitingHead += 1
        }
        if watch.waitingHead == watch.waiting.count {
            // Nothing waits here any more: forget the service (a later failure starts afresh).
            services[service] = nil
            return
        }
        if watch.waitingHead > watch.waitingCount { compact(&watch, service) }
        services[service] = watch
    }

    /// Drops stale and repeated entries of `watch.waiting` (order kept).
    private func compact(_ watch: inout ServiceWatch, _ service: String) {
        var seen = Set<BranchRef>()
        var kept: [BranchRef] = []
        for ref in watch.waiting[watch.waitingHead...] where !seen.contains(ref) {
            guard waitingBranch(ref) != nil else { continue }
            seen.insert(ref)
            kept.append(ref)
        }
        watch.waiting = kept
        watch.waitingHead = 0
        watch.compactAtCount = max(16, 2 * kept.count)
    }

    private func call(_ tx: Transaction, _ i: Int, _ phase: Call) -> Action {
        let b = tx.branches[i]
        let url = Self.url(of: b.spec, phase)
        return .call(tx.txid, branchID: b.spec.branchID, phase, url: url,
                     TCCPhaseRequest(txid: tx.txid.description, branchID: b.spec.branchID, payload: b.spec.payload,
                                     deadlineMs: phase == .try ? tx.deadlineMs : nil))
    }

    private func note(_ tx: inout Transaction, _ atMs: Int64, _ event: String, branch: String? = nil, detail: String? = nil) {
        tx.events.append(Coordinator.TimelineEvent(atMs: atMs, event: event, participant: branch, detail: detail))
        if tx.events.count > Limits.eventsPerTransactionMax { tx.events.removeFirst(tx.events.count - Limits.eventsPerTransactionMax) }
    }

    // MARK: - recovery

    /// The most transactions each group of a snapshot can hold: what the state `snapshot`
    /// writes them from is bounded by, so `recover` reads whatever was written and still refuses
    /// an absurd count from a damaged file. From the most any configuration keeps, not this
    /// one's. The open group was bounded by twice `openTransactionsMax` (20,000), while the
    /// settling ones alone may be `settlingTransactionsMax` (50,000): a coordinator with 20,001
    /// transactions waiting for a service's confirm or cancel wrote a checkpoint that every
    /// later start refused (a review, session 28).
    var snapshotSectionsMax: (open: Int, finished: Int, audits: Int) {
        // Undecided ones admitted below `openTransactionsMax`, settling ones below
        // `settlingTransactionsMax` (plus the undecided ones that settled since).
        let open = max(config.openTransactionsMax, Limits.openTransactionsMax) + max(config.settlingTransactionsMax, Limits.committingTransactionsMax)
        // The finished ones kept, and the open ones a pending force ends in the snapshot.
        let finished = max(config.finishedTransactionsKept, Limits.finishedTransactionsKeptMax) + open
        // Audit entries: one list for each transaction of the two groups at most.
        return (open, finished, open + finished)
    }

    /// Rebuilds state from a snapshot (`snapshot()`) and the TCC records after it, and returns
    /// the actions that finish every open transaction: confirms for decided ones, cancels for
    /// every branch of the others (presumed cancel).
    public mutating func recover(snapshot: [UInt8]?, records: [(type: UInt8, payload: [UInt8])], nowMs: Int64) throws -> [Action] {
        if let snapshot, !snapshot.isEmpty {
            var r = ByteReader(snapshot)
            guard try r.u8() == 1 else { throw DecodeError("unknown TCC snapshot version") }
            let sectionsMax = snapshotSectionsMax
            for isOpen in [true, false] {
                let count = try r.u32()
                guard count <= UInt32(clamping: isOpen ? sectionsMax.open : sectionsMax.finished) else {
                    throw DecodeError("\(count) \(isOpen ? "open" : "finished") TCC transactions in a snapshot")
                }
                for _ in 0..<count {
                    let tx = try TCCRecordCoding.decodeTransaction(&r)
                    maxEpochSeen = max(maxEpochSeen, tx.txid.epoch)
                    if isOpen { openTable[tx.txid] = tx } else { remember(tx) }
                }
            }
            try forgottenCommits.readTrailing(&r)
            try outcomeLedger.readTrailing(&r)
            // The kept transactions' audit entries (absent in snapshots written before session
            // 32, which brought a forced transaction back with its branches and no one to ask
            // who forced it, when or why).
            if !r.isAtEnd {
                let auditCount = try r.u32()
                guard auditCount <= UInt32(clamping: sectionsMax.audits) else { throw DecodeError("\(auditCount) TCC transactions' audits in a snapshot") }
                for _ in 0..<auditCount {
                    let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                    let entries = try OperatorAudits.decodeEntries(&r, of: txid)
                    if var tx = openTable.byID[txid] {
                        if tx.audit.isEmpty { tx.audit = entries }
                        openTable[txid] = tx
                    } else if var tx = finished[txid] {
                        if tx.audit.isEmpty { tx.audit = entries }
                        remember(tx)
                    }
                }
            }
        }
        for (type, payload) in records {
            let record = try TCCRecordCoding.decode(type: type, payload: payload)
            maxEpochSeen = max(maxEpochSeen, record.txid.epoch)
            switch record {
            case .branch(let txid, let spec, let createdAtMs, let timeoutMs):
                guard finished[txid] == nil else { continue }
                var tx = openTable.byID[txid] ?? Transaction(txid: txid, state: .active, createdAtMs: createdAtMs, timeoutMs: timeoutMs)
                if tx.index(spec.branchID) == nil { tx.branches.append(Branch(spec: spec, state: .trying)) }
                openTable[txid] = tx
            case .confirmDecision(let txid, let ids, let atMs):
                if ids.isEmpty, openTable.byID[txid] == nil, finished[txid] == nil {
                    // A transaction without branches: no branch record made it open; it is
                    // rebuilt from its decision and finishes below.
                    openTable[txid] = Transaction(txid: txid, state: .active, createdAtMs: atMs, timeoutMs: 0)
                }
                guard var tx = openTable.byID[txid] else { continue }
                tx.state = .confirming
                tx.outcome = .committed
                tx.settleStartedAtMs = atMs
                tx.branches = tx.branches.filter { ids.contains($0.spec.branchID) }
                openTable[txid] = tx
            case .audit(let txid, let entry, let outcome, let resolvesPending):
                if var tx = finished[txid] {
                    tx.appendAudit(entry)
                    remember(tx)
                    continue
                }
                guard var tx = openTable.byID[txid] else { continue }
                tx.appendAudit(entry)
                tx.reason = tx.reason ?? "forced by operator \(entry.operatorName): \(entry.reason)"
                if resolvesPending {
                    // The operator ended the wait; the end record after it may be lost. The
                    // branches the record names are the ones it stopped calling; any other not
                    // known settled had answered before the force (a settle is not logged, so
                    // replay left it `trying`). A record written before session 32 names none:
                    // every branch not known settled reads resolved, as those versions had it.
                    openTable.removeValue(forKey: txid)
                    tx.outcome = outcome
                    tx.state = outcome == .committed ? .committed : .aborted
                    tx.finishedAtMs = tx.finishedAtMs ?? entry.atMs
                    for i in tx.branches.indices where tx.branches[i].state != .confirmed && tx.branches[i].state != .cancelled {
                        let tookOver = entry.resolvedBranches.map { $0.contains(tx.branches[i].spec.branchID) } ?? true
                        tx.branches[i].state = tookOver ? .resolvedByOperator : outcome == .committed ? .confirmed : .cancelled
                    }
                    remember(tx)
                } else if outcome == .committed {
                    // A forced commit of an active transaction is its confirm decision.
                    tx.state = .confirming
                    tx.outcome = .committed
                    tx.settleStartedAtMs = entry.atMs
                    openTable[txid] = tx
                } else {
                    openTable[txid] = tx // cancelled below like every undecided transaction
                }
            case .end(let txid, let outcome):
                guard var tx = openTable.removeValue(forKey: txid) else { continue }
                tx.outcome = outcome
                tx.state = outcome == .committed ? .committed : .aborted
                tx.finishedAtMs = tx.finishedAtMs ?? nowMs
                for i in tx.branches.indices { tx.branches[i].state = outcome == .committed ? .confirmed : .cancelled }
                remember(tx)
            }
        }
        // Counted once the records are read (they add and drop branches); `finish` below
        // takes its transactions' share off again.
        openBranchBytes = openTable.byID.values.reduce(0) { $0 + $1.heldBytes }
        var actions: [Action] = []
        for txid in openTable.byID.keys.sorted() {
            guard var tx = openTable.byID[txid] else { continue }
            if tx.state == .deciding || tx.state == .confirming || tx.outcome == .committed {
                tx.state = .confirming
                tx.outcome = .committed
                tx.settleStartedAtMs = tx.settleStartedAtMs ?? nowMs
                note(&tx, nowMs, "recovered", detail: "re-driving confirms after restart")
                for i in tx.branches.indices where tx.branches[i].state != .confirmed {
                    tx.branches[i].state = .confirming
                    actions.append(call(tx, i, .confirm))
                }
                openTable[txid] = tx
                if tx.branches.allSatisfy({ $0.state == .confirmed }) { actions += finish(txid, nowMs: nowMs) }
            } else {
                note(&tx, nowMs, "recovered", detail: "no confirm decision: cancelling every branch (presumed cancel)")
                tx.reason = tx.reason ?? "coordinator restarted before a decision (presumed cancel)"
                openTable[txid] = tx
                actions += startCancel(txid, reason: tx.reason!, nowMs: nowMs)
            }
        }
        return actions
    }

    /// Every open transaction and the finished ones remembered; `recover` reads it back.
    ///
    /// A forced decision whose audit record is appended but not yet acted on is snapshotted as
    /// already taken: the checkpoint follows the audit record in the log, so when the checkpoint
    /// is durable the audit record is too — and the segment holding it may be deleted.
    public func snapshot() -> [UInt8] {
        var w = ByteWriter()
        w.u8(1)
        var openGroup: [Transaction] = []
        var endedByForce: [Transaction] = []
        for var tx in openTable.byID.values.sorted(by: { $0.txid < $1.txid }) {
            if let p = pendingForces[tx.txid] {
                let outcome = p.force.outcome
                // Its audit record precedes this checkpoint, as `auditDurable` will add it.
                tx.appendAudit(p.entry)
                if p.resolvesPending {
                    tx.state = outcome == .committed ? .committed : .aborted
                    tx.outcome = outcome
                    tx.finishedAtMs = p.entry.atMs
                    for i in tx.branches.indices where tx.branches[i].state == .confirming || tx.branches[i].state == .cancelling {
                        tx.branches[i].state = .resolvedByOperator
                    }
                    endedByForce.append(tx)
                    continue
                } else if outcome == .committed && tx.state == .active {
                    tx.state = .deciding // read back as confirming: the audit record is the decision
                    tx.outcome = .committed
                    tx.settleStartedAtMs = p.entry.atMs
                }
            }
            openGroup.append(tx)
        }
        let sectionsMax = snapshotSectionsMax
        let finishedGroup = finishedOrder[finishedOrderHead...].compactMap { finished[$0] } + endedByForce
        for (isOpen, group) in [(true, openGroup), (false, finishedGroup)] {
            // Within what `recover` reads back (`snapshotSectionsMax`): the state's own limits
            // keep it so; this checks that the two agree, in release builds too (stopping here
            // keeps the log whole; a snapshot past the bound would stop every later start).
            let groupMax = isOpen ? sectionsMax.open : sectionsMax.finished
            precondition(group.count <= groupMax, "\(group.count) \(isOpen ? "open" : "finished") TCC transactions in a snapshot, more than recover reads (\(groupMax))")
            w.u32(UInt32(group.count))
            for tx in group { TCCRecordCoding.encodeTransaction(tx, &w) }
        }
        // The forgotten-confirm mark (absent in snapshots written before it existed).
        forgottenCommits.encode(&w)
        // Outcomes of forgotten transactions (absent in snapshots written before the ledger).
        outcomeLedger.encode(&w)
        // The audit entries of the transactions above (absent in snapshots written before
        // session 32): once the log before this point is dropped, the only record of who forced
        // a transaction, when and why. The newest transactions' first, within
        // `auditsInSnapshotBytesMax` (a finished one holds up to 16 entries of a reason and a
        // list of branches each, and 10,000 of them could pass `snapshotBytesMax`).
        var audited: [(TxID, [Coordinator.AuditEntry])] = []
        var auditBytes = 0
        for tx in (openGroup + finishedGroup).sorted(by: { $0.txid > $1.txid }) where !tx.audit.isEmpty {
            auditBytes += tx.audit.reduce(0) { $0 + OperatorAudits.keptBytes($1) }
            if auditBytes > config.auditsInSnapshotBytesMax { break }
            audited.append((tx.txid, tx.audit))
        }
        precondition(audited.count <= sectionsMax.audits, "\(audited.count) TCC transactions' audits in a snapshot, more than recover reads (\(sectionsMax.audits))")
        w.u32(UInt32(audited.count))
        for (txid, entries) in audited.reversed() {
            w.string(txid.description)
            OperatorAudits.encodeEntries(&w, entries)
        }
        return w.bytes
    }
}

// MARK: - operators: forced decisions and retries

extension TCCCoordinator {
    /// What forcing `outcome` on `txid` would do, or why it is refused; `effects` is empty when
    /// the outcome already holds. `resolvesPending`: the decision ends the wait for branches
    /// whose confirm or cancel is still pending (they are no longer called).
    func planForce(_ txid: TxID, _ outcome: Outcome) -> Result<(effects: [String], resolvesPending: Bool), RequestError> {
        if let tx = openTable.byID[txid] {
            func names(_ states: Set<BranchState>) -> [String] { tx.branches.filter { states.contains($0.state) }.map(\.spec.branchID) }
            switch (tx.state, outcome) {
            case (.active, .aborted):
                let told = tx.branches.map(\.spec.branchID)
                return .success((["cancel the undecided transaction", told.isEmpty ? "no branch needs a cancel" : "send cancel to \(told.joined(separator: ", ")) (retried until answered)"], false))
            case (.active, .committed):
                let notTried = tx.branches.filter { $0.state != .tried }
                if !notTried.isEmpty {
                    let list = notTried.map { "\($0.spec.branchID) (\($0.state.rawValue))" }.joined(separator: ", ")
                    return .failure(RequestError(409, "\(txid) is undecided and the try of \(list) has not succeeded: confirming would confirm a reservation that was never made; only abort can be forced"))
                }
                let all = tx.branches.map(\.spec.branchID)
                return .success((["decide confirm (every try succeeded)", all.isEmpty ? "no branch needs a confirm" : "send confirm to \(all.joined(separator: ", ")) (retried until answered)"], false))
            case (.deciding, _):
                return .failure(RequestError(409, "\(txid) is writing its confirm decision; wait a moment and look again"))
            case (.confirming, .aborted):
                return .failure(RequestError(409, "refused: \(txid) has a durable confirm decision (\(TimeFormat.iso8601(ms: tx.settleStartedAtMs ?? tx.createdAtMs))); cancelling would contradict it"))
            case (.confirming, .committed):
                let pending = names([.confirming])
                return .success((["stop confirming \(pending.joined(separator: ", ")) (recorded as resolved by operator)",
                                  "end the transaction as committed; confirm those branches by hand if their confirm never ran"], true))
            case (.cancelling, .committed):
                return .failure(RequestError(409, "refused: \(txid) is being cancelled\(tx.reason.map { " (\($0))" } ?? ""); its branches may already have released their reservations, so confirming would contradict it"))
            case (.cancelling, .aborted):
                let pending = names([.cancelling])
                return .success((["stop cancelling \(pending.joined(separator: ", ")) (recorded as resolved by operator)",
                                  "end the transaction as aborted; release those reservations by hand if their cancel never ran"], true))
            case (.committed, _), (.aborted, _):
                preconditionFailure("open TCC transaction \(txid) in state \(tx.state)")
            }
        }
        if let tx = finished[txid] {
            let decided = tx.outcome ?? .aborted
            if decided == outcome { return .success(([], false)) }
            let when = TimeFormat.iso8601(ms: tx.finishedAtMs ?? tx.createdAtMs)
            return .failure(RequestError(409, "refused: \(txid) was \(decided.rawValue) at \(when)\(tx.reason.map { " (\($0))" } ?? ""); forcing \(outcome.rawValue) would contradict it"))
        }
        return .failure(RequestError(404, "unknown TCC transaction \(txid)"))
    }

    mutating func forceRequested(_ request: RequestID, _ text: String, _ force: Coordinator.ForceRequest, nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            guard let (txid, outcome) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            guard outcome == force.outcome else {
                return [.reply(request, .error(RequestError(409, "refused: \(txid) was \(outcome.rawValue) (forgotten; the outcome is from the coordinator's ledger); forcing \(force.outcome.rawValue) would contradict it")))]
            }
            return [.reply(request, .forced(txid, outcome: force.outcome, dryRun: force.dryRun, effects: ["nothing to do: \(txid) is already \(outcome.rawValue)"]))]
        case .success(let t): txid = t
        }
        let reason: String
        switch force.checkedReason() {
        case .failure(let e): return [.reply(request, .error(e))]
        case .success(let r): reason = r
        }
        guard pendingForces[txid] == nil else {
            return [.reply(request, .error(RequestError(409, "another forced decision on \(txid) is being recorded")))]
        }
        switch planForce(txid, force.outcome) {
        case .failure(let e):
            return [.reply(request, .error(e))]
        case .success(let plan) where plan.effects.isEmpty:
            return [.reply(request, .forced(txid, outcome: force.outcome, dryRun: force.dryRun, effects: ["nothing to do: \(txid) is already \(force.outcome.rawValue)"]))]
        case .success(let plan):
            if force.dryRun { return [.reply(request, .forced(txid, outcome: force.outcome, dryRun: true, effects: plan.effects))] }
            // The branches it stops calling (planForce's "stop confirming|cancelling ..."),
            // named in the record: a settle is not logged, so replay cannot tell them apart
            // from those that had answered.
            let resolved = plan.resolvesPending
                ? (transaction(txid)?.branches ?? []).filter { $0.state == .confirming || $0.state == .cancelling }.map(\.spec.branchID) : []
            let entry = force.auditEntry(atMs: nowMs, reason: reason, effects: plan.effects, resolvedBranches: resolved)
            pendingForces[txid] = (request, force, entry, plan.resolvesPending)
            return [.log(.audit(txid, entry, outcome: force.outcome, resolvesPending: plan.resolvesPending), force: true)]
        }
    }

    mutating func auditDurable(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard let pending = pendingForces.removeValue(forKey: txid) else { return [] }
        let outcome = pending.force.outcome
        let detail = "\(pending.entry.action) by \(pending.entry.operatorName): \(pending.entry.reason)"
        if var tx = openTable.byID[txid] {
            tx.appendAudit(pending.entry)
            note(&tx, nowMs, "forced", detail: detail)
            openTable[txid] = tx
        } else if var tx = finished[txid] {
            tx.appendAudit(pending.entry)
            remember(tx)
        }
        // The transaction may have moved on while the record was written (e.g. it timed out).
        // The audit record says what was asked; recovery reads it the same way only when the
        // plan still matches, so re-plan and refuse what no longer fits.
        let plan = planForce(txid, outcome)
        switch plan {
        case .failure(let e):
            return [.reply(pending.request, .error(e))]
        case .success(let p) where p.effects.isEmpty:
            return [.reply(pending.request, .forced(txid, outcome: outcome, dryRun: false, effects: ["nothing to do: \(txid) is already \(outcome.rawValue)"]))]
        case .success(let p) where p.resolvesPending != pending.resolvesPending:
            return [.reply(pending.request, .error(RequestError(409, "\(txid) changed state while the forced decision was recorded; look again and repeat it")))]
        case .success(let p):
            let reason = "forced by operator \(pending.entry.operatorName): \(pending.entry.reason)"
            var actions: [Action] = []
            var tx = openTable.byID[txid]!
            if p.resolvesPending {
                for i in tx.branches.indices where tx.branches[i].state == .confirming || tx.branches[i].state == .cancelling {
                    tx.branches[i].state = .resolvedByOperator
                    tx.branches[i].nextRetryAtMs = nil
                    actions.append(.cancelTimer(.retry(txid, branchID: tx.branches[i].spec.branchID)))
                }
                openTable[txid] = tx
                actions += finish(txid, nowMs: nowMs)
            } else if outcome == .aborted {
                actions += startCancel(txid, reason: reason, nowMs: nowMs)
            } else {
                // The durable audit record is this transaction's confirm decision (recovery
                // reads it so): confirm every branch now.
                tx.state = .confirming
                tx.outcome = .committed
                tx.settleStartedAtMs = nowMs
                note(&tx, nowMs, "decided", detail: "confirm (forced by operator)")
                actions.append(.cancelTimer(.timeout(txid)))
                for i in tx.branches.indices {
                    tx.branches[i].state = .confirming
                    actions.append(call(tx, i, .confirm))
                }
                openTable[txid] = tx
                if tx.branches.isEmpty { actions += finish(txid, nowMs: nowMs) }
            }
            actions.append(.reply(pending.request, .forced(txid, outcome: outcome, dryRun: false, effects: p.effects)))
            return actions
        }
    }

    /// Re-sends the pending confirms or cancels now, whatever their backoff or parking.
    mutating func retryNow(_ request: RequestID, _ text: String, nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            guard let (gone, outcome) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            return [.reply(request, .error(RequestError(409, "\(gone) is \(outcome.rawValue) (forgotten); nothing to retry")))]
        case .success(let t): txid = t
        }
        guard var tx = openTable.byID[txid] else { return [.reply(request, .error(RequestError(409, "\(txid) is finished; nothing to retry")))] }
        var actions: [Action] = []
        var names: [String] = []
        for i in tx.branches.indices {
            let phase: Call
            switch tx.branches[i].state {
            case .confirming: phase = .confirm
            case .cancelling: phase = .cancel
            default: continue
            }
            let id = tx.branches[i].spec.branchID
            tx.branches[i].nextRetryAtMs = nil
            actions.append(.cancelTimer(.retry(txid, branchID: id)))
            actions.append(call(tx, i, phase))
            names.append(id)
        }
        guard !names.isEmpty else {
            return [.reply(request, .error(RequestError(409, "\(txid) is \(tx.state.rawValue): no confirm or cancel is pending, nothing to retry")))]
        }
        note(&tx, nowMs, "retry-requested", detail: names.joined(separator: ", "))
        openTable[txid] = tx
        return actions + [.reply(request, .retried(txid, branches: names))]
    }
}

/// Log record encodings of the TCC coordinator: types 16–31 (the 2PC/3PC coordinator has 1–15).
public enum TCCRecordCoding {
    public static let branchType: UInt8 = 16
    public static let confirmDecisionType: UInt8 = 17
    public static let endType: UInt8 = 18
    public static let auditType: UInt8 = 19
    public static let typeRange: ClosedRange<UInt8> = 16...31

    public static func encode(_ record: TCCCoordinator.Record) -> (type: UInt8, payload: [UInt8]) {
        var w = ByteWriter()
        switch record {
        case .branch(let txid, let spec, let createdAtMs, let timeoutMs):
            w.string(txid.description)
            encodeSpec(spec, &w)
            w.i64(createdAtMs)
            w.i64(timeoutMs)
            return (branchType, w.bytes)
        case .confirmDecision(let txid, let ids, let atMs):
            w.string(txid.description)
            w.u32(UInt32(ids.count))
            for id in ids { w.string(id) }
            w.i64(atMs)
            return (confirmDecisionType, w.bytes)
        case .end(let txid, let outcome):
            w.string(txid.description)
            w.bool(outcome == .committed)
            return (endType, w.bytes)
        case .audit(let txid, let e, let outcome, let resolvesPending):
            w.string(txid.description)
            w.i64(e.atMs)
            w.string(e.operatorName)
            w.string(e.action)
            w.string(e.reason)
            w.string(e.detail)
            w.bool(outcome == .committed)
            w.bool(resolvesPending)
            // The branches the force stopped calling, trailing (records written before session
            // 32 end here, and versions before it read no further).
            if let resolved = e.resolvedBranches { CoordinatorRecordCoding.encodeNames(&w, resolved) }
            return (auditType, w.bytes)
        }
    }

    public static func decode(type: UInt8, payload: [UInt8]) throws -> TCCCoordinator.Record {
        var r = ByteReader(payload)
        let txid = try decodeTxID(&r)
        switch type {
        case branchType:
            return .branch(txid, try decodeSpec(&r), createdAtMs: try r.i64(), timeoutMs: try r.i64())
        case confirmDecisionType:
            let n = try r.u32()
            guard n <= UInt32(Limits.tccBranchesPerTransactionMax * 4) else { throw DecodeError("\(n) branches in a confirm decision") }
            var ids: [String] = []
            for _ in 0..<n { ids.append(try r.string(maxCount: Limits.tccBranchIDBytesMax)) }
            return .confirmDecision(txid, branchIDs: ids, atMs: try r.i64())
        case endType:
            return .end(txid, try r.bool() ? .committed : .aborted)
        case auditType:
            let atMs = try r.i64()
            let operatorName = try r.string(maxCount: Limits.participantNameBytesMax)
            let action = try r.string(maxCount: 64)
            let reason = try r.string(maxCount: Limits.reasonBytesMax)
            let detail = try r.string(maxCount: 16_384)
            let outcome: Outcome = try r.bool() ? .committed : .aborted
            let resolvesPending = try r.bool()
            let resolved = r.isAtEnd ? nil
                : try CoordinatorRecordCoding.decodeNames(&r, countMax: Limits.tccBranchesPerTransactionMax * 4, bytesMax: Limits.tccBranchIDBytesMax,
                                                          what: "branches in an audit record")
            let entry = Coordinator.AuditEntry(atMs: atMs, operatorName: operatorName, action: action, reason: reason, detail: detail, resolvedBranches: resolved)
            return .audit(txid, entry, outcome: outcome, resolvesPending: resolvesPending)
        default:
            throw DecodeError("unknown TCC record type \(type)")
        }
    }

    static func decodeTxID(_ r: inout ByteReader) throws -> TxID {
        let text = try r.string(maxCount: 64)
        guard let txid = TxID(text) else { throw DecodeError("bad txid \(text)") }
        return txid
    }

    static func encodeSpec(_ s: TCCCoordinator.BranchSpec, _ w: inout ByteWriter) {
        w.string(s.branchID)
        w.string(s.tryURL)
        w.string(s.confirmURL)
        w.string(s.cancelURL)
        w.blob(s.payload.map { encodeJSON($0) } ?? [])
    }

    static func decodeSpec(_ r: inout ByteReader) throws -> TCCCoordinator.BranchSpec {
        let id = try r.string(maxCount: Limits.tccBranchIDBytesMax)
        let t = try r.string(maxCount: Limits.participantURLBytesMax)
        let c = try r.string(maxCount: Limits.participantURLBytesMax)
        let x = try r.string(maxCount: Limits.participantURLBytesMax)
        // Up to a record's size, not `tccPayloadBytesMax`: builds before that limit was checked
        // in its log form wrote longer ones, and a coordinator must start from its own log.
        let p = try r.blob(maxCount: Limits.recordBytesMax)
        return TCCCoordinator.BranchSpec(branchID: id, tryURL: t, confirmURL: c, cancelURL: x, payload: p.isEmpty ? nil : try decodeJSON(p))
    }

    static func encodeTransaction(_ tx: TCCCoordinator.Transaction, _ w: inout ByteWriter) {
        w.string(tx.txid.description)
        w.string(tx.state.rawValue)
        w.i64(tx.createdAtMs)
        w.i64(tx.timeoutMs)
        w.u8(tx.outcome == nil ? 0 : tx.outcome == .committed ? 1 : 2)
        w.string(tx.reason ?? "")
        w.i64(tx.settleStartedAtMs ?? -1)
        w.i64(tx.finishedAtMs ?? -1)
        w.u32(UInt32(tx.branches.count))
        for b in tx.branches {
            encodeSpec(b.spec, &w)
            w.string(b.state.rawValue)
            w.u32(UInt32(b.attempts))
        }
    }

    static func decodeTransaction(_ r: inout ByteReader) throws -> TCCCoordinator.Transaction {
        let txid = try decodeTxID(&r)
        let stateText = try r.string(maxCount: 64)
        guard var state = TCCCoordinator.State(rawValue: stateText) else { throw DecodeError("bad TCC state \(stateText)") }
        if state == .deciding { state = .confirming } // the decision precedes the snapshot in the log
        var tx = TCCCoordinator.Transaction(txid: txid, state: state, createdAtMs: try r.i64(), timeoutMs: try r.i64())
        switch try r.u8() {
        case 0: tx.outcome = nil
        case 1: tx.outcome = .committed
        default: tx.outcome = .aborted
        }
        // Clipped since `Limits.reasonBytesMax` bounds what a service answers; read up to a
        // record's size for checkpoints written before.
        let reason = try r.string(maxCount: Limits.recordBytesMax)
        tx.reason = reason.isEmpty ? nil : reason
        let settle = try r.i64()
        tx.settleStartedAtMs = settle < 0 ? nil : settle
        let fin = try r.i64()
        tx.finishedAtMs = fin < 0 ? nil : fin
        let n = try r.u32()
        guard n <= UInt32(Limits.tccBranchesPerTransactionMax * 4) else { throw DecodeError("\(n) TCC branches") }
        for _ in 0..<n {
            let spec = try decodeSpec(&r)
            let text = try r.string(maxCount: 64)
            guard var bs = TCCCoordinator.BranchState(rawValue: text) else { throw DecodeError("bad TCC branch state \(text)") }
            if bs == .registering { bs = .trying } // its try may have been called
            var b = TCCCoordinator.Branch(spec: spec, state: bs)
            b.attempts = Int(try r.u32())
            tx.branches.append(b)
        }
        tx.events.append(Coordinator.TimelineEvent(atMs: tx.finishedAtMs ?? tx.createdAtMs, event: tx.state.rawValue, participant: nil, detail: "from a checkpoint (details not kept)"))
        return tx
    }

    /// `encodeJSON(v).count`, counted without building the bytes (each registration's payload
    /// is sized before it is logged).
    static func encodedJSONBytes(_ v: JSONValue) -> Int {
        switch v {
        case .null: return 1
        case .bool: return 2
        case .int: return 9
        case .number(let text): return 5 + text.utf8.count
        case .string(let s): return 5 + s.utf8.count
        case .array(let a): return a.reduce(5) { $0 + encodedJSONBytes($1) }
        case .object(let o): return o.reduce(5) { $0 + 4 + $1.key.utf8.count + encodedJSONBytes($1.value) }
        }
    }

    /// A compact binary form of a JSON value (tag byte, then the value).
    static func encodeJSON(_ v: JSONValue) -> [UInt8] {
        var w = ByteWriter()
        writeJSON(v, &w)
        return w.bytes
    }

    private static func writeJSON(_ v: JSONValue, _ w: inout ByteWriter) {
        switch v {
        case .null: w.u8(0)
        case .bool(let b): w.u8(1); w.bool(b)
        case .int(let i): w.u8(2); w.i64(i)
        case .number(let text): w.u8(7); w.string(text)
        case .string(let s): w.u8(4); w.string(s)
        case .array(let a): w.u8(5); w.u32(UInt32(a.count)); for x in a { writeJSON(x, &w) }
        case .object(let o):
            w.u8(6)
            w.u32(UInt32(o.count))
            for k in o.keys.sorted() { w.string(k); writeJSON(o[k]!, &w) }
        }
    }

    static func decodeJSON(_ b: [UInt8]) throws -> JSONValue {
        var r = ByteReader(b)
        return try readJSON(&r, depth: 0)
    }

    private static func readJSON(_ r: inout ByteReader, depth: Int) throws -> JSONValue {
        guard depth < 64 else { throw DecodeError("JSON nested too deeply") }
        switch try r.u8() {
        case 0: return .null
        case 1: return .bool(try r.bool())
        case 2: return .int(try r.i64())
        case 3:
            // Written before numbers were kept as their text: a double.
            let d = Double(bitPattern: try r.u64())
            guard d.isFinite else { throw DecodeError("JSON number \(d)") }
            return .double(d)
        case 4: return .string(try r.string(maxCount: Limits.recordBytesMax))
        case 5:
            let n = try r.u32()
            guard n <= UInt32(Limits.recordBytesMax) else { throw DecodeError("JSON array of \(n)") }
            var a: [JSONValue] = []
            for _ in 0..<n { a.append(try readJSON(&r, depth: depth + 1)) }
            return .array(a)
        case 6:
            let n = try r.u32()
            guard n <= UInt32(Limits.recordBytesMax) else { throw DecodeError("JSON object of \(n)") }
            var o: [String: JSONValue] = [:]
            for _ in 0..<n { let k = try r.string(maxCount: Limits.recordBytesMax); o[k] = try readJSON(&r, depth: depth + 1) }
            return .object(o)
        case 7:
            let text = try r.string(maxCount: Limits.recordBytesMax)
            // What the log holds is written to participants as it is: only a number's syntax.
            switch try? JSONParser.parse(Array(text.utf8)) {
            case .number?, .int?: return .number(text)
            default: throw DecodeError("JSON number text \(text.prefix(40).debugDescription)")
            }
        default: throw DecodeError("bad JSON tag")
        }
    }
}

extension TCCCoordinator.Transaction {
    /// The same shape as a 2PC/3PC transaction's: protocol "tcc"; a branch's `participant` is
    /// its branch id and `url` its try URL.
    public func view() -> TransactionView {
        TransactionView(
            txid: txid.description,
            protocol: "tcc",
            state: state.rawValue,
            outcome: state.isFinished || state == .confirming || state == .cancelling ? outcome?.rawValue : nil,
            reason: reason,
            createdAt: TimeFormat.iso8601(ms: createdAtMs),
            finishedAt: finishedAtMs.map { TimeFormat.iso8601(ms: $0) },
            timeoutMs: timeoutMs,
            branches: branches.map {
                TransactionView.BranchView(participant: $0.spec.branchID, url: $0.spec.tryURL, state: $0.state.rawValue, vote: nil,
                                           attempts: $0.attempts, lastError: $0.lastError,
                                           nextRetryAt: $0.nextRetryAtMs.map { TimeFormat.iso8601(ms: $0) },
                                           history: $0.history.map { TransactionView.AttemptView(at: TimeFormat.iso8601(ms: $0.atMs), error: $0.error) })
            },
            events: events.map { TransactionView.EventView(at: TimeFormat.iso8601(ms: $0.atMs), event: $0.event, participant: $0.participant, detail: $0.detail) },
            parked: parked,
            audit: audit.map { TransactionView.AuditView($0) })
    }
}

/// The coordinator's checkpoint snapshot holds both state machines: a container byte, then
/// the 2PC/3PC coordinator's snapshot and the TCC coordinator's, each as a blob. A snapshot
/// without the container byte is an older coordinator-only snapshot.
public enum CoordinatorSnapshotContainer {
    public static let version: UInt8 = 0xC7

    public static func pack(coordinator: [UInt8], tcc: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.u8(version)
        w.blob(coordinator)
        w.blob(tcc)
        return w.bytes
    }

    public static func unpack(_ snapshot: [UInt8]) throws -> (coordinator: [UInt8], tcc: [UInt8]?) {
        guard snapshot.first == version else { return (snapshot, nil) }
        var r = ByteReader(snapshot)
        _ = try r.u8()
        return (try r.blob(maxCount: Limits.snapshotBytesMax), try r.blob(maxCount: Limits.snapshotBytesMax))
    }
}

extension TCCCoordinator.Transaction: SettlingTransaction {
    var isSettling: Bool { state == .confirming || state == .cancelling }
}
