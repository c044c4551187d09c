import TapBridgeOptions

/// Every counter of a running bridge, as one snapshot: the ports (`show ports`) and the
/// bridge-wide figures (`show stats`). The one model the renderers read: the log lines (at
/// exit, on SIGUSR1, every `--stats-interval`), `show stats` as text, and the Prometheus
/// exposition. JSON is the model itself, encoded (`ControlCoding`).
///
/// One format everywhere a counter is printed for people: `name=value`, with the same
/// snake_case names the JSON and the Prometheus metrics use.
public struct Statistics: Sendable {
    public var stats: StatsReport
    public var ports: [PortReport]

    public init(stats: StatsReport, ports: [PortReport]) {
        self.stats = stats
        self.ports = ports
    }

    /// One counter: its snake_case name, value, and what it counts (Prometheus' HELP).
    public struct Field: Sendable {
        public var name: String
        public var value: Double
        public var help: String
        /// A gauge (a level: entries, ports) rather than a counter (only grows).
        public var isGauge = false
    }

    /// The sections of bridge-wide counters, in the order they are printed: `fdb`, then `udp`
    /// and `mirror` when the bridge has them.
    public var sections: [(name: String, fields: [Field])] {
        var out = [("fdb", stats.fdb.fields)]
        if let u = stats.udp { out.append(("udp", u.fields)) }
        if let m = stats.mirror { out.append(("mirror", m.fields)) }
        return out
    }

    /// `name=value name=value ...`
    public static func line(_ fields: [Field]) -> String {
        fields.map { "\($0.name)=\(OptionTable.plain($0.value))" }.joined(separator: " ")
    }


    /// The log lines at exit and on SIGUSR1: one per port, then one per section.
    ///
    ///     counters port tap0: rx_frames=12 rx_bytes=1200 ... drops=0 no_egress_port=0
    ///     counters fdb: entries=3 max_entries=8192 learned=3 ...
    public var logLines: [String] {
        ports.map { "counters port \($0.name): \(Self.line($0.fields))" } + sections.map { "counters \($0.name): \(Self.line($0.fields))" }
    }

    /// The `--stats-interval` line: totals over the ports, and the MAC table.
    ///
    ///     stats: ports=3 rx_frames=1520 tx_frames=3010 drops=2 fdb_entries=3 learned=3 ...
    public var summaryLine: String {
        let f = stats.fdb
        var fields = [
            Field(name: "ports", value: Double(ports.count), help: ""),
            Field(name: "rx_frames", value: Double(ports.reduce(0) { $0 + $1.rxFrames }), help: ""),
            Field(name: "tx_frames", value: Double(ports.reduce(0) { $0 + $1.txFrames }), help: ""),
            Field(name: "drops", value: Double(ports.reduce(0) { $0 + $1.drops.values.reduce(0, +) }), help: ""),
            Field(name: "fdb_entries", value: Double(f.entries), help: ""),
        ]
        fields += f.fields.filter { ["learned", "moved", "expired", "evicted"].contains($0.name) }
        if let m = stats.mirror { fields.append(Field(name: "mirror_dropped", value: Double(m.dropped), help: "")) }
        return "stats: " + Self.line(fields)
    }

    /// `show stats` as text.
    public var text: String {
        let s = stats
        return (["bridge \(s.name) (tapbridge \(s.version)), up \(Int(s.uptimeSeconds)) s, \(s.ports) ports"]
            + sections.map { "\($0.name == "udp" ? "udp \(s.udp!.listen)" : $0.name): \(Self.line($0.fields))" }).joined(separator: "\n")
    }

    /// `show stats --format prometheus`: the text exposition format (version 0.0.4), with the
    /// per-port counters.
    public var prometheus: String {
        var out = ""
        let bridge = "bridge=\"\(Self.escape(stats.name))\""
        func metric(_ name: String, _ help: String, gauge: Bool, _ samples: [(labels: String, value: Double)]) {
            out += "# HELP tapbridge_\(name) \(help)\n# TYPE tapbridge_\(name) \(gauge ? "gauge" : "counter")\n"
            for (labels, value) in samples { out += "tapbridge_\(name){\(bridge)\(labels.isEmpty ? "" : "," + labels)} \(OptionTable.plain(value))\n" }
        }
        metric("uptime_seconds", "Seconds since the bridge started.", gauge: true, [("", stats.uptimeSeconds)])
        metric("ports", "Ports attached.", gauge: true, [("", Double(stats.ports))])
        func label(_ p: PortReport) -> String { "port=\"\(Self.escape(p.name))\",kind=\"\(p.kind)\"" }
        for (k, field) in PortReport.counterFields(of: nil).enumerated() {
            metric("port_\(field.name)_total", field.help, gauge: false, ports.map { (label($0), $0.counterFields[k].value) })
        }
        metric("port_drops_total", "Frames dropped on a port, by reason.", gauge: false,
               ports.flatMap { p in p.drops.sorted { $0.key < $1.key }.map { ("\(label(p)),reason=\"\($0.key)\"", Double($0.value)) } })
        for (section, fields) in sections {
            for f in fields {
                metric("\(section)_\(f.name)\(f.isGauge ? "" : "_total")", f.help, gauge: f.isGauge, [("", f.value)])
            }
        }
        return out
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}

extension PortReport {
    /// The traffic counters, in order (the drops are apart: one per reason).
    static func counterFields(of p: PortReport?) -> [Statistics.Field] {
        [
            .init(name: "rx_frames", value: Double(p?.rxFrames ?? 0), help: "Frames received on a port."),
            .init(name: "rx_bytes", value: Double(p?.rxBytes ?? 0), help: "Bytes received on a port."),
            .init(name: "tx_frames", value: Double(p?.txFrames ?? 0), help: "Frames sent out of a port."),
            .init(name: "tx_bytes", value: Double(p?.txBytes ?? 0), help: "Bytes sent out of a port."),
            .init(name: "checksums_completed", value: Double(p?.checksumsCompleted ?? 0), help: "Partial checksums (offloaded by the sender) completed for a port."),
            .init(name: "frames_segmented", value: Double(p?.framesSegmented ?? 0), help: "Super-frames (GSO) cut into segments for a port."),
            .init(name: "super_frames_passed", value: Double(p?.superFramesPassed ?? 0), help: "Super-frames (GSO) handed whole to a port that takes them."),
        ]
    }

