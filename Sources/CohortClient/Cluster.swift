import Foundation

/// A coordinator (`cohortd`) and N agents (`cohort-agent`, named `a`, `b`, ...) run as child
/// processes in one data directory. A restarted process keeps the port it had, so agents still
/// find the coordinator and the coordinator still finds its participants.
public final class Cluster: @unchecked Sendable {
    public static let coordinatorName = "coordinator"

    public struct Options {
        /// Where `cohortd` and `cohort-agent` are; nil: `Cluster.findBinDirectory()`.
        public var binDirectory: URL?
        /// The data directory (created); nil: a fresh temporary directory, removed by `stop()`
        /// unless `keepData`.
        public var dataDirectory: String?
        public var keepData = false
        public var agents = 2
        public var coordinatorArguments: [String] = []
        public var agentArguments: [String] = []
        /// Extra environment per process name (`coordinator`, `a`, `b`, ...), e.g. crash points.
        public var environment: [String: [String: String]] = [:]
        public var startTimeoutMs = 20_000
        public init() {}
    }

    public let options: Options
    public let binDirectory: URL
    public let dataDirectory: String
    public let logDirectory: String
    public let agentNames: [String]

    private let lock = NSLock()
    private var processes: [String: ManagedProcess] = [:]
    private var ports: [String: Int] = [:]
    private var starts: [String: Int] = [:]
    private var stopped = false

    public init(options: Options = Options()) throws {
        self.options = options
        guard options.agents >= 0, options.agents <= 26 else { throw ManagedProcessError("agents must be 0-26") }
        binDirectory = try options.binDirectory ?? Cluster.findBinDirectory()
        for program in ["cohortd", "cohort-agent"] {
            let path = binDirectory.appendingPathComponent(program).path
            guard FileManager.default.isExecutableFile(atPath: path) else {
                throw ManagedProcessError("\(path) not found; build it first (swift build)")
            }
        }
        if let d = options.dataDirectory {
            dataDirectory = d
        } else {
            dataDirectory = tempPath("cohort-cluster-\(UUID().uuidString.prefix(8).lowercased())")
        }
        logDirectory = dataDirectory + "/logs"
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        agentNames = (0..<options.agents).map { String(UnicodeScalar(UInt8(97 + $0))) }
    }

    /// Starts the coordinator, then the agents.
    public func start() throws {
        do {
            try startProcess(Cluster.coordinatorName)
            for name in agentNames { try startProcess(name) }
        } catch {
            stop()
            throw error
        }
    }

