import CTapBridge
import Foundation
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// The network namespaces of `netns=` ports. They are made and removed with iproute2's `ip`,
/// as `ip netns add` makes them (a file in /run/netns, which needs its mounts), so `ip netns
/// exec NS ...` reaches them; the TAPs are moved, addressed and brought up over rtnetlink.
///
/// ```
///   --port h1,netns=h1,addr=10.0.0.1/24
///        TAP h1 made here ─► namespace h1 joined (made if missing) ─► h1 moved there, addressed, up
///   exit (or port del of its last port here): namespace h1 left; a namespace tapbridge made
///   is removed by the last bridge to leave it
/// ```
///
/// Namespaces have owners, through files in /run/tapbridge/netns:
/// - `NS`: tapbridge made namespace NS (with the maker's pid). Without it, the namespace
///   existed before any tapbridge used it, and none ever removes it.
/// - `NS.lock`: every bridge with a port in NS holds it shared (`flock`), for as long as it
///   has one; the kernel drops it however the bridge ends.
/// - `NS.guard`: held exclusive for the moment of a decision (join: make, reuse or share;
///   leave: remove or keep), so two bridges never decide at once.
///
/// Leaving converts the shared lock to an exclusive one without waiting: that succeeds only if
/// no other bridge holds it, and then the namespace is removed. Joining a marked namespace
/// whose lock nobody holds (its bridges were killed) reuses it, and says so; two bridges that
/// start at once decide one after the other, so exactly one of them reuses it and the other
/// shares it. Two bridges with ports in one namespace: the first to exit leaves it to the other.
///
/// All of this waits for `ip` and for the guard, so at run time (`port add`, `port del`) it is
/// the control plane's (`LinkControl`): the loop hands it over and goes on forwarding.
final class Namespaces {
    static let markers = "/run/tapbridge/netns"
    let logger: Logger
    let control: LinkControl
    /// Namespaces this bridge holds the lock of, with the ports it has in them.
    private(set) var joined: [String: (lock: Int32, ports: Set<String>)] = [:]
    /// Ports in namespaces that existed before tapbridge (never removed).
    private var borrowed: [String: String] = [:]

    init(control: LinkControl, logger: Logger) {
        self.control = control
        self.logger = logger
    }

    /// What places TAP `spec.name` (just made here) in `spec.namespace`: joins the namespace
    /// if this bridge has no port there yet, gives the TAP `spec.mac` and `spec.address`, and
    /// brings it and the namespace's loopback up.
    func placement(_ spec: PortSpec) -> LinkOperation? {
        guard let ns = spec.namespace else { return nil }
        return .placeInNamespace(NamespacePlacement(link: spec.name, namespace: ns, mac: spec.mac, address: spec.address, join: joined[ns] == nil))
    }

    /// Places `spec`'s TAP at once (start-up); the part of the start line that says where it went.
    func placeNow(_ spec: PortSpec) throws(StartupError) -> String {
        guard let operation = placement(spec) else { return "" }
        return placed(spec, try control.performNow([operation])[0])
    }

    /// Places `spec`'s TAP on the worker (`port add`); `completion` gets the start line's part.
    func place(_ spec: PortSpec, _ completion: @escaping (Result<String, StartupError>) -> Void) {
        guard let operation = placement(spec) else { return completion(.success("")) }
        control.perform([operation]) { [self] result in completion(result.map { placed(spec, $0[0]) }) }
    }

    /// Records what placing `spec` found; the start line's part.
    private func placed(_ spec: PortSpec, _ outcome: LinkOutcome) -> String {
        guard let ns = spec.namespace else { return "" }
        var note = ""
        switch outcome.namespace?.how {
        case nil: break  // joined before
        case .made: note = " (made: removed on exit, by the last bridge in it)"
        case .reused(let pid):
            logger.notice("namespace \(ns): left by a tapbridge that is gone\(pid.map { " (pid \($0), killed?)" } ?? ""): reused, and removed on exit, by the last bridge in it")
            note = " (reused: left by \(pid.map { "pid \($0)" } ?? "a tapbridge that is gone"))"
        case .shared(let pid):
            note = " (made by tapbridge\(pid.map { " pid \($0)" } ?? ""), still in it: shared; the last bridge out removes it)"
        case .existed: note = " (it existed: kept on exit)"
        }
        if let use = outcome.namespace, use.lock >= 0 {
            joined[ns] = (use.lock, [spec.name])
        } else if let use = outcome.namespace, use.how == .existed {
            borrowed[spec.name] = ns
        } else if joined[ns] != nil {
            joined[ns]!.ports.insert(spec.name)
        } else {
            borrowed[spec.name] = ns
        }
        return ", in namespace \(ns)\(spec.address.map { " as \($0)" } ?? "")\(note)"
    }

