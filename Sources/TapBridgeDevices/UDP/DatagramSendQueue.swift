import CTapBridge
import Glibc
import TapBridgeCore

/// The UDP device's send side: frames for remotes are copied, each behind its peer's VXLAN
/// header, into a pool of 64 slots and leave with one sendmmsg per batch (`flush`). A TCP or
/// UDP super-frame is cut into segments that go back to back into one slot and leave as one
/// entry with UDP_SEGMENT: a train of datagrams. A train the kernel refuses is sent again one
/// datagram at a time.
final class DatagramSendQueue {
    /// Largest datagram tapbridge sends: a 64 KiB frame plus the VXLAN header.
    static let slotSize = 65_536 + 8
    /// Largest train: every datagram of it in one IPv4 packet's worth (65,535 - 20 - 8 bytes),
    /// and at most 64 datagrams (the kernel's UDP_MAX_SEGMENTS).
    static let trainBytes = 65_507
    static let trainDatagrams = 64

    let datagrams = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    let pool = UnsafeMutableRawPointer.allocate(byteCount: Int(CTB_BATCH_MAX) * slotSize, alignment: 64)
    let ports = UnsafeMutablePointer<PortID>.allocate(capacity: Int(CTB_BATCH_MAX))
    let frameBytes = UnsafeMutablePointer<Int>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// Frames (segments) in each queued entry: 1, or the length of a train.
    let frameCounts = UnsafeMutablePointer<Int>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// The datagrams of a refused train, sent again one by one.
    let split = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    var queued = 0
    /// Trains sent (each one UDP_SEGMENT entry).
    var trainsSent: UInt64 = 0
    /// How queued frames ended since the last flush, summed by port and outcome (sends forced
    /// by a full queue happen before the flush, which reports them).
    var outcomes: [(port: PortID, outcome: TransmitOutcome, frames: Int, bytes: Int)] = []
    /// Cuts super-frames into the segments of a train.
    let finisher = OffloadFinisher()
    let socket: any DatagramSocket
    /// What an errno means for a datagram to `port` (the device marks unreachable peers).
    let classify: (Int32, PortID) -> TransmitOutcome
    /// A train was refused with this errno (the device turns trains off).
    let refused: (Int32) -> Void

    init(socket: any DatagramSocket, classify: @escaping (Int32, PortID) -> TransmitOutcome, refused: @escaping (Int32) -> Void) {
        self.socket = socket
        self.classify = classify
        self.refused = refused
        datagrams.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        ports.initialize(repeating: PortID(0), count: Int(CTB_BATCH_MAX))
        frameBytes.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
        frameCounts.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
        split.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        outcomes.reserveCapacity(Int(CTB_BATCH_MAX))
    }

    deinit {
        datagrams.deallocate()
        pool.deallocate()
        ports.deallocate()
        frameBytes.deallocate()
        frameCounts.deallocate()
        split.deallocate()
    }

    /// Queues `frame` for `peer` (copied, with its VXLAN header, because the engine may rewrite
    /// its buffer in place before the flush: VLAN tagging for the next port of a flood).
    @inline(__always)
    func queue(_ frame: UnsafeRawBufferPointer, to peer: PeerTable.Peer) -> TransmitOutcome {
        let header = peer.encapsulation.headerLength
        guard header + frame.count <= Self.slotSize else { return .tooLarge }
        let slot = nextSlot()
        if header > 0 { slot.copyMemory(from: peer.wire, byteCount: header) }
        (slot + header).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        enqueue(slot, length: header + frame.count, segmentSize: 0, frames: 1, frameBytes: frame.count, peer: peer)
        return .queued
    }

