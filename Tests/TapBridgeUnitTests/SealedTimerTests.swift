import Crypto
import TapBridgeCore
@testable import TapBridgeDevices
import Testing

/// The sealed format's timers on a manual clock, two formats joined by hand (what each sends
/// the other is queued and delivered when the test says): WireGuard's rekey at 120 s (the
/// initiator; a responder at 150 s), no session past 180 s, a new handshake after 15 s of
/// sending unheard (a peer that restarted), a retry after 5 s, and a restart of either side.
@Suite("Sealed sessions over time")
struct SealedTimerTests {
    final class Link {
        var clock: Int64 = 1_000_000_000_000
        var wall: Int64 = 1_800_000_000
        var toB: [[UInt8]] = [], toA: [[UInt8]] = []
        var a: SealedFormat!, b: SealedFormat!

        /// `loadThreshold`: B's (0: every initiation finds it under load); `keepalive`: A's.
        init(loadThreshold: Int = 64, keepalive: Int? = nil) {
            let b = SealedIdentity(privateKey: try! .init(rawRepresentation: [UInt8](repeating: 0xa5, count: 32)), loadThreshold: loadThreshold)
            a = make(SealedTests.identityA, SealedTests.identityB, keepalive: keepalive) { [unowned self] in toB.append($0) }
            self.b = make(b, SealedTests.identityA) { [unowned self] in toA.append($0) }
        }

        func make(_ me: SealedIdentity, _ peer: SealedIdentity, keepalive: Int? = nil, _ out: @escaping ([UInt8]) -> Void) -> SealedFormat {
            let f = SealedFormat(keys: SealedPeerKeys(identity: me, peer: peer.publicKey, keepaliveSeconds: keepalive), vni: VNI(9)!, clock: { [unowned self] in clock },
                                 timestamp: { [unowned self] in SealedMessage.timestamp(seconds: wall + clock / 1_000_000_000, nanoseconds: Int32(clock % 1_000_000_000)) })
            f.connect { out(Array($0)) }
            return f
        }

        /// Restarts A (or B): a new format, the same keys, its clock going on.
        func restart(a restartA: Bool) {
            if restartA { a = make(SealedTests.identityA, SealedTests.identityB) { [unowned self] in toB.append($0) } }
            else { b = make(SealedTests.identityB, SealedTests.identityA) { [unowned self] in toA.append($0) } }
        }

        func advance(seconds: Double) { clock += Int64(seconds * 1e9) }

        /// Delivers what is queued, both ways, until neither sends more (a reply goes back to
        /// its sender); what each took. A's datagrams come from `sourceA`.
        @discardableResult
        func deliver(sourceA: [UInt8] = Link.sourceA) -> [OpenedKind] {
            var got: [OpenedKind] = []
            while !toB.isEmpty || !toA.isEmpty {
                let (forB, forA) = (toB, toA)
                (toB, toA) = ([], [])
                for m in forB {
                    got.append(Self.open(b, m, from: sourceA))
                    if case .reply(let bytes, _) = got.last! { toA.append(bytes) }
                }
                for m in forA { got.append(Self.open(a, m, from: Self.sourceB)) }
            }
            return got
        }
        static let sourceA = [UInt8](repeating: 0, count: 10) + [0xff, 0xff, 10, 0, 0, 1, 0x12, 0xb5]
        static let sourceB = [UInt8](repeating: 0, count: 10) + [0xff, 0xff, 10, 0, 0, 2, 0x12, 0xb5]

        enum OpenedKind: Equatable { case frame([UInt8]), consumed, drop(DropReason), reply([UInt8], DropReason) }
        static func open(_ f: SealedFormat, _ datagram: [UInt8], from source: [UInt8] = []) -> OpenedKind {
            var d = datagram
            return d.withUnsafeMutableBytes { b in
                source.withUnsafeBytes { source in
                    switch f.open(b, from: source) {
                    case .frame(let x): .frame(Array(x))
                    case .consumed: .consumed
                    case .drop(let r): .drop(r)
                    case .reply(let x, let r): .reply(Array(x), r)
                    }
                }
            }
        }

        /// `from` seals `frame` (it must have a session); the datagram.
        func seal(_ from: SealedFormat, _ frame: [UInt8]) -> [UInt8]? {
            guard from.readyToSend() else { return nil }
            var d = [UInt8](repeating: 0, count: 32 + frame.count)
            d.replaceSubrange(16..<16 + frame.count, with: frame)
            let n = d.withUnsafeMutableBytes { from.seal($0.baseAddress!, frameLength: frame.count) }
            return n == d.count ? d : nil
        }
    }

    static let frame = [UInt8](repeating: 0x42, count: 60)

