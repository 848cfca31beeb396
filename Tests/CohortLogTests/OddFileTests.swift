import CohortCore
import CohortPosix
import Foundation
import XCTest
@testable import CohortLog

/// Segment files no log writes: far too big, not regular files, or a damaged checkpoint that
/// leaves its segment's LSNs unexplained. Recovery refuses each, naming what is wrong, and
/// `DurableLog.inspect` (txctl log) reports the same without reading more than it must.
final class OddFileTests: XCTestCase {
    let firstSegment = "0000000000000001.log"

    /// A real log directory holding records 1...3 in one segment.
    func makeLog() throws -> String {
        let dir = try makeTemporaryDirectory()
        let (log, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: manualConfig())
        for lsn in UInt64(1)...3 { _ = try log.append(type: 1, payload: payload(lsn), force: true) }
        try log.syncNow()
        log.close()
        return dir
    }

    /// A segment extended (sparsely) past anything a segment can hold is refused before it is
    /// read: its zeros read as space written ahead, so recovery used to read all of it (2.1 GB
    /// for a 2 GiB file) and start.
    func testASegmentTooBigToBeOneIsRefusedUnread() throws {
        let dir = try makeLog()
        defer { removeTree(dir) }
        let size = Limits.segmentFileBytesMax + 1
        let file = try PosixFile(path: dir + "/" + firstSegment, create: false)
        try file.truncate(to: size)
        file.close()
        XCTAssertThrowsError(try DurableLog.open(storage: try FileLogStorage(directory: dir), config: manualConfig())) { error in
            guard let e = error as? LogCorruptionError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.file, firstSegment)
            XCTAssertEqual(e.offset, 0)
            XCTAssertTrue(e.reason.contains("the file is \(size) bytes, more than a segment can hold (\(Limits.segmentFileBytesMax) at most)"), e.reason)
        }
        let report = DurableLog.inspect(storage: try FileLogStorage(directory: dir))
        XCTAssertNil(report.storageProblem)
        XCTAssertFalse(report.isRecoverable)
        XCTAssertEqual(report.segments.map(\.sizeBytes), [size])
        XCTAssertEqual(report.problems.map(\.kind), [.corruption])
        XCTAssertTrue(report.problems.first?.reason.contains("\(size) bytes") ?? false, "\(report.problems)")
        XCTAssertEqual(try PosixFS.readFile(dir + "/" + firstSegment).count, size, "left as it was")

