import CohortCore

/// Pure renderers: fixed input, fixed text. Everything `txctl` prints for people comes from here.
public enum Render {
    // MARK: list

    /// `a:prepared b:commit-sent`
    public static func branchesCell(_ tx: TransactionView) -> String {
        if tx.branches.isEmpty { return "-" }
        return tx.branches.map { "\($0.participant):\($0.state)" }.joined(separator: " ")
    }

    /// Parked, heuristic outcomes and the last delivery error, briefly.
    public static func noteCell(_ tx: TransactionView, width: Int = 60) -> String {
        var notes: [String] = []
        if tx.parked == true { notes.append("parked") }
        for b in tx.branches {
            if let h = b.heuristic { notes.append("\(b.participant) forced \(h) by \(b.heuristicOperator ?? "operator")") }
        }
        if !tx.state.isFinishedState {
            for b in tx.branches {
                if let e = b.lastError { notes.append("\(b.participant): \(e)") }
            }
        } else if tx.state == "aborted", let r = tx.reason {
            notes.append(r)
        }
        if notes.isEmpty { return "" }
        return clip(notes.joined(separator: "; "), width)
    }

    public static func listTable(_ txs: [TransactionView], nowMs: Int64) -> String {
        if txs.isEmpty { return "no transactions\n" }
        var t = Table(["TXID", "STATE", "AGE", "BRANCHES", "NOTE"])
        for tx in txs {
            t.add([tx.txid, tx.state, Clock.age(tx.createdAt, nowMs: nowMs), branchesCell(tx), noteCell(tx)])
        }
        return t.render()
    }

    // MARK: show

    public static func show(_ tx: TransactionView, nowMs: Int64) -> String {
        var s = "transaction \(tx.txid)\n"
        if tx.forgotten == true {
            s += "  " + "state:".padded(10) + tx.state + "\n"
            s += "  " + "outcome:".padded(10) + (tx.outcome ?? "-") + "\n"
            if let r = tx.reason { s += "  " + "reason:".padded(10) + r + "\n" }
            s += "  " + "protocol:".padded(10) + tx.protocol + "\n"
            s += "\nforgotten: the coordinator no longer keeps this transaction's branches and timeline, only its\n"
            guard let audit = tx.audit, !audit.isEmpty else {
                s += "outcome (its ledger of outcomes, cohortd --outcomes-kept)\n"
                return s
            }
            // A forced one: the memory of forced outcomes keeps who forced it, when and why.
            s += "outcome (its ledger of outcomes, or its memory of forced outcomes) and the audit trail below\n"
            return s + auditSection(audit)
        }
        var header: [(String, String)] = []
        header.append(("state", tx.state + (tx.parked == true ? " (parked: retry budget spent, still retried slowly)" : "")))
        header.append(("outcome", tx.outcome ?? "-"))
        if let r = tx.reason { header.append(("reason", r)) }
        header.append(("protocol", tx.protocol + (tx.termination.map { " (\($0) termination)" } ?? "")))
        header.append(("created", "\(tx.createdAt ?? "-") (\(Clock.age(tx.createdAt, nowMs: nowMs)) ago)"))
        header.append(("finished", tx.finishedAt.map { "\($0) (\(Clock.age($0, nowMs: nowMs)) ago)" } ?? "-"))
        header.append(("timeout", (tx.timeoutMs ?? 0) > 0 ? TimeFormat.duration(ms: tx.timeoutMs ?? 0) : "-"))
        for (k, v) in header { s += "  " + (k + ":").padded(10) + v + "\n" }

        s += "\nBRANCHES\n"
        if tx.branches.isEmpty {
            s += "  (none)\n"
        } else {
            var t = Table(["PARTICIPANT", "STATE", "VOTE", "ATTEMPTS", "NEXT RETRY", "HEURISTIC", "URL", "LAST ERROR"])
            for b in tx.branches {
                t.add([b.participant, b.state, b.vote ?? "-", String(b.attempts),
                       b.nextRetryAt.map { Clock.until($0, nowMs: nowMs) } ?? "-",
                       b.heuristic ?? "-", b.url.isEmpty ? "-" : b.url, b.lastError ?? "-"])
            }
            s += t.render(indent: "  ")
            for b in tx.branches {
                guard let h = b.heuristic else { continue }
                s += "\n  " + heuristicLine(b, outcome: h) + "\n"
            }
            for b in tx.branches {
                guard let h = b.history, !h.isEmpty else { continue }
                s += "\n  failed attempts to \(b.participant) (newest last):\n"
                for a in h { s += "    \(a.at)  \(a.error)\n" }
            }
        }

        s += "\nTIMELINE\n"
        if tx.events.isEmpty { s += "  (none)\n" }
        let start = tx.createdAt.flatMap { Clock.parseISO8601($0) }
        for e in tx.events {
            var offset = ""
            if let start, let at = Clock.parseISO8601(e.at) {
                offset = at >= start ? "+" + TimeFormat.duration(ms: at - start) : "-" + TimeFormat.duration(ms: start - at)
            }
            var line = "  \(e.at)  \(offset.padded(8))\(e.event)"
            if let p = e.participant { line += "  \(p)" }
            if let d = e.detail, !d.isEmpty { line += "  \(d)" }
            s += line + "\n"
        }

        return s + auditSection(tx.audit ?? [])
    }

