import Foundation
import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import Testing

extension KernelTests {
@Suite("Remotes changed at run time, paths and peers that go", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct RemoteChangeTests {
    /// `datapath=kernel` remotes at run time, on a bridge that runs as nobody (`--user`): `remote
    /// add` appends the remote to the vxlan device of its VNI and port, `remote del` deletes it
    /// (and what the device learned behind it; the device's first remote too), the device goes
    /// with its last remote and comes back with the next; the device has no IPv6 address of its
    /// own on the lab's segment.
    /// ```
    ///  ns a ── tap ── tapbridge --user nobody ── vx-NAME [h1] ══ veth ══ [h2] vx-NAME ── tapbridge ── tap ── ns b
    ///                     └ first remote 10.76.0.9: nobody there
    /// ```
    @Test func kernelRemotesAddedAndRemovedAtRunTime() throws {
        let lab = Lab()
        let hosts = TwoHosts(lab)
        let (a, h1) = (hosts.a, hosts.h1)
        let name = lab.bridgeName()
        let device = "vx-\(name)"
        let one = try lab.bridge(["--name", name, "--user", "nobody", "--port", hosts.ta, "--remote", "10.76.0.9:4789,datapath=kernel,vni=77"], in: h1)
        let two = try lab.bridge(["--port", hosts.tb, "--remote", "10.76.0.1:4789,vni=77,datapath=kernel"], in: hosts.h2)
        try hosts.waitForTaps(lab, one, two)
        #expect(Lab.eventually { one.output.contains("running as nobody") }, "\(one.output)")
        let limit = lab.exec(h1, ["ip", "-d", "-j", "link", "show", "dev", device]).output
        #expect(limit.contains("\"limit\":8192") && one.output.contains("learns at most 8192 MACs"), "the device's maxaddress (--max-macs): \(limit)")
        let v6 = lab.exec(h1, ["ip", "-6", "addr", "show", "dev", device])
        #expect(v6.ok && !v6.output.contains("inet6"), "the vxlan device has an IPv6 address of its own: \(v6.output)")
        func control(_ args: String...) -> Host.Result { ControlTests.client(args, name: name) }
        func fdb() -> String { lab.exec(h1, ["bridge", "fdb", "show", "dev", device]).output }

        let added = control("remote", "add", "10.76.0.2:4789,datapath=kernel,vni=77")
        #expect(added.ok && added.output.contains("remote 10.76.0.2:4789 added (10.76.0.2:4789, to vxlan device \(device))"), "\(added.output)\n\(one.output)")
        _ = try hosts.tcpWithoutFragments(lab, one, two)
        let ports = Host.run([Host.binary, "show", "ports", "--name", name])
        #expect(ports.output.contains("remotes 10.76.0.9:4789, 10.76.0.2:4789, mtu 1450"), "\(ports.output)")
        for (args, why) in [(["remote", "add", "10.76.0.2:4789,datapath=kernel,vni=77,name=again"], "remote again (10.76.0.2:4789) exists"),
                            (["remote", "add", "10.76.0.2:4789,datapath=kernel"], "a remote named 10.76.0.2:4789 exists"),
                            (["port", "del", device], "remote del removes them"),
                            (["remote", "del", "10.76.0.7:4789"], "no such remote (remotes: 10.76.0.9:4789, 10.76.0.2:4789)")] {
            let r = ControlTests.client(args, name: name)
            #expect(!r.ok && r.output.contains(why) && r.output.split(separator: "\n").count == 1, "\(args): got \(r.output)")
        }

        let removed = control("remote", "del", "10.76.0.2:4789")
        #expect(removed.ok && removed.output.contains("remote 10.76.0.2:4789 removed (from vxlan device \(device)"), "\(removed.output)")
        #expect(!fdb().contains("10.76.0.2"), "the device still sends to the removed remote:\n\(fdb())\n\(one.output)")
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 0, "b still answers after remote del")

        // back, then the device's own `remote` (its first) goes and the other carries on
        #expect(control("remote", "add", "10.76.0.2:4789,datapath=kernel,vni=77").ok)
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "after remote add again:\n\(one.output)")
        let first = control("remote", "del", "10.76.0.9:4789")
        #expect(first.ok && first.output.contains("remote 10.76.0.9:4789 removed (from vxlan device \(device))"), "\(first.output)")
        #expect(!fdb().contains("10.76.0.9"), "\(fdb())")
        lab.exec(a, ["ip", "neigh", "flush", "dev", hosts.ta])
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "a -> b once the device's first remote is gone:\n\(fdb())\n\(one.output)")

