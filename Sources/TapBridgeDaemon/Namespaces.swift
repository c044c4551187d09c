import CTapBridge
import Foundation
import Glibc
import Logging
import TapBridgeCore
import TapBridgeDevices
import TapBridgeOptions

/// The network namespaces of `netns=` ports. They are made and used with iproute2's `ip`, as
/// `ip netns add` makes them (a file in /run/netns), so `ip netns exec NS ...` reaches them.
///
/// ```
///   --port h1,netns=h1,addr=10.0.0.1/24
///        TAP h1 made here ─► namespace h1 made if missing ─► h1 moved there, addressed, up
///   exit (or port del): the TAP goes with its descriptor; a namespace this bridge made goes
///   with its last port
/// ```
///
/// A namespace this bridge makes gets a marker in /run/tapbridge/netns/NS with its pid. A
/// start that finds the namespace with a marker whose bridge is gone (it was killed) takes it
/// over. A namespace without a marker, or one whose bridge still runs, is used as it is and
/// kept.
final class Namespaces {
    static let markers = "/run/tapbridge/netns"
    let logger: Logger
    /// Namespaces this bridge owns (made, or taken over), with the ports in them.
    private(set) var owned: [String: Set<String>] = [:]
    /// Ports in namespaces this bridge uses but does not own.
    private var borrowed: [String: String] = [:]

    init(logger: Logger) { self.logger = logger }

    /// Moves the TAP `spec.name` (just made here) into `spec.namespace`, gives it `spec.mac`
    /// and `spec.address`, and brings it and the namespace's loopback up. The part of the
    /// start line that says where it went.
    func place(_ spec: PortSpec) throws(StartupError) -> String {
        guard let ns = spec.namespace else { return "" }
        do {
            return try move(spec, into: ns)
        } catch {
            // a namespace made for this port alone goes with it
            if owned[ns]?.isEmpty == true { remove(ns) }
            throw error
        }
    }

    private func move(_ spec: PortSpec, into ns: String) throws(StartupError) -> String {
        let note = try prepare(ns)
        if let mac = spec.mac { try ip(["link", "set", "dev", spec.name, "address", "\(mac)"]) }
        // a TAP of this name left in the namespace by a bridge killed a moment ago goes with
        // that bridge's descriptors, a few milliseconds after it: wait for it
        var moved = false
        for _ in 0..<50 {
            if (try? ip(["link", "set", "dev", spec.name, "netns", ns])) != nil {
                moved = true
                break
            }
            usleep(20_000)
        }
        if !moved { try ip(["link", "set", "dev", spec.name, "netns", ns]) }  // the error, as ip says it
        if let address = spec.address {
            // nodad: an IPv6 address is usable at once, not after duplicate detection
            try ip(["-n", ns, "addr", "add", "\(address)", "dev", spec.name] + (address.isIPv6 ? ["nodad"] : []))
        }
        try ip(["-n", ns, "link", "set", "dev", spec.name, "up"])
        if owned[ns] != nil { owned[ns]!.insert(spec.name) } else { borrowed[spec.name] = ns }
        return ", in namespace \(ns)\(spec.address.map { " as \($0)" } ?? "")\(note)"
    }

    /// Makes `ns` unless it exists (then says whose it is); brings its loopback up.
    private func prepare(_ ns: String) throws(StartupError) -> String {
        if owned[ns] != nil { return "" }
        let marker = "\(Self.markers)/\(ns)"
        var note = ""
        if FileManager.default.fileExists(atPath: "/run/netns/\(ns)") {
            let pid = (try? String(contentsOfFile: marker, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            if let pid, pid != getpid(), kill(pid, 0) != 0, errno == ESRCH {
                logger.notice("namespace \(ns): left by a tapbridge that is gone (pid \(pid), killed?): reused, and removed on exit")
                owned[ns] = []
                writeMarker(marker)
                note = " (reused: left by pid \(pid))"
            } else if let pid, pid != getpid() {
                note = " (made by tapbridge pid \(pid), still running: kept on exit)"
            } else {
                note = " (it existed: kept on exit)"
            }
        } else {
            if Self.inPrivateMountNamespace {
                throw StartupError("netns=\(ns): tapbridge runs in a mount namespace of its own (under ip netns exec?), where a namespace it makes is seen only inside it: nothing outside could enter it. Make it first (ip netns add \(ns)), or run tapbridge outside ip netns exec")
            }
            try ip(["netns", "add", ns])
            owned[ns] = []
            writeMarker(marker)
            note = " (made: removed on exit)"
        }
        try ip(["-n", ns, "link", "set", "dev", "lo", "up"])
        return note
    }

    /// Whether a namespace made here would be seen only by this process: `ip netns exec` gives
    /// its command a mount namespace where /run/netns (or, before any namespace was made, the
    /// root) is a slave mount (`master:N` and no `shared:N` in /proc/self/mountinfo), so the
    /// bind mount `ip netns add` makes there does not propagate out. Outside, /run/netns is
    /// shared. False when it cannot tell.
    static let inPrivateMountNamespace: Bool = {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return false }
        // mount point → its optional fields (the last mount on a point wins)
        var propagation: [Substring: [Substring]] = [:]
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count > 7, let dash = f.firstIndex(of: "-"), dash >= 6 else { continue }
            propagation[f[4]] = Array(f[6..<dash])
        }
        guard let fields = propagation["/run/netns"] ?? propagation["/"] else { return false }
        return fields.contains { $0.hasPrefix("master:") } && !fields.contains { $0.hasPrefix("shared:") }
    }()

    private func writeMarker(_ path: String) {
        try? FileManager.default.createDirectory(atPath: Self.markers, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: path, contents: Data("\(getpid())\n".utf8))
    }

    /// Port `name` is gone: a namespace this bridge owns goes with its last port.
    func release(port name: String) {
        if borrowed.removeValue(forKey: name) != nil { return }
        guard let ns = owned.first(where: { $0.value.contains(name) })?.key else { return }
        owned[ns]!.remove(name)
        if owned[ns]!.isEmpty { remove(ns) }
    }

    /// At exit: every namespace this bridge owns.
    func releaseAll() {
        for ns in owned.keys.sorted() { remove(ns) }
        borrowed.removeAll()
    }

    private func remove(_ ns: String) {
        owned[ns] = nil
        do {
            try ip(["netns", "del", ns])
            logger.info("namespace \(ns): removed")
        } catch {
            logger.warning("namespace \(ns): not removed: \(error.message)")
        }
        unlink("\(Self.markers)/\(ns)")
    }

    private func ip(_ args: [String]) throws(StartupError) { try IPRoute.run("ip", args, for: "netns=") }
}
