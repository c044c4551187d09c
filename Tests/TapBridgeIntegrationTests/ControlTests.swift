import Foundation
import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import Testing

extension KernelTests {
/// The control socket, driven through the `tapbridge show|fdb|port` client commands against
/// a running bridge with real namespaces.
@Suite("Control socket")
struct ControlTests {
    /// Runs `tapbridge ARGS --name NAME`.
    static func client(_ args: [String], name: String) -> Host.Result { Host.run([Host.binary] + args + ["--name", name]) }

    static func decode<T: Decodable>(_ type: T.Type, _ r: Host.Result) throws -> T {
        try ControlCoding.decoder().decode(T.self, from: Data(r.output.utf8))
    }

    /// The MAC of `interface` in `ns`.
    static func mac(_ lab: Lab, _ ns: String, _ interface: String) -> String {
        let words = lab.exec(ns, ["ip", "link", "show", interface]).output.split(separator: " ")
        return words.firstIndex(of: "link/ether").map { String(words[$0 + 1]) } ?? "?"
    }

    static func name(_ bridge: Background) -> String {
        let args = bridge.process.arguments ?? []
        return args.firstIndex(of: "--name").map { args[$0 + 1] } ?? "tapbridge"
    }

    @Test func showFdbListsExactlyTheNamespacesMACsOnTheirPorts() throws {
        let lab = Lab()
        let (bridge, a, b, ta, tb) = try lab.pair()
        let name = Self.name(bridge)
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 2)
        #expect(lab.ping(from: b, "10.77.0.1", count: 2).received == 2)
        let r = Self.client(["show", "fdb", "--json"], name: name)
        try #require(r.ok, "\(r.output)")
        let entries = try Self.decode([FDBReport].self, r)
        let got = Set(entries.map { "\($0.mac)@\($0.port)" })
        let want: Set = ["\(Self.mac(lab, a, ta))@\(ta)", "\(Self.mac(lab, b, tb))@\(tb)"]
        #expect(got == want, "got \(got), want \(want)")
        #expect(entries.allSatisfy { $0.vlan == 1 && !$0.static && $0.ageSeconds < 60 })
        let text = Self.client(["show", "fdb", "--port", ta], name: name)
        #expect(text.output.contains(Self.mac(lab, a, ta)) && !text.output.contains(Self.mac(lab, b, tb)), "\(text.output)")
        #expect(bridge.stop() == 0)
    }

