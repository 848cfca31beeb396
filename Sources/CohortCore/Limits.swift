/// Every limit Cohort enforces, in one place. Past a limit the answer is a clear error
/// (HTTP 413/429/503 with a reason, or a typed error), never unbounded growth.
/// Units are the last word of each name.
public enum Limits {
    // MARK: durable log
    /// Largest payload of one log record. A prepared record carries a write set, so this bounds it.
    public static let recordBytesMax = 1 << 20
    /// A segment is closed and a new one started once it grows past this.
    public static let segmentBytesMax = 64 << 20
    /// A segment file is extended with zeros this far ahead of its last record, so that most
    /// syncs find the file's size unchanged: fdatasync then writes only the data, not the inode
    /// too (ext4, with a journal or without one as on the development machine: 0.150 ms →
    /// 0.105 ms per sync measured there), as PostgreSQL zero-fills its WAL segments. One sync in
    /// this many bytes pays for the extension.
    public static let logPreallocateBytes = 256 << 10
    /// Every write that lengthens a log file ends it at a multiple of this (the zeros written
    /// ahead are rounded up to it). A crash cannot leave another length: a write cut short by
    /// kill -9 stops at a page boundary (the kernel copies a write a page at a time), and after
    /// a power loss a file's size on disk is one a write set or the end of the pages written
    /// back. So a last segment of another length whose records run to its end was cut by
    /// something else, and recovery refuses it rather than lose acknowledged records silently.
    public static let logFileAlignmentBytes = 4096
    /// Copies of torn tails recovery keeps in the log folder (`NAME.torn-OFFSET`); past this a
    /// cut tail is reported but not copied, so crash after crash cannot fill the disk.
    public static let tornTailCopiesMax = 16
    /// Appended-but-unsynced bytes allowed before `append` refuses (back-pressure on the writer).
    public static let unsyncedBytesMax = 32 << 20
    /// Unforced records are written and synced at the latest this long after they were appended.
    public static let lazySyncDelayMs: Int64 = 50
    /// A record someone waits on, but not a client (an interactive branch's commit record: the
    /// coordinator's acknowledgement and the branch's locks wait on it, the client's answer does
    /// not), waits at most this long for a forced record's sync to ride with before it syncs
    /// alone. Under load prepares arrive well within it, so commit records stop costing syncs
    /// of their own. 200 and 500 µs kept most of them syncing alone at 8 clients
    /// (docs/benchmarks.md, round 5). An agent's `--commit-ride-us` sets it per process: with
    /// 3-7 transactions in flight per agent, 700-800 µs gave 8-20% more than 1 ms and 8 clients
    /// 2-6% less (round 8).
    public static let soonSyncDelayUs: Int64 = 1_000
    /// The most `--commit-ride-us` accepts: beyond it a commit's locks are held for nothing.
    public static let soonSyncDelayUsMax: Int64 = 10_000
    /// Group commit under load: when the previous sync round covered at least
    /// `groupCommitSiblingsMin` forced records, a forced record waits up to this long for others
    /// to share its sync (PostgreSQL's commit_delay with commit_siblings). A lone writer never
    /// waits.
    public static let groupCommitWaitUsMax: Int64 = 2_000
    /// 9 since round 7 (6 since round 4, 4 before): 8 committing clients give the coordinator
    /// rounds of up to 8 decisions, and at 6 each such round waited for a quiet spell (about
    /// 250 µs) that gathered the next, a convoy that cost 8 clients 9-17% of their throughput.
    /// At 64 clients rounds stay far above 9, and every process stayed at 0.14-0.17 syncs per
    /// commit (the aim is 0.2). Round 4 measured 8 at 0.25 there, before the agents' commit
    /// records rode with prepares (round 5) and doubled the agents' rounds.
    public static let groupCommitSiblingsMin = 9
    /// ... and the wait ends as soon as this many forced records are pending,
    public static let groupCommitRecordsTarget = 16
    /// ... or, unless the previous round reached that target, after a quiet spell with no new
    /// forced record, as long as the log's recent syncs took, within these bounds. While records
    /// arrive closer together than a sync takes, waiting for the next costs less than the sync
    /// it saves; with a few writers every one that could join is already waiting on this very
    /// sync. A fixed 700 µs (sessions 2-3) made 8 clients wait the full 2 ms at every sync on a
    /// machine whose fdatasync takes 0.15 ms (docs/benchmarks.md, round 4).
    public static let groupCommitQuietUsMin: Int64 = 50
    public static let groupCommitQuietUsMax: Int64 = 700
    /// Checkpoint once the live segments hold more than this many bytes.
    public static let checkpointAfterBytes = 32 << 20
    /// The coordinator also checkpoints this often when anything was logged since, or a TCC
    /// branch settled (which is not logged): a quiet
    /// coordinator otherwise keeps, for days, a log whose records say less than its state (a
    /// TCC branch confirmed long ago is confirmed again after a restart, and a service that
    /// purged its barrier rows since answers 409 for good). Well inside
    /// `tccBarrierRetentionMsMin` (`cohortd --checkpoint-interval`, 1 s to this bound).
    public static let checkpointIntervalMs: Int64 = 10 * 60_000
    /// An agent whose store was busy at a checkpoint (a reader of a shared SQLite file held
    /// its checkpoint back) tries again after this, not at every sync.
    public static let checkpointBusyRetryMs: Int64 = 1_000
    /// A checkpoint whose snapshot came out larger than `snapshotBytesMax` is not written, and
    /// tried again after this. The log keeps its records (nothing is lost; it only grows) and
    /// the process goes on: a fatal error here stopped an agent at the first sync of every
    /// start, since the same in-doubt branches came back each time (a review).
    public static let checkpointTooLargeRetryMs: Int64 = 60_000
    /// Largest checkpoint snapshot (the log's type-0 record). A snapshot holds every open
    /// transaction, so it may be far larger than one record; it is written rarely.
    public static let snapshotBytesMax = 256 << 20
    /// The largest a segment file can be; recovery and `txctl log` refuse a bigger one unread,
    /// as damage (a sparse 2 GiB file was read whole into memory: 2.1 GB at start, 4.2 GB in
    /// txctl). Not `segmentBytesMax`: a round that finds its segment below that appends all it
    /// took, which is at most `unsyncedBytesMax` plus the aborts taken past back-pressure (one
    /// per branch, `branchesMax` of `outcomeRecordBytesMax` and a 17-byte record header); a
    /// segment that begins with a checkpoint holds the whole snapshot (`snapshotBytesMax` and
    /// its header) and what was appended behind it in the same round; and zeros are written
    /// ahead of the last record (`logPreallocateBytes`). 32 bytes of segment header on top.
    /// `DurableLogConfig` takes no value above these limits, so no log it writes exceeds this.
    public static let segmentFileBytesMax = 32 + max(segmentBytesMax, 17 + snapshotBytesMax) + unsyncedBytesMax
        + branchesMax * (17 + outcomeRecordBytesMax) + logPreallocateBytes + logFileAlignmentBytes

