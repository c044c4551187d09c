/// Which ports of the flood list a flooded frame goes to.
enum FloodScope: Equatable {
    /// All of them (broadcast, unknown unicast, multicast that is not snooped or to a group
    /// nobody joined).
    case all
    /// The group's members and the multicast router ports.
    case group(MulticastSnooping.Key)
    /// The multicast router ports only (a membership report or leave).
    case routers
}

extension Bridge {
    /// Where multicast `frame` in `vlan` goes, and what IGMP/MLD snooping learns from it, as
    /// the kernel's `br_multicast_rcv` and `br_handle_frame_finish` decide (checked against it
    /// frame by frame: `MulticastKernelTests.theKernelBridgeDecidesTheSame`): nothing is
    /// narrowed while no querier is known for the VLAN and IP version. Ports with
    /// `multicast=flood` get every multicast frame, as without snooping.
    @inline(__always)
    func multicast(_ frame: UnsafeRawBufferPointer, _ header: EthernetHeader, vlan: VLANID, from ingress: PortID, at now: Instant) -> ForwardingDecision {
        guard snooping.configuration.isEnabled, !header.destination.isBroadcast else { return .flood(vlan: vlan) }
        let t = now.nanoseconds
        snoopClock = t
        switch MulticastFrame.parse(frame, l3: header.length, etherType: header.etherType) {
        case .flood:
            break
        case .data(let group):
            // with a querier: a known group to its members and the routers, an unknown one to
            // the routers only (the kernel's mrouters_only for every group it does not leave
            // alone); without one, everywhere
            guard snooping.hasQuerier(vlan, v6: group.isV6, now: t) else { break }
            let key = MulticastSnooping.Key(vlan: vlan, group: group)
            floodScope = snooping.isRegistered(key, now: t) ? .group(key) : .routers
        case .query(let v6, let group, let maxResponse):
            snooping.heardRouter(on: ingress, vlan: vlan, maxResponse: maxResponse, v6: v6, now: t)
            if let group { snooping.heardGroupQuery(.init(vlan: vlan, group: group), maxResponse: maxResponse, now: t) }
        case .router(let v6):
            snooping.heardRouter(on: ingress, vlan: vlan, maxResponse: nil, v6: v6, now: t)
        case .igmp(let at, let length):
            if !MulticastFrame.records(igmp: frame, at: at, length: length, { learn($0, $1, vlan: vlan, port: ingress, now: t) }) {
                return malformedMulticast(ingress)
            }
            // v1/v2 reports (sent to the group) go to the routers; v3 reports and leaves
            // (to 224.0.0.22 and .2) are flooded, as the kernel does
            if frame[at] == 0x12 || frame[at] == 0x16, snooping.hasQuerier(vlan, v6: false, now: t) { floodScope = .routers }
        case .mld(let at, let length):
            if !MulticastFrame.records(mld: frame, at: at, length: length, { learn($0, $1, vlan: vlan, port: ingress, now: t) }) {
                return malformedMulticast(ingress)
            }
            // MLDv1 reports go to the routers; v2 reports and dones are flooded
            if frame[at] == 131, snooping.hasQuerier(vlan, v6: true, now: t) { floodScope = .routers }
        case .malformed:
            return malformedMulticast(ingress)
        }
        return .flood(vlan: vlan)
    }

    func learn(_ group: GroupAddress, _ joined: Bool, vlan: VLANID, port: PortID, now: Int64) {
        let key = MulticastSnooping.Key(vlan: vlan, group: group)
        if joined { snooping.join(key, port: port, now: now) } else { snooping.leave(key, port: port, now: now) }
    }

    func malformedMulticast(_ ingress: PortID) -> ForwardingDecision {
        snooping.statistics.malformed &+= 1
        return .drop(.malformedMulticast)
    }

    /// Whether the frame being flooded (`floodScope` not `.all`) goes out of `port`.
    @inline(__always)
    func snooped(_ port: PortID, vlan: VLANID) -> Bool {
        if ports[port.index].configuration.multicastFlood { return true }
        // (an expired membership or router port has been dropped by `isRegistered`, or ends
        // within this frame: `wants` compares with the last decision's clock)
        switch floodScope {
        case .all: return true
        case .routers: return snooping.wants(port, key: nil, vlan: vlan, now: snoopClock)
        case .group(let key): return snooping.wants(port, key: key, vlan: vlan, now: snoopClock)
        }
    }

    /// The bridge's own querier sent its first query at `now` (see `MulticastSnooping`).
    public func startQuerying(at now: Instant) {
        snooping.startQuerying(now: now, maxResponse: MulticastQuerier.responseTime)
    }

    /// The memberships and router ports now (`show mdb`).
    public func multicastListing(at now: Instant) -> (groups: [(key: MulticastSnooping.Key, port: PortID, seconds: Double)], routers: [(vlan: VLANID, port: PortID, seconds: Double)]) {
        snooping.listing(now: now)
    }
}
