import Crypto
import Foundation

/// The four messages of `encap=sealed` (v2), laid out as WireGuard's (Docs/Security.md has
/// them byte by byte). Integers are little-endian, as WireGuard's.
///
/// ```
///   initiation  (148)  1 0 0 0 | sender | e (32) | s, encrypted (48) | timestamp, encrypted (28) | mac1 | mac2
///   response     (92)  2 0 0 0 | sender | receiver | e (32) | empty, encrypted (16) | mac1 | mac2
///   cookie reply (64)  3 0 0 0 | receiver | nonce (24) | cookie, encrypted (32)
///   transport  (32+n)  4 VNI (3) | receiver | counter (8) | frame, encrypted (n) | tag (16)
/// ```
/// `sender` and `receiver` are the 32-bit indexes each side picks for a session; a transport
/// datagram names the receiver's, so the receiver finds its session with one lookup.
public enum SealedMessage {
    static let initiation: UInt8 = 1
    static let response: UInt8 = 2
    static let cookieReply: UInt8 = 3
    static let transport: UInt8 = 4

    static let initiationLength = 148
    static let responseLength = 92
    static let cookieReplyLength = 64
    /// The transport header: type, VNI, receiver index, counter. It is authenticated (the
    /// AEAD's associated data), so a changed VNI or index fails the tag.
    public static let transportHeaderLength = 16
    public static let tagLength = 16
    static let macLength = 16

    /// The Noise prologue (WireGuard's "identifier"): a handshake of another protocol, or
    /// another version of this one, never authenticates as this one.
    static let prologue = Array("tapbridge sealed v2".utf8)

    /// The MAC keyed by HASH("mac1----" || public key): `mac1` of messages sent to that key's
    /// owner (keyed once per key: checking a mac1 is one HMAC, no allocation).
    static func mac1Key(of publicKey: [UInt8]) -> SealedMAC { SealedMAC(key: Noise.hash(Array("mac1----".utf8), publicKey)) }

    /// Whether `message`'s mac1 (the 16 bytes 32 before its end) is right for `key`.
    static func hasValidMAC1(_ message: UnsafeRawBufferPointer, key: SealedMAC) -> Bool {
        let at = message.count - 2 * macLength
        return key.verifies(UnsafeRawBufferPointer(rebasing: message[..<at]), tag: UnsafeRawBufferPointer(rebasing: message[at..<at + macLength]))
    }

    /// The key of cookie replies sent by `publicKey`'s owner: XChaCha20-Poly1305 under
    /// HASH("cookie--" || public key).
    static func cookieCipher(of publicKey: [UInt8]) -> SealedCipher { SealedCipher(key: Noise.hash(Array("cookie--".utf8), publicKey), extendedNonce: true) }

    /// Writes mac1 (keyed `key`) at the end of `message`, and mac2: keyed by `cookie` if there
    /// is one, else zeros. Returns mac1.
    @discardableResult
    static func writeMACs(_ message: inout [UInt8], key: SealedMAC, cookie: [UInt8]? = nil) -> [UInt8] {
        let at = message.count - 2 * macLength
        let m = message.withUnsafeBytes { key.mac(UnsafeRawBufferPointer(rebasing: $0[..<at])) }
        message.replaceSubrange(at..<at + macLength, with: m)
        if let cookie {
            let m2 = SealedMAC.hmac(key: cookie, [Array(message[..<(at + macLength)])]).prefix(macLength)
            message.replaceSubrange((at + macLength)..., with: m2)
        }
        return m
    }

    /// Whether `message`'s mac2 (its last 16 bytes) is right for `cookie`.
    static func hasValidMAC2(_ message: UnsafeRawBufferPointer, cookie: [UInt8]) -> Bool {
        let at = message.count - macLength
        return SealedMAC.verifies(key: cookie, UnsafeRawBufferPointer(rebasing: message[..<at]), tag: UnsafeRawBufferPointer(rebasing: message[at...]))
    }

    static func store(_ value: UInt32, into bytes: inout [UInt8], at offset: Int) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
    }

    static func load32(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    /// TAI64N of `seconds` and `nanoseconds` since the epoch (12 bytes, big-endian): later
    /// times compare greater byte by byte, which is how a replayed initiation is told.
    public static func timestamp(seconds: Int64, nanoseconds: Int32) -> [UInt8] {
        let s = UInt64(0x4000_0000_0000_000A) &+ UInt64(bitPattern: seconds)
        return (0..<8).map { UInt8(truncatingIfNeeded: s >> (8 * UInt64(7 - $0))) } + (0..<4).map { UInt8(truncatingIfNeeded: UInt32(bitPattern: nanoseconds) >> (8 * UInt32(3 - $0))) }
    }

    /// The wall clock as a TAI64N timestamp.
    static func now() -> [UInt8] {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return timestamp(seconds: Int64(t.tv_sec), nanoseconds: Int32(t.tv_nsec))
    }
}
