import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// Checksum completion and software segmentation against golden vectors.
///
/// The vectors come from scapy (`Tests/Peers/offload_vectors.py`), which builds each segment
/// the kernel's GSO would make of a super-frame and computes its checksums itself, so they do
/// not share code with tapbridge. Only headers are stored as hex; payload byte k of a
/// super-frame is k % 251, and each segment carries its slice of that pattern.
@Suite("Offloads: checksums and segmentation")
struct OffloadTests {
    /// name: (super-frame headers, expected segment headers). Segment size 1000 for all.
    static let vectors: [String: (String, [String])] = [
        "tcp4Options": (
            "0200000000020200000000010800450009f81234400040060aca0a0000010a0000029c401451fffff000000000078099020045bd00000101080a000003e8000007d0",
            [
                "02000000000202000000000108004500041c12344000400610a60a0000010a0000029c401451fffff00000000007809002008de100000101080a000003e8000007d0",
                "02000000000202000000000108004500041c12354000400610a50a0000010a0000029c401451fffff3e80000000780100200827100000101080a000003e8000007d0",
                "02000000000202000000000108004500022812364000400612980a0000010a0000029c401451fffff7d00000000780190200928500000101080a000003e8000007d0",
            ]),
        "tcp6": (
            "02000000000202000000000186dd6000000008480640fd000000000000000000000000000001fd0000000000000000000000000000029c411451fffff0000000000950180200c4830000",
            [
                "02000000000202000000000186dd6000000003fc0640fd000000000000000000000000000001fd0000000000000000000000000000029c411451fffff0000000000950100200ed2b0000",
                "02000000000202000000000186dd6000000003fc0640fd000000000000000000000000000001fd0000000000000000000000000000029c411451fffff3e80000000950100200e13b0000",
                "02000000000202000000000186dd6000000000780640fd000000000000000000000000000001fd0000000000000000000000000000029c411451fffff7d0000000095018020010cc0000",
            ]),
        "tcp4Tagged": (
            "0200000000020200000000018100000a080045000604ffff0000400660f20a0000010a0000029c421451fffff0000000000b50180200bd1b0000",
            [
                "0200000000020200000000018100000a080045000410ffff0000400662e60a0000010a0000029c421451fffff0000000000b50100200d32a0000",
                "0200000000020200000000018100000a08004500021c00000000400664da0a0000010a0000029c421451fffff3e80000000b50180200df3b0000",
            ]),
        "udp4": (
            "0200000000020200000000010800450009e00064000040115ca70a0000010a0000029c43145109ccc35f",
            [
                "02000000000202000000000108004500040400640000401162830a0000010a0000029c43145103f01157",
                "02000000000202000000000108004500040400650000401162820a0000010a0000029c43145103f0094f",
                "02000000000202000000000108004500021000660000401164750a0000010a0000029c43145101fc1f48",
            ]),
    ]

    static func payload(_ count: Int, from start: Int = 0) -> [UInt8] { (0..<count).map { UInt8((start + $0) % 251) } }

    /// The super-frame of vector `name` and its offload state as a packet socket reports it.
    static func superFrame(_ name: String) -> (frame: [UInt8], offload: FrameOffload, payload: Int) {
        let (header, segments) = vectors[name]!
        let h = FrameFactory.bytes(hex: header)
        _ = segments
        // payload length from the IP length field of the super-frame header
        var frame = h
        let isTagged = h[12] == 0x81
        let l3 = isTagged ? 18 : 14
        let isIPv6 = h[l3] >> 4 == 6
        let ipLength = isIPv6 ? 40 + (Int(h[l3 + 4]) << 8 | Int(h[l3 + 5])) : (Int(h[l3 + 2]) << 8 | Int(h[l3 + 3]))
        let payload = l3 + ipLength - h.count
        frame += Self.payload(payload)
        let proto = isIPv6 ? h[l3 + 6] : h[l3 + 9]
        let l4 = l3 + (isIPv6 ? 40 : Int(h[l3] & 0x0F) * 4)
        let segmentation: FrameOffload.Segmentation = proto == 17 ? .udpL4 : (isIPv6 ? .tcpv6 : .tcpv4)
        let offload = FrameOffload(needsChecksum: true, segmentation: segmentation, segmentSize: 1000, checksumStart: UInt16(l4),
                                   checksumOffset: proto == 17 ? 6 : 16)
        return (frame, offload, payload)
    }

