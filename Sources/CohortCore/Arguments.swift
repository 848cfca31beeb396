/// A small command-line parser for Cohort's programs: `--name value`, `--name=value`, boolean
/// `--flag`, and positional words. Errors are usage errors (exit status 2).
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct Arguments {
    /// `--check-flags`, which the programs `txscenario validate` starts take: check the whole
    /// command line, values included, and exit 0 without creating, opening or binding anything.
    public static let checkFlags = "check-flags"
    public static let checkFlagsUsage = """
      --check-flags       check the command line, values included, and exit (0: it would start);
                          nothing is created, opened or bound
    """

    public private(set) var values: [String: String] = [:]
    public private(set) var flags: Set<String> = []
    public private(set) var positional: [String] = []

    /// `valued` names take a value; `booleans` do not. Anything else starting with `--` is an error.
    public init(_ argv: [String], valued: Set<String>, booleans: Set<String> = ["help"]) throws {
        var i = 0
        while i < argv.count {
            let arg = argv[i]
            if arg == "--" {
                positional.append(contentsOf: argv[(i + 1)...])
                break
            }
            if arg.hasPrefix("--") {
                var name = String(arg.dropFirst(2))
                var inline: String?
                if let eq = name.firstIndex(of: "=") {
                    inline = String(name[name.index(after: eq)...])
                    name = String(name[..<eq])
                }
                if booleans.contains(name) {
                    guard inline == nil else { throw UsageError("--\(name) takes no value") }
                    flags.insert(name)
                } else if valued.contains(name) {
                    // Refused rather than last-one-wins: `--data A ... --data B` from a script
                    // that built its command line in two places must not pick a directory silently.
                    guard values[name] == nil else { throw UsageError("--\(name) is given twice") }
                    if let inline {
                        values[name] = inline
                    } else {
                        // A next word that is itself an option means the value was left out:
                        // `--data --check-flags` must not make a directory named `--check-flags`
                        // (and start the server). A value that really starts with `--` can be
                        // given as `--data=--x`. Negative numbers (`-1`) have one dash and pass.
                        guard i + 1 < argv.count, !argv[i + 1].hasPrefix("--") else {
                            throw UsageError("--\(name) needs a value")
                        }
                        i += 1
                        values[name] = argv[i]
                    }
                } else {
                    throw UsageError("unknown option --\(name)")
                }
            } else if arg == "-h" {
                flags.insert("help")
            } else {
                positional.append(arg)
            }
            i += 1
        }
    }

    public func has(_ flag: String) -> Bool { flags.contains(flag) }

    public func string(_ name: String) -> String? { values[name] }

    /// The value of `--name` when given, refused when empty: `--stream ''` from a script whose
    /// variable was unset must not become a stream named "" (or silently the default).
    public func nonEmpty(_ name: String) throws -> String? {
        guard let v = values[name] else { return nil }
        guard !v.isEmpty else { throw UsageError("--\(name) must not be empty") }
        return v
    }

    public func required(_ name: String) throws -> String {
        guard let v = values[name] else { throw UsageError("--\(name) is required") }
        guard !v.isEmpty else { throw UsageError("--\(name) must not be empty") }
        return v
    }

    public func int(_ name: String, default d: Int? = nil, range: ClosedRange<Int>? = nil) throws -> Int? {
        guard let v = values[name] else { return d }
        // Digits with an optional '-' only: Int("+5") parses, and a value a script mangled
        // should not pass for a number.
        guard v.first != "+", let n = Int(v) else { throw UsageError("--\(name) must be an integer, got \"\(v)\"") }
        if let range, !range.contains(n) {
            throw UsageError("--\(name) must be between \(range.lowerBound) and \(range.upperBound), got \(n)")
        }
        return n
    }

    /// Durations like `500ms`, `10s`, `3m`, `1h`, or a bare number of milliseconds.
    public func durationMs(_ name: String, default d: Int64? = nil) throws -> Int64? {
        guard let v = values[name] else { return d }
        guard let ms = Arguments.parseDurationMs(v) else {
            throw UsageError("--\(name) must be a duration such as 500ms, 10s or 3m, at most \(Limits.durationMsMax / 86_400_000)d, got \"\(v)\"")
        }
        return ms
    }

    /// nil for anything that is not a duration or is longer than `Limits.durationMsMax`.
    public static func parseDurationMs(_ v: String) -> Int64? {
        guard let ms = parseUnboundedDurationMs(v), ms <= Limits.durationMsMax else { return nil }
        return ms
    }

    private static func parseUnboundedDurationMs(_ v: String) -> Int64? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (suffix, scale) in units where v.hasSuffix(suffix) {
            let number = v.dropLast(suffix.count)
            if let n = Int64(number), n >= 0, n <= Int64.max / scale { return n * scale }
            if suffix == "m" || suffix == "s" { continue } // "ms" ends in "s"; try the next unit
            return nil
        }
        if let n = Int64(v), n >= 0 { return n }
        return nil
    }
}
