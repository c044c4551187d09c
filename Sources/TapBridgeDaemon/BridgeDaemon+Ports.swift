import CTapBridge
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// Ports that come and go while the bridge runs. Each port is one entry of the engine's
/// registry (its name, device and configuration) and one of the daemon's `PortDirectory`
/// (what it is, and what is kept while it is away).
extension BridgeDaemon {
    /// The IP MTU a TAP made without `mtu=` gets: what fits the narrowest path of any remote,
    /// tapbridge's or the kernel's (nil without remotes), and why.
    var innerMTU: (mtu: Int, why: String)? {
        [remotes?.innerMTU, kernelRemotes?.innerMTU].compactMap { $0 }.min { $0.mtu < $1.mtu }
    }

    func attachPort(_ spec: PortSpec) throws(StartupError) {
        if spec.stream != nil { return connectStream(spec) }
        settle(try PortFactory.attach(spec, bridge: bridgeName, to: engine, directory: directory, offload: settings.offload, defaultMTU: innerMTU,
                                      decorate: decorate, mirror: mirrorInterface, namespaces: namespaces, seed: seed, logger: logger))
    }

    /// A port joined the engine: its entry says what it is (and keeps, for one that comes back
    /// with its interface or connection, the spec that brings it back); a packet port's TAP
    /// holder is looked for.
    func settle(_ joined: PortFactory.Joined) {
        let name = joined.spec.name
        directory.joined(name, kind: joined.kind, interfaceIndex: joined.interfaceIndex, offloadsOn: joined.offloadsOn, peer: joined.peer, link: joined.link)
        if joined.comesBack { directory.update(name) { $0.returns = joined.spec } }
        if !joined.spec.impairment.isNone { logSeedOnce() }
        if joined.kind == .packet, let port = engine.port(named: name) { findHolder(of: port, name) }
    }

    /// Who holds packet port `name`'s TAP, found on the control plane's worker (it reads every
    /// process's descriptors): said in `show ports` and, for another tapbridge, in the log.
    func findHolder(of port: PortID, _ name: String) {
        let index = directory[name]?.interfaceIndex
        linkControl.perform([.findHolder(name)]) { [self] result in
            guard case .success(let outcomes) = result, let holder = outcomes.first?.holder,
                  engine.port(named: name) == port, directory[name]?.interfaceIndex == index else { return }  // (gone or replaced meanwhile)
            directory.update(name) { $0.heldBy = "\(holder.command), pid \(holder.pid)" }
            if holder.command == "tapbridge" {
                logger.warning("port \(name): the TAP is served by another tapbridge (pid \(holder.pid)); reached here through a packet socket, it links the two bridges' segments, and makes a loop if they are linked another way too")
            }
        }
    }

    /// `port add` of a `netns=` port: its TAP made here at once, placed in its namespace on the
    /// control plane's worker (`ip netns add`, a move, an address: tens of milliseconds, and a
    /// wait for a TAP of that name a killed bridge left), then joined; `done` gets the answer.
    func attachPlaced(_ spec: PortSpec, _ done: @escaping (Result<String, StartupError>) -> Void) {
        var opened: PortFactory.Opened
        do throws(StartupError) {
            opened = try PortFactory.open(spec, bridge: bridgeName, directory: directory, offload: settings.offload, defaultMTU: innerMTU, mirror: mirrorInterface)
        } catch {
            return done(.failure(error))
        }
        namespaces.place(spec) { [self] result in
            switch result {
            case .failure(let error):
                done(.failure(StartupError("port \(spec.name): \(error.message)")))  // (the TAP goes with its descriptor)
            case .success(let note):
                opened.note += note
                settle(PortFactory.join(opened, to: engine, decorate: decorate, seed: seed, logger: logger))
                done(.success("port \(spec.name) added"))
            }
        }
    }

    /// Port `spec` waits, absent: for its interface, or (`stream=`) for a connection, keeping
    /// what it counted (`carried`). The absent-port timer looks twice a second.
    func markAbsent(_ spec: PortSpec, carried: PortCounters? = nil) {
        directory.away(spec.name, spec: spec, carried: carried, kind: spec.stream == nil ? .packet : .stream)
        nextAbsentCheck = EventLoop.now().advanced(by: .milliseconds(500)).nanoseconds
    }

    /// The link emulation's seed, once, when the first port gets an impairment.
    func logSeedOnce() {
        guard !loggedSeed else { return }
        loggedSeed = true
        logger.info("link emulation seed \(seed)\((settings.seed != nil) ? "" : " (--seed \(seed) replays it)")")
    }

