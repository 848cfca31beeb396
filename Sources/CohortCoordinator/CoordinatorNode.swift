import CohortCore
import CohortHTTP
import CohortLog
import CohortPosix
import CohortRuntime
import Foundation

/// The coordinator runtime: carries out the coordinator state machine's actions against a
/// durable log, outgoing requests and timers, and turns incoming requests into events. It knows
/// the world only through a `NodeEnvironment`, so `cohortd` (epoll, TCP, files) and the
/// simulation (virtual network, disk and clock) run this same code.
public final class CoordinatorNode {
    /// Every crash point this program has (`COHORT_CRASHPOINT=list`).
    public static let crashPoints = [
        "coordinator.before-prepare-send",
        "coordinator.after-prepare-send",
        "coordinator.before-decision-logged",
        "coordinator.after-decision-logged",
        "coordinator.after-commit-replied",
        "coordinator.before-commit-send",
        "coordinator.after-commit-send",
        "coordinator.before-abort-send",
        "coordinator.after-abort-send",
        "coordinator.before-end-logged",
        "coordinator.after-end-logged",
        "coordinator.before-precommit-logged",
        "coordinator.after-precommit-logged",
        "coordinator.before-precommit-send",
        "coordinator.after-precommit-send",
        "coordinator.tcc-after-branch-logged",
        "coordinator.tcc-after-try-answered",
        "coordinator.tcc-after-decision-logged",
        "coordinator.tcc-after-confirm-send",
        "coordinator.tcc-after-cancel-send",
    ]

    static let messageTypes = ["prepare", "commit-one-phase", "pre-commit", "state-query", "commit", "abort", "tcc-try", "tcc-confirm", "tcc-cancel"]

    private let environment: NodeEnvironment
    public private(set) var machine: Coordinator
    public let log: DurableLog
    private let requests = PendingRequests()
    private var timers: TimerTable<Coordinator.Timer>!
    /// What a forced record, once durable, lets the state machine do.
    private enum Pending {
        case decision(TxID)
        case preCommit(TxID)
        case audit(TxID)
        case heuristic(TxID, participant: String)
        case onePhaseWindow(OnePhaseWindow)
        case abortLearned(TxID)
    }
    private var pending = DurabilityQueue<Pending>()
    private let metrics = MetricsRegistry()
    /// The two `cohort_messages_sent_total` series every transaction counts, resolved once.
    private lazy var sentPrepares = metrics.counter("cohort_messages_sent_total", labels: "type=\"prepare\"")
    private lazy var sentCommits = metrics.counter("cohort_messages_sent_total", labels: "type=\"commit\"")

    /// Adds the serving HTTP server's request and connection counters to `/metrics`.
    public func exposeHTTPServerMetrics(_ server: HTTPServer) { declareHTTPServerMetrics(metrics, server: server) }
    private let onFatal: (String) -> Void
    private var recoveryActions: [Coordinator.Action] = []
    public let coordinatorID: String
    private var commitStartedUs: [RequestID: Int64] = [:]
    private var commitLatency = LatencyWindow()
    private var committedRate = RateWindow()
    private var abortedRate = RateWindow()
    private var lastStats = Coordinator.Stats()
    private let startedAtUs: UInt64
    private let sender: BatchingSender
    /// Participants (by URL) that said at registration that they serve `/v1/batch`.
    private var batchCapable: Set<String> = []
    private let checkpointAfterBytes: Int
    private let checkpointIntervalMs: Int64
    // TCC (see the `// MARK: - TCC` section)
    public private(set) var tcc: TCCCoordinator

    /// Asks the TCC machine a question in place: a query method called on this stored property
    /// ran on a copy of the whole machine (every table retained, then released); through
    /// `inout` the access covers the call. For queries only; `query` must not touch `self.tcc`.
    @inline(__always) private func askTCC<T>(_ query: (inout TCCCoordinator) -> T) -> T { query(&tcc) }
    private var tccTimers: TimerTable<TCCCoordinator.Timer>!
    private var checkpointTimer: NodeTimer?
    /// `tcc.branchesSettledTotal` when the last checkpoint was taken.
    private var tccSettledAtCheckpoint: UInt64 = 0
    /// Checkpoints not written because their snapshot passed `Limits.snapshotBytesMax`, and
    /// when the next may be tried.
    public private(set) var checkpointsTooLarge = 0
    private var checkpointNotBeforeUs: UInt64 = 0
    /// The transaction whose submission record the log just refused (the decision record that
    /// always follows it in the same actions is then refused too).
    private var submissionRefused: TxID?
    /// `GET`s of forgotten transactions answered from the ledger.
    private var ledgerGets: UInt64 = 0
    private enum TCCPending { case branch(TxID, String), decision(TxID), audit(TxID) }
    private var tccPending = DurabilityQueue<TCCPending>()
    private var tccRecoveryActions: [TCCCoordinator.Action] = []

