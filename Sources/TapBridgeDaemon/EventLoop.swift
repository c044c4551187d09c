import CTapBridge
public import Glibc
public import Logging
public import TapBridgeCore
import TapBridgeDevices
import TapBridgeOptions

/// One thing the event loop serves: a port device, the control socket, the mirror writer, a
/// timer. It offers its descriptors and its next deadline before each `poll(2)`, and is
/// served when one of its descriptors is ready or its deadline has come.
///
/// The loop calls `register` and `deadline` on every wake-up: they must not allocate (append
/// to the array given, which keeps its capacity; compute the deadline from stored state).
public protocol EventSource: AnyObject {
    /// Appends this source's descriptors, with the events it waits for, to `fds`.
    func register(_ fds: inout [pollfd])
    /// When this source must be served even if none of its descriptors is ready (monotonic
    /// nanoseconds; at or before now: at once), or nil.
    func deadline() -> Int64?
    /// Serves what is ready. `ready` holds this source's entries from `register`, with the
    /// events `poll` returned. Returns an exit status to stop the loop, nil to go on.
    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32?
}

/// The single-threaded loop under the bridge, in the spirit of swift-nio's selectable event
/// loop, but allocation-free and without threads:
///
/// ```
///   for each source: register(&fds), deadline() ──► poll(fds, the earliest deadline)
///   for each source, in order: any of its fds ready, or its deadline passed ──► service
/// ```
/// The loop knows no feature by name: adding a feature adds a source. Sources are served in
/// the order they were added, so a source added after another sees that source's work of the
/// same round (the bridge admits new UDP peers after the batch that brought them).
public final class EventLoop {
    var sources: [any EventSource] = []
    /// Where each source's entries end in `fds`, and its deadline, for the current round.
    var ends: [Int] = []
    var deadlines: [Int64?] = []
    var fds: [pollfd] = []
    let logger: Logger
    /// `--busy-poll`: for this long after a round that found something ready, poll without
    /// sleeping (nanoseconds; 0: never). A frame that comes within it is read without a
    /// wake-up from sleep (most of a round trip's time on an idle virtual machine), at the
    /// cost of a busy core for as long as traffic comes no further apart.
    public var busyPoll: Int64 = 0
    /// When the last round found something ready; nil before the first (not a sentinel at
    /// `Int64.min`, whose difference from now would overflow).
    var lastReady: Instant? = nil

    public init(logger: Logger) {
        self.logger = logger
        fds.reserveCapacity(64)
    }

    /// Adds `source`, served after the ones added before it.
    public func add(_ source: any EventSource) {
        sources.append(source)
        ends.append(0)
        deadlines.append(nil)
    }

    public static func now() -> Instant { Instant(nanoseconds: ctb_monotonic_ns()) }

    /// Serves the sources until one returns an exit status; returns it (1 if `poll` fails).
    public func run() -> Int32 {
        while true {
            if let status = runOnce() { return status }
        }
    }

    /// One round: gather, poll, serve. Returns an exit status once a source asks to stop.
    func runOnce() -> Int32? {
        fds.removeAll(keepingCapacity: true)
        var earliest: Int64? = nil
        for k in sources.indices {
            sources[k].register(&fds)
            ends[k] = fds.count
            deadlines[k] = sources[k].deadline()
            if let d = deadlines[k] { earliest = min(earliest ?? d, d) }
        }
        let before = Self.now()
        let spinning = busyPoll > 0 && lastReady.map { before.duration(since: $0).nanoseconds < busyPoll } ?? false
        let rc = poll(&fds, nfds_t(fds.count), spinning ? 0 : Self.timeout(until: earliest, now: before))
        if rc < 0 {
            if errno == EINTR { return nil }
            logger.critical("poll failed: \(describeErrno(errno))")
            return 1
        }
        let now = Self.now()
        if rc > 0 { lastReady = now }
        var start = 0
        for k in sources.indices {
            let mine = fds[start..<ends[k]]
            start = ends[k]
            let due = deadlines[k].map { $0 <= now.nanoseconds } ?? false
            guard due || mine.contains(where: { $0.revents != 0 }) else { continue }
            if let status = sources[k].service(ready: mine, now: now) { return status }
        }
        return nil
    }

    /// Milliseconds until `deadline`, rounded up; -1 (wait for traffic) if none; at most an
    /// hour, without overflow for a deadline at the end of time.
    static func timeout(until deadline: Int64?, now: Instant) -> Int32 {
        guard let deadline else { return -1 }
        let ns = deadline - now.nanoseconds
        if ns <= 0 { return 0 }
        return Int32(min(ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1), 3_600_000))
    }
}

/// A source without descriptors: `action` runs whenever `due` says its time has come.
public final class TimerSource: EventSource {
    let due: () -> Int64?
    let action: (Instant) -> Void

    public init(due: @escaping () -> Int64?, action: @escaping (Instant) -> Void) {
        self.due = due
        self.action = action
    }

    public func register(_ fds: inout [pollfd]) {}
    public func deadline() -> Int64? { due() }
    public func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        action(now)
        return nil
    }
}

