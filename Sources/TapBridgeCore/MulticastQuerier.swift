/// The general queries a bridge that is its segment's querier sends (`--multicast-querier`, as
/// the kernel's `mcast_querier 1`): IGMPv3 from 0.0.0.0 (what the kernel bridge sends without
/// an address) and MLDv2 from a link-local address made from the bridge's MAC (RFC 4291's
/// modified EUI-64: hosts take MLD queries only from a link-local source), each with a router
/// alert, a hop limit of 1, a maximum response time of 10 s and the query interval, 125 s.
public enum MulticastQuerier {
    /// RFC 3376's query interval: hosts report again within the response time of each query,
    /// well inside the 260 s membership interval.
    public static let interval: Duration = .seconds(125)
    /// How long hosts have to answer (the queries' maximum response time).
    public static let responseTime: Duration = .seconds(10)

    /// An IGMPv3 general query from `source`, an Ethernet frame.
    public static func igmpQuery(from source: MACAddress) -> [UInt8] {
        var f = ethernet(to: [0x01, 0x00, 0x5E, 0x00, 0x00, 0x01], from: source, type: 0x0800)
        let l3 = f.count
        // IPv4: a 24-byte header (a router alert option), TOS 0xc0, TTL 1, IGMP, 0.0.0.0 -> 224.0.0.1
        f += [0x46, 0xC0, 0x00, 36, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 224, 0, 0, 1, 0x94, 0x04, 0x00, 0x00]
        storeChecksum(in: &f, at: l3 + 10, over: l3, count: 24)
        // IGMPv3 query: max response 10 s (100), group 0, QRV 2, QQIC 125, no source
        let l4 = f.count
        f += [0x11, 100, 0, 0, 0, 0, 0, 0, 0x02, 125, 0, 0]
        storeChecksum(in: &f, at: l4 + 2, over: l4, count: 12)
        return f
    }

    /// An MLDv2 general query from `source` (and its link-local address), an Ethernet frame.
    public static func mldQuery(from source: MACAddress) -> [UInt8] {
        var f = ethernet(to: [0x33, 0x33, 0x00, 0x00, 0x00, 0x01], from: source, type: 0x86DD)
        let l3 = f.count
        let m = source.octets
        let eui: [UInt8] = [m[0] ^ 0x02, m[1], m[2], 0xFF, 0xFE, m[3], m[4], m[5]]
        // IPv6: payload 36 (8 hop-by-hop + 28 MLD), next header hop-by-hop, hop limit 1, fe80::EUI-64 -> ff02::1
        f += [0x60, 0, 0, 0, 0, 36, 0, 1] + [0xFE, 0x80, 0, 0, 0, 0, 0, 0] + eui + [0xFF, 0x02] + [UInt8](repeating: 0, count: 13) + [1]
        // hop-by-hop: next ICMPv6, router alert (MLD), PadN
        f += [58, 0, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00]
        let l4 = f.count
        // MLDv2 query: max response 10,000 ms, address ::, QRV 2, QQIC 125, no source
        f += [130, 0, 0, 0, 0x27, 0x10, 0, 0] + [UInt8](repeating: 0, count: 16) + [0x02, 125, 0, 0]
        let pseudo = f.withUnsafeBytes { InternetChecksum.pseudoHeader($0.baseAddress!, l3: l3, isIPv6: true, proto: 58, length: 28) }
        storeChecksum(in: &f, at: l4 + 2, over: l4, count: 28, initial: pseudo)
        return f
    }

    static func ethernet(to destination: [UInt8], from source: MACAddress, type: UInt16) -> [UInt8] {
        destination + source.octets + [UInt8(type >> 8), UInt8(type & 0xFF)]
    }

    /// Stores at `offset` the Internet checksum of `count` bytes from `start` (and `initial`,
    /// a pseudo-header's sum); the field is zero while it is summed.
    static func storeChecksum(in f: inout [UInt8], at offset: Int, over start: Int, count: Int, initial: UInt64 = 0) {
        f.withUnsafeMutableBytes { b in
            b.storeBytes(of: ~InternetChecksum.fold(InternetChecksum.sum(b.baseAddress! + start, count: count, initial: initial)), toByteOffset: offset, as: UInt16.self)
        }
    }
}

extension ForwardingEngine {
    /// Sends `frame`, made by the bridge itself (a query), out of every port in `vlan` that
    /// takes flooded frames, tagged where the port carries the VLAN tagged; counted as sent on
    /// each. Not called while a batch is being forwarded.
    public func originate(_ frame: [UInt8], vlan: VLANID) {
        var tagged = frame
        let tci = vlan.rawValue, tpid = bridge.configuration.vlanProtocol
        tagged.insert(contentsOf: [UInt8(tpid >> 8), UInt8(tpid & 0xFF), UInt8(tci >> 8), UInt8(tci & 0xFF)], at: 12)
        bridge.floodScope = .all
        isFlooding = true  // (a TAP whose host is not up is not a drop, as in a flood)
        defer { isFlooding = false }
        bridge.forEachFloodPort(vlan: vlan, excluding: PortID(UInt16.max), countWithheld: false) { port, tagging in
            guard let device = devices[port.index] else { return }
            willFlush(port)
            let out = tagging == .tagged ? tagged : frame
            let outcome = out.withUnsafeBytes { device.transmit($0, offload: .none, to: port) }
            count(outcome, on: port, bytes: out.count)
        }
        flushDevices()
    }

    /// The VLANs some port carries (where a querier asks).
    public var vlansInUse: [VLANID] { bridge.vlansInUse }
}

extension Bridge {
    var vlansInUse: [VLANID] {
        var all = VLANSet()
        for port in activePorts { for v in ports[port.index].members { all.insert(v) } }
        return Array(all)
    }
}
