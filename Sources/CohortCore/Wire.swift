/// JSON bodies exchanged over HTTP (see docs/protocol.md and docs/openapi.json). Field names
/// are snake_case, as the contract requires.

public struct ErrorBody: Codable, Sendable {
    public let error: String
    public init(error: String) { self.error = error }
}

public struct BeginRequest: Codable, Sendable {
    public var `protocol`: String?
    public var timeoutMs: Int64?
    public var termination: String?
    public init(protocol: String? = nil, timeoutMs: Int64? = nil, termination: String? = nil) {
        self.protocol = `protocol`
        self.timeoutMs = timeoutMs
        self.termination = termination
    }
    enum CodingKeys: String, CodingKey {
        case `protocol`, termination
        case timeoutMs = "timeout_ms"
    }
}

public struct BeginResponse: Codable, Sendable {
    public let txid: String
    public let timeoutMs: Int64?
    public init(txid: String, timeoutMs: Int64?) {
        self.txid = txid
        self.timeoutMs = timeoutMs
    }
    enum CodingKeys: String, CodingKey {
        case txid
        case timeoutMs = "timeout_ms"
    }
}

public struct OutcomeResponse: Codable, Sendable {
    public let txid: String
    public let outcome: String
    public let reason: String?
    public init(txid: String, outcome: String, reason: String?) {
        self.txid = txid
        self.outcome = outcome
        self.reason = reason
    }
}

public struct RegisterRequest: Codable, Sendable {
    public let participant: String
    public let url: String
    public let incarnation: String?
    /// The participant serves `POST /v1/batch` (several protocol messages in one exchange).
    public let batch: Bool?
    /// The participant process's session (`ParticipantRef.session`).
    public let session: String?
    public init(participant: String, url: String, incarnation: String? = nil, batch: Bool? = nil, session: String? = nil) {
        self.participant = participant
        self.url = url
        self.incarnation = incarnation
        self.batch = batch
        self.session = session
    }

    public var participantRef: ParticipantRef {
        ParticipantRef(name: participant, url: url, incarnation: incarnation, session: session.map(ParticipantRef.sessionKey))
    }
}

/// The optional body of `POST /v1/transactions/{txid}/commit` and `/abort`: branches the client
/// names itself (its work went with `"register": false`), each as the agent's work answer gave it.
public struct NamedBranches: Codable, Sendable {
    public let branches: [RegisterRequest]
    public init(branches: [RegisterRequest]) { self.branches = branches }
}

public struct RegisterResponse: Codable, Sendable {
    public let txid: String
    public let timeoutMs: Int64
    /// The txid whose commit this participant (name and incarnation) acknowledged last to
    /// the coordinator, if it knows one: a participant that neither knows that txid's outcome
    /// nor let it go runs on data older than what it acknowledged (docs/protocol.md, rule 14).
    public let lastAcknowledgedCommit: String?
    public init(txid: String, timeoutMs: Int64, lastAcknowledgedCommit: String? = nil) {
        self.txid = txid
        self.timeoutMs = timeoutMs
        self.lastAcknowledgedCommit = lastAcknowledgedCommit
    }
    enum CodingKeys: String, CodingKey {
        case txid
        case timeoutMs = "timeout_ms"
        case lastAcknowledgedCommit = "last_acknowledged_commit"
    }
}

/// The coordinator's answer to a participant asking for an outcome.
public struct InquiryResponse: Codable, Sendable {
    public let txid: String
    public let outcome: String
    public init(txid: String, outcome: String) {
        self.txid = txid
        self.outcome = outcome
    }
}

public struct PrepareRequest: Codable, Sendable {
    public let txid: String
    public let onePhase: Bool?
    public let participants: [ParticipantRef]?
    /// The incarnation the coordinator knows this participant by (see `ParticipantRef`).
    public let incarnation: String?
    /// "3pc" for a three-phase commit's CanCommit (absent: 2pc).
    public let `protocol`: String?
    /// 3PC: "classic" or "quorum" termination.
    public let termination: String?
    /// A submitted transaction's work for this participant (for the agent, a `/v1/work` ops
    /// array): stage it, then vote. Not part of the Codable form; the wire reader carries it.
    public var ops: JSONNode? = nil
    /// With `ops`: the transaction's timeout, which a participant that did not see the
    /// transaction begin uses for its branch's expiry.
    public var timeoutMs: Int64? = nil
    /// With `ops`: the name the client gave this branch. A participant by another name refuses
    /// the work: two branches whose URLs reach one participant (an alias, a typo) would
    /// otherwise share one staged branch there, and the second branch's work would be lost
    /// while the transaction commits.
    public var participant: String? = nil
    /// As in `RegisterResponse`: the last commit this participant acknowledged.
    public var lastAcknowledgedCommit: String? = nil
    /// With `lastAcknowledgedCommit` when this message names no `incarnation` (a submitted
    /// branch): the incarnation that acknowledged it. A participant with another one ignores
    /// the figure (it is another directory's).
    public var lastAcknowledgedIncarnation: String? = nil
    public init(txid: String, onePhase: Bool?, participants: [ParticipantRef]?, incarnation: String? = nil,
                protocol: String? = nil, termination: String? = nil, ops: JSONNode? = nil, timeoutMs: Int64? = nil,
                participant: String? = nil, lastAcknowledgedCommit: String? = nil, lastAcknowledgedIncarnation: String? = nil) {
        self.lastAcknowledgedCommit = lastAcknowledgedCommit
        self.lastAcknowledgedIncarnation = lastAcknowledgedIncarnation
        self.ops = ops
        self.timeoutMs = timeoutMs
        self.participant = participant
        self.txid = txid
        self.onePhase = onePhase
        self.participants = participants
        self.incarnation = incarnation
        self.protocol = `protocol`
        self.termination = termination
    }
    enum CodingKeys: String, CodingKey {
        case txid, participants, incarnation, `protocol`, termination
        case onePhase = "one_phase"
        case lastAcknowledgedCommit = "last_acknowledged_commit"
        case lastAcknowledgedIncarnation = "last_acknowledged_incarnation"
    }
}

