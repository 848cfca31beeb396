/// A two-phase commit participant (presumed abort) as a pure state machine.
///
/// It decides what to log, answer and ask; the runtime owns the resource (locks, staged work,
/// the store), the log and the network. Rules it keeps:
/// - a yes vote is sent only after the prepared record (with the write set) is durable;
/// - a commit is acknowledged only after the commit record is durable;
/// - a no vote and a read-only vote force nothing; a read-only branch gets no second phase;
/// - once it voted yes it never decides alone: it waits for the coordinator and asks it;
/// - duplicate, late and reordered messages are harmless: a prepare after an abort is refused,
///   a repeated commit is acknowledged again, work after the outcome is refused.
public struct Participant {
    public struct Config: Sendable {
        public var name: String
        public var inquiryDelayMs = Limits.inquiryDelayMs
        public var retryDelayMsMax = Limits.retryDelayMsMax
        /// The longest wait between inquiries while the coordinator cannot be reached (the
        /// inquiry failed: refused, timed out). Answered inquiries keep `retryDelayMsMax`.
        public var unreachableDelayMsMax = Limits.inquiryUnreachableDelayMsMax
        /// The wait between the failed inquiries of an unreachable coordinator's probe branch.
        public var probeDelayMs = Limits.inquiryProbeDelayMs
        public var branchExpiryMarginMs = Limits.branchExpiryMarginMs
        public var branchesMax = Limits.branchesMax
        public var finishedBranchesKept = Limits.finishedBranchesKept
        public var terminationTimeoutMs = Limits.terminationTimeoutMs
        public var terminationRoundMs = Limits.terminationRoundMs
        /// Bytes of released key names a snapshot holds (a parameter so tests can reach it).
        public var releasedKeysInSnapshotBytesMax = Limits.releasedKeysInSnapshotBytesMax
        public var seed: UInt64 = 1

        public init(name: String) { self.name = name }
    }

    public enum Event {
        /// The coordinator accepted this participant as a branch of `txid` (or, for work sent
        /// with `"register": false`, the branch joined on its own).
        case joined(String, coordinatorURL: String, timeoutMs: Int64)
        /// An unregistered branch whose first work failed: its client never got the branch to
        /// name, and the coordinator never heard of it, so nobody else can end it before it
        /// expires. It ends now, as at its expiry, and frees whatever locks the work took.
        case abandoned(String)
        /// The runtime asked the resource to vote; the prepare request and that vote arrive here.
        case prepare(RequestID, txid: String, onePhase: Bool, vote: ResourceVote, threePhase: ThreePhaseInfo? = nil)
        /// 3PC: move to pre-committed / pre-aborted (from the coordinator, or from a peer acting
        /// as backup coordinator in the termination protocol).
        case preCommit(RequestID, txid: String, fromBackup: Bool)
        case preAbort(RequestID, txid: String)
        /// 3PC: the pre-committed or pre-aborted record is durable.
        case preRecordDurable(String)
        /// 3PC: a peer (or the coordinator) asks for this branch's state.
        case stateQuery(RequestID, txid: String)
        /// 3PC: a peer's answer in a termination round (nil: it did not answer). `recovered`:
        /// the peer's branch was rebuilt by a restart and has no outcome yet.
        case peerState(String, round: Int, peer: String, state: ThreePhaseState?, recovered: Bool)
        /// A commit or abort sent by a peer acting as backup coordinator.
        case backupDecision(RequestID, txid: String, outcome: Outcome)
        case commit(RequestID, txid: String)
        case abort(RequestID, txid: String)
        /// The forced record the state machine asked for is durable; `lsn` is its position.
        case preparedDurable(String)
        case commitDurable(String, lsn: UInt64)
        /// The forced record asked for could not be appended (log back-pressure): nothing was
        /// written. A prepare then votes no; a commit is answered 503 and will be retried.
        case recordRefused(String, reason: String)
        case inquiryAnswered(String, InquiryAnswer)
        case inquiryFailed(String, error: String)
        /// A registration sent to this coordinator URL (`POST /v1/transactions/{txid}/branches`)
        /// got an HTTP answer, `status` with `body`. One the coordinator's own server gave
        /// (`registrationAnswerShowsCoordinator`) shows it is back, so the branches waiting on it
        /// since an inquiry failed ask again now rather than at the end of their backoff.
        /// Not fed for a registration that got no answer (transport failure, timeout). Other
        /// messages from it (a prepare, a commit) do not count: a 3PC backup may send them.
        case registrationAnswered(String, status: Int, body: [UInt8])
        case timerFired(Timer)
        /// An operator forces this branch's outcome (`txctl agent URL commit|abort --force`),
        /// typically because its coordinator is gone for good.
        /// `releasedKeys`: the first `Limits.branchKeysShownMax` keys the branch holds locks on
        /// (which the force releases), of `releasedKeysTotal`; kept in the force's record.
        case force(RequestID, txid: String, outcome: Outcome, reason: String, operatorName: String, dryRun: Bool, atMs: Int64,
                   releasedKeys: [String] = [], releasedKeysTotal: Int = 0)
        /// The heuristic record is durable; `lsn` is its position (a commit applies at it).
        case heuristicDurable(String, lsn: UInt64)
        /// An operator retires a heuristically decided branch whose coordinator is gone for good
        /// (`txctl agent URL forget`): it stops asking, and its outcome stays the forced one.
        /// Standard heuristic handling keeps the decision until the coordinator forgets it; a
        /// coordinator that never comes back never does, and the branch asked for ever.
        case forget(RequestID, txid: String, reason: String, operatorName: String, dryRun: Bool, atMs: Int64)
        /// The forget record is durable.
        case forgetDurable(String)
        /// A forced `heuristic-resolved` record (a forgotten branch found mixed) is durable.
        case resolvedDurable(String)
        /// The coordinator acknowledged a heuristic report (200), or refused it for good (400).
        case heuristicReportDelivered(String)
        /// 3PC: the abort record of an abort the termination protocol decided here is durable.
        case abortDurable(String)
    }

    public enum Timer: Hashable, Sendable {
        /// An unprepared branch that outlived its transaction's timeout is aborted locally.
        case branchExpiry(String)
        /// A prepared branch asks the coordinator for the outcome.
        case inquire(String)
        /// 3PC: no word from the coordinator for too long: run a termination round.
        case termination(String)
        /// 3PC: stop waiting for peers' answers in this round.
        case terminationRound(String)
    }

    /// What a 3PC branch knows to terminate without its coordinator.
    public struct ThreePhaseInfo: Equatable, Sendable {
        public let termination: Termination
        /// Every participant of the transaction (this one included).
        public let peers: [ParticipantRef]
        public init(termination: Termination, peers: [ParticipantRef]) {
            self.termination = termination
            self.peers = peers
        }

        /// Why a prepare's participant list cannot be taken, if it cannot. The list goes into
        /// the forced prepared record and drives termination, so it is checked before: a
        /// duplicate name would break termination's lookup by name, and a list or name past
        /// the limits would make the record unreadable at the next start.
        public static func refusal(peers: [ParticipantRef]) -> String? {
            guard !peers.isEmpty, peers.count <= Limits.branchesPerTransactionMax else {
                return "a 3pc prepare must list 1-\(Limits.branchesPerTransactionMax) participants"
            }
            var names = Set<String>()
            for p in peers {
                if let refusal = p.sizeRefusal { return refusal }
                guard names.insert(p.name).inserted else { return "participant \"\(p.name)\" is listed twice" }
            }
            return nil
        }
    }

    public enum Reply: Equatable {
        case vote(Vote)
        case acknowledged
        case aborted
        /// Answer to a one-phase commit. `readOnly`: a `committed` that wrote no record (the
        /// branch only read), sent with `"vote": "read-only"`, so the coordinator does not take
        /// it for an acknowledged commit (`last_acknowledged_commit`): a restart before the next
        /// checkpoint forgets that txid without letting it go.
        case outcome(Outcome, reason: String?, readOnly: Bool = false)
        /// A commit arrived for a branch an operator aborted: it cannot be honoured.
        case heuristicAborted
        case forced(Outcome, dryRun: Bool, effects: [String])
        /// 3PC: acknowledgement of a pre-commit / pre-abort.
        case preCommitted
        case preAborted
        case state(ThreePhaseState, recovered: Bool)
        case error(RequestError)
    }

    public enum Record: Equatable, Sendable {
        /// Forced before voting yes.
        case prepared(String, coordinatorURL: String, writeSet: [UInt8], threePhase: ThreePhaseInfo? = nil)
        /// Forced, 3PC: pre-committed (Skeen's p) / pre-aborted (quorum 3PC's pa).
        case preCommitted(String)
        case preAborted(String)
        /// Forced before acknowledging.
        case committed(String)
        /// A one-phase commit: the write set and the decision in one forced record.
        case committedOnePhase(String, writeSet: [UInt8])
        /// Unforced: a prepared branch was told to abort.
        case aborted(String)
        /// Forced: an operator decided this in-doubt branch (a heuristic decision).
        /// The keys the force released (at most `Limits.branchKeysShownMax`, of the total) ride
        /// at the end (absent in records written before session 26).
        case heuristic(String, outcome: Outcome, reason: String, operatorName: String, atMs: Int64,
                       releasedKeys: [String] = [], releasedKeysTotal: Int = 0)
        /// The coordinator's outcome became known for a heuristically decided branch; `mixed`
        /// when it differs from what the operator chose.
        case heuristicResolved(String, coordinatorOutcome: Outcome, mixed: Bool)
        /// Forced: an operator retired a heuristically decided branch without the coordinator's
        /// outcome (who, why, when: the audit of the forget).
        case heuristicForgotten(String, reason: String, operatorName: String, atMs: Int64)
        /// Forced, 3PC: no branch and no outcome here for this txid when a backup's pre-abort
        /// came; this participant promises never to vote yes on it, and answers `read-only`
        /// from then on (it holds no work: it counts for neither outcome).
        case noVotePromised(String)
    }

    public enum Action: Equatable {
        case reply(RequestID, Reply)
        case log(Record, force: Bool)
        /// Apply the write set to the store (its commit record at `lsn` is durable) and release
        /// the branch's locks.
        case apply(String, writeSet: [UInt8], lsn: UInt64)
        /// Forget staged work and release the branch's locks.
        case release(String)
        /// Re-take the locks of an in-doubt branch found at recovery (before serving).
        case restoreLocks(String, writeSet: [UInt8])
        case inquire(String, coordinatorURL: String)
        /// Tell the coordinator that an operator's outcome differs from its decision: which
        /// outcome, and who forced it, why and when.
        case reportHeuristic(String, coordinatorURL: String, decision: HeuristicDecision)
        /// 3PC termination: ask a peer for its state in round `round`.
        case queryPeer(String, peer: ParticipantRef, round: Int)
        /// 3PC termination, as backup coordinator: tell a peer what to do.
        case sendToPeer(String, peer: ParticipantRef, message: PeerMessage)
        case setTimer(Timer, afterMs: Int64)
        case cancelTimer(Timer)
        /// For metrics and the finished-branch memory.
        case finished(String, Outcome)
    }

    public enum BranchState: String, Codable, Sendable {
        case active
        /// Prepared record being forced.
        case preparing
        /// Voted yes; the outcome is up to the coordinator ("in doubt").
        case prepared
        /// Commit record being forced.
        case committing
        case committed
        case aborted
        case readOnly = "read-only"
        /// An operator forced the outcome; the coordinator's outcome is not known yet.
        case heuristicCommitted = "heuristic-committed"
        case heuristicAborted = "heuristic-aborted"
        /// The heuristic record is being written.
        case forcing
        /// The forget record of a heuristically decided branch is being written.
        case forgetting
        /// 3PC: the pre-committed / pre-aborted record is being written, and is durable.
        case preCommitting = "pre-committing"
        case preCommitted = "pre-committed"
        case preAborting = "pre-aborting"
        case preAborted = "pre-aborted"
        /// 3PC: the termination protocol decided abort here; its record is being forced. Nothing
        /// acts on the abort (locks, peers, answers) before it is durable: a backup's abort that
        /// a crash lost would let the branch, back as prepared, be committed by others.
        case aborting
    }

    /// What a backup coordinator tells a peer.
    public enum PeerMessage: Equatable, Sendable {
        case preCommit
        case preAbort
        case commit
        case abort
    }

    /// What an operator did to a branch.
    public struct HeuristicDecision: Equatable, Sendable {
        public let outcome: Outcome
        public let reason: String
        public let operatorName: String
        public let atMs: Int64
        /// The keys whose locks the force released, the first `Limits.branchKeysShownMax` of
        /// `releasedKeysTotal` (0: none, or a record written before they were kept).
        public var releasedKeys: [String] = []
        public var releasedKeysTotal = 0

        mutating func setReleasedKeys(_ keys: [String], total: Int) {
            releasedKeys = keys
            releasedKeysTotal = total
        }
    }

    public struct Branch: Sendable {
        public let txid: String
        public var state: BranchState
        public var coordinatorURL: String
        /// Until the branch ends, or an operator's decision is applied or released: then its
        /// writes are in the store or gone, and only the decision's key names are kept.
        /// Kept, they were held in memory and in every checkpoint, outside the staged-work
        /// bound, for as long as the coordinator stayed away (a review).
        public var writeSet: [UInt8] = []
        public var onePhase = false
        /// Requests waiting for this branch's pending forced record.
        var waiting: [RequestID] = []
        /// An abort arrived while the prepared record was being forced.
        var abortWhenDurable = false
        public var inquiries = 0
        public var lastInquiryError: String?
        public var commitLSN: UInt64?
        public var heuristic: HeuristicDecision?
        /// 3PC only.
        public var threePhase: ThreePhaseInfo?
        /// 3PC: this branch joined a termination protocol (answered a peer, or started one);
        /// it no longer takes pre-commits from the coordinator, so the state it reported holds.
        public var terminating = false
        /// A peer's termination protocol asked about this branch (a state query, a pre-abort)
        /// before it voted: counted then as uncertain, so toward an abort quorum, it must not
        /// vote yes afterwards. It votes no; before its vote a participant may always abort.
        public var askedBeforeVoting = false
        /// 3PC, classic termination: rebuilt by a restart and not finished since. Such a branch
        /// may have missed a decision its peers made while it was down, so (as in Skeen's
        /// protocol, where a recovered site asks rather than decides) it decides only in a round
        /// every peer answered, and other backups do not count its pre-state.
        public var recovered = false
        var round = 0
        var roundStates: [String: ThreePhaseState] = [:]
        var roundPending: Set<String> = []
        /// Peers that answered this round as recovered.
        var roundRecovered: Set<String> = []
        /// While `aborting`: the state before, and the messages to peers sent once durable.
        var abortingFrom: BranchState?
        var abortPeers: [ParticipantRef] = []
        /// Joined at or below the horizon of let-go promises (`promisesLetGoUpTo`): its 3PC
        /// prepare votes no. Decided when it joins, not when it prepares: a branch open before
        /// a newer promise was let go cannot be a promised txid (a review, session 29).
        var joinedUnderPromiseHorizon = false
        /// While `committing` or `forcing`: the state before, where a refused record leaves the
        /// branch (a 3PC branch keeps its durable pre-state).
        var recordFrom: BranchState?
        /// While `forgetting`: the coordinator's outcome, if an inquiry's answer or its abort
        /// arrived meanwhile. Dropped before, the forget then ended a branch whose coordinator
        /// had just said it differs, and nobody ever recorded it heuristic-mixed (a review).
        /// One that differs is marked at once (`markMixedWhileForgetting`).
        var coordinatorOutcomeWhileForgetting: Outcome?
        /// 3PC: state queries that arrived while a pre-record was being written, answered once
        /// it is durable (or refused). Answered at once with `uncertain`, a backup could abort
        /// while this branch then acknowledged the coordinator's pre-commit, which a classic
        /// coordinator follows with commit.
        var stateWaiting: [RequestID] = []
        /// 3PC: pre-commits that arrived while the commit record was being written over a
        /// pre-committed record not yet durable (or none), answered `pre-committed` once the
        /// commit is durable (or 503 if it is refused). Answered at once, the acknowledgement
        /// claimed a durable pre-commit the log did not hold yet (the simulation's durability
        /// check, seed 310620 of `--protocol 3pc`, session 31: quorum 3PC sends the commit to
        /// a branch whose pre-commit is still being written).
        var preCommitWaiting: [RequestID] = []