    /// The AUDIT section of `show`: each operator decision, who, when, why, what it did.
    static func auditSection(_ audit: [TransactionView.AuditView]) -> String {
        var s = "\nAUDIT\n"
        if audit.isEmpty { s += "  (no operator decisions)\n" }
        for a in audit {
            s += "  \(a.at)  \(a.action) by \(a.operator)\n"
            s += "    reason: \(a.reason)\n"
            s += "    did:    \(a.detail)\n"
            // Absent from entries read back from records written before session 32.
            if let resolved = a.resolvedBranches, !resolved.isEmpty { s += "    resolved by operator: \(resolved.joined(separator: ", "))\n" }
        }
        return s
    }

    /// `heuristic-reported b: forced aborted by alice at 2026-...Z: "coordinator lost"`, from
    /// what the participant's report said (an agent before session 26 said only the outcome).
    static func heuristicLine(_ b: TransactionView.BranchView, outcome: String) -> String {
        let s = "heuristic-reported \(b.participant): forced \(outcome)"
        guard b.heuristicOperator != nil || b.heuristicReason != nil || b.heuristicForcedAt != nil else {
            return s + " by an operator there (its report did not say who, why or when)"
        }
        return s + forcedBy(operator: b.heuristicOperator, at: b.heuristicForcedAt, reason: b.heuristicReason)
    }

    /// ` by alice at 2026-...Z: "coordinator lost"`, the parts a heuristic report gave.
    static func forcedBy(operator name: String?, at: String?, reason: String?) -> String {
        var s = " by \(name ?? "an operator")"
        if let at { s += " at \(at)" }
        if let reason { s += ": " + JSONWriter.quoted(reason) }
        return s
    }

    // MARK: stats

    public static func stats(_ st: StatsResponse) -> String {
        func rate(_ k: String) -> String { formatNumber(st.ratesPerS[k] ?? 0) + "/s" }
        func ms(_ v: Double) -> String { formatNumber(v) + "ms" }
        var s = ""
        let rows: [(String, String)] = [
            ("uptime", TimeFormat.duration(ms: st.uptimeS * 1000)),
            ("open", "\(st.open) (parked \(st.parked))"),
            ("decided", "committed \(st.totals["committed"] ?? 0), aborted \(st.totals["aborted"] ?? 0) (since start)"),
            ("rate", "committed \(rate("committed")), aborted \(rate("aborted")) (last minute)"),
            ("commit", "p50 \(ms(st.commitLatency.p50Ms))  p95 \(ms(st.commitLatency.p95Ms))  p99 \(ms(st.commitLatency.p99Ms))  max \(ms(st.commitLatency.maxMs))  (\(st.commitLatency.samples) samples)"),
        ]
        for (k, v) in rows { s += (k).padded(9) + v + "\n" }
        s += "\n"
        var t = Table(["STATE", "COUNT"])
        let order = ["active", "preparing", "deciding", "committing", "parked", "committed", "aborted", "heuristic-mixed"]
        for k in order where st.byState[k] != nil { t.add([k, String(st.byState[k]!)]) }
        for k in st.byState.keys.sorted() where !order.contains(k) { t.add([k, String(st.byState[k]!)]) }
        if t.rows.isEmpty { t.add(["(none)", "0"]) }
        s += t.render()
        return s
    }

    /// `0.5`, `12.25`, `3`: at most two decimals, no trailing zeros.
    public static func formatNumber(_ v: Double) -> String {
        guard v.isFinite else { return "-" }
        let scaled = (v * 100).rounded()
        let whole = Int64(scaled / 100)
        let frac = Int64(abs(scaled)) % 100
        var s = (scaled < 0 && whole == 0 ? "-" : "") + String(whole)
        if frac != 0 {
            s += "." + (frac < 10 ? "0" : "") + String(frac)
            while s.hasSuffix("0") { s.removeLast() }
        }
        return s
    }

