import Foundation
import Glibc
import TapBridgeDaemon
import TapBridgeControl
import Testing

/// Stream ports: QEMU's `-netdev stream`/`socket` framing over Unix and TCP sockets, accepted
/// with `--stream-listen` or opened with `--port NAME,stream=...`.
extension KernelTests {
@Suite("Stream ports")
struct StreamPortTests {
    static let peer = Host.packageRoot.appendingPathComponent("Tests/Peers/stream_peer.py").path

    func peer(_ lab: Lab, _ args: [String]) throws -> Background {
        try lab.background(["/usr/bin/python3", Self.peer] + args)
    }

    /// Three clients of one Unix listener: A and B exchange 4,000 broadcast frames each while C
    /// never reads (its frames pile up: its queue is bounded and its drops counted, and A and B
    /// get every frame); a client that vanishes in the middle of a frame is removed and the
    /// others keep forwarding; lengths of 0 and 1 MiB close their connection, counted and
    /// logged.
    @Test func clientsExchangeFramesAndMisbehavingOnesCostTheOthersNothing() throws {
        let lab = Lab()
        let socket = lab.temporaryPath("s.sock")
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--stream-listen", "unix:\(socket),max=8", "--name", name])
        #expect(Lab.eventually { FileManager.default.fileExists(atPath: socket) }, "\(bridge.output)")
        let mode = (try? FileManager.default.attributesOfItem(atPath: socket)[.posixPermissions] as? Int) ?? -1
        #expect(mode == 0o600, "the listener's mode without --stream-group: \(String(mode, radix: 8))")
        let stuck = try peer(lab, ["unix:\(socket)", "never-read", "25"])
        #expect(Lab.eventually { stuck.output.contains("connected") })
        let a = try peer(lab, ["unix:\(socket)", "exchange", "0a", "0b", "4000", "20"])
        let b = try peer(lab, ["unix:\(socket)", "exchange", "0b", "0a", "4000", "20"])
        _ = a.wait(within: 30)
        _ = b.wait(within: 30)
        #expect(a.output.contains("sent 4000 received 4000"), "A: \(a.output)\n\(bridge.output)")
        #expect(b.output.contains("sent 4000 received 4000"), "B: \(b.output)\n\(bridge.output)")
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        let stuckPort = try #require(ports.first { $0.counters.receivedFrames == 1 && $0.kind == "stream" }, "the stuck client's port: \(ports.map(\.name))")
        #expect((stuckPort.drops["transmit_queue_full"] ?? 0) > 0, "the port that never reads should drop, counted: \(stuckPort.drops)")
        #expect(stuckPort.peer?.contains("unix:\(socket), pid ") == true, "peer: \(String(describing: stuckPort.peer))")

        let vanish = try peer(lab, ["unix:\(socket)", "vanish-mid-frame"])
        _ = vanish.wait(within: 10)
        #expect(Lab.eventually { bridge.output.contains("the peer closed the connection in the middle of a frame") }, "\(bridge.output)")
        for length in ["0", "1048576"] {
            let bad = try peer(lab, ["unix:\(socket)", "bad-length", length])
            _ = bad.wait(within: 10)
            #expect(bad.output.contains("closed"), "a length of \(length): \(bad.output)")
        }
        #expect(bridge.output.contains("a frame length of 0: the framing is lost, connection closed"), "\(bridge.output)")
        #expect(bridge.output.contains("a frame length of 1048576 bytes"), "\(bridge.output)")
        // the others still forward
        let c = try peer(lab, ["unix:\(socket)", "exchange", "0c", "0d", "200", "15"])
        let d = try peer(lab, ["unix:\(socket)", "exchange", "0d", "0c", "200", "15"])
        _ = c.wait(within: 20)
        _ = d.wait(within: 20)
        #expect(c.output.contains("received 200") && d.output.contains("received 200"), "after the misbehaving ones: \(c.output) \(d.output)")
        let streams = Lab.statsSection(bridge, "streams")
        #expect(streams["malformed"] == 2 && (streams["accepted"] ?? 0) >= 7 && (streams["closed_by_peer"] ?? 0) >= 3, "\(streams)")
        #expect(bridge.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: socket), "the listener's socket file is left")
    }

