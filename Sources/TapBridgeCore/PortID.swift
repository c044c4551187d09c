/// A logical port of the bridge: a small integer, so tables store numbers, never objects.
///
/// One device may carry several logical ports (a UDP socket serving many remote peers gives
/// each peer its own `PortID`). IDs are handed out by `Bridge.addPort` and reused after removal.
public struct PortID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    @inlinable public init(_ rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public var index: Int { Int(rawValue) }
    public var description: String { "port\(rawValue)" }
    public static func < (a: PortID, b: PortID) -> Bool { a.rawValue < b.rawValue }
}
