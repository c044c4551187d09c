import TapBridgeCore
@testable import TapBridgeDevices
import TapBridgeTestSupport
import Testing

/// Sealed remotes whose address changes (roaming), and a bridge under load of handshakes,
/// over the UDP device and socket doubles (the hosts and pairs of `SealedTests`).
extension SealedTests {
    /// Roaming: a peer's address follows its last authenticated datagram. From a new address,
    /// a datagram changed on the way or replayed moves nothing; the first intact one is
    /// delivered and the peer moves there (B's frames follow); a transport datagram under an
    /// index no session has costs one lookup and no tag; an initiation from a new address
    /// (the peer restarted elsewhere) is answered there.
    @Test(arguments: [false, true]) func aPeerMovesOnlyWhenADatagramAuthenticatesFromItsNewAddress(trains: Bool) throws {
        let pair = try Pair(trains: trains)
        let moved = FakeDatagramSocket.address("10.0.0.9:5000"), third = FakeDatagramSocket.address("10.0.0.10:5000")
        let port = pair.b.ports[Self.addressA]!
        let datagrams = pair.send([Self.frame(1), Self.frame(2)])
        var changed = datagrams[0]
        changed.address = moved
        changed.bytes[40] ^= 1
        #expect(try pair.b.receive([changed]).isEmpty && pair.drops(.unauthenticated) == 1)
        #expect(pair.b.device.peer(of: port)?.address == Self.addressA, "a datagram that does not authenticate moves nothing")
        var intact = datagrams[0]
        intact.address = moved
        #expect(try pair.b.receive([intact]) == [Self.frame(1)])
        #expect(pair.b.device.peer(of: port)?.address == moved && pair.b.device.statistics.peersMoved == 1)
        var replayed = intact
        replayed.address = third
        #expect(try pair.b.receive([replayed]).isEmpty && pair.drops(.replayed) == 1)
        #expect(pair.b.device.peer(of: port)?.address == moved, "a replayed datagram moves nothing")
        #expect(pair.b.send([Self.frame(3)]).allSatisfy { $0.address == moved }, "B's frames go to the new address")
        // an index no session has, from a stranger: one lookup, no tag checked
        let b = pair.b.format(of: Self.addressA)
        let tags = b.statistics.tagsChecked, unknown = pair.b.device.statistics.unknownSender
        var forged = datagrams[1]
        forged.address = third
        forged.bytes[4] ^= 0xff
        #expect(try pair.b.receive([forged]).isEmpty)
        #expect(b.statistics.tagsChecked == tags && pair.b.device.statistics.unknownSender == unknown + 1)
        // A starts again at a third address, sessions lost: its initiation is answered there
        let restarted = Host(third, trains: trains)
        try restarted.add(Self.identityB, at: Self.addressB, identity: Self.identityA)
        let initiation = restarted.send([Self.frame(4)]).map { FakeDatagramSocket.Datagram(address: third, bytes: $0.bytes) }
        #expect(initiation.count == 1 && initiation[0].bytes[0] == 1)
        let before = pair.b.socket.sent.count
        _ = try pair.b.receive(initiation)
        let response = Array(pair.b.socket.sent.dropFirst(before))
        #expect(response.count == 1 && response.first?.address == third && response.first?.bytes.count == SealedMessage.responseLength)
        #expect(pair.b.device.peer(of: port)?.address == third && pair.b.device.statistics.peersMoved == 2)
    }

    /// A bridge under load answers an initiation without mac2 with a cookie reply sent back to
    /// the address it came from, counted as `cookie_sent`; it reads no Noise message.
    @Test func underLoadTheCookieReplyGoesBackToTheSender() throws {
        let a = Host(Self.addressA, trains: false), b = Host(Self.addressB, trains: false)
        try a.add(Self.identityB, at: Self.addressB, identity: Self.identityA)
        let loaded = SealedIdentity(privateKey: try .init(rawRepresentation: [UInt8](repeating: 0xa5, count: 32)), loadThreshold: 0)
        let format = try b.add(Self.identityA, at: Self.addressA, identity: loaded)
        let initiation = a.send([Self.frame(1)]).map { FakeDatagramSocket.Datagram(address: Self.addressA, bytes: $0.bytes) }
        #expect(try b.receive(initiation).isEmpty)
        #expect(b.drops(.cookieSent, from: Self.addressA) == 1 && format.statistics.initiationsReceived == 0)
        let reply = try #require(b.socket.sent.last)
        #expect(b.socket.sent.count == 1 && reply.address == Self.addressA && reply.bytes.count == SealedMessage.cookieReplyLength)
        _ = try a.receive([FakeDatagramSocket.Datagram(address: Self.addressB, bytes: reply.bytes)])
        #expect(a.format(of: Self.addressB).statistics.cookieRepliesReceived == 1)
    }
}
