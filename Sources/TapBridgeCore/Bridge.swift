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
        case .truncated: "truncated"
        case .stormControl: "storm_control"
        case .loopBlocked: "loop_blocked"
        case .offloadMalformed: "offload_malformed"
        case .offloadUnsupported: "offload_unsupported"
        case .offloadTinySegments: "offload_tiny_segments"
        }
    }
}

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

    public init(vlanMode: VLANMode = .access(.default), learning: Bool = true, flooding: Bool = true, splitHorizonGroup: UInt16 = 0,
                stormLimit: Int? = nil) {
        self.vlanMode = vlanMode
        self.learning = learning
        self.flooding = flooding
        self.splitHorizonGroup = splitHorizonGroup
        self.stormLimit = stormLimit
    }
}

/// Counters of one port. Bytes are whole Ethernet frames without FCS.
public struct PortCounters: Equatable, Sendable {
    public var receivedFrames: UInt64 = 0
    public var receivedBytes: UInt64 = 0
    public var transmittedFrames: UInt64 = 0
    public var transmittedBytes: UInt64 = 0
    /// Frames whose partial checksum tapbridge completed before sending them out of this port
    /// (or, on a remote, on receive: inner checksums a same-host VTEP left partial).
    public var checksumsCompleted: UInt64 = 0
    /// Super-frames cut into segments for this port (each segment counts as a transmitted frame).
    public var framesSegmented: UInt64 = 0
    /// Super-frames handed whole to this port, which takes them (each counts as its segments
    /// in `transmittedFrames`, as it will be on the wire).
    public var superFramesPassed: UInt64 = 0
    /// TCP SYNs whose MSS was lowered on their way out of this port, to fit the narrower of
    /// the two links they crossed (`ForwardingEngine.fitToPath`).
    public var mssClamped: UInt64 = 0
    /// Drops by `DropReason.rawValue`.
    public var drops: [UInt64] = Array(repeating: 0, count: DropReason.allCases.count)

    public init() {}
    /// Drops for one reason.
    public subscript(reason: DropReason) -> UInt64 { drops[reason.rawValue] }
    /// Drops for all reasons.
    public var totalDrops: UInt64 { drops.reduce(0, &+) }

    /// Adds `other`'s counts to these (a port's counts from before it went absent).
    public mutating func add(_ other: PortCounters) {
        for c in Self.counters { self[keyPath: c.field] &+= other[keyPath: c.field] }
        for k in drops.indices where k < other.drops.count { drops[k] &+= other.drops[k] }
    }
}

extension PortCounters: CounterOwner {
    public static let counters: [Counter<PortCounters>] = [
        .init("rx_frames", \.receivedFrames, "Frames received on a port."),
        .init("rx_bytes", \.receivedBytes, "Bytes received on a port."),
        .init("tx_frames", \.transmittedFrames, "Frames sent out of a port."),
        .init("tx_bytes", \.transmittedBytes, "Bytes sent out of a port."),
        .init("checksums_completed", \.checksumsCompleted, "Partial checksums (offloaded by the sender) completed for a port."),
        .init("frames_segmented", \.framesSegmented, "Super-frames (GSO) cut into segments for a port."),
        .init("super_frames_passed", \.superFramesPassed, "Super-frames (GSO) handed whole to a port that takes them."),
        .init("mss_clamped", \.mssClamped, "TCP SYNs whose MSS was lowered to fit the narrower link between their ingress and this port."),
    ]

    /// Drops by reason name, only the reasons with a count: `drops` in `show ports`.
    public var dropsByName: [String: UInt64] {
        var out: [String: UInt64] = [:]
        for reason in DropReason.allCases where self[reason] > 0 { out["\(reason)"] = self[reason] }
        return out
    }

    private enum DropsKey: String, CodingKey { case drops }

    public init(from decoder: any Decoder) throws {
        self.init()
        try decodeCounters(from: decoder)
        let byName = try decoder.container(keyedBy: DropsKey.self).decodeIfPresent([String: UInt64].self, forKey: .drops) ?? [:]
        for reason in DropReason.allCases { drops[reason.rawValue] = byName["\(reason)"] ?? 0 }
    }

    public func encode(to encoder: any Encoder) throws {
        try encodeCounters(to: encoder)
        var container = encoder.container(keyedBy: DropsKey.self)
        try container.encode(dropsByName, forKey: .drops)
    }
}

