import Testing
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import TapBridgeTestSupport

/// The daemon's side of the port registry: what a port is lives in one entry per name (the
/// engine knows names, devices and configurations only), kept while the port is away.
@Suite("The daemon's port directory")
struct PortDirectoryTests {
    static func link(_ impairment: Impairment = Impairment()) -> ImpairedDevice {
        ImpairedDevice(VirtualPort(), impairment: impairment, seed: 1, clock: { Instant(nanoseconds: 0) })
    }

    @Test func anEntryIsFoundByNameAndInterfaceAndLeavesWholly() {
        let directory = PortDirectory()
        directory.joined("tap0", kind: .tap, interfaceIndex: 41, link: Self.link())
        directory.joined("veth0", kind: .packet, interfaceIndex: 42, offloadsOn: false, link: Self.link())
        directory.joined("r1", kind: .remote)
        #expect(directory.name(onInterface: 41) == "tap0" && directory.name(onInterface: 42) == "veth0")
        #expect(directory["veth0"]?.kind == .packet && directory["veth0"]?.offloadsOn == false && directory["r1"]?.kind == .remote)
        directory.update("veth0") { $0.heldBy = "qemu-system-x86, pid 812" }
        #expect(directory["veth0"]?.heldBy == "qemu-system-x86, pid 812")
        directory.remove("tap0")
        #expect(directory["tap0"] == nil && directory.name(onInterface: 41) == nil)
        // an interface index taken again by another port leads to that one only
        directory.joined("tap9", kind: .tap, interfaceIndex: 42, link: Self.link())
        directory.remove("veth0")
        #expect(directory.name(onInterface: 42) == "tap9", "removing veth0 must not take tap9's index away")
    }

    /// A port that goes away keeps its counts and its spec; back again, it counts on from them
    /// and its holder (of the interface before) is forgotten; removed while away, all goes.
    @Test func aPortAwayKeepsItsCountsUntilItComesBackOrIsRemoved() throws {
        let directory = PortDirectory()
        let spec = try PortSpec(parsing: "veth0,mode=packet")
        directory.joined("veth0", kind: .packet, interfaceIndex: 42, link: Self.link())
        directory.update("veth0") { $0.heldBy = "qemu, pid 1"; $0.returns = spec }
        var counted = PortCounters()
        counted.receivedFrames = 7
        directory.away("veth0", spec: spec, carried: counted, kind: .packet)
        #expect(directory.absent == ["veth0"] && directory.absentNames == ["veth0"])
        #expect(directory.name(onInterface: 42) == nil && directory["veth0"]?.heldBy == nil && directory["veth0"]?.link == nil)
        directory.away("veth0", spec: spec, carried: counted, kind: .packet)  // (gone twice: both counted)
        #expect(directory["veth0"]?.carried.receivedFrames == 14)
        directory.joined("veth0", kind: .packet, interfaceIndex: 77, link: Self.link())
        #expect(directory.absent.isEmpty && directory["veth0"]?.absence == nil)
        #expect(directory["veth0"]?.carried.receivedFrames == 14 && directory["veth0"]?.returns?.name == "veth0" && directory.name(onInterface: 77) == "veth0")
        directory.away("veth0", spec: spec, kind: .packet)
        directory.remove("veth0")
        #expect(directory["veth0"] == nil && directory.absent.isEmpty)
    }

    /// The event loop asks only links with something to do for their next departure: a
    /// thousand plain ports add nothing to a wake-up.
    @Test func onlyLinksWithAnImpairmentOrQueuedFramesAreAsked() {
        let directory = PortDirectory()
        for i in 0..<1000 { directory.joined("p\(i)", kind: .tap, link: Self.link()) }
        #expect(directory.busyLinks.isEmpty)
        var slow = Impairment()
        slow.delay = .milliseconds(50)
        let impaired = Self.link(slow)
        directory.joined("slow", kind: .tap, link: impaired)
        #expect(directory.busyLinks.count == 1)
        impaired.reconfigure(Impairment())
        directory.linkChanged(impaired)
        #expect(directory.busyLinks.isEmpty, "cleared and with nothing queued: not asked any more")
        directory.remove("p3")
        #expect(directory.busyLinks.isEmpty && directory.entries.count == 1000)
    }
}
