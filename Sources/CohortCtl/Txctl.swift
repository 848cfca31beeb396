import CohortCore
import CohortHTTP
import CohortPosix
import Foundation

/// The whole of `txctl`: `run` takes the arguments (without the program name) and returns the
/// exit status; everything it prints goes through the context.
public enum Txctl {
    static let globalValued: Set<String> = ["coordinator", "token-file"]
    public static let coordinatorStates = Coordinator.listStateFilters
    public static let agentStates = ["active", "preparing", "prepared", "committing", "forcing", "heuristic-committed",
                                     "heuristic-aborted", "forgetting", "heuristic-mixed", "in-doubt"]

    public static func run(_ argv: [String], _ ctx: CtlContext) -> Int32 {
        do {
            try dispatch(argv, ctx)
            return 0
        } catch let e as CtlError {
            ctx.err("error: \(e.message)\n")
            return e.exitCode
        } catch let e as UsageError {
            ctx.err("error: \(e.description) (see txctl --help)\n")
            return 2
        } catch {
            ctx.err("error: \(error)\n")
            return 1
        }
    }

    /// The words that are not options or option values, in order. An option left without its
    /// value (at the end, or followed by another option) is refused here, before the command is
    /// looked for: a lone `txctl --coordinator` said "no command given".
    static func words(_ argv: [String]) throws -> [String] {
        var out: [String] = []
        var i = 0
        let valued = globalValued.union(["state", "older-than", "limit", "reason", "operator", "interval"])
        while i < argv.count {
            let a = argv[i]
            if a == "--" { out.append(contentsOf: argv[(i + 1)...]); break }
            if a.hasPrefix("--") {
                if !a.contains("="), valued.contains(String(a.dropFirst(2))) {
                    guard i + 1 < argv.count, !argv[i + 1].hasPrefix("--") else { throw UsageError("\(a) needs a value") }
                    i += 1
                }
            } else if a != "-h" {
                out.append(a)
            }
            i += 1
        }
        return out
    }

    static func parse(_ argv: [String], valued: Set<String> = [], booleans: Set<String> = []) throws -> Arguments {
        try Arguments(argv, valued: valued.union(globalValued), booleans: booleans.union(["help"]))
    }

    static func dispatch(_ argv: [String], _ ctx: CtlContext) throws {
        let w = try words(argv)
        let wantsHelp = argv.contains("--help") || argv.contains("-h")
        guard let command = w.first else {
            if wantsHelp { ctx.out(Help.main + "\n"); return }
            throw CtlError.usage("no command given (see txctl --help)")
        }
        if command == "help" { ctx.out(Help.main + "\n"); return }
        let help: String
        switch command {
        case "list": help = Help.list
        case "show": help = Help.show
        case "explain": help = Help.explain
        case "submission": help = Help.submission
        case "retry": help = Help.retry
        case "commit", "abort": help = Help.force(command)
        case "watch": help = Help.watch
        case "stats": help = Help.stats
        case "agent": help = Help.agent
        case "log": help = Help.log
        case "outbox": help = Help.outbox
        default:
            throw CtlError.usage("unknown command \"\(command)\" (see txctl --help)")
        }
        if wantsHelp { ctx.out(help + "\n"); return }

        switch command {
        case "list": try list(argv, ctx)
        case "show": try show(argv, ctx)
        case "explain": try explain(argv, ctx)
        case "submission": try submission(argv, ctx)
        case "retry": try retry(argv, ctx)
        case "commit", "abort": try force(argv, ctx, outcome: command == "commit" ? "committed" : "aborted")
        case "watch": try watch(argv, ctx)
        case "stats": try stats(argv, ctx)
        case "agent": try agent(argv, ctx)
        case "log": try log(argv, ctx)
        case "outbox": try outbox(argv, ctx)
        default: break
        }
    }

    // MARK: - connection

    static func coordinator(_ a: Arguments, _ ctx: CtlContext) throws -> Remote {
        let url = a.string("coordinator") ?? ctx.environment["COHORT_COORDINATOR"]
        guard let url, !url.isEmpty else {
            throw CtlError.usage("no coordinator: pass --coordinator URL or set COHORT_COORDINATOR")
        }
        return try Remote(kind: .coordinator, url: url, token: token(a, ctx))
    }

