import CohortCore
import CohortSQLite
import Dispatch
import Foundation

/// What each try reserved, per branch, until its confirm or cancel settles exactly that: the
/// table both inventories keep (this library's `InventoryStore`, in `tcc-inventory`, and the
/// demo's inventory-service), and the rule they share for setting a sku's stock.
public enum TCCReservations {
    public static let schema = """
        CREATE TABLE IF NOT EXISTS tcc_reservation(txid TEXT NOT NULL, branch_id TEXT NOT NULL, sku TEXT NOT NULL,
          qty INTEGER NOT NULL, PRIMARY KEY(txid, branch_id)) WITHOUT ROWID;
        """

    /// Reservations of `sku` tried and not yet confirmed or cancelled.
    public static func open(_ db: SQLiteConnection, sku: String) throws -> Int64 {
        try db.query("SELECT COUNT(*) FROM tcc_reservation WHERE sku = ?1", [.text(sku)]).first?[0].int ?? 0
    }

    /// Why a sku's stock is not set while it has open reservations (a 409): setting `reserved`
    /// to 0 under a reservation sends it negative at that reservation's confirm or cancel, which
    /// then fails for ever (the stock table's CHECK) and the transaction parks.
    public static func stockSetRefusal(sku: String) -> String {
        "sku \(sku) has TCC reservations not yet confirmed or cancelled; set its stock once they are settled"
    }
}

/// The worked example: stock per sku, reserved by try, sold by confirm, released by cancel.
/// Payload `{"sku", "qty"}`. What try reserved is kept per branch (`tcc_reservation`), so
/// confirm and cancel settle exactly that, whatever payload they are sent.
public final class InventoryStore: @unchecked Sendable {
    public let resource: TCCResource

    public static let schema = """
        CREATE TABLE IF NOT EXISTS stock(sku TEXT PRIMARY KEY NOT NULL, available INTEGER NOT NULL,
          reserved INTEGER NOT NULL DEFAULT 0, sold INTEGER NOT NULL DEFAULT 0,
          CHECK (available >= 0 AND reserved >= 0 AND sold >= 0)) WITHOUT ROWID;
        """ + TCCReservations.schema

    public struct Stock: Codable, Equatable, Sendable {
        public let sku: String
        public let available: Int64
        public let reserved: Int64
        public let sold: Int64
        public init(sku: String, available: Int64, reserved: Int64, sold: Int64) {
            self.sku = sku
            self.available = available
            self.reserved = reserved
            self.sold = sold
        }
    }

    public init(databasePath: String, options: TCCResource.Options = .init(),
                clock: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) },
                monotonicClock: @escaping @Sendable () -> Int64 = { Int64(DispatchTime.now().uptimeNanoseconds / 1_000_000) }) throws {
        resource = try TCCResource(
            name: "inventory", databasePath: databasePath, schema: Self.schema, options: options, clock: clock, monotonicClock: monotonicClock,
            try: { ctx in
                guard let sku = ctx.payload?["sku"]?.stringValue, let qty = ctx.payload?["qty"]?.intValue, qty > 0 else {
                    throw TCCError.badRequest("payload must be {\"sku\": STRING, \"qty\": POSITIVE INT}")
                }
                let changed = try ctx.db.run(
                    "UPDATE stock SET available = available - ?2, reserved = reserved + ?2 WHERE sku = ?1 AND available >= ?2",
                    [.text(sku), .int(qty)])
                guard changed == 1 else { throw TCCError.refused("not enough stock of \(sku) for \(qty)") }
                try ctx.db.run("INSERT INTO tcc_reservation(txid, branch_id, sku, qty) VALUES(?1, ?2, ?3, ?4)",
                               [.text(ctx.txid), .text(ctx.branchID), .text(sku), .int(qty)])
                return .object(["sku": .string(sku), "reserved": .int(qty)])
            },
            confirm: { ctx in
                guard let (sku, qty) = try Self.reservation(ctx) else { return }
                try ctx.db.run("UPDATE stock SET reserved = reserved - ?2, sold = sold + ?2 WHERE sku = ?1", [.text(sku), .int(qty)])
            },
            cancel: { ctx in
                guard let (sku, qty) = try Self.reservation(ctx) else { return }
                try ctx.db.run("UPDATE stock SET reserved = reserved - ?2, available = available + ?2 WHERE sku = ?1", [.text(sku), .int(qty)])
            })
    }

    /// Takes (and deletes) what the branch's try reserved.
    private static func reservation(_ ctx: TCCContext) throws -> (String, Int64)? {
        let key: [SQLValue] = [.text(ctx.txid), .text(ctx.branchID)]
        guard let row = try ctx.db.query("SELECT sku, qty FROM tcc_reservation WHERE txid = ?1 AND branch_id = ?2", key).first,
              let sku = row[0].text, let qty = row[1].int else { return nil }
        try ctx.db.run("DELETE FROM tcc_reservation WHERE txid = ?1 AND branch_id = ?2", key)
        return (sku, qty)
    }

    /// Sets a sku's stock (setup only): available as given, reserved and sold 0. Refused
    /// (`TCCError.conflict`) while the sku has reservations not yet confirmed or cancelled; read
    /// in the setting transaction, which no phase's can interleave with (BEGIN IMMEDIATE).
    public func setStock(sku: String, available: Int64) throws {
        guard available >= 0, !sku.isEmpty, sku.utf8.count <= Limits.keyBytesMax else { throw TCCError.badRequest("sku must be 1-\(Limits.keyBytesMax) bytes and available >= 0") }
        _ = try resource.withConnection { db in
            try db.transaction {
                if try TCCReservations.open(db, sku: sku) > 0 { throw TCCError.conflict(TCCReservations.stockSetRefusal(sku: sku)) }
                try db.run("INSERT INTO stock(sku, available, reserved, sold) VALUES(?1, ?2, 0, 0) ON CONFLICT(sku) DO UPDATE SET available = ?2, reserved = 0, sold = 0",
                           [.text(sku), .int(available)])
            }
        }
    }

    public func stock(sku: String) throws -> Stock? {
        try resource.withConnection { db in
            guard let r = try db.query("SELECT available, reserved, sold FROM stock WHERE sku = ?1", [.text(sku)]).first else { return nil }
            return Stock(sku: sku, available: r[0].int ?? 0, reserved: r[1].int ?? 0, sold: r[2].int ?? 0)
        }
    }
}

/// `POST /v1/stock`'s body at the demo's inventories (`inventory-service` and `tcc-inventory`):
/// a sku and its available stock; other fields are refused, naming the field (a misspelt one
/// was ignored).
public struct StockRequest: WireDecodable {
    public let sku: String
    public let available: Int64
    public init(wire o: WireObject) throws {
        try o.refuseUnknownFields(["sku", "available"])
        sku = try o.string("sku")
        available = try o.int64("available")
    }
}
