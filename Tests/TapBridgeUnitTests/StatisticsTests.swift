import Foundation
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import TapBridgeDevices
import TapBridgePcap
import Testing

/// One statistics model, four renderers that agree on names and values.
@Suite("Statistics renderers")
struct StatisticsTests {
    static let model: Statistics = {
        var counters = PortCounters()
        (counters.receivedFrames, counters.receivedBytes, counters.transmittedFrames, counters.transmittedBytes) = (12, 1200, 7, 700)
        (counters.checksumsCompleted, counters.framesSegmented, counters.superFramesPassed) = (1, 2, 3)
        counters.drops[DropReason.noEgressPort.rawValue] = 3
        counters.drops[DropReason.runt.rawValue] = 1
        let port = PortReport(name: "tap\"0", kind: "tap", interface: "tap\"0", state: "up", offloads: "csum tso", vlans: "access VLAN 1", learning: true, flooding: true,
                              counters: counters)
        var fdb = ForwardingTable.Statistics()
        (fdb.entries, fdb.maximumEntries, fdb.learned, fdb.refreshed, fdb.moved, fdb.expired) = (3, 8192, 4, 9, 1, 1)
        var udp = UDPTunnelDevice.Statistics()
        (udp.unknownSender, udp.trainsSent, udp.trainsReceived, udp.framesCoalesced) = (2, 6, 5, 4)
        let stats = StatsReport(name: "lab", version: "0.1.0", uptimeSeconds: 5.5, ports: 1, fdb: fdb,
                                udp: .init(listen: "[::]:4789", counters: udp), mirror: nil)
        return Statistics(stats: stats, ports: [port])
    }()

    @Test func logLinesAreNameEqualsValue() {
        let lines = Self.model.logLines
        #expect(lines.first == "counters port tap\"0: rx_frames=12 rx_bytes=1200 tx_frames=7 tx_bytes=700 checksums_completed=1 frames_segmented=2 super_frames_passed=3 mss_clamped=0 drops=4 no_egress_port=3 runt=1")
        #expect(lines.contains("counters fdb: entries=3 max_entries=8192 learned=4 refreshed=9 moved=1 move_damped=0 expired=1 evicted=0 refused=0"))
        #expect(lines.contains { $0.hasPrefix("counters udp: unknown_sender=2 ") && $0.contains(" trains_sent=6 ") })
        #expect(!lines.contains { $0.hasPrefix("counters mirror") }, "no mirror, no line")
        #expect(Self.model.summaryLine == "stats: ports=1 rx_frames=12 tx_frames=7 drops=4 fdb_entries=3 learned=4 moved=1 expired=1 evicted=0")
    }

