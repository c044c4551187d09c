import Logging
import TapBridgeCore
import TapBridgeDevices
import TapBridgePcap

/// One option of the run form, declared once: the command line (`--NAME`), the config file key
/// (`NAME:`), `--print-config`, `--help` and the man page all come from this declaration.
public struct OptionDefinition: Sendable {
    public enum Arity: Sendable {
        /// `--hub`: no value on the command line, true or false in a file.
        case flag
        /// `--ageing 120`: one value; given again, the last one counts.
        case value
        /// `--port tap0 --port tap1`: repeatable; a file's list takes one item or a list.
        case list
    }

    /// Where `--help` and the man page list it.
    public enum Group: String, Sendable, CaseIterable {
        case ports = "PORTS"
        case remotes = "REMOTES OVER UDP"
        case table = "THE SWITCH"
        case mirror = "MIRRORING"
        case running = "RUNNING"
    }

    /// The long option without its dashes, which is also the config key.
    public let name: String
    /// Other long names (`--peer` for `--remote`, `--aging` for `--ageing`).
    public let aliases: [String]
    /// Other config keys (the plural `ports`, as older files say).
    public let configAliases: [String]
    public let arity: Arity
    /// `spec`, `seconds`, ...; empty for flags.
    public let valueName: String
    public let help: String
    /// More, for `--help` and the man page (empty: none).
    public let discussion: String
    public let group: Group
    /// The default as `--help` states it, or nil.
    public let defaultValue: String?
    /// Quoted in `--print-config` (a string, not a number or boolean).
    let quoted: Bool
    /// Only on the command line (`--config`, `--print-config`).
    let commandLineOnly: Bool
    /// Parses one value (flags: "true" or "false") into the settings.
    let apply: @Sendable (inout Settings, String) throws(OptionError) -> Void
    /// The values to print (flags: "true" or "false"); empty: not set.
    let render: @Sendable (Settings) -> [String]
    /// Empties a list (the command line's list replaces the file's).
    let clear: (@Sendable (inout Settings) -> Void)?

    /// `--name <value>` as usage shows it.
    public var usage: String { arity == .flag ? "--\(name)" : "--\(name) <\(valueName)>" }
}

/// The run form's options, in the order `--help`, `--print-config` and the man page list them.
public enum OptionTable {
    typealias Apply = @Sendable (inout Settings, String) throws(OptionError) -> Void

    static func flag(_ name: String, _ path: any WritableKeyPath<Settings, Bool> & Sendable, _ group: OptionDefinition.Group, _ help: String,
                     commandLineOnly: Bool = false) -> OptionDefinition {
        OptionDefinition(name: name, aliases: [], configAliases: [], arity: .flag, valueName: "", help: help, discussion: "", group: group,
                         defaultValue: nil, quoted: false, commandLineOnly: commandLineOnly,
                         apply: { s, v throws(OptionError) in s[keyPath: path] = v == "true" }, render: { ["\($0[keyPath: path])"] }, clear: nil)
    }

    static func value(_ name: String, aliases: [String] = [], _ valueName: String, _ group: OptionDefinition.Group, _ help: String, discussion: String = "",
                      showsDefault: Bool = false, quoted: Bool = false, commandLineOnly: Bool = false, render: @escaping @Sendable (Settings) -> String?,
                      apply: @escaping Apply) -> OptionDefinition {
        // the default `--help` shows is what `render` makes of a fresh `Settings`: written once, there
        // an empty value is no value (and --print-config could not write it back: fuzz-specs)
        let nonEmpty: Apply = { s, v throws(OptionError) in
            guard !v.isEmpty else { throw OptionError(reason: "needs a value, got an empty one (leave the option out for its default)") }
            try apply(&s, v)
        }
        return OptionDefinition(name: name, aliases: aliases, configAliases: [], arity: .value, valueName: valueName, help: help, discussion: discussion,
                         group: group, defaultValue: showsDefault ? render(Settings()) : nil, quoted: quoted, commandLineOnly: commandLineOnly, apply: nonEmpty,
                         render: { render($0).map { [$0] } ?? [] }, clear: nil)
    }

