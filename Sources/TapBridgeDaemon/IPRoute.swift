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
        let candidates = ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].map { $0 + tool }
        let path = candidates.first { access($0, X_OK) == 0 } ?? candidates[0]
        var argv: [UnsafeMutablePointer<CChar>?] = ([path] + args).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var errors = [CChar](repeating: 0, count: 1024)
        let status = ctb_run(path, &argv, &errors, Int32(errors.count))
        if status < 0 { throw StartupError("\(purpose) needs iproute2's \(tool) (apt-get install iproute2): \(describeErrno(-status))") }
        guard status == 0 else {
            let text = String(decoding: errors.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw StartupError("\(tool) \(args.joined(separator: " ")): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }
}
