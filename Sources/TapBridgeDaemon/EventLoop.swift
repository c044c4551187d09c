import CTapBridge
public import Glibc
public import Logging
public import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// One thing the event loop serves: a port device, the control socket, the mirror writer, a
/// timer. It has descriptors it waits on for as long as it is in the loop (`steadyDescriptors`),
/// may offer others and its next deadline before each wait, and is served when one of its
/// descriptors is ready or its deadline has come.
///
/// The loop calls `register` and `deadline` on every wake-up: they must not allocate (append
/// to the array given, which keeps its capacity; compute the deadline from stored state).
public protocol EventSource: AnyObject {
    /// Descriptors this source waits on for input for as long as it is in the loop (a signalfd,
    /// a listening socket, the ports' epoll instance): read once, when the source is added, and
    /// kept in the loop's epoll set, not offered again each round. Each stays open while the
    /// loop runs. They come first in the entries `service` is given, in this order.
    var steadyDescriptors: [Int32] { get }
    /// Appends the descriptors this source waits on now, with the events it waits for, to
    /// `fds`: those that come and go (a control client, a connect under way).
    func register(_ fds: inout [pollfd])
    /// When this source must be served even if none of its descriptors is ready (monotonic
    /// nanoseconds; at or before now: at once), or nil.
    func deadline() -> Int64?
    /// Serves what is ready. `ready` holds this source's steady entries, then its entries from
    /// `register`, with the events the wait returned. Returns an exit status to stop the loop,
    /// nil to go on.
    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32?
}

extension EventSource {
    public var steadyDescriptors: [Int32] { [] }
}

