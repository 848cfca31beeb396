/// The two-phase commit coordinator (presumed abort) as a pure state machine.
///
/// It never touches disk, sockets, clocks or randomness: the runtime feeds it events (requests,
/// answers from participants, durable log records, timers) with the current wall-clock time, and
/// carries out the actions it returns. The same value runs in `cohortd` and in the simulation.
///
/// Presumed abort, as in R* (Mohan, Lindsay, Obermarck 1986):
/// - nothing is logged before the decision; a commit decision is forced before any participant
///   hears it; an end record (unforced) follows once every update branch acknowledged;
/// - an abort forces nothing and is not acknowledged; a transaction the coordinator has no
///   record of is reported aborted to participants that ask;
/// - read-only voters get no second-phase message.
public struct Coordinator {
    public struct Config: Sendable {
        public var coordinatorID: String
        /// Must be larger than every epoch this coordinator used before; the runtime derives it
        /// from the wall clock at start and `recover` raises it past anything in the log.
        public var epoch: UInt64
        public var openTransactionsMax = Limits.openTransactionsMax
        /// Committed transactions still waiting for participants' acknowledgements (counted
        /// apart from `openTransactionsMax`, which bounds the undecided ones).
        public var committingTransactionsMax = Limits.committingTransactionsMax
        public var branchesPerTransactionMax = Limits.branchesPerTransactionMax
        public var timeoutMsDefault = Limits.transactionTimeoutMsDefault
        public var timeoutMsMax = Limits.transactionTimeoutMsMax
        public var retryDelayMsMin = Limits.retryDelayMsMin
        public var retryDelayMsMax = Limits.retryDelayMsMax
        public var finishedTransactionsKept = Limits.finishedTransactionsKept
        /// What those finished transactions may hold in memory in all (`Transaction.keptBytes`):
        /// past it the oldest go even below `finishedTransactionsKept`.
        public var finishedKeptBytesMax = Limits.finishedTransactionsKeptBytesMax
        /// request_ids of committed submissions remembered past `finishedTransactionsKept`.
        public var committedSubmissionsKept = Limits.committedSubmissionsKept
        /// Outcomes of transactions past `finishedTransactionsKept` kept (`OutcomeLedger`).
        public var forgottenOutcomesKept = Limits.forgottenOutcomesKept
        /// Commit a transaction with a single branch in one phase (no prepare round, no
        /// coordinator log record): the participant's own commit record is the decision.
        public var onePhaseCommit = true
        public var retryBudgetAttempts = Limits.retryBudgetAttempts
        public var retryBudgetMs = Limits.retryBudgetMs
        public var parkedRetryDelayMs = Limits.parkedRetryDelayMs
        /// 3PC: how long to wait for pre-commit acknowledgements before acting on the
        /// termination rule (classic: commit; quorum: commit only with a quorum of them).
        public var preCommitTimeoutMs = Limits.preCommitTimeoutMs
        /// 3PC: how often a coordinator that lost authority asks participants for the outcome.
        public var learnIntervalMs = Limits.learnIntervalMs
        /// Bytes of who-forced-it audits a checkpoint holds (a parameter so tests can reach it).
        public var heuristicForcesInSnapshotBytesMax = Limits.heuristicForcesInSnapshotBytesMax
        /// Bytes of forced transactions' audit entries kept, in memory and in checkpoints
        /// (`Limits.operatorAuditsKeptBytesMax`; a parameter so tests can reach it).
        public var operatorAuditsKeptBytesMax = Limits.operatorAuditsKeptBytesMax
        /// Submitted work held until its branches vote (`Limits.coordinatorSubmittedWorkBytesMax`;
        /// a parameter so tests can reach it).
        public var submittedWorkBytesMax = Limits.coordinatorSubmittedWorkBytesMax
        public var seed: UInt64 = 1

        public init(coordinatorID: String, epoch: UInt64) {
            self.coordinatorID = coordinatorID
            self.epoch = epoch
        }
    }

    public enum Event {
        case begin(RequestID, timeoutMs: Int64?, protocol: CommitProtocol = .twoPhase)
        /// A whole transaction in one request: begin, every branch's work, and commit. Each
        /// branch's work travels with its prepare, so no participant registers.
        /// `requestID` (the client's idempotency key): a repeated submission with it gets the first
        /// one's outcome instead of running the work again.
        case submit(RequestID, timeoutMs: Int64?, protocol: CommitProtocol, branches: [SubmittedBranch], requestID: String? = nil)
        case register(RequestID, txid: String, participant: ParticipantRef)
        /// `named`: branches the client names itself (work sent with `"register": false`);
        /// they join as a registration would, before the commit or abort starts.
        case commit(RequestID, txid: String, named: [ParticipantRef] = [])
        case abort(RequestID, txid: String, named: [ParticipantRef] = [])
        /// A participant answered a prepare.
        case voted(TxID, participant: String, vote: Vote)
        /// A prepare could not be delivered or answered (transport error or timeout).
        case prepareFailed(TxID, participant: String, error: String)
        /// A participant acknowledged a commit (or answered a one-phase commit).
        case acknowledged(TxID, participant: String)
        /// `readOnly`: the branch only read, so its `committed` wrote no record there (the
        /// agent's answer says `"vote": "read-only"`): not an acknowledged commit.
        case onePhaseAnswered(TxID, participant: String, outcome: Outcome, reason: String?, readOnly: Bool = false)
        /// A second-phase message (or one-phase commit) failed to get an answer.
        case deliveryFailed(TxID, participant: String, error: String)
        /// The forced commit record of this transaction is durable.
        case decisionDurable(TxID)
        /// The commit record could not even be appended (the log refused it: back-pressure).
        /// Nothing was written, so the transaction is still undecided and can abort.
        case decisionRefused(TxID, reason: String)
        case timerFired(Timer)
        /// A participant asks for the outcome of a transaction it voted yes on (`participant`:
        /// the name it gave, if any; an operator's tool asks without one).
        case inquiry(RequestID, txid: String, participant: String? = nil)
        /// An operator forces an outcome (`txctl commit|abort --force`).
        case force(RequestID, txid: String, ForceRequest)
        /// The audit record of a forced decision is durable: carry the decision out.
        case auditDurable(TxID)
        /// An operator asks to retry the pending phase now (`txctl retry`).
        case retryNow(RequestID, txid: String)
        /// A participant reports that an operator forced its branch's outcome (heuristic);
        /// no request id when the report came inside another answer (a commit's).
        /// `forcedBy`: who forced it, why and when, as the participant says (nil from agents
        /// before session 26, and inside a commit's answer).
        case heuristicReported(RequestID?, txid: String, participant: String, outcome: Outcome, forcedBy: HeuristicForce? = nil)
        /// The heuristic report's record is durable.
        case heuristicDurable(TxID, participant: String)
        /// The log refused (back-pressure) an operator's audit record: the force is answered
        /// 503 and changes nothing; the operator sends it again.
        case auditRefused(TxID, reason: String)
        /// The log refused (back-pressure) a heuristic report's record: the report is answered
        /// 503 and changes nothing; the participant reports again (it retries until answered,
        /// and a commit answered heuristic-aborted is re-sent and answered so again).
        case heuristicRefused(TxID, participant: String, reason: String)
        /// 3PC: the forced pre-commit record is durable.
        case preCommitDurable(TxID)
        /// 3PC: a participant acknowledged the pre-commit (its record is durable).
        case preCommitAcknowledged(TxID, participant: String)
        /// 3PC: a participant refused the pre-commit: it joined its peers' termination protocol
        /// (or already has an outcome). The coordinator no longer decides; it learns.
        case preCommitRefused(TxID, participant: String, reason: String)
        /// 3PC: a participant's state, asked while learning the outcome (nil: no answer).
        case stateAnswered(TxID, participant: String, state: ThreePhaseState?)
        /// A one-phase window record is durable: one-phase commits inside it may go out.
        case onePhaseWindowDurable(OnePhaseWindow)
        /// The log refused a one-phase window record (full): nothing was written.
        case onePhaseWindowRefused(OnePhaseWindow)
        /// 3PC: the record of an abort learned from the participants is durable: the client
        /// may hear it now.
        case abortLearnedDurable(TxID)
        /// The log refused (back-pressure) that record: nothing was written; the coordinator
        /// asks the participants again.
        case abortLearnedRefused(TxID, reason: String)
    }

    public struct SubmittedBranch: Equatable, Sendable {
        public let participant: ParticipantRef
        /// The participant's operations (for the agent, its `/v1/work` ops array).
        public let work: JSONNode
        public init(participant: ParticipantRef, work: JSONNode) {
            self.participant = participant
            self.work = work
        }
    }

    public struct ForceRequest: Equatable, Sendable {
        public let outcome: Outcome
        public let reason: String
        public let operatorName: String
        public let dryRun: Bool
        public init(outcome: Outcome, reason: String, operatorName: String, dryRun: Bool) {
            self.outcome = outcome
            self.reason = reason
            self.operatorName = operatorName
            self.dryRun = dryRun
        }

        /// The reason without surrounding spaces, or why the request is refused (400): a
        /// forced decision needs a reason and an operator name, each within its limit. Both
        /// coordinators (2PC/3PC and TCC) check it the same way.
        public func checkedReason() -> Result<String, RequestError> {
            let trimmed = String(reason.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
            guard !trimmed.isEmpty, trimmed.utf8.count <= Limits.reasonBytesMax else {
                return .failure(RequestError(400, "a forced decision needs a reason of 1-\(Limits.reasonBytesMax) bytes"))
            }
            if let refusal = operatorNameRefusal(operatorName) { return .failure(refusal) }
            return .success(trimmed)
        }

        /// The audit entry that records this decision with `effects`; `resolvedBranches`: the
        /// branches whose wait it ends (`AuditEntry.resolvedBranches`).
        func auditEntry(atMs: Int64, reason: String, effects: [String], resolvedBranches: [String]) -> AuditEntry {
            AuditEntry(atMs: atMs, operatorName: operatorName, action: outcome == .committed ? "force-commit" : "force-abort",
                       reason: reason, detail: effects.joined(separator: "; "), resolvedBranches: resolvedBranches)
        }
    }

    /// Who forced a participant's branch, why and when (the participant's wall clock), as its
    /// heuristic report says: the coordinator's audit of a decision made elsewhere. Each part
    /// is nil when the report did not carry it (agents before session 26 sent none).
    public struct HeuristicForce: Equatable, Sendable {
        public var operatorName: String?
        public var reason: String?
        public var forcedAtMs: Int64?
        public init(operatorName: String? = nil, reason: String? = nil, forcedAtMs: Int64? = nil) {
            self.operatorName = operatorName
            self.reason = reason
            self.forcedAtMs = forcedAtMs
        }
        public var isEmpty: Bool { operatorName == nil && reason == nil && forcedAtMs == nil }

        /// Why a report's parts cannot be recorded (400), nil when they can: the bounds the
        /// participant's own force checks (`operatorNameRefusal`, `Limits.reasonBytesMax`), and
        /// a time `TimeFormat` can print (year 0 to 9999).
        public func refusal() -> RequestError? {
            if let name = operatorName, operatorNameRefusal(name) != nil {
                return RequestError(400, "operator must be a name of 1-\(Limits.participantNameBytesMax) bytes")
            }
            if let reason, reason.allSatisfy({ $0 == " " }) || reason.utf8.count > Limits.reasonBytesMax {
                return RequestError(400, "reason must be 1-\(Limits.reasonBytesMax) bytes, not blank")
            }
            if let at = forcedAtMs, !(0...Limits.wallClockMsMax).contains(at) {
                return RequestError(400, "forced_at_ms must be wall-clock milliseconds 0-\(Limits.wallClockMsMax)")
            }
            return nil
        }

        /// `forced aborted by alice at 2026-...Z: "coordinator lost"`, the parts it has.
        public func describe(_ outcome: Outcome, participant: String) -> String {
            guard !isEmpty else { return "operator at \(participant) forced \(outcome.rawValue)" }
            var s = "forced \(outcome.rawValue) by \(operatorName ?? "an operator")"
            if let at = forcedAtMs { s += " at \(TimeFormat.iso8601(ms: at))" }
            if let reason { s += ": " + JSONWriter.quoted(reason) }
            return s
        }

        /// Parts present first (one byte, a bit each), then those parts: a record or snapshot
        /// section written before these existed simply ends before it.
        func encode(_ w: inout ByteWriter) {
            w.u8((operatorName != nil ? 1 : 0) | (reason != nil ? 2 : 0) | (forcedAtMs != nil ? 4 : 0))
            if let operatorName { w.string(operatorName) }
            if let reason { w.string(reason) }
            if let forcedAtMs { w.i64(forcedAtMs) }
        }

        static func decode(_ r: inout ByteReader) throws -> HeuristicForce {
            let present = try r.u8()
            guard present & ~7 == 0 else { throw DecodeError("unknown heuristic force parts \(present)") }
            var f = HeuristicForce()
            if present & 1 != 0 { f.operatorName = try r.string(maxCount: 4096) }
            if present & 2 != 0 { f.reason = try r.string(maxCount: Limits.reasonBytesMax + 4) }
            if present & 4 != 0 { f.forcedAtMs = try r.i64() }
            return f
        }
    }

    /// An operator's decision, written durably before it takes effect.
    public struct AuditEntry: Equatable, Sendable {
        public let atMs: Int64
        public let operatorName: String
        public let action: String
        public let reason: String
        public let detail: String
        /// The branches (2PC/3PC participants, TCC branch ids) whose wait the force ended: they
        /// become `resolved-by-operator`; empty when it ended none (a forced abort, a forced
        /// confirm decision, a commit of a 3PC transaction every participant forgot). Recorded
        /// because acknowledgements are not logged: replaying the record, the other branches of
        /// the transaction had acknowledged (committed, confirmed or cancelled) before the
        /// force. Nil in records written before session 32 (`detail` named them only in prose):
        /// replaying one of those marks every branch not known to have acknowledged as resolved
        /// by the operator, as those versions did.
        public let resolvedBranches: [String]?
        public init(atMs: Int64, operatorName: String, action: String, reason: String, detail: String, resolvedBranches: [String]? = nil) {
            self.atMs = atMs
            self.operatorName = operatorName
            self.action = action
            self.reason = reason
            self.detail = detail
            self.resolvedBranches = resolvedBranches
        }
    }

    public struct Attempt: Equatable, Sendable {
        public let atMs: Int64
        public let error: String
        /// As `TimelineEvent.keptBytes`.
        var keptBytes: Int { 16 + error.utf8.count }
    }

    public enum Timer: Hashable, Sendable {
        case transactionTimeout(TxID)
        case retry(TxID, participant: String)
        /// 3PC: stop waiting for pre-commit acknowledgements.
        case preCommitTimeout(TxID)
        /// 3PC: ask the participants again for the outcome.
        case learn(TxID)
    }

    public enum Reply: Equatable {
        case begun(TxID, timeoutMs: Int64)
        /// `lastAcknowledgedCommit`: the last commit this participant (name and incarnation)
        /// acknowledged here, for it to check that it still knows it (`lastAcknowledgedCommits`).
        case registered(TxID, timeoutMs: Int64, lastAcknowledgedCommit: AcknowledgedCommit? = nil)
        case outcome(TxID, Outcome, reason: String?)
        case inquiry(String, InquiryAnswer)
        /// What a forced decision did (or, for a dry run, would do).
        case forced(TxID, outcome: Outcome, dryRun: Bool, effects: [String])
        case retried(TxID, participants: [String])
        case heuristicNoted(String, mixed: Bool)
        case error(RequestError)
    }

    public enum Record: Equatable, Sendable {
        /// Forced before phase two: which update branches must hear "commit".
        case commitDecision(TxID, participants: [ParticipantRef], decidedAtMs: Int64)
        /// Unforced: every update branch acknowledged; the transaction can be forgotten.
        case end(TxID)
        /// Forced: an operator's decision, before it takes effect.
        case audit(TxID, AuditEntry)
        /// Forced: a participant reported a heuristic (operator-forced) outcome of its branch.
        case heuristic(TxID, participant: String, outcome: Outcome, forcedBy: HeuristicForce? = nil)
        /// Forced, 3PC: every branch voted yes; pre-commits may go out. Without a later commit
        /// decision, a recovering coordinator does not decide: it learns the outcome from the
        /// participants (they may have terminated without it).
        case preCommit(TxID, participants: [ParticipantRef], termination: Termination, atMs: Int64)
        /// A submitted transaction's request_id, appended (unforced) just before its commit
        /// decision or pre-commit record, whose sync then covers it: after a restart a repeated
        /// submission still finds the decided transaction.
        case submission(TxID, requestID: String)
        /// Txids that may commit in one phase from now on (forced before the first of them).
        case onePhaseWindow(OnePhaseWindow)
        /// Forced, 3PC: the participants' termination aborted a pre-committed transaction (the
        /// coordinator learned it while `terminating`). Presumed abort needs no record, but a
        /// pre-commit record does: without this one a restart found the pre-commit record,
        /// asked again and could be forced to commit, against the abort the client had heard
        /// (a review, session 28).
        case abortLearned(TxID)
    }

    public enum Action: Equatable {
        case reply(RequestID, Reply)
        case send(TxID, to: ParticipantRef, ParticipantMessage)
        case log(Record, force: Bool)
        case setTimer(Timer, afterMs: Int64)
        case cancelTimer(Timer)
    }

    /// The `state` filters of `GET /v1/transactions` and `txctl list --state`: every state a
    /// 2PC/3PC or TCC transaction is listed with, then three groups. One list for the server
    /// and txctl, so txctl refuses no state the server lists (it refused `pre-committing`).
    public static let listStateFilters: [String] = {
        var states = ["active", "preparing", "pre-committing", "terminating", "deciding", "committing", "committed",
                      "aborted", "heuristic-mixed"]
        for state in TCCCoordinator.State.allCases.map(\.rawValue) where !states.contains(state) { states.append(state) }
        return states + ["unfinished", "in-doubt", "parked"]
    }()

    public enum State: String, Codable, Sendable {
        /// Accepting branches; no prepare sent yet.
        case active
        /// Prepares sent; collecting votes.
        case preparing
        /// 3PC: every branch voted yes; the pre-commit record is forced and pre-commits sent;
        /// collecting acknowledgements.
        case preCommitting = "pre-committing"
        /// 3PC: the coordinator no longer decides (a participant joined the termination
        /// protocol, quorum not reached, or it restarted after pre-commit); it asks the
        /// participants until one has an outcome, and adopts it.
        case terminating
        /// Every branch voted yes; the commit record is being forced.
        case deciding
        /// Commit is decided and durable; delivering it to the branches.
        case committing
        case committed
        case aborted
        /// Finished, but some branch's operator-forced outcome differs from the decision
        /// (XA's HEURMIX): data is inconsistent and a person must repair it.
        case heuristicMixed = "heuristic-mixed"

        public var isFinished: Bool { self == .committed || self == .aborted || self == .heuristicMixed }
    }

    public enum BranchState: String, Codable, Sendable {
        case registered
        case prepareSent = "prepare-sent"
        case prepared
        case votedNo = "voted-no"
        case readOnly = "read-only"
        case preCommitSent = "pre-commit-sent"
        case preCommitted = "pre-committed"
        case commitSent = "commit-sent"
        case committed
        case aborted
        /// An operator ended the wait for this branch (`txctl commit --force` on a committing
        /// transaction); the participant still hears "committed" when it asks.
        case resolvedByOperator = "resolved-by-operator"
    }

    public struct Branch: Sendable {
        public let participant: ParticipantRef
        public var state: BranchState
        public var vote: Vote?
        /// Delivery attempts of the current phase and the last error, for operators.
        public var attempts = 0
        public var lastError: String?
        public var nextRetryAtMs: Int64?
        /// Recent failed attempts, oldest first, bounded by `Limits.attemptHistoryKept`.
        public var history: [Attempt] = []
        /// The outcome this participant's operator forced, if it reported one.
        public var heuristic: Outcome?
        /// Who forced it, why and when, if its report said.
        public var heuristicForce: HeuristicForce?
        /// A submitted transaction's work for this branch, until the branch has voted.
        public var work: JSONNode? {
            // Let go, it no longer counts toward `submittedWorkBytesMax`.
            didSet { if case .none = work { workBytes = 0 } }
        }
        /// What `work` holds (`Coordinator.heldBytes`), counted by the open-transaction table.
        var workBytes = 0
        /// A 3PC state query sent to this branch and not yet answered (or failed): the next
        /// one waits for it, so a participant that never answers is asked once per timeout,
        /// not once a second with the queries piling up in its queue.
        var stateQueryOutstanding = false
        /// What this branch answered the last 3PC state query with (nil: no answer yet, or the
        /// last one failed). In memory: a coordinator back from a restart asks again.
        var lastThreePhaseState: ThreePhaseState?
        /// Its registration was answered with `last_acknowledged_commit`, which the participant
        /// checks before it takes the work: its prepare need not carry the figure again (the
        /// prepare carries it for branches that never registered: submitted, or named at commit).
        /// With the figure in every prepare the check cost +3.8% instructions per transfer at the
        /// coordinator and +4.9% at an agent; told once (and checked by one lookup,
        /// `Participant.checkLastAcknowledgedCommit`), +2.0% at each (benchmarks/profile, session 37).
        var checkedAtRegistration = false
    }

