internal import CCryptoBoringSSL
import Crypto
import Foundation
import Glibc
public import TapBridgeCore

/// `encap=sealed`: tapbridge's own authenticated, encrypted encapsulation (Docs/Security.md
/// has the format byte by byte and the threat model).
///
/// ```
///  0       1       2       3       4       5       6       7
/// +-------+-------+-------+-------+-------+-------+-------+-------+
/// | ver=1 |   0   |   0   |   0   |      VNI (24 bits)    |   0   |
/// +-------+-------+-------+-------+-------+-------+-------+-------+
/// |  session: start time (s, 32 bits)  |  random (32 bits)      |
/// +-------+-------+-------+-------+-------+-------+-------+-------+
/// |                     counter (64 bits)                         |
/// +-------+-------+-------+-------+-------+-------+-------+-------+
/// |  the frame, encrypted (ChaCha20)  ...                         |
/// +---------------------------------------------------------------+
/// |  Poly1305 tag (16 bytes) over the 24 header bytes and the     |
/// |  encrypted frame                                              |
/// +---------------------------------------------------------------+
/// ```
/// Every sender picks a session (its start time and 32 random bits) and derives its own key
/// from the pre-shared key with HKDF-SHA256, salted with the session; the nonce is the
/// counter. A (key, nonce) pair is thus never used twice: not across directions or peers
/// (each bridge has its own sessions), nor across restarts (a new session), nor within a
/// session (the counter only grows; a session is replaced every two minutes).
public enum Sealed {
    public static let headerLength = 24
    public static let tagLength = 16
    static let version: UInt8 = 1
    /// A sender starts a new session after this long (so no session outlives it by much).
    static let sessionLifetime: UInt64 = 120
    /// A receiver takes a new session whose start is at most this far from its own clock;
    /// older ones are refused as replays (their datagrams may have been captured), so the
    /// sessions it forgets after that long can never come back. Clocks of the bridges must
    /// agree within this, less a session's lifetime.
    static let sessionMaximumAge: UInt64 = 900
    /// Sessions a receiver keeps per key; a new one past this is refused (only a key holder
    /// can make one).
    static let maximumSessions = 4096
    static let info = Array("tapbridge sealed v1".utf8)
}

/// A pre-shared key: 32 random bytes, written as 64 hex digits on one line
/// (`tapbridge genkey`). (Sendable: a `SymmetricKey` is never changed after it is made.)
public struct SealedKey: @unchecked Sendable {
    let key: SymmetricKey

    /// A fresh key, as the key file holds it.
    public static func generate() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<32).map { _ in
            let b = UInt8.random(in: 0...255, using: &g)
            return String(b >> 4, radix: 16) + String(b & 15, radix: 16)
        }.joined()
    }

    /// The key in `text` (64 hex digits, surrounding white space ignored).
    public init(hex text: String) throws(StartupError) {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let digits = Array(t.utf8)
        guard digits.count == 64 else {
            throw StartupError("a key is 64 hex digits (tapbridge genkey writes one), got \(digits.count) characters")
        }
        var bytes = [UInt8]()
        for i in stride(from: 0, to: 64, by: 2) {
            guard let b = UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16) else {
                throw StartupError("a key is 64 hex digits (tapbridge genkey writes one); this one has other characters")
            }
            bytes.append(b)
        }
        key = SymmetricKey(data: bytes)
    }

    /// The key in the file at `path`, which only its owner may read or write: a key that
    /// others can read is refused, as ssh refuses such a private key.
    public init(file path: String) throws(StartupError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw StartupError("key file \(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw StartupError("key file \(path): not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw StartupError("key file \(path) can be read or written by others (mode \(String(st.st_mode & 0o777, radix: 8))); make it the owner's alone: chmod 600 \(path)")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw StartupError("key file \(path): cannot be read") }
        do { try self.init(hex: String(decoding: data, as: UTF8.self)) } catch { throw StartupError("key file \(path): \(error.message)") }
    }

    init(bytes: [UInt8]) { key = SymmetricKey(data: bytes) }

    /// The key of session `session`.
    func sessionKey(_ session: UInt64) -> SymmetricKey {
        withUnsafeBytes(of: session.bigEndian) { salt in
            HKDF<SHA256>.deriveKey(inputKeyMaterial: key, salt: salt, info: Sealed.info, outputByteCount: 32)
        }
    }
}