    // MARK: forced decisions and retries

    public static func force(_ r: ForceResponse, where place: String, recorded: String = "recorded in the audit trail") -> String {
        // Forcing what already holds changes nothing and writes no audit record.
        if !r.dryRun && r.effects.isEmpty { return "\(r.txid) is already \(r.outcome) \(place): nothing was forced, nothing recorded.\n" }
        // The coordinator's answer when the outcome already holds: "recorded in the audit
        // trail. It did: nothing to do" claimed a record `show` did not have (a game-day probe).
        if !r.dryRun && r.effects.count == 1 && r.effects[0].hasPrefix("nothing to do") {
            return "\(r.txid) is already \(r.outcome) \(place): nothing was forced.\n"
        }
        return effects(r, dryRun: "dry run: forcing \(r.txid) to \(r.outcome) \(place) would:",
                       done: "forced \(r.txid) to \(r.outcome) \(place); \(recorded). It did:")
    }

    /// A forget's answer (`ForceResponse`: the outcome the branch keeps).
    public static func forget(_ r: ForceResponse, where place: String) -> String {
        // A forget sent again (its first answer lost): nothing was written this time.
        if !r.dryRun, r.effects.count == 1, r.effects[0].hasPrefix("nothing to do") { return "\(r.effects[0]) (\(place))\n" }
        return effects(r, dryRun: "dry run: forgetting \(r.txid) \(place) would:",
                done: "forgot \(r.txid) \(place): it stays \(r.outcome) and stops asking its coordinator; recorded durably in the participant's log (who, when, why). It did:")
    }

    /// An operator action's headline (the dry run's or the done one), then its effects, one a line.
    static func effects(_ r: ForceResponse, dryRun: String, done: String) -> String {
        var s = (r.dryRun ? dryRun : done) + "\n"
        for e in r.effects { s += "  - \(e)\n" }
        s += keyLines(r.dryRun ? "keys it would release" : "keys released", r.keys, total: r.keysTotal)
        if r.dryRun { s += "nothing was changed.\n" }
        return s
    }

    public static func submission(_ v: SubmissionView) -> String {
        if v.transactionKept {
            return "request_id \(v.requestID): transaction \(v.txid), \(v.state)\(v.outcome.map { $0 == v.state ? "" : " (outcome \($0))" } ?? "")\n"
                + "details: txctl show \(v.txid)\n"
        }
        return "request_id \(v.requestID): transaction \(v.txid), committed\n"
            + "the transaction itself is forgotten (txctl show gives its outcome only, or 410 past the ledger); the memory of committed submissions keeps its txid, so a resend is answered, not run\n"
    }

    public static func retry(_ r: RetryResponse) -> String {
        "retrying \(r.txid) now: sent the pending phase again to \(r.participants.joined(separator: ", "))\n"
            + "look again with: txctl show \(r.txid)\n"
    }

    // MARK: agent

    /// `url` is the outbox's admin URL as the operator gave it, for the follow-up command.
    public static func outboxList(_ l: Txctl.OutboxList, dead: Bool, nowMs: Int64, url: String = "URL") -> String {
        var out = "outbox \(l.source): \(l.pending) pending, \(l.dead) dead"
        if let age = l.oldestPendingAgeMs, l.pending > 0 { out += ", oldest pending \(TimeFormat.duration(ms: age))" }
        out += l.leaseHeld ? " (relay holds the lease)\n" : " (this relay does not hold the lease)\n"
        if let t = l.sinkUnavailable {
            out += "SINK UNAVAILABLE: \(t.name) has failed its last \(t.failedCalls) calls, for \(TimeFormat.duration(ms: t.failingForMs)): \(clip(t.lastError, 200))\n"
                + "  messages wait in the table and are sent again after a backoff (no attempt counted); bring the sink back\n"
        }
        if l.messages.isEmpty {
            return out + (dead ? "no dead letters\n" : "nothing pending\n")
        }
        var t = Table(["ID", "KEY", "TOPIC", "ATTEMPTS", "AGE", dead ? "LAST ERROR" : "LAST ERROR"])
        for m in l.messages {
            t.add([String(m.id), clip(m.key, 32), clip(m.topic, 24), String(m.attempts),
                   TimeFormat.duration(ms: max(0, nowMs - m.createdMs)), clip(m.lastError ?? "-", 60)])
        }
        out += t.render()
        if dead { out += "replay one with: txctl outbox \(url) replay ID (or give it up: txctl outbox \(url) discard ID --reason \"...\")\n" }
        return out
    }

