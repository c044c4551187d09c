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

    /// An IPv4 (or IPv6) TCP segment from 10.0.0.1 (fd00::1) to 10.0.0.2 (fd00::2) with
    /// `payload` bytes (byte k is k mod 251), TCP flags `flags` (ACK by default), and every
    /// checksum complete. With `segmentSize`, the offload state that makes it a TSO
    /// super-frame of that segment size (`.none` otherwise).
    public static func tcp(
        to destination: MACAddress = host(2), from source: MACAddress = host(1), payload: Int, ipv6: Bool = false,
        flags: UInt8 = 0x10, segmentSize: Int? = nil
    ) -> (frame: [UInt8], offload: FrameOffload) {
        let data = (0..<payload).map { UInt8($0 % 251) }
        var tcp: [UInt8] = [0x9C, 0x40, 0x14, 0x51, 0, 0, 0x03, 0xE8, 0, 0, 0, 1, 0x50, flags, 0xFA, 0xF0, 0, 0, 0, 0] + data
        var ip: [UInt8]
        let pseudo: [UInt8]
        if ipv6 {
            let a: [UInt8] = [0xFD] + Array(repeating: 0, count: 14) + [1], b: [UInt8] = [0xFD] + Array(repeating: 0, count: 14) + [2]
            ip = [0x60, 0, 0, 0, UInt8(tcp.count >> 8), UInt8(tcp.count & 0xFF), 6, 64] + a + b
            pseudo = a + b + [0, 0, UInt8(tcp.count >> 8), UInt8(tcp.count & 0xFF), 0, 0, 0, 6]
        } else {
            let total = 20 + tcp.count
            ip = [0x45, 0, UInt8(total >> 8), UInt8(total & 0xFF), 0, 7, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
            let c = ~InternetChecksum.fold(ip.withUnsafeBytes { InternetChecksum.sum($0.baseAddress!, count: 20) })
            withUnsafeBytes(of: c) { ip[10] = $0[0]; ip[11] = $0[1] }
            pseudo = [10, 0, 0, 1, 10, 0, 0, 2, 0, 6, UInt8(tcp.count >> 8), UInt8(tcp.count & 0xFF)]
        }
        let sum = (pseudo + tcp + (tcp.count % 2 == 1 ? [0] : [])).withUnsafeBytes { InternetChecksum.sum($0.baseAddress!, count: $0.count) }
        let c = ~InternetChecksum.fold(sum)
        withUnsafeBytes(of: c) { tcp[16] = $0[0]; tcp[17] = $0[1] }
        let frame = self.frame(to: destination, from: source, etherType: ipv6 ? 0x86DD : 0x0800, payload: ip + tcp)
        guard let segmentSize else { return (frame, .none) }
        return (frame, FrameOffload(needsChecksum: false, segmentation: ipv6 ? .tcpv6 : .tcpv4, segmentSize: UInt16(segmentSize),
                                    checksumStart: UInt16(14 + ip.count), checksumOffset: 16))
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
