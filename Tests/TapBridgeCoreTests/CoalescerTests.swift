import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// Receive coalescing (`SegmentCoalescer`): segments of the golden super-frames merge back into
/// the super-frame, byte for byte, and cut back into the same segments; anything that would not
/// round-trip does not merge.
@Suite("Offloads: coalescing TCP segments")
struct CoalescerTests {
    /// A golden super-frame, without CWR (a CWR frame never starts a merge).
    static func superFrame(_ name: String) -> (frame: [UInt8], offload: FrameOffload) {
        var (frame, offload, _) = OffloadTests.superFrame(name)
        frame[Int(offload.checksumStart) + 13] &= ~0x80
        return (frame, offload)
    }

    /// Its segments, as `OffloadFinisher` (checked against the kernel elsewhere) cuts them.
    static func segments(_ name: String, size: Int = 1518) -> [[UInt8]] {
        let (frame, offload) = superFrame(name)
        return try! OffloadTests.segment(frame, offload, maximumFrameLength: size).get()
    }

    /// Coalesces `segments` in one buffer as a train would arrive: returns each frame built.
    static func coalesce(_ segments: [[UInt8]]) -> [(frame: [UInt8], offload: FrameOffload)] {
        let capacity = 70_000
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity * 2, alignment: 8)
        defer { buffer.deallocate() }
        // the train lies behind the frame being built, as in the receive buffer
        var at = capacity
        var positions: [(Int, Int)] = []
        for s in segments {
            s.withUnsafeBytes { (buffer + at).copyMemory(from: $0.baseAddress!, byteCount: s.count) }
            positions.append((at, s.count))
            at += s.count
        }
        var out: [(frame: [UInt8], offload: FrameOffload)] = []
        var c = SegmentCoalescer()
        var started = false
        for (position, count) in positions {
            if started, c.append(UnsafeRawBufferPointer(start: buffer + position, count: count)) { continue }
            if started {
                let (length, offload) = c.end()
                out.append((Array(UnsafeRawBufferPointer(start: buffer, count: length)), offload))
            }
            buffer.copyMemory(from: buffer + position, byteCount: count)
            c.begin(buffer, length: count, capacity: capacity)
            started = true
        }
        if started {
            let (length, offload) = c.end()
            out.append((Array(UnsafeRawBufferPointer(start: buffer, count: length)), offload))
        }
        return out
    }

    @Test(arguments: ["tcp4Options", "tcp6", "tcp4Tagged"])
    func segmentsMergeBackIntoTheSuperFrameAndCutIntoTheSameSegments(_ name: String) throws {
        let (original, offload) = Self.superFrame(name)
        let segments = Self.segments(name)
        #expect(segments.count > 1)
        let merged = Self.coalesce(segments)
        try #require(merged.count == 1)
        #expect(merged[0].offload == offload)
        // the same bytes but the checksum field, which holds the pseudo-header sum
        var masked = merged[0].frame
        let field = Int(offload.checksumStart) + 16
        let layout = masked.withUnsafeBytes { TransportLayout($0)! }
        let pseudo = Self.pseudoHeaderSum(masked, layout)
        #expect(UInt32(masked[field]) << 8 | UInt32(masked[field + 1]) == pseudo)
        masked[field] = original[field]
        masked[field + 1] = original[field + 1]
        #expect(masked.count == original.count)
        #expect(masked == original, "the merged frame is the super-frame the segments were cut from")
        let again = try OffloadTests.segment(merged[0].frame, merged[0].offload).get()
        #expect(again.count == segments.count)
        #expect(again == segments, "segment(coalesce(x)) == x")
    }

    @Test func theFirstSegmentAloneIsLeftUntouched() {
        let segments = Self.segments("tcp6")
        let merged = Self.coalesce([segments[0]])
        #expect(merged.count == 1)
        #expect(merged[0].frame == segments[0], "unchanged")
        #expect(merged[0].offload == .none)
    }

    /// Cuts `name` into segments, changes segment `index` with `mutate`, and returns the frames
    /// the coalescer makes of them.
    static func mutated(_ name: String, _ index: Int, fixChecksum: Bool = true, _ mutate: (inout [UInt8], TransportLayout) -> Void) -> [(frame: [UInt8], offload: FrameOffload)] {
        var segments = Self.segments(name)
        let layout = segments[index].withUnsafeBytes { TransportLayout($0)! }
        mutate(&segments[index], layout)
        if fixChecksum {
            let l4 = layout.l4
            segments[index][l4 + 16] = 0
            segments[index][l4 + 17] = 0
            let o = FrameOffload(needsChecksum: true, segmentation: FrameOffload.Segmentation.none, checksumStart: UInt16(l4), checksumOffset: 16)
            // the field must hold the pseudo-header sum for completion
            let pseudo = pseudoHeaderSum(segments[index], layout)
            segments[index][l4 + 16] = UInt8(pseudo >> 8)
            segments[index][l4 + 17] = UInt8(pseudo & 0xFF)
            segments[index].withUnsafeMutableBytes { OffloadFinisher.completeChecksum($0, o) }
            if !layout.isIPv6 {
                segments[index][layout.l3 + 10] = 0
                segments[index][layout.l3 + 11] = 0
                let c = ~OffloadTests.referenceSum(segments[index][layout.l3..<layout.l4]) & 0xFFFF
                segments[index][layout.l3 + 10] = UInt8(c >> 8)
                segments[index][layout.l3 + 11] = UInt8(c & 0xFF)
            }
        }
        return Self.coalesce(segments)
    }

    static func pseudoHeaderSum(_ f: [UInt8], _ l: TransportLayout) -> UInt32 {
        var s: UInt32 = 0
        let addresses = l.isIPv6 ? f[(l.l3 + 8)..<(l.l3 + 40)] : f[(l.l3 + 12)..<(l.l3 + 20)]
        s += OffloadTests.referenceSum(addresses)
        s += UInt32(l.proto) + UInt32(l.l4Length)
        while s > 0xFFFF { s = (s & 0xFFFF) + (s >> 16) }
        return s
    }

    /// What must not merge: each case changes the second segment of a three-segment train, so
    /// the train splits where the rules say (first, then second and third or second alone).
    @Test func segmentsThatWouldNotRoundTripDoNotMerge() {
        func frames(_ r: [(frame: [UInt8], offload: FrameOffload)]) -> Int { r.count }
        // a corrupted payload byte (checksum not fixed): never merged, and nothing after it
        #expect(frames(Self.mutated("tcp6", 1, fixChecksum: false) { f, _ in f[f.count - 1] ^= 1 }) == 3)
        // a sequence gap
        #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l4 + 7] &+= 1 }) >= 2)
        // another ACK
        #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l4 + 11] &+= 1 }) >= 2)
        // another window
        #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l4 + 15] &+= 1 }) >= 2)
        // other options
        #expect(frames(Self.mutated("tcp4Options", 1) { f, l in f[l.l4 + 27] &+= 1 }) >= 2)
        // CWR after the first segment
        #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l4 + 13] |= 0x80 }) >= 2)
        // SYN, RST, URG
        for flag: UInt8 in [0x02, 0x04, 0x20] {
            #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l4 + 13] |= flag }) >= 2)
        }
        // another port, another address, another hop limit / TTL, another VLAN
        #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l4 + 1] &+= 1 }) >= 2)
        #expect(frames(Self.mutated("tcp6", 1) { f, l in f[l.l3 + 39] &+= 1 }) >= 2)
        #expect(frames(Self.mutated("tcp4Options", 1) { f, l in f[l.l3 + 8] &+= 1 }) >= 2)
        #expect(frames(Self.mutated("tcp4Tagged", 1) { f, _ in f[15] &+= 1 }) >= 2)
        // an IPv4 ID that does not follow on
        #expect(frames(Self.mutated("tcp4Options", 1) { f, l in f[l.l3 + 5] &+= 1 }) >= 2)
        // another destination MAC
        #expect(frames(Self.mutated("tcp6", 1) { f, _ in f[5] ^= 1 }) >= 2)
    }

    @Test func aShortOrPushedSegmentClosesTheFrame() {
        // tcp6: segments of 1000, 1000, 100 bytes; PSH only on the last
        let segments = Self.segments("tcp6")
        #expect(Self.coalesce(segments + segments).count == 2, "nothing merges after the short last segment")
        // PSH on the first: it does not start a merge
        var pushed = segments
        let l4 = pushed[0].withUnsafeBytes { TransportLayout($0)!.l4 }
        pushed[0][l4 + 13] |= 0x08
        #expect(Self.coalesce(pushed).count >= 2)
        // a longer segment after a shorter one does not merge
        let small = Self.segments("tcp6", size: 1518).map { $0 }
        #expect(Self.coalesce([small[2], small[1]]).count == 2)
    }

    @Test func framesThatAreNotTCPDataPassUnchanged() {
        let udp = try! OffloadTests.segment(OffloadTests.superFrame("udp4").frame, OffloadTests.superFrame("udp4").offload).get()
        let merged = Self.coalesce(udp)
        #expect(merged.count == udp.count)
        #expect(merged.map(\.frame) == udp)
        #expect(merged.allSatisfy { $0.offload == .none })
    }
}
