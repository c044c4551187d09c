/// Merges consecutive TCP segments of one flow back into one super-frame (receive offload, what
/// the kernel's GRO does in `tcp_gro_receive`), so that a train of datagrams from a remote
/// reaches a TAP as one write with a GSO header instead of forty.
///
/// ```
///  begin(frame 0)   [ Eth | IP | TCP | payload 0 ]            nothing copied: built in place
///  append(frame 1)  [ Eth | IP | TCP | payload 0 | payload 1 ]  frame 1's headers dropped
///  ...
///  end()            IP length (and IPv4 header checksum) rewritten, the TCP checksum field set
///                   to the pseudo-header sum; offload: TSO, segment size = payload 0's length
/// ```
/// A segment merges only if the result cuts back into exactly the segments that arrived
/// (`OffloadFinisher.segment` gives them back byte for byte), which is what keeps a merge from
/// ever changing what the receiver sees:
/// - both are unfragmented TCP over IPv4 (IPv4 ID one above the previous) or IPv6 (no
///   extension headers), with the same Ethernet header and tags, the same IP header apart from
///   length, ID and checksum, and the same TCP header apart from sequence number, checksum and
///   the FIN and PSH flags (so the same ports, ACK, window and options);
/// - the sequence number follows on; every segment so far carried `segmentSize` bytes and this
///   one carries at most that many; it has no CWR;
/// - its checksums verify (and the first segment's did): a corrupted segment is never merged,
///   because its error would vanish into a recomputed checksum.
/// A segment with FIN or PSH, or shorter than the first, merges and closes the super-frame;
/// one with SYN, RST, URG or CWR, a pure ACK, a segment under
/// `OffloadFinisher.minimumTCPSegmentSize` bytes, or anything not TCP never starts one.
public struct SegmentCoalescer {
    var frame: UnsafeMutableRawPointer? = nil
    var capacity = 0
    /// Bytes of the frame built so far.
    public private(set) var length = 0
    var layout = TransportLayout(l3: 0, isIPv6: false, l4: 0, proto: 0, ipLength: 0)
    var headerLength = 0
    var segmentSize = 0
    /// Segments merged into the frame so far (1 after `begin`).
    public private(set) var segments = 0
    var nextSequence: UInt32 = 0
    var firstID: UInt16 = 0
    /// More segments may still merge.
    var isOpen = false
    /// The first segment's checksums were checked (once, when a second one arrives).
    var firstVerified = false

    public init() {}

    /// Starts a frame with the complete frame of `length` bytes at `buffer`, which has room for
    /// `capacity` bytes. Later segments are appended behind it in that buffer.
    public mutating func begin(_ buffer: UnsafeMutableRawPointer, length: Int, capacity: Int) {
        frame = buffer
        self.length = length
        self.capacity = capacity
        segments = 1
        isOpen = false
        firstVerified = false
        let view = UnsafeRawBufferPointer(start: buffer, count: length)
        guard let layout = TransportLayout(view), layout.proto == 6, layout.l3 + layout.ipLength == length,
            !layout.isIPv6 || layout.l4 == layout.l3 + 40
        else { return }
        let headerLength = layout.l4 + Int(view[layout.l4 + 12] >> 4) * 4
        let flags = view[layout.l4 + 13]
        guard headerLength >= layout.l4 + 20, headerLength < length, flags & 0xAF == 0 else { return }  // no FIN SYN RST PSH URG CWR
        // segments smaller than any real stack's stay frames: a super-frame of them would be refused
        guard length - headerLength >= OffloadFinisher.minimumTCPSegmentSize else { return }
        self.layout = layout
        self.headerLength = headerLength
        segmentSize = length - headerLength
        nextSequence = UInt32(bigEndian: view.loadUnaligned(fromByteOffset: layout.l4 + 4, as: UInt32.self)) &+ UInt32(segmentSize)
        firstID = layout.isIPv6 ? 0 : UInt16(bigEndian: view.loadUnaligned(fromByteOffset: layout.l3 + 4, as: UInt16.self))
        isOpen = true
    }

