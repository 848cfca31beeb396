import CohortCore
import CohortPosix
import XCTest
@testable import CohortLog

final class BasicsTests: XCTestCase {
    func testCRC32CKnownVectorsAndIncrementalUpdate() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([]), 0)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        // Slicing-by-8 against the bit-at-a-time definition, across lengths and alignments.
        var rng = SplitMix64(seed: 1)
        let data = (0..<300).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        for length in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 299] {
            let bytes = Array(data[1..<(1 + length)])
            var crc: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                crc ^= UInt32(b)
                for _ in 0..<8 { crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
            }
            XCTAssertEqual(CRC32C.checksum(bytes), ~crc, "length \(length)")
            for split in [0, length / 3, length] {
                let first = CRC32C.checksum(Array(bytes[..<split]))
                let whole = Array(bytes[split...]).withUnsafeBytes { CRC32C.update(first, $0) }
                XCTAssertEqual(whole, ~crc, "length \(length) split \(split)")
            }
        }
    }

    func testFaultEnvironmentParsing() throws {
        XCTAssertEqual(try StorageFaults.fromEnvironment(nil), StorageFaults())
        XCTAssertEqual(try StorageFaults.fromEnvironment(""), StorageFaults())
        XCTAssertEqual(try StorageFaults.fromEnvironment("fsync-fail"), StorageFaults(failSyncAtCount: 1))
        XCTAssertEqual(try StorageFaults.fromEnvironment("fsync-fail:1"), StorageFaults(failSyncAtCount: 1))
        XCTAssertEqual(try StorageFaults.fromEnvironment("fsync-fail:17"), StorageFaults(failSyncAtCount: 17))
        for bad in ["fsync-fail:0", "fsync-fail:-2", "fsync-fail:", "fsync-fail:x", "fsync-fail:1:2", "disk-full", "FSYNC-FAIL"] {
            XCTAssertThrowsError(try StorageFaults.fromEnvironment(bad), bad) { error in
                guard let error = error as? StorageFaultSyntaxError else { return XCTFail("\(error)") }
                XCTAssertTrue(error.description.contains(bad), error.description)
            }
        }
    }

    func testPosixFilesAndDirectories() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let file = try PosixFile(path: dir + "/a", create: true)
        try file.pwrite([1, 2, 3, 4, 5], offset: 0)
        try file.pwrite([9, 9], offset: 7)
        XCTAssertEqual(try file.size(), 9)
        XCTAssertEqual(try file.pread(count: 100, offset: 3), [4, 5, 0, 0, 9, 9])
        try file.truncate(to: 2)
        try file.fdatasync()
        try file.fsync()
        XCTAssertEqual(try file.pread(count: 10, offset: 0), [1, 2])
        file.close()
        file.close()
        XCTAssertThrowsError(try PosixFile(path: dir + "/missing", create: false)) { error in
            XCTAssertEqual((error as? PosixError)?.path, dir + "/missing")
        }
        try PosixFS.writeFileAtomically(dir + "/b", [7, 8])
        try PosixFS.writeFileAtomically(dir + "/b", [7, 8, 9])
        XCTAssertEqual(try PosixFS.readFile(dir + "/b"), [7, 8, 9])
        try PosixFS.rename(dir + "/b", dir + "/c")
        try PosixFS.createDirectory(dir + "/x/y", intermediate: true)
        try PosixFS.fsyncDirectory(dir)
        XCTAssertEqual(try PosixFS.listDirectory(dir).sorted(), ["a", "c", "x"])
        XCTAssertTrue(PosixFS.exists(dir + "/c"))
        try PosixFS.remove(dir + "/c")
        XCTAssertFalse(PosixFS.exists(dir + "/c"))
        XCTAssertThrowsError(try PosixFS.remove(dir + "/c"))
        for (path, parent) in [("a", "."), ("/a", "/"), ("/a/b", "/a"), ("/a/b/", "/a"), ("a/b", "a"), ("/", "/")] {
            XCTAssertEqual(PosixFS.parentDirectory(of: path), parent, path)
        }
    }

    func testAppendRecoverRoundTripOnFiles() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let storage = try FileLogStorage(directory: dir)
        let (log, recovered) = try DurableLog.open(storage: storage)
        XCTAssertEqual(recovered.nextLSN, 1)
        XCTAssertTrue(recovered.records.isEmpty)
        XCTAssertNil(recovered.snapshot)
        for lsn in UInt64(1)...50 {
            XCTAssertEqual(try log.append(type: UInt8(lsn % 255 + 1), payload: payload(lsn, size: Int(lsn)), force: lsn % 10 == 0), lsn)
        }
        XCTAssertEqual(log.lastLSN, 50)
        XCTAssertEqual(log.recordsTotal, 50)
        XCTAssertEqual(log.forcedRecordsTotal, 5)
        log.close()
        XCTAssertEqual(log.durableLSN, 50, "close syncs what is buffered")
        XCTAssertThrowsError(try log.append(type: 1, payload: [], force: false)) { XCTAssertTrue($0 is LogClosedError) }

        let (reopened, again) = try DurableLog.open(storage: try FileLogStorage(directory: dir))
        defer { reopened.close() }
        XCTAssertNil(again.truncatedTail)
        XCTAssertEqual(again.nextLSN, 51)
        XCTAssertEqual(again.records.map(\.lsn), Array(1...50))
        for record in again.records {
            XCTAssertEqual(record.payload, payload(record.lsn, size: Int(record.lsn)))
            XCTAssertEqual(record.type, UInt8(record.lsn % 255 + 1))
        }
        XCTAssertEqual(try reopened.append(type: 1, payload: [1], force: true), 51)
        XCTAssertTrue(waitUntil { reopened.durableLSN == 51 })
    }

    /// Recovery reads every segment from the disk, not from a cache that may hold pages a
    /// failed writeback never wrote: each file it reads was told so before its first read.
    func testRecoveryReadsEverySegmentFromTheDisk() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let (log, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir))
        for lsn in UInt64(1)...5 { _ = try log.append(type: 3, payload: payload(lsn), force: true) }
        _ = try log.checkpoint(snapshot: [1, 2, 3])
        for lsn in UInt64(7)...9 { _ = try log.append(type: 3, payload: payload(lsn), force: true) }
        XCTAssertTrue(waitUntil { log.durableLSN == 9 })
        log.close()
        let watched = ReadWatchingStorage(inner: try FileLogStorage(directory: dir))
        let (reopened, recovered) = try DurableLog.open(storage: watched)
        defer { reopened.close() }
        XCTAssertEqual(recovered.snapshot, [1, 2, 3])
        XCTAssertEqual(recovered.records.map(\.lsn), [7, 8, 9])
        XCTAssertFalse(watched.readFiles.isEmpty)
        XCTAssertEqual(watched.readBeforeDropping, [], "read from the cache: \(watched.readBeforeDropping)")
    }

    func testAppendRecoverRoundTripInSimulation() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig())
        for lsn in UInt64(1)...20 { _ = try log.append(type: 3, payload: payload(lsn), force: false) }
        XCTAssertEqual(try log.syncNow(), 20)
        XCTAssertNil(try log.syncNow(), "nothing pending")
        let (_, recovered) = try DurableLog.open(storage: storage, config: manualConfig())
        XCTAssertEqual(recovered.records, (UInt64(1)...20).map { LogRecord(lsn: $0, type: 3, payload: payload($0)) })
    }

    func testRecordLimitsAndBackPressure() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(unsyncedBytesMax: 1000))
        XCTAssertThrowsError(try log.append(type: 1, payload: [UInt8](repeating: 0, count: Limits.recordBytesMax + 1), force: false)) {
            XCTAssertTrue($0 is LogRecordTooLargeError, "\($0)")
        }
        var appended = 0
        while true {
            do {
                _ = try log.append(type: 1, payload: [UInt8](repeating: 1, count: 100), force: false)
                appended += 1
            } catch let error as LogFullError {
                XCTAssertEqual(error.limitBytes, 1000)
                break
            }
        }
        XCTAssertEqual(appended, 1000 / 117)
        XCTAssertEqual(log.lastLSN, UInt64(appended), "a refused append takes no LSN")
        // A small outcome record goes past it (a participant's abort: its locks are released
        // whether or not it is written).
        XCTAssertEqual(try log.append(type: 1, payload: [UInt8](repeating: 2, count: 60), urgency: .lazy, pastBackPressure: true),
                       UInt64(appended + 1))
        XCTAssertThrowsError(try log.append(type: 1, payload: [1], force: false), "others are still refused") { XCTAssertTrue($0 is LogFullError) }
        try log.syncNow()
        XCTAssertNoThrow(try log.append(type: 1, payload: [UInt8](repeating: 1, count: 100), force: false))
    }

    /// A checkpoint takes none of the room `unsyncedBytesMax` keeps for records: while one
    /// larger than that room is being written, records are still taken (and the bound still
    /// holds for them), and after its round the room is whole again. Counted with the records,
    /// a snapshot over 32 MiB made every append "log full" until its round synced, and the
    /// coordinator aborted each commit decided meanwhile (the agent's checkpoints, holding
    /// prepared write sets, go through the same code). Review, session 28.
    func testACheckpointBeingWrittenLeavesTheRecordsRoomWhole() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig(unsyncedBytesMax: 1000))
        _ = try log.append(type: 1, payload: [UInt8](repeating: 1, count: 100), force: false)
        XCTAssertEqual(try log.syncNow(), 1)
        // A record waits in front of the checkpoint (it goes in the current segment, the
        // checkpoint starts the next, in the same round).
        _ = try log.append(type: 1, payload: [UInt8](repeating: 1, count: 100), force: false)
        let snapshot = [UInt8](repeating: 9, count: 5_000)
        let checkpointLSN = try log.checkpoint(snapshot: snapshot)
        func fill() throws -> Int {
            var appended = 0
            while true {
                do {
                    _ = try log.append(type: 1, payload: [UInt8](repeating: 2, count: 100), force: true)
                    appended += 1
                } catch let error as LogFullError {
                    XCTAssertEqual(error.limitBytes, 1000)
                    return appended
                }
            }
        }
        // The record before the checkpoint (117 bytes) and those after it share the room.
        XCTAssertEqual(try fill(), (1000 - 117) / 117, "records refused while a checkpoint larger than their room is written")
        XCTAssertEqual(try log.syncNow(), log.lastLSN)
        XCTAssertEqual(log.checkpointsTotal, 1)
        // The round wrote everything: the room is whole, not short by the checkpoint.
        XCTAssertEqual(try fill(), 1000 / 117, "the room after the checkpoint's round")
        XCTAssertEqual(try log.syncNow(), log.lastLSN)
        log.close()
        let (_, recovered) = try DurableLog.open(storage: storage, config: manualConfig(unsyncedBytesMax: 1000))
        XCTAssertEqual(recovered.snapshot, snapshot)
        XCTAssertEqual(recovered.records.first?.lsn, checkpointLSN + 1)
        XCTAssertEqual(recovered.records.count, (1000 - 117) / 117 + 1000 / 117)
    }

    func testForcedAndUnforcedRecordsShareOneSync() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig())
        for _ in 0..<10 { _ = try log.append(type: 1, payload: [1], force: false) }
        _ = try log.append(type: 1, payload: [2], force: true)
        XCTAssertEqual(try log.syncNow(), 11)
        XCTAssertEqual(log.syncsTotal, 2, "first round: one segment sync and one directory sync")
        for _ in 0..<5 { _ = try log.append(type: 1, payload: [3], force: false) }
        XCTAssertEqual(try log.syncNow(), 16)
        XCTAssertEqual(log.syncsTotal, 3, "one sync for all five records")
        XCTAssertEqual(log.forcedRecordsTotal, 1)
        XCTAssertEqual(storage.syncsTotal, 3)
    }

    func testForcedAppendSyncsAtOnceUnforcedWaitsForLazyDelay() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(lazySyncDelayMs: 1_000))
        defer { log.close() }
        let durable = Locked<[UInt64]>([])
        log.onDurable = { lsn in durable.update { $0.append(lsn) } }

        _ = try log.append(type: 1, payload: [1], force: false)
        PosixThread.sleep(milliseconds: 100)
        XCTAssertEqual(log.durableLSN, 0, "an unforced record waits for the lazy sync")
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 1 }, "the lazy sync comes")
        XCTAssertEqual(durable.get(), [1])

        // Unforced records ride along with a forced one, which does not wait for the lazy delay.
        let syncsBefore = log.syncsTotal
        for _ in 0..<20 { _ = try log.append(type: 1, payload: [2], force: false) }
        _ = try log.append(type: 1, payload: [3], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 700) { log.durableLSN == 22 }, "forced append synced promptly")
        XCTAssertEqual(log.syncsTotal - syncsBefore, 1)
        XCTAssertEqual(durable.get().last, 22)
    }

    func testRecordsAppendedWhileWakesAreHeldShareOneSyncAtTheRelease() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage)
        defer { log.close() }
        _ = try log.append(type: 1, payload: [0], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 1 })
        let syncsBefore = log.syncsTotal

        // One event-loop pass that appends a forced record for each of a batch's votes, with
        // time between them: unheld, the first would start a round of its own.
        log.holdWakes()
        for i in 0..<5 {
            _ = try log.append(type: 1, payload: [UInt8(i)], force: true)
            PosixThread.sleep(milliseconds: 20)
        }
        XCTAssertEqual(log.durableLSN, 1, "nothing is synced while wakes are held")
        XCTAssertEqual(log.syncsTotal, syncsBefore)
        log.releaseHeldWakes()
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 6 }, "the release starts the round")
        XCTAssertEqual(log.syncsTotal - syncsBefore, 1, "one sync for the whole pass")

        // Released, a forced record wakes the sync thread at once again.
        _ = try log.append(type: 1, payload: [9], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 7 })
    }

    /// A round whose own timer runs out while wakes are held (here a soon record's delay) waits
    /// for the release too: it took the pass's first records alone, and the rest needed a sync
    /// of their own (found in review).
    func testATimedRoundWaitsForHeldWakesToBeReleased() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(soonSyncDelayUs: 1_000))
        defer { log.close() }
        _ = try log.append(type: 1, payload: [0], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 1 })
        let syncsBefore = log.syncsTotal
        _ = try log.append(type: 1, payload: [1], urgency: .soon)  // its 1 ms delay starts
        log.holdWakes()
        _ = try log.append(type: 1, payload: [2], force: true)
        PosixThread.sleep(milliseconds: 30)  // the soon delay runs out meanwhile
        _ = try log.append(type: 1, payload: [3], force: true)
        XCTAssertEqual(log.durableLSN, 1, "no round starts while wakes are held")
        log.releaseHeldWakes()
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 4 })
        XCTAssertEqual(log.syncsTotal - syncsBefore, 1, "one sync for the soon record and the whole pass")
    }

    /// A `.soon` record (a participant's commit record) does not start a sync of its own: it
    /// rides with the next forced record's sync, and without one it syncs after
    /// `soonSyncDelayUs`, well before the lazy delay.
    func testSoonRecordRidesWithTheNextForcedSyncOrSyncsAfterItsDelay() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(lazySyncDelayMs: 60_000, soonSyncDelayUs: 30_000_000))
        defer { log.close() }
        // The first round also syncs the new segment's directory entry; start after it.
        _ = try log.append(type: 1, payload: [0], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == 1 })
        let syncsBefore = log.syncsTotal

        let soon = try log.append(type: 1, payload: [1], urgency: .soon)
        PosixThread.sleep(milliseconds: 150)
        XCTAssertEqual(log.durableLSN, 1, "a soon record waits for a forced record to ride with")
        XCTAssertEqual(log.syncsTotal, syncsBefore)
        let forced = try log.append(type: 1, payload: [2], urgency: .forced)
        XCTAssertTrue(waitUntil(timeoutMs: 5_000) { log.durableLSN == forced }, "the forced record syncs promptly")
        XCTAssertGreaterThan(forced, soon)
        XCTAssertEqual(log.syncsTotal - syncsBefore, 1, "one sync covered the soon record and the forced one")
        XCTAssertEqual(log.forcedRecordsTotal, 3, "a soon record counts as forced: its sync comes later, but it comes")
    }

    func testSoonRecordAloneSyncsAfterItsDelayNotTheLazyOne() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(lazySyncDelayMs: 60_000, soonSyncDelayUs: 20_000))
        defer { log.close() }
        let lazy = try log.append(type: 1, payload: [1], urgency: .lazy)
        let soon = try log.append(type: 1, payload: [2], urgency: .soon)
        XCTAssertTrue(waitUntil(timeoutMs: 10_000) { log.durableLSN == soon },
                      "the soon record syncs (with the lazy one before it) long before the 60 s lazy delay")
        XCTAssertGreaterThan(soon, lazy)
    }

    /// Under load (the last round had siblings) a forced record waits for others to share its
    /// sync, and nothing is reported durable before that sync; a lone writer never waits.
    func testGroupCommitWaitGathersForcedRecords() throws {
        let storage = SimLogStorage()
        // A quiet spell as long as the wait itself: only the target or close end it here.
        let config = DurableLogConfig(lazySyncDelayMs: 1_000, groupCommitWaitUs: 5_000_000, groupCommitSiblingsMin: 1,
                                      groupCommitRecordsTarget: 3, groupCommitQuietUsMin: 5_000_000, groupCommitQuietUsMax: 5_000_000)
        let (log, _) = try DurableLog.open(storage: storage, config: config)
        // First round: no siblings seen yet, so no wait (the wait would be 5 s).
        _ = try log.append(type: 1, payload: [1], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 2_000) { log.durableLSN == 1 }, "a lone forced record is synced at once")

        // Now the last round had a forced record: the next one waits for two more.
        let syncsBefore = log.syncsTotal
        _ = try log.append(type: 1, payload: [2], force: true)
        PosixThread.sleep(milliseconds: 150)
        XCTAssertEqual(log.durableLSN, 1, "waiting for siblings, not yet durable")
        _ = try log.append(type: 1, payload: [3], force: true)
        _ = try log.append(type: 1, payload: [4], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 2_000) { log.durableLSN == 4 }, "the target ends the wait early")
        XCTAssertEqual(log.syncsTotal - syncsBefore, 1, "three forced records, one sync")
        // The sync thread starts its wait when it wakes, a little after the append the test's
        // 150 ms are measured from (CI once counted 0.147 s): most of it, not all, is the claim.
        XCTAssertGreaterThanOrEqual(log.groupCommitWaitSecondsTotal, 0.1, "the 150 ms spent gathering is counted")

        // Closing does not wait out the delay, and syncs what is pending.
        _ = try log.append(type: 1, payload: [5], force: true)
        log.close()
        XCTAssertEqual(log.durableLSN, 5)
    }

    /// A sync longer than `Limits.logSlowSyncUs` counts as slow and sets the longest sync; fast
    /// ones do neither. Operators tell a slow disk from a slow process by these.
    func testSlowSyncsAreCountedAndTheLongestIsKept() throws {
        func counters(syncDelayMs: Int) throws -> (slow: Int, longest: Double) {
            let storage = SlowSyncStorage(syncDelayMs: syncDelayMs)
            let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(preallocateBytes: 0))
            defer { log.close() }
            for lsn in UInt64(1)...3 {
                _ = try log.append(type: 1, payload: [UInt8(lsn)], force: true)
                XCTAssertTrue(waitUntil(timeoutMs: 20_000) { log.durableLSN == lsn })
            }
            return (log.slowSyncsTotal, log.longestSyncSeconds)
        }
        let slowDelayMs = Limits.logSlowSyncUs / 1_000 + 5
        let slow = try counters(syncDelayMs: slowDelayMs)
        XCTAssertGreaterThanOrEqual(slow.slow, 3, "each forced record's round took a slow sync")
        XCTAssertGreaterThanOrEqual(slow.longest, Double(slowDelayMs) / 1_000 * 0.95)
        let fast = try counters(syncDelayMs: 0)
        XCTAssertEqual(fast.slow, 0)
        XCTAssertLessThan(fast.longest, Double(Limits.logSlowSyncUs) / 1e6)
    }

    /// The quiet spell follows how long the log's syncs take: with instant syncs it shrinks to
    /// its lower bound, with 100 ms syncs it grows toward 100 ms. Measured as the time from a
    /// lone forced append to the start of its sync (the wait), not to durability.
    func testGroupCommitQuietSpellFollowsTheSyncTime() throws {
        func waitBeforeSyncMs(syncDelayMs: Int) throws -> Int64 {
            let storage = SlowSyncStorage(syncDelayMs: syncDelayMs)
            // Quiet spell 1 ms..5 s, wait up to 5 s, every round with a forced record counts as
            // having siblings: only the quiet spell can end the wait early.
            let config = DurableLogConfig(lazySyncDelayMs: 1_000, groupCommitWaitUs: 5_000_000, groupCommitSiblingsMin: 1,
                                          groupCommitRecordsTarget: 1_000, groupCommitQuietUsMin: 1_000,
                                          groupCommitQuietUsMax: 5_000_000, preallocateBytes: 0)
            let (log, _) = try DurableLog.open(storage: storage, config: config)
            defer { log.close() }
            // Warm the moving average up with lone records, one round each.
            for lsn in UInt64(1)...16 {
                _ = try log.append(type: 1, payload: [UInt8(lsn)], force: true)
                XCTAssertTrue(waitUntil(timeoutMs: 20_000) { log.durableLSN == lsn })
            }
            let syncsBefore = storage.syncStarts.count
            let appendedMs = SystemClock.monotonicMs()
            _ = try log.append(type: 1, payload: [17], force: true)
            XCTAssertTrue(waitUntil(timeoutMs: 20_000) { log.durableLSN == 17 })
            let starts = storage.syncStarts
            XCTAssertEqual(starts.count, syncsBefore + 1, "one sync for the lone record")
            // The segment syncs after the first round (16 at least) take `syncDelayMs` each, and
            // are counted as time in fdatasync.
            XCTAssertGreaterThanOrEqual(log.syncSecondsTotal, Double(16 * syncDelayMs) / 1_000 * 0.95)
            return starts.last! - appendedMs
        }
        let fast = try waitBeforeSyncMs(syncDelayMs: 0)
        XCTAssertLessThan(fast, 1_000, "instant syncs: the quiet spell is at its 1 ms floor, not the 5 s ceiling")
        let slow = try waitBeforeSyncMs(syncDelayMs: 100)
        XCTAssertGreaterThanOrEqual(slow, 60, "100 ms syncs: the quiet spell grew toward 100 ms (moving average)")
        XCTAssertLessThan(slow, 4_000, "and stays far below the 5 s wait")
    }

    /// With few writers the wait for siblings ends after a quiet spell (nobody else is coming:
    /// they all wait on this sync), but not when the previous round reached the target (heavy
    /// load, where gathering pays). The wait here is 5 s and the quiet spell 50 ms, so the
    /// margins are wide on a loaded machine.
    func testGroupCommitWaitEndsAfterAQuietSpellUnlessTheLastRoundWasFull() throws {
        let storage = SimLogStorage()
        let config = DurableLogConfig(lazySyncDelayMs: 1_000, groupCommitWaitUs: 5_000_000, groupCommitSiblingsMin: 1,
                                      groupCommitRecordsTarget: 3, groupCommitQuietUsMin: 50_000, groupCommitQuietUsMax: 50_000)
        let (log, _) = try DurableLog.open(storage: storage, config: config)
        _ = try log.append(type: 1, payload: [1], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 2_000) { log.durableLSN == 1 })
        // The last round had 1 forced record (siblings min 1, below the target 3): a lone record
        // waits only for the quiet spell, not the 5 s.
        _ = try log.append(type: 1, payload: [2], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 3_000) { log.durableLSN == 2 }, "the quiet spell ends the wait")

        // A full round (3 records, the target) ...
        _ = try log.append(type: 1, payload: [3], force: true)
        _ = try log.append(type: 1, payload: [4], force: true)
        _ = try log.append(type: 1, payload: [5], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 3_000) { log.durableLSN == 5 })
        // ... may have been split by the quiet spell; make one that surely is full.
        log.close()
        let (log2, _) = try DurableLog.open(storage: storage, config: config)
        _ = try log2.append(type: 1, payload: [6], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 2_000) { log2.durableLSN == 6 })
        // Three forced records appended before the sync thread can take them (the last round
        // had 1, so it gathers; the third reaches the target and wakes it): a full round.
        _ = try log2.append(type: 1, payload: [7], force: true)
        _ = try log2.append(type: 1, payload: [8], force: true)
        _ = try log2.append(type: 1, payload: [9], force: true)
        XCTAssertTrue(waitUntil(timeoutMs: 3_000) { log2.durableLSN == 9 })
        // Now the last round was full: a lone record keeps waiting past the quiet spell.
        _ = try log2.append(type: 1, payload: [10], force: true)
        PosixThread.sleep(milliseconds: 400)
        XCTAssertEqual(log2.durableLSN, 9, "after a full round the wait is not cut short by a quiet spell")
        log2.close()
        XCTAssertEqual(log2.durableLSN, 10, "close syncs what is pending")
    }

    func testGroupCommitFromManyThreads() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let storage = try FileLogStorage(directory: dir)
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(lazySyncDelayMs: 5))
        let highest = Locked<UInt64>(0)
        log.onDurable = { lsn in highest.update { XCTAssertGreaterThan(lsn, $0); $0 = lsn } }
        let threadCount = 4, perThread = 500
        let assigned = Locked<[UInt64]>([])
        var threads: [PosixThread] = []
        for t in 0..<threadCount {
            threads.append(try PosixThread(name: "appender") {
                var mine: [UInt64] = []
                for i in 0..<perThread {
                    mine.append(try! log.append(type: UInt8(t + 1), payload: payload(UInt64(i)), force: i % 2 == 0))
                }
                assigned.update { $0.append(contentsOf: mine) }
            })
        }
        for thread in threads { thread.join() }
        let total = UInt64(threadCount * perThread)
        XCTAssertEqual(assigned.get().sorted(), Array(1...total), "every append got a distinct LSN")
        XCTAssertTrue(waitUntil { highest.get() == total }, "every append reported durable")
        XCTAssertEqual(log.durableLSN, total)
        XCTAssertLessThan(log.syncsTotal * 4, Int(total), "group commit: \(log.syncsTotal) syncs for \(total) records")
        log.close()
        let (_, recovered) = try DurableLog.open(storage: try FileLogStorage(directory: dir), config: manualConfig())
        XCTAssertEqual(recovered.records.count, Int(total))
    }
}

