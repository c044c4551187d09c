public import CTapBridge
import Glibc
public import TapBridgeCore

/// What the UDP device needs from its socket: datagrams in and out in batches, and the ICMP
/// errors the kernel queued for datagrams it sent. The kernel's socket is one; a test double
/// (TapBridgeTestSupport's `FakeDatagramSocket`, like wireguard-go's bind test double) is
/// another, so peer matching, admission, expiry and garbage handling run without root.
public protocol DatagramSocket: AnyObject {
    /// The descriptor the event loop polls (nil: a double that is served by hand).
    var pollDescriptor: Int32? { get }
    /// The address the socket is bound to.
    var localAddress: SocketAddress { get }
    /// AF_INET (IPv4 only) or AF_INET6 (both).
    var family: Int32 { get }
    /// UDP_SEGMENT trains can be sent / UDP_GRO trains arrive.
    var sendsTrains: Bool { get }
    var receivesTrains: Bool { get }
    /// recvmmsg: fills up to `count` entries (their `data` and `length` are set by the
    /// caller); returns how many arrived (0: none waiting) or -errno.
    func receive(_ datagrams: UnsafeMutablePointer<ctb_datagram>, count: Int) -> Int
    /// sendmmsg: sends `count` entries, each `result` 0 or -errno.
    func send(_ datagrams: UnsafeMutablePointer<ctb_datagram>, count: Int)
    /// The next queued ICMP error; nil when the queue is empty.
    func nextError() -> QueuedError?
    /// The MTU of the route towards `address` (the IP packet size it takes, with the kernel's
    /// path MTU if it learned a smaller one); nil if there is no route now.
    func pathMTU(to address: SocketAddress) -> Int?
}

/// An ICMP error the kernel queued on the socket (IP_RECVERR) for a datagram it sent.
public struct QueuedError: Sendable, Equatable {
    /// Where the failed datagram went (nil if the kernel did not say).
    public var destination: SocketAddress?
    /// ECONNREFUSED, EHOSTUNREACH, ..., or EMSGSIZE (fragmentation needed / packet too big).
    public var error: Int32
    /// With EMSGSIZE, the MTU the router reported; else 0.
    public var mtu: Int
    /// The start of the datagram the ICMP message quotes, after its UDP header (at most
    /// `QueuedError.quoteCapacity` bytes; empty if the message quoted no more than the
    /// headers): what tells a datagram this bridge sent from a forgery.
    public var quote: [UInt8]
    public static let quoteCapacity = 64

    public init(destination: SocketAddress?, error: Int32, mtu: Int = 0, quote: [UInt8] = []) {
        self.destination = destination
        self.error = error
        self.mtu = mtu
        self.quote = quote
    }
}

/// The kernel's UDP socket: non-blocking, 4 MiB buffers, IP_RECVERR, and UDP GSO/GRO where the
/// kernel has them.
public final class KernelDatagramSocket: DatagramSocket {
    public let localAddress: SocketAddress
    public let family: Int32
    public let sendsTrains: Bool
    public let receivesTrains: Bool
    let fd: Int32

    /// Socket buffer size requested (forced when privileged): 4 MiB.
    static let bufferBytes: Int32 = 4 << 20

    /// Binds to `address`. An IPv4 address gives an IPv4-only socket; an IPv6 one (including
    /// `[::]`) accepts both. `offload`: trains (UDP_SEGMENT, UDP_GRO) where the kernel has them.
    public init(listen address: SocketAddress, ipv4Only: Bool, offload: Bool) throws(StartupError) {
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
        let offloads = offload ? ctb_udp_enable_offloads(rc, 1) : 0
        sendsTrains = offloads & 1 != 0
        receivesTrains = offloads & 2 != 0
    }

    deinit { close(fd) }

    public var pollDescriptor: Int32? { fd }

    public func receive(_ datagrams: UnsafeMutablePointer<ctb_datagram>, count: Int) -> Int {
        Int(ctb_udp_recv_batch(fd, datagrams, UInt32(count)))
    }

    public func send(_ datagrams: UnsafeMutablePointer<ctb_datagram>, count: Int) {
        _ = ctb_udp_send_batch(fd, datagrams, UInt32(count))
    }

    public func nextError() -> QueuedError? {
        var address = (UInt64(0), UInt64(0), UInt64(0), UInt32(0))  // 28 bytes
        var error: Int32 = 0, mtu: Int32 = 0, quoted: Int32 = 0
        var quote = [UInt8](repeating: 0, count: QueuedError.quoteCapacity)
        guard withUnsafeMutableBytes(of: &address, { a in
            ctb_udp_read_error(fd, a.baseAddress!.assumingMemoryBound(to: UInt8.self), &error, &mtu, &quote, Int32(quote.count), &quoted)
        }) == 1 else { return nil }
        quote.removeLast(quote.count - min(max(Int(quoted), 0), quote.count))
        return QueuedError(destination: withUnsafeBytes(of: &address) { SocketAddress($0.baseAddress!) }, error: error, mtu: Int(mtu), quote: quote)
    }

    public func pathMTU(to address: SocketAddress) -> Int? { address.pathMTU }
}
