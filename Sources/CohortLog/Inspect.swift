import CohortCore

/// A read-only report on a log's files, for operators (`txctl log inspect|verify`).
public struct LogInspection {
    public struct Record: Equatable {
        public let lsn: UInt64
        public let type: UInt8
        /// Payload bytes.
        public let payloadBytes: Int
        /// Where the record starts in its segment file.
        public let offset: Int
        /// The payload itself, for a report that decodes it (read once, with the segment).
        public let payload: [UInt8]
    }

    public struct Problem: Equatable, CustomStringConvertible {
        public enum Kind: Equatable {
            /// A write cut short at the end of the last segment; recovery would cut it off.
            case tornTail
            /// Damage recovery would refuse to open.
            case corruption
            /// Damage, or a missing segment, before the newest checkpoint: recovery deletes
            /// those segments (a crash while it deleted them leaves gaps), so it starts anyway.
            case superseded
        }
        public let kind: Kind
        public let file: String
        public let offset: Int
        public let reason: String

        public var description: String {
            "\(kind == .tornTail ? "torn tail" : kind == .corruption ? "corruption" : "superseded"): \(file) at offset \(offset): \(reason)"
        }
    }

    /// What the bytes recovery would cut (or did cut, in a kept `.torn-OFFSET` copy) hold,
    /// read as one record for an operator: a torn write and a whole record damaged after it
    /// was written look alike to recovery, and the difference decides whether an outcome that
    /// was acknowledged is lost with them (docs/txctl.md, "A torn tail").
    public struct CutRecord: Equatable {
        /// Bytes from the cut to the last nonzero byte.
        public let bytes: Int
        /// Nil when fewer than a record header's bytes are there.
        public let lsn: UInt64?
        public let type: UInt8?
        /// The payload length the header declares.
        public let declaredPayloadBytes: Int?
        /// Of those, how many come before the last nonzero byte. Space written ahead reads as
        /// zeros, and so do the high bytes of a record's last integer: a few zeros at the end
        /// are normal, a run of them is a write that stopped.
        public let writtenPayloadBytes: Int
        /// Whether the declared length fits the log's limits at all.
        public let lengthPlausible: Bool
        /// Whether the checksum matches the declared bytes as the file holds them.
        public let checksumMatches: Bool
        /// The declared payload as the file holds it, when the file is long enough.
        public let payload: [UInt8]?

        /// Zeros at the end of a payload that still count as written (an Int64's high bytes).
        public static let trailingZerosWritten = 8

        /// True when the bytes stop before the record does: a write a crash cut short.
        public var isCutShort: Bool {
            guard let declared = declaredPayloadBytes, lengthPlausible, !checksumMatches else { return lsn == nil }
            return payload == nil || writtenPayloadBytes + Self.trailingZerosWritten < declared
        }

        /// Reads `bytes` (starting at the cut) as one record.
        public static func read(_ bytes: ArraySlice<UInt8>) -> CutRecord {
            let cut = Array(bytes)
            var end = cut.count
            while end > 0 && cut[end - 1] == 0 { end -= 1 }
            let headerBytes = LogFormat.recordHeaderBytes
            guard cut.count >= headerBytes, end > 0 else {
                return CutRecord(bytes: end, lsn: nil, type: nil, declaredPayloadBytes: nil, writtenPayloadBytes: 0,
                                 lengthPlausible: false, checksumMatches: false, payload: nil)
            }
            let length = Int(LogFormat.u32(cut, 0))
            let type = cut[8]
            let plausible = length <= LogFormat.maxPayloadBytes(type: type)
            let inFile = plausible && cut.count - headerBytes >= length
            let matches = inFile && cut.withUnsafeBytes { LogFormat.recordCRC($0, at: 0, payloadCount: length) } == LogFormat.u32(cut, 4)
            return CutRecord(bytes: end, lsn: LogFormat.u64(cut, 9), type: type, declaredPayloadBytes: length,
                             writtenPayloadBytes: min(max(0, end - headerBytes), length), lengthPlausible: plausible,
                             checksumMatches: matches, payload: inFile ? Array(cut[headerBytes..<(headerBytes + length)]) : nil)
        }
    }

