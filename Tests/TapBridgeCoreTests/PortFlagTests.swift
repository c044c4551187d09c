import Testing
import TapBridgeCore
import TapBridgeTestSupport

@Suite("Port flags and faults")
struct PortFlagTests {
    @Test func portWithLearningOffIsNeverLearned() {
        let lan = VirtualLAN(ports: 3, portConfigurations: [.init(), .init(learning: false), .init()])
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1, 2])
        lan.discardTransmitted()
    }

    @Test func portWithFloodingOffGetsOnlyKnownUnicast() {
        let lan = VirtualLAN(ports: 3, portConfigurations: [.init(), .init(), .init(flooding: false)])
        #expect(receivers(lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)) == [1])
        lan.send(FrameFactory.frame(to: A, from: C), on: 2)
        #expect(receivers(lan.send(FrameFactory.frame(to: C, from: A), on: 0)) == [2])
        lan.discardTransmitted()
    }

    /// A full queue is a drop on the egress port, flood or not; a port whose link is down is
    /// left out of a flood without a drop (the kernel bridge floods only to ports that are up),
    /// and a unicast to a MAC behind it is a `link_down` drop.
    @Test func linkDownAndFullQueueAreCountedOnTheEgressPortAndOthersStillGetTheFrame() {
        let lan = VirtualLAN(ports: 4)
        lan.send(FrameFactory.frame(to: A, from: B), on: 1)  // B is behind port 1
        lan.discardTransmitted()
        lan.devices[1].isLinkDown = true
        lan.devices[2].isQueueFull = true
        let out = lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)
        #expect(receivers(out) == [3])
        #expect(lan.counters(1)[.linkDown] == 0, "a flood counts no drop on a port that is down")
        #expect(lan.counters(2)[.transmitQueueFull] == 1)
        #expect(lan.counters(3).transmittedFrames == 2, "B's frame and the broadcast")
        lan.send(FrameFactory.frame(to: B, from: A), on: 0)
        #expect(lan.counters(1)[.linkDown] == 1, "a unicast to a MAC behind a down port is a drop")
    }

    @Test func aFrameTooLargeForAPortIsCountedThere() {
        let lan = VirtualLAN(ports: 3)
        lan.devices[1].maximumFrameLength = 1514
        let big = FrameFactory.frame(to: .broadcast, from: A, payload: Array(repeating: 1, count: 1501))
        #expect(receivers(lan.send(big, on: 0)) == [2])
        #expect(lan.counters(1)[.frameTooLarge] == 1)
    }

    @Test func receiveErrorsReachTheCaller() {
        let lan = VirtualLAN(ports: 2)
        lan.devices[0].failNextReceive = PortError(.deviceRemoved, code: 77, operation: "read")
        #expect(throws: PortError.self) { try lan.engine.service(lan.devices[0], at: lan.clock.now) }
        lan.inject(FrameFactory.frame(to: .broadcast, from: A), on: 0)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 1).count == 1, "the device works again after the error")
    }

    @Test func engineBudgetBoundsOneServiceCall() {
        let lan = VirtualLAN(ports: 2)
        lan.engine.budgetPerService = 16
        for n in 0..<40 { lan.inject(FrameFactory.frame(to: .broadcast, from: FrameFactory.host(n + 1)), on: 0) }
        let first = (try? lan.engine.service(lan.devices[0], at: lan.clock.now)) ?? -1
        #expect(first == 16, "got \(first) frames in one call, want 16 (the budget)")
        #expect(lan.runUntilIdle() == 24)
        #expect(lan.transmitted(on: 1).count == 40)
    }
}