    public struct TimelineEvent: Equatable, Sendable {
        public let atMs: Int64
        public let event: String
        public let participant: String?
        public let detail: String?
        /// What it holds in memory, roughly (its strings and a fixed share for the rest), for
        /// the byte bounds of finished transactions.
        var keptBytes: Int { 32 + event.utf8.count + (participant?.utf8.count ?? 0) + (detail?.utf8.count ?? 0) }
    }

    public struct Transaction: Sendable {
        public let txid: TxID
        public var state: State
        public let createdAtMs: Int64
        public let timeoutMs: Int64
        public var branches: [Branch] = []
        public var outcome: Outcome?
        public var reason: String?
        public var onePhase = false
        public var commitProtocol: CommitProtocol = .twoPhase
        public var decidedAtMs: Int64?
        public var finishedAtMs: Int64?
        public var events: [TimelineEvent] = []
        /// Past its retry budget: still retried, slowly, and listed for operators.
        public var parked = false
        public var audit: [AuditEntry] = []
        /// Commit requests waiting for the decision.
        var waiters: [RequestID] = []
        /// A submitted transaction's idempotency key.
        public var requestID: String?
        /// What it held when it finished (`finishedKeptBytes`), counted against
        /// `Config.finishedKeptBytesMax` until it is let go. What is added after (an audit entry,
        /// a heuristic report) is bounded by count and not counted.
        var keptBytes = 0

        func branchIndex(_ name: String) -> Int? { branches.firstIndex { $0.participant.name == name } }
        /// Its strings and a fixed share for the rest: branches (name, URL, ids, vote reason,
        /// errors and attempt history, an operator's heuristic report), timeline, reason and
        /// audit. Each is bounded in count and clipped or refused past `Limits.reasonBytesMax`,
        /// yet 64 branches with full histories hold about 1 MB, and 10,000 (or the 100,000
        /// `--finished-kept` allows) of those would be gigabytes.
        var finishedKeptBytes: Int {
            var bytes = 256 + (reason?.utf8.count ?? 0) + (requestID?.utf8.count ?? 0)
            for b in branches {
                bytes += 96 + b.participant.name.utf8.count + b.participant.url.utf8.count
                    + (b.participant.incarnation?.utf8.count ?? 0)
                    + (b.lastError?.utf8.count ?? 0) + (b.heuristicForce.map { ($0.operatorName?.utf8.count ?? 0) + ($0.reason?.utf8.count ?? 0) } ?? 0)
                if case .no(let why)? = b.vote { bytes += why.utf8.count }
                for a in b.history { bytes += a.keptBytes }
            }
            for e in events { bytes += e.keptBytes }
            return bytes + audit.reduce(0) { $0 + OperatorAudits.keptBytes($1) }
        }
        /// A one-phase commit asked for and not sent yet: it waits for a durable one-phase window.
        var awaitsOnePhaseWindow: Bool { state == .preparing && onePhase && branches.allSatisfy { $0.state == .registered } }
    }

    public struct Stats: Sendable {
        public var committed: UInt64 = 0
        public var aborted: UInt64 = 0
        /// Submissions repeated with a known request_id and answered with the first run's
        /// outcome: while its transaction was kept, and from the committed-submission memory.
        public var repeatedSubmissions: UInt64 = 0
        public var repeatedSubmissionsFromMemory: UInt64 = 0
        /// Commits, aborts, `GET`s and inquiries about forgotten transactions answered from the
        /// ledger of outcomes.
        public var answeredFromLedger: UInt64 = 0
        public init() {}
    }

    public let config: Config
    public private(set) var epoch: UInt64
    private var nextSequence: UInt64 = 1
    private var rng: SplitMix64
    /// Unfinished transactions (including decided ones still delivering the commit).
    public var open: [TxID: Transaction] { openTable.byID }
    private var openTable = OpenTransactions<Transaction>()
    /// Open transactions whose commit is decided and durable, waiting for acknowledgements.
    public var committingCount: Int { openTable.settlingCount }
    /// Recently finished transactions, oldest first, bounded by `finishedTransactionsKept`.
    public private(set) var finished: [TxID: Transaction] = [:]
    /// Per participant name (`Limits.acknowledgedCommitParticipantsMax`): the txid whose commit
    /// it acknowledged last (a `committed` answer to a commit, or to a one-phase commit: each
    /// sent only once its commit record is durable there). Told to it at registration and in
    /// the prepare of a branch not told so (`lastAcknowledgedCommitToTell`), so that a participant whose data directory was restored from an older
    /// copy (same incarnation, commits missing) finds out and refuses new work instead of
    /// acknowledging what it lost. Every entry is a fact whenever it was learned, so it is
    /// raised on the answer itself, kept in snapshots and rebuilt from `end` records; what a
    /// restart cannot rebuild is only a lower figure, a weaker check, never a false alarm.
    public private(set) var lastAcknowledgedCommits: [String: AcknowledgedCommit] = [:]
    /// `keptBytes` of every transaction in `finished`.
    public private(set) var finishedKeptBytes = 0
    private var finishedOrder: [TxID] = []
    private var finishedOrderHead = 0
    /// Heuristic-mixed transactions let go of `finished`, kept whole for views (`keepMixed`).
    public private(set) var mixedKept: [TxID: Transaction] = [:]
    private var mixedKeptOrder: [TxID] = []
    /// The newest committed transaction let go of `finished` (kept in snapshots): an unknown
    /// txid at or below it may have committed and is answered 410, not 404.
    public private(set) var forgottenCommits = ForgottenCommits()
    /// Txids that may have committed in one phase, durably recorded (kept in snapshots).
    public private(set) var onePhaseWindows = OnePhaseWindows()
    /// The window being recorded, not yet durable.
    private var onePhaseWindowAsked: OnePhaseWindow?
    /// One-phase commits waiting for a durable window (at most the open transactions).
    private var awaitingOnePhaseWindow: [TxID] = []
    public private(set) var stats = Stats()
    /// Outcomes forced by operators, kept (and checkpointed) after the transaction is
    /// forgotten, so a participant that asks later hears the forced outcome, not a presumption.
    public private(set) var operatorOutcomes: [TxID: Outcome] = [:]
    private var operatorOutcomeOrder: [TxID] = []
    private var operatorOutcomeHead = 0
    /// The audit entries of those forced transactions (who, when, why, what it did), kept with
    /// their outcome and checkpointed: the transaction's own view loses them once it is let go
    /// of `finished`, or comes back from a checkpoint (before session 32 a restart past one
    /// lost who forced it, when and why).
    public private(set) var operatorAudits: OperatorAudits
    /// 3PC aborts learned from the participants whose record is being written: the
    /// participant that reported it, by transaction (at most the open transactions).
    private var abortsLearned: [TxID: String] = [:]
    /// Forced decisions whose audit record is being written, by transaction.
    private var pendingForces: [TxID: (request: RequestID, force: ForceRequest, entry: AuditEntry)] = [:]
    /// Heuristic reports whose record is being written.
    /// `record`: which of the reports' records the report rides on (`heuristicRecordsAsked`
    /// when it was asked for). Records become durable in order, so each durable event answers
    /// the reports of the oldest record still pending for that participant, and only those:
    /// answering all of them at the first, a report whose own record (with who forced the
    /// branch) was not yet synced was acknowledged, and a crash then lost what it said while
    /// the agent, answered, never sent it again (a review).
    private var pendingHeuristics: [TxID: [(request: RequestID?, participant: String, outcome: Outcome, forcedBy: HeuristicForce?, atMs: Int64, record: UInt64)]] = [:]
    private var heuristicRecordsAsked: UInt64 = 0

    /// Submitted transactions by request_id, while the transaction is remembered.
    private var submissions: [String: TxID] = [:]
    /// request_ids read from the log whose transaction's decision has not been read yet.
    private var recoveredSubmissions: [TxID: String] = [:]
    /// request_ids of committed submissions no longer in `finished` (kept in snapshots).
    public private(set) var committedSubmissions: CommittedSubmissions
    /// Outcomes of transactions no longer in `finished` (kept in snapshots).
    public private(set) var outcomeLedger: OutcomeLedger
    /// The reason of a transaction made up from a heuristic report about one with no record
    /// here; such a transaction's outcome is a presumption and never enters the ledger.
    static let presumedAbortReason = "no record at the coordinator (presumed abort)"
    /// The reason of a transaction its client aborted (`POST .../abort`): a client that reads
    /// reasons (the demo's order service) tells its own aborts from others by it.
    public static let clientAbortReason = "aborted by client"
    /// The reason given for an aborted transaction answered from the ledger of outcomes, which
    /// keeps two bits a transaction: a client asking late (an order service settling after a
    /// lost answer) was told `aborted` with no reason at all and could not say why.
    public static let forgottenAbortReason = "aborted; its reason is no longer kept (the coordinator keeps only the outcome of a transaction past the last finished ones it keeps whole)"

    /// Open transactions past their retry budget.
    public var parkedCount: Int { openTable.byID.values.reduce(0) { $0 + ($1.parked ? 1 : 0) } }

    public init(config: Config) {
        self.config = config
        self.epoch = config.epoch
        self.rng = SplitMix64(seed: config.seed)
        self.committedSubmissions = CommittedSubmissions(capacity: config.committedSubmissionsKept)
        self.outcomeLedger = OutcomeLedger(coordinatorID: config.coordinatorID, entriesKept: config.forgottenOutcomesKept)
        self.operatorAudits = OperatorAudits(bytesMax: config.operatorAuditsKeptBytesMax)
    }

    // MARK: - recovery

    /// The most entries each section of a checkpoint can hold: what the state it is written from
    /// is bounded by, so the reader (`recover`) accepts whatever `snapshot` can write and still
    /// refuses an absurd count from a damaged file. From the most any configuration keeps, not
    /// this one's: a coordinator restarted with a smaller `--finished-kept` reads what the
    /// larger one wrote. One derivation for both sides: the submissions and 3PC sections were
    /// bounded by `finishedKept + openTransactionsMax` while the snapshot lists the committing
    /// transactions too (`committingTransactionsMax`, counted apart), and a coordinator with
    /// 100,000 recent commits and 10,001 waiting for a participant wrote a checkpoint that
    /// every later start refused (a review).
    struct SnapshotSectionsMax {
        /// Open transactions: the undecided ones (admitted below `openTransactionsMax`) and the
        /// committing ones (admitted below `committingTransactionsMax`, plus the undecided
        /// ones that committed since). A restart keeps a subset of them.
        let open: Int
        /// Recently finished transactions (`finishedTransactionsKept`).
        let finished: Int
        /// Branches of one transaction (a report of an unknown one grows it up to the limit).
        let branches: Int

        init(_ config: Config) {
            open = max(config.openTransactionsMax, Limits.openTransactionsMax) + max(config.committingTransactionsMax, Limits.committingTransactionsMax)
            finished = max(config.finishedTransactionsKept, Limits.finishedTransactionsKeptMax)
            branches = max(config.branchesPerTransactionMax, Limits.branchesPerTransactionMax)
        }

        /// Decided transactions still open (`deciding`, `committing`).
        var decided: Int { open }
        /// Outcomes an operator forced (`Limits.operatorOutcomesKept`), with room for what
        /// versions that bounded this section by the finished transactions too wrote.
        var forced: Int { finished + Limits.operatorOutcomesKept }
        /// The committed ones of the finished transactions.
        var committed: Int { finished }
        /// One entry per heuristic branch of an open or finished transaction.
        var heuristics: Int { (open + finished) * branches }
        /// 3PC transactions pre-committed and undecided: open ones.
        var preCommitted: Int { open }
        /// request_ids of the decided open transactions and the committed finished ones.
        var submissions: Int { open + finished }
        /// The 3PC ones of the decided open transactions and the committed finished ones.
        var threePhase: Int { open + finished }
        var mixedKept: Int { Limits.heuristicMixedKept }
        /// Who forced each heuristic branch of an open, finished or mixed-kept transaction.
        var heuristicForces: Int { (open + finished + Limits.heuristicMixedKept) * branches }
        /// The audit entries of the forced outcomes kept (`OperatorAudits`): one transaction each.
        var operatorAudits: Int { Limits.operatorOutcomesKept }
    }

    /// Rebuilds state from a checkpoint snapshot and the records after it, then returns the
    /// actions that re-drive every decided-but-unacknowledged transaction. Undecided
    /// transactions left no record: they are aborted by presumption.
    public mutating func recover(snapshot: [UInt8]?, records: [(type: UInt8, payload: [UInt8])], nowMs: Int64) throws -> [Action] {
        var maxEpoch: UInt64 = 0
        if let snapshot {
            var r = ByteReader(snapshot)
            guard try r.u8() == 2 else { throw DecodeError("unknown coordinator snapshot version") }
            maxEpoch = try r.u64()
            let sectionsMax = SnapshotSectionsMax(config)
            let count = try r.u32()
            guard count <= UInt32(clamping: sectionsMax.decided) else { throw DecodeError("\(count) decided transactions") }
            for _ in 0..<count {
                let record = try CoordinatorRecordCoding.decodeDecision(&r)
                let acked = try CoordinatorRecordCoding.decodeNames(&r)
                applyRecovered(record, nowMs: nowMs)
                if case .commitDecision(let txid, _, _) = record {
                    for name in acked { markAcked(txid, name) }
                }
            }
            let forcedCount = try r.u32()
            guard forcedCount <= UInt32(clamping: sectionsMax.forced) else { throw DecodeError("\(forcedCount) forced outcomes") }
            for _ in 0..<forcedCount {
                let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                rememberOperatorOutcome(txid, try r.bool() ? .committed : .aborted)
            }
            let committedCount = try r.u32()
            guard committedCount <= UInt32(clamping: sectionsMax.committed) else { throw DecodeError("\(committedCount) recent commits") }
            for _ in 0..<committedCount {
                let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                var tx = Transaction(txid: txid, state: .committed, createdAtMs: try r.i64(), timeoutMs: 0)
                tx.finishedAtMs = try r.i64()
                tx.outcome = .committed
                tx.events.append(TimelineEvent(atMs: tx.finishedAtMs!, event: "committed", participant: nil, detail: "from a checkpoint (details not kept)"))
                if finished[txid] == nil && openTable.byID[txid] == nil { remember(tx) }
                maxEpoch = max(maxEpoch, txid.epoch)
            }
            let heuristicCount = try r.u32()
            guard heuristicCount <= UInt32(clamping: sectionsMax.heuristics) else { throw DecodeError("\(heuristicCount) heuristic outcomes") }
            for _ in 0..<heuristicCount {
                let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                let name = try r.string(maxCount: 4096)
                let outcome: Outcome = try r.bool() ? .committed : .aborted
                _ = noteHeuristic(txid, participant: name, outcome: outcome, forcedBy: nil, nowMs: nowMs)
            }
            let preCommittedCount = try r.u32()
            guard preCommittedCount <= UInt32(clamping: sectionsMax.preCommitted) else { throw DecodeError("\(preCommittedCount) pre-committed") }
            for _ in 0..<preCommittedCount {
                let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                applyRecovered(try CoordinatorRecordCoding.decodePreCommit(&r, txid: txid), nowMs: nowMs)
                maxEpoch = max(maxEpoch, txid.epoch)
            }
            // Submissions' request_ids (absent in snapshots written before submit existed).
            if !r.isAtEnd {
                let submissionCount = try r.u32()
                guard submissionCount <= UInt32(clamping: sectionsMax.submissions) else {
                    throw DecodeError("\(submissionCount) submissions")
                }
                for _ in 0..<submissionCount {
                    let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                    let requestID = try r.string(maxCount: Limits.requestIDBytesMax)
                    if openTable.byID[txid] == nil && finished[txid] == nil {
                        // Listed, so committed, and pushed out of `finished` while loading by a
                        // smaller `finishedTransactionsKept` than the writer's.
                        committedSubmissions.add(requestID, .init(txid: txid, finishedAtMs: nowMs))
                    } else {
                        rememberSubmission(requestID, txid)
                    }
                }
            }
            try forgottenCommits.readTrailing(&r)
            try onePhaseWindows.readTrailing(&r)
            try committedSubmissions.readTrailing(&r)
            try outcomeLedger.readTrailing(&r)
            if !r.isAtEnd {
                let threePhaseCount = try r.u32()
                guard threePhaseCount <= UInt32(clamping: sectionsMax.threePhase) else {
                    throw DecodeError("\(threePhaseCount) 3PC transactions")
                }
                for _ in 0..<threePhaseCount {
                    let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                    let termination: Termination = try r.u8() == 1 ? .quorum : .classic
                    // Not found: pushed out of `finished` while loading by a smaller
                    // `finishedTransactionsKept` than the writer's (its ledger entry says 2PC).
                    if openTable.byID[txid] != nil {
                        openTable[txid]!.commitProtocol = .threePhase(termination)
                    } else if finished[txid] != nil {
                        finished[txid]!.commitProtocol = .threePhase(termination)
                    }
                }
            }
            if !r.isAtEnd {
                let mixedCount = try r.u32()
                guard mixedCount <= UInt32(clamping: sectionsMax.mixedKept) else { throw DecodeError("\(mixedCount) heuristic-mixed transactions kept") }
                for _ in 0..<mixedCount {
                    let tx = try CoordinatorRecordCoding.decodeMixedKept(&r)
                    if openTable.byID[tx.txid] == nil && finished[tx.txid] == nil { keepMixed(tx) }
                }
            }
            // Who forced each heuristic branch above, why and when (absent in snapshots written
            // before session 26).
            if !r.isAtEnd {
                let forceCount = try r.u32()
                guard forceCount <= UInt32(clamping: sectionsMax.heuristicForces) else { throw DecodeError("\(forceCount) heuristic forces") }
                for _ in 0..<forceCount {
                    let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                    let name = try r.string(maxCount: 4096)
                    applyHeuristicForce(txid, participant: name, try HeuristicForce.decode(&r))
                }
            }
            // The forced transactions' audit entries (absent in snapshots written before session
            // 32, which came back with the forced outcome only: no one to ask who forced it).
            if !r.isAtEnd {
                let auditCount = try r.u32()
                guard auditCount <= UInt32(clamping: sectionsMax.operatorAudits) else { throw DecodeError("\(auditCount) forced transactions' audits") }
                for _ in 0..<auditCount {
                    let (txid, kept) = try OperatorAudits.decodeKept(&r)
                    guard operatorOutcomes[txid] != nil else { continue }
                    for entry in kept.entries { operatorAudits.add(txid, entry, commitProtocol: kept.commitProtocol) }
                    // The transaction rebuilt above (a recent commit, a decided one, a mixed
                    // one) came back without them.
                    updateKnown(txid) { tx in if tx.audit.isEmpty { tx.audit = kept.entries } }
                }
            }
            // The last commit each participant acknowledged (absent in snapshots written
            // before session 37: the figures then start from what the log still holds).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: Limits.acknowledgedCommitParticipantsMax) else { throw DecodeError("\(count) acknowledged commits") }
                for _ in 0..<count {
                    let name = try r.string(maxCount: 4096)
                    let hasIncarnation = try r.bool()
                    let incarnation = try r.string(maxCount: Limits.incarnationBytesMax)
                    let txid = try CoordinatorRecordCoding.decodeTxID(&r)
                    noteAcknowledgedCommit(ParticipantRef(name: name, url: "", incarnation: hasIncarnation ? incarnation : nil), txid)
                }
            }
        }
        for (type, payload) in records {
            let record = try CoordinatorRecordCoding.decode(type: type, payload: payload)
            maxEpoch = max(maxEpoch, record.txid.epoch)
            applyRecovered(record, nowMs: nowMs)
        }
        // Submissions never decided were aborted by presumption: a repeat runs afresh.
        recoveredSubmissions = [:]
        for txid in openTable.byID.keys { maxEpoch = max(maxEpoch, txid.epoch) }
        if epoch <= maxEpoch { epoch = maxEpoch + 1 }

