extension ForwardingTable {
    // MARK: Static entries and flushing

    /// Pins `mac` in `vlan` to `port`; it never ages or moves. Replaces any entry for the MAC.
    /// Returns `false` if the table is full of static entries.
    @discardableResult
    public mutating func addStatic(_ mac: MACAddress, on port: PortID, vlan: VLANID) -> Bool {
        let key = Self.key(mac, vlan)
        if let slot = index[key] { remove(slot: slot) }
        if index.count >= configuration.maximumEntries, !makeRoomInTable(at: .min) { return false }
        insert(Entry(key: key, port: port, isStatic: true, lastSeen: 0, lastMoved: .min, prev: -1, next: -1))
        return true
    }

    /// Removes the entry for `mac` in `vlan`, static or learned; `false` if there was none.
    @discardableResult
    public mutating func remove(_ mac: MACAddress, vlan: VLANID) -> Bool {
        guard let slot = index[Self.key(mac, vlan)] else { return false }
        remove(slot: slot)
        return true
    }

    /// Removes the entries matching every given criterion: learned ones, and static ones too if
    /// `includingStatic`. `flush()` empties the learned part of the table. Returns how many.
    @discardableResult
    public mutating func flush(port: PortID? = nil, vlan: VLANID? = nil, includingStatic: Bool = false) -> Int {
        flush(from: 0, positions: slab.count, port: port, vlan: vlan, includingStatic: includingStatic).removed
    }

    /// Flushes, as `flush(port:vlan:includingStatic:)`, the entries at slab positions `start
    /// ..< start + positions`; returns how many it removed and where to go on (`nil`: the end).
    /// A large table is flushed in slices between forwarding rounds this way (an entry keeps
    /// its position while it lives): two million entries at once held the loop for 370 ms.
    public mutating func flush(from start: Int, positions: Int, port: PortID? = nil, vlan: VLANID? = nil, includingStatic: Bool = false)
        -> (removed: Int, next: Int?)
    {
        let end = min(slab.count, max(0, start) + max(positions, 0))
        var removed = 0
        var i = max(0, start)
        while i < end {
            let e = slab[i]
            if index[e.key] == Int32(i), port == nil || e.port == port,
                vlan == nil || UInt16(truncatingIfNeeded: e.key >> 48) == vlan!.rawValue, !e.isStatic || includingStatic
            {
                remove(slot: Int32(i))
                removed += 1
            }
            i += 1
        }
        return (removed, end < slab.count ? end : nil)
    }

    /// Every entry that has not aged out at `now`, sorted by VLAN then MAC.
    public func entries(at now: Instant) -> [EntrySnapshot] {
        index.pairs.compactMap { _, slot -> EntrySnapshot? in
            let e = slab[Int(slot)]
            guard !isExpired(e, now.nanoseconds) else { return nil }
            return EntrySnapshot(
                mac: MACAddress(rawValue: e.key), vlan: VLANID(UInt16(truncatingIfNeeded: e.key >> 48)),
                port: e.port, isStatic: e.isStatic,
                age: e.isStatic ? .zero : .nanoseconds(now.nanoseconds &- e.lastSeen))
        }.sorted { ($0.vlan, $0.mac) < ($1.vlan, $1.mac) }
    }

    /// Up to `limit` live entries from slab position `start` on, in slab order, and the position
    /// to go on from (`nil`: none left): for answering `show fdb` in slices between forwarding
    /// rounds. An entry present during the whole walk is reported exactly once (an entry keeps
    /// its position while it lives, moves included); one added or removed meanwhile may or may
    /// not be. Costs O(positions visited), never a pass over the whole table.
    public func entries(from start: Int, limit: Int, at now: Instant) -> (entries: [EntrySnapshot], next: Int?) {
        var out: [EntrySnapshot] = []
        out.reserveCapacity(min(limit, max(0, slab.count - start)))
        var i = max(0, start)
        while i < slab.count, out.count < limit {
            let e = slab[i]
            if index[e.key] == Int32(i), !isExpired(e, now.nanoseconds) {
                out.append(EntrySnapshot(
                    mac: MACAddress(rawValue: e.key), vlan: VLANID(UInt16(truncatingIfNeeded: e.key >> 48)),
                    port: e.port, isStatic: e.isStatic,
                    age: e.isStatic ? .zero : .nanoseconds(now.nanoseconds &- e.lastSeen)))
            }
            i += 1
        }
        return (out, i < slab.count ? i : nil)
    }
}
