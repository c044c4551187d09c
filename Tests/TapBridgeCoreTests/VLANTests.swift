import Testing
import TapBridgeCore
import TapBridgeTestSupport

@Suite("VLANs")
struct VLANTests {
    /// Ports 0, 1: access VLAN 10; port 2: access VLAN 20; port 3: trunk 10,20 native 1.
    func lan() -> VirtualLAN {
        VirtualLAN(ports: 4, portConfigurations: [
            .init(vlanMode: .access(10)), .init(vlanMode: .access(10)), .init(vlanMode: .access(20)),
            .init(vlanMode: .trunk(allowed: [10, 20], native: 1)),
        ])
    }

    @Test func accessPortsInDifferentVLANsAreIsolated() {
        let lan = lan()
        let f = FrameFactory.frame(to: .broadcast, from: A)
        let out = lan.send(f, on: 0)
        #expect(receivers(out) == [1, 3], "got \(receivers(out)), want [1, 3]: VLAN 20 port 2 must not see VLAN 10")
        #expect(out[1] == [f], "access egress is untagged")
        // learned in VLAN 10 only: a VLAN 20 frame to A floods within VLAN 20
        let out20 = lan.send(FrameFactory.frame(to: A, from: C), on: 2)
        #expect(receivers(out20) == [3])
    }

    @Test func trunkEgressAddsTheTag() {
        let lan = lan()
        let f = FrameFactory.frame(to: .broadcast, from: A)
        let out = lan.send(f, on: 0)
        #expect(out[3] == [FrameFactory.tagged(to: .broadcast, from: A, vlan: 10)])
    }

    @Test func trunkIngressRemovesTheTagOnAccessPorts() {
        let lan = lan()
        let tagged = FrameFactory.tagged(to: .broadcast, from: B, vlan: 20, priority: 3)
        let out = lan.send(tagged, on: 3)
        #expect(receivers(out) == [2])
        #expect(out[2] == [FrameFactory.frame(to: .broadcast, from: B)])
    }

    @Test func learnedUnicastAcrossTheTrunkIsTaggedOnTheWayOutAndUntaggedOnTheWayIn() {
        let lan = lan()
        lan.send(FrameFactory.tagged(to: .broadcast, from: B, vlan: 10), on: 3)
        lan.discardTransmitted()
        let out = lan.send(FrameFactory.frame(to: B, from: A), on: 0)
        #expect(receivers(out) == [3])
        #expect(out[3] == [FrameFactory.tagged(to: B, from: A, vlan: 10)])
        let back = lan.send(FrameFactory.tagged(to: A, from: B, vlan: 10), on: 3)
        #expect(receivers(back) == [0])
        #expect(back[0] == [FrameFactory.frame(to: A, from: B)])
    }

    @Test func untaggedOnTheTrunkBelongsToTheNativeVLAN() {
        let lan = VirtualLAN(ports: 3, portConfigurations: [
            .init(vlanMode: .access(1)), .init(vlanMode: .access(10)),
            .init(vlanMode: .trunk(allowed: [10], native: 1)),
        ])
        let f = FrameFactory.frame(to: .broadcast, from: C)
        let out = lan.send(f, on: 2)
        #expect(receivers(out) == [0])
        #expect(out[0] == [f])
        #expect(lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)[2] == [FrameFactory.frame(to: .broadcast, from: A)], "native VLAN leaves the trunk untagged")
    }

    @Test func frameForAVLANThePortDoesNotCarryIsDropped() {
        let lan = lan()
        #expect(receivers(lan.send(FrameFactory.tagged(to: .broadcast, from: A, vlan: 30), on: 3)).isEmpty)
        #expect(lan.counters(3)[.vlanNotAllowed] == 1)
        #expect(receivers(lan.send(FrameFactory.tagged(to: .broadcast, from: A, vlan: 20), on: 0)).isEmpty)
        #expect(lan.counters(0)[.vlanNotAllowed] == 1)
        #expect(receivers(lan.send(FrameFactory.tagged(to: .broadcast, from: A, vlan: 4095), on: 3)).isEmpty)
        #expect(lan.counters(3)[.invalidVLAN] == 1)
    }

    @Test func untaggedFrameOnATrunkWithoutNativeVLANIsDropped() {
        let lan = VirtualLAN(ports: 2, portConfigurations: [.init(vlanMode: .trunk(allowed: [10], native: nil)), .init(vlanMode: .access(10))])
        #expect(receivers(lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)).isEmpty)
        #expect(lan.counters(0)[.untaggedNotAllowed] == 1)
    }

    @Test func priorityTaggedFrameGetsTheAccessVLANAndKeepsItsPriorityOnTrunks() {
        let lan = lan()
        let prio = FrameFactory.tagged(to: .broadcast, from: A, vlan: 0, priority: 6)
        let out = lan.send(prio, on: 0)
        #expect(receivers(out) == [1, 3])
        #expect(out[1] == [FrameFactory.frame(to: .broadcast, from: A)])
        #expect(out[3] == [FrameFactory.tagged(to: .broadcast, from: A, vlan: 10, priority: 6)])
    }

    @Test func sameMACInTwoVLANsIsTwoEntries() {
        let lan = lan()
        lan.send(FrameFactory.tagged(to: .broadcast, from: B, vlan: 10), on: 3)
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 2)  // VLAN 20
        #expect(lan.bridge.table.count == 2)
        #expect(lan.bridge.table.statistics.moved == 0)
        lan.discardTransmitted()
    }

    @Test func serviceTagIsPayloadForACustomerBridge() {
        // An 802.1ad S-tagged frame is untagged for an 802.1Q bridge: it joins the access VLAN.
        let lan = lan()
        let qinq = FrameFactory.frame(to: .broadcast, from: A, tags: [VLANTag(tagProtocol: 0x88A8, vlan: 100)])
        let out = lan.send(qinq, on: 0)
        #expect(out[1] == [qinq])
        #expect(out[3] == [FrameFactory.frame(to: .broadcast, from: A, tags: [VLANTag(vlan: 10), VLANTag(tagProtocol: 0x88A8, vlan: 100)])])
    }

    /// A flood that needs a tag for some ports but has no room to insert it (a batch without
    /// headroom): the ports that needed the tag count the loss, the others get the frame.
    @Test func aFloodWithNoRoomForTheTagIsCountedOnThePortsThatNeededIt() {
        let lan = VirtualLAN(ports: 3, portConfigurations: [
            .init(vlanMode: .access(VLANID(10))), .init(vlanMode: .trunk(allowed: [10], native: nil)), .init(vlanMode: .access(VLANID(10))),
        ], headroom: 0)
        lan.inject(FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1)), on: 0)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 2).count == 1)
        #expect(lan.transmitted(on: 1).isEmpty)
        #expect(lan.counters(1)[.frameTooLarge] == 1)
        #expect(lan.counters(0)[.noEgressPort] == 0)
    }
}