/// A participant's answer to a prepare: `vote` is yes, no or read-only. For a one-phase commit
/// the answer carries `outcome` instead.
public struct PrepareResponse: Codable, Sendable {
    public let txid: String
    public let vote: String?
    public let outcome: String?
    public let reason: String?
    public init(txid: String, vote: String?, outcome: String?, reason: String?) {
        self.txid = txid
        self.vote = vote
        self.outcome = outcome
        self.reason = reason
    }
}

/// Body of a second-phase message (commit, abort).
public struct PhaseRequest: Codable, Sendable {
    public let txid: String
    public let incarnation: String?
    /// 3PC: sent by a peer acting as backup coordinator in the termination protocol.
    public let backup: Bool?
    public init(txid: String, incarnation: String? = nil, backup: Bool? = nil) {
        self.txid = txid
        self.incarnation = incarnation
        self.backup = backup
    }
}

/// 3PC: `POST /v1/3pc/state` answer.
public struct ThreePhaseStateResponse: Codable, Sendable {
    public let txid: String
    public let state: String
    /// Present (true) when the branch was rebuilt by a restart and has no outcome yet: under
    /// classic termination its pre-state may predate a decision it missed (docs/protocol.md).
    public let recovered: Bool?
    public init(txid: String, state: String, recovered: Bool? = nil) {
        self.txid = txid
        self.state = state
        self.recovered = recovered
    }
}

public struct PhaseResponse: Codable, Sendable {
    public let txid: String
    public let status: String
    public init(txid: String, status: String) {
        self.txid = txid
        self.status = status
    }
}

public struct TransactionView: Codable, Sendable {
    public struct BranchView: Codable, Sendable {
        public let participant: String
        public let url: String
        public let state: String
        public let vote: String?
        public let attempts: Int
        public let lastError: String?
        public let nextRetryAt: String?
        public let history: [AttemptView]?
        public let heuristic: String?
        /// Who forced the heuristic outcome at the participant, why and when (its clock), as
        /// its report said; absent when it did not (agents before session 26).
        public let heuristicOperator: String?
        public let heuristicReason: String?
        public let heuristicForcedAt: String?
        enum CodingKeys: String, CodingKey {
            case participant, url, state, vote, attempts, history, heuristic
            case lastError = "last_error"
            case nextRetryAt = "next_retry_at"
            case heuristicOperator = "heuristic_operator"
            case heuristicReason = "heuristic_reason"
            case heuristicForcedAt = "heuristic_forced_at"
        }
        public init(participant: String, url: String, state: String, vote: String?, attempts: Int, lastError: String?, nextRetryAt: String?,
                    history: [AttemptView]? = nil, heuristic: String? = nil,
                    heuristicOperator: String? = nil, heuristicReason: String? = nil, heuristicForcedAt: String? = nil) {
            self.participant = participant
            self.url = url
            self.state = state
            self.vote = vote
            self.attempts = attempts
            self.lastError = lastError
            self.nextRetryAt = nextRetryAt
            self.history = history
            self.heuristic = heuristic
            self.heuristicOperator = heuristicOperator
            self.heuristicReason = heuristicReason
            self.heuristicForcedAt = heuristicForcedAt
        }
    }

    public struct AttemptView: Codable, Sendable {
        public let at: String
        public let error: String
        public init(at: String, error: String) {
            self.at = at
            self.error = error
        }
    }

