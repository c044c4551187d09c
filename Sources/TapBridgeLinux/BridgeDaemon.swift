import CTapBridge
import Glibc
public import Logging
public import TapBridgeCore
public import TapBridgePcap

/// The running bridge: opens the ports, then serves them from one poll(2) loop until SIGINT or
/// SIGTERM.
///
/// ```
///            ┌──────────────── poll(2) ─────────────────┐  timeout: the next FDB expiry or
///            │ signalfd   tap0   tap1   eth-pkt   udp   │  dynamic-peer idle deadline
///            └────┬─────────┬──────┬───────┬───────┬────┘
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
        public var remotes: [RemoteSpec] = []
        /// `nil`: all addresses, on the first remote's port.
        public var listen: ListenSpec? = nil
        /// Default encapsulation and VNI for remotes that do not say.
        public var encapsulation: Encapsulation = .vxlan
        public var vni = VNI(1)!
        /// Let unknown senders become remotes (up to `maximumPeers`, dropped after
        /// `peerTimeout` of silence).
        public var acceptsPeers = false
        public var maximumPeers = 64
        public var peerTimeout: Duration = .seconds(300)
        /// Never forward between two remotes (default on).
        public var splitHorizon = true
        /// Offloads on TAP and packet ports (`--offload`), unless a port says otherwise.
        public var offload = true
        /// Mirroring (`--mirror*`), or nil.
        public var mirror: MirrorOptions? = nil
        /// The bridge's name (`--name`): names its control socket and its metrics.
        public var name = "tapbridge"
        /// The control socket (`--control`); nil: `/run/tapbridge/NAME.sock`; "none": off.
        public var controlPath: String? = nil
        /// Group allowed to use the control socket (mode 0660 instead of 0600).
        public var controlGroup: String? = nil
        /// Log a one-line summary this often (`--stats-interval`), or nil.
        public var statsInterval: Duration? = nil
        /// The version reported by `show stats`.
        public var version = ""
        public var bridge: Bridge.Configuration

        public init(ports: [PortSpec], bridge: Bridge.Configuration = .init()) {
            self.ports = ports
            self.bridge = bridge
        }
    }

    /// How a port reaches its interface or peer.
    public enum Kind: String, Sendable {
        case tap
        case packet
        case remote
    }

    struct Attached {
        var device: any PortDevice
        var kind: Kind
        var port: PortID
        var name: String
        /// The interface's index (TAP and packet ports), to refuse attaching it twice and to
        /// show its current name after a rename.
        var interfaceIndex: Int32? = nil
        /// Offloads were asked for on this port (`--offload`, `offload=`).
        var offloadsOn = true
        /// A TAP reached through a packet socket because this program holds it:
        /// `qemu-system-x86, pid 812`.
        var heldBy: String? = nil
    }

    public let engine: ForwardingEngine
    let options: Options
    let logger: Logger
    var attached: [Attached] = []
    let signalDescriptor: Int32
    /// The UDP socket serving the remotes, if any, and the device the engine knows it by
    /// (the socket itself, or its mirror decorator).
    public private(set) var tunnel: UDPTunnelDevice? = nil
    var tunnelHandle: (any PortDevice)? = nil
    /// The mirror, if `--mirror` or `--mirror-iface` was given.
    public private(set) var mirror: PcapMirror? = nil
    var control: ControlServer? = nil
    let started = ctb_monotonic_ns()
    var nextStats: Int64? = nil

    /// Where the control socket is, or nil if it is off.
    public var controlPath: String? { Self.controlPath(options) }

    /// `base`, or the first of `base-2`, `base-3`, ... (up to 99) whose control socket no
    /// running bridge holds.
    public static func freeName(base: String) -> String {
        for n in 1...99 {
            let name = n == 1 ? base : "\(base)-\(n)"
            if !ControlServer.isLive(ControlCoding.defaultPath(name: name)) { return name }
        }
        return base  // refused later with the usual message
    }

    static func controlPath(_ options: Options) -> String? {
        options.controlPath == "none" ? nil : (options.controlPath ?? ControlCoding.defaultPath(name: options.name))
    }

    /// Opens every port; throws (after closing what it opened) if any cannot be opened.
    public init(options: Options, logger: Logger) throws(StartupError) {
        self.options = options
        self.logger = logger
        var names: Set<String> = []
        for name in options.ports.map(\.name) + options.remotes.map(\.name) where !names.insert(name).inserted {
            throw StartupError("port \(name): given twice")
        }
        engine = ForwardingEngine(bridge: Bridge(configuration: options.bridge))
        // Before signals are blocked for the signalfd, so SIGTERM still works while it waits
        // (at most a second, for a bridge that is stopped).
        if let path = Self.controlPath(options), ControlServer.isLive(path) {
            throw StartupError("--control '\(path)': another tapbridge named '\(options.name)' is running (give this one a different --name or --control)")
        }
        let sfd = ctb_signalfd_open()
        if sfd < 0 { throw StartupError("cannot set up signal handling: \(describeErrno(-sfd))") }
        signalDescriptor = sfd
        do throws(StartupError) {
            for name in options.mirror?.ports ?? [] where !names.contains(name) {
                throw StartupError("--mirror-port '\(name)': no such port (ports: \(names.sorted().joined(separator: ", ")))")
            }
            if let m = options.mirror { mirror = try PcapMirror(m, logger: logger) }
            for spec in options.ports { try attachPort(spec) }
            if !options.remotes.isEmpty || options.acceptsPeers { try attachRemotes() }
            if let path = controlPath { control = try ControlServer(path: path, group: options.controlGroup) }
        } catch {
            mirror?.close()
            close(sfd)
            throw error
        }
        if logger.logLevel <= .debug { watchEvents() }
        if let m = options.mirror {
            let targets = [m.path.map { "pcap \($0 == "-" ? "to standard output" : $0)" }, m.interface.map { "interface \($0)" }].compactMap { $0 }
            logger.info("mirroring \(m.ports.isEmpty ? "all ports" : m.ports.joined(separator: ", ")) (\(m.egress ? "in and out" : "in")) to \(targets.joined(separator: " and "))\(m.filter.map { ", filter '\($0)'" } ?? "")")
        }
    }

    /// The device as the engine sees it: wrapped in the mirror decorator when mirroring.
    func decorate(_ device: any PortDevice) -> any PortDevice {
        guard let mirror, let m = options.mirror else { return device }
        return MirroredDevice(device, sink: mirror, ports: m.ports.isEmpty ? nil : Set(m.ports), egress: m.egress)
    }

    deinit { close(signalDescriptor) }

    func attachPort(_ spec: PortSpec) throws(StartupError) {
        // One interface attached twice (by an altname, or by its new name after a rename)
        // would loop every broadcast between its two ports: refuse it.
        let existing = ctb_if_index(spec.name)
        if existing > 0, let other = attached.first(where: { $0.interfaceIndex == existing }) {
            throw StartupError("port \(spec.name): that interface (ifindex \(existing)) is already attached as port \(other.name)")
        }
        let (device, kind, note): (any PortDevice, Kind, String)
        do {
            (device, kind, note) = try Self.open(spec, offload: spec.offload ?? options.offload)
        } catch {
            throw StartupError("port \(spec.name): \(error.message)")
        }
        // a TAP someone else holds: say who; another tapbridge there joins the two segments
        let holder = kind == .packet ? TapHolder.find(spec.name) : nil
        let index = (device as? PacketSocketDevice)?.interfaceIndex ?? (device as? TapDevice)?.interfaceIndex
        let handle = decorate(device)
        let port = engine.addPort(named: spec.name, configuration: spec.configuration, on: handle)
        attached.append(Attached(device: handle, kind: kind, port: port, name: spec.name, interfaceIndex: index, offloadsOn: spec.offload ?? options.offload,
                                 heldBy: holder.map { "\($0.command), pid \($0.pid)" }))
        logger.info("port \(spec.name): \(note), \(Self.describe(spec.configuration))")
        if let holder, holder.command == "tapbridge" {
            logger.warning("port \(spec.name): the TAP is served by another tapbridge (pid \(holder.pid)); reached here through a packet socket, it links the two bridges' segments, and makes a loop if they are linked another way too")
        }
    }

    static func describe(_ c: PortConfiguration) -> String {
        "\(c.vlanMode)" + (c.learning ? "" : ", learning off") + (c.flooding ? "" : ", flooding off")
    }

    func attachRemotes() throws(StartupError) {
        guard let listenPort = options.listen?.port ?? options.remotes.first?.port else {
            throw StartupError("--accept-peers needs --listen [ADDR:]PORT")
        }
        let device: UDPTunnelDevice
        if let host = options.listen?.host {
            let address = try SocketAddress.resolve(host: host, port: listenPort, ipv4Only: false)
            device = try UDPTunnelDevice(listen: address, ipv4Only: address.isIPv4, offload: options.offload, logger: logger)
        } else {
            let any6 = try SocketAddress.resolve(host: "::", port: listenPort, ipv4Only: false)
            do {
                device = try UDPTunnelDevice(listen: any6, ipv4Only: false, offload: options.offload, logger: logger)
            } catch {
                // no IPv6 here: all IPv4 addresses
                let any4 = try SocketAddress.resolve(host: "0.0.0.0", port: listenPort, ipv4Only: true)
                device = try UDPTunnelDevice(listen: any4, ipv4Only: true, offload: options.offload, logger: logger)
            }
        }
        tunnel = device
        let handle = decorate(device)
        tunnelHandle = handle
        let ipv4Only = device.family == AF_INET
        for remote in options.remotes {
            let address: SocketAddress
            do {
                address = try SocketAddress.resolve(host: remote.host, port: remote.port, ipv4Only: ipv4Only)
            } catch {
                throw StartupError("remote \(remote.name): \(error.message)")
            }
            let encapsulation = remote.encapsulation ?? options.encapsulation
            let vni = remote.vni ?? options.vni
            let index: Int
            do {
                index = try device.addPeer(address, encapsulation: encapsulation, vni: vni)
            } catch {
                throw StartupError("remote \(remote.name): \(error.message)")
            }
            var configuration = remote.configuration
            configuration.splitHorizonGroup = options.splitHorizon ? 1 : 0
            let port = engine.addPort(named: remote.name, configuration: configuration, on: handle)
            device.bind(peer: index, to: port)
            attached.append(Attached(device: handle, kind: .remote, port: port, name: remote.name))
            let shown = remote.endpoint == "\(address)" ? "" : " (\(address))"
            logger.info("remote \(remote.name)\(shown): \(encapsulation)\(encapsulation == .vxlan ? " VNI \(vni)" : ""), \(Self.describe(configuration))")
        }
        if options.acceptsPeers {
            device.acceptedEncapsulation = options.encapsulation
            device.acceptedVNI = options.vni
            device.acceptPeer = { [unowned self] address in self.acceptDynamicPeer(address) }
        }
        logger.info("UDP socket on \(device.localAddress)\(options.acceptsPeers ? ", accepting up to \(options.maximumPeers) unknown peers" : ""), split horizon \(options.splitHorizon ? "on" : "off")")
    }

    /// `--accept-peers`: an unknown sender becomes a remote with the bridge-wide encapsulation.
    func acceptDynamicPeer(_ address: SocketAddress) -> Int? {
        guard let device = tunnel, let handle = tunnelHandle else { return nil }
        guard device.dynamicPeerCount < options.maximumPeers else {
            return nil
        }
        guard let index = try? device.addPeer(address, encapsulation: options.encapsulation, vni: options.vni, isDynamic: true) else { return nil }
        let name = "peer-\(address)"
        let configuration = PortConfiguration(splitHorizonGroup: options.splitHorizon ? 1 : 0)
        let port = engine.addPort(named: name, configuration: configuration, on: handle)
        device.bind(peer: index, to: port)
        attached.append(Attached(device: handle, kind: .remote, port: port, name: name))
        logger.info("remote \(name): accepted (\(options.encapsulation)), \(device.dynamicPeerCount)/\(options.maximumPeers) dynamic peers")
        return index
    }

    static func open(_ spec: PortSpec, offload: Bool) throws(StartupError) -> (any PortDevice, Kind, String) {
        func tapNote(_ tap: TapDevice) -> String {
            (tap.existedBefore ? "TAP attached (kept on exit)" : "TAP created (removed on exit)") + ", mtu \(tap.mtu), offloads \(tap.offloadDescription)"
        }
        func packet(_ why: String) throws(StartupError) -> (any PortDevice, Kind, String) {
            let device = try PacketSocketDevice(name: spec.name, mtu: spec.mtu, offload: offload)
            return (device, .packet, "packet socket on ifindex \(device.interfaceIndex)\(why), offloads \(device.offloadDescription)")
        }
        if spec.mode == .packet { return try packet("") }
        do {
            let tap = try TapDevice(name: spec.name, mtu: spec.mtu, offload: offload)
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

    /// Runs until SIGINT or SIGTERM; returns the process exit status.
    public func run() -> Int32 {
        let table = engine.bridge.configuration.table
        logger.info("forwarding between \(attached.count) port(s); ageing \(table.ageingTime), up to \(table.maximumEntries) MACs\(engine.bridge.configuration.isHub ? ", hub mode" : "")")
        if attached.count < 2 && !options.acceptsPeers && control == nil { logger.warning("only \(attached.count) port(s): nothing to forward between") }
        if let path = controlPath { logger.info("control socket \(path) (tapbridge show ports --name \(options.name))") }
        if let interval = options.statsInterval { nextStats = now().advanced(by: interval).nanoseconds }
        notifyReady()
        var fds: [pollfd] = []
        var owners: [any PortDevice] = []
        var knownGeneration = -1
        var knownTunnel: ObjectIdentifier? = nil
        var pending = false
        while true {
            // Rebuild the descriptor set only when ports came or went (no work per wake-up).
            if engine.generation != knownGeneration || tunnelHandle.map(ObjectIdentifier.init) != knownTunnel {
                knownGeneration = engine.generation
                knownTunnel = tunnelHandle.map(ObjectIdentifier.init)
                var devices = engine.allDevices
                // The UDP socket is polled even before it carries a port (--accept-peers).
                if let tunnelHandle, !devices.contains(where: { $0 === tunnelHandle }) { devices.append(tunnelHandle) }
                fds = [pollfd(fd: signalDescriptor, events: Int16(POLLIN), revents: 0)]
                owners = []
                for d in devices {
                    guard let fd = d.pollDescriptor else { continue }
                    fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                    owners.append(d)
                }
            }
            // After the devices: the control socket and its clients, then the mirror's
            // descriptor while it has bytes to write. Rebuilt each round (no allocation: the
            // array keeps its capacity).
            fds.removeLast(fds.count - owners.count - 1)
            let controlStart = fds.count
            control?.appendPollEntries(to: &fds)
            let controlEnd = fds.count
            if let fd = mirror?.pendingDescriptor { fds.append(pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)) }
            let timeout = pending ? 0 : pollTimeout(now: now())
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                logger.critical("poll failed: \(describeErrno(errno))")
                return 1
            }
            let t = now()
            pending = false
            var failed: [any PortDevice] = []
            for k in 0...owners.count where fds[k].revents != 0 || (k > 0 && timeout == 0) {
                if k == 0 {
                    if let status = handleSignals() { return status }
                    continue
                }
                do {
                    if try engine.service(owners[k - 1], at: t) >= engine.budgetPerService { pending = true }
                } catch {
                    let names = attached.filter { $0.device === owners[k - 1] }.map(\.name).joined(separator: ", ")
                    logger.error("port \(names): \(error.kind == .deviceRemoved ? "interface is gone" : "device failed") (\(error.operation): \(describeErrno(error.code))); port removed, forwarding continues between the others")
                    failed.append(owners[k - 1])
                }
            }
            for device in failed {
                engine.removeDevice(device)
                attached.removeAll { $0.device === device }
                if device === tunnelHandle {
                    tunnel = nil
                    tunnelHandle = nil
                }
            }
            if let deadline = engine.nextDeadline, deadline <= t { engine.expire(at: t) }
            expireIdlePeers(at: t)
            control?.service(fds[controlStart..<controlEnd], now: t.nanoseconds) { reply(to: $0) }
            mirror?.drain(at: t)
            if let due = nextStats, t.nanoseconds >= due, let interval = options.statsInterval {
                logStats()
                nextStats = t.advanced(by: interval).nanoseconds
            }
        }
    }

    /// Every port exists and the control socket answers: tell systemd (`Type=notify`), if it
    /// is listening (`$NOTIFY_SOCKET`, sd_notify(3)'s protocol: one datagram `READY=1`).
    func notifyReady() {
        guard let raw = getenv("NOTIFY_SOCKET") else { return }
        let path = String(cString: raw)
        guard !path.isEmpty else { return }
        let rc = ctb_notify(path, "READY=1\nSTATUS=forwarding between \(attached.count) port(s)")
        if rc < 0 { logger.warning("cannot notify systemd at \(path): \(describeErrno(-rc))") }
    }

    func expireIdlePeers(at t: Instant) {
        guard options.acceptsPeers, let tunnel else { return }
        for port in tunnel.idleDynamicPeers(timeout: options.peerTimeout, now: t) {
            let name = engine.name(of: port)
            engine.removePort(port)
            attached.removeAll { $0.port == port }
            logger.info("remote \(name): silent for \(options.peerTimeout), removed")
        }
    }

    func now() -> Instant { Instant(nanoseconds: ctb_monotonic_ns()) }

    /// Milliseconds until the next timer, rounded up; -1 (wait for traffic) if none. Runs on
    /// every wake-up, so it builds no collections (the loop allocates nothing per wake-up).
    func pollTimeout(now: Instant) -> Int32 {
        var deadline = engine.nextDeadline?.nanoseconds
        func earlier(_ a: Int64?, _ b: Int64?) -> Int64? { a.map { x in b.map { min(x, $0) } ?? x } ?? b }
        deadline = earlier(deadline, mirror?.retryDeadline?.nanoseconds)
        deadline = earlier(deadline, control?.nextDeadline)
        deadline = earlier(deadline, nextStats)
        if options.acceptsPeers { deadline = earlier(deadline, tunnel?.nextIdleDeadline(timeout: options.peerTimeout)?.nanoseconds) }
        guard let deadline else { return -1 }
        let ns = deadline - now.nanoseconds
        if ns <= 0 { return 0 }
        // rounded up, without overflow for a deadline at the end of time
        return Int32(min(ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1), 3_600_000))
    }

    /// Handles pending signals; returns an exit status when the loop must stop.
    func handleSignals() -> Int32? {
        while true {
            let signo = ctb_signalfd_read(signalDescriptor)
            switch signo {
            case 0: return nil
            case SIGINT, SIGTERM, SIGQUIT:
                logger.info("\(Self.signalName(signo)): shutting down")
                mirror?.close(waitMilliseconds: 1000)  // first, so the counters say what reached the file
                reportCounters()
                shutdown()
                return 0
            case SIGHUP:
                logger.info("SIGHUP: logs go to stderr, nothing to reopen")
            case SIGUSR1:
                logger.info("SIGUSR1: counters follow")
                reportCounters()
            default:
                if signo < 0 {
                    logger.error("signalfd read failed: \(describeErrno(-signo))")
                    return nil
                }
                logger.notice("\(Self.signalName(signo)) ignored (SIGINT, SIGTERM or SIGQUIT stop the bridge; SIGUSR1 logs the counters)")
            }
        }
    }

    static func signalName(_ signo: Int32) -> String {
        switch signo {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGQUIT: "SIGQUIT"
        case SIGUSR2: "SIGUSR2"
        case SIGALRM: "SIGALRM"
        default: "signal \(signo)"
        }
    }

    /// One line per port with its counters, then the UDP socket, the mirror and the MAC
    /// table: the same figures `show ports` and `show stats` report.
    public func reportCounters() {
        for p in portReports() {
            let drops = p.drops.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            let offloads = p.checksumsCompleted + p.framesSegmented > 0 ? ", checksums_completed=\(p.checksumsCompleted) frames_segmented=\(p.framesSegmented)" : ""
            logger.info("counters \(p.name): rx \(p.rxFrames) frames \(p.rxBytes) bytes, tx \(p.txFrames) frames \(p.txBytes) bytes\(offloads), drops \(drops.isEmpty ? "none" : drops)")
        }
        let s = statsReport(at: Instant(nanoseconds: ctb_monotonic_ns()))
        if let u = s.udp {
            logger.info("counters udp: unknown_sender=\(u.unknownSender) unreachable=\(u.unreachable) peers_refused=\(u.peersRefused) checksums_completed=\(u.checksumsCompleted) trains_sent=\(u.trainsSent) trains_received=\(u.trainsReceived) frames_coalesced=\(u.framesCoalesced) trains_refused=\(u.trainsRefused)")
        }
        if let m = s.mirror {
            logger.info("counters mirror: seen \(m.seen), written \(m.written), filtered_out \(m.filteredOut), dropped \(m.dropped), write_errors \(m.writeErrors), rotations \(m.rotations), injected \(m.injected), inject_dropped \(m.injectDropped)")
        }
        let f = s.fdb
        logger.info("counters fdb: entries \(f.entries), learned \(f.learned), moved \(f.moved), expired \(f.expired), evicted \(f.evicted), refused \(f.refused)")
    }

    /// Closes every port: TAPs tapbridge created disappear with their descriptor.
    public func shutdown() {
        for a in attached { engine.removePort(a.port) }
        attached.removeAll()
        tunnel = nil
        tunnelHandle = nil
        control = nil
        mirror?.close(waitMilliseconds: 1000)
    }
}