    // MARK: command lines
    /// The longest duration any flag or scenario field accepts (about ten years). Durations are
    /// added to clock readings (`nowMs + retryDelayMs`); past this a sum could overflow and stop
    /// the process, and no timeout, retention or retry delay needs more.
    public static let durationMsMax: Int64 = 3_650 * 86_400_000
    /// The longest duration a scenario file may give a step, a wait or a run: scenarios run in
    /// one sitting, so a day is already a typo (`"99999h"` must not validate and then hang).
    public static let scenarioDurationMsMax: Int64 = 86_400_000
    /// A scenario workload given as a count (not a duration) is stopped after this, and the
    /// outbox producer must finish within it: the window a scenario's faults start in.
    public static let scenarioCountedWorkloadMsMax: Int64 = 60_000
    /// How far a fault's effects (a pause, a partition, a restart delay, the last random kill)
    /// may reach past the end of the workload. The runner waits for every fault to end before
    /// it checks, so `"pause": {"duration": "24h"}` after a 3 s workload validated and then
    /// hung the run; the longest in Scenarios/ reaches 5 s past.
    public static let scenarioFaultOverrunMsMax: Int64 = 60_000

    // MARK: HTTP
    /// Longest chunk-size line of a chunked body (size, extensions): past it the request is 400.
    public static let httpChunkSizeLineBytesMax = 1024
    public static let httpHeaderBytesMax = 16 << 10
    /// Longest bearer token a program accepts (`--token-file`, `COHORT_TOKEN`): it is sent in
    /// every request's header section, which must also hold the request line and the other
    /// headers within `httpHeaderBytesMax`. Long signed tokens (JWTs) stay well under it.
    public static let bearerTokenBytesMax = 4096
    public static let httpHeaderCountMax = 64
    public static let httpBodyBytesMax = 1 << 20
    public static let httpConnectionsMax = 1024
    /// Connections the kernel queues for `accept` (listen(2)'s backlog).
    public static let httpListenBacklog: Int32 = 1024
    /// Connections accepted per wake-up, so a storm of them cannot starve established ones.
    public static let httpAcceptsPerWakeMax = 64
    /// At the connection limit, idle-looking connections whose next request already waits
    /// unread are passed over for eviction; after this many the server refuses the new one
    /// instead of looking further (each look is a system call).
    public static let httpEvictionPeeksMax = 16
    /// Out of file descriptors: stop accepting this long instead of spinning.
    public static let httpAcceptPauseMs: Int64 = 100
    /// After the response that ends a connection: read and discard this long before closing,
    /// so unread input does not make the kernel reset the response away.
    public static let httpLingerMs: Int64 = 1_000
    /// Significant hex digits of a chunk size (leading zeros aside): 8 is 4 GiB, past any body.
    public static let httpChunkSizeHexDigitsMax = 8
    /// A request must arrive completely within this time once its first byte did.
    public static let httpRequestTimeoutMs: Int64 = 10_000
    /// At the connection limit with no idle connection to close, one whose request has been
    /// arriving this long is closed to admit the new one. Cohort's clients write a request
    /// at once; a second is a link far slower than any it is deployed on.
    public static let httpSlowRequestEvictableMs: Int64 = 1_000
    /// An idle keep-alive connection is closed after this.
    public static let httpIdleTimeoutMs: Int64 = 60_000
    /// A new connection that has sent nothing this long after it was accepted is closed. Every
    /// client Cohort has writes its request as soon as it connects; a connection that stays
    /// silent only holds one of `httpConnectionsMax` (1,100 silent connections locked every
    /// client out for the whole idle timeout).
    public static let httpFirstByteTimeoutMs: Int64 = 5_000
    public static let httpClientConnectTimeoutMs: Int64 = 2_000
    public static let httpClientRequestTimeoutMs: Int64 = 5_000
    /// The blocking client's (txctl, tests, txbench) default request timeout: operator calls
    /// may wait on a server's own retries.
    public static let blockingClientRequestTimeoutMs: Int64 = 10_000
    /// Idle pooled connections kept per destination.
    public static let httpClientPoolPerHostMax = 128
    /// Requests queued at the client waiting for a connection, per destination.
    public static let httpClientQueueMax = 4096
    /// A submitted transaction is refused (503) while this many messages to one of its
    /// participants are unanswered: admitted, its prepare would fail on the full queue
    /// (`httpClientQueueMax`) and it would abort,
    /// which a client cannot tell from a business "no". Half the queue, so the commits and
    /// aborts of transactions already admitted still find room.
    public static let submitRefusedAtQueuedMessages = httpClientQueueMax / 2
    /// A host name's address is looked up again this long after the last lookup (the old one
    /// serves meanwhile), and at once after a connection to it fails.
    public static let httpClientAddressTTLMs: Int64 = 30_000
    /// A failed lookup answers requests to that name at once for this long.
    public static let httpClientLookupFailureTTLMs: Int64 = 1_000
    /// Name lookups (getaddrinfo, which blocks and has no timeout of its own) running at once
    /// for a process's clients; more wait their turn. One at a time let a name whose DNS never
    /// answers hold up the lookup of every other name.
    public static let httpClientLookupsConcurrentMax = 8
    /// Destinations (host and port) a client keeps state for; past it, those with no
    /// connection and nothing waiting are forgotten (URLs come from clients: TCC branches,
    /// reply addresses).
    public static let httpClientPoolsMax = 4_096
    public static let httpResponseBytesMax = 4 << 20
    /// Protocol messages in one `POST /v1/batch`.
    public static let batchMessagesMax = 256
    /// A `POST /v1/batch` body the sender builds is at most this many bytes (`BatchBytes`). Each
    /// message's JSON is escaped again inside the batch (every quote gains a backslash), so 256
    /// prepares of 4.5 KB, or a submitted prepare of 600 KB and any other, pass
    /// `httpBodyBytesMax`, and the receiver refuses the whole batch with 413. A message that
    /// cannot share a batch within this goes alone, as a plain request. The count is exact; the
    /// margin (as for `outboxBatchBytesMax`) keeps a few bytes the count might one day miss from
    /// costing more than a smaller batch.
    public static let batchBodyBytesMax = httpBodyBytesMax - (16 << 10)
    /// Arrays and objects nested deeper than this in a wire body are refused (the hand-written
    /// JSON reader recurses once per level).
    public static let jsonNestingDepthMax = 64
    /// Batch exchanges open per peer at once; more messages wait and go as one batch. Each
    /// exchange lasts a whole sync at the peer (a prepare's answer waits for its record). 16
    /// and 64 were tried in session 3: no faster at 8 clients once submitted work stopped
    /// deadlocking (wait-die), and 16 let 64 clients reach 0.27 syncs per commit per process,
    /// over the 0.2 aim (docs/benchmarks.md, round 3). 2 took 64 clients from 0.18-0.21 to
    /// 0.14-0.17 syncs per commit at the agents, but only until a sync round took a whole pass
    /// of the event loop (`DurableLog.holdWakes`): with that, 4 and 2 both give 0.06-0.09, and 4
    /// gives 4-6 clients 2-5% and 8 clients 5% more commits (round 17).
    public static let batchExchangesInFlightPerPeer = 4
    /// A branch registration waits this long for the coordinator (a client's work request
    /// waits on it).
    public static let registrationTimeoutMs: Int64 = 1_000
    /// Participant URLs remembered as serving `/v1/batch`.
    public static let batchCapablePeersMax = 4096
    /// Requests read ahead on one connection whose responses are still owed; past this the
    /// server stops reading that connection until responses drain (pipelining back-pressure).
    public static let httpPipelinedRequestsMax = 64
    /// Encoded responses a connection may hold unsent (its peer is not reading); past this the
    /// server stops reading that connection until they drain, and the idle timeout closes it if
    /// they never do.
    public static let httpUnsentResponseBytesMax = 4 << 20
    /// Encoded responses a server holds unread over all its connections; past this only
    /// connections that hold none are read, so peers that never read cannot take the server's
    /// memory 4 MiB at a time (1,024 of them: 4 GiB).
    public static let httpHeldResponseBytesMax = 64 << 20
    /// An error answer's message is clipped to this many bytes (`HTTPResponse.error`).
    public static let httpErrorMessageBytesMax = 1_024
    /// `Retry-After` (seconds) on every 503 and 429 a server sends (overload, the demo's
    /// coordinator unavailable, a full outbox backlog) unless its handler set one: about how
    /// long a restarted coordinator or a drained queue takes, short enough not to idle a client.
    public static let httpRetryAfterSeconds = 1
    /// Empty lines tolerated before a message (RFC 9112 §2.2 asks for at least one CRLF);
    /// more is an error, so a trickle of CRLFs cannot keep a connection open forever.
    public static let httpBlankBytesBeforeMessageMax = 8
    /// Connections refused with 503 that are still draining before close, server-wide.
    /// A new connection is refused only when all `httpConnectionsMax` have a request in
    /// progress or an answer owed: otherwise the longest-idle one is closed to admit it.
    public static let httpRejectedConnectionsMax = 64

