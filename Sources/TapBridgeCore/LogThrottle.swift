/// "One log line per interval, and how many events it stands for": the one rate limit behind
/// every repeated warning (refused stream connections, datagrams from strangers, a remote
/// that refuses datagrams).
///
/// It holds the time of the last line as an optional rather than a sentinel at `Int64.min`:
/// `now - Int64.min` overflows, and an overflow traps. The first stream connection over a
/// listener's `max=` crashed the bridge exactly that way. Elapsed time is computed with
/// wrapping subtraction and compared as a `UInt64` count of nanoseconds, so no instant, even one
/// before the last line (a clock that went back), can trap.
public struct LogThrottle: Sendable {
    /// At most one line per this many nanoseconds.
    public let interval: Int64
    /// When the last line was allowed; nil before the first.
    public private(set) var last: Instant? = nil
    /// Events since the last allowed line (the line that is allowed now counts itself too).
    public private(set) var pending: UInt64 = 0

    /// `interval`: the shortest time between two lines (default 10 s).
    public init(interval: Duration = .seconds(10)) { self.interval = max(interval.nanoseconds, 0) }

    /// Records `count` events at `now`; returns how many events the line to log now stands
    /// for (this call's and those held back since the last line), or nil when a line was
    /// logged less than `interval` ago (the events are kept for the next line).
    public mutating func admit(_ count: UInt64 = 1, at now: Instant) -> UInt64? {
        pending &+= count
        if let last, now >= last, UInt64(bitPattern: now.nanoseconds &- last.nanoseconds) < UInt64(interval) { return nil }
        last = now
        defer { pending = 0 }
        return pending
    }
}
