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
/// branch's prepared values, so it does not run then: the service holds it until the locks are
/// released (`SkuLockWaits`, up to `Limits.demoTCCLockWaitMs`), and only past that is it refused
/// (try: 409, the order is rejected) or answered 503 (confirm, cancel: the coordinator retries).
/// The checks here stay the last word: a phase that finds its sku busy refuses (the try) or
/// throws `SkuBusy` (confirm, cancel), and the service decides whether it waits.
enum InventoryTCC {
    static let schema = TCCReservations.schema

    /// The keys of `sku` a 2PC/3PC branch may lock.
    static func keys(_ sku: String) -> [String] { ["available/\(sku)", "reserved/\(sku)", "sold/\(sku)"] }

    /// A try's refusal while its sku's keys are locked (the service adds how long it waited).
    static func busyRefusal(sku: String) -> String { "sku \(sku) is busy in another transaction" }

    /// The sku a try names, when the call is a well-formed one; nil for a bad one (the barrier
    /// or the try refuses it, 400, and it has nothing to wait for: it is answered at once).
    static func sku(ofTry call: TCCResource.PhaseCall) -> String? {
        guard call.phase == .try, !call.txid.isEmpty, call.txid.utf8.count <= Limits.tccBranchIDBytesMax,
              !call.branchID.isEmpty, call.branchID.utf8.count <= Limits.tccBranchIDBytesMax,
              let sku = call.payload?["sku"]?.stringValue, validSku(sku), let qty = call.payload?["qty"]?.intValue, qty > 0 else {
            return nil
        }
        return sku
    }

    /// A confirm or cancel found its reservation's sku locked by a 2PC/3PC branch: nothing ran
    /// (its savepoint is rolled back). The service holds it and runs it again once the sku is
    /// free, or answers 503 (the coordinator retries).
    struct SkuBusy: Error, CustomStringConvertible {
        let sku: String
        var description: String { "sku \(sku) is locked by a 2PC/3PC branch; retry" }
    }

    /// Reservations of `sku` tried and not yet confirmed or cancelled.
    static func reservations(_ tcc: TCCResource, sku: String) throws -> Int64 {
        try tcc.withConnection { try TCCReservations.open($0, sku: sku) }
    }

    static func make(databasePath: String, locked: @escaping (String) -> Bool) throws -> TCCResource {
        func busy(_ sku: String) -> Bool { keys(sku).contains(where: locked) }
        func add(_ db: SQLiteConnection, _ key: String, _ delta: Int64) throws {
            try db.run("INSERT INTO kv(key, ival, sval) VALUES(?1, ?2, NULL) ON CONFLICT(key) DO UPDATE SET ival = COALESCE(ival, 0) + ?2",
                       [.text(key), .int(delta)])
        }
        func reservation(_ ctx: TCCContext) throws -> (String, Int64)? {
            let key: [SQLValue] = [.text(ctx.txid), .text(ctx.branchID)]
            guard let row = try ctx.db.query("SELECT sku, qty FROM tcc_reservation WHERE txid = ?1 AND branch_id = ?2", key).first,
                  let sku = row[0].text, let qty = row[1].int else { return nil }
            if busy(sku) { throw SkuBusy(sku: sku) }
            try ctx.db.run("DELETE FROM tcc_reservation WHERE txid = ?1 AND branch_id = ?2", key)
            return (sku, qty)
        }
        return try TCCResource(
            name: "inventory", databasePath: databasePath, schema: schema,
            try: { ctx in
                guard let sku = ctx.payload?["sku"]?.stringValue, validSku(sku), let qty = ctx.payload?["qty"]?.intValue, qty > 0 else {
                    throw TCCError.badRequest("payload must be {\"sku\": STRING, \"qty\": POSITIVE INT}")
                }
                if busy(sku) { throw TCCError.refused(busyRefusal(sku: sku)) }
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
