// MARK: Storms and loops

/// What loop protection found: a loop through two ports (and the port it blocked, if it did),
/// or a port unblocked once its time was over.
public enum LoopReport: Sendable, Equatable {
    case loop(PortID, PortID, moves: Int, blocked: PortID?)
    /// The same frame flooded from one port `repeats` times within `EchoWatch.window`: a loop
    /// that moves no MAC (`EchoWatch`).
    case echo(PortID, repeats: Int, blocked: PortID?)
    case unblocked(PortID)
}

/// Bridge-wide loop counters (`show stats`, section `loops`).
public struct LoopStatistics: Sendable, Equatable {
    /// Loops found: MACs moving back and forth between two ports many times a second, or one
    /// frame flooded again and again from one port (`EchoWatch`).
    public var detected: UInt64 = 0
    /// Times a port was blocked for one.
    public var blocks: UInt64 = 0
    /// Ports blocked now (a gauge).
    public var portsBlocked: UInt64 = 0
    public init() {}
    public init(detected: UInt64, blocks: UInt64, portsBlocked: UInt64) {
        self.detected = detected
        self.blocks = blocks
        self.portsBlocked = portsBlocked
    }
}

extension LoopStatistics: CounterOwner {
    public static let counters: [Counter<Self>] = [
        .init("detected", \.detected, "Loops found: MACs moving back and forth between two ports many times a second, or one frame flooded again and again from one port."),
        .init("blocks", \.blocks, "Times a port was blocked because of a loop (--loop-protect)."),
        .init("ports_blocked", \.portsBlocked, "Ports blocked by loop protection now.", gauge: true),
    ]
}

/// How a loop shows itself to a learning switch: the same sources seen on two ports in turn.
/// A station that moves does it once; in a loop (both ends of a veth bridged, two bridges
/// linked twice) every flooded frame comes back through the other port, and its source moves
/// between the two ports thousands of times a second. `moves` MAC moves between one pair of
/// ports within one `window` is a loop.
struct LoopWatch {
    static let moves = 8
    static let window: Duration = .seconds(1)
    /// The pair of ports (lower first) being watched, its moves and when its window began.
    var pair: (PortID, PortID)? = nil
    var count = 0
    var since = Instant(nanoseconds: 0)
    /// When each pair was last reported (one report per pair per block time).
    var reported: [UInt32: Instant] = [:]
}

extension Bridge {
    /// Storm control: takes a token from port `p`'s bucket (rate `limit` a second, burst a
    /// tenth of it, at least 10); false when it is empty.
    @inline(__always)
    func takeStormToken(_ p: Int, limit: Int, now: Instant) -> Bool {
        let burst = Double(max(limit / 10, 10))
        if let refilled = ports[p].stormRefilled {
            let elapsed = Double(now.nanoseconds &- refilled.nanoseconds) / 1e9
            ports[p].stormTokens = min(burst, ports[p].stormTokens + max(elapsed, 0) * Double(limit))
        } else {
            ports[p].stormTokens = burst
        }
        ports[p].stormRefilled = now
        guard ports[p].stormTokens >= 1 else { return false }
        ports[p].stormTokens -= 1
        return true
    }

    /// A MAC moved from `from` to `to`: counts it for the pair; enough in one window is a loop.
    func watchMove(from: PortID, to: PortID, mac: MACAddress, at now: Instant) {
        let pair = from < to ? (from, to) : (to, from)
        if let watched = loopWatch.pair, watched == pair, now.nanoseconds &- loopWatch.since.nanoseconds < LoopWatch.window.nanoseconds {
            loopWatch.count += 1
        } else {
            loopWatch.pair = pair
            loopWatch.count = 1
            loopWatch.since = now
        }
        guard loopWatch.count >= LoopWatch.moves else { return }
        let moves = loopWatch.count
        loopWatch.pair = nil
        let key = UInt32(pair.0.rawValue) << 16 | UInt32(pair.1.rawValue)
        var blocked: PortID? = nil
        if configuration.loopProtect, ports[pair.1.index].blockedUntil == nil {
            blocked = pair.1
            ports[pair.1.index].blockedUntil = Instant(nanoseconds: now.nanoseconds &+ configuration.loopBlockTime.nanoseconds)
            loopStatistics.blocks &+= 1
            loopStatistics.portsBlocked &+= 1
            // the entries the loop moved to either port may point the wrong way now
            table.flush(port: pair.0)
            table.flush(port: pair.1)
        }
        if let last = loopWatch.reported[key], now.nanoseconds &- last.nanoseconds < configuration.loopBlockTime.nanoseconds, blocked == nil { return }
        loopWatch.reported[key] = now
        loopStatistics.detected &+= 1
        loopHandler?(.loop(pair.0, pair.1, moves: moves, blocked: blocked))
    }
}