    /// A copy recovery kept of the bytes it cut (`NAME.torn-OFFSET`, `Limits.tornTailCopiesMax`).
    public struct KeptTornTail {
        public let file: String
        /// Nil when the copy could not be read (`unreadable` says why).
        public let cut: CutRecord?
        public let unreadable: String?
    }

    public struct Segment {
        public let file: String
        public let number: UInt64
        public let sizeBytes: Int
        /// Where the good records end; zeros after it up to `sizeBytes` are space written ahead.
        public let recordsEndBytes: Int
        /// Nil when the header is unreadable.
        public let firstLSN: UInt64?
        /// Good records, up to the first problem.
        public let records: [Record]
        /// The first problem in this segment, if any.
        public let problem: Problem?
        /// A torn tail's bytes read as a record (nil for any other problem).
        public var cut: CutRecord? = nil
        public var startsWithCheckpoint: Bool { records.first?.type == LogFormat.checkpointType }
    }

    public let storageName: String
    public let segments: [Segment]
    /// A problem not tied to one segment's contents (unlistable storage, unreadable file).
    public let storageProblem: String?
    /// Copies of torn tails earlier recoveries cut, oldest name first.
    public var keptTornTails: [KeptTornTail] = []

    /// Every problem, in file order.
    public var problems: [Problem] { segments.compactMap(\.problem) }
    /// True when recovery would open this log without refusing (a torn tail is fine).
    public var isRecoverable: Bool {
        storageProblem == nil && !problems.contains { $0.kind == .corruption }
    }
}

extension DurableLog {
    /// Whether `name` is a segment file's name (`0000000000000001.log`: 16 lowercase hex digits).
    public static func isSegmentFileName(_ name: String) -> Bool { LogFormat.segmentNumber(fileName: name) != nil }

