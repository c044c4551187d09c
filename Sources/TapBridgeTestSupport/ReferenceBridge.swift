public import TapBridgeCore

/// A deliberately naive learning bridge, written straight from the rules with arrays and linear
/// searches and no shared code with `Bridge`'s decision or `ForwardingTable`, to cross-check
/// them in a differential test. Slow on purpose; never use it for traffic.
public final class ReferenceBridge {
    struct Entry {
        var mac: UInt64
        var vlan: UInt16
        var port: Int
        var isStatic: Bool
        var lastSeen: Int64
        var lastMoved: Int64?
        var touchOrder: Int
    }

    struct Port {
        var mode: VLANMode
        var learning: Bool
        var flooding: Bool
        var group: UInt16
        var isActive = true
    }

    let config: Bridge.Configuration
    var ports: [Port] = []
    var entries: [Entry] = []
    var order = 0
    /// Drops by port index and reason.
    public private(set) var drops: [[DropReason: Int]] = []
    /// FDB counters kept the same way as `ForwardingTable.Statistics`.
    public private(set) var learned = 0, moved = 0, moveDamped = 0, evicted = 0, refused = 0
    /// Entries removed because they aged out (by a sweep, or met aged out by a lookup, a
    /// learn or an eviction).
    public private(set) var expiredCount = 0

    public init(configuration: Bridge.Configuration) { config = configuration }

    /// Adds a port; ports are numbered 0, 1, 2, ... like a fresh `Bridge`.
    public func addPort(_ c: PortConfiguration) {
        ports.append(Port(mode: c.vlanMode, learning: c.learning, flooding: c.flooding, group: c.splitHorizonGroup))
        drops.append([:])
    }

    /// Pins a MAC.
    public func addStatic(_ mac: MACAddress, port: Int, vlan: VLANID) {
        entries.removeAll { $0.mac == mac.rawValue && $0.vlan == vlan.rawValue }
        entries.append(Entry(mac: mac.rawValue, vlan: vlan.rawValue, port: port, isStatic: true, lastSeen: 0, lastMoved: nil, touchOrder: 0))
    }

    func expired(_ e: Entry, _ now: Int64) -> Bool { !e.isStatic && now - e.lastSeen >= config.table.ageingTime.nanoseconds }

    /// Removes aged-out entries, like `ForwardingTable.expire(at:)`.
    public func expire(at now: Instant) -> Int {
        let before = entries.count
        entries.removeAll { expired($0, now.nanoseconds) }
        expiredCount += before - entries.count
        return before - entries.count
    }

    /// Removes port `port`: its entries (static ones too) go, and it is no flood target.
    public func removePort(_ port: Int) {
        ports[port].isActive = false
        entries.removeAll { $0.port == port }
    }

    /// Forgets learned entries (and static ones if asked) on `port` and in `vlan` (nil: any);
    /// returns how many, aged-out ones not yet removed included.
    public func flush(port: Int?, vlan: VLANID?, includingStatic: Bool) -> Int {
        let before = entries.count
        entries.removeAll { e in
            (port.map { e.port == $0 } ?? true) && (vlan.map { e.vlan == $0.rawValue } ?? true) && (!e.isStatic || includingStatic)
        }
        return before - entries.count
    }

    func learnedCount(_ port: Int) -> Int { entries.filter { $0.port == port && !$0.isStatic }.count }

    /// Removes the least recently seen learned entry of `port`, counting it as expired if it
    /// had aged out and as evicted otherwise.
    func evictOldest(of port: Int, now: Int64) {
        let candidates = entries.indices.filter { entries[$0].port == port && !entries[$0].isStatic }
        let oldest = candidates.min { entries[$0].touchOrder < entries[$1].touchOrder }!
        if !expired(entries[oldest], now) { evicted += 1 } else { expiredCount += 1 }
        entries.remove(at: oldest)
    }

    func learn(_ mac: UInt64, port: Int, vlan: UInt16, now: Int64) {
        order += 1
        if let i = entries.firstIndex(where: { $0.mac == mac && $0.vlan == vlan }) {
            if entries[i].isStatic { return }
            if expired(entries[i], now) {
                entries.remove(at: i)
                expiredCount += 1
            } else if entries[i].port == port {
                entries[i].lastSeen = now
                entries[i].touchOrder = order
                return
            } else {
                if let hold = config.table.moveHoldDown?.nanoseconds, let last = entries[i].lastMoved, now - last < hold {
                    moveDamped += 1
                    return
                }
                var e = entries.remove(at: i)
                if let limit = config.table.maximumEntriesPerPort {
                    while learnedCount(port) >= limit { evictOldest(of: port, now: now) }
                }
                e.port = port
                e.lastSeen = now
                e.lastMoved = now
                e.touchOrder = order
                entries.append(e)
                moved += 1
                return
            }
        }
        if let limit = config.table.maximumEntriesPerPort {
            while learnedCount(port) >= limit, learnedCount(port) > 0 { evictOldest(of: port, now: now) }
        }
        if entries.count >= config.table.maximumEntries {
            if expire(at: Instant(nanoseconds: now)) == 0 {
                let counts = ports.indices.map { learnedCount($0) }
                guard let most = counts.max(), most > 0 else { refused += 1; return }
                evictOldest(of: counts.firstIndex(of: most)!, now: now)
            }
        }
        entries.append(Entry(mac: mac, vlan: vlan, port: port, isStatic: false, lastSeen: now, lastMoved: nil, touchOrder: order))
        learned += 1
    }

