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
public final class UDPTunnelDevice: PortDevice {
    /// One remote peer.
    struct Peer {
        var address: SocketAddress
        var encapsulation: Encapsulation
        var vni: VNI
        var port: PortID?
        var isDynamic: Bool
        var lastHeard: Int64
        /// The VXLAN header (8 bytes) and the sockaddr (up to 28 bytes), allocated once.
        var wire: UnsafeMutableRawPointer
        var addressLength: socklen_t
        /// Whether the partial-checksum notice was logged for this peer.
        var reportedPartialChecksums = false
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
    var queued = 0
    /// How queued frames ended since the last flush, summed by port and outcome (sends forced
    /// by a full queue happen before the flush, which reports them).
    var outcomes: [(port: PortID, outcome: TransmitOutcome, frames: Int, bytes: Int)] = []

    var lastUnknownLog: Int64 = .min
    var unknownSinceLog: UInt64 = 0

    /// Called for a well-formed frame from an unknown sender; returns the index of a new peer
    /// (from `addPeer`) to accept it, or nil to drop it. Set by the daemon for `--accept-peers`.
    public var acceptPeer: ((SocketAddress) -> Int?)? = nil
    /// The encapsulation and VNI an unknown sender's datagram must be well-formed in to be
    /// accepted (the bridge-wide `--encap` and `--vni`).
    public var acceptedEncapsulation = Encapsulation.vxlan
    public var acceptedVNI = VNI(1)!

    /// Socket buffer size requested (forced when privileged): 4 MiB.
    static let bufferBytes: Int32 = 4 << 20

    /// Binds the socket to `address`. An IPv4 address gives an IPv4-only socket; an IPv6 one
    /// (including `[::]`) accepts both.
    public init(listen address: SocketAddress, ipv4Only: Bool, logger: Logger) throws(StartupError) {
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
        receiveQueue.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        sendDatagrams.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        sendPorts.initialize(repeating: PortID(0), count: Int(CTB_BATCH_MAX))
        sendFrameBytes.initialize(repeating: 0, count: Int(CTB_BATCH_MAX))
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
    }

    public var pollDescriptor: Int32? { fd }

