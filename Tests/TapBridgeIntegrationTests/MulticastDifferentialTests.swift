import Foundation
import Testing

/// tapbridge's snooping decisions against the Linux bridge's (`mcast_snooping 1`): the same
/// scripted frames (`Tests/Peers/snoop_diff.py`: IGMPv2/v3 and MLDv1/v2 joins, leaves, general
/// and group-specific queries, group data, unknown groups, link-local groups, a neighbour
/// solicitation) go into four ports of each, and where each one comes out must be the same.
extension KernelTests {
@Suite("Multicast snooping against the kernel bridge", .enabled(if: Host.hasPython, Comment(rawValue: Host.pythonSkipReason)))
struct MulticastDifferentialTests {
    /// Four veth pairs: the bridge's ends in `inside`, the far ends in `outside`; returns both
    /// sets of names.
    static func ports(_ lab: Lab, _ tag: String, inside: String, outside: String) -> (inner: [String], outer: [String]) {
        let inner = (0..<4).map { lab.link("\(tag)\($0)") }, outer = (0..<4).map { lab.link("\(tag)o\($0)") }
        for i in 0..<4 {
            #expect(Host.run(["ip", "link", "add", inner[i], "netns", inside, "type", "veth", "peer", "name", outer[i], "netns", outside]).ok)
            lab.exec(outside, ["ip", "link", "set", outer[i], "up"])
        }
        return (inner, outer)
    }

    /// The script's answers, step by step: `[step, ports]`.
    static func play(_ lab: Lab, in ns: String, _ outer: [String]) throws -> [[String]] {
        let r = lab.exec(ns, ["/usr/bin/python3", "\(RemoteTests.peers)/snoop_diff.py"] + outer, timeout: 60)
        try #require(r.ok, "snoop_diff.py: \(r.output)")
        let line = r.output.split(separator: "\n").last { $0.hasPrefix("[") } ?? ""
        let steps = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [[Any]], "\(r.output)")
        return steps.map { ["\($0[0])", "\($0[1])"] }
    }

    @Test func theKernelBridgeDecidesTheSame() throws {
        let lab = Lab()
        let (k, d1, t, d2) = (lab.namespace("k"), lab.namespace("d1"), lab.namespace("t"), lab.namespace("d2"))
        // the kernel bridge: snooping on, no querier of its own, no STP
        try #require(lab.exec(k, ["ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "1", "mcast_querier", "0", "stp_state", "0"]).ok)
        let kernel = Self.ports(lab, "k", inside: k, outside: d1)
        for p in kernel.inner { lab.exec(k, ["ip", "link", "set", p, "master", "br0", "up"]) }
        lab.exec(k, ["ip", "link", "set", "br0", "up"])
        let theirs = try Self.play(lab, in: d1, kernel.outer)
        // tapbridge: the same four ports, through packet sockets
        let ours = Self.ports(lab, "t", inside: t, outside: d2)
        for p in ours.inner { lab.exec(t, ["ip", "link", "set", p, "up"]) }
        let bridge = try lab.bridge(ours.inner.flatMap { ["--port", "\($0),mode=packet"] }, in: t)
        try #require(Lab.eventually { Lab.portCounters(bridge, port: ours.inner[3])["rx_frames"] != nil }, "\(bridge.output)")
        let mine = try Self.play(lab, in: d2, ours.outer)
        #expect(bridge.stop() == 0)
        try #require(theirs.count == mine.count && theirs.count >= 20, "\(theirs)\n\(mine)")
        for (a, b) in zip(theirs, mine) {
            #expect(a == b, "step '\(a[0])': the kernel bridge sent it out of \(a[1]), tapbridge out of \(b[1])")
        }
        // (not a run where everything was flooded: the kernel narrowed some frames)
        #expect(theirs.contains { $0[1] == "[3]" || $0[1] == "[1, 3]" }, "the kernel never narrowed: \(theirs)")
    }
}
}
