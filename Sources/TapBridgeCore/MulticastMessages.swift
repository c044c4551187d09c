/// An IP multicast group: an IPv4 address in 224.0.0.0/4 or an IPv6 address in ff00::/8.
public enum GroupAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    case v4(UInt32)
    case v6(UInt64, UInt64)

    public var description: String {
        switch self {
        case .v4(let a): return "\(a >> 24).\(a >> 16 & 0xFF).\(a >> 8 & 0xFF).\(a & 0xFF)"
        case .v6(let hi, let lo):
            let words = [hi >> 48, hi >> 32, hi >> 16, hi, lo >> 48, lo >> 32, lo >> 16, lo].map { UInt16(truncatingIfNeeded: $0) }
            // the longest run of zero words (two or more) becomes "::"
            var best = (start: -1, count: 0), run = (start: -1, count: 0)
            for (i, w) in words.enumerated() {
                if w == 0 { run = run.start < 0 ? (i, 1) : (run.start, run.count + 1) } else { run = (-1, 0) }
                if run.count > best.count { best = run }
            }
            let hex = words.map { String($0, radix: 16) }
            guard best.count >= 2 else { return hex.joined(separator: ":") }
            return hex[..<best.start].joined(separator: ":") + "::" + hex[(best.start + best.count)...].joined(separator: ":")
        }
    }

    /// Groups the kernel bridge floods without snooping: 224.0.0.0/24 (local network control)
    /// and ff02::1 (all nodes).
    public var isLinkLocalControl: Bool {
        switch self {
        case .v4(let a): a & 0xFFFF_FF00 == 0xE000_0000
        case .v6(let hi, let lo): hi == 0xFF02_0000_0000_0000 && lo == 1
        }
    }

    /// An IPv6 group.
    public var isV6: Bool {
        if case .v6 = self { return true }
        return false
    }

    /// A group address at all (class D, ff00::/8).
    var isMulticast: Bool {
        switch self {
        case .v4(let a): a >> 28 == 0xE
        case .v6(let hi, _): hi >> 56 == 0xFF
        }
    }

    public static func < (a: GroupAddress, b: GroupAddress) -> Bool {
        switch (a, b) {
        case (.v4(let x), .v4(let y)): x < y
        case (.v4, .v6): true
        case (.v6, .v4): false
        case (.v6(let x1, let x2), .v6(let y1, let y2)): (x1, x2) < (y1, y2)
        }
    }
}

/// What a multicast frame is to IGMP/MLD snooping, found by parsing it (never trusted: every
/// length is checked against the frame, and a membership message's checksum too).
enum MulticastFrame: Equatable {
    /// Not snooped: not IP, or to a link-local control group; flooded.
    case flood
    /// Data for `group`: to its members and the multicast routers, or flooded if unknown.
    case data(GroupAddress)
    /// A query (IGMP, MLD): its port leads to a querier; `group` names a group-specific one
    /// (nil: general), which hosts answer within `maxResponse` (ns); flooded.
    case query(v6: Bool, group: GroupAddress?, maxResponse: Int64)
    /// A multicast router's own message (PIM hello, multicast router advertisement): its port
    /// leads to a router; flooded.
    case router(v6: Bool)
    /// A membership report or leave: its body, `length` bytes at `at` (IGMP after the IPv4
    /// header, MLD after the IPv6 headers), checked; to the multicast routers only.
    case igmp(at: Int, length: Int)
    case mld(at: Int, length: Int)
    /// A membership message that does not parse or whose checksum is wrong: dropped, counted.
    case malformed
}

extension MulticastFrame {
    static func be16(_ f: UnsafeRawBufferPointer, _ o: Int) -> Int { Int(f[o]) << 8 | Int(f[o + 1]) }
    static func be32(_ f: UnsafeRawBufferPointer, _ o: Int) -> UInt32 {
        UInt32(f[o]) << 24 | UInt32(f[o + 1]) << 16 | UInt32(f[o + 2]) << 8 | UInt32(f[o + 3])
    }
    static func be64(_ f: UnsafeRawBufferPointer, _ o: Int) -> UInt64 { UInt64(be32(f, o)) << 32 | UInt64(be32(f, o + 4)) }
    static func v6(_ f: UnsafeRawBufferPointer, _ o: Int) -> GroupAddress { .v6(be64(f, o), be64(f, o + 8)) }

