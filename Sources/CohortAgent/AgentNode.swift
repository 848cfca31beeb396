import CohortCore
import CohortHTTP
import CohortKV
import CohortLog
import CohortPosix
import CohortRuntime
import Foundation

/// The participant runtime of `cohort-agent`: the participant state machine decides; this node
/// carries out its actions against the prepare log (the truth), the key-value store
/// (materialized state, re-applied from the log after a crash), the lock table, outgoing
/// requests and timers. It knows the world only through a `NodeEnvironment`, so the agent
/// process and the simulation run this same code.
public final class AgentNode {
    public static let crashPoints = [
        "agent.before-register-send",
        "agent.after-register-send",
        "agent.before-prepared-logged",
        "agent.after-prepared-logged",
        "agent.after-vote-sent",
        "agent.before-commit-logged",
        "agent.after-commit-logged",
        "agent.after-commit-applied",
        "agent.after-ack-sent",
        "agent.before-abort-logged",
        "agent.after-abort-logged",
        "agent.before-inquiry-send",
        "agent.after-inquiry-send",
        "agent.before-precommit-logged",
        "agent.after-precommit-logged",
        "agent.after-precommit-ack-sent",
    ]

    static let messageTypes = ["register", "vote", "ack", "inquiry", "heuristic", "pre-commit-ack", "state-query", "pre-commit", "pre-abort", "commit", "abort"]

    /// What a forced record, once durable, lets the state machine do.
    private enum Pending {
        case prepared(String)
        case committed(String)
        case heuristic(String)
        case forgotten(String)
        /// A forced heuristic-resolved record: a forgotten branch found heuristic-mixed.
        case resolved(String)
        case preRecord(String)
        /// A forced abort: the termination protocol's (the coordinator's aborts are lazy).
        case aborted(String)
    }

    private let environment: NodeEnvironment
    public let name: String
    public let coordinatorURL: String
    public private(set) var machine: Participant

    /// Asks the machine a question in place. A query method called on this stored property
    /// (`machine.state(of:)`) ran on a copy of the whole `Participant`, every table retained
    /// and then released, about a thousand instructions a question and four questions a
    /// transfer (1.2% of an agent's instructions); through `inout` the access covers the call
    /// and the method reads the stored value. For queries only: the machine changes through
    /// `feed` alone, and `query` must not touch `self.machine` (the access is exclusive).
    @inline(__always) private func ask<T>(_ query: (inout Participant) -> T) -> T { query(&machine) }
    public let log: DurableLog
    public let store: KVStore
    public private(set) var resource: KVResource!
    private let requests = PendingRequests()
    private var timers: TimerTable<Participant.Timer>!
    private var pending = DurabilityQueue<Pending>()
    private let metrics = MetricsRegistry()
    /// The series counted for every branch, resolved once (declared in `init`).
    private lazy var sentVotes = metrics.counter("cohort_messages_sent_total", labels: "type=\"vote\"")
    private lazy var sentAcks = metrics.counter("cohort_messages_sent_total", labels: "type=\"ack\"")
    private lazy var sentRegistrations = metrics.counter("cohort_messages_sent_total", labels: "type=\"register\"")
    private lazy var committedBranches = metrics.counter("cohort_transactions_total", labels: "outcome=\"committed\"")
    private lazy var abortedBranches = metrics.counter("cohort_transactions_total", labels: "outcome=\"aborted\"")

    /// Adds the serving HTTP server's request and connection counters to `/metrics`.
    public func exposeHTTPServerMetrics(_ server: HTTPServer) { declareHTTPServerMetrics(metrics, server: server) }
    /// Lets a service that embeds the agent add its own metrics to the agent's `/metrics`
    /// (the inventory demo's TCC resource). Call on the loop thread, before serving.
    public func declareMetrics(_ body: (MetricsRegistry) -> Void) { body(metrics) }
    private let onFatal: (String) -> Void
    private var joining: [String: [(Result<Void, RequestError>) -> Void]] = [:]
    private var stagingInFlight: [String: Int] = [:]
    /// Submitted branches whose ops are being staged, with the repeated prepares that wait for it.
    private var submittedStaging: [String: [ResponseSink]] = [:]
    /// Open branches that joined through a submitted prepare (their commit records sync at
    /// once; see `urgency`).
    private var submittedBranches: Set<String> = []
    /// Time applying committed branches to the store, and the applies over
    /// `Limits.storeApplySlowUs` (read by /metrics).
    private var storeApplyUsTotal: UInt64 = 0
    private var storeAppliesSlow = 0
    private var startupInquiries: [Participant.Action] = []
    /// The address the coordinator calls back; set before the node serves requests.
    public var advertiseURL = ""
    /// Identifies this data directory; a coordinator message for another incarnation is refused.
    public let incarnation: String
    /// Identifies this process (drawn at start): sent with registrations and named branches so
    /// that a coordinator refuses this participant joining a transaction again after a restart
    /// lost the work its branch had staged (`ParticipantRef.session`).
    public let session: String
    private let checkpointAfterBytes: Int
    /// Checkpoints put off because the store was busy (`KVStoreBusy`), and the earliest next try.
    public private(set) var checkpointsPostponed = 0
    /// Checkpoints not written because their snapshot passed `Limits.snapshotBytesMax`.
    public private(set) var checkpointsTooLarge = 0
    private var checkpointNotBeforeMs: Int64 = 0
    /// Registrations to the coordinator, batched when many are in flight.
    private lazy var registrations = BatchingSender(environment: environment)
    /// Where each branch's forced records landed, for the white-box durability check.
    /// Per branch, by kind ("prepared", "pre", "commit"): the LSN of the record that backs
    /// the answers of that kind.
    /// Kept only when the environment checks it (`NodeEnvironment.checksBacking`: the simulation).
    private var backingLSN: [String: [String: UInt64]] = [:]
    private lazy var tracksBacking = environment.checksBacking

    /// Recovers from what the log held — re-applies durable commits the store may lack and
    /// re-takes the locks of in-doubt branches — before the node serves anything; inquiries
    /// about in-doubt branches start with `start()`. A record the recovery cannot decode is
    /// named, with its file and offset (as the coordinator does): most likely the log is not
    /// an agent's.
    public convenience init(name: String, incarnation: String, coordinatorURL: String, log: DurableLog, recovered: RecoveredLog,
                            store: KVStore, config: Participant.Config, checkpointAfterBytes: Int,
                            environment: NodeEnvironment, onFatal: @escaping (String) -> Void) throws {
        do {
            try self.init(recovering: recovered, name: name, incarnation: incarnation, coordinatorURL: coordinatorURL, log: log,
                          store: store, config: config, checkpointAfterBytes: checkpointAfterBytes, environment: environment, onFatal: onFatal)
        } catch {
            throw recovered.undecodableRecordError(error, kind: "agent", decode: { _ = try ParticipantRecordCoding.decode(type: $0.type, payload: $0.payload) },
                                                   decodeSnapshot: { var machine = Participant(config: config); _ = try machine.recover(snapshot: $0, records: []) })
        }
    }

