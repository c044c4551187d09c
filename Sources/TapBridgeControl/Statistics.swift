public import TapBridgeCore
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

    /// An owner's counters as fields, in its declaration order.
    public static func fields<Owner: CounterOwner>(_ owner: Owner) -> [Field] {
        owner.values.map { Field(name: $0.counter.name, value: Double($0.value), help: $0.counter.help, isGauge: $0.counter.isGauge) }
    }

    /// The sections of bridge-wide counters, in the order they are printed: `fdb`, then `udp`
    /// and `mirror` when the bridge has them.
    public var sections: [(name: String, fields: [Field])] {
        var out = [("fdb", Self.fields(stats.fdb))]
        if let u = stats.udp { out.append(("udp", Self.fields(u.counters))) }
        if let m = stats.mirror { out.append(("mirror", Self.fields(m))) }
        if let l = stats.loops { out.append(("loops", Self.fields(l))) }
        if let s = stats.streams { out.append(("streams", Self.fields(s))) }
        if let m = stats.multicast { out.append(("multicast", Self.fields(m))) }
        if let b = stats.floodBacklog { out.append(("flood_backlog", Self.fields(b))) }
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
            Field(name: "rx_frames", value: Double(ports.reduce(0) { $0 + $1.counters.receivedFrames }), help: ""),
            Field(name: "tx_frames", value: Double(ports.reduce(0) { $0 + $1.counters.transmittedFrames }), help: ""),
            Field(name: "drops", value: Double(ports.reduce(0) { $0 + $1.counters.totalDrops }), help: ""),
            Field(name: "fdb_entries", value: Double(f.entries), help: ""),
        ]
        fields += Self.fields(f).filter { ["learned", "moved", "expired", "evicted"].contains($0.name) }
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
        for counter in PortCounters.counters {
            metric("port_\(counter.name)\(counter.isGauge ? "" : "_total")", counter.help, gauge: counter.isGauge, ports.map { (label($0), Double($0.counters[keyPath: counter.field])) })
        }
        metric("port_drops_total", "Frames dropped on a port, by reason.", gauge: false,
               ports.flatMap { p in p.drops.sorted { $0.key < $1.key }.map { ("\(label(p)),reason=\"\($0.key)\"", Double($0.value)) } })
        // each remote's own numbers, labelled with its endpoint and encapsulation, and each
        // emulated link's
        let remotes = ports.compactMap { p in p.remote.map { (port: p, remote: $0) } }
        for number in RemoteReport.numbers {
            let samples = remotes.compactMap { p, r in
                number.value(r).map { ("\(label(p)),endpoint=\"\(Self.escape(r.endpoint))\",encap=\"\(Self.escape(r.encapsulation))\"", $0) }
            }
            if !samples.isEmpty { metric("remote_\(number.name)", number.help, gauge: number.isGauge, samples) }
        }
        for counter in LinkEmulator.Statistics.counters {
            let samples = ports.compactMap { p in p.emulation.map { (label(p), Double($0[keyPath: counter.field])) } }
            if !samples.isEmpty { metric("port_link_\(counter.name)_total", counter.help, gauge: false, samples) }
        }
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
    /// The port's counters, then `drops` (their sum) and one field per drop reason.
    public var fields: [Statistics.Field] {
        Statistics.fields(counters) + [.init(name: "drops", value: Double(counters.totalDrops), help: "")]
            + drops.sorted { $0.key < $1.key }.map { .init(name: $0.key, value: Double($0.value), help: "") }
    }
}

/// What the stream listeners did, bridge-wide (`show stats`, section `streams`).
public struct StreamStatistics: CounterOwner {
    public var accepted: UInt64 = 0
    public var refused: UInt64 = 0
    public var closedByPeer: UInt64 = 0
    public var malformed: UInt64 = 0

    public init() {}

    public static let counters: [Counter<Self>] = [
        Counter("accepted", \.accepted, "Stream connections accepted (each became a port)"),
        Counter("refused", \.refused, "Stream connections refused: a listener already served its max= connections"),
        Counter("closed_by_peer", \.closedByPeer, "Stream ports whose peer closed the connection (a VM stopped, a client went away)"),
        Counter("malformed", \.malformed, "Stream connections closed for a frame length of 0 or above 69632 (the framing was lost)"),
    ]
}
