import CohortCore
@testable import CohortOutbox
import XCTest

/// The relay's decisions, driven by hand: no database, no sink, no clock.
final class RelayMachineTests: XCTestCase {
    func msg(_ id: Int64, _ key: String, attempts: Int = 0) -> OutboxMessage {
        OutboxMessage(id: id, source: "s", topic: "t", key: key, payload: "p\(id)", createdMs: 0, attempts: attempts)
    }

    /// A machine holding the lease (token 7) that has loaded `rows`; returns it and the actions of the load.
    func started(_ rows: [OutboxMessage], config: RelayConfig = RelayConfig(), dead: [String: Int64] = [:], seed: UInt64 = 1)
        -> (RelayMachine, [RelayAction]) {
        var m = RelayMachine(config: config, seed: seed)
        XCTAssertEqual(m.on(.start(nowMs: 0)), [.acquireLease])
        let a = m.on(.leaseAcquired(token: 7, nowMs: 0))
        XCTAssertEqual(a, [.load(afterID: 0, limit: config.loadRowsMax)])
        let out = m.on(.loaded(afterID: 0, rows: rows, deadKeys: dead, nowMs: 0))
        return (m, out)
    }

    func delivers(_ actions: [RelayAction]) -> [(Int, [Int64])] {
        actions.compactMap { if case .deliver(let b, let ms) = $0 { return (b, ms.map(\.id)) }; return nil }
    }

    func testOneMessagePerKeyInFlightAndNextOnlyAfterRecorded() {
        var (m, out) = started([msg(1, "a"), msg(2, "a"), msg(3, "b")])
        let d = delivers(out)
        XCTAssertEqual(d.count, 1)
        XCTAssertEqual(d[0].1, [1, 3], "one batch, the head of each key")
        // The sink acknowledges: the result is recorded first, and only then does a's next go.
        out = m.on(.delivered(batch: d[0].0, outcomes: [.acknowledged, .acknowledged], nowMs: 1))
        XCTAssertEqual(out, [.record(batch: d[0].0, write: RelayWrite(delivered: [1, 3]), token: 7)])
        XCTAssertTrue(delivers(out).isEmpty, "nothing more before the record is durable")
        out = m.on(.recorded(batch: d[0].0, applied: true, nowMs: 2))
        XCTAssertEqual(delivers(out).map(\.1), [[2]])
        XCTAssertEqual(m.deliveredTotal, 2)
    }

    func testBatchesAreCappedAndRunInParallel() {
        var config = RelayConfig()
        config.batchMessagesMax = 3
        config.batchesInFlightMax = 2
        let rows = (1...10).map { msg(Int64($0), "k\($0)") }
        let (m, out) = started(rows, config: config)
        XCTAssertEqual(delivers(out).map(\.1), [[1, 2, 3], [4, 5, 6]])
        XCTAssertEqual(m.inFlightBatches, 2)
    }

    /// Batches are capped by encoded bytes too (the consumer refuses bodies over 1 MiB); a
    /// message larger than the bound alone still goes, alone.
    func testBatchesAreCappedByBytes() {
        var config = RelayConfig()
        config.batchBytesMax = 1000
        func sized(_ id: Int64, _ key: String, _ n: Int) -> OutboxMessage {
            OutboxMessage(id: id, source: "s", topic: "t", key: key, payload: String(repeating: "x", count: n), createdMs: 0)
        }
        // Each 300-byte payload is about 390 bytes of JSON: two fit in 1000, three do not.
        let rows = [sized(1, "a", 300), sized(2, "b", 300), sized(3, "c", 300), sized(4, "d", 2000), sized(5, "e", 10)]
        let (_, out) = started(rows, config: config)
        let batches = out.compactMap { if case .deliver(_, let ms) = $0 { return ms }; return nil }
        XCTAssertEqual(batches.map { $0.map(\.id) }, [[1, 2], [3], [4], [5]])
        for b in batches where b.count > 1 {
            XCTAssertLessThanOrEqual(b.reduce(OutboxBatchBytes.envelope) { $0 + OutboxBatchBytes.cost($1) }, 1000)
        }
    }

    /// HTTP 413 for a batch is not the messages' fault: nothing counted, sent again in batches
    /// half the size.
    func testTooLargeSplitsTheBatchAndCountsNothing() {
        var config = RelayConfig()
        config.batchesInFlightMax = 1
        let rows = (1...4).map { OutboxMessage(id: Int64($0), source: "s", topic: "t", key: "k\($0)", payload: String(repeating: "x", count: 300), createdMs: 0) }
        var (m, out) = started(rows, config: config)
        let b = delivers(out)[0]
        XCTAssertEqual(b.1, [1, 2, 3, 4])
        out = m.on(.sinkTooLarge(batch: b.0, reason: "HTTP 413", nowMs: 1))
        XCTAssertEqual(delivers(out).map(\.1), [[1, 2]], "half the size, at once")
        XCTAssertEqual(m.failedTotal, 0)
        XCTAssertEqual(m.sinkDownTotal, 0)
        let b2 = delivers(out)[0].0
        _ = m.on(.delivered(batch: b2, outcomes: [.acknowledged, .acknowledged], nowMs: 1))
        XCTAssertEqual(delivers(m.on(.recorded(batch: b2, applied: true, nowMs: 1))).map(\.1), [[3, 4]])
    }