/// The learning switch: validates each frame, learns its source, decides where it goes.
///
/// `decide` follows the Linux bridge's order (`br_handle_frame`, `br_handle_frame_finish`):
/// ```
///  frame ─► size ─► header ─► source valid? ─► link-local? ─► VLAN ingress ─► learn
///              │        │           │               │           filter          │
///            runt/   truncated   invalid        link-local   vlan/untagged      ▼
///           oversized   tag      source          control     not allowed   hub? ─► flood
///                                                                              │
///                       multicast/broadcast ─► flood ◄── unknown ◄── lookup ◄──┘
///                                                                   │      │
///                                              same port ─► drop ◄──┘      └─► unicast
/// ```
/// The bridge imports nothing and reads no clock: `now` is an argument.
public final class Bridge {
    /// Frames split horizon kept from a port: copies of flooded frames not sent to a port of
    /// the ingress port's group, and unicast frames dropped for it (also counted per port as
    /// `split_horizon`). For `show stats`.
    public internal(set) var horizonWithheld: UInt64 = 0
    /// Bridge-wide settings.
    public struct Configuration: Sendable, Equatable {
        /// The forwarding database's ageing time and limits.
        public var table = ForwardingTable.Configuration()
        /// Flood every frame and learn nothing (a hub), for debugging. VLANs, validity checks and
        /// port flooding flags still apply.
        public var isHub = false
        /// Forward IEEE link-local control frames (01:80:c2:00:00:0X) like multicast.
        public var forwardsLinkLocal = false
        /// The tag protocol that carries VLANs: 0x8100 (802.1Q, default) or 0x88a8 (802.1ad).
        /// Frames tagged with the other protocol are treated as untagged.
        public var vlanProtocol: UInt16 = VLANTag.customerTagProtocol
        /// Longest frame accepted, in bytes without FCS. Default 65,557: the largest IPv4 packet
        /// a GSO/TSO TAP can hand over (65,535) plus an Ethernet header with two tags (22).
        public var maximumFrameLength = 65_557
        /// When a loop is found (see `LoopWatch`), block the port of the two with the higher
        /// number (the one added later) for `loopBlockTime`; then it is tried again. Off: the
        /// loop is only reported.
        public var loopProtect = true
        public var loopBlockTime: Duration = .seconds(10)

        public init(
            table: ForwardingTable.Configuration = .init(), isHub: Bool = false, forwardsLinkLocal: Bool = false,
            vlanProtocol: UInt16 = VLANTag.customerTagProtocol, maximumFrameLength: Int = 65_557, loopProtect: Bool = true
        ) {
            self.table = table
            self.isHub = isHub
            self.forwardsLinkLocal = forwardsLinkLocal
            self.vlanProtocol = vlanProtocol
            self.maximumFrameLength = maximumFrameLength
            self.loopProtect = loopProtect
        }
    }

    struct PortState {
        var isActive = false
        var configuration = PortConfiguration()
        var members = VLANSet()
        var untaggedVLAN: VLANID? = nil
        var counters = PortCounters()
        /// Storm control's bucket: flooded frames it may still take, as of `stormRefilled`.
        var stormTokens = 0.0
        var stormRefilled: Instant? = nil  // nil: full (the first flooded frame)
        /// Blocked by loop protection until then (nil: not blocked).
        var blockedUntil: Instant? = nil
    }

    /// Loops found, ports blocked for them, and ports blocked now.
    public internal(set) var loopStatistics = LoopStatistics()
    /// Told of each loop found (at most once per pair of ports per `loopBlockTime`), and of
    /// each port unblocked: the daemon logs them.
    public var loopHandler: ((LoopReport) -> Void)? = nil
    var loopWatch = LoopWatch()
    var echoWatch = EchoWatch()

    /// What the bridge did that an operator may want to watch (`--log-level debug`, `trace`).
    public enum Event: Sendable, Equatable {
        /// A new MAC table entry.
        case learned(MACAddress, vlan: VLANID, port: PortID)
        /// An entry moved to another port (a station moved, or a loop).
        case moved(MACAddress, vlan: VLANID, from: PortID, to: PortID)
        /// An entry the table would not take (full of static entries, or the move was damped).
        case refused(MACAddress, vlan: VLANID, port: PortID, ForwardingTable.Refusal)
        /// A unicast frame to a MAC nobody has been seen with in its VLAN, flooded.
        case unknownDestination(MACAddress, vlan: VLANID, from: PortID)
        /// Entries that aged out in one sweep.
        case expired(count: Int)
    }

