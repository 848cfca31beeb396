@testable import CohortDemo
import CohortClient
import CohortCore
import CohortSQLite
import Foundation
import XCTest

/// `request_id` in `POST /v1/orders`: a client whose answer was lost and who asks again with
/// the same request id gets the same order, and the stock is taken once.
final class RequestIDTests: XCTestCase {
    /// The sku's `sold` once it reaches `expected` (a committed order's stock branch is applied
    /// at the inventory after the order's answer), or as it is after a while; a second taking
    /// would show as more.
    func sold(_ rig: DemoRig, _ sku: String, settlingAt expected: Int64) -> Int64? {
        let deadline = Date().addingTimeInterval(10)
        var sold = try? rig.stock(sku).sold
        while sold != expected, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
            sold = try? rig.stock(sku).sold
        }
        Thread.sleep(forTimeInterval: 0.2)
        return try? rig.stock(sku).sold
    }

    func testARepeatedRequestIDPlacesTheOrderOnceInEveryMode() throws {
        let rig = try rig()
        try rig.setStock("apple", 1_000)
        try rig.setStock("pear", 1)
        var taken: Int64 = 0
        for (i, mode) in OrderService.modes.enumerated() {
            // One after the other: the second is a client asking again after a lost answer.
            let qty = Int64(2 + i)
            let requestID = "client-7/\(mode)/\(UUID().uuidString)"
            let first = try XCTUnwrap(rig.order("apple", qty, mode, requestID: requestID))
            XCTAssertEqual(first.status, 201, "\(mode): \(first.body)")
            let id = try XCTUnwrap(first.body["order_id"] as? String, mode)
            XCTAssertEqual(rig.finalStatus(first), "confirmed", mode)
            let again = try XCTUnwrap(rig.order("apple", qty, mode, requestID: requestID))
            XCTAssertEqual(again.status, 201, "\(mode): \(again.body)")
            XCTAssertEqual(again.body["order_id"] as? String, id, "\(mode): the same order")
            XCTAssertEqual(again.body["status"] as? String, "confirmed", "\(mode): its status now")
            taken += qty
            XCTAssertEqual(sold(rig, "apple", settlingAt: taken), taken, "\(mode): stock taken once")

            // At the same time: one of them places it, the others get that order.
            let racing = "racing/\(mode)/\(UUID().uuidString)"
            let answers = Answers()
            DispatchQueue.concurrentPerform(iterations: 6) { _ in answers.add(rig.order("apple", 1, mode, requestID: racing)) }
            let ids = Set(answers.all.compactMap { $0?.body["order_id"] as? String })
            XCTAssertEqual(answers.all.map { $0?.status }, Array(repeating: 201, count: 6), "\(mode): \(answers.all)")
            XCTAssertEqual(ids.count, 1, "\(mode): one order for one request id, got \(ids)")
            XCTAssertEqual(rig.finalStatus(try XCTUnwrap(answers.all.first ?? nil)), "confirmed", mode)
            taken += 1
            XCTAssertEqual(sold(rig, "apple", settlingAt: taken), taken, "\(mode): racing repeats took the stock once")

            // A rejected order stays the same rejected order.
            let no = "too-many/\(mode)"
            let rejected = try XCTUnwrap(rig.order("pear", 5, mode, requestID: no))
            XCTAssertEqual(rig.finalStatus(rejected), "rejected", mode)
            let rejectedAgain = try XCTUnwrap(rig.order("pear", 5, mode, requestID: no))
            XCTAssertEqual(rejectedAgain.body["order_id"] as? String, rejected.body["order_id"] as? String, mode)
            XCTAssertEqual(rejectedAgain.body["status"] as? String, "rejected", mode)

            // Another order under a used request id is refused: sku, qty or mode differs.
            for (sku, q, m) in [("pear", qty, mode), ("apple", qty + 1, mode), ("apple", qty, mode == "2pc" ? "3pc" : "2pc")] {
                let other = try XCTUnwrap(rig.order(sku, q, m, requestID: requestID))
                XCTAssertEqual(other.status, 409, "\(mode) then \(sku) \(q) \(m): \(other.body)")
                XCTAssertNotNil(other.body["error"] as? String)
            }
        }
        XCTAssertEqual(rig.waitAtRest(), [])
        XCTAssertEqual(try rig.stock("apple").sold, taken)
        XCTAssertEqual(try rig.orders().count, OrderService.modes.count * 3, "one order per request id")
        let one = try XCTUnwrap(try rig.orders().first)
        XCTAssertNotNil(one["request_id"] as? String, "an order shows its request id")
        XCTAssertEqual(rig.waitAtRest(), [])
    }

    func testABadRequestIDIsRefused() throws {
        let rig = try rig()
        for bad: Any in [String(repeating: "x", count: Limits.demoRequestIDBytesMax + 1), "", "has space", "tab\t", 42, ["x"]] {
            let (code, body) = try rig.json("POST", rig.url("orders") + "/v1/orders", ["sku": "a", "qty": 1, "mode": "2pc", "request_id": bad])
            XCTAssertEqual(code, 400, "request_id \(bad)")
            XCTAssertNotNil(body["error"] as? String)
        }
        XCTAssertEqual(try rig.orders().count, 0)
        let longest = String(repeating: "x", count: Limits.demoRequestIDBytesMax)
        XCTAssertEqual(try rig.json("POST", rig.url("orders") + "/v1/orders", ["sku": "a", "qty": 1, "mode": "outbox", "request_id": longest]).0, 201)
    }

    /// A database from before request ids: the column is added, the old rows kept, and the
    /// unique index holds for new ones.
    func testAnOldOrdersDatabaseGetsTheRequestIDColumn() throws {
        let path = NSTemporaryDirectory() + "cohort-orders-\(UUID().uuidString.prefix(8)).sqlite"
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        do {
            let old = try SQLiteConnection(path: path)
            try old.exec("""
                CREATE TABLE orders(order_id TEXT PRIMARY KEY NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
                  mode TEXT NOT NULL, status TEXT NOT NULL, txid TEXT, created_ms INTEGER NOT NULL);
                CREATE INDEX orders_status ON orders(status);
                INSERT INTO orders VALUES('old-1', 'apple', 2, '2pc', 'confirmed', 'tx', 1);
                """)
            old.close()
        }
        let store = try OrderStore(path: path)
        XCTAssertEqual(try store.get("old-1")?.status, "confirmed")
        XCTAssertNil(try store.get("old-1")?.requestID)
        let order = OrderStore.Order(orderID: "new-1", sku: "apple", qty: 1, mode: "2pc", status: "pending", txid: nil, requestID: "r1")
        try store.insert(order)
        XCTAssertEqual(try store.get(requestID: "r1")?.orderID, "new-1")
        let twice = OrderStore.Order(orderID: "new-2", sku: "apple", qty: 1, mode: "2pc", status: "pending", txid: nil, requestID: "r1")
        XCTAssertThrowsError(try store.insert(twice), "a second order with the same request id")
        // Orders without a request id are not limited by the index.
        for id in ["new-3", "new-4"] { try store.insert(OrderStore.Order(orderID: id, sku: "apple", qty: 1, mode: "2pc", status: "pending", txid: nil)) }
        XCTAssertEqual(try store.list(status: nil).map(\.orderID), ["old-1", "new-1", "new-3", "new-4"])
        // And opening it again (now with the column) changes nothing.
        XCTAssertEqual(try OrderStore(path: path).get(requestID: "r1")?.orderID, "new-1")
    }
}

/// Answers collected from several threads.
final class Answers: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [(status: Int, body: [String: Any])?] = []
    func add(_ a: (status: Int, body: [String: Any])?) { lock.lock(); list.append(a); lock.unlock() }
    var all: [(status: Int, body: [String: Any])?] { lock.lock(); defer { lock.unlock() }; return list }
}
