/// The forwarding database (FDB): which port each (VLAN, MAC) was last seen on.
///
/// ## Design
///
/// Entries are keyed by a single `UInt64` (`vlan << 48 | mac`), held in a slab array and found
/// through a hash index, so the data path does one hash probe to learn a source and one to look up
/// a destination, and nothing is allocated once the table has reached its working size.
///
/// Every learned entry also sits in an intrusive doubly-linked list of its port, ordered from
/// least to most recently seen (refreshing moves an entry to the tail: a few stores, and none
/// when it already is the tail, the common case of one busy host). Those per-port lists give
/// us, at no extra cost:
///
/// - **Ageing** without scanning: the oldest entry of every port is its list head, so a sweep
///   (`expire(at:)`) pops heads until they are fresh, and `nextExpiry` is the minimum over the
///   heads. Lookups also check the age, so an entry is never used after it expired even if no
///   sweep ran ("lazy expiry"); the sweep only reclaims the memory.
/// - **Fair eviction** when the table is full (Open vSwitch `lib/mac-learning.c` does the same):
///   expired entries are reclaimed first, then the least recently seen entry of the port that
///   holds the most entries is evicted. A host flooding random source MACs from one port can
///   therefore only churn its own port's entries; the hosts behind every other port stay known.
///   The cost is a scan over the ports (not the entries) when the table is full.
/// - **A per-port limit** (optional): a port at its limit evicts its own least recently seen
///   entry to learn a new one. The kernel's `fdb_max_learned` refuses instead; evicting keeps
///   the port's currently active hosts reachable, which is what a user of a lab bridge expects.
///
/// Static entries (`addStatic`) never age, never move and are never evicted; they count
/// towards `maximumEntries` but not towards a per-port limit.
///
/// MAC moves (a source seen on another port than the one it is known on) are counted. With a
/// `moveHoldDown`, a MAC that already moved less than that long ago is not moved again
/// (`.refused(.moveDamped)`): two ports that keep claiming the same MAC (a loop, a
/// misconfigured VM pair) then cannot make the table flap on every frame.
public struct ForwardingTable: Sendable {
    /// Tunables; the defaults are those of Open vSwitch and the Linux bridge.
    public struct Configuration: Sendable, Equatable {
        /// 300 s: 802.1D's recommended ageing time, the kernel's and OVS's default (`--ageing`
        /// shows this one).
        public static let defaultAgeingTime: Duration = .seconds(300)
        /// 8192: OVS's `MAC_DEFAULT_MAX` (`--max-macs` shows this one).
        public static let defaultMaximumEntries = 8192
        /// How long an entry lives after its MAC was last seen as a source.
        public var ageingTime: Duration
        /// The most entries (static and learned) the table holds.
        public var maximumEntries: Int
        /// The most learned entries a single port may hold; `nil` for no per-port limit.
        public var maximumEntriesPerPort: Int? = nil
        /// A MAC that moved less than this long ago is not moved again; `nil` disables damping.
        public var moveHoldDown: Duration? = nil

        public init(
            ageingTime: Duration = Configuration.defaultAgeingTime, maximumEntries: Int = Configuration.defaultMaximumEntries,
            maximumEntriesPerPort: Int? = nil, moveHoldDown: Duration? = nil
        ) {
            self.ageingTime = ageingTime
            self.maximumEntries = maximumEntries
            self.maximumEntriesPerPort = maximumEntriesPerPort
            self.moveHoldDown = moveHoldDown
        }
    }

    /// What `learn` did.
    public enum LearnOutcome: Equatable, Sendable {
        /// A new entry was created.
        case learned
        /// The entry existed on this port; its age was reset.
        case refreshed
        /// The entry existed on another port and now points here.
        case moved(from: PortID)
        /// The table would not take the entry.
        case refused(Refusal)
        /// Nothing to learn.
        case ignored(IgnoreReason)
    }

    /// Why an entry was not learned although it could have been.
    public enum Refusal: Equatable, Sendable {
        /// The table is full of static entries, nothing could be evicted.
        case tableFull
        /// The MAC moved less than `moveHoldDown` ago.
        case moveDamped
    }

    /// Why a source was not considered at all.
    public enum IgnoreReason: Equatable, Sendable {
        /// Multicast, broadcast or all-zero source.
        case invalidSource
        /// A static entry owns the MAC.
        case staticEntry
    }

    /// Lifetime counters, and the table's size and limit when they were read.
    public struct Statistics: Equatable, Sendable {
        /// Entries in the table (a gauge).
        public var entries: UInt64 = 0
        /// The table's size limit (a gauge).
        public var maximumEntries: UInt64 = 0
        /// New entries created by learning.
        public var learned: UInt64 = 0
        /// Sources seen again on the port they are known on.
        public var refreshed: UInt64 = 0
        /// Sources seen on a new port and moved there.
        public var moved: UInt64 = 0
        /// Moves refused by the hold-down.
        public var moveDamped: UInt64 = 0
        /// Entries removed because they aged out (on lookup or in a sweep).
        public var expired: UInt64 = 0
        /// Entries removed to make room (table full, or per-port limit).
        public var evicted: UInt64 = 0
        /// Entries not learned because the table was full of static entries.
        public var refused: UInt64 = 0
        public init() {}
    }

