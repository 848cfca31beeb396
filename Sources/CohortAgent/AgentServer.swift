import CohortCore
import CohortHTTP
import CohortKV
import CohortLog
import CohortPosix
import CohortRuntime
import Foundation

/// `cohort-agent`: an `AgentNode` on the real world — its data directory (identity files, the
/// prepare log fdatasync'd by the log's own thread, the SQLite store), an epoll event loop, an
/// HTTP server and an HTTP client.
public final class AgentServer: RunnableServer {
    public struct Options {
        public var name: String
        public var dataDirectory: String
        public var coordinatorURL: String
        public var host = "127.0.0.1"
        public var port = 0
        public var advertiseURL: String?
        public var token: String?
        public var seed: UInt64?
        /// Checkpoint (and drop older log segments) once this many bytes were logged since the
        /// last checkpoint; small values exercise checkpointing in tests.
        public var checkpointAfterBytes = Limits.checkpointAfterBytes
        /// How long an interactive branch's commit record waits for a prepare's sync to ride
        /// with before it syncs alone (`Limits.soonSyncDelayUs`; 0: at once).
        public var commitRideUs = Limits.soonSyncDelayUs
        /// A service embedding the participant serves its own routes first: return true when the
        /// request was handled (answered now or later), false to let the participant route it.
        public var routes: ((HTTPRequest, HTTPResponder) -> Bool)?
        /// The store's SQLite file is this process's alone (`SQLiteKVStore` exclusive locking).
        /// A service that opens the same file through other connections (the inventory demo's
        /// TCC and outbox tables) sets this false.
        public var storeIsExclusive = true
        /// The address to serve, bound already (`HTTPServer.listen`) by a service that embeds the
        /// participant and took it before its own files; nil: `host` and `port` are bound here,
        /// before the data directory is touched.
        public var listener: TCPListener?

        public init(name: String, dataDirectory: String, coordinatorURL: String) {
            self.name = name
            self.dataDirectory = dataDirectory
            self.coordinatorURL = coordinatorURL
        }
    }

    public static let crashPoints = AgentNode.crashPoints

    public let loop: EventLoop
    public private(set) var node: AgentNode!
    private var server: HTTPServer!
    private let client: HTTPClient
    private let store: SQLiteKVStore
    /// Held while the server lives: one process per data directory.
    private let dataDirectoryLock: FileLock
    public private(set) var recoveryNote: String?
    private var stopping = false

    public var port: Int { server.port }
    public var incarnation: String { node.incarnation }

