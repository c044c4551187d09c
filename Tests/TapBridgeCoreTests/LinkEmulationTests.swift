import TapBridgeCore
import TapBridgeTestSupport
import Testing

/// The emulated link on a manual clock: delays and jitter where they should be, loss within
/// bounds for a fixed seed, a rate that carries its bits a second, duplicates and reordering
/// counted, and the same seed giving the same run.
@Suite("Link emulation")
struct LinkEmulationTests {
    static func frame(_ n: Int, length: Int = 100) -> [UInt8] {
        var f = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1), payload: [UInt8](repeating: 0, count: length - 14))
        f[14] = UInt8(truncatingIfNeeded: n)
        f[15] = UInt8(truncatingIfNeeded: n >> 8)
        return f
    }
    static func number(_ f: UnsafeRawBufferPointer) -> Int { Int(f[14]) | Int(f[15]) << 8 }

    /// Sends `count` frames, one every `every`, releasing as time goes; returns (number, sent
    /// at, left at) for each frame that left, in the order they left.
    static func run(_ i: Impairment, seed: UInt64 = 1, count: Int, every: Duration, length: Int = 100, until end: Duration = .seconds(20))
        -> (left: [(n: Int, sent: Int64, left: Int64)], statistics: LinkEmulator.Statistics) {
        let e = LinkEmulator(i, seed: seed)
        var out: [(Int, Int64, Int64)] = []
        var now: Int64 = 1_000_000_000
        let step = every.nanoseconds
        var sentAt: [Int: Int64] = [:]
        for n in 0..<count {
            let f = frame(n, length: length)
            sentAt[n] = now
            _ = f.withUnsafeBytes { e.send($0, offload: .none, now: now) }
            e.release(now: now) { b, _ in out.append((number(b), sentAt[number(b)]!, now)) }
            // frames due between this send and the next
            while let d = e.nextDeparture, d < now + step {
                e.release(now: d) { b, _ in out.append((number(b), sentAt[number(b)]!, d)) }
            }
            now += step
        }
        let stop = now + end.nanoseconds
        while let d = e.nextDeparture, d <= stop {
            e.release(now: d) { b, _ in out.append((number(b), sentAt[number(b)]!, d)) }
        }
        return (out, e.statistics)
    }

    @Test func delayAndJitterKeepTheirBoundsAndTheOrder() {
        var i = Impairment()
        i.delay = .milliseconds(50)
        i.jitter = .milliseconds(10)
        let (left, stats) = Self.run(i, count: 1000, every: .milliseconds(20))
        #expect(left.count == 1000 && stats.delayed == 1000)
        let delays = left.map { Double($0.left - $0.sent) / 1e6 }
        #expect(delays.allSatisfy { $0 >= 40 && $0 <= 60 }, "delays from \(delays.min()!) to \(delays.max()!) ms")
        let mean = delays.reduce(0, +) / Double(delays.count)
        #expect(abs(mean - 50) < 1, "mean delay \(mean) ms")
        #expect(left.map(\.n) == Array(0..<1000), "jitter alone never reorders")
    }

    @Test func lossStaysWithinBoundsAndTheSameSeedLosesTheSameFrames() {
        var i = Impairment()
        i.loss = 0.10
        let a = Self.run(i, seed: 7, count: 10_000, every: .milliseconds(1))
        let b = Self.run(i, seed: 7, count: 10_000, every: .milliseconds(1))
        let c = Self.run(i, seed: 8, count: 10_000, every: .milliseconds(1))
        #expect((900...1100).contains(a.statistics.lost), "lost \(a.statistics.lost) of 10000 at 10 %")
        #expect(a.left.count + Int(a.statistics.lost) == 10_000)
        #expect(a.left.map(\.n) == b.left.map(\.n), "the same seed must lose the same frames")
        #expect(a.left.map(\.n) != c.left.map(\.n))
        // correlated loss comes in longer runs
        i.lossCorrelation = 0.5
        let bursts = Self.run(i, seed: 7, count: 10_000, every: .milliseconds(1))
        #expect(bursts.statistics.lost > a.statistics.lost)
    }

    /// 10 mbit/s for a simulated 10 s: 12.5 MB, whatever was offered; the rest tail-dropped.
    @Test func aRateCarriesItsBitsASecond() {
        var i = Impairment()
        i.rate = 10_000_000
        let (left, stats) = Self.run(i, count: 20_000, every: .microseconds(500), length: 1500, until: .zero)
        // 10 s of offering 24 mbit/s: what left within those 10 s
        let offeredUntil: Int64 = 1_000_000_000 + 10_000_000_000
        let bits = left.filter { $0.left <= offeredUntil }.count * 1500 * 8
        let mbits = Double(bits) / 10 / 1e6
        #expect(abs(mbits - 10) < 0.1, "carried \(mbits) mbit/s")
        #expect(stats.queueFull > 0, "a queue must fill when twice the rate is offered")
        let gaps = zip(left.dropFirst(), left).map { $0.left - $1.left }
        #expect(gaps.allSatisfy { $0 >= 1_199_000 }, "frames closer than their 1.2 ms serialization")
    }

    @Test func duplicatesAndReorderingAreCounted() {
        var i = Impairment()
        i.delay = .milliseconds(10)
        i.duplicate = 0.05
        i.reorder = 0.10
        let (left, stats) = Self.run(i, seed: 3, count: 2000, every: .milliseconds(1))
        #expect((60...140).contains(stats.duplicated) && left.count == 2000 + Int(stats.duplicated))
        #expect((140...260).contains(stats.reordered))
        let order = left.map(\.n)
        #expect(order != order.sorted(), "reordering must reorder")
    }

    @Test func corruptionFlipsOneBitPastTheHeader() {
        var i = Impairment()
        i.corrupt = 1
        let e = LinkEmulator(i, seed: 1)
        let f = Self.frame(5)
        _ = f.withUnsafeBytes { e.send($0, offload: .none, now: 0) }
        var got: [UInt8] = []
        e.release(now: 0) { b, _ in got = Array(b) }
        let differing = zip(got, f).enumerated().filter { $0.element.0 != $0.element.1 }
        #expect(differing.count == 1 && differing[0].offset >= 14 && (got[differing[0].offset] ^ f[differing[0].offset]).nonzeroBitCount == 1)
        #expect(e.statistics.corrupted == 1)
    }

    /// The emulator is one object that owns its ring: two holders of it (a port's device and
    /// whoever reads its statistics) release each frame once, and the ring is freed once, by
    /// the last. (As a copyable struct, a copy kept its own list of entries over the shared
    /// ring, so both released the same frames, and each owner's `deallocate()` freed the ring.)
    @Test func anEmulatorHeldTwiceReleasesEachFrameOnce() {
        var i = Impairment()
        i.delay = .milliseconds(10)
        var released: [Int] = []
        do {
            let e = LinkEmulator(i, seed: 1)
            let holder = e
            for n in 0..<3 { _ = Self.frame(n).withUnsafeBytes { e.send($0, offload: .none, now: 0) } }
            e.release(now: 20_000_000) { b, _ in released.append(Self.number(b)) }
            holder.release(now: 30_000_000) { b, _ in released.append(Self.number(b)) }
            #expect(holder.isEmpty && holder.statistics.delayed == 3 && holder.statistics == e.statistics)
        }
        #expect(released == [0, 1, 2], "frames released: \(released)")
    }
}
