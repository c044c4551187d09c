/// How Ethernet frames travel in UDP datagrams to a remote peer.
public enum Encapsulation: String, Sendable, CaseIterable, CustomStringConvertible {
    /// RFC 7348 VXLAN: an 8-byte header, then the frame.
    case vxlan
    /// The frame alone, one per datagram (QEMU `-netdev dgram`, `-netdev socket,udp=`).
    case raw

    /// Bytes in front of the frame.
    public var headerLength: Int { self == .vxlan ? VXLANHeader.length : 0 }

    public var description: String { rawValue }
}

/// A 24-bit VXLAN network identifier.
public struct VNI: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    /// `nil` unless `value` fits 24 bits.
    public init?(_ value: Int) {
        guard (0...0xFF_FFFF).contains(value) else { return nil }
        rawValue = UInt32(value)
    }
    public var description: String { String(rawValue) }
}

/// The RFC 7348 VXLAN header (§5), 8 bytes in front of the inner Ethernet frame:
/// ```
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |R|R|R|R|I|R|R|R|            Reserved                           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                VXLAN Network Identifier (VNI) |   Reserved    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
/// Sent: flags 0x08 (I set), every reserved bit zero. Received: the I flag must be set, the
/// reserved bits are ignored (RFC 7348: "MUST be ignored on receipt").
public enum VXLANHeader {
    /// Header length in bytes.
    public static let length = 8
    /// The I flag: the VNI is valid.
    public static let validVNIFlag: UInt8 = 0x08

    /// Outcome of decoding a datagram.
    public enum Decoded: Equatable, Sendable {
        /// The inner frame starts at byte 8 and has `frameLength` bytes.
        case frame(vni: VNI, frameLength: Int)
        /// Shorter than the header.
        case tooShort
        /// I flag not set.
        case flagsInvalid
    }

    /// Decodes the header at the start of `datagram`.
    @inline(__always)
    public static func decode(_ datagram: UnsafeRawBufferPointer) -> Decoded {
        guard datagram.count >= length else { return .tooShort }
        guard datagram[0] & validVNIFlag != 0 else { return .flagsInvalid }
        let vni = UInt32(datagram[4]) << 16 | UInt32(datagram[5]) << 8 | UInt32(datagram[6])
        return .frame(vni: VNI(Int(vni))!, frameLength: datagram.count - length)
    }

    /// The 8 header bytes for `vni` (flags 0x08, VNI, reserved bits zero), as a value whose
    /// in-memory bytes are the wire bytes: store it unchanged in front of the frame.
    public static func encodedHeader(vni: VNI) -> UInt64 {
        (UInt64(validVNIFlag) << 56 | UInt64(vni.rawValue) << 8).bigEndian
    }
}