        var actions: [Action] = []
        for txid in openTable.byID.keys.sorted() {
            guard var tx = openTable.byID[txid] else { continue }
            // Only a decided transaction is re-driven; a pre-committed 3PC one is asked about
            // and may end aborted, so "re-driving commit" misled a game-day operator there.
            let detail = tx.state == .terminating
                ? "pre-committed, undecided: asking the participants how it ended (3PC termination)"
                : "re-driving commit after restart"
            tx.events.append(TimelineEvent(atMs: nowMs, event: "recovered", participant: nil, detail: detail))
            for i in tx.branches.indices where tx.branches[i].state == .commitSent && tx.branches[i].heuristic == nil {
                actions.append(.send(txid, to: tx.branches[i].participant, .commit))
            }
            if tx.state == .terminating {
                // Pre-committed before the crash, not decided: the participants may have
                // terminated on their own. Learn; never decide.
                for i in tx.branches.indices {
                    tx.branches[i].stateQueryOutstanding = true
                    actions.append(.send(txid, to: tx.branches[i].participant, .stateQuery))
                }
                actions.append(.setTimer(.learn(txid), afterMs: config.learnIntervalMs))
            }
            openTable[txid] = tx
            // A commit without branches (its end record lost, or never written): nothing to
            // re-drive, it ends now.
            if tx.state == .committing && tx.branches.isEmpty { actions += endIfDelivered(txid, nowMs: nowMs) }
        }
        return actions
    }

    private mutating func applyRecovered(_ record: Record, nowMs: Int64) {
        defer {
            // A request_id read before its transaction's decision or pre-commit: attach it now.
            switch record {
            case .commitDecision(let txid, _, _), .preCommit(let txid, _, _, _):
                if let requestID = recoveredSubmissions.removeValue(forKey: txid) { rememberSubmission(requestID, txid) }
            default: break
            }
        }
        switch record {
        case .preCommit(let txid, let participants, let termination, let atMs):
            var tx = Transaction(txid: txid, state: .terminating, createdAtMs: atMs, timeoutMs: 0)
            tx.commitProtocol = .threePhase(termination)
            tx.branches = participants.map { Branch(participant: $0, state: .preCommitSent, vote: .yes) }
            tx.events.append(TimelineEvent(atMs: atMs, event: "pre-committed", participant: nil, detail: "from log; learning the outcome from the participants"))
            openTable[txid] = tx
        case .submission(let txid, let requestID):
            // Bounded by the transactions that reach a decision (and the log's size).
            recoveredSubmissions[txid] = requestID
        case .onePhaseWindow(let window):
            onePhaseWindows.add(window)
        case .commitDecision(let txid, let participants, let decidedAtMs):
            var tx = Transaction(txid: txid, state: .committing, createdAtMs: decidedAtMs, timeoutMs: 0)
            if let earlier = openTable.byID[txid] {
                // A 3PC transaction learned committed after a restart: its pre-commit record
                // came first. Keep its request_id, or the transaction would be forgotten
                // without it and a resend of the submission run again.
                tx.commitProtocol = earlier.commitProtocol
                tx.requestID = earlier.requestID
                tx.audit = earlier.audit
            }
            tx.outcome = .committed
            tx.decidedAtMs = decidedAtMs
            tx.branches = participants.map { Branch(participant: $0, state: .commitSent, vote: .yes) }
            tx.events.append(TimelineEvent(atMs: decidedAtMs, event: "decided", participant: nil, detail: "commit (from log)"))
            openTable[txid] = tx
        case .end(let txid):
            if var tx = openTable.removeValue(forKey: txid) {
                tx.state = .committed
                for i in tx.branches.indices where tx.branches[i].state == .commitSent {
                    tx.branches[i].state = .committed
                    // Ended, so every branch still waiting acknowledged, except one that
                    // reported a heuristic outcome (or one an operator resolved, no longer
                    // `commitSent`): those never said committed.
                    if tx.branches[i].heuristic == nil { noteAcknowledgedCommit(tx.branches[i].participant, txid) }
                }
                remember(tx)
            }
        case .audit(let txid, let entry):
            let outcome: Outcome = entry.action == "force-commit" ? .committed : .aborted
            rememberOperatorOutcome(txid, outcome)
            operatorAudits.add(txid, entry, commitProtocol: transaction(txid)?.commitProtocol ?? .twoPhase)
            if var tx = openTable.byID[txid] {
                tx.audit.append(entry)
                openTable[txid] = tx
                if outcome == .committed && tx.state == .committing { _ = resolveByOperator(txid, resolved: entry.resolvedBranches, nowMs: entry.atMs) }
                // A force of a terminating transaction whose participants all forgot it is
                // decided by its audit record (the operator is answered once it is durable, and
                // no answer is taken meanwhile): it ends here again. Rebuilt `terminating` from
                // its pre-commit record, it asked on, and a later force could take the other
                // outcome, against the one already answered (reviews, sessions 27 and 28). Its
                // participants hold no branch: the aborts it would send are not needed; a commit
                // is sent again, as after any decision.
                if tx.state == .terminating {
                    if outcome == .aborted {
                        _ = endForgottenByOperator(txid, .aborted, by: entry, nowMs: entry.atMs)
                    } else {
                        commitForcedByOperator(txid, entry)
                    }
                }
            } else if var tx = finished[txid] {
                tx.audit.append(entry)
                finished[txid] = tx
            } else {
                // An aborted transaction leaves no other record: keep what the operator did.
                var tx = Transaction(txid: txid, state: outcome == .committed ? .committed : .aborted, createdAtMs: entry.atMs, timeoutMs: 0)
                tx.outcome = outcome
                tx.reason = "forced by operator \(entry.operatorName): \(entry.reason)"
                tx.audit = [entry]
                tx.events.append(TimelineEvent(atMs: entry.atMs, event: "forced", participant: nil, detail: "\(entry.action) (from log)"))
                remember(tx)
            }
        case .heuristic(let txid, let participant, let outcome, let forcedBy):
            _ = noteHeuristic(txid, participant: participant, outcome: outcome, forcedBy: forcedBy, nowMs: nowMs)
        case .abortLearned(let txid):
            // The client heard this abort once the record was durable: the pre-commit record
            // before it no longer makes the transaction `terminating`.
            if openTable.byID[txid]?.state == .terminating {
                _ = decideAbort(txid, reason: "aborted by the participants' termination protocol (learned; from log)", nowMs: nowMs)
            }
        }
    }

    /// A forced commit of a terminating transaction (live, or read back from its audit record):
    /// committing, every yes-voter to be told.
    private mutating func commitForcedByOperator(_ txid: TxID, _ entry: AuditEntry) {
        guard var tx = openTable.byID[txid], tx.state == .terminating else { return }
        tx.state = .committing
        tx.outcome = .committed
        tx.decidedAtMs = entry.atMs
        tx.branches = tx.branches.filter { $0.vote == .yes }
        for i in tx.branches.indices { tx.branches[i].state = .commitSent }
        tx.events.append(TimelineEvent(atMs: entry.atMs, event: "decided", participant: nil,
                                       detail: "commit forced by operator \(entry.operatorName): \(entry.reason) (every participant had forgotten the transaction)"))
        openTable[txid] = tx
    }

    /// Sets who forced `participant`'s branch of `txid` (read from a checkpoint, after the
    /// branch), and names them in the timeline events its report left.
    private mutating func applyHeuristicForce(_ txid: TxID, participant: String, _ force: HeuristicForce) {
        func apply(_ tx: inout Transaction) {
            guard let i = tx.branchIndex(participant), let outcome = tx.branches[i].heuristic else { return }
            tx.branches[i].heuristicForce = force
            let detail = force.describe(outcome, participant: participant)
            for k in tx.events.indices where tx.events[k].event == "heuristic-reported" && tx.events[k].participant == participant {
                tx.events[k] = TimelineEvent(atMs: tx.events[k].atMs, event: "heuristic-reported", participant: participant, detail: detail)
            }
        }
        updateKnown(txid, apply)
    }

    /// Changes the transaction `transaction(txid)` gives, wherever it is kept; false when none.
    @discardableResult
    private mutating func updateKnown(_ txid: TxID, _ change: (inout Transaction) -> Void) -> Bool {
        if var tx = openTable.byID[txid] {
            change(&tx)
            openTable[txid] = tx
        } else if var tx = finished[txid] {
            change(&tx)
            finished[txid] = tx
        } else if var tx = mixedKept[txid] {
            change(&tx)
            mixedKept[txid] = tx
        } else {
            return false
        }
        return true
    }

    private mutating func rememberOperatorOutcome(_ txid: TxID, _ outcome: Outcome) {
        if operatorOutcomes.updateValue(outcome, forKey: txid) == nil { operatorOutcomeOrder.append(txid) }
        while operatorOutcomes.count > Limits.operatorOutcomesKept {
            let gone = operatorOutcomeOrder[operatorOutcomeHead]
            operatorOutcomes.removeValue(forKey: gone)
            operatorAudits.remove(gone)
            operatorOutcomeHead += 1
        }
        if operatorOutcomeHead > 4096 && operatorOutcomeHead * 2 > operatorOutcomeOrder.count {
            operatorOutcomeOrder.removeFirst(operatorOutcomeHead)
            operatorOutcomeHead = 0
        }
    }

    /// Ties a recovered transaction to its request_id, if the transaction is still remembered.
    private mutating func rememberSubmission(_ requestID: String, _ txid: TxID) {
        if var tx = openTable.byID[txid] {
            tx.requestID = requestID
            openTable[txid] = tx
        } else if var tx = finished[txid] {
            tx.requestID = requestID
            finished[txid] = tx
        } else {
            return
        }
        submissions[requestID] = txid
    }

    private mutating func markAcked(_ txid: TxID, _ name: String) {
        guard var tx = openTable.byID[txid], let i = tx.branchIndex(name) else { return }
        tx.branches[i].state = .committed
        openTable[txid] = tx
        noteAcknowledgedCommit(tx.branches[i].participant, txid)
    }

    /// `participant` acknowledged the commit of `txid`. Another incarnation's figure is
    /// replaced: it says nothing about a recreated directory. A branch without an incarnation
    /// (a submitted one, or a participant that gives none) does not count: which directory
    /// answered is unknown, and a directory that replaced it unseen (wiped, a new incarnation)
    /// would be told a commit it never had, and refuse work it should take.
    ///
    /// The latest acknowledgement wins, not the highest txid: txids are handed out at begin, so
    /// a transfer begun earlier may commit later, and a copy taken between the two commits holds
    /// the higher txid and lacks the later commit. Any txid the participant acknowledged is a
    /// sound figure (it knows it or let it go); the latest one catches the most.
    mutating func noteAcknowledgedCommit(_ participant: ParticipantRef, _ txid: TxID) {
        guard participant.incarnation != nil else { return }
        if lastAcknowledgedCommits[participant.name] == nil && lastAcknowledgedCommits.count >= Limits.acknowledgedCommitParticipantsMax {
            return
        }
        lastAcknowledgedCommits[participant.name] = AcknowledgedCommit(incarnation: participant.incarnation, txid: txid)
    }

    /// What a prepare to `branch` carries as `last_acknowledged_commit`: nothing when its
    /// registration answer carried it.
    func lastAcknowledgedCommitToTell(_ branch: Branch) -> AcknowledgedCommit? {
        branch.checkedAtRegistration ? nil : lastAcknowledgedCommit(of: branch.participant)
    }

    /// The last commit `participant` (this name and incarnation) acknowledged, if known. For
    /// a branch without an incarnation, the figure of whatever incarnation the name had: the
    /// participant checks it only if that incarnation is its own.
    public func lastAcknowledgedCommit(of participant: ParticipantRef) -> AcknowledgedCommit? {
        guard let known = lastAcknowledgedCommits[participant.name],
              participant.incarnation == nil || known.incarnation == participant.incarnation else { return nil }
        return known
    }

    /// Everything needed to rebuild after the log before this point is dropped: the highest
    /// epoch, and every decided transaction that is not yet fully acknowledged.
    public func snapshot() -> [UInt8] {
        // A checkpoint goes into the log after every record this machine asked for, and the
        // log before it is dropped once it is durable; so it must carry the effect of a forced
        // decision's or a heuristic report's record that is still being synced (the operator is
        // answered, and the participant forgets its branch, once that record is durable). Those
        // effects are applied to a copy.
        if !pendingForces.isEmpty || !pendingHeuristics.isEmpty || !abortsLearned.isEmpty {
            var applied = self
            for txid in abortsLearned.keys.sorted() { _ = applied.on(.abortLearnedDurable(txid), nowMs: openTable.byID[txid]?.createdAtMs ?? 0) }
            for (txid, pending) in pendingForces.sorted(by: { $0.key < $1.key }) { _ = applied.auditDurable(txid, nowMs: pending.entry.atMs) }
            for (txid, reports) in pendingHeuristics.sorted(by: { $0.key < $1.key }) {
                for report in reports { _ = applied.on(.heuristicDurable(txid, participant: report.participant), nowMs: report.atMs) }
            }
            precondition(applied.pendingForces.isEmpty && applied.pendingHeuristics.isEmpty && applied.abortsLearned.isEmpty, "records left unapplied in a snapshot")
            return applied.snapshot()
        }
        var w = ByteWriter()
        // Each section's count within what `recover` reads back: a checkpoint past one stopped
        // every later start (and the log before it is gone). The state's own limits keep each
        // section within its bound; this checks that the two derivations agree, in release
        // builds too (a failure is a bug here, not a condition to survive: stopping before the
        // write keeps the log whole, writing on would lose it at the next start).
        let sectionsMax = SnapshotSectionsMax(config)
        func sectionCount(_ count: Int, _ max: Int, _ section: String) -> UInt32 {
            precondition(count <= max, "checkpoint section \(section) holds \(count), more than recover reads (\(max))")
            return UInt32(count)
        }
        w.u8(2)
        w.u64(epoch)
        let decided = openTable.byID.values.filter { $0.state == .deciding || $0.state == .committing }.sorted { $0.txid < $1.txid }
        w.u32(sectionCount(decided.count, sectionsMax.decided, "decided"))
        for tx in decided {
            let updates = tx.branches.filter { $0.vote == .yes }
            CoordinatorRecordCoding.encodeDecision(&w, txid: tx.txid, participants: updates.map(\.participant), decidedAtMs: tx.decidedAtMs ?? tx.createdAtMs)
            CoordinatorRecordCoding.encodeNames(&w, updates.filter { $0.state == .committed }.map(\.participant.name))
        }
        let forced = operatorOutcomeOrder[operatorOutcomeHead...].filter { operatorOutcomes[$0] != nil }
        w.u32(sectionCount(forced.count, sectionsMax.forced, "forced"))
        for txid in forced {
            w.string(txid.description)
            w.bool(operatorOutcomes[txid] == .committed)
        }
        // Recently committed transactions, so a client that lost the answer to its commit can
        // still read "committed" after the log before this point is gone (aborts need no
        // record: unknown means aborted).
        // The three fields only: copying 10,000 whole transactions (and again for the heuristics
        // below) was most of a checkpoint's time on the event loop.
        var committed: [(txid: TxID, createdAtMs: Int64, finishedAtMs: Int64)] = []
        committed.reserveCapacity(finished.count)
        // The 3PC ones of the decided and recently committed transactions: neither list says.
        var threePhase: [(TxID, Termination)] = []
        for tx in decided { if case .threePhase(let t) = tx.commitProtocol { threePhase.append((tx.txid, t)) } }
        for id in finishedOrder[finishedOrderHead...] {
            guard let tx = finished[id], tx.outcome == .committed, tx.state.isFinished else { continue }
            committed.append((tx.txid, tx.createdAtMs, tx.finishedAtMs ?? tx.createdAtMs))
            if case .threePhase(let t) = tx.commitProtocol { threePhase.append((tx.txid, t)) }
        }
        w.u32(sectionCount(committed.count, sectionsMax.committed, "committed"))
        for tx in committed {
            w.string(tx.txid.description)
            w.i64(tx.createdAtMs)
            w.i64(tx.finishedAtMs)
        }
        var heuristics: [(TxID, String, Outcome)] = []
        for transactions in [openTable.byID, finished] {
            for tx in transactions.values {
                for b in tx.branches { if let h = b.heuristic { heuristics.append((tx.txid, b.participant.name, h)) } }
            }
        }
        heuristics.sort { ($0.0, $0.1) < ($1.0, $1.1) }
        w.u32(sectionCount(heuristics.count, sectionsMax.heuristics, "heuristics"))
        for (txid, name, outcome) in heuristics {
            w.string(txid.description)
            w.string(name)
            w.bool(outcome == .committed)
        }
        // 3PC transactions past their pre-commit record but undecided.
        let preCommitted = openTable.byID.values.filter { $0.state == .preCommitting || $0.state == .terminating }.sorted { $0.txid < $1.txid }
        w.u32(sectionCount(preCommitted.count, sectionsMax.preCommitted, "preCommitted"))
        for tx in preCommitted {
            w.string(tx.txid.description)
            guard case .threePhase(let termination) = tx.commitProtocol else { preconditionFailure("pre-committed 2PC transaction") }
            CoordinatorRecordCoding.encodePreCommitBody(&w, participants: tx.branches.filter { $0.vote == .yes }.map(\.participant),
                                                        termination: termination, atMs: tx.decidedAtMs ?? tx.createdAtMs)
        }
        // request_ids of the decided transactions kept above (undecided ones die with a restart).
        // `.deciding` counts: its decision is in this snapshot although not yet durable on its
        // own, so a resubmission after a restart must find it rather than run the work again.
        let submitted = submissions.filter { _, txid in
            if let tx = openTable.byID[txid] {
                return tx.outcome == .committed || [.deciding, .preCommitting, .terminating].contains(tx.state)
            }
            return finished[txid]?.outcome == .committed
        }.sorted { $0.value < $1.value }
        w.u32(sectionCount(submitted.count, sectionsMax.submissions, "submissions"))
        for (requestID, txid) in submitted {
            w.string(txid.description)
            w.string(requestID)
        }
        // The forgotten-commit mark (absent in snapshots written before it existed).
        forgottenCommits.encode(&w)
        // One-phase windows, the one being recorded too: this checkpoint lets the log before it
        // go, that record included, and a commit may go out in it once that record is durable.
        var windows = onePhaseWindows
        if let asked = onePhaseWindowAsked { windows.add(asked) }
        windows.drop(through: forgottenCommits.through)
        windows.encode(&w)
        // Committed submissions whose transactions were forgotten (absent in snapshots written
        // before this memory existed).
        committedSubmissions.encode(&w)
        // Outcomes of forgotten transactions (absent in snapshots written before the ledger).
        outcomeLedger.encode(&w)
        // Which of the decided and recent commits above were 3PC (absent in snapshots written
        // before session 22, which rebuilt them all as 2PC: `GET` and the ledger said "2pc").
        w.u32(sectionCount(threePhase.count, sectionsMax.threePhase, "threePhase"))
        for (txid, termination) in threePhase {
            w.string(txid.description)
            w.u8(termination == .quorum ? 1 : 0)
        }
        // Heuristic-mixed transactions let go of `finished` (absent in snapshots written before
        // session 25). Without them a restart from a checkpoint lost the presumed-abort ones
        // from every view (the ledger never holds a presumption), and the decided ones came
        // back as ledger lines without their branches: the operator lost the record of which
        // participant's data needs repair.
        w.u32(sectionCount(mixedKeptOrder.count, sectionsMax.mixedKept, "mixedKept"))
        for txid in mixedKeptOrder {
            guard let tx = mixedKept[txid] else { preconditionFailure("mixedKeptOrder names \(txid), which mixedKept lacks") }
            CoordinatorRecordCoding.encodeMixedKept(&w, tx)
        }
        // Who forced each heuristic branch above, why and when (absent in snapshots written
        // before session 26): the coordinator's only record of the operator's audit at the
        // participant, once the report's own record is dropped with the log before this point.
        var forces: [(TxID, String, HeuristicForce)] = []
        for transactions in [openTable.byID, finished, mixedKept] {
            for tx in transactions.values {
                for b in tx.branches { if b.heuristic != nil, let f = b.heuristicForce { forces.append((tx.txid, b.participant.name, f)) } }
            }
        }
        forces.sort { ($0.0, $0.1) < ($1.0, $1.1) }
        w.u32(sectionCount(forces.count, sectionsMax.heuristicForces, "heuristicForces"))
        var forcesBytes = 0
        for (txid, name, force) in forces {
            w.string(txid.description)
            w.string(name)
            forcesBytes += (force.operatorName?.utf8.count ?? 0) + (force.reason?.utf8.count ?? 0)
            if forcesBytes <= config.heuristicForcesInSnapshotBytesMax {
                force.encode(&w)
            } else {
                HeuristicForce(operatorName: force.operatorName, reason: nil, forcedAtMs: force.forcedAtMs).encode(&w)
            }
        }
        // The forced transactions' audit entries, for the forced outcomes kept above (absent in
        // snapshots written before session 32): the only record of who forced a transaction,
        // when and why once the log holding its audit record is dropped after this point.
        // Bounded in bytes as kept (`operatorAuditsKeptBytesMax`).
        precondition(operatorAudits.bytes <= config.operatorAuditsKeptBytesMax, "operator audits hold \(operatorAudits.bytes) bytes, more than kept")
        let audits = operatorAudits.all
        w.u32(sectionCount(audits.count, sectionsMax.operatorAudits, "operatorAudits"))
        for (txid, kept) in audits { OperatorAudits.encodeKept(&w, txid, kept) }
        // The last commit each participant acknowledged (absent in snapshots written before
        // session 37): the finished transactions above come back without their branches, so
        // this is the only record of it once the log before this point is dropped.
        let acknowledged = lastAcknowledgedCommits.sorted { $0.key < $1.key }
        w.u32(sectionCount(acknowledged.count, Limits.acknowledgedCommitParticipantsMax, "acknowledgedCommits"))
        for (name, known) in acknowledged {
            w.string(name)
            w.bool(known.incarnation != nil)
            w.string(known.incarnation ?? "")
            w.string(known.txid.description)
        }
        return w.bytes
    }

