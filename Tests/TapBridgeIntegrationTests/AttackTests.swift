import Foundation
import Testing

extension KernelTests {
/// What a hostile or vanished sender on one port costs the others: the idle CPU after the
/// trigger, and the ping RTT between two other ports during the attack against the same ping
/// without it.
@Suite("Hostile senders cost the others nothing")
struct AttackTests {
    /// The max RTT of a ping summary ("rtt min/avg/max/mdev = 0.04/0.1/0.3/0.05 ms"), in ms.
    static func maximumRTT(_ pingOutput: String) -> Double? {
        guard let line = pingOutput.split(separator: "\n").first(where: { $0.contains("min/avg/max") }),
            let values = line.split(separator: "=").last?.split(separator: "/"), values.count >= 3
        else { return nil }
        return Double(values[2].trimmingCharacters(in: .whitespaces))
    }

    /// CPU seconds the bridge used in the last second, once that falls under 0.2 (within
    /// `seconds`), or the last figure measured.
    static func settledCPU(_ pid: Int32, within seconds: Double = 4) -> Double {
        var cpu = 1.0
        _ = Lab.eventually(within: seconds) {
            cpu = HardeningTests.idleCPU(pid, over: 1)
            return cpu < 0.2
        }
        return cpu
    }

    /// A remote whose port is closed: every datagram to it brings an ICMP error back, and a
    /// send that takes the socket's pending errno leaves the queued errors behind. The loop
    /// once spun on them for as long as it ran (poll says POLLERR, recvmmsg says EAGAIN).
    @Test func aRemoteThatWentAwayLeavesNoSpin() throws {
        let lab = Lab()
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let (bridge, a, b, _, _) = try lab.pair(["--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2)"])
        // bursts of a few hundred broadcasts, flooded to the closed remote
        let bursts = lab.exec(a, ["/usr/bin/python3", "-c", """
            import socket, time
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            for burst in range(12):
                for k in range(100 + 37 * burst):
                    s.sendto(bytes(64), ("10.77.0.255", 9))
                time.sleep(0.15)
            """], timeout: 20)
        #expect(bursts.ok, "\(bursts.output)")
        let cpu = Self.settledCPU(bridge.pid)
        #expect(cpu < 0.2, "the bridge used \(cpu) s of CPU in 1 s with no traffic, want ~0 (spinning on the socket's error queue)")
        let udp = Lab.statsSection(bridge, "udp")
        #expect((udp["unreachable"] ?? 0) > 0, "no ICMP error was read: \(udp)")
        let ping = lab.ping(from: a, "10.77.0.2")
        #expect(ping.received == 3, "\(ping.output)")
        _ = b
        #expect(bridge.stop() == 0)
    }

    /// A port that writes TCP super-frames with a 1-byte segment size (a packet socket with
    /// PACKET_VNET_HDR on the far side of a veth packet port): refused at ingress and counted,
    /// so two offload-less TAPs are not sent 64,000 segments per frame; ping between them
    /// keeps its RTT. Then the smallest segment size a real stack uses (48): segmented, and
    /// the TAPs still keep their share.
    @Test func superFramesWithTinySegmentsCostTheOtherPortsNothing() throws {
        let lab = Lab()
        let (vh, vk) = (lab.link("h"), lab.link("k"))
        Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vk])
        Host.run(["ip", "link", "set", vh, "up"])
        Host.run(["ip", "link", "set", vk, "up"])
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        // the TAPs without offloads: everything for them is cut in software
        let bridge = try lab.bridge(["--port", "\(ta),offload=off", "--port", "\(tb),offload=off", "--port", "\(vk),mode=packet"])
        #expect(lab.waitForLinks([ta, tb]), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        #expect(Lab.eventually { Lab.portCounters(bridge, port: vk)["rx_frames"] != nil }, "\(bridge.output)")
        let warm = lab.ping(from: a, "10.77.0.2")
        #expect(warm.received == 3, "\(warm.output)")
        let quiet = lab.ping(from: a, "10.77.0.2", count: 40, interval: "0.05")
        let quietMax = Self.maximumRTT(quiet.output) ?? -1
        #expect(quiet.received == 40, "\(quiet.output)")
        for (size, refused) in [(1, true), (48, false)] {
            let before = Lab.portCounters(bridge, port: ta)["tx_frames"] ?? 0
            let sender = try lab.background(["/usr/bin/python3", "\(RemoteTests.peers)/gso_sender.py", "--iface", vh, "--gso-size", String(size), "--seconds", "3"])
            usleep(300_000)
            let attacked = lab.ping(from: a, "10.77.0.2", count: 40, interval: "0.05")
            _ = sender.wait(within: 10)
            let sent = Int(sender.output.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
            #expect(sent > 0, "the sender wrote nothing: \(sender.output)")
            let attackedMax = Self.maximumRTT(attacked.output) ?? .infinity
            #expect(attacked.received == 40, "gso_size \(size): ping lost \(40 - attacked.received) of 40 during the attack\n\(attacked.output)")
            // the quiet figure is tens of microseconds; a frame cut into 64,000 took 165 ms, and
            // 48-byte segments 307 ms, before. Typically 2-3 ms now; one run in about ten on 2
            // shared cores saw a single 36 ms spike, so the bound is 60 ms (5x under the defect)
            #expect(attackedMax < max(60, quietMax * 20), "gso_size \(size): ping max \(attackedMax) ms during the attack, \(quietMax) ms without")
            let counters = Lab.portCounters(bridge, port: vk)
            let tx = (Lab.portCounters(bridge, port: ta)["tx_frames"] ?? 0) - before
            if refused {
                #expect((counters["offload_tiny_segments"] ?? 0) > 0, "no offload_tiny_segments drop counted: \(counters)")
                #expect(tx < 1000, "gso_size 1: the TAP was sent \(tx) frames, want only the pings' (the super-frames refused)")
            } else {
                #expect(tx > 1000, "gso_size 48: the TAP was sent \(tx) frames, want the segments (such frames are legitimate)")
            }
            let cpu = Self.settledCPU(bridge.pid)
            #expect(cpu < 0.2, "gso_size \(size): \(cpu) s of CPU in 1 s after the attack, want ~0")
        }
        #expect(bridge.stop() == 0)
    }
}
}