    /// One entry, as reported by `entries(at:)`.
    public struct EntrySnapshot: Equatable, Sendable {
        public var mac: MACAddress
        public var vlan: VLANID
        public var port: PortID
        public var isStatic: Bool
        /// Time since the MAC was last seen (zero for static entries).
        public var age: Duration
    }

    struct Entry: Sendable {
        var key: UInt64
        var port: PortID
        var isStatic: Bool
        var lastSeen: Int64
        var lastMoved: Int64
        var prev: Int32
        var next: Int32
    }

    struct PortList: Sendable {
        var head: Int32 = -1
        var tail: Int32 = -1
        var learned: Int = 0
        var statics: Int = 0
    }

    public let configuration: Configuration
    /// The lifetime counters as they are bumped; `statistics` adds the size.
    var counts = Statistics()
    /// The counters and the table's size now.
    public var statistics: Statistics {
        var s = counts
        s.entries = UInt64(count)
        s.maximumEntries = UInt64(configuration.maximumEntries)
        return s
    }

    var index: MACIndex
    var slab: [Entry] = []
    var freeSlots: [Int32] = []
    var ports: [PortList] = []
    let ageingNanoseconds: Int64
    let holdDownNanoseconds: Int64?

    /// Creates an empty table.
    public init(configuration: Configuration = Configuration()) {
        precondition(configuration.maximumEntries > 0, "maximumEntries must be positive")
        precondition(configuration.ageingTime > .zero, "ageingTime must be positive")
        self.configuration = configuration
        ageingNanoseconds = configuration.ageingTime.nanoseconds
        holdDownNanoseconds = configuration.moveHoldDown?.nanoseconds
        index = MACIndex(minimumCapacity: min(configuration.maximumEntries, 1 << 12))
    }

    /// Number of entries (static and learned), including expired ones not yet swept.
    public var count: Int { index.count }

    /// Learned entries currently held for `port` (not counting static ones).
    public func learnedCount(on port: PortID) -> Int { port.index < ports.count ? ports[port.index].learned : 0 }

    @inline(__always) static func key(_ mac: MACAddress, _ vlan: VLANID) -> UInt64 {
        UInt64(vlan.rawValue) << 48 | mac.rawValue
    }

    @inline(__always) func isExpired(_ e: Entry, _ now: Int64) -> Bool {
        !e.isStatic && now &- e.lastSeen >= ageingNanoseconds
    }

    // MARK: Learning and lookup

    /// Records that `mac` was seen as a source on `port` in `vlan` at `now`.
    @discardableResult
    public mutating func learn(_ mac: MACAddress, on port: PortID, vlan: VLANID, at now: Instant) -> LearnOutcome {
        guard mac.isValidSource else { return .ignored(.invalidSource) }
        let key = Self.key(mac, vlan)
        let t = now.nanoseconds
        if let slot = index[key] {
            let e = slab[Int(slot)]
            if e.isStatic { return .ignored(.staticEntry) }
            if isExpired(e, t) {
                remove(slot: slot)
                counts.expired &+= 1
            } else if e.port == port {
                touch(slot, at: t)
                counts.refreshed &+= 1
                return .refreshed
            } else {
                if let hold = holdDownNanoseconds, e.lastMoved != .min, t &- e.lastMoved < hold {
                    counts.moveDamped &+= 1
                    return .refused(.moveDamped)
                }
                let from = e.port
                unlink(slot)
                makeRoomOnPort(port, at: t)
                slab[Int(slot)].port = port
                slab[Int(slot)].lastSeen = t
                slab[Int(slot)].lastMoved = t
                link(slot)
                counts.moved &+= 1
                return .moved(from: from)
            }
        }
        makeRoomOnPort(port, at: t)
        if index.count >= configuration.maximumEntries, !makeRoomInTable(at: t) {
            counts.refused &+= 1
            return .refused(.tableFull)
        }
        insert(Entry(key: key, port: port, isStatic: false, lastSeen: t, lastMoved: .min, prev: -1, next: -1))
        counts.learned &+= 1
        return .learned
    }

    /// The port `mac` was learned on in `vlan`, or `nil` if unknown or aged out (an aged-out entry
    /// is removed on the spot).
    public mutating func lookup(_ mac: MACAddress, vlan: VLANID, at now: Instant) -> PortID? {
        guard let slot = index[Self.key(mac, vlan)] else { return nil }
        let e = slab[Int(slot)]
        if isExpired(e, now.nanoseconds) {
            remove(slot: slot)
            counts.expired &+= 1
            return nil
        }
        return e.port
    }

    /// The port of `mac` without side effects (expired entries still answer `nil`).
    public func peek(_ mac: MACAddress, vlan: VLANID, at now: Instant) -> PortID? {
        guard let slot = index[Self.key(mac, vlan)] else { return nil }
        let e = slab[Int(slot)]
        return isExpired(e, now.nanoseconds) ? nil : e.port
    }

