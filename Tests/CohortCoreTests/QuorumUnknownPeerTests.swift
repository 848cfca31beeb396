import XCTest
@testable import CohortCore

/// Quorum 3PC termination with peers that answer `unknown` (a review of session 38's rule that a
/// backup whose abort quorum needs such peers asks only them to pre-abort). Unlike
/// ThreePhaseTerminationTests, every participant here is a real state machine: a round's answers
/// come from the peers' own `state` replies, and a backup's messages are delivered to them (or
/// held back by a partition), so a schedule shows where every branch ends up.
final class QuorumUnknownPeerTests: XCTestCase {
    static let t = "0a1b2c3d-64-10"
    let ws: [UInt8] = [7]

    /// A cluster of participants of one quorum 3PC transaction `t`, with a partition: a round at
    /// a node hears only the peers it can reach, and a backup's message to a peer it cannot reach
    /// is lost. Records become durable at once.
    struct Cluster {
        var nodes: [String: Participant] = [:]
        let names: [String]
        var cut: Set<String> = []
        /// Nodes that backups' messages do not reach (their state queries still do).
        var deaf: Set<String> = []
        var request: RequestID = 1_000
        /// Replies to backups' messages, per receiving node (to check refusals).
        var refusals: [String: [Int]] = [:]

        init(names: [String]) { self.names = names }

        var info: Participant.ThreePhaseInfo {
            Participant.ThreePhaseInfo(termination: .quorum, peers: names.map { ParticipantRef(name: $0, url: "http://\($0)") })
        }

        /// Pairs that cannot hear each other, besides `cut` (cut off from everyone).
        var apart: Set<[String]> = []

        func reachable(_ a: String, _ b: String) -> Bool {
            !cut.contains(a) && !cut.contains(b) && !apart.contains([a, b].sorted())
        }

        /// Every node of `a` and every node of `b` cannot hear each other.
        mutating func split(_ a: [String], _ b: [String]) {
            for x in a { for y in b { apart.insert([x, y].sorted()) } }
        }

        mutating func next() -> RequestID { request += 1; return request }

        /// A writer that voted yes (durably).
        mutating func writer(_ name: String) {
            var p = Participant(config: Participant.Config(name: name))
            _ = p.on(.joined(QuorumUnknownPeerTests.t, coordinatorURL: "http://c", timeoutMs: 60_000))
            _ = p.on(.prepare(next(), txid: QuorumUnknownPeerTests.t, onePhase: false, vote: .yes(writeSet: [7]), threePhase: info))
            _ = p.on(.preparedDurable(QuorumUnknownPeerTests.t))
            precondition(p.state(of: QuorumUnknownPeerTests.t) == .prepared)
            nodes[name] = p
        }

        /// A reader that voted read-only and then restarted (the vote is not logged). With
        /// `forgetful`, its outcomes of later transactions of the same coordinator were let go
        /// (a busy participant), so it may have voted yes on `t` and forgotten: it cannot promise.
        mutating func restartedReader(_ name: String, forgetful: Bool) {
            var config = Participant.Config(name: name)
            config.finishedBranchesKept = 1
            var p = Participant(config: config)
            if forgetful {
                _ = p.on(.abort(next(), txid: "0a1b2c3d-64-20"))
                _ = p.on(.abort(next(), txid: "0a1b2c3d-64-21"))
                precondition(p.mayHaveForgotten(QuorumUnknownPeerTests.t))
            }
            nodes[name] = p
        }

        /// Feeds `event` to `name` and carries out what follows (durable records, peer messages).
        mutating func feed(_ name: String, _ event: Participant.Event) {
            let actions = nodes[name]!.on(event)
            settle(name, actions)
        }

        mutating func settle(_ name: String, _ actions: [Participant.Action]) {
            let t = QuorumUnknownPeerTests.t
            for action in actions {
                switch action {
                case .log(.preCommitted, _), .log(.preAborted, _): feed(name, .preRecordDurable(t))
                case .log(.aborted, true), .log(.noVotePromised, _): feed(name, .abortDurable(t))
                case .log(.committed, _): feed(name, .commitDurable(t, lsn: 1))
                case .reply(_, .error(let e)): refusals[name, default: []].append(e.status)
                case .sendToPeer(_, let peer, let message):
                    guard reachable(name, peer.name), !deaf.contains(peer.name) else { continue }
                    switch message {
                    case .preCommit: feed(peer.name, .preCommit(next(), txid: t, fromBackup: true))
                    case .preAbort: feed(peer.name, .preAbort(next(), txid: t))
                    case .commit: feed(peer.name, .backupDecision(next(), txid: t, outcome: .committed))
                    case .abort: feed(peer.name, .backupDecision(next(), txid: t, outcome: .aborted))
                    }
                default: break
                }
            }
        }

