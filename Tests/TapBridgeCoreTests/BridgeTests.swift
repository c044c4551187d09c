import Testing
import TapBridgeCore
import TapBridgeTestSupport

let A = FrameFactory.host(0xA)
let B = FrameFactory.host(0xB)
let C = FrameFactory.host(0xC)

/// Which port indices received exactly `frame` once, and that nothing else was sent.
func receivers(_ out: [[[UInt8]]]) -> [Int] { out.indices.filter { !out[$0].isEmpty } }

@Suite("Learning and forwarding")
struct ForwardingTests {
    @Test func floodsUnknownDestinationToEveryOtherPort() {
        let lan = VirtualLAN(ports: 4)
        let f = FrameFactory.frame(to: B, from: A)
        let out = lan.send(f, on: 0)
        #expect(receivers(out) == [1, 2, 3], "got \(receivers(out)), want [1, 2, 3]")
        #expect(out[1] == [f] && out[2] == [f] && out[3] == [f])
        #expect(lan.leftovers().isEmpty)
    }

    @Test func learnsThenUnicastsToExactlyOnePort() {
        let lan = VirtualLAN(ports: 3)
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)  // B is behind port 1
        let f = FrameFactory.frame(to: B, from: A)
        let out = lan.send(f, on: 0)
        #expect(receivers(out) == [1], "got \(receivers(out)), want [1]")
        #expect(out[1] == [f])
        // and the reply goes back to A only, A having been learned from f
        let reply = FrameFactory.frame(to: A, from: B)
        #expect(receivers(lan.send(reply, on: 1)) == [0])
        #expect(lan.bridge.table.statistics.learned == 2)
    }

    @Test func neverSendsBackOutTheIngressPort() {
        let lan = VirtualLAN(ports: 3)
        for dst in [B, .broadcast, MACAddress("01:00:5e:00:00:fb")!] {
            let out = lan.send(FrameFactory.frame(to: dst, from: A), on: 2)
            #expect(out[2].isEmpty, "frame to \(dst) came back out of its ingress port")
        }
    }

    @Test(arguments: ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "01:80:c2:00:00:10"])
    func floodsBroadcastAndMulticastEvenWhenTheGroupWasSeen(dst: String) {
        let lan = VirtualLAN(ports: 3)
        lan.send(FrameFactory.frame(to: A, from: B), on: 1)
        let out = lan.send(FrameFactory.frame(to: MACAddress(dst)!, from: A), on: 0)
        #expect(receivers(out) == [1, 2])
    }

    @Test func dropsWhenDestinationIsOnTheIngressSegment() {
        let lan = VirtualLAN(ports: 3)
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 0)
        let out = lan.send(FrameFactory.frame(to: B, from: A), on: 0)
        #expect(receivers(out).isEmpty)
        #expect(lan.counters(0)[.sameSegment] == 1)
    }

    @Test func agesOutAfterTheConfiguredTimeAndNotBefore() {
        let lan = VirtualLAN(ports: 3, configuration: .init(table: .init(ageingTime: .seconds(30))))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        lan.clock.advance(by: .seconds(30) - .nanoseconds(1))
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1], "expired before its time")
        lan.clock.advance(by: .nanoseconds(1))
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1, 2], "still known after ageing time")
        #expect(lan.bridge.table.statistics.expired == 1)
    }

    @Test func trafficRefreshesTheEntry() {
        let lan = VirtualLAN(ports: 3, configuration: .init(table: .init(ageingTime: .seconds(30))))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        for _ in 0..<5 {
            lan.clock.advance(by: .seconds(20))
            lan.send(FrameFactory.frame(to: A, from: B), on: 1)  // B talks again
        }
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1])
        #expect(lan.bridge.table.statistics.refreshed == 5)
    }

    @Test func sweepRemovesExpiredEntriesAndReportsTheNextExpiry() {
        let lan = VirtualLAN(ports: 2, configuration: .init(table: .init(ageingTime: .seconds(10))))
        #expect(lan.bridge.nextDeadline == nil)
        lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)
        lan.clock.advance(by: .seconds(4))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        #expect(lan.bridge.nextDeadline == Instant.zero.advanced(by: .seconds(10)))
        #expect(lan.bridge.expire(at: Instant.zero.advanced(by: .seconds(10))) == 1)
        #expect(lan.bridge.nextDeadline == Instant.zero.advanced(by: .seconds(14)))
        #expect(lan.bridge.table.count == 1)
        lan.transmitted(on: 0)
        lan.transmitted(on: 1)
    }

    @Test func hubModeFloodsEverythingAndLearnsNothing() {
        let lan = VirtualLAN(ports: 3, configuration: .init(isHub: true))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1, 2])
        #expect(lan.bridge.table.count == 0)
        #expect(lan.send(FrameFactory.frame(to: B, from: A), on: 1)[1].isEmpty, "hub echoed to ingress")
    }

    @Test func runtsAreDroppedAndCounted() {
        let lan = VirtualLAN(ports: 2)
        for n in [0, 1, 13] { lan.send(Array(repeating: 0x02, count: n), on: 0) }
        #expect(lan.counters(0)[.runt] == 3)
        #expect(lan.counters(0).receivedFrames == 3)
        #expect(lan.transmitted(on: 1).isEmpty)
    }

    @Test(arguments: ["00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"])
    func invalidSourcesAreDroppedNotLearned(src: String) {
        let lan = VirtualLAN(ports: 2)
        let out = lan.send(FrameFactory.frame(to: .broadcast, from: MACAddress(src)!), on: 0)
        #expect(receivers(out).isEmpty)
        #expect(lan.counters(0)[.invalidSource] == 1)
        #expect(lan.bridge.table.count == 0)
    }

    @Test func linkLocalControlFramesAreNotForwardedUnlessConfigured() {
        let stp = FrameFactory.frame(to: MACAddress("01:80:c2:00:00:00")!, from: A, etherType: 0x0026)
        let lldp = FrameFactory.frame(to: MACAddress("01:80:c2:00:00:0e")!, from: A, etherType: 0x88CC)
        let lan = VirtualLAN(ports: 2)
        #expect(receivers(lan.send(stp, on: 0)).isEmpty)
        #expect(receivers(lan.send(lldp, on: 0)).isEmpty)
        #expect(lan.counters(0)[.linkLocalControl] == 2)
        let open = VirtualLAN(ports: 2, configuration: .init(forwardsLinkLocal: true))
        #expect(receivers(open.send(lldp, on: 0)) == [1])
    }

    @Test func countsReceivedTransmittedAndDroppedPerPort() {
        let lan = VirtualLAN(ports: 3)
        let f = FrameFactory.frame(to: .broadcast, from: A)
        lan.send(f, on: 0)
        lan.send(Array(f.prefix(10)), on: 0)
        let c0 = lan.counters(0), c1 = lan.counters(1)
        #expect(c0.receivedFrames == 2 && c0.receivedBytes == UInt64(f.count + 10))
        #expect(c0.totalDrops == 1 && c0[.runt] == 1)
        #expect(c1.transmittedFrames == 1 && c1.transmittedBytes == UInt64(f.count))
        lan.transmitted(on: 1); lan.transmitted(on: 2)
    }
}