        mutating func dropWriteSet() { writeSet = [] }
    }

    public let config: Config
    public private(set) var branches: [String: Branch] = [:]
    /// Outcomes of recently finished branches: duplicates get the same answer, late work and
    /// late prepares are refused.
    public private(set) var finishedOutcomes: [String: Outcome] = [:]
    private var finishedOrder: [String] = []
    private var finishedOrderHead = 0
    private var rng: SplitMix64
    /// Branches whose operator-forced outcome turned out to differ from the coordinator's
    /// decision (heuristic-mixed), by txid: what the operator chose. Kept for operators.
    public private(set) var heuristicMixed: [String: HeuristicDecision] = [:]
    /// A heuristic decision an operator forgot (`forget`), with the coordinator its branch named.
    public struct ForgottenHeuristic: Equatable, Sendable {
        public internal(set) var decision: HeuristicDecision
        public let coordinatorURL: String
    }
    /// Forgotten heuristic decisions by txid (`Limits.forgottenHeuristicsKept`, oldest let go
    /// first; in snapshots). A coordinator that comes back after all still hears that the
    /// forced outcome differs from its own: its commit of a branch forced to abort is answered
    /// `heuristic-aborted` (it records the transaction heuristic-mixed) instead of a 409 it
    /// retried for ever, and its abort of one forced to commit brings a heuristic report.
    public private(set) var forgottenHeuristics: [String: ForgottenHeuristic] = [:]
    private var forgottenHeuristicOrder: [String] = []
    /// Answers and the report of a forgotten branch found heuristic-mixed, held until its
    /// forced `heuristic-resolved` record is durable: sent before it, a crash lost the mark
    /// here while the coordinator, told, recorded the difference and never asked again. At most
    /// one entry a forgotten branch, each of at most `Limits.waitersPerTransactionMax` answers.
    private var resolvingHeld: [String: [Action]] = [:]
    /// Heuristic-mixed branches whose report the coordinator has not acknowledged, with the
    /// coordinator's URL: in checkpoints, and rebuilt from a `heuristic-resolved` record, so a
    /// restart sends the report again. The runtime gave up after five tries and a restart sent
    /// none, so a crash after the mark but before the report left the transaction looking
    /// plainly committed or aborted at the coordinator for good (a review). A subset of
    /// `heuristicMixed` (the same bound).
    public private(set) var unreportedMixed: [String: String] = [:]
    /// Branches among `finishedOutcomes` that voted read-only (3PC, and 2PC but for one-phase
    /// commits): they answer `read-only`, not `committed`, to a peer's state query and to a
    /// repeated prepare. Left out of snapshots (the vote is not logged). A 2PC reader used to
    /// answer a repeated prepare (its first answer lost) `yes`: the coordinator then sent it the
    /// commit and took its `committed` as an acknowledgement, so a restart before the next
    /// checkpoint (which forgets the unlogged vote without letting it go) made it refuse that
    /// commit for good, the transaction stuck `committing` (simulation seed 560348, session 38),
    /// or mark the coordinator stale at its `last_acknowledged_commit`.
    private var readOnlyFinished: Set<String> = []
    /// One-phase (2PC) branches among `finishedOutcomes` that only read, since this process
    /// started: a repeated one-phase prepare for one is answered `committed` marked read-only,
    /// as the first was (it wrote no record; a restart before the next checkpoint forgets it
    /// without letting it go, so the coordinator must not count it as acknowledged). Unlike
    /// `readOnlyFinished` they stay in snapshots as plain commits: one read back from a
    /// checkpoint is durable there, and counting it is sound. In memory only, let go with its
    /// outcome.
    private var onePhaseReadOnlyFinished: Set<String> = []
    /// 3PC txids a peer's termination asked about before this participant had a branch: a
    /// later prepare votes no (`Limits.threePhaseFencesKept`, oldest dropped). A black-box
    /// probe delayed one participant's prepare past a peer's termination round: the peer, as
    /// backup, pre-aborted itself counting this one as uncertain; this one then voted yes and
    /// took the coordinator's pre-commit, and with N = 2 neither quorum could ever form.
    private var fencesBeforePrepare: Set<String> = []
    /// Coordinators an inquiry could not reach since the last one that answered, each with its
    /// probe: the one branch waiting on it whose failed inquiries are repeated every
    /// `probeDelayMs` while all the others back off to `unreachableDelayMsMax`. The first
    /// answer from one of them (the probe's, normally) sends every branch waiting on it back to
    /// asking within `inquiryDelayMs`: without a probe the first inquiry after the coordinator
    /// came back could be up to `unreachableDelayMsMax` later, and in-doubt branches held
    /// their locks (hot rows) that long (a helper saw orders on a hot sku stall ~5 s after a
    /// coordinator's kill -9 and restart). An entry's probe is always a live branch: when it
    /// finishes another waiting branch takes over, or the entry goes (`probeFinished`), so
    /// there are at most as many entries as branches. Not in snapshots: after a restart the
    /// recovered branches ask at once, and the first to fail becomes the probe.
    private(set) var unreachableCoordinators: [String: String] = [:]
    private var fenceOrder: [String] = []
    private var fenceOrderHead = 0
    /// 3PC txids this participant, holding no branch for them, durably promised never to vote
    /// yes on (a backup's pre-abort asked): a subset of `finishedOutcomes` (aborted, so a
    /// prepare votes no) that answers `read-only` to a state query. A peer that never got its
    /// prepare (or voted read-only and restarted) used to refuse the pre-abort (409): with two
    /// participants the writer sat pre-aborted, locks held, for as long as the coordinator was
    /// gone. In snapshots.
    private var promisedNoVote: Set<String> = []
    /// Pre-abort requests waiting for a `noVotePromised` record to be durable, by txid.
    private var promiseWaiting: [String: [RequestID]] = [:]
    /// Per coordinator id, the highest txid (by epoch, then sequence) whose outcome this
    /// participant let go: from `finishedOutcomes` past its bound, or left out of a checkpoint.
    /// A txid at or below it with no branch here may be one it voted yes on and forgot, so no
    /// promise not to vote yes is made for it: counted as pre-aborted while it had committed,
    /// a cut-off peer's backup could abort against it (a review of the promise). In snapshots.
    private var forgottenUpTo: [String: TxID] = [:]
    /// Outcomes were let go whose txids are not known (restored from a checkpoint written
    /// before session 27, or more coordinators than `Limits.forgottenHorizonCoordinatorsMax`):
    /// no promise is made at all then, as before session 27. In snapshots.
    private var forgottenUnknown = false
    /// Per coordinator id, the highest txid of a promise never to vote yes that this
    /// participant let go (from `finishedOutcomes` past its bound, or left out of a
    /// checkpoint). A 3PC prepare at or below it votes no: the promise may be among those let
    /// go, and a prepare arriving after it (and after a restart) voted yes (a review, session
    /// 29). Only promises raise it, so it costs nothing until the participants have had to
    /// decide without their coordinator. In snapshots (from session 29).
    private var promisesLetGoUpTo: [String: TxID] = [:]
    /// Per coordinator id, a commit that coordinator says this participant acknowledged
    /// (`last_acknowledged_commit`), or sends it to acknowledge, which it neither knows nor let
    /// go: its data is older than what it acknowledged or voted for (its directory restored from an older copy keeps the incarnation,
    /// so the incarnation check cannot tell). New work and prepares from that coordinator are
    /// refused from then on (`admitWork`) until an operator replaces the directory (a new
    /// incarnation) and restarts it. In memory only: after a restart the coordinator tells it
    /// again at the next registration or prepare. At most `forgottenHorizonCoordinatorsMax`.
    public private(set) var staleForCoordinators: [String: TxID] = [:]

    public init(config: Config) {
        self.config = config
        self.rng = SplitMix64(seed: config.seed)
    }

    /// Set by `recover`: the store's applied LSN that the recovered snapshot recorded, nil
    /// without a snapshot or in one written before it was recorded.
    public private(set) var snapshotStoreAppliedLSN: UInt64?

    public var inDoubtCount: Int {
        branches.values.reduce(0) { $0 + ($1.state == .prepared || $1.state == .committing ? 1 : 0) }
    }

    public func state(of txid: String) -> BranchState? {
        if let b = branches[txid] { return b.state }
        switch finishedOutcomes[txid] {
        case .committed?: return .committed
        case .aborted?: return .aborted
        case nil: return nil
        }
    }

    /// Whether new work for `txid` may be staged, and if not, why.
    public func admitWork(_ txid: String) -> RequestError? {
        if !staleForCoordinators.isEmpty, let t = TxID(txid), let acknowledged = staleForCoordinators[t.coordinatorID] {
            return staleRefusal(acknowledged)
        }
        if let b = branches[txid] {
            return b.state == .active ? nil : RequestError(409, "branch \(txid) is \(b.state.rawValue); it takes no more work")
        }
        if let outcome = finishedOutcomes[txid] {
            return RequestError(409, "branch \(txid) already \(outcome.rawValue)")
        }
        if promiseWaiting[txid] != nil {
            // Staged now, the work's locks would outlive it: the branch it would join can
            // never start (a review).
            return RequestError(503, "a promise never to vote yes on \(txid) is being written here; retry")
        }
        if branches.count >= config.branchesMax {
            return RequestError(503, "too many open branches at this participant (limit \(config.branchesMax)); retry later")
        }
        return nil
    }

    // MARK: - recovery

    /// The most entries each section of a checkpoint can hold: what the state `snapshot` writes
    /// them from is bounded by, so `recover` reads whatever was written and still refuses an
    /// absurd count from a damaged file. From the most any configuration keeps, not this one's
    /// (a participant restarted with a smaller configuration reads what a larger one wrote).
    struct SnapshotSectionsMax {
        /// Branches (admitted below `branchesMax`), twice over as before.
        let branches: Int
        /// Heuristic-mixed decisions (`finishedBranchesKept`).
        let mixed: Int

        init(_ config: Config) {
            branches = max(config.branchesMax, Limits.branchesMax) * 2
            mixed = max(config.finishedBranchesKept, Limits.finishedBranchesKept)
        }

        /// Recent outcomes (`finishedOutcomesInSnapshotMax`), or every ending branch when those
        /// are more.
        var finishedOutcomes: Int { max(Limits.finishedOutcomesInSnapshotMax, branches) }
        var forgottenHeuristics: Int { Limits.forgottenHeuristicsKept }
        /// One list per decision the three sections above hold.
        var releasedKeyLists: Int { branches + mixed + Limits.forgottenHeuristicsKept }
        var unreportedMixed: Int { mixed }
        /// The promises kept and those being written.
        var promises: Int { Limits.finishedOutcomesInSnapshotMax + Limits.noVotePromisesWritingMax }
        var forgottenCoordinators: Int { Limits.forgottenHorizonCoordinatorsMax }
    }

