import CTapBridge
import Glibc
import TapBridgeCore

/// The UDP device's send side: frames for remotes are copied, each sealed in its peer's
/// format (`EncapsulationFormat`: VXLAN's header in front), into a pool of 64 slots and leave with one sendmmsg per batch (`flush`). A TCP or
/// UDP super-frame is cut into segments that fit the peer's path; with trains, they go back to
/// back into one slot and leave as one entry with UDP_SEGMENT. A train the kernel refuses is
/// sent again one datagram at a time.
///
/// The queue knows sockets and slots, not peers' fate: each entry's errno is kept with its
/// port (`Ending`) and the device decides at `flush` what it means (an unreachable peer, a
/// full buffer). Nothing here calls back into the device.
final class DatagramSendQueue {
    /// Largest datagram tapbridge sends: a 64 KiB frame plus what a format adds around it.
    static let slotSize = 65_536 + 64
    /// Largest train: every datagram of it in one IPv4 packet's worth (65,535 - 20 - 8 bytes),
    /// and at most 64 datagrams (the kernel's UDP_MAX_SEGMENTS).
    static let trainBytes = 65_507
    static let trainDatagrams = 64

    /// How the entries for one port ended with one errno (0: sent), summed since the last flush.
    struct Ending: Equatable {
        var port: PortID
        var error: Int32
        var frames: Int
        var bytes: Int
    }

    let datagrams = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    let pool = UnsafeMutableRawPointer.allocate(byteCount: Int(CTB_BATCH_MAX) * slotSize, alignment: 64)
    let ports = UnsafeMutablePointer<PortID>.allocate(capacity: Int(CTB_BATCH_MAX))
    let frameBytes = UnsafeMutablePointer<Int>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// Frames (segments) in each queued entry: 1, or the length of a train.
    let frameCounts = UnsafeMutablePointer<Int>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// The datagrams of a refused train, sent again one by one.
    let split = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    @exclusivity(unchecked) var queued = 0
    /// Trains sent (each one UDP_SEGMENT entry).
    var trainsSent: UInt64 = 0
    /// How queued frames ended since the last flush (sends forced by a full queue happen
    /// before the flush, which reports them): a short list, one item per port and errno.
    var endings: [Ending] = []
    /// Where each port's "sent" ending is in `endings`, by port index (-1: none since the last
    /// flush): noting a sent entry is one lookup, not a scan of the endings, which grew with
    /// the remotes (a flood to N remotes scanned N endings for each: N² a batch). Errors are
    /// rare and scan.
    var sentEnding: [Int] = []
    /// Trains the kernel refused since the device last looked: the errno and the port of each
    /// (each was sent again one datagram at a time).
    var refusals: [(error: Int32, port: PortID)] = []
    /// Cuts super-frames into the segments of a train.
    let finisher = OffloadFinisher()
    let socket: any DatagramSocket

    init(socket: any DatagramSocket) {
        self.socket = socket
        datagrams.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        ports.initialize(repeating: PortID(0), count: Int(CTB_BATCH_MAX))
        frameBytes.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
        frameCounts.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
        split.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        endings.reserveCapacity(Int(CTB_BATCH_MAX))
    }

    deinit {
        datagrams.deallocate()
        pool.deallocate()
        ports.deallocate()
        frameBytes.deallocate()
        frameCounts.deallocate()
        split.deallocate()
    }

    /// Queues `frame` for `peer` (copied, then sealed in the peer's format, because the engine may rewrite
    /// its buffer in place before the flush: VLAN tagging for the next port of a flood). A TCP
    /// SYN's MSS is lowered, in the copy, to what fits the peer's path (`MSSClamp`).
    @inline(__always)
    func queue(_ frame: UnsafeRawBufferPointer, to peer: PeerTable.Peer) -> TransmitOutcome {
        let format = peer.format, header = format.headerLength
        guard header + frame.count + format.trailerLength <= Self.slotSize else { return .tooLarge }
        let slot = nextSlot()
        (slot + header).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        _ = MSSClamp.clamp(UnsafeMutableRawBufferPointer(start: slot + header, count: frame.count), maximumFrameLength: peer.maximumFrameLength)
        let length = format.seal(slot, frameLength: frame.count)
        guard length > 0 else { return .linkDown }  // (a format whose session ended: readyToSend said otherwise)
        enqueue(slot, length: length, segmentSize: 0, frames: 1, frameBytes: frame.count, peer: peer)
        return .queued
    }

    /// Cuts super-frame `frame` into segments for `peer`. TCP segments are cut to fit the
    /// peer's path whatever segment size the sender chose (a TCP stream never needs an IP
    /// fragment); UDP ones keep their size (each is a datagram of the sender's), and one larger
    /// than the path leaves alone, for the kernel to fragment (returned: `oversize`). With
    /// `trains`, segments of one size go back to back into one entry (UDP_SEGMENT): one or
    /// two trains per super-frame; without, one entry each.
    func queueSegments(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to peer: PeerTable.Peer, trains: Bool)
        -> (outcome: TransmitOutcome, oversize: Int)
    {
        let isTCP = offload.segmentation == .tcpv4 || offload.segmentation == .tcpv6
        train = Train(trains: trains)
        // each segment is built in place, behind its VXLAN header in the train's slot
        let result = finisher.segment(frame, offload, maximumFrameLength: isTCP ? peer.maximumFrameLength : 65_557,
                                      into: { reserve($0, to: peer) }, { add($0, to: peer) })
        closeTrain(to: peer)
        switch result {
        case .success: return (.queued, train.oversize)
        case .failure(let failure): return (failure == .tooLarge ? .tooLarge : .failed, train.oversize)
        }
    }