    private init(recovering recovered: RecoveredLog, name: String, incarnation: String, coordinatorURL: String, log: DurableLog,
                 store: KVStore, config: Participant.Config, checkpointAfterBytes: Int,
                 environment: NodeEnvironment, onFatal: @escaping (String) -> Void) throws {
        self.name = name
        self.incarnation = incarnation
        session = String(environment.randomU64(), radix: 16)
        self.coordinatorURL = coordinatorURL
        self.log = log
        self.store = store
        self.environment = environment
        self.onFatal = onFatal
        self.checkpointAfterBytes = checkpointAfterBytes
        machine = Participant(config: config)
        timers = TimerTable(environment: environment)
        resource = KVResource(store: store, schedule: { afterMs, task in
            let timer = environment.schedule(afterMs: afterMs, task)
            return { timer.cancel() }
        })

        let recoveryActions = try machine.recover(snapshot: recovered.snapshot,
                                                  records: recovered.records.map { ($0.lsn, $0.type, $0.payload) })
        // Checked before anything is applied: replaying the commits after the checkpoint would
        // raise the store's LSN past the mark while the commits before it stayed lost.
        if let required = machine.snapshotStoreAppliedLSN, let checkpointLSN = recovered.snapshotLSN {
            let applied = try store.appliedLSN()
            if applied < required {
                throw StoreBehindLogError(storeAppliedLSN: applied, checkpointLSN: checkpointLSN, requiredLSN: required)
            }
        }
        let applies = recoveryActions.compactMap { action -> (txid: String, writeSet: [UInt8], lsn: UInt64)? in
            if case .apply(let t, let ws, let lsn) = action { return (t, ws, lsn) } else { return nil }
        }
        if !applies.isEmpty { try resource.commit(applies) }
        for action in recoveryActions {
            switch action {
            case .restoreLocks(let txid, let writeSet): try resource.restoreInDoubt(txid: txid, writeSet: writeSet)
            case .apply: break // applied above, in one store transaction
            // The rest (inquiries, timers, heuristic reports owed) is carried out by `start()`:
            // a list of kinds dropped what it did not name, so reports the state machine asked
            // to send again were never sent (a review).
            default: startupInquiries.append(action)
            }
        }

        declareCommonMetrics(metrics, log: log, messageTypes: Self.messageTypes)
        declareBatchingMetrics(metrics, sender: registrations)
        metrics.declare("cohort_transactions_total", help: "Finished branches, by outcome (a read-only branch counts as committed)",
                        labels: ["outcome=\"committed\"", "outcome=\"aborted\""])
        metrics.sample("cohort_in_doubt", help: "Branches that voted yes and have no outcome yet") { [unowned self] in Double(self.machine.inDoubtCount) }
        metrics.sample("cohort_heuristic_mixed", help: "Branches whose operator-forced outcome differs from the coordinator's decision") { [unowned self] in Double(self.machine.heuristicMixed.count) }
        metrics.sample("cohort_branches_open", help: "Branches staged, preparing or in doubt") { [unowned self] in Double(self.machine.branches.count) }
        metrics.sample("cohort_stale_data_coordinators", help: "Coordinators whose new work this participant refuses: one said it acknowledged a commit this participant's data neither holds nor let go (its directory restored from an older copy)") { [unowned self] in
            Double(self.machine.staleForCoordinators.count)
        }
        metrics.declare("cohort_stale_data_refusals_total", help: "Work, registrations and prepares refused because this participant's data is older than what it acknowledged to their coordinator")
        metrics.sample("cohort_work_answers_kept_bytes", help: "Work answers kept for request_id retries until their branches end; past 64 MiB a new request_id is answered 503") { [unowned self] in Double(self.workAnswersKeptBytes) }
        metrics.sample("cohort_checkpoints_too_large_total", type: "counter", help: "Checkpoints not written because the snapshot passed its size limit; the log keeps growing until branches end") { [unowned self] in Double(self.checkpointsTooLarge) }
        metrics.sample("cohort_checkpoints_postponed_total", type: "counter", help: "Checkpoints put off because a reader of the shared store held SQLite's checkpoint back") { [unowned self] in Double(self.checkpointsPostponed) }
        metrics.sample("cohort_store_apply_seconds_total", type: "counter", help: "Time spent applying committed branches to the store, on the event loop") { [unowned self] in
            Double(self.storeApplyUsTotal) / 1e6
        }
        metrics.sample("cohort_store_apply_slow_total", type: "counter", help: "Applies to the store that took over \(Limits.storeApplySlowUs) microseconds (the event loop waited meanwhile)") { [unowned self] in
            Double(self.storeAppliesSlow)
        }
        metrics.sample("cohort_lock_waits", help: "Lock requests waiting") { [unowned self] in Double(self.resource.lockWaitCount) }
        log.onDurable = { [weak self] lsn in
            guard let self else { return }
            self.environment.execute { self.durable(upTo: lsn) }
        }
        log.onFailure = { error in
            onFatal("durable log failed, stopping without acknowledging anything more: \(error)")
        }
    }

    /// Starts asking the coordinator about in-doubt branches; call once on the node's thread.
    public func start() {
        let actions = startupInquiries
        startupInquiries = []
        execute(actions)
    }

    /// Stops timers; the node does nothing more on its own.
    public func stop() {
        stopped = true
        timers.cancelAll()
    }

    /// Set by `stop()`: the log's durability callbacks and anything else already queued on the
    /// event loop do nothing more. The server closes the store right after stopping the node,
    /// and a queued callback applying commits to it stopped the process with "SQLiteKVStore
    /// used after close" (a SIGTERM under load). Whatever it would have applied is in the log,
    /// and the next start re-applies it.
    private var stopped = false

    // MARK: - events in

    private func feed(_ event: Participant.Event) {
        guard !stopped else { return }
        execute(machine.on(event))
    }

    private func durable(upTo lsn: UInt64) {
        guard !stopped else { return }
        // Votes and pre-commit answers first: they are on a client's path, while the commits
        // this sync made durable (commit records ride with prepares' syncs) are not, and
        // applying them is a SQLite transaction. A branch that voted cannot depend on a commit
        // not yet applied: it would still be waiting for that branch's locks.
        var votes: [Participant.Action] = []
        var commits: [Participant.Action] = []
        for (recordLSN, item) in pending.popDurable(upTo: lsn) {
            switch item {
            case .prepared(let txid):
                CrashPoints.hit("agent.after-prepared-logged")
                votes += machine.on(.preparedDurable(txid))
            case .committed(let txid):
                CrashPoints.hit("agent.after-commit-logged")
                commits += machine.on(.commitDurable(txid, lsn: recordLSN))
            case .heuristic(let txid):
                commits += machine.on(.heuristicDurable(txid, lsn: recordLSN))
            case .forgotten(let txid):
                votes += machine.on(.forgetDurable(txid))
            case .resolved(let txid):
                votes += machine.on(.resolvedDurable(txid))
            case .preRecord(let txid):
                CrashPoints.hit("agent.after-precommit-logged")
                votes += machine.on(.preRecordDurable(txid))
            case .aborted(let txid):
                votes += machine.on(.abortDurable(txid))
            }
        }
        execute(votes)
        // One store transaction for every commit this sync made durable.
        execute(commits)
        maybeCheckpoint()
    }

    private func maybeCheckpoint() {
        guard log.bytesSinceCheckpoint > checkpointAfterBytes else { return }
        let nowMs = Int64(environment.monotonicUs / 1_000)
        guard nowMs >= checkpointNotBeforeMs else { return }
        do {
            // Everything applied so far must survive power loss before the log forgets it.
            try store.makeDurable()
            // The commits up to the store's applied LSN leave the log with this checkpoint;
            // recorded so that a start finding the store below it refuses (StoreBehindLogError).
            _ = try log.checkpoint(snapshot: machine.snapshot(storeAppliedLSN: try store.appliedLSN()))
        } catch is KVStoreBusy {
            // A reader of a shared store held SQLite's checkpoint back: the log keeps its
            // records (nothing is lost, it is only longer); try again a little later.
            checkpointsPostponed += 1
            checkpointNotBeforeMs = nowMs + Limits.checkpointBusyRetryMs
        } catch is LogRecordTooLargeError {
            // Nothing was written. Fatal, the same branches came back at every start and
            // stopped it again; put off, the log only grows until some of them end.
            checkpointsTooLarge += 1
            checkpointNotBeforeMs = nowMs + Limits.checkpointTooLargeRetryMs
        } catch {
            onFatal("checkpoint failed: \(error)")
        }
    }

    // MARK: - actions out

