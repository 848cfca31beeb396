import CohortClient
import XCTest

final class RequestIDTests: XCTestCase {
    /// Work request ids make a repeated work call safe: no two calls of one client, and no two
    /// clients, may share one. They are a per-client random prefix and a counter now, not a
    /// UUID per call (which opened /dev/urandom each time).
    func testRequestIDsDifferPerCallAndPerClient() {
        let a = CohortAPI(coordinatorURL: "http://127.0.0.1:1")
        let b = CohortAPI(coordinatorURL: "http://127.0.0.1:1")
        let idsA = (0..<1000).map { _ in a.nextRequestID() }
        let idsB = (0..<1000).map { _ in b.nextRequestID() }
        XCTAssertEqual(Set(idsA).count, 1000)
        XCTAssertTrue(Set(idsA).isDisjoint(with: idsB))
        XCTAssertTrue(idsA.allSatisfy { !$0.isEmpty && $0.utf8.count <= 128 }, "within the agent's request-id limit")
    }
}
