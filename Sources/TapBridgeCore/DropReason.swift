/// Why a frame (or one copy of it) was not delivered. Every drop is counted on a port under one
/// of these reasons: ingress reasons on the port the frame came from, transmit reasons on the
/// port it was going to.
public enum DropReason: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// Shorter than an Ethernet header (14 bytes).
    case runt
    /// Longer than `Bridge.Configuration.maximumFrameLength`.
    case oversized
    /// A VLAN tag protocol announced a tag the frame is too short to hold.
    case truncatedTag
    /// Multicast, broadcast or all-zero source address.
    case invalidSource
    /// IEEE 802.1D link-local control frame (01:80:c2:00:00:0X), not forwarded by bridges.
    case linkLocalControl
    /// Tagged with the reserved VLAN ID 4095.
    case invalidVLAN
    /// Tagged with a VLAN the ingress port is not a member of.
    case vlanNotAllowed
    /// Untagged on a trunk port without a native VLAN.
    case untaggedNotAllowed
    /// The destination was learned on the ingress port: the frame needs no bridge.
    case sameSegment
    /// Known destination whose port does not carry the frame's VLAN or does not exist any more.
    case egressFiltered
    /// Flooded, but no other port carries the frame's VLAN.
    case noEgressPort
    /// Transmit: the port's link is down (EIO on a TAP).
    case linkDown
    /// Transmit: the port's queue was full (EAGAIN, ENOBUFS).
    case transmitQueueFull
    /// Transmit: the frame does not fit the port (larger than its MTU or a datagram).
    case frameTooLarge
    /// Transmit: any other error from the device.
    case transmitError
    /// Both ports are in the same split-horizon group (e.g. two remote peers): never forwarded
    /// between them, so a full mesh of bridges cannot loop.
    case splitHorizon
    /// Receive: a datagram whose encapsulation header is malformed (too short, flags wrong).
    case malformedEncapsulation
    /// Receive: a VXLAN (or sealed) datagram for another VNI.
    case vniMismatch
    /// Receive: a sealed datagram that failed authentication (wrong key, changed on the
    /// way, or forged); dropped before its frame is looked at.
    case unauthenticated
    /// Receive: a sealed datagram already received (a duplicate, a replay) or too old for the
    /// replay window, or from a session older than the clock allows.
    case replayed
    /// Receive: a sealed transport datagram under a receiver index this bridge has no session
    /// for with its sender (never had, or expired): dropped after one lookup, no cipher work.
    case unknownIndex
    /// Receive: a sealed handshake message whose `mac1` is wrong (its sender does not know
    /// this bridge's public key): dropped after one HMAC.
    case badMAC1
    /// Receive: a sealed initiation that came while the bridge was under load (many
    /// handshakes a second) without a valid `mac2`: answered with a cookie reply (two HMACs
    /// and a small encryption, no Diffie-Hellman), which its real sender puts in `mac2` of
    /// its next try.
    case cookieSent
    /// Receive: a sealed initiation with a valid cookie, under load, from an IP address that
    /// sent more than 20 a second (a burst of 5): dropped before any Diffie-Hellman, as
    /// WireGuard's rate limiter drops it.
    case handshakeRateLimited
    /// Receive: a sealed handshake initiation that is not newer than the last one taken from
    /// that peer (a replayed initiation), or a response to no handshake under way.
    case staleHandshake
    /// Receive: a datagram or frame larger than the receive buffer.
    case truncated
    /// Receive: a flooded frame (broadcast, multicast, unknown unicast) over the port's
    /// `storm=` limit.
    case stormControl
    /// A frame from or to a port blocked because a loop was found through it (`--loop-protect`).
    case loopBlocked
    /// Offload metadata that does not match the frame (checksum offsets outside it, a
    /// super-frame whose headers do not parse).
    case offloadMalformed
    /// A super-frame of a kind that cannot be segmented here (UDP fragmentation offload, an
    /// unknown GSO type).
    case offloadUnsupported
    /// A super-frame cut so fine that no real stack sends it (a TCP segment size under
    /// `OffloadFinisher.minimumTCPSegmentSize`, a UDP one of more than
    /// `OffloadFinisher.maximumUDPSegments` segments): refused at ingress, so one frame cannot
    /// make the switch send tens of thousands.
    case offloadTinySegments
    /// An IGMP or MLD message that does not parse or whose checksum is wrong: never trusted,
    /// never forwarded (`MulticastSnooping`).
    case malformedMulticast
    /// A multicast frame whose group's members and multicast routers are all behind the
    /// ingress port, or a membership report with no multicast router to go to: snooping keeps
    /// it from the other ports.
    case noListener
    /// A broadcast or multicast frame to many ports that found the bridge's flood backlog full
    /// (its writes were that far behind, `ForwardingEngine.backlogByteLimit`): counted on the
    /// port it came from.
    case floodBacklog
    /// Received on a port that was removed while its frames were on their way: counted on no
    /// port (there is none), only returned by `decide`.
    case portRemoved

    /// A stable snake_case name for logs, JSON and metrics.
    public var description: String {
        switch self {
        case .runt: "runt"
        case .oversized: "oversized"
        case .truncatedTag: "truncated_tag"
        case .invalidSource: "invalid_source"
        case .linkLocalControl: "link_local_control"
        case .invalidVLAN: "invalid_vlan"
        case .vlanNotAllowed: "vlan_not_allowed"
        case .untaggedNotAllowed: "untagged_not_allowed"
        case .sameSegment: "same_segment"
        case .egressFiltered: "egress_filtered"
        case .noEgressPort: "no_egress_port"
        case .linkDown: "link_down"
        case .transmitQueueFull: "transmit_queue_full"
        case .frameTooLarge: "frame_too_large"
        case .transmitError: "transmit_error"
        case .splitHorizon: "split_horizon"
        case .portRemoved: "port_removed"
        case .malformedEncapsulation: "malformed_encapsulation"
        case .vniMismatch: "vni_mismatch"
        case .unauthenticated: "unauthenticated"
        case .replayed: "replayed"
        case .unknownIndex: "unknown_index"
        case .badMAC1: "bad_mac1"
        case .cookieSent: "cookie_sent"
        case .handshakeRateLimited: "handshake_rate_limited"
        case .staleHandshake: "stale_handshake"
        case .truncated: "truncated"
        case .stormControl: "storm_control"
        case .loopBlocked: "loop_blocked"
        case .offloadMalformed: "offload_malformed"
        case .offloadUnsupported: "offload_unsupported"
        case .offloadTinySegments: "offload_tiny_segments"
        case .malformedMulticast: "malformed_multicast"
        case .noListener: "no_listener"
        case .floodBacklog: "flood_backlog"
        }
    }
}
