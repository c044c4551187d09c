/// Lowers the MSS option of TCP SYNs so that the connection's segments fit a smaller path
/// (OpenVPN's `mssfix`, iptables' `TCPMSS --clamp-mss-to-pmtu`).
///
/// A remote's path adds its encapsulation to every frame: a 1500-byte underlay carries inner
/// frames of 1464 bytes at most over VXLAN/IPv4. A stack behind a port with a 1500-byte MTU (a
/// veth, a VM's NIC) offers an MSS of 1460 in its SYN, and the far end then sends segments
/// that only fit as IP fragments. Lowering the MSS in the SYN (and the SYN-ACK) that crosses
/// the remote makes both ends choose segments that fit:
/// ```
///   SYN, MSS 1460 ──► [clamp to 1464 - 14 - 20 - 20 = 1410] ──► remote ──► far end sends ≤ 1410
/// ```
/// The frame must carry a complete checksum (the UDP device takes no partial ones); the change
/// is folded into it incrementally (RFC 1624, eqn. 3), so the rest of the segment is not read.
/// An option at an odd offset of the TCP header is handled by swapping the bytes of the words
/// (RFC 1071 §2(B): the sum of byte-swapped words is the byte-swapped sum).
public enum MSSClamp {
    /// The smallest MSS the clamp writes: Linux's TCP_MIN_MSS.
    public static let minimum = 88

    /// If `frame` is a TCP segment with SYN set and an MSS option larger than what fits a
    /// `maximumFrameLength`-byte frame (its own Ethernet and VLAN headers, its IP header and 20
    /// bytes of TCP header counted) or an IP packet of `ipMTU` bytes, lowers the option to that
    /// and updates the checksum; returns whether it did. Any other frame is left alone; a few
    /// loads decide it. `checksumIsPartial`: the frame's TCP checksum is still to be computed
    /// (a virtio-net NEEDS_CSUM frame: the field holds only the pseudo-header's sum, which the
    /// option is not part of), so the field is left as it is.
    @inline(__always)
    public static func clamp(_ frame: UnsafeMutableRawBufferPointer, maximumFrameLength: Int = .max, ipMTU: Int = .max, checksumIsPartial: Bool = false) -> Bool {
        // quick refusal for everything that is not an untagged IPv4/IPv6 TCP SYN (tagged ones
        // take the full parse)
        guard frame.count >= 54 else { return false }
        let type = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
        switch type {
        case 0x0800:
            guard frame[23] == 6 else { return false }
            if frame[14] == 0x45, frame[47] & 0x02 == 0 { return false }  // (IP options: parsed)
        case 0x86DD:
            guard frame.count >= 74 else { return false }
            let next = frame[20]
            if next == 6, frame[67] & 0x02 == 0 { return false }
            guard next == 6 || next == 0 || next == 43 || next == 60 else { return false }  // (extension headers: parsed)
        case 0x8100, 0x88A8: break
        default: return false
        }
        return clampParsed(frame, maximumFrameLength: maximumFrameLength, ipMTU: ipMTU, checksumIsPartial: checksumIsPartial)
    }

    static func clampParsed(_ frame: UnsafeMutableRawBufferPointer, maximumFrameLength: Int, ipMTU: Int, checksumIsPartial: Bool) -> Bool {
        guard let layout = TransportLayout(UnsafeRawBufferPointer(frame)), layout.proto == 6 else { return false }
        let tcp = layout.l4
        let headerLength = Int(frame[tcp + 12] >> 4) * 4
        guard frame[tcp + 13] & 0x02 != 0, headerLength >= 20, tcp + headerLength <= layout.l3 + layout.ipLength else { return false }
        let ipHeader = tcp - layout.l3
        let limit = max(min(maximumFrameLength - layout.l3, ipMTU) - ipHeader - 20, minimum)
        var option = tcp + 20
        while option < tcp + headerLength {
            let kind = frame[option]
            if kind == 0 { return false }  // end of options
            if kind == 1 {  // no-op
                option += 1
                continue
            }
            guard option + 1 < tcp + headerLength else { return false }
            let length = Int(frame[option + 1])
            guard length >= 2, option + length <= tcp + headerLength else { return false }
            if kind == 2, length == 4 {
                let old = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: option + 2, as: UInt16.self))
                guard Int(old) > limit else { return false }
                let new = UInt16(limit)
                frame.storeBytes(of: new.bigEndian, toByteOffset: option + 2, as: UInt16.self)
                if checksumIsPartial { return true }
                // the checksum's words start at the TCP header; an odd offset swaps the bytes
                let odd = (option + 2 - tcp) & 1 == 1
                let (was, now) = odd ? (old.byteSwapped, new.byteSwapped) : (old, new)
                let field = tcp + 16
                let check = UInt16(bigEndian: frame.loadUnaligned(fromByteOffset: field, as: UInt16.self))
                var sum = UInt32(~check) + UInt32(~was) + UInt32(now)
                sum = (sum & 0xFFFF) + (sum >> 16)
                sum = (sum & 0xFFFF) + (sum >> 16)
                frame.storeBytes(of: (~UInt16(sum)).bigEndian, toByteOffset: field, as: UInt16.self)
                return true
            }
            option += length
        }
        return false
    }
}
