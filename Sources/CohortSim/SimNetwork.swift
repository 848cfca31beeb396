import CohortCore
import CohortHTTP
import CohortRuntime
import Foundation

/// The simulated network: every request and answer is a message that may be lost, duplicated,
/// delayed (which reorders them) or cut by a partition. A sender that hears nothing gets a
/// timeout after its request's `timeoutMs`, as over TCP.
extension Simulation {
    func deliver(from sender: String, generation: Int, _ request: HTTPClientRequest,
                 _ completion: @escaping (Swift.Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        guard let parsed = SimURL(request.url), let target = nodes[parsed.host] ?? clientTarget(parsed.host) else {
            schedule(afterUs: 10, "bad url \(request.url)") { completion(.failure(.invalidURL(request.url))) }
            return
        }
        final class Once { var done = false }
        let once = Once()
        let finish: (Swift.Result<HTTPClientResponse, HTTPClientError>) -> Void = { result in
            guard !once.done else { return }
            once.done = true
            completion(result)
        }
        let label = "\(sender)->\(parsed.host) \(request.method) \(parsed.path)" + (config.traceTxids ? " [\(txidOf(request.body) ?? "-")]" : "")
        // The sender's own timeout.
        schedule(afterUs: request.timeoutMs * 1000, "timeout \(label)", skip: { once.done }) { finish(.failure(.timeout)) }
        guard let node = target as? SimNode else { return }
        if nodes[sender]?.dying == true {
            trace("DROPPED (sender is crashing) \(label)")
            return
        }
        if tccMode { tccOnSend(from: sender, path: parsed.path) } else { threePhaseOnSend(from: sender, request, path: parsed.path) }
        if !node.isUp {
            schedule(afterUs: 50, "refused \(label)") { finish(.failure(.connectFailed("connection refused"))) }
            return
        }
        let copies = chance(config.faults.duplicatePercent) && !healed ? 2 : 1
        for copy in 0..<copies {
            if let drop = dropRule, drop(sender, parsed.host, parsed.path) {
                trace("DROPPED by script \(label)")
                continue
            }
            if isCut(sender, parsed.host) || (!healed && chance(config.faults.lossPercent)) {
                trace("LOST \(label)")
                continue
            }
            let delay = delayRule?(sender, parsed.host, parsed.path)
                ?? (tccMode ? tccDelayUs() : atomicDelayUs(from: sender, to: parsed.host, path: parsed.path, body: request.body))
            let late = tccMode && delay >= (config.faults.tcc?.lateDelayUsMin ?? .max)
            if late { tccLateInFlight += 1 }
            schedule(afterUs: delay, "deliver \(label)\(copy == 1 ? " (duplicate)" : "")\(late ? " (late)" : "")") { [unowned self] in
                if late { self.tccLateInFlight -= 1 }
                guard node.isUp else { return }
                self.onDeliver?(sender, parsed.host, parsed.path)
                let httpRequest = HTTPRequest(method: request.method, target: parsed.target, path: parsed.path,
                                              query: parsed.query, headers: request.headers, body: request.body)
                let sink = SimResponseSink { [unowned self] response in
                    // The answer travels back: it too can be lost or cut.
                    if self.isCut(parsed.host, sender) || (!self.healed && self.chance(self.config.faults.lossPercent)) {
                        self.trace("LOST answer \(label)")
                        return
                    }
                    guard copy == 0 else { return } // a duplicate's answer is discarded
                    self.schedule(afterUs: 20 + self.random(self.config.faults.delayUsMax), "answer \(response.status) \(label)") {
                        finish(.success(HTTPClientResponse(status: response.status, headers: response.headers, body: response.body)))
                    }
                }
                if let c = node.coordinator { c.handle(httpRequest, sink) } else if let s = node.service { s.handle(httpRequest, sink) } else { node.agent?.handle(httpRequest, sink) }
                // Participants learn outcomes while handling messages: check agreement often.
                if parsed.path.hasPrefix("/v1/2pc/") || parsed.path.hasPrefix("/v1/3pc/"), let txid = txidOf(request.body) { self.checkAgreement(txid: txid) }
            }
        }
    }

    private func clientTarget(_ host: String) -> AnyObject? { nil }

    /// Whether a message is, or carries in a `/v1/batch`, a message to a path starting `prefix`.
    private func carries(_ prefix: String, _ path: String, _ body: [UInt8]) -> Bool {
        if path.hasPrefix(prefix) { return true }
        guard path == "/v1/batch" else { return false }
        let needle = Array(prefix.utf8)
        return body.count >= needle.count && (0...(body.count - needle.count)).contains { i in body[i..<(i + needle.count)].elementsEqual(needle) }
    }

    /// 3PC runs (`preCommitCrashPercent`): the coordinator may crash right after its first
    /// pre-commit of a fan-out leaves, so the rest never do.
    private func threePhaseOnSend(from sender: String, _ request: HTTPClientRequest, path: String) {
        guard config.faults.preCommitCrashPercent > 0, !healed, sender == "coordinator", let node = nodes[sender], !node.dying,
              carries("/v1/3pc/precommit", path, request.body),
              chance(config.faults.preCommitCrashPercent) else { return }
        node.dying = true
        schedule(afterUs: 0, "CRASH POINT coordinator after sending a pre-commit") { [unowned self] in
            self.crash("coordinator", reason: "crash point after a pre-commit send")
        }
    }

    /// A 2PC/3PC run's message delay; in 3PC runs (`lateThreePhasePercent`) a message between
    /// agents or a 3PC message from the coordinator is now and then held for seconds.
    private func atomicDelayUs(from: String, to: String, path: String, body: [UInt8]) -> Int64 {
        guard config.faults.lateThreePhasePercent > 0 else { return 20 + random(config.faults.delayUsMax) }
        let peers = agentNames.contains(from) && agentNames.contains(to)
        if !healed, peers || carries("/v1/3pc/", path, body), chance(config.faults.lateThreePhasePercent) {
            trace("LATE \(from)->\(to) \(path)")
            return 200_000 + random(2_800_000)
        }
        return 20 + random(config.faults.delayUsMax)
    }

    func isCut(_ from: String, _ to: String) -> Bool { cut.contains("\(from)>\(to)") }

    private func txidOf(_ body: [UInt8]) -> String? {
        (try? JSONDecoder().decode(PhaseRequest.self, from: Data(body)))?.txid
    }
}

final class SimResponseSink: ResponseSink {
    private var sent = false
    private let onSend: (HTTPResponse) -> Void
    init(_ onSend: @escaping (HTTPResponse) -> Void) { self.onSend = onSend }
    func send(_ response: HTTPResponse) {
        guard !sent else { return }
        sent = true
        onSend(response)
    }
}

/// `http://host:port/path?query` split into what a server sees.
struct SimURL {
    let host: String
    let target: String
    let path: String
    let query: [String: String]

    init?(_ url: String) {
        guard url.hasPrefix("http://") else { return nil }
        let rest = url.dropFirst(7)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let authority = rest[..<slash]
        host = String(authority.split(separator: ":").first ?? "")
        target = String(rest[slash...])
        let parts = target.split(separator: "?", maxSplits: 1)
        path = String(parts[0])
        var q: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                q[String(kv[0])] = kv.count == 2 ? String(kv[1]) : ""
            }
        }
        query = q
    }
}
