/// How Ethernet frames travel in UDP datagrams to a remote peer: the name a user gives
/// (`encap=`). What each one is (its traits, and how a peer's `EncapsulationFormat` is made)
/// is declared by the type that implements it, in the UDP device's registry
/// (`Encapsulations`); nothing else tells them apart by name.
public struct Encapsulation: Hashable, Sendable, CustomStringConvertible {
    /// Its name, as `encap=` takes it.
    public let name: String

    public init(_ name: String) { self.name = name }

    public var description: String { name }

    /// RFC 7348 VXLAN: an 8-byte header, then the frame.
    public static let vxlan = Encapsulation("vxlan")
    /// The frame alone, one per datagram (QEMU `-netdev dgram`, `-netdev socket,udp=`).
    public static let raw = Encapsulation("raw")
}

/// A received datagram, opened: the inner frame (in place, inside the datagram), or why it is
/// dropped.
public enum OpenedDatagram {
    case frame(UnsafeMutableRawBufferPointer)
    case drop(DropReason)
    /// The format's own message (a handshake, a keepalive), taken: nothing to deliver.
    case consumed
    /// Not taken, counted as `reason`, and answered: `reply` (valid until the format's next
    /// call) goes back to the address the datagram came from, whoever that is (a sealed
    /// cookie reply, which only the real sender of a spoofed datagram can use).
    case reply(UnsafeRawBufferPointer, counted: DropReason)

    /// Whether the format took the datagram as its peer's (a frame, or its own message).
    public var isTaken: Bool {
        switch self {
        case .frame, .consumed: true
        case .drop, .reply: false
        }
    }
}

/// The seam between the UDP device and the bytes on the wire: how a frame becomes a datagram
/// and back, for one peer. The device never asks which format it has.
///
/// ```
///   send:    [ headerLength ][ frame (written by the caller) ][ trailerLength ]
///            seal(datagram, frameLength) writes the header in front and the trailer after, in
///            place (a sealing format encrypts the frame there), and returns the length
///   receive: open(datagram) finds the inner frame in place, or names the drop
/// ```
/// VXLAN and raw are stateless; a format with per-peer state (keys, counters, a replay
/// window) is a class instance per peer, which is why the protocol is class-bound. `open` may
/// change the datagram's bytes (decrypting in place): a datagram is opened once.
public protocol EncapsulationFormat: AnyObject {
    /// The encapsulation's name (`show ports`, logs).
    var encapsulation: Encapsulation { get }
    /// Bytes in front of every frame.
    var headerLength: Int { get }
    /// Bytes after every frame (an authentication tag; 0 for VXLAN and raw).
    var trailerLength: Int { get }
    /// A peer in this format is also known by its IP address alone, from any source port
    /// (RFC 7348 senders pick the source port from a hash of the inner flow).
    var matchesAnySourcePort: Bool { get }
    /// Turns the frame of `frameLength` bytes at `datagram + headerLength` into the datagram
    /// to send, in place; returns the datagram's length (`headerLength + frameLength +
    /// trailerLength`). `datagram` has room for all of it.
    func seal(_ datagram: UnsafeMutableRawPointer, frameLength: Int) -> Int
    /// The inner frame of `datagram`, in place, or why it is dropped.
    func open(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram
    /// The same, for a datagram that came from `source` (its address and port as 18 bytes,
    /// IPv4 in IPv6 form), which a format that answers (`.reply`) binds its answer to.
    func open(_ datagram: UnsafeMutableRawBufferPointer, from source: UnsafeRawBufferPointer) -> OpenedDatagram
    /// A datagram from an address that is no peer's: the format of the peer whose session it
    /// names (this format's or another's of its group), if the format lets a peer's address
    /// change (roaming); the device then moves that peer to the sender's address once the
    /// datagram opens (authenticated). At most one lookup, or one HMAC for a handshake
    /// message, before anything is authenticated. nil: a stranger.
    func owner(ofStranger datagram: UnsafeRawBufferPointer) -> (any EncapsulationFormat)?
    /// The formats that answer `owner(ofStranger:)` for each other (one per group is asked);
    /// nil for a format whose peers never move.
    var roamingGroup: ObjectIdentifier? { get }
    /// Runs what is due at `now` (monotonic ns: a keepalive) and returns when to be called
    /// next; nil: never (the format has no timer; the device then never asks again).
    func timer(now: Int64) -> Int64?
    /// Whether `quote`, the start of a datagram an ICMP error says could not be delivered
    /// (what follows its UDP header), can be one this format sent to its peer. A lowered path
    /// MTU is believed only then: the kernel takes any ICMP message that names this socket's
    /// address and port, and one forged "fragmentation needed" used to lower a remote's path
    /// to 552 bytes for good.
    func mayHaveSent(_ quote: UnsafeRawBufferPointer) -> Bool
    /// Called once the peer is a port: `send` sends a datagram of the format's own (a
    /// handshake message) to the peer at once. (A stateless format ignores it.)
    func connect(_ send: @escaping (UnsafeRawBufferPointer) -> Void)
    /// Whether a frame can be sealed now; false drops it (`link_down`): a format that needs a
    /// session starts one here (a handshake) and answers false until it is up.
    func readyToSend() -> Bool
    /// Keeps `frame` (a copy, complete and fitting the path) to send once `readyToSend`'s
    /// session is up; false if the format keeps none (the frame is then dropped).
    func hold(_ frame: [UInt8]) -> Bool
    /// What `show ports` says of its session with the peer; nil for a stateless format.
    var session: SessionReport? { get }
}

extension EncapsulationFormat {
    public func connect(_ send: @escaping (UnsafeRawBufferPointer) -> Void) {}
    @inline(__always) public func readyToSend() -> Bool { true }
    public func hold(_ frame: [UInt8]) -> Bool { false }
    public var session: SessionReport? { nil }
    @inline(__always) public func open(_ datagram: UnsafeMutableRawBufferPointer, from source: UnsafeRawBufferPointer) -> OpenedDatagram { open(datagram) }
    public func owner(ofStranger datagram: UnsafeRawBufferPointer) -> (any EncapsulationFormat)? { nil }
    public var roamingGroup: ObjectIdentifier? { nil }
    public func timer(now: Int64) -> Int64? { nil }
}

/// A format's session with its peer, as `show ports` gives it.
public struct SessionReport: Sendable, Equatable {
    /// Who the peer is (a sealed peer's public key, short).
    public var peer: String
    /// When the last handshake completed (monotonic nanoseconds); nil before the first.
    public var lastHandshake: Int64?
    /// Messages of the format's own, by name (`initiations_sent`, ...).
    public var messages: [String: UInt64]

