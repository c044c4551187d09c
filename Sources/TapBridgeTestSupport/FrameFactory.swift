public import TapBridgeCore

/// Builds Ethernet frames as byte arrays for tests and examples.
public enum FrameFactory {
    /// A MAC address for host `n` in tests: locally administered `02:00:00:00:xx:xx`.
    public static func host(_ n: Int) -> MACAddress { MACAddress(rawValue: 0x0200_0000_0000 | UInt64(n & 0xFFFF_FFFF)) }

    /// An Ethernet frame: destination, source, the given tags (outermost first), EtherType,
    /// and `payload` (default: 46 bytes so the frame has the 60-byte minimum size).
    public static func frame(
        to destination: MACAddress, from source: MACAddress, tags: [VLANTag] = [],
        etherType: UInt16 = 0x0800, payload: [UInt8]? = nil
    ) -> [UInt8] {
        var bytes = destination.octets + source.octets
        for tag in tags {
            bytes += [UInt8(tag.tagProtocol >> 8), UInt8(tag.tagProtocol & 0xFF)]
            bytes += [UInt8(tag.controlInformation >> 8), UInt8(tag.controlInformation & 0xFF)]
        }
        bytes += [UInt8(etherType >> 8), UInt8(etherType & 0xFF)]
        bytes += payload ?? Array(repeating: 0xA5, count: 46)
        return bytes
    }

    /// A frame tagged with one 802.1Q tag for `vlan` (priority `priority`).
    public static func tagged(
        to destination: MACAddress, from source: MACAddress, vlan: VLANID, priority: UInt8 = 0,
        etherType: UInt16 = 0x0800, payload: [UInt8]? = nil
    ) -> [UInt8] {
        frame(to: destination, from: source, tags: [VLANTag(vlan: vlan, priority: priority)], etherType: etherType, payload: payload)
    }

    /// Parses hex with optional whitespace, `:` and `#`-to-end-of-line comments, for fixtures:
    /// `"ffffffffffff # dst\n 020000000001 # src\n 0806 # ARP"`.
    public static func bytes(hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var pending: UInt8? = nil
        for line in hex.split(separator: "\n", omittingEmptySubsequences: false) {
            for ch in line.prefix(while: { $0 != "#" }) {
                guard let v = ch.hexDigitValue else { continue }
                if let hi = pending {
                    out.append(hi << 4 | UInt8(v))
                    pending = nil
                } else {
                    pending = UInt8(v)
                }
            }
        }
        precondition(pending == nil, "odd number of hex digits")
        return out
    }
}

/// Formats bytes as lower-case hex, `separator` between octets (for test messages).
public func hexString(_ bytes: some Sequence<UInt8>, separator: String = "") -> String {
    let digits: [Character] = Array("0123456789abcdef")
    var out = ""
    var first = true
    for b in bytes {
        if !first { out += separator }
        first = false
        out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)])
    }
    return out
}
