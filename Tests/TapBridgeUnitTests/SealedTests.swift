import Crypto
import Foundation
import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDevices
import TapBridgeTestSupport
import Testing

/// `encap=sealed` over socket doubles, trains on and off: two hosts shake hands on the first
/// frame; what one seals the other opens; every datagram that was changed, cut, replayed,
/// sent back to its sender, redirected to a third host or sealed for another VNI gets its
/// own counter and delivers nothing; reordering inside the window is taken.
@Suite("Sealed remotes")
struct SealedTests {
    static let addressA = FakeDatagramSocket.address("10.0.0.1:4789"), addressB = FakeDatagramSocket.address("10.0.0.2:4789")
    static let addressC = FakeDatagramSocket.address("10.0.0.3:4789")
    static var identityA: SealedIdentity { SealedIdentity(privateKey: try! .init(rawRepresentation: [UInt8](repeating: 0x5a, count: 32))) }
    static var identityB: SealedIdentity { SealedIdentity(privateKey: try! .init(rawRepresentation: [UInt8](repeating: 0xa5, count: 32))) }
    static var identityC: SealedIdentity { SealedIdentity(privateKey: try! .init(rawRepresentation: [UInt8](repeating: 0x3c, count: 32))) }
    // (computed: each host gets its own identity object, whose index table and load meter are
    // its own, as in a bridge; tests run in parallel)
    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// One host: a one-port virtual LAN and a UDP device on a socket double, with sealed peers.
    final class Host {
        let lan = VirtualLAN(ports: 1)
        let socket: FakeDatagramSocket
        let device: UDPTunnelDevice
        let address: SocketAddress
        var ports: [SocketAddress: PortID] = [:]
        var clock: Int64 = 1_000_000_000_000
        var wall: Int64 = 1_800_000_000

        init(_ address: SocketAddress, trains: Bool) {
            self.address = address
            socket = FakeDatagramSocket(localAddress: address, trains: trains)
            device = UDPTunnelDevice(socket: socket, logger: SealedTests.quiet)
        }

        /// Adds `peer` at `address`, with this host's `identity`.
        @discardableResult
        func add(_ peer: SealedIdentity, at address: SocketAddress, identity: SealedIdentity, vni: VNI = VNI(9)!, psk: [UInt8]? = nil) throws -> SealedFormat {
            let port = lan.engine.addPort(named: "\(address)", on: device)
            ports[address] = port
            try device.addPeer(address, format: WireFormat(.sealed, vni: vni, keyring: SealedPeerKeys(identity: identity, peer: peer.publicKey, presharedKey: psk)), as: port)
            return format(of: address)
        }

        func format(of address: SocketAddress) -> SealedFormat { device.table[device.table.index(of: ports[address]!)!].format as! SealedFormat }

        /// Injects `frames` on the LAN (flooded to every peer); what the socket sent meanwhile.
        func send(_ frames: [[UInt8]], offloads: [FrameOffload] = []) -> [FakeDatagramSocket.Datagram] {
            let before = socket.sent.count
            for (k, f) in frames.enumerated() { lan.inject(f, on: 0, offload: k < offloads.count ? offloads[k] : .none) }
            lan.runUntilIdle()
            return Array(socket.sent.dropFirst(before))
        }

        /// Receives `datagrams` (from their `address`); the frames delivered to the LAN.
        func receive(_ datagrams: [FakeDatagramSocket.Datagram]) throws -> [[UInt8]] {
            _ = lan.transmitted(on: 0)  // (taking them clears them)
            socket.inbound = datagrams
            for _ in 0..<10 { _ = try lan.engine.service(device, at: lan.clock.now) }
            lan.runUntilIdle()
            return lan.transmitted(on: 0)
        }

        func drops(_ reason: DropReason, from address: SocketAddress) -> UInt64 { lan.bridge.counters(of: ports[address]!)[reason] }
        func allDrops(from address: SocketAddress) -> UInt64 { lan.bridge.counters(of: ports[address]!).totalDrops - drops(.linkDown, from: address) }
    }

    /// A and B, each naming the other, hands shaken.
    final class Pair {
        let a: Host, b: Host
        init(trains: Bool, shakeHands: Bool = true) throws {
            a = Host(SealedTests.addressA, trains: trains)
            b = Host(SealedTests.addressB, trains: trains)
            try a.add(SealedTests.identityB, at: SealedTests.addressB, identity: SealedTests.identityA)
            try b.add(SealedTests.identityA, at: SealedTests.addressA, identity: SealedTests.identityB)
            if shakeHands { try handshake() }
        }

        /// A's first frame starts the handshake (the frame is dropped: `link_down`); its
        /// messages are carried until both sides are quiet.
        func handshake() throws {
            _ = a.send([SealedTests.frame(0)])
            try carry()
        }

