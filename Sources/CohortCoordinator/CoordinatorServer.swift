import CohortCore
import CohortHTTP
import CohortLog
import CohortPosix
import CohortRuntime
import Foundation

/// `cohortd`: a `CoordinatorNode` on the real world — its data directory on disk (identity file
/// and durable log, fdatasync'd by the log's own thread), an epoll event loop, an HTTP server
/// for clients and participants, and an HTTP client for participants.
public final class CoordinatorServer: RunnableServer {
    public struct Options {
        public var dataDirectory: String
        public var host = "127.0.0.1"
        public var port = 0
        public var token: String?
        public var onePhaseCommit = true
        public var seed: UInt64?
        /// Checkpoint (and drop older log segments) once this many bytes were logged since the
        /// last checkpoint; small values exercise checkpointing in tests.
        public var checkpointAfterBytes = Limits.checkpointAfterBytes
        public var checkpointIntervalMs = Limits.checkpointIntervalMs
        /// Retry budget before a committing transaction is parked (attempts of one branch, or
        /// time since the decision), and the slow retry delay once parked.
        public var retryBudgetAttempts = Limits.retryBudgetAttempts
        public var retryBudgetMs = Limits.retryBudgetMs
        public var parkedRetryDelayMs = Limits.parkedRetryDelayMs
        /// Finished transactions kept whole, and committed submissions' request_ids kept after.
        public var finishedTransactionsKept = Limits.finishedTransactionsKept
        public var committedSubmissionsKept = Limits.committedSubmissionsKept
        /// Outcomes of forgotten transactions kept (the ledger).
        public var forgottenOutcomesKept = Limits.forgottenOutcomesKept
        /// Bytes of submitted work held until the branches vote, all submissions together.
        public var submittedWorkBytesMax = Limits.coordinatorSubmittedWorkBytesMax

        public init(dataDirectory: String) { self.dataDirectory = dataDirectory }
    }

    public static let crashPoints = CoordinatorNode.crashPoints

    public let loop: EventLoop
    public let node: CoordinatorNode
    private var server: HTTPServer!
    private let client: HTTPClient
    public private(set) var recoveryNote: String?
    private var stopping = false
    /// Held while the server lives: one process per data directory.
    private let dataDirectoryLock: FileLock

    public var port: Int { server.port }
    public var coordinatorID: String { node.coordinatorID }

    /// Opens the data directory, recovers from the log, and binds the listening socket.
    /// `onFatal` is called (from any thread) when the process must stop at once: a failed log
    /// write or sync, after which nothing may be acknowledged.
    public init(options: Options, loop: EventLoop, onFatal: @escaping (String) -> Void) throws {
        self.loop = loop
        // The address first: a busy port (mistyped, or a second coordinator started by mistake)
        // is refused before the data directory is made or another coordinator's log is opened.
        let listener = try HTTPServer.listen(host: options.host, port: options.port)
        let dir = options.dataDirectory
        dataDirectoryLock = try DataDirectory.lock(dir: dir)
        let coordinatorID = try DataDirectory.identities(
            dir: dir,
            files: [.init("coordinator.id", make: { String(format: "%08x", UInt32(truncatingIfNeeded: ProcessEnv.randomU64())) },
                          validate: TxID.isValidCoordinatorID)],
            logSubdirectory: "log",
            startLog: { ids in
                // A new coordinator's state: no transaction, and no epoch used yet (0, which
                // every real epoch is above).
                let machine = Coordinator(config: Coordinator.Config(coordinatorID: ids[0], epoch: 0))
                try DataDirectory.writeFirstCheckpoint(
                    logDirectory: dir + "/log",
                    snapshot: CoordinatorSnapshotContainer.pack(coordinator: machine.snapshot(), tcc: TCCCoordinator().snapshot()))
            })[0]
        let storage = try FileLogStorage(directory: dir + "/log", faults: try storageFaultsFromEnvironment())
        let (log, recovered) = try DurableLog.open(storage: storage)
        recoveryNote = recovered.repairNote
        var config = Coordinator.Config(coordinatorID: coordinatorID, epoch: UInt64(max(SystemClock.wallMs(), 1)))
        config.onePhaseCommit = options.onePhaseCommit
        config.seed = options.seed ?? ProcessEnv.randomU64()
        config.retryBudgetAttempts = options.retryBudgetAttempts
        config.retryBudgetMs = options.retryBudgetMs
        config.parkedRetryDelayMs = options.parkedRetryDelayMs
        config.finishedTransactionsKept = options.finishedTransactionsKept
        config.committedSubmissionsKept = options.committedSubmissionsKept
        config.forgottenOutcomesKept = options.forgottenOutcomesKept
        config.submittedWorkBytesMax = options.submittedWorkBytesMax
        var clientConfig = HTTPClientConfig()
        clientConfig.bearerToken = options.token
        client = HTTPClient(loop: loop, config: clientConfig)
        node = try CoordinatorNode(coordinatorID: coordinatorID, log: log, recovered: recovered, config: config,
                                   checkpointAfterBytes: options.checkpointAfterBytes, checkpointIntervalMs: options.checkpointIntervalMs,
                                   environment: LoopEnvironment(loop: loop, client: client), onFatal: onFatal)
        if let foreign = node.recoveredTransactionOfAnotherCoordinator() {
            throw StartupError("\(dir)/coordinator.id says \(coordinatorID), but the log in \(dir)/log holds transaction \(foreign) of coordinator \(foreign.coordinatorID): the identity file was replaced, or the log belongs to another coordinator; put back the coordinator.id that wrote this log (participants know this log's transactions by that id)")
        }
        var serverConfig = HTTPServerConfig()
        serverConfig.bearerToken = options.token
        let node = self.node
        server = try HTTPServer(loop: loop, listener: listener, config: serverConfig) { request, responder in
            node.handle(request, responder)
        }
        node.exposeHTTPServerMetrics(server)
        // Last, once nothing above can fail: the loop keeps what it observes.
        log.syncOncePerPass(of: loop)
    }

    /// Runs the event loop on the calling thread until `shutdown()`; decided-but-unacknowledged
    /// transactions are re-driven first. The caller routes SIGTERM/SIGINT to `shutdown()`
    /// through `EventLoop.onSignals` before creating the server, so every thread (the log's
    /// sync thread too) inherits the blocked signals.
    public func run() throws {
        loop.execute { [node] in node.start() }
        try loop.run()
    }

    public func shutdown() {
        guard !stopping else { return }
        stopping = true
        server.shutdown()
        node.stop()
        node.log.close()
        loop.stop()
    }
}