        /// The coordinator's pre-commit reaching `name` (it may refuse it).
        mutating func coordinatorPreCommit(_ name: String) { feed(name, .preCommit(next(), txid: QuorumUnknownPeerTests.t, fromBackup: false)) }

        /// One termination round at `name`: each peer it can reach answers with its own state;
        /// `meanwhile` runs after the answers and before `name` decides on them.
        mutating func round(_ name: String, meanwhile: (inout Cluster) -> Void = { _ in }) {
            let t = QuorumUnknownPeerTests.t
            let start = nodes[name]!.on(.timerFired(.termination(t)))
            var number = 0
            for case .queryPeer(_, _, let r) in start { number = r }
            guard number > 0 else { return } // no branch in doubt here
            var answers: [(String, ThreePhaseState?, Bool)] = []
            for peer in names where peer != name {
                var state: ThreePhaseState?
                var recovered = false
                if reachable(name, peer) {
                    for case .reply(_, .state(let s, let r)) in nodes[peer]!.on(.stateQuery(next(), txid: t)) { state = s; recovered = r }
                }
                answers.append((peer, state, recovered))
            }
            meanwhile(&self)
            for (peer, state, recovered) in answers {
                let actions = nodes[name]!.on(.peerState(t, round: number, peer: peer, state: state, recovered: recovered))
                settle(name, actions)
            }
        }

        /// Rounds at every writer still in doubt, all reachable, until none is (at most `max`).
        mutating func healAndRun(max: Int = 6) {
            cut = []
            apart = []
            deaf = []
            for _ in 0..<max {
                for name in names where nodes[name]!.branches[QuorumUnknownPeerTests.t] != nil { round(name) }
            }
        }

        func outcome(_ name: String) -> String {
            let t = QuorumUnknownPeerTests.t
            if let b = nodes[name]!.branches[t] { return b.state.rawValue }
            return nodes[name]!.threePhaseState(t).rawValue
        }

        func outcomes() -> String { names.map { "\($0)=\(outcome($0))" }.joined(separator: " ") }

        /// No writer committed while another aborted.
        func agree() -> Bool {
            let finished = names.compactMap { name -> Outcome? in
                guard nodes[name]!.branches[QuorumUnknownPeerTests.t] == nil,
                      nodes[name]!.threePhaseState(QuorumUnknownPeerTests.t) != .readOnly else { return nil }
                return nodes[name]!.finishedOutcomes[QuorumUnknownPeerTests.t]
            }
            return Set(finished).count <= 1
        }
    }

    /// Candidate (b), an `unknown` peer that never converts: p1, a reader restarted after its
    /// participant let go of later outcomes, refuses every pre-abort (409: it may have voted yes
    /// and forgotten). Writers p2 and p3; p3 cut off while the coordinator's pre-commit reaches
    /// it. p2's rounds hear p1 only. Before session 38 p2 pre-aborted itself (Q = 2 of N = 3,
    /// counting p1), and with p3 pre-committed neither quorum could form, for good; now p2 waits
    /// in doubt, and once p3 is heard the writers commit.
    func testAnUnknownPeerThatCannotPromiseDoesNotLeaveTheWritersSplit() {
        var c = Cluster(names: ["p1", "p2", "p3"])
        c.restartedReader("p1", forgetful: true)
        c.writer("p2")
        c.writer("p3")
        c.cut = ["p3"]
        for _ in 0..<3 { c.round("p2") }
        XCTAssertEqual(c.outcome("p2"), "prepared", "p2 must not pre-abort toward a quorum that needs p1")
        XCTAssertEqual(c.outcome("p1"), "unknown")
        XCTAssertEqual(c.refusals["p1"], [409, 409, 409], "p1 cannot promise (it may have forgotten a yes)")
        c.coordinatorPreCommit("p3")
        XCTAssertEqual(c.outcome("p3"), "pre-committed")
        c.healAndRun()
        XCTAssertEqual(c.outcome("p2"), "committed", c.outcomes())
        XCTAssertEqual(c.outcome("p3"), "committed", c.outcomes())
    }