    public struct AuditView: Codable, Sendable {
        public let at: String
        public let `operator`: String
        public let action: String
        public let reason: String
        public let detail: String
        /// The branches whose wait the force ended (`resolved-by-operator`), empty when it ended
        /// none; absent for an entry read back from an audit record written before session 32,
        /// which named them only in `detail` (`Coordinator.AuditEntry.resolvedBranches`).
        public let resolvedBranches: [String]?
        enum CodingKeys: String, CodingKey {
            case at, `operator`, action, reason, detail
            case resolvedBranches = "resolved_branches"
        }
        public init(at: String, operator: String, action: String, reason: String, detail: String, resolvedBranches: [String]? = nil) {
            self.at = at
            self.operator = `operator`
            self.action = action
            self.reason = reason
            self.detail = detail
            self.resolvedBranches = resolvedBranches
        }

        public init(_ entry: Coordinator.AuditEntry) {
            self.init(at: TimeFormat.iso8601(ms: entry.atMs), operator: entry.operatorName, action: entry.action, reason: entry.reason,
                      detail: entry.detail, resolvedBranches: entry.resolvedBranches)
        }
    }

    public struct EventView: Codable, Sendable {
        public let at: String
        public let event: String
        public let participant: String?
        public let detail: String?
        public init(at: String, event: String, participant: String?, detail: String?) {
            self.at = at
            self.event = event
            self.participant = participant
            self.detail = detail
        }
    }

    public let txid: String
    public let `protocol`: String
    /// 3PC only: `classic` or `quorum`, how it decides when its coordinator is silent and when
    /// the coordinator commits after the pre-commit (added in session 30; absent from older
    /// coordinators).
    public let termination: String?
    public let state: String
    public let outcome: String?
    public let reason: String?
    /// Absent only for a forgotten transaction (`forgotten`).
    public let createdAt: String?
    public let finishedAt: String?
    public let timeoutMs: Int64?
    public let branches: [BranchView]
    public let events: [EventView]
    public let parked: Bool?
    public let audit: [AuditView]?
    /// True for a transaction the coordinator no longer keeps whole: its outcome comes from
    /// the coordinator's ledger of outcomes (or, for one an operator forced, its memory of forced
    /// outcomes), and its branches and timeline are gone. A forced one still has its `audit`
    /// entries while that memory keeps them (session 32).
    public let forgotten: Bool?

    enum CodingKeys: String, CodingKey {
        case txid, `protocol`, termination, state, outcome, reason, branches, events, parked, audit, forgotten
        case createdAt = "created_at"
        case finishedAt = "finished_at"
        case timeoutMs = "timeout_ms"
    }

    public init(txid: String, protocol: String, state: String, outcome: String?, reason: String?, createdAt: String, finishedAt: String?, timeoutMs: Int64, branches: [BranchView], events: [EventView], parked: Bool? = nil, audit: [AuditView]? = nil,
                termination: String? = nil) {
        self.parked = parked
        self.audit = audit
        self.txid = txid
        self.protocol = `protocol`
        self.termination = termination
        self.state = state
        self.outcome = outcome
        self.reason = reason
        self.createdAt = createdAt
        self.finishedAt = finishedAt
        self.timeoutMs = timeoutMs
        self.branches = branches
        self.events = events
        self.forgotten = nil
    }

    /// The view of a forgotten transaction: its outcome only, and the audit entries of an
    /// operator's force when they are kept (`reason`: why it aborted, when known).
    public init(forgotten txid: TxID, protocol: String, state: String, outcome: String, reason: String? = nil, audit: [Coordinator.AuditEntry] = []) {
        self.txid = txid.description
        self.protocol = `protocol`
        self.termination = nil
        self.state = state
        self.outcome = outcome
        self.reason = reason ?? (outcome == "aborted" ? Coordinator.forgottenAbortReason : nil)
        self.createdAt = nil
        self.finishedAt = nil
        self.timeoutMs = nil
        self.branches = []
        self.events = []
        self.parked = nil
        self.audit = audit.isEmpty ? nil : audit.map(AuditView.init)
        self.forgotten = true
    }
}

public struct TransactionList: Codable, Sendable {
    public let transactions: [TransactionView]
    /// Set when the coordinator stopped adding transactions at `Limits.transactionsListedBytesMax`
    /// of answer, before `limit`.
    public let truncated: Bool?
    public init(transactions: [TransactionView], truncated: Bool? = nil) {
        self.transactions = transactions
        self.truncated = truncated
    }
}

/// A key a participant's branch holds a lock on: `lock` is `exclusive` or `shared`, `ops` the
/// kinds of op staged on it (absent when not known: a branch restored in doubt after a restart
/// keeps only its write set).
public struct BranchKey: Codable, Sendable, Equatable {
    public let key: String
    public let lock: String
    public let ops: [String]?
    public init(key: String, lock: String, ops: [String]?) {
        self.key = key
        self.lock = lock
        self.ops = ops
    }
}

