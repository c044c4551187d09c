public import TapBridgeCore

/// A clock that moves only when told to (`advance(by:)`), so tests never sleep.
public final class ManualClock {
    /// The current time.
    public private(set) var now: Instant

    public init(start: Instant = .zero) { now = start }

    /// Moves time forward by `duration` (which must not be negative).
    public func advance(by duration: Duration) {
        precondition(duration >= .zero, "a manual clock never goes back")
        now = now.advanced(by: duration)
    }
}