    /// Candidate (a)/(b), two backups with different views: four writers p2-p5 and a restarted
    /// reader p1 (N = 5, Q = 3; Q = 3 of 4 once p1 promised). The coordinator's pre-commit reached
    /// p5 only; {p2, p3} and {p4, p5} cannot hear each other, and both hear p1 answer `unknown`
    /// (the backups' messages to p1 are late). p2, backup on its side, used to pre-abort p2 and
    /// p3 counting p1 (0 + 3 >= 3); p4, backup on the other, pre-commits itself (1 pre-committed
    /// + p4 + p1 make 3): two pre-committed against two pre-aborted, Q = 3 of 4, blocked for good.
    /// Now p2 asks p1 only, and after the heal the writers commit.
    func testBackupsOnBothSidesOfAPartitionDoNotSplitFourWriters() {
        var c = Cluster(names: ["p1", "p2", "p3", "p4", "p5"])
        c.restartedReader("p1", forgetful: false)
        for w in ["p2", "p3", "p4", "p5"] { c.writer(w) }
        c.coordinatorPreCommit("p5")
        c.deaf = ["p1"]
        c.split(["p2", "p3"], ["p4", "p5"])
        c.round("p2")
        XCTAssertEqual(c.outcome("p2"), "prepared", c.outcomes())
        XCTAssertEqual(c.outcome("p3"), "prepared", c.outcomes())
        c.deaf = []
        c.round("p4")
        XCTAssertEqual(c.outcome("p4"), "pre-committed", c.outcomes())
        XCTAssertEqual(c.outcome("p1"), "read-only", "p1 promised never to vote yes")
        c.round("p2")
        XCTAssertEqual(c.outcome("p2"), "prepared", "0 + 2 writers < Q = 3: p2 blocks, pre-aborting nobody")
        c.healAndRun()
        for w in ["p2", "p3", "p4", "p5"] { XCTAssertEqual(c.outcome(w), "committed", c.outcomes()) }
        XCTAssertTrue(c.agree())
    }

    /// Candidate (b), rounding with a peer cut off for good: three writers p2-p4 and a restarted
    /// reader p1 (N = 4, Q = 3; Q = 2 of 3 once p1 promised), the coordinator gone before any
    /// pre-commit, p4 never heard again. p2's round hears p1 and p3: 0 + 2 writers < Q = 3
    /// with p1 still in N, so p2 asks p1 only; once p1 has promised (N = 3, Q = 2) p2 pre-aborts
    /// p2 and p3, and aborts the round after. One round later than reckoning p1 out of N in
    /// advance (which pre-aborted at once, and wedged when such a peer could not promise), never
    /// waiting for ever; p4 learns the abort when it is back.
    func testAQuorumOfWritersWithoutTheUnknownPeerAbortsOnceThatPeerHasLeftN() {
        var c = Cluster(names: ["p1", "p2", "p3", "p4"])
        c.restartedReader("p1", forgetful: false)
        for w in ["p2", "p3", "p4"] { c.writer(w) }
        c.cut = ["p4"]
        c.round("p2")
        XCTAssertEqual(c.outcome("p1"), "read-only", c.outcomes())
        XCTAssertEqual(c.outcome("p2"), "prepared", c.outcomes())
        c.round("p2")
        XCTAssertEqual(c.outcome("p2"), "pre-aborted", c.outcomes())
        XCTAssertEqual(c.outcome("p3"), "pre-aborted", c.outcomes())
        c.round("p2")
        XCTAssertEqual(c.outcome("p2"), "aborted", c.outcomes())
        XCTAssertEqual(c.outcome("p3"), "aborted", c.outcomes())
        c.healAndRun()
        XCTAssertEqual(c.outcome("p4"), "aborted", c.outcomes())
    }

    /// Candidate (b), found: two restarted readers, p1 that can promise and p2 that cannot (it
    /// let go of later outcomes of that coordinator, so it may have voted yes and forgotten),
    /// and three writers p3-p5 (N = 5, Q = 3; after p1's promise N = 4 and still Q = 3, since
    /// p2 never leaves N). The coordinator's pre-commit reached p5 only, cut off. p3's round
    /// hears p1, p2 and p4. Reckoning that both `unknown` peers leave N (Q' = (5 - 2)/2 + 1 = 2),
    /// the session-38 rule pre-aborted p3 and p4: with p5 pre-committed and p2 in N for good,
    /// 2 pre-aborted against 1 pre-committed, Q = 3, blocked for good with every node up (the
    /// seed 223 wedge again). Counting the `unknown` peers in N until they have left it (Q = 3),
    /// p3 only asks them, and after the heal the writers commit.
    func testAnUnknownPeerThatCannotPromiseStaysInTheQuorumABackupAimsFor() {
        var c = Cluster(names: ["p1", "p2", "p3", "p4", "p5"])
        c.restartedReader("p1", forgetful: false)
        c.restartedReader("p2", forgetful: true)
        for w in ["p3", "p4", "p5"] { c.writer(w) }
        c.cut = ["p5"]
        c.coordinatorPreCommit("p5")
        c.round("p3")
        XCTAssertEqual(c.outcome("p1"), "read-only", c.outcomes())
        XCTAssertEqual(c.outcome("p2"), "unknown", c.outcomes())
        XCTAssertEqual(c.outcome("p3"), "prepared", "p3 must not pre-abort toward a quorum p2 never leaves: \(c.outcomes())")
        XCTAssertEqual(c.outcome("p4"), "prepared", c.outcomes())
        c.round("p3")
        XCTAssertEqual(c.outcome("p3"), "prepared", "p1 left N, p2 did not: Q = 3 and p3 has 2 writers: \(c.outcomes())")
        c.healAndRun()
        for w in ["p3", "p4", "p5"] { XCTAssertEqual(c.outcome(w), "committed", c.outcomes()) }
    }


