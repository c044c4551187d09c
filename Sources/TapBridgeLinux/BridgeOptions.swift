public import TapBridgeCore
public import TapBridgePcap

extension BridgeDaemon {
    /// Everything the command line says.
    public struct Options: Sendable {
        public var ports: [PortSpec]
        public var remotes: [RemoteSpec] = []
        /// `nil`: all addresses, on the first remote's port.
        public var listen: ListenSpec? = nil
        /// Default encapsulation and VNI for remotes that do not say.
        public var encapsulation: Encapsulation = .vxlan
        public var vni = VNI(1)!
        /// Let unknown senders become remotes (up to `maximumPeers`, dropped after
        /// `peerTimeout` of silence).
        public var acceptsPeers = false
        public var maximumPeers = 64
        public var peerTimeout: Duration = .seconds(300)
        /// Never forward between two remotes (default on).
        public var splitHorizon = true
        /// Offloads on TAP and packet ports (`--offload`), unless a port says otherwise.
        public var offload = true
        /// Mirroring (`--mirror*`), or nil.
        public var mirror: MirrorOptions? = nil
        /// The bridge's name (`--name`): names its control socket and its metrics.
        public var name = "tapbridge"
        /// The control socket (`--control`); nil: `/run/tapbridge/NAME.sock`; "none": off.
        public var controlPath: String? = nil
        /// Group allowed to use the control socket (mode 0660 instead of 0600).
        public var controlGroup: String? = nil
        /// Log a one-line summary this often (`--stats-interval`), or nil.
        public var statsInterval: Duration? = nil
        /// The version reported by `show stats`.
        public var version = ""
        public var bridge: Bridge.Configuration

        public init(ports: [PortSpec], bridge: Bridge.Configuration = .init()) {
            self.ports = ports
            self.bridge = bridge
        }
    }
}