        // The bound holds for what the log writes: a full segment, and a checkpoint of the
        // largest snapshot with everything unsynced behind it, stay under it.
        XCTAssertGreaterThan(Limits.segmentFileBytesMax, 32 + 17 + Limits.snapshotBytesMax + Limits.unsyncedBytesMax + Limits.logPreallocateBytes)
        XCTAssertGreaterThan(Limits.segmentFileBytesMax, Limits.segmentBytesMax + Limits.unsyncedBytesMax + Limits.logPreallocateBytes)
    }

    /// A FIFO, or a symlink to a device, under a segment's name is refused as "not a regular
    /// file" with its path. Recovery used to fail in fdatasync ("Invalid argument"), and
    /// inspect read /dev/zero (size 0) as an empty segment.
    func testASegmentThatIsNotARegularFileIsRefusedByPath() throws {
        for kind in ["a FIFO", "a character device"] {
            let dir = try makeLog()
            defer { removeTree(dir) }
            let path = dir + "/" + firstSegment
            try PosixFS.remove(path)
            if kind == "a FIFO" {
                let mkfifo = Process()
                mkfifo.executableURL = URL(fileURLWithPath: "/usr/bin/mkfifo")
                mkfifo.arguments = [path]
                try mkfifo.run()
                mkfifo.waitUntilExit()
                XCTAssertEqual(mkfifo.terminationStatus, 0)
            } else {
                try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "/dev/zero")
            }
            XCTAssertThrowsError(try DurableLog.open(storage: try FileLogStorage(directory: dir), config: manualConfig())) { error in
                XCTAssertEqual(error as? LogFileNotRegularError, LogFileNotRegularError(path: path, kind: kind))
                XCTAssertTrue("\(error)".hasPrefix("\(path) is not a regular file (it is \(kind))"), "\(error)")
            }
            let report = DurableLog.inspect(storage: try FileLogStorage(directory: dir))
            XCTAssertNil(report.storageProblem)
            XCTAssertFalse(report.isRecoverable)
            XCTAssertEqual(report.problems.map(\.reason), ["not a regular file (it is \(kind)): not read"])
        }
    }

    /// Damage inside the checkpoint that starts the only segment: recovery finds no checkpoint,
    /// so it expects LSN 1, and used to blame the intact header ("segment starts at LSN 7,
    /// expected 1" at offset 0). It names the checkpoint record at offset 32 and its damage.
    func testADamagedCheckpointIsNamedNotItsSegmentHeader() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        for lsn in UInt64(1)...6 {
            _ = try log.append(type: 1, payload: payload(lsn), force: true)
            try log.syncNow()
        }
        _ = try log.checkpoint(snapshot: [UInt8](repeating: 7, count: 200))
        _ = try log.append(type: 1, payload: payload(8), force: true)
        try log.syncNow()
        log.close()
        let names = try segmentNames(storage)
        XCTAssertEqual(names.count, 1, "the checkpoint removed the older segments")
        let full = storage.contents(of: names[0])!

        func assertDamagedCheckpoint(_ bytes: [UInt8], _ reason: String, line: UInt = #line) {
            storage.setContents(of: names[0], bytes)
            XCTAssertThrowsError(try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100)), line: line) { error in
                guard let e = error as? LogCorruptionError else { return XCTFail("\(error)", line: line) }
                XCTAssertEqual(e.file, names[0], line: line)
                XCTAssertEqual(e.offset, 32, line: line)
                XCTAssertTrue(e.reason.hasPrefix("checkpoint record (LSN 7) damaged: \(reason)"), e.reason, line: line)
            }
            let report = DurableLog.inspect(storage: storage)
            XCTAssertEqual(report.problems.map(\.offset), [32], "\(report.problems)", line: line)
            XCTAssertEqual(report.problems.map(\.kind), [.corruption], line: line)
            XCTAssertEqual(report.segments.first?.firstLSN, 7, "the header is fine", line: line)
        }
        var flipped = full
        flipped[32 + 17 + 100] ^= 0x40
        assertDamagedCheckpoint(flipped, "record checksum mismatch")
        assertDamagedCheckpoint(Array(full[..<(32 + 17 + 100)]), "record incomplete")

        // A damaged checkpoint at LSN 1 (as a new data directory's first segment starts): the
        // header's LSN is the expected one, and the record's damage alone said "record checksum
        // mismatch" without naming what was lost.
        let first = SimLogStorage()
        let (fresh, _) = try DurableLog.open(storage: first, config: manualConfig())
        XCTAssertEqual(try fresh.checkpoint(snapshot: [UInt8](repeating: 3, count: 50)), 1)
        _ = try fresh.append(type: 1, payload: payload(2), force: true)
        try fresh.syncNow()
        fresh.close()
        var damagedFirst = first.contents(of: firstSegment)!
        damagedFirst[32 + 17 + 10] ^= 0x01
        first.setContents(of: firstSegment, damagedFirst)
        XCTAssertThrowsError(try DurableLog.open(storage: first, config: manualConfig())) { error in
            guard let e = error as? LogCorruptionError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.offset, 32)
            XCTAssertTrue(e.reason.hasPrefix("checkpoint record (LSN 1) damaged: record checksum mismatch"), e.reason)
        }

        // A segment whose intact first record is not a checkpoint still blames the header's LSN.
        let plain = try syncedLog(count: 3)
        let header = LogFormat.encodeSegmentHeader(number: 1, firstLSN: 5)
        plain.setContents(of: firstSegment, header + Array(plain.contents(of: firstSegment)![32...]))
        XCTAssertThrowsError(try DurableLog.open(storage: plain, config: manualConfig())) { error in
            XCTAssertEqual(error as? LogCorruptionError, LogCorruptionError(file: firstSegment, offset: 0, reason: "segment starts at LSN 5, expected 1"))
        }
    }

    func syncedLog(count: UInt64) throws -> SimLogStorage {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig())
        for lsn in UInt64(1)...count { _ = try log.append(type: 1, payload: payload(lsn), force: true) }
        try log.syncNow()
        log.close()
        return storage
    }

    /// Recovery says where each record it returns came from, so that a server that cannot
    /// decode one can name it (`undecodableRecordError`).
    func testRecoveryNamesWhereEachRecordIs() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        _ = try log.checkpoint(snapshot: [1, 2, 3])
        for lsn in UInt64(2)...6 { _ = try log.append(type: 1, payload: payload(lsn), force: true); try log.syncNow() }
        log.close()
        let (reopened, recovered) = try DurableLog.open(storage: storage, config: manualConfig(segmentBytesMax: 100))
        reopened.close()
        let inspected = DurableLog.inspect(storage: storage)
        let expected = inspected.segments.flatMap { s in s.records.map { LogRecordLocation(file: s.file, offset: $0.offset) } }
        XCTAssertEqual(recovered.snapshotLocation, expected.first)
        XCTAssertEqual(recovered.recordLocations, Array(expected.dropFirst()))

        // A decode error is pinned on the first record that does not decode; the checkpoint
        // first, when its snapshot does not.
        let failing = DecodeError("7 participants")
        let named = recovered.undecodableRecordError(failing, kind: "coordinator", decode: { if $0.lsn >= 4 { throw DecodeError("bad \($0.lsn)") } },
                                                     decodeSnapshot: { _ in })
        XCTAssertEqual(named as? LogRecordDecodeError,
                       LogRecordDecodeError(file: expected[3].file, offset: expected[3].offset, lsn: 4, type: 1, reason: "bad 4", kind: "coordinator"))
        XCTAssertTrue("\(named)".hasSuffix("(LSN 4): bad 4; not a coordinator log?"), "\(named)")
        let snapshotNamed = recovered.undecodableRecordError(failing, kind: "agent", decode: { _ in }, decodeSnapshot: { _ in throw failing })
        XCTAssertEqual("\(snapshotNamed)", "cannot decode the log: \(expected[0].file) at offset 32: checkpoint record (LSN 1): 7 participants; not an agent log?")
        // Neither reproduces it, or it is not a decode error: passed on as it is.
        XCTAssertEqual(recovered.undecodableRecordError(failing, kind: "agent", decode: { _ in }, decodeSnapshot: { _ in }) as? DecodeError, failing)
        XCTAssertTrue(recovered.undecodableRecordError(LogClosedError(), kind: "agent", decode: { _ in throw failing }, decodeSnapshot: { _ in }) is LogClosedError)
    }
}
