import FuzzSupport
import TapBridgeCore

/// The stream framing (`StreamReader`): the input (after its first byte) arrives in reads of
/// the size its first byte says; every frame handed out has a length the reader takes, the
/// reader never holds more than a frame and a read, and a bad length stops it.
@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    guard data.count > 1 else { return }
    let reader = StreamReader(maximumFrame: 2_048, readSize: 256)
    var offset = 1
    let step = Int(data[0] % 64) + 1
    while offset < data.count {
        let space = reader.space()
        let n = min(step, space.count, data.count - offset)
        space.copyMemory(from: UnsafeRawBufferPointer(rebasing: data[offset..<offset + n]))
        reader.didRead(n)
        offset += n
        do {
            while let frame = try reader.next() {
                precondition(frame.count >= 1 && frame.count <= 2_048, "a frame outside the lengths taken")
            }
        } catch {
            return
        }
        precondition(reader.pendingBytes <= 4 + 2_048 + 256, "the reader holds more than a frame and a read")
    }
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-stream") } }
#endif