    /// Recovers the state machine from what the log held and wires the log's durability
    /// reports to this node's thread. `onFatal` is called (from any thread) when the node must
    /// stop at once: a failed log write or sync, after which nothing may be acknowledged.
    public init(coordinatorID: String, log: DurableLog, recovered: RecoveredLog, config: Coordinator.Config,
                checkpointAfterBytes: Int, checkpointIntervalMs: Int64 = Limits.checkpointIntervalMs,
                environment: NodeEnvironment, onFatal: @escaping (String) -> Void) throws {
        precondition(checkpointIntervalMs > 0, "a checkpoint interval must be positive")
        self.checkpointIntervalMs = checkpointIntervalMs
        self.coordinatorID = coordinatorID
        self.log = log
        self.environment = environment
        self.onFatal = onFatal
        self.checkpointAfterBytes = checkpointAfterBytes
        startedAtUs = environment.monotonicUs
        sender = BatchingSender(environment: environment)
        machine = Coordinator(config: config)
        // Records by type range: 1–15 the 2PC/3PC coordinator's, 16–31 the TCC coordinator's.
        // A decode error names the record to blame (an agent's log read as this one's said
        // only "825175866 participants in a decision").
        let decodeRecord = { (record: LogRecord) throws -> Void in
            if TCCRecordCoding.typeRange.contains(record.type) {
                _ = try TCCRecordCoding.decode(type: record.type, payload: record.payload)
            } else {
                _ = try CoordinatorRecordCoding.decode(type: record.type, payload: record.payload)
            }
        }
        let decodeSnapshot = { (snapshot: [UInt8]) throws -> Void in
            let parts = try CoordinatorSnapshotContainer.unpack(snapshot)
            var coordinator = Coordinator(config: config)
            _ = try coordinator.recover(snapshot: parts.coordinator, records: [], nowMs: 0)
            var tcc = TCCCoordinator()
            _ = try tcc.recover(snapshot: parts.tcc, records: [], nowMs: 0)
        }
        let snapshots: (coordinator: [UInt8], tcc: [UInt8]?)?
        do {
            snapshots = try recovered.snapshot.map { try CoordinatorSnapshotContainer.unpack($0) }
            recoveryActions = try machine.recover(snapshot: snapshots?.coordinator,
                                                  records: recovered.records.filter { !TCCRecordCoding.typeRange.contains($0.type) }.map { ($0.type, $0.payload) },
                                                  nowMs: environment.wallMs)
        } catch {
            throw recovered.undecodableRecordError(error, kind: "coordinator", decode: decodeRecord, decodeSnapshot: decodeSnapshot)
        }
        var tccConfig = TCCCoordinator.Config()
        tccConfig.retryDelayMsMin = config.retryDelayMsMin
        tccConfig.retryDelayMsMax = config.retryDelayMsMax
        tccConfig.retryBudgetAttempts = config.retryBudgetAttempts
        tccConfig.retryBudgetMs = config.retryBudgetMs
        tccConfig.parkedRetryDelayMs = config.parkedRetryDelayMs
        tccConfig.seed = config.seed
        tccConfig.finishedTransactionsKept = config.finishedTransactionsKept
        tccConfig.coordinatorID = config.coordinatorID
        tccConfig.forgottenOutcomesKept = config.forgottenOutcomesKept
        tcc = TCCCoordinator(config: tccConfig)
        do {
            tccRecoveryActions = try tcc.recover(snapshot: snapshots?.tcc ?? nil,
                                                 records: recovered.records.filter { TCCRecordCoding.typeRange.contains($0.type) }.map { ($0.type, $0.payload) },
                                                 nowMs: environment.wallMs)
        } catch {
            throw recovered.undecodableRecordError(error, kind: "coordinator", decode: decodeRecord, decodeSnapshot: decodeSnapshot)
        }
        machine.raiseEpoch(past: tcc.maxEpochSeen)
        timers = TimerTable(environment: environment)
        tccTimers = TimerTable(environment: environment)
        declareCommonMetrics(metrics, log: log, messageTypes: Self.messageTypes)
        declareBatchingMetrics(metrics, sender: sender)
        metrics.sample("cohort_transactions_total", type: "counter", help: "Transactions decided, by outcome", labels: "outcome=\"committed\"") { [unowned self] in Double(self.machine.stats.committed + self.tcc.stats.committed) }
        metrics.sample("cohort_transactions_total", type: "counter", help: "Transactions decided, by outcome", labels: "outcome=\"aborted\"") { [unowned self] in Double(self.machine.stats.aborted + self.tcc.stats.aborted) }
        metrics.sample("cohort_in_doubt", help: "Unfinished transactions at this coordinator") { [unowned self] in Double(self.machine.unfinishedCount + self.tcc.unfinishedCount) }
        // As the agents export it: a transaction whose participants' data disagree, to repair by
        // hand, counted until the ledger lets go of it.
        metrics.sample("cohort_heuristic_mixed", help: "Heuristic-mixed transactions this coordinator knows of (kept whole or in its ledger of outcomes)") { [unowned self] in Double(self.machine.heuristicMixedCount) }
        metrics.sample("cohort_checkpoints_too_large_total", type: "counter", help: "Checkpoints not written because the snapshot passed its size limit; the log keeps growing") { [unowned self] in Double(self.checkpointsTooLarge) }
        metrics.sample("cohort_parked", help: "Transactions past their retry budget (still retried, slowly)") { [unowned self] in Double(self.machine.parkedCount + self.tcc.parkedCount) }
        metrics.sample("cohort_tcc_branches_woken_total", type: "counter", help: "TCC confirms and cancels re-sent before their retry timer because their service answered again after failing (Limits.tccServiceDownMsMin)") { [unowned self] in Double(self.tcc.branchesWokenTotal) }
        metrics.sample("cohort_submissions_repeated_total", type: "counter", help: "Submissions repeated with a known request_id and answered with the first run's outcome, by where it was found", labels: "from=\"transaction\"") { [unowned self] in Double(self.machine.stats.repeatedSubmissions - self.machine.stats.repeatedSubmissionsFromMemory) }
        metrics.sample("cohort_submissions_repeated_total", type: "counter", help: "Submissions repeated with a known request_id and answered with the first run's outcome, by where it was found", labels: "from=\"memory\"") { [unowned self] in Double(self.machine.stats.repeatedSubmissionsFromMemory) }
        metrics.sample("cohort_committed_submissions_kept", help: "request_ids of committed submissions remembered after their transactions were forgotten (a resend is answered, not run again)") { [unowned self] in Double(self.machine.committedSubmissions.count) }
        metrics.sample("cohort_committed_submissions_dropped_total", type: "counter", help: "Committed submissions' request_ids let go past --submissions-kept (a resend of one would run again)") { [unowned self] in Double(self.machine.committedSubmissions.droppedCount) }
        metrics.sample("cohort_committed_submissions_oldest_age_seconds", help: "How long ago the oldest remembered committed submission finished: resends younger than this are answered from memory") { [unowned self] in
            guard let oldest = self.machine.committedSubmissions.oldestFinishedAtMs else { return 0 }
            return Double(max(0, self.environment.wallMs - oldest)) / 1000
        }
        metrics.sample("cohort_forgotten_outcomes_kept", help: "Outcomes of forgotten transactions in the coordinator's ledger (a late GET, commit or abort of one is answered exactly)") { [unowned self] in Double(self.machine.outcomeLedger.count + self.tcc.outcomeLedger.count) }
        metrics.sample("cohort_forgotten_outcomes_dropped_total", type: "counter", help: "Ledger entries let go past --outcomes-kept (those transactions read 410 again)") { [unowned self] in Double(self.machine.outcomeLedger.droppedCount + self.tcc.outcomeLedger.droppedCount) }
        metrics.sample("cohort_forgotten_outcomes_answered_total", type: "counter", help: "GETs, commits, aborts and registrations of forgotten transactions answered from the ledger") { [unowned self] in Double(self.machine.stats.answeredFromLedger + self.tcc.stats.answeredFromLedger + self.ledgerGets) }
        // Both machines' transactions, as /v1/stats counts them (it counted the 2PC/3PC ones only).
        metrics.sample("cohort_open_transactions", help: "Transactions begun and not finished (2PC, 3PC and TCC)") { [unowned self] in Double(self.machine.unfinishedCount + self.tcc.unfinishedCount) }
        metrics.sample("cohort_committing_transactions", help: "Committed transactions waiting for participants' acknowledgements (bounded apart: Limits.committingTransactionsMax)") { [unowned self] in Double(self.machine.committingCount) }
        metrics.sample("cohort_submitted_work_bytes", help: "Submitted work held until its branches vote (bounded: Limits.coordinatorSubmittedWorkBytesMax; past it a submission gets 503)") { [unowned self] in Double(self.machine.submittedWorkBytes) }
        metrics.sample("cohort_precommits_withdrawn_total", type: "counter", help: "3PC pre-commits withdrawn at their pre-commit timeout because they had not left this coordinator (queued behind the exchanges in flight to their participant, or waiting for a connection); each made a classic transaction learn its outcome instead of committing") { [unowned self] in Double(self.preCommitsWithdrawn) }
        metrics.sample("cohort_batch_capable_peers", help: "Participant URLs the coordinator sends batches to (at most \(Limits.batchCapablePeersMax))") { [unowned self] in Double(self.batchCapable.count) }
        log.onDurable = { [weak self] lsn in
            guard let self else { return }
            self.environment.execute { self.durable(upTo: lsn) }
        }
        log.onFailure = { error in
            onFatal("durable log failed, stopping without acknowledging anything more: \(error)")
        }
    }

    /// Re-drives decided-but-unacknowledged transactions; call once on the node's thread.
    public func start() {
        let actions = recoveryActions
        recoveryActions = []
        execute(actions)
        let tccActions = tccRecoveryActions
        tccRecoveryActions = []
        executeTCC(tccActions)
        scheduleTimedCheckpoint()
    }

    private func scheduleTimedCheckpoint() {
        checkpointTimer = environment.schedule(afterMs: checkpointIntervalMs) { [weak self] in
            guard let self else { return }
            self.checkpoint(ifBytesOver: 0, orTCCSettled: true)
            self.scheduleTimedCheckpoint()
        }
    }

    /// Stops timers; the node does nothing more on its own.
    public func stop() {
        timers.cancelAll()
        tccTimers.cancelAll()
        checkpointTimer?.cancel()
        checkpointTimer = nil
    }

