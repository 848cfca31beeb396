// libFuzzer target: log recovery over damaged segments. Built into CohortLog by Tests/Fuzz/run.
// The input describes a log (records, checkpoints, small segments) that is written and synced
// through DurableLog into simulated storage, then damage (flipped bytes, a cut, a junk tail)
// applied to one segment. Properties: recovery never crashes; it either throws a typed error
// or returns records that the writer wrote, in order, with no gap and nothing invented.

@_cdecl("LLVMFuzzerTestOneInput")
public func cohortFuzzLog(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var input = FuzzInput(Array(UnsafeBufferPointer(start: data, count: size)))
    let storage = SimLogStorage()
    let config = DurableLogConfig(syncMode: .manual, segmentBytesMax: 64 + Int(input.byte()) * 4, preallocateBytes: 0)
    guard let (log, _) = try? DurableLog.open(storage: storage, config: config) else { fatalError("empty log did not open") }
    // Every record the writer made durable, by LSN; a checkpoint stands for all before it.
    var written: [UInt64: (type: UInt8, payload: [UInt8])] = [:]
    let recordsCount = Int(input.byte() % 40)
    for _ in 0..<recordsCount {
        let kind = input.byte()
        let payload = input.bytes(Int(input.byte() % 48))
        if kind % 11 == 0 {
            guard let lsn = try? log.checkpoint(snapshot: payload) else { fatalError("checkpoint refused") }
            written[lsn] = (0, payload)
        } else {
            let type = max(1, kind)
            guard let lsn = try? log.append(type: type, payload: payload, force: kind % 2 == 0) else { fatalError("append refused") }
            written[lsn] = (type, payload)
        }
        if kind % 3 == 0 { _ = try? log.syncNow() }
    }
    _ = try? log.syncNow()
    log.close()

    let segments = ((try? storage.list()) ?? []).filter { $0.hasSuffix(".log") }.sorted()
    if !segments.isEmpty {
        let victim = segments[Int(input.byte()) % segments.count]
        var bytes = storage.contents(of: victim) ?? []
        let damage = input.byte()
        if damage & 1 != 0, !bytes.isEmpty {
            for _ in 0..<(1 + Int(input.byte() % 3)) {
                let at = Int(input.u16()) % bytes.count
                bytes[at] ^= max(1, input.byte())
            }
        }
        if damage & 2 != 0 { bytes = Array(bytes.prefix(Int(input.u16()) % (bytes.count + 1))) }
        if damage & 4 != 0 { bytes += input.bytes(Int(input.byte() % 64)) }
        storage.setContents(of: victim, bytes)
    }

    let recovered: RecoveredLog
    do {
        let (reopened, r) = try DurableLog.open(storage: storage, config: config)
        reopened.close()
        recovered = r
    } catch {
        return 0  // a typed error naming the damage is an allowed answer
    }
    var expected = recovered.snapshotLSN.map { $0 + 1 } ?? 1
    if let snapshotLSN = recovered.snapshotLSN {
        guard let w = written[snapshotLSN], w.type == 0, w.payload == recovered.snapshot! else {
            fatalError("recovered a snapshot at LSN \(snapshotLSN) that was never written")
        }
    }
    for record in recovered.records {
        precondition(record.lsn == expected, "recovered LSN \(record.lsn) where \(expected) was next")
        guard let w = written[record.lsn], w.type == record.type, w.payload == record.payload else {
            fatalError("recovered a record at LSN \(record.lsn) that was never written")
        }
        expected += 1
    }
    return 0
}

/// Reads the fuzzer's bytes as a sequence of choices; past the end every choice is zero.
struct FuzzInput {
    private let data: [UInt8]
    private var at = 0
    init(_ data: [UInt8]) { self.data = data }
    mutating func byte() -> UInt8 {
        guard at < data.count else { return 0 }
        defer { at += 1 }
        return data[at]
    }
    mutating func u16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in byte() } }
}
