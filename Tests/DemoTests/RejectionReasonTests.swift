@testable import CohortDemo
import CohortClient
import CohortCore
import CohortHTTP
import CohortKV
import CohortSQLite
import Foundation
import XCTest

/// Why an order failed: a `reason` on every rejected order (`KIND: detail`, docs/demo.md "Why
/// an order was rejected"), and a 503 with nothing recorded when the order could not even start
/// (no transaction could begin), so that the same request id places it once the coordinator is
/// back. Before, both were a `201 rejected` with no reason, and the request id stayed rejected.
final class RejectionReasonTests: XCTestCase {
    // MARK: - the reasons, from what the order service is told

    func testReasonsFromTheCoordinatorsWords() {
        let stock = "insufficient stock: not enough stock of pear for 50"
        // 2PC/3PC: the stock branch's vote no, as the coordinator passes it on.
        let vote = "inventory voted no: " + KVResource.belowMinReasonPrefix(key: "available/pear", delta: -50) + "-47, below min 0"
        XCTAssertEqual(RejectionReason.fromAbort(vote, sku: "pear", qty: 50), stock)
        // TCC: the inventory's refusal of the try, inside the coordinator's error.
        let refused = "try of branch stock failed: HTTP 409: refused: not enough stock of pear for 50; the transaction is cancelled"
        XCTAssertEqual(RejectionReason.fromAbort(refused, sku: "pear", qty: 50), stock)
        // Another sku's or qty's vote is no such thing for this order.
        XCTAssertEqual(DemoRejection.kind(of: RejectionReason.fromAbort(vote, sku: "pea", qty: 50)), DemoRejection.aborted)
        XCTAssertEqual(DemoRejection.kind(of: RejectionReason.fromAbort(vote, sku: "pear", qty: 5)), DemoRejection.aborted)
        // Other aborts keep the coordinator's reason after the prefix.
        XCTAssertEqual(RejectionReason.fromAbort("timed out after 10000ms", sku: "pear", qty: 1), "aborted: timed out after 10000ms")
        XCTAssertEqual(RejectionReason.fromAbort(nil, sku: "pear", qty: 1), "aborted: the coordinator gave no reason")
        // The order service's own aborts (a restart found the order pending).
        for own in [Coordinator.clientAbortReason, TCCCoordinator.initiatorAbortReason] {
            XCTAssertEqual(DemoRejection.kind(of: RejectionReason.fromAbort(own, sku: "pear", qty: 1)), DemoRejection.orderService, own)
        }
    }

    func testAReasonIsOneLineAndClipped() {
        let long = RejectionReason.make(DemoRejection.aborted, "prepare to inventory failed:\n" + String(repeating: "é", count: 500))
        XCTAssertLessThanOrEqual(long.utf8.count, Limits.demoRejectionReasonBytesMax)
        XCTAssertTrue(long.hasPrefix("aborted: prepare to inventory failed: é"), long)
        XCTAssertFalse(long.unicodeScalars.contains { $0.value < 0x20 }, long)
        XCTAssertEqual(DemoRejection.kind(of: long), DemoRejection.aborted)
        XCTAssertNil(DemoRejection.kind(of: "rejected"))
        XCTAssertNil(DemoRejection.kind(of: "aborted"), "a kind is followed by \": \"")
    }

