import CohortCore
/// Reads a log's segments back, repairs a torn tail and prepares the writer's state.
struct Recovery {
    let recovered: RecoveredLog
    let nextLSN: UInt64
    let bytesSinceCheckpoint: Int
    /// `size` is where the next record goes, `allocated` the file's length (zeros written ahead).
    let lastSegment: (number: UInt64, file: LogFile, size: Int, allocated: Int)?
    let nextSegmentNumber: UInt64
    let liveSegments: [UInt64]
    let syncs: Int

    /// Segment files in storage, oldest first.
    static func segmentFiles(_ storage: LogStorage) throws -> [(number: UInt64, name: String)] {
        try storage.list()
            .compactMap { name in LogFormat.segmentNumber(fileName: name).map { (number: $0, name: name) } }
            .sorted { $0.number < $1.number }
    }

    /// `fromDisk`: recovery's reads (a report's need not sync anything).
    static func readAll(_ storage: LogStorage, _ name: String, fromDisk: Bool = true) throws -> (LogFile, [UInt8]) {
        let file = try storage.open(name, create: false)
        do {
            // Before anything is read or synced: a sparse 2 GiB file was read whole.
            let size = try file.size()
            guard size <= Limits.segmentFileBytesMax else {
                throw LogCorruptionError(file: name, offset: 0, reason: "the file is \(size) bytes, more than a segment can hold (\(Limits.segmentFileBytesMax) at most): damage, not read")
            }
            if fromDisk { try file.readFromDiskFromNowOn() }
            return (file, try file.read(offset: 0, count: size))
        } catch {
            file.close()
            throw error
        }
    }

    static func fileSize(_ storage: LogStorage, _ name: String) throws -> Int {
        let file = try storage.open(name, create: false)
        defer { file.close() }
        return try file.size()
    }

    /// Whether the segment's first record is a complete, valid checkpoint. Reads only that much.
    static func startsWithCheckpoint(_ storage: LogStorage, number: UInt64, name: String, fromDisk: Bool = true) throws -> Bool {
        let file = try storage.open(name, create: false)
        defer { file.close() }
        if fromDisk { try file.readFromDiskFromNowOn() }
        let prefixBytes = LogFormat.segmentHeaderBytes + LogFormat.recordHeaderBytes
        let prefix = try file.read(offset: 0, count: prefixBytes)
        guard prefix.count == prefixBytes, prefix[prefixBytes - 9] == LogFormat.checkpointType else { return false }
        let length = Int(LogFormat.u32(prefix, LogFormat.segmentHeaderBytes))
        guard length <= LogFormat.maxPayloadBytes(type: LogFormat.checkpointType) else { return false }
        let bytes = try file.read(offset: 0, count: prefixBytes + length)
        let scan = SegmentScanner.scan(file: name, bytes: bytes, number: number, expectedLSN: nil, isLast: false)
        return scan.startsWithCheckpoint && scan.records.first?.record.lsn == scan.header?.firstLSN
    }

    /// Copies the bytes recovery is about to cut (up to the last nonzero byte) to
    /// `NAME.torn-OFFSET`, synced, so that cutting loses nothing an operator may need. Best
    /// effort: the copy is evidence, and failing to make it must not keep the log from opening.
    static func keepAside(_ storage: LogStorage, _ name: String, _ bytes: [UInt8], from offset: Int) -> TornTail {
        var end = bytes.count
        while end > offset && bytes[end - 1] == 0 { end -= 1 }
        let dropped = end - offset
        guard dropped > 0 else { return TornTail(file: name, offset: offset, bytesDropped: 0, keptIn: nil) }
        let copy = "\(name).torn-\(offset)"
        let copies = ((try? storage.list()) ?? []).filter { $0.contains(".torn-") }
        guard copies.contains(copy) || copies.count < Limits.tornTailCopiesMax else {
            return TornTail(file: name, offset: offset, bytesDropped: dropped, keptIn: nil)
        }
        do {
            let file = try storage.open(copy, create: true)
            defer { file.close() }
            try file.truncate(to: 0)
            try file.write(Array(bytes[offset..<end]), at: 0)
            try file.sync()
            try storage.syncDirectory()
            return TornTail(file: name, offset: offset, bytesDropped: dropped, keptIn: copy)
        } catch {
            // What the failed copy left (empty, or part of the bytes: a full disk) is no copy,
            // and would count against the copies kept; the cut bytes are still in the segment
            // until the cut below, which needs no new space.
            try? storage.remove(copy)
            return TornTail(file: name, offset: offset, bytesDropped: dropped, keptIn: nil)
        }
    }