    /// A batch the sink refused whole (HTTP 400 for one bad message in it) counted an attempt
    /// against every message: the other keys' heads died with the bad one. Now it goes again in
    /// halves, nothing counted, the halves before any new batch and within the calls in flight,
    /// down to the message alone, whose refusal alone counts; a key's next message waits for its
    /// head's half to be recorded.
    func testABatchRefusedWholeIsSplitUntilTheMessageAtFaultIsAlone() {
        var config = RelayConfig()
        config.batchesInFlightMax = 2
        config.attemptsMax = 1
        // k3 is at fault (msg 3); k1 has a second message waiting behind its head.
        let rows = [msg(1, "k1"), msg(2, "k2"), msg(3, "k3"), msg(4, "k4"), msg(5, "k1")]
        var (m, out) = started(rows, config: config)
        let b = delivers(out)[0]
        XCTAssertEqual(b.1, [1, 2, 3, 4])
        out = m.on(.sinkRefusedWhole(batch: b.0, reason: "HTTP 400 for the whole batch", nowMs: 1))
        let halves = delivers(out)
        XCTAssertEqual(halves.map(\.1), [[1, 2], [3, 4]], "in halves, at once")
        guard halves.count == 2 else { return }
        XCTAssertEqual(m.failedTotal, 0)
        XCTAssertEqual(m.sinkDownTotal, 0, "not an outage: no backoff")
        // The first half is taken; k1's next message goes only once that is recorded.
        _ = m.on(.delivered(batch: halves[0].0, outcomes: [.acknowledged, .acknowledged], nowMs: 2))
        out = m.on(.recorded(batch: halves[0].0, applied: true, nowMs: 2))
        XCTAssertEqual(delivers(out).map(\.1), [[5]])
        let next = delivers(out)[0].0
        // The second half is refused whole again: its halves wait for a free call (two in flight).
        XCTAssertTrue(delivers(m.on(.sinkRefusedWhole(batch: halves[1].0, reason: "HTTP 400", nowMs: 3))).map(\.1) == [[3]])
        XCTAssertEqual(m.inFlightBatches, 2)
        _ = m.on(.delivered(batch: next, outcomes: [.acknowledged], nowMs: 4))
        out = m.on(.recorded(batch: next, applied: true, nowMs: 4))
        XCTAssertEqual(delivers(out).map(\.1), [[4]], "the other half once a call is free")
        let lone4 = delivers(out)[0].0
        let lone3 = m.batches.keys.first { $0 != lone4 }!
        // Alone, the message at fault is refused (a sink that answers a lone message whole too).
        out = m.on(.sinkRefusedWhole(batch: lone3, reason: "HTTP 400", nowMs: 5))
        XCTAssertEqual(out, [.record(batch: lone3, write: RelayWrite(dead: [.init(id: 3, attempts: 1, error: "HTTP 400")]), token: 7)])
        _ = m.on(.delivered(batch: lone4, outcomes: [.acknowledged], nowMs: 5))
        _ = m.on(.recorded(batch: lone3, applied: true, nowMs: 6))
        _ = m.on(.recorded(batch: lone4, applied: true, nowMs: 6))
        XCTAssertEqual(m.deliveredTotal, 4)
        XCTAssertEqual(m.deadTotal, 1, "only the message at fault")
        XCTAssertEqual(m.refusedWholeTotal, 3)
        XCTAssertEqual(m.inFlightBatches, 0)
    }

    /// A 500 for a batch of several messages may be an outage or one message the consumer fails
    /// on: the relay backs off as for an outage (nothing counted), then sends the batch in halves,
    /// so the other keys get through; a message alone answered 500 is unavailable (its key goes
    /// back to the ready ones, nothing counted). Sent again whole, the batch failed for ever.
    func testABatchFailedWholeBacksOffThenGoesInHalves() {
        var config = RelayConfig()
        config.sinkDownDelayMsMin = 100
        config.sinkDownDelayMsMax = 100
        var (m, out) = started([msg(1, "k1"), msg(2, "k2"), msg(3, "k3")], config: config)
        let b = delivers(out)[0]
        out = m.on(.sinkFailedWhole(batch: b.0, reason: "HTTP 500", nowMs: 10))
        XCTAssertTrue(delivers(out).isEmpty, "not before the outage backoff")
        XCTAssertEqual(m.sinkDownTotal, 1)
        XCTAssertTrue(delivers(m.on(.tick(nowMs: 20))).isEmpty)
        let halves = delivers(m.on(.tick(nowMs: 200)))
        XCTAssertEqual(halves.map(\.1), [[1], [2, 3]])
        guard halves.count == 2 else { return }
        _ = m.on(.sinkFailedWhole(batch: halves[1].0, reason: "HTTP 500", nowMs: 210))
        // Alone, k1's message fails too: unavailable, back with the ready keys, nothing counted.
        _ = m.on(.sinkFailedWhole(batch: halves[0].0, reason: "HTTP 500", nowMs: 210))
        XCTAssertEqual(m.inFlightBatches, 0)
        let next = delivers(m.on(.tick(nowMs: 400))).map(\.1)
        XCTAssertEqual(next, [[2], [3], [1]], "the halves first, then the ready key")
        XCTAssertEqual(m.failedTotal, 0)
        XCTAssertEqual(m.deadTotal, 0)
    }

    /// A message alone that the sink fails on (500) while it acknowledged another call since
    /// it went out is the message's trouble: its key backs off on its own (growing, nothing
    /// counted) and sends it alone from then on, and the relay does not back off as a whole.
    /// Batched again, it made its batch fail and be halved, with a relay-wide backoff at each
    /// step, each time it was retried: many such messages slowed every key.
    func testAMessageFailingAloneWhileTheSinkWorksBacksOffItsKeyAndGoesAlone() {
        var config = RelayConfig()
        config.retryDelayMsMin = 100
        config.retryDelayMsMax = 100_000
        var (m, out) = started([msg(1, "bad"), msg(2, "k2"), msg(3, "k3"), msg(5, "k2"), msg(6, "k3")], config: config)
        let b = delivers(out)[0]
        XCTAssertEqual(b.1, [1, 2, 3])
        _ = m.on(.sinkFailedWhole(batch: b.0, reason: "HTTP 500", nowMs: 10))
        let halves = delivers(m.on(.tick(nowMs: 1000)))
        XCTAssertEqual(halves.map(\.1), [[1], [2, 3]])
        guard halves.count == 2 else { return }
        // The other half is taken (k2 and k3 send their next), then the message alone fails:
        // the sink is up, it is the message.
        _ = m.on(.delivered(batch: halves[1].0, outcomes: [.acknowledged, .acknowledged], nowMs: 1001))
        let b3 = delivers(m.on(.recorded(batch: halves[1].0, applied: true, nowMs: 1001)))
        XCTAssertEqual(b3.map(\.1), [[5, 6]])
        let down = m.sinkDownTotal
        // Written as a failure that keeps its attempts (0), so the row shows the error.
        XCTAssertEqual(m.on(.sinkFailedWhole(batch: halves[0].0, reason: "HTTP 500", nowMs: 1002)),
                       [.record(batch: halves[0].0, write: RelayWrite(failed: [.init(id: 1, attempts: 0, error: "HTTP 500")]), token: 7)])
        XCTAssertTrue(delivers(m.on(.recorded(batch: halves[0].0, applied: true, nowMs: 1002))).isEmpty,
                      "not again before its key's backoff")
        XCTAssertEqual(m.sinkDownTotal, down, "no relay-wide backoff")
        XCTAssertEqual(m.deadTotal, 0, "no attempt counted")
        XCTAssertEqual(m.queues["bad"]?.first?.attempts, 0, "no attempt counted")
        XCTAssertEqual(m.queues["bad"]?.failuresAlone, 1)
        // k2 and k3 are deferred too (busy consumer rows): all three are due at the same tick.
        guard let b3id = b3.first?.0 else { return }
        _ = m.on(.delivered(batch: b3id, outcomes: [.deferred("busy"), .deferred("busy")], nowMs: 1002))
        _ = m.on(.recorded(batch: b3id, applied: true, nowMs: 1002))
        let sent = delivers(m.on(.tick(nowMs: 5000))).map(\.1)
        XCTAssertEqual(Set(sent.map(Set.init)), [[1], [5, 6]], "the message that fails alone goes alone; the others batch together")
        // The failure it was is forgotten once its key moves on.
        guard let lone = delivers(m.on(.tick(nowMs: 5000))).first ?? m.batches.first(where: { $0.value.messages.map(\.id) == [1] }).map({ ($0.key, [1]) }) else { return }
        _ = m.on(.delivered(batch: lone.0, outcomes: [.acknowledged], nowMs: 5001))
        _ = m.on(.recorded(batch: lone.0, applied: true, nowMs: 5001))
        XCTAssertNil(m.queues["bad"], "delivered at last")
    }

