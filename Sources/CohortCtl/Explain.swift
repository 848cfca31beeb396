import CohortCore

/// `txctl explain`: why a transaction is not finished, and what an operator can do about it.
public struct Explanation: Codable, Equatable, Sendable {
    public struct BranchNote: Codable, Equatable, Sendable {
        public let participant: String
        public let url: String
        public let state: String
        /// What this branch is holding up, or nil when it is done.
        public let waitingFor: String?
        public let attempts: Int
        public let lastError: String?
        public let nextRetryAt: String?
        public let heuristic: String?
        /// Who forced it, why and when, as the participant's report said (absent when it did not).
        public var heuristicOperator: String? = nil
        public var heuristicReason: String? = nil
        public var heuristicForcedAt: String? = nil
        enum CodingKeys: String, CodingKey {
            case participant, url, state, attempts, heuristic
            case heuristicOperator = "heuristic_operator"
            case heuristicReason = "heuristic_reason"
            case heuristicForcedAt = "heuristic_forced_at"
            case waitingFor = "waiting_for"
            case lastError = "last_error"
            case nextRetryAt = "next_retry_at"
        }
    }
    public let txid: String
    public let state: String
    public let finished: Bool
    public let parked: Bool
    /// One sentence: where the transaction is.
    public let summary: String
    /// Branches that hold it up (all branches for a heuristic-mixed transaction).
    public let blocking: [BranchNote]
    /// What the operator can do, best first; each is a sentence, commands in backquotes-free text.
    public let actions: [String]
    enum CodingKeys: String, CodingKey {
        case txid, state, finished, parked, summary, blocking, actions
    }
}

