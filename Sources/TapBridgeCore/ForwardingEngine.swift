/// Moves frames: drains a device in batches, asks the bridge, transmits.
///
/// ```
///   device.receive(into: batch) ──► for each frame: bridge.decide ──► unicast: tag/untag, transmit
///        (up to batch.capacity)                                  └──► flood: the same buffer to
///                                                                     every egress port, tagged
///                                                                     ones first or last so the
///                                                                     frame is rewritten once
/// ```
/// The engine owns no file descriptors and never blocks: the event loop (or a test) calls
/// `service(_:at:)` for each device that is ready, and `expire(at:)` at `nextDeadline`.
public final class ForwardingEngine {
    /// The switch.
    public let bridge: Bridge
    /// The receive batch, reused for every device.
    public let batch: FrameBatch
    /// Most frames `service` handles from one device per call, so that a busy device cannot
    /// starve the others. A super-frame cut into segments in software counts as its segments.
    public var budgetPerService: Int
    /// Segments cut in software for the batch being forwarded (the work beyond one transmit
    /// per frame and port that `service` charges to the device).
    var segmentsCut = 0
    /// The frame being sent is a flood: a port whose link is down is then not a drop (the
    /// kernel bridge floods only to ports whose link is up; a fresh TAP whose host has not
    /// brought it up yet, or one taken down, is simply not there), while a unicast to a MAC
    /// behind it is one (`link_down`).
    var isFlooding = false
    /// Completes checksums and segments super-frames for egress ports that cannot take them.
    let finisher = OffloadFinisher()
    /// A flood of a group-addressed frame to this many ports or more waits in the backlog and
    /// goes out a share per round (`FloodBacklog`); fewer go out at once.
    public var deferredFanOut = 32
    /// A device with this many frames in the backlog is not read until they are sent.
    public var holdBackAt = 64
    /// The most bytes of frames the backlog holds (a flood beyond is dropped: `flood_backlog`).
    public var backlogByteLimit = 32 << 20
    var backlog = FloodBacklog()
    /// The ports of the flood being forwarded (reused: no allocation per frame).
    @exclusivity(unchecked) var floodTargets: [PortID] = []
    @exclusivity(unchecked) var floodOthers: [PortID] = []

    @exclusivity(unchecked) var devices: [(any PortDevice)?] = []
    /// Each port's link MTU (`OffloadCapabilities.linkMTU`; 0: none), indexed like `devices`,
    /// read once when the port is added: the path-fitting stage reads no device per frame.
    @exclusivity(unchecked) var linkMTUs: [Int] = []
    /// The link MTU of the frame being forwarded's ingress port (0: none).
    var ingressMTU = 0
    /// The port registry: each port's name, indexed like `devices` (the one place that says
    /// which ports exist; what a port *is*, beyond its device and its switching configuration,
    /// is its owner's business: the core knows devices, not kinds).
    var names: [String] = []
    /// Ports by name (kept with `names`), so that finding one is no scan and attaching N ports
    /// costs N, not N².
    var portsByName: [String: Int] = [:]
    /// Every device once, in a slot of its own (`nil`: a free slot), with the number of its
    /// ports; `deviceSlots` gives each port's (indexed like `devices`).
    @exclusivity(unchecked) var slotDevices: [(any PortDevice)?] = []
    var slotPortCounts: [Int] = []
    var slotsByDevice: [ObjectIdentifier: Int] = [:]
    var freeSlots: [Int] = []
    @exclusivity(unchecked) var deviceSlots: [Int] = []
    /// Ports added so far, and when each port was (`portAdditions` then), indexed like
    /// `devices`: a flood waiting in the backlog skips a port added after it was queued, which
    /// may have taken a removed port's ID.
    var portAdditions: UInt64 = 0
    @exclusivity(unchecked) var addedAt: [UInt64] = []
    /// The slots sent to in this batch, each once (`slotMarks[slot] == flushRound`): a flush
    /// after a batch costs the devices it sent to, not the number of ports.
    @exclusivity(unchecked) var toFlush: [Int] = []
    @exclusivity(unchecked) var slotMarks: [UInt64] = []
    var flushRound: UInt64 = 1
    /// Changes whenever a port is added or removed, so an event loop can tell cheaply when to
    /// rebuild its descriptor set from `allDevices`.
    public private(set) var generation = 0

    /// Creates an engine around `bridge` with one receive batch.
    public init(bridge: Bridge, batch: FrameBatch = FrameBatch(), budgetPerService: Int = 256) {
        self.bridge = bridge
        self.batch = batch
        self.budgetPerService = budgetPerService
    }

    // MARK: Ports

