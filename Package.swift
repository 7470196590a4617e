// swift-tools-version:6.0
import PackageDescription

/// syncd: content-addressed project sync for remote GPU hosts.
///
/// The module graph, bottom up, is drawn in docs/ARCHITECTURE.md ("Modules"); scripts/check-imports.py (run by
/// `make test`) fails when a target imports a module it does not declare here, or when anything syncd-agent
/// links imports Foundation.
let swiftSettings: [SwiftSetting] = [.unsafeFlags(["-Xcc", "-O3"]) ]

let package = Package(
    name: "syncd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "syncctl", targets: ["syncctl"]),
        .executable(name: "syncd", targets: ["syncd"]),
        .executable(name: "syncd-agent", targets: ["syncd-agent"]),
        .executable(name: "syncd-bench", targets: ["syncd-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .systemLibrary(name: "CXXHash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLibSSH2", providers: [.apt(["libssh2-1-dev"])]),

        .systemLibrary(name: "CSystemShims"),
        .systemLibrary(name: "CCurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "COpenSSL", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        .target(name: "SyncSystem", dependencies: ["CSystemShims"]),
        .target(name: "Chunking", dependencies: ["CXXHash", "CSystemShims", "SyncSystem"], swiftSettings: swiftSettings),
        .target(name: "Wire", dependencies: ["CZlib", "Chunking", "SyncSystem"]),
        .target(name: "Transport", dependencies: ["Wire", "SyncSystem"]),
        // What a push sends, what a pull takes, the three-way check and conflict records: pure rules, no I/O.
        .target(name: "SyncRules", dependencies: ["Chunking", "Wire", "SyncSystem"]),
        .target(name: "Placement", dependencies: ["Chunking", "CSystemShims", "SyncSystem"]),
        .target(name: "ProjectScan", dependencies: ["Chunking", "SyncSystem"]),
        .target(name: "Watch", dependencies: ["ProjectScan", "SyncSystem"]),
        .target(name: "Dockerfile"),
        .target(name: "HTTP", dependencies: ["CCurl", "SyncSystem"]),
        .target(name: "S3", dependencies: ["COpenSSL", "HTTP", "SyncSystem"]),
        .target(name: "SnapshotFormat", dependencies: ["CZlib", "Chunking", "Wire", "SyncSystem"]),
        .target(name: "StoreClient", dependencies: ["S3", "SnapshotFormat", "LocalState", "Chunking", "Wire", "SyncSystem"]),
        // The data plane both directions share: chunks sent (ChunkSender) and received into a file (ChunkWriter).
        .target(name: "Transfer", dependencies: ["Chunking", "Placement", "Wire", "SyncSystem"]),
        .target(name: "AgentCore", dependencies: ["CSQLite", "CSystemShims", "Wire", "Placement", "Chunking", "SyncSystem", "ProjectScan", "Watch", "HTTP", "SnapshotFormat", "SyncRules", "Transfer"]),
        .target(name: "LocalState", dependencies: [
            "Chunking", "ProjectScan", "SnapshotFormat", "SyncRules", .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        .target(name: "SyncConfig", dependencies: ["ProjectScan", "Yams"]),
        // AES-CTR keystream in batches under libssh2, which calls the cipher once per 16-byte block.
        .target(name: "CSSHCipher", linkerSettings: [.linkedLibrary("crypto")]),
        .target(name: "SSHTransport", dependencies: ["CLibSSH2", "CSSHCipher", "Chunking", "Wire", "Transport", "SyncConfig", "SyncSystem"]),
        // A project on the laptop: its scan, push and pull sessions over one agent link, what they report.
        .target(name: "Client", dependencies: [
            "Wire", "Transport", "SSHTransport", "Placement", "ProjectScan", "LocalState", "SyncConfig", "Chunking",
            "SyncSystem", "SnapshotFormat", "SyncRules", "Transfer",
        ]),
        // Builds: BuildKit-style layer keys and push order; exec and compose on the remote.
        .target(name: "Builds", dependencies: ["Client", "Dockerfile", "SyncConfig", "ProjectScan", "SyncSystem", "Transport", "Wire", "LocalState", "SyncRules", "Chunking"]),
        // Many hosts: a push through the snapshot store, snapshots and restore, pull_from: all, swarm discovery.
        .target(name: "Fleet", dependencies: [
            "Client", "Builds", "S3", "SnapshotFormat", "StoreClient", "LocalState", "SyncConfig", "SyncRules", "SyncSystem",
            "Transport", "Wire", "Chunking", "SSHTransport",
        ]),
        // The daemon's control socket: requests, answers, the client; the registry of the daemon's projects.
        .target(name: "Control", dependencies: ["Client", "SyncConfig", "SyncSystem"]),

        // SQLite's static archive (libsqlite3-dev), so the agent needs no libsqlite3 on the host.
        .executableTarget(name: "syncd-agent", dependencies: ["AgentCore", "Chunking", "CSystemShims", "SyncSystem", "Wire"],
                          linkerSettings: [.unsafeFlags(["-Xlinker", "-l:libsqlite3.a"])]),
        .executableTarget(name: "syncctl", dependencies: [
            "SSHTransport", "StoreClient",
            "Client", "Builds", "Fleet", "Control", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .target(name: "Daemon", dependencies: [
            "Client", "Fleet", "Control", "Watch", "ProjectScan", "SyncConfig", "SyncSystem", .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "syncd", dependencies: [
            "Daemon", "Client", "Control", "SyncSystem", .product(name: "Logging", package: "swift-log"),
        ]),

        .executableTarget(name: "syncd-bench", dependencies: ["Chunking", "Wire", "SyncSystem", "LocalState"],
                          path: "Bench/Sources/syncd-bench"),

        .executableTarget(name: "syncd-ssh-bench", dependencies: ["SSHTransport", "SyncConfig", "SyncSystem"],
                          path: "Bench/Sources/syncd-ssh-bench"),

        .testTarget(name: "UnitTests", dependencies: [
            "Chunking", "ProjectScan", "Wire", "SyncConfig", "Placement", "SyncSystem", "Watch", "Dockerfile", "S3", "SnapshotFormat", "SyncRules", "Transfer",
        ], exclude: ["SigV4Vectors"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Daemon", "Client", "Builds", "Fleet", "Control", "SyncRules", "AgentCore", "Transport", "Wire", "Chunking", "SyncSystem", "HTTP",
                                                             "S3", "SnapshotFormat", "StoreClient", "LocalState",
                                                             .product(name: "GRDB", package: "GRDB.swift")]),
    ],
    swiftLanguageModes: [.v6]
)