public enum Explain {
    public static func explain(_ tx: TransactionView, nowMs: Int64) -> Explanation {
        if tx.protocol == "tcc" { return explainTCC(tx, nowMs: nowMs) }
        let id = tx.txid
        func note(_ b: TransactionView.BranchView, _ waiting: String?) -> Explanation.BranchNote {
            .init(participant: b.participant, url: b.url, state: b.state, waitingFor: waiting, attempts: b.attempts,
                  lastError: b.lastError, nextRetryAt: b.nextRetryAt, heuristic: b.heuristic,
                  heuristicOperator: b.heuristicOperator, heuristicReason: b.heuristicReason, heuristicForcedAt: b.heuristicForcedAt)
        }
        let forceCommit = "txctl commit \(id) --force --reason \"...\""
        let forceAbort = "txctl abort \(id) --force --reason \"...\""
        var blocking: [Explanation.BranchNote] = []
        var actions: [String] = []
        var summary: String
        var finished = false
        let timeoutMs = tx.timeoutMs ?? 0
        let timeoutAt = tx.createdAt.flatMap { Clock.parseISO8601($0) }.map { $0 + timeoutMs }
        let timeoutText: String = {
            guard let t = timeoutAt, timeoutMs > 0 else { return "" }
            return t > nowMs ? " It times out (and is aborted) in \(TimeFormat.duration(ms: t - nowMs))." : " Its timeout has passed; it is being aborted."
        }()

        switch tx.state {
        case "committed", "aborted":
            finished = true
            let when = tx.finishedAt.map { " at \($0)" } ?? ""
            summary = "\(id) is finished: \(tx.state)\(when)\(tx.reason.map { " (\($0))" } ?? "")."
            if tx.forgotten == true {
                summary += (tx.audit ?? []).isEmpty
                    ? " The coordinator no longer keeps its branches and timeline, only this outcome (its ledger of outcomes)."
                    : " The coordinator no longer keeps its branches and timeline, only this outcome and the operator's audit (its memory of forced outcomes)."
            }
            if let a = tx.audit?.last {
                summary += " An operator decided it: \(a.action) by \(a.operator) at \(a.at) (\(a.reason))."
                // Its branches are not kept (forgotten, or a commit read back from a checkpoint,
                // which keeps no branches): the audit entry still names those the force took over.
                if tx.branches.isEmpty, let taken = a.resolvedBranches, !taken.isEmpty {
                    summary += " It stopped waiting for \(taken.joined(separator: ", ")) (resolved by operator; the branches' states are no longer kept)."
                }
            }
            let resolved = tx.branches.filter { $0.state == "resolved-by-operator" }.map(\.participant)
            if !resolved.isEmpty {
                summary += " \(resolved.joined(separator: ", ")) never acknowledged; \(resolved.count == 1 ? "it is" : "they are") told \"committed\" when \(resolved.count == 1 ? "it asks" : "they ask")."
            }
            actions = ["nothing to do"]
        case "heuristic-mixed":
            finished = true
            let decided = tx.outcome ?? "aborted"
            let forced = tx.branches.filter { $0.heuristic != nil && $0.heuristic != decided }
            let names = forced.map { "\($0.participant) to \($0.heuristic!)" }.joined(separator: ", ")
            let others = tx.branches.filter { !($0.heuristic != nil && $0.heuristic != decided) }.map(\.participant)
            summary = "\(id) is HEURISTIC-MIXED: the coordinator decided \(decided), but an operator forced \(names.isEmpty ? "a branch" : names) at the participant. "
            if forced.isEmpty {
                // Known only from the ledger (no branches kept): the sentence below, built from
                // the branches, read "disagree:  the opposite, every other participant ...".
                summary += "The participants' data now disagree: a forced branch holds the other outcome. The coordinator no longer keeps the branches (only this outcome, in its ledger of outcomes), so which participant it was shows at the participants: txctl agent URL list --state heuristic-mixed at each."
            } else {
                summary += "The participants' data now disagree: \(forced.map(\.participant).joined(separator: ", ")) \(forced.first!.heuristic!), \(others.isEmpty ? "every other participant" : others.joined(separator: ", ")) \(decided)."
            }
            blocking = tx.branches.map { note($0, $0.heuristic != nil && $0.heuristic != decided ? "data repair by hand" : nil) }
            for b in forced {
                actions.append("repair the data by hand at \(b.participant)\(b.url.isEmpty ? "" : " (\(b.url))"): its branch was \(b.heuristic!) but the transaction was \(decided); Cohort cannot undo a forced outcome")
            }
            if forced.isEmpty {
                actions.append("find the forced branch (txctl agent URL list --state heuristic-mixed at each participant) and repair the data by hand there: its branch holds the opposite of \(decided); Cohort cannot undo a forced outcome")
            }
            actions.append("see who forced it and why: txctl agent URL show \(id) at each participant")
            actions.append("this transaction stays listed as heuristic-mixed (txctl list --state heuristic-mixed): the coordinator keeps the last \(Limits.heuristicMixedKept) of them whole past its recent ones, and the outcomes of decided ones in its ledger")
        case "active":
            summary = "\(id) is active: branches may still join and the application has not asked to commit or abort yet.\(timeoutText)"
            blocking = tx.branches.map { note($0, "the application's commit or abort") }
            actions = ["wait: the application commits or aborts it, or the timeout aborts it",
                       "\(forceAbort) aborts it now (allowed: nothing is decided yet)",
                       "a forced commit is refused: no branch has prepared"]
        case "preparing":
            let unvoted = tx.branches.filter { $0.state != "prepared" && $0.state != "read-only" && $0.state != "voted-no" }
            blocking = unvoted.map { note($0, "its vote") }
            let list = unvoted.map { describe($0, nowMs: nowMs) }.joined(separator: "; ")
            summary = "\(id) is preparing: waiting for votes from \(unvoted.isEmpty ? "no one (the decision is imminent)" : list).\(timeoutText)"
            actions = ["wait: a missing vote counts as no when the timeout passes, and the transaction aborts",
                       "\(forceAbort) aborts it now (allowed: nothing is decided yet; refused for a one-phase commit, which only its participant decides)",
                       "a forced commit is refused: \(unvoted.map(\.participant).joined(separator: ", ")) did not vote yes"]
            if tx.branches.count == 1 {
                actions.append("if this is a one-phase commit, resolve it at the participant: txctl agent \(tx.branches[0].url) show \(id)")
            }
        case "pre-committing":
            let waiting = tx.branches.filter { $0.state == "pre-commit-sent" }
            blocking = waiting.map { note($0, "its acknowledgement of pre-commit") }
            let list = waiting.map { describe($0, nowMs: nowMs) }.joined(separator: "; ")
            summary = "\(id) is a three-phase commit in pre-commit: every branch voted yes, the pre-commit is durable, and the coordinator is waiting for acknowledgements from \(waiting.isEmpty ? "no one (the commit follows shortly)" : list)."
            actions = [preCommitWait(tx, &summary),
                       "forced decisions are refused: past its pre-commit, its participants may already have decided it without the coordinator",
                       "if it stays here, look at the participants: txctl agent URL show \(id)"]
        case "terminating":
            let open = tx.branches.filter { !["committed", "aborted", "read-only", "voted-no"].contains($0.state) }
            blocking = open.map { note($0, "its outcome (the coordinator asks it)") }
            let list = open.map { describe($0, nowMs: nowMs) }.joined(separator: "; ")
            // The timeline says why when the coordinator stopped deciding itself (a refused or
            // undelivered pre-commit, one still inside the coordinator at the pre-commit timeout).
            let why = tx.events.last { $0.event == "terminating" }?.detail ?? "it restarted after its pre-commit, or a participant started the termination protocol"
            summary = "\(id) is a three-phase commit the coordinator no longer decides (terminating): \(why); it asks \(open.isEmpty ? "the participants" : list) until one has an outcome, and adopts it."
            actions = ["wait: the participants decide by the termination protocol (docs/protocols.md), and the coordinator learns their outcome",
                       "bring back any participant that is down: a termination round may need its answer (\(open.map(\.url).filter { !$0.isEmpty }.joined(separator: ", ")))",
                       "forced decisions are refused here while a participant holds its branch: resolve it at the participants (txctl agent URL show \(id), txctl agent URL commit|abort \(id))",
                       "if every participant has no branch left (they ended it and forgot it: \"no branch\" at txctl agent URL show \(id)), the coordinator would ask for ever: txctl abort|commit \(id) --force --reason R ends it here (accepted once each of them has answered so)"]
        case "deciding":
            summary = "\(id) is deciding: every branch voted yes and the commit decision is being written to the log."
            actions = ["wait a moment and look again: txctl show \(id)"]
        case "committing":
            let pending = tx.branches.filter { $0.state == "commit-sent" && $0.heuristic == nil }
            blocking = pending.map { note($0, "its acknowledgement of commit") }
            let list = pending.map { describe($0, nowMs: nowMs) }.joined(separator: "; ")
            summary = "\(id) is committing: commit is decided and durable, and Cohort is waiting for acknowledgements from \(pending.isEmpty ? "no one (it ends shortly)" : list)."
            if tx.parked == true {
                summary += " It is PARKED: its retry budget is spent, and it is retried only slowly."
            }
            let names = pending.map(\.participant).joined(separator: ", ")
            actions = ["wait: Cohort keeps retrying\(tx.parked == true ? " (slowly, it is parked)" : "") until \(names.isEmpty ? "every branch" : names) acknowledges",
                       "bring \(names.isEmpty ? "the participant" : names) back (\(pending.map(\.url).joined(separator: ", "))), then retry now instead of waiting: txctl retry \(id)",
                       "only if \(names.isEmpty ? "that participant" : names) is gone for good or repaired by hand: \(forceCommit) ends the transaction as committed (audited; the participant is still told \"committed\" if it asks)",
                       "a forced abort is refused: the commit decision is durable"]
        default:
            summary = "\(id) is in state \(tx.state), which this txctl does not know."
            actions = ["look at it: txctl show \(id)"]
        }
        return Explanation(txid: id, state: tx.state, finished: finished, parked: tx.parked == true,
                           summary: summary, blocking: blocking, actions: actions)
    }