    /// Adds a port named `name`, carried by `device`, tells the device its ID, and returns it.
    @discardableResult
    public func addPort(named name: String, configuration: PortConfiguration = PortConfiguration(), on device: any PortDevice) -> PortID {
        let id = bridge.addPort(configuration)
        if id.index >= devices.count {
            devices.append(contentsOf: repeatElement(nil, count: id.index + 1 - devices.count))
            names.append(contentsOf: repeatElement("", count: id.index + 1 - names.count))
            linkMTUs.append(contentsOf: repeatElement(0, count: id.index + 1 - linkMTUs.count))
            deviceSlots.append(contentsOf: repeatElement(0, count: id.index + 1 - deviceSlots.count))
            addedAt.append(contentsOf: repeatElement(0, count: id.index + 1 - addedAt.count))
        }
        portAdditions &+= 1
        addedAt[id.index] = portAdditions
        devices[id.index] = device
        linkMTUs[id.index] = max(device.offloadCapabilities.linkMTU ?? 0, 0)
        names[id.index] = name
        portsByName[name] = id.index
        deviceSlots[id.index] = slot(for: device)
        generation &+= 1
        device.didAddPort(id, name: name)
        return id
    }

    /// Removes a port: its FDB entries go, its device is told.
    public func removePort(_ port: PortID) {
        guard port.index < devices.count, let device = devices[port.index] else { return }
        bridge.removePort(port)
        devices[port.index] = nil
        if portsByName[names[port.index]] == port.index { portsByName[names[port.index]] = nil }
        releaseSlot(deviceSlots[port.index])
        generation &+= 1
        device.didRemovePort(port)
    }

    /// The slot of `device`, which one more port now uses (a new one if it had none).
    func slot(for device: any PortDevice) -> Int {
        let key = ObjectIdentifier(device)
        if let slot = slotsByDevice[key] {
            slotPortCounts[slot] += 1
            return slot
        }
        let slot = freeSlots.popLast() ?? slotDevices.count
        if slot == slotDevices.count {
            slotDevices.append(nil)
            slotPortCounts.append(0)
            slotMarks.append(0)
        }
        slotDevices[slot] = device
        slotPortCounts[slot] = 1
        slotsByDevice[key] = slot
        return slot
    }

    /// One port fewer uses `slot`; the last frees it.
    func releaseSlot(_ slot: Int) {
        slotPortCounts[slot] -= 1
        guard slotPortCounts[slot] == 0, let device = slotDevices[slot] else { return }
        slotsByDevice[ObjectIdentifier(device)] = nil
        slotDevices[slot] = nil
        freeSlots.append(slot)
        backlog.purge(slot: slot)
    }

    /// Removes every port `device` carries; returns their IDs.
    @discardableResult
    public func removeDevice(_ device: any PortDevice) -> [PortID] {
        let gone = ports(of: device)
        for port in gone { removePort(port) }
        return gone
    }

    /// The ports `device` carries.
    public func ports(of device: any PortDevice) -> [PortID] {
        devices.indices.compactMap { devices[$0] === device ? PortID(UInt16($0)) : nil }
    }

    /// The IP MTU of the link behind `port` (a TAP's, an interface's), nil if it has none.
    public func linkMTU(of port: PortID) -> Int? {
        port.index < linkMTUs.count && devices[port.index] != nil && linkMTUs[port.index] > 0 ? linkMTUs[port.index] : nil
    }

    /// The device carrying `port`.
    public func device(of port: PortID) -> (any PortDevice)? { port.index < devices.count ? devices[port.index] : nil }

    /// The name given to `port` (empty if there is no such port).
    public func name(of port: PortID) -> String {
        port.index < devices.count && devices[port.index] != nil ? names[port.index] : ""
    }

    /// The port named `name`.
    public func port(named name: String) -> PortID? {
        portsByName[name].map { PortID(UInt16($0)) }
    }

    /// Every port, in the order they were added (by ID; a removed port's ID is reused).
    public var ports: [PortID] {
        devices.indices.compactMap { devices[$0] == nil ? nil : PortID(UInt16($0)) }
    }

    /// Every device with at least one port, each once.
    public var allDevices: [any PortDevice] { slotDevices.compactMap { $0 } }

    // MARK: Timers

    /// When `expire(at:)` next has work.
    public var nextDeadline: Instant? { bridge.nextDeadline }

    /// Runs the timers due at `now` (FDB ageing sweep).
    public func expire(at now: Instant) { bridge.expire(at: now) }

    // MARK: Forwarding

