import CohortCore
import CohortPosix
import XCTest
@testable import CohortLog

final class RecoveryTests: XCTestCase {
    let firstSegment = "0000000000000001.log"

    /// A simulated log holding records 1...count, all synced, in one segment.
    func syncedLog(count: UInt64, segmentBytesMax: Int = Limits.segmentBytesMax) throws -> SimLogStorage {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: segmentBytesMax))
        for lsn in UInt64(1)...count {
            _ = try log.append(type: 1, payload: payload(lsn, size: 10 + Int(lsn % 7)), force: true)
            try log.syncNow()
        }
        return storage
    }

    func assertRecords(_ records: [LogRecord], _ lsns: ClosedRange<UInt64>, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(records.map(\.lsn), Array(lsns), file: file, line: line)
        for record in records {
            XCTAssertEqual(record.payload, payload(record.lsn, size: 10 + Int(record.lsn % 7)), file: file, line: line)
        }
    }

    func testTornLastRecordAtEveryOffsetIsCutOffAndNothingDurableIsLost() throws {
        let storage = try syncedLog(count: 4)
        let full = storage.contents(of: firstSegment)!
        XCTAssertEqual(full.count % Limits.logFileAlignmentBytes, 0, "the writer rounds a file's length")
        let lastStart = recordOffsets(storage, file: firstSegment).last!
        let end = recordsEnd(storage, file: firstSegment)
        for cut in lastStart..<end {
            for zeroFilled in [false, true] {
                // Either the file keeps its length with zeros after the cut (as a file system
                // shows blocks whose data never reached the disk: what a crash leaves), or it
                // ends at the cut, a length no crash leaves (refused below).
                var damaged = Array(full[..<cut])
                if zeroFilled { damaged += [UInt8](repeating: 0, count: full.count - cut) }
                storage.setContents(of: firstSegment, damaged)
                if !zeroFilled && cut > lastStart || !zeroFilled && cut % Limits.logFileAlignmentBytes != 0 {
                    XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig()), "cut \(cut)") { error in
                        guard let e = error as? LogCorruptionError else { return XCTFail("\(error)") }
                        XCTAssertEqual(e.file, firstSegment)
                        XCTAssertEqual(e.offset, cut)
                        XCTAssertTrue(e.reason.contains("a length no crash leaves"), e.reason)
                    }
                    XCTAssertEqual(storage.contents(of: firstSegment), damaged, "recovery changed nothing")
                    continue
                }
                let (log, recovered) = try DurableLog.open(storage: storage, config: manualConfig())
                assertRecords(recovered.records, 1...3)
                XCTAssertEqual(recovered.nextLSN, 4)
                // A record none of whose bytes arrived reads as zeros: the end of the records,
                // like the zeros the writer fills ahead (preallocation), and is left in place.
                if damaged[lastStart...].allSatisfy({ $0 == 0 }) {
                    XCTAssertNil(recovered.truncatedTail)
                } else {
                    let tail = try XCTUnwrap(recovered.truncatedTail, "cut \(cut)")
                    XCTAssertEqual(tail.file, firstSegment)
                    XCTAssertEqual(tail.offset, lastStart)
                    // Counted up to the last nonzero byte: zeros after it may be the writer's own.
                    let lastNonzero = damaged.lastIndex { $0 != 0 }!
                    XCTAssertEqual(tail.bytesDropped, lastNonzero + 1 - lastStart)
                    XCTAssertEqual(tail.keptIn, "\(firstSegment).torn-\(lastStart)")
                    XCTAssertEqual(storage.contents(of: tail.keptIn!), Array(damaged[lastStart...lastNonzero]), "the cut bytes are kept")
                }
                // Overwritten with zeros, and at a length a crash can leave.
                let after = storage.contents(of: firstSegment)!
                XCTAssertEqual(after.count % Limits.logFileAlignmentBytes, 0)
                XCTAssertTrue(after[lastStart...].allSatisfy { $0 == 0 }, "cut \(cut): the torn bytes are zeros")
                // The log goes on from the cut.
                XCTAssertEqual(try log.append(type: 1, payload: payload(4, size: 14), force: true), 4)
                try log.syncNow()
                let (_, again) = try DurableLog.open(storage: storage, config: manualConfig())
                assertRecords(again.records, 1...4)
                XCTAssertNil(again.truncatedTail)
            }
        }
    }

    /// Recovery cannot tell a torn write from damage to the last records, so what it cuts is
    /// copied aside first (zeros written ahead of the records are not counted or copied), at
    /// most `Limits.tornTailCopiesMax` copies.
    func testATornTailIsKeptAsideBeforeItIsCut() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let config = DurableLogConfig(preallocateBytes: 4096)
        var garbage: [UInt8] = []
        for round in 0...Limits.tornTailCopiesMax {
            let (log, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
            _ = try log.append(type: 1, payload: payload(UInt64(round + 1), size: 20), force: true)
            log.close()
            let path = dir + "/" + firstSegment
            let good = recordsEnd(try FileLogStorage(directory: dir), file: firstSegment)
            garbage = (0..<(50 + round)).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
            let file = try PosixFile(path: path, create: false)
            try file.pwrite(garbage, offset: good)
            file.close()
            let (reopened, recovered) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
            reopened.close()
            XCTAssertEqual(recovered.records.count, round + 1, "every synced record survives")
            let tail = try XCTUnwrap(recovered.truncatedTail)
            XCTAssertEqual(tail.offset, good)
            XCTAssertEqual(tail.bytesDropped, garbage.count, "the zeros after it are not counted")
            if round < Limits.tornTailCopiesMax {
                XCTAssertEqual(tail.keptIn, "\(firstSegment).torn-\(good)")
                XCTAssertEqual(try PosixFS.readFile(dir + "/" + tail.keptIn!), garbage)
                XCTAssertTrue(tail.description.contains("kept in \(firstSegment).torn-\(good)"), tail.description)
            } else {
                XCTAssertNil(tail.keptIn, "no more than \(Limits.tornTailCopiesMax) copies")
            }
        }
        let (again, recovered) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        again.close()
        XCTAssertNil(recovered.truncatedTail, "the copies are not segments")
    }

    /// A file cut at a length no crash leaves (not a multiple of `Limits.logFileAlignmentBytes`,
    /// records to its last byte) lost records that may have been acted on: a black-box probe cut
    /// a coordinator's log at a record boundary, and it started silently and answered 404 for
    /// 6,000 acknowledged commits. Recovery refuses it, at a record boundary or inside a record,
    /// and changes nothing; extended with zeros to a multiple (the operator's way on, as the
    /// error says) it starts with the records before the cut. A cut at a multiple still reads
    /// as the end (docs/failure-model.md).
    func testALogFileCutAtALengthNoCrashLeavesIsRefused() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let config = DurableLogConfig(preallocateBytes: 0)
        let (log, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        for lsn in UInt64(1)...3 {
            _ = try log.append(type: 1, payload: payload(lsn, size: 10 + Int(lsn % 7)), force: true)
            XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == lsn })
        }
        log.close()
        let path = dir + "/" + firstSegment
        let original = try PosixFS.readFile(path)
        XCTAssertEqual(original.count, Limits.logFileAlignmentBytes)
        let offsets = recordOffsets(try FileLogStorage(directory: dir), file: firstSegment)
        for cut in [offsets[2], offsets[2] + 5] {
            let file = try PosixFile(path: path, create: false)
            try file.truncate(to: cut)
            file.close()
            XCTAssertThrowsError(try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)) { error in
                guard let e = error as? LogCorruptionError else { return XCTFail("\(error)") }
                XCTAssertEqual(e.file, firstSegment)
                XCTAssertEqual(e.offset, cut)
                XCTAssertTrue(e.reason.contains("\(cut) is not a multiple of 4096, a length no crash leaves"), e.reason)
                XCTAssertTrue(e.reason.contains("truncate -s %4096"), e.reason)
            }
            XCTAssertEqual(try PosixFS.readFile(path), Array(original[..<cut]), "recovery changed nothing")
            let report = DurableLog.inspect(storage: try FileLogStorage(directory: dir))
            XCTAssertFalse(report.isRecoverable, "inspect (txctl log verify) says so too")
            // The way on the error names: zeros to a multiple of 4096.
            let extend = try PosixFile(path: path, create: false)
            try extend.truncate(to: Limits.logFileAlignmentBytes)
            extend.close()
            let (reopened, recovered) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
            reopened.close()
            assertRecords(recovered.records, 1...2)
            XCTAssertEqual(recovered.truncatedTail?.bytesDropped, cut == offsets[2] ? nil : 5)
            let restore = try PosixFile(path: path, create: false)
            try restore.pwrite(original, offset: 0)
            restore.close()
        }
        // Cut at a multiple of 4096 (here: every byte after the first page of a longer file),
        // it reads as a crash: a limit of the rule.
        let (longer, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        _ = try longer.append(type: 1, payload: payload(4, size: 9_000), force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { longer.durableLSN == 4 })
        longer.close()
        XCTAssertEqual(try PosixFS.readFile(path).count, 3 * Limits.logFileAlignmentBytes)
        let file = try PosixFile(path: path, create: false)
        try file.truncate(to: 2 * Limits.logFileAlignmentBytes)
        file.close()
        let (last, recovered) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        last.close()
        XCTAssertEqual(recovered.records.map(\.lsn), [1, 2, 3], "the torn fourth record is cut off")
    }

    /// Preallocation: each segment file runs `preallocateBytes` of zeros past its last record,
    /// recovery reads them as the end (in the last segment and in older ones), the log goes on
    /// writing where the records end, and a torn record in the zeros is still cut off.
    func testPreallocatedZerosAreTheEndAndTornRecordsInThemAreCutOff() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let ahead = 4096
        let config = DurableLogConfig(segmentBytesMax: 300, preallocateBytes: ahead)
        let (log, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        for lsn in UInt64(1)...12 {
            _ = try log.append(type: 1, payload: payload(lsn, size: 10 + Int(lsn % 7)), force: true)
            XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == lsn })
        }
        log.close()
        let storage = try FileLogStorage(directory: dir)
        let segments = try segmentNames(storage)
        XCTAssertGreaterThanOrEqual(segments.count, 2, "small segments: several files")
        let inspection = DurableLog.inspect(storage: storage)
        XCTAssertEqual(inspection.problems, [])
        for seg in inspection.segments {
            XCTAssertTrue(seg.sizeBytes > seg.recordsEndBytes && seg.sizeBytes < seg.recordsEndBytes + ahead + Limits.logFileAlignmentBytes
                          && seg.sizeBytes % Limits.logFileAlignmentBytes == 0,
                          "\(seg.file): \(seg.sizeBytes) bytes, records end at \(seg.recordsEndBytes): zeros written ahead")
        }
        let last = inspection.segments.last!
        let (reopened, recovered) = try DurableLog.open(storage: storage, config: config)
        assertRecords(recovered.records, 1...12)
        XCTAssertNil(recovered.truncatedTail, "zeros are not a torn tail")
        // The next record goes where the records end, not after the zeros.
        _ = try reopened.append(type: 1, payload: payload(13, size: 10 + 13 % 7), force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { reopened.durableLSN == 13 })
        reopened.close()
        let after = DurableLog.inspect(storage: try FileLogStorage(directory: dir))
        XCTAssertEqual(after.segments.last!.records.last!.lsn, 13)
        XCTAssertEqual(after.segments.last!.records.last!.offset, last.recordsEndBytes)

        // A record torn inside the zeros (its first bytes written, the rest never reached the
        // disk) is cut off, and so are the zeros after it.
        let path = dir + "/" + after.segments.last!.file
        let end = after.segments.last!.recordsEndBytes
        let file = try PosixFile(path: path, create: false)
        try file.pwrite([0x2A, 0, 0, 0, 0x11, 0x22, 0x33], offset: end)
        file.close()
        let (third, torn) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        third.close()
        assertRecords(torn.records, 1...13)
        XCTAssertEqual(torn.truncatedTail?.offset, end)
        let afterCut = try PosixFS.readFile(path)
        XCTAssertEqual(afterCut.count % Limits.logFileAlignmentBytes, 0, "the file keeps a length a crash can leave")
        XCTAssertTrue(afterCut[end...].allSatisfy { $0 == 0 }, "cut at the torn record: zeros from there")

        // Zeros followed by a good record are not the end: a record that was durable is missing.
        let (fourth, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)
        _ = try fourth.append(type: 1, payload: payload(14, size: 10 + 14 % 7), force: true)
        _ = try fourth.append(type: 1, payload: payload(15, size: 10 + 15 % 7), force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { fourth.durableLSN == 15 })
        fourth.close()
        let bytes = try PosixFS.readFile(path)
        let zeroed = try PosixFile(path: path, create: false)
        try zeroed.pwrite([UInt8](repeating: 0, count: 17 + 10 + 14 % 7), offset: end)
        zeroed.close()
        XCTAssertThrowsError(try DurableLog.open(storage: try FileLogStorage(directory: dir), config: config)) { error in
            XCTAssertEqual((error as? LogCorruptionError)?.offset, end, "\(error)")
        }
        XCTAssertEqual(try PosixFS.readFile(path).count, bytes.count, "nothing cut on corruption")
    }

    func testCorruptMiddleRecordIsReportedWithFileAndOffset() throws {
        let storage = try syncedLog(count: 5)
        let full = storage.contents(of: firstSegment)!
        let offsets = recordOffsets(storage, file: firstSegment)
        // A payload byte, the length field, the LSN: each caught by the CRC.
        for damagedAt in [offsets[1] + 20, offsets[1], offsets[1] + 10] {
            var damaged = full
            damaged[damagedAt] ^= 0x40
            storage.setContents(of: firstSegment, damaged)
            XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig())) { error in
                guard let error = error as? LogCorruptionError else { return XCTFail("\(error)") }
                XCTAssertEqual(error.file, firstSegment)
                XCTAssertEqual(error.offset, offsets[1])
                XCTAssertTrue(error.description.contains(firstSegment) && error.description.contains("\(offsets[1])"),
                              error.description)
            }
            XCTAssertEqual(storage.contents(of: firstSegment), damaged, "recovery changed nothing")
        }
    }

    func testCorruptMiddleSegmentAndMissingSegmentAreErrors() throws {
        let storage = try syncedLog(count: 12, segmentBytesMax: 100)
        let names = try segmentNames(storage)
        XCTAssertGreaterThanOrEqual(names.count, 4)
        let middle = names[1]
        let original = storage.contents(of: middle)!
        // Damage the last byte of the middle segment's records: at the end of a segment, but not
        // the last segment, so it is corruption, not a torn tail.
        let middleEnd = recordsEnd(storage, file: middle)
        var damaged = original
        damaged[middleEnd - 1] ^= 1
        storage.setContents(of: middle, damaged)
        XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig())) { error in
            guard let error = error as? LogCorruptionError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.file, middle)
        }
        // A middle segment cut short is corruption too.
        storage.setContents(of: middle, Array(original[..<(middleEnd - 3)]) + [UInt8](repeating: 0, count: original.count - middleEnd + 3))
        XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig())) { error in
            XCTAssertEqual((error as? LogCorruptionError)?.file, middle)
        }
        // A missing segment is a gap in the LSNs.
        try storage.remove(middle)
        XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig())) { error in
            guard let error = error as? LogCorruptionError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.file, names[2])
            XCTAssertTrue(error.reason.contains(middle), error.reason)
        }
    }

    func testSegmentRolloverSyncsTheDirectory() throws {
        // A new segment whose directory entry was not synced may vanish in a crash; every
        // record reported durable must survive anyway.
        for seed in UInt64(0)..<20 {
            var rng = SplitMix64(seed: seed)
            let storage = SimLogStorage()
            var (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 120))
            var durable: UInt64 = 0
            for lsn in UInt64(1)...30 {
                _ = try log.append(type: 1, payload: payload(lsn, size: 10 + Int(lsn % 7)), force: true)
                durable = try log.syncNow() ?? durable
                if lsn % 5 == 0 {
                    storage.crash(mode: .dropUnsynced, rng: &rng)
                    let (reopened, recovered) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 120))
                    assertRecords(recovered.records, 1...durable)
                    log = reopened
                }
            }
            XCTAssertGreaterThan(try segmentNames(storage).count, 5)
        }
    }

    func testCheckpointDropsOldSegmentsAndRecoveryStartsFromSnapshot() throws {
        let storage = try syncedLog(count: 10, segmentBytesMax: 100)
        let before = try segmentNames(storage)
        XCTAssertGreaterThan(before.count, 2)
        let (log, recovered) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        XCTAssertGreaterThan(log.bytesSinceCheckpoint, 0)
        XCTAssertNil(recovered.snapshot)
        let snapshot = Array("state up to 10".utf8)
        XCTAssertEqual(try log.checkpoint(snapshot: snapshot), 11)
        XCTAssertEqual(log.bytesSinceCheckpoint, 0)
        _ = try log.append(type: 1, payload: payload(12, size: 10 + 12 % 7), force: false)
        XCTAssertEqual(try log.syncNow(), 12)
        let after = try segmentNames(storage)
        XCTAssertEqual(after.count, 1, "older segments deleted: \(after)")
        XCTAssertGreaterThan(after[0], before.last!)

        let (reopened, again) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        XCTAssertEqual(again.snapshot, snapshot)
        XCTAssertEqual(again.snapshotLSN, 11)
        assertRecords(again.records, 12...12)
        XCTAssertEqual(again.nextLSN, 13)
        XCTAssertEqual(reopened.bytesSinceCheckpoint, 17 + 10 + 12 % 7)

        // Recovery itself deletes segments older than a durable checkpoint that a crash brought
        // back (removal not yet synced).
        storage.setContents(of: before[0], [1, 2, 3])
        let (_, third) = try DurableLog.open(storage: storage, config: manualConfig())
        XCTAssertEqual(third.snapshot, snapshot)
        XCTAssertEqual(try segmentNames(storage), after)
    }

    /// A segment is created whole (a temporary name, synced, renamed), so a damaged start of a
    /// segment is damage, not a crash: recovery refuses with the file and offset instead of
    /// cutting it off (which would forget everything the segment held, a checkpoint included).
    /// `txctl log verify` says what recovery would do: a gap or damage before the newest
    /// checkpoint (a crash while recovery or a checkpoint deleted the old segments) does not
    /// stop a start, and a log without a checkpoint that does not begin at LSN 1 does.
    func testInspectAgreesWithRecoveryAboutOldSegmentsAndTheFirstLSN() throws {
        let storage = try syncedLog(count: 12, segmentBytesMax: 100)
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        _ = try log.checkpoint(snapshot: [9])
        try log.syncNow()
        log.close()
        // Put back the old segments but one (as a crash in the middle of their removal can).
        let names = try segmentNames(storage)
        let checkpointSegment = names.last!
        XCTAssertEqual(names.count, 1, "the checkpoint removed the older segments")
        let fresh = try syncedLog(count: 12, segmentBytesMax: 100)
        let old = try segmentNames(fresh)
        XCTAssertGreaterThanOrEqual(old.count, 4)
        for name in old where name != old[1] && name < checkpointSegment { storage.setContents(of: name, fresh.contents(of: name)!) }
        let gapped = DurableLog.inspect(storage: storage)
        XCTAssertTrue(gapped.isRecoverable, "\(gapped.problems)")
        XCTAssertEqual(gapped.problems.map(\.kind), [.superseded], "\(gapped.problems)")
        XCTAssertNoThrow(try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100)).0.close())

        // No checkpoint, and the first segment gone: recovery refuses, and so does verify.
        let headless = try syncedLog(count: 12, segmentBytesMax: 100)
        try headless.remove(try segmentNames(headless)[0])
        XCTAssertThrowsError(try DurableLog.open(storage: headless, config: manualConfig(segmentBytesMax: 100)))
        let report = DurableLog.inspect(storage: headless)
        XCTAssertFalse(report.isRecoverable)
        XCTAssertEqual(report.problems.map(\.kind), [.corruption])
    }

    func testADamagedSegmentStartIsCorruptionNotATornTail() throws {
        func assertCorrupt(_ storage: SimLogStorage, _ file: String, offset: Int, _ reason: String, line: UInt = #line) {
            XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100)), line: line) { error in
                guard let e = error as? LogCorruptionError else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(e.file, file, line: line)
                XCTAssertEqual(e.offset, offset, line: line)
                XCTAssertTrue(e.reason.contains(reason) && e.reason.contains("damage, not a crash"), e.reason, line: line)
            }
        }
        // A checkpoint record cut short at the start of the newest segment, the older segments
        // still there (a crash before their removal was durable): not read as a crash that
        // cut the checkpoint, after which the older segments would be the log.
        let storage = try syncedLog(count: 6, segmentBytesMax: 100)
        let oldSegments = try segmentNames(storage).map { ($0, storage.contents(of: $0)!) }
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        _ = try log.checkpoint(snapshot: [UInt8](repeating: 7, count: 50))
        try log.syncNow()
        for (name, bytes) in oldSegments { storage.setContents(of: name, bytes) }
        let checkpointSegment = try segmentNames(storage).last!
        let full = storage.contents(of: checkpointSegment)!
        storage.setContents(of: checkpointSegment, Array(full[..<(32 + 17 + 20)]))
        assertCorrupt(storage, checkpointSegment, offset: 32, "record incomplete")
        XCTAssertEqual(storage.contents(of: checkpointSegment), Array(full[..<(32 + 17 + 20)]), "left as it was")

        // A segment whose header is garbage, and one with a header and zeros after it.
        let storage2 = try syncedLog(count: 3)
        storage2.setContents(of: "0000000000000002.log", [0x43, 0x4F, 0x48])
        assertCorrupt(storage2, "0000000000000002.log", offset: 0, "segment header incomplete")
        storage2.setContents(of: "0000000000000002.log", LogFormat.encodeSegmentHeader(number: 2, firstLSN: 4) + [UInt8](repeating: 0, count: 64))
        assertCorrupt(storage2, "0000000000000002.log", offset: 32, "segment has a header and no record")

        // The only segment emptied (a file truncated to 0 bytes): nothing is presumed.
        let storage3 = try syncedLog(count: 3)
        storage3.setContents(of: firstSegment, [])
        assertCorrupt(storage3, firstSegment, offset: 0, "segment header incomplete")
    }

    /// A crash at any step of making a new segment (its temporary file written but not synced,
    /// synced but not renamed, renamed but the rename not synced) leaves a log that recovers
    /// with every record reported durable, removes a leftover temporary file, and never reads
    /// as damaged.
    func testACrashAtAnyStepOfASegmentsCreationRecovers() throws {
        var segmentStartsFailed = 0
        var leftoversRemoved = 0
        for seed in UInt64(0)..<60 {
            var rng = SplitMix64(seed: seed)
            let mode: SimCrashMode = seed % 2 == 0 ? .dropUnsynced : .tearUnsynced
            let storage = SimLogStorage()
            var (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 120))
            var durable: UInt64 = 0
            var lsn: UInt64 = 1
            while lsn <= 40 {
                _ = try log.append(type: 1, payload: payload(lsn, size: 10 + Int(lsn % 7)), force: true)
                let segmentsBefore = try segmentNames(storage).count
                if rng.next() % 2 == 0 { storage.failSyncAtCount = storage.syncsTotal + 1 + Int(rng.next() % 2) }
                do {
                    durable = try log.syncNow() ?? durable
                    lsn += 1
                    storage.failSyncAtCount = nil
                    continue
                } catch {
                    storage.failSyncAtCount = nil
                    if try storage.list().contains(where: { $0.hasSuffix(".new") }) || segmentNames(storage).count > segmentsBefore {
                        segmentStartsFailed += 1
                    }
                }
                storage.crash(mode: mode, rng: &rng)
                let leftover = try storage.list().filter { $0.hasSuffix(".new") }.sorted()
                let (reopened, recovered) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 120))
                XCTAssertEqual(recovered.removedUnfinishedSegments, leftover, "seed \(seed)")
                if let name = leftover.first {
                    leftoversRemoved += 1
                    XCTAssertTrue(recovered.repairNote?.contains("removed \(name), a new segment a crash caught before it was named") ?? false,
                                  recovered.repairNote ?? "no note")
                }
                XCTAssertGreaterThanOrEqual(recovered.nextLSN, durable + 1, "seed \(seed): durable LSN \(durable) lost")
                if recovered.nextLSN > 1 { assertRecords(recovered.records, 1...(recovered.nextLSN - 1)) } else { XCTAssertEqual(recovered.records.count, 0) }
                XCTAssertFalse(try storage.list().contains { $0.hasSuffix(".new") }, "seed \(seed): a temporary segment left behind")
                log = reopened
                durable = recovered.nextLSN - 1
                lsn = recovered.nextLSN
            }
        }
        XCTAssertGreaterThan(segmentStartsFailed, 20, "the failures hit segment creation")
        XCTAssertGreaterThan(leftoversRemoved, 0, "some crash left a temporary segment")
    }

    func testInspectReportsRecordsAndProblemsWithoutChangingAnything() throws {
        let storage = try syncedLog(count: 5)
        let clean = DurableLog.inspect(storage: storage)
        XCTAssertTrue(clean.isRecoverable)
        XCTAssertEqual(clean.segments.count, 1)
        XCTAssertEqual(clean.segments[0].records.map(\.lsn), Array(1...5))
        XCTAssertEqual(clean.segments[0].records[0].offset, 32)
        XCTAssertEqual(clean.segments[0].records[0].payloadBytes, 10 + 1 % 7)

        let full = storage.contents(of: firstSegment)!
        let offsets = clean.segments[0].records.map(\.offset)
        let end = recordsEnd(storage, file: firstSegment)
        let tornBytes = Array(full[..<(end - 2)]) + [UInt8](repeating: 0, count: full.count - end + 2)
        storage.setContents(of: firstSegment, tornBytes)
        let torn = DurableLog.inspect(storage: storage)
        XCTAssertEqual(torn.problems, [.init(kind: .tornTail, file: firstSegment, offset: offsets[4], reason: torn.problems.first?.reason ?? "")])
        XCTAssertTrue(torn.isRecoverable)
        XCTAssertEqual(storage.contents(of: firstSegment), tornBytes, "inspect modifies nothing")
        // Ending at the cut instead, a length no crash leaves: damage.
        storage.setContents(of: firstSegment, Array(full[..<(end - 2)]))
        let cut = DurableLog.inspect(storage: storage)
        XCTAssertFalse(cut.isRecoverable)
        XCTAssertEqual(cut.problems.map(\.offset), [end - 2])

        var damaged = full
        damaged[offsets[2] + 18] ^= 0xFF
        storage.setContents(of: firstSegment, damaged)
        let corrupt = DurableLog.inspect(storage: storage)
        XCTAssertEqual(corrupt.problems.map(\.kind), [.corruption])
        XCTAssertEqual(corrupt.problems.first?.offset, offsets[2])
        XCTAssertEqual(corrupt.segments[0].records.map(\.lsn), [1, 2])
        XCTAssertFalse(corrupt.isRecoverable)
    }
}