    /// MLD's ICMPv6 types: query, v1 report and done, v2 report, router advertisement.
    @inline(__always) static func isMLD(_ type: UInt8) -> Bool {
        switch type {
        case 130, 131, 132, 143, 151: true
        default: false
        }
    }

    /// Parses `frame`, whose IP header starts at `l3` with EtherType `etherType`.
    static func parse(_ frame: UnsafeRawBufferPointer, l3: Int, etherType: UInt16) -> MulticastFrame {
        switch etherType {
        case 0x0800: parseIPv4(frame, l3)
        case 0x86DD: parseIPv6(frame, l3)
        default: .flood
        }
    }

    static func parseIPv4(_ f: UnsafeRawBufferPointer, _ l3: Int) -> MulticastFrame {
        guard f.count >= l3 + 20, f[l3] >> 4 == 4 else { return .flood }
        let headerLength = Int(f[l3] & 0x0F) * 4, total = be16(f, l3 + 2)
        guard headerLength >= 20, total >= headerLength, f.count >= l3 + total else { return .flood }
        let group = GroupAddress.v4(be32(f, l3 + 16))
        let proto = f[l3 + 9], firstFragment = be16(f, l3 + 6) & 0x1FFF == 0
        if proto == 2, firstFragment {
            let at = l3 + headerLength, length = total - headerLength
            guard length >= 8, InternetChecksum.fold(InternetChecksum.sum(f.baseAddress! + at, count: length)) == 0xFFFF else { return .malformed }
            switch f[at] {
            case 0x11: return query(igmp: f, at: at, length: length)
            case 0x12, 0x16, 0x17, 0x22: return .igmp(at: at, length: length)
            case 0x30: return .router(v6: false)  // multicast router advertisement (RFC 4286)
            default: break
            }
        }
        if proto == 103, group == .v4(0xE000_000D) { return .router(v6: false) }  // PIM hello, all PIM routers
        return group.isLinkLocalControl || !group.isMulticast ? .flood : .data(group)
    }

    static func parseIPv6(_ f: UnsafeRawBufferPointer, _ l3: Int) -> MulticastFrame {
        guard f.count >= l3 + 40, f[l3] >> 4 == 6 else { return .flood }
        let end = l3 + 40 + be16(f, l3 + 4)
        guard f.count >= end else { return .flood }
        let group = v6(f, l3 + 24)
        var next = f[l3 + 6], at = l3 + 40
        // hop-by-hop, routing and destination options (an MLD message carries a hop-by-hop
        // router alert); a fragment is data
        for _ in 0..<4 where next == 0 || next == 43 || next == 60 {
            guard at + 8 <= end else { return .flood }
            next = f[at]
            at += (Int(f[at + 1]) + 1) * 8
        }
        guard at <= end else { return .flood }
        if next == 58, at + 4 <= end, Self.isMLD(f[at]) {
            let length = end - at
            guard length >= 8 else { return .malformed }
            // the ICMPv6 checksum covers the pseudo-header: source, destination, length, 58
            let pseudo = InternetChecksum.pseudoHeader(f.baseAddress!, l3: l3, isIPv6: true, proto: 58, length: length)
            guard InternetChecksum.fold(InternetChecksum.sum(f.baseAddress! + at, count: length, initial: pseudo)) == 0xFFFF else { return .malformed }
            switch f[at] {
            case 130: return length >= 24 ? query(mld: f, at: at, length: length) : .malformed
            case 151: return .router(v6: true)
            default: return .mld(at: at, length: length)
            }
        }
        if next == 103, group == .v6(0xFF02_0000_0000_0000, 0x0D) { return .router(v6: true) }  // PIM hello
        return group.isLinkLocalControl || !group.isMulticast ? .flood : .data(group)
    }

