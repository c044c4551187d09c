public import CTapBridge
import Glibc
public import TapBridgeDevices

/// A UDP socket in memory, for the remotes' device (`UDPTunnelDevice(socket:logger:)`), like
/// wireguard-go's bind test double: a test queues datagrams "from" any address, serves the
/// device by hand (`engine.service`), and reads what the device sent. Send errors and ICMP
/// errors are injected per destination. No root, no network, no time.
public final class FakeDatagramSocket: DatagramSocket {
    public struct Datagram: Equatable, Sendable {
        /// Receive: the sender; sent: the destination.
        public var address: SocketAddress
        public var bytes: [UInt8]
        /// A train's datagram size (UDP GSO/GRO), or 0.
        public var segmentSize: Int

        public init(address: SocketAddress, bytes: [UInt8], segmentSize: Int = 0) {
            self.address = address
            self.bytes = bytes
            self.segmentSize = segmentSize
        }
    }

    public let localAddress: SocketAddress
    public let family: Int32
    public let sendsTrains: Bool
    public let receivesTrains: Bool
    public var pollDescriptor: Int32? { nil }

    /// Waiting to be received, oldest first.
    public var inbound: [Datagram] = []
    /// Everything the device sent, in order.
    public private(set) var sent: [Datagram] = []
    /// The errno each send to a destination fails with (ECONNREFUSED, EMSGSIZE, ...).
    public var sendErrors: [SocketAddress: Int32] = [:]
    /// The errno each train (an entry with a segment size) to a destination fails with, as
    /// the kernel refuses UDP_SEGMENT (EINVAL: larger than the path; EIO: no checksum offload).
    public var trainErrors: [SocketAddress: Int32] = [:]
    /// ICMP errors the next receive reports (ECONNREFUSED), then hands out from its queue.
    public var icmpErrors: [(destination: SocketAddress, error: Int32)] = []
    /// Whether receive reports the first queued error's errno (IP_RECVERR's pending socket
    /// error). False: another call (a send) already took that errno, so receive finds nothing
    /// while the errors stay queued (and the kernel's poll reports POLLERR until they are read).
    public var reportsQueuedErrors = true
    /// The MTU an EMSGSIZE error among `icmpErrors` reports (fragmentation needed).
    public var reportedMTU = 0
    /// The route MTU towards each address (`pathMTU(to:)`); others get `defaultPathMTU`.
    public var pathMTUs: [SocketAddress: Int] = [:]
    /// Loopback's 65,536 unless a test sets a smaller one.
    public var defaultPathMTU: Int? = 65_536
    /// Receive calls so far.
    public private(set) var receiveCalls = 0

    public init(localAddress: SocketAddress, trains: Bool = false) {
        self.localAddress = localAddress
        family = localAddress.isIPv4 ? AF_INET : AF_INET6
        sendsTrains = trains
        receivesTrains = trains
    }

    /// An address from text (numeric only: no lookups).
    public static func address(_ text: String) -> SocketAddress {
        let (host, port) = SocketAddress.split(text)!
        return try! SocketAddress.resolve(host: host, port: port, ipv4Only: false)
    }

    public func receive(_ datagrams: UnsafeMutablePointer<ctb_datagram>, count: Int) -> Int {
        receiveCalls += 1
        if reportsQueuedErrors, let first = icmpErrors.first { return -Int(first.error) }  // as recvmmsg does with IP_RECVERR
        let n = min(count, inbound.count)
        for k in 0..<n {
            let d = inbound[k]
            let copied = min(d.bytes.count, datagrams[k].length)
            d.bytes.withUnsafeBytes { if copied > 0 { datagrams[k].data.copyMemory(from: $0.baseAddress!, byteCount: copied) } }
            datagrams[k].length = d.bytes.count
            datagrams[k].segment_size = UInt32(d.segmentSize)
            withUnsafeMutableBytes(of: &datagrams[k].peer) { _ = d.address.write(family: family, to: $0.baseAddress!) }
        }
        inbound.removeFirst(n)
        return n
    }

    public func send(_ datagrams: UnsafeMutablePointer<ctb_datagram>, count: Int) {
        for k in 0..<count {
            let d = datagrams[k]
            guard let destination = withUnsafeBytes(of: d.peer, { SocketAddress($0.baseAddress!) }) else {
                datagrams[k].result = -EINVAL
                continue
            }
            if let error = sendErrors[destination] ?? (d.segment_size > 0 ? trainErrors[destination] : nil) {
                datagrams[k].result = -error
                continue
            }
            datagrams[k].result = 0
            sent.append(Datagram(address: destination, bytes: Array(UnsafeRawBufferPointer(start: d.data, count: d.length)), segmentSize: Int(d.segment_size)))
        }
    }

    /// What an ICMP error quotes, by destination; without one, the start of the last datagram
    /// sent there (as a router quotes the datagram it could not forward), or nothing.
    public var icmpQuotes: [SocketAddress: [UInt8]] = [:]

    public func nextError() -> QueuedError? {
        guard !icmpErrors.isEmpty else { return nil }
        let e = icmpErrors.removeFirst()
        let quote = icmpQuotes[e.destination] ?? sent.last { $0.address == e.destination }.map { Array($0.bytes.prefix(QueuedError.quoteCapacity)) } ?? []
        return QueuedError(destination: e.destination, error: e.error, mtu: e.error == EMSGSIZE ? reportedMTU : 0, quote: quote)
    }

    public func pathMTU(to address: SocketAddress) -> Int? { pathMTUs[address] ?? defaultPathMTU }
}
