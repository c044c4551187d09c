/// Does in software what a NIC would: completes partial checksums and cuts GSO super-frames
/// into frames that fit the egress port, exactly as the kernel's own segmentation does
/// (`tcp_gso_segment`, `__udp_gso_segment`, `inet_gso_segment`, `ipv6_gso_segment`).
///
/// The engine calls it lazily, at egress, only for a port whose `OffloadCapabilities` do not
/// take the frame as it is; a port that takes partial checksums or super-frames gets them
/// untouched.
///
/// Segment `i` of a super-frame (payload `P` bytes, `segmentSize` `S`, `n = ceil(P / S)`):
/// ```
///  [ Ethernet + tags | IPv4/IPv6 | TCP or UDP header ][ payload bytes i*S ..< min((i+1)*S, P) ]
///    copied as is      IPv4: total length, ID + i,     TCP: sequence + i*S; FIN and PSH only on
///                      header checksum                 the last segment, CWR only on the first
///                      IPv6: payload length            UDP: length
///                                                      checksum: computed in full (pseudo-header
///                                                      + header + payload)
/// ```
/// One segment is built at a time into a scratch buffer allocated once and handed to the
/// caller, which must not keep it: the next segment overwrites it. No allocation per frame.
public final class OffloadFinisher {
    /// Why a frame with offload state cannot be finished.
    public enum Failure: Error, Equatable, Sendable {
        /// Offsets or lengths that do not match the frame.
        case malformed
        /// A segmentation type this code does not do (UFO, unknown types).
        case unsupported
        /// The segments would not fit the egress (UDP segments cannot be made smaller).
        case tooLarge
        /// The segment size would cut the frame into more segments than any real stack sends
        /// (see `minimumTCPSegmentSize`, `maximumUDPSegments`).
        case tinySegments

        /// The drop reason counted for it.
        public var dropReason: DropReason {
            switch self {
            case .malformed: .offloadMalformed
            case .unsupported: .offloadUnsupported
            case .tooLarge: .frameTooLarge
            case .tinySegments: .offloadTinySegments
            }
        }
    }

    let scratch: UnsafeMutableRawPointer
    /// Largest segment the scratch buffer holds.
    public let capacity: Int

