/// A 12-bit IEEE 802.1Q VLAN identifier, 1–4094 for real VLANs.
/// 0 marks a priority-tagged frame and 4095 is reserved (802.1Q-2018 Table 9-2).
public struct VLANID: Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByIntegerLiteral {
    public let rawValue: UInt16

    /// The default VLAN of every port (`vlan 1`, as on the kernel bridge and most switches).
    public static let `default` = VLANID(1)

    /// Creates an identifier from the low 12 bits of `value`.
    @inlinable public init(_ value: UInt16) { rawValue = value & 0x0FFF }
    public init(integerLiteral value: UInt16) { self.init(value) }

    /// Validates a user-supplied number: `nil` unless it is in 1...4094.
    public init?(validating value: Int) {
        guard (1...4094).contains(value) else { return nil }
        self.init(UInt16(value))
    }

    public var description: String { String(rawValue) }
    public static func < (a: VLANID, b: VLANID) -> Bool { a.rawValue < b.rawValue }
}

/// One VLAN tag as found on the wire: tag protocol identifier (TPID) and tag control information
/// (TCI = 3-bit priority, 1-bit drop eligible, 12-bit VLAN ID).
public struct VLANTag: Hashable, Sendable {
    /// 0x8100 for an 802.1Q customer tag, 0x88a8 for an 802.1ad service tag.
    public var tagProtocol: UInt16
    /// Priority (PCP), drop-eligible bit (DEI) and VLAN ID, as on the wire.
    public var controlInformation: UInt16

    /// 802.1Q customer VLAN tag protocol identifier.
    public static let customerTagProtocol: UInt16 = 0x8100
    /// 802.1ad service VLAN (QinQ outer) tag protocol identifier.
    public static let serviceTagProtocol: UInt16 = 0x88A8

    @inlinable public init(tagProtocol: UInt16 = VLANTag.customerTagProtocol, controlInformation: UInt16) {
        self.tagProtocol = tagProtocol
        self.controlInformation = controlInformation
    }

    public init(tagProtocol: UInt16 = VLANTag.customerTagProtocol, vlan: VLANID, priority: UInt8 = 0) {
        self.init(tagProtocol: tagProtocol, controlInformation: UInt16(priority & 7) << 13 | vlan.rawValue)
    }

    /// The 12-bit VLAN identifier.
    @inlinable public var vlan: VLANID { VLANID(controlInformation) }
    /// The 3-bit priority code point.
    @inlinable public var priority: UInt8 { UInt8(controlInformation >> 13) }

    /// Whether `etherType` is one of the tag protocols this parser recognises (0x8100, 0x88a8).
    @inlinable public static func isTagProtocol(_ etherType: UInt16) -> Bool {
        etherType == customerTagProtocol || etherType == serviceTagProtocol
    }
}

/// A read-only view of an Ethernet II header with up to two VLAN tags, parsed from borrowed bytes.
///
/// Layout (offsets in bytes):
/// ```
///  0      6      12          16          20
///  +------+------+-----------+-----------+-----------+---------
///  | dst  | src  | tag 1 (opt)| tag 2 (opt)| EtherType | payload
///  +------+------+-----------+-----------+-----------+---------
///                 TPID+TCI    TPID+TCI
/// ```
/// The initializer fails below 14 bytes; after that no accessor can trap. A tag whose four bytes
/// are cut off (`isTruncated`) leaves `etherType` at the tag protocol. More than two tags: the
/// rest stay in the payload.
public struct EthernetHeader: Sendable {
    /// Destination address.
    public let destination: MACAddress
    /// Source address.
    public let source: MACAddress
    /// The outermost tag, if any.
    public let outerTag: VLANTag?
    /// The tag after the outer one (QinQ), if any.
    public let innerTag: VLANTag?
    /// The EtherType after the parsed tags (a tag protocol if `isTruncated`).
    public let etherType: UInt16
    /// The bytes from the start of the frame to the payload: 14, 18 or 22.
    public let length: Int
    /// A tag protocol announced a tag that the frame is too short to hold.
    public let isTruncated: Bool

    /// Parses `frame`; `nil` if it is shorter than 14 bytes (a runt).
    @inlinable public init?(_ frame: UnsafeRawBufferPointer) {
        guard frame.count >= 14 else { return nil }
        destination = MACAddress(reading: frame, at: 0)
        source = MACAddress(reading: frame, at: 6)
        var type = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        var offset = 14
        var tags: (VLANTag?, VLANTag?) = (nil, nil)
        var truncated = false
        for index in 0..<2 where VLANTag.isTagProtocol(type) {
            guard frame.count >= offset + 4 else { truncated = true; break }
            let tci = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let tag = VLANTag(tagProtocol: type, controlInformation: tci)
            if index == 0 { tags.0 = tag } else { tags.1 = tag }
            type = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self))
            offset += 4
        }
        outerTag = tags.0
        innerTag = tags.1
        etherType = type
        length = offset
        isTruncated = truncated
    }
}