    func lookup(_ mac: UInt64, vlan: UInt16, now: Int64) -> Int? {
        guard let i = entries.firstIndex(where: { $0.mac == mac && $0.vlan == vlan }) else { return nil }
        if expired(entries[i], now) {
            entries.remove(at: i)
            expiredCount += 1
            return nil
        }
        return entries[i].port
    }

    func drop(_ port: Int, _ reason: DropReason) -> [(port: Int, frame: [UInt8])] {
        drops[port][reason, default: 0] += 1
        return []
    }

    /// Where `frame` received on port `ingress` at `now` goes, and in which bytes: one element
    /// per egress port, in ascending port order.
    public func process(_ frame: [UInt8], from ingress: Int, at now: Instant) -> [(port: Int, frame: [UInt8])] {
        let t = now.nanoseconds
        if frame.count < 14 { return drop(ingress, .runt) }
        if frame.count > config.maximumFrameLength { return drop(ingress, .oversized) }
        func u16(_ o: Int) -> UInt16 { UInt16(frame[o]) << 8 | UInt16(frame[o + 1]) }
        let type = u16(12)
        if (type == 0x8100 || type == 0x88A8) && frame.count < 18 { return drop(ingress, .truncatedTag) }
        if (type == 0x8100 || type == 0x88A8), (u16(16) == 0x8100 || u16(16) == 0x88A8), frame.count < 22 {
            return drop(ingress, .truncatedTag)
        }
        var dst: UInt64 = 0, src: UInt64 = 0
        for k in 0..<6 { dst = dst << 8 | UInt64(frame[k]); src = src << 8 | UInt64(frame[6 + k]) }
        if src & (1 << 40) != 0 || src == 0 { return drop(ingress, .invalidSource) }
        if dst >> 4 == 0x0180_C200_000, !config.forwardsLinkLocal { return drop(ingress, .linkLocalControl) }
        let mode = ports[ingress].mode
        let isTagged = type == config.vlanProtocol
        let tci = isTagged ? u16(14) : 0
        var vlan: UInt16
        if isTagged && tci & 0xFFF != 0 {
            vlan = tci & 0xFFF
            if vlan == 0xFFF { return drop(ingress, .invalidVLAN) }
            if !mode.members.contains(VLANID(vlan)) { return drop(ingress, .vlanNotAllowed) }
        } else {
            guard let pvid = mode.untaggedVLAN else { return drop(ingress, .untaggedNotAllowed) }
            vlan = pvid.rawValue
        }
        var targets: [Int]
        if config.isHub {
            targets = floodTargets(ingress, vlan)
        } else {
            if ports[ingress].learning { learn(src, port: ingress, vlan: vlan, now: t) }
            if dst & (1 << 40) != 0 {
                targets = floodTargets(ingress, vlan)
            } else if let p = lookup(dst, vlan: vlan, now: t) {
                if p == ingress { return drop(ingress, .sameSegment) }
                if ports[ingress].group != 0 && ports[p].group == ports[ingress].group { return drop(ingress, .splitHorizon) }
                if !ports[p].mode.members.contains(VLANID(vlan)) { return drop(ingress, .egressFiltered) }
                targets = [p]
            } else {
                targets = floodTargets(ingress, vlan)
            }
        }
        if targets.isEmpty { return drop(ingress, .noEgressPort) }
        // Egress bytes: untagged payload, then re-tag as the port wants.
        let inner = isTagged ? Array(frame[0..<12] + frame[16...]) : frame
        let priority = tci & 0xE000 | tci & 0x1000
        return targets.map { p in
            if ports[p].mode.untaggedVLAN?.rawValue == vlan { return (p, inner) }
            let newTCI = priority | vlan
            let tag: [UInt8] = [UInt8(config.vlanProtocol >> 8), UInt8(config.vlanProtocol & 0xFF), UInt8(newTCI >> 8), UInt8(newTCI & 0xFF)]
            return (p, Array(inner[0..<12]) + tag + Array(inner[12...]))
        }
    }

    func floodTargets(_ ingress: Int, _ vlan: UInt16) -> [Int] {
        ports.indices.filter {
            $0 != ingress && ports[$0].isActive && ports[$0].flooding && ports[$0].mode.members.contains(VLANID(vlan))
                && (ports[ingress].group == 0 || ports[$0].group != ports[ingress].group)
        }
    }
}
