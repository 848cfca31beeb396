import CohortCore
import CohortPosix

/// What a simulated crash does to data written but not yet synced.
public enum SimCrashMode: Equatable {
    /// Unsynced bytes are lost entirely.
    case dropUnsynced
    /// A random prefix of the unsynced bytes survives, its last few bytes possibly garbled,
    /// as when a power cut interrupts a write.
    case tearUnsynced
}

public struct SimStorageError: Error, CustomStringConvertible, Equatable {
    public let operation: String
    public let file: String
    public let reason: String
    public var description: String { "sim storage: \(operation) \(file): \(reason)" }
}

/// In-memory log storage that models what a crash keeps: per file, durable bytes versus bytes
/// only written; per directory, entries made durable by a directory sync versus not.
/// Thread-safe: the log syncs on its own thread while the test thread appends and crashes.
public final class SimLogStorage: LogStorage {
    final class Content {
        /// What reads see.
        var current: [UInt8] = []
        /// What survives a crash.
        var durable: [UInt8] = []
    }

    public let name: String
    private let lock = PosixConditionLock()
    private var files: [String: Content] = [:]
    /// Names whose existence survives a crash (present at the last directory sync).
    private var durableNames: Set<String> = []
    /// Files removed since the last directory sync: a crash may bring them back.
    private var removedUnsynced: [String: Content] = [:]
    /// Renames since the last directory sync, new name → old name: a crash keeps each whole
    /// or undoes it whole (the file under exactly one of its names).
    private var renamedUnsynced: [String: String] = [:]
    /// Bumped by each crash: handles opened before it are dead, as a crashed process's are.
    private var generation = 0

    /// The next sync (of a file or the directory) throws, once.
    public var failNextSync: Bool {
        get { lock.withLock { failNextSyncFlag } }
        set { lock.withLock { failNextSyncFlag = newValue } }
    }
    /// The sync with this number (counting from 1, files and directory alike, as `syncsTotal`
    /// does) throws, once: a failure at an exact step of a multi-step write.
    public var failSyncAtCount: Int? {
        get { lock.withLock { failSyncAt } }
        set { lock.withLock { failSyncAt = newValue } }
    }
    private var failSyncAt: Int?
    /// The next write throws, once.
    public var failNextWrite: Bool {
        get { lock.withLock { failNextWriteFlag } }
        set { lock.withLock { failNextWriteFlag = newValue } }
    }
    private var failNextSyncFlag = false
    private var failNextWriteFlag = false
    private var syncCount = 0

    /// Syncs done so far (files and directory).
    public var syncsTotal: Int { lock.withLock { syncCount } }

    public init(name: String = "sim") {
        self.name = name
    }

    public func list() throws -> [String] {
        lock.withLock { Array(files.keys) }
    }

    public func open(_ file: String, create: Bool) throws -> LogFile {
        try lock.withLock {
            if files[file] == nil {
                guard create else { throw SimStorageError(operation: "open", file: file, reason: "no such file") }
                files[file] = Content()
                removedUnsynced[file] = nil
            }
            return SimLogFile(storage: self, file: file, generation: generation)
        }
    }

    public func remove(_ file: String) throws {
        try lock.withLock {
            guard let content = files.removeValue(forKey: file) else {
                throw SimStorageError(operation: "remove", file: file, reason: "no such file")
            }
            if durableNames.contains(file) { removedUnsynced[file] = content }
        }
    }

    public func rename(_ from: String, to: String) throws {
        try lock.withLock {
            guard files[to] == nil else { throw SimStorageError(operation: "rename", file: to, reason: "target exists") }
            guard let content = files.removeValue(forKey: from) else {
                throw SimStorageError(operation: "rename", file: from, reason: "no such file")
            }
            files[to] = content
            // A chain of renames undoes to the first name.
            renamedUnsynced[to] = renamedUnsynced.removeValue(forKey: from) ?? from
        }
    }

    public func syncDirectory() throws {
        try lock.withLock {
            syncCount += 1
            if failNextSyncFlag || failSyncAt == syncCount {
                failNextSyncFlag = false
                throw SimStorageError(operation: "sync", file: "directory", reason: "injected failure")
            }
            durableNames = Set(files.keys)
            removedUnsynced = [:]
            renamedUnsynced = [:]
        }
    }

    /// Simulates a power cut: unsynced data is dropped or torn; a file created since the last
    /// directory sync may vanish; a file removed since then may come back. Open handles die.
    public func crash(mode: SimCrashMode, rng: inout SplitMix64) {
        lock.lock()
        defer { lock.unlock() }
        generation += 1
        var survivors: [String: Content] = [:]
        for name in files.keys.sorted() {
            let content = files[name]!
            if let old = renamedUnsynced[name] {
                // Undone: the file is back under its old name if that name was durable, and
                // gone if it was a new file's.
                if rng.next() % 2 == 0 {
                    if durableNames.contains(old) { survivors[old] = content }
                    continue
                }
                survivors[name] = content
                continue
            }
            if !durableNames.contains(name) && rng.next() % 2 == 0 { continue }
            survivors[name] = content
        }
        for name in removedUnsynced.keys.sorted() where rng.next() % 2 == 0 {
            survivors[name] = removedUnsynced[name]!
        }
        for name in survivors.keys.sorted() {
            let content = survivors[name]!
            content.current = Self.afterCrash(content, mode: mode, rng: &rng)
            content.durable = content.current
        }
        files = survivors
        durableNames = Set(files.keys)
        removedUnsynced = [:]
        renamedUnsynced = [:]
        failNextSyncFlag = false
        failNextWriteFlag = false
    }