    @Test func theInitiatorRenewsAt120SecondsAndNoSessionOutlives180() throws {
        let link = Link()
        #expect(!link.a.readyToSend())
        link.deliver()
        let first = try #require(link.a.current)
        /// Each side sends the other a frame, and it opens: both have heard the other now.
        func exchange() throws {
            #expect(Link.open(link.b, try #require(link.seal(link.a, Self.frame))) == .frame(Self.frame))
            #expect(Link.open(link.a, try #require(link.seal(link.b, Self.frame))) == .frame(Self.frame))
        }
        for _ in 0..<11 {  // (every 10 s: neither goes 15 s unheard)
            link.advance(seconds: 10)
            try exchange()
        }
        link.advance(seconds: 9)
        try exchange()
        // (B's passive keepalives, each 10 s after it last sent, are the only messages)
        link.toA.removeAll { $0.count == 32 }
        #expect(link.toB.isEmpty && link.toA.isEmpty, "no renewal before 120 s")
        link.advance(seconds: 2)
        let d = try #require(link.seal(link.a, Self.frame), "the old session still sends while the new handshake runs")
        _ = link.seal(link.b, Self.frame)
        link.toA.removeAll { $0.count == 32 }
        #expect(link.toB.count == 1 && link.toB[0][0] == 1 && link.toA.isEmpty, "an initiation at 121 s, from the initiator only")
        #expect(link.a.statistics.initiationsSent == 2 && link.b.statistics.initiationsSent == 0, "the responder does not renew at 120 s")
        link.deliver()
        #expect(link.a.current !== first && link.a.previous === first)
        #expect(Link.open(link.b, d) == .frame(Self.frame), "a datagram of the session before still opens")
        // no handshake answered for 180 s: nothing is sent
        link.advance(seconds: 181)
        #expect(link.seal(link.a, Self.frame) == nil && link.toB.count == 1, "a session older than 180 s sends nothing; a handshake starts")
        link.toB = []
        link.advance(seconds: 2)
        #expect(link.seal(link.a, Self.frame) == nil && link.toB.isEmpty, "no second initiation within 5 s")
        link.advance(seconds: 4)
        #expect(link.seal(link.a, Self.frame) == nil && link.toB.count == 1, "retried after 5 s")
        link.deliver()
        #expect(link.seal(link.a, Self.frame) != nil)
    }

    /// A sender that hears nothing authenticated for 15 s starts a handshake: a peer that
    /// restarted (and lost the session) is back then even if it only receives.
    @Test func fifteenSecondsUnheardStartAHandshakeAndARestartedResponderIsBack() throws {
        let link = Link()
        _ = link.a.readyToSend()
        link.deliver()
        link.restart(a: false)  // B restarts: A's session means nothing to it
        let lost = try #require(link.seal(link.a, Self.frame))
        #expect(Link.open(link.b, lost) == .drop(.unknownIndex))
        link.advance(seconds: 14)
        _ = link.seal(link.a, Self.frame)
        #expect(link.toB.isEmpty)
        link.advance(seconds: 2)
        let stillOld = try #require(link.seal(link.a, Self.frame))
        #expect(link.toB.count == 1 && link.toB[0][0] == 1, "16 s unheard: an initiation")
        link.deliver()
        let fresh = try #require(link.seal(link.a, Self.frame))
        #expect(Link.open(link.b, fresh) == .frame(Self.frame))
        #expect(Link.open(link.b, stillOld) == .drop(.unknownIndex))
        // the same frame at the same counter under the sessions before and after: other bytes
        #expect(stillOld[8..<16] != fresh[8..<16] || stillOld[16...] != fresh[16...])
    }

    /// A responder whose new session waits for the initiator's first datagram starts no
    /// handshake of its own (two would cross): it holds its frames and sends them once the
    /// initiator's datagram confirms the session.
    @Test func aResponderAwaitingConfirmationHoldsItsFramesAndStartsNoHandshake() throws {
        let link = Link()
        #expect(!link.a.readyToSend() && link.toB.count == 1)
        let initiation = link.toB.removeFirst()
        #expect(Link.open(link.b, initiation) == .consumed && link.toA.count == 1, "the response")
        #expect(!link.b.readyToSend() && link.b.hold(Self.frame))
        #expect(link.toA.count == 1 && link.b.statistics.initiationsSent == 0, "only the response went out")
        let got = link.deliver()  // response -> A, keepalive -> B (confirms), B's held frame -> A
        #expect(got.contains(.frame(Self.frame)) && link.b.statistics.initiationsSent == 0, "\(got)")
        link.advance(seconds: 6)
        #expect(link.b.readyToSend(), "its session is up")
    }

