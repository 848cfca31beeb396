import CohortCore

/// One record read back from the log.
public struct LogRecord: Equatable {
    public let lsn: UInt64
    public let type: UInt8
    public let payload: [UInt8]

    public init(lsn: UInt64, type: UInt8, payload: [UInt8]) {
        self.lsn = lsn
        self.type = type
        self.payload = payload
    }
}

/// Damage in the log that is not a torn tail: data that was durable is unreadable or missing.
/// Recovery refuses to go on rather than silently skip it.
public struct LogCorruptionError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let offset: Int
    public let reason: String

    public init(file: String, offset: Int, reason: String) {
        self.file = file
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "log corrupt: \(file) at offset \(offset): \(reason)" }
}

/// The on-disk layout. Segment file: header, then records back to back.
///
/// Header (32 bytes): magic "COHORTLG", version u32, segment number u64, first LSN u64, CRC-32C
/// of the preceding 28 bytes.
/// Record: length u32 (payload bytes), CRC-32C u32, type u8, LSN u64, payload. The CRC covers
/// length, type, LSN and payload, so a damaged length is caught too.
/// All integers little-endian. After the last record a segment may hold zeros up to its end:
/// space written ahead of time (`Limits.logPreallocateBytes`), read as the end of the records.
enum LogFormat {
    static let magic: [UInt8] = Array("COHORTLG".utf8)
    static let version: UInt32 = 1
    static let segmentHeaderBytes = 32
    static let recordHeaderBytes = 17
    /// The log's own checkpoint record; user types are 1...255.
    static let checkpointType: UInt8 = 0

    static func segmentFileName(_ number: UInt64) -> String {
        let hex = String(number, radix: 16)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex + ".log"
    }

    /// Where a new segment is written before it is renamed to its own name (DurableLog).
    static func temporarySegmentFileName(_ number: UInt64) -> String { segmentFileName(number) + ".new" }

    static func isTemporarySegmentFileName(_ name: String) -> Bool {
        name.hasSuffix(".log.new") && segmentNumber(fileName: String(name.dropLast(4))) != nil
    }

    /// The segment number of a segment file name, nil for any other file.
    static func segmentNumber(fileName: String) -> UInt64? {
        guard fileName.hasSuffix(".log") else { return nil }
        let stem = fileName.dropLast(4)
        guard stem.count == 16, stem.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else { return nil }
        return UInt64(stem, radix: 16)
    }

    static func maxPayloadBytes(type: UInt8) -> Int {
        type == checkpointType ? Limits.snapshotBytesMax : Limits.recordBytesMax
    }

    static func encodeSegmentHeader(number: UInt64, firstLSN: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: segmentHeaderBytes)
        w.raw(magic)
        w.u32(version)
        w.u64(number)
        w.u64(firstLSN)
        w.u32(CRC32C.checksum(w.bytes))
        return w.bytes
    }

    static func encodeRecord(lsn: UInt64, type: UInt8, payload: [UInt8], into bytes: inout [UInt8]) {
        let start = bytes.count
        var w = ByteWriter(capacity: recordHeaderBytes)
        w.u32(UInt32(payload.count))
        w.u32(0)  // CRC, filled in below
        w.u8(type)
        w.u64(lsn)
        bytes.append(contentsOf: w.bytes)
        bytes.append(contentsOf: payload)
        let crc = bytes.withUnsafeBytes { raw in recordCRC(raw, at: start, payloadCount: payload.count) }
        withUnsafeBytes(of: crc.littleEndian) { c in
            for i in 0..<4 { bytes[start + 4 + i] = c[i] }
        }
    }

    static func encodedRecordBytes(payloadCount: Int) -> Int { recordHeaderBytes + payloadCount }

    /// CRC of the record at `start`: its length field, then type, LSN and payload.
    static func recordCRC(_ raw: UnsafeRawBufferPointer, at start: Int, payloadCount: Int) -> UInt32 {
        let length = UnsafeRawBufferPointer(rebasing: raw[start..<(start + 4)])
        let rest = UnsafeRawBufferPointer(rebasing: raw[(start + 8)..<(start + recordHeaderBytes + payloadCount)])
        return CRC32C.update(CRC32C.update(0, length), rest)
    }

    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }

    static func u64(_ b: [UInt8], _ at: Int) -> UInt64 {
        UInt64(u32(b, at)) | UInt64(u32(b, at + 4)) << 32
    }
}

