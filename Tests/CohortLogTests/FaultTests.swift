import CohortCore
import CohortPosix
import XCTest
@testable import CohortLog

final class FaultTests: XCTestCase {
    /// Random appends, syncs, checkpoints and crashes: every record reported durable survives,
    /// recovery always succeeds, and whatever survives is exactly what was appended.
    func testSimulatedCrashesNeverLoseSyncedRecords() throws {
        for seed in UInt64(0)..<150 {
            var rng = SplitMix64(seed: seed)
            let mode: SimCrashMode = seed % 2 == 0 ? .dropUnsynced : .tearUnsynced
            let config = manualConfig(segmentBytesMax: 300)
            let storage = SimLogStorage()
            var (log, _) = try DurableLog.open(storage: storage, config: config)
            /// What each LSN holds in the model; a snapshot holds the LSN it covers up to.
            var model: [UInt64: [UInt8]] = [:]
            var durable: UInt64 = 0
            for _ in 0..<6 {
                for _ in 0..<(5 + rng.next() % 30) {
                    switch rng.next() % 10 {
                    case 0:
                        let lsn = log.lastLSN + 1
                        var covered = ByteWriter()
                        covered.u64(lsn - 1)
                        XCTAssertEqual(try log.checkpoint(snapshot: covered.bytes), lsn)
                        model[lsn] = covered.bytes
                    case 1, 2, 3:
                        durable = try log.syncNow() ?? durable
                    default:
                        let lsn = log.lastLSN + 1
                        let bytes = payload(lsn &+ seed << 32, size: Int(rng.next() % 60))
                        XCTAssertEqual(try log.append(type: 1 + UInt8(rng.next() % 200), payload: bytes, force: rng.next() % 2 == 0), lsn)
                        model[lsn] = bytes
                    }
                }
                if rng.next() % 3 == 0 { durable = try log.syncNow() ?? durable }
                storage.crash(mode: mode, rng: &rng)
                let (reopened, recovered) = try DurableLog.open(storage: storage, config: config)
                log = reopened
                XCTAssertGreaterThan(recovered.nextLSN, durable, "seed \(seed): durable LSN \(durable) lost")
                var lsn = recovered.snapshotLSN.map { $0 + 1 } ?? 1
                if let snapshotLSN = recovered.snapshotLSN {
                    XCTAssertEqual(recovered.snapshot, model[snapshotLSN], "seed \(seed)")
                }
                for record in recovered.records {
                    XCTAssertEqual(record.lsn, lsn, "seed \(seed)")
                    XCTAssertEqual(record.payload, model[record.lsn], "seed \(seed) lsn \(record.lsn)")
                    lsn += 1
                }
                XCTAssertEqual(recovered.nextLSN, lsn)
                model = model.filter { $0.key < recovered.nextLSN }
                durable = recovered.nextLSN - 1
            }
        }
    }