    /// Allocates a scratch buffer for segments of up to `capacity` bytes.
    public init(capacity: Int = 65_557) {
        self.capacity = capacity
        scratch = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { scratch.deallocate() }

    // MARK: Checks

    /// The smallest TCP segment size a super-frame may ask for: 48 bytes, Linux's floor for the
    /// MSS it sends with (`TCP_MIN_SND_MSS`, the least `net.ipv4.tcp_min_snd_mss` takes), so no
    /// Linux guest or container ever asks for less. The kernel itself takes any `gso_size` from
    /// a virtio-net header; a switch that did the same would cut a 64 KiB frame with a 1-byte
    /// segment size into 65,000 frames for every port that needs it segmented. At 48 bytes a
    /// 64 KiB frame is at most 1,366 segments, about twice its bytes on the wire.
    public static let minimumTCPSegmentSize = 48
    /// The most segments a UDP super-frame may hold: the kernel's own bound for UDP GSO
    /// (`UDP_MAX_SEGMENTS`: 64 in older kernels, 128 since 6.9), which no sender can pass.
    public static let maximumUDPSegments = 128

    /// Segments of at most `size` payload bytes that `payload` bytes make (at least 1).
    @inline(__always)
    public static func segmentCount(payload: Int, size: Int) -> Int {
        size <= 0 ? 1 : max(1, (payload + size - 1) / size)
    }

    /// Checks `o` against `frame` before the frame is forwarded: the checksum field inside the
    /// frame; for a super-frame, the headers it names parse and agree with the offsets.
    public static func validate(_ frame: UnsafeRawBufferPointer, _ o: FrameOffload) -> Failure? {
        if case .failure(let failure) = inspect(frame, o) { return failure }
        return nil
    }

    /// `validate`, and when the frame passes, the frames it stands for on the wire: a
    /// super-frame its segments at its segment size, any other frame 1 (frame counters count
    /// these, so a TCP stream counts the same on a port that takes super-frames and on one that
    /// gets them cut). The headers are parsed once for both.
    public static func inspect(_ frame: UnsafeRawBufferPointer, _ o: FrameOffload) -> Result<Int, Failure> {
        if o.isComplete { return .success(1) }
        guard let segmentation = o.segmentation else { return .failure(.unsupported) }
        if o.needsChecksum {
            let start = Int(o.checksumStart), field = start + Int(o.checksumOffset)
            guard start >= 14, field + 2 <= frame.count else { return .failure(.malformed) }
        }
        switch segmentation {
        case .none: return .success(1)
        case .udpFragmentation: return .failure(.unsupported)
        case .tcpv4, .tcpv6, .udpL4:
            guard let (_, headerLength) = superFrameLayout(frame, o) else { return .failure(.malformed) }
            let segments = segmentCount(payload: frame.count - headerLength, size: Int(o.segmentSize))
            let tiny = segmentation == .udpL4 ? segments > maximumUDPSegments : Int(o.segmentSize) < minimumTCPSegmentSize
            return tiny ? .failure(.tinySegments) : .success(segments)
        }
    }

    /// The layout and header length of a super-frame, or nil if `o` does not describe it.
    static func superFrameLayout(_ frame: UnsafeRawBufferPointer, _ o: FrameOffload) -> (TransportLayout, headerLength: Int)? {
        guard let layout = TransportLayout(frame), Int(o.checksumStart) == layout.l4, layout.l3 + layout.ipLength == frame.count,
            o.segmentSize > 0
        else { return nil }
        switch o.segmentation {
        case .tcpv4?, .tcpv6?:
            guard layout.proto == 6, layout.isIPv6 == (o.segmentation == .tcpv6) else { return nil }
            let headerLength = layout.l4 + Int(frame[layout.l4 + 12] >> 4) * 4
            guard headerLength >= layout.l4 + 20, headerLength <= frame.count else { return nil }
            return (layout, headerLength)
        case .udpL4?:
            guard layout.proto == 17 else { return nil }
            return (layout, layout.l4 + 8)
        default:
            return nil
        }
    }

    // MARK: Checksum completion

    /// Completes the partial checksum of `frame` in place (`o.needsChecksum`, no segmentation,
    /// validated): folds the sum from `checksumStart` to the end into the field, which holds the
    /// pseudo-header sum. A result of 0 is sent as 0xFFFF, as the kernel does
    /// (`skb_checksum_help`), which UDP needs and TCP does not mind.
    public static func completeChecksum(_ frame: UnsafeMutableRawBufferPointer, _ o: FrameOffload) {
        let start = Int(o.checksumStart), field = start + Int(o.checksumOffset)
        guard o.needsChecksum, start < frame.count, field + 2 <= frame.count else { return }
        let p = frame.baseAddress!
        var c = ~InternetChecksum.fold(InternetChecksum.sum(p + start, count: frame.count - start))
        if c == 0 { c = 0xFFFF }
        p.storeBytes(of: c, toByteOffset: field, as: UInt16.self)
    }

    /// What `repairPartialChecksum` found.
    public enum Repair: Equatable, Sendable {
        /// Not a TCP or UDP packet this code parses, or a UDP packet without checksum.
        case notApplicable
        /// The checksum field is not a bare pseudo-header sum: left as it is.
        case untouched
        /// The field held only the pseudo-header sum and the checksum did not verify: completed.
        case completed
    }

    /// Completes the L4 checksum of a frame that arrived *without* offload metadata but whose
    /// checksum field holds just the folded pseudo-header sum: what a same-host Linux VXLAN
    /// device sends when its inner frames were checksum-offloaded and no hardware ever finished
    /// them (the metadata that said so does not cross a UDP socket).
    ///
    /// A frame is changed only if both hold: its checksum field equals the pseudo-header sum
    /// (cheap: no pass over the payload), and its full checksum does not verify (one pass, paid
    /// only by such frames). A complete frame is never changed; a corrupted one is "repaired"
    /// only if corruption also left exactly the pseudo-header sum in its field (odds 2⁻¹⁶ on top
    /// of the Ethernet FCS and the outer UDP checksum).
    public static func repairPartialChecksum(_ frame: UnsafeMutableRawBufferPointer) -> Repair {
        guard let layout = TransportLayout(UnsafeRawBufferPointer(frame)) else { return .notApplicable }
        let p = frame.baseAddress!
        let field = layout.l4 + layout.checksumOffset
        let stored = p.loadUnaligned(fromByteOffset: field, as: UInt16.self)
        if layout.proto == 17, stored == 0 { return .notApplicable }  // UDP over IPv4 without checksum
        let length = layout.l4Length
        let pseudoSum = InternetChecksum.pseudoHeader(p, l3: layout.l3, isIPv6: layout.isIPv6, proto: layout.proto, length: length)
        let pseudo = InternetChecksum.fold(pseudoSum)
        // 0x0000 and 0xFFFF are the same number in one's complement
        guard stored == pseudo || (stored | pseudo == 0xFFFF && stored & pseudo == 0) else { return .untouched }
        // one pass: the sum over the segment as it is (its field holding the pseudo-header sum)
        let sum = InternetChecksum.sum(p + layout.l4, count: length, initial: pseudoSum)
        if InternetChecksum.fold(sum) == 0xFFFF { return .untouched }  // verifies: a complete frame
        // the checksum is computed with a zero field: take `stored` back out of the sum
        // (subtracting is adding the complement, in one's-complement arithmetic)
        var c = ~InternetChecksum.fold(UInt64(InternetChecksum.fold(sum)) + UInt64(~stored))
        if c == 0 { c = 0xFFFF }
        p.storeBytes(of: c, toByteOffset: field, as: UInt16.self)
        return .completed
    }

    /// Whether the L4 checksum of a TCP or UDP frame verifies (`nil`: not such a frame).
    public static func verifiesChecksum(_ frame: UnsafeRawBufferPointer) -> Bool? {
        guard let layout = TransportLayout(frame) else { return nil }
        let p = frame.baseAddress!
        let pseudo = InternetChecksum.pseudoHeader(p, l3: layout.l3, isIPv6: layout.isIPv6, proto: layout.proto, length: layout.l4Length)
        return InternetChecksum.fold(InternetChecksum.sum(p + layout.l4, count: layout.l4Length, initial: pseudo)) == 0xFFFF
    }

    /// The offload state that has `segment` cut a complete TCP frame (one segment, not a
    /// super-frame) into smaller ones: for a frame larger than its path, which TCP lets be sent
    /// as several segments instead of IP fragments. Nil for anything else, and for a frame
    /// whose checksum does not verify (cutting would give its pieces good checksums: it is
    /// left to fail at the receiver as it is).
    public static func tcpCut(of frame: UnsafeRawBufferPointer) -> FrameOffload? {
        guard let layout = TransportLayout(frame), layout.proto == 6, layout.l3 + layout.ipLength == frame.count else { return nil }
        let header = layout.l4 + Int(frame[layout.l4 + 12] >> 4) * 4
        let payload = frame.count - header
        guard header >= layout.l4 + 20, payload >= minimumTCPSegmentSize, payload <= Int(UInt16.max), verifiesChecksum(frame) == true else { return nil }
        return FrameOffload(needsChecksum: false, segmentation: layout.isIPv6 ? .tcpv6 : .tcpv4, segmentSize: UInt16(payload),
                            checksumStart: UInt16(layout.l4), checksumOffset: 16)
    }

    /// Hands `body` the complete frame(s) that `frame` (offload state `o`) stands for, without
    /// touching `frame`: itself if complete; a copy with its checksum completed; or its
    /// segments, as the kernel would cut them. For observers (the mirror) that must show what
    /// a receiver gets. Malformed state: nothing.
    public func complete(_ frame: UnsafeRawBufferPointer, _ o: FrameOffload, _ body: (UnsafeRawBufferPointer) -> Void) {
        if o.isComplete { return body(frame) }
        guard Self.validate(frame, o) == nil else { return }
        if o.isSegmentation {
            _ = segment(frame, o, maximumFrameLength: capacity, body)
        } else if frame.count <= capacity {
            let copy = UnsafeMutableRawBufferPointer(start: scratch, count: frame.count)
            copy.copyMemory(from: frame)
            Self.completeChecksum(copy, o)
            body(UnsafeRawBufferPointer(copy))
        }
    }

    // MARK: Segmentation

    /// Cuts the validated super-frame `frame` (offload state `o`) into segments of at most
    /// `maximumFrameLength` bytes and calls `body` with each, in order. TCP segments carry
    /// `segmentSize` payload bytes, fewer if the egress needs it (TCP allows any segment size);
    /// UDP segments are datagrams and cannot shrink: if they do not fit, nothing is sent
    /// (`.tooLarge`). Returns the number of segments.
    public func segment(
        _ frame: UnsafeRawBufferPointer, _ o: FrameOffload, maximumFrameLength: Int, _ body: (UnsafeRawBufferPointer) -> Void
    ) -> Result<Int, Failure> {
        let out = scratch
        return segment(frame, o, maximumFrameLength: maximumFrameLength, into: { _ in out }, body)
    }

    /// `segment`, building each segment where `destination` says (it is given the segment's
    /// length and returns room for that many bytes): straight into a send slot, say, instead
    /// of the scratch buffer and a copy from there (one copy of every byte fewer for remotes).
    public func segment(
        _ frame: UnsafeRawBufferPointer, _ o: FrameOffload, maximumFrameLength: Int, into destination: (Int) -> UnsafeMutableRawPointer,
        _ body: (UnsafeRawBufferPointer) -> Void
    ) -> Result<Int, Failure> {
        guard let segmentation = o.segmentation, segmentation != .udpFragmentation else { return .failure(.unsupported) }
        guard let (layout, headerLength) = Self.superFrameLayout(frame, o) else { return .failure(.malformed) }
        let limit = min(maximumFrameLength, capacity)
        let isTCP = layout.proto == 6
        var size = Int(o.segmentSize)
        if headerLength + size > limit {
            guard isTCP, limit > headerLength else { return .failure(.tooLarge) }
            size = limit - headerLength
        }
        let p = frame.baseAddress!
        let payload = frame.count - headerLength
        let count = max(1, (payload + size - 1) / size)
        let sequence = UInt32(bigEndian: p.loadUnaligned(fromByteOffset: layout.l4 + 4, as: UInt32.self))
        let identification = layout.isIPv6 ? 0 : UInt16(bigEndian: p.loadUnaligned(fromByteOffset: layout.l3 + 4, as: UInt16.self))
        let tcpFlags = isTCP ? p.load(fromByteOffset: layout.l4 + 13, as: UInt8.self) : 0
        let field = layout.l4 + layout.checksumOffset
        for i in 0..<count {
            let offset = i * size
            let chunk = min(size, payload - offset)
            let length = headerLength + chunk
            let out = destination(length)
            out.copyMemory(from: p, byteCount: headerLength)
            (out + headerLength).copyMemory(from: p + headerLength + offset, byteCount: chunk)
            if layout.isIPv6 {
                out.storeBytes(of: UInt16(length - layout.l3 - 40).bigEndian, toByteOffset: layout.l3 + 4, as: UInt16.self)
            } else {
                let ihl = layout.l4 - layout.l3
                out.storeBytes(of: UInt16(length - layout.l3).bigEndian, toByteOffset: layout.l3 + 2, as: UInt16.self)
                out.storeBytes(of: (identification &+ UInt16(truncatingIfNeeded: i)).bigEndian, toByteOffset: layout.l3 + 4, as: UInt16.self)
                out.storeBytes(of: UInt16(0), toByteOffset: layout.l3 + 10, as: UInt16.self)
                out.storeBytes(of: ~InternetChecksum.fold(InternetChecksum.sum(out + layout.l3, count: ihl)), toByteOffset: layout.l3 + 10, as: UInt16.self)
            }
            if isTCP {
                out.storeBytes(of: (sequence &+ UInt32(truncatingIfNeeded: offset)).bigEndian, toByteOffset: layout.l4 + 4, as: UInt32.self)
                var flags = tcpFlags
                if i < count - 1 { flags &= ~0x09 }  // FIN and PSH: only on the last segment
                if i > 0 { flags &= ~0x80 }  // CWR: only on the first
                out.storeBytes(of: flags, toByteOffset: layout.l4 + 13, as: UInt8.self)
            } else {
                out.storeBytes(of: UInt16(length - layout.l4).bigEndian, toByteOffset: layout.l4 + 4, as: UInt16.self)
            }
            let l4Length = length - layout.l4
            out.storeBytes(of: UInt16(0), toByteOffset: field, as: UInt16.self)
            let pseudo = InternetChecksum.pseudoHeader(out, l3: layout.l3, isIPv6: layout.isIPv6, proto: layout.proto, length: l4Length)
            var c = ~InternetChecksum.fold(InternetChecksum.sum(out + layout.l4, count: l4Length, initial: pseudo))
            if c == 0, !isTCP { c = 0xFFFF }
            out.storeBytes(of: c, toByteOffset: field, as: UInt16.self)
            body(UnsafeRawBufferPointer(start: out, count: length))
        }
        return .success(count)
    }
}