    /// Cuts super-frame `frame` into segments that leave as one or two trains to `peer`.
    func queueTrain(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to peer: PeerTable.Peer) -> TransmitOutcome {
        let header = peer.encapsulation.headerLength
        var slot = pool, used = 0, count = 0, size = 0, bytes = 0
        func close() {
            guard count > 0 else { return }
            enqueue(slot, length: used, segmentSize: count > 1 ? size : 0, frames: count, frameBytes: bytes, peer: peer)
            used = 0
            count = 0
            bytes = 0
        }
        let result = finisher.segment(frame, offload, maximumFrameLength: 65_557) { segment in
            let length = header + segment.count
            if count > 0, used + length > Self.trainBytes || count == Self.trainDatagrams || length > size { close() }
            if count == 0 {
                slot = nextSlot()
                size = length
            }
            if header > 0 { (slot + used).copyMemory(from: peer.wire, byteCount: header) }
            (slot + used + header).copyMemory(from: segment.baseAddress!, byteCount: segment.count)
            used += length
            count += 1
            bytes += segment.count
            if length < size { close() }  // a shorter datagram ends a train
        }
        close()
        switch result {
        case .success: return .queued
        case .failure(let failure): return failure == .tooLarge ? .tooLarge : .failed
        }
    }

    /// The slot for the next entry (the queue is sent first if it is full).
    @inline(__always) func nextSlot() -> UnsafeMutableRawPointer {
        if queued == Int(CTB_BATCH_MAX) { send() }
        return pool + queued * Self.slotSize
    }

    /// Queues the datagram (or train of `segmentSize`-byte datagrams) of `length` bytes at `slot`.
    @inline(__always)
    func enqueue(_ slot: UnsafeMutableRawPointer, length: Int, segmentSize: Int, frames: Int, frameBytes bytes: Int, peer: PeerTable.Peer) {
        datagrams[queued].data = slot
        datagrams[queued].length = length
        datagrams[queued].segment_size = UInt32(segmentSize)
        datagrams[queued].destination = UnsafeRawPointer(peer.wire + 8)
        datagrams[queued].destination_length = peer.addressLength
        ports[queued] = peer.port
        frameBytes[queued] = bytes
        frameCounts[queued] = frames
        if segmentSize > 0 { trainsSent &+= 1 }
        queued += 1
    }

    /// Sends what is queued and reports how every frame since the last flush ended.
    func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        if queued > 0 { send() }
        for o in outcomes { report(o.port, o.outcome, o.frames, o.bytes) }
        outcomes.removeAll(keepingCapacity: true)
    }

    /// Sends the queue and notes how each entry ended.
    func send() {
        socket.send(datagrams, count: queued)
        for k in 0..<queued {
            let error = -datagrams[k].result
            if datagrams[k].segment_size > 0, error == EIO || error == EINVAL || error == EMSGSIZE || error == EOPNOTSUPP {
                refused(error)
                sendSplit(k)
                continue
            }
            note(ports[k], classify(error, ports[k]), frames: frameCounts[k], bytes: frameBytes[k])
        }
        queued = 0
    }

    /// Sends entry `k`, a refused train, one datagram at a time.
    func sendSplit(_ k: Int) {
        let d = datagrams[k], size = Int(d.segment_size), count = frameCounts[k]
        let header = (d.length - frameBytes[k]) / count  // the same for every datagram
        for i in 0..<count {
            split[i] = d
            split[i].data = d.data + i * size
            split[i].length = min(size, d.length - i * size)
            split[i].segment_size = 0
        }
        socket.send(split, count: count)
        for i in 0..<count {
            note(ports[k], classify(-split[i].result, ports[k]), frames: 1, bytes: split[i].length - header)
        }
    }

    /// Adds an outcome to `outcomes` (a short list: one item per port and outcome).
    @inline(__always)
    func note(_ port: PortID, _ outcome: TransmitOutcome, frames: Int, bytes: Int) {
        for i in outcomes.indices where outcomes[i].port == port && outcomes[i].outcome == outcome {
            outcomes[i].frames += frames
            outcomes[i].bytes += bytes
            return
        }
        outcomes.append((port, outcome, frames, bytes))
    }
}
