import CTapBridge
import Glibc
public import TapBridgeCore

/// The remote peers of one UDP socket, and the three ways to find one: by the exact address a
/// datagram came from, by IP address alone for VXLAN (RFC 7348 senders, the Linux vxlan device
/// among them, pick the UDP source port from a hash of the inner flow), and by bridge port.
/// No system calls: tested without root.
struct PeerTable {
    /// One remote peer.
    struct Peer {
        var address: SocketAddress
        /// How frames to and from it are wrapped (the device never asks which format).
        let format: any EncapsulationFormat
        var encapsulation: Encapsulation { format.encapsulation }
        var vni: VNI
        var port: PortID
        var isDynamic: Bool
        var lastHeard: Int64
        /// The sockaddr datagrams go to (up to 28 bytes), allocated once.
        var sockaddr: UnsafeMutableRawPointer
        var addressLength: socklen_t
        /// Whether the partial-checksum notice was logged for this peer.
        var reportedPartialChecksums = false
        /// ICMP errors (port or host unreachable, no route) for datagrams sent to this peer.
        var unreachable: UInt64 = 0
        /// An error came for this peer and no well-formed frame from it since.
        var isUnreachable = false
        /// The last such error (errno: ECONNREFUSED for an ICMP port unreachable, ...).
        var unreachableError: Int32 = 0
        /// Datagrams from it that did not authenticate since the last one that did (a sealed
        /// remote whose far end holds another key), and when that was last logged.
        var unauthenticated: UInt64 = 0
        var refusalLog = LogThrottle(interval: .seconds(60))
        /// The IP MTU of the path towards the peer: the route's, lowered when the kernel
        /// reports a smaller one (ICMP fragmentation needed / packet too big).
        var pathMTU: Int
        /// When `pathMTU` was last lowered below the route's (monotonic ns), nil if it was not.
        var loweredAt: Int64? = nil
        /// The largest inner frame whose datagram fits `pathMTU` (`EncapsulationFormat.frameLimit`).
        var maximumFrameLength: Int
        /// Datagrams sent to it larger than its path, which the kernel fragments.
        var fragmented: UInt64 = 0
    }

    var peers: [Peer?] = []
    var byAddress: [SocketAddress: Int] = [:]
    /// Peers known by IP address alone (port 0: VXLAN's, `matchesAnySourcePort`); -1 marks an
    /// address shared by several such peers: those need the exact port.
    var vxlanByHost: [SocketAddress: Int] = [:]
    /// Peer index by bridge port index (-1: none).
    var byPort: [Int] = []
    /// Peer index by its format (a roaming peer's format is found before its address).
    var byFormat: [ObjectIdentifier: Int] = [:]