    private func execute(_ actions: [Participant.Action]) {
        let applies = actions.compactMap { action -> (txid: String, writeSet: [UInt8], lsn: UInt64)? in
            if case .apply(let t, let ws, let lsn) = action { return (t, ws, lsn) } else { return nil }
        }
        if !applies.isEmpty && environment.testOnlyBreak == .skipBranchCommit {
            // TEST ONLY (debug builds): acknowledge without applying; only unlock.
            for apply in applies { resource.abort(txid: apply.txid) }
        } else if !applies.isEmpty {
            do {
                // Timed because it runs on the event loop: SQLite's automatic checkpoints
                // (a sync of its WAL and of the database file) happen inside some of these.
                let startedUs = environment.monotonicUs
                try resource.commit(applies)
                let tookUs = environment.monotonicUs &- startedUs
                storeApplyUsTotal &+= tookUs
                if tookUs > Limits.storeApplySlowUs { storeAppliesSlow += 1 }
            } catch {
                onFatal("cannot apply committed branches to the store: \(error)")
                return
            }
            CrashPoints.hit("agent.after-commit-applied")
        }
        var finishedInBatch: [String] = []
        defer {
            for txid in finishedInBatch {
                if tracksBacking { backingLSN.removeValue(forKey: txid) }
                submittedBranches.remove(txid)
                dropWorkReplies(txid)
            }
        }
        for action in actions {
            switch action {
            case .apply:
                break
            case .reply(let id, let reply):
                respond(id, reply)
            case .log(let record, let force):
                append(record, force: force)
            case .release(let txid):
                resource.abort(txid: txid)
            case .restoreLocks(let txid, let writeSet):
                do { try resource.restoreInDoubt(txid: txid, writeSet: writeSet) } catch { onFatal("cannot restore locks of \(txid): \(error)") }
            case .inquire(let txid, let url):
                inquire(txid, url)
            case .reportHeuristic(let txid, let url, let decision):
                reportHeuristic(txid, url, decision, attempt: 1)
            case .queryPeer(let txid, let peer, let round):
                queryPeer(txid, peer, round)
            case .sendToPeer(let txid, let peer, let message):
                sendToPeer(txid, peer, message)
            case .setTimer(let timer, let afterMs):
                timers.set(timer, afterMs: afterMs) { [unowned self] in self.feed(.timerFired($0)) }
            case .cancelTimer(let timer):
                timers.cancel(timer)
            case .finished(let txid, let outcome):
                metrics.add(outcome == .committed ? committedBranches : abortedBranches)
                finishedInBatch.append(txid)
            }
        }
    }

    /// How soon a record the state machine asked for must reach the disk. A two-phase commit
    /// record is forced (nothing is acknowledged or applied before it is durable), but its sync
    /// need not start at once: the client already has its answer, and only the coordinator's
    /// acknowledgement and this branch's locks wait on it. It rides with the next prepare's
    /// sync, or syncs alone after `Limits.soonSyncDelayUs`, which takes one sync per transfer
    /// off each agent under load. A one-phase commit answers the coordinator's decision itself
    /// and 3PC's records are on the client's path: those sync now.
    ///
    /// Branches of submitted transactions sync their commit records at once: riding made 8
    /// submitting clients about 20% slower (8 interactive clients about 15% faster). The
    /// coordinator's commit exchanges then last until this agent's next sync and fill the
    /// in-flight exchange slots that the prepares bringing that sync queue behind. Giving
    /// commits slots of their own fixed submit but lost the interactive gain in the runs made
    /// (docs/benchmarks.md, rounds 5 and 6: the waiting commits were batching the prepares).
    static func urgency(of record: Participant.Record, force: Bool, submitted: (String) -> Bool) -> LogUrgency {
        guard force else { return .lazy }
        if case .committed(let txid) = record, !submitted(txid) { return .soon }
        return .forced
    }

    private func append(_ record: Participant.Record, force: Bool) {
        let encoded = ParticipantRecordCoding.encode(record)
        switch record {
        case .prepared: CrashPoints.hit("agent.before-prepared-logged")
        case .committed, .committedOnePhase: CrashPoints.hit("agent.before-commit-logged")
        case .aborted: CrashPoints.hit("agent.before-abort-logged")
        case .preCommitted: CrashPoints.hit("agent.before-precommit-logged")
        case .heuristic, .heuristicResolved, .heuristicForgotten, .preAborted, .noVotePromised: break
        }
        let lsn: UInt64
        do {
            // A lazy abort goes past back-pressure: the branch's locks are released whether or
            // not it is written, and without it a later branch on the same keys, prepared and
            // then caught by a crash, left two in-doubt branches on one key that recovery
            // refuses (the agent could not start again).
            let lazyAbort: Bool
            if case .aborted = record, !force { lazyAbort = true } else { lazyAbort = false }
            lsn = try log.append(type: encoded.type, payload: encoded.payload, urgency: Self.urgency(of: record, force: force, submitted: submittedBranches.contains),
                                 pastBackPressure: lazyAbort)
        } catch let full as LogFullError {
            switch record {
            case .prepared(let txid, _, _, _), .committed(let txid), .committedOnePhase(let txid, _),
                 .preCommitted(let txid), .preAborted(let txid), .noVotePromised(let txid):
                feed(.recordRefused(txid, reason: "\(full)"))
            case .heuristic(let txid, _, _, _, _, _, _), .heuristicForgotten(let txid, _, _, _):
                feed(.recordRefused(txid, reason: "\(full)"))
            case .aborted(let txid) where force, .heuristicResolved(let txid, _, _) where force:
                feed(.recordRefused(txid, reason: "\(full)"))
            case .aborted, .heuristicResolved:
                // (A lazy abort is never refused.) Without a heuristic's resolution the branch
                // is asked about again after a restart; the coordinator answers the same.
                break
            }
            return
        } catch {
            onFatal("cannot append to the durable log: \(error)")
            return
        }
        switch record {
        case .preCommitted(let txid), .preAborted(let txid):
            if tracksBacking { backingLSN[txid, default: [:]]["pre"] = lsn }
            pending.append(lsn: lsn, .preRecord(txid))
        case .prepared(let txid, _, _, _):
            if tracksBacking { backingLSN[txid, default: [:]]["prepared"] = lsn }
            pending.append(lsn: lsn, .prepared(txid))
            if environment.testOnlyBreak == .voteBeforeDurable {
                // TEST ONLY (debug builds): vote without waiting for the record to be durable.
                environment.execute { [weak self] in self?.feed(.preparedDurable(txid)) }
            }
        case .committed(let txid), .committedOnePhase(let txid, _):
            if tracksBacking { backingLSN[txid, default: [:]]["commit"] = lsn }
            machine.noteCommitAppended(txid, lsn: lsn)
            pending.append(lsn: lsn, .committed(txid))
        case .heuristic(let txid, _, _, _, _, _, _):
            machine.noteCommitAppended(txid, lsn: lsn)
            pending.append(lsn: lsn, .heuristic(txid))
        case .heuristicForgotten(let txid, _, _, _):
            pending.append(lsn: lsn, .forgotten(txid))
        case .aborted(let txid):
            if force { pending.append(lsn: lsn, .aborted(txid)) }
            CrashPoints.hit("agent.after-abort-logged")
        case .heuristicResolved(let txid, _, _):
            if force { pending.append(lsn: lsn, .resolved(txid)) }
        case .noVotePromised(let txid):
            // Completed as a forced abort is (`abortDurable`): the machine tells them apart.
            pending.append(lsn: lsn, .aborted(txid))
        }
    }