@Suite("Forwarding table limits, moves, statics, flushing")
struct TableTests {
    @Test func fullTableEvictsFromThePortHoldingTheMost() {
        let lan = VirtualLAN(ports: 3, configuration: .init(table: .init(maximumEntries: 6)))
        // port 1 and 2 each hold one host; port 0 floods random sources
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        lan.send(FrameFactory.frame(to: .broadcast, from: C), on: 2)
        for n in 0..<50 { lan.send(FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1000 + n)), on: 0) }
        let table = lan.bridge.table
        #expect(table.count == 6)
        #expect(table.learnedCount(on: lan.ports[0]) == 4)
        #expect(table.statistics.evicted == 46, "got \(table.statistics.evicted) evictions, want 46")
        // the hosts on the quiet ports survived, the newest flooders too, the oldest did not
        #expect(table.peek(B, vlan: 1, at: lan.clock.now) == lan.ports[1])
        #expect(table.peek(C, vlan: 1, at: lan.clock.now) == lan.ports[2])
        #expect(table.peek(FrameFactory.host(1049), vlan: 1, at: lan.clock.now) == lan.ports[0])
        #expect(table.peek(FrameFactory.host(1000), vlan: 1, at: lan.clock.now) == nil)
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1])
        lan.discardTransmitted()
    }

    @Test func fullTableReclaimsExpiredEntriesBeforeEvicting() {
        let lan = VirtualLAN(ports: 2, configuration: .init(table: .init(ageingTime: .seconds(10), maximumEntries: 2)))
        lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)
        lan.clock.advance(by: .seconds(5))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        lan.clock.advance(by: .seconds(6))  // A expired, B did not
        lan.send(FrameFactory.frame(to: .broadcast, from: C), on: 1)
        let s = lan.bridge.table.statistics
        #expect(s.evicted == 0 && s.expired == 1, "got evicted \(s.evicted) expired \(s.expired)")
        #expect(lan.bridge.table.peek(B, vlan: 1, at: lan.clock.now) == lan.ports[1])
        lan.transmitted(on: 0); lan.transmitted(on: 1)
    }

    @Test func perPortLimitEvictsThatPortsOldestOnly() {
        let lan = VirtualLAN(ports: 2, configuration: .init(table: .init(maximumEntriesPerPort: 3)))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        for n in 0..<10 { lan.send(FrameFactory.frame(to: .broadcast, from: FrameFactory.host(500 + n)), on: 0) }
        let t = lan.bridge.table
        #expect(t.learnedCount(on: lan.ports[0]) == 3)
        #expect(t.peek(B, vlan: 1, at: lan.clock.now) == lan.ports[1])
        #expect(t.peek(FrameFactory.host(509), vlan: 1, at: lan.clock.now) == lan.ports[0])
        #expect(t.peek(FrameFactory.host(506), vlan: 1, at: lan.clock.now) == nil)
        #expect(t.statistics.evicted == 7)
        lan.transmitted(on: 0); lan.transmitted(on: 1)
    }

    @Test func tableFullOfStaticEntriesRefusesToLearn() {
        var table = ForwardingTable(configuration: .init(maximumEntries: 2))
        let addedA = table.addStatic(A, on: PortID(0), vlan: 1)
        let addedB = table.addStatic(B, on: PortID(0), vlan: 1)
        #expect(addedA && addedB)
        #expect(table.learn(C, on: PortID(1), vlan: 1, at: .zero) == .refused(.tableFull))
        #expect(table.statistics.refused == 1)
        let addedC = table.addStatic(C, on: PortID(1), vlan: 1)
        #expect(!addedC, "a table full of static entries took another")
    }

    @Test func macMoveIsDetectedAndCounted() {
        let lan = VirtualLAN(ports: 3)
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 2)  // B moved (VM migrated)
        #expect(lan.bridge.table.statistics.moved == 1)
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [2])
        lan.discardTransmitted()
    }

    @Test func flappingMovesAreDampedByTheHoldDown() {
        var table = ForwardingTable(configuration: .init(moveHoldDown: .seconds(5)))
        let p1 = PortID(1), p2 = PortID(2)
        var now = Instant.zero
        #expect(table.learn(B, on: p1, vlan: 1, at: now) == .learned)
        #expect(table.learn(B, on: p2, vlan: 1, at: now) == .moved(from: p1), "the first move is never damped")
        now = now.advanced(by: .seconds(1))
        #expect(table.learn(B, on: p1, vlan: 1, at: now) == .refused(.moveDamped))
        #expect(table.lookup(B, vlan: 1, at: now) == p2)
        now = now.advanced(by: .seconds(4))
        #expect(table.learn(B, on: p1, vlan: 1, at: now) == .moved(from: p2), "hold-down over")
        #expect(table.statistics.moved == 2 && table.statistics.moveDamped == 1)
    }

    @Test func staticEntriesNeverAgeNorMove() {
        let lan = VirtualLAN(ports: 3, configuration: .init(table: .init(ageingTime: .seconds(10))))
        #expect(lan.bridge.addStaticEntry(B, on: lan.ports[1]))
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 2)  // an impostor on port 2
        lan.clock.advance(by: .seconds(3600))
        #expect(receivers(lan.send(FrameFactory.frame(to: B, from: A), on: 0)) == [1])
        #expect(lan.bridge.table.statistics.moved == 0)
        lan.clock.advance(by: .seconds(10))
        #expect(lan.bridge.expire(at: lan.clock.now) == 1, "only the learned A ages out")
        #expect(lan.bridge.table.peek(B, vlan: 1, at: lan.clock.now) == lan.ports[1])
        lan.discardTransmitted()
    }

    @Test func removingAPortFlushesItsEntries() {
        let lan = VirtualLAN(ports: 3)
        lan.send(FrameFactory.frame(to: .broadcast, from: B), on: 1)
        lan.bridge.addStaticEntry(C, on: lan.ports[1])
        lan.send(FrameFactory.frame(to: .broadcast, from: A), on: 0)
        lan.removePort(1)
        #expect(lan.bridge.table.count == 1)
        #expect(lan.bridge.table.peek(A, vlan: 1, at: lan.clock.now) == lan.ports[0])
        let out = lan.send(FrameFactory.frame(to: B, from: A), on: 0)
        #expect(receivers(out) == [2], "removed port must get nothing")
        lan.discardTransmitted()
    }

    @Test func flushAllByPortAndByVLAN() {
        var t = ForwardingTable()
        for (i, mac) in [A, B, C].enumerated() {
            t.learn(mac, on: PortID(UInt16(i)), vlan: 10, at: .zero)
            t.learn(mac, on: PortID(UInt16(i)), vlan: 20, at: .zero)
        }
        t.addStatic(FrameFactory.host(99), on: PortID(0), vlan: 10)
        #expect(t.flush(port: PortID(0)) == 2)
        #expect(t.flush(vlan: 20) == 2)
        #expect(t.count == 3)
        #expect(t.flush() == 2, "flush keeps static entries")
        #expect(t.flush(includingStatic: true) == 1)
        #expect(t.count == 0)
    }

    /// A flush in slices (as the control socket does it, between forwarding rounds) removes
    /// exactly what one flush would, whatever the slice size, and the table stays usable.
    @Test(arguments: [1, 7, 1000])
    func aFlushInSlicesRemovesWhatOneFlushWould(_ positions: Int) {
        func table() -> ForwardingTable {
            var t = ForwardingTable(configuration: .init(maximumEntries: 5000))
            for i in 0..<3000 { t.learn(FrameFactory.host(i), on: PortID(UInt16(i % 4)), vlan: VLANID(UInt16(1 + i % 3)), at: .zero) }
            for i in 0..<100 { t.addStatic(FrameFactory.host(10_000 + i), on: PortID(UInt16(i % 4)), vlan: 1) }
            for i in stride(from: 0, to: 3000, by: 5) { t.remove(FrameFactory.host(i), vlan: VLANID(UInt16(1 + i % 3))) }  // holes
            return t
        }
        for (port, vlan, statics) in [(nil, nil, false), (PortID(1), nil, false), (nil, VLANID(2), true), (PortID(3), VLANID(1), true)] as [(PortID?, VLANID?, Bool)] {
            var whole = table(), sliced = table()
            let want = whole.flush(port: port, vlan: vlan, includingStatic: statics)
            var got = 0
            var position: Int? = 0
            var calls = 0
            while let p = position {
                let (removed, next) = sliced.flush(from: p, positions: positions, port: port, vlan: vlan, includingStatic: statics)
                got += removed
                position = next
                calls += 1
            }
            #expect(got == want && sliced.count == whole.count, "port \(String(describing: port)) vlan \(String(describing: vlan)): got \(got) removed, want \(want)")
            #expect(calls >= 3000 / positions, "got \(calls) slices")
            #expect(sliced.learn(FrameFactory.host(77_777), on: PortID(0), vlan: 1, at: .zero) != .refused(.tableFull))
        }
    }
}
