import Foundation
import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import Testing

extension KernelTests {
@Suite("Remotes: raw peers, meshes, garbage, strangers, bad input", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct RemoteRobustnessTests {
    /// A raw peer whose frames scapy builds and parses answers ARP and ping through tapbridge;
    /// the remote is given by name (localhost, from /etc/hosts: no DNS).
    @Test func rawPeerBuiltWithScapyExchangesFramesBothWays() throws {
        let lab = Lab()
        let a = lab.namespace("a")
        let ta = lab.link("a")
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let bridge = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "localhost:\(p2),encap=raw,name=qemu"])
        #expect(lab.waitForLinks([ta]), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        let peer = Host.run(["/usr/bin/python3", "\(RemoteTests.peers)/raw_peer.py", "--listen", p2, "--bridge", "127.0.0.1:\(p1)",
                             "--ip", "10.77.0.9", "--target", "10.77.0.1", "--count", "3"], timeout: 20)
        #expect(peer.ok && peer.output.contains("\"arp_reply\": true") && peer.output.contains("\"echo_replies\": 3"),
                "raw peer: \(peer.output)\n\(bridge.output)")
        #expect(bridge.stop() == 0)
        #expect(bridge.output.contains("remote qemu (127.0.0.1:\(p2)): raw"), "\(bridge.output)")
    }

    /// Three bridges, each a remote of the other two. A broadcast must arrive exactly once
    /// per other namespace: split horizon stops it from going round the mesh.
    @Test func fullMeshWithSplitHorizonDeliversEachBroadcastOnce() throws {
        let lab = Lab()
        let ns = ["a", "b", "c"].map(lab.namespace)
        let taps = ["a", "b", "c"].map(lab.link)
        let udp = (1...3).map(lab.udpPort)
        var bridges: [Background] = []
        for i in 0..<3 {
            let others = (0..<3).filter { $0 != i }.flatMap { ["--remote", "127.0.0.1:\(udp[$0])"] }
            bridges.append(try lab.bridge(["--port", taps[i], "--listen", "127.0.0.1:\(udp[i])"] + others))
        }
        #expect(lab.waitForLinks(taps))
        for i in 0..<3 { lab.place(taps[i], in: ns[i], address: "10.77.0.\(i + 1)/24") }
        #expect(lab.ping(from: ns[0], "10.77.0.2", count: 2).received == 2)
        #expect(lab.ping(from: ns[0], "10.77.0.3", count: 2).received == 2)
        #expect(lab.ping(from: ns[1], "10.77.0.3", count: 2).received == 2)

        let pcaps = (1...2).map { FileManager.default.temporaryDirectory.appendingPathComponent("tb-\(lab.tag)-\($0).pcap").path }
        defer { pcaps.forEach { try? FileManager.default.removeItem(atPath: $0) } }
        let captures = try (1...2).map { try lab.capture(in: ns[$0], on: taps[$0], to: pcaps[$0 - 1], filter: "icmp") }
        let sent = Lab.transmitted(lab.exec(ns[0], ["ping", "-b", "-c", "3", "-i", "0.2", "-w", "2", "10.77.0.255"], timeout: 10).output)
        _ = Lab.eventually { pcaps.allSatisfy { MirrorTests.tcpdumpLines($0, containing: "> 10.77.0.255:") >= sent } }
        for c in captures { _ = c.stop(signal: SIGINT) }
        for (k, pcap) in pcaps.enumerated() {
            let lines = Host.run(["tcpdump", "-r", pcap, "-n"]).output.split(separator: "\n").filter { $0.contains("> 10.77.0.255:") }
            #expect(sent > 0 && lines.count == sent, "namespace \(ns[k + 1]) saw \(lines.count) broadcasts, want the \(sent) sent, each once")
        }
        let c = Lab.portCounters(bridges[1], port: taps[1])
        // the broadcasts from a that b did not pass on to c: counted, and each remote a mesh one
        let stats = try ControlTests.decode(StatsReport.self, ControlTests.client(["show", "stats", "--json"], name: ControlTests.name(bridges[1])))
        #expect((stats.udp?.counters.splitHorizon ?? 0) >= UInt64(sent), "split horizon withheld: \(String(describing: stats.udp))")
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: ControlTests.name(bridges[1])))
        #expect(ports.compactMap { $0.remote?.horizon } == ["mesh", "mesh"], "\(ports.map(\.remote))")
        for b in bridges { #expect(b.stop() == 0) }
        #expect((c["tx_frames"] ?? 1000) < 100, "bridge b sent \(c["tx_frames"] ?? -1) frames to its TAP: a loop?")
    }

    /// Garbage from an unconfigured sender and from a configured peer's address: every
    /// datagram is counted under the reason the sender's script predicts; pings still pass.
    @Test func garbageDatagramsAreCountedAndForwardingContinues() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let one = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2),name=two,vni=5"])
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1),vni=5"])
        #expect(lab.waitForLinks([ta, tb]))
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 2)

        let script = "\(RemoteTests.peers)/garbage.py"
        // the bridge stopped while they arrive: all 210 datagrams wait in its socket, more
        // drops than one batch records, so the rest must wait for the next batch, not vanish
        kill(one.pid, SIGSTOP)
        defer { kill(one.pid, SIGCONT) }
        let stranger = Host.run(["/usr/bin/python3", script, "--to", "127.0.0.1:\(p1)", "--from", "127.0.0.2", "--vni", "5"])
        let known = Host.run(["/usr/bin/python3", script, "--to", "127.0.0.1:\(p1)", "--from", "127.0.0.1", "--vni", "5"])
        try #require(stranger.ok && known.ok, "\(stranger.output)\(known.output)")
        let expected = try JSONSerialization.jsonObject(with: Data(known.output.utf8)) as? [String: Int] ?? [:]
        kill(one.pid, SIGCONT)
        // the queued datagrams are read once it runs again: wait for their count, not a time
        _ = Lab.eventually {
            let c = Lab.portCounters(one, port: "two")
            return ["malformed_encapsulation", "vni_mismatch", "runt"].allSatisfy { c[$0, default: 0] >= expected[$0, default: 0] }
        }
        #expect(one.isRunning, "\(one.output)")
        #expect(lab.ping(from: a, "10.77.0.2", count: 3).received == 3, "forwarding stopped after garbage:\n\(one.output)")
        let c = Lab.portCounters(one, port: "two")
        let unknown = Lab.statsSection(one, "udp")["unknown_sender"]
        #expect(one.stop() == 0 && two.stop() == 0)
        for reason in ["malformed_encapsulation", "vni_mismatch", "runt"] {
            #expect(c[reason, default: 0] == expected[reason, default: -1], "\(reason): got \(c[reason, default: 0]), want \(expected[reason, default: -1])")
        }
        #expect(unknown == expected["sent"], "unknown_sender: got \(unknown ?? -1), want \(expected["sent"] ?? -1)")
        #expect(one.output.contains("dropped datagram(s) from 127.0.0.2:"), "no log line for the stranger:\n\(one.output)")
    }

    /// A 65,535-byte frame (TAP MTU 65521, a maximal ping) plus the VXLAN header is larger than
    /// a UDP datagram can be: dropped and counted on the remote's port; normal frames pass.
    @Test func aFrameThatDoesNotFitADatagramIsDroppedAndCounted() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let one = try lab.bridge(["--port", "\(ta),mtu=65521", "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2),name=two"])
        let two = try lab.bridge(["--port", "\(tb),mtu=65521", "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)"])
        #expect(lab.waitForLinks([ta, tb]))
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        lab.exec(a, ["ip", "link", "set", ta, "mtu", "65521"])
        lab.exec(b, ["ip", "link", "set", tb, "mtu", "65521"])
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 2)
        let big = lab.exec(a, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", "65493", "10.77.0.2"], timeout: 10)
        #expect(!big.output.contains(" 2 received"), "a 65,535-byte frame crossed VXLAN: \(big.output)")
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 2, "normal frames stopped passing")
        let c = Lab.portCounters(one, port: "two")
        #expect(one.stop() == 0 && two.stop() == 0)
        #expect(c["frame_too_large"] == 2, "frame_too_large on the remote port: got \(c["frame_too_large"] ?? 0), want 2\n\(one.output)")
    }

    /// `--accept-peers`: an unknown raw sender becomes a remote, and is dropped after
    /// `--peer-timeout` of silence.
    @Test func acceptedPeerJoinsAndIsRemovedWhenSilent() throws {
        let lab = Lab()
        let a = lab.namespace("a")
        let ta = lab.link("a")
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let bridge = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--accept-peers", "--encap", "raw", "--peer-timeout", "1"])
        #expect(lab.waitForLinks([ta]))
        lab.place(ta, in: a, address: "10.77.0.1/24")
        let peer = Host.run(["/usr/bin/python3", "\(RemoteTests.peers)/raw_peer.py", "--listen", p2, "--bridge", "127.0.0.1:\(p1)",
                             "--ip", "10.77.0.9", "--target", "10.77.0.1"], timeout: 20)
        #expect(peer.ok, "accepted peer: \(peer.output)\n\(bridge.output)")
        // its first datagram (an ARP request) waited for its admission, and was answered
        #expect(peer.output.contains("\"arp_requests\": 1}"), "the first datagram of a new peer was lost: \(peer.output)")
        #expect(Lab.eventually { bridge.output.contains("remote peer-127.0.0.1:\(p2): silent for") }, "idle peer not removed:\n\(bridge.output)")
        #expect(bridge.stop() == 0)
        #expect(bridge.output.contains("remote peer-127.0.0.1:\(p2): accepted"), "\(bridge.output)")
    }

    /// Every datagram of a sender admitted by --accept-peers reaches the LAN: 50 UDP_GRO trains
    /// of 64 from one new sender (the first train once lost 63 frames, uncounted), and, with
    /// --offload off, 200 new senders with two bursts of 64 each (1,824 were once refused
    /// although every sender was admitted). Nothing refused, nothing unknown. The frames go to
    /// the TAP's MAC, learned first: raw peers are endpoints that reach each other, and 200
    /// senders' broadcasts would be flooded to the 199 others (40,000 datagrams a burst), which is
    /// not what this test measures.
    @Test(arguments: [true, false])
    func everyDatagramOfANewPeerIsDelivered(trains: Bool) throws {
        let lab = Lab()
        let a = lab.namespace("a")
        let ta = lab.link("a")
        let p1 = lab.udpPort(1)
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--accept-peers", "--encap", "raw", "--max-peers", "256", "--name", name]
            + (trains ? [] : ["--offload", "off"]))
        #expect(lab.waitForLinks([ta]), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.exec(a, ["ping", "-c", "1", "-W", "0.3", "10.77.0.99"])  // (an ARP broadcast: the bridge learns the TAP's MAC)
        let mac = ControlTests.mac(lab, a, ta)
        _ = Lab.eventually { ControlTests.client(["show", "fdb"], name: name).output.contains(mac) }
        let shape = trains ? ["--senders", "1", "--bursts", "50", "--per-burst", "64", "--train"] : ["--senders", "200", "--bursts", "2", "--per-burst", "64"]
        let sender = Host.run(["/usr/bin/python3", "\(RemoteTests.peers)/new_peers.py", "--bridge", "127.0.0.1:\(p1)", "--destination", mac] + shape, timeout: 30)
        #expect(sender.ok && sender.output.contains("\"sent\": \(trains ? 3200 : 25600)"), "\(sender.output)")
        let want = trains ? 3200 : 25_600
        var delivered = 0
        _ = Lab.eventually(within: 5) {
            delivered = Lab.portCounters(bridge, port: ta)["tx_frames"] ?? 0
            return delivered >= want
        }
        let udp = Lab.statsSection(bridge, "udp")
        #expect(delivered == want, "got \(delivered) frames delivered to the TAP, want \(want); udp: \(udp)")
        #expect(udp["peers_refused"] == 0 && udp["unknown_sender"] == 0, "\(udp)")
        if trains { #expect((udp["trains_received"] ?? 0) == 50, "\(udp)") }
        #expect(bridge.stop() == 0)
    }

    static let badRemotes: [DataPlaneTests.BadStart] = [
        .init(name: "remote without port", args: ["--remote", "127.0.0.1"], status: 64, message: "--remote '127.0.0.1': expected HOST:PORT"),
        .init(name: "IPv6 without brackets", args: ["--remote", "::1:4789"], status: 64, message: "IPv6 in brackets"),
        .init(name: "port out of range", args: ["--remote", "127.0.0.1:70000"], status: 64, message: "PORT 1-65535"),
        .init(name: "bad encap", args: ["--remote", "127.0.0.1:4789,encap=gre"], status: 64, message: "encap must be vxlan, raw, sealed or geneve"),
        .init(name: "bad vni", args: ["--vni", "16777216", "--remote", "127.0.0.1:4789"], status: 64, message: "--vni must be 0-16777215"),
        .init(name: "bad listen", args: ["--listen", "nope", "--remote", "127.0.0.1:4789"], status: 64, message: "--listen 'nope'"),
        .init(name: "accept-peers without a port", args: ["--accept-peers"], status: 64, message: "--accept-peers needs --listen"),
        .init(name: "sealed in the kernel", args: ["--remote", "127.0.0.1:4789,encap=sealed,datapath=kernel"], status: 64, message: "datapath=kernel is the kernel's vxlan device: it carries encap=vxlan only"),
        .init(name: "kernel remote without split horizon", args: ["--remote", "127.0.0.1:4789,datapath=kernel,horizon=off"], status: 64, message: "horizon=off cannot apply"),
        .init(name: "bad datapath", args: ["--remote", "127.0.0.1:4789,datapath=ebpf"], status: 64, message: "datapath must be user or kernel"),
        .init(name: "kernel remote under --encap raw", args: ["--encap", "raw", "--remote", "127.0.0.1:4789,datapath=kernel"], status: 64, message: "datapath=kernel carries encap=vxlan only"),
        .init(name: "IPv6 peer on an IPv4 socket", args: ["--listen", "127.0.0.1:47999", "--remote", "[::1]:4789"], status: 1, message: "remote [::1]:4789: cannot resolve ::1 to an IPv4 address"),
    ]

    @Test(arguments: badRemotes)
    func badRemoteInputGivesOneLineAndANonZeroExit(_ c: DataPlaneTests.BadStart) {
        let r = Host.run([Host.binary] + c.args)
        #expect(r.status == c.status, "got exit \(r.status), want \(c.status): \(r.output)")
        #expect(r.output.split(separator: "\n").count == 1 && r.output.contains(c.message), "got: \(r.output)")
    }
}
}
