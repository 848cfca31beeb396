import CohortCore
import Foundation

/// A failed txctl command: `exitCode` 1 (the operation failed) or 2 (bad usage). `message` is
/// printed as one line `error: MESSAGE` on stderr.
public struct CtlError: Error, CustomStringConvertible, Equatable {
    public let exitCode: Int32
    public let message: String
    public init(_ exitCode: Int32, _ message: String) {
        self.exitCode = exitCode
        self.message = message
    }
    public static func usage(_ m: String) -> CtlError { CtlError(2, m) }
    public static func failed(_ m: String) -> CtlError { CtlError(1, m) }
    public var description: String { message }
}

/// Where a command writes and what it may know about its surroundings; injected so commands
/// print nothing themselves and tests can run them in-process.
public final class CtlContext {
    public var environment: [String: String]
    public var hostName: String
    /// Wall-clock milliseconds since the epoch.
    public var now: () -> Int64
    public var out: (String) -> Void
    public var err: (String) -> Void
    /// The terminal for `txctl watch`; nil when there is none (then `watch` needs `--once`).
    public var terminal: WatchTerminal?
    /// Waits between watch frames when no terminal reads keys.
    public var sleepMs: (Int) -> Void

    public init(environment: [String: String] = ProcessInfo.processInfo.environment,
                hostName: String = ProcessInfo.processInfo.hostName,
                now: @escaping () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) },
                out: @escaping (String) -> Void,
                err: @escaping (String) -> Void,
                terminal: WatchTerminal? = nil,
                sleepMs: @escaping (Int) -> Void = { Thread.sleep(forTimeInterval: Double($0) / 1000) }) {
        self.environment = environment
        self.hostName = hostName
        self.now = now
        self.out = out
        self.err = err
        self.terminal = terminal
        self.sleepMs = sleepMs
    }
}

/// What `txctl watch` needs from a terminal (implemented over CohortPosix in the executable).
public protocol WatchTerminal: AnyObject {
    func enterRawMode() throws
    func restore()
    /// One key within `timeoutMs`: a byte, nil for none, or `closedInput` when input ended.
    func readKey(timeoutMs: Int) -> WatchKey
    var columns: Int? { get }
}

public enum WatchKey: Equatable {
    case byte(UInt8)
    case none
    case closed
}

/// Time helpers for tables.
public enum Clock {
    /// Parses `TimeFormat.iso8601` output (`2026-11-23T13:08:25.123Z`) back to milliseconds.
    public static func parseISO8601(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        guard b.count >= 20 else { return nil }
        func num(_ r: Range<Int>) -> Int? {
            var v = 0
            for i in r {
                let c = b[i]
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int(c - 48)
            }
            return v
        }
        guard let y = num(0..<4), let mo = num(5..<7), let d = num(8..<10),
              let h = num(11..<13), let mi = num(14..<16), let se = num(17..<19),
              (1...12).contains(mo), (1...31).contains(d) else { return nil }
        var ms = 0
        if b.count >= 23 && b[19] == UInt8(ascii: ".") { ms = num(20..<23) ?? 0 }
        let yy = mo <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let mp = (mo + 9) % 12
        let doy = (153 * mp + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return Int64(days) * 86_400_000 + Int64(h * 3600 + mi * 60 + se) * 1000 + Int64(ms)
    }

    /// `3m12s` since `iso`, or `-` when unreadable.
    public static func age(_ iso: String?, nowMs: Int64) -> String {
        guard let iso, let t = parseISO8601(iso) else { return "-" }
        return TimeFormat.duration(ms: max(0, nowMs - t))
    }

    /// `in 28s` / `due` for a future instant.
    public static func until(_ iso: String, nowMs: Int64) -> String {
        guard let t = parseISO8601(iso) else { return iso }
        return t <= nowMs ? "due now" : "in \(TimeFormat.duration(ms: t - nowMs))"
    }
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
public struct Table {
    public var header: [String]
    public var rows: [[String]] = []
    public init(_ header: [String]) { self.header = header }
    public mutating func add(_ row: [String]) { rows.append(row) }

    public func render(indent: String = "") -> String {
        let all = [header] + rows
        let n = header.count
        var widths = [Int](repeating: 0, count: n)
        for r in all { for i in 0..<min(n, r.count) { widths[i] = max(widths[i], r[i].count) } }
        var out = ""
        for r in all {
            var line = indent
            for i in 0..<n {
                let cell = i < r.count ? r[i] : ""
                if i == n - 1 {
                    line += cell
                } else {
                    line += cell + String(repeating: " ", count: widths[i] - cell.count + 2)
                }
            }
            while line.hasSuffix(" ") { line.removeLast() }
            out += line + "\n"
        }
        return out
    }
}

func clip(_ s: String, _ n: Int) -> String {
    let one = s.replacingOccurrences(of: "\n", with: " ")
    return one.count <= n ? one : String(one.prefix(max(n - 3, 0))) + "..."
}

/// Stable JSON: sorted keys, two-space indentation, `"key": value`, empty arrays as `[]`, a
/// final newline.
public enum JSONOut {
    public static func encode<T: Encodable>(_ value: T) -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard let data = try? e.encode(value) else { return "{}\n" }
        return indent(Array(data)) + "\n"
    }

    /// Re-indents compact JSON text (as JSONEncoder writes it, without whitespace).
    static func indent(_ b: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(b.count * 2)
        var depth = 0
        var inString = false
        var escaped = false
        func newline() {
            out.append(10)
            out.append(contentsOf: [UInt8](repeating: 32, count: depth * 2))
        }
        var i = 0
        while i < b.count {
            let c = b[i]
            if inString {
                out.append(c)
                if escaped { escaped = false } else if c == 92 { escaped = true } else if c == 34 { inString = false }
                i += 1
                continue
            }
            switch c {
            case 34:
                inString = true
                out.append(c)
            case 123, 91: // { [
                if i + 1 < b.count && (b[i + 1] == 125 || b[i + 1] == 93) {
                    out.append(c)
                    out.append(b[i + 1])
                    i += 1
                } else {
                    out.append(c)
                    depth += 1
                    newline()
                }
            case 125, 93: // } ]
                depth -= 1
                newline()
                out.append(c)
            case 44: // ,
                out.append(c)
                newline()
            case 58: // :
                out.append(contentsOf: [58, 32])
            default:
                out.append(c)
            }
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}
