import Foundation
import Testing

/// Shell-free process helpers and a per-test lab of network namespaces and interfaces with
/// unique names, torn down on every path (deinit), killing only the processes it started.
enum Host {
    static var isRoot: Bool { getuid() == 0 }

    /// The package root (…/Tests/TapBridgeIntegrationTests/Host.swift → three levels up).
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The release binary the tests drive.
    /// The binary under test: `.build/release/tapbridge`, or `$TAPBRIDGE_BINARY` (an
    /// AddressSanitizer build: README.md, "Sanitizers").
    static let binary = ProcessInfo.processInfo.environment["TAPBRIDGE_BINARY"].flatMap { $0.isEmpty ? nil : $0 }
        ?? packageRoot.appendingPathComponent(".build/release/tapbridge").path

    static var hasBinary: Bool { FileManager.default.isExecutableFile(atPath: binary) }

    /// Whether the binary under test was built with a sanitizer (its runtime takes over
    /// malloc, so an LD_PRELOAD malloc counter cannot run beside it).
    static let binaryIsSanitized: Bool = {
        guard let data = FileManager.default.contents(atPath: binary) else { return false }
        return ["__asan_init", "__tsan_init"].contains { data.range(of: Data($0.utf8)) != nil }
    }()

    static func has(_ tool: String) -> Bool {
        ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"].contains { FileManager.default.isExecutableFile(atPath: $0 + tool) }
    }

    /// Why the real-kernel tests cannot run here, or nil.
    static var skipReason: String? {
        if !isRoot { return "needs root (CAP_NET_ADMIN) to create TAPs and network namespaces; CI runs it as root" }
        if !hasBinary { return "needs the release binary: run `swift build -c release` first" }
        for tool in ["ip", "ping", "iperf3", "tcpdump", "timeout", "setpriv", "unshare"] where !has(tool) {
            return "needs \(tool) (apt-get install iproute2 iputils-ping iperf3 tcpdump coreutils util-linux)"
        }
        return nil
    }

    static var canRun: Bool { skipReason == nil }

    struct Result {
        var status: Int32
        var output: String
        var ok: Bool { status == 0 }
    }

    /// Runs `args` (stdout and stderr together), bounded by `timeout` seconds.
    @discardableResult
    static func run(_ args: [String], timeout: Int = 20) -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
        p.arguments = ["-k", "2", String(timeout)] + args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { return Result(status: -1, output: "cannot start \(args): \(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, output: String(decoding: data, as: UTF8.self))
    }
}

/// A background process whose combined output goes to a file.
final class Background {
    let process = Process()
    let logURL: URL

    init(_ args: [String], executable: String? = nil, environment: [String: String] = [:]) throws {
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("tbtest-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        if let executable {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = args
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = args
        }
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var output: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// Sends `signal` and waits up to `within` seconds; returns the exit status, or nil if it
    /// is still running (it is then killed).
    func stop(signal: Int32 = SIGTERM, within: Double = 5) -> Int32? {
        guard process.isRunning else { return process.terminationStatus }
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(within)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        return process.terminationStatus
    }

    /// Waits for the process to exit on its own, up to `within` seconds.
    func wait(within: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(within)
        while process.isRunning, Date() < deadline { usleep(10_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: logURL)
    }
}