    // MARK: - queries

    public func transaction(_ txid: TxID) -> Transaction? { openTable.byID[txid] ?? finished[txid] ?? mixedKept[txid] }

    /// `transaction(txid) != nil` without copying the transaction out (the node asks this of
    /// every commit request, to route it to the TCC machine or not).
    public func holds(_ txid: TxID) -> Bool {
        openTable.byID.index(forKey: txid) != nil || finished.index(forKey: txid) != nil || mixedKept.index(forKey: txid) != nil
    }

    /// The outcome of a transaction this coordinator no longer keeps whole, from its ledger
    /// (nil: not there; then it is answered 410 or 404 as `forgottenRefusal` says).
    public func forgottenOutcome(_ txid: TxID) -> OutcomeLedger.Entry? {
        guard openTable.byID[txid] == nil, finished[txid] == nil, mixedKept[txid] == nil else { return nil }
        return outcomeLedger.lookup(txid)
    }

    /// `GET /v1/transactions/{txid}` of a transaction known only from the ledger, or only from
    /// the memory of forced outcomes (a forced abort past a restart from a checkpoint: the
    /// checkpoint keeps no aborted transaction): the outcome, no branches or timeline
    /// (`forgotten: true`), and for a forced one the operator's audit entries when kept
    /// (`operatorAudits`). From the memory alone only with them: they say its protocol.
    public func forgottenView(_ txid: TxID) -> TransactionView? {
        guard openTable.byID[txid] == nil, finished[txid] == nil, mixedKept[txid] == nil else { return nil }
        let audit = operatorAudits[txid]
        /// An abort forced by an operator says so, and who and why, as it did while kept whole.
        func reason(_ outcome: Outcome) -> String? { outcome == .aborted ? operatorAbortReason(txid) : nil }
        if let entry = outcomeLedger.lookup(txid) {
            return TransactionView(forgotten: txid, protocol: entry.threePhase ? "3pc" : "2pc",
                                   state: entry.heuristicMixed ? State.heuristicMixed.rawValue : entry.outcome.rawValue,
                                   outcome: entry.outcome.rawValue, reason: reason(entry.outcome), audit: audit?.entries ?? [])
        }
        guard let forced = operatorOutcomes[txid], let audit else { return nil }
        return TransactionView(forgotten: txid, protocol: audit.commitProtocol.name, state: forced.rawValue, outcome: forced.rawValue,
                               reason: reason(forced), audit: audit.entries)
    }

    /// Heuristic-mixed transactions known only from the ledger (let go of `finished`), newest
    /// first: they stay listed, because their data still needs repair by hand.
    public func forgottenHeuristicMixed(limit: Int) -> [TxID] {
        outcomeLedger.heuristicMixed(limit: limit).filter { transaction($0) == nil }
    }

    /// How many `forgottenHeuristicMixed` would list, counted from the ledger's bits without
    /// making their txids: those it holds, less those still kept whole (a mixed transaction
    /// let go of `finished` goes into both the ledger and `mixedKept`).
    public var forgottenHeuristicMixedCount: Int {
        outcomeLedger.heuristicMixedCount - mixedKept.keys.reduce(0) { $0 + (outcomeLedger.lookup($1)?.heuristicMixed == true ? 1 : 0) }
    }

    /// Heuristic-mixed transactions this coordinator knows of: kept whole, or in the ledger.
    public var heuristicMixedCount: Int {
        finished.values.reduce(0) { $0 + ($1.state == .heuristicMixed ? 1 : 0) } + mixedKept.count + forgottenHeuristicMixedCount
    }

    /// Open and recently finished transactions (and heuristic-mixed ones kept past those),
    /// newest first.
    public func allTransactions() -> [Transaction] {
        (Array(openTable.byID.values) + Array(finished.values) + Array(mixedKept.values)).sorted { $0.txid > $1.txid }
    }

    /// Transactions counted as in doubt for `cohort_in_doubt`: every unfinished one.
    public var unfinishedCount: Int { openTable.count }

    // MARK: - events

    /// A fresh transaction id for another protocol's state machine (TCC) sharing this
    /// coordinator's epoch and sequence.
    public mutating func allocateTxID() -> TxID {
        let txid = TxID(coordinatorID: config.coordinatorID, epoch: epoch, sequence: nextSequence)
        nextSequence += 1
        return txid
    }

    /// After recovery: ids are never reused, so the epoch goes past `epochSeen` (the largest
    /// epoch another state machine sharing these ids found in its records).
    /// What a participant says (a no vote's reason, an error it answered, and the transport's
    /// error around it) is kept in the branch, its history, the timeline and the client's answer
    /// of up to 10,000 finished transactions: at most `Limits.reasonBytesMax` bytes of it, as the
    /// TCC coordinator keeps of a service's. A participant answering a 1 MB reason made each of
    /// those copies 1 MB.
    static func clippingParticipantText(_ event: Event) -> Event {
        func clip(_ text: String) -> String { text.clippedUTF8(toBytes: Limits.reasonBytesMax) }
        switch event {
        case .voted(let txid, let name, .no(let reason)):
            return .voted(txid, participant: name, vote: .no(reason: clip(reason)))
        case .prepareFailed(let txid, let name, let error):
            return .prepareFailed(txid, participant: name, error: clip(error))
        case .onePhaseAnswered(let txid, let name, let outcome, let reason?, let readOnly):
            return .onePhaseAnswered(txid, participant: name, outcome: outcome, reason: clip(reason), readOnly: readOnly)
        case .deliveryFailed(let txid, let name, let error):
            return .deliveryFailed(txid, participant: name, error: clip(error))
        case .preCommitRefused(let txid, let name, let reason):
            return .preCommitRefused(txid, participant: name, reason: clip(reason))
        default:
            return event
        }
    }

    public mutating func raiseEpoch(past epochSeen: UInt64) {
        if epoch <= epochSeen {
            epoch = epochSeen + 1
            nextSequence = 1
        }
    }

    public mutating func on(_ event: Event, nowMs: Int64) -> [Action] {
        switch Self.clippingParticipantText(event) {
        case .begin(let request, let timeoutMs, let commitProtocol):
            return begin(request, timeoutMs: timeoutMs, commitProtocol: commitProtocol, nowMs: nowMs)
        case .submit(let request, let timeoutMs, let commitProtocol, let branches, let requestID):
            return submit(request, timeoutMs: timeoutMs, commitProtocol: commitProtocol, branches: branches, requestID: requestID, nowMs: nowMs)
        case .preCommitDurable(let txid):
            return preCommitDurable(txid, nowMs: nowMs)
        case .preCommitAcknowledged(let txid, let name):
            return preCommitAcknowledged(txid, name, nowMs: nowMs)
        case .preCommitRefused(let txid, let name, let reason):
            return preCommitRefused(txid, name, reason: reason, nowMs: nowMs)
        case .stateAnswered(let txid, let name, let state):
            return stateAnswered(txid, name, state, nowMs: nowMs)
        case .onePhaseWindowDurable(let window):
            onePhaseWindows.add(window)
            if onePhaseWindowAsked == window { onePhaseWindowAsked = nil }
            return releaseOnePhaseWaiters(windowRefused: false, nowMs: nowMs)
        case .onePhaseWindowRefused(let window):
            guard onePhaseWindowAsked == window else { return [] }
            onePhaseWindowAsked = nil
            return releaseOnePhaseWaiters(windowRefused: true, nowMs: nowMs)
        case .register(let request, let text, let participant):
            return register(request, text, participant, nowMs: nowMs)
        case .commit(let request, let text, let named):
            return commitRequested(request, text, named: named, nowMs: nowMs)
        case .abort(let request, let text, let named):
            return abortRequested(request, text, named: named, nowMs: nowMs)
        case .voted(let txid, let name, let vote):
            return voted(txid, name, vote, nowMs: nowMs)
        case .prepareFailed(let txid, let name, let error):
            guard var tx = openTable.byID[txid], tx.state == .preparing, let i = tx.branchIndex(name),
                  tx.branches[i].state == .prepareSent else { return [] }
            tx.branches[i].lastError = error
            tx.branches[i].attempts += 1
            openTable[txid] = tx
            return decideAbort(txid, reason: "prepare to \(name) failed: \(error)", nowMs: nowMs)
        case .acknowledged(let txid, let name):
            return acknowledged(txid, name, nowMs: nowMs)
        case .onePhaseAnswered(let txid, let name, let outcome, let reason, let readOnly):
            return onePhaseAnswered(txid, name, outcome, reason, readOnly: readOnly, nowMs: nowMs)
        case .deliveryFailed(let txid, let name, let error):
            return deliveryFailed(txid, name, error, nowMs: nowMs)
        case .decisionDurable(let txid):
            return decisionDurable(txid, nowMs: nowMs)
        case .decisionRefused(let txid, let reason):
            guard var tx = openTable.byID[txid] else { return [] }
            if tx.state == .deciding, case .threePhase = tx.commitProtocol {
                // Past the pre-commit, participants may terminate with commit: never abort
                // here; learn the outcome instead.
                tx.state = .preCommitting
                openTable[txid] = tx
                return startLearning(txid, because: "commit record refused by the log: \(reason)", nowMs: nowMs)
            }
            guard tx.state == .deciding || tx.state == .preCommitting else { return [] }
            return decideAbort(txid, reason: "\(tx.state == .deciding ? "commit" : "pre-commit") record refused by the log: \(reason)", nowMs: nowMs)
        case .timerFired(let timer):
            return timerFired(timer, nowMs: nowMs)
        case .inquiry(let request, let text, let participant):
            let reply: Action = .reply(request, .inquiry(text, inquire(text)))
            guard let participant else { return [reply] }
            return [reply] + inquired(text, by: participant, nowMs: nowMs)
        case .force(let request, let text, let force):
            return forceRequested(request, text, force, nowMs: nowMs)
        case .auditDurable(let txid):
            return auditDurable(txid, nowMs: nowMs)
        case .abortLearnedDurable(let txid):
            guard let name = abortsLearned.removeValue(forKey: txid), openTable.byID[txid]?.state == .terminating else { return [] }
            return decideAbort(txid, reason: "aborted by the participants' termination protocol (learned from \(name))", nowMs: nowMs)
        case .abortLearnedRefused(let txid, let reason):
            guard abortsLearned.removeValue(forKey: txid) != nil, var tx = openTable.byID[txid], tx.state == .terminating else { return [] }
            // Nothing was written and nobody was told: ask again later (the participant that
            // aborted keeps its outcome for a long while).
            tx.events.append(TimelineEvent(atMs: nowMs, event: "learning", participant: nil, detail: "the learned abort's record was refused by the log: \(reason); asking again"))
            openTable[txid] = tx
            return [.setTimer(.learn(txid), afterMs: config.learnIntervalMs)]
        case .retryNow(let request, let text):
            return retryNow(request, text, nowMs: nowMs)
        case .heuristicReported(let request, let text, let participant, let outcome, let reportedForce):
            guard let txid = TxID(text), txid.coordinatorID == config.coordinatorID else {
                return request.map { [.reply($0, .error(RequestError(400, "\(text.prefix(80)) is not a transaction of this coordinator")))] } ?? []
            }
            if let refusal = heuristicReportRefusal(txid, participant: participant) ?? reportedForce?.refusal() {
                return request.map { [.reply($0, .error(refusal))] } ?? []
            }
            let forcedBy = reportedForce?.isEmpty == true ? nil : reportedForce
            if let request, (pendingHeuristics[txid]?.count ?? 0) >= Limits.waitersPerTransactionMax {
                return [.reply(request, .error(RequestError(503, "\(pendingHeuristics[txid]!.count) heuristic reports already wait for \(txid)'s records; retry later")))]
            }
            if let joined = pendingHeuristics[txid]?.first(where: { $0.participant == participant && $0.outcome == outcome && (forcedBy == nil || $0.forcedBy == forcedBy) }) {
                // A record saying as much is being written: this report is answered with it.
                if let request { pendingHeuristics[txid]!.append((request, participant, outcome, forcedBy, nowMs, joined.record)) }
                return []
            }
            heuristicRecordsAsked += 1
            pendingHeuristics[txid, default: []].append((request, participant, outcome, forcedBy, nowMs, heuristicRecordsAsked))
            return [.log(.heuristic(txid, participant: participant, outcome: outcome, forcedBy: forcedBy), force: true)]
        case .auditRefused(let txid, let reason):
            guard let pending = pendingForces.removeValue(forKey: txid) else { return [] }
            // Votes that came in while the audit was written waited for it: decide now.
            return [.reply(pending.request, .error(RequestError(503, "cannot record the forced decision now: \(reason); nothing was changed, retry")))]
                + decideAfterVotes(txid, nowMs: nowMs)
        case .heuristicRefused(let txid, let participant, let reason):
            // The refused record is the newest asked for this participant (the log refuses at
            // once, as it is asked): the reports riding on it are answered 503, nothing noted.
            guard let record = pendingHeuristics[txid]?.filter({ $0.participant == participant }).map(\.record).max() else { return [] }
            let refused = pendingHeuristics[txid]!.filter { $0.participant == participant && $0.record == record }
            pendingHeuristics[txid]!.removeAll { $0.participant == participant && $0.record == record }
            if pendingHeuristics[txid]!.isEmpty { pendingHeuristics.removeValue(forKey: txid) }
            return refused.compactMap { $0.request.map { .reply($0, .error(RequestError(503, "cannot record the heuristic report now: \(reason); nothing was changed, retry"))) } }
        case .heuristicDurable(let txid, let participant):
            let mine = pendingHeuristics[txid]?.filter { $0.participant == participant } ?? []
            guard let record = mine.map(\.record).min() else { return [] }
            let waiting = mine.filter { $0.record == record }
            pendingHeuristics[txid]?.removeAll { $0.participant == participant && $0.record == record }
            if pendingHeuristics[txid]?.isEmpty == true { pendingHeuristics.removeValue(forKey: txid) }
            guard let outcome = waiting.first?.outcome else { return [] }
            // The newest report that says who forced it (its record is among those written).
            let forcedBy = waiting.last { $0.forcedBy != nil }?.forcedBy
            var actions = noteHeuristic(txid, participant: participant, outcome: outcome, forcedBy: forcedBy, nowMs: nowMs)
            let mixed = transaction(txid)?.state == .heuristicMixed
            for w in waiting { if let r = w.request { actions.append(.reply(r, .heuristicNoted(txid.description, mixed: mixed))) } }
            return actions
        }
    }

    /// What a participant that voted yes is told when it asks.
    public func inquire(_ text: String) -> InquiryAnswer {
        guard let txid = TxID(text) else { return .unknownCoordinator }
        guard txid.coordinatorID == config.coordinatorID else { return .unknownCoordinator }
        if let tx = openTable.byID[txid] ?? finished[txid] {
            switch tx.state {
            case .active, .preparing, .preCommitting, .terminating, .deciding: return .pending
            case .committing, .committed: return .committed
            case .aborted: return .aborted
            case .heuristicMixed: return tx.outcome == .committed ? .committed : .aborted
            }
        }
        if let forced = operatorOutcomes[txid] {
            return forced == .committed ? .committed : .aborted
        }
        // A participant that acknowledged the outcome does not ask again; one whose log was
        // restored from a backup might, and a forgotten commit is still a commit.
        if let gone = outcomeLedger.lookup(txid) {
            return gone.outcome == .committed ? .committed : .aborted
        }
        // Presumed abort: no record means the transaction never reached a durable commit
        // decision, and it never will (undecided transactions do not survive a restart, and
        // this id is not open).
        return .aborted
    }

    private mutating func begin(_ request: RequestID, timeoutMs: Int64?, commitProtocol: CommitProtocol, nowMs: Int64) -> [Action] {
        switch openTransaction(timeoutMs: timeoutMs, commitProtocol: commitProtocol, nowMs: nowMs) {
        case .failure(let e): return [.reply(request, .error(e))]
        case .success(let txid):
            let timeout = openTable.byID[txid]!.timeoutMs
            return [.setTimer(.transactionTimeout(txid), afterMs: timeout), .reply(request, .begun(txid, timeoutMs: timeout))]
        }
    }

    /// A new active transaction with no branches, within the open-transaction and timeout limits.
    private mutating func openTransaction(timeoutMs: Int64?, commitProtocol: CommitProtocol, nowMs: Int64,
                                          event: String = "begun") -> Result<TxID, RequestError> {
        // Undecided and committing transactions are bounded apart: a participant that stops
        // acknowledging commits (down, or answering 503) leaves its committed transactions
        // open until it answers, and when they shared one bound of 10,000 they refused every
        // new transaction, for every participant, until it did (a black-box probe: 10,000
        // parked toward one fake participant, every begin 503 "retry later" for good).
        let committing = openTable.settlingCount
        guard openTable.count - committing < config.openTransactionsMax else {
            return .failure(RequestError(503, "too many open transactions (limit \(config.openTransactionsMax) undecided); retry later"))
        }
        guard committing < config.committingTransactionsMax else {
            return .failure(RequestError(503, "\(committing) committed transactions wait for participants to acknowledge (limit \(config.committingTransactionsMax)); new transactions are refused until they do: txctl list --state parked shows which participants"))
        }
        let timeout = timeoutMs ?? config.timeoutMsDefault
        guard timeout > 0, timeout <= config.timeoutMsMax else {
            return .failure(RequestError(400, "timeout_ms must be between 1 and \(config.timeoutMsMax)"))
        }
        let txid = TxID(coordinatorID: config.coordinatorID, epoch: epoch, sequence: nextSequence)
        nextSequence += 1
        var tx = Transaction(txid: txid, state: .active, createdAtMs: nowMs, timeoutMs: timeout)
        tx.commitProtocol = commitProtocol
        var detail = "\(commitProtocol.name), timeout \(timeout)ms"
        if case .threePhase(let t) = commitProtocol { detail += ", \(t.rawValue) termination" }
        tx.events.append(TimelineEvent(atMs: nowMs, event: event, participant: nil, detail: detail))
        openTable[txid] = tx
        return .success(txid)
    }

    /// Why a participant reference cannot be a branch, if it cannot.
    private func invalidParticipant(_ participant: ParticipantRef) -> RequestError? {
        guard participant.sizeRefusal == nil, (participant.incarnation?.utf8.count ?? 0) <= Limits.incarnationBytesMax else {
            return RequestError(400, "participant name and url must be 1-\(Limits.participantNameBytesMax) and 1-\(Limits.participantURLBytesMax) bytes")
        }
        // Refused here rather than found out at prepare, where it could only abort.
        guard participant.url.hasPrefix("http://"), participant.url.utf8.count > 7 else {
            return RequestError(400, "participant url must be an http:// URL, got \"\(participant.url.prefix(80))\"")
        }
        return nil
    }

