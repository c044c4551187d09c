/// Floods of group-addressed frames to many ports, sent a share at a time between reads.
///
/// A lab of 256 hosts coming up sends about 2,000 router solicitations, MLD reports and
/// duplicate-address probes, each written to 255 ports: half a million writes, about 0.6 s of
/// work. Done as each frame was read, that work sat between a ping and its turn: a ping
/// between two of the hosts waited up to 0.7 s, and the later bursts (solicitations repeated
/// every 4 s) cost other pings 5 to 15 ms (netbench `lab-256`). The kernel bridge copes by
/// dropping: its per-CPU backlog holds 1,000 frames.
///
/// So a flood of a group-addressed frame (broadcast, multicast) to `deferredFanOut` ports or
/// more is not written at once: the frame is copied into a backlog with the ports it goes to,
/// and the event loop sends a bounded share of the backlog each round (`drainBacklog(budget:)`),
/// after reading what is ready. Unicast frames are forwarded when read, so a frame between two
/// ports waits for at most one share, not the whole backlog. The backlog is served as
/// fq_codel serves its queues (`FloodBacklog`), so a host's first broadcast waits for few frames.
///
/// Order: 802.1D asks a bridge to keep the order of frames of one priority from one source to
/// one destination. Only group-addressed frames wait, so no unicast frame overtakes one to the
/// same address; a flow (one ingress device, one destination address) is sent in order, and
/// while a flow has frames waiting, its later frames wait too, whatever their fan-out. Unknown
/// unicast is flooded at once: a later frame to the same host, once learned, must not overtake
/// it. ARP frames are a class of their own (they may overtake other broadcasts of their host,
/// as a frame of a higher priority may).
///
/// Bounds: a device with `holdBackAt` frames in the backlog is not read until they are sent (its
/// frames wait in its own queue, as they do when the loop is slow); the backlog holds at most
/// `backlogByteLimit` bytes, and a flood that finds it full is dropped (`flood_backlog`), as the
/// kernel's backlog drops. A device whose last port leaves takes its queued frames with it. A
/// port removed while a frame waits for it is skipped, and so is a port added since (which may
/// have taken a removed one's ID).
struct DeferredFlood {
    /// The frame as read (its VLAN tag normalized for its first ports).
    var frame: [UInt8]
    var offload: FrameOffload
    var ingress: PortID
    /// The ingress device's slot (`ForwardingEngine.deviceSlots`).
    var slot: Int
    var vlan: VLANID
    /// The frames it stands for on the wire.
    var wire: Int
    /// Whether the frame carries a tag for `targets[..<firstCount]`; the rest get it the other way.
    var firstIsTagged: Bool
    var targets: [PortID]
    var firstCount: Int
    /// `ForwardingEngine.portAdditions` when it was queued: a port added later is skipped.
    var queuedAt: UInt64
    /// The next target to send to.
    var next = 0
}

/// What the flood backlog did (`show stats`, section `flood_backlog`).
public struct FloodBacklogStatistics: CounterOwner {
    public var deferred: UInt64 = 0
    public var dropped: UInt64 = 0
    public var waiting: UInt64 = 0
    public var waitingBytes: UInt64 = 0
    public var mostWaiting: UInt64 = 0

    public init() {}

    public static let counters: [Counter<Self>] = [
        Counter("deferred", \.deferred, "Broadcast and multicast frames to many ports that waited in the flood backlog, sent a share per loop round"),
        Counter("dropped", \.dropped, "Floods dropped because the backlog was full (flood_backlog on their ports)"),
        Counter("waiting", \.waiting, "Frames in the backlog now", gauge: true),
        Counter("waiting_bytes", \.waitingBytes, "Bytes of frames in the backlog now", gauge: true),
        Counter("most_waiting", \.mostWaiting, "The most frames the backlog held at once since start", gauge: true),
    ]
}

/// The frames of one ingress device to one destination address, in order.
struct FloodFlow {
    var key: UInt64
    var entries: [DeferredFlood] = []
    /// On the new list (served before the old), not yet moved to the old.
    var isNew = true
    /// ARP: on the urgent list.
    var isUrgent: Bool { key & FloodBacklog.urgentBit != 0 }
}