    /// Told of every `Event` while set (nil: nothing is reported, and it costs nothing).
    public var eventHandler: ((Event) -> Void)? = nil

    public let configuration: Configuration
    // The bridge is used from one thread (the event loop); dynamic exclusivity checks on these
    // two properties cost ~30 % of a decision, so they are off (`@exclusivity(unchecked)`).
    /// The forwarding database.
    @exclusivity(unchecked) public private(set) var table: ForwardingTable
    @exclusivity(unchecked) var ports: [PortState] = []
    /// Active ports in ascending order: the flood list.
    public private(set) var activePorts: [PortID] = []
    /// No port slot below this one is free.
    var lowestFree = 0

    /// Where `port` is, or would go, in the sorted `activePorts` (binary search).
    func insertionPoint(of port: PortID) -> Int {
        if activePorts.last.map({ $0 < port }) ?? true { return activePorts.count }
        var (low, high) = (0, activePorts.count)
        while low < high {
            let middle = (low + high) / 2
            if activePorts[middle] < port { low = middle + 1 } else { high = middle }
        }
        return low
    }

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        table = ForwardingTable(configuration: configuration.table)
    }

    // MARK: Ports

    /// Adds a port and returns its ID (the lowest free one).
    @discardableResult
    public func addPort(_ configuration: PortConfiguration = PortConfiguration()) -> PortID {
        // the lowest free ID (none below `lowestFree`), so that adding N ports costs N
        var slot = lowestFree
        while slot < ports.count, ports[slot].isActive { slot += 1 }
        if slot == ports.count { ports.append(PortState()) }
        precondition(slot <= Int(UInt16.max), "too many ports")
        lowestFree = slot + 1
        let id = PortID(UInt16(slot))
        ports[slot] = PortState(isActive: true)
        activePorts.insert(id, at: insertionPoint(of: id))
        reconfigure(id, configuration)
        return id
    }

    /// Removes a port and every FDB entry pointing to it, static ones included.
    public func removePort(_ port: PortID) {
        guard isActive(port) else { return }
        if ports[port.index].blockedUntil != nil { loopStatistics.portsBlocked &-= 1 }
        ports[port.index].isActive = false
        lowestFree = min(lowestFree, port.index)
        let at = insertionPoint(of: port)
        if at < activePorts.count, activePorts[at] == port { activePorts.remove(at: at) }
        table.flush(port: port, includingStatic: true)
    }

    /// Changes a port's settings. Learned entries stay; those in VLANs the port left are flushed.
    public func reconfigure(_ port: PortID, _ configuration: PortConfiguration) {
        guard isActive(port) else { return }
        let old = ports[port.index].members
        ports[port.index].configuration = configuration
        ports[port.index].members = configuration.vlanMode.members
        ports[port.index].untaggedVLAN = configuration.vlanMode.untaggedVLAN
        for v in old where !configuration.vlanMode.members.contains(v) {
            table.flush(port: port, vlan: v, includingStatic: true)
        }
        if !configuration.learning { table.flush(port: port) }
    }

    /// Whether `port` exists.
    public func isActive(_ port: PortID) -> Bool { port.index < ports.count && ports[port.index].isActive }

    /// A port's settings.
    public func configuration(of port: PortID) -> PortConfiguration? {
        isActive(port) ? ports[port.index].configuration : nil
    }

    /// A port's counters (kept until the port is removed).
    public func counters(of port: PortID) -> PortCounters {
        port.index < ports.count ? ports[port.index].counters : PortCounters()
    }

    // MARK: Table access

    /// Pins `mac` to `port` in `vlan` (never ages, never moves). `false` if the port does not
    /// exist, is not a member of the VLAN, or the table is full of static entries.
    @discardableResult
    public func addStaticEntry(_ mac: MACAddress, on port: PortID, vlan: VLANID = .default) -> Bool {
        guard isActive(port), ports[port.index].members.contains(vlan), !mac.isMulticast else { return false }
        return table.addStatic(mac, on: port, vlan: vlan)
    }

    /// Removes an entry, static or learned.
    @discardableResult
    public func removeEntry(_ mac: MACAddress, vlan: VLANID = .default) -> Bool { table.remove(mac, vlan: vlan) }

    /// Flushes learned entries (and static ones if asked) matching the criteria; returns how many.
    @discardableResult
    public func flush(port: PortID? = nil, vlan: VLANID? = nil, includingStatic: Bool = false) -> Int {
        table.flush(port: port, vlan: vlan, includingStatic: includingStatic)
    }

    /// One slice of a flush (see `ForwardingTable.flush(from:positions:port:vlan:includingStatic:)`).
    public func flush(from start: Int, positions: Int, port: PortID? = nil, vlan: VLANID? = nil, includingStatic: Bool = false) -> (removed: Int, next: Int?) {
        table.flush(from: start, positions: positions, port: port, vlan: vlan, includingStatic: includingStatic)
    }

    /// Removes aged-out entries and unblocks ports whose loop block is over; call when
    /// `nextDeadline` has passed.
    @discardableResult
    public func expire(at now: Instant) -> Int {
        let n = table.expire(at: now)
        if n > 0 { eventHandler?(.expired(count: n)) }
        for port in activePorts {
            guard let until = ports[port.index].blockedUntil, until <= now else { continue }
            ports[port.index].blockedUntil = nil
            loopStatistics.portsBlocked &-= 1
            loopHandler?(.unblocked(port))
        }
        return n
    }

    /// When `expire(at:)` next has work to do, or `nil`.
    public var nextDeadline: Instant? {
        let unblock = activePorts.compactMap { ports[$0.index].blockedUntil }.min()
        guard let expiry = table.nextExpiry else { return unblock }
        return unblock.map { min($0, expiry) } ?? expiry
    }

    // MARK: The decision

    /// Decides where `frame`, received on `ingress` at `now`, goes; learns its source and counts
    /// it (received bytes, or the drop reason) on `ingress`. `wireFrames`: the frames it stands
    /// for on the wire (a super-frame: its segments), counted as received frames.
    public func decide(_ frame: UnsafeRawBufferPointer, from ingress: PortID, at now: Instant, wireFrames: Int = 1) -> ForwardingDecision {
        let p = ingress.index
        guard p < ports.count, ports[p].isActive else { return .drop(.portRemoved) }
        ports[p].counters.receivedFrames &+= UInt64(wireFrames)
        ports[p].counters.receivedBytes &+= UInt64(frame.count)
        var decision = classify(frame, ingress, now)
        if case .flood = decision, let limit = ports[p].configuration.stormLimit, !takeStormToken(p, limit: limit, now: now) {
            decision = .drop(.stormControl)
        }
        if case .flood = decision, watchEcho(frame, from: ingress, at: now) { decision = .drop(.loopBlocked) }
        if case .drop(let reason) = decision { ports[p].counters.drops[reason.rawValue] &+= 1 }
        return decision
    }

    @inline(__always)
    func classify(_ frame: UnsafeRawBufferPointer, _ ingress: PortID, _ now: Instant) -> ForwardingDecision {
        guard let header = EthernetHeader(frame) else { return .drop(.runt) }
        if ports[ingress.index].blockedUntil != nil { return .drop(.loopBlocked) }
        if frame.count > configuration.maximumFrameLength { return .drop(.oversized) }
        if header.isTruncated { return .drop(.truncatedTag) }
        if !header.source.isValidSource { return .drop(.invalidSource) }
        if header.destination.isLinkLocalControl, !configuration.forwardsLinkLocal {
            return .drop(.linkLocalControl)
        }
        let p = ingress.index
        let vlan: VLANID
        if let tag = header.outerTag, tag.tagProtocol == configuration.vlanProtocol, tag.vlan.rawValue != 0 {
            if tag.vlan.rawValue == 0xFFF { return .drop(.invalidVLAN) }
            guard ports[p].members.contains(tag.vlan) else { return .drop(.vlanNotAllowed) }
            vlan = tag.vlan
        } else {
            guard let untagged = ports[p].untaggedVLAN else { return .drop(.untaggedNotAllowed) }
            vlan = untagged
        }
        if configuration.isHub { return .flood(vlan: vlan) }
        if ports[p].configuration.learning {
            let outcome = table.learn(header.source, on: ingress, vlan: vlan, at: now)
            if case .moved(let from) = outcome { watchMove(from: from, to: ingress, mac: header.source, at: now) }
            if let eventHandler {
                switch outcome {
                case .learned: eventHandler(.learned(header.source, vlan: vlan, port: ingress))
                case .moved(let from): eventHandler(.moved(header.source, vlan: vlan, from: from, to: ingress))
                case .refused(let why): eventHandler(.refused(header.source, vlan: vlan, port: ingress, why))
                case .refreshed, .ignored: break
                }
            }
        }
        if header.destination.isMulticast { return .flood(vlan: vlan) }
        guard let egress = table.lookup(header.destination, vlan: vlan, at: now) else {
            eventHandler?(.unknownDestination(header.destination, vlan: vlan, from: ingress))
            return .flood(vlan: vlan)
        }
        if egress == ingress { return .drop(.sameSegment) }
        if egress.index < ports.count, ports[egress.index].blockedUntil != nil { return .drop(.loopBlocked) }
        let group = ports[p].configuration.splitHorizonGroup
        if group != 0, egress.index < ports.count, ports[egress.index].configuration.splitHorizonGroup == group {
            horizonWithheld &+= 1
            return .drop(.splitHorizon)
        }
        return .unicast(egress, vlan: vlan)
    }

    // MARK: Egress

    /// How a frame in `vlan` leaves `port`: `nil` if the port does not exist or does not carry it.
    @inline(__always)
    public func egressTagging(of port: PortID, vlan: VLANID) -> EgressTagging? {
        guard port.index < ports.count else { return nil }
        guard ports[port.index].isActive, ports[port.index].members.contains(vlan) else { return nil }
        return ports[port.index].untaggedVLAN == vlan ? .untagged : .tagged
    }

    /// Calls `body` for every port a flooded frame in `vlan` from `ingress` goes to (flooding on,
    /// member of the VLAN, not in the ingress port's split-horizon group), in ascending order. Returns how many ports that was.
    /// `countWithheld`: count the ports the horizon kept the frame from in `horizonWithheld`
    /// (once per frame: a second walk over the same flood passes false).
    @inline(__always) @discardableResult
    public func forEachFloodPort(vlan: VLANID, excluding ingress: PortID, countWithheld: Bool = true, _ body: (PortID, EgressTagging) -> Void) -> Int {
        var n = 0
        let group = ingress.index < ports.count ? ports[ingress.index].configuration.splitHorizonGroup : 0
        for port in activePorts where port != ingress {
            guard ports[port.index].configuration.flooding, ports[port.index].members.contains(vlan), ports[port.index].blockedUntil == nil else { continue }
            if group != 0, ports[port.index].configuration.splitHorizonGroup == group {
                if countWithheld { horizonWithheld &+= 1 }
                continue
            }
            body(port, ports[port.index].untaggedVLAN == vlan ? .untagged : .tagged)
            n += 1
        }
        return n
    }

    /// Counts `frames` frames (default one) of `bytes` bytes in all delivered to `port`.
    @inline(__always)
    public func countTransmit(on port: PortID, bytes: Int, frames: Int = 1) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.transmittedFrames &+= UInt64(frames)
        ports[port.index].counters.transmittedBytes &+= UInt64(bytes)
    }

    /// Counts something a device received on `port` and dropped before the bridge saw it (it
    /// counts as received, like a frame the bridge drops).
    public func countReceiveDrop(on port: PortID, _ reason: DropReason, bytes: Int = 0) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.receivedFrames &+= 1
        ports[port.index].counters.receivedBytes &+= UInt64(bytes)
        ports[port.index].counters.drops[reason.rawValue] &+= 1
    }

    /// Counts a checksum completed for `port`.
    @inline(__always)
    public func countChecksumCompleted(on port: PortID) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.checksumsCompleted &+= 1
    }

    /// Counts a super-frame segmented for `port`.
    @inline(__always)
    public func countSegmented(on port: PortID) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.framesSegmented &+= 1
    }

    /// Counts a SYN whose MSS was clamped on its way to `port`.
    @inline(__always)
    public func countMSSClamped(on port: PortID) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.mssClamped &+= 1
    }

    /// Counts a super-frame handed whole to `port`.
    @inline(__always)
    public func countSuperFramePassed(on port: PortID) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.superFramesPassed &+= 1
    }

    /// Counts `frames` drops (default one) for `reason` on `port`.
    @inline(__always)
    public func countDrop(on port: PortID, _ reason: DropReason, frames: Int = 1) {
        guard port.index < ports.count else { return }
        ports[port.index].counters.drops[reason.rawValue] &+= UInt64(frames)
    }
}

