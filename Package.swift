// swift-tools-version: 6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "tapbridge",
    products: [
        .library(name: "TapBridgeCore", targets: ["TapBridgeCore"]),
        .library(name: "TapBridgeTestSupport", targets: ["TapBridgeTestSupport"]),
    ],
    targets: [
        // Pure forwarding logic: imports nothing but the standard library.
        .target(name: "TapBridgeCore", swiftSettings: strict),
        // Virtual ports, a manual clock, frame builders and a naive reference bridge.
        .target(name: "TapBridgeTestSupport", dependencies: ["TapBridgeCore"], swiftSettings: strict),
        // Core microbenchmark: `swift run -c release tapbridge-core-bench`.
        .executableTarget(
            name: "tapbridge-core-bench", dependencies: ["TapBridgeCore", "TapBridgeTestSupport"],
            swiftSettings: strict),
        // Runnable example: a three-port virtual LAN, printed step by step.
        .executableTarget(
            name: "VirtualLAN", dependencies: ["TapBridgeCore", "TapBridgeTestSupport"],
            path: "Examples/VirtualLAN", swiftSettings: strict),
        .testTarget(
            name: "TapBridgeCoreTests", dependencies: ["TapBridgeCore", "TapBridgeTestSupport"],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
