import Foundation
import Glibc

/// Named crash points: `COHORT_CRASHPOINT=NAME` (or `NAME:K`, the K-th time it is reached)
/// makes the process exit at once with status 137 when it reaches that point, as if killed:
/// no flush, no cleanup, no atexit handlers. Used by tests and scenarios to stop a process at
/// an exact protocol step.
public enum CrashPoints {
    /// The environment variable that arms a crash point.
    public static let environmentVariable = "COHORT_CRASHPOINT"

    private static let lock = NSLock()
    private static var armedName: String?
    private static var armedCount = 1
    private static var hits = 0
    private static var configured = false

    public enum Setting: Equatable {
        case none
        case list
        case armed(name: String, count: Int)
    }

    /// Parses the variable's value; throws a readable message for bad syntax.
    public static func parse(_ value: String?) throws -> Setting {
        guard let value, !value.isEmpty else { return .none }
        if value == "list" { return .list }
        let parts = value.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2, !parts[0].isEmpty else {
            throw CrashPointError("\(environmentVariable)=\(value): expected NAME or NAME:K")
        }
        var count = 1
        if parts.count == 2 {
            guard let k = Int(parts[1]), k >= 1 else {
                throw CrashPointError("\(environmentVariable)=\(value): K must be a positive integer")
            }
            count = k
        }
        return .armed(name: String(parts[0]), count: count)
    }

    /// Arms the crash point named in the environment, checking that the process knows it.
    public static func configure(known: [String]) throws -> Setting {
        let setting = try parse(ProcessInfo.processInfo.environment[environmentVariable])
        lock.lock()
        defer { lock.unlock() }
        configured = true
        if case .armed(let name, let count) = setting {
            guard known.contains(name) else {
                throw CrashPointError("\(environmentVariable)=\(name): unknown crash point (COHORT_CRASHPOINT=list prints them)")
            }
            armedName = name
            armedCount = count
        }
        return setting
    }

    /// Exits with 137 if `name` is the armed point and this is its K-th hit.
    @inline(__always)
    public static func hit(_ name: String) {
        guard armedName != nil else { return }
        lock.lock()
        guard armedName == name else { lock.unlock(); return }
        hits += 1
        let fire = hits == armedCount
        lock.unlock()
        if fire { _exit(137) }
    }
}

public struct CrashPointError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