    /// Adds a peer; returns its index for `bind(peer:to:)`. Throws if the address family does
    /// not fit the socket or the peer exists.
    public func addPeer(_ address: SocketAddress, encapsulation: Encapsulation, vni: VNI, isDynamic: Bool = false) throws(StartupError) -> Int {
        if peerByAddress[address] != nil { throw StartupError("remote \(address) given twice") }
        let wire = UnsafeMutableRawPointer.allocate(byteCount: 8 + MemoryLayout<sockaddr_storage>.size, alignment: 8)
        wire.storeBytes(of: VXLANHeader.encodedHeader(vni: vni), as: UInt64.self)
        let length = address.write(family: family, to: wire + 8)
        guard length > 0 else {
            wire.deallocate()
            throw StartupError("remote \(address) is IPv6 but the listening socket \(localAddress) is IPv4 (use --listen [::]:PORT)")
        }
        let peer = Peer(address: address, encapsulation: encapsulation, vni: vni, port: nil, isDynamic: isDynamic,
                        lastHeard: ctb_monotonic_ns(), wire: wire, addressLength: length)
        let index = peers.firstIndex { $0 == nil } ?? peers.count
        if index == peers.count { peers.append(peer) } else { peers[index] = peer }
        peerByAddress[address] = index
        reindexHost(of: address)
        return index
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

    /// Tells the device which bridge port a peer is.
    public func bind(peer index: Int, to port: PortID) {
        peers[index]?.port = port
        if port.index >= peerByPort.count { peerByPort += Array(repeating: -1, count: port.index + 1 - peerByPort.count) }
        peerByPort[port.index] = index
    }

    public func didRemovePort(_ port: PortID) {
        guard port.index < peerByPort.count, peerByPort[port.index] >= 0, let peer = peers[peerByPort[port.index]] else { return }
        peerByAddress[peer.address] = nil
        peer.wire.deallocate()
        peers[peerByPort[port.index]] = nil
        peerByPort[port.index] = -1
        reindexHost(of: peer.address)
    }

    /// Number of dynamic peers.
    public var dynamicPeerCount: Int { peers.lazy.filter { $0?.isDynamic == true }.count }

    /// Ports of dynamic peers silent for `timeout` or longer at `now`.
    public func idleDynamicPeers(timeout: Duration, now: Instant) -> [PortID] {
        peers.compactMap { p in
            guard let p, p.isDynamic, let port = p.port, now.nanoseconds - p.lastHeard >= timeout.nanoseconds else { return nil }
            return port
        }
    }

    /// When the next dynamic peer would become idle, for the poll timeout.
    public func nextIdleDeadline(timeout: Duration) -> Instant? {
        peers.lazy.compactMap { p in p.flatMap { $0.isDynamic ? $0.lastHeard : nil } }.min()
            .map { Instant(nanoseconds: $0).advanced(by: timeout) }
    }

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        var frames = 0
        let now = ctb_monotonic_ns()
        while !batch.isFull {
            // recvmmsg straight into the free slots, 8 bytes early (see the type's comment)
            let wanted = min(batch.remaining, Int(CTB_BATCH_MAX))
            let firstSlot = batch.used
            for k in 0..<wanted {
                let slot = batch.freeSlot(k)
                receiveQueue[k].data = slot.baseAddress! - VXLANHeader.length
                receiveQueue[k].length = slot.count + VXLANHeader.length
            }
            let got = Int(ctb_udp_recv_batch(fd, receiveQueue, UInt32(wanted)))
            if got < 0 {
                switch -Int32(got) {
                case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN:
                    statistics.unreachable &+= 1  // an ICMP error for something we sent: never fatal
                    continue
                default: throw PortError(.failed, code: -Int32(got), operation: "recvmmsg")
                }
            }
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
        guard let sender, let index = peer(for: sender) ?? admit(sender, d, now), let port = peers[index]?.port else { return false }
        /// Takes the decoded frame at `frame` into the batch.
        func take(_ frame: UnsafeMutableRawPointer, length: Int, shift: Int) -> Bool {
            // only a well-formed frame proves a peer alive (garbage must not keep a spoofed one)
            if let header = EthernetHeader(UnsafeRawBufferPointer(start: frame, count: length)), header.source.isValidSource {
                peers[index]!.lastHeard = now
            }
            repairChecksum(frame, length: length, peer: index)
            batch.commit(length: length, from: port, shift: shift, freeSlot: k)
            return true
        }
        let capacity = batch.frameCapacity + VXLANHeader.length
        if d.length > capacity {
            batch.recordDrop(on: port, .truncated, bytes: d.length)
            return false
        }
        switch peers[index]!.encapsulation {
        case .raw:
            return take(d.data, length: d.length, shift: -VXLANHeader.length)
        case .vxlan:
            switch VXLANHeader.decode(UnsafeRawBufferPointer(start: d.data, count: d.length)) {
            case .frame(let vni, let length):
                guard vni == peers[index]!.vni else {
                    batch.recordDrop(on: port, .vniMismatch, bytes: d.length)
                    return false
                }
                return take(d.data + VXLANHeader.length, length: length, shift: 0)
            case .tooShort, .flagsInvalid:
                batch.recordDrop(on: port, .malformedEncapsulation, bytes: d.length)
                return false
            }
        }
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

    /// The inner frame of datagram `d` if it is a well-formed frame in `encapsulation` (and
    /// `vni`) with a station as its source; nil otherwise.
    static func frame(in d: ctb_datagram, encapsulation: Encapsulation, vni: VNI) -> UnsafeRawBufferPointer? {
        let datagram = UnsafeRawBufferPointer(start: d.data, count: d.length)
        let frame: UnsafeRawBufferPointer
        switch encapsulation {
        case .raw: frame = datagram
        case .vxlan:
            guard case .frame(let got, let length) = VXLANHeader.decode(datagram), got == vni else { return nil }
            frame = UnsafeRawBufferPointer(rebasing: datagram[VXLANHeader.length..<(VXLANHeader.length + length)])
        }
        guard let header = EthernetHeader(frame), header.source.isValidSource else { return nil }
        return frame
    }

    /// A datagram from a sender that is not a peer. With `--accept-peers`, the sender becomes a
    /// dynamic peer only if the datagram is a well-formed frame in the bridge-wide
    /// encapsulation (empty or garbage datagrams from spoofed addresses cannot fill the peer
    /// table) and the limit allows; otherwise it is counted and logged (at most one line per
    /// 10 s).
    func admit(_ sender: SocketAddress, _ d: ctb_datagram, _ now: Int64) -> Int? {
        let why: String
        if let acceptPeer {
            if Self.frame(in: d, encapsulation: acceptedEncapsulation, vni: acceptedVNI) == nil {
                statistics.unknownSender &+= 1
                why = "not a well-formed \(acceptedEncapsulation) frame, so not accepted as a peer"
            } else if let index = acceptPeer(sender) {
                return index
            } else {
                statistics.peersRefused &+= 1
                why = "peer limit reached"
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
        return nil
    }

    /// Queues `frame` for `port`'s peer; `flush` sends the queue with one sendmmsg. The frame
    /// is copied (with its VXLAN header) because the engine may rewrite its buffer in place
    /// before the flush (VLAN tagging for the next egress port of a flood).
    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        guard port.index < peerByPort.count, peerByPort[port.index] >= 0, let peer = peers[peerByPort[port.index]] else { return .failed }
        let header = peer.encapsulation.headerLength
        guard header + frame.count <= Self.sendSlotSize else { return .tooLarge }
        if queued == Int(CTB_BATCH_MAX) { sendQueue() }  // full: send now, report at the flush
        let slot = sendPool + queued * Self.sendSlotSize
        if header > 0 { slot.copyMemory(from: peer.wire, byteCount: header) }
        (slot + header).copyMemory(from: frame.baseAddress!, byteCount: frame.count)
        sendDatagrams[queued].data = slot
        sendDatagrams[queued].length = header + frame.count
        sendDatagrams[queued].destination = UnsafeRawPointer(peer.wire + 8)
        sendDatagrams[queued].destination_length = peer.addressLength
        sendPorts[queued] = port
        sendFrameBytes[queued] = frame.count
        queued += 1
        return .queued
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
            let outcome: TransmitOutcome
            switch -sendDatagrams[k].result {
            case 0: outcome = .sent
            case EAGAIN, ENOBUFS: outcome = .wouldBlock
            case EMSGSIZE: outcome = .tooLarge
            case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN:
                statistics.unreachable &+= 1
                outcome = .linkDown
            default: outcome = .failed
            }
            note(sendPorts[k], outcome, bytes: sendFrameBytes[k])
        }
        queued = 0
    }

    /// Adds one frame's outcome to `outcomes` (a short list: one item per port and outcome).
    @inline(__always)
    func note(_ port: PortID, _ outcome: TransmitOutcome, bytes: Int) {
        for i in outcomes.indices where outcomes[i].port == port && outcomes[i].outcome == outcome {
            outcomes[i].frames += 1
            outcomes[i].bytes += bytes
            return
        }
        outcomes.append((port, outcome, 1, bytes))
    }
}
