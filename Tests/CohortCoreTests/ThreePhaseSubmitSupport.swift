import XCTest
@testable import CohortCore

/// A submitted 3PC transaction over `names` at a fresh coordinator (epoch 100): returns it and
/// the txid. Shared by the 3PC review tests.
func submittedThreePhase(coordinatorID: String, _ termination: Termination, _ names: [String]) throws -> (Coordinator, TxID) {
    var c = Coordinator(config: Coordinator.Config(coordinatorID: coordinatorID, epoch: 100))
    let ops = JSONNode.array([.object([("op", .string("add")), ("key", .string("x")), ("delta", .int(1))])])
    let submitted = c.on(.submit(1, timeoutMs: 3_000, protocol: .threePhase(termination),
                                 branches: names.map { .init(participant: ParticipantRef(name: $0, url: "http://\($0)"), work: ops) }), nowMs: 10)
    var txid: TxID?
    for case .setTimer(.transactionTimeout(let t), _) in submitted { txid = t }
    return (c, try XCTUnwrap(txid))
}

/// `submittedThreePhase`, every branch voted yes and the pre-commit record durable: the
/// pre-commits sent and the pre-commit timeout set (both asserted). Returns it and the txid.
func preCommittingThreePhase(coordinatorID: String, _ termination: Termination, _ names: [String]) throws -> (Coordinator, TxID) {
    var (c, t) = try submittedThreePhase(coordinatorID: coordinatorID, termination, names)
    for name in names { _ = c.on(.voted(t, participant: name, vote: .yes), nowMs: 11) }
    let sent = c.on(.preCommitDurable(t), nowMs: 12)
    var preCommits = 0
    for case .send(_, _, .preCommit) in sent { preCommits += 1 }
    XCTAssertEqual(preCommits, names.count, "precondition: every writer is sent the pre-commit")
    XCTAssertTrue(sent.contains { if case .setTimer(.preCommitTimeout(t), _) = $0 { return true } else { return false } })
    return (c, t)
}
