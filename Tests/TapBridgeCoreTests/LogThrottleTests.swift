import TapBridgeCore
import Testing

/// The one rate limit behind repeated warnings: no instant can make it trap (it replaced a
/// sentinel at `Int64.min` whose difference from now overflowed and crashed the bridge).
@Suite("Log throttle")
struct LogThrottleTests {
    @Test func oneLinePerIntervalCountingWhatItStandsFor() {
        var t = LogThrottle(interval: .seconds(10))
        #expect(t.admit(at: Instant(nanoseconds: 5)) == 1, "the first event is logged")
        #expect(t.admit(at: Instant(nanoseconds: 6)) == nil)
        #expect(t.admit(3, at: Instant(nanoseconds: 9_999_999_999)) == nil)
        let line = t.admit(at: Instant(nanoseconds: 10_000_000_005))
        #expect(line == 5, "got \(String(describing: line)), want 5: the held-back 4 and this one")
        #expect(t.admit(at: Instant(nanoseconds: 10_000_000_006)) == nil)
    }

    /// Instants at the ends of the time line, and a clock that goes back: never a trap, and a
    /// clock that went back logs at once rather than staying silent for ages.
    @Test(arguments: [Int64.min, -1, 0, 1, Int64.max - 1, Int64.max])
    func extremeInstantsNeverTrap(_ first: Int64) {
        var t = LogThrottle()
        #expect(t.admit(at: Instant(nanoseconds: first)) == 1)
        for next in [Int64.min, Int64.max, 0, first &+ 1, first &- 1] {
            _ = t.admit(at: Instant(nanoseconds: next))
        }
        var back = LogThrottle()
        _ = back.admit(at: Instant(nanoseconds: Int64.max))
        #expect(back.admit(at: Instant(nanoseconds: Int64.min)) == 1, "a clock that went back logs at once")
    }
}
