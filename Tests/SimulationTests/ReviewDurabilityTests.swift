@testable import CohortAgent
import CohortCore
import CohortHTTP
@testable import CohortKV
import CohortLog
import CohortRuntime
import XCTest

/// Findings of the durability review (branch review-durable). Each test FAILS on main and
/// documents a bug; none is fixed here.
final class ReviewDurabilityTests: XCTestCase {
    /// A write set of `values` string values of 64 KiB (the largest a value may be), under keys
    /// no other branch uses: about `values` × 64 KiB.
    private func bigWriteSet(branch: Int, values: Int) -> [UInt8] {
        let value = String(repeating: "v", count: Limits.stringValueBytesMax)
        return KVResource.encodeWriteSet((0..<values).map { ("b\(branch)-k\($0)", .string(value)) })
    }

    /// The agent's checkpoint snapshot holds the write set of every in-doubt (and every
    /// heuristically decided) branch, and nothing keeps their total under
    /// `Limits.snapshotBytesMax`: `agentStagedBytesMax` bounds only what is staged in
    /// `KVResource`, and (1) a branch restored in doubt at a start counts 0 staged bytes there,
    /// (2) a heuristically decided branch is released from `KVResource` but keeps its write set
    /// in the snapshot. Past the bound, `DurableLog.checkpoint` throws `LogRecordTooLargeError`
    /// and `AgentNode.maybeCheckpoint` calls it fatal ("checkpoint failed"); the next start
    /// recovers the same branches and stops again at its first sync: the agent cannot run
    /// until every one of those branches is resolved, which it can no longer ask about.
    ///
    /// Here: 300 branches in doubt with about 896 KiB write sets each (262 MiB in all; each
    /// within the per-branch limit `KVResource.writeSetBytesMax`), as the log of an agent that
    /// prepared them over two lives (the first life's 150 restored uncounted, the second
    /// staging 150 more) holds them.
    func testInDoubtWriteSetsPastTheSnapshotLimitStopTheAgentAtEveryStart() throws {
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

        // (1) Restored in doubt, they hold no staged bytes: new work may stage another 256 MiB.
        var fatal: String?
        do {
            let env = HandDrivenEnvironment()
            let (log, recovered) = try DurableLog.open(storage: storage, config: config)
            let node = try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                                     log: log, recovered: recovered, store: MemoryKVStore(), config: Participant.Config(name: "a"),
                                     checkpointAfterBytes: 32 << 20, environment: env, onFatal: { fatal = fatal ?? $0 })
            node.advertiseURL = "http://a"
            node.start()
            env.drain()
            XCTAssertEqual(node.machine.inDoubtCount, branches)
            XCTAssertGreaterThan(node.resource.stagedBytesTotal, 0,
                                 "\(branches) branches restored in doubt (about \(branches * 14 * 64 / 1024) MiB of write sets) count 0 bytes against agentStagedBytesMax")

            // Any record made durable now (here a one-phase commit of new work) leads to a
            // checkpoint, since the log holds far more than checkpointAfterBytes.
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/work", headers: HTTPHeaders(),
                                                      body: Array(#"{"txid":"0000abcd-2-1","register":false,"ops":[{"op":"set","key":"k","value":1}]}"#.utf8)),
                        ClosureSink { _ in })
            env.drain()
            node.handle(try HTTPRequest.parsingTarget(method: "POST", target: "/v1/2pc/prepare", headers: HTTPHeaders(),
                                                      body: Array(#"{"txid":"0000abcd-2-1","one_phase":true}"#.utf8)),
                        ClosureSink { _ in })
            env.drain()
            _ = try log.syncNow()
            env.drain()
            node.stop()
            log.close()
        }
        // (2) The checkpoint of those branches cannot be written, and that is fatal.
        XCTAssertNil(fatal, "the agent stopped: \(fatal ?? "")")
    }
}

/// Log-level findings.
final class ReviewLogCloseTests: XCTestCase {
    /// `DurableLog.close()` says it "syncs what is buffered", but in manual mode it runs one
    /// round, and a round takes at most one new segment's groups: a record and a checkpoint
    /// appended to a log with no segment yet (or two checkpoints) need two rounds, and the
    /// second group is dropped without a word. Nothing in it was reported durable, so nothing
    /// acknowledged is lost; but a caller trusting close() (as `writeFirstCheckpoint` trusts
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