/// The single-threaded loop under the bridge, in the spirit of swift-nio's selectable event
/// loop, but allocation-free and without threads:
///
/// ```
///   for each source: its steady fds, register(&fds), deadline()
///       ──► wait(fds, the earliest deadline): epoll_wait on the steady ones
///   for each source, in order: any of its fds ready, or its deadline passed ──► service
/// ```
/// The loop knows no feature by name: adding a feature adds a source. Sources are served in
/// the order they were added, so a source added after another sees that source's work of the
/// same round (the bridge admits new UDP peers after the batch that brought them).
public final class EventLoop {
    /// How the loop waits for readiness, and what time it is: poll(2) and the monotonic clock,
    /// or a test's script and manual clock (an embedded loop, as swift-nio's
    /// `EmbeddedEventLoop`), so the loop's order, deadlines and busy polling are tested
    /// without a descriptor that must really become ready.
    let poller: any Poller
    let clock: () -> Instant
    var sources: [any EventSource] = []
    /// Each source's steady descriptors (`EventSource.steadyDescriptors`), read when it was added.
    var steady: [[Int32]] = []
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
        poller = SystemPoller()
        clock = Self.now
        fds.reserveCapacity(64)
    }

    /// A loop that waits through `poller` and reads the time from `clock` (tests).
    init(logger: Logger, poller: any Poller, clock: @escaping () -> Instant) {
        self.logger = logger
        self.poller = poller
        self.clock = clock
    }

    /// Adds `source`, served after the ones added before it; its steady descriptors enter the
    /// poller's set.
    public func add(_ source: any EventSource) {
        sources.append(source)
        steady.append(source.steadyDescriptors)
        for fd in steady[steady.count - 1] { poller.watch(fd) }
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
            for fd in steady[k] { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            sources[k].register(&fds)
            ends[k] = fds.count
            deadlines[k] = sources[k].deadline()
            if let d = deadlines[k] { earliest = min(earliest ?? d, d) }
        }
        let before = clock()
        let spinning = busyPoll > 0 && lastReady.map { before.duration(since: $0).nanoseconds < busyPoll } ?? false
        let rc = poller.wait(&fds, timeout: spinning ? 0 : Self.timeout(until: earliest, now: before))
        if rc < 0 {
            if rc == -EINTR { return nil }
            logger.critical("poll failed: \(describeErrno(-rc))")
            return 1
        }
        let now = clock()
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

/// How the loop waits for its descriptors (`EventLoop`).
protocol Poller: AnyObject {
    /// `fd` will be in every round's `fds` from now on, waiting for input, until the loop ends.
    func watch(_ fd: Int32)
    /// Waits at most `timeout` milliseconds (-1: until something is ready) for `fds`, and
    /// fills in their `revents`; how many are ready, or -errno.
    func wait(_ fds: inout [pollfd], timeout: Int32) -> Int32
}

/// epoll(7) for the steady descriptors (each entered once), poll(2) for the others while there
/// are any (a control client, a connect under way) with the epoll instance among them. A
/// wake-up in the usual case (no such descriptor) is one epoll_wait: it costs the descriptors
/// that are ready, where poll(2) set up and took down a wait on each of them every time
/// (Docs/Benchmarks.md, "Wake-ups").
final class SystemPoller: Poller {
    let epoll: Int32
    /// Indexed by descriptor: whether it is in `epoll`.
    var watched: [Bool] = []
    /// This round's other descriptors and where each is in the caller's `fds`.
    var others: [pollfd] = []
    var otherIndex: [Int] = []
    let readyData = UnsafeMutablePointer<UInt64>.allocate(capacity: 64)
    let readyEvents = UnsafeMutablePointer<UInt32>.allocate(capacity: 64)

    init() {
        // (without an epoll instance, every descriptor is polled with poll(2) as before)
        epoll = ctb_epoll_open()
    }

    deinit {
        if epoll >= 0 { close(epoll) }
        readyData.deallocate()
        readyEvents.deallocate()
    }

    func watch(_ fd: Int32) {
        // (a descriptor epoll refuses, or a second source's same one, stays with poll(2) or is already in)
        guard epoll >= 0, fd >= 0, !isWatched(fd) else { return }
        guard ctb_epoll_add(epoll, fd, 0, UInt64(fd)) == 0 else { return }
        if watched.count <= Int(fd) { watched += Array(repeating: false, count: Int(fd) + 1 - watched.count) }
        watched[Int(fd)] = true
    }

    func isWatched(_ fd: Int32) -> Bool { fd >= 0 && Int(fd) < watched.count && watched[Int(fd)] }

    func wait(_ fds: inout [pollfd], timeout: Int32) -> Int32 {
        others.removeAll(keepingCapacity: true)
        otherIndex.removeAll(keepingCapacity: true)
        for k in fds.indices where !isWatched(fds[k].fd) {
            others.append(fds[k])
            otherIndex.append(k)
        }
        if epoll < 0 {
            let rc = poll(&others, nfds_t(others.count), timeout)
            if rc < 0 { return -errno }
            for (j, k) in otherIndex.enumerated() { fds[k].revents = others[j].revents }
            return rc
        }
        var count: Int32 = 0
        var epollTimeout = timeout
        if !others.isEmpty {
            others.append(pollfd(fd: epoll, events: Int16(POLLIN), revents: 0))
            let rc = poll(&others, nfds_t(others.count), timeout)
            if rc < 0 { return -errno }
            for (j, k) in otherIndex.enumerated() where others[j].revents != 0 {
                fds[k].revents = others[j].revents
                count += 1
            }
            if others[others.count - 1].revents == 0 { return count }
            epollTimeout = 0
        }
        let n = ctb_epoll_wait(epoll, readyData, readyEvents, 64, epollTimeout)
        if n < 0 { return count > 0 ? count : n }
        for i in 0..<Int(n) {
            let fd = Int32(truncatingIfNeeded: readyData[i])
            for k in fds.indices where fds[k].fd == fd {
                fds[k].revents = Int16(truncatingIfNeeded: readyEvents[i])
                count += 1
            }
        }
        return count
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
/// others; a device with work left is served first in the next round, which comes at once).
///
/// Their descriptors live in one epoll instance (level-triggered: a device stays ready while
/// it has something to read, as with poll), and the loop polls that one descriptor: a wake-up
/// costs the devices that are ready, not every port. (With poll(2) over every descriptor, each
/// wake-up walked them all: a ping between two ports took 9.1 times as long beside 1,022 idle
/// TAPs as beside none, netbench `idle-1022`.)
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
    /// The epoll instance; each device's descriptor is in it with its index in `owners`.
    let epoll: Int32
    /// The owners that may hold bytes their descriptor did not take (stream ports), and
    /// whether each waits for output in the epoll set now (indexed like `owners`).
    var writers: [Int] = []
    var waitsOutput: [Bool] = []
    /// A wake (`wake`): serve every device next round, ready or not.
    var pending = false
    /// Devices to serve first next round: they had work left, or the round ran out of time
    /// before them (so every device gets its turn).
    var carried: [Int] = []
    /// The last round was cut short or left work: the next comes at once.
    var wakeAtOnce = false
    /// A round of the ports stops after this long (nanoseconds), so the loop gets back to its
    /// other sources, signals first, even when thousands of ports each have work: SIGTERM was
    /// once ignored for 15 minutes by a bridge of 10,000 ports flooding each other's chatter.
    public var roundBudget: Int64 = 20_000_000
    /// How long each round sends floods from the backlog (nanoseconds), after the reads.
    public var backlogShare: Int64 = 150_000
    /// This round's devices, each once (`marks[k] == round`), and what epoll said.
    var work: [Int] = []
    var marks: [UInt64] = []
    /// Devices whose descriptor could not enter the epoll set (ENOSPC: max_user_watches), and why.
    var unwatched: [(index: Int, errno: Int32)] = []
    var round: UInt64 = 0
    let readyData = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
    let readyEvents = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)

    public init(engine: ForwardingEngine, failed: @escaping (any PortDevice, PortError) -> Void) throws(StartupError) {
        self.engine = engine
        self.failed = failed
        let ep = ctb_epoll_open()
        if ep < 0 { throw StartupError("cannot create an epoll instance for the ports: \(describeErrno(-ep))") }
        epoll = ep
    }

    deinit {
        close(epoll)
        readyData.deallocate()
        readyEvents.deallocate()
    }

    /// Serves every device next round, ready or not (a device holds frames it could not
    /// deliver before: datagrams of peers admitted after the batch).
    public func wake() { pending = true }

    public func register(_ fds: inout [pollfd]) {
        // the device list changes only when ports come or go: rebuilt then, not per wake-up
        if engine.generation != knownGeneration || alwaysPolled.map(ObjectIdentifier.init) != knownAlways {
            rebuild()
        }
        // (a stream port with bytes its peer has not taken yet: writability too)
        for k in writers where owners[k].awaitsWritable != waitsOutput[k] {
            waitsOutput[k].toggle()
            _ = ctb_epoll_modify(epoll, descriptors[k], waitsOutput[k] ? 1 : 0, UInt64(k))
        }
    }

    public var steadyDescriptors: [Int32] { [epoll] }

    /// The devices and their descriptors again: the old ones leave the epoll set (a removed
    /// device's descriptor may stay open a while, closed in the background), the new ones
    /// enter it with their new indices.
    func rebuild() {
        knownGeneration = engine.generation
        knownAlways = alwaysPolled.map(ObjectIdentifier.init)
        for fd in descriptors { _ = ctb_epoll_delete(epoll, fd) }
        var devices = engine.allDevices
        if let alwaysPolled, !devices.contains(where: { $0 === alwaysPolled }) { devices.append(alwaysPolled) }
        owners = devices.filter { $0.pollDescriptor != nil }
        descriptors = owners.map { $0.pollDescriptor! }
        waitsOutput = owners.map(\.awaitsWritable)
        writers = owners.indices.filter { owners[$0].mayAwaitWritable }
        marks = Array(repeating: 0, count: owners.count)
        carried.removeAll()
        unwatched.removeAll()  // (indices into the old list)
        for k in owners.indices {
            let rc = ctb_epoll_add(epoll, descriptors[k], waitsOutput[k] ? 1 : 0, UInt64(k))
            // (reported by the next service: removing ports here would change the list being built)
            if rc < 0 { unwatched.append((k, -rc)) }
        }
    }

    public func deadline() -> Int64? { pending || wakeAtOnce || !unwatched.isEmpty || engine.hasBacklog ? 0 : nil }

    public func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        let all = pending
        pending = false
        wakeAtOnce = false
        round &+= 1
        for (k, e) in unwatched where k < owners.count { failed(owners[k], PortError(.failed, code: e, operation: "watching its descriptor (epoll)")) }
        unwatched.removeAll()
        work.removeAll(keepingCapacity: true)
        for k in carried where k < owners.count && marks[k] != round {
            marks[k] = round
            work.append(k)
        }
        carried.removeAll(keepingCapacity: true)
        let n = Int(ctb_epoll_wait(epoll, readyData, readyEvents, 256, 0))
        for i in 0..<max(n, 0) {
            let k = Int(readyData[i])
            guard k < owners.count else { continue }
            // (epoll's event bits are poll's: POLLOUT is EPOLLOUT; an error or a hang-up is read
            // too, and the read reports it)
            if readyEvents[i] & UInt32(POLLOUT) != 0 { owners[k].writable() }
            if readyEvents[i] & ~UInt32(POLLOUT) != 0, marks[k] != round {
                marks[k] = round
                work.append(k)
            }
        }
        if all {
            for k in owners.indices where marks[k] != round {
                marks[k] = round
                work.append(k)
            }
        }
        for (i, k) in work.enumerated() {
            // (a device far behind on its floods waits for them; ready again once they are out)
            if engine.isHeldBack(owners[k]) { continue }
            do {
                if try engine.service(owners[k], at: now) >= engine.budgetPerService {
                    carried.append(k)
                    wakeAtOnce = true
                }
            } catch {
                failed(owners[k], error)
            }
            if i + 1 < work.count, EventLoop.now().duration(since: now).nanoseconds > roundBudget {
                // the rest first next round, at once (their descriptors are still ready)
                carried.append(contentsOf: work[(i + 1)...])
                wakeAtOnce = true
                break
            }
        }
        drainBacklog()
        return nil
    }

    /// Sends floods from the backlog for `backlogShare` after the reads, in pieces of 32 copies
    /// (`FloodBacklog`): a frame between two ports read next round waits for at most this share.
    func drainBacklog() {
        guard engine.hasBacklog else { return }
        let start = EventLoop.now()
        repeat {
            engine.drainBacklog(budget: 32)
        } while engine.hasBacklog && EventLoop.now().duration(since: start).nanoseconds < backlogShare
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

    public var steadyDescriptors: [Int32] { [descriptor] }
    public func register(_ fds: inout [pollfd]) {}
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
