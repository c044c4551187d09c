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
/// Datagrams are read with recvmmsg `Encapsulations.receiveLead` bytes (the longest header in
/// front of a frame among the registered encapsulations: sealed's 16) before each batch slot,
/// into the headroom, so that every inner frame lands in its slot or the headroom before it
/// (sealed's at the slot's start, VXLAN's 8 bytes before it, raw's 16 bytes into it): received
/// frames are never copied. A batch with less headroom gets datagrams read only as early as its
/// headroom reaches (never before a slot: with none, a frame starts its header's length into
/// its slot, and a slot holds that much less). Sent frames are queued
/// (copied, then sealed in their peer's format) and leave with one sendmmsg per batch, when
/// the engine calls `flush`. Each peer's `EncapsulationFormat` seals and opens its frames
/// (VXLAN, raw); the device never switches on which one it is. Each peer's path MTU decides
/// how TCP is cut for it and how SYNs to it are clamped (WireFormats.md, "Sizes and MTU").
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
/// device or QEMU's `-netdev dgram` takes as before. A train the kernel refuses is sent again
/// one datagram at a time: if the route's MTU shrank (EINVAL, EMSGSIZE) the peer's path is
/// lowered and trains go on; otherwise (EIO: no checksum offload on the route) trains are off
/// for good, logged once and counted.
///
/// The parts: `PeerTable` (who the peers are), `DatagramSendQueue` (sends, trains),
/// `TrainReceiver` (receives with UDP_GRO), `PeerAdmission` (`--accept-peers`), and the socket
/// behind the `DatagramSocket` protocol (the kernel's, or a test double).
public final class UDPTunnelDevice: PortDevice, DatagramInbox {
    /// Counters of things that belong to no port.
    public struct Statistics: Sendable, Equatable {
        /// Datagrams from senders that are not peers.
        public var unknownSender: UInt64 = 0
        /// ICMP errors (port or host unreachable) reported on the socket.
        public var unreachable: UInt64 = 0
        /// Well-formed frames from unknown senders refused because `--max-peers` was reached.
        public var peersRefused: UInt64 = 0
        /// Times a remote's address changed: a datagram that authenticated came from another
        /// address (sealed remotes roam, as WireGuard's peers do).
        public var peersMoved: UInt64 = 0
        /// Inner frames whose TCP/UDP checksum arrived partial (a same-host kernel VTEP with
        /// checksum offload) and was completed here.
        public var checksumsCompleted: UInt64 = 0
        /// Trains of datagrams sent with one UDP_SEGMENT message each.
        public var trainsSent: UInt64 = 0
        /// Trains of datagrams received whole (UDP_GRO).
        public var trainsReceived: UInt64 = 0
        /// Super-frames built by merging the TCP segments of received trains.
        public var framesCoalesced: UInt64 = 0
        /// Trains the kernel refused: each was sent again one datagram at a time; then either
        /// the path towards that peer had shrunk (its path MTU is lowered, trains go on) or
        /// UDP_SEGMENT is unusable on the route (trains are turned off).
        public var trainsRefused: UInt64 = 0
        /// Datagrams sent larger than their peer's path MTU, which the kernel fragments (frames
        /// other than TCP super-frames: those are cut to fit).
        public var fragmented: UInt64 = 0
        /// Times a peer's path MTU was lowered (ICMP fragmentation needed / packet too big, or
        /// a train refused as too large).
        public var pathMTULowered: UInt64 = 0
        /// ICMP "fragmentation needed" errors not believed (`EncapsulationFormat.mayHaveSent`).
        public var icmpUnverified: UInt64 = 0
        /// Times a lowered path MTU was raised back to the route's (`--path-mtu-expiry`).
        public var pathMTURaised: UInt64 = 0
        /// Frames split horizon kept from a remote: not the device's count but the bridge's
        /// (`Bridge.horizonWithheld`), which the report puts here, beside the remotes'.
        public var splitHorizon: UInt64 = 0
        public init() {}
    }