    static func token(_ a: Arguments, _ ctx: CtlContext) throws -> String? {
        if let file = a.string("token-file") {
            // PosixFS says why (errno), as the servers do for their own --token-file.
            let bytes: [UInt8]
            do { bytes = try PosixFS.readFile(file) } catch { throw CtlError.usage("cannot read token file \(file): \(error)") }
            // Checked before it goes into a header: a line break in it would send a header
            // of its own (BearerToken).
            do { return try BearerToken.fromFile(bytes, file: file) } catch { throw CtlError.usage("\(error)") }
        }
        if let t = ctx.environment["COHORT_TOKEN"], !t.isEmpty {
            do { try BearerToken.check(t, source: "COHORT_TOKEN") } catch { throw CtlError.usage("\(error)") }
            return t
        }
        return nil
    }

    static func positional(_ a: Arguments, count: Int, usage: String) throws -> [String] {
        guard a.positional.count == count else {
            if a.positional.count > count { throw CtlError.usage("unexpected argument \"\(a.positional[count])\"; usage: \(usage)") }
            throw CtlError.usage("missing argument; usage: \(usage)")
        }
        return a.positional
    }

    /// A TXID argument, refused here when it cannot be one. An empty one made a different path
    /// (`/v1/transactions/`, which servers refuse), and one past the limit made the request's
    /// head too large for the server, whose answer named neither the argument nor the side.
    static func txid(_ s: String) throws -> String {
        guard !s.isEmpty else { throw CtlError.usage("TXID is empty") }
        guard s.utf8.count <= Limits.txidBytesMax else {
            throw CtlError.usage("TXID \"\(s.prefix(20))...\" is \(s.utf8.count) bytes; a txid is at most \(Limits.txidBytesMax)")
        }
        return s
    }

