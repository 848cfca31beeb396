import CohortClient
import CohortOutbox
import CohortSQLite
import Foundation

/// What a run of the `outbox` topology keeps besides the processes.
final class OutboxRunState: @unchecked Sendable {
    let producerDB: String
    let consumerDB: String
    /// Set by `dead_letters` with `replay` ("the fix is deployed"): later consumer starts get
    /// `--accept-poison`. Read and written under the run's lock.
    var consumerAcceptsPoison = false

    init(producerDB: String, consumerDB: String) {
        self.producerDB = producerDB
        self.consumerDB = consumerDB
    }
}

/// Both databases read at one moment: the truth the outbox checks judge.
struct OutboxSnapshot {
    struct Row {
        var id: Int64
        var key: String
        var seq: Int64
        /// 0 pending, 1 delivered, 2 dead.
        var state: Int64
        var poison: Bool
        var rollback: Bool
    }
    struct Effect {
        var messageID: String
        var key: String
        var seq: Int64
    }
    /// The producer's outbox table, in id (commit) order.
    var rows: [Row] = []
    /// The producer's business rows: key → seqs of the committed orders.
    var orders: [String: [Int64]] = [:]
    /// The consumer's applications, in the order it applied them.
    var effects: [Effect] = []
    var rollbackMessages: Int64 = 0
    var orderViolations: Int64 = 0

    var deadKeys: Set<String> { Set(rows.filter { $0.state == 2 }.map(\.key)) }
    /// Pending messages not waiting behind a dead letter of their key.
    var flowingPending: [Row] { let dead = deadKeys; return rows.filter { $0.state == 0 && !dead.contains($0.key) } }
    /// Delivered messages the consumer has not applied (yet: a Redis consumer lags the relay).
    var deliveredNotApplied: [Row] {
        let applied = Set(effects.map(\.messageID))
        return rows.filter { $0.state == 1 && !applied.contains("producer:\($0.id)") }
    }

    /// What is wrong with this state at rest (empty: nothing). Per key, the business rows' seqs
    /// are 1, 2, ...; the messages are exactly the business rows (none from a rolled-back
    /// transaction, none missing); the consumer applied each once, in commit order, all of them
    /// up to the key's first dead letter (all but the dead ones when dead letters do not block).
    func problems(deadLettersBlockKeys blocking: Bool, deadLettersExpected: Bool) -> [String] {
        var problems: [String] = []
        // Exactly once.
        var seen: [String: Int] = [:]
        for e in effects { seen[e.messageID, default: 0] += 1 }
        let twice = seen.filter { $0.value > 1 }.map(\.key).sorted()
        if !twice.isEmpty { problems.append("\(twice.count) messages applied more than once (\(twice.prefix(5).joined(separator: ", ")))") }
        // Nothing from a rolled-back transaction.
        let rolledBack = rows.filter(\.rollback)
        if !rolledBack.isEmpty { problems.append("\(rolledBack.count) outbox rows from rolled-back transactions (first id \(rolledBack[0].id))") }
        if rollbackMessages > 0 { problems.append("the consumer applied \(rollbackMessages) messages of rolled-back transactions") }
        // (Where dead letters do not block, the consumer sees a gap at each one: the per-key
        // comparison below is the verdict then.)
        if blocking && orderViolations > 0 { problems.append("the consumer saw \(orderViolations) per-key order violations") }
        // Each applied message is the row it names.
        let byID = Dictionary(rows.map { ("producer:\($0.id)", $0) }, uniquingKeysWith: { a, _ in a })
        let strangers = effects.filter { e in byID[e.messageID].map { $0.key != e.key || $0.seq != e.seq } ?? true }
        if !strangers.isEmpty { problems.append("\(strangers.count) applied messages match no outbox row (\(strangers.prefix(3).map(\.messageID).joined(separator: ", ")))") }
        // Per key: a message for every business row and none without; applied in commit order,
        // all of them except behind a dead letter.
        var rowsByKey: [String: [Row]] = [:]
        for row in rows { rowsByKey[row.key, default: []].append(row) }
        var appliedByKey: [String: [Int64]] = [:]
        for e in effects { appliedByKey[e.key, default: []].append(e.seq) }
        var badKeys: [String] = []
        for key in Set(rowsByKey.keys).union(orders.keys).union(appliedByKey.keys).sorted() {
            let keyRows = rowsByKey[key] ?? []
            let keyOrders = orders[key] ?? []
            if keyOrders != (0..<keyOrders.count).map({ Int64($0 + 1) }) {
                badKeys.append("\(key): business rows have seqs \(keyOrders.prefix(8)) (expected 1, 2, ...)")
            }
            if keyRows.map(\.seq) != keyOrders {
                badKeys.append("\(key): messages \(keyRows.map(\.seq).prefix(8)) differ from business rows \(keyOrders.prefix(8))")
                continue
            }
            var expected: [Int64] = []
            for row in keyRows {
                if row.state == 2 {
                    if blocking { break } else { continue }
                }
                expected.append(row.seq)
            }
            let applied = appliedByKey[key] ?? []
            if applied != expected {
                badKeys.append("\(key): applied \(applied.count) messages \(applied.prefix(8)), expected \(expected.count) \(expected.prefix(8))")
            }
        }
        if !badKeys.isEmpty { problems.append(badKeys.prefix(4).joined(separator: "; ") + (badKeys.count > 4 ? " (\(badKeys.count) keys)" : "")) }
        let dead = rows.filter { $0.state == 2 }
        if !dead.isEmpty && !deadLettersExpected {
            problems.append("\(dead.count) dead letters, and the scenario expects none (keys \(Set(dead.map(\.key)).sorted().prefix(5).joined(separator: ", ")))")
        }
        return problems
    }
}

