import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import TapBridgeTestSupport
import Testing

/// The event loop driven by a script of readiness and a manual clock (an embedded loop): which
/// sources a round serves and in what order, how long it sleeps, busy polling, and how it
/// stops. No descriptor, no root, no sleep; but for one test of the real poller over pipes.
@Suite("The event loop, scripted")
struct EventLoopTests {
    /// Each round: the timeout the loop asked for is recorded, the clock moves on by `elapse`
    /// (or to the timeout, if it is not -1 and nothing is ready), and the descriptors named in
    /// `ready` get POLLIN.
    final class ScriptedPoller: Poller {
        struct Step {
            var ready: Set<Int32> = []
            var elapse: Duration? = nil
            var result: Int32? = nil  // (-errno: poll fails)
        }
        var steps: [Step]
        var timeouts: [Int32] = []
        let clock: ManualClock

        init(_ steps: [Step], clock: ManualClock) {
            self.steps = steps
            self.clock = clock
        }

        var watched: [Int32] = []
        func watch(_ fd: Int32) { watched.append(fd) }

        func wait(_ fds: inout [pollfd], timeout: Int32) -> Int32 {
            timeouts.append(timeout)
            guard !steps.isEmpty else { return -EINVAL }
            let step = steps.removeFirst()
            if let result = step.result { return result }
            var n: Int32 = 0
            for k in fds.indices where step.ready.contains(fds[k].fd) {
                fds[k].revents = Int16(POLLIN)
                n += 1
            }
            if let elapse = step.elapse {
                clock.advance(by: elapse)
            } else if n == 0, timeout > 0 {
                clock.advance(by: .milliseconds(Int(timeout)))
            }
            return n
        }
    }

    /// A source with one descriptor (a number; nothing is opened) and maybe a deadline; it
    /// writes its name to the log when served.
    final class Source: EventSource {
        let name: String
        let fd: Int32
        var due: Int64?
        var log: (String) -> Void
        var stopWith: Int32? = nil

        var steady: [Int32] = []
        var lastReady: [pollfd] = []

        init(_ name: String, fd: Int32, due: Int64? = nil, steady: [Int32] = [], log: @escaping (String) -> Void) {
            (self.name, self.fd, self.due, self.steady, self.log) = (name, fd, due, steady, log)
        }

