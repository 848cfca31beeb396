import CohortCore
/// Help texts, one per command. `txctl COMMAND --help` prints them and exits 0.
public enum Help {
    static let global = """
    Global options (any position):
      --coordinator URL   the coordinator, e.g. http://127.0.0.1:7000 (or env COHORT_COORDINATOR)
      --token-file F      bearer token file (or env COHORT_TOKEN)
    Exit status: 0 success, 1 the operation failed, 2 bad usage. Errors: one line "error: ..." on stderr.
    """

    public static let main = """
    usage: txctl [--coordinator URL] [--token-file F] COMMAND ...

    Inspect and resolve Cohort transactions.

    Commands:
      list [--state S] [--older-than DURATION] [--limit N] [--json]   transactions, newest first
      show TXID [--json]                 one transaction: branches, timeline, audit trail
      explain TXID [--json]              why it is not finished, and what you can do
      submission REQUEST_ID [--json]     what became of a submission (POST /v1/transactions/submit)
      retry TXID [--json]                retry the pending phase now instead of waiting
      commit TXID --force [--reason R] [--dry-run] [--operator NAME] [--json]   force commit (audited)
      abort TXID --force [--reason R] [--dry-run] [--operator NAME] [--json]    force abort (audited)
      watch [--interval 1s] [--once]     live view of in-flight, in-doubt and parked transactions
      stats [--json]                     counts by state, decision rates, commit latency
      agent URL list|show|commit|abort|forget ...   a participant's branches (coordinator gone for good)
      outbox URL list [--dead] [--limit N] [--json]   a service's outbox: pending or dead-lettered messages
      outbox URL replay ID               send a dead letter again
      outbox URL discard ID --reason R   give up a dead letter for good (its key's later messages go on)
      log inspect DIR [--json]           decode a coordinator's or an agent's log offline
      log verify DIR [--json]            check every record's checksum offline

    Run "txctl COMMAND --help" for a command's options. Documentation: docs/txctl.md

    """ + global

    public static let list = """
    usage: txctl list [--state S] [--older-than DURATION] [--limit N] [--json]

    Transactions the coordinator holds (open ones and recently finished ones), newest first.
      --state S              active, preparing, deciding, committing, committed, aborted,
                             heuristic-mixed, unfinished, in-doubt (= unfinished), parked,
                             3PC: pre-committing, terminating; TCC: confirming, cancelling
      --older-than DURATION  only those created longer ago than this (500ms, 10s, 3m, 1h, 2d)
      --limit N              at most N (default 1000)
      --json                 {"transactions": [...]} (see docs/txctl.md)

    """ + global

    public static let show = """
    usage: txctl show TXID [--json]

    One transaction: state, outcome, branches (state, vote, attempts, last error, next retry,
    heuristic outcome, recent failed attempts), its timeline of events, and the audit trail of
    operator decisions.
      --json   the transaction object (see docs/txctl.md)

    """ + global

    public static let submission = """
    usage: txctl submission REQUEST_ID [--json]

    What the coordinator knows of the submission sent with this request_id, running nothing:
    its transaction (state and outcome) while the coordinator keeps it, or, for a committed
    one it has forgotten, its txid from the memory of committed submissions. Exit 1 when
    neither has it ("no submission ..."): a submission with that request_id now would run.
      --json   {"request_id", "txid", "state", "outcome"?, "transaction_kept"}

    """ + global

    public static let explain = """
    usage: txctl explain TXID [--json]

    In plain words: why the transaction is not finished (which branches have not voted or not
    acknowledged, their last errors, attempts, next retry), and what you can do about it.
      --json   {"txid", "state", "finished", "parked", "summary", "blocking", "actions"}

    """ + global

    public static let retry = """
    usage: txctl retry TXID [--json]

    Sends the pending phase (commit, or a one-phase commit) to every branch still waiting, now,
    instead of waiting for the backoff. Fails (exit 1) when nothing is pending.

    """ + global

    public static func force(_ verb: String) -> String {
        """
        usage: txctl \(verb) TXID --force [--reason "..."] [--dry-run] [--operator NAME] [--json]

        An operator's decision to \(verb) the transaction at the coordinator, written durably to
        its audit trail (who, when, why, what) before it takes effect. Refused (exit 1) when it
        contradicts a durable decision, e.g. aborting a transaction whose commit is decided.
          --force           required: you mean it
          --reason "..."    why (kept in the audit trail); without it the trail records
                            "no reason given (txctl \(verb) --force without --reason)"
          --dry-run         print what would happen; change nothing
          --operator NAME   who decides (default $USER@hostname)
          --json            {"txid", "outcome", "dry_run", "effects"}

        """ + global
    }