    /// Adds a peer that is bridge port `port`, its datagrams sent from `socket` as `family`;
    /// returns its index. Throws if the peer exists or its address does not fit the family.
    mutating func add(_ address: SocketAddress, format: any EncapsulationFormat, vni: VNI, isDynamic: Bool, port: PortID, family: Int32,
                      socket: SocketAddress, pathMTU: Int, now: Int64) throws(StartupError) -> Int {
        if byAddress[address] != nil { throw StartupError("remote \(address) given twice") }
        let sockaddr = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<sockaddr_storage>.size, alignment: 8)
        let length = address.write(family: family, to: sockaddr)
        guard length > 0 else {
            sockaddr.deallocate()
            throw StartupError("remote \(address) is IPv6 but the listening socket \(socket) is IPv4 (use --listen [::]:PORT)")
        }
        let peer = Peer(address: address, format: format, vni: vni, port: port, isDynamic: isDynamic,
                        lastHeard: now, sockaddr: sockaddr, addressLength: length, pathMTU: pathMTU,
                        maximumFrameLength: format.frameLimit(pathMTU: pathMTU, ipv4: address.isIPv4))
        let index = peers.firstIndex { $0 == nil } ?? peers.count
        if index == peers.count { peers.append(peer) } else { peers[index] = peer }
        if isDynamic { dynamicCount += 1 }
        byAddress[address] = index
        byFormat[ObjectIdentifier(format)] = index
        reindexHost(of: address)
        if port.index >= byPort.count { byPort += Array(repeating: -1, count: port.index + 1 - byPort.count) }
        byPort[port.index] = index
        return index
    }

    /// Removes the peer that is `port`; returns it (its sockaddr already freed).
    @discardableResult
    mutating func remove(port: PortID) -> Peer? {
        guard let index = index(of: port), let peer = peers[index] else { return nil }
        byAddress[peer.address] = nil
        byFormat[ObjectIdentifier(peer.format)] = nil
        peer.sockaddr.deallocate()
        peers[index] = nil
        if peer.isDynamic { dynamicCount -= 1 }
        byPort[port.index] = -1
        reindexHost(of: peer.address)
        return peer
    }

    /// Peer `index` is at `address` from now on (it roamed); false, and nothing changes, if
    /// another peer is there or the address does not fit the socket's family.
    mutating func move(_ index: Int, to address: SocketAddress, family: Int32) -> Bool {
        let from = self[index].address
        guard byAddress[address] == nil else { return false }
        var storage = sockaddr_storage()
        let length = withUnsafeMutableBytes(of: &storage) { address.write(family: family, to: $0.baseAddress!) }
        guard length > 0 else { return false }
        withUnsafeBytes(of: &storage) { self[index].sockaddr.copyMemory(from: $0.baseAddress!, byteCount: Int(length)) }
        self[index].addressLength = length
        self[index].address = address
        byAddress[from] = nil
        byAddress[address] = index
        if self[index].format.matchesAnySourcePort {  // (a scan of the peers: only VXLAN's are indexed by host)
            reindexHost(of: from)
            reindexHost(of: address)
        }
        return true
    }

    /// Frees every peer's buffer (the device is going away).
    mutating func removeAll() {
        for case let p? in peers { p.sockaddr.deallocate() }
        peers.removeAll()
        dynamicCount = 0
        byAddress.removeAll()
        byFormat.removeAll()
        vxlanByHost.removeAll()
        byPort.removeAll()
    }

    /// Recomputes `vxlanByHost` for the IP address of `address`.
    mutating func reindexHost(of address: SocketAddress) {
        var host = address
        host.port = 0
        let sharing = peers.indices.filter {
            guard let p = peers[$0], p.format.matchesAnySourcePort else { return false }
            var h = p.address
            h.port = 0
            return h == host
        }
        vxlanByHost[host] = sharing.isEmpty ? nil : (sharing.count == 1 ? sharing[0] : -1)
    }

    /// The peer a datagram from `sender` belongs to: the exact address and port, or else the
    /// only VXLAN peer at that IP address.
    @inline(__always) func index(for sender: SocketAddress) -> Int? {
        if let index = byAddress[sender] { return index }
        var host = sender
        host.port = 0
        if let index = vxlanByHost[host], index >= 0 { return index }
        return nil
    }

    /// The peer whose format is `format`.
    @inline(__always) func index(of format: any EncapsulationFormat) -> Int? { byFormat[ObjectIdentifier(format)] }

    /// The peer that is bridge port `port`.
    @inline(__always) func index(of port: PortID) -> Int? {
        guard port.index < byPort.count, byPort[port.index] >= 0 else { return nil }
        return byPort[port.index]
    }

    @inline(__always) func peer(of port: PortID) -> Peer? { index(of: port).flatMap { peers[$0] } }

    /// Sets peer `index`'s path MTU (and the frame limit that follows from it).
    mutating func setPathMTU(_ mtu: Int, of index: Int) {
        self[index].pathMTU = mtu
        self[index].maximumFrameLength = self[index].format.frameLimit(pathMTU: mtu, ipv4: self[index].address.isIPv4)
    }

    /// The peer at `index` (which must exist).
    @inline(__always) subscript(index: Int) -> Peer {
        get { peers[index]! }
        set { peers[index] = newValue }
    }

    /// Peers added by `--accept-peers` (kept as they come and go: asked for each stranger's
    /// datagram, so no scan).
    private(set) var dynamicCount = 0

    /// Ports of dynamic peers silent for `timeout` or longer at `now`.
    func idleDynamicPeers(timeout: Duration, now: Instant) -> [PortID] {
        peers.compactMap { p in
            guard let p, p.isDynamic, now.nanoseconds - p.lastHeard >= timeout.nanoseconds else { return nil }
            return p.port
        }
    }

    /// When the next dynamic peer would become idle.
    func nextIdleDeadline(timeout: Duration) -> Instant? {
        peers.lazy.compactMap { p in p.flatMap { $0.isDynamic ? $0.lastHeard : nil } }.min()
            .map { Instant(nanoseconds: $0).advanced(by: timeout) }
    }

    /// The peer that is `port`, as `show ports` describes it.
    func description(of port: PortID) -> RemotePeer? {
        guard let p = peer(of: port) else { return nil }
        return RemotePeer(address: p.address, encapsulation: p.encapsulation, vni: p.vni, isDynamic: p.isDynamic, unreachable: p.unreachable,
                          isUnreachable: p.isUnreachable, unreachableError: p.unreachableError, refusing: p.unauthenticated, pathMTU: p.pathMTU, fragmented: p.fragmented,
                          session: p.format.session)
    }
}

/// A remote peer as the UDP device describes it.
public struct RemotePeer: Sendable {
    public var address: SocketAddress
    public var encapsulation: Encapsulation
    public var vni: VNI
    /// Added by `--accept-peers` rather than configured.
    public var isDynamic: Bool
    /// ICMP errors for datagrams sent to it.
    public var unreachable: UInt64
    /// An error came for it and no well-formed frame from it since.
    public var isUnreachable: Bool
    /// The last error that came for it (errno), 0 if none.
    public var unreachableError: Int32
    /// Datagrams from it refused as unauthenticated since the last one that authenticated.
    public var refusing: UInt64

    /// Why it is unreachable, in words; nil while it is not.
    public var unreachableReason: String? {
        if refusing > 0 { return "its datagrams do not authenticate (\(refusing) refused since the last that did): it holds another key, or someone sends in its name" }
        guard isUnreachable else { return nil }
        return switch unreachableError {
        case ECONNREFUSED: "ICMP port unreachable: nothing listens on \(address) (is the VM or peer running?)"
        case EHOSTUNREACH, EHOSTDOWN: "host unreachable (\(describeErrno(unreachableError)))"
        case ENETUNREACH: "no route to \(address.host)"
        default: describeErrno(unreachableError)
        }
    }
    /// The IP MTU of the path towards it.
    public var pathMTU: Int
    /// Datagrams sent to it larger than its path (fragmented by the kernel).
    public var fragmented: UInt64
    /// Its format's session (sealed: the peer's key, the last handshake); nil for VXLAN, raw.
    public var session: SessionReport?
}
