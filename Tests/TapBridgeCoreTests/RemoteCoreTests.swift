import Testing
import TapBridgeCore
import TapBridgeTestSupport

@Suite("Split horizon and receive-side drops")
struct SplitHorizonTests {
    /// Port 0 local; ports 1, 2 remote peers in split-horizon group 1.
    func lan() -> VirtualLAN {
        VirtualLAN(ports: 3, portConfigurations: [.init(), .init(splitHorizonGroup: 1), .init(splitHorizonGroup: 1)])
    }

    @Test func aFloodFromARemoteReachesLocalPortsButNoOtherRemote() {
        let lan = lan()
        let out = lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        #expect(receivers(out) == [0], "got \(receivers(out)), want [0]")
    }

    @Test func aFloodFromALocalPortReachesEveryRemote() {
        let lan = lan()
        #expect(receivers(lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)) == [1, 2])
    }

    @Test func unicastBetweenTwoRemotesIsDroppedAndCounted() {
        let lan = lan()
        lan.send(FrameFactory.frame(to: .broadcast, from: C), on: 2)
        lan.discardTransmitted()
        #expect(receivers(lan.send(FrameFactory.frame(to: C, from: B), on: 1)).isEmpty)
        #expect(lan.counters(1)[.splitHorizon] == 1)
    }

    @Test func withoutAGroupRemotesForwardToEachOther() {
        let lan = VirtualLAN(ports: 3)
        #expect(receivers(lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)) == [0, 2])
    }

    /// Groups as remotes get them: 1 and 2 a mesh of bridges (group 1), 3 and 4 endpoints
    /// (QEMU VMs: no group), 5 in a group of its own (2). A broadcast from a mesh bridge
    /// reaches everyone but the other mesh bridge; one from an endpoint reaches everyone; the
    /// copies withheld are counted bridge-wide, unicast drops on the port too.
    @Test func groupsDecideFloodingAsEachRemoteIsConfigured() {
        let lan = VirtualLAN(ports: 6, portConfigurations: [.init(), .init(splitHorizonGroup: 1), .init(splitHorizonGroup: 1), .init(), .init(),
                                                            .init(splitHorizonGroup: 2)])
        #expect(receivers(lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)) == [0, 3, 4, 5])
        #expect(lan.bridge.horizonWithheld == 1, "got \(lan.bridge.horizonWithheld) withheld, want 1 (port 2)")
        lan.discardTransmitted()
        #expect(receivers(lan.send(FrameFactory.frame(to: .broadcast, from: C), on: 3)) == [0, 1, 2, 4, 5])
        lan.discardTransmitted()
        // endpoint 4 answers endpoint 3 (learned on port 3 above): unicast, not held back
        #expect(receivers(lan.send(FrameFactory.frame(to: C, from: FrameFactory.host(0xD)), on: 4)) == [3])
        lan.discardTransmitted()
        // mesh bridge 2 to a station learned on mesh bridge 1: dropped and counted
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: FrameFactory.host(0xD)), on: 2)).isEmpty)
        #expect(lan.counters(2)[.splitHorizon] == 1 && lan.bridge.horizonWithheld == 2, "\(lan.counters(2)), withheld \(lan.bridge.horizonWithheld)")
    }

    @Test func dropsADeviceReportsAreCountedAsReceivedOnThatPort() {
        let lan = VirtualLAN(ports: 2)
        lan.devices[0].dropsOnNextReceive = [.vniMismatch, .malformedEncapsulation, .vniMismatch]
        lan.inject(FrameFactory.frame(to: .broadcast, from: A), on: 0)
        lan.runUntilIdle()
        let c = lan.counters(0)
        #expect(c[.vniMismatch] == 2 && c[.malformedEncapsulation] == 1)
        #expect(c.receivedFrames == 4, "got \(c.receivedFrames) received, want 4 (3 dropped + 1 forwarded)")
        #expect(lan.transmitted(on: 1).count == 1)
    }
}

struct VXLANCase: Sendable, CustomTestStringConvertible {
    var name: String
    var hex: String
    var want: VXLANHeader.Decoded
    var testDescription: String { name }
}

@Suite("VXLAN header (RFC 7348)")
struct VXLANTests {
    static let cases: [VXLANCase] = [
        VXLANCase(name: "empty", hex: "", want: .tooShort),
        VXLANCase(name: "7 bytes", hex: "08000000 000001", want: .tooShort),
        VXLANCase(name: "header only, VNI 1", hex: "08 000000 # flags, reserved\n 000001 00 # VNI 1, reserved", want: .frame(vni: VNI(1)!, frameLength: 0)),
        VXLANCase(name: "VNI 0xabcdef with a 14-byte frame",
                  hex: "08000000 abcdef00  ffffffffffff 020000000001 0806", want: .frame(vni: VNI(0xABCDEF)!, frameLength: 14)),
        VXLANCase(name: "reserved bits set: ignored", hex: "ff ffffff 00002a ff  ffffffffffff020000000001 0800", want: .frame(vni: VNI(42)!, frameLength: 14)),
        VXLANCase(name: "I flag clear", hex: "00000000 00000100 ffffffffffff020000000001 0800", want: .flagsInvalid),
        VXLANCase(name: "only other flag bits", hex: "f7000000 00000100", want: .flagsInvalid),
    ]

    @Test(arguments: cases)
    func decodes(_ c: VXLANCase) {
        let bytes = FrameFactory.bytes(hex: c.hex)
        let got = bytes.withUnsafeBytes { VXLANHeader.decode($0) }
        #expect(got == c.want, "got \(got), want \(c.want)")
    }

    @Test(arguments: [1, 42, 0xFF_FFFF, 0])
    func encodeThenDecodeRoundTrips(vni: Int) {
        var header = VXLANHeader.encodedHeader(vni: VNI(vni)!)
        let bytes = withUnsafeBytes(of: &header) { Array($0) }
        #expect(bytes[0] == 0x08 && bytes[1...3] == [0, 0, 0] && bytes[7] == 0, "got \(hexString(bytes))")
        let decoded = bytes.withUnsafeBytes { VXLANHeader.decode($0) }
        #expect(decoded == .frame(vni: VNI(vni)!, frameLength: 0))
    }

    @Test func vniRange() {
        #expect(VNI(0x100_0000) == nil)
        #expect(VNI(-1) == nil)
    }
}
