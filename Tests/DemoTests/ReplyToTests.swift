@testable import CohortDemo
import CohortClient
import CohortCore
import CohortOutbox
import CohortPosix
import Foundation
import XCTest

/// An order service in this process, serving on a thread of its own until `stop()`. Its
/// coordinator and inventory are addresses nothing listens on: enough for what does not call
/// them (an outbox order is written with its `OrderPlaced` and waits for delivery).
final class InProcessOrderService {
    let dir: String
    let service: OrderService
    private let stopped = DispatchSemaphore(value: 0)

    init(advertiseURL: String?) throws {
        ProcessEnv.ignoreSIGPIPE()
        dir = NSTemporaryDirectory() + "cohort-orders-\(UUID().uuidString.prefix(8).lowercased())"
        var options = OrderService.Options(dataDirectory: dir, coordinatorURL: "http://127.0.0.1:1", inventoryURL: "http://127.0.0.1:1")
        options.advertiseURL = advertiseURL
        let loop = try EventLoop()
        service = try OrderService(options: options, loop: loop) { message in XCTFail("fatal: \(message)") }
        let thread = Thread { [service, stopped] in
            try? service.run()
            stopped.signal()
        }
        thread.start()
    }

    var url: String { "http://127.0.0.1:\(service.port)" }

    func stop() {
        service.agent.loop.execute { [service] in service.shutdown() }
        _ = stopped.wait(timeout: .now() + 10)
        try? FileManager.default.removeItem(atPath: dir)
    }
}

final class ReplyToTests: XCTestCase {
    /// Behind a proxy or a NAT (`--advertise`) the inventory must answer to the advertised
    /// address: the bind address is not one it can reach, and the order would stay pending.
    func testOutboxOrdersNameTheAdvertisedAddressAsReplyTo() throws {
        for advertise in ["http://orders.proxy.example:8443", nil] {
            let orders = try InProcessOrderService(advertiseURL: advertise)
            defer { orders.stop() }
            let r = try CohortAPI(coordinatorURL: "").raw("POST", orders.url + "/v1/orders",
                                                           body: Array(#"{"sku": "apple", "qty": 2, "mode": "outbox"}"#.utf8))
            XCTAssertEqual(r.status, 201, String(decoding: r.body, as: UTF8.self))
            let messages = try OutboxStore(path: orders.dir + "/orders.sqlite").pending(afterID: 0, limit: 10)
            XCTAssertEqual(messages.map(\.topic), ["OrderPlaced"])
            XCTAssertEqual(messages.first?.headers["reply_to"], (advertise ?? orders.url) + "/v1/inbox",
                           "advertised as \(advertise ?? "nothing")")
        }
    }
}

final class OrderOutboxNameTests: XCTestCase {
    /// An order database created while every order service named its outbox "orders" keeps that
    /// name: its messages in flight keep their ids, which the inventory's inbox may have seen.
    /// A new database gets a name of its own.
    func testAnExistingOrderDatabaseKeepsItsOutboxName() throws {
        let dir = NSTemporaryDirectory() + "cohort-order-outbox-\(UUID().uuidString.prefix(8).lowercased())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loop = try EventLoop()
        func source(_ path: String) throws -> String {
            let outbox = try OrderOutbox(path: path, inventoryInbox: "http://127.0.0.1:1/v1/inbox", broker: nil, loop: loop) { _ in }
            defer { outbox.outbox.close() }
            return outbox.outbox.source
        }
        try Outbox(path: dir + "/old.sqlite", name: "orders").close()
        XCTAssertEqual(try source(dir + "/old.sqlite"), "orders")
        let new = try source(dir + "/new.sqlite")
        XCTAssertTrue(new.hasPrefix("outbox-"), new)
        XCTAssertEqual(try source(dir + "/new.sqlite"), new, "drawn once, then kept")
    }
}