    /// Rebuilds branches from the snapshot and the records after it. Returns the actions to run
    /// before serving: re-apply durable commits (the store skips those it already has), re-take
    /// the locks of in-doubt branches, and start asking the coordinator about them (and about
    /// heuristically decided branches whose coordinator outcome is not known yet).
    public mutating func recover(snapshot: [UInt8]?, records: [(lsn: UInt64, type: UInt8, payload: [UInt8])]) throws -> [Action] {
        var toApply: [(String, [UInt8], UInt64)] = []
        if let snapshot {
            var r = ByteReader(snapshot)
            guard try r.u8() == 3 else { throw DecodeError("unknown participant snapshot version") }
            let sectionsMax = SnapshotSectionsMax(config)
            let n = try r.u32()
            guard n <= UInt32(clamping: sectionsMax.branches) else { throw DecodeError("\(n) branches in a snapshot") }
            for _ in 0..<n {
                let txid = try r.string(maxCount: 128)
                let url = try r.string(maxCount: 4096)
                let writeSet = try r.blob()
                let kind = try r.u8()
                let lsn = try r.u64()
                let heuristic = try r.bool() ? try Self.decodeDecision(&r) : nil
                var b = Branch(txid: txid, state: .prepared, coordinatorURL: url, writeSet: writeSet)
                b.heuristic = heuristic
                b.threePhase = try r.bool() ? try Self.decodeThreePhase(&r) : nil
                switch kind {
                case 0: break
                case 1: // committing: the commit record precedes the snapshot, so it is durable
                    toApply.append((txid, writeSet, lsn))
                    rememberFinished(txid, .committed)
                    continue
                case 2: // forcing: likewise, the heuristic record is durable
                    guard let h = heuristic else { throw DecodeError("forced branch \(txid) without a decision") }
                    if h.outcome == .committed { toApply.append((txid, writeSet, lsn)) }
                    b.state = h.outcome == .committed ? .heuristicCommitted : .heuristicAborted
                    b.dropWriteSet()
                // Snapshots written before session 27 still carry these write sets.
                case 3: b.state = .heuristicCommitted; b.dropWriteSet()
                case 4: b.state = .heuristicAborted; b.dropWriteSet()
                case 5: b.state = .preCommitted
                case 6: b.state = .preAborted
                default: throw DecodeError("unknown branch kind \(kind) in snapshot")
                }
                branches[txid] = b
            }
            let mixed = try r.u32()
            guard mixed <= UInt32(clamping: sectionsMax.mixed) else { throw DecodeError("\(mixed) heuristic-mixed branches") }
            for _ in 0..<mixed {
                let txid = try r.string(maxCount: 128)
                heuristicMixed[txid] = try Self.decodeDecision(&r)
            }
            // Recent outcomes (absent in snapshots from before they were kept).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.finishedOutcomes) else { throw DecodeError("\(count) finished outcomes in a snapshot") }
                for _ in 0..<count {
                    let txid = try r.string(maxCount: 128)
                    rememberFinished(txid, try r.bool() ? .committed : .aborted)
                }
            }
            // The store's applied LSN when the snapshot was taken (absent in older snapshots).
            if !r.isAtEnd { snapshotStoreAppliedLSN = try r.u64() }
            // Forgotten heuristic decisions (absent in snapshots written before session 25).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.forgottenHeuristics) else { throw DecodeError("\(count) forgotten heuristic decisions") }
                for _ in 0..<count {
                    let txid = try r.string(maxCount: 128)
                    let url = try r.string(maxCount: 4096)
                    rememberForgotten(txid, try Self.decodeDecision(&r), coordinatorURL: url)
                }
            }
            // The keys each force released (absent in snapshots written before session 26).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.releasedKeyLists) else { throw DecodeError("\(count) released-key lists") }
                for _ in 0..<count {
                    let txid = try r.string(maxCount: 128)
                    let (keys, total) = try Self.decodeReleasedKeys(&r)
                    // A txid may be both mixed and forgotten: each holder gets its keys (the
                    // section names it once for each).
                    branches[txid]?.heuristic?.setReleasedKeys(keys, total: total)
                    heuristicMixed[txid]?.setReleasedKeys(keys, total: total)
                    forgottenHeuristics[txid]?.decision.setReleasedKeys(keys, total: total)
                }
            }
            // Heuristic-mixed branches whose report was not acknowledged (absent in snapshots
            // written before session 26).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.unreportedMixed) else { throw DecodeError("\(count) unreported heuristic-mixed branches") }
                for _ in 0..<count {
                    let txid = try r.string(maxCount: 128)
                    let url = try r.string(maxCount: 4096)
                    if heuristicMixed[txid] != nil { unreportedMixed[txid] = url }
                }
            }
            // 3PC promises not to vote yes (absent in snapshots written before session 27).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.promises) else { throw DecodeError("\(count) promises not to vote yes") }
                for _ in 0..<count { rememberPromise(try r.string(maxCount: 128)) }
            }
            // What this participant let go (absent in snapshots written before session 27:
            // unknown then, and no promise is made).
            if r.isAtEnd {
                forgottenUnknown = true
            } else {
                if try r.bool() { forgottenUnknown = true }
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.forgottenCoordinators) else { throw DecodeError("\(count) coordinators' forgotten txids") }
                for _ in 0..<count {
                    let text = try r.string(maxCount: 128)
                    guard let txid = TxID(text) else { throw DecodeError("bad txid \(text) in the forgotten txids") }
                    Self.raise(&forgottenUpTo, &forgottenUnknown, to: txid)
                }
            }
            // The promise horizon (absent in snapshots written before session 29: none then).
            if !r.isAtEnd {
                let count = try r.u32()
                guard count <= UInt32(clamping: sectionsMax.forgottenCoordinators) else { throw DecodeError("\(count) coordinators' let-go promises") }
                for _ in 0..<count {
                    let text = try r.string(maxCount: 128)
                    guard TxID(text) != nil else { throw DecodeError("bad txid \(text) in the let-go promises") }
                    Self.raisePromisesLetGo(&promisesLetGoUpTo, toText: text)
                }
            }
        }
        for record in records {
            switch try ParticipantRecordCoding.decode(type: record.type, payload: record.payload) {
            case .prepared(let txid, let url, let writeSet, let threePhase):
                var b = Branch(txid: txid, state: .prepared, coordinatorURL: url, writeSet: writeSet)
                b.threePhase = threePhase
                branches[txid] = b
            case .preCommitted(let txid):
                branches[txid]?.state = .preCommitted
            case .preAborted(let txid):
                branches[txid]?.state = .preAborted
            case .committed(let txid):
                if let b = branches.removeValue(forKey: txid) {
                    toApply.append((txid, b.writeSet, record.lsn))
                }
                rememberFinished(txid, .committed)
            case .committedOnePhase(let txid, let writeSet):
                toApply.append((txid, writeSet, record.lsn))
                rememberFinished(txid, .committed)
            case .aborted(let txid):
                branches.removeValue(forKey: txid)
                rememberFinished(txid, .aborted)
            case .heuristic(let txid, let outcome, let reason, let operatorName, let atMs, let keys, let keysTotal):
                guard var b = branches[txid] else { continue }
                b.heuristic = HeuristicDecision(outcome: outcome, reason: reason, operatorName: operatorName, atMs: atMs,
                                                releasedKeys: keys, releasedKeysTotal: keysTotal)
                b.state = outcome == .committed ? .heuristicCommitted : .heuristicAborted
                if outcome == .committed { toApply.append((txid, b.writeSet, record.lsn)) }
                b.dropWriteSet()
                branches[txid] = b
            case .heuristicResolved(let txid, _, let mixed):
                if branches[txid] == nil, mixed, let f = forgottenHeuristics[txid] {
                    // A forgotten branch whose coordinator came back with the other outcome.
                    rememberMixed(txid, f.decision, unreportedTo: f.coordinatorURL)
                    continue
                }
                guard let b = branches.removeValue(forKey: txid), let h = b.heuristic else { continue }
                if mixed { rememberMixed(txid, h, unreportedTo: b.coordinatorURL) }
                rememberFinished(txid, h.outcome)
            case .noVotePromised(let txid):
                rememberPromise(txid)
            case .heuristicForgotten(let txid, _, _, _):
                guard let b = branches.removeValue(forKey: txid), let h = b.heuristic else { continue }
                rememberFinished(txid, h.outcome)
                rememberForgotten(txid, h, coordinatorURL: b.coordinatorURL)
            }
        }
        var actions: [Action] = toApply.map { .apply($0.0, writeSet: $0.1, lsn: $0.2) }
        for txid in branches.keys.sorted() {
            if let info = branches[txid]!.threePhase {
                // Whether it answered a peer's state query before the crash is not logged: take
                // no pre-commit from the coordinator, so a state it may have reported holds.
                branches[txid]!.terminating = true
                branches[txid]!.recovered = info.termination == .classic
            }
            let b = branches[txid]!
            if [.prepared, .preCommitted, .preAborted].contains(b.state) { actions.append(.restoreLocks(txid, writeSet: b.writeSet)) }
            actions.append(.inquire(txid, coordinatorURL: b.coordinatorURL))
            if b.threePhase != nil { actions.append(.setTimer(.termination(txid), afterMs: config.terminationTimeoutMs)) }
        }
        // Reports the coordinator may never have had: sent again (it takes repeats).
        for (txid, url) in unreportedMixed.sorted(by: { $0.key < $1.key }) {
            guard let h = heuristicMixed[txid] else { continue }
            actions.append(.reportHeuristic(txid, coordinatorURL: url, decision: h))
        }
        return actions
    }

    /// The in-doubt and heuristically decided branches (and commits whose record precedes
    /// this point but which the store may not have applied yet, with their LSNs) — enough to
    /// rebuild after the log before this point is dropped. The runtime makes the store durable
    /// first, and passes the LSN the store has applied up to (`storeAppliedLSN`): the commits
    /// up to it leave the log with this checkpoint and live on only in the store, so a store
    /// found below it at the next start has lost them (`snapshotStoreAppliedLSN`).
    public func snapshot(storeAppliedLSN: UInt64 = 0) -> [UInt8] {
        var w = ByteWriter()
        // Each section's count within what `recover` reads back (see `SnapshotSectionsMax`): a
        // checkpoint past one could not be read at the next start, and the log before it is
        // gone. The state's own limits keep each within; this checks that the two agree, in
        // release builds too: stopping here keeps the log whole, writing on would not.
        let sectionsMax = SnapshotSectionsMax(config)
        func sectionCount(_ count: Int, _ max: Int, _ section: String) -> UInt32 {
            precondition(count <= max, "checkpoint section \(section) holds \(count), more than recover reads (\(max))")
            return UInt32(count)
        }
        w.u8(3)
        // An aborting (or forgetting) branch's record precedes the snapshot, so it is durable if
        // the snapshot is: it is written as finished, below.
        let kept = branches.values.filter { ![.active, .aborting, .forgetting].contains($0.state) }.sorted { $0.txid < $1.txid }
        w.u32(sectionCount(kept.count, sectionsMax.branches, "branches"))
        for b in kept {
            w.string(b.txid)
            w.string(b.coordinatorURL)
            w.blob(b.writeSet)
            // A committing (or forcing) branch's record precedes the snapshot; if the snapshot
            // is durable so is that record. Its LSN keeps re-application idempotent.
            switch b.state {
            case .committing: w.u8(1); w.u64(b.commitLSN ?? 0)
            case .forcing: w.u8(2); w.u64(b.commitLSN ?? 0)
            case .heuristicCommitted: w.u8(3); w.u64(0)
            case .heuristicAborted: w.u8(4); w.u64(0)
            // A pre-record being written precedes the snapshot: durable if the snapshot is.
            case .preCommitted, .preCommitting: w.u8(5); w.u64(0)
            case .preAborted, .preAborting: w.u8(6); w.u64(0)
            default: w.u8(0); w.u64(0) // preparing counts as prepared: its record precedes us
            }
            w.bool(b.heuristic != nil)
            if let h = b.heuristic { Self.encodeDecision(&w, h) }
            w.bool(b.threePhase != nil)
            if let info = b.threePhase { Self.encodeThreePhase(&w, info) }
        }
        w.u32(sectionCount(heuristicMixed.count, sectionsMax.mixed, "mixed"))
        for (txid, h) in heuristicMixed.sorted(by: { $0.key < $1.key }) {
            w.string(txid)
            Self.encodeDecision(&w, h)
        }
        // The most recent outcomes, oldest first. A 3PC peer asks for a finished branch's
        // outcome during termination; a participant that forgot it at a checkpoint answers
        // "unknown", and a peer waiting on it as the backup could wait forever (found by the
        // simulation, seed 1838 with 1500 runs from 1001).
        let ending = branches.values.filter { $0.state == .aborting || $0.state == .forgetting }.sorted { $0.txid < $1.txid }
        let recent = finishedOrder[finishedOrderHead...].suffix(max(0, Limits.finishedOutcomesInSnapshotMax - ending.count))
            .filter { finishedOutcomes[$0] != nil && !readOnlyFinished.contains($0) && !promisedNoVote.contains($0) }
        w.u32(sectionCount(recent.count + ending.count, sectionsMax.finishedOutcomes, "finishedOutcomes"))
        for txid in recent {
            w.string(txid)
            w.bool(finishedOutcomes[txid] == .committed)
        }
        for b in ending {
            w.string(b.txid)
            w.bool(b.state == .forgetting && b.heuristic?.outcome == .committed)
        }
        w.u64(storeAppliedLSN)
        // Forgotten heuristic decisions, those whose forget record is still being written too
        // (it precedes this snapshot in the log, which drops it once the snapshot is durable).
        var forgotten = forgottenHeuristicOrder.compactMap { txid in forgottenHeuristics[txid].map { (txid, $0) } }
        for b in ending where b.state == .forgetting && forgottenHeuristics[b.txid] == nil {
            if let h = b.heuristic { forgotten.append((b.txid, ForgottenHeuristic(decision: h, coordinatorURL: b.coordinatorURL))) }
        }
        forgotten = Array(forgotten.suffix(Limits.forgottenHeuristicsKept))
        w.u32(sectionCount(forgotten.count, sectionsMax.forgottenHeuristics, "forgottenHeuristics"))
        for (txid, f) in forgotten {
            w.string(txid)
            w.string(f.coordinatorURL)
            Self.encodeDecision(&w, f.decision)
        }
        // The keys each force above released (absent in snapshots written before session 26):
        // without them a restart from a checkpoint lost what a forced branch had held.
        var released: [(String, HeuristicDecision)] = []
        for b in kept { if let h = b.heuristic, h.releasedKeysTotal > 0 { released.append((b.txid, h)) } }
        for (txid, h) in heuristicMixed.sorted(by: { $0.key < $1.key }) where h.releasedKeysTotal > 0 { released.append((txid, h)) }
        for (txid, f) in forgotten where f.decision.releasedKeysTotal > 0 { released.append((txid, f.decision)) }
        // A txid both mixed and forgotten once: the reader gives its keys to every holder, and a
        // second copy past the budget, written without names, blanked the first's.
        var listed = Set<String>()
        released = released.filter { listed.insert($0.0).inserted }
        w.u32(sectionCount(released.count, sectionsMax.releasedKeyLists, "releasedKeyLists"))
        // Past the budget, a list keeps its count but not its names: 100,000 decisions of 256
        // long keys each would pass the snapshot's own bound, and a checkpoint that fails is
        // fatal, at every start (a review).
        var releasedBytes = 0
        for (txid, h) in released {
            w.string(txid)
            let bytes = h.releasedKeys.reduce(0) { $0 + $1.utf8.count + 4 }
            let named = releasedBytes + bytes <= config.releasedKeysInSnapshotBytesMax
            if named { releasedBytes += bytes }
            Self.encodeReleasedKeys(&w, named ? h.releasedKeys : [], total: h.releasedKeysTotal)
        }
        let unreported = unreportedMixed.filter { heuristicMixed[$0.key] != nil }.sorted { $0.key < $1.key }
        w.u32(sectionCount(unreported.count, sectionsMax.unreportedMixed, "unreportedMixed"))
        for (txid, url) in unreported {
            w.string(txid)
            w.string(url)
        }
        // 3PC promises not to vote yes (absent in snapshots written before session 27), oldest
        // first, as many as the finished outcomes they belong to keep.
        // Those whose record is still being written precede this snapshot in the log, which
        // drops it once the snapshot is durable: written here too, as a preparing branch is
        // written prepared (left out, a restart from this checkpoint broke the promise; a review).
        let promised = Array(finishedOrder[finishedOrderHead...].filter { promisedNoVote.contains($0) }.suffix(Limits.finishedOutcomesInSnapshotMax))
            + promiseWaiting.keys.sorted().filter { !promisedNoVote.contains($0) }
        w.u32(sectionCount(promised.count, sectionsMax.promises, "promises"))
        for txid in promised { w.string(txid) }
        // What a restart from this checkpoint will have let go: what was let go before, and
        // the outcomes written in neither list above.
        var upTo = forgottenUpTo
        var unknown = forgottenUnknown
        let carried = Set(recent).union(promised)
        // (A read-only vote never said yes: a restart may let it go and still promise.)
        for txid in finishedOrder[finishedOrderHead...] where finishedOutcomes[txid] != nil && !carried.contains(txid) && !readOnlyFinished.contains(txid) {
            Self.raise(&upTo, &unknown, toText: txid)
        }
        w.bool(unknown)
        w.u32(sectionCount(upTo.count, sectionsMax.forgottenCoordinators, "forgottenCoordinators"))
        for txid in upTo.values.sorted(by: { $0.coordinatorID < $1.coordinatorID }) { w.string(txid.description) }
        // The promise horizon: what was let go before, and the promises left out above.
        var promisesUpTo = promisesLetGoUpTo
        for txid in finishedOrder[finishedOrderHead...] where promisedNoVote.contains(txid) && !carried.contains(txid) {
            Self.raisePromisesLetGo(&promisesUpTo, toText: txid)
        }
        w.u32(sectionCount(promisesUpTo.count, sectionsMax.forgottenCoordinators, "promisesLetGo"))
        for txid in promisesUpTo.values.sorted(by: { $0.coordinatorID < $1.coordinatorID }) { w.string(txid.description) }
        return w.bytes
    }

    static func encodeReleasedKeys(_ w: inout ByteWriter, _ keys: [String], total: Int) {
        w.u32(UInt32(clamping: total))
        w.u32(UInt32(keys.count))
        for k in keys { w.string(k) }
    }

    static func decodeReleasedKeys(_ r: inout ByteReader) throws -> (keys: [String], total: Int) {
        let total = try r.u32()
        let n = try r.u32()
        guard n <= UInt32(Limits.branchKeysShownMax), n <= total else { throw DecodeError("\(n) released keys of \(total)") }
        return (try (0..<n).map { _ in try r.string(maxCount: Limits.keyBytesMax) }, Int(total))
    }

    static func encodeThreePhase(_ w: inout ByteWriter, _ info: ThreePhaseInfo) {
        w.u8(info.termination == .quorum ? 1 : 0)
        w.u32(UInt32(info.peers.count))
        for p in info.peers {
            w.string(p.name)
            w.string(p.url)
        }
    }

    static func decodeThreePhase(_ r: inout ByteReader) throws -> ThreePhaseInfo {
        let termination: Termination = try r.u8() == 1 ? .quorum : .classic
        let n = try r.u32()
        guard n <= UInt32(Limits.branchesPerTransactionMax) else { throw DecodeError("\(n) peers") }
        var peers: [ParticipantRef] = []
        for _ in 0..<n { peers.append(ParticipantRef(name: try r.string(maxCount: 4096), url: try r.string(maxCount: 4096))) }
        return ThreePhaseInfo(termination: termination, peers: peers)
    }

    static func encodeDecision(_ w: inout ByteWriter, _ h: HeuristicDecision) {
        w.bool(h.outcome == .committed)
        w.string(h.reason)
        w.string(h.operatorName)
        w.i64(h.atMs)
    }

    static func decodeDecision(_ r: inout ByteReader) throws -> HeuristicDecision {
        HeuristicDecision(outcome: try r.bool() ? .committed : .aborted, reason: try r.string(maxCount: 4096),
                          operatorName: try r.string(maxCount: 4096), atMs: try r.i64())
    }

    /// The runtime tells the state machine where a commit record landed as soon as it is
    /// appended, so a snapshot taken before it is durable still knows its position.
    public mutating func noteCommitAppended(_ txid: String, lsn: UInt64) {
        // In place: `branches[txid]?.commitLSN = lsn` moved the whole branch out of the table
        // and back, through a heap-allocated frame, once per commit.
        if let i = branches.index(forKey: txid) { branches.values[i].commitLSN = lsn }
    }

    // MARK: - events

    public mutating func on(_ event: Event) -> [Action] {
        switch event {
        case .joined(let txid, let url, let timeoutMs):
            guard branches[txid] == nil, finishedOutcomes[txid] == nil, promiseWaiting[txid] == nil else { return [] }
            var b = Branch(txid: txid, state: .active, coordinatorURL: url)
            b.joinedUnderPromiseHorizon = mayHaveLetGoAPromise(txid)
            branches[txid] = b
            // Outlive the coordinator's own timeout, so normally the coordinator aborts first.
            let expiry = max(timeoutMs, 0) + config.branchExpiryMarginMs
            return [.setTimer(.branchExpiry(txid), afterMs: expiry)]
        case .prepare(let request, let txid, let onePhase, let vote, let threePhase):
            return prepare(request, txid, onePhase: onePhase, vote: vote, threePhase: threePhase)
        case .preCommit(let request, let txid, let fromBackup):
            return preRecord(request, txid, commit: true, fromBackup: fromBackup)
        case .preAbort(let request, let txid):
            return preRecord(request, txid, commit: false, fromBackup: true)
        case .preRecordDurable(let txid):
            return preRecordDurable(txid)
        case .stateQuery(let request, let txid):
            return stateQuery(request, txid)
        case .peerState(let txid, let round, let peer, let state, let recovered):
            return peerState(txid, round: round, peer: peer, state: state, recovered: recovered)
        case .abortDurable(let txid):
            if branches[txid] == nil, promiseWaiting[txid] != nil { return noVotePromiseDurable(txid) }
            return terminationAbortDurable(txid)
        case .backupDecision(let request, let txid, let outcome):
            return outcome == .committed ? commit(request, txid, fromBackup: true) : abort(request, txid)
        case .timerFired(.termination(let txid)):
            return startTerminationRound(txid)
        case .timerFired(.terminationRound(let txid)):
            return decideTermination(txid)
        case .commit(let request, let txid):
            return commit(request, txid)
        case .abort(let request, let txid):
            return abort(request, txid)
        case .preparedDurable(let txid):
            return preparedDurable(txid)
        case .commitDurable(let txid, let lsn):
            return commitDurable(txid, lsn: lsn)
        case .inquiryAnswered(let txid, let answer):
            return inquiryAnswered(txid, answer)
        case .recordRefused(let txid, let reason):
            return recordRefused(txid, reason)
        case .inquiryFailed(let txid, let error):
            guard var b = branches[txid], b.state.asksCoordinator || b.threePhase != nil else { return [] }
            b.lastInquiryError = error
            branches[txid] = b
            // A 3PC branch does not wait on its coordinator: its termination timer runs.
            if b.threePhase != nil && b.heuristic == nil { return [] }
            let url = b.coordinatorURL
            // The probe keeps asking often; a probe that no longer waits on this coordinator
            // (say, committing now) gives way to the first branch whose inquiry fails.
            if let probe = unreachableCoordinators[url], probe != txid,
               let p = branches[probe], Self.waitsOnUnreachable(p, url) {
                // Backs off further than an answered inquiry: with the coordinator down, 8,000
                // in-doubt branches asking every second cost an agent half a core (a black-box probe).
                return [.setTimer(.inquire(txid), afterMs: inquiryDelay(b.inquiries, maxMs: config.unreachableDelayMsMax))]
            }
            unreachableCoordinators[url] = txid
            let probeMs = max(config.probeDelayMs, 1)
            return [.setTimer(.inquire(txid), afterMs: backoffDelayMs(attempt: 1, minMs: probeMs, maxMs: probeMs, rng: &rng))]
        case .registrationAnswered(let url, let status, let body):
            guard unreachableCoordinators[url] != nil, Self.registrationAnswerShowsCoordinator(status: status, body: body) else { return [] }
            unreachableCoordinators.removeValue(forKey: url)
            return wakeWaiting(on: url, except: nil)
        case .timerFired(.branchExpiry(let txid)), .abandoned(let txid):
            guard let b = branches[txid], b.state == .active else { return [] }
            return finish(txid, .aborted) + [.release(txid)]
        case .force(let request, let txid, let outcome, let reason, let operatorName, let dryRun, let atMs, let keys, let keysTotal):
            let decision = HeuristicDecision(outcome: outcome, reason: reason, operatorName: operatorName, atMs: atMs,
                                             releasedKeys: Array(keys.prefix(Limits.branchKeysShownMax)), releasedKeysTotal: max(keysTotal, keys.count))
            return force(request, txid, decision, dryRun: dryRun)
        case .heuristicDurable(let txid, let lsn):
            return heuristicDurable(txid, lsn: lsn)
        case .forget(let request, let txid, let reason, let operatorName, let dryRun, let atMs):
            return forget(request, txid, reason: reason, operatorName: operatorName, dryRun: dryRun, atMs: atMs)
        case .forgetDurable(let txid):
            guard let b = branches[txid], b.state == .forgetting, let h = b.heuristic else { return [] }
            let effects = ["branch \(txid) forgotten: it stays \(h.outcome.rawValue) as \(h.operatorName) forced it, and no longer asks the coordinator"]
            rememberForgotten(txid, h, coordinatorURL: b.coordinatorURL)
            var actions = finish(txid, h.outcome) + b.waiting.map { .reply($0, .forced(h.outcome, dryRun: false, effects: effects)) }
            // Normally marked when the coordinator's word arrived (`markMixedWhileForgetting`);
            // again here only if that record was refused (the log full).
            if let seen = b.coordinatorOutcomeWhileForgetting, seen != h.outcome, let f = forgottenHeuristics[txid],
               heuristicMixed[txid] == nil, resolvingHeld[txid] == nil {
                actions += forgottenTurnedMixed(txid, f, coordinatorOutcome: seen, answer: nil)
            }
            return actions
        case .resolvedDurable(let txid):
            return resolvingHeld.removeValue(forKey: txid) ?? []
        case .heuristicReportDelivered(let txid):
            unreportedMixed.removeValue(forKey: txid)
            return []
        case .timerFired(.inquire(let txid)):
            guard var b = branches[txid], b.state.asksCoordinator else { return [] }
            b.inquiries += 1
            branches[txid] = b
            return [.inquire(txid, coordinatorURL: b.coordinatorURL)]
        }
    }

    private mutating func prepare(_ request: RequestID, _ txid: String, onePhase: Bool, vote: ResourceVote, threePhase: ThreePhaseInfo?) -> [Action] {
        guard var b = branches[txid] else {
            // Unknown: either finished (answer as before) or never joined here.
            switch finishedOutcomes[txid] {
            case .committed? where readOnlyFinished.contains(txid):
                // A repeat of the prepare a reader answered (3PC, or 2PC not one-phase): the
                // same answer. Answered
                // `yes`, the coordinator could count the reader as a writer, pre-commit it and
                // take its answer (from the outcome, no record) as an acknowledgement: a classic
                // commit at the timeout, or a quorum, with no writer durably pre-committed,
                // against writers that abort (a review, session 29).
                return [.reply(request, onePhase ? .outcome(.committed, reason: nil, readOnly: true) : .vote(.readOnly))]
            case .committed?:
                return [.reply(request, onePhase ? .outcome(.committed, reason: nil, readOnly: onePhaseReadOnlyFinished.contains(txid)) : .vote(.yes))]
            case .aborted?:
                let why = "branch already aborted"
                return [.reply(request, onePhase ? .outcome(.aborted, reason: why) : .vote(.no(reason: why)))]
            case nil:
                let why = "no work for this transaction here"
                return [.reply(request, onePhase ? .outcome(.aborted, reason: why) : .vote(.no(reason: why)))]
            }
        }
        switch b.state {
        case .active:
            break
        case .preparing, .committing:
            if let full = Self.waitingFull(txid, b, request) { return full }
            b.waiting.append(request)
            branches[txid] = b
            return []
        case .prepared, .forcing, .heuristicCommitted, .heuristicAborted, .forgetting, .preCommitting, .preCommitted, .preAborting, .preAborted:
            return [.reply(request, .vote(.yes))]
        case .committed:
            return [.reply(request, onePhase ? .outcome(.committed, reason: nil) : .vote(.yes))]
        case .aborted:
            return [.reply(request, onePhase ? .outcome(.aborted, reason: "branch aborted") : .vote(.no(reason: "branch aborted")))]
        case .aborting:
            let why = "branch aborted by its peers' termination protocol"
            return [.reply(request, onePhase ? .outcome(.aborted, reason: why) : .vote(.no(reason: why)))]
        case .readOnly:
            return [.reply(request, onePhase ? .outcome(.committed, reason: nil, readOnly: true) : .vote(.readOnly))]
        }
        var vote = vote
        if b.askedBeforeVoting || fencesBeforePrepare.contains(txid) {
            vote = .no(reason: "a peer's termination protocol asked about this branch before it voted (counting it toward an abort); it votes no")
        } else if threePhase != nil, b.joinedUnderPromiseHorizon {
            vote = .no(reason: "this participant has let go of a promise never to vote yes on a transaction of its coordinator at or above \(txid) (it may be this one's); it votes no")
        }
        switch vote {
        case .readOnly:
            // Nothing to make durable and nothing to hear later.
            branches.removeValue(forKey: txid)
            rememberFinished(txid, .committed)
            if threePhase == nil && onePhase { onePhaseReadOnlyFinished.insert(txid) } else { readOnlyFinished.insert(txid) }
            return [.cancelTimer(.branchExpiry(txid)), .release(txid), .finished(txid, .committed),
                    .reply(request, onePhase ? .outcome(.committed, reason: nil, readOnly: true) : .vote(.readOnly))]
        case .no(let reason):
            // A no-voter aborts on its own and forces nothing: the coordinator will abort too.
            return finish(txid, .aborted) + [.release(txid),
                    .reply(request, onePhase ? .outcome(.aborted, reason: reason) : .vote(.no(reason: reason)))]
        case .yes(let writeSet):
            b.writeSet = writeSet
            b.waiting.append(request)
            b.onePhase = onePhase
            if onePhase {
                b.state = .committing
                branches[txid] = b
                return [.cancelTimer(.branchExpiry(txid)), .log(.committedOnePhase(txid, writeSet: writeSet), force: true)]
            }
            b.state = .preparing
            b.threePhase = threePhase
            branches[txid] = b
            return [.cancelTimer(.branchExpiry(txid)), .log(.prepared(txid, coordinatorURL: b.coordinatorURL, writeSet: writeSet, threePhase: threePhase), force: true)]
        }
    }

    private mutating func preparedDurable(_ txid: String) -> [Action] {
        guard var b = branches[txid], b.state == .preparing else { return [] }
        let waiting = b.waiting
        b.waiting = []
        if b.abortWhenDurable {
            // The coordinator already decided abort; the yes vote is moot.
            branches[txid] = b
            return [.log(.aborted(txid), force: false)] + finish(txid, .aborted) + [.release(txid)]
                + waiting.map { .reply($0, .vote(.no(reason: "aborted while preparing"))) }
        }
        if b.askedBeforeVoting {
            // A peer's termination round asked while the prepared record was being written: it
            // answered `unknown`, which counted toward an abort quorum, so it now votes no, as
            // an `active` branch asked before its vote does. (It used to vote yes and take the
            // coordinator's pre-commit: b pre-aborted, c pre-committed, N = 2, wedged for good.)
            // Its abort is lazy, as any no-voter's: lost in a crash, the branch comes back
            // prepared and terminating, takes no pre-commit from the coordinator, and learns
            // the abort (its no vote, or its silence, aborted the transaction).
            branches[txid] = b
            let why = "a peer's termination protocol asked about this branch while its prepared record was written (counting it toward an abort); it votes no"
            return [.log(.aborted(txid), force: false)] + finish(txid, .aborted) + [.release(txid)]
                + waiting.map { .reply($0, .vote(.no(reason: why))) }
        }
        b.state = .prepared
        branches[txid] = b
        if b.threePhase != nil {
            // 3PC: never block on the coordinator — past a timeout the participants terminate.
            return waiting.map { .reply($0, .vote(.yes)) } + [.setTimer(.termination(txid), afterMs: config.terminationTimeoutMs)]
        }
        return waiting.map { .reply($0, .vote(.yes)) } + [.setTimer(.inquire(txid), afterMs: config.inquiryDelayMs)]
    }

    /// `fromBackup`: sent by a peer acting as 3PC backup coordinator, which tells every peer
    /// that answered its round `unknown` (see `case nil` below).
    private mutating func commit(_ request: RequestID, _ txid: String, fromBackup: Bool = false) -> [Action] {
        guard var b = branches[txid] else {
            if let f = forgottenHeuristics[txid], f.decision.outcome == .aborted {
                // Forced to abort and forgotten: the coordinator records the difference (it
                // would retry a 409 for ever) as it does for a live heuristic-aborted branch.
                return forgottenTurnedMixed(txid, f, coordinatorOutcome: .committed, answer: (request, .heuristicAborted))
            }
            if heuristicMixed[txid]?.outcome == .aborted {
                // Forced to abort, and found to differ from the coordinator's commit by an
                // inquiry (which re-sends the commit at once): a 409 counted a failed delivery,
                // and with the report lost (a restart, five failed tries) it was retried for
                // ever, parked. The answer itself tells the coordinator (a review).
                return [.reply(request, .heuristicAborted)]
            }
            switch finishedOutcomes[txid] {
            case .aborted?:
                return [.reply(request, .error(RequestError(409, "branch \(txid) was aborted; it cannot commit")))]
            case .committed?:
                return [.reply(request, .acknowledged)]
            case nil:
                // The coordinator sends commit only to branches whose prepared record was
                // durable, and that record is dropped only after the outcome: an unknown
                // branch has already committed, if its outcome was let go. One this
                // participant never let go was prepared in data it no longer has (its
                // directory restored from an older copy): acknowledged, the commit would be
                // lost without a word. Refused, it stays with the coordinator (parked, in
                // view), and new work from that coordinator is refused too.
                // Not a backup's commit: a backup sends it to every peer that answered
                // `unknown`, and a 3PC reader that restarted (its vote is not logged) or let
                // its read-only outcome or promise go (no horizon is raised for those: they
                // never said yes) answers so with nothing lost. Refused, such a reader marked
                // its coordinator stale and refused all its new work (a review, session 37).
                // The backup ignores the answer, and the coordinator, back, sends its own
                // commit, which is checked here.
                if !fromBackup, let t = TxID(txid), !mayHaveForgotten(txid) {
                    markStale(t)
                    return [.reply(request, .error(lostCommitRefusal(t)))]
                }
                return [.reply(request, .acknowledged)]
            }
        }
        switch b.state {
        case .prepared, .preCommitted, .preAborted, .preCommitting, .preAborting:
            // A pre-record still being written may or may not become durable: a refused commit
            // record leaves such a branch uncertain, as a refused pre-record would.
            b.recordFrom = b.state == .preCommitting || b.state == .preAborting ? .prepared : b.state
            if b.state == .preCommitting {
                // The pre-commits waiting for the pre-record are answered as pre-commits once
                // the commit is durable: with the commit's acknowledgement they were answered
                // `committed`, which a coordinator does not take for one (session 31).
                b.preCommitWaiting += b.waiting
                b.waiting = []
            }
            b.state = .committing
            b.waiting.append(request)
            branches[txid] = b
            return [.cancelTimer(.inquire(txid))] + Self.terminationCancels(txid, b)
                + [.log(.committed(txid), force: true)]
        case .committing:
            if let full = Self.waitingFull(txid, b, request) { return full }
            b.waiting.append(request)
            branches[txid] = b
            return []
        case .aborting:
            return [.reply(request, .error(RequestError(409, "branch \(txid) is being aborted by its peers' termination protocol; it cannot commit")))]
        case .committed, .readOnly:
            return [.reply(request, .acknowledged)]
        case .heuristicCommitted:
            return resolveHeuristic(txid, coordinatorOutcome: .committed) + [.reply(request, .acknowledged)]
        case .heuristicAborted:
            return resolveHeuristic(txid, coordinatorOutcome: .committed) + [.reply(request, .heuristicAborted)]
        case .forcing, .forgetting:
            return [.reply(request, .error(RequestError(503, "an operator's decision on branch \(txid) is being recorded; retry")))]
        case .active, .preparing:
            return [.reply(request, .error(RequestError(409, "branch \(txid) has not voted yes; commit refused")))]
        case .aborted:
            return [.reply(request, .error(RequestError(409, "branch \(txid) was aborted; it cannot commit")))]
        }
    }

    private mutating func commitDurable(_ txid: String, lsn: UInt64) -> [Action] {
        guard let b = branches[txid], b.state == .committing else { return [] }
        let replies: [Action] = b.waiting.map { .reply($0, b.onePhase ? .outcome(.committed, reason: nil) : .acknowledged) }
            + b.preCommitWaiting.map { .reply($0, .preCommitted) }
        return [.apply(txid, writeSet: b.writeSet, lsn: lsn)] + finish(txid, .committed) + replies
    }

    /// The answers to requests waiting on a branch that aborted. Those waiting while its
    /// pre-committed record was written are pre-commits: a pre-commit is answered
    /// `pre-committed` once durable, or an error, never `aborted` (which the agent sends as a
    /// 200 and a coordinator could take for an acknowledgement; a review, session 29).
    private static func answerAborted(_ txid: String, _ waiting: [RequestID], wasPreCommitting: Bool) -> [Action] {
        guard wasPreCommitting else { return waiting.map { .reply($0, .aborted) } }
        return waiting.map { .reply($0, .error(RequestError(409, "branch \(txid) was aborted while its pre-committed record was written; it cannot pre-commit"))) }
    }

    private mutating func abort(_ request: RequestID, _ txid: String) -> [Action] {
        guard var b = branches[txid] else {
            if let f = forgottenHeuristics[txid], f.decision.outcome == .committed {
                // Forced to commit and forgotten, and the coordinator aborted after all: it
                // does not wait for this answer, so it hears of the difference by a report.
                return forgottenTurnedMixed(txid, f, coordinatorOutcome: .aborted,
                                            answer: (request, .error(RequestError(409, "branch \(txid) already committed (an operator forced it, then forgot it)"))))
            }
            if finishedOutcomes[txid] == .committed {
                return [.reply(request, .error(RequestError(409, "branch \(txid) already committed")))]
            }
            // Remember the abort, so a prepare or work that arrives after it is refused.
            rememberFinished(txid, .aborted)
            return [.reply(request, .aborted)]
        }
        switch b.state {
        case .active:
            return finish(txid, .aborted) + [.release(txid), .reply(request, .aborted)]
        case .prepared, .preCommitted, .preAborted, .preCommitting, .preAborting:
            let waiting = b.waiting
            return [.log(.aborted(txid), force: false)] + finish(txid, .aborted) + [.release(txid), .reply(request, .aborted)]
                + Self.answerAborted(txid, waiting, wasPreCommitting: b.state == .preCommitting)
        case .preparing:
            b.abortWhenDurable = true
            branches[txid] = b
            return [.reply(request, .aborted)]
        case .aborting:
            // Answered once the abort record is durable.
            if let full = Self.waitingFull(txid, b, request) { return full }
            b.waiting.append(request)
            branches[txid] = b
            return []
        case .committing, .committed:
            return [.reply(request, .error(RequestError(409, "branch \(txid) already committed")))]
        case .aborted, .readOnly:
            return [.reply(request, .aborted)]
        case .heuristicCommitted, .heuristicAborted:
            return resolveHeuristic(txid, coordinatorOutcome: .aborted) + [.reply(request, .aborted)]
        case .forgetting:
            // The coordinator does not send an abort again: kept, and answered as a heuristic
            // branch answers one (once the mixed mark is durable, when it differs).
            b.coordinatorOutcomeWhileForgetting = .aborted
            branches[txid] = b
            if b.heuristic?.outcome == .committed {
                return markMixedWhileForgetting(txid, coordinatorOutcome: .aborted, answer: (request, .aborted))
            }
            return [.reply(request, .aborted)]
        case .forcing:
            return [.reply(request, .error(RequestError(503, "an operator's decision on branch \(txid) is being recorded; retry")))]
        }
    }

    private mutating func recordRefused(_ txid: String, _ reason: String) -> [Action] {
        if let held = resolvingHeld.removeValue(forKey: txid) {
            // A forgotten branch's mixed mark was not written: not mixed here after all, and the
            // coordinator's requests are answered 503, so it sends them again.
            heuristicMixed.removeValue(forKey: txid)
            unreportedMixed.removeValue(forKey: txid)
            return held.compactMap { action in
                guard case .reply(let request, _) = action else { return nil }
                return .reply(request, .error(RequestError(503, "cannot log the heuristic-resolved record now: \(reason); retry")))
            }
        }
        if branches[txid] == nil, let waiting = promiseWaiting.removeValue(forKey: txid) {
            // No promise was written: nothing changed here, and the backup sends its pre-abort again.
            return waiting.map { .reply($0, .error(RequestError(503, "cannot log the promise not to vote yes now: \(reason); retry"))) }
        }
        guard var b = branches[txid] else { return [] }
        let waiting = b.waiting
        b.waiting = []
        // A 3PC branch back in a durable state terminates again later: whatever timer it had
        // was cancelled, or found it writing and set no next one.
        let terminateLater: [Action] = b.threePhase == nil ? [] : [.setTimer(.termination(txid), afterMs: config.terminationTimeoutMs)]
        let actions: [Action]
        switch b.state {
        case .committing where b.onePhase, .preparing:
            // No prepared (or one-phase commit) record exists: the branch never voted yes.
            let why = "cannot log the prepared record: \(reason)"
            return finish(txid, .aborted) + [.release(txid)]
                + waiting.map { .reply($0, b.onePhase ? .outcome(.aborted, reason: why) : .vote(.no(reason: why))) }
        case .aborting:
            // The abort was not written: the branch is where it was, and terminates again later.
            b.state = b.abortingFrom ?? .prepared
            b.abortingFrom = nil
            b.abortPeers = []
            actions = waiting.map { .reply($0, .error(RequestError(503, "cannot log the abort record now: \(reason); retry"))) }
                + [.setTimer(.termination(txid), afterMs: config.terminationTimeoutMs)]
        case .preCommitting, .preAborting:
            // The pre-record was not written: still uncertain.
            b.state = .prepared
            actions = waiting.map { .reply($0, .error(RequestError(503, "cannot log the pre-record now: \(reason); retry"))) }
                + terminateLater
        case .forcing:
            // The operator's decision was not recorded: the branch is in doubt as before (a
            // 3PC branch in the pre-state it had: it used to fall back to prepared, and a peer
            // could then count it uncertain after counting it pre-committed).
            b.state = b.recordFrom ?? .prepared
            b.recordFrom = nil
            b.heuristic = nil
            actions = waiting.map { .reply($0, .error(RequestError(503, "cannot record the forced decision now: \(reason); retry"))) }
                + [.setTimer(.inquire(txid), afterMs: config.inquiryDelayMs)] + terminateLater
        case .forgetting:
            // Not forgotten: still the operator's outcome, still asking the coordinator.
            b.state = b.heuristic?.outcome == .committed ? .heuristicCommitted : .heuristicAborted
            actions = waiting.map { .reply($0, .error(RequestError(503, "cannot record the forget now: \(reason); retry"))) }
                + [.setTimer(.inquire(txid), afterMs: config.inquiryDelayMs)]
        case .committing:
            // The outcome is still commit; the coordinator (or a backup) retries and we log it
            // then. Until then the branch is in the durable state it had.
            b.state = b.recordFrom ?? .prepared
            b.recordFrom = nil
            actions = (waiting + b.preCommitWaiting).map { .reply($0, .error(RequestError(503, "cannot log the commit record now: \(reason); retry"))) }
                + [.setTimer(.inquire(txid), afterMs: config.inquiryDelayMs)] + terminateLater
            b.preCommitWaiting = []
        default:
            branches[txid] = b
            return []
        }
        let stateWaiting = b.stateWaiting
        b.stateWaiting = []
        branches[txid] = b
        return actions + stateWaiting.map { .reply($0, .state(threePhaseState(txid), recovered: b.recovered)) }
    }

    private mutating func inquiryAnswered(_ txid: String, _ answer: InquiryAnswer) -> [Action] {
        guard let url = branches[txid]?.coordinatorURL, unreachableCoordinators.removeValue(forKey: url) != nil else {
            return branchInquiryAnswered(txid, answer)
        }
        return branchInquiryAnswered(txid, answer) + wakeWaiting(on: url, except: txid)
    }

    /// Whether an HTTP answer to a registration shows that the coordinator's own server is up
    /// and answering, so that an inquiry now would be answered too:
    /// - 200, whatever its body (as before: the registration accepted);
    /// - not 502, 503 or 504, whatever the body: a proxy or gateway that did not reach it, or
    ///   the coordinator shedding load (its server's `503 too many connections`, a log refusing
    ///   records), where waking every waiting branch would add an inquiry apiece to an
    ///   overloaded coordinator. (A 503 keeps its meaning for the work call too: the agent
    ///   answers it 503, to retry.)
    /// - not 401: the coordinator refused this participant's token, which its inquiries carry
    ///   too; they would be refused the same way, and under a stream of registrations each
    ///   answer would wake every waiting branch again, undoing their backoff.
    /// - any other status (404, 409, 410, 429, 400, 408, 500...) only with the coordinator's
    ///   error body (`{"error": "..."}`, as its server writes every refusal): a proxy's or load
    ///   balancer's own page (an HTML 404) says nothing about the coordinator behind it.
    /// Until session 37 only a 200 counted, and a coordinator back from a restart that
    /// answered registrations for transactions it no longer knew (404, 410) or that had
    /// finished (409) did not wake the branches waiting on it.
    public static func registrationAnswerShowsCoordinator(status: Int, body: [UInt8]) -> Bool {
        switch status {
        case 200: return true
        case 401, 502, 503, 504: return false
        default: return (try? ErrorBody(wireJSON: body)) != nil
        }
    }

    /// Whether `b` waits on the coordinator at `url` after a failed inquiry (backing off): the
    /// branches a coordinator's return wakes and that can be its probe. A 3PC branch without a
    /// heuristic decision does not wait on its coordinator (its termination timer runs).
    private static func waitsOnUnreachable(_ b: Branch, _ url: String) -> Bool {
        b.coordinatorURL == url && b.lastInquiryError != nil && b.state.asksCoordinator && (b.threePhase == nil || b.heuristic != nil)
    }

    /// The coordinator at `url` is back: the branches waiting on it ask again soon, spread over
    /// the first delay so they do not all arrive at once. In txid order, for the simulation's sake.
    private mutating func wakeWaiting(on url: String, except: String?) -> [Action] {
        var wake: [Action] = []
        for other in branches.keys.sorted() where other != except {
            guard Self.waitsOnUnreachable(branches[other]!, url) else { continue }
            wake.append(.setTimer(.inquire(other), afterMs: Int64(rng.next() % UInt64(max(config.inquiryDelayMs, 1)))))
        }
        return wake
    }

    /// The probe of the unreachable coordinator at `url` finished without an answer to an
    /// inquiry (which would have removed the entry and woken everyone): told its outcome by a
    /// commit or abort, forced and forgotten, resolved. The waiting branch first in txid order
    /// takes over and asks soon, or, with none left waiting, the entry goes. One scan of the
    /// branches per probe that finishes.
    private mutating func probeFinished(_ url: String) -> [Action] {
        var next: String?
        for (txid, b) in branches where Self.waitsOnUnreachable(b, url) && (next == nil || txid < next!) { next = txid }
        guard let next else {
            unreachableCoordinators.removeValue(forKey: url)
            return []
        }
        unreachableCoordinators[url] = next
        return [.setTimer(.inquire(next), afterMs: Int64(rng.next() % UInt64(max(config.inquiryDelayMs, 1))))]
    }

    private mutating func branchInquiryAnswered(_ txid: String, _ answer: InquiryAnswer) -> [Action] {
        if var b = branches[txid], b.state == .forgetting {
            // Asked before the forget: the answer is kept for when the forget is durable.
            let seen: Outcome
            switch answer {
            case .committed: seen = .committed
            case .aborted: seen = .aborted
            case .pending, .unknownCoordinator: return []
            }
            b.coordinatorOutcomeWhileForgetting = seen
            branches[txid] = b
            if let h = b.heuristic, h.outcome != seen {
                return markMixedWhileForgetting(txid, coordinatorOutcome: seen, answer: nil)
            }
            return []
        }
        if let b = branches[txid], b.state == .heuristicCommitted || b.state == .heuristicAborted {
            switch answer {
            case .committed: return resolveHeuristic(txid, coordinatorOutcome: .committed)
            case .aborted: return resolveHeuristic(txid, coordinatorOutcome: .aborted)
            case .pending, .unknownCoordinator: return [.setTimer(.inquire(txid), afterMs: config.retryDelayMsMax)]
            }
        }
        if let b = branches[txid], b.threePhase != nil, [.preCommitted, .preAborted].contains(b.state) {
            switch answer {
            case .committed: return commitSelf(txid)
            case .aborted: return abortSelf(txid)
            case .pending, .unknownCoordinator: return []
            }
        }
        guard var b = branches[txid], b.state == .prepared else { return [] }
        if b.threePhase != nil && (answer == .pending || answer == .unknownCoordinator) {
            b.lastInquiryError = answer == .pending ? nil : "coordinator does not recognise this transaction's coordinator id"
            branches[txid] = b
            return [] // the termination timer runs
        }
        switch answer {
        case .committed:
            b.state = .committing
            branches[txid] = b
            return [.log(.committed(txid), force: true)]
        case .aborted:
            return [.log(.aborted(txid), force: false)] + finish(txid, .aborted) + [.release(txid)]
        case .pending:
            b.lastInquiryError = nil
            branches[txid] = b
            return [.setTimer(.inquire(txid), afterMs: inquiryDelay(b.inquiries))]
        case .unknownCoordinator:
            // Never presume here: the coordinator that decided may be gone with its log.
            b.lastInquiryError = "coordinator does not recognise this transaction's coordinator id"
            branches[txid] = b
            return [.setTimer(.inquire(txid), afterMs: config.retryDelayMsMax)]
        }
    }

    // MARK: heuristic decisions

    private mutating func force(_ request: RequestID, _ txid: String, _ decision: HeuristicDecision, dryRun: Bool) -> [Action] {
        func refuse(_ status: Int, _ message: String) -> [Action] { [.reply(request, .error(RequestError(status, message)))] }
        guard !decision.reason.allSatisfy({ $0 == " " }), decision.reason.utf8.count <= Limits.reasonBytesMax else {
            return refuse(400, "a forced decision needs a reason of 1-\(Limits.reasonBytesMax) bytes")
        }
        // The name goes into the forced record; past the limit it would not be read back.
        if let refusal = operatorNameRefusal(decision.operatorName) { return [.reply(request, .error(refusal))] }
        guard var b = branches[txid] else {
            if let done = finishedOutcomes[txid] {
                if done == decision.outcome { return [.reply(request, .forced(done, dryRun: dryRun, effects: ["nothing to do: branch \(txid) is already \(done.rawValue)"]))] }
                return refuse(409, "refused: branch \(txid) already \(done.rawValue); forcing \(decision.outcome.rawValue) would contradict it")
            }
            return refuse(404, "no branch \(txid) at participant \(config.name)")
        }
        switch b.state {
        case .active:
            guard decision.outcome == .aborted else {
                return refuse(409, "branch \(txid) never prepared (it did not vote yes): there is no durable work to commit; only abort is possible")
            }
            let effects = ["abort the unprepared branch and release its locks (it never voted yes, so this is a local abort, not a heuristic decision)"]
            if dryRun { return [.reply(request, .forced(.aborted, dryRun: true, effects: effects))] }
            return finish(txid, .aborted) + [.release(txid), .reply(request, .forced(.aborted, dryRun: false, effects: effects))]
        case .prepared:
            let effects = decision.outcome == .committed
                ? ["write a heuristic-commit record and apply the branch's write set (\(b.writeSet.count) bytes); its locks are released",
                   "keep asking the coordinator at \(b.coordinatorURL); if it decided abort, report heuristic-mixed"]
                : ["write a heuristic-abort record and discard the branch's work; its locks are released",
                   "keep asking the coordinator at \(b.coordinatorURL); if it decided commit, report heuristic-mixed"]
            if dryRun { return [.reply(request, .forced(decision.outcome, dryRun: true, effects: effects))] }
            b.state = .forcing
            b.heuristic = decision
            b.waiting.append(request)
            branches[txid] = b
            return [.cancelTimer(.inquire(txid)),
                    .log(.heuristic(txid, outcome: decision.outcome, reason: decision.reason, operatorName: decision.operatorName, atMs: decision.atMs,
                                    releasedKeys: decision.releasedKeys, releasedKeysTotal: decision.releasedKeysTotal), force: true)]
        case .heuristicCommitted, .heuristicAborted:
            let current: Outcome = b.state == .heuristicCommitted ? .committed : .aborted
            if current == decision.outcome { return [.reply(request, .forced(current, dryRun: dryRun, effects: ["nothing to do: already forced \(current.rawValue)"]))] }
            return refuse(409, "refused: an operator already forced branch \(txid) to \(current.rawValue)")
        case .preparing, .committing, .forcing, .forgetting, .preCommitting, .preAborting, .aborting:
            return refuse(409, "branch \(txid) is \(b.state.rawValue): a record is being written; look again in a moment")
        case .preCommitted, .preAborted:
            // A 3PC branch between phases is as much in doubt as a prepared one.
            var asPrepared = b
            asPrepared.state = .prepared
            branches[txid] = asPrepared
            let actions = force(request, txid, decision, dryRun: dryRun)
            if dryRun || branches[txid]?.state != .forcing { branches[txid]?.state = b.state } else { branches[txid]?.recordFrom = b.state }
            return actions
        case .committed, .aborted, .readOnly:
            return refuse(409, "branch \(txid) is already \(b.state.rawValue)")
        }
    }

    /// Retires a heuristically decided branch (and nothing else: a branch in doubt has no
    /// outcome to keep, and one that finished has nothing left to stop). The forget record is
    /// forced before the branch finishes, so a restart does not start asking again.
    private mutating func forget(_ request: RequestID, _ txid: String, reason: String, operatorName: String, dryRun: Bool, atMs: Int64) -> [Action] {
        func refuse(_ status: Int, _ message: String) -> [Action] { [.reply(request, .error(RequestError(status, message)))] }
        guard !reason.allSatisfy({ $0 == " " }), reason.utf8.count <= Limits.reasonBytesMax else {
            return refuse(400, "a forget needs a reason of 1-\(Limits.reasonBytesMax) bytes")
        }
        if let refusal = operatorNameRefusal(operatorName) { return [.reply(request, .error(refusal))] }
        guard var b = branches[txid] else {
            if heuristicMixed[txid] != nil {
                return refuse(409, "branch \(txid) is heuristic-mixed: the coordinator's outcome is known (and differs from the forced one); there is nothing to forget")
            }
            if let f = forgottenHeuristics[txid] {
                // A forget sent again (its answer was lost): done already, as a repeated force is.
                let h = f.decision
                return [.reply(request, .forced(h.outcome, dryRun: dryRun, effects: ["nothing to do: branch \(txid) was already forgotten; it stays \(h.outcome.rawValue) as \(h.operatorName) forced it"]))]
            }
            if let done = finishedOutcomes[txid] {
                return refuse(409, "branch \(txid) is already \(done.rawValue) here and asks nothing: there is nothing to forget")
            }
            return refuse(404, "no branch \(txid) at participant \(config.name)")
        }
        switch b.state {
        case .heuristicCommitted, .heuristicAborted:
            guard let h = b.heuristic else { preconditionFailure("heuristic branch \(txid) without its decision") }
            let effects = ["write a forget record: branch \(txid) stays \(h.outcome.rawValue) as \(h.operatorName) forced it, and stops asking the coordinator at \(b.coordinatorURL)",
                           "if that coordinator comes back and sends the other outcome, it hears that the forced outcome differs (its commit is answered heuristic-aborted; its abort brings a heuristic report) and records the transaction heuristic-mixed; a coordinator that restarted without a decision presumes abort and sends nothing, so a branch forced to commit is then never found mixed: check the coordinator's log first"]
            if dryRun { return [.reply(request, .forced(h.outcome, dryRun: true, effects: effects))] }
            b.state = .forgetting
            b.waiting.append(request)
            branches[txid] = b
            return [.cancelTimer(.inquire(txid)), .log(.heuristicForgotten(txid, reason: reason, operatorName: operatorName, atMs: atMs), force: true)]
        case .forgetting, .forcing:
            return refuse(409, "branch \(txid) is \(b.state.rawValue): a record is being written; look again in a moment")
        case .prepared, .preparing, .committing, .preCommitting, .preCommitted, .preAborting, .preAborted, .aborting:
            return refuse(409, "branch \(txid) is \(b.state.rawValue), with no operator's decision: only a heuristically decided branch (txctl agent URL commit|abort TXID --force first) can be forgotten")
        case .active, .committed, .aborted, .readOnly:
            return refuse(409, "branch \(txid) is \(b.state.rawValue): only a heuristically decided branch can be forgotten")
        }
    }

    private mutating func heuristicDurable(_ txid: String, lsn: UInt64) -> [Action] {
        guard var b = branches[txid], b.state == .forcing, let h = b.heuristic else { return [] }
        let waiting = b.waiting
        b.waiting = []
        var actions: [Action]
        if h.outcome == .committed {
            b.state = .heuristicCommitted
            actions = [.apply(txid, writeSet: b.writeSet, lsn: lsn)]
        } else {
            b.state = .heuristicAborted
            actions = [.release(txid)]
        }
        b.dropWriteSet()
        branches[txid] = b
        let effects = ["branch \(txid) \(h.outcome.rawValue) by operator \(h.operatorName) (heuristic); still asking the coordinator"]
        actions += waiting.map { .reply($0, .forced(h.outcome, dryRun: false, effects: effects)) }
        actions.append(.setTimer(.inquire(txid), afterMs: config.inquiryDelayMs))
        return actions
    }

    /// The coordinator's outcome is known for a heuristically decided branch.
    private mutating func resolveHeuristic(_ txid: String, coordinatorOutcome: Outcome) -> [Action] {
        guard let b = branches[txid], let h = b.heuristic else { return [] }
        let mixed = h.outcome != coordinatorOutcome
        var actions: [Action] = [.log(.heuristicResolved(txid, coordinatorOutcome: coordinatorOutcome, mixed: mixed), force: false)]
        if mixed {
            rememberMixed(txid, h, unreportedTo: b.coordinatorURL)
            actions.append(.reportHeuristic(txid, coordinatorURL: b.coordinatorURL, decision: h))
        }
        return actions + finish(txid, h.outcome)
    }

    private mutating func inquiryDelay(_ attempts: Int, maxMs: Int64? = nil) -> Int64 {
        backoffDelayMs(attempt: attempts, minMs: config.inquiryDelayMs, maxMs: max(maxMs ?? config.retryDelayMsMax, config.inquiryDelayMs), rng: &rng)
    }

    /// A forgotten heuristic decision whose coordinator came back with the other outcome: the
    /// branch is heuristic-mixed here too (listed, counted by the gauge, shown), as a live one
    /// becomes: before session 26 only the coordinator listed it, and the agent's own views
    /// showed a plain finished branch. Recorded as a live branch's resolution is (forced: no
    /// inquiry would learn it again), once; the coordinator hears, with who forced it, why and
    /// when, by a report (it takes repeats).
    /// `answer`: the reply to the coordinator's request that showed it, held with the report
    /// until the record is durable.
    private mutating func forgottenTurnedMixed(_ txid: String, _ f: ForgottenHeuristic, coordinatorOutcome: Outcome,
                                               answer: (RequestID, Reply)?) -> [Action] {
        let report: Action = .reportHeuristic(txid, coordinatorURL: f.coordinatorURL, decision: f.decision)
        let reply: [Action] = answer.map { [.reply($0.0, $0.1)] } ?? []
        if var held = resolvingHeld[txid] {
            // The record is being written: this answer waits for it too.
            guard let answer else { return [] }
            guard held.count <= Limits.waitersPerTransactionMax else {
                return [.reply(answer.0, .error(RequestError(503, "\(held.count) requests already wait for branch \(txid)'s record; retry later")))]
            }
            held.append(.reply(answer.0, answer.1))
            resolvingHeld[txid] = held
            return []
        }
        guard heuristicMixed[txid] == nil else { return reply + [report] }
        rememberMixed(txid, f.decision, unreportedTo: f.coordinatorURL)
        resolvingHeld[txid] = reply + [report]
        return [.log(.heuristicResolved(txid, coordinatorOutcome: coordinatorOutcome, mixed: true), force: true)]
    }

    /// The coordinator's outcome, arriving while the forget record is being written, differs
    /// from the forced one: the mixed mark is logged now, right behind the forget record (so
    /// it rides the same sync, or the next), and kept in memory at once (so a checkpoint taken
    /// before the forget is durable carries it). Logged only once the forget was durable, a
    /// crash between that sync and the mark's lost the mark: the branch came back forgotten,
    /// asking nobody, and the coordinator (which sends an abort once and waits for no answer)
    /// never heard (a review). The answer and the report wait for the mark, as a forgotten
    /// branch's do.
    private mutating func markMixedWhileForgetting(_ txid: String, coordinatorOutcome: Outcome, answer: (RequestID, Reply)?) -> [Action] {
        guard let b = branches[txid], b.state == .forgetting, let h = b.heuristic else { return [] }
        return forgottenTurnedMixed(txid, ForgottenHeuristic(decision: h, coordinatorURL: b.coordinatorURL),
                                    coordinatorOutcome: coordinatorOutcome, answer: answer)
    }

    /// `unreportedTo`: the coordinator its report is owed to (set before the bound lets the
    /// oldest go, so an entry let go at once leaves nothing behind; a review).
    private mutating func rememberMixed(_ txid: String, _ h: HeuristicDecision, unreportedTo url: String? = nil) {
        heuristicMixed[txid] = h
        if let url { unreportedMixed[txid] = url }
        if heuristicMixed.count > config.finishedBranchesKept,
           let oldest = heuristicMixed.min(by: { ($0.value.atMs, $0.key) < ($1.value.atMs, $1.key) })?.key {
            heuristicMixed.removeValue(forKey: oldest)
            unreportedMixed.removeValue(forKey: oldest)
        }
    }

    private mutating func rememberForgotten(_ txid: String, _ h: HeuristicDecision, coordinatorURL: String) {
        if forgottenHeuristics.updateValue(ForgottenHeuristic(decision: h, coordinatorURL: coordinatorURL), forKey: txid) == nil {
            forgottenHeuristicOrder.append(txid)
        }
        if forgottenHeuristics.count > Limits.forgottenHeuristicsKept {
            forgottenHeuristics.removeValue(forKey: forgottenHeuristicOrder.removeFirst())
        }
    }

    private mutating func finish(_ txid: String, _ outcome: Outcome) -> [Action] {
        let b = branches.removeValue(forKey: txid)
        rememberFinished(txid, outcome)
        var actions: [Action] = [.cancelTimer(.branchExpiry(txid)), .cancelTimer(.inquire(txid))]
            + Self.terminationCancels(txid, b) + [.finished(txid, outcome)]
        // (Appended only when there are some: every branch ends here.)
        if let b, !b.stateWaiting.isEmpty {
            let state: ThreePhaseState = outcome == .committed ? .committed : .aborted
            actions += b.stateWaiting.map { .reply($0, .state(state, recovered: b.recovered)) }
        }
        if let b, unreachableCoordinators[b.coordinatorURL] == txid { actions += probeFinished(b.coordinatorURL) }
        return actions
    }

    /// Termination timers are set for 3PC branches only, so a 2PC branch has none to cancel
    /// (each cancel is a table lookup in the runtime: about 2% of an agent's instructions went
    /// to cancelling timers that were never set). Without the branch, cancel to be safe.
    /// A repeated request past `Limits.waitersPerTransactionMax` is answered 503 at once (the
    /// coordinator retries) instead of joining the wait for the branch's record.
    static func waitingFull(_ txid: String, _ b: Branch, _ request: RequestID) -> [Action]? {
        guard b.waiting.count >= Limits.waitersPerTransactionMax else { return nil }
        return [.reply(request, .error(RequestError(503, "\(b.waiting.count) requests already wait for branch \(txid)'s record; retry later")))]
    }

    private static func terminationCancels(_ txid: String, _ b: Branch?) -> [Action] {
        if let b, b.threePhase == nil { return [] }
        return [.cancelTimer(.termination(txid)), .cancelTimer(.terminationRound(txid))]
    }

    /// Raises `upTo` to cover `txid`, a txid whose outcome is let go.
    static func raise(_ upTo: inout [String: TxID], _ unknown: inout Bool, to txid: TxID) {
        if let known = upTo[txid.coordinatorID] {
            if known < txid { upTo[txid.coordinatorID] = txid }
        } else if upTo.count < Limits.forgottenHorizonCoordinatorsMax {
            upTo[txid.coordinatorID] = txid
        } else {
            unknown = true
        }
    }

    static func raise(_ upTo: inout [String: TxID], _ unknown: inout Bool, toText text: String) {
        // A txid that is not a coordinator's (none is, among outcomes kept here) is let go
        // unknown: no promise then.
        guard let txid = TxID(text) else { return unknown = true }
        raise(&upTo, &unknown, to: txid)
    }

    /// Raises the promise horizon to `text`. Past `Limits.forgottenHorizonCoordinatorsMax`
    /// coordinators a promise let go is not placed: its protection is lost (each takes more than
    /// `finishedBranchesKept` finished branches after it, and a prepare that late).
    static func raisePromisesLetGo(_ upTo: inout [String: TxID], toText text: String) {
        guard let txid = TxID(text) else { return }
        var notPlaced = false
        raise(&upTo, &notPlaced, to: txid)
    }

    /// Whether a promise never to vote yes on `txid` may be among those let go.
    func mayHaveLetGoAPromise(_ txid: String) -> Bool {
        // Asked at every join: nothing to parse until a promise was let go (rare).
        guard !promisesLetGoUpTo.isEmpty, let t = TxID(txid), let upTo = promisesLetGoUpTo[t.coordinatorID] else { return false }
        return !(upTo < t)
    }

    /// Checks what a coordinator says about the transaction `txid`: that this participant
    /// acknowledged the commit of `lastAcknowledged` (`last_acknowledged_commit` in its
    /// registration answer or prepare). A commit is acknowledged only once its record is
    /// durable, and the outcome is kept until let go (`forgottenUpTo`, raised for every outcome
    /// let go, in memory and in checkpoints); so a txid this participant neither knows nor let
    /// go is one its data lost: the directory was restored from an older copy. Nil when it is
    /// known or let go; otherwise the refusal (503), remembered for the coordinator so that
    /// all its new work is refused. 400 for a malformed txid, or another coordinator's.
    public mutating func checkLastAcknowledgedCommit(_ lastAcknowledged: String, for txid: String) -> RequestError? {
        // The usual case, at every registration: a commit that finished here recently, named as
        // this participant keeps it, of the same coordinator as `txid` (the same id before the
        // first '-'). One lookup, where parsing both txids and rendering one cost about 3,800
        // instructions a registration (benchmarks/profile, session 37).
        if staleForCoordinators.isEmpty, finishedOutcomes[lastAcknowledged] != nil,
           lastAcknowledged.utf8.prefix(while: { $0 != UInt8(ascii: "-") }).elementsEqual(txid.utf8.prefix(while: { $0 != UInt8(ascii: "-") })) {
            return nil
        }
        guard let acknowledged = TxID(lastAcknowledged) else {
            return RequestError(400, "malformed last_acknowledged_commit \"\(lastAcknowledged.prefix(80))\"")
        }
        if let t = TxID(txid), t.coordinatorID != acknowledged.coordinatorID {
            return RequestError(400, "last_acknowledged_commit \(acknowledged) is not a txid of the coordinator of \(txid)")
        }
        if let stale = staleForCoordinators[acknowledged.coordinatorID] { return staleRefusal(stale) }
        let text = acknowledged.description
        if branches[text] != nil || finishedOutcomes[text] != nil || heuristicMixed[text] != nil || forgottenHeuristics[text] != nil
            || mayHaveForgotten(text) {
            return nil
        }
        markStale(acknowledged)
        return staleRefusal(acknowledged)
    }

    /// Remembers that the coordinator of `txid` knows of a commit of this participant's that
    /// its data lost (the first such txid is kept: the refusal names it).
    private mutating func markStale(_ txid: TxID) {
        guard staleForCoordinators[txid.coordinatorID] == nil, staleForCoordinators.count < Limits.forgottenHorizonCoordinatorsMax else { return }
        staleForCoordinators[txid.coordinatorID] = txid
    }

    /// Why a commit for a branch this participant neither holds nor let go is not acknowledged.
    func lostCommitRefusal(_ txid: TxID) -> RequestError {
        RequestError(503, "participant \(config.name) does not acknowledge the commit of \(txid): it neither holds that branch nor let its "
            + "outcome go, so its prepared record is missing from this participant's data (its data directory restored from an older "
            + "copy?); the commit stays with the coordinator (docs/failure-model.md, \"Participant data directory restored from an older copy\")")
    }

    /// Why new work from the coordinator of `acknowledged` is refused.
    public func staleRefusal(_ acknowledged: TxID) -> RequestError {
        RequestError(503, "participant \(config.name) refuses new work from coordinator \(acknowledged.coordinatorID): that coordinator holds "
            + "a commit of \(acknowledged) this participant acknowledged or voted yes on, which its data neither holds nor let go, so its "
            + "data directory is older than what it acknowledged (restored from a backup or snapshot?); replace the directory and restart "
            + "it (docs/failure-model.md, \"Participant data directory restored from an older copy\")")
    }

    /// Whether this participant may have voted yes on `txid` and forgotten its outcome.
    func mayHaveForgotten(_ txid: String) -> Bool {
        if forgottenUnknown { return true }
        // One that is not a coordinator's cannot be placed, unless nothing was let go at all.
        guard let t = TxID(txid) else { return !forgottenUpTo.isEmpty }
        guard let upTo = forgottenUpTo[t.coordinatorID] else { return false }
        return !(upTo < t)
    }

    private mutating func rememberFinished(_ txid: String, _ outcome: Outcome) {
        if finishedOutcomes.updateValue(outcome, forKey: txid) == nil { finishedOrder.append(txid) }
        while finishedOutcomes.count > config.finishedBranchesKept {
            let letGo = finishedOrder[finishedOrderHead]
            // Read-only votes and promises never said yes: letting them go forgets no yes. A
            // promise let go raises its own horizon: a 3PC prepare at or below it votes no.
            if promisedNoVote.contains(letGo) {
                Self.raisePromisesLetGo(&promisesLetGoUpTo, toText: letGo)
            } else if !readOnlyFinished.contains(letGo) {
                Self.raise(&forgottenUpTo, &forgottenUnknown, toText: letGo)
            }
            finishedOutcomes.removeValue(forKey: letGo)
            if !readOnlyFinished.isEmpty { readOnlyFinished.remove(letGo) }
            if !onePhaseReadOnlyFinished.isEmpty { onePhaseReadOnlyFinished.remove(letGo) }
            if !promisedNoVote.isEmpty { promisedNoVote.remove(letGo) }
            finishedOrderHead += 1
        }
        if finishedOrderHead > 4096 && finishedOrderHead * 2 > finishedOrder.count {
            finishedOrder.removeFirst(finishedOrderHead)
            finishedOrderHead = 0
        }
    }
}

