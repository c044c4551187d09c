import FuzzSupport
import TapBridgeCore
import TapBridgeTestSupport

/// The segment coalescer's contract: whatever it merges cuts back into exactly the segments
/// that arrived, byte for byte, so merging never changes what a receiver sees. The input
/// picks a TCP super-frame (IPv4 or IPv6, its payload and segment size), which is cut as the
/// kernel would; then it corrupts bytes of chosen segments, drops or repeats some; the train
/// goes through the coalescer, and every frame it built, cut again, must give back the train.
nonisolated(unsafe) let finisher = OffloadFinisher()

func cut(_ frame: [UInt8], _ offload: FrameOffload) -> [[UInt8]] {
    var out: [[UInt8]] = []
    let r = frame.withUnsafeBytes { finisher.segment($0, offload, maximumFrameLength: 70_000) { out.append(Array($0)) } }
    guard case .success = r else { return [frame] }
    return out
}

@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    guard data.count >= 4 else { return }
    let payload = Int(UInt16(data[0]) << 8 | UInt16(data[1])) % 20_000 + 1
    let size = max(OffloadFinisher.minimumTCPSegmentSize, Int(data[2]) * 8 + 48)
    let built = FrameFactory.tcp(payload: payload, ipv6: data[3] & 1 == 1, flags: data[3] & 0x08 != 0 ? 0x18 : 0x10, segmentSize: size)
    var train = cut(built.frame, built.offload)
    // edits: (segment, what, where, value) in 4-byte steps
    var k = 4
    while k + 4 <= data.count, train.count < 400 {
        let i = Int(data[k]) % train.count
        switch data[k + 1] % 4 {
        case 0:
            let at = Int(data[k + 2]) % train[i].count
            train[i][at] ^= data[k + 3] | 1
        case 1: train.remove(at: i)
        case 2: train.insert(train[i], at: i)
        default: train.swapAt(i, Int(data[k + 3]) % train.count)
        }
        if train.isEmpty { return }
        k += 4
    }
    let capacity = 70_000
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
    defer { buffer.deallocate() }
    var coalescer = SegmentCoalescer()
    var started = false
    var group: [[UInt8]] = []
    func close() {
        let (length, offload) = coalescer.end()
        let made = Array(UnsafeRawBufferPointer(start: buffer, count: length))
        let again = offload.isSegmentation ? cut(made, offload) : [made]
        precondition(again == group, "segment(coalesce(x)) != x: \(group.count) segments in, \(again.count) out")
    }
    for segment in train {
        if started, segment.withUnsafeBytes({ coalescer.append($0) }) {
            group.append(segment)
            continue
        }
        if started { close() }
        segment.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: segment.count) }
        coalescer.begin(buffer, length: segment.count, capacity: capacity)
        group = [segment]
        started = true
    }
    if started { close() }
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-coalescer") } }
#endif
