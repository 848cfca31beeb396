import CohortClient
import Foundation
import XCTest

/// The demo services take `--token-file` (or `COHORT_TOKEN`) as cohortd and cohort-agent do:
/// every call in needs the token but `GET /healthz` and `/metrics`, and every call out sends it.
/// They took no token, so anyone reaching the inventory could confirm or cancel TCC branches.
final class DemoTokenTests: XCTestCase {
    func testTokenedServicesPlaceOrdersInEveryModeAgainstATokenedCoordinator() throws {
        let rig = try DemoRig(token: "demo-s3cret")
        addTeardownBlock { rig.stop() }
        // One sku per mode: a 2PC/3PC order is answered once its decision is durable, and its
        // stock branch at the inventory holds the sku's keys until the commit gets there; a TCC
        // try on that sku meanwhile is refused (409, the order rejected), as docs/demo.md says.
        // On one sku the tcc order right after the 3pc one was rejected so ("sku apple is busy
        // in another transaction") in 1 of 100 runs on a loaded 2-core machine: nothing to do
        // with tokens.
        let skus = ["2pc": "apple", "3pc": "pear", "tcc": "plum", "outbox": "fig"]
        // Setting stock is a transaction the inventory runs at the coordinator and at itself.
        for sku in skus.values { try rig.setStock(sku, 20) }
        for mode in ["2pc", "3pc", "tcc", "outbox"] {
            let placed = try XCTUnwrap(rig.order(skus[mode]!, 2, mode), mode)
            XCTAssertEqual(placed.status, 201, "\(mode): \(placed.body)")
            // The outbox order settles through both inboxes, each call with the token.
            XCTAssertEqual(rig.finalStatus(placed), "confirmed", "\(mode): \(placed.body)")
        }
        for (mode, sku) in skus { XCTAssertEqual(try rig.stock(sku).sold, 2, "\(mode) \(sku)") }

        let untokened = CohortAPI(coordinatorURL: "", requestTimeoutMs: 10_000)
        let cancel = Array(#"{"txid":"made-up","branch_id":"stock","payload":null}"#.utf8)
        for (service, method, path, body) in [("orders", "POST", "/v1/orders", Array(#"{"sku":"apple","qty":1,"mode":"2pc"}"#.utf8)),
                                              ("orders", "GET", "/v1/orders", []),
                                              ("inventory", "POST", "/v1/tcc/inventory/cancel", cancel),
                                              ("inventory", "GET", "/v1/stock/apple", [])] {
            XCTAssertEqual(try untokened.raw(method, rig.url(service) + path, body: body).status, 401, "\(service) \(method) \(path)")
        }
        for service in ["orders", "inventory"] {
            XCTAssertEqual(try untokened.raw("GET", rig.url(service) + "/healthz").status, 200, service)
            XCTAssertEqual(try untokened.raw("GET", rig.url(service) + "/metrics").status, 200, service)
        }
        // The refused cancel left no fence.
        let (status, branch) = try rig.json("GET", rig.url("inventory") + "/v1/tcc/inventory/branches/made-up/stock")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(branch["state"] as? String, "none")
        XCTAssertEqual(rig.waitAtRest(), [])
        XCTAssertEqual(try rig.orders("confirmed").count, 4)
    }
}
