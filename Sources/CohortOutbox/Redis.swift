import CohortCore
import CohortPosix

/// A RESP2 value.
public indirect enum RESPValue: Equatable, Sendable {
    case simple(String)
    case error(String)
    case integer(Int64)
    /// nil is the null bulk string.
    case bulk([UInt8]?)
    /// nil is the null array.
    case array([RESPValue]?)

    public var string: String? {
        switch self {
        case .simple(let s): return s
        case .bulk(let b?): return String(decoding: b, as: UTF8.self)
        default: return nil
        }
    }
}

public enum RedisError: Error, CustomStringConvertible, Equatable {
    case badURL(String)
    /// Could not connect, or the connection broke: the server may be down.
    case connection(String)
    /// The server sent something that is not RESP, or past our limits.
    case protocolError(String)
    /// The server answered with an error reply.
    case server(String)

    public var description: String {
        switch self {
        case .badURL(let s): return "bad redis URL \"\(redactedRedisURL(s))\": expected redis://HOST:PORT or redis://[USER]:PASSWORD@HOST:PORT"
        case .connection(let s): return "redis connection: \(s)"
        case .protocolError(let s): return "redis protocol error: \(s)"
        case .server(let s): return "redis error: \(s)"
        }
    }
}

/// Encodes commands as RESP arrays of bulk strings.
public enum RESPEncoder {
    public static func append(_ args: [String], to out: inout [UInt8]) {
        out.append(UInt8(ascii: "*"))
        appendDecimal(args.count, &out)
        for a in args {
            out.append(UInt8(ascii: "$"))
            appendDecimal(a.utf8.count, &out)
            out.append(contentsOf: a.utf8)
            out.append(13); out.append(10)
        }
    }

    static func appendDecimal(_ n: Int, _ out: inout [UInt8]) {
        out.append(contentsOf: String(n).utf8)
        out.append(13); out.append(10)
    }

    public static func encode(_ args: [String]) -> [UInt8] {
        var out: [UInt8] = []
        append(args, to: &out)
        return out
    }
}

/// An incremental RESP2 parser: feed bytes, take complete values. Never traps on bad input.
public struct RESPParser {
    var buffer: [UInt8] = []
    var pos = 0

    public init() {}

    public mutating func feed(_ bytes: UnsafeRawBufferPointer) {
        if pos > 0 && pos == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            pos = 0
        } else if pos > (1 << 20) {
            buffer.removeFirst(pos)
            pos = 0
        }
        buffer.append(contentsOf: bytes)
    }

    public mutating func feed(_ bytes: [UInt8]) { bytes.withUnsafeBytes { feed($0) } }

    /// The next complete value, or nil if more bytes are needed.
    public mutating func next() throws -> RESPValue? {
        var p = pos
        guard let v = try parse(&p, depth: 0) else { return nil }
        pos = p
        return v
    }

    private func line(_ p: inout Int) throws -> ArraySlice<UInt8>? {
        var i = p
        while i + 1 < buffer.count {
            if buffer[i] == 13 && buffer[i + 1] == 10 {
                let s = buffer[p..<i]
                p = i + 2
                return s
            }
            i += 1
            if i - p > 64 << 10 { throw RedisError.protocolError("line longer than 64 KiB") }
        }
        return nil
    }

    private func integer(_ s: ArraySlice<UInt8>) throws -> Int64 {
        var neg = false
        var v: Int64 = 0
        var any = false
        for (i, c) in s.enumerated() {
            if i == 0 && c == UInt8(ascii: "-") { neg = true; continue }
            guard c >= 48 && c <= 57 else { throw RedisError.protocolError("bad integer \"\(String(decoding: s, as: UTF8.self))\"") }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(c - 48))
            guard !o1 && !o2 else { throw RedisError.protocolError("integer overflow") }
            v = a
            any = true
        }
        guard any else { throw RedisError.protocolError("empty integer") }
        return neg ? -v : v
    }

    private func parse(_ p: inout Int, depth: Int) throws -> RESPValue? {
        guard depth <= Limits.redisNestingMax else { throw RedisError.protocolError("arrays nested deeper than \(Limits.redisNestingMax)") }
        guard p < buffer.count else { return nil }
        let type = buffer[p]
        var q = p + 1
        guard let head = try line(&q) else { return nil }
        switch type {
        case UInt8(ascii: "+"):
            p = q
            return .simple(String(decoding: head, as: UTF8.self))
        case UInt8(ascii: "-"):
            p = q
            return .error(String(decoding: head, as: UTF8.self))
        case UInt8(ascii: ":"):
            let v = try integer(head)
            p = q
            return .integer(v)
        case UInt8(ascii: "$"):
            let n = try integer(head)
            if n == -1 { p = q; return .bulk(nil) }
            guard n >= 0, n <= Int64(Limits.redisBulkBytesMax) else { throw RedisError.protocolError("bulk string of \(n) bytes") }
            let end = q + Int(n)
            guard end + 2 <= buffer.count else { return nil }
            guard buffer[end] == 13 && buffer[end + 1] == 10 else { throw RedisError.protocolError("bulk string not followed by CRLF") }
            p = end + 2
            return .bulk(Array(buffer[q..<end]))
        case UInt8(ascii: "*"):
            let n = try integer(head)
            if n == -1 { p = q; return .array(nil) }
            guard n >= 0, n <= Int64(Limits.redisArrayCountMax) else { throw RedisError.protocolError("array of \(n) elements") }
            var items: [RESPValue] = []
            items.reserveCapacity(Int(min(n, 1024)))
            for _ in 0..<n {
                guard let v = try parse(&q, depth: depth + 1) else { return nil }
                items.append(v)
            }
            p = q
            return .array(items)
        default:
            throw RedisError.protocolError("unknown reply type byte \(type)")
        }
    }
}

