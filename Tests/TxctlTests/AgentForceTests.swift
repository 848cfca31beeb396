import CohortCore
import CohortCtl
import CohortHTTP
import CohortPosix
import Foundation
import XCTest

/// `txctl agent URL commit|abort --force` asks the branch's coordinator first. One stub process
/// plays both: the agent's branch names the stub as its coordinator, whose answer the test sets.
final class AgentForceTests: XCTestCase {
    private final class Stub: @unchecked Sendable {
        let lock = NSLock()
        var coordinatorAnswer: String? = "committed" // nil: the coordinator path answers 503
        var forced: [String] = []
    }

    /// Starts the stub on a loop: `GET /v1/branches/TXID` names `branchCoordinator(base)` as the
    /// branch's coordinator, the outcome path answers `stub.coordinatorAnswer` (nil: 503), and a
    /// force is recorded. Returns the stub's URL; the test's teardown stops it.
    private func startStub(_ stub: Stub, txid: String, branchCoordinator: @escaping (String) -> String) throws -> String {
        try startStubServer { base, request, responder in
            switch (request.method, request.path) {
            case ("GET", "/v1/branches/\(txid)"):
                responder.send(.json(200, BranchDetail(txid: txid, state: "prepared", coordinator: branchCoordinator(base), writeSetBytes: 10,
                                                      inquiries: 3, lastInquiryError: nil, heuristic: nil)))
            case ("GET", "/v1/transactions/\(txid)/outcome"):
                let answer = stub.lock.withLock { stub.coordinatorAnswer }
                if let answer { responder.send(.json(200, InquiryResponse(txid: txid, outcome: answer))) } else { responder.send(.error(503, "down")) }
            case ("POST", "/v1/branches/\(txid)/force"):
                let body = (try? JSONSerialization.jsonObject(with: Data(request.body))) as? [String: Any]
                let outcome = body?["outcome"] as? String ?? "?"
                stub.lock.withLock { stub.forced.append(outcome) }
                responder.send(.json(200, ForceResponse(txid: txid, outcome: outcome, dryRun: false, effects: ["recorded"])))
            default:
                responder.send(.error(404, "no such endpoint"))
            }
        }
    }

    func testAForceThatContradictsAnAnsweringCoordinatorIsRefused() throws {
        let stub = Stub()
        let txid = "0a1b2c3d-1-1"
        let agent = try startStub(stub, txid: txid) { base in base }
        func force(_ verb: String, _ extra: [String] = []) -> CtlResult {
            ctl(["agent", agent, verb, txid, "--force", "--reason", "coordinator lost"] + extra, env: ["USER": "oncall"])
        }
        // The coordinator committed: aborting here would split the transaction.
        let refused = force("abort")
        XCTAssertEqual(refused.status, 1, refused.err)
        XCTAssertTrue(refused.err.contains("answers that \(txid) is committed") && refused.err.contains("--against-coordinator"), refused.err)
        XCTAssertEqual(stub.lock.withLock { stub.forced }, [], "nothing forced")
        // Agreeing with it is allowed; so is going against it when told to.
        XCTAssertEqual(force("commit").status, 0)
        XCTAssertEqual(force("abort", ["--against-coordinator"]).status, 0)
        XCTAssertEqual(stub.lock.withLock { stub.forced }, ["committed", "aborted"])
        // Undecided and up: decide at the coordinator.
        stub.lock.withLock { stub.coordinatorAnswer = "pending" }
        let pending = force("commit")
        XCTAssertEqual(pending.status, 1)
        XCTAssertTrue(pending.err.contains("has not decided"), pending.err)
        // Not answering: what the force is for, once the operator has checked what it could.
        // Without saying so it is refused, naming the checks (a game-day probe forced an abort
        // here silently while another participant had committed).
        stub.lock.withLock { stub.coordinatorAnswer = nil }
        let unchecked = force("abort")
        XCTAssertEqual(unchecked.status, 1, unchecked.err)
        XCTAssertTrue(unchecked.err.contains("could not learn \(txid)'s outcome") && unchecked.err.contains("txctl agent URL show \(txid)")
                      && unchecked.err.contains("--coordinator-gone"), unchecked.err)
        XCTAssertEqual(force("abort", ["--coordinator-gone"]).status, 0)
        // Another coordinator answering at the branch's URL (its data directory replaced) is
        // no answer either.
        stub.lock.withLock { stub.coordinatorAnswer = "unknown-coordinator" }
        let replaced = force("abort")
        XCTAssertEqual(replaced.status, 1, replaced.err)
        XCTAssertTrue(replaced.err.contains("another coordinator answers there now"), replaced.err)
        XCTAssertEqual(stub.lock.withLock { stub.forced }, ["committed", "aborted", "aborted"])
    }

    /// The branch names a coordinator URL that no longer answers (a proxy gone, an old
    /// address), while the coordinator txctl was pointed at answers: its word counts. The
    /// check used to ask only the branch's URL and let the force through silently.
    func testTheCoordinatorTxctlIsPointedAtIsAskedToo() throws {
        let stub = Stub()
        let txid = "0a1b2c3d-1-2"
        // The branch names a URL where nothing listens.
        let url = try startStub(stub, txid: txid) { _ in "http://127.0.0.1:1" }
        let refused = ctl(["--coordinator", url, "agent", url, "abort", txid, "--force", "--reason", "r"], env: ["USER": "oncall"])
        XCTAssertEqual(refused.status, 1, refused.err)
        XCTAssertTrue(refused.err.contains("the coordinator at \(url) answers that \(txid) is committed"), refused.err)
        let viaEnvironment = ctl(["agent", url, "abort", txid, "--force", "--reason", "r"], env: ["USER": "oncall", "COHORT_COORDINATOR": url])
        XCTAssertEqual(viaEnvironment.status, 1, viaEnvironment.err)
        XCTAssertEqual(stub.lock.withLock { stub.forced }, [], "nothing forced")
    }
}
