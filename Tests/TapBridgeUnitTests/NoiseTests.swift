import Crypto
@testable import TapBridgeDevices
import TapBridgeTestSupport
import Testing

/// The handshake of `encap=sealed` against the published test vectors for
/// Noise_IKpsk2_25519_ChaChaPoly_SHA256 (cacophony's vector file, as the Noise implementations
/// snow and noise-c check themselves against): both handshake messages byte for byte, the
/// handshake hash, and four transport messages under the keys `split` gives.
@Suite("Noise IKpsk2 test vectors")
struct NoiseTests {
    static func bytes(_ hex: String) -> [UInt8] { FrameFactory.bytes(hex: hex) }
    static func key(_ hex: String) -> Curve25519.KeyAgreement.PrivateKey { try! .init(rawRepresentation: bytes(hex)) }

    // cacophony.txt, protocol_name "Noise_IKpsk2_25519_ChaChaPoly_SHA256"
    static let prologue = bytes("4a6f686e2047616c74")
    static let psk = bytes("54686973206973206d7920417573747269616e20706572737065637469766521")
    nonisolated(unsafe) static let initiatorStatic = key("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1")
    nonisolated(unsafe) static let initiatorEphemeral = key("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a")
    static let responderStaticPublic = bytes("31e0303fd6418d2f8c0e78b91f22e8caed0fbe48656dcf4767e4834f701b8f62")
    nonisolated(unsafe) static let responderStatic = key("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893")
    nonisolated(unsafe) static let responderEphemeral = key("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b")
    static let handshakeHash = bytes("8310f86394dc0dabb40beb8210031556db4403ab1202db7034c526232147a700")
    static let messages: [(payload: [UInt8], ciphertext: [UInt8])] = [
        (bytes("4c756477696720766f6e204d69736573"),
         bytes("ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79442ec9b09893d0f510791784c10cbc959f25b1766e0def6e301d14fbca1c7790ac829b8b3674f5f649a5f0e98479662cbfbf2b2c47cd4b09fcd266cd29d7cb675f1808849707847840f6d178ec4d3733aa")),
        (bytes("4d757272617920526f746862617264"),
         bytes("95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088439a1b3cebf680b2c74217fcb5eba4ff58a9468cd90c4aca6194f57479b379a7")),
        (bytes("462e20412e20486179656b"), bytes("a8fde7a0accec190cd306c5950d4fd8e04a205ec288aa747d8b347")),
        (bytes("4361726c204d656e676572"), bytes("59caddd9984a3bbe24c4fb31a2bd455b7eba3fa0980674b1a3a5f9")),
        (bytes("4a65616e2d426170746973746520536179"), bytes("3b9bfebd210c22ba0cff9de79b4007d7a552fffbf92616881faa8a883e25b80258")),
        (bytes("457567656e2042f6686d20766f6e2042617765726b"), bytes("f37512df1043d564d7c46ac85c53d3b6a9a05724bc297e7142808f217561651217fe85b782")),
    ]

    @Test func theHandshakeAndTransportMatchTheVectorsByteForByte() throws {
        #expect(Array(Self.responderStatic.publicKey.rawRepresentation) == Self.responderStaticPublic)
        var initiator = Noise.Initiator(prologue: Self.prologue, staticKey: Self.initiatorStatic, responderStatic: Self.responderStaticPublic,
                                        presharedKey: Self.psk, ephemeral: Self.initiatorEphemeral)
        var responder = Noise.Responder(prologue: Self.prologue, staticKey: Self.responderStatic, ephemeral: Self.responderEphemeral)

        let written = initiator.writeInitiation(payload: Self.messages[0].payload)
        let first = try #require(written)
        #expect(first == Self.messages[0].ciphertext)
        #expect(responder.readInitiation(first) == Self.messages[0].payload)
        #expect(responder.initiatorStatic == Array(Self.initiatorStatic.publicKey.rawRepresentation))

        let answered = responder.writeResponse(payload: Self.messages[1].payload, presharedKey: Self.psk)
        let second = try #require(answered)
        #expect(second == Self.messages[1].ciphertext)
        #expect(initiator.readResponse(second) == Self.messages[1].payload)
        #expect(initiator.state.hash == Self.handshakeHash && responder.state.hash == Self.handshakeHash)

        // transport: messages alternate, initiator first; each direction counts from 0
        let (toResponder, toInitiator) = initiator.state.split()
        #expect(responder.state.split() == initiator.state.split())
        for (k, m) in Self.messages.dropFirst(2).enumerated() {
            let key = k % 2 == 0 ? toResponder : toInitiator, n = UInt64(k / 2)
            #expect(Noise.encrypt(key, n, [], m.payload) == m.ciphertext)
            #expect(Noise.decrypt(key, n, [], m.ciphertext) == m.payload)
            #expect(Self.sealedInPlace(key: key, counter: n, payload: m.payload) == m.ciphertext, "the in-place cipher of transport datagrams")
        }
    }

