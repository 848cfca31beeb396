@testable import CohortDemo
import CohortClient
import CohortCore
import CohortTCC
import Foundation
import XCTest

/// A pending TCC order (its service crashed, or the commit's answer was lost) is settled from
/// durable facts: the coordinator's view while it has one, the inventory's barrier otherwise.
/// The coordinator forgets finished transactions (`Limits.finishedTransactionsKept`), so its 404
/// alone must never make a confirmed order `rejected`.
final class TCCSettleTests: XCTestCase {
    typealias S = OrderService
    let day: Int64 = 24 * 3_600_000

    func testTheDecisionRule() {
        func status(_ c: S.TCCCoordinatorView, _ b: S.TCCBranchView?, age: Int64 = 1_000) -> String? {
            S.tccStatus(coordinator: c, branch: b, orderAgeMs: age)
        }
        // The coordinator decides while it knows the transaction, whatever the barrier says yet.
        for b: S.TCCBranchView? in [nil, .unreachable, .state("tried", retentionMs: day), .state("none", retentionMs: day)] {
            XCTAssertEqual(status(.state("committed"), b), "confirmed")
            XCTAssertEqual(status(.state("confirming"), b), "confirmed")
            XCTAssertEqual(status(.state("aborted"), b), "rejected")
            XCTAssertEqual(status(.state("cancelling"), b), "rejected")
            XCTAssertNil(status(.state("active"), b))
            XCTAssertNil(status(.state("deciding"), b))
        }
        // Forgotten (404) or out of reach: the barrier's final facts settle it.
        for c: S.TCCCoordinatorView in [.forgotten, .unreachable, .state("active")] {
            XCTAssertEqual(status(c, .state("confirmed", retentionMs: day)), "confirmed", "\(c): a 404 is not a rejection")
            XCTAssertEqual(status(c, .state("cancelled", retentionMs: day)), "rejected")
            XCTAssertEqual(status(c, .state("fenced", retentionMs: day)), "rejected")
            XCTAssertNil(status(c, .state("tried", retentionMs: day)), "\(c): reserved, confirm or cancel still to come")
            XCTAssertNil(status(c, .unreachable))
            XCTAssertNil(status(c, nil))
        }
        // Nothing at the inventory: never tried only when the coordinator forgot the transaction
        // and the rows cannot have been purged yet.
        XCTAssertEqual(status(.forgotten, .state("none", retentionMs: day)), "rejected")
        XCTAssertNil(status(.unreachable, .state("none", retentionMs: day)), "the try may still come")
        XCTAssertNil(status(.state("active"), .state("none", retentionMs: day)), "the try may still come")
        let margin = 2 * Limits.tccClockSkewMarginMs
        XCTAssertEqual(status(.forgotten, .state("none", retentionMs: day), age: day - margin - 1), "rejected")
        XCTAssertNil(status(.forgotten, .state("none", retentionMs: day), age: day - margin), "its rows may have been purged")
        XCTAssertNil(status(.forgotten, .state("none", retentionMs: day), age: .max))
        // The old rule: a 404 from the coordinator alone.
        XCTAssertNil(status(.forgotten, nil))
        XCTAssertNil(status(.forgotten, .unreachable))
    }

    func testTheInventoryStatesFromBarrierRows() {
        XCTAssertEqual(TCCResource.branchState([:]), "none")
        XCTAssertEqual(TCCResource.branchState(["try": "tried"]), "tried")
        XCTAssertEqual(TCCResource.branchState(["try": "fence"]), "fenced")
        XCTAssertEqual(TCCResource.branchState(["try": "tried", "confirm": "confirmed"]), "confirmed")
        XCTAssertEqual(TCCResource.branchState(["try": "tried", "cancel": "cancelled"]), "cancelled")
        XCTAssertEqual(TCCResource.branchState(["try": "fence", "cancel": "empty-cancel"]), "cancelled")
    }

