import TapBridgeDaemon
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
}
}
