/// A sliding window over the counters of one sender's datagrams (RFC 6479's idea, as IPsec
/// and WireGuard use it): the highest counter accepted so far, and which of the `size`
/// counters below it were seen. A counter is accepted once: a new highest slides the window,
/// one inside the window that was not seen yet is accepted (reordering), a duplicate or one
/// below the window is refused.
///
/// `check` only looks; `accept` records, and is called after the datagram authenticated, so
/// a forged counter can never move the window.
public struct ReplayWindow: Sendable, Equatable {
    /// Counters below the highest that are still told apart: 2048, enough for a 64-datagram
    /// train reordered against several others at 10 Gbit/s.
    public static let size: UInt64 = 2048
    static let words = Int(size / 64)
    /// The highest counter accepted; nil before the first.
    public private(set) var highest: UInt64? = nil
    /// Bit i of the ring: counter (highest - distance) with `distance` mapping to bit
    /// `counter % size`; set when seen.
    var bits = [UInt64](repeating: 0, count: words)

    public init() {}

    /// Whether `counter` would be accepted now.
    public func check(_ counter: UInt64) -> Bool {
        guard let highest else { return true }
        if counter > highest { return true }
        if highest - counter >= Self.size { return false }
        return !isSet(counter)
    }

    /// Records `counter` (true), or refuses it (false) as `check` would.
    @discardableResult
    public mutating func accept(_ counter: UInt64) -> Bool {
        guard check(counter) else { return false }
        if let highest, counter > highest {
            // clear the bits of the counters the window slides over
            let distance = counter - highest
            if distance >= Self.size {
                for w in 0..<Self.words { bits[w] = 0 }
            } else {
                var c = highest + 1
                while c < counter {
                    clear(c)
                    c += 1
                }
            }
            self.highest = counter
        } else if highest == nil {
            self.highest = counter
        }
        set(counter)
        return true
    }

    @inline(__always) func isSet(_ c: UInt64) -> Bool { bits[Int((c % Self.size) / 64)] & (1 << (c % 64)) != 0 }
    @inline(__always) mutating func set(_ c: UInt64) { bits[Int((c % Self.size) / 64)] |= 1 << (c % 64) }
    @inline(__always) mutating func clear(_ c: UInt64) { bits[Int((c % Self.size) / 64)] &= ~(1 << (c % 64)) }
}