    /// Halves waiting to be sent belong to the lease: a lost lease drops them with the rest.
    func testHalvesOfARefusedBatchAreDroppedWithTheLease() {
        var config = RelayConfig()
        config.batchesInFlightMax = 1
        var (m, out) = started([msg(1, "a"), msg(2, "b"), msg(3, "c")], config: config)
        let b = delivers(out)[0]
        out = m.on(.sinkRefusedWhole(batch: b.0, reason: "HTTP 400", nowMs: 1))
        XCTAssertEqual(delivers(out).map(\.1), [[1]])
        XCTAssertEqual(m.splits.map { $0.map(\.id) }, [[2, 3]])
        _ = m.on(.leaseLost(nowMs: 2))
        XCTAssertTrue(m.splits.isEmpty)
        XCTAssertEqual(m.inFlightBatches, 0)
    }

    /// One 413 halved the batch bytes for good (until the relay restarted): a proxy's limit
    /// lowered for a minute slowed the relay for its lifetime. Now the bound doubles again, up to
    /// the configured size, after `Limits.outboxBatchBytesRegrowAfterBatches` batches in a row
    /// get through whole; a 413 before that starts the count over, so a sink that keeps
    /// refusing keeps the batches small.
    func testABatchBoundLoweredByA413GrowsBackOnlyAfterBatchesGetThrough() {
        var config = RelayConfig()
        config.batchesInFlightMax = 1
        config.batchBytesMax = 2000
        let n = Limits.outboxBatchBytesRegrowAfterBatches
        // Ids of four digits: every message the same size.
        let rows = (1000..<4000).map { OutboxMessage(id: Int64($0), source: "s", topic: "t", key: "k\($0)", payload: String(repeating: "x", count: 100), createdMs: 0) }
        var (m, out) = started(rows, config: config)
        var batch = delivers(out)[0]
        let fullCount = batch.1.count
        XCTAssertGreaterThan(fullCount, 4)
        func take(_ b: (Int, [Int64])) -> (Int, [Int64]) {
            _ = m.on(.delivered(batch: b.0, outcomes: b.1.map { _ in .acknowledged }, nowMs: 1))
            return delivers(m.on(.recorded(batch: b.0, applied: true, nowMs: 1)))[0]
        }
        func refuse(_ b: (Int, [Int64])) -> (Int, [Int64]) {
            delivers(m.on(.sinkTooLarge(batch: b.0, reason: "HTTP 413", nowMs: 1)))[0]
        }
        batch = refuse(batch)
        let halved = m.batchBytesLimit
        XCTAssertLessThan(halved, config.batchBytesMax)
        XCTAssertLessThan(batch.1.count, fullCount)
        // A 413 again before enough batches got through: smaller still, and the count starts over.
        for _ in 1..<n { batch = take(batch) }
        XCTAssertEqual(m.batchBytesLimit, halved, "not before \(n) batches in a row")
        XCTAssertGreaterThan(batch.1.count, 1)
        batch = refuse(batch)
        let small = m.batchBytesLimit
        XCTAssertLessThan(small, halved)
        for _ in 1..<n { batch = take(batch) }
        XCTAssertEqual(m.batchBytesLimit, small, "a repeated 413 keeps it small")
        // Batches that get through bring it back, doubling every n, to the configured size.
        var taken = n - 1
        while m.batchBytesLimit < config.batchBytesMax && taken < 10 * n {
            batch = take(batch)
            taken += 1
        }
        XCTAssertEqual(m.batchBytesLimit, config.batchBytesMax, "back to the full size after \(taken) batches")
        XCTAssertGreaterThanOrEqual(taken, 2 * n, "doubling once per \(n) batches: twice from a quarter")
        batch = take(batch)
        XCTAssertEqual(batch.1.count, fullCount, "full batches again")
        XCTAssertEqual(m.failedTotal, 0)
    }

    func testSinkDownCountsNoAttemptAndBacksOff() {
        var (m, out) = started([msg(1, "a")])
        let b = delivers(out)[0].0
        out = m.on(.sinkUnavailable(batch: b, reason: "connection refused", nowMs: 10))
        XCTAssertTrue(out.isEmpty)
        XCTAssertTrue(delivers(m.on(.tick(nowMs: 10))).isEmpty, "backs off")
        let later = delivers(m.on(.tick(nowMs: 10 + Limits.outboxSinkDownDelayMsMax)))
        XCTAssertEqual(later.count, 1)
        XCTAssertEqual(later[0].1, [1])
        // Still zero attempts: a broker outage never turns messages into dead letters.
        out = m.on(.delivered(batch: later[0].0, outcomes: [.rejected("bad")], nowMs: 3000))
        XCTAssertEqual(out, [.record(batch: later[0].0, write: RelayWrite(failed: [.init(id: 1, attempts: 1, error: "bad")]), token: 7)])
    }

