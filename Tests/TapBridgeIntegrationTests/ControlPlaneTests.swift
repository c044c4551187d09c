import Foundation
import TapBridgeDaemon
import TapBridgeControl
import Testing

/// The control plane never stalls the data plane: while a change waits for a resolver or the
/// kernel, two other ports of the bridge go on answering each other's pings, 20 ms apart, with
/// none lost and none later than 50 ms (a stall of the loop delays every one of them).
extension KernelTests {
@Suite("A control plane that never stalls the data plane")
struct ControlPlaneTests {
    /// 750 pings from `ns` to `address`, 20 ms apart (15 s), with `during` run once the first
    /// has come back; each reply's round trip (ms), how many were sent, and ping's output.
    static func pingsWhile(_ lab: Lab, from ns: String, to address: String, _ during: () throws -> Void) throws -> (rtts: [Double], sent: Int, output: String) {
        let ping = try lab.background(["ip", "netns", "exec", ns, "ping", "-n", "-c", "750", "-i", "0.02", "-W", "1", address])
        #expect(Lab.eventually { ping.output.contains("time=") }, "no first reply: \(ping.output)")
        try during()
        #expect(ping.wait(within: 40) != nil, "ping did not end")
        let rtts = ping.output.split(separator: "\n").compactMap { line -> Double? in
            guard let at = line.range(of: "time=") else { return nil }
            return Double(line[at.upperBound...].prefix { $0.isNumber || $0 == "." })
        }
        return (rtts, Lab.transmitted(ping.output), ping.output)
    }

    /// Whether `pings` lost none and waited for none: no loss, max < 50 ms.
    static func unstalled(_ pings: (rtts: [Double], sent: Int, output: String), _ context: String) {
        #expect(pings.sent == 750 && pings.rtts.count == 750, "pings lost: \(pings.rtts.count) of \(pings.sent) came back\n\(pings.output.suffix(300))\n\(context)")
        #expect((pings.rtts.max() ?? 1e9) < 50, "the loop stalled: round trips up to \(pings.rtts.max() ?? -1) ms\n\(context)")
    }

