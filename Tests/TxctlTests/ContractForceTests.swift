import CohortCore
import CohortCtl
import CohortHTTP
import CohortPosix
import Foundation
import XCTest

/// The contract (/work/shared/CONTRACT.md) gives `txctl commit TXID --force` and `txctl abort
/// TXID --force` as whole command lines. txctl refused both (exit 2, "needs --reason") until a
/// docs audit in session 36; now a force without `--reason` goes through and the audit trail
/// says that none was given. A blank `--reason` is still refused, and so is a participant's force
/// without one (not in the contract; its reason is all a later reader has).
final class ContractForceTests: XCTestCase {
    private final class Seen: @unchecked Sendable {
        let lock = NSLock()
        var bodies: [[String: Any]] = []
    }

    /// A coordinator stub that records each force's body and answers it as forced.
    private func startCoordinator(_ seen: Seen) throws -> String {
        try startStubServer { _, request, responder in
            let parts = request.path.split(separator: "/")
            guard request.method == "POST", parts.count == 4, parts[3] == "force" else {
                return responder.send(.error(404, "no such endpoint"))
            }
            let body = (try? JSONSerialization.jsonObject(with: Data(request.body))) as? [String: Any] ?? [:]
            seen.lock.withLock { seen.bodies.append(body) }
            responder.send(.json(200, ForceResponse(txid: String(parts[2]), outcome: body["outcome"] as? String ?? "?", dryRun: false, effects: ["forced"])))
        }
    }

    func testTheContractsForceCommandLineIsAccepted() throws {
        let seen = Seen()
        let url = try startCoordinator(seen)
        let txid = "0a1b2c3d-1-1"
        for verb in ["commit", "abort"] {
            let r = ctl(["--coordinator", url, verb, txid, "--force"], env: ["USER": "oncall"])
            XCTAssertEqual(r.status, 0, r.err)
            XCTAssertEqual(r.err, "")
            XCTAssertTrue(r.out.hasPrefix("forced \(txid) to \(verb == "commit" ? "committed" : "aborted") at the coordinator"), r.out)
        }
        let bodies = seen.lock.withLock { seen.bodies }
        XCTAssertEqual(bodies.count, 2)
        XCTAssertEqual(bodies.map { $0["outcome"] as? String }, ["committed", "aborted"])
        XCTAssertEqual(bodies.map { $0["reason"] as? String },
                       ["no reason given (txctl commit --force without --reason)", "no reason given (txctl abort --force without --reason)"])
        XCTAssertEqual(bodies.first?["operator"] as? String, "oncall@testhost")

        // A reason given is sent as given; a blank one, and a participant's force without one,
        // are still refused before anything is sent.
        XCTAssertEqual(ctl(["--coordinator", url, "commit", txid, "--force", "--reason", "disk lost"]).status, 0)
        XCTAssertEqual(seen.lock.withLock { seen.bodies.last?["reason"] as? String }, "disk lost")
        let blank = ctl(["--coordinator", url, "abort", txid, "--force", "--reason", "  "])
        XCTAssertEqual(blank.status, 2)
        XCTAssertTrue(blank.err.contains("needs --reason"), blank.err)
        let agent = ctl(["agent", url, "commit", txid, "--force"])
        XCTAssertEqual(agent.status, 2)
        XCTAssertTrue(agent.err.contains("needs --reason"), agent.err)
        XCTAssertEqual(seen.lock.withLock { seen.bodies.count }, 3, "nothing more was sent")
    }
}
