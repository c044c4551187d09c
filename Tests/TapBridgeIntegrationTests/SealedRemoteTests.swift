import Foundation
import Glibc
import TapBridgeDaemon
import TapBridgeControl
import Testing

/// `encap=sealed` between two hosts (namespaces joined by a veth underlay), as a user runs it:
/// a key per host, each naming the other's public key; TCP both ways, a capture of the
/// underlay with no payload byte in clear, datagrams replayed from that capture, the same
/// datagrams sent back to their sender and redirected to a third bridge, the wrong key, and a
/// restart.
extension KernelTests {
@Suite("Sealed remotes between two hosts", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct SealedRemoteTests {
    /// ```
    ///  ns a ── tap ── tapbridge [h1 10.79.0.1] ══ veth, sealed ══ [h2 10.79.0.2] tapbridge ── tap ── ns b
    /// ```
    final class Hosts {
        let lab = Lab()
        let a: String, b: String, h1: String, h2: String, ta: String, tb: String, u1: String, u2: String
        let key1: (path: String, publicKey: String), key2: (path: String, publicKey: String), other: (path: String, publicKey: String)

        init() throws {
            (a, b, h1, h2) = (lab.namespace("a"), lab.namespace("b"), lab.namespace("h1"), lab.namespace("h2"))
            (ta, tb, u1, u2) = (lab.link("a"), lab.link("b"), lab.link("u1"), lab.link("u2"))
            #expect(Host.run(["ip", "link", "add", u1, "netns", h1, "type", "veth", "peer", "name", u2, "netns", h2]).ok)
            lab.exec(h1, ["ip", "addr", "add", "10.79.0.1/24", "dev", u1]); lab.exec(h1, ["ip", "link", "set", u1, "up"])
            lab.exec(h2, ["ip", "addr", "add", "10.79.0.2/24", "dev", u2]); lab.exec(h2, ["ip", "link", "set", u2, "up"])
            (key1, key2, other) = (try lab.sealedKey("one"), try lab.sealedKey("two"), try lab.sealedKey("other"))
        }

        func one(_ extra: [String] = []) throws -> Background {
            try lab.bridge(["--port", ta, "--key-file", key1.path, "--remote", "10.79.0.2:4789,encap=sealed,peer=\(key2.publicKey)"] + extra, in: h1)
        }

        func two(key: String? = nil, port: Int = 4789, tap: String? = nil) throws -> Background {
            try lab.bridge(["--port", tap ?? tb, "--key-file", key ?? key2.path, "--listen", "\(port)", "--remote", "10.79.0.1:4789,encap=sealed,peer=\(key1.publicKey)"], in: h2)
        }

        /// Places the TAPs (once they exist) and pings a -> b.
        func place(_ one: Background, _ two: Background) -> Bool {
            #expect(lab.waitForLinks([ta], in: h1) && lab.waitForLinks([tb], in: h2), "\(one.output)\(two.output)")
            lab.place(ta, in: a, address: "10.77.0.1/24", from: h1)
            lab.place(tb, in: b, address: "10.77.0.2/24", from: h2)
            return lab.ping(from: a, "10.77.0.2").received == 3
        }

        func ports(of bridge: Background) throws -> [PortReport] {
            try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: ControlTests.name(bridge)))
        }

        /// A drop counter of the remote port of the bridge `bridge`.
        func drops(_ reason: String, of bridge: Background) throws -> UInt64 {
            try ports(of: bridge).first { $0.kind == "remote" }?.drops[reason] ?? 0
        }

        /// Captures the datagrams h1 sends h2 while `traffic` runs; their UDP payloads' count.
        func capture(_ pcap: String, during traffic: () -> Void) throws {
            let capture = try lab.capture(in: h1, on: u1, to: pcap, filter: "udp and src host 10.79.0.1")
            traffic()
            _ = capture.stop(signal: SIGINT)
        }

        /// Sends the captured payloads again with scapy, from `source` to `destination`:`port`,
        /// in namespace `ns`; how many were sent.
        func resend(_ pcap: String, from source: String, to destination: String, port: Int, in ns: String) -> UInt64 {
            let script = """
                from scapy.all import rdpcap, send, IP, UDP
                ps = [p for p in rdpcap('\(pcap)') if UDP in p and p[IP].src == '10.79.0.1']
                send([IP(src='\(source)', dst='\(destination)')/UDP(sport=4789, dport=\(port))/bytes(p[UDP].payload) for p in ps], verbose=False)
                print(len(ps))
                """
            let sent = lab.exec(ns, ["/usr/bin/python3", "-c", script], timeout: 60)
            return UInt64(sent.output.split(separator: "\n").last.flatMap { UInt64($0) } ?? 0)
        }
    }

    /// The payload of the pings, in hex: "tapbridge-secret" (ping -p takes 16 bytes).
    static let pattern = "7461706272696467652d736563726574"