    /// What a `pre-committing` 3PC transaction waits for, by its termination; adds to `summary`
    /// the branches whose pre-commit was refused (or not delivered). A coordinator before
    /// session 30 sends no `termination` (any other value is taken as unknown too): a refused
    /// branch still pre-committing then says quorum (classic termination stops deciding at the
    /// first refusal), and otherwise both rules are given.
    static func preCommitWait(_ tx: TransactionView, _ summary: inout String) -> String {
        let writers = tx.branches.filter { $0.vote == "yes" }
        let acked = writers.filter { $0.state == "pre-committed" }
        let awaited = writers.filter { $0.state == "pre-commit-sent" }
        // `prepared` once the pre-commits went out: its answer was not an acknowledgement.
        let refused = acked.isEmpty && awaited.isEmpty ? [] : writers.filter { $0.state == "prepared" }
        let known = tx.termination == "classic" || tx.termination == "quorum"
        let quorum = tx.termination == "quorum" || (!known && !refused.isEmpty)
        if !refused.isEmpty {
            let why = refused.map { b in
                let detail = tx.events.last { $0.event == "pre-commit-refused" && $0.participant == b.participant }?.detail
                return "\(b.participant)\(detail.map { " (\($0))" } ?? "")"
            }
            summary += " Did not acknowledge the pre-commit (not counted): \(why.joined(separator: "; "))."
        }
        guard quorum else {
            let classic = "once every branch acknowledges, the coordinator commits; at the pre-commit timeout it commits if at least one acknowledged (presuming the silent ones crashed: classic termination), else it learns the outcome from the participants; a participant left without word terminates it with its peers"
            return "wait: " + (!known ? classic + " (under quorum termination it commits as soon as a majority of the branches that voted yes has acknowledged)" : classic)
        }
        guard !writers.isEmpty, !acked.isEmpty || !awaited.isEmpty else {
            // No pre-commit out yet (its record is being written), or no votes shown.
            return "wait: quorum termination: once the pre-commits are out, the coordinator commits as soon as a majority of the branches that voted yes has acknowledged; short of one at the pre-commit timeout it learns the outcome from the participants"
        }
        let q = Coordinator.quorum(writers.count)
        var text = "wait: quorum termination: the coordinator commits as soon as \(q) of the \(writers.count) branches that voted yes have acknowledged (\(acked.count) so far"
        if !refused.isEmpty {
            text += "; \(refused.map(\.participant).joined(separator: ", ")) did not and \(refused.count == 1 ? "is" : "are") not counted, but \(refused.count == 1 ? "is" : "are") still told the outcome"
        }
        text += ")"
        text += acked.count + awaited.count >= q
            ? "; branches not answered by then are sent the commit too; if the pre-commit timeout passes short of \(q), it stops deciding and learns the outcome from the participants"
            : "; \(q) can no longer form, so it is about to learn the outcome from the participants"
        return text
    }