    var counterFields: [Statistics.Field] { Self.counterFields(of: self) }

    /// The traffic counters, then `drops` (their sum) and one field per drop reason.
    public var fields: [Statistics.Field] {
        counterFields + [.init(name: "drops", value: Double(drops.values.reduce(0, +)), help: "")]
            + drops.sorted { $0.key < $1.key }.map { .init(name: $0.key, value: Double($0.value), help: "") }
    }
}

extension StatsReport.FDB {
    public var fields: [Statistics.Field] {
        [
            .init(name: "entries", value: Double(entries), help: "MAC table entries.", isGauge: true),
            .init(name: "max_entries", value: Double(maxEntries), help: "MAC table size limit.", isGauge: true),
            .init(name: "learned", value: Double(learned), help: "MACs learned."),
            .init(name: "refreshed", value: Double(refreshed), help: "MACs seen again on their port."),
            .init(name: "moved", value: Double(moved), help: "MACs that moved to another port."),
            .init(name: "move_damped", value: Double(moveDamped), help: "Moves refused by the hold-down."),
            .init(name: "expired", value: Double(expired), help: "Entries aged out."),
            .init(name: "evicted", value: Double(evicted), help: "Entries evicted to make room."),
            .init(name: "refused", value: Double(refused), help: "MACs not learned: table full of static entries."),
        ]
    }
}

extension StatsReport.UDP {
    public var fields: [Statistics.Field] {
        [
            .init(name: "unknown_sender", value: Double(unknownSender), help: "Datagrams from senders that are not remotes."),
            .init(name: "unreachable", value: Double(unreachable), help: "ICMP unreachable errors on the UDP socket."),
            .init(name: "peers_refused", value: Double(peersRefused), help: "Well-formed frames from unknown senders refused: --max-peers reached."),
            .init(name: "checksums_completed", value: Double(checksumsCompleted), help: "Inner frames from remotes whose partial checksum was completed."),
            .init(name: "trains_sent", value: Double(trainsSent), help: "Trains of datagrams sent with one UDP_SEGMENT message."),
            .init(name: "trains_received", value: Double(trainsReceived), help: "Trains of datagrams received whole (UDP_GRO)."),
            .init(name: "frames_coalesced", value: Double(framesCoalesced), help: "Super-frames built from the TCP segments of received trains."),
            .init(name: "trains_refused", value: Double(trainsRefused), help: "Trains the kernel refused (a remote's path MTU lowered, or UDP GSO turned off)."),
            .init(name: "fragmented", value: Double(fragmented ?? 0), help: "Datagrams larger than their remote's path MTU, fragmented by the kernel."),
            .init(name: "path_mtu_lowered", value: Double(pathMtuLowered ?? 0), help: "Times a remote's path MTU was lowered (ICMP, or a refused train)."),
            .init(name: "split_horizon", value: Double(splitHorizon ?? 0), help: "Frames split horizon kept from a remote of the sender's group (flooded copies and unicast)."),
        ]
    }
}

extension StatsReport.Mirror {
    public var fields: [Statistics.Field] {
        [
            .init(name: "seen", value: Double(seen), help: "Frames offered to the mirror."),
            .init(name: "written", value: Double(written), help: "Frames written to the pcap file."),
            .init(name: "filtered_out", value: Double(filteredOut), help: "Frames the mirror filter did not match."),
            .init(name: "dropped", value: Double(dropped), help: "Mirror copies dropped (slow reader, full disk)."),
            .init(name: "write_errors", value: Double(writeErrors), help: "Write errors on the pcap file."),
            .init(name: "rotations", value: Double(rotations), help: "pcap files started by rotation."),
            .init(name: "injected", value: Double(injected), help: "Frames injected into the mirror interface."),
            .init(name: "inject_dropped", value: Double(injectDropped), help: "Frames the mirror interface refused."),
        ]
    }
}