    /// A read of the table that fails (a damaged database) is tried again with backoff, not at
    /// every 20 ms poll (a black-box probe saw the same error written 50 times a second without
    /// end), and a read that works again resets it.
    func testAFailedReadOfTheTableBacksOff() {
        var m = RelayMachine(config: RelayConfig(), seed: 1)
        _ = m.on(.start(nowMs: 0))
        XCTAssertEqual(m.on(.leaseAcquired(token: 7, nowMs: 0)), [.load(afterID: 0, limit: RelayConfig().loadRowsMax)])
        var now: Int64 = 0
        var reads = 0
        // Ten seconds of ticks every 20 ms, every read failing.
        var out = m.on(.loadFailed(nowMs: now))
        while now < 10_000 {
            now += 20
            out = m.on(.tick(nowMs: now))
            if out.contains(where: { if case .load = $0 { return true }; return false }) {
                reads += 1
                out = m.on(.loadFailed(nowMs: now))
            }
        }
        XCTAssertEqual(m.storeReadFailuresTotal, UInt64(reads + 1))
        XCTAssertGreaterThan(m.storeReadFailuresInARow, 3)
        XCTAssertLessThan(reads, 20, "backed off: \(reads) reads in 10 s, not 500")
        XCTAssertGreaterThan(reads, 2, "and still tried")
        // It works again: loaded, and the next poll reads at the usual pace.
        now += Limits.outboxStoreRetryDelayMsMax
        out = m.on(.tick(nowMs: now))
        guard out.contains(where: { if case .load = $0 { return true }; return false }) else { return XCTFail("no read after the longest backoff: \(out)") }
        _ = m.on(.loaded(afterID: 0, rows: [], deadKeys: [:], nowMs: now))
        XCTAssertEqual(m.storeReadFailuresInARow, 0)
    }

    /// A message the sink did not take for the server's reasons (a Redis error reply) counts no
    /// attempt, however often: the acknowledged ones of its batch are recorded, the relay backs
    /// off as for an unreachable sink, and the message is never a dead letter.
    func testNotTakenCountsNoAttemptAndBacksOff() {
        var config = RelayConfig()
        config.attemptsMax = 2
        var (m, out) = started([msg(1, "a"), msg(2, "b")], config: config)
        var now: Int64 = 0
        var b = delivers(out)[0]
        XCTAssertEqual(b.1, [1, 2])
        out = m.on(.delivered(batch: b.0, outcomes: [.acknowledged, .notTaken("XADD: OOM command not allowed")], nowMs: now))
        XCTAssertEqual(out, [.record(batch: b.0, write: RelayWrite(delivered: [1]), token: 7)])
        XCTAssertTrue(delivers(m.on(.recorded(batch: b.0, applied: true, nowMs: now))).isEmpty, "backs off")
        XCTAssertEqual(m.lastSinkError, "XADD: OOM command not allowed")
        for _ in 1...5 {
            var next: [(Int, [Int64])] = []
            while next.isEmpty {
                now += 1
                next = delivers(m.on(.tick(nowMs: now)))
            }
            b = next[0]
            XCTAssertEqual(b.1, [2])
            out = m.on(.delivered(batch: b.0, outcomes: [.notTaken("XADD: LOADING")], nowMs: now))
            XCTAssertEqual(out, [.record(batch: b.0, write: RelayWrite(), token: 7)], "no attempt, no dead letter")
            _ = m.on(.recorded(batch: b.0, applied: true, nowMs: now))
        }
        XCTAssertEqual(m.failedTotal, 0)
        XCTAssertEqual(m.deadTotal, 0)
        XCTAssertEqual(m.sinkDownTotal, 6)
    }

    /// Every Redis error reply to XADD describes the server (the id is `*`), so none refuses a
    /// message; an all-error pipeline makes the batch unavailable.
    func testRedisErrorRepliesAreNotRefusals() {
        let ok = RESPValue.bulk(Array("1-0".utf8))
        guard case .outcomes(let o) = RedisStreamSink.interpret([ok, .error("OOM command not allowed when used memory > 'maxmemory'."), .error("READONLY You can't write against a read only replica.")], count: 3) else {
            return XCTFail("mixed replies are per message")
        }
        XCTAssertEqual(o, [.acknowledged, .notTaken("XADD: OOM command not allowed when used memory > 'maxmemory'."),
                           .notTaken("XADD: READONLY You can't write against a read only replica.")])
        guard case .unavailable(let why) = RedisStreamSink.interpret([.error("LOADING Redis is loading the dataset in memory")], count: 1) else {
            return XCTFail("nothing taken: unavailable")
        }
        XCTAssertEqual(why, "XADD: LOADING Redis is loading the dataset in memory")
        guard case .unavailable = RedisStreamSink.interpret([.integer(3)], count: 1) else { return XCTFail("an unexpected reply takes nothing") }
    }

