import Foundation
public import TapBridgeCore

/// What the sealed remotes of one identity (one key file) share, as a WireGuard interface
/// shares it between its peers:
///
/// - **the index table**: which peer's format holds each receiver index (its handshake under
///   way and its sessions), so that a datagram from an address no peer has (a peer that
///   roamed) finds its session with one lookup, and an index is never handed out twice;
/// - **the peers by public key**, for an initiation from such an address (the key is in it);
/// - **the load meter**: initiations taken in the last second past `loadThreshold` put the
///   identity under load for a second, as wireguard-go's handshake queue does; under load an
///   initiation without a valid `mac2` is answered with a cookie reply, which costs no
///   Diffie-Hellman;
/// - **the cookie secret**, renewed every 2 minutes: the cookie of an address is
///   MAC(secret, address and port).
///
/// Locked: one identity may serve bridges on several threads (tests). Only handshake messages
/// and strangers' datagrams come here; a transport datagram from its peer's address never does.
final class SealedDirectory: @unchecked Sendable {
    struct WeakFormat { weak var format: SealedFormat? }

    struct State {
        var sessions: [UInt32: WeakFormat] = [:]
        var peers: [[UInt8]: WeakFormat] = [:]
        var window: Int64? = nil
        var inWindow = 0
        var underLoadUntil: Int64 = .min
        var secret: SealedMAC? = nil
        var secretBorn: Int64 = 0
        var buckets: [[UInt8]: (tokens: Double, at: Int64)] = [:]
        var lastPrune: Int64 = .min
    }
    private let lock = NSLock()
    private var locked = State()
    /// `body` on the state, under the lock.
    private func withLock<R>(_ body: (inout State) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&locked)
    }
    /// Initiations a second past which the identity is under load (wireguard-go: an eighth of
    /// its 1,024-deep handshake queue waiting). A responder's part of a handshake costs 130 µs (tapbridge-sealed-bench).
    let loadThreshold: Int
    static let secretLifetime: Int64 = 120_000_000_000
    /// WireGuard's rate limiter: under load, initiations with a valid cookie from one IP
    /// address, at most 20 a second with a burst of 5, and at most 4,096 addresses tracked.
    static let initiationsPerSecond = 20.0, initiationBurst = 5.0, trackedAddresses = 4096

    init(loadThreshold: Int) { self.loadThreshold = loadThreshold }

    // MARK: The index table and the peers

    /// Records that `format` now holds exactly `indexes` (its handshake and sessions): the
    /// ones it held before and not now are freed.
    func assign(_ indexes: [UInt32], before: [UInt32], to format: SealedFormat) {
        withLock { s in
            for i in before where !indexes.contains(i) && (s.sessions[i]?.format == nil || s.sessions[i]?.format === format) { s.sessions[i] = nil }
            for i in indexes { s.sessions[i] = WeakFormat(format: format) }
        }
    }

    /// Whether no live format holds `index`.
    func isFree(_ index: UInt32) -> Bool { withLock { $0.sessions[index]?.format == nil } }

    /// The format that holds `index`.
    func holder(of index: UInt32) -> SealedFormat? { withLock { $0.sessions[index]?.format } }

    /// `format` is the remote whose peer's public key is `peer` (a second remote for the same
    /// key takes its place).
    func enroll(_ format: SealedFormat, peer: [UInt8]) { withLock { $0.peers[peer] = WeakFormat(format: format) } }

    /// Forgets `format` (it is going away).
    func withdraw(_ format: SealedFormat, peer: [UInt8], indexes: [UInt32]) {
        withLock { s in
            if s.peers[peer]?.format == nil || s.peers[peer]?.format === format { s.peers[peer] = nil }
            for i in indexes where s.sessions[i]?.format == nil || s.sessions[i]?.format === format { s.sessions[i] = nil }
        }
    }

    /// The remote of the peer whose public key is `peer`.
    func remote(of peer: [UInt8]) -> SealedFormat? { withLock { $0.peers[peer]?.format } }

    // MARK: Load and cookies

    /// Counts an initiation whose mac1 is right, at `now`; whether the identity is under load.
    func noteInitiation(at now: Int64) -> Bool {
        withLock { s in
            if !(s.window.map { now >= $0 && now - $0 < 1_000_000_000 } ?? false) {
                s.window = now
                s.inWindow = 0
            }
            s.inWindow += 1
            if s.inWindow > loadThreshold { s.underLoadUntil = now &+ 1_000_000_000 }
            return now < s.underLoadUntil
        }
    }

    /// Whether an initiation with a valid cookie from `source` (its IP address: the first 16
    /// bytes) may go on at `now`: a token bucket per address. With the table full of addresses
    /// heard within the last second, a new one is refused (the table is pruned at most once a
    /// second, so a full table costs no scan per datagram).
    func allows(_ source: UnsafeRawBufferPointer, at now: Int64) -> Bool {
        let key = Array(source.prefix(16))
        return withLock { s in
            if s.buckets[key] == nil, s.buckets.count >= Self.trackedAddresses {
                guard now &- s.lastPrune >= 1_000_000_000 || now < s.lastPrune else { return false }
                s.lastPrune = now
                s.buckets = s.buckets.filter { now &- $0.value.at < 1_000_000_000 }
                if s.buckets.count >= Self.trackedAddresses { return false }
            }
            var b = s.buckets[key] ?? (Self.initiationBurst, now)
            b.tokens = min(Self.initiationBurst, b.tokens + Double(max(0, now &- b.at)) / 1e9 * Self.initiationsPerSecond)
            b.at = now
            let allowed = b.tokens >= 1
            if allowed { b.tokens -= 1 }
            s.buckets[key] = b
            return allowed
        }
    }

    /// The cookie of `source` (its address and port): MAC(secret, source), the secret renewed
    /// past its lifetime. 16 bytes, as the key of `mac2`.
    func cookie(of source: UnsafeRawBufferPointer, at now: Int64) -> [UInt8] {
        let secret = withLock { s -> SealedMAC in
            if let secret = s.secret, now >= s.secretBorn, now &- s.secretBorn < Self.secretLifetime { return secret }
            var bytes = [UInt8](repeating: 0, count: 32)
            var rng = SystemRandomNumberGenerator()
            for i in bytes.indices { bytes[i] = rng.next() }
            let fresh = SealedMAC(key: bytes)
            s.secret = fresh
            s.secretBorn = now
            return fresh
        }
        return secret.mac(source)
    }
}