    /// Begin, join every branch and commit, as one request. The branches go straight to
    /// prepare with their work; the answer is the outcome, as for `commit`. Never one-phase:
    /// a repeated one-phase commit carrying work could apply it twice at a participant that
    /// lost its memory of the first in a restart, while a repeated prepare is answered by vote.
    private mutating func submit(_ request: RequestID, timeoutMs: Int64?, commitProtocol: CommitProtocol,
                                 branches: [SubmittedBranch], requestID: String?, nowMs: Int64) -> [Action] {
        if let requestID {
            if let e = RequestError.invalidRequestID(requestID) { return [.reply(request, .error(e))] }
            if let earlier = submissions[requestID] {
                // The same submission again (a client's retry, a duplicating network): the first
                // one's outcome, never a second run of the work.
                if openTable.byID[earlier] != nil || finished[earlier] != nil { stats.repeatedSubmissions += 1 }
                if var tx = openTable.byID[earlier] {
                    switch tx.state {
                    case .committing: return [.reply(request, .outcome(earlier, .committed, reason: nil))]
                    default:
                        if let full = Self.waitersFull(tx, request) { return full }
                        tx.waiters.append(request)
                        openTable[earlier] = tx
                        return []
                    }
                }
                if let done = finished[earlier] {
                    return [.reply(request, .outcome(earlier, done.outcome ?? .aborted, reason: done.reason))]
                }
            }
            if let gone = committedSubmissions.lookup(requestID) {
                // Committed and forgotten as a transaction since: still never a second run.
                stats.repeatedSubmissions += 1
                stats.repeatedSubmissionsFromMemory += 1
                return [.reply(request, .outcome(gone.txid, .committed, reason: nil))]
            }
        }
        guard !branches.isEmpty, branches.count <= config.branchesPerTransactionMax else {
            return [.reply(request, .error(RequestError(400, "a submitted transaction needs 1-\(config.branchesPerTransactionMax) branches")))]
        }
        var names = Set<String>(), urls = Set<String>()
        for b in branches {
            if let e = invalidParticipant(b.participant) { return [.reply(request, .error(e))] }
            // A participant stages the first prepare with work for a transaction and answers the
            // rest from that branch: a second branch to the same place would lose its work.
            guard names.insert(b.participant.name).inserted, urls.insert(b.participant.url).inserted else {
                return [.reply(request, .error(RequestError(400, "participant \(b.participant.name) (\(b.participant.url)) appears twice; give each participant one branch")))]
            }
        }
        // The work is held until each branch votes: bounded in bytes, as the agent bounds the
        // work it stages. 10,000 undecided submissions of up to a request's size each were over
        // 10 GiB (a review, session 28). Until then the table counts it; it lets the bytes go as
        // each branch votes and when the transaction leaves it (committed, aborted, timed out;
        // a restart holds none).
        let workBytes = branches.map { Self.heldBytes($0.work) }
        let submittedBytes = workBytes.reduce(0, +)
        guard submittedBytes <= config.submittedWorkBytesMax else {
            return [.reply(request, .error(RequestError(413, "the submitted work holds \(submittedBytes) bytes, more than this coordinator holds for all submissions together (\(config.submittedWorkBytesMax))")))]
        }
        guard openTable.workBytes + submittedBytes <= config.submittedWorkBytesMax else {
            return [.reply(request, .error(RequestError(503, "submitted work waiting for its participants' votes holds \(openTable.workBytes) bytes here, and this submission's \(submittedBytes) would pass the limit (\(config.submittedWorkBytesMax)); retry later")))]
        }
        let txid: TxID
        switch openTransaction(timeoutMs: timeoutMs, commitProtocol: commitProtocol, nowMs: nowMs, event: "submitted") {
        case .failure(let e): return [.reply(request, .error(e))]
        case .success(let t): txid = t
        }
        var tx = openTable.removeValue(forKey: txid)!
        if let requestID {
            tx.requestID = requestID
            submissions[requestID] = txid
        }
        for (b, bytes) in zip(branches, workBytes) {
            var branch = Branch(participant: b.participant, state: .registered)
            branch.work = b.work
            branch.workBytes = bytes
            tx.branches.append(branch)
        }
        tx.waiters.append(request)
        return [.setTimer(.transactionTimeout(txid), afterMs: tx.timeoutMs)] + startPrepare(txid, &tx, onePhaseAllowed: false, nowMs: nowMs)
    }

    /// About what a submitted branch's work holds in memory: a node per JSON value, and the bytes
    /// of its strings and member names. Not the request's text: `[0,0,...]` is two bytes a value
    /// there and a whole node here.
    public static func heldBytes(_ node: JSONNode) -> Int {
        let nodeBytes = MemoryLayout<JSONNode>.stride
        switch node {
        case .null, .bool, .int: return nodeBytes
        case .string(let text), .number(let text): return nodeBytes + text.utf8.count
        case .array(let items): return items.reduce(nodeBytes) { $0 + heldBytes($1) }
        case .object(let members):
            return members.reduce(nodeBytes) { $0 + MemoryLayout<String>.stride + $1.0.utf8.count + heldBytes($1.1) }
        }
    }

    /// Submitted work held until its branches vote, in bytes (`heldBytes`), bounded by
    /// `Config.submittedWorkBytesMax`.
    public var submittedWorkBytes: Int { openTable.workBytes }

    /// A repeated commit (or submission) past `Limits.waitersPerTransactionMax` is answered at
    /// once instead of joining the wait.
    static func waitersFull(_ tx: Transaction, _ request: RequestID) -> [Action]? {
        guard tx.waiters.count >= Limits.waitersPerTransactionMax else { return nil }
        return [.reply(request, .error(RequestError(503, "\(tx.waiters.count) requests already wait for the outcome of \(tx.txid); ask for it later (GET /v1/transactions/\(tx.txid))")))]
    }

    /// What this coordinator knows of the submission with `requestID`, running nothing: the
    /// transaction while it is kept, else the txid of a committed one the memory still has;
    /// nil when a submission with it now would run.
    public func submission(_ requestID: String) -> SubmissionView? {
        if let txid = submissions[requestID], let tx = openTable.byID[txid] ?? finished[txid] {
            return SubmissionView(requestID: requestID, txid: txid.description, state: tx.state.rawValue,
                                  outcome: tx.outcome?.rawValue, transactionKept: true)
        }
        if let gone = committedSubmissions.lookup(requestID) {
            return SubmissionView(requestID: requestID, txid: gone.txid.description, state: "committed", outcome: "committed", transactionKept: false)
        }
        return nil
    }

    /// The 410 for an unknown txid that may be a commit this coordinator forgot (nil: unknown
    /// means never committed here).
    public func forgottenRefusal(_ txid: TxID) -> RequestError? {
        guard txid.coordinatorID == config.coordinatorID else { return nil }
        return forgottenCommits.refusal(txid, kept: config.finishedTransactionsKept) ?? onePhaseWindows.refusal(txid, currentEpoch: epoch)
    }

    private func lookup(_ text: String) -> Result<TxID, RequestError> {
        guard let txid = TxID(text) else { return .failure(RequestError(400, "malformed txid \"\(text.prefix(80))\"")) }
        guard openTable.byID[txid] != nil || finished[txid] != nil else {
            return .failure(forgottenRefusal(txid) ?? RequestError(404, "unknown transaction \(text)"))
        }
        return .success(txid)
    }

