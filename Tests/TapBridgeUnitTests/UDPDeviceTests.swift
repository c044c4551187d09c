import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDevices
import TapBridgeTestSupport
import Testing

/// The remotes' device over an in-memory socket: peer matching, admission of unknown senders
/// after the batch, idle expiry, garbage, ICMP and send errors. No root, no network.
@Suite("UDP device over a socket double")
struct UDPDeviceTests {
    static let vni = VNI(5)!
    let lan = VirtualLAN(ports: 1)
    let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"))
    let device: UDPTunnelDevice
    let a = FrameFactory.host(1), b = FrameFactory.host(2)

    init() {
        device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    /// Adds a remote at `text` as a port of the LAN's engine.
    @discardableResult
    func addRemote(_ text: String, encapsulation: Encapsulation = .vxlan, dynamic: Bool = false) throws -> PortID {
        let port = lan.engine.addPort(named: text, on: device)
        try device.addPeer(FakeDatagramSocket.address(text), encapsulation: encapsulation, vni: Self.vni, isDynamic: dynamic, as: port)
        return port
    }

    static func vxlan(_ frame: [UInt8], vni: VNI = vni) -> [UInt8] {
        withUnsafeBytes(of: VXLANHeader.encodedHeader(vni: vni)) { Array($0) } + frame
    }

    /// Serves the device once; a device error fails the test (it is never swallowed).
    func serve() {
        #expect(throws: Never.self) { _ = try lan.engine.service(device, at: lan.clock.now) }
    }

    /// A received inner frame larger than a batch slot is dropped (`truncated`, as a datagram
    /// larger than the buffer it is read into), never copied: the train receiver copied it
    /// into the slot unchecked, safe only while every
    /// batch's slots happened to be larger than any datagram (here a batch of 1,600-byte
    /// slots; before, the copy ran past the slot and the commit trapped).
    @Test(arguments: [false, true])
    func anInnerFrameLargerThanABatchSlotIsDroppedNotCopied(_ trains: Bool) throws {
        let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"), trains: trains)
        let device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let engine = ForwardingEngine(bridge: Bridge(), batch: FrameBatch(capacity: 8, frameCapacity: 1_600, headroom: 64))
        let tap = VirtualPort()
        engine.addPort(named: "tap", on: tap)
        let remote = engine.addPort(named: "10.0.0.2:4789", on: device)
        let peer = FakeDatagramSocket.address("10.0.0.2:4789")
        try device.addPeer(peer, encapsulation: .vxlan, vni: Self.vni, isDynamic: false, as: remote)
        let large = FrameFactory.frame(to: .broadcast, from: b, payload: [UInt8](repeating: 7, count: 4_000))
        let small = FrameFactory.frame(to: .broadcast, from: b)
        socket.inbound.append(.init(address: peer, bytes: Self.vxlan(large)))
        socket.inbound.append(.init(address: peer, bytes: Self.vxlan(small)))
        _ = try engine.service(device, at: Instant(nanoseconds: 0))
        #expect(tap.transmitted == [small], "got \(tap.transmitted.map(\.count)) bytes sent to the TAP")
        #expect(engine.bridge.counters(of: remote)[.truncated] == 1, "\(engine.bridge.counters(of: remote))")
    }

    /// A datagram queued to a remote that is removed before the flush still goes where it was
    /// queued for: each queue entry holds its own copy of the destination. (It pointed at the
    /// peer's sockaddr, freed when the peer went: the flush read freed memory, which the next
    /// peer's allocation of the same size may take back, sending the datagram to its address.)
    @Test func aDatagramQueuedToARemoteRemovedBeforeTheFlushKeepsItsDestination() throws {
        let remote = try addRemote("10.0.0.2:4789")
        let frame = FrameFactory.frame(to: b, from: a)
        #expect(frame.withUnsafeBytes { device.transmit($0, to: remote) } == .queued)
        lan.engine.removePort(remote)
        try addRemote("10.0.0.3:4789")
        device.flush { _, _, _, _ in }
        #expect(socket.sent.map(\.address) == [FakeDatagramSocket.address("10.0.0.2:4789")], "sent to \(socket.sent.map(\.address))")
    }

    @Test func aPeersFramesReachTheLANAndTheLANsFramesReachThePeer() throws {
        let remote = try addRemote("10.0.0.2:4789")
        let frame = FrameFactory.frame(to: .broadcast, from: b)
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: Self.vxlan(frame)))
        serve()
        #expect(lan.transmitted(on: 0) == [frame])
        #expect(lan.bridge.counters(of: remote).receivedFrames == 1)
        // the answer goes back to the peer, behind a VXLAN header with its VNI
        let reply = FrameFactory.frame(to: b, from: a)
        lan.inject(reply, on: 0)
        lan.runUntilIdle()
        #expect(socket.sent == [.init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: Self.vxlan(reply))])
        #expect(lan.bridge.counters(of: remote).transmittedFrames == 1)
    }

    /// RFC 7348 senders pick the source port from a flow hash: a VXLAN peer is known by its
    /// IP address, unless two VXLAN peers share it (then only the exact port matches).
    @Test func vxlanPeersAreKnownByAddressUnlessTwoShareIt() throws {
        try addRemote("10.0.0.2:4789")
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:51000"), bytes: Self.vxlan(FrameFactory.frame(to: a, from: b))))
        serve()
        #expect(lan.transmitted(on: 0).count == 1, "another source port of the same VXLAN peer")
        try addRemote("10.0.0.2:4790")
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:51000"), bytes: Self.vxlan(FrameFactory.frame(to: a, from: b))))
        serve()
        #expect(lan.transmitted(on: 0).isEmpty && device.statistics.unknownSender == 1, "two peers at one address: the port decides")
        // a raw peer is only ever its exact address and port
        try addRemote("10.0.0.3:5555", encapsulation: .raw)
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.3:5556"), bytes: FrameFactory.frame(to: a, from: b)))
        serve()
        #expect(lan.transmitted(on: 0).isEmpty && device.statistics.unknownSender == 2)
    }

    @Test func garbageIsCountedByReasonOnItsPeerAndStrangersApart() throws {
        let remote = try addRemote("10.0.0.2:4789")
        let peer = FakeDatagramSocket.address("10.0.0.2:4789")
        let good = FrameFactory.frame(to: a, from: b)
        for bytes in [[], [0x08, 0, 0], [UInt8](repeating: 0, count: 8) + good, Self.vxlan(good, vni: VNI(6)!), Self.vxlan([1, 2, 3])] {
            socket.inbound.append(.init(address: peer, bytes: bytes))
        }
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.9.9.9:4789"), bytes: Self.vxlan(good)))
        socket.inbound.append(.init(address: peer, bytes: Self.vxlan(good)))
        serve()
        let c = lan.bridge.counters(of: remote)
        #expect(c[.malformedEncapsulation] == 3 && c[.vniMismatch] == 1 && c[.runt] == 1, "\(c)")
        #expect(device.statistics.unknownSender == 1)
        #expect(lan.transmitted(on: 0) == [good], "the good frame after the garbage still passes")
    }

    /// `--accept-peers`: the first datagram of a new sender is held, the sender admitted after
    /// the batch (as the daemon does), and the held frame then delivered: nothing is lost.
    @Test func anUnknownSenderIsAdmittedAfterTheBatchAndItsFirstFrameDelivered() throws {
        device.accept(format: .plain(.vxlan, vni: Self.vni), limit: 1)
        let first = FrameFactory.frame(to: .broadcast, from: b)
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.7:4789"), bytes: Self.vxlan(first)))
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.8:4789"), bytes: Self.vxlan(first)))
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.9:4789"), bytes: [1, 2, 3]))
        serve()
        #expect(lan.transmitted(on: 0).isEmpty, "held, not forwarded before the sender is a port")
        let candidates = device.takeCandidates()
        #expect(candidates == [FakeDatagramSocket.address("10.0.0.7:4789")], "one fits the limit; garbage never becomes a candidate")
        #expect(device.statistics.peersRefused == 1 && device.statistics.unknownSender == 1)
        try addRemote("10.0.0.7:4789", dynamic: true)
        serve()
        #expect(lan.transmitted(on: 0) == [first])
        #expect(device.dynamicPeerCount == 1)
        // the count follows peers as they go (it is kept, not counted per stranger's datagram)
        let configured = try addRemote("10.0.0.20:4789")
        #expect(device.dynamicPeerCount == 1)
        lan.engine.removePort(try #require(lan.engine.port(named: "10.0.0.7:4789")))
        lan.engine.removePort(configured)
        #expect(device.dynamicPeerCount == 0)
    }

    /// Strangers' datagrams, trains on and off, with a batch smaller than what they sent (8
    /// slots) and the engine reading again before the daemon decides: every datagram of an
    /// admitted sender is delivered, in order, and every one of a refused sender is counted.
    /// (A 10-datagram train once delivered 1; with trains off, datagrams held across a second
    /// read were refused although their senders were admitted.)
    @Test(arguments: [false, true])
    func everyDatagramOfAnAdmittedSenderIsDeliveredAndTheRestCounted(trains: Bool) throws {
        let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"), trains: trains)
        let device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        device.accept(format: .plain(.vxlan, vni: Self.vni), limit: 2)
        let lan = VirtualLAN(ports: 1)
        let senders = ["10.0.0.7:4789", "10.0.0.8:4789", "10.0.0.9:4789"].map(FakeDatagramSocket.address)
        // frame k of sender s: a broadcast from host 10s+1 carrying k (all of one length)
        func frame(_ s: Int, _ k: Int) -> [UInt8] { FrameFactory.frame(to: .broadcast, from: FrameFactory.host(10 * s + 1), payload: [UInt8(k)] + [UInt8](repeating: 0, count: 45)) }
        let perSender = 20
        for s in senders.indices {
            let datagrams = (0..<perSender).map { Self.vxlan(frame(s, $0)) }
            if trains {
                // one train of 20 datagrams per sender, as UDP_GRO hands them over
                socket.inbound.append(.init(address: senders[s], bytes: datagrams.flatMap { $0 }, segmentSize: datagrams[0].count))
            } else {
                for d in datagrams { socket.inbound.append(.init(address: senders[s], bytes: d)) }
            }
        }
        /// Serves the device once; a device error fails the test (it is never swallowed).
    func serve() {
        #expect(throws: Never.self) { _ = try lan.engine.service(device, at: lan.clock.now) }
    }
        serve()
        serve()  // the engine reads again before the decision: nothing may be refused by that
        #expect(lan.transmitted(on: 0).isEmpty && device.statistics.peersRefused == 0)
        #expect(device.awaitsAdmission)
        // the daemon, after each batch: admits every candidate (the device keeps to the limit)
        var admitted: [SocketAddress] = []
        for _ in 0..<40 {
            for address in device.takeCandidates() {
                let port = lan.engine.addPort(named: "\(address)", on: device)
                try device.addPeer(address, encapsulation: .vxlan, vni: Self.vni, isDynamic: true, as: port)
                admitted.append(address)
            }
            serve()
        }
        #expect(admitted == Array(senders.prefix(2)), "got admitted \(admitted)")
        let got = lan.transmitted(on: 0)
        let want = (0..<2).flatMap { s in (0..<perSender).map { frame(s, $0) } }
        #expect(got == want, "got \(got.count) frames, want the \(want.count) of the two admitted senders, in order")
        #expect(device.statistics.peersRefused == UInt64(perSender), "got \(device.statistics.peersRefused) refused, want \(perSender): every datagram of the third sender (over the limit)")
        #expect(device.statistics.unknownSender == 0)
    }

    /// A dynamic peer is idle exactly `timeout` after its last well-formed frame; garbage does
    /// not keep it alive.
    @Test func aSilentDynamicPeerExpiresOnTime() throws {
        let port = try addRemote("10.0.0.7:4789", dynamic: true)
        let timeout = Duration.seconds(30)
        let deadline = try #require(device.nextIdleDeadline(timeout: timeout))
        #expect(device.idleDynamicPeers(timeout: timeout, now: Instant(nanoseconds: deadline.nanoseconds - 1)).isEmpty)
        #expect(device.idleDynamicPeers(timeout: timeout, now: deadline) == [port])
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.7:4789"), bytes: [0xff]))
        serve()
        #expect(device.nextIdleDeadline(timeout: timeout) == deadline, "garbage proved nothing")
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.7:4789"), bytes: Self.vxlan(FrameFactory.frame(to: a, from: b))))
        serve()
        #expect(try #require(device.nextIdleDeadline(timeout: timeout)) > deadline)
    }

    /// An ICMP error marks its peer unreachable (counted); its next frame brings it back. A
    /// send refused as unreachable counts as `link_down` on the port.
    @Test func icmpErrorsAndRefusedSendsMarkThePeer() throws {
        let remote = try addRemote("10.0.0.2:4789")
        let peer = FakeDatagramSocket.address("10.0.0.2:4789")
        socket.icmpErrors = [(peer, ECONNREFUSED), (FakeDatagramSocket.address("10.9.9.9:1"), EHOSTUNREACH)]
        serve()
        #expect(device.peer(of: remote)?.isUnreachable == true && device.peer(of: remote)?.unreachable == 1)
        #expect(device.statistics.unreachable == 2)
        socket.inbound.append(.init(address: peer, bytes: Self.vxlan(FrameFactory.frame(to: a, from: b))))
        serve()
        #expect(device.peer(of: remote)?.isUnreachable == false)
        socket.sendErrors[peer] = EHOSTUNREACH
        lan.inject(FrameFactory.frame(to: b, from: a), on: 0)
        lan.runUntilIdle()
        #expect(lan.bridge.counters(of: remote)[.linkDown] == 1 && device.peer(of: remote)?.isUnreachable == true)
    }

    /// Floods to many remotes, some refusing: each remote is charged exactly its own frames,
    /// sent or refused, batch after batch (the send queue notes a sent datagram with one
    /// lookup by port, where it scanned every remote's ending).
    @Test func aFloodToManyRemotesChargesEachItsOwnFrames() throws {
        let remotes = try (0..<40).map { try addRemote("10.0.1.\($0 + 1):4789") }
        for k in [3, 17, 39] { socket.sendErrors[FakeDatagramSocket.address("10.0.1.\(k + 1):4789")] = EHOSTUNREACH }
        for n in 1...3 {
            for _ in 0..<5 { lan.inject(FrameFactory.frame(to: .broadcast, from: a), on: 0) }
            lan.runUntilIdle()
            for (k, remote) in remotes.enumerated() {
                let c = lan.bridge.counters(of: remote)
                if [3, 17, 39].contains(k) {
                    #expect(c.transmittedFrames == 0 && c[.transmitError] + c[.linkDown] == UInt64(5 * n), "remote \(k): \(c)")
                } else {
                    #expect(c.transmittedFrames == UInt64(5 * n), "remote \(k) after \(n) batches: \(c.transmittedFrames)")
                }
            }
        }
        #expect(socket.sent.count == 3 * 5 * 40 - 3 * 5 * 3)
    }

    /// A peer that went away, its ICMP errors queued but their pending errno already taken by
    /// a send: the wake-up finds no datagram, and the errors are read all the same (left
    /// queued, poll reports POLLERR forever and the loop spins), with trains on and off.
    @Test(arguments: [false, true])
    func queuedErrorsAreReadEvenWhenNoDatagramWaits(trains: Bool) throws {
        let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"), trains: trains)
        let device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let lan = VirtualLAN(ports: 1)
        let remote = lan.engine.addPort(named: "r", on: device)
        let peer = FakeDatagramSocket.address("127.0.0.1:4790")
        try device.addPeer(peer, encapsulation: .vxlan, vni: Self.vni, as: remote)
        socket.reportsQueuedErrors = false
        socket.icmpErrors = Array(repeating: (peer, ECONNREFUSED), count: 300)
        let handled = try lan.engine.service(device, at: lan.clock.now)
        #expect(handled == 0)
        #expect(socket.icmpErrors.isEmpty, "got \(socket.icmpErrors.count) errors left queued, want 0")
        #expect(device.peer(of: remote)?.unreachable == 300 && device.statistics.unreachable == 300)
    }

    /// A batch without headroom: datagrams are read no earlier than each slot (they were read
    /// 8 bytes before it, into the previous slot's bytes or before the allocation: heap
    /// corruption, `free(): invalid size`); VXLAN and raw frames arrive whole, and so does the
    /// largest datagram that fits; one byte more is counted as truncated.
    @Test func aBatchWithoutHeadroomIsNeverWrittenBefore() throws {
        let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"))
        let device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let lan = VirtualLAN(ports: 1, headroom: 0)
        let vx = lan.engine.addPort(named: "vx", on: device), raw = lan.engine.addPort(named: "raw", on: device)
        try device.addPeer(FakeDatagramSocket.address("10.0.0.2:4789"), encapsulation: .vxlan, vni: Self.vni, as: vx)
        try device.addPeer(FakeDatagramSocket.address("10.0.0.3:5555"), encapsulation: .raw, vni: Self.vni, as: raw)
        let capacity = lan.engine.batch.frameCapacity
        let frames = (0..<10).map { k in FrameFactory.frame(to: .broadcast, from: FrameFactory.host(k + 1), payload: [UInt8](repeating: UInt8(k), count: 46 + k)) }
        let largest = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(50), payload: [UInt8](repeating: 7, count: capacity - 8 - 14))
        let tooLarge = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(51), payload: [UInt8](repeating: 7, count: capacity - 8 - 13))
        for (k, f) in frames.enumerated() {
            socket.inbound.append(k % 2 == 0 ? .init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: Self.vxlan(f))
                                             : .init(address: FakeDatagramSocket.address("10.0.0.3:5555"), bytes: f))
        }
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: Self.vxlan(largest)))
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: Self.vxlan(tooLarge)))
        for _ in 0..<5 { _ = try lan.engine.service(device, at: lan.clock.now) }
        let got = lan.transmitted(on: 0)
        #expect(got == frames, "got \(got.count) frames of \(got.map(\.count)) bytes, want \(frames.count)")
        // the largest datagram reached the bridge whole (which finds it over its 65,557-byte
        // frame limit); one byte more did not fit the slot
        let c = lan.bridge.counters(of: vx)
        #expect(c[.oversized] == 1 && c[.truncated] == 1, "\(c)")
    }

    /// A train of more datagrams than the batch has slots (8) is delivered over several
    /// receives, in order, none lost and nothing trapped.
    @Test func aTrainLongerThanTheBatchIsDeliveredWhole() throws {
        let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"), trains: true)
        let device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let lan = VirtualLAN(ports: 1)
        let port = lan.engine.addPort(named: "r", on: device)
        try device.addPeer(FakeDatagramSocket.address("10.0.0.2:4789"), encapsulation: .vxlan, vni: Self.vni, as: port)
        let frames = (0..<100).map { k in FrameFactory.frame(to: .broadcast, from: b, payload: [UInt8(k)] + [UInt8](repeating: 0, count: 45)) }
        let datagrams = frames.map { Self.vxlan($0) }
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: datagrams.flatMap { $0 }, segmentSize: datagrams[0].count))
        for _ in 0..<20 { _ = try lan.engine.service(device, at: lan.clock.now) }
        let got = lan.transmitted(on: 0)
        #expect(got == frames, "got \(got.count) frames, want the train's 100 in order")
        #expect(lan.bridge.counters(of: port).receivedFrames == 100 && device.statistics.trainsReceived == 1)
    }

    @Test func aRemovedPeerIsForgotten() throws {
        let remote = try addRemote("10.0.0.2:4789")
        lan.engine.removePort(remote)
        #expect(device.peer(of: remote) == nil)
        socket.inbound.append(.init(address: FakeDatagramSocket.address("10.0.0.2:4789"), bytes: Self.vxlan(FrameFactory.frame(to: a, from: b))))
        serve()
        #expect(lan.transmitted(on: 0).isEmpty && device.statistics.unknownSender == 1)
        // and the address can be a peer again
        try addRemote("10.0.0.2:4789")
    }
}
