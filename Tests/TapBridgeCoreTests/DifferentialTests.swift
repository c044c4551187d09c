import Testing
import TapBridgeCore
import TapBridgeTestSupport

/// A small deterministic PRNG (SplitMix64) so a failing seed replays exactly.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The bridge under test, wired as the daemon wires it: some ports on their own device, some
/// sharing one device that queues its transmits until the flush (as the UDP socket carries the
/// remotes).
final class DifferentialLAN {
    let clock = ManualClock()
    let bridge: Bridge
    let engine: ForwardingEngine
    let shared = SharedVirtualDevice()
    var own: [VirtualPort?] = []
    var ports: [PortID] = []

    init(configuration: Bridge.Configuration, ports configurations: [PortConfiguration], sharing: [Bool]) {
        bridge = Bridge(configuration: configuration)
        engine = ForwardingEngine(bridge: bridge, batch: FrameBatch(capacity: 8, frameCapacity: 70_000, headroom: 64))
        for (i, c) in configurations.enumerated() {
            let device: any PortDevice = sharing[i] ? shared : VirtualPort()
            own.append(device as? VirtualPort)
            ports.append(engine.addPort(named: "p\(i)", configuration: c, on: device))
        }
    }

    /// Receives `frame` on port `index`, forwards until every device is idle; returns what each
    /// port sent, by port index.
    func send(_ frame: [UInt8], on index: Int) -> [[[UInt8]]] {
        if let port = own[index] { port.receiveQueue.append(frame) } else { shared.receiveQueue.append((ports[index], frame)) }
        var devices: [any PortDevice] = own.compactMap { $0 }
        devices.append(shared)
        while devices.map({ (try? engine.service($0, at: clock.now)) ?? 0 }).reduce(0, +) > 0 {}
        var out = ports.indices.map { own[$0]?.transmitted ?? [] }
        for t in shared.transmitted { if let i = ports.firstIndex(of: t.port) { out[i].append(t.frame) } }
        for port in own { port?.transmitted.removeAll() }
        shared.transmitted.removeAll()
        return out
    }
}

