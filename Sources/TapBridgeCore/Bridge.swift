/// The learning switch: validates each frame, learns its source, decides where it goes.
///
/// `decide` follows the Linux bridge's order (`br_handle_frame`, `br_handle_frame_finish`):
/// ```
///  frame ─► size ─► header ─► source valid? ─► link-local? ─► VLAN ingress ─► learn
///              │        │           │               │           filter          │
///            runt/   truncated   invalid        link-local   vlan/untagged      ▼
///           oversized   tag      source          control     not allowed   hub? ─► flood
///                                                                              │
///     multicast ─► snooping (members, routers; unknown: all) ─► flood ◄── unknown ◄── lookup ◄──┘
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
        /// IGMP and MLD snooping (`MulticastSnooping`).
        public var multicast = MulticastSnooping.Configuration()

        public init(
            table: ForwardingTable.Configuration = .init(), isHub: Bool = false, forwardsLinkLocal: Bool = false,
            vlanProtocol: UInt16 = VLANTag.customerTagProtocol, maximumFrameLength: Int = 65_557, loopProtect: Bool = true,
            multicast: MulticastSnooping.Configuration = .init()
        ) {
            self.multicast = multicast
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
    @exclusivity(unchecked) public internal(set) var table: ForwardingTable
    @exclusivity(unchecked) var ports: [PortState] = []
    /// IGMP/MLD snooping's groups, router ports and counters.
    @exclusivity(unchecked) public internal(set) var snooping: MulticastSnooping
    /// Which of the flood list the frame being decided goes to (set by `decide`, read by
    /// `forEachFloodPort` for that frame).
    var floodScope = FloodScope.all
    /// The clock of the last multicast decision (what `forEachFloodPort` compares with).
    var snoopClock: Int64 = 0
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
        snooping = MulticastSnooping(configuration: configuration.multicast)
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
        snooping.remove(port)
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
        snooping.expire(now: now.nanoseconds)
        guard loopStatistics.portsBlocked > 0 else { return n }
        for port in activePorts {
            guard let until = ports[port.index].blockedUntil, until <= now else { continue }
            ports[port.index].blockedUntil = nil
            loopStatistics.portsBlocked &-= 1
            loopHandler?(.unblocked(port))
        }
        return n
    }

    /// When `expire(at:)` next has work to do, or `nil`.
    /// (Blocked ports are looked for only while there are some: a wake-up does not walk the
    /// ports.)
    public var nextDeadline: Instant? {
        var next = table.nextExpiry
        if let t = snooping.nextExpiry { next = min(next ?? Instant(nanoseconds: t), Instant(nanoseconds: t)) }
        guard loopStatistics.portsBlocked > 0 else { return next }
        let unblock = activePorts.compactMap { ports[$0.index].blockedUntil }.min()
        guard let expiry = next else { return unblock }
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
        floodScope = .all
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
        if header.destination.isMulticast { return multicast(frame, header, vlan: vlan, from: ingress, at: now) }
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
        let narrowed = floodScope != .all  // (asked once per frame, not per port)
        for port in activePorts where port != ingress {
            guard ports[port.index].configuration.flooding, ports[port.index].members.contains(vlan), ports[port.index].blockedUntil == nil else { continue }
            if narrowed, !snooped(port, vlan: vlan) { continue }
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
