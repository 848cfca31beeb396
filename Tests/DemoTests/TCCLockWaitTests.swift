@testable import CohortDemo
import CohortClient
import CohortCore
import Foundation
import XCTest

/// A TCC phase at the inventory on a sku whose keys a 2PC/3PC branch holds locked waits for the
/// locks (up to `Limits.demoTCCLockWaitMs`) instead of being refused at once: a TCC order placed
/// while a 2PC transaction on its sku is between its work and its commit used to be rejected
/// ("sku S is busy in another transaction") for no business reason. The 2PC transaction here is
/// the test's own, through the inventory's participant, held open between its work and commit.
final class TCCLockWaitTests: XCTestCase {
    // MARK: - the waits, pure

    func testWaitsRunWhenFreeEndAfterTheirBoundAndAreBounded() {
        var waits = SkuLockWaits<String>(waitMs: 100, waitersMax: 3)
        XCTAssertNil(waits.nextDeadlineMs)
        XCTAssertEqual(waits.wait("a", sku: "pear", sinceMs: 0, nowMs: 0), .held)
        XCTAssertEqual(waits.wait("b", sku: "fig", sinceMs: 10, nowMs: 10), .held)
        XCTAssertEqual(waits.wait("c", sku: "pear", sinceMs: 20, nowMs: 20), .held)
        XCTAssertEqual(waits.wait("d", sku: "plum", sinceMs: 30, nowMs: 30), .full, "past waitersMax")
        XCTAssertEqual(waits.wait("d", sku: "plum", sinceMs: 0, nowMs: 300), .full, "full is told before a used-up wait")
        var fresh = SkuLockWaits<String>(waitMs: 100, waitersMax: 3)
        XCTAssertEqual(fresh.wait("e", sku: "pear", sinceMs: 0, nowMs: 100), .usedUp, "a wait already used up is not held again")
        XCTAssertTrue(fresh.isEmpty)
        XCTAssertEqual(waits.nextDeadlineMs, 100)
        // Nothing free, nothing due: all stay.
        var taken = waits.take(nowMs: 50) { _ in true }
        XCTAssertTrue(taken.ready.isEmpty && taken.expired.isEmpty)
        XCTAssertEqual(waits.count, 3)
        // fig freed: b runs; the pear ones stay.
        taken = waits.take(nowMs: 60) { $0 != "fig" }
        XCTAssertEqual(taken.ready.map(\.entry), ["b"])
        XCTAssertEqual(waits.waiting.map(\.entry), ["a", "c"])
        // a's wait runs out at 100, c's not yet.
        taken = waits.take(nowMs: 100) { _ in true }
        XCTAssertEqual(taken.expired.map(\.0.entry), ["a"])
        XCTAssertEqual(taken.expired.map(\.waitedMs), [100])
        XCTAssertEqual(waits.nextDeadlineMs, 120)
        // A free sku runs even when its wait is due.
        taken = waits.take(nowMs: 500) { _ in false }
        XCTAssertEqual(taken.ready.map(\.entry), ["c"])
        XCTAssertTrue(waits.isEmpty)
        XCTAssertNil(waits.nextDeadlineMs)
    }

