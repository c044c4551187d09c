import CTapBridge
import Glibc
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices

/// iproute2's `ip`, run for what tapbridge does not do over rtnetlink itself: `ip netns add|del`
/// for the namespaces of `netns=` ports (it needs iproute2's mounts). On the control plane's
/// thread, never on the loop.
enum IPRoute {
    /// How long a tool may take before it is killed (and its process group with it): a hung
    /// `ip` held the bridge for good. It runs in milliseconds.
    static let timeout: Duration = .seconds(10)

    /// Runs `TOOL ARGS` (`ip`) and waits for it (a few milliseconds, `timeout` at
    /// most); its error line if it fails. `purpose` names what needs it, in the error if the
    /// tool is missing. (posix_spawn and waitpid: Foundation's Process waited forever for an
    /// `ip` that had exited when tapbridge itself ran under `ip netns exec`, its child left a
    /// zombie.)
    static func run(_ tool: String, _ args: [String], for purpose: String, timeout: Duration = timeout) throws(StartupError) {
        let candidates = ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].map { $0 + tool }
        let path = candidates.first { access($0, X_OK) == 0 } ?? candidates[0]
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var bytes = [CChar](repeating: 0, count: 1024)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let status = ctb_run(path, &argv, &bytes, Int32(bytes.count), 0, milliseconds)
        if status == -ETIMEDOUT { throw StartupError("\(tool) \(args.joined(separator: " ")): did not finish within \(timeout) (killed)") }
        if status < 0 { throw StartupError("\(purpose) needs iproute2's \(tool) (apt-get install iproute2): \(describeErrno(-status))") }
        guard status == 0 else {
            let text = String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw StartupError("\(tool) \(args.joined(separator: " ")): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }
}