// MARK: Storms and loops

/// What loop protection found: a loop through two ports (and the port it blocked, if it did),
/// or a port unblocked once its time was over.
public enum LoopReport: Sendable, Equatable {
    case loop(PortID, PortID, moves: Int, blocked: PortID?)
    /// The same frame flooded from one port `repeats` times within `EchoWatch.window`: a loop
    /// that moves no MAC (`EchoWatch`).
    case echo(PortID, repeats: Int, blocked: PortID?)
    case unblocked(PortID)
}

/// Bridge-wide loop counters (`show stats`, section `loops`).
public struct LoopStatistics: Sendable, Equatable {
    /// Loops found: MACs moving back and forth between two ports many times a second, or one
    /// frame flooded again and again from one port (`EchoWatch`).
    public var detected: UInt64 = 0
    /// Times a port was blocked for one.
    public var blocks: UInt64 = 0
    /// Ports blocked now (a gauge).
    public var portsBlocked: UInt64 = 0
    public init() {}
    public init(detected: UInt64, blocks: UInt64, portsBlocked: UInt64) {
        self.detected = detected
        self.blocks = blocks
        self.portsBlocked = portsBlocked
    }
}

extension LoopStatistics: CounterOwner {
    public static let counters: [Counter<Self>] = [
        .init("detected", \.detected, "Loops found: MACs moving back and forth between two ports many times a second, or one frame flooded again and again from one port."),
        .init("blocks", \.blocks, "Times a port was blocked because of a loop (--loop-protect)."),
        .init("ports_blocked", \.portsBlocked, "Ports blocked by loop protection now.", gauge: true),
    ]
}

