import CTapBridge
import Dispatch
import Foundation
import Glibc
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices

/// The control plane's worker: everything that may wait on something outside the process (a
/// resolver, iproute2, the kernel's link and FDB tables) runs here, off the event loop.
///
/// ```
///   loop ── perform([LinkOperation]) ──► links thread (serial): kernel.perform, in order
///        ── lookup(host, port) ────────► lookups queue: getaddrinfo (one per name at a time)
///                                           │ results
///   loop ◄── eventfd in the poll set ◄── Mailbox ◄─┘      completions run on the loop
/// ```
/// As swift-nio's `NIOThreadPool` and Open vSwitch's netdev operations: the loop hands work
/// over and goes on forwarding; the result comes back through a descriptor it polls, and its
/// completion runs on the loop, between batches, where the daemon's state lives. Link
/// operations are values (`LinkOperation`) performed by a `LinkKernel`: the system's
/// (rtnetlink and iproute2) or a fake that records them, so the daemon's changes are tested
/// without root. Name lookups have a queue of their own: a resolver that does not answer holds
/// its lookup, never a vxlan device's change.
///
/// At start-up and exit no loop runs: `performNow` runs operations on the calling thread, after
/// whatever the worker still has (`finish`).
final class LinkControl: EventSource {
    /// Results handed from the queues to the loop.
    final class Mailbox: @unchecked Sendable {
        let lock = DispatchQueue(label: "tapbridge.link-control.results")
        var results: [(ticket: Int, result: Result<[LinkOutcome], StartupError>, address: SocketAddress?)] = []
        let fd: Int32

        init(fd: Int32) { self.fd = fd }

        func post(_ ticket: Int, _ result: Result<[LinkOutcome], StartupError>, address: SocketAddress? = nil) {
            lock.sync { results.append((ticket, result, address)) }
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }

        func take() -> [(ticket: Int, result: Result<[LinkOutcome], StartupError>, address: SocketAddress?)] {
            var drained: UInt64 = 0
            _ = read(fd, &drained, 8)
            return lock.sync {
                defer { results.removeAll() }
                return results
            }
        }

        deinit { close(fd) }
    }

    /// One thread of its own, started by the loop's thread on first use: it has the loop's
    /// credentials. (Capabilities are per thread: `--user` keeps CAP_NET_ADMIN on the thread
    /// that drops root, and a thread of Dispatch's pool, made before, has none.)
    final class SerialWorker: @unchecked Sendable {
        private let condition = NSCondition()
        private var jobs: [@Sendable () -> Void] = []
        private var busy = false
        private var started = false
        /// Which thread takes the jobs: an older one ends at its next look.
        private var generation = 0

        func async(_ job: @escaping @Sendable () -> Void) {
            condition.lock()
            jobs.append(job)
            if !started {
                started = true
                let mine = generation
                let thread = Thread { [self] in run(mine) }
                thread.name = "tapbridge.link-control"
                thread.start()
            }
            condition.broadcast()
            condition.unlock()
        }

        /// Waits until every job handed over is done.
        func waitIdle() {
            condition.lock()
            while busy || !jobs.isEmpty { condition.wait() }
            condition.unlock()
        }

        /// After the process changed its credentials (`--user`): what was handed over is done
        /// under the old ones, and the next job starts a thread with the new ones.
        func renew() {
            waitIdle()
            condition.lock()
            generation += 1
            started = false
            condition.broadcast()
            condition.unlock()
        }

        private func run(_ mine: Int) {
            while true {
                condition.lock()
                while jobs.isEmpty && generation == mine { condition.wait() }
                guard generation == mine else {
                    condition.unlock()
                    return
                }
                let job = jobs.removeFirst()
                busy = true
                condition.unlock()
                job()
                condition.lock()
                busy = false
                condition.broadcast()
                condition.unlock()
            }
        }
    }

