/// The offload state of one frame: what the kernel left for "hardware" to do, in the meaning
/// of the virtio-net header (`struct virtio_net_hdr`, Linux `include/uapi/linux/virtio_net.h`).
///
/// A frame read from a veth or from a TAP that QEMU holds, through a packet socket with
/// `PACKET_VNET_HDR`, may be
/// - **checksum-partial**: `needsChecksum`; the 16-bit field at `checksumStart + checksumOffset`
///   holds only the folded pseudo-header sum, and the Internet checksum from `checksumStart` to
///   the end of the frame must still be folded into it (`CHECKSUM_PARTIAL`);
/// - a **GSO super-frame** (up to 64 KiB): one TCP or UDP header followed by the payload of many
///   frames, to be cut into `segmentSize`-byte payloads, each with its own headers and checksums.
///
/// Offsets count from the first byte of the Ethernet header, VLAN tags included (a tag the
/// switch inserts or removes moves them by 4; `FrameBatch` keeps them right).
/// `hdr_len` of the virtio header is not kept: it is only a hint (wireguard-go and the kernel's
/// own forward path show it can be wrong); the header length is recomputed from the frame.
public struct FrameOffload: Equatable, Sendable {
    /// What kind of segmentation a super-frame needs (virtio `gso_type` without the ECN bit).
    public enum Segmentation: UInt8, Sendable {
        /// A plain frame.
        case none = 0
        /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
        case tcpv4 = 1
        /// UDP fragmentation offload (`VIRTIO_NET_HDR_GSO_UDP`): legacy, not supported.
        case udpFragmentation = 3
        /// TCP over IPv6 (`VIRTIO_NET_HDR_GSO_TCPV6`).
        case tcpv6 = 4
        /// UDP segmentation, IPv4 or IPv6 (`VIRTIO_NET_HDR_GSO_UDP_L4`): each segment is its own
        /// datagram.
        case udpL4 = 5
    }

    /// The L4 checksum must be completed (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    public var needsChecksum: Bool
    /// Segmentation wanted; `nil` for a `gso_type` this code does not know.
    public var segmentation: Segmentation?
    /// The ECN bit of `gso_type` (the sender uses ECN; segments after the first lose CWR).
    public var ecn: Bool
    /// Payload bytes per segment (`gso_size`); meaningful when `segmentation != .none`.
    public var segmentSize: UInt16
    /// Where the checksummed data (the L4 header) starts, from the Ethernet header.
    public var checksumStart: UInt16
    /// Where the checksum field is, from `checksumStart` (16 for TCP, 6 for UDP).
    public var checksumOffset: UInt16

    /// A complete frame: nothing left to do.
    public static let none = FrameOffload(needsChecksum: false, segmentation: Segmentation.none, ecn: false, segmentSize: 0, checksumStart: 0, checksumOffset: 0)

    public init(needsChecksum: Bool, segmentation: Segmentation?, ecn: Bool = false, segmentSize: UInt16 = 0, checksumStart: UInt16, checksumOffset: UInt16) {
        self.needsChecksum = needsChecksum
        self.segmentation = segmentation
        self.ecn = ecn
        self.segmentSize = segmentSize
        self.checksumStart = checksumStart
        self.checksumOffset = checksumOffset
    }

    /// Size of `struct virtio_net_hdr` (without `num_buffers`).
    public static let virtioHeaderLength = 10