    func testRefusalsBackOffWithSeededJitterThenDeadLetterBlocksTheKeyOnly() {
        var config = RelayConfig()
        config.attemptsMax = 3
        var (m, out) = started([msg(1, "a"), msg(2, "a"), msg(3, "b"), msg(4, "b")], config: config, seed: 42)
        var now: Int64 = 0
        var retryTimes: [Int64] = []
        var batch = delivers(out)[0]
        XCTAssertEqual(batch.1, [1, 3])
        // b is acknowledged; a is refused until it is a dead letter.
        _ = m.on(.delivered(batch: batch.0, outcomes: [.rejected("poison"), .acknowledged], nowMs: now))
        out = m.on(.recorded(batch: batch.0, applied: true, nowMs: now))
        XCTAssertEqual(delivers(out).map(\.1), [[4]], "b goes on while a backs off")
        _ = m.on(.delivered(batch: delivers(out)[0].0, outcomes: [.acknowledged], nowMs: now))
        _ = m.on(.recorded(batch: delivers(out)[0].0, applied: true, nowMs: now))
        for attempt in 2...3 {
            var next: [(Int, [Int64])] = []
            let start = now
            while next.isEmpty {
                now += 1
                next = delivers(m.on(.tick(nowMs: now)))
                XCTAssertLessThan(now, 100_000)
            }
            retryTimes.append(now - start)
            batch = next[0]
            XCTAssertEqual(batch.1, [1], "attempt \(attempt) is for the same message")
            out = m.on(.delivered(batch: batch.0, outcomes: [.rejected("poison")], nowMs: now))
            if attempt == 3 {
                XCTAssertEqual(out, [.record(batch: batch.0, write: RelayWrite(dead: [.init(id: 1, attempts: 3, error: "poison")]), token: 7)])
            }
            out = m.on(.recorded(batch: batch.0, applied: true, nowMs: now))
        }
        // Backoff: first retry within [min/2, min], second within [min, 2*min].
        XCTAssertTrue((Limits.outboxRetryDelayMsMin / 2...Limits.outboxRetryDelayMsMin + 1).contains(retryTimes[0]), "\(retryTimes)")
        XCTAssertTrue((Limits.outboxRetryDelayMsMin...2 * Limits.outboxRetryDelayMsMin + 1).contains(retryTimes[1]), "\(retryTimes)")
        XCTAssertEqual(m.deadTotal, 1)
        // Message 2 (key a) is held back behind the dead letter.
        for t in 1...50 { XCTAssertTrue(delivers(m.on(.tick(nowMs: now + Int64(t) * 100))).isEmpty) }
        XCTAssertEqual(m.blockedKeys, 1)
        // Same seed, same jitter; another seed, another (for this pair of seeds).
        func firstRetry(seed: UInt64) -> Int64 {
            var (m, out) = started([msg(1, "a")], config: config, seed: seed)
            let b = delivers(out)[0].0
            _ = m.on(.delivered(batch: b, outcomes: [.rejected("x")], nowMs: 0))
            _ = m.on(.recorded(batch: b, applied: true, nowMs: 0))
            var t: Int64 = 0
            while delivers(m.on(.tick(nowMs: t))).isEmpty { t += 1 }
            return t
        }
        XCTAssertEqual(firstRetry(seed: 42), firstRetry(seed: 42))
        XCTAssertNotEqual(Set((1...8).map { firstRetry(seed: $0) }).count, 1, "jitter spreads retries")
    }

    func testDeadLetterDoesNotBlockWhenConfigured() {
        var config = RelayConfig()
        config.attemptsMax = 1
        config.deadLetterBlocksKey = false
        var (m, out) = started([msg(1, "a"), msg(2, "a")], config: config)
        let b = delivers(out)[0].0
        _ = m.on(.delivered(batch: b, outcomes: [.rejected("poison")], nowMs: 0))
        out = m.on(.recorded(batch: b, applied: true, nowMs: 0))
        XCTAssertEqual(delivers(out).map(\.1), [[2]])
    }

    func testKeysWithDeadLettersStayBlockedAfterRestartUntilReplayed() {
        var (m, out) = started([msg(5, "a"), msg(6, "b")], dead: ["a": 3])
        XCTAssertEqual(delivers(out).map(\.1), [[6]], "a is behind its dead letter 3")
        // Replay: the rescan returns message 3 as pending again, and no dead keys.
        out = m.on(.replayed(nowMs: 1))
        XCTAssertEqual(out, [.load(afterID: 0, limit: Limits.outboxLoadRowsMax)])
        out = m.on(.loaded(afterID: 0, rows: [msg(3, "a"), msg(5, "a")], deadKeys: [:], nowMs: 1))
        XCTAssertEqual(delivers(out).map(\.1), [[3]], "the replayed message goes first, before 5")
    }

    /// A replayed dead letter found on a later page of the rescan than the first (which brings
    /// the list of dead keys) still goes before its key's next message: the key stays held at
    /// the old dead letter until the rescan's last page is in. Unblocked at the first page, the
    /// held head 11 went at once and the replayed 10 after it (a review).
    func testAReplayedDeadLetterOnALaterRescanPageGoesFirst() {
        var config = RelayConfig()
        config.loadRowsMax = 3
        var (m, out) = started([msg(2, "x"), msg(3, "x"), msg(4, "x")], config: config, dead: ["x": 1, "a": 10])
        XCTAssertTrue(delivers(out).isEmpty, "x is behind its dead letter 1")
        out = m.on(.loaded(afterID: 4, rows: [msg(11, "a")], deadKeys: nil, nowMs: 0))
        XCTAssertTrue(delivers(out).isEmpty, "a is behind its dead letter 10")
        // 10 is replayed: the rescan's first page names only x's dead letter.
        out = m.on(.replayed(nowMs: 2))
        XCTAssertEqual(out, [.load(afterID: 0, limit: 3)])
        out = m.on(.loaded(afterID: 0, rows: [msg(2, "x"), msg(3, "x"), msg(4, "x")], deadKeys: ["x": 1], nowMs: 2))
        XCTAssertTrue(delivers(out).isEmpty, "11 must wait for 10, which the rescan has not read yet")
        XCTAssertEqual(out, [.load(afterID: 4, limit: 3)])
        out = m.on(.loaded(afterID: 4, rows: [msg(10, "a"), msg(11, "a")], deadKeys: nil, nowMs: 2))
        XCTAssertEqual(delivers(out).map(\.1), [[10]], "the replayed message goes first")
        guard let b = delivers(out).first?.0 else { return XCTFail("nothing delivered") }
        _ = m.on(.delivered(batch: b, outcomes: [.acknowledged], nowMs: 3))
        out = m.on(.recorded(batch: b, applied: true, nowMs: 3))
        XCTAssertEqual(delivers(out).map(\.1), [[11]], "then 11")
    }