    /// Every remote's own numbers and every emulated link's counters reach Prometheus, labelled
    /// (they were in `show ports` only).
    @Test func prometheusHasEachRemotesNumbersAndEachLinksCounters() {
        var remote = RemoteReport(endpoint: "192.0.2.5:4789", encapsulation: "vxlan", vni: 42, dynamic: false, unreachable: 3)
        (remote.pathMtu, remote.fragmented, remote.why) = (1400, 7, "ICMP port unreachable")
        var up = RemoteReport(endpoint: "127.0.0.1:5556", encapsulation: "raw", vni: nil, dynamic: false)
        up.pathMtu = 65_536
        var a = PortReport(name: "far", kind: "remote", interface: "", state: "unreachable", offloads: "", vlans: "access VLAN 1", learning: true, flooding: true, counters: PortCounters())
        a.remote = remote
        var b = PortReport(name: "vm1", kind: "remote", interface: "", state: "up", offloads: "", vlans: "access VLAN 1", learning: true, flooding: true, counters: PortCounters())
        b.remote = up
        var emulation = LinkEmulator.Statistics()
        emulation.lost = 9
        b.emulation = emulation
        let lines = Statistics(stats: Self.model.stats, ports: [a, b]).prometheus.split(separator: "\n").map(String.init)
        let far = "bridge=\"lab\",port=\"far\",kind=\"remote\",endpoint=\"192.0.2.5:4789\",encap=\"vxlan\""
        let vm = "bridge=\"lab\",port=\"vm1\",kind=\"remote\",endpoint=\"127.0.0.1:5556\",encap=\"raw\""
        for want in ["# TYPE tapbridge_remote_unreachable_total counter", "tapbridge_remote_unreachable_total{\(far)} 3", "tapbridge_remote_unreachable_total{\(vm)} 0",
                     "tapbridge_remote_fragmented_total{\(far)} 7", "# TYPE tapbridge_remote_path_mtu_bytes gauge", "tapbridge_remote_path_mtu_bytes{\(far)} 1400",
                     "tapbridge_remote_path_mtu_bytes{\(vm)} 65536", "tapbridge_remote_up{\(far)} 0", "tapbridge_remote_up{\(vm)} 1",
                     "tapbridge_port_link_lost_total{bridge=\"lab\",port=\"vm1\",kind=\"remote\"} 9"] {
            #expect(lines.contains(want), "missing: \(want)")
        }
        #expect(!lines.contains { $0.hasPrefix("tapbridge_remote_fragmented_total{\(vm)}") }, "a number not known is left out")
        #expect(!lines.contains { $0.contains("port_link_") && $0.contains("port=\"far\"") }, "a port without an emulated link has no link counters")
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

    /// The JSON the control protocol carries: every declared counter under its name, flat
    /// beside the report's other fields, as bridges before the declarations wrote it; read
    /// back whole.
    @Test func theWireKeepsItsNamesAndReadsBackWhole() throws {
        let response = { var r = ControlResponse.success(); r.ports = Self.model.ports; r.stats = Self.model.stats; return r }()
        let json = try ControlCoding.encoder().encode(response)
        let object = try #require(JSONSerialization.jsonObject(with: json) as? [String: Any])
        let port = try #require((object["ports"] as? [[String: Any]])?.first)
        #expect(port["rx_frames"] as? Int == 12 && port["super_frames_passed"] as? Int == 3 && port["name"] as? String == "tap\"0")
        #expect(port["drops"] as? [String: Int] == ["no_egress_port": 3, "runt": 1])
        let stats = try #require(object["stats"] as? [String: Any])
        #expect((stats["fdb"] as? [String: Any])?["max_entries"] as? Int == 8192)
        let udp = try #require(stats["udp"] as? [String: Any])
        #expect(udp["listen"] as? String == "[::]:4789" && udp["trains_sent"] as? Int == 6 && udp["path_mtu_lowered"] as? Int == 0)
        for counter in UDPTunnelDevice.Statistics.counters { #expect(udp[counter.name] != nil, "udp.\(counter.name) missing from the JSON") }
        let back = try ControlCoding.decoder().decode(ControlResponse.self, from: json)
        #expect(back.ports == Self.model.ports && back.stats == Self.model.stats)
    }

    /// An older bridge's answer (without the counters added since) reads as zero for those.
    @Test func anOlderBridgesAnswerReadsWithZeroForWhatItLacks() throws {
        let old = #"{"listen":"0.0.0.0:4789","unknown_sender":5,"unreachable":0,"peers_refused":0,"checksums_completed":0,"trains_sent":1,"trains_received":0,"frames_coalesced":0,"trains_refused":0}"#
        let udp = try ControlCoding.decoder().decode(StatsReport.UDP.self, from: Data(old.utf8))
        #expect(udp.listen == "0.0.0.0:4789" && udp.counters.unknownSender == 5 && udp.counters.trainsSent == 1 && udp.counters.fragmented == 0)
    }

    /// Names are snake_case and unique per owner, and each has its help.
    @Test func everyDeclarationIsNamedOnceWithHelp() {
        func check<Owner: CounterOwner>(_: Owner.Type) {
            let names = Owner.counters.map(\.name)
            #expect(Set(names).count == names.count, "\(Owner.self): a name declared twice")
            for c in Owner.counters {
                #expect(c.name.allSatisfy { $0.isLowercase || $0 == "_" } && !c.help.isEmpty, "\(Owner.self).\(c.name)")
            }
        }
        check(PortCounters.self)
        check(ForwardingTable.Statistics.self)
        check(UDPTunnelDevice.Statistics.self)
        check(PcapMirror.Statistics.self)
    }
}