    /// The directory holding `cohortd`: `COHORT_BIN_DIR`, else the directory of the running
    /// executable (a product next to the servers, or the test bundle in `.build/debug`), else a
    /// `.build/debug` above the current directory.
    public static func findBinDirectory(file: String = #filePath) throws -> URL {
        let fm = FileManager.default
        var candidates: [URL] = []
        if let env = ProcessInfo.processInfo.environment["COHORT_BIN_DIR"], !env.isEmpty {
            candidates.append(URL(fileURLWithPath: env))
        }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0], relativeTo: URL(fileURLWithPath: fm.currentDirectoryPath))
            .standardizedFileURL.resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        candidates.append(dir)
        // Inside a bundle (…/X.xctest/Contents/MacOS/X): walk up a few levels.
        for _ in 0..<4 {
            dir = dir.deletingLastPathComponent()
            candidates.append(dir)
        }
        candidates.append(Bundle.main.bundleURL.deletingLastPathComponent())
        // From the source tree: <root>/.build/debug.
        var root = URL(fileURLWithPath: file).deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(root.appendingPathComponent(".build/debug"))
            root = root.deletingLastPathComponent()
        }
        candidates.append(URL(fileURLWithPath: fm.currentDirectoryPath).appendingPathComponent(".build/debug"))
        for c in candidates where fm.isExecutableFile(atPath: c.appendingPathComponent("cohortd").path)
            && fm.isExecutableFile(atPath: c.appendingPathComponent("cohort-agent").path) {
            return c
        }
        throw ManagedProcessError("cannot find cohortd and cohort-agent (looked next to \(exe.path) and in .build/debug); set COHORT_BIN_DIR")
    }

    public func executable(_ program: String) -> URL { binDirectory.appendingPathComponent(program) }

    // MARK: - processes

    public func process(_ name: String) -> ManagedProcess? {
        lock.lock(); defer { lock.unlock() }
        return processes[name]
    }

    public var coordinator: ManagedProcess { process(Cluster.coordinatorName)! }

    public func port(_ name: String) -> Int? {
        lock.lock(); defer { lock.unlock() }
        return ports[name]
    }

    public func url(_ name: String) -> String {
        "http://127.0.0.1:\(port(name) ?? 0)"
    }

    public var coordinatorURL: String { url(Cluster.coordinatorName) }
    public var agentURLs: [String] { agentNames.map { url($0) } }
    public var allNames: [String] { [Cluster.coordinatorName] + agentNames }
    public var allURLs: [String] { allNames.map { url($0) } }

    public func dataDirectory(of name: String) -> String { "\(dataDirectory)/\(name)" }

    /// Starts (or restarts) one process on the port it had before (0 the first time).
    /// `environment` replaces the options' extra environment for this start (e.g. to restart
    /// without the crash point that stopped it).
    @discardableResult
    public func startProcess(_ name: String, environment: [String: String]? = nil) throws -> ManagedProcess {
        lock.lock()
        if let p = processes[name], p.isRunning {
            lock.unlock()
            throw ManagedProcessError("\(name) is already running")
        }
        let port = ports[name] ?? 0
        let attempt = (starts[name] ?? 0) + 1
        starts[name] = attempt
        let coordinatorPort = ports[Cluster.coordinatorName]
        lock.unlock()

        let env = environment ?? options.environment[name] ?? [:]
        let program: String
        var args: [String]
        if name == Cluster.coordinatorName {
            program = "cohortd"
            args = ["--data", dataDirectory(of: name), "--port", String(port)] + options.coordinatorArguments
        } else {
            guard let coordinatorPort else { throw ManagedProcessError("start the coordinator before agent \(name)") }
            program = "cohort-agent"
            args = ["--name", name, "--data", dataDirectory(of: name), "--port", String(port),
                    "--coordinator", "http://127.0.0.1:\(coordinatorPort)"] + options.agentArguments
        }
        var lastError: Error?
        // A port just released may still be busy for a moment: retry the same port a few times.
        for retry in 0..<(port == 0 ? 1 : 25) {
            let p = ManagedProcess(name: name, executable: executable(program), arguments: args, environment: env,
                                   logDirectory: logDirectory, attempt: retry == 0 ? attempt : attempt * 100 + retry)
            do {
                try p.start(timeoutMs: options.startTimeoutMs)
                lock.lock()
                processes[name] = p
                ports[name] = p.port
                lock.unlock()
                return p
            } catch {
                lastError = error
                lock.lock()
                processes[name] = p
                lock.unlock()
                Thread.sleep(forTimeInterval: 0.2)
            }
        }
        throw lastError!
    }

    /// kill -9 one process and wait for it to be gone.
    public func kill9(_ name: String) {
        process(name)?.kill9()
    }

    /// Stops (SIGTERM) one process.
    public func terminate(_ name: String) {
        process(name)?.terminate()
    }

    /// Kills (if running) and starts again on the same port.
    @discardableResult
    public func restart(_ name: String, environment: [String: String]? = nil, kill: Bool = true) throws -> ManagedProcess {
        if let p = process(name), p.isRunning {
            if kill { p.kill9() } else { p.terminate() }
        }
        return try startProcess(name, environment: environment)
    }

    public func isRunning(_ name: String) -> Bool { process(name)?.isRunning ?? false }

    /// Stops every process (SIGTERM, then SIGKILL); removes a temporary data directory unless
    /// `keepData`.
    public func stop() {
        lock.lock()
        let all = Array(processes.values)
        let already = stopped
        stopped = true
        lock.unlock()
        for p in all where p.isRunning { p.signalTerminate() }
        for p in all { p.terminate(timeoutMs: 3_000) }
        if !already, options.dataDirectory == nil, !options.keepData {
            try? FileManager.default.removeItem(atPath: dataDirectory)
        }
    }

    deinit {
        lock.lock()
        let all = Array(processes.values)
        lock.unlock()
        for p in all where p.isRunning { p.kill9() }
        if !stopped, options.dataDirectory == nil, !options.keepData {
            try? FileManager.default.removeItem(atPath: dataDirectory)
        }
    }
}