/// Binary encoding of the participant's log records.
// MARK: - three-phase commit: pre-commit and the termination protocol

extension Participant {
    /// The 3PC state of a branch, as reported to a peer. A record still being written does not
    /// count yet (it may not survive a crash).
    func threePhaseState(_ txid: String) -> ThreePhaseState {
        if let b = branches[txid] {
            switch b.state {
            case .prepared, .preCommitting, .preAborting, .forcing: return .uncertain
            case .preCommitted: return .preCommitted
            case .preAborted: return .preAborted
            // Its abort record may not survive a crash yet: report the state before it.
            case .aborting: return b.abortingFrom == .preCommitted ? .preCommitted : b.abortingFrom == .preAborted ? .preAborted : .uncertain
            // A commit is being logged: the decision is commit, whoever made it.
            case .committing, .committed, .heuristicCommitted: return .committed
            case .aborted, .heuristicAborted: return .aborted
            case .forgetting: return b.heuristic?.outcome == .committed ? .committed : .aborted
            case .readOnly: return .readOnly
            case .active, .preparing: return .unknown
            }
        }
        switch finishedOutcomes[txid] {
        case .committed? where readOnlyFinished.contains(txid): return .readOnly
        case .committed?: return .committed
        // Promised never to vote yes, holding no work: in no quorum, and no backup. (Not
        // `aborted`: a restarted read-only voter makes the same promise, and an `aborted`
        // answer would abort branches the coordinator may have committed without it.)
        case .aborted? where promisedNoVote.contains(txid): return .readOnly
        case .aborted?: return .aborted
        case nil: return .unknown
        }
    }