/// ChaCha20-Poly1305 under one session key, sealing and opening in place: BoringSSL's
/// `EVP_AEAD_CTX`, set up once per session, from the BoringSSL that swift-crypto builds.
///
/// swift-crypto's `ChaChaPoly` API copies the input into new buffers and returns new ones on
/// every call (five allocations and three copies of the frame per datagram opened, about 20 %
/// of a sealed bridge's CPU), and has no in-place form. `CCryptoBoringSSL` is swift-crypto's
/// own module (a target of it, not a product): the same cipher code, called without the
/// wrapping. A datagram opened or sealed here costs no allocation.
final class SealedCipher {
    private let context: UnsafeMutablePointer<EVP_AEAD_CTX>

    init(key: SymmetricKey) {
        context = .allocate(capacity: 1)
        let ok = key.withUnsafeBytes { k in
            CCryptoBoringSSL_EVP_AEAD_CTX_init(context, CCryptoBoringSSL_EVP_aead_chacha20_poly1305(),
                                               k.baseAddress!.assumingMemoryBound(to: UInt8.self), k.count, Sealed.tagLength, nil)
        }
        precondition(ok == 1, "ChaCha20-Poly1305 refused a 32-byte key")  // (the only way it fails)
    }

    deinit {
        CCryptoBoringSSL_EVP_AEAD_CTX_cleanup(context)
        context.deallocate()
    }