    // MARK: coordinator
    /// The longest txid (`TxID`): 8 hex digits, then two groups of 1-16, each after a '-'.
    /// txctl refuses a longer argument itself: sent, it only made the request's head too large.
    public static let txidBytesMax = 42
    /// Heuristic-mixed transactions kept whole (branches, timeline) after the finished ones
    /// let go of them, for the operator's list and explanation; past this the oldest is known
    /// from the ledger of outcomes only. Each waits for a repair by hand, so a few hundred is
    /// already an incident; about 5 KB each.
    public static let heuristicMixedKept = 1_000
    /// Heuristic decisions an agent keeps after an operator forgot their branches, so that a
    /// coordinator that comes back after all still hears the difference (Participant,
    /// `forgottenHeuristics`). Each is an operator's action, so this is far above any real count.
    public static let forgottenHeuristicsKept = 10_000
    /// Transactions begun but not yet finished; past this `POST /v1/transactions` answers 503.
    public static let openTransactionsMax = 10_000
    /// Committed transactions waiting for participants' acknowledgements; past this new
    /// transactions get 503 naming the cause. Apart from `openTransactionsMax` so that one
    /// participant that stops acknowledging does not use up admission for everyone before its
    /// transactions park (at 3,000 commits a second, 10,000 take 3 s). About 5 KB each.
    public static let committingTransactionsMax = 50_000
    /// The work of submitted transactions (`POST /v1/transactions/submit`) the coordinator holds
    /// until each branch votes (it travels with the prepare, and a prepare may be sent again),
    /// counted as a node per JSON value and the bytes of its strings (`Coordinator.heldBytes`).
    /// Past it a submission is answered 503 and nothing starts; the bytes go as branches vote
    /// and transactions end. `openTransactionsMax` submissions of up to `httpBodyBytesMax` each
    /// were over 10 GiB; like the agent's `agentStagedBytesMax`.
    public static let coordinatorSubmittedWorkBytesMax = 256 << 20
    /// The most `cohortd --submitted-work-bytes-max` takes (64 GiB): a guard against a typo
    /// that would let submissions take all of memory before anything says no.
    public static let coordinatorSubmittedWorkBytesFlagMax = 64 << 30
    /// `GET /v1/transactions` answers this many when no `limit` is given.
    public static let transactionsListedDefault = 1_000
    /// `GET /v1/transactions` stops adding transactions past this much answer, and says
    /// `"truncated": true`: under `httpResponseBytesMax`, what clients (txctl) read.
    public static let transactionsListedBytesMax = 2 << 20
    /// A TCC branch registration's body: its payload plus this much for the other fields.
    public static let tccRegistrationFieldsBytesMax = 4096
    public static let branchesPerTransactionMax = 64
    public static let transactionTimeoutMsDefault: Int64 = 10_000
    public static let transactionTimeoutMsMax: Int64 = 600_000
    /// Second-phase delivery backoff: exponential from min to max, with jitter.
    public static let retryDelayMsMin: Int64 = 50
    public static let retryDelayMsMax: Int64 = 5_000
    /// Retry budget of a transaction's pending phase: past this many attempts on one branch, or
    /// this long since the decision, the transaction is `parked` (still retried, slowly) and
    /// shows up for an operator (`txctl list --state parked`, `cohort_parked`).
    public static let retryBudgetAttempts = 10
    public static let retryBudgetMs: Int64 = 60_000
    public static let parkedRetryDelayMs: Int64 = 30_000
    /// The least `cohortd --retry-budget` and `--parked-retry-delay` accept. A parked
    /// transaction is re-sent every parked delay with no backoff, so 0 (accepted once) made a
    /// hot loop of about 900 commits a second for one transaction whose participant was down;
    /// a budget shorter than the first backoff steps parks every transaction at its first
    /// failed delivery, and `parked` no longer singles out the stuck ones.
    public static let retryBudgetMsMin: Int64 = 1_000
    public static let parkedRetryDelayMsMin: Int64 = 1_000
    /// TCC: a service whose calls all failed for at least this long and then answers one is
    /// back. Its branches waiting on a retry timer (backing off up to `retryDelayMsMax`, or
    /// parked for `parkedRetryDelayMs`: reservations held half a minute after the service
    /// returned) are called again at once instead, `tccWokenAtRecoveryMax` at first and one more
    /// per answer after (a refusal such as a poison branch's 500 included; until a call gets
    /// no answer, or a 429 or 502-504), so a service just back is not hit by every waiting
    /// branch at once.
    /// A shorter spell of failures among answers wakes nothing: a branch its service keeps
    /// refusing would otherwise be called again after every other branch's answer. Nor is a
    /// branch its service refused when woken (an HTTP error status) woken again before its own
    /// retry timer re-sent it (at a quiet service every answer ends a spell its failure began).
    public static let tccServiceDownMsMin: Int64 = 1_000
    public static let tccWokenAtRecoveryMax = 32
    /// 3PC: the coordinator's wait for pre-commit acknowledgements.
    public static let preCommitTimeoutMs: Int64 = 2_000
    /// 3PC: a coordinator without authority asks participants for the outcome this often.
    public static let learnIntervalMs: Int64 = 1_000
    /// 3PC: a participant with no word from its coordinator for this long starts the
    /// termination protocol, and repeats a round this often while undecided.
    public static let terminationTimeoutMs: Int64 = 2_000
    /// 3PC: how long a termination round waits for peers' states.
    public static let terminationRoundMs: Int64 = 500
    /// Attempts (time, error) remembered per branch for `txctl explain`.
    public static let attemptHistoryKept = 10
    /// Audit entries (operator decisions) kept per transaction.
    public static let auditEntriesPerTransactionMax = 16
    /// Repeated requests that may wait together for one transaction's outcome at the
    /// coordinator (a client's commit retried after its own timeout), or for one branch's record
    /// at an agent (the coordinator re-sending while a sync hangs). Each holds a connection
    /// until answered; past this the repeat is answered 503 at once, so a stuck transaction
    /// cannot collect connections until the server has none left.
    public static let waitersPerTransactionMax = 16
    /// A connection whose client closed its side while answers are still owed is kept this
    /// long for them (a client that half-closes after its request), then closed: most such
    /// clients gave up on a request that may wait for long (a one-branch commit to a stuck
    /// agent), and each would hold a connection until the answer came.
    public static let httpPeerClosedAnswerWaitMs: Int64 = 2_000
    /// Outcomes an operator forced, remembered (durably) so participants asking later hear them.
    public static let operatorOutcomesKept = 100_000
    /// Bytes of forced transactions' audit entries (operator, time, reason, what the force did,
    /// branches it took over) a coordinator keeps with those outcomes, in memory and in every
    /// checkpoint (`OperatorAudits`), and that the TCC part of a checkpoint holds of its kept
    /// transactions' entries. A typical force takes ~300 bytes, so all 100,000 kept outcomes
    /// keep theirs in ~30 MB; a force of 64 long-named branches with a reason of
    /// `reasonBytesMax` takes ~20 KB (its effects and its branch list name each branch), and
    /// 100,000 of them would hold ~2 GB and make a checkpoint past `snapshotBytesMax`, which
    /// cannot be written. Past it the oldest forced transactions' entries go (their outcome
    /// stays).
    public static let operatorAuditsKeptBytesMax = 32 << 20
    public static let reasonBytesMax = 1024
    /// The latest wall-clock time a participant's heuristic report may name (`forced_at_ms`):
    /// 9999-12-31T23:59:59.999Z, the last one `TimeFormat.iso8601` prints in four digits.
    public static let wallClockMsMax: Int64 = 253_402_300_799_999
    /// Tries a participant makes to tell the coordinator about a heuristic-mixed outcome.
    public static let heuristicReportAttemptsMax = 5
    /// After those tries fail, a heuristic-mixed branch's report starts another series this often
    /// while the coordinator has not acknowledged one (and again at each start).
    public static let heuristicReportRetryIntervalMs: Int64 = 60_000
    /// The widest clock-skew margin a TCC resource takes (`TCCResource.Options.clockSkewMarginMs`).
    public static let tccClockSkewMarginMsMax: Int64 = 24 * 3_600_000
    /// Participants (by name) whose last acknowledged commit the coordinator keeps, to tell
    /// each at registration and in the prepare of a branch not told so (`last_acknowledged_commit`): a participant
    /// that neither knows that txid nor let it go runs on data older than what it acknowledged
    /// (its directory restored from a backup) and refuses new work. Past it a new name is not
    /// tracked, which only leaves that participant unchecked.
    public static let acknowledgedCommitParticipantsMax = 10_000
    /// Finished transactions remembered for `GET /v1/transactions/{txid}` and listing.
    public static let finishedTransactionsKept = 10_000
    /// What the coordinator's finished transactions may hold in memory in all
    /// (`Coordinator.Transaction.finishedKeptBytes`): a two-branch transfer holds about 2 KB, so
    /// 100,000 of them fit; past it (transactions of many branches with long errors and
    /// histories) the oldest go before `finishedTransactionsKept`, as the TCC coordinator's do
    /// (`tccFinishedKeptBytesMax`). A transaction let go keeps its outcome in the ledger.
    public static let finishedTransactionsKeptBytesMax = 256 << 20
    /// The most `cohortd --finished-kept` takes: each is a whole transaction (branches,
    /// timeline), a few KB.
    public static let finishedTransactionsKeptMax = 100_000
    /// request_ids of committed submissions remembered after their transactions are forgotten
    /// (`CommittedSubmissions`), so a resend is answered "committed" rather than run again: at
    /// 3,000 submissions a second about 33 s, at 100 a second 17 minutes. About 120 bytes each
    /// in memory (all taken at the first), 28 and the request_id in a checkpoint
    /// (`cohortd --submissions-kept`, up to the max).
    public static let committedSubmissionsKept = 100_000
    public static let committedSubmissionsKeptMax = 1_000_000
    /// Outcomes of forgotten transactions kept (`OutcomeLedger`, 4 bits each, so 2 MiB in
    /// memory and in every checkpoint): exact answers to a late `GET` or resent commit for
    /// about 23 minutes at 3,000 transactions a second (`cohortd --outcomes-kept`, up to the
    /// max, 16 MiB).
    public static let forgottenOutcomesKept = 1 << 22
    public static let forgottenOutcomesKeptMax = 1 << 25
    /// Consecutive txids per ledger page (8 KiB); the unit in which the ledger lets go.
    public static let forgottenOutcomesPerPage = 1 << 14
    /// Txids one forced one-phase window record covers (OnePhaseWindows): one record per this
    /// many transactions, and after a restart at most this many unknown txids of the epoch
    /// before read 410 rather than 404.
    public static let onePhaseWindowSequences: UInt64 = 65_536
    /// One-phase windows kept (in checkpoints too); past it the oldest two merge.
    public static let onePhaseWindowsKept = 256
    /// Timeline events kept per transaction.
    public static let eventsPerTransactionMax = 64
    public static let participantNameBytesMax = 128
    public static let participantURLBytesMax = 512
    public static let incarnationBytesMax = 128
    /// The largest record a log takes past its back-pressure limit (`DurableLog.append`,
    /// `pastBackPressure`): a participant's abort record (a txid and framing).
    public static let outcomeRecordBytesMax = 512