    /// A resolver that never answers (the namespace's resolv.conf names an address on a link
    /// where nothing answers ARP) while a `stream=` port connects out to a host name and a
    /// `remote add` by host name waits for its lookup: start-up, forwarding between the other
    /// ports and SIGTERM never wait for the lookups (each held the loop for the resolver's
    /// timeout: start-up 10 s late, SIGTERM 9 s late, every port stalled twice a second). The
    /// stream port's failure is said once; the `remote add` answers, with the resolver's
    /// error, when the lookup gives up.
    /// ```
    ///  ns a ── tap ── tapbridge [ns t: veth 10.88.0.1/24 ── ns u, silent; nameserver 10.88.0.99] ── tap ── ns b
    ///                     ├─ far,stream=nowhere.invalid:4000
    ///                     └─ remote add faraway.invalid:4789 (pending)
    /// ```
    @Test func aResolverThatNeverAnswersCostsNothing() throws {
        let lab = Lab()
        let (a, b, t, u) = (lab.namespace("a"), lab.namespace("b"), lab.namespace("t"), lab.namespace("u"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        lab.silentLink(from: t, to: u)
        // `ip netns exec` puts /etc/netns/NS/resolv.conf in place of /etc/resolv.conf
        let dir = "/etc/netns/\(t)"
        #expect(Host.run(["mkdir", "-p", dir]).ok)
        defer { _ = Host.run(["rm", "-rf", dir]) }
        try "nameserver 10.88.0.99\noptions timeout:4 attempts:2\n".write(toFile: "\(dir)/resolv.conf", atomically: true, encoding: .utf8)
        let name = lab.bridgeName()
        let started = Date()
        let bridge = try lab.bridge(["--port", ta, "--port", tb, "--port", "far,stream=nowhere.invalid:4000", "--name", name], in: t)
        #expect(Lab.eventually(within: 15) { bridge.output.contains("forwarding between") }, "\(bridge.output)")
        let startUp = Date().timeIntervalSince(started)
        #expect(startUp < 3, "start-up took \(startUp) s: it waited for the resolver\n\(bridge.output)")
        #expect(lab.waitForLinks([ta, tb], in: t), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24", from: t)
        lab.place(tb, in: b, address: "10.77.0.2/24", from: t)
        #expect(Lab.eventually { lab.ping(from: a, "10.77.0.2", count: 1).received == 1 }, "\(bridge.output)")
        var pending: Background? = nil
        let pings = try Self.pingsWhile(lab, from: a, to: "10.77.0.2") {
            pending = try lab.background([Host.binary, "remote", "add", "faraway.invalid:4789", "--name", name])
        }
        Self.unstalled(pings, bridge.output)
        // the answer comes when the lookup gives up (two tries of 4 s), with its error
        #expect(pending?.wait(within: 35) == 1, "remote add: \(pending?.output ?? "")")
        #expect(pending?.output.contains("remote faraway.invalid:4789: cannot resolve faraway.invalid") == true, "\(pending?.output ?? "")")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        #expect(ports.first { $0.name == "far" }?.state == "absent", "\(ports.map { "\($0.name) \($0.state)" })")
        // it says why: the name it waits for, or the lookup's last failure between tries
        let why = ports.first { $0.name == "far" }?.peer ?? ""
        #expect(why.contains("(waiting for the name nowhere.invalid to resolve)") || why.contains("the last try: cannot resolve nowhere.invalid"), "\(why)")
        #expect(!ports.contains { $0.kind == "remote" }, "\(ports.map(\.name))")
        let stopping = Date()
        #expect(bridge.stop(within: 10) == 0, "\(bridge.output)")
        let stop = Date().timeIntervalSince(stopping)
        #expect(stop < 2, "SIGTERM took \(stop) s: it waited for the resolver")
        let failures = bridge.output.split(separator: "\n").filter { $0.contains("port far: cannot resolve nowhere.invalid") }
        #expect(failures.count <= 1, "the failure should be said once: \(failures.count) lines\n\(bridge.output)")
    }

    /// `port add` of a `netns=` port at run time: the namespace made (`ip netns add`), the TAP
    /// moved, addressed and brought up there, on the control plane's worker; the answer comes
    /// when it is in place, and the new host reaches the others (TCP both ways).
    /// ```
    ///  ns a ── tap ── tapbridge ── tap ── ns b
    ///                     └─ port add c,netns=NEW,addr=10.77.0.3/24
    /// ```
    @Test func aNamespacePortAddedAtRunTimeStallsNothing() throws {
        let lab = Lab()
        let (a, b, c) = (lab.namespace("a"), lab.namespace("b"), lab.namespaceName("c"))
        let (ta, tb, tc) = (lab.link("a"), lab.link("b"), lab.link("c"))
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--name", name, "--port", "\(ta),netns=\(a),addr=10.77.0.1/24", "--port", "\(tb),netns=\(b),addr=10.77.0.2/24"])
        #expect(Lab.eventually { lab.ping(from: a, "10.77.0.2", count: 1).received == 1 }, "\(bridge.output)")
        var answer = Host.Result(status: -1, output: "")
        let pings = try Self.pingsWhile(lab, from: a, to: "10.77.0.2") {
            answer = ControlTests.client(["port", "add", "\(tc),netns=\(c),addr=10.77.0.3/24"], name: name)
        }
        Self.unstalled(pings, bridge.output)
        #expect(answer.ok && answer.output.contains("port \(tc) added"), "\(answer.output)")
        #expect(bridge.output.contains("in namespace \(c) as 10.77.0.3/24 (made: removed on exit, by the last bridge in it)"), "\(bridge.output)")
        #expect(Lab.eventually { lab.ping(from: c, "10.77.0.1", count: 1).received == 1 }, "\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, c, a, "10.77.0.1", context: bridge.output)
        // and back out: port del leaves the namespace, the last bridge in it, which removes it
        #expect(ControlTests.client(["port", "del", tc], name: name).ok)
        #expect(Lab.eventually { !Lab.namespaceExists(c) }, "\(bridge.output)")
        #expect(bridge.stop() == 0, "\(bridge.output)")
    }

    /// `remote del` of a `datapath=kernel` remote whose vxlan device learned 10,000 MACs behind
    /// it: every one of them is forgotten (else frames to them would go on leaving for the
    /// removed remote), over rtnetlink on the control plane's worker. It was one `bridge fdb
    /// del` process per MAC, in the loop: about 3 ms each, 30 s of a stalled bridge.
    /// ```
    ///  ns a ── tap ─┐
    ///               tapbridge [h1] ── vx-NAME ══ veth ══ [h2] 10,000 VXLAN frames from 10,000 MACs
    ///  ns b ── tap ─┘      remotes 10.76.0.2 (h2) and 10.76.0.3 (nobody), one device
    /// ```
    @Test func forgettingTenThousandMACsStallsNothing() throws {
        let lab = Lab()
        let hosts = TwoHosts(lab)
        let (a, b, h1, h2) = (hosts.a, hosts.b, hosts.h1, hosts.h2)
        let name = lab.bridgeName()
        let device = "vx-\(name)"
        let bridge = try lab.bridge(["--name", name, "--port", hosts.ta, "--port", hosts.tb, "--max-macs", "20000",
                                     "--remote", "10.76.0.2:4789,datapath=kernel,vni=77", "--remote", "10.76.0.3:4789,datapath=kernel,vni=77"], in: h1)
        try #require(lab.waitForLinks([hosts.ta, hosts.tb], in: h1), "\(bridge.output)")
        lab.place(hosts.ta, in: a, address: "10.77.0.1/24", from: h1)
        lab.place(hosts.tb, in: b, address: "10.77.0.2/24", from: h1)
        #expect(Lab.eventually { lab.ping(from: a, "10.77.0.2", count: 1).received == 1 }, "\(bridge.output)")
        // 10,000 broadcast frames from 10,000 MACs, from h2's address: the device learns each
        // behind 10.76.0.2 (sent twice, paced, so that none is lost to a full queue)
        let sent = lab.exec(h2, ["/usr/bin/python3", "-c", """
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("10.76.0.2", 0))
            header = bytes([8, 0, 0, 0, 0, 0, 77, 0])
            for round in range(2):
                for i in range(10000):
                    source = bytes([0x02, 0xaa, 0, (i >> 8) & 255, i & 255, 1])
                    s.sendto(header + b"\\xff" * 6 + source + b"\\x88\\xb5" + bytes(46), ("10.76.0.1", 4789))
                    if i % 200 == 0:
                        time.sleep(0.002)
            print("sent")
            """], timeout: 60)
        #expect(sent.output.contains("sent"), "\(sent.output)")
        func learnedBehind(_ host: String) -> Int {
            lab.exec(h1, ["bridge", "fdb", "show", "dev", device], timeout: 30).output.split(separator: "\n")
                .filter { $0.contains("dst \(host) ") && $0.hasPrefix("02:aa:") }.count
        }
        #expect(Lab.eventually(within: 10) { learnedBehind("10.76.0.2") == 10_000 }, "the device learned \(learnedBehind("10.76.0.2")) MACs behind 10.76.0.2")
        var answer = Host.Result(status: -1, output: "")
        let pings = try Self.pingsWhile(lab, from: a, to: "10.77.0.2") {
            let asked = Date()
            answer = ControlTests.client(["remote", "del", "10.76.0.2:4789"], name: name)
            print("remote del of a remote with 10,000 learned MACs answered in \(Int(Date().timeIntervalSince(asked) * 1000)) ms")
        }
        Self.unstalled(pings, bridge.output)
        #expect(answer.ok && answer.output.contains("remote 10.76.0.2:4789 removed (from vxlan device \(device), with the 10000 MACs it learned behind it)"), "\(answer.output)\n\(bridge.output)")
        #expect(learnedBehind("10.76.0.2") == 0, "MACs left behind the removed remote: \(learnedBehind("10.76.0.2"))")
        #expect(!lab.exec(h1, ["bridge", "fdb", "show", "dev", device]).output.contains("dst 10.76.0.2"), "the removed remote's entry is still there")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        #expect(bridge.stop() == 0, "\(bridge.output)")
    }
}
}
