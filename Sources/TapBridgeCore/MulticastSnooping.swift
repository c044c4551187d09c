/// IGMP and MLD snooping, as the kernel bridge does it (on by default): membership reports
/// and leaves that arrive on a port make it a member of a group, per VLAN, for the membership
/// interval; queries and multicast routers' messages make it a router port. A frame to a known
/// group goes to its members and the router ports, one to an unknown group to the router ports
/// only; every frame to a link-local control group (224.0.0.0/24, ff02::1) is flooded as
/// before; IGMPv1/v2 and MLDv1 reports go to the router ports, IGMPv3/MLDv2 reports and leaves
/// (sent to link-local groups) are flooded. IGMPv3 and MLDv2 include/exclude modes are reduced as the kernel reduces
/// them without source tracking, to a port being in a group or not.
///
/// As in the kernel, snooping only narrows where frames go while a querier is known for the
/// frame's VLAN and IP version (a query heard in the last 255 s, or this bridge's own,
/// `--multicast-querier`): without one nobody asks hosts to report again, memberships would
/// lapse, so every multicast frame is flooded (memberships are still learned and listed).
public struct MulticastSnooping {
    public struct Configuration: Sendable, Equatable {
        /// Off: every multicast frame is flooded (`--no-multicast-snooping`).
        public var isEnabled = true
        /// How long a membership lasts without another report: RFC 3376's Group Membership
        /// Interval (robustness 2 × query interval 125 s + response time 10 s), the kernel's.
        public var membershipInterval: Duration = .seconds(260)
        /// How long a port stays a router port without another query or router message: the
        /// kernel's `multicast_querier_interval`.
        public var routerTimeout: Duration = .seconds(255)
        /// How long a membership lasts after a leave: the last member query time (2 × 1 s), in
        /// which another host behind the port that still wants the group answers a querier.
        public var leaveTime: Duration = .seconds(2)
        /// Most (VLAN, group) entries (the kernel's hash_max). A report for one more turns
        /// narrowing off, every multicast frame flooded, until entries age out below it: as the
        /// kernel turns snooping off there, so that a host that fills the table cannot cut the
        /// other hosts' groups off (their frames would go to the routers only).
        public var maximumGroups = 4096
        /// This bridge sends general queries itself (`--multicast-querier`): a querier is
        /// always known.
        public var isQuerier = false

        public init(isEnabled: Bool = true, isQuerier: Bool = false) {
            self.isEnabled = isEnabled
            self.isQuerier = isQuerier
        }
    }

    /// What snooping saw (`show stats`, section `multicast`).
    public struct Statistics: CounterOwner {
        public var reports: UInt64 = 0
        public var leaves: UInt64 = 0
        public var queries: UInt64 = 0
        public var routerMessages: UInt64 = 0
        public var malformed: UInt64 = 0
        public var groupsRefused: UInt64 = 0
        public var groups: UInt64 = 0

        public init() {}

        public static let counters: [Counter<Self>] = [
            Counter("reports", \.reports, "IGMP and MLD membership reports and report records that joined or refreshed a group"),
            Counter("leaves", \.leaves, "IGMP leaves, MLD dones and report records that left a group"),
            Counter("queries", \.queries, "IGMP and MLD queries heard: their ports lead to a querier"),
            Counter("router_messages", \.routerMessages, "PIM hellos and multicast router advertisements heard"),
            Counter("malformed", \.malformed, "IGMP and MLD messages that did not parse or failed their checksum (dropped)"),
            Counter("groups_refused", \.groupsRefused, "Reports for a new group past the 4096 the table holds (every multicast frame is flooded until groups age out)"),
            Counter("groups", \.groups, "Groups (per VLAN) with members now", gauge: true),
        ]
    }

    /// A group in a VLAN.
    public struct Key: Hashable, Sendable, Comparable {
        public var vlan: VLANID
        public var group: GroupAddress

        public static func < (a: Key, b: Key) -> Bool { (a.vlan.rawValue, a.group) < (b.vlan.rawValue, b.group) }
    }

