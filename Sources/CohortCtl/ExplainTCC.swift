import CohortCore

extension Explain {
    /// `txctl explain` for a TCC transaction: which confirm or cancel holds it up, and which
    /// forced decisions the coordinator would allow (the same rules as `TCCCoordinator.planForce`).
    static func explainTCC(_ tx: TransactionView, nowMs: Int64) -> Explanation {
        let id = tx.txid
        func note(_ b: TransactionView.BranchView, _ waiting: String?) -> Explanation.BranchNote {
            .init(participant: b.participant, url: b.url, state: b.state, waitingFor: waiting, attempts: b.attempts,
                  lastError: b.lastError, nextRetryAt: b.nextRetryAt, heuristic: nil)
        }
        let forceCommit = "txctl commit \(id) --force --reason \"...\""
        let forceAbort = "txctl abort \(id) --force --reason \"...\""
        var blocking: [Explanation.BranchNote] = []
        var actions: [String]
        var summary: String
        var finished = false
        let parked = tx.parked == true ? " It is PARKED: its retry budget is spent, and it is retried only slowly." : ""
        switch tx.state {
        case "committed", "aborted":
            finished = true
            summary = "\(id) is finished (TCC): \(tx.state == "committed" ? "every branch confirmed" : "every branch cancelled")\(tx.finishedAt.map { " at \($0)" } ?? "")\(tx.reason.map { " (\($0))" } ?? "")."
            if let a = tx.audit?.last { summary += " An operator decided it: \(a.action) by \(a.operator) at \(a.at) (\(a.reason))." }
            let resolved = tx.branches.filter { $0.state == "resolved-by-operator" }.map(\.participant)
            if !resolved.isEmpty {
                summary += " \(resolved.joined(separator: ", ")) never answered its \(tx.state == "committed" ? "confirm" : "cancel"); the operator took it over, Cohort no longer calls \(resolved.count == 1 ? "it" : "them")."
            }
            actions = ["nothing to do"]
        case "active":
            let notTried = tx.branches.filter { $0.state != "tried" }
            blocking = tx.branches.map { note($0, $0.state == "tried" ? "the application's commit or abort" : "its try") }
            summary = "\(id) is active (TCC): \(tx.branches.count) branch\(tx.branches.count == 1 ? "" : "es") registered, and the application has not asked to commit or abort yet; the timeout cancels it."
            actions = ["wait: the application commits or aborts it, or the timeout cancels every branch",
                       "\(forceAbort) cancels it now (allowed: nothing is decided yet)",
                       notTried.isEmpty ? "\(forceCommit) confirms it (allowed: every try succeeded)"
                           : "a forced commit is refused: the try of \(notTried.map(\.participant).joined(separator: ", ")) has not succeeded"]
        case "deciding":
            summary = "\(id) is deciding (TCC): every try succeeded and the confirm decision is being written to the log."
            actions = ["wait a moment and look again: txctl show \(id)"]
        case "confirming", "cancelling":
            let confirming = tx.state == "confirming"
            let phase = confirming ? "confirm" : "cancel"
            let pending = tx.branches.filter { $0.state == tx.state }
            blocking = pending.map { note($0, "the answer to its \(phase)") }
            let names = pending.map(\.participant).joined(separator: ", ")
            let several = pending.count > 1
            summary = "\(id) is \(tx.state) (TCC): \(confirming ? "confirm is decided and durable" : "it is cancelled\(tx.reason.map { " (\($0))" } ?? "")"), and Cohort is calling \(phase) on \(pending.isEmpty ? "no one (it ends shortly)" : pending.map { describe($0, nowMs: nowMs) }.joined(separator: "; ")) until \(several ? "they answer" : "it answers").\(parked)"
            actions = ["wait: Cohort keeps calling \(phase)\(tx.parked == true ? " (slowly, it is parked)" : "") until \(names.isEmpty ? "every branch answers" : names + (several ? " answer" : " answers"))",
                       "bring \(names.isEmpty ? "the service" : names) back (\(pending.map(\.url).joined(separator: ", "))), then retry now instead of waiting: txctl retry \(id)",
                       "only if \(names.isEmpty ? "that service" : names) \(several ? "are" : "is") gone for good or settled by hand: \(confirming ? forceCommit : forceAbort) ends the transaction as \(confirming ? "committed" : "aborted") (audited; Cohort stops calling it)",
                       confirming ? "a forced abort is refused: the confirm decision is durable" : "a forced commit is refused: its branches are being cancelled"]
        default:
            summary = "\(id) is in state \(tx.state), which this txctl does not know."
            actions = ["look at it: txctl show \(id)"]
        }
        return Explanation(txid: id, state: tx.state, finished: finished, parked: tx.parked == true,
                           summary: summary, blocking: blocking, actions: actions)
    }
}