/// A record found in a segment, with where it is.
struct ScannedRecord {
    let record: LogRecord
    let offset: Int
    let encodedBytes: Int
}

/// What a segment scan found after its last good record.
enum SegmentEnd: Equatable {
    case clean
    /// Bad or incomplete bytes at the end with nothing valid after them: a write cut short.
    /// Only legitimate in the last segment.
    case torn(offset: Int, reason: String)
    case corrupt(offset: Int, reason: String)
}

struct SegmentHeader: Equatable {
    let number: UInt64
    let firstLSN: UInt64
}

struct SegmentScan {
    let file: String
    let size: Int
    /// Nil when the header is missing or bad; `end` then says why.
    let header: SegmentHeader?
    let records: [ScannedRecord]
    let end: SegmentEnd

    /// Offset just past the last good record (where a torn tail is cut).
    var goodBytes: Int {
        if let last = records.last { return last.offset + last.encodedBytes }
        return header == nil ? 0 : LogFormat.segmentHeaderBytes
    }

    var nextLSN: UInt64? {
        if let last = records.last { return last.record.lsn + 1 }
        return header?.firstLSN
    }

    var startsWithCheckpoint: Bool { records.first?.record.type == LogFormat.checkpointType }
}

enum SegmentScanner {
    /// Validates a whole segment. `expectedLSN` is the LSN its first record must have when known
    /// (otherwise the header's is trusted). `isLast` decides whether bad bytes at the end may be
    /// a torn write rather than corruption.
    static func scan(file: String, bytes: [UInt8], number: UInt64, expectedLSN: UInt64?, isLast: Bool) -> SegmentScan {
        let headerBytes = LogFormat.segmentHeaderBytes
        // A segment is created whole (DurableLog: a temporary name, synced, renamed), so its
        // header and first record were durable before its name existed: bad bytes there are
        // damage, never a write a crash cut short. Only after a complete record can the last
        // segment end torn.
        func classify(_ offset: Int, _ reason: String, nextLSN: UInt64, afterARecord: Bool) -> SegmentEnd {
            guard afterARecord else {
                return .corrupt(offset: offset, reason: reason + " (a segment's start is written whole before it gets its name: this is damage, not a crash)")
            }
            if isLast && !hasValidRecord(bytes, after: offset, minLSN: nextLSN) {
                return .torn(offset: offset, reason: reason)
            }
            return .corrupt(offset: offset, reason: reason)
        }

        // Header.
        let headerProblem: String?
        var header: SegmentHeader?
        if bytes.count < headerBytes {
            headerProblem = "segment header incomplete (\(bytes.count) of \(headerBytes) bytes)"
        } else if Array(bytes[0..<8]) != LogFormat.magic {
            headerProblem = "bad segment magic"
        } else if LogFormat.u32(bytes, 28) != CRC32C.checksum(Array(bytes[0..<28])) {
            headerProblem = "segment header checksum mismatch"
        } else if LogFormat.u32(bytes, 8) != LogFormat.version {
            headerProblem = "unsupported segment version \(LogFormat.u32(bytes, 8))"
        } else if LogFormat.u64(bytes, 12) != number {
            headerProblem = "segment header says number \(LogFormat.u64(bytes, 12)), file name says \(number)"
        } else if let expectedLSN, LogFormat.u64(bytes, 20) != expectedLSN {
            headerProblem = "segment starts at LSN \(LogFormat.u64(bytes, 20)), expected \(expectedLSN)"
        } else {
            headerProblem = nil
            header = SegmentHeader(number: number, firstLSN: LogFormat.u64(bytes, 20))
        }
        guard let header else {
            // A valid header with a wrong number or LSN is never a torn write.
            let headerWasIntact = bytes.count >= headerBytes && Array(bytes[0..<8]) == LogFormat.magic
                && LogFormat.u32(bytes, 28) == CRC32C.checksum(Array(bytes[0..<28]))
            if headerWasIntact, let expectedLSN, LogFormat.u32(bytes, 8) == LogFormat.version, LogFormat.u64(bytes, 12) == number {
                // Only the first LSN is unexpected. A segment that starts past LSN 1 begins with
                // a checkpoint; when that record is damaged, recovery finds no checkpoint and
                // expects LSN 1, and blaming the intact header hid where the damage is.
                let firstLSN = LogFormat.u64(bytes, 20)
                var firstRecordBad = true
                if !isZero(bytes, from: headerBytes), case .success = decodeRecord(bytes, at: headerBytes) { firstRecordBad = false }
                let trusted = scan(file: file, bytes: bytes, number: number, expectedLSN: nil, isLast: isLast)
                if firstRecordBad, trusted.records.isEmpty, case .corrupt(let offset, let reason) = trusted.end, offset == headerBytes {
                    let isCheckpoint = bytes.count > headerBytes + 8 && bytes[headerBytes + 8] == LogFormat.checkpointType
                    // The trusted scan names a checkpoint already.
                    let named = isCheckpoint ? reason : "first record (the header says LSN \(firstLSN), expected \(expectedLSN)) damaged: \(reason)"
                    return SegmentScan(file: file, size: bytes.count, header: nil, records: [],
                                       end: .corrupt(offset: offset, reason: named))
                }
            }
            let end: SegmentEnd = headerWasIntact
                ? .corrupt(offset: 0, reason: headerProblem!)
                : classify(0, headerProblem!, nextLSN: expectedLSN ?? 1, afterARecord: false)
            return SegmentScan(file: file, size: bytes.count, header: nil, records: [], end: end)
        }

        var records: [ScannedRecord] = []
        var offset = headerBytes
        var lsn = header.firstLSN
        var end = SegmentEnd.clean
        while offset < bytes.count {
            // Zeros from here to the end are space the writer filled ahead of time
            // (`Limits.logPreallocateBytes`), not a record: no record starts with 17 zero bytes
            // (LSNs start at 1). Zeros followed by anything else are read as before.
            if isZero(bytes, from: offset) { break }
            switch decodeRecord(bytes, at: offset) {
            case .failure(let problem):
                // A damaged checkpoint is named as one (docs/txctl.md), as on the path where its
                // LSN is unexpected: "record checksum mismatch" at offset 32 did not say what
                // the damage cost.
                let isCheckpoint = records.isEmpty && bytes.count > offset + 8 && bytes[offset + 8] == LogFormat.checkpointType
                let reason = isCheckpoint ? "checkpoint record (LSN \(lsn)) damaged: \(problem.reason)" : problem.reason
                end = classify(offset, reason, nextLSN: lsn, afterARecord: !records.isEmpty)
            case .success(let (record, encoded)):
                if record.lsn != lsn {
                    end = .corrupt(offset: offset, reason: "record has LSN \(record.lsn), expected \(lsn)")
                } else if record.type == LogFormat.checkpointType && offset != headerBytes {
                    end = .corrupt(offset: offset, reason: "checkpoint record (LSN \(lsn)) not at the start of its segment")
                } else {
                    records.append(ScannedRecord(record: record, offset: offset, encodedBytes: encoded))
                    offset += encoded
                    lsn += 1
                    continue
                }
            }
            break
        }
        if records.isEmpty, case .clean = end {
            end = classify(offset, "segment has a header and no record", nextLSN: lsn, afterARecord: false)
        }
        if isLast, let cut = cutEnd(bytes, records: records, end: end) { end = cut }
        return SegmentScan(file: file, size: bytes.count, header: header, records: records, end: end)
    }

