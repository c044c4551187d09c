import CTapBridge
public import Glibc
public import TapBridgeCore

/// An IPv4 or IPv6 UDP endpoint, kept in IPv6 form (IPv4 as `::ffff:a.b.c.d`) so one table
/// serves both families on a dual-stack socket. Hashable in two words and a port.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The first and last 8 bytes of the 16-byte address, in network order as read from memory.
    var high: UInt64
    var low: UInt64
    /// The UDP port.
    public var port: UInt16

    /// Whether this is an IPv4 address (`::ffff:0:0/96`).
    public var isIPv4: Bool { high == 0 && UInt32(bigEndian: UInt32(truncatingIfNeeded: low)) == 0xFFFF }

    init(bytes: (UInt64, UInt64), port: UInt16) {
        high = bytes.0
        low = bytes.1
        self.port = port
    }

    /// From a `sockaddr_in` or `sockaddr_in6`; `nil` for other families.
    public init?(_ sa: UnsafeRawPointer) {
        switch Int32(sa.load(as: sa_family_t.self)) {
        case AF_INET:
            let sin = sa.loadUnaligned(as: sockaddr_in.self)
            // ::ffff:a.b.c.d — bytes 8..11 are 00 00 ff ff, 12..15 the IPv4 address
            let mapped = UInt64(UInt32(0xFFFF).bigEndian) | UInt64(sin.sin_addr.s_addr) << 32
            self.init(bytes: (0, mapped), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = sa.loadUnaligned(as: sockaddr_in6.self)
            let words = withUnsafeBytes(of: sin6.sin6_addr) { ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
            self.init(bytes: words, port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// The address and port as 18 bytes (IPv4 in IPv6 form), handed to `body`: what a sealed
    /// cookie is bound to.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: (high, low, port.bigEndian)) { body(UnsafeRawBufferPointer(rebasing: $0[..<18])) }
    }

    /// Writes this address as a sockaddr of `family` into `storage`; returns its length, or 0
    /// if an IPv6 address cannot be written as IPv4.
    public func write(family: Int32, to storage: UnsafeMutableRawPointer) -> socklen_t {
        if family == AF_INET {
            guard isIPv4 else { return 0 }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            sin.sin_addr.s_addr = UInt32(truncatingIfNeeded: low >> 32)
            storage.storeBytes(of: sin, as: sockaddr_in.self)
            return socklen_t(MemoryLayout<sockaddr_in>.size)
        }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin6.sin6_addr) {
            $0.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
        }
        storage.storeBytes(of: sin6, as: sockaddr_in6.self)
        return socklen_t(MemoryLayout<sockaddr_in6>.size)
    }

    /// `192.0.2.5:9000` or `[2001:db8::1]:9000`.
    public var description: String { isIPv4 ? "\(host):\(port)" : "[\(host)]:\(port)" }

    /// The MTU of the route towards this address, as a UDP socket connected to it sees it
    /// (IP_MTU); nil without a route.
    public var pathMTU: Int? {
        var storage = sockaddr_storage()
        let length = withUnsafeMutableBytes(of: &storage) { write(family: isIPv4 ? AF_INET : AF_INET6, to: $0.baseAddress!) }
        guard length > 0 else { return nil }
        let mtu = withUnsafeBytes(of: &storage) { ctb_path_mtu($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), UInt32(length)) }
        return mtu > 0 ? Int(mtu) : nil
    }

    /// The address alone: `192.0.2.5` or `2001:db8::1`.
    public var host: String {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        if isIPv4 {
            var a = in_addr(s_addr: UInt32(truncatingIfNeeded: low >> 32))
            inet_ntop(AF_INET, &a, &text, socklen_t(text.count))
            return Self.string(text)
        }
        var a6 = in6_addr()
        withUnsafeMutableBytes(of: &a6) {
            $0.storeBytes(of: high, toByteOffset: 0, as: UInt64.self)
            $0.storeBytes(of: low, toByteOffset: 8, as: UInt64.self)
        }
        inet_ntop(AF_INET6, &a6, &text, socklen_t(text.count))
        return Self.string(text)
    }

    private static func string(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public enum Family: Sendable { case v4, v6 }

    /// The family of a numeric address (`10.0.0.1`, `fd00::1`); nil if `host` is neither.
    public static func family(ofNumericHost host: String) -> Family? { numericHost(host)?.family }

    /// A numeric address's family and bytes in network order (4 or 16, as rtnetlink takes
    /// them); nil if `host` is neither.
    public static func numericHost(_ host: String) -> (family: Family, bytes: [UInt8])? {
        var buffer = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET, host, &buffer) == 1 { return (.v4, Array(buffer.prefix(4))) }
        if inet_pton(AF_INET6, host, &buffer) == 1 { return (.v6, buffer) }
        return nil
    }

    /// Splits `HOST:PORT` or `[IPV6]:PORT`; `nil` on a syntax error.
    public static func split(_ text: String) -> (host: String, port: UInt16)? {
        let host: Substring, rest: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            rest = text[colon...]
            if host.contains(":") { return nil }  // IPv6 needs brackets
        }
        guard !host.isEmpty, let port = UInt16(rest.dropFirst()), port > 0 else { return nil }
        return (String(host), port)
    }

    /// Resolves `host` (an address or a name; names are looked up once, now) with `port`.
    /// `ipv4Only` limits the result to IPv4 (for an IPv4 listening socket).
    public static func resolve(host: String, port: UInt16, ipv4Only: Bool) throws(StartupError) -> SocketAddress {
        var hints = addrinfo()
        hints.ai_family = ipv4Only ? AF_INET : AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw StartupError("cannot resolve \(host)\(ipv4Only ? " to an IPv4 address" : ""): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        guard let address = SocketAddress(UnsafeRawPointer(first.pointee.ai_addr)) else {
            throw StartupError("cannot resolve \(host): no IPv4 or IPv6 address")
        }
        return address
    }
}
