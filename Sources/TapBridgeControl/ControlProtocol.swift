public import Foundation
public import TapBridgeCore
public import TapBridgeDevices
public import TapBridgePcap

/// The control protocol: a client connects to the Unix socket, writes one request as a line of
/// JSON, reads one response (JSON, then a newline) and the server closes the connection.
/// Field names are snake_case on the wire; the schema is documented in Docs/Operations.md and
/// only grows (fields are added, never renamed or removed).
public struct ControlRequest: Codable, Sendable, Equatable {
    /// `show-ports`, `show-fdb`, `show-stats`, `show-mdb`, `fdb-add`, `fdb-del`, `fdb-flush`, `port-add`,
    /// `port-del`.
    public var command: String
    public var mac: String?
    public var port: String?
    public var vlan: Int?
    public var spec: String?

    public init(command: String, mac: String? = nil, port: String? = nil, vlan: Int? = nil, spec: String? = nil) {
        self.command = command
        self.mac = mac
        self.port = port
        self.vlan = vlan
        self.spec = spec
    }
}

/// One port in `show ports`.
public struct PortReport: Codable, Sendable, Equatable {
    public var name: String
    /// `tap`, `packet` or `remote`.
    public var kind: String
    /// The interface's current name (it may have been renamed since it was attached as
    /// `name`); absent for remotes.
    public var interface: String?
    /// `up`; for a remote `unreachable` (an ICMP error came for it, and no frame from it
    /// since); `absent` for a port on an interface tapbridge did not make (a packet socket, a
    /// TAP that existed) whose interface is gone: it is attached again when the interface
    /// comes back. A TAP tapbridge made whose interface vanished is removed.
    public var state: String
    /// What the port takes as it is: `csum tso uso` (partial checksums, TCP and UDP
    /// super-frames), `none`, or `off` (`--offload off`); remotes: `none`.
    public var offloads: String
    /// e.g. `access VLAN 1`, `trunk VLANs 10,20 (native 1 untagged)`.
    public var vlans: String
    public var learning: Bool
    public var flooding: Bool
    /// The port's counters (`PortCounters.counters`: `rx_frames`, `rx_bytes`, ...), in the
    /// JSON beside the fields above, and `drops`: by reason (snake_case names, see
    /// Docs/Operations.md), only reasons with a count.
    public var counters: PortCounters
    /// For a remote: where it is and how frames travel to it; absent for other ports.
    public var remote: RemoteReport? = nil
    /// A TAP reached through a packet socket because another program holds it: which one,
    /// `qemu-system-x86, pid 812`; absent otherwise.
    public var heldBy: String? = nil
    /// The port's emulated link (`delay=50ms loss=1%`) and what it did; absent without one.
    public var link: String? = nil
    public var emulation: LinkEmulator.Statistics? = nil
    /// A stream port's peer: `unix:/run/lab/vm.sock, pid 812, uid 1000`, `127.0.0.1:40188`;
    /// for one that connects out, where to; for the vxlan device of `datapath=kernel` remotes,
    /// its VNI, port and remotes.
    public var peer: String? = nil

    public init(name: String, kind: String, interface: String?, state: String, offloads: String, vlans: String, learning: Bool, flooding: Bool,
                counters: PortCounters, remote: RemoteReport? = nil, heldBy: String? = nil) {
        self.name = name
        self.kind = kind
        self.interface = interface
        self.state = state
        self.offloads = offloads
        self.vlans = vlans
        self.learning = learning
        self.flooding = flooding
        self.counters = counters
        self.remote = remote
        self.heldBy = heldBy
    }

    /// Drops by reason name.
    public var drops: [String: UInt64] { counters.dropsByName }