    public let socket: any DatagramSocket
    let logger: Logger
    @exclusivity(unchecked) var table = PeerTable()
    var counters = Statistics()
    /// The plain receive path's queue: recvmmsg straight into the batch's free slots.
    let receiveQueue = UnsafeMutablePointer<ctb_datagram>.allocate(capacity: Int(CTB_BATCH_MAX))
    let sendQueue: DatagramSendQueue
    /// With UDP_GRO; nil without.
    let trains: TrainReceiver?
    /// Segments of super-frames leave as UDP_SEGMENT trains (off when the kernel lacks or
    /// refuses it, or with --offload off: then one datagram each).
    public private(set) var sendsTrains: Bool
    /// Messages (datagrams or trains) read from the socket so far.
    var messagesRead = 0
    var unknownLog = LogThrottle()
    var unverifiedLog = LogThrottle()
    /// Peers whose datagrams do not authenticate now (`refused`); 0 almost always.
    var refusingPeers = 0
    /// One port per roaming group of formats (`EncapsulationFormat.roamingGroup`): asked who
    /// owns a stranger's datagram. Empty without sealed remotes, and then never looked at.
    var roamingGroups: [(group: ObjectIdentifier, port: PortID)] = []
    /// When each peer's format wants its timer, by port (only those that have one).
    var timers: [PortID: Int64] = [:]
    /// `--accept-peers`, or nil: unknown senders are dropped.
    var admission: PeerAdmission? = nil

    /// Binds a kernel UDP socket to `address` (see `KernelDatagramSocket`).
    public convenience init(listen address: SocketAddress, ipv4Only: Bool, offload: Bool = true, logger: Logger) throws(StartupError) {
        self.init(socket: try KernelDatagramSocket(listen: address, ipv4Only: ipv4Only, offload: offload), logger: logger)
    }

    /// Serves remotes over `socket`.
    public init(socket: any DatagramSocket, logger: Logger) {
        self.socket = socket
        self.logger = logger
        sendsTrains = socket.sendsTrains
        trains = socket.receivesTrains ? TrainReceiver() : nil
        receiveQueue.initialize(repeating: ctb_datagram(), count: Int(CTB_BATCH_MAX))
        sendQueue = DatagramSendQueue(socket: socket)
    }

    deinit {
        table.removeAll()
        receiveQueue.deallocate()
    }

    public var localAddress: SocketAddress { socket.localAddress }
    public var family: Int32 { socket.family }
    public var pollDescriptor: Int32? { socket.pollDescriptor }

    public var statistics: Statistics {
        var s = counters
        s.trainsSent = sendQueue.trainsSent
        s.trainsReceived = trains?.trainsReceived ?? 0
        s.framesCoalesced = trains?.framesCoalesced ?? 0
        return s
    }

    /// TCP and UDP super-frames are taken whole and cut here, to each peer's path (into trains
    /// where the kernel takes them); their segments leave with complete checksums, so partial
    /// ones are completed before.
    public var offloadCapabilities: OffloadCapabilities {
        OffloadCapabilities(partialChecksum: false, tcpSegmentation: true, udpSegmentation: true, maximumFrameLength: 65_557)
    }

    // MARK: Peers

    /// Adds a peer that is bridge port `port`, whose datagrams are made as `format` says,
    /// with the path MTU of the route towards it (1500 if there is no route now). Throws if the
    /// address family does not fit the socket or the peer exists.
    public func addPeer(_ address: SocketAddress, format: WireFormat, isDynamic: Bool = false, as port: PortID) throws(StartupError) {
        let made = format.make()
        _ = try table.add(address, format: made, vni: format.vni, isDynamic: isDynamic, port: port, family: family,
                          socket: localAddress, pathMTU: socket.pathMTU(to: address) ?? 1500, now: ctb_monotonic_ns())
        made.connect { [unowned self] datagram in self.sendNow(datagram, to: port) }
        if let group = made.roamingGroup, !roamingGroups.contains(where: { $0.group == group }) { roamingGroups.append((group, port)) }
        if let due = made.timer(now: ctb_monotonic_ns()) { timers[port] = due }
    }

