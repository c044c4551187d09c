import Crypto
import Foundation
import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDevices
import TapBridgeTestSupport
import Testing

/// `encap=sealed` over socket doubles, trains on and off: what one bridge seals the other
/// opens; every datagram that was changed, cut, replayed, sealed with another key or for
/// another VNI gets its own counter and delivers nothing; reordering inside the window is
/// taken; a restart never repeats a nonce and is heard at once.
@Suite("Sealed remotes")
struct SealedTests {
    static let addressA = FakeDatagramSocket.address("10.0.0.1:4789"), addressB = FakeDatagramSocket.address("10.0.0.2:4789")
    static let key = try! SealedKey(hex: String(repeating: "5a", count: 32))
    static let otherKey = try! SealedKey(hex: String(repeating: "a5", count: 32))

    /// One sending bridge (A) and one receiving bridge (B), each with its own key ring.
    final class Pair {
        let lanA = VirtualLAN(ports: 1), lanB = VirtualLAN(ports: 1)
        let socketA: FakeDatagramSocket, socketB: FakeDatagramSocket
        let deviceA: UDPTunnelDevice, deviceB: UDPTunnelDevice
        let portB: PortID

        init(trains: Bool, senderKey: SealedKey = SealedTests.key, receiverVNI: VNI = VNI(9)!, senderRing: SealedKeyring? = nil,
             receiverRing: SealedKeyring? = nil) throws {
            let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            socketA = FakeDatagramSocket(localAddress: SealedTests.addressA, trains: trains)
            socketB = FakeDatagramSocket(localAddress: SealedTests.addressB, trains: trains)
            deviceA = UDPTunnelDevice(socket: socketA, logger: quiet)
            deviceB = UDPTunnelDevice(socket: socketB, logger: quiet)
            let ringA = senderRing ?? SealedKeyring(key: senderKey)
            try deviceA.addPeer(SealedTests.addressB, format: WireFormat(.sealed, vni: VNI(9)!, keyring: ringA), as: lanA.engine.addPort(named: "b", on: deviceA))
            portB = lanB.engine.addPort(named: "a", on: deviceB)
            try deviceB.addPeer(SealedTests.addressA, format: WireFormat(.sealed, vni: receiverVNI, keyring: receiverRing ?? SealedKeyring(key: SealedTests.key)), as: portB)
        }

        /// What A sends for `frames` (each flooded to B), as B would receive them.
        func send(_ frames: [[UInt8]], offloads: [FrameOffload] = []) -> [FakeDatagramSocket.Datagram] {
            let before = socketA.sent.count
            for (k, f) in frames.enumerated() { lanA.inject(f, on: 0, offload: k < offloads.count ? offloads[k] : .none) }
            lanA.runUntilIdle()
            return socketA.sent.dropFirst(before).map { .init(address: SealedTests.addressA, bytes: $0.bytes, segmentSize: $0.segmentSize) }
        }

        /// B receives `datagrams`; the frames it delivers.
        func receive(_ datagrams: [FakeDatagramSocket.Datagram]) throws -> [[UInt8]] {
            _ = lanB.transmitted(on: 0)  // (taking them clears them)
            socketB.inbound = datagrams
            for _ in 0..<10 { _ = try lanB.engine.service(deviceB, at: lanB.clock.now) }
            lanB.runUntilIdle()
            return lanB.transmitted(on: 0)
        }

        func drops(_ reason: DropReason) -> UInt64 { lanB.bridge.counters(of: portB)[reason] }
        var allDrops: UInt64 { lanB.bridge.counters(of: portB).totalDrops }
    }

    static func frame(_ n: UInt8) -> [UInt8] { FrameFactory.frame(to: .broadcast, from: FrameFactory.host(7), payload: [UInt8](repeating: n, count: 100)) }

