/// A 48-bit IEEE 802 MAC address, stored in the low 48 bits of a `UInt64`
/// (first octet in the most significant position) so that hashing and comparing cost one word.
public struct MACAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The address as an integer: `aa:bb:cc:dd:ee:ff` is `0x0000_aabb_ccdd_eeff`.
    public let rawValue: UInt64

    /// `ff:ff:ff:ff:ff:ff`.
    public static let broadcast = MACAddress(rawValue: 0xFFFF_FFFF_FFFF)
    /// `00:00:00:00:00:00`, never a valid source.
    public static let zero = MACAddress(rawValue: 0)

    /// Creates an address from its integer form; bits above 48 are discarded.
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue & 0xFFFF_FFFF_FFFF }

    /// Creates an address from six octets, first octet first.
    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8, _ e: UInt8, _ f: UInt8) {
        var v = UInt64(a)
        v = v << 8 | UInt64(b); v = v << 8 | UInt64(c); v = v << 8 | UInt64(d)
        v = v << 8 | UInt64(e); v = v << 8 | UInt64(f)
        self.init(rawValue: v)
    }

    /// Reads six octets at `offset`. The caller guarantees `offset + 6 <= bytes.count`.
    @inlinable public init(reading bytes: UnsafeRawBufferPointer, at offset: Int) {
        let hi = UInt64(UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
        let lo = UInt64(UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset + 2, as: UInt32.self)))
        self.rawValue = hi << 32 | lo
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (also `-` as separator, upper or lower case hex).
    /// Returns `nil` for anything else.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let groups = parts.count == 6 ? parts : text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.count == 6 else { return nil }
        var v: UInt64 = 0
        for g in groups {
            guard (1...2).contains(g.count), let octet = UInt8(g, radix: 16) else { return nil }
            v = v << 8 | UInt64(octet)
        }
        self.init(rawValue: v)
    }

    /// The six octets, first octet first.
    public var octets: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: rawValue >> (40 - 8 * $0)) } }

    /// `ff:ff:ff:ff:ff:ff`.
    @inlinable public var isBroadcast: Bool { rawValue == 0xFFFF_FFFF_FFFF }
    /// Group bit set (the least significant bit of the first octet): multicast, including broadcast.
    @inlinable public var isMulticast: Bool { rawValue & 0x0100_0000_0000 != 0 }
    /// IEEE 802.1D reserved link-local group addresses `01:80:c2:00:00:00`–`0f` (STP, LACP, LLDP,
    /// 802.1X, pause). A bridge must not forward them (802.1D-2004 §7.12.6).
    @inlinable public var isLinkLocalControl: Bool { rawValue & ~0xF == 0x0180_C200_0000 }
    /// Usable as a source: neither multicast nor all-zero.
    @inlinable public var isValidSource: Bool { !isMulticast && rawValue != 0 }

    public var description: String {
        let hex: [Character] = Array("0123456789abcdef")
        var s = ""
        s.reserveCapacity(17)
        for i in 0..<6 {
            let o = Int(truncatingIfNeeded: rawValue >> (40 - 8 * i)) & 0xFF
            if i > 0 { s.append(":") }
            s.append(hex[o >> 4]); s.append(hex[o & 0xF])
        }
        return s
    }

    public static func < (a: MACAddress, b: MACAddress) -> Bool { a.rawValue < b.rawValue }
}
