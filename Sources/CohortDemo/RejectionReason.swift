import CohortClient
import CohortCore
import CohortKV

/// The `reason` of a rejected order: `KIND: detail`, KIND one of `DemoRejection.all`, so a
/// client can tell too little stock (ask for less, or later) from an abort (place it again)
/// without reading the detail. Pure: the order service passes in what it was told.
enum RejectionReason {
    /// `kind: detail` in one line and at most `Limits.demoRejectionReasonBytesMax` bytes. The
    /// detail often comes from elsewhere (a participant's error, passed on by the coordinator),
    /// so line breaks and other control characters become spaces.
    static func make(_ kind: String, _ detail: String) -> String {
        precondition(DemoRejection.all.contains(kind), "not a rejection kind: \(kind)")
        let oneLine = String(String.UnicodeScalarView(detail.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7f ? " " : $0 }))
        return (kind + ": " + oneLine).clippedUTF8(toBytes: Limits.demoRejectionReasonBytesMax)
    }

    /// What the inventory says when it cannot take `qty` of `sku` (a refused TCC try, an
    /// outbox order's `StockRejected`), and so what the order service finds in a refusal.
    static func notEnoughStock(sku: String, qty: Int64) -> String { "not enough stock of \(sku) for \(qty)" }

    static func insufficientStock(sku: String, qty: Int64) -> String {
        make(DemoRejection.insufficientStock, notEnoughStock(sku: sku, qty: qty))
    }

    /// A 2PC/3PC/TCC order whose transaction aborted, from the coordinator's word: the reason
    /// in its commit answer or `GET /v1/transactions/{txid}` (nil when it gave none), or the
    /// error it answered a TCC branch registration with (its try failed, so it cancels).
    /// - The stock branch's vote no on `available/{sku}` falling below 0, or the inventory's
    ///   refusal of a TCC try for too little stock: insufficient stock.
    /// - The abort reason the coordinator records for its client's own abort: the only client
    ///   aborting an order's transaction is the order service, and it does so on its own
    ///   account only for an order it lost track of: one a restart found pending (the request
    ///   that placed it died), or one whose branch here was never staged (it died between the
    ///   begin and the work).
    /// - Anything else (a timeout, a prepare or try that failed, an operator's decision): aborted.
    static func fromAbort(_ reason: String?, sku: String, qty: Int64) -> String {
        guard let reason else { return make(DemoRejection.aborted, "the coordinator gave no reason") }
        if reason.contains(KVResource.belowMinReasonPrefix(key: "available/\(sku)", delta: -qty))
            || reason.contains(notEnoughStock(sku: sku, qty: qty)) {
            return insufficientStock(sku: sku, qty: qty)
        }
        if reason == Coordinator.clientAbortReason || reason == TCCCoordinator.initiatorAbortReason {
            return make(DemoRejection.orderService, "it restarted while placing the order and aborted its transaction")
        }
        return make(DemoRejection.aborted, reason)
    }
}