    /// Two TCC orders left pending by crashes of the order service — one before its try, one
    /// after the coordinator decided confirm — and then a coordinator that knows neither (its
    /// data directory lost: what forgetting a finished transaction looks like to a caller). The
    /// restarted order service must settle the first rejected and the second confirmed: its
    /// stock was sold.
    func testPendingTCCOrdersSettleFromTheInventoryWhenTheCoordinatorForgotThem() throws {
        let rig = try DemoRig()
        addTeardownBlock { rig.stop() }
        try rig.setStock("fig", 10)
        try XCTUnwrap(rig.processes["orders"]).terminate()
        try rig.start("orders", environment: ["COHORT_CRASHPOINT": "order-service.after-order-row-inserted"])
        XCTAssertNil(rig.order("fig", 1, "tcc"), "the order service stopped after writing the order row")
        XCTAssertNotNil(rig.processes["orders"]?.waitForExit(timeoutMs: 10_000))
        try rig.start("orders", environment: ["COHORT_CRASHPOINT": "order-service.after-tcc-decision-before-settle"])
        XCTAssertNil(rig.order("fig", 2, "tcc"), "the order service stopped after the coordinator decided confirm")
        XCTAssertNotNil(rig.processes["orders"]?.waitForExit(timeoutMs: 10_000))
        // The confirm reaches the inventory: the stock is sold.
        let deadline = Date().addingTimeInterval(20)
        while (try? rig.stock("fig").sold) != 2, Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        XCTAssertEqual(try rig.stock("fig").sold, 2)

        rig.cluster.kill9(Cluster.coordinatorName)
        try FileManager.default.removeItem(atPath: rig.cluster.dataDirectory(of: Cluster.coordinatorName))
        try rig.cluster.startProcess(Cluster.coordinatorName)
        try rig.start("orders")
        XCTAssertEqual(rig.waitAtRest(timeoutMs: 30_000), [])
        let orders = try rig.orders()
        XCTAssertEqual(orders.map { $0["qty"] as? Int }, [1, 2])
        XCTAssertEqual(orders.map { $0["status"] as? String }, ["rejected", "confirmed"])
    }
    /// An order service killed between a TCC order's try and its commit call leaves a
    /// transaction nothing will commit. The restarted service aborts it at once, so the
    /// reservation is released and the order settles `rejected`, not when the coordinator
    /// expires it (`reason` would then say "timed out"). One killed after the coordinator
    /// decided confirm keeps its decision: the abort is refused and the order is `confirmed`.
    func testAnOrderServiceRestartedAfterATryAbortsWhatNothingWillCommit() throws {
        let rig = try DemoRig()
        addTeardownBlock { rig.stop() }
        try rig.setStock("kiwi", 10)
        let api = CohortAPI(coordinatorURL: rig.coordinatorURL)
        try XCTUnwrap(rig.processes["orders"]).terminate()
        try rig.start("orders", environment: ["COHORT_CRASHPOINT": "order-service.after-tcc-try-before-commit-call"])
        XCTAssertNil(rig.order("kiwi", 3, "tcc"), "the order service stopped after the try, before the commit call")
        XCTAssertNotNil(rig.processes["orders"]?.waitForExit(timeoutMs: 10_000))
        XCTAssertEqual(try rig.stock("kiwi").reserved, 3, "the try reserved the stock")
        let open = try api.unfinished()
        XCTAssertEqual(open.count, 1)
        let tried = try XCTUnwrap(open.first)
        XCTAssertEqual(tried.protocol, "tcc")

        try rig.start("orders", environment: ["COHORT_CRASHPOINT": "order-service.after-tcc-decision-before-settle"])
        XCTAssertNil(rig.order("kiwi", 2, "tcc"), "the order service stopped after the coordinator decided confirm")
        XCTAssertNotNil(rig.processes["orders"]?.waitForExit(timeoutMs: 10_000))

        try rig.start("orders")
        XCTAssertEqual(rig.waitAtRest(timeoutMs: 30_000), [])
        let orders = try rig.orders()
        XCTAssertEqual(orders.map { $0["qty"] as? Int }, [3, 2])
        XCTAssertEqual(orders.map { $0["status"] as? String }, ["rejected", "confirmed"])
        // The order service's own doing, and said so (not "aborted", nor the stock).
        XCTAssertEqual(orders.map { $0["reason"] as? String },
                       ["order service: it restarted while placing the order and aborted its transaction", nil])
        let aborted = try XCTUnwrap(try api.transaction(tried.txid))
        XCTAssertEqual(aborted.outcome, "aborted")
        XCTAssertEqual(aborted.reason, "aborted by the initiator", "aborted by the restarted order service, not expired")
        XCTAssertEqual(try rig.stock("kiwi").sold, 2)
    }
}