        let last = control("remote", "del", "10.76.0.2:4789")
        #expect(last.ok && last.output.contains("with vxlan device \(device), its last remote"), "\(last.output)")
        #expect(!lab.exec(h1, ["ip", "link", "show", device]).ok, "the device outlived its last remote")
        #expect(!Host.run([Host.binary, "show", "ports", "--name", name]).output.contains(device))
        let back = control("remote", "add", "10.76.0.2:4789,datapath=kernel,vni=77")
        #expect(back.ok && back.output.contains("vxlan device \(device) made, mtu 1450"), "\(back.output)\n\(one.output)")
        lab.exec(a, ["ip", "neigh", "flush", "dev", hosts.ta])
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "a -> b through the device made at run time:\n\(one.output)")
        #expect(one.stop() == 0 && two.stop() == 0)
        #expect(one.output.contains("vxlan device \(device): removed"), "\(one.output)")
        #expect(!lab.exec(h1, ["ip", "link", "show", device]).ok, "the device made at run time outlived its bridge (run as nobody)")
    }

    /// A narrower link in the middle of the underlay, that neither bridge's own route shows:
    /// ```
    ///  ns a ── tap ── tapbridge [h1] ══ 1500 ══ [r1] ══ 1400 ══ [r2] ══ 1500 ══ [h2] tapbridge ── tap ── ns b
    /// ```
    /// Both bridges measure 1500 and clamp TCP's MSS to 1410; a's first full-size datagrams
    /// (DF set) meet the 1400-byte link, and router r1 answers "fragmentation needed, MTU 1400".
    /// Bridge one reads that from its socket's error queue, lowers the remote's path (logged,
    /// counted, shown), cuts TCP to it and clamps later SYNs to it: TCP passes both ways, no
    /// checksum error, no fragment made for it by either host (bridge two never needs to learn:
    /// the clamp keeps b's segments small). Then large pings with DF from b, which TCP's clamp
    /// does not cover: router r2 tells bridge two, whose path drops to 1400 too, and the pings
    /// after that leave fragmented by the kernel (counted) and pass.
    @Test func aSmallerPathReportedByTheNetworkIsTaken() throws {
        let lab = Lab()
        let (a, b, h1, h2, r1, r2) = (lab.namespace("a"), lab.namespace("b"), lab.namespace("h1"), lab.namespace("h2"), lab.namespace("r1"), lab.namespace("r2"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let links = [(h1, lab.link("h1"), "10.75.1.1", r1, lab.link("r1a"), "10.75.1.254", 1500),
                     (r1, lab.link("r1b"), "10.75.2.1", r2, lab.link("r2a"), "10.75.2.2", 1400),
                     (r2, lab.link("r2b"), "10.75.3.254", h2, lab.link("h2"), "10.75.3.1", 1500)]
        for (n1, d1, ip1, n2, d2, ip2, mtu) in links {
            #expect(Host.run(["ip", "link", "add", d1, "netns", n1, "mtu", "\(mtu)", "type", "veth", "peer", "name", d2, "netns", n2, "mtu", "\(mtu)"]).ok)
            for (n, d, ip) in [(n1, d1, ip1), (n2, d2, ip2)] {
                lab.exec(n, ["ip", "addr", "add", ip + "/24", "dev", d])
                lab.exec(n, ["ip", "link", "set", d, "up"])
            }
        }
        for r in [r1, r2] { lab.exec(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]) }
        lab.exec(h1, ["ip", "route", "add", "default", "via", "10.75.1.254"])
        lab.exec(r1, ["ip", "route", "add", "10.75.3.0/24", "via", "10.75.2.2"])
        lab.exec(r2, ["ip", "route", "add", "10.75.1.0/24", "via", "10.75.2.1"])
        lab.exec(h2, ["ip", "route", "add", "default", "via", "10.75.3.254"])
        #expect(lab.exec(h1, ["ping", "-c", "1", "-W", "2", "10.75.3.1"]).ok, "the underlay does not route")

        let one = try lab.bridge(["--port", ta, "--remote", "10.75.3.1:4789"], in: h1)
        let two = try lab.bridge(["--port", tb, "--remote", "10.75.1.1:4789"], in: h2)
        #expect(lab.waitForLinks([ta], in: h1) && lab.waitForLinks([tb], in: h2), "\(one.output)\(two.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24", from: h1)
        lab.place(tb, in: b, address: "10.77.0.2/24", from: h2)
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "a -> b:\n\(one.output)\n\(two.output)")
        let before = (lab.fragmentsCreated(in: h1), lab.fragmentsCreated(in: h2))
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: one.output + two.output)
        let fragments = (lab.fragmentsCreated(in: h1) - before.0, lab.fragmentsCreated(in: h2) - before.1)
        #expect(fragments == (0, 0), "IP fragments made for TCP on the hosts: got \(fragments), want none")
        // 1400 bytes of ICMP payload: a 1442-byte frame, a 1478-byte datagram
        _ = lab.exec(b, ["ping", "-M", "do", "-s", "1400", "-c", "2", "-i", "0.3", "-W", "1", "10.77.0.1"])
        let big = lab.exec(b, ["ping", "-M", "do", "-s", "1400", "-c", "3", "-i", "0.3", "-W", "1", "10.77.0.1"])
        #expect(big.output.contains(" 3 received"), "large pings after the path was lowered: \(big.output)\n\(two.output)")
        let fragmented = try ControlTests.decode(StatsReport.self, ControlTests.client(["show", "stats", "--json"], name: ControlTests.name(two))).udp?.counters.fragmented
        #expect((fragmented ?? 0) >= 3, "bridge two's datagrams sent for the kernel to fragment: \(String(describing: fragmented))")
        for (bridge, remote) in [(one, "10.75.3.1:4789"), (two, "10.75.1.1:4789")] {
            let name = ControlTests.name(bridge)
            let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
            #expect(ports.first { $0.name == remote }?.remote?.pathMtu == 1400, "\(remote): \(ports.map(\.remote))\n\(bridge.output)")
            let stats = try ControlTests.decode(StatsReport.self, ControlTests.client(["show", "stats", "--json"], name: name))
            #expect((stats.udp?.counters.pathMTULowered ?? 0) >= 1, "\(String(describing: stats.udp))")
            #expect(bridge.output.contains("path MTU now 1400"), "the lowered path is logged:\n\(bridge.output)")
        }
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// Remotes at run time: bridge one starts with no remote (and so no UDP socket); `remote
    /// add` opens its socket on `--listen` and joins bridge two; ping and TCP both ways pass;
    /// `remote del` (by address) makes it silent again. Bad input gets one line and a non-zero
    /// exit, and changes nothing.
    /// ```
    ///  ns a ── tap a ── tapbridge one [127.0.0.1:P1]  ══ remote add / del ══  tapbridge two [P2] ── tap b ── ns b
    /// ```
    @Test func remotesAddedAndRemovedAtRunTime() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let one = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)"])
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)"])
        #expect(lab.waitForLinks([ta, tb]), "\(one.output)\(two.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        let name = ControlTests.name(one)
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 0, "one has no remote yet")
        lab.exec(a, ["ip", "neigh", "flush", "dev", ta])  // (a's kernel would not ask again for a while)

        let added = ControlTests.client(["remote", "add", "127.0.0.1:\(p2),name=two"], name: name)
        #expect(added.ok && added.output.contains("remote two added (127.0.0.1:\(p2), vxlan, path MTU "), "\(added.output)\n\(one.output)")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "after remote add:\n\(one.output)\n\(two.output)")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: one.output + two.output)
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        #expect(ports.map(\.name) == [ta, "two"] && ports.last?.remote?.endpoint == "127.0.0.1:\(p2)", "\(ports.map(\.name))")

        // bad input: one line each, exit non-zero, nothing changed
        for (args, why) in [(["remote", "add", "127.0.0.1:\(p2),name=two"], "a port named two exists"),
                            (["remote", "add", "127.0.0.1:\(p2),encap=gre"], "encap must be vxlan, raw, sealed or geneve"),
                            (["remote", "add", "127.0.0.1:99999"], "expected HOST:PORT"),
                            (["remote", "add", "127.0.0.1:\(p2),encap=sealed,name=s"], "encap=sealed needs peer=PUBKEY"),
                            (["remote", "add", "127.0.0.1:\(p2),encap=sealed,name=s,peer=7+Rhs1Gm3iY7q9HN0mQH5Uu4xKZ4Bz0fKqf/0n4Qmk0="], "encap=sealed needs this host's key"),
                            (["remote", "del", "10.9.9.9:1"], "no such remote (remotes: two)"),
                            (["remote", "del", ta], "is not a remote (use port del)")] {
            let r = ControlTests.client(args, name: name)
            #expect(!r.ok && r.output.contains(why) && r.output.split(separator: "\n").count == 1, "\(args): got \(r.output)")
        }

        let removed = ControlTests.client(["remote", "del", "127.0.0.1:\(p2)"], name: name)
        #expect(removed.ok && removed.output.contains("remote two removed"), "\(removed.output)")
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 0, "after remote del, a still reaches b")
        let after = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        #expect(after.map(\.name) == [ta], "\(after.map(\.name))")
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// A remote nobody listens for: the kernel's ICMP port-unreachable errors mark it
    /// `unreachable` (counted per remote, logged once); once its bridge starts and a frame
    /// arrives from it, it is `up` again (logged).
    @Test func aDeadRemoteGoesUnreachableAndComesBack() throws {
        let lab = Lab()
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let (n1, n2) = (lab.bridgeName(), lab.bridgeName())
        let one = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2),name=far", "--name", n1])
        #expect(lab.waitForLinks([ta]), "\(one.output)")
        func far() -> PortReport? {
            (try? ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: n1)))?.first { $0.name == "far" }
        }
        func waitFor(_ state: String) -> Bool {
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                if far()?.state == state { return true }
                usleep(100_000)
            }
            return false
        }
        Host.run(["ip", "link", "set", ta, "up"])  // its IPv6 chatter goes to the remote
        #expect(waitFor("unreachable"), "\(String(describing: far()))\n\(one.output)")
        #expect((far()?.remote?.unreachable ?? 0) >= 1)
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)", "--name", n2])
        #expect(lab.waitForLinks([tb]), "\(two.output)")
        Host.run(["ip", "link", "set", tb, "up"])
        #expect(waitFor("up"), "\(String(describing: far()))\n\(one.output)")
        #expect(one.stop() == 0 && two.stop() == 0)
        #expect(one.output.components(separatedBy: ": unreachable (Connection refused)").count == 2, "logged once on the change:\n\(one.output)")
        #expect(one.output.contains("reachable again"), "\(one.output)")
    }
}
}