    static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#"))) ?? s
    }

    /// A query value: everything but unreserved characters percent-encoded (a key may hold
    /// `&`, `=`, `+` or `#`).
    static func escapeQueryValue(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")) ?? s
    }

    // MARK: - commands

    static func list(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, valued: ["state", "older-than", "limit"], booleans: ["json"])
        _ = try positional(a, count: 1, usage: "txctl list [--state S] [--older-than DURATION] [--limit N] [--json]")
        var query: [String] = []
        if let s = a.string("state") {
            guard coordinatorStates.contains(s) else {
                throw CtlError.usage("--state must be one of \(coordinatorStates.joined(separator: ", ")); got \"\(s)\"")
            }
            query.append("state=\(s)")
        }
        let limit = try a.int("limit", range: 1...20_000)
        let olderThan = try a.durationMs("older-than")
        // With --older-than the newest are dropped after fetching: fetch everything, then cut.
        if let limit, olderThan == nil { query.append("limit=\(limit)") }
        let remote = try coordinator(a, ctx)
        let path = "/v1/transactions" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        let list = try remote.get(path, TransactionList.self)
        var txs = list.transactions
        if list.truncated == true {
            ctx.err("note: the coordinator cut the list at \(txs.count) transactions (\(Limits.transactionsListedBytesMax >> 20) MiB of answer); narrow it with --state or a smaller --limit\n")
        }
        let now = ctx.now()
        if let olderThan {
            txs = txs.filter { tx in tx.createdAt.flatMap { Clock.parseISO8601($0) }.map { now - $0 >= olderThan } ?? true }
        }
        if let limit { txs = Array(txs.prefix(limit)) }
        ctx.out(a.has("json") ? JSONOut.encode(TransactionList(transactions: txs)) : Render.listTable(txs, nowMs: now))
    }

    static func fetch(_ a: Arguments, _ ctx: CtlContext, usage: String) throws -> TransactionView {
        let id = try txid(positional(a, count: 2, usage: usage)[1])
        let remote = try coordinator(a, ctx)
        return try remote.get("/v1/transactions/\(escape(id))", TransactionView.self)
    }

    static func show(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, booleans: ["json"])
        let tx = try fetch(a, ctx, usage: "txctl show TXID [--json]")
        ctx.out(a.has("json") ? JSONOut.encode(tx) : Render.show(tx, nowMs: ctx.now()))
    }

    static func explain(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, booleans: ["json"])
        let tx = try fetch(a, ctx, usage: "txctl explain TXID [--json]")
        let e = Explain.explain(tx, nowMs: ctx.now())
        ctx.out(a.has("json") ? JSONOut.encode(e) : Explain.render(e, nowMs: ctx.now()))
    }

    static func submission(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, booleans: ["json"])
        let id = try positional(a, count: 2, usage: "txctl submission REQUEST_ID [--json]")[1]
        guard !id.isEmpty, id.utf8.count <= Limits.requestIDBytesMax else {
            throw CtlError.usage("a request_id is 1-\(Limits.requestIDBytesMax) bytes")
        }
        let view = try coordinator(a, ctx).get("/v1/submissions/\(escape(id))", SubmissionView.self)
        ctx.out(a.has("json") ? JSONOut.encode(view) : Render.submission(view))
    }

    static func retry(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, booleans: ["json"])
        let id = try txid(positional(a, count: 2, usage: "txctl retry TXID")[1])
        let r = try coordinator(a, ctx).post("/v1/transactions/\(escape(id))/retry", body: [], RetryResponse.self)
        ctx.out(a.has("json") ? JSONOut.encode(r) : Render.retry(r))
    }

    /// What the audit trail records for a coordinator's force given without `--reason`.
    static func noReasonGiven(_ verb: String) -> String { "no reason given (txctl \(verb) --force without --reason)" }

    /// `reasonRequired` false: the contract's `txctl commit TXID --force` (and `abort`) is a
    /// whole command line, so a missing `--reason` is recorded as such instead of refused (it
    /// was refused, exit 2, until a docs audit in session 36). A blank one is still refused.
    static func forceBody(_ a: Arguments, _ ctx: CtlContext, outcome: String, verb: String, reasonRequired: Bool = true) throws -> [UInt8] {
        guard a.has("force") else {
            throw CtlError.usage("\(verb) needs --force: forcing an outcome is an operator's heuristic decision (add --dry-run to see what it would do)")
        }
        let given = a.string("reason")
        if given == nil && !reasonRequired {
            let body = ForceBody(outcome: outcome, reason: noReasonGiven(verb), operator: try operatorName(a, ctx), dryRun: a.has("dry-run"))
            return Array((try? JSONEncoder().encode(body)) ?? Data())
        }
        guard let reason = given, !reason.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw CtlError.usage("\(verb) --force needs --reason \"...\": why, for the audit trail")
        }
        let body = ForceBody(outcome: outcome, reason: reason, operator: try operatorName(a, ctx), dryRun: a.has("dry-run"))
        return Array((try? JSONEncoder().encode(body)) ?? Data())
    }

    static func force(_ argv: [String], _ ctx: CtlContext, outcome: String) throws {
        let verb = outcome == "committed" ? "commit" : "abort"
        let a = try parse(argv, valued: ["reason", "operator"], booleans: ["force", "dry-run", "json"])
        let id = try txid(positional(a, count: 2, usage: "txctl \(verb) TXID --force [--reason \"...\"] [--dry-run]")[1])
        let body = try forceBody(a, ctx, outcome: outcome, verb: verb, reasonRequired: false)
        let r = try coordinator(a, ctx).post("/v1/transactions/\(escape(id))/force", body: body, ForceResponse.self)
        ctx.out(a.has("json") ? JSONOut.encode(r) : Render.force(r, where: "at the coordinator"))
    }

    static func stats(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, booleans: ["json"])
        _ = try positional(a, count: 1, usage: "txctl stats [--json]")
        let st = try coordinator(a, ctx).get("/v1/stats", StatsResponse.self)
        ctx.out(a.has("json") ? JSONOut.encode(st) : Render.stats(st))
    }

    static func agent(_ argv: [String], _ ctx: CtlContext) throws {
        let w = try words(argv)
        guard w.count >= 3 else {
            throw CtlError.usage("usage: txctl agent URL list|show|commit|abort|forget ... (see txctl agent --help)")
        }
        let url = w[1]
        let sub = w[2]
        let remote = { (a: Arguments) in try Remote(kind: .agent, url: url, token: token(a, ctx)) }
        switch sub {
        case "list":
            let a = try parse(argv, valued: ["state", "key"], booleans: ["json"])
            _ = try positional(a, count: 3, usage: "txctl agent URL list [--state S] [--key K] [--json]")
            var query: [String] = []
            if let s = a.string("state") {
                guard agentStates.contains(s) else {
                    throw CtlError.usage("--state must be one of \(agentStates.joined(separator: ", ")); got \"\(s)\"")
                }
                query.append("state=\(s)")
            }
            if let k = a.string("key") {
                guard !k.isEmpty, k.utf8.count <= Limits.keyBytesMax else {
                    throw CtlError.usage("--key must be 1-\(Limits.keyBytesMax) bytes")
                }
                query.append("key=\(escapeQueryValue(k))")
            }
            let path = "/v1/branches" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
            let l = try remote(a).get(path, BranchList.self)
            ctx.out(a.has("json") ? JSONOut.encode(l) : Render.branchList(l))
            // An agent refusing new work because its data is older than what it acknowledged
            // (restored from an older copy) says so in /healthz: shown here, where an operator
            // looks at an agent. (Agents before session 37 never say it.)
            if !a.has("json"), let h = try? remote(a).get("/healthz", HealthResponse.self), let problem = h.problem {
                ctx.err("warning: \(problem.prefix(Limits.reasonBytesMax * 4))\n")
            }
        case "show":
            let a = try parse(argv, booleans: ["json"])
            let id = try txid(positional(a, count: 4, usage: "txctl agent URL show TXID [--json]")[3])
            let b = try remote(a).get("/v1/branches/\(escape(id))", BranchDetail.self)
            ctx.out(a.has("json") ? JSONOut.encode(b) : Render.branchDetail(b))
        case "commit", "abort":
            let a = try parse(argv, valued: ["reason", "operator"], booleans: ["force", "dry-run", "json", "against-coordinator", "coordinator-gone"])
            let p = try positional(a, count: 4, usage: "txctl agent URL \(sub) TXID --force --reason \"...\" [--dry-run] [--coordinator-gone] [--against-coordinator]")
            _ = try txid(p[3])
            let outcome = sub == "commit" ? "committed" : "aborted"
            let body = try forceBody(a, ctx, outcome: outcome, verb: "agent \(sub)")
            if !a.has("against-coordinator") {
                try coordinatorAllows(outcome, txid: p[3], agent: try remote(a), token: try token(a, ctx),
                                      alsoAsk: a.string("coordinator") ?? ctx.environment["COHORT_COORDINATOR"],
                                      coordinatorGone: a.has("coordinator-gone"))
            }
            let r = try remote(a).post("/v1/branches/\(escape(p[3]))/force", body: body, ForceResponse.self)
            ctx.out(a.has("json") ? JSONOut.encode(r) : Render.force(r, where: "at participant \(url)", recorded: "recorded durably at the participant as a heuristic decision"))
        case "forget":
            let a = try parse(argv, valued: ["reason", "operator"], booleans: ["dry-run", "json", "coordinator-gone"])
            let p = try positional(a, count: 4, usage: "txctl agent URL forget TXID --reason \"...\" [--dry-run] [--coordinator-gone]")
            _ = try txid(p[3])
            guard let reason = a.string("reason"), !reason.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw CtlError.usage("agent forget needs --reason \"...\": why, kept in the participant's log with who and when")
            }
            let body = ForgetBody(reason: reason, operator: try operatorName(a, ctx), dryRun: a.has("dry-run"))
            // Only a heuristic branch can be forgotten: any other is left to the agent to refuse,
            // with its reason, rather than to a coordinator check that cannot apply.
            let branch = try remote(a).get("/v1/branches/\(escape(p[3]))", BranchDetail.self)
            if branch.state.hasPrefix("heuristic-") && branch.state != "heuristic-mixed" {
                try coordinatorIsGone(txid: p[3], branch: branch, token: try token(a, ctx),
                                      alsoAsk: a.string("coordinator") ?? ctx.environment["COHORT_COORDINATOR"], coordinatorGone: a.has("coordinator-gone"))
            }
            let r = try remote(a).post("/v1/branches/\(escape(p[3]))/forget", body: Array((try? JSONEncoder().encode(body)) ?? Data()), ForceResponse.self)
            ctx.out(a.has("json") ? JSONOut.encode(r) : Render.forget(r, where: "at participant \(url)"))
        default:
            throw CtlError.usage("unknown agent command \"\(sub)\": use list, show, commit, abort or forget (see txctl agent --help)")
        }
    }

    static func operatorName(_ a: Arguments, _ ctx: CtlContext) throws -> String {
        let op = a.string("operator") ?? "\(ctx.environment["USER"] ?? ctx.environment["LOGNAME"] ?? "unknown")@\(ctx.hostName)"
        guard !op.isEmpty else { throw CtlError.usage("--operator must not be empty") }
        return op
    }

    /// The first decided-or-pending answer from the coordinators a branch may have (the one it
    /// names, then `alsoAsk`), or, when none gives one, why each could not.
    static func askCoordinators(txid: String, branch: BranchDetail, token: String?, alsoAsk: String?) -> (answer: (url: String, outcome: String)?, silent: [String]) {
        var urls: [String] = []
        for u in [branch.coordinator, alsoAsk] {
            if let u, !u.isEmpty, !urls.contains(u) { urls.append(u) }
        }
        var silent: [String] = []
        for url in urls {
            let answer: InquiryResponse
            do {
                answer = try Remote(kind: .coordinator, url: url, token: token).get("/v1/transactions/\(escape(txid))/outcome", InquiryResponse.self)
            } catch {
                silent.append("\(url): \(error)")
                continue
            }
            if ["committed", "aborted", "pending"].contains(answer.outcome) { return ((url, answer.outcome), silent) }
            silent.append("\(url): another coordinator answers there now (\(answer.outcome)); \(txid) was begun by coordinator \(txid.prefix(8)), whose data directory may have been replaced")
        }
        return (nil, silent)
    }

    static func noAnswer(_ txid: String, _ silent: [String]) -> String {
        silent.isEmpty ? "no coordinator URL is known for \(txid) (the branch names none; pass --coordinator URL)" : "could not learn \(txid)'s outcome: " + silent.joined(separator: "; ")
    }

    /// Forgetting a heuristic branch stops its inquiries, so it is for a coordinator gone for
    /// good (one that comes back still hears of a difference, when it sends its decision). One
    /// that answers makes it needless (the branch learns a decided outcome itself at its next
    /// inquiry, within seconds) or premature (undecided: decide there).
    static func coordinatorIsGone(txid: String, branch: BranchDetail, token: String?, alsoAsk: String?, coordinatorGone: Bool) throws {
        let (answer, silent) = askCoordinators(txid: txid, branch: branch, token: token, alsoAsk: alsoAsk)
        if let (url, outcome) = answer {
            if outcome == "pending" {
                throw CtlError.failed("the coordinator at \(url) is up and has not decided \(txid): decide there (txctl --coordinator \(url) commit|abort \(txid) --force ...); the branch then learns the outcome, and reports heuristic-mixed if it differs from the forced one")
            }
            throw CtlError.failed("the coordinator at \(url) answers that \(txid) is \(outcome): the branch learns that by itself at its next inquiry (within seconds) and finishes, reporting heuristic-mixed if the forced outcome differs; there is nothing to forget")
        }
        if coordinatorGone { return }
        throw CtlError.failed("\(noAnswer(txid, silent)). Forgetting the branch stops it asking for good: if its coordinator comes back with another decision, nothing reports the transaction heuristic-mixed. Once you know the coordinator is gone for good, add --coordinator-gone")
    }

    /// A forced outcome at a participant is for a coordinator gone for good. When the branch's
    /// coordinator answers, its word stands: forcing the other outcome here would split the
    /// transaction (both sides would then report heuristic-mixed, and someone repairs data by
    /// hand), and forcing while it has not decided takes the decision from the process that
    /// can make it for every branch. Asked: the coordinator the branch names and the one txctl
    /// was pointed at (`--coordinator`, `COHORT_COORDINATOR`), since the branch's URL may be
    /// stale (a proxy, an old address) while the coordinator still answers elsewhere.
    /// When none of them can say (unreachable, or another coordinator now answers there: its
    /// data directory was replaced), the force is refused unless the operator says
    /// `--coordinator-gone`: a game-day probe forced an abort there without a word of warning
    /// while another participant had committed, a split no tool reported afterwards.
    static func coordinatorAllows(_ outcome: String, txid: String, agent: Remote, token: String?, alsoAsk: String?,
                                  coordinatorGone: Bool) throws {
        let branch = try agent.get("/v1/branches/\(escape(txid))", BranchDetail.self)
        // A branch the participant has finished (or found heuristic-mixed: its coordinator's
        // outcome is known) keeps its outcome there: a force changes nothing (the same outcome
        // is "nothing to do", the other is refused), so the agent answers it,
        // as it does a forget of such a branch. Asking its coordinator first told an operator
        // that a committed branch, which names no coordinator any more, could be split by the
        // force and wanted --coordinator-gone (a docs walkthrough, session 38).
        if ["committed", "aborted", "heuristic-mixed"].contains(branch.state) { return }
        let (answer, silent) = askCoordinators(txid: txid, branch: branch, token: token, alsoAsk: alsoAsk)
        if let (url, answered) = answer {
            switch answered {
            case outcome:
                return
            case "pending":
                throw CtlError.failed("the coordinator at \(url) is up and has not decided \(txid): decide there (txctl --coordinator \(url) \(outcome == "committed" ? "commit" : "abort") \(txid) --force ...), which every branch then follows; if you must, add --against-coordinator")
            default:
                throw CtlError.failed("the coordinator at \(url) answers that \(txid) is \(answered): forcing \(outcome) here would split the transaction (heuristic-mixed). The branch learns the outcome by asking the coordinator; if you must, add --against-coordinator")
            }
        }
        if coordinatorGone { return }
        throw CtlError.failed("""
            \(noAnswer(txid, silent)). \
            Its coordinator's decision may still exist: in its log if the disk survives (txctl log inspect DIR), or as the other participants' outcomes (txctl agent URL show \(txid) at each). One committed means commit; one aborted means abort; if every one is still in doubt, nobody can know, and a forced outcome may need repair by hand. Forcing \(outcome) here without that check can split the transaction with no report of it. Once you have checked, add --coordinator-gone
            """)
    }

    static func outbox(_ argv: [String], _ ctx: CtlContext) throws {
        let w = try words(argv)
        guard w.count >= 3 else {
            throw CtlError.usage("usage: txctl outbox URL list [--dead] [--limit N] [--json] | txctl outbox URL replay ID | txctl outbox URL discard ID --reason R")
        }
        let url = w[1]
        let sub = w[2]
        let remote = { (a: Arguments) in try Remote(kind: .outbox, url: url, token: token(a, ctx)) }
        switch sub {
        case "list":
            let a = try parse(argv, valued: ["limit"], booleans: ["json", "dead"])
            _ = try positional(a, count: 3, usage: "txctl outbox URL list [--dead] [--limit N] [--json]")
            var path = "/v1/outbox?dead=\(a.has("dead"))"
            if let n = try a.int("limit", range: 1...1000) { path += "&limit=\(n)" }
            let l = try remote(a).get(path, OutboxList.self)
            ctx.out(a.has("json") ? JSONOut.encode(l) : Render.outboxList(l, dead: a.has("dead"), nowMs: ctx.now(), url: url))
        case "replay":
            let a = try parse(argv, booleans: ["json"])
            let p = try positional(a, count: 4, usage: "txctl outbox URL replay ID")
            guard let id = Int64(p[3]), id > 0 else {
                throw CtlError.usage("message ID must be a positive integer (the id column of txctl outbox URL list --dead); got \"\(p[3])\"")
            }
            let r = try remote(a).post("/v1/outbox/\(id)/replay", body: [], OutboxReplay.self)
            ctx.out(a.has("json") ? JSONOut.encode(r) : "message \(r.id) is pending again: the relay delivers it next, before its key's later messages\n")
        case "discard":
            let a = try parse(argv, valued: ["reason"], booleans: ["json"])
            let p = try positional(a, count: 4, usage: "txctl outbox URL discard ID --reason \"...\"")
            guard let id = Int64(p[3]), id > 0 else {
                throw CtlError.usage("message ID must be a positive integer (the id column of txctl outbox URL list --dead); got \"\(p[3])\"")
            }
            guard let reason = a.string("reason"), !reason.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw CtlError.usage("discard needs --reason \"...\": the message is never delivered, and the reason stays with it")
            }
            guard reason.utf8.count <= Limits.reasonBytesMax else {
                throw CtlError.usage("--reason must be 1-\(Limits.reasonBytesMax) bytes, got \(reason.utf8.count)")
            }
            var w = JSONWriter()
            w.beginObject(); w.field("reason", reason); w.endObject()
            let r = try remote(a).post("/v1/outbox/\(id)/discard", body: w.bytes, OutboxReplay.self)
            ctx.out(a.has("json") ? JSONOut.encode(r) : "message \(r.id) is discarded: it is never delivered, and its key's later messages go on; the row keeps your reason until the relay's retention has passed\n")
        default:
            throw CtlError.usage("unknown outbox command \"\(sub)\": use list, replay or discard (see txctl outbox --help)")
        }
    }

    public struct OutboxList: Codable, Equatable {
        public typealias Message = OutboxMessageView
        public var source: String
        public var pending: Int
        public var dead: Int
        public var leaseHeld: Bool
        public var oldestPendingAgeMs: Int64?
        public var sinkUnavailable: OutboxSinkTrouble?
        public var messages: [Message]
        enum CodingKeys: String, CodingKey {
            case source, pending, dead, messages
            case leaseHeld = "lease_held"
            case oldestPendingAgeMs = "oldest_pending_age_ms"
            case sinkUnavailable = "sink_unavailable"
        }
    }

    public struct OutboxReplay: Codable, Equatable {
        public var id: Int64
        public var state: String
    }

    static func log(_ argv: [String], _ ctx: CtlContext) throws {
        let a = try parse(argv, booleans: ["json"])
        guard a.positional.count >= 2 else { throw CtlError.usage("usage: txctl log inspect|verify DIR") }
        let sub = a.positional[1]
        guard sub == "inspect" || sub == "verify" else {
            throw CtlError.usage("unknown log command \"\(sub)\": use inspect or verify")
        }
        let p = try positional(a, count: 3, usage: "txctl log \(sub) DIR [--json]")
        let report = try LogTools.inspect(p[2])
        if sub == "inspect" {
            ctx.out(a.has("json") ? JSONOut.encode(report) : LogTools.renderInspect(report))
            return
        }
        let (ok, text) = LogTools.verifyLine(report)
        if a.has("json") {
            ctx.out(JSONOut.encode(VerifyResult(ok: ok, directory: report.directory, kind: report.kind, segments: report.segments.count,
                                                records: report.records, problems: report.problems)))
        } else {
            ctx.out(text)
        }
        if !ok { throw CtlError.failed(LogTools.verifyError(report, text: text)) }
    }

    public struct VerifyResult: Codable, Equatable {
        public let ok: Bool
        public let directory: String
        public let kind: String
        public let segments: Int
        public let records: Int
        public let problems: [LogReport.Problem]
    }
}