    /// Every frame received on port a either left through port b (the only other port), was
    /// dropped on the way in (counted on a under an ingress reason) or failed to go out
    /// (counted on b under a transmit reason): rx(a) == tx(b) + ingress drops(a) + transmit
    /// drops(b). The pings account for 20 frames; the rest is ARP, and the few IPv6 frames
    /// the root namespace's kernel sends on a new TAP before the test moves it into its
    /// namespace (where IPv6 is off).
    @Test func showPortsCountersAddUpToTheFramesSent() throws {
        let lab = Lab()
        let (bridge, a, _, ta, tb) = try lab.pair()
        #expect(lab.ping(from: a, "10.77.0.2", count: 20, interval: "0.05").received == 20)
        let r = Self.client(["show", "ports", "--json"], name: Self.name(bridge))
        try #require(r.ok, "\(r.output)")
        let ports = Dictionary(uniqueKeysWithValues: try Self.decode([PortReport].self, r).map { ($0.name, $0) })
        let pa = try #require(ports[ta]), pb = try #require(ports[tb])
        let transmitReasons: Set = ["link_down", "transmit_queue_full", "frame_too_large", "transmit_error"]
        let ingressDropsA = pa.drops.filter { !transmitReasons.contains($0.key) }.values.reduce(0, +)
        let transmitDropsB = pb.drops.filter { transmitReasons.contains($0.key) }.values.reduce(0, +)
        #expect(pa.counters.receivedFrames == pb.counters.transmittedFrames + ingressDropsA + transmitDropsB,
                "rx(a) \(pa.counters.receivedFrames) != tx(b) \(pb.counters.transmittedFrames) + ingress drops(a) \(ingressDropsA) + transmit drops(b) \(transmitDropsB): \(pa.drops) \(pb.drops)")
        #expect(pa.counters.receivedFrames >= 21 && pa.counters.receivedFrames <= 20 + 10, "rx(a) \(pa.counters.receivedFrames): 20 echo requests plus ARP and early IPv6 noise (at most 10)")
        #expect(pb.counters.receivedFrames >= 21 && pb.counters.receivedFrames <= 20 + 10, "rx(b) \(pb.counters.receivedFrames): 20 echo replies plus noise")
        #expect(pa.kind == "tap" && pa.state == "up" && pa.vlans == "access VLAN 1")
        #expect(bridge.stop() == 0)
    }

    /// `fdb add` pins b's MAC to port c: frames for b go to c (captured there), b gets none;
    /// `fdb del` lets learning find b again.
    /// Remotes are described (endpoint, encapsulation, VNI); `--format json` is `--json`, and
    /// the JSON has no blank lines (an empty drops object prints as `{}`).
    @Test func showPortsDescribesRemotes() throws {
        let lab = Lab()
        let ta = lab.link("a")
        let (p1, p2, p3) = (lab.udpPort(1), lab.udpPort(2), lab.udpPort(3))
        let bridge = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2),vni=7",
                                     "--remote", "127.0.0.1:\(p3),encap=raw,name=qemu"])
        #expect(lab.waitForLinks([ta]), "\(bridge.output)")
        let name = Self.name(bridge)
        let json = Self.client(["show", "ports", "--format", "json"], name: name)
        try #require(json.ok, "\(json.output)")
        // the same answer either way (counters and states may move between the two calls)
        let other = try Self.decode([PortReport].self, Self.client(["show", "ports", "--json"], name: name))
        #expect(try Self.decode([PortReport].self, json).map { [$0.name, $0.kind, $0.remote?.endpoint ?? "-"] } == other.map { [$0.name, $0.kind, $0.remote?.endpoint ?? "-"] })
        #expect(!json.output.contains("\n\n") && json.output.contains("\"drops\" : {}"), "\(json.output)")
        let ports = Dictionary(uniqueKeysWithValues: try Self.decode([PortReport].self, json).map { ($0.name, $0) })
        #expect(ports[ta]?.remote == nil)
        // nobody listens on p2 and p3: their unreachable counts and state depend on timing
        // (the path MTU is loopback's, whatever this kernel says it is)
        for name in ["127.0.0.1:\(p2)", "qemu"] {
            let why = ports[name]?.remote?.why
            #expect(why == nil || why!.hasPrefix("ICMP port unreachable: nothing listens on 127.0.0.1:"), "\(String(describing: why))")
        }
        func peer(_ name: String) -> RemoteReport? {
            ports[name]?.remote.map { var r = $0; r.unreachable = 0; r.why = nil; r.pathMtu = r.pathMtu.map { $0 > 60_000 ? 1 : $0 }; return r }
        }
        var vxlan = RemoteReport(endpoint: "127.0.0.1:\(p2)", encapsulation: "vxlan", vni: 7, dynamic: false)
        (vxlan.pathMtu, vxlan.fragmented, vxlan.horizon) = (1, 0, "mesh")
        var raw = RemoteReport(endpoint: "127.0.0.1:\(p3)", encapsulation: "raw", vni: nil, dynamic: false)
        (raw.pathMtu, raw.fragmented, raw.horizon) = (1, 0, "off")
        #expect(peer("127.0.0.1:\(p2)") == vxlan)
        #expect(peer("qemu") == raw)
        let text = Self.client(["show", "ports"], name: name).output
        #expect(text.contains("REMOTE") && text.range(of: #"qemu\s+127\.0\.0\.1:\#(p3)\s+raw\s+-\s+off\s+6553[56]\s+0\s+[0-9]+( \(now: .*\))?\s+configured"#, options: .regularExpression) != nil, "\(text)")
        #expect(bridge.stop() == 0)
    }

    /// A TAP another tapbridge serves, given to a second bridge with mode=auto: reached through
    /// a packet socket, with a warning naming the other bridge and a marker in `show ports`
    /// (found on the control plane's worker: it reads every process's descriptors).
    @Test func aTAPServedByAnotherBridgeIsMarkedAndWarnedAbout() throws {
        let lab = Lab()
        let (t, u) = (lab.link("t"), lab.link("u"))
        let one = try lab.bridge(["--port", t])
        #expect(lab.waitForLinks([t]), "\(one.output)")
        let two = try lab.bridge(["--port", t, "--port", u])
        #expect(lab.waitForLinks([u]), "\(two.output)")
        // (the holder is looked for off the loop, after the port joined)
        #expect(Lab.eventually { two.output.contains("the TAP is served by another tapbridge") }, "\(two.output)")
        let ports = try Self.decode([PortReport].self, Self.client(["show", "ports", "--json"], name: Self.name(two)))
        let held = try #require(ports.first { $0.name == t })
        #expect(held.kind == "packet" && held.heldBy == "tapbridge, pid \(one.process.processIdentifier)", "\(held)")
        #expect(ports.first { $0.name == u }?.heldBy == nil)
        #expect(Self.client(["show", "ports"], name: Self.name(two)).output.contains("(TAP held by tapbridge, pid"))
        #expect(two.stop() == 0 && one.stop() == 0)
        #expect(two.output.contains("warning") && two.output.contains("the TAP is served by another tapbridge (pid \(one.process.processIdentifier))"), "\(two.output)")
    }

    /// `--log-level trace` shows what the switch does: each MAC learned (with its VLAN and
    /// port) and, after the table is flushed, the flood of a unicast frame nobody is known for.
    @Test func debugAndTraceLogsShowLearningAndFloods() throws {
        let lab = Lab()
        let (bridge, a, b, ta, tb) = try lab.pair(["--log-level", "trace"])
        #expect(lab.ping(from: a, "10.77.0.2", count: 2, interval: "0.1").received == 2)
        let (macA, macB) = (Self.mac(lab, a, ta), Self.mac(lab, b, tb))
        #expect(Self.client(["fdb", "flush"], name: Self.name(bridge)).ok)
        #expect(lab.ping(from: a, "10.77.0.2", count: 2, interval: "0.1").received == 2)
        #expect(bridge.stop() == 0)
        #expect(bridge.output.contains("debug") && bridge.output.contains("fdb: learned \(macA) in VLAN 1 on \(ta)"), "\(bridge.output)")
        #expect(bridge.output.contains("fdb: learned \(macB) in VLAN 1 on \(tb)"), "\(bridge.output)")
        #expect(bridge.output.contains("flood: \(macB) unknown in VLAN 1, from \(ta)"), "\(bridge.output)")
        let quiet = try lab.pair(["--log-level", "info"])
        #expect(lab.ping(from: quiet.1, "10.77.0.2", count: 1).received == 1)
        #expect(quiet.0.stop() == 0)
        #expect(!quiet.0.output.contains("fdb: learned"), "events only at debug and below")
    }

    @Test func aStaticEntryPinsAMACAndTrafficFollowsIt() throws {
        let lab = Lab()
        let ns = ["a", "b", "c"].map(lab.namespace)
        let taps = ["a", "b", "c"].map(lab.link)
        let bridge = try lab.bridge(taps.flatMap { ["--port", $0] })
        let name = Self.name(bridge)
        #expect(lab.waitForLinks(taps))
        for i in 0..<3 { lab.place(taps[i], in: ns[i], address: "10.77.0.\(i + 1)/24") }
        #expect(lab.ping(from: ns[0], "10.77.0.2", count: 1).received == 1)
        let macB = Self.mac(lab, ns[1], taps[1])
        let pin = Self.client(["fdb", "add", macB, taps[2]], name: name)
        #expect(pin.ok && pin.output.contains("pinned"), "\(pin.output)")
        let pcap = lab.temporaryPath("pinned.pcap")
        let capture = try lab.capture(in: ns[2], on: taps[2], to: pcap, filter: "icmp")
        let pinned = lab.ping(from: ns[0], "10.77.0.2", count: 3, interval: "0.2")
        _ = Lab.eventually { MirrorTests.tcpdumpLines(pcap, containing: "10.77.0.1 > 10.77.0.2: ICMP echo request") >= 3 }
        _ = capture.stop(signal: SIGINT)
        #expect(pinned.received == 0, "b answered although its MAC is pinned to c")
        #expect(MirrorTests.tcpdumpLines(pcap, containing: "10.77.0.1 > 10.77.0.2: ICMP echo request") == 3, "the requests did not follow the pin to c")
        let del = Self.client(["fdb", "del", macB, taps[2]], name: name)
        #expect(del.ok, "\(del.output)")
        #expect(lab.ping(from: ns[0], "10.77.0.2", count: 3).received == 3, "b unreachable after the pin was removed")
        #expect(bridge.stop() == 0)
    }

    @Test func flushEmptiesTheTable() throws {
        let lab = Lab()
        let (bridge, a, _, _, _) = try lab.pair()
        let name = Self.name(bridge)
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 2)
        #expect(try Self.decode([FDBReport].self, Self.client(["show", "fdb", "--json"], name: name)).count == 2)
        let flush = Self.client(["fdb", "flush"], name: name)
        #expect(flush.output.contains("flushed 2 entries"), "\(flush.output)")
        #expect(try Self.decode([FDBReport].self, Self.client(["show", "fdb", "--json"], name: name)).isEmpty)
        #expect(bridge.stop() == 0)
    }

    /// A third namespace's TAP is added while a pings b, becomes reachable, is removed again;
    /// a <-> b loses nothing.
    @Test func portsComeAndGoWithoutDisturbingTheOthers() throws {
        let lab = Lab()
        let (bridge, a, _, _, _) = try lab.pair()
        let name = Self.name(bridge)
        let c = lab.namespace("c")
        let tc = lab.link("c")
        let flow = try lab.background(["ip", "netns", "exec", a, "ping", "-c", "40", "-i", "0.1", "-W", "1", "10.77.0.2"])
        usleep(500_000)
        let add = Self.client(["port", "add", tc], name: name)
        #expect(add.ok, "\(add.output)")
        lab.place(tc, in: c, address: "10.77.0.3/24")
        #expect(lab.ping(from: a, "10.77.0.3", count: 3).received == 3, "the added port is not reachable")
        let del = Self.client(["port", "del", tc], name: name)
        #expect(del.ok, "\(del.output)")
        // added again at once: the answer waits (off the loop) for the old TAP to be gone
        let again = Self.client(["port", "add", tc], name: name)
        #expect(again.ok && again.output.contains("port \(tc) added"), "\(again.output)")
        #expect(Host.run(["ip", "link", "show", tc]).ok, "the TAP made again is not there")
        #expect(Self.client(["port", "del", tc], name: name).ok)
        // (closed off the loop: the kernel takes tens of milliseconds to remove a TAP)
        #expect(Lab.eventually(within: 2) { !lab.exec(c, ["ip", "link", "show", tc]).ok }, "the TAP tapbridge created is still there after port del")
        #expect(Lab.eventually(within: 2) { !Host.run(["ip", "link", "show", tc]).ok }, "the TAP made again is still there after port del")
        _ = flow.wait(within: 10)
        #expect(Lab.transmitted(flow.output) == 40 && flow.output.contains(" 40 received"), "a -> b was disturbed: \(flow.output)")
        #expect(bridge.stop() == 0)
    }

    /// Garbage, an oversized request and a client that never speaks: error replies or a
    /// timeout, and forwarding never stops.
    @Test func badClientsGetErrorsAndForwardingGoesOn() throws {
        let lab = Lab()
        let (bridge, a, _, _, _) = try lab.pair()
        let socket = "/run/tapbridge/\(Self.name(bridge)).sock"
        let script = """
            import socket, sys, json
            path = sys.argv[1]
            def ask(data):
                s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path); s.sendall(data)
                out = b""
                while True:
                    b = s.recv(65536)
                    if not b: break
                    out += b
                return json.loads(out)
            silent = socket.socket(socket.AF_UNIX); silent.connect(path)      # never speaks
            r1 = ask(b"garbage\\n")
            r2 = ask(b"x" * 70000)
            r3 = ask(b'{"command":"reboot"}\\n')
            print(json.dumps([r1["ok"], r2["ok"], r3["ok"], r1["error"], r2["error"], r3["error"]]))
            """
        let r = Host.run(["/usr/bin/python3", "-c", script, socket], timeout: 20)
        #expect(r.output.hasPrefix("[false, false, false, \"malformed request"), "\(r.output)")
        #expect(r.output.contains("request larger than 65536 bytes") && r.output.contains("unknown command 'reboot'"), "\(r.output)")
        #expect(lab.ping(from: a, "10.77.0.2", count: 3).received == 3)
        #expect(bridge.isRunning)
        #expect(bridge.stop() == 0)
    }

}
}
