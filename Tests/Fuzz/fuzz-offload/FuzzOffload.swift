import FuzzSupport
import TapBridgeCore

/// What a TAP or a packet socket hands over: a virtio-net header (the input's first 10 bytes)
/// and a frame (the rest). Validation must refuse what it cannot finish; what it takes is
/// finished (checksum completed, segmented) within the buffer, never into more segments than
/// `inspect` announced, and never into more than the input's size warrants (the DoS bound:
/// TCP segments of at least 48 bytes, at most 128 UDP segments).
nonisolated(unsafe) let finisher = OffloadFinisher()

@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    guard data.count > 10, let offload = FrameOffload(virtioHeader: UnsafeRawBufferPointer(rebasing: data[0..<10])) else { return }
    let frame = UnsafeRawBufferPointer(rebasing: data[10...])
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: frame.count, alignment: 8)
    defer { copy.deallocate() }
    copy.copyMemory(from: frame)
    _ = OffloadFinisher.verifiesChecksum(frame)
    _ = OffloadFinisher.tcpCut(of: frame)
    _ = OffloadFinisher.repairPartialChecksum(copy)
    clampKeepsTheChecksum(frame, limit: 600 + Int(data[9]) * 4)
    switch OffloadFinisher.inspect(frame, offload) {
    case .failure:
        return
    case .success(let announced):
        precondition(announced >= 1 && announced <= max(128, frame.count / OffloadFinisher.minimumTCPSegmentSize + 1), "\(announced) segments from \(frame.count) bytes")
        var produced = 0
        finisher.complete(frame, offload) { segment in
            produced += 1
            precondition(segment.count <= 65_557, "a segment larger than any frame")
        }
        precondition(produced <= announced, "\(produced) segments, \(announced) announced")
        if !offload.isSegmentation && !offload.isComplete {
            copy.copyMemory(from: frame)
            OffloadFinisher.completeChecksum(copy, offload)
        }
    }
}

/// The MSS clamp (a SYN crossing a remote) on any frame: it changes nothing but the option's
/// two bytes and the checksum's two, and a segment whose checksum verified still verifies.
func clampKeepsTheChecksum(_ frame: UnsafeRawBufferPointer, limit: Int) {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: frame.count, alignment: 8)
    defer { copy.deallocate() }
    copy.copyMemory(from: frame)
    guard MSSClamp.clamp(copy, maximumFrameLength: limit) else {
        precondition(copy.elementsEqual(frame), "a frame the clamp left alone changed")
        return
    }
    let changed = (0..<frame.count).filter { copy[$0] != frame[$0] }
    precondition(changed.count <= 4, "the clamp changed \(changed.count) bytes")
    if OffloadFinisher.verifiesChecksum(frame) == true {
        precondition(OffloadFinisher.verifiesChecksum(UnsafeRawBufferPointer(copy)) == true, "the clamp broke a good checksum")
    }
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-offload") } }
#endif