    /// The replayed dead letter is on the rescan's first page, goes, and dies again before the
    /// last page is in: its key stays blocked when the rescan ends (the first page's list, which
    /// did not name it, is older than that death).
    func testAReplayedDeadLetterThatDiesAgainDuringTheRescanKeepsItsKeyBlocked() {
        var config = RelayConfig()
        config.loadRowsMax = 2
        config.attemptsMax = 1
        var (m, out) = started([msg(10, "a"), msg(11, "a")], config: config, dead: ["a": 9])
        XCTAssertTrue(delivers(out).isEmpty, "a is behind its dead letter 9")
        // 9 is replayed; the rescan's first page has it, and is full: another page follows.
        _ = m.on(.loaded(afterID: 11, rows: [], deadKeys: nil, nowMs: 0))
        out = m.on(.replayed(nowMs: 1))
        XCTAssertEqual(out, [.load(afterID: 0, limit: 2)])
        out = m.on(.loaded(afterID: 0, rows: [msg(9, "a"), msg(10, "a")], deadKeys: [:], nowMs: 1))
        XCTAssertEqual(delivers(out).map(\.1), [[9]])
        guard let b = delivers(out).first?.0 else { return XCTFail("nothing delivered") }
        // Refused: with one attempt allowed it is dead again.
        out = m.on(.delivered(batch: b, outcomes: [.rejected("still poison")], nowMs: 2))
        guard case .record(let rb, let write, _)? = out.first(where: { if case .record = $0 { return true } else { return false } }) else { return XCTFail("\(out)") }
        XCTAssertEqual(write.dead.map(\.id), [9])
        _ = m.on(.recorded(batch: rb, applied: true, nowMs: 2))
        // The rescan's last page.
        out = m.on(.loaded(afterID: 10, rows: [msg(11, "a")], deadKeys: nil, nowMs: 3))
        XCTAssertTrue(delivers(out).isEmpty, "10 and 11 stay behind 9, dead again: \(out)")
        XCTAssertEqual(m.deadKeys["a"], 9)
    }

    func testFencedWriteDropsEverythingAndRetakesTheLease() {
        var (m, out) = started([msg(1, "a"), msg(2, "a")])
        let b = delivers(out)[0].0
        _ = m.on(.delivered(batch: b, outcomes: [.acknowledged], nowMs: 0))
        out = m.on(.recorded(batch: b, applied: false, nowMs: 0))
        XCTAssertTrue(out.isEmpty, "a stale relay sends nothing more")
        XCTAssertEqual(m.lease, .acquiring)
        XCTAssertEqual(m.loadedCount, 0)
        XCTAssertEqual(m.fencedTotal, 1)
        XCTAssertEqual(m.on(.tick(nowMs: Limits.outboxLeaseRetryMs)), [.acquireLease])
        // Another relay holds it.
        XCTAssertEqual(m.on(.leaseUnavailable(nowMs: Limits.outboxLeaseRetryMs)), [])
        XCTAssertEqual(m.deliveredTotal, 0)
    }

    func testStaleResultsAfterLosingTheLeaseAreIgnored() {
        var (m, out) = started([msg(1, "a")])
        let b = delivers(out)[0].0
        _ = m.on(.leaseLost(nowMs: 0))
        XCTAssertEqual(m.on(.delivered(batch: b, outcomes: [.acknowledged], nowMs: 0)), [])
    }

    func testRenewsTheLeaseAndCleansUpWithRetention() {
        var config = RelayConfig()
        config.retentionMs = 1000
        var (m, _) = started([], config: config)
        let out = m.on(.tick(nowMs: config.leaseTTLMs / 3))
        XCTAssertTrue(out.contains(.renewLease(token: 7)))
        XCTAssertTrue(out.contains(.cleanup(retentionMs: 1000, limit: config.cleanupRowsMax)))
        // A full cleanup batch asks for another at once; a partial one waits.
        XCTAssertEqual(m.on(.cleaned(deleted: config.cleanupRowsMax, nowMs: 2000)), [])
        XCTAssertTrue(m.on(.tick(nowMs: 2000)).contains { if case .cleanup = $0 { return true }; return false })
        _ = m.on(.cleaned(deleted: 3, nowMs: 2000))
        XCTAssertFalse(m.on(.tick(nowMs: 2001)).contains { if case .cleanup = $0 { return true }; return false })
    }

    func testMemoryBoundAndTailPaging() {
        var config = RelayConfig()
        config.loadedMessagesMax = 4
        config.loadRowsMax = 10
        var m = RelayMachine(config: config, seed: 1)
        _ = m.on(.start(nowMs: 0))
        XCTAssertEqual(m.on(.leaseAcquired(token: 1, nowMs: 0)), [.load(afterID: 0, limit: 4)])
        let out = m.on(.loaded(afterID: 0, rows: (1...4).map { msg(Int64($0), "k\($0)") }, deadKeys: [:], nowMs: 0))
        XCTAssertFalse(out.contains { if case .load = $0 { return true }; return false }, "full: no more loading")
        let b = delivers(out)[0]
        _ = m.on(.delivered(batch: b.0, outcomes: Array(repeating: .acknowledged, count: 4), nowMs: 0))
        let after = m.on(.recorded(batch: b.0, applied: true, nowMs: 0))
        XCTAssertTrue(after.contains(.load(afterID: 4, limit: 4)), "room again: the tail goes on from the cursor")
    }

    /// Large messages: the tail stops loading at the byte bound (the count alone allowed 13 GB
    /// of 256 KiB payloads), and a page cut short by its bytes is not taken for the table's end.
    func testMemoryIsBoundedInBytesAndAShortPageOfLargeRowsIsNotTheEnd() {
        var config = RelayConfig()
        config.loadedBytesMax = 1_000_000
        config.loadPageBytesMax = 300_000
        config.loadRowsMax = 100
        config.batchesInFlightMax = 0 // nothing leaves memory: only loading is watched
        var m = RelayMachine(config: config, seed: 1)
        _ = m.on(.start(nowMs: 0))
        XCTAssertEqual(m.on(.leaseAcquired(token: 1, nowMs: 0)), [.load(afterID: 0, limit: 100)])
        func big(_ id: Int64) -> OutboxMessage {
            OutboxMessage(id: id, source: "s", topic: "t", key: "k\(id)", payload: String(repeating: "x", count: 100_000), createdMs: 0)
        }
        // Three rows of 100 KB: the store stopped at the page's bytes; more may follow.
        var out = m.on(.loaded(afterID: 0, rows: (1...3).map(big), deadKeys: [:], nowMs: 0))
        XCTAssertTrue(out.contains(.load(afterID: 3, limit: 100)), "a page cut at its bytes is not the end: \(out)")
        var next: Int64 = 4
        var loads = 0
        while let load = out.first(where: { if case .load = $0 { return true }; return false }), case .load(let after, _) = load {
            XCTAssertEqual(after, next - 1)
            out = m.on(.loaded(afterID: after, rows: (next...(next + 2)).map(big), deadKeys: nil, nowMs: 0))
            next += 3
            loads += 1
            XCTAssertLessThan(loads, 10, "loading never stops")
        }
        XCTAssertGreaterThanOrEqual(m.loadedBytes, config.loadedBytesMax)
        XCTAssertLessThan(m.loadedBytes, config.loadedBytesMax + config.loadPageBytesMax + 200_000, "at most one page past the bound")
        XCTAssertEqual(m.loadedCount, Int(next - 1))
    }

