import CohortCore
import CohortLog
import Foundation

/// `txctl log inspect|verify`: a coordinator's or an agent's log read offline, never modified.
public struct LogReport: Codable, Equatable, Sendable {
    /// An agent's branch that is open once the log is replayed: what the agent would hold
    /// locks for, and ask its coordinator about, when it starts.
    public struct OpenBranch: Codable, Equatable, Sendable {
        public let txid: String
        public let state: String
        public let coordinator: String
        public let writeSetBytes: Int
        enum CodingKeys: String, CodingKey {
            case txid, state, coordinator
            case writeSetBytes = "write_set_bytes"
        }
    }
    public struct Audit: Codable, Equatable, Sendable {
        public let at: String
        public let `operator`: String
        public let action: String
        public let reason: String
        public let detail: String
        /// The branches the force took over (`resolved-by-operator`); absent for a record written
        /// before session 32, which named them only in `detail`.
        public var resolvedBranches: [String]? = nil
        enum CodingKeys: String, CodingKey {
            case at, `operator`, action, reason, detail
            case resolvedBranches = "resolved_branches"
        }
    }
    public struct Record: Codable, Equatable, Sendable {
        public let lsn: UInt64
        public let offset: Int
        public let type: Int
        public let typeName: String
        public let payloadBytes: Int
        public let txid: String?
        public let summary: String
        public let audit: Audit?
        enum CodingKeys: String, CodingKey {
            case lsn, offset, type, txid, summary, audit
            case typeName = "type_name"
            case payloadBytes = "payload_bytes"
        }
    }
    public struct Problem: Codable, Equatable, Sendable {
        /// `torn-tail`, `corruption` or `superseded` (damage, from the log's own checks);
        /// `undecodable` (records intact but not this kind of server's: the first of them) or
        /// `missing-segments` (an identity file and no segment: the log is gone).
        public let kind: String
        public let file: String
        public let offset: Int
        public let reason: String
    }
    /// The bytes a torn tail's cut drops (or dropped: a kept `.torn-OFFSET` copy), read as one
    /// record. `verdict`: `cut-short` (fewer bytes than the header declares, or a run of zeros
    /// where its last ones should be: a write a crash cut short, so nothing that waited on it
    /// was acknowledged), `whole-damaged` (every declared
    /// byte there, checksum wrong: a write torn inside, or a record damaged after it was
    /// written, which may have been acknowledged), `whole-valid` (checksum right; cut for its
    /// place, e.g. a wrong LSN) or `not-a-record` (the header's length is past every limit).
    public struct Cut: Codable, Equatable, Sendable {
        public let bytes: Int
        public let lsn: UInt64?
        public let expectedLSN: UInt64?
        public let typeName: String?
        public let declaredPayloadBytes: Int?
        public let writtenPayloadBytes: Int
        public let verdict: String
        /// The payload decoded anyway, when it is all there.
        public let decoded: Record?
        enum CodingKeys: String, CodingKey {
            case bytes, lsn, verdict, decoded
            case expectedLSN = "expected_lsn"
            case typeName = "type_name"
            case declaredPayloadBytes = "declared_payload_bytes"
            case writtenPayloadBytes = "written_payload_bytes"
        }
    }
    public struct KeptTornTail: Codable, Equatable, Sendable {
        public let file: String
        public let cut: Cut?
        public let unreadable: String?
    }
    public struct Segment: Codable, Equatable, Sendable {
        public let file: String
        public let number: UInt64
        public let sizeBytes: Int
        /// Where the records end; the rest up to `sizeBytes` is zeros written ahead (or damage).
        public let recordsEndBytes: Int
        public let firstLSN: UInt64?
        public let records: [Record]
        public let problem: Problem?
        /// A torn tail's bytes, read as a record.
        public var cut: Cut? = nil
        enum CodingKeys: String, CodingKey {
            case file, number, records, problem, cut
            case sizeBytes = "size_bytes"
            case recordsEndBytes = "records_end_bytes"
            case firstLSN = "first_lsn"
        }
    }
    public let directory: String
    /// `coordinator` or `agent` (from the data directory's identity file; a bare log directory
    /// is read as the kind its records decode as).
    public let kind: String
    public let segments: [Segment]
    public let records: Int
    public let problems: [Problem]
    /// Whether the server would start on this log (a torn tail is cut off at start).
    public let recoverable: Bool
    /// Agents only: the branches the log leaves open (in doubt, or decided by an operator and
    /// not yet reconciled), replayed by the agent's own recovery code. Nil for a coordinator,
    /// or when the log cannot be replayed (its problem is reported instead).
    public let openBranches: [OpenBranch]?
    /// Copies earlier starts kept of the torn tails they cut.
    public var keptTornTails: [KeptTornTail] = []
    enum CodingKeys: String, CodingKey {
        case directory, kind, segments, records, problems, recoverable
        case openBranches = "open_branches"
        case keptTornTails = "kept_torn_tails"
    }
}

