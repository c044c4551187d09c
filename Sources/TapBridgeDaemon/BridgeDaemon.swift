import CTapBridge
public import Glibc
public import Logging
public import TapBridgeCore
public import TapBridgeDevices
import TapBridgeOptions
public import TapBridgePcap

/// The running bridge: opens the ports, assembles the event loop from its sources, and runs
/// it until SIGINT or SIGTERM.
///
/// ```
///            ┌──────────────────── poll(2) ──────────────────────┐
///            │ signalfd   tap0  tap1  eth-pkt  udp   control  mirror │  timeout: the earliest
///            └────┬─────────┬─────┬──────┬──────┬───────┬───────┬──┘  source deadline
///   SignalSource  PortsSource (engine.service, 256 frames   ControlServer  PcapMirror
///                 per device per round)      │
///                 RemotePeers: new UDP peers admitted after the batch, idle ones removed
///                 timers: FDB ageing, --stats-interval
/// ```
/// Like vtun's `br_select.c`, but draining each descriptor in batches instead of one read per
/// wake-up. No thread, no per-frame allocation, no per-frame log line. Which ports exist is
/// the engine's port registry; this class only assembles.
public final class BridgeDaemon {
    public let engine: ForwardingEngine
    let options: Options
    let logger: Logger
    let loop: EventLoop
    let ports: PortsSource
    var signals: SignalSource! = nil
    /// The remotes and their UDP socket, if any.
    var remotes: RemotePeers? = nil
    /// The vxlan devices of `datapath=kernel` remotes, if any.
    var kernelRemotes: KernelVXLAN? = nil
    /// The UDP socket serving the remotes, if any.
    public var tunnel: UDPTunnelDevice? { remotes?.device }
    /// The mirror, if `--mirror` or `--mirror-iface` was given.
    public private(set) var mirror: PcapMirror? = nil
    var control: ControlServer? = nil
    let started = ctb_monotonic_ns()

    /// Where the control socket is, or nil if it is off.
    public var controlPath: String? { Self.controlPath(options) }

    static func controlPath(_ options: Options) -> String? {
        options.controlPath == "none" ? nil : (options.controlPath ?? ControlCoding.defaultPath(name: options.name))
    }

    /// `--mirror-iface`, which no port may be (nor its veth peer).
    var mirrorInterface: MirrorInterface? = nil
    /// The claim on the control socket's path (nil with `--control none`).
    let claim: ControlClaim?
    /// The namespaces of `netns=` ports: those this bridge made go with their last port.
    let namespaces: Namespaces
    /// Ports on interfaces tapbridge did not make, by name: they come back with their interface.
    var returning: [String: PortSpec] = [:]
    /// Those whose interface is gone, waiting for it (`failedIndex`: the ifindex an attach
    /// failed on, so that failure is logged once).
    var absent: [String: (spec: PortSpec, failedIndex: Int32)] = [:]
    var nextAbsentCheck: Int64? = nil
    /// The counts of ports that went absent, kept while they are away and added to their
    /// counts when they are back (a port's counters only grow, absences or not).
    var carried: [String: PortCounters] = [:]
    /// Storm-control drops per port at the last line, and when that was (`logStormDrops`).
    var stormSeen: [String: (count: UInt64, log: LogThrottle)] = [:]
    /// rtnetlink link events: packet ports whose interface is deleted, absent ones that return.
    var linkMonitor: LinkMonitor? = nil
    /// Ports with an emulated link (`delay=`, `loss=`, ...), by name: their delayed frames leave
    /// from the event loop's timer.
    var impaired: [String: ImpairedDevice] = [:]
    var loggedSeed = false
    /// `--stream-listen` sockets, and which of them each accepted stream port came through.
    var streamListeners: [StreamListener] = []
    var streamOrigin: [String: StreamListener] = [:]
    /// `stream=` ports being connected.
    var connector: StreamConnector! = nil
    /// The control plane's worker: name lookups, vxlan devices and their FDBs, off the loop.
    let linkControl: LinkControl

