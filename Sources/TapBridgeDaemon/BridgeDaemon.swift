import CTapBridge
public import Glibc
public import Logging
public import TapBridgeCore
public import TapBridgeControl
public import TapBridgeDevices
public import TapBridgeOptions
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
    /// What the command line and the config file say: every default is written there.
    let settings: Settings
    /// The bridge's name as chosen at start (`--name`, or the next free one).
    let bridgeName: String
    /// The version `show stats` reports.
    let version: String
    /// The link emulation's seed: `--seed`, or one drawn at start (logged, to be replayed).
    let seed: UInt64
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
    public var controlPath: String? { Self.controlPath(settings, name: bridgeName) }

    static func controlPath(_ settings: Settings, name: String) -> String? {
        settings.control == "none" ? nil : (settings.control ?? ControlCoding.defaultPath(name: name))
    }

    /// `--mirror-iface`, which no port may be (nor its veth peer).
    var mirrorInterface: MirrorInterface? = nil
    /// The claim on the control socket's path (nil with `--control none`).
    let claim: ControlClaim?
    /// The namespaces of `netns=` ports: those this bridge made go with their last port.
    let namespaces: Namespaces
    /// What each port is beyond what the engine forwards with (its kind, interface, holder,
    /// peer, emulated link, origin), and the ports away, waiting for their interface or their
    /// connection: one entry per name.
    let directory = PortDirectory()
    var nextAbsentCheck: Int64? = nil
    /// rtnetlink link events: packet ports whose interface is deleted, absent ones that return.
    var linkMonitor: LinkMonitor? = nil
    var loggedSeed = false
    /// `--stream-listen` sockets.
    var streamListeners: [StreamListener] = []
    /// `stream=` ports being connected.
    var connector: StreamConnector! = nil
    /// The control plane's worker: name lookups, vxlan devices and their FDBs, off the loop.
    let linkControl: LinkControl

    /// When the next delayed frame of any port is due (asked at every wake-up: no allocation,
    /// and only the links that have something to do, not every port's).
    var nextDeparture: Int64? {
        var next: Int64? = nil
        for device in directory.busyLinks.values {
            if let due = device.nextDeparture?.nanoseconds { next = min(next ?? due, due) }
        }
        return next
    }

    /// Opens every port; throws (after closing what it opened) if any cannot be opened.
    /// `claim`: the control path's claim if the caller took it already (choosing a free name);
    /// otherwise it is taken here, first, and a bridge holding it refuses this one.
    /// `name`: the bridge's name as chosen at start; `version`: what `show stats` reports.
    public convenience init(settings: Settings, name: String, version: String, logger: Logger, claim: ControlClaim? = nil) throws(StartupError) {
        try self.init(settings: settings, name: name, version: version, logger: logger, claim: claim, kernel: SystemLinkKernel())
    }

    /// `kernel`: what performs the control plane's link operations (a test's fake).
    init(settings: Settings, name: String, version: String, logger: Logger, claim: ControlClaim? = nil, kernel: any LinkKernel) throws(StartupError) {
        self.settings = settings
        bridgeName = name
        self.version = version
        seed = settings.seed ?? UInt64.random(in: 0...UInt64.max)
        self.logger = logger
        linkControl = try LinkControl(kernel: kernel)
        namespaces = Namespaces(control: linkControl, logger: logger)
        try settings.user?.value.check(settings.ports.map(\.value))
        var names: Set<String> = []
        for name in settings.ports.map(\.value.name) + settings.remotes.map(\.value.name) where !names.insert(name).inserted {
            throw StartupError("port \(name): given twice")
        }
        let engine = ForwardingEngine(bridge: Bridge(configuration: settings.bridgeConfiguration))
        self.engine = engine
        loop = EventLoop(logger: logger)
        loop.busyPoll = settings.busyPoll.nanoseconds
        if !settings.noIOURing, let why = TapWriter.start() {
            logger.notice("TAP writes: one write(2) per frame (\(why))")
        }
        var failed: (any PortDevice, PortError) -> Void = { _, _ in }
        ports = try PortsSource(engine: engine) { failed($0, $1) }
        // the name is claimed before anything is opened: of two bridges started at once with
        // one name, one runs and the other is refused at once
        if let path = Self.controlPath(settings, name: name) {
            var taken = claim?.path == path ? claim : nil
            if taken == nil { taken = try ControlClaim.take(path) }
            guard let taken else {
                throw StartupError("--control '\(path)': another tapbridge named '\(bridgeName)' is running (give this one a different --name or --control)")
            }
            self.claim = taken
        } else {
            self.claim = nil
        }
        failed = { [unowned self] device, error in portFailed(device, error) }
        connector = StreamConnector(resolver: linkControl, logger: logger) { [unowned self] spec, fd in attachConnected(spec, fd: fd) }
        signals = try SignalSource(logger: logger, stop: { [unowned self] in stop() }, dump: { [unowned self] in reportCounters() })
        do throws(StartupError) {
            for name in settings.mirrorOptions?.ports ?? [] where !names.contains(name) {
                throw StartupError("--mirror-port '\(name)': no such port (ports: \(names.sorted().joined(separator: ", ")))")
            }
            if let interface = settings.mirrorOptions?.interface, settings.ports.map(\.value).contains(where: { $0.name == interface }) {
                // (a TAP this bridge creates does not exist yet: pcap would only say "No such device")
                throw StartupError("--mirror-iface '\(interface)': it is also a --port: mirrored frames injected into it would come back in on that port and loop forever; mirror to an interface no port uses (a dummy, or a veth whose peer is not a port)")
            }
            if let m = settings.mirrorOptions { mirror = try PcapMirror(m, logger: logger) }
            mirrorInterface = settings.mirrorOptions?.interface.map(MirrorInterface.init(name:))
            // the remotes' devices, socket and paths first (a TAP created here gets the MTU
            // that fits them), their ports after the others
            let kernelSpecs = settings.remotes.map(\.value).filter { $0.datapath == .kernel }
            let userRemotes = settings.remotes.map(\.value).filter { $0.datapath == .user }
            if !kernelSpecs.isEmpty {
                kernelRemotes = try KernelVXLAN(remotes: kernelSpecs, vni: settings.vni, local: settings.listen?.value.host, bridge: bridgeName, maximumAddresses: settings.bridgeConfiguration.table.maximumEntries,
                                                control: linkControl, logger: logger)
            }
            if !userRemotes.isEmpty || settings.acceptPeers {
                if let port = settings.listen?.value.port ?? userRemotes.first?.port {
                    try checkUDPPort(port, socketFor: "the datapath=user remotes\(settings.acceptPeers ? ", --accept-peers" : "")")
                }
                remotes = try RemotePeers(settings: settings, remotes: userRemotes, engine: engine, directory: directory, ports: ports, decorate: decorate, logger: logger)
            }
            for spec in settings.ports.map(\.value) { try attachPort(spec) }
            for spec in kernelRemotes?.ports ?? [] { try attachPort(spec) }
            try openStreamListeners()
            try remotes?.addConfigured()
            openLinkMonitor()
            if let path = controlPath {
                let responder = ControlResponder(daemon: self)
                control = try ControlServer(path: path, readers: settings.controlGroup, admins: settings.controlAdminGroup, userMayChange: settings.user?.value == nil) { responder.reply(to: $0) }
            }
            // the last step of start-up: everything is open
            if let user = settings.user?.value {
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
        engine.bridge.loopHandler = { [unowned engine, logger, settings] report in
            switch report {
            case .loop(let a, let b, let moves, let blocked):
                logger.warning("probable loop between ports \(engine.name(of: a)) and \(engine.name(of: b)): MACs moved between them \(moves) times within a second (both ends of one link bridged? two bridges linked twice?); \(blocked.map { "port \(engine.name(of: $0)) blocked for \(settings.bridgeConfiguration.loopBlockTime), then tried again (--loop-protect)" } ?? "not blocked (--loop-protect off)")")
            case .echo(let port, let repeats, let blocked):
                logger.warning("probable loop through port \(engine.name(of: port)): the same frame came in on it \(repeats) times within \(EchoWatch.windowDescription), flooded each time, with no MAC moving (both ends of one link bridged? a port that reflects what it is sent?); \(blocked.map { "port \(engine.name(of: $0)) blocked for \(settings.bridgeConfiguration.loopBlockTime), then tried again (--loop-protect)" } ?? "not blocked (--loop-protect off)")")
            case .unblocked(let port):
                logger.notice("port \(engine.name(of: port)): unblocked after a loop; it is blocked again if the loop is still there")
            }
        }
        assembleLoop()
        if logger.logLevel <= .debug { SwitchEventLog(engine: engine, logger: logger) }
        if let m = settings.mirrorOptions {
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
        if let remotes, settings.acceptPeers { loop.add(remotes) }
        for listener in streamListeners { loop.add(listener) }
        loop.add(connector)
        loop.add(linkControl)
        if let linkMonitor { loop.add(linkMonitor) }
        loop.add(TimerSource(due: { [unowned self] in engine.nextDeadline?.nanoseconds }, action: { [unowned self] in engine.expire(at: $0) }))
        loop.add(TimerSource(due: { [unowned self] in directory.absent.isEmpty ? nil : nextAbsentCheck }, action: { [unowned self] in checkAbsent(at: $0) }))
        loop.add(TimerSource(due: { [unowned self] in nextDeparture },
                             action: { [unowned self] now in
                                 for device in directory.busyLinks.values { device.releaseDue(at: now) }
                                 directory.settleLinks()
                             }))
        loop.add(TimerSource(due: { [unowned self] in tunnel?.nextPathRecheck(expiry: Duration.seconds(settings.pathMTUExpiry)) },
                             action: { [unowned self] now in tunnel?.recheckPaths(at: now.nanoseconds, expiry: Duration.seconds(settings.pathMTUExpiry)) }))
        loop.add(TimerSource(due: { [unowned self] in tunnel?.nextFormatTimer }, action: { [unowned self] now in tunnel?.runFormatTimers(at: now.nanoseconds) }))
        var nextStormLook = EventLoop.now().advanced(by: .seconds(1)).nanoseconds
        loop.add(TimerSource(due: { nextStormLook }, action: { [unowned self] now in
            logStormDrops(at: now)
            nextStormLook = now.advanced(by: .seconds(1)).nanoseconds
        }))
        if settings.multicastQuerier, settings.noMulticastSnooping {
            logger.warning("--multicast-querier does nothing with --no-multicast-snooping: no query is sent (as the kernel bridge's querier, which needs snooping on)")
        } else if settings.multicastQuerier {
            addQuerier()
        }
        if let interval = settings.statsInterval.map(Duration.seconds) {
            var next = EventLoop.now().advanced(by: interval).nanoseconds
            loop.add(TimerSource(due: { next }, action: { [unowned self] now in
                logStats()
                next = now.advanced(by: interval).nanoseconds
            }))
        }
        if let control { loop.add(control) }
        if let mirror { loop.add(mirror) }
    }

    /// `--multicast-querier`: IGMP and MLD general queries in every VLAN a port carries, at
    /// start, again a quarter interval later (RFC 3376's startup queries), then every 125 s.
    func addQuerier() {
        let mac = PortFactory.stableMAC(bridge: bridgeName, port: "querier")
        let queries = [MulticastQuerier.igmpQuery(from: mac), MulticastQuerier.mldQuery(from: mac)]
        var next = EventLoop.now().nanoseconds, sent = 0
        loop.add(TimerSource(due: { next }, action: { [unowned self] now in
            for vlan in engine.vlansInUse { for q in queries { engine.originate(q, vlan: vlan) } }
            if sent == 0 { engine.bridge.startQuerying(at: now) }  // (it narrows once hosts had time to answer)
            sent += 1
            next = now.advanced(by: sent == 1 ? MulticastQuerier.interval / 4 : MulticastQuerier.interval).nanoseconds
        }))
        logger.info("multicast querier: IGMPv3 and MLDv2 general queries every \(MulticastQuerier.interval) from \(mac) (snooping takes effect without a multicast router)")
    }

    /// The device as the engine sees it: wrapped in the mirror decorator when mirroring.
    func decorate(_ device: any PortDevice) -> any PortDevice {
        guard let mirror, let m = settings.mirrorOptions else { return device }
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
        if count < 2 && !settings.acceptPeers && control == nil && streamListeners.isEmpty { logger.warning("only \(count) port(s): nothing to forward between") }
        if let path = controlPath { logger.info("control socket \(path) (tapbridge show ports \(settings.control == nil ? "--name \(bridgeName)" : "--control \(path)"))") }
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
        directory.removeAll()
        connector.cancelAll()
        closeRemotes()
        control = nil
        mirror?.close(waitMilliseconds: 1000)
    }
}

extension ControlServer: EventSource {
    public var steadyDescriptors: [Int32] { [listener] }
    public func register(_ fds: inout [pollfd]) { appendClientEntries(to: &fds) }
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