    /// Ports whose interface went away (a VM stopped, a veth deleted), kept as `absent`:
    /// attached again when an interface of their name appears. Checked twice a second while
    /// there are any (one if_nametoindex each).
    func checkAbsent(at now: Instant) {
        nextAbsentCheck = now.advanced(by: .milliseconds(500)).nanoseconds
        for name in directory.absentNames {
            guard let away = directory[name]?.absence else { continue }
            if away.spec.stream != nil {
                connector.attempt(away.spec)
                continue
            }
            let index = ctb_if_index(name)
            guard index > 0 else { continue }
            do {
                try attachPort(away.spec)
                logger.notice("port \(name): interface \(name) is back (ifindex \(index)): attached again")
            } catch {
                // said once per appearance of the interface, not twice a second
                if away.failedIndex != index {
                    directory.update(name) { $0.absence?.failedIndex = index }
                    logger.warning("port \(name): interface \(name) is back but cannot be attached: \(error.message); tried again while it exists")
                }
            }
        }
    }

    /// A `stream=` port (at start, `port add`, or after its connection closed): absent until
    /// `StreamConnector` has connected it, tried again twice a second meanwhile, never
    /// waiting in the loop (a TCP peer that drops the handshake costs nothing but the tries).
    func connectStream(_ spec: PortSpec) {
        markAbsent(spec)
        connector.attempt(spec)
    }

    /// The connector's connection for `spec`: the port joins.
    func attachConnected(_ spec: PortSpec, fd: Int32) {
        let endpoint = spec.stream.map { "\($0)" } ?? "?"
        settle(PortFactory.attachStream(StreamDevice(fd: fd, peer: endpoint), spec, how: "stream to \(endpoint), connected", comesBack: true, to: engine,
                                        decorate: decorate, seed: seed, logger: logger))
    }

    /// `port set NAME OPTIONS`: gives port NAME a new emulated link (the link keys given;
    /// those not given are off, `none` clears it) and, with `storm=`, a new storm limit.
    /// Returns the answer's line.
    func setPort(_ name: String, _ text: String) throws(StartupError) -> String {
        guard let port = engine.port(named: name), let device = directory[name]?.link else {
            throw StartupError(engine.port(named: name) == nil ? "no port named '\(name)'" : "port \(name) is a remote: port set changes TAP, packet and stream ports; emulate a link to another host on the TAP at either end")
        }
        let words = text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
        let linkKeys: Set<String> = ["delay", "jitter", "loss", "duplicate", "corrupt", "reorder", "rate"]
        var link: [String] = []
        var storm: String? = nil
        for word in words where word != "none" {
            let key = String(word.prefix { $0 != "=" })
            if key == "storm" { storm = word } else if linkKeys.contains(key) { link.append(word) } else {
                throw StartupError("port set \(name): '\(word)': port set changes delay, jitter, loss, duplicate, corrupt, reorder, rate and storm (none clears the link)")
            }
        }
        let spec: PortSpec
        do {
            spec = try PortSpec(parsing: ([name] + link + (storm.map { [$0] } ?? [])).joined(separator: ","))
        } catch {
            throw StartupError("port set \(name): \(error.reason)")
        }
        var changed: [String] = []
        if !link.isEmpty || words.contains("none") {
            device.reconfigure(spec.impairment)
            directory.linkChanged(device)
            changed.append("link \(spec.impairment)")
            if !spec.impairment.isNone { logSeedOnce() }
        }
        if storm != nil, var configuration = engine.bridge.configuration(of: port) {
            configuration.stormLimit = spec.configuration.stormLimit
            engine.bridge.reconfigure(port, configuration)
            changed.append("storm \(configuration.stormLimit.map { "\($0) frames/s" } ?? "off")")
        }
        guard !changed.isEmpty else { throw StartupError("port set \(name): nothing to set (delay=50ms, loss=1%, rate=10mbit, storm=1000, none, ...)") }
        let line = "port \(name): \(changed.joined(separator: ", "))"
        logger.info("control: \(line)")
        return line
    }

    /// Removes a port (`port del`); a namespace this bridge made for it goes with its last port.
    func removePort(_ port: PortID) {
        let name = engine.name(of: port)
        connector.cancel(name)
        releaseStream(name, nil)
        engine.removePort(port)
        namespaces.release(port: name)
        directory.remove(name)
    }

    /// `remote add SPEC`, parsed with `--remote`'s grammar and errors (a HOST without PORT gets
    /// the bridge's UDP port); a name already taken is refused.
    func parseRemote(_ text: String) throws(StartupError) -> RemoteSpec {
        let spec: RemoteSpec
        do {
            spec = try RemoteSpec(parsing: text, defaultPort: remotes?.device.localAddress.port ?? kernelRemotes?.devices.first?.port, flag: "remote add")
        } catch {
            throw StartupError(error.description)
        }
        try checkFree(spec, text)
        return spec
    }

