internal import CCryptoBoringSSL
import Crypto

/// ChaCha20-Poly1305 under one key, sealing and opening in place: BoringSSL's `EVP_AEAD_CTX`,
/// set up once per session key, from the BoringSSL that swift-crypto builds. The nonce of
/// message `n` is Noise's: 4 zero bytes, then `n` little-endian.
///
/// swift-crypto's `ChaChaPoly` API copies the input into new buffers and returns new ones on
/// every call (five allocations and three copies of the frame per datagram opened, about 20 %
/// of a sealed bridge's CPU), and has no in-place form. `CCryptoBoringSSL` is swift-crypto's
/// own module (a target of it, not a product), so Package.swift pins swift-crypto to one minor
/// version (Docs/Architecture.md says why) and `NoiseTests` checks this cipher against the
/// published transport vectors: a change in the module's shape fails the build or that test.
/// The handshake, a few messages a minute, uses the public API.
final class SealedCipher {
    private let context: UnsafeMutablePointer<EVP_AEAD_CTX>
    static let tagLength = 16

    /// `extendedNonce`: XChaCha20-Poly1305 (24-byte nonces), for cookie replies, whose nonce
    /// is random (WireGuard's XAEAD).
    init(key: [UInt8], extendedNonce: Bool = false) {
        precondition(key.count == 32, "a ChaCha20-Poly1305 key is 32 bytes")
        context = .allocate(capacity: 1)
        let aead = extendedNonce ? CCryptoBoringSSL_EVP_aead_xchacha20_poly1305() : CCryptoBoringSSL_EVP_aead_chacha20_poly1305()
        let ok = key.withUnsafeBufferPointer { k in CCryptoBoringSSL_EVP_AEAD_CTX_init(context, aead, k.baseAddress!, k.count, Self.tagLength, nil) }
        precondition(ok == 1, "ChaCha20-Poly1305 refused a 32-byte key")  // (the only way it fails)
    }

    /// `plaintext` sealed under `nonce` (its full length: 24 bytes for XChaCha20), with
    /// `ad` authenticated: the ciphertext, then the tag. (Cookie replies: a few bytes.)
    func seal(_ plaintext: [UInt8], nonce: [UInt8], ad: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + Self.tagLength)
        var length = 0
        let ok = CCryptoBoringSSL_EVP_AEAD_CTX_seal(context, &out, &length, out.count, nonce, nonce.count, plaintext, plaintext.count, ad, ad.count)
        precondition(ok == 1 && length == out.count, "ChaCha20-Poly1305 refused to seal \(plaintext.count) bytes")
        return out
    }

    /// The plaintext of `sealed` (ciphertext and tag) under `nonce` and `ad`; nil if the tag
    /// does not verify.
    func open(_ sealed: [UInt8], nonce: [UInt8], ad: [UInt8]) -> [UInt8]? {
        guard sealed.count >= Self.tagLength else { return nil }
        var out = [UInt8](repeating: 0, count: sealed.count)
        var length = 0
        guard CCryptoBoringSSL_EVP_AEAD_CTX_open(context, &out, &length, out.count, nonce, nonce.count, sealed, sealed.count, ad, ad.count) == 1 else { return nil }
        return Array(out.prefix(length))
    }

    deinit {
        CCryptoBoringSSL_EVP_AEAD_CTX_cleanup(context)
        context.deallocate()
    }

    @inline(__always)
    private static func withNonce<R>(_ counter: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        var nonce = (UInt32(0), UInt32(truncatingIfNeeded: counter).littleEndian, UInt32(truncatingIfNeeded: counter >> 32).littleEndian)  // (12 bytes, no padding)
        return withUnsafeBytes(of: &nonce) { body($0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
    }

    /// Encrypts `text` in place and writes its tag (16 bytes) at `tag`, authenticating `header`.
    func seal(_ text: UnsafeMutableRawBufferPointer, tag: UnsafeMutableRawPointer, counter: UInt64, header: UnsafeRawBufferPointer) {
        var tagLength = 0
        let ok = Self.withNonce(counter) { nonce in
            CCryptoBoringSSL_EVP_AEAD_CTX_seal_scatter(
                context, text.baseAddress?.assumingMemoryBound(to: UInt8.self), tag.assumingMemoryBound(to: UInt8.self), &tagLength, Self.tagLength,
                nonce, 12, text.baseAddress?.assumingMemoryBound(to: UInt8.self), text.count, nil, 0,
                header.baseAddress?.assumingMemoryBound(to: UInt8.self), header.count)
        }
        precondition(ok == 1 && tagLength == Self.tagLength, "ChaCha20-Poly1305 refused to seal \(text.count) bytes")
    }

    /// Whether `tag` authenticates `header` and `text` under message `counter`'s nonce; if so,
    /// `text` is decrypted in place. (If not, `text` holds garbage: the datagram is dropped.)
    func open(_ text: UnsafeMutableRawBufferPointer, tag: UnsafeRawPointer, counter: UInt64, header: UnsafeRawBufferPointer) -> Bool {
        Self.withNonce(counter) { nonce in
            CCryptoBoringSSL_EVP_AEAD_CTX_open_gather(
                context, text.baseAddress?.assumingMemoryBound(to: UInt8.self), nonce, 12,
                text.baseAddress?.assumingMemoryBound(to: UInt8.self), text.count, tag.assumingMemoryBound(to: UInt8.self), Self.tagLength,
                header.baseAddress?.assumingMemoryBound(to: UInt8.self), header.count)
        } == 1
    }
}
