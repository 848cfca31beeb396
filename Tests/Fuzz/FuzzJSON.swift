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