        var steadyDescriptors: [Int32] { steady }
        func register(_ fds: inout [pollfd]) { if fd >= 0 { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) } }
        func deadline() -> Int64? { due }
        func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
            lastReady = Array(ready)
            log(name)
            if due.map({ $0 <= now.nanoseconds }) == true { due = nil }
            return stopWith
        }
    }

    static func loop(_ steps: [ScriptedPoller.Step], clock: ManualClock) -> (EventLoop, ScriptedPoller) {
        let poller = ScriptedPoller(steps, clock: clock)
        return (EventLoop(logger: Logger(label: "test"), poller: poller, clock: { clock.now }), poller)
    }

    /// Only the sources with a ready descriptor or a passed deadline are served, in the order
    /// they were added; the loop sleeps until the earliest deadline (rounded up to the
    /// millisecond) and, with none, until something is ready.
    @Test func aRoundServesWhatIsReadyOrDueInOrder() {
        let clock = ManualClock()
        var served: [String] = []
        let (loop, poller) = Self.loop([.init(ready: [11]), .init(), .init(ready: [10, 11]), .init(ready: [10])], clock: clock)
        let a = Source("a", fd: 10) { served.append($0) }
        let b = Source("b", fd: 11) { served.append($0) }
        let timer = Source("timer", fd: -1, due: Instant.zero.advanced(by: .microseconds(2_500)).nanoseconds) { served.append($0) }
        for s in [a, timer, b] as [any EventSource] { loop.add(s) }
        for _ in 0..<4 { #expect(loop.runOnce() == nil) }
        #expect(served == ["b", "timer", "a", "b", "a"], "\(served)")
        // 2.5 ms away: 3; after the timer ran, no deadline is left: -1
        #expect(poller.timeouts == [3, 3, -1, -1], "\(poller.timeouts)")
        #expect(clock.now == Instant.zero.advanced(by: .milliseconds(3)))
    }

    /// A source that returns a status stops the loop with it; a poll interrupted by a signal
    /// goes on; any other failure stops it with 1.
    @Test func theLoopStopsOnAStatusOrAFailure() {
        let clock = ManualClock()
        var served: [String] = []
        let (loop, _) = Self.loop([.init(result: -EINTR), .init(ready: [10]), .init(ready: [10])], clock: clock)
        let a = Source("a", fd: 10) { served.append($0) }
        loop.add(a)
        #expect(loop.runOnce() == nil && served.isEmpty)
        #expect(loop.runOnce() == nil && served == ["a"])
        a.stopWith = 7
        #expect(loop.run() == 7)
        let (failing, _) = Self.loop([.init(result: -EBADF)], clock: clock)
        failing.add(Source("b", fd: 11) { served.append($0) })
        #expect(failing.run() == 1 && served == ["a", "a"])
    }

    /// `--busy-poll`: for as long after a round that found something ready, the loop polls
    /// without sleeping (timeout 0), then sleeps again.
    @Test func busyPollingSpinsOnlyWithinItsWindowAfterTraffic() {
        let clock = ManualClock()
        let (loop, poller) = Self.loop([.init(ready: [10], elapse: .milliseconds(1)), .init(elapse: .milliseconds(20)),
                                        .init(elapse: .milliseconds(40)), .init(elapse: .milliseconds(1))], clock: clock)
        loop.busyPoll = Duration.milliseconds(50).nanoseconds
        loop.add(Source("a", fd: 10) { _ in })
        for _ in 0..<4 { #expect(loop.runOnce() == nil) }
        // first: asleep (no traffic yet); then within 50 ms of the ready round: 0, 0; then 61 ms: asleep
        #expect(poller.timeouts == [-1, 0, 0, -1], "\(poller.timeouts)")
    }

    /// A source's steady descriptors are handed to the poller once, when it is added, and come
    /// first in its entries every round, before those it registers.
    @Test func steadyDescriptorsAreWatchedOnceAndComeFirst() {
        let clock = ManualClock()
        var served: [String] = []
        let (loop, poller) = Self.loop([.init(ready: [20]), .init(ready: [10]), .init(ready: [21])], clock: clock)
        let a = Source("a", fd: 10, steady: [20, 21]) { served.append($0) }
        let b = Source("b", fd: -1, steady: [22]) { served.append($0) }
        loop.add(a)
        loop.add(b)
        #expect(poller.watched == [20, 21, 22])
        #expect(loop.runOnce() == nil && served == ["a"])
        #expect(a.lastReady.map(\.fd) == [20, 21, 10] && a.lastReady.map(\.revents) == [Int16(POLLIN), 0, 0])
        #expect(loop.runOnce() == nil && served == ["a", "a"])
        #expect(a.lastReady.map(\.revents) == [0, 0, Int16(POLLIN)])
        #expect(loop.runOnce() == nil && served == ["a", "a", "a"])
        #expect(poller.watched == [20, 21, 22], "watched again: \(poller.watched)")
    }

    /// The real poller, over pipes: a steady descriptor is waited on through epoll, alone (one
    /// epoll_wait) or beside one that is not (poll(2) with the epoll instance among them);
    /// readiness, the count and the timeout are as poll(2)'s.
    @Test func theSystemPollerWaitsOnSteadyAndOtherDescriptors() throws {
        var steadyPipe: [Int32] = [0, 0]
        var otherPipe: [Int32] = [0, 0]
        try #require(pipe(&steadyPipe) == 0 && pipe(&otherPipe) == 0)
        defer { for fd in steadyPipe + otherPipe { close(fd) } }
        let poller = SystemPoller()
        poller.watch(steadyPipe[0])
        poller.watch(steadyPipe[0])  // (twice: once in)
        #expect(poller.isWatched(steadyPipe[0]) && !poller.isWatched(otherPipe[0]))
        func entries(other: Bool) -> [pollfd] {
            [pollfd(fd: steadyPipe[0], events: Int16(POLLIN), revents: 0)]
                + (other ? [pollfd(fd: otherPipe[0], events: Int16(POLLIN), revents: 0)] : [])
        }
        var fds = entries(other: false)
        #expect(poller.wait(&fds, timeout: 0) == 0 && fds[0].revents == 0)
        #expect(write(steadyPipe[1], "x", 1) == 1)
        fds = entries(other: false)
        #expect(poller.wait(&fds, timeout: 1000) == 1 && fds[0].revents == Int16(POLLIN))
        // level-triggered: still ready while unread, now beside a descriptor that is not steady
        fds = entries(other: true)
        #expect(poller.wait(&fds, timeout: 1000) == 1 && fds[0].revents == Int16(POLLIN) && fds[1].revents == 0)
        #expect(write(otherPipe[1], "y", 1) == 1)
        fds = entries(other: true)
        #expect(poller.wait(&fds, timeout: 1000) == 2 && fds[1].revents == Int16(POLLIN))
        var byte: UInt8 = 0
        #expect(read(steadyPipe[0], &byte, 1) == 1)
        fds = entries(other: true)
        #expect(poller.wait(&fds, timeout: 1000) == 1 && fds[0].revents == 0 && fds[1].revents == Int16(POLLIN))
        #expect(read(otherPipe[0], &byte, 1) == 1)
        // nothing ready: the timeout passes (10 ms), with and without the other descriptor
        for other in [false, true] {
            fds = entries(other: other)
            let start = EventLoop.now()
            #expect(poller.wait(&fds, timeout: 10) == 0)
            #expect(EventLoop.now().duration(since: start) >= .milliseconds(9))
        }
        // a closed write end: hang-up, reported as poll(2) would
        close(steadyPipe[1])
        steadyPipe[1] = -1
        fds = entries(other: false)
        #expect(poller.wait(&fds, timeout: 1000) == 1 && fds[0].revents & Int16(POLLHUP) != 0)
    }

    /// Floods waiting in the engine's backlog keep the ports' source due at once, and each
    /// round sends a share of them (here one piece of 32 copies: `backlogShare` 0), until none wait.
    @Test func floodsInTheBacklogGoOutAShareARoundAndKeepTheLoopAwake() throws {
        let lan = VirtualLAN(ports: 300)
        lan.inject(FrameFactory.frame(to: MACAddress(rawValue: 0xFFFF_FFFF_FFFF), from: FrameFactory.host(1)), on: 0)
        _ = try lan.engine.service(lan.devices[0], at: lan.clock.now)
        let ports = try PortsSource(engine: lan.engine, failed: { _, _ in })
        ports.backlogShare = 0
        var rounds = 0
        while ports.deadline() == 0 {
            _ = ports.service(ready: [], now: lan.clock.now)
            rounds += 1
            let copies = lan.portsWithTraffic.count
            #expect(copies == min(299, 32 * rounds), "round \(rounds): got \(copies) ports with the broadcast")
            if rounds > 20 { break }
        }
        #expect(rounds == 10 && !lan.engine.hasBacklog, "got \(rounds) rounds")
    }
}