/// Log storage whose file syncs take `syncDelayMs` and record when each began.
final class SlowSyncStorage: LogStorage {
    let inner = SimLogStorage()
    let syncDelayMs: Int
    private let lock = PosixConditionLock()
    private var starts: [Int64] = []

    init(syncDelayMs: Int) { self.syncDelayMs = syncDelayMs }

    var syncStarts: [Int64] { lock.withLock { starts } }
    var name: String { inner.name }
    func list() throws -> [String] { try inner.list() }
    func open(_ file: String, create: Bool) throws -> LogFile { SlowSyncFile(storage: self, file: try inner.open(file, create: create)) }
    func remove(_ file: String) throws { try inner.remove(file) }
    func rename(_ from: String, to: String) throws { try inner.rename(from, to: to) }
    func syncDirectory() throws { try inner.syncDirectory() }

    func noteSync() {
        lock.withLock { starts.append(SystemClock.monotonicMs()) }
        if syncDelayMs > 0 { PosixThread.sleep(milliseconds: Int64(syncDelayMs)) }
    }
}

final class SlowSyncFile: LogFile {
    let storage: SlowSyncStorage
    let file: LogFile
    init(storage: SlowSyncStorage, file: LogFile) {
        self.storage = storage
        self.file = file
    }
    func size() throws -> Int { try file.size() }
    func read(offset: Int, count: Int) throws -> [UInt8] { try file.read(offset: offset, count: count) }
    func write(_ bytes: [UInt8], at offset: Int) throws { try file.write(bytes, at: offset) }
    func truncate(to size: Int) throws { try file.truncate(to: size) }
    func sync() throws {
        storage.noteSync()
        try file.sync()
    }
    func close() { file.close() }
}

