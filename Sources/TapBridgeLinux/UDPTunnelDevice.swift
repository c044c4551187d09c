import CTapBridge
import Glibc
public import Logging
public import TapBridgeCore

/// One UDP socket serving every remote peer; each peer is its own port of the bridge.
///
/// ```
///   datagram from 192.0.2.5:9000 ──► peer table ──► port 3 (vxlan, VNI 1) ──► decode ──► frame
///   datagram from anyone else    ──► dropped, counted, logged (rate-limited), or, with
///                                    --accept-peers, a new dynamic peer (up to a limit)
///   frame for port 3 ──► sendmsg([VXLAN header, frame]) to 192.0.2.5:9000  (no copy)
/// ```
/// Datagrams are read with recvmmsg, 8 bytes before each batch slot, into the headroom, so that
/// a VXLAN datagram's inner frame lands exactly at the slot's start and a raw one 8 bytes into
/// the headroom: received frames are never copied. Sent frames are queued (copied, with their
/// VXLAN header) and leave with one sendmmsg per batch, when the engine calls `flush`.
///
/// With offloads on (the default) the socket also moves datagrams in trains, as wireguard-go
/// does for its UDP side:
/// ```
///   TCP super-frame for port 3 ──► cut into segments (each a plain frame, checksums complete),
///       each with its VXLAN header, back to back in one send slot ──► one sendmmsg entry with
///       UDP_SEGMENT = datagram size: the kernel sends them as separate datagrams (on loopback
///       as one GSO packet that the receiving socket takes whole)
///   UDP_GRO train of datagrams ──► each decoded ──► consecutive TCP segments of one flow merged
///       (SegmentCoalescer: checksums verified first) ──► one super-frame with a TSO state
/// ```
/// On the wire nothing changes: every datagram is a plain VXLAN or raw frame that a Linux vxlan
/// device or QEMU's `-netdev dgram` takes as before. A kernel that refuses a train (EIO: no
/// checksum offload on the route; EINVAL or EMSGSIZE: datagrams larger than the path MTU) makes
/// the device send it again one datagram at a time and fall back to that for good, logged once
/// and counted.
public final class UDPTunnelDevice: PortDevice {
    /// One remote peer.
    struct Peer {
        var address: SocketAddress
        var encapsulation: Encapsulation
        var vni: VNI
        var port: PortID
        var isDynamic: Bool
        var lastHeard: Int64
        /// The VXLAN header (8 bytes) and the sockaddr (up to 28 bytes), allocated once.
        var wire: UnsafeMutableRawPointer
        var addressLength: socklen_t
        /// Whether the partial-checksum notice was logged for this peer.
        var reportedPartialChecksums = false
        /// ICMP errors (port or host unreachable, no route) for datagrams sent to this peer.
        var unreachable: UInt64 = 0
        /// An error came for this peer and no well-formed frame from it since.
        var isUnreachable = false
    }

    /// Counters of things that belong to no port.
    public struct Statistics: Sendable {
        /// Datagrams from senders that are not peers.
        public var unknownSender: UInt64 = 0
        /// ICMP errors (port or host unreachable) reported on the socket.
        public var unreachable: UInt64 = 0
        /// Well-formed frames from unknown senders refused because `--max-peers` was reached.
        public var peersRefused: UInt64 = 0
        /// Inner frames whose TCP/UDP checksum arrived partial (a same-host kernel VTEP with
        /// checksum offload) and was completed here.
        public var checksumsCompleted: UInt64 = 0
        /// Trains of datagrams sent with one UDP_SEGMENT message each.
        public var trainsSent: UInt64 = 0
        /// Trains of datagrams received whole (UDP_GRO).
        public var trainsReceived: UInt64 = 0
        /// Super-frames built by merging the TCP segments of received trains.
        public var framesCoalesced: UInt64 = 0
        /// Trains the kernel refused (UDP_SEGMENT unusable on the route): each was sent again
        /// one datagram at a time, and trains were turned off.
        public var trainsRefused: UInt64 = 0
    }

    /// The address the socket is bound to.
    public let localAddress: SocketAddress
    /// The socket's family: AF_INET (IPv4 only) or AF_INET6 (both).
    let family: Int32
    let fd: Int32
    let logger: Logger
    var peers: [Peer?] = []
    @exclusivity(unchecked) var peerByAddress: [SocketAddress: Int] = [:]
    /// VXLAN peers by IP address alone (port 0): RFC 7348 senders, the Linux vxlan device among
    /// them, pick the UDP source port from a hash of the inner flow, so a VXLAN peer is known by
    /// its address. -1 marks an address shared by several VXLAN peers: those need the exact port.
    @exclusivity(unchecked) var vxlanPeerByHost: [SocketAddress: Int] = [:]
    @exclusivity(unchecked) var peerByPort: [Int] = []
    public private(set) var statistics = Statistics()

