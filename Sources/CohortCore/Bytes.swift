/// Little-endian binary encoding for log records and write sets.
/// Decoding never traps on bad input: it throws `DecodeError`, because log files and network
/// bodies are outside input.
public struct DecodeError: Error, CustomStringConvertible, Equatable {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "decode error: \(reason)" }
}

public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u32(_ v: UInt32) {
        var x = v.littleEndian
        withUnsafeBytes(of: &x) { bytes.append(contentsOf: $0) }
    }
    public mutating func u64(_ v: UInt64) {
        var x = v.littleEndian
        withUnsafeBytes(of: &x) { bytes.append(contentsOf: $0) }
    }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    public mutating func blob(_ v: [UInt8]) {
        u32(UInt32(v.count))
        bytes.append(contentsOf: v)
    }
    /// Straight from the string's UTF-8: an `Array` of it first cost an allocation per string,
    /// a third of encoding a checkpoint's committed submissions.
    public mutating func string(_ v: String) {
        var v = v
        v.withUTF8 { utf8 in
            u32(UInt32(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }
    public mutating func raw(_ v: [UInt8]) { bytes.append(contentsOf: v) }
    /// Many words at once (the outcome ledger's 2 MiB): one copy, not a call per word.
    public mutating func u64s(_ v: [UInt64]) {
        #if _endian(little)
        v.withUnsafeBytes { bytes.append(contentsOf: $0) }
        #else
        for x in v { u64(x) }
        #endif
    }
}

public struct ByteReader {
    public let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset >= bytes.count }

    private mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else {
            throw DecodeError("need \(n) bytes at offset \(offset), have \(remaining)")
        }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    public mutating func u8() throws -> UInt8 { try take(1).first! }
    public mutating func u32() throws -> UInt32 {
        let s = try take(4)
        var v: UInt32 = 0
        for (i, b) in s.enumerated() { v |= UInt32(b) << (8 * UInt32(i)) }
        return v
    }
    public mutating func u64() throws -> UInt64 {
        let s = try take(8)
        var v: UInt64 = 0
        for (i, b) in s.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
    public mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    public mutating func bool() throws -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        case let b: throw DecodeError("bad bool byte \(b)")
        }
    }
    public mutating func blob(maxCount: Int = Limits.recordBytesMax) throws -> [UInt8] {
        let n = Int(try u32())
        guard n <= maxCount else { throw DecodeError("blob of \(n) bytes exceeds \(maxCount)") }
        return Array(try take(n))
    }
    public mutating func string(maxCount: Int = Limits.recordBytesMax) throws -> String {
        let b = try blob(maxCount: maxCount)
        guard let s = String(validating: b, as: UTF8.self) else { throw DecodeError("invalid UTF-8") }
        return s
    }
    public mutating func raw(_ n: Int) throws -> [UInt8] { Array(try take(n)) }
    /// `n` words written by `ByteWriter.u64s`.
    public mutating func u64s(_ n: Int) throws -> [UInt64] {
        guard n >= 0, n <= remaining / 8 else {
            throw DecodeError("need \(n) words at offset \(offset), have \(remaining) bytes")
        }
        var words = [UInt64](repeating: 0, count: n)
        #if _endian(little)
        let start = offset
        words.withUnsafeMutableBytes { dst in
            bytes.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<(start + n * 8)])) }
        }
        offset += n * 8
        #else
        for i in 0..<n { words[i] = try u64() }
        #endif
        return words
    }
}

extension String {
    /// At most `bytesMax` bytes of UTF-8, cut at a character boundary and ending in "..." when
    /// cut: for text from outside (an error a service answered) kept in memory and in logs.
    public func clippedUTF8(toBytes bytesMax: Int) -> String {
        precondition(bytesMax >= 3, "room for the ellipsis")
        guard utf8.count > bytesMax else { return self }
        var kept = 0
        var end = startIndex
        for c in self {
            let n = c.utf8.count
            if kept + n > bytesMax - 3 { break }
            kept += n
            end = index(after: end)
        }
        return String(self[..<end]) + "..."
    }
}
