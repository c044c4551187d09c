import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDevices
import TapBridgeTestSupport
import Testing

/// A remote's path MTU over the socket double, trains on and off: what leaves for a peer fits
/// its path (TCP is cut to fit, whatever segment size the sender chose); what cannot be cut
/// leaves whole for the kernel to fragment, counted; a smaller path reported by the network
/// (ICMP) or found when the kernel refuses a train is taken. No root, no network.
@Suite("Remote path MTU over a socket double")
struct RemotePathTests {
    static let peer = FakeDatagramSocket.address("10.0.0.2:4789")
    /// VXLAN over IPv4 on a 1500-byte path: datagrams of at most 1472 bytes (1500 - 20 - 8).
    static let largestDatagram = 1472

    let lan = VirtualLAN(ports: 1)
    let socket: FakeDatagramSocket
    let device: UDPTunnelDevice
    let remote: PortID

    init(trains: Bool = true, encapsulation: Encapsulation = .vxlan) throws {
        socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"), trains: trains)
        socket.pathMTUs[Self.peer] = 1500
        device = UDPTunnelDevice(socket: socket, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        remote = lan.engine.addPort(named: "r", on: device)
        try device.addPeer(Self.peer, encapsulation: encapsulation, vni: VNI(5)!, as: remote)
    }

    /// Every datagram sent (a train split at its segment size).
    var datagrams: [[UInt8]] {
        socket.sent.flatMap { d in
            d.segmentSize == 0 ? [d.bytes] : stride(from: 0, to: d.bytes.count, by: d.segmentSize).map { Array(d.bytes[$0..<min($0 + d.segmentSize, d.bytes.count)]) }
        }
    }

    /// The inner frames sent, their TCP payload reassembled in order, and whether every
    /// checksum verifies.
    func innerTCP(headerLength: Int = 54) -> (frames: [[UInt8]], payload: [UInt8], verified: Bool) {
        let frames = datagrams.map { Array($0.dropFirst(8)) }
        let payload = frames.flatMap { $0.dropFirst(headerLength) }
        return (frames, payload, frames.allSatisfy { f in f.withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true })
    }

    @Test(arguments: [true, false])
    func aTCPSuperFrameIsCutToThePeersPath(trains: Bool) throws {
        let t = try RemotePathTests(trains: trains)
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1500)
        // a sender behind a 9000-byte MTU: segments of 8948 bytes, each too big for the path
        let (frame, offload) = FrameFactory.tcp(payload: 30_000, segmentSize: 8948)
        t.lan.inject(frame, on: 0, offload: offload)
        t.lan.runUntilIdle()
        let sizes = t.datagrams.map(\.count)
        #expect(sizes.allSatisfy { $0 <= Self.largestDatagram }, "datagrams over the path: \(sizes.filter { $0 > Self.largestDatagram })")
        let inner = t.innerTCP()
        #expect(inner.payload == Array(frame.dropFirst(54)), "the payload did not arrive whole and in order")
        #expect(inner.verified, "a segment's checksum does not verify")
        // 30,000 bytes in segments of 1410 (1464 - 54)
        #expect(inner.frames.count == (30_000 + 1409) / 1410, "got \(inner.frames.count) segments")
        #expect(t.device.statistics.fragmented == 0 && t.socket.sent.contains { $0.segmentSize > 0 } == trains, "\(t.device.statistics)")
    }

    @Test func aPlainTCPFrameLargerThanThePathIsCutToo() throws {
        let t = try RemotePathTests()
        let (frame, _) = FrameFactory.tcp(payload: 8948)  // one jumbo segment, no offload state
        t.lan.inject(frame, on: 0)
        t.lan.runUntilIdle()
        let inner = t.innerTCP()
        #expect(t.datagrams.allSatisfy { $0.count <= Self.largestDatagram }, "\(t.datagrams.map(\.count))")
        #expect(inner.payload == Array(frame.dropFirst(54)) && inner.verified)
        #expect(t.device.statistics.fragmented == 0)
    }

