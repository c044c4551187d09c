import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// No frame may cost the switch work out of proportion to its bytes: a super-frame with a
/// segment size no real stack uses is refused at ingress, and what a batch may turn into on
/// the wire is bounded, so the other ports keep their share.
@Suite("Costs in proportion to input")
struct CostTests {
    /// `tcp4Options` (about 2.5 KB of payload) with segment size `size`.
    static func tcpSuperFrame(segmentSize size: UInt16) -> ([UInt8], FrameOffload) {
        var (frame, offload, _) = OffloadTests.superFrame("tcp4Options")
        offload.segmentSize = size
        return (frame, offload)
    }

    @Test(arguments: [UInt16(1), 2, 47])
    func aTCPSuperFrameWithATinySegmentSizeIsRefusedAtIngress(_ size: UInt16) {
        let lan = VirtualLAN(ports: 3)
        let (frame, offload) = Self.tcpSuperFrame(segmentSize: size)
        lan.inject(frame, on: 0, offload: offload)
        let handled = lan.runUntilIdle()
        let sent = lan.transmitted(on: 1).count + lan.transmitted(on: 2).count
        #expect(sent == 0, "got \(sent) segments sent for gso_size \(size), want 0")
        #expect(lan.counters(0)[.offloadTinySegments] == 1, "got \(lan.counters(0)[.offloadTinySegments]) offload_tiny_segments, want 1")
        #expect(handled == 1, "got \(handled) units of work, want 1")
    }

    @Test func theSmallestSegmentSizeARealStackUsesIsSegmentedAndChargedAsItsSegments() throws {
        let lan = VirtualLAN(ports: 2)
        let (frame, offload) = Self.tcpSuperFrame(segmentSize: UInt16(OffloadFinisher.minimumTCPSegmentSize))
        let payload = frame.count - 66  // Ethernet 14 + IPv4 20 + TCP 32
        let want = (payload + 47) / 48
        lan.inject(frame, on: 0, offload: offload)
        let handled = try lan.engine.service(lan.devices[0], at: lan.clock.now)
        let got = lan.transmitted(on: 1)
        #expect(got.count == want, "got \(got.count) segments, want \(want)")
        #expect(got.allSatisfy { $0.count <= 66 + 48 })
        // one frame received, `want` segments cut: the device's budget is charged for both
        #expect(handled == 1 + want, "got \(handled) units charged, want \(1 + want)")
        #expect(lan.counters(0)[.offloadTinySegments] == 0)
    }

    @Test func aUDPSuperFrameOfMoreSegmentsThanTheKernelSendsIsRefused() {
        var (frame, offload, _) = OffloadTests.superFrame("udp4")
        let payload = frame.count - 42
        offload.segmentSize = UInt16((payload + OffloadFinisher.maximumUDPSegments - 1) / OffloadFinisher.maximumUDPSegments)
        #expect(frame.withUnsafeBytes { OffloadFinisher.validate($0, offload) } == nil, "\(OffloadFinisher.maximumUDPSegments) segments must pass")
        offload.segmentSize -= 1
        #expect(frame.withUnsafeBytes { OffloadFinisher.validate($0, offload) } == .tinySegments)
    }

    @Test func aBatchIsFullOnceItsFramesMayBecomeTooManySegments() {
        let batch = FrameBatch(capacity: 64, frameCapacity: 65_557, headroom: 64)
        let tiny = FrameOffload(needsChecksum: true, segmentation: .tcpv4, segmentSize: 1, checksumStart: 34, checksumOffset: 16)
        // a 64 KiB frame counts at the smallest segment size taken, whatever its header claims
        batch.commit(length: 65_000, from: PortID(0), offload: tiny)
        #expect(batch.work == (65_000 + 47) / 48 && !batch.isFull)
        batch.commit(length: 65_000, from: PortID(0), offload: tiny)
        #expect(batch.isFull && batch.remaining == 0, "got work \(batch.work) of \(batch.workLimit), want a full batch after two frames")
        batch.reset()
        // legitimate super-frames (MSS 1448) and plain frames fill the slots first
        let legit = FrameOffload(needsChecksum: true, segmentation: .tcpv4, segmentSize: 1448, checksumStart: 34, checksumOffset: 16)
        for _ in 0..<40 { batch.commit(length: 65_000, from: PortID(0), offload: legit) }
        #expect(!batch.isFull, "got work \(batch.work): 40 ordinary super-frames must fit one batch")
        for _ in 0..<24 { batch.commit(length: 1500, from: PortID(0)) }
        #expect(batch.isFull && batch.used == 64)
    }

    @Test func theCoalescerNeverBuildsASuperFrameOfTinySegments() throws {
        let (frame, golden) = CoalescerTests.superFrame("tcp4Options")
        var offload = golden
        for (size, wantFrames) in [(47, -1), (48, 1)] {
            offload.segmentSize = UInt16(size)
            let segments = try OffloadTests.segment(frame, offload, maximumFrameLength: 1518).get()
            let built = CoalescerTests.coalesce(segments)
            let want = wantFrames < 0 ? segments.count : wantFrames
            #expect(built.count == want, "segments of \(size) bytes: got \(built.count) frames, want \(want)")
        }
    }
}
