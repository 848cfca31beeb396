import CohortCore
import XCTest
@testable import CohortKV

/// A manual clock: tasks run only when the test advances time.
final class FakeScheduler {
    struct Task {
        let id: Int
        let atMs: Int64
        let run: () -> Void
    }
    var nowMs: Int64 = 0
    var tasks: [Task] = []
    var nextID = 0
    var cancelled = 0

    func schedule(_ afterMs: Int64, _ run: @escaping () -> Void) -> () -> Void {
        nextID += 1
        let id = nextID
        tasks.append(Task(id: id, atMs: nowMs + afterMs, run: run))
        return { [weak self] in
            guard let self else { return }
            if let i = self.tasks.firstIndex(where: { $0.id == id }) {
                self.tasks.remove(at: i)
                self.cancelled += 1
            }
        }
    }

    func advance(_ ms: Int64) {
        nowMs += ms
        while let i = tasks.indices.filter({ tasks[$0].atMs <= nowMs }).min(by: { tasks[$0].atMs < tasks[$1].atMs }) {
            let t = tasks.remove(at: i)
            t.run()
        }
    }
}

final class Recorder {
    var results: [Result<StageResult, KVError>] = []
    func callback() -> (Result<StageResult, KVError>) -> Void { { self.results.append($0) } }
    var last: Result<StageResult, KVError>? { results.last }
}

final class KVResourceTests: XCTestCase {
    var clock: FakeScheduler!
    var store: MemoryKVStore!
    var kv: KVResource!

    override func setUp() {
        clock = FakeScheduler()
        store = MemoryKVStore()
        let c = clock!
        kv = KVResource(store: store, schedule: { c.schedule($0, $1) }, lockWaitTimeoutMs: 100)
    }

    func seed(_ writes: [(key: String, value: KVValue)], lsn: UInt64 = 1) throws {
        try store.apply([KVCommit(lsn: lsn, writes: writes)])
    }

    func success(_ r: Result<StageResult, KVError>?, file: StaticString = #filePath, line: UInt = #line) -> StageResult? {
        switch r {
        case .success(let s)?: return s
        case .failure(let e)?: XCTFail("expected success, got \(e)", file: file, line: line)
        case nil: XCTFail("no completion yet", file: file, line: line)
        }
        return nil
    }

    func writeSet(_ vote: ResourceVote, file: StaticString = #filePath, line: UInt = #line) -> [UInt8] {
        guard case .yes(let ws) = vote else {
            XCTFail("expected yes, got \(vote)", file: file, line: line)
            return []
        }
        return ws
    }

    func testWaitDieWaitsOnlyForYoungerHolders() throws {
        let older = "0a1b2c3d-64-1", middle = "0a1b2c3d-64-2", younger = "0a1b2c3d-64-3"
        let holder = Recorder(), old = Recorder(), young = Recorder()
        kv.stage(txid: middle, ops: [.add(key: "k", delta: 1, min: nil)], completion: holder.callback())
        XCTAssertNotNil(success(holder.last))
        // Younger than the holder: refused at once, no wait, nothing queued.
        kv.stage(txid: younger, ops: [.add(key: "k", delta: 1, min: nil)], waitDie: true, completion: young.callback())
        guard case .failure(.lockRefused(let key, let reason))? = young.last else { return XCTFail("\(String(describing: young.last))") }
        XCTAssertEqual(key, "k")
        XCTAssertTrue(reason.contains("wait-die"), reason)
        XCTAssertEqual(kv.lockWaitCount, 0)
        // Older than the holder: waits, and gets the lock when the holder goes.
        kv.stage(txid: older, ops: [.add(key: "k", delta: 1, min: nil)], waitDie: true, completion: old.callback())
        XCTAssertNil(old.last)
        XCTAssertEqual(kv.lockWaitCount, 1)
        kv.abort(txid: middle)
        XCTAssertNotNil(success(old.last))
        // A holder that waits for nothing (its commit being logged) is waited for, whatever its age.
        let committing = Recorder()
        kv.stage(txid: younger, ops: [.add(key: "k", delta: 1, min: nil)], waitDie: true, waitsForNothing: { $0 == older },
                 completion: committing.callback())
        XCTAssertNil(committing.last, "waits behind a committing holder")
        kv.abort(txid: younger)
        // Without wait-die the younger one would have waited.
        let plain = Recorder()
        kv.stage(txid: younger, ops: [.add(key: "k", delta: 1, min: nil)], completion: plain.callback())
        XCTAssertNil(plain.last)
        clock.advance(100)
        guard case .failure(.lockTimeout)? = plain.last else { return XCTFail("\(String(describing: plain.last))") }
    }

