/// What the bridge decided for one frame.
public enum ForwardingDecision: Equatable, Sendable {
    /// Send to exactly this port, in `vlan`.
    case unicast(PortID, vlan: VLANID)
    /// Send to every port carrying `vlan` that accepts flooding, except the ingress port.
    case flood(vlan: VLANID)
    /// Deliver nowhere (already counted).
    case drop(DropReason)
}

/// How a frame must leave a port.
public enum EgressTagging: Equatable, Sendable {
    /// Without a VLAN tag (access port, or a trunk's native VLAN).
    case untagged
    /// With a tag for the frame's VLAN.
    case tagged
}

/// Per-port settings.
public struct PortConfiguration: Sendable, Equatable {
    /// VLAN membership; default access port in VLAN 1.
    public var vlanMode: VLANMode = .access(.default)
    /// Learn source MACs seen on this port (default on).
    public var learning = true
    /// Accept flooded frames: unknown unicast, broadcast, multicast (default on).
    public var flooding = true
    /// Split-horizon group: frames are never forwarded between two ports of the same non-zero
    /// group (flooded or unicast). 0 (default) is no group. tapbridge puts a remote in group 1
    /// (`horizon=mesh`, the default for VXLAN), in none (`off`, the default for raw), or in the
    /// group its `horizon=N` names.
    public var splitHorizonGroup: UInt16 = 0
    /// Storm control: the most flooded frames (broadcast, multicast, unknown unicast) a second
    /// taken from this port, in bursts of a tenth of that (at least 10); the rest are dropped
    /// as `storm_control`. nil (default): no limit.
    public var stormLimit: Int? = nil
    /// Every multicast frame goes to this port, whatever IGMP/MLD snooping learned
    /// (`multicast=flood`; default off: only the groups its hosts joined, and the unknown ones).
    public var multicastFlood = false

    public init(vlanMode: VLANMode = .access(.default), learning: Bool = true, flooding: Bool = true, splitHorizonGroup: UInt16 = 0,
                stormLimit: Int? = nil, multicastFlood: Bool = false) {
        self.multicastFlood = multicastFlood
        self.vlanMode = vlanMode
        self.learning = learning
        self.flooding = flooding
        self.splitHorizonGroup = splitHorizonGroup
        self.stormLimit = stormLimit
    }
}