    /// A replayed row found by a rescan while its key's head is in a batch goes after that head
    /// (with dead letters not blocking): before, it went first, the batch's result did not pop
    /// the head it had sent, and that message was sent a second time.
    func testARowFoundWhileTheKeysHeadIsInABatchGoesAfterIt() {
        var config = RelayConfig()
        config.deadLetterBlocksKey = false
        config.rescanIntervalMs = 100
        var (m, out) = started([msg(5, "a")], config: config)
        let b = delivers(out)[0]
        XCTAssertEqual(b.1, [5])
        out = m.on(.tick(nowMs: 100))
        XCTAssertTrue(out.contains(.load(afterID: 0, limit: config.loadRowsMax)))
        _ = m.on(.loaded(afterID: 0, rows: [msg(1, "a"), msg(5, "a")], deadKeys: [:], nowMs: 100))
        _ = m.on(.delivered(batch: b.0, outcomes: [.acknowledged], nowMs: 101))
        out = m.on(.recorded(batch: b.0, applied: true, nowMs: 101))
        XCTAssertEqual(delivers(out).map(\.1), [[1]], "5 is done; the replayed 1 goes next")
        let b2 = delivers(out)[0]
        _ = m.on(.delivered(batch: b2.0, outcomes: [.acknowledged], nowMs: 102))
        out = m.on(.recorded(batch: b2.0, applied: true, nowMs: 102))
        XCTAssertEqual(delivers(out).map(\.1), [], "5 is not sent again")
        XCTAssertEqual(m.loadedCount, 0)
        XCTAssertEqual(m.deliveredTotal, 2)
    }

    /// A message the consumer answers `busy` (a row it needs is locked) backs off its key only,
    /// counts no attempt, and never becomes a dead letter; the other keys of the batch go on.
    func testADeferredMessageBacksOffItsKeyAndNeverDies() {
        var config = RelayConfig()
        config.attemptsMax = 2
        var (m, out) = started([msg(1, "a"), msg(2, "b"), msg(3, "b")], config: config)
        var now: Int64 = 0
        var aSent = 0
        for _ in 0..<20 {
            var next: [RelayAction] = []
            for b in delivers(out) {
                if b.1.contains(1) { aSent += 1 }
                let outcomes: [DeliveryOutcome] = b.1.map { $0 == 1 ? .deferred("sku locked") : .acknowledged }
                let recorded = m.on(.delivered(batch: b.0, outcomes: outcomes, nowMs: now))
                guard case .record(_, let write, _)? = recorded.first(where: { if case .record = $0 { return true }; return false }) else { return XCTFail() }
                XCTAssertEqual(write.failed.map(\.attempts), b.1.contains(1) ? [0] : [], "no attempt counted")
                XCTAssertTrue(write.dead.isEmpty)
                next += m.on(.recorded(batch: b.0, applied: true, nowMs: now))
            }
            now += config.retryDelayMsMax
            out = next + m.on(.tick(nowMs: now))
        }
        XCTAssertGreaterThan(aSent, config.attemptsMax, "a was sent again and again")
        XCTAssertEqual(m.deadTotal, 0)
        XCTAssertEqual(m.deliveredTotal, 2, "b's messages went on while a waited")
    }

    func testRescanPicksUpARowBelowTheCursor() {
        var config = RelayConfig()
        config.rescanIntervalMs = 100
        var (m, out) = started([msg(1, "a"), msg(5, "b")], config: config)
        let b = delivers(out)[0]
        _ = m.on(.delivered(batch: b.0, outcomes: [.acknowledged, .acknowledged], nowMs: 0))
        _ = m.on(.recorded(batch: b.0, applied: true, nowMs: 0))
        XCTAssertEqual(m.cursor, 5)
        out = m.on(.tick(nowMs: 100))
        XCTAssertTrue(out.contains(.load(afterID: 0, limit: config.loadRowsMax)), "periodic rescan from the start")
        out = m.on(.loaded(afterID: 0, rows: [msg(3, "c")], deadKeys: [:], nowMs: 100))
        XCTAssertEqual(delivers(out).map(\.1), [[3]], "a row the cursor had passed is still delivered")
    }

    // MARK: memory per key

    /// A dead-lettered key whose producer keeps adding messages must not fill the window: a
    /// later message of another key is still loaded and delivered, and after the replay the
    /// dead key finishes in order (its left-out rows come back by `.loadKey`).
    func testABlockedKeyDoesNotFillTheWindowForOtherKeys() {
        var config = RelayConfig()
        config.loadedMessagesMax = 10
        config.loadRowsMax = 5
        config.attemptsMax = 1
        let w = TableDriver(config: config)
        w.refuse = { $0.key == "d" && $0.id == 1 }
        w.add("d", count: 30)
        w.start()
        w.ticks(20)
        XCTAssertEqual(w.deadIDs, [1])
        XCTAssertEqual(w.delivered["d"] ?? [], [], "d waits behind its dead letter")
        XCTAssertLessThanOrEqual(w.machine.loadedCount, 1, "a blocked key keeps only its head in memory")
        // The producer goes on with d, and another key comes after all of it.
        w.add("d", count: 30)
        let a = w.add("a", count: 1)
        w.add("d", count: 5)
        w.ticks(20)
        XCTAssertEqual(w.delivered["a"], a, "a later key is loaded and delivered")
        XCTAssertEqual(w.machine.blockedKeys, 1)
        // Replay: d is delivered, all of it, in id order.
        w.refuse = { _ in false }
        w.replay(1)
        w.ticks(50)
        XCTAssertEqual(w.delivered["d"], w.ids(of: "d"))
        XCTAssertEqual(w.pendingCount, 0)
        XCTAssertEqual(w.machine.loadedCount, 0)
    }

