/// An open-addressing hash map from a packed (VLAN, MAC) key to a slab slot, used by
/// `ForwardingTable` instead of `Dictionary`: one multiply to hash, linear probing over two
/// flat arrays, backward-shift deletion (no tombstones, so probe lengths never degrade).
///
/// Keys never reach `UInt64.max` (a VLAN ID has 12 bits), which marks an empty bucket. The
/// table doubles when it is half full and never shrinks: its size follows the FDB's peak.
struct MACIndex: Sendable {
    static let empty = UInt64.max

    private(set) var keys: [UInt64]
    private(set) var values: [Int32]
    private(set) var count = 0
    private var shift: UInt64
    private var mask: Int

    init(minimumCapacity: Int = 16) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        keys = Array(repeating: Self.empty, count: capacity)
        values = Array(repeating: -1, count: capacity)
        mask = capacity - 1
        shift = UInt64(64 - capacity.trailingZeroBitCount)
    }

    @inline(__always) private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot stored for `key`, or `nil`.
    @inline(__always) subscript(key: UInt64) -> Int32? {
        var i = home(key)
        while true {
            let k = keys[i]
            if k == key { return values[i] }
            if k == Self.empty { return nil }
            i = (i + 1) & mask
        }
    }

    /// Inserts or replaces.
    mutating func set(_ key: UInt64, _ value: Int32) {
        if (count + 1) * 2 > keys.count { grow() }
        var i = home(key)
        while true {
            let k = keys[i]
            if k == key { values[i] = value; return }
            if k == Self.empty {
                keys[i] = key
                values[i] = value
                count += 1
                return
            }
            i = (i + 1) & mask
        }
    }

    /// Removes `key` if present.
    mutating func remove(_ key: UInt64) {
        var i = home(key)
        while true {
            let k = keys[i]
            if k == Self.empty { return }
            if k == key { break }
            i = (i + 1) & mask
        }
        // Backward-shift: move later members of the probe run into the hole when their home
        // position does not lie (cyclically) between the hole and their current position.
        var hole = i
        var j = (i + 1) & mask
        while keys[j] != Self.empty {
            let h = home(keys[j])
            let distanceToHole = (j - hole) & mask
            let distanceToHome = (j - h) & mask
            if distanceToHome >= distanceToHole {
                keys[hole] = keys[j]
                values[hole] = values[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        keys[hole] = Self.empty
        values[hole] = -1
        count -= 1
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values
        self = MACIndex(minimumCapacity: oldKeys.count)
        for i in oldKeys.indices where oldKeys[i] != Self.empty { set(oldKeys[i], oldValues[i]) }
    }

    /// Every (key, slot) pair, in no particular order.
    var pairs: [(key: UInt64, slot: Int32)] {
        keys.indices.compactMap { keys[$0] == Self.empty ? nil : (keys[$0], values[$0]) }
    }
}