    /// A frame that TCP cannot cut (here UDP; likewise a TCP frame whose checksum is wrong)
    /// leaves whole, counted on the peer and bridge-wide.
    @Test func whatCannotBeCutLeavesWholeAndIsCounted() throws {
        let t = try RemotePathTests()
        var udp = FrameFactory.tcp(payload: 2000).frame
        udp[23] = 17  // not TCP any more
        var corrupted = FrameFactory.tcp(payload: 2000).frame
        corrupted[100] ^= 0xFF
        for frame in [udp, corrupted] { t.lan.inject(frame, on: 0) }
        t.lan.runUntilIdle()
        #expect(t.datagrams.map { Array($0.dropFirst(8)) } == [udp, corrupted], "sent as they were")
        #expect(t.device.statistics.fragmented == 2 && t.device.peer(of: t.remote)?.fragmented == 2, "\(t.device.statistics)")
    }

    /// UDP super-frames are cut at their own segment size (each segment is a datagram of the
    /// sender's); segments larger than the path leave one per datagram, never in a train.
    @Test func udpSegmentsLargerThanThePathLeaveAloneAndAreCounted() throws {
        let t = try RemotePathTests()
        var (frame, _) = FrameFactory.tcp(payload: 6000)
        // rewrite into a UDP super-frame of 6,012 bytes: 4 datagrams of 1,500 (too big for the
        // path, one each) and one of 12 (fits)
        frame[23] = 17
        let l4 = 34
        frame[l4 + 4] = UInt8((frame.count - l4) >> 8)
        frame[l4 + 5] = UInt8((frame.count - l4) & 0xFF)
        let offload = FrameOffload(needsChecksum: false, segmentation: .udpL4, segmentSize: 1500, checksumStart: UInt16(l4), checksumOffset: 6)
        t.lan.inject(frame, on: 0, offload: offload)
        t.lan.runUntilIdle()
        #expect(t.socket.sent.count == 5 && t.socket.sent.allSatisfy { $0.segmentSize == 0 }, "\(t.socket.sent.map { ($0.bytes.count, $0.segmentSize) })")
        #expect(t.device.statistics.fragmented == 4, "\(t.device.statistics)")
    }

