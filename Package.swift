// swift-tools-version:6.0
import PackageDescription

/// The protocol cores and the simulator are optimized in debug builds too: the test suite runs the
/// simulator at 1,000 nodes (issue #9), which takes minutes unoptimized and seconds optimized.
/// Everything else (the daemon's shell, the tests) stays a plain debug build.
let optimizedCores: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]
/// The simulator is one thread driving every node's state through class properties; the runtime's
/// exclusivity checks on each of those accesses were 6 % of a 2,000-node run. The compile-time
/// checks stay, and the daemon and the cores keep the runtime ones.
let simulatorSettings: [SwiftSetting] = optimizedCores + [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "discd",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "discd", targets: ["discd"]),
        .executable(name: "showmap", targets: ["showmap"]),
        .library(name: "NodeMap", targets: ["NodeMap"]),
        .library(name: "Discovery", targets: ["Discovery"]),
        .library(name: "Detector", targets: ["Detector"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/swift-extras/swift-extras-base64.git", from: "1.2.0"),
    ],
    targets: [
        // C system libraries, found with pkg-config; installed by scripts/install-deps.
        .systemLibrary(
            name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]),
        // Linux system calls without a Swift-callable wrapper (pidfd_open, waitid without reaping).
        .systemLibrary(name: "CLinux", path: "Sources/CLinux"),
        // A cache hint (__builtin_prefetch) for the simulator's walk over many nodes' maps.
        .systemLibrary(name: "CPrefetch", path: "Sources/CPrefetch"),
        .systemLibrary(
            name: "CVerbs", path: "Sources/CVerbs", pkgConfig: "libibverbs",
            providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]),

        // Pure protocol cores: no sockets, no sleeps, no wall clock.
        .target(name: "NodeMap", dependencies: ["CPrefetch"], swiftSettings: optimizedCores),
        // Map-file I/O (the one atomic file writer): NodeMap stays pure, the daemon and showmap use this.
        .target(name: "MapStore", dependencies: ["NodeMap", "Events"]),
        // Typed events (levels, fields, the one JSON writer) and the one duration formatter.
        .target(name: "Events"),
        // The datagram format shared by every transport (UDP multicast/unicast, RDMA multicast).
        .target(name: "Wire", dependencies: ["NodeMap"], swiftSettings: optimizedCores),
        // Cluster keys (HMAC-SHA256 tags on every datagram) and replay windows: pure, no I/O.
        .target(
            name: "Auth",
            dependencies: [
                "Wire", "NodeMap", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ExtrasBase64", package: "swift-extras-base64"),
            ]),
        .target(name: "Discovery", dependencies: ["NodeMap", "Wire", "Events"], swiftSettings: optimizedCores),
        .target(name: "Detector", dependencies: ["NodeMap", "Wire", "Events"], swiftSettings: optimizedCores),
        // One node's protocol: Discovery and Detector over one NodeMap, fed datagrams and ticks.
        // The daemon and the simulator both run exactly this.
        .target(
            name: "Cluster", dependencies: ["NodeMap", "Wire", "Events", "Discovery", "Detector", "Auth"],
            swiftSettings: optimizedCores),
        // The control socket's request format (parsed by the daemon, fuzzed on its own).
        .target(name: "ControlProtocol", dependencies: ["Events"]),
        // What the fuzzers feed untrusted bytes to, and the fuzzer binary (scripts/fuzz.sh).
        .target(
            name: "FuzzTargets", dependencies: ["Cluster", "Discovery", "Detector", "Auth", "ControlProtocol", "NodeMap", "Wire"]),
        .executableTarget(name: "discd-fuzz", dependencies: ["FuzzTargets"]),
        // Deterministic cluster simulator driving the very same cores in virtual time.
        .target(name: "Simulator", dependencies: ["Cluster", "NodeMap", "Wire", "Events", "CPrefetch"], swiftSettings: simulatorSettings),

        .executableTarget(
            name: "discd",
            dependencies: [
                "NodeMap", "MapStore", "Wire", "Events", "Discovery", "Detector", "Cluster", "Simulator", "Auth", "ControlProtocol", "CSystemd", "CVerbs", "CLinux",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ExtrasBase64", package: "swift-extras-base64"),
            ]),
        .executableTarget(
            name: "showmap",
            dependencies: [
                "NodeMap", "MapStore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),

        .testTarget(name: "NodeMapTests", dependencies: ["NodeMap", "MapStore"]),
        .testTarget(name: "WireTests", dependencies: ["Wire", "NodeMap"]),
        .testTarget(
            name: "AuthTests",
            dependencies: ["Auth", "Wire", "NodeMap", .product(name: "ExtrasBase64", package: "swift-extras-base64")]),
        .testTarget(name: "DiscoveryTests", dependencies: ["Discovery", "Cluster", "Wire", "NodeMap", "Events", "Auth"]),
        .testTarget(name: "DetectorTests", dependencies: ["Detector", "Wire", "NodeMap", "Events"]),
        // The daemon shell's own logic (route parsing, link scope, de-duplication across transports).
        .testTarget(
            name: "ShellTests",
            dependencies: [
                "discd", "Cluster", "Detector", "Discovery", "NodeMap", "Wire", "ControlProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]),
        .testTarget(name: "SimulatorTests", dependencies: ["Simulator", "Cluster", "NodeMap", "Events", "Wire"]),
        // The committed fuzz corpora (Tests/Fuzz/corpus/<target>/), replayed: every seed and every
        // crash ever found must run through its target without trapping.
        .testTarget(name: "FuzzCorpusTests", dependencies: ["FuzzTargets", "Wire"]),
    ]
)
