public import Foundation
public import TapBridgeDevices

/// The control protocol: a client connects to the Unix socket, writes one request as a line of
/// JSON, reads one response (JSON, then a newline) and the server closes the connection.
/// Field names are snake_case on the wire; the schema is documented in Docs/Operations.md and
/// only grows (fields are added, never renamed or removed).
public struct ControlRequest: Codable, Sendable, Equatable {
    /// `show-ports`, `show-fdb`, `show-stats`, `fdb-add`, `fdb-del`, `fdb-flush`, `port-add`,
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
    /// `up`, or for a remote `unreachable` (an ICMP error came for it, and no frame from it
    /// since); a port whose interface vanished is removed, so it is never listed as down.
    public var state: String
    /// What the port takes as it is: `csum tso uso` (partial checksums, TCP and UDP
    /// super-frames), `none`, or `off` (`--offload off`); remotes: `none`.
    public var offloads: String
    /// e.g. `access VLAN 1`, `trunk VLANs 10,20 (native 1 untagged)`.
    public var vlans: String
    public var learning: Bool
    public var flooding: Bool
    public var rxFrames: UInt64
    public var rxBytes: UInt64
    public var txFrames: UInt64
    public var txBytes: UInt64
    /// Frames whose partial checksum tapbridge completed for this port (offloaded by the sender).
    public var checksumsCompleted: UInt64
    /// Super-frames (GSO) cut into MTU-sized frames for this port.
    public var framesSegmented: UInt64
    /// Super-frames (GSO) handed whole to this port (it takes them; `tx_frames` counts their
    /// segments).
    public var superFramesPassed: UInt64
    /// Drops by reason (snake_case names, see Docs/Operations.md); only reasons with a count.
    public var drops: [String: UInt64]
    /// For a remote: where it is and how frames travel to it; absent for other ports.
    public var remote: RemoteReport? = nil
    /// A TAP reached through a packet socket because another program holds it: which one,
    /// `qemu-system-x86, pid 812`; absent otherwise.
    public var heldBy: String? = nil
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

    public init(_ peer: RemotePeer) {
        self.init(endpoint: "\(peer.address)", encapsulation: "\(peer.encapsulation)", vni: peer.encapsulation == .vxlan ? peer.vni.rawValue : nil,
                  dynamic: peer.isDynamic, unreachable: peer.unreachable)
        pathMtu = peer.pathMTU
        fragmented = peer.fragmented
    }

    public init(endpoint: String, encapsulation: String, vni: UInt32?, dynamic: Bool, unreachable: UInt64 = 0) {
        self.endpoint = endpoint
        self.encapsulation = encapsulation
        self.vni = vni
        self.dynamic = dynamic
        self.unreachable = unreachable
    }
}

/// One MAC table entry in `show fdb`.
public struct FDBReport: Codable, Sendable, Equatable {
    public var mac: String
    public var vlan: Int
    public var port: String
    /// Seconds since the MAC was last seen (0 for static entries).
    public var ageSeconds: Double
    public var `static`: Bool
}

/// Bridge-wide counters in `show stats`.
public struct StatsReport: Codable, Sendable, Equatable {
    public struct FDB: Codable, Sendable, Equatable {
        public var entries: Int
        public var maxEntries: Int
        public var learned: UInt64
        public var refreshed: UInt64
        public var moved: UInt64
        public var moveDamped: UInt64
        public var expired: UInt64
        public var evicted: UInt64
        public var refused: UInt64
    }
    public struct UDP: Codable, Sendable, Equatable {
        public var listen: String
        public var unknownSender: UInt64
        public var unreachable: UInt64
        /// Well-formed frames from unknown senders refused because `--max-peers` was reached.
        public var peersRefused: UInt64
        /// Inner frames that arrived with a partial checksum (same-host kernel VTEP) and were completed.
        public var checksumsCompleted: UInt64
        /// Trains of datagrams sent with one UDP_SEGMENT message each.
        public var trainsSent: UInt64
        /// Trains received whole (UDP_GRO).
        public var trainsReceived: UInt64
        /// Super-frames built by merging the TCP segments of received trains.
        public var framesCoalesced: UInt64
        /// Trains the kernel refused (then a remote's path MTU was lowered, or UDP GSO turned off).
        public var trainsRefused: UInt64
        /// Datagrams larger than their remote's path MTU, fragmented by the kernel (absent
        /// from bridges before it was counted).
        public var fragmented: UInt64? = nil
        /// Times a remote's path MTU was lowered (ICMP, or a refused train).
        public var pathMtuLowered: UInt64? = nil
        /// Frames split horizon kept from a remote: flooded copies not sent to, and unicast
        /// frames dropped for, a remote of the sender's group.
        public var splitHorizon: UInt64? = nil
    }
    public struct Mirror: Codable, Sendable, Equatable {
        public var seen: UInt64
        public var written: UInt64
        public var filteredOut: UInt64
        public var dropped: UInt64
        public var writeErrors: UInt64
        public var rotations: Int
        public var injected: UInt64
        public var injectDropped: UInt64
    }
    public var name: String
    public var version: String
    public var uptimeSeconds: Double
    public var ports: Int
    public var fdb: FDB
    public var udp: UDP?
    public var mirror: Mirror?
    /// The control socket the answer came through: set by `tapbridge list` (the bridge does
    /// not send it).
    public var control: String? = nil
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

    public static func failure(_ error: String) -> ControlResponse { ControlResponse(ok: false, error: error) }
    public static func success(_ message: String? = nil) -> ControlResponse { ControlResponse(ok: true, message: message) }

    public init(ok: Bool, error: String? = nil, message: String? = nil) {
        self.ok = ok
        self.error = error
        self.message = message
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
