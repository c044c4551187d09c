import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// IGMP/MLD snooping on golden frames that scapy built (its IGMP, IGMPv3 and MLD layers: an
/// implementation of its own, checksums included). Port 0 sends group traffic, port 1's host
/// joins, port 2's never does, port 3 leads to a multicast router. The bridge is its own
/// querier (`isQuerier`, `--multicast-querier`) unless a test says otherwise: without any
/// querier, snooping narrows nothing (as the kernel's).
@Suite("IGMP and MLD snooping")
struct MulticastSnoopingTests {
    static let golden: [String: String] = [
        "igmpv1Report": "01005e01020302000000000208004500001c000100000102bed90a000002ef0102031214fce6ef010203",
        "igmpv2Report": "01005e01020302000000000208004600002000010000010229d10a000002ef010203940400001614f8e6ef010203",
        "igmpv2Leave": "01005e0000020200000000020800460000200001000001023ad30a000002e0000002940400001714f7e6ef010203",
        // records: TO_EX{} 239.1.2.3, ALLOW{10.0.0.7} 239.9.9.9, IS_EX{} 224.0.0.251 (link-local: ignored)
        "igmpv3Join": "01005e000016020000000002080046c0003c00010000010239e30a000002e0000016940400002200fee00000000304000000ef01020305000001ef0909090a00000702000000e00000fb",
        // record: TO_IN{} 239.1.2.3
        "igmpv3Leave": "01005e000016020000000002080046c0002800010000010239f70a000002e0000016940400002200e9f90000000103000000ef010203",
        // IGMPv2 group-specific query for 239.1.2.3, maximum response 1 s
        "igmpGroupQuery": "01005e01020302000000000908004600002000010000010229ca0a000009ef01020394040000110afdf0ef010203",
        "igmpQuery": "01005e000001020000000009080046c000240001000001023a090a000009e0000001940400001164ee9b0000000000000000",
        "udpTo239": "01005e010203020000000001080045000027000100000411bbc00a000001ef01020313881389001352d768656c6c6f2067726f7570",
        "udpTo224_251": "01005e0000fb02000000000108004500002000010000ff11d0cf0a000001e00000fb14e914e9000c0f306d646e73",
        "pimHello": "01005e00000d02000000000908004500001e000100000167cf620a000009e000000d2000f7ff000100020069",
        "mldv1Report": "33330000123402000000000286dd6000000000200001fe800000000000000000000000000002ff3e00000000000000000000000012343a0005020000010083005b4400000000ff3e0000000000000000000000001234",
        "mldv1Done": "33330000000202000000000286dd6000000000200001fe800000000000000000000000000002ff0200000000000000000000000000023a0005020000010084006cb200000000ff3e0000000000000000000000001234",
        // records: TO_EX{} ff3e::1234, IS_EX{} ff02::1:ff00:2
        "mldv2Join": "33330000001602000000000286dd6000000000380001fe800000000000000000000000000002ff0200000000000000000000000000163a000502000001008f005d7d0000000204000000ff3e000000000000000000000000123402000000ff0200000000000000000001ff000002",
        "mldv2Leave": "33330000001602000000000286dd6000000000240001fe800000000000000000000000000002ff0200000000000000000000000000163a000502000001008f005e990000000103000000ff3e0000000000000000000000001234",
        "mldQuery": "33330000000102000000000986dd6000000000240001fe800000000000000000000000000009ff0200000000000000000000000000013a000502000001008200590b271000000000000000000000000000000000000000000000",
        "udpToFF3E": "33330000123402000000000186dd6000000000131104fd000000000000000000000000000001ff3e00000000000000000000000012341388138900133f6868656c6c6f2067726f7570",
        "nsToSolicited": "3333ff00000202000000000186dd6000000000183afffe800000000000000000000000000001ff0200000000000000000001ff00000287007da100000000fe800000000000000000000000000002",
        "allNodes": "33330000000102000000000186dd6000000000083afffe800000000000000000000000000001ff0200000000000000000000000000018000823700000000",
    ]

    static func frame(_ name: String) -> [UInt8] {
        let text = golden[name]!
        return stride(from: 0, to: text.count, by: 2).map { i in
            UInt8(text[text.index(text.startIndex, offsetBy: i)..<text.index(text.startIndex, offsetBy: i + 2)], radix: 16)!
        }
    }

    static func lan(_ ports: Int = 4, configuration: Bridge.Configuration = .init(multicast: .init(isQuerier: true)),
                    _ portConfigurations: [PortConfiguration]? = nil) -> VirtualLAN {
        VirtualLAN(ports: ports, configuration: configuration, portConfigurations: portConfigurations)
    }

