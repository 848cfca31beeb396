import CohortClient
import CohortCore
import Foundation
import XCTest

/// docs/examples/participant_3pc.py — a three-phase-commit participant written in Python from
/// docs/protocol.md and docs/protocols.md alone — against the real cohortd and a Swift
/// cohort-agent ("a"): 3PC transfers commit or abort on both sides; the Python participant,
/// killed with SIGKILL after its prepared or its pre-committed record, comes back in that state
/// and ends as the transaction did; with the coordinator dead (before or after its decision) or
/// hung (it accepts connections and never answers), the two participants finish the transaction
/// between themselves by the termination protocol; repeated, late and malformed messages get
/// the documented answers.
///
/// Which branch is the backup coordinator depends on names (the lowest answers first): the
/// Python participant is "py" (the agent "a" is the backup) or "0py" (the Python one is).
final class PythonParticipant3PCTests: XCTestCase {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let script = repoRoot.appendingPathComponent("docs/examples/participant_3pc.py").path
    static let example = "the Python 3PC participant (docs/examples/participant_3pc.py)"

    /// Starts the Python participant `name` for `cluster` on `port` (0: any; a restart passes the
    /// old one, since the coordinator and the peers call the URL it registered).
    @discardableResult
    func startPython(_ cluster: Cluster, name: String, port: Int = 0, environment: [String: String] = [:], attempt: Int = 1) throws -> ManagedProcess {
        try startPythonScript(Self.script, example: Self.example, name: name,
                              arguments: ["--name", name, "--data", cluster.dataDirectory(of: name), "--coordinator", cluster.coordinatorURL],
                              port: port, environment: environment, logDirectory: cluster.logDirectory, attempt: attempt)
    }

    /// A coordinator, agent "a" and the Python participant `name`; alice (at a) and bob (at the
    /// Python participant) start at 100, set by one classic 3PC transaction.
    func seededPair(pyName: String = "py") throws -> (cluster: Cluster, api: CohortAPI, agent: String, python: ManagedProcess) {
        _ = try python3(toRun: Self.example)
        let cluster = try startCluster(agents: 1)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let python = try startPython(cluster, name: pyName)
        let t = try api.begin(protocol: "3pc")
        _ = try api.agentWork(cluster.agentURLs[0], t, [.add("alice", 100)])
        _ = try api.agentWork(python.url!, t, [.add("bob", 100)])
        XCTAssertEqual(try api.commit(t).outcome, "committed")
        try assertBalances(api, agent: cluster.agentURLs[0], py: python.url!, alice: 100, bob: 100)
        return (cluster, api, cluster.agentURLs[0], python)
    }

    // MARK: helpers

    func intValue(_ api: CohortAPI, _ url: String, _ key: String) throws -> Int64? { try api.kv(url, key)?.intValue }

    /// Waits for alice and bob to hold these values (commits reach the branches after the
    /// client's answer), then asserts them.
    func assertBalances(_ api: CohortAPI, agent: String, py: String, alice: Int64, bob: Int64, _ context: String = "",
                        file: StaticString = #filePath, line: UInt = #line) throws {
        _ = try eventually(timeoutMs: 15_000) { try intValue(api, agent, "alice") == alice && intValue(api, py, "bob") == bob }
        XCTAssertEqual(try intValue(api, agent, "alice"), alice, "alice \(context)", file: file, line: line)
        XCTAssertEqual(try intValue(api, py, "bob"), bob, "bob \(context)", file: file, line: line)
    }

