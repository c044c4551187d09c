import TapBridgeDaemon
import TapBridgeControl
import Foundation
import Testing

extension KernelTests {
/// A real VM: QEMU with a virtio-net NIC on `-netdev tap` with QEMU's defaults (the vnet header
/// on, so the guest offloads checksums and segmentation, as under libvirt). QEMU holds the TAP,
/// so tapbridge reaches it through the packet-socket fallback and must complete and segment
/// what the guest hands over.
/// ```
///  guest (10.77.0.3) ── virtio-net ══ QEMU ══ tap v (held) ── packet socket ─ tapbridge ─ tap b ── ns b (10.77.0.2)
///    sends 8 MiB over TCP ────────────────────────────────────────────────────────────► receive.py checks every byte
/// ```
/// The guest is Debian's cloud kernel with a busybox initramfs (`Tests/Peers/vm/build-guest.sh`,
/// cached in /var/tmp/tapbridge-guest); QEMU runs it under TCG (nested KVM on this machine kind
/// fails on cmpxchg16b), which takes about 10 s.
@Suite("A virtio-net VM behind the packet-socket fallback")
struct VirtualMachineTests {
    static let guestDirectory = "/var/tmp/tapbridge-guest"
    static let peers = Host.packageRoot.appendingPathComponent("Tests/Peers/vm").path

    /// QEMU is there and the guest is built (once, cached in `guestDirectory`).
    static func requireGuest() throws {
        try #require(Host.has("qemu-system-x86_64"), "needs qemu-system-x86 (CI installs it)")
        let built = Host.run(["bash", "\(peers)/build-guest.sh", guestDirectory], timeout: 300)
        try #require(built.ok, "cannot build the guest: \(built.output)")
    }

    /// TCP both ways between a guest started with `tb.peer=10.77.0.2 tb.port=PORT tb.bytes=BYTES
    /// tb.listen=PORT+1` (at `address`) and namespace `ns` (10.77.0.2): the guest sends to
    /// receive.py, which checks every byte of its pattern; then send.py sends into the guest,
    /// which reports the count and md5 of what it read before it powers off.
    static func guestMovesTCPBothWays(_ lab: Lab, _ guest: Background, _ address: String, with ns: String, port: Int, bytes: Int, context: @autoclosure () -> String) {
        let receiver = lab.exec(ns, ["/usr/bin/python3", "\(peers)/receive.py", "10.77.0.2", String(port), String(bytes), "150"], timeout: 170)
        #expect(receiver.output.contains("received \(bytes) match True"), "guest -> ns: \(receiver.output)\nguest console:\n\(guest.output.suffix(1500))\n\(context())")
        #expect(Lab.eventually(within: 30) { guest.output.contains("TB-LISTENING") }, "\(guest.output.suffix(800))")
        let sender = lab.exec(ns, ["/usr/bin/python3", "\(peers)/send.py", address, String(port + 1), String(bytes), "60"], timeout: 90)
        #expect(sender.output.contains("sent \(bytes)"), "ns -> guest: \(sender.output)")
        let md5 = sender.output.split(separator: " ").last.map(String.init)?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        #expect(guest.wait(within: 60) != nil && guest.output.contains("TB-RECEIVED \(bytes) \(md5)"), "the guest's count and md5 (want \(bytes) \(md5)):\n\(guest.output.suffix(1500))")
    }

    /// QEMU's command line for the test guest: its kernel arguments (`tb.*`, guest-init.sh) and
    /// its NIC (`-netdev` and `-device` values).
    static func qemu(_ arguments: String, netdev: String, device: String = "virtio-net-pci,netdev=n0") -> [String] {
        ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "256", "-nographic", "-no-reboot",
         "-kernel", "\(guestDirectory)/vmlinuz", "-initrd", "\(guestDirectory)/initrd.gz",
         "-append", "console=ttyS0 quiet panic=-1 \(arguments)", "-netdev", netdev, "-device", device]
    }

