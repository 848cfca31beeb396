import CohortCore
import CohortHTTP
import CohortPosix
import CohortRuntime
import CohortTCC
import Foundation

let usage = """
usage: tcc-inventory --data DIR --port N [--host H] [--token-file F]

A TCC inventory service (the worked example of the CohortTCC library): stock per sku in
DIR/inventory.sqlite; try reserves, confirm sells, cancel releases, all through the barrier.
Finished branches' barrier rows are purged every minute once older than 24 h; past
\(Limits.tccBarrierRowsMax) rows a try or cancel of a new branch is refused (503) until then.
  --token-file F    require "Authorization: Bearer <token>" on every call but GET /healthz and
                    /metrics (also env COHORT_TOKEN); give the coordinator the same token
  POST /v1/stock {"sku","available"}     set a sku's stock (setup only; 409 while it has open reservations)
  GET  /v1/stock/{sku}                   {"sku","available","reserved","sold"}
  GET  /metrics                          phase calls by result, barrier rows held and purged, HTTP and CPU counters
  POST /v1/tcc/inventory/try|confirm|cancel   the TCC phases ({"txid","branch_id","payload":{"sku","qty"}})
  GET  /v1/tcc/inventory/branches/{txid}/{branch_id}   what the barrier knows of a branch
                                         ({"txid","branch_id","state","barrier_retention_ms"})
\(Arguments.checkFlagsUsage)
Environment: COHORT_CRASHPOINT=NAME[:K] or =list
"""

let crashPoints = ["tcc-inventory.after-try-committed", "tcc-inventory.after-confirm-committed", "tcc-inventory.after-cancel-committed"]

func fail(_ message: String, status: Int32) -> Never {
    StandardStream.err("error: \(message)\n")
    exit(status)
}

do {
    let args = try Arguments(Array(CommandLine.arguments.dropFirst()), valued: ["data", "port", "host", "token-file"], booleans: ["help", Arguments.checkFlags])
    if args.has("help") { print(usage); exit(0) }
    if case .list = try CrashPoints.configure(known: crashPoints) {
        crashPoints.forEach { print($0) }
        exit(0)
    }
    guard args.positional.isEmpty else { throw UsageError("unexpected argument \(args.positional[0])") }
    let dir = try args.required("data")
    let port = try args.int("port", range: 0...65535) ?? { throw UsageError("--port is required") }()
    let host = try listenHost(args)
    // Read before --check-flags returns, as cohortd reads it: a token file that cannot be
    // used fails the check too.
    var serverConfig = HTTPServerConfig()
    serverConfig.bearerToken = try loadToken(file: args.string("token-file"))
    if args.has(Arguments.checkFlags) { exit(0) }
    // The address first, as the other servers take it: a busy port is refused before the data
    // directory is made or another process's database opened.
    let listener = try HTTPServer.listen(host: host, port: port)
    // Held for the process's life: a second tcc-inventory on the same directory would run a
    // second barrier purger over the same rows (the other services refuse it the same way).
    let dataDirectoryLock = try DataDirectory.lock(dir: dir)
    let store = try InventoryStore(databasePath: dir + "/inventory.sqlite")
    #if DEBUG
    if TestOnlyBreak.fromEnvironment() == .tccIgnoreFence { store.resource.testOnlyRunFencedTry = true }
    #endif
    store.resource.afterCommit = { phase, outcome in
        if case .done = outcome { CrashPoints.hit("tcc-inventory.after-\(phase.rawValue)-committed") }
    }
    let loop = try EventLoop()
    // Finished branches' barrier rows go after the retention (docs/tcc.md, "Cleanup").
    let purger = TCCBarrierPurger(resource: store.resource) { ms, body in _ = loop.schedule(afterMs: ms, body) }
    purger.start()
    let metrics = MetricsRegistry()
    store.resource.declareMetrics(metrics, purger: purger)
    var server: HTTPServer?
    try loop.onSignals([SignalNumber.terminate, SignalNumber.interrupt]) { _ in
        server?.shutdown()
        loop.stop()
    }
    server = try HTTPServer(loop: loop, listener: listener, config: serverConfig) { request, responder in
        if let r = store.resource.handle(request) ?? store.resource.handleBranchQuery(request) { return responder.send(r) }
        let parts = request.pathComponents
        do {
            switch (request.method, parts.count) {
            case ("GET", 1) where parts[0] == "healthz":
                responder.send(.json(200, ["status": "ok"]))
            case ("GET", 1) where parts[0] == "metrics":
                responder.send(.text(200, metrics.render(), contentType: "text/plain; version=0.0.4"))
            case ("POST", 2) where parts == ["v1", "stock"]:
                let body: StockRequest
                switch JSONBody.decode(StockRequest.self, from: request.body) {
                case .failure(let e): return responder.send(.requestError(e))
                case .success(let b): body = b
                }
                do {
                    try store.setStock(sku: body.sku, available: body.available)
                } catch TCCError.conflict(let why) {
                    return responder.send(.error(409, why))
                }
                responder.send(.json(200, try store.stock(sku: body.sku)))
            case ("GET", 3) where parts[0] == "v1" && parts[1] == "stock":
                guard let s = try store.stock(sku: parts[2]) else { return responder.send(.error(404, "unknown sku \(parts[2].prefix(80))")) }
                responder.send(.json(200, s))
            default:
                responder.send(.error(404, "no route for \(request.method) \(request.path)"))
            }
        } catch {
            responder.send(.error(400, "\(error)"))
        }
    }
    declareHTTPServerMetrics(metrics, server: server!)
    print("listening on http://\(host):\(server!.port)")
    fflush(stdout)
    try loop.run()
    withExtendedLifetime(dataDirectoryLock) {}
    exit(0)
} catch let e as UsageError {
    fail("\(e) (see tcc-inventory --help)", status: 2)
} catch let e as CrashPointError {
    fail("\(e)", status: 2)
} catch {
    fail("\(error)", status: 1)
}
