import Foundation
import TapBridgeDaemon
import TapBridgeControl
import Testing

/// Geneve remotes against an endpoint whose headers scapy builds and parses (this machine's
/// kernel has no `geneve` device: CONFIG_GENEVE is off). UDP stays on veth links between
/// namespaces these tests create.
extension KernelTests {
@Suite("Geneve remotes", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct GeneveTests {
    /// ```
    ///  ns a (10.79.0.1) ── tap ── tapbridge [ns t, 10.78.0.1] ══ veth ══ [ns v, 10.78.0.2] geneve_peer.py ── tap (10.79.0.2)
    /// ```
    /// The peer relays between a TAP of its own (MTU 1450, what fits the 1500-byte underlay)
    /// and Geneve on UDP port 6081, VNI 42, as a host's geneve device would; tapbridge as
    /// WireFormats.md writes it, no `mtu=`. Ping, then TCP both ways with no checksum error
    /// and no IP fragment made by either kernel; nothing counted as malformed or for another
    /// VNI on either side.
    @Test func aGeneveEndpointBuiltWithScapyIsAPeer() throws {
        let lab = Lab()
        let (a, t, v) = (lab.namespace("a"), lab.namespace("t"), lab.namespace("v"))
        let (ta, ut, uv, gt) = (lab.link("a"), lab.link("t"), lab.link("v"), lab.link("g"))
        #expect(Host.run(["ip", "link", "add", ut, "netns", t, "type", "veth", "peer", "name", uv, "netns", v]).ok)
        lab.exec(t, ["ip", "addr", "add", "10.78.0.1/24", "dev", ut]); lab.exec(t, ["ip", "link", "set", ut, "up"])
        lab.exec(v, ["ip", "addr", "add", "10.78.0.2/24", "dev", uv]); lab.exec(v, ["ip", "link", "set", uv, "up"])
        let peer = try lab.background(["ip", "netns", "exec", v, "/usr/bin/python3", "\(RemoteTests.peers)/geneve_peer.py", "--tap", gt,
                                       "--listen", "10.78.0.2:6081", "--remote", "10.78.0.1:6081", "--vni", "42", "--seconds", "120"])
        try #require(Lab.eventually(within: 20) { peer.output.contains("ready") }, "the Geneve peer did not start: \(peer.output)")
        lab.exec(v, ["ip", "link", "set", gt, "mtu", "1450"])
        lab.exec(v, ["ip", "addr", "add", "10.79.0.2/24", "dev", gt]); lab.exec(v, ["ip", "link", "set", gt, "up"])

        let bridge = try lab.bridge(["--port", ta, "--remote", "10.78.0.2:6081,encap=geneve,vni=42"], in: t)
        #expect(lab.waitForLinks([ta], in: t), "\(bridge.output)")
        #expect(bridge.output.contains("mtu 1450 (fits the 1500-byte path to remote 10.78.0.2:6081 over geneve"), "the TAP's default MTU:\n\(bridge.output)")
        lab.place(ta, in: a, address: "10.79.0.1/24", from: t)
        #expect(lab.ping(from: a, "10.79.0.2").received == 3, "tapbridge -> the Geneve peer:\n\(bridge.output)\n\(peer.output)")
        let fragmentsBefore = (lab.fragmentsCreated(in: t), lab.fragmentsCreated(in: v))
        try OffloadTests.tcpBothWays(lab, a, v, "10.79.0.2", context: bridge.output + peer.output)
        let fragments = (lab.fragmentsCreated(in: t) - fragmentsBefore.0, lab.fragmentsCreated(in: v) - fragmentsBefore.1)
        #expect(fragments == (0, 0), "IP fragments made for TCP (tapbridge's side, the peer's side): got \(fragments), want none")
        let c = Lab.portCounters(bridge, port: "10.78.0.2:6081")
        #expect((c["rx_frames"] ?? 0) > 100 && c["vni_mismatch"] == nil && c["malformed_encapsulation"] == nil, "the remote's counters: \(c)")
        #expect(bridge.stop() == 0)
        #expect(peer.stop() == 0)
        #expect(peer.output.contains("\"refused\": 0"), "the peer refused datagrams tapbridge sent: \(peer.output)")
    }
}
}