    /// One hot sku's waiters stop at `waitersPerSkuMax`, so they cannot fill `waitersMax` and
    /// have phases on other skus refused at once (a leftover of session 36); a sku's count goes
    /// down as its phases leave, whether they ran or ran out their wait.
    func testOneSkusWaitersStopAtTheirBoundAndLeaveRoomForOtherSkus() {
        var waits = SkuLockWaits<String>(waitMs: 100, waitersMax: 5, waitersPerSkuMax: 2)
        XCTAssertEqual(waits.wait("k1", sku: "kiwi", sinceMs: 0, nowMs: 0), .held)
        XCTAssertEqual(waits.wait("k2", sku: "kiwi", sinceMs: 0, nowMs: 0), .held)
        XCTAssertEqual(waits.wait("k3", sku: "kiwi", sinceMs: 0, nowMs: 0), .skuFull, "kiwi at its bound")
        XCTAssertEqual(waits.wait("k4", sku: "kiwi", sinceMs: 0, nowMs: 500), .skuFull, "the per-sku bound is told before a used-up wait")
        XCTAssertEqual(waits.count(sku: "kiwi"), 2)
        XCTAssertEqual(waits.wait("p1", sku: "pear", sinceMs: 0, nowMs: 0), .held, "another sku still waits")
        XCTAssertEqual(waits.wait("f1", sku: "fig", sinceMs: 0, nowMs: 0), .held)
        XCTAssertEqual(waits.wait("p2", sku: "pear", sinceMs: 0, nowMs: 0), .held)
        XCTAssertEqual(waits.count, 5)
        XCTAssertEqual(waits.wait("f2", sku: "fig", sinceMs: 0, nowMs: 0), .full, "the service's bound is told first")
        XCTAssertEqual(waits.countBySku, ["kiwi": 2, "pear": 2, "fig": 1])
        // kiwi freed: both leave, and kiwi has room again.
        var taken = waits.take(nowMs: 10) { $0 != "kiwi" }
        XCTAssertEqual(taken.ready.map(\.entry), ["k1", "k2"])
        XCTAssertEqual(waits.count(sku: "kiwi"), 0)
        XCTAssertNil(waits.countBySku["kiwi"], "no entry kept for a sku nobody waits for")
        XCTAssertEqual(waits.wait("k5", sku: "kiwi", sinceMs: 10, nowMs: 10), .held)
        // The others run out their wait: they leave too.
        taken = waits.take(nowMs: 100) { _ in true }
        XCTAssertEqual(taken.expired.map(\.0.entry), ["p1", "f1", "p2"])
        XCTAssertEqual(waits.countBySku, ["kiwi": 1])
        XCTAssertEqual(waits.wait("p3", sku: "pear", sinceMs: 100, nowMs: 100), .held)
        XCTAssertEqual(waits.wait("p4", sku: "pear", sinceMs: 100, nowMs: 100), .held)
        XCTAssertEqual(waits.wait("p5", sku: "pear", sinceMs: 100, nowMs: 100), .skuFull)
        // With the service's bound under the per-sku one, that bound is met first.
        var small = SkuLockWaits<String>(waitMs: 100, waitersMax: 1, waitersPerSkuMax: 2)
        XCTAssertEqual(small.wait("a", sku: "kiwi", sinceMs: 0, nowMs: 0), .held)
        XCTAssertEqual(small.wait("b", sku: "kiwi", sinceMs: 0, nowMs: 0), .full)
        // The defaults: a quarter of the service's bound per sku.
        let defaults = SkuLockWaits<String>()
        XCTAssertEqual(defaults.waitersPerSkuMax, Limits.demoTCCLockWaitersPerSkuMax)
        XCTAssertLessThan(Limits.demoTCCLockWaitersPerSkuMax, Limits.demoTCCLockWaitersMax)
        XCTAssertGreaterThan(Limits.demoTCCLockWaitersPerSkuMax, 0)
    }

    // MARK: - real processes

    /// The test's 2PC transaction: `qty` of `sku` sold at the inventory, its work staged (the
    /// sku's keys locked) and not committed.
    private func holdSku(_ rig: DemoRig, _ sku: String, _ qty: Int64) throws -> (api: CohortAPI, txid: String) {
        let api = CohortAPI(coordinatorURL: rig.coordinatorURL, requestTimeoutMs: 30_000)
        let txid = try api.begin(timeoutMs: 60_000)
        _ = try api.agentWork(rig.url("inventory"), txid, [.add("available/\(sku)", -qty, min: 0), .add("sold/\(sku)", qty)])
        return (api, txid)
    }

    private func metrics(_ rig: DemoRig) -> [String: Double] {
        (try? CohortAPI(coordinatorURL: "").metrics(rig.url("inventory"))) ?? [:]
    }

    private let waitingKey = #"cohort_demo_tcc_phases_waiting{resource="inventory"}"#