    struct RecordProblem: Error { let reason: String }

    /// Whether the bytes at `offset` begin a record that the file ends inside: its header cut
    /// short, or a length (within the bounds) that reaches past the file's end. A torn record
    /// in the zeros written ahead has zeros after it, so its length fits in the file; checking
    /// only for a last byte that is not zero let a cut inside a record through whenever the
    /// byte before the cut happened to be 0 (a black-box probe, `truncate -s 1000000`).
    static func recordRunsPastTheEnd(_ bytes: [UInt8], at offset: Int) -> Bool {
        let headerBytes = LogFormat.recordHeaderBytes
        guard bytes.count - offset >= headerBytes else { return true }
        let length = Int(LogFormat.u32(bytes, offset))
        return length <= LogFormat.maxPayloadBytes(type: bytes[offset + 8]) && offset + headerBytes + length > bytes.count
    }

    /// The last segment's end, when no crash can have left it: its length is not a multiple of
    /// `Limits.logFileAlignmentBytes` and its records (or a torn one) run to the file's last
    /// byte, with none of the zeros the writer puts after them. A crash leaves a multiple (a
    /// write stopped at a page boundary, or one that ended where the writer rounded it), so
    /// the file was cut, and records that were durable, and acted on, may be gone. A black-box
    /// probe cut a coordinator log at a record boundary: it started silently and answered 404
    /// for 6,000 acknowledged commits. (A cut at a multiple, or a tail overwritten with zeros,
    /// still reads as the end: docs/failure-model.md.)
    static func cutEnd(_ bytes: [UInt8], records: [ScannedRecord], end: SegmentEnd) -> SegmentEnd? {
        guard bytes.count % Limits.logFileAlignmentBytes != 0, let last = records.last else { return nil }
        let recordsEnd = last.offset + last.encodedBytes
        switch end {
        case .clean where recordsEnd == bytes.count: break
        case .torn(let offset, _) where bytes.last != 0 || recordRunsPastTheEnd(bytes, at: offset): break
        default: return nil
        }
        let a = Limits.logFileAlignmentBytes
        return .corrupt(offset: bytes.count, reason: "the file ends at byte \(bytes.count), \(recordsEnd == bytes.count ? "right after" : "inside the bytes after") its last whole record (LSN \(last.record.lsn) at offset \(last.offset)), with none of the zeros the log writes after its records, and \(bytes.count) is not a multiple of \(a), a length no crash leaves: the end of the file was cut off, and records that were durable may be lost. Restore the file from a copy; or, knowing that only bytes never reported durable are missing, extend it with zeros to a multiple of \(a) (`truncate -s %\(a) FILE`) and start again")
    }