    static func list<T: Sendable>(_ name: String, aliases: [String] = [], configAlias: String, _ valueName: String, _ group: OptionDefinition.Group,
                                  _ help: String, discussion: String = "", _ path: any WritableKeyPath<Settings, [T]> & Sendable,
                                  text: @escaping @Sendable (T) -> String, parse: @escaping @Sendable (String) throws(OptionError) -> T) -> OptionDefinition {
        OptionDefinition(name: name, aliases: aliases, configAliases: [configAlias], arity: .list, valueName: valueName, help: help,
                         discussion: discussion, group: group, defaultValue: nil, quoted: true, commandLineOnly: false,
                         apply: { s, v throws(OptionError) in s[keyPath: path].append(try parse(v)) }, render: { $0[keyPath: path].map(text) },
                         clear: { $0[keyPath: path].removeAll() })
    }

    // MARK: Value parsers (the reason reads after the option's name)

    static func number(_ v: String) throws(OptionError) -> Double {
        guard let x = Double(v), x.isFinite else { throw OptionError(reason: "must be a number, got '\(v)'") }
        return x
    }

    static func integer(_ v: String) throws(OptionError) -> Int {
        guard let n = Int(v) else { throw OptionError(reason: "must be a whole number, got '\(v)'") }
        return n
    }

    /// Seconds, finite, above `above` (or at least `atLeast`), at most `atMost`.
    static func seconds(_ v: String, above: Double? = nil, atLeast: Double? = nil, atMost: Double) throws(OptionError) -> Double {
        let x = try number(v)
        let low = above.map { x > $0 } ?? atLeast.map { x >= $0 } ?? true
        guard low, x <= atMost else {
            let lower = above.map { "more than \(plain($0))" } ?? atLeast.map { "at least \(plain($0))" } ?? ""
            throw OptionError(reason: "must be \(lower) and at most \(plain(atMost)) seconds, got \(v)")
        }
        return x
    }

    /// `50ms`, `200us`, `1.5s`: as `PortSpec.duration` reads it back.
    static func renderDuration(_ d: Duration) -> String {
        let us = d.nanoseconds / 1000
        if us % 1_000_000 == 0 { return "\(us / 1_000_000)s" }
        return us % 1000 == 0 ? "\(us / 1000)ms" : "\(us)us"
    }

    static func atLeastOne(_ v: String) throws(OptionError) -> Int {
        let n = try integer(v)
        guard n >= 1 else { throw OptionError(reason: "must be at least 1, got \(n)") }
        return n
    }

    static func onOff(_ v: String) throws(OptionError) -> Bool {
        guard let b = PortSpec.boolean(v) else { throw OptionError(reason: "must be on or off, got '\(v)'") }
        return b
    }

    /// A spec that does not parse: its own message, which names the option and the spec.
    static func spec<T>(_ parse: () throws(PortSpecError) -> T) throws(OptionError) -> T {
        do {
            return try parse()
        } catch {
            throw OptionError(reason: "'\(error.spec)': \(error.reason)")
        }
    }

    /// 1000000 rather than 1e+06.
    public static func plain(_ x: Double) -> String { x == x.rounded() && abs(x) < 1e15 ? String(Int64(x)) : String(x) }

    // MARK: The table