    /// Appends the payload of `segment` (a complete frame) if it continues the frame (see the
    /// type's rules); false leaves everything as it was. `segment` may lie in the same buffer,
    /// behind the frame being built.
    public mutating func append(_ segment: UnsafeRawBufferPointer) -> Bool {
        guard isOpen, let frame, segment.count > headerLength, let other = TransportLayout(segment), other == sameShape(as: segment.count)
        else { return false }
        let payload = segment.count - headerLength
        let s = segment.baseAddress!
        let l3 = layout.l3, l4 = layout.l4
        guard payload <= segmentSize, length + payload <= capacity, length + payload - l3 <= 65_535 + (layout.isIPv6 ? 40 : 0),
            UInt32(bigEndian: s.loadUnaligned(fromByteOffset: l4 + 4, as: UInt32.self)) == nextSequence,
            s.load(fromByteOffset: l4 + 13, as: UInt8.self) & 0x80 == 0,
            Self.equal(frame, s, 0, l3)
        else { return false }
        if layout.isIPv6 {
            guard Self.equal(frame, s, l3, l3 + 4), Self.equal(frame, s, l3 + 6, l4) else { return false }
        } else {
            guard Self.equal(frame, s, l3, l3 + 2), Self.equal(frame, s, l3 + 6, l3 + 10), Self.equal(frame, s, l3 + 12, l4),
                UInt16(bigEndian: s.loadUnaligned(fromByteOffset: l3 + 4, as: UInt16.self)) == firstID &+ UInt16(truncatingIfNeeded: segments)
            else { return false }
        }
        // ports, ACK; data offset, flags but FIN/PSH/CWR, window; urgent pointer and options
        let word = UInt32(bigEndian: frame.loadUnaligned(fromByteOffset: l4 + 12, as: UInt32.self))
        let otherWord = UInt32(bigEndian: s.loadUnaligned(fromByteOffset: l4 + 12, as: UInt32.self))
        guard Self.equal(frame, s, l4, l4 + 4), Self.equal(frame, s, l4 + 8, l4 + 12), (word ^ otherWord) & ~0x0089_0000 == 0,
            Self.equal(frame, s, l4 + 18, headerLength)
        else { return false }
        guard Self.verifies(segment, layout), firstVerified || Self.verifies(UnsafeRawBufferPointer(start: frame, count: length), layout) else {
            isOpen = false
            return false
        }
        firstVerified = true
        (frame + length).copyMemory(from: s + headerLength, byteCount: payload)
        length += payload
        segments += 1
        nextSequence = nextSequence &+ UInt32(payload)
        let closing = s.load(fromByteOffset: l4 + 13, as: UInt8.self) & 0x09  // FIN, PSH
        if closing != 0 {
            frame.storeBytes(of: frame.load(fromByteOffset: l4 + 13, as: UInt8.self) | closing, toByteOffset: l4 + 13, as: UInt8.self)
        }
        if closing != 0 || payload < segmentSize { isOpen = false }
        return true
    }

    /// Finishes the frame: its length and the offload state it now carries (`.none` if nothing
    /// merged: the first frame is left exactly as it was).
    public mutating func end() -> (length: Int, offload: FrameOffload) {
        defer { isOpen = false }
        guard segments > 1, let frame else { return (length, .none) }
        let l3 = layout.l3, l4 = layout.l4
        if layout.isIPv6 {
            frame.storeBytes(of: UInt16(length - l3 - 40).bigEndian, toByteOffset: l3 + 4, as: UInt16.self)
        } else {
            frame.storeBytes(of: UInt16(length - l3).bigEndian, toByteOffset: l3 + 2, as: UInt16.self)
            frame.storeBytes(of: UInt16(0), toByteOffset: l3 + 10, as: UInt16.self)
            frame.storeBytes(of: ~InternetChecksum.fold(InternetChecksum.sum(frame + l3, count: l4 - l3)), toByteOffset: l3 + 10, as: UInt16.self)
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the receiver adds the rest
        let pseudo = InternetChecksum.pseudoHeader(frame, l3: l3, isIPv6: layout.isIPv6, proto: 6, length: length - l4)
        frame.storeBytes(of: InternetChecksum.fold(pseudo), toByteOffset: l4 + 16, as: UInt16.self)
        let offload = FrameOffload(needsChecksum: true, segmentation: layout.isIPv6 ? .tcpv6 : .tcpv4, segmentSize: UInt16(segmentSize),
                                   checksumStart: UInt16(l4), checksumOffset: 16)
        return (length, offload)
    }

    /// The layout a segment of `count` bytes must have to match the frame.
    @inline(__always) func sameShape(as count: Int) -> TransportLayout {
        var l = layout
        l.ipLength = count - l.l3
        return l
    }

    @inline(__always) static func equal(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ from: Int, _ to: Int) -> Bool {
        var i = from
        while i + 8 <= to {
            if a.loadUnaligned(fromByteOffset: i, as: UInt64.self) != b.loadUnaligned(fromByteOffset: i, as: UInt64.self) { return false }
            i += 8
        }
        while i < to {
            if a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) { return false }
            i += 1
        }
        return true
    }

    /// Whether the IPv4 header checksum (if any) and the TCP checksum of `frame` verify.
    static func verifies(_ frame: UnsafeRawBufferPointer, _ layout: TransportLayout) -> Bool {
        let p = frame.baseAddress!
        if !layout.isIPv6, InternetChecksum.fold(InternetChecksum.sum(p + layout.l3, count: layout.l4 - layout.l3)) != 0xFFFF { return false }
        return OffloadFinisher.verifiesChecksum(frame) == true
    }
}
