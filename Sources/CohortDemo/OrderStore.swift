import CohortCore
import CohortSQLite
import CohortTCC
import Foundation

/// The order service's own table of orders (SQLite, synchronous=FULL). Thread-safe.
public final class OrderStore: @unchecked Sendable {
    public struct Order: Codable, Equatable, Sendable {
        public let orderID: String
        public let sku: String
        public let qty: Int64
        public let mode: String
        public var status: String
        public var txid: String?
        /// The client's key for the order (`request_id` in `POST /v1/orders`), when it gave one.
        public var requestID: String?
        /// When the row was written (this service's clock); 0 for an order not written yet.
        public var createdMs: Int64 = 0
        /// Why a `rejected` order was rejected (`RejectionReason`); nil for other orders, and for
        /// orders rejected before the column existed.
        public var reason: String?
        enum CodingKeys: String, CodingKey { case orderID = "order_id", sku, qty, mode, status, requestID = "request_id", reason }
    }

    /// How a pending order settles. A rejected one always says why, so that a client can tell
    /// too little stock from a failure that placing it again may get past.
    public enum Outcome: Equatable, Sendable {
        case confirmed
        case rejected(reason: String)

        public var status: String {
            switch self {
            case .confirmed: return "confirmed"
            case .rejected: return "rejected"
            }
        }

        public var reason: String? {
            if case .rejected(let reason) = self { return reason }
            return nil
        }
    }

    private let db: SQLiteConnection
    private let lock = NSLock()

    public init(path: String) throws {
        db = try SQLiteConnection(path: path, fairWriteLock: false)
        try db.exec("""
            CREATE TABLE IF NOT EXISTS orders(order_id TEXT PRIMARY KEY NOT NULL, sku TEXT NOT NULL, qty INTEGER NOT NULL,
              mode TEXT NOT NULL, status TEXT NOT NULL, txid TEXT, created_ms INTEGER NOT NULL, request_id TEXT, reason TEXT);
            CREATE INDEX IF NOT EXISTS orders_status ON orders(status);
            """)
        // A database from before request ids, or before reasons, has the table without the
        // column, and CREATE TABLE IF NOT EXISTS leaves it so: add it (its old rows have none).
        let columns = try db.query("PRAGMA table_info(orders)").compactMap { $0[1].text }
        for column in ["request_id", "reason"] where !columns.contains(column) {
            try db.exec("ALTER TABLE orders ADD COLUMN \(column) TEXT")
        }
        // One order per request id: a repeat that races the first loses its insert here.
        try db.exec("CREATE UNIQUE INDEX IF NOT EXISTS orders_request_id ON orders(request_id) WHERE request_id IS NOT NULL")
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Throws (a constraint error) when an order with the same request id exists.
    public func insert(_ o: Order) throws {
        try locked {
            _ = try db.run("INSERT INTO orders(order_id, sku, qty, mode, status, txid, created_ms, request_id) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                           [.text(o.orderID), .text(o.sku), .int(o.qty), .text(o.mode), .text(o.status),
                                o.txid.map { .text($0) } ?? .null, .int(Int64(Date().timeIntervalSince1970 * 1000)),
                                o.requestID.map { .text($0) } ?? .null])
        }
    }

    /// Moves a pending order to `outcome`; false when it was no longer pending.
    @discardableResult
    public func settle(_ orderID: String, _ outcome: Outcome) throws -> Bool {
        try locked {
            try db.run("UPDATE orders SET status = ?2, reason = ?3 WHERE order_id = ?1 AND status = 'pending'",
                       [.text(orderID), .text(outcome.status), outcome.reason.map { .text($0) } ?? .null]) == 1
        }
    }

    private static let columns = "order_id, sku, qty, mode, status, txid, request_id, created_ms, reason"

    private static func order(_ r: [SQLValue]) -> Order {
        Order(orderID: r[0].text ?? "", sku: r[1].text ?? "", qty: r[2].int ?? 0, mode: r[3].text ?? "",
              status: r[4].text ?? "", txid: r[5].text, requestID: r[6].text, createdMs: r[7].int ?? 0, reason: r[8].text)
    }

    public func get(_ orderID: String) throws -> Order? {
        try locked {
            try db.query("SELECT \(Self.columns) FROM orders WHERE order_id = ?1", [.text(orderID)]).first.map(Self.order)
        }
    }

    /// The order placed with this request id, if any.
    public func get(requestID: String) throws -> Order? {
        try locked {
            try db.query("SELECT \(Self.columns) FROM orders WHERE request_id = ?1", [.text(requestID)]).first.map(Self.order)
        }
    }

    public func list(status: String?) throws -> [Order] {
        var all: [Order] = []
        var after: String?
        while true {
            let page = try list(status: status, after: after, limit: Limits.demoOrdersListedMax)
            all += page.orders
            guard page.more, let last = page.orders.last else { return all }
            after = last.orderID
        }
    }

    /// Orders in creation order, at most `limit`, after the order `after` (nil: from the
    /// first); `more` says some are left. An unknown `after` throws `OrderStoreError`.
    public func list(status: String?, after: String?, limit: Int) throws -> (orders: [Order], more: Bool) {
        precondition(limit >= 1, "list limit below 1")
        return try locked {
            var conditions: [String] = []
            var args: [SQLValue] = [.int(Int64(limit + 1))]
            if let status {
                args.append(.text(status))
                conditions.append("status = ?\(args.count)")
            }
            if let after {
                guard try !db.query("SELECT 1 FROM orders WHERE order_id = ?1", [.text(after)]).isEmpty else {
                    throw OrderStoreError(description: "no order \(after.prefix(80)) to list after")
                }
                args.append(.text(after))
                conditions.append("(created_ms, order_id) > (SELECT created_ms, order_id FROM orders WHERE order_id = ?\(args.count))")
            }
            let filter = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
            let rows = try db.query("SELECT \(Self.columns) FROM orders\(filter) ORDER BY created_ms, order_id LIMIT ?1", args)
            return (rows.prefix(limit).map(Self.order), rows.count > limit)
        }
    }
}

/// An order's JSON (`GET /v1/orders/{id}` and each order of the list): `reason` only for a
/// rejected order that has one, `request_id` only when the client gave one.
extension OrderStore.Order: WireEncodable {
    public func writeWire(_ w: inout JSONWriter) {
        w.beginObject()
        w.field("order_id", orderID)
        w.field("sku", sku)
        w.field("qty", qty)
        w.field("mode", mode)
        w.field("status", status)
        w.field("request_id", requestID)
        w.field("reason", reason)
        w.endObject()
    }
}

public struct OrderStoreError: Error, CustomStringConvertible {
    public let description: String
}