    private func checkFree(_ spec: RemoteSpec, _ text: String) throws(StartupError) {
        if engine.port(named: spec.name) != nil || kernelRemotes?.has(remoteNamed: spec.name) == true {
            throw StartupError("remote add '\(text)': a \(engine.port(named: spec.name) != nil ? "port" : "remote") named \(spec.name) exists (give name=...)")
        }
    }

    /// Whether a remote's host is looked up for IPv4 only: the UDP socket's family (an IPv4
    /// `--listen`), for the datapath=user remotes.
    func looksUpIPv4Only(_ spec: RemoteSpec) -> Bool {
        guard spec.datapath == .user else { return false }
        if let tunnel { return tunnel.family == AF_INET }
        return settings.listen?.value.host.map { SocketAddress.family(ofNumericHost: $0) == .v4 } ?? false
    }

    /// `remote add SPEC` with its host looked up (at `address`): a remote joins the running
    /// bridge. A bridge without a UDP socket opens one, as `--remote` would have at start
    /// (every address, on the remote's port). `done` gets the answer's line, at once or, for a
    /// `datapath=kernel` remote, when the kernel has made its device or entry.
    func addRemote(_ spec: RemoteSpec, _ text: String, at address: SocketAddress, _ done: @escaping (Result<String, StartupError>) -> Void) {
        do throws(StartupError) {
            try checkFree(spec, text)  // (again: a change before this one may have taken the name)
            if spec.datapath == .kernel { return try addKernelRemote(spec, text, at: address, done) }
            try checkUDPPort(settings.listen?.value.port ?? remotes?.device.localAddress.port ?? spec.port, socketFor: "remote add", in: "remote add '\(text)': ")
            if let remotes {
                try remotes.addAtRunTime(spec, at: address)
            } else {
                let opened = try RemotePeers(settings: settings, remotes: [spec], engine: engine, directory: directory, ports: ports, decorate: decorate, known: [spec.name: address], logger: logger)
                try opened.addConfigured()
                remotes = opened
            }
            let peer = engine.port(named: spec.name).flatMap { tunnel?.peer(of: $0) }
            logger.info("control: remote \(spec.name) added")
            done(.success("remote \(spec.name) added" + (peer.map { " (\($0.address), \($0.encapsulation), path MTU \($0.pathMTU))" } ?? "")))
        } catch {
            done(.failure(error))
        }
    }

    /// tapbridge's own UDP socket and the kernel's vxlan devices cannot share a UDP port.
    /// `socketFor`: what needs the socket; `prefix`: the error's start.
    func checkUDPPort(_ port: UInt16, socketFor who: String, in prefix: String = "") throws(StartupError) {
        guard let kernelRemotes, kernelRemotes.uses(port: port) else { return }
        throw StartupError("\(prefix)UDP port \(port): the kernel's vxlan device of the datapath=kernel remotes listens there, so tapbridge's own socket (\(who)) cannot; give it another with --listen (a restart, at run time)")
    }

    /// `remote add ...,datapath=kernel`: into the vxlan device of its VNI and port, or a new one
    /// (made, then attached as a port: the device is removed again if that fails).
    private func addKernelRemote(_ spec: RemoteSpec, _ text: String, at address: SocketAddress, _ done: @escaping (Result<String, StartupError>) -> Void) throws(StartupError) {
        if let why = spec.datapathProblem(bridgeWide: settings.encapsulation) { throw StartupError("remote add '\(text)': \(why)") }
        if let own = remotes?.device.localAddress.port, own == spec.port {
            throw StartupError("remote add '\(text)': UDP port \(own) is tapbridge's own socket's (the datapath=user remotes): a vxlan device cannot listen there too; give the remote another port")
        }
        if kernelRemotes == nil {
            kernelRemotes = try KernelVXLAN(remotes: [], vni: settings.vni, local: settings.listen?.value.host, bridge: bridgeName, maximumAddresses: settings.bridgeConfiguration.table.maximumEntries,
                                            control: linkControl, logger: logger)
        }
        let kernel = kernelRemotes!
        try kernel.add(spec, at: address) { [self] result in
            guard case .success(let outcome) = result else { return done(result.map(\.line)) }
            var line = outcome.line
            let newPort = outcome.newPort
            if let newPort {
                do throws(StartupError) {
                    try attachPort(newPort)
                } catch {
                    _ = kernel.remove(spec.name, at: nil, removingPort: { _ in }) { _ in done(.failure(error)) }
                    return
                }
                if let port = engine.port(named: newPort.name), let narrow = engine.linkMTU(of: port) {
                    let wider = engine.ports.filter { (engine.linkMTU(of: $0) ?? 0) > narrow }.map { "\(engine.name(of: $0)) \(engine.linkMTU(of: $0)!)" }
                    if !wider.isEmpty {
                        line += "; its MTU \(narrow) is below the MTU of \(wider.joined(separator: ", ")): TCP between them is fitted to \(narrow) (SYNs' MSS clamped, super-frames cut), other frames larger than that are dropped (frame_too_large); mtu=\(narrow) on those ports avoids that"
                    }
                }
            }
            logger.info("control: \(line)")
            done(.success(line))
        }
    }

