@testable import CohortCore
import XCTest

/// Review of the coordinator's 2PC/3PC crash recovery (session 28): a restart from a checkpoint
/// or from the log must give back the outcomes the coordinator answered before the crash, and
/// must read every checkpoint it wrote.
final class CoordinatorRecoveryReviewTests: XCTestCase {
    private let id = "0a1b2c3d"
    private let a = ParticipantRef(name: "a", url: "http://a")
    private let b = ParticipantRef(name: "b", url: "http://b")

    private func records(_ actions: [Coordinator.Action]) -> [Coordinator.Record] {
        actions.compactMap { if case .log(let r, _) = $0 { return r } else { return nil } }
    }

    private func encoded(_ records: [Coordinator.Record]) -> [(type: UInt8, payload: [UInt8])] {
        records.map { CoordinatorRecordCoding.encode($0) }
    }

    // MARK: - a checkpoint the coordinator cannot read back

    /// MEDIUM (close to HIGH: the coordinator cannot start at all). `recover(snapshot:)` bounds
    /// the submissions section by `finishedKeptMax + openTransactionsMax` (110,000), but the
    /// snapshot lists the request_ids of the recent commits (up to `--finished-kept`, which
    /// cohortd takes up to 100,000) and of every decided transaction still waiting for
    /// acknowledgements (up to `committingTransactionsMax`, 50,000, counted apart from
    /// `openTransactionsMax`). With `--finished-kept 100000` and 10,001 committed submissions
    /// waiting for a participant that is down, the coordinator writes a checkpoint, the log
    /// before it is deleted, and every later start throws "110001 submissions": the
    /// coordinator cannot start, and every participant in doubt waits for good.
    func testACheckpointWithManyCommittedSubmissionsIsReadBack() throws {
        var config = Coordinator.Config(coordinatorID: id, epoch: 100)
        config.finishedTransactionsKept = Limits.finishedTransactionsKeptMax
        var log: [Coordinator.Record] = []
        let finishedCount = Limits.finishedTransactionsKeptMax
        let committingCount = 10_001
        for seq in 1...(finishedCount + committingCount) {
            let txid = TxID(coordinatorID: id, epoch: 7, sequence: UInt64(seq))
            log.append(.submission(txid, requestID: "r\(seq)"))
            log.append(.commitDecision(txid, participants: [a, b], decidedAtMs: 1_000))
            // The last 10,001 wait for b, which is down (a acknowledged).
            if seq <= finishedCount { log.append(.end(txid)) }
        }
        var c = Coordinator(config: config)
        _ = try c.recover(snapshot: nil, records: encoded(log), nowMs: 2_000)
        XCTAssertEqual(c.committingCount, committingCount)
        XCTAssertEqual(c.finished.count, finishedCount)
        XCTAssertLessThanOrEqual(c.committingCount, config.committingTransactionsMax, "a state cohortd reaches live")
        let snapshot = c.snapshot()

        var restarted = Coordinator(config: config)
        do {
            _ = try restarted.recover(snapshot: snapshot, records: [], nowMs: 3_000)
        } catch {
            return XCTFail("the coordinator cannot read its own checkpoint (and the log before it is gone): \(error)")
        }
        XCTAssertEqual(restarted.committingCount, committingCount)
        XCTAssertEqual(restarted.submission("r\(finishedCount + committingCount)")?.state, "committing")
    }

    /// MEDIUM, the same bound for the section naming which of those transactions were 3PC:
    /// `finishedKeptMax + openTransactionsMax` (110,000), while the snapshot lists the 3PC ones
    /// among the recent commits (up to 100,000) and among the committing ones (up to 50,000).
    func testACheckpointWithManyThreePhaseCommitsIsReadBack() throws {
        var config = Coordinator.Config(coordinatorID: id, epoch: 100)
        config.finishedTransactionsKept = Limits.finishedTransactionsKeptMax
        var log: [Coordinator.Record] = []
        let finishedCount = Limits.finishedTransactionsKeptMax
        let committingCount = 10_001
        for seq in 1...(finishedCount + committingCount) {
            let txid = TxID(coordinatorID: id, epoch: 7, sequence: UInt64(seq))
            log.append(.preCommit(txid, participants: [a, b], termination: .quorum, atMs: 999))
            log.append(.commitDecision(txid, participants: [a, b], decidedAtMs: 1_000))
            if seq <= finishedCount { log.append(.end(txid)) }
        }
        var c = Coordinator(config: config)
        _ = try c.recover(snapshot: nil, records: encoded(log), nowMs: 2_000)
        XCTAssertEqual(c.committingCount, committingCount)
        let snapshot = c.snapshot()

        var restarted = Coordinator(config: config)
        do {
            _ = try restarted.recover(snapshot: snapshot, records: [], nowMs: 3_000)
        } catch {
            return XCTFail("the coordinator cannot read its own checkpoint (and the log before it is gone): \(error)")
        }
        XCTAssertEqual(restarted.committingCount, committingCount)
    }
}