    enum CodingKeys: String, CodingKey { case name, kind, interface, state, offloads, vlans, learning, flooding, remote, heldBy, link, emulation, peer }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name), kind: try c.decode(String.self, forKey: .kind),
                  interface: try c.decodeIfPresent(String.self, forKey: .interface), state: try c.decode(String.self, forKey: .state),
                  offloads: try c.decode(String.self, forKey: .offloads), vlans: try c.decode(String.self, forKey: .vlans),
                  learning: try c.decode(Bool.self, forKey: .learning), flooding: try c.decode(Bool.self, forKey: .flooding),
                  counters: try PortCounters(from: decoder), remote: try c.decodeIfPresent(RemoteReport.self, forKey: .remote),
                  heldBy: try c.decodeIfPresent(String.self, forKey: .heldBy))
        link = try c.decodeIfPresent(String.self, forKey: .link)
        emulation = try c.decodeIfPresent(LinkEmulator.Statistics.self, forKey: .emulation)
        peer = try c.decodeIfPresent(String.self, forKey: .peer)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(kind, forKey: .kind)
        try c.encodeIfPresent(interface, forKey: .interface)
        try c.encode(state, forKey: .state)
        try c.encode(offloads, forKey: .offloads)
        try c.encode(vlans, forKey: .vlans)
        try c.encode(learning, forKey: .learning)
        try c.encode(flooding, forKey: .flooding)
        try c.encodeIfPresent(remote, forKey: .remote)
        try c.encodeIfPresent(heldBy, forKey: .heldBy)
        try c.encodeIfPresent(link, forKey: .link)
        try c.encodeIfPresent(emulation, forKey: .emulation)
        try c.encodeIfPresent(peer, forKey: .peer)
        try counters.encode(to: encoder)
    }
}

/// A remote's peer in `show ports`.
public struct RemoteReport: Codable, Sendable, Equatable {
    /// `ADDRESS:PORT` datagrams go to.
    public var endpoint: String
    /// `vxlan` or `raw`.
    public var encapsulation: String
    /// The VXLAN network identifier; absent for raw.
    public var vni: UInt32?
    /// Added by `--accept-peers` (removed when silent), rather than configured.
    public var dynamic: Bool
    /// ICMP errors (port or host unreachable, no route) for datagrams sent to it.
    public var unreachable: UInt64
    /// The IP MTU of the path towards it (absent from bridges before it was known).
    public var pathMtu: Int? = nil
    /// Datagrams sent to it larger than its path, fragmented by the kernel.
    public var fragmented: UInt64? = nil
    /// Its split horizon: `mesh`, `off` or `group N` (see `--remote`'s `horizon=`).
    public var horizon: String? = nil
    /// While it is unreachable: why (the last ICMP error that came for it).
    public var why: String? = nil
    /// A sealed remote's public key (its first 8 base64 characters).
    public var peerKey: String? = nil
    /// Seconds since its last handshake completed (sealed; absent before the first).
    public var lastHandshakeSeconds: Double? = nil
    /// Messages of its encapsulation's own (sealed: handshakes and keepalives), by name.
    public var messages: [String: UInt64]? = nil

    public init(_ peer: RemotePeer, now: Int64) {
        self.init(endpoint: "\(peer.address)", encapsulation: "\(peer.encapsulation)", vni: peer.encapsulation.kind.carriesVNI ? peer.vni.rawValue : nil,
                  dynamic: peer.isDynamic, unreachable: peer.unreachable)
        pathMtu = peer.pathMTU
        fragmented = peer.fragmented
        why = peer.unreachableReason
        if let session = peer.session {
            peerKey = session.peer
            lastHandshakeSeconds = session.lastHandshake.map { Double(now &- $0) / 1e9 }
            messages = session.messages
        }
    }

    public init(endpoint: String, encapsulation: String, vni: UInt32?, dynamic: Bool, unreachable: UInt64 = 0) {
        self.endpoint = endpoint
        self.encapsulation = encapsulation
        self.vni = vni
        self.dynamic = dynamic
        self.unreachable = unreachable
    }
}

