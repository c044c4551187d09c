internal import CCryptoBoringSSL

/// MAC(key, bytes) of the sealed handshake (mac1): HMAC-SHA256 cut to 16 bytes (WireGuard's
/// MAC is keyed BLAKE2s-128), keyed once. BoringSSL's `HMAC_CTX` keeps the keyed state, never
/// changed after `init` (each MAC works on a copy of it, on the stack: one instance is safe
/// from any thread), so a check costs the message's hashing and no key setup, allocation or
/// generic dispatch:
/// swift-crypto's `HMAC(key:)` set the key up again for every datagram, half of the 4.4 µs a
/// flooded bridge spent per initiation-shaped datagram (Benchmarks.md, "under attack"). The
/// same module as `SealedCipher` (Package.swift pins swift-crypto); `NoiseTests` checks it
/// against swift-crypto's public HMAC.
final class SealedMAC: @unchecked Sendable {
    static let length = 16
    private let context: UnsafeMutablePointer<HMAC_CTX>

    init(key: [UInt8]) {
        context = CCryptoBoringSSL_HMAC_CTX_new()!  // (nil only without memory)
        let ok = key.withUnsafeBytes { CCryptoBoringSSL_HMAC_Init_ex(context, $0.baseAddress, $0.count, CCryptoBoringSSL_EVP_sha256(), nil) }
        precondition(ok == 1, "HMAC-SHA256 refused a key")
    }

    deinit { CCryptoBoringSSL_HMAC_CTX_free(context) }

    /// The 32-byte HMAC of `bytes`, handed to `body` (on the stack).
    private func withMAC<R>(_ bytes: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        var out = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        var work = HMAC_CTX()
        CCryptoBoringSSL_HMAC_CTX_init(&work)
        defer { CCryptoBoringSSL_HMAC_CTX_cleanup(&work) }
        return withUnsafeMutableBytes(of: &out) { o in
            var length: UInt32 = 32
            // the keyed state, copied (its pads already hashed), then the message
            precondition(CCryptoBoringSSL_HMAC_CTX_copy_ex(&work, context) == 1
                && CCryptoBoringSSL_HMAC_Update(&work, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count) == 1
                && CCryptoBoringSSL_HMAC_Final(&work, o.baseAddress!.assumingMemoryBound(to: UInt8.self), &length) == 1 && length == 32,
                "HMAC-SHA256 failed")
            return body(UnsafeRawBufferPointer(o))
        }
    }

    /// MAC(key, bytes): 16 bytes.
    func mac(_ bytes: UnsafeRawBufferPointer) -> [UInt8] { withMAC(bytes) { Array($0.prefix(Self.length)) } }

    /// Whether the 16 bytes at `tag` are MAC(key, bytes), compared in constant time.
    func verifies(_ bytes: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) -> Bool {
        withMAC(bytes) { Self.sameTag($0, tag) }
    }

    /// Whether the 16 bytes at `tag` are MAC(key, bytes) for a key used once (a cookie, as the
    /// key of mac2): one pass, no keyed state set up and kept.
    static func verifies(key: [UInt8], _ bytes: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) -> Bool {
        hmac(key: key, [Array(bytes)]).withUnsafeBytes { sameTag($0, tag) }
    }

    /// Whether the first 16 bytes of `a` and `b` are the same, compared in constant time.
    private static func sameTag(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        var difference: UInt8 = 0
        for i in 0..<length { difference |= a[i] ^ b[i] }
        return difference == 0
    }

    /// HMAC-SHA256(key, the concatenation of `parts`): 32 bytes, one pass, nothing kept (the
    /// handshake's HKDF: swift-crypto's `HMAC` struct, generic Swift over SHA-256, spent a
    /// third of a handshake setting keys up). `NoiseTests` checks it against swift-crypto's.
    static func hmac(key: [UInt8], _ parts: [[UInt8]]) -> [UInt8] {
        var work = HMAC_CTX()
        CCryptoBoringSSL_HMAC_CTX_init(&work)
        defer { CCryptoBoringSSL_HMAC_CTX_cleanup(&work) }
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        var ok = key.withUnsafeBytes { CCryptoBoringSSL_HMAC_Init_ex(&work, $0.baseAddress, $0.count, CCryptoBoringSSL_EVP_sha256(), nil) } == 1
        for p in parts { ok = ok && p.withUnsafeBytes { CCryptoBoringSSL_HMAC_Update(&work, $0.baseAddress?.assumingMemoryBound(to: UInt8.self), $0.count) } == 1 }
        ok = ok && CCryptoBoringSSL_HMAC_Final(&work, &out, &length) == 1
        precondition(ok && length == 32, "HMAC-SHA256 failed")
        return out
    }
}