    /// Reads every segment and reports records and the first problem in each, never modifying
    /// anything. It reads as recovery does from the newest checkpoint on (a log without one must
    /// begin at LSN 1); unlike recovery it also reads the segments before it, and reports their
    /// problems as `superseded`, since recovery would just delete them.
    public static func inspect(storage: LogStorage) -> LogInspection {
        let files: [(number: UInt64, name: String)]
        do {
            files = try Recovery.segmentFiles(storage)
        } catch {
            return LogInspection(storageName: storage.name, segments: [], storageProblem: "cannot list: \(error)")
        }
        // Where recovery starts: the newest segment beginning with a valid checkpoint.
        var start = 0
        var checkpointFound = false
        for i in files.indices.reversed() where (try? Recovery.startsWithCheckpoint(storage, number: files[i].number, name: files[i].name, fromDisk: false)) == true {
            start = i
            checkpointFound = true
            break
        }
        var segments: [LogInspection.Segment] = []
        var expectedLSN: UInt64? = checkpointFound ? nil : 1
        var expectedNumber: UInt64?
        for (index, entry) in files.enumerated() {
            if index == start {
                // Recovery reads from here: what came before does not bind this segment.
                expectedLSN = checkpointFound ? nil : 1
                expectedNumber = nil
            }
            let bytes: [UInt8]
            do {
                let (file, read) = try Recovery.readAll(storage, entry.name, fromDisk: false)
                file.close()
                bytes = read
            } catch let error as LogCorruptionError {
                // Too big to be a segment: reported, not read, as recovery refuses it.
                let size = (try? Recovery.fileSize(storage, entry.name)) ?? 0
                segments.append(LogInspection.Segment(file: entry.name, number: entry.number, sizeBytes: size, recordsEndBytes: 0, firstLSN: nil, records: [],
                                                      problem: .init(kind: index < start ? .superseded : .corruption, file: entry.name, offset: error.offset, reason: error.reason)))
                expectedLSN = nil
                expectedNumber = entry.number + 1
                continue
            } catch let error as LogFileNotRegularError {
                segments.append(LogInspection.Segment(file: entry.name, number: entry.number, sizeBytes: 0, recordsEndBytes: 0, firstLSN: nil, records: [],
                                                      problem: .init(kind: index < start ? .superseded : .corruption, file: entry.name, offset: 0,
                                                                     reason: "not a regular file (it is \(error.kind)): not read")))
                expectedLSN = nil
                expectedNumber = entry.number + 1
                continue
            } catch {
                return LogInspection(storageName: storage.name, segments: segments,
                                     storageProblem: "cannot read \(entry.name): \(error)")
            }
            let isLast = index == files.count - 1
            // The first segment sets the LSNs; after a missing segment, start over from its header.
            let numberGap = expectedNumber.map { $0 != entry.number } ?? false
            var scan = SegmentScanner.scan(file: entry.name, bytes: bytes, number: entry.number,
                                           expectedLSN: numberGap ? nil : expectedLSN, isLast: isLast)
            if scan.header == nil, case .corrupt = scan.end, expectedLSN != nil {
                // Report an LSN mismatch, but keep reading the segment's records.
                let unchecked = SegmentScanner.scan(file: entry.name, bytes: bytes, number: entry.number,
                                                    expectedLSN: nil, isLast: isLast)
                if unchecked.header != nil {
                    scan = SegmentScan(file: entry.name, size: bytes.count, header: unchecked.header,
                                       records: unchecked.records, end: scan.end)
                }
            }
            var problem: LogInspection.Problem?
            switch scan.end {
            case .clean: break
            case .torn(let offset, let reason):
                problem = .init(kind: .tornTail, file: entry.name, offset: offset, reason: reason)
            case .corrupt(let offset, let reason):
                problem = .init(kind: .corruption, file: entry.name, offset: offset, reason: reason)
            }
            if numberGap, problem == nil, let expectedNumber {
                problem = .init(kind: .corruption, file: entry.name, offset: 0,
                                reason: "segment \(LogFormat.segmentFileName(expectedNumber)) is missing")
            }
            if index < start, let found = problem {
                problem = .init(kind: .superseded, file: found.file, offset: found.offset,
                                reason: found.reason + " (before the newest checkpoint, in \(files[start].name): recovery deletes this segment)")
            }
            var segment = LogInspection.Segment(
                file: entry.name, number: entry.number, sizeBytes: bytes.count, recordsEndBytes: scan.goodBytes,
                firstLSN: scan.header?.firstLSN,
                records: scan.records.map { .init(lsn: $0.record.lsn, type: $0.record.type,
                                                  payloadBytes: $0.record.payload.count, offset: $0.offset, payload: $0.record.payload) },
                problem: problem)
            if case .torn(let offset, _) = scan.end { segment.cut = .read(bytes[offset...]) }
            segments.append(segment)
            expectedLSN = scan.nextLSN
            expectedNumber = entry.number + 1
        }
        var inspection = LogInspection(storageName: storage.name, segments: segments, storageProblem: nil)
        inspection.keptTornTails = keptTornTails(storage)
        return inspection
    }

    /// The copies recovery kept of torn tails (`keepAside`), each read as a record; one that
    /// cannot be read (not a regular file, larger than a segment) is listed with the reason.
    static func keptTornTails(_ storage: LogStorage) -> [LogInspection.KeptTornTail] {
        let names = ((try? storage.list()) ?? []).filter { $0.contains(".log.torn-") }.sorted()
        return names.prefix(Limits.tornTailCopiesMax).map { name in
            do {
                let (file, bytes) = try Recovery.readAll(storage, name, fromDisk: false)
                file.close()
                return LogInspection.KeptTornTail(file: name, cut: .read(bytes[...]), unreadable: nil)
            } catch let error as LogCorruptionError {
                return LogInspection.KeptTornTail(file: name, cut: nil, unreadable: error.reason)
            } catch {
                return LogInspection.KeptTornTail(file: name, cut: nil, unreadable: "\(error)")
            }
        }
    }
}