    private func respond(_ id: RequestID, _ reply: Participant.Reply) {
        guard let responder = requests.take(id) else { return }
        let txid = pendingTxid(id)  // one lookup for the whole answer
        // A yes vote, a pre-record acknowledgement or a commit acknowledgement must be backed by
        // a durable record of its kind. (Repeated answers for branches finished earlier are
        // backed by records made durable then.)
        let backing: (message: String, kind: String)?
        switch reply {
        case .vote(.yes): backing = ("vote", "prepared")
        case .preCommitted, .preAborted: backing = ("pre-record ack", "pre")
        case .acknowledged, .outcome(.committed, _, _): backing = ("ack", "commit")
        default: backing = nil
        }
        if tracksBacking, let backing, let lsn = backingLSN[txid]?[backing.kind] {
            environment.checkBacked(backing.message, txid: txid, lsn: lsn, durableLSN: log.durableLSN)
        }
        switch reply {
        case .vote(let vote):
            var reason: String?
            if case .no(let r) = vote { reason = r }
            responder.send(.jsonBytes(200, JSONBody.encode(PrepareResponse(txid: "", vote: vote.wireName, outcome: nil, reason: reason).with(txid: txid))))
            metrics.add(sentVotes)
            if vote == .yes { CrashPoints.hit("agent.after-vote-sent") }
        case .acknowledged:
            responder.send(.jsonBytes(200, JSONBody.encode(PhaseResponse(txid: txid, status: "committed"))))
            metrics.add(sentAcks)
            CrashPoints.hit("agent.after-ack-sent")
        case .aborted:
            responder.send(.jsonBytes(200, JSONBody.encode(PhaseResponse(txid: txid, status: "aborted"))))
        case .outcome(let outcome, let reason, let readOnly):
            // A read-only branch's `committed` says so: it wrote no record (Participant.Reply).
            responder.send(.jsonBytes(200, JSONBody.encode(PrepareResponse(txid: txid, vote: readOnly ? Vote.readOnly.wireName : nil,
                                                                           outcome: outcome.rawValue, reason: reason))))
            metrics.add(outcome == .committed ? sentAcks : sentVotes)
        case .heuristicAborted:
            responder.send(.jsonBytes(200, JSONBody.encode(PhaseResponse(txid: txid, status: "heuristic-aborted"))))
        case .forced(let outcome, let dryRun, let effects):
            // "nothing to do" answers name no keys: the branch held none when asked.
            let held = forceKeys[id]
            responder.send(.jsonBytes(200, JSONBody.encode(ForceResponse(txid: txid, outcome: outcome.rawValue, dryRun: dryRun, effects: effects,
                                                                         keys: held?.keys, keysTotal: held?.total))))
        case .preCommitted:
            responder.send(.jsonBytes(200, JSONBody.encode(PhaseResponse(txid: txid, status: "pre-committed"))))
            metrics.add("cohort_messages_sent_total", labels: "type=\"pre-commit-ack\"")
            CrashPoints.hit("agent.after-precommit-ack-sent")
        case .preAborted:
            responder.send(.jsonBytes(200, JSONBody.encode(PhaseResponse(txid: txid, status: "pre-aborted"))))
        case .state(let state, let recovered):
            responder.send(.jsonBytes(200, JSONBody.encode(ThreePhaseStateResponse(txid: txid, state: state.rawValue, recovered: recovered ? true : nil))))
        case .error(let e):
            responder.send(.requestError(e))
        }
        requestTxids.removeValue(forKey: id)
        if !forceKeys.isEmpty { forceKeys.removeValue(forKey: id) }
    }

    /// The keys each force request's branch held when it arrived, for its answer.
    private var forceKeys: [RequestID: (keys: [BranchKey], total: Int)] = [:]

    /// The first `limit` keys `txid` holds locks on, as the wire names them, and how many it
    /// holds; nil when it holds none. Asked only by the admin endpoints.
    private func lockedKeys(_ txid: String, limit: Int) -> (keys: [BranchKey], total: Int)? {
        let held = resource.heldKeys(txid, limit: limit)
        guard held.total > 0 else { return nil }
        return (held.keys.map { BranchKey(key: $0.key, lock: $0.mode.description, ops: $0.ops.isEmpty ? nil : $0.ops) }, held.total)
    }

    /// The txid each protocol request was about, to echo it in the answer.
    private var requestTxids: [RequestID: String] = [:]
    /// Protocol requests tracked and not yet answered through `respond` (for tests: each one
    /// left behind is a leak).
    var trackedRequestCount: Int { requestTxids.count }
    private func pendingTxid(_ id: RequestID) -> String { requestTxids[id] ?? "" }
    private func track(_ responder: ResponseSink, _ txid: String) -> RequestID {
        let id = requests.add(responder)
        requestTxids[id] = txid
        return id
    }

    private func inquire(_ txid: String, _ url: String) {
        CrashPoints.hit("agent.before-inquiry-send")
        metrics.add("cohort_messages_sent_total", labels: "type=\"inquiry\"")
        let path = "/v1/transactions/\(txid)/outcome?participant=\(name)"
        environment.send(HTTPClientRequest(method: "GET", url: url + path)) { [unowned self] result in
            switch result {
            case .success(let r) where r.status == 200:
                if let answer = try? JSONBody.value(InquiryResponse.self, from: r.body),
                   let outcome = InquiryAnswer(rawValue: answer.outcome) {
                    self.feed(.inquiryAnswered(txid, outcome))
                } else {
                    self.feed(.inquiryFailed(txid, error: "unreadable answer from coordinator"))
                }
            case .success(let r):
                self.feed(.inquiryFailed(txid, error: "coordinator answered HTTP \(r.status)"))
            case .failure(let e):
                self.feed(.inquiryFailed(txid, error: "\(e)"))
            }
        }
        CrashPoints.hit("agent.after-inquiry-send")
    }

    /// 3PC termination: ask a peer for its state; no answer counts as unreachable.
    private func queryPeer(_ txid: String, _ peer: ParticipantRef, _ round: Int) {
        metrics.add("cohort_messages_sent_total", labels: "type=\"state-query\"")
        let body = JSONBody.encode(PhaseRequest(txid: txid))
        environment.send(HTTPClientRequest(method: "POST", url: peer.url + "/v1/3pc/state", body: body, timeoutMs: Limits.terminationRoundMs)) { [weak self] result in
            var state: ThreePhaseState?
            var recovered = false
            if case .success(let r) = result, r.status == 200,
               let answer = try? JSONBody.value(ThreePhaseStateResponse.self, from: r.body) {
                state = ThreePhaseState(rawValue: answer.state)
                recovered = answer.recovered ?? false
            }
            self?.feed(.peerState(txid, round: round, peer: peer.name, state: state, recovered: recovered))
        }
    }

    /// 3PC termination, as backup coordinator: best effort; a peer that misses it runs its own
    /// termination round later and finds the outcome.
    private func sendToPeer(_ txid: String, _ peer: ParticipantRef, _ message: Participant.PeerMessage) {
        let path: String
        let type: String
        switch message {
        case .preCommit: path = "/v1/3pc/precommit"; type = "pre-commit"
        case .preAbort: path = "/v1/3pc/preabort"; type = "pre-abort"
        case .commit: path = "/v1/2pc/commit"; type = "commit"
        case .abort: path = "/v1/2pc/abort"; type = "abort"
        }
        metrics.add("cohort_messages_sent_total", labels: "type=\"\(type)\"")
        let body = JSONBody.encode(PhaseRequest(txid: txid, backup: true))
        environment.send(HTTPClientRequest(method: "POST", url: peer.url + path, body: body)) { _ in }
    }

    /// Tells the coordinator that an operator's outcome here differs from its decision, so it
    /// reports the transaction heuristic-mixed too. A few tries, and again after a restart until
    /// one is acknowledged; the branch's own record and `GET /v1/branches?state=heuristic-mixed`
    /// keep the fact either way. The report names who
    /// forced the branch, why and when, for the coordinator's own record of it.
    private func reportHeuristic(_ txid: String, _ url: String, _ decision: Participant.HeuristicDecision, attempt: Int) {
        metrics.add("cohort_messages_sent_total", labels: "type=\"heuristic\"")
        let body = JSONBody.encode(HeuristicReport(participant: name, outcome: decision.outcome.rawValue, operator: decision.operatorName,
                                                   reason: decision.reason, forcedAtMs: decision.atMs))
        environment.send(HTTPClientRequest(method: "POST", url: "\(url)/v1/transactions/\(txid)/heuristic", body: body)) { [unowned self] result in
            if case .success(let r) = result, r.status == 200 || r.status == 400 {
                // Until then it is sent again at the next start (a few tries here, then the
                // restart: the state machine keeps which reports are unacknowledged).
                self.feed(.heuristicReportDelivered(txid))
                return
            }
            guard attempt < Limits.heuristicReportAttemptsMax else {
                // Out of quick tries: a slow series while it stays unacknowledged, so a
                // coordinator back after an hour still hears, without waiting for a restart.
                _ = self.environment.schedule(afterMs: Limits.heuristicReportRetryIntervalMs) { [weak self] in
                    guard let self, self.machine.unreportedMixed[txid] != nil else { return }
                    self.reportHeuristic(txid, url, decision, attempt: 1)
                }
                return
            }
            _ = self.environment.schedule(afterMs: Limits.retryDelayMsMax) { self.reportHeuristic(txid, url, decision, attempt: attempt + 1) }
        }
    }

