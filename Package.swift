// swift-tools-version: 6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    // Release builds do not check exclusive access at run time (the tests' debug builds and
    // the fuzzers do): on the forwarding path, woken cold by each frame, those checks were a
    // sixth of the user-space time (Docs/Benchmarks.md, "Wake-ups").
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "tapbridge",
    products: [
        .library(name: "TapBridgeCore", targets: ["TapBridgeCore"]),
        .library(name: "TapBridgeTestSupport", targets: ["TapBridgeTestSupport"]),
        .executable(name: "tapbridge", targets: ["tapbridge"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        // (one minor version: the sealed cipher calls its CCryptoBoringSSL module, Docs/Architecture.md)
        .package(url: "https://github.com/apple/swift-crypto", .upToNextMinor(from: "3.12.0")),
    ],
    targets: [
        // Pure forwarding logic: imports nothing but the standard library.
        .target(name: "TapBridgeCore", swiftSettings: strict),
        // C shim for the ioctls and socket options Swift cannot call (TUNSETIFF, PACKET_AUXDATA).
        .target(name: "CTapBridge"),
        // liburing glue: TAP writes batched into one io_uring submission per round.
        .target(name: "CTapBridgeUring", linkerSettings: [.linkedLibrary("uring")]),
        // libpcap glue: a pcap writer that never blocks, BPF filters, injection, reading back.
        .target(name: "CTapBridgePcap", linkerSettings: [.linkedLibrary("pcap")]),
        // Mirroring: pcap files, BPF filters, mirror interfaces.
        .target(
            name: "TapBridgePcap",
            dependencies: ["TapBridgeCore", "CTapBridgePcap", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        // Ports that call the kernel: TAP and packet-socket devices, the UDP socket of the
        // remotes (its peer table, trains, admission, the sealed encapsulation), socket addresses.
        .target(
            name: "TapBridgeDevices",
            dependencies: [
                "TapBridgeCore", "CTapBridge", "CTapBridgeUring", .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        // What a bridge is told: the option table, --port/--remote specs, config files.
        .target(
            name: "TapBridgeOptions",
            dependencies: [
                "TapBridgeCore", "TapBridgeDevices", "TapBridgePcap", .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict),
        // The running bridge: assembles ports, the event loop and its sources, the control
        // socket and its protocol, the statistics model.
        // The control socket's language, shared by the bridge and the command: requests,
        // reports, their text, JSON and Prometheus renderings, the client, the path's claim.
        .target(
            name: "TapBridgeControl",
            dependencies: ["TapBridgeCore", "TapBridgeDevices", "TapBridgeOptions", "TapBridgePcap"],
            swiftSettings: strict),
        .target(
            name: "TapBridgeDaemon",
            dependencies: [
                "TapBridgeCore", "TapBridgeDevices", "TapBridgeOptions", "TapBridgePcap", "TapBridgeControl", "CTapBridge",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The command: the run form and the control commands' argument parsing, the man page.
        .executableTarget(
            name: "tapbridge",
            dependencies: [
                "TapBridgeDaemon", "TapBridgeControl", "TapBridgeOptions", "TapBridgeCore", "TapBridgeDevices",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Virtual ports, a manual clock, frame builders and a naive reference bridge,
        // and a UDP socket double for the remotes' device.
        .target(name: "TapBridgeTestSupport", dependencies: ["TapBridgeCore", "TapBridgeDevices", "CTapBridge"], swiftSettings: strict),
        // Core microbenchmark: `swift run -c release tapbridge-core-bench`.
        .executableTarget(
            name: "tapbridge-core-bench", dependencies: ["TapBridgeCore", "TapBridgeTestSupport"],
            swiftSettings: strict),
        // Sealed handshake microbenchmark: `swift run -c release tapbridge-sealed-bench`.
        .executableTarget(
            name: "tapbridge-sealed-bench", dependencies: ["TapBridgeDevices", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        // Runnable example: a three-port virtual LAN, printed step by step.
        .executableTarget(
            name: "VirtualLAN", dependencies: ["TapBridgeCore", "TapBridgeTestSupport"],
            path: "Examples/VirtualLAN", swiftSettings: strict),
        // Fuzz targets (Tests/Fuzz/README.md): each replays its corpus in a plain build, and runs
        // under libFuzzer when built by Tests/Fuzz/run.
        .target(name: "FuzzSupport", path: "Tests/Fuzz/FuzzSupport"),
        .executableTarget(name: "fuzz-stream", dependencies: ["FuzzSupport", "TapBridgeCore"], path: "Tests/Fuzz/fuzz-stream"),
        .executableTarget(name: "fuzz-offload", dependencies: ["FuzzSupport", "TapBridgeCore"], path: "Tests/Fuzz/fuzz-offload"),
        .executableTarget(name: "fuzz-coalescer", dependencies: ["FuzzSupport", "TapBridgeCore", "TapBridgeTestSupport"], path: "Tests/Fuzz/fuzz-coalescer"),
        .executableTarget(name: "fuzz-bridge", dependencies: ["FuzzSupport", "TapBridgeCore", "TapBridgeTestSupport"], path: "Tests/Fuzz/fuzz-bridge"),
        .executableTarget(name: "fuzz-encapsulation", dependencies: ["FuzzSupport", "TapBridgeCore", "TapBridgeDevices", .product(name: "Crypto", package: "swift-crypto")], path: "Tests/Fuzz/fuzz-encapsulation"),
        .executableTarget(name: "fuzz-control", dependencies: ["FuzzSupport", "TapBridgeControl"], path: "Tests/Fuzz/fuzz-control"),
        .executableTarget(name: "fuzz-specs", dependencies: ["FuzzSupport", "TapBridgeOptions"], path: "Tests/Fuzz/fuzz-specs"),
        .testTarget(
            name: "TapBridgeCoreTests", dependencies: ["TapBridgeCore", "TapBridgeTestSupport"],
            swiftSettings: strict),
        // Everything above the core that needs no root: options, config files, specs,
        // addresses, statistics renderers, the UDP device over a socket double.
        .testTarget(
            name: "TapBridgeUnitTests",
            dependencies: [
                "TapBridgeDaemon", "TapBridgeControl", "TapBridgeOptions", "TapBridgeDevices", "TapBridgeCore", "TapBridgePcap", "TapBridgeTestSupport",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        // Real TAPs, namespaces, ping and iperf3 through the release binary (root only).
        .testTarget(
            name: "TapBridgeIntegrationTests",
            dependencies: ["TapBridgeDaemon", "TapBridgeControl", "TapBridgeOptions", "TapBridgeDevices", "TapBridgePcap", "CTapBridge"],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
