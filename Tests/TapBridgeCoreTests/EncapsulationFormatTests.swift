import TapBridgeCore
import TapBridgeTestSupport
import Testing

/// Each encapsulation format through the seam alone: what `seal` writes, `open` takes back;
/// what is not a datagram of the format gets its exact drop reason.
@Suite("Encapsulation formats")
struct EncapsulationFormatTests {
    static let frame = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1))

    /// Seals `frame` in `format` and returns the datagram.
    static func seal(_ frame: [UInt8], _ format: any EncapsulationFormat) -> [UInt8] {
        var buffer = [UInt8](repeating: 0xEE, count: format.headerLength + frame.count + format.trailerLength + 16)
        let length = buffer.withUnsafeMutableBytes { b in
            (b.baseAddress! + format.headerLength).copyMemory(from: frame, byteCount: frame.count)
            return format.seal(b.baseAddress!, frameLength: frame.count)
        }
        return Array(buffer.prefix(length))
    }

    enum Opened: Equatable {
        case frame([UInt8])
        case drop(DropReason)
        case consumed
    }

    /// Opens `datagram`: the inner frame's bytes, or the drop reason.
    static func open(_ datagram: [UInt8], _ format: any EncapsulationFormat) -> Opened {
        var d = datagram
        return d.withUnsafeMutableBytes { b in
            switch format.open(b) {
            case .frame(let inner): .frame(Array(inner))
            case .drop(let reason): .drop(reason)
            case .consumed: .consumed
            case .reply(_, let reason): .drop(reason)  // (no keyless format replies)
            }
        }
    }

    /// The formats without a key (the sealed one, which needs swift-crypto, is tested with the
    /// UDP device: SealedTests).
    static func plainFormats() -> [any EncapsulationFormat] { [VXLANFormat(vni: VNI(42)!), RawFormat()] }

    @Test(arguments: 0..<2)
    func whatIsSealedOpensToTheSameFrame(_ k: Int) {
        let format = Self.plainFormats()[k]
        let datagram = Self.seal(Self.frame, format)
        #expect(datagram.count == format.headerLength + Self.frame.count + format.trailerLength)
        #expect(Self.open(datagram, format) == .frame(Self.frame))
    }

    /// The bytes on the wire are RFC 7348's: flags 0x08, reserved zero, the VNI.
    @Test func vxlanWritesTheRFCHeader() {
        let datagram = Self.seal(Self.frame, VXLANFormat(vni: VNI(0x12_3456)!))
        #expect(Array(datagram.prefix(8)) == [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0], "got \(hexString(datagram.prefix(8)))")
        #expect(Array(RawFormat().seal(Self.frame, RawFormat())) == Self.frame)
    }

    @Test func vxlanDatagramsThatAreNotOursGetTheirReason() {
        let format = VXLANFormat(vni: VNI(42)!)
        let good = Self.seal(Self.frame, format)
        var noFlag = good
        noFlag[0] = 0
        let otherVNI = Self.seal(Self.frame, VXLANFormat(vni: VNI(43)!))
        #expect(Self.open(Array(good.prefix(7)), format) == .drop(.malformedEncapsulation))
        #expect(Self.open([], format) == .drop(.malformedEncapsulation))
        #expect(Self.open(noFlag, format) == .drop(.malformedEncapsulation))
        #expect(Self.open(otherVNI, format) == .drop(.vniMismatch))
        // reserved bits are ignored on receipt (RFC 7348 §5)
        var reserved = good
        reserved[1] = 0xFF
        reserved[7] = 0xFF
        #expect(Self.open(reserved, format) == .frame(Self.frame))
    }

    /// The UDP device finds VXLAN peers by address alone; raw ones only by address and port.
    @Test func onlyVXLANMatchesAnySourcePort() {
        #expect(VXLANFormat(vni: VNI(1)!).matchesAnySourcePort && !RawFormat().matchesAnySourcePort)
    }
}

extension RawFormat {
    /// (for the test above: the raw datagram of a frame)
    func seal(_ frame: [UInt8], _ format: RawFormat) -> [UInt8] { EncapsulationFormatTests.seal(frame, format) }
}
