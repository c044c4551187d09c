/// A set of VLAN IDs 0–4095 as a 4096-bit map: membership is one load and a mask.
public struct VLANSet: Hashable, Sendable, Sequence, ExpressibleByArrayLiteral, CustomStringConvertible {
    var words: [UInt64] = Array(repeating: 0, count: 64)

    /// The empty set.
    public init() {}
    public init(_ vlans: some Sequence<VLANID>) { for v in vlans { insert(v) } }
    public init(arrayLiteral elements: VLANID...) { self.init(elements) }

    /// Every usable VLAN, 1–4094.
    public static var all: VLANSet { VLANSet((1...4094).map { VLANID(UInt16($0)) }) }

    @inline(__always) public func contains(_ v: VLANID) -> Bool {
        words[Int(v.rawValue >> 6)] & (1 << UInt64(v.rawValue & 63)) != 0
    }
    public mutating func insert(_ v: VLANID) { words[Int(v.rawValue >> 6)] |= 1 << UInt64(v.rawValue & 63) }
    public mutating func remove(_ v: VLANID) { words[Int(v.rawValue >> 6)] &= ~(1 << UInt64(v.rawValue & 63)) }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    public func makeIterator() -> Iterator { Iterator(words) }

    /// The members in ascending order, a set bit at a time: an empty 64-VLAN word costs one
    /// comparison, so walking a port's one or two VLANs does not test all 4096.
    public struct Iterator: IteratorProtocol {
        let words: [UInt64]
        var index = 0
        var word: UInt64

        init(_ words: [UInt64]) {
            self.words = words
            word = words[0]
        }

        public mutating func next() -> VLANID? {
            while word == 0 {
                index += 1
                guard index < words.count else { return nil }
                word = words[index]
            }
            let bit = word.trailingZeroBitCount
            word &= word - 1
            return VLANID(UInt16(index << 6 | bit))
        }
    }

    /// Compact form, e.g. `10-20,30`.
    public var description: String {
        var ranges: [String] = []
        var start: Int? = nil
        for v in 0...4096 {
            let inSet = v < 4096 && contains(VLANID(UInt16(v)))
            if inSet, start == nil { start = v }
            if !inSet, let s = start {
                ranges.append(s == v - 1 ? "\(s)" : "\(s)-\(v - 1)")
                start = nil
            }
        }
        return ranges.joined(separator: ",")
    }

    /// Parses `10`, `10-20,30`, or `all`; `nil` on any syntax error or a VLAN outside 1–4094.
    public init?(parsing text: some StringProtocol) {
        if text == "all" { self = .all; return }
        self.init()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count),
                let lo = Int(bounds[0]).flatMap(VLANID.init(validating:)),
                let hi = Int(bounds[bounds.count - 1]).flatMap(VLANID.init(validating:)), lo <= hi
            else { return nil }
            for v in lo.rawValue...hi.rawValue { insert(VLANID(v)) }
        }
    }
}

/// How a port carries VLANs.
///
/// ```
///  access(10):            untagged frames  <-> VLAN 10; tagged frames only if tagged 10
///  trunk([10,20], nil):   tagged 10 / 20   <-> VLAN 10 / 20; untagged frames dropped
///  trunk([10,20], 1):     as above, and untagged <-> VLAN 1 (the native VLAN)
/// ```
public enum VLANMode: Hashable, Sendable, CustomStringConvertible {
    /// One VLAN, carried untagged.
    case access(VLANID)
    /// Several VLANs carried tagged, and optionally a native VLAN carried untagged.
    case trunk(allowed: VLANSet, native: VLANID?)

    /// The VLANs frames on this port may belong to.
    public var members: VLANSet {
        switch self {
        case .access(let v): return [v]
        case .trunk(let allowed, let native):
            var s = allowed
            if let native { s.insert(native) }
            return s
        }
    }

    /// The VLAN that untagged frames belong to (the port VLAN ID), if any.
    public var untaggedVLAN: VLANID? {
        switch self {
        case .access(let v): return v
        case .trunk(_, let native): return native
        }
    }

    public var description: String {
        switch self {
        case .access(let v): return "access VLAN \(v)"
        case .trunk(let a, let n): return "trunk VLANs \(a)" + (n.map { " (native \($0) untagged)" } ?? "")
        }
    }
}
