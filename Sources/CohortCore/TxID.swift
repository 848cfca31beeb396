/// A transaction id: `<coordinator id>-<epoch hex>-<sequence hex>`.
///
/// The coordinator id is chosen once when a coordinator's data directory is created, so a
/// participant can tell "this coordinator has no record of my transaction" (presumed abort) from
/// "this is a different coordinator" (its data directory was wiped or replaced: refuse, never
/// presume). The epoch is fixed at each start and is larger than every epoch in the log, so ids
/// are never reused across restarts without writing anything at start.
public struct TxID: Hashable, Comparable, CustomStringConvertible, Sendable {
    public let coordinatorID: String
    public let epoch: UInt64
    public let sequence: UInt64

    public init(coordinatorID: String, epoch: UInt64, sequence: UInt64) {
        precondition(TxID.isValidCoordinatorID(coordinatorID), "bad coordinator id \(coordinatorID)")
        self.coordinatorID = coordinatorID
        self.epoch = epoch
        self.sequence = sequence
    }

    public var description: String {
        "\(coordinatorID)-\(String(epoch, radix: 16))-\(String(sequence, radix: 16))"
    }

    /// Parses the text form; nil for anything else (ids arrive from outside).
    public init?(_ text: String) {
        guard text.utf8.count <= 64 else { return nil }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, TxID.isValidCoordinatorID(String(parts[0])),
              parts[1].utf8.count <= 16, parts[2].utf8.count <= 16,
              let epoch = UInt64(parts[1], radix: 16), let sequence = UInt64(parts[2], radix: 16)
        else { return nil }
        self.coordinatorID = String(parts[0])
        self.epoch = epoch
        self.sequence = sequence
    }

    public static func isValidCoordinatorID(_ s: String) -> Bool {
        s.utf8.count == 8 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    public static func < (a: TxID, b: TxID) -> Bool {
        (a.epoch, a.sequence) < (b.epoch, b.sequence)
    }
}
