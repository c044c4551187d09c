import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// Floods of broadcast and multicast frames to many ports wait in a backlog and go out a share
/// at a time (`FloodBacklog`): unicast is never kept behind them, flows stay in order, a quiet
/// host's first frame and ARP do not wait for the whole backlog, and the backlog is bounded.
@Suite("Flood backlog")
struct FloodBacklogTests {
    static let broadcast = MACAddress(rawValue: 0xFFFF_FFFF_FFFF)

    /// A broadcast from host `n`, its last payload byte `mark` (to tell frames apart).
    static func broadcast(from n: Int, mark: UInt8 = 0, etherType: UInt16 = 0x0800) -> [UInt8] {
        FrameFactory.frame(to: broadcast, from: FrameFactory.host(n), etherType: etherType, payload: Array(repeating: 0xA5, count: 45) + [mark])
    }

    /// Services every port once (reads only: nothing drained).
    static func read(_ lan: VirtualLAN) {
        for d in lan.devices { _ = try? lan.engine.service(d, at: lan.clock.now) }
    }

    @Test func aBroadcastToManyPortsWaitsAndGoesOutAShareAtATime() {
        let lan = VirtualLAN(ports: 40)
        let frame = Self.broadcast(from: 1)
        lan.inject(frame, on: 0)
        Self.read(lan)
        #expect(lan.portsWithTraffic.isEmpty, "got copies on \(lan.portsWithTraffic) before the drain, want none")
        #expect(lan.engine.hasBacklog && lan.engine.backlogFrames == 1 && lan.engine.backlogBytes == frame.count)
        #expect(lan.engine.drainBacklog(budget: 10) == 10)
        #expect(lan.portsWithTraffic == Array(1...10), "got \(lan.portsWithTraffic)")
        #expect(lan.engine.drainBacklog(budget: .max) == 29)
        #expect(!lan.engine.hasBacklog && lan.engine.backlogBytes == 0)
        for p in 1..<40 {
            let got = lan.transmitted(on: p)
            #expect(got == [frame], "port \(p): got \(got.count) frames, want the broadcast once")
            #expect(lan.counters(p).transmittedFrames == 1)
        }
        #expect(lan.transmitted(on: 0).isEmpty)
    }

