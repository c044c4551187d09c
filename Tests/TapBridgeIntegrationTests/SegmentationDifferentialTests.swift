import CTapBridge
import Foundation
import TapBridgeCore
import Testing

extension KernelTests {
/// The kernel as the reference segmenter: a super-frame sent with a virtio-net header through a
/// packet socket on a TAP opened without offloads is cut by the kernel's own GSO
/// (`validate_xmit_skb` → `skb_gso_segment`) and checksummed (`skb_checksum_help`) before the
/// TAP queues it; reading the TAP's descriptor gives the kernel's segments, which must equal
/// tapbridge's byte for byte.
/// ```
///  this test ── packet socket + PACKET_VNET_HDR ──► TAP (no IFF_VNET_HDR) ──► kernel GSO ──► TAP fd ──► segments
///            └─ OffloadFinisher.segment ───────────────────────────────────────────────────► segments   (==)
/// ```
@Suite("Segmentation: the kernel as reference")
struct SegmentationDifferentialTests {
    /// Super-frame headers (the same as the core tests' golden vectors); payload byte k is k % 251.
    static let superFrames: [(name: String, header: String, type: FrameOffload.Segmentation)] = [
        ("tcp4Options", "0200000000020200000000010800450009f81234400040060aca0a0000010a0000029c401451fffff000000000078099020045bd00000101080a000003e8000007d0", .tcpv4),
        ("tcp6", "02000000000202000000000186dd6000000008480640fd000000000000000000000000000001fd0000000000000000000000000000029c411451fffff0000000000950180200c4830000", .tcpv6),
        ("tcp4Tagged", "0200000000020200000000018100000a080045000604ffff0000400660f20a0000010a0000029c421451fffff0000000000b50180200bd1b0000", .tcpv4),
        ("udp4", "0200000000020200000000010800450009e00064000040115ca70a0000010a0000029c43145109ccc35f", .udpL4),
    ]

    static func bytes(hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            let j = hex.index(i, offsetBy: 2)
            out.append(UInt8(hex[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    static func sum(_ b: ArraySlice<UInt8>) -> UInt32 {
        var s: UInt32 = 0
        var i = b.startIndex
        while i < b.endIndex {
            s += UInt32(b[i]) << 8 | (i + 1 < b.endIndex ? UInt32(b[i + 1]) : 0)
            i += 2
        }
        while s > 0xFFFF { s = (s & 0xFFFF) + (s >> 16) }
        return s
    }

    /// The super-frame with its L4 checksum field holding the folded pseudo-header sum, as the
    /// kernel leaves it for hardware, and its offload state.
    static func superFrame(_ header: String, _ type: FrameOffload.Segmentation, segmentSize: Int) -> ([UInt8], FrameOffload) {
        var f = bytes(hex: header)
        let l3 = f[12] == 0x81 ? 18 : 14
        let v6 = f[l3] >> 4 == 6
        let ipLength = v6 ? 40 + (Int(f[l3 + 4]) << 8 | Int(f[l3 + 5])) : Int(f[l3 + 2]) << 8 | Int(f[l3 + 3])
        f += (0..<(l3 + ipLength - f.count)).map { UInt8($0 % 251) }
        let l4 = l3 + (v6 ? 40 : Int(f[l3] & 0x0F) * 4)
        let field = l4 + (type == .udpL4 ? 6 : 16)
        var pseudo = sum(v6 ? f[(l3 + 8)..<(l3 + 40)] : f[(l3 + 12)..<(l3 + 20)]) + UInt32(v6 ? f[l3 + 6] : f[l3 + 9]) + UInt32(f.count - l4)
        while pseudo > 0xFFFF { pseudo = (pseudo & 0xFFFF) + (pseudo >> 16) }
        f[field] = UInt8(pseudo >> 8)
        f[field + 1] = UInt8(pseudo & 0xFF)
        return (f, FrameOffload(needsChecksum: true, segmentation: type, segmentSize: UInt16(segmentSize), checksumStart: UInt16(l4),
                                checksumOffset: type == .udpL4 ? 6 : 16))
    }

    @Test(arguments: [1000, 1448, 536])
    func tapbridgeCutsSuperFramesExactlyAsTheKernelDoes(_ segmentSize: Int) throws {
        let lab = Lab()
        let tap = lab.link("g")
        let tfd = ctb_tap_open(tap, 0)
        try #require(tfd >= 0, "cannot open TAP \(tap): \(tfd)")
        defer { close(tfd) }
        #expect(ctb_if_set_up(tap) == 0)
        let index = ctb_if_index(tap)
        let pfd = ctb_packet_open(index)
        try #require(pfd >= 0, "cannot open a packet socket on \(tap): \(pfd)")
        defer { close(pfd) }
        let finisher = OffloadFinisher()
        var buffer = [UInt8](repeating: 0, count: 70_000)
        for (name, header, type) in Self.superFrames {
            let (frame, offload) = Self.superFrame(header, type, segmentSize: segmentSize)
            var ours: [[UInt8]] = []
            let result = frame.withUnsafeBytes { finisher.segment($0, offload, maximumFrameLength: 65_535) { ours.append(Array($0)) } }
            #expect((try? result.get()) == ours.count)
            // drain whatever the TAP queued before (the kernel's own frames)
            while read(tfd, &buffer, buffer.count) > 0 {}
            var vnet = [UInt8](repeating: 0, count: 10)
            vnet.withUnsafeMutableBytes { offload.writeVirtioHeader(to: $0, headerLength: 0) }
            let sent = frame.withUnsafeBytes { ctb_packet_send(pfd, vnet, $0.baseAddress, $0.count) }
            try #require(sent >= 0, "\(name): the kernel refused the super-frame: \(sent)")
            var kernels: [[UInt8]] = []
            let deadline = Date().addingTimeInterval(2)
            while kernels.count < ours.count, Date() < deadline {
                let n = read(tfd, &buffer, buffer.count)
                if n <= 0 { usleep(1000); continue }
                // only our frames (source 02:00:00:00:00:01), not the kernel's own
                if buffer[6..<12].elementsEqual([2, 0, 0, 0, 0, 1]) { kernels.append(Array(buffer[0..<n])) }
            }
            #expect(kernels.count == ours.count, "\(name), size \(segmentSize): kernel made \(kernels.count) segments, tapbridge \(ours.count)")
            for (i, (k, o)) in zip(kernels, ours).enumerated() {
                let same = k == o
                let firstDifference = zip(k, o).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(k.count, o.count)
                #expect(same, "\(name), size \(segmentSize), segment \(i): differs from the kernel's at byte \(firstDifference) (lengths \(k.count), \(o.count)); kernel \(k.prefix(80).map { String(format: "%02x", $0) }.joined()), ours \(o.prefix(80).map { String(format: "%02x", $0) }.joined())")
            }
        }
    }
}
}