/// The format's side of its identity's directory: its indexes, and strangers' datagrams.
extension SealedFormat {
    /// Tells the identity's index table which indexes this format holds now (after each
    /// handshake event: a few a minute).
    func reindex() {
        let now = [pending?.index, current?.localIndex, previous?.localIndex, next?.localIndex].compactMap { $0 }
        keys.identity.directory.assign(now, before: registered, to: self)
        registered = now
    }

    public var encapsulation: Encapsulation { .sealed }
    public var headerLength: Int { SealedMessage.transportHeaderLength }
    public var trailerLength: Int { SealedMessage.tagLength }
    public var matchesAnySourcePort: Bool { false }

    public var roamingGroup: ObjectIdentifier? { ObjectIdentifier(keys.identity.directory) }

    /// A stranger's datagram (from an address that is no remote's): the remote of this
    /// identity it belongs to, found before any authentication by one lookup of its receiver
    /// index (transport, response, cookie reply), or for an initiation by mac1 (one HMAC) and
    /// one Diffie-Hellman, which reveals the sender's public key. Under load an initiation
    /// from an unknown address is not looked at (nil): its sender tries again.
    public func owner(ofStranger d: UnsafeRawBufferPointer) -> (any EncapsulationFormat)? {
        guard d.count >= 8 else { return nil }
        let directory = keys.identity.directory
        switch d[0] {
        case SealedMessage.transport where d.count >= SealedMessage.transportHeaderLength + SealedMessage.tagLength:
            return directory.holder(of: SealedMessage.load32(d, at: 4))
        case SealedMessage.response where d.count == SealedMessage.responseLength:
            return directory.holder(of: SealedMessage.load32(d, at: 8))
        case SealedMessage.cookieReply where d.count == SealedMessage.cookieReplyLength:
            return directory.holder(of: SealedMessage.load32(d, at: 4))
        case SealedMessage.initiation where d.count == SealedMessage.initiationLength:
            guard SealedMessage.hasValidMAC1(d, key: keys.identity.mac1Key), !directory.noteInitiation(at: clock()) else { return nil }
            var responder = Noise.Responder(prologue: SealedMessage.prologue, staticKey: keys.identity.privateKey)
            guard let peer = responder.readInitiatorStatic(Array(d[8..<116])) else { return nil }
            return directory.remote(of: peer)
        default:
            return nil
        }
    }
}
