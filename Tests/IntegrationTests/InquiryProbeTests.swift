import CohortClient
import Foundation
import XCTest

/// In-doubt branches behind a coordinator killed -9 (real processes): one of them, the probe,
/// keeps asking about every second while the others back off to 5 s, so the coordinator's
/// return is noticed within about a second and every branch's locks go soon after. Before the
/// probe, the first inquiry after the restart could come up to 5 s later.
final class InquiryProbeTests: XCTestCase {
    func inquiries(_ api: CohortAPI, _ agent: String, _ txid: String) throws -> Int {
        let r = try api.raw("GET", agent + "/v1/branches/\(txid)")
        XCTAssertEqual(r.status, 200, String(decoding: r.body, as: UTF8.self))
        let view = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any])
        XCTAssertEqual(view["state"] as? String, "prepared", "\(view)")
        return try XCTUnwrap(view["inquiries"] as? Int, "\(view)")
    }

    func testOneInDoubtBranchKeepsAskingADownCoordinatorAndItsReturnReleasesThemAll() throws {
        let cluster = try startCluster(agents: 1)
        let api = CohortAPI(coordinatorURL: cluster.coordinatorURL, connectTimeoutMs: 500, requestTimeoutMs: 5_000)
        let a = cluster.url("a")
        var txids: [String] = []
        for i in 0..<4 {
            let txid = try api.begin(timeoutMs: 120_000)
            _ = try api.agentWork(a, txid, [.add("probe-\(i)", 1)])
            txids.append(txid)
        }
        cluster.kill9(Cluster.coordinatorName)
        // The coordinator's prepares, sent by hand: each branch votes yes and is in doubt with
        // its lock, asking a coordinator that is gone (connection refused).
        for txid in txids {
            let r = try api.raw("POST", a + "/v1/2pc/prepare", body: Array(#"{"txid": "\#(txid)"}"#.utf8))
            XCTAssertEqual(r.status, 200, String(decoding: r.body, as: UTF8.self))
            XCTAssertTrue(String(decoding: r.body, as: UTF8.self).contains("yes"), String(decoding: r.body, as: UTF8.self))
        }
        XCTAssertEqual(Set(try api.inDoubtBranches(a).map(\.txid)), Set(txids))
        // 16 s down. A branch backing off asks 1 s after its vote, then after 0.5-1, 1-2, 2-4 and
        // 2.5-5 s: at most 8 inquiries in 16 s however fast the machine. The probe waits at most
        // 1 s between inquiries: about 16-20 (12 leaves room for a busy machine's late timers).
        Thread.sleep(forTimeInterval: 16)
        let counts = try txids.map { try inquiries(api, a, $0) }
        print("inquiries per in-doubt branch over the outage: \(counts)")
        XCTAssertEqual(counts.filter { $0 >= 12 }.count, 1, "exactly one branch (the probe) keeps asking often: \(counts)")
        XCTAssertEqual(counts.filter { $0 <= 8 }.count, 3, "the others back off: \(counts)")

        let restarted = Date()
        try cluster.restart(Cluster.coordinatorName)
        // The restarted coordinator never decided them: the inquiries hear `aborted` (presumed
        // abort) and the locks go. Not timed tightly (a busy machine); the time is printed.
        let released = try eventually(timeoutMs: 20_000) { try api.inDoubtBranches(a).isEmpty }
        let left = released ? [] : try api.inDoubtBranches(a).map(\.txid)
        XCTAssertTrue(released, "still in doubt: \(left)")
        print("in-doubt branches released \(String(format: "%.2f", Date().timeIntervalSince(restarted))) s after the coordinator's restart began")
        for i in 0..<4 { XCTAssertNil(try api.kv(a, "probe-\(i)"), "aborted work must not be visible") }
        // And the keys are free: new work on them commits.
        let txid = try api.begin()
        _ = try api.agentWork(a, txid, [.add("probe-0", 5)])
        XCTAssertEqual(try api.commit(txid).outcome, "committed")
    }
}