    // MARK: - events in

    private func feed(_ event: Coordinator.Event) {
        let now = environment.wallMs
        execute(machine.on(event, nowMs: now))
        let stats = machine.stats
        if stats.committed != lastStats.committed { committedRate.add(atMs: now, stats.committed - lastStats.committed) }
        if stats.aborted != lastStats.aborted { abortedRate.add(atMs: now, stats.aborted - lastStats.aborted) }
        lastStats = stats
    }

    private func durable(upTo lsn: UInt64) {
        for (_, item) in pending.popDurable(upTo: lsn) {
            switch item {
            case .decision(let txid):
                CrashPoints.hit("coordinator.after-decision-logged")
                feed(.decisionDurable(txid))
            case .preCommit(let txid):
                CrashPoints.hit("coordinator.after-precommit-logged")
                feed(.preCommitDurable(txid))
            case .audit(let txid):
                feed(.auditDurable(txid))
            case .heuristic(let txid, let participant):
                feed(.heuristicDurable(txid, participant: participant))
            case .onePhaseWindow(let window):
                feed(.onePhaseWindowDurable(window))
            case .abortLearned(let txid):
                feed(.abortLearnedDurable(txid))
            }
        }
        tccDurable(upTo: lsn)
        checkpoint(ifBytesOver: checkpointAfterBytes)
    }

    /// `orTCCSettled`: also when a TCC branch settled since the last checkpoint, logged or not.
    private func checkpoint(ifBytesOver bytes: Int, orTCCSettled: Bool = false) {
        let settled = tcc.branchesSettledTotal
        guard log.bytesSinceCheckpoint > bytes || (orTCCSettled && settled != tccSettledAtCheckpoint) else { return }
        guard environment.monotonicUs >= checkpointNotBeforeUs else { return }
        do {
            _ = try log.checkpoint(snapshot: CoordinatorSnapshotContainer.pack(coordinator: machine.snapshot(), tcc: tcc.snapshot()))
            tccSettledAtCheckpoint = settled
        } catch is LogRecordTooLargeError {
            // Nothing was written. Fatal, the state that made it too large came back at every
            // start and stopped it again; put off, the log only grows until that state shrinks.
            checkpointsTooLarge += 1
            checkpointNotBeforeUs = environment.monotonicUs &+ UInt64(Limits.checkpointTooLargeRetryMs) * 1_000
        } catch {
            onFatal("checkpoint failed: \(error)")
        }
    }

    // MARK: - actions out

    private func execute(_ actions: [Coordinator.Action]) {
        for action in actions {
            switch action {
            case .reply(let id, let reply):
                let wasCommit: Bool
                if case .outcome(_, .committed, _) = reply { wasCommit = true } else { wasCommit = false }
                if let started = commitStartedUs.removeValue(forKey: id) {
                    commitLatency.add(Double(environment.monotonicUs &- UInt64(started)) / 1000)
                }
                requests.take(id)?.send(response(for: reply))
                if wasCommit { CrashPoints.hit("coordinator.after-commit-replied") }
            case .send(let txid, let to, let message):
                send(txid, to, message)
            case .log(let record, let force):
                append(record, force: force)
            case .setTimer(let timer, let afterMs):
                timers.set(timer, afterMs: afterMs) { [unowned self] in self.timerFired($0) }
            case .cancelTimer(let timer):
                timers.cancel(timer)
            }
        }
    }

    private func timerFired(_ timer: Coordinator.Timer) {
        if case .preCommitTimeout(let txid) = timer { withdrawPreCommits(txid) }
        feed(.timerFired(timer))
    }

    /// Pre-commits withdrawn at their transaction's pre-commit timeout because they had not
    /// left this process (`cohort_precommits_withdrawn_total`; the simulation sums them).
    public private(set) var preCommitsWithdrawn = 0

    /// The key a pre-commit is sent with, to be withdrawn by at its transaction's timeout.
    private static func preCommitWithdrawKey(_ txid: TxID) -> String { "pre-commit \(txid)" }

    /// At the pre-commit timeout, before the machine hears of it: the pre-commits of `txid`
    /// that have not left this process (queued behind the exchanges in flight to their
    /// participant, in a refused batch's half waiting to be sent again, or waiting in the HTTP
    /// client for a connection, alone or in a batch) are withdrawn, and each
    /// reaches the machine as not delivered (`answered`: `.preCommitRefused`). Such a
    /// participant is silent because it never got the message, not because it crashed: it is
    /// alive and uncertain, and may abort as backup when its own termination timer fires. The
    /// classic timeout's commit, which presumes every silent participant failed, is exactly
    /// wrong for it; classic 3PC learns instead, and quorum 3PC does not count it (its rule for
    /// any participant that did not acknowledge). A pre-commit that did leave and got no
    /// answer still leaves the decision to the timeout.
    private func withdrawPreCommits(_ txid: TxID) {
        guard let tx = machine.transaction(txid), tx.state == .preCommitting else { return }
        let urls = tx.branches.filter { $0.state == .preCommitSent }.map(\.participant.url)
        guard !urls.isEmpty else { return }
        preCommitsWithdrawn += sender.withdraw(key: Self.preCommitWithdrawKey(txid), from: urls,
                        because: "at the pre-commit timeout (\(machine.config.preCommitTimeoutMs) ms)")
    }

    private func append(_ record: Coordinator.Record, force: Bool) {
        switch record {
        case .commitDecision: CrashPoints.hit("coordinator.before-decision-logged")
        case .preCommit: CrashPoints.hit("coordinator.before-precommit-logged")
        case .end: CrashPoints.hit("coordinator.before-end-logged")
        case .audit, .heuristic, .submission, .onePhaseWindow, .abortLearned: break
        }
        switch record {
        case .commitDecision(let txid, _, _), .preCommit(let txid, _, _, _):
            // Its submission's request_id record was refused just before: deciding without it
            // would let a resent submission run the work again after a restart (a review: the
            // two appends straddled a sync round that freed room for the second).
            if submissionRefused == txid {
                submissionRefused = nil
                return feed(.decisionRefused(txid, reason: "the submission's request_id could not be logged: log full"))
            }
        default: break
        }
        let encoded = CoordinatorRecordCoding.encode(record)
        do {
            let lsn = try log.append(type: encoded.type, payload: encoded.payload, force: force)
            switch record {
            case .commitDecision(let txid, _, _): pending.append(lsn: lsn, .decision(txid))
            case .preCommit(let txid, _, _, _): pending.append(lsn: lsn, .preCommit(txid))
            case .end: CrashPoints.hit("coordinator.after-end-logged")
            case .audit(let txid, _): pending.append(lsn: lsn, .audit(txid))
            case .heuristic(let txid, let participant, _, _): pending.append(lsn: lsn, .heuristic(txid, participant: participant))
            case .submission: break // made durable by the decision appended right after it
            case .onePhaseWindow(let window): pending.append(lsn: lsn, .onePhaseWindow(window))
            case .abortLearned(let txid): pending.append(lsn: lsn, .abortLearned(txid))
            }
        } catch let full as LogFullError {
            // Back-pressure, nothing written: abort the undecided transaction; a missing end
            // record only means the commit is re-sent (and acknowledged again) after a restart.
            switch record {
            case .commitDecision(let txid, _, _), .preCommit(let txid, _, _, _): feed(.decisionRefused(txid, reason: "\(full)"))
            case .end: break
            case .submission(let txid, _): submissionRefused = txid // the decision right after it is refused too
            case .onePhaseWindow(let window): feed(.onePhaseWindowRefused(window)) // the transaction goes on in two phases
            // An operator's force or a participant's heuristic report: answered 503 with
            // nothing changed; both are sent again (it used to stop the coordinator).
            case .audit(let txid, _): feed(.auditRefused(txid, reason: "\(full)"))
            case .heuristic(let txid, let participant, _, _): feed(.heuristicRefused(txid, participant: participant, reason: "\(full)"))
            case .abortLearned(let txid): feed(.abortLearnedRefused(txid, reason: "\(full)"))
            }
        } catch {
            // The log has failed: nothing may be acknowledged any more. On restart an
            // undecided transaction is aborted by presumption.
            onFatal("cannot append to the durable log: \(error)")
        }
    }