    /// `SealedCipher` (BoringSSL's AEAD context, in place), with nothing authenticated beside.
    static func sealedInPlace(key: [UInt8], counter: UInt64, payload: [UInt8]) -> [UInt8] {
        var buffer = payload + [UInt8](repeating: 0, count: 16)
        buffer.withUnsafeMutableBytes { b in
            SealedCipher(key: key).seal(UnsafeMutableRawBufferPointer(rebasing: b[..<payload.count]), tag: b.baseAddress! + payload.count, counter: counter,
                                        header: UnsafeRawBufferPointer(start: nil, count: 0))
        }
        var opened = buffer
        let ok = opened.withUnsafeMutableBytes { b in
            SealedCipher(key: key).open(UnsafeMutableRawBufferPointer(rebasing: b[..<payload.count]), tag: b.baseAddress! + payload.count, counter: counter,
                                        header: UnsafeRawBufferPointer(start: nil, count: 0))
        }
        precondition(ok && Array(opened.prefix(payload.count)) == payload, "the in-place cipher did not open what it sealed")
        return buffer
    }

    /// The keyed MAC of mac1 (BoringSSL's HMAC context, keyed once and reused) is swift-crypto's
    /// HMAC-SHA256 cut to 16 bytes, message after message.
    @Test func theMACIsHMACSHA256CutTo16Bytes() {
        let key = (0..<32).map { UInt8($0 &* 7) }
        let mac = SealedMAC(key: key)
        for n in [0, 1, 55, 64, 116, 300] {
            let message = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
            let expected = Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)).prefix(16))
            #expect(message.withUnsafeBytes { mac.mac($0) } == expected, "\(n) bytes")
            #expect(message.withUnsafeBytes { m in expected.withUnsafeBytes { mac.verifies(m, tag: $0) } })
            var wrong = expected
            wrong[15] ^= 1
            #expect(!message.withUnsafeBytes { m in wrong.withUnsafeBytes { mac.verifies(m, tag: $0) } })
            // the handshake's one-pass HMAC (HKDF), over the message in two parts, and keys of
            // other lengths (a 16-byte cookie, a 100-byte key hashed first)
            for k in [key, Array(key.prefix(16)), (0..<100).map { UInt8($0) }] {
                let full = Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: k)))
                #expect(SealedMAC.hmac(key: k, [Array(message.prefix(n / 2)), Array(message.dropFirst(n / 2))]) == full, "\(n) bytes, key \(k.count)")
            }
        }
    }

    @Test func aChangedMessageOrAnotherPresharedKeyIsRefused() throws {
        var initiator = Noise.Initiator(prologue: Self.prologue, staticKey: Self.initiatorStatic, responderStatic: Self.responderStaticPublic,
                                        presharedKey: Self.psk, ephemeral: Self.initiatorEphemeral)
        let written = initiator.writeInitiation(payload: [])
        let first = try #require(written)
        for i in [0, 40, first.count - 1] {
            var changed = first
            changed[i] ^= 1
            var responder = Noise.Responder(prologue: Self.prologue, staticKey: Self.responderStatic)
            #expect(responder.readInitiation(changed) == nil)
        }
        var responder = Noise.Responder(prologue: Self.prologue, staticKey: Self.responderStatic)
        #expect(responder.readInitiation(first) == [])
        let answered = responder.writeResponse(payload: [], presharedKey: [UInt8](repeating: 7, count: 32))
        let response = try #require(answered)
        #expect(initiator.readResponse(response) == nil)
    }

    /// The cookie reply's cipher, XChaCha20-Poly1305, against draft-irtf-cfrg-xchacha-03's
    /// AEAD example (A.3.1): its ciphertext and tag, and a changed byte refused.
    @Test func theCookieCipherMatchesTheXChaCha20Poly1305Vector() throws {
        let cipher = SealedCipher(key: Self.bytes("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"), extendedNonce: true)
        let nonce = Self.bytes("404142434445464748494a4b4c4d4e4f5051525354555657"), ad = Self.bytes("50515253c0c1c2c3c4c5c6c7")
        let text = Array("Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".utf8)
        let expected = Self.bytes("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
            + "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e" + "c0875924c1c7987947deafd8780acf49")
        let sealed = cipher.seal(text, nonce: nonce, ad: ad)
        #expect(sealed == expected)
        #expect(cipher.open(sealed, nonce: nonce, ad: ad) == text)
        var changed = sealed
        changed[7] ^= 0x80
        #expect(cipher.open(changed, nonce: nonce, ad: ad) == nil)
        #expect(cipher.open(sealed, nonce: nonce, ad: Array(ad.dropLast())) == nil)
    }
}