    /// When the next delayed frame of any port is due (asked at every wake-up: no allocation).
    var nextDeparture: Int64? {
        var next: Int64? = nil
        for device in impaired.values {
            if let due = device.nextDeparture?.nanoseconds { next = min(next ?? due, due) }
        }
        return next
    }

    /// Opens every port; throws (after closing what it opened) if any cannot be opened.
    /// `claim`: the control path's claim if the caller took it already (choosing a free name);
    /// otherwise it is taken here, first, and a bridge holding it refuses this one.
    public convenience init(options: Options, logger: Logger, claim: ControlClaim? = nil) throws(StartupError) {
        try self.init(options: options, logger: logger, claim: claim, kernel: SystemLinkKernel())
    }

    /// `kernel`: what performs the control plane's link operations (a test's fake).
    init(options: Options, logger: Logger, claim: ControlClaim? = nil, kernel: any LinkKernel) throws(StartupError) {
        self.options = options
        self.logger = logger
        linkControl = try LinkControl(kernel: kernel)
        namespaces = Namespaces(control: linkControl, logger: logger)
        try options.user?.check(options.ports)
        var names: Set<String> = []
        for name in options.ports.map(\.name) + options.remotes.map(\.name) where !names.insert(name).inserted {
            throw StartupError("port \(name): given twice")
        }
        let engine = ForwardingEngine(bridge: Bridge(configuration: options.bridge))
        self.engine = engine
        loop = EventLoop(logger: logger)
        loop.busyPoll = options.busyPoll.nanoseconds
        var failed: (any PortDevice, PortError) -> Void = { _, _ in }
        ports = try PortsSource(engine: engine) { failed($0, $1) }
        // the name is claimed before anything is opened: of two bridges started at once with
        // one name, one runs and the other is refused at once
        if let path = Self.controlPath(options) {
            var taken = claim?.path == path ? claim : nil
            if taken == nil { taken = try ControlClaim.take(path) }
            guard let taken else {
                throw StartupError("--control '\(path)': another tapbridge named '\(options.name)' is running (give this one a different --name or --control)")
            }
            self.claim = taken
        } else {
            self.claim = nil
        }
        failed = { [unowned self] device, error in portFailed(device, error) }
        connector = StreamConnector(resolver: linkControl, logger: logger) { [unowned self] spec, fd in attachConnected(spec, fd: fd) }
        signals = try SignalSource(logger: logger, stop: { [unowned self] in stop() }, dump: { [unowned self] in reportCounters() })
        do throws(StartupError) {
            for name in options.mirror?.ports ?? [] where !names.contains(name) {
                throw StartupError("--mirror-port '\(name)': no such port (ports: \(names.sorted().joined(separator: ", ")))")
            }
            if let interface = options.mirror?.interface, options.ports.contains(where: { $0.name == interface }) {
                // (a TAP this bridge creates does not exist yet: pcap would only say "No such device")
                throw StartupError("--mirror-iface '\(interface)': it is also a --port: mirrored frames injected into it would come back in on that port and loop forever; mirror to an interface no port uses (a dummy, or a veth whose peer is not a port)")
            }
            if let m = options.mirror { mirror = try PcapMirror(m, logger: logger) }
            mirrorInterface = options.mirror?.interface.map(MirrorInterface.init(name:))
            // the remotes' devices, socket and paths first (a TAP created here gets the MTU
            // that fits them), their ports after the others
            let kernelSpecs = options.remotes.filter { $0.datapath == .kernel }
            var userOptions = options
            userOptions.remotes = options.remotes.filter { $0.datapath == .user }
            if !kernelSpecs.isEmpty {
                kernelRemotes = try KernelVXLAN(remotes: kernelSpecs, vni: options.vni, local: options.listen?.host, bridge: options.name, maximumAddresses: options.bridge.table.maximumEntries,
                                                control: linkControl, logger: logger)
            }
            if !userOptions.remotes.isEmpty || options.acceptsPeers {
                if let port = options.listen?.port ?? userOptions.remotes.first?.port {
                    try checkUDPPort(port, socketFor: "the datapath=user remotes\(options.acceptsPeers ? ", --accept-peers" : "")")
                }
                remotes = try RemotePeers(options: userOptions, engine: engine, ports: ports, decorate: decorate, logger: logger)
            }
            for spec in options.ports { try attachPort(spec) }
            for spec in kernelRemotes?.ports ?? [] { try attachPort(spec) }
            try openStreamListeners()
            try remotes?.addConfigured()
            openLinkMonitor()
            if let path = controlPath {
                let responder = ControlResponder(daemon: self)
                control = try ControlServer(path: path, readers: options.controlGroup, admins: options.controlAdminGroup, userMayChange: options.user == nil) { responder.reply(to: $0) }
            }
            // the last step of start-up: everything is open
            if let user = options.user {
                try dropPrivileges(to: user)
                linkControl.credentialsChanged()
            }
        } catch {
            mirror?.close()
            TapDevice.deleteCreatedAtOnce()
            for port in engine.ports { engine.removePort(port) }
            namespaces.releaseAll()
            kernelRemotes?.releaseAll()
            streamListeners.removeAll()
            throw error
        }
        engine.bridge.loopHandler = { [unowned engine, logger, options] report in
            switch report {
            case .loop(let a, let b, let moves, let blocked):
                logger.warning("probable loop between ports \(engine.name(of: a)) and \(engine.name(of: b)): MACs moved between them \(moves) times within a second (both ends of one link bridged? two bridges linked twice?); \(blocked.map { "port \(engine.name(of: $0)) blocked for \(options.bridge.loopBlockTime), then tried again (--loop-protect)" } ?? "not blocked (--loop-protect off)")")
            case .echo(let port, let repeats, let blocked):
                logger.warning("probable loop through port \(engine.name(of: port)): the same frame came in on it \(repeats) times within \(EchoWatch.windowDescription), flooded each time, with no MAC moving (both ends of one link bridged? a port that reflects what it is sent?); \(blocked.map { "port \(engine.name(of: $0)) blocked for \(options.bridge.loopBlockTime), then tried again (--loop-protect)" } ?? "not blocked (--loop-protect off)")")
            case .unblocked(let port):
                logger.notice("port \(engine.name(of: port)): unblocked after a loop; it is blocked again if the loop is still there")
            }
        }
        assembleLoop()
        if logger.logLevel <= .debug { SwitchEventLog(engine: engine, logger: logger) }
        if let m = options.mirror {
            let targets = [m.path.map { "pcap \($0 == "-" ? "to standard output" : $0)" }, m.interface.map { "interface \($0)" }].compactMap { $0 }
            logger.info("mirroring \(m.ports.isEmpty ? "all ports" : m.ports.joined(separator: ", ")) (\(m.egress ? "in and out" : "in")) to \(targets.joined(separator: " and "))\(m.filter.map { ", filter '\($0)'" } ?? "")")
        }
    }

