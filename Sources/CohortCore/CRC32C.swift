/// CRC-32C (Castagnoli; reflected polynomial 0x82F63B78), the checksum of iSCSI, ext4 and most
/// write-ahead logs: it detects all burst errors up to 32 bits and is what log tools expect.
/// Table-driven, slicing-by-8: eight bytes per step through eight 256-entry tables.
public enum CRC32C {
    /// Eight tables of 256 entries, flattened: table k at [k * 256 ..< (k + 1) * 256].
    /// Entry k of byte b is the CRC of b followed by k zero bytes, which lets one step fold eight
    /// input bytes at once.
    static let tables: [UInt32] = {
        var t = [UInt32](repeating: 0, count: 8 * 256)
        for byte in 0..<256 {
            var crc = UInt32(byte)
            for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            t[byte] = crc
        }
        for k in 1..<8 {
            for byte in 0..<256 {
                let previous = t[(k - 1) * 256 + byte]
                t[k * 256 + byte] = (previous >> 8) ^ t[Int(previous & 0xFF)]
            }
        }
        return t
    }()

    /// The CRC-32C of `bytes`.
    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { update(0, $0) }
    }

    /// Extends a finished CRC with more bytes: `update(checksum(a), b) == checksum(a + b)`, and
    /// `update(0, b) == checksum(b)`. The pre- and post-inversion happen inside.
    public static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~crc
        let count = bytes.count
        guard count > 0, let base = bytes.baseAddress else { return crc }
        tables.withUnsafeBufferPointer { t in
            var i = 0
            while count - i >= 8 {
                let lo = c ^ (UInt32(base.load(fromByteOffset: i, as: UInt8.self))
                    | UInt32(base.load(fromByteOffset: i + 1, as: UInt8.self)) << 8
                    | UInt32(base.load(fromByteOffset: i + 2, as: UInt8.self)) << 16
                    | UInt32(base.load(fromByteOffset: i + 3, as: UInt8.self)) << 24)
                let hi = UInt32(base.load(fromByteOffset: i + 4, as: UInt8.self))
                    | UInt32(base.load(fromByteOffset: i + 5, as: UInt8.self)) << 8
                    | UInt32(base.load(fromByteOffset: i + 6, as: UInt8.self)) << 16
                    | UInt32(base.load(fromByteOffset: i + 7, as: UInt8.self)) << 24
                c = t[7 * 256 + Int(lo & 0xFF)] ^ t[6 * 256 + Int((lo >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((lo >> 16) & 0xFF)] ^ t[4 * 256 + Int(lo >> 24)]
                    ^ t[3 * 256 + Int(hi & 0xFF)] ^ t[2 * 256 + Int((hi >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
                i += 8
            }
            while i < count {
                c = (c >> 8) ^ t[Int((c ^ UInt32(base.load(fromByteOffset: i, as: UInt8.self))) & 0xFF)]
                i += 1
            }
        }
        return ~c
    }
}