    /// An IGMP query (v1: no response time, 10 s; v2: tenths of a second; v3: RFC 3376's
    /// floating-point code) and the group it asks about (0.0.0.0: general).
    static func query(igmp f: UnsafeRawBufferPointer, at: Int, length: Int) -> MulticastFrame {
        let code = Int64(f[at + 1])
        let tenths = code == 0 ? 100 : length >= 12 && code >= 128 ? (code & 0x0F | 0x10) << ((code >> 4 & 0x07) + 3) : code
        let group = GroupAddress.v4(be32(f, at + 4))
        return .query(v6: false, group: group == .v4(0) ? nil : group, maxResponse: tenths * 100_000_000)
    }

    /// An MLD query (v1: milliseconds; v2: RFC 3810's floating-point code) and its group.
    static func query(mld f: UnsafeRawBufferPointer, at: Int, length: Int) -> MulticastFrame {
        let code = Int64(be16(f, at + 4))
        let ms = length >= 28 && code >= 32768 ? (code & 0x0FFF | 0x1000) << ((code >> 12 & 0x07) + 3) : code
        let group = v6(f, at + 8)
        return .query(v6: true, group: group == .v6(0, 0) ? nil : group, maxResponse: ms * 1_000_000)
    }

    /// Each (group, joined) a report or leave says, as the kernel bridge reads it without
    /// source tracking: an IGMPv3/MLDv2 record of mode INCLUDE or TO_INCLUDE with no source
    /// is a leave, any other record a join; a record for a link-local control group, or not
    /// for a group, is ignored. Returns false if the message is cut short (nothing after the
    /// cut is taken; what came before it was).
    static func records(igmp f: UnsafeRawBufferPointer, at: Int, length: Int, _ body: (GroupAddress, Bool) -> Void) -> Bool {
        switch f[at] {
        case 0x12, 0x16, 0x17: take(.v4(be32(f, at + 4)), f[at] != 0x17, body)
        default: return v3Records(f, at: at, length: length, addressLength: 4, body)  // 0x22, IGMPv3
        }
        return true
    }

    /// The same for MLD: v1 reports (131) and done (132), v2 reports (143).
    static func records(mld f: UnsafeRawBufferPointer, at: Int, length: Int, _ body: (GroupAddress, Bool) -> Void) -> Bool {
        switch f[at] {
        case 131, 132:
            guard length >= 24 else { return false }
            take(v6(f, at + 8), f[at] == 131, body)
        default: return v3Records(f, at: at, length: length, addressLength: 16, body)  // 143, MLDv2
        }
        return true
    }

    /// The group records of an IGMPv3 or MLDv2 report (the same layout, with 4- or 16-byte
    /// addresses): type, aux length, source count, group, sources, aux data.
    static func v3Records(_ f: UnsafeRawBufferPointer, at: Int, length: Int, addressLength: Int, _ body: (GroupAddress, Bool) -> Void) -> Bool {
        let end = at + length
        var o = at + 8
        for _ in 0..<be16(f, at + 6) {
            guard o + 4 + addressLength <= end else { return false }
            let type = f[o], sources = be16(f, o + 2), next = o + 4 + addressLength * (1 + sources) + Int(f[o + 1]) * 4
            guard next <= end else { return false }
            if (1...6).contains(type) {
                take(addressLength == 4 ? .v4(be32(f, o + 4)) : v6(f, o + 4), !((type == 1 || type == 3) && sources == 0), body)
            }
            o = next
        }
        return true
    }

    /// Passes on a record's group unless it is a link-local control group or no group.
    static func take(_ group: GroupAddress, _ joined: Bool, _ body: (GroupAddress, Bool) -> Void) {
        if group.isMulticast, !group.isLinkLocalControl { body(group, joined) }
    }
}
