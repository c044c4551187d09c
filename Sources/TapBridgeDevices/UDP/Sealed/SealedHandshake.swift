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
        guard let body = initiator.writeInitiation(payload: timestamp()) else { return }  // (a low-order peer key: refused at parse)
        let index = freshIndex()
        var message = [SealedMessage.initiation, 0, 0, 0, 0, 0, 0, 0] + body + [UInt8](repeating: 0, count: 2 * SealedMessage.macLength)
        SealedMessage.store(index, into: &message, at: 4)
        SealedMessage.writeMACs(&message, key: keys.peerMAC1Key)
        pending = (index, initiator, now)
        statistics.initiationsSent &+= 1
        message.withUnsafeBytes { send($0) }
    }

    /// A random index that none of this peer's sessions has (the receiver finds a session by it).
    func freshIndex() -> UInt32 {
        while true {
            let i = UInt32.random(in: 1 ... .max)
            if session(i) == nil && i != pending?.index { return i }
        }
    }

    /// An initiation or a response from the peer (a cookie reply, not implemented yet, is
    /// `malformed_encapsulation`, as any other type).
    func openHandshake(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram {
        let bytes = UnsafeRawBufferPointer(datagram)
        switch bytes[0] {
        case SealedMessage.initiation where bytes.count == SealedMessage.initiationLength && bytes[1] | bytes[2] | bytes[3] == 0:
            return takeInitiation(bytes)
        case SealedMessage.response where bytes.count == SealedMessage.responseLength && bytes[1] | bytes[2] | bytes[3] == 0:
            return takeResponse(bytes)
        default:
            return .drop(.malformedEncapsulation)
        }
    }

    /// Responder: mac1 (one HMAC: a sender that does not know this host's public key gets no
    /// further); the Noise message (it must come from `peer=`'s key); a timestamp newer than
    /// the last taken (a replayed initiation is refused); then the response, and a new session
    /// that waits for the initiator's first datagram.
    func takeInitiation(_ bytes: UnsafeRawBufferPointer) -> OpenedDatagram {
        guard SealedMessage.hasValidMAC1(bytes, key: keys.identity.mac1Key) else { return .drop(.badMAC1) }
        var responder = Noise.Responder(prologue: SealedMessage.prologue, staticKey: keys.identity.privateKey)
        guard let stamp = responder.readInitiation(Array(bytes[8..<116])), stamp.count == 12, responder.initiatorStatic == keys.peer else {
            return .drop(.unauthenticated)
        }
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
        guard var (index, initiator, _) = pending, SealedMessage.load32(bytes, at: 8) == index else { return .drop(.staleHandshake) }
        guard initiator.readResponse(Array(bytes[12..<60])) != nil else { return .drop(.unauthenticated) }
        pending = nil
        let (toResponder, toInitiator) = initiator.state.split()
        let now = clock()
        let s = Session(localIndex: index, remoteIndex: SealedMessage.load32(bytes, at: 4), sendKey: toResponder, receiveKey: toInitiator,
                        created: now, isInitiator: true)
        previous = current
        current = s
        lastHandshake = now
        lastAuthenticated = now
        statistics.responsesReceived &+= 1
        if held.isEmpty { sendKeepalive() } else { sendHeld() }  // (either confirms the session to the responder)
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
