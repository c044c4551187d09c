import CTapBridge
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// The remotes: the UDP socket serving them, each remote a port of the engine, and a source of
/// the event loop that admits new senders (`--accept-peers`) after the batch that brought them
/// and removes those silent for `--peer-timeout`.
final class RemotePeers: EventSource {
    let device: UDPTunnelDevice
    /// The device as the engine knows it (the socket, or its mirror decorator).
    let handle: any PortDevice
    let engine: ForwardingEngine
    let settings: Settings
    /// The daemon's ports: each remote is an entry.
    let directory: PortDirectory
    let logger: Logger
    /// Told to serve the socket again when admitted senders' datagrams wait.
    let ports: PortsSource
    /// False once the socket failed and its ports were removed.
    var isActive = true

    /// Opens the socket (`--listen`, or every address on the first remote's port) and adds the
    /// configured remotes (`remotes`: the datapath=user ones).
    /// `known`: remotes' addresses looked up already (`remote add`), by name.
    init(settings: Settings, remotes: [RemoteSpec], engine: ForwardingEngine, directory: PortDirectory, ports: PortsSource, decorate: (any PortDevice) -> any PortDevice,
         known: [String: SocketAddress] = [:], logger: Logger) throws(StartupError) {
        guard let listenPort = settings.listen?.value.port ?? remotes.first?.port else {
            throw StartupError("--accept-peers needs --listen [ADDR:]PORT")
        }
        if let host = settings.listen?.value.host {
            let address = try SocketAddress.resolve(host: host, port: listenPort, ipv4Only: false)
            device = try UDPTunnelDevice(listen: address, ipv4Only: address.isIPv4, offload: settings.offload, logger: logger)
        } else {
            let any6 = try SocketAddress.resolve(host: "::", port: listenPort, ipv4Only: false)
            do {
                device = try UDPTunnelDevice(listen: any6, ipv4Only: false, offload: settings.offload, logger: logger)
            } catch {
                // no IPv6 here: all IPv4 addresses
                let any4 = try SocketAddress.resolve(host: "0.0.0.0", port: listenPort, ipv4Only: true)
                device = try UDPTunnelDevice(listen: any4, ipv4Only: true, offload: settings.offload, logger: logger)
            }
        }
        handle = decorate(device)
        self.engine = engine
        self.settings = settings
        self.directory = directory
        self.logger = logger
        self.ports = ports
        ports.alwaysPolled = handle
        for remote in remotes {
            let address: SocketAddress
            if let given = known[remote.name] { address = given } else { address = try resolve(remote) }
            planned.append((remote, address))
            // the path is measured once here, not at each port's attach
            let format = try wireFormat(of: remote)
            let (inner, path) = device.innerMTU(towards: address, format: format)
            if inner < plannedInnerMTU?.mtu ?? .max { plannedInnerMTU = (inner, "fits the \(path)-byte path to remote \(remote.name) over \(format.encapsulation)") }
        }
        if settings.acceptPeers {
            device.accept(format: try acceptedFormat, limit: settings.maxPeers)
            logger.warning("--accept-peers: anyone who can send to UDP port \(device.localAddress.port) joins the segment (name each peer instead: --remote HOST:PORT,encap=sealed,peer=PUBKEY admits that key's holder only)")
        }
        logger.info("UDP socket on \(device.localAddress)\(settings.acceptPeers ? ", accepting up to \(settings.maxPeers) unknown peers (horizon \(Horizon.standard(for: settings.encapsulation, splitHorizon: !settings.noSplitHorizon)))" : "")\(!settings.noSplitHorizon ? "" : ", split horizon off (--no-split-horizon)")")
    }

    /// How `remote`'s datagrams are made: its encapsulation and VNI, or the bridge's, and for
    /// sealed its keys (this host's, `key=` or `--key-file`; the peer's, `peer=`; `psk=`), read
    /// when the remote is added.
    func wireFormat(of remote: RemoteSpec) throws(StartupError) -> WireFormat {
        let encapsulation = remote.encapsulation ?? settings.encapsulation
        if let why = remote.encapsulationProblem(encapsulation) { throw StartupError(why) }
        guard encapsulation.kind.needsKey, let keyFile = remote.keyFile ?? settings.keyFile else {
            return try WireFormat(encapsulation, vni: remote.vni ?? settings.vni)  // (throws if it needs a key)
        }
        let key = try encapsulation.kind.key(file: keyFile, options: remote.encapsulationOptions)
        return try WireFormat(encapsulation, vni: remote.vni ?? settings.vni, keyring: key)
    }

    /// The format `--accept-peers` admits new senders in (one that needs no key: validated).
    var acceptedFormat: WireFormat {
        get throws(StartupError) { try WireFormat(settings.encapsulation, vni: settings.vni) }
    }

    /// The configured remotes, resolved, until `addConfigured` makes them ports.
    var planned: [(spec: RemoteSpec, address: SocketAddress)] = []
    /// What fits the narrowest path among them, measured once (see `innerMTU`).
    var plannedInnerMTU: (mtu: Int, why: String)? = nil