    /// Sends one datagram of a format's own (a handshake message) to `port`'s peer at once,
    /// outside the queue; a failure is the peer's next frame's to report.
    func sendNow(_ datagram: UnsafeRawBufferPointer, to port: PortID) {
        guard let index = table.index(of: port) else { return }
        send(datagram, to: table[index].address)
    }

    /// Sends one datagram to `address` at once, outside the queue (a handshake message, or a
    /// format's reply to whoever sent a datagram).
    func send(_ datagram: UnsafeRawBufferPointer, to address: SocketAddress) {
        var d = ctb_datagram()
        d.data = UnsafeMutableRawPointer(mutating: datagram.baseAddress!)
        d.length = datagram.count
        d.peer_length = withUnsafeMutableBytes(of: &d.peer) { address.write(family: family, to: $0.baseAddress!) }
        guard d.peer_length > 0 else { return }
        socket.send(&d, count: 1)
    }

    /// A VXLAN or raw peer (`addPeer(_:format:...)`).
    public func addPeer(_ address: SocketAddress, encapsulation: Encapsulation, vni: VNI, isDynamic: Bool = false, as port: PortID) throws(StartupError) {
        try addPeer(address, format: .plain(encapsulation, vni: vni), isDynamic: isDynamic, as: port)
    }

    /// The IP MTU a port's stack may use so that its frames fit the path towards `address` in
    /// `format` (at most 1500), and that path's MTU (1500 if there is no route now).
    public func innerMTU(towards address: SocketAddress, format: WireFormat) -> (inner: Int, path: Int) {
        let path = socket.pathMTU(to: address) ?? 1500
        return (min(format.make(probing: true).frameLimit(pathMTU: path, ipv4: address.isIPv4) - 14, 1500), path)
    }

    /// The peer whose path takes the smallest frames, that path's MTU, and the IP MTU a port's
    /// stack may use so that its frames fit every peer's path as they are (at most 1500, as an
    /// Ethernet port has: 1450 for VXLAN over a 1500-byte IPv4 path); nil without peers.
    public var narrowestPath: (address: SocketAddress, mtu: Int, innerMTU: Int)? {
        table.peers.lazy.compactMap { $0 }.min { $0.maximumFrameLength < $1.maximumFrameLength }
            .map { ($0.address, $0.pathMTU, min($0.maximumFrameLength - 14, 1500)) }
    }

    public func didRemovePort(_ port: PortID) {
        guard let gone = table.remove(port: port) else { return }
        if gone.unauthenticated > 0 { refusingPeers -= 1 }
        timers[port] = nil
        // the group is asked through another of its peers, or no longer
        if let k = roamingGroups.firstIndex(where: { $0.port == port }) {
            if let other = table.peers.first(where: { $0?.format.roamingGroup == roamingGroups[k].group })??.port { roamingGroups[k].port = other } else { roamingGroups.remove(at: k) }
        }
    }

    // MARK: Format timers

    /// When a peer's format next wants its timer (a keepalive), if any does.
    public var nextFormatTimer: Int64? { timers.values.min() }

    /// Runs the format timers due at `now`.
    public func runFormatTimers(at now: Int64) {
        for (port, due) in timers where due <= now {
            guard let index = table.index(of: port) else { timers[port] = nil; continue }
            timers[port] = table[index].format.timer(now: now)
        }
    }

    /// The peer that is bridge port `port`.
    public func peer(of port: PortID) -> RemotePeer? { table.description(of: port) }

    public var dynamicPeerCount: Int { table.dynamicCount }

    /// Ports of dynamic peers silent for `timeout` or longer at `now`.
    public func idleDynamicPeers(timeout: Duration, now: Instant) -> [PortID] { table.idleDynamicPeers(timeout: timeout, now: now) }

    /// When the next dynamic peer would become idle, for the poll timeout.
    public func nextIdleDeadline(timeout: Duration) -> Instant? { table.nextIdleDeadline(timeout: timeout) }