    /// `offload`: tapbridge's `--offload` (on: the guest's super-frames reach tap b whole; off:
    /// they are segmented and checksummed in software).
    @Test(arguments: ["on", "off"])
    func aGuestOnQEMUsDefaultTapMovesTCPThroughTapbridge(_ offload: String) throws {
        try Self.requireGuest()
        let lab = Lab()
        let b = lab.namespace("b")
        let (v, tb) = (lab.link("v"), lab.link("b"))
        let bytes = 8 << 20
        let qemu = try lab.background(Self.qemu("tb.addr=10.77.0.3/24 tb.peer=10.77.0.2 tb.port=5009 tb.bytes=\(bytes)",
                                                netdev: "tap,id=n0,ifname=\(v),script=no,downscript=no"))
        #expect(lab.waitForLinks([v]), "QEMU did not create its TAP:\n\(qemu.output)")
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", v, "--port", tb, "--name", name, "--offload", offload])
        #expect(lab.waitForLinks([tb]), "\(bridge.output)")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        let receiver = lab.exec(b, ["/usr/bin/python3", "\(Self.peers)/receive.py", "10.77.0.2", "5009", String(bytes), "150"], timeout: 170)
        #expect(receiver.output.contains("received \(bytes) match True"), "the receiver got: \(receiver.output)\nguest console:\n\(qemu.output.suffix(1500))\n\(bridge.output)")
        #expect(qemu.wait(within: 30) != nil && qemu.output.contains("TB-RESULT 0"), "the guest did not finish cleanly:\n\(qemu.output.suffix(1500))")
        #expect(bridge.output.contains("port \(v): packet socket") && bridge.output.contains("held by another program"), "\(bridge.output)")
        let errors = lab.checksumErrors(in: b)
        #expect(errors.isEmpty, "checksum errors in ns b: \(errors)")
        let tap = OffloadTests.ports(lab, name)[tb] ?? [:]
        if offload == "on" {
            // (a guest under TCG sends few super-frames: check that none needed finishing)
            #expect(OffloadTests.finishedFrames(tap) == 0 && tap["offloads"] as? String != "off", "the guest's offloaded frames should reach tap b as they are: \(tap)")
        } else {
            #expect(OffloadTests.finishedFrames(tap) > 0, "the guest's offloaded frames never needed finishing (is QEMU's vnet header off?): \(tap)")
        }
        #expect(bridge.stop() == 0)
    }