public struct BranchSummary: Codable, Sendable {
    public let txid: String
    public let state: String
    public let coordinator: String?
    /// The first `Limits.branchKeysListedMax` keys the branch holds locks on, and how many it
    /// holds in all; absent for a branch that holds none.
    public let keys: [BranchKey]?
    public let keysTotal: Int?
    enum CodingKeys: String, CodingKey {
        case txid, state, coordinator, keys
        case keysTotal = "keys_total"
    }
    public init(txid: String, state: String, coordinator: String?, keys: [BranchKey]? = nil, keysTotal: Int? = nil) {
        self.txid = txid
        self.state = state
        self.coordinator = coordinator
        self.keys = keys
        self.keysTotal = keysTotal
    }
}

public struct BranchList: Codable, Sendable {
    public let branches: [BranchSummary]
    /// For `?key=K`: the key asked about, and the branches queued for its lock, front first
    /// (`branches` are those holding it).
    public let key: String?
    public let waiters: [String]?
    /// Branches listed with `keys_total` alone: the list's key names reached
    /// `Limits.branchKeysListedBytesMax` (`GET /v1/branches/{txid}` names them).
    public let keysOmitted: Int?
    enum CodingKeys: String, CodingKey {
        case branches, key, waiters
        case keysOmitted = "keys_omitted"
    }
    public init(branches: [BranchSummary], key: String? = nil, waiters: [String]? = nil, keysOmitted: Int? = nil) {
        self.branches = branches
        self.key = key
        self.waiters = waiters
        self.keysOmitted = keysOmitted
    }
}

public struct HealthResponse: Codable, Sendable {
    public let status: String
    /// A participant's name and the address it gives the coordinator (`--advertise`), for
    /// clients that name it in `POST /v1/transactions/submit`.
    public let participant: String?
    public let url: String?
    /// A participant that refuses new work from a coordinator because its data is older than
    /// what it acknowledged there (its status stays `ok`): why, per coordinator.
    public let problem: String?
    public init(status: String, participant: String? = nil, url: String? = nil, problem: String? = nil) {
        self.status = status
        self.participant = participant
        self.url = url
        self.problem = problem
    }
}

extension Coordinator.Transaction {
    /// The JSON view of `GET /v1/transactions/{txid}`.
    public func view() -> TransactionView {
        TransactionView(
            txid: txid.description,
            protocol: commitProtocol.name,
            state: state.rawValue,
            outcome: outcome?.rawValue,
            reason: reason,
            createdAt: TimeFormat.iso8601(ms: createdAtMs),
            finishedAt: finishedAtMs.map { TimeFormat.iso8601(ms: $0) },
            timeoutMs: timeoutMs,
            branches: branches.map {
                TransactionView.BranchView(participant: $0.participant.name, url: $0.participant.url, state: $0.state.rawValue,
                                           vote: $0.vote?.wireName, attempts: $0.attempts, lastError: $0.lastError,
                                           nextRetryAt: $0.nextRetryAtMs.map { TimeFormat.iso8601(ms: $0) },
                                           history: $0.history.map { TransactionView.AttemptView(at: TimeFormat.iso8601(ms: $0.atMs), error: $0.error) },
                                           heuristic: $0.heuristic?.rawValue,
                                           heuristicOperator: $0.heuristicForce?.operatorName, heuristicReason: $0.heuristicForce?.reason,
                                           heuristicForcedAt: $0.heuristicForce?.forcedAtMs.map { TimeFormat.iso8601(ms: $0) })
            },
            events: events.map {
                TransactionView.EventView(at: TimeFormat.iso8601(ms: $0.atMs), event: $0.event, participant: $0.participant, detail: $0.detail)
            },
            parked: parked,
            audit: audit.map { TransactionView.AuditView($0) },
            termination: { if case .threePhase(let t) = commitProtocol { return t.rawValue } else { return nil } }())
    }
}

/// `POST /v1/transactions/{txid}/force` and the agent's `POST /v1/branches/{txid}/force`.
public struct ForceBody: Codable, Sendable {
    public let outcome: String
    public let reason: String
    public let `operator`: String?
    public let dryRun: Bool?
    public init(outcome: String, reason: String, operator: String?, dryRun: Bool?) {
        self.outcome = outcome
        self.reason = reason
        self.operator = `operator`
        self.dryRun = dryRun
    }
    enum CodingKeys: String, CodingKey {
        case outcome, reason, `operator`
        case dryRun = "dry_run"
    }
}

/// An operator's force names every field it sends: a misspelt `dry_run` ("dryRun",
/// "dry-run") was dropped by the decoder and the force ran for real, and a typo in another
/// field would be taken without a word as well. So unknown fields are refused (400).
extension ForceBody: WireDecodable {
    public static let fields = ["outcome", "reason", "operator", "dry_run"]
    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(Self.fields)
        self.init(outcome: try o.string("outcome"), reason: try o.string("reason"), operator: try o.optString("operator"),
                  dryRun: try o.optBool("dry_run"))
    }
}

extension ForgetBody: WireDecodable {
    public static let fields = ["reason", "operator", "dry_run"]
    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(Self.fields)
        self.init(reason: try o.string("reason"), operator: try o.optString("operator"), dryRun: try o.optBool("dry_run"))
    }
}

