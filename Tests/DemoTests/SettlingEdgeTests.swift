@testable import CohortDemo
import CohortClient
import CohortCore
import Foundation
import XCTest

/// An order whose own branch an operator forced, and setting a sku's stock while it is in use.
final class SettlingEdgeTests: XCTestCase {
    func testTheOwnBranchStates() {
        func branch(_ status: Int, _ state: String? = nil) -> OrderService.OwnBranch {
            OrderService.ownBranch(status: status, body: state.map { Array(#"{"txid": "t", "state": "\#($0)"}"#.utf8) } ?? [])
        }
        XCTAssertEqual(branch(404), .finished)
        XCTAssertEqual(branch(200, "committed"), .finished)
        XCTAssertEqual(branch(200, "aborted"), .finished)
        for state in ["heuristic-committed", "heuristic-aborted", "heuristic-mixed"] {
            XCTAssertEqual(branch(200, state), .heuristic(state), "an operator's decision is final here")
        }
        for state in ["active", "preparing", "prepared", "committing", "forcing", "pre-committed", "pre-aborted", "aborting"] {
            XCTAssertEqual(branch(200, state), .open, state)
        }
        XCTAssertEqual(branch(503), .open)
        XCTAssertEqual(branch(200), .open)
    }

    /// The coordinator stops after every branch voted yes and before it logs its decision;
    /// the order's client waits. An operator aborts the order service's branch (heuristic):
    /// the order is settled `rejected` from it at once instead of staying pending until the
    /// coordinator is back (for a mixed outcome, for ever).
    func testAnOrderWhoseBranchAnOperatorForcedIsSettled() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        rig.cluster.kill9(Cluster.coordinatorName)
        try rig.cluster.startProcess(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": "coordinator.before-decision-logged"])
        final class Box: @unchecked Sendable { var answer: (status: Int, body: [String: Any])?; var at = Date() }
        let box = Box()
        let placed = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            box.answer = rig.order("kiwi", 3, "2pc")
            box.at = Date()
            placed.signal()
        }
        var txid: String?
        let deadline = Date().addingTimeInterval(20)
        while txid == nil, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
            let branches = (try? rig.json("GET", rig.url("orders") + "/v1/branches?state=in-doubt"))?.1["branches"] as? [[String: Any]]
            txid = branches?.first?["txid"] as? String
        }
        let id = try XCTUnwrap(txid, "the order's branch here is in doubt")
        let (code, forced) = try rig.json("POST", rig.url("orders") + "/v1/branches/\(id)/force",
                                          ["outcome": "aborted", "reason": "coordinator lost", "operator": "test"])
        XCTAssertEqual(code, 200, "\(forced)")
        let forcedAt = Date()
        XCTAssertEqual(placed.wait(timeout: .now() + 60), .success)
        XCTAssertEqual(box.answer?.status, 201)
        XCTAssertEqual(box.answer?.body["status"] as? String, "rejected", "settled from the operator's decision")
        XCTAssertLessThan(box.at.timeIntervalSince(forcedAt), Double(Limits.demoSettleWaitMs) / 2000, "not after waiting out demoSettleWaitMs")
        // The coordinator comes back, decided nothing: presumed abort, and everything agrees.
        _ = rig.cluster.coordinator.waitForExit(timeoutMs: 5_000)
        try rig.cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertEqual(rig.waitAtRest(), [])
        XCTAssertEqual(try rig.stock("kiwi").available, 10)
    }

    /// `POST /v1/stock` used to set `reserved` to 0 under a TCC reservation, which its confirm
    /// or cancel then sent negative; and to wait out a 2PC branch's locks and fail with a 503.
    func testStockIsNotSetUnderReservationsOrLocks() throws {
        let rig = try rig()
        try rig.setStock("plum", 10)
        let inventory = rig.url("inventory")
        let phase: [String: Any] = ["txid": "tx-held-1", "branch_id": "stock", "payload": ["sku": "plum", "qty": 4]]
        XCTAssertEqual(try rig.json("POST", inventory + "/v1/tcc/inventory/try", phase).0, 200)
        XCTAssertEqual(try rig.stock("plum").reserved, 4)
        let (refused, why) = try rig.json("POST", inventory + "/v1/stock", ["sku": "plum", "available": 50])
        XCTAssertEqual(refused, 409, "\(why)")
        XCTAssertNotNil(why["error"] as? String)
        XCTAssertEqual(try rig.stock("plum").reserved, 4, "the reservation is kept")
        XCTAssertEqual(try rig.json("POST", inventory + "/v1/tcc/inventory/cancel", phase).0, 200)
        let after = try rig.stock("plum")
        XCTAssertEqual([after.available, after.reserved, after.sold], [10, 0, 0])
        // A 2PC branch holding the sku's keys: refused at once.
        let api = CohortAPI(coordinatorURL: rig.coordinatorURL)
        let txid = try api.begin()
        _ = try api.agentWork(inventory, txid, [.add("available/plum", -1, min: 0)])
        let started = Date()
        XCTAssertEqual(try rig.json("POST", inventory + "/v1/stock", ["sku": "plum", "available": 50]).0, 409)
        XCTAssertLessThan(Date().timeIntervalSince(started), 2)
        _ = try api.abort(txid)
        // Nothing in the way: set.
        try rig.setStock("plum", 50)
        let set = try rig.stock("plum")
        XCTAssertEqual([set.available, set.reserved, set.sold], [50, 0, 0])
    }
}