    let kernel: any LinkKernel
    let links = SerialWorker()
    let lookups = DispatchQueue(label: "tapbridge.link-control.lookups", attributes: .concurrent)
    let mailbox: Mailbox
    /// Completions by ticket, on the loop only.
    var waiting: [Int: (Result<[LinkOutcome], StartupError>, SocketAddress?) -> Void] = [:]
    var nextTicket = 0
    /// The completions waiting for each name under lookup (`host:port:v4`), on the loop only.
    var lookupWaiters: [String: [(Result<SocketAddress, StartupError>) -> Void]] = [:]

    init(kernel: any LinkKernel = SystemLinkKernel()) throws(StartupError) {
        self.kernel = kernel
        let fd = ctb_eventfd()
        guard fd >= 0 else { throw StartupError("eventfd: \(describeErrno(-fd))") }
        mailbox = Mailbox(fd: fd)
    }

    private func ticket(_ completion: @escaping (Result<[LinkOutcome], StartupError>, SocketAddress?) -> Void) -> Int {
        nextTicket += 1
        waiting[nextTicket] = completion
        return nextTicket
    }

    /// Performs `operations` in order on the worker, after those handed over before them,
    /// stopping at the first that fails; `completion` runs on the loop with what each found,
    /// or the failure.
    func perform(_ operations: [LinkOperation], _ completion: @escaping (Result<[LinkOutcome], StartupError>) -> Void) {
        let ticket = ticket { result, _ in completion(result) }
        let (kernel, mailbox) = (kernel, mailbox)
        links.async { mailbox.post(ticket, Self.run(operations, on: kernel)) }
    }

    /// Performs `operations` on the calling thread, after what the worker still has; for
    /// start-up and exit, when no loop runs.
    func performNow(_ operations: [LinkOperation]) throws(StartupError) -> [LinkOutcome] {
        links.waitIdle()
        return try Self.run(operations, on: kernel).get()
    }

    private static func run(_ operations: [LinkOperation], on kernel: any LinkKernel) -> Result<[LinkOutcome], StartupError> {
        var outcomes: [LinkOutcome] = []
        for operation in operations {
            do throws(StartupError) { outcomes.append(try kernel.perform(operation)) } catch { return .failure(error) }
        }
        return .success(outcomes)
    }

    /// Looks `host` up on the lookups queue; `completion` runs on the loop with the first
    /// address, or why there is none. A name asked for again while it is looked up waits for
    /// the same answer.
    func lookup(host: String, port: UInt16, ipv4Only: Bool = false, _ completion: @escaping (Result<SocketAddress, StartupError>) -> Void) {
        let key = "\(host):\(port):\(ipv4Only)"
        guard lookupWaiters[key] == nil else { return lookupWaiters[key]!.append(completion) }
        lookupWaiters[key] = [completion]
        let ticket = ticket { [unowned self] result, address in
            let answer: Result<SocketAddress, StartupError> = result.flatMap { _ in address.map { .success($0) } ?? .failure(StartupError("\(host): no address")) }
            for waiter in lookupWaiters.removeValue(forKey: key) ?? [] { waiter(answer) }
        }
        let mailbox = mailbox
        lookups.async {
            do throws(StartupError) {
                let address = try SocketAddress.resolve(host: host, port: port, ipv4Only: ipv4Only)
                mailbox.post(ticket, .success([]), address: address)
            } catch {
                mailbox.post(ticket, .failure(error))
            }
        }
    }

    /// The process changed its credentials (`--user`): the worker's next thread takes them.
    func credentialsChanged() { links.renew() }

    /// Whether anything handed over has not come back yet.
    var isBusy: Bool { !waiting.isEmpty }

    /// Waits for the link operations handed over and runs their completions, and those of
    /// lookups already answered (exit; tests). A lookup still waiting for its resolver is
    /// abandoned: the process ends without it.
    func finish() {
        links.waitIdle()
        deliver()
    }

    /// Runs the completions of what came back.
    func deliver() {
        for (ticket, result, address) in mailbox.take() {
            guard let completion = waiting.removeValue(forKey: ticket) else { continue }
            completion(result, address)
        }
    }

    var steadyDescriptors: [Int32] { [mailbox.fd] }
    func register(_ fds: inout [pollfd]) {}
    func deadline() -> Int64? { nil }

    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        deliver()
        return nil
    }
}
