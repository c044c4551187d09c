import Crypto
import Foundation

/// The Noise protocol framework's handshake (revision 34), for the one pattern `encap=sealed`
/// uses: `Noise_IKpsk2_25519_ChaChaPoly_SHA256`, WireGuard's handshake with SHA-256 in place of
/// BLAKE2s (swift-crypto has no BLAKE2s).
///
/// ```
///   IKpsk2:
///     <- s
///     ...
///     -> e, es, s, ss          (initiation: the initiator's static key travels encrypted)
///     <- e, ee, se, psk        (response)
/// ```
/// Checked byte for byte against the published cacophony test vectors for that name
/// (`NoiseTests`): both messages, the handshake hash and the transport messages after `split`.
enum Noise {
    static let protocolName = Array("Noise_IKpsk2_25519_ChaChaPoly_SHA256".utf8)
    static let keyLength = 32
    static let tagLength = 16

    /// HASH (SHA-256).
    static func hash(_ parts: [UInt8]...) -> [UInt8] {
        var h = SHA256()
        for p in parts { h.update(data: p) }
        return Array(h.finalize())
    }

    static func hmac(_ key: [UInt8], _ parts: [UInt8]...) -> [UInt8] { SealedMAC.hmac(key: key, parts) }

    /// HKDF(chaining key, input key material, n): Noise §4.3 (RFC 5869 with an empty info).
    static func hkdf(_ chainingKey: [UInt8], _ inputKeyMaterial: [UInt8], outputs n: Int) -> [[UInt8]] {
        let temporary = hmac(chainingKey, inputKeyMaterial)
        var out: [[UInt8]] = []
        var previous: [UInt8] = []
        for i in 1...n {
            previous = hmac(temporary, previous, [UInt8(i)])
            out.append(previous)
        }
        return out
    }

    /// The 12-byte ChaCha20-Poly1305 nonce of counter `n`: 4 zero bytes, then `n` little-endian
    /// (Noise §12.3, as WireGuard).
    static func nonce(_ n: UInt64) -> ChaChaPoly.Nonce {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { bytes[4 + i] = UInt8(truncatingIfNeeded: n >> (8 * UInt64(i))) }
        return try! ChaChaPoly.Nonce(data: bytes)
    }

    static func encrypt(_ key: [UInt8], _ n: UInt64, _ ad: [UInt8], _ plaintext: [UInt8]) -> [UInt8] {
        let box = try! ChaChaPoly.seal(plaintext, using: SymmetricKey(data: key), nonce: nonce(n), authenticating: ad)
        return Array(box.ciphertext) + Array(box.tag)
    }

    /// nil if the tag does not verify.
    static func decrypt(_ key: [UInt8], _ n: UInt64, _ ad: [UInt8], _ ciphertext: [UInt8]) -> [UInt8]? {
        guard ciphertext.count >= tagLength,
            let box = try? ChaChaPoly.SealedBox(nonce: nonce(n), ciphertext: ciphertext.dropLast(tagLength), tag: ciphertext.suffix(tagLength))
        else { return nil }
        return (try? ChaChaPoly.open(box, using: SymmetricKey(data: key), authenticating: ad)).map(Array.init)
    }

