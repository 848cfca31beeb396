import CohortClient
import CohortCore
import Foundation

/// What the runner needs from a workload, whatever the topology: set up, run until a deadline,
/// say what is unsettled at the participants, resolve outcomes the clients did not hear, and
/// list every transaction's outcome. Topology-specific checks cast to the concrete workload.
protocol ScenarioLoad: AnyObject {
    var coordinatorURL: String { get }
    func api() -> CohortAPI
    /// Prepares the data the checks count on; returns what it did (for the events).
    func setup() throws -> String
    /// Runs the clients until the count is reached or the deadline passes.
    func run(deadline: Date)
    /// How many transactions the clients ran so far.
    var finishedCount: Int { get }
    /// Participant-side things not settled yet (ids, or "(URL unreachable)"); empty at rest.
    func participantsUnsettled(_ api: CohortAPI) -> [String]
    /// Asks the coordinator about outcomes the clients did not hear; returns those still unknown.
    func resolveUnknown(timeoutMs: Int) -> [String]
    /// Every transaction: txid, outcome, and whether the outcome was resolved after the fact.
    func outcomes() -> [(txid: String, outcome: ScenarioWorkload.Outcome, resolved: Bool)]
}

extension ScenarioWorkload: ScenarioLoad {
    func setup() throws -> String {
        try setupAccounts()
        return "set up \(config.accounts) accounts on each of \(agentURLs.count) agents"
    }

    var finishedCount: Int { snapshot().count }

    func participantsUnsettled(_ api: CohortAPI) -> [String] {
        var out: [String] = []
        for url in agentURLs {
            if let b = try? api.inDoubtBranches(url) { out += b.map(\.txid) } else { out.append("(\(url) unreachable)") }
        }
        return out
    }

    func outcomes() -> [(txid: String, outcome: Outcome, resolved: Bool)] {
        snapshot().map { ($0.txid, $0.outcome, ($0.reason ?? "").contains("resolved")) }
    }
}

extension ScenarioRun {
    /// `{"expect": {"parked": true}}`: some transaction went past its retry budget (a `parked`
    /// event in its coordinator timeline) — and, like every other, still finished (the settle
    /// step and `no_in_doubt_within` see to that). With `false`: none was parked.
    func parkedExpectation(_ expected: Bool, _ api: CohortAPI, _ satisfied: inout [String]) -> [String] {
        let all: [TransactionView]
        do { all = try api.transactions() } catch { return ["cannot list the coordinator's transactions: \(error)"] }
        let parked = all.filter { tx in tx.events.contains { $0.event == "parked" } }.map(\.txid)
        if expected && parked.isEmpty { return ["expected a transaction to be parked (retry budget spent), but none was among the \(all.count) the coordinator lists"] }
        if !expected && !parked.isEmpty { return ["\(parked.count) transactions were parked: \(parked.prefix(5).joined(separator: ", "))"] }
        satisfied.append(expected ? "\(parked.count) transactions were parked and then finished (\(parked.prefix(3).joined(separator: ", ")))" : "no transaction was parked")
        return []
    }
}

extension ScenarioRun {
    /// `{"expect": {"outcome": "aborted"}}`: every transfer ended so everywhere — the client's
    /// answer (or its resolution after the faults), the coordinator's state (404, presumed
    /// abort, counts as aborted) and the branch at each of its agents (`GET /v1/branches/{txid}`;
    /// 404, no branch, counts as aborted). The other checks say only that the outcome was the
    /// same everywhere; a scenario whose faults leave one outcome correct says which (scenario
    /// 76: every writer died before acknowledging the pre-commit, so nobody may commit).
    /// Returns the problems and the txids behind them (their timelines go in the report).
    func outcomeExpectation(_ expected: String, _ workload: ScenarioWorkload, _ satisfied: inout [String]) -> (problems: [String], txids: [String]) {
        let api = workload.api()
        let transfers = workload.snapshot()
        guard !transfers.isEmpty else { return (["expected every transfer to end \(expected), but no transfer ran"], []) }
        struct Branch: Decodable { let state: String? }
        var problems: [String] = []
        var txids: [String] = []
        var firstReason: String?
        for t in transfers {
            var wrong: [String] = []
            if t.outcome.rawValue != expected { wrong.append("the client has \(t.outcome.rawValue)") }
            if !t.txid.isEmpty {
                do {
                    let view = try api.transaction(t.txid)
                    let state = view?.state ?? "aborted"
                    if state != expected { wrong.append("the coordinator says \(state)") }
                    if firstReason == nil { firstReason = view?.reason ?? "unknown to it (presumed abort)" }
                } catch CohortAPIError.http(410, _) {
                    // No longer known: the branches below say what happened.
                } catch {
                    wrong.append("the coordinator's answer is unreadable: \(error)")
                }
                for url in workload.participantURLs(t) {
                    let agent = workload.agentURLs.firstIndex(of: url).map { scenario.topology.agentNames[$0] } ?? url
                    guard let r = try? api.raw("GET", url + "/v1/branches/\(t.txid)") else { wrong.append("\(agent) does not answer"); continue }
                    switch r.status {
                    case 404:
                        if expected != "aborted" { wrong.append("\(agent) has no branch") }
                    case 200:
                        let state = (try? JSONDecoder().decode(Branch.self, from: Data(r.body)))?.state ?? "unreadable"
                        if state != expected { wrong.append("\(agent)'s branch is \(state)") }
                    default:
                        wrong.append("\(agent) answered HTTP \(r.status)")
                    }
                }
            }
            if !wrong.isEmpty {
                problems.append("\(t.txid.isEmpty ? "a transfer with no txid" : t.txid): \(wrong.joined(separator: ", "))")
                if !t.txid.isEmpty { txids.append(t.txid) }
            }
        }
        if problems.isEmpty {
            satisfied.append("all \(transfers.count) transfers \(expected) at the client, the coordinator and every agent" + (firstReason.map { " (the coordinator: \($0))" } ?? ""))
            return ([], [])
        }
        return (["\(problems.count) of \(transfers.count) transfers did not end \(expected) everywhere: " + problems.prefix(5).joined(separator: "; ")], Array(txids.prefix(10)))
    }
}