/// The agent's `POST /v1/branches/{txid}/forget`: retire a heuristically decided branch. The
/// answer is a `ForceResponse` (the outcome the branch keeps, and what was done).
public struct ForgetBody: Codable, Sendable {
    public let reason: String
    public let `operator`: String?
    public let dryRun: Bool?
    public init(reason: String, operator: String?, dryRun: Bool?) {
        self.reason = reason
        self.operator = `operator`
        self.dryRun = dryRun
    }
    enum CodingKeys: String, CodingKey {
        case reason, `operator`
        case dryRun = "dry_run"
    }
}

public struct ForceResponse: Codable, Sendable {
    public let txid: String
    public let outcome: String
    public let dryRun: Bool
    public let effects: [String]
    /// At a participant: the keys whose locks the force releases (applying the write set first
    /// for a commit), the first `Limits.branchKeysListedMax` of `keys_total`.
    public let keys: [BranchKey]?
    public let keysTotal: Int?
    public init(txid: String, outcome: String, dryRun: Bool, effects: [String], keys: [BranchKey]? = nil, keysTotal: Int? = nil) {
        self.txid = txid
        self.outcome = outcome
        self.dryRun = dryRun
        self.effects = effects
        self.keys = keys
        self.keysTotal = keysTotal
    }
    enum CodingKeys: String, CodingKey {
        case txid, outcome, effects, keys
        case dryRun = "dry_run"
        case keysTotal = "keys_total"
    }
}

public struct RetryResponse: Codable, Sendable {
    public let txid: String
    public let participants: [String]
    public init(txid: String, participants: [String]) {
        self.txid = txid
        self.participants = participants
    }
}

/// `GET /v1/submissions/{request_id}`: what the coordinator knows of a submission, without
/// running anything. `transaction_kept` false: the transaction itself is forgotten (its `GET`
/// gives the outcome alone from the ledger of outcomes, or 410 past it) and only the
/// committed-submission memory still has its txid.
public struct SubmissionView: Codable, Sendable, Equatable {
    public let requestID: String
    public let txid: String
    public let state: String
    public let outcome: String?
    public let transactionKept: Bool
    enum CodingKeys: String, CodingKey {
        case txid, state, outcome
        case requestID = "request_id"
        case transactionKept = "transaction_kept"
    }
    public init(requestID: String, txid: String, state: String, outcome: String?, transactionKept: Bool) {
        self.requestID = requestID
        self.txid = txid
        self.state = state
        self.outcome = outcome
        self.transactionKept = transactionKept
    }
}

/// A participant tells the coordinator that an operator forced its branch's outcome, and (from
/// session 26, each optional) who forced it, why, and when by the participant's wall clock.
public struct HeuristicReport: Codable, Sendable {
    public let participant: String
    public let outcome: String
    public let `operator`: String?
    public let reason: String?
    public let forcedAtMs: Int64?
    public init(participant: String, outcome: String, operator: String? = nil, reason: String? = nil, forcedAtMs: Int64? = nil) {
        self.participant = participant
        self.outcome = outcome
        self.operator = `operator`
        self.reason = reason
        self.forcedAtMs = forcedAtMs
    }
    enum CodingKeys: String, CodingKey {
        case participant, outcome, `operator`, reason
        case forcedAtMs = "forced_at_ms"
    }
}

public struct HeuristicResponse: Codable, Sendable {
    public let txid: String
    public let mixed: Bool
    public init(txid: String, mixed: Bool) {
        self.txid = txid
        self.mixed = mixed
    }
}

/// `GET /v1/branches/{txid}` at a participant.
public struct BranchDetail: Codable, Sendable {
    public struct Decision: Codable, Sendable {
        public let outcome: String
        public let reason: String
        public let `operator`: String
        public let at: String
        /// The keys whose locks the force released, the first `Limits.branchKeysShownMax` of
        /// `released_keys_total`, from its durable record; absent when it released none (or
        /// was recorded before session 26).
        public let releasedKeys: [String]?
        public let releasedKeysTotal: Int?
        public init(outcome: String, reason: String, operator: String, at: String, releasedKeys: [String]? = nil, releasedKeysTotal: Int? = nil) {
            self.outcome = outcome
            self.reason = reason
            self.operator = `operator`
            self.at = at
            self.releasedKeys = releasedKeys
            self.releasedKeysTotal = releasedKeysTotal
        }
        enum CodingKeys: String, CodingKey {
            case outcome, reason, `operator`, at
            case releasedKeys = "released_keys"
            case releasedKeysTotal = "released_keys_total"
        }
    }
    public let txid: String
    public let state: String
    public let coordinator: String?
    public let writeSetBytes: Int?
    public let inquiries: Int?
    public let lastInquiryError: String?
    public let heuristic: Decision?
    /// The first `Limits.branchKeysShownMax` keys the branch holds locks on, of `keys_total`;
    /// absent when it holds none.
    public let keys: [BranchKey]?
    public let keysTotal: Int?
    /// True for a branch an operator forgot (`heuristic` says who forced it; the forget's own
    /// audit is in the agent's log); absent otherwise.
    public let forgotten: Bool?
    enum CodingKeys: String, CodingKey {
        case txid, state, coordinator, inquiries, heuristic, keys, forgotten
        case writeSetBytes = "write_set_bytes"
        case lastInquiryError = "last_inquiry_error"
        case keysTotal = "keys_total"
    }
    public init(txid: String, state: String, coordinator: String?, writeSetBytes: Int?, inquiries: Int?, lastInquiryError: String?, heuristic: Decision?,
                keys: [BranchKey]? = nil, keysTotal: Int? = nil, forgotten: Bool? = nil) {
        self.forgotten = forgotten
        self.txid = txid
        self.state = state
        self.coordinator = coordinator
        self.writeSetBytes = writeSetBytes
        self.inquiries = inquiries
        self.lastInquiryError = lastInquiryError
        self.heuristic = heuristic
        self.keys = keys
        self.keysTotal = keysTotal
    }
}