    /// DH: X25519; nil for a public key whose result is all zeros (a low-order point).
    static func dh(_ privateKey: Curve25519.KeyAgreement.PrivateKey, _ publicKey: [UInt8]) -> [UInt8]? {
        guard let peer = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: publicKey),
            let shared = try? privateKey.sharedSecretFromKeyAgreement(with: peer)
        else { return nil }
        let bytes = shared.withUnsafeBytes { Array($0) }
        return bytes.allSatisfy { $0 == 0 } ? nil : bytes
    }

    /// The symmetric state (Noise §5.2): chaining key, handshake hash and the cipher key with
    /// its counter.
    struct SymmetricState {
        var chainingKey: [UInt8]
        var hash: [UInt8]
        var key: [UInt8]? = nil
        var n: UInt64 = 0

        /// InitializeSymmetric(protocol name), then MixHash(prologue).
        init(prologue: [UInt8]) {
            // the name is longer than HASHLEN: h = HASH(name)
            hash = Noise.hash(Noise.protocolName)
            chainingKey = hash
            mixHash(prologue)
        }

        mutating func mixHash(_ data: [UInt8]) { hash = Noise.hash(hash, data) }

        mutating func mixKey(_ inputKeyMaterial: [UInt8]) {
            let out = Noise.hkdf(chainingKey, inputKeyMaterial, outputs: 2)
            chainingKey = out[0]
            key = out[1]
            n = 0
        }

        mutating func mixKeyAndHash(_ inputKeyMaterial: [UInt8]) {
            let out = Noise.hkdf(chainingKey, inputKeyMaterial, outputs: 3)
            chainingKey = out[0]
            mixHash(out[1])
            key = out[2]
            n = 0
        }

        mutating func encryptAndHash(_ plaintext: [UInt8]) -> [UInt8] {
            guard let key else {
                mixHash(plaintext)
                return plaintext
            }
            let ciphertext = Noise.encrypt(key, n, hash, plaintext)
            n += 1
            mixHash(ciphertext)
            return ciphertext
        }

        mutating func decryptAndHash(_ ciphertext: [UInt8]) -> [UInt8]? {
            guard let key else {
                mixHash(ciphertext)
                return ciphertext
            }
            guard let plaintext = Noise.decrypt(key, n, hash, ciphertext) else { return nil }
            n += 1
            mixHash(ciphertext)
            return plaintext
        }

        /// Split(): the initiator's sending key, then the responder's.
        func split() -> (initiatorToResponder: [UInt8], responderToInitiator: [UInt8]) {
            let out = Noise.hkdf(chainingKey, [], outputs: 2)
            return (out[0], out[1])
        }
    }

    /// The initiator's side of one IKpsk2 handshake.
    struct Initiator {
        let staticKey: Curve25519.KeyAgreement.PrivateKey
        let ephemeral: Curve25519.KeyAgreement.PrivateKey
        let responderStatic: [UInt8]
        let presharedKey: [UInt8]
        var state: SymmetricState

        init(prologue: [UInt8], staticKey: Curve25519.KeyAgreement.PrivateKey, responderStatic: [UInt8], presharedKey: [UInt8],
             ephemeral: Curve25519.KeyAgreement.PrivateKey = .init()) {
            self.staticKey = staticKey
            self.ephemeral = ephemeral
            self.responderStatic = responderStatic
            self.presharedKey = presharedKey
            state = SymmetricState(prologue: prologue)
            state.mixHash(responderStatic)  // <- s
        }

        /// `-> e, es, s, ss` with `payload`: the message (32 + 48 + payload + 16 bytes); nil if
        /// the responder's key is a low-order point. `staticStatic`: DH(s, rs) computed once
        /// for this pair of keys (WireGuard's precomputed static-static), else computed here.
        mutating func writeInitiation(payload: [UInt8], staticStatic: [UInt8]? = nil) -> [UInt8]? {
            let e = Array(ephemeral.publicKey.rawRepresentation)
            state.mixHash(e)
            state.mixKey(e)  // (psk modifier: e also mixes the key)
            guard let es = Noise.dh(ephemeral, responderStatic) else { return nil }
            state.mixKey(es)
            let s = state.encryptAndHash(Array(staticKey.publicKey.rawRepresentation))
            guard let ss = staticStatic ?? Noise.dh(staticKey, responderStatic) else { return nil }
            state.mixKey(ss)
            return e + s + state.encryptAndHash(payload)
        }

        /// `<- e, ee, se, psk`: the response's payload, or nil if it does not authenticate.
        mutating func readResponse(_ message: [UInt8]) -> [UInt8]? {
            guard message.count >= 32 + Noise.tagLength else { return nil }
            let re = Array(message.prefix(32))
            state.mixHash(re)
            state.mixKey(re)
            guard let ee = Noise.dh(ephemeral, re), let se = Noise.dh(staticKey, re) else { return nil }
            state.mixKey(ee)
            state.mixKey(se)
            state.mixKeyAndHash(presharedKey)
            return state.decryptAndHash(Array(message.dropFirst(32)))
        }
    }

    /// The responder's side: reads an initiation, learns who sent it, writes the response.
    struct Responder {
        let staticKey: Curve25519.KeyAgreement.PrivateKey
        let ephemeral: Curve25519.KeyAgreement.PrivateKey
        var state: SymmetricState
        var initiatorEphemeral: [UInt8] = []
        /// The initiator's static public key, once the initiation is read.
        var initiatorStatic: [UInt8] = []

        init(prologue: [UInt8], staticKey: Curve25519.KeyAgreement.PrivateKey, ephemeral: Curve25519.KeyAgreement.PrivateKey = .init()) {
            self.staticKey = staticKey
            self.ephemeral = ephemeral
            state = SymmetricState(prologue: prologue)
            state.mixHash(Array(staticKey.publicKey.rawRepresentation))  // <- s
        }

        /// `-> e, es, s`: the initiator's static public key (one Diffie-Hellman), or nil if it
        /// does not decrypt. (Who sent an initiation, before the rest of it is read.)
        mutating func readInitiatorStatic(_ message: [UInt8]) -> [UInt8]? {
            guard message.count >= 32 + 48 + Noise.tagLength else { return nil }
            initiatorEphemeral = Array(message.prefix(32))
            state.mixHash(initiatorEphemeral)
            state.mixKey(initiatorEphemeral)
            guard let es = Noise.dh(staticKey, initiatorEphemeral) else { return nil }
            state.mixKey(es)
            guard let s = state.decryptAndHash(Array(message[32..<80])) else { return nil }
            initiatorStatic = s
            return s
        }

        /// `-> e, es, s, ss`: the payload, or nil if the message does not authenticate.
        mutating func readInitiation(_ message: [UInt8]) -> [UInt8]? {
            guard let s = readInitiatorStatic(message) else { return nil }
            return finishInitiation(message, staticStatic: Noise.dh(staticKey, s))
        }

        /// The rest of `-> e, es, s, ss` after `readInitiatorStatic`, with `staticStatic` =
        /// DH(s, rs) (precomputed for an expected initiator): the payload, or nil.
        mutating func finishInitiation(_ message: [UInt8], staticStatic: [UInt8]?) -> [UInt8]? {
            guard let ss = staticStatic else { return nil }
            state.mixKey(ss)
            return state.decryptAndHash(Array(message.dropFirst(80)))
        }

        /// `<- e, ee, se, psk` with `payload` (after `readInitiation`); nil for a low-order key.
        mutating func writeResponse(payload: [UInt8], presharedKey: [UInt8]) -> [UInt8]? {
            let e = Array(ephemeral.publicKey.rawRepresentation)
            state.mixHash(e)
            state.mixKey(e)
            guard let ee = Noise.dh(ephemeral, initiatorEphemeral), let se = Noise.dh(ephemeral, initiatorStatic) else { return nil }
            state.mixKey(ee)
            state.mixKey(se)
            state.mixKeyAndHash(presharedKey)
            return e + state.encryptAndHash(payload)
        }
    }
}
