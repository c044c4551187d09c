import Foundation
import TapBridgeControl
import TapBridgeDaemon
import Testing

/// IGMP/MLD snooping with real hosts: each joins a group with a plain socket (its kernel sends
/// the IGMPv3 or MLDv2 report), a host sends to the group, captures on the others' links show
/// where the frames went. UDP and multicast stay on TAPs between namespaces these tests create.
extension KernelTests {
@Suite("Multicast snooping with real hosts", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct MulticastKernelTests {
    static let tool = "\(RemoteTests.peers)/mcast.py"

    static func mdb(_ bridge: Background) -> MDBReport? {
        try? ControlTests.decode(MDBReport.self, ControlTests.client(["show", "mdb", "--json"], name: ControlTests.name(bridge))).self
    }

    /// The ports of `group` in `bridge`'s table now.
    static func members(_ bridge: Background, _ group: String) -> Set<String> {
        Set((mdb(bridge)?.groups ?? []).filter { $0.group == group }.map(\.port))
    }

    /// Frames to `group` (by destination address) in the capture at `pcap`.
    static func framesTo(_ group: String, in pcap: String) -> Int {
        Host.run(["tcpdump", "-r", pcap, "-n", "dst", group]).output.split(separator: "\n").filter { $0.contains(" > ") }.count
    }

    static func received(_ listener: Background) -> Int {
        guard let line = listener.output.split(separator: "\n").last(where: { $0.contains("received") }),
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Int] else { return -1 }
        return object["received"] ?? -1
    }

    /// ```
    ///  a (sender) ─┐                    ┌─ b (joins, then leaves)
    ///              ├── tapbridge ───────┤
    ///  c (never) ──┘  --multicast-querier └─ d (joins, stays)
    /// ```
    /// The group's frames reach b and d and never c; after b's leave they reach d and no longer
    /// b; ping and (IPv6) neighbour discovery keep working. For 239.1.2.3 (IGMPv3) the test
    /// also waits for the querier's second startup query (31 s after start): d's membership is
    /// refreshed by the report it answers with, without any router.
    @Test(arguments: ["239.1.2.3", "ff3e::1234"])
    func aGroupReachesItsMembersOnlyAndALeaveStopsIt(_ group: String) throws {
        let lab = Lab()
        let v6 = group.contains(":")
        let names = ["a", "b", "c", "d"]
        let ns = names.map(lab.namespace), taps = names.map(lab.link)
        let bridge = try lab.bridge(taps.flatMap { ["--port", $0] } + ["--multicast-querier"])
        let started = Date()
        try #require(lab.waitForLinks(taps), "\(bridge.output)")
        for i in 0..<4 {
            if v6 { lab.enableIPv6(ns[i]) }
            lab.place(taps[i], in: ns[i], address: "10.77.0.\(i + 1)/24")
            if v6 { lab.addAddress("fd77::\(i + 1)/64", to: taps[i], in: ns[i]) }
        }
        let listen = { (i: Int) in try lab.background(["ip", "netns", "exec", ns[i], "/usr/bin/python3", Self.tool, "listen", group, taps[i], "60"]) }
        let (b, d) = (try listen(1), try listen(3))
        try #require(Lab.eventually(within: 10) { b.output.contains("joined") && d.output.contains("joined") }, "\(b.output)\(d.output)")
        let joined = Date()
        #expect(Lab.eventually(within: 10) { Self.members(bridge, group) == [taps[1], taps[3]] }, "show mdb: \(String(describing: Self.mdb(bridge)))")
        // the bridge's querier counts once hosts had its first query's 10 s to answer
        #expect(Lab.eventually(within: 15) { Self.mdb(bridge)?.queriers.contains { $0.ip == (v6 ? "ipv6" : "ipv4") } == true }, "\(String(describing: Self.mdb(bridge)))")
        let cPcap = lab.temporaryPath("c.pcap")
        let c = try lab.capture(in: ns[2], on: taps[2], to: cPcap, filter: "dst \(group)")
        let send = { () -> Host.Result in lab.exec(ns[0], ["/usr/bin/python3", Self.tool, "send", group, taps[0], "40"], timeout: 30) }
        #expect(send().ok)
        // the leave: b's socket closes
        _ = b.stop()
        #expect(Self.received(b) == 40, "b, a member: \(b.output)")
        #expect(Lab.eventually(within: 10) { Self.members(bridge, group) == [taps[3]] }, "after b's leave: \(String(describing: Self.mdb(bridge)))")
        let bPcap = lab.temporaryPath("b.pcap")
        let bCapture = try lab.capture(in: ns[1], on: taps[1], to: bPcap, filter: "dst \(group)")
        #expect(send().ok)
        _ = bCapture.stop(signal: SIGINT)
        #expect(Self.framesTo(group, in: bPcap) == 0, "b left: its link must carry none of the group's frames")
        // ping, and neighbour discovery over IPv6, keep working
        #expect(lab.ping(from: ns[0], "10.77.0.3").received == 3)
        if v6 { #expect(lab.exec(ns[0], ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd77::3"]).ok, "IPv6 ping (neighbour discovery through snooping)") }
        if !v6 {
            // the querier's second startup query comes 31 s after start; d answers within 10 s
            while Date().timeIntervalSince(started) < 31 { usleep(200_000) }
            var left = 0.0
            #expect(Lab.eventually(within: 15) {
                left = Self.mdb(bridge)?.groups.first { $0.group == group && $0.port == taps[3] }?.expiresSeconds ?? 0
                return left > 260 - Date().timeIntervalSince(joined) + 5
            }, "d's membership was not refreshed by its answer to the querier: \(left) s left, \(Date().timeIntervalSince(joined)) s after the join")
        }
        _ = c.stop(signal: SIGINT)
        #expect(Self.framesTo(group, in: cPcap) == 0, "c never joined: its link must carry none of the group's frames")
        _ = d.stop()
        #expect(Self.received(d) == 80, "d, a member throughout: \(d.output)")
        let stats = Lab.statsSection(bridge, "multicast")
        #expect((stats["reports"] ?? 0) > 0 && (stats["leaves"] ?? 0) > 0 && stats["malformed"] == 0, "\(stats)")
        #expect(bridge.stop() == 0)
    }