    /// The sources, in the order each round serves them: signals first; the ports; new UDP
    /// peers after the batch that brought them; then the timers, the control socket (between
    /// batches, never inside one) and the mirror writer.
    func assembleLoop() {
        loop.add(signals)
        loop.add(ports)
        if let remotes, options.acceptsPeers { loop.add(remotes) }
        for listener in streamListeners { loop.add(listener) }
        loop.add(connector)
        loop.add(linkControl)
        if let linkMonitor { loop.add(linkMonitor) }
        loop.add(TimerSource(due: { [unowned self] in engine.nextDeadline?.nanoseconds }, action: { [unowned self] in engine.expire(at: $0) }))
        loop.add(TimerSource(due: { [unowned self] in absent.isEmpty ? nil : nextAbsentCheck }, action: { [unowned self] in checkAbsent(at: $0) }))
        loop.add(TimerSource(due: { [unowned self] in nextDeparture },
                             action: { [unowned self] now in for device in impaired.values { device.releaseDue(at: now) } }))
        loop.add(TimerSource(due: { [unowned self] in tunnel?.nextPathRecheck(expiry: options.pathMTUExpiry) },
                             action: { [unowned self] now in tunnel?.recheckPaths(at: now.nanoseconds, expiry: options.pathMTUExpiry) }))
        loop.add(TimerSource(due: { [unowned self] in tunnel?.nextFormatTimer }, action: { [unowned self] now in tunnel?.runFormatTimers(at: now.nanoseconds) }))
        var nextStormLook = EventLoop.now().advanced(by: .seconds(1)).nanoseconds
        loop.add(TimerSource(due: { nextStormLook }, action: { [unowned self] now in
            logStormDrops(at: now)
            nextStormLook = now.advanced(by: .seconds(1)).nanoseconds
        }))
        if let interval = options.statsInterval {
            var next = EventLoop.now().advanced(by: interval).nanoseconds
            loop.add(TimerSource(due: { next }, action: { [unowned self] now in
                logStats()
                next = now.advanced(by: interval).nanoseconds
            }))
        }
        if let control { loop.add(control) }
        if let mirror { loop.add(mirror) }
    }

