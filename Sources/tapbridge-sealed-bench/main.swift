// Sealed handshake microbenchmark: what each kind of handshake message costs the bridge that
// receives it, one thread, on this machine (Docs/Benchmarks.md, "Sealed handshakes: what each message costs its receiver").
//
//   swift run -c release tapbridge-sealed-bench [--quick]
//
// Each figure is the median of 5 runs, in microseconds of CPU per message:
//   handshake            a whole handshake, both sides (initiation, response, keepalive)
//   initiation           a responder taking an initiation and answering it (not under load)
//   initiation, loaded   the same initiation under load, without mac2: a cookie reply
//   bad mac1             an initiation-shaped datagram from someone without the key
//   unknown index        a transport datagram under an index no session has
import Crypto
import Foundation
import TapBridgeCore
import TapBridgeDevices

let quick = CommandLine.arguments.contains("--quick")
let keyA = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 0x5a, count: 32))
let keyB = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 0xa5, count: 32))
let identityA = SealedIdentity(privateKey: keyA, loadThreshold: .max)
let identityB = SealedIdentity(privateKey: keyB, loadThreshold: .max), loadedB = SealedIdentity(privateKey: keyB, loadThreshold: 0)
let keysOfA = SealedPeerKeys(identity: identityA, peer: identityB.publicKey)
nonisolated(unsafe) var clock: Int64 = 1_000_000_000

final class Box { var messages: [[UInt8]] = [] }

func format(_ keys: SealedPeerKeys, _ out: Box) -> SealedFormat {
    let f = SealedFormat(keys: keys, vni: VNI(1)!, clock: { clock },
                         timestamp: { SealedMessage.timestamp(seconds: clock / 1_000_000_000, nanoseconds: Int32(clock % 1_000_000_000)) })
    f.connect { out.messages.append(Array($0)) }
    return f
}

@discardableResult
func open(_ f: SealedFormat, _ datagram: [UInt8]) -> Bool {
    var d = datagram
    return d.withUnsafeMutableBytes { f.open($0).isTaken }
}

/// Microseconds per call of `body` over `n` calls (after `prepare`, untimed), median of 5.
func measure(_ n: Int, prepare: () -> Void = {}, _ body: (Int) -> Void) -> Double {
    var runs: [Double] = []
    for _ in 0..<5 {
        prepare()
        let start = ContinuousClock.now
        for i in 0..<n { body(i) }
        let elapsed = ContinuousClock.now - start
        runs.append(Double(elapsed.components.attoseconds) / 1e12 / Double(n) + Double(elapsed.components.seconds) * 1e6 / Double(n))
    }
    return runs.sorted()[2]
}

/// `n` initiations from A to B, each from a new A a millisecond later (newer timestamps).
func initiations(_ n: Int) -> [[UInt8]] {
    (0..<n).map { _ in
        clock += 1_000_000
        let out = Box()
        _ = format(keysOfA, out).readyToSend()
        return out.messages[0]
    }
}

let n = quick ? 50 : 400
var results: [(String, Double)] = []

results.append(("handshake", measure(n) { _ in
    clock += 1_000_000
    let toB = Box(), toA = Box()
    let a = format(keysOfA, toB), b = format(SealedPeerKeys(identity: identityB, peer: identityA.publicKey), toA)
    _ = a.readyToSend()
    open(b, toB.messages.removeFirst())
    open(a, toA.messages.removeFirst())
    precondition(open(b, toB.messages.removeFirst()), "the handshake did not complete")
}))

var prepared: [[UInt8]] = []
var responder = format(SealedPeerKeys(identity: identityB, peer: identityA.publicKey), Box())
results.append(("initiation", measure(n, prepare: {
    prepared = initiations(n)
    responder = format(SealedPeerKeys(identity: identityB, peer: identityA.publicKey), Box())
}) { i in precondition(open(responder, prepared[i])) }))

let loadedKeys = SealedPeerKeys(identity: loadedB, peer: identityA.publicKey)
results.append(("initiation, loaded", measure(n * 10, prepare: {
    prepared = initiations(n * 10)
    responder = format(loadedKeys, Box())
}) { i in
    var d = prepared[i]
    d.withUnsafeMutableBytes { if case .reply = responder.open($0) {} else { preconditionFailure("no cookie reply") } }
}))

var rng = SystemRandomNumberGenerator()
let garbage = (0..<1000).map { _ in [1, 0, 0, 0] + (4..<148).map { _ in UInt8.random(in: 0...255, using: &rng) } }
results.append(("bad mac1", measure(n * 100) { i in precondition(!open(responder, garbage[i % garbage.count])) }))
let strays = (0..<1000).map { _ in [4, 0, 0, 1] + (4..<96).map { _ in UInt8.random(in: 0...255, using: &rng) } }
results.append(("unknown index", measure(n * 100) { i in precondition(!open(responder, strays[i % strays.count])) }))

for (name, us) in results { print(name.padding(toLength: 20, withPad: " ", startingAt: 0) + String(format: "%10.2f µs", us)) }
