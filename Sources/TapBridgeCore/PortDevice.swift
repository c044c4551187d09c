/// What happened to one frame handed to `PortDevice.transmit`.
public enum TransmitOutcome: Equatable, Sendable {
    /// Handed to the device.
    case sent
    /// Accepted into the device's queue, to be sent by `flush`, which reports how it ended
    /// (sent or dropped): counted only then.
    case queued
    /// The device's queue is full (EAGAIN, ENOBUFS); the frame is dropped, the port stays.
    case wouldBlock
    /// The link is down (EIO on a TAP whose interface is down); the frame is dropped.
    case linkDown
    /// The frame does not fit the device (MTU, datagram size).
    case tooLarge
    /// Any other error; the frame is dropped.
    case failed
}

/// A device failure on receive that the forwarding engine cannot handle by itself.
public struct PortError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        /// The underlying interface is gone (deleted, or the fd reports EBADFD/ENODEV): remove
        /// the device's ports and keep serving the others.
        case deviceRemoved
        /// The peer of a connection (a stream port) closed it, or broke its framing: remove
        /// the port and keep serving the others (`operation` says what happened).
        case disconnected
        /// An unexpected error; the device is unusable.
        case failed
    }
    public var kind: Kind
    /// The errno value, if any (0 otherwise).
    public var code: Int32
    /// What the device was doing, for the log line.
    public var operation: String

    public init(_ kind: Kind, code: Int32 = 0, operation: String) {
        self.kind = kind
        self.code = code
        self.operation = operation
    }

    public var description: String {
        kind == .disconnected ? operation : "\(operation) failed (\(kind == .deviceRemoved ? "device removed" : "error"), errno \(code))"
    }
}

/// The I/O seam between the bridge and the outside world.
///
/// Real devices (a TAP, a packet socket, a UDP socket) and virtual ones implement it. A device
/// may carry several logical ports: it tags each received frame with the `PortID` it came from
/// and is asked to transmit to one of its ports. Neither method may block or allocate per frame.
public protocol PortDevice: AnyObject {
    /// A file descriptor the event loop polls for readability, or `nil` for in-memory devices.
    var pollDescriptor: Int32? { get }

    /// Reads as many frames as are ready and fit into `batch` (appending with
    /// `FrameBatch.nextSlot`/`commit`), without blocking. Returns the number read; 0 means
    /// nothing is ready ("would block"), which is not an error.
    func receive(into batch: FrameBatch) throws(PortError) -> Int

    /// Sends one frame out of `port`. Must not keep or modify `frame` after returning: the engine
    /// writes the same buffer to every egress port of a flood.
    func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome

    /// Sends one frame with its offload state (a partial checksum, a super-frame). The engine
    /// calls it only with a state the device's `offloadCapabilities` accept (otherwise it
    /// finishes the frame first and passes `.none`). The default ignores the state, which is
    /// right for devices that accept nothing.
    func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome

    /// What frames the device takes as they are: a frame with a partial checksum or a GSO
    /// super-frame goes out through a device that lacks the capability only after the engine
    /// finished it in software (`OffloadFinisher`).
    var offloadCapabilities: OffloadCapabilities { get }

    /// Called when the engine assigns a logical port of this device.
    func didAddPort(_ port: PortID, name: String)

    /// Called when the engine removes a logical port of this device.
    func didRemovePort(_ port: PortID)

    /// Called by the engine after each batch it forwarded. A device that queues frames in
    /// `transmit` (answering `.queued`, to send many in one system call) sends them now, and
    /// reports how every frame it queued since the last flush ended through `report` (port,
    /// `.sent` or why it was dropped, frames, bytes; several frames may be reported at once):
    /// every queued frame is reported exactly once, whatever the batch size.
    func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void)

    /// The device holds bytes its descriptor did not take yet (a stream port whose peer reads
    /// slower than the bridge sends): the loop polls for writability too, and calls `writable`.
    var awaitsWritable: Bool { get }
    /// Whether `awaitsWritable` can ever be true (a stream port): the loop looks at those only.
    var mayAwaitWritable: Bool { get }

    /// The descriptor is writable: send what waits.
    func writable()
}

extension PortDevice {
    public var offloadCapabilities: OffloadCapabilities { .none() }
    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        transmit(frame, to: port)
    }
    public func didAddPort(_ port: PortID, name: String) {}
    public func didRemovePort(_ port: PortID) {}
    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {}
    public var awaitsWritable: Bool { false }
    public var mayAwaitWritable: Bool { false }
    public func writable() {}
}