    public var configuration: Configuration
    public internal(set) var statistics = Statistics()
    /// Members of each group, with when each membership ends (monotonic ns).
    var members: [Key: [PortID: Int64]] = [:]
    /// Router ports of each VLAN, with when each ends.
    var routers: [VLANID: [PortID: Int64]] = [:]
    /// The querier heard in each VLAN (`vlan * 2`: IGMP; `+ 1`: MLD): from when it counts (its
    /// first query's response time after it, when hosts have answered) until when.
    var queriers: [Int: (from: Int64, until: Int64)] = [:]
    /// When this bridge's own querier counts from (`startQuerying`: its first query's response
    /// time later; the kernel's `delay_time`).
    var ownQuerierFrom = Int64.min
    /// No membership or router port ends before this (nil: none exists).
    var nextExpiry: Int64? = nil
    /// The table was full when a report for a new group came: nothing is narrowed until it
    /// has room again.
    public internal(set) var isOverflowing = false

    public init(configuration: Configuration = Configuration()) { self.configuration = configuration }

    mutating func join(_ key: Key, port: PortID, now: Int64) {
        let until = now &+ configuration.membershipInterval.nanoseconds
        if members[key] == nil {
            guard members.count < configuration.maximumGroups else {
                isOverflowing = true
                return statistics.groupsRefused &+= 1
            }
            statistics.groups &+= 1
        }
        members[key, default: [:]][port] = until
        statistics.reports &+= 1
        nextExpiry = min(nextExpiry ?? until, until)
    }

    /// A leave, as the kernel takes it: while another querier is present nothing changes (it
    /// asks the group's other hosts, and its group-specific query shortens the membership);
    /// otherwise the membership ends after the last member query time (2 s).
    mutating func leave(_ key: Key, port: PortID, now: Int64) {
        statistics.leaves &+= 1
        if !configuration.isQuerier, hasQuerier(key.vlan, v6: key.group.isV6, now: now) { return }
        shorten(key, port: port, to: now &+ configuration.leaveTime.nanoseconds)
    }

    /// A group-specific query: every membership of the group ends within twice its response
    /// time (the last member query count), unless a report renews it.
    mutating func heardGroupQuery(_ key: Key, maxResponse: Int64, now: Int64) {
        for port in members[key]?.keys.map({ $0 }) ?? [] { shorten(key, port: port, to: now &+ 2 &* maxResponse) }
    }

    mutating func shorten(_ key: Key, port: PortID, to soon: Int64) {
        guard let until = members[key]?[port], soon < until else { return }
        members[key]?[port] = soon
        nextExpiry = min(nextExpiry ?? soon, soon)
    }

    /// A query (`maxResponse` set) or a router's message on `port`: a router port from now.
    mutating func heardRouter(on port: PortID, vlan: VLANID, maxResponse: Int64?, v6: Bool, now: Int64) {
        let until = now &+ configuration.routerTimeout.nanoseconds
        if let maxResponse {
            statistics.queries &+= 1
            let key = Int(vlan.rawValue) * 2 + (v6 ? 1 : 0)
            // a querier that was not there counts once hosts had time to answer it
            let from = queriers[key].flatMap { $0.until > now ? $0.from : nil } ?? now &+ maxResponse
            queriers[key] = (from, until)
        } else {
            statistics.routerMessages &+= 1
        }
        routers[vlan, default: [:]][port] = until
        nextExpiry = min(nextExpiry ?? until, until)
    }

    /// A group went: the table has room again.
    mutating func dropped(_ key: Key) {
        members[key] = nil
        statistics.groups &-= 1
        isOverflowing = false
    }

    /// Whether a querier is known in `vlan` for IPv6 (`v6`) or IPv4 groups.
    @inline(__always)
    func hasQuerier(_ vlan: VLANID, v6: Bool, now: Int64) -> Bool {
        if isOverflowing { return false }  // (narrowing is off while the table is full)
        if configuration.isQuerier, now >= ownQuerierFrom { return true }
        guard let q = queriers[Int(vlan.rawValue) * 2 + (v6 ? 1 : 0)] else { return false }
        return now >= q.from && now < q.until
    }

