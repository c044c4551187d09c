import CTapBridge
import Glibc
import Logging
import TapBridgeCore

/// Opening ports, and the ports that come and go while the bridge runs: remotes accepted
/// after the batch that brought them, idle ones removed, failed devices taken out. Each port
/// is one entry of the engine's registry (`PortRecord`); nothing here keeps a list of its own.
extension BridgeDaemon {
    func attachPort(_ spec: PortSpec) throws(StartupError) {
        // One interface attached twice (by an altname, or by its new name after a rename)
        // would loop every broadcast between its two ports: refuse it.
        let existing = ctb_if_index(spec.name)
        if existing > 0, let other = engine.ports.first(where: { engine.record(of: $0)?.interfaceIndex == existing }) {
            throw StartupError("port \(spec.name): that interface (ifindex \(existing)) is already attached as port \(engine.name(of: other))")
        }
        let offload = spec.offload ?? options.offload
        let (device, kind, note): (any PortDevice, PortRecord.Kind, String)
        do {
            (device, kind, note) = try Self.open(spec, offload: offload)
        } catch {
            throw StartupError("port \(spec.name): \(error.message)")
        }
        // a TAP someone else holds: say who; another tapbridge there joins the two segments
        let holder = kind == .packet ? TapHolder.find(spec.name) : nil
        let index = (device as? PacketSocketDevice)?.interfaceIndex ?? (device as? TapDevice)?.interfaceIndex
        let record = PortRecord(name: spec.name, kind: kind, interfaceIndex: index, offloadsOn: offload, heldBy: holder.map { "\($0.command), pid \($0.pid)" })
        engine.addPort(record, configuration: spec.configuration, on: decorate(device))
        logger.info("port \(spec.name): \(note), \(Self.describe(spec.configuration))")
        if let holder, holder.command == "tapbridge" {
            logger.warning("port \(spec.name): the TAP is served by another tapbridge (pid \(holder.pid)); reached here through a packet socket, it links the two bridges' segments, and makes a loop if they are linked another way too")
        }
    }

    static func describe(_ c: PortConfiguration) -> String {
        "\(c.vlanMode)" + (c.learning ? "" : ", learning off") + (c.flooding ? "" : ", flooding off")
    }

    static func open(_ spec: PortSpec, offload: Bool) throws(StartupError) -> (any PortDevice, PortRecord.Kind, String) {
        func tapNote(_ tap: TapDevice) -> String {
            (tap.existedBefore ? "TAP attached (kept on exit)" : "TAP created (removed on exit)") + ", mtu \(tap.mtu), offloads \(tap.offloadDescription)"
        }
        func packet(_ why: String) throws(StartupError) -> (any PortDevice, PortRecord.Kind, String) {
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

    /// Opens the UDP socket and adds the configured remotes.
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
        tunnelHandle = decorate(device)
        ports.alwaysPolled = tunnelHandle
        for remote in options.remotes {
            let address: SocketAddress
            do {
                address = try SocketAddress.resolve(host: remote.host, port: remote.port, ipv4Only: device.family == AF_INET)
            } catch {
                throw StartupError("remote \(remote.name): \(error.message)")
            }
            let encapsulation = remote.encapsulation ?? options.encapsulation
            let vni = remote.vni ?? options.vni
            var configuration = remote.configuration
            configuration.splitHorizonGroup = options.splitHorizon ? 1 : 0
            do {
                try addRemote(remote.name, at: address, encapsulation: encapsulation, vni: vni, configuration: configuration)
            } catch {
                throw StartupError("remote \(remote.name): \(error.message)")
            }
            let shown = remote.endpoint == "\(address)" ? "" : " (\(address))"
            logger.info("remote \(remote.name)\(shown): \(encapsulation)\(encapsulation == .vxlan ? " VNI \(vni)" : ""), \(Self.describe(configuration))")
        }
        if options.acceptsPeers { device.accept(encapsulation: options.encapsulation, vni: options.vni, limit: options.maximumPeers) }
        logger.info("UDP socket on \(device.localAddress)\(options.acceptsPeers ? ", accepting up to \(options.maximumPeers) unknown peers" : ""), split horizon \(options.splitHorizon ? "on" : "off")")
    }

    /// Adds one remote: a port of the engine and a peer of the UDP socket, in one step.
    func addRemote(_ name: String, at address: SocketAddress, encapsulation: Encapsulation, vni: VNI, configuration: PortConfiguration,
                   isDynamic: Bool = false) throws(StartupError) {
        guard let tunnel, let tunnelHandle else { throw StartupError("no UDP socket") }
        let port = engine.addPort(PortRecord(name: name, kind: .remote), configuration: configuration, on: tunnelHandle)
        do {
            try tunnel.addPeer(address, encapsulation: encapsulation, vni: vni, isDynamic: isDynamic, as: port)
        } catch {
            engine.removePort(port)
            throw error
        }
    }

    /// `--accept-peers`: due at once while senders wait to be admitted, else when the next
    /// dynamic peer would have been silent for `--peer-timeout`.
    func peerDeadline() -> Int64? {
        guard let tunnel else { return nil }
        if tunnel.holdsDatagrams { return 0 }
        return tunnel.nextIdleDeadline(timeout: options.peerTimeout)?.nanoseconds
    }

    /// Admits the senders of the last batch as remotes with the bridge-wide encapsulation (the
    /// socket already checked the limit), then has their held datagrams delivered; removes
    /// dynamic peers silent for `--peer-timeout`.
    func servicePeers(at now: Instant) {
        guard let tunnel else { return }
        let configuration = PortConfiguration(splitHorizonGroup: options.splitHorizon ? 1 : 0)
        for address in tunnel.takeCandidates() {
            let name = "peer-\(address)"
            do {
                try addRemote(name, at: address, encapsulation: options.encapsulation, vni: options.vni, configuration: configuration, isDynamic: true)
                logger.info("remote \(name): accepted (\(options.encapsulation)), \(tunnel.dynamicPeerCount)/\(options.maximumPeers) dynamic peers")
            } catch {
                logger.warning("remote \(name): not accepted: \(error.message)")
            }
        }
        if tunnel.holdsDatagrams { ports.wake() }
        for port in tunnel.idleDynamicPeers(timeout: options.peerTimeout, now: now) {
            let name = engine.name(of: port)
            engine.removePort(port)
            logger.info("remote \(name): silent for \(options.peerTimeout), removed")
        }
    }

    /// A device failed (its interface deleted underneath, an error): its ports go, forwarding
    /// goes on between the others.
    func portFailed(_ device: any PortDevice, _ error: PortError) {
        let names = engine.ports(of: device).map { engine.name(of: $0) }.joined(separator: ", ")
        logger.error("port \(names): \(error.kind == .deviceRemoved ? "interface is gone" : "device failed") (\(error.operation): \(describeErrno(error.code))); port removed, forwarding continues between the others")
        engine.removeDevice(device)
        if device === tunnelHandle {
            tunnel = nil
            tunnelHandle = nil
            ports.alwaysPolled = nil
        }
    }
}
