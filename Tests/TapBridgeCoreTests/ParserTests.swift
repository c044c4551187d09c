import Testing
import TapBridgeCore
import TapBridgeTestSupport

@Suite("MAC addresses")
struct MACAddressTests {
    @Test(arguments: [
        ("aa:bb:cc:dd:ee:ff", UInt64(0xAABB_CCDD_EEFF)),
        ("AA-BB-CC-DD-EE-FF", 0xAABB_CCDD_EEFF),
        ("0:1:2:3:4:5", 0x0001_0203_0405),
        ("ff:ff:ff:ff:ff:ff", 0xFFFF_FFFF_FFFF),
    ])
    func parses(text: String, value: UInt64) {
        let mac = MACAddress(text)
        #expect(mac?.rawValue == value, "got \(String(describing: mac)), want \(String(value, radix: 16))")
    }

    @Test(arguments: ["", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "aa:bb:cc:dd:ee:fg", "aaa:bb:cc:dd:ee:ff", "aa:bb:cc:dd:ee:", "aa:bb-cc:dd:ee:ff"])
    func rejects(text: String) {
        #expect(MACAddress(text) == nil, "\(text) parsed")
    }

    @Test func printsLowerCaseColonSeparated() {
        #expect(MACAddress(0x02, 0, 0xAB, 0xCD, 0x0E, 0xF0).description == "02:00:ab:cd:0e:f0")
        #expect(MACAddress("02:00:AB:CD:0E:F0")?.description == "02:00:ab:cd:0e:f0")
    }

    @Test(arguments: [
        // mac, broadcast, multicast, linkLocal, validSource
        ("ff:ff:ff:ff:ff:ff", true, true, false, false),
        ("01:00:5e:00:00:01", false, true, false, false),
        ("33:33:00:00:00:01", false, true, false, false),
        ("01:80:c2:00:00:00", false, true, true, false),
        ("01:80:c2:00:00:0e", false, true, true, false),
        ("01:80:c2:00:00:0f", false, true, true, false),
        ("01:80:c2:00:00:10", false, true, false, false),
        ("00:00:00:00:00:00", false, false, false, false),
        ("02:00:00:00:00:01", false, false, false, true),
        ("52:54:00:12:34:56", false, false, false, true),
    ])
    func predicates(text: String, broadcast: Bool, multicast: Bool, linkLocal: Bool, valid: Bool) {
        let mac = MACAddress(text)!
        #expect(mac.isBroadcast == broadcast)
        #expect(mac.isMulticast == multicast)
        #expect(mac.isLinkLocalControl == linkLocal)
        #expect(mac.isValidSource == valid)
    }
}

struct HeaderCase: Sendable, CustomTestStringConvertible {
    var name: String
    var hex: String
    /// nil = the initializer must fail (runt)
    var expect: (dst: String, src: String, outer: UInt32?, inner: UInt32?, type: UInt16, length: Int, truncated: Bool)?
    var testDescription: String { name }
}