        /// Delivers what each sent to the other and was not carried yet, until neither sends more.
        func carry() throws {
            for _ in 0..<8 {
                let newA = a.socket.sent.dropFirst(carriedA).map { FakeDatagramSocket.Datagram(address: SealedTests.addressA, bytes: $0.bytes, segmentSize: $0.segmentSize) }
                carriedA = a.socket.sent.count
                if !newA.isEmpty { _ = try b.receive(newA) }
                let newB = b.socket.sent.dropFirst(carriedB).map { FakeDatagramSocket.Datagram(address: SealedTests.addressB, bytes: $0.bytes, segmentSize: $0.segmentSize) }
                carriedB = b.socket.sent.count
                if !newB.isEmpty { _ = try a.receive(newB) }
                if newA.isEmpty && newB.isEmpty { return }
            }
        }
        var carriedA = 0, carriedB = 0

        /// What A sends for `frames`, as B receives them (from A's address).
        func send(_ frames: [[UInt8]], offloads: [FrameOffload] = []) -> [FakeDatagramSocket.Datagram] {
            defer { carriedA = a.socket.sent.count }  // (the caller delivers these)
            return a.send(frames, offloads: offloads).map { .init(address: SealedTests.addressA, bytes: $0.bytes, segmentSize: $0.segmentSize) }
        }
        func receive(_ datagrams: [FakeDatagramSocket.Datagram]) throws -> [[UInt8]] { try b.receive(datagrams) }
        func drops(_ reason: DropReason) -> UInt64 { b.drops(reason, from: SealedTests.addressA) }
        var allDrops: UInt64 { b.allDrops(from: SealedTests.addressA) }
    }

    static func frame(_ n: UInt8) -> [UInt8] { FrameFactory.frame(to: .broadcast, from: FrameFactory.host(7), payload: [UInt8](repeating: n, count: 100)) }