/// A reusable batch of frame buffers, allocated once.
///
/// One slab holds `capacity` slots. Each slot has `headroom` bytes in front of the frame (room
/// to insert a VLAN tag or an encapsulation header without copying the payload) and
/// `frameCapacity` bytes for the frame itself.
/// ```
///  slot k: [ headroom | frame bytes ........................ ]
///           ^ base     ^ base + headroom (a frame starts here when received)
/// ```
/// Devices fill free slots in order. A device that reads several datagrams in one system call
/// (recvmmsg) may find some of them are not frames (garbage, unknown senders): it commits the
/// good ones with `commit(length:from:shift:freeSlot:)`, naming which free slot holds each, and
/// the slots in between stay unused until `reset()`. So frame `i` is not always in slot `i`.
public final class FrameBatch {
    /// Slots in the batch.
    public let capacity: Int
    /// Bytes reserved in front of each frame.
    public let headroom: Int
    /// Largest frame a slot holds.
    public let frameCapacity: Int
    /// Frames received so far.
    @exclusivity(unchecked) public private(set) var count = 0
    /// Slots consumed so far (holding a frame, or read into and abandoned).
    @exclusivity(unchecked) public private(set) var used = 0
    /// The most frames the batch's frames may become on the wire (`workLimit`): a super-frame
    /// counts as the segments it would be cut into for a port that cannot take it whole.
    public let workLimit: Int
    /// What the frames so far may become on the wire: 1 per frame, a super-frame its segments
    /// (at least `OffloadFinisher.minimumTCPSegmentSize` bytes each, as validated). The batch is
    /// full once it reaches `workLimit`, so one batch of super-frames with tiny segments cannot
    /// keep the loop from the other ports for long.
    @exclusivity(unchecked) public private(set) var work = 0
    /// Drops a device noticed while receiving (a malformed datagram from a known peer, say), to
    /// be counted on that port by the engine. Capacity is reserved, so recording allocates
    /// nothing; at most `capacity` are kept per batch.
    @exclusivity(unchecked) public private(set) var receiveDrops: [(port: PortID, reason: DropReason, bytes: Int)] = []
    /// Set by a device that read until its queue was empty (EAGAIN, or fewer messages than it
    /// asked for): asking it again before the next poll would only cost a system call that
    /// finds nothing (two or three per wake-up, once: one read more per device, and for a UDP
    /// socket a read of its error queue too).
    @exclusivity(unchecked) public var drained = false

    let stride: Int
    let base: UnsafeMutableRawPointer
    /// Byte offset of frame i from `base` (not from its slot).
    let starts: UnsafeMutablePointer<Int>
    let lengths: UnsafeMutablePointer<Int>
    let ingress: UnsafeMutablePointer<PortID>
    let offloads: UnsafeMutablePointer<FrameOffload>

    /// Allocates `capacity` slots of `frameCapacity` bytes with `headroom` bytes in front. A
    /// batch is full when its slots are used or its frames may become `workLimit` frames on the
    /// wire (default: 2,048, which 44 super-frames of 64 KiB cut at a 1,448-byte MSS reach, and
    /// one cut at the smallest segment size taken nearly does).
    public init(capacity: Int = 64, frameCapacity: Int = 65_557, headroom: Int = 64, workLimit: Int = 2_048) {
        precondition(capacity > 0 && frameCapacity > 0 && headroom >= 0 && workLimit > 0)
        self.capacity = capacity
        self.workLimit = workLimit
        self.headroom = headroom
        self.frameCapacity = frameCapacity
        stride = (headroom + frameCapacity + 63) & ~63
        base = .allocate(byteCount: stride * capacity, alignment: 64)
        starts = .allocate(capacity: capacity)
        lengths = .allocate(capacity: capacity)
        ingress = .allocate(capacity: capacity)
        offloads = .allocate(capacity: capacity)
        offloads.initialize(repeating: .none, count: capacity)
        starts.initialize(repeating: 0, count: capacity)
        lengths.initialize(repeating: 0, count: capacity)
        ingress.initialize(repeating: PortID(0), count: capacity)
        receiveDrops.reserveCapacity(capacity)
    }

    deinit {
        base.deallocate()
        starts.deallocate()
        lengths.deallocate()
        ingress.deallocate()
        offloads.deallocate()
    }

    /// Forgets all frames and recorded drops (the memory stays).
    @inline(__always) public func reset() {
        count = 0
        used = 0
        work = 0
        drained = false
        if !receiveDrops.isEmpty { receiveDrops.removeAll(keepingCapacity: true) }
    }

    /// Records that a device dropped something of `bytes` bytes that arrived on `port`, for
    /// `reason` (counted as received, like a frame the bridge drops).
    public func recordDrop(on port: PortID, _ reason: DropReason, bytes: Int = 0) {
        if receiveDrops.count < capacity { receiveDrops.append((port, reason, bytes)) }
    }

    /// No slot is free, as many drops as slots were recorded, or the frames may become
    /// `workLimit` frames on the wire: devices stop reading.
    @inline(__always) public var isFull: Bool { used >= capacity || receiveDrops.count >= capacity || work >= workLimit }