    /// Reads a virtio-net header (little-endian fields, as on every host tapbridge runs on and
    /// as `PACKET_VNET_HDR` and `IFF_VNET_HDR` deliver them). `nil` if shorter than 10 bytes.
    public init?(virtioHeader h: UnsafeRawBufferPointer) {
        guard h.count >= Self.virtioHeaderLength else { return nil }
        let flags = h[0], type = h[1]
        needsChecksum = flags & 1 != 0
        segmentation = Segmentation(rawValue: type & 0x7F)
        ecn = type & 0x80 != 0
        segmentSize = UInt16(littleEndian: h.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        checksumStart = UInt16(littleEndian: h.loadUnaligned(fromByteOffset: 6, as: UInt16.self))
        checksumOffset = UInt16(littleEndian: h.loadUnaligned(fromByteOffset: 8, as: UInt16.self))
    }

    /// Writes this state as a 10-byte virtio-net header (`hdr_len` is set to `headerLength`).
    public func writeVirtioHeader(to h: UnsafeMutableRawBufferPointer, headerLength: UInt16 = 0) {
        precondition(h.count >= Self.virtioHeaderLength)
        h[0] = needsChecksum ? 1 : 0
        h[1] = (segmentation?.rawValue ?? 0) | (ecn ? 0x80 : 0)
        h.storeBytes(of: headerLength.littleEndian, toByteOffset: 2, as: UInt16.self)
        h.storeBytes(of: segmentSize.littleEndian, toByteOffset: 4, as: UInt16.self)
        h.storeBytes(of: checksumStart.littleEndian, toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: checksumOffset.littleEndian, toByteOffset: 8, as: UInt16.self)
    }

    /// Nothing to do: the frame is complete as it is.
    @inline(__always) public var isComplete: Bool { !needsChecksum && segmentation == Segmentation.none }

    /// A super-frame (segmentation wanted, known or not).
    @inline(__always) public var isSegmentation: Bool { segmentation != Segmentation.none }

    /// The same state after the frame's start moved by `delta` bytes (+4: a tag was inserted
    /// in front of the checksummed part; -4: one was removed).
    @inline(__always) public func shifted(by delta: Int) -> FrameOffload {
        guard !isComplete else { return self }
        var o = self
        o.checksumStart = UInt16(truncatingIfNeeded: Int(checksumStart) + delta)
        return o
    }
}

/// What a port can take as it is (smoltcp's `DeviceCapabilities`). A frame whose offload state
/// the egress device cannot take is finished in software first (`OffloadFinisher`): its checksum
/// completed, or it is cut into segments. Every device takes complete frames.
public struct OffloadCapabilities: Equatable, Sendable {
    /// Takes frames with a partial checksum (the receiver completes it).
    public var partialChecksum: Bool
    /// Takes TCP super-frames (TSO over IPv4 and IPv6).
    public var tcpSegmentation: Bool
    /// Takes UDP super-frames (USO).
    public var udpSegmentation: Bool
    /// Largest frame the device sends, Ethernet header and tags included (for a TAP or an
    /// interface: MTU + 14 + 4 per tag). Segments are cut to fit it.
    public var maximumFrameLength: Int
    /// The IP MTU of the link behind the device (a TAP's, an interface's), or nil (a remote
    /// fits each peer's path itself; a stream carries any frame). The engine fits TCP to it on
    /// every path that crosses it (`ForwardingEngine.fitToPath`): the MSS of SYNs in either
    /// direction is clamped to it, and a TCP super-frame whose segments would not fit is cut.
    public var linkMTU: Int? = nil

    /// Takes only complete frames, of up to `maximumFrameLength` bytes.
    public static func none(maximumFrameLength: Int = 65_557) -> OffloadCapabilities {
        OffloadCapabilities(partialChecksum: false, tcpSegmentation: false, udpSegmentation: false, maximumFrameLength: maximumFrameLength)
    }

    public init(partialChecksum: Bool, tcpSegmentation: Bool, udpSegmentation: Bool, maximumFrameLength: Int, linkMTU: Int? = nil) {
        self.linkMTU = linkMTU
        self.partialChecksum = partialChecksum
        self.tcpSegmentation = tcpSegmentation
        self.udpSegmentation = udpSegmentation
        self.maximumFrameLength = maximumFrameLength
    }

    /// `csum tso uso` (what is taken), `none` (nothing), or `off` (`on` false: turned off).
    public static func describe(_ c: OffloadCapabilities, on: Bool) -> String {
        guard on else { return "off" }
        let words = [c.partialChecksum ? "csum" : nil, c.tcpSegmentation ? "tso" : nil, c.udpSegmentation ? "uso" : nil].compactMap { $0 }
        return words.isEmpty ? "none" : words.joined(separator: " ")
    }

    /// Whether a frame with offload state `o` can go out as it is.
    @inline(__always) public func accepts(_ o: FrameOffload) -> Bool {
        switch o.segmentation {
        case .none?: return !o.needsChecksum || partialChecksum
        case .tcpv4?, .tcpv6?: return tcpSegmentation
        case .udpL4?: return udpSegmentation
        case .udpFragmentation?, nil: return false
        }
    }
}
