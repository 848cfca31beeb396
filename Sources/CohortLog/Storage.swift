import CohortCore
import CohortPosix

/// Where the log keeps its segment files: a real directory, or memory for simulation.
/// File names are plain names inside the storage, never paths.
public protocol LogStorage: AnyObject {
    /// What the storage is, for error messages (for a directory: its path).
    var name: String { get }
    func list() throws -> [String]
    func open(_ file: String, create: Bool) throws -> LogFile
    func remove(_ file: String) throws
    /// Gives `from` the name `to` (which must not exist) in one step: after a crash the file is
    /// under one name or the other, never both (or gone, if it was created since the last
    /// directory sync and the rename was not yet durable). Handles opened under `from` must not
    /// be used after it.
    func rename(_ from: String, to: String) throws
    /// Makes creations, removals and renames of files durable.
    func syncDirectory() throws
}

public protocol LogFile: AnyObject {
    func size() throws -> Int
    /// Up to `count` bytes at `offset`; fewer only at end of file.
    func read(offset: Int, count: Int) throws -> [UInt8]
    func write(_ bytes: [UInt8], at offset: Int) throws
    func truncate(to size: Int) throws
    /// Makes everything written so far durable. After a failure nothing written since the last
    /// successful sync may be assumed durable, ever.
    func sync() throws
    /// Makes the next reads return what the disk holds, not what a cache remembers: recovery
    /// reads a log another process wrote. After a failed writeback Linux can keep pages that
    /// never reached the disk, marked clean; a restart without a reboot would read them, and
    /// its own sync would succeed, so it would act on records that may vanish later.
    func readFromDiskFromNowOn() throws
    func close()
}

extension LogFile {
    /// Storage without a cache of its own (the simulated disk) has nothing to drop.
    public func readFromDiskFromNowOn() throws {}
}

/// Injected storage faults, for testing that the system fails safely.
public struct StorageFaults: Equatable {
    /// The K-th sync (1-based, files and directory alike) and every later one throws an I/O error.
    public var failSyncAtCount: Int?

    public init(failSyncAtCount: Int? = nil) {
        self.failSyncAtCount = failSyncAtCount
    }

    /// Parses `COHORT_FAULT`: absent or empty means no faults; `fsync-fail` fails every sync
    /// from the first; `fsync-fail:K` (K ≥ 1) from the K-th.
    public static func fromEnvironment(_ value: String?) throws -> StorageFaults {
        guard let value, !value.isEmpty else { return StorageFaults() }
        let parts = value.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts[0] == "fsync-fail" else {
            throw StorageFaultSyntaxError(value: value, reason: "unknown fault \"\(parts[0])\" (known: fsync-fail[:K])")
        }
        guard parts.count == 2 else { return StorageFaults(failSyncAtCount: 1) }
        guard let count = Int(parts[1]), count >= 1 else {
            throw StorageFaultSyntaxError(value: value, reason: "K must be an integer ≥ 1, got \"\(parts[1])\"")
        }
        return StorageFaults(failSyncAtCount: count)
    }
}

public struct StorageFaultSyntaxError: Error, CustomStringConvertible, Equatable {
    public let value: String
    public let reason: String
    public var description: String { "bad COHORT_FAULT value \"\(value)\": \(reason)" }
}

/// A file under a log file's name is not a regular file (a FIFO, a device, a directory):
/// damage or a mistake, never something the log made.
public struct LogFileNotRegularError: Error, CustomStringConvertible, Equatable {
    public let path: String
    /// "a FIFO", "a character device", ...
    public let kind: String
    public var description: String { "\(path) is not a regular file (it is \(kind)); the log's files always are" }
}

/// Log storage in a directory on disk. `LogFile.sync` is fdatasync: the log never needs the
/// file's timestamps durable, only its data and size.
public final class FileLogStorage: LogStorage {
    public let directory: String
    public var name: String { directory }
    /// Files are opened for reading only, and the directory is not created: for readers that
    /// never write (`txctl log inspect|verify`, reports). They opened every segment read-write,
    /// so a log on a filesystem the kernel had remounted read-only after disk errors (what ext4
    /// does by default), or whose files the operator may read but not write, could not be
    /// inspected at all ("Read-only file system", "Permission denied").
    public let readOnly: Bool
    private let faults: StorageFaults
    private let lock = PosixConditionLock()
    private var syncCount = 0