    @Test(arguments: [true, false])
    func framesAndSuperFramesArriveAsTheyLeftAndNoPlaintextTravels(trains: Bool) throws {
        let pair = try Pair(trains: trains)
        let (superFrame, offload) = FrameFactory.tcp(to: FrameFactory.host(9), from: FrameFactory.host(7), payload: 30_000, segmentSize: 1448)
        let datagrams = pair.send([Self.frame(1), superFrame], offloads: [.none, offload])
        #expect(pair.socketA.sent.contains { $0.segmentSize > 0 } == trains)
        // the frame's bytes (its MACs, its payload) appear nowhere on the wire
        let wire = datagrams.flatMap(\.bytes)
        #expect(!wire.contains(subsequence: Array(Self.frame(1).suffix(40))) && !wire.contains(subsequence: Array(superFrame[54..<94])), "plaintext on the wire")
        let got = try pair.receive(datagrams)
        #expect(got.first == Self.frame(1))
        let payload = got.dropFirst().flatMap { $0.dropFirst(54) }
        #expect(payload == Array(superFrame.dropFirst(54)), "the super-frame's payload: got \(payload.count) bytes, want 30000")
        #expect(got.dropFirst().allSatisfy { f in f.withUnsafeBytes { OffloadFinisher.verifiesChecksum($0) } == true })
        #expect(pair.allDrops == 0)
    }

    /// Each kind of bad datagram: its counter, and nothing delivered.
    @Test(arguments: [true, false])
    func everyBadDatagramGetsItsCounterAndDeliversNothing(trains: Bool) throws {
        let pair = try Pair(trains: trains)
        let good = pair.send([Self.frame(1)])
        #expect(good.count == 1 && good[0].bytes.count == 24 + Self.frame(1).count + 16)
        var tampered = good[0]
        tampered.bytes[40] ^= 1
        #expect(try pair.receive([tampered]).isEmpty && pair.drops(.unauthenticated) == 1, "a changed byte")
        var header = good[0]
        header.bytes[20] ^= 0x80  // the counter: authenticated, so a forged one fails
        #expect(try pair.receive([header]).isEmpty && pair.drops(.unauthenticated) == 2, "a changed header")
        var cut = good[0]
        cut.bytes.removeLast(5)
        #expect(try pair.receive([cut]).isEmpty && pair.drops(.unauthenticated) == 3, "a truncated datagram")
        #expect(try pair.receive([.init(address: Self.addressA, bytes: Array(good[0].bytes.prefix(30)))]).isEmpty && pair.drops(.malformedEncapsulation) == 1, "shorter than header and tag")
        var version = good[0]
        version.bytes[0] = 2
        #expect(try pair.receive([version]).isEmpty && pair.drops(.malformedEncapsulation) == 2, "another version")
        // none of that moved the window: the good one is still taken, once
        #expect(try pair.receive(good) == [Self.frame(1)])
        #expect(try pair.receive(good).isEmpty && pair.drops(.replayed) == 1, "a replay")
        #expect(pair.drops(.unauthenticated) == 3 && pair.lanB.bridge.counters(of: PortID(0)).transmittedFrames == 1)
    }

    @Test(arguments: [true, false])
    func reorderingInsideTheWindowIsTakenAndBelowItIsNot(trains: Bool) throws {
        let pair = try Pair(trains: trains)
        let frames = (0..<5).map { Self.frame(UInt8($0)) }
        let datagrams = frames.flatMap { pair.send([$0]) }
        #expect(try pair.receive([datagrams[4], datagrams[2], datagrams[3], datagrams[0], datagrams[1]]) == [frames[4], frames[2], frames[3], frames[0], frames[1]])
        #expect(pair.allDrops == 0)
        // a window's width later, the first ones are too old even unseen (frames that differ:
        // one frame flooded again and again from one port is taken for a loop, `EchoWatch`)
        let old = pair.send([Self.frame(9)])
        for k in 0..<Int(ReplayWindow.size) { _ = pair.send([Self.frame(UInt8(truncatingIfNeeded: 10 + k % 200))]) }
        let last = pair.send([Self.frame(7)])
        #expect(try pair.receive(last) == [Self.frame(7)])
        #expect(try pair.receive(old).isEmpty && pair.drops(.replayed) == 1)
    }