/// `GET /v1/stats` at the coordinator.
public struct StatsResponse: Codable, Sendable {
    public struct Latency: Codable, Sendable {
        public let samples: Int
        public let p50Ms: Double
        public let p95Ms: Double
        public let p99Ms: Double
        public let maxMs: Double
        enum CodingKeys: String, CodingKey {
            case samples
            case p50Ms = "p50_ms"
            case p95Ms = "p95_ms"
            case p99Ms = "p99_ms"
            case maxMs = "max_ms"
        }
        public init(samples: Int, p50Ms: Double, p95Ms: Double, p99Ms: Double, maxMs: Double) {
            self.samples = samples
            self.p50Ms = p50Ms
            self.p95Ms = p95Ms
            self.p99Ms = p99Ms
            self.maxMs = maxMs
        }
    }
    /// Transactions held in memory (open, and recently finished), by state.
    public let byState: [String: Int]
    /// Decided since this coordinator started, by outcome.
    public let totals: [String: UInt64]
    /// Decisions per second over the last minute, by outcome.
    public let ratesPerS: [String: Double]
    public let open: Int
    public let parked: Int
    /// Commit requests: from the request to the answer.
    public let commitLatency: Latency
    public let uptimeS: Int64
    enum CodingKeys: String, CodingKey {
        case totals, open, parked
        case byState = "by_state"
        case ratesPerS = "rates_per_s"
        case commitLatency = "commit_latency"
        case uptimeS = "uptime_s"
    }
    public init(byState: [String: Int], totals: [String: UInt64], ratesPerS: [String: Double], open: Int, parked: Int, commitLatency: Latency, uptimeS: Int64) {
        self.byState = byState
        self.totals = totals
        self.ratesPerS = ratesPerS
        self.open = open
        self.parked = parked
        self.commitLatency = commitLatency
        self.uptimeS = uptimeS
    }
}

/// One outbox message as the outbox admin API shows it (`GET /v1/outbox`), shared by the relay
/// that serves it and `txctl outbox` that reads it.
/// The outbox admin list's `sink_unavailable`: the relay's sink has not answered its last
/// calls, so messages wait in the table (none of them is at fault, and no attempt is counted).
public struct OutboxSinkTrouble: Codable, Equatable, Sendable {
    public var name: String
    /// Calls in a row that could not reach the sink.
    public var failedCalls: Int
    public var failingForMs: Int64
    public var lastError: String
    public init(name: String, failedCalls: Int, failingForMs: Int64, lastError: String) {
        self.name = name
        self.failedCalls = failedCalls
        self.failingForMs = failingForMs
        self.lastError = lastError
    }
    enum CodingKeys: String, CodingKey {
        case name
        case failedCalls = "failed_calls"
        case failingForMs = "failing_for_ms"
        case lastError = "last_error"
    }
}

public struct OutboxMessageView: Codable, Equatable, Sendable {
    public var id: Int64
    public var messageID: String
    public var topic: String
    public var key: String
    public var state: String
    public var attempts: Int
    public var createdMs: Int64
    public var lastError: String?
    public var deadMs: Int64?
    public var payloadBytes: Int

    enum CodingKeys: String, CodingKey {
        case id, topic, key, state, attempts
        case messageID = "message_id"
        case createdMs = "created_ms"
        case lastError = "last_error"
        case deadMs = "dead_ms"
        case payloadBytes = "payload_bytes"
    }

    public init(id: Int64, messageID: String, topic: String, key: String, state: String, attempts: Int,
                createdMs: Int64, lastError: String?, deadMs: Int64?, payloadBytes: Int) {
        self.id = id
        self.messageID = messageID
        self.topic = topic
        self.key = key
        self.state = state
        self.attempts = attempts
        self.createdMs = createdMs
        self.lastError = lastError
        self.deadMs = deadMs
        self.payloadBytes = payloadBytes
    }
}

