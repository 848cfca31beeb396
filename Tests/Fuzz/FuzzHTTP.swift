// libFuzzer target: the HTTP/1.1 request parser. Built into CohortHTTP by Tests/Fuzz/run.
// Properties: no input crashes; the requests (or the error) are the same whether the bytes
// arrive at once or split where the input's first byte says (a socket may cut anywhere).

@_cdecl("LLVMFuzzerTestOneInput")
public func cohortFuzzHTTP(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let cut = Int(data[0])
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let whole = parseAll([bytes])
    var pieces: [[UInt8]] = []
    var start = 0
    let step = max(1, cut % 17)
    while start < bytes.count {
        let end = min(bytes.count, start + step)
        pieces.append(Array(bytes[start..<end]))
        start = end
    }
    let split = parseAll(pieces)
    precondition(whole == split, "split input parsed differently: \(whole) vs \(split)")
    return 0
}

private func parseAll(_ pieces: [[UInt8]]) -> [String] {
    var parser = HTTPRequestParser(headerBytesMax: 4096, headerCountMax: 32, bodyBytesMax: 8192)
    var seen: [String] = []
    for piece in pieces {
        parser.feed(piece)
        while true {
            do {
                guard let r = try parser.next() else { break }
                seen.append("\(r.method) \(r.path) \(r.pathComponents) \(r.query.sorted { $0.key < $1.key }) \(r.body.count) \(r.keepAlive)")
            } catch {
                seen.append("error \(error)")
                return seen
            }
        }
    }
    return seen
}
