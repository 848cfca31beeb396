/// Counters and gauges rendered in the Prometheus text format. Used from one thread (a server's
/// event loop); values owned by other threads are read through gauge closures that are
/// themselves thread-safe.
public final class MetricsRegistry {
    private struct Family {
        let help: String
        let type: String
        /// Each series' slot in `values`, by its rendered labels.
        var series: [String: Int] = [:]
        var order: [String] = []
    }

    /// A counter series resolved once (`counter(_:labels:)`): adding to it indexes an array
    /// instead of two hash lookups of its name and labels, which servers did for every message.
    public struct Counter {
        fileprivate let slot: Int
    }

    private var families: [String: Family] = [:]
    private var familyOrder: [String] = []
    private var values: [Double] = []
    private var sampled: [(name: String, labels: String, read: () -> Double)] = []

    public init() {}

    /// Declares a metric so it renders (at 0) before anything is counted.
    public func declare(_ name: String, type: String = "counter", help: String, labels: [String] = [""]) {
        if families[name] == nil {
            families[name] = Family(help: help, type: type)
            familyOrder.append(name)
        }
        for l in labels { _ = slot(name, l) }
    }

    /// The slot of a series of a declared family, made (at 0) on first use.
    private func slot(_ name: String, _ labels: String) -> Int {
        guard let i = families.index(forKey: name) else { preconditionFailure("metric \(name) not declared") }
        if let slot = families.values[i].series[labels] { return slot }
        let slot = values.count
        values.append(0)
        families.values[i].series[labels] = slot
        families.values[i].order.append(labels)
        return slot
    }

    /// `labels` is the rendered label set without braces, e.g. `type="prepare"`.
    public func add(_ name: String, labels: String = "", _ value: Double = 1) {
        values[slot(name, labels)] += value
    }

    /// The series `name{labels}` of a declared family, for `add(_:_:)` without lookups.
    public func counter(_ name: String, labels: String = "") -> Counter { Counter(slot: slot(name, labels)) }

    public func add(_ counter: Counter, _ value: Double = 1) { values[counter.slot] += value }

    public func set(_ name: String, labels: String = "", _ value: Double) {
        values[slot(name, labels)] = value
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
        return families[name]?.series[labels].map { values[$0] }
    }

    public func render() -> String {
        var out = ""
        for name in familyOrder {
            let f = families[name]!
            out += "# HELP \(name) \(f.help)\n# TYPE \(name) \(f.type)\n"
            for labels in f.order {
                out += line(name, labels, values[f.series[labels]!])
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

/// The last N samples of a latency, for percentiles (bounded memory).
public struct LatencyWindow {
    private var samples: [Double] = []
    private var next = 0
    public let capacity: Int

    public init(capacity: Int = 10_000) { self.capacity = capacity }

    public mutating func add(_ ms: Double) {
        if samples.count < capacity { samples.append(ms) } else { samples[next] = ms }
        next = (next + 1) % capacity
    }

    public var count: Int { samples.count }

    /// (p50, p95, p99, max); zeros when empty.
    public func percentiles() -> (p50: Double, p95: Double, p99: Double, max: Double) {
        guard !samples.isEmpty else { return (0, 0, 0, 0) }
        let sorted = samples.sorted()
        func at(_ q: Double) -> Double { sorted[min(sorted.count - 1, Int(q * Double(sorted.count)))] }
        return (at(0.50), at(0.95), at(0.99), sorted.last!)
    }
}

/// Events per second over a sliding window of whole seconds (bounded memory).
public struct RateWindow {
    private var buckets: [UInt64]
    private var bucketSecond: [Int64]
    public init(seconds: Int = 60) {
        buckets = Array(repeating: 0, count: seconds)
        bucketSecond = Array(repeating: -1, count: seconds)
    }
    public mutating func add(atMs: Int64, _ n: UInt64 = 1) {
        let second = atMs / 1000
        let i = Int(second % Int64(buckets.count))
        if bucketSecond[i] != second {
            bucketSecond[i] = second
            buckets[i] = 0
        }
        buckets[i] += n
    }
    /// Average per second over the window ending at `nowMs` (the current second excluded).
    public func rate(nowMs: Int64) -> Double {
        let now = nowMs / 1000
        var total: UInt64 = 0
        for i in buckets.indices where bucketSecond[i] < now && bucketSecond[i] >= now - Int64(buckets.count) {
            total += buckets[i]
        }
        return Double(total) / Double(buckets.count)
    }
}
