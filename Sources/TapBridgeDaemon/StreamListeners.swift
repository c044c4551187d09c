import CTapBridge
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions


/// The `--stream-listen` sockets: each accepted connection becomes a stream port, with the
/// listener's port options, named after its peer (`stream-PID` for a Unix peer, its address
/// for TCP). At most `max=` connections per listener; more are closed at once, counted.
final class StreamListener: EventSource {
    let spec: StreamListenSpec
    let fd: Int32
    /// Adds the port of an accepted connection (the daemon).
    let accept: (StreamDevice, StreamListener) -> Void
    /// The ports this listener's connections hold now.
    var live: Set<String> = []
    var statistics = StreamStatistics()
    let logger: Logger
    var refusalLog = LogThrottle()

    init(_ spec: StreamListenSpec, group: String?, logger: Logger, accept: @escaping (StreamDevice, StreamListener) -> Void) throws(StartupError) {
        var gid: UInt32? = nil
        if let group {
            guard let g = getgrnam(group) else { throw StartupError("--stream-group '\(group)': no such group") }
            gid = g.pointee.gr_gid
        }
        self.spec = spec
        self.logger = logger
        self.accept = accept
        fd = try spec.endpoint.listen(mode: gid == nil ? 0o600 : 0o660, group: gid)
    }

    deinit {
        close(fd)
        if case .unix(let path) = spec.endpoint { unlink(path) }
    }

    var steadyDescriptors: [Int32] { [fd] }
    func register(_ fds: inout [pollfd]) {}
    func deadline() -> Int64? { nil }

    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        // (a bounded number per round: a flood of connections cannot hold the loop)
        for _ in 0..<64 {
            let c = ctb_accept(fd)
            if c < 0 {
                if -c != EAGAIN && -c != EINTR && -c != ECONNABORTED { logger.warning("--stream-listen \(spec.endpoint): accept: \(describeErrno(-c))") }
                return nil
            }
            guard live.count < spec.maximumConnections else {
                close(c)
                statistics.refused += 1
                if refusalLog.admit(at: now) != nil {
                    logger.warning("--stream-listen \(spec.endpoint): refused a connection: \(spec.maximumConnections) served already (max=); \(statistics.refused) refused so far")
                }
                continue
            }
            statistics.accepted += 1
            if case .tcp = spec.endpoint { StreamEndpoint.sendAtOnce(c) }
            accept(StreamDevice(fd: c, peer: StreamDevice.describePeer(c, listening: spec.endpoint)), self)
        }
        return nil
    }

    /// A name for the port of a connection from `device`, free among `taken`.
    func portName(for device: StreamDevice, taken: (String) -> Bool) -> String {
        let base: String
        switch spec.endpoint {
        case .unix: base = "stream-\(StreamDevice.peerProcess(device.fd))"
        case .tcp: base = device.peer
        }
        var name = base
        var k = 2
        while taken(name) {
            name = "\(base)-\(k)"
            k += 1
        }
        return name
    }
}

extension BridgeDaemon {
    /// Opens the `--stream-listen` sockets.
    func openStreamListeners() throws(StartupError) {
        for spec in settings.streamListen.map(\.value) {
            let listener = try StreamListener(spec, group: settings.streamGroup, logger: logger) { [unowned self] device, listener in
                addAcceptedStream(device, from: listener)
            }
            streamListeners.append(listener)
            let who = if case .unix = spec.endpoint { settings.streamGroup.map { "its owner and group \($0)" } ?? "its owner" } else { "any local program" }
            logger.info("stream ports: listening on \(spec.endpoint) (\(who) may connect; at most \(spec.maximumConnections); each port \(PortFactory.describe(spec.port.configuration))\(spec.port.impairment.isNone ? "" : ", link \(spec.port.impairment)"))")
        }
    }

    /// A connection accepted by `listener` joins as a port.
    func addAcceptedStream(_ device: StreamDevice, from listener: StreamListener) {
        let name = listener.portName(for: device) { [engine, directory] in engine.port(named: $0) != nil || directory[$0] != nil }
        var spec = listener.spec.port
        spec.name = name
        listener.live.insert(name)
        settle(PortFactory.attachStream(device, spec, how: "stream from \(device.peer)", comesBack: false, to: engine, decorate: decorate, seed: seed, logger: logger))
        directory.update(name) { $0.origin = listener }
    }

    /// A stream port went (its peer closed, broke the framing, or port del): its listener may
    /// take another connection. Returns whether it was an accepted one.
    @discardableResult
    func releaseStream(_ name: String, _ error: PortError?) -> Bool {
        guard let listener = directory[name]?.origin else { return false }
        directory.update(name) { $0.origin = nil }
        listener.live.remove(name)
        if let error {
            if error.code == EPROTO { listener.statistics.malformed += 1 } else { listener.statistics.closedByPeer += 1 }
        }
        return true
    }