    /// Lets unknown senders in (`--accept-peers`): their datagrams must be well-formed in
    /// `format` (sealed: they must hold its key), and at most `limit` dynamic peers.
    public func accept(format: WireFormat, limit: Int) {
        admission = PeerAdmission(format: format.make(probing: true), limit: limit)
    }

    /// The senders waiting to become peers; the caller admits each with `addPeer` (or not: its
    /// datagrams are then dropped, counted as refused). The device reads on once they are taken.
    public func takeCandidates() -> [SocketAddress] { admission?.take() ?? [] }

    /// Senders wait for a decision (`takeCandidates`); until then the device reads nothing.
    public var awaitsAdmission: Bool { admission?.isWaiting == true }

    // MARK: Sending

    /// Queues `frame` for `port`'s peer; `flush` sends the queue with one sendmmsg. A frame
    /// larger than the peer's path: a TCP segment is cut into segments that fit (TCP allows
    /// it); anything else leaves whole, for the kernel to fragment (counted).
    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        guard let index = table.index(of: port) else { return .failed }
        guard table[index].format.readyToSend() else { return hold(frame, for: index) }
        if frame.count > table[index].maximumFrameLength {
            if let cut = OffloadFinisher.tcpCut(of: frame) { return queueSegments(frame, offload: cut, for: index) }
            countFragmented(index, 1)
        }
        return sendQueue.queue(frame, to: table[index])
    }

    /// A super-frame: cut into segments that fit the peer's path, which leave as trains where
    /// the kernel takes them.
    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        guard offload.isSegmentation else { return transmit(frame, to: port) }
        guard let index = table.index(of: port) else { return .failed }
        guard table[index].format.readyToSend() else { return .linkDown }
        return queueSegments(frame, offload: offload, for: index)
    }

    /// Queues super-frame `frame`'s segments for peer `index`, whose format is ready.
    func queueSegments(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, for index: Int) -> TransmitOutcome {
        let (outcome, oversize) = sendQueue.queueSegments(frame, offload: offload, to: table[index], trains: sendsTrains)
        if oversize > 0 { countFragmented(index, oversize) }
        return outcome
    }

    /// A frame for a peer whose format has no session yet (a handshake is under way): a copy
    /// that fits the path, its SYN clamped as the queue would, is held by the format and
    /// leaves when the session is up (the first ping or SYN is not lost); otherwise dropped.
    func hold(_ frame: UnsafeRawBufferPointer, for index: Int) -> TransmitOutcome {
        guard frame.count <= table[index].maximumFrameLength else { return .linkDown }
        var copy = Array(frame)
        copy.withUnsafeMutableBytes { _ = MSSClamp.clamp($0, maximumFrameLength: table[index].maximumFrameLength) }
        return table[index].format.hold(copy) ? .sent : .linkDown
    }

    func countFragmented(_ index: Int, _ count: Int) {
        table[index].fragmented &+= UInt64(count)
        counters.fragmented &+= UInt64(count)
    }

    /// Sends the queue; reports how each frame ended (an unreachable peer is marked; a refused
    /// train lowers its peer's path or turns trains off).
    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        if sendQueue.queued > 0 { sendQueue.send() }
        for refusal in sendQueue.refusals { refuseTrain(refusal.error, port: refusal.port) }
        sendQueue.refusals.removeAll(keepingCapacity: true)
        sendQueue.flush { e in report(e.port, outcome(e.error, port: e.port), e.frames, e.bytes) }
    }

    /// How a datagram to `port`'s peer ended, from its errno (an unreachable one marks the peer).
    func outcome(_ error: Int32, port: PortID) -> TransmitOutcome {
        switch error {
        case 0: return .sent
        case EAGAIN, ENOBUFS: return .wouldBlock
        case EMSGSIZE: return .tooLarge
        case ECONNREFUSED:
            // never this datagram's own: an ICMP port unreachable for some earlier datagram,
            // pending on the socket (the send was tried twice, both times another peer's error:
            // see ctb_udp_send_batch). The error queue charges it to the peer it concerns.
            drainErrors()
            return .linkDown
        case EHOSTUNREACH, ENETUNREACH, EHOSTDOWN:
            // (a pending error was retried past: this one is the route's answer for this peer)
            if let index = table.index(of: port) { markUnreachable(index, error) }
            return .linkDown
        default: return .failed
        }
    }

    /// Reads every ICMP error queued on the socket and charges each to the peer it concerns.
    func drainErrors() {
        while let e = socket.nextError() {
            let index = e.destination.flatMap { table.byAddress[$0] }
            if e.error == EMSGSIZE {
                // fragmentation needed / packet too big: the path shrank, the peer is still
                // there; believed only if it quotes a datagram this bridge sent that peer
                if let index, e.mtu > 0 {
                    let believed = e.quote.withUnsafeBytes { table[index].format.mayHaveSent($0) }
                    if believed {
                        lowerPath(index, to: e.mtu, because: "the network reported a smaller path (ICMP)")
                    } else {
                        counters.icmpUnverified &+= 1
                        if let n = unverifiedLog.admit(at: Instant(nanoseconds: ctb_monotonic_ns())) {
                            logger.warning("remote \(table[index].address): ignored \(n) ICMP 'fragmentation needed' (MTU \(e.mtu)) that quote\(n == 1 ? "s" : "") no datagram this bridge sent it (forged, or a router that quotes too little); its path MTU stays \(table[index].pathMTU)")
                        }
                    }
                }
            } else if let index {
                markUnreachable(index, e.error)
            } else {
                counters.unreachable &+= 1
            }
        }
    }

    /// Lowers peer `index`'s path MTU to `mtu` (ignored unless smaller, and at least 552:
    /// smaller values reported are taken as 552, the floor Linux keeps, `min_pmtu`). Logged.
    func lowerPath(_ index: Int, to reported: Int, because why: String) {
        let mtu = max(reported, 552)
        guard mtu < table[index].pathMTU else { return }
        table.setPathMTU(mtu, of: index)
        table[index].loweredAt = ctb_monotonic_ns()
        counters.pathMTULowered &+= 1
        logger.notice("remote \(table[index].address): path MTU now \(mtu) (\(why)); TCP segments for it are cut to fit, frames up to \(table[index].maximumFrameLength) bytes travel whole, larger ones are fragmented by the kernel")
    }

    /// A datagram from peer `index` did not authenticate: said at once for the first, then at
    /// most once a minute while it goes on (a wrong key on one side failed silently before).
    func refused(peer index: Int, now: Int64) {
        table[index].unauthenticated &+= 1
        let first = table[index].unauthenticated == 1
        if first { refusingPeers += 1 }
        guard let count = table[index].refusalLog.admit(at: Instant(nanoseconds: now)) else { return }
        logger.warning("remote \(table[index].address): \(first ? "refusing its datagrams: they do not authenticate (it holds another key, or someone sends in its name)" : "still refusing its datagrams (\(count) more)"); frames from it are dropped as unauthenticated")
    }

    /// When the first lowered path MTU is `expiry` old (nil: none is lowered).
    public func nextPathRecheck(expiry: Duration) -> Int64? {
        table.peers.lazy.compactMap { $0?.loweredAt }.min().map { $0 &+ expiry.nanoseconds }
    }

    /// Paths lowered `expiry` ago or more are raised back to their route's MTU (RFC 8899's
    /// idea, as the kernel's own PMTU entries expire): a path that is really still smaller
    /// is found again by the ICMP error of the next datagram too large for it, and a lowering
    /// that was wrong (a router that has been fixed) costs no more than `expiry`.
    public func recheckPaths(at now: Int64, expiry: Duration) {
        for index in table.peers.indices {
            guard let lowered = table.peers[index]?.loweredAt, now &- lowered >= expiry.nanoseconds else { continue }
            let route = socket.pathMTU(to: table[index].address) ?? 1500
            // the route says no more (the kernel's own entry has not expired): again later
            guard route > table[index].pathMTU else {
                table[index].loweredAt = now
                continue
            }
            table[index].loweredAt = nil
            let was = table[index].pathMTU
            table.setPathMTU(route, of: index)
            counters.pathMTURaised &+= 1
            logger.notice("remote \(table[index].address): path MTU back to \(route), the route's (it was lowered to \(was) \(expiry) ago); a path still smaller is found again by its next ICMP error")
        }
    }

    /// Counts an unreachable error for peer `index`; logs when the peer goes from up to
    /// unreachable (and, in `innerFrame`, back).
    func markUnreachable(_ index: Int, _ error: Int32) {
        counters.unreachable &+= 1
        guard table.peers[index] != nil else { return }
        table[index].unreachable &+= 1
        table[index].unreachableError = error
        if !table[index].isUnreachable {
            table[index].isUnreachable = true
            logger.warning("remote \(table[index].address): unreachable (\(describeErrno(error))); it stays a port, and comes back up with its next frame")
        }
    }

    /// The kernel refused a train for `port`'s peer. Too large (EINVAL, EMSGSIZE) with a path
    /// that shrank since it was measured: the peer's path MTU is lowered and trains go on.
    /// Otherwise super-frames leave one datagram per segment from now on. Logged once.
    func refuseTrain(_ error: Int32, port: PortID) {
        counters.trainsRefused &+= 1
        if error == EINVAL || error == EMSGSIZE, let index = table.index(of: port), let mtu = socket.pathMTU(to: table[index].address),
            mtu < table[index].pathMTU
        {
            lowerPath(index, to: mtu, because: "the kernel refused a train larger than the route's MTU")
            return
        }
        guard sendsTrains else { return }
        sendsTrains = false
        let why = error == EIO ? "the route's device has no checksum offload" : error == EINVAL || error == EMSGSIZE ? "datagrams larger than the path MTU: lower the inner MTU" : "unsupported"
        logger.notice("the kernel refused a UDP_SEGMENT train (\(describeErrno(error)): \(why)): super-frames for remotes are now sent one datagram per segment (no UDP GSO)")
    }
}

