import Crypto
import TapBridgeCore

/// The handshake of `encap=sealed`: WireGuard's initiation and response around Noise IKpsk2.
extension SealedFormat {
    /// Sends an initiation unless one was sent less than 5 s ago (its response may be on its
    /// way; WireGuard's REKEY_TIMEOUT).
    func initiate(_ now: Int64) {
        if next != nil, let responded, now &- responded < Self.rekeyTimeout { return }  // (its confirmation is on its way)
        if let pending {
            if now &- pending.sent < Self.rekeyTimeout { return }
            held.removeAll()  // (the last handshake went unanswered: what it held is stale)
        }
        guard let send else { return }
        var initiator = Noise.Initiator(prologue: SealedMessage.prologue, staticKey: keys.identity.privateKey, responderStatic: keys.peer,
                                        presharedKey: keys.presharedKey)
        guard let body = initiator.writeInitiation(payload: timestamp(), staticStatic: keys.staticStatic) else { return }  // (a low-order peer key: refused at parse)
        let index = freshIndex()
        var message = [SealedMessage.initiation, 0, 0, 0, 0, 0, 0, 0] + body + [UInt8](repeating: 0, count: 2 * SealedMessage.macLength)
        SealedMessage.store(index, into: &message, at: 4)
        // mac2 with the peer's cookie while it is fresh (the peer renews its secret every 2 min)
        let fresh = cookie.flatMap { now &- $0.received < SealedDirectory.secretLifetime ? $0.value : nil }
        lastMAC1 = SealedMessage.writeMACs(&message, key: keys.peerMAC1Key, cookie: fresh)
        pending = (index, initiator, now)
        reindex()
        statistics.initiationsSent &+= 1
        message.withUnsafeBytes { send($0) }
    }

    /// A random index that no session of this identity has (the receiver finds a session by
    /// it, whichever remote it came from).
    func freshIndex() -> UInt32 {
        while true {
            let i = UInt32.random(in: 1 ... .max)
            if session(i) == nil && i != pending?.index && keys.identity.directory.isFree(i) { return i }
        }
    }

    /// An initiation, a response or a cookie reply from the peer (sent from `source`); any
    /// other type is `malformed_encapsulation`.
    func openHandshake(_ datagram: UnsafeMutableRawBufferPointer, from source: UnsafeRawBufferPointer) -> OpenedDatagram {
        let bytes = UnsafeRawBufferPointer(datagram)
        guard bytes[1] | bytes[2] | bytes[3] == 0 else { return .drop(.malformedEncapsulation) }
        switch bytes[0] {
        case SealedMessage.initiation where bytes.count == SealedMessage.initiationLength: return takeInitiation(bytes, from: source)
        case SealedMessage.response where bytes.count == SealedMessage.responseLength: return takeResponse(bytes)
        case SealedMessage.cookieReply where bytes.count == SealedMessage.cookieReplyLength: return takeCookieReply(bytes)
        default: return .drop(.malformedEncapsulation)
        }
    }

    /// Responder: mac1 (one HMAC: a sender that does not know this host's public key gets no
    /// further); under load, mac2 keyed by the cookie of `source` (one more HMAC), and without
    /// it a cookie reply and nothing else, and with it at most 20 a second from one IP
    /// address (a burst of 5); the Noise message (it must come from `peer=`'s
    /// key); a timestamp newer than the last taken (a replayed initiation is refused); then
    /// the response, and a new session that waits for the initiator's first datagram.
    func takeInitiation(_ bytes: UnsafeRawBufferPointer, from source: UnsafeRawBufferPointer) -> OpenedDatagram {
        guard SealedMessage.hasValidMAC1(bytes, key: keys.identity.mac1Key) else { return .drop(.badMAC1) }
        let directory = keys.identity.directory
        let arrived = clock()
        if directory.noteInitiation(at: arrived) {
            let cookie = directory.cookie(of: source, at: arrived)
            guard SealedMessage.hasValidMAC2(bytes, cookie: cookie) else { return cookieReply(to: bytes, cookie: cookie) }
            // (a cookie proves the sender receives at its address, not that it is the peer)
            guard directory.allows(source, at: arrived) else { return .drop(.handshakeRateLimited) }
        }
        var responder = Noise.Responder(prologue: SealedMessage.prologue, staticKey: keys.identity.privateKey)
        // (another key than peer='s is refused before the second Diffie-Hellman)
        let noise = Array(bytes[8..<116])
        guard responder.readInitiatorStatic(noise) == keys.peer, let stamp = responder.finishInitiation(noise, staticStatic: keys.staticStatic),
              stamp.count == 12 else { return .drop(.unauthenticated) }
        guard stamp.lexicographicallyPrecedes(greatestTimestamp) == false, stamp != greatestTimestamp else { return .drop(.staleHandshake) }
        greatestTimestamp = stamp
        statistics.initiationsReceived &+= 1
        guard let body = responder.writeResponse(payload: [], presharedKey: keys.presharedKey), let send else { return .consumed }
        let index = freshIndex(), theirs = SealedMessage.load32(bytes, at: 4)
        var message = [SealedMessage.response, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] + body + [UInt8](repeating: 0, count: 2 * SealedMessage.macLength)
        SealedMessage.store(index, into: &message, at: 4)
        SealedMessage.store(theirs, into: &message, at: 8)
        SealedMessage.writeMACs(&message, key: keys.peerMAC1Key)
        let (toResponder, toInitiator) = responder.state.split()
        let now = clock()
        next = Session(localIndex: index, remoteIndex: theirs, sendKey: toInitiator, receiveKey: toResponder, created: now, isInitiator: false)
        reindex()
        lastHandshake = now
        lastAuthenticated = now
        responded = now
        statistics.responsesSent &+= 1
        message.withUnsafeBytes { send($0) }
        return .consumed
    }

