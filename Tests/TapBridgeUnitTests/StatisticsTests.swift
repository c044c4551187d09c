@testable import TapBridgeDaemon
import Testing

/// One statistics model, four renderers that agree on names and values.
@Suite("Statistics renderers")
struct StatisticsTests {
    static let model: Statistics = {
        let port = PortReport(name: "tap\"0", kind: "tap", interface: "tap\"0", state: "up", offloads: "csum tso", vlans: "access VLAN 1", learning: true, flooding: true,
                              rxFrames: 12, rxBytes: 1200, txFrames: 7, txBytes: 700, checksumsCompleted: 1, framesSegmented: 2,
                              superFramesPassed: 3, drops: ["no_egress_port": 3, "runt": 1])
        let stats = StatsReport(name: "lab", version: "0.1.0", uptimeSeconds: 5.5, ports: 1,
                                fdb: .init(entries: 3, maxEntries: 8192, learned: 4, refreshed: 9, moved: 1, moveDamped: 0, expired: 1, evicted: 0, refused: 0),
                                udp: .init(listen: "[::]:4789", unknownSender: 2, unreachable: 0, peersRefused: 0, checksumsCompleted: 0,
                                           trainsSent: 6, trainsReceived: 5, framesCoalesced: 4, trainsRefused: 0),
                                mirror: nil)
        return Statistics(stats: stats, ports: [port])
    }()

    @Test func logLinesAreNameEqualsValue() {
        let lines = Self.model.logLines
        #expect(lines.first == "counters port tap\"0: rx_frames=12 rx_bytes=1200 tx_frames=7 tx_bytes=700 checksums_completed=1 frames_segmented=2 super_frames_passed=3 drops=4 no_egress_port=3 runt=1")
        #expect(lines.contains("counters fdb: entries=3 max_entries=8192 learned=4 refreshed=9 moved=1 move_damped=0 expired=1 evicted=0 refused=0"))
        #expect(lines.contains { $0.hasPrefix("counters udp: unknown_sender=2 ") && $0.contains(" trains_sent=6 ") })
        #expect(!lines.contains { $0.hasPrefix("counters mirror") }, "no mirror, no line")
        #expect(Self.model.summaryLine == "stats: ports=1 rx_frames=12 tx_frames=7 drops=4 fdb_entries=3 learned=4 moved=1 expired=1 evicted=0")
    }

    @Test func prometheusHasHelpTypeAndEscapedLabels() {
        let text = Self.model.prometheus
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.contains("# TYPE tapbridge_fdb_entries gauge") && lines.contains("tapbridge_fdb_entries{bridge=\"lab\"} 3"))
        #expect(lines.contains("# TYPE tapbridge_fdb_learned_total counter") && lines.contains("tapbridge_fdb_learned_total{bridge=\"lab\"} 4"))
        #expect(lines.contains("tapbridge_port_rx_frames_total{bridge=\"lab\",port=\"tap\\\"0\",kind=\"tap\"} 12"))
        #expect(lines.contains("tapbridge_port_drops_total{bridge=\"lab\",port=\"tap\\\"0\",kind=\"tap\",reason=\"no_egress_port\"} 3"))
        #expect(lines.contains("tapbridge_udp_trains_sent_total{bridge=\"lab\"} 6") && lines.contains("tapbridge_uptime_seconds{bridge=\"lab\"} 5.5"))
        // every sample's metric has its HELP and TYPE, once
        let samples = Set(lines.filter { !$0.hasPrefix("#") }.map { String($0.prefix { $0 != "{" }) })
        for metric in samples {
            #expect(lines.filter { $0 == "# TYPE \(metric) counter" || $0 == "# TYPE \(metric) gauge" }.count == 1, "\(metric)")
            #expect(lines.contains { $0.hasPrefix("# HELP \(metric) ") }, "\(metric)")
        }
    }

    @Test func textAndLogAgreeOnEveryField() {
        let text = Self.model.text
        for (name, fields) in Self.model.sections {
            for f in fields { #expect(text.contains("\(f.name)=\(Int(f.value))"), "\(name).\(f.name) missing from show stats") }
        }
    }
}