    private func send(_ txid: TxID, _ to: ParticipantRef, _ message: ParticipantMessage) {
        let path: String
        let body: [UInt8]
        switch message {
        case .prepare(let onePhase, let participants, let threePhase, let work, let lastAcknowledged):
            path = "/v1/2pc/prepare"
            body = JSONBody.encode(PrepareRequest(txid: txid.description, onePhase: onePhase, participants: participants, incarnation: to.incarnation,
                                                  protocol: threePhase == nil ? nil : "3pc", termination: threePhase?.rawValue,
                                                  ops: work, timeoutMs: work == nil ? nil : machine.transaction(txid)?.timeoutMs,
                                                  participant: work == nil ? nil : to.name,
                                                  lastAcknowledgedCommit: lastAcknowledged?.txid.description,
                                                  lastAcknowledgedIncarnation: to.incarnation == nil ? lastAcknowledged?.incarnation : nil))
            CrashPoints.hit("coordinator.before-prepare-send")
        case .preCommit:
            path = "/v1/3pc/precommit"
            body = JSONBody.encode(PhaseRequest(txid: txid.description, incarnation: to.incarnation))
            CrashPoints.hit("coordinator.before-precommit-send")
        case .stateQuery:
            path = "/v1/3pc/state"
            body = JSONBody.encode(PhaseRequest(txid: txid.description, incarnation: to.incarnation))
        case .commit:
            path = "/v1/2pc/commit"
            body = JSONBody.encode(PhaseRequest(txid: txid.description, incarnation: to.incarnation))
            CrashPoints.hit("coordinator.before-commit-send")
        case .abort:
            path = "/v1/2pc/abort"
            body = JSONBody.encode(PhaseRequest(txid: txid.description, incarnation: to.incarnation))
            CrashPoints.hit("coordinator.before-abort-send")
        }
        switch message {
        case .prepare(false, _, _, _, _): metrics.add(sentPrepares)
        case .commit: metrics.add(sentCommits)
        default: metrics.add("cohort_messages_sent_total", labels: "type=\"\(message.typeName)\"")
        }
        let name = to.name
        let withdrawKey: String?
        if case .preCommit = message { withdrawKey = Self.preCommitWithdrawKey(txid) } else { withdrawKey = nil }
        sender.send(baseURL: to.url, path: path, body: body, batchable: batchCapable.contains(to.url), withdrawKey: withdrawKey) { [weak self] result in
            self?.answered(txid, name, message, result)
        }
        switch message {
        case .prepare: CrashPoints.hit("coordinator.after-prepare-send")
        case .preCommit: CrashPoints.hit("coordinator.after-precommit-send")
        case .stateQuery: break
        case .commit: CrashPoints.hit("coordinator.after-commit-send")
        case .abort: CrashPoints.hit("coordinator.after-abort-send")
        }
    }