    private func tccCount(_ rig: DemoRig, _ phase: String, _ result: String) -> Double {
        metrics(rig)[#"cohort_tcc_phases_total{resource="inventory",phase="\#(phase)",result="\#(result)"}"#] ?? -1
    }

    /// Waits until `n` TCC phases wait for locks at the inventory; fails the test if they never do.
    private func waitForWaiting(_ rig: DemoRig, _ n: Double, file: StaticString = #filePath, line: UInt = #line) {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if metrics(rig)[waitingKey] == n { return }
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTFail("\(Int(n)) TCC phases never waited for locks: \(metrics(rig)[waitingKey].map { "\($0)" } ?? "no such metric")", file: file, line: line)
    }

    /// Sends `call` from another thread and returns once the inventory counts one phase waiting
    /// for locks: `done` is signalled when the call is answered, its answer in `answers`.
    private func sendWhileSkuHeld(_ rig: DemoRig, file: StaticString = #filePath, line: UInt = #line,
                                  _ call: @escaping () -> (status: Int, body: [String: Any])?) -> (done: DispatchSemaphore, answers: Answers) {
        let done = DispatchSemaphore(value: 0)
        let answers = Answers()
        DispatchQueue.global().async {
            answers.add(call())
            done.signal()
        }
        waitForWaiting(rig, 1, file: file, line: line)
        return (done, answers)
    }

    /// A tcc order placed while a 2PC transaction holds its sku waits, and is confirmed once that
    /// transaction commits; both took their stock.
    func testATCCOrderWaitsForA2PCTransactionOnItsSkuAndIsConfirmed() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        let (api, txid) = try holdSku(rig, "kiwi", 2)
        let (done, answers) = sendWhileSkuHeld(rig) { rig.order("kiwi", 3, "tcc") }
        XCTAssertEqual(done.wait(timeout: .now()), .timedOut, "the order is not answered while its try waits")
        XCTAssertEqual(try api.commit(txid).outcome, "committed")
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        let order = try XCTUnwrap(answers.all.first ?? nil)
        XCTAssertEqual(order.status, 201, "\(order.body)")
        XCTAssertEqual(order.body["status"] as? String, "confirmed", "\(order.body)")
        let stock = try rig.stock("kiwi")
        XCTAssertEqual(stock.available, 5)
        XCTAssertEqual(stock.reserved, 0)
        XCTAssertEqual(stock.sold, 5, "the 2PC transaction's 2 and the tcc order's 3")
        let m = metrics(rig)
        XCTAssertEqual(m[waitingKey], 0)
        XCTAssertEqual(m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="ran"}"#], 1, "\(m)")
        XCTAssertEqual(tccCount(rig, "try", "refused"), 0)
    }

