import CTapBridge
import Glibc
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// Every counter now: the model `show`, the logs and Prometheus render (`Statistics`).
extension BridgeDaemon {
    func portReports() -> [PortReport] {
        present() + directory.absentNames.compactMap { name in
            guard let entry = directory[name], let spec = entry.absence?.spec else { return nil }
            var r = PortReport(name: name, kind: entry.kind.rawValue, interface: nil, state: "absent", offloads: "none",
                               vlans: "\(spec.configuration.vlanMode)", learning: spec.configuration.learning, flooding: spec.configuration.flooding,
                               counters: entry.carried)
            r.peer = spec.stream.map { endpoint in
                if connector.resolving.contains(name), case .tcp(let host, _) = endpoint { return "\(endpoint) (waiting for the name \(host) to resolve)" }
                return "\(endpoint) (connecting\(connector.lastFailure[name].map { "; the last try: \($0)" } ?? ""))"
            }
            return r
        }
    }

    private func present() -> [PortReport] {
        engine.ports.map { port in
            let name = engine.name(of: port), device = engine.device(of: port)!
            let entry = directory[name]
            let config = engine.bridge.configuration(of: port) ?? PortConfiguration()
            let offloads = OffloadCapabilities.describe(device.offloadCapabilities, on: entry?.offloadsOn ?? true)
            let peer = tunnel?.peer(of: port)
            var report = PortReport(name: name, kind: entry?.kind.rawValue ?? "unknown",
                                    interface: entry?.interfaceIndex.flatMap { interfaceName(ofIndex: $0) },
                                    state: Self.remoteState(peer), offloads: offloads, vlans: "\(config.vlanMode)", learning: config.learning,
                                    flooding: config.flooding, counters: countersOf(port, named: name), remote: peer.map {
                                        var r = RemoteReport($0, now: ctb_monotonic_ns())
                                        r.horizon = "\(Horizon(group: config.splitHorizonGroup))"
                                        return r
                                    }, heldBy: entry?.heldBy)
            report.peer = entry?.peer ?? kernelRemotes?.peer(ofPort: name)
            guard let link = entry?.link, !(link.emulator.impairment.isNone && link.emulator.statistics == .init()) else { return report }
            report.link = "\(link.emulator.impairment)"
            report.emulation = link.emulator.statistics
            return report
        }
    }

    /// Port `port`'s counters, with what it counted before it was last absent.
    func countersOf(_ port: PortID, named name: String) -> PortCounters {
        var c = engine.bridge.counters(of: port)
        if let before = directory[name]?.carried { c.add(before) }
        return c
    }

    /// Says how many flooded frames storm control dropped on each port: looked at once a
    /// second, said at once and then at most once per 10 s per port (3.45 million once went
    /// by without a line).
    func logStormDrops(at now: Instant) {
        for port in engine.ports {
            let name = engine.name(of: port)
            let count = countersOf(port, named: name)[.stormControl]
            guard var seen = directory[name]?.storm, count > seen.count, seen.log.admit(at: now) != nil else { continue }
            let limit = engine.bridge.configuration(of: port)?.stormLimit.map { "storm=\($0): at most \($0) flooded frames a second" } ?? "storm="
            logger.warning("port \(name): storm control dropped \(count - seen.count) flooded frames (broadcast, multicast or unknown unicast from it; \(limit)); \(count) in all")
            seen.count = count
            directory.update(name) { $0.storm = seen }
        }
    }

    /// `unreachable` (an ICMP error came for it), `refusing` (its datagrams do not
    /// authenticate), else `up`; every port that is not a remote is `up`.
    static func remoteState(_ peer: RemotePeer?) -> String {
        guard let peer else { return "up" }
        return peer.isUnreachable ? "unreachable" : peer.refusing > 0 ? "refusing" : "up"
    }

    func statsReport(at now: Instant) -> StatsReport {
        let udp = tunnel.map {
            var counters = $0.statistics
            counters.splitHorizon = engine.bridge.horizonWithheld
            return StatsReport.UDP(listen: "\($0.localAddress)", counters: counters)
        }
        return StatsReport(name: bridgeName, version: version, uptimeSeconds: Double(now.nanoseconds - started) / 1e9,
                           ports: engine.ports.count, fdb: engine.bridge.table.statistics, udp: udp, mirror: mirror?.statistics,
                           loops: engine.bridge.loopStatistics, streams: streamStatistics,
                           multicast: engine.bridge.configuration.multicast.isEnabled ? engine.bridge.snooping.statistics : nil,
                           floodBacklog: engine.backlogStatistics)
    }

    /// `show mdb`: the groups with members and the multicast router ports, by port name.
    func mdbReport(at now: Instant) -> MDBReport {
        let listing = engine.bridge.multicastListing(at: now)
        let c = engine.bridge.configuration.multicast
        return MDBReport(snooping: c.isEnabled, querier: c.isQuerier,
                         queriers: engine.bridge.snooping.activeQueriers(now: now).map { .init(vlan: $0.vlan.map { Int($0.rawValue) }, ip: $0.v6 ? "ipv6" : "ipv4") },
                         tableFull: engine.bridge.snooping.isOverflowing,
                         groups: listing.groups.map { .init(vlan: Int($0.key.vlan.rawValue), group: "\($0.key.group)", port: engine.name(of: $0.port), expiresSeconds: $0.seconds) },
                         routers: listing.routers.map { .init(vlan: Int($0.vlan.rawValue), port: engine.name(of: $0.port), expiresSeconds: $0.seconds) })
    }

    /// Every counter now: the model `show stats`, the logs and Prometheus render.
    func statistics(at now: Instant) -> Statistics { Statistics(stats: statsReport(at: now), ports: portReports()) }

    /// The counters in the log (at exit, on SIGUSR1): one line per port, then the MAC table,
    /// the UDP socket and the mirror.
    public func reportCounters() {
        for line in statistics(at: EventLoop.now()).logLines { logger.info("\(line)") }
    }

    /// The `--stats-interval` line.
    func logStats() { logger.info("\(statistics(at: EventLoop.now()).summaryLine)") }
}
