import CTapBridge
import Foundation
import Testing

/// Every test that needs root, namespaces and real traffic lives in this one serialized suite:
/// on 2 cores, overlapping traffic tests skew each other (and separate suites would run in
/// parallel).
@Suite("Kernel tests (root, namespaces)", .serialized, .enabled(if: Host.canRun, Comment(rawValue: Host.skipReason ?? "")))
enum KernelTests {}

extension KernelTests {
/// Real TAP devices, real namespaces, real ping/iperf3/tcpdump, through the release binary.
@Suite("Linux data plane")
struct DataPlaneTests {
    /// ```
    ///  ns a (10.77.0.1) ── tap a ┐
    ///                            tapbridge
    ///  ns b (10.77.0.2) ── tap b ┘
    /// ```
    @Test func twoNamespacesPingBothWaysResolveARPAndRunIperf() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let bridge = try lab.bridge(["--port", ta, "--port", tb])
        #expect(lab.waitForLinks([ta, tb]), "TAPs did not appear: \(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")

        let ab = lab.ping(from: a, "10.77.0.2")
        #expect(ab.received == 3, "a -> b: got \(ab.received)/3 replies\n\(ab.output)\n\(bridge.output)")
        let ba = lab.ping(from: b, "10.77.0.1")
        #expect(ba.received == 3, "b -> a: got \(ba.received)/3 replies")
        let neigh = lab.exec(a, ["ip", "neigh", "show", "10.77.0.2"]).output
        #expect(neigh.contains("lladdr"), "ARP did not resolve: \(neigh)")

        let server = try lab.background(["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-p", "5301"])
        _ = Lab.eventually { lab.exec(b, ["ss", "-Htln", "sport = :5301"]).output.contains("5301") }
        let client = lab.exec(a, ["iperf3", "-c", "10.77.0.2", "-p", "5301", "-t", "3", "-J"], timeout: 20)
        #expect(client.ok, "iperf3 failed: \(client.output.prefix(400))")
        let bps = Self.receivedBitsPerSecond(client.output)
        #expect(bps > 0, "iperf3 TCP: got \(bps) bit/s, want a completed run that moved data (speed is netbench's to measure)")
        _ = server.wait(within: 5)
        #expect(bridge.stop() == 0, "exit status after SIGTERM: \(bridge.output)")
    }

    static func receivedBitsPerSecond(_ json: String) -> Double {
        guard let data = json.data(using: .utf8),
            let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let end = root["end"] as? [String: Any], let sum = end["sum_received"] as? [String: Any]
        else { return 0 }
        return sum["bits_per_second"] as? Double ?? 0
    }

    /// ```
    ///  ns a (.1) ── tap a ┐
    ///  ns b (.2) ── tap b ┼── tapbridge        tcpdump on c: sees broadcasts, not a<->b unicast
    ///  ns c (.3) ── tap c ┘
    /// ```
    @Test func learnedUnicastDoesNotReachTheThirdPortButBroadcastDoes() throws {
        let lab = Lab()
        let ns = ["a", "b", "c"].map(lab.namespace)
        let taps = ["a", "b", "c"].map(lab.link)
        let bridge = try lab.bridge(taps.flatMap { ["--port", $0] })
        #expect(lab.waitForLinks(taps), "TAPs did not appear: \(bridge.output)")
        for i in 0..<3 { lab.place(taps[i], in: ns[i], address: "10.77.0.\(i + 1)/24") }
        #expect(lab.ping(from: ns[0], "10.77.0.2", count: 2).received == 2, "learning pings failed")

        let pcap = FileManager.default.temporaryDirectory.appendingPathComponent("tb-\(lab.tag)-c.pcap").path
        defer { try? FileManager.default.removeItem(atPath: pcap) }
        let capture = try lab.capture(in: ns[2], on: taps[2], to: pcap, filter: "icmp")
        let unicast = lab.ping(from: ns[0], "10.77.0.2", count: 5, interval: "0.1")
        #expect(unicast.received == 5)
        // -w: stop after 2 s (broadcast echoes get no replies); compare with what ping sent
        let sent = Lab.transmitted(lab.exec(ns[0], ["ping", "-b", "-c", "3", "-i", "0.2", "-w", "2", "10.77.0.255"], timeout: 10).output)
        _ = Lab.eventually { MirrorTests.tcpdumpLines(pcap, containing: "10.77.0.1 > 10.77.0.255:") >= sent }
        _ = capture.stop(signal: SIGINT)
        let lines = Host.run(["tcpdump", "-r", pcap, "-n"]).output.split(separator: "\n")
        let toB = lines.filter { $0.contains("10.77.0.1 > 10.77.0.2:") }
        let broadcasts = lines.filter { $0.contains("> 10.77.0.255:") }
        #expect(toB.isEmpty, "port c saw \(toB.count) unicast frames a -> b, want 0:\n\(lines.joined(separator: "\n"))")
        #expect(sent > 0 && broadcasts.count == sent, "port c saw \(broadcasts.count) broadcast echo requests, want \(sent)")
    }