    /// This bridge sent its first query at `now`, asking for answers within `maxResponse`:
    /// its querier counts from when they are in.
    public mutating func startQuerying(now: Instant, maxResponse: Duration) {
        ownQuerierFrom = now.nanoseconds &+ maxResponse.nanoseconds
    }

    /// Whether `key` has members now (expired ones are dropped here, so a group whose last
    /// member expired is unknown, and flooded, at once).
    mutating func isRegistered(_ key: Key, now: Int64) -> Bool {
        guard var ports = members[key] else { return false }
        if ports.values.contains(where: { $0 <= now }) {
            ports = ports.filter { $0.value > now }
            if ports.isEmpty {
                dropped(key)
                return false
            }
            members[key] = ports
        }
        return true
    }

    /// Whether a frame to `key` (nil: a report, for the routers only) goes out of `port`.
    @inline(__always)
    func wants(_ port: PortID, key: Key?, vlan: VLANID, now: Int64) -> Bool {
        if let until = routers[vlan]?[port], until > now { return true }
        guard let key, let until = members[key]?[port] else { return false }
        return until > now
    }

    /// Drops every membership and router port that has ended.
    mutating func expire(now: Int64) {
        guard let next = nextExpiry, next <= now else { return }
        nextExpiry = nil
        for (key, ports) in members {
            let live = ports.filter { $0.value > now }
            if live.isEmpty {
                dropped(key)
            } else {
                if live.count != ports.count { members[key] = live }
                nextExpiry = min(nextExpiry ?? .max, live.values.min()!)
            }
        }
        queriers = queriers.filter { $0.value.until > now }
        for (vlan, ports) in routers {
            let live = ports.filter { $0.value > now }
            routers[vlan] = live.isEmpty ? nil : live
            if let first = live.values.min() { nextExpiry = min(nextExpiry ?? .max, first) }
        }
    }

    /// `port` is gone: it leaves every group and is no router port.
    mutating func remove(_ port: PortID) {
        for (key, ports) in members where ports[port] != nil {
            if ports.count == 1 {
                dropped(key)
            } else {
                members[key]?[port] = nil
            }
        }
        for (vlan, ports) in routers where ports[port] != nil { routers[vlan]?[port] = nil }
    }

    /// The queriers that count now (snooping narrows for these VLANs and IP versions): the
    /// bridge's own (every VLAN: `vlan` nil) and those heard.
    public func activeQueriers(now: Instant) -> [(vlan: VLANID?, v6: Bool)] {
        let t = now.nanoseconds
        if isOverflowing { return [] }
        var out: [(vlan: VLANID?, v6: Bool)] = configuration.isQuerier && t >= ownQuerierFrom ? [(nil, false), (nil, true)] : []
        for (key, q) in queriers.sorted(by: { $0.key < $1.key }) where t >= q.from && t < q.until {
            out.append((VLANID(UInt16(key / 2)), key % 2 == 1))
        }
        return out
    }

    /// The memberships and router ports now, in order (`show mdb`): each with the seconds
    /// it has left.
    public func listing(now: Instant) -> (groups: [(key: Key, port: PortID, seconds: Double)], routers: [(vlan: VLANID, port: PortID, seconds: Double)]) {
        let t = now.nanoseconds
        var groups: [(key: Key, port: PortID, seconds: Double)] = []
        for (key, ports) in members {
            for (port, until) in ports where until > t { groups.append((key, port, Double(until - t) / 1e9)) }
        }
        var found: [(vlan: VLANID, port: PortID, seconds: Double)] = []
        for (vlan, ports) in routers {
            for (port, until) in ports where until > t { found.append((vlan, port, Double(until - t) / 1e9)) }
        }
        groups.sort { ($0.key, $0.port.index) < ($1.key, $1.port.index) }
        found.sort { ($0.vlan.rawValue, $0.port.index) < ($1.vlan.rawValue, $1.port.index) }
        return (groups, found)
    }
}
