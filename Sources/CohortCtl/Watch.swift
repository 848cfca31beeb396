import CohortCore
import Foundation

public enum Watch {
    public static let clear = "\u{1B}[H\u{1B}[2J"
    static let enterScreen = "\u{1B}[?1049h\u{1B}[?25l"
    static let leaveScreen = "\u{1B}[?25h\u{1B}[?1049l"

    /// One frame: a header, counts and rates, then the unfinished transactions (in-flight:
    /// active, preparing, deciding; in doubt: committing; parked), oldest problems first.
    public static func frame(url: String, stats: StatsResponse?, unfinished: [TransactionView]?, error: String?,
                             nowMs: Int64, intervalMs: Int64, columns: Int = 120, maxRows: Int = 30) -> String {
        var s = "txctl watch  \(url)  \(TimeFormat.iso8601(ms: nowMs).prefix(19).replacingOccurrences(of: "T", with: " "))Z  every \(TimeFormat.duration(ms: intervalMs))  (q quits)\n"
        if let error {
            s += "\n  cannot refresh: \(error)\n"
        }
        if let st = stats {
            let rate = { (k: String) in Render.formatNumber(st.ratesPerS[k] ?? 0) + "/s" }
            s += "rates     commit \(rate("committed"))  abort \(rate("aborted"))   totals: committed \(st.totals["committed"] ?? 0), aborted \(st.totals["aborted"] ?? 0)\n"
            s += "latency   commit p50 \(Render.formatNumber(st.commitLatency.p50Ms))ms  p99 \(Render.formatNumber(st.commitLatency.p99Ms))ms   uptime \(TimeFormat.duration(ms: st.uptimeS * 1000))\n"
        }
        if let txs = unfinished {
            let inFlight = txs.filter { ["active", "preparing", "deciding"].contains($0.state) }.count
            let inDoubt = txs.filter { $0.state == "committing" }.count
            let parked = txs.filter { $0.parked == true }.count
            s += "open      in-flight \(inFlight)  in-doubt \(inDoubt)  parked \(parked)\n\n"
            if txs.isEmpty {
                s += "no unfinished transactions\n"
            } else {
                // Parked first, then in doubt, then in flight; oldest first within each.
                func rank(_ t: TransactionView) -> Int { t.parked == true ? 0 : t.state == "committing" ? 1 : 2 }
                let sorted = txs.sorted { (rank($0), $0.createdAt ?? "") < (rank($1), $1.createdAt ?? "") }
                var t = Table(["TXID", "STATE", "AGE", "BRANCHES", "NOTE"])
                for tx in sorted.prefix(maxRows) {
                    t.add([tx.txid, tx.state + (tx.parked == true ? "*" : ""), Clock.age(tx.createdAt, nowMs: nowMs),
                           Render.branchesCell(tx), Render.noteCell(tx, width: 50)])
                }
                s += t.render()
                if sorted.count > maxRows { s += "... and \(sorted.count - maxRows) more (txctl list --state in-doubt)\n" }
                if parked > 0 { s += "* parked: retry budget spent; see txctl explain TXID\n" }
            }
        }
        // Cut long lines so the screen does not wrap.
        return s.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.count > columns ? String($0.prefix(columns)) : String($0) }
            .joined(separator: "\n")
    }
}

extension Txctl {
    static func watch(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, valued: ["interval"], booleans: ["once"])
        _ = try positional(a, count: 1, usage: "txctl watch [--interval 1s] [--once]")
        let interval = try a.durationMs("interval", default: 1000)!
        guard interval >= 100 else { throw CtlError.usage("--interval must be at least 100ms") }
        let remote = try coordinator(a, ctx)

        func draw(columns: Int) throws -> String {
            var stats: StatsResponse?
            var txs: [TransactionView]?
            var error: String?
            do {
                stats = try remote.get("/v1/stats", StatsResponse.self)
                txs = try remote.get("/v1/transactions?state=unfinished&limit=200", TransactionList.self).transactions
            } catch let e as CtlError {
                if a.has("once") { throw e }
                error = e.message
            }
            return Watch.frame(url: remote.base, stats: stats, unfinished: txs, error: error,
                               nowMs: ctx.now(), intervalMs: interval, columns: columns)
        }

        if a.has("once") {
            ctx.out(try draw(columns: 10_000))
            return
        }
        guard let term = ctx.terminal else {
            throw CtlError.usage("txctl watch needs a terminal; use --once to print one frame")
        }
        do { try term.enterRawMode() } catch {
            throw CtlError.failed("cannot put the terminal in raw mode: \(error)")
        }
        ctx.out(Watch.enterScreen)
        defer {
            ctx.out(Watch.leaveScreen)
            term.restore()
        }
        var inputOpen = true
        while true {
            let frame = try draw(columns: term.columns ?? 120)
            ctx.out(Watch.clear + frame.replacingOccurrences(of: "\n", with: "\r\n"))
            let deadline = ctx.now() + interval
            var redraw = false
            while !redraw {
                let left = deadline - ctx.now()
                if left <= 0 { break }
                if !inputOpen {
                    ctx.sleepMs(Int(left))
                    break
                }
                switch term.readKey(timeoutMs: Int(left)) {
                case .byte(let b):
                    // q, Q, Ctrl-C, Ctrl-D, Esc quit; space or r redraws now.
                    if b == UInt8(ascii: "q") || b == UInt8(ascii: "Q") || b == 3 || b == 4 || b == 27 { return }
                    if b == UInt8(ascii: " ") || b == UInt8(ascii: "r") { redraw = true }
                case .none:
                    break
                case .closed:
                    inputOpen = false
                }
            }
        }
    }
}