    /// Two VMs on `-netdev dgram` (no TAP at all), the QEMU example's recipe 2 with one remote
    /// per VM, plus a TAP in a namespace. Raw remotes are endpoints: their horizon is off, so
    /// the VMs reach each other (before, both were in the remotes' split-horizon group, and
    /// neither answered the other; nothing said why).
    /// ```
    ///  guest 1 (10.77.0.3) ═ dgram ═╗                  ╔═ tap b ── ns b (10.77.0.2)
    ///                               ╠═ tapbridge ══════╣
    ///  guest 2 (10.77.0.4) ═ dgram ═╝  (127.0.0.1:P0)
    /// ```
    @Test func twoVMsOnDgramRemotesReachEachOther() throws {
        try Self.requireGuest()
        let lab = Lab()
        let b = lab.namespace("b")
        let tb = lab.link("b")
        let (p0, p1, p2) = (lab.udpPort(0), lab.udpPort(1), lab.udpPort(2))
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p0)", "--remote", "127.0.0.1:\(p1),encap=raw,name=vm1",
                                     "--remote", "127.0.0.1:\(p2),encap=raw,name=vm2", "--name", name])
        #expect(lab.waitForLinks([tb]), "\(bridge.output)")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        func guest(_ k: Int, port: String, address: String, ping: String) throws -> Background {
            try lab.background(Self.qemu("tb.addr=\(address)/24 tb.ping=\(ping)",
                                         netdev: "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=\(port),remote.type=inet,remote.host=127.0.0.1,remote.port=\(p0)",
                                         device: "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:0\(k)"))
        }
        let one = try guest(1, port: p1, address: "10.77.0.3", ping: "10.77.0.4")
        let two = try guest(2, port: p2, address: "10.77.0.4", ping: "10.77.0.3")
        let finished = [one, two].map { $0.wait(within: 240) != nil }
        for (k, vm) in [one, two].enumerated() {
            #expect(finished[k] && vm.output.contains("TB-PING 0"), "guest \(k + 1) did not reach the other:\n\(vm.output.suffix(1200))\n\(bridge.output)")
        }
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        let horizons = ports.compactMap { p in p.remote.map { "\(p.name): \($0.horizon ?? "?")" } }
        #expect(horizons == ["vm1: off", "vm2: off"], "got \(horizons)")
        #expect(bridge.stop() == 0)
    }

    /// Examples/qemu/README.md's recipe 2 with "More VMs", as written: its `tapbridge` line (the
    /// TAP renamed and a `--name` added), its `-netdev dgram` (the qcow2 drive replaced by the
    /// test guest; each VM's `local.port` its remote's) and its `tapbridge remote add` for vm2.
    /// vm1 is absent for the first part: vm2 boots alone and moves 2 MiB over TCP each way to
    /// the namespace, every byte checked, while vm1's remote says why it is unreachable and
    /// costs vm2 nothing; then vm1 boots and is answered.
    /// ```
    ///  guest vm1 (10.77.0.3, boots late) ═ dgram :5556 ═╗
    ///  guest vm2 (10.77.0.4)              ═ dgram :5557 ═╬═ tapbridge (127.0.0.1:5555) ── tap0 ── ns b (10.77.0.2)
    /// ```
    @Test func theMultiVMRecipeRunsAsWrittenWithOneVMAbsent() throws {
        try Self.requireGuest()
        let readme = try String(contentsOfFile: "\(Host.packageRoot.path)/Examples/qemu/README.md", encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## 2. No TAP at all").dropFirst().first?.components(separatedBy: "## 3.").first)
        let block = try #require(section.components(separatedBy: "```").dropFirst().first, "no code block in recipe 2")
        let line = try #require(block.split(separator: "\n").first { $0.hasPrefix("tapbridge ") }, "no tapbridge line in \(block)")
        let written = line.split(separator: " ").dropFirst().map(String.init).filter { $0 != "&" }
        let netdev = try #require(block.split(whereSeparator: { $0 == " " || $0 == "\n" }).first { $0.hasPrefix("dgram,") }.map(String.init), "no -netdev dgram in \(block)")
        let add = try #require(section.replacingOccurrences(of: "\n", with: " ").components(separatedBy: "`tapbridge remote add ").dropFirst().first?
            .split(separator: "`").first.map(String.init), "no remote add in \(section)")
        #expect(written.contains("tap0") && add == "127.0.0.1:5557,encap=raw,name=vm2" && netdev.contains("local.port=5556") && netdev.contains("remote.port=5555"),
                "the recipe changed; this test follows it: \(written) \(add) \(netdev)")
        for port in ["5555", "5556", "5557"] {
            try #require(!Host.run(["ss", "-Hlun", "sport = :\(port)"]).output.contains(":\(port)"), "UDP port \(port) is taken: the recipe as written would clash")
        }
        let lab = Lab()
        let b = lab.namespace("b")
        let tap = lab.link("0")
        let name = lab.bridgeName()
        let bridge = try lab.bridge(written.map { $0 == "tap0" ? tap : $0 } + ["--name", name])
        #expect(lab.waitForLinks([tap]), "\(bridge.output)")
        lab.place(tap, in: b, address: "10.77.0.2/24")
        let added = ControlTests.client(["remote", "add", add], name: name)
        #expect(added.ok, "remote add \(add): \(added.output)")
        func guest(_ k: Int, _ arguments: String) throws -> Background {
            try lab.background(Self.qemu(arguments, netdev: netdev.replacingOccurrences(of: "local.port=5556", with: "local.port=555\(5 + k)"),
                                         device: "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:0\(k)"))
        }
        // vm2 alone: TCP both ways while vm1's remote is absent
        let bytes = 2 << 20
        let vm2 = try guest(2, "tb.addr=10.77.0.4/24 tb.peer=10.77.0.2 tb.port=5013 tb.bytes=\(bytes) tb.listen=5014")
        Self.guestMovesTCPBothWays(lab, vm2, "10.77.0.4", with: b, port: 5013, bytes: bytes, context: bridge.output)
        let ports = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        let one = try #require(ports.first { $0.name == "vm1" }), two = try #require(ports.first { $0.name == "vm2" })
        #expect(one.state == "unreachable" && one.remote?.why?.contains("ICMP port unreachable: nothing listens on 127.0.0.1:5556") == true,
                "the absent VM's remote: \(one.state) \(String(describing: one.remote))")
        #expect(two.drops["link_down"] == nil && two.remote?.unreachable == 0 && two.counters.receivedFrames > 1000,
                "the live VM's remote: \(two.state) \(two.drops) \(two.counters) \(String(describing: two.remote))")
        // the same, as Prometheus has it (per remote, labelled)
        let prom = ControlTests.client(["show", "stats", "--format", "prometheus"], name: name).output.split(separator: "\n").map(String.init)
        func sample(_ metric: String, _ port: String) -> Double? {
            prom.first { $0.hasPrefix("tapbridge_\(metric){") && $0.contains("port=\"\(port)\"") }.flatMap { $0.split(separator: " ").last.flatMap { Double($0) } }
        }
        #expect(sample("remote_up", "vm1") == 0 && sample("remote_up", "vm2") == 1 && (sample("remote_unreachable_total", "vm1") ?? 0) > 0
                    && sample("remote_unreachable_total", "vm2") == 0, "\(prom.filter { $0.contains("remote_") })")
        // vm1 boots: it is answered, and its remote is up
        let vm1 = try guest(1, "tb.addr=10.77.0.3/24 tb.ping=10.77.0.2")
        #expect(Lab.eventually(within: 120) { vm1.output.contains("TB-PING ") } && vm1.output.contains("TB-PING 0"), "vm1 was not answered:\n\(vm1.output.suffix(1200))\n\(bridge.output)")
        let later = try ControlTests.decode([PortReport].self, ControlTests.client(["show", "ports", "--json"], name: name))
        #expect(later.first { $0.name == "vm1" }?.state == "up", "vm1 once booted: \(String(describing: later.first { $0.name == "vm1" }))")
        _ = vm1.stop()
        #expect(bridge.stop() == 0)
    }
}
}
