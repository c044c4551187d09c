/// One counter, declared once, beside the field it reads: the snake_case name every report
/// uses (the control protocol's JSON, `show stats`, the log lines, Prometheus), what it counts
/// (Prometheus' HELP), and whether it is a level (a gauge) rather than a count that only grows.
///
/// An owner of counters (`PortCounters`, `ForwardingTable.Statistics`, the UDP device's and
/// the mirror's `Statistics`) is a plain struct of `UInt64` fields, bumped on the hot path as
/// before, plus one list of these; everything that prints, encodes or decodes a counter
/// iterates that list. Adding a counter is its field and its line in the list.
public struct Counter<Owner>: Sendable {
    public let name: String
    public let help: String
    public let isGauge: Bool
    public let field: any WritableKeyPath<Owner, UInt64> & Sendable

    public init(_ name: String, _ field: any WritableKeyPath<Owner, UInt64> & Sendable, _ help: String, gauge: Bool = false) {
        self.name = name
        self.field = field
        self.help = help
        self.isGauge = gauge
    }
}

/// A struct of counters with its declarations. Its `Codable` is the declarations': one JSON
/// key per counter, by name, written into whatever object encodes it (so a report can carry
/// its counters beside its other fields, flat, as the control protocol always has). Decoding
/// takes the counters present and leaves the others at zero: a bridge older than its client
/// has not got them all.
public protocol CounterOwner: Codable, Equatable, Sendable {
    init()
    static var counters: [Counter<Self>] { get }
}

extension CounterOwner {
    /// Each counter's name, value and declaration, in declaration order.
    public var values: [(counter: Counter<Self>, value: UInt64)] { Self.counters.map { ($0, self[keyPath: $0.field]) } }

    public init(from decoder: any Decoder) throws {
        self.init()
        try decodeCounters(from: decoder)
    }

    public func encode(to encoder: any Encoder) throws { try encodeCounters(to: encoder) }

    /// The declared counters present in `decoder`'s object (for an owner with more to decode).
    public mutating func decodeCounters(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CounterKey.self)
        for counter in Self.counters {
            // Under a snake-case key strategy the decoder offers `rx_frames` as `rxFrames`.
            let value = try container.decodeIfPresent(UInt64.self, forKey: CounterKey(counter.name))
                ?? container.decodeIfPresent(UInt64.self, forKey: CounterKey(CounterKey.camelCase(counter.name)))
            if let value { self[keyPath: counter.field] = value }
        }
    }

    /// The declared counters into `encoder`'s object (for an owner with more to encode).
    public func encodeCounters(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CounterKey.self)
        for counter in Self.counters { try container.encode(self[keyPath: counter.field], forKey: CounterKey(counter.name)) }
    }
}

/// A JSON key made at run time from a counter's (or a drop reason's) name.
public struct CounterKey: CodingKey {
    public var stringValue: String
    public init(_ name: String) { stringValue = name }
    public init?(stringValue: String) { self.stringValue = stringValue }
    public var intValue: Int? { nil }
    public init?(intValue: Int) { nil }

    /// `path_mtu_lowered` → `pathMtuLowered`, as `JSONDecoder.KeyDecodingStrategy.convertFromSnakeCase` does.
    static func camelCase(_ name: String) -> String {
        let words = name.split(separator: "_")
        return words.enumerated().map { $0.offset == 0 ? String($0.element) : $0.element.prefix(1).uppercased() + $0.element.dropFirst() }.joined()
    }
}