extension UDPTunnelDevice.Statistics: CounterOwner {
    public static let counters: [Counter<Self>] = [
        .init("unknown_sender", \.unknownSender, "Datagrams from senders that are not remotes."),
        .init("unreachable", \.unreachable, "ICMP unreachable errors on the UDP socket."),
        .init("peers_refused", \.peersRefused, "Well-formed frames from unknown senders refused: --max-peers reached."),
        .init("peers_moved", \.peersMoved, "Times a sealed remote's address changed to where its authenticated datagrams came from (roaming)."),
        .init("checksums_completed", \.checksumsCompleted, "Inner frames from remotes whose partial checksum was completed."),
        .init("trains_sent", \.trainsSent, "Trains of datagrams sent with one UDP_SEGMENT message."),
        .init("trains_received", \.trainsReceived, "Trains of datagrams received whole (UDP_GRO)."),
        .init("frames_coalesced", \.framesCoalesced, "Super-frames built from the TCP segments of received trains."),
        .init("trains_refused", \.trainsRefused, "Trains the kernel refused (a remote's path MTU lowered, or UDP GSO turned off)."),
        .init("fragmented", \.fragmented, "Datagrams larger than their remote's path MTU, fragmented by the kernel."),
        .init("path_mtu_lowered", \.pathMTULowered, "Times a remote's path MTU was lowered (ICMP, or a refused train)."),
        .init("path_mtu_raised", \.pathMTURaised, "Times a remote's lowered path MTU was raised back to the route's after --path-mtu-expiry."),
        .init("icmp_unverified", \.icmpUnverified, "ICMP 'fragmentation needed' errors ignored: they quote no datagram this bridge sent (forged, or from a router that quotes too little)."),
        .init("split_horizon", \.splitHorizon, "Frames split horizon kept from a remote of the sender's group (flooded copies and unicast)."),
    ]
}