    /// `GET /v1/orders` stops before the order that would take the answer past its byte limit
    /// and says where to go on; the first order always goes.
    func testTheOrderListIsCutByBytes() throws {
        let orders = (0..<10).map {
            OrderStore.Order(orderID: "o\($0)", sku: "pear", qty: 1, mode: "2pc", status: "rejected", txid: nil, requestID: "r\($0)",
                             reason: RejectionReason.make(DemoRejection.aborted, String(repeating: "x", count: 150)))
        }
        func page(_ bytesMax: Int, more: Bool = false) throws -> (ids: [String], next: String?, bytes: Int) {
            let body = OrderService.orderPage(orders, more: more, bytesMax: bytesMax)
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
            let list = try XCTUnwrap(object["orders"] as? [[String: Any]])
            return (list.compactMap { $0["order_id"] as? String }, object["next_after"] as? String, body.count)
        }
        let one = orders[0].wireJSON.count
        let whole = try page(1 << 20)
        XCTAssertEqual(whole.ids.count, 10)
        XCTAssertNil(whole.next)
        XCTAssertEqual(try page(1 << 20, more: true).next, "o9")
        let cut = try page(3 * one + 20)
        XCTAssertEqual(cut.ids, ["o0", "o1", "o2"])
        XCTAssertEqual(cut.next, "o2")
        XCTAssertLessThanOrEqual(cut.bytes - #","next_after":"o2"}"#.utf8.count, 3 * one + 20)
        XCTAssertEqual(try page(10).ids, ["o0"], "the first order goes whatever its size")
        XCTAssertEqual(OrderService.orderPage([], more: false, bytesMax: 10), Array(#"{"orders":[]}"#.utf8))
        // An order's JSON: reason and request_id only when there is one.
        let plain = String(decoding: OrderStore.Order(orderID: "a", sku: "s", qty: 2, mode: "3pc", status: "confirmed", txid: "t", requestID: nil).wireJSON,
                           as: UTF8.self)
        XCTAssertEqual(plain, #"{"order_id":"a","sku":"s","qty":2,"mode":"3pc","status":"confirmed"}"#)
    }

    // MARK: - real processes

    /// No transaction can begin (the coordinator is down): 503 naming the cause, and nothing
    /// recorded, so the same request id places the order once the coordinator is back. An order
    /// already placed under a request id stays that order's answer, coordinator or not.
    func testCoordinatorDownAnswers503AndTheSameRequestIDPlacesTheOrderLater() throws {
        let rig = try rig()
        // One sku per order placed in a transaction: a 2PC/3PC order is answered once its
        // decision is durable, and its stock branch at the inventory holds the sku's keys until
        // the commit gets there (here the coordinator may even be killed first, leaving that
        // branch in doubt until it is back); a TCC try on that sku meanwhile waits for the locks
        // up to `Limits.demoTCCLockWaitMs` and is then refused (409, the order rejected), as
        // docs/demo.md says. On one sku the tcc order placed right after the 3pc one below was
        // rejected so in 1 of 80 runs on a loaded 2-core machine (before tries waited).
        let later = ["2pc": "pear", "3pc": "plum", "tcc": "fig"]
        for sku in ["apple"] + later.values { try rig.setStock(sku, 100) }
        let placedBefore = try XCTUnwrap(rig.order("apple", 1, "2pc", requestID: "placed-before"))
        XCTAssertEqual(placedBefore.body["status"] as? String, "confirmed")

        rig.cluster.kill9(Cluster.coordinatorName)
        for mode in ["2pc", "3pc", "tcc"] {
            let answers = Answers()
            // Sent at once, as a client and its retries might: none of them places anything.
            DispatchQueue.concurrentPerform(iterations: 3) { _ in answers.add(rig.order(later[mode]!, 2, mode, requestID: "later-\(mode)")) }
            for answer in answers.all {
                let a = try XCTUnwrap(answer, mode)
                XCTAssertEqual(a.status, 503, "\(mode): \(a.body)")
                let error = try XCTUnwrap(a.body["error"] as? String, "\(mode): \(a.body)")
                XCTAssertTrue(error.hasPrefix("coordinator unavailable: "), "\(mode): \(error)")
            }
        }
        // The 503 says when to come back.
        let raw = try BlockingHTTPClient().request("POST", rig.url("orders") + "/v1/orders", body: Array(#"{"sku":"apple","qty":1,"mode":"2pc"}"#.utf8),
                                                   headers: [("Content-Type", "application/json")])
        XCTAssertEqual(raw.status, 503, raw.bodyString)
        XCTAssertEqual(raw.headers["Retry-After"], String(Limits.httpRetryAfterSeconds))
        let again = try XCTUnwrap(rig.order("apple", 1, "2pc", requestID: "placed-before"))
        XCTAssertEqual(again.status, 201, "a placed order is still the answer for its request id: \(again.body)")
        XCTAssertEqual(again.body["order_id"] as? String, placedBefore.body["order_id"] as? String)
        XCTAssertEqual(again.body["status"] as? String, "confirmed")
        // Outbox orders need no transaction: placed as ever.
        let outbox = try XCTUnwrap(rig.order("apple", 1, "outbox", requestID: "outbox-while-down"))
        XCTAssertEqual(outbox.status, 201, "\(outbox.body)")
        XCTAssertEqual(try rig.orders().compactMap { $0["request_id"] as? String }.sorted(), ["outbox-while-down", "placed-before"],
                       "no order row for the orders that could not start")

        try rig.cluster.startProcess(Cluster.coordinatorName)
        for mode in ["2pc", "3pc", "tcc"] {
            let placed = try XCTUnwrap(rig.order(later[mode]!, 2, mode, requestID: "later-\(mode)"))
            XCTAssertEqual(placed.status, 201, "\(mode): \(placed.body)")
            XCTAssertEqual(placed.body["status"] as? String, "confirmed", "\(mode): \(placed.body)")
            XCTAssertNil(placed.body["reason"], mode)
        }
        XCTAssertEqual(rig.waitAtRest(), [])
        XCTAssertEqual(try rig.stock("apple").sold, 2, "placed-before and the outbox order")
        for (mode, sku) in later { XCTAssertEqual(try rig.stock(sku).sold, 2, "\(mode) \(sku)") }
        XCTAssertEqual(try rig.orders().count, 5, "one order per request id")
    }

    /// Too little stock, in every mode: rejected with a reason saying so, in the POST's
    /// answer (the outbox order's once it settles), the order's own and the list.
    func testInsufficientStockIsRejectedWithAStockReason() throws {
        let rig = try rig()
        try rig.setStock("pear", 3)
        for mode in OrderService.modes {
            let placed = try XCTUnwrap(rig.order("pear", 50, mode))
            XCTAssertEqual(placed.status, 201, "\(mode): \(placed.body)")
            XCTAssertEqual(rig.finalStatus(placed), "rejected", mode)
            let id = try XCTUnwrap(placed.body["order_id"] as? String)
            let expected = "insufficient stock: not enough stock of pear for 50"
            if mode != "outbox" { XCTAssertEqual(placed.body["reason"] as? String, expected, "\(mode): \(placed.body)") }
            let (code, order) = try rig.json("GET", rig.url("orders") + "/v1/orders/\(id)")
            XCTAssertEqual(code, 200)
            XCTAssertEqual(order["reason"] as? String, expected, "\(mode): \(order)")
            let listed = try rig.orders("rejected").first { $0["order_id"] as? String == id }
            XCTAssertEqual(listed?["reason"] as? String, expected, mode)
        }
        let fine = try XCTUnwrap(rig.order("pear", 1, "2pc"))
        XCTAssertEqual(fine.body["status"] as? String, "confirmed")
        XCTAssertNil(fine.body["reason"], "a confirmed order has no reason")
        XCTAssertEqual(rig.waitAtRest(), [])
    }

    /// The inventory down: a 2PC/3PC order cannot stage its stock and a TCC order's try fails;
    /// each is rejected with a reason naming the abort and where it failed, not the stock.
    func testInventoryDownIsRejectedWithAReasonNamingTheAbort() throws {
        let rig = try rig()
        try rig.setStock("plum", 10)
        rig.kill9("inventory")
        for mode in ["2pc", "3pc", "tcc"] {
            let placed = try XCTUnwrap(rig.order("plum", 1, mode))
            XCTAssertEqual(placed.status, 201, "\(mode): \(placed.body)")
            XCTAssertEqual(placed.body["status"] as? String, "rejected", "\(mode): \(placed.body)")
            let reason = try XCTUnwrap(placed.body["reason"] as? String, "\(mode): \(placed.body)")
            XCTAssertTrue(reason.hasPrefix("aborted: "), "\(mode): \(reason)")
            XCTAssertTrue(mode == "tcc" ? reason.contains("try of branch stock failed") : reason.contains("staging the stock at the inventory failed"),
                          "\(mode): \(reason)")
            let id = try XCTUnwrap(placed.body["order_id"] as? String)
            XCTAssertEqual(try rig.json("GET", rig.url("orders") + "/v1/orders/\(id)").1["reason"] as? String, reason, mode)
        }
        try rig.start("inventory")
        XCTAssertEqual(rig.waitAtRest(), [])
    }

    /// A database from before reasons: the column is added when it is opened, its rejected
    /// orders answer without a reason, and orders rejected from then on carry one.
    func testAnOldOrdersDatabaseOpensAndAnswers() throws {
        let rig = try rig()
        let dir = rig.cluster.dataDirectory + "/orders-old"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        do {
            let old = try SQLiteConnection(path: dir + "/orders.sqlite")
            try old.exec("""
                CREATE TABLE orders(order_id TEXT PRIMARY KEY NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
                  mode TEXT NOT NULL, status TEXT NOT NULL, txid TEXT, created_ms INTEGER NOT NULL, request_id TEXT);
                CREATE INDEX orders_status ON orders(status);
                INSERT INTO orders VALUES('old-1', 'pear', 50, '2pc', 'rejected', 'tx', 1, 'old-request');
                """)
            old.close()
        }
        try rig.start("orders-old")
        let (code, order) = try rig.json("GET", rig.url("orders-old") + "/v1/orders/old-1")
        XCTAssertEqual(code, 200, "\(order)")
        XCTAssertEqual(order["status"] as? String, "rejected")
        XCTAssertNil(order["reason"], "an order rejected before reasons has none: \(order)")
        let repeated = try XCTUnwrap(rig.order("pear", 50, "2pc", requestID: "old-request", at: "orders-old"))
        XCTAssertEqual(repeated.status, 201)
        XCTAssertEqual(repeated.body["order_id"] as? String, "old-1")
        XCTAssertNil(repeated.body["reason"])
        try rig.setStock("pear", 3)
        let placed = try XCTUnwrap(rig.order("pear", 50, "2pc", at: "orders-old"))
        XCTAssertEqual(placed.body["reason"] as? String, "insufficient stock: not enough stock of pear for 50", "\(placed.body)")
        let (listCode, list) = try rig.json("GET", rig.url("orders-old") + "/v1/orders?status=rejected")
        XCTAssertEqual(listCode, 200)
        XCTAssertEqual((list["orders"] as? [[String: Any]])?.map { $0["reason"] as? String },
                       [nil, "insufficient stock: not enough stock of pear for 50"])
    }
}