    // MARK: participant
    /// Branches (open or in doubt) one participant holds at once; past this work answers 503.
    public static let branchesMax = 10_000
    /// An unprepared branch is aborted locally this long after its transaction's timeout (it
    /// never voted, so deciding alone is safe; by then the coordinator has aborted it too).
    public static let branchExpiryMarginMs: Int64 = 1_000
    /// A prepared branch asks the coordinator for the outcome after this long without one,
    /// then keeps asking with backoff up to `retryDelayMsMax`.
    public static let inquiryDelayMs: Int64 = 1_000
    /// The longest wait between two inquiries of an in-doubt branch.
    public static let inquiryDelayMsMax: Int64 = 1_000
    /// The longest wait between two inquiries of an in-doubt branch while its coordinator
    /// cannot be reached; the first answer from it sends the others back to asking at once.
    public static let inquiryUnreachableDelayMsMax: Int64 = 5_000
    /// The wait (jittered down to half) between the failed inquiries of the one branch per
    /// unreachable coordinator that keeps asking often (its probe), so the coordinator's return
    /// is noticed within about this long rather than `inquiryUnreachableDelayMsMax`.
    public static let inquiryProbeDelayMs: Int64 = 1_000
    /// Outcomes of finished branches remembered to answer duplicates and refuse late prepares.
    public static let finishedBranchesKept = 100_000
    /// Coordinators whose highest let-go txid a participant keeps (3PC: it promises not to
    /// vote yes only above it); past it, it makes no promise at all.
    public static let forgottenHorizonCoordinatorsMax = 4_096
    /// 3PC txids a participant was asked about by a peer's termination protocol before it had
    /// a branch for them (its prepare not yet arrived): a prepare for one then votes no. The
    /// newest this many are kept (in memory: about 1 MB).
    public static let threePhaseFencesKept = 10_000
    /// Of those, the most recent kept across a participant's checkpoint (a few hundred KB).
    public static let finishedOutcomesInSnapshotMax = 10_000
    /// Promises never to vote yes (3PC, a backup's pre-abort for a txid with no branch here)
    /// whose records are being written at once; past this a pre-abort that would start another
    /// is answered 503 (the backup sends it again). A checkpoint carries them beside the
    /// `finishedOutcomesInSnapshotMax` promises kept, and its reader takes no more than both:
    /// unbounded, a checkpoint taken while 10,000 promises were kept and one was being written
    /// could not be read back (a review, session 28).
    public static let noVotePromisesWritingMax = 10_000
    /// Keys named per branch in a participant's branch list (`GET /v1/branches`) and in a
    /// force's answer; `keys_total` gives the count. Enough for an operator to see what an
    /// in-doubt branch blocks; the branch's own view names more.
    public static let branchKeysListedMax = 8
    /// Keys named in one branch's view (`GET /v1/branches/{txid}`).
    public static let branchKeysShownMax = 256
    /// Bytes of released key names an agent checkpoint holds (the forced and heuristic-mixed
    /// branches' lists); past it a list keeps its count, not its names. 256 names of 256 bytes
    /// for each of 100,000 kept decisions would pass `snapshotBytesMax`, and a checkpoint that
    /// cannot be written stops the agent at every start.
    public static let releasedKeysInSnapshotBytesMax = 16 << 20
    /// Bytes of who-forced-it audits (operator, reason) a coordinator checkpoint holds; past it
    /// an audit keeps its operator and time but not its reason (for the same reason as above:
    /// heuristic reports need no token when none is configured).
    public static let heuristicForcesInSnapshotBytesMax = 16 << 20
    /// Key names one branch list carries in all: past it the rest of its branches give only
    /// `keys_total`, so 10,000 in-doubt branches of 256-byte keys still fit a client's
    /// `httpResponseBytesMax` with the list itself.
    public static let branchKeysListedBytesMax = 1 << 20
    public static let lockWaitTimeoutMs: Int64 = 2_000
    /// Lock wait for a submitted transaction's work, staged as its prepare arrives. Its
    /// branches are staged at every participant at once, not one after another as a client
    /// does, so two transfers could each hold a lock the other waits for at another
    /// participant. Submitted work waits only for younger holders (wait-die, see
    /// `KVResource.stage`), which forms no cycle; this bound covers waits behind interactive
    /// transactions, which do not follow wait-die.
    public static let submittedLockWaitMs: Int64 = 50
    /// Waiters queued on one key.
    public static let lockWaitersPerKeyMax = 256
    public static let opsPerWorkMax = 256
    /// Idempotency keys (`request_id`) of work requests remembered per branch.
    public static let requestIDsPerBranchMax = 256
    public static let requestIDBytesMax = 128
    /// Ops one branch may stage over all its work calls, so a long transaction cannot grow a
    /// branch without bound.
    public static let opsPerBranchMax = 4096
    /// The work all of an agent's branches hold staged (keys and values, before their vote),
    /// counted as `KVOp.stagedBytes`. Past it a work call is answered 503 and dooms nothing:
    /// each branch is held to its write-set limit (about 960 KiB) as it stages, but 10,000
    /// branches of that would be 9 GiB, and a black-box probe grew an agent to 1 GB with four.
    /// Half of `snapshotBytesMax`: an agent's checkpoint carries the write set of every
    /// prepared branch (branches restored in doubt at a start count too), with its txid,
    /// coordinator and 3PC peers beside it, and the other sections' own budgets; at the full
    /// snapshot size the checkpoint could not be written at all (a review).
    public static let agentStagedBytesMax = 128 << 20
    public static let keyBytesMax = 256
    public static let stringValueBytesMax = 64 << 10
    /// Keys and values one work call's gets return (each key once): past it the call fails
    /// with 400 and, as any failed call, dooms its branch. 256 gets of 64 KiB values answered
    /// 16 MiB, past what a client reads (`httpResponseBytesMax`); escaped as JSON, this much
    /// stays under it (as `scanBytesMax`).
    public static let workValuesBytesMax = scanBytesMax
    /// Answers an agent keeps for work calls that carried a `request_id` (a retry with it is
    /// answered the same, without staging again), until their branches end. Past it a call
    /// with a new request_id is answered 503 before anything is staged (the branch is not
    /// doomed); calls without one, and repeats of kept ones, still run. Before, up to 256
    /// answers per branch were kept, each up to 16 MiB of values read: gigabytes for one
    /// branch, outside `agentStagedBytesMax` (gets stage nothing). Counted as each answer's
    /// body; answers of calls admitted below the bound may pass it by their own size (at most
    /// about 3 MiB each, `workValuesBytesMax` escaped).
    public static let workAnswersKeptBytesMax = 64 << 20
    public static let scanItemsMax = 10_000
    /// Keys and values one `GET /v1/kv` answer carries (past its first item): escaped as JSON
    /// they stay under `httpResponseBytesMax`, the most a client reads.
    public static let scanBytesMax = 512 << 10
    /// Page size of a newly created agent store (SQLite ignores it for an existing file). Every
    /// page a commit changes is written to SQLite's WAL whole, and the WAL is synced and copied
    /// into the database at each automatic checkpoint (every 1,000 pages), on the agent's event
    /// loop. A transfer changes a few small rows, so at SQLite's default of 4 KiB most of each
    /// page written was unchanged bytes: checkpoints blocked the loop for up to 5-11 ms, every
    /// second or so at 8 clients. At 1 KiB they take about 2 ms (docs/benchmarks.md, round 6).
    public static let kvStorePageBytes = 1_024
    /// An apply of committed branches to the agent's store that takes longer than this counts
    /// in `cohort_store_apply_slow_total`: it held up everything else on the event loop.
    public static let storeApplySlowUs: UInt64 = 1_000
    /// A pass of a server's event loop busy for longer than this counts in
    /// `cohort_event_loop_stalls_total`: every request of the process waited meanwhile.
    public static let eventLoopStallUs = 5_000
    /// A server started by a supervisor (`COHORT_PARENT_PID`, set by `ManagedProcess`) checks
    /// this often whether that supervisor still lives, and stops when it does not: a quickstart
    /// or test killed with kill -9 leaves no servers holding ports and data directories.
    public static let parentWatchIntervalMs: Int64 = 500
    /// A log fdatasync that takes longer than this counts in `cohort_log_slow_syncs_total`:
    /// every forced record of its round waited that long. Syncs on these machines take
    /// 0.1-0.3 ms; a slow one is the disk, not Cohort, and the metric lets an operator say so.
    public static let logSlowSyncUs = 5_000
    /// The most a server's event loop may poll for events before it sleeps (`--poll-us`):
    /// beyond a millisecond the polls only burn CPU that timers and the other processes need.
    public static let eventLoopPollUsMax = 1_000
    // MARK: outbox
    /// How long an outbox, relay or inbox connection waits for SQLite's write lock before
    /// `SQLiteError.isBusy`.
    public static let outboxBusyTimeoutMs: Int32 = 10_000
    /// Messages one relay batch (one sink call: one HTTP POST, one Redis pipeline) carries.
    public static let outboxBatchMessagesMax = 1_000
    /// Sink batches in flight at once per relay.
    public static let outboxBatchesInFlightMax = 4
    /// Pending messages a relay holds in memory (loaded from the table); it loads more as
    /// these drain, so a backlog of any size costs bounded memory.
    public static let outboxLoadedMessagesMax = 50_000
    /// Pending messages of one key a relay holds in memory (one while a dead letter blocks the
    /// key). A key sends one message per sink round trip, so more would only wait; without a cap
    /// one busy or blocked key fills `outboxLoadedMessagesMax` and no other key's newer messages
    /// are loaded. The rest of the key is read again (by key) when it is down to half of this.
    public static let outboxLoadedPerKeyMax = 1_000
    /// Rows read from the outbox table per query.
    public static let outboxLoadRowsMax = 5_000
    /// Bytes of messages (payload, headers, topic, key) a relay holds in memory: with payloads
    /// of up to 256 KiB, `outboxLoadedMessagesMax` alone would allow 13 GB. Tail loads stop
    /// here; a key's own first message and rescanned rows below the cursor are still taken.
    public static let outboxLoadedBytesMax = 64 << 20
    /// One read of the outbox table stops once its rows hold this many bytes (the rest comes
    /// with the next read): 5,000 rows of 256 KiB would be 1.3 GB at once.
    public static let outboxLoadPageBytesMax = 8 << 20
    /// Delivery attempts (sink answered and refused the message) before a message becomes a
    /// dead letter. A sink that is down does not count: that is retried without limit. Also a
    /// stream reader's failed applications of one entry (`InboxBusy` aside) before it moves the
    /// entry to the dead-letter stream: one entry that never applies would otherwise hold its
    /// key, and at `redisPendingEntriesMax` every key, for good.
    public static let outboxAttemptsMax = 10
    /// Per-message retry backoff: capped exponential with jitter.
    public static let outboxRetryDelayMsMin: Int64 = 100
    public static let outboxRetryDelayMsMax: Int64 = 10_000
    /// Whole-sink backoff when the sink is unreachable (broker down).
    public static let outboxSinkDownDelayMsMin: Int64 = 50
    public static let outboxSinkDownDelayMsMax: Int64 = 2_000
    /// Backoff of the relay's reads of its own table after a failed one (a damaged or failing
    /// database): a read every poll wrote the same error 50 times a second without end.
    public static let outboxStoreRetryDelayMsMin: Int64 = 100
    public static let outboxStoreRetryDelayMsMax: Int64 = 5_000
    /// While an outbox relay's sink stays unreachable, its problem line (stderr of cohort-relay
    /// and the demo services) is repeated at most this often: the first failure and the
    /// recovery are said at once, and a sink down for an hour gives 120 lines, not one per retry.
    public static let outboxSinkProblemReportIntervalMs: Int64 = 30_000
    /// The relay lease: held this long without renewal, renewed every third of it.
    public static let outboxLeaseTTLMs: Int64 = 5_000
    /// The longest relay lease `cohort-relay --lease-ttl` takes: a relay that dies holds its
    /// outbox this long before a standby takes over, so a lease of days (accepted until a
    /// black-box probe tried `100d`) would stop delivery for days after one crash.
    public static let outboxLeaseTTLMsMax: Int64 = 600_000
    /// A standby takes a lease row it has read unchanged for this long on its monotonic clock,
    /// whatever the row's expiry says: a live holder renews every third of its TTL (at most
    /// `outboxLeaseTTLMsMax`), so a row unchanged this long is no live relay's. The expiry alone
    /// is the holder's wall clock, and one written just before a step back lies that far ahead.
    public static let outboxLeaseUnchangedTakeoverMs: Int64 = outboxLeaseTTLMsMax
    /// A relay without the lease tries to take it this often.
    public static let outboxLeaseRetryMs: Int64 = 1_000
    /// New rows are looked for this often (an in-process relay is also woken on commit).
    public static let outboxPollIntervalMs: Int64 = 20
    /// Every pending row is re-read from the start this often (belt and braces: see docs/outbox.md).
    public static let outboxRescanIntervalMs: Int64 = 10_000
    /// Undelivered messages (pending and dead-lettered) an outbox holds: past it an enqueue
    /// throws `OutboxBacklogFull` and the business transaction rolls back. Holding the backlog
    /// through a sink's outage is the outbox's purpose, so the bound is far out: 10 million
    /// messages is hours of a busy service's output and about 10 GB at 1 KB each, where an
    /// unbounded table would go on until the disk is full and stops every write of the service,
    /// its business tables included.
    public static let outboxBacklogMessagesMax: Int64 = 10_000_000
    /// How often a producer counts the backlog (a scan of the pending and dead indexes inside
    /// its write transaction, 50-70 ms at a million rows; at least twenty times that count's
    /// own length apart); between counts it adds what it enqueued itself, so several producers
    /// together may pass the bound by about this long of their output.
    public static let outboxBacklogCountIntervalMs: Int64 = 1_000
    /// Delivered rows are deleted this long after delivery, and discarded dead letters this long
    /// after their discard, in batches of `outboxCleanupRowsMax`.
    public static let outboxRetentionMsDefault: Int64 = 3_600_000
    /// The shortest `cohort-relay --retention`. Nothing the relay does reads a delivered or
    /// discarded row again, but they are the record of what went out and of an operator's
    /// discard (its reason): `--retention 0s` deleted each one within a second, so a discard's
    /// reason was gone before anyone could look. The inbox's minimum, so a producer's record of
    /// a delivery lasts at least as long as a consumer is bound to remember it.
    public static let outboxRetentionMsMin: Int64 = inboxRetentionMsMin
    public static let outboxCleanupRowsMax = 500
    public static let outboxCleanupIntervalMs: Int64 = 1_000
    /// How long `outbox-demo-producer --sink` waits, after producing, for its relay to deliver
    /// what it committed before it says how many are still pending and exits 1 (`--drain-wait`).
    public static let outboxProducerDrainWaitMsDefault: Int64 = 30_000
    public static let outboxProducerDrainWaitMsMax: Int64 = 3_600_000
    /// Inbox rows (consumer, message id) are kept this long: a redelivery later than this would
    /// be applied again, so it must exceed how long a message can stay pending or dead.
    public static let inboxRetentionMsDefault: Int64 = 7 * 86_400_000
    /// The shortest `outbox-demo-consumer --inbox-retention`: shorter, a relay's resend of a
    /// message whose answer was lost could come after its row is gone and apply it again. With
    /// no outage at all a resend comes that late: a relay that dies after the consumer applied
    /// a batch and before recording it leaves the batch to a standby, which takes the lease once
    /// it expires (`outboxLeaseTTLMsMax`, or `outboxLeaseUnchangedTakeoverMs` after a clock
    /// step back), the call having run up to `outboxSinkTimeoutMs` and its retry waited up to
    /// `outboxRetryDelayMsMax`: 10 min 20 s. It was 1 s, shorter than a single retry's backoff.
    /// (A message pending through an outage is resent later still: the default is 7 days.)
    public static let inboxRetentionMsMin: Int64 = max(outboxLeaseTTLMsMax, outboxLeaseUnchangedTakeoverMs)
        + outboxSinkTimeoutMs + max(outboxRetryDelayMsMax, outboxSinkDownDelayMsMax)
    /// How often `outbox-demo-consumer` deletes inbox rows past its retention (more often when
    /// the retention is shorter: every half retention), at most `outboxCleanupRowsMax` rows a
    /// statement and `inboxCleanupRoundRowsMax` a round, so a backlog cannot hold its loop long.
    public static let inboxCleanupIntervalMs: Int64 = 60_000
    public static let inboxCleanupRoundRowsMax = 10_000
    /// An outbox's name (`Outbox(name:)`, `outbox-demo-producer --name`): every message id is
    /// `NAME:ID`, and consumers keep one inbox row per id for their retention.
    public static let outboxSourceBytesMax = 128
    /// A message id an inbox takes: the longest a relay makes (`outboxSourceBytesMax`, a colon
    /// and a 64-bit id) with room to spare. A longer or empty id is answered `failed` without a
    /// row (a hand-built producer's ids: empty ones would all dedupe against the first, and the
    /// later ones would be dropped as duplicates without ever being applied).
    public static let inboxMessageIDBytesMax = 256
    public static let outboxTopicBytesMax = 256
    public static let outboxKeyBytesMax = 256
    public static let outboxPayloadBytesMax = 256 << 10
    /// One sink call's encoded messages (`{"messages":[...]}`, also the bound of a Redis
    /// pipeline's batch) at most this: below `httpBodyBytesMax`, the body a consumer's inbox
    /// endpoint accepts (past it the consumer answers 413 and nothing of the batch is applied).
    /// The margin leaves room for a consumer's own envelope checks. A message whose JSON could
    /// not fit in a call alone is refused at enqueue (JSON escapes a control character into six
    /// bytes, so a payload within `outboxPayloadBytesMax` can still be too large).
    public static let outboxBatchBytesMax = httpBodyBytesMax - (16 << 10)
    /// A sink's 413 for a batch of several messages (a proxy or consumer with a smaller body
    /// limit) halves the relay's batch bytes bound; after this many batches in a row that the
    /// sink took whole (answered per message) and that used more than half the bound, it doubles
    /// again, up to the configured size. Before, one 413 (a proxy reconfigured for a minute)
    /// halved it until the relay restarted. A sink whose limit stays lower refuses one call in
    /// about this many plus one, each sent again at once in halves.
    public static let outboxBatchBytesRegrowAfterBatches = 32
    public static let outboxHeadersMax = 32
    public static let outboxHeaderBytesMax = 4096
    /// Last error text kept per message.
    public static let outboxErrorBytesMax = 512
    /// Messages `GET /v1/outbox` lists at most.
    public static let outboxListMax = 1_000
    /// Sink call timeout (an HTTP batch POST, a Redis pipeline).
    public static let outboxSinkTimeoutMs: Int64 = 10_000
    /// The smallest `cohort-relay --stream-maxlen` (`MAXLEN ~ N`, which trims entries whether or
    /// not they were read): a consumer holds up to `redisPendingEntriesMax` entries pending and
    /// a relay has up to `outboxBatchesInFlightMax` batches of `outboxBatchMessagesMax` on the
    /// way, so a shorter stream trims entries a consumer has not applied yet even when nothing
    /// is wrong (`--stream-maxlen 1` lost all but the last). Size it well above this.
    public static let outboxStreamMaxLengthMin = redisPendingEntriesMax + outboxBatchesInFlightMax * outboxBatchMessagesMax
    /// Redis replies: largest bulk string and deepest array nesting accepted.
    public static let redisBulkBytesMax = 16 << 20
    public static let redisArrayCountMax = 1 << 20
    public static let redisNestingMax = 8
    /// Entries read per XREADGROUP / XAUTOCLAIM call, and how long XREADGROUP blocks.
    public static let redisReadCountMax = 1_000
    public static let redisBlockMs: Int64 = 1_000
    /// A pending stream entry idle this long is claimed from a consumer that crashed.
    public static let redisClaimIdleMs: Int64 = 5_000
    /// A stream reader with an entry left pending (its effect failed) retries its own pending
    /// entries this often; later entries of that key wait for it (per-key order).
    public static let redisPendingRetryMs: Int64 = 100
    /// ... and, while passes apply nothing and no new key is blocked, twice as long after each,
    /// up to this: a pass reads every pending entry, and a key held for minutes made that
    /// constant work. Below `redisClaimIdleMs` (a pass refreshes the entries' idle time, and
    /// entries idle longer would look abandoned to the group's other consumers), and short
    /// enough that a lock released elsewhere is noticed within it.
    public static let redisPendingRetryMsMax: Int64 = 2_000
    /// A stream reader with this many entries pending (a held key's later entries stay pending
    /// behind it) reads no new entries until its retries drain them below: the pending entries
    /// list grew without bound while a key was held, and every pass reads all of it. The unread
    /// entries wait in the stream, whose size is the broker's to bound (the relay's
    /// `--stream-maxlen`). 10,000 entries are 10 pages of a pass.
    public static let redisPendingEntriesMax = 10_000