/// A queue of flow indices.
struct FlowQueue {
    var items: [Int] = []
    var head = 0
    var first: Int? { head < items.count ? items[head] : nil }
    mutating func push(_ flow: Int) { items.append(flow) }
    mutating func pop() {
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 256, head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}

/// The backlog: one flow per ingress device and destination address, served in turn as
/// fq_codel's scheduler (RFC 8290, section 4) serves its queues, without the dropping: a flow
/// that becomes active goes on the new list, served before the old list, so the first frame of
/// a host that was quiet waits for the other new flows, not for every frame queued before it.
/// A flow's turn is one frame (all its copies); then it goes to the end of the old list, even
/// when it is empty (leaving a flow that empties on the new list would let a sender that sends
/// one frame at a time be served first forever); an empty flow leaves when the old list comes
/// to it.
///
/// ARP flows have a list of their own, served every other turn while other flows wait: as a
/// whole lab comes up, a thousand flows are new at once, and a host's first ARP request (and so
/// the first unicast frame of every conversation) waited 0.3 s behind them; at every other
/// turn it waits for one frame. A host sending ARP floods takes half the turns, no more.
struct FloodBacklog {
    var statistics = FloodBacklogStatistics()
    var flows: [FloodFlow] = []
    var freeFlows: [Int] = []
    var flowsByKey: [UInt64: Int] = [:]
    var urgentFlows = FlowQueue()
    var newFlows = FlowQueue()
    var oldFlows = FlowQueue()
    /// The last turn was an urgent flow's (the next is another's, if one waits).
    var lastWasUrgent = false
    /// Frames queued, and their bytes.
    var count = 0
    var bytes = 0
    /// Frames queued per ingress device slot.
    var bySlot: [Int] = []

    var isEmpty: Bool { count == 0 }

    /// In a flow's key: the flow carries ARP.
    static let urgentBit: UInt64 = 1 << 63

    /// The flow of frames from the device in `slot` to `destination` (48 bits), ARP or not.
    static func key(slot: Int, destination: UInt64, urgent: Bool) -> UInt64 {
        UInt64(truncatingIfNeeded: slot & 0x7FFF) << 48 | destination | (urgent ? urgentBit : 0)
    }

    /// Whether the flow `key` has frames waiting.
    func isWaiting(_ key: UInt64) -> Bool { flowsByKey[key].map { !flows[$0].entries.isEmpty } ?? false }

    mutating func append(_ entry: DeferredFlood, key: UInt64) {
        while bySlot.count <= entry.slot { bySlot.append(0) }
        bySlot[entry.slot] += 1
        bytes += entry.frame.count
        count += 1
        statistics.deferred &+= 1
        statistics.mostWaiting = max(statistics.mostWaiting, UInt64(count))
        if let f = flowsByKey[key] {
            flows[f].entries.append(entry)
            return
        }
        let f: Int
        if let free = freeFlows.popLast() {
            f = free
            flows[f] = FloodFlow(key: key, entries: [entry])
        } else {
            f = flows.count
            flows.append(FloodFlow(key: key, entries: [entry]))
        }
        flowsByKey[key] = f
        if flows[f].isUrgent { urgentFlows.push(f) } else { newFlows.push(f) }
    }

    /// The flow whose turn it is, its head frame waiting (empty flows are moved on or leave
    /// on the way); nil if nothing waits.
    mutating func current() -> Int? {
        while true {
            if let f = urgentFlows.first, !lastWasUrgent || (newFlows.first == nil && oldFlows.first == nil) {
                if !flows[f].entries.isEmpty { return f }
                urgentFlows.pop()
                remove(f)
            } else if let f = newFlows.first {
                if !flows[f].entries.isEmpty { return f }
                newFlows.pop()
                flows[f].isNew = false
                oldFlows.push(f)
            } else if let f = oldFlows.first {
                if !flows[f].entries.isEmpty { return f }
                oldFlows.pop()
                remove(f)
            } else {
                return nil
            }
        }
    }

    mutating func remove(_ f: Int) {
        flowsByKey[flows[f].key] = nil
        flows[f] = FloodFlow(key: 0)
        freeFlows.append(f)
    }

