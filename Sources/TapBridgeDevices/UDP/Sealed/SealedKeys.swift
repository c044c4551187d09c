import Foundation
import Glibc
import Synchronization
public import TapBridgeCore
public import Crypto

/// A host's sealed identity: its Curve25519 private key, read from its key file (`--key-file`,
/// or `key=` on a remote), and what the handshake derives from it once. One per key file,
/// shared by every sealed remote that names it.
///
/// A key file holds 32 bytes in base64 on one line, as WireGuard's (`tapbridge genkey PATH`;
/// `tapbridge pubkey < PATH` prints the public key to give the peers).
public final class SealedIdentity: @unchecked Sendable {
    let privateKey: Curve25519.KeyAgreement.PrivateKey
    /// The public key, as peers name it (`peer=`).
    public let publicKey: [UInt8]
    /// The key of `mac1` in messages sent to this host: HASH("mac1----" || public key).
    let mac1Key: SealedMAC
    /// The key of the cookie replies this host sends.
    let cookieCipher: SealedCipher
    /// What its remotes share: the index table, the peers by key, the load meter, the cookie
    /// secret.
    let directory: SealedDirectory

    /// `loadThreshold`: initiations a second past which it is under load and answers with
    /// cookie replies (64; tests lower it).
    public init(privateKey: Curve25519.KeyAgreement.PrivateKey, loadThreshold: Int = 64) {
        self.privateKey = privateKey
        publicKey = Array(privateKey.publicKey.rawRepresentation)
        mac1Key = SealedMessage.mac1Key(of: publicKey)
        cookieCipher = SealedMessage.cookieCipher(of: publicKey)
        directory = SealedDirectory(loadThreshold: loadThreshold)
    }

    /// The identity in the key file at `path` (see `SealedKeyFile.read`): one object per key,
    /// however many remotes name the file, so that they share one index table and one load
    /// meter (as a WireGuard interface's peers do).
    public static func loaded(file path: String) throws(StartupError) -> SealedIdentity {
        let bytes = try SealedKeyFile.read(path, what: "key file")
        guard let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: bytes) else { throw StartupError("key file \(path): not a Curve25519 private key") }
        let publicKey = Array(key.publicKey.rawRepresentation)
        return loadedIdentities.withLock { known in
            if let identity = known[publicKey]?.identity { return identity }
            let identity = SealedIdentity(privateKey: key)
            known[publicKey] = WeakIdentity(identity: identity)
            return identity
        }
    }
    struct WeakIdentity { weak var identity: SealedIdentity? }
    private static let loadedIdentities = Mutex<[[UInt8]: WeakIdentity]>([:])

    /// A fresh private key, base64, as a key file holds it.
    public static func generate() -> String { Data(Curve25519.KeyAgreement.PrivateKey().rawRepresentation).base64EncodedString() }

    /// The public key of the private key in `text` (a key file's contents), base64.
    public static func publicKey(ofKeyText text: String) throws(StartupError) -> String {
        let bytes = try SealedKeyFile.decode(text, what: "the key")
        guard let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: bytes) else { throw StartupError("not a Curve25519 private key") }
        return Data(key.publicKey.rawRepresentation).base64EncodedString()
    }
}