    /// Two bridges joined by a stream over TCP, one listening on loopback, one connecting with
    /// `stream=`; a TAP in a namespace on each: TCP both ways, no checksum error (the TAPs'
    /// super-frames are cut for the stream, which takes complete frames only). Then the
    /// listening bridge restarts: the other connects again by itself.
    /// ```
    ///  ns a ── tap ── tapbridge 1 ══ TCP 127.0.0.1:P (stream framing) ══ tapbridge 2 ── tap ── ns b
    /// ```
    @Test func twoBridgesOverATCPStreamAndAReconnect() throws {
        let lab = Lab()
        let (a, b) = (lab.namespaceName("a"), lab.namespaceName("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let port = lab.udpPort(7)
        let listenArgs = ["--port", "\(ta),netns=\(a),addr=10.77.0.1/24", "--stream-listen", port]
        var one = try lab.bridge(listenArgs)
        #expect(Lab.eventually { one.output.contains("listening on 127.0.0.1:\(port)") }, "\(one.output)")
        let two = try lab.bridge(["--port", "\(tb),netns=\(b),addr=10.77.0.2/24", "--port", "up,stream=127.0.0.1:\(port)"])
        #expect(Lab.eventually(within: 10) { lab.ping(from: a, "10.77.0.2", count: 1).received == 1 }, "\(one.output)\n\(two.output)")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: one.output + two.output)
        for ns in [a, b] {
            let errors = lab.checksumErrors(in: ns)
            #expect(errors.isEmpty, "checksum errors in \(ns): \(errors)")
        }
        #expect(one.stop() == 0)
        #expect(Lab.eventually { two.output.contains("port up: the peer closed the connection; connecting to 127.0.0.1:\(port) again") }, "\(two.output)")
        one = try lab.bridge(listenArgs)
        #expect(Lab.eventually(within: 10) { lab.ping(from: a, "10.77.0.2", count: 1).received == 1 }, "no traffic after the restart:\n\(one.output)\n\(two.output)")
        #expect(one.stop() == 0 && two.stop() == 0)
    }

    /// A `stream=` port whose TCP peer never answers the handshake (an address on a link where
    /// nothing answers ARP) is connected without waiting in the loop: forwarding between the
    /// other ports never stalls for it (before, each try blocked the loop up to 2 s), the port
    /// is `absent` meanwhile, and the failure is logged once, not at every try.
    /// ```
    ///  ns a ── tap ── tapbridge [ns t: veth 10.88.0.1/24 ── ns u, silent] ── tap ── ns b
    ///                     └─ stream=10.88.0.99:4000 (nobody there)
    /// ```
    @Test func aPeerThatNeverAnswersDoesNotStallTheLoop() throws {
        let lab = Lab()
        let (a, b, t, u) = (lab.namespace("a"), lab.namespace("b"), lab.namespace("t"), lab.namespace("u"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        // a link whose far end answers nothing: the handshake's ARP goes unanswered
        lab.silentLink(from: t, to: u)
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", ta, "--port", tb, "--port", "far,stream=10.88.0.99:4000", "--name", name], in: t)
        #expect(lab.waitForLinks([ta, tb], in: t), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24", from: t)
        lab.place(tb, in: b, address: "10.77.0.2/24", from: t)
        #expect(Lab.eventually { lab.ping(from: a, "10.77.0.2", count: 1).received == 1 }, "\(bridge.output)")
        let (rtts, output) = lab.roundTrips(from: a, to: "10.77.0.2", count: 40)
        #expect(rtts.count == 40 && (rtts.max() ?? 1e9) < 500, "the loop stalled: RTTs up to \(rtts.max() ?? -1) ms over 4 s of retries\n\(output.suffix(400))")
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        #expect(ports.first { $0.name == "far" }?.state == "absent", "\(ports.map { "\($0.name) \($0.state)" })")
        #expect(bridge.stop() == 0)
        let failures = bridge.output.split(separator: "\n").filter { $0.contains("port far: cannot connect") }
        #expect(failures.count <= 2, "the failure should be said once per reason, not at every try: \(failures.count) lines\n\(bridge.output)")
    }

    /// Connections beyond a TCP listener's `max=`, opened by an unprivileged local user, are
    /// refused and counted, and the bridge forwards on. (The first refusal used to crash it:
    /// the refusal log's last time started at `Int64.min`, and `now - Int64.min` overflowed:
    /// SIGILL, exit 132, namespaces and control socket left behind.)
    /// ```
    ///  ns a ── tap ── tapbridge ── tap ── ns b
    ///                    └─ --stream-listen 127.0.0.1:P,max=2  ⟸ 12 connections from user nobody
    /// ```
    @Test func connectionsOverMaxAreRefusedAndTheBridgeForwardsOn() throws {
        let lab = Lab()
        let port = lab.udpPort(3)
        let (bridge, a, b, _, _) = try lab.pair(["--stream-listen", "\(port),max=2"])
        #expect(Lab.eventually { bridge.output.contains("listening on 127.0.0.1:\(port)") }, "\(bridge.output)")
        let clients = Host.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", """
            import socket, time
            held = [socket.create_connection(("127.0.0.1", \(port))) for _ in range(12)]
            time.sleep(1)
            print("opened", len(held))
            """], timeout: 20)
        #expect(clients.output.contains("opened 12"), "\(clients.output)")
        #expect(Lab.eventually { (Lab.statsSection(bridge, "streams")["refused"] ?? 0) >= 10 }, "want >= 10 refused: \(Lab.statsSection(bridge, "streams"))\n\(bridge.output)")
        #expect(bridge.isRunning, "the bridge died on a refused connection (status \(bridge.isRunning ? 0 : bridge.process.terminationStatus)):\n\(bridge.output)")
        #expect(bridge.output.contains("refused a connection: 2 served already (max=)"), "\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        #expect(bridge.stop() == 0)
    }

    /// A bad --stream-listen or stream= is one line and a non-zero exit, before anything opens.
    @Test(arguments: [
        (["--stream-listen", "unix:"], "unix: needs a path"),
        (["--stream-listen", "unix:/tmp/x.sock,mode=tap"], "mode= is for --port"),
        (["--stream-listen", "unix:/tmp/x.sock,max=0"], "max must be 1-4096"),
        (["--stream-listen", "nowhere"], "expected unix:PATH, HOST:PORT"),
        (["--port", "s0,stream=unix:/tmp/x.sock,mtu=1400"], "mtu= is for interfaces"),
        (["--stream-listen", "4000", "--stream-group", "nogroup"], "--stream-group needs --stream-listen unix:PATH"),
    ])
    func badStreamOptionsGiveOneLine(_ c: ([String], String)) throws {
        let r = Host.run([Host.binary] + c.0 + ["--control", "none"])
        #expect(!r.ok && r.output.contains(c.1) && r.output.split(separator: "\n").count == 1, "\(c.0): \(r.output)")
    }
}
}

extension KernelTests.VirtualMachineTests {
    /// An unprivileged VM: QEMU run as nobody (no capability, no TAP) on `-netdev stream` to a
    /// Unix listener that group nogroup may open (`--stream-group`); TCP both ways between the
    /// guest and a namespace, every byte checked, no checksum error.
    /// ```
    ///  guest (10.77.0.3) ── virtio-net ══ QEMU (user nobody) ══ unix:SOCK ══ tapbridge ── tap b ── ns b (10.77.0.2)
    /// ```
    @Test func anUnprivilegedVMJoinsOverAStreamSocket() throws {
        try Self.requireGuest()
        let lab = Lab()
        let b = lab.namespaceName("b")
        let tb = lab.link("b")
        let socket = lab.temporaryPath("vm.sock")
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", "\(tb),netns=\(b),addr=10.77.0.2/24", "--stream-listen", "unix:\(socket)", "--stream-group", "nogroup", "--name", name])
        #expect(Lab.eventually { FileManager.default.fileExists(atPath: socket) }, "\(bridge.output)")
        let bytes = 4 << 20
        let qemu = try lab.background(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
                + Self.qemu("tb.addr=10.77.0.3/24 tb.peer=10.77.0.2 tb.port=5011 tb.bytes=\(bytes) tb.listen=5012",
                            netdev: "stream,id=n0,server=off,addr.type=unix,addr.path=\(socket)", device: "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:03"))
        Self.guestMovesTCPBothWays(lab, qemu, "10.77.0.3", with: b, port: 5011, bytes: bytes, context: bridge.output)
        #expect(qemu.output.contains("TB-RESULT 0"), "\(qemu.output.suffix(800))")
        #expect(bridge.output.contains("stream from unix:\(socket), pid ") && bridge.output.contains("uid 65534"), "the VM's port, run as nobody:\n\(bridge.output)")
        let errors = lab.checksumErrors(in: b)
        #expect(errors.isEmpty, "checksum errors in ns b: \(errors)")
        #expect(bridge.stop() == 0)
    }
}

extension KernelTests.VirtualMachineTests {
    /// A VM rebooted: QEMU stops (its tap goes, the port turns `absent`) and is started again
    /// on the same tap name; tapbridge attaches it again by itself, and the new guest reaches
    /// the namespace. tapbridge is never touched.
    /// ```
    ///  guest (10.77.0.3) ── QEMU ══ tap v (held) ── packet socket ─ tapbridge ─ tap b ── ns b (10.77.0.2)
    /// ```
    @Test func aVMRestartedOnItsTapIsForwardedToAgain() throws {
        try Self.requireGuest()
        let lab = Lab()
        let b = lab.namespaceName("b")
        let (v, tb) = (lab.link("v"), lab.link("b"))
        func boot() throws -> Background {
            try lab.background(Self.qemu("tb.addr=10.77.0.3/24 tb.ping=10.77.0.2", netdev: "tap,id=n0,ifname=\(v),script=no,downscript=no"))
        }
        let first = try boot()
        #expect(lab.waitForLinks([v]), "QEMU did not create its TAP:\n\(first.output)")
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", v, "--port", "\(tb),netns=\(b),addr=10.77.0.2/24", "--name", name])
        #expect(Lab.eventually(within: 120) { first.output.contains("TB-PING") }, "\(first.output.suffix(800))")
        #expect(first.output.contains("TB-PING 0"), "the first guest did not reach ns b:\n\(first.output.suffix(800))\n\(bridge.output)")
        _ = first.stop()
        #expect(Lab.eventually(within: 10) { bridge.output.contains("port \(v): interface is gone") }, "\(bridge.output)")
        let absent = try KernelTests.ControlTests.decode([PortReport].self, KernelTests.ControlTests.client(["show", "ports", "--json"], name: name))
        #expect(absent.first { $0.name == v }?.state == "absent", "\(absent.map { "\($0.name) \($0.state)" })")
        let second = try boot()
        #expect(Lab.eventually(within: 10) { bridge.output.contains("port \(v): interface \(v) is back") }, "\(bridge.output)")
        #expect(Lab.eventually(within: 120) { second.output.contains("TB-PING") }, "\(second.output.suffix(800))")
        #expect(second.output.contains("TB-PING 0"), "the restarted guest did not reach ns b:\n\(second.output.suffix(800))\n\(bridge.output)")
        #expect(lab.ping(from: b, "10.77.0.3").received == 3, "ns b -> the restarted guest")
        _ = second.stop()
        #expect(bridge.stop() == 0)
    }
}