    /// A pre-commit (or, in quorum termination, a pre-abort): force the record, then answer.
    /// Once this branch has joined a termination round it takes these only from a backup
    /// coordinator, so the state it reported to its peers stays true.
    mutating func preRecord(_ request: RequestID, _ txid: String, commit: Bool, fromBackup: Bool) -> [Action] {
        if !commit { noteAskedBeforeVoting(txid) }
        guard var b = branches[txid], b.threePhase != nil else {
            switch finishedOutcomes[txid] {
            case .committed? where readOnlyFinished.contains(txid):
                // A reader holds no pre-state: an acknowledgement would count it as a durably
                // pre-committed writer, which it is not.
                return [.reply(request, .error(RequestError(409, "branch \(txid) voted read-only: it holds no pre-state")))]
            case .committed? where commit: return [.reply(request, .preCommitted)]
            case .committed?: return [.reply(request, .error(RequestError(409, "branch \(txid) already committed")))]
            case .aborted? where !commit: return [.reply(request, .preAborted)]
            case .aborted?: return [.reply(request, .error(RequestError(409, "branch \(txid) was aborted")))]
            case nil where commit && fromBackup && branches[txid] == nil && !mayHaveForgotten(txid):
                // A backup pre-commits only once some branch is pre-committed, so every branch
                // voted yes: one with no branch and no outcome here (and none let go at or above
                // this txid) voted read-only and restarted (that vote is not logged). Refused
                // with 409 only, it stayed in N as uncertain, and the pre-committed writer asked
                // it for ever (a review). It promises never to vote yes, and answers `read-only`
                // from the next round on; this pre-commit is refused meanwhile.
                if promiseWaiting[txid] == nil {
                    if let full = promisesFull() { return [.reply(request, .error(full))] }
                    return [startPromise(txid, waiting: []),
                            .reply(request, .error(RequestError(409, "no three-phase branch \(txid) here: it voted read-only, and promises never to vote yes")))]
                }
                return [.reply(request, .error(RequestError(409, "no three-phase branch \(txid) here: a promise never to vote yes is being written")))]
            case nil where !commit && branches[txid] == nil && mayHaveForgotten(txid):
                // It may have voted yes and forgotten the outcome: it cannot promise (see
                // `forgottenUpTo`), and the transaction waits for its coordinator.
                return [.reply(request, .error(RequestError(409, "no three-phase branch \(txid) here, and its outcome may be one this participant no longer remembers: it cannot promise not to have voted yes")))]
            case nil where !commit && branches[txid] == nil:
                // No branch, no outcome, and none let go at or above this txid: this
                // participant never voted yes (its prepare is late or lost, or it voted
                // read-only and restarted). It promises, durably, never to vote yes, and
                // answers `read-only` from then on, so the writers decide among themselves.
                if var waiting = promiseWaiting[txid] {
                    guard waiting.count < Limits.waitersPerTransactionMax else {
                        return [.reply(request, .error(RequestError(503, "\(waiting.count) pre-aborts already wait for \(txid)'s record; retry later")))]
                    }
                    waiting.append(request)
                    promiseWaiting[txid] = waiting
                    return []
                }
                if let full = promisesFull() { return [.reply(request, .error(full))] }
                return [startPromise(txid, waiting: [request])]
            case nil: return [.reply(request, .error(RequestError(409, "no three-phase branch \(txid) here")))]
            }
        }
        switch (b.state, commit) {
        case (.preCommitted, true): return [.reply(request, .preCommitted)]
        case (.preAborted, false): return [.reply(request, .preAborted)]
        case (.preCommitting, true), (.preAborting, false):
            // Repeats (duplicates, a backup's rounds) wait for the same record: bounded, like
            // every other waiting list (it had no cap; a review, session 31).
            if let full = Self.waitingFull(txid, b, request) { return full }
            b.waiting.append(request)
            branches[txid] = b
            return []
        case (.committing, true):
            // Being committed: the outcome is commit, and a committed branch acknowledges a
            // pre-commit (`finishedOutcomes` above). At once only over a durable pre-committed
            // record; else once the commit record is durable, which makes the answer true.
            if b.recordFrom == .preCommitted { return [.reply(request, .preCommitted)] }
            guard b.preCommitWaiting.count < Limits.waitersPerTransactionMax else {
                return [.reply(request, .error(RequestError(503, "\(b.preCommitWaiting.count) pre-commits already wait for branch \(txid)'s commit record; retry later")))]
            }
            b.preCommitWaiting.append(request)
            branches[txid] = b
            return []
        case (.preAborted, true) where b.threePhase?.termination == .quorum, (.preCommitted, false) where b.threePhase?.termination == .quorum:
            // Quorum termination counts on pre-states that never change: a commit needs a
            // quorum pre-committed and an abort a quorum pre-aborted, and two quorums share a
            // participant only if no participant can be in both. A late pre-commit from one
            // backup could otherwise flip a branch another backup already counted.
            return [.reply(request, .error(RequestError(409, "branch \(txid) is \(b.state.rawValue); under quorum termination a pre-state does not change")))]
        case (.prepared, _), (.preAborted, true), (.preCommitted, false):
            if b.terminating && !fromBackup {
                return [.reply(request, .error(RequestError(409, "branch \(txid) joined its peers' termination protocol; it takes no pre-commit from the coordinator now")))]
            }
            b.state = commit ? .preCommitting : .preAborting
            b.waiting.append(request)
            branches[txid] = b
            return [.log(commit ? .preCommitted(txid) : .preAborted(txid), force: true)]
        default:
            return [.reply(request, .error(RequestError(409, "branch \(txid) is \(b.state.rawValue)")))]
        }
    }