    /// Drains `device` until it has nothing ready or `budgetPerService` frames were handled,
    /// forwarding each frame. Returns the number of frames handled, each super-frame cut in
    /// software counted as its segments.
    @discardableResult
    public func service(_ device: any PortDevice, at now: Instant) throws(PortError) -> Int {
        var handled = 0
        while handled < budgetPerService {
            batch.reset()
            let n = try device.receive(into: batch)
            for drop in batch.receiveDrops { bridge.countReceiveDrop(on: drop.port, drop.reason, bytes: drop.bytes) }
            if n == 0 {
                if batch.receiveDrops.isEmpty { break }
                handled += batch.receiveDrops.count
                if batch.drained { break }
                continue
            }
            segmentsCut = 0
            for i in 0..<batch.count { forward(i, at: now) }
            flushDevices()
            handled += n + segmentsCut
            // the device found its queue empty: what arrives now wakes the next poll
            if batch.drained { break }
        }
        return handled
    }

    @inline(__always)
    func forward(_ i: Int, at now: Instant) {
        let ingress = batch.ingressPort(i)
        ingressMTU = ingress.index < linkMTUs.count ? linkMTUs[ingress.index] : 0
        let offload = batch.offload(i)
        var wire = 1  // the frames it stands for on the wire (a super-frame: its segments)
        if !offload.isComplete {
            switch OffloadFinisher.inspect(batch.frame(i), offload) {
            case .success(let frames): wire = frames
            case .failure(let failure):
                bridge.countReceiveDrop(on: ingress, failure.dropReason, bytes: batch.frame(i).count)
                return
            }
        }
        switch bridge.decide(batch.frame(i), from: ingress, at: now, wireFrames: wire) {
        case .drop:
            return
        case .unicast(let port, let vlan):
            guard let tagging = bridge.egressTagging(of: port, vlan: vlan), let device = devices[port.index] else {
                bridge.countDrop(on: ingress, .egressFiltered)
                return
            }
            let tagged = normalizeTag(i, vlan: vlan)
            if tagging == .tagged, !tagged, !batch.insertTag(i, tagProtocol: bridge.configuration.vlanProtocol, controlInformation: vlan.rawValue) {
                bridge.countDrop(on: port, .frameTooLarge)
                return
            }
            if tagging == .untagged, tagged { batch.removeTag(i) }
            transmit(i, via: device, to: port, wireFrames: wire)
        case .flood(let vlan):
            isFlooding = true
            defer { isFlooding = false }
            let tagged = normalizeTag(i, vlan: vlan)
            let firstCount = collectFloodTargets(vlan: vlan, excluding: ingress, first: tagged ? .tagged : .untagged)
            if floodTargets.isEmpty {
                bridge.countDrop(on: ingress, bridge.floodScope == .all ? .noEgressPort : .noListener)
            } else if let flow = deferredFlow(i, from: ingress) {
                deferFlood(i, from: ingress, flow: flow, vlan: vlan, wire: wire, firstIsTagged: tagged, firstCount: firstCount)
            } else {
                _ = sendFlood(i, floodTargets, firstCount: firstCount, firstIsTagged: tagged, vlan: vlan, wire: wire, from: 0, to: floodTargets.count)
            }
        }
    }