    private mutating func register(_ request: RequestID, _ text: String, _ participant: ParticipantRef, nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            guard let (txid, gone) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            return [.reply(request, .error(RequestError(409, "transaction \(txid) is \(gone.outcome.rawValue) (forgotten); it cannot take new branches")))]
        case .success(let t): txid = t
        }
        guard var tx = openTable.byID[txid] else {
            let state = finished[txid]?.state.rawValue ?? "finished"
            return [.reply(request, .error(RequestError(409, "transaction \(txid) is \(state); it cannot take new branches")))]
        }
        if let e = join(&tx, participant, nowMs: nowMs, detail: participant.url) { return [.reply(request, .error(e))] }
        // Only the registrant's own incarnation's figure: the answer does not say whose it is.
        let told = lastAcknowledgedCommit(of: participant).flatMap { $0.incarnation == participant.incarnation ? $0 : nil }
        if told != nil, let i = tx.branchIndex(participant.name) { tx.branches[i].checkedAtRegistration = true }
        openTable[txid] = tx
        return [.reply(request, .registered(txid, timeoutMs: tx.timeoutMs, lastAcknowledgedCommit: told))]
    }

    /// Adds `participant` to `tx` as a registered branch, or finds it there already (a repeated
    /// registration or naming is harmless; a second URL or incarnation for the same name is
    /// not). Branches join only while the transaction is active; an existing one may be named
    /// again while it prepares (a retried registration or commit).
    private func join(_ tx: inout Transaction, _ participant: ParticipantRef, nowMs: Int64, detail: String) -> RequestError? {
        if let e = invalidParticipant(participant) { return e }
        if let i = tx.branchIndex(participant.name) {
            guard tx.branches[i].participant == participant else {
                return RequestError(409, "participant \(participant.name) already joined as \(tx.branches[i].participant.url) (incarnation \(tx.branches[i].participant.incarnation ?? "none"))")
            }
            if let joined = tx.branches[i].participant.session, let now = participant.session, joined != now {
                // The process that staged this branch's earlier work is gone, and the work with
                // it: joining again would let the transaction commit without it.
                return RequestError(409, "participant \(participant.name) restarted since it joined transaction \(tx.txid) "
                                    + "(session \(String(joined, radix: 16)), now \(String(now, radix: 16))): "
                                    + "the work it staged before is lost; abort the transaction and run it again")
            }
            guard tx.state == .active || tx.state == .preparing else {
                return RequestError(409, "transaction \(tx.txid) is \(tx.state.rawValue)")
            }
            return nil
        }
        guard tx.state == .active else {
            return RequestError(409, "transaction \(tx.txid) is \(tx.state.rawValue); it cannot take new branches")
        }
        guard tx.branches.count < config.branchesPerTransactionMax else {
            return RequestError(429, "transaction \(tx.txid) has the maximum of \(config.branchesPerTransactionMax) branches")
        }
        tx.branches.append(Branch(participant: participant, state: .registered))
        tx.events.append(TimelineEvent(atMs: nowMs, event: "joined", participant: participant.name, detail: detail))
        return nil
    }

    /// Joins the branches a client named with its commit or abort; on a refusal nothing is
    /// joined and the transaction is as it was. Past `active` (a retried commit) it only checks
    /// that every named branch is in: one that is not would be left out of the outcome.
    private func joinNamed(_ tx: inout Transaction, _ named: [ParticipantRef], nowMs: Int64) -> RequestError? {
        guard tx.state == .active else {
            for p in named where tx.branchIndex(p.name).map({ tx.branches[$0].participant != p }) ?? true {
                return RequestError(409, "transaction \(tx.txid) is \(tx.state.rawValue) without the named branch \(p.name) at \(p.url)")
            }
            return nil
        }
        var joined = tx
        for participant in named {
            if let e = join(&joined, participant, nowMs: nowMs, detail: "\(participant.url), named by the client") { return e }
        }
        tx = joined
        return nil
    }

    /// Named branches that a transaction aborted before it heard of them (its timeout, say) are
    /// told at once, so that they free their locks now instead of when they expire. Safe: the
    /// abort is decided, and a branch that never heard of the transaction ignores it.
    private func abortNamed(_ txid: TxID, _ done: Transaction, _ named: [ParticipantRef]) -> [Action] {
        guard done.outcome == .aborted else { return [] }
        return named.filter { p in invalidParticipant(p) == nil && done.branchIndex(p.name) == nil }.map { .send(txid, to: $0, .abort) }
    }

    /// The same for a forgotten transaction: its branches are not known, so every named one.
    private func abortNamed(_ txid: TxID, _ gone: OutcomeLedger.Entry, _ named: [ParticipantRef]) -> [Action] {
        guard gone.outcome == .aborted else { return [] }
        return named.filter { invalidParticipant($0) == nil }.map { .send(txid, to: $0, .abort) }
    }

    /// A forgotten transaction's ledger entry, counted as an answer given from the ledger.
    private mutating func answerFromLedger(_ text: String) -> (TxID, OutcomeLedger.Entry)? {
        guard let txid = TxID(text) else { return nil }
        if let gone = forgottenOutcome(txid) {
            stats.answeredFromLedger += 1
            return (txid, gone)
        }
        // A forced abort past a restart from a checkpoint (which keeps no aborted transaction,
        // and the ledger holds only decided ones let go of `finished`): the memory of forced
        // outcomes has it. Without this a client's commit or abort, and `txctl retry`, answered
        // 404 "unknown transaction" while `GET` showed it forced.
        guard openTable.byID[txid] == nil, finished[txid] == nil, mixedKept[txid] == nil,
              let forced = operatorOutcomes[txid] else { return nil }
        var threePhase = false
        if case .threePhase? = operatorAudits[txid]?.commitProtocol { threePhase = true }
        return (txid, OutcomeLedger.Entry(outcome: forced, heuristicMixed: false, threePhase: threePhase))
    }

    /// The reason a forgotten abort is answered with: the operator's, when an operator forced it
    /// and its entries are kept, as while the transaction was kept whole.
    private func forgottenAbortReason(_ txid: TxID) -> String {
        operatorAbortReason(txid) ?? Coordinator.forgottenAbortReason
    }

    /// "forced by operator NAME: REASON" for an abort an operator forced whose entries are kept.
    private func operatorAbortReason(_ txid: TxID) -> String? {
        guard operatorOutcomes[txid] == .aborted, let last = operatorAudits[txid]?.entries.last else { return nil }
        return "forced by operator \(last.operatorName): \(last.reason)"
    }

    private mutating func commitRequested(_ request: RequestID, _ text: String, named: [ParticipantRef], nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            // A resent commit of a forgotten transaction: its outcome, as while it was kept.
            guard let (txid, gone) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            let reason = gone.outcome == .aborted ? forgottenAbortReason(txid) : nil
            return [.reply(request, .outcome(txid, gone.outcome, reason: reason))] + abortNamed(txid, gone, named)
        case .success(let t): txid = t
        }
        guard var tx = openTable.byID[txid] else {
            let done = finished[txid]!
            return [.reply(request, .outcome(txid, done.outcome ?? .aborted, reason: done.reason))] + abortNamed(txid, done, named)
        }
        if tx.state == .active, pendingForces[txid] != nil {
            // An operator's forced abort is being recorded; starting a (one-phase) commit now
            // could contradict it.
            return [.reply(request, .error(RequestError(409, "an operator is forcing \(txid) to abort")))]
        }
        if !named.isEmpty {
            if let e = joinNamed(&tx, named, nowMs: nowMs) { return [.reply(request, .error(e))] }
        }
        switch tx.state {
        case .committing:
            return [.reply(request, .outcome(txid, .committed, reason: nil))]
        case .preparing, .preCommitting, .terminating, .deciding:
            if let full = Self.waitersFull(tx, request) { return full }
            tx.waiters.append(request)
            openTable[txid] = tx
            return []
        case .committed, .aborted, .heuristicMixed:
            preconditionFailure("finished transaction \(txid) still open")
        case .active:
            break
        }
        // Out of the table while it changes: `tx` is then the only reference to its arrays, so
        // the edits below do not copy them (copy-on-write); every path puts it back.
        openTable.removeValue(forKey: txid)
        tx.waiters.append(request)
        tx.events.append(TimelineEvent(atMs: nowMs, event: "commit-requested", participant: nil, detail: nil))
        if tx.branches.isEmpty {
            // Nothing to prepare, but the client is told "committed": a forced decision record
            // (with no participants) first. Answered at once, it left nothing durable, and after
            // a restart the same txid read as aborted (presumed abort: `GET` 404, a resent
            // commit refused), an outcome flip (a review).
            tx.state = .deciding
            tx.decidedAtMs = nowMs
            openTable[txid] = tx
            return submissionRecord(tx) + [.log(.commitDecision(txid, participants: [], decidedAtMs: nowMs), force: true)]
        }
        return startPrepare(txid, &tx, onePhaseAllowed: true, nowMs: nowMs)
    }

    /// Sends every branch its prepare (or its one-phase commit, or asks for the one-phase window
    /// it waits for) and puts `tx`, taken out of `open` by the caller, back.
    private mutating func startPrepare(_ txid: TxID, _ tx: inout Transaction, onePhaseAllowed: Bool, nowMs: Int64) -> [Action] {
        tx.state = .preparing
        var threePhase: Termination?
        if case .threePhase(let t) = tx.commitProtocol { threePhase = t }
        // A single branch commits in one phase under 2PC; 3PC keeps its phases (the point of
        // 3PC is what happens when the coordinator fails between them).
        let onePhase = onePhaseAllowed && config.onePhaseCommit && tx.branches.count == 1 && threePhase == nil
            && txid.epoch == epoch
        tx.onePhase = onePhase
        if onePhase && !onePhaseWindows.covers(txid) {
            // A one-phase commit leaves no record here, so it goes out only inside a durable
            // window (after a restart an unknown txid there reads 410, not 404). It waits for
            // one: one forced record per `Limits.onePhaseWindowSequences` txids.
            awaitingOnePhaseWindow.append(txid)
            tx.events.append(TimelineEvent(atMs: nowMs, event: "one-phase-commit-waits", participant: nil, detail: "for a durable one-phase window"))
            openTable[txid] = tx
            return askOnePhaseWindow(for: txid)
        }
        return sendPrepares(txid, &tx, nowMs: nowMs)
    }

    /// Sends every branch of `tx` (in `preparing`) its prepare, or its one-phase commit, and
    /// puts `tx` back in `open`.
    private mutating func sendPrepares(_ txid: TxID, _ tx: inout Transaction, nowMs: Int64) -> [Action] {
        var threePhase: Termination?
        if case .threePhase(let t) = tx.commitProtocol { threePhase = t }
        let everyone = tx.branches.map(\.participant)
        var actions: [Action] = []
        for i in tx.branches.indices {
            tx.branches[i].state = .prepareSent
            tx.branches[i].attempts = 1
            actions.append(.send(txid, to: tx.branches[i].participant,
                                 .prepare(onePhase: tx.onePhase, participants: everyone, threePhase: threePhase, work: tx.branches[i].work,
                                          lastAcknowledgedCommit: lastAcknowledgedCommitToTell(tx.branches[i]))))
        }
        tx.events.append(TimelineEvent(atMs: nowMs, event: tx.onePhase ? "one-phase-commit-sent" : "prepare-sent", participant: nil, detail: "\(tx.branches.count) branch(es)"))
        openTable[txid] = tx
        return actions
    }

    /// One-phase commits that wait for a durable window, once one is durable (or refused: they
    /// go on in two phases).
    private mutating func releaseOnePhaseWaiters(windowRefused: Bool, nowMs: Int64) -> [Action] {
        let waiting = awaitingOnePhaseWindow
        awaitingOnePhaseWindow = []
        var actions: [Action] = []
        for txid in waiting {
            guard var tx = openTable.byID[txid], tx.awaitsOnePhaseWindow else { continue }
            if windowRefused {
                tx.onePhase = false
                tx.events.append(TimelineEvent(atMs: nowMs, event: "one-phase-window-refused", participant: nil, detail: "commits in two phases"))
            } else if !onePhaseWindows.covers(txid) {
                // Outside the window that just became durable (an older txid): ask for another.
                awaitingOnePhaseWindow.append(txid)
                actions += askOnePhaseWindow(for: txid)
                continue
            }
            openTable.removeValue(forKey: txid)
            actions += sendPrepares(txid, &tx, nowMs: nowMs)
        }
        return actions
    }

    /// Records a window from `txid` past every id handed out so far, unless one is on its way.
    private mutating func askOnePhaseWindow(for txid: TxID) -> [Action] {
        precondition(txid.epoch == epoch, "one-phase window asked for \(txid) in epoch \(epoch)")
        guard onePhaseWindowAsked == nil else { return [] }
        let lastIssued = max(txid.sequence, nextSequence &- 1)
        let (through, overflow) = lastIssued.addingReportingOverflow(Limits.onePhaseWindowSequences)
        let window = OnePhaseWindow(from: txid, through: TxID(coordinatorID: config.coordinatorID, epoch: epoch,
                                                              sequence: overflow ? UInt64.max : through))
        onePhaseWindowAsked = window
        return [.log(.onePhaseWindow(window), force: true)]
    }

    private mutating func abortRequested(_ request: RequestID, _ text: String, named: [ParticipantRef], nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            guard let (txid, gone) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            if gone.outcome == .committed {
                return [.reply(request, .error(RequestError(409, "transaction \(txid) already committed")))]
            }
            return [.reply(request, .outcome(txid, .aborted, reason: forgottenAbortReason(txid)))] + abortNamed(txid, gone, named)
        case .success(let t): txid = t
        }
        guard var tx = openTable.byID[txid] else {
            let done = finished[txid]!
            if done.outcome == .committed {
                return [.reply(request, .error(RequestError(409, "transaction \(txid) already committed")))]
            }
            return [.reply(request, .outcome(txid, .aborted, reason: done.reason))] + abortNamed(txid, done, named)
        }
        if tx.state == .active, !named.isEmpty {
            // Join the named branches so that they hear the abort now rather than hold their
            // locks until they expire.
            if let e = joinNamed(&tx, named, nowMs: nowMs) { return [.reply(request, .error(e))] }
            openTable[txid] = tx
        }
        switch tx.state {
        case .active:
            return decideAbort(txid, reason: Coordinator.clientAbortReason, nowMs: nowMs) + [.reply(request, .outcome(txid, .aborted, reason: Coordinator.clientAbortReason))]
        case .preparing where !tx.onePhase:
            return decideAbort(txid, reason: Coordinator.clientAbortReason, nowMs: nowMs) + [.reply(request, .outcome(txid, .aborted, reason: Coordinator.clientAbortReason))]
        case .preparing where tx.awaitsOnePhaseWindow:
            // A one-phase commit still waiting for its window: nothing went out, so it can still
            // abort (and its branch is told, as in two phases).
            tx.onePhase = false
            openTable[txid] = tx
            return decideAbort(txid, reason: Coordinator.clientAbortReason, nowMs: nowMs) + [.reply(request, .outcome(txid, .aborted, reason: Coordinator.clientAbortReason))]
        case .preparing, .deciding, .preCommitting, .terminating:
            // A one-phase commit is in the participant's hands; a forced commit record is on
            // its way to disk; a 3PC pre-commit may already have reached participants, whose
            // termination protocol could commit. None can be taken back by the client.
            return [.reply(request, .error(RequestError(409, "transaction \(txid) is \(tx.state.rawValue); it can no longer be aborted")))]
        case .committing, .committed:
            return [.reply(request, .error(RequestError(409, "transaction \(txid) already committed")))]
        case .aborted, .heuristicMixed:
            preconditionFailure("finished transaction \(txid) still open")
        }
    }

    private mutating func voted(_ txid: TxID, _ name: String, _ vote: Vote, nowMs: Int64) -> [Action] {
        // Late and duplicate votes (after a decision) change nothing.
        guard var tx = openTable.byID[txid], tx.state == .preparing, !tx.onePhase, let i = tx.branchIndex(name),
              tx.branches[i].state == .prepareSent else { return [] }
        // Out of the table while it changes: `tx` is then the only reference to its arrays, so
        // the edits below do not copy them (copy-on-write); every path puts it back.
        openTable.removeValue(forKey: txid)
        tx.branches[i].vote = vote
        tx.branches[i].work = nil
        tx.branches[i].lastError = nil
        switch vote {
        case .yes: tx.branches[i].state = .prepared
        case .readOnly: tx.branches[i].state = .readOnly
        case .no: tx.branches[i].state = .votedNo
        }
        tx.events.append(TimelineEvent(atMs: nowMs, event: "voted", participant: name, detail: vote.wireName))
        openTable[txid] = tx
        if case .no(let reason) = vote {
            return decideAbort(txid, reason: "\(name) voted no: \(reason)", nowMs: nowMs)
        }
        return decideAfterVotes(txid, nowMs: nowMs)
    }

    /// Every branch voted yes or read-only (and no forced abort is being logged): commit.
    private mutating func decideAfterVotes(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .preparing, !tx.onePhase,
              tx.branches.allSatisfy({ $0.state == .prepared || $0.state == .readOnly }) else { return [] }
        // An operator's forced abort is being logged: deciding commit now would contradict it.
        guard pendingForces[txid] == nil else { return [] }
        if !tx.branches.contains(where: { $0.state == .prepared }) {
            return finishCommitted(txid, nowMs: nowMs, detail: "every branch read-only")
        }
        let updates = tx.branches.filter { $0.state == .prepared }.map(\.participant)
        tx.decidedAtMs = nowMs
        if case .threePhase(let termination) = tx.commitProtocol {
            // 3PC: pre-commit first (forced), so a crash from here on leaves participants able
            // to finish without us.
            tx.state = .preCommitting
            openTable[txid] = tx
            return submissionRecord(tx) + [.log(.preCommit(txid, participants: updates, termination: termination, atMs: nowMs), force: true)]
        }
        tx.state = .deciding
        openTable[txid] = tx
        return submissionRecord(tx) + [.log(.commitDecision(txid, participants: updates, decidedAtMs: nowMs), force: true)]
    }

    /// The request_id record that must reach the log with a submitted transaction's decision.
    private func submissionRecord(_ tx: Transaction) -> [Action] {
        guard let requestID = tx.requestID else { return [] }
        return [.log(.submission(tx.txid, requestID: requestID), force: false)]
    }

    private mutating func decisionDurable(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .deciding else { return [] }
        // Out of the table while it changes: `tx` is then the only reference to its arrays, so
        // the edits below do not copy them (copy-on-write); every path puts it back.
        openTable.removeValue(forKey: txid)
        tx.state = .committing
        tx.outcome = .committed
        tx.events.append(TimelineEvent(atMs: nowMs, event: "decided", participant: nil, detail: "commit (durable)"))
        return [.cancelTimer(.transactionTimeout(txid))]
            + announceCommit(consume tx, toBranchesIn: [.prepared, .preCommitSent, .preCommitted], nowMs: nowMs)
    }

    /// Tells a transaction just made `committing` to its waiters and sends the commit to its
    /// branches in `states` (attempts start again at 1), counts the commit once, and puts the
    /// transaction back in the table (its callers take it out while it changes). One shared
    /// path for the logged decision and an operator's forced commit, so both tell the same
    /// parties the same way.
    private mutating func announceCommit(_ tx: consuming Transaction, toBranchesIn states: [BranchState],
                                         nowMs: Int64) -> [Action] {
        precondition(tx.state == .committing, "a commit is announced only for a committing transaction")
        var actions: [Action] = []
        for request in tx.waiters { actions.append(.reply(request, .outcome(tx.txid, .committed, reason: nil))) }
        tx.waiters = []
        for i in tx.branches.indices where states.contains(tx.branches[i].state) {
            tx.branches[i].state = .commitSent
            tx.branches[i].attempts = 1
            actions.append(.send(tx.txid, to: tx.branches[i].participant, .commit))
        }
        stats.committed += 1
        openTable[tx.txid] = tx
        // A commit without branches has nobody to wait for.
        if tx.branches.isEmpty { actions += endIfDelivered(tx.txid, nowMs: nowMs) }
        return actions
    }

    private mutating func acknowledged(_ txid: TxID, _ name: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .committing, let i = tx.branchIndex(name),
              tx.branches[i].state == .commitSent else { return [] }
        // Out of the table while it changes: `tx` is then the only reference to its arrays, so
        // the edits below do not copy them (copy-on-write); every path puts it back.
        openTable.removeValue(forKey: txid)
        tx.branches[i].state = .committed
        tx.branches[i].lastError = nil
        tx.branches[i].nextRetryAtMs = nil
        tx.events.append(TimelineEvent(atMs: nowMs, event: "acknowledged", participant: name, detail: nil))
        noteAcknowledgedCommit(tx.branches[i].participant, txid)
        openTable[txid] = tx
        return [.cancelTimer(.retry(txid, participant: name))] + endIfDelivered(txid, nowMs: nowMs)
    }

    /// A committing transaction ends once no branch still waits for the commit (each
    /// acknowledged, was resolved by an operator, or reported a heuristic outcome).
    private mutating func endIfDelivered(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .committing else { return [] }
        guard !tx.branches.contains(where: { $0.state == .commitSent && $0.heuristic == nil }) else { return [] }
        tx.state = .committed
        tx.events.append(TimelineEvent(atMs: nowMs, event: "ended", participant: nil, detail: "no branch still waits for the commit"))
        openTable.removeValue(forKey: txid)
        remember(tx)
        return tx.branches.map { .cancelTimer(.retry(txid, participant: $0.participant.name)) } + [.log(.end(txid), force: false)]
    }

    private mutating func onePhaseAnswered(_ txid: TxID, _ name: String, _ outcome: Outcome, _ reason: String?, readOnly: Bool = false,
                                           nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.onePhase, tx.state == .preparing, let i = tx.branchIndex(name) else { return [] }
        tx.branches[i].state = outcome == .committed ? .committed : .aborted
        tx.branches[i].vote = outcome == .committed ? .yes : .no(reason: reason ?? "aborted")
        tx.branches[i].lastError = nil
        tx.events.append(TimelineEvent(atMs: nowMs, event: "one-phase-answered", participant: name, detail: outcome.rawValue))
        openTable[txid] = tx
        if outcome == .committed {
            // Its one-phase record is durable before it answers so. Not a branch that only
            // read: it wrote nothing, so an agent restarted before its next checkpoint no longer
            // knows that txid and never let it go, and told it as the last commit it
            // acknowledged, it refused all new work from here (a review, session 37).
            if !readOnly { noteAcknowledgedCommit(tx.branches[i].participant, txid) }
            return [.cancelTimer(.retry(txid, participant: name))] + finishCommitted(txid, nowMs: nowMs, detail: "committed in one phase by \(name)")
        }
        return [.cancelTimer(.retry(txid, participant: name))] + decideAbort(txid, reason: "\(name) aborted: \(reason ?? "no reason given")", nowMs: nowMs)
    }

    private mutating func deliveryFailed(_ txid: TxID, _ name: String, _ error: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], let i = tx.branchIndex(name) else { return [] }
        let retrying = (tx.state == .committing && tx.branches[i].state == .commitSent)
            || (tx.onePhase && tx.state == .preparing && tx.branches[i].state == .prepareSent)
        guard retrying else { return [] }
        tx.branches[i].lastError = error
        tx.branches[i].history.append(Attempt(atMs: nowMs, error: error))
        if tx.branches[i].history.count > Limits.attemptHistoryKept { tx.branches[i].history.removeFirst() }
        let since = tx.decidedAtMs ?? tx.createdAtMs
        if !tx.parked && (tx.branches[i].attempts >= config.retryBudgetAttempts || nowMs - since >= config.retryBudgetMs) {
            tx.parked = true
            tx.events.append(TimelineEvent(atMs: nowMs, event: "parked", participant: name,
                                           detail: "retry budget spent (\(tx.branches[i].attempts) attempts, \(TimeFormat.duration(ms: nowMs - since)) since the decision); retrying every \(TimeFormat.duration(ms: config.parkedRetryDelayMs))"))
        }
        let delay = tx.parked
            ? config.parkedRetryDelayMs
            : backoffDelayMs(attempt: tx.branches[i].attempts, minMs: config.retryDelayMsMin, maxMs: config.retryDelayMsMax, rng: &rng)
        tx.branches[i].nextRetryAtMs = nowMs + delay
        tx.events.append(TimelineEvent(atMs: nowMs, event: "delivery-failed", participant: name, detail: "\(error); retry in \(delay)ms"))
        trimEvents(&tx)
        openTable[txid] = tx
        return [.setTimer(.retry(txid, participant: name), afterMs: delay)]
    }

    /// A participant that asks about a transaction is reachable again: a commit waiting for it
    /// on a retry timer (backing off, or parked: up to `parkedRetryDelayMs`, which kept a
    /// transaction parked that long after its participant was back) goes at once, and the
    /// branch's backoff starts over. Only a commit waiting on its timer: one in flight has no
    /// timer, so a participant asking every second brings at most one resend per failed
    /// delivery, never a storm. A parked transaction stays parked until it ends (or, failing
    /// again, retries at the parked rate): the flag is for operators, and its retry budget
    /// counts from the decision.
    private mutating func inquired(_ text: String, by name: String, nowMs: Int64) -> [Action] {
        guard let txid = TxID(text), var tx = openTable.byID[txid], tx.state == .committing, let i = tx.branchIndex(name),
              tx.branches[i].state == .commitSent, tx.branches[i].heuristic == nil, let due = tx.branches[i].nextRetryAtMs else { return [] }
        tx.branches[i].attempts = 1 // this send, as at the first commit
        tx.branches[i].nextRetryAtMs = nil
        tx.events.append(TimelineEvent(atMs: nowMs, event: "inquired", participant: name,
                                       detail: "the participant asked for the outcome: commit re-sent now, not in \(TimeFormat.duration(ms: max(due - nowMs, 0)))"))
        trimEvents(&tx)
        openTable[txid] = tx
        return [.cancelTimer(.retry(txid, participant: name)), .send(txid, to: tx.branches[i].participant, .commit)]
    }

    private mutating func timerFired(_ timer: Timer, nowMs: Int64) -> [Action] {
        switch timer {
        case .preCommitTimeout(let txid):
            return preCommitTimedOut(txid, nowMs: nowMs)
        case .learn(let txid):
            guard var tx = openTable.byID[txid], tx.state == .terminating else { return [] }
            let queries = Self.stateQueries(&tx)
            openTable[txid] = tx
            return queries + [.setTimer(.learn(txid), afterMs: config.learnIntervalMs)]
        case .transactionTimeout(let txid):
            guard let tx = openTable.byID[txid], tx.state == .active || (tx.state == .preparing && !tx.onePhase) else { return [] }
            return decideAbort(txid, reason: "timed out after \(tx.timeoutMs)ms", nowMs: nowMs)
        case .retry(let txid, let name):
            guard var tx = openTable.byID[txid], let i = tx.branchIndex(name) else { return [] }
            tx.branches[i].attempts += 1
            tx.branches[i].nextRetryAtMs = nil
            openTable[txid] = tx
            if tx.state == .committing && tx.branches[i].state == .commitSent {
                return [.send(txid, to: tx.branches[i].participant, .commit)]
            }
            if tx.onePhase && tx.state == .preparing && tx.branches[i].state == .prepareSent {
                // Asking again is safe: the participant answers a repeated one-phase commit
                // from its memory of the branch's outcome.
                return [.send(txid, to: tx.branches[i].participant, .prepare(onePhase: true, participants: tx.branches.map(\.participant), threePhase: nil,
                                                                                    lastAcknowledgedCommit: lastAcknowledgedCommitToTell(tx.branches[i])))]
            }
            return []
        }
    }

    // MARK: - decisions

    /// Abort needs no log record (presumed abort). Every branch that has not already
    /// said no or read-only hears "abort" once, without acknowledgement: a prepared branch
    /// that misses it will ask and be told "aborted".
    private mutating func decideAbort(_ txid: TxID, reason: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.removeValue(forKey: txid) else { return [] }
        // `deciding` only when the commit record was refused before reaching the log;
        // `terminating` when the participants' termination protocol aborted.
        precondition([.active, .preparing, .deciding, .terminating, .preCommitting].contains(tx.state), "abort after commit decision for \(txid)")
        tx.state = .aborted
        tx.outcome = .aborted
        tx.reason = reason
        tx.finishedAtMs = nowMs
        tx.events.append(TimelineEvent(atMs: nowMs, event: "decided", participant: nil, detail: "abort: \(reason)"))
        var actions: [Action] = [.cancelTimer(.transactionTimeout(txid))]
        for request in tx.waiters { actions.append(.reply(request, .outcome(txid, .aborted, reason: reason))) }
        tx.waiters = []
        for i in tx.branches.indices {
            switch tx.branches[i].state {
            case .registered, .prepareSent, .prepared, .preCommitSent, .preCommitted:
                if !tx.onePhase { actions.append(.send(txid, to: tx.branches[i].participant, .abort)) }
                tx.branches[i].state = .aborted
            case .votedNo, .readOnly, .aborted:
                break
            case .commitSent, .committed, .resolvedByOperator:
                preconditionFailure("branch of \(txid) committed in an aborted transaction")
            }
            actions.append(.cancelTimer(.retry(txid, participant: tx.branches[i].participant.name)))
        }
        stats.aborted += 1
        remember(tx)
        return actions
    }

    private mutating func finishCommitted(_ txid: TxID, nowMs: Int64, detail: String) -> [Action] {
        guard var tx = openTable.removeValue(forKey: txid) else { return [] }
        tx.state = .committed
        tx.outcome = .committed
        tx.finishedAtMs = nowMs
        tx.events.append(TimelineEvent(atMs: nowMs, event: "decided", participant: nil, detail: "commit: \(detail)"))
        var actions: [Action] = [.cancelTimer(.transactionTimeout(txid))]
        for request in tx.waiters { actions.append(.reply(request, .outcome(txid, .committed, reason: nil))) }
        tx.waiters = []
        stats.committed += 1
        remember(tx)
        return actions
    }

    private mutating func remember(_ tx: Transaction) {
        precondition(tx.state.isFinished)
        var tx = tx
        // A finished transaction's work is never sent again; the memory is for new ones.
        for i in tx.branches.indices { tx.branches[i].work = nil }
        if tx.branches.contains(where: { $0.heuristic != nil && $0.heuristic != tx.outcome }) { tx.state = .heuristicMixed }
        if tx.finishedAtMs == nil { tx.finishedAtMs = tx.events.last?.atMs }
        trimEvents(&tx)
        tx.keptBytes = tx.finishedKeptBytes
        finishedKeptBytes += tx.keptBytes
        if let replaced = finished.updateValue(tx, forKey: tx.txid) {
            finishedKeptBytes -= replaced.keptBytes
        } else {
            finishedOrder.append(tx.txid)
        }
        while finished.count > config.finishedTransactionsKept || (finishedKeptBytes > config.finishedKeptBytesMax && finished.count > 1) {
            if let gone = finished.removeValue(forKey: finishedOrder[finishedOrderHead]) {
                finishedKeptBytes -= gone.keptBytes
                if gone.outcome == .committed { forgottenCommits.forget(gone.txid) }
                // Not a presumption: the ledger holds outcomes that were decided.
                if let outcome = gone.outcome, gone.reason != Coordinator.presumedAbortReason {
                    outcomeLedger.record(gone.txid, .init(outcome: outcome, heuristicMixed: gone.state == .heuristicMixed,
                                                          threePhase: gone.commitProtocol != .twoPhase))
                }
                if gone.state == .heuristicMixed { keepMixed(gone) }
                if let requestID = gone.requestID, submissions[requestID] == gone.txid {
                    submissions.removeValue(forKey: requestID)
                    if gone.outcome == .committed {
                        committedSubmissions.add(requestID, .init(txid: gone.txid, finishedAtMs: gone.finishedAtMs ?? gone.createdAtMs))
                    }
                }
            }
            finishedOrderHead += 1
        }
        if finishedOrderHead > 4096 && finishedOrderHead * 2 > finishedOrder.count {
            finishedOrder.removeFirst(finishedOrderHead)
            finishedOrderHead = 0
        }
    }

    /// Keeps a heuristic-mixed transaction whole after `finished` let go of it, so that it
    /// stays listed and explained with its branches while its data waits for repair by hand (a
    /// game-day probe saw three vanish from every view after 10,000 newer transactions). The
    /// ledger and `forgottenCommits` got what they always get; this is for views only, bounded
    /// by `Limits.heuristicMixedKept`, oldest let go first.
    private mutating func keepMixed(_ tx: Transaction) {
        if mixedKept.updateValue(tx, forKey: tx.txid) == nil { mixedKeptOrder.append(tx.txid) }
        while mixedKept.count > Limits.heuristicMixedKept, !mixedKeptOrder.isEmpty {
            mixedKept.removeValue(forKey: mixedKeptOrder.removeFirst())
        }
    }

    private func trimEvents(_ tx: inout Transaction) {
        if tx.events.count > Limits.eventsPerTransactionMax {
            // Keep the first events (how it started) and the most recent ones.
            let keepHead = 8
            let keepTail = Limits.eventsPerTransactionMax - keepHead
            tx.events = Array(tx.events.prefix(keepHead)) + Array(tx.events.suffix(keepTail))
        }
    }
}

// MARK: - operators: forced decisions, retries, heuristic reports

