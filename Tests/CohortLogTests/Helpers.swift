import CohortCore
import CohortPosix
import XCTest
@testable import CohortLog

/// A fresh directory under /tmp, removed by `removeTree` at the end of a test.
func makeTemporaryDirectory() throws -> String {
    var generator = SystemRandomNumberGenerator()
    let path = "/tmp/cohort-log-tests/\(String(generator.next(), radix: 16))"
    try PosixFS.createDirectory(path, intermediate: true)
    return path
}

func removeTree(_ path: String) {
    if PosixFS.isDirectory(path), let names = try? PosixFS.listDirectory(path) {
        for name in names { removeTree(path + "/" + name) }
    }
    try? PosixFS.remove(path)
}

/// Polls until `condition` holds; false after `timeoutMs`.
func waitUntil(timeoutMs: Int64 = 10_000, _ condition: () -> Bool) -> Bool {
    var waitedMs: Int64 = 0
    while !condition() {
        if waitedMs >= timeoutMs { return false }
        PosixThread.sleep(milliseconds: 2)
        waitedMs += 2
    }
    return true
}

func payload(_ lsn: UInt64, size: Int = 24) -> [UInt8] {
    var rng = SplitMix64(seed: lsn &* 7919)
    return (0..<size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
}

/// Without preallocation unless asked: the byte-level damage tests place their damage at the
/// end of the file, which preallocation would put after the zeros (RecoveryTests has its own
/// preallocation tests).
func manualConfig(segmentBytesMax: Int = Limits.segmentBytesMax,
                  unsyncedBytesMax: Int = Limits.unsyncedBytesMax,
                  preallocateBytes: Int = 0) -> DurableLogConfig {
    DurableLogConfig(syncMode: .manual, segmentBytesMax: segmentBytesMax, unsyncedBytesMax: unsyncedBytesMax,
                     preallocateBytes: preallocateBytes)
}

func segmentNames(_ storage: LogStorage) throws -> [String] {
    try storage.list().filter { $0.hasSuffix(".log") }.sorted()
}

/// Mutable box for values set from callbacks on the sync thread.
final class Locked<Value> {
    private let lock = PosixConditionLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func get() -> Value { lock.withLock { value } }
    func update(_ body: (inout Value) -> Void) { lock.withLock { body(&value) } }
}

/// Offset of each record in a segment, oldest first.
func recordOffsets(_ storage: LogStorage, file: String) -> [Int] {
    let inspection = DurableLog.inspect(storage: storage)
    return inspection.segments.first { $0.file == file }!.records.map(\.offset)
}

/// Where a segment's records end (the zeros written ahead follow, up to a multiple of
/// `Limits.logFileAlignmentBytes`).
func recordsEnd(_ storage: LogStorage, file: String) -> Int {
    DurableLog.inspect(storage: storage).segments.first { $0.file == file }!.recordsEndBytes
}