/// The bridge's port devices: each ready one is drained through the engine (batches of 64,
/// at most `budgetPerService` frames per device per round, so one busy port cannot starve the
/// others; a device with work left makes the next round come at once).
public final class PortsSource: EventSource {
    let engine: ForwardingEngine
    /// Polled even while it carries no port (the UDP socket under `--accept-peers`).
    public var alwaysPolled: (any PortDevice)? = nil
    /// Called with a device that failed (its ports are still there: the callee removes them).
    let failed: (any PortDevice, PortError) -> Void
    var owners: [any PortDevice] = []
    var descriptors: [Int32] = []
    var knownGeneration = -1
    var knownAlways: ObjectIdentifier? = nil
    /// A device had work left, or asked to be served again (`wake`).
    var pending = false
    var failures: [any PortDevice] = []
    /// Where the next round starts: after a round cut short, the device after the last one
    /// served (so every device gets its turn).
    var next = 0
    /// The last round was cut short: the next comes at once (after the other sources).
    var wakeAtOnce = false
    /// A round of the ports stops after this long (nanoseconds), so the loop gets back to its
    /// other sources, signals first, even when thousands of ports each have work: SIGTERM was
    /// once ignored for 15 minutes by a bridge of 10,000 ports flooding each other's chatter.
    public var roundBudget: Int64 = 20_000_000

    public init(engine: ForwardingEngine, failed: @escaping (any PortDevice, PortError) -> Void) {
        self.engine = engine
        self.failed = failed
    }

    /// Serves every device next round, ready or not (a device holds frames it could not
    /// deliver before: datagrams of peers admitted after the batch).
    public func wake() { pending = true }

    public func register(_ fds: inout [pollfd]) {
        // the device list changes only when ports come or go: rebuilt then, not per wake-up
        if engine.generation != knownGeneration || alwaysPolled.map(ObjectIdentifier.init) != knownAlways {
            knownGeneration = engine.generation
            knownAlways = alwaysPolled.map(ObjectIdentifier.init)
            var devices = engine.allDevices
            if let alwaysPolled, !devices.contains(where: { $0 === alwaysPolled }) { devices.append(alwaysPolled) }
            owners = devices.filter { $0.pollDescriptor != nil }
            descriptors = owners.map { $0.pollDescriptor! }
        }
        for (k, fd) in descriptors.enumerated() {
            // (a stream port with bytes its peer has not taken yet: writability too)
            fds.append(pollfd(fd: fd, events: Int16(owners[k].awaitsWritable ? POLLIN | POLLOUT : POLLIN), revents: 0))
        }
    }

    public func deadline() -> Int64? { pending || wakeAtOnce ? 0 : nil }

    public func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        let all = pending
        pending = false
        wakeAtOnce = false
        let count = min(owners.count, ready.count)
        let first = next < count ? next : 0
        next = 0
        for step in 0..<count {
            let k = first + step < count ? first + step : first + step - count
            let entry = ready[ready.startIndex + k]
            guard entry.revents != 0 || all else { continue }
            if entry.revents & Int16(POLLOUT) != 0 {
                owners[k].writable()
                if entry.revents == Int16(POLLOUT) && !all { continue }
            }
            do {
                if try engine.service(owners[k], at: now) >= engine.budgetPerService { pending = true }
            } catch {
                failed(owners[k], error)
            }
            if step + 1 < count, EventLoop.now().duration(since: now).nanoseconds > roundBudget {
                // the rest next round, at once (their descriptors are still ready)
                next = k + 1 < count ? k + 1 : 0
                pending = pending || all
                wakeAtOnce = true
                break
            }
        }
        return nil
    }
}

/// SIGINT, SIGTERM and SIGQUIT stop the loop (after `stop`); SIGUSR1 calls `dump`; SIGHUP
/// and others are logged. Read from a signalfd, so a signal is one more ready descriptor.
public final class SignalSource: EventSource {
    let descriptor: Int32
    let logger: Logger
    let stop: () -> Void
    let dump: () -> Void

    /// Blocks the signals and opens the signalfd.
    public init(logger: Logger, stop: @escaping () -> Void, dump: @escaping () -> Void) throws(StartupError) {
        let fd = ctb_signalfd_open()
        if fd < 0 { throw StartupError("cannot set up signal handling: \(describeErrno(-fd))") }
        descriptor = fd
        self.logger = logger
        self.stop = stop
        self.dump = dump
    }

    deinit { close(descriptor) }

    public func register(_ fds: inout [pollfd]) { fds.append(pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)) }
    public func deadline() -> Int64? { nil }

    public func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        while true {
            let signo = ctb_signalfd_read(descriptor)
            switch signo {
            case 0: return nil
            case SIGINT, SIGTERM, SIGQUIT:
                logger.info("\(Self.name(signo)): shutting down")
                stop()
                return 0
            case SIGHUP:
                logger.info("SIGHUP: logs go to stderr, nothing to reopen")
            case SIGUSR1:
                logger.info("SIGUSR1: counters follow")
                dump()
            default:
                if signo < 0 {
                    logger.error("signalfd read failed: \(describeErrno(-signo))")
                    return nil
                }
                logger.notice("\(Self.name(signo)) ignored (SIGINT, SIGTERM or SIGQUIT stop the bridge; SIGUSR1 logs the counters)")
            }
        }
    }

    static func name(_ signo: Int32) -> String {
        switch signo {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        case SIGQUIT: "SIGQUIT"
        case SIGUSR2: "SIGUSR2"
        case SIGALRM: "SIGALRM"
        default: "signal \(signo)"
        }
    }
}
