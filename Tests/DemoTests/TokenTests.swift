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
        // Setting stock is a transaction the inventory runs at the coordinator and at itself.
        try rig.setStock("apple", 20)
        for mode in ["2pc", "3pc", "tcc", "outbox"] {
            let placed = try XCTUnwrap(rig.order("apple", 2, mode), mode)
            XCTAssertEqual(placed.status, 201, "\(mode): \(placed.body)")
            // The outbox order settles through both inboxes, each call with the token.
            XCTAssertEqual(rig.finalStatus(placed), "confirmed", "\(mode): \(placed.body)")
        }
        XCTAssertEqual(try rig.stock("apple").sold, 8)

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