    // MARK: TCC
    /// Branches one TCC transaction may register.
    public static let tccBranchesPerTransactionMax = 64
    /// A TCC branch id (and, at a service, a txid) is at most this long.
    public static let tccBranchIDBytesMax = 128
    /// A branch's payload (and a try's result) as JSON, at most this long; the payload also in
    /// the coordinator log's binary form, which can be longer than the JSON (a small integer
    /// takes 9 bytes there), since the log reads back no more than this. A try whose answer
    /// carries a longer result fails (its reservation is cancelled): the coordinator kept any
    /// result a service answered, up to a response's 4 MiB, in the open branch, outside
    /// `tccOpenBranchBytesMax`. It now passes the result on to the client and keeps none.
    public static let tccPayloadBytesMax = 64 << 10
    /// What the TCC coordinator holds for its open transactions' branches (ids, URLs and
    /// payloads, as logged): past it a new branch is refused with 503. Without it 10,000 open
    /// transactions of 64 branches with 64 KiB payloads would be 40 GiB, and a checkpoint, which
    /// writes them all, could not be taken (`snapshotBytesMax`).
    public static let tccOpenBranchBytesMax = 64 << 20
    /// What the TCC coordinator keeps of its finished transactions in memory: branches
    /// (payloads are dropped at the end) with their attempt histories, timelines and operators'
    /// audit entries. The oldest are forgotten past it even below `finishedTransactionsKept`, so
    /// that memory and the checkpoint stay well inside their bounds (`snapshotBytesMax`) however
    /// long the branch URLs, errors and operators' reasons are.
    public static let tccFinishedKeptBytesMax = 32 << 20
    /// The coordinator's wait for one try, confirm or cancel call.
    public static let tccCallTimeoutMs: Int64 = 5_000
    /// A service refuses a try that arrives this long after its deadline (allowed clock skew
    /// between the coordinator and the service).
    public static let tccClockSkewMarginMs: Int64 = 60_000
    /// Barrier rows of a finished branch are kept this long after its confirm or cancel.
    public static let tccBarrierRetentionMsDefault: Int64 = 24 * 3_600_000
    /// The smallest retention a service may choose: the coordinator's longest transaction
    /// lifetime (the longest timeout, plus the clock-skew margin) and its retry window (the
    /// retry budget, then one parked retry delay). Past it a purged fence can no longer matter
    /// (a later try is refused by its deadline), and a confirm or cancel answered before is
    /// not re-sent by a coordinator that stayed up (docs/tcc.md, "Cleanup").
    public static let tccBarrierRetentionMsMin: Int64 = transactionTimeoutMsMax + tccClockSkewMarginMs + retryBudgetMs + parkedRetryDelayMs
    /// Barrier rows one TCC resource holds before it refuses to start a branch (a try, or a
    /// cancel with no try, which must leave a fence) with 503; the phases of branches already
    /// there still run. A cancel's fence stays for the retention (24 h), so without a bound a
    /// flood of cancels with made-up txids grew the table, and the disk, without limit.
    /// 4,000,000 rows are 2,000,000 finished branches (two rows each), about 23 branches a
    /// second kept for a whole day: above what one inventory serves, so only a flood meets it.
    /// Measured with SQLite 3.40: about 175 bytes a row with the demo's ids (700 MB in all),
    /// about 660 bytes with ids of the longest allowed, 128 bytes each (2.6 GB). A resource counts
    /// its rows once when it opens: about 45 ms per 200,000 rows from the page cache, so a second
    /// or so at the bound.
    public static let tccBarrierRowsMax = 4_000_000
    /// Branches whose barrier rows one purge call removes.
    public static let tccPurgeBatchMax = 1_000
    /// How often a TCC service (`tcc-inventory`, the demo inventory) purges finished barrier rows.
    public static let tccPurgeIntervalMs: Int64 = 60_000
    /// Purge calls one round makes at most (each one short transaction of at most
    /// `tccPurgeBatchMax` branches); what is left waits for the next round.
    public static let tccPurgeBatchesPerRoundMax = 20
    /// The wait before the next purge round when a round stopped at its cap (more rows wait):
    /// a round of 20,000 branches a minute falls behind a service finishing 2,000 a second.
    public static let tccPurgeBacklogDelayMs: Int64 = 100
    /// Idle SQLite connections a TCC resource keeps.
    public static let tccConnectionsPooledMax = 8
    /// TCC phases a service runs in one local transaction at most (`TCCResource.runBatch`).
    public static let tccPhasesPerCommitMax = 64
}