    /// `onKeysReleased` hears the keys a branch held once its commit or abort released them (a
    /// waiter may hold one again already), and nothing for a branch that held none.
    func testKeysReleasedAreReportedAtCommitAndAbort() throws {
        var released: [[String]] = []
        var freeWhenHeard: [Bool] = []
        kv.onKeysReleased = { [unowned self] keys in
            released.append(keys)
            freeWhenHeard.append(keys.allSatisfy { self.kv.lockHolders($0).isEmpty })
        }
        let r = Recorder(), waiter = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "a", delta: 1, min: nil), .get(key: "b")], completion: r.callback())
        kv.stage(txid: "t2", ops: [.add(key: "c", delta: 1, min: nil)], completion: r.callback())
        kv.stage(txid: "t3", ops: [.add(key: "c", delta: 1, min: nil)], completion: waiter.callback())
        XCTAssertNil(waiter.last, "t3 waits for c")
        XCTAssertEqual(released, [])
        try kv.commit([(txid: "t1", writeSet: writeSet(kv.vote(txid: "t1")), lsn: 1)])
        XCTAssertEqual(released, [["a", "b"]])
        kv.abort(txid: "t2")
        XCTAssertEqual(released, [["a", "b"], ["c"]])
        XCTAssertEqual(freeWhenHeard, [true, false], "c was granted to its waiter t3 as t2 let it go: the callee must look itself")
        XCTAssertNotNil(success(waiter.last), "then t3 got c")
        kv.abort(txid: "unknown")
        kv.stage(txid: "t4", ops: [.add(key: "c", delta: 1, min: nil)], completion: r.callback())
        XCTAssertEqual(kv.lockWaitCount, 1)
        kv.abort(txid: "t4")
        XCTAssertEqual(released.count, 2, "a branch that only waited released nothing")
        kv.onKeysReleased = nil
        kv.abort(txid: "t3")
        XCTAssertEqual(released.count, 2)
    }

    func testGetSeesOwnStagedWritesOnly() throws {
        try seed([("a", .int(10)), ("s", .string("x"))])
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "a", delta: 5, min: nil), .get(key: "a"), .get(key: "s"), .get(key: "missing"),
                                   .set(key: "n", value: .string("new")), .get(key: "n")], completion: r.callback())
        let s = success(r.last)
        XCTAssertEqual(s?.staged, 6)
        XCTAssertEqual(s?.values, ["a": .int(15), "s": .string("x"), "n": .string("new")])
        // Later calls see earlier calls' staged writes.
        kv.stage(txid: "t1", ops: [.add(key: "a", delta: 1, min: nil), .get(key: "a")], completion: r.callback())
        XCTAssertEqual(success(r.last)?.values, ["a": .int(16)])
        // Nothing is visible outside before commit.
        XCTAssertEqual(try kv.get("a"), .int(10))
        XCTAssertNil(try kv.get("n"))
    }

    func testTwoBranchesOnOneKeySerialize() throws {
        try seed([("a", .int(10))])
        let r1 = Recorder(), r2 = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "a", delta: 5, min: nil)], completion: r1.callback())
        XCTAssertNotNil(success(r1.last))
        kv.stage(txid: "t2", ops: [.add(key: "a", delta: 1, min: nil), .get(key: "a")], completion: r2.callback())
        XCTAssertTrue(r2.results.isEmpty, "t2 must wait for t1's exclusive lock")
        XCTAssertEqual(kv.lockWaitCount, 1)

        let ws = writeSet(kv.vote(txid: "t1"))
        try kv.commit([(txid: "t1", writeSet: ws, lsn: 7)])
        XCTAssertFalse(kv.hasBranch("t1"))
        XCTAssertEqual(try kv.get("a"), .int(15))
        // t2 resumed on the grant and saw t1's committed value; its timer was cancelled.
        XCTAssertEqual(success(r2.last)?.values, ["a": .int(16)])
        XCTAssertEqual(kv.lockWaitCount, 0)
        XCTAssertTrue(clock.tasks.isEmpty)
        clock.advance(1_000)
        XCTAssertEqual(r2.results.count, 1)
        XCTAssertEqual(try KVResource.decodeWriteSet(writeSet(kv.vote(txid: "t2"))).map(\.value), [.int(16)])
    }

    /// What an operator's view of a branch reads: its locked keys in the order taken, with mode
    /// and op kinds, cut at the limit with the total; and who holds and who waits for a key.
    func testHeldKeysAndLockersOfAKey() throws {
        let r1 = Recorder(), r2 = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "b", delta: 1, min: nil), .get(key: "a"), .set(key: "b", value: .int(3)), .set(key: "c", value: .int(1))],
                 completion: r1.callback())
        XCTAssertNotNil(success(r1.last))
        let all = kv.heldKeys("t1", limit: 10)
        XCTAssertEqual(all.total, 3)
        XCTAssertEqual(all.keys, [HeldKey(key: "b", mode: .exclusive, ops: ["add", "set"]), HeldKey(key: "a", mode: .shared, ops: ["get"]),
                                  HeldKey(key: "c", mode: .exclusive, ops: ["set"])])
        let cut = kv.heldKeys("t1", limit: 1)
        XCTAssertEqual(cut.keys.map(\.key), ["b"])
        XCTAssertEqual(cut.total, 3)
        kv.stage(txid: "t2", ops: [.set(key: "c", value: .int(2))], completion: r2.callback())
        let c = kv.lockers(of: "c")
        XCTAssertEqual(c.holders.map(\.owner), ["t1"])
        XCTAssertEqual(c.waiters, ["t2"])
        XCTAssertEqual(kv.heldKeys("t2", limit: 10).total, 0, "a waiter holds nothing")
        kv.abort(txid: "t1")
        XCTAssertEqual(kv.heldKeys("t1", limit: 10).total, 0)
        XCTAssertEqual(kv.lockers(of: "c").holders.map(\.owner), ["t2"])
        XCTAssertEqual(kv.lockers(of: "c").waiters, [])
        // Restored in doubt: only the write set survived, so its keys name no ops.
        try kv.restoreInDoubt(txid: "t3", writeSet: KVResource.encodeWriteSet([("d", .int(1))]))
        XCTAssertEqual(kv.heldKeys("t3", limit: 10).keys, [HeldKey(key: "d", mode: .exclusive, ops: [])])
    }

    func testLockWaitTimeout() throws {
        let r1 = Recorder(), r2 = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "k", value: .int(1))], completion: r1.callback())
        kv.stage(txid: "t2", ops: [.set(key: "other", value: .int(2)), .get(key: "k")], completion: r2.callback())
        clock.advance(99)
        XCTAssertTrue(r2.results.isEmpty)
        clock.advance(1)
        XCTAssertEqual(r2.results.count, 1)
        guard case .failure(.lockTimeout(let key))? = r2.last else { return XCTFail("want lockTimeout, got \(String(describing: r2.last))") }
        XCTAssertEqual(key, "k")
        XCTAssertEqual(kv.lockWaitCount, 0)
        // The failed call staged nothing (the set on "other" is rolled back), and the branch
        // votes no: it was read-only, and a client that committed after the failure committed
        // the transaction without this work (a black-box probe applied one side of a transfer).
        XCTAssertTrue(kv.hasBranch("t2"))
        guard case .no(let reason) = kv.vote(txid: "t2") else { return XCTFail("a branch whose work failed must vote no") }
        XCTAssertTrue(reason.contains("a work call of this branch failed (lock wait on key \"k\" timed out)"), reason)
        // A later call that succeeds does not undo that.
        let r3 = Recorder()
        kv.stage(txid: "t2", ops: [.set(key: "other", value: .int(3))], completion: r3.callback())
        XCTAssertNotNil(success(r3.last))
        guard case .no = kv.vote(txid: "t2") else { return XCTFail("still doomed") }
        // Releasing t1 later must not resume the timed-out call.
        kv.abort(txid: "t1")
        XCTAssertEqual(r2.results.count, 1)
    }

    func testQueuedCallsForOneTxidRunInOrder() {
        let r0 = Recorder(), r = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "k", value: .int(1))], completion: r0.callback())
        kv.stage(txid: "t2", ops: [.get(key: "k")], completion: r.callback())
        kv.stage(txid: "t2", ops: [.set(key: "j", value: .int(5)), .get(key: "j")], completion: r.callback())
        XCTAssertTrue(r.results.isEmpty, "second call waits behind the first")
        kv.abort(txid: "t1")
        XCTAssertEqual(r.results.count, 2)
        XCTAssertEqual(success(r.results[0])?.values, [:])
        XCTAssertEqual(success(r.results[1])?.values, ["j": .int(5)])
    }

    func testVoteNoWhenAddWouldGoBelowMin() throws {
        try seed([("bal", .int(10))])
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "bal", delta: -4, min: 0), .add(key: "bal", delta: -7, min: 0)], completion: r.callback())
        XCTAssertNotNil(success(r.last))
        guard case .no(let reason) = kv.vote(txid: "t1") else { return XCTFail("want no") }
        XCTAssertTrue(reason.contains("bal"), reason)
        kv.abort(txid: "t1")
        XCTAssertEqual(kv.lockedKeyCount, 0)

        // Exactly reaching min is fine; a missing key counts as 0.
        kv.stage(txid: "t2", ops: [.add(key: "bal", delta: -10, min: 0), .add(key: "new", delta: 3, min: 3)], completion: r.callback())
        let writes = try KVResource.decodeWriteSet(writeSet(kv.vote(txid: "t2")))
        XCTAssertEqual(writes.map(\.key), ["bal", "new"])
        XCTAssertEqual(writes.map(\.value), [.int(0), .int(3)])

        kv.stage(txid: "t3", ops: [.add(key: "missing", delta: -1, min: 0)], completion: r.callback())
        guard case .no = kv.vote(txid: "t3") else { return XCTFail("missing key counts as 0") }
    }

    func testVoteNoOnAddToStringAndOnOverflow() throws {
        try seed([("s", .string("text")), ("big", .int(Int64.max))])
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "s", delta: 1, min: nil)], completion: r.callback())
        guard case .no(let reason) = kv.vote(txid: "t1") else { return XCTFail("want no") }
        XCTAssertTrue(reason.contains("string"), reason)
        kv.stage(txid: "t2", ops: [.add(key: "big", delta: 1, min: nil)], completion: r.callback())
        guard case .no = kv.vote(txid: "t2") else { return XCTFail("want no on overflow") }
    }

    /// The vote reads a key's committed value from what the branch read under its lock, not
    /// from the store again; a branch reading more keys than it remembers still votes right.
    func testVoteReusesTheValuesReadUnderTheBranchsLocks() throws {
        final class CountingStore: KVStore {
            let inner = MemoryKVStore()
            var gets = 0
            func get(_ key: String) throws -> KVValue? { gets += 1; return try inner.get(key) }
            func scanPage(prefix: String, after: String?, limit: Int, bytesMax: Int) throws -> KVScanPage {
                try inner.scanPage(prefix: prefix, after: after, limit: limit, bytesMax: bytesMax)
            }
            func apply(_ commits: [KVCommit]) throws { try inner.apply(commits) }
            func appliedLSN() throws -> UInt64 { try inner.appliedLSN() }
            func makeDurable() throws { try inner.makeDurable() }
            func close() {}
        }
        let counting = CountingStore()
        let c = clock!
        let kv = KVResource(store: counting, schedule: { c.schedule($0, $1) }, lockWaitTimeoutMs: 100)
        let keys = (0..<20).map { "k\($0)" }
        try counting.apply([KVCommit(lsn: 1, writes: keys.map { ($0, .int(5)) })])
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.add(key: "k0", delta: -5, min: 0), .add(key: "k1", delta: -2, min: 0)], completion: r.callback())
        XCTAssertNotNil(success(r.last))
        XCTAssertEqual(counting.gets, 2)
        XCTAssertEqual(try KVResource.decodeWriteSet(writeSet(kv.vote(txid: "t1"))).map(\.value), [.int(0), .int(3)])
        XCTAssertEqual(counting.gets, 2, "the vote read nothing from the store")
        kv.abort(txid: "t1")

        counting.gets = 0
        kv.stage(txid: "t2", ops: keys.map { .add(key: $0, delta: -1, min: 0) } + [.add(key: "k19", delta: -5, min: 0)], completion: r.callback())
        XCTAssertNotNil(success(r.last))
        guard case .no(let reason) = kv.vote(txid: "t2") else { return XCTFail("k19 goes below 0") }
        XCTAssertTrue(reason.contains("k19"), reason)
        XCTAssertEqual(counting.gets, 20 + 20 - 8, "the first 8 keys remembered, the rest read again")
    }

    func testReadOnlyVote() throws {
        try seed([("a", .int(1))])
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.get(key: "a"), .get(key: "b")], completion: r.callback())
        XCTAssertEqual(kv.vote(txid: "t1"), .readOnly)
        XCTAssertEqual(kv.vote(txid: "never-seen"), .readOnly)
        XCTAssertEqual(kv.lockHolders("a"), [LockHolder(owner: "t1", mode: .shared)])
        kv.finishReadOnly(txid: "t1")
        XCTAssertEqual(kv.lockedKeyCount, 0)
        XCTAssertEqual(kv.branchCount, 0)
    }

    func testSetThenAddWriteSetHoldsAbsoluteValues() throws {
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "x", value: .int(5)), .add(key: "x", delta: 2, min: 7), .set(key: "y", value: .string("v")),
                                   .set(key: "y", value: .string("w"))], completion: r.callback())
        let ws = writeSet(kv.vote(txid: "t1"))
        let writes = try KVResource.decodeWriteSet(ws)
        XCTAssertEqual(writes.map(\.key), ["x", "y"])
        XCTAssertEqual(writes.map(\.value), [.int(7), .string("w")])
        // A repeated vote answers the same; further work is refused.
        XCTAssertEqual(kv.vote(txid: "t1"), .yes(writeSet: ws))
        kv.stage(txid: "t1", ops: [.get(key: "x")], completion: r.callback())
        guard case .failure(.invalid)? = r.last else { return XCTFail("work after prepare must fail") }
    }

    func testCommitAppliesAndReleasesIdempotently() throws {
        let r1 = Recorder(), r2 = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "a", value: .int(1))], completion: r1.callback())
        kv.stage(txid: "t2", ops: [.set(key: "b", value: .int(2))], completion: r2.callback())
        let ws1 = writeSet(kv.vote(txid: "t1")), ws2 = writeSet(kv.vote(txid: "t2"))
        XCTAssertEqual(kv.lockedKeyCount, 2)
        try kv.commit([(txid: "t1", writeSet: ws1, lsn: 10), (txid: "t2", writeSet: ws2, lsn: 11)])
        XCTAssertEqual(store.applyCount, 1, "one store transaction for the batch")
        XCTAssertEqual(try kv.get("a"), .int(1))
        XCTAssertEqual(try kv.get("b"), .int(2))
        XCTAssertEqual(try kv.appliedLSN(), 11)
        XCTAssertEqual(kv.lockedKeyCount, 0)
        XCTAssertEqual(kv.branchCount, 0)
        // Replaying an applied commit (after a crash) changes nothing.
        try store.apply([KVCommit(lsn: 12, writes: [("a", .int(100))])])
        try kv.commit([(txid: "t1", writeSet: ws1, lsn: 10)])
        XCTAssertEqual(try kv.get("a"), .int(100))
    }

    func testCommitFailureKeepsLocks() throws {
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "a", value: .int(1))], completion: r.callback())
        let ws = writeSet(kv.vote(txid: "t1"))
        store.failNextApply = KVError.storeFailed("disk full")
        XCTAssertThrowsError(try kv.commit([(txid: "t1", writeSet: ws, lsn: 1)]))
        XCTAssertTrue(kv.hasBranch("t1"))
        XCTAssertEqual(kv.lockHolders("a").map(\.owner), ["t1"])
        XCTAssertThrowsError(try kv.commit([(txid: "t1", writeSet: [9, 9], lsn: 1)]))
    }

    func testAbortReleasesAndFailsQueuedCalls() throws {
        try seed([("a", .int(1))])
        let r1 = Recorder(), r2 = Recorder(), r3 = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "a", value: .int(50))], completion: r1.callback())
        kv.stage(txid: "t2", ops: [.get(key: "a")], completion: r2.callback())
        kv.stage(txid: "t2", ops: [.get(key: "b")], completion: r2.callback())
        kv.stage(txid: "t3", ops: [.get(key: "a")], completion: r3.callback())
        XCTAssertEqual(kv.lockWaitCount, 2)
        // t2 gives up: its waiting and queued calls fail, t3 stays queued behind t1.
        kv.abort(txid: "t2")
        XCTAssertEqual(r2.results.count, 2)
        for res in r2.results { XCTAssertEqual(res, .failure(.branchFinished)) }
        XCTAssertTrue(r3.results.isEmpty)
        kv.abort(txid: "t1")
        XCTAssertEqual(try kv.get("a"), .int(1), "aborted writes are discarded")
        XCTAssertEqual(success(r3.last)?.values, ["a": .int(1)])
        kv.abort(txid: "unknown")
        XCTAssertEqual(kv.branchCount, 1)
        clock.advance(10_000)
        XCTAssertEqual(r2.results.count, 2)
        XCTAssertEqual(r3.results.count, 1)
    }

    func testRestoreInDoubtBlocksOthers() throws {
        let ws = KVResource.encodeWriteSet([("a", .int(7)), ("b", .string("x"))])
        try kv.restoreInDoubt(txid: "doubt", writeSet: ws)
        XCTAssertTrue(kv.isPrepared("doubt"))
        XCTAssertEqual(kv.vote(txid: "doubt"), .yes(writeSet: ws))
        XCTAssertThrowsError(try kv.restoreInDoubt(txid: "other", writeSet: KVResource.encodeWriteSet([("b", .int(1))])))
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.get(key: "b")], completion: r.callback())
        XCTAssertTrue(r.results.isEmpty)
        try kv.commit([(txid: "doubt", writeSet: ws, lsn: 3)])
        XCTAssertEqual(success(r.last)?.values, ["b": .string("x")])
    }

    func testLockRefusedWhenWaitersFull() {
        let c = clock!
        kv = KVResource(store: store, schedule: { c.schedule($0, $1) }, lockWaitTimeoutMs: 100, lockWaitersPerKeyMax: 1)
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "k", value: .int(1))], completion: r.callback())
        kv.stage(txid: "t2", ops: [.get(key: "k")], completion: r.callback())
        kv.stage(txid: "t3", ops: [.get(key: "k")], completion: r.callback())
        guard case .failure(.lockRefused(let key, _))? = r.last else { return XCTFail("want lockRefused") }
        XCTAssertEqual(key, "k")
    }

    func testInvalidOpsAreRejected() {
        let r = Recorder()
        kv.stage(txid: "t1", ops: [.get(key: "")], completion: r.callback())
        guard case .failure(.invalid)? = r.last else { return XCTFail("want invalid") }
        XCTAssertFalse(kv.hasBranch("t1"))
    }

    func testBranchOpLimitAndWriteSetLimit() throws {
        let r = Recorder()
        let batch = Array(repeating: KVOp.get(key: "a"), count: Limits.opsPerWorkMax)
        for _ in 0..<(Limits.opsPerBranchMax / Limits.opsPerWorkMax) {
            kv.stage(txid: "t1", ops: batch, completion: r.callback())
        }
        XCTAssertNotNil(success(r.last))
        kv.stage(txid: "t1", ops: [.get(key: "a")], completion: r.callback())
        guard case .failure(.invalid)? = r.last else { return XCTFail("op limit per branch") }

        // A write set over the limit is refused as it stages (it could never prepare), not
        // kept in memory until the vote: one call under the limit stages, the one that would
        // pass it fails and dooms the branch.
        let big = String(repeating: "x", count: Limits.stringValueBytesMax)
        let n = KVResource.writeSetBytesMax / (big.utf8.count + 32)
        kv.stage(txid: "t2", ops: (0..<n).map { .set(key: "k\($0)", value: .string(big)) }, completion: r.callback())
        XCTAssertNotNil(success(r.last))
        let before = kv.stagedBytesTotal
        kv.stage(txid: "t2", ops: [.set(key: "last", value: .string(big))], completion: r.callback())
        guard case .failure(.invalid(let m))? = r.last else { return XCTFail("write-set limit as it stages: \(String(describing: r.last))") }
        XCTAssertTrue(m.contains("over the write-set limit") && m.contains("could never prepare"), m)
        XCTAssertEqual(kv.stagedBytesTotal, before, "the refused call holds nothing")
        guard case .no(let reason) = kv.vote(txid: "t2") else { return XCTFail("a doomed branch votes no") }
        XCTAssertTrue(reason.contains("could never prepare"), reason)
    }

    /// All branches' staged work is bounded too: past it a call is refused 503-style
    /// (`overloaded`), and the bytes come back when branches end.
    func testStagedWorkOfAllBranchesIsBounded() throws {
        let c = clock!
        let small = KVResource(store: store, schedule: { c.schedule($0, $1) }, lockWaitTimeoutMs: 100, stagedBytesMax: 1_000)
        let r = Recorder()
        let value = String(repeating: "v", count: 580)
        small.stage(txid: "t1", ops: [.set(key: "a", value: .string(value))], completion: r.callback())
        XCTAssertNotNil(success(r.last))
        XCTAssertEqual(small.stagedBytesTotal, 1 + 580 + 16)
        small.stage(txid: "t2", ops: [.set(key: "b", value: .string(value))], completion: r.callback())
        guard case .failure(.overloaded(let m))? = r.last else { return XCTFail("bounded: \(String(describing: r.last))") }
        XCTAssertTrue(m.contains("597 bytes of staged work (limit 1000)"), m)
        XCTAssertFalse(small.hasBranch("t2") && small.isPrepared("t2"))
        small.abort(txid: "t1")
        small.abort(txid: "t2")
        XCTAssertEqual(small.stagedBytesTotal, 0, "ended branches give their bytes back")
        small.stage(txid: "t3", ops: [.set(key: "b", value: .string(value))], completion: r.callback())
        XCTAssertNotNil(success(r.last))
    }

    /// A branch a restart brings back in doubt holds its write set's bytes like staged work:
    /// uncounted, a restarted agent took a whole bound of new work beside them, and its
    /// checkpoint (every prepared write set) grew past what a snapshot may hold (a review).
    func testABranchRestoredInDoubtCountsAgainstTheStagedBound() throws {
        let c = clock!
        let small = KVResource(store: store, schedule: { c.schedule($0, $1) }, lockWaitTimeoutMs: 100, stagedBytesMax: 1_000)
        let writeSet = KVResource.encodeWriteSet([("a", .string(String(repeating: "v", count: 900)))])
        try small.restoreInDoubt(txid: "t1", writeSet: writeSet)
        XCTAssertEqual(small.stagedBytesTotal, writeSet.count)
        let r = Recorder()
        small.stage(txid: "t2", ops: [.set(key: "b", value: .string(String(repeating: "w", count: 200)))], completion: r.callback())
        guard case .failure(.overloaded)? = r.last else { return XCTFail("bounded beside the restored branch: \(String(describing: r.last))") }
        small.abort(txid: "t2")
        try small.commit([(txid: "t1", writeSet: writeSet, lsn: 7)])
        XCTAssertEqual(small.stagedBytesTotal, 0, "the restored branch gives its bytes back when it ends")
    }

    func testCompletionMayAbortReentrantly() {
        let r2 = Recorder()
        kv.stage(txid: "t1", ops: [.set(key: "k", value: .int(1))]) { _ in }
        kv.stage(txid: "t2", ops: [.get(key: "k")]) { [unowned self] res in
            r2.results.append(res)
            self.kv.abort(txid: "t2")
        }
        kv.stage(txid: "t3", ops: [.set(key: "k", value: .int(3))], completion: r2.callback())
        kv.abort(txid: "t1")
        // t2 was granted, aborted itself from its completion, and t3 got the lock.
        XCTAssertEqual(r2.results.count, 2)
        XCTAssertEqual(kv.lockHolders("k"), [LockHolder(owner: "t3", mode: .exclusive)])
    }
}