/// 32-byte keys in files and on the command line: base64, one line.
public enum SealedKeyFile {
    /// The 32 bytes of a public key given as `peer=` (44 characters of base64).
    public static func publicKey(_ text: String) throws(StartupError) -> [UInt8] {
        let bytes = try decode(text, what: "peer=")
        guard (try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: bytes)) != nil else { throw StartupError("peer= is not a Curve25519 public key") }
        return bytes
    }

    /// The 32 bytes in `text`: base64 (surrounding white space ignored). A sealed v1 key (64
    /// hex digits) is refused with what to do instead.
    static func decode(_ text: String, what: String) throws(StartupError) -> [UInt8] {
        let t = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if t.count == 64, t.allSatisfy(\.isHexDigit) {
            throw StartupError("\(what) is a sealed v1 pre-shared key (64 hex digits); sealed v2 gives each host its own key: tapbridge genkey PATH on each host, tapbridge pubkey < PATH, and peer=PUBKEY on each remote (Docs/Security.md)")
        }
        guard let data = Data(base64Encoded: t), data.count == 32 else {
            throw StartupError("\(what) must be 32 bytes in base64 (44 characters, as tapbridge genkey writes and tapbridge pubkey prints)")
        }
        return Array(data)
    }

    /// The 32-byte key in the file at `path`, which only its owner may read or write (a key
    /// others can read is refused, as ssh refuses such a private key). The file is opened
    /// without following a symbolic link, and checked on the descriptor read (`fstat`): what
    /// is checked is what is read.
    public static func read(_ path: String, what: String) throws(StartupError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            throw StartupError("\(what) \(path): \(errno == ELOOP ? "a symbolic link (name the file itself)" : String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw StartupError("\(what) \(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFREG else { throw StartupError("\(what) \(path): not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw StartupError("\(what) \(path) can be read or written by others (mode \(String(st.st_mode & 0o777, radix: 8))); make it the owner's alone: chmod 600 \(path)")
        }
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = Glibc.read(fd, &buffer, buffer.count)
        guard n >= 0 else { throw StartupError("\(what) \(path): \(String(cString: strerror(errno)))") }
        return try decode(String(decoding: buffer.prefix(n), as: UTF8.self), what: "\(what) \(path)")
    }

    /// Creates `path` (mode 0600, never over an existing file or through a link) holding `text`.
    public static func create(_ path: String, holding text: String) throws(StartupError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StartupError("\(path): \(String(cString: strerror(errno)))\(errno == EEXIST ? " (a key file is never overwritten: remove it first)" : "")") }
        defer { close(fd) }
        let written = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, text.utf8.count) }
        guard written == text.utf8.count else { throw StartupError("\(path): \(String(cString: strerror(errno)))") }
    }
}

/// What a sealed remote's datagrams need: this host's identity, the peer's public key
/// (`peer=`) and the pre-shared key (`psk=`, 32 zero bytes without one, as WireGuard).
public final class SealedPeerKeys: EncapsulationKey, @unchecked Sendable {
    public let identity: SealedIdentity
    public let peer: [UInt8]
    let presharedKey: [UInt8]
    /// The key of `mac1` in messages sent to the peer.
    let peerMAC1Key: SealedMAC
    /// The key of the cookie replies the peer sends.
    let peerCookieCipher: SealedCipher
    /// DH(this host's key, the peer's), the same in every handshake of the pair: computed once
    /// (as wireguard-go precomputes it), two of a handshake's ten Diffie-Hellmans saved. nil
    /// for a low-order peer key (refused when `peer=` is parsed).
    let staticStatic: [UInt8]?
    /// `keepalive=SECONDS`: an empty datagram to the peer when nothing was sent to it for that
    /// long (a NAT's mapping kept open); nil: none, as WireGuard's default.
    public let keepalive: Int64?

    public init(identity: SealedIdentity, peer: [UInt8], presharedKey: [UInt8]? = nil, keepaliveSeconds: Int? = nil) {
        self.identity = identity
        self.peer = peer
        self.presharedKey = presharedKey ?? [UInt8](repeating: 0, count: 32)
        peerMAC1Key = SealedMessage.mac1Key(of: peer)
        peerCookieCipher = SealedMessage.cookieCipher(of: peer)
        staticStatic = Noise.dh(identity.privateKey, peer)
        keepalive = keepaliveSeconds.map { Int64($0) * 1_000_000_000 }
    }

    /// The peer's key as `show ports` gives it: its first 8 base64 characters, as `wg` shortens.
    public var shortPeer: String { String(Data(peer).base64EncodedString().prefix(8)) + "…" }
}