extension Coordinator {
    /// What forcing `outcome` on `txid` would do, or why it is refused.
    /// `effects` is empty when nothing needs doing (the outcome already holds).
    func planForce(_ txid: TxID, _ outcome: Outcome) -> Result<[String], RequestError> {
        if let tx = openTable.byID[txid] {
            let pending = tx.branches.filter { $0.state == .commitSent && $0.heuristic == nil }.map(\.participant.name)
            switch (tx.state, outcome) {
            case (.preparing, .aborted) where !tx.onePhase, (.active, .aborted):
                let told = tx.branches.filter { [.registered, .prepareSent, .prepared].contains($0.state) }.map(\.participant.name)
                return .success(["abort the undecided transaction", told.isEmpty ? "no branch needs to be told" : "send abort to \(told.joined(separator: ", "))"])
            case (.active, .committed), (.preparing, .committed):
                if tx.onePhase {
                    return .failure(RequestError(409, "\(txid) is a one-phase commit: its only branch decides; resolve it at the participant (txctl agent URL ...)"))
                }
                let unvoted = tx.branches.filter { $0.state != .prepared && $0.state != .readOnly }.map(\.participant.name)
                return .failure(RequestError(409, "\(txid) is undecided and \(unvoted.joined(separator: ", ")) did not vote yes: committing would commit work that was never prepared; only abort can be forced"))
            case (.preparing, .aborted):
                return .failure(RequestError(409, "\(txid) is a one-phase commit: its only branch decides; resolve it at the participant (txctl agent URL ...)"))
            case (.deciding, _):
                return .failure(RequestError(409, "\(txid) is writing its commit decision; wait a moment and look again"))
            case (.terminating, _) where abortsLearned[txid] != nil:
                return .failure(RequestError(409, "\(txid) is writing the abort it learned from its participants; wait a moment and look again"))
            case (.terminating, _) where Self.everyParticipantForgot(tx):
                // Every yes-voter answered `unknown`: none holds a branch (they ended it on their
                // own long ago and forgot it), so none will ever answer an outcome, and the
                // coordinator would ask for ever. Only its own record is left to end.
                let told = tx.branches.filter { $0.vote == .yes }.map(\.participant.name)
                return .success(["end the transaction as \(outcome.rawValue): every participant that voted yes (\(told.joined(separator: ", "))) answers that it holds no branch (finished and forgotten), so none will ever report an outcome",
                                 "stop asking them; \(outcome == .committed ? "send commit (a participant with no branch acknowledges it)" : "send abort (a participant with no branch takes it as a no-op)")"])
            case (.preCommitting, _), (.terminating, _):
                return .failure(RequestError(409, "\(txid) is a three-phase commit past its pre-commit: its participants may already have terminated it without the coordinator; resolve it at the participants (txctl agent URL ...)"))
            case (.committing, .aborted):
                return .failure(RequestError(409, "refused: \(txid) has a durable commit decision (\(TimeFormat.iso8601(ms: tx.decidedAtMs ?? tx.createdAtMs))); aborting would contradict it"))
            case (.committing, .committed):
                return .success(["stop waiting for \(pending.joined(separator: ", ")) (recorded as resolved by operator)", "end the transaction as committed; those participants are still told \"committed\" when they ask"])
            default:
                preconditionFailure("open transaction \(txid) in state \(tx.state)")
            }
        }
        if let tx = finished[txid] {
            let decided = tx.outcome ?? .aborted
            if decided == outcome { return .success([]) }
            let when = TimeFormat.iso8601(ms: tx.finishedAtMs ?? tx.createdAtMs)
            return .failure(RequestError(409, "refused: \(txid) was \(decided.rawValue) at \(when)\(tx.reason.map { " (\($0))" } ?? ""); forcing \(outcome.rawValue) would contradict it"))
        }
        if let forced = operatorOutcomes[txid] {
            return forced == outcome ? .success([]) : .failure(RequestError(409, "refused: an operator already forced \(txid) to \(forced.rawValue)"))
        }
        if let gone = outcomeLedger.lookup(txid) {
            return gone.outcome == outcome ? .success([])
                : .failure(RequestError(409, "refused: \(txid) was \(gone.outcome.rawValue) (forgotten; the outcome is from the coordinator's ledger); forcing \(outcome.rawValue) would contradict it"))
        }
        if txid.coordinatorID != config.coordinatorID {
            // Its participants asking here are answered unknown-coordinator, not aborted: saying
            // "told it aborted" to an operator at the wrong coordinator (or one whose data
            // directory was replaced) read as the outcome (a docs walkthrough, session 38).
            return .failure(RequestError(404, "unknown transaction \(txid): it was begun by coordinator \(txid.coordinatorID), not this one (\(config.coordinatorID)), so this coordinator can decide nothing for it and knows nothing of its outcome (its participants that ask here are answered unknown-coordinator); force it where it was begun, or resolve its participants with txctl agent URL"))
        }
        return .failure(RequestError(404, "unknown transaction \(txid): this coordinator has no record of it, so participants that ask are told it aborted (presumed abort); to resolve a participant whose coordinator is gone, use txctl agent URL"))
    }

    mutating func forceRequested(_ request: RequestID, _ text: String, _ force: ForceRequest, nowMs: Int64) -> [Action] {
        guard let txid = TxID(text) else { return [.reply(request, .error(RequestError(400, "malformed txid \"\(text.prefix(80))\"")))] }
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
        case .success(let effects) where effects.isEmpty:
            return [.reply(request, .forced(txid, outcome: force.outcome, dryRun: force.dryRun, effects: ["nothing to do: \(txid) is already \(force.outcome.rawValue)"]))]
        case .success(let effects):
            if force.dryRun { return [.reply(request, .forced(txid, outcome: force.outcome, dryRun: true, effects: effects))] }
            let entry = force.auditEntry(atMs: nowMs, reason: reason, effects: effects, resolvedBranches: branchesAForceResolves(txid, force.outcome))
            pendingForces[txid] = (request, force, entry)
            return [.log(.audit(txid, entry), force: true)]
        }
    }

    mutating func auditDurable(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard let pending = pendingForces.removeValue(forKey: txid) else { return [] }
        let outcome = pending.force.outcome
        let plan = planForce(txid, outcome)
        if case .success(let effects) = plan, !effects.isEmpty { rememberOperatorOutcome(txid, outcome) }
        // Kept with the forced outcome, past the transaction's own view (`operatorAudits`).
        if operatorOutcomes[txid] != nil {
            operatorAudits.add(txid, pending.entry, commitProtocol: transaction(txid)?.commitProtocol ?? .twoPhase)
        }
        // Attach the audit entry wherever the transaction now is.
        if var tx = openTable.byID[txid] {
            tx.audit.append(pending.entry)
            if tx.audit.count > Limits.auditEntriesPerTransactionMax { tx.audit.removeFirst(tx.audit.count - Limits.auditEntriesPerTransactionMax) }
            tx.events.append(TimelineEvent(atMs: nowMs, event: "forced", participant: nil, detail: "\(pending.entry.action) by \(pending.entry.operatorName): \(pending.entry.reason)"))
            openTable[txid] = tx
        } else if var tx = finished[txid] {
            tx.audit.append(pending.entry)
            finished[txid] = tx
        }
        switch plan {
        case .failure(let e):
            // The transaction moved on while the audit record was written (e.g. it timed out).
            return [.reply(pending.request, .error(e))]
        case .success(let effects) where effects.isEmpty:
            return [.reply(pending.request, .forced(txid, outcome: outcome, dryRun: false, effects: ["nothing to do: \(txid) is already \(outcome.rawValue)"]))]
        case .success(let effects):
            var actions: [Action]
            if openTable.byID[txid]?.state == .terminating {
                actions = endForgottenByOperator(txid, outcome, by: pending.entry, nowMs: nowMs)
            } else if outcome == .aborted {
                actions = decideAbort(txid, reason: "forced by operator \(pending.entry.operatorName): \(pending.entry.reason)", nowMs: nowMs)
            } else {
                actions = resolveByOperator(txid, nowMs: nowMs)
            }
            actions.append(.reply(pending.request, .forced(txid, outcome: outcome, dryRun: false, effects: effects)))
            return actions
        }
    }

    /// A terminating 3PC transaction whose yes-voters all answered `unknown` on the last state
    /// query (each has no branch left). A participant that has not answered yet is not counted as
    /// forgetful: it may still be terminating, and its answer may be an outcome.
    static func everyParticipantForgot(_ tx: Transaction) -> Bool {
        let voters = tx.branches.filter { $0.vote == .yes }
        return !voters.isEmpty && voters.allSatisfy { $0.lastThreePhaseState == .unknown }
    }

    /// Ends, with an operator's outcome, a terminating 3PC transaction that no participant
    /// remembers (`everyParticipantForgot`). An abort ends it at once; a commit makes it
    /// committing and sends the commit (a participant with no branch acknowledges it). Its
    /// durable audit record is the decision, replayed so after a restart: a commit decision
    /// record after it could be refused by a full log, and the transaction went back to
    /// `terminating` after the operator was told committed, open to the opposite force (a
    /// review, session 28).
    mutating func endForgottenByOperator(_ txid: TxID, _ outcome: Outcome, by entry: AuditEntry, nowMs: Int64) -> [Action] {
        guard openTable.byID[txid]?.state == .terminating else { return [] }
        let because = "forced by operator \(entry.operatorName): \(entry.reason) (every participant had forgotten the transaction)"
        if outcome == .aborted { return [.cancelTimer(.learn(txid))] + decideAbort(txid, reason: because, nowMs: nowMs) }
        commitForcedByOperator(txid, entry)
        guard let tx = openTable.removeValue(forKey: txid) else { return [] }
        // commitForcedByOperator kept only the yes-voters, each marked commitSent: all are told.
        return [.cancelTimer(.learn(txid)), .cancelTimer(.transactionTimeout(txid))]
            + announceCommit(consume tx, toBranchesIn: [.commitSent], nowMs: nowMs)
    }

    /// The branches a forced `outcome` on `txid` stops waiting for (`planForce`'s "stop waiting
    /// for ..."), recorded in its audit entry: only a forced commit of a committing transaction
    /// ends any wait.
    func branchesAForceResolves(_ txid: TxID, _ outcome: Outcome) -> [String] {
        guard outcome == .committed, let tx = openTable.byID[txid], tx.state == .committing else { return [] }
        return tx.branches.filter { $0.state == .commitSent && $0.heuristic == nil }.map(\.participant.name)
    }

    /// Ends a committing transaction that an operator resolved: the branches still waiting
    /// are marked, retries stop, and `operatorOutcomes` keeps answering "committed".
    /// `resolved`: read back from the audit record, the branches the force ended the wait for;
    /// any other branch still waiting here had acknowledged before the force (acknowledgements
    /// are not logged, so replay left it `commit-sent`) and is `committed`. Nil: every branch
    /// still waiting is resolved (live, where an acknowledged branch is already `committed`,
    /// and from a record written before the audit entry named them).
    mutating func resolveByOperator(_ txid: TxID, resolved: [String]? = nil, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .committing else { return [] }
        for i in tx.branches.indices where tx.branches[i].state == .commitSent && tx.branches[i].heuristic == nil {
            let tookOver = resolved.map { $0.contains(tx.branches[i].participant.name) } ?? true
            tx.branches[i].state = tookOver ? .resolvedByOperator : .committed
            tx.branches[i].nextRetryAtMs = nil
        }
        tx.parked = false
        openTable[txid] = tx
        return endIfDelivered(txid, nowMs: nowMs)
    }

    mutating func retryNow(_ request: RequestID, _ text: String, nowMs: Int64) -> [Action] {
        let txid: TxID
        switch lookup(text) {
        case .failure(let e):
            // Forgotten with its outcome in the ledger: finished, as when it was kept whole.
            guard let (gone, entry) = answerFromLedger(text) else { return [.reply(request, .error(e))] }
            return [.reply(request, .error(RequestError(409, "\(gone) is \(entry.outcome.rawValue) (forgotten); nothing to retry")))]
        case .success(let t): txid = t
        }
        guard var tx = openTable.byID[txid] else { return [.reply(request, .error(RequestError(409, "\(txid) is finished; nothing to retry")))] }
        var actions: [Action] = []
        var names: [String] = []
        let everyone = tx.branches.map(\.participant)
        for i in tx.branches.indices {
            let name = tx.branches[i].participant.name
            if tx.state == .committing && tx.branches[i].state == .commitSent && tx.branches[i].heuristic == nil {
                actions.append(.send(txid, to: tx.branches[i].participant, .commit))
            } else if tx.onePhase && tx.state == .preparing && tx.branches[i].state == .prepareSent {
                actions.append(.send(txid, to: tx.branches[i].participant, .prepare(onePhase: true, participants: everyone, threePhase: nil,
                                                                                      lastAcknowledgedCommit: lastAcknowledgedCommitToTell(tx.branches[i]))))
            } else {
                continue
            }
            tx.branches[i].attempts += 1
            tx.branches[i].nextRetryAtMs = nil
            actions.insert(.cancelTimer(.retry(txid, participant: name)), at: 0)
            names.append(name)
        }
        guard !names.isEmpty else {
            return [.reply(request, .error(RequestError(409, "\(txid) is \(tx.state.rawValue): no delivery is pending, nothing to retry")))]
        }
        tx.events.append(TimelineEvent(atMs: nowMs, event: "retry-requested", participant: nil, detail: names.joined(separator: ", ")))
        openTable[txid] = tx
        return actions + [.reply(request, .retried(txid, participants: names))]
    }

    /// Why a heuristic report cannot be recorded, nil when it can. A report is logged and kept,
    /// so each one must name a transaction this coordinator issued and, when the transaction is
    /// still known, one of its branches: otherwise anyone could grow a transaction's branches and
    /// events without bound, or mark a committed transaction mixed in someone else's name.
    func heuristicReportRefusal(_ txid: TxID, participant: String) -> RequestError? {
        guard !participant.isEmpty, participant.utf8.count <= Limits.participantNameBytesMax else {
            return RequestError(400, "participant must be a name of 1-\(Limits.participantNameBytesMax) bytes")
        }
        guard txid.epoch < epoch || (txid.epoch == epoch && txid.sequence < nextSequence) else {
            return RequestError(404, "\(txid) was never begun at this coordinator")
        }
        guard let tx = transaction(txid) else { return nil }
        if tx.branchIndex(participant) != nil { return nil }
        // A transaction known only from earlier reports (forgotten here, presumed aborted)
        // learns its branches from them, up to the branch limit. Not an open one: it knows
        // every branch that can have prepared, and one with none yet took any name's report
        // into its timeline (a probe).
        if openTable.byID[txid] == nil && tx.branches.allSatisfy({ $0.participant.url.isEmpty }) && tx.branches.count < Limits.branchesPerTransactionMax {
            return nil
        }
        return RequestError(409, "\(participant.prefix(80)) is not a branch of \(txid)")
    }

    /// Records a participant's heuristic outcome. Returns actions when it lets a committing
    /// transaction end (that branch no longer waits for the commit).
    /// `forcedBy` nil (a report without it, or inside a commit's answer) keeps what an earlier
    /// report of the branch said.
    mutating func noteHeuristic(_ txid: TxID, participant: String, outcome: Outcome, forcedBy: HeuristicForce?, nowMs: Int64) -> [Action] {
        let known = transaction(txid).flatMap { tx in tx.branchIndex(participant).flatMap { tx.branches[$0].heuristic == outcome ? tx.branches[$0].heuristicForce : nil } }
        let force = forcedBy ?? known
        let detail = (force ?? HeuristicForce()).describe(outcome, participant: participant)
        if var tx = openTable.byID[txid] {
            if let i = tx.branchIndex(participant) {
                tx.branches[i].heuristic = outcome
                tx.branches[i].heuristicForce = force
            }
            tx.events.append(TimelineEvent(atMs: nowMs, event: "heuristic-reported", participant: participant, detail: detail))
            trimEvents(&tx)
            openTable[txid] = tx
            return endIfDelivered(txid, nowMs: nowMs)
        }
        // Finished, or let go of `finished` and kept whole as heuristic-mixed: a repeated
        // report (an agent retries its reports, also after a restart) updates the one kept,
        // rather than making a second transaction that views list and count twice.
        for kept in [true, false] {
            guard var tx = kept ? mixedKept[txid] : finished[txid] else { continue }
            if let i = tx.branchIndex(participant) {
                tx.branches[i].heuristic = outcome
                tx.branches[i].heuristicForce = force
            } else {
                tx.branches.append(Branch(participant: ParticipantRef(name: participant, url: ""), state: .aborted, heuristic: outcome, heuristicForce: force))
            }
            tx.events.append(TimelineEvent(atMs: nowMs, event: "heuristic-reported", participant: participant, detail: detail))
            trimEvents(&tx)
            if tx.outcome != outcome { tx.state = .heuristicMixed }
            if kept { mixedKept[txid] = tx } else { finished[txid] = tx }
            return []
        }
        // Forgotten or never decided here: the outcome is the ledger's, the operator's or
        // presumed abort.
        let decided = operatorOutcomes[txid] ?? outcomeLedger.lookup(txid)?.outcome ?? .aborted
        // Dated by the force the report names, when it names one: the report's record is
        // replayed at every start, and dated by the start it was new again each time (its age
        // and `txctl list --older-than` reset at every restart; a docs audit, session 29).
        let createdAtMs = force?.forcedAtMs.map { min($0, nowMs) } ?? nowMs
        var tx = Transaction(txid: txid, state: decided == .committed ? .committed : .aborted, createdAtMs: createdAtMs, timeoutMs: 0)
        tx.outcome = decided
        tx.reason = operatorOutcomes[txid] != nil ? "forced by an operator"
            : outcomeLedger.lookup(txid) != nil ? "forgotten; the outcome is from the coordinator's ledger"
            : Coordinator.presumedAbortReason
        tx.branches = [Branch(participant: ParticipantRef(name: participant, url: ""), state: decided == .committed ? .committed : .aborted, heuristic: outcome,
                              heuristicForce: force)]
        tx.events.append(TimelineEvent(atMs: nowMs, event: "heuristic-reported", participant: participant, detail: detail))
        remember(tx)
        return []
    }
}

// MARK: - three-phase commit

extension Coordinator.Transaction {
    /// Its branches that voted yes (a 3PC quorum counts only these: readers hold nothing), and
    /// how many of them acknowledged the pre-commit and how many are still awaited.
    var preCommitTally: (writers: Int, acked: Int, awaited: Int) {
        var tally = (writers: 0, acked: 0, awaited: 0)
        for b in branches where b.vote == .yes {
            tally.writers += 1
            if b.state == .preCommitted { tally.acked += 1 } else if b.state == .preCommitSent { tally.awaited += 1 }
        }
        return tally
    }
}

extension Coordinator {
    /// Quorum for commit and for abort: a majority of the update participants, so the two
    /// cannot both form (Vc + Va > N).
    public static func quorum(_ participants: Int) -> Int { participants / 2 + 1 }

    mutating func preCommitDurable(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .preCommitting else { return [] }
        var actions: [Action] = []
        for i in tx.branches.indices where tx.branches[i].state == .prepared {
            tx.branches[i].state = .preCommitSent
            actions.append(.send(txid, to: tx.branches[i].participant, .preCommit))
        }
        tx.events.append(TimelineEvent(atMs: nowMs, event: "pre-commit-sent", participant: nil, detail: "\(actions.count) branch(es)"))
        openTable[txid] = tx
        return actions + [.setTimer(.preCommitTimeout(txid), afterMs: config.preCommitTimeoutMs)]
    }

    mutating func preCommitAcknowledged(_ txid: TxID, _ name: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .preCommitting, let i = tx.branchIndex(name),
              tx.branches[i].state == .preCommitSent else { return [] }
        tx.branches[i].state = .preCommitted
        tx.events.append(TimelineEvent(atMs: nowMs, event: "pre-commit-acknowledged", participant: name, detail: nil))
        openTable[txid] = tx
        let (writers, acked, awaited) = tx.preCommitTally
        // Quorum 3PC commits on the acknowledgement that makes the quorum, without waiting for
        // the rest or the timeout (a review, session 29). Safe: Q durable pre-committed
        // branches rule out an abort quorum for good (Q + Q > N, and under quorum termination
        // a pre-state never changes), and nothing the coordinator could still hear changes the
        // decision — the timeout and a refusal both commit on Q acknowledgements, and a late
        // acknowledgement only adds one. What waiting bought was latency, locks held longer
        // and a longer window for a coordinator crash to turn a decided commit into learning.
        // The branches still awaited and those that refused are told the commit like every
        // other (`decisionDurable` sends it to `prepared` and `pre-commit-sent` branches, and
        // it is retried until they acknowledge); an answer to the pre-commit that comes later
        // finds the transaction past `pre-committing` and is ignored. Classic 3PC keeps
        // waiting for every acknowledgement: its only other commit is the timeout's, on the
        // presumption that the silent crashed.
        if awaited > 0, case .threePhase(.quorum) = tx.commitProtocol, acked >= Coordinator.quorum(writers) {
            return [.cancelTimer(.preCommitTimeout(txid))]
                + decideCommitAfterPreCommit(txid, detail: "a commit quorum (\(acked) of \(writers)) acknowledged; \(awaited) not answered yet, sent the commit like the others", nowMs: nowMs)
        }
        guard awaited == 0 else { return [] }
        // Every branch answered. Under quorum termination one that refused is back to
        // `prepared` (`preCommitRefused`), which learned at once had a quorum become out of
        // reach; checked again here all the same.
        if acked < writers {
            guard case .threePhase(.quorum) = tx.commitProtocol, acked >= Coordinator.quorum(writers) else {
                return [.cancelTimer(.preCommitTimeout(txid))]
                    + startLearning(txid, because: "\(acked) of \(writers) pre-committed, without a commit quorum", nowMs: nowMs)
            }
            return [.cancelTimer(.preCommitTimeout(txid))]
                + decideCommitAfterPreCommit(txid, detail: "a commit quorum (\(acked) of \(writers)); the others did not acknowledge", nowMs: nowMs)
        }
        return [.cancelTimer(.preCommitTimeout(txid))] + decideCommitAfterPreCommit(txid, detail: "every branch pre-committed", nowMs: nowMs)
    }

