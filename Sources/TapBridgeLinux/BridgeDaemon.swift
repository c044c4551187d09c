import CTapBridge
import Glibc
public import Logging
public import TapBridgeCore

/// The running bridge: opens the ports, then serves them from one poll(2) loop until SIGINT or
/// SIGTERM.
///
/// ```
///            ┌───────────── poll(2) ─────────────┐  timeout: next FDB expiry (or none)
///            │ signalfd   tap0   tap1   eth-pkt  │
///            └────┬─────────┬──────┬───────┬─────┘
///   SIGINT/TERM: exit   each ready fd: engine.service (batches of 64, at most 256 frames
///   SIGHUP: logged      per fd per round, so one busy port cannot starve the others; a port
///                       with work left makes the next poll return at once)
/// ```
/// Like vtun's `br_select.c`, but draining each descriptor in batches instead of one read per
/// wake-up. No thread, no per-frame allocation, no per-frame log line.
public final class BridgeDaemon {
    /// Everything the command line says.
    public struct Options: Sendable {
        public var ports: [PortSpec]
        public var bridge: Bridge.Configuration
        public init(ports: [PortSpec], bridge: Bridge.Configuration = .init()) {
            self.ports = ports
            self.bridge = bridge
        }
    }

    /// How a port reaches its interface.
    public enum Kind: String, Sendable {
        case tap
        case packet
    }

    struct Attached {
        var device: any PortDevice
        var kind: Kind
        var port: PortID
        var name: String
    }

    public let engine: ForwardingEngine
    let logger: Logger
    var attached: [Attached] = []
    let signalDescriptor: Int32

    /// Opens every port; throws (after closing what it opened) if any cannot be opened.
    public init(options: Options, logger: Logger) throws(StartupError) {
        self.logger = logger
        var names: Set<String> = []
        for spec in options.ports where !names.insert(spec.name).inserted {
            throw StartupError("port \(spec.name): given twice")
        }
        engine = ForwardingEngine(bridge: Bridge(configuration: options.bridge))
        let sfd = ctb_signalfd_open()
        if sfd < 0 { throw StartupError("cannot set up signal handling: \(describeErrno(-sfd))") }
        signalDescriptor = sfd
        for spec in options.ports {
            let (device, kind, note): (any PortDevice, Kind, String)
            do {
                (device, kind, note) = try Self.open(spec)
            } catch {
                close(sfd)
                throw StartupError("port \(spec.name): \(error.message)")
            }
            let port = engine.addPort(named: spec.name, configuration: spec.configuration, on: device)
            attached.append(Attached(device: device, kind: kind, port: port, name: spec.name))
            let flags = (spec.configuration.learning ? "" : ", learning off") + (spec.configuration.flooding ? "" : ", flooding off")
            logger.info("port \(spec.name): \(note), \(spec.configuration.vlanMode)\(flags)")
        }
    }

    deinit { close(signalDescriptor) }

    static func open(_ spec: PortSpec) throws(StartupError) -> (any PortDevice, Kind, String) {
        func tapNote(_ tap: TapDevice) -> String {
            (tap.existedBefore ? "TAP attached (kept on exit)" : "TAP created (removed on exit)") + ", mtu \(tap.mtu)"
        }
        func packet(_ why: String) throws(StartupError) -> (any PortDevice, Kind, String) {
            let device = try PacketSocketDevice(name: spec.name, mtu: spec.mtu)
            return (device, .packet, "packet socket on ifindex \(device.interfaceIndex)\(why)")
        }
        if spec.mode == .packet { return try packet("") }
        do {
            let tap = try TapDevice(name: spec.name, mtu: spec.mtu)
            return (tap, .tap, tapNote(tap))
        } catch {
            switch (error, spec.mode) {
            case (.busy, .auto): return try packet(" (the TAP is held by another program)")
            case (.notATap, .auto): return try packet(" (not a TAP)")
            case (.busy, _):
                throw StartupError("TAP is held by another program (a VM?); use mode=packet or mode=auto to reach it through a packet socket")
            case (.notATap, _):
                throw StartupError("exists and is not a TAP; use mode=packet or mode=auto to attach it through a packet socket")
            case (.failed(let message), _): throw StartupError(message)
            }
        }
    }

