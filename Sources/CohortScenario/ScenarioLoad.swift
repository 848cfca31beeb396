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
