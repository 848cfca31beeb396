@testable import CohortAgent
import CohortCore
import CohortHTTP
@testable import CohortKV
import CohortLog
import CohortRuntime
import XCTest

/// An agent's checkpoint carries the write set of every prepared branch, and a snapshot may
/// hold at most `Limits.snapshotBytesMax`. Found by a review: branches restored in doubt at a
/// start counted nothing against `agentStagedBytesMax`, so a restarted agent took another
/// bound of work beside them; the checkpoint then could not be written, which was fatal, at the
/// first sync of every start, since the same branches came back each time.
final class AgentCheckpointBoundTests: XCTestCase {
    /// A write set of `values` string values of 64 KiB (the largest a value may be), under keys
    /// no other branch uses: about `values` × 64 KiB.
    private func bigWriteSet(branch: Int, values: Int) -> [UInt8] {
        let value = String(repeating: "v", count: Limits.stringValueBytesMax)
        return KVResource.encodeWriteSet((0..<values).map { ("b\(branch)-k\($0)", .string(value)) })
    }

    /// 300 branches in doubt with about 896 KiB write sets each (262 MiB in all, each within the
    /// per-branch limit), as the log of an agent that prepared them over two lives before this
    /// fix holds them. The restart counts them as staged (new work is refused 503), and a
    /// checkpoint of them, too large to write, is put off and counted: the agent goes on and
    /// applies the commit that arrives.
    func testInDoubtWriteSetsPastTheSnapshotLimitPutTheCheckpointOffAndRefuseNewWork() throws {
        let storage = SimLogStorage()
        let config = DurableLogConfig(syncMode: .manual, preallocateBytes: 512)
        let branches = 300
        do {
            let (log, _) = try DurableLog.open(storage: storage, config: config)
            for i in 0..<branches {
                let e = ParticipantRecordCoding.encode(.prepared("0000abcd-1-\(i + 1)", coordinatorURL: "http://coordinator:1",
                                                                 writeSet: bigWriteSet(branch: i, values: 14), threePhase: nil))
                _ = try log.append(type: e.type, payload: e.payload, force: true)
                if i % 16 == 15 { _ = try log.syncNow() }
            }
            _ = try log.syncNow()
            log.close()
        }

        var fatal: String?
        let env = HandDrivenEnvironment()
        let (log, recovered) = try DurableLog.open(storage: storage, config: config)
        let store = MemoryKVStore()
        let node = try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                                 log: log, recovered: recovered, store: store, config: Participant.Config(name: "a"),
                                 checkpointAfterBytes: 32 << 20, environment: env, onFatal: { fatal = fatal ?? $0 })
        node.advertiseURL = "http://a"
        node.start()
        env.drain()
        XCTAssertEqual(node.machine.inDoubtCount, branches)
        XCTAssertGreaterThan(node.resource.stagedBytesTotal, Limits.agentStagedBytesMax,
                             "branches restored in doubt count against agentStagedBytesMax")

        var workStatus: Int?
        node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/work", headers: HTTPHeaders(),
                                                  body: Array(#"{"txid":"0000abcd-2-1","register":false,"ops":[{"op":"set","key":"k","value":1}]}"#.utf8)),
                    ClosureSink { workStatus = $0.status })
        env.drain()
        XCTAssertEqual(workStatus, 503, "no new work beside what the restart brought back")

        // The coordinator's commit of one of them: its record made durable leads to a checkpoint
        // (the log holds far more than checkpointAfterBytes), whose 261 MiB snapshot cannot be written.
        var commitStatus: Int?
        node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/2pc/commit", headers: HTTPHeaders(),
                                                  body: Array(#"{"txid":"0000abcd-1-1"}"#.utf8)),
                    ClosureSink { commitStatus = $0.status })
        env.drain()
        _ = try log.syncNow()
        env.drain()
        XCTAssertEqual(commitStatus, 200)
        XCTAssertNil(fatal, "the agent stopped: \(fatal ?? "")")
        XCTAssertEqual(node.checkpointsTooLarge, 1)
        XCTAssertEqual(node.machine.inDoubtCount, branches - 1)
        XCTAssertNotNil(try store.get("b0-k0"), "the commit was applied")
        node.stop()
        log.close()
    }
}

final class LogCloseTests: XCTestCase {
    /// `DurableLog.close()` syncs what is buffered. In manual mode it ran one
    /// round, and a round takes at most one new segment's groups: a record and a checkpoint
    /// appended to a log with no segment yet (or two checkpoints) need two rounds, and the
    /// second group was dropped without a word (a review). Nothing in it was reported durable, so nothing
    /// acknowledged was lost; but a caller trusting close() (as `writeFirstCheckpoint` trusts
    /// its own syncNow) loses the checkpoint.
    func testCloseInManualModeSyncsEverythingBuffered() throws {
        let storage = SimLogStorage()
        let config = DurableLogConfig(syncMode: .manual, preallocateBytes: 512)
        do {
            let (log, _) = try DurableLog.open(storage: storage, config: config)
            _ = try log.append(type: 1, payload: [1, 2, 3], force: true)
            _ = try log.checkpoint(snapshot: [9, 9])
            log.close()
        }
        let (log, recovered) = try DurableLog.open(storage: storage, config: config)
        defer { log.close() }
        XCTAssertEqual(recovered.snapshot, [9, 9], "the checkpoint appended before close() was dropped (records: \(recovered.records.map(\.lsn)))")
    }
}