    /// Port `name` is gone: with this bridge's last port in a namespace, the namespace is
    /// left (on the worker), and removed if no other bridge is in it and tapbridge made it.
    func release(port name: String) {
        if borrowed.removeValue(forKey: name) != nil { return }
        guard let ns = joined.first(where: { $0.value.ports.contains(name) })?.key else { return }
        joined[ns]!.ports.remove(name)
        guard joined[ns]!.ports.isEmpty, let lock = joined.removeValue(forKey: ns)?.lock else { return }
        control.perform([.leaveNamespace(ns, lock: lock)]) { [self] in left(ns, $0) }
    }

    /// At exit, or when start-up fails: every namespace this bridge is in is left.
    func releaseAll() {
        control.finish()
        for (ns, use) in joined.sorted(by: { $0.key < $1.key }) {
            left(ns, Result { () throws(StartupError) in try control.performNow([.leaveNamespace(ns, lock: use.lock)]) })
        }
        joined.removeAll()
        borrowed.removeAll()
    }

    private func left(_ ns: String, _ result: Result<[LinkOutcome], StartupError>) {
        switch result {
        case .success(let outcomes) where outcomes.first?.count == 1: logger.info("namespace \(ns): removed")
        case .success: logger.info("namespace \(ns): left to the other bridges in it")
        case .failure(let error): logger.warning("namespace \(ns): not removed: \(error.message)")
        }
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
}

/// A `netns=` port's TAP to place (`LinkOperation.placeInNamespace`).
struct NamespacePlacement: Sendable, Equatable {
    var link: String
    var namespace: String
    var mac: MACAddress?
    var address: InterfaceAddress?
    /// Whether this bridge joins the namespace first (it has no port there yet).
    var join: Bool
}

/// How a bridge joined a namespace.
struct NamespaceJoin: Sendable, Equatable {
    enum How: Sendable, Equatable {
        case made
        /// tapbridge made it, and no bridge holds it: its bridges were killed (the maker's pid).
        case reused(Int32?)
        /// Another bridge holds it (the maker's pid).
        case shared(Int32?)
        /// It existed before tapbridge: never removed.
        case existed
    }
    /// The shared lock held while this bridge has ports there; -1 for `existed`.
    var lock: Int32
    var how: How
}

extension SystemLinkKernel {
    private static func ip(_ args: [String]) throws(StartupError) { try IPRoute.run("ip", args, for: "netns=") }

    /// `placeInNamespace`: joins the namespace if asked (undone if the TAP cannot be placed),
    /// then moves the TAP there, addressed and up.
    func place(_ p: NamespacePlacement) throws(StartupError) -> LinkOutcome {
        let joining = p.join ? try Self.join(p.namespace) : nil
        do throws(StartupError) {
            let path = "/run/netns/\(p.namespace)"
            let index = ctb_if_index(p.link)
            guard index > 0 else { throw StartupError("\(p.link): gone (\(describeErrno(-index)))") }
            if let mac = p.mac {
                let rc = ctb_link_set(index, 0, mac.octets)
                guard rc == 0 else { throw StartupError("ip link set dev \(p.link) address \(mac): \(describeErrno(-rc))") }
            }
            // a TAP of this name left in the namespace by a bridge killed a moment ago goes with
            // that bridge's descriptors, a few milliseconds after it: wait for it (EEXIST)
            var rc = ctb_link_to_netns(index, path)
            for _ in 0..<50 where rc == -EEXIST {
                usleep(20_000)
                rc = ctb_link_to_netns(index, path)
            }
            guard rc == 0 else { throw StartupError("ip link set dev \(p.link) netns \(p.namespace): \(describeErrno(-rc))") }
            // (addr= was checked when the spec was parsed: its address is numeric)
            let numeric = p.address.flatMap { Self.address($0.address) }
            rc = ctb_netns_configure(path, p.link, numeric?.0 ?? 0, numeric?.1, Int32(p.address?.prefixLength ?? 0), 1)
            guard rc == 0 else { throw StartupError("ip -n \(p.namespace) \(p.address.map { "addr add \($0) dev \(p.link), " } ?? "")link set dev \(p.link) up: \(describeErrno(-rc))") }
        } catch {
            if let joining, joining.lock >= 0 { _ = try? leave(p.namespace, lock: joining.lock) }
            throw error
        }
        return LinkOutcome(namespace: joining)
    }

    private static func loopbackUp(_ ns: String) throws(StartupError) {
        let rc = ctb_netns_configure("/run/netns/\(ns)", nil, 0, nil, 0, 1)
        guard rc == 0 else { throw StartupError("ip -n \(ns) link set dev lo up: \(describeErrno(-rc))") }
    }