    /// `remote del NAME|ADDRESS:PORT`: the remote's port goes (its MAC entries with it); the
    /// UDP socket stays for the others, and closes with the last (unless `--accept-peers`
    /// keeps it for strangers): its port is then free for a `datapath=kernel` remote, and
    /// the next `remote add` opens it again. A datapath=kernel remote's FDB
    /// entry goes from its vxlan device, with the MACs it learned behind it, and the device (its
    /// port) with its last remote. `address`: `which` looked up, when it is ADDRESS:PORT.
    /// `done` gets the answer's line: at once, or for a datapath=kernel remote when the kernel
    /// has done it.
    func removeRemote(_ which: String, at address: SocketAddress?, _ done: @escaping (Result<String, StartupError>) -> Void) {
        if let kernelRemotes, kernelRemotes.remove(which, at: address, removingPort: { name in
            if let port = engine.port(named: name) { removePort(port) }
        }, { [logger] result in
            if case .success(let line) = result { logger.info("control: \(line)") }
            done(result)
        }) {
            return
        }
        done(Result { () throws(StartupError) in try removeUserRemote(which, at: address) })
    }

    private func removeUserRemote(_ which: String, at address: SocketAddress?) throws(StartupError) -> String {
        let remotePorts = engine.ports.filter { directory[engine.name(of: $0)]?.kind == .remote }
        var port = engine.port(named: which)
        if let named = port, !remotePorts.contains(named) { throw StartupError("remote del '\(which)': \(which) is not a remote (use port del)") }
        if port == nil, let tunnel, let address {
            port = remotePorts.first { tunnel.peer(of: $0)?.address == address }
        }
        guard let port else {
            let names = remotePorts.map { engine.name(of: $0) } + (kernelRemotes?.remoteNames ?? [])
            throw StartupError("remote del '\(which)': \(names.isEmpty ? "this bridge has no remotes" : "no such remote (remotes: \(names.joined(separator: ", ")))")")
        }
        let name = engine.name(of: port)
        engine.removePort(port)
        directory.remove(name)
        var line = "remote \(name) removed"
        if let remotes, !settings.acceptPeers, engine.ports(of: remotes.handle).isEmpty {
            line += "; it was the last: UDP socket \(remotes.device.localAddress) closed (the next remote add opens it again)"
            closeRemotes()
        }
        logger.info("control: \(line)")
        return line
    }

    /// The datapath=user remotes' socket goes (with its last remote, a failure, or at exit).
    func closeRemotes() {
        guard let remotes else { return }
        remotes.isActive = false
        let names = engine.ports(of: remotes.handle).map { engine.name(of: $0) }
        engine.removeDevice(remotes.handle)
        for name in names { directory.remove(name) }
        self.remotes = nil
        ports.alwaysPolled = nil
    }

    /// A device failed (its interface deleted underneath, an error): its ports go, forwarding
    /// goes on between the others.
    func portFailed(_ device: any PortDevice, _ error: PortError) {
        let gone = engine.ports(of: device)
        let removed = gone.map { engine.name(of: $0) }
        var counts: [String: PortCounters] = [:]
        for port in gone { counts[engine.name(of: port)] = engine.bridge.counters(of: port) }
        engine.removeDevice(device)
        for name in removed {
            namespaces.release(port: name)
            let returns = directory[name]?.returns
            if error.kind == .disconnected {
                if releaseStream(name, error) {
                    directory.remove(name)
                    let line = "port \(name): \(error.operation); port removed"
                    if error.code == EPROTO { logger.warning("\(line)") } else { logger.info("\(line)") }
                } else if let spec = returns {
                    logger.warning("port \(name): \(error.operation); connecting to \(spec.stream.map { "\($0)" } ?? "?") again")
                    markAbsent(spec, carried: counts[name])
                    connector.attempt(spec)
                } else {
                    directory.remove(name)
                }
                continue
            }
            if error.kind == .deviceRemoved, let spec = returns {
                markAbsent(spec, carried: counts[name])
                logger.warning("port \(name): interface is gone (\(error.operation): \(describeErrno(error.code))); kept as absent, attached again when an interface named \(name) appears (a VM started again, a veth made again); forwarding continues between the others")
            } else {
                releaseStream(name, nil)  // an accepted stream port's place goes back to its listener
                directory.remove(name)
                logger.error("port \(name): \(error.kind == .deviceRemoved ? "interface is gone" : "device failed") (\(error.operation): \(describeErrno(error.code))); port removed, forwarding continues between the others")
            }
        }
        if let remotes, device === remotes.handle { closeRemotes() }
    }
}
