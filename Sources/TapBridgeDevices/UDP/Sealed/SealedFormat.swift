import CTapBridge
import Crypto
import Foundation
import Glibc
public import TapBridgeCore

/// `encap=sealed`: Ethernet frames encrypted and authenticated between two hosts, each with
/// its own key, on WireGuard's protocol (the Noise IKpsk2 handshake, receiver indexes,
/// counters and a replay window per session), with SHA-256 in place of BLAKE2s.
/// Docs/Security.md has the messages byte by byte and the threat model.
///
/// ```
///   frame to send, no session ──► initiation to the peer (the frame is dropped: link_down)
///   initiation from the peer ──► mac1 (one HMAC) ──► Noise ──► its key is peer= ? ──► newer
///       timestamp? ──► response; a new session, used once the initiator's first datagram
///       arrives under it
///   response ──► mac1 ──► our handshake's index? ──► Noise ──► session ──► keepalive
///   transport ──► receiver index: one of this peer's sessions? ──► counter in the window?
///       ──► tag (in place) ──► frame
/// ```
/// Each session has a key per direction (Noise's `split`), so a datagram never opens under
/// the key that sealed it: sent back to its sender it fails (`unknown_index` or the tag),
/// and a third host, whose sessions are its own, has nothing to open it with.
public final class SealedFormat: EncapsulationFormat {
    public let keys: SealedPeerKeys
    public let vni: VNI
    /// Monotonic nanoseconds (session ages, handshake retries).
    let clock: () -> Int64
    /// The wall clock as TAI64N (initiation timestamps).
    let timestamp: () -> [UInt8]
    var send: ((UnsafeRawBufferPointer) -> Void)? = nil

    /// A session: its indexes, a key per direction, the send counter and the replay window.
    final class Session {
        let localIndex: UInt32, remoteIndex: UInt32
        let sender: SealedCipher, receiver: SealedCipher
        let created: Int64
        let isInitiator: Bool
        var sendCounter: UInt64 = 0
        var window = ReplayWindow()

        init(localIndex: UInt32, remoteIndex: UInt32, sendKey: [UInt8], receiveKey: [UInt8], created: Int64, isInitiator: Bool) {
            self.localIndex = localIndex
            self.remoteIndex = remoteIndex
            sender = SealedCipher(key: sendKey)
            receiver = SealedCipher(key: receiveKey)
            self.created = created
            self.isInitiator = isInitiator
        }
    }
    /// The session frames are sent in; the one before it (datagrams still on their way); a
    /// responder's newest, until the initiator's first datagram under it confirms it.
    var current: Session?, previous: Session?, next: Session?
    /// The handshake this side started and has no response to yet.
    var pending: (index: UInt32, initiator: Noise.Initiator, sent: Int64)? = nil
    /// When this side last answered an initiation (its `next` session waits for the
    /// initiator's first datagram): it starts no handshake of its own for 5 s meanwhile, as
    /// wireguard-go counts a response as a handshake sent; its frames wait in `held`.
    var responded: Int64? = nil
    /// The greatest timestamp of an initiation taken from the peer.
    var greatestTimestamp = [UInt8](repeating: 0, count: 12)
    public internal(set) var statistics = Statistics()
    /// When the last handshake completed (monotonic ns), either side.
    public internal(set) var lastHandshake: Int64? = nil