    public static func branchList(_ l: BranchList) -> String {
        var s = ""
        if let key = l.key {
            s += l.branches.isEmpty ? "no branch holds a lock on \(keyName(key))\n" : "the lock on \(keyName(key)) is held by:\n"
        } else if l.branches.isEmpty {
            return "no branches\n"
        }
        if !l.branches.isEmpty {
            var t = Table(["TXID", "STATE", "COORDINATOR", "KEYS"])
            for b in l.branches { t.add([b.txid, b.state, b.coordinator ?? "-", keysCell(b.keys, total: b.keysTotal)]) }
            s += t.render()
        }
        if let waiters = l.waiters, !waiters.isEmpty {
            s += "waiting for its lock, first in line first: \(waiters.joined(separator: ", "))\n"
        }
        if let n = l.keysOmitted {
            s += "keys of \(n) branch\(n == 1 ? "" : "es") not named (the list's limit): txctl agent URL show TXID names them\n"
        }
        return s
    }

    /// A branch's locked keys in one table cell: the ones named, then how many more it holds.
    static func keysCell(_ keys: [BranchKey]?, total: Int?) -> String {
        let named = keys ?? []
        let total = total ?? named.count
        if total == 0 { return "-" }
        if named.isEmpty { return "\(total) key\(total == 1 ? "" : "s")" }
        let more = total - named.count
        return named.map { keyName($0.key) }.joined(separator: ", ") + (more > 0 ? " (+\(more) more)" : "")
    }

    /// Lines naming each key with its lock and the ops staged on it, under a heading.
    static func keyLines(_ heading: String, _ keys: [BranchKey]?, total: Int?) -> String {
        guard let keys, let total, total > 0 else { return "" }
        var t = Table(["KEY", "LOCK", "OPS"])
        for k in keys { t.add([keyName(k.key), k.lock, k.ops?.joined(separator: ",") ?? "-"]) }
        var s = "  \(heading) (\(total)\(total > keys.count ? ", the first \(keys.count) named" : "")):\n" + t.render(indent: "    ")
        if total > keys.count { s += "    ... and \(total - keys.count) more\n" }
        return s
    }

    /// A key as typed at a shell: quoted as JSON when it holds anything but plain characters,
    /// so a key with a space or a comma reads as one key.
    static func keyName(_ key: String) -> String {
        let plain = !key.isEmpty && key.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || "-_.:/@+=".unicodeScalars.contains($0) }
        return plain ? key : JSONWriter.quoted(key)
    }

    public static func branchDetail(_ b: BranchDetail) -> String {
        var rows: [(String, String)] = [("state", b.state), ("coordinator", b.coordinator ?? "-")]
        if let w = b.writeSetBytes { rows.append(("write set", "\(w) bytes")) }
        if let i = b.inquiries { rows.append(("inquiries", String(i))) }
        if let e = b.lastInquiryError { rows.append(("last inquiry error", e)) }
        if let h = b.heuristic {
            rows.append(("heuristic", "forced \(h.outcome) by \(h.operator) at \(h.at)"))
            rows.append(("reason", h.reason))
        }
        var s = "branch \(b.txid)\n"
        for (k, v) in rows { s += "  " + (k + ":").padded(20) + v + "\n" }
        s += keyLines("locks held", b.keys, total: b.keysTotal)
        if let h = b.heuristic, let keys = h.releasedKeys, let total = h.releasedKeysTotal, total > 0 {
            s += "  keys the force released (\(total)\(total > keys.count ? ", the first \(keys.count) named" : "")):\n"
            for k in keys { s += "    \(keyName(k))\n" }
            if total > keys.count { s += "    ... and \(total - keys.count) more\n" }
        }
        if b.state == "heuristic-mixed" {
            s += "  the coordinator decided differently from the forced outcome: data must be repaired by hand\n"
        }
        if b.forgotten == true {
            s += "  forgotten by an operator: the forced outcome stands and the branch no longer asks its coordinator (who and why: txctl log inspect on the agent's data directory)\n"
        }
        return s
    }
}

extension String {
    func padded(_ n: Int) -> String { count >= n ? self + " " : self + String(repeating: " ", count: n - count) }
    var isFinishedState: Bool { self == "committed" || self == "aborted" || self == "heuristic-mixed" }
}
