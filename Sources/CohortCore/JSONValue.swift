/// Any JSON value, for fields whose shape Cohort does not know (a TCC branch's payload and the
/// result of its try). Decodes and encodes every JSON document.
public indirect enum JSONValue: Codable, Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    /// Any other number, as its text (see `JSONNode.number`): a payload reaches the participant
    /// with the digits the client wrote.
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .int(i) }
        // Foundation's decoder gives no number's text; its double is the best there is here.
        else if let d = try? c.decode(Double.self) { self = .number("\(d)") }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .number(let text): try c.encode(Double(text) ?? 0)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    /// `d` as a number (finite: JSON has no NaN or infinity).
    public static func double(_ d: Double) -> JSONValue {
        precondition(d.isFinite, "JSON has no NaN or infinity")
        return .number("\(d)")
    }

    /// A whole number, also when written `5.0` or `1e3`; nil for a fraction, however small
    /// (`1.0000000000000000001` is not 1), and past 64 bits.
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .number(let text): return JSONNumberText.int64(text)
        default: return nil
        }
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }
}
