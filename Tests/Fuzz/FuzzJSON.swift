// libFuzzer target: the hand-written JSON parser and every wire type read from it.
// Built into CohortCore itself by Tests/Fuzz/run, so it may reach internal names.
// Properties: no input crashes; whatever parses, written back and parsed again, is the same
// value (the writer and the parser agree); a wire type read from a parsed value writes bytes
// that read back.

@_cdecl("LLVMFuzzerTestOneInput")
public func cohortFuzzJSON(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let node = try? JSONParser.parse(bytes) else { return 0 }
    var writer = JSONWriter()
    writer.value(node)
    let again: JSONNode
    do {
        again = try JSONParser.parse(writer.bytes)
    } catch {
        fatalError("written JSON does not parse: \(error) in \(String(decoding: writer.bytes, as: UTF8.self))")
    }
    precondition(again == node, "round trip changed the value: \(String(decoding: writer.bytes, as: UTF8.self))")
    checkNumbers(node)
    readBack(BeginRequest.self, bytes)
    readBack(RegisterRequest.self, bytes)
    readBack(NamedBranches.self, bytes)
    readBack(PrepareRequest.self, bytes)
    readBack(PrepareResponse.self, bytes)
    readBack(PhaseRequest.self, bytes)
    readBack(SubmitRequest.self, bytes)
    readBack(TCCBranchRequest.self, bytes)
    readBack(TCCPhaseRequest.self, bytes)
    readBack(TCCPhaseResponse.self, bytes)
    return 0
}

/// Reading a number by its digits agrees with its double where a double can tell.
private func checkNumbers(_ node: JSONNode) {
    switch node {
    case .number(let text):
        let d = Double(text)!
        switch JSONNumberText.whole(text) {
        case .int(let n): precondition(Double(n) == d, "\(text) read as \(n)")
        case .tooLarge: precondition(d.magnitude >= 9.2e18, "\(text) read as past 64 bits")
        case .notWhole: precondition(d != d.rounded() || text.count > 17 || d.magnitude < 1, "\(text) read as a fraction")
        }
    case .array(let items): items.forEach(checkNumbers)
    case .object(let members): members.forEach { checkNumbers($0.1) }
    default: break
    }
}

private func readBack<T: WireDecodable & WireEncodable>(_ type: T.Type, _ bytes: [UInt8]) {
    guard let value = try? T(wireJSON: bytes) else { return }
    var writer = JSONWriter()
    value.writeWire(&writer)
    do {
        _ = try T(wireJSON: writer.bytes)
    } catch {
        fatalError("\(T.self) written from a value it read does not read back: \(error): \(String(decoding: writer.bytes, as: UTF8.self))")
    }
}