    @Test func anotherKeyOrAnotherVNIGetsNothingThrough() throws {
        let wrongKey = try Pair(trains: false, senderKey: Self.otherKey)
        #expect(try wrongKey.receive(wrongKey.send([Self.frame(1)])).isEmpty && wrongKey.drops(.unauthenticated) == 1)
        // said, not only counted: the remote is refusing, with why, until a datagram authenticates
        let refusing = try #require(wrongKey.deviceB.peer(of: wrongKey.portB))
        #expect(refusing.refusing == 1 && refusing.unreachableReason?.contains("do not authenticate") == true, "\(refusing)")
        let right = try Pair(trains: false)
        let good = right.send([Self.frame(2)])
        _ = try wrongKey.receive(good)  // (B's key is the right one: the same key ring as `right`'s receiver holds)
        #expect(wrongKey.deviceB.peer(of: wrongKey.portB)?.refusing == 0 && wrongKey.deviceB.refusingPeers == 0, "\(String(describing: wrongKey.deviceB.peer(of: wrongKey.portB)))")
        let wrongVNI = try Pair(trains: false, receiverVNI: VNI(10)!)
        #expect(try wrongVNI.receive(wrongVNI.send([Self.frame(1)])).isEmpty && wrongVNI.drops(.vniMismatch) == 1)
    }