    // MARK: - work

    private func work(_ request: HTTPRequest, _ responder: ResponseSink) {
        let body: WorkRequest
        let bodyRequestID: String?
        do {
            (body, bodyRequestID) = try WorkRequest.decodeWithRequestID(fromJSON: request.body)
        } catch {
            return responder.send(.error(400, "invalid work request: \(error)"))
        }
        if refusedMalformed(body.txid, responder) { return }
        let txid = body.txid
        // Idempotency: a work request repeated with the same request_id (a client's retry, a
        // duplicating proxy) is staged once and answered with the first answer.
        var responder = responder
        if let requestID = bodyRequestID {
            if let e = RequestError.invalidRequestID(requestID) { return responder.send(.requestError(e)) }
            switch workReplies[txid]?[requestID] {
            case .done(let response)?:
                return responder.send(response)
            case .pending(let waiting)?:
                workReplies[txid]![requestID] = .pending(waiting + [responder])
                return
            case nil:
                guard (workReplies[txid]?.count ?? 0) < Limits.requestIDsPerBranchMax else {
                    return responder.send(.error(429, "too many distinct request_id values for branch \(txid) (limit \(Limits.requestIDsPerBranchMax))"))
                }
                guard workAnswersKeptBytes < Limits.workAnswersKeptBytesMax else {
                    metrics.add("cohort_requests_rejected_total")
                    return responder.send(.error(503, "this participant keeps \(workAnswersKeptBytes) bytes of work answers for request_id retries "
                        + "(limit \(Limits.workAnswersKeptBytesMax)) until their branches end; nothing was staged: retry later"))
                }
                workReplies[txid, default: [:]][requestID] = .pending([])
                responder = RecordingSink(inner: responder) { [unowned self] response in self.workAnswered(txid, requestID, response) }
            }
        }
        if let refusal = ask({ $0.admitWork(txid) }) {
            if refusal.status == 503 { metrics.add("cohort_requests_rejected_total") }
            if isStale(txid) { metrics.add("cohort_stale_data_refusals_total") }
            return responder.send(.requestError(refusal))
        }
        // A client that names its branches at commit (`"register": false`) gets this branch's
        // name, URL and incarnation back to name it with.
        let naming = body.register ? nil : RegisterRequest(participant: name, url: advertiseURL, incarnation: incarnation, batch: true, session: session)
        if ask({ $0.state(of: txid) }) == .active {
            return stage(txid, body.ops, responder, naming: naming)
        }
        if !body.register && joining[txid] == nil {
            // No registration: the coordinator learns of the branch from the client's commit.
            // Until then only the branch's own expiry (the transaction's timeout plus a margin)
            // ends it if the client never commits or aborts.
            feed(.joined(txid, coordinatorURL: coordinatorURL, timeoutMs: body.timeoutMs ?? Limits.transactionTimeoutMsDefault))
            return stage(txid, body.ops, responder, naming: naming, abandonOnFailure: true)
        }
        let continueWork: (Result<Void, RequestError>) -> Void = { [unowned self] result in
            switch result {
            case .failure(let e):
                responder.send(.requestError(e))
            case .success:
                if let refusal = self.ask({ $0.admitWork(txid) }) { return responder.send(.requestError(refusal)) }
                self.stage(txid, body.ops, responder, naming: naming)
            }
        }
        if joining[txid] != nil {
            joining[txid]!.append(continueWork)
            return
        }
        joining[txid] = [continueWork]
        register(txid)
    }

    private enum WorkReply {
        case pending([ResponseSink])
        case done(HTTPResponse)
    }

    /// Answers to work requests that carried a request_id, per branch, until it finishes.
    private var workReplies: [String: [String: WorkReply]] = [:]
    /// The bodies of the `.done` answers in `workReplies` (`Limits.workAnswersKeptBytesMax`).
    private(set) var workAnswersKeptBytes = 0

    /// Lets go of a finished branch's kept work answers.
    private func dropWorkReplies(_ txid: String) {
        guard let replies = workReplies.removeValue(forKey: txid) else { return }
        for case .done(let response) in replies.values { workAnswersKeptBytes -= response.body.count }
    }

    private func workAnswered(_ txid: String, _ requestID: String, _ response: HTTPResponse) {
        guard case .pending(let waiting)? = workReplies[txid]?[requestID] else { return }
        if response.status == 200 {
            workReplies[txid]![requestID] = .done(response)
            workAnswersKeptBytes += response.body.count
        } else {
            // Not staged: a retry may try again.
            workReplies[txid]!.removeValue(forKey: requestID)
            if workReplies[txid]!.isEmpty { workReplies.removeValue(forKey: txid) }
        }
        for sink in waiting { sink.send(response) }
    }

    private func register(_ txid: String) {
        CrashPoints.hit("agent.before-register-send")
        metrics.add(sentRegistrations)
        let coordinator = coordinatorURL
        let body = JSONBody.encode(RegisterRequest(participant: name, url: advertiseURL, incarnation: incarnation, batch: true, session: session))
        registrations.send(baseURL: coordinator, path: "/v1/transactions/\(txid)/branches", body: body, batchable: true,
                           timeoutMs: Limits.registrationTimeoutMs) { [unowned self] result in
            let waiters = self.joining.removeValue(forKey: txid) ?? []
            let outcome: Result<Void, RequestError>
            switch result {
            case .success(let r) where r.status == 200:
                let answer = try? JSONBody.value(RegisterResponse.self, from: r.body)
                // The coordinator answered: branches in doubt waiting on it since an inquiry
                // failed ask again now. (`joined` alone does not say so: a branch sent with
                // `"register": false` or by a submitted prepare joins without asking it.)
                defer { self.feed(.registrationAnswered(coordinator, status: r.status, body: r.body)) }
                if let acknowledged = answer?.lastAcknowledgedCommit,
                   let refusal = self.ask({ $0.checkLastAcknowledgedCommit(acknowledged, for: txid) }) {
                    // Not joined: the branch the coordinator registered gets this participant's
                    // no vote at its prepare, and nothing is staged.
                    outcome = .failure(refusal.status == 503 ? refusal : RequestError(503, "the coordinator's registration answer: \(refusal.message)"))
                    self.metrics.add("cohort_stale_data_refusals_total")
                    break
                }
                self.feed(.joined(txid, coordinatorURL: coordinator, timeoutMs: answer?.timeoutMs ?? Limits.transactionTimeoutMsDefault))
                outcome = .success(())
            case .success(let r):
                // A refusal is an answer too (a 404 or 410 from a coordinator back from a
                // restart, a 409): the machine decides which show the coordinator itself up.
                self.feed(.registrationAnswered(coordinator, status: r.status, body: r.body))
                let text = (try? JSONBody.value(ErrorBody.self, from: r.body).error) ?? "HTTP \(r.status)"
                switch r.status {
                case 502, 503, 504:
                    // Load shed by the coordinator, or a proxy in front of it that could not
                    // reach it (502) or gave up waiting (504): the branch may work again
                    // later, so the work's caller hears "retry" (503), not a refusal.
                    outcome = .failure(RequestError(503, "coordinator did not take the branch: \(text)"))
                case 404:
                    outcome = .failure(RequestError(404, "coordinator refused the branch: \(text)"))
                default:
                    outcome = .failure(RequestError(409, "coordinator refused the branch: \(text)"))
                }
            case .failure(let e):
                outcome = .failure(RequestError(503, "coordinator \(coordinator) unreachable: \(e)"))
            }
            for waiter in waiters { waiter(outcome) }
        }
        CrashPoints.hit("agent.after-register-send")
    }

