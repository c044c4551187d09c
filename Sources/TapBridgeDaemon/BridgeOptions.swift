public import TapBridgeCore
public import TapBridgePcap
public import TapBridgeOptions

extension BridgeDaemon {
    /// Everything the command line says, made from `Settings` only (the defaults are written
    /// there, and in the core for what the core defines: none here).
    public struct Options: Sendable {
        public var ports: [PortSpec]
        public var remotes: [RemoteSpec]
        /// `nil`: all addresses, on the first remote's port.
        public var listen: ListenSpec?
        /// `--stream-listen`: where stream ports are accepted, and `--stream-group`.
        public var streamListeners: [StreamListenSpec]
        public var streamGroup: String?
        /// Default encapsulation and VNI for remotes that do not say.
        public var encapsulation: Encapsulation
        public var vni: VNI
        /// Let unknown senders become remotes (up to `maximumPeers`, dropped after
        /// `peerTimeout` of silence).
        public var acceptsPeers: Bool
        /// `--key-file`: the key of sealed remotes that do not set key=.
        public var keyFile: String?
        /// The link emulation's seed (`--seed`, or a random one) and whether it was given.
        public var seed: UInt64
        public var seedGiven: Bool
        public var maximumPeers: Int
        public var peerTimeout: Duration
        /// How long a lowered path MTU is kept before the route's is tried again.
        public var pathMTUExpiry: Duration
        /// Never forward between two remotes (default on).
        public var splitHorizon: Bool
        /// Offloads on TAP and packet ports (`--offload`), unless a port says otherwise.
        public var offload: Bool
        /// Mirroring (`--mirror*`), or nil.
        public var mirror: MirrorOptions?
        /// The bridge's name (`--name`): names its control socket and its metrics.
        public var name: String
        /// The control socket (`--control`); nil: `/run/tapbridge/NAME.sock`; "none": off.
        public var controlPath: String?
        /// Group allowed to read through the control socket (`show`, `list`).
        public var controlGroup: String?
        /// Group allowed to change the bridge through the control socket too.
        public var controlAdminGroup: String?
        /// Log a one-line summary this often (`--stats-interval`), or nil.
        public var statsInterval: Duration?
        /// `--busy-poll`: how long the event loop polls without sleeping after a round that
        /// found traffic (zero: it sleeps in poll(2) at once).
        public var busyPoll: Duration
        /// `--user USER[:GROUP]`: who the bridge becomes once everything is open.
        public var user: RunAs?
        /// The version reported by `show stats`.
        public var version: String
        public var bridge: Bridge.Configuration
    }
}

extension BridgeDaemon.Options {
    /// What the daemon runs with; `name` is the bridge's name as chosen at start.
    public init(_ settings: Settings, name: String, version: String) {
        func duration(_ seconds: Double) -> Duration { .milliseconds(Int64(seconds * 1000)) }
        ports = settings.ports.map(\.value)
        bridge = Bridge.Configuration(
            table: .init(ageingTime: duration(settings.ageing), maximumEntries: settings.maxMACs, maximumEntriesPerPort: settings.maxMACsPerPort,
                         moveHoldDown: settings.moveHoldDown.map(duration)),
            isHub: settings.hub, forwardsLinkLocal: settings.forwardLinkLocal, loopProtect: settings.loopProtect)
        remotes = settings.remotes.map(\.value)
        listen = settings.listen?.value
        streamListeners = settings.streamListen.map(\.value)
        streamGroup = settings.streamGroup
        encapsulation = settings.encapsulation
        vni = settings.vni
        acceptsPeers = settings.acceptPeers
        keyFile = settings.keyFile
        seed = settings.seed ?? UInt64.random(in: 0...UInt64.max)
        seedGiven = settings.seed != nil
        maximumPeers = settings.maxPeers
        peerTimeout = duration(settings.peerTimeout)
        pathMTUExpiry = duration(settings.pathMTUExpiry)
        splitHorizon = !settings.noSplitHorizon
        offload = settings.offload
        mirror = settings.mirrorOptions
        self.name = name
        controlPath = settings.control
        controlGroup = settings.controlGroup
        controlAdminGroup = settings.controlAdminGroup
        statsInterval = settings.statsInterval.map(duration)
        busyPoll = settings.busyPoll
        user = settings.user?.value
        self.version = version
    }
}
