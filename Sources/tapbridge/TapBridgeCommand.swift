import ArgumentParser
import Logging
import TapBridgeCore
import TapBridgeLinux
import TapBridgePcap

#if canImport(Glibc)
import Glibc
#endif

/// `tapbridge`: argument parsing and wiring only; the work is in TapBridgeLinux and TapBridgeCore.
struct TapBridgeCommand: ParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "tapbridge",
        abstract: "A userspace Ethernet switch: links TAP devices, existing interfaces and remote peers over UDP into one L2 segment.",
        discussion: """
            Each --port is a port of a learning switch (MAC table with ageing and a size limit, \
            flooding of unknown/broadcast/multicast, VLAN-aware). A port NAME that does not exist \
            is created as a TAP and removed again on exit; an existing free TAP is attached; an \
            interface that exists but cannot be a TAP here (a VM's tap held by QEMU, a veth, a \
            NIC) is reached through a packet socket. Needs CAP_NET_ADMIN (and CAP_NET_RAW for \
            packet sockets): run as root.

            EXAMPLES
              Link two TAPs (created if missing):
                tapbridge --port tap0 --port tap1
              A VM's tap held by QEMU, bridged to a veth, with a 120 s ageing time:
                tapbridge --port vm0 --port veth-host,mode=packet --ageing 120
              Access port in VLAN 10; trunk with VLANs 10, 20 tagged and VLAN 1 untagged:
                tapbridge --port tap0,vlan=10 --port tap1,trunk=10:20,native=1
              Two hosts, one segment (VXLAN, VNI 1, UDP port 4789 on both):
                host1$ tapbridge --port tap0 --remote 192.0.2.2:4789
                host2$ tapbridge --port tap0 --remote 192.0.2.1:4789
              A QEMU VM with no TAP at all (-netdev dgram speaks raw frames over UDP):
                tapbridge --port tap0 --listen 127.0.0.1:5555 \\
                  --remote 127.0.0.1:5556,encap=raw

            Remotes: VXLAN adds 50 bytes per frame on an IPv4 underlay (8 VXLAN + 8 UDP + 20 IP \
            + 14 inner Ethernet), so on a 1500-byte underlay give the TAPs mtu=1450. A remote is \
            never forwarded to another remote (split horizon) unless --no-split-horizon.

            Mirroring: --mirror writes what the bridge receives to a pcap file every tool reads; \
            a mirror that cannot keep up (slow reader, full disk) drops and counts copies and \
            never slows forwarding. Watch a lab live: tapbridge --port a --port b --mirror - | \
            tcpdump -n -r -

            Inspect and steer a running bridge through its control socket: tapbridge show \
            ports|fdb|stats, tapbridge fdb add|del|flush, tapbridge port add|del (each with \
            --help).

            SIGINT/SIGTERM stop the bridge cleanly (exit 0); SIGHUP is logged and ignored. \
            Logs go to standard error, one line per event, never one per frame at info level.
            """,
        version: version)

    @Option(
        name: .customLong("port"),
        help: ArgumentHelp(
            "A port: \(PortSpec.syntax). Repeatable.",
            discussion: """
                mode=auto (default) creates or attaches a TAP and falls back to a packet socket; \
                mode=tap insists on a TAP; mode=packet attaches an existing interface through a \
                packet socket. vlan=N makes an access port (default: access VLAN 1); trunk=10:20-29 \
                carries those VLANs tagged, native=N carries one VLAN untagged on a trunk. \
                learning=off never learns MACs behind the port; flooding=off keeps unknown \
                unicast, broadcast and multicast away from it. mtu=N sets the interface's MTU \
                (the IP MTU, as ip-link shows it).
                """,
            valueName: "spec"))
    var ports: [String] = []

    @Option(
        name: [.customLong("remote"), .customLong("peer")],
        help: ArgumentHelp(
            "A remote peer over UDP: \(RemoteSpec.syntax). Repeatable.",
            discussion: """
                HOST is an IPv4 address, an IPv6 address in brackets, or a name resolved once at \
                start. Each remote is a port of the switch. encap=vxlan (RFC 7348, default) or raw \
                (one Ethernet frame per datagram, as QEMU's -netdev dgram speaks); vni= sets the \
                VXLAN network identifier. Only configured peers are accepted.
                """,
            valueName: "spec"))
    var remotes: [String] = []

    @Option(name: .customLong("listen"), help: ArgumentHelp("The UDP socket serving every remote (default: all addresses, on the port of the first --remote).", valueName: "[addr:]port"))
    var listen: String?

    @Option(name: .customLong("encap"), help: ArgumentHelp("Encapsulation of remotes that do not set encap=: vxlan or raw.", valueName: "encap"))
    var encapsulation: String = "vxlan"

    @Option(name: .customLong("vni"), help: ArgumentHelp("VXLAN network identifier of remotes that do not set vni= (0-16777215).", valueName: "n"))
    var vni: Int = 1

    @Flag(name: .customLong("accept-peers"), help: "Let unknown senders become remotes (up to --max-peers, removed after --peer-timeout of silence). Without authentication this trusts the network: anyone who can reach the port joins the segment.")
    var acceptPeers = false

    @Option(name: .customLong("max-peers"), help: ArgumentHelp("Most remotes --accept-peers adds.", valueName: "n"))
    var maxPeers: Int = 64

    @Option(name: .customLong("peer-timeout"), help: ArgumentHelp("Seconds of silence after which an accepted peer is removed.", valueName: "seconds"))
    var peerTimeout: Double = 300

    @Flag(name: .customLong("no-split-horizon"), help: "Forward between remotes (hub-and-spoke relays). Loops if the remotes also reach each other directly.")
    var noSplitHorizon = false

    @Option(name: .customLong("mirror"), help: ArgumentHelp("Write a copy of every frame the bridge receives (before the forwarding decision, so drops show too) to this pcap file; - for standard output (tapbridge ... --mirror - | tcpdump -n -r -).", valueName: "path"))
    var mirrorPath: String?

    @Option(name: .customLong("mirror-filter"), help: ArgumentHelp("Mirror only frames matching this BPF expression (pcap syntax, as tcpdump), e.g. 'arp or icmp'.", valueName: "expr"))
    var mirrorFilter: String?

    @Option(name: .customLong("mirror-port"), help: ArgumentHelp("Mirror only frames entering this port (a --port name or a remote's name). Repeatable. Default: all ports.", valueName: "name"))
    var mirrorPorts: [String] = []

    @Flag(name: .customLong("mirror-egress"), help: "Mirror frames leaving the mirrored ports too (as sent, after VLAN tagging).")
    var mirrorEgress = false

    @Option(name: .customLong("mirror-iface"), help: ArgumentHelp("Inject mirrored frames into this interface (a dummy or veth a capture tool or IDS reads), as a SPAN port does.", valueName: "iface"))
    var mirrorInterface: String?

    @Option(name: .customLong("mirror-rotate"), help: ArgumentHelp("Start a new --mirror file when it reaches SIZE bytes (suffix k, M or G) and keep COUNT files (default 5): PATH is the newest, then PATH.1, PATH.2, ...", valueName: "size[,count]"))
    var mirrorRotate: String?

    @Option(name: .customLong("snaplen"), help: ArgumentHelp("Bytes of each mirrored frame to keep.", valueName: "bytes"))
    var snaplen: Int = 262_144

    @Option(name: [.customLong("ageing"), .customLong("aging")], help: ArgumentHelp("Seconds a learned MAC lives without traffic.", valueName: "seconds"))
    var ageing: Double = 300

    @Option(name: .customLong("max-macs"), help: ArgumentHelp("Most MAC table entries; when full, the port holding the most entries loses its least recently seen one.", valueName: "n"))
    var maxMACs: Int = 8192

    @Option(name: .customLong("max-macs-per-port"), help: ArgumentHelp("Most MACs learned on one port (default: no per-port limit); a port at its limit forgets its least recently seen MAC.", valueName: "n"))
    var maxMACsPerPort: Int?

    @Option(name: .customLong("move-hold-down"), help: ArgumentHelp("Seconds a MAC that moved between ports stays put before it may move again (default: off).", valueName: "seconds"))
    var moveHoldDown: Double?

    @Option(name: .customLong("offload"), help: ArgumentHelp("on (default): TAPs take and hand over partial checksums and 64 KiB super-frames (vnet header, TSO), packet ports send them whole, remotes send and receive them as trains of datagrams (UDP GSO/GRO), and frames are segmented in software only for a port that cannot take them; off: every frame is complete and MTU-sized. Per port: offload=off in --port.", valueName: "on|off"))
    var offload: String = "on"

    @Flag(name: .customLong("hub"), help: "Flood every frame and learn nothing (debugging).")
    var hub = false

    @Flag(name: .customLong("forward-link-local"), help: "Forward IEEE link-local control frames (01:80:c2:00:00:0X: STP, LLDP, LACP, 802.1X), which bridges drop by default.")
    var forwardLinkLocal = false

    @Option(name: .customLong("name"), help: ArgumentHelp("The bridge's name: its control socket is /run/tapbridge/NAME.sock and its metrics carry bridge=\"NAME\". Default: tapbridge, or the first free of tapbridge-2, tapbridge-3, ... when that one runs (the log says which). A second bridge with a --name already running is refused.", valueName: "name"))
    var givenName: String?

    /// The name to use: `--name`, or the default.
    var name: String { givenName ?? "tapbridge" }

    @Option(name: .customLong("control"), help: ArgumentHelp("The control socket's path (default /run/tapbridge/NAME.sock), or none.", valueName: "path"))
    var control: String?

    @Option(name: .customLong("control-group"), help: ArgumentHelp("Let this group use the control socket (mode 0660; default 0600, root only).", valueName: "group"))
    var controlGroup: String?

    @Option(name: .customLong("stats-interval"), help: ArgumentHelp("Log a one-line summary of the counters this often (default: never).", valueName: "seconds"))
    var statsInterval: Double?

    @Option(name: .customLong("config"), help: ArgumentHelp("Read options from a YAML file (keys: the long options without dashes; see Examples/tapbridge.yaml). Options on the command line override single values from the file and add to its lists.", valueName: "file"))
    var config: String?

    @Flag(name: .customLong("print-config"), help: "Print the effective configuration (file and command line merged) as YAML and exit.")
    var printConfig = false

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error or critical. debug adds what the switch does: MACs learned, moved, refused, aged out; trace also unicast floods to unknown MACs (at most 50 such lines a second).", valueName: "level"))
    var logLevel: String = "info"

    /// Checks a duration option against its documented range (Docs/Operations.md, "Limits"):
    /// finite, above `above` (or at least `atLeast`), at most `atMost` seconds.
    static func checkDuration(_ flag: String, _ value: Double, above: Double? = nil, atLeast: Double? = nil, atMost: Double) throws {
        let low = above.map { value > $0 } ?? atLeast.map { value >= $0 } ?? true
        guard value.isFinite, low, value <= atMost else {
            let lower = above.map { "more than \(Self.plain($0))" } ?? atLeast.map { "at least \(Self.plain($0))" } ?? ""
            throw ValidationError("\(flag) must be \(lower) and at most \(Self.plain(atMost)) seconds, got \(value)")
        }
    }

    /// 1000000 rather than 1e+06.
    static func plain(_ x: Double) -> String { x == x.rounded() && abs(x) < 1e15 ? String(Int64(x)) : String(x) }

    func validate() throws {
        try Self.checkDuration("--ageing", ageing, above: 0, atMost: 1_000_000)
        if maxMACs < 1 { throw ValidationError("--max-macs must be at least 1, got \(maxMACs)") }
        if let m = maxMACsPerPort, m < 1 { throw ValidationError("--max-macs-per-port must be at least 1, got \(m)") }
        if let h = moveHoldDown { try Self.checkDuration("--move-hold-down", h, above: 0, atMost: 3600) }
        if PortSpec.boolean(offload) == nil { throw ValidationError("--offload must be on or off, got '\(offload)'") }
        if Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), got '\(logLevel)'")
        }
        var names: Set<String> = []
        for name in try ports.map({ try parsePort($0).name }) + remotes.map({ try parseRemote($0).name }) where !names.insert(name).inserted {
            throw ValidationError("port \(name): given twice (each --port and --remote is one port, named once)")
        }
        if let listen { _ = try parseListen(listen) }
        if Encapsulation(rawValue: encapsulation) == nil { throw ValidationError("--encap must be vxlan or raw, got '\(encapsulation)'") }
        if VNI(vni) == nil { throw ValidationError("--vni must be 0-16777215, got \(vni)") }
        if acceptPeers, listen == nil, remotes.isEmpty { throw ValidationError("--accept-peers needs --listen [ADDR:]PORT") }
        if maxPeers < 1 { throw ValidationError("--max-peers must be at least 1, got \(maxPeers)") }
        try Self.checkDuration("--peer-timeout", peerTimeout, above: 0, atMost: 1_000_000)
        let mirrors = mirrorPath != nil || mirrorInterface != nil
        for (flag, given) in [("--mirror-filter", mirrorFilter != nil), ("--mirror-port", !mirrorPorts.isEmpty), ("--mirror-egress", mirrorEgress), ("--mirror-rotate", mirrorRotate != nil)]
        where given && !mirrors {
            throw ValidationError("\(flag) needs --mirror PATH or --mirror-iface IFACE")
        }
        if let r = mirrorRotate {
            if MirrorOptions.parseRotation(r) == nil { throw ValidationError("--mirror-rotate '\(r)': expected SIZE[,COUNT] with SIZE >= 1k (like 10M) and COUNT 1-1000") }
            if mirrorPath == nil || mirrorPath == "-" { throw ValidationError("--mirror-rotate needs --mirror with a file path") }
        }
        if !(64...262_144).contains(snaplen) { throw ValidationError("--snaplen must be 64-262144, got \(snaplen)") }
        if let i = mirrorInterface, let problem = InterfaceName.problem(with: i) { throw ValidationError("--mirror-iface: interface name \(problem)") }
        if name.isEmpty || name.utf8.count > 64 || name.contains(where: { !($0.isLetter || $0.isNumber || "-_.".contains($0)) }) {
            throw ValidationError("--name must be 1-64 letters, digits, '-', '_' or '.', got '\(name)'")
        }
        if let s = statsInterval { try Self.checkDuration("--stats-interval", s, atLeast: 1, atMost: 1_000_000) }
    }

    func mirrorOptions() -> MirrorOptions? {
        guard mirrorPath != nil || mirrorInterface != nil else { return nil }
        var m = MirrorOptions(path: mirrorPath, interface: mirrorInterface)
        m.filter = mirrorFilter
        m.ports = mirrorPorts
        m.egress = mirrorEgress
        if let r = mirrorRotate.flatMap(MirrorOptions.parseRotation) {
            m.rotateBytes = r.bytes
            m.rotateCount = r.count
        }
        m.snaplen = snaplen
        return m
    }

    func parseRemote(_ text: String) throws -> RemoteSpec {
        do {
            return try RemoteSpec(parsing: text)
        } catch {
            throw ValidationError(error.description)
        }
    }

    func parseListen(_ text: String) throws -> ListenSpec {
        do {
            return try ListenSpec(parsing: text)
        } catch {
            throw ValidationError(error.description)
        }
    }

    func parsePort(_ text: String) throws -> PortSpec {
        do {
            return try PortSpec(parsing: text)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// The effective configuration as YAML, in a fixed order: valid `--config` input.
    func effectiveConfiguration() -> String {
        func quoted(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        func list(_ key: String, _ items: [String]) -> String { items.isEmpty ? "\(key): []" : "\(key):\n" + items.map { "  - \(quoted($0))" }.joined(separator: "\n") }
        var lines = [
            "name: \(quoted(name))", list("ports", ports), list("remotes", remotes),
        ]
        func optional(_ key: String, _ value: String?) { if let value { lines.append("\(key): \(value)") } }
        optional("listen", listen.map(quoted))
        lines += ["encap: \(encapsulation)", "vni: \(vni)", "accept-peers: \(acceptPeers)", "max-peers: \(maxPeers)",
                  "peer-timeout: \(peerTimeout)", "split-horizon: \(!noSplitHorizon)"]
        optional("mirror", mirrorPath.map(quoted))
        optional("mirror-filter", mirrorFilter.map(quoted))
        lines.append(list("mirror-ports", mirrorPorts))
        lines.append("mirror-egress: \(mirrorEgress)")
        optional("mirror-iface", mirrorInterface.map(quoted))
        optional("mirror-rotate", mirrorRotate.map(quoted))
        lines += ["snaplen: \(snaplen)", "ageing: \(ageing)", "max-macs: \(maxMACs)"]
        optional("max-macs-per-port", maxMACsPerPort.map(String.init))
        optional("move-hold-down", moveHoldDown.map { "\($0)" })
        lines += ["offload: \(offload)", "hub: \(hub)", "forward-link-local: \(forwardLinkLocal)"]
        optional("control", control.map(quoted))
        optional("control-group", controlGroup.map(quoted))
        optional("stats-interval", statsInterval.map { "\($0)" })
        lines.append("log-level: \(logLevel)")
        return lines.joined(separator: "\n")
    }

    func run() throws {
        if printConfig { return print(effectiveConfiguration()) }
        // Checked here rather than in validate(), so that an unknown option is reported first.
        if ports.isEmpty && remotes.isEmpty && !acceptPeers {
            throw ValidationError("give at least one --port or --remote (e.g. --port tap0 --port tap1)")
        }
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // every line names the bridge: two bridges' logs stay apart
        // without --name (and --control), a second bridge on this host takes the next free name
        let name = givenName == nil && control == nil ? BridgeDaemon.freeName(base: self.name) : self.name
        let logger = Logger(label: "tapbridge[\(name)]")
        if name != self.name { logger.notice("a bridge named \(self.name) is running: this one is \(name) (tapbridge show ports --name \(name))") }
        var options = BridgeDaemon.Options(
            ports: try ports.map(parsePort),
            bridge: Bridge.Configuration(
                table: .init(
                    ageingTime: .milliseconds(Int64(ageing * 1000)), maximumEntries: maxMACs,
                    maximumEntriesPerPort: maxMACsPerPort, moveHoldDown: moveHoldDown.map { .milliseconds(Int64($0 * 1000)) }),
                isHub: hub, forwardsLinkLocal: forwardLinkLocal))
        options.remotes = try remotes.map(parseRemote)
        options.listen = try listen.map(parseListen)
        options.encapsulation = Encapsulation(rawValue: encapsulation)!
        options.vni = VNI(vni)!
        options.acceptsPeers = acceptPeers
        options.maximumPeers = maxPeers
        options.peerTimeout = .milliseconds(Int64(peerTimeout * 1000))
        options.splitHorizon = !noSplitHorizon
        options.offload = PortSpec.boolean(offload) ?? true
        options.mirror = mirrorOptions()
        options.name = name
        options.controlPath = control
        options.controlGroup = controlGroup
        options.statsInterval = statsInterval.map { .milliseconds(Int64($0 * 1000)) }
        options.version = Self.version
        let daemon: BridgeDaemon
        do {
            daemon = try BridgeDaemon(options: options, logger: logger)
        } catch {
            throw StartupFailure(message: error.message)
        }
        let status = daemon.run()
        if status != 0 { throw ExitCode(status) }
    }
}

/// A start-up failure: printed as one line, exit status 1.
struct StartupFailure: Error { var message: String }

@main
enum Main {
    static func main() {
        // `tapbridge show|fdb|port ...` talk to a running bridge; anything else runs one, with
        // exactly the run form's parsing and --help.
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments == ["help"] {  // as `tapbridge --help`
            print(TapBridgeCommand.helpMessage())
            Glibc.exit(0)
        }
        if let first = arguments.first, ControlCommand.names.contains(first)
            || (first == "help" && arguments.count > 1 && ControlCommand.names.contains(arguments[1]))
        {
            run(ControlCommand.self, arguments)
        }
        // --config FILE: the file's options go first, so the command line wins.
        var fromFile: [String] = []
        if let path = configPath(arguments) {
            do {
                fromFile = try ConfigFile.arguments(fromFile: path)
            } catch {
                fail(error.message, status: 64)
            }
        }
        run(TapBridgeCommand.self, fromFile + arguments)
    }

    /// The value of `--config` in `arguments`, if any.
    static func configPath(_ arguments: [String]) -> String? {
        for (i, a) in arguments.enumerated() {
            if a == "--config", i + 1 < arguments.count { return arguments[i + 1] }
            if a.hasPrefix("--config=") { return String(a.dropFirst("--config=".count)) }
        }
        return nil
    }

    static func run<C: ParsableCommand>(_ type: C.Type, _ arguments: [String]) -> Never {
        do {
            var command: any ParsableCommand
            if type == TapBridgeCommand.self {
                // The argument parser is quadratic in repeated options (8,000 --port: seconds);
                // take the list options out in one pass and hand it the rest.
                let (rest, lists) = ListOptions.extract(arguments)
                command = try TapBridgeCommand.parseAsRoot(rest)
                if var bridge = command as? TapBridgeCommand {  // not for --help and friends
                    bridge.ports = lists.ports + bridge.ports
                    bridge.remotes = lists.remotes + bridge.remotes
                    bridge.mirrorPorts = lists.mirrorPorts + bridge.mirrorPorts
                    try bridge.validate()
                    command = bridge
                }
            } else {
                command = try type.parseAsRoot(arguments)
            }
            try command.run()
            Glibc.exit(0)
        } catch let failure as StartupFailure {
            fail(failure.message, status: 1)
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch {
            let code = type.exitCode(for: error)
            if code == .success {
                print(type.fullMessage(for: error))
                Glibc.exit(0)
            }
            // Usage errors: one line, no usage dump (that is what --help is for).
            fail(type.message(for: error) + " (see 'tapbridge \(arguments.first.map { ControlCommand.names.contains($0) ? $0 + " " : "" } ?? "")--help')", status: code.rawValue)
        }
    }

    /// Longest error line printed: a value echoed from a huge argument or file is cut.
    static let maximumMessage = 400

    static func fail(_ message: String, status: Int32) -> Never {
        var message = message
        if message.utf8.count > maximumMessage {
            let bytes = Array(message.utf8)
            message = String(decoding: bytes.prefix(maximumMessage - 100), as: UTF8.self) + " … (\(bytes.count - maximumMessage + 40) bytes cut) … "
                + String(decoding: bytes.suffix(60), as: UTF8.self)
        }
        let line = Array("tapbridge: error: \(message)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        Glibc.exit(status)
    }
}

/// The repeatable options, taken out of the arguments in one linear pass before the argument
/// parser sees the rest.
struct ListOptions {
    var ports: [String] = []
    var remotes: [String] = []
    var mirrorPorts: [String] = []

    /// Splits `arguments` into the rest and the values of `--port`, `--remote` and
    /// `--mirror-port` (`--opt VALUE` or `--opt=VALUE`), each list in the order given. A flag
    /// without a value stays in the rest, for the parser's usual error.
    static func extract(_ arguments: [String]) -> (rest: [String], lists: ListOptions) {
        var rest: [String] = []
        rest.reserveCapacity(arguments.count)
        var lists = ListOptions()
        func append(_ option: Substring, _ value: String) {
            switch option {
            case "--port": lists.ports.append(value)
            case "--remote": lists.remotes.append(value)
            default: lists.mirrorPorts.append(value)
            }
        }
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            if a == "--" {
                rest += arguments[i...]
                break
            }
            let name = a.split(separator: "=", maxSplits: 1).first ?? ""
            if name == "--port" || name == "--remote" || name == "--mirror-port" {
                if a.count > name.count {
                    append(name, String(a.dropFirst(name.count + 1)))
                    i += 1
                    continue
                }
                if i + 1 < arguments.count, !arguments[i + 1].hasPrefix("--") {
                    append(name, arguments[i + 1])
                    i += 2
                    continue
                }
            }
            rest.append(a)
            i += 1
        }
        return (rest, lists)
    }
}