    static func run(storage: LogStorage) throws -> Recovery {
        let segments = try segmentFiles(storage)
        var syncs = 0
        // A segment a crash caught before its rename: never acknowledged, never named.
        let unfinished = try storage.list().filter(LogFormat.isTemporarySegmentFileName)
        for name in unfinished { try storage.remove(name) }

        var start = 0
        var checkpointFound = false
        for i in segments.indices.reversed() {
            if try startsWithCheckpoint(storage, number: segments[i].number, name: segments[i].name) {
                start = i
                checkpointFound = true
                break
            }
        }

        var expectedLSN: UInt64? = nil
        var expectedNumber: UInt64? = nil
        var snapshot: [UInt8]?
        var snapshotLSN: UInt64?
        var records: [LogRecord] = []
        var locations: [LogRecordLocation] = []
        var snapshotLocation: LogRecordLocation?
        var bytesSinceCheckpoint = 0
        var truncatedTail: TornTail?
        var live: [(number: UInt64, file: LogFile, size: Int, allocated: Int)] = []
        var nextLSN: UInt64 = 1
        defer { for segment in live.dropLast() { segment.file.close() } }

        for i in start..<segments.count {
            let (number, name) = segments[i]
            let isLast = i == segments.count - 1
            if let expectedNumber, number != expectedNumber {
                throw LogCorruptionError(file: name, offset: 0,
                                         reason: "segment \(LogFormat.segmentFileName(expectedNumber)) is missing")
            }
            let (file, bytes) = try readAll(storage, name)
            // A checkpoint segment's header sets the LSNs; without one the log must begin at 1.
            let trustHeader = i == start && checkpointFound
            let scan = SegmentScanner.scan(file: name, bytes: bytes, number: number,
                                           expectedLSN: trustHeader ? nil : (expectedLSN ?? 1), isLast: isLast)
            var allocated = bytes.count
            switch scan.end {
            case .clean:
                break
            case .corrupt(let offset, let reason):
                file.close()
                throw LogCorruptionError(file: name, offset: offset, reason: reason)
            case .torn(let offset, _):
                precondition(isLast && !scan.records.isEmpty, "a torn tail outside the last segment, or before its first record")
                truncatedTail = keepAside(storage, name, bytes, from: offset)
                // Overwritten with zeros, not truncated: the file keeps a length a crash can
                // leave (`Limits.logFileAlignmentBytes`), so a crash right after this start
                // does not make it read as a cut file.
                let nonzeroEnd = (bytes.lastIndex { $0 != 0 } ?? offset) + 1
                if nonzeroEnd > offset { try file.write([UInt8](repeating: 0, count: nonzeroEnd - offset), at: offset) }
            }
            if isLast && allocated % Limits.logFileAlignmentBytes != 0 {
                // Written by a version that did not round its files' lengths: rounded now, so
                // that from here on every length is one a crash can leave.
                let aligned = LogFileLength.alignedUp(allocated)
                try file.write([UInt8](repeating: 0, count: aligned - allocated), at: allocated)
                allocated = aligned
            }
            for (index, scanned) in scan.records.enumerated() {
                if trustHeader && index == 0 && scanned.record.type == LogFormat.checkpointType {
                    snapshot = scanned.record.payload
                    snapshotLSN = scanned.record.lsn
                    snapshotLocation = LogRecordLocation(file: name, offset: scanned.offset)
                    bytesSinceCheckpoint = 0
                } else {
                    records.append(scanned.record)
                    locations.append(LogRecordLocation(file: name, offset: scanned.offset))
                    bytesSinceCheckpoint += scanned.encodedBytes
                }
            }
            live.append((number: number, file: file, size: scan.goodBytes, allocated: allocated))
            expectedLSN = scan.nextLSN
            expectedNumber = number + 1
            nextLSN = scan.nextLSN!
        }

        // Segments older than the newest checkpoint hold nothing the snapshot does not.
        for segment in segments[..<start] {
            try storage.remove(segment.name)
        }
        if !segments.isEmpty || !unfinished.isEmpty {
            // What we read may sit only in the page cache (the process died, not the machine);
            // make it durable before anyone acts on it. The directory sync covers removals.
            if let last = live.last {
                try last.file.sync()
                syncs += 1
            }
            try storage.syncDirectory()
            syncs += 1
        }

        var recovered = RecoveredLog(snapshot: snapshot, snapshotLSN: snapshotLSN, records: records,
                                     truncatedTail: truncatedTail, nextLSN: nextLSN)
        recovered.removedUnfinishedSegments = unfinished.sorted()
        recovered.recordLocations = locations
        recovered.snapshotLocation = snapshotLocation
        return Recovery(recovered: recovered, nextLSN: nextLSN, bytesSinceCheckpoint: bytesSinceCheckpoint,
                        lastSegment: live.last, nextSegmentNumber: (live.last?.number ?? 0) + 1,
                        liveSegments: live.map(\.number), syncs: syncs)
    }
}