/// Storage that notes, per opened file, whether it was read before `readFromDiskFromNowOn`.
final class ReadWatchingStorage: LogStorage {
    let inner: LogStorage
    private let lock = PosixConditionLock()
    private var read: Set<String> = []
    private var early: Set<String> = []
    init(inner: LogStorage) { self.inner = inner }
    var readFiles: Set<String> { lock.withLock { read } }
    var readBeforeDropping: [String] { lock.withLock { early.sorted() } }
    func noteRead(_ file: String, dropped: Bool) { lock.withLock { read.insert(file); if !dropped { early.insert(file) } } }

    var name: String { inner.name }
    func list() throws -> [String] { try inner.list() }
    func open(_ file: String, create: Bool) throws -> LogFile { ReadWatchingFile(storage: self, name: file, file: try inner.open(file, create: create)) }
    func remove(_ file: String) throws { try inner.remove(file) }
    func rename(_ from: String, to: String) throws { try inner.rename(from, to: to) }
    func syncDirectory() throws { try inner.syncDirectory() }
}

final class ReadWatchingFile: LogFile {
    let storage: ReadWatchingStorage
    let name: String
    let file: LogFile
    private var dropped = false
    init(storage: ReadWatchingStorage, name: String, file: LogFile) {
        self.storage = storage
        self.name = name
        self.file = file
    }
    func size() throws -> Int { try file.size() }
    func read(offset: Int, count: Int) throws -> [UInt8] {
        storage.noteRead(name, dropped: dropped)
        return try file.read(offset: offset, count: count)
    }
    func write(_ bytes: [UInt8], at offset: Int) throws { try file.write(bytes, at: offset) }
    func truncate(to size: Int) throws { try file.truncate(to: size) }
    func sync() throws { try file.sync() }
    func readFromDiskFromNowOn() throws {
        try file.readFromDiskFromNowOn()
        dropped = true
    }
    func close() { file.close() }
}