    /// Flow `f` sent its head frame: its turn is over, it goes to the end of the old list.
    mutating func finishHead(of f: Int) {
        let entry = flows[f].entries.removeFirst()
        bySlot[entry.slot] -= 1
        bytes -= entry.frame.count
        count -= 1
        lastWasUrgent = flows[f].isUrgent
        if lastWasUrgent {
            urgentFlows.pop()
            urgentFlows.push(f)
            return
        }
        if flows[f].isNew {
            newFlows.pop()
            flows[f].isNew = false
        } else {
            oldFlows.pop()
        }
        oldFlows.push(f)
    }

    /// Forgets the frames of the device in `slot` (it left); its flows leave when their turn comes.
    mutating func purge(slot: Int) {
        guard slot < bySlot.count, bySlot[slot] > 0 else { return }
        for f in flows.indices where !flows[f].entries.isEmpty && flows[f].entries[0].slot == slot {
            count -= flows[f].entries.count
            bytes -= flows[f].entries.reduce(0) { $0 + $1.frame.count }
            flows[f].entries.removeAll()
        }
        bySlot[slot] = 0
    }
}

extension ForwardingEngine {
    /// Whether flooded frames wait to be sent (the event loop comes back at once to send them).
    public var hasBacklog: Bool { !backlog.isEmpty }

    /// Flooded frames waiting, and their bytes.
    public var backlogFrames: Int { backlog.count }
    public var backlogBytes: Int { backlog.bytes }

    /// What the backlog did, and what waits now.
    public var backlogStatistics: FloodBacklogStatistics {
        var s = backlog.statistics
        s.waiting = UInt64(backlog.count)
        s.waitingBytes = UInt64(backlog.bytes)
        return s
    }

    /// Whether `device` is not to be read now: it has `holdBackAt` frames in the backlog.
    public func isHeldBack(_ device: any PortDevice) -> Bool {
        guard !backlog.isEmpty, let slot = slotsByDevice[ObjectIdentifier(device)], slot < backlog.bySlot.count else { return false }
        return backlog.bySlot[slot] >= holdBackAt
    }

    /// The flow of flood `i` (to `floodTargets`) if it waits in the backlog instead of going
    /// out now: group-addressed and to many ports, or behind a frame of its flow that waits.
    @inline(__always)
    func deferredFlow(_ i: Int, from ingress: PortID) -> UInt64? {
        guard batch.frame(i)[0] & 1 != 0 else { return nil }  // unknown unicast: at once
        if floodTargets.count < deferredFanOut, backlog.isEmpty { return nil }
        let key = flowKey(i, from: ingress)
        return floodTargets.count >= deferredFanOut || backlog.isWaiting(key) ? key : nil
    }

    /// Frame `i`'s flow: its ingress device, its destination address, whether it is ARP.
    @inline(__always)
    func flowKey(_ i: Int, from ingress: PortID) -> UInt64 {
        let frame = batch.frame(i)
        var destination: UInt64 = 0
        for k in 0..<6 { destination = destination << 8 | UInt64(frame[k]) }
        var type = UInt16(frame[12]) << 8 | UInt16(frame[13])
        if type == bridge.configuration.vlanProtocol, frame.count >= 18 { type = UInt16(frame[16]) << 8 | UInt16(frame[17]) }
        return FloodBacklog.key(slot: deviceSlots[ingress.index], destination: destination, urgent: type == 0x0806)
    }

    /// Copies flood `i` into the backlog, in `flow`, with its ports (`floodTargets`, the first
    /// `firstCount` of them taking the frame as it is); dropped if the backlog is full.
    func deferFlood(_ i: Int, from ingress: PortID, flow: UInt64, vlan: VLANID, wire: Int, firstIsTagged: Bool, firstCount: Int) {
        let frame = batch.frame(i)
        guard backlog.bytes + frame.count <= backlogByteLimit else {
            backlog.statistics.dropped &+= 1
            bridge.countDrop(on: ingress, .floodBacklog)
            return
        }
        backlog.append(DeferredFlood(
            frame: Array(frame), offload: batch.offload(i), ingress: ingress, slot: deviceSlots[ingress.index], vlan: vlan,
            wire: wire, firstIsTagged: firstIsTagged, targets: floodTargets, firstCount: firstCount, queuedAt: portAdditions), key: flow)
    }