    /// What a router quotes of a datagram this bridge sent the peer: the VXLAN header of VNI
    /// 5, then an inner Ethernet header.
    static let quoteOfOurs: [UInt8] = [0x08, 0, 0, 0, 0, 0, 5, 0] + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]

    @Test func anICMPTooBigLowersThePathAndTheNextSegmentsFitIt() throws {
        let t = try RemotePathTests()
        t.socket.icmpQuotes[Self.peer] = Self.quoteOfOurs
        t.socket.icmpErrors = [(Self.peer, EMSGSIZE)]
        t.socket.reportedMTU = 1400
        _ = try t.lan.engine.service(t.device, at: t.lan.clock.now)
        let peer = try #require(t.device.peer(of: t.remote))
        #expect(peer.pathMTU == 1400 && !peer.isUnreachable && peer.unreachable == 0, "\(peer)")
        #expect(t.device.statistics.pathMTULowered == 1)
        let (frame, offload) = FrameFactory.tcp(payload: 10_000, segmentSize: 1448)
        t.lan.inject(frame, on: 0, offload: offload)
        t.lan.runUntilIdle()
        #expect(t.datagrams.allSatisfy { $0.count <= 1372 }, "\(t.datagrams.map(\.count))")
        #expect(t.innerTCP().payload == Array(frame.dropFirst(54)))
        // a larger MTU reported later is not taken: paths are raised only by measuring again
        t.socket.icmpQuotes[Self.peer] = Self.quoteOfOurs
        t.socket.icmpErrors = [(Self.peer, EMSGSIZE)]
        t.socket.reportedMTU = 1450
        _ = try t.lan.engine.service(t.device, at: t.lan.clock.now)
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1400)
    }

    /// One forged "fragmentation needed" (MTU 68) that quotes no datagram this bridge sent
    /// (another VNI, garbage, nothing at all) changes nothing; one that quotes ours lowers the
    /// path, which goes back to the route's after `--path-mtu-expiry`.
    @Test func aForgedICMPChangesNothingAndALoweredPathExpires() throws {
        let t = try RemotePathTests()
        t.socket.reportedMTU = 68
        for forged in [[UInt8](), Array(repeating: 0xAB, count: 40), [0x08, 0, 0, 0, 0, 0, 6, 0] + Array(Self.quoteOfOurs.dropFirst(8))] {
            t.socket.icmpQuotes[Self.peer] = forged
            t.socket.icmpErrors = [(Self.peer, EMSGSIZE)]
            _ = try t.lan.engine.service(t.device, at: t.lan.clock.now)
            #expect(t.device.peer(of: t.remote)?.pathMTU == 1500, "a forged quote \(forged.prefix(8)) lowered the path")
        }
        #expect(t.device.statistics.icmpUnverified == 3 && t.device.statistics.pathMTULowered == 0, "\(t.device.statistics)")
        #expect(t.device.nextPathRecheck(expiry: .seconds(600)) == nil)
        t.socket.icmpQuotes[Self.peer] = Self.quoteOfOurs
        t.socket.reportedMTU = 1400
        t.socket.icmpErrors = [(Self.peer, EMSGSIZE)]
        _ = try t.lan.engine.service(t.device, at: t.lan.clock.now)
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1400)
        var due = try #require(t.device.nextPathRecheck(expiry: .seconds(600)))
        t.device.recheckPaths(at: due - 1, expiry: .seconds(600))
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1400, "raised before its time")
        // the route still says 1400 (the kernel's entry lives on): kept, and looked at again later
        t.socket.pathMTUs[Self.peer] = 1400
        t.device.recheckPaths(at: due, expiry: .seconds(600))
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1400 && t.device.nextPathRecheck(expiry: .seconds(600)) == due + 600_000_000_000)
        t.socket.pathMTUs[Self.peer] = 1500
        due += 600_000_000_000
        t.device.recheckPaths(at: due, expiry: .seconds(600))
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1500 && t.device.statistics.pathMTURaised == 1, "\(t.device.statistics)")
        #expect(t.device.nextPathRecheck(expiry: .seconds(600)) == nil)
    }

    /// The kernel refuses a train as too large: the route's MTU shrank since the peer was
    /// added. The train leaves one datagram at a time, the peer's path is lowered, and trains
    /// go on (before, trains were turned off for every peer).
    @Test func aTrainRefusedForAShrunkPathLowersItAndTrainsGoOn() throws {
        let t = try RemotePathTests()
        t.socket.pathMTUs[Self.peer] = 1400
        t.socket.trainErrors[Self.peer] = EINVAL
        let (frame, offload) = FrameFactory.tcp(payload: 10_000, segmentSize: 1448)
        t.lan.inject(frame, on: 0, offload: offload)
        t.lan.runUntilIdle()
        #expect(t.innerTCP().payload == Array(frame.dropFirst(54)), "the refused train was not sent again whole")
        #expect(t.device.peer(of: t.remote)?.pathMTU == 1400 && t.device.sendsTrains, "\(t.device.statistics)")
        #expect(t.device.statistics.trainsRefused == 1 && t.lan.bridge.counters(of: t.remote).transmittedFrames == 8)
        // refused again with nothing smaller to find: UDP_SEGMENT is unusable, trains go off
        t.socket.trainErrors[Self.peer] = EIO
        t.lan.inject(frame, on: 0, offload: offload)
        t.lan.runUntilIdle()
        #expect(!t.device.sendsTrains && t.device.statistics.trainsRefused == 2)
    }

    /// A SYN crossing to the peer carries an MSS that fits its path; the frame the bridge
    /// forwarded elsewhere is not changed (the clamp works on the send queue's copy).
    @Test func aSYNToThePeerHasItsMSSClamped() throws {
        let t = try RemotePathTests()
        let syn = FrameFactory.bytes(hex: MSSClampTests.ipv4SYN)
        t.lan.inject(syn, on: 0)
        t.lan.runUntilIdle()
        let sent = try #require(t.datagrams.first)
        let inner = Array(sent.dropFirst(8))
        #expect(Int(inner[56]) << 8 | Int(inner[57]) == 1410, "MSS sent: \(Int(inner[56]) << 8 | Int(inner[57]))")
        #expect(inner.withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true)
    }
}

/// Every encapsulation through two UDP devices over socket doubles, trains on and off: what
/// one device sends for a frame and a TCP super-frame, the other, given those datagrams (a
/// train as one UDP_GRO message), turns back into the same frame and the same TCP payload.
@Suite("Encapsulations round-trip through two devices")
struct EncapsulationRoundTripTests {
    static let addressA = FakeDatagramSocket.address("10.0.0.1:4789"), addressB = FakeDatagramSocket.address("10.0.0.2:4789")

    /// Every encapsulation that needs no key (sealed ones shake hands first: SealedTests
    /// carries frames and super-frames through them, trains on and off).
    static func arguments() -> [(Encapsulation, Bool)] { Encapsulations.all.filter { !$0.needsKey }.map { $0.encapsulation }.flatMap { e in [(e, true), (e, false)] } }

