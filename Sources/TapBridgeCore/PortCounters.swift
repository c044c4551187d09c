/// Counters of one port. Bytes are whole Ethernet frames without FCS.
public struct PortCounters: Equatable, Sendable {
    public var receivedFrames: UInt64 = 0
    public var receivedBytes: UInt64 = 0
    public var transmittedFrames: UInt64 = 0
    public var transmittedBytes: UInt64 = 0
    /// Frames whose partial checksum tapbridge completed before sending them out of this port
    /// (or, on a remote, on receive: inner checksums a same-host VTEP left partial).
    public var checksumsCompleted: UInt64 = 0
    /// Super-frames cut into segments for this port (each segment counts as a transmitted frame).
    public var framesSegmented: UInt64 = 0
    /// Super-frames handed whole to this port, which takes them (each counts as its segments
    /// in `transmittedFrames`, as it will be on the wire).
    public var superFramesPassed: UInt64 = 0
    /// TCP SYNs whose MSS was lowered on their way out of this port, to fit the narrower of
    /// the two links they crossed (`ForwardingEngine.fitToPath`).
    public var mssClamped: UInt64 = 0
    /// Drops by `DropReason.rawValue`.
    public var drops: [UInt64] = Array(repeating: 0, count: DropReason.allCases.count)

    public init() {}
    /// Drops for one reason.
    public subscript(reason: DropReason) -> UInt64 { drops[reason.rawValue] }
    /// Drops for all reasons.
    public var totalDrops: UInt64 { drops.reduce(0, &+) }

    /// Adds `other`'s counts to these (a port's counts from before it went absent).
    public mutating func add(_ other: PortCounters) {
        for c in Self.counters { self[keyPath: c.field] &+= other[keyPath: c.field] }
        for k in drops.indices where k < other.drops.count { drops[k] &+= other.drops[k] }
    }
}

extension PortCounters: CounterOwner {
    public static let counters: [Counter<PortCounters>] = [
        .init("rx_frames", \.receivedFrames, "Frames received on a port."),
        .init("rx_bytes", \.receivedBytes, "Bytes received on a port."),
        .init("tx_frames", \.transmittedFrames, "Frames sent out of a port."),
        .init("tx_bytes", \.transmittedBytes, "Bytes sent out of a port."),
        .init("checksums_completed", \.checksumsCompleted, "Partial checksums (offloaded by the sender) completed for a port."),
        .init("frames_segmented", \.framesSegmented, "Super-frames (GSO) cut into segments for a port."),
        .init("super_frames_passed", \.superFramesPassed, "Super-frames (GSO) handed whole to a port that takes them."),
        .init("mss_clamped", \.mssClamped, "TCP SYNs whose MSS was lowered to fit the narrower link between their ingress and this port."),
    ]

    /// Drops by reason name, only the reasons with a count: `drops` in `show ports`.
    public var dropsByName: [String: UInt64] {
        var out: [String: UInt64] = [:]
        for reason in DropReason.allCases where self[reason] > 0 { out["\(reason)"] = self[reason] }
        return out
    }

    private enum DropsKey: String, CodingKey { case drops }

    public init(from decoder: any Decoder) throws {
        self.init()
        try decodeCounters(from: decoder)
        let byName = try decoder.container(keyedBy: DropsKey.self).decodeIfPresent([String: UInt64].self, forKey: .drops) ?? [:]
        for reason in DropReason.allCases { drops[reason.rawValue] = byName["\(reason)"] ?? 0 }
    }

    public func encode(to encoder: any Encoder) throws {
        try encodeCounters(to: encoder)
        var container = encoder.container(keyedBy: DropsKey.self)
        try container.encode(dropsByName, forKey: .drops)
    }
}
