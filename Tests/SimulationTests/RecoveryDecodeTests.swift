import CohortAgent
import CohortCoordinator
import CohortCore
import CohortKV
import CohortLog
import CohortRuntime
import XCTest

/// A server that recovers from a log it cannot decode (another kind of server's, most likely)
/// says which record, where, and what it expected. A coordinator on an agent's log said only
/// "decode error: 825175866 participants in a decision".
final class RecoveryDecodeTests: XCTestCase {
    let config = DurableLogConfig(syncMode: .manual, preallocateBytes: 512)

    /// A log holding a checkpoint of `snapshot` (when given), then `records`.
    func storage(snapshot: [UInt8]? = nil, _ records: [(type: UInt8, payload: [UInt8])]) throws -> SimLogStorage {
        let storage = SimLogStorage()
        let (log, _) = try DurableLog.open(storage: storage, config: config)
        if let snapshot { _ = try log.checkpoint(snapshot: snapshot) }
        for r in records { _ = try log.append(type: r.type, payload: r.payload, force: true) }
        try log.syncNow()
        log.close()
        return storage
    }

    func coordinator(on storage: SimLogStorage) throws -> CoordinatorNode {
        let (log, recovered) = try DurableLog.open(storage: storage, config: config)
        defer { log.close() }
        return try CoordinatorNode(coordinatorID: "3fa90c1e", log: log, recovered: recovered,
                                   config: Coordinator.Config(coordinatorID: "3fa90c1e", epoch: 1),
                                   checkpointAfterBytes: 1 << 30, environment: HandDrivenEnvironment(), onFatal: { XCTFail("fatal: \($0)") })
    }

    func agent(on storage: SimLogStorage) throws -> AgentNode {
        let (log, recovered) = try DurableLog.open(storage: storage, config: config)
        defer { log.close() }
        return try AgentNode(name: "a", incarnation: "00000000000000a1", coordinatorURL: "http://coordinator:1",
                             log: log, recovered: recovered, store: MemoryKVStore(), config: Participant.Config(name: "a"),
                             checkpointAfterBytes: 1 << 30, environment: HandDrivenEnvironment(), onFatal: { XCTFail("fatal: \($0)") })
    }

    let agentRecords: [(type: UInt8, payload: [UInt8])] = [
        ParticipantRecordCoding.encode(.prepared("3fa90c1e-1-1", coordinatorURL: "http://coordinator:1", writeSet: KVResource.encodeWriteSet([("k", .int(1))]), threePhase: nil)),
        ParticipantRecordCoding.encode(.committed("3fa90c1e-1-1")),
    ]

    func testACoordinatorOnAnAgentsLogNamesTheRecord() throws {
        XCTAssertThrowsError(try coordinator(on: try storage(agentRecords))) { error in
            guard let e = error as? LogRecordDecodeError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.file, "0000000000000001.log")
            XCTAssertEqual(e.offset, 32)
            XCTAssertEqual(e.lsn, 1)
            XCTAssertTrue("\(e)".hasPrefix("cannot decode the log: 0000000000000001.log at offset 32: record of type 1 (LSN 1): "), "\(e)")
            XCTAssertTrue("\(e)".hasSuffix("; not a coordinator log?"), "\(e)")
        }
        // An agent's checkpoint first: the checkpoint is what the coordinator cannot read.
        let agentSnapshot = Participant(config: Participant.Config(name: "a")).snapshot()
        XCTAssertThrowsError(try coordinator(on: try storage(snapshot: agentSnapshot, agentRecords))) { error in
            guard let e = error as? LogRecordDecodeError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.type, 0)
            XCTAssertEqual(e.offset, 32)
            XCTAssertTrue("\(e)".contains("checkpoint record (LSN 1)"), "\(e)")
        }
        // Its own log still recovers.
        let own = try storage([CoordinatorRecordCoding.encode(.submission(TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: 1), requestID: "r0"))])
        XCTAssertNoThrow(try coordinator(on: own))
    }

    func testAnAgentOnACoordinatorsLogNamesTheRecord() throws {
        let t = TxID(coordinatorID: "3fa90c1e", epoch: 1, sequence: 1)
        let records = [CoordinatorRecordCoding.encode(.end(t)),
                       CoordinatorRecordCoding.encode(.commitDecision(t, participants: [ParticipantRef(name: "a", url: "http://a")], decidedAtMs: 1))]
        XCTAssertThrowsError(try agent(on: try storage(records))) { error in
            guard let e = error as? LogRecordDecodeError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.kind, "agent")
            XCTAssertTrue("\(e)".hasPrefix("cannot decode the log: 0000000000000001.log at offset "), "\(e)")
            XCTAssertTrue("\(e)".hasSuffix("; not an agent log?"), "\(e)")
        }
        XCTAssertNoThrow(try agent(on: try storage(agentRecords)))
    }
}
