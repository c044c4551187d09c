import Foundation
import Glibc
import TapBridgeDaemon
import Testing

/// `encap=sealed` between two hosts (namespaces joined by a veth underlay), as a user runs it:
/// TCP both ways, a capture of the underlay with no payload byte in clear, datagrams replayed
/// from that capture, the wrong key, a restart, and `--accept-peers` that admits key holders
/// only.
extension KernelTests {
@Suite("Sealed remotes between two hosts", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct SealedRemoteTests {
    /// ```
    ///  ns a ── tap ── tapbridge [h1 10.79.0.1] ══ veth, sealed ══ [h2 10.79.0.2] tapbridge ── tap ── ns b
    /// ```
    final class Hosts {
        let lab = Lab()
        let a: String, b: String, h1: String, h2: String, ta: String, tb: String, u1: String
        let key: String, otherKey: String

        init() throws {
            (a, b, h1, h2) = (lab.namespace("a"), lab.namespace("b"), lab.namespace("h1"), lab.namespace("h2"))
            (ta, tb, u1) = (lab.link("a"), lab.link("b"), lab.link("u1"))
            let u2 = lab.link("u2")
            #expect(Host.run(["ip", "link", "add", u1, "netns", h1, "type", "veth", "peer", "name", u2, "netns", h2]).ok)
            lab.exec(h1, ["ip", "addr", "add", "10.79.0.1/24", "dev", u1]); lab.exec(h1, ["ip", "link", "set", u1, "up"])
            lab.exec(h2, ["ip", "addr", "add", "10.79.0.2/24", "dev", u2]); lab.exec(h2, ["ip", "link", "set", u2, "up"])
            key = "/tmp/\(lab.link("k1")).key"
            otherKey = "/tmp/\(lab.link("k2")).key"
            for path in [key, otherKey] {
                unlink(path)
                let made = Host.run([Host.binary, "genkey", path])
                #expect(made.ok, "\(made.output)")
            }
        }

        deinit {
            unlink(key)
            unlink(otherKey)
        }

        func one(_ extra: [String] = []) throws -> Background {
            try lab.bridge(["--port", ta, "--encap", "sealed", "--key-file", key, "--remote", "10.79.0.2:4789"] + extra, in: h1)
        }

        func two(key: String? = nil, _ args: [String] = ["--remote", "10.79.0.1:4789"]) throws -> Background {
            try lab.bridge(["--port", tb, "--encap", "sealed", "--key-file", key ?? self.key] + args, in: h2)
        }

        /// Places the TAPs (once they exist) and pings a -> b.
        func place(_ one: Background, _ two: Background) -> Bool {
            #expect(lab.waitForLinks([ta], in: h1) && lab.waitForLinks([tb], in: h2), "\(one.output)\(two.output)")
            lab.place(ta, in: a, address: "10.77.0.1/24", from: h1)
            lab.place(tb, in: b, address: "10.77.0.2/24", from: h2)
            return lab.ping(from: a, "10.77.0.2").received == 3
        }

        /// A drop counter of the remote port of the bridge `bridge`.
        func drops(_ reason: String, of bridge: Background) throws -> UInt64 {
            let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: ControlTests.name(bridge)))
            return ports.first { $0.kind == "remote" }?.drops[reason] ?? 0
        }
    }

    /// The payload of the pings, in hex: "tapbridge-secret" (ping -p takes 16 bytes).
    static let pattern = "7461706272696467652d736563726574"