/// Where a Redis server is and how to log in to it: `redis://[[USER]:PASSWORD@]HOST[:PORT]`
/// (the Redis URI scheme; USER and PASSWORD percent-encoded where they hold `:`, `@`, `%`).
/// A URL without a password takes `COHORT_REDIS_PASSWORD` from the environment, so the
/// password need not sit in a command line, which every local user can read in `ps`.
public struct RedisEndpoint: Equatable, Sendable {
    public let host: String
    public let port: Int
    /// An ACL user (Redis 6 and later); nil logs in as `default`.
    public let user: String?
    public let password: String?
    /// The URL with the password left out, for messages, names and metrics.
    public var displayURL: String {
        let who = password == nil ? (user.map { "\($0)@" } ?? "") : "\(user ?? ""):***@"
        return "redis://\(who)\(host):\(port)"
    }
    /// The command that logs a new connection in, if a password is set.
    var authCommand: [String]? {
        guard let password else { return nil }
        return user.map { ["AUTH", $0, password] } ?? ["AUTH", password]
    }
}

/// `url` with anything between `redis://` and the last `@` hidden: what error messages echo.
func redactedRedisURL(_ url: String) -> String {
    guard url.hasPrefix("redis://"), let at = url.lastIndex(of: "@") else { return url }
    return "redis://***" + url[at...]
}

/// Parses a `redis://` URL (`RedisEndpoint`); `passwordFromEnvironment` is used when the URL
/// gives no password.
public func parseRedisURL(_ url: String, passwordFromEnvironment: String? = ProcessEnv.get("COHORT_REDIS_PASSWORD")) throws -> RedisEndpoint {
    guard url.hasPrefix("redis://") else { throw RedisError.badURL(url) }
    var rest = String(url.dropFirst("redis://".count))
    while rest.hasSuffix("/") { rest.removeLast() }
    var user: String?
    var password: String?
    if let at = rest.lastIndex(of: "@") {
        let info = rest[..<at]
        rest = String(rest[rest.index(after: at)...])
        guard let colon = info.firstIndex(of: ":"),
              let u = percentDecoded(info[..<colon]), let p = percentDecoded(info[info.index(after: colon)...]),
              !p.isEmpty else {
            throw RedisError.badURL(url)
        }
        user = u.isEmpty ? nil : u
        password = p
    } else if let p = passwordFromEnvironment, !p.isEmpty {
        password = p
    }
    // No host is refused, not read as 127.0.0.1: `redis://$HOST:6379` with HOST unset must
    // not reach a local Redis that happens to run.
    guard !rest.isEmpty, !rest.hasPrefix(":"), !rest.contains("/") else { throw RedisError.badURL(url) }
    guard let colon = rest.lastIndex(of: ":") else { return RedisEndpoint(host: rest, port: 6379, user: user, password: password) }
    let host = String(rest[..<colon])
    guard let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port), !host.isEmpty else {
        throw RedisError.badURL(url)
    }
    return RedisEndpoint(host: host, port: port, user: user, password: password)
}