/// How a loop shows itself to a learning switch: the same sources seen on two ports in turn.
/// A station that moves does it once; in a loop (both ends of a veth bridged, two bridges
/// linked twice) every flooded frame comes back through the other port, and its source moves
/// between the two ports thousands of times a second. `moves` MAC moves between one pair of
/// ports within one `window` is a loop.
struct LoopWatch {
    static let moves = 8
    static let window: Duration = .seconds(1)
    /// The pair of ports (lower first) being watched, its moves and when its window began.
    var pair: (PortID, PortID)? = nil
    var count = 0
    var since = Instant(nanoseconds: 0)
    /// When each pair was last reported (one report per pair per block time).
    var reported: [UInt32: Instant] = [:]
}

extension Bridge {
    /// Storm control: takes a token from port `p`'s bucket (rate `limit` a second, burst a
    /// tenth of it, at least 10); false when it is empty.
    @inline(__always)
    func takeStormToken(_ p: Int, limit: Int, now: Instant) -> Bool {
        let burst = Double(max(limit / 10, 10))
        if let refilled = ports[p].stormRefilled {
            let elapsed = Double(now.nanoseconds &- refilled.nanoseconds) / 1e9
            ports[p].stormTokens = min(burst, ports[p].stormTokens + max(elapsed, 0) * Double(limit))
        } else {
            ports[p].stormTokens = burst
        }
        ports[p].stormRefilled = now
        guard ports[p].stormTokens >= 1 else { return false }
        ports[p].stormTokens -= 1
        return true
    }