    /// The ports currently attached: name, kind, port ID.
    public var ports: [(name: String, kind: Kind, port: PortID)] { attached.map { ($0.name, $0.kind, $0.port) } }

    /// Runs until SIGINT or SIGTERM; returns the process exit status (0).
    public func run() -> Int32 {
        logger.info("forwarding between \(attached.count) port(s); ageing \(engine.bridge.configuration.table.ageingTime), up to \(engine.bridge.configuration.table.maximumEntries) MACs\(engine.bridge.configuration.isHub ? ", hub mode" : "")")
        if attached.count < 2 { logger.warning("only \(attached.count) port(s): nothing to forward between until more exist") }
        var fds: [pollfd] = []
        var owners: [Int] = []  // index into `attached` per fds entry (after the signalfd)
        var dirty = true
        var pending = false
        while true {
            if dirty {
                fds = [pollfd(fd: signalDescriptor, events: Int16(POLLIN), revents: 0)]
                owners = [-1]
                for (i, a) in attached.enumerated() {
                    if let fd = a.device.pollDescriptor {
                        fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                        owners.append(i)
                    }
                }
                dirty = false
            }
            let timeout = pending ? 0 : pollTimeout(now: now())
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                logger.critical("poll failed: \(describeErrno(errno))")
                return 1
            }
            let t = now()
            pending = false
            var removed: [Int] = []
            for k in fds.indices where fds[k].revents != 0 || (k > 0 && timeout == 0) {
                if k == 0 {
                    if let status = handleSignals() { return status }
                    continue
                }
                let a = attached[owners[k]]
                do {
                    let handled = try engine.service(a.device, at: t)
                    if handled >= engine.budgetPerService { pending = true }
                } catch {
                    logger.error("port \(a.name): \(error.kind == .deviceRemoved ? "interface is gone" : "device failed") (\(error.operation): \(describeErrno(error.code))); port removed, forwarding continues between the others")
                    removed.append(owners[k])
                }
            }
            if !removed.isEmpty {
                for i in removed.sorted(by: >) {
                    engine.removeDevice(attached[i].device)
                    attached.remove(at: i)
                }
                dirty = true
            }
            if let deadline = engine.nextDeadline, deadline <= t { engine.expire(at: t) }
        }
    }

    func now() -> Instant { Instant(nanoseconds: ctb_monotonic_ns()) }

    /// Milliseconds until the next timer, rounded up; -1 (wait for traffic) if none.
    func pollTimeout(now: Instant) -> Int32 {
        guard let deadline = engine.nextDeadline else { return -1 }
        let ns = deadline.nanoseconds - now.nanoseconds
        if ns <= 0 { return 0 }
        return Int32(min((ns + 999_999) / 1_000_000, 3_600_000))
    }

    /// Handles pending signals; returns an exit status when the loop must stop.
    func handleSignals() -> Int32? {
        while true {
            let signo = ctb_signalfd_read(signalDescriptor)
            switch signo {
            case 0: return nil
            case SIGINT, SIGTERM:
                logger.info("\(signo == SIGINT ? "SIGINT" : "SIGTERM"): shutting down")
                shutdown()
                return 0
            case SIGHUP:
                logger.info("SIGHUP: logs go to stderr, nothing to reopen")
            default:
                if signo < 0 {
                    logger.error("signalfd read failed: \(describeErrno(-signo))")
                    return nil
                }
            }
        }
    }

    /// Closes every port: TAPs tapbridge created disappear with their descriptor.
    public func shutdown() {
        for a in attached { engine.removePort(a.port) }
        attached.removeAll()
    }
}
