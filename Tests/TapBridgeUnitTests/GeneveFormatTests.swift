import Testing
import TapBridgeCore
import TapBridgeDevices

/// RFC 8926 Geneve against golden datagrams that scapy (`scapy.contrib.geneve.GENEVE`, an
/// implementation of its own) made: what tapbridge sends, and what it takes, skips, and drops.
@Suite("Geneve (RFC 8926)")
struct GeneveFormatTests {
    /// An Ethernet frame from a valid source: broadcast ARP from 02:00:00:00:00:0a.
    static let frame: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0, 0, 0, 0, 0x0A, 0x08, 0x06] + Array(repeating: 0, count: 28)

    static func hex(_ text: String) -> [UInt8] {
        stride(from: 0, to: text.count, by: 2).map { i in
            UInt8(text[text.index(text.startIndex, offsetBy: i)..<text.index(text.startIndex, offsetBy: i + 2)], radix: 16)!
        }
    }

    enum Opened: Equatable { case frame([UInt8]), consumed, drop(DropReason), other }

    static func open(_ format: GeneveFormat, _ datagram: [UInt8]) -> Opened {
        var d = datagram
        return d.withUnsafeMutableBytes { b in
            switch format.open(b) {
            case .frame(let f): .frame(Array(f))
            case .consumed: .consumed
            case .drop(let r): .drop(r)
            case .reply: .other
            }
        }
    }

    @Test func sentAsScapyBuildsIt() {
        let format = GeneveFormat(vni: VNI(42)!)
        var datagram = [UInt8](repeating: 0, count: GeneveFormat.length + Self.frame.count)
        let length = datagram.withUnsafeMutableBytes { b in
            b.baseAddress!.advanced(by: GeneveFormat.length).copyMemory(from: Self.frame, byteCount: Self.frame.count)
            return format.seal(b.baseAddress!, frameLength: Self.frame.count)
        }
        // GENEVE(vni=42, proto=0x6558)
        #expect(length == 8 + Self.frame.count && Array(datagram.prefix(8)) == Self.hex("0000655800002a00"))
        #expect(Self.open(format, datagram) == .frame(Self.frame))
        #expect(datagram.withUnsafeBytes { format.mayHaveSent($0) }, "its own datagram, quoted by an ICMP error")
        let otherVNI = Self.hex("0000655800002b00") + Self.frame
        #expect(!otherVNI.withUnsafeBytes { format.mayHaveSent($0) }, "another VNI's header")
    }

    @Test func optionsAreSkippedAndTheFrameFollowsThem() {
        // GENEVE(vni=0xabcdef, proto=0x6558, optionlen=2, options=0102038100000000)
        let datagram = Self.hex("02006558abcdef000102038100000000") + Self.frame
        #expect(Self.open(GeneveFormat(vni: VNI(0xABCDEF)!), datagram) == .frame(Self.frame))
        #expect(Self.open(GeneveFormat(vni: VNI(42)!), datagram) == .drop(.vniMismatch))
    }

    /// What cannot be taken is counted, never trusted: critical options this end does not
    /// know (C), another version or protocol, options past the datagram's end, a datagram
    /// shorter than the header; a control message (O) is taken and not forwarded.
    @Test func whatCannotBeTakenIsCountedAndControlMessagesAreNotForwarded() {
        let format = GeneveFormat(vni: VNI(42)!)
        // GENEVE(vni=42, critical=1, optionlen=1, options=01020381)
        #expect(Self.open(format, Self.hex("0140655800002a0001020381") + Self.frame) == .drop(.malformedEncapsulation))
        // GENEVE(vni=42, oam=1)
        #expect(Self.open(format, Self.hex("0080655800002a00") + Self.frame) == .consumed)
        #expect(Self.open(format, Self.hex("4000655800002a00") + Self.frame) == .drop(.malformedEncapsulation), "version 1")
        #expect(Self.open(format, Self.hex("0000080000002a00") + Self.frame) == .drop(.malformedEncapsulation), "IPv4 inside, not Ethernet")
        #expect(Self.open(format, Self.hex("3f00655800002a00") + Array(Self.frame.prefix(20))) == .drop(.malformedEncapsulation), "252 bytes of options in 28")
        #expect(Self.open(format, Self.hex("0000655800002a")) == .drop(.malformedEncapsulation), "7 bytes")
        #expect(Self.open(format, Self.hex("0000655800002a00")) == .frame([]), "an empty frame: the bridge counts it a runt")
    }

    /// Declared once, in the registry: named, described, VNI-carrying, a mesh by default, and
    /// the receive lead covers its header.
    @Test func itIsRegisteredWithItsTraits() {
        #expect(Encapsulations.named("geneve") == .geneve)
        let kind = Encapsulation.geneve.kind
        #expect(kind.carriesVNI && kind.meshByDefault && !kind.kernelDatapath && !kind.needsKey && kind.admitsStrangers)
        #expect(Encapsulations.receiveLead >= kind.frameOffset && Encapsulations.choices.contains("geneve"))
    }
}
