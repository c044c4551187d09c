public import TapBridgeCore

extension Encapsulation {
    /// RFC 8926 Geneve: an 8-byte header (and options, skipped on receipt), then the frame.
    public static let geneve = Encapsulation("geneve")
}

/// RFC 8926 Geneve with one VNI, an Ethernet frame inside (protocol type 0x6558), as the Linux
/// `geneve` device and Open vSwitch speak it (UDP port 6081 by convention).
///
/// ```
///   0               1               2               3
///  |Ver|  Opt Len  |O|C|  Rsvd.    |      Protocol Type (0x6558)   |
///  |        Virtual Network Identifier (VNI)       |    Reserved   |
///  |                 Options (Opt Len × 4 bytes), skipped           |
///  |                 inner Ethernet frame ...                       |
/// ```
/// Sent: the 8-byte header, computed once, no options. Received: version 0 only; options are
/// skipped (none is understood), so one marked critical (C) drops the datagram, as the RFC
/// requires of an endpoint that does not know it; a control message (O) is taken and not
/// forwarded; another protocol type, or a header or options longer than the datagram, is
/// `malformed_encapsulation`; another VNI is `vni_mismatch`.
public final class GeneveFormat: EncapsulationFormat {
    /// The fixed header's length (options follow it).
    public static let length = 8
    /// Transparent Ethernet bridging: the payload is an Ethernet frame.
    static let ethernet: UInt16 = 0x6558
    public let vni: VNI
    let header: UInt64

    public init(vni: VNI) {
        self.vni = vni
        let bytes: [UInt8] = [0, 0, 0x65, 0x58, UInt8(vni.rawValue >> 16 & 0xFF), UInt8(vni.rawValue >> 8 & 0xFF), UInt8(vni.rawValue & 0xFF), 0]
        header = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    public var encapsulation: Encapsulation { .geneve }
    public var headerLength: Int { Self.length }
    public var trailerLength: Int { 0 }
    /// Senders pick the UDP source port from a hash of the inner flow (RFC 8926, 3.3).
    public var matchesAnySourcePort: Bool { true }

    @inline(__always)
    public func seal(_ datagram: UnsafeMutableRawPointer, frameLength: Int) -> Int {
        datagram.storeBytes(of: header, as: UInt64.self)
        return Self.length + frameLength
    }

    @inline(__always)
    public func open(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram {
        guard datagram.count >= Self.length else { return .drop(.malformedEncapsulation) }
        let first = datagram[0], flags = datagram[1]
        let options = Int(first & 0x3F) * 4
        guard first >> 6 == 0, UInt16(datagram[2]) << 8 | UInt16(datagram[3]) == Self.ethernet,
              datagram.count >= Self.length + options else { return .drop(.malformedEncapsulation) }
        if flags & 0x40 != 0 { return .drop(.malformedEncapsulation) }  // critical options: none is known here
        if flags & 0x80 != 0 { return .consumed }  // a control message: never forwarded
        let got = UInt32(datagram[4]) << 16 | UInt32(datagram[5]) << 8 | UInt32(datagram[6])
        guard got == vni.rawValue else { return .drop(.vniMismatch) }
        let start = Self.length + options
        return .frame(UnsafeMutableRawBufferPointer(start: datagram.baseAddress! + start, count: datagram.count - start))
    }

    /// This VNI's header, as sent, then an inner Ethernet header from a valid source.
    public func mayHaveSent(_ quote: UnsafeRawBufferPointer) -> Bool { Self.quote(quote, startsWith: header) }
}

extension GeneveFormat: EncapsulationKind {
    public static var encapsulation: Encapsulation { .geneve }
    public static var summary: String { "(RFC 8926, as Linux's geneve device and Open vSwitch speak it, on UDP port 6081 by convention)" }
    public static var carriesVNI: Bool { true }
    public static var meshByDefault: Bool { true }
    public static var kernelDatapath: Bool { false }
    public static var frameOffset: Int { length }
    public static func format(vni: VNI, key: (any EncapsulationKey)?, probing: Bool) -> any EncapsulationFormat { GeneveFormat(vni: vni) }
}
