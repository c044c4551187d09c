public import TapBridgeCore

/// An in-memory port device: frames are injected into its receive queue and whatever the
/// engine transmits is recorded. Fault knobs make it behave like a link that is down or a
/// queue that is full.
public final class VirtualPort: PortDevice {
    /// The port ID the engine assigned.
    public private(set) var port: PortID? = nil
    /// The name given at `addPort`.
    public private(set) var name = ""
    /// Frames waiting to be received.
    public var receiveQueue: [[UInt8]] = []
    /// The offload state of each frame in `receiveQueue`, by position (missing: complete), as a
    /// packet socket with `PACKET_VNET_HDR` reports it for a veth's super-frames.
    public var receiveOffloads: [FrameOffload] = []
    /// What the port takes as it is (default: complete frames only, of any length).
    public var capabilities = OffloadCapabilities.none(maximumFrameLength: 70_000)
    /// Frames transmitted, oldest first.
    public var transmitted: [[UInt8]] = []
    /// The offload state each frame in `transmitted` was sent with (`.none` for complete frames).
    public var transmittedOffloads: [FrameOffload] = []
    /// When true, `transmit` answers `.linkDown` and records nothing.
    public var isLinkDown = false
    /// When true, `transmit` answers `.wouldBlock` and records nothing.
    public var isQueueFull = false
    /// Frames longer than this are refused with `.tooLarge`.
    public var maximumFrameLength = Int.max
    /// The next `receive` throws this, once.
    public var failNextReceive: PortError? = nil
    /// Drops the next `receive` reports for this port (as a UDP device reports a malformed
    /// datagram from a known peer), then forgets.
    public var dropsOnNextReceive: [DropReason] = []

    /// How many times the engine flushed it (after a batch that sent to it).
    public private(set) var flushes = 0

    public init() {}

    public var pollDescriptor: Int32? { nil }

    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) { flushes += 1 }

    public func didAddPort(_ port: PortID, name: String) {
        self.port = port
        self.name = name
    }

    public func didRemovePort(_ port: PortID) { self.port = nil }

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        if let error = failNextReceive {
            failNextReceive = nil
            throw error
        }
        guard let port else { return 0 }
        for reason in dropsOnNextReceive { batch.recordDrop(on: port, reason) }
        dropsOnNextReceive.removeAll()
        var n = 0
        while !batch.isFull, !receiveQueue.isEmpty {
            let frame = receiveQueue.removeFirst()
            let offload = receiveOffloads.isEmpty ? FrameOffload.none : receiveOffloads.removeFirst()
            let slot = batch.nextSlot()
            let length = min(frame.count, slot.count)
            frame.withUnsafeBytes { slot.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: length) }
            batch.commit(length: length, from: port, offload: offload)
            n += 1
        }
        return n
    }

    public var offloadCapabilities: OffloadCapabilities { capabilities }

    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        transmit(frame, offload: .none, to: port)
    }

    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        if isLinkDown { return .linkDown }
        if isQueueFull { return .wouldBlock }
        if frame.count > maximumFrameLength { return .tooLarge }
        transmitted.append(Array(frame))
        transmittedOffloads.append(offload)
        return .sent
    }
}

/// A bridge, an engine and `n` virtual ports, driven by a manual clock.
///
/// ```
///   inject(frame, on: 0) ─► VirtualPort 0 ─┐
///                           VirtualPort 1 ─┼─ ForwardingEngine ─ Bridge (FDB)
///                           VirtualPort 2 ─┘
///   runUntilIdle()  then  transmitted(on: 1) / transmitted(on: 2)
/// ```
public final class VirtualLAN {
    public let clock: ManualClock
    public let bridge: Bridge
    public let engine: ForwardingEngine
    /// The devices, by index (index i is the i-th port added).
    public private(set) var devices: [VirtualPort] = []
    /// The bridge's port IDs, by index.
    public private(set) var ports: [PortID] = []

    /// A LAN of `ports` ports configured as `portConfigurations` (default: access VLAN 1 each).
    public init(
        ports count: Int, configuration: Bridge.Configuration = .init(),
        portConfigurations: [PortConfiguration]? = nil, clock: ManualClock = ManualClock(), headroom: Int = 64
    ) {
        self.clock = clock
        bridge = Bridge(configuration: configuration)
        engine = ForwardingEngine(bridge: bridge, batch: FrameBatch(capacity: 8, frameCapacity: 70_000, headroom: headroom))
        for i in 0..<count { addPort(portConfigurations?[i] ?? PortConfiguration()) }
    }