    @Test func tcpBothWaysWithNothingInClearAndReplaysRefused() throws {
        let hosts = try Hosts()
        let pcap = "/tmp/\(hosts.lab.link("cap")).pcap"
        defer { unlink(pcap) }
        let one = try hosts.one(), two = try hosts.two()
        #expect(hosts.place(one, two), "a -> b sealed:\n\(one.output)\n\(two.output)")
        #expect(one.output.contains("sealed VNI 1") && one.output.contains("mtu 1418"), "the start line: \(one.output)")
        let capture = try hosts.lab.capture(in: hosts.h1, on: hosts.u1, to: pcap, filter: "udp port 4789")
        let pings = hosts.lab.exec(hosts.a, ["ping", "-c", "5", "-i", "0.2", "-W", "1", "-p", Self.pattern, "10.77.0.2"])
        #expect(pings.output.contains(" 5 received"), "\(pings.output)")
        _ = capture.stop(signal: SIGINT)
        let hex = Host.run(["tcpdump", "-r", pcap, "-n", "-x", "-c", "20"]).output
        #expect(hex.contains("10.79.0.1.4789 > 10.79.0.2.4789"), "nothing captured: \(hex.prefix(500))")
        // the pattern, as tcpdump -x prints bytes (groups of 4 hex digits), at any alignment
        let dump = Host.run(["tcpdump", "-r", pcap, "-n", "-x"]).output.split(separator: "\n")
            .filter { $0.hasPrefix("\t0x") }.map { $0.split(separator: ":", maxSplits: 1).last.map { $0.replacingOccurrences(of: " ", with: "") } ?? "" }.joined()
        #expect(dump.count > 1000 && !dump.contains(String(Self.pattern.prefix(16))), "the ping payload is in clear on the underlay")

        // the captured datagrams sent again from the first host: each refused as a replay
        let replayedBefore = try hosts.drops("replayed", of: two)
        let script = """
            from scapy.all import rdpcap, send, IP, UDP
            ps = [p for p in rdpcap('\(pcap)') if UDP in p and p[IP].src == '10.79.0.1']
            send([IP(src=p[IP].src, dst=p[IP].dst)/UDP(sport=4789, dport=4789)/bytes(p[UDP].payload) for p in ps], verbose=False)
            print(len(ps))
            """
        let sent = hosts.lab.exec(hosts.h1, ["/usr/bin/python3", "-c", script], timeout: 60)
        let count = UInt64(sent.output.split(separator: "\n").last.flatMap { UInt64($0) } ?? 0)
        #expect(count >= 5, "replayed \(sent.output)")
        #expect(Lab.eventually { (try? hosts.drops("replayed", of: two)) == replayedBefore + count }, "replays counted: \((try? hosts.drops("replayed", of: two)) ?? 0) - \(replayedBefore), want \(count) more")
        #expect(try hosts.drops("unauthenticated", of: two) == 0)
        try OffloadTests.tcpBothWays(hosts.lab, hosts.a, hosts.b, "10.77.0.2", context: one.output + two.output)
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// Another key gets nothing through, counted; restarting one side (a new session) gets
    /// traffic back within a second.
    @Test func theWrongKeyGetsNothingAndARestartIsHeardAtOnce() throws {
        let hosts = try Hosts()
        let one = try hosts.one(), wrong = try hosts.two(key: hosts.otherKey)
        #expect(!hosts.place(one, wrong), "pings crossed between two keys")
        #expect(try hosts.drops("unauthenticated", of: wrong) > 0)
        // said, not only counted: a line when it starts, and the remote's state
        #expect(wrong.output.contains("refusing its datagrams: they do not authenticate"), "\(wrong.output)")
        let remote = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: ControlTests.name(wrong))).first { $0.kind == "remote" }
        #expect(remote?.state == "refusing" && remote?.remote?.why?.contains("do not authenticate") == true, "\(String(describing: remote))")
        #expect(wrong.stop() == 0)
        #expect(Lab.eventually { hosts.lab.exec(hosts.b, ["ip", "link", "show", hosts.tb]).ok == false }, "the TAP in b is gone")
        let two = try hosts.two()
        #expect(hosts.lab.waitForLinks([hosts.tb], in: hosts.h2))
        hosts.lab.place(hosts.tb, in: hosts.b, address: "10.77.0.2/24", from: hosts.h2)
        hosts.lab.exec(hosts.a, ["ip", "neigh", "flush", "all"])  // b's new TAP has a new MAC
        #expect(hosts.lab.ping(from: hosts.a, "10.77.0.2").received == 3, "after the right key:\n\(one.output)\n\(two.output)")
        // one side restarts: its new session is taken by the other at once
        #expect(one.stop() == 0)
        let again = try hosts.one()
        #expect(hosts.lab.waitForLinks([hosts.ta], in: hosts.h1))
        hosts.lab.place(hosts.ta, in: hosts.a, address: "10.77.0.1/24", from: hosts.h1)
        // from the moment the restarted side's TAP is up (its stack then has an address and a
        // route): the other side takes the new session's first datagram
        let started = Date()
        let back = Lab.eventually(within: 5) { hosts.lab.exec(hosts.a, ["ping", "-c", "1", "-W", "1", "10.77.0.2"]).ok }
        let after = Date().timeIntervalSince(started)
        #expect(back && after < 1, "traffic back \(after) s after the restart\n\(again.output)")
        #expect(try hosts.drops("replayed", of: two) == 0, "the restarted side's datagrams were taken for replays")
        #expect(again.stop() == 0 && two.stop() == 0)
    }

    /// `--accept-peers` with a key: the bridge that holds it becomes a peer; datagrams from
    /// another address that do not authenticate (garbage, or a capture replayed) do not.
    @Test func acceptPeersWithAKeyAdmitsKeyHoldersOnly() throws {
        let hosts = try Hosts()
        let two = try hosts.two(["--listen", "4789", "--accept-peers"])
        let one = try hosts.one()
        #expect(hosts.place(one, two), "a -> b through an admitted sealed peer:\n\(one.output)\n\(two.output)")
        #expect(two.output.contains("remote peer-10.79.0.1:4789: accepted (sealed)"), "\(two.output)")
        #expect(!two.output.contains("without a key"), "no risk line with a key: \(two.output)")
        hosts.lab.exec(hosts.h1, ["ip", "addr", "add", "10.79.0.3/24", "dev", hosts.u1])
        let script = """
            import os
            from scapy.all import send, IP, UDP
            garbage = bytes([1, 0, 0, 0, 0, 0, 1, 0]) + os.urandom(120)
            send([IP(src='10.79.0.3', dst='10.79.0.2')/UDP(sport=4789, dport=4789)/garbage for _ in range(20)], verbose=False)
            """
        #expect(hosts.lab.exec(hosts.h1, ["/usr/bin/python3", "-c", script], timeout: 60).ok)
        let stats = { try ControlTests.decode(StatsReport.self, ControlTests.client(["show", "stats", "--json"], name: ControlTests.name(two))) }
        #expect(Lab.eventually { ((try? stats())?.udp?.counters.unknownSender ?? 0) >= 20 }, "the garbage not counted: \(String(describing: try? stats()))")
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: ControlTests.name(two)))
        #expect(ports.filter { $0.kind == "remote" }.map(\.name) == ["peer-10.79.0.1:4789"], "\(ports.map(\.name))")
        #expect(one.stop() == 0 && two.stop() == 0)
    }
}
}