    /// One very busy key holds at most `loadedPerKeyMax` messages: other keys' messages behind
    /// its backlog are loaded at once instead of after it drains; the busy key still goes in order.
    func testABusyKeyHoldsAtMostItsCapAndOthersGoAhead() {
        var config = RelayConfig()
        config.loadedMessagesMax = 10
        config.loadRowsMax = 5
        config.loadedPerKeyMax = 3
        let w = TableDriver(config: config)
        w.add("a", count: 40)
        let b = w.add("b", count: 1)[0]
        w.add("a", count: 5)
        w.start()
        w.ticks(20)
        XCTAssertEqual(w.delivered["a"], w.ids(of: "a"), "every message of a, in order")
        XCTAssertEqual(w.delivered["b"], [b])
        let bAt = w.sent.firstIndex(of: b)!
        XCTAssertLessThan(bAt, w.sent.firstIndex(of: 10)!, "b went early in a's backlog of 45, not after it")
        XCTAssertGreaterThan(w.keyLoads, 0, "a came back by key")
        XCTAssertLessThanOrEqual(w.maxHeld, config.loadedMessagesMax)
    }

    /// A rescan that finds a row below a key's held messages (a replay) while the key is at its
    /// cap holds it and leaves the key's last held message out: order is kept.
    func testARowFoundBelowAFullKeyIsHeldAndTheLastLeftOut() {
        var config = RelayConfig()
        config.loadedPerKeyMax = 2
        var (m, out) = started([msg(5, "a"), msg(6, "a"), msg(7, "a")], config: config, dead: ["a": 3])
        XCTAssertTrue(delivers(out).isEmpty)
        XCTAssertEqual(m.loadedCount, 1, "blocked: the head only")
        out = m.on(.replayed(nowMs: 1))
        out = m.on(.loaded(afterID: 0, rows: [msg(3, "a"), msg(5, "a"), msg(6, "a"), msg(7, "a")], deadKeys: [:], nowMs: 1))
        XCTAssertEqual(delivers(out).map(\.1), [[3]])
        XCTAssertEqual(m.loadedCount, 2, "3 and 5 held; 6 and 7 left out")
        XCTAssertEqual(m.missing["a"], 6)
    }
}

/// The machine with an outbox table and a sink in memory that answer its actions at once, in
/// the order the runtime carries them out.
final class TableDriver {
    var machine: RelayMachine
    var rows: [OutboxMessage] = []
    var state: [Int64: Int] = [:]
    var refuse: (OutboxMessage) -> Bool = { _ in false }
    var delivered: [String: [Int64]] = [:]
    var deadIDs: [Int64] = []
    var sent: [Int64] = []
    var keyLoads = 0
    var maxHeld = 0
    var now: Int64 = 0
    var nextID: Int64 = 1

    init(config: RelayConfig) { machine = RelayMachine(config: config, seed: 1) }

    @discardableResult
    func add(_ key: String, count: Int) -> [Int64] {
        (0..<count).map { _ in
            let id = nextID
            nextID += 1
            rows.append(OutboxMessage(id: id, source: "s", topic: "t", key: key, payload: "p\(id)", createdMs: 0))
            state[id] = 0
            return id
        }
    }

    func ids(of key: String) -> [Int64] { rows.filter { $0.key == key }.map(\.id) }
    var pendingCount: Int { state.values.filter { $0 == 0 }.count }

    func start() {
        run(.start(nowMs: now))
    }

    func ticks(_ n: Int) {
        for _ in 0..<n {
            now += 50
            run(.tick(nowMs: now))
        }
    }

    func replay(_ id: Int64) {
        state[id] = 0
        if let i = rows.firstIndex(where: { $0.id == id }) { rows[i].attempts = 0 }
        run(.replayed(nowMs: now))
    }

    func run(_ event: RelayEvent) {
        var queue = machine.on(event)
        while !queue.isEmpty {
            let a = queue.removeFirst()
            maxHeld = max(maxHeld, machine.loadedCount)
            if let e = answer(a) { queue += machine.on(e) }
        }
        maxHeld = max(maxHeld, machine.loadedCount)
    }

    func pending(after: Int64) -> [OutboxMessage] { rows.filter { $0.id > after && state[$0.id] == 0 } }

    func answer(_ a: RelayAction) -> RelayEvent? {
        switch a {
        case .acquireLease: return .leaseAcquired(token: 1, nowMs: now)
        case .renewLease: return .leaseRenewed(nowMs: now)
        case .releaseLease: return nil
        case .load(let after, let limit):
            var dead: [String: Int64]?
            if after == 0 {
                dead = [:]
                for r in rows where state[r.id] == 2 { dead![r.key] = min(dead![r.key] ?? .max, r.id) }
            }
            return .loaded(afterID: after, rows: Array(pending(after: after).prefix(limit)), deadKeys: dead, nowMs: now)
        case .loadKey(let key, let after, let limit):
            keyLoads += 1
            return .loaded(afterID: after, rows: Array(pending(after: after).filter { $0.key == key }.prefix(limit)), deadKeys: nil, nowMs: now)
        case .deliver(let b, let ms):
            sent += ms.map(\.id)
            return .delivered(batch: b, outcomes: ms.map { refuse($0) ? .rejected("poison") : .acknowledged }, nowMs: now)
        case .record(let b, let w, _):
            for id in w.delivered where state[id] == 0 {
                state[id] = 1
                delivered[rows.first { $0.id == id }!.key, default: []].append(id)
            }
            for f in w.failed {
                if let i = rows.firstIndex(where: { $0.id == f.id }) { rows[i].attempts = f.attempts }
            }
            for f in w.dead where state[f.id] == 0 {
                state[f.id] = 2
                deadIDs.append(f.id)
            }
            return .recorded(batch: b, applied: true, nowMs: now)
        case .cleanup: return .cleaned(deleted: 0, nowMs: now)
        }
    }
}
