// Core microbenchmark: decisions per second of the pure learning-switch core, one thread.
//
//   swift run -c release tapbridge-core-bench [--quick]
//
// Scenarios (each measured 5 times, median printed):
//   learned-unicast   A -> B, both learned: learn (refresh) + lookup + unicast
//   flood             broadcast from A on a 4-port bridge
//   full-table        8192-entry table, every frame from a new random source MAC
//                     (learn evicts, fairly, on every frame), to a learned destination
// Two layers are measured: `decide` (Bridge.decide alone) and `engine` (the forwarding
// engine: batch, decide, egress tagging, transmit to a device that discards).
import TapBridgeCore
#if canImport(Glibc)
import Glibc  // libm for rounding; the core itself imports nothing
#endif
import TapBridgeTestSupport

final class DiscardDevice: PortDevice {
    var pollDescriptor: Int32? { nil }
    var frames: [[UInt8]] = []
    var next = 0
    var port = PortID(0)
    var sent = 0
    func didAddPort(_ port: PortID, name: String) { self.port = port }
    func receive(into batch: FrameBatch) throws(PortError) -> Int {
        var n = 0
        while !batch.isFull, next < frames.count {
            frames[next].withUnsafeBytes { batch.append($0, from: port) }
            next += 1
            n += 1
        }
        return n
    }
    func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        sent &+= frame.count
        return .sent
    }
}

struct Scenario {
    var name: String
    var ports: Int
    var maximumEntries: Int
    var frames: [[UInt8]]
    /// Frames from port 1 sent once before timing, to learn destinations.
    var warmup: [[UInt8]]
}

let quick = CommandLine.arguments.contains("--quick")
let count = quick ? 200_000 : 2_000_000
let A = FrameFactory.host(0xA), B = FrameFactory.host(0xB)
var rng = SystemRandomNumberGenerator()
let scenarios = [
    Scenario(name: "learned-unicast", ports: 2, maximumEntries: 8192,
             frames: [FrameFactory.frame(to: B, from: A)], warmup: [FrameFactory.frame(to: A, from: B)]),
    Scenario(name: "flood", ports: 4, maximumEntries: 8192,
             frames: [FrameFactory.frame(to: .broadcast, from: A)], warmup: []),
    Scenario(name: "full-table", ports: 4, maximumEntries: 8192,
             frames: (0..<65_536).map { _ in
                 FrameFactory.frame(to: B, from: MACAddress(rawValue: UInt64.random(in: 0...0xFFFF_FFFF_FFFF, using: &rng) & ~0x0100_0000_0000 | 0x0200_0000_0000))
             },
             warmup: [FrameFactory.frame(to: A, from: B)]),
]

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

func measureDecide(_ s: Scenario) -> Double {
    let bridge = Bridge(configuration: .init(table: .init(maximumEntries: s.maximumEntries)))
    let ports = (0..<s.ports).map { _ in bridge.addPort() }
    var now = Instant(nanoseconds: 1)
    for f in s.warmup { f.withUnsafeBytes { _ = bridge.decide($0, from: ports[1], at: now) } }
    // fill the table first so "full-table" measures the steady state
    for f in s.frames { f.withUnsafeBytes { _ = bridge.decide($0, from: ports[0], at: now) } }
    var sink = 0
    let clock = ContinuousClock()
    let elapsed = clock.measure {
        for i in 0..<count {
            now.nanoseconds &+= 1
            s.frames[i & (s.frames.count - 1)].withUnsafeBytes {
                if case .unicast(let p, _) = bridge.decide($0, from: ports[0], at: now) { sink &+= p.index }
            }
        }
    }
    precondition(sink >= 0)
    return Double(count) / Double(elapsed.nanoseconds) * 1e9
}

func measureEngine(_ s: Scenario) -> Double {
    let bridge = Bridge(configuration: .init(table: .init(maximumEntries: s.maximumEntries)))
    let engine = ForwardingEngine(bridge: bridge, batch: FrameBatch(capacity: 64, frameCapacity: 2048), budgetPerService: .max)
    let devices = (0..<s.ports).map { _ in DiscardDevice() }
    for (i, d) in devices.enumerated() { engine.addPort(named: "d\(i)", on: d) }
    var now = Instant(nanoseconds: 1)
    devices[1].frames = s.warmup
    try! engine.service(devices[1], at: now)
    devices[0].frames = s.frames
    try! engine.service(devices[0], at: now)
    // repeat the frame list enough times to reach `count`
    let rounds = max(1, count / s.frames.count)
    var frames: [[UInt8]] = []
    frames.reserveCapacity(rounds * s.frames.count)
    for _ in 0..<rounds { frames += s.frames }
    devices[0].frames = frames
    devices[0].next = 0
    now.nanoseconds += 1
    let clock = ContinuousClock()
    let elapsed = clock.measure { try! engine.service(devices[0], at: now) }
    return Double(frames.count) / Double(elapsed.nanoseconds) * 1e9
}

print("tapbridge core benchmark: \(count) frames per run, 5 runs, median; one thread")
print("scenario          layer    M decisions/s   ns/decision")
for s in scenarios {
    for (layer, f) in [("decide", measureDecide), ("engine", measureEngine)] {
        let rate = median((0..<5).map { _ in f(s) })
        print(pad(s.name, 18) + pad(layer, 9) + pad(format2(rate / 1e6), 16) + format2(1e9 / rate))
    }
}

func format2(_ x: Double) -> String { String((x * 100).rounded() / 100) }
func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }

// The software fallback for offloaded frames: checksum throughput, and the cost of checking a
// complete frame from a remote for a partial checksum (the same-host VTEP repair).
func measureChecksum(bytes: Int) -> Double {
    let data = (0..<bytes).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    let rounds = max(1, 200_000_000 / bytes)
    var sink: UInt64 = 0
    let elapsed = ContinuousClock().measure {
        data.withUnsafeBytes { p in
            for _ in 0..<rounds { sink &+= InternetChecksum.sum(p.baseAddress!, count: bytes) }
        }
    }
    precondition(sink != 1)
    return Double(rounds * bytes) / Double(elapsed.nanoseconds)  // bytes per ns = GB/s
}

func measureRepairCheck() -> Double {
    // a complete 1,514-byte TCP frame: the check parses it and compares a pseudo-header sum
    var frame = FrameFactory.frame(to: A, from: B, etherType: 0x0800, payload: [UInt8](repeating: 7, count: 1500))
    frame[14] = 0x45; frame[16] = 0x05; frame[17] = 0xDC; frame[23] = 6; frame[46] = 0x50
    let rounds = 2_000_000
    var repaired = 0
    let elapsed = ContinuousClock().measure {
        for _ in 0..<rounds {
            frame.withUnsafeMutableBytes { if OffloadFinisher.repairPartialChecksum($0) == .completed { repaired += 1 } }
        }
    }
    precondition(repaired <= rounds)
    return Double(elapsed.nanoseconds) / Double(rounds)
}

print("")
print("checksum (fast sum)    1,500 B: \(format2(measureChecksum(bytes: 1500))) GB/s   64 KiB: \(format2(measureChecksum(bytes: 65_536))) GB/s")
print("partial-checksum check on a complete 1,514-byte TCP frame from a remote: \(format2(measureRepairCheck())) ns")
