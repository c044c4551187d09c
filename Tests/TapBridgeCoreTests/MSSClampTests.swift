import TapBridgeCore
import TapBridgeTestSupport
import Testing

/// The MSS clamp on golden frames: each "before" was built with scapy, each "after" is scapy's
/// own frame with the MSS option changed and the checksum computed again from scratch, so the
/// clamp's incremental checksum update is checked against an independent implementation.
/// The limit is a remote's path: inner frames of at most 1464 bytes (VXLAN over a 1500-byte
/// IPv4 underlay).
@Suite("MSS clamp")
struct MSSClampTests {
    static let limit = 1464

    /// name: (before, after, the MSS after)
    static let golden: [String: (String, String, Int)] = [
        // IPv4 SYN, MSS 1460 first among Linux's usual options: 1464 - 14 - 20 - 20 = 1410
        "ipv4": ("02000000000202000000000108004500003c00070000400666b30a0000010a0000029c401451000003e800000000a002faf084920000020405b40402080a000000010000000001030307",
                 "02000000000202000000000108004500003c00070000400666b30a0000010a0000029c401451000003e800000000a002faf084c40000020405820402080a000000010000000001030307", 1410),
        // a SYN-ACK whose MSS option sits after a NOP: its value at an odd offset of the header
        "ipv4-odd-offset": ("02000000000202000000000108004500003000070000400666bf0a0000010a0000029c401451000003e8000000057012faf0124f000001020405b4010101",
                            "02000000000202000000000108004500003000070000400666bf0a0000010a0000029c401451000003e8000000057012faf0444f00000102040582010101", 1410),
        // IPv6: 1464 - 14 - 40 - 20 = 1390
        "ipv6": ("02000000000202000000000186dd6000000000280640fd770000000000000000000000000001fd7700000000000000000000000000029c401451000003e800000000a002fd209b860000020405a00402080a000000010000000001030307",
                 "02000000000202000000000186dd6000000000280640fd770000000000000000000000000001fd7700000000000000000000000000029c401451000003e800000000a002fd209bb800000204056e0402080a000000010000000001030307", 1390),
        // an 802.1Q tag takes 4 bytes of the frame: 1464 - 18 - 20 - 20 = 1406
        "vlan": ("0200000000020200000000018100000a08004500002c00070000400666c30a0000010a0000029c401451000003e8000000006002faf0d4b90000020405b4",
                 "0200000000020200000000018100000a08004500002c00070000400666c30a0000010a0000029c401451000003e8000000006002faf0d4ef00000204057e", 1406),
    ]

    static func clamp(_ frame: [UInt8], limit: Int = limit) -> ([UInt8], Bool) {
        var f = frame
        let changed = f.withUnsafeMutableBytes { MSSClamp.clamp($0, maximumFrameLength: limit) }
        return (f, changed)
    }

    @Test(arguments: ["ipv4", "ipv4-odd-offset", "ipv6", "vlan"])
    func aSYNsMSSIsLoweredToWhatFitsAndItsChecksumStaysRight(_ name: String) {
        let (before, after, mss) = Self.golden[name]!
        let (got, changed) = Self.clamp(FrameFactory.bytes(hex: before))
        let want = FrameFactory.bytes(hex: after)
        #expect(changed, "\(name): not clamped")
        #expect(got == want, "\(name): got \(hexString(got)), want \(hexString(want)) (MSS \(mss))")
        #expect(got.withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true, "\(name): the checksum does not verify")
    }

    @Test func anMSSThatFitsIsLeftAlone() {
        let (before, _, _) = Self.golden["ipv4"]!
        let frame = FrameFactory.bytes(hex: before)
        // a 1514-byte limit fits MSS 1460 exactly
        let (got, changed) = Self.clamp(frame, limit: 1514)
        #expect(!changed && got == frame)
    }

    @Test func aSegmentWithoutSYNIsLeftAlone() {
        var frame = FrameFactory.bytes(hex: Self.golden["ipv4"]!.0)
        frame[47] = 0x10  // ACK only (the checksum no longer matters: the frame must not change)
        let (got, changed) = Self.clamp(frame)
        #expect(!changed && got == frame)
    }

    @Test func framesThatAreNotTCPAreLeftAlone() {
        var udp = FrameFactory.bytes(hex: Self.golden["ipv4"]!.0)
        udp[23] = 17
        let arp = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1), etherType: 0x0806)
        for frame in [udp, arp, Array(udp.prefix(40))] {
            let (got, changed) = Self.clamp(frame)
            #expect(!changed && got == frame, "got \(hexString(got)), want it unchanged")
        }
    }

    /// Options that run past the header (a malformed length) stop the walk; nothing is written.
    @Test func malformedOptionsAreLeftAlone() {
        var frame = FrameFactory.bytes(hex: Self.golden["vlan"]!.0)
        frame[frame.count - 3] = 9  // the MSS option claims 9 bytes in a 4-byte space
        let (got, changed) = Self.clamp(frame)
        #expect(!changed && got == frame)
    }
}