    /// ```
    ///  ns a (.1) ── tap a ─── tapbridge ─── packet socket on veth h ══ veth n (.2) in ns b
    /// ```
    @Test func vethAttachedThroughAPacketSocketBridgesToATap() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, vh, vn) = (lab.link("a"), lab.link("h"), lab.link("n"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vn]).ok)
        lab.place(vn, in: b, address: "10.77.0.2/24")
        let bridge = try lab.bridge(["--port", ta, "--port", vh])
        #expect(lab.waitForLinks([ta]))
        lab.place(ta, in: a, address: "10.77.0.1/24")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "a -> b over the packet port failed:\n\(bridge.output)")
        #expect(lab.ping(from: b, "10.77.0.1").received == 3)
        #expect(bridge.output.contains("port \(vh): packet socket"), "veth was not attached through a packet socket:\n\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        #expect(bridge.stop() == 0)
    }

    /// Every small frame to a packet port is counted once, as sent or dropped (a check kept from
    /// an experiment that queued them for one sendmmsg per batch, Benchmarks.md). Bursts of
    /// 64-byte UDP datagrams from a to b, bare and then behind an emulated link (`port set`
    /// delay, which releases frames from a timer):
    /// the packet port's tx_frames grows by what veth n received, no more (none counted twice)
    /// and no less, its sent and dropped frames add up to what came in from tap a, and every
    /// frame of the delayed burst leaves without other traffic behind it.
    /// ```
    ///  ns a (.1) ── tap a ─── tapbridge ─── packet socket on veth h ══ veth n (.2) in ns b
    /// ```
    @Test func smallFramesToAPacketPortAreCountedOnce() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, vh, vn) = (lab.link("a"), lab.link("h"), lab.link("n"))
        for ns in [a, b] { lab.exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]) }
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vn]).ok)
        // veth h says nothing of its own to n (no IPv6 router solicitations, MLD, DAD)
        #expect(Host.run(["sysctl", "-qw", "net.ipv6.conf.\(vh).disable_ipv6=1"]).ok)
        lab.place(vn, in: b, address: "10.77.0.2/24")
        let bridge = try lab.bridge(["--port", ta, "--port", vh])
        #expect(lab.waitForLinks([ta]))
        lab.place(ta, in: a, address: "10.77.0.1/24")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(bridge.output)")
        func received() -> Int { Int(lab.exec(b, ["cat", "/sys/class/net/\(vn)/statistics/rx_packets"]).output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1 }
        // what entered from tap a, what left through veth h (sent, dropped) and what veth n got
        func burst(_ count: Int) -> (entered: Int, sent: Int, dropped: Int, received: Int) {
            func snapshot() -> (a: [String: Int], h: [String: Int], n: Int) { (Lab.portCounters(bridge, port: ta), Lab.portCounters(bridge, port: vh), received()) }
            let before = snapshot()
            // paced a little (a pause of 1 ms every 50), so that a bridge slowed by other tests
            // still reads most of them from its TAP (what the TAP drops never enters)
            let send = "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(\(count)):\n    s.sendto(bytes(64), ('10.77.0.2', 9))\n    if i % 50 == 49: time.sleep(0.001)\n"
            #expect(lab.exec(a, ["/usr/bin/python3", "-c", send]).ok)
            Thread.sleep(forTimeInterval: 0.5)
            let after = snapshot()
            func delta(_ key: String, _ x: KeyPath<(a: [String: Int], h: [String: Int], n: Int), [String: Int]>) -> Int { (after[keyPath: x][key] ?? 0) - (before[keyPath: x][key] ?? 0) }
            return (delta("rx_frames", \.a), delta("tx_frames", \.h), delta("transmit_error", \.h) + delta("transmit_queue_full", \.h), after.n - before.n)
        }
        let bare = burst(2_000)
        #expect(bare.sent == bare.received && bare.sent + bare.dropped == bare.entered && bare.sent >= 200, "2,000 datagrams: \(bare)\n\(bridge.output)")
        let set = ControlTests.client(["port", "set", vh, "delay=20ms"], name: ControlTests.name(bridge))
        #expect(set.ok, "\(set.output)")
        let delayed = burst(500)
        #expect(delayed.sent == delayed.received && delayed.sent + delayed.dropped == delayed.entered && delayed.sent >= 50, "500 datagrams behind delay=20ms: \(delayed)\n\(bridge.output)")
        #expect(bridge.stop() == 0)
    }

    /// A TAP held by another program (as QEMU holds a VM's tap): TUNSETIFF answers EBUSY and
    /// tapbridge falls back to a packet socket. The "VM" is this test: it holds TAP v and relays
    /// its frames to a TAP w in namespace b.
    /// ```
    ///  ns a (.1) ── tap a ─── tapbridge ─── packet socket on v ══ fd of v (held here)
    ///                                                              │ relay thread
    ///  ns b (.2) ── tap w ══ fd of w ──────────────────────────────┘
    /// ```
    @Test func heldTapIsReachedThroughThePacketSocketFallback() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, v, w) = (lab.link("a"), lab.link("v"), lab.link("w"))
        let vfd = ctb_tap_open(v, 0), wfd = ctb_tap_open(w, 0)
        try #require(vfd >= 0 && wfd >= 0, "cannot open test TAPs: \(vfd) \(wfd)")
        let relay = TapRelay(vfd, wfd)
        defer { relay.stop(); close(vfd); close(wfd) }
        #expect(Host.run(["ip", "link", "set", v, "up"]).ok)
        lab.place(w, in: b, address: "10.77.0.2/24")

        let bridge = try lab.bridge(["--port", ta, "--port", v])
        #expect(lab.waitForLinks([ta]))
        lab.place(ta, in: a, address: "10.77.0.1/24")
        let r = lab.ping(from: a, "10.77.0.2")
        #expect(r.received == 3, "ping through the held TAP failed:\n\(r.output)\n\(bridge.output)")
        #expect(bridge.output.contains("port \(v): packet socket") && bridge.output.contains("held by another program"),
                "no packet-socket fallback logged:\n\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        #expect(bridge.stop() == 0)
    }

    /// ```
    ///  ns a ── tap a ┐
    ///  ns b ── tap b ┼── tapbridge      tap c is deleted while a pings b
    ///  ns c ── tap c ┘
    /// ```
    @Test func deletingOnePortsInterfaceKeepsTheOthersForwarding() throws {
        let lab = Lab()
        let ns = ["a", "b", "c"].map(lab.namespace)
        let taps = ["a", "b", "c"].map(lab.link)
        let bridge = try lab.bridge(taps.flatMap { ["--port", $0] })
        #expect(lab.waitForLinks(taps))
        for i in 0..<3 { lab.place(taps[i], in: ns[i], address: "10.77.0.\(i + 1)/24") }
        #expect(lab.ping(from: ns[0], "10.77.0.3", count: 1).received == 1)
        let flow = try lab.background(["ip", "netns", "exec", ns[0], "ping", "-c", "30", "-i", "0.1", "-W", "1", "10.77.0.2"])
        // the deletion comes while the pings flow: once b's port has carried some of them
        let before = Lab.portCounters(bridge, port: taps[1])["tx_frames"] ?? 0
        #expect(Lab.eventually { (Lab.portCounters(bridge, port: taps[1])["tx_frames"] ?? 0) >= before + 5 }, "\(bridge.output)")
        #expect(lab.exec(ns[2], ["ip", "link", "del", taps[2]]).ok)
        _ = flow.wait(within: 10)
        let summary = flow.output.split(separator: "\n").first { $0.contains("packets transmitted") } ?? ""
        let numbers = summary.split(separator: " ").compactMap { Int($0) }
        #expect(numbers.count >= 2 && numbers[1] >= 28, "pings a -> b during the deletion: \(summary)")
        #expect(bridge.isRunning, "tapbridge stopped:\n\(bridge.output)")
        #expect(bridge.output.contains("port \(taps[2]): interface is gone"), "deletion not logged:\n\(bridge.output)")
        #expect(lab.ping(from: ns[1], "10.77.0.1", count: 3).received == 3, "forwarding stopped after the deletion")
        #expect(bridge.stop() == 0)
    }

    /// SIGTERM ends the bridge with status 0 and its TAPs go. (It takes tens of milliseconds;
    /// the bound is 5 s, far above that and far below a bridge that does not hear the signal,
    /// so a loaded machine cannot fail it.)
    @Test func sigtermExitsZeroAndRemovesCreatedTaps() throws {
        let lab = Lab()
        let taps = ["a", "b"].map(lab.link)
        let bridge = try lab.bridge(taps.flatMap { ["--port", $0] })
        #expect(lab.waitForLinks(taps))
        let status = bridge.stop(signal: SIGTERM, within: 5)
        #expect(status == 0, "exit status \(String(describing: status)) after SIGTERM, want 0 within 5 s:\n\(bridge.output)")
        for t in taps { #expect(!Host.run(["ip", "link", "show", t]).ok, "TAP \(t) still exists after exit") }
    }

    @Test func aPersistentTapThatExistedBeforeIsAttachedAndKept() throws {
        let lab = Lab()
        let (p, q) = (lab.link("p"), lab.link("q"))
        #expect(Host.run(["ip", "tuntap", "add", "dev", p, "mode", "tap"]).ok)
        let bridge = try lab.bridge(["--port", p, "--port", q])
        #expect(lab.waitForLinks([q]))
        #expect(bridge.stop() == 0)
        #expect(bridge.output.contains("port \(p): TAP attached (kept on exit)"), "\(bridge.output)")
        #expect(Host.run(["ip", "link", "show", p]).ok, "a TAP that existed before was removed")
        #expect(!Host.run(["ip", "link", "show", q]).ok, "a TAP tapbridge created was kept")
    }

    struct BadStart: CustomTestStringConvertible, Sendable {
        var name: String
        var args: [String]
        var status: Int32
        var message: String
        var testDescription: String { name }
    }

    static let badStarts: [BadStart] = [
        BadStart(name: "unknown flag", args: ["--bogus"], status: 64, message: "Unknown option '--bogus'"),
        BadStart(name: "no port", args: [], status: 64, message: "give at least one --port"),
        BadStart(name: "name longer than 15 bytes", args: ["--port", "abcdefghijklmnop"], status: 64, message: "longer than 15"),
        BadStart(name: "name with a slash", args: ["--port", "a/b"], status: 64, message: "contains '/'"),
        BadStart(name: "bad VLAN", args: ["--port", "x,vlan=0"], status: 64, message: "vlan must be 1-4094"),
        BadStart(name: "unknown port option", args: ["--port", "x,speed=10"], status: 64, message: "unknown option 'speed'"),
        BadStart(name: "packet mode on a missing interface", args: ["--port", "tbnosuch0,mode=packet"], status: 1, message: "port tbnosuch0: no interface named tbnosuch0"),
        BadStart(name: "tap mode on a non-TAP", args: ["--port", "lo,mode=tap"], status: 1, message: "port lo: exists and is not a TAP"),
        BadStart(name: "same port twice", args: ["--port", "tbdup0", "--port", "tbdup0"], status: 64, message: "given twice"),
        BadStart(name: "netns= on an interface that exists", args: ["--port", "lo,netns=tbnsbad"], status: 1, message: "an interface lo exists here already"),
        BadStart(name: "netns= with an address that is not a CIDR", args: ["--port", "tbns0,netns=tbnsbad,addr=10.0.0.1"], status: 64, message: "addr must be an address with its prefix length"),
        BadStart(name: "a remote named like a port", args: ["--port", "tbdup0", "--remote", "127.0.0.1:4000,name=tbdup0"], status: 64, message: "given twice"),
    ]

    @Test(arguments: badStarts)
    func badInputGivesOneLineAndANonZeroExit(_ c: BadStart) {
        let r = Host.run([Host.binary] + c.args)
        let lines = r.output.split(separator: "\n")
        #expect(r.status == c.status, "got exit \(r.status), want \(c.status): \(r.output)")
        #expect(lines.count == 1, "got \(lines.count) lines, want 1:\n\(r.output)")
        #expect(r.output.hasPrefix("tapbridge: error: ") && r.output.contains(c.message), "got: \(r.output)")
        #expect(!r.output.contains("Fatal error") && !r.output.contains("Stack"), "\(r.output)")
    }

    /// /dev/net/tun hidden by a tmpfs in a private mount namespace (the machine's is untouched).
    @Test func withoutDevNetTunItSaysSo() {
        let lab = Lab()
        let t = lab.link("n")
        let r = Host.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                          "mount -t tmpfs none /dev/net && exec \"$0\" --port \"$1\"", Host.binary, t])
        #expect(r.status == 1, "got exit \(r.status), want 1: \(r.output)")
        #expect(r.output == "tapbridge: error: port \(t): /dev/net/tun is missing (load the tun module: modprobe tun)\n", "got: \(r.output)")
    }

    /// A fresh TAP whose host has not brought its link up yet counts no `link_down` for the
    /// broadcasts flooded to it meanwhile (the kernel bridge floods only to ports that are up);
    /// a unicast to a host behind a port whose link went down is a `link_down` drop.
    @Test func aFreshPortCountsNoLinkDownUntilItsLinkWasUp() throws {
        let lab = Lab()
        let (a, c) = (lab.namespace("a"), lab.namespace("c"))
        let (ta, tc) = (lab.link("a"), lab.link("c"))
        let bridge = try lab.bridge(["--port", ta, "--port", tc])
        #expect(lab.waitForLinks([ta, tc]), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        Host.run(["ip", "link", "set", tc, "netns", c])  // moved, and down: not brought up yet
        let early = lab.ping(from: a, "10.77.0.3", count: 3, interval: "0.2")  // ARP broadcasts, flooded to c
        #expect(early.received == 0)
        #expect(Lab.eventually { (Lab.portCounters(bridge, port: ta)["rx_frames"] ?? 0) >= 3 })
        #expect(Lab.portCounters(bridge, port: tc)["link_down"] == nil, "a port never up counted drops: \(Lab.portCounters(bridge, port: tc))")
        lab.exec(c, ["ip", "addr", "add", "10.77.0.3/24", "dev", tc])
        lab.exec(c, ["ip", "link", "set", tc, "up"])
        lab.exec(a, ["ip", "neigh", "flush", "all"])  // forget the failed resolution
        #expect(Lab.eventually { lab.ping(from: a, "10.77.0.3", count: 1).received == 1 }, "c is not reachable once up")
        #expect(Lab.portCounters(bridge, port: tc)["link_down"] == nil)
        lab.exec(c, ["ip", "link", "set", tc, "down"])
        // a knows c's MAC: its pings are unicasts to a port whose link is down
        lab.exec(a, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.77.0.3"])
        #expect(Lab.eventually { (Lab.portCounters(bridge, port: tc)["link_down"] ?? 0) >= 3 }, "\(Lab.portCounters(bridge, port: tc))")
        #expect(bridge.stop() == 0)
    }

    /// Without privileges each failure names its real cause and the fix, in one line: first
    /// the control socket's directory (with the --control to use instead), then the TAP: the
    /// device node when it is not open to the user (a capability would not help), else the
    /// capability, naming both that Docs/Usage.md names.
    @Test func withoutPrivilegesItSaysWhatIsMissing() {
        let lab = Lab()
        let t = lab.link("u")
        let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", Host.binary, "--port", t]
        let r = Host.run(nobody)
        #expect(r.status == 1, "got exit \(r.status), want 1: \(r.output)")
        #expect(r.output.split(separator: "\n").count == 1, "\(r.output)")
        #expect(r.output.contains("Permission denied") && r.output.contains("give a writable --control PATH"), "got: \(r.output)")
        let socket = lab.temporaryPath("nobody.sock")
        Host.run(["chmod", "1777", (socket as NSString).deletingLastPathComponent])
        let second = Host.run(nobody + ["--control", socket])
        #expect(second.status == 1 && second.output.split(separator: "\n").count == 1, "\(second.output)")
        let nodeOpen = access("/dev/net/tun", R_OK | W_OK) == 0 && Host.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "test", "-w", "/dev/net/tun"]).ok
        if nodeOpen {
            #expect(second.output.contains("port \(t): creating TAP \(t) needs CAP_NET_ADMIN") && second.output.contains("cap_net_admin,cap_net_raw"), "got: \(second.output)")
        } else {
            #expect(second.output.contains("port \(t): cannot open /dev/net/tun: permission denied"), "got: \(second.output)")
        }
    }
}

}

/// Copies frames both ways between two TAP descriptors on a background thread (a stand-in
/// for a VM holding a TAP) until `stop()`.
final class TapRelay: @unchecked Sendable {
    let stopPipe: [Int32]
    let thread: Thread

    init(_ x: Int32, _ y: Int32) {
        var p: [Int32] = [0, 0]
        _ = pipe(&p)
        stopPipe = p
        let stopFD = p[0]
        thread = Thread {
            var buf = [UInt8](repeating: 0, count: 65_600)
            var fds = [pollfd(fd: x, events: Int16(POLLIN), revents: 0), pollfd(fd: y, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            while true {
                if poll(&fds, 3, 1000) < 0 { continue }
                if fds[2].revents != 0 { return }
                for (from, to) in [(0, y), (1, x)] where fds[from].revents & Int16(POLLIN) != 0 {
                    while true {
                        let n = read(fds[from].fd, &buf, buf.count)
                        if n <= 0 { break }
                        _ = write(to, buf, n)
                    }
                }
            }
        }
        thread.start()
    }

    func stop() {
        var one: UInt8 = 1
        _ = write(stopPipe[1], &one, 1)
        while thread.isExecuting { usleep(10_000) }
        close(stopPipe[0])
        close(stopPipe[1])
    }
}