    /// The IP MTU a TAP created without `mtu=` gets: what fits the narrowest path among the
    /// remotes (configured ones included before they are added), at most 1500; and why, for the
    /// port's start line. Nil without remotes (only `--accept-peers`: no path is known yet).
    var innerMTU: (mtu: Int, why: String)? {
        guard let narrowest = device.narrowestPath, narrowest.innerMTU < plannedInnerMTU?.mtu ?? .max else { return plannedInnerMTU }
        return (narrowest.innerMTU, "fits the \(narrowest.mtu)-byte path to remote \(narrowest.address)")
    }

    /// Makes the configured remotes ports (after the other ports, so that they are listed last).
    func addConfigured() throws(StartupError) {
        for (remote, address) in planned { try addConfigured(remote, at: address) }
        planned.removeAll()
        plannedInnerMTU = nil
    }

    /// `remote add`: adds one remote, its host looked up (at `address`), to the running bridge.
    func addAtRunTime(_ remote: RemoteSpec, at address: SocketAddress) throws(StartupError) {
        guard isActive else { throw StartupError("the UDP socket failed earlier; restart the bridge to use remotes") }
        try addConfigured(remote, at: address)
    }

    /// The address of `remote`, for this socket's family; the error names the remote.
    func resolve(_ remote: RemoteSpec) throws(StartupError) -> SocketAddress {
        do {
            return try SocketAddress.resolve(host: remote.host, port: remote.port, ipv4Only: device.family == AF_INET)
        } catch {
            throw StartupError("remote \(remote.name): \(error.message)")
        }
    }

    func addConfigured(_ remote: RemoteSpec, at address: SocketAddress) throws(StartupError) {
        do {
            let format = try wireFormat(of: remote)
            var configuration = remote.configuration
            let horizon = remote.horizon ?? Horizon.standard(for: format.encapsulation, splitHorizon: !settings.noSplitHorizon)
            configuration.splitHorizonGroup = horizon.group
            let port = try add(remote.name, at: address, format: format, configuration: configuration)
            let shown = remote.endpoint == "\(address)" ? "" : " (\(address))"
            let path = device.peer(of: port)?.pathMTU ?? 0
            logger.info("remote \(remote.name)\(shown): \(format.encapsulation)\(format.encapsulation.kind.carriesVNI ? " VNI \(format.vni)" : ""), path MTU \(path), horizon \(horizon), \(PortFactory.describe(configuration))")
        } catch {
            throw StartupError("remote \(remote.name): \(error.message)")
        }
    }

    /// Adds one remote: a port of the engine and a peer of the socket, in one step.
    @discardableResult
    func add(_ name: String, at address: SocketAddress, format: WireFormat, configuration: PortConfiguration,
             isDynamic: Bool = false) throws(StartupError) -> PortID {
        let port = engine.addPort(named: name, configuration: configuration, on: handle)
        do {
            try device.addPeer(address, format: format, isDynamic: isDynamic, as: port)
        } catch {
            engine.removePort(port)
            throw error
        }
        directory.joined(name, kind: .remote)
        return port
    }

    // MARK: EventSource (with --accept-peers)

    func register(_ fds: inout [pollfd]) {}

    /// Due at once while senders wait to be admitted, else when the next dynamic peer would
    /// have been silent for `--peer-timeout`.
    func deadline() -> Int64? {
        guard isActive, settings.acceptPeers else { return nil }
        if device.awaitsAdmission { return 0 }
        return device.nextIdleDeadline(timeout: Duration.seconds(settings.peerTimeout))?.nanoseconds
    }

    /// Admits the senders of the last batch as remotes with the bridge-wide encapsulation (the
    /// socket already checked the limit), then has their held datagrams delivered; removes
    /// dynamic peers silent for `--peer-timeout`.
    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        guard isActive else { return nil }
        let configuration = PortConfiguration(splitHorizonGroup: Horizon.standard(for: settings.encapsulation, splitHorizon: !settings.noSplitHorizon).group)
        let candidates = device.takeCandidates()
        for address in candidates {
            let name = "peer-\(address)"
            do {
                try add(name, at: address, format: try acceptedFormat, configuration: configuration, isDynamic: true)
                logger.info("remote \(name): accepted (\(settings.encapsulation)), \(device.dynamicPeerCount)/\(settings.maxPeers) dynamic peers")
            } catch {
                logger.warning("remote \(name): not accepted: \(error.message)")
            }
        }
        // what the candidates sent waits in the device, already read: serve it now
        if !candidates.isEmpty { ports.wake() }
        for port in device.idleDynamicPeers(timeout: Duration.seconds(settings.peerTimeout), now: now) {
            let name = engine.name(of: port)
            engine.removePort(port)
            directory.remove(name)
            logger.info("remote \(name): silent for \(Duration.seconds(settings.peerTimeout)), removed")
        }
        return nil
    }
}