    // Batch I/O state, allocated once.
    /// Largest datagram tapbridge sends: a 64 KiB frame plus the VXLAN header.
    static let sendSlotSize = 65_536 + 8
    let receiveQueue = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    let sendDatagrams = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    let sendPool = UnsafeMutableRawPointer.allocate(byteCount: Int(CTB_BATCH_MAX) * sendSlotSize, alignment: 64)
    let sendPorts = UnsafeMutablePointer<PortID>.allocate(capacity: Int(CTB_BATCH_MAX))
    let sendFrameBytes = UnsafeMutablePointer<Int>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// Frames (segments) in each queued entry: 1, or the length of a train.
    let sendFrameCounts = UnsafeMutablePointer<Int>.allocate(capacity: Int(CTB_BATCH_MAX))
    /// The datagrams of a refused train, sent again one by one.
    let splitDatagrams = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    var queued = 0
    /// Trains: super-frames leave as UDP_SEGMENT trains (off when the kernel lacks or refuses
    /// it, or with --offload off).
    public private(set) var sendsTrains: Bool
    /// Trains arrive whole (UDP_GRO) and their TCP segments are merged.
    public let receivesTrains: Bool
    /// Cuts super-frames into the segments of a train.
    let finisher = OffloadFinisher()
    var coalescer = SegmentCoalescer()
    /// The port whose frame the coalescer is building in the batch's next slot.
    var building: PortID? = nil
    /// Received messages not yet turned into frames: `pendingMessage ..< pendingCount` of
    /// `receiveQueue`, the first from byte `pendingOffset`.
    var pendingMessage = 0, pendingCount = 0, pendingOffset = 0
    /// Where messages are received with trains on: 64 slots of `trainSlotSize` bytes, touched
    /// only as far as messages reach (allocated only with trains).
    let trainArea: UnsafeMutableRawPointer
    static let trainSlotSize = 65_536 + 64
    /// Largest train: every datagram of it in one IPv4 packet's worth (65,535 - 20 - 8 bytes),
    /// and at most 64 datagrams (the kernel's UDP_MAX_SEGMENTS).
    static let trainBytes = 65_507
    static let trainDatagrams = 64
    /// How queued frames ended since the last flush, summed by port and outcome (sends forced
    /// by a full queue happen before the flush, which reports them).
    var outcomes: [(port: PortID, outcome: TransmitOutcome, frames: Int, bytes: Int)] = []

    var lastUnknownLog: Int64 = .min
    var unknownSinceLog: UInt64 = 0

    /// `--accept-peers`: the encapsulation and VNI an unknown sender's datagram must be
    /// well-formed in (the bridge-wide `--encap` and `--vni`) and the most dynamic peers; nil:
    /// unknown senders are dropped.
    public var accepting: (encapsulation: Encapsulation, vni: VNI, limit: Int)? = nil
    /// Senders that asked to become peers during the last receive; the daemon admits them after
    /// the batch (`takeCandidates`), and their held datagrams are delivered on the next receive.
    public private(set) var candidates: [SocketAddress] = []
    /// Datagrams of candidates, in `heldArea`, one slot each.
    var held: [(sender: SocketAddress, length: Int)] = []
    var heldArea: UnsafeMutableRawPointer? = nil
    static let heldMaximum = 16

    /// Socket buffer size requested (forced when privileged): 4 MiB.
    static let bufferBytes: Int32 = 4 << 20