// MARK: - hand-written JSON for the types on the transaction path (see WireJSON.swift)

extension ErrorBody: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws { self.init(error: try o.string("error")) }
    public func writeWire(_ w: inout JSONWriter) { w.beginObject(); w.field("error", error); w.endObject() }
}

/// What an application sends the coordinator to begin or submit a transaction names every field
/// it sends: a misspelt optional field took its default without a word (`"protcol": "3pc"`
/// began a 2PC transaction, `"requestId"` left a submission without its idempotency key, so a
/// resend ran it twice). So unknown fields are refused (400 naming the field). Protocol messages
/// between the coordinator and its participants stay lenient, so that either side can be
/// upgraded first.
extension BeginRequest: WireDecodable, WireEncodable {
    public static let fields = ["protocol", "timeout_ms", "termination"]
    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(Self.fields)
        self.init(protocol: try o.optString("protocol"), timeoutMs: try o.optInt64("timeout_ms"), termination: try o.optString("termination"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("protocol", self.protocol); w.field("timeout_ms", timeoutMs); w.field("termination", termination); w.endObject()
    }
}

extension BeginResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws { self.init(txid: try o.string("txid"), timeoutMs: try o.optInt64("timeout_ms")) }
    public func writeWire(_ w: inout JSONWriter) { w.beginObject(); w.field("txid", txid); w.field("timeout_ms", timeoutMs); w.endObject() }
}

extension OutcomeResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), outcome: try o.string("outcome"), reason: try o.optString("reason"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("txid", txid); w.field("outcome", outcome); w.field("reason", reason); w.endObject()
    }
}

extension RegisterRequest: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(participant: try o.string("participant"), url: try o.string("url"), incarnation: try o.optString("incarnation"),
                  batch: try o.optBool("batch"), session: try o.optString("session"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("participant", participant); w.field("url", url); w.field("incarnation", incarnation); w.field("batch", batch)
        w.field("session", session)
        w.endObject()
    }
}

/// The branches an application names in its commit or abort: strict as `BeginRequest` (a
/// misspelt `incarnation` would drop the fencing it asks for). A participant's own registration
/// (`RegisterRequest` alone) stays lenient: agents and the coordinator upgrade one at a time.
extension NamedBranches: WireDecodable, WireEncodable {
    public static let fields = ["branches"]
    public static let branchFields = ["participant", "url", "incarnation", "batch", "session"]
    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(Self.fields)
        self.init(branches: try o.optObjects("branches") { b in
            try b.refuseUnknownFields(Self.branchFields)
            return try RegisterRequest(wire: b)
        } ?? [])
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.key("branches"); w.beginArray()
        for b in branches { b.writeWire(&w) }
        w.endArray(); w.endObject()
    }
}

extension RegisterResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), timeoutMs: try o.int64("timeout_ms"), lastAcknowledgedCommit: try o.optString("last_acknowledged_commit"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("txid", txid); w.field("timeout_ms", timeoutMs); w.field("last_acknowledged_commit", lastAcknowledgedCommit); w.endObject()
    }
}

extension InquiryResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws { self.init(txid: try o.string("txid"), outcome: try o.string("outcome")) }
    public func writeWire(_ w: inout JSONWriter) { w.beginObject(); w.field("txid", txid); w.field("outcome", outcome); w.endObject() }
}

extension ParticipantRef {
    init(wire o: WireObject) throws { self.init(name: try o.string("name"), url: try o.string("url"), incarnation: try o.optString("incarnation")) }
    func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("name", name); w.field("url", url); w.field("incarnation", incarnation); w.endObject()
    }
}

extension PrepareRequest: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        var ops: JSONNode?
        if let node = o["ops"] {
            guard case .array = node else { throw WireJSONError.wrongType("ops") }
            ops = node
        }
        self.init(txid: try o.string("txid"), onePhase: try o.optBool("one_phase"),
                  participants: try o.optObjects("participants") { try ParticipantRef(wire: $0) },
                  incarnation: try o.optString("incarnation"), protocol: try o.optString("protocol"), termination: try o.optString("termination"),
                  ops: ops, timeoutMs: try o.optInt64("timeout_ms"), participant: try o.optString("participant"),
                  lastAcknowledgedCommit: try o.optString("last_acknowledged_commit"),
                  lastAcknowledgedIncarnation: try o.optString("last_acknowledged_incarnation"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("txid", txid)
        w.field("one_phase", onePhase)
        if let participants {
            w.key("participants")
            w.beginArray()
            for p in participants { p.writeWire(&w) }
            w.endArray()
        }
        w.field("incarnation", incarnation)
        w.field("protocol", self.protocol)
        w.field("termination", termination)
        w.field("timeout_ms", timeoutMs)
        w.field("participant", participant)
        w.field("last_acknowledged_commit", lastAcknowledgedCommit)
        w.field("last_acknowledged_incarnation", lastAcknowledgedIncarnation)
        if let ops { w.key("ops"); w.value(ops) }
        w.endObject()
    }
}

