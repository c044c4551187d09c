import CTapBridge
import Glibc
import TapBridgeCore
import TapBridgeDevices
import TapBridgeOptions

/// Every counter now: the model `show`, the logs and Prometheus render (`Statistics`).
extension BridgeDaemon {
    func portReports() -> [PortReport] {
        engine.ports.map { port in
            let a = engine.record(of: port)!, device = engine.device(of: port)!
            let c = engine.bridge.counters(of: port)
            let config = engine.bridge.configuration(of: port) ?? PortConfiguration()
            var drops: [String: UInt64] = [:]
            for reason in DropReason.allCases where c[reason] > 0 { drops["\(reason)"] = c[reason] }
            let offloads = OffloadCapabilities.describe(device.offloadCapabilities, on: a.kind == .remote || a.offloadsOn)
            return PortReport(name: a.name, kind: a.kind.rawValue, interface: a.interfaceIndex.flatMap { interfaceName(ofIndex: $0) },
                              state: tunnel?.peer(of: port)?.isUnreachable == true ? "unreachable" : "up", offloads: offloads, vlans: "\(config.vlanMode)", learning: config.learning,
                              flooding: config.flooding, rxFrames: c.receivedFrames, rxBytes: c.receivedBytes,
                              txFrames: c.transmittedFrames, txBytes: c.transmittedBytes, checksumsCompleted: c.checksumsCompleted,
                              framesSegmented: c.framesSegmented, superFramesPassed: c.superFramesPassed, drops: drops, remote: a.kind == .remote ? tunnel?.peer(of: port).map {
                                var r = RemoteReport($0)
                                r.horizon = "\(Horizon(group: config.splitHorizonGroup))"
                                return r
                              } : nil, heldBy: a.heldBy)
        }
    }

    func statsReport(at now: Instant) -> StatsReport {
        let t = engine.bridge.table
        let f = t.statistics
        let fdb = StatsReport.FDB(entries: t.count, maxEntries: t.configuration.maximumEntries, learned: f.learned, refreshed: f.refreshed,
                                  moved: f.moved, moveDamped: f.moveDamped, expired: f.expired, evicted: f.evicted, refused: f.refused)
        let udp = tunnel.map { StatsReport.UDP(listen: "\($0.localAddress)", unknownSender: $0.statistics.unknownSender, unreachable: $0.statistics.unreachable, peersRefused: $0.statistics.peersRefused,
                                                checksumsCompleted: $0.statistics.checksumsCompleted, trainsSent: $0.statistics.trainsSent,
                                                trainsReceived: $0.statistics.trainsReceived, framesCoalesced: $0.statistics.framesCoalesced,
                                                trainsRefused: $0.statistics.trainsRefused, fragmented: $0.statistics.fragmented,
                                                pathMtuLowered: $0.statistics.pathMTULowered, splitHorizon: engine.bridge.horizonWithheld) }
        let mirror = self.mirror.map {
            let m = $0.statistics
            return StatsReport.Mirror(seen: m.seen, written: m.written, filteredOut: m.filtered, dropped: m.dropped, writeErrors: m.writeErrors,
                                      rotations: m.rotations, injected: m.injected, injectDropped: m.injectDropped)
        }
        return StatsReport(name: options.name, version: options.version, uptimeSeconds: Double(now.nanoseconds - started) / 1e9,
                           ports: engine.ports.count, fdb: fdb, udp: udp, mirror: mirror)
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