    mutating func preRecordDurable(_ txid: String) -> [Action] {
        guard var b = branches[txid], b.state == .preCommitting || b.state == .preAborting else { return [] }
        let commit = b.state == .preCommitting
        b.state = commit ? .preCommitted : .preAborted
        let waiting = b.waiting
        b.waiting = []
        let stateWaiting = b.stateWaiting
        b.stateWaiting = []
        branches[txid] = b
        var actions: [Action] = waiting.map { .reply($0, commit ? .preCommitted : .preAborted) }
        if !stateWaiting.isEmpty { actions += stateWaiting.map { .reply($0, .state(commit ? .preCommitted : .preAborted, recovered: b.recovered)) } }
        actions.append(.setTimer(.termination(txid), afterMs: config.terminationTimeoutMs))
        return actions
    }

    /// A peer (or the coordinator) asks where this branch stands. A branch that answers joins
    /// the termination: from now on it takes pre-records only from a backup coordinator.
    mutating func stateQuery(_ request: RequestID, _ txid: String) -> [Action] {
        noteAskedBeforeVoting(txid)
        if var b = branches[txid], b.threePhase != nil, b.state == .preCommitting || b.state == .preAborting {
            // Its pre-record is being written: answer once it is durable, with the state it
            // then has for good. (It takes no coordinator pre-commit after that answer.)
            guard b.stateWaiting.count < Limits.waitersPerTransactionMax else {
                return [.reply(request, .error(RequestError(503, "\(b.stateWaiting.count) state queries already wait for branch \(txid)'s pre-record; retry later")))]
            }
            b.terminating = true
            b.stateWaiting.append(request)
            branches[txid] = b
            return []
        }
        if var b = branches[txid], b.threePhase != nil, [.prepared, .preCommitted, .preAborted].contains(b.state) {
            b.terminating = true
            branches[txid] = b
        }
        return [.reply(request, .state(threePhaseState(txid), recovered: branches[txid]?.recovered ?? false))]
    }