    /// The in-place cipher (BoringSSL's AEAD context) is ChaCha20-Poly1305 exactly as
    /// swift-crypto's `ChaChaPoly` computes it, with the format's nonce (4 zero bytes and the
    /// counter) and the 24 header bytes authenticated: what one seals the other opens, both
    /// ways, so bridges of either build understand each other.
    @Test(arguments: [0, 1, 100, 1418, 9000])
    func theInPlaceCipherIsSwiftCryptosChaChaPoly(length: Int) throws {
        let ring = SealedKeyring(key: Self.key, clock: { 1_800_000_000 }, random: { 77 })
        let format = SealedFormat(keyring: ring, vni: VNI(9)!)
        let frame = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        for _ in 0..<3 { _ = ring.nextSend() }  // a counter that is not 0
        var datagram = [UInt8](repeating: 0, count: Sealed.headerLength + length + Sealed.tagLength)
        datagram.replaceSubrange(Sealed.headerLength..<Sealed.headerLength + length, with: frame)
        let n = datagram.withUnsafeMutableBytes { format.seal($0.baseAddress!, frameLength: length) }
        #expect(n == datagram.count)
        let session = UInt64(bigEndian: datagram.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) })
        let counter = Array(datagram[16..<24])
        #expect(counter == [0, 0, 0, 0, 0, 0, 0, 3])
        let nonce = try ChaChaPoly.Nonce(data: [0, 0, 0, 0] + counter)
        let sessionKey = Self.key.sessionKey(session)
        let header = Array(datagram[0..<Sealed.headerLength])
        // sealed here, opened by swift-crypto
        let box = try ChaChaPoly.SealedBox(nonce: nonce, ciphertext: datagram[Sealed.headerLength..<Sealed.headerLength + length],
                                           tag: datagram[(Sealed.headerLength + length)...])
        #expect(try Array(ChaChaPoly.open(box, using: sessionKey, authenticating: header)) == frame)
        // sealed by swift-crypto, opened here (by a receiver with its own ring)
        let theirs = try ChaChaPoly.seal(frame.reversed(), using: sessionKey, nonce: nonce, authenticating: header)
        var datagram2 = header + Array(theirs.ciphertext) + Array(theirs.tag)
        let receiver = SealedFormat(keyring: SealedKeyring(key: Self.key, clock: { 1_800_000_000 }, random: { 78 }), vni: VNI(9)!)
        let opened: [UInt8]? = datagram2.withUnsafeMutableBytes { d in
            if case .frame(let f) = receiver.open(d) { return Array(f) }
            return nil
        }
        #expect(opened == frame.reversed())
        // one bit of the tag changed: refused
        datagram2[datagram2.count - 1] ^= 1
        let again = SealedFormat(keyring: SealedKeyring(key: Self.key, clock: { 1_800_000_000 }, random: { 79 }), vni: VNI(9)!)
        let refused = datagram2.withUnsafeMutableBytes { d -> Bool in
            if case .drop(.unauthenticated) = again.open(d) { return true }
            return false
        }
        #expect(refused)
    }

    /// A restart is a new session: its key is new, so its counter may start again; the
    /// receiver takes it at once, and refuses the old session's datagrams it has seen.
    @Test func aRestartNeverRepeatsANonceAndIsHeardAtOnce() throws {
        var randoms: [UInt32] = [7, 8]
        let second = UInt64(time(nil))
        let clock: () -> UInt64 = { second }
        let before = SealedKeyring(key: Self.key, clock: clock, random: { randoms.removeFirst() })
        let after = SealedKeyring(key: Self.key, clock: clock, random: { randoms.removeFirst() })  // the same second
        let pair = try Pair(trains: false, senderRing: before)
        let first = pair.send([Self.frame(1), Self.frame(2)])
        #expect(try pair.receive(first).count == 2)
        let restarted = try Pair(trains: false, senderRing: after)
        let again = restarted.send([Self.frame(3), Self.frame(4)])
        let nonces = (first + again).map { d in (Array(d.bytes[8..<16]), Array(d.bytes[16..<24])) }
        #expect(Set(nonces.map { $0.0 + $0.1 }).count == 4, "a (session, counter) pair repeated")
        #expect(first[0].bytes[16..<24] == again[0].bytes[16..<24], "both start at counter 0: only the session tells them apart")
        #expect(before.sendSession != after.sendSession, "a restart must start another session (another key)")
        // B (the one that heard the first session) hears the restarted sender at once
        #expect(try pair.receive(again) == [Self.frame(3), Self.frame(4)])
        #expect(try pair.receive(first).isEmpty && pair.drops(.replayed) == 2)
    }

    /// A session started longer ago than a receiver remembers sessions is refused whole, so
    /// a capture replayed after its session was forgotten delivers nothing either.
    @Test func aSessionOlderThanTheReceiverRemembersIsRefused() throws {
        var now = UInt64(time(nil))
        let ring = SealedKeyring(key: Self.key, clock: { now }, random: { 1 })
        let receiver = SealedKeyring(key: Self.key, clock: { now }, random: { 2 })
        let pair = try Pair(trains: false, senderRing: ring, receiverRing: receiver)
        let captured = pair.send([Self.frame(1)])
        now += Sealed.sessionMaximumAge + 1
        #expect(try pair.receive(captured).isEmpty && pair.drops(.replayed) == 1)
        // the sender itself moved on to a new session long before
        #expect(try pair.receive(pair.send([Self.frame(2)])) == [Self.frame(2)])
    }

    @Test func keysAreHexAndKeyFilesTheOwnersAlone() throws {
        let generated = SealedKey.generate()
        #expect(generated.count == 64 && generated.allSatisfy(\.isHexDigit) && generated != SealedKey.generate())
        _ = try SealedKey(hex: generated + "\n")
        #expect(throws: StartupError.self) { try SealedKey(hex: "abc") }
        #expect(throws: StartupError.self) { try SealedKey(hex: String(repeating: "zz", count: 32)) }
        let path = "/tmp/tapbridge-key-\(getpid())"
        defer { unlink(path) }
        #expect(FileManager.default.createFile(atPath: path, contents: Data((generated + "\n").utf8), attributes: [.posixPermissions: 0o644]))
        do {
            _ = try SealedKey(file: path)
            Issue.record("a key file others can read was taken")
        } catch {
            #expect(error.message.contains("chmod 600") && error.message.contains("644"), "\(error.message)")
        }
        chmod(path, 0o600)
        _ = try SealedKey(file: path)
    }

    @Test func theReplayWindowTakesEachCounterOnce() {
        var w = ReplayWindow()
        #expect(w.accept(5) && !w.accept(5) && w.accept(3) && !w.accept(3) && w.accept(6) && w.accept(4))
        #expect(w.accept(5 + ReplayWindow.size) && !w.accept(5) && !w.accept(6) && w.accept(7 + 1))  // 8 is inside the window, unseen
        #expect(w.accept(100_000) && !w.check(100_000 - ReplayWindow.size) && w.check(100_000 - ReplayWindow.size + 1))
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence: [UInt8]) -> Bool {
        guard !subsequence.isEmpty, subsequence.count <= count else { return false }
        return (0...(count - subsequence.count)).contains { Array(self[$0..<$0 + subsequence.count]) == subsequence }
    }
}