public enum LogTools {
    /// The log directory: `DIR/log` for a data directory, or `DIR` itself.
    public static func logDirectory(_ dir: String) throws -> String {
        var isDir: ObjCBool = false
        let fm = FileManager.default
        guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw CtlError.failed("\(dir) is not a directory; give a coordinator's or an agent's data directory (or its log/ directory)")
        }
        let sub = dir.hasSuffix("/") ? dir + "log" : dir + "/log"
        if fm.fileExists(atPath: sub, isDirectory: &isDir), isDir.boolValue {
            // A log folder without segments is only a finding beside an identity file (the
            // server has run and its log is gone); otherwise there is no log here to check.
            if hasSegments(sub) || identityFile(logDirectory: sub) != nil { return sub }
            throw CtlError.failed("no log in \(dir): \(sub)/ holds no segment file (0000000000000001.log ...)")
        }
        // Segment names exactly: "ok: 0 segments" for /tmp came from a 20-character name
        // ending in .log (a build's log file).
        if hasSegments(dir) { return dir }
        if (dir as NSString).lastPathComponent == "log", identityFile(logDirectory: dir) != nil { return dir }
        throw CtlError.failed("no log in \(dir): expected \(sub)/ or segment files (0000000000000001.log ...)")
    }

    static func hasSegments(_ dir: String) -> Bool {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).contains(where: DurableLog.isSegmentFileName)
    }

    /// The identity file of the data directory holding `logDir` (its parent, or itself).
    static func identityFile(logDirectory logDir: String) -> (path: String, kind: Kind)? {
        let fm = FileManager.default
        // As given (relative stays relative): the path is shown in messages.
        let parent = (logDir as NSString).deletingLastPathComponent
        for dir in [logDir, parent.isEmpty ? "." : parent] {
            if fm.fileExists(atPath: dir + "/agent.name") { return (dir + "/agent.name", .agent) }
            if fm.fileExists(atPath: dir + "/coordinator.id") { return (dir + "/coordinator.id", .coordinator) }
        }
        return nil
    }

    public enum Kind: String, Sendable {
        case coordinator, agent
    }

    /// The kind of server whose log this is: its data directory (the log directory's parent,
    /// or the directory itself) names it with its identity file. Without one, the records
    /// decide: an agent's decode as participant records and not as a coordinator's.
    static func kind(logDirectory logDir: String, records: [(type: UInt8, payload: [UInt8])]) -> Kind {
        if let identity = identityFile(logDirectory: logDir) { return identity.kind }
        let body = records.filter { $0.type != 0 }
        guard !body.isEmpty else { return .coordinator }
        let asCoordinator = body.filter { r in
            if (TCCRecordCoding.branchType...TCCRecordCoding.auditType).contains(r.type) { return (try? TCCRecordCoding.decode(type: r.type, payload: r.payload)) != nil }
            return (try? CoordinatorRecordCoding.decode(type: r.type, payload: r.payload)) != nil
        }.count
        let asAgent = body.filter { (try? ParticipantRecordCoding.decode(type: $0.type, payload: $0.payload)) != nil }.count
        return asAgent > asCoordinator ? .agent : .coordinator
    }

    public static func inspect(_ dir: String) throws -> LogReport {
        let logDir = try logDirectory(dir)
        let storage: FileLogStorage
        do { storage = try FileLogStorage(directory: logDir, readOnly: true) } catch {
            throw CtlError.failed("cannot open \(logDir): \(error)")
        }
        let inspection = DurableLog.inspect(storage: storage)
        if let p = inspection.storageProblem { throw CtlError.failed("cannot read the log in \(logDir): \(p)") }
        // The payloads come with the inspection: reading each file again doubled the memory
        // (4.2 GB for a sparse 2 GiB segment) and read a FIFO or device a second time.
        let raw = inspection.segments.map { seg in seg.records.map { r in (lsn: r.lsn, offset: r.offset, type: r.type, payload: r.payload) } }
        let all = raw.joined()
        let kind = kind(logDirectory: logDir, records: all.map { ($0.type, $0.payload) })
        var segments: [LogReport.Segment] = []
        var undecodable: [(file: String, record: LogReport.Record)] = []
        for (seg, records) in zip(inspection.segments, raw) {
            let described = records.map { r in
                kind == .agent ? describeAgent(lsn: r.lsn, offset: r.offset, type: r.type, payload: r.payload)
                               : describe(lsn: r.lsn, offset: r.offset, type: r.type, payload: r.payload)
            }
            var segment = LogReport.Segment(file: seg.file, number: seg.number, sizeBytes: seg.sizeBytes, recordsEndBytes: seg.recordsEndBytes,
                                            firstLSN: seg.firstLSN, records: described, problem: seg.problem.map(problem))
            if let c = seg.cut {
                let offset = seg.problem?.offset ?? seg.recordsEndBytes
                segment.cut = cut(c, offset: offset, expectedLSN: seg.records.last.map { $0.lsn + 1 } ?? seg.firstLSN, kind: kind)
            }
            segments.append(segment)
            undecodable += zip(records, described).filter { !decodes($0.0.type, $0.0.payload, as: kind) }.map { (seg.file, $0.1) }
        }
        var problems = inspection.problems.map(problem)
        // Intact records the server cannot decode stop its start as surely as damage does.
        if let first = undecodable.first {
            problems.append(.init(kind: "undecodable", file: first.file, offset: first.record.offset,
                                  reason: "\(undecodable.count) of \(all.count) records have checksums that match but decode as no \(kind.rawValue) record; the first is LSN \(first.record.lsn)"))
        }
        if inspection.segments.isEmpty, let identity = identityFile(logDirectory: logDir) {
            problems.append(.init(kind: "missing-segments", file: logDir, offset: 0,
                                  reason: "no segment in \(logDir), but \(identity.path) says this \(kind.rawValue) has run: the outcomes its log held are gone, and it refuses to start"))
        }
        let recoverable = inspection.isRecoverable && undecodable.isEmpty && !problems.contains { $0.kind == "missing-segments" }
        var open: [LogReport.OpenBranch]?
        if kind == .agent, recoverable {
            open = try? openBranches(all.map { ($0.lsn, $0.type, $0.payload) })
        }
        var report = LogReport(directory: logDir, kind: kind.rawValue, segments: segments, records: all.count,
                               problems: problems, recoverable: recoverable, openBranches: open)
        report.keptTornTails = inspection.keptTornTails.map { kept in
            let offset = kept.file.split(separator: "-").last.flatMap { Int($0) } ?? 0
            return .init(file: kept.file, cut: kept.cut.map { cut($0, offset: offset, expectedLSN: nil, kind: kind) }, unreadable: kept.unreadable)
        }
        return report
    }

    /// A game-day operator met a torn tail and could not tell what the cut would lose: the
    /// bytes are read as a record and, when whole, decoded anyway.
    static func cut(_ c: LogInspection.CutRecord, offset: Int, expectedLSN: UInt64?, kind: Kind) -> LogReport.Cut {
        let verdict: String
        if c.lsn != nil && !c.lengthPlausible {
            verdict = "not-a-record"
        } else if c.isCutShort {
            verdict = "cut-short"
        } else {
            verdict = c.checksumMatches ? "whole-valid" : "whole-damaged"
        }
        let decoded = verdict == "cut-short" ? nil : c.payload.map { payload in
            kind == .agent ? describeAgent(lsn: c.lsn ?? 0, offset: offset, type: c.type ?? 0, payload: payload)
                           : describe(lsn: c.lsn ?? 0, offset: offset, type: c.type ?? 0, payload: payload)
        }
        return .init(bytes: c.bytes, lsn: c.lsn, expectedLSN: expectedLSN,
                     typeName: c.type.map { kind == .agent ? agentTypeName($0) : typeName($0) },
                     declaredPayloadBytes: c.declaredPayloadBytes, writtenPayloadBytes: c.writtenPayloadBytes,
                     verdict: verdict, decoded: decoded)
    }

    /// The lines under a torn tail (and a kept copy) that say what its bytes hold.
    static func renderCut(_ c: LogReport.Cut, kind: String, indent: String, alreadyCut: Bool = false) -> String {
        var s = indent + "cut bytes: \(c.bytes)"
        if let lsn = c.lsn, let type = c.typeName, let declared = c.declaredPayloadBytes {
            let expected = c.expectedLSN.map { $0 == lsn ? ", the next expected" : ", expected \($0)" } ?? ""
            s += " (LSN \(lsn)\(expected); \(type); \(c.writtenPayloadBytes) of \(declared) payload bytes written)"
        }
        switch c.verdict {
        case "cut-short":
            s += ": a write cut short by a crash before its sync; nothing that waited on it was acknowledged\n"
        case "not-a-record":
            s += ": the length is past every limit, so this is not a record's start (a torn header, or damage)\n"
        case "whole-valid":
            s += ": a whole record whose checksum matches, cut for where it stands\n"
        default:
            s += ": every declared byte is there but the checksum is wrong\n"
        }
        if let d = c.decoded {
            s += indent + "decoded anyway: \(d.txid.map { $0 + "  " } ?? "")\(d.summary)\n"
        }
        if c.verdict == "whole-damaged" || c.verdict == "whole-valid" {
            let check = c.decoded?.txid.map { kind == "agent" ? "txctl show \($0) at its coordinator" : "txctl show \($0), and its participants (txctl agent URL show \($0))" }
                ?? "the transactions of the records around it"
            s += indent + "! a write torn inside and a record damaged after its sync look alike; if it was synced, what it recorded was acknowledged "
                + (alreadyCut ? "and is gone from the log since a start cut it. Check \(check)\n"
                              : "and the cut loses it. Check \(check) before the \(kind) starts and cuts it\n")
        }
        return s
    }

    /// Whether a record decodes as one of `kind`'s log: what its server's recovery decodes
    /// (the checkpoint's snapshot only summarizes, and a bad one shows in its summary).
    static func decodes(_ type: UInt8, _ payload: [UInt8], as kind: Kind) -> Bool {
        if type == 0 {
            switch kind {
            case .agent:
                var machine = Participant(config: Participant.Config(name: "offline"))
                return (try? machine.recover(snapshot: payload, records: [])) != nil
            case .coordinator:
                return (try? coordinatorCheckpoint(payload)) != nil
            }
        }
        switch kind {
        case .agent: return (try? ParticipantRecordCoding.decode(type: type, payload: payload)) != nil
        case .coordinator:
            if TCCRecordCoding.typeRange.contains(type) { return (try? TCCRecordCoding.decode(type: type, payload: payload)) != nil }
            return (try? CoordinatorRecordCoding.decode(type: type, payload: payload)) != nil
        }
    }

    /// Replays an agent's log as the agent does at start: from its last checkpoint, with the
    /// records after it.
    static func openBranches(_ records: [(lsn: UInt64, type: UInt8, payload: [UInt8])]) throws -> [LogReport.OpenBranch] {
        let last = records.lastIndex { $0.type == 0 }
        let snapshot = last.map { records[$0].payload }
        let after = last.map { Array(records[(records.index(after: $0))...]) } ?? records
        var machine = Participant(config: Participant.Config(name: "offline"))
        _ = try machine.recover(snapshot: snapshot, records: after)
        return machine.branches.values.sorted { $0.txid < $1.txid }.map {
            LogReport.OpenBranch(txid: $0.txid, state: $0.state.rawValue, coordinator: $0.coordinatorURL, writeSetBytes: $0.writeSet.count)
        }
    }

    public static func agentTypeName(_ type: UInt8) -> String {
        switch type {
        case 0: return "checkpoint"
        case ParticipantRecordCoding.preparedType: return "prepared"
        case ParticipantRecordCoding.committedType: return "committed"
        case ParticipantRecordCoding.committedOnePhaseType: return "committed-one-phase"
        case ParticipantRecordCoding.abortedType: return "aborted"
        case ParticipantRecordCoding.heuristicType: return "heuristic"
        case ParticipantRecordCoding.heuristicResolvedType: return "heuristic-resolved"
        case ParticipantRecordCoding.heuristicForgottenType: return "heuristic-forgotten"
        case ParticipantRecordCoding.noVotePromisedType: return "no-vote-promised"
        case ParticipantRecordCoding.preCommittedType: return "pre-committed"
        case ParticipantRecordCoding.preAbortedType: return "pre-aborted"
        default: return "type-\(type)"
        }
    }

    /// A report row; `typeName` nil when the record does not decode as its log's kind.
    private static func record(_ lsn: UInt64, _ offset: Int, _ type: UInt8, _ payload: [UInt8], typeName: String?,
                               _ txid: String?, _ summary: String, _ audit: LogReport.Audit?) -> LogReport.Record {
        .init(lsn: lsn, offset: offset, type: Int(type), typeName: typeName ?? "type-\(type)", payloadBytes: payload.count,
              txid: txid, summary: summary, audit: audit)
    }

    /// One record of an agent's (participant's) log.
    public static func describeAgent(lsn: UInt64, offset: Int, type: UInt8, payload: [UInt8]) -> LogReport.Record {
        func rec(_ txid: String?, _ summary: String, _ audit: LogReport.Audit? = nil, known: Bool = true) -> LogReport.Record {
            record(lsn, offset, type, payload, typeName: known ? agentTypeName(type) : nil, txid, summary, audit)
        }
        if type == 0 {
            do {
                var machine = Participant(config: Participant.Config(name: "offline"))
                _ = try machine.recover(snapshot: payload, records: [])
                let n = machine.branches.count
                return rec(nil, "checkpoint: \(n) open branch\(n == 1 ? "" : "es"), \(machine.finishedOutcomes.count) recent finished")
            } catch {
                return rec(nil, "checkpoint (\(payload.count) bytes, not an agent snapshot: \(error))")
            }
        }
        do {
            switch try ParticipantRecordCoding.decode(type: type, payload: payload) {
            case .prepared(let txid, let url, let writeSet, let threePhase):
                let peers = threePhase.map { "; 3PC, \($0.termination.rawValue) termination, peers \($0.peers.map(\.name).joined(separator: ", "))" } ?? ""
                return rec(txid, "voted yes: \(writeSet.count)-byte write set, coordinator \(url)\(peers)")
            case .preCommitted(let txid): return rec(txid, "3PC pre-committed")
            case .preAborted(let txid): return rec(txid, "3PC pre-aborted")
            case .committed(let txid): return rec(txid, "committed")
            case .committedOnePhase(let txid, let writeSet): return rec(txid, "committed in one phase (\(writeSet.count)-byte write set)")
            case .aborted(let txid): return rec(txid, "aborted")
            case .noVotePromised(let txid): return rec(txid, "3PC: no branch here; promised never to vote yes (a backup's pre-abort or pre-commit)")
            case .heuristic(let txid, let outcome, let reason, let operatorName, let atMs, _, _):
                let a = LogReport.Audit(at: TimeFormat.iso8601(ms: atMs), operator: operatorName, action: "force-\(outcome == .committed ? "commit" : "abort")",
                                        reason: reason, detail: "branch \(outcome.rawValue) by the operator before the coordinator's outcome was known")
                return rec(txid, "operator \(operatorName) forced \(outcome.rawValue) at \(a.at): \(reason)", a)
            case .heuristicResolved(let txid, let coordinatorOutcome, let mixed):
                return rec(txid, "coordinator's outcome learned: \(coordinatorOutcome.rawValue)\(mixed ? " (heuristic-mixed: the operator chose otherwise)" : " (the operator's choice agreed)")")
            case .heuristicForgotten(let txid, let reason, let operatorName, let atMs):
                let a = LogReport.Audit(at: TimeFormat.iso8601(ms: atMs), operator: operatorName, action: "forget", reason: reason,
                                        detail: "heuristic branch retired without the coordinator's outcome; it stops asking")
                return rec(txid, "operator \(operatorName) forgot the heuristic branch at \(a.at): \(reason)", a)
            }
        } catch {
            return rec(nil, "not an agent record (\(error)); is this an agent's log?", known: false)
        }
    }

    static func problem(_ p: LogInspection.Problem) -> LogReport.Problem {
        .init(kind: p.kind == .tornTail ? "torn-tail" : p.kind == .corruption ? "corruption" : "superseded", file: p.file, offset: p.offset, reason: p.reason)
    }

    public static func typeName(_ type: UInt8) -> String {
        switch type {
        case 0: return "checkpoint"
        case CoordinatorRecordCoding.commitDecisionType: return "commit-decision"
        case CoordinatorRecordCoding.endType: return "end"
        case CoordinatorRecordCoding.auditType: return "audit"
        case CoordinatorRecordCoding.heuristicType: return "heuristic"
        case CoordinatorRecordCoding.preCommitType: return "pre-commit"
        case CoordinatorRecordCoding.submissionType: return "submission"
        case CoordinatorRecordCoding.onePhaseWindowType: return "one-phase-window"
        case CoordinatorRecordCoding.abortLearnedType: return "abort-learned"
        case TCCRecordCoding.branchType: return "tcc-branch"
        case TCCRecordCoding.confirmDecisionType: return "tcc-confirm-decision"
        case TCCRecordCoding.endType: return "tcc-end"
        case TCCRecordCoding.auditType: return "tcc-audit"
        default: return "type-\(type)"
        }
    }

    public static func describe(lsn: UInt64, offset: Int, type: UInt8, payload: [UInt8]) -> LogReport.Record {
        func rec(_ txid: String?, _ summary: String, _ audit: LogReport.Audit? = nil, known: Bool = true) -> LogReport.Record {
            record(lsn, offset, type, payload, typeName: known ? typeName(type) : nil, txid, summary, audit)
        }
        if type == 0 { return rec(nil, checkpointSummary(payload)) }
        if (TCCRecordCoding.branchType...TCCRecordCoding.auditType).contains(type) {
            do {
                switch try TCCRecordCoding.decode(type: type, payload: payload) {
                case .branch(let txid, let spec, _, _):
                    return rec(txid.description, "TCC branch \(spec.branchID) registered (try \(spec.tryURL))")
                case .confirmDecision(let txid, let branches, let at):
                    return rec(txid.description, "TCC confirm decided at \(TimeFormat.iso8601(ms: at)) for \(branches.joined(separator: ", "))")
                case .end(let txid, let outcome):
                    // The record says only that no branch still waits: an operator's force ends a
                    // transaction whose confirm never ran too (its audit record comes first).
                    let word = outcome == .committed ? "confirmed" : "cancelled"
                    return rec(txid.description, "TCC ended \(word): no branch still waits (each \(word), or an operator's audit record above took it over)")
                case .audit(let txid, let e, _, let resolvesPending):
                    let a = LogReport.Audit(at: TimeFormat.iso8601(ms: e.atMs), operator: e.operatorName, action: e.action, reason: e.reason, detail: e.detail,
                                            resolvedBranches: e.resolvedBranches)
                    return rec(txid.description, "TCC \(e.action) by \(e.operatorName) at \(a.at)\(resolvesPending ? " (ends the wait for pending branches)" : ""): \(e.reason)", a)
                }
            } catch {
                return rec(nil, "not a TCC record (\(error))", known: false)
            }
        }
        do {
            switch try CoordinatorRecordCoding.decode(type: type, payload: payload) {
            case .commitDecision(let txid, let participants, let at):
                let names = participants.map { "\($0.name) (\($0.url))" }.joined(separator: ", ")
                return rec(txid.description, "commit decided at \(TimeFormat.iso8601(ms: at)); tell \(names.isEmpty ? "no one" : names)")
            case .end(let txid):
                return rec(txid.description, "ended: nothing more to deliver (every branch acknowledged or resolved)")
            case .audit(let txid, let e):
                let a = LogReport.Audit(at: TimeFormat.iso8601(ms: e.atMs), operator: e.operatorName, action: e.action, reason: e.reason, detail: e.detail,
                                        resolvedBranches: e.resolvedBranches)
                return rec(txid.description, "\(e.action) by \(e.operatorName) at \(a.at): \(e.reason)", a)
            case .heuristic(let txid, let participant, let outcome, let forcedBy):
                guard let f = forcedBy else {
                    return rec(txid.description, "participant \(participant) reported a heuristic outcome: operator forced \(outcome.rawValue)")
                }
                return rec(txid.description, "participant \(participant) reported a heuristic outcome: \(f.describe(outcome, participant: participant))")
            case .preCommit(let txid, let participants, let termination, let at):
                let names = participants.map(\.name).joined(separator: ", ")
                return rec(txid.description, "3PC pre-commit (\(termination.rawValue) termination) at \(TimeFormat.iso8601(ms: at)); participants \(names)")
            case .submission(let txid, let requestID):
                return rec(txid.description, "submitted with request_id \"\(requestID)\" (a repeat gets this transaction's outcome)")
            case .onePhaseWindow(let window):
                return rec(nil, "one-phase commits may go out for txids \(window.from) through \(window.through) (after a restart an unknown one there reads 410)")
            case .abortLearned(let txid):
                return rec(txid.description, "3PC aborted by the participants' termination protocol (learned after the pre-commit; the client is told once this is durable)")
            }
        } catch {
            return rec(nil, "not a coordinator record (\(error)); is this a coordinator's log?", known: false)
        }
    }

    /// The coordinator snapshot: version, epoch, decided-but-unacknowledged transactions,
    /// operator outcomes and heuristic reports.
    /// Summarizes a checkpoint by recovering from it with the coordinators' own code, so this
    /// tool cannot drift from the format the servers write.
    static func checkpointSummary(_ payload: [UInt8]) -> String {
        do {
            let (coordinator, tcc) = try coordinatorCheckpoint(payload)
            let unfinished = coordinator.allTransactions().filter { !$0.state.isFinished }
            var s = "checkpoint (epoch \(String(coordinator.epoch - 1, radix: 16))): \(unfinished.count) unfinished 2PC/3PC transaction\(unfinished.count == 1 ? "" : "s")"
            if !unfinished.isEmpty {
                s += " (" + unfinished.prefix(5).map { "\($0.txid) \($0.state.rawValue)" }.joined(separator: ", ") + (unfinished.count > 5 ? ", ..." : "") + ")"
            }
            s += ", \(coordinator.finished.count) recent finished, \(coordinator.operatorOutcomes.count) operator outcome\(coordinator.operatorOutcomes.count == 1 ? "" : "s")"
            // Who forced them, when and why (checkpoints written before session 32 keep none).
            let audited = coordinator.operatorAudits.count
            if audited > 0 { s += " (\(audited) with the operator's audit)" }
            let windows = coordinator.onePhaseWindows.windows
            if !windows.isEmpty {
                s += ", \(windows.count) one-phase window\(windows.count == 1 ? "" : "s") (the newest \(windows.last!.from) through \(windows.last!.through))"
            }
            let kept = coordinator.committedSubmissions.count
            if kept > 0 {
                s += ", \(kept) committed submission\(kept == 1 ? "" : "s") remembered past \(kept == 1 ? "its transaction" : "their transactions")"
            }
            let outcomes = coordinator.outcomeLedger.count
            if outcomes > 0 {
                s += ", \(outcomes) outcome\(outcomes == 1 ? "" : "s") of forgotten transactions in the ledger"
            }
            if let tcc {
                s += "; TCC: \(tcc.open.count) open, \(tcc.finished.count) recent finished"
                let audited = tcc.allTransactions().reduce(0) { $0 + ($1.audit.isEmpty ? 0 : 1) }
                if audited > 0 { s += " (\(audited) with an operator's audit)" }
            }
            return s
        } catch {
            return "checkpoint (\(payload.count) bytes, not a coordinator snapshot: \(error))"
        }
    }

    /// A coordinator's checkpoint recovered as the coordinator does (its TCC part, when present).
    static func coordinatorCheckpoint(_ payload: [UInt8]) throws -> (Coordinator, TCCCoordinator?) {
        let parts = try CoordinatorSnapshotContainer.unpack(payload)
        var config = Coordinator.Config(coordinatorID: "00000000", epoch: 0)
        // Keep all a checkpoint holds, whatever the flags of the coordinator that wrote it.
        config.finishedTransactionsKept = Limits.finishedTransactionsKeptMax
        config.committedSubmissionsKept = Limits.committedSubmissionsKeptMax
        config.forgottenOutcomesKept = Limits.forgottenOutcomesKeptMax
        var coordinator = Coordinator(config: config)
        _ = try coordinator.recover(snapshot: parts.coordinator, records: [], nowMs: 0)
        guard let tccBytes = parts.tcc else { return (coordinator, nil) }
        var tcc = TCCCoordinator()
        _ = try tcc.recover(snapshot: tccBytes, records: [], nowMs: 0)
        return (coordinator, tcc)
    }

    public static func renderInspect(_ r: LogReport) -> String {
        var s = "log \(r.directory) (\(r.kind)): \(r.segments.count) segment\(r.segments.count == 1 ? "" : "s"), \(r.records) record\(r.records == 1 ? "" : "s")\n"
        for seg in r.segments {
            let ahead = seg.problem == nil && seg.sizeBytes > seg.recordsEndBytes
                ? " (records end at \(seg.recordsEndBytes), zeros written ahead after)" : ""
            s += "\nsegment \(seg.file): \(seg.sizeBytes) bytes\(ahead), first LSN \(seg.firstLSN.map(String.init) ?? "?")\n"
            var t = Table(["LSN", "OFFSET", "TYPE", "TXID", "SUMMARY"])
            for rec in seg.records {
                t.add([String(rec.lsn), String(rec.offset), rec.typeName, rec.txid ?? "-", rec.summary])
            }
            if !seg.records.isEmpty { s += t.render(indent: "  ") }
            for rec in seg.records {
                guard let a = rec.audit else { continue }
                s += "  audit LSN \(rec.lsn): \(a.action) of \(rec.txid ?? "?") by \(a.operator) at \(a.at)\n"
                s += "    reason: \(a.reason)\n    did:    \(a.detail)\n"
                if let resolved = a.resolvedBranches, !resolved.isEmpty { s += "    resolved by operator: \(resolved.joined(separator: ", "))\n" }
            }
            if let p = seg.problem {
                s += "  \(p.kind == "torn-tail" ? "TORN TAIL" : "CORRUPT") at offset \(p.offset): \(p.reason)\n"
            }
            if let c = seg.cut { s += renderCut(c, kind: r.kind, indent: "    ") }
        }
        if !r.keptTornTails.isEmpty {
            s += "\ntorn tails earlier starts cut off, kept as copies:\n"
            for kept in r.keptTornTails {
                s += "  \(kept.file)\n"
                if let c = kept.cut { s += renderCut(c, kind: r.kind, indent: "    ", alreadyCut: true) }
                if let why = kept.unreadable { s += "    not read: \(why)\n" }
            }
        }
        if let open = r.openBranches {
            if open.isEmpty {
                s += "\nno open branches: nothing in doubt after replay\n"
            } else {
                s += "\n\(open.count) open branch\(open.count == 1 ? "" : "es") after replay (at start the agent takes their locks again and asks the coordinator for each outcome):\n"
                var t = Table(["TXID", "STATE", "WRITE SET", "COORDINATOR"])
                for b in open { t.add([b.txid, b.state, "\(b.writeSetBytes) bytes", b.coordinator]) }
                s += t.render(indent: "  ")
            }
        }
        if r.problems.isEmpty {
            s += "\nno problems\n"
        } else {
            s += "\n\(r.problems.count) problem\(r.problems.count == 1 ? "" : "s"); the \(r.kind) \(r.recoverable ? "would start (cutting off the torn tail)" : "would refuse to start") on this log\n"
        }
        return s
    }

    /// `ok: N segments, M records`, or false and the problems.
    public static func verifyLine(_ r: LogReport) -> (ok: Bool, text: String) {
        if r.problems.isEmpty {
            return (true, "ok: \(r.segments.count) segment\(r.segments.count == 1 ? "" : "s"), \(r.records) record\(r.records == 1 ? "" : "s") (\(r.kind) log)\n")
        }
        var s = ""
        var damage = 0
        for p in r.problems {
            switch p.kind {
            case "undecodable":
                s += "not a \(r.kind) log: \(p.reason), in \(p.file) at offset \(p.offset) (txctl log inspect shows them)\n"
            case "missing-segments":
                s += "no log: \(p.reason)\n"
            case "torn-tail":
                damage += 1
                let cut = r.segments.first { $0.file == p.file }?.cut
                let what = cut == nil || cut?.verdict == "cut-short" ? "a write cut short"
                    : "a whole record with a wrong checksum: a write torn inside, or damage after its sync; txctl log inspect decodes it"
                s += "torn tail: \(p.file) at offset \(p.offset): \(p.reason) (\(what); the \(r.kind) cuts it off at start)\n"
            default:
                damage += 1
                s += "corrupt record: \(p.file) at offset \(p.offset): \(p.reason)\n"
            }
        }
        if damage > 0 {
            s += "damaged: \(r.segments.count) segment\(r.segments.count == 1 ? "" : "s"), \(r.records) good record\(r.records == 1 ? "" : "s"), \(damage) problem\(damage == 1 ? "" : "s")\n"
        }
        return (false, s)
    }

    /// The error line of a failed `log verify`: its first problem.
    public static func verifyError(_ r: LogReport, text: String) -> String {
        guard let first = r.problems.first else { return "log verify failed: \(text.trimmingCharacters(in: .newlines))" }
        switch first.kind {
        case "undecodable", "missing-segments": return "log verify failed: \(text.split(separator: "\n").first.map(String.init) ?? "")"
        case "torn-tail": return "log damaged: torn tail in \(first.file) at offset \(first.offset): \(first.reason)"
        default: return "log damaged: corrupt record in \(first.file) at offset \(first.offset): \(first.reason)"
        }
    }
}
