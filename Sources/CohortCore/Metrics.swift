/// Counters and gauges rendered in the Prometheus text format. Used from one thread (a server's
/// event loop); values owned by other threads are read through gauge closures that are
/// themselves thread-safe.
public final class MetricsRegistry {
    private struct Family {
        let help: String
        let type: String
        var series: [String: Double] = [:]
        var order: [String] = []
    }

    private var families: [String: Family] = [:]
    private var familyOrder: [String] = []
    private var sampled: [(name: String, labels: String, read: () -> Double)] = []

    public init() {}

    /// Declares a metric so it renders (at 0) before anything is counted.
    public func declare(_ name: String, type: String = "counter", help: String, labels: [String] = [""]) {
        if families[name] == nil {
            families[name] = Family(help: help, type: type)
            familyOrder.append(name)
        }
        for l in labels { touch(name, l) }
    }

    private func touch(_ name: String, _ labels: String) {
        if families[name]!.series[labels] == nil {
            families[name]!.series[labels] = 0
            families[name]!.order.append(labels)
        }
    }

    /// `labels` is the rendered label set without braces, e.g. `type="prepare"`.
    public func add(_ name: String, labels: String = "", _ value: Double = 1) {
        precondition(families[name] != nil, "metric \(name) not declared")
        touch(name, labels)
        families[name]!.series[labels]! += value
    }

    public func set(_ name: String, labels: String = "", _ value: Double) {
        precondition(families[name] != nil, "metric \(name) not declared")
        touch(name, labels)
        families[name]!.series[labels] = value
    }

    /// A value read at render time (gauges and counters owned elsewhere).
    public func sample(_ name: String, type: String = "gauge", help: String, labels: String = "", _ read: @escaping () -> Double) {
        if families[name] == nil {
            families[name] = Family(help: help, type: type)
            familyOrder.append(name)
        }
        sampled.append((name, labels, read))
    }

    public func value(_ name: String, labels: String = "") -> Double? {
        if let s = sampled.first(where: { $0.name == name && $0.labels == labels }) { return s.read() }
        return families[name]?.series[labels]
    }

    public func render() -> String {
        var out = ""
        for name in familyOrder {
            let f = families[name]!
            out += "# HELP \(name) \(f.help)\n# TYPE \(name) \(f.type)\n"
            for labels in f.order {
                out += line(name, labels, f.series[labels]!)
            }
            for s in sampled where s.name == name {
                out += line(name, s.labels, s.read())
            }
        }
        return out
    }

    private func line(_ name: String, _ labels: String, _ v: Double) -> String {
        let value = v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)
        return labels.isEmpty ? "\(name) \(value)\n" : "\(name){\(labels)} \(value)\n"
    }
}
