import Foundation
import FuzzSupport
import TapBridgeControl

/// A control-socket request line, as a client may send it: the decoder takes it or refuses it
/// with an error, never traps; what it takes encodes and decodes to itself.
@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    let line = Data(data.prefix { $0 != UInt8(ascii: "\n") })
    guard let request = try? ControlCoding.decoder().decode(ControlRequest.self, from: line) else { return }
    let again = try! ControlCoding.decoder().decode(ControlRequest.self, from: ControlCoding.encoder().encode(request))
    precondition(again == request, "a request does not survive its own encoding")
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-control") } }
#endif