    /// The nonce of datagram `counter`: 4 zero bytes, then the counter (big-endian).
    private static func withNonce<R>(_ counter: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        var nonce = (UInt32(0), UInt32(truncatingIfNeeded: counter >> 32).bigEndian, UInt32(truncatingIfNeeded: counter).bigEndian)
        return withUnsafeBytes(of: &nonce) { body($0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
    }

    /// Encrypts `text` in place and writes its tag (16 bytes) at `tag`, authenticating `header`.
    func seal(_ text: UnsafeMutableRawBufferPointer, tag: UnsafeMutableRawPointer, counter: UInt64, header: UnsafeRawBufferPointer) {
        var tagLength = 0
        let ok = Self.withNonce(counter) { nonce in
            CCryptoBoringSSL_EVP_AEAD_CTX_seal_scatter(
                context, text.baseAddress?.assumingMemoryBound(to: UInt8.self), tag.assumingMemoryBound(to: UInt8.self), &tagLength, Sealed.tagLength,
                nonce, 12, text.baseAddress?.assumingMemoryBound(to: UInt8.self), text.count, nil, 0,
                header.baseAddress!.assumingMemoryBound(to: UInt8.self), header.count)
        }
        precondition(ok == 1 && tagLength == Sealed.tagLength, "ChaCha20-Poly1305 refused to seal \(text.count) bytes")
    }

    /// Whether `tag` authenticates `header` and `text` under datagram `counter`'s nonce; if so,
    /// `text` is decrypted in place. (If not, `text` holds garbage: the datagram is dropped.)
    func open(_ text: UnsafeMutableRawBufferPointer, tag: UnsafeRawPointer, counter: UInt64, header: UnsafeRawBufferPointer) -> Bool {
        Self.withNonce(counter) { nonce in
            CCryptoBoringSSL_EVP_AEAD_CTX_open_gather(
                context, text.baseAddress?.assumingMemoryBound(to: UInt8.self), nonce, 12,
                text.baseAddress?.assumingMemoryBound(to: UInt8.self), text.count, tag.assumingMemoryBound(to: UInt8.self), Sealed.tagLength,
                header.baseAddress!.assumingMemoryBound(to: UInt8.self), header.count)
        } == 1
    }
}

/// The sessions under one key in one bridge: the one it sends in, and those of the senders it
/// has heard (each with its key and replay window). Every sealed peer with that key shares
/// it, so a datagram is taken once by the bridge, whatever address it comes from.
public final class SealedKeyring {
    let key: SealedKey
    /// Seconds since the epoch (the session's start time, the age of a new session).
    let clock: () -> UInt64
    let random: () -> UInt32

    var sendSession: UInt64 = 0
    var sendCipher: SealedCipher
    var sendCounter: UInt64 = 0
    var sendStarted: UInt64 = 0

    struct Session {
        let cipher: SealedCipher
        var window = ReplayWindow()
    }
    var sessions: [UInt64: Session] = [:]

    public convenience init(key: SealedKey) {
        self.init(key: key, clock: { UInt64(max(time(nil), 0)) }, random: { UInt32.random(in: .min ... .max) })
    }

    /// With an injected clock and random source (tests: a restart, sessions of a given age).
    public init(key: SealedKey, clock: @escaping () -> UInt64, random: @escaping () -> UInt32) {
        self.key = key
        self.clock = clock
        self.random = random
        sendCipher = SealedCipher(key: key.key)  // (replaced at once by the first session's)
        startSession(at: clock())
    }

    func startSession(at now: UInt64) {
        sendSession = UInt64(UInt32(truncatingIfNeeded: now)) << 32 | UInt64(random())
        sendCipher = SealedCipher(key: key.sessionKey(sendSession))
        sendCounter = 0
        sendStarted = now
    }

    /// The session and counter of the next datagram sent.
    func nextSend() -> (session: UInt64, counter: UInt64, cipher: SealedCipher) {
        let now = clock()
        if now &- sendStarted >= Sealed.sessionLifetime || sendCounter >= 1 << 62 { startSession(at: now) }
        defer { sendCounter += 1 }
        return (sendSession, sendCounter, sendCipher)
    }

    /// The key of a sender's session and whether `counter` is new in it; nil if the session
    /// is too old (or from too far ahead) to be taken, or no more can be kept.
    func receiveCipher(_ session: UInt64, counter: UInt64) -> (cipher: SealedCipher, fresh: Bool)? {
        if let s = sessions[session] { return (s.cipher, s.window.check(counter)) }
        let started = UInt32(truncatingIfNeeded: session >> 32), now = UInt32(truncatingIfNeeded: clock())
        // distance on the 32-bit circle of seconds (wraps in 2106)
        let age = min(now &- started, started &- now)
        guard UInt64(age) <= Sealed.sessionMaximumAge else { return nil }
        if sessions.count >= Sealed.maximumSessions { forgetOldSessions() }
        guard sessions.count < Sealed.maximumSessions else { return nil }
        return (SealedCipher(key: key.sessionKey(session)), true)
    }

    /// Records an authenticated datagram: its session (new ones are kept from now on) and
    /// its counter.
    func accept(_ session: UInt64, counter: UInt64, cipher: SealedCipher) {
        if sessions[session] == nil {
            sessions[session] = Session(cipher: cipher)
            if sessions.count > 64 { forgetOldSessions() }
        }
        sessions[session]!.window.accept(counter)
    }

    /// Forgets sessions older than a new one could be: their datagrams are refused by age.
    func forgetOldSessions() {
        let now = UInt32(truncatingIfNeeded: clock())
        sessions = sessions.filter { session, _ in
            let started = UInt32(truncatingIfNeeded: session >> 32)
            return UInt64(min(now &- started, started &- now)) <= Sealed.sessionMaximumAge
        }
    }
}

/// The sealed format of one peer (or of the admission of new ones: `probing`, which checks a
/// datagram without recording it, as the admitted peer opens it again).
public final class SealedFormat: EncapsulationFormat {
    public let keyring: SealedKeyring
    public let vni: VNI
    let probing: Bool

    public init(keyring: SealedKeyring, vni: VNI, probing: Bool = false) {
        self.keyring = keyring
        self.vni = vni
        self.probing = probing
    }

    public var encapsulation: Encapsulation { .sealed }
    public var headerLength: Int { Sealed.headerLength }
    public var trailerLength: Int { Sealed.tagLength }
    public var matchesAnySourcePort: Bool { false }

    public func seal(_ datagram: UnsafeMutableRawPointer, frameLength: Int) -> Int {
        let (session, counter, cipher) = keyring.nextSend()
        let h = datagram.assumingMemoryBound(to: UInt8.self)
        h[0] = Sealed.version
        h[1] = 0; h[2] = 0; h[3] = 0
        h[4] = UInt8(truncatingIfNeeded: vni.rawValue >> 16); h[5] = UInt8(truncatingIfNeeded: vni.rawValue >> 8); h[6] = UInt8(truncatingIfNeeded: vni.rawValue)
        h[7] = 0
        (datagram + 8).storeBytes(of: session.bigEndian, as: UInt64.self)
        (datagram + 16).storeBytes(of: counter.bigEndian, as: UInt64.self)
        cipher.seal(UnsafeMutableRawBufferPointer(start: datagram + Sealed.headerLength, count: frameLength),
                    tag: datagram + Sealed.headerLength + frameLength, counter: counter,
                    header: UnsafeRawBufferPointer(start: datagram, count: Sealed.headerLength))
        return Sealed.headerLength + frameLength + Sealed.tagLength
    }

    /// In order: too short or another version: `malformed_encapsulation`; another VNI:
    /// `vni_mismatch`; a counter seen already, or a session too old to take: `replayed`
    /// (none of these costs a cipher operation); then the tag: `unauthenticated` if it does
    /// not verify. Only then is the frame decrypted, in place, and the counter recorded.
    public func open(_ datagram: UnsafeMutableRawBufferPointer) -> OpenedDatagram {
        guard datagram.count >= Sealed.headerLength + Sealed.tagLength, datagram[0] == Sealed.version else { return .drop(.malformedEncapsulation) }
        let got = UInt32(datagram[4]) << 16 | UInt32(datagram[5]) << 8 | UInt32(datagram[6])
        guard got == vni.rawValue else { return .drop(.vniMismatch) }
        let base = datagram.baseAddress!
        let session = UInt64(bigEndian: (base + 8).loadUnaligned(as: UInt64.self))
        let counter = UInt64(bigEndian: (base + 16).loadUnaligned(as: UInt64.self))
        guard let (cipher, fresh) = keyring.receiveCipher(session, counter: counter), fresh else { return .drop(.replayed) }
        let n = datagram.count - Sealed.headerLength - Sealed.tagLength
        let frame = UnsafeMutableRawBufferPointer(start: base + Sealed.headerLength, count: n)
        guard cipher.open(frame, tag: base + Sealed.headerLength + n, counter: counter,
                          header: UnsafeRawBufferPointer(start: base, count: Sealed.headerLength))
        else { return .drop(.unauthenticated) }
        if !probing { keyring.accept(session, counter: counter, cipher: cipher) }
        return .frame(frame)
    }

    /// This version and VNI, this bridge's sending session, and a counter it has used: a
    /// forger would have to have seen the datagram (the rest is ciphertext).
    public func mayHaveSent(_ quote: UnsafeRawBufferPointer) -> Bool {
        guard quote.count >= 24, quote[0] == Sealed.version else { return false }
        let got = UInt32(quote[4]) << 16 | UInt32(quote[5]) << 8 | UInt32(quote[6])
        let session = UInt64(bigEndian: quote.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let counter = UInt64(bigEndian: quote.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        return got == vni.rawValue && session == keyring.sendSession && counter < keyring.sendCounter
    }
}

extension Encapsulation {
    /// tapbridge's own: authenticated and encrypted with a pre-shared key (ChaCha20-Poly1305).
    public static let sealed = Encapsulation("sealed")
}

extension SealedKeyring: EncapsulationKey {}

extension SealedFormat: EncapsulationKind {
    public static var encapsulation: Encapsulation { .sealed }
    public static var carriesVNI: Bool { true }
    public static var meshByDefault: Bool { true }
    public static var kernelDatapath: Bool { false }
    public static var needsKey: Bool { true }
    public static func key(file: String) throws(StartupError) -> any EncapsulationKey { SealedKeyring(key: try SealedKey(file: file)) }
    public static func format(vni: VNI, key: (any EncapsulationKey)?, probing: Bool) -> any EncapsulationFormat {
        guard let keyring = key as? SealedKeyring else { preconditionFailure("a sealed format needs its key ring (WireFormat checks)") }
        return SealedFormat(keyring: keyring, vni: vni, probing: probing)
    }
}