    // MARK: Ageing

    /// Removes every learned entry that has aged out at `now`; returns how many.
    @discardableResult
    public mutating func expire(at now: Instant) -> Int {
        let t = now.nanoseconds
        var removed = 0
        for p in ports.indices {
            while ports[p].head >= 0, isExpired(slab[Int(ports[p].head)], t) {
                remove(slot: ports[p].head)
                removed += 1
            }
        }
        counts.expired &+= UInt64(removed)
        return removed
    }

    /// When the next learned entry will age out, or `nil` if none can; the event loop sleeps
    /// no longer than this.
    public var nextExpiry: Instant? {
        var earliest: Int64? = nil
        for list in ports where list.head >= 0 {
            let seen = slab[Int(list.head)].lastSeen
            if earliest == nil || seen < earliest! { earliest = seen }
        }
        return earliest.map { Instant(nanoseconds: $0 &+ ageingNanoseconds) }
    }

    // MARK: Internals

    /// Makes room for one more learned entry on `port` under the per-port limit.
    mutating func makeRoomOnPort(_ port: PortID, at t: Int64) {
        guard let limit = configuration.maximumEntriesPerPort else { return }
        ensurePort(port)
        while ports[port.index].learned >= limit, ports[port.index].head >= 0 {
            let head = ports[port.index].head
            if isExpired(slab[Int(head)], t) { counts.expired &+= 1 } else { counts.evicted &+= 1 }
            remove(slot: head)
        }
    }

    /// Frees one place in a full table: aged-out entries first, then the least recently seen entry
    /// of the port with the most learned entries. `false` if only static entries are left.
    mutating func makeRoomInTable(at t: Int64) -> Bool {
        if t != .min, expire(at: Instant(nanoseconds: t)) > 0 { return true }
        var victimPort = -1
        for p in ports.indices where ports[p].learned > 0 {
            if victimPort < 0 || ports[p].learned > ports[victimPort].learned { victimPort = p }
        }
        guard victimPort >= 0 else { return false }
        remove(slot: ports[victimPort].head)
        counts.evicted &+= 1
        return true
    }

    mutating func ensurePort(_ port: PortID) {
        if port.index >= ports.count {
            ports.append(contentsOf: repeatElement(PortList(), count: port.index + 1 - ports.count))
        }
    }

    mutating func insert(_ entry: Entry) {
        let slot: Int32
        if let free = freeSlots.popLast() {
            slot = free
            slab[Int(slot)] = entry
        } else {
            slot = Int32(slab.count)
            slab.append(entry)
        }
        index.set(entry.key, slot)
        ensurePort(entry.port)
        if entry.isStatic { ports[entry.port.index].statics += 1 } else { link(slot) }
    }

    mutating func remove(slot: Int32) {
        let e = slab[Int(slot)]
        if e.isStatic { ports[e.port.index].statics -= 1 } else { unlink(slot) }
        index.remove(e.key)
        freeSlots.append(slot)
    }

    /// Appends a learned entry to its port's list (most recently seen end).
    mutating func link(_ slot: Int32) {
        let p = slab[Int(slot)].port.index
        ensurePort(slab[Int(slot)].port)
        let tail = ports[p].tail
        slab[Int(slot)].prev = tail
        slab[Int(slot)].next = -1
        if tail >= 0 { slab[Int(tail)].next = slot } else { ports[p].head = slot }
        ports[p].tail = slot
        ports[p].learned += 1
    }

    mutating func unlink(_ slot: Int32) {
        let e = slab[Int(slot)]
        let p = e.port.index
        if e.prev >= 0 { slab[Int(e.prev)].next = e.next } else { ports[p].head = e.next }
        if e.next >= 0 { slab[Int(e.next)].prev = e.prev } else { ports[p].tail = e.prev }
        ports[p].learned -= 1
    }

    /// Marks a learned entry as seen at `t`: moves it to the tail of its port's list.
    mutating func touch(_ slot: Int32, at t: Int64) {
        slab[Int(slot)].lastSeen = t
        let p = slab[Int(slot)].port.index
        if ports[p].tail != slot {
            unlink(slot)
            link(slot)
        }
    }
}

extension ForwardingTable.Statistics: CounterOwner {
    public static let counters: [Counter<Self>] = [
        .init("entries", \.entries, "MAC table entries.", gauge: true),
        .init("max_entries", \.maximumEntries, "MAC table size limit.", gauge: true),
        .init("learned", \.learned, "MACs learned."),
        .init("refreshed", \.refreshed, "MACs seen again on their port."),
        .init("moved", \.moved, "MACs that moved to another port."),
        .init("move_damped", \.moveDamped, "Moves refused by the hold-down."),
        .init("expired", \.expired, "Entries aged out."),
        .init("evicted", \.evicted, "Entries evicted to make room."),
        .init("refused", \.refused, "MACs not learned: table full of static entries."),
    ]
}
