import TapBridgeCore
import TapBridgeTestSupport
import Testing

/// Storm control cuts a flood to its limit; a loop of virtual ports is found, named, and (with
/// loop protection) broken by blocking one of its ports for a while. Manual clock: exact.
@Suite("Storms and loops")
struct StormAndLoopTests {
    static let broadcast = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1))

    @Test func stormControlCutsAFloodToItsLimit() {
        let lan = VirtualLAN(ports: 2, portConfigurations: [PortConfiguration(stormLimit: 100), PortConfiguration()])
        for _ in 0..<1000 { lan.inject(Self.broadcast, on: 0) }
        lan.runUntilIdle()
        // a burst of a tenth of a second's worth (at least 10), the rest dropped
        #expect(lan.transmitted(on: 1).count == 10 && lan.counters(0)[.stormControl] == 990)
        lan.clock.advance(by: .milliseconds(500))
        for _ in 0..<1000 { lan.inject(Self.broadcast, on: 0) }
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 1).count == 10, "the bucket holds at most the burst")
        // spread over a second at the limit's pace: all of them pass
        for _ in 0..<100 {
            lan.clock.advance(by: .milliseconds(10))
            lan.inject(Self.broadcast, on: 0)
            lan.runUntilIdle()
        }
        #expect(lan.transmitted(on: 1).count == 100)
        // known unicast is never limited
        lan.send(FrameFactory.frame(to: .broadcast, from: FrameFactory.host(2)), on: 1)
        lan.discardTransmitted()
        for _ in 0..<500 { lan.inject(FrameFactory.frame(to: FrameFactory.host(2), from: FrameFactory.host(1)), on: 0) }
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 1).count == 500)
    }

    /// Ports 1 and 2 wired to each other (both ends of one link): a broadcast from port 0 goes
    /// round and round between them, its source moving from one to the other each time.
    static func wireLoop(_ lan: VirtualLAN, rounds: Int) -> Int {
        var carried = 0
        for _ in 0..<rounds {
            lan.runUntilIdle()
            let (out1, out2) = (lan.transmitted(on: 1), lan.transmitted(on: 2))
            if out1.isEmpty && out2.isEmpty { break }
            for f in out1 { lan.inject(f, on: 2) }
            for f in out2 { lan.inject(f, on: 1) }
            carried += out1.count + out2.count
            _ = lan.transmitted(on: 0)
        }
        return carried
    }

    @Test func aLoopIsFoundNamedAndBrokenThenTriedAgain() {
        let lan = VirtualLAN(ports: 3)
        var reports: [LoopReport] = []
        lan.bridge.loopHandler = { reports.append($0) }
        lan.inject(Self.broadcast, on: 0)
        let carried = Self.wireLoop(lan, rounds: 1000)
        #expect(carried < 40, "the loop went on for \(carried) frames")
        #expect(reports == [.loop(lan.ports[1], lan.ports[2], moves: 8, blocked: lan.ports[2])], "\(reports)")
        #expect(lan.bridge.loopStatistics == LoopStatistics(detected: 1, blocks: 1, portsBlocked: 1))
        // the other ports keep working; the blocked one takes and gives nothing
        lan.discardTransmitted()
        lan.inject(FrameFactory.frame(to: .broadcast, from: FrameFactory.host(5)), on: 1)
        lan.runUntilIdle()
        #expect(lan.transmitted(on: 0).count == 1 && lan.transmitted(on: 2).isEmpty)
        lan.inject(Self.broadcast, on: 2)
        lan.runUntilIdle()
        #expect(lan.counters(2)[.loopBlocked] >= 1 && lan.transmitted(on: 0).isEmpty)
        // after the block time the port is tried again: the loop is still there, found again
        lan.clock.advance(by: .seconds(10))
        #expect(lan.bridge.nextDeadline.map { $0 <= lan.clock.now } == true)
        lan.bridge.expire(at: lan.clock.now)
        #expect(reports.last == .unblocked(lan.ports[2]) && lan.bridge.loopStatistics.portsBlocked == 0)
        lan.inject(Self.broadcast, on: 0)
        #expect(Self.wireLoop(lan, rounds: 1000) < 40)
        #expect(lan.bridge.loopStatistics.detected == 2 && lan.bridge.loopStatistics.portsBlocked == 1)
    }

    /// Port 1 wired back to port 0 (both ends of one veth): a broadcast goes out of 1 and in at
    /// 0 again, its source learned on port 0 every time, so no MAC moves. The same frame
    /// flooded again and again from one port is the loop: found, named, broken by blocking
    /// port 0; a host that sends one frame again at 10 a second is never taken for one.
    @Test func aLoopThatMovesNoMACIsFoundByItsEcho() {
        let lan = VirtualLAN(ports: 3)
        var reports: [LoopReport] = []
        lan.bridge.loopHandler = { reports.append($0) }
        lan.inject(Self.broadcast, on: 0)
        var carried = 0
        for _ in 0..<1000 {
            lan.runUntilIdle()
            let out = lan.transmitted(on: 1)
            _ = lan.transmitted(on: 2)
            if out.isEmpty { break }
            for f in out { lan.inject(f, on: 0) }
            carried += out.count
            lan.clock.advance(by: .microseconds(50))
        }
        #expect(carried < 40, "the loop went on for \(carried) frames")
        #expect(reports == [.echo(lan.ports[0], repeats: 32, blocked: lan.ports[0])], "\(reports)")
        #expect(lan.bridge.loopStatistics == LoopStatistics(detected: 1, blocks: 1, portsBlocked: 1))
        // the same frame again and again, 10 a second, from a host on port 2: never a loop
        let lan2 = VirtualLAN(ports: 2)
        var reports2: [LoopReport] = []
        lan2.bridge.loopHandler = { reports2.append($0) }
        for _ in 0..<200 {
            lan2.inject(Self.broadcast, on: 0)
            lan2.runUntilIdle()
            lan2.clock.advance(by: .milliseconds(100))
        }
        #expect(reports2.isEmpty && lan2.transmitted(on: 1).count == 200, "\(reports2)")
    }

    @Test func withoutLoopProtectionTheLoopIsReportedOnce() {
        let lan = VirtualLAN(ports: 3, configuration: Bridge.Configuration(loopProtect: false))
        var reports: [LoopReport] = []
        lan.bridge.loopHandler = { reports.append($0) }
        lan.inject(Self.broadcast, on: 0)
        let carried = Self.wireLoop(lan, rounds: 200)
        #expect(carried >= 200, "nothing stops it: \(carried)")
        #expect(reports == [.loop(lan.ports[1], lan.ports[2], moves: 8, blocked: nil)], "one report per block time: \(reports.count)")
    }

    /// A station that moves once (a VM migrated) is not a loop.
    @Test func aStationThatMovesIsNoLoop() {
        let lan = VirtualLAN(ports: 3)
        for k in 0..<20 {
            lan.clock.advance(by: .seconds(1))
            lan.send(Self.broadcast, on: 1 + k % 2)
        }
        #expect(lan.bridge.loopStatistics.detected == 0)
    }
}