extension RemoteReport {
    /// Its numbers, declared once for the exposition formats (Prometheus names each
    /// `tapbridge_remote_NAME`, labelled with the remote's port, endpoint and encapsulation);
    /// nil where a bridge does not know it yet.
    public static let numbers: [(name: String, help: String, isGauge: Bool, value: @Sendable (RemoteReport) -> Double?)] = [
        ("unreachable_total", "ICMP errors (port or host unreachable, no route) for datagrams sent to the remote.", false, { Double($0.unreachable) }),
        ("fragmented_total", "Datagrams sent to the remote larger than its path, fragmented by the kernel.", false, { $0.fragmented.map { Double($0) } }),
        ("path_mtu_bytes", "The IP MTU of the path towards the remote.", true, { $0.pathMtu.map { Double($0) } }),
        ("last_handshake_seconds", "Seconds since the remote's last handshake completed (sealed remotes).", true, { $0.lastHandshakeSeconds }),
        ("up", "1 while the remote is up; 0 while it is unreachable (an ICMP error came for it) or refusing (its datagrams do not authenticate): show ports says why.", true, { $0.why == nil ? 1 : 0 }),
    ]
}

/// One MAC table entry in `show fdb`.
public struct FDBReport: Codable, Sendable, Equatable {
    public var mac: String
    public var vlan: Int
    public var port: String
    /// Seconds since the MAC was last seen (0 for static entries).
    public var ageSeconds: Double
    public var `static`: Bool

    public init(mac: String, vlan: Int, port: String, ageSeconds: Double, static isStatic: Bool) {
        self.mac = mac
        self.vlan = vlan
        self.port = port
        self.ageSeconds = ageSeconds
        self.static = isStatic
    }
}

/// Bridge-wide counters in `show stats`: each section is its owner's counters, as declared
/// there (`ForwardingTable.Statistics`, `UDPTunnelDevice.Statistics`, `PcapMirror.Statistics`).
public struct StatsReport: Codable, Sendable, Equatable {
    /// The UDP socket: where it listens, and its counters beside that in the JSON.
    public struct UDP: Codable, Sendable, Equatable {
        public var listen: String
        public var counters: UDPTunnelDevice.Statistics

        public init(listen: String, counters: UDPTunnelDevice.Statistics) {
            self.listen = listen
            self.counters = counters
        }

        enum CodingKeys: String, CodingKey { case listen }

        public init(from decoder: any Decoder) throws {
            self.init(listen: try decoder.container(keyedBy: CodingKeys.self).decode(String.self, forKey: .listen),
                      counters: try UDPTunnelDevice.Statistics(from: decoder))
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(listen, forKey: .listen)
            try counters.encode(to: encoder)
        }
    }
    public var name: String
    public var version: String
    public var uptimeSeconds: Double
    public var ports: Int
    public var fdb: ForwardingTable.Statistics
    public var udp: UDP?
    public var mirror: PcapMirror.Statistics?
    /// Loops found and ports blocked for them (absent from bridges before loop protection).
    public var loops: LoopStatistics? = nil
    /// The stream listeners' connections (absent without --stream-listen).
    public var streams: StreamStatistics? = nil
    /// IGMP/MLD snooping (absent with --no-multicast-snooping).
    public var multicast: MulticastSnooping.Statistics? = nil
    /// Floods that waited to go out a share at a time (absent from bridges before it).
    public var floodBacklog: FloodBacklogStatistics? = nil
    /// The control socket the answer came through: set by `tapbridge list` (the bridge does
    /// not send it).
    public var control: String? = nil

    public init(name: String, version: String, uptimeSeconds: Double, ports: Int, fdb: ForwardingTable.Statistics, udp: UDP?,
                mirror: PcapMirror.Statistics?, loops: LoopStatistics? = nil, streams: StreamStatistics? = nil,
                multicast: MulticastSnooping.Statistics? = nil, floodBacklog: FloodBacklogStatistics? = nil) {
        self.multicast = multicast
        self.floodBacklog = floodBacklog
        self.name = name
        self.version = version
        self.uptimeSeconds = uptimeSeconds
        self.ports = ports
        self.fdb = fdb
        self.udp = udp
        self.mirror = mirror
        self.loops = loops
        self.streams = streams
    }
}