    /// Free slots left.
    @inline(__always) public var remaining: Int { isFull ? 0 : capacity - used }

    /// The buffer of the `k`-th free slot (0 = the next one), `frameCapacity` bytes; the
    /// `headroom` bytes before it are usable too. Requires `k < remaining`.
    @inline(__always) public func freeSlot(_ k: Int = 0) -> UnsafeMutableRawBufferPointer {
        precondition(k >= 0 && k < remaining, "no free slot")
        return UnsafeMutableRawBufferPointer(start: base + (used + k) * stride + headroom, count: frameCapacity)
    }

    /// The buffer of the next free slot. Requires `!isFull`.
    @inline(__always) public func nextSlot() -> UnsafeMutableRawBufferPointer { freeSlot(0) }

    /// Records that free slot `k` (default: the next) holds a frame of `length` bytes from
    /// `port`; it and the free slots before it are used up. `shift` moves the frame's start from
    /// the slot buffer's start: negative means the device wrote into the headroom. `offload`:
    /// what is left to do to the frame (partial checksum, segmentation), offsets from its start.
    @inline(__always) public func commit(length: Int, from port: PortID, shift: Int = 0, freeSlot k: Int = 0, offload: FrameOffload = .none) {
        precondition(count < capacity && k >= 0 && used + k < capacity && length >= 0
            && shift >= -headroom && shift + length <= frameCapacity)
        starts[count] = (used + k) * stride + headroom + shift
        lengths[count] = length
        ingress[count] = port
        offloads[count] = offload
        count += 1
        used += k + 1
        work += offload.isSegmentation
            ? OffloadFinisher.segmentCount(payload: length, size: max(Int(offload.segmentSize), OffloadFinisher.minimumTCPSegmentSize)) : 1
    }

    /// Copies `frame` into the next free slot and commits it (from `port`, with `offload`).
    /// Requires `!isFull` and a frame that fits a slot.
    @inline(__always) public func append(_ frame: UnsafeRawBufferPointer, from port: PortID, offload: FrameOffload = .none) {
        nextSlot().copyMemory(from: frame)
        commit(length: frame.count, from: port, offload: offload)
    }

    /// Marks the next `k` free slots used without a frame (read into, then abandoned).
    @inline(__always) public func abandon(_ k: Int) {
        used = min(capacity, used + k)
    }

    /// The `i`-th received frame.
    @inline(__always) public func frame(_ i: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + starts[i], count: lengths[i])
    }

    /// The port the `i`-th frame came from.
    @inline(__always) public func ingressPort(_ i: Int) -> PortID { ingress[i] }

    /// What is left to do to the `i`-th frame (`.none` for a complete frame).
    @inline(__always) public func offload(_ i: Int) -> FrameOffload { offloads[i] }

    /// Completes the partial checksum of the `i`-th frame in place (it must be validated and
    /// not a super-frame); the frame is complete afterwards.
    public func completeChecksum(_ i: Int) {
        OffloadFinisher.completeChecksum(UnsafeMutableRawBufferPointer(start: base + starts[i], count: lengths[i]), offloads[i])
        offloads[i] = .none
    }

    /// The `i`-th frame, writable (for repairs in place).
    @inline(__always) public func mutableFrame(_ i: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: base + starts[i], count: lengths[i])
    }

    // MARK: In-place VLAN rewriting (used by the engine on egress)

    /// Replaces the 4-byte tag after the MAC addresses with `tci` (the frame must be tagged).
    @inline(__always) func rewriteTag(_ i: Int, controlInformation tci: UInt16) {
        (base + starts[i]).storeBytes(of: tci.bigEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Inserts a tag after the MAC addresses, using 4 bytes of headroom. Returns `false`
    /// (frame unchanged) when fewer than 4 bytes of headroom are left in front of it.
    @inline(__always) func insertTag(_ i: Int, tagProtocol: UInt16, controlInformation tci: UInt16) -> Bool {
        guard starts[i] % stride >= 4 else { return false }
        let old = base + starts[i]
        (old - 4).copyMemory(from: old, byteCount: 12)
        (old + 8).storeBytes(of: tagProtocol.bigEndian, as: UInt16.self)
        (old + 10).storeBytes(of: tci.bigEndian, as: UInt16.self)
        starts[i] -= 4
        lengths[i] += 4
        offloads[i] = offloads[i].shifted(by: 4)
        return true
    }

    /// Removes the 4-byte tag after the MAC addresses (the frame must be tagged).
    @inline(__always) func removeTag(_ i: Int) {
        let old = base + starts[i]
        (old + 4).copyMemory(from: old, byteCount: 12)  // memmove semantics
        starts[i] += 4
        lengths[i] -= 4
        offloads[i] = offloads[i].shifted(by: -4)
    }
}