    @Test(arguments: arguments())
    func framesAndSuperFramesArriveAsTheyLeft(_ encapsulation: Encapsulation, trains: Bool) throws {
        let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let (lanA, lanB) = (VirtualLAN(ports: 1), VirtualLAN(ports: 1))
        let (socketA, socketB) = (FakeDatagramSocket(localAddress: Self.addressA, trains: trains), FakeDatagramSocket(localAddress: Self.addressB, trains: trains))
        let (deviceA, deviceB) = (UDPTunnelDevice(socket: socketA, logger: quiet), UDPTunnelDevice(socket: socketB, logger: quiet))
        func format() throws -> WireFormat { try WireFormat(encapsulation, vni: VNI(9)!) }
        try deviceA.addPeer(Self.addressB, format: format(), as: lanA.engine.addPort(named: "b", on: deviceA))
        try deviceB.addPeer(Self.addressA, format: format(), as: lanB.engine.addPort(named: "a", on: deviceB))
        let plain = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(7))
        let (superFrame, offload) = FrameFactory.tcp(to: FrameFactory.host(9), from: FrameFactory.host(7), payload: 30_000, segmentSize: 1448)
        lanA.inject(plain, on: 0)
        lanA.inject(superFrame, on: 0, offload: offload)
        lanA.runUntilIdle()
        #expect(socketA.sent.contains { $0.segmentSize > 0 } == trains, "trains sent: \(socketA.sent.map(\.segmentSize))")
        socketB.inbound = socketA.sent.map { .init(address: Self.addressA, bytes: $0.bytes, segmentSize: $0.segmentSize) }
        for _ in 0..<10 { _ = try lanB.engine.service(deviceB, at: lanB.clock.now) }
        lanB.runUntilIdle()
        let got = lanB.transmitted(on: 0)
        #expect(got.first == plain, "the plain frame: got \(got.first.map { hexString($0.prefix(20)) } ?? "nothing")")
        let payload = got.dropFirst().flatMap { $0.dropFirst(54) }
        #expect(payload == Array(superFrame.dropFirst(54)), "the super-frame's payload: got \(payload.count) bytes, want 30000")
        #expect(got.dropFirst().allSatisfy { f in f.withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true })
        #expect(lanB.bridge.counters(of: lanB.engine.port(named: "a")!).drops.allSatisfy { $0 == 0 }, "\(lanB.bridge.counters(of: lanB.engine.port(named: "a")!))")
    }
}

/// A wake-up that brings one datagram costs one read of the socket: the device says it found
/// the socket empty (fewer messages than it asked for), and the engine does not ask again
/// before the next poll (it used to: a second read that found nothing, and for the UDP socket a
/// read of its error queue after it).
@Suite("Reads per wake-up")
struct ReadsPerWakeUpTests {
    @Test(arguments: [true, false])
    func oneDatagramIsOneRead(trains: Bool) throws {
        let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let lan = VirtualLAN(ports: 1)
        let socket = FakeDatagramSocket(localAddress: FakeDatagramSocket.address("127.0.0.1:4789"), trains: trains)
        let device = UDPTunnelDevice(socket: socket, logger: quiet)
        let peer = FakeDatagramSocket.address("10.0.0.2:4789")
        try device.addPeer(peer, encapsulation: .raw, vni: VNI(1)!, as: lan.engine.addPort(named: "r", on: device))
        socket.inbound = [.init(address: peer, bytes: FrameFactory.frame(to: .broadcast, from: FrameFactory.host(3)))]
        _ = try lan.engine.service(device, at: lan.clock.now)
        #expect(lan.transmitted(on: 0).count == 1)
        #expect(socket.receiveCalls == 1, "got \(socket.receiveCalls) reads of the socket for one datagram, want 1")
        // a wake-up with nothing to read (POLLERR: an ICMP error) still reads, once
        _ = try lan.engine.service(device, at: lan.clock.now)
        #expect(socket.receiveCalls == 2)
    }
}

/// A golden SYN (scapy), MSS 1460, for tests here.
enum MSSClampTests {
    static let ipv4SYN = "02000000000202000000000108004500003c00070000400666b30a0000010a0000029c401451000003e800000000a002faf084920000020405b40402080a000000010000000001030307"
}