    /// `b (commit-sent, 4 attempts, last error "connect failed", next retry in 20s)`
    static func describe(_ b: TransactionView.BranchView, nowMs: Int64) -> String {
        var parts = [b.state, "\(b.attempts) attempt\(b.attempts == 1 ? "" : "s")"]
        if let e = b.lastError { parts.append("last error: \(e)") }
        if let n = b.nextRetryAt { parts.append("next retry \(Clock.until(n, nowMs: nowMs))") }
        return "\(b.participant) (\(parts.joined(separator: ", ")))"
    }

    public static func render(_ e: Explanation, nowMs: Int64) -> String {
        var s = e.summary + "\n"
        if !e.blocking.isEmpty {
            s += "\n" + (e.state == "heuristic-mixed" ? "Branches:" : "Holding it up:") + "\n"
            for b in e.blocking {
                s += "  \(b.participant) at \(b.url.isEmpty ? "(unknown url)" : b.url): \(b.state)"
                if let h = b.heuristic {
                    s += ", forced \(h)" + Render.forcedBy(operator: b.heuristicOperator, at: b.heuristicForcedAt, reason: b.heuristicReason)
                }
                if let w = b.waitingFor { s += ", waiting for \(w)" }
                s += "\n"
                s += "    attempts: \(b.attempts)"
                if let n = b.nextRetryAt { s += ", next retry \(Clock.until(n, nowMs: nowMs)) (\(n))" }
                s += "\n"
                if let err = b.lastError { s += "    last error: \(err)\n" }
            }
        }
        s += "\nWhat you can do:\n"
        for a in e.actions { s += "  - \(a)\n" }
        return s
    }
}
