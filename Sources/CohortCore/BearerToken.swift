/// Why a bearer token (`--token-file F` or `COHORT_TOKEN`) cannot be used.
public struct BearerTokenError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The one check every program that reads a bearer token makes, servers and clients alike.
/// The token goes into `Authorization: Bearer <token>` as it is, so a line break in it would
/// end the header early and start another one (a header injection), a NUL or other control
/// character is refused by every server, and a token past a header's room makes each request
/// fail as "header section too large". Each of those would otherwise show up only as a
/// confusing refusal of the first request, or never at the server, which took the file as it
/// was and then refused every client.
public enum BearerToken {
    /// A token read from a file: whitespace around it is dropped (the newline an editor adds,
    /// as before this check), and what is left must be one line of printable ASCII.
    public static func fromFile(_ bytes: [UInt8], file: String) throws -> String {
        var start = 0
        var end = bytes.count
        while start < end, isSpace(bytes[start]) { start += 1 }
        while end > start, isSpace(bytes[end - 1]) { end -= 1 }
        guard start < end else { throw BearerTokenError("token file \(file) is empty") }
        let token = Array(bytes[start..<end])
        try check(token, source: "token file \(file)")
        return String(decoding: token, as: UTF8.self)
    }

    /// A token given as it is (`COHORT_TOKEN`): nothing is trimmed.
    public static func check(_ token: String, source: String) throws {
        try check(Array(token.utf8), source: source)
    }

    static func check(_ token: [UInt8], source: String) throws {
        guard token.count <= Limits.bearerTokenBytesMax else {
            throw BearerTokenError("\(source): the token is \(token.count) bytes; at most \(Limits.bearerTokenBytesMax) fit in a request header")
        }
        for (i, b) in token.enumerated() where !(0x20...0x7E).contains(b) {
            let what = b == 0x0A || b == 0x0D ? "a line break" : b == 0 ? "a NUL byte" : b < 0x80 ? "a control character" : "a non-ASCII byte"
            throw BearerTokenError("\(source): the token has \(what) (byte \(i)); a bearer token must be one line of printable ASCII")
        }
    }

    private static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || (0x09...0x0D).contains(b) }
}