    static func isZero(_ bytes: [UInt8], from offset: Int) -> Bool {
        bytes.withUnsafeBufferPointer { b in
            var i = offset
            // A word at a time: a preallocated tail is up to `Limits.logPreallocateBytes` long.
            while i + 8 <= b.count {
                if UnsafeRawPointer(b.baseAddress! + i).loadUnaligned(as: UInt64.self) != 0 { return false }
                i += 8
            }
            while i < b.count {
                if b[i] != 0 { return false }
                i += 1
            }
            return true
        }
    }

    static func decodeRecord(_ bytes: [UInt8], at offset: Int) -> Result<(LogRecord, Int), RecordProblem> {
        let headerBytes = LogFormat.recordHeaderBytes
        guard bytes.count - offset >= headerBytes else {
            return .failure(RecordProblem(reason: "record header incomplete (\(bytes.count - offset) of \(headerBytes) bytes)"))
        }
        let length = Int(LogFormat.u32(bytes, offset))
        let type = bytes[offset + 8]
        guard length <= LogFormat.maxPayloadBytes(type: type) else {
            return .failure(RecordProblem(reason: "record length \(length) exceeds the maximum"))
        }
        guard bytes.count - offset - headerBytes >= length else {
            return .failure(RecordProblem(reason: "record incomplete (\(bytes.count - offset - headerBytes) of \(length) payload bytes)"))
        }
        let crc = bytes.withUnsafeBytes { LogFormat.recordCRC($0, at: offset, payloadCount: length) }
        guard crc == LogFormat.u32(bytes, offset + 4) else {
            return .failure(RecordProblem(reason: "record checksum mismatch"))
        }
        let lsn = LogFormat.u64(bytes, offset + 9)
        let payload = Array(bytes[(offset + headerBytes)..<(offset + headerBytes + length)])
        return .success((LogRecord(lsn: lsn, type: type, payload: payload), headerBytes + length))
    }

    /// Whether any checksum-valid record with an LSN at or past `minLSN` starts after `offset`.
    /// Such a record means the bad bytes before it are damage, not a write cut short.
    static func hasValidRecord(_ bytes: [UInt8], after offset: Int, minLSN: UInt64) -> Bool {
        let headerBytes = LogFormat.recordHeaderBytes
        var candidate = max(offset + 1, LogFormat.segmentHeaderBytes)
        while candidate + headerBytes <= bytes.count {
            let length = Int(LogFormat.u32(bytes, candidate))
            let lsn = LogFormat.u64(bytes, candidate + 9)
            // Cheap filters first: most garbage fails on length or LSN before any CRC is computed.
            if lsn >= minLSN && lsn - minLSN <= UInt64(bytes.count)
                && length <= LogFormat.maxPayloadBytes(type: bytes[candidate + 8])
                && candidate + headerBytes + length <= bytes.count,
               case .success = decodeRecord(bytes, at: candidate) {
                return true
            }
            candidate += 1
        }
        return false
    }
}