    /// `abandonOnFailure`: this call made the (unregistered) branch, so if it fails nobody
    /// holds the branch to name, and it ends at once instead of keeping its locks until expiry.
    private func stage(_ txid: String, _ ops: [KVOp], _ responder: ResponseSink, naming: RegisterRequest?, abandonOnFailure: Bool = false) {
        stagingInFlight[txid, default: 0] += 1
        resource.stage(txid: txid, ops: ops) { [unowned self] result in
            if let n = self.stagingInFlight[txid], n > 1 { self.stagingInFlight[txid] = n - 1 } else { self.stagingInFlight.removeValue(forKey: txid) }
            switch result {
            case .success(let staged):
                if self.environment.testOnlyBreak == .readLocksReleasedEarly, ops.allSatisfy({ !$0.isWrite }) {
                    // TEST ONLY: a branch that only read drops its shared locks (and its staged
                    // reads) at once; at prepare it still votes read-only.
                    self.resource.finishReadOnly(txid: txid)
                }
                responder.send(.jsonBytes(200, JSONBody.encode(WorkResponse(txid: txid, staged: staged.staged, values: staged.values.isEmpty ? nil : staged.values,
                                                                            branch: naming))))
            case .failure(let error):
                responder.send(.error(Self.status(for: error), "\(error)"))
                if abandonOnFailure { self.feed(.abandoned(txid)) }
            }
        }
    }

    static func status(for error: KVError) -> Int {
        switch error {
        case .lockTimeout, .lockRefused, .branchFinished: return 409
        case .invalid: return 400
        case .storeFailed: return 500
        case .overloaded: return 503
        }
    }

    // MARK: - HTTP routing

