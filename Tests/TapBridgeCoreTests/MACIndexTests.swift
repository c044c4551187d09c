import Testing
@testable import TapBridgeCore

@Suite("MAC index (open addressing)")
struct MACIndexTests {
    /// 50,000 random inserts, replacements and removals over a small key space (long probe runs,
    /// many backward shifts) must agree with `Dictionary` after every step.
    @Test(arguments: [UInt64(7), 99, 123_456])
    func agreesWithDictionary(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var index = MACIndex()
        var model: [UInt64: Int32] = [:]
        let keys = (0..<600).map { _ in UInt64.random(in: 0...0x0FFF_FFFF_FFFF_FFFF, using: &rng) }
        for step in 0..<50_000 {
            let key = keys.randomElement(using: &rng)!
            if Int.random(in: 0..<3, using: &rng) == 0 {
                index.remove(key)
                model[key] = nil
            } else {
                let v = Int32(step)
                index.set(key, v)
                model[key] = v
            }
            let probe = keys.randomElement(using: &rng)!
            if index[probe] != model[probe] || index.count != model.count {
                Issue.record("seed \(seed) step \(step): got \(String(describing: index[probe])) count \(index.count), want \(String(describing: model[probe])) count \(model.count)")
                return
            }
        }
        #expect(Dictionary(uniqueKeysWithValues: index.pairs.map { ($0.key, $0.slot) }) == model)
    }
}
