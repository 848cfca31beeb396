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

    /// Hashes the numbers only: every txid one coordinator keeps has the same coordinator id,
    /// so hashing that string on every table lookup bought nothing (equality still compares
    /// all three parts).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(epoch)
        hasher.combine(sequence)
    }

    /// Written straight into the String's own storage: the coordinator renders txids into every
    /// message it sends. `String(_:radix:)` twice per txid showed as 2% of its instructions, and
    /// then a byte array copied into a String was two allocations per txid (2.5%).
    public var description: String {
        var id = coordinatorID
        return id.withUTF8 { prefix in
            // The id (8 bytes when valid), and '-' and up to 16 hex digits twice.
            String(unsafeUninitializedCapacity: prefix.count + 34) { out in
                var n = 0
                for b in prefix {
                    out[n] = b
                    n += 1
                }
                // Not a loop over [epoch, sequence]: that array was an allocation per txid printed.
                TxID.writeHex(epoch, to: out, at: &n)
                TxID.writeHex(sequence, to: out, at: &n)
                return n
            }
        }
    }

    private static func writeHex(_ v: UInt64, to out: UnsafeMutableBufferPointer<UInt8>, at n: inout Int) {
        out[n] = UInt8(ascii: "-")
        n += 1
        var shift = 60
        while shift > 0 && (v >> UInt64(shift)) & 0xF == 0 { shift -= 4 }
        while shift >= 0 {
            let d = UInt8((v >> UInt64(shift)) & 0xF)
            out[n] = d < 10 ? 48 + d : 87 + d
            n += 1
            shift -= 4
        }
    }

    /// Parses the text form; nil for anything else (ids arrive from outside).
    ///
    /// Scans the bytes once without splitting into substrings: the coordinator parses a txid
    /// for every message, and the generic `split` showed as 7% of its instructions.
    public init?(_ text: String) {
        var text = text
        let parsed: (UInt64, UInt64)? = text.withUTF8 { u in
            // 8 hex digits, '-', 1-16 hex digits, '-', 1-16 hex digits.
            guard u.count >= 12, u.count <= Limits.txidBytesMax, u[8] == UInt8(ascii: "-") else { return nil }
            for k in 0..<8 where !((u[k] >= 48 && u[k] <= 57) || (u[k] >= 97 && u[k] <= 102)) { return nil }
            var i = 9
            func hex() -> UInt64? {
                let start = i
                var v: UInt64 = 0
                while i < u.count, let d = TxID.hexDigit(u[i]) {
                    guard i - start < 16 else { return nil }
                    v = v << 4 | UInt64(d)
                    i += 1
                }
                return i > start ? v : nil
            }
            guard let epoch = hex(), i < u.count, u[i] == UInt8(ascii: "-") else { return nil }
            i += 1
            guard let sequence = hex(), i == u.count else { return nil }
            return (epoch, sequence)
        }
        guard let parsed else { return nil }
        var id = text
        self.coordinatorID = id.withUTF8 { String(decoding: UnsafeBufferPointer(rebasing: $0[0..<8]), as: UTF8.self) }
        self.epoch = parsed.0
        self.sequence = parsed.1
    }

    private static func hexDigit(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: return b - 48
        case 97...102: return b - 87
        case 65...70: return b - 55
        default: return nil
        }
    }

    public static func isValidCoordinatorID(_ s: String) -> Bool {
        s.utf8.count == 8 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    public static func < (a: TxID, b: TxID) -> Bool {
        (a.epoch, a.sequence) < (b.epoch, b.sequence)
    }
}