    private func answered(_ txid: TxID, _ name: String, _ message: ParticipantMessage, _ result: Result<HTTPClientResponse, HTTPClientError>) {
        let failure: String?
        var response: HTTPClientResponse?
        switch result {
        case .failure(let e): failure = "\(e)"
        case .success(let r) where r.status == 200: failure = nil; response = r
        case .success(let r):
            let text = (try? JSONBody.value(ErrorBody.self, from: r.body).error) ?? "HTTP \(r.status)"
            failure = "HTTP \(r.status): \(text)"
        }
        switch message {
        case .abort:
            return // presumed abort: nobody waits for an abort's answer
        case .preCommit:
            // Only `200 {"status":"pre-committed"}` acknowledges (docs/protocol.md): a 200 that
            // says anything else (`aborted`) is an answer from a participant that is alive and
            // not pre-committed, and counted as one it made a commit at the timeout possible
            // with no writer durably pre-committed (a review, session 29).
            let status = response.flatMap { try? JSONBody.value(PhaseResponse.self, from: $0.body).status }
            if failure == nil, status == "pre-committed" {
                feed(.preCommitAcknowledged(txid, participant: name))
            } else if failure == nil {
                feed(.preCommitRefused(txid, participant: name, reason: "answered \(status.map { "\"\($0)\"" } ?? "an unreadable body") to a pre-commit, not \"pre-committed\""))
            } else if case .failure(let e) = result, !e.mayBeFromADownPeer {
                // Not "no answer": a pre-commit that never left this process (its queue to the
                // participant was full, or its URL unusable) says nothing of the participant,
                // which may be alive and uncertain, and one that answered unreadably is alive. Classic 3PC
                // commits at the timeout on the presumption that whoever did not acknowledge
                // crashed; neither did, and such a participant could abort as backup against the
                // commit (a review, session 29). Learn instead.
                // `retryNotSent`: it went out once, on a kept-alive connection the participant
                // closed before answering, and the retry never left this process. It may have
                // been delivered and acted on, or not (a live participant's idle timeout closes
                // connections just so): neither an acknowledgement nor a sign of a crash, and
                // learning is right either way, since it takes only the participants' own
                // outcomes (session 30). Under quorum termination neither is counted.
                // A pre-commit still waiting in this process at the pre-commit timeout is
                // withdrawn and comes here as `withdrawn` (`withdrawPreCommits`, session 31), or
                // as `retryWithdrawn` if it was the retry of one that went out once. The
                // reason says which, plainly (session 32).
                let why: String
                switch e {
                case .withdrawn(let m): why = "the pre-commit never left this coordinator: it was withdrawn unsent \(m)"
                case .retryWithdrawn(let m):
                    why = "the pre-commit went out once, on a kept-alive connection \(name) closed before answering, and may have reached it; its retry was withdrawn unsent \(m)"
                case .retryNotSent: why = "the pre-commit may have reached it but was not acknowledged (\(e))"
                default: why = "the pre-commit was not delivered: \(e)"
                }
                feed(.preCommitRefused(txid, participant: name, reason: why))
            } else if case .success = result {
                // Any answer but an acknowledgement (409, or 503: its log refused the record)
                // comes from a participant that is alive and not pre-committed. Classic 3PC
                // must not presume it failed and commit at the timeout: it may abort on its own
                // (only 409 counted, and a 503 let the coordinator commit while the participant
                // could abort, a review, session 27). Stop deciding and learn the outcome.
                feed(.preCommitRefused(txid, participant: name, reason: failure!))
            }
            // No answer (a transport failure): the pre-commit timeout decides.
        case .stateQuery:
            let state = response.flatMap { try? JSONBody.value(ThreePhaseStateResponse.self, from: $0.body) }
                .flatMap { ThreePhaseState(rawValue: $0.state) }
            feed(.stateAnswered(txid, participant: name, state: state))
        case .commit:
            guard let response, failure == nil else {
                feed(.deliveryFailed(txid, participant: name, error: failure ?? "no answer to commit"))
                return
            }
            switch CommitAnswer(body: response.body) {
            case .committed:
                feed(.acknowledged(txid, participant: name))
            case .heuristicAborted:
                // An operator aborted this branch at the participant: it cannot commit.
                feed(.heuristicReported(nil, txid: txid.description, participant: name, outcome: .aborted))
            case .notAnAcknowledgement(let reason):
                // A 200 is not enough: forgetting a branch that is still prepared loses its commit.
                feed(.deliveryFailed(txid, participant: name, error: reason))
            }
        case .prepare(let onePhase, _, _, _, _):
            guard let response, failure == nil,
                  let answer = try? JSONBody.value(PrepareResponse.self, from: response.body) else {
                let error = failure ?? "unreadable answer to prepare"
                feed(onePhase ? .deliveryFailed(txid, participant: name, error: error) : .prepareFailed(txid, participant: name, error: error))
                return
            }
            if onePhase {
                guard let text = answer.outcome, let outcome = Outcome(rawValue: text) else {
                    feed(.deliveryFailed(txid, participant: name, error: "answer to one-phase commit has no outcome"))
                    return
                }
                // `"vote": "read-only"` with `committed`: the branch only read and wrote no record.
                feed(.onePhaseAnswered(txid, participant: name, outcome: outcome, reason: answer.reason, readOnly: answer.vote == "read-only"))
                return
            }
            switch answer.vote {
            case "yes": feed(.voted(txid, participant: name, vote: .yes))
            case "read-only": feed(.voted(txid, participant: name, vote: .readOnly))
            case "no": feed(.voted(txid, participant: name, vote: .no(reason: answer.reason ?? "no reason given")))
            default: feed(.prepareFailed(txid, participant: name, error: "unknown vote \(answer.vote ?? "(none)")"))
            }
        }
    }

    private func response(for reply: Coordinator.Reply) -> HTTPResponse {
        switch reply {
        case .begun(let txid, let timeoutMs):
            return .jsonBytes(201, JSONBody.encode(BeginResponse(txid: txid.description, timeoutMs: timeoutMs)))
        case .registered(let txid, let timeoutMs, let lastAcknowledged):
            return .jsonBytes(200, JSONBody.encode(RegisterResponse(txid: txid.description, timeoutMs: timeoutMs,
                                                                    lastAcknowledgedCommit: lastAcknowledged?.txid.description)))
        case .outcome(let txid, let outcome, let reason):
            return .jsonBytes(200, JSONBody.encode(OutcomeResponse(txid: txid.description, outcome: outcome.rawValue, reason: reason)))
        case .inquiry(let txid, let answer):
            return .jsonBytes(200, JSONBody.encode(InquiryResponse(txid: txid, outcome: answer.rawValue)))
        case .forced(let txid, let outcome, let dryRun, let effects):
            return .jsonBytes(200, JSONBody.encode(ForceResponse(txid: txid.description, outcome: outcome.rawValue, dryRun: dryRun, effects: effects)))
        case .retried(let txid, let participants):
            return .jsonBytes(200, JSONBody.encode(RetryResponse(txid: txid.description, participants: participants)))
        case .heuristicNoted(let txid, let mixed):
            return .jsonBytes(200, JSONBody.encode(HeuristicResponse(txid: txid, mixed: mixed)))
        case .error(let e):
            if e.status == 503 || e.status == 429 { metrics.add("cohort_requests_rejected_total") }
            return .requestError(e)
        }
    }

    // MARK: - HTTP routing

    public func handle(_ request: HTTPRequest, _ responder: ResponseSink) {
        let parts = request.pathComponents
        let method = request.method
        func reject(_ status: Int, _ message: String) { responder.send(.error(status, message)) }
        switch (method, parts.count) {
        case ("GET", 1) where parts[0] == "healthz":
            responder.send(.jsonBytes(200, JSONBody.encode(HealthResponse(status: "ok"))))
        case ("GET", 1) where parts[0] == "metrics":
            responder.send(.text(200, metrics.render(), contentType: "text/plain; version=0.0.4"))
        case ("POST", 2) where parts == ["v1", "transactions"]:
            switch JSONBody.decode(BeginRequest.self, from: request.body, emptyAs: BeginRequest()) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let begin):
                if let error = validate(begin) { return responder.send(.requestError(error)) }
                if begin.protocol == "tcc" { return tccBegin(begin, responder) }
                let commitProtocol: CommitProtocol = begin.protocol == "3pc"
                    ? .threePhase(Termination(rawValue: begin.termination ?? "classic") ?? .classic) : .twoPhase
                feed(.begin(requests.add(responder), timeoutMs: begin.timeoutMs, protocol: commitProtocol))
            }
        case ("POST", 3) where parts[0] == "v1" && parts[1] == "transactions" && parts[2] == "submit":
            submit(request, responder)
        case ("GET", 2) where parts == ["v1", "transactions"]:
            list(request, responder)
        case ("GET", 3) where parts[0] == "v1" && parts[1] == "transactions":
            guard let txid = TxID(parts[2]) else { return reject(400, "malformed txid \"\(parts[2].prefix(80))\"") }
            if machine.transaction(txid) == nil, let t = tcc.transaction(txid) { return responder.send(.jsonBytes(200, JSONBody.encode(t.view()))) }
            guard let tx = machine.transaction(txid) else {
                if let view = machine.forgottenView(txid) ?? tcc.forgottenView(txid) {
                    // Not counted when it came from the memory of forced outcomes alone.
                    if machine.forgottenOutcome(txid) != nil || tcc.forgottenOutcome(txid) != nil { ledgerGets += 1 }
                    return responder.send(.jsonBytes(200, JSONBody.encode(view)))
                }
                if let forgotten = machine.forgottenRefusal(txid) ?? tcc.forgottenRefusal(txid) { return responder.send(.requestError(forgotten)) }
                if txid.coordinatorID != machine.config.coordinatorID {
                    // "Never committed here" read as "aborted" to an operator whose coordinator's
                    // data directory had been replaced (a game-day probe): this process can say
                    // nothing of another coordinator's transactions, committed or not.
                    return reject(404, "unknown transaction \(txid): it was begun by coordinator \(txid.coordinatorID), not this one (\(machine.config.coordinatorID)), so this coordinator knows nothing of its outcome, committed or aborted. If \(txid.coordinatorID)'s data directory was replaced or lost, its decisions went with it: read its old log if it survives (txctl log inspect DIR), else the participants (txctl agent URL show \(txid) at each): one committed means commit, one aborted means abort")
                }
                return reject(404, "unknown transaction \(txid): never committed here (finished transactions are kept for the last \(machine.config.finishedTransactionsKept), then their outcomes in a ledger; one that may have committed before them, or in one phase before a restart, is answered 410)")
            }
            responder.send(.jsonBytes(200, JSONBody.encode(tx.view())))
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "tcc-branches":
            tccRegister(parts[2], request, responder)
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && (parts[3] == "commit" || parts[3] == "abort")
                && routesToTCC(parts[2]):
            feedTCC(parts[3] == "commit" ? .commit(requests.add(responder), txid: parts[2]) : .abort(requests.add(responder), txid: parts[2]))
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "commit":
            guard let named = namedBranches(request, responder) else { return }
            let id = requests.add(responder)
            commitStartedUs[id] = Int64(environment.monotonicUs)
            feed(.commit(id, txid: parts[2], named: named))
        case ("GET", 3) where parts[0] == "v1" && parts[1] == "submissions":
            let requestID = parts[2]
            if let e = RequestError.invalidRequestID(requestID) { return responder.send(.requestError(e)) }
            guard let view = machine.submission(requestID) else {
                return reject(404, "no submission with request_id \"\(requestID)\" is known here: never submitted, aborted or never decided and since forgotten, or committed before the last \(machine.config.committedSubmissionsKept) committed submissions kept; a submission with it now would run")
            }
            responder.send(.jsonBytes(200, JSONBody.encode(view)))
        case ("GET", 2) where parts == ["v1", "stats"]:
            responder.send(.jsonBytes(200, JSONBody.encode(stats())))
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "abort":
            guard let named = namedBranches(request, responder) else { return }
            feed(.abort(requests.add(responder), txid: parts[2], named: named))
        case ("POST", 2) where parts == ["v1", "batch"]:
            // Participants' registrations, several in one exchange (see BatchingSender).
            serveBatch(request, responder, allowedPrefixes: ["/v1/transactions/"]) { item, sink in
                let p = item.pathComponents
                guard p.count == 4, p[3] == "branches" else {
                    return sink.send(.error(400, "a batch may hold only branch registrations"))
                }
                self.handle(item, sink)
            }
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "branches":
            switch JSONBody.decode(RegisterRequest.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let r):
                let participant = r.participantRef
                if let refusal = Self.participantURLRefusal(r.url) { return reject(400, refusal) }
                if r.batch == true { noteBatchCapable(participant) }
                feed(.register(requests.add(responder), txid: parts[2], participant: participant))
            }
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "force":
            switch JSONBody.decode(ForceBody.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let f):
                guard let outcome = Outcome(rawValue: f.outcome) else { return reject(400, "outcome must be committed or aborted") }
                let force = Coordinator.ForceRequest(outcome: outcome, reason: f.reason, operatorName: f.operator ?? "unknown", dryRun: f.dryRun ?? false)
                if tcc.owns(parts[2]) || TxID(parts[2]).map({ tcc.forgottenOutcome($0) != nil }) == true { return feedTCC(.force(requests.add(responder), txid: parts[2], force)) }
                feed(.force(requests.add(responder), txid: parts[2], force))
            }
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "retry" && routesToTCC(parts[2]):
            feedTCC(.retryNow(requests.add(responder), txid: parts[2]))
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "retry":
            feed(.retryNow(requests.add(responder), txid: parts[2]))
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "heuristic":
            switch JSONBody.decode(HeuristicReport.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let h):
                guard let outcome = Outcome(rawValue: h.outcome) else { return reject(400, "outcome must be committed or aborted") }
                let forcedBy = Coordinator.HeuristicForce(operatorName: h.operator, reason: h.reason, forcedAtMs: h.forcedAtMs)
                feed(.heuristicReported(requests.add(responder), txid: parts[2], participant: h.participant, outcome: outcome, forcedBy: forcedBy))
            }
        case ("GET", 4) where parts[0] == "v1" && parts[1] == "transactions" && parts[3] == "outcome":
            guard TxID(parts[2]) != nil else { return reject(400, "malformed txid \"\(parts[2].prefix(80))\"") }
            // Through the state machine: a participant that asks is reachable, and a commit
            // waiting to be retried toward it goes now.
            feed(.inquiry(requests.add(responder), txid: parts[2], participant: request.query["participant"]))
        default:
            // 405 only for a path that exists with another method; anything else is 404.
            let exists: Bool
            switch parts.count {
            case 1: exists = parts[0] == "healthz" || parts[0] == "metrics"
            case 2: exists = parts == ["v1", "transactions"]
            case 3: exists = parts[0] == "v1" && parts[1] == "transactions"
            case 4: exists = parts[0] == "v1" && parts[1] == "transactions" && ["commit", "abort", "branches", "outcome", "tcc-branches"].contains(parts[3])
            default: exists = false
            }
            reject(exists ? 405 : 404, "no route for \(method) \(request.path)")
        }
    }

    /// The branches a commit or abort names (an empty body names none), or nil after answering
    /// 400. A named branch that serves batches is noted as a registration's would be.
    private func namedBranches(_ request: HTTPRequest, _ responder: ResponseSink) -> [ParticipantRef]? {
        switch JSONBody.decode(NamedBranches.self, from: request.body, emptyAs: NamedBranches(branches: [])) {
        case .failure(let e):
            responder.send(.requestError(e))
            return nil
        case .success(let n):
            if let refusal = n.branches.lazy.compactMap({ Self.participantURLRefusal($0.url) }).first {
                responder.send(.error(400, refusal))
                return nil
            }
            let named = n.branches.map(\.participantRef)
            for (b, participant) in zip(n.branches, named) where b.batch == true { noteBatchCapable(participant) }
            return named
        }
    }

    /// Checked before the machine sees a participant: a URL the client cannot call would be
    /// prepared and retried until the transaction timed out, and the commit would wait as long.
    static func uncallable(_ field: String, _ url: String) -> String {
        "\(field) \"\(url.prefix(200))\" is not an http://HOST[:PORT]/PATH URL (port 1-65535)"
    }

    /// A transaction this coordinator recovered that another coordinator id issued, if any: the
    /// data directory's `coordinator.id` was replaced (by another valid id) or the log came
    /// from another coordinator. Serving would answer `unknown-coordinator` to participants
    /// asking about the log's own transactions while `GET` showed them committed. Walks the
    /// tables' keys once (no sorted copy: it runs at every start).
    public func recoveredTransactionOfAnotherCoordinator() -> TxID? {
        if let through = machine.forgottenCommits.through, through.coordinatorID != coordinatorID { return through }
        let foreign = { (txid: TxID) in txid.coordinatorID != self.coordinatorID }
        return machine.open.keys.first(where: foreign) ?? machine.finished.keys.first(where: foreign)
            ?? tcc.open.keys.first(where: foreign) ?? tcc.finished.keys.first(where: foreign)
    }

    /// Whether a commit, abort or retry of `text` goes to the TCC machine: it holds the
    /// transaction, or may have forgotten it. The txid is parsed once for both questions, and
    /// the machines are asked whether they hold it without copying the transaction out: asked
    /// of every 2PC commit, the two parses and the copies were 0.7% of the coordinator's
    /// instructions.
    private func routesToTCC(_ text: String) -> Bool {
        guard let txid = TxID(text) else { return false }
        return askTCC({ $0.holds(txid) }) || tccMayHaveForgotten(txid)
    }

    /// Whether `txid` is unknown to both machines and may be a confirm the TCC machine forgot:
    /// it goes to that machine, which answers 410. (The 2PC machine would answer 404, which a
    /// client reads as aborted; it answers its own forgotten commits itself.)
    ///
    /// The TCC machine is asked first: of a 2PC transaction it knows nothing, and the answer is
    /// then no without asking the 2PC machine, whose every query from here copied it whole (a
    /// large struct read out of this class), once per 2PC commit. The same conjunction as
    /// asking the 2PC machine first; every question is a read.
    private func tccMayHaveForgotten(_ txid: TxID) -> Bool {
        // In place, as `askTCC` says why: each of these two questions copied the TCC machine.
        let tccForgotOutcome = askTCC { $0.forgottenOutcome(txid) } != nil
        guard tccForgotOutcome || askTCC({ $0.forgottenRefusal(txid) }) != nil else { return false }
        guard !machine.holds(txid), machine.forgottenOutcome(txid) == nil else { return false }
        if tccForgotOutcome { return true }
        return machine.forgottenRefusal(txid) == nil  // and the TCC machine's refusal is not nil
    }

    /// Why a participant's base URL is refused, or nil. The coordinator appends `/v1/2pc/...`
    /// to it, so one ending in a slash would send every message to a path with an empty
    /// segment, which servers answer 404 (`HTTPRequest.hasEmptySegment`): the branch could
    /// never prepare, and the transaction would abort only after its timeout.
    static func participantURLRefusal(_ url: String) -> String? {
        guard isCallableHTTPURL(url) else { return uncallable("participant url", url) }
        guard url.utf8.last != UInt8(ascii: "/") else {  // utf8: hasSuffix walks Characters
            return "participant url \"\(url.prefix(200))\" ends in a slash: give the base URL without it (the coordinator appends /v1/2pc/... to it)"
        }
        return nil
    }

    /// Remembers that `participant` serves `/v1/batch`: only a URL the machine would take (a
    /// 1 MB URL in a refused request once stayed in this set for good). Callers have checked
    /// that the client can call it.
    private func noteBatchCapable(_ participant: ParticipantRef) {
        guard participant.sizeRefusal == nil,
              batchCapable.count < Limits.batchCapablePeersMax else { return }
        batchCapable.insert(participant.url)
    }

    private func stats() -> StatsResponse {
        var byState: [String: Int] = [:]
        for tx in machine.allTransactions() {
            byState[tx.state.rawValue, default: 0] += 1
            if tx.parked && !tx.state.isFinished { byState["parked", default: 0] += 1 }
        }
        for tx in tcc.allTransactions() {
            byState[tx.state.rawValue, default: 0] += 1
            if tx.parked && !tx.state.isFinished { byState["parked", default: 0] += 1 }
        }
        // Also those known only from the ledger (see `list`).
        let forgottenMixed = machine.forgottenHeuristicMixedCount
        if forgottenMixed > 0 { byState[Coordinator.State.heuristicMixed.rawValue, default: 0] += forgottenMixed }
        let p = commitLatency.percentiles()
        let now = environment.wallMs
        return StatsResponse(
            byState: byState,
            totals: ["committed": machine.stats.committed + tcc.stats.committed, "aborted": machine.stats.aborted + tcc.stats.aborted],
            ratesPerS: ["committed": committedRate.rate(nowMs: now), "aborted": abortedRate.rate(nowMs: now)],
            open: machine.unfinishedCount + tcc.unfinishedCount, parked: machine.parkedCount + tcc.parkedCount,
            commitLatency: StatsResponse.Latency(samples: commitLatency.count, p50Ms: p.p50, p95Ms: p.p95, p99Ms: p.p99, maxMs: p.max),
            uptimeS: Int64((environment.monotonicUs &- startedAtUs) / 1_000_000))
    }

    private func submit(_ request: HTTPRequest, _ responder: ResponseSink) {
        switch JSONBody.decode(SubmitRequest.self, from: request.body) {
        case .failure(let e): responder.send(.requestError(e))
        case .success(let submit):
            if let error = validate(BeginRequest(protocol: submit.protocol, timeoutMs: submit.timeoutMs, termination: submit.termination)) {
                return responder.send(.requestError(error))
            }
            if submit.protocol == "tcc" {
                return responder.send(.error(400, "submit runs 2pc and 3pc transactions; a TCC transaction registers its branches (POST /v1/transactions/{txid}/tcc-branches)"))
            }
            if let refusal = submit.branches.lazy.compactMap({ Self.participantURLRefusal($0.url) }).first {
                return responder.send(.error(400, refusal))
            }
            // Overload is refused before the transaction exists: admitted, its prepare would
            // fail on the full queue and it would answer 200 "aborted" (a black-box probe: 35,087
            // of 40,000 pipelined submits), which reads like a business "no".
            for b in submit.branches where sender.unansweredCount(b.url) >= Limits.submitRefusedAtQueuedMessages {
                return responder.send(.error(503, "participant \(b.participant) has \(sender.unansweredCount(b.url)) messages sent and not yet answered (limit \(Limits.submitRefusedAtQueuedMessages)); retry later"))
            }
            let commitProtocol: CommitProtocol = submit.protocol == "3pc"
                ? .threePhase(Termination(rawValue: submit.termination ?? "classic") ?? .classic) : .twoPhase
            let branches = submit.branches.map {
                Coordinator.SubmittedBranch(participant: ParticipantRef(name: $0.participant, url: $0.url, incarnation: $0.incarnation), work: $0.ops)
            }
            let id = requests.add(responder)
            commitStartedUs[id] = Int64(environment.monotonicUs)
            feed(.submit(id, timeoutMs: submit.timeoutMs, protocol: commitProtocol, branches: branches, requestID: submit.requestID))
        }
    }

    private func validate(_ begin: BeginRequest) -> RequestError? {
        switch begin.protocol ?? "2pc" {
        case "2pc":
            if begin.termination != nil { return RequestError(400, "termination applies to protocol 3pc only") }
        case "3pc":
            if let t = begin.termination, Termination(rawValue: t) == nil {
                return RequestError(400, "termination must be classic or quorum; got \"\(t.prefix(40))\"")
            }
        case "tcc":
            if begin.termination != nil { return RequestError(400, "termination applies to protocol 3pc only") }
        default:
            return RequestError(400, "protocol must be one of 2pc, 3pc, tcc; got \"\(begin.protocol!.prefix(40))\"")
        }
        return nil
    }

    private func list(_ request: HTTPRequest, _ responder: ResponseSink) {
        let filter = request.query["state"]
        let limitText = request.query["limit"] ?? String(Limits.transactionsListedDefault)
        let limitMax = Limits.finishedTransactionsKept + Limits.openTransactionsMax
        guard let limit = Int(limitText), limit > 0, limit <= limitMax else {
            return responder.send(.error(400, "limit must be an integer 1-\(limitMax), got \"\(limitText.prefix(40))\""))
        }
        if let filter, !Coordinator.listStateFilters.contains(filter) {
            return responder.send(.error(400, "state must be one of \(Coordinator.listStateFilters.joined(separator: ", "))"))
        }
        func keep(_ state: String, _ finished: Bool, _ parked: Bool) -> Bool {
            switch filter {
            case nil: return true
            case "unfinished"?, "in-doubt"?: return !finished
            case "parked"?: return parked && !finished
            case let s?: return state == s
            }
        }
        // Both state machines' transactions, newest first (ids share one epoch/sequence).
        let classic = machine.allTransactions().filter { keep($0.state.rawValue, $0.state.isFinished, $0.parked) }.prefix(limit).map { ($0.txid, $0.view()) }
        let tccs = tcc.allTransactions().filter { keep($0.state.rawValue, $0.state.isFinished, $0.parked) }.prefix(limit).map { ($0.txid, $0.view()) }
        // Heuristic-mixed ones the coordinator let go of stay listed from its ledger (outcome
        // and state, no branches): a game-day probe saw three vanish from the list after
        // 10,000 newer transactions, while their data still needed repair by hand.
        let forgottenMixed = filter == "heuristic-mixed"
            ? machine.forgottenHeuristicMixed(limit: limit).compactMap { id in machine.forgottenView(id).map { (id, $0) } } : []
        let selected = (classic + forgottenMixed + tccs).sorted { $0.0 > $1.0 }.prefix(limit).map(\.1)
        // Bounded in bytes too: 10,000 parked transactions of two branches made 31 MB, built in
        // 1.6 s on the event loop, and more than txctl reads (a black-box probe).
        // Each view is encoded once, into the body itself (`TransactionList`'s form), so the
        // bound costs no second encoding of what is kept.
        var body = Array(#"{"transactions":["#.utf8)
        var kept = 0
        for view in selected {
            let encoded = JSONBody.encode(view)
            if kept > 0 && body.count + encoded.count + 1 > Limits.transactionsListedBytesMax { break }
            if kept > 0 { body.append(UInt8(ascii: ",")) }
            body += encoded
            kept += 1
        }
        body += Array((kept < selected.count ? #"],"truncated":true}"# : "]}").utf8)
        responder.send(.jsonBytes(200, body))
    }

    // MARK: - TCC

    private func tccBegin(_ begin: BeginRequest, _ responder: ResponseSink) {
        feedTCC(.begin(requests.add(responder), txid: machine.allocateTxID(), timeoutMs: begin.timeoutMs))
    }

    private func tccRegister(_ txid: String, _ request: HTTPRequest, _ responder: ResponseSink) {
        guard request.body.count <= Limits.tccPayloadBytesMax + Limits.tccRegistrationFieldsBytesMax else {
            return responder.send(.error(413, "a TCC branch registration is at most \(Limits.tccPayloadBytesMax) bytes of payload"))
        }
        switch JSONBody.decode(TCCBranchRequest.self, from: request.body) {
        case .failure(let e): responder.send(.requestError(e))
        case .success(let b):
            // Checked here, not at the first call: a cancel URL the client cannot call would
            // keep the transaction open, retried, for good.
            for (field, url) in [("try_url", b.tryURL), ("confirm_url", b.confirmURL), ("cancel_url", b.cancelURL)] where !isCallableHTTPURL(url) {
                return responder.send(.error(400, Self.uncallable(field, url)))
            }
            feedTCC(.register(requests.add(responder), txid: txid,
                              TCCCoordinator.BranchSpec(branchID: b.branchID, tryURL: b.tryURL, confirmURL: b.confirmURL, cancelURL: b.cancelURL, payload: b.payload)))
        }
    }

    private func feedTCC(_ event: TCCCoordinator.Event) {
        executeTCC(tcc.on(event, nowMs: environment.wallMs))
    }

    private func tccDurable(upTo lsn: UInt64) {
        for (_, item) in tccPending.popDurable(upTo: lsn) {
            switch item {
            case .branch(let txid, let id):
                CrashPoints.hit("coordinator.tcc-after-branch-logged")
                feedTCC(.branchDurable(txid, branchID: id))
            case .decision(let txid):
                CrashPoints.hit("coordinator.tcc-after-decision-logged")
                feedTCC(.decisionDurable(txid))
            case .audit(let txid):
                feedTCC(.auditDurable(txid))
            }
        }
    }

    private func executeTCC(_ actions: [TCCCoordinator.Action]) {
        for action in actions {
            switch action {
            case .reply(let id, let reply):
                requests.take(id)?.send(tccResponse(reply))
            case .call(let txid, let branchID, let phase, let url, let body):
                tccCall(txid, branchID, phase, url, body)
            case .log(let record, let force):
                let encoded = TCCRecordCoding.encode(record)
                do {
                    let lsn = try log.append(type: encoded.type, payload: encoded.payload, force: force)
                    switch record {
                    case .branch(let txid, let spec, _, _): tccPending.append(lsn: lsn, .branch(txid, spec.branchID))
                    case .confirmDecision(let txid, _, _): tccPending.append(lsn: lsn, .decision(txid))
                    case .audit(let txid, _, _, _): tccPending.append(lsn: lsn, .audit(txid))
                    case .end: break
                    }
                } catch let full as LogFullError {
                    switch record {
                    case .branch(let txid, let spec, _, _): feedTCC(.branchRefused(txid, branchID: spec.branchID, reason: "\(full)"))
                    case .confirmDecision(let txid, _, _): feedTCC(.decisionRefused(txid, reason: "\(full)"))
                    case .audit(let txid, _, _, _): feedTCC(.auditRefused(txid, reason: "\(full)"))
                    case .end: break // re-driven (and acknowledged again) after a restart
                    }
                } catch {
                    onFatal("cannot append to the durable log: \(error)")
                }
            case .setTimer(let timer, let afterMs):
                tccTimers.set(timer, afterMs: afterMs) { [unowned self] in self.feedTCC(.timerFired($0)) }
            case .cancelTimer(let timer):
                tccTimers.cancel(timer)
            }
        }
    }

    private func tccCall(_ txid: TxID, _ branchID: String, _ phase: TCCCoordinator.Call, _ url: String, _ body: TCCPhaseRequest) {
        #if DEBUG
        if phase == .cancel && environment.testOnlyBreak == .tccSkipCancel {
            // The deliberate bug (debug builds only): the cancel counts as done, never sent.
            return environment.execute { [weak self] in self?.feedTCC(.settled(txid, branchID: branchID, .cancel, error: nil)) }
        }
        #endif
        metrics.add("cohort_messages_sent_total", labels: "type=\"tcc-\(phase.rawValue)\"")
        let request = HTTPClientRequest(method: "POST", url: url, body: JSONBody.encode(body), timeoutMs: Limits.tccCallTimeoutMs)
        environment.send(request) { [weak self] result in
            guard let self else { return }
            let status: Int?
            var bodyBytes: [UInt8] = []
            var failure: String?
            switch result {
            case .failure(let e): status = nil; failure = "\(e)"
            case .success(let r):
                status = r.status
                bodyBytes = r.body
                if !(200..<300).contains(r.status) {
                    let text = (try? JSONBody.value(ErrorBody.self, from: r.body).error) ?? String(decoding: r.body.prefix(200), as: UTF8.self)
                    failure = "HTTP \(r.status): \(text)"
                }
            }
            switch phase {
            case .try:
                // The service answered (it reserved, or refused) and the coordinator has not
                // taken the answer in: a crash here leaves a try that ran but is unknown.
                CrashPoints.hit("coordinator.tcc-after-try-answered")
                if let failure {
                    if let status, (400..<500).contains(status) {
                        self.feedTCC(.tryAnswered(txid, branchID: branchID, .refused(status: status, error: failure)))
                    } else {
                        self.feedTCC(.tryAnswered(txid, branchID: branchID, .failed(failure)))
                    }
                } else {
                    let answer = try? JSONBody.value(TCCPhaseResponse.self, from: bodyBytes)
                    self.feedTCC(.tryAnswered(txid, branchID: branchID, .succeeded(answer?.result)))
                }
            case .confirm, .cancel:
                #if DEBUG
                if let status, (400..<500).contains(status), self.environment.testOnlyBreak == .tccRefusalAsDone {
                    // The deliberate bug (debug builds only): a refused confirm or cancel counts as done.
                    failure = nil
                }
                #endif
                self.feedTCC(.settled(txid, branchID: branchID, phase, error: failure, status: status))
            }
        }
        switch phase {
        case .try: break
        case .confirm: CrashPoints.hit("coordinator.tcc-after-confirm-send")
        case .cancel: CrashPoints.hit("coordinator.tcc-after-cancel-send")
        }
    }

    private func tccResponse(_ reply: TCCCoordinator.Reply) -> HTTPResponse {
        switch reply {
        case .begun(let txid, let timeoutMs):
            return .jsonBytes(201, JSONBody.encode(BeginResponse(txid: txid.description, timeoutMs: timeoutMs)))
        case .tried(let txid, let branchID, let result):
            return .jsonBytes(200, JSONBody.encode(TCCBranchResponse(txid: txid.description, branchID: branchID, result: result)))
        case .outcome(let txid, let outcome, let reason):
            return .jsonBytes(200, JSONBody.encode(OutcomeResponse(txid: txid.description, outcome: outcome.rawValue, reason: reason)))
        case .forced(let txid, let outcome, let dryRun, let effects):
            return .jsonBytes(200, JSONBody.encode(ForceResponse(txid: txid.description, outcome: outcome.rawValue, dryRun: dryRun, effects: effects)))
        case .retried(let txid, let branches):
            return .jsonBytes(200, JSONBody.encode(RetryResponse(txid: txid.description, participants: branches)))
        case .error(let e):
            return .requestError(e)
        }
    }
}