    public static let all: [OptionDefinition] = [
        list("port", configAlias: "ports", "spec", .ports, "A port: \(PortSpec.syntax). Repeatable.",
             discussion: """
                 mode=auto (default) creates or attaches a TAP and falls back to a packet socket; mode=tap insists on a TAP; \
                 mode=packet attaches an existing interface through a packet socket. vlan=N makes an access port (default: \
                 access VLAN 1); trunk=10:20-29 carries those VLANs tagged, native=N carries one VLAN untagged on a trunk. \
                 learning=off never learns MACs behind the port; flooding=off keeps unknown unicast, broadcast and multicast \
                 away from it. mtu=N sets the interface's MTU (the IP MTU, as ip-link shows it). netns=NS moves the TAP \
                 tapbridge makes into network namespace NS (made if missing, as ip netns add makes it, and removed by \
                 the last bridge with a port in it), gives it addr=CIDR and mac=MAC there and brings it up: --port h1,netns=h1,addr=10.0.0.1/24 \
                 --port h2,netns=h2,addr=10.0.0.2/24 is a two-host lab. A TAP tapbridge makes gets the same MAC at \
                 every start (from /etc/machine-id, the bridge's name and the port's; with netns=, mac= sets another). storm=PPS takes at most PPS flooded frames \
                 (broadcast, multicast, unknown unicast) a second from the port. multicast=flood sends the port every \
                 multicast group, as if IGMP/MLD snooping were off for it (a host that never reports, a monitor). A port on an interface tapbridge did \
                 not make (a VM's tap, a veth) whose interface goes away stays, absent, and is attached again when it \
                 comes back. A bad link on the way out (netem's, without netem): delay=50ms, jitter=5ms, loss=1% (or \
                 1%:25% correlated), duplicate=, corrupt=, reorder= (percentages), rate=10mbit; --seed replays a run.
                 """, \.ports, text: \.text, parse: { v throws(OptionError) in Settings.Given(text: v, value: try spec { () throws(PortSpecError) in try PortSpec(parsing: v) }) }),
        list("stream-listen", configAlias: "stream-listens", "endpoint", .ports, "Accept stream ports here: \(StreamListenSpec.syntax). Repeatable.",
             discussion: """
                 Each connection is a port, in QEMU's stream framing (a 4-byte big-endian length before each frame): a VM \
                 started by any user who may open the socket joins with -netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH \
                 (or -netdev socket,connect=127.0.0.1:PORT), no root and no TAP. The Unix socket is mode 0600, or 0660 and \
                 the group's with --stream-group; a PORT alone listens on 127.0.0.1 only. Ports are named after the peer \
                 (stream-PID for a Unix peer, the address for TCP), take the VLAN, storm and link keys given here, and go with \
                 their connection; max=N (default 64) bounds how many are served at once. --port NAME,stream=ENDPOINT \
                 connects out instead (to a QEMU with server=on), and connects again when the connection closes.
                 """, \.streamListen, text: \.text,
             parse: { v throws(OptionError) in Settings.Given(text: v, value: try spec { () throws(PortSpecError) in try StreamListenSpec(parsing: v) }) }),
        value("stream-group", "group", .ports, "Let this group connect to the --stream-listen Unix sockets (mode 0660; default 0600, the bridge's user only).", quoted: true,
              render: { $0.streamGroup }) { s, v throws(OptionError) in s.streamGroup = v },
        value("offload", "on|off", .ports, "on: TAPs take and hand over partial checksums and 64 KiB super-frames (vnet header, TSO), packet ports send them whole, remotes send and receive them as trains of datagrams (UDP GSO/GRO), and frames are segmented in software only for a port that cannot take them; off: every frame is complete and MTU-sized. Per port: offload=off in --port.",
              showsDefault: true, render: { $0.offload ? "on" : "off" }, apply: { s, v throws(OptionError) in s.offload = try onOff(v) }),
        list("remote", aliases: ["peer"], configAlias: "remotes", "spec", .remotes, "A remote peer over UDP: \(RemoteSpec.syntax). Repeatable.",
             discussion: """
                 HOST is an IPv4 address, an IPv6 address in brackets, or a name resolved once at start. Each remote is a port \
                 of the switch. \(Encapsulations.described); vni= sets the \
                 network identifier. Only configured peers are accepted (a sealed peer whose datagrams authenticate from \
                 another address is followed there: roaming). horizon=: mesh (the default for \(Encapsulations.names { $0.meshByDefault }): a bridge of a full mesh, never forwarded to \
                 another mesh remote), off (the default \
                 for \(Encapsulations.names { !$0.meshByDefault }): an endpoint such as a VM, reaching every port) or N (a group of your own). Each remote's path MTU \
                 is measured: TCP is cut to fit it and SYNs crossing it get their MSS lowered, so nothing needs mtu=. \
                 At run time: tapbridge remote add|del. datapath=kernel (encap=\(Encapsulations.names { $0.kernelDatapath }) only, started as root): the frames go through a \
                 Linux vxlan device tapbridge makes (vx-NAME, its MTU fitting the path, removed on exit) and attaches as \
                 a packet-socket port; the kernel encapsulates, segments and coalesces, which is faster (Docs/Benchmarks.md), \
                 but such remotes have no counters of their own and share one port per VNI and UDP port.
                 """, \.remotes, text: \.text, parse: { v throws(OptionError) in Settings.Given(text: v, value: try spec { () throws(PortSpecError) in try RemoteSpec(parsing: v) }) }),
        value("listen", "[addr:]port", .remotes, "The UDP socket serving every remote (default: all addresses, on the port of the first --remote).", quoted: true,
              render: { $0.listen?.text }, apply: { s, v throws(OptionError) in s.listen = Settings.Given(text: v, value: try spec { () throws(PortSpecError) in try ListenSpec(parsing: v) }) }),
        value("encap", "encap", .remotes, "Encapsulation of remotes that do not set encap=: \(Encapsulations.names()).", showsDefault: true, render: { "\($0.encapsulation)" }) { s, v throws(OptionError) in
            guard let e = Encapsulations.named(v) else { throw OptionError(reason: "must be \(Encapsulations.names()), got '\(v)'") }
            s.encapsulation = e
        },
        value("key-file", "path", .remotes, "This host's private key, for sealed remotes that do not set key= (base64, readable by its owner alone: tapbridge genkey PATH; its public key, for the peers' peer=: tapbridge pubkey < PATH).",
              quoted: true, render: { $0.keyFile }) { s, v throws(OptionError) in s.keyFile = v },
        value("vni", "n", .remotes, "VXLAN network identifier of remotes that do not set vni= (0-16777215).", showsDefault: true, render: { "\($0.vni.rawValue)" }) { s, v throws(OptionError) in
            guard let n = Int(v), let vni = VNI(n) else { throw OptionError(reason: "must be 0-16777215, got \(v)") }
            s.vni = vni
        },
        flag("accept-peers", \.acceptPeers, .remotes, "Let unknown senders become remotes (up to --max-peers, removed after --peer-timeout of silence), in --encap \(Encapsulations.names { $0.admitsStrangers }). This trusts the network: anyone who can reach the port joins the segment. Sealed peers are each named instead (peer=PUBKEY)."),
        value("max-peers", "n", .remotes, "Most remotes --accept-peers adds.", showsDefault: true, render: { "\($0.maxPeers)" }) { s, v throws(OptionError) in s.maxPeers = try atLeastOne(v) },
        value("peer-timeout", "seconds", .remotes, "Seconds of silence after which an accepted peer is removed.", showsDefault: true, render: { plain($0.peerTimeout) }) { s, v throws(OptionError) in
            s.peerTimeout = try seconds(v, above: 0, atMost: 1_000_000)
        },
        value("path-mtu-expiry", "seconds", .remotes, "Seconds a remote's path MTU, once lowered by an ICMP error (or a refused train), is kept before the route's is tried again; a path still smaller is found again by its next ICMP error (the kernel keeps its own for net.ipv4.route.mtu_expires, 600 s by default).", showsDefault: true, render: { plain($0.pathMTUExpiry) }) { s, v throws(OptionError) in
            s.pathMTUExpiry = try seconds(v, above: 0, atMost: 1_000_000)
        },
        flag("no-split-horizon", \.noSplitHorizon, .remotes, "Every remote's horizon defaults to off: forward between VXLAN remotes too (hub-and-spoke relays). Loops if the remotes also reach each other directly."),
        value("ageing", aliases: ["aging"], "seconds", .table, "Seconds a learned MAC lives without traffic.", showsDefault: true, render: { plain($0.ageing) }) { s, v throws(OptionError) in
            s.ageing = try seconds(v, above: 0, atMost: 1_000_000)
        },
        value("max-macs", "n", .table, "Most MAC table entries; when full, the port holding the most entries loses its least recently seen one.", showsDefault: true,
              render: { "\($0.maxMACs)" }) { s, v throws(OptionError) in s.maxMACs = try atLeastOne(v) },
        value("max-macs-per-port", "n", .table, "Most MACs learned on one port (default: no per-port limit); a port at its limit forgets its least recently seen MAC.",
              render: { $0.maxMACsPerPort.map(String.init) }) { s, v throws(OptionError) in s.maxMACsPerPort = try atLeastOne(v) },
        value("move-hold-down", "seconds", .table, "Seconds a MAC that moved between ports stays put before it may move again (default: off).",
              render: { $0.moveHoldDown.map { "\($0)" } }) { s, v throws(OptionError) in s.moveHoldDown = try seconds(v, above: 0, atMost: 3600) },
        flag("hub", \.hub, .table, "Flood every frame and learn nothing (debugging)."),
        value("seed", "n", .ports, "Seed of the link emulation's random choices (loss=, jitter=, duplicate=, corrupt=, reorder=): the same seed and traffic give the same run. Default: a random seed, logged at start.",
              render: { $0.seed.map(String.init) }) { s, v throws(OptionError) in
            guard let n = UInt64(v) else { throw OptionError(reason: "must be a number 0-18446744073709551615, got \(v)") }
            s.seed = n
        },
        value("loop-protect", "on|off", .table, "on: a loop (MACs moving back and forth between two ports, 8 times within a second; or one frame flooded from one port 32 times within 100 ms, a loop that moves no MAC) blocks a port (the one of the two added later; the one the frame keeps coming in on) for 10 s, then it is tried again; off: the loop is only logged and counted. Either way it is named in the log and counted in show stats.",
              showsDefault: true, render: { $0.loopProtect ? "on" : "off" }, apply: { s, v throws(OptionError) in s.loopProtect = try onOff(v) }),
        flag("no-multicast-snooping", \.noMulticastSnooping, .table, "Flood every multicast frame. By default IGMP and MLD snooping decides as the kernel bridge does: once a querier is on the segment (a multicast router, or --multicast-querier), a group's frames go only to the ports whose hosts joined it and to multicast routers, a group nobody joined to the routers only; without one everything is flooded. tapbridge show mdb lists the groups."),
        flag("multicast-querier", \.multicastQuerier, .table, "Send IGMP and MLD general queries every 125 s, from 0.0.0.0 and a link-local address made from the bridge's MAC, so that hosts report their groups and snooping takes effect (10 s after start, once hosts have answered) on a segment without a multicast router (a lab), as the kernel bridge's mcast_querier 1. Nothing with --no-multicast-snooping."),
        flag("forward-link-local", \.forwardLinkLocal, .table, "Forward IEEE link-local control frames (01:80:c2:00:00:0X: STP, LLDP, LACP, 802.1X), which bridges drop by default."),
        value("mirror", "path", .mirror, "Write a copy of every frame the bridge receives (before the forwarding decision, so drops show too) to this pcap file; - for standard output (tapbridge ... --mirror - | tcpdump -n -r -).",
              quoted: true, render: { $0.mirror }) { s, v throws(OptionError) in s.mirror = v },
        value("mirror-filter", "expr", .mirror, "Mirror only frames matching this BPF expression (pcap syntax, as tcpdump), e.g. 'arp or icmp'.", quoted: true,
              render: { $0.mirrorFilter }) { s, v throws(OptionError) in s.mirrorFilter = v },
        list("mirror-port", configAlias: "mirror-ports", "name", .mirror, "Mirror only frames entering this port (a --port name or a remote's name). Repeatable. Default: all ports.",
             \.mirrorPorts, text: { $0 }, parse: { v throws(OptionError) in v }),
        flag("mirror-egress", \.mirrorEgress, .mirror, "Mirror frames leaving the mirrored ports too (as handed to the port, after VLAN tagging: like tcpdump on a NIC, a frame the kernel then refuses still shows, and counts as a drop on the port)."),
        value("mirror-iface", "iface", .mirror, "Inject mirrored frames into this interface (a dummy or veth a capture tool or IDS reads), as a SPAN port does. Never a port nor the veth peer of one (refused: the copies would loop).", quoted: true,
              render: { $0.mirrorInterface }) { s, v throws(OptionError) in
            if let problem = InterfaceName.problem(with: v) { throw OptionError(reason: "interface name \(problem)") }
            s.mirrorInterface = v
        },
        value("mirror-rotate", "size[,count]", .mirror, "Start a new --mirror file when it reaches SIZE bytes (suffix k, M or G; 1k to 1024G) and keep COUNT files (default 5): PATH is the newest, then PATH.1, PATH.2, ...",
              quoted: true, render: { $0.mirrorRotate?.text }) { s, v throws(OptionError) in
            guard let r = MirrorOptions.parseRotation(v) else { throw OptionError(reason: "'\(v)': expected SIZE[,COUNT] with SIZE from 1k to 1024G (like 10M) and COUNT 1-1000") }
            s.mirrorRotate = Settings.Given(text: v, value: Settings.Rotation(bytes: r.bytes, count: r.count))
        },
        value("mirror-format", "format", .mirror, "pcapng: each port is an interface named after it and each frame says whether it came in or went out (tshark -T fields -e frame.interface_name -e frame.packet_flags_direction); pcap: classic pcap for old readers, without ports or directions.",
              showsDefault: true, render: { $0.mirrorFormat.rawValue }) { s, v throws(OptionError) in
            guard let f = MirrorFormat(rawValue: v) else { throw OptionError(reason: "must be pcapng or pcap, got '\(v)'") }
            s.mirrorFormat = f
        },
        value("snaplen", "bytes", .mirror, "Bytes of each mirrored frame to keep (64-262144).", showsDefault: true, render: { "\($0.snaplen)" }) { s, v throws(OptionError) in
            let n = try integer(v)
            guard (64...262_144).contains(n) else { throw OptionError(reason: "must be 64-262144, got \(n)") }
            s.snaplen = n
        },
        value("name", "name", .running, "The bridge's name: its control socket is /run/tapbridge/NAME.sock and its metrics carry bridge=\"NAME\". Default: tapbridge, or the first free of tapbridge-2, tapbridge-3, ... when that one runs (the log says which). A second bridge with a --name already running is refused.",
              quoted: true, render: { $0.name }) { s, v throws(OptionError) in
            guard !v.isEmpty, v.utf8.count <= 64, !v.contains(where: { !($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw OptionError(reason: "must be 1-64 letters, digits, '-', '_' or '.', got '\(v)'")
            }
            s.name = v
        },
        value("control", "path", .running, "The control socket's path (default /run/tapbridge/NAME.sock), or none.", quoted: true,
              render: { $0.control }) { s, v throws(OptionError) in s.control = v },
        value("control-group", "group", .running, "Let this group read the bridge through the control socket: show and list, nothing that changes it (mode 0660; default 0600, root only).", quoted: true,
              render: { $0.controlGroup }) { s, v throws(OptionError) in s.controlGroup = v },
        value("control-admin-group", "group", .running, "Let this group also change the bridge through the control socket: fdb add/del/flush, port add/del (root and the bridge's own user always may).", quoted: true,
              render: { $0.controlAdminGroup }) { s, v throws(OptionError) in s.controlAdminGroup = v },
        value("user", "user[:group]", .running, "Once every port and socket is open, become this user (and its groups, or GROUP), keeping only CAP_NET_ADMIN and CAP_NET_RAW (port add, ports that come back, MTUs put back at exit) and no new privileges. The control socket becomes the user's: its processes may show the bridge, only root (or --control-admin-group) may change it. Give the bridge a user of its own, not nobody. Needs root to start; not with netns= ports (removing namespaces needs root).",
              quoted: true, render: { $0.user?.text }) { s, v throws(OptionError) in
            do throws(StartupError) {
                s.user = Settings.Given(text: v, value: try RunAs(parsing: v))
            } catch {
                throw OptionError(error.message)
            }
        },
        value("stats-interval", "seconds", .running, "Log a one-line summary of the counters this often (default: never).",
              render: { $0.statsInterval.map { "\($0)" } }) { s, v throws(OptionError) in s.statsInterval = try seconds(v, atLeast: 1, atMost: 1_000_000) },
        value("busy-poll", "duration", .running, "After traffic, keep polling without sleeping for this long (200us, 50ms, at most 60s; default 0: sleep at once). A frame that arrives within it is served without waking a sleeping process, which is most of a round trip on an idle machine (a ping through two bridges over a remote, here: 0.25 ms, 0.10 ms with 50ms); the cost is a busy core while traffic comes no further apart than this. Shorter than the gaps between the frames you care about, it only burns CPU.",
              render: { $0.busyPoll == .zero ? nil : Self.renderDuration($0.busyPoll) }) { s, v throws(OptionError) in
            guard let d = PortSpec.duration(v) else { throw OptionError(reason: "must be a duration such as 200us, 50ms or 1s (at most 60s), or 0, got \(v)") }
            s.busyPoll = d
        },
        flag("no-io-uring", \.noIOURing, .running, "Write to TAPs with one write(2) per frame. By default the frames a round sends to TAPs go out in one io_uring submission (1.3 times the 64-byte frames through a minimal relay, here), where the kernel allows io_uring; where it does not, the start line says so and tapbridge writes one at a time."),
        value("log-level", "level", .running, "trace, debug, info, notice, warning, error or critical. debug adds what the switch does: MACs learned, moved, refused, aged out; trace also unicast floods to unknown MACs (at most 50 such lines a second).",
              showsDefault: true, render: { $0.logLevel.rawValue }) { s, v throws(OptionError) in
            guard let level = Logger.Level(rawValue: v) else {
                throw OptionError(reason: "must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), got '\(v)'")
            }
            s.logLevel = level
        },
        value("config", "file", .running, "Read options from a YAML file (keys: the long options without dashes; see Examples/tapbridge.yaml). Options on the command line override the file's, lists included.",
              quoted: true, commandLineOnly: true, render: { $0.config }) { s, v throws(OptionError) in s.config = v },
        flag("print-config", \.printConfig, .running, "Print the effective configuration (file and command line merged) as YAML and exit.", commandLineOnly: true),
    ]

    /// Every long name and config key, to its definition.
    static let byName: [String: Int] = {
        var out: [String: Int] = [:]
        for (k, d) in all.enumerated() {
            for name in [d.name] + d.aliases { out[name] = k }
        }
        return out
    }()

    static let byKey: [String: Int] = {
        var out: [String: Int] = [:]
        for (k, d) in all.enumerated() where !d.commandLineOnly {
            for name in [d.name] + d.configAliases { out[name] = k }
        }
        return out
    }()

    /// The config keys a file may use.
    public static var configKeys: [String] { byKey.keys.sorted() + ["split-horizon"] }
}
