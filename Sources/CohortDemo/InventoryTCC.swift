import CohortCore
import CohortKV
import CohortSQLite
import CohortTCC
import Foundation

/// The inventory's TCC resource (`POST /v1/tcc/inventory/{try,confirm,cancel}`), through the
/// CohortTCC barrier. Its database is the participant store's own SQLite file, so the barrier row
/// and the stock change (the store's `kv` rows `available/`, `reserved/`, `sold/{sku}`) commit in
/// one local transaction. Phases run on the participant's event loop, between its store
/// operations; a phase touching a sku whose keys a 2PC/3PC branch holds locked would race that
/// branch's prepared values, so it is refused (try: 409, the order is rejected) or answered 503
/// (confirm, cancel: the coordinator retries).
enum InventoryTCC {
    static let schema = TCCReservations.schema

    /// Reservations of `sku` tried and not yet confirmed or cancelled.
    static func reservations(_ tcc: TCCResource, sku: String) throws -> Int64 {
        try tcc.withConnection { try TCCReservations.open($0, sku: sku) }
    }

    static func make(databasePath: String, locked: @escaping (String) -> Bool) throws -> TCCResource {
        func busy(_ sku: String) -> Bool {
            locked("available/\(sku)") || locked("reserved/\(sku)") || locked("sold/\(sku)")
        }
        func add(_ db: SQLiteConnection, _ key: String, _ delta: Int64) throws {
            try db.run("INSERT INTO kv(key, ival, sval) VALUES(?1, ?2, NULL) ON CONFLICT(key) DO UPDATE SET ival = COALESCE(ival, 0) + ?2",
                       [.text(key), .int(delta)])
        }
        func reservation(_ ctx: TCCContext) throws -> (String, Int64)? {
            let key: [SQLValue] = [.text(ctx.txid), .text(ctx.branchID)]
            guard let row = try ctx.db.query("SELECT sku, qty FROM tcc_reservation WHERE txid = ?1 AND branch_id = ?2", key).first,
                  let sku = row[0].text, let qty = row[1].int else { return nil }
            if busy(sku) { throw SQLiteError(code: 5, message: "sku \(sku) is locked by a 2PC/3PC branch; retry", context: "settling") }
            try ctx.db.run("DELETE FROM tcc_reservation WHERE txid = ?1 AND branch_id = ?2", key)
            return (sku, qty)
        }
        return try TCCResource(
            name: "inventory", databasePath: databasePath, schema: schema,
            try: { ctx in
                guard let sku = ctx.payload?["sku"]?.stringValue, validSku(sku), let qty = ctx.payload?["qty"]?.intValue, qty > 0 else {
                    throw TCCError.badRequest("payload must be {\"sku\": STRING, \"qty\": POSITIVE INT}")
                }
                if busy(sku) { throw TCCError.refused("sku \(sku) is busy in another transaction") }
                let changed = try ctx.db.run("UPDATE kv SET ival = ival - ?2 WHERE key = ?1 AND ival >= ?2",
                                             [.text("available/\(sku)"), .int(qty)])
                guard changed == 1 else { throw TCCError.refused(RejectionReason.notEnoughStock(sku: sku, qty: qty)) }
                try add(ctx.db, "reserved/\(sku)", qty)
                try ctx.db.run("INSERT INTO tcc_reservation(txid, branch_id, sku, qty) VALUES(?1, ?2, ?3, ?4)",
                               [.text(ctx.txid), .text(ctx.branchID), .text(sku), .int(qty)])
                return .object(["sku": .string(sku), "reserved": .int(qty)])
            },
            confirm: { ctx in
                guard let (sku, qty) = try reservation(ctx) else { return }
                try add(ctx.db, "reserved/\(sku)", -qty)
                try add(ctx.db, "sold/\(sku)", qty)
            },
            cancel: { ctx in
                guard let (sku, qty) = try reservation(ctx) else { return }
                try add(ctx.db, "reserved/\(sku)", -qty)
                try add(ctx.db, "available/\(sku)", qty)
            })
    }
}