    /// Whether frame `i` carries a bridge VLAN tag; if it does, its VLAN ID is set to `vlan`
    /// (a priority-tagged frame, VLAN 0, gets its real VLAN; the priority bits stay).
    @inline(__always)
    func normalizeTag(_ i: Int, vlan: VLANID) -> Bool {
        let frame = batch.frame(i)
        guard frame.count >= 18,
            UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: 12, as: UInt16.self)) == bridge.configuration.vlanProtocol
        else { return false }
        let tci = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
        if tci & 0x0FFF != vlan.rawValue { batch.rewriteTag(i, controlInformation: tci & 0xF000 | vlan.rawValue) }
        return true
    }

    /// Sends frame `i` to `port`: as it is if the device takes it, else finished first. A
    /// super-frame passed whole counts as `wireFrames` transmitted frames.
    @inline(__always)
    func transmit(_ i: Int, via device: (any PortDevice)?, to port: PortID, wireFrames: Int) {
        guard let device else { return }
        willFlush(port)
        let offload = batch.offload(i)
        if fitToPath(i, offload, via: device, to: port) { return }
        if !offload.isComplete, !device.offloadCapabilities.accepts(offload) {
            if offload.isSegmentation {
                transmitSegments(i, via: device, to: port)
                return
            }
            // done in place, once: the other ports of a flood get the complete frame too
            batch.completeChecksum(i)
            bridge.countChecksumCompleted(on: port)
        }
        let frame = batch.frame(i)
        let whole = batch.offload(i)
        let outcome = device.transmit(frame, offload: whole, to: port)
        if whole.isSegmentation, outcome == .sent || outcome == .queued { bridge.countSuperFramePassed(on: port) }
        count(outcome, on: port, bytes: frame.count, frames: whole.isSegmentation ? wireFrames : 1)
    }

    /// The MSS clamp and the cut to the path, for every port kind and both datapaths (OpenVPN's
    /// `mssfix`, iptables' `--clamp-mss-to-pmtu`, for a switch): a frame between two ports
    /// whose links have different MTUs (a TAP at 1500 and the 1450-byte vxlan device of a
    /// `datapath=kernel` remote; a VM on a stream port and a veth at 9000) must fit the
    /// narrower. A TCP SYN or SYN-ACK crossing gets its MSS lowered to the narrower link's MTU
    /// (in both directions: the answer's segments come back over the same narrow link), so the
    /// connection never sends what cannot pass; a TCP super-frame whose segments would not fit
    /// (a connection opened before, a peer that ignores the MSS) is cut to fit, here. Remotes
    /// of the UDP datapath fit each peer's own path in their device. Returns whether the frame
    /// was sent here (cut).
    @inline(__always)
    func fitToPath(_ i: Int, _ offload: FrameOffload, via device: any PortDevice, to port: PortID) -> Bool {
        let egressMTU = linkMTUs[port.index]
        let mtu = ingressMTU == 0 ? egressMTU : egressMTU == 0 ? ingressMTU : min(ingressMTU, egressMTU)
        guard mtu > 0 else { return false }
        if offload.isComplete || !offload.isSegmentation {
            if MSSClamp.clamp(batch.mutableFrame(i), ipMTU: mtu, checksumIsPartial: offload.needsChecksum) { bridge.countMSSClamped(on: port) }
            return false
        }
        guard offload.segmentation == .tcpv4 || offload.segmentation == .tcpv6 else { return false }
        let frame = batch.frame(i)
        let l4 = Int(offload.checksumStart)
        guard l4 + 13 < frame.count else { return false }
        let type = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        let l3 = type == 0x8100 || type == 0x88A8 ? 18 : 14
        let limit = mtu + l3
        guard l4 + Int(frame[l4 + 12] >> 4) * 4 + Int(offload.segmentSize) > limit else { return false }
        transmitSegments(i, via: device, to: port, maximumFrameLength: min(limit, device.offloadCapabilities.maximumFrameLength))
        return true
    }

    /// Counts what `transmit` answered: sent, dropped, or nothing yet (queued: `flush` tells).
    @inline(__always)
    func count(_ outcome: TransmitOutcome, on port: PortID, bytes: Int, frames: Int = 1) {
        switch outcome {
        case .sent: bridge.countTransmit(on: port, bytes: bytes, frames: frames)
        case .queued: break
        case .linkDown where isFlooding: break
        default: bridge.countDrop(on: port, Self.dropReason(outcome))
        }
    }

    /// Cuts super-frame `i` into segments that fit `device` and transmits each (the frame in the
    /// batch stays as it is, for the other ports of a flood).
    func transmitSegments(_ i: Int, via device: any PortDevice, to port: PortID, maximumFrameLength: Int? = nil) {
        let limit = maximumFrameLength ?? device.offloadCapabilities.maximumFrameLength
        let result = finisher.segment(batch.frame(i), batch.offload(i), maximumFrameLength: limit) { segment in
            count(device.transmit(segment, to: port), on: port, bytes: segment.count)
        }
        switch result {
        case .success(let segments):
            segmentsCut &+= segments
            bridge.countSegmented(on: port)
        case .failure(let failure): bridge.countDrop(on: port, failure.dropReason)
        }
    }

    static func dropReason(_ outcome: TransmitOutcome) -> DropReason {
        switch outcome {
        case .sent, .queued, .failed: .transmitError
        case .wouldBlock: .transmitQueueFull
        case .linkDown: .linkDown
        case .tooLarge: .frameTooLarge
        }
    }

    /// Lets every device send what it queued, and counts how each queued frame ended.
    func flushDevices() {
        for slot in toFlush {
            slotDevices[slot]?.flush { port, outcome, frames, bytes in
                if outcome == .sent {
                    bridge.countTransmit(on: port, bytes: bytes, frames: frames)
                } else {
                    bridge.countDrop(on: port, Self.dropReason(outcome), frames: frames)
                }
            }
        }
        toFlush.removeAll(keepingCapacity: true)
        flushRound &+= 1
    }

    /// `port`'s device is sent to in this batch: it is flushed after it.
    @inline(__always)
    func willFlush(_ port: PortID) {
        let slot = deviceSlots[port.index]
        if slotMarks[slot] != flushRound {
            slotMarks[slot] = flushRound
            toFlush.append(slot)
        }
    }
}