    /// Holds `NS.guard` while `body` decides; the guard goes with the descriptor. (A bridge
    /// that removes the namespace unlinks the guard while holding it: a guard locked after
    /// that is no longer the file at the path, and is taken again.)
    private static func guarded<T>(_ ns: String, _ body: () throws(StartupError) -> T) throws(StartupError) -> T {
        mkdir("/run/tapbridge", 0o755)
        mkdir(Namespaces.markers, 0o755)
        let path = "\(Namespaces.markers)/\(ns).guard"
        while true {
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else { throw StartupError("netns=\(ns): \(path): \(describeErrno(errno))") }
            defer { close(fd) }
            while flock(fd, LOCK_EX) != 0 {
                guard errno == EINTR else { throw StartupError("netns=\(ns): cannot lock \(path): \(describeErrno(errno))") }
            }
            var held = stat(), there = stat()
            guard fstat(fd, &held) == 0, stat(path, &there) == 0, held.st_ino == there.st_ino, held.st_dev == there.st_dev else { continue }
            return try body()
        }
    }

    private static func makerPID(_ ns: String) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let fd = open("\(Namespaces.markers)/\(ns)", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let n = read(fd, &buffer, buffer.count)
        return n > 0 ? Int32(String(decoding: buffer.prefix(n), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) : nil
    }

    private static func writeMarker(_ ns: String) {
        let fd = open("\(Namespaces.markers)/\(ns)", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { return }
        let text = Array("\(getpid())\n".utf8)
        _ = write(fd, text, text.count)
        close(fd)
    }

    /// Joins namespace `ns`, under its guard: makes it if missing; takes a shared lock on a
    /// namespace tapbridge made (reusing it when no bridge holds it); uses one that existed
    /// before tapbridge as it is.
    static func join(_ ns: String) throws(StartupError) -> NamespaceJoin {
        try guarded(ns) { () throws(StartupError) -> NamespaceJoin in
            let exists = access("/run/netns/\(ns)", F_OK) == 0
            let marked = access("\(Namespaces.markers)/\(ns)", F_OK) == 0
            if exists && !marked {
                // nothing to keep for it: no marker, no lock; the guard goes (still held: a
                // bridge waiting on it takes the next one)
                unlink("\(Namespaces.markers)/\(ns).guard")
                try loopbackUp(ns)
                return NamespaceJoin(lock: -1, how: .existed)
            }
            let lock = open("\(Namespaces.markers)/\(ns).lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard lock >= 0 else { throw StartupError("netns=\(ns): \(Namespaces.markers)/\(ns).lock: \(describeErrno(errno))") }
            do throws(StartupError) {
                let how: NamespaceJoin.How
                if exists {
                    let pid = makerPID(ns)
                    if flock(lock, LOCK_EX | LOCK_NB) == 0 {
                        how = .reused(pid)  // no bridge holds it: left over
                        writeMarker(ns)
                    } else {
                        how = .shared(pid)
                    }
                } else {
                    if Namespaces.inPrivateMountNamespace {
                        throw StartupError("netns=\(ns): tapbridge runs in a mount namespace of its own (under ip netns exec?), where a namespace it makes is seen only inside it: nothing outside could enter it. Make it first (ip netns add \(ns)), or run tapbridge outside ip netns exec")
                    }
                    try ip(["netns", "add", ns])
                    writeMarker(ns)
                    how = .made
                }
                // (from exclusive, for reused: the guard keeps every other decision out meanwhile)
                guard flock(lock, LOCK_SH) == 0 else { throw StartupError("netns=\(ns): cannot lock \(Namespaces.markers)/\(ns).lock: \(describeErrno(errno))") }
                try loopbackUp(ns)
                return NamespaceJoin(lock: lock, how: how)
            } catch {
                close(lock)
                if !exists {
                    // nothing was there and no other bridge could join meanwhile (the guard):
                    // what this made goes, the namespace and its files (the guard last, held)
                    if access("/run/netns/\(ns)", F_OK) == 0 { try? ip(["netns", "del", ns]) }
                    for file in ["", ".lock", ".guard"] { unlink("\(Namespaces.markers)/\(ns)\(file)") }
                }
                throw error
            }
        }
    }

    /// Leaves namespace `ns` (closes `lock`): removes it, and its marker, if no other bridge
    /// holds the lock (count 1).
    func leave(_ ns: String, lock: Int32) throws(StartupError) -> LinkOutcome {
        try Self.guarded(ns) { () throws(StartupError) -> LinkOutcome in
            defer { close(lock) }
            guard flock(lock, LOCK_EX | LOCK_NB) == 0 else { return LinkOutcome() }  // another bridge is in it
            if access("/run/netns/\(ns)", F_OK) == 0 { try Self.ip(["netns", "del", ns]) }
            for file in ["", ".lock", ".guard"] { unlink("\(Namespaces.markers)/\(ns)\(file)") }  // (the guard last, still held)
            return LinkOutcome(count: 1)
        }
    }
}
