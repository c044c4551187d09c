/// A point on a monotonic time line, in nanoseconds since an arbitrary origin.
///
/// The core never reads a clock: every operation that depends on time takes `now: Instant`
/// as an argument (the way smoltcp's neighbour cache takes a timestamp), so tests drive time
/// with a manual clock and the real loop passes `CLOCK_MONOTONIC`.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    /// Nanoseconds since the clock's origin.
    public var nanoseconds: Int64

    /// The origin of the time line.
    public static let zero = Instant(nanoseconds: 0)

    @inlinable public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// This instant moved by `duration` (negative durations move it back), saturating at the
    /// ends of the time line: a deadline too far to represent is "never", not a wrap into the
    /// past (which would make a poll loop spin).
    @inlinable public func advanced(by duration: Duration) -> Instant {
        let (sum, overflow) = nanoseconds.addingReportingOverflow(duration.nanoseconds)
        return Instant(nanoseconds: overflow ? (duration < .zero ? .min : .max) : sum)
    }

    /// The time from `other` to `self` (negative when `other` is later).
    @inlinable public func duration(since other: Instant) -> Duration {
        .nanoseconds(nanoseconds &- other.nanoseconds)
    }

    @inlinable public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

    public var description: String { "t+\(duration(since: .zero))" }
}

extension Duration {
    /// The duration in whole nanoseconds (sub-nanosecond parts truncated, saturating at `Int64`'s range).
    @inlinable public var nanoseconds: Int64 {
        let (s, atto) = components
        let (ns, overflow) = s.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return s < 0 ? .min : .max }
        let (sum, o2) = ns.addingReportingOverflow(atto / 1_000_000_000)
        return o2 ? (s < 0 ? .min : .max) : sum
    }
}