    /// Not from session 38, and left alone: quorum termination can block with every node up
    /// and no reader at all. Four writers (N = 4, Q = 3); the coordinator's pre-commit reached
    /// p4 only. p1's round hears p2 and p3 uncertain; before p1 decides, p2 (cut off from p1)
    /// runs its own round, hears p3 uncertain and p4 pre-committed (1 + 2 >= 3), and
    /// pre-commits itself (its pre-commit to p3 is late). p1 then pre-aborts itself and p3 (p2
    /// refuses: pre-states never change). Two pre-committed, two pre-aborted, Q = 3: no quorum
    /// can ever form, so the participants wait for the coordinator (or an operator), safely.
    func testFourWritersSplitTwoAgainstTwoBlockButNeverDisagree() {
        var c = Cluster(names: ["p1", "p2", "p3", "p4"])
        for w in ["p1", "p2", "p3", "p4"] { c.writer(w) }
        c.coordinatorPreCommit("p4")
        c.split(["p1"], ["p4"])
        c.round("p1") { c in
            c.split(["p1"], ["p2"])
            c.deaf = ["p3"]
            c.round("p2")
            c.deaf = []
            c.apart = []
            c.split(["p1"], ["p4"])
        }
        XCTAssertEqual(c.outcomes(), "p1=pre-aborted p2=pre-committed p3=pre-aborted p4=pre-committed")
        c.healAndRun()
        XCTAssertEqual(c.outcomes(), "p1=pre-aborted p2=pre-committed p3=pre-aborted p4=pre-committed", "blocked, not split")
        XCTAssertTrue(c.agree())
    }


    /// Bad input around the rule: answers from another round, from a name that is no peer, and
    /// a peer's second answer change nothing; a round whose only answer is one such peer's
    /// `unknown` asks it alone, and one where nobody answers blocks, pre-aborting nobody.
    func testStrayAnswersDoNotMoveABackupTowardAnAbortQuorum() {
        var c = Cluster(names: ["p1", "p2", "p3"])
        c.writer("p2")
        let t = QuorumUnknownPeerTests.t
        let start = c.nodes["p2"]!.on(.timerFired(.termination(t)))
        var number = 0
        for case .queryPeer(_, _, let r) in start { number = r }
        XCTAssertEqual(c.nodes["p2"]!.on(.peerState(t, round: number + 1, peer: "p1", state: .unknown, recovered: false)), [])
        XCTAssertEqual(c.nodes["p2"]!.on(.peerState(t, round: number, peer: "zz", state: .unknown, recovered: false)), [])
        XCTAssertEqual(c.nodes["p2"]!.on(.peerState(t, round: number, peer: "p1", state: .unknown, recovered: false)), [])
        XCTAssertEqual(c.nodes["p2"]!.on(.peerState(t, round: number, peer: "p1", state: .uncertain, recovered: false)), [], "a second answer")
        let decided = c.nodes["p2"]!.on(.peerState(t, round: number, peer: "p3", state: nil, recovered: false))
        XCTAssertFalse(decided.contains { if case .log = $0 { return true } else { return false } }, "\(decided)")
        XCTAssertEqual(decided.compactMap { if case .sendToPeer(_, let peer, let m) = $0 { return "\(m) \(peer.name)" } else { return nil } }, ["preAbort p1"])
        // Nobody answers: no quorum either way, nothing sent, nothing logged.
        let silent = c.nodes["p2"]!.on(.timerFired(.termination(t)))
        for case .queryPeer(_, _, let r) in silent { number = r }
        _ = c.nodes["p2"]!.on(.peerState(t, round: number, peer: "p1", state: nil, recovered: false))
        let none = c.nodes["p2"]!.on(.peerState(t, round: number, peer: "p3", state: nil, recovered: false))
        XCTAssertFalse(none.contains { if case .log = $0 { return true }; if case .sendToPeer = $0 { return true }; return false }, "\(none)")
        XCTAssertEqual(c.outcome("p2"), "prepared")
    }

}