    /// The first frame starts the handshake and is held, not lost: it leaves, sealed, as soon
    /// as the response arrives (and confirms the session to the responder, as a keepalive
    /// would). One round trip; no more handshakes after.
    @Test func theFirstFrameStartsAHandshakeAndArrivesOneRoundTripLater() throws {
        let pair = try Pair(trains: false, shakeHands: false)
        let first = pair.a.send([Self.frame(1)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        #expect(first.count == 1 && first[0].bytes.count == SealedMessage.initiationLength && first[0].bytes[0] == 1, "an initiation, not the frame")
        #expect(try pair.b.receive(first).isEmpty)
        let response = pair.b.socket.sent.map { FakeDatagramSocket.Datagram(address: Self.addressB, bytes: $0.bytes) }
        #expect(response.count == 1 && response[0].bytes.count == SealedMessage.responseLength)
        _ = try pair.a.receive(response)
        let held = Array(pair.a.socket.sent.dropFirst(1)).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        #expect(held.count == 1 && held[0].bytes[0] == 4, "the held frame, sealed")
        #expect(try pair.b.receive(held) == [Self.frame(1)])
        let a = pair.a.format(of: Self.addressB), b = pair.b.format(of: Self.addressA)
        #expect(a.statistics.initiationsSent == 1 && b.statistics.responsesSent == 1 && a.statistics.keepalivesSent == 0)
        #expect(a.current != nil && b.current != nil && b.next == nil, "the responder's session is confirmed by the held frame")
        // either side now sends at once, no handshake more
        #expect(try pair.receive(pair.send([Self.frame(2)])) == [Self.frame(2)])
        let back = pair.b.send([Self.frame(3)]).map { FakeDatagramSocket.Datagram(address: Self.addressB, bytes: $0.bytes) }
        #expect(try pair.a.receive(back) == [Self.frame(3)])
        #expect(a.statistics.initiationsSent == 1 && b.statistics.initiationsSent == 0)
    }

    /// With nothing held, the initiator confirms the session with a keepalive (an empty
    /// transport datagram), which delivers nothing.
    @Test func withNothingHeldAKeepaliveConfirmsTheSession() throws {
        let pair = try Pair(trains: false, shakeHands: false)
        let a = pair.a.format(of: Self.addressB), b = pair.b.format(of: Self.addressA)
        #expect(!a.readyToSend())
        try pair.carry()
        #expect(a.statistics.keepalivesSent == 1 && b.statistics.keepalivesReceived == 1 && b.current != nil && b.next == nil)
        #expect(pair.b.lan.transmitted(on: 0).isEmpty && pair.allDrops == 0)
    }

    @Test(arguments: [true, false])
    func framesAndSuperFramesArriveAsTheyLeftAndNoPlaintextTravels(trains: Bool) throws {
        let pair = try Pair(trains: trains)
        let (superFrame, offload) = FrameFactory.tcp(to: FrameFactory.host(9), from: FrameFactory.host(7), payload: 30_000, segmentSize: 1448)
        let datagrams = pair.send([Self.frame(1), superFrame], offloads: [.none, offload])
        #expect(pair.a.socket.sent.contains { $0.segmentSize > 0 } == trains)
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
        #expect(good.count == 1 && good[0].bytes.count == 16 + Self.frame(1).count + 16)
        var tampered = good[0]
        tampered.bytes[40] ^= 1
        #expect(try pair.receive([tampered]).isEmpty && pair.drops(.unauthenticated) == 1, "a changed byte")
        var header = good[0]
        header.bytes[12] ^= 0x80  // the counter: authenticated, so a forged one fails
        #expect(try pair.receive([header]).isEmpty && pair.drops(.unauthenticated) == 2, "a changed header")
        var cut = good[0]
        cut.bytes.removeLast(5)
        #expect(try pair.receive([cut]).isEmpty && pair.drops(.unauthenticated) == 3, "a truncated datagram")
        #expect(try pair.receive([.init(address: Self.addressA, bytes: Array(good[0].bytes.prefix(30)))]).isEmpty && pair.drops(.malformedEncapsulation) == 1, "shorter than header and tag")
        var type = good[0]
        type.bytes[0] = 9
        #expect(try pair.receive([type]).isEmpty && pair.drops(.malformedEncapsulation) == 2, "another message type")
        var index = good[0]
        index.bytes[5] ^= 0x40
        let b = pair.b.format(of: Self.addressA), checked = b.statistics.tagsChecked
        #expect(try pair.receive([index]).isEmpty && pair.drops(.unknownIndex) == 1, "an index of no session")
        #expect(b.statistics.tagsChecked == checked, "an unknown index costs no cipher work")
        // none of that moved the window: the good one is still taken, once
        #expect(try pair.receive(good) == [Self.frame(1)])
        #expect(try pair.receive(good).isEmpty && pair.drops(.replayed) == 1, "a replay")
        #expect(pair.drops(.unauthenticated) == 3 && pair.b.lan.bridge.counters(of: PortID(0)).transmittedFrames == 2, "the handshake's held frame and the good one")
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

    /// What A sent to B, sent back to A from B's address (its handshake and its frames): A
    /// opens none of it and learns no MAC behind B. Keys are per direction: nothing to check.
    @Test func aBridgeNeverOpensItsOwnDatagrams() throws {
        let pair = try Pair(trains: false, shakeHands: false)
        let initiation = pair.a.send([Self.frame(1)]).map { FakeDatagramSocket.Datagram(address: Self.addressB, bytes: $0.bytes) }
        #expect(try pair.a.receive(initiation).isEmpty && pair.a.drops(.badMAC1, from: Self.addressB) == 1, "its own initiation: mac1 is keyed by B's key")
        try pair.carry()
        let mine = pair.a.send([Self.frame(2), Self.frame(3)]).map { FakeDatagramSocket.Datagram(address: Self.addressB, bytes: $0.bytes) }
        #expect(mine.count == 2)
        #expect(try pair.a.receive(mine).isEmpty)
        #expect(pair.a.drops(.unknownIndex, from: Self.addressB) == 2, "they name B's session index, which is none of A's")
        #expect(pair.a.lan.bridge.table.learnedCount(on: pair.a.ports[Self.addressB]!) == 0, "A learned its own host behind B")
        // even if A's own index were B's (forced here), the tag would fail: another key
        let a = pair.a.format(of: Self.addressB)
        var forged = mine[0]
        forged.bytes.replaceSubrange(4..<8, with: withUnsafeBytes(of: a.current!.localIndex.littleEndian, Array.init))
        #expect(try pair.a.receive([forged]).isEmpty && pair.a.drops(.unauthenticated, from: Self.addressB) == 1)
    }

    /// C has its own key and names A as its peer too: what A sends B, delivered to C from A's
    /// address, gets nothing through C.
    @Test func aDatagramRedirectedToAThirdBridgeGetsNothing() throws {
        let pair = try Pair(trains: false, shakeHands: false)
        let c = Host(Self.addressC, trains: false)
        try c.add(Self.identityA, at: Self.addressA, identity: Self.identityC)
        let initiation = pair.a.send([Self.frame(1)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        #expect(try c.receive(initiation).isEmpty && c.drops(.badMAC1, from: Self.addressA) == 1 && c.socket.sent.isEmpty, "no response")
        try pair.carry()
        let frames = pair.send([Self.frame(2)])
        #expect(try c.receive(frames).isEmpty && c.drops(.unknownIndex, from: Self.addressA) == 1)
        #expect(c.lan.transmitted(on: 0).isEmpty)
    }

    /// A replayed initiation (the same timestamp, or an older one) is refused and changes no
    /// session; a newer one from the same host (a restart) is taken.
    @Test func aReplayedInitiationIsRefusedAndARestartIsHeard() throws {
        let pair = try Pair(trains: false, shakeHands: false)
        let initiation = pair.a.send([Self.frame(1)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        try pair.carry()
        let b = pair.b.format(of: Self.addressA)
        let session = b.current
        #expect(try pair.receive(initiation).isEmpty && pair.drops(.staleHandshake) == 1 && b.current === session && b.next == nil)
        #expect(b.statistics.responsesSent == 1)
        // A restarts: a new format, new ephemeral keys, a later timestamp
        let restarted = Host(Self.addressA, trains: false)
        try restarted.add(Self.identityB, at: Self.addressB, identity: Self.identityA)
        restarted.lan.clock.advance(by: .seconds(1))
        let old = pair.send([Self.frame(2)])
        let again = restarted.send([Self.frame(3)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        #expect(again.count == 1 && again[0].bytes[0] == 1)
        _ = try pair.receive(again)
        #expect(b.statistics.responsesSent == 2, "the restarted host's initiation is newer: taken")
        let response = pair.b.socket.sent.last!
        _ = try restarted.receive([.init(address: Self.addressB, bytes: response.bytes)])
        let keepalive = restarted.socket.sent.last!
        _ = try pair.receive([.init(address: Self.addressA, bytes: keepalive.bytes)])
        let fresh = restarted.send([Self.frame(2)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        // the same frame at the same counter (1, after the keepalive's 0) under old and new
        // sessions: another key, so other bytes (no key and nonce is used twice)
        #expect(fresh[0].bytes[8..<16] == old[0].bytes[8..<16] && fresh[0].bytes[16...] != old[0].bytes[16...])
        #expect(try pair.receive(fresh) == [Self.frame(2)])
        #expect(try pair.receive(old) == [Self.frame(2)], "the old session's datagrams still open (its previous session)")
    }

    /// A psk that differs between the two ends: the handshake fails, nothing is delivered.
    @Test func anotherPresharedKeyOrAnotherVNIGetsNothingThrough() throws {
        let a = Host(Self.addressA, trains: false), b = Host(Self.addressB, trains: false)
        try a.add(Self.identityB, at: Self.addressB, identity: Self.identityA, psk: [UInt8](repeating: 1, count: 32))
        try b.add(Self.identityA, at: Self.addressA, identity: Self.identityB, psk: [UInt8](repeating: 2, count: 32))
        let initiation = a.send([Self.frame(1)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        _ = try b.receive(initiation)
        let response = b.socket.sent.map { FakeDatagramSocket.Datagram(address: Self.addressB, bytes: $0.bytes) }
        #expect(try a.receive(response).isEmpty && a.drops(.unauthenticated, from: Self.addressB) == 1 && a.format(of: Self.addressB).current == nil)
        let pair = try Pair(trains: false)
        let other = Host(Self.addressB, trains: false)
        let wrongVNI = try other.add(Self.identityA, at: Self.addressA, identity: Self.identityB, vni: VNI(10)!)
        _ = wrongVNI
        #expect(try other.receive(pair.send([Self.frame(1)])).isEmpty && other.drops(.vniMismatch, from: Self.addressA) == 1)
    }

    @Test func keysAreBase64AndKeyFilesTheOwnersAlone() throws {
        let generated = SealedIdentity.generate()
        #expect(generated.count == 44 && generated != SealedIdentity.generate())
        let pub = try SealedIdentity.publicKey(ofKeyText: generated + "\n")
        #expect(try SealedKeyFile.publicKey(pub).count == 32)
        let path = "/tmp/tapbridge-key-\(getpid())", link = path + ".link"
        defer { unlink(path); unlink(link) }
        try SealedKeyFile.create(path, holding: generated + "\n")
        #expect(throws: StartupError.self) { try SealedKeyFile.create(path, holding: "x") }  // never overwritten
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(try SealedIdentity.loaded(file: path).publicKey == (try SealedKeyFile.publicKey(pub)))
        chmod(path, 0o644)
        do {
            _ = try SealedIdentity.loaded(file: path)
            Issue.record("a key file others can read was taken")
        } catch {
            #expect(error.message.contains("chmod 600") && error.message.contains("644"), "\(error.message)")
        }
        chmod(path, 0o600)
        symlink(path, link)
        #expect(throws: StartupError.self) { try SealedIdentity.loaded(file: link) }
        // a v1 key says what to do instead
        do {
            _ = try SealedKeyFile.publicKey(String(repeating: "5a", count: 32))
            Issue.record("a v1 key was taken")
        } catch {
            #expect(error.message.contains("sealed v1") && error.message.contains("tapbridge genkey"), "\(error.message)")
        }
        #expect(throws: StartupError.self) { try SealedKeyFile.publicKey("abc") }
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