    /// The device as the engine sees it: wrapped in the mirror decorator when mirroring.
    func decorate(_ device: any PortDevice) -> any PortDevice {
        guard let mirror, let m = options.mirror else { return device }
        return MirroredDevice(device, sink: mirror, ports: m.ports.isEmpty ? nil : Set(m.ports), egress: m.egress)
    }

    /// Runs until SIGINT or SIGTERM; returns the process exit status.
    public func run() -> Int32 {
        logStart()
        notifyReady()
        return loop.run()
    }

    /// What runs: the ports, the table, where to ask.
    func logStart() {
        let table = engine.bridge.configuration.table
        let count = engine.ports.count
        logger.info("forwarding between \(count) port(s); ageing \(table.ageingTime), up to \(table.maximumEntries) MACs\(engine.bridge.configuration.isHub ? ", hub mode" : "")")
        if count < 2 && !options.acceptsPeers && control == nil && streamListeners.isEmpty { logger.warning("only \(count) port(s): nothing to forward between") }
        if let path = controlPath { logger.info("control socket \(path) (tapbridge show ports \(options.controlPath == nil ? "--name \(options.name)" : "--control \(path)"))") }
    }

    /// Every port exists and the control socket answers: tell systemd (`Type=notify`), if it
    /// is listening (`$NOTIFY_SOCKET`, sd_notify(3)'s protocol: one datagram `READY=1`).
    func notifyReady() {
        guard let raw = getenv("NOTIFY_SOCKET") else { return }
        let path = String(cString: raw)
        guard !path.isEmpty else { return }
        let rc = ctb_notify(path, "READY=1\nSTATUS=forwarding between \(engine.ports.count) port(s)")
        if rc < 0 { logger.warning("cannot notify systemd at \(path): \(describeErrno(-rc))") }
    }

    /// SIGINT, SIGTERM, SIGQUIT: the mirror first, so the counters say what reached the file.
    func stop() {
        mirror?.close(waitMilliseconds: 1000)
        reportCounters()
        shutdown()
    }

    /// Closes every port: TAPs tapbridge created disappear with their descriptor.
    public func shutdown() {
        linkControl.finish()  // (what the worker was doing lands first: a device it made goes too)
        TapDevice.deleteCreatedAtOnce()
        for port in engine.ports { engine.removePort(port) }
        namespaces.releaseAll()
        kernelRemotes?.releaseAll()
        kernelRemotes = nil
        streamListeners.removeAll()
        streamOrigin.removeAll()
        connector.cancelAll()
        closeRemotes()
        control = nil
        mirror?.close(waitMilliseconds: 1000)
    }
}

extension ControlServer: EventSource {
    public func register(_ fds: inout [pollfd]) { appendPollEntries(to: &fds) }
    public func deadline() -> Int64? { nextDeadline }
    public func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        service(ready, now: now.nanoseconds, handle: respond)
        return nil
    }
}

extension PcapMirror: EventSource {
    /// POLLOUT on the mirror's descriptor while it has bytes to write.
    public func register(_ fds: inout [pollfd]) {
        if let fd = pendingDescriptor { fds.append(pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)) }
    }
    public func deadline() -> Int64? { drainDeadline }
    public func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        drain(at: now)
        return nil
    }
}