// MARK: - demo services (order-service, inventory-service)
extension Limits {
    /// Largest quantity one order may ask for.
    public static let demoOrderQtyMax: Int64 = 1_000_000
    /// A demo sku's name: 1-64 characters of A-Z a-z 0-9 - _ .
    public static let demoSkuBytesMax = 64
    /// Orders the order service works on at once; more wait for a free worker.
    public static let demoOrderWorkersMax = 64
    /// Orders in one `GET /v1/orders` answer (about 150 bytes each): `next_after` goes on.
    public static let demoOrdersListedMax = 10_000
    /// Orders waiting for a free worker; past this a new one is answered 503.
    public static let demoOrdersWaitingMax = 1_024
    /// The inventory keeps an HTTP client for this many `reply_to` addresses; others get a
    /// client for one delivery (a message names its own address, so they are not trusted to be
    /// few).
    public static let demoReplyTargetsCachedMax = 64
    /// How long an order waits for an unsure outcome (lost commit answer) before answering
    /// with the status it has (pending); the recovery pass settles it later.
    public static let demoSettleWaitMs: Int64 = 30_000
    /// Demo order service: pause between rounds of asking again about orders still in doubt
    /// (one background thread for all of them, so they never hold the order workers).
    public static let demoSettleRoundMs: Int64 = 200
    /// `GET /v1/orders/{id}?wait_ms=N`: the longest a client may wait there for a pending order
    /// to settle.
    public static let demoOrderWaitMsMax: Int64 = 30_000
    /// Clients waiting that way at once; past it the answer is 503.
    public static let demoOrderWaitersMax = 1_024
    /// While clients wait, how often their orders are read again. An answer through the HTTP
    /// inbox wakes them at once; one through Redis Streams commits on the reader's thread with
    /// no hook after it, so this bounds how late its waiter hears.
    public static let demoOrderWaitRecheckMs: Int64 = 20
    /// How long the demo inventory holds a TCC try (and a confirm or cancel) whose sku's keys a
    /// 2PC/3PC branch holds locked, waiting for the locks, before it answers as it did at once
    /// before: the try 409 "sku S is busy in another transaction (waited N ms ...)", the order
    /// rejected; a confirm or cancel 503, which the coordinator retries. A 2PC/3PC branch holds
    /// the locks between its work and its commit (milliseconds), and its own work waits for a
    /// lock up to `lockWaitTimeoutMs`: this is as long, so a TCC order waits as a 2PC order
    /// would. Well under the coordinator's wait for a try (`tccCallTimeoutMs`, 5 s), so the
    /// try's answer, refusal or not, still reaches it (a try answered too late is a failed try:
    /// the coordinator cancels, and the barrier refuses the try if it runs after that cancel).
    public static let demoTCCLockWaitMs: Int64 = lockWaitTimeoutMs
    /// TCC phases the demo inventory holds waiting for their sku's locks at once. Past it a try
    /// is refused at once (409, the order rejected: a 503 would read as "no answer, it may have
    /// run" to the coordinator, which then marks the service down for its waking of branches,
    /// and the client is told 502), and a confirm or cancel answered 503 (retried), as before
    /// waiting existed.
    ///
    /// Half the connections a coordinator keeps to one service (`httpClientPoolPerHostMax`):
    /// each waiting phase is a coordinator's call holding one of them, and the commit or abort
    /// that frees the sku comes from a coordinator too, over the same pool. At 256 (as many as
    /// the 2PC/3PC lock waiters one key queues) 128 waiting tries held all of one coordinator's
    /// connections to the inventory, and its commit waited behind them until the first of
    /// those waits ran out (2 s), refused (a review, session 36:
    /// `TCCLockWaitTests.testWaitingTriesLeaveTheCoordinatorRoomToSendTheCommitThatFreesTheirSku`).
    /// Still as many as one order service places at once (`demoOrderWorkersMax`).
    public static let demoTCCLockWaitersMax = httpClientPoolPerHostMax / 2
    /// TCC phases the demo inventory holds waiting for one sku's locks at once; past it a phase
    /// on that sku is answered as when `demoTCCLockWaitersMax` wait (a try 409, a confirm or
    /// cancel 503), while phases on other skus may still wait. Without it one hot sku's waiters
    /// could fill the service's bound and have phases on every other sku refused at once.
    ///
    /// A quarter of the service's bound: one hot sku leaves three quarters of it to the others,
    /// and only four skus each locked by a 2PC/3PC branch with 16 TCC phases behind it fill it,
    /// well past the load the waits are for (a millisecond's lock met by a few orders). Not
    /// smaller: the phases waiting on one sku all run in one batch once it is freed (one local
    /// transaction, one sync), so more of them cost little, and past it a try's order is
    /// rejected for no business reason. No flag of its own: set under it,
    /// `--tcc-lock-waiters-max` bounds every sku first (as in the tests that use 1).
    public static let demoTCCLockWaitersPerSkuMax = demoTCCLockWaitersMax / 4
    /// How often the demo services purge finished TCC barrier rows and old inbox rows.
    public static let demoMaintenanceIntervalMs: Int64 = 60_000
    /// A client's `request_id` in `POST /v1/orders`: room for a UUID with a prefix of the
    /// client's own, small enough that the unique index over every order stays small.
    public static let demoRequestIDBytesMax = 128
    /// A rejected order's `reason` (a prefix a client matches on, then a detail such as the
    /// coordinator's abort reason, which may be `reasonBytesMax`): enough for the gist of the
    /// detail, and short because it is stored in every rejected row and repeated in every
    /// order list.
    public static let demoRejectionReasonBytesMax = 200
    /// `GET /v1/orders` stops adding orders past this much answer and says `next_after`: a
    /// page of `demoOrdersListedMax` orders with long request ids and reasons would pass the
    /// `httpResponseBytesMax` a client reads (~650 bytes an order at worst, more with escapes).
    public static let demoOrdersListedBytesMax = 2 << 20
    /// The scenario workload re-sends an order that got no answer (same request_id) this many
    /// times at most: a killed order service is back within a few tries' pauses, and a client
    /// that gave up at once would leave the order's fate unknown where it could learn it.
    public static let demoClientRetriesMax = 3
    /// The scenario workload's pause before each such re-send: a killed service's restart gets
    /// under way meanwhile, and a client is not held much past the scenario's own timings.
    public static let demoClientRetryPauseMs: Int64 = 200
}