    private static func afterCrash(_ content: Content, mode: SimCrashMode, rng: inout SplitMix64) -> [UInt8] {
        let current = content.current, durable = content.durable
        switch mode {
        case .dropUnsynced:
            return durable
        case .tearUnsynced:
            guard current.count >= durable.count else {
                // Unsynced truncation: either state may be what the disk holds.
                return rng.next() % 2 == 0 ? durable : current
            }
            // Appended bytes, or bytes written over old ones (the log writes its records over
            // the zeros it wrote ahead): a prefix of the change survives, the old bytes after it.
            var same = 0
            while same < durable.count && current[same] == durable[same] { same += 1 }
            let unsynced = current.count - same
            if unsynced == 0 { return durable }
            var kept = Int(rng.next() % UInt64(unsynced + 1))
            if same + kept > durable.count && same + kept < current.count {
                // Past the durable length the file grows in whole pages (a write is copied a
                // page at a time, and a size on disk is the end of the pages written back), so
                // a torn extension ends at a multiple of the alignment, never mid-page:
                // recovery refuses other lengths as a cut file (`Limits.logFileAlignmentBytes`).
                kept = max(durable.count, LogFileLength.alignedDown(same + kept)) - same
            }
            var result = Array(current[0..<(same + kept)])
            if same + kept < durable.count { result += durable[(same + kept)...] }
            if kept > 0 && rng.next() % 2 == 0 {
                let garbled = 1 + Int(rng.next() % UInt64(min(kept, 4)))
                for i in (same + kept - garbled)..<(same + kept) { result[i] = UInt8(truncatingIfNeeded: rng.next()) }
            }
            return result
        }
    }

    /// The bytes a file holds now (including unsynced ones), for tests that damage files.
    public func contents(of file: String) -> [UInt8]? {
        lock.withLock { files[file]?.current }
    }

    /// Replaces a file's bytes, durably: models damage on the disk itself.
    public func setContents(of file: String, _ bytes: [UInt8]) {
        lock.withLock {
            let content = files[file] ?? Content()
            content.current = bytes
            content.durable = bytes
            files[file] = content
            durableNames.insert(file)
        }
    }

    fileprivate func withContent<T>(_ operation: String, _ file: String, generation: Int,
                                    _ body: (Content) throws -> T) throws -> T {
        try lock.withLock {
            guard generation == self.generation else {
                throw SimStorageError(operation: operation, file: file, reason: "handle from before a crash")
            }
            guard let content = files[file] else {
                throw SimStorageError(operation: operation, file: file, reason: "file was removed")
            }
            if operation == "write" && failNextWriteFlag {
                failNextWriteFlag = false
                throw SimStorageError(operation: operation, file: file, reason: "injected failure")
            }
            if operation == "sync" {
                syncCount += 1
                if failNextSyncFlag || failSyncAt == syncCount {
                    failNextSyncFlag = false
                    throw SimStorageError(operation: operation, file: file, reason: "injected failure")
                }
            }
            return try body(content)
        }
    }
}

final class SimLogFile: LogFile {
    let storage: SimLogStorage
    let file: String
    let generation: Int

    init(storage: SimLogStorage, file: String, generation: Int) {
        self.storage = storage
        self.file = file
        self.generation = generation
    }

    func size() throws -> Int {
        try storage.withContent("size", file, generation: generation) { $0.current.count }
    }

    func read(offset: Int, count: Int) throws -> [UInt8] {
        precondition(offset >= 0 && count >= 0, "negative read")
        return try storage.withContent("read", file, generation: generation) { content in
            let end = min(content.current.count, offset + count)
            return offset >= end ? [] : Array(content.current[offset..<end])
        }
    }

    func write(_ bytes: [UInt8], at offset: Int) throws {
        precondition(offset >= 0, "negative write offset")
        try storage.withContent("write", file, generation: generation) { content in
            if content.current.count < offset {
                content.current.append(contentsOf: [UInt8](repeating: 0, count: offset - content.current.count))
            }
            let overlap = min(bytes.count, content.current.count - offset)
            if overlap > 0 { content.current.replaceSubrange(offset..<(offset + overlap), with: bytes[0..<overlap]) }
            content.current.append(contentsOf: bytes[overlap...])
        }
    }

    func truncate(to size: Int) throws {
        precondition(size >= 0, "negative truncate")
        try storage.withContent("truncate", file, generation: generation) { content in
            if size < content.current.count {
                content.current.removeLast(content.current.count - size)
            } else {
                content.current.append(contentsOf: [UInt8](repeating: 0, count: size - content.current.count))
            }
        }
    }

    func sync() throws {
        try storage.withContent("sync", file, generation: generation) { content in
            content.durable = content.current
        }
    }

    func close() {}
}