    /// Sends up to `budget` copies from the backlog, flow by flow (`FloodBacklog`); a frame may
    /// be left part sent, and resumes where it stopped. Uses the receive batch: call it between
    /// `service` calls, not during one. Returns the copies sent (or dropped).
    @discardableResult
    public func drainBacklog(budget: Int) -> Int {
        var done = 0
        var loaded = -1
        isFlooding = true
        defer { isFlooding = false }
        while done < budget, let f = backlog.current() {
            let entry = backlog.flows[f].entries[0]
            if loaded != f {
                load(entry)
                loaded = f
            }
            let end = entry.next + min(entry.targets.count - entry.next, budget - done)
            ingressMTU = entry.ingress.index < linkMTUs.count ? linkMTUs[entry.ingress.index] : 0
            let whole = sendFlood(0, entry.targets, firstCount: entry.firstCount, firstIsTagged: entry.firstIsTagged, vlan: entry.vlan,
                                  wire: entry.wire, from: entry.next, to: end, queuedAt: entry.queuedAt)
            done += end - entry.next
            if !whole || end == entry.targets.count {
                backlog.finishHead(of: f)
                loaded = -1
            } else {
                backlog.flows[f].entries[0].next = end
            }
        }
        flushDevices()
        return done
    }

    /// Puts `entry`'s frame in the batch (slot 0), tagged as its next port takes it.
    func load(_ entry: DeferredFlood) {
        batch.reset()
        entry.frame.withUnsafeBytes { batch.append($0, from: entry.ingress, offload: entry.offload) }
        // (its sending crossed the retag before: it succeeded then, and does again)
        if entry.next > entry.firstCount { _ = retag(0, firstIsTagged: entry.firstIsTagged, vlan: entry.vlan) }
    }

    /// Collects the ports a flood of `vlan` from `ingress` goes to into `floodTargets`: first
    /// those that take the frame tagged as it is (`first`), then the others. Returns how many
    /// are first.
    @inline(__always)
    func collectFloodTargets(vlan: VLANID, excluding ingress: PortID, first: EgressTagging) -> Int {
        floodTargets.removeAll(keepingCapacity: true)
        floodOthers.removeAll(keepingCapacity: true)
        bridge.forEachFloodPort(vlan: vlan, excluding: ingress) { port, tagging in
            if tagging == first { floodTargets.append(port) } else { floodOthers.append(port) }
        }
        let firstCount = floodTargets.count
        if !floodOthers.isEmpty { floodTargets.append(contentsOf: floodOthers) }
        return firstCount
    }

    /// Sends frame `i` to `targets[start..<end]`, changing its tag once, before
    /// `targets[firstCount]` (so the frame is rewritten once per flood). Returns false if the
    /// tag did not fit (the ports from there on are counted as `frame_too_large`: the flood is over).
    /// A port added after `queuedAt` (`portAdditions`) is skipped: a waiting flood's target
    /// list is of the ports there when it was read.
    @inline(__always)
    func sendFlood(_ i: Int, _ targets: [PortID], firstCount: Int, firstIsTagged: Bool, vlan: VLANID, wire: Int, from start: Int, to end: Int,
                   queuedAt: UInt64 = .max) -> Bool {
        for k in start..<end {
            if k == firstCount, !retag(i, firstIsTagged: firstIsTagged, vlan: vlan) {
                for port in targets[k...] { bridge.countDrop(on: port, .frameTooLarge) }
                return false
            }
            if addedAt[targets[k].index] > queuedAt { continue }
            transmit(i, via: devices[targets[k].index], to: targets[k], wireFrames: wire)
        }
        return true
    }

    /// Takes the tag off frame `i` if it had one, else puts `vlan`'s on; false if there was no room.
    @inline(__always)
    func retag(_ i: Int, firstIsTagged: Bool, vlan: VLANID) -> Bool {
        if firstIsTagged {
            batch.removeTag(i)
            return true
        }
        return batch.insertTag(i, tagProtocol: bridge.configuration.vlanProtocol, controlInformation: vlan.rawValue)
    }
}