    /// A termination protocol asked about `txid`: a branch that has not voted (`active`, or
    /// `preparing`: its yes is not sent before the prepared record is durable), or a txid with
    /// no branch and no outcome here, will vote no (the answer, `unknown`, counts toward an
    /// abort quorum). In memory: a crash loses the staged work of an unvoted branch anyway, so
    /// its prepare votes no after it; a fence on a txid with no branch is lost (docs/protocols.md).
    private mutating func noteAskedBeforeVoting(_ txid: String) {
        if var b = branches[txid] {
            guard b.state == .active || b.state == .preparing, !b.askedBeforeVoting else { return }
            b.askedBeforeVoting = true
            branches[txid] = b
            return
        }
        guard finishedOutcomes[txid] == nil, fencesBeforePrepare.insert(txid).inserted else { return }
        fenceOrder.append(txid)
        while fencesBeforePrepare.count > Limits.threePhaseFencesKept {
            fencesBeforePrepare.remove(fenceOrder[fenceOrderHead])
            fenceOrderHead += 1
        }
        if fenceOrderHead > 4096 && fenceOrderHead * 2 > fenceOrder.count {
            fenceOrder.removeFirst(fenceOrderHead)
            fenceOrderHead = 0
        }
    }

    /// No word from the coordinator: ask every peer for its state (and the coordinator, in
    /// case it is back with an outcome).
    mutating func startTerminationRound(_ txid: String) -> [Action] {
        guard var b = branches[txid], let info = b.threePhase,
              [.prepared, .preCommitted, .preAborted].contains(b.state) else { return [] }
        b.terminating = true
        b.round += 1
        b.roundStates = [config.name: threePhaseState(txid)]
        b.roundRecovered = []
        let others = info.peers.filter { $0.name != config.name }
        b.roundPending = Set(others.map(\.name))
        branches[txid] = b
        return others.map { .queryPeer(txid, peer: $0, round: b.round) }
            + [.inquire(txid, coordinatorURL: b.coordinatorURL),
               .setTimer(.terminationRound(txid), afterMs: config.terminationRoundMs)]
    }

    mutating func peerState(_ txid: String, round: Int, peer: String, state: ThreePhaseState?, recovered: Bool) -> [Action] {
        guard var b = branches[txid], b.round == round, b.roundPending.contains(peer) else { return [] }
        b.roundPending.remove(peer)
        if let state { b.roundStates[peer] = state }
        if state != nil && recovered { b.roundRecovered.insert(peer) }
        branches[txid] = b
        guard b.roundPending.isEmpty else { return [] }
        return [.cancelTimer(.terminationRound(txid))] + decideTermination(txid)
    }

