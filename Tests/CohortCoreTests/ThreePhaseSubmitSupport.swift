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
