// swift-tools-version:6.0
import PackageDescription

// No third-party packages: everything below is the toolchain plus system libraries.


let package = Package(
    name: "Cohort",
    products: [
        .executable(name: "cohortd", targets: ["cohortd"]),
        .executable(name: "cohort-agent", targets: ["cohort-agent"]),
        .executable(name: "cohort-quickstart", targets: ["cohort-quickstart"]),
        .executable(name: "txbench", targets: ["txbench"]),
        .executable(name: "txctl", targets: ["txctl"]),
        .executable(name: "tcc-inventory", targets: ["tcc-inventory"]),
        .executable(name: "txscenario", targets: ["txscenario"]),
        .executable(name: "cohort-relay", targets: ["cohort-relay"]),
        .executable(name: "outbox-demo-producer", targets: ["outbox-demo-producer"]),
        .executable(name: "outbox-demo-consumer", targets: ["outbox-demo-consumer"]),
        .executable(name: "order-service", targets: ["order-service"]),
        .executable(name: "inventory-service", targets: ["inventory-service"]),
    ],
    targets: [
        // SQLite from Debian's libsqlite3-dev.
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        // The only module that imports Glibc: files, sockets, epoll, clocks, processes.
        .target(name: "CohortPosix"),
        // Pure logic: encodings, CRC, protocol messages and the protocol state machines.
        .target(name: "CohortCore"),
        // The durable, segmented, group-committed log and its storage seam (files / simulated).
        .target(name: "CohortLog", dependencies: ["CohortCore", "CohortPosix"]),
        // HTTP/1.1 parser (pure), server and client on the epoll event loop.
        .target(name: "CohortHTTP", dependencies: ["CohortCore", "CohortPosix"]),
        // One SQLite connection (WAL, cached statements, a fair write lock) and its error type,
        // for every module that keeps state in SQLite.
        .target(name: "CohortSQLite", dependencies: ["CSQLite", "CohortCore", "CohortPosix"]),
        // The agent's resource: a transactional key-value store (SQLite) with per-key locks.
        .target(name: "CohortKV", dependencies: ["CohortCore", "CohortSQLite", "CSQLite"]),
        // What both server runtimes share: request/timer tables, JSON bodies, data directories.
        .target(name: "CohortRuntime", dependencies: ["CohortCore", "CohortLog", "CohortHTTP", "CohortPosix"]),
        // Runtimes: carry out the state machines' actions against disk, network and timers.
        .target(name: "CohortCoordinator", dependencies: ["CohortRuntime"]),
        .target(name: "CohortAgent", dependencies: ["CohortRuntime", "CohortKV"]),
        // The deterministic simulation: real nodes over a simulated network, disk and clock.
        .target(name: "CohortSim", dependencies: ["CohortCoordinator", "CohortAgent", "CohortKV", "CohortLog", "CohortRuntime", "CohortSQLite", "CohortTCC"]),
        // Blocking client helpers and process supervision for CLIs, benchmarks and tests.
        .target(name: "CohortClient", dependencies: ["CohortCore", "CohortHTTP", "CohortPosix"]),
        // TCC for services: the barrier in the service's own SQLite database, phase endpoints.
        .target(name: "CohortTCC", dependencies: ["CohortSQLite", "CohortCore", "CohortHTTP"]),
        .executableTarget(name: "tcc-inventory", dependencies: ["CohortTCC", "CohortPosix", "CohortRuntime"]),
        .executableTarget(name: "cohortd", dependencies: ["CohortCoordinator"]),
        .executableTarget(name: "cohort-agent", dependencies: ["CohortAgent"]),
        .executableTarget(name: "cohort-quickstart", dependencies: ["CohortClient", "CohortPosix"]),
        .executableTarget(name: "txbench", dependencies: ["CohortClient", "CohortPosix"]),
        // txctl's commands, rendering and log tools (no printing: output goes to injected sinks).
        .target(name: "CohortCtl", dependencies: ["CohortCore", "CohortHTTP", "CohortLog", "CohortPosix"]),
        .executableTarget(name: "txctl", dependencies: ["CohortCtl", "CohortPosix"]),
        // The scenario runner: real processes, a fault-injecting proxy, crash points and disk faults.
        .target(name: "CohortScenario", dependencies: ["CohortClient", "CohortCore", "CohortHTTP", "CohortLog", "CohortOutbox", "CohortPosix", "CohortSQLite", "CohortTCC"]),
        .executableTarget(name: "txscenario", dependencies: ["CohortScenario", "CohortSim", "CohortPosix"]),
        // The local-message-table outbox: producer API, relay (state machine + runtime), sinks
        // (HTTP, Redis Streams over our own RESP client), inbox, admin API.
        .target(name: "CohortOutbox", dependencies: ["CohortCore", "CohortPosix", "CohortHTTP", "CohortSQLite", "CSQLite"]),
        .executableTarget(name: "cohort-relay", dependencies: ["CohortOutbox", "CohortRuntime"]),
        .executableTarget(name: "outbox-demo-producer", dependencies: ["CohortOutbox"]),
        .executableTarget(name: "outbox-demo-consumer", dependencies: ["CohortOutbox"]),
        // The order/inventory demo: two services embedding the participant runtime, TCC and the outbox.
        .target(name: "CohortDemo", dependencies: ["CohortAgent", "CohortClient", "CohortTCC", "CohortOutbox", "CohortSQLite"]),
        .executableTarget(name: "order-service", dependencies: ["CohortDemo", "CohortPosix", "CohortRuntime"]),
        .executableTarget(name: "inventory-service", dependencies: ["CohortDemo", "CohortPosix", "CohortRuntime"]),
        .testTarget(name: "DemoTests", dependencies: ["CohortClient", "CohortCore", "CohortPosix", "CohortDemo", "CohortHTTP", "CohortOutbox", "CohortSQLite", "CohortTCC"]),
        .testTarget(name: "OutboxTests", dependencies: ["CohortOutbox", "CohortClient", "CohortCore", "CohortHTTP", "CohortPosix", "CohortCtl"]),
        .testTarget(name: "CohortCoreTests", dependencies: ["CohortCore"]),
        .testTarget(name: "SimulationTests", dependencies: ["CohortSim"]),
        .testTarget(name: "CohortLogTests", dependencies: ["CohortLog"]),
        .testTarget(name: "CohortHTTPTests", dependencies: ["CohortHTTP"]),
        .testTarget(name: "CohortKVTests", dependencies: ["CohortKV", "CohortSQLite"]),
        .testTarget(name: "CohortTCCTests", dependencies: ["CohortTCC", "CohortSQLite"]),
        .testTarget(name: "CohortSQLiteTests", dependencies: ["CohortSQLite"]),
        .testTarget(name: "IntegrationTests", dependencies: ["CohortClient", "CohortCore"]),
        .testTarget(name: "ScenarioTests", dependencies: ["CohortScenario", "CohortClient", "CohortPosix"]),
        .testTarget(name: "TxctlTests", dependencies: ["CohortCtl", "CohortClient", "CohortCore", "CohortLog", "CohortHTTP", "CohortPosix"], exclude: ["Golden"]),
    ],
    swiftLanguageModes: [.v5]
)