    /// The termination rules. Every participant adopts an outcome a peer reports (any
    /// committed → commit; any aborted → abort). The rest are applied by the backup
    /// coordinator: the live participant with the lowest name among those that answered this
    /// round with a branch (not `unknown`) and did not vote read-only. Others wait for it (and run their own round again
    /// later, so a backup that dies is replaced).
    ///
    /// Classic (Skeen 1981): any committed → commit; any aborted → abort; nobody pre-committed
    /// → abort; otherwise pre-commit the uncertain ones, then commit.
    /// Quorum (Skeen 1982), with a majority Q of the participants for both: any committed →
    /// commit; any aborted → abort; some pre-committed and pre-committed + uncertain ≥ Q →
    /// pre-commit the uncertain, commit once Q are pre-committed; else pre-aborted + uncertain
    /// ≥ Q → pre-abort the uncertain, abort once Q are pre-aborted; else block.
    mutating func decideTermination(_ txid: String) -> [Action] {
        guard var b = branches[txid], let info = b.threePhase,
              [.prepared, .preCommitted, .preAborted].contains(b.state) else { return [] }
        b.roundStates[config.name] = threePhaseState(txid)
        b.roundPending = []
        branches[txid] = b
        var states = b.roundStates
        let again: Action = .setTimer(.termination(txid), afterMs: config.terminationTimeoutMs)
        let peersByName = Dictionary(uniqueKeysWithValues: info.peers.map { ($0.name, $0) })
        /// The peers among `states`' keys, by name.
        func peers(in states: [String: ThreePhaseState]) -> [ParticipantRef] {
            states.keys.sorted().filter { $0 != config.name }.compactMap { peersByName[$0] }
        }
        // An outcome a peer reached is final, whoever reports it and whoever this branch is:
        // every participant adopts it, not only the backup. (A branch that is not the backup
        // used to wait for the backup's message, and waited for ever when that message was
        // lost or the backup had finished before this branch came back.)
        let answered = peers(in: states)
        if states.values.contains(.committed) {
            return answered.filter { states[$0.name] != .committed && states[$0.name] != .readOnly }
                .map { .sendToPeer(txid, peer: $0, message: .commit) } + commitSelf(txid)
        }
        if states.values.contains(.aborted) {
            return terminationAbort(txid, telling: answered.filter { states[$0.name] != .aborted && states[$0.name] != .readOnly })
        }
        if info.termination == .classic {
            if b.recovered {
                // Back from a crash: decide only with every peer's word (a peer that decided
                // while this one was down may be down now), else wait to learn the outcome.
                // `unknown` is no word: a peer that committed and forgot it answers so (it
                // aborted while its peers had committed, a review, session 27). Readers'
                // words and recovered peers' pre-states count: a commit needs a writer durably
                // pre-committed (the classic coordinator commits at its pre-commit timeout only
                // with an acknowledgement, session 28), and that writer reports it.
                let missing = Set(info.peers.map(\.name)).subtracting(states.filter { $0.value != .unknown }.keys)
                if !missing.isEmpty {
                    // A peer that answered `unknown` and has let go of no txid at or above this
                    // one never voted yes (or was a reader that restarted). Asked to pre-abort,
                    // it promises durably never to vote yes and answers `read-only` from the
                    // next round on: a word. One that may have forgotten an outcome refuses
                    // (409), and this branch keeps waiting for the coordinator or an operator.
                    // (Without the ask, a recovered branch whose peers never had the transaction
                    // waited for ever once the coordinator was lost: simulation seeds 634 and
                    // 772, session 27.)
                    let unknownPeers = peers(in: states.filter { $0.value == .unknown })
                    return unknownPeers.map { .sendToPeer(txid, peer: $0, message: .preAbort) } + [again]
                }
            } else {
                // A recovered peer's pre-state may predate a decision it missed: only its
                // outcome (committed, aborted) counts here.
                states = states.filter { !b.roundRecovered.contains($0.key) || $0.value == .committed || $0.value == .aborted }
            }
        }
        // A read-only branch wrote nothing: it counts for neither outcome, and is no backup.
        states = states.filter { $0.value != .readOnly }
        // A peer that answered `unknown` has no branch (or has not voted): it never runs a
        // round, so it is no backup. (Elected as the lowest name, it left the others waiting
        // for it for as long as the coordinator was gone, a review, session 27.)
        guard states.filter({ $0.value != .unknown }).keys.min() == config.name else { return [again] } // not the backup
        let reachable = peers(in: states)
        func tell(_ message: PeerMessage, where want: (ThreePhaseState) -> Bool) -> [Action] {
            reachable.filter { want(states[$0.name]!) }.map { .sendToPeer(txid, peer: $0, message: message) }
        }
        let count = { (s: ThreePhaseState) in states.values.filter { $0 == s }.count }
        let uncertain = count(.uncertain) + count(.unknown)
        let preCommitted = count(.preCommitted)
        let preAborted = count(.preAborted)
        let commitAll = tell(.commit, where: { $0 != .committed })
        let abortAll = reachable.filter { states[$0.name]! != .aborted }
        let mine = states[config.name]!
        switch info.termination {
        case .classic:
            if preCommitted == 0 { return terminationAbort(txid, telling: abortAll) }
            if uncertain == 0 && preAborted == 0 { return commitAll + commitSelf(txid) }
            // `unknown` peers too: some branch is pre-committed, so every branch voted, and one
            // with no branch was a reader that restarted. It promises never to vote yes and
            // answers `read-only` from then on; left out, it stayed `unknown` (counted
            // uncertain) and the backup pre-committed for ever (found in session 28).
            var actions = tell(.preCommit, where: { $0 == .uncertain || $0 == .preAborted || $0 == .unknown })
            if mine != .preCommitted { actions += preRecordSelf(txid, commit: true) }
            return actions + [.setTimer(.termination(txid), afterMs: config.terminationRoundMs)]
        case .quorum:
            // N counts the branches that can hold a pre-state: a peer that answered read-only
            // wrote nothing and takes no part (with one writer and one reader, N = 2 left the
            // writer short of a quorum of 2 for ever after a coordinator crash). Quorums of
            // backups that did and did not hear a read-only answer still meet among the writers.
            let readOnlyPeers = b.roundStates.values.filter { $0 == .readOnly }.count
            let q = (info.peers.count - readOnlyPeers) / 2 + 1
            if preCommitted >= 1 && preCommitted + uncertain >= q {
                if preCommitted >= q { return commitAll + commitSelf(txid) }
                var actions = tell(.preCommit, where: { $0 == .uncertain || $0 == .unknown })
                if mine == .uncertain { actions += preRecordSelf(txid, commit: true) }
                return actions + [.setTimer(.termination(txid), afterMs: config.terminationRoundMs)]
            }
            if preAborted + uncertain >= q {
                if preAborted >= q { return terminationAbort(txid, telling: abortAll) }
                // A peer that answered `unknown` holds no branch, so it never takes a pre-state:
                // asked to pre-abort, it promises never to vote yes and answers `read-only` from
                // then on (leaving N), or, a writer that had not voted, it votes no and answers
                // `aborted`. Counted uncertain, it let a backup pre-abort writers toward a quorum
                // it could never complete: with a reader restarted, two writers and the
                // coordinator's pre-commit reaching the other writer, pre-aborted against
                // pre-committed with Q = 2 of the 2 writers, blocked for good with everyone up
                // (simulation `--protocol 3pc --seed 223`, session 38). So while the quorum
                // needs them, only they are asked; the writers wait for the next round.
                // They stay in N until they have left it (answered `read-only`): one that may
                // have voted yes and forgotten refuses the promise (409) and never leaves.
                // Reckoned out of N in advance (Q = ⌊(N − unknown)/2⌋+1), two pre-aborted
                // writers of three, with such a peer and a promising reader, faced a third
                // pre-committed by the coordinator: Q = 3 of the 4 left in N, blocked for good
                // (a review, session 38: QuorumUnknownPeerTests).
                let unknown = count(.unknown)
                if unknown > 0 && preAborted + count(.uncertain) < q {
                    return tell(.preAbort, where: { $0 == .unknown }) + [.setTimer(.termination(txid), afterMs: config.terminationRoundMs)]
                }
                var actions = tell(.preAbort, where: { $0 == .uncertain || $0 == .unknown })
                if mine == .uncertain { actions += preRecordSelf(txid, commit: false) }
                return actions + [.setTimer(.termination(txid), afterMs: config.terminationRoundMs)]
            }
            return [again] // no quorum on this side: block, try again later
        }
    }

    private mutating func preRecordSelf(_ txid: String, commit: Bool) -> [Action] {
        guard var b = branches[txid] else { return [] }
        b.state = commit ? .preCommitting : .preAborting
        branches[txid] = b
        return [.log(commit ? .preCommitted(txid) : .preAborted(txid), force: true)]
    }

    mutating func commitSelf(_ txid: String) -> [Action] {
        guard var b = branches[txid] else { return [] }
        // A refused commit record leaves the branch in its durable pre-state, as `commit` does:
        // back at `prepared`, a pre-committed branch reported uncertain and took a pre-abort.
        b.recordFrom = b.state
        b.state = .committing
        branches[txid] = b
        return [.cancelTimer(.termination(txid)), .cancelTimer(.inquire(txid)), .log(.committed(txid), force: true)]
    }

    /// An abort the coordinator decided (or presumed): its word is the outcome, so the record
    /// need not be forced.
    mutating func abortSelf(_ txid: String) -> [Action] {
        [.log(.aborted(txid), force: false)] + finish(txid, .aborted) + [.release(txid)]
    }

    /// An abort this branch decided as backup: forced first, and only once durable are the
    /// locks released and the peers told (`terminationAbortDurable`).
    mutating func terminationAbort(_ txid: String, telling peers: [ParticipantRef]) -> [Action] {
        guard var b = branches[txid] else { return [] }
        b.abortingFrom = b.state
        b.abortPeers = peers
        b.state = .aborting
        branches[txid] = b
        return [.cancelTimer(.termination(txid)), .cancelTimer(.terminationRound(txid)), .log(.aborted(txid), force: true)]
    }

    /// The promise not to vote yes on `txid` is durable: answer the pre-aborts that wait for it.
    mutating func noVotePromiseDurable(_ txid: String) -> [Action] {
        let waiting = promiseWaiting.removeValue(forKey: txid) ?? []
        rememberPromise(txid)
        return waiting.map { .reply($0, .preAborted) }
    }

    /// A durable promise never to vote yes on `txid`: an aborted outcome (a prepare votes no)
    /// that answers `read-only` to a state query.
    private mutating func rememberPromise(_ txid: String) {
        rememberFinished(txid, .aborted)
        promisedNoVote.insert(txid)
    }

    /// Why no other promise may start now (`Limits.noVotePromisesWritingMax` are being
    /// written: a checkpoint carries them all, and its reader takes no more), nil when one may.
    private func promisesFull() -> RequestError? {
        guard promiseWaiting.count >= Limits.noVotePromisesWritingMax else { return nil }
        return RequestError(503, "\(promiseWaiting.count) promises not to vote yes are being written here (limit \(Limits.noVotePromisesWritingMax)); retry")
    }

    /// Starts writing the promise for `txid`; `waiting` are the pre-aborts answered once it is
    /// durable.
    private mutating func startPromise(_ txid: String, waiting: [RequestID]) -> Action {
        promiseWaiting[txid] = waiting
        return .log(.noVotePromised(txid), force: true)
    }

    mutating func terminationAbortDurable(_ txid: String) -> [Action] {
        guard let b = branches[txid], b.state == .aborting else { return [] }
        return b.abortPeers.map { .sendToPeer(txid, peer: $0, message: .abort) } + finish(txid, .aborted) + [.release(txid)]
            + Self.answerAborted(txid, b.waiting, wasPreCommitting: b.abortingFrom == .preCommitting)
    }
}

extension Participant.BranchState {
    /// States that keep asking the coordinator for its outcome.
    var asksCoordinator: Bool { self == .prepared || self == .heuristicCommitted || self == .heuristicAborted }
}

public enum ParticipantRecordCoding {
    public static let preparedType: UInt8 = 1
    public static let committedType: UInt8 = 2
    public static let committedOnePhaseType: UInt8 = 3
    public static let abortedType: UInt8 = 4
    public static let heuristicType: UInt8 = 5
    public static let heuristicResolvedType: UInt8 = 6
    public static let preCommittedType: UInt8 = 7
    public static let preAbortedType: UInt8 = 8
    public static let heuristicForgottenType: UInt8 = 9
    public static let noVotePromisedType: UInt8 = 10

    public static func encode(_ record: Participant.Record) -> (type: UInt8, payload: [UInt8]) {
        var w = ByteWriter()
        switch record {
        case .prepared(let txid, let url, let writeSet, let threePhase):
            w.string(txid)
            w.string(url)
            w.blob(writeSet)
            if let info = threePhase { Participant.encodeThreePhase(&w, info) }
            return (preparedType, w.bytes)
        case .preCommitted(let txid):
            w.string(txid)
            return (preCommittedType, w.bytes)
        case .preAborted(let txid):
            w.string(txid)
            return (preAbortedType, w.bytes)
        case .committed(let txid):
            w.string(txid)
            return (committedType, w.bytes)
        case .committedOnePhase(let txid, let writeSet):
            w.string(txid)
            w.blob(writeSet)
            return (committedOnePhaseType, w.bytes)
        case .aborted(let txid):
            w.string(txid)
            return (abortedType, w.bytes)
        case .heuristic(let txid, let outcome, let reason, let operatorName, let atMs, let keys, let keysTotal):
            w.string(txid)
            w.bool(outcome == .committed)
            w.string(reason)
            w.string(operatorName)
            w.i64(atMs)
            // Trailing: versions before session 26 read no further, and their records end here.
            if keysTotal > 0 { Participant.encodeReleasedKeys(&w, keys, total: keysTotal) }
            return (heuristicType, w.bytes)
        case .heuristicResolved(let txid, let coordinatorOutcome, let mixed):
            w.string(txid)
            w.bool(coordinatorOutcome == .committed)
            w.bool(mixed)
            return (heuristicResolvedType, w.bytes)
        case .heuristicForgotten(let txid, let reason, let operatorName, let atMs):
            w.string(txid)
            w.string(reason)
            w.string(operatorName)
            w.i64(atMs)
            return (heuristicForgottenType, w.bytes)
        case .noVotePromised(let txid):
            w.string(txid)
            return (noVotePromisedType, w.bytes)
        }
    }

    public static func decode(type: UInt8, payload: [UInt8]) throws -> Participant.Record {
        var r = ByteReader(payload)
        let txid = try r.string(maxCount: 128)
        switch type {
        case preparedType:
            let url = try r.string(maxCount: 4096)
            let writeSet = try r.blob()
            return .prepared(txid, coordinatorURL: url, writeSet: writeSet, threePhase: r.isAtEnd ? nil : try Participant.decodeThreePhase(&r))
        case preCommittedType: return .preCommitted(txid)
        case preAbortedType: return .preAborted(txid)
        case committedType: return .committed(txid)
        case committedOnePhaseType: return .committedOnePhase(txid, writeSet: try r.blob())
        case abortedType: return .aborted(txid)
        case heuristicType:
            let outcome: Outcome = try r.bool() ? .committed : .aborted
            let reason = try r.string(maxCount: 4096)
            let operatorName = try r.string(maxCount: 4096)
            let atMs = try r.i64()
            let released = r.isAtEnd ? (keys: [], total: 0) : try Participant.decodeReleasedKeys(&r)
            return .heuristic(txid, outcome: outcome, reason: reason, operatorName: operatorName, atMs: atMs,
                              releasedKeys: released.keys, releasedKeysTotal: released.total)
        case heuristicResolvedType:
            return .heuristicResolved(txid, coordinatorOutcome: try r.bool() ? .committed : .aborted, mixed: try r.bool())
        case heuristicForgottenType:
            return .heuristicForgotten(txid, reason: try r.string(maxCount: 4096), operatorName: try r.string(maxCount: 4096), atMs: try r.i64())
        case noVotePromisedType: return .noVotePromised(txid)
        default: throw DecodeError("unknown participant record type \(type)")
        }
    }
}