    public static let watch = """
    usage: txctl watch [--interval DURATION] [--once]

    A live view, like top: in-flight, in-doubt and parked transactions and commit/abort rates,
    redrawn every interval (default 1s). Press q to quit.
      --interval DURATION   refresh period (default 1s, at least 100ms)
      --once                draw one frame without clearing the screen and exit

    """ + global

    public static let stats = """
    usage: txctl stats [--json]

    The coordinator's counts by state, decisions since start, decision rates over the last
    minute, and commit latency percentiles.
      --json   the coordinator's stats object (see docs/txctl.md)

    """ + global

    public static let agent = """
    usage: txctl agent URL list [--state S] [--key K] [--json]
           txctl agent URL show TXID [--json]
           txctl agent URL commit TXID --force --reason "..." [--dry-run] [--coordinator-gone] [--against-coordinator] [--operator NAME] [--json]
           txctl agent URL abort TXID --force --reason "..." [--dry-run] [--coordinator-gone] [--against-coordinator] [--operator NAME] [--json]
           txctl agent URL forget TXID --reason "..." [--dry-run] [--coordinator-gone] [--operator NAME] [--json]

    A participant agent's branches, for when its coordinator is gone for good. A forced outcome
    at an agent is heuristic: if the coordinator later decides otherwise, both report the
    transaction heuristic-mixed. So commit and abort first ask the coordinator (the one the
    branch names, and --coordinator / COHORT_COORDINATOR if given), and refuse when it answers
    with the other outcome or has not decided yet (decide there instead). When no coordinator
    can answer (unreachable, or another one answers there now), they refuse too, saying what
    to check first: the other participants' outcomes (txctl agent URL show TXID at each) or the
    old coordinator's log.
      --coordinator-gone      force (or forget) without the coordinator's answer, once you have checked
      --against-coordinator   force even against the coordinator's answer
    forget retires a branch an operator forced (heuristic-committed or heuristic-aborted): it
    keeps the forced outcome and stops asking its coordinator, durably (who, when and why go
    into the participant's log). Without it such a branch asks for ever, since only its
    coordinator's outcome ends it. Refused for any other branch, and, like a force, while a
    coordinator answers or until you say --coordinator-gone. A coordinator that comes back
    afterwards with a different decision hears that the forced one differs (heuristic-mixed).
      --state S   active, preparing, prepared, committing, forcing, heuristic-committed,
                  heuristic-aborted, forgetting, heuristic-mixed, in-doubt (voted yes, no outcome yet)
      --key K     only the branches holding a lock on key K, and those waiting for it
    list names the keys each branch holds locks on (the first \(Limits.branchKeysListedMax), then a count; show names up to
    \(Limits.branchKeysShownMax) with their lock and ops); a force's answer names the keys whose locks it released.

    """ + global

    public static let outbox = """
    usage: txctl outbox URL list [--dead] [--limit N] [--json]
           txctl outbox URL replay ID [--json]
           txctl outbox URL discard ID --reason "..." [--json]

    A service's outbox, through the admin API of the process running its relay (cohort-relay
    --port N, or a service with an in-process relay). URL is that process, e.g. http://127.0.0.1:7400.
      list           pending messages, oldest first, with counts of pending and dead letters
      list --dead    dead letters: messages refused --attempts times; while one exists, its key's
                     later messages wait behind it (per-key order)
      replay ID      make dead letter ID pending again (attempts reset, same id, so consumers
                     that did apply it dedupe it); it is delivered before its key's later messages
      discard ID     give up on dead letter ID: it is never delivered, its key's later messages
                     go on; the row stays with --reason as the record until the relay's retention
                     (cohort-relay --retention, default 1h) has passed since the discard (for a
                     message no fix will ever make the consumer accept)
      --limit N      at most N messages (default 1000)
      --json         list: {"source", "pending", "dead", "lease_held", "oldest_pending_age_ms"?, "sink_unavailable"?, "messages": [...]};
                     replay, discard: {"id", "state"}

    """ + global

    public static let log = """
    usage: txctl log inspect DIR [--json]
           txctl log verify DIR [--json]

    Read a coordinator's or an agent's log offline (the server may be stopped). DIR is its data
    directory or the log/ directory inside it. Nothing is modified.
      inspect   every segment and record: LSN, offset, type, txid, summary, audit entries; for
                an agent, the branches left open (in doubt) once the log is replayed
      verify    check every record's checksum and kind: "ok: N segments, M records (KIND log)"
                and exit 0, or name the torn tail or corrupt record (file and offset) and exit 1

    """ + global
}