    /// Held past the bound, the tcc order is rejected with the busy reason saying how long it
    /// waited, and reserves nothing; the 2PC transaction then commits as usual.
    func testATCCOrderOnASkuHeldPastTheBoundIsRejectedSayingItWaited() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        let (api, txid) = try holdSku(rig, "kiwi", 2)
        let started = Date()
        let order = try XCTUnwrap(rig.order("kiwi", 3, "tcc"))
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started) * 1000, Double(Limits.demoTCCLockWaitMs), "it waited the bound")
        XCTAssertEqual(order.status, 201, "\(order.body)")
        XCTAssertEqual(order.body["status"] as? String, "rejected", "\(order.body)")
        let reason = try XCTUnwrap(order.body["reason"] as? String, "\(order.body)")
        XCTAssertTrue(reason.hasPrefix("aborted: "), reason)
        XCTAssertTrue(reason.contains("sku kiwi is busy in another transaction (waited "), reason)
        XCTAssertTrue(reason.contains(" ms for its 2PC/3PC locks"), reason)
        XCTAssertEqual(try rig.stock("kiwi").reserved, 0)
        XCTAssertEqual(try rig.stock("kiwi").available, 10)
        XCTAssertEqual(try api.commit(txid).outcome, "committed")
        let stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [8, 0, 2])
        XCTAssertEqual(metrics(rig)[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="timed-out"}"#], 1)
        XCTAssertEqual(metrics(rig)[waitingKey], 0)
    }

    /// The coordinator cancels a TCC transaction (its timeout) while its try waits for the sku:
    /// the cancel finds no reservation, and the try, run once the sku is free, meets the
    /// barrier's fence and reserves nothing.
    func testATryWhoseCancelCameWhileItWaitedNeverReserves() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        let (api, held) = try holdSku(rig, "kiwi", 2)
        let tcc = CohortAPI(coordinatorURL: rig.coordinatorURL, requestTimeoutMs: 30_000)
        let txid = try tcc.begin(timeoutMs: 500, protocol: "tcc")
        let base = rig.url("inventory") + "/v1/tcc/inventory"
        let branch = TCCBranchRequest(branchID: "stock", tryURL: base + "/try", confirmURL: base + "/confirm", cancelURL: base + "/cancel",
                                      payload: .object(["sku": .string("kiwi"), "qty": .int(3)]))
        // Answered once the coordinator cancels: the try still waits then.
        let r = try tcc.raw("POST", rig.coordinatorURL + "/v1/transactions/\(txid)/tcc-branches", body: branch.wireJSON)
        XCTAssertEqual(r.status, 409, r.bodyString)
        XCTAssertTrue(r.bodyString.contains("was cancelled (timed out after 500ms) before the try of branch stock answered"), r.bodyString)
        func cancelled() -> Bool {
            (try? rig.json("GET", base + "/branches/\(txid)/stock"))?.1["state"] as? String == "cancelled"
        }
        let deadline = Date().addingTimeInterval(10)
        while !cancelled(), Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        XCTAssertTrue(cancelled(), "the cancel reached the inventory")
        XCTAssertEqual(metrics(rig)[waitingKey], 1, "the try still waits")
        XCTAssertEqual(try api.commit(held).outcome, "committed")
        let ran = Date().addingTimeInterval(10)
        while tccCount(rig, "try", "hanging") < 1, Date() < ran { Thread.sleep(forTimeInterval: 0.02) }
        XCTAssertEqual(tccCount(rig, "try", "hanging"), 1, "the try ran after its cancel and was refused by the barrier")
        XCTAssertEqual(tccCount(rig, "try", "done"), 0)
        XCTAssertEqual(tccCount(rig, "cancel", "empty-cancel"), 1)
        let stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [8, 0, 2], "the try reserved nothing")
        XCTAssertTrue(["aborted", "cancelling"].contains(try XCTUnwrap(try tcc.transaction(txid)).state))
    }

    /// Past `--tcc-lock-waiters-max` (1 here) a try is refused at once, saying so: its order is
    /// rejected, its transaction cancelled with nothing reserved; the one waiting is confirmed.
    /// With `--tcc-lock-wait-ms 0` nothing waits: refused at once, as before waiting existed.
    func testPastTheWaitersBoundATryIsRefusedAtOnce() throws {
        let rig = try rig()
        rig.processes["inventory"]?.terminate()
        rig.extraArguments["inventory"] = ["--tcc-lock-waiters-max", "1"]
        try rig.start("inventory")
        try rig.setStock("kiwi", 10)
        let (api, txid) = try holdSku(rig, "kiwi", 2)
        let (done, answers) = sendWhileSkuHeld(rig) { rig.order("kiwi", 3, "tcc") }
        let second = try XCTUnwrap(rig.order("kiwi", 4, "tcc"))
        XCTAssertEqual(second.body["status"] as? String, "rejected", "\(second.body)")
        let reason = try XCTUnwrap(second.body["reason"] as? String)
        XCTAssertTrue(reason.contains("sku kiwi is busy in another transaction (no more may wait: 1 TCC phases wait for locks here already, the limit)"), reason)
        XCTAssertEqual(done.wait(timeout: .now()), .timedOut, "the first still waits")
        XCTAssertEqual(try api.commit(txid).outcome, "committed")
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(try XCTUnwrap(answers.all.first ?? nil).body["status"] as? String, "confirmed")
        let stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [5, 0, 5], "the refused try reserved nothing")
        XCTAssertEqual(metrics(rig)[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="full"}"#], 1)

        rig.processes["inventory"]?.terminate()
        rig.extraArguments["inventory"] = ["--tcc-lock-wait-ms", "0"]
        try rig.start("inventory")
        let (api2, txid2) = try holdSku(rig, "kiwi", 1)
        let third = try XCTUnwrap(rig.order("kiwi", 1, "tcc"))
        XCTAssertEqual(third.body["status"] as? String, "rejected", "\(third.body)")
        XCTAssertTrue((third.body["reason"] as? String ?? "").contains("sku kiwi is busy in another transaction (waited 0 ms"), "\(third.body)")
        XCTAssertEqual(try api2.commit(txid2).outcome, "committed")
        let after = try rig.stock("kiwi")
        XCTAssertEqual([after.available, after.reserved, after.sold], [4, 0, 6])
    }

    /// The phases called directly: a confirm of a reservation on a locked sku waits and confirms
    /// once the sku is free (it was 503, the coordinator retried); two copies of one try waiting
    /// together run as one try and its duplicate; bad calls and calls with nothing to lock are
    /// answered at once, busy sku or not.
    func testConfirmAndRepeatedTriesWaitAndBadCallsDoNot() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        let base = rig.url("inventory") + "/v1/tcc/inventory"
        @Sendable func phase(_ name: String, _ txid: String, _ payload: String = #"{"sku":"kiwi","qty":3}"#) throws -> (Int, String) {
            let deadline = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
            let body = #"{"txid":"\#(txid)","branch_id":"stock","payload":\#(payload),"deadline_ms":\#(deadline)}"#
            let r = try CohortAPI(coordinatorURL: "", requestTimeoutMs: 30_000).raw("POST", base + "/" + name, body: Array(body.utf8))
            return (r.status, r.bodyString)
        }
        XCTAssertEqual(try phase("try", "reserved-first").0, 200)
        let (api, held) = try holdSku(rig, "kiwi", 2)

        // Answered at once while kiwi is locked: bad calls and those with no reservation.
        let long = String(repeating: "t", count: Limits.tccBranchIDBytesMax + 1)
        for (name, txid, payload, status) in [("try", "bad-qty", #"{"sku":"kiwi","qty":0}"#, 400), ("try", "bad-sku", #"{"sku":"ki wi","qty":1}"#, 400),
                                              ("try", "no-payload", "null", 400), ("try", long, #"{"sku":"kiwi","qty":1}"#, 400),
                                              ("confirm", "never-tried", #"{"sku":"kiwi","qty":1}"#, 409),
                                              ("cancel", "never-tried-2", #"{"sku":"kiwi","qty":1}"#, 200)] {
            let (code, body) = try phase(name, txid, payload)
            XCTAssertEqual(code, status, "\(name) \(txid.prefix(20)): \(body)")
        }
        XCTAssertEqual(metrics(rig)[waitingKey], 0, "none of those waits")

        let group = DispatchGroup()
        let answers = Answers()
        for name in ["confirm", "try", "try"] {
            group.enter()
            DispatchQueue.global().async {
                answers.add((try? phase(name, name == "confirm" ? "reserved-first" : "waits-twice")).map { (status: $0.0, body: ["phase": name, "text": $0.1]) })
                group.leave()
            }
        }
        waitForWaiting(rig, 3)
        XCTAssertEqual(group.wait(timeout: .now()), .timedOut, "none is answered while kiwi is locked")
        XCTAssertEqual(try api.commit(held).outcome, "committed")
        XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
        let texts = answers.all.compactMap { $0 }.map { "\($0.status) \($0.body["phase"]!) \($0.body["text"]!)" }.sorted()
        XCTAssertEqual(texts.count, 3, "\(texts)")
        XCTAssertTrue(texts.allSatisfy { $0.hasPrefix("200 ") }, "\(texts)")
        XCTAssertEqual(texts.filter { $0.contains(#""status":"duplicate""#) }.count, 1, "one of the two tries is the other's duplicate: \(texts)")
        let stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [2, 3, 5], "the first reservation sold, the second held, the 2PC's sold")
        XCTAssertEqual(try phase("cancel", "waits-twice").0, 200)
        XCTAssertEqual(try rig.stock("kiwi").reserved, 0)
        XCTAssertEqual(tccCount(rig, "confirm", "done"), 1)
        XCTAssertEqual(metrics(rig)[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="ran"}"#], 3)
    }

    /// A phase called at the inventory directly, as the coordinator would.
    private func rawPhase(_ rig: DemoRig, _ name: String, _ txid: String, _ payload: String = #"{"sku":"kiwi","qty":3}"#) throws -> (Int, String) {
        let deadline = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        let body = #"{"txid":"\#(txid)","branch_id":"stock","payload":\#(payload),"deadline_ms":\#(deadline)}"#
        let r = try CohortAPI(coordinatorURL: "", requestTimeoutMs: 30_000).raw("POST", rig.url("inventory") + "/v1/tcc/inventory/" + name, body: Array(body.utf8))
        return (r.status, r.bodyString)
    }

    /// The keys a try waits for may be held by a branch the inventory restored in doubt at its
    /// restart (its coordinator died before deciding), and released by an outcome that reaches
    /// it only then, here an operator's forced abort at the participant: the release after a
    /// restart wakes the try like any commit or abort does, and it runs (not refused once its
    /// wait ran out). A review's question (session 36): the restored branch's locks are taken
    /// at recovery, before the service sets `KVResource.onKeysReleased`.
    func testATryWaitingBehindABranchRestoredInDoubtRunsWhenAForceReleasesIt() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        rig.cluster.kill9(Cluster.coordinatorName)
        try rig.cluster.startProcess(Cluster.coordinatorName, environment: ["COHORT_CRASHPOINT": "coordinator.before-decision-logged"])
        let (api, held) = try holdSku(rig, "kiwi", 2)
        // A second branch (at the order service's participant), or the commit is one-phase and
        // leaves nothing in doubt.
        _ = try api.agentWork(rig.url("orders"), held, [.set("test/second-branch", 1)])
        _ = try? api.commit(held)
        _ = rig.cluster.coordinator.waitForExit(timeoutMs: 10_000)
        rig.kill9("inventory")
        try rig.start("inventory")
        func inDoubt() -> [String] {
            let branches = (try? rig.json("GET", rig.url("inventory") + "/v1/branches?state=in-doubt"))?.1["branches"] as? [[String: Any]]
            return branches?.compactMap { $0["txid"] as? String } ?? []
        }
        XCTAssertEqual(inDoubt(), [held], "restored in doubt, holding kiwi's keys")

        let (done, answers) = sendWhileSkuHeld(rig) {
            (try? self.rawPhase(rig, "try", "behind-in-doubt")).map { (status: $0.0, body: ["text": $0.1]) }
        }
        let (code, forced) = try rig.json("POST", rig.url("inventory") + "/v1/branches/\(held)/force",
                                          ["outcome": "aborted", "reason": "coordinator lost", "operator": "test"])
        XCTAssertEqual(code, 200, "\(forced)")
        // At once (the coordinator back) another 2PC branch takes kiwi's keys, and holds them
        // past the try's wait: the try ran before (the release woke it), or it finds them held
        // at its deadline and is refused (only the deadline's timer looked again).
        try rig.cluster.startProcess(Cluster.coordinatorName, environment: [:])
        let (api2, next) = try holdSku(rig, "kiwi", 1)
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        let answer = try XCTUnwrap(answers.all.first ?? nil)
        XCTAssertEqual(answer.status, 200, "\(answer.body)")
        let m = metrics(rig)
        XCTAssertEqual(m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="ran"}"#], 1, "woken by the release: \(m)")
        XCTAssertEqual(m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="timed-out"}"#], 0, "\(m)")
        XCTAssertEqual(try api2.commit(next).outcome, "committed")
        var stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [6, 3, 1], "the forced branch sold nothing; the try reserved 3, the next branch sold 1")
        XCTAssertEqual(try rawPhase(rig, "cancel", "behind-in-doubt").0, 200)
        stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [9, 0, 1])
    }

    /// A graceful stop (SIGTERM) does not answer the phases waiting for locks: like every
    /// request in flight there (a 2PC branch's work waiting for a lock too), the connection is
    /// closed, which the coordinator takes as a try with no answer (it cancels) or a confirm or
    /// cancel to retry. Nothing ran for the try: once the service is back its cancel finds no
    /// reservation, and the sku is whole.
    func testAGracefulStopClosesAWaitingTryUnansweredAndItReservesNothing() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 10)
        let (api, held) = try holdSku(rig, "kiwi", 2)
        let done = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var result: Result<(Int, String), Error>? }
        let box = Box()
        DispatchQueue.global().async {
            box.result = Result { try self.rawPhase(rig, "try", "stopped-while-waiting") }
            done.signal()
        }
        waitForWaiting(rig, 1)
        XCTAssertEqual(rig.processes["inventory"]?.terminate(), 0, "a graceful stop")
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        switch box.result {
        case .failure?: break
        case .success(let answer)?: XCTFail("the waiting try was answered at the stop: \(answer)")
        case nil: XCTFail("no result")
        }
        try rig.start("inventory")
        XCTAssertNotEqual(try? api.commit(held).outcome, "committed", "the branch's staged work died with the process")
        XCTAssertEqual(try rawPhase(rig, "cancel", "stopped-while-waiting").1.contains("empty"), true, "the try never ran")
        let stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [10, 0, 0])
    }

    /// The tries waiting at the inventory were each sent by the coordinator, and each holds one
    /// of its connections to the inventory while it waits; so does the commit that would free
    /// the sku. More tries waiting than the coordinator keeps connections to one service
    /// (`Limits.httpClientPoolPerHostMax`, 128) held them all: the commit waited in the
    /// coordinator's queue until every wait ran out (2 s), and every try on the sku was refused
    /// (a review, session 36). Fewer may wait than that pool, so the commit finds a connection:
    /// the tries that waited run once it lands, none runs out its wait, and the rest are refused
    /// at once (`full`).
    ///
    /// The tries are spread over skus enough that the service's bound, not the per-sku one
    /// (`Limits.demoTCCLockWaitersPerSkuMax`), is the one they meet: one 2PC transaction holds
    /// them all.
    func testWaitingTriesLeaveTheCoordinatorRoomToSendTheCommitThatFreesTheirSku() throws {
        let rig = try rig()
        let skuCount = Limits.demoTCCLockWaitersMax / Limits.demoTCCLockWaitersPerSkuMax + 1
        let skus = ["kiwi"] + (1..<skuCount).map { "kiwi-\($0)" }
        for sku in skus { try rig.setStock(sku, 1_000) }
        let api = CohortAPI(coordinatorURL: rig.coordinatorURL, requestTimeoutMs: 30_000)
        let held = try api.begin(timeoutMs: 60_000)
        _ = try api.agentWork(rig.url("inventory"), held, skus.flatMap { [.add("available/\($0)", -2, min: 0), .add("sold/\($0)", 2)] })
        let tries = Limits.httpClientPoolPerHostMax + 12
        let base = rig.url("inventory") + "/v1/tcc/inventory"
        let answers = Answers()
        let group = DispatchGroup()
        for i in 0..<tries {
            group.enter()
            Thread {
                defer { group.leave() }
                let tcc = CohortAPI(coordinatorURL: rig.coordinatorURL, requestTimeoutMs: 30_000)
                guard let txid = try? tcc.begin(timeoutMs: 30_000, protocol: "tcc") else { return answers.add(nil) }
                let branch = TCCBranchRequest(branchID: "stock", tryURL: base + "/try", confirmURL: base + "/confirm", cancelURL: base + "/cancel",
                                              payload: .object(["sku": .string(skus[i % skus.count]), "qty": .int(1)]))
                let r = try? tcc.raw("POST", rig.coordinatorURL + "/v1/transactions/\(txid)/tcc-branches", body: branch.wireJSON)
                answers.add(r.map { (status: $0.status, body: ["i": i, "text": $0.bodyString]) })
                _ = try? tcc.commit(txid)
            }.start()
        }
        // Every try reached the inventory (it waits, or was refused as one too many), or the
        // coordinator's connections to it are all taken by waiting tries.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let m = metrics(rig)
            let waiting = m[waitingKey] ?? 0
            let full = m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="full"}"#] ?? 0
            let skuFull = m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="sku-full"}"#] ?? 0
            if waiting + full + skuFull >= Double(tries) || waiting >= Double(Limits.httpClientPoolPerHostMax) { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTAssertEqual(try api.commit(held).outcome, "committed")
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success)
        let m = metrics(rig)
        let ran = m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="ran"}"#] ?? -1
        let timedOut = m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="timed-out"}"#] ?? -1
        let full = m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="full"}"#] ?? -1
        let skuFull = m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="sku-full"}"#] ?? -1
        XCTAssertEqual(timedOut, 0, "the commit that freed the skus reached the inventory while they waited: ran \(ran), full \(full), sku-full \(skuFull)")
        XCTAssertGreaterThan(ran, 0)
        XCTAssertGreaterThan(full, 0, "the service's bound was met")
        XCTAssertEqual(ran + full + skuFull, Double(tries), "the others were refused at once")
        let confirmed = answers.all.compactMap { $0 }.filter { $0.status == 200 }.count
        XCTAssertEqual(Double(confirmed), ran, "every try that waited and ran reserved")
        // The committed ones confirm, the refused ones were cancelled: nothing stays reserved.
        let settled = Date().addingTimeInterval(30)
        func reserved() -> Int64? { try? skus.reduce(0) { $0 + (try rig.stock($1).reserved) } }
        while reserved() != 0, Date() < settled { Thread.sleep(forTimeInterval: 0.05) }
        var sold: Int64 = 0
        for sku in skus {
            let stock = try rig.stock(sku)
            XCTAssertEqual(stock.reserved, 0, sku)
            XCTAssertEqual(stock.available + stock.reserved + stock.sold, 1_000, sku)
            sold += stock.sold
        }
        XCTAssertEqual(sold, 2 * Int64(skus.count) + Int64(confirmed))
    }

    /// One hot sku's waiting phases stop at `Limits.demoTCCLockWaitersPerSkuMax`: with as many
    /// tries on it as the service's bound (`Limits.demoTCCLockWaitersMax`), the ones past its
    /// own bound are refused at once (`sku-full`), and a try on another locked sku still waits
    /// and runs once that sku is freed. Before, the hot sku's tries filled the service's bound
    /// and the other sku's try was refused at once (`full`), its order rejected for no
    /// business reason (a leftover of session 36).
    func testOneHotSkusWaitersLeaveRoomForATryOnAnotherSku() throws {
        let rig = try rig()
        try rig.setStock("kiwi", 1_000)
        try rig.setStock("pear", 10)
        let (api, kiwiHeld) = try holdSku(rig, "kiwi", 2)
        let pearHeld = try api.begin(timeoutMs: 60_000)
        _ = try api.agentWork(rig.url("inventory"), pearHeld, [.add("available/pear", -1, min: 0), .add("sold/pear", 1)])
        let hot = Limits.demoTCCLockWaitersMax
        let kiwiAnswers = Answers()
        let kiwiDone = DispatchGroup()
        for i in 0..<hot {
            kiwiDone.enter()
            Thread {
                defer { kiwiDone.leave() }
                kiwiAnswers.add((try? self.rawPhase(rig, "try", "hot-\(i)", #"{"sku":"kiwi","qty":1}"#)).map { (status: $0.0, body: ["text": $0.1]) })
            }.start()
        }
        // Every kiwi try reached the inventory: it waits, or was refused as one too many.
        let skuFullKey = #"cohort_demo_tcc_lock_waits_total{resource="inventory",result="sku-full"}"#
        let fullKey = #"cohort_demo_tcc_lock_waits_total{resource="inventory",result="full"}"#
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let m = metrics(rig)
            if (m[waitingKey] ?? 0) + (m[skuFullKey] ?? 0) + (m[fullKey] ?? 0) >= Double(hot) { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        var m = metrics(rig)
        XCTAssertEqual(m[waitingKey], Double(Limits.demoTCCLockWaitersPerSkuMax), "kiwi's waiters stop at its bound: \(m)")
        XCTAssertEqual(m[skuFullKey], Double(hot - Limits.demoTCCLockWaitersPerSkuMax), "\(m)")

        // A try on pear (locked too) still waits, and runs once pear is freed.
        let pearDone = DispatchSemaphore(value: 0)
        let pearAnswers = Answers()
        DispatchQueue.global().async {
            pearAnswers.add((try? self.rawPhase(rig, "try", "other-sku", #"{"sku":"pear","qty":3}"#)).map { (status: $0.0, body: ["text": $0.1]) })
            pearDone.signal()
        }
        waitForWaiting(rig, Double(Limits.demoTCCLockWaitersPerSkuMax + 1))
        XCTAssertEqual(pearDone.wait(timeout: .now()), .timedOut, "the pear try waits: \(pearAnswers.all)")
        XCTAssertEqual(try api.commit(pearHeld).outcome, "committed")
        XCTAssertEqual(pearDone.wait(timeout: .now() + 30), .success)
        let pear = try XCTUnwrap(pearAnswers.all.first ?? nil)
        XCTAssertEqual(pear.status, 200, "\(pear.body)")
        var stock = try rig.stock("pear")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [6, 3, 1], "the pear try reserved once pear was freed")

        let answered = Date().addingTimeInterval(10)
        while kiwiAnswers.all.count < hot - Limits.demoTCCLockWaitersPerSkuMax, Date() < answered { Thread.sleep(forTimeInterval: 0.02) }
        let refused = kiwiAnswers.all.compactMap { $0 }
        XCTAssertEqual(refused.count, hot - Limits.demoTCCLockWaitersPerSkuMax, "the ones past kiwi's bound are answered at once")
        for answer in refused {
            XCTAssertEqual(answer.status, 409, "\(answer.body)")
            let text = answer.body["text"] as? String ?? ""
            XCTAssertTrue(text.contains("sku kiwi is busy in another transaction (no more may wait for sku kiwi: \(Limits.demoTCCLockWaitersPerSkuMax) TCC phases wait for its locks already, the limit per sku)"), text)
        }

        XCTAssertEqual(try api.commit(kiwiHeld).outcome, "committed")
        XCTAssertEqual(kiwiDone.wait(timeout: .now() + 30), .success)
        let ranKiwi = kiwiAnswers.all.compactMap { $0 }.filter { $0.status == 200 }.count
        XCTAssertEqual(ranKiwi, Limits.demoTCCLockWaitersPerSkuMax, "the kiwi tries that waited ran")
        stock = try rig.stock("kiwi")
        XCTAssertEqual([stock.available, stock.reserved, stock.sold], [998 - Int64(ranKiwi), Int64(ranKiwi), 2])
        m = metrics(rig)
        XCTAssertEqual(m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="ran"}"#], Double(ranKiwi + 1), "\(m)")
        XCTAssertEqual(m[fullKey], 0, "\(m)")
        XCTAssertEqual(m[#"cohort_demo_tcc_lock_waits_total{resource="inventory",result="timed-out"}"#], 0, "\(m)")
        XCTAssertEqual(m[waitingKey], 0)
    }
}