/// One coordinator or agent, over the blocking HTTP client, with errors turned into clear lines.
final class Remote {
    enum Kind { case coordinator, agent, outbox }
    let kind: Kind
    let base: String
    let client: BlockingHTTPClient
    let hasToken: Bool

    init(kind: Kind, url: String, token: String?) throws {
        self.kind = kind
        var u = url
        while u.hasSuffix("/") { u.removeLast() }
        guard u.hasPrefix("http://") else {
            throw CtlError.usage("\(kind == .coordinator ? "coordinator" : kind == .agent ? "agent" : "service") URL must look like http://HOST:PORT; got \"\(url)\"")
        }
        // A base URL, as every server's base URL flags take it: with a path, each request went
        // out and came back "no route for GET /PATH/v1/..." (exit 1), a wrong command line.
        // A query or fragment too: `http://HOST:PORT?x=1` went out as `...?x=1/v1/stats` and came
        // back "no route for GET /" (exit 1; a docs audit, session 36).
        let rest = u.dropFirst("http://".count)
        if let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) {
            throw CtlError.usage("\(kind == .coordinator ? "coordinator" : kind == .agent ? "agent" : "service") URL is a base URL, http://HOST:PORT without a path (txctl adds each path itself); got \"\(url)\" with \"\(rest[slash...])\"")
        }
        // Checked now, as the servers check their base URL flags: a port past 65535, an IPv6
        // literal or a user@ went on to the first request and came back "bad coordinator URL U:
        // invalid URL: U/v1/transactions", naming neither the flag nor what was wrong with it.
        guard HTTPClient.canSend(to: u) else {
            throw CtlError.usage("\(kind == .coordinator ? "coordinator" : kind == .agent ? "agent" : "service") URL needs a host (a name or an IPv4 address) and, if given, a port of 1-65535; got \"\(url.prefix(200))\"")
        }
        base = u
        hasToken = token != nil
        client = BlockingHTTPClient(bearerToken: token)
    }

    var name: String {
        switch kind {
        case .coordinator: return "coordinator"
        case .agent: return "agent"
        case .outbox: return "service"
        }
    }

    func get<T: Decodable>(_ path: String, _ type: T.Type) throws -> T {
        try decode(call("GET", path, body: []), type)
    }

    func post<T: Decodable>(_ path: String, body: [UInt8], _ type: T.Type) throws -> T {
        try decode(call("POST", path, body: body), type)
    }

    func call(_ method: String, _ path: String, body: [UInt8]) throws -> HTTPClientResponse {
        let response: HTTPClientResponse
        do {
            response = try client.request(method, base + path, body: body,
                                          headers: body.isEmpty ? [] : [("Content-Type", "application/json")])
        } catch let e as HTTPClientError {
            if case .invalidURL = e { throw CtlError.usage("bad \(name) URL \(base): \(e)") }
            if case .responseTooLarge = e {
                // The server answered: saying "cannot reach" sent operators to check a running
                // coordinator (a black-box probe, `list --limit 20000` over 10,000 parked).
                throw CtlError.failed("the \(name) at \(base) answered with more than \(Limits.httpResponseBytesMax) bytes; ask for less (a smaller --limit, or --state)")
            }
            switch kind {
            case .coordinator:
                throw CtlError.failed("cannot reach coordinator at \(base) (\(e)); is cohortd running? For a stopped coordinator, try: txctl log inspect DATA_DIR")
            case .agent:
                throw CtlError.failed("cannot reach agent at \(base) (\(e)); is cohort-agent running?")
            case .outbox:
                throw CtlError.failed("cannot reach the service at \(base) (\(e)); is its relay (cohort-relay --port N, or the service) running?")
            }
        }
        if response.status == 200 || response.status == 201 { return response }
        let cohortError = try? response.decode(ErrorBody.self).error
        let message = cohortError ?? clip(response.bodyString, 200)
        if cohortError == nil && response.status != 401 {
            // Every Cohort server answers a refusal as {"error": "..."}. Anything else is another
            // program at that address (a web server, a proxy's error page): its body was printed
            // as the error, a line of HTML, or "error: {}", which named neither the status nor
            // the likely cause (a docs audit, session 36).
            let body = response.bodyString.trimmingCharacters(in: .whitespacesAndNewlines)
            let what = kind == .coordinator ? "a coordinator (cohortd)" : kind == .agent ? "a participant agent" : "a process running an outbox relay"
            throw CtlError.failed("the \(name) at \(base) answered HTTP \(response.status) to \(method) \(path.split(separator: "?").first ?? "") without a Cohort error (\(body.isEmpty ? "empty body" : "body: \(clip(body, 80))")); is \(base) \(what), or does another program (a proxy, a web server) answer there?")
        }
        switch response.status {
        case 401:
            throw CtlError.failed(hasToken
                ? "the \(name) at \(base) rejected the bearer token (HTTP 401); check --token-file or COHORT_TOKEN"
                : "the \(name) at \(base) requires a bearer token (HTTP 401); pass --token-file F or set COHORT_TOKEN")
        case 400:
            throw CtlError.usage("the \(name) refused the request: \(message)")
        case 404 where message.hasPrefix("no route for") || message.hasPrefix("no such endpoint"):
            // The server has no such route at all: most likely the wrong kind of server (an
            // agent's URL given as the coordinator's...), which "no route for GET
            // /v1/transactions" left the operator to work out (a game-day probe).
            if let other = identify() {
                throw CtlError.failed("\(base) is \(other.what), not \(kind == .coordinator ? "a coordinator" : kind == .agent ? "a participant agent" : "a process running an outbox relay") (it has no \(method) \(path.split(separator: "?").first ?? "")); \(other.hint)")
            }
            if kind == .outbox { throw CtlError.failed("\(base) has no outbox admin API (\(message)); point txctl at the process that runs the relay") }
            throw CtlError.failed(message)
        default:
            throw CtlError.failed(message.isEmpty ? "the \(name) answered HTTP \(response.status)" : message)
        }
    }

    /// What kind of Cohort server answers at `base`, when it is not `kind`: each kind has a
    /// route the others lack. Nil when none answers as another kind.
    func identify() -> (what: String, hint: String)? {
        let kinds: [(Kind, String, String, String)] = [
            (.coordinator, "/v1/stats", "a coordinator (cohortd)", "pass it as --coordinator URL (txctl list, show, explain ...)"),
            (.agent, "/v1/branches", "a participant agent", "use txctl agent \(base) list|show|commit|abort|forget"),
            (.outbox, "/v1/outbox", "a process running an outbox relay", "use txctl outbox \(base) list|replay|discard"),
        ]
        for (k, path, what, hint) in kinds where k != kind {
            if let r = try? client.request("GET", base + path), r.status == 200 { return (what, hint) }
        }
        return nil
    }

    func decode<T: Decodable>(_ r: HTTPClientResponse, _ type: T.Type) throws -> T {
        do {
            return try r.decode(type)
        } catch {
            throw CtlError.failed("unexpected answer from the \(name) at \(base): \(clip(r.bodyString, 120))")
        }
    }
}