    public func handle(_ request: HTTPRequest, _ responder: ResponseSink) {
        let parts = request.pathComponents
        switch (request.method, parts.count) {
        case ("GET", 1) where parts[0] == "healthz":
            // Still 200 and "ok" (the contract's answer; the process serves inquiries, reads and
            // the commits its data holds): `problem` tells an operator it refuses new work from
            // a coordinator.
            let stale = machine.staleForCoordinators.values.sorted { $0.coordinatorID < $1.coordinatorID }
            let problem = stale.isEmpty ? nil : stale.map { machine.staleRefusal($0).message }.joined(separator: "; ")
            responder.send(.jsonBytes(200, JSONBody.encode(HealthResponse(status: "ok", participant: name,
                                                                          url: advertiseURL, problem: problem))))
        case ("GET", 1) where parts[0] == "metrics":
            responder.send(.text(200, metrics.render(), contentType: "text/plain; version=0.0.4"))
        case ("POST", 2) where parts == ["v1", "work"]:
            work(request, responder)
        case ("GET", 3) where parts[0] == "v1" && parts[1] == "kv":
            // A key no write could have made is a bad request, not an absent key.
            guard parts[2].utf8.count <= Limits.keyBytesMax else {
                return responder.send(.error(400, "a key is at most \(Limits.keyBytesMax) bytes; this one is \(parts[2].utf8.count)"))
            }
            do {
                guard let value = try resource.get(parts[2]) else { return responder.send(.error(404, "no key \(parts[2].prefix(80))")) }
                responder.send(.jsonBytes(200, JSONBody.encode(KVItem(key: parts[2], value: value))))
            } catch {
                responder.send(.error(500, "store read failed: \(error)"))
            }
        case ("GET", 2) where parts == ["v1", "kv"]:
            let limit = request.query["limit"].map { Int($0) ?? 0 } ?? Limits.scanItemsMax
            guard limit > 0, limit <= Limits.scanItemsMax else { return responder.send(.error(400, "limit must be 1-\(Limits.scanItemsMax)")) }
            do {
                // Bounded in bytes too, so the answer fits a client's response limit
                // (`Limits.httpResponseBytesMax`); `next_after` continues a cut-off scan.
                let page = try resource.scanPage(prefix: request.query["prefix"] ?? "", after: request.query["after"],
                                                 limit: limit, bytesMax: Limits.scanBytesMax)
                let items = page.items.map { KVItem(key: $0.key, value: $0.value) }
                responder.send(.jsonBytes(200, JSONBody.encode(KVItemList(items: items, next_after: page.more ? items.last?.key : nil))))
            } catch {
                responder.send(.error(500, "store read failed: \(error)"))
            }
        case ("GET", 2) where parts == ["v1", "branches"]:
            branches(request, responder)
        case ("GET", 3) where parts[0] == "v1" && parts[1] == "branches":
            if refusedMalformed(parts[2], responder) { return }
            branchDetail(parts[2], responder)
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "branches" && parts[3] == "force":
            if refusedMalformed(parts[2], responder) { return }
            switch JSONBody.decode(ForceBody.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let f):
                guard let outcome = Outcome(rawValue: f.outcome) else { return responder.send(.error(400, "outcome must be committed or aborted")) }
                let id = track(responder, parts[2])
                // Taken now: once the force is durable the locks are gone, and with them the
                // answer to what it released.
                // The force's record keeps their names (up to `branchKeysShownMax`): the
                // branch's view names them after the locks, and a restart, are gone.
                let held = lockedKeys(parts[2], limit: Limits.branchKeysShownMax)
                if let held { forceKeys[id] = (Array(held.keys.prefix(Limits.branchKeysListedMax)), held.total) }
                feed(.force(id, txid: parts[2], outcome: outcome, reason: f.reason,
                            operatorName: f.operator ?? "unknown", dryRun: f.dryRun ?? false, atMs: environment.wallMs,
                            releasedKeys: held?.keys.map(\.key) ?? [], releasedKeysTotal: held?.total ?? 0))
            }
        case ("POST", 4) where parts[0] == "v1" && parts[1] == "branches" && parts[3] == "forget":
            if refusedMalformed(parts[2], responder) { return }
            switch JSONBody.decode(ForgetBody.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let f):
                feed(.forget(track(responder, parts[2]), txid: parts[2], reason: f.reason,
                             operatorName: f.operator ?? "unknown", dryRun: f.dryRun ?? false, atMs: environment.wallMs))
            }
        case ("POST", 3) where parts[0] == "v1" && parts[1] == "2pc":
            protocolMessage(parts[2], request, responder)
        case ("POST", 3) where parts[0] == "v1" && parts[1] == "3pc":
            // Before anything is tracked: a tracked request answered without `respond` kept
            // its txid entry for ever (one per request to an unknown 3PC path).
            guard ["precommit", "preabort", "state"].contains(parts[2]) else {
                return responder.send(.error(404, "no 3pc message \(parts[2].prefix(40))"))
            }
            switch JSONBody.decode(PhaseRequest.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let p):
                if refusedMalformed(p.txid, responder) { return }
                if let refusal = incarnationMismatch(p.incarnation) { return responder.send(.requestError(refusal)) }
                let id = track(responder, p.txid)
                switch parts[2] {
                case "precommit": feed(.preCommit(id, txid: p.txid, fromBackup: p.backup == true))
                case "preabort": feed(.preAbort(id, txid: p.txid))
                default: feed(.stateQuery(id, txid: p.txid))
                }
            }
        case ("POST", 2) where parts == ["v1", "batch"]:
            serveBatch(request, responder, allowedPrefixes: ["/v1/2pc/", "/v1/3pc/"]) { self.handle($0, $1) }
        default:
            responder.send(.error(404, "no route for \(request.method) \(request.path)"))
        }
    }

    private func protocolMessage(_ kind: String, _ request: HTTPRequest, _ responder: ResponseSink) {
        switch kind {
        case "prepare":
            switch JSONBody.decode(PrepareRequest.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let p):
                if refusedMalformed(p.txid, responder) { return }
                if let refusal = incarnationMismatch(p.incarnation) { return responder.send(.requestError(refusal)) }
                if p.protocol == "3pc", let refusal = Participant.ThreePhaseInfo.refusal(peers: p.participants ?? []) { return responder.send(.error(400, refusal)) }
                if let refusal = staleDataRefusal(p) {
                    if refusal.status != 503 { return responder.send(.requestError(refusal)) }
                    return refusePrepare(p, responder, refusal.message)
                }
                if let ops = p.ops { return prepareSubmitted(p, ops, responder) }
                prepare(p, responder)
            }
        case "commit", "abort":
            switch JSONBody.decode(PhaseRequest.self, from: request.body) {
            case .failure(let e): responder.send(.requestError(e))
            case .success(let p):
                if refusedMalformed(p.txid, responder) { return }
                if let refusal = incarnationMismatch(p.incarnation) { return responder.send(.requestError(refusal)) }
                let id = track(responder, p.txid)
                if p.backup == true {
                    feed(.backupDecision(id, txid: p.txid, outcome: kind == "commit" ? .committed : .aborted))
                } else {
                    feed(kind == "commit" ? .commit(id, txid: p.txid) : .abort(id, txid: p.txid))
                }
            }
        default:
            responder.send(.error(404, "no protocol message \(kind)"))
        }
    }

    /// Whether this participant refuses new work from the coordinator of `txid` because its data
    /// is older than what it acknowledged there (`Participant.staleForCoordinators`).
    private func isStale(_ txid: String) -> Bool {
        guard !machine.staleForCoordinators.isEmpty, let t = TxID(txid) else { return false }
        return machine.staleForCoordinators[t.coordinatorID] != nil
    }

    /// The refusal of a prepare whose coordinator says this participant acknowledged a commit
    /// its data neither holds nor let go (or already said so): 503, or 400 for a malformed
    /// `last_acknowledged_commit`.
    private func staleDataRefusal(_ p: PrepareRequest) -> RequestError? {
        // A figure for another incarnation is another directory's (this one replaced it): not ours to check.
        if let acknowledged = p.lastAcknowledgedCommit, p.lastAcknowledgedIncarnation == nil || p.lastAcknowledgedIncarnation == incarnation {
            return ask { $0.checkLastAcknowledgedCommit(acknowledged, for: p.txid) }
        }
        guard isStale(p.txid), let t = TxID(p.txid), let acknowledged = machine.staleForCoordinators[t.coordinatorID] else { return nil }
        return machine.staleRefusal(acknowledged)
    }

    /// Answers a prepare from a coordinator whose new work this participant refuses: a staged
    /// branch votes no (its work and locks released as for any no vote), one never staged here
    /// is answered no (aborted for a one-phase commit) with the reason, and nothing is staged.
    /// A branch already prepared or finished answers from its state, as to any repeated prepare:
    /// its records are in this participant's data.
    private func refusePrepare(_ p: PrepareRequest, _ responder: ResponseSink, _ reason: String) {
        metrics.add("cohort_stale_data_refusals_total")
        if machine.branches[p.txid] == nil && machine.finishedOutcomes[p.txid] == nil && submittedStaging[p.txid] == nil {
            let onePhase = p.onePhase ?? false
            responder.send(.jsonBytes(200, JSONBody.encode(PrepareResponse(txid: p.txid, vote: onePhase ? nil : "no",
                                                                           outcome: onePhase ? "aborted" : nil, reason: reason))))
            return metrics.add(sentVotes)
        }
        if submittedStaging[p.txid] != nil {
            // A repeat of a submitted prepare still staging: answered with the first one.
            submittedStaging[p.txid]!.append(responder)
            return
        }
        prepare(p, responder, failedWork: reason)
    }

    /// Feeds a prepare to the state machine, with the resource's vote if the branch is active.
    private func prepare(_ p: PrepareRequest, _ responder: ResponseSink, failedWork: String? = nil) {
        let vote: ResourceVote
        if ask({ $0.state(of: p.txid) }) == .active {
            if let failedWork {
                vote = .no(reason: failedWork)
            } else {
                vote = (stagingInFlight[p.txid] ?? 0) > 0 ? .no(reason: "work still in progress on this branch") : resource.vote(txid: p.txid)
            }
        } else {
            vote = .readOnly // not consulted: the state machine answers from the branch's state
        }
        var threePhase: Participant.ThreePhaseInfo?
        if p.protocol == "3pc", let peers = p.participants {
            threePhase = Participant.ThreePhaseInfo(termination: Termination(rawValue: p.termination ?? "classic") ?? .classic, peers: peers)
        }
        feed(.prepare(track(responder, p.txid), txid: p.txid, onePhase: p.onePhase ?? false, vote: vote, threePhase: threePhase))
    }

    /// Prepares before the arrival of any work registered this branch (POST
    /// /v1/transactions/submit): the coordinator has the branch already, so the agent joins
    /// without registering, stages the ops, and votes. A repeated prepare (a retry, a
    /// duplicating network) waits for the first one's staging and is answered from the
    /// branch's state; a prepare for a branch this agent finished is answered as before and
    /// its ops are not staged again.
    private func prepareSubmitted(_ p: PrepareRequest, _ opsNode: JSONNode, _ responder: ResponseSink) {
        let txid = p.txid
        if let named = p.participant, named != name {
            // Nothing staged for it: a no vote aborts the transaction, and any branch of it this
            // participant staged under its own name hears that abort.
            return voteNo(txid, responder, reason: "this is participant \(name), not \(named): the branch's url reaches another participant")
        }
        if submittedStaging[txid] != nil {
            submittedStaging[txid]!.append(responder)
            return
        }
        guard ask({ $0.state(of: txid) }) == nil, machine.finishedOutcomes[txid] == nil else { return prepare(p, responder) }
        let ops: [KVOp]
        do {
            ops = try KVOp.decodeOps(fromNode: opsNode)
        } catch {
            return voteNo(txid, responder, reason: "invalid ops: \(error)")
        }
        if let refusal = ask({ $0.admitWork(txid) }) {
            if refusal.status == 503 { metrics.add("cohort_requests_rejected_total") }
            return voteNo(txid, responder, reason: refusal.message)
        }
        feed(.joined(txid, coordinatorURL: coordinatorURL, timeoutMs: p.timeoutMs ?? Limits.transactionTimeoutMsDefault))
        submittedStaging[txid] = []
        submittedBranches.insert(txid)
        stagingInFlight[txid, default: 0] += 1
        // A holder whose commit is being logged waits for nothing: wait for it, whatever its
        // age (a client's next transaction often reaches a key before the last one's commit).
        resource.stage(txid: txid, ops: ops, lockWaitMs: Limits.submittedLockWaitMs, waitDie: true,
                       waitsForNothing: { [unowned self] holder in self.ask({ $0.state(of: holder) }) == .committing }) { [unowned self] result in
            if let n = self.stagingInFlight[txid], n > 1 { self.stagingInFlight[txid] = n - 1 } else { self.stagingInFlight.removeValue(forKey: txid) }
            let repeats = self.submittedStaging.removeValue(forKey: txid) ?? []
            switch result {
            case .success: self.prepare(p, responder)
            case .failure(let error): self.prepare(p, responder, failedWork: "\(error)")
            }
            for sink in repeats { self.prepare(p, sink) }
        }
    }

    /// Every txid a participant keeps came from a coordinator, which makes them all in one
    /// form (`TxID`): anything else is a caller's mistake, answered 400 rather than remembered
    /// (a commit or abort for an unknown branch is otherwise acknowledged and kept among the
    /// finished branches, so junk ids would crowd out real ones there).
    private func refusedMalformed(_ txid: String, _ responder: ResponseSink) -> Bool {
        guard TxID(txid) == nil else { return false }
        responder.send(.error(400, "malformed txid \"\(txid.prefix(80))\""))
        return true
    }

    /// A no vote for a branch that never opened here (its work could not be taken).
    private func voteNo(_ txid: String, _ responder: ResponseSink, reason: String) {
        responder.send(.jsonBytes(200, JSONBody.encode(PrepareResponse(txid: txid, vote: "no", outcome: nil, reason: reason))))
        metrics.add(sentVotes)
    }

    /// A message for another incarnation was meant for this participant's lost data directory:
    /// acknowledging it would claim a commit this store does not hold.
    private func incarnationMismatch(_ claimed: String?) -> RequestError? {
        guard let claimed, claimed != incarnation else { return nil }
        return RequestError(409, "participant \(name) has incarnation \(incarnation), not \(claimed): its data directory was replaced; the branch cannot be honoured here")
    }

    private func branchDetail(_ txid: String, _ responder: ResponseSink) {
        func decision(_ h: Participant.HeuristicDecision) -> BranchDetail.Decision {
            BranchDetail.Decision(outcome: h.outcome.rawValue, reason: h.reason, operator: h.operatorName, at: TimeFormat.iso8601(ms: h.atMs),
                                  releasedKeys: h.releasedKeysTotal > 0 ? h.releasedKeys : nil, releasedKeysTotal: h.releasedKeysTotal > 0 ? h.releasedKeysTotal : nil)
        }
        if let b = machine.branches[txid] {
            let held = lockedKeys(txid, limit: Limits.branchKeysShownMax)
            return responder.send(.jsonBytes(200, JSONBody.encode(BranchDetail(
                txid: txid, state: b.state.rawValue, coordinator: b.coordinatorURL,
                // A decided branch's writes are applied or released, and its write set gone.
                writeSetBytes: [.heuristicCommitted, .heuristicAborted].contains(b.state) ? nil : b.writeSet.count,
                inquiries: b.inquiries, lastInquiryError: b.lastInquiryError, heuristic: b.heuristic.map(decision),
                keys: held?.keys, keysTotal: held?.total))))
        }
        if let h = machine.heuristicMixed[txid] {
            return responder.send(.jsonBytes(200, JSONBody.encode(BranchDetail(
                txid: txid, state: "heuristic-mixed", coordinator: nil, writeSetBytes: nil, inquiries: nil, lastInquiryError: nil, heuristic: decision(h)))))
        }
        if let f = machine.forgottenHeuristics[txid] {
            // Forgotten: the forced outcome stands, and who forced it is still worth a look (the
            // branch showed as a plain committed or aborted one; a review).
            return responder.send(.jsonBytes(200, JSONBody.encode(BranchDetail(
                txid: txid, state: f.decision.outcome.rawValue, coordinator: f.coordinatorURL, writeSetBytes: nil, inquiries: nil, lastInquiryError: nil,
                heuristic: decision(f.decision), forgotten: true))))
        }
        if let state = machine.state(of: txid) {
            return responder.send(.jsonBytes(200, JSONBody.encode(BranchDetail(
                txid: txid, state: state.rawValue, coordinator: nil, writeSetBytes: nil, inquiries: nil, lastInquiryError: nil, heuristic: nil))))
        }
        responder.send(.error(404, "no branch \(txid.prefix(80)) at participant \(name)"))
    }

    private func branches(_ request: HTTPRequest, _ responder: ResponseSink) {
        let filter = request.query["state"]
        let states = ["active", "preparing", "prepared", "committing", "forcing", "heuristic-committed", "heuristic-aborted", "forgetting", "heuristic-mixed", "in-doubt"]
        if let filter, !states.contains(filter) {
            return responder.send(.error(400, "state must be one of \(states.joined(separator: ", "))"))
        }
        let key = request.query["key"]
        if let key, key.isEmpty || key.utf8.count > Limits.keyBytesMax {
            return responder.send(.error(400, "key must be 1-\(Limits.keyBytesMax) bytes"))
        }
        // A heuristic-mixed branch is finished here and holds no lock.
        if filter == "heuristic-mixed" {
            let mixed = key != nil ? [] : machine.heuristicMixed.keys.sorted().map { BranchSummary(txid: $0, state: "heuristic-mixed", coordinator: nil) }
            return responder.send(.jsonBytes(200, JSONBody.encode(BranchList(branches: mixed, key: key, waiters: key.map { resource.lockers(of: $0).waiters }))))
        }
        func selected(_ state: Participant.BranchState) -> Bool {
            switch filter {
            case nil: return true
            case "in-doubt"?: return state == .prepared || state == .committing
            case let s?: return state.rawValue == s
            }
        }
        var listed: [(txid: String, state: String, coordinator: String?)]
        var waiters: [String]?
        if let key {
            // Which transaction holds key K: the lock table knows, without a walk of every branch.
            let lockers = resource.lockers(of: key)
            waiters = lockers.waiters
            listed = lockers.holders.compactMap { h in
                guard let b = machine.branches[h.owner] else { return filter == nil ? (h.owner, "active", nil) : nil }
                return selected(b.state) ? (h.owner, b.state.rawValue, b.coordinatorURL) : nil
            }
        } else {
            listed = machine.branches.values.filter { selected($0.state) }.map { ($0.txid, $0.state.rawValue, $0.coordinatorURL) }
            // The whole list shows heuristic-mixed branches too: they are finished here but still
            // need repair by hand, and a game-day probe's `txctl agent URL list` said "no branches"
            // while three were waiting for it.
            if filter == nil {
                listed += machine.heuristicMixed.keys.filter { machine.branches[$0] == nil }.map { ($0, "heuristic-mixed", nil) }
            }
        }
        listed.sort { $0.txid < $1.txid }
        // Key names are bounded per branch and per answer (`Limits.branchKeysListedBytesMax`):
        // past the budget a branch gives only its count.
        var keyBytes = 0
        var omitted = 0
        let summaries = listed.map { b -> BranchSummary in
            guard let held = lockedKeys(b.txid, limit: Limits.branchKeysListedMax) else {
                return BranchSummary(txid: b.txid, state: b.state, coordinator: b.coordinator)
            }
            let bytes = held.keys.reduce(0) { $0 + $1.key.utf8.count + 48 }
            guard keyBytes + bytes <= Limits.branchKeysListedBytesMax else {
                omitted += 1
                return BranchSummary(txid: b.txid, state: b.state, coordinator: b.coordinator, keysTotal: held.total)
            }
            keyBytes += bytes
            return BranchSummary(txid: b.txid, state: b.state, coordinator: b.coordinator, keys: held.keys, keysTotal: held.total)
        }
        responder.send(.jsonBytes(200, JSONBody.encode(BranchList(branches: summaries, key: key, waiters: waiters, keysOmitted: omitted > 0 ? omitted : nil))))
    }
}