extension ScenarioRun {
    private var outbox: OutboxRunState { outboxRun! }

    /// The relays' `--dead-letters-block-key` (default true).
    private var deadLettersBlockKeys: Bool {
        !scenario.topology.processes.values.contains { $0.flags.joined(separator: " ").contains("--dead-letters-block-key false") }
    }

    // MARK: - processes

    func outboxArguments(_ name: String, port: Int) -> (String, [String]) {
        let flags = scenario.topology.processes[name]?.flags ?? []
        let state = outbox
        switch name {
        case "consumer":
            var args = ["--db", state.consumerDB, "--port", String(port)]
            if let r = redis { args += ["--redis", r.url, "--stream", "cohort-outbox", "--group", "demo", "--name", "consumer"] }
            lock.lock()
            if state.consumerAcceptsPoison { args.append("--accept-poison") }
            lock.unlock()
            return ("outbox-demo-consumer", args + flags)
        case "producer":
            let w = scenario.workload.outbox ?? OutboxWorkloadConfig()
            var args = ["--db", state.producerDB, "--name", "producer", "--port", String(port), "--hold",
                        "--count", String(w.count), "--rate", String(w.rate), "--keys", String(w.keys), "--threads", String(w.threads)]
            if let n = w.rollbackEvery { args += ["--rollback-every", String(n)] }
            if let n = w.poisonEvery { args += ["--poison-every", String(n)] }
            return ("outbox-demo-producer", args + flags)
        default:
            let sink = redis?.url ?? (url("consumer") + "/v1/inbox")
            return ("cohort-relay", ["--db", state.producerDB, "--sink", sink, "--port", String(port)] + flags)
        }
    }

