import Foundation
import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import Testing

extension KernelTests {
/// TCP through ports whose frames carry offloads: a veth (or a QEMU-held TAP) hands a packet
/// socket partial checksums and 64 KiB GSO super-frames. Every test moves iperf3 TCP both ways
/// and checks that no namespace counted a checksum or header error.
@Suite("Offloaded frames through packet ports")
struct OffloadTests {
    /// The port reports of a running bridge (`show ports --json`).
    static func ports(_ lab: Lab, _ bridgeName: String) -> [String: [String: Any]] {
        let r = Host.run([Host.binary, "show", "ports", "--json", "--name", bridgeName])
        guard let data = r.output.data(using: .utf8), let list = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]] else { return [:] }
        var out: [String: [String: Any]] = [:]
        for p in list { if let name = p["name"] as? String { out[name] = p } }
        return out
    }

    /// Whether port `report` carried super-frames whole (no segmentation, and frames larger on
    /// average than any MTU-sized one), or needed its frames finished in software.
    static func passedSuperFrames(_ report: [String: Any]) -> Bool {
        (report["super_frames_passed"] as? Int ?? 0) > 0 && report["frames_segmented"] as? Int == 0
    }

    static func finishedFrames(_ report: [String: Any]) -> Int {
        (report["checksums_completed"] as? Int ?? 0) + (report["frames_segmented"] as? Int ?? 0)
    }

    /// Runs iperf3 both ways between `a` and `b` (server address `bAddress`, then the reverse)
    /// and checks that TCP went through each way and both stacks' error counters are clean
    /// (how fast is the benchmark's business: Docs/bench/netbench.py).
    @discardableResult
    static func tcpBothWays(_ lab: Lab, _ a: String, _ b: String, _ bAddress: String, context: @autoclosure () -> String) throws -> (forward: Double, reverse: Double) {
        let forward = try lab.iperf(from: a, to: b, address: bAddress)
        #expect(forward.bps > 0, "iperf3 \(a) -> \(bAddress) failed\n\(forward.output)\n\(context())")
        let reverse = try lab.iperf(from: a, to: b, address: bAddress, reverse: true)
        #expect(reverse.bps > 0, "iperf3 \(bAddress) -> \(a) failed\n\(reverse.output)\n\(context())")
        for ns in [a, b] {
            let errors = lab.checksumErrors(in: ns)
            #expect(errors.isEmpty, "checksum/header errors in \(ns): \(errors), want none")
        }
        return (forward.bps, reverse.bps)
    }

    /// Gives the k-th device of `pairs` (moved into its namespace first with `move`) the
    /// address 10.77.0.(k+1)/24, or fd77::(k+1)/64 with IPv6 turned on in its namespace for
    /// `family` "ipv6", and brings it up. Returns the second device's address, for iperf3.
    static func address(_ lab: Lab, _ pairs: [(ns: String, dev: String)], family: String, move: Bool = false) -> String {
        let v6 = family == "ipv6"
        for (k, (ns, dev)) in pairs.enumerated() {
            if move { Host.run(["ip", "link", "set", dev, "netns", ns]) }
            if v6 { lab.enableIPv6(ns) }
            lab.addAddress(v6 ? "fd77::\(k + 1)/64" : "10.77.0.\(k + 1)/24", to: dev, in: ns)
            lab.exec(ns, ["ip", "link", "set", dev, "up"])
        }
        return v6 ? "fd77::2" : "10.77.0.2"
    }

    /// ```
    ///  ns a (10.77.0.1, fd77::1) ── tap a ─── tapbridge ─── packet socket on veth h ══ veth n (.2, fd77::2) in ns b
    /// ```
    /// Frames from b arrive with partial checksums and as super-frames. With offloads on, tap a
    /// takes them as they are (its vnet header), and the packet port sends a's super-frames
    /// whole; with `offload=off` on tap a, tapbridge completes and segments them for it.
    @Test(arguments: ["ipv4", "ipv6"], ["on", "off"])
    func tcpCrossesAVethPacketPortToATap(_ family: String, _ offload: String) throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, vh, vn) = (lab.link("a"), lab.link("h"), lab.link("n"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vn]).ok)
        Host.run(["ip", "link", "set", vn, "netns", b])
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", "\(ta),offload=\(offload)", "--port", "\(vh),mode=packet", "--name", name])
        #expect(lab.waitForLinks([ta]), "\(bridge.output)")
        Host.run(["ip", "link", "set", ta, "netns", a])
        let address = Self.address(lab, [(a, ta), (b, vn)], family: family)
        try Self.tcpBothWays(lab, a, b, address, context: bridge.output)
        let ports = Self.ports(lab, name)
        let tap = ports[ta] ?? [:]
        if offload == "on" {
            #expect(Self.passedSuperFrames(tap), "the TAP should have taken super-frames whole: \(tap)")
            #expect(Self.passedSuperFrames(ports[vh] ?? [:]), "the packet port should have sent super-frames whole: \(ports[vh] ?? [:])")
        } else {
            #expect(Self.finishedFrames(tap) > 0, "no frame needed finishing on the way to the TAP, so the fallback was not exercised: \(tap)")
            #expect(tap["offloads"] as? String == "off", "\(tap)")
        }
        #expect(bridge.stop() == 0)
    }

    /// ```
    ///  ns a (.1) ── veth ══ veth h ─── packet socket ─ tapbridge ─ packet socket ─── veth k ══ veth (.2) ── ns b
    /// ```
    @Test func tcpCrossesTwoVethPacketPorts() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (vh, va, vk, vb) = (lab.link("h"), lab.link("a"), lab.link("k"), lab.link("b"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", va, "netns", a]).ok)
        #expect(Host.run(["ip", "link", "add", vk, "type", "veth", "peer", "name", vb, "netns", b]).ok)
        lab.exec(a, ["ip", "addr", "add", "10.77.0.1/24", "dev", va]); lab.exec(a, ["ip", "link", "set", va, "up"])
        lab.exec(b, ["ip", "addr", "add", "10.77.0.2/24", "dev", vb]); lab.exec(b, ["ip", "link", "set", vb, "up"])
        let bridge = try lab.bridge(["--port", "\(vh),mode=packet", "--port", "\(vk),mode=packet"])
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(bridge.output)")
        try Self.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        #expect(bridge.stop() == 0)
    }

    /// ```
    ///  ns a (.1) ── tap a ── tapbridge 1 ══ VXLAN over 127.0.0.1 (trains) ══ tapbridge 2 ── tap b ── ns b (.2)
    /// ```
    /// With offloads on, each bridge cuts a's super-frames into a UDP_SEGMENT train and the
    /// other takes the train whole (UDP_GRO) and merges it back into a super-frame for its TAP;
    /// with `--offload off` neither does, and TCP must pass all the same.
    @Test(arguments: ["ipv4", "ipv6"], ["on", "off"])
    func tcpCrossesTwoBridgesJoinedByARemoteInTrains(_ family: String, _ offload: String) throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let (n1, n2) = (lab.bridgeName(), lab.bridgeName())
        let one = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2)", "--offload", offload, "--name", n1])
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)", "--offload", offload, "--name", n2])
        #expect(lab.waitForLinks([ta, tb]), "\(one.output)\(two.output)")
        let address = Self.address(lab, [(a, ta), (b, tb)], family: family, move: true)
        try Self.tcpBothWays(lab, a, b, address, context: one.output + two.output)
        for name in [n1, n2] {
            let stats = try ControlTests.decode(StatsReport.self, ControlTests.client(["show", "stats", "--json"], name: name))
            let udp = try #require(stats.udp).counters
            if offload == "on" {
                #expect(udp.trainsSent > 0 && udp.trainsReceived > 0 && udp.framesCoalesced > 0, "\(name): super-frames should cross in trains: \(udp)")
                #expect(udp.trainsRefused == 0, "\(udp)")
            } else {
                #expect(udp.trainsSent == 0 && udp.trainsReceived == 0 && udp.framesCoalesced == 0, "\(name): --offload off sends no trains: \(udp)")
            }
        }
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// ```
    ///  ns a (.1) ── veth ══ veth h ── packet socket ─ tapbridge 1 ═ VXLAN over 127.0.0.1 ═ tapbridge 2 ── tap b ── ns b (.2)
    /// ```
    @Test func tcpCrossesAVethPacketPortAndARemote() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (vh, va, tb) = (lab.link("h"), lab.link("a"), lab.link("b"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", va, "netns", a]).ok)
        lab.exec(a, ["ip", "addr", "add", "10.77.0.1/24", "dev", va]); lab.exec(a, ["ip", "link", "set", va, "up"])
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let one = try lab.bridge(["--port", "\(vh),mode=packet", "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2)"])
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)"])
        #expect(lab.waitForLinks([tb]), "\(two.output)")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(one.output)\n\(two.output)")
        try Self.tcpBothWays(lab, a, b, "10.77.0.2", context: one.output + two.output)
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// A tagged flow of offloaded frames: bridge 1 tags what veth h hands it (partial checksums,
    /// super-frames: the tag moves their offsets by 4) and writes them whole to trunk TAP t;
    /// bridge 2 reads them back from t with the tag in packet metadata (put back: +4 again)
    /// and untags them for tap a (-4).
    /// Bridge 2 holds no TAP: it reaches t, which bridge 1 holds, through the packet-socket
    /// fallback, as a trunk, and untags for tap a. (This kernel has no 8021q module, so the
    /// namespaces cannot tag by themselves.)
    /// ```
    ///  ns b (.2) ── veth ══ veth h, vlan=10 ─ bridge 1 ─ tap t, trunk=10 ══ packet socket, trunk=10 ─ bridge 2 ─ tap a, vlan=10 ── ns a (.1)
    /// ```
    @Test func tcpCrossesATrunkWithATaggedFlowOfOffloadedFrames() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tt, vh, vb) = (lab.link("a"), lab.link("t"), lab.link("h"), lab.link("b"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vb, "netns", b]).ok)
        lab.exec(b, ["ip", "addr", "add", "10.77.0.2/24", "dev", vb]); lab.exec(b, ["ip", "link", "set", vb, "up"])
        let name = lab.bridgeName()
        let one = try lab.bridge(["--port", "\(vh),mode=packet,vlan=10", "--port", "\(tt),trunk=10", "--name", name])
        #expect(lab.waitForLinks([tt]), "\(one.output)")
        let two = try lab.bridge(["--port", "\(tt),trunk=10", "--port", "\(ta),vlan=10"])
        #expect(lab.waitForLinks([ta]), "\(two.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(one.output)\n\(two.output)")
        #expect(two.output.contains("port \(tt): packet socket"), "bridge 2 did not reach t through a packet socket:\n\(two.output)")
        try Self.tcpBothWays(lab, a, b, "10.77.0.2", context: one.output + two.output)
        let trunk = Self.ports(lab, name)[tt] ?? [:]
        #expect(Self.passedSuperFrames(trunk), "tagged super-frames should cross the trunk whole: \(trunk)")
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// The mirror writes what the receiver gets: complete frames. A veth's super-frames are
    /// mirrored as their segments and partial checksums completed, so tshark finds no bad
    /// checksum and no frame longer than the MTU.
    @Test func theMirrorWritesCompleteFramesOfOffloadedTraffic() throws {
        try #require(Host.has("tshark"), "needs tshark (apt-get install tshark)")
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, vh, vn) = (lab.link("a"), lab.link("h"), lab.link("n"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vn, "netns", b]).ok)
        lab.exec(b, ["ip", "addr", "add", "10.77.0.2/24", "dev", vn]); lab.exec(b, ["ip", "link", "set", vn, "up"])
        let pcap = lab.temporaryPath("offload.pcap")
        let bridge = try lab.bridge(["--port", ta, "--port", "\(vh),mode=packet", "--mirror", pcap, "--mirror-port", vh, "--mirror-filter", "tcp"])
        #expect(lab.waitForLinks([ta]), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        let server = try lab.background(["ip", "netns", "exec", a, "iperf3", "-s", "-1", "-p", "5391"])
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, !lab.exec(a, ["ss", "-Htln", "sport = :5391"]).output.contains("5391") { usleep(50_000) }
        let client = lab.exec(b, ["iperf3", "-c", "10.77.0.1", "-p", "5391", "-n", "8M"], timeout: 30)
        #expect(client.ok, "\(client.output)")
        _ = server.wait(within: 5)
        #expect(bridge.stop() == 0)
        let lengths = Host.run(["tshark", "-r", pcap, "-T", "fields", "-e", "frame.len"], timeout: 60).output
            .split(separator: "\n").compactMap { Int($0) }
        #expect(lengths.count > 1000, "the mirror holds \(lengths.count) TCP frames, want the whole transfer")
        #expect(lengths.allSatisfy { $0 <= 1514 }, "frames longer than the MTU in the mirror: \(lengths.filter { $0 > 1514 }.prefix(5))")
        let bad = Host.run(["tshark", "-r", pcap, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                            "-Y", "tcp.checksum.status == \"Bad\" || ip.checksum.status == \"Bad\""], timeout: 60)
        // (tshark warns on stderr when run as root: not a frame)
        let badFrames = bad.output.split(separator: "\n").filter { !$0.contains("Running as user") }
        #expect(bad.ok && badFrames.isEmpty, "tshark finds bad checksums:\n\(bad.output.prefix(800))")
    }

    /// TAP to TAP with offloads: the namespaces' super-frames cross whole, both ways, IPv4 and
    /// IPv6, and both stacks count no checksum or header error.
    /// ```
    ///  ns a ── tap a (vnet header, TSO) ── tapbridge ── tap b (vnet header, TSO) ── ns b
    /// ```
    @Test(arguments: ["ipv4", "ipv6"])
    func tcpBetweenTwoTapsPassesSuperFramesWhole(_ family: String) throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", ta, "--port", tb, "--name", name])
        #expect(lab.waitForLinks([ta, tb]), "\(bridge.output)")
        let address = Self.address(lab, [(a, ta), (b, tb)], family: family, move: true)
        try Self.tcpBothWays(lab, a, b, address, context: bridge.output)
        let ports = Self.ports(lab, name)
        for tap in [ta, tb] {
            let report = ports[tap] ?? [:]
            #expect(report["offloads"] as? String != "off" && Self.passedSuperFrames(report), "\(tap) should carry super-frames whole: \(report)")
        }
        #expect(bridge.stop() == 0)
    }

    /// A super-frame leaving through a TAP without offloads (`offload=off`) arrives as correct
    /// MTU-sized frames: tcpdump in the receiving namespace sees none longer than 1,514 bytes,
    /// and TCP runs.
    @Test func superFramesForAnOffloadLessTapArriveAsMTUSizedFrames() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", ta, "--port", "\(tb),offload=off", "--name", name])
        #expect(lab.waitForLinks([ta, tb]), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        let pcap = lab.temporaryPath("mtu.pcap")
        let capture = try lab.capture(in: b, on: tb, to: pcap, filter: "tcp")
        let forward = try lab.iperf(from: a, to: b, address: "10.77.0.2", seconds: 1)
        #expect(forward.bps > 0, "\(forward.output)")
        usleep(300_000)
        _ = capture.stop(signal: SIGINT)
        // frame lines only ("…, ethertype IPv4 (0x0800), length 1514: …"), not tcpdump's
        // "reading from file …, snapshot length 262144"
        let lines = Host.run(["tcpdump", "-r", pcap, "-n", "-e"], timeout: 60).output.split(separator: "\n").filter { $0.contains("ethertype") }
        let lengths = lines.compactMap { line -> Int? in
            guard let r = line.range(of: "length ") else { return nil }
            return Int(line[r.upperBound...].prefix { $0.isNumber })
        }
        let long = lines.filter { line in line.range(of: "length ").map { Int(line[$0.upperBound...].prefix { $0.isNumber }) ?? 0 > 1514 } ?? false }
        #expect(lengths.count > 100 && long.isEmpty, "\(lengths.count) frames, \(long.count) longer than 1514:\n\(long.prefix(3).joined(separator: "\n"))")
        #expect(lab.checksumErrors(in: b).isEmpty, "\(lab.checksumErrors(in: b))")
        let report = Self.ports(lab, name)[tb] ?? [:]
        #expect(report["frames_segmented"] as? Int ?? 0 > 0 && report["offloads"] as? String == "off", "\(report)")
        #expect(bridge.stop() == 0)
    }
}
}