public struct WorkResponse: Codable, WireEncodable {
    public let txid: String
    public let staged: Int
    public let values: [String: KVValue]?
    /// For work sent with `"register": false`: the branch as the client names it at commit.
    public let branch: RegisterRequest?

    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("txid", txid)
        w.field("staged", staged)
        if let values {
            w.key("values")
            w.beginObject()
            for (k, v) in values.sorted(by: { $0.key < $1.key }) {
                w.key(k)
                switch v {
                case .int(let n): w.value(n)
                case .string(let s): w.value(s)
                }
            }
            w.endObject()
        }
        if let branch {
            w.key("branch")
            branch.writeWire(&w)
        }
        w.endObject()
    }
}

public struct KVItem: Codable {
    public let key: String
    public let value: KVValue
}

public struct KVItemList: Codable {
    public let items: [KVItem]
    /// Set when the scan stopped on its limit with keys left: pass it as `after` for the rest.
    public var next_after: String? = nil
}

extension PrepareResponse {
    func with(txid: String) -> PrepareResponse {
        PrepareResponse(txid: txid, vote: vote, outcome: outcome, reason: reason)
    }
}

/// Passes a response on and tells the node what it was.
final class RecordingSink: ResponseSink {
    private let inner: ResponseSink
    private let record: (HTTPResponse) -> Void
    init(inner: ResponseSink, record: @escaping (HTTPResponse) -> Void) {
        self.inner = inner
        self.record = record
    }
    func send(_ response: HTTPResponse) {
        record(response)
        inner.send(response)
    }
}

/// The store has applied less of the log than the log's checkpoint recorded as applied and
/// durable when it dropped the records before it: those commits are in neither. The store was
/// replaced by an older copy, or lost its data; starting would serve a state that misses
/// committed transactions.
public struct StoreBehindLogError: Error, CustomStringConvertible {
    public let storeAppliedLSN: UInt64
    public let checkpointLSN: UInt64
    public let requiredLSN: UInt64
    public var description: String {
        "the store has applied the log up to LSN \(storeAppliedLSN), but the log's checkpoint at LSN \(checkpointLSN) recorded it durable up to LSN \(requiredLSN), and the log no longer holds the commits before that checkpoint"
    }
}
