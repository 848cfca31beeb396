import CohortCore
@testable import CohortCtl
import CohortLog
import CohortPosix
import Foundation
import XCTest

/// `txctl log inspect|verify` on logs a black-box probe found it misjudged: healthy ones with
/// submission records, no log at all, and segment files no log writes.
final class LogToolOddLogTests: XCTestCase {
    let t = TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 1)
    let firstSegment = "0000000000000001.log"

    /// A data directory of kind `identity` ("coordinator.id" or "agent.name") whose log holds
    /// `records`, synced.
    func makeLog(identity: String = "coordinator.id", _ records: [(type: UInt8, payload: [UInt8])]) throws -> String {
        let dir = tempDirectory("oddlog")
        try (identity == "coordinator.id" ? "0a1b2c3d" : "a").write(toFile: dir + "/" + identity, atomically: true, encoding: .utf8)
        let (log, _) = try DurableLog.open(storage: try FileLogStorage(directory: dir + "/log"), config: DurableLogConfig(syncMode: .manual))
        for r in records { _ = try log.append(type: r.type, payload: r.payload, force: true) }
        try log.syncNow()
        log.close()
        return dir
    }

    /// One record of every kind each server logs. The switches have no default, so a new record
    /// kind does not compile until it is listed here (and so checked for a name).
    static let coordinatorRecords: [Coordinator.Record] = {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 1)
        let a = ParticipantRef(name: "a", url: "http://127.0.0.1:7001")
        let records: [Coordinator.Record] = [
            .commitDecision(t, participants: [a], decidedAtMs: 1_000), .end(t),
            .audit(t, Coordinator.AuditEntry(atMs: 2_000, operatorName: "ops", action: "force-commit", reason: "r", detail: "d")),
            .heuristic(t, participant: "a", outcome: .committed),
            .preCommit(t, participants: [a], termination: .classic, atMs: 1_000),
            .submission(t, requestID: "r0"),
            .onePhaseWindow(OnePhaseWindow(from: t, through: TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 65_537))),
            .abortLearned(t),
        ]
        for r in records {
            switch r { case .commitDecision, .end, .audit, .heuristic, .preCommit, .submission, .onePhaseWindow, .abortLearned: break }
        }
        return records
    }()
    static let tccRecords: [TCCCoordinator.Record] = {
        let t = TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 1)
        let records: [TCCCoordinator.Record] = [
            .branch(t, TCCCoordinator.BranchSpec(branchID: "b1", tryURL: "http://s/try", confirmURL: "http://s/confirm", cancelURL: "http://s/cancel", payload: nil),
                    createdAtMs: 1_000, timeoutMs: 5_000),
            .confirmDecision(t, branchIDs: ["b1"], atMs: 2_000), .end(t, .committed),
            .audit(t, Coordinator.AuditEntry(atMs: 3_000, operatorName: "ops", action: "force-commit", reason: "r", detail: "d"), outcome: .committed, resolvesPending: true),
        ]
        for r in records {
            switch r { case .branch, .confirmDecision, .end, .audit: break }
        }
        return records
    }()
    static let agentRecords: [Participant.Record] = {
        let id = "0a1b2c3d-7-1"
        let records: [Participant.Record] = [
            .prepared(id, coordinatorURL: "http://c", writeSet: [1], threePhase: nil), .preCommitted(id), .preAborted(id),
            .committed(id), .committedOnePhase(id, writeSet: [2]), .aborted(id),
            .heuristic(id, outcome: .aborted, reason: "r", operatorName: "ops", atMs: 1), .heuristicResolved(id, coordinatorOutcome: .aborted, mixed: false),
            .heuristicForgotten(id, reason: "r", operatorName: "ops", atMs: 2), .noVotePromised(id),
        ]
        for r in records {
            switch r { case .prepared, .preCommitted, .preAborted, .committed, .committedOnePhase, .aborted, .heuristic, .heuristicResolved, .heuristicForgotten, .noVotePromised: break }
        }
        return records
    }()

    /// Every record type a coordinator, its TCC part, or an agent logs has a name; an unnamed
    /// one (the submission record, `type-6`) made `log verify` fail every healthy coordinator
    /// that served a submit with a request_id.
    func testEveryRecordTypeIsNamed() {
        for (type, _) in Self.coordinatorRecords.map(CoordinatorRecordCoding.encode) + Self.tccRecords.map(TCCRecordCoding.encode) {
            XCTAssertFalse(LogTools.typeName(type).hasPrefix("type-"), "coordinator record type \(type) has no name")
        }
        for (type, _) in Self.agentRecords.map(ParticipantRecordCoding.encode) {
            XCTAssertFalse(LogTools.agentTypeName(type).hasPrefix("type-"), "agent record type \(type) has no name")
        }
        XCTAssertEqual(LogTools.typeName(CoordinatorRecordCoding.submissionType), "submission")
    }

    /// A healthy coordinator log with every kind of record, submissions included, verifies.
    func testVerifyAcceptsEveryCoordinatorRecordKind() throws {
        let dir = try makeLog(Self.coordinatorRecords.map(CoordinatorRecordCoding.encode) + Self.tccRecords.map(TCCRecordCoding.encode))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = ctl(["log", "verify", dir])
        XCTAssertEqual(v.out, "ok: 1 segment, 12 records (coordinator log)\n", v.err)
        XCTAssertEqual(v.status, 0)
        let j = jsonObject(ctl(["log", "verify", dir, "--json"]).out)
        XCTAssertEqual(j["ok"] as? Bool, true)
        let i = ctl(["log", "inspect", dir])
        let line = i.out.split(separator: "\n").first { $0.contains("submitted with request_id \"r0\"") } ?? ""
        XCTAssertTrue(line.contains(" submission ") && line.contains(" 0a1b2c3d-7-1 "), i.out)
        XCTAssertFalse(i.out.contains("type-"), i.out)

        let agent = try makeLog(identity: "agent.name", Self.agentRecords.map(ParticipantRecordCoding.encode))
        defer { try? FileManager.default.removeItem(atPath: agent) }
        XCTAssertEqual(ctl(["log", "verify", agent]).out, "ok: 1 segment, 10 records (agent log)\n")
    }

    /// Records of the wrong kind are a problem the JSON lists too (it said ok: false with no
    /// problem), with where the first one is.
    func testAnotherServersLogIsAProblemWithAPlace() throws {
        let dir = try makeLog(Self.agentRecords.map(ParticipantRecordCoding.encode))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = ctl(["log", "verify", dir])
        XCTAssertEqual(v.status, 1)
        // (Some agent records happen to decode as coordinator records: not all are counted.)
        XCTAssertTrue(v.out.hasPrefix("not a coordinator log: "), v.out)
        XCTAssertTrue(v.out.hasSuffix(" of 10 records have checksums that match but decode as no coordinator record; the first is LSN 1, in 0000000000000001.log at offset 32 (txctl log inspect shows them)\n"), v.out)
        XCTAssertEqual(v.err, "error: log verify failed: " + v.out)
        let j = jsonObject(ctl(["log", "verify", dir, "--json"]).out)
        XCTAssertEqual(j["ok"] as? Bool, false)
        let problems = (j["problems"] as? [[String: Any]]) ?? []
        XCTAssertEqual(problems.map { $0["kind"] as? String }, ["undecodable"])
        XCTAssertEqual(problems.first?["offset"] as? Int, 32)
        let i = jsonObject(ctl(["log", "inspect", dir, "--json"]).out)
        XCTAssertEqual(i["recoverable"] as? Bool, false, "the coordinator refuses to start on it")
    }

    /// No log, no "ok": a directory without segments (a 20-character name ending in .log is
    /// not one) is an error, and a data directory whose identity file says it has run but whose
    /// log folder holds no segment is a problem (its server refuses to start).
    func testVerifyNeedsALog() throws {
        let plain = tempDirectory("nolog")
        defer { try? FileManager.default.removeItem(atPath: plain) }
        try "x".write(toFile: plain + "/wt-outbox-build1.log", atomically: true, encoding: .utf8)
        let r = ctl(["log", "verify", plain])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("error: no log in \(plain): expected \(plain)/log/ or segment files"), r.err)
        XCTAssertEqual(r.out, "")

        // A log folder with no segment and no identity: nothing to check either.
        try FileManager.default.createDirectory(atPath: plain + "/log", withIntermediateDirectories: true)
        let e = ctl(["log", "verify", plain])
        XCTAssertEqual(e.status, 1)
        XCTAssertTrue(e.err.hasPrefix("error: no log in \(plain): \(plain)/log/ holds no segment file"), e.err)

        // With an identity file: the log is gone.
        try "0a1b2c3d".write(toFile: plain + "/coordinator.id", atomically: true, encoding: .utf8)
        let gone = ctl(["log", "verify", plain])
        XCTAssertEqual(gone.status, 1)
        XCTAssertEqual(gone.out, "no log: no segment in \(plain)/log, but \(plain)/coordinator.id says this coordinator has run: the outcomes its log held are gone, and it refuses to start\n")
        XCTAssertEqual(gone.err, "error: log verify failed: " + gone.out)
        let direct = ctl(["log", "verify", plain + "/log"])
        XCTAssertEqual(direct.status, 1)
        XCTAssertTrue(direct.out.hasPrefix("no log: no segment in \(plain)/log, but \(plain)/coordinator.id says"), direct.out)
        let j = jsonObject(ctl(["log", "verify", plain, "--json"]).out)
        XCTAssertEqual(j["ok"] as? Bool, false)
        XCTAssertEqual(((j["problems"] as? [[String: Any]]) ?? []).map { $0["kind"] as? String }, ["missing-segments"])
        let i = ctl(["log", "inspect", plain])
        XCTAssertEqual(i.status, 0)
        XCTAssertTrue(i.out.contains("would refuse to start"), i.out)
    }

    /// A segment file bigger than any segment can be, a FIFO, or a symlink to a device: reported
    /// by name without reading it (a sparse 2 GiB segment took 4.2 GB; /dev/zero read as an
    /// empty segment).
    func testSegmentsNoLogWritesAreReportedUnread() throws {
        let dir = try makeLog(Self.coordinatorRecords.map(CoordinatorRecordCoding.encode))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/log/" + firstSegment
        let size = Limits.segmentFileBytesMax + 1
        let file = try PosixFile(path: path, create: false)
        try file.truncate(to: size)
        file.close()
        let big = ctl(["log", "verify", dir])
        XCTAssertEqual(big.status, 1)
        XCTAssertTrue(big.out.hasPrefix("corrupt record: \(firstSegment) at offset 0: the file is \(size) bytes, more than a segment can hold"), big.out)

        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "/dev/zero")
        let zero = ctl(["log", "verify", dir])
        XCTAssertEqual(zero.status, 1)
        XCTAssertTrue(zero.out.hasPrefix("corrupt record: \(firstSegment) at offset 0: not a regular file (it is a character device): not read\n"), zero.out)

        try FileManager.default.removeItem(atPath: path)
        let mkfifo = Process()
        mkfifo.executableURL = URL(fileURLWithPath: "/usr/bin/mkfifo")
        mkfifo.arguments = [path]
        try mkfifo.run()
        mkfifo.waitUntilExit()
        let fifo = ctl(["log", "inspect", dir])
        XCTAssertEqual(fifo.status, 0)
        XCTAssertTrue(fifo.out.contains("CORRUPT at offset 0: not a regular file (it is a FIFO): not read"), fifo.out)
    }
}