    @Test func tcpBothWaysWithNothingInClearAndReplaysRefused() throws {
        let hosts = try Hosts()
        let pcap = hosts.lab.temporaryPath("cap.pcap")
        let one = try hosts.one(), two = try hosts.two()
        #expect(hosts.place(one, two), "a -> b sealed:\n\(one.output)\n\(two.output)")
        #expect(one.output.contains("sealed VNI 1") && one.output.contains("mtu 1426"), "the start line: \(one.output)")
        try hosts.capture(pcap) {
            let pings = hosts.lab.exec(hosts.a, ["ping", "-c", "5", "-i", "0.2", "-W", "1", "-p", Self.pattern, "10.77.0.2"])
            #expect(pings.output.contains(" 5 received"), "\(pings.output)")
        }
        let hex = Host.run(["tcpdump", "-r", pcap, "-n", "-x", "-c", "20"]).output
        #expect(hex.contains("10.79.0.1.4789 > 10.79.0.2.4789"), "nothing captured: \(hex.prefix(500))")
        // the pattern, as tcpdump -x prints bytes (groups of 4 hex digits), at any alignment
        let dump = Host.run(["tcpdump", "-r", pcap, "-n", "-x"]).output.split(separator: "\n")
            .filter { $0.hasPrefix("\t0x") }.map { $0.split(separator: ":", maxSplits: 1).last.map { $0.replacingOccurrences(of: " ", with: "") } ?? "" }.joined()
        #expect(dump.count > 500 && !dump.contains(String(Self.pattern.prefix(16))), "the ping payload is in clear on the underlay")

        // the captured datagrams sent again from the first host: each refused as a replay
        let replayedBefore = try hosts.drops("replayed", of: two)
        let count = hosts.resend(pcap, from: "10.79.0.1", to: "10.79.0.2", port: 4789, in: hosts.h1)
        #expect(count >= 5, "replayed \(count)")
        #expect(Lab.eventually { (try? hosts.drops("replayed", of: two)) == replayedBefore + count }, "replays counted: \((try? hosts.drops("replayed", of: two)) ?? 0) - \(replayedBefore), want \(count) more")
        #expect(try hosts.drops("unauthenticated", of: two) == 0)
        try OffloadTests.tcpBothWays(hosts.lab, hosts.a, hosts.b, "10.77.0.2", context: one.output + two.output)
        // show ports: the peer's key and the last handshake
        let remote = try hosts.ports(of: one).first { $0.kind == "remote" }
        #expect(remote?.remote?.peerKey == String(hosts.key2.publicKey.prefix(8)) + "…" && remote?.remote?.lastHandshakeSeconds != nil, "\(String(describing: remote))")
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// What h1 sent h2, sent back to h1 from h2's address (source and destination swapped):
    /// h1 opens none of it and learns no MAC behind its remote. The same datagrams sent to a
    /// third bridge that has another key and names h1 as its peer too: it gets nothing.
    @Test func datagramsSentBackOrRedirectedDeliverNothing() throws {
        let hosts = try Hosts()
        let pcap = hosts.lab.temporaryPath("cap.pcap")
        let one = try hosts.one(), two = try hosts.two()
        let tc = hosts.lab.link("c")
        let three = try hosts.two(key: hosts.other.path, port: 4790, tap: tc)
        #expect(hosts.place(one, two), "a -> b sealed:\n\(one.output)\n\(two.output)")
        try hosts.capture(pcap) {
            #expect(hosts.lab.exec(hosts.a, ["ping", "-c", "5", "-i", "0.2", "-W", "1", "10.77.0.2"]).output.contains(" 5 received"))
        }
        let fdb = { try ControlTests.decode([FDBReport].self, ControlTests.client(["show", "fdb", "--json"], name: ControlTests.name(one))).map { "\($0.mac) \($0.port)" }.sorted() }
        let fdbBefore = try fdb()
        let (unknownBefore, received) = (try hosts.drops("unknown_index", of: one), try hosts.ports(of: one).first { $0.kind != "remote" }?.counters.transmittedFrames ?? 0)
        let back = hosts.resend(pcap, from: "10.79.0.2", to: "10.79.0.1", port: 4789, in: hosts.h2)
        #expect(back >= 5)
        #expect(Lab.eventually { (try? hosts.drops("unknown_index", of: one)) == unknownBefore + back }, "sent back: \((try? hosts.drops("unknown_index", of: one)) ?? 0) - \(unknownBefore), want \(back) more")
        let tapFrames = try hosts.ports(of: one).first { $0.kind != "remote" }?.counters.transmittedFrames ?? 0
        #expect(tapFrames == received, "frames delivered to h1's TAP from its own datagrams")
        #expect(try fdb() == fdbBefore, "a MAC moved")
        // redirected to the third bridge (another key, the same peer list)
        let redirected = hosts.resend(pcap, from: "10.79.0.1", to: "10.79.0.2", port: 4790, in: hosts.h1)
        #expect(Lab.eventually { (try? hosts.drops("unknown_index", of: three)) == redirected }, "redirected: \((try? hosts.drops("unknown_index", of: three)) ?? 0), want \(redirected)")
        #expect(try hosts.ports(of: three).first { $0.kind != "remote" }?.counters.transmittedFrames ?? 0 == 0, "frames delivered by the third bridge")
        #expect(one.stop() == 0 && two.stop() == 0 && three.stop() == 0)
    }

    /// Another key gets nothing through, counted and said; restarting one side gets traffic
    /// back within a second (its first frame starts a handshake the other takes at once).
    @Test func theWrongKeyGetsNothingAndARestartIsHeardAtOnce() throws {
        let hosts = try Hosts()
        let one = try hosts.one(), wrong = try hosts.two(key: hosts.other.path)
        #expect(!hosts.place(one, wrong), "pings crossed with the wrong key")
        #expect(hosts.lab.ping(from: hosts.b, "10.77.0.1").received == 0, "pings crossed with the wrong key")  // (b's frames start the wrong host's handshakes)
        #expect(try hosts.drops("bad_mac1", of: wrong) > 0, "h1's initiations are for key2's holder")
        #expect(Lab.eventually { (try? hosts.drops("unauthenticated", of: one)) ?? 0 > 0 }, "the wrong host's initiations are refused")
        // said, not only counted: a line when it starts, and the remote's state
        #expect(wrong.output.contains("refusing its datagrams: they do not authenticate"), "\(wrong.output)")
        let remote = try hosts.ports(of: wrong).first { $0.kind == "remote" }
        #expect(remote?.state == "refusing" && remote?.remote?.why?.contains("do not authenticate") == true, "\(String(describing: remote))")
        #expect(wrong.stop() == 0)
        #expect(Lab.eventually { hosts.lab.exec(hosts.b, ["ip", "link", "show", hosts.tb]).ok == false }, "the TAP in b is gone")
        let two = try hosts.two()
        #expect(hosts.lab.waitForLinks([hosts.tb], in: hosts.h2))
        hosts.lab.place(hosts.tb, in: hosts.b, address: "10.77.0.2/24", from: hosts.h2)
        hosts.lab.exec(hosts.a, ["ip", "neigh", "flush", "all"])  // b's new TAP has a new MAC
        #expect(Lab.eventually(within: 5) { hosts.lab.ping(from: hosts.a, "10.77.0.2").received == 3 }, "after the right key:\n\(one.output)\n\(two.output)")
        // one side restarts: its first frame starts a handshake that the other takes at once
        #expect(one.stop() == 0)
        let again = try hosts.one()
        #expect(hosts.lab.waitForLinks([hosts.ta], in: hosts.h1))
        hosts.lab.place(hosts.ta, in: hosts.a, address: "10.77.0.1/24", from: hosts.h1)
        let started = Date()
        let back = Lab.eventually(within: 5) { hosts.lab.exec(hosts.a, ["ping", "-c", "1", "-W", "1", "10.77.0.2"]).ok }
        let after = Date().timeIntervalSince(started)
        #expect(back && after < 1, "traffic back \(after) s after the restart\n\(again.output)")
        #expect(try hosts.drops("replayed", of: two) == 0 && hosts.drops("stale_handshake", of: two) == 0, "the restarted side's handshake was taken for a replay")
        #expect(again.stop() == 0 && two.stop() == 0)
    }

    /// `keepalive=1` on h1's remote: the session comes up with no frame sent, and keepalives
    /// flow. Then h1's address changes under the running bridges: h2 follows h1's
    /// authenticated datagrams to the new address (roaming, logged), and TCP runs both ways.
    @Test func keepaliveBringsTheSessionUpAndARoamingHostIsFollowed() throws {
        let hosts = try Hosts()
        let one = try hosts.lab.bridge(["--port", hosts.ta, "--key-file", hosts.key1.path,
                                        "--remote", "10.79.0.2:4789,encap=sealed,peer=\(hosts.key2.publicKey),keepalive=1"], in: hosts.h1)
        let two = try hosts.two()
        func remote(of bridge: Background) -> RemoteReport? { (try? hosts.ports(of: bridge))?.first { $0.kind == "remote" }?.remote }
        // (one may start first: its initiation then finds no one, and is sent again 5 s later)
        #expect(Lab.eventually(within: 15) { (remote(of: two)?.messages?["keepalives_received"] ?? 0) >= 2 },
                "no keepalives without traffic: \(String(describing: remote(of: two)))\n\(one.output)\n\(two.output)")
        #expect(remote(of: two)?.lastHandshakeSeconds != nil, "the handshake came before any frame")
        #expect(hosts.place(one, two))
        // (deleted first: a second address in the subnet would go with the primary)
        hosts.lab.exec(hosts.h1, ["ip", "addr", "del", "10.79.0.1/24", "dev", hosts.u1])
        hosts.lab.exec(hosts.h1, ["ip", "addr", "add", "10.79.0.11/24", "dev", hosts.u1])
        #expect(Lab.eventually(within: 6) { remote(of: two)?.endpoint == "10.79.0.11:4789" },
                "h2 did not follow h1: \(String(describing: remote(of: two)))\n\(two.output)")
        #expect(two.output.contains("moved to 10.79.0.11:4789"), "\(two.output)")
        try OffloadTests.tcpBothWays(hosts.lab, hosts.a, hosts.b, "10.77.0.2", context: one.output + two.output)
        #expect(one.stop() == 0 && two.stop() == 0)
    }
}
}