    /// The ports that got `name` sent on `port`.
    static func receivers(_ lan: VirtualLAN, _ name: String, on port: Int) -> [Int] {
        let out = lan.send(frame(name), on: port)
        return out.indices.filter { !out[$0].isEmpty }
    }

    /// As the kernel: with a querier, an unknown group's frames go to the multicast routers
    /// only (none here); IGMPv1/v2 reports go to the routers, v3 reports and leaves (to
    /// 224.0.0.22 and 224.0.0.2) are flooded; a leave ends the membership 2 s later.
    @Test(arguments: [("igmpv1Report", "igmpv2Leave"), ("igmpv2Report", "igmpv2Leave"), ("igmpv3Join", "igmpv3Leave")])
    func anIPv4GroupGoesToItsMembersOnlyUntilTheyLeave(_ join: String, _ leave: String) {
        let lan = Self.lan()
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [], "unknown group: to the multicast routers only, none here")
        #expect(lan.counters(0)[.noListener] == 1)
        #expect(Self.receivers(lan, join, on: 1) == (join == "igmpv3Join" ? [0, 2, 3] : []))
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1], "registered: to the member only")
        #expect(lan.bridge.snooping.statistics.groups >= 1 && lan.bridge.snooping.statistics.reports >= 1)
        #expect(Self.receivers(lan, leave, on: 1) == [0, 2, 3], "leaves are flooded")
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1], "a leave ends the membership after the last member query time, not at once")
        lan.clock.advance(by: .milliseconds(2_100))
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [], "left: unknown again")
    }

    @Test(arguments: [("mldv1Report", "mldv1Done"), ("mldv2Join", "mldv2Leave")])
    func anIPv6GroupGoesToItsMembersOnlyUntilTheyLeave(_ join: String, _ leave: String) {
        let lan = Self.lan()
        #expect(Self.receivers(lan, "udpToFF3E", on: 0) == [])
        #expect(Self.receivers(lan, join, on: 1) == (join == "mldv2Join" ? [0, 2, 3] : []), "MLDv1 reports to the routers, v2 reports flooded")
        #expect(Self.receivers(lan, "udpToFF3E", on: 0) == [1])
        #expect(Self.receivers(lan, leave, on: 1) == [0, 2, 3])
        lan.clock.advance(by: .seconds(3))
        #expect(Self.receivers(lan, "udpToFF3E", on: 0) == [])
    }

    /// Neighbour discovery keeps working: a solicited-node group its owner joined reaches the
    /// owner; all-nodes and 224.0.0.0/24 are never snooped.
    @Test func neighbourDiscoveryAndLinkLocalGroupsKeepWorking() {
        let lan = Self.lan()
        Self.receivers(lan, "mldv2Join", on: 1)  // (also joins ff02::1:ff00:2)
        #expect(Self.receivers(lan, "nsToSolicited", on: 0) == [1])
        #expect(Self.receivers(lan, "allNodes", on: 0) == [1, 2, 3])
        Self.receivers(lan, "igmpv3Join", on: 1)  // (its IS_EX{} 224.0.0.251 is ignored)
        #expect(Self.receivers(lan, "udpTo224_251", on: 0) == [1, 2, 3])
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1])
        // the ALLOW{10.0.0.7} record of the same report joined 239.9.9.9 (no source tracking)
        let keys = lan.bridge.multicastListing(at: lan.clock.now).groups.map { "\($0.key.group)" }
        #expect(Set(keys) == ["239.1.2.3", "239.9.9.9", "ff3e::1234", "ff02::1:ff00:2"], "\(keys)")
    }

    /// A querier's port (a query, a PIM hello) gets every group's traffic and the reports.
    @Test(arguments: ["igmpQuery", "pimHello", "mldQuery"])
    func routerPortsGetGroupsAndReports(_ router: String) {
        let lan = Self.lan()
        #expect(Self.receivers(lan, router, on: 3) == [0, 1, 2], "queries and router messages are flooded")
        let v6 = router == "mldQuery"
        #expect(Self.receivers(lan, v6 ? "mldv1Report" : "igmpv2Report", on: 1) == [3], "a v1/v2 report goes to the router port only")
        #expect(Self.receivers(lan, v6 ? "udpToFF3E" : "udpTo239", on: 0) == [1, 3])
        #expect(lan.bridge.multicastListing(at: lan.clock.now).routers.map(\.port) == [lan.ports[3]])
        lan.clock.advance(by: .seconds(256))
        lan.engine.expire(at: lan.clock.now)
        #expect(lan.bridge.multicastListing(at: lan.clock.now).routers.isEmpty, "the router port ages out after 255 s")
    }

    /// Memberships end after the membership interval (260 s) without another report; a report
    /// within it refreshes; a port that goes leaves its groups.
    @Test func membershipsAgeOutAndGoWithTheirPort() {
        let lan = Self.lan()
        Self.receivers(lan, "igmpv2Report", on: 1)
        Self.receivers(lan, "igmpv2Report", on: 2)
        lan.clock.advance(by: .seconds(200))
        Self.receivers(lan, "igmpv2Report", on: 1)
        lan.clock.advance(by: .seconds(61))
        #expect(lan.engine.nextDeadline != nil && lan.engine.nextDeadline! <= lan.clock.now)
        lan.engine.expire(at: lan.clock.now)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1], "port 2's membership ended, port 1's was refreshed")
        lan.removePort(1)
        #expect(lan.bridge.snooping.statistics.groups == 0)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [], "no member left: unknown, to the routers only (none)")
    }

    /// Without a querier nobody makes hosts report again and memberships would lapse: every
    /// multicast frame is flooded, reports too, while memberships are learned; a query heard
    /// (IGMP for IPv4 groups, MLD for IPv6 ones) narrows the frames once its response time has
    /// passed (as the kernel's `delay_time`), until 255 s of silence.
    @Test func withoutAQuerierEverythingIsFloodedAndMembershipsAreLearned() {
        let lan = Self.lan(configuration: .init())
        #expect(Self.receivers(lan, "igmpv3Join", on: 1) == [0, 2, 3])
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1, 2, 3])
        #expect(lan.bridge.multicastListing(at: lan.clock.now).groups.count == 2, "239.1.2.3 and 239.9.9.9")
        Self.receivers(lan, "igmpQuery", on: 3)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1, 2, 3], "a querier just heard: hosts have its 10 s to answer first")
        lan.clock.advance(by: .seconds(10))
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1, 3], "an IGMP querier is known: narrowed")
        Self.receivers(lan, "mldv2Join", on: 1)
        #expect(Self.receivers(lan, "udpToFF3E", on: 0) == [1, 2, 3], "no MLD querier: IPv6 groups still flooded")
        lan.clock.advance(by: .seconds(256))
        Self.receivers(lan, "igmpv3Join", on: 1)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1, 2, 3], "the querier went silent 255 s ago: flooded again")
    }

    /// With another querier present a leave changes nothing by itself (as in the kernel): the
    /// querier's group-specific query that follows shortens every membership of the group to
    /// twice its response time, and a member that answers stays.
    @Test func aLeaveUnderAnotherQuerierWaitsForItsGroupQuery() {
        let lan = Self.lan(configuration: .init())
        Self.receivers(lan, "igmpQuery", on: 3)
        lan.clock.advance(by: .seconds(10))  // (the querier counts once its response time passed)
        Self.receivers(lan, "igmpv2Report", on: 1)
        Self.receivers(lan, "igmpv2Report", on: 2)
        Self.receivers(lan, "igmpv2Leave", on: 1)
        lan.clock.advance(by: .seconds(5))
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1, 2, 3], "the leave alone ended nothing")
        #expect(Self.receivers(lan, "igmpGroupQuery", on: 3) == [0, 1, 2])
        Self.receivers(lan, "igmpv2Report", on: 2)  // port 2's host answers, port 1's left
        lan.clock.advance(by: .milliseconds(2_100))
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [2, 3], "port 1 did not answer the group query within 2 x 1 s")
    }

    /// A host that reports more groups than the table holds turns narrowing off (as the
    /// kernel turns snooping off), so it cannot cut the others' groups off; once groups age
    /// out below the limit, narrowing is back.
    @Test func aFullTableFloodsUntilGroupsAgeOut() {
        var config = Bridge.Configuration(multicast: .init(isQuerier: true))
        config.multicast.maximumGroups = 1
        let lan = Self.lan(configuration: config)
        Self.receivers(lan, "igmpv2Report", on: 1)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1])
        lan.clock.advance(by: .seconds(100))
        Self.receivers(lan, "mldv1Report", on: 2)  // one group too many
        #expect(lan.bridge.snooping.isOverflowing && lan.bridge.snooping.statistics.groupsRefused == 1)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [1, 2, 3], "the table is full: flooded")
        #expect(lan.bridge.snooping.activeQueriers(now: lan.clock.now).isEmpty)
        lan.clock.advance(by: .seconds(161))  // 239.1.2.3's membership ends
        lan.engine.expire(at: lan.clock.now)
        #expect(!lan.bridge.snooping.isOverflowing)
        #expect(Self.receivers(lan, "udpTo239", on: 0) == [], "room again: an unknown group, to the routers only")
    }

    @Test func multicastFloodPortsAndSnoopingOffGetEverything() {
        let flood = Self.lan(4, configuration: .init(multicast: .init(isQuerier: true)),
                             [PortConfiguration(), PortConfiguration(), PortConfiguration(multicastFlood: true), PortConfiguration()])
        Self.receivers(flood, "igmpv2Report", on: 1)
        #expect(Self.receivers(flood, "udpTo239", on: 0) == [1, 2])
        var off = Bridge.Configuration(multicast: .init(isQuerier: true))
        off.multicast.isEnabled = false
        let plain = Self.lan(4, configuration: off)
        #expect(Self.receivers(plain, "igmpv2Report", on: 1) == [0, 2, 3], "snooping off: reports are flooded like any multicast")
        #expect(Self.receivers(plain, "udpTo239", on: 0) == [1, 2, 3])
        #expect(plain.bridge.snooping.statistics == .init())
    }

    /// Every byte of every golden membership message changed, one at a time, and each one cut
    /// short: never a trap, never a membership from a message that fails its checksum or
    /// length checks; what fails is counted (`malformed_multicast`) and not forwarded.
    @Test func malformedAndTruncatedMessagesAreCountedNeverTrusted() {
        for name in ["igmpv2Report", "igmpv3Join", "mldv1Report", "mldv2Join"] {
            let good = Self.frame(name)
            let l4 = name.hasPrefix("igmp") ? 14 + Int(good[14] & 0x0F) * 4 : 62
            for at in l4..<good.count {
                var bad = good
                bad[at] ^= 0x5A
                let lan = Self.lan()
                let out = lan.send(bad, on: 1)
                #expect(lan.bridge.snooping.statistics.reports == 0, "\(name), byte \(at) changed: taken as a report")
                // (an ICMPv6 type changed makes another message, no MLD one: group data)
                if name.hasPrefix("mld"), at == l4 { continue }
                #expect(lan.counters(1)[.malformedMulticast] == 1 && out.allSatisfy(\.isEmpty), "\(name), byte \(at) changed")
            }
            for cut in 15..<good.count {
                let lan = Self.lan()
                lan.send(Array(good.prefix(cut)), on: 1)
                #expect(lan.bridge.snooping.statistics.reports == 0, "\(name) cut to \(cut) bytes: taken as a report")
            }
        }
    }

    /// The bridge's own queries parse as queries (checksums right) and leave every port of
    /// their VLAN, tagged where it is carried tagged; a bridge that hears them (another
    /// bridge's port) knows a querier from then on.
    @Test func theQueriersOwnQueriesLeaveEveryPortAndAreHeardAsQueries() {
        let trunk = PortConfiguration(vlanMode: .trunk(allowed: [1, 7], native: nil))
        let lan = Self.lan(3, configuration: .init(), [PortConfiguration(), PortConfiguration(vlanMode: .access(7)), trunk])
        #expect(Set(lan.engine.vlansInUse) == [1, 7])
        let mac = MACAddress("02:00:5e:10:00:01")!
        for query in [MulticastQuerier.igmpQuery(from: mac), MulticastQuerier.mldQuery(from: mac)] {
            lan.engine.originate(query, vlan: 7)
            #expect(lan.transmitted(on: 0).isEmpty && lan.transmitted(on: 1) == [query])
            let tagged = lan.transmitted(on: 2)
            #expect(tagged.count == 1 && tagged.first.map { Array($0[12..<16]) } == [0x81, 0x00, 0x00, 0x07] && tagged.first?.count == query.count + 4)
        }
        let other = Self.lan(3, configuration: .init())
        Self.receivers(other, "igmpv3Join", on: 1)
        #expect(Self.receivers(other, "udpTo239", on: 0) == [1, 2])
        other.send(MulticastQuerier.igmpQuery(from: mac), on: 2)
        other.send(MulticastQuerier.mldQuery(from: mac), on: 2)
        #expect(other.bridge.snooping.statistics.queries == 2 && other.bridge.snooping.statistics.malformed == 0)
        #expect(Self.receivers(other, "udpTo239", on: 0) == [1, 2], "port 2 is now a router port, port 1 a member")
        Self.receivers(other, "mldv2Join", on: 1)
        #expect(Self.receivers(other, "udpToFF3E", on: 0) == [1, 2])
        #expect(other.bridge.multicastListing(at: other.clock.now).routers.count == 1)
    }

    @Test func groupsArePrinted() {
        #expect("\(GroupAddress.v4(0xEF01_0203))" == "239.1.2.3")
        #expect("\(GroupAddress.v6(0xFF3E_0000_0000_0000, 0x1234))" == "ff3e::1234")
        #expect("\(GroupAddress.v6(0xFF02_0000_0000_0000, 0x0001_FF00_0002))" == "ff02::1:ff00:2")
    }
}