    /// Creates the directory (and its parents) when missing; `readOnly` requires it to exist.
    public init(directory: String, faults: StorageFaults = StorageFaults(), readOnly: Bool = false) throws {
        self.directory = directory
        self.faults = faults
        self.readOnly = readOnly
        if readOnly {
            try PosixFS.requireDirectory(directory)
        } else {
            try PosixFS.createDirectory(directory, intermediate: true)
        }
    }

    func path(_ file: String) -> String {
        precondition(!file.isEmpty && !file.contains("/"), "log file name \"\(file)\" is not a plain name")
        return directory + "/" + file
    }

    /// Counts a sync and throws if the injected fault says this one fails.
    func countSync(_ operation: String, path: String) throws {
        let count = lock.withLock { () -> Int in
            syncCount += 1
            return syncCount
        }
        if let failAt = faults.failSyncAtCount, count >= failAt {
            throw PosixError.injectedIOError(operation, path: path)
        }
    }

    public func list() throws -> [String] { try PosixFS.listDirectory(directory) }

    /// Refuses anything but a regular file (a symlink to one is fine) before opening it: the log
    /// only ever makes regular files, and a FIFO or device under a segment's name failed as
    /// "fdatasync: Invalid argument" at start, or read as an empty segment (/dev/zero's size
    /// is 0). Checked before the open, since opening a device can itself have effects.
    public func open(_ file: String, create: Bool) throws -> LogFile {
        let path = path(file)
        if let kind = PosixFS.nonRegularFileKind(path) { throw LogFileNotRegularError(path: path, kind: kind) }
        precondition(!(readOnly && create), "creating \(file) in read-only log storage")
        return FileLogFile(storage: self, file: try PosixFile(path: path, create: create, readOnly: readOnly))
    }

    public func remove(_ file: String) throws { try PosixFS.remove(path(file)) }

    public func rename(_ from: String, to: String) throws { try PosixFS.rename(path(from), path(to)) }

    public func syncDirectory() throws {
        try countSync("fsync", path: directory)
        try PosixFS.fsyncDirectory(directory)
    }
}

final class FileLogFile: LogFile {
    let storage: FileLogStorage
    let file: PosixFile

    init(storage: FileLogStorage, file: PosixFile) {
        self.storage = storage
        self.file = file
    }

    func size() throws -> Int { try file.size() }
    func read(offset: Int, count: Int) throws -> [UInt8] { try file.pread(count: count, offset: offset) }
    func write(_ bytes: [UInt8], at offset: Int) throws { try file.pwrite(bytes, offset: offset) }
    func truncate(to size: Int) throws { try file.truncate(to: size) }
    func sync() throws {
        try storage.countSync("fdatasync", path: file.path)
        try file.fdatasync()
    }
    /// Dirty pages (a killed process's unsynced writes) are written and synced first, then the
    /// clean ones dropped; a sync error here stops recovery as any other would.
    func readFromDiskFromNowOn() throws {
        try sync()
        try file.dropCachedPages()
    }
    func close() { file.close() }
}

/// The lengths a log file may have: every write that lengthens one ends it at a multiple of
/// `Limits.logFileAlignmentBytes` (docs/failure-model.md, "A log file cut short"). One place
/// for the rounding the writer, the simulated disk and the scenario runner's torn writes use.
public enum LogFileLength {
    /// `length` rounded up to a multiple of `Limits.logFileAlignmentBytes`.
    public static func alignedUp(_ length: Int) -> Int {
        let a = Limits.logFileAlignmentBytes
        return (length + a - 1) / a * a
    }

    /// `length` rounded down to a multiple of `Limits.logFileAlignmentBytes`.
    public static func alignedDown(_ length: Int) -> Int {
        length / Limits.logFileAlignmentBytes * Limits.logFileAlignmentBytes
    }
}