    /// A group behind a remote: the querier is bridge one; its queries reach bridge two through
    /// the VXLAN remote, so two's remote port leads to a querier, b's report goes there, and one
    /// learns the member behind its remote port. a's group traffic crosses the remote to b, and
    /// never reaches c on a's own bridge.
    /// ```
    ///  a (sender) ─┐                                      ┌─ b (joins)
    ///              ├─ tapbridge one ══ VXLAN 127.0.0.1 ══ tapbridge two
    ///  c (never) ──┘  --multicast-querier
    /// ```
    @Test func aGroupBehindARemoteIsLearnedThroughIt() throws {
        let lab = Lab()
        let (a, b, c) = (lab.namespace("a"), lab.namespace("b"), lab.namespace("c"))
        let (ta, tb, tc) = (lab.link("a"), lab.link("b"), lab.link("c"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        // two first: one's first query, sent as it starts, then finds two listening (the next
        // comes 31 s later)
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)"])
        try #require(lab.waitForLinks([tb]) && Lab.eventually { Self.mdb(two) != nil }, "\(two.output)")
        let one = try lab.bridge(["--port", ta, "--port", tc, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2)", "--multicast-querier"])
        try #require(lab.waitForLinks([ta, tc]), "\(one.output)\(two.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        lab.place(tc, in: c, address: "10.77.0.3/24")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(one.output)\(two.output)")
        let listener = try lab.background(["ip", "netns", "exec", b, "/usr/bin/python3", Self.tool, "listen", "239.7.7.7", tb, "60"])
        #expect(Lab.eventually(within: 10) { listener.output.contains("joined") })
        let remote = "127.0.0.1:\(p2)"
        // two counts one's querier once its first query's response time has passed; from then
        // on b's reports go to two's router port, the remote
        #expect(Lab.eventually(within: 15) { Self.mdb(two)?.queriers.contains { $0.ip == "ipv4" && $0.vlan == 1 } == true }, "two's mdb: \(String(describing: Self.mdb(two)))")
        #expect(Lab.eventually(within: 15) { Self.members(one, "239.7.7.7") == [remote] }, "one's mdb: \(String(describing: Self.mdb(one)))\ntwo's: \(String(describing: Self.mdb(two)))")
        #expect(Lab.eventually(within: 15) { Self.mdb(one)?.queriers.isEmpty == false })
        let pcap = lab.temporaryPath("c.pcap")
        let capture = try lab.capture(in: c, on: tc, to: pcap, filter: "dst 239.7.7.7")
        #expect(lab.exec(a, ["/usr/bin/python3", Self.tool, "send", "239.7.7.7", ta, "40"], timeout: 30).ok)
        _ = listener.stop()
        _ = capture.stop(signal: SIGINT)
        #expect(Self.received(listener) == 40, "b, behind the remote: \(listener.output)")
        #expect(Self.framesTo("239.7.7.7", in: pcap) == 0, "c never joined")
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// Usage.md's "Multicast" recipe as written (names made unique): three netns= hosts and
    /// --multicast-querier; a host joins, `show mdb` names the group on its port and the
    /// bridge's own queriers once their response time has passed.
    @Test func theUsageRecipeShowsTheGroupAndTheQuerier() throws {
        let lab = Lab()
        let hosts = ["h1", "h2", "h3"].map { (port: lab.link($0), ns: lab.namespaceName($0)) }
        let name = lab.bridgeName()
        let bridge = try lab.bridge(hosts.enumerated().flatMap { i, h in ["--port", "\(h.port),netns=\(h.ns),addr=10.0.0.\(i + 1)/24"] }
                                    + ["--multicast-querier", "--name", name])
        try #require(Lab.eventually(within: 10) { lab.exec(hosts[1].ns, ["ip", "-br", "addr", "show", hosts[1].port]).output.contains("10.0.0.2") }, "\(bridge.output)")
        let listener = try lab.background(["ip", "netns", "exec", hosts[1].ns, "/usr/bin/python3", Self.tool, "listen", "239.1.2.3", hosts[1].port, "30"])
        #expect(Lab.eventually(within: 10) { listener.output.contains("joined") })
        var shown = ""
        #expect(Lab.eventually(within: 15) {
            shown = Host.run([Host.binary, "show", "mdb", "--name", name]).output
            let row = shown.split(separator: "\n").first { $0.contains("239.1.2.3") } ?? ""
            return row.hasPrefix("1 ") && row.contains(hosts[1].port) && shown.contains("queriers: IGMP (this bridge's), MLD (this bridge's)")
        }, "show mdb:\n\(shown)")
        _ = listener.stop()
        #expect(bridge.stop() == 0)
    }
}
}