    /// A MAC moved from `from` to `to`: counts it for the pair; enough in one window is a loop.
    func watchMove(from: PortID, to: PortID, mac: MACAddress, at now: Instant) {
        let pair = from < to ? (from, to) : (to, from)
        if let watched = loopWatch.pair, watched == pair, now.nanoseconds &- loopWatch.since.nanoseconds < LoopWatch.window.nanoseconds {
            loopWatch.count += 1
        } else {
            loopWatch.pair = pair
            loopWatch.count = 1
            loopWatch.since = now
        }
        guard loopWatch.count >= LoopWatch.moves else { return }
        let moves = loopWatch.count
        loopWatch.pair = nil
        let key = UInt32(pair.0.rawValue) << 16 | UInt32(pair.1.rawValue)
        var blocked: PortID? = nil
        if configuration.loopProtect, ports[pair.1.index].blockedUntil == nil {
            blocked = pair.1
            ports[pair.1.index].blockedUntil = Instant(nanoseconds: now.nanoseconds &+ configuration.loopBlockTime.nanoseconds)
            loopStatistics.blocks &+= 1
            loopStatistics.portsBlocked &+= 1
            // the entries the loop moved to either port may point the wrong way now
            table.flush(port: pair.0)
            table.flush(port: pair.1)
        }
        if let last = loopWatch.reported[key], now.nanoseconds &- last.nanoseconds < configuration.loopBlockTime.nanoseconds, blocked == nil { return }
        loopWatch.reported[key] = now
        loopStatistics.detected &+= 1
        loopHandler?(.loop(pair.0, pair.1, moves: moves, blocked: blocked))
    }
}