    /// The train being built by `queueSegments` (a stored property, not state captured by the
    /// segment closure: captured variables cost a dynamic exclusivity check per access, 2.4 %
    /// of the sender's CPU in a profile).
    struct Train {
        var trains: Bool
        var slot: UnsafeMutableRawPointer? = nil
        var used = 0, count = 0, size = 0, bytes = 0, oversize = 0
    }
    @exclusivity(unchecked) var train = Train(trains: false)

    /// Room for the next segment (`frameLength` bytes) in the train for `peer`, behind the
    /// room for its header: the train is closed first if the segment cannot join it.
    @inline(__always)
    func reserve(_ frameLength: Int, to peer: PeerTable.Peer) -> UnsafeMutableRawPointer {
        let header = peer.format.headerLength
        let length = header + frameLength + peer.format.trailerLength
        let alone = frameLength > peer.maximumFrameLength  // (UDP only) fragmented by the kernel: never in a train
        if train.count > 0, !train.trains || alone || train.used + length > Self.trainBytes || train.count == Self.trainDatagrams || length > train.size {
            closeTrain(to: peer)
        }
        if train.count == 0 {
            train.slot = nextSlot()
            train.size = length
        }
        return train.slot! + train.used + header
    }

    /// Seals the segment just built where `reserve` said and counts it into the train.
    @inline(__always)
    func add(_ segment: UnsafeRawBufferPointer, to peer: PeerTable.Peer) {
        let length = peer.format.seal(train.slot! + train.used, frameLength: segment.count)
        guard length > 0 else { return }  // (see `queue`)
        let alone = segment.count > peer.maximumFrameLength
        if alone { train.oversize += 1 }
        train.used += length
        train.count += 1
        train.bytes += segment.count
        if length < train.size || alone { closeTrain(to: peer) }  // a shorter datagram ends a train
    }

    /// Queues the train built so far as one entry.
    @inline(__always)
    func closeTrain(to peer: PeerTable.Peer) {
        guard train.count > 0, let slot = train.slot else { return }
        enqueue(slot, length: train.used, segmentSize: train.count > 1 ? train.size : 0, frames: train.count, frameBytes: train.bytes, peer: peer)
        train.used = 0
        train.count = 0
        train.bytes = 0
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
        // the entry gets its own copy of the destination: the peer (and its sockaddr) may be
        // removed before the flush
        precondition(Int(peer.addressLength) <= MemoryLayout.size(ofValue: datagrams[queued].peer))
        withUnsafeMutableBytes(of: &datagrams[queued].peer) { $0.copyMemory(from: UnsafeRawBufferPointer(start: peer.sockaddr, count: Int(peer.addressLength))) }
        datagrams[queued].peer_length = peer.addressLength
        ports[queued] = peer.port
        frameBytes[queued] = bytes
        frameCounts[queued] = frames
        if segmentSize > 0 { trainsSent &+= 1 }
        queued += 1
    }

    /// Sends what is queued; hands `body` how every frame since the last flush ended (the list
    /// is kept and reused: no allocation per flush).
    func flush(_ body: (Ending) -> Void) {
        if queued > 0 { send() }
        for e in endings {
            body(e)
            if e.error == 0 { sentEnding[e.port.index] = -1 }
        }
        endings.removeAll(keepingCapacity: true)
    }

    /// Sends the queue and notes how each entry ended. A refused train (no checksum offload on
    /// the route, or datagrams larger than the path) is sent again one datagram at a time and
    /// noted in `refusals`.
    func send() {
        socket.send(datagrams, count: queued)
        for k in 0..<queued {
            let error = -datagrams[k].result
            if datagrams[k].segment_size > 0, error == EIO || error == EINVAL || error == EMSGSIZE || error == EOPNOTSUPP {
                refusals.append((error, ports[k]))
                sendSplit(k)
                continue
            }
            note(ports[k], error, frames: frameCounts[k], bytes: frameBytes[k])
        }
        queued = 0
    }

    /// Sends entry `k`, a refused train, one datagram at a time.
    func sendSplit(_ k: Int) {
        let d = datagrams[k], size = Int(d.segment_size), count = frameCounts[k]
        let overhead = (d.length - frameBytes[k]) / count  // what the format adds: the same for every datagram
        for i in 0..<count {
            split[i] = d
            split[i].data = d.data + i * size
            split[i].length = min(size, d.length - i * size)
            split[i].segment_size = 0
        }
        socket.send(split, count: count)
        for i in 0..<count {
            note(ports[k], -split[i].result, frames: 1, bytes: split[i].length - overhead)
        }
    }

    /// Adds an ending to `endings` (one item per port and errno).
    @inline(__always)
    func note(_ port: PortID, _ error: Int32, frames: Int, bytes: Int) {
        if error == 0 {
            // (grows to the highest port index once; no allocation after)
            if port.index >= sentEnding.count { sentEnding += Array(repeating: -1, count: port.index + 1 - sentEnding.count) }
            let i = sentEnding[port.index]
            if i >= 0 {
                endings[i].frames += frames
                endings[i].bytes += bytes
            } else {
                sentEnding[port.index] = endings.count
                endings.append(Ending(port: port, error: 0, frames: frames, bytes: bytes))
            }
            return
        }
        for i in endings.indices where endings[i].port == port && endings[i].error == error {
            endings[i].frames += frames
            endings[i].bytes += bytes
            return
        }
        endings.append(Ending(port: port, error: error, frames: frames, bytes: bytes))
    }
}
