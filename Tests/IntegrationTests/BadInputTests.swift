import CohortClient
import CohortCore
import Foundation
import XCTest

/// Malformed requests get 4xx answers with an `{"error": ...}` body, and the servers keep serving;
/// bad command lines exit 2 with an `error:` line.
final class BadInputTests: XCTestCase {
    func assertError(_ api: CohortAPI, _ method: String, _ url: String, body: [UInt8] = [], status: Int,
                     file: StaticString = #filePath, line: UInt = #line) {
        do {
            let r = try api.raw(method, url, body: body)
            XCTAssertEqual(r.status, status, "\(method) \(url): \(String(decoding: r.body.prefix(300), as: UTF8.self))", file: file, line: line)
            let error = try? JSONDecoder().decode(ErrorBody.self, from: Data(r.body))
            XCTAssertNotNil(error, "\(method) \(url): no {\"error\": ...} body: \(String(decoding: r.body.prefix(300), as: UTF8.self))", file: file, line: line)
            XCTAssertFalse(error?.error.isEmpty ?? true, file: file, line: line)
        } catch {
            XCTFail("\(method) \(url): \(error)", file: file, line: line)
        }
    }

    func testServersRejectBadRequestsAndKeepServing() throws {
        let cluster = try startCluster(agents: 2)
        let c = cluster.coordinatorURL
        let a = cluster.url("a")
        let api = CohortAPI(coordinatorURL: c)
        let huge = [UInt8](repeating: UInt8(ascii: "x"), count: 2 << 20)

        for _ in 0..<2 { // twice: the first round must not have broken anything
            assertError(api, "POST", c + "/v1/transactions", body: Array("{not json".utf8), status: 400)
            assertError(api, "POST", c + "/v1/transactions", body: Array(#"{"timeout_ms": "soon"}"#.utf8), status: 400)
            assertError(api, "POST", c + "/v1/transactions", body: Array(#"{"protocol": "4pc"}"#.utf8), status: 400)
            assertError(api, "POST", c + "/v1/transactions", body: Array("[1,2,3]".utf8), status: 400)
            assertError(api, "GET", c + "/v1/transactions/not-a-txid", status: 400)
            assertError(api, "GET", c + "/v1/transactions/0000abcd-1-1", status: 404)
            assertError(api, "POST", c + "/v1/transactions/0000abcd-1-1/commit", status: 404)
            assertError(api, "GET", c + "/v1/transactions?state=bogus", status: 400)
            assertError(api, "GET", c + "/nowhere", status: 404)
            assertError(api, "GET", c + "/v1/nowhere/at/all/really", status: 404)
            assertError(api, "GET", c + "/v1/nowhere", status: 404)
            assertError(api, "GET", c + "/healthz/x", status: 404)
            assertError(api, "GET", c + "/v1/transactions/0000abcd-1-1/bogus", status: 404)
            assertError(api, "DELETE", c + "/v1/transactions", status: 405)

            assertError(api, "POST", a + "/v1/work", body: Array("garbage".utf8), status: 400)
            assertError(api, "POST", a + "/v1/work", body: Array(#"{"txid": 5, "ops": "add"}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/work", body: Array(#"{"txid": "0000abcd-1-1", "ops": [{"op": "add", "key": "k", "delta": "one"}]}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/work", body: Array(#"{"txid": "0000abcd-1-1", "ops": [{"op": "explode", "key": "k"}]}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/work", body: Array(#"{"txid": "nope", "ops": [{"op": "get", "key": "k"}]}"#.utf8), status: 400)
            // Protocol messages go through the hand-written JSON reader: bad bodies are 400s too.
            assertError(api, "POST", a + "/v1/2pc/prepare", body: Array(#"{"txid": 7}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/2pc/prepare", body: Array(#"{"txid": "0000abcd-1-1", "participants": [{"name": 1}]}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/2pc/commit", body: Array(#"{"txid": "\ud800"}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/2pc/commit", body: Array(#"{"txid": "0000abcd-1-1",}"#.utf8), status: 400)
            // A txid no coordinator makes is refused, not acknowledged as a presumed abort and kept.
            for kind in ["2pc/prepare", "2pc/commit", "2pc/abort", "3pc/precommit", "3pc/preabort", "3pc/state"] {
                assertError(api, "POST", a + "/v1/" + kind, body: Array(#"{"txid": "junk"}"#.utf8), status: 400)
            }
            // A 3PC participant list that termination could not use, or that the prepared
            // record could not hold, is refused before anything is staged or logged.
            let longName = String(repeating: "n", count: Limits.participantNameBytesMax + 1)
            let manyPeers = (0...Limits.branchesPerTransactionMax).map { #"{"name": "p\#($0)", "url": "http://127.0.0.1:1"}"# }.joined(separator: ",")
            for peers in [#"{"name": "x", "url": "http://127.0.0.1:1"}, {"name": "x", "url": "http://127.0.0.1:2"}"#,
                          #"{"name": "\#(longName)", "url": "http://127.0.0.1:1"}"#, manyPeers, ""] {
                let body = #"{"txid": "0000abcd-1-9", "protocol": "3pc", "ops": [{"op": "add", "key": "k", "delta": 1}], "participants": [\#(peers)]}"#
                assertError(api, "POST", a + "/v1/2pc/prepare", body: Array(body.utf8), status: 400)
            }
            assertError(api, "POST", a + "/v1/branches/0000abcd-1-9/force",
                        body: Array(#"{"outcome": "aborted", "reason": "r", "operator": "\#(String(repeating: "o", count: 129))"}"#.utf8), status: 400)
            let batch = try api.raw("POST", a + "/v1/batch", body: Array(#"{"messages": [{"path": "/v1/2pc/abort", "body": "{\"txid\": \"0000abcd-1-\"}"}]}"#.utf8))
            XCTAssertEqual(batch.status, 200)
            XCTAssertTrue(String(decoding: batch.body, as: UTF8.self).contains(#""status":400"#), String(decoding: batch.body, as: UTF8.self))
            assertError(api, "GET", a + "/v1/branches/junk", status: 400)
            assertError(api, "POST", a + "/v1/branches/junk/force", body: Array(#"{"outcome": "aborted", "reason": "r"}"#.utf8), status: 400)
            let listed = try api.raw("GET", a + "/v1/branches")
            XCTAssertFalse(String(decoding: listed.body, as: UTF8.self).contains("junk"), "a refused txid is not remembered")
            XCTAssertFalse(String(decoding: listed.body, as: UTF8.self).contains("0000abcd-1-9"), "a refused 3pc prepare staged a branch")
            assertError(api, "POST", a + "/v1/batch", body: Array(#"{"messages": [{"path": "/v1/2pc/commit"}]}"#.utf8), status: 400)
            // A message path with a bad percent escape refuses the batch, before any message runs.
            assertError(api, "POST", a + "/v1/batch", body: Array(#"{"messages": [{"path": "/v1/2pc/commit%zz", "body": "{}"}]}"#.utf8), status: 400)
            assertError(api, "POST", a + "/v1/batch", body: Array(String(repeating: "[", count: 10_000).utf8), status: 400)
            assertError(api, "POST", c + "/v1/transactions/0000abcd-1-1/branches", body: Array(#"{"participant": "a"}"#.utf8), status: 400)
            assertError(api, "GET", a + "/v1/kv/missing-key", status: 404)
            // A key longer than any write could make is a bad request, and a long path is not
            // echoed back whole in the error (a 15 KB path came back as a 15 KB body).
            assertError(api, "GET", a + "/v1/kv/" + String(repeating: "k", count: 300), status: 400)
            let long = try api.raw("GET", a + "/nowhere/" + String(repeating: "x", count: 6_000))
            XCTAssertEqual(long.status, 404)
            XCTAssertLessThan(long.body.count, Limits.httpErrorMessageBytesMax + 64, "the error echoed the path whole")
            XCTAssertTrue(String(decoding: long.body, as: UTF8.self).hasSuffix("…\"}"), String(decoding: long.body.suffix(40), as: UTF8.self))
            assertError(api, "GET", a + "/v1/branches?state=bogus", status: 400)
            assertError(api, "GET", a + "/v1/kv?limit=abc", status: 400)
            assertError(api, "GET", a + "/v1/kv?limit=1.5", status: 400)
            // A branch that could never be prepared is refused when it is named, not aborted later.
            assertError(api, "POST", c + "/v1/transactions/submit",
                        body: Array(#"{"protocol": "2pc", "branches": [{"participant": "p", "url": "0", "ops": []}]}"#.utf8), status: 400)
            assertError(api, "GET", a + "/nowhere", status: 404)

            // Huge bodies: 413 (a fresh client each time: the server may close the connection).
            for url in [c + "/v1/transactions", a + "/v1/work"] {
                let fresh = CohortAPI(coordinatorURL: c)
                assertError(fresh, "POST", url, body: huge, status: 413)
            }
        }

        // Still serving, and a real transfer still works.
        let fresh = CohortAPI(coordinatorURL: c)
        XCTAssertTrue(fresh.healthy(c))
        XCTAssertTrue(fresh.healthy(a))
        let txid = try fresh.begin()
        assertError(fresh, "POST", c + "/v1/transactions/\(txid)/branches", body: Array(#"{"participant": "p", "url": "e"}"#.utf8), status: 400)
        _ = try fresh.agentWork(a, txid, [.set("k", .string("v")), .set("odd key/with%chars", 3)])
        _ = try fresh.agentWork(cluster.url("b"), txid, [.add("n", 1)])
        XCTAssertEqual(try fresh.commit(txid).outcome, "committed")
        // The commit answer means the decision is durable; the agent applies it just after.
        XCTAssertTrue(try eventually { try fresh.kv(a, "k") == .string("v") }, "committed value never visible")
        XCTAssertEqual(try fresh.kv(a, "odd key/with%chars"), .int(3))
        XCTAssertEqual(try fresh.kvScan(a, prefix: "odd key/").map(\.key), ["odd key/with%chars"])
        XCTAssertTrue(cluster.coordinator.isRunning)
        XCTAssertTrue(cluster.process("a")!.isRunning)
    }

    /// Answers that say what is wrong: an empty path segment is 404, not the list one level up
    /// (`GET /v1/transactions/` listed every transaction, `GET /v1/kv/` every item); a JSON
    /// syntax error gives its byte; a number past 64 bits is out of range, not the wrong
    /// type; a field named twice is refused, not read as its last value.
    func testEmptySegmentsAndBadJSONGetAnswersThatSayWhy() throws {
        let cluster = try startCluster(agents: 1)
        let c = cluster.coordinatorURL
        let a = cluster.url("a")
        let api = CohortAPI(coordinatorURL: c)
        func answer(_ method: String, _ url: String, _ body: String = "") throws -> (Int, String) {
            let r = try api.raw(method, url, body: Array(body.utf8))
            let error = (try? JSONDecoder().decode(ErrorBody.self, from: Data(r.body)))?.error ?? String(decoding: r.body, as: UTF8.self)
            return (r.status, error)
        }
        func assertAnswer(_ method: String, _ url: String, _ body: String = "", _ status: Int, _ error: String,
                          line: UInt = #line) throws {
            let (got, text) = try answer(method, url, body)
            XCTAssertEqual(got, status, "\(method) \(url) \(body): \(text)", line: line)
            XCTAssertTrue(text.contains(error), "\(method) \(url) \(body): \(text)", line: line)
        }
        _ = try api.begin()
        for url in [c + "/v1/transactions/", c + "/v1/transactions//", c + "/v1/transactions//outcome", a + "/v1/kv/", a + "/v1/branches/"] {
            try assertAnswer("GET", url, "", 404, "has an empty segment")
        }
        XCTAssertEqual(try answer("GET", c + "/v1/transactions").0, 200)
        // Inside a batch, the same rule, message by message.
        let batch = try api.raw("POST", a + "/v1/batch", body: Array(#"{"messages": [{"path": "/v1/2pc//abort", "body": "{\"txid\": \"0000abcd-1-1\"}"}]}"#.utf8))
        XCTAssertTrue(String(decoding: batch.body, as: UTF8.self).contains(#""status":404"#), String(decoding: batch.body, as: UTF8.self))

        let begin = c + "/v1/transactions"
        try assertAnswer("POST", begin, "{", 400, "invalid JSON body: expected a member name at byte 1")
        try assertAnswer("POST", begin, #"{"timeout_ms": 5} x"#, 400, "unexpected data after the value at byte 18")
        try assertAnswer("POST", begin, #"{"timeout_ms":99999999999999999999999}"#, 400, #"field "timeout_ms" is out of range"#)
        try assertAnswer("POST", begin, #"{"protocol":"2pc","protocol":"3pc"}"#, 400, #"field "protocol" appears twice"#)
        try assertAnswer("POST", a + "/v1/2pc/commit", #"{"txid": "0000abcd-1-1",}"#, 400, "expected a member name at byte 24")
        // Bodies read with Foundation's decoder (an operator's force) say the same.
        let force = c + "/v1/transactions/0000abcd-1-1/force"
        try assertAnswer("POST", force, "{", 400, "invalid JSON body: expected a member name at byte 1")
        try assertAnswer("POST", force, #"{"outcome": "aborted", "reason": "r", "reason": "s"}"#, 400, #"field "reason" appears twice"#)
        // A base URL with a trailing slash would send every message to a path with an empty segment.
        let txid = try api.begin()
        try assertAnswer("POST", c + "/v1/transactions/\(txid)/branches", #"{"participant": "p", "url": "\#(a)/"}"#, 400, "ends in a slash")
        // A misspelt dry_run was dropped by the decoder and the force ran for real (it aborted
        // the transaction): an operator's body names only the fields it has.
        try assertAnswer("POST", c + "/v1/transactions/\(txid)/force", #"{"outcome": "aborted", "reason": "look first", "dryRun": true}"#,
                         400, #"unknown field "dryRun""#)
        let still = try api.raw("GET", c + "/v1/transactions/\(txid)")
        XCTAssertTrue(String(decoding: still.body, as: UTF8.self).contains(#""state":"active""#), String(decoding: still.body, as: UTF8.self))
        try assertAnswer("POST", a + "/v1/branches/0000abcd-1-1/forget", #"{"reason": "r", "dry-run": true}"#, 400, #"unknown field "dry-run""#)
        try assertAnswer("POST", a + "/v1/branches/0000abcd-1-1/force", #"{"outcome": "aborted", "reason": "r", "dryrun": true}"#, 400, #"unknown field "dryrun""#)
        // An application's begin and submit name only their fields too: `"protcol": "3pc"` began
        // a 2PC transaction, and a submission's `"requestId"` left it without its idempotency
        // key (a resend ran it again). Nothing begins.
        let listed = try api.raw("GET", c + "/v1/transactions").body.count
        try assertAnswer("POST", begin, #"{"protcol": "3pc"}"#, 400, #"unknown field "protcol" (the fields are "protocol", "timeout_ms", "termination")"#)
        try assertAnswer("POST", begin, #"{"protocol": "3pc", "timeoutMs": 100}"#, 400, #"unknown field "timeoutMs""#)
        let submit = c + "/v1/transactions/submit"
        let ops = #"[{"op": "add", "key": "k", "delta": 1}]"#
        try assertAnswer("POST", submit, #"{"requestId": "r1", "branches": [{"participant": "a", "url": "\#(a)", "ops": \#(ops)}]}"#,
                         400, #"unknown field "requestId""#)
        try assertAnswer("POST", submit, #"{"branches": [{"participant": "a", "url": "\#(a)", "ops": \#(ops), "incarnaton": "x"}]}"#,
                         400, #"unknown field "branches.0.incarnaton""#)
        XCTAssertEqual(try api.raw("GET", c + "/v1/transactions").body.count, listed, "a refused begin or submit began nothing")
        // The branches an application names in its commit: a misspelt incarnation dropped its fencing.
        try assertAnswer("POST", c + "/v1/transactions/\(txid)/commit", #"{"branches": [{"participant": "a", "url": "\#(a)", "incarnaton": "x"}]}"#,
                         400, #"unknown field "branches.0.incarnaton""#)
        try assertAnswer("POST", c + "/v1/transactions/\(txid)/commit", #"{"branch": []}"#, 400, #"unknown field "branch""#)
        XCTAssertTrue(String(decoding: try api.raw("GET", c + "/v1/transactions/\(txid)").body, as: UTF8.self).contains(#""state":"active""#))
        XCTAssertEqual(try api.raw("GET", a + "/v1/kv/k").status, 404, "a refused submission applied nothing")
        // The TCC branch registration: a misspelt payload reached the try as null.
        let tcc = try api.raw("POST", begin, body: Array(#"{"protocol": "tcc"}"#.utf8))
        let tccTxid = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(tcc.body)) as? [String: Any])?["txid"] as? String)
        try assertAnswer("POST", c + "/v1/transactions/\(tccTxid)/tcc-branches",
                         #"{"branch_id": "b", "try_url": "http://127.0.0.1:1/t", "confirm_url": "http://127.0.0.1:1/c", "cancel_url": "http://127.0.0.1:1/x", "paylaod": {}}"#,
                         400, #"unknown field "paylaod""#)
        // A payload naming a member twice: it reached the try as its last value (session 34).
        try assertAnswer("POST", c + "/v1/transactions/\(tccTxid)/tcc-branches",
                         #"{"branch_id": "b", "try_url": "http://127.0.0.1:1/t", "confirm_url": "http://127.0.0.1:1/c", "cancel_url": "http://127.0.0.1:1/x", "payload": {"qty": 1, "qty": 100}}"#,
                         400, #"field "payload.qty" appears twice"#)
    }

    /// An agent's scan answer stays under the size a client reads (`Limits.scanBytesMax` of
    /// keys and values); `next_after` leads to the rest, and `kvScan` follows it.
    /// A refused registration or commit naming a batch-capable URL leaves nothing behind: a
    /// 1 MB URL in a 400 used to stay in the coordinator's set of batch peers for good.
    func testRefusedRegistrationsDoNotMarkURLsAsBatchPeers() throws {
        let cluster = try startCluster(agents: 1)
        let c = cluster.coordinatorURL
        let api = CohortAPI(coordinatorURL: c)
        func peers() throws -> Double? {
            let text = String(decoding: try api.raw("GET", c + "/metrics").body, as: UTF8.self)
            return text.split(separator: "\n").first { $0.hasPrefix("cohort_batch_capable_peers ") }.flatMap { Double($0.split(separator: " ")[1]) }
        }
        let before = try XCTUnwrap(try peers())
        let txid = try api.begin()
        let long = "http://h/" + String(repeating: "u", count: 600_000)
        for url in [long, "http://h:99999/x", "http://" + String(repeating: "a", count: 600)] {
            let body = Array(#"{"participant": "zz", "url": "\#(url)", "batch": true}"#.utf8)
            assertError(api, "POST", c + "/v1/transactions/\(txid)/branches", body: body, status: 400)
            // Refused at once (a URL no one can call used to be prepared until the timeout).
            let named = Array(#"{"branches": [{"participant": "zz", "url": "\#(url)", "batch": true}]}"#.utf8)
            assertError(api, "POST", c + "/v1/transactions/\(txid)/commit", body: named, status: 400)
            let submitted = Array(#"{"branches": [{"participant": "zz", "url": "\#(url)", "ops": [{"op": "get", "key": "k"}]}]}"#.utf8)
            assertError(api, "POST", c + "/v1/transactions/submit", body: submitted, status: 400)
        }
        XCTAssertEqual(try peers(), before, "refused URLs were kept as batch peers")
    }

    func testALargeScanComesInPages() throws {
        let cluster = try startCluster(agents: 1)
        let a = cluster.url("a")
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL)
        let value = String(repeating: "v", count: 60 << 10)
        let count = 2 * Limits.scanBytesMax / value.utf8.count + 3
        for chunk in stride(from: 0, to: count, by: 10) {
            let txid = try api.begin()
            _ = try api.agentWork(a, txid, (chunk..<min(count, chunk + 10)).map { .set(String(format: "big/%04d", $0), .string(value)) })
            XCTAssertEqual(try api.commit(txid).outcome, "committed")
        }
        XCTAssertTrue(try eventually { try api.kv(a, String(format: "big/%04d", count - 1)) != nil })
        let first = try api.raw("GET", a + "/v1/kv?prefix=big/")
        XCTAssertEqual(first.status, 200)
        XCTAssertLessThanOrEqual(first.body.count, Limits.scanBytesMax + (64 << 10))
        let text = String(decoding: first.body, as: UTF8.self)
        XCTAssertTrue(text.contains(#""next_after":"big\/"#) || text.contains(#""next_after":"big/"#), String(text.suffix(200)))
        let all = try api.kvScan(a, prefix: "big/")
        XCTAssertEqual(all.map(\.key), (0..<count).map { String(format: "big/%04d", $0) })
        assertError(api, "GET", a + "/v1/kv?prefix=big/&limit=0", status: 400)
    }

    /// A cluster of a coordinator and two agents that has committed some transfers.
    func clusterWithTransfers() throws -> (Cluster, TransferWorkload) {
        let cluster = try startCluster(agents: 2)
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 10
        let workload = TransferWorkload(config: config)
        try workload.setup()
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0)
        return (cluster, workload)
    }

    /// A second process on a running server's data directory is refused before it reads the
    /// log (two writers of one log, or a recovery cutting a record the other is writing, would
    /// lose data); the running servers go on serving and their data stays whole.
    func testSecondProcessOnADataDirectoryInUseIsRefused() throws {
        let (cluster, workload) = try clusterWithTransfers()
        let coordinatorDir = cluster.dataDirectory(of: Cluster.coordinatorName)
        let agentDir = cluster.dataDirectory(of: cluster.agentNames[0])
        let second: [(String, [String], String)] = [
            ("cohortd", ["--data", coordinatorDir, "--port", "0"], coordinatorDir),
            ("cohort-agent", ["--name", cluster.agentNames[0], "--data", agentDir, "--port", "0",
                              "--coordinator", cluster.coordinatorURL], agentDir),
        ]
        for (program, args, dir) in second {
            let started = Date()
            let r = try runToCompletion(cluster.executable(program), args)
            XCTAssertNotEqual(r.status, 0, "\(program) on \(dir) while in use")
            XCTAssertTrue(r.stderr.contains("is in use by another process"), "\(program): \(r.stderr)")
            XCTAssertLessThan(Date().timeIntervalSince(started), 5, "refused at once, not after a wait")
        }
        XCTAssertTrue(cluster.isRunning(Cluster.coordinatorName) && cluster.isRunning(cluster.agentNames[0]))
        XCTAssertGreaterThan(workload.run(clients: 2, count: 20).committed, 0, "still serving")
        try assertRecovered(workload, cluster, context: "after refused second processes")
    }

    /// A cluster after some transfers, every process killed, and how to start its coordinator
    /// and first agent by hand: (program, arguments, data directory, identity file).
    private func stoppedClusterAndItsStarts() throws -> (Cluster, TransferWorkload, [String], [(String, [String], String, String)]) {
        let (cluster, workload) = try clusterWithTransfers()
        let names = [Cluster.coordinatorName] + cluster.agentNames
        for name in names { cluster.kill9(name) }
        let coordinatorDir = cluster.dataDirectory(of: Cluster.coordinatorName)
        let agentDir = cluster.dataDirectory(of: cluster.agentNames[0])
        return (cluster, workload, names, [
            ("cohortd", ["--data", coordinatorDir, "--port", "0"], coordinatorDir, "coordinator.id"),
            ("cohort-agent", ["--name", cluster.agentNames[0], "--data", agentDir, "--port", "0",
                              "--coordinator", "http://127.0.0.1:1"], agentDir, "agent.name"),
        ])
    }

    /// A data directory whose identity file is there but whose log folder is gone has lost the
    /// outcomes it answered for: starting would presume abort for a committed transaction that a
    /// participant still holds in doubt. Both servers refuse, naming the folder, and change
    /// nothing; with the log back they start.
    func testAnIdentityWithoutItsLogIsRefused() throws {
        let (cluster, workload, names, starts) = try stoppedClusterAndItsStarts()
        for (program, args, dir, _) in starts {
            try FileManager.default.moveItem(atPath: dir + "/log", toPath: dir + "/log.away")
            let r = try runToCompletion(cluster.executable(program), args)
            XCTAssertEqual(r.status, 1, "\(program): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error:") && r.stderr.contains("log folder \(dir)/log is missing"), "\(program): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/log"), "\(program) made no new log")
            try FileManager.default.moveItem(atPath: dir + "/log.away", toPath: dir + "/log")
        }
        for name in names { try cluster.restart(name) }
        try assertRecovered(workload, cluster, context: "with the logs back")
    }

    /// A `coordinator.id` replaced by another valid id (a black-box probe): the coordinator
    /// started, showed the log's transactions committed to `GET`, and answered
    /// `unknown-coordinator` to a participant asking about them, which then stays in doubt for
    /// good. It refuses, naming both ids, and starts again with its own id back.
    func testACoordinatorIDThatDidNotWriteTheLogIsRefused() throws {
        let (cluster, workload, names, starts) = try stoppedClusterAndItsStarts()
        let (program, args, dir, identity) = starts[0]
        let path = dir + "/" + identity
        let original = try String(contentsOfFile: path, encoding: .utf8)
        let id = original.trimmingCharacters(in: .whitespacesAndNewlines)
        let other = (id.first == "a" ? "b" : "a") + id.dropFirst()
        try original.replacingOccurrences(of: id, with: other).write(toFile: path, atomically: true, encoding: .utf8)
        let r = try runToCompletion(cluster.executable(program), args, timeoutMs: 10_000)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.hasPrefix("error: cannot start: \(path) says \(other), but the log in \(dir)/log holds transaction \(id)-"), r.stderr)
        try original.write(toFile: path, atomically: true, encoding: .utf8)
        for name in names { try cluster.restart(name) }
        try assertRecovered(workload, cluster, context: "with its own id back")
    }

    /// The same with the log folder there but emptied of its segments (a black-box probe
    /// deleted the only one): the coordinator answered `aborted` for a transaction whose client
    /// had been told `committed`, and an agent forgot a branch it had voted yes on. Both refuse,
    /// naming the folder, and write nothing into it; with the segments back they start.
    func testAnIdentityWhoseLogFolderHoldsNoSegmentIsRefused() throws {
        let (cluster, workload, names, starts) = try stoppedClusterAndItsStarts()
        let fm = FileManager.default
        for (program, args, dir, identity) in starts {
            let logDir = dir + "/log"
            let aside = dir + "/segments.away"
            try fm.createDirectory(atPath: aside, withIntermediateDirectories: false)
            let segments = try fm.contentsOfDirectory(atPath: logDir).filter { $0.hasSuffix(".log") }
            XCTAssertFalse(segments.isEmpty, program)
            for name in segments { try fm.moveItem(atPath: logDir + "/" + name, toPath: aside + "/" + name) }
            // Before the fix the server started and served: the run did not end.
            let r = try runToCompletion(cluster.executable(program), args, timeoutMs: 10_000)
            XCTAssertEqual(r.status, 1, "\(program): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: cannot start: \(dir)/\(identity) exists but its log folder \(logDir) holds no log segment"),
                          "\(program): \(r.stderr)")
            XCTAssertEqual(try fm.contentsOfDirectory(atPath: logDir).filter { $0.hasSuffix(".log") }, [], "\(program) made no new segment")
            for name in segments { try fm.moveItem(atPath: aside + "/" + name, toPath: logDir + "/" + name) }
            try fm.removeItem(atPath: aside)
        }
        for name in names { try cluster.restart(name) }
        try assertRecovered(workload, cluster, context: "with the segments back")
    }

    /// So a new data directory must never be left with an identity and no segment: its log's
    /// first segment (a checkpoint of the empty state) is durable before the identity files get
    /// their names. They are drawn first and wait as `NAME.new`; a start after a crash during
    /// the creation finishes it with the same identity, whether the first segment was written
    /// or not.
    func testANewDataDirectoryLogsBeforeItsIdentityAndFinishesAnInterruptedCreation() throws {
        let cluster = try startCluster(agents: 2)
        let fm = FileManager.default
        let agent = cluster.agentNames[0]
        var identities: [String: [String: String]] = [:]
        var files = [Cluster.coordinatorName: ["coordinator.id"]]
        for name in cluster.agentNames { files[name] = ["agent.name", "agent.incarnation"] }
        for name in cluster.allNames {
            let dir = cluster.dataDirectory(of: name)
            let entries = try fm.contentsOfDirectory(atPath: dir)
            XCTAssertFalse(entries.contains { $0.hasSuffix(".new") }, "\(name): \(entries)")
            XCTAssertEqual(try fm.contentsOfDirectory(atPath: dir + "/log").filter { $0.hasSuffix(".log") }, ["0000000000000001.log"], name)
            for file in files[name]! {
                identities[name, default: [:]][file] = try String(contentsOfFile: dir + "/" + file, encoding: .utf8)
            }
        }
        for name in cluster.allNames { cluster.kill9(name) }
        // The coordinator was caught after its first segment, before its identity got its name;
        // the agent before its first segment was written, once both identities were drawn.
        let coordinatorDir = cluster.dataDirectory(of: Cluster.coordinatorName)
        try fm.moveItem(atPath: coordinatorDir + "/coordinator.id", toPath: coordinatorDir + "/coordinator.id.new")
        let agentDir = cluster.dataDirectory(of: agent)
        for file in files[agent]! { try fm.moveItem(atPath: agentDir + "/" + file, toPath: agentDir + "/" + file + ".new") }
        for segment in try fm.contentsOfDirectory(atPath: agentDir + "/log") { try fm.removeItem(atPath: agentDir + "/log/" + segment) }
        for name in cluster.allNames { try cluster.restart(name) }
        for name in cluster.allNames {
            let dir = cluster.dataDirectory(of: name)
            let entries = try fm.contentsOfDirectory(atPath: dir)
            XCTAssertFalse(entries.contains { $0.hasSuffix(".new") }, "\(name): \(entries)")
            XCTAssertTrue(try fm.contentsOfDirectory(atPath: dir + "/log").contains("0000000000000001.log"), name)
            for file in files[name]! {
                XCTAssertEqual(try String(contentsOfFile: dir + "/" + file, encoding: .utf8), identities[name]![file], "\(name): \(file)")
            }
        }
        var config = TransferWorkload.Config(coordinatorURL: cluster.coordinatorURL, agentURLs: cluster.agentURLs)
        config.accounts = 4
        let workload = TransferWorkload(config: config)
        try workload.setup()
        XCTAssertGreaterThan(workload.run(clients: 1, count: 5).committed, 0)
        // Stopped before logging anything, the directories start again.
        let fresh = try startCluster(agents: 2)
        for name in fresh.allNames { fresh.terminate(name) }
        for name in fresh.allNames { try fresh.restart(name, kill: false) }
        // A directory an older version made and left idle: an identity, no segment. Refused;
        // the remedy the message gives (rename the identity to NAME.new) keeps the identity.
        fresh.terminate(Cluster.coordinatorName)
        let oldDir = fresh.dataDirectory(of: Cluster.coordinatorName)
        let id = try String(contentsOfFile: oldDir + "/coordinator.id", encoding: .utf8)
        for segment in try fm.contentsOfDirectory(atPath: oldDir + "/log") { try fm.removeItem(atPath: oldDir + "/log/" + segment) }
        let refused = try runToCompletion(fresh.executable("cohortd"), ["--data", oldDir, "--port", "0"], timeoutMs: 10_000)
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("rename \(oldDir)/coordinator.id to \(oldDir)/coordinator.id.new and start again"), refused.stderr)
        try fm.moveItem(atPath: oldDir + "/coordinator.id", toPath: oldDir + "/coordinator.id.new")
        try fresh.restart(Cluster.coordinatorName, kill: false)
        XCTAssertEqual(try String(contentsOfFile: oldDir + "/coordinator.id", encoding: .utf8), id, "the same identity")
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: oldDir + "/log").filter { $0.hasSuffix(".log") }, ["0000000000000001.log"])
    }

    func testBadCommandLinesExit2WithAnErrorLine() throws {
        let bin = try binDirectory()
        let dir = tempPath("cohort-badcli-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // An existing --db, so that the relay's case below is refused for its --lease-ttl.
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir + "/r.sqlite", contents: Data())
        let cases: [(String, [String])] = [
            ("cohortd", ["--bogus"]),
            ("cohortd", ["--data", dir + "/c", "--port", "seventy"]),
            ("cohortd", ["--data", dir + "/c", "--port", "70000"]),
            ("cohortd", ["--port", "0"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "extra"]),
            ("cohort-agent", ["--data", dir + "/a", "--port", "0", "--coordinator", "http://127.0.0.1:1"]),
            ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", "ftp://x"]),
            ("cohort-agent", ["--name", "bad name!", "--data", dir + "/a", "--port", "0", "--coordinator", "http://127.0.0.1:1"]),
            ("txbench", ["--clients", "zero"]),
            ("txbench", ["--duration", "forever"]),
            ("txbench", ["--coordinator", "http://127.0.0.1:1"]),
            ("cohort-quickstart", ["--nope"]),
            // Durations end where adding one to a clock reading could overflow (the coordinator
            // stopped with an arithmetic overflow the first time it parked a branch).
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--parked-retry-delay", "106751991167d"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--retry-budget", "9223372036854775807ms"]),
            ("cohort-relay", ["--db", dir + "/r.sqlite", "--sink", "http://127.0.0.1:1/in", "--lease-ttl", "106751991167d"]),
            // A URL's port is checked at start, not at the first request.
            ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", "http://127.0.0.1:70000"]),
            ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", "http://:7000"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--data", dir + "/c2"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--checkpoint-interval", "500ms"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--checkpoint-interval", "11m"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--finished-kept", "0"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--finished-kept", "100001"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--submissions-kept", "-1"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--submissions-kept", "1000001"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--submissions-kept", "lots"]),
            // Below one request body's worth, a typo's worth of memory, not a number.
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--submitted-work-bytes-max", "1048575"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--submitted-work-bytes-max", "68719476737"]),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--submitted-work-bytes-max", "256MiB"]),
        ]
        for (program, args) in cases {
            let r = try runToCompletion(bin.appendingPathComponent(program), args)
            XCTAssertEqual(r.status, 2, "\(program) \(args): exit \(r.status), stderr: \(r.stderr)")
            let first = r.stderr.split(separator: "\n").first.map(String.init) ?? ""
            XCTAssertTrue(first.hasPrefix("error:"), "\(program) \(args): first stderr line \"\(first)\"")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(program) \(args): the error is one line (the contract): \(r.stderr)")
        }
        // A server's usage error names the program, as every other program's does.
        let bogus = try runToCompletion(bin.appendingPathComponent("cohortd"), ["--bogus"])
        XCTAssertEqual(bogus.stderr, "error: unknown option --bogus (see cohortd --help)\n")
        // Only IPv4 is served: an IPv6 host says so instead of "No route to host".
        let v6 = try runToCompletion(bin.appendingPathComponent("cohortd"), ["--data", dir + "/c6", "--port", "0", "--host", "::1"])
        XCTAssertNotEqual(v6.status, 0)
        XCTAssertTrue(v6.stderr.contains("resolve \"::1\"") && v6.stderr.contains("IPv6 is not supported"), v6.stderr)
        for program in ["cohortd", "cohort-agent", "txbench", "cohort-quickstart"] {
            let r = try runToCompletion(bin.appendingPathComponent(program), ["--help"])
            XCTAssertEqual(r.status, 0, "\(program) --help")
            XCTAssertTrue(r.stdout.contains("usage:"), "\(program) --help prints a usage")
        }
        // An unknown crash point is a usage error in every server, and `list` lists.
        for (program, args) in [("cohortd", ["--data", dir + "/c", "--port", "0"]),
                                ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", "http://127.0.0.1:1"]),
                                ("inventory-service", ["--data", dir + "/i", "--port", "0", "--coordinator", "http://127.0.0.1:1"]),
                                ("order-service", ["--data", dir + "/o", "--port", "0", "--coordinator", "http://127.0.0.1:1", "--inventory", "http://127.0.0.1:1"])] {
            let unknown = try runToCompletion(bin.appendingPathComponent(program), args, environment: ["COHORT_CRASHPOINT": "nowhere"])
            XCTAssertEqual(unknown.status, 2, "\(program): \(unknown.stderr)")
            XCTAssertTrue(unknown.stderr.hasPrefix("error:"), "\(program): \(unknown.stderr)")
            let listed = try runToCompletion(bin.appendingPathComponent(program), [], environment: ["COHORT_CRASHPOINT": "list"])
            XCTAssertEqual(listed.status, 0, program)
            XCTAssertTrue(listed.stdout.contains("."), "\(program) lists its crash points: \(listed.stdout)")
            XCTAssertEqual(try runToCompletion(bin.appendingPathComponent(program), ["--help"]).status, 0, "\(program) --help")
        }
    }

    /// `--data` naming a regular file is refused in plain words by every service (order-service
    /// gave Foundation's "NSCocoaErrorDomain Code=516"), and a second tcc-inventory on a data
    /// directory in use is refused as the other services refuse it (it started, and two barrier
    /// purgers ran over the same rows).
    func testADataDirectoryThatIsAFileOrInUseIsRefused() throws {
        let bin = try binDirectory()
        let dir = tempPath("cohort-datadir-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/a-file"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        let url = "http://127.0.0.1:1"
        for (program, args) in [("order-service", ["--coordinator", url, "--inventory", url]), ("inventory-service", ["--coordinator", url]),
                                ("tcc-inventory", [])] {
            let r = try runToCompletion(bin.appendingPathComponent(program), ["--data", file, "--port", "0"] + args, timeoutMs: 10_000)
            XCTAssertEqual(r.status, 1, "\(program): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("data directory \(file) exists and is not a directory"), "\(program): \(r.stderr)")
            XCTAssertFalse(r.stderr.contains("NSCocoaErrorDomain"), "\(program): \(r.stderr)")
        }
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "x", "the file is left as it was")

        let first = ManagedProcess(name: "tcc", executable: bin.appendingPathComponent("tcc-inventory"),
                                   arguments: ["--data", dir + "/tcc", "--port", "0"], logDirectory: dir + "/logs")
        try first.start()
        defer { first.kill9() }
        let second = try runToCompletion(bin.appendingPathComponent("tcc-inventory"), ["--data", dir + "/tcc", "--port", "0"], timeoutMs: 10_000)
        XCTAssertEqual(second.status, 1, second.stderr)
        XCTAssertTrue(second.stderr.contains("\(dir)/tcc is in use by another process"), second.stderr)
    }

    /// A port already taken (a mistyped `--port`, a second server started by mistake) is refused
    /// before anything is made or opened on disk: every server exits 1 with one `error:` line
    /// naming the address, and leaves no data directory or database behind. Each made its data
    /// directory, identity files, log and store first and bound last, so a busy port left a new
    /// directory with an identity in it (a later start under another name was then refused).
    /// A stopped agent's directory started again on a busy port is left exactly as it was.
    func testABusyPortIsRefusedBeforeAnythingOnDisk() throws {
        let bin = try binDirectory()
        let dir = tempPath("cohort-busyport-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let url = "http://127.0.0.1:1"
        // A stopped agent's data directory, as it was at its stop.
        let stopped = ManagedProcess(name: "stopped", executable: bin.appendingPathComponent("cohort-agent"),
                                     arguments: ["--name", "old", "--data", dir + "/old", "--port", "0", "--coordinator", url],
                                     logDirectory: dir + "/logs")
        try stopped.start()
        XCTAssertEqual(stopped.terminate(), 0)
        func listing(_ root: String) -> [String] {
            let names = (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
            return names.map { name in
                let a = try? FileManager.default.attributesOfItem(atPath: root + "/" + name)
                return "\(name) \((a?[.size] as? NSNumber)?.intValue ?? -1) \((a?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? -1)"
            }
        }
        // A producer's database, closed, for cohort-relay (it opens an existing one).
        try FileManager.default.createDirectory(atPath: dir + "/relayed", withIntermediateDirectories: true)
        let made = try runToCompletion(bin.appendingPathComponent("outbox-demo-producer"), ["--db", dir + "/relayed/p.db", "--count", "1"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let before = [dir + "/old": listing(dir + "/old"), dir + "/relayed": listing(dir + "/relayed")]
        XCTAssertTrue(before[dir + "/old"]!.contains { $0.hasPrefix("kv.sqlite ") }, "\(before)")

        // The port's holder: a running coordinator.
        let holder = ManagedProcess(name: "holder", executable: bin.appendingPathComponent("cohortd"),
                                    arguments: ["--data", dir + "/holder", "--port", "0"], logDirectory: dir + "/logs")
        try holder.start()
        defer { holder.kill9() }
        let port = String(try XCTUnwrap(holder.port))
        let cases: [(String, [String], String)] = [
            ("cohortd", ["--data", dir + "/coordinator"], dir + "/coordinator"),
            ("cohort-agent", ["--name", "a", "--data", dir + "/agent", "--coordinator", url], dir + "/agent"),
            ("cohort-agent", ["--name", "old", "--data", dir + "/old", "--coordinator", url], dir + "/old"),
            ("inventory-service", ["--data", dir + "/inventory", "--coordinator", url], dir + "/inventory"),
            ("order-service", ["--data", dir + "/orders", "--coordinator", url, "--inventory", url], dir + "/orders"),
            ("tcc-inventory", ["--data", dir + "/tcc"], dir + "/tcc"),
            ("outbox-demo-producer", ["--db", dir + "/producer.db", "--count", "1"], dir + "/producer.db"),
            ("outbox-demo-consumer", ["--db", dir + "/consumer.db"], dir + "/consumer.db"),
            ("cohort-relay", ["--db", dir + "/relayed/p.db", "--sink", url + "/v1/inbox"], dir + "/relayed"),
        ]
        for (program, args, path) in cases {
            let r = try runToCompletion(bin.appendingPathComponent(program), args + ["--port", port], timeoutMs: 10_000)
            XCTAssertEqual(r.status, 1, "\(program): \(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(program): one line: \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: ") && r.stderr.contains("127.0.0.1:\(port): Address already in use"), "\(program): \(r.stderr)")
            XCTAssertEqual(r.stdout, "", "\(program) announced nothing")
            if let was = before[path] {
                XCTAssertEqual(listing(path), was, "\(program): \(path) is left as it was")
            } else {
                XCTAssertFalse(FileManager.default.fileExists(atPath: path), "\(program) left \(path) behind: \(listing(path))")
            }
        }
        XCTAssertTrue(holder.isRunning, "the port's holder goes on")
    }

    /// A base URL flag (`--reply-to`, `--inventory`, `--coordinator`, `--advertise`) is refused
    /// with a path, at start and by `--check-flags`: each service adds its paths itself, and
    /// `inventory-service --reply-to http://HOST:PORT/v1/inbox` was accepted and sent every
    /// answer to `/v1/inbox/v1/inbox` (404, then the dead letters). A trailing slash is not a
    /// path: it is taken off.
    func testBaseURLFlagsRefuseAPath() throws {
        let bin = try binDirectory()
        let dir = tempPath("cohort-baseurl-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let url = "http://127.0.0.1:1"
        let inventory = ["--data", dir + "/i", "--port", "0", "--coordinator", url]
        let orders = ["--data", dir + "/o", "--port", "0", "--coordinator", url, "--inventory", url]
        let agent = ["--name", "a", "--data", dir + "/a", "--port", "0", "--coordinator", url]
        let cases: [(String, [String], String, String)] = [
            ("inventory-service", inventory, "reply-to", url + "/v1/inbox"),
            ("inventory-service", inventory, "reply-to", url + "?x=1"),
            ("inventory-service", inventory, "advertise", url + "/inv"),
            ("inventory-service", Array(inventory.dropLast(2)), "coordinator", url + "/v1"),
            ("order-service", Array(orders.dropLast(2)), "inventory", url + "/v1/inbox"),
            ("order-service", Array(orders.prefix(4)) + ["--inventory", url], "coordinator", url + "/v1/transactions"),
            ("cohort-agent", Array(agent.dropLast(2)), "coordinator", url + "/x/"),
        ]
        for (program, line, flag, value) in cases {
            for check in [["--check-flags"], []] {
                let r = try runToCompletion(bin.appendingPathComponent(program), line + ["--\(flag)", value] + check, timeoutMs: 10_000)
                XCTAssertEqual(r.status, 2, "\(program) --\(flag) \(value) \(check): \(r.stderr)")
                XCTAssertTrue(r.stderr.hasPrefix("error: --\(flag) is a base URL, http://HOST[:PORT] without a path"), "\(program): \(r.stderr)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "a refused start created nothing")
        for (program, line, flag) in [("inventory-service", inventory, "reply-to"), ("order-service", Array(orders.dropLast(2)), "inventory")] {
            let r = try runToCompletion(bin.appendingPathComponent(program), line + ["--\(flag)", url + "/", "--check-flags"])
            XCTAssertEqual(r.status, 0, "\(program) --\(flag) \(url)/: \(r.stderr)")
        }
    }

    /// `inventory-service --tcc-lock-wait-ms` and `--tcc-lock-waiters-max` take at most their
    /// limits (`Limits.demoTCCLockWaitMs`, `demoTCCLockWaitersMax`), never less than 0.
    func testInventoryTCCLockWaitFlagsAreBounded() throws {
        let dir = tempPath("cohort-tcclockwait-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let inventory = try binDirectory().appendingPathComponent("inventory-service")
        let line = ["--data", dir + "/i", "--port", "0", "--coordinator", "http://127.0.0.1:1", "--check-flags"]
        for (flag, value, error) in [("tcc-lock-wait-ms", "-1", "must be between 0 and \(Limits.demoTCCLockWaitMs), got -1"),
                                     ("tcc-lock-wait-ms", "\(Limits.demoTCCLockWaitMs + 1)", "must be between 0 and \(Limits.demoTCCLockWaitMs)"),
                                     ("tcc-lock-wait-ms", "2s", "must be an integer, got \"2s\""),
                                     ("tcc-lock-waiters-max", "\(Limits.demoTCCLockWaitersMax + 1)", "must be between 0 and \(Limits.demoTCCLockWaitersMax)"),
                                     ("tcc-lock-waiters-max", "+1", "must be an integer"),
                                     // The first bound (session 36), over the coordinator's connections to one service.
                                     ("tcc-lock-waiters-max", "256", "must be between 0 and \(Limits.demoTCCLockWaitersMax), got 256")] {
            let r = try runToCompletion(inventory, line + ["--\(flag)", value])
            XCTAssertEqual(r.status, 2, "--\(flag) \(value): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: --\(flag) \(error)"), r.stderr)
        }
        XCTAssertEqual(try runToCompletion(inventory, line + ["--tcc-lock-wait-ms", "0", "--tcc-lock-waiters-max", "0"]).status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir))
    }

    func testRelayLeaseTTLIsBoundedAboveToo() throws {
        let dir = tempPath("cohort-lease-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let relay = try binDirectory().appendingPathComponent("cohort-relay")
        let line = ["--db", dir + "/p.db", "--sink", "http://127.0.0.1:1/in", "--check-flags"]
        let long = try runToCompletion(relay, line + ["--lease-ttl", "100d"])
        XCTAssertEqual(long.status, 2, long.stderr)
        XCTAssertTrue(long.stderr.hasPrefix("error: --lease-ttl must be at most 10m"), long.stderr)
        XCTAssertEqual(try runToCompletion(relay, line + ["--lease-ttl", "10m"]).status, 0)
    }

    /// `--check-flags` (what `txscenario validate` runs) checks values too, and a command line
    /// that passes creates, opens and binds nothing: not the data directory, not the database.
    func testCheckFlagsChecksValuesAndCreatesNothing() throws {
        let bin = try binDirectory()
        let dir = tempPath("cohort-checkflags-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let coordinator = ["--coordinator", "http://127.0.0.1:1"]
        // (program, a good command line, a flag and bad value to add to it)
        let cases: [(String, [String], [String])] = [
            ("cohortd", ["--data", dir + "/c", "--port", "0"], ["--retry-budget", "soon"]),
            ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0"] + coordinator, ["--commit-ride-us", "abc"]),
            ("inventory-service", ["--data", dir + "/i", "--port", "0"] + coordinator, ["--poll-us", "-1"]),
            ("order-service", ["--data", dir + "/o", "--port", "0", "--inventory", "http://127.0.0.1:1"] + coordinator, ["--poll-us", "x"]),
            ("cohort-relay", ["--db", dir + "/p.db", "--sink", "http://127.0.0.1:1/in"], ["--lease-ttl", "10ms"]),
            ("outbox-demo-producer", ["--db", dir + "/p.db", "--sink", "redis://127.0.0.1:1", "--port", "0"], ["--threads", "0"]),
            ("outbox-demo-consumer", ["--db", dir + "/q.db", "--port", "0"], ["--sync", "sometimes"]),
            ("tcc-inventory", ["--data", dir + "/t", "--port", "0"], ["--port", "99999"]),
        ]
        for (program, good, bad) in cases {
            let ok = try runToCompletion(bin.appendingPathComponent(program), good + ["--check-flags"])
            XCTAssertEqual(ok.status, 0, "\(program) \(good): \(ok.stderr)")
            XCTAssertEqual(ok.stdout, "", program)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "\(program) --check-flags created \(dir)")
            // The bad value replaces a good one or adds a flag; either way it is refused.
            var badLine = good
            if let i = badLine.firstIndex(of: bad[0]) { badLine.removeSubrange(i...(i + 1)) }
            let refused = try runToCompletion(bin.appendingPathComponent(program), badLine + bad + ["--check-flags"])
            XCTAssertEqual(refused.status, 2, "\(program) \(bad): \(refused.stderr)")
            XCTAssertTrue(refused.stderr.hasPrefix("error: --\(bad[0].dropFirst(2))"), "\(program): \(refused.stderr)")
            // A host no listener can bind (a black-box probe: --check-flags passed it, and a
            // start created the data directory before failing). The producer and consumer
            // take no --host.
            guard !program.hasPrefix("outbox-demo") else { continue }
            let host = try runToCompletion(bin.appendingPathComponent(program), good + ["--host", "999.1.1.1", "--check-flags"])
            XCTAssertEqual(host.status, 2, "\(program): \(host.stderr)")
            XCTAssertTrue(host.stderr.hasPrefix("error: --host must be an IPv4 address or a name this machine resolves, got \"999.1.1.1\""), "\(program): \(host.stderr)")
            if program != "cohort-relay" {
                let started = try runToCompletion(bin.appendingPathComponent(program), good + ["--host", "999.1.1.1"], timeoutMs: 10_000)
                XCTAssertEqual(started.status, 2, "\(program): \(started.stderr)")
                XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "\(program) with a bad --host created \(dir)")
            }
        }
        // The sink's form is a flag value too, for the relay and the producer alike.
        for program in ["cohort-relay", "outbox-demo-producer"] {
            let r = try runToCompletion(bin.appendingPathComponent(program), ["--db", dir + "/p.db", "--sink", "ftp://x", "--check-flags"])
            XCTAssertEqual(r.status, 2, "\(program): \(r.stderr)")
            XCTAssertTrue(r.stderr.hasPrefix("error: --sink: sink must be http://"), "\(program): \(r.stderr)")
            // An HTTP sink every post to which would be answered 404, or that cannot be reached.
            for (sink, why) in [("http://127.0.0.1:7300/v1/inbox/", "an empty path segment"), ("http://127.0.0.1:7300//v1/inbox", "an empty path segment"),
                                ("http://127.0.0.1:7300", "no path"), ("http://127.0.0.1:99999/v1/inbox", "is not an http://HOST[:PORT]/PATH URL"),
                                ("http:///v1/inbox", "is not an http://HOST[:PORT]/PATH URL")] {
                let s = try runToCompletion(bin.appendingPathComponent(program), ["--db", dir + "/p.db", "--sink", sink, "--check-flags"])
                XCTAssertEqual(s.status, 2, "\(program) \(sink): \(s.stderr)")
                XCTAssertTrue(s.stderr.hasPrefix("error: --sink: sink \"\(sink)\"") && s.stderr.contains(why), "\(program) \(sink): \(s.stderr)")
            }
        }
    }

    /// What `--check-flags` accepts, the start accepts, and the other way round (the black-box
    /// probe found flags that passed the check and then failed or silently defaulted at start),
    /// and a flag's value is never the next option.
    func testCheckFlagsAgreesWithTheStart() throws {
        let bin = try binDirectory()
        let dir = tempPath("cohort-agree-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let coordinator = ["--coordinator", "http://127.0.0.1:1"]
        let demo = ["--data", dir + "/o", "--port", "0", "--inventory", "http://127.0.0.1:1"] + coordinator
        let tokenDir = dir + "/tokens"
        try FileManager.default.createDirectory(atPath: tokenDir, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: tokenDir + "/two-lines", contents: Data("abc\ndef\n".utf8))
        _ = FileManager.default.createFile(atPath: tokenDir + "/nul", contents: Data([0x61, 0, 0x62]))
        _ = FileManager.default.createFile(atPath: tokenDir + "/big", contents: Data(repeating: 0x61, count: 133_000))
        // (program, command line, exit status, the error's start)
        let cases: [(String, [String], Int32, String)] = [
            // A value that is the next option: the server started with a data directory named
            // "--check-flags" instead of checking.
            ("cohortd", ["--port", "0", "--data", "--check-flags"], 2, "error: --data needs a value"),
            ("cohort-agent", ["--name", "--check-flags", "--data", dir + "/a", "--port", "0"] + coordinator, 2, "error: --name needs a value"),
            // Retry durations of 0 made a hot loop.
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--retry-budget", "0s"], 2, "error: --retry-budget must be at least 1s, got 0s"),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--parked-retry-delay", "0s"], 2, "error: --parked-retry-delay must be at least 1s, got 0s"),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--parked-retry-delay", "999ms"], 2, "error: --parked-retry-delay must be at least 1s"),
            // Tokens that cannot go into a header: a bad flag (2) in every program; the servers said
            // 1, as for a failed start, where txctl and cohort-relay said 2.
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--token-file", tokenDir + "/two-lines"], 2,
             "error: token file \(tokenDir)/two-lines: the token has a line break (byte 3)"),
            ("cohort-agent", ["--name", "a", "--data", dir + "/a", "--port", "0", "--token-file", tokenDir + "/nul"] + coordinator, 2,
             "error: token file \(tokenDir)/nul: the token has a NUL byte (byte 1)"),
            ("cohortd", ["--data", dir + "/c", "--port", "0", "--token-file", tokenDir + "/big"], 2,
             "error: token file \(tokenDir)/big: the token is 133000 bytes"),
            ("cohort-relay", ["--db", dir + "/p.db", "--sink", "http://127.0.0.1:1/in", "--token-file", tokenDir + "/two-lines"], 2,
             "error: token file \(tokenDir)/two-lines: the token has a line break"),
            // The TCC and demo services take the token as cohortd does (they took none before).
            ("tcc-inventory", ["--data", dir + "/t", "--port", "0", "--token-file", tokenDir + "/two-lines"], 2,
             "error: token file \(tokenDir)/two-lines: the token has a line break (byte 3)"),
            ("inventory-service", ["--data", dir + "/i", "--port", "0", "--token-file", tokenDir + "/nul"] + coordinator, 2,
             "error: token file \(tokenDir)/nul: the token has a NUL byte (byte 1)"),
            ("order-service", demo + ["--token-file", tokenDir + "/missing"], 2, "error: cannot read token file \(tokenDir)/missing"),
            // URLs and names the start refused, or took as a default.
            ("order-service", demo + ["--broker", "redis://h:99999"], 2, "error: --broker: bad redis URL \"redis://h:99999\""),
            ("order-service", demo + ["--broker", "redis://"], 2, "error: --broker: bad redis URL \"redis://\""),
            ("inventory-service", ["--data", dir + "/i", "--port", "0", "--broker", "redis://:6379"] + coordinator, 2, "error: --broker: bad redis URL"),
            ("outbox-demo-consumer", ["--db", dir, "--port", "0"], 2, "error: --db \(dir) is a directory"),
            ("outbox-demo-consumer", ["--db", dir + "/q.db", "--port", "0", "--redis", "redis://127.0.0.1:1", "--group", ""], 2, "error: --group must not be empty"),
            ("outbox-demo-consumer", ["--db", dir + "/q.db", "--port", "0", "--redis", "redis://"], 2, "error: --redis: bad redis URL"),
            ("outbox-demo-producer", ["--db", dir, "--port", "0"], 2, "error: --db \(dir) is a directory"),
            ("cohort-relay", ["--db", dir + "/p.db", "--sink", "redis://127.0.0.1:1", "--stream", ""], 2, "error: --stream must not be empty"),
            ("cohort-relay", ["--db", dir, "--sink", "http://127.0.0.1:1/in"], 2, "error: --db \(dir) is a directory"),
        ]
        for (program, args, status, start) in cases {
            for line in [args + ["--check-flags"], args] {
                let r = try runToCompletion(bin.appendingPathComponent(program), line, timeoutMs: 20_000)
                XCTAssertEqual(r.status, status, "\(program) \(line): \(r.stderr)")
                XCTAssertTrue(r.stderr.hasPrefix(start), "\(program) \(line): \(r.stderr)")
                XCTAssertEqual(r.stdout, "", "\(program) \(line) printed \(r.stdout)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: "--check-flags"), "no directory named --check-flags")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/c"), "cohortd created nothing")
    }
}