/// Runs `steps` random frames through `Bridge` (via the engine, virtual ports and one device
/// shared by several ports) and `ReferenceBridge`, with sweeps, flushes and a port removed on
/// the way; returns a failure description or nil.
/// `delivered` grows by the frames both bridges delivered (a run that delivers nothing agrees
/// vacuously, so callers check it).
func differential(seed: UInt64, steps: Int, delivered: inout Int) -> String? {
    var rng = SplitMix64(state: seed)
    let portModes: [VLANMode] = [
        .access(1), .access(1), .access(10),
        .trunk(allowed: [10, 20], native: 1), .trunk(allowed: [1, 20], native: nil),
    ]
    let portCount = Int.random(in: 2...5, using: &rng)
    let table = ForwardingTable.Configuration(
        ageingTime: .seconds(Int.random(in: 5...60, using: &rng)),
        maximumEntries: Int.random(in: 4...24, using: &rng),
        maximumEntriesPerPort: Bool.random(using: &rng) ? Int.random(in: 2...8, using: &rng) : nil,
        moveHoldDown: Bool.random(using: &rng) ? .seconds(Int.random(in: 1...5, using: &rng)) : nil)
    let config = Bridge.Configuration(table: table, isHub: Int.random(in: 0..<10, using: &rng) == 0,
                                      forwardsLinkLocal: Bool.random(using: &rng), maximumFrameLength: 200)
    let configs = (0..<portCount).map { _ in
        PortConfiguration(vlanMode: portModes.randomElement(using: &rng)!,
                          learning: Int.random(in: 0..<6, using: &rng) != 0,
                          flooding: Int.random(in: 0..<6, using: &rng) != 0,
                          splitHorizonGroup: UInt16.random(in: 0...2, using: &rng))
    }
    let sharing = (0..<portCount).map { _ in Bool.random(using: &rng) }
    let lan = DifferentialLAN(configuration: config, ports: configs, sharing: sharing)
    let reference = ReferenceBridge(configuration: config)
    configs.forEach(reference.addPort)

    let hosts = (1...40).map { FrameFactory.host($0) }
    if Bool.random(using: &rng) {
        let mac = hosts[0], port = Int.random(in: 0..<portCount, using: &rng)
        if let vlan = configs[port].vlanMode.untaggedVLAN ?? configs[port].vlanMode.members.first(where: { _ in true }) {
            if lan.bridge.addStaticEntry(mac, on: lan.ports[port], vlan: vlan) { reference.addStatic(mac, port: port, vlan: vlan) }
        }
    }
    var active = Array(0..<portCount)
    // one port goes away part-way through, in half the runs (never the last two)
    let removeAt = portCount > 2 && Bool.random(using: &rng) ? Int.random(in: 0..<steps, using: &rng) : -1
    let specials: [MACAddress] = [.broadcast, MACAddress("01:00:5e:00:00:01")!, MACAddress("01:80:c2:00:00:0e")!, .zero]
    for step in 0..<steps {
        lan.clock.advance(by: .milliseconds(Int.random(in: 0...3000, using: &rng)))
        if Int.random(in: 0..<50, using: &rng) == 0 {
            let a = lan.bridge.expire(at: lan.clock.now), b = reference.expire(at: lan.clock.now)
            if a != b { return "step \(step): sweep removed \(a), reference \(b)" }
        }
        if Int.random(in: 0..<100, using: &rng) == 0 {
            let port = Bool.random(using: &rng) ? active.randomElement(using: &rng) : nil
            let vlan: VLANID? = Bool.random(using: &rng) ? [1, 10, 20].randomElement(using: &rng).map { VLANID($0) } : nil
            let withStatic = Int.random(in: 0..<4, using: &rng) == 0
            let a = lan.bridge.flush(port: port.map { lan.ports[$0] }, vlan: vlan, includingStatic: withStatic)
            let b = reference.flush(port: port, vlan: vlan, includingStatic: withStatic)
            if a != b { return "step \(step): flush(port \(port ?? -1), vlan \(vlan.map { "\($0)" } ?? "any"), static \(withStatic)) removed \(a), reference \(b)" }
        }
        if step == removeAt {
            let gone = active.remove(at: Int.random(in: 0..<active.count, using: &rng))
            lan.engine.removePort(lan.ports[gone])
            reference.removePort(gone)
        }
        let roll = Int.random(in: 0..<100, using: &rng)
        let dst = roll < 8 ? specials.randomElement(using: &rng)! : hosts.randomElement(using: &rng)!
        let src = roll >= 98 ? specials.randomElement(using: &rng)! : hosts.randomElement(using: &rng)!
        let tags: [VLANTag]
        switch Int.random(in: 0..<10, using: &rng) {
        case 0..<5: tags = []
        case 5..<8: tags = [VLANTag(vlan: [1, 10, 20, 30].randomElement(using: &rng)!, priority: UInt8.random(in: 0...7, using: &rng))]
        case 8: tags = [VLANTag(vlan: 0, priority: 5)]
        default: tags = [VLANTag(tagProtocol: 0x88A8, vlan: 100), VLANTag(vlan: 20)]
        }
        var frame = FrameFactory.frame(to: dst, from: src, tags: tags, payload: Array(repeating: UInt8(step & 0xFF), count: Int.random(in: 0...170, using: &rng)))
        if Int.random(in: 0..<100, using: &rng) == 0 { frame = Array(frame.prefix(Int.random(in: 0...17, using: &rng))) }
        let ingress = active.randomElement(using: &rng)!

        let want = reference.process(frame, from: ingress, at: lan.clock.now)
        let got = lan.send(frame, on: ingress)
        let gotPairs = got.indices.flatMap { p in got[p].map { (p, $0) } }
        if gotPairs.count != want.count || zip(gotPairs, want).contains(where: { $0.0 != $1.port || $0.1 != $1.frame }) {
            return "step \(step): frame \(hexString(frame.prefix(22))) on port \(ingress): got ports \(gotPairs.map(\.0)), want \(want.map(\.port))"
                + (gotPairs.map(\.0) == want.map(\.port) ? " (bytes differ)" : "")
        }
        delivered += want.count
    }
    for p in active {
        let counters = lan.bridge.counters(of: lan.ports[p])
        for reason in DropReason.allCases where counters[reason] != UInt64(reference.drops[p][reason, default: 0]) {
            return "port \(p) drops[\(reason)]: got \(counters[reason]), want \(reference.drops[p][reason, default: 0])"
        }
    }
    let s = lan.bridge.table.statistics
    let pairs: [(String, UInt64, Int)] = [
        ("learned", s.learned, reference.learned), ("moved", s.moved, reference.moved),
        ("moveDamped", s.moveDamped, reference.moveDamped), ("evicted", s.evicted, reference.evicted),
        ("refused", s.refused, reference.refused), ("expired", s.expired, reference.expiredCount),
    ]
    for (name, a, b) in pairs where a != UInt64(b) { return "statistics.\(name): got \(a), want \(b)" }
    return nil
}

@Suite("Differential: Bridge vs ReferenceBridge")
struct DifferentialTests {
    /// 20 seeds × 600 frames = 12,000 frames over random topologies and configurations, ports on
    /// their own devices and on one shared device, with flushes and a port removed.
    /// Replay one seed with `TAPBRIDGE_SEED=<seed> swift test --filter Differential`.
    @Test func bridgeAgreesWithTheNaiveReference() {
        let base: UInt64
        if let text = Environment.seed, let value = UInt64(text) {
            base = value
        } else {
            base = UInt64.random(in: 0...UInt64.max)
        }
        print("differential test base seed: \(base) (replay: TAPBRIDGE_SEED=\(base))")
        var delivered = 0
        for k in 0..<20 {
            let seed = base &+ UInt64(k)
            if let failure = differential(seed: seed, steps: 600, delivered: &delivered) {
                Issue.record("seed \(seed) (base \(base), replay with TAPBRIDGE_SEED=\(seed)): \(failure)")
                return
            }
        }
        // 12,000 frames compared: the agreement means something only if many were delivered
        // (random bases deliver 4,400-9,200 of them: 12 runs; 5,000 failed about one in six)
        #expect(delivered > 2_000, "base seed \(base): the bridges agreed on only \(delivered) deliveries in 12,000 frames")
    }

    @Test(arguments: [UInt64(1), 2, 3, 42, 0xDEAD_BEEF])
    func fixedSeedsAgree(seed: UInt64) {
        var delivered = 0  // (some seeds deliver nothing: their drops and statistics are compared)
        let failure = differential(seed: seed, steps: 1000, delivered: &delivered)
        #expect(failure == nil, "seed \(seed): \(failure ?? "")")
    }
}
