import XCTest
@testable import CohortKV

final class LockTableTests: XCTestCase {
    func testSharedLocksAreCompatible() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.holders("k").map(\.owner), ["a", "b"])
        XCTAssertEqual(t.waiterCount, 0)
    }

    func testExclusiveBlocksSharedAndExclusive() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .shared), .waiting)
        XCTAssertEqual(t.acquire(owner: "c", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.waiterCount, 2)
        // A shared holder blocks an exclusive request too.
        XCTAssertEqual(t.acquire(owner: "a", key: "j", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "d", key: "j", mode: .exclusive), .waiting)
        // Other keys are independent.
        XCTAssertEqual(t.acquire(owner: "b", key: "other", mode: .exclusive), .granted)
    }

    func testReentrantForSameOwner() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .granted)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .granted)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.holders("k"), [LockHolder(owner: "a", mode: .exclusive)])
        XCTAssertEqual(t.keysHeld(by: "a"), ["k"])
    }

    func testFIFOGrantOrderAndNoBarging() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "x", key: "k", mode: .exclusive), .waiting)
        // A shared request is compatible with the holder but must queue behind the exclusive waiter.
        XCTAssertEqual(t.acquire(owner: "s1", key: "k", mode: .shared), .waiting)
        XCTAssertEqual(t.acquire(owner: "s2", key: "k", mode: .shared), .waiting)
        XCTAssertEqual(t.acquire(owner: "y", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.waiters("k"), ["x", "s1", "s2", "y"])

        XCTAssertEqual(t.releaseAll(owner: "a"), [LockGrant(owner: "x", key: "k", mode: .exclusive)])
        XCTAssertEqual(
            t.releaseAll(owner: "x"),
            [LockGrant(owner: "s1", key: "k", mode: .shared), LockGrant(owner: "s2", key: "k", mode: .shared)])
        XCTAssertEqual(t.releaseAll(owner: "s1"), [])
        XCTAssertEqual(t.releaseAll(owner: "s2"), [LockGrant(owner: "y", key: "k", mode: .exclusive)])
        XCTAssertEqual(t.releaseAll(owner: "y"), [])
        XCTAssertEqual(t.keyCount, 0)
        XCTAssertEqual(t.ownerCount, 0)
        XCTAssertEqual(t.waiterCount, 0)
    }

    func testUpgradeImmediateWhenSoleHolder() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .granted)
        XCTAssertEqual(t.mode(of: "a", on: "k"), .exclusive)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .shared), .waiting)
    }

    func testUpgradeWaitsForOtherSharedHoldersAndGoesFirst() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "c", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.waiters("k"), ["a", "c"])
        XCTAssertEqual(t.releaseAll(owner: "b"), [LockGrant(owner: "a", key: "k", mode: .exclusive)])
        XCTAssertEqual(t.holders("k"), [LockHolder(owner: "a", mode: .exclusive)])
        XCTAssertEqual(t.keysHeld(by: "a"), ["k"])
        XCTAssertEqual(t.releaseAll(owner: "a"), [LockGrant(owner: "c", key: "k", mode: .exclusive)])
    }

    func testSecondUpgraderIsRefusedAsDeadlock() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .waiting)
        guard case .refused(let reason) = t.acquire(owner: "b", key: "k", mode: .exclusive) else {
            return XCTFail("second upgrade must be refused")
        }
        XCTAssertTrue(reason.contains("deadlock"), reason)
        // b gives up: a gets its upgrade.
        XCTAssertEqual(t.releaseAll(owner: "b"), [LockGrant(owner: "a", key: "k", mode: .exclusive)])
    }

    func testWaiterLimitRefuses() {
        var t = LockTable(waitersPerKeyMax: 2)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.acquire(owner: "c", key: "k", mode: .shared), .waiting)
        guard case .refused = t.acquire(owner: "d", key: "k", mode: .shared) else {
            return XCTFail("third waiter must be refused")
        }
        XCTAssertEqual(t.waiters("k"), ["b", "c"])
        XCTAssertEqual(t.waiterCount, 2)
    }

    func testCancelWaitMovesQueue() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "x", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.acquire(owner: "s", key: "k", mode: .shared), .waiting)
        // The exclusive waiter leaving lets the shared waiter in beside the shared holder.
        XCTAssertEqual(t.cancelWait(owner: "x", key: "k"), [LockGrant(owner: "s", key: "k", mode: .shared)])
        XCTAssertEqual(t.waiterCount, 0)
        XCTAssertEqual(t.keysAwaited(by: "x"), [])
        XCTAssertEqual(t.cancelWait(owner: "x", key: "k"), [])
    }

    func testCancelledUpgradeKeepsSharedLock() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k", mode: .shared), .granted)
        XCTAssertEqual(t.acquire(owner: "a", key: "k", mode: .exclusive), .waiting)
        XCTAssertEqual(t.cancelWait(owner: "a", key: "k"), [])
        XCTAssertEqual(t.mode(of: "a", on: "k"), .shared)
    }

    func testReleaseAllGrantsAcrossKeysAndDropsWaits() {
        var t = LockTable()
        XCTAssertEqual(t.acquire(owner: "a", key: "k1", mode: .exclusive), .granted)
        XCTAssertEqual(t.acquire(owner: "a", key: "k2", mode: .exclusive), .granted)
        XCTAssertEqual(t.acquire(owner: "b", key: "k2", mode: .shared), .waiting)
        XCTAssertEqual(t.acquire(owner: "c", key: "k1", mode: .shared), .waiting)
        XCTAssertEqual(t.acquire(owner: "d", key: "k1", mode: .exclusive), .waiting)
        // d leaving while it waits must not leave it queued.
        XCTAssertEqual(t.releaseAll(owner: "d"), [])
        XCTAssertEqual(t.waiters("k1"), ["c"])
        XCTAssertEqual(
            t.releaseAll(owner: "a"),
            [LockGrant(owner: "c", key: "k1", mode: .shared), LockGrant(owner: "b", key: "k2", mode: .shared)])
        XCTAssertEqual(t.keysHeld(by: "a"), [])
        XCTAssertEqual(t.keysHeld(by: "b"), ["k2"])
    }
}