    @Test func fewPortsAndUnknownUnicastAreFloodedAtOnce() {
        let lan = VirtualLAN(ports: 40)
        lan.engine.deferredFanOut = 40  // (39 ports to flood to)
        lan.inject(Self.broadcast(from: 1), on: 0)
        Self.read(lan)
        lan.engine.deferredFanOut = 32
        lan.inject(FrameFactory.frame(to: FrameFactory.host(98), from: FrameFactory.host(1)), on: 0)
        Self.read(lan)
        #expect(!lan.engine.hasBacklog)
        for p in 1..<40 { #expect(lan.transmitted(on: p).count == 2, "port \(p): got \(lan.devices[p].transmitted.count) copies") }
    }

    @Test func unicastIsForwardedWhileFloodsWait() {
        let lan = VirtualLAN(ports: 40)
        for p in 1..<40 { lan.inject(Self.broadcast(from: p), on: p) }
        Self.read(lan)
        #expect(lan.engine.backlogFrames == 39)
        // every host was learned from its broadcast: a unicast to host 5 goes to port 5 now
        let unicast = FrameFactory.frame(to: FrameFactory.host(5), from: FrameFactory.host(100))
        lan.inject(unicast, on: 0)
        _ = try? lan.engine.service(lan.devices[0], at: lan.clock.now)
        #expect(lan.transmitted(on: 5) == [unicast], "the unicast frame waited behind the floods")
        #expect(lan.engine.backlogFrames == 39)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 5).count == 38 && lan.transmitted(on: 0).count == 39)
    }

    @Test func aFlowStaysInOrderWhateverTheFanOutOfItsLaterFrames() {
        let lan = VirtualLAN(ports: 40)
        let first = Self.broadcast(from: 1, mark: 1), second = Self.broadcast(from: 1, mark: 2)
        lan.inject(first, on: 0)
        Self.read(lan)
        // the second would go at once on its own, but its flow has a frame waiting
        lan.engine.deferredFanOut = 1000
        lan.inject(second, on: 0)
        let other = Self.broadcast(from: 2, mark: 3)
        lan.inject(other, on: 1)
        Self.read(lan)
        #expect(lan.transmitted(on: 2) == [other], "another flow, with nothing waiting, goes at once")
        #expect(lan.engine.backlogFrames == 2)
        lan.engine.drainBacklog(budget: .max)
        #expect(lan.transmitted(on: 2) == [first, second])
    }

    @Test func aQuietHostsFirstFrameGoesBeforeTheBusyFlowsRest() {
        let lan = VirtualLAN(ports: 40)
        let busy = (1...3).map { Self.broadcast(from: 1, mark: UInt8($0)) }
        for f in busy { lan.inject(f, on: 1) }
        Self.read(lan)
        #expect(lan.engine.drainBacklog(budget: 39) == 39)  // busy's first frame, whole
        let quiet = Self.broadcast(from: 2, mark: 9)
        lan.inject(quiet, on: 2)
        Self.read(lan)
        lan.engine.drainBacklog(budget: .max)
        #expect(lan.transmitted(on: 3) == [busy[0], quiet, busy[1], busy[2]])
    }

    @Test func arpTakesEveryOtherTurn() {
        let lan = VirtualLAN(ports: 40)
        for p in 1..<10 { lan.inject(Self.broadcast(from: p, mark: UInt8(p)), on: p) }
        let arp = Self.broadcast(from: 30, mark: 0xAA, etherType: 0x0806)
        let arp2 = Self.broadcast(from: 31, mark: 0xAB, etherType: 0x0806)
        lan.inject(arp, on: 30)
        lan.inject(arp2, on: 31)
        Self.read(lan)
        lan.engine.drainBacklog(budget: .max)
        let order = lan.transmitted(on: 35).map { $0.last! }
        #expect(order == [0xAA, 1, 0xAB, 2, 3, 4, 5, 6, 7, 8, 9], "got \(order)")
    }

    @Test func aFrameCutAcrossSharesIsTaggedForEachPortAsAtOnce() {
        // 20 access ports, then 20 trunk ports that carry VLAN 1 tagged
        let configs = (0..<40).map { $0 < 20 ? PortConfiguration() : PortConfiguration(vlanMode: .trunk(allowed: [1], native: nil)) }
        let lan = VirtualLAN(ports: 40, portConfigurations: configs)
        let frame = Self.broadcast(from: 1)
        lan.inject(frame, on: 0)
        Self.read(lan)
        var shares = 0
        while lan.engine.hasBacklog {
            lan.engine.drainBacklog(budget: 7)
            shares += 1
            // the batch is used for something else between shares: the frame is loaded again
            lan.inject(FrameFactory.frame(to: FrameFactory.host(0), from: FrameFactory.host(50 + shares)), on: 0)
            _ = try? lan.engine.service(lan.devices[0], at: lan.clock.now)
        }
        #expect(shares == 6)
        let tagged = FrameFactory.tagged(to: Self.broadcast, from: FrameFactory.host(1), vlan: 1, payload: Array(frame[14...]))
        for p in 1..<40 {
            let got = lan.transmitted(on: p).filter { $0[0] == 0xFF }
            #expect(got == [p < 20 ? frame : tagged], "port \(p)")
        }
    }

    @Test func aFullBacklogDropsAndCountsAndAFarBehindDeviceIsNotRead() {
        let lan = VirtualLAN(ports: 40)
        lan.engine.backlogByteLimit = 130
        lan.engine.holdBackAt = 2
        for k in 0..<3 { lan.inject(Self.broadcast(from: 1, mark: UInt8(k)), on: 0) }
        _ = try? lan.engine.service(lan.devices[0], at: lan.clock.now)
        #expect(lan.engine.backlogFrames == 2 && lan.counters(0)[.floodBacklog] == 1, "got \(lan.engine.backlogFrames) waiting, \(lan.counters(0)[.floodBacklog]) flood_backlog drops")
        #expect(lan.engine.isHeldBack(lan.devices[0]) && !lan.engine.isHeldBack(lan.devices[1]))
        lan.engine.drainBacklog(budget: 39)
        #expect(!lan.engine.isHeldBack(lan.devices[0]))
        lan.engine.drainBacklog(budget: .max)
        #expect(lan.transmitted(on: 1).map { $0.last! } == [0, 1])
    }

    @Test func aPortThatLeavesTakesItsFramesAndIsSkipped() {
        let lan = VirtualLAN(ports: 40)
        lan.inject(Self.broadcast(from: 1), on: 0)
        lan.inject(Self.broadcast(from: 2), on: 1)
        Self.read(lan)
        lan.removePort(0)
        #expect(lan.engine.backlogFrames == 1)
        lan.removePort(7)
        lan.engine.drainBacklog(budget: .max)
        #expect(lan.transmitted(on: 7).isEmpty && lan.transmitted(on: 0).isEmpty)
        for p in 2..<40 where p != 7 { #expect(lan.transmitted(on: p).count == 1, "port \(p)") }
        #expect(!lan.engine.hasBacklog)
    }

    /// A port added while a flood waits is not among its ports, even with the ID of one that
    /// left (IDs are reused, lowest first): it gets nothing of that flood, and later floods.
    @Test func aPortAddedWhileAFloodWaitsDoesNotGetIt() {
        let lan = VirtualLAN(ports: 40)
        lan.inject(Self.broadcast(from: 1), on: 0)
        Self.read(lan)
        lan.removePort(7)
        let again = lan.addPort()
        #expect(lan.ports[again] == lan.ports[7], "the new port takes the free ID")
        lan.engine.drainBacklog(budget: .max)
        #expect(lan.transmitted(on: again).isEmpty && lan.transmitted(on: 7).isEmpty)
        for p in 1..<40 where p != 7 { #expect(lan.transmitted(on: p).count == 1, "port \(p)") }
        let later = lan.send(Self.broadcast(from: 2), on: 1)
        #expect(later[again].count == 1, "a later flood reaches it")
    }
}