extension PrepareResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), vote: try o.optString("vote"), outcome: try o.optString("outcome"), reason: try o.optString("reason"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("txid", txid); w.field("vote", vote); w.field("outcome", outcome); w.field("reason", reason); w.endObject()
    }
}

extension PhaseRequest: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(txid: try o.string("txid"), incarnation: try o.optString("incarnation"), backup: try o.optBool("backup"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("txid", txid); w.field("incarnation", incarnation); w.field("backup", backup); w.endObject()
    }
}

/// What a participant's `200` to `POST /v1/2pc/commit` says (docs/protocol.md, call 3). Only
/// `"status": "committed"` acknowledges the commit: a body that cannot be read (a batch answer
/// gone wrong, a proxy's page) or says anything else is no proof that the branch committed, and
/// a coordinator that took it for one would forget the transaction while the participant is
/// still prepared, and the participant's inquiry would then hear the presumed abort.
public enum CommitAnswer: Equatable, Sendable {
    case committed
    /// An operator aborted the branch (heuristic decision): it cannot commit.
    case heuristicAborted
    /// Not an acknowledgement; the reason, for the branch's last error.
    case notAnAcknowledgement(String)

    public init(body: [UInt8]) {
        let status: String?
        do {
            status = try WireObject(bytes: body).optString("status")
        } catch {
            self = .notAnAcknowledgement("unreadable answer to commit: \(error)")
            return
        }
        switch status {
        case "committed": self = .committed
        case "heuristic-aborted": self = .heuristicAborted
        case let other?: self = .notAnAcknowledgement("answer to commit says \"\(other.prefix(80))\", not \"committed\"")
        case nil: self = .notAnAcknowledgement("answer to commit has no status")
        }
    }
}

extension PhaseResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws { self.init(txid: try o.string("txid"), status: try o.string("status")) }
    public func writeWire(_ w: inout JSONWriter) { w.beginObject(); w.field("txid", txid); w.field("status", status); w.endObject() }
}

extension HealthResponse: WireDecodable, WireEncodable {
    public init(wire o: WireObject) throws {
        self.init(status: try o.string("status"), participant: try o.optString("participant"), url: try o.optString("url"),
                  problem: try o.optString("problem"))
    }
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject(); w.field("status", status); w.field("participant", participant); w.field("url", url); w.field("problem", problem); w.endObject()
    }
}

/// `POST /v1/transactions/submit`: a whole 2PC or 3PC transaction in one request. Each branch
/// names its participant and carries the operations the participant stages when the prepare
/// reaches it; the answer is an `OutcomeResponse`, as for commit.
public struct SubmitRequest: WireDecodable, WireEncodable, Sendable {
    public struct Branch: Sendable {
        public let participant: String
        public let url: String
        public let incarnation: String?
        public let ops: JSONNode
        public init(participant: String, url: String, incarnation: String? = nil, ops: JSONNode) {
            self.participant = participant
            self.url = url
            self.incarnation = incarnation
            self.ops = ops
        }
    }
    public var `protocol`: String?
    public var timeoutMs: Int64?
    public var termination: String?
    public var branches: [Branch]
    /// Idempotency key: a repeated submission with it gets the first one's outcome.
    public var requestID: String?
    public init(protocol: String? = nil, timeoutMs: Int64? = nil, termination: String? = nil, branches: [Branch], requestID: String? = nil) {
        self.requestID = requestID
        self.protocol = `protocol`
        self.timeoutMs = timeoutMs
        self.termination = termination
        self.branches = branches
    }

    public static let fields = ["protocol", "timeout_ms", "termination", "request_id", "branches"]
    public static let branchFields = ["participant", "url", "incarnation", "ops"]

    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(Self.fields)
        let branches = try o.objects("branches") { b -> Branch in
            try b.refuseUnknownFields(Self.branchFields)
            guard let ops = b["ops"] else { throw WireJSONError.missingField(b.name("ops")) }
            guard case .array = ops else { throw WireJSONError.wrongType(b.name("ops")) }
            return Branch(participant: try b.string("participant"), url: try b.string("url"), incarnation: try b.optString("incarnation"), ops: ops)
        }
        self.init(protocol: try o.optString("protocol"), timeoutMs: try o.optInt64("timeout_ms"), termination: try o.optString("termination"),
                  branches: branches, requestID: try o.optString("request_id"))
    }

    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("protocol", self.protocol)
        w.field("timeout_ms", timeoutMs)
        w.field("termination", termination)
        w.field("request_id", requestID)
        w.key("branches")
        w.beginArray()
        for b in branches {
            w.beginObject()
            w.field("participant", b.participant)
            w.field("url", b.url)
            w.field("incarnation", b.incarnation)
            w.key("ops")
            w.value(b.ops)
            w.endObject()
        }
        w.endArray()
        w.endObject()
    }
}