    /// Every listener's counters, added.
    var streamStatistics: StreamStatistics? {
        guard !streamListeners.isEmpty else { return nil }
        var total = StreamStatistics()
        for l in streamListeners {
            for c in StreamStatistics.counters { total[keyPath: c.field] += l.statistics[keyPath: c.field] }
        }
        return total
    }
}

/// Connects `stream=` ports without ever waiting in the loop: a connect that does not finish at
/// once (a TCP handshake) is polled for writability and its outcome read then. A port joins
/// once connected; a failure is logged once per distinct reason (not twice a second) and the
/// daemon's absent-port timer tries again.
final class StreamConnector: EventSource {
    struct InFlight {
        var spec: PortSpec
        var fd: Int32
    }
    var inFlight: [InFlight] = []
    /// The last failure logged per port, so a peer that stays away is said once.
    var lastFailure: [String: String] = [:]
    let logger: Logger
    let connected: (PortSpec, Int32) -> Void
    /// Host names are looked up off the loop; an address found is used for a minute.
    let resolver: LinkControl
    var resolved: [String: (address: SocketAddress, at: Instant)] = [:]
    /// Ports waiting for their host's lookup.
    var resolving: Set<String> = []
    static let addressLifetime = Duration.seconds(60)

    init(resolver: LinkControl, logger: Logger, connected: @escaping (PortSpec, Int32) -> Void) {
        self.logger = logger
        self.connected = connected
        self.resolver = resolver
    }

    deinit { cancelAll() }

    /// Starts connecting `spec`'s endpoint, unless a connect (or its host's lookup) for it is
    /// under way. A host name is looked up first, off the loop.
    func attempt(_ spec: PortSpec) {
        guard let endpoint = spec.stream, !inFlight.contains(where: { $0.spec.name == spec.name }), !resolving.contains(spec.name) else { return }
        guard case .tcp(let host, let port) = endpoint, SocketAddress.family(ofNumericHost: host) == nil else { return connect(spec, endpoint, to: nil) }
        let key = "\(endpoint)", now = EventLoop.now()
        if let known = resolved[key], now < known.at.advanced(by: Self.addressLifetime) { return connect(spec, endpoint, to: known.address) }
        resolving.insert(spec.name)
        resolver.lookup(host: host, port: port) { [weak self] result in
            guard let self, resolving.remove(spec.name) != nil else { return }  // cancelled meanwhile
            switch result {
            case .success(let address):
                resolved[key] = (address, EventLoop.now())
                connect(spec, endpoint, to: address)
            case .failure(let error): failed(spec, error.message)
            }
        }
    }

    func connect(_ spec: PortSpec, _ endpoint: StreamEndpoint, to address: SocketAddress?) {
        do {
            let (fd, done) = try endpoint.connect(resolved: address)
            if done { succeeded(spec, fd) } else { inFlight.append(InFlight(spec: spec, fd: fd)) }
        } catch {
            failed(spec, error.message)
        }
    }

    func succeeded(_ spec: PortSpec, _ fd: Int32) {
        lastFailure[spec.name] = nil
        connected(spec, fd)
    }

    func failed(_ spec: PortSpec, _ message: String) {
        guard lastFailure[spec.name] != message else { return }
        lastFailure[spec.name] = message
        logger.warning("port \(spec.name): \(message); trying again twice a second")
    }

    /// Forgets port `name` (port del): a connect under way is closed.
    func cancel(_ name: String) {
        for f in inFlight where f.spec.name == name { close(f.fd) }
        inFlight.removeAll { $0.spec.name == name }
        lastFailure[name] = nil
        resolving.remove(name)
    }

    func cancelAll() {
        for f in inFlight { close(f.fd) }
        inFlight.removeAll()
        resolving.removeAll()
    }

    /// Each connect under way (lookups come back through the daemon's `LinkControl`).
    func register(_ fds: inout [pollfd]) {
        for f in inFlight { fds.append(pollfd(fd: f.fd, events: Int16(POLLOUT), revents: 0)) }
    }

    func deadline() -> Int64? { nil }

    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        let done = zip(inFlight, ready).filter { $0.1.revents != 0 }.map(\.0)
        inFlight.removeAll { f in done.contains { $0.fd == f.fd } }
        for f in done {
            if let error = f.spec.stream?.outcome(of: f.fd) {
                close(f.fd)
                failed(f.spec, error.message)
            } else {
                succeeded(f.spec, f.fd)
            }
        }
        return nil
    }
}