    /// POST a JSON body; the status and the parsed object answer (empty when not an object).
    func post(_ api: CohortAPI, _ url: String, _ json: String) throws -> (status: Int, body: [String: Any]) {
        let r = try api.raw("POST", url, body: Array(json.utf8))
        return (r.status, (try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]) ?? [:])
    }

    func get(_ api: CohortAPI, _ url: String) throws -> (status: Int, body: [String: Any]) {
        let r = try api.raw("GET", url)
        return (r.status, (try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]) ?? [:])
    }

    /// A branch's state at the Python participant or the agent (`GET /v1/branches/{txid}`), nil for 404.
    func branchState(_ api: CohortAPI, _ url: String, _ txid: String) throws -> String? {
        let r = try get(api, url + "/v1/branches/\(txid)")
        return r.status == 404 ? nil : r.body["state"] as? String
    }

    /// The record types the Python participant logged for `txid`, in order (its log.jsonl).
    func loggedRecords(_ cluster: Cluster, _ pyName: String, _ txid: String) throws -> [String] {
        try loggedObjects(cluster, pyName, txid).compactMap { $0["t"] as? String }
    }

    func loggedObjects(_ cluster: Cluster, _ pyName: String, _ txid: String) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: cluster.dataDirectory(of: pyName) + "/log.jsonl", encoding: .utf8)
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }.filter { $0["txid"] as? String == txid }
    }

    /// Begin a 3PC transaction moving `amount` from one (url, key) to another, `min: 0` on the debit.
    func stage(_ api: CohortAPI, _ amount: Int64, from: (String, String), to: (String, String), termination: String = "classic") throws -> String {
        let t = try api.begin(protocol: "3pc", termination: termination)
        _ = try api.agentWork(from.0, t, [.add(from.1, -amount, min: 0)])
        _ = try api.agentWork(to.0, t, [.add(to.1, amount)])
        return t
    }

    /// Runs `body` on a thread of its own; `wait()` gives its result.
    final class Background<T>: @unchecked Sendable {
        private var result: T?
        private let done = DispatchSemaphore(value: 0)
        init(_ body: @escaping () -> T) {
            Thread { self.result = body(); self.done.signal() }.start()
        }
        func wait() -> T { done.wait(); done.signal(); return result! }
    }

    /// Restarts the coordinator with a crash point armed (the seed committed without it).
    func armCoordinator(_ cluster: Cluster, _ point: String) throws {
        cluster.terminate(Cluster.coordinatorName)
        try cluster.startProcess(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": point])
    }

    // MARK: 1. commits and aborts

    func testThreePhaseTransfersCommitAndAbortOnBothSides() throws {
        let (cluster, api, agent, python) = try seededPair()
        let py = python.url!

        // Classic: committed, both sides applied, and the Python side forced its three records.
        let t1 = try stage(api, 30, from: (agent, "alice"), to: (py, "bob"))
        XCTAssertEqual(try api.commit(t1).outcome, "committed")
        try assertBalances(api, agent: agent, py: py, alice: 70, bob: 130)
        XCTAssertEqual(try loggedRecords(cluster, "py", t1), ["prepared", "pre-committed", "committed"])
        let prepared = try loggedObjects(cluster, "py", t1).first ?? [:]
        XCTAssertEqual(prepared["protocol"] as? String, "3pc")
        XCTAssertEqual(prepared["termination"] as? String, "classic")
        XCTAssertEqual(Set(((prepared["participants"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }), ["a", "py"],
                       "the prepared record keeps every peer, for the termination protocol")
        let view = try XCTUnwrap(try api.transaction(t1))
        XCTAssertTrue(view.events.contains { $0.event == "pre-commit-acknowledged" && $0.participant == "py" },
                      "the coordinator counted the Python participant's pre-commit acknowledgement: \(view.events.map(\.event))")

        // Quorum termination, the other way: the same three records.
        let t2 = try stage(api, 50, from: (py, "bob"), to: (agent, "alice"), termination: "quorum")
        XCTAssertEqual(try api.commit(t2).outcome, "committed")
        try assertBalances(api, agent: agent, py: py, alice: 120, bob: 80)
        XCTAssertEqual(try loggedRecords(cluster, "py", t2), ["prepared", "pre-committed", "committed"])
        XCTAssertEqual(try loggedObjects(cluster, "py", t2).first?["termination"] as? String, "quorum")

        // The Python participant votes no (bob would go below 0): aborted with its reason, and it
        // forced nothing for that branch.
        let t3 = try stage(api, 1_000, from: (py, "bob"), to: (agent, "alice"))
        let noVote = try api.commit(t3)
        XCTAssertEqual(noVote.outcome, "aborted")
        XCTAssertTrue(noVote.reason?.contains("py voted no") == true && noVote.reason?.contains("below min 0") == true, noVote.reason ?? "no reason")
        XCTAssertEqual(try loggedRecords(cluster, "py", t3), [], "a no vote forces nothing")
        XCTAssertEqual(try branchState(api, py, t3), "aborted")

        // The agent votes no: the Python participant, uncertain, hears the abort and drops its credit.
        let t4 = try stage(api, 1_000, from: (agent, "alice"), to: (py, "bob"))
        XCTAssertEqual(try api.commit(t4).outcome, "aborted")
        XCTAssertTrue(try eventually { try branchState(api, py, t4) == "aborted" }, "the Python branch of \(t4) did not abort")
        XCTAssertFalse(try loggedRecords(cluster, "py", t4).contains("committed"))
        try assertBalances(api, agent: agent, py: py, alice: 120, bob: 80, "after two aborted transfers")

        // Their locks are gone: the next transfer commits.
        let t5 = try stage(api, 80, from: (py, "bob"), to: (agent, "alice"))
        XCTAssertEqual(try api.commit(t5).outcome, "committed")
        try assertBalances(api, agent: agent, py: py, alice: 200, bob: 0)
    }

    // MARK: 2. the Python participant killed after its prepared record

    func testPythonKilledAfterPrepareComesBackUncertainAndAborts() throws {
        let (cluster, api, agent, first) = try seededPair()
        let py = first.url!, port = first.port!
        XCTAssertEqual(first.terminate(), 0, "the Python participant stops cleanly on SIGTERM")
        let armed = try startPython(cluster, name: "py", port: port, environment: ["COHORT_CRASHPOINT": "participant.after-prepared-logged"], attempt: 2)

        let t = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"))
        let outcome = try api.commit(t)
        XCTAssertEqual(outcome.outcome, "aborted", "a prepare that gets no answer is a no vote")
        XCTAssertNotNil(armed.waitForExit(timeoutMs: 10_000))
        XCTAssertTrue(armed.wasSignalled, "killed by SIGKILL at its crash point")
        XCTAssertEqual(armed.exitStatus, 137)
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared"])

        // Back while nobody can answer it: it must be uncertain again, marked recovered, with its lock.
        cluster.coordinator.pause()
        cluster.process("a")!.pause()
        defer { cluster.coordinator.resume(); cluster.process("a")!.resume() }
        try startPython(cluster, name: "py", port: port, attempt: 3)
        let view = try get(api, py + "/v1/branches/\(t)")
        XCTAssertEqual(view.body["state"] as? String, "uncertain", "the prepared record was not replayed: \(view.body)")
        XCTAssertEqual(view.body["recovered"] as? Bool, true)
        let conflict = try post(api, py + "/v1/work", #"{"txid":"other","ops":[{"op":"add","key":"bob","delta":1}]}"#)
        XCTAssertEqual(conflict.status, 409, "a recovered uncertain branch holds its locks")
        Thread.sleep(forTimeInterval: 2.5)   // past a termination round with nobody answering: no decision
        XCTAssertEqual(try branchState(api, py, t), "uncertain", "decided with no peer and no coordinator answering")
        // The agent answers again (it aborted when the coordinator did); the coordinator does
        // not: the recovered branch adopts the abort its peer reports.
        cluster.process("a")!.resume()
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try branchState(api, py, t) == "aborted" },
                      "the recovered branch should adopt its peer's abort: \((try? branchState(api, py, t)) ?? nil ?? "gone")")
        cluster.coordinator.resume()
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared", "aborted"])
        try assertBalances(api, agent: agent, py: py, alice: 100, bob: 100, "after the aborted transfer")
    }

    // MARK: 3. the Python participant killed after its pre-committed record

    func testPythonKilledAfterPreCommitComesBackPreCommittedAndCommits() throws {
        let (cluster, api, agent, first) = try seededPair()
        let py = first.url!, port = first.port!
        XCTAssertEqual(first.terminate(), 0)
        let armed = try startPython(cluster, name: "py", port: port, environment: ["COHORT_CRASHPOINT": "participant.after-precommit-logged"], attempt: 2)

        let t = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"))
        let committing = Background { try? api.commit(t) }
        XCTAssertNotNil(armed.waitForExit(timeoutMs: 10_000))
        XCTAssertTrue(armed.wasSignalled)
        // Freeze the coordinator before its pre-commit timeout (2 s): the agent and the restarted
        // Python participant must settle the transaction between themselves.
        cluster.coordinator.pause()
        defer { cluster.coordinator.resume() }
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared", "pre-committed"])

        try startPython(cluster, name: "py", port: port, attempt: 3)
        let view = try get(api, py + "/v1/branches/\(t)")
        let state = view.body["state"] as? String
        // (Committed already, if the agent's termination round won the race to it.)
        XCTAssertTrue(state == "pre-committed" || state == "committed", "the pre-committed record was not replayed: \(view.body)")
        if state == "pre-committed" {
            XCTAssertEqual(view.body["recovered"] as? Bool, true)
            let asked = try post(api, py + "/v1/3pc/state", #"{"txid":"\#(t)"}"#)
            XCTAssertEqual(asked.body["state"] as? String, "pre-committed", "\(asked.body)")
            XCTAssertEqual(asked.body["recovered"] as? Bool, true)
            XCTAssertEqual(try post(api, py + "/v1/work", #"{"txid":"other","ops":[{"op":"add","key":"bob","delta":1}]}"#).status, 409,
                           "a recovered pre-committed branch holds its locks")
        }
        // The agent ("a", the backup; it never crashed, so it does not count the recovered branch's
        // pre-state, but it is pre-committed itself) commits both, with the coordinator frozen.
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try branchState(api, py, t) == "committed" && branchState(api, agent, t) == "committed" },
                      "py \((try? branchState(api, py, t)) ?? nil ?? "gone"), a \((try? branchState(api, agent, t)) ?? nil ?? "gone")")
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110)
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared", "pre-committed", "committed"])

        cluster.coordinator.resume()
        XCTAssertEqual(committing.wait()?.outcome, "committed", "the coordinator's answer agrees with the participants")
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try api.transaction(t)?.state == "committed" })
    }

    // MARK: 4. the coordinator killed before its decision

    /// It dies with its pre-commit record durable and no pre-commit sent: both participants are
    /// uncertain, and the Python one ("0py", the backup) aborts both without it.
    func testCoordinatorKilledBeforeItsDecisionThePythonBackupAbortsBoth() throws {
        let (cluster, api, agent, python) = try seededPair(pyName: "0py")
        let py = python.url!
        try armCoordinator(cluster, "coordinator.after-precommit-logged")
        let t = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"))
        _ = try? api.commit(t)
        XCTAssertEqual(cluster.coordinator.waitForExit(timeoutMs: 10_000), 137)

        // A state query joins the termination round: the old coordinator's pre-commit is refused after it.
        let asked = try post(api, py + "/v1/3pc/state", #"{"txid":"\#(t)"}"#)
        XCTAssertEqual(asked.body["state"] as? String, "uncertain", "\(asked.body)")
        XCTAssertNil(asked.body["recovered"])
        let late = try post(api, py + "/v1/3pc/precommit", #"{"txid":"\#(t)"}"#)
        XCTAssertEqual(late.status, 409, "a branch that answered a termination round takes pre-commits only from a backup: \(late.body)")

        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try branchState(api, py, t) == "aborted" && branchState(api, agent, t) == "aborted" },
                      "py \((try? branchState(api, py, t)) ?? nil ?? "gone"), a \((try? branchState(api, agent, t)) ?? nil ?? "gone")")
        XCTAssertEqual(try loggedRecords(cluster, "0py", t), ["prepared", "aborted"])
        try assertBalances(api, agent: agent, py: py, alice: 100, bob: 100, "after the terminated transfer")

        // The coordinator comes back with a pre-commit record and no decision: it learns the abort.
        try cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try api.transaction(t)?.outcome == "aborted" },
                      "coordinator: \(String(describing: try? api.transaction(t)?.state))")
    }

    /// The same under quorum termination (N = 2, Q = 2): the Python backup may abort only once
    /// two branches are pre-aborted, so it pre-aborts the agent and itself (forced records) first.
    func testCoordinatorKilledBeforeItsDecisionTheQuorumBackupPreAbortsThenAborts() throws {
        let (cluster, api, agent, python) = try seededPair(pyName: "0py")
        let py = python.url!
        try armCoordinator(cluster, "coordinator.after-precommit-logged")
        let t = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"), termination: "quorum")
        _ = try? api.commit(t)
        XCTAssertEqual(cluster.coordinator.waitForExit(timeoutMs: 10_000), 137)

        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try branchState(api, py, t) == "aborted" && branchState(api, agent, t) == "aborted" },
                      "py \((try? branchState(api, py, t)) ?? nil ?? "gone"), a \((try? branchState(api, agent, t)) ?? nil ?? "gone")")
        XCTAssertEqual(try loggedRecords(cluster, "0py", t), ["prepared", "pre-aborted", "aborted"], "an abort quorum first")
        try assertBalances(api, agent: agent, py: py, alice: 100, bob: 100, "after the terminated transfer")
        // A late pre-commit, even a backup's, is refused: the branch aborted.
        XCTAssertEqual(try post(api, py + "/v1/3pc/precommit", #"{"txid":"\#(t)","backup":true}"#).status, 409)

        try cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try api.transaction(t)?.outcome == "aborted" })
    }

    // MARK: 5. the coordinator killed after its decision

    /// It dies with its commit decision durable and no commit sent: both are pre-committed. The
    /// Python participant is killed (SIGKILL) as well; the agent, the backup, commits alone
    /// (classic: the silent peer is presumed failed). The Python participant, restarted with no
    /// coordinator, adopts the commit its peer reports; the restarted coordinator's re-sent
    /// commit is acknowledged and applies nothing twice.
    func testCoordinatorKilledAfterItsDecisionBothCommitWithoutIt() throws {
        let (cluster, api, agent, python) = try seededPair()
        let py = python.url!, port = python.port!
        try armCoordinator(cluster, "coordinator.after-decision-logged")
        let t = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"))
        _ = try? api.commit(t)
        XCTAssertEqual(cluster.coordinator.waitForExit(timeoutMs: 10_000), 137)
        python.kill9()
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared", "pre-committed"])

        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try branchState(api, agent, t) == "committed" },
                      "the agent, backup, commits with its peer silent: \((try? branchState(api, agent, t)) ?? nil ?? "gone")")
        try startPython(cluster, name: "py", port: port, attempt: 2)
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try branchState(api, py, t) == "committed" && branchState(api, agent, t) == "committed" },
                      "py \((try? branchState(api, py, t)) ?? nil ?? "gone"), a \((try? branchState(api, agent, t)) ?? nil ?? "gone")")
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared", "pre-committed", "committed"])
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110)

        try cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try api.transaction(t)?.state == "committed" },
                      "the re-driven commit is acknowledged by both: \(String(describing: try? api.transaction(t)?.branches.map { "\($0.participant):\($0.state)" }))")
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110, "the re-sent commit is not applied twice")
    }

    // MARK: 6. a coordinator that accepts connections and never answers

    /// Every participant pre-committed, then the coordinator died before its decision, and a
    /// process that listens on its port and never answers took its place (a hung host, or a
    /// network that loses everything): the termination protocol must not wait on it. The
    /// Python participant ("0py") is the backup and commits both.
    func testHungCoordinatorDoesNotBlockTheTermination() throws {
        let (cluster, api, agent, python) = try seededPair(pyName: "0py")
        let py = python.url!
        try armCoordinator(cluster, "coordinator.before-decision-logged")
        let t = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"))
        _ = try? api.commit(t)
        XCTAssertEqual(cluster.coordinator.waitForExit(timeoutMs: 10_000), 137)
        let hole = try startBlackHole(port: cluster.port(Cluster.coordinatorName)!, logDirectory: cluster.logDirectory)
        let silent = try? CohortAPI(coordinatorURL: cluster.coordinatorURL, requestTimeoutMs: 500).raw("GET", cluster.coordinatorURL + "/healthz")
        XCTAssertNil(silent, "the black hole answers nothing")

        XCTAssertTrue(try eventually(timeoutMs: 20_000) { try branchState(api, py, t) == "committed" && branchState(api, agent, t) == "committed" },
                      "py \((try? branchState(api, py, t)) ?? nil ?? "gone"), a \((try? branchState(api, agent, t)) ?? nil ?? "gone")")
        XCTAssertEqual(try loggedRecords(cluster, "0py", t), ["prepared", "pre-committed", "committed"])
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110)

        hole.kill9()
        try cluster.startProcess(Cluster.coordinatorName, environment: [:])
        XCTAssertTrue(try eventually(timeoutMs: 15_000) { try api.transaction(t)?.outcome == "committed" },
                      "the restarted coordinator learns the participants' commit")
    }

    /// A process listening on `port` that accepts connections and never reads or answers.
    func startBlackHole(port: Int, logDirectory: String) throws -> ManagedProcess {
        let code = """
        import socket, time
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", \(port))); s.listen(128)
        print("listening on http://127.0.0.1:\(port)", flush=True)
        held = []
        while True:
            held.append(s.accept()[0])
        """
        let p = ManagedProcess(name: "blackhole", executable: try python3(toRun: Self.example), arguments: ["-c", code],
                               logDirectory: logDirectory, attempt: 1)
        addTeardownBlock { if p.isRunning { p.kill9() } }
        try p.start(timeoutMs: 10_000)
        return p
    }

    // MARK: 7. every answer waits for its record's fsync

    /// A kill -9 cannot show a missing fsync (the page cache survives the process), so this test
    /// watches the order of system calls instead: a `sitecustomize` module, loaded by python3
    /// before the participant, notes each log write, each fsync once it returned, and each
    /// send before it goes. The yes vote, the pre-commit acknowledgement and the commit
    /// acknowledgement must each come after an fsync that followed their record's write.
    func testEveryAnswerWaitsForTheFsyncOfItsRecord() throws {
        _ = try python3(toRun: Self.example)
        let cluster = try startCluster(agents: 1)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let shim = cluster.dataDirectory + "/pyshim"
        try FileManager.default.createDirectory(atPath: shim, withIntermediateDirectories: true)
        try #"""
        import os, socket, threading
        _fd = os.open(os.environ["PY3PC_TRACE"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _write, _fsync, _sendall, _lock = os.write, os.fsync, socket.socket.sendall, threading.Lock()
        def _note(text):
            with _lock:
                _write(_fd, (text.replace("\n", " ") + "\n").encode())
        def write(fd, data):
            if fd != _fd and b'"t":' in bytes(data[:16]):
                _note("write " + bytes(data).decode(errors="replace"))
            return _write(fd, data)
        def fsync(fd):
            result = _fsync(fd)
            _note("fsync")
            return result
        def sendall(self, data, *args):
            _note("send " + bytes(data).decode(errors="replace")[:400])
            return _sendall(self, data, *args)
        os.write, os.fsync, socket.socket.sendall = write, fsync, sendall
        """#.write(toFile: shim + "/sitecustomize.py", atomically: true, encoding: .utf8)
        let trace = cluster.dataDirectory + "/py.trace"
        let python = try startPython(cluster, name: "py", environment: ["PYTHONPATH": shim, "PY3PC_TRACE": trace])
        let t = try stage(api, 10, from: (python.url!, "bob"), to: (cluster.agentURLs[0], "alice"))
        _ = try api.agentWork(python.url!, t, [.add("bob", 20)])   // bob: 20 - 10, so the debit passes `min: 0`
        XCTAssertEqual(try api.commit(t).outcome, "committed")
        // The branch reads committed before the commit's answer goes out: wait for the answer in the trace.
        var lines: [String] = []
        _ = try eventually {
            lines = try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n").map(String.init)
            return lines.contains { $0.hasPrefix("send ") && $0.contains(#""status": "committed""#) && $0.contains(t) }
        }
        for (record, answer) in [("prepared", #""vote": "yes""#), ("pre-committed", #""status": "pre-committed""#),
                                 ("committed", #""status": "committed""#)] {
            let written = lines.firstIndex { $0.hasPrefix("write ") && $0.contains(#""t":"\#(record)""#) && $0.contains(t) }
            let answered = lines.firstIndex { $0.hasPrefix("send ") && $0.contains(answer) && $0.contains(t) }
            guard let written, let answered else {
                XCTFail("no \(record) record or no answer \(answer) in the trace:\n\(lines.joined(separator: "\n"))"); continue
            }
            XCTAssertTrue(lines[written..<answered].contains("fsync"),
                          "the answer \(answer) went out before the \(record) record was fsynced:\n\(lines[written...answered].joined(separator: "\n"))")
        }
    }

    // MARK: 8. the coordinator against a participant that answers wrongly, and bad participant input

    /// A stand-in participant (a few lines of python3) that answers each path (`PATH#backup` for
    /// a message with `"backup": true`) with a status and body chosen by the test (`$TXID` is
    /// replaced), and notes every message it gets in `log`, one a line.
    func startStub(_ cluster: Cluster, _ answers: [String: (Int, String)]) throws -> (url: String, log: String) {
        let log = cluster.dataDirectory + "/stub.log"
        let table = try JSONSerialization.data(withJSONObject: answers.mapValues { [$0.0, $0.1] as [Any] })
        let code = #"""
        import json, os, sys
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        answers, log = json.loads(os.environ["STUB_ANSWERS"]), open(os.environ["STUB_LOG"], "a")
        class Stub(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                key = self.path + ("#backup" if body.get("backup") is True else "")
                log.write(key + " " + raw.decode() + "\n"); log.flush()
                status, text = answers.get(key, answers.get(self.path, [404, "{}"]))
                data = text.replace("$TXID", body.get("txid", "")).encode()
                self.send_response(status); self.send_header("Content-Length", str(len(data))); self.end_headers()
                self.wfile.write(data)
            def log_message(self, *args): pass
        server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
        print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()
        """#
        let p = ManagedProcess(name: "stub", executable: try python3(toRun: Self.example), arguments: ["-c", code],
                               environment: ["STUB_ANSWERS": String(decoding: table, as: UTF8.self), "STUB_LOG": log],
                               logDirectory: cluster.logDirectory, attempt: 1)
        addTeardownBlock { if p.isRunning { p.kill9() } }
        try p.start(timeoutMs: 10_000)
        return (p.url!, log)
    }

    /// Only `200 {"status":"pre-committed"}` acknowledges a pre-commit (docs/protocol.md). A
    /// participant "stub" that answers the coordinator's pre-commit `200 {"status":"committed"}`
    /// is alive and not pre-committed: the classic coordinator must not count it, nor commit at
    /// its pre-commit timeout, but learn the outcome from the participants. The Python one ("py",
    /// the backup) pre-commits the stub itself before it commits, and the coordinator adopts that.
    func testOnlyAPreCommittedAnswerAcknowledgesAPreCommit() throws {
        _ = try python3(toRun: Self.example)
        let cluster = try startCluster(agents: 0)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let python = try startPython(cluster, name: "py")
        let stub = try startStub(cluster, [
            "/v1/2pc/prepare": (200, #"{"txid":"$TXID","vote":"yes"}"#),
            "/v1/3pc/precommit": (200, #"{"txid":"$TXID","status":"committed"}"#),
            "/v1/3pc/precommit#backup": (200, #"{"txid":"$TXID","status":"pre-committed"}"#),
            "/v1/3pc/state": (200, #"{"txid":"$TXID","state":"uncertain"}"#),
            "/v1/2pc/commit": (200, #"{"txid":"$TXID","status":"committed"}"#),
            "/v1/2pc/commit#backup": (200, #"{"txid":"$TXID","status":"committed"}"#),
        ])
        let t = try api.begin(protocol: "3pc")
        XCTAssertEqual(try post(api, cluster.coordinatorURL + "/v1/transactions/\(t)/branches", #"{"participant":"stub","url":"\#(stub.url)"}"#).status, 200)
        _ = try api.agentWork(python.url!, t, [.add("bob", 7)])
        XCTAssertEqual(try api.commit(t).outcome, "committed")

        let view = try XCTUnwrap(try api.transaction(t))
        XCTAssertFalse(view.events.contains { $0.event == "pre-commit-acknowledged" && $0.participant == "stub" },
                       "a 200 saying \"committed\" was counted as a pre-commit acknowledgement")
        XCTAssertTrue(view.events.contains { $0.event == "terminating" && ($0.detail ?? "").contains(#"answered "committed" to a pre-commit"#) },
                      "the coordinator should stop deciding and learn: \(view.events.map { "\($0.event) \($0.detail ?? "")" })")
        let seen = try String(contentsOfFile: stub.log, encoding: .utf8).split(separator: "\n").map { String($0.split(separator: " ")[0]) }
        let backupPreCommit = seen.firstIndex(of: "/v1/3pc/precommit#backup"), firstCommit = seen.firstIndex { $0.hasPrefix("/v1/2pc/commit") }
        XCTAssertNotNil(backupPreCommit, "the Python backup must pre-commit the uncertain stub before committing: \(seen)")
        if let backupPreCommit, let firstCommit { XCTAssertLessThan(backupPreCommit, firstCommit, "\(seen)") }
        XCTAssertTrue(try eventually { try intValue(api, python.url!, "bob") == 7 })
        XCTAssertEqual(try loggedRecords(cluster, "py", t), ["prepared", "pre-committed", "committed"])
        XCTAssertTrue(try eventually { try api.transaction(t)?.state == "committed" }, "the stub acknowledged the commit")
    }

    /// What cohortd answers a participant's malformed or misdirected calls (the answers
    /// docs/protocol.md gives for calls 1, 5 and 6), and that none of them changes the transaction.
    func testCoordinatorAnswersBadParticipantCalls() throws {
        let cluster = try startCluster(agents: 0)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let c = cluster.coordinatorURL
        let t = try api.begin(protocol: "3pc")
        let own = String(t.split(separator: "-")[0])
        func status(_ path: String, _ body: String) throws -> (Int, String) {
            let r = try post(api, c + path, body)
            return (r.status, (r.body["error"] as? String) ?? "")
        }
        let branches = "/v1/transactions/\(t)/branches"
        let refused: [(String, String, Int, String)] = [
            (branches, "{", 400, "expected a member name at byte 1"),
            (branches, "[]", 400, "not a JSON object"),
            (branches, #"{"url":"http://127.0.0.1:9"}"#, 400, #"missing field "participant""#),
            (branches, #"{"participant":"p","url":"http://127.0.0.1:9/"}"#, 400, "ends in a slash"),
            (branches, #"{"participant":"p","url":"ftp://127.0.0.1:9"}"#, 400, "http://HOST"),
            (branches, #"{"participant":"p","url":"http://127.0.0.1:9","incarnation":5}"#, 400, #"field "incarnation" has the wrong type"#),
            (branches, #"{"participant":"","url":"http://127.0.0.1:9"}"#, 400, "1-128"),
            (branches, #"{"participant":"p","participant":"q","url":"http://127.0.0.1:9"}"#, 400, "appears twice"),
            ("/v1/transactions/not-a-txid/branches", #"{"participant":"p","url":"http://127.0.0.1:9"}"#, 400, "malformed txid"),
            ("/v1/transactions/\(own)-1-ffff/branches", #"{"participant":"p","url":"http://127.0.0.1:9"}"#, 404, "unknown transaction"),
            ("/v1/transactions/\(t)/heuristic", #"{"participant":"p","outcome":"maybe"}"#, 400, "committed or aborted"),
            ("/v1/transactions/\(t)/heuristic", #"{"participant":"p","outcome":"aborted"}"#, 409, "not a branch"),
            ("/v1/transactions/\(t)/precommit", "{}", 404, "no route"),   // a 3PC phase is the participants' path, not the coordinator's
            ("/v1/3pc/state", #"{"txid":"\#(t)"}"#, 404, "no route"),
        ]
        for (path, body, expected, words) in refused {
            let (got, error) = try status(path, body)
            XCTAssertEqual(got, expected, "\(path) \(body): \(error)")
            XCTAssertTrue(error.contains(words), "\(path) \(body): \(error)")
        }
        // Inquiries: a malformed txid, an id of this coordinator it never issued, another coordinator's.
        XCTAssertEqual(try get(api, c + "/v1/transactions/not-a-txid/outcome?participant=p").status, 400)
        XCTAssertEqual(try get(api, c + "/v1/transactions/\(own)-1-ffff/outcome?participant=p").body["outcome"] as? String, "aborted")
        let stranger = own == "00000000" ? "11111111" : "00000000"
        XCTAssertEqual(try get(api, c + "/v1/transactions/\(stranger)-1-1/outcome?participant=p").body["outcome"] as? String, "unknown-coordinator")
        XCTAssertEqual(try get(api, c + "/v1/transactions/\(t)/outcome?participant=p").body["outcome"] as? String, "pending")

        // A good registration, repeated (idempotent), then one with another URL under the same name.
        let good = #"{"participant":"p","url":"http://127.0.0.1:9","incarnation":"i1"}"#
        XCTAssertEqual(try status(branches, good).0, 200)
        XCTAssertEqual(try status(branches, good).0, 200)
        XCTAssertEqual(try status(branches, #"{"participant":"p","url":"http://127.0.0.1:10","incarnation":"i1"}"#).0, 409)
        let view = try XCTUnwrap(try api.transaction(t))
        XCTAssertEqual(view.state, "active")
        XCTAssertEqual(view.branches.map(\.participant), ["p"], "none of the refused calls joined a branch")
        // After the outcome, a registration is too late.
        XCTAssertEqual(try api.abort(t).outcome, "aborted")
        XCTAssertEqual(try status(branches, good).0, 409)
    }

    // MARK: 9. repeated, late and malformed messages at the Python participant

    func testRepeatedLateAndMalformedMessages() throws {
        let (cluster, api, agent, python) = try seededPair()
        let py = python.url!
        let incarnation = try String(contentsOfFile: cluster.dataDirectory(of: "py") + "/incarnation", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)

        let committed = try stage(api, 10, from: (agent, "alice"), to: (py, "bob"))
        XCTAssertEqual(try api.commit(committed).outcome, "committed")
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110)
        let aborted = try stage(api, 1_000, from: (py, "bob"), to: (agent, "alice"))
        XCTAssertEqual(try api.commit(aborted).outcome, "aborted")

        func answer(_ path: String, _ txid: String, _ extra: String = "") throws -> (Int, String?) {
            let r = try post(api, py + path, #"{"txid":"\#(txid)"\#(extra)}"#)
            return (r.status, (r.body["status"] ?? r.body["vote"] ?? r.body["state"]) as? String)
        }
        // Late copies for a committed branch: the same answers, nothing applied twice.
        XCTAssertTrue(try answer("/v1/2pc/prepare", committed, #","protocol":"3pc""#) == (200, "yes"))
        XCTAssertTrue(try answer("/v1/3pc/precommit", committed) == (200, "pre-committed"))
        XCTAssertTrue(try answer("/v1/2pc/commit", committed) == (200, "committed"))
        XCTAssertTrue(try answer("/v1/2pc/commit", committed, #","backup":true"#) == (200, "committed"))
        XCTAssertEqual(try answer("/v1/2pc/abort", committed).0, 409)
        XCTAssertEqual(try answer("/v1/3pc/preabort", committed, #","backup":true"#).0, 409)
        XCTAssertTrue(try answer("/v1/3pc/state", committed) == (200, "committed"))
        // And for an aborted one.
        XCTAssertTrue(try answer("/v1/2pc/prepare", aborted, #","protocol":"3pc""#) == (200, "no"))
        XCTAssertEqual(try answer("/v1/3pc/precommit", aborted).0, 409)
        XCTAssertEqual(try answer("/v1/3pc/precommit", aborted, #","backup":true"#).0, 409)
        XCTAssertEqual(try answer("/v1/2pc/commit", aborted).0, 409)
        XCTAssertTrue(try answer("/v1/2pc/abort", aborted) == (200, "aborted"))
        XCTAssertTrue(try answer("/v1/3pc/state", aborted) == (200, "aborted"))
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110, "after the late copies")

        // Another incarnation is refused on every coordinator message (rule 10); bad bodies and paths.
        for path in ["/v1/2pc/prepare", "/v1/2pc/commit", "/v1/2pc/abort", "/v1/3pc/precommit", "/v1/3pc/preabort"] {
            XCTAssertEqual(try answer(path, committed, #","incarnation":"not-\#(incarnation)""#).0, 409, path)
        }
        XCTAssertEqual(try post(api, py + "/v1/3pc/state", "{").status, 400)
        XCTAssertEqual(try post(api, py + "/v1/3pc/precommit", #"{"backup":true}"#).status, 400)
        XCTAssertEqual(try post(api, py + "/v1/3pc/precommit", #"{"txid":7}"#).status, 400)
        XCTAssertEqual(try post(api, py + "/v1/3pc/precommit", "[]").status, 400)
        XCTAssertEqual(try post(api, py + "/v1/3pc/docommit", #"{"txid":"\#(committed)"}"#).status, 404)

        // A peer asks about a transaction before the Python branch voted: the branch votes no.
        let early = try api.begin(protocol: "3pc")
        XCTAssertTrue(try answer("/v1/3pc/state", early) == (200, "unknown"))
        _ = try api.agentWork(agent, early, [.add("alice", -1, min: 0)])
        _ = try api.agentWork(py, early, [.add("bob", 1)])
        let fenced = try api.commit(early)
        XCTAssertEqual(fenced.outcome, "aborted")
        XCTAssertTrue(fenced.reason?.contains("py voted no") == true, fenced.reason ?? "no reason")

        // A backup's pre-abort for a txid this participant never had: a durable promise never to
        // vote yes, which answers `read-only` from then on, after a SIGKILL and restart too.
        let promisedTxid = try api.begin(protocol: "3pc", termination: "quorum")
        XCTAssertTrue(try answer("/v1/3pc/preabort", promisedTxid, #","backup":true"#) == (200, "pre-aborted"))
        XCTAssertTrue(try answer("/v1/3pc/state", promisedTxid) == (200, "read-only"))
        let port = python.port!
        python.kill9()
        try startPython(cluster, name: "py", port: port, attempt: 2)
        XCTAssertTrue(try answer("/v1/3pc/state", promisedTxid) == (200, "read-only"), "the promise was not durable")
        XCTAssertEqual(try post(api, py + "/v1/work", #"{"txid":"\#(promisedTxid)","ops":[{"op":"add","key":"bob","delta":1}]}"#).status, 409)
        XCTAssertEqual(try api.commit(promisedTxid).outcome, "committed", "no branch joined: an empty commit")
        try assertBalances(api, agent: agent, py: py, alice: 90, bob: 110, "after the restart")
    }
}