    /// A participant answered the pre-commit with anything but an acknowledgement, or the
    /// pre-commit never left this coordinator: it is alive, or nothing is known of it, and it is
    /// not pre-committed. Classic 3PC stops deciding and learns (its timeout's commit presumes
    /// the silent crashed). Quorum 3PC goes on deciding: a quorum of acknowledgements commits
    /// whatever the others do (a commit quorum and an abort quorum share a participant, whose
    /// pre-state never changes), so one refusal need not throw a held quorum away (learning
    /// never commits on pre-committed answers alone; a review, session 29).
    mutating func preCommitRefused(_ txid: TxID, _ name: String, reason: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .preCommitting,
              case .threePhase(let termination) = tx.commitProtocol else { return [] }
        guard termination == .quorum else {
            return startLearning(txid, because: "\(name) did not acknowledge the pre-commit: \(reason)", nowMs: nowMs)
        }
        // Back to `prepared`: neither acknowledged nor still awaited (a commit still tells it).
        if let i = tx.branchIndex(name), tx.branches[i].state == .preCommitSent { tx.branches[i].state = .prepared }
        tx.events.append(TimelineEvent(atMs: nowMs, event: "pre-commit-refused", participant: name, detail: reason))
        openTable[txid] = tx
        let (writers, acked, awaited) = tx.preCommitTally
        let quorum = Coordinator.quorum(writers)
        if acked >= quorum {
            return [.cancelTimer(.preCommitTimeout(txid))]
                + decideCommitAfterPreCommit(txid, detail: "a commit quorum (\(acked) of \(writers)); \(name) did not acknowledge the pre-commit: \(reason)", nowMs: nowMs)
        }
        if acked + awaited < quorum {
            return [.cancelTimer(.preCommitTimeout(txid))]
                + startLearning(txid, because: "\(name) did not acknowledge the pre-commit (\(reason)): a commit quorum of \(quorum) can no longer form", nowMs: nowMs)
        }
        return [] // the other acknowledgements, or the timeout, decide
    }

    /// Classic 3PC treats a silent participant as failed and commits without its
    /// acknowledgement (it will learn the outcome when it recovers) — which is exactly what
    /// splits the outcome under a partition. Quorum 3PC commits only with a quorum of
    /// acknowledgements, and otherwise stops deciding.
    mutating func preCommitTimedOut(_ txid: TxID, nowMs: Int64) -> [Action] {
        guard let tx = openTable.byID[txid], tx.state == .preCommitting, case .threePhase(let termination) = tx.commitProtocol else { return [] }
        let (writers, acked, _) = tx.preCommitTally
        switch termination {
        case .classic:
            // Not on no acknowledgement at all: then no writer is durably pre-committed, and a
            // writer back from a crash, whose peers are readers or uncertain, could not tell this
            // commit from none and aborted against it (a review, session 28,
            // `FixesReview28Tests`). With one, that writer reports it to every peer that asks.
            guard acked > 0 else {
                return startLearning(txid, because: "pre-commit timeout with no acknowledgement: nobody is durably pre-committed, so the participants decide", nowMs: nowMs)
            }
            return decideCommitAfterPreCommit(txid, detail: "pre-commit timeout: \(acked) of \(writers) acknowledged; the silent ones are presumed failed (classic 3PC)", nowMs: nowMs)
        case .quorum:
            if acked >= Coordinator.quorum(writers) {
                return decideCommitAfterPreCommit(txid, detail: "pre-commit timeout with a commit quorum (\(acked) of \(writers))", nowMs: nowMs)
            }
            return startLearning(txid, because: "pre-commit acknowledged by \(acked) of \(writers), below the quorum of \(Coordinator.quorum(writers))", nowMs: nowMs)
        }
    }

    mutating func decideCommitAfterPreCommit(_ txid: TxID, detail: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .preCommitting else { return [] }
        tx.state = .deciding
        tx.events.append(TimelineEvent(atMs: nowMs, event: "deciding", participant: nil, detail: detail))
        openTable[txid] = tx
        let updates = tx.branches.filter { $0.vote == .yes }.map(\.participant)
        return [.log(.commitDecision(txid, participants: updates, decidedAtMs: nowMs), force: true)]
    }

    /// The coordinator gives up deciding and asks the participants until one has an outcome.
    mutating func startLearning(_ txid: TxID, because reason: String, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid], tx.state == .preCommitting else { return [] }
        tx.state = .terminating
        tx.events.append(TimelineEvent(atMs: nowMs, event: "terminating", participant: nil, detail: reason))
        let queries = Self.stateQueries(&tx)
        openTable[txid] = tx
        return [.cancelTimer(.preCommitTimeout(txid))] + queries + [.setTimer(.learn(txid), afterMs: config.learnIntervalMs)]
    }

    /// A state query to every yes-voter without one outstanding.
    static func stateQueries(_ tx: inout Transaction) -> [Action] {
        var out: [Action] = []
        for i in tx.branches.indices where tx.branches[i].vote == .yes && !tx.branches[i].stateQueryOutstanding {
            tx.branches[i].stateQueryOutstanding = true
            out.append(.send(tx.txid, to: tx.branches[i].participant, .stateQuery))
        }
        return out
    }

    /// While learning: adopt the first outcome a participant reports; never contradict it.
    mutating func stateAnswered(_ txid: TxID, _ name: String, _ state: ThreePhaseState?, nowMs: Int64) -> [Action] {
        guard var tx = openTable.byID[txid] else { return [] }
        // While an operator's force of a terminating transaction is recorded, answers are not
        // taken: its audit record is the decision (a restart replays it as one), so nothing may
        // change the plan it was taken on before it is durable.
        let forcing = tx.state == .terminating && pendingForces[txid] != nil
        if let i = tx.branchIndex(name) {
            tx.branches[i].stateQueryOutstanding = false
            if !forcing { tx.branches[i].lastThreePhaseState = state }
            openTable[txid] = tx
        }
        guard tx.state == .terminating, !forcing, abortsLearned[txid] == nil, let state else { return [] }
        switch state {
        case .committed:
            tx.state = .deciding
            tx.events.append(TimelineEvent(atMs: nowMs, event: "learned", participant: name, detail: "committed by the participants' termination protocol"))
            openTable[txid] = tx
            let updates = tx.branches.filter { $0.vote == .yes }.map(\.participant)
            return [.cancelTimer(.learn(txid)), .log(.commitDecision(txid, participants: updates, decidedAtMs: nowMs), force: true)]
        case .aborted:
            guard abortsLearned[txid] == nil else { return [] }
            tx.events.append(TimelineEvent(atMs: nowMs, event: "learned", participant: name, detail: "aborted by the participants' termination protocol"))
            openTable[txid] = tx
            // Durable before the client hears it (`abortLearnedDurable`): the pre-commit
            // record would otherwise make a restart ask again.
            abortsLearned[txid] = name
            return [.cancelTimer(.learn(txid)), .log(.abortLearned(txid), force: true)]
        case .unknown, .uncertain, .preAborted, .preCommitted, .readOnly:
            return []
        }
    }
}

extension Coordinator.Record {
    public var txid: TxID {
        switch self {
        case .commitDecision(let t, _, _), .end(let t), .audit(let t, _), .heuristic(let t, _, _, _), .preCommit(let t, _, _, _),
             .submission(let t, _), .abortLearned(let t): return t
        case .onePhaseWindow(let window): return window.through
        }
    }
}

/// Binary encoding of the coordinator's log records.
public enum CoordinatorRecordCoding {
    public static let commitDecisionType: UInt8 = 1
    public static let endType: UInt8 = 2
    public static let auditType: UInt8 = 3
    public static let heuristicType: UInt8 = 4
    public static let preCommitType: UInt8 = 5
    public static let submissionType: UInt8 = 6
    public static let onePhaseWindowType: UInt8 = 7
    public static let abortLearnedType: UInt8 = 8

    public static func encode(_ record: Coordinator.Record) -> (type: UInt8, payload: [UInt8]) {
        var w = ByteWriter()
        switch record {
        case .commitDecision(let txid, let participants, let at):
            encodeDecision(&w, txid: txid, participants: participants, decidedAtMs: at)
            return (commitDecisionType, w.bytes)
        case .end(let txid):
            w.string(txid.description)
            return (endType, w.bytes)
        case .audit(let txid, let e):
            w.string(txid.description)
            w.i64(e.atMs)
            w.string(e.operatorName)
            w.string(e.action)
            w.string(e.reason)
            w.string(e.detail)
            // The branches the force took over, trailing (records written before session 32
            // end here, and versions before it read no further).
            if let resolved = e.resolvedBranches { encodeNames(&w, resolved) }
            return (auditType, w.bytes)
        case .heuristic(let txid, let participant, let outcome, let forcedBy):
            w.string(txid.description)
            w.string(participant)
            w.bool(outcome == .committed)
            // Who forced it, why and when, trailing (records written before session 26 end
            // here, and versions before it read no further).
            if let forcedBy { forcedBy.encode(&w) }
            return (heuristicType, w.bytes)
        case .preCommit(let txid, let participants, let termination, let atMs):
            w.string(txid.description)
            encodePreCommitBody(&w, participants: participants, termination: termination, atMs: atMs)
            return (preCommitType, w.bytes)
        case .submission(let txid, let requestID):
            w.string(txid.description)
            w.string(requestID)
            return (submissionType, w.bytes)
        case .onePhaseWindow(let window):
            OnePhaseWindows.encodeWindow(window, &w)
            return (onePhaseWindowType, w.bytes)
        case .abortLearned(let txid):
            w.string(txid.description)
            return (abortLearnedType, w.bytes)
        }
    }

    public static func decode(type: UInt8, payload: [UInt8]) throws -> Coordinator.Record {
        var r = ByteReader(payload)
        switch type {
        case commitDecisionType: return try decodeDecision(&r)
        case endType: return .end(try decodeTxID(&r))
        case auditType:
            let txid = try decodeTxID(&r)
            let entry = Coordinator.AuditEntry(atMs: try r.i64(), operatorName: try r.string(maxCount: 4096), action: try r.string(maxCount: 64),
                                               reason: try r.string(maxCount: 4096), detail: try r.string(maxCount: 65536),
                                               resolvedBranches: r.isAtEnd ? nil : try decodeNames(&r))
            return .audit(txid, entry)
        case heuristicType:
            let txid = try decodeTxID(&r)
            let participant = try r.string(maxCount: 4096)
            let outcome: Outcome = try r.bool() ? .committed : .aborted
            return .heuristic(txid, participant: participant, outcome: outcome, forcedBy: r.isAtEnd ? nil : try Coordinator.HeuristicForce.decode(&r))
        case preCommitType:
            let txid = try decodeTxID(&r)
            return try decodePreCommit(&r, txid: txid)
        case submissionType:
            return .submission(try decodeTxID(&r), requestID: try r.string(maxCount: Limits.requestIDBytesMax))
        case onePhaseWindowType:
            return .onePhaseWindow(try OnePhaseWindows.decodeWindow(&r))
        case abortLearnedType:
            return .abortLearned(try decodeTxID(&r))
        default: throw DecodeError("unknown coordinator record type \(type)")
        }
    }

    static func encodeDecision(_ w: inout ByteWriter, txid: TxID, participants: [ParticipantRef], decidedAtMs: Int64) {
        w.string(txid.description)
        w.i64(decidedAtMs)
        encodeParticipants(&w, participants)
    }

    static func encodeParticipants(_ w: inout ByteWriter, _ participants: [ParticipantRef]) {
        w.u32(UInt32(participants.count))
        for p in participants {
            w.string(p.name)
            w.string(p.url)
            w.string(p.incarnation ?? "")
        }
    }

    /// A decision's or pre-commit's participants. A URL is read without the trailing `/` that
    /// versions before the check at registration accepted: the requests built from it would
    /// go to `//v1/...`, which the agent answers 404, and the decision would stay parked.
    static func decodeParticipants(_ r: inout ByteReader, what: String) throws -> [ParticipantRef] {
        let n = try r.u32()
        guard n <= UInt32(Limits.branchesPerTransactionMax) else { throw DecodeError("\(n) participants in a \(what)") }
        var participants: [ParticipantRef] = []
        for _ in 0..<n {
            let name = try r.string(maxCount: 4096)
            var url = try r.string(maxCount: 4096)
            while url.utf8.count > 7 && url.utf8.last == UInt8(ascii: "/") { url.removeLast() }
            let incarnation = try r.string(maxCount: 128)
            participants.append(ParticipantRef(name: name, url: url, incarnation: incarnation.isEmpty ? nil : incarnation))
        }
        return participants
    }

    static func decodeDecision(_ r: inout ByteReader) throws -> Coordinator.Record {
        let txid = try decodeTxID(&r)
        let at = try r.i64()
        let participants = try decodeParticipants(&r, what: "decision")
        return .commitDecision(txid, participants: participants, decidedAtMs: at)
    }

    static func encodePreCommitBody(_ w: inout ByteWriter, participants: [ParticipantRef], termination: Termination, atMs: Int64) {
        w.u8(termination == .quorum ? 1 : 0)
        w.i64(atMs)
        encodeParticipants(&w, participants)
    }

    static func decodePreCommit(_ r: inout ByteReader, txid: TxID) throws -> Coordinator.Record {
        let termination: Termination = try r.u8() == 1 ? .quorum : .classic
        let at = try r.i64()
        let participants = try decodeParticipants(&r, what: "pre-commit")
        return .preCommit(txid, participants: participants, termination: termination, atMs: at)
    }

    static func encodeNames(_ w: inout ByteWriter, _ names: [String]) {
        w.u32(UInt32(names.count))
        for n in names { w.string(n) }
    }

    /// At most `countMax` names of at most `bytesMax` bytes each; past the count the error says
    /// "N `what`".
    static func decodeNames(_ r: inout ByteReader, countMax: Int = Limits.branchesPerTransactionMax, bytesMax: Int = 4096,
                            what: String = "names") throws -> [String] {
        let n = try r.u32()
        guard n <= UInt32(countMax) else { throw DecodeError("\(n) \(what)") }
        return try (0..<n).map { _ in try r.string(maxCount: bytesMax) }
    }

    /// A heuristic-mixed transaction kept for views, in a snapshot: what `txctl show` and
    /// `explain` read (outcome, why, protocol, and each branch's name, address and forced
    /// outcome). Its timeline and attempts are not kept.
    static func encodeMixedKept(_ w: inout ByteWriter, _ tx: Coordinator.Transaction) {
        w.string(tx.txid.description)
        w.bool(tx.outcome == .committed)
        w.string(String(decoding: (tx.reason ?? "").utf8.prefix(Limits.reasonBytesMax), as: UTF8.self))
        w.i64(tx.createdAtMs)
        w.i64(tx.finishedAtMs ?? tx.createdAtMs)
        switch tx.commitProtocol {
        case .twoPhase: w.u8(0)
        case .threePhase(let t): w.u8(t == .quorum ? 2 : 1)
        }
        w.u32(UInt32(tx.branches.count))
        for b in tx.branches {
            w.string(b.participant.name)
            w.string(b.participant.url)
            w.u8(b.heuristic == nil ? 0 : b.heuristic == .committed ? 1 : 2)
        }
    }

    static func decodeMixedKept(_ r: inout ByteReader) throws -> Coordinator.Transaction {
        let txid = try decodeTxID(&r)
        let outcome: Outcome = try r.bool() ? .committed : .aborted
        let reason = try r.string(maxCount: Limits.reasonBytesMax + 4)
        var tx = Coordinator.Transaction(txid: txid, state: .heuristicMixed, createdAtMs: try r.i64(), timeoutMs: 0)
        tx.finishedAtMs = try r.i64()
        tx.outcome = outcome
        tx.reason = reason.isEmpty ? nil : reason
        switch try r.u8() {
        case 0: tx.commitProtocol = .twoPhase
        case 1: tx.commitProtocol = .threePhase(.classic)
        case 2: tx.commitProtocol = .threePhase(.quorum)
        case let k: throw DecodeError("unknown commit protocol \(k) for \(txid)")
        }
        let branchCount = try r.u32()
        guard branchCount <= UInt32(Limits.branchesPerTransactionMax) else { throw DecodeError("\(branchCount) branches of \(txid)") }
        for _ in 0..<branchCount {
            // The bounds the other sections read names with: a heuristic report's name is the
            // reporter's and was not checked against the registration's limit.
            let name = try r.string(maxCount: 4096)
            let url = try r.string(maxCount: 4096)
            let heuristic: Outcome?
            switch try r.u8() {
            case 0: heuristic = nil
            case 1: heuristic = .committed
            case 2: heuristic = .aborted
            case let k: throw DecodeError("unknown forced outcome \(k) for \(txid) at \(name)")
            }
            tx.branches.append(Coordinator.Branch(participant: ParticipantRef(name: name, url: url),
                                                  state: outcome == .committed ? .committed : .aborted, heuristic: heuristic))
        }
        tx.events = [Coordinator.TimelineEvent(atMs: tx.finishedAtMs ?? tx.createdAtMs, event: "heuristic-mixed", participant: nil,
                                               detail: "from a checkpoint (the timeline is not kept)")]
        return tx
    }

    static func decodeTxID(_ r: inout ByteReader) throws -> TxID {
        let s = try r.string(maxCount: 128)
        guard let txid = TxID(s) else { throw DecodeError("bad txid \(s)") }
        return txid
    }
}

/// A transaction an `OpenTransactions` table holds: whether it is decided and only waits on
/// its participants (counted apart for admission), and the submitted work it holds.
protocol SettlingTransaction {
    var isSettling: Bool { get }
    var workBytes: Int { get }
}

extension SettlingTransaction {
    var workBytes: Int { 0 }
}

extension Coordinator.Transaction: SettlingTransaction {
    var isSettling: Bool { state == .committing }
    /// Its branches' submitted work not yet handed off (each lets it go once it voted).
    var workBytes: Int {
        var bytes = 0
        for b in branches { bytes += b.workBytes }
        return bytes
    }
}

/// Open transactions by txid, counting the settling ones as the table changes (every write goes
/// through the subscript or `removeValue`), so admission tells them from the undecided ones
/// without a scan. A protocol, not a closure: specialized, reading the old value's state costs
/// no copy of the transaction (a closure taking it retained every field, 8% of cohortd's
/// instructions per transfer in the profile).
struct OpenTransactions<Value: SettlingTransaction> {
    private(set) var byID: [TxID: Value] = [:]
    private(set) var settlingCount = 0
    /// The `workBytes` of the transactions held: every write goes through here, so work let go
    /// on any path (a vote, an end, a transaction dropped) stops counting.
    private(set) var workBytes = 0

    var count: Int { byID.count }

    subscript(txid: TxID) -> Value? {
        get { byID[txid] }
        set {
            if let value = newValue { put(value, txid) } else { removeValue(forKey: txid) }
        }
    }

    /// Values are read once they are owned (the one put, the one the table gives back), never
    /// through an optional chain on a borrowed one: that copied the whole transaction, ten
    /// times a transfer (the profile's `outlined init with copy of Transaction?`). `consuming`:
    /// the caller's transaction moves into the table; borrowed, the table took a copy of it
    /// (every array and string retained) and the caller then destroyed its own, ten times a
    /// transfer.
    mutating func put(_ value: consuming Value, _ txid: TxID) {
        let now = value.isSettling
        workBytes += value.workBytes
        if let old = byID.updateValue(value, forKey: txid) {
            if old.isSettling != now { settlingCount += now ? 1 : -1 }
            workBytes -= old.workBytes
        } else if now {
            settlingCount += 1
        }
        precondition(settlingCount >= 0 && workBytes >= 0, "settling count or work bytes below zero")
    }

    @discardableResult
    mutating func removeValue(forKey txid: TxID) -> Value? {
        guard let removed = byID.removeValue(forKey: txid) else { return nil }
        if removed.isSettling { settlingCount -= 1 }
        workBytes -= removed.workBytes
        return removed
    }
}
