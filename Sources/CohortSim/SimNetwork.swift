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
                        if self.tccMode && !once.done {
                            self.tccAnswerArrives(sender: sender, generation: generation, url: request.url, path: parsed.path, status: response.status)
                        }
                        finish(.success(HTTPClientResponse(status: response.status, headers: response.headers, body: response.body)))
                    }
                }
                if self.config.faults.readOnlyPercent > 0, sender == "coordinator" { self.noteReaders(to: parsed.host, path: parsed.path, body: request.body) }
                if let c = node.coordinator { c.handle(httpRequest, sink) } else if let s = node.service { s.handle(httpRequest, sink) } else { node.agent?.handle(httpRequest, sink) }
                // Participants learn outcomes while handling messages: check agreement often.
                if parsed.path.hasPrefix("/v1/2pc/") || parsed.path.hasPrefix("/v1/3pc/"), let txid = txidOf(request.body) { self.checkAgreement(txid: txid) }
            }
        }
    }

    private func clientTarget(_ host: String) -> AnyObject? { nil }

    /// Notes the branches that a submitted transaction's prepare (alone or in a `/v1/batch`)
    /// gives only `get` ops (`readerBranches`): their txid is the coordinator's, unknown to the
    /// client until the answer.
    func noteReaders(to host: String, path: String, body: [UInt8]) {
        guard agentNames.contains(host), let o = try? WireObject(bytes: body) else { return }
        if path == "/v1/batch" {
            guard case .array(let messages)? = o["messages"] else { return }
            for case .object(let m) in messages {
                var innerPath: String?, innerBody: String?
                for (k, v) in m {
                    if k == "path", case .string(let p) = v { innerPath = p }
                    if k == "body", case .string(let b) = v { innerBody = b }
                }
                if let innerPath, let innerBody { noteReaders(to: host, path: innerPath, body: Array(innerBody.utf8)) }
            }
            return
        }
        guard path.hasSuffix("/prepare"), case .string(let txid)? = o["txid"], case .array(let ops)? = o["ops"], !ops.isEmpty else { return }
        let onlyGets = ops.allSatisfy { op in
            guard case .object(let fields) = op else { return false }
            return fields.contains { $0.0 == "op" && $0.1 == .string("get") }
        }
        if onlyGets { readerBranches.insert("\(host) \(txid)") }
    }

    /// Whether a message is, or carries in a `/v1/batch`, a message to a path starting `prefix`.
    func carries(_ prefix: String, _ path: String, _ body: [UInt8]) -> Bool {
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

/// A request the coordinator sent during a stall of its sends to that participant
/// (`Faults.senderStalls`): it waits in the coordinator's process, as one waits in the HTTP
/// client for a connection, until the stall ends, its own timeout fires, or it is withdrawn.
final class HeldRequest {
    let request: HTTPClientRequest
    let generation: Int
    let heldAtUs: Int64
    let completion: (Swift.Result<HTTPClientResponse, HTTPClientError>) -> Void
    /// Completed (timed out or withdrawn) or sent: nothing more happens to it here.
    var done = false

    init(request: HTTPClientRequest, generation: Int, heldAtUs: Int64,
         completion: @escaping (Swift.Result<HTTPClientResponse, HTTPClientError>) -> Void) {
        self.request = request
        self.generation = generation
        self.heldAtUs = heldAtUs
        self.completion = completion
    }
}

/// Classic 3PC runs (`Faults.senderStalls`): the coordinator's sends to one participant stall
/// in its own process for seconds. Nothing that left is touched: the network stays as the
/// classic model wants it, and the participant stays up.
extension Simulation {
    /// The next stall comes 0.3-2.3 s after the last ended (one at a time), to a participant
    /// drawn then. A third start at once, wherever the coordinator's exchanges with it stand;
    /// the others are armed, and start as the coordinator sends that participant a pre-commit
    /// (alone or in a batch), which then waits out the stall: most pre-commits go out within
    /// milliseconds of their votes, so a stall started at random seldom catches one.
    func scheduleSenderStall() {
        schedule(afterUs: 300_000 + random(2_000_000), "sender stall timer") { [unowned self] in
            guard !self.healed else { return }
            let agent = self.agentNames[Int(self.rng.next() % UInt64(self.agentNames.count))]
            if self.rng.next() % 3 == 0 {
                self.startSenderStall(agent)
            } else {
                self.senderStallArmed = agent
                self.trace("STALL armed: coordinator->\(agent) stalls at its next pre-commit")
            }
        }
    }

    private func startSenderStall(_ agent: String) {
        senderStallArmed = nil
        let lengthUs = Faults.senderStallUsMin + random(Faults.senderStallUsMax - Faults.senderStallUsMin)
        senderStalls[agent] = (nowUs + lengthUs, [])
        trace("STALL coordinator->\(agent) for \(lengthUs / 1000) ms")
        schedule(afterUs: lengthUs, "stall of coordinator->\(agent) ends") { [unowned self] in self.endSenderStall(agent) }
    }

    /// Whether `request` from `sender` waits out a stall (then `completion` runs later, or
    /// never if the sender's process dies first).
    func holdIfStalled(from sender: String, generation: Int, _ request: HTTPClientRequest,
                       _ completion: @escaping (Swift.Result<HTTPClientResponse, HTTPClientError>) -> Void) -> Bool {
        guard sender == "coordinator", !healed, let url = SimURL(request.url) else { return false }
        let host = url.host
        if senderStallArmed == host, carries("/v1/3pc/precommit", url.path, request.body) { startSenderStall(host) }
        guard let stall = senderStalls[host], nowUs < stall.untilUs else { return false }
        let held = HeldRequest(request: request, generation: generation, heldAtUs: nowUs, completion: completion)
        senderStalls[host]!.held.append(held)
        let label = "\(sender)->\(host) \(request.method) \(url.path)"
        trace("HELD (stalled in the sender) \(label)")
        // Its own timeout runs from the send, as in the HTTP client; it fails unsent.
        schedule(afterUs: request.timeoutMs * 1000, "timeout (held) \(label)", skip: { held.done }) {
            held.done = true
            completion(.failure(.timeout))
        }
        return true
    }

    /// The stall ends: what still waits leaves now, each with what is left of its timeout;
    /// what a dead incarnation of the coordinator sent died with it.
    func endSenderStall(_ agent: String) {
        guard let stall = senderStalls.removeValue(forKey: agent) else { return }
        trace("stall of coordinator->\(agent) over: \(stall.held.filter { !$0.done }.count) waiting request(s) leave")
        if !healed { scheduleSenderStall() }
        guard let coordinator = nodes["coordinator"] else { return }
        for held in stall.held where !held.done {
            held.done = true
            guard coordinator.isUp, coordinator.generation == held.generation else { continue }
            var request = held.request
            request.timeoutMs = max(1, request.timeoutMs - (nowUs - held.heldAtUs) / 1000)
            deliver(from: "coordinator", generation: held.generation, request, held.completion)
        }
    }

    /// `NodeEnvironment.withdraw` for the coordinator: its requests with `key` still waiting
    /// out a stall fail unsent, now.
    func withdrawHeld(from sender: String, generation: Int, key: String, because why: String) -> Int {
        guard sender == "coordinator" else { return 0 }
        var withdrawn = 0
        for agent in senderStalls.keys.sorted() {
            for held in senderStalls[agent]!.held where !held.done && held.generation == generation && held.request.withdrawKey == key {
                held.done = true
                withdrawn += 1
                trace("WITHDRAWN (held in the sender) coordinator->\(agent) \(SimURL(held.request.url)?.path ?? "")")
                held.completion(.failure(.withdrawn("\(why), while still waiting in this host's HTTP client")))
            }
        }
        return withdrawn
    }
}
