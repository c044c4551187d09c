import CTapBridge
import Glibc
import TapBridgeCore
import TapBridgeDevices

/// iproute2's `ip` and `bridge`, run for what tapbridge does not do over netlink itself:
/// namespaces of `netns=` ports, vxlan devices of `datapath=kernel` remotes.
enum IPRoute {
    /// Runs `TOOL ARGS` (`ip` or `bridge`) and waits for it (a few milliseconds); its error
    /// line if it fails. `purpose` names what needs it, in the error if the tool is missing.
    /// (posix_spawn and waitpid: Foundation's Process waited forever for an `ip` that had
    /// exited when tapbridge itself ran under `ip netns exec`, its child left a zombie.)
    static func run(_ tool: String, _ args: [String], for purpose: String) throws(StartupError) {
        _ = try output(tool, args, for: purpose, capacity: 1024, withOutput: false)
    }

    /// Runs `TOOL ARGS` as `run` does; what it printed (up to `capacity` bytes).
    static func output(_ tool: String, _ args: [String], for purpose: String, capacity: Int = 1 << 16) throws(StartupError) -> String {
        try output(tool, args, for: purpose, capacity: capacity, withOutput: true)
    }

    private static func output(_ tool: String, _ args: [String], for purpose: String, capacity: Int, withOutput: Bool) throws(StartupError) -> String {
        let candidates = ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].map { $0 + tool }
        let path = candidates.first { access($0, X_OK) == 0 } ?? candidates[0]
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var bytes = [CChar](repeating: 0, count: capacity)
        let status = ctb_run(path, &argv, &bytes, Int32(bytes.count), withOutput ? 1 : 0)
        if status < 0 { throw StartupError("\(purpose) needs iproute2's \(tool) (apt-get install iproute2): \(describeErrno(-status))") }
        let text = String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard status == 0 else {
            throw StartupError("\(tool) \(args.joined(separator: " ")): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return text
    }
}