    /// The restarted side's first frame starts a handshake the other takes at once (a later
    /// timestamp); what the old session sent is refused by the new.
    @Test func aRestartedInitiatorIsHeardOnItsFirstFrame() throws {
        let link = Link()
        _ = link.a.readyToSend()
        link.deliver()
        let old = try #require(link.seal(link.a, Self.frame))
        #expect(Link.open(link.b, old) == .frame(Self.frame))
        link.restart(a: true)
        link.advance(seconds: 0.001)
        #expect(!link.a.readyToSend() && link.toB.count == 1)
        let got = link.deliver()
        #expect(got.contains(.consumed) && link.b.statistics.responsesSent == 2, "\(got) \(link.a.statistics) \(link.b.statistics)")
        let new = try #require(link.seal(link.a, Self.frame))
        #expect(old[8..<16] != new[8..<16] || old[16...] != new[16...], "a (key, nonce) pair used twice")
        #expect(Link.open(link.b, new) == .frame(Self.frame))
        #expect(Link.open(link.b, old) != .frame(Self.frame))
    }

    /// Under load, an initiation without a valid mac2 gets a cookie reply and nothing else: no
    /// Noise (no Diffie-Hellman), no session, no response. The cookie is bound to the
    /// sender's address: the initiator's retry 5 s later carries it in mac2 and is answered;
    /// the same initiation from another address, or a cookie reply changed on the way or
    /// for no handshake under way, changes nothing.
    @Test func underLoadAnInitiationCostsACookieReplyAndTheRetryWithItIsAnswered() throws {
        let link = Link(loadThreshold: 0)
        #expect(!link.a.readyToSend())
        let initiation = try #require(link.toB.first)
        link.toB = []
        guard case .reply(let reply, .cookieSent) = Link.open(link.b, initiation, from: Link.sourceA) else { Issue.record("no cookie reply"); return }
        #expect(reply.count == SealedMessage.cookieReplyLength && reply[0] == 3 && Array(reply[4..<8]) == Array(initiation[4..<8]))
        #expect(link.b.statistics.initiationsReceived == 0 && link.b.statistics.responsesSent == 0 && link.b.next == nil && link.toA.isEmpty,
                "no Noise message read, no response: nothing but two HMACs and the reply's encryption")
        // changed on the way: its tag fails; intact: taken, once
        var changed = reply
        changed[40] ^= 1
        #expect(Link.open(link.a, changed, from: Link.sourceB) == .drop(.unauthenticated))
        #expect(Link.open(link.a, reply, from: Link.sourceB) == .consumed, "the initiator takes the cookie")
        #expect(Link.open(link.a, reply, from: Link.sourceB) == .drop(.staleHandshake), "one cookie reply per initiation")
        #expect(link.b.statistics.cookieRepliesSent == 1 && link.a.statistics.cookieRepliesReceived == 1)
        #expect(link.a.readyToSend() == false && link.toB.isEmpty, "no retry before 5 s (WireGuard's REKEY_TIMEOUT)")
        link.advance(seconds: 5)
        #expect(!link.a.readyToSend())
        let retry = try #require(link.toB.first)
        #expect(retry[132...].contains { $0 != 0 }, "the retry carries mac2")
        // from another address the cookie is not its cookie: another reply, no handshake
        #expect({ if case .reply(_, .cookieSent) = Link.open(link.b, retry, from: Link.sourceB) { true } else { false } }())
        #expect(link.b.statistics.initiationsReceived == 0)
        link.deliver()
        #expect(link.b.statistics.initiationsReceived == 1 && link.b.statistics.responsesSent == 1)
        #expect(link.a.readyToSend(), "the session is up")
        #expect(Link.open(link.a, reply, from: Link.sourceB) == .drop(.staleHandshake), "a cookie reply for no handshake under way")
        #expect(link.b.statistics.cookieRepliesSent == 2, "the retry from another address got its own")
    }

    /// Not under load, mac2 is not looked at: an initiation is answered at once (the load
    /// meter counts initiations a second; 64 by default).
    @Test func belowTheLoadThresholdNoCookieIsAskedFor() throws {
        let link = Link(loadThreshold: 3)
        for k in 0..<3 {
            link.restart(a: true)
            link.advance(seconds: 0.1)
            #expect(!link.a.readyToSend())
            link.deliver()
            #expect(link.a.readyToSend() && link.b.statistics.cookieRepliesSent == 0, "handshake \(k + 1) of 3 in a second")
        }
        link.restart(a: true)
        #expect(!link.a.readyToSend())
        #expect(link.deliver().contains { if case .reply(_, .cookieSent) = $0 { true } else { false } }, "the fourth in the second finds it under load")
        link.advance(seconds: 2.5)
        link.restart(a: true)
        #expect(!link.a.readyToSend())
        link.deliver()
        #expect(link.a.readyToSend(), "a second after the burst, no cookie is asked for")
    }

    /// `keepalive=25`: a handshake at once, then an empty datagram whenever nothing was sent
    /// for 25 s; a frame sent puts the next one off.
    @Test func keepaliveSendsAnEmptyDatagramWhenNothingWasSentForThatLong() throws {
        let link = Link(keepalive: 25)
        let first = try #require(link.a.timer(now: link.clock))
        #expect(link.toB.count == 1 && link.toB[0][0] == 1, "no session: the timer starts a handshake")
        #expect(first == link.clock + 25_000_000_000)
        link.deliver()
        let sent = link.a.statistics.keepalivesSent
        link.advance(seconds: 10)
        #expect(Link.open(link.b, try #require(link.seal(link.a, Self.frame))) == .frame(Self.frame))
        link.advance(seconds: 15)
        #expect(link.a.timer(now: link.clock) == link.clock + 10_000_000_000 && link.toB.isEmpty, "a frame 15 s ago: nothing yet")
        link.advance(seconds: 10)
        #expect(link.a.timer(now: link.clock) == link.clock + 25_000_000_000)
        #expect(link.a.statistics.keepalivesSent == sent + 1 && link.toB.count == 1 && link.toB[0].count == 32)
        #expect(link.deliver() == [.consumed, .consumed], "A's keepalive, and B's passive one (B got a frame and had sent nothing): each opens to nothing")
        // keepalives alone renew the session as frames would: at 120 s, an initiation
        let session = try #require(link.a.current)
        for _ in 0..<4 {
            link.advance(seconds: 25)
            _ = link.a.timer(now: link.clock)
            link.deliver()
        }
        #expect(link.a.current !== session && link.a.statistics.initiationsSent == 2, "renewed with no frame sent")
        #expect(link.b.timer(now: link.clock) == nil, "without keepalive= a format has no timer")
    }

    /// A one-way flow: A sends a frame every 5 s and B never a frame. B answers with an empty
    /// datagram whenever it got a frame and had sent nothing for 10 s (WireGuard's passive
    /// keepalive), so A hears from B and starts no handshake every 15 s; the session renews
    /// at 120 s as any other.
    @Test func aOneWayFlowIsAnsweredWithPassiveKeepalivesAndStartsNoHandshakes() throws {
        let link = Link()
        _ = link.a.readyToSend()
        link.deliver()
        for _ in 0..<22 {  // 110 s
            link.advance(seconds: 5)
            #expect(Link.open(link.b, try #require(link.seal(link.a, Self.frame))) == .frame(Self.frame))
            link.deliver()
        }
        #expect(link.a.statistics.initiationsSent == 1, "no handshake for lack of an answer")
        #expect((10...12).contains(link.b.statistics.keepalivesSent), "one passive keepalive each 10 s: \(link.b.statistics.keepalivesSent)")
    }

    /// Under load, a valid cookie proves only that its sender receives at its address: from one
    /// IP address, at most a burst of 5 initiations go on to Noise, then 20 a second (WireGuard's
    /// rate limiter); the rest are `handshake_rate_limited`, before any Diffie-Hellman. Here the
    /// same initiation with its cookie, sent again and again: 5 reach the timestamp check (the
    /// first taken, the others stale), the sixth is limited; 0.1 s later, two more go on.
    @Test func underLoadOneAddressGetsAtMostTwentyInitiationsASecond() throws {
        let link = Link(loadThreshold: 0)
        _ = link.a.readyToSend()
        link.deliver()  // the cookie
        link.advance(seconds: 5)
        _ = link.a.readyToSend()
        let initiation = try #require(link.toB.first)
        link.toB = []
        var outcomes = (0..<6).map { _ in Link.open(link.b, initiation, from: Link.sourceA) }
        #expect(outcomes.filter { $0 == .drop(.staleHandshake) }.count == 4 && outcomes[5] == .drop(.handshakeRateLimited), "\(outcomes)")
        #expect(link.b.statistics.initiationsReceived == 1)
        link.advance(seconds: 0.1)
        outcomes = (0..<3).map { _ in Link.open(link.b, initiation, from: Link.sourceA) }
        #expect(outcomes == [.drop(.staleHandshake), .drop(.staleHandshake), .drop(.handshakeRateLimited)], "\(outcomes)")
        // another address has its own bucket (its cookie is another: a cookie reply, no limit spent)
        #expect({ if case .reply(_, .cookieSent) = Link.open(link.b, initiation, from: Link.sourceB) { true } else { false } }())
    }
}
