import FuzzSupport
import TapBridgeCore
import TapBridgeDevices

/// Datagrams as a remote's socket delivers them. The input's first byte picks the check:
/// 0-1: the bytes as a VXLAN datagram (VNI 42) and as a raw one: an opened frame is the
/// datagram's bytes after the header, in place; and as an ICMP error's quote; 2-255: sealed datagrams, made by a sender
/// holding the key from the input's frames, then some corrupted (the input says which byte
/// and how) and some repeated, with time passing: every intact datagram opens to exactly its
/// frame, once, and no corrupted or repeated one opens at all. The receiver opens each at the
/// time it was sent (a datagram opened 15 minutes after its session began is refused as a
/// replay, rightly: the harness once opened them all at the end, and that was its own bug).
nonisolated(unsafe) let vxlan = VXLANFormat(vni: VNI(42)!)
nonisolated(unsafe) let raw = RawFormat()
let key = try! SealedKey(hex: String(repeating: "5a", count: 32))

@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    guard data.count > 1 else { return }
    let body = UnsafeRawBufferPointer(rebasing: data[1...])
    if data[0] < 2 {
        for format in [vxlan, raw] as [any EncapsulationFormat] {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: body.count, alignment: 8)
            defer { copy.deallocate() }
            copy.copyMemory(from: body)
            if case .frame(let frame) = format.open(copy) {
                precondition(frame.baseAddress == copy.baseAddress! + format.headerLength && frame.count == copy.count - format.headerLength)
            }
        }
        _ = VXLANHeader.decode(body)
        // the same bytes as what an ICMP error quotes: believed only if they start with the
        // format's own header (and, for VXLAN, VNI 42)
        if vxlan.mayHaveSent(body) { precondition(body.count >= 22 && body[0] == 0x08 && body[6] == 42) }
        if raw.mayHaveSent(body) { precondition(body.count >= 14) }
        return
    }
    // sealed: records of [length][edit position][edit value][frame bytes]
    var clock: UInt64 = 1_800_000_000, receiverClock = clock
    let sender = SealedFormat(keyring: SealedKeyring(key: key, clock: { clock }, random: { 7 }), vni: VNI(42)!)
    let receiver = SealedFormat(keyring: SealedKeyring(key: key, clock: { receiverClock }, random: { 9 }), vni: VNI(42)!)
    var sent: [(datagram: [UInt8], frame: [UInt8]?, at: UInt64)] = []  // frame nil: must not open
    var k = 0
    while k + 3 <= body.count, sent.count < 64 {
        let length = min(Int(body[k]) * 4 + 14, body.count - k - 3)
        let edit = (Int(body[k + 1]), body[k + 2])
        guard length >= 0 else { break }
        let frame = Array(body[(k + 3)..<(k + 3 + length)])
        k += 3 + length
        var datagram = [UInt8](repeating: 0, count: Sealed.headerLength + frame.count + Sealed.tagLength)
        let n = datagram.withUnsafeMutableBytes { d in
            d.baseAddress!.advanced(by: Sealed.headerLength).copyMemory(from: frame, byteCount: frame.count)
            return sender.seal(d.baseAddress!, frameLength: frame.count)
        }
        precondition(n == datagram.count)
        if edit.1 != 0, edit.0 % 3 == 0 {
            let at = (edit.0 * 7 + Int(edit.1)) % datagram.count
            datagram[at] ^= edit.1
            sent.append((datagram, nil, clock))  // corrupted: must not open
        } else {
            sent.append((datagram, frame, clock))
        }
        if edit.0 % 5 == 1, let last = sent.last { sent.append((last.datagram, nil, clock)) }  // a replay: must not open
        if edit.0 % 11 == 2 { clock += 30 }
    }
    for (datagram, frame, at) in sent {
        receiverClock = at
        var copy = datagram
        let opened: [UInt8]? = copy.withUnsafeMutableBytes { d in
            if case .frame(let f) = receiver.open(d) { return Array(f) }
            return nil
        }
        if let frame {
            precondition(opened == frame, "an intact datagram did not open to its frame")
        } else {
            precondition(opened == nil, "a corrupted or replayed datagram opened")
        }
    }
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-encapsulation") } }
#endif
