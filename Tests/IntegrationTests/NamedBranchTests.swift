import CohortClient
import CohortCore
import Foundation
import XCTest

/// Work sent with `"register": false` and the branches named in the client's commit or abort,
/// against real processes.
final class NamedBranchTests: XCTestCase {
    /// A registered transaction sets `key` at `agent` and commits: the key's lock was free.
    private func assertSetCommits(_ api: CohortAPI, _ agent: String, _ key: String, _ value: Int64,
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        let txid = try api.begin()
        _ = try api.agentWork(agent, txid, [.set(key, value)])
        XCTAssertEqual(try api.commit(txid).outcome, "committed", file: file, line: line)
        XCTAssertEqual(try api.kv(agent, key), .int(value), file: file, line: line)
    }

    func testNamedBranchesCommitWithoutAnyRegistration() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let (a, b) = (cluster.url("a"), cluster.url("b"))
        let registrationsBefore = try api.metrics(a)["cohort_messages_sent_total{type=\"register\"}"] ?? 0
        let txid = try api.begin()
        let first = try api.agentWork(a, txid, [.set("x", 7)], namedAtCommit: true, timeoutMs: 5_000)
        let second = try api.agentWork(b, txid, [.set("y", 8)], namedAtCommit: true, timeoutMs: 5_000)
        XCTAssertEqual(first.branch?.participant, "a")
        XCTAssertEqual(first.branch?.url, a)
        XCTAssertNotNil(first.branch?.incarnation)
        XCTAssertEqual(try api.transaction(txid)?.branches.count, 0, "the coordinator has not heard of the branches yet")
        let answer = try api.commit(txid, naming: [first.branch!, second.branch!])
        XCTAssertEqual(answer.outcome, "committed")
        XCTAssertTrue(try eventually { try api.transaction(txid)?.state == "committed" })
        XCTAssertEqual(try api.kv(a, "x"), .int(7))
        XCTAssertEqual(try api.kv(b, "y"), .int(8))
        XCTAssertEqual(try api.transaction(txid)?.branches.map(\.participant).sorted(), ["a", "b"])
        XCTAssertEqual(try api.metrics(a)["cohort_messages_sent_total{type=\"register\"}"] ?? 0, registrationsBefore, "a never registered")
    }

    func testAnAgentThatLostTheBranchBeforeCommitMakesItAbort() throws {
        let (cluster, api, a, b) = try clusterWithXAndY()
        // The branch at a lives only in a's memory until its prepare: a kill -9 loses it, and the
        // coordinator, which never heard of it, learns of it only from the commit.
        let txid = try api.begin()
        let first = try api.agentWork(a, txid, [.add("x", -30, min: 0)], namedAtCommit: true, timeoutMs: 5_000)
        let second = try api.agentWork(b, txid, [.add("y", 30)], namedAtCommit: true, timeoutMs: 5_000)
        cluster.kill9("a")
        _ = try cluster.restart("a")
        let answer = try api.commit(txid, naming: [first.branch!, second.branch!])
        XCTAssertEqual(answer.outcome, "aborted", answer.reason ?? "")
        XCTAssertTrue(try eventually { try api.branches(b).allSatisfy { $0.txid != txid } }, "b heard the abort")
        XCTAssertEqual(try api.kv(a, "x"), .int(100))
        XCTAssertEqual(try api.kv(b, "y"), .int(0), "nothing of the transfer committed anywhere")
    }

    /// Work before and after a `kill -9` of the agent, in one transaction: the work staged
    /// before is lost with the process, so the branch the restarted agent builds from the later
    /// work alone must not commit. The restarted process has another session: a registration
    /// from it is refused (409), and so is a commit naming branches from both sessions. Before
    /// sessions both were accepted and the transfer committed with half of its work (30 units
    /// created at b, none taken at a).
    func testWorkAfterAnAgentRestartCannotCommitWithoutTheWorkBefore() throws {
        let (cluster, api, a, b) = try clusterWithXAndY()

        // Registered branches.
        let txid = try api.begin(timeoutMs: 30_000)
        _ = try api.agentWork(a, txid, [.add("x", -30, min: 0)])
        _ = try api.agentWork(b, txid, [.add("y", 30)])
        cluster.kill9("a")
        _ = try cluster.restart("a")
        XCTAssertThrowsError(try api.agentWork(a, txid, [.add("x", 0)])) { error in
            guard case CohortAPIError.http(let status, let message) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(status, 409, message)
            XCTAssertTrue(message.contains("restarted since it joined"), message)
        }
        XCTAssertEqual(try api.commit(txid).outcome, "aborted", "a's old branch is gone: it votes no")
        XCTAssertEqual(try api.kv(a, "x"), .int(100))
        XCTAssertTrue(try eventually { try api.kv(b, "y") == .int(0) && api.branches(b).isEmpty })

        // Branches named at commit.
        let named = try api.begin(timeoutMs: 30_000)
        let before = try api.agentWork(a, named, [.add("x", -30, min: 0)], namedAtCommit: true, timeoutMs: 30_000)
        let other = try api.agentWork(b, named, [.add("y", 30)], namedAtCommit: true, timeoutMs: 30_000)
        cluster.kill9("a")
        _ = try cluster.restart("a")
        let after = try api.agentWork(a, named, [.add("x", 0)], namedAtCommit: true, timeoutMs: 30_000)
        XCTAssertNotEqual(before.branch?.session, after.branch?.session)
        XCTAssertThrowsError(try api.commit(named, naming: [before.branch!, other.branch!, after.branch!])) { error in
            guard case CohortAPIError.http(let status, let message) = error else { return XCTFail("\(error)") }
            XCTAssertEqual(status, 409, message)
        }
        XCTAssertEqual(try api.abort(named, naming: [before.branch!, other.branch!]).outcome, "aborted")
        XCTAssertEqual(try api.kv(a, "x"), .int(100))
        XCTAssertTrue(try eventually { try api.kv(b, "y") == .int(0) && api.branches(b).isEmpty })
    }

    func testAbortNamingTheBranchesFreesThemAtOnceAndAnUnnamedOneExpires() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = cluster.url("a")
        // Named in the abort: the branch ends now, though its own expiry is a minute away.
        let named = try api.begin(timeoutMs: 60_000)
        let work = try api.agentWork(a, named, [.set("k", 1)], namedAtCommit: true, timeoutMs: 60_000)
        XCTAssertEqual(try api.branches(a).map(\.txid), [named])
        XCTAssertEqual(try api.abort(named, naming: [work.branch!]).outcome, "aborted")
        XCTAssertTrue(try eventually(timeoutMs: 3_000) { try api.branches(a).isEmpty }, "the abort reached the branch")
        // Never named: only the branch's expiry (timeout_ms plus a margin) ends it and frees k.
        let forgotten = try api.begin(timeoutMs: 1_000)
        _ = try api.agentWork(a, forgotten, [.set("k", 2)], namedAtCommit: true, timeoutMs: 1_000)
        XCTAssertEqual(try api.transaction(forgotten)?.branches.count, 0)
        XCTAssertTrue(try eventually(timeoutMs: 10_000) { try api.branches(a).isEmpty }, "the unnamed branch never expired")
        try assertSetCommits(api, a, "k", 3)
    }

    func testACommitAfterTheCoordinatorsTimeoutFreesTheNamedBranchesAtOnce() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = cluster.url("a")
        // The coordinator gives up after 500 ms; the branch itself would live a minute.
        let txid = try api.begin(timeoutMs: 500)
        let work = try api.agentWork(a, txid, [.set("k", 1)], namedAtCommit: true, timeoutMs: 60_000)
        XCTAssertTrue(try eventually { try api.transaction(txid)?.state == "aborted" })
        XCTAssertEqual(try api.branches(a).map(\.txid), [txid], "the coordinator could not tell a branch it never heard of")
        let answer = try api.commit(txid, naming: [work.branch!])
        XCTAssertEqual(answer.outcome, "aborted")
        XCTAssertTrue(try eventually(timeoutMs: 3_000) { try api.branches(a).isEmpty }, "the late commit's names got the abort")
    }

    func testAnUnregisteredBranchWhoseFirstWorkFailsEndsAtOnce() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = cluster.url("a")
        let holder = try api.begin()
        _ = try api.agentWork(a, holder, [.set("k2", 1)])
        // k1 is granted, k2 is not (its holder keeps it past the 2 s lock wait): 409, and the
        // client got no branch to name. The branch must not keep k1 for its minute of life.
        let failed = try api.begin(timeoutMs: 60_000)
        XCTAssertThrowsError(try api.agentWork(a, failed, [.set("k1", 1), .set("k2", 2)], namedAtCommit: true, timeoutMs: 60_000)) { error in
            guard case CohortAPIError.http(409, _) = error else { return XCTFail("\(error)") }
        }
        XCTAssertFalse(try api.branches(a).contains { $0.txid == failed }, "the abandoned branch ended")
        try assertSetCommits(api, a, "k1", 3)  // 409 after a 2 s lock wait if k1 were still held
        XCTAssertEqual(try api.commit(holder).outcome, "committed")
    }

    func testBadNamesAreRefusedAndChangeNothing() throws {
        let cluster = try startCluster(agents: 2)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let a = cluster.url("a")
        let txid = try api.begin()
        _ = try api.agentWork(a, txid, [.set("x", 1)])  // registered as a, at a's URL
        func commit(_ body: String) throws -> (Int, String) {
            let r = try api.raw("POST", cluster.coordinatorURL + "/v1/transactions/\(txid)/commit", body: Array(body.utf8))
            return (r.status, String(decoding: r.body, as: UTF8.self))
        }
        for (body, status, words) in [
            ("not json", 400, "JSON"),
            (#"{"branches": 5}"#, 400, "branches"),
            (#"{"branches": [{"participant": "b"}]}"#, 400, "url"),
            (#"{"branches": [{"participant": "", "url": "http://x"}]}"#, 400, "participant name"),
            (#"{"branches": [{"participant": "a", "url": "http://elsewhere"}]}"#, 409, "already joined"),
        ] {
            let (s, text) = try commit(body)
            XCTAssertEqual(s, status, "\(body): \(text)")
            XCTAssertTrue(text.contains(words), "\(body): \(text)")
        }
        XCTAssertEqual(try api.transaction(txid)?.state, "active", "a refused commit starts nothing")
        XCTAssertEqual(try api.transaction(txid)?.branches.count, 1)
        let badWork = try api.raw("POST", a + "/v1/work", body: Array(#"{"txid":"\#(txid)","ops":[],"register":"no"}"#.utf8))
        XCTAssertEqual(badWork.status, 400, String(decoding: badWork.body, as: UTF8.self))
        XCTAssertEqual(try api.commit(txid).outcome, "committed")
        XCTAssertEqual(try api.kv(a, "x"), .int(1))
    }
}