    /// Binds the socket to `address`. An IPv4 address gives an IPv4-only socket; an IPv6 one
    /// (including `[::]`) accepts both.
    /// `offload`: send and receive trains (UDP_SEGMENT, UDP_GRO) where the kernel has them.
    public init(listen address: SocketAddress, ipv4Only: Bool, offload: Bool = true, logger: Logger) throws(StartupError) {
        let family = ipv4Only ? AF_INET : AF_INET6
        self.family = family
        var storage = sockaddr_storage()
        let length = withUnsafeMutableBytes(of: &storage) { address.write(family: family, to: $0.baseAddress!) }
        guard length > 0 else { throw StartupError("listen address \(address) is IPv6 but the socket is IPv4") }
        let rc = withUnsafeBytes(of: &storage) {
            ctb_udp_open($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), UInt32(length), Self.bufferBytes)
        }
        if rc < 0 {
            throw StartupError("cannot listen on UDP \(address): \(describeErrno(-rc))\(-rc == EADDRINUSE ? " (another program, or another tapbridge, uses that port)" : "")")
        }
        fd = rc
        localAddress = address
        self.logger = logger
        let offloads = offload ? ctb_udp_enable_offloads(rc, 1) : 0
        sendsTrains = offloads & 1 != 0
        receivesTrains = offloads & 2 != 0
        trainArea = .allocate(byteCount: receivesTrains ? Int(CTB_BATCH_MAX) * Self.trainSlotSize : 1, alignment: 64)
        receiveQueue.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        sendDatagrams.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        sendPorts.initialize(repeating: PortID(0), count: Int(CTB_BATCH_MAX))
        sendFrameBytes.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
        sendFrameCounts.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
        splitDatagrams.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        outcomes.reserveCapacity(Int(CTB_BATCH_MAX))
    }

    deinit {
        close(fd)
        for case let p? in peers { p.wire.deallocate() }
        receiveQueue.deallocate()
        sendDatagrams.deallocate()
        sendPool.deallocate()
        sendPorts.deallocate()
        sendFrameBytes.deallocate()
        sendFrameCounts.deallocate()
        splitDatagrams.deallocate()
        trainArea.deallocate()
        heldArea?.deallocate()
    }

    public var pollDescriptor: Int32? { fd }

    /// With trains, TCP and UDP super-frames are taken whole (cut here, into a train); their
    /// segments leave with complete checksums, so partial ones are completed before.
    public var offloadCapabilities: OffloadCapabilities {
        sendsTrains ? OffloadCapabilities(partialChecksum: false, tcpSegmentation: true, udpSegmentation: true, maximumFrameLength: 65_557)
            : .none()
    }

    /// Adds a peer that is bridge port `port`. Throws if the address family does not fit the
    /// socket or the peer exists.
    public func addPeer(_ address: SocketAddress, encapsulation: Encapsulation, vni: VNI, isDynamic: Bool = false, as port: PortID) throws(StartupError) {
        if peerByAddress[address] != nil { throw StartupError("remote \(address) given twice") }
        let wire = UnsafeMutableRawPointer.allocate(byteCount: 8 + MemoryLayout<sockaddr_storage>.size, alignment: 8)
        wire.storeBytes(of: VXLANHeader.encodedHeader(vni: vni), as: UInt64.self)
        let length = address.write(family: family, to: wire + 8)
        guard length > 0 else {
            wire.deallocate()
            throw StartupError("remote \(address) is IPv6 but the listening socket \(localAddress) is IPv4 (use --listen [::]:PORT)")
        }
        let peer = Peer(address: address, encapsulation: encapsulation, vni: vni, port: port, isDynamic: isDynamic,
                        lastHeard: ctb_monotonic_ns(), wire: wire, addressLength: length)
        let index = peers.firstIndex { $0 == nil } ?? peers.count
        if index == peers.count { peers.append(peer) } else { peers[index] = peer }
        peerByAddress[address] = index
        reindexHost(of: address)
        if port.index >= peerByPort.count { peerByPort += Array(repeating: -1, count: port.index + 1 - peerByPort.count) }
        peerByPort[port.index] = index
    }

    /// Recomputes `vxlanPeerByHost` for the IP address of `address`.
    func reindexHost(of address: SocketAddress) {
        var host = address
        host.port = 0
        let sharing = peers.indices.filter {
            guard let p = peers[$0], p.encapsulation == .vxlan else { return false }
            var h = p.address
            h.port = 0
            return h == host
        }
        vxlanPeerByHost[host] = sharing.isEmpty ? nil : (sharing.count == 1 ? sharing[0] : -1)
    }

    /// The peer a datagram from `sender` belongs to: the exact address and port, or else the
    /// only VXLAN peer at that IP address.
    @inline(__always) func peer(for sender: SocketAddress) -> Int? {
        if let index = peerByAddress[sender] { return index }
        var host = sender
        host.port = 0
        if let index = vxlanPeerByHost[host], index >= 0 { return index }
        return nil
    }

    public func didRemovePort(_ port: PortID) {
        guard port.index < peerByPort.count, peerByPort[port.index] >= 0, let peer = peers[peerByPort[port.index]] else { return }
        peerByAddress[peer.address] = nil
        peer.wire.deallocate()
        peers[peerByPort[port.index]] = nil
        peerByPort[port.index] = -1
        reindexHost(of: peer.address)
    }

    /// The peer that is bridge port `port`, as `show ports` describes it.
    public func report(of port: PortID) -> RemoteReport? {
        guard let p = peer(of: port) else { return nil }
        return RemoteReport(endpoint: "\(p.address)", encapsulation: "\(p.encapsulation)", vni: p.encapsulation == .vxlan ? p.vni.rawValue : nil,
                            dynamic: p.isDynamic, unreachable: p.unreachable)
    }

    /// Number of dynamic peers.
    public var dynamicPeerCount: Int { peers.lazy.filter { $0?.isDynamic == true }.count }

    /// Ports of dynamic peers silent for `timeout` or longer at `now`.
    public func idleDynamicPeers(timeout: Duration, now: Instant) -> [PortID] {
        peers.compactMap { p in
            guard let p, p.isDynamic, now.nanoseconds - p.lastHeard >= timeout.nanoseconds else { return nil }
            return p.port
        }
    }

    /// When the next dynamic peer would become idle, for the poll timeout.
    public func nextIdleDeadline(timeout: Duration) -> Instant? {
        peers.lazy.compactMap { p in p.flatMap { $0.isDynamic ? $0.lastHeard : nil } }.min()
            .map { Instant(nanoseconds: $0).advanced(by: timeout) }
    }

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        let now = ctb_monotonic_ns()
        // (at most 16, and the batch is empty: they fit)
        var frames = held.isEmpty ? 0 : deliverHeld(into: batch, now: now)
        if receivesTrains { return try frames + receiveTrains(into: batch, now: now) }
        while !batch.isFull {
            // recvmmsg straight into the free slots, 8 bytes early (see the type's comment)
            let wanted = min(batch.remaining, Int(CTB_BATCH_MAX))
            let firstSlot = batch.used
            for k in 0..<wanted {
                let slot = batch.freeSlot(k)
                receiveQueue[k].data = slot.baseAddress! - VXLANHeader.length
                receiveQueue[k].length = slot.count + VXLANHeader.length
            }
            guard let got = try receiveMessages(wanted) else { continue }
            if got == 0 { return frames }
            for k in 0..<got {
                if deliver(receiveQueue[k], into: batch, freeSlot: firstSlot + k - batch.used, now: now) { frames += 1 }
            }
            batch.abandon(firstSlot + got - batch.used)
            if got < wanted { return frames }
        }
        return frames
    }

    /// Turns one received datagram into a frame in the batch (true), or counts why not.
    @inline(__always)
    func deliver(_ d: ctb_datagram, into batch: FrameBatch, freeSlot k: Int, now: Int64) -> Bool {
        let sender = withUnsafeBytes(of: d.peer) { SocketAddress($0.baseAddress!) }
        guard let sender else { return false }
        guard let index = peer(for: sender), let port = peers[index]?.port else {
            admit(sender, d, now)
            return false
        }
        if d.length > batch.frameCapacity + VXLANHeader.length {
            batch.recordDrop(on: port, .truncated, bytes: d.length)
            return false
        }
        guard let frame = innerFrame(d.data, length: d.length, peer: index, port: port, batch: batch, now: now) else { return false }
        // the slot starts 8 bytes after the datagram (see the type's comment)
        batch.commit(length: frame.count, from: port, shift: frame.baseAddress! - (d.data + VXLANHeader.length), freeSlot: k)
        return true
    }

    /// The inner frame of one datagram of `length` bytes at `data` from peer `index`, or nil
    /// (the drop is recorded on `port`). A well-formed frame proves the peer alive; a partial
    /// checksum from a same-host VTEP is completed.
    @inline(__always)
    func innerFrame(_ data: UnsafeMutableRawPointer, length: Int, peer index: Int, port: PortID, batch: FrameBatch, now: Int64) -> UnsafeMutableRawBufferPointer? {
        let frame: UnsafeMutableRawBufferPointer
        switch Self.decode(data, length: length, encapsulation: peers[index]!.encapsulation, vni: peers[index]!.vni) {
        case .success(let inner): frame = inner
        case .failure(let reason):
            batch.recordDrop(on: port, reason, bytes: length)
            return nil
        }
        // only a well-formed frame proves a peer alive (garbage must not keep a spoofed one)
        if let header = EthernetHeader(UnsafeRawBufferPointer(frame)), header.source.isValidSource {
            peers[index]!.lastHeard = now
            if peers[index]!.isUnreachable {
                peers[index]!.isUnreachable = false
                logger.notice("remote \(peers[index]!.address): reachable again (a frame arrived from it)")
            }
        }
        repairChecksum(frame.baseAddress!, length: frame.count, peer: index)
        return frame
    }

    /// recvmmsg of up to `count` messages into `receiveQueue` (buffers set by the caller): how
    /// many arrived (0: none waiting), or nil after an ICMP error for something we sent, which
    /// is charged to its peer and is never fatal (call again).
    func receiveMessages(_ count: Int) throws(PortError) -> Int? {
        let got = Int(ctb_udp_recv_batch(fd, receiveQueue, UInt32(count)))
        guard got < 0 else { return got }
        switch -Int32(got) {
        case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN:
            drainErrors()
            return nil
        default: throw PortError(.failed, code: -Int32(got), operation: "recvmmsg")
        }
    }

    /// Receives with trains on: up to 64 messages (each one datagram, or a train of datagrams
    /// of `segment_size` bytes from one sender) into the train area, then frames from them into
    /// the batch, copied (the only copy): consecutive TCP segments of one flow merge into one
    /// super-frame, even across the two trains a super-frame may have been sent in. What does
    /// not fit the batch stays for the next call (the engine calls again while the batch fills;
    /// the loop comes back at once when the engine's budget ran out).
    func receiveTrains(into batch: FrameBatch, now: Int64) throws(PortError) -> Int {
        var frames = 0
        while !batch.isFull {
            if pendingMessage >= pendingCount {
                for k in 0..<Int(CTB_BATCH_MAX) {
                    receiveQueue[k].data = trainArea + k * Self.trainSlotSize
                    receiveQueue[k].length = Self.trainSlotSize
                }
                guard let got = try receiveMessages(Int(CTB_BATCH_MAX)) else { continue }
                if got == 0 { break }
                pendingCount = got
                pendingMessage = 0
                pendingOffset = 0
            }
            frames += drain(into: batch, now: now)
        }
        if building != nil { frames += commitBuilt(into: batch) }
        return frames
    }

    /// Frames from the received messages into `batch` until it is full or they are used up.
    func drain(into batch: FrameBatch, now: Int64) -> Int {
        var frames = 0
        while pendingMessage < pendingCount {
            // no room to record another drop: the rest waits for the next call
            if batch.receiveDrops.count >= batch.capacity { return frames }
            let d = receiveQueue[pendingMessage]
            let total = d.length, stride = d.segment_size > 0 ? Int(d.segment_size) : d.length
            if pendingOffset == 0, d.segment_size > 0 { statistics.trainsReceived &+= 1 }
            var first = d
            first.length = min(stride, total)
            let sender = withUnsafeBytes(of: d.peer) { SocketAddress($0.baseAddress!) }
            let index = sender.flatMap { peer(for: $0) }
            if index == nil, let sender, pendingOffset == 0 { admit(sender, first, now) }
            guard let index, let port = peers[index]?.port, total <= Self.trainSlotSize else {
                if let index, let port = peers[index]?.port { batch.recordDrop(on: port, .truncated, bytes: total) }
                pendingMessage += 1
                pendingOffset = 0
                continue
            }
            // (an empty datagram is one datagram too: counted as malformed, not skipped)
            let step = max(stride, 1)
            while pendingOffset < max(total, 1) {
                if batch.receiveDrops.count >= batch.capacity { return frames }
                let data = d.data + pendingOffset, length = min(stride, total - pendingOffset)
                guard let frame = innerFrame(data, length: length, peer: index, port: port, batch: batch, now: now) else {
                    pendingOffset += step
                    continue
                }
                if building == port, coalescer.append(UnsafeRawBufferPointer(frame)) {
                    pendingOffset += step
                    continue
                }
                if building != nil { frames += commitBuilt(into: batch) }
                if batch.isFull { return frames }  // this datagram waits for the next call
                let slot = batch.nextSlot().baseAddress!
                slot.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
                coalescer.begin(slot, length: frame.count, capacity: batch.frameCapacity)
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
        if offload.isSegmentation { statistics.framesCoalesced &+= 1 }
        batch.commit(length: length, from: building!, offload: offload)
        building = nil
        return 1
    }

    /// Completes an inner checksum a same-host kernel VTEP left partial (see
    /// `OffloadFinisher.repairPartialChecksum`): a Linux vxlan device whose underlay never
    /// leaves the host (a veth) sends inner frames whose checksum was offloaded to hardware that
    /// is not there, and the UDP socket does not carry the metadata that says so. Logged once
    /// per peer, with the remedy on the peer's side.
    @inline(__always)
    func repairChecksum(_ frame: UnsafeMutableRawPointer, length: Int, peer index: Int) {
        guard OffloadFinisher.repairPartialChecksum(UnsafeMutableRawBufferPointer(start: frame, count: length)) == .completed else { return }
        statistics.checksumsCompleted &+= 1
        if !peers[index]!.reportedPartialChecksums {
            peers[index]!.reportedPartialChecksums = true
            logger.notice("remote \(peers[index]!.address) sends inner frames with partial checksums (a kernel VTEP on the same host, with checksum offload on); tapbridge completes them, at the cost of one pass over each such frame. To avoid it, turn transmit checksum offload off on that device: ethtool -K DEV tx off")
        }
    }

    /// What a datagram holds: a frame, or a reason to drop it.
    enum Decoded {
        case success(UnsafeMutableRawBufferPointer)
        case failure(DropReason)
    }

    /// The inner frame of the datagram of `length` bytes at `data` in `encapsulation` (and
    /// `vni`), or why it is not one (`malformed_encapsulation`, `vni_mismatch`).
    @inline(__always)
    static func decode(_ data: UnsafeMutableRawPointer, length: Int, encapsulation: Encapsulation, vni: VNI) -> Decoded {
        switch encapsulation {
        case .raw:
            return .success(UnsafeMutableRawBufferPointer(start: data, count: length))
        case .vxlan:
            switch VXLANHeader.decode(UnsafeRawBufferPointer(start: data, count: length)) {
            case .frame(let got, let inner):
                return got == vni ? .success(UnsafeMutableRawBufferPointer(start: data + VXLANHeader.length, count: inner)) : .failure(.vniMismatch)
            case .tooShort, .flagsInvalid:
                return .failure(.malformedEncapsulation)
            }
        }
    }

    /// The inner frame of datagram `d` if it is a well-formed frame in `encapsulation` (and
    /// `vni`) with a station as its source; nil otherwise.
    static func frame(in d: ctb_datagram, encapsulation: Encapsulation, vni: VNI) -> UnsafeRawBufferPointer? {
        guard case .success(let frame) = decode(d.data, length: d.length, encapsulation: encapsulation, vni: vni),
            let header = EthernetHeader(UnsafeRawBufferPointer(frame)), header.source.isValidSource
        else { return nil }
        return UnsafeRawBufferPointer(frame)
    }

    /// A datagram from a sender that is not a peer: dropped, counted and logged (at most one
    /// line per 10 s), unless `--accept-peers` lets the sender in. Then the datagram must be a
    /// well-formed frame in the bridge-wide encapsulation (empty or garbage datagrams from
    /// spoofed addresses cannot fill the peer table) and the limit must allow; it is held, and
    /// the sender becomes a candidate that the daemon admits after the batch.
    func admit(_ sender: SocketAddress, _ d: ctb_datagram, _ now: Int64) {
        let why: String
        if let accepting {
            let isCandidate = candidates.contains(sender)
            if Self.frame(in: d, encapsulation: accepting.encapsulation, vni: accepting.vni) == nil {
                statistics.unknownSender &+= 1
                why = "not a well-formed \(accepting.encapsulation) frame, so not accepted as a peer"
            } else if !isCandidate && dynamicPeerCount + candidates.count >= accepting.limit {
                statistics.peersRefused &+= 1
                why = "peer limit reached"
            } else if hold(d, from: sender) {
                if !isCandidate { candidates.append(sender) }
                return
            } else {
                statistics.unknownSender &+= 1
                why = "more than \(Self.heldMaximum) datagrams from new peers in one batch"
            }
        } else {
            statistics.unknownSender &+= 1
            why = "not a configured remote"
        }
        unknownSinceLog &+= 1
        if lastUnknownLog == .min || now - lastUnknownLog >= 10_000_000_000 {
            logger.warning("dropped datagram(s) from \(sender): \(why) (\(unknownSinceLog) since the last such line)")
            lastUnknownLog = now
            unknownSinceLog = 0
        }
    }

    /// Keeps a copy of a candidate's datagram (false: no room).
    func hold(_ d: ctb_datagram, from sender: SocketAddress) -> Bool {
        guard held.count < Self.heldMaximum, d.length <= Self.trainSlotSize else { return false }
        let area = heldArea ?? .allocate(byteCount: Self.heldMaximum * Self.trainSlotSize, alignment: 64)
        heldArea = area
        (area + held.count * Self.trainSlotSize).copyMemory(from: d.data, byteCount: d.length)
        held.append((sender, d.length))
        return true
    }

    /// The senders waiting to become peers; the caller admits each with `addPeer` (or not: its
    /// datagrams are then dropped, counted as refused).
    public func takeCandidates() -> [SocketAddress] {
        defer { candidates.removeAll() }
        return candidates
    }

    /// Whether held datagrams wait for the next receive.
    public var holdsDatagrams: Bool { !held.isEmpty }

    /// The held datagrams of admitted candidates, as frames into `batch`.
    func deliverHeld(into batch: FrameBatch, now: Int64) -> Int {
        var frames = 0
        for (k, h) in held.enumerated() {
            guard let index = peer(for: h.sender), let port = peers[index]?.port else {
                statistics.peersRefused &+= 1
                continue
            }
            guard let frame = innerFrame(heldArea! + k * Self.trainSlotSize, length: h.length, peer: index, port: port, batch: batch, now: now) else { continue }
            guard frame.count <= batch.frameCapacity else {
                batch.recordDrop(on: port, .truncated, bytes: h.length)
                continue
            }
            batch.nextSlot().baseAddress!.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
            batch.commit(length: frame.count, from: port)
            frames += 1
        }
        held.removeAll(keepingCapacity: true)
        return frames
    }

    /// Queues `frame` for `port`'s peer; `flush` sends the queue with one sendmmsg. The frame
    /// is copied (with its VXLAN header) because the engine may rewrite its buffer in place
    /// before the flush (VLAN tagging for the next egress port of a flood).
    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        guard let peer = peer(of: port) else { return .failed }
        let header = peer.encapsulation.headerLength
        guard header + frame.count <= Self.sendSlotSize else { return .tooLarge }
        let slot = nextSendSlot()
        if header > 0 { slot.copyMemory(from: peer.wire, byteCount: header) }
        (slot + header).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        enqueue(slot, length: header + frame.count, segmentSize: 0, frames: 1, frameBytes: frame.count, peer: peer, port: port)
        return .queued
    }

    /// A super-frame (the engine passes one only while `sendsTrains`): cut into segments that
    /// leave as one or two trains.
    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        guard offload.isSegmentation else { return transmit(frame, to: port) }
        guard let peer = peer(of: port) else { return .failed }
        let header = peer.encapsulation.headerLength
        var slot = sendPool, used = 0, datagrams = 0, size = 0, frameBytes = 0
        func close() {
            guard datagrams > 0 else { return }
            enqueue(slot, length: used, segmentSize: datagrams > 1 ? size : 0, frames: datagrams, frameBytes: frameBytes, peer: peer, port: port)
            used = 0
            datagrams = 0
            frameBytes = 0
        }
        let result = finisher.segment(frame, offload, maximumFrameLength: 65_557) { segment in
            let length = header + segment.count
            if datagrams > 0, used + length > Self.trainBytes || datagrams == Self.trainDatagrams || length > size { close() }
            if datagrams == 0 {
                slot = nextSendSlot()
                size = length
            }
            if header > 0 { (slot + used).copyMemory(from: peer.wire, byteCount: header) }
            (slot + used + header).copyMemory(from: segment.baseAddress!, byteCount: segment.count)
            used += length
            datagrams += 1
            frameBytes += segment.count
            if length < size { close() }  // a shorter datagram ends a train
        }
        close()
        switch result {
        case .success: return .queued
        case .failure(let failure): return failure == .tooLarge ? .tooLarge : .failed
        }
    }

    /// The peer that is bridge port `port`.
    @inline(__always) func peer(of port: PortID) -> Peer? {
        guard port.index < peerByPort.count, peerByPort[port.index] >= 0 else { return nil }
        return peers[peerByPort[port.index]]
    }

    /// The send slot for the next queue entry (the queue is sent first if it is full; the flush
    /// reports how those ended).
    @inline(__always) func nextSendSlot() -> UnsafeMutableRawPointer {
        if queued == Int(CTB_BATCH_MAX) { sendQueue() }
        return sendPool + queued * Self.sendSlotSize
    }

    /// Queues the datagram (or train of `segmentSize`-byte datagrams) of `length` bytes at `slot`.
    @inline(__always)
    func enqueue(_ slot: UnsafeMutableRawPointer, length: Int, segmentSize: Int, frames: Int, frameBytes: Int, peer: Peer, port: PortID) {
        sendDatagrams[queued].data = slot
        sendDatagrams[queued].length = length
        sendDatagrams[queued].segment_size = UInt32(segmentSize)
        sendDatagrams[queued].destination = UnsafeRawPointer(peer.wire + 8)
        sendDatagrams[queued].destination_length = peer.addressLength
        sendPorts[queued] = port
        sendFrameBytes[queued] = frameBytes
        sendFrameCounts[queued] = frames
        if segmentSize > 0 { statistics.trainsSent &+= 1 }
        queued += 1
    }

    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        if queued > 0 { sendQueue() }
        for o in outcomes { report(o.port, o.outcome, o.frames, o.bytes) }
        outcomes.removeAll(keepingCapacity: true)
    }

    /// Sends the queue and notes how each datagram ended.
    func sendQueue() {
        _ = ctb_udp_send_batch(fd, sendDatagrams, UInt32(queued))
        for k in 0..<queued {
            let error = -sendDatagrams[k].result
            if sendDatagrams[k].segment_size > 0, error == EIO || error == EINVAL || error == EMSGSIZE || error == EOPNOTSUPP {
                refuseTrains(error)
                sendSplit(k)
                continue
            }
            note(sendPorts[k], outcome(error, port: sendPorts[k]), frames: sendFrameCounts[k], bytes: sendFrameBytes[k])
        }
        queued = 0
    }

    /// How a datagram to `port`'s peer ended, from its errno (an unreachable one marks the peer).
    func outcome(_ error: Int32, port: PortID) -> TransmitOutcome {
        switch error {
        case 0: return .sent
        case EAGAIN, ENOBUFS: return .wouldBlock
        case EMSGSIZE: return .tooLarge
        case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN:
            if port.index < peerByPort.count, peerByPort[port.index] >= 0 { markUnreachable(peerByPort[port.index], error) }
            return .linkDown
        default: return .failed
        }
    }

    /// Reads every ICMP error queued on the socket and charges each to the peer it concerns.
    func drainErrors() {
        var address = (UInt64(0), UInt64(0), UInt64(0), UInt32(0))  // 28 bytes
        var error: Int32 = 0
        while withUnsafeMutableBytes(of: &address, { ctb_udp_read_error(fd, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), &error) }) == 1 {
            let destination = withUnsafeBytes(of: &address) { SocketAddress($0.baseAddress!) }
            if let destination, let index = peerByAddress[destination] {
                markUnreachable(index, error)
            } else {
                statistics.unreachable &+= 1
            }
        }
    }

    /// Counts an unreachable error for peer `index`; logs when the peer goes from up to
    /// unreachable (and, in `innerFrame`, back).
    func markUnreachable(_ index: Int, _ error: Int32) {
        statistics.unreachable &+= 1
        guard let peer = peers[index] else { return }
        peers[index]!.unreachable &+= 1
        if !peer.isUnreachable {
            peers[index]!.isUnreachable = true
            logger.warning("remote \(peer.address): unreachable (\(describeErrno(error))); it stays a port, and comes back up with its next frame")
        }
    }

    /// Whether `port`'s peer is unreachable (an ICMP error, and no frame from it since).
    public func isUnreachable(_ port: PortID) -> Bool { peer(of: port)?.isUnreachable ?? false }

    /// The kernel refused a train: from now on super-frames are cut by the engine and leave one
    /// datagram per frame. Logged once.
    func refuseTrains(_ error: Int32) {
        statistics.trainsRefused &+= 1
        guard sendsTrains else { return }
        sendsTrains = false
        let why = error == EIO ? "the route's device has no checksum offload" : error == EINVAL || error == EMSGSIZE ? "datagrams larger than the path MTU: lower the inner MTU" : "unsupported"
        logger.notice("the kernel refused a UDP_SEGMENT train (\(describeErrno(error)): \(why)): super-frames for remotes are now cut by the switch and sent one datagram per frame (no UDP GSO)")
    }

    /// Sends queue entry `k`, a refused train, one datagram at a time.
    func sendSplit(_ k: Int) {
        let d = sendDatagrams[k], size = Int(d.segment_size), count = sendFrameCounts[k]
        let header = (d.length - sendFrameBytes[k]) / count  // the same for every datagram
        for i in 0..<count {
            splitDatagrams[i] = d
            splitDatagrams[i].data = d.data + i * size
            splitDatagrams[i].length = min(size, d.length - i * size)
            splitDatagrams[i].segment_size = 0
        }
        _ = ctb_udp_send_batch(fd, splitDatagrams, UInt32(count))
        for i in 0..<count {
            note(sendPorts[k], outcome(-splitDatagrams[i].result, port: sendPorts[k]), frames: 1, bytes: splitDatagrams[i].length - header)
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
