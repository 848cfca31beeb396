import CohortClient
import CohortCore
import XCTest

final class FailedWorkTests: XCTestCase {
    /// A black-box probe: a work call that failed (its lock wait timed out behind another
    /// transaction) left its branch read-only, and a client that committed anyway got
    /// `committed` with the other branch's half of the transfer applied and this one's lost.
    /// Now the branch votes no, and the commit answers `aborted` with that reason; nothing is
    /// applied anywhere.
    func testACommitAfterAFailedWorkCallAborts() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.agentURLs[0], cluster.agentURLs[1])
        // t1 holds the lock on "zz" at a and stays open past t2's lock wait (2 s).
        let t1 = try api.begin(timeoutMs: 30_000)
        _ = try api.agentWork(a, t1, [.add("zz", 1)])
        let t2 = try api.begin(timeoutMs: 30_000)
        XCTAssertThrowsError(try api.agentWork(a, t2, [.add("zz", 100)])) { error in
            guard case CohortAPIError.http(409, let text) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(text.contains("timed out"), text)
        }
        _ = try api.agentWork(b, t2, [.add("zz", -100)])
        // The careless client commits anyway.
        let answer = try api.commit(t2)
        XCTAssertEqual(answer.outcome, "aborted")
        XCTAssertTrue(answer.reason?.contains("a work call of this branch failed") ?? false, answer.reason ?? "no reason")
        XCTAssertNil(try api.kv(b, "zz"), "b's half of the transfer was not applied")
        XCTAssertEqual(try api.commit(t1).outcome, "committed")
        XCTAssertEqual(try api.kv(a, "zz")?.intValue, 1)
    }
}
