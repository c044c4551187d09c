public import Logging
public import TapBridgeCore
import TapBridgeDevices
public import TapBridgePcap

/// Everything the run form's options say, each value parsed once, as the option table
/// (`OptionTable`) fills it from a config file and the command line. The daemon runs with it as it
/// is; `OptionTable.yaml` prints it back as a config file.
public struct Settings: Sendable {
    /// A parsed value and the text it was parsed from (printed back by `--print-config`).
    public struct Given<Value: Sendable>: Sendable {
        public var text: String
        public var value: Value
    }

    public var ports: [Given<PortSpec>] = []
    public var remotes: [Given<RemoteSpec>] = []
    public var listen: Given<ListenSpec>? = nil
    public var streamListen: [Given<StreamListenSpec>] = []
    public var streamGroup: String? = nil
    public var encapsulation = Encapsulation.vxlan
    public var vni = VNI(1)!
    public var acceptPeers = false
    /// `--key-file`: this host's private key, for sealed remotes that do not set key=.
    public var keyFile: String? = nil
    public var maxPeers = 64
    public var peerTimeout = 300.0
    public var pathMTUExpiry = 600.0
    public var noSplitHorizon = false
    public var mirror: String? = nil
    public var mirrorFilter: String? = nil
    public var mirrorPorts: [String] = []
    public var mirrorEgress = false
    public var mirrorInterface: String? = nil
    public var mirrorRotate: Given<Rotation>? = nil
    public var snaplen = 262_144
    public var mirrorFormat = MirrorFormat.pcapng
    /// The MAC table's defaults are the table's own (`ForwardingTable.Configuration`).
    public var ageing = Double(ForwardingTable.Configuration.defaultAgeingTime.components.seconds)
    public var maxMACs = ForwardingTable.Configuration.defaultMaximumEntries
    public var maxMACsPerPort: Int? = nil
    public var moveHoldDown: Double? = nil
    public var offload = true
    public var hub = false
    public var forwardLinkLocal = false
    public var loopProtect = true
    public var noMulticastSnooping = false
    public var multicastQuerier = false
    public var noIOURing = false
    /// `--seed`: the link emulation's generator seed (nil: a random one, logged).
    public var seed: UInt64? = nil
    public var name: String? = nil
    public var control: String? = nil
    public var controlGroup: String? = nil
    public var controlAdminGroup: String? = nil
    public var statsInterval: Double? = nil
    /// `--busy-poll`: how long the loop polls without sleeping after traffic (0: never).
    public var busyPoll: Duration = .zero
    /// `--user USER[:GROUP]`, looked up when given.
    public var user: Given<RunAs>? = nil
    public var config: String? = nil
    public var printConfig = false
    public var logLevel = Logger.Level.info

    public struct Rotation: Sendable, Equatable {
        public var bytes: Int64
        public var count: Int
    }

    public init() {}

    /// The bridge's name: `--name`, or the default.
    public var bridgeName: String { name ?? "tapbridge" }

    /// The switching core's configuration: the MAC table's limits and ageing, the hub, link-local
    /// forwarding and loop protection (what the core defines and the options do not say keeps
    /// the core's default).
    public var bridgeConfiguration: Bridge.Configuration {
        Bridge.Configuration(
            table: .init(ageingTime: .seconds(ageing), maximumEntries: maxMACs, maximumEntriesPerPort: maxMACsPerPort,
                         moveHoldDown: moveHoldDown.map(Duration.seconds)),
            isHub: hub, forwardsLinkLocal: forwardLinkLocal, loopProtect: loopProtect,
            multicast: .init(isEnabled: !noMulticastSnooping, isQuerier: multicastQuerier && !noMulticastSnooping))
    }

    /// The rules between options (each option's own range is checked as it is parsed).
    public func validate() throws(OptionError) {
        var names: Set<String> = []
        for name in ports.map(\.value.name) + remotes.map(\.value.name) where !names.insert(name).inserted {
            throw OptionError("port \(name): given twice (each --port and --remote is one port, named once)")
        }
        if acceptPeers, listen == nil, remotes.isEmpty { throw OptionError("--accept-peers needs --listen [ADDR:]PORT") }
        for remote in remotes.map(\.value) {
            let e = remote.encapsulation ?? encapsulation
            if e.kind.needsKey, remote.keyFile == nil, keyFile == nil {
                throw OptionError("remote \(remote.name): encap=\(e) needs this host's key: --key-file PATH, or key=PATH on the remote (tapbridge genkey writes one)")
            }
            if let why = remote.encapsulationProblem(e) { throw OptionError("remote \(remote.name): \(why)") }
            if !e.kind.needsKey, remote.keyFile != nil {
                throw OptionError("remote \(remote.name): key= is for encap=\(Encapsulations.names { $0.needsKey }) (the bridge-wide --encap is \(encapsulation))")
            }
            if let why = remote.datapathProblem(bridgeWide: encapsulation) { throw OptionError("remote \(remote.name): \(why)") }
        }
        if acceptPeers, !encapsulation.kind.admitsStrangers {
            throw OptionError("--accept-peers cannot admit encap=\(encapsulation) peers: each is named by its key (--remote HOST:PORT,encap=\(encapsulation),peer=PUBKEY)")
        }
        if streamGroup != nil, !streamListen.contains(where: { if case .unix = $0.value.endpoint { true } else { false } }) {
            throw OptionError("--stream-group needs --stream-listen unix:PATH (a group can be given a Unix socket, not a TCP port)")
        }
        var endpoints: Set<String> = []
        for l in streamListen where !endpoints.insert("\(l.value.endpoint)").inserted {
            throw OptionError("--stream-listen \(l.value.endpoint): given twice")
        }
        let mirrors = mirror != nil || mirrorInterface != nil
        for (flag, given) in [("--mirror-filter", mirrorFilter != nil), ("--mirror-port", !mirrorPorts.isEmpty), ("--mirror-egress", mirrorEgress), ("--mirror-rotate", mirrorRotate != nil),
                              ("--mirror-format", mirrorFormat != .pcapng)]
        where given && !mirrors {
            throw OptionError("\(flag) needs --mirror PATH or --mirror-iface IFACE")
        }
        if mirrorRotate != nil, mirror == nil || mirror == "-" { throw OptionError("--mirror-rotate needs --mirror with a file path") }
    }

    /// The mirror's options, if `--mirror` or `--mirror-iface` was given.
    public var mirrorOptions: MirrorOptions? {
        guard mirror != nil || mirrorInterface != nil else { return nil }
        var m = MirrorOptions(path: mirror, interface: mirrorInterface)
        m.filter = mirrorFilter
        m.ports = mirrorPorts
        m.egress = mirrorEgress
        if let r = mirrorRotate?.value {
            m.rotateBytes = r.bytes
            m.rotateCount = r.count
        }
        m.snaplen = snaplen
        m.format = mirrorFormat
        return m
    }
}

/// An option's value that does not parse, or options that do not fit together. `reason`
/// reads after the option's name: `--ageing` + ` must be more than 0 ...`.
public struct OptionError: Error, Sendable, Equatable {
    public var reason: String
    /// The message names its option itself (cross-option rules).
    public var isComplete: Bool

    public init(_ message: String) {
        reason = message
        isComplete = true
    }

    init(reason: String) {
        self.reason = reason
        isComplete = false
    }

    /// The message for the command line: `--ageing must be ...`.
    public func message(flag: String) -> String { isComplete ? reason : "\(flag) \(reason)" }
}