    public init(peer: String, lastHandshake: Int64?, messages: [String: UInt64]) {
        self.peer = peer
        self.lastHandshake = lastHandshake
        self.messages = messages
    }
}

extension EncapsulationFormat {
    /// Whether `frame` starts like an Ethernet frame this bridge forwards: a header, from a
    /// valid (unicast, non-zero) source.
    public static func looksForwarded(_ frame: UnsafeRawBufferPointer) -> Bool {
        frame.count >= 14 && MACAddress(reading: frame, at: 6).isValidSource
    }

    /// Whether `quote` starts with `header`, 8 bytes as sent, then an inner Ethernet header
    /// from a valid source: `mayHaveSent` of a format whose header is fixed (VXLAN, Geneve).
    public static func quote(_ quote: UnsafeRawBufferPointer, startsWith header: UInt64) -> Bool {
        guard quote.count >= 8 else { return false }
        var sent = header
        return withUnsafeBytes(of: &sent) { $0.elementsEqual(quote.prefix(8)) } && looksForwarded(UnsafeRawBufferPointer(rebasing: quote.dropFirst(8)))
    }

    /// The largest inner frame whose datagram fits an IP packet of `pathMTU` bytes: the path
    /// less the outer IP header (20 bytes, 40 for IPv6), UDP's 8 and what the format adds
    /// (VXLAN's 8-byte header). 1,464 for VXLAN over a 1500-byte IPv4 path (an IP MTU of
    /// 1,450 plus the inner Ethernet header's 14). Never below 128.
    public func frameLimit(pathMTU: Int, ipv4: Bool) -> Int {
        max(pathMTU - (ipv4 ? 20 : 40) - 8 - headerLength - trailerLength, 128)
    }
}

/// RFC 7348 VXLAN with one VNI: the 8-byte header is computed once.
public final class VXLANFormat: EncapsulationFormat {
    public let vni: VNI
    let header: UInt64

    public init(vni: VNI) {
        self.vni = vni
        header = VXLANHeader.encodedHeader(vni: vni)
    }

    public var encapsulation: Encapsulation { .vxlan }
    public var headerLength: Int { VXLANHeader.length }
    public var trailerLength: Int { 0 }
    public var matchesAnySourcePort: Bool { true }

    @inline(__always)
    public func seal(_ datagram: UnsafeMutableRawPointer, frameLength: Int) -> Int {
        datagram.storeBytes(of: header, as: UInt64.self)
        return VXLANHeader.length + frameLength
    }

    /// Too short or without the I flag: `malformed_encapsulation`; another VNI: `vni_mismatch`.
    @inline(__always)
    public func open(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram {
        switch VXLANHeader.decode(UnsafeRawBufferPointer(datagram)) {
        case .frame(let got, let inner):
            guard got == vni else { return .drop(.vniMismatch) }
            return .frame(UnsafeMutableRawBufferPointer(start: datagram.baseAddress! + VXLANHeader.length, count: inner))
        case .tooShort, .flagsInvalid:
            return .drop(.malformedEncapsulation)
        }
    }

    /// This VNI's header, as sent (flags 0x08, reserved bits zero), then an inner Ethernet
    /// header from a valid source.
    public func mayHaveSent(_ quote: UnsafeRawBufferPointer) -> Bool { Self.quote(quote, startsWith: header) }
}

/// One Ethernet frame per datagram, nothing added.
public final class RawFormat: EncapsulationFormat {
    public init() {}
    public var encapsulation: Encapsulation { .raw }
    public var headerLength: Int { 0 }
    public var trailerLength: Int { 0 }
    public var matchesAnySourcePort: Bool { false }
    @inline(__always) public func seal(_ datagram: UnsafeMutableRawPointer, frameLength: Int) -> Int { frameLength }
    /// The datagram is the frame (a runt is found by the bridge, like any short frame).
    @inline(__always) public func open(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram { .frame(datagram) }
    /// An Ethernet header from a valid source.
    public func mayHaveSent(_ quote: UnsafeRawBufferPointer) -> Bool { Self.looksForwarded(quote) }
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
