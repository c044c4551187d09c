import FuzzSupport
import TapBridgeOptions

/// What a user (or a config file written by someone else) says: the input as text, taken as a
/// --port, --remote, --stream-listen and --listen spec, and as a config file. Each parses or
/// fails with a message; nothing traps, and a config file that parses prints back (with
/// --print-config) as a file that parses to the same settings.
@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    guard data.count <= 4096 else { return }
    let text = String(decoding: data, as: UTF8.self)
    _ = try? PortSpec(parsing: text)
    _ = try? RemoteSpec(parsing: text)
    _ = try? StreamListenSpec(parsing: text)
    _ = try? ListenSpec(parsing: text)
    guard case .run(let settings)? = try? OptionParser.parse([], configText: text, environment: ["LAB": "fz"]) else { return }
    let printed = OptionParser.yaml(settings)
    guard case .run(let again)? = try? OptionParser.parse([], configText: printed) else {
        preconditionFailure("--print-config printed a file that does not parse:\n\(printed)")
    }
    precondition(OptionParser.yaml(again) == printed, "--print-config is not a fixed point")
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-specs") } }
#endif