    /// Starts Redis (with `sink: redis`), the consumer, the producer (it creates the database and
    /// starts producing at once; the relays open its database) and the relays.
    func startOutbox() throws {
        let t = scenario.topology.outbox!
        for d in ["producer", "consumer"] {
            try FileManager.default.createDirectory(atPath: "\(dataDir)/\(d)", withIntermediateDirectories: true)
        }
        if t.sink == .redis {
            let server = try RedisServer(directory: dataDir + "/redis")
            redis = server
            setPort("redis", server.port)
        }
        outboxRun = OutboxRunState(producerDB: dataDir + "/producer/producer.db", consumerDB: dataDir + "/consumer/consumer.db")
        for name in t.processNames {
            guard startProcess(name) else { throw ManagedProcessError("\(name) did not start: \(startFailures[name] ?? "")") }
            // With two relays, the first is the holder a scenario's faults name ("the holder is
            // frozen"): the second starts once the first holds the lease. Started back to back,
            // on a loaded machine the second took it first now and then, so the pause froze a
            // standby and the fencing check found nothing refused.
            if t.relayNames.count > 1, name == t.relayNames[0] {
                let api = CohortAPI(coordinatorURL: "", connectTimeoutMs: 500, requestTimeoutMs: 2000)
                let deadline = Date().addingTimeInterval(20)
                while relayMetric(api, name, "cohort_outbox_lease_held") != 1 {
                    guard Date() < deadline else { throw ManagedProcessError("\(name) did not take the relay lease within 20 s of its start") }
                    Thread.sleep(forTimeInterval: 0.02)
                }
            }
        }
        event("outbox topology up: sink \(redis?.url ?? url("consumer") + "/v1/inbox"), relays \(t.relayNames.joined(separator: ", "))")
    }

    // MARK: - the workload