    /// The expected segments of vector `name`.
    static func expectedSegments(_ name: String) -> [[UInt8]] {
        let segments = vectors[name]!.1
        let (_, _, payload) = superFrame(name)
        return segments.enumerated().map { i, hex in
            FrameFactory.bytes(hex: hex) + Self.payload(min(1000, payload - i * 1000), from: i * 1000)
        }
    }

    static func segment(_ frame: [UInt8], _ offload: FrameOffload, maximumFrameLength: Int = 1518) -> Result<[[UInt8]], OffloadFinisher.Failure> {
        let finisher = OffloadFinisher()
        var out: [[UInt8]] = []
        let r = frame.withUnsafeBytes { finisher.segment($0, offload, maximumFrameLength: maximumFrameLength) { out.append(Array($0)) } }
        return r.map { _ in out }
    }

    /// RFC 1071 the slow way: big-endian 16-bit words, one at a time.
    static func referenceSum(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        var s: UInt32 = 0
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let hi = UInt32(bytes[i]), lo = i + 1 < bytes.endIndex ? UInt32(bytes[i + 1]) : 0
            s += hi << 8 | lo
            i += 2
        }
        while s > 0xFFFF { s = (s & 0xFFFF) + (s >> 16) }
        return s
    }

    @Test(arguments: ["tcp4Options", "tcp6", "tcp4Tagged", "udp4"])
    func segmentsMatchTheGoldenVectors(_ name: String) throws {
        let (frame, offload, _) = Self.superFrame(name)
        #expect(frame.withUnsafeBytes { OffloadFinisher.validate($0, offload) } == nil)
        let got = try Self.segment(frame, offload).get()
        let want = Self.expectedSegments(name)
        #expect(got.count == want.count, "\(name): got \(got.count) segments, want \(want.count)")
        for (i, (g, w)) in zip(got, want).enumerated() {
            let headerLength = FrameFactory.bytes(hex: Self.vectors[name]!.1[i]).count
            let same = g == w  // a Bool, so a failure prints the message, not kilobytes of payload
            #expect(same, "\(name) segment \(i): got header \(g.prefix(headerLength).hex), want \(w.prefix(headerLength).hex)")
        }
    }

    @Test func tcpSegmentsShrinkToFitASmallerEgressAndStillCarryEveryByte() throws {
        let (frame, offload, payload) = Self.superFrame("tcp4Options")
        let got = try Self.segment(frame, offload, maximumFrameLength: 600).get()
        let headerLength = 14 + 20 + 32
        #expect(got.allSatisfy { $0.count <= 600 }, "segment sizes \(got.map(\.count)), want <= 600")
        #expect(got.count == (payload + 533) / 534, "got \(got.count) segments")
        var joined: [UInt8] = []
        var sequence = UInt32(0xFFFF_F000)
        for s in got {
            #expect(s.withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true)
            #expect(Self.referenceSum(s[14..<34]) == 0xFFFF, "IPv4 header checksum")
            let seq = UInt32(s[38]) << 24 | UInt32(s[39]) << 16 | UInt32(s[40]) << 8 | UInt32(s[41])
            #expect(seq == sequence, "got sequence \(seq), want \(sequence)")
            sequence &+= UInt32(s.count - headerLength)
            joined += s[headerLength...]
        }
        let complete = joined == Self.payload(payload)
        #expect(complete, "the segments' payloads do not add up to the super-frame's")
        #expect(got.first![47] & 0x80 != 0 && got.dropFirst().allSatisfy { $0[47] & 0x80 == 0 }, "CWR only on the first")
        #expect(got.last![47] & 0x09 == 0x09 && got.dropLast().allSatisfy { $0[47] & 0x09 == 0 }, "FIN and PSH only on the last")
    }

    @Test func udpSegmentsThatDoNotFitAreRefusedWhole() {
        let (frame, offload, _) = Self.superFrame("udp4")
        #expect(throws: OffloadFinisher.Failure.tooLarge) { try Self.segment(frame, offload, maximumFrameLength: 800).get() }
    }

    @Test func aSuperFrameNoLargerThanOneSegmentIsSentAsOneCompleteFrame() throws {
        var (frame, offload, _) = Self.superFrame("tcp6")
        offload.segmentSize = 9000
        let got = try Self.segment(frame, offload, maximumFrameLength: 9100).get()
        #expect(got.count == 1 && got[0].count == frame.count)
        #expect(got[0].withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true)
    }

    /// A complete frame, made partial the way the kernel does (the field holds the folded
    /// pseudo-header sum, computed here the slow way), is completed back to the same bytes.
    @Test(arguments: ["tcp4Options", "tcp6", "tcp4Tagged", "udp4"])
    func aPartialChecksumIsCompletedToTheRightValue(_ name: String) {
        let complete = Self.expectedSegments(name)[1]
        let (_, superOffload, _) = Self.superFrame(name)
        let l4 = Int(superOffload.checksumStart), field = l4 + Int(superOffload.checksumOffset)
        let l3 = complete[12] == 0x81 ? 18 : 14
        let isIPv6 = complete[l3] >> 4 == 6
        let addresses = isIPv6 ? complete[(l3 + 8)..<(l3 + 40)] : complete[(l3 + 12)..<(l3 + 20)]
        let l4Length = complete.count - l4
        var pseudo = Self.referenceSum(addresses) + UInt32(isIPv6 ? complete[l3 + 6] : complete[l3 + 9]) + UInt32(l4Length)
        while pseudo > 0xFFFF { pseudo = (pseudo & 0xFFFF) + (pseudo >> 16) }
        var partial = complete
        partial[field] = UInt8(pseudo >> 8)
        partial[field + 1] = UInt8(pseudo & 0xFF)
        let offload = FrameOffload(needsChecksum: true, segmentation: FrameOffload.Segmentation.none, checksumStart: UInt16(l4), checksumOffset: superOffload.checksumOffset)
        #expect(partial.withUnsafeBytes { OffloadFinisher.validate($0, offload) } == nil)
        var completed = partial
        completed.withUnsafeMutableBytes { OffloadFinisher.completeChecksum($0, offload) }
        #expect(completed == complete, "\(name): got checksum \(completed[field..<field + 2].hex), want \(complete[field..<field + 2].hex)")

        // Without metadata (a same-host VTEP's inner frame): repaired only because it is partial.
        var repaired = partial
        #expect(repaired.withUnsafeMutableBytes { OffloadFinisher.repairPartialChecksum($0) } == .completed)
        #expect(repaired == complete)
        var untouched = complete
        #expect(untouched.withUnsafeMutableBytes { OffloadFinisher.repairPartialChecksum($0) } == .untouched)
        #expect(untouched == complete)
        var corrupt = complete
        corrupt[field] ^= 0x5A
        #expect(corrupt.withUnsafeMutableBytes { OffloadFinisher.repairPartialChecksum($0) } == .untouched, "a wrong checksum that is not a pseudo-header sum stays wrong")
    }

    @Test func theFastSumAgreesWithRFC1071AtEveryLengthAndAlignment() {
        var rng = SystemRandomNumberGenerator()
        for length in 0..<300 {
            let bytes = (0..<(length + 7)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            for start in 0..<4 {
                let slice = bytes[start..<(start + length)]
                let fast = slice.withUnsafeBytes { InternetChecksum.fold(InternetChecksum.sum($0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, count: length)) }
                let value = UInt32(UInt16(bigEndian: fast))  // memory order -> number
                let want = Self.referenceSum(slice)
                #expect(value == want || (value == 0xFFFF && want == 0) || (value == 0 && want == 0xFFFF), "length \(length) start \(start): got \(value), want \(want)")
            }
        }
    }

    @Test func inconsistentMetadataIsRefused() {
        let (frame, offload, _) = Self.superFrame("tcp4Options")
        func check(_ o: FrameOffload, _ f: [UInt8] = frame) -> OffloadFinisher.Failure? { f.withUnsafeBytes { OffloadFinisher.validate($0, o) } }
        var o = offload
        o.checksumStart = UInt16(frame.count)
        #expect(check(o) == .malformed, "checksum field beyond the frame")
        o = offload
        o.segmentation = .tcpv6
        #expect(check(o) == .malformed, "TCPv6 segmentation of an IPv4 frame")
        o = offload
        o.segmentation = .udpFragmentation
        #expect(check(o) == .unsupported, "UFO")
        o = offload
        o.segmentation = nil
        #expect(check(o) == .unsupported, "unknown GSO type")
        o = offload
        o.segmentSize = 0
        #expect(check(o) == .malformed, "segment size 0")
        #expect(check(offload, Array(frame.prefix(60))) == .malformed, "truncated super-frame")
        #expect(FrameOffload(virtioHeader: UnsafeRawBufferPointer(start: nil, count: 0)) == nil)
    }

    @Test func theVirtioHeaderRoundTrips() {
        let (_, offload, _) = Self.superFrame("tcp6")
        var bytes = [UInt8](repeating: 0, count: 10)
        bytes.withUnsafeMutableBytes { offload.writeVirtioHeader(to: $0, headerLength: 74) }
        #expect(bytes == [1, 4, 74, 0, 0xE8, 0x03, 54, 0, 16, 0], "got \(bytes)")
        #expect(bytes.withUnsafeBytes { FrameOffload(virtioHeader: $0) } == offload)
    }

    // MARK: Through the engine

    /// A super-frame from port 0 leaves port 1 (complete frames only) as the golden segments,
    /// counted as transmitted frames and one segmented frame.
    @Test func theEngineSegmentsForAPortThatCannotTakeSuperFrames() {
        let lan = VirtualLAN(ports: 2)
        let (frame, offload, _) = Self.superFrame("tcp4Options")
        lan.inject(frame, on: 0, offload: offload)
        lan.runUntilIdle()
        let out = lan.transmitted(on: 1)
        let same = out == Self.expectedSegments("tcp4Options")
        #expect(same, "got \(out.count) frames of \(out.map(\.count)) bytes")
        #expect(lan.counters(1).transmittedFrames == 3 && lan.counters(1).framesSegmented == 1)
        // frames are counted as on the wire: the super-frame stands for its 3 segments
        #expect(lan.counters(0).receivedFrames == 3)
    }

    /// The same super-frame from an access port to a trunk port is tagged first: the tag moves
    /// the checksum offsets by 4 and every segment carries the tag.
    @Test func taggingASuperFrameKeepsItsOffsetsRight() {
        let lan = VirtualLAN(ports: 2, portConfigurations: [
            PortConfiguration(vlanMode: .access(VLANID(10))), PortConfiguration(vlanMode: .trunk(allowed: VLANSet([VLANID(10)]), native: nil)),
        ])
        let (frame, offload, _) = Self.superFrame("tcp4Options")
        lan.inject(frame, on: 0, offload: offload)
        lan.runUntilIdle()
        let out = lan.transmitted(on: 1)
        #expect(out.count == 3)
        for (i, s) in out.enumerated() {
            #expect(s[12] == 0x81 && s[13] == 0x00 && s[15] == 10, "segment \(i) not tagged with VLAN 10")
            var untagged = s
            untagged.removeSubrange(12..<16)
            let same = untagged == Self.expectedSegments("tcp4Options")[i]
            #expect(same, "segment \(i) differs once its tag is removed: header \(untagged.prefix(66).hex)")
        }
    }

    /// A partial checksum flooded to two ports is completed once, in place.
    @Test func aFloodedPartialFrameIsCompletedOnceForEveryPort() {
        let lan = VirtualLAN(ports: 3)
        let complete = Self.expectedSegments("udp4")[2]
        var partial = complete
        partial[0] = 0xFF  // broadcast: flooded
        var want = complete
        want[0] = 0xFF
        let l4 = 34
        partial[l4 + 6] = 0
        partial[l4 + 7] = 0
        let offload = FrameOffload(needsChecksum: true, segmentation: FrameOffload.Segmentation.none, checksumStart: UInt16(l4), checksumOffset: 6)
        // make the field the pseudo-header sum the kernel would leave
        var pseudo = Self.referenceSum(partial[26..<34]) + 17 + UInt32(partial.count - l4)
        while pseudo > 0xFFFF { pseudo = (pseudo & 0xFFFF) + (pseudo >> 16) }
        partial[l4 + 6] = UInt8(pseudo >> 8)
        partial[l4 + 7] = UInt8(pseudo & 0xFF)
        lan.inject(partial, on: 0, offload: offload)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 1) == [want] && lan.transmitted(on: 2) == [want])
        #expect(lan.counters(1).checksumsCompleted + lan.counters(2).checksumsCompleted == 1)
    }

    /// A port that takes super-frames gets the frame untouched, with its offload state; in the
    /// same flood a port that does not gets the segments, and one that takes only partial
    /// checksums gets the segments too (segmentation is more than a checksum). The frame in
    /// the batch is never changed by the segmentation, so the order of ports does not matter.
    @Test func capablePortsGetSuperFramesWholeAndTheOthersSegments() {
        let lan = VirtualLAN(ports: 4)
        lan.devices[1].capabilities = OffloadCapabilities(partialChecksum: true, tcpSegmentation: true, udpSegmentation: false, maximumFrameLength: 1518)
        lan.devices[3].capabilities = OffloadCapabilities(partialChecksum: true, tcpSegmentation: false, udpSegmentation: false, maximumFrameLength: 1518)
        var (frame, offload, _) = Self.superFrame("tcp4Options")
        frame[0] = 0xFF  // broadcast: flooded to ports 1, 2 and 3
        lan.inject(frame, on: 0, offload: offload)
        lan.runUntilIdle()
        let whole = lan.devices[1].transmittedOffloads
        let wholeFrames = lan.transmitted(on: 1)
        #expect(wholeFrames == [frame] && whole == [offload], "the capable port got \(wholeFrames.count) frames of \(wholeFrames.map(\.count)) bytes")
        var want = Self.expectedSegments("tcp4Options")
        for k in want.indices { want[k][0] = 0xFF }
        for port in [2, 3] {
            let got = lan.transmitted(on: port)
            let same = got == want
            #expect(same, "port \(port) got \(got.count) frames of \(got.map(\.count)) bytes, want the 3 golden segments")
        }
        #expect(lan.counters(1).framesSegmented == 0 && lan.counters(2).framesSegmented == 1 && lan.counters(3).framesSegmented == 1)
        // one super-frame passed whole and one cut: both are 3 frames on the wire, counted alike
        #expect(lan.counters(1).transmittedFrames == 3 && lan.counters(2).transmittedFrames == 3)
        #expect(lan.counters(0).receivedFrames == 3)
    }

    /// UDP segmentation for a port that takes TSO but not USO, and a partial checksum for a port
    /// that takes partial checksums: passed as they are where taken, finished where not.
    @Test func eachKindOfOffloadIsPassedOnlyWhereTaken() {
        let lan = VirtualLAN(ports: 3)
        lan.devices[1].capabilities = OffloadCapabilities(partialChecksum: true, tcpSegmentation: true, udpSegmentation: false, maximumFrameLength: 1518)
        lan.devices[2].capabilities = OffloadCapabilities(partialChecksum: true, tcpSegmentation: true, udpSegmentation: true, maximumFrameLength: 1518)
        var (frame, offload, _) = Self.superFrame("udp4")
        frame[0] = 0xFF
        lan.inject(frame, on: 0, offload: offload)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 1).count == 3 && lan.devices[2].transmittedOffloads == [offload])
        let finished = lan.transmitted(on: 2)
        #expect(finished == [frame])
    }

    @Test func malformedMetadataIsDroppedAndCountedOnIngress() {
        let lan = VirtualLAN(ports: 2)
        var (frame, offload, _) = Self.superFrame("tcp4Options")
        offload.segmentation = .udpFragmentation
        lan.inject(frame, on: 0, offload: offload)
        offload = Self.superFrame("tcp4Options").offload
        offload.checksumStart = 9000
        frame = Self.superFrame("tcp4Options").frame
        lan.inject(frame, on: 0, offload: offload)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 1).isEmpty)
        #expect(lan.counters(0)[.offloadUnsupported] == 1 && lan.counters(0)[.offloadMalformed] == 1)
    }
}

extension Collection<UInt8> {
    var hex: String { map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}
