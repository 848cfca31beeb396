import CohortClient
import Foundation

/// How the runner starts the demo topology's processes (the dispatch points in Runner.swift
/// call these): `inventory-service` as `inventory`, `order-service` as `orders` and, with
/// `"broker": "redis"`, `redis-server` as `redis`.
extension ScenarioRun {
    /// Program and arguments of a demo process other than the coordinator. A link with a
    /// network fault is a proxy: `--coordinator`, `--advertise` and the order service's
    /// `--inventory` point at it.
    func demoArguments(_ name: String, port: Int, flags: [String]) -> (String, [String]) {
        let coordinator = proxies["\(name)->coordinator"]?.url ?? url("coordinator")
        var args = ["--data", "\(dataDir)/\(name)", "--port", String(port), "--coordinator", coordinator]
        if let p = proxies["coordinator->\(name)"] { args += ["--advertise", p.url] }
        if let redis { args += ["--broker", redis.url] }
        if name == "orders" {
            args += ["--inventory", proxies["orders->inventory"]?.url ?? url("inventory")]
            return ("order-service", args + flags)
        }
        return ("inventory-service", args + flags)
    }

    /// With `"broker": "redis"`, starts `redis` first (the services connect to it at start).
    /// True when there is nothing to start or it started.
    func startRedisIfNeeded() throws -> Bool {
        guard scenario.topology.demo?.broker == .redis else { return true }
        let server = try RedisServer(directory: "\(dataDir)/redis")
        redis = server
        setPort("redis", server.port)
        return startProcess("redis")
    }
}
