import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// The engine's port registry answers without scanning, and a batch costs the devices it sent
/// to: a bridge of thousands of ports starts in time linear in their number (the kernel test
/// `twoThousandPortsStartForwardAndStop` measures the whole start), and a frame between two
/// of them does not visit the others.
@Suite("The port registry")
struct RegistryTests {
    @Test func portsAreFoundByNameThroughRemovalsAndReuse() {
        let engine = ForwardingEngine(bridge: Bridge())
        var ids: [PortID] = []
        for i in 0..<100 {
            ids.append(engine.addPort(named: "p\(i)", on: VirtualPort()))
        }
        #expect(ids == (0..<100).map { PortID(UInt16($0)) }, "IDs are given in order")
        #expect(engine.port(named: "p42") == ids[42] && engine.name(of: ids[42]) == "p42")
        engine.removePort(ids[42])
        engine.removePort(ids[7])
        #expect(engine.port(named: "p42") == nil && engine.name(of: ids[42]) == "" && engine.port(named: "p7") == nil)
        #expect(engine.bridge.activePorts.count == 98 && engine.bridge.activePorts == engine.bridge.activePorts.sorted())
        // the lowest free ID is reused first; the name now leads to the new port
        let again = engine.addPort(named: "p42", on: VirtualPort())
        #expect(again == ids[7], "got \(again), want the lowest free ID \(ids[7])")
        #expect(engine.port(named: "p42") == again && engine.name(of: again) == "p42")
        let next = engine.addPort(named: "q", on: VirtualPort())
        #expect(next == ids[42] && engine.bridge.activePorts == engine.bridge.activePorts.sorted() && engine.bridge.activePorts.count == 100)
        // a port removed whose name another took since does not take the name away
        engine.removePort(ids[3])
        _ = engine.addPort(named: "p3", on: VirtualPort())
        #expect(engine.port(named: "p3") == ids[3])
        #expect(engine.ports.count == 100 && engine.allDevices.count == 100)
    }

    @Test func oneDeviceOfManyPortsIsListedOnceAndLeavesWithItsLastPort() {
        let engine = ForwardingEngine(bridge: Bridge())
        let shared = SharedVirtualDevice()
        let ports = (0..<3).map { engine.addPort(named: "r\($0)", on: shared) }
        _ = engine.addPort(named: "t", on: VirtualPort())
        #expect(engine.allDevices.count == 2)
        engine.removePort(ports[0])
        engine.removePort(ports[1])
        #expect(engine.allDevices.count == 2 && engine.allDevices.contains { $0 === shared })
        engine.removePort(ports[2])
        #expect(engine.allDevices.count == 1 && !engine.allDevices.contains { $0 === shared })
    }

    /// 200 ports: a unicast between two of them flushes the one it went to; a flood flushes
    /// each device once, a device carrying several ports too.
    @Test func aBatchFlushesOnlyTheDevicesItSentTo() {
        let lan = VirtualLAN(ports: 200)
        let (a, b) = (FrameFactory.host(1), FrameFactory.host(2))
        lan.inject(FrameFactory.frame(to: a, from: b), on: 2)   // flooded: b is learned on 2
        _ = lan.runUntilIdle()
        #expect(lan.devices.enumerated().allSatisfy { $0.element.flushes == ($0.offset == 2 ? 0 : 1) }, "a flood flushes every other port once")
        let before = lan.devices.map(\.flushes)
        lan.inject(FrameFactory.frame(to: b, from: a), on: 1)
        _ = lan.runUntilIdle()
        let flushed = lan.devices.indices.filter { lan.devices[$0].flushes != before[$0] }
        #expect(flushed == [2], "a unicast to port 2 flushed ports \(flushed)")
        let shared = SharedVirtualDevice()
        let remotes = (0..<3).map { lan.engine.addPort(named: "r\($0)", on: shared) }
        lan.inject(FrameFactory.frame(to: .broadcast, from: a), on: 1)
        _ = lan.runUntilIdle()
        #expect(shared.flushes == 1 && Set(shared.transmitted.map(\.port)) == Set(remotes), "flushes \(shared.flushes), sent to \(shared.transmitted.map(\.port))")
    }
}
