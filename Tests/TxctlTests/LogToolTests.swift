import CohortCore
@testable import CohortCtl
import CohortLog
import Foundation
import XCTest

/// `txctl log inspect|verify` on logs written by the real DurableLog.
final class LogToolTests: XCTestCase {
    let t = TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 1)

    /// A coordinator-shaped data directory with five records in one segment; returns (dir, offsets).
    func makeLog() throws -> (String, [Int]) {
        let dir = tempDirectory("log")
        let storage = try FileLogStorage(directory: dir + "/log")
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual))
        let a = ParticipantRef(name: "a", url: "http://127.0.0.1:7001")
        let b = ParticipantRef(name: "b", url: "http://127.0.0.1:7002")
        let records: [Coordinator.Record] = [
            .commitDecision(t, participants: [a, b], decidedAtMs: 1_000),
            .audit(t, Coordinator.AuditEntry(atMs: 2_000, operatorName: "ops@host", action: "force-commit", reason: "b is gone", detail: "stop waiting for b")),
            .end(t),
            .heuristic(TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 2), participant: "a", outcome: .committed),
            .end(TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: 3)),
        ]
        try write(log, records.map(CoordinatorRecordCoding.encode))
        let report = try LogTools.inspect(dir)
        return (dir, report.segments[0].records.map(\.offset))
    }

    func segmentPath(_ dir: String) -> String { dir + "/log/0000000000000001.log" }

    func testInspectDecodesEveryRecordAndAudit() throws {
        let (dir, _) = try makeLog()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = ctl(["log", "inspect", dir])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("1 segment, 5 records"), r.out)
        XCTAssertTrue(r.out.contains("commit-decision  0a1b2c3d-7-1"), r.out)
        XCTAssertTrue(r.out.contains("audit LSN 2: force-commit of 0a1b2c3d-7-1 by ops@host"), r.out)
        XCTAssertTrue(r.out.contains("reason: b is gone"), r.out)
        XCTAssertTrue(r.out.contains("participant a reported a heuristic outcome"), r.out)
        // The log directory itself works too, and JSON carries the audit entry.
        let j = ctl(["log", "inspect", dir + "/log", "--json"])
        XCTAssertEqual(j.status, 0)
        let obj = jsonObject(j.out)
        XCTAssertEqual(obj["records"] as? Int, 5)
        let recs = ((obj["segments"] as? [[String: Any]])?.first?["records"] as? [[String: Any]]) ?? []
        XCTAssertEqual(recs.map { $0["type_name"] as? String }, ["commit-decision", "audit", "end", "heuristic", "end"])
        XCTAssertEqual((recs[1]["audit"] as? [String: Any])?["reason"] as? String, "b is gone")
    }

    func testVerifyCleanLog() throws {
        let (dir, _) = try makeLog()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = ctl(["log", "verify", dir])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "ok: 1 segment, 5 records (coordinator log)\n")
        XCTAssertEqual(r.err, "")
    }

    func testVerifyFindsAFlippedByte() throws {
        let (dir, offsets) = try makeLog()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Flip one byte in the middle of the second record's payload.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: segmentPath(dir))))
        let middle = (offsets[1] + offsets[2]) / 2
        bytes[middle] ^= 0x40
        try Data(bytes).write(to: URL(fileURLWithPath: segmentPath(dir)))
        let r = ctl(["log", "verify", dir])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.out.contains("corrupt record: 0000000000000001.log at offset \(offsets[1]): record checksum mismatch"), r.out)
        XCTAssertEqual(r.err, "error: log damaged: corrupt record in 0000000000000001.log at offset \(offsets[1]): record checksum mismatch\n")
        let j = ctl(["log", "verify", dir, "--json"])
        XCTAssertEqual(j.status, 1)
        XCTAssertEqual(jsonObject(j.out)["ok"] as? Bool, false)
    }

    func testVerifyReportsATornTail() throws {
        let (dir, offsets) = try makeLog()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // What a crash leaves: the record's first bytes, zeros after them to the file's length.
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: segmentPath(dir)))
        let size = try handle.seekToEnd()
        try handle.truncate(atOffset: UInt64(offsets[4] + 10))
        try handle.truncate(atOffset: size)
        try handle.close()
        let r = ctl(["log", "verify", dir])
        XCTAssertEqual(r.status, 1, "a torn tail is damage: exit 1")
        XCTAssertTrue(r.out.contains("torn tail: 0000000000000001.log at offset \(offsets[4])"), r.out)
        XCTAssertTrue(r.err.hasPrefix("error: log damaged: torn tail in 0000000000000001.log at offset \(offsets[4])"), r.err)
        // inspect still shows the good records and says the coordinator would start.
        let i = ctl(["log", "inspect", dir])
        XCTAssertEqual(i.status, 0)
        XCTAssertTrue(i.out.contains("TORN TAIL at offset \(offsets[4])"), i.out)
        XCTAssertTrue(i.out.contains("would start"), i.out)
        // What the cut drops: a record's first bytes, the rest zeros: nothing acknowledged.
        XCTAssertTrue(i.out.contains("cut bytes: 10 (LSN 5, the next expected; end; 0 of "), i.out)
        XCTAssertTrue(i.out.contains("payload bytes written): a write cut short by a crash before its sync; nothing that waited on it was acknowledged"), i.out)
        XCTAssertFalse(i.out.contains("decoded anyway"), i.out)

        // Cut there instead, the file ends at a length no crash leaves: damage, not a torn tail.
        let cutter = try FileHandle(forUpdating: URL(fileURLWithPath: segmentPath(dir)))
        try cutter.truncate(atOffset: UInt64(offsets[4] + 10))
        try cutter.close()
        let c = ctl(["log", "verify", dir])
        XCTAssertEqual(c.status, 1)
        XCTAssertTrue(c.out.contains("0000000000000001.log at offset \(offsets[4] + 10): the file ends at byte \(offsets[4] + 10), inside the bytes after its last whole record"), c.out)
        let ci = ctl(["log", "inspect", dir])
        XCTAssertFalse(ci.out.contains("would start"), ci.out)
    }

    /// The last record whole but its checksum wrong reads as a torn tail, and recovery cuts
    /// it; but it may be a record damaged after its sync, whose outcome was acknowledged. A
    /// game-day operator could not tell which from `inspect`: it now decodes the record anyway,
    /// says which transaction to check, and does the same for the copy recovery keeps.
    func testInspectDecodesAWholeLastRecordWithABadChecksumAndItsKeptCopy() throws {
        let (dir, offsets) = try makeLog()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: segmentPath(dir))))
        bytes[offsets[4] + 5] ^= 0x01  // the last record's checksum
        try Data(bytes).write(to: URL(fileURLWithPath: segmentPath(dir)))
        let i = ctl(["log", "inspect", dir])
        XCTAssertEqual(i.status, 0, i.err)
        XCTAssertTrue(i.out.contains("TORN TAIL at offset \(offsets[4])"), i.out)
        XCTAssertTrue(i.out.contains("(LSN 5, the next expected; end; "), i.out)
        XCTAssertTrue(i.out.contains("every declared byte is there but the checksum is wrong"), i.out)
        XCTAssertTrue(i.out.contains("decoded anyway: 0a1b2c3d-7-3  ended: nothing more to deliver"), i.out)
        XCTAssertTrue(i.out.contains("Check txctl show 0a1b2c3d-7-3, and its participants"), i.out)
        let j = jsonObject(ctl(["log", "inspect", dir, "--json"]).out)
        let cut = (j["segments"] as? [[String: Any]])?.first?["cut"] as? [String: Any]
        XCTAssertEqual(cut?["verdict"] as? String, "whole-damaged")
        XCTAssertEqual(cut?["lsn"] as? Int, 5)
        XCTAssertEqual((cut?["decoded"] as? [String: Any])?["txid"] as? String, "0a1b2c3d-7-3")

        // Recovery cuts it and keeps a copy; inspect reads the copy the same way.
        let storage = try FileLogStorage(directory: dir + "/log")
        let (log, recovered) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual))
        XCTAssertEqual(recovered.records.count, 4)
        log.close()
        let after = ctl(["log", "inspect", dir])
        XCTAssertEqual(after.status, 0, after.err)
        XCTAssertFalse(after.out.contains("TORN TAIL"), after.out)
        XCTAssertTrue(after.out.contains("torn tails earlier starts cut off, kept as copies:\n  0000000000000001.log.torn-\(offsets[4])\n"), after.out)
        XCTAssertTrue(after.out.contains("decoded anyway: 0a1b2c3d-7-3  ended"), after.out)
        let kept = jsonObject(ctl(["log", "inspect", dir, "--json"]).out)["kept_torn_tails"] as? [[String: Any]]
        XCTAssertEqual(kept?.first?["file"] as? String, "0000000000000001.log.torn-\(offsets[4])")
    }

    /// An agent-shaped data directory (`agent.name` beside `log/`): a checkpoint, then branches
    /// that committed, aborted, stayed in doubt, and one an operator forced.
    func makeAgentLog() throws -> String {
        let dir = tempDirectory("agentlog")
        try "a".write(toFile: dir + "/agent.name", atomically: true, encoding: .utf8)
        let storage = try FileLogStorage(directory: dir + "/log")
        let (log, _) = try DurableLog.open(storage: storage, config: DurableLogConfig(syncMode: .manual))
        let id = { (n: UInt64) in TxID(coordinatorID: "0a1b2c3d", epoch: 7, sequence: n).description }
        let url = "http://127.0.0.1:7000"
        let records: [Participant.Record] = [
            .prepared(id(1), coordinatorURL: url, writeSet: [1, 2, 3], threePhase: nil),
            .committed(id(1)),
            .prepared(id(2), coordinatorURL: url, writeSet: [4, 5], threePhase: nil),
            .aborted(id(2)),
            .prepared(id(3), coordinatorURL: url, writeSet: [6, 7, 8, 9], threePhase: nil),
            .prepared(id(4), coordinatorURL: url, writeSet: [1], threePhase: nil),
            .heuristic(id(4), outcome: .aborted, reason: "coordinator lost", operatorName: "ops@host", atMs: 3_000),
        ]
        let snapshot = Participant(config: Participant.Config(name: "a")).snapshot()
        _ = try log.checkpoint(snapshot: snapshot)
        try write(log, records.map(ParticipantRecordCoding.encode))
        return dir
    }

    /// Appends encoded records, syncs them, and closes the log.
    func write(_ log: DurableLog, _ encoded: [(type: UInt8, payload: [UInt8])]) throws {
        for e in encoded { _ = try log.append(type: e.type, payload: e.payload, force: true) }
        try log.syncNow()
        log.close()
    }

    /// An agent's log is read as one: its records named and summarized, and the branches the
    /// agent would hold after replay listed (its own recovery code replays them).
    func testAnAgentsLogIsReadAsAnAgentsLog() throws {
        let dir = try makeAgentLog()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let v = ctl(["log", "verify", dir])
        XCTAssertEqual(v.status, 0, v.err)
        XCTAssertEqual(v.out, "ok: 1 segment, 8 records (agent log)\n")
        let i = ctl(["log", "inspect", dir])
        XCTAssertEqual(i.status, 0, i.err)
        XCTAssertTrue(i.out.contains("(agent): 1 segment, 8 records"), i.out)
        XCTAssertTrue(i.out.contains("prepared    0a1b2c3d-7-3"), i.out)
        XCTAssertTrue(i.out.contains("voted yes: 4-byte write set, coordinator http://127.0.0.1:7000"), i.out)
        XCTAssertTrue(i.out.contains("operator ops@host forced aborted"), i.out)
        XCTAssertTrue(i.out.contains("2 open branches after replay"), i.out)
        XCTAssertFalse(i.out.contains("not an agent record"), i.out)
        let j = jsonObject(ctl(["log", "inspect", dir + "/log", "--json"]).out)
        XCTAssertEqual(j["kind"] as? String, "agent")
        let open = (j["open_branches"] as? [[String: Any]]) ?? []
        XCTAssertEqual(open.map { $0["txid"] as? String }, ["0a1b2c3d-7-3", "0a1b2c3d-7-4"])
        XCTAssertEqual(open.map { $0["state"] as? String }, ["prepared", "heuristic-aborted"])
        XCTAssertEqual(open.first?["write_set_bytes"] as? Int, 4)
        let recs = ((j["segments"] as? [[String: Any]])?.first?["records"] as? [[String: Any]]) ?? []
        XCTAssertEqual(recs.map { $0["type_name"] as? String },
                       ["checkpoint", "prepared", "committed", "prepared", "aborted", "prepared", "prepared", "heuristic"])
        // The same log beside a coordinator's identity file is not a coordinator's log.
        try FileManager.default.removeItem(atPath: dir + "/agent.name")
        try "0a1b2c3d".write(toFile: dir + "/coordinator.id", atomically: true, encoding: .utf8)
        let wrong = ctl(["log", "verify", dir])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.out.hasPrefix("not a coordinator log: "), wrong.out)
        XCTAssertTrue(wrong.err.hasPrefix("error: log verify failed: not a coordinator log"), wrong.err)
        // Without any identity file, the records decide.
        try FileManager.default.removeItem(atPath: dir + "/coordinator.id")
        XCTAssertEqual(ctl(["log", "verify", dir + "/log"]).out, "ok: 1 segment, 8 records (agent log)\n")
    }

    func testMissingDirectory() {
        let r = ctl(["log", "verify", "/nonexistent/txctl"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("error: /nonexistent/txctl is not a directory"), r.err)
        // Both kinds of log are read: the hint named only a coordinator's directory.
        XCTAssertTrue(r.err.contains("a coordinator's or an agent's data directory"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/nonexistent/txctl"), "nothing is created")
        let empty = tempDirectory("empty")
        let e = ctl(["log", "inspect", empty])
        XCTAssertEqual(e.status, 1)
        XCTAssertTrue(e.err.contains("no log in"), e.err)
    }
}