    /// The producer process does the work; the workload is over when it reports `done`.
    func runOutboxWorkload(deadline: Date) {
        let api = CohortAPI(coordinatorURL: "", connectTimeoutMs: 500, requestTimeoutMs: 2000)
        while Date() < deadline {
            if producerState(api)?["done"] as? Bool == true { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        event("the producer did not finish before the workload's 60 s limit")
    }

    func outboxWorkloadSummary() -> String {
        let api = CohortAPI(coordinatorURL: "", connectTimeoutMs: 500, requestTimeoutMs: 2000)
        guard let s = producerState(api) else { return "producer state unreadable" }
        return "producer committed \(s["committed"] as? Int ?? 0), rolled back \(s["rolled_back"] as? Int ?? 0) (this start)"
    }

    private func producerState(_ api: CohortAPI) -> [String: Any]? { json(api, url("producer") + "/v1/state") }

    private func json(_ api: CohortAPI, _ url: String) -> [String: Any]? {
        guard let r = try? api.raw("GET", url), r.status == 200 else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any]
    }

    // MARK: - reading the databases

    func outboxSnapshot() throws -> OutboxSnapshot {
        var s = OutboxSnapshot()
        let p = try SQLiteConnection(path: outbox.producerDB, fairWriteLock: false)
        defer { p.close() }
        for r in try p.query("SELECT id, key, payload, state FROM outbox ORDER BY id") {
            let payload = (try? JSONSerialization.jsonObject(with: Data((r[2].text ?? "").utf8))) as? [String: Any] ?? [:]
            s.rows.append(OutboxSnapshot.Row(id: r[0].int ?? 0, key: r[1].text ?? "", seq: (payload["seq"] as? NSNumber)?.int64Value ?? -1,
                                             state: r[3].int ?? -1, poison: payload["poison"] as? Bool ?? false,
                                             rollback: payload["rollback"] as? Bool ?? false))
        }
        for r in try p.query("SELECT key, seq FROM orders ORDER BY seq") {
            s.orders[r[0].text ?? "", default: []].append(r[1].int ?? -1)
        }
        let c = try SQLiteConnection(path: outbox.consumerDB, fairWriteLock: false)
        defer { c.close() }
        for r in try c.query("SELECT message_id, key, seq FROM effects ORDER BY n") {
            s.effects.append(OutboxSnapshot.Effect(messageID: r[0].text ?? "", key: r[1].text ?? "", seq: r[2].int ?? -1))
        }
        s.rollbackMessages = try c.query("SELECT COUNT(*) FROM rollback_messages").first?.first?.int ?? 0
        s.orderViolations = try c.query("SELECT COUNT(*) FROM order_violations").first?.first?.int ?? 0
        return s
    }

    /// At rest: the producer is done, no message is pending unless it waits behind its key's dead
    /// letter, and the consumer applied every delivered message. `noDead` also wants no dead
    /// letter and nothing pending at all (after a replay).
    private func waitForOutboxRest(_ api: CohortAPI, until deadline: Date, noDead: Bool = false) -> (ok: Bool, why: String) {
        var why = ""
        while true {
            let done = producerState(api)?["done"] as? Bool == true
            do {
                let s = try outboxSnapshot()
                let pending = noDead ? s.rows.filter { $0.state != 1 } : s.flowingPending
                let lagging = s.deliveredNotApplied
                if done && pending.isEmpty && lagging.isEmpty { return (true, "") }
                why = (done ? "" : "the producer has not finished; ") + "\(pending.count) messages "
                    + (noDead ? "pending or dead" : "pending (not behind a dead letter)")
                    + (pending.first.map { " (first: id \($0.id) key \($0.key))" } ?? "")
                    + ", \(lagging.count) delivered but not applied by the consumer"
            } catch {
                why = "cannot read the databases: \(error)"
            }
            if Date() > deadline { return (false, why) }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    // MARK: - checks

    func checkOutbox(faultsEnd: Date) {
        var checks = processChecks()
        let api = CohortAPI(coordinatorURL: "", connectTimeoutMs: 1000, requestTimeoutMs: 5000)
        lock.lock()
        let statuses = exitStatuses
        let refused = startFailures
        lock.unlock()
        var within: Int64 = 30_000
        for c in scenario.checks { if case .outboxAtRest(let r) = c { within = r.withinMs } }
        var rest = (ok: false, why: "a process did not start")
        if refused.isEmpty {
            rest = waitForOutboxRest(api, until: faultsEnd.addingTimeInterval(Double(within) / 1000))
            if rest.ok {
                lock.lock(); result.recoveryMs = Int64(Date().timeIntervalSince(faultsEnd) * 1000); lock.unlock()
            }
        }
        // dead_letters first: its replay changes what the others see.
        for c in scenario.checks { if case .deadLetters(let d) = c { checks.append(deadLetters(d, api, settled: rest.ok)) } }
        for c in scenario.checks {
            switch c {
            case .fencing(let f): checks.append(fencing(f, api))
            case .outboxAtRest(let r): checks.append(outboxAtRest(r, api, within: within, settled: rest))
            case .expect(let e): checks.append(expectation(e, workload: nil, statuses: statuses, refused: refused, unsettled: []))
            default: break
            }
        }
        if let s = try? outboxSnapshot() {
            lock.lock()
            result.committed = s.rows.count
            result.aborted = (producerState(api)?["rolled_back"] as? Int) ?? 0
            result.inDoubtAtEnd = s.flowingPending.count
            lock.unlock()
        }
        noteExitsDuringChecks(&checks)
        lock.lock(); result.checks = checks; lock.unlock()
    }

    private func outboxAtRest(_ r: OutboxAtRestCheck, _ api: CohortAPI, within: Int64, settled: (ok: Bool, why: String)) -> CheckResult {
        func fail(_ s: String) -> CheckResult { CheckResult(name: "outbox_at_rest", ok: false, detail: s, txids: []) }
        // A replay (dead_letters) may have moved things on since the first wait.
        let rest = settled.ok ? waitForOutboxRest(api, until: Date().addingTimeInterval(Double(within) / 1000)) : settled
        guard rest.ok else { return fail("not at rest \(within)ms after the faults stopped: \(rest.why)") }
        let s: OutboxSnapshot
        do { s = try outboxSnapshot() } catch { return fail("cannot read the databases: \(error)") }
        let blocking = deadLettersBlockKeys
        let expectsDead = scenario.checks.contains { if case .deadLetters = $0 { return true }; return false }
        var problems = s.problems(deadLettersBlockKeys: blocking, deadLettersExpected: expectsDead)
        let producer = producerState(api)
        let rolledBack = producer?["rolled_back"] as? Int ?? 0
        if scenario.workload.outbox?.rollbackEvery != nil && rolledBack == 0 {
            problems.append("the producer rolled nothing back, though the workload asks it to")
        }
        let consumer = json(api, url("consumer") + "/v1/state")
        let duplicates = consumer?["duplicates_since_start"] as? Int ?? 0
        if duplicates < r.minDuplicates {
            problems.append("the consumer deduped \(duplicates) redeliveries, expected at least \(r.minDuplicates): the fault did not cause a redelivery")
        }
        guard problems.isEmpty else { return fail(problems.joined(separator: "; ")) }
        let dead = s.rows.filter { $0.state == 2 }.count
        return CheckResult(name: "outbox_at_rest", ok: true,
                           detail: "\(s.effects.count) of \(s.rows.count) messages over \(Set(s.rows.map(\.key)).count) keys applied exactly once in per-key commit order"
                               + "; \(rolledBack) rolled back, none sent; \(duplicates) redeliveries deduped"
                               + (dead > 0 ? "; \(dead) dead letters, \(s.rows.filter { $0.state == 0 }.count) messages waiting behind them" : ""),
                           txids: [])
    }

    /// `txctl` from the same build, against a relay's admin API.
    private func txctl(_ args: [String]) -> (status: Int32, out: String, err: String) {
        do {
            let r = try runToCompletion(options.binDirectory.appendingPathComponent("txctl"), args, timeoutMs: 20_000)
            return (r.status, r.stdout, r.stderr)
        } catch {
            return (-1, "", "\(error)")
        }
    }

    private func deadLetters(_ d: DeadLettersCheck, _ api: CohortAPI, settled: Bool) -> CheckResult {
        func fail(_ s: String) -> CheckResult { CheckResult(name: "dead_letters", ok: false, detail: s, txids: []) }
        guard settled else { return fail("the outbox did not come to rest, so the dead letters are not final") }
        let relayURL = url("relay")
        let list = txctl(["outbox", relayURL, "list", "--dead", "--json"])
        guard list.status == 0, let obj = (try? JSONSerialization.jsonObject(with: Data(list.out.utf8))) as? [String: Any],
              let messages = obj["messages"] as? [[String: Any]] else {
            return fail("txctl outbox \(relayURL) list --dead --json failed (status \(list.status)): \(list.err.prefix(300))")
        }
        let s: OutboxSnapshot
        do { s = try outboxSnapshot() } catch { return fail("cannot read the databases: \(error)") }
        let byID = Dictionary(uniqueKeysWithValues: s.rows.map { ($0.id, $0) })
        let ids = messages.compactMap { ($0["id"] as? NSNumber)?.int64Value }
        let keys = messages.compactMap { $0["key"] as? String }
        var problems: [String] = []
        if messages.count != d.count { problems.append("\(messages.count) dead letters (keys \(keys.sorted().joined(separator: ", "))), expected \(d.count)") }
        if let want = d.keys, Set(want) != Set(keys) { problems.append("dead letters on keys \(keys.sorted()), expected \(want.sorted())") }
        let notPoison = ids.filter { byID[$0]?.poison != true }
        if !notPoison.isEmpty { problems.append("dead letters that are not poison messages: \(notPoison.prefix(5))") }
        if s.rows.filter({ $0.state == 2 }).count != messages.count { problems.append("txctl lists \(messages.count) dead letters, the table has \(s.rows.filter { $0.state == 2 }.count)") }
        // Other keys flowed: nothing of theirs is pending.
        if !s.flowingPending.isEmpty { problems.append("\(s.flowingPending.count) messages of keys without a dead letter still pending") }
        // Blocked keys: with dead letters blocking (the default), nothing after a key's dead
        // letter was applied.
        let blocking = deadLettersBlockKeys
        if blocking {
            let firstDead = Dictionary(s.rows.filter { $0.state == 2 }.map { ($0.key, $0.seq) }, uniquingKeysWith: min)
            let overtaking = s.effects.filter { e in firstDead[e.key].map { e.seq > $0 } ?? false }
            if !overtaking.isEmpty { problems.append("\(overtaking.count) messages applied after their key's dead letter (\(overtaking.prefix(3).map(\.messageID).joined(separator: ", ")))") }
        } else if d.replay {
            problems.append("replay with --dead-letters-block-key false delivers the replayed message after its key's later ones; this check does not judge that order")
        }
        guard problems.isEmpty else { return fail(problems.joined(separator: "; ")) }
        let flowed = Set(s.rows.map(\.key)).subtracting(keys).count
        let waiting = s.rows.filter { $0.state == 0 && s.deadKeys.contains($0.key) }.count
        var detail = "\(messages.count) dead letters (keys \(keys.sorted().joined(separator: ", "))), all poison; the \(flowed) other keys flowed; "
            + (blocking ? "\(waiting) later messages of their keys waited behind them" : "their keys went on without them")
        guard d.replay else { return CheckResult(name: "dead_letters", ok: true, detail: detail, txids: []) }
        // The fix: the consumer accepts poison from its next start; then every dead letter is replayed.
        lock.lock(); outbox.consumerAcceptsPoison = true; lock.unlock()
        gracefulRestart("consumer", extraEnv: [:])
        for id in ids {
            let r = txctl(["outbox", relayURL, "replay", String(id)])
            guard r.status == 0, r.out.contains("pending again") else {
                return fail(detail + "; txctl outbox \(relayURL) replay \(id) failed (status \(r.status)): \(r.err.prefix(300))\(r.out.prefix(300))")
            }
        }
        let rest = waitForOutboxRest(api, until: Date().addingTimeInterval(Double(d.withinMs) / 1000), noDead: true)
        guard rest.ok else { return fail(detail + "; after replaying them with txctl, not delivered within \(d.withinMs)ms: \(rest.why)") }
        detail += "; replayed with txctl after the consumer was fixed, and every message of their keys was delivered"
        return CheckResult(name: "dead_letters", ok: true, detail: detail, txids: [])
    }

    /// A relay's `/metrics` text; empty when it does not answer.
    private func relayMetricsText(_ api: CohortAPI, _ name: String) -> String {
        (try? api.raw("GET", url(name) + "/metrics")).map { String(decoding: $0.body, as: UTF8.self) } ?? ""
    }

    /// One unlabelled metric of a relay; nil when it does not answer or has no such line.
    private func relayMetric(_ api: CohortAPI, _ name: String, _ metric: String) -> Int? {
        Self.metric(metric, in: relayMetricsText(api, name))
    }

    private static func metric(_ m: String, in text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(m + " ") {
            return Int(Double(line.dropFirst(m.count + 1).trimmingCharacters(in: .whitespaces)) ?? 0)
        }
        return nil
    }

    private func fencing(_ f: FencingCheck, _ api: CohortAPI) -> CheckResult {
        var held = 0
        var metricRefusals = 0
        var parts: [String] = []
        for name in scenario.topology.outbox!.relayNames {
            let text = relayMetricsText(api, name)
            func metric(_ m: String) -> Int { Self.metric(m, in: text) ?? 0 }
            held += metric("cohort_outbox_lease_held")
            metricRefusals += metric("cohort_outbox_fenced_total")
            parts.append("\(name): lease \(metric("cohort_outbox_lease_held")), delivered \(metric("cohort_outbox_delivered_total")), fenced writes \(metric("cohort_outbox_fenced_total"))")
        }
        // Every start's stderr: refused result writes ("fenced: ...") and refused renewals of a
        // stale token ("lost the relay lease"), which the metrics of a restarted relay forget.
        var fencedLines = 0
        var lostLines = 0
        let files = (try? FileManager.default.contentsOfDirectory(atPath: logDir)) ?? []
        for file in files where file.hasPrefix("relay") && file.hasSuffix(".stderr") {
            let text = (try? String(contentsOfFile: "\(logDir)/\(file)", encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                if line.hasPrefix("relay: fenced:") { fencedLines += 1 }
                if line.hasPrefix("relay: lost the relay lease") { lostLines += 1 }
            }
        }
        let rejections = max(metricRefusals, fencedLines) + lostLines
        let detail = "\(rejections) fencing-token rejections (\(max(metricRefusals, fencedLines)) result writes, \(lostLines) lease renewals); " + parts.joined(separator: "; ")
        let ok = held == 1 && rejections >= f.minRejections
        return CheckResult(name: "fencing", ok: ok,
                           detail: ok ? detail : (held != 1 ? "\(held) relays hold the lease at the end (expected 1); " : "expected at least \(f.minRejections) rejections; ") + detail,
                           txids: [])
    }
}