@Suite("Ethernet header view")
struct EthernetHeaderTests {
    static let cases: [HeaderCase] = [
        HeaderCase(name: "empty", hex: "", expect: nil),
        HeaderCase(name: "13 bytes (runt)", hex: "ffffffffffff 020000000001 08", expect: nil),
        HeaderCase(
            name: "untagged ARP, header only",
            hex: """
                ffffffffffff  # dst: broadcast
                020000000001  # src
                0806          # EtherType: ARP
                """,
            expect: ("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:01", nil, nil, 0x0806, 14, false)),
        HeaderCase(
            name: "802.1Q VLAN 10 priority 5 IPv4",
            hex: """
                020000000002  # dst
                020000000001  # src
                8100 a00a     # 802.1Q tag: PCP 5, VID 10
                0800          # EtherType: IPv4
                45000014      # payload
                """,
            expect: ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x8100_A00A, nil, 0x0800, 18, false)),
        HeaderCase(
            name: "QinQ 802.1ad outer 100, 802.1Q inner 10",
            hex: """
                020000000002 020000000001
                88a8 0064     # S-tag VID 100
                8100 000a     # C-tag VID 10
                86dd          # IPv6
                """,
            expect: ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x88A8_0064, 0x8100_000A, 0x86DD, 22, false)),
        HeaderCase(
            name: "three tags: the third stays in the payload",
            hex: "020000000002 020000000001 88a8 0064 8100 000a 8100 0014 0800",
            expect: ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x88A8_0064, 0x8100_000A, 0x8100, 22, false)),
        HeaderCase(
            name: "tag announced, frame cut after the TPID",
            hex: "020000000002 020000000001 8100 00",
            expect: ("02:00:00:00:00:02", "02:00:00:00:00:01", nil, nil, 0x8100, 14, true)),
        HeaderCase(
            name: "inner tag cut off",
            hex: "020000000002 020000000001 88a8 0064 8100 00",
            expect: ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x88A8_0064, nil, 0x8100, 18, true)),
        HeaderCase(
            name: "tag with nothing after it: EtherType missing is not truncation of the tag",
            hex: "020000000002 020000000001 8100 000a 0800",
            expect: ("02:00:00:00:00:02", "02:00:00:00:00:01", 0x8100_000A, nil, 0x0800, 18, false)),
    ]

    @Test(arguments: cases)
    func parses(_ c: HeaderCase) {
        let bytes = FrameFactory.bytes(hex: c.hex)
        bytes.withUnsafeBytes { raw in
            let header = EthernetHeader(raw)
            guard let want = c.expect else {
                #expect(header == nil, "got a header from \(bytes.count) bytes, want nil")
                return
            }
            guard let h = header else {
                Issue.record("got nil, want a header")
                return
            }
            #expect(h.destination.description == want.dst)
            #expect(h.source.description == want.src)
            #expect(h.outerTag.map { UInt32($0.tagProtocol) << 16 | UInt32($0.controlInformation) } == want.outer)
            #expect(h.innerTag.map { UInt32($0.tagProtocol) << 16 | UInt32($0.controlInformation) } == want.inner)
            #expect(h.etherType == want.type, "got EtherType \(String(h.etherType, radix: 16)), want \(String(want.type, radix: 16))")
            #expect(h.length == want.length, "got header length \(h.length), want \(want.length)")
            #expect(h.isTruncated == want.truncated)
        }
    }

    @Test func vlanTagFields() {
        let tag = VLANTag(controlInformation: 0xB00A)  // PCP 5, DEI 1, VID 10
        #expect(tag.priority == 5)
        #expect(tag.vlan == 10)
    }

    @Test func oversizedFrameParsesButIsDroppedByTheBridge() {
        let lan = VirtualLAN(ports: 2, configuration: .init(maximumFrameLength: 1518))
        let big = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1), payload: Array(repeating: 0, count: 1505))
        #expect(big.count == 1519)
        big.withUnsafeBytes { #expect(EthernetHeader($0) != nil) }
        lan.send(big, on: 0)
        #expect(lan.counters(0)[.oversized] == 1)
        #expect(lan.transmitted(on: 1).isEmpty)
        let fits = Array(big.dropLast())
        #expect(lan.send(fits, on: 0)[1] == [fits])
    }

    @Test(arguments: ["1", "10-20,30", "4094", "all"])
    func vlanSetParses(text: String) {
        let set = VLANSet(parsing: text)
        #expect(set != nil)
        if text != "all" { #expect(set?.description == text) }
    }

    @Test func vlanSetIteratesItsMembersInOrder() {
        let ids: [UInt16] = [1, 2, 63, 64, 65, 127, 128, 1000, 4032, 4094]
        #expect(Array(VLANSet(ids.map { VLANID($0) })).map(\.rawValue) == ids)
        #expect(Array(VLANSet()).isEmpty)
        let all = Array(VLANSet.all).map(\.rawValue)
        #expect(all == Array(1...4094))
        var set = VLANSet.all
        for v in 1...4094 where v % 7 != 0 { set.remove(VLANID(UInt16(v))) }
        #expect(Array(set).map(\.rawValue) == (1...4094).filter { $0 % 7 == 0 }.map(UInt16.init))
    }

    @Test(arguments: ["0", "4095", "5-3", "x", "", "1,,2", "10-"])
    func vlanSetRejects(text: String) {
        #expect(VLANSet(parsing: text) == nil, "\(text) parsed")
    }
}