/// The answer to one request.
public struct ControlResponse: Codable, Sendable, Equatable {
    public var ok: Bool
    public var error: String?
    public var message: String?
    public var ports: [PortReport]?
    public var fdb: [FDBReport]?
    public var stats: StatsReport?
    public var flushed: Int?
    public var mdb: MDBReport?

    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, error: error) }
    public static func success(_ message: String? = nil) -> ControlResponse { ControlResponse(ok: true, message: message) }

    public init(ok: Bool, error: String? = nil, message: String? = nil) {
        self.ok = ok
        self.error = error
        self.message = message
    }
}

/// `show mdb`: IGMP/MLD snooping's groups, multicast router ports and the queriers that count
/// (`bridge mdb show`).
public struct MDBReport: Codable, Sendable, Equatable {
    public struct Member: Codable, Sendable, Equatable {
        public var vlan: Int
        public var group: String
        public var port: String
        /// Seconds until the membership ends without another report.
        public var expiresSeconds: Double

        public init(vlan: Int, group: String, port: String, expiresSeconds: Double) {
            self.vlan = vlan
            self.group = group
            self.port = port
            self.expiresSeconds = expiresSeconds
        }
    }

    public struct Router: Codable, Sendable, Equatable {
        public var vlan: Int
        public var port: String
        public var expiresSeconds: Double

        public init(vlan: Int, port: String, expiresSeconds: Double) {
            self.vlan = vlan
            self.port = port
            self.expiresSeconds = expiresSeconds
        }
    }

    /// A querier that counts now: snooping narrows in its VLAN (nil: every VLAN, the bridge's
    /// own) for its IP version (`ipv4`, `ipv6`).
    public struct Querier: Codable, Sendable, Equatable {
        public var vlan: Int?
        public var ip: String

        public init(vlan: Int?, ip: String) {
            self.vlan = vlan
            self.ip = ip
        }
    }

    /// Whether snooping is on (`--no-multicast-snooping`: off, nothing below).
    public var snooping: Bool
    /// Whether this bridge is the querier (`--multicast-querier`).
    public var querier: Bool
    /// The queriers that count now: without one for a VLAN and IP version, its multicast is
    /// flooded.
    public var queriers: [Querier]
    /// The table is full (a report for one more group came): nothing is narrowed until
    /// groups age out.
    public var tableFull: Bool = false
    public var groups: [Member]
    public var routers: [Router]

    public init(snooping: Bool, querier: Bool, queriers: [Querier], tableFull: Bool = false, groups: [Member], routers: [Router]) {
        self.tableFull = tableFull
        self.snooping = snooping
        self.querier = querier
        self.queriers = queriers
        self.groups = groups
        self.routers = routers
    }
}

/// JSON coding shared by server and client: snake_case keys, sorted, so output is stable.
public enum ControlCoding {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    /// Appends one `show fdb` entry as JSON, exactly as `encoder()` writes it (sorted
    /// snake_case keys), without a JSONEncoder per entry: streamed answers write a million.
    public static func appendJSON(_ e: FDBReport, to out: inout [UInt8]) {
        out += Array(#"{"age_seconds":"#.utf8)
        out += Array((e.ageSeconds == e.ageSeconds.rounded() ? String(Int64(e.ageSeconds)) : String(e.ageSeconds)).utf8)
        out += Array(#","mac":"#.utf8)
        appendString(e.mac, to: &out)
        out += Array(#","port":"#.utf8)
        appendString(e.port, to: &out)
        out += Array(#","static":"#.utf8)
        out += Array((e.static ? "true" : "false").utf8)
        out += Array(#","vlan":"#.utf8)
        out += Array(String(e.vlan).utf8)
        out.append(UInt8(ascii: "}"))
    }

    /// Appends `s` as a JSON string (quoted, with `"`, `\` and control characters escaped).
    static func appendString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                out += [UInt8(ascii: "\\"), b]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += Array(#"\u00"#.utf8) + [hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            default:
                out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The default control socket of the bridge called `name`.
    public static func defaultPath(name: String) -> String { "/run/tapbridge/\(name).sock" }
}