    func testFailedSyncIsFailStopOnRealFiles() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        // Sync 1 and 2 (the first segment and its directory entry) succeed; sync 3 fails.
        let storage = try FileLogStorage(directory: dir, faults: try StorageFaults.fromEnvironment("fsync-fail:3"))
        let (log, _) = try DurableLog.open(storage: storage)
        defer { log.close() }
        let failures = Locked<[String]>([])
        let durable = Locked<[UInt64]>([])
        log.onFailure = { error in failures.update { $0.append("\(error)") } }
        log.onDurable = { lsn in durable.update { $0.append(lsn) } }
        _ = try log.append(type: 1, payload: [1], force: true)
        XCTAssertTrue(waitUntil { log.durableLSN == 1 })
        _ = try log.append(type: 1, payload: [2], force: true)
        XCTAssertTrue(waitUntil { !failures.get().isEmpty })
        PosixThread.sleep(milliseconds: 50)
        XCTAssertEqual(failures.get().count, 1, "onFailure is called once")
        XCTAssertTrue(failures.get().first?.contains("fdatasync") == true, "\(failures.get())")
        XCTAssertThrowsError(try log.append(type: 1, payload: [3], force: true)) { XCTAssertTrue($0 is LogFailedError, "\($0)") }
        XCTAssertEqual(log.durableLSN, 1, "the record whose sync failed is never durable")
        XCTAssertEqual(durable.get(), [1])
    }

    func testFailedFirstSyncReportsNothingDurable() throws {
        let dir = try makeTemporaryDirectory()
        defer { removeTree(dir) }
        let storage = try FileLogStorage(directory: dir, faults: StorageFaults(failSyncAtCount: 1))
        let (log, _) = try DurableLog.open(storage: storage)
        let failed = Locked(false)
        let durable = Locked<[UInt64]>([])
        log.onFailure = { _ in failed.update { $0 = true } }
        log.onDurable = { lsn in durable.update { $0.append(lsn) } }
        for _ in 0..<10 { _ = try? log.append(type: 1, payload: [1], force: false) }
        _ = try? log.append(type: 1, payload: [2], force: true)
        XCTAssertTrue(waitUntil { failed.get() })
        log.close()
        XCTAssertEqual(log.durableLSN, 0)
        XCTAssertEqual(durable.get(), [])
    }

    func testFailedSyncInSimulationStopsTheLogAndLosesOnlyUnsyncedRecords() throws {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig())
        let failures = Locked(0)
        log.onFailure = { _ in failures.update { $0 += 1 } }
        _ = try log.append(type: 1, payload: [1], force: true)
        XCTAssertEqual(try log.syncNow(), 1)
        _ = try log.append(type: 1, payload: [2], force: true)
        storage.failNextSync = true
        XCTAssertThrowsError(try log.syncNow()) { XCTAssertTrue($0 is LogFailedError, "\($0)") }
        // No retry makes it durable: the sync would succeed now, but the log stays failed.
        XCTAssertThrowsError(try log.syncNow()) { XCTAssertTrue($0 is LogFailedError, "\($0)") }
        XCTAssertThrowsError(try log.append(type: 1, payload: [3], force: true))
        XCTAssertEqual(log.durableLSN, 1)
        XCTAssertEqual(failures.get(), 1)
        var rng = SplitMix64(seed: 9)
        storage.crash(mode: .dropUnsynced, rng: &rng)
        let (_, recovered) = try DurableLog.open(storage: storage, config: manualConfig())
        XCTAssertEqual(recovered.records.map(\.lsn), [1])

        // A failed write is fail-stop too.
        let (log2, _) = try DurableLog.open(storage: storage, config: manualConfig())
        _ = try log2.append(type: 1, payload: [4], force: true)
        storage.failNextWrite = true
        XCTAssertThrowsError(try log2.syncNow())
        XCTAssertThrowsError(try log2.append(type: 1, payload: [5], force: true))
    }

    func testRecoveryOnlyRepairsTheLastSegmentAndSyncsWhatItRead() throws {
        // After a process crash (not a power cut) unsynced bytes are still readable; recovery
        // syncs them so nothing it reports can vanish later.
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: manualConfig())
        _ = try log.append(type: 1, payload: [1], force: true)
        try log.syncNow()
        _ = try log.append(type: 1, payload: [2], force: true)
        storage.failNextSync = true
        XCTAssertThrowsError(try log.syncNow())
        let (_, recovered) = try DurableLog.open(storage: storage, config: manualConfig())
        XCTAssertEqual(recovered.records.map(\.lsn), [1, 2], "written bytes are read back")
        var rng = SplitMix64(seed: 1)
        storage.crash(mode: .dropUnsynced, rng: &rng)
        let (_, afterCrash) = try DurableLog.open(storage: storage, config: manualConfig())
        XCTAssertEqual(afterCrash.records.map(\.lsn), [1, 2], "recovery made what it read durable")
    }
}