/// `%XX` sequences decoded; nil when one is malformed or the result is not UTF-8.
private func percentDecoded(_ s: Substring) -> String? {
    var out: [UInt8] = []
    var bytes = Array(s.utf8)[...]
    while let b = bytes.popFirst() {
        guard b == UInt8(ascii: "%") else { out.append(b); continue }
        guard bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) else { return nil }
        out.append(v)
        bytes = bytes.dropFirst(2)
    }
    return String(validating: out, as: UTF8.self)
}

/// A blocking Redis connection with pipelining: write every command, then read every reply.
/// Not thread-safe: one per thread.
public final class RedisConnection {
    public let host: String
    public let port: Int
    let socket: BlockingSocket
    var parser = RESPParser()
    var readBuffer = [UInt8](repeating: 0, count: 256 << 10)

    /// Connects and, when the URL (or `COHORT_REDIS_PASSWORD`) gives a password, logs in: a
    /// refused login throws `RedisError.server` with Redis's own words (`WRONGPASS ...`).
    public init(url: String, connectTimeoutMs: Int64 = Limits.httpClientConnectTimeoutMs,
                ioTimeoutMs: Int64 = Limits.outboxSinkTimeoutMs) throws {
        let endpoint = try parseRedisURL(url)
        (host, port) = (endpoint.host, endpoint.port)
        do {
            socket = try BlockingSocket(host: host, port: port, connectTimeoutMs: connectTimeoutMs, ioTimeoutMs: ioTimeoutMs)
        } catch {
            throw RedisError.connection("connecting to \(host):\(port): \(error)")
        }
        if let auth = endpoint.authCommand {
            do {
                try command(auth)
            } catch RedisError.server(let e) {
                socket.close()
                throw RedisError.server("logging in to \(endpoint.displayURL): \(e)")
            } catch {
                socket.close()
                throw error
            }
        }
    }

    public func close() { socket.close() }

    public func setTimeout(ms: Int64) { socket.setIOTimeout(ms: ms) }

    /// Sends all commands in one write and reads one reply per command. Error replies are
    /// returned as `.error` values, not thrown; connection problems throw.
    public func pipeline(_ commands: [[String]]) throws -> [RESPValue] {
        var out: [UInt8] = []
        out.reserveCapacity(commands.count * 128)
        for c in commands { RESPEncoder.append(c, to: &out) }
        return try send(encoded: out, replies: commands.count)
    }

    public func send(encoded: [UInt8], replies: Int) throws -> [RESPValue] {
        do {
            try encoded.withUnsafeBytes { try socket.writeAll($0) }
        } catch {
            throw RedisError.connection("writing to \(host):\(port): \(error)")
        }
        var replyValues: [RESPValue] = []
        replyValues.reserveCapacity(replies)
        while replyValues.count < replies {
            while replyValues.count < replies, let v = try parser.next() { replyValues.append(v) }
            if replyValues.count == replies { break }
            let n: Int
            do {
                n = try readBuffer.withUnsafeMutableBytes { try socket.read(into: $0.baseAddress!, count: $0.count) }
            } catch {
                throw RedisError.connection("reading from \(host):\(port): \(error)")
            }
            if n == 0 { throw RedisError.connection("\(host):\(port) closed the connection") }
            readBuffer.withUnsafeBytes { parser.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        return replyValues
    }

    /// One command; an error reply throws `RedisError.server`.
    @discardableResult
    public func command(_ args: [String]) throws -> RESPValue {
        let r = try pipeline([args])[0]
        if case .error(let e) = r { throw RedisError.server(e) }
        return r
    }
}
