import CTapBridge
import TapBridgeCore

/// What the receive parts (`TrainReceiver`) need from the device, as one argument: the
/// socket's read, who a sender is, how a peer's datagram becomes its inner frame, and what
/// becomes of a stranger's. They see nothing else of it (the peer table, the counters and
/// the admission stay the device's).
protocol DatagramInbox: AnyObject {
    /// recvmmsg of up to `count` messages into `queue`: how many arrived (0: none waiting),
    /// or nil after an ICMP error (call again).
    func receiveMessages(into queue: UnsafeMutablePointer<ctb_datagram>, _ count: Int) throws(PortError) -> Int?
    /// The peer that sends from `sender`: its index and port; nil for a stranger.
    func peer(sentFrom sender: SocketAddress) -> (index: Int, port: PortID)?
    /// The peer that claims a stranger's datagram `d` (it roamed to `sender`); nil if none.
    func roamer(_ sender: SocketAddress, _ d: ctb_datagram, roaming: inout Bool) -> (index: Int, port: PortID)?
    /// `datagrams` datagrams from a stranger (`first` the first of them): counted and dropped
    /// (false), or, with `--accept-peers`, a candidate the caller keeps pending (true).
    func stranger(_ sender: SocketAddress, _ first: ctb_datagram, now: Int64, datagrams: Int, holding: Bool) -> Bool
    /// The inner frame of a peer's datagram from `sender`, opened in place, or nil (the drop
    /// is recorded); `roaming`: the peer moves to `sender` if it authenticates.
    func innerFrame(_ data: UnsafeMutableRawPointer, length: Int, peer index: Int, port: PortID, from sender: SocketAddress, roaming: Bool,
                    batch: FrameBatch, now: Int64) -> UnsafeMutableRawBufferPointer?
    /// Strangers wait for the daemon's decision: nothing more is read until then.
    var awaitsAdmission: Bool { get }
}

/// The UDP device's receive side with trains on (UDP_GRO): up to 64 messages (each one
/// datagram, or a train of datagrams of `segment_size` bytes from one sender) into a train
/// area, then frames from them into the batch, copied (the only copy): consecutive TCP
/// segments of one flow merge into one super-frame (`SegmentCoalescer`), even across the two
/// trains a super-frame may have been sent in. What does not fit the batch stays for the next
/// call.
final class TrainReceiver {
    static let slotSize = 65_536 + 64
    let queue = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// 64 slots of `slotSize` bytes, touched only as far as messages reach.
    let area = UnsafeMutableRawPointer.allocate(byteCount: Int(CTB_BATCH_MAX) * slotSize, alignment: 64)
    var coalescer = SegmentCoalescer()
    /// The port whose frame the coalescer is building in the batch's next slot.
    var building: PortID? = nil
    /// Received messages not yet turned into frames: `pendingMessage ..< pendingCount` of
    /// `queue`, the first from byte `pendingOffset`.
    var pendingMessage = 0, pendingCount = 0, pendingOffset = 0
    var trainsReceived: UInt64 = 0
    /// The last read brought fewer messages than asked: once they are used up, the socket is
    /// empty (no read more until the next poll).
    var lastReadShort = false
    var framesCoalesced: UInt64 = 0

    init() { queue.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX)) }

    deinit {
        queue.deallocate()
        area.deallocate()
    }

    func receive<Inbox: DatagramInbox>(into batch: FrameBatch, from device: Inbox, now: Int64) throws(PortError) -> Int {
        var frames = 0
        while !batch.isFull {
            if pendingMessage >= pendingCount {
                if lastReadShort {
                    lastReadShort = false
                    batch.drained = true
                    break
                }
                for k in 0..<Int(CTB_BATCH_MAX) {
                    queue[k].data = area + k * Self.slotSize
                    queue[k].length = Self.slotSize
                }
                guard let got = try device.receiveMessages(into: queue, Int(CTB_BATCH_MAX)) else { continue }
                if got == 0 {
                    batch.drained = true
                    break
                }
                lastReadShort = got < Int(CTB_BATCH_MAX)
                pendingCount = got
                pendingMessage = 0
                pendingOffset = 0
            }
            frames += drain(into: batch, from: device, now: now)
            // a stranger's message waits for the daemon's decision, and everything behind it
            if device.awaitsAdmission { break }
        }
        if building != nil { frames += commitBuilt(into: batch) }
        return frames
    }

    /// Frames from the received messages into `batch` until it is full or they are used up.
    func drain<Inbox: DatagramInbox>(into batch: FrameBatch, from device: Inbox, now: Int64) -> Int {
        var frames = 0
        while pendingMessage < pendingCount {
            // no room to record another drop: the rest waits for the next call
            if batch.receiveDrops.count >= batch.capacity { return frames }
            let d = queue[pendingMessage]
            let total = d.length, stride = d.segment_size > 0 ? Int(d.segment_size) : d.length
            var first = d
            first.length = min(stride, total)
            let sender = withUnsafeBytes(of: d.peer) { SocketAddress($0.baseAddress!) }
            var roaming = false
            let peer = sender.flatMap { device.peer(sentFrom: $0) ?? device.roamer($0, first, roaming: &roaming) }
            if peer == nil, let sender {
                // every datagram of the train is the stranger's: counted, or kept here until
                // the daemon decides (a candidate: this message stays pending)
                let left = max(1, (total - pendingOffset + stride - 1) / max(stride, 1))
                if device.stranger(sender, first, now: now, datagrams: left, holding: false) { return frames }
            }
            if pendingOffset == 0, d.segment_size > 0 { trainsReceived &+= 1 }
            guard let (index, port) = peer, let sender, total <= Self.slotSize else {
                if let peer { batch.recordDrop(on: peer.port, .truncated, bytes: total) }
                pendingMessage += 1
                pendingOffset = 0
                continue
            }
            // (an empty datagram is one datagram too: counted as malformed, not skipped)
            let step = max(stride, 1)
            while pendingOffset < max(total, 1) {
                if batch.receiveDrops.count >= batch.capacity { return frames }
                let data = d.data + pendingOffset, length = min(stride, total - pendingOffset)
                guard let frame = device.innerFrame(data, length: length, peer: index, port: port, from: sender, roaming: roaming, batch: batch, now: now) else {
                    pendingOffset += step
                    continue
                }
                if building == port, coalescer.append(UnsafeRawBufferPointer(frame)) {
                    pendingOffset += step
                    continue
                }
                if building != nil { frames += commitBuilt(into: batch) }
                if batch.isFull { return frames }  // this datagram waits for the next call
                let slot = batch.nextSlot()
                // a frame larger than a batch slot is dropped, whatever sizes the slots and
                // the datagrams happen to have now
                guard frame.count <= slot.count else {
                    batch.recordDrop(on: port, .truncated, bytes: frame.count)
                    pendingOffset += step
                    continue
                }
                slot.baseAddress!.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
                coalescer.begin(slot.baseAddress!, length: frame.count, capacity: slot.count)
                building = port
                pendingOffset += step
            }
            pendingMessage += 1
            pendingOffset = 0
        }
        return frames
    }

    /// Commits the frame being built in the batch's next slot; returns 1.
    func commitBuilt(into batch: FrameBatch) -> Int {
        let (length, offload) = coalescer.end()
        if offload.isSegmentation { framesCoalesced &+= 1 }
        batch.commit(length: length, from: building!, offload: offload)
        building = nil
        return 1
    }
}