    /// When the last datagram from the peer authenticated (monotonic ns).
    var lastAuthenticated: Int64 = 0
    /// Frames kept while a handshake is under way, sent once it completes (WireGuard stages
    /// packets the same way); the oldest go first past `heldLimit`, and all of them when a
    /// handshake goes unanswered (5 s): a peer that is away costs at most 16 frames.
    var held: [[UInt8]] = []
    static let heldLimit = 16
    /// The session `seal` uses: the one `readyToSend` found usable for this frame (one clock
    /// read per frame, not per segment of a train).
    var sealing: Session? = nil
    /// When a frame or keepalive was last sent (`keepalive=`'s clock, and the passive
    /// keepalive's); nil: never.
    var lastSent: Int64? = nil
    /// The receiver indexes this format holds in its identity's index table.
    var registered: [UInt32] = []
    /// The cookie the peer last sent (under load, it wants it in `mac2`) and when; the mac1
    /// of the last initiation sent (a cookie reply is encrypted with it as associated data).
    var cookie: (value: [UInt8], received: Int64)? = nil
    var lastMAC1: [UInt8] = []
    /// The cookie reply being answered with (`.reply`), valid until the next call.
    let replyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SealedMessage.cookieReplyLength, alignment: 8)

    /// Messages of each type, each way, and the tags checked (each a cipher operation).
    public struct Statistics: Sendable, Equatable {
        public var initiationsSent: UInt64 = 0, initiationsReceived: UInt64 = 0
        public var responsesSent: UInt64 = 0, responsesReceived: UInt64 = 0
        public var cookieRepliesSent: UInt64 = 0, cookieRepliesReceived: UInt64 = 0
        public var keepalivesSent: UInt64 = 0, keepalivesReceived: UInt64 = 0
        public var tagsChecked: UInt64 = 0
    }

    // WireGuard's timers (its paper, §6.1): rekey after 120 s, refuse a session after 180 s,
    // a handshake retried after 5 s.
    static let rekeyAfterTime: Int64 = 120_000_000_000
    static let rejectAfterTime: Int64 = 180_000_000_000
    static let rekeyTimeout: Int64 = 5_000_000_000
    /// Sending, and nothing heard from the peer for this long: it may have restarted and lost
    /// the session, so a new handshake is started (WireGuard's KEEPALIVE + REKEY_TIMEOUT).
    static let silenceTimeout: Int64 = 15_000_000_000
    /// A frame received and nothing sent back for this long: an empty datagram answers, so
    /// that a one-way flow's sender hears from its peer and starts no handshake every 15 s
    /// (WireGuard's passive keepalive, KEEPALIVE_TIMEOUT).
    static let keepaliveTimeout: Int64 = 10_000_000_000
    static let rekeyAfterMessages: UInt64 = 1 << 60
    static let rejectAfterMessages: UInt64 = UInt64.max - (1 << 13)

    public convenience init(keys: SealedPeerKeys, vni: VNI) {
        self.init(keys: keys, vni: vni, clock: { ctb_monotonic_ns() }, timestamp: SealedMessage.now)
    }

    /// With injected clocks (tests and the fuzz target: session ages, a restart, replayed
    /// initiations): `clock` in monotonic nanoseconds, `timestamp` as TAI64N.
    public init(keys: SealedPeerKeys, vni: VNI, clock: @escaping () -> Int64, timestamp: @escaping () -> [UInt8]) {
        self.keys = keys
        self.vni = vni
        self.clock = clock
        self.timestamp = timestamp
    }

    deinit {
        keys.identity.directory.withdraw(self, peer: keys.peer, indexes: registered)
        replyBuffer.deallocate()
    }

    public func connect(_ send: @escaping (UnsafeRawBufferPointer) -> Void) {
        self.send = send
        keys.identity.directory.enroll(self, peer: keys.peer)
    }

    /// `keepalive=`: an empty datagram when nothing was sent for that long, under the rules a
    /// frame follows (`readyToSend`: a handshake first if there is no session, a new one when
    /// the session is due to be renewed).
    public func timer(now: Int64) -> Int64? {
        guard let every = keys.keepalive else { return nil }
        if lastSent.map({ now &- $0 >= every }) ?? true {
            if ready(at: now, sendingFrame: false) { sendKeepalive() }
            lastSent = now
        }
        return (lastSent ?? now) &+ every
    }

    public var session: SessionReport? {
        let s = statistics
        return SessionReport(peer: keys.shortPeer, lastHandshake: lastHandshake, messages: [
            "initiations_sent": s.initiationsSent, "initiations_received": s.initiationsReceived, "responses_sent": s.responsesSent,
            "responses_received": s.responsesReceived, "cookie_replies_sent": s.cookieRepliesSent, "cookie_replies_received": s.cookieRepliesReceived,
            "keepalives_sent": s.keepalivesSent, "keepalives_received": s.keepalivesReceived,
        ])
    }

    /// A session that may still send at `now`.
    @inline(__always)
    func usable(_ s: Session?, _ now: Int64) -> Session? {
        guard let s, now &- s.created < Self.rejectAfterTime, s.sendCounter < Self.rejectAfterMessages else { return nil }
        return s
    }

    public func readyToSend() -> Bool { ready(at: clock(), sendingFrame: true) }

    /// Whether a datagram can be sealed at `now` (`sealing` is its session), starting a
    /// handshake if none can or the session is due to be renewed. `sendingFrame`: a frame,
    /// which also starts one after 15 s of sending without hearing back (a keepalive does
    /// not: it expects no answer, as in WireGuard).
    func ready(at now: Int64, sendingFrame: Bool) -> Bool {
        sealing = usable(current, now)
        guard let s = sealing else {
            initiate(now)
            return false
        }
        lastSent = now
        // the initiator renews at 120 s; a responder whose initiator has not, at 150 s
        let age = now &- s.created
        if age >= Self.rekeyAfterTime && (s.isInitiator || age >= Self.rekeyAfterTime + 30_000_000_000) || s.sendCounter >= Self.rekeyAfterMessages
            || (sendingFrame && age >= Self.silenceTimeout && now &- lastAuthenticated >= Self.silenceTimeout)
        {
            initiate(now)
        }
        return true
    }

    public func seal(_ datagram: UnsafeMutableRawPointer, frameLength: Int) -> Int {
        guard let s = sealing, s.sendCounter < Self.rejectAfterMessages else { return 0 }
        writeTransportHeader(datagram, session: s)
        s.sender.seal(UnsafeMutableRawBufferPointer(start: datagram + SealedMessage.transportHeaderLength, count: frameLength),
                      tag: datagram + SealedMessage.transportHeaderLength + frameLength, counter: s.sendCounter,
                      header: UnsafeRawBufferPointer(start: datagram, count: SealedMessage.transportHeaderLength))
        s.sendCounter += 1
        return SealedMessage.transportHeaderLength + frameLength + SealedMessage.tagLength
    }

    @inline(__always)
    func writeTransportHeader(_ h: UnsafeMutableRawPointer, session s: Session) {
        let b = h.assumingMemoryBound(to: UInt8.self)
        b[0] = SealedMessage.transport
        b[1] = UInt8(truncatingIfNeeded: vni.rawValue >> 16); b[2] = UInt8(truncatingIfNeeded: vni.rawValue >> 8); b[3] = UInt8(truncatingIfNeeded: vni.rawValue)
        (h + 4).storeBytes(of: s.remoteIndex.littleEndian, as: UInt32.self)
        (h + 8).storeBytes(of: s.sendCounter.littleEndian, as: UInt64.self)
    }

    /// A transport datagram (type 4) in place; handshake messages are taken by `openHandshake`.
    /// In order, each before any cipher work: too short or an unknown type:
    /// `malformed_encapsulation`; another VNI: `vni_mismatch`; a receiver index that is none
    /// of this peer's sessions: `unknown_index`; a counter seen already or below the window:
    /// `replayed`. Then the tag: `unauthenticated`. Only then is the counter recorded.
    public func open(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram { open(datagram, from: UnsafeRawBufferPointer(start: nil, count: 0)) }

    /// The same, the datagram from `source` (a cookie reply is bound to it).
    public func open(_ datagram: UnsafeMutableRawBufferPointer, from source: UnsafeRawBufferPointer) -> OpenedDatagram {
        guard datagram.count >= 4 else { return .drop(.malformedEncapsulation) }
        guard datagram[0] == SealedMessage.transport else { return openHandshake(datagram, from: source) }
        guard datagram.count >= SealedMessage.transportHeaderLength + SealedMessage.tagLength else { return .drop(.malformedEncapsulation) }
        let got = UInt32(datagram[1]) << 16 | UInt32(datagram[2]) << 8 | UInt32(datagram[3])
        guard got == vni.rawValue else { return .drop(.vniMismatch) }
        let bytes = UnsafeRawBufferPointer(datagram)
        let index = SealedMessage.load32(bytes, at: 4)
        let now = clock()
        guard let s = session(index), now &- s.created < Self.rejectAfterTime else { return .drop(.unknownIndex) }
        let counter = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        guard counter < Self.rejectAfterMessages, s.window.check(counter) else { return .drop(.replayed) }  // (WireGuard's limit, both ways)
        let base = datagram.baseAddress!, n = datagram.count - SealedMessage.transportHeaderLength - SealedMessage.tagLength
        let frame = UnsafeMutableRawBufferPointer(start: base + SealedMessage.transportHeaderLength, count: n)
        statistics.tagsChecked &+= 1
        guard s.receiver.open(frame, tag: base + SealedMessage.transportHeaderLength + n, counter: counter,
                              header: UnsafeRawBufferPointer(start: base, count: SealedMessage.transportHeaderLength))
        else { return .drop(.unauthenticated) }
        s.window.accept(counter)
        lastAuthenticated = now
        if s === next { confirm(s) }
        if n == 0 {
            statistics.keepalivesReceived &+= 1
            return .consumed
        }
        if lastSent.map({ now &- $0 >= Self.keepaliveTimeout }) ?? true { sendKeepalive() }  // (a passive keepalive)
        return .frame(frame)
    }

    /// The session whose receiver index is `index` (at most three to look at).
    @inline(__always)
    func session(_ index: UInt32) -> Session? {
        if let s = current, s.localIndex == index { return s }
        if let s = next, s.localIndex == index { return s }
        if let s = previous, s.localIndex == index { return s }
        return nil
    }

    /// A responder's session, confirmed by the initiator's first datagram in it: it becomes
    /// the one frames are sent in.
    func confirm(_ s: Session) {
        previous = current
        current = s
        next = nil
        reindex()
        sendHeld()
    }

    /// Installs a session as a completed handshake leaves it (its keys from Noise's `split`),
    /// the current one becoming the one before. For the fuzz target and tests that exercise the
    /// transport without paying a handshake's Diffie-Hellman per input; the bridge never calls it.
    public func installSession(localIndex: UInt32, remoteIndex: UInt32, sendKey: [UInt8], receiveKey: [UInt8], initiator: Bool) {
        previous = current
        current = Session(localIndex: localIndex, remoteIndex: remoteIndex, sendKey: sendKey, receiveKey: receiveKey, created: clock(), isInitiator: initiator)
        lastAuthenticated = clock()
        reindex()
    }

    public func hold(_ frame: [UInt8]) -> Bool {
        if held.count == Self.heldLimit { held.removeFirst() }
        held.append(frame)
        return true
    }

    /// Sends the frames held for the session that is now up, each sealed in it.
    func sendHeld() {
        sealing = usable(current, clock())
        guard !held.isEmpty, send != nil, sealing != nil else { return }
        let frames = held
        held = []
        for frame in frames { sendSealed(frame) }
    }

    /// Seals `frame` in the session `sealing` names and sends it at once, outside the queue
    /// (a held frame; empty, a keepalive). The caller has checked that there is one.
    func sendSealed(_ frame: [UInt8]) {
        var datagram = [UInt8](repeating: 0, count: SealedMessage.transportHeaderLength + frame.count + SealedMessage.tagLength)
        let n = datagram.withUnsafeMutableBytes { d in
            d.baseAddress!.advanced(by: SealedMessage.transportHeaderLength).copyMemory(from: frame, byteCount: frame.count)
            return seal(d.baseAddress!, frameLength: frame.count)
        }
        datagram.withUnsafeBytes { send?(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
        lastSent = clock()
    }

    /// This bridge's transport header (this VNI, one of its sessions' peer index, a counter
    /// it used), or one of its handshake messages: a forger would have to have seen it.
    public func mayHaveSent(_ quote: UnsafeRawBufferPointer) -> Bool {
        guard quote.count >= SealedMessage.transportHeaderLength else { return false }
        if quote[0] == SealedMessage.initiation, let pending { return SealedMessage.load32(quote, at: 4) == pending.index }
        guard quote[0] == SealedMessage.transport else { return false }
        let got = UInt32(quote[1]) << 16 | UInt32(quote[2]) << 8 | UInt32(quote[3])
        let index = SealedMessage.load32(quote, at: 4)
        let counter = UInt64(littleEndian: quote.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        guard got == vni.rawValue else { return false }
        for s in [current, previous] { if let s, s.remoteIndex == index, counter < s.sendCounter { return true } }
        return false
    }
}

extension Encapsulation {
    /// Encrypted and authenticated, a key per host (WireGuard's protocol, Noise IKpsk2).
    public static let sealed = Encapsulation("sealed")
}

extension SealedFormat: EncapsulationKind {
    public static var encapsulation: Encapsulation { .sealed }
    public static var summary: String {
        "(tapbridge to tapbridge, authenticated and encrypted on WireGuard's protocol: this host's key in --key-file or key=PATH, the peer's public key in peer=PUBKEY, an optional pre-shared key in psk=PATH, and keepalive=SECONDS to keep a NAT's mapping open; see Docs/Security.md)"
    }
    public static var carriesVNI: Bool { true }
    public static var meshByDefault: Bool { true }
    public static var kernelDatapath: Bool { false }
    public static var frameOffset: Int { SealedMessage.transportHeaderLength }
    public static var needsKey: Bool { true }
    public static var admitsStrangers: Bool { false }
    public static var remoteOptions: [String] { ["peer", "psk", "keepalive"] }

    public static func check(option: String, value: String) -> String? {
        switch option {
        case "peer":
            do { _ = try SealedKeyFile.publicKey(value) } catch { return error.message }
            return nil
        case "keepalive":
            guard let n = Int(value), (1...3600).contains(n) else { return "keepalive= takes whole seconds from 1 to 3600 (25 keeps most NATs open), got '\(value)'" }
            return nil
        default: return value.isEmpty ? "psk= needs the path of a pre-shared key file (tapbridge genkey writes one)" : nil
        }
    }

    public static func missingOptions(_ options: [String: String]) -> String? {
        options["peer"] == nil ? "encap=sealed needs peer=PUBKEY: the public key of the host at the other end (tapbridge pubkey < its key file)" : nil
    }

    public static func key(file: String, options: [String: String]) throws(StartupError) -> any EncapsulationKey {
        guard let peer = options["peer"] else { throw StartupError(missingOptions(options)!) }
        let psk = try options["psk"].map { path throws(StartupError) in try SealedKeyFile.read(path, what: "psk file") }
        return SealedPeerKeys(identity: try SealedIdentity.loaded(file: file), peer: try SealedKeyFile.publicKey(peer), presharedKey: psk,
                              keepaliveSeconds: options["keepalive"].flatMap { Int($0) })
    }

    public static func format(vni: VNI, key: (any EncapsulationKey)?, probing: Bool) -> any EncapsulationFormat {
        guard let keys = key as? SealedPeerKeys else { preconditionFailure("a sealed format needs its keys (WireFormat checks)") }
        return SealedFormat(keys: keys, vni: vni)
    }
}