    /// Initiator: mac1; the response must name the handshake under way (else
    /// `stale_handshake`); the Noise message; then the session is the one frames go in, and a
    /// keepalive confirms it to the responder at once.
    func takeResponse(_ bytes: UnsafeRawBufferPointer) -> OpenedDatagram {
        guard SealedMessage.hasValidMAC1(bytes, key: keys.identity.mac1Key) else { return .drop(.badMAC1) }
        guard let (index, started, _) = pending, SealedMessage.load32(bytes, at: 8) == index else { return .drop(.staleHandshake) }
        var initiator = started
        guard initiator.readResponse(Array(bytes[12..<60])) != nil else { return .drop(.unauthenticated) }
        pending = nil
        let (toResponder, toInitiator) = initiator.state.split()
        let now = clock()
        let s = Session(localIndex: index, remoteIndex: SealedMessage.load32(bytes, at: 4), sendKey: toResponder, receiveKey: toInitiator,
                        created: now, isInitiator: true)
        previous = current
        current = s
        reindex()
        lastHandshake = now
        lastAuthenticated = now
        statistics.responsesReceived &+= 1
        if held.isEmpty { sendKeepalive() } else { sendHeld() }  // (either confirms the session to the responder)
        return .consumed
    }

    /// The cookie reply to an initiation taken under load without a valid mac2: the cookie
    /// of its source, encrypted under this host's cookie key (XChaCha20-Poly1305, a random
    /// nonce) with the initiation's mac1 as associated data, so that only who sent that
    /// initiation (and can receive at its address) can use it. 64 bytes for 148: no
    /// amplification. `.reply` sends it back to the source, whatever the peer's address.
    func cookieReply(to initiation: UnsafeRawBufferPointer, cookie: [UInt8]) -> OpenedDatagram {
        let mac1At = SealedMessage.initiationLength - 2 * SealedMessage.macLength
        var rng = SystemRandomNumberGenerator()
        let nonce = (0..<3).flatMap { _ in withUnsafeBytes(of: rng.next() as UInt64) { Array($0) } }
        let sealed = keys.identity.cookieCipher.seal(cookie, nonce: nonce, ad: Array(initiation[mac1At..<(mac1At + SealedMessage.macLength)]))
        let message = [SealedMessage.cookieReply, 0, 0, 0] + Array(initiation[4..<8]) + nonce + sealed
        replyBuffer.copyBytes(from: message)
        statistics.cookieRepliesSent &+= 1
        return .reply(UnsafeRawBufferPointer(replyBuffer), counted: .cookieSent)
    }

    /// Initiator: a cookie reply to the handshake under way (else `stale_handshake`), which
    /// must decrypt under the peer's cookie key with that initiation's mac1; the cookie goes in
    /// mac2 of the next initiations (the next is the retry, 5 s later, as WireGuard).
    func takeCookieReply(_ bytes: UnsafeRawBufferPointer) -> OpenedDatagram {
        guard let pending, SealedMessage.load32(bytes, at: 4) == pending.index else { return .drop(.staleHandshake) }
        guard !lastMAC1.isEmpty else { return .drop(.staleHandshake) }  // (one cookie reply per initiation, as wireguard-go)
        guard let value = keys.peerCookieCipher.open(Array(bytes[32..<64]), nonce: Array(bytes[8..<32]), ad: lastMAC1), value.count == SealedMessage.macLength
        else { return .drop(.unauthenticated) }
        cookie = (value, clock())
        lastMAC1 = []
        statistics.cookieRepliesReceived &+= 1
        return .consumed
    }

    /// An empty transport datagram in the current session.
    func sendKeepalive() {
        sealing = usable(current, clock())
        guard send != nil, sealing != nil else { return }
        statistics.keepalivesSent &+= 1
        sendSealed([])
    }
}
