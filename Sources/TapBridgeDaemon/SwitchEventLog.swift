import CTapBridge
import Logging
import TapBridgeCore
import TapBridgeControl

/// `--log-level debug` (and `trace`): what the switch does, as it does it. MACs learned, moved,
/// refused and aged out at debug; unicast floods to unknown destinations at trace too. At
/// most `eventsPerSecond` lines a second, then one line saying how many were left out, so that
/// a storm cannot drown the log (or the loop).
final class SwitchEventLog {
    static let eventsPerSecond = 50
    /// (unowned: the engine's bridge keeps this log alive through its event handler; a strong
    /// reference back made a cycle, and the engine was never freed, as AddressSanitizer's
    /// leak check at exit found)
    unowned let engine: ForwardingEngine
    let logger: Logger
    var second: Int64 = 0
    var lines = 0
    var suppressed = 0

    /// Logs `engine`'s switch events from now on.
    @discardableResult
    init(engine: ForwardingEngine, logger: Logger) {
        self.engine = engine
        self.logger = logger
        let trace = logger.logLevel <= .trace
        engine.bridge.eventHandler = { [self] event in
            if case .unknownDestination = event, !trace { return }
            log(event)
        }
    }

    func log(_ event: Bridge.Event) {
        let now = ctb_monotonic_ns() / 1_000_000_000
        if now != second {
            if suppressed > 0 { logger.debug("\(suppressed) more switch events in the last second were not logged") }
            second = now
            lines = 0
            suppressed = 0
        }
        guard lines < Self.eventsPerSecond else {
            suppressed += 1
            return
        }
        lines += 1
        let level: Logger.Level = if case .unknownDestination = event { .trace } else { .debug }
        logger.log(level: level, "\(describe(event))")
    }

    func describe(_ event: Bridge.Event) -> String {
        switch event {
        case .learned(let mac, let vlan, let port): "fdb: learned \(mac) in VLAN \(vlan) on \(engine.name(of: port))"
        case .moved(let mac, let vlan, let from, let to): "fdb: \(mac) in VLAN \(vlan) moved from \(engine.name(of: from)) to \(engine.name(of: to))"
        case .refused(let mac, let vlan, let port, let why):
            "fdb: \(mac) in VLAN \(vlan) on \(engine.name(of: port)) not learned (\(why == .tableFull ? "table full of static entries" : "moved too recently: --move-hold-down"))"
        case .unknownDestination(let mac, let vlan, let from): "flood: \(mac) unknown in VLAN \(vlan), from \(engine.name(of: from))"
        case .expired(let count): "fdb: \(count) entr\(count == 1 ? "y" : "ies") aged out"
        }
    }
}