    /// Adds one more virtual port; returns its index.
    @discardableResult
    public func addPort(_ configuration: PortConfiguration = PortConfiguration()) -> Int {
        let device = VirtualPort()
        let id = engine.addPort(named: "v\(devices.count)", configuration: configuration, on: device)
        devices.append(device)
        ports.append(id)
        return devices.count - 1
    }

    /// Removes the port at `index` from the bridge (its FDB entries are flushed).
    public func removePort(_ index: Int) { engine.removePort(ports[index]) }

    /// Queues `frame` for reception on port `index`.
    public func inject(_ frame: [UInt8], on index: Int, offload: FrameOffload = .none) {
        let d = devices[index]
        if offload != .none {
            while d.receiveOffloads.count < d.receiveQueue.count { d.receiveOffloads.append(.none) }
            d.receiveOffloads.append(offload)
        } else if !d.receiveOffloads.isEmpty {
            d.receiveOffloads.append(.none)
        }
        d.receiveQueue.append(frame)
    }

    /// Services every device until none has anything left to receive. Returns frames handled.
    @discardableResult
    public func runUntilIdle() -> Int {
        var total = 0
        while true {
            var round = 0
            for d in devices { round += (try? engine.service(d, at: clock.now)) ?? 0 }
            round += engine.drainBacklog(budget: .max)
            if round == 0 { return total }
            total += round
        }
    }

    /// Injects `frame` on `index`, runs until idle and returns what each port transmitted.
    @discardableResult
    public func send(_ frame: [UInt8], on index: Int) -> [[[UInt8]]] {
        inject(frame, on: index)
        runUntilIdle()
        return devices.indices.map { transmitted(on: $0) }
    }

    /// What port `index` transmitted since the last call (the record is cleared).
    @discardableResult
    public func transmitted(on index: Int) -> [[UInt8]] {
        defer {
            devices[index].transmitted.removeAll()
            devices[index].transmittedOffloads.removeAll()
        }
        return devices[index].transmitted
    }

    /// Clears every port's transmit record.
    public func discardTransmitted() {
        for d in devices {
            d.transmitted.removeAll()
            d.transmittedOffloads.removeAll()
        }
    }

    /// The indices of the ports that transmitted something since the last call to `transmitted`
    /// (records are left alone).
    public var portsWithTraffic: [Int] { devices.indices.filter { !devices[$0].transmitted.isEmpty } }

    /// Frames still queued or transmitted but not read, per port index; empty when the test
    /// accounted for everything.
    public func leftovers() -> [Int: (queued: Int, transmitted: Int)] {
        var out: [Int: (Int, Int)] = [:]
        for (i, d) in devices.enumerated() where !d.receiveQueue.isEmpty || !d.transmitted.isEmpty {
            out[i] = (d.receiveQueue.count, d.transmitted.count)
        }
        return out
    }

    /// Counters of port `index`.
    public func counters(_ index: Int) -> PortCounters { bridge.counters(of: ports[index]) }
}

/// One device carrying several ports, as the UDP socket carries every remote: frames are
/// received with the port they belong to, and transmits are queued and sent at `flush`, which
/// reports how each ended (the engine counts them then).
public final class SharedVirtualDevice: PortDevice {
    /// Frames waiting to be received, with the port each arrives on.
    public var receiveQueue: [(port: PortID, frame: [UInt8])] = []
    /// Frames sent (at a flush), with their port, oldest first.
    public var transmitted: [(port: PortID, frame: [UInt8])] = []
    /// Queued since the last flush.
    var queued: [(port: PortID, frame: [UInt8])] = []
    /// The ports it carries.
    public private(set) var ports: [PortID] = []

    public init() {}

    public var pollDescriptor: Int32? { nil }
    public var offloadCapabilities: OffloadCapabilities { .none(maximumFrameLength: 70_000) }

    public func didAddPort(_ port: PortID, name: String) { ports.append(port) }
    public func didRemovePort(_ port: PortID) { ports.removeAll { $0 == port } }

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        var n = 0
        while !batch.isFull, !receiveQueue.isEmpty {
            let (port, frame) = receiveQueue.removeFirst()
            guard ports.contains(port) else { continue }
            let slot = batch.nextSlot()
            let length = min(frame.count, slot.count)
            frame.withUnsafeBytes { if length > 0 { slot.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: length) } }
            batch.commit(length: length, from: port)
            n += 1
        }
        return n
    }

    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        queued.append((port, Array(frame)))
        return .queued
    }

    /// How many times the engine flushed it.
    public private(set) var flushes = 0

    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        flushes += 1
        for q in queued {
            transmitted.append(q)
            report(q.port, .sent, 1, q.frame.count)
        }
        queued.removeAll()
    }
}