    public init(options: Options, loop: EventLoop, onFatal: @escaping (String) -> Void) throws {
        self.loop = loop
        // The address first: a busy port (mistyped, or a second agent started by mistake) is
        // refused before the data directory is made or another agent's files are opened.
        let listener = try options.listener ?? HTTPServer.listen(host: options.host, port: options.port)
        let dir = options.dataDirectory
        dataDirectoryLock = try DataDirectory.lock(dir: dir)
        let identity = try DataDirectory.identities(
            dir: dir,
            files: [.init("agent.name", make: { options.name }, validate: { !$0.isEmpty }),
                    .init("agent.incarnation", make: { String(format: "%016llx", ProcessEnv.randomU64()) },
                          validate: { $0.utf8.count == 16 && UInt64($0, radix: 16) != nil })],
            logSubdirectory: "log",
            startLog: { _ in
                // A new participant's state: no branch, and nothing applied to the store.
                try DataDirectory.writeFirstCheckpoint(
                    logDirectory: dir + "/log", snapshot: Participant(config: Participant.Config(name: options.name)).snapshot())
            })
        let (name, incarnation) = (identity[0], identity[1])
        guard name == options.name else {
            throw StartupError("\(dir) belongs to agent \"\(name)\", not \"\(options.name)\"; refusing to mix their logs")
        }
        let storage = try FileLogStorage(directory: dir + "/log", faults: try storageFaultsFromEnvironment())
        precondition(options.commitRideUs >= 0 && options.commitRideUs <= Limits.soonSyncDelayUsMax, "commitRideUs out of range")
        let (log, recovered) = try DurableLog.open(storage: storage, config: DurableLogConfig(soonSyncDelayUs: options.commitRideUs))
        recoveryNote = recovered.repairNote
        let storePath = dir + "/kv.sqlite"
        try Self.refuseALostStore(storePath, recovered: recovered)
        store = try SQLiteKVStore(path: storePath, exclusive: options.storeIsExclusive)
        var config = Participant.Config(name: options.name)
        config.seed = options.seed ?? ProcessEnv.randomU64()
        // Inquiries are cheap; keep asking at least every second so a restarted coordinator's
        // answer releases in-doubt locks quickly.
        config.retryDelayMsMax = Limits.inquiryDelayMsMax
        var clientConfig = HTTPClientConfig()
        clientConfig.bearerToken = options.token
        client = HTTPClient(loop: loop, config: clientConfig)
        do {
            node = try AgentNode(name: options.name, incarnation: incarnation, coordinatorURL: options.coordinatorURL,
                                 log: log, recovered: recovered, store: store, config: config,
                                 checkpointAfterBytes: options.checkpointAfterBytes,
                                 environment: LoopEnvironment(loop: loop, client: client), onFatal: onFatal)
        } catch let error as StoreBehindLogError {
            throw StartupError("\(storePath) is older than the log: \(error); refusing to start (restore \(storePath) from the copy that goes with this log)")
        }
        var serverConfig = HTTPServerConfig()
        serverConfig.bearerToken = options.token
        let node = self.node!
        let routes = options.routes
        server = try HTTPServer(loop: loop, listener: listener, config: serverConfig) { request, responder in
            if let routes, routes(request, responder) { return }
            node.handle(request, responder)
        }
        node.advertiseURL = options.advertiseURL ?? "http://\(options.host):\(server.port)"
        node.exposeHTTPServerMetrics(server)
        // Last, once nothing above can fail: the loop keeps what it observes.
        log.syncOncePerPass(of: loop)
    }

    /// A log checkpointed past its first record has dropped commits that only the store holds
    /// now: a store file that is missing or empty there has lost them, and opening it would
    /// create an empty store that the log replays only its last records into. Refused before
    /// SQLite opens (and so creates or changes) anything. Checked by size alone; a store that
    /// has data but less than the checkpoint recorded is caught once it is open
    /// (`StoreBehindLogError`). A log whose only checkpoint is its first record (a new
    /// directory's) still holds every commit: the store is rebuilt from it.
    static func refuseALostStore(_ path: String, recovered: RecoveredLog) throws {
        guard let checkpointLSN = recovered.snapshotLSN, checkpointLSN > 1 else { return }
        let problem: String
        if !PosixFS.exists(path) {
            problem = "is missing"
        } else {
            let file = try PosixFile(path: path, create: false, readOnly: true)
            defer { file.close() }
            guard try file.size() == 0 else { return }
            problem = "is empty (0 bytes)"
        }
        throw StartupError("\(path) \(problem), but the log was checkpointed at LSN \(checkpointLSN) and no longer holds the commits before that, which only the store had; refusing to start (restore \(path) from the copy that goes with this log)")
    }

    /// Runs the event loop on the calling thread until `shutdown()`. The caller routes
    /// SIGTERM/SIGINT to `shutdown()` through `EventLoop.onSignals` before creating the server,
    /// so every thread (the log's sync thread too) inherits the blocked signals.
    public func run() throws {
        loop.execute { [node] in node!.start() }
        try loop.run()
    }

    public func shutdown() {
        guard !stopping else { return }
        stopping = true
        server.shutdown()
        node.stop()
        node.log.close()
        try? store.makeDurable()
        store.close()
        loop.stop()
    }
}
