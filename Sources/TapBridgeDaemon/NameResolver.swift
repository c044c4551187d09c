import CTapBridge
import Dispatch
import Glibc
import TapBridgeCore
import TapBridgeDevices

/// Name lookups off the event loop.
///
/// `getaddrinfo` waits for the resolver, and a resolver that does not answer holds it for its
/// whole timeout (seconds, per try): done in the loop, an absent `stream=HOST:PORT` port
/// stopped every port twice a second, delayed start-up by 10 s and SIGTERM by 9. Lookups run
/// on one background thread (a serial queue); each result comes back through an eventfd in
/// the poll set and its completion runs on the loop, like swift-nio's `NIOThreadPool`. A
/// lookup still waiting at exit is abandoned: the process ends without it.
///
/// One lookup per name at a time: a name asked for again while it is looked up waits for
/// the same answer.
final class NameResolver: EventSource {
    /// Results handed from the queue to the loop.
    final class Mailbox: @unchecked Sendable {
        let lock = DispatchQueue(label: "tapbridge.resolve.results")
        var results: [(key: String, result: Result<SocketAddress, StartupError>)] = []
        let fd: Int32

        init(fd: Int32) { self.fd = fd }

        func post(_ key: String, _ result: Result<SocketAddress, StartupError>) {
            lock.sync { results.append((key, result)) }
            var one: UInt64 = 1
            _ = write(fd, &one, 8)
        }

        func take() -> [(key: String, result: Result<SocketAddress, StartupError>)] {
            var drained: UInt64 = 0
            _ = read(fd, &drained, 8)
            return lock.sync {
                defer { results.removeAll() }
                return results
            }
        }

        deinit { close(fd) }
    }

    let queue = DispatchQueue(label: "tapbridge.resolve")
    let mailbox: Mailbox
    /// Completions waiting for each name (`host:port`), on the loop only.
    var waiting: [String: [(Result<SocketAddress, StartupError>) -> Void]] = [:]

    init() throws(StartupError) {
        let fd = ctb_eventfd()
        guard fd >= 0 else { throw StartupError("eventfd: \(describeErrno(-fd))") }
        mailbox = Mailbox(fd: fd)
    }

    /// Whether `host` is an address already (nothing to look up: `getaddrinfo` answers it at
    /// once, without a resolver).
    static func isNumeric(_ host: String) -> Bool {
        var buffer = in6_addr()
        return inet_pton(AF_INET, host, &buffer) == 1 || inet_pton(AF_INET6, host, &buffer) == 1
    }

    /// Looks `host` up on the background thread; `completion` runs on the loop with the first
    /// address, or why there is none.
    func lookup(host: String, port: UInt16, ipv4Only: Bool = false, _ completion: @escaping (Result<SocketAddress, StartupError>) -> Void) {
        let key = "\(host):\(port):\(ipv4Only)"
        let asked = waiting[key] != nil
        waiting[key, default: []].append(completion)
        guard !asked else { return }
        let mailbox = mailbox
        queue.async {
            let result: Result<SocketAddress, StartupError>
            do throws(StartupError) { result = .success(try SocketAddress.resolve(host: host, port: port, ipv4Only: ipv4Only)) } catch { result = .failure(error) }
            mailbox.post(key, result)
        }
    }

    /// Whether a lookup is under way.
    var isBusy: Bool { !waiting.isEmpty }

    func register(_ fds: inout [pollfd]) { fds.append(pollfd(fd: mailbox.fd, events: Int16(POLLIN), revents: 0)) }
    func deadline() -> Int64? { nil }

    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        for (key, result) in mailbox.take() {
            for completion in waiting.removeValue(forKey: key) ?? [] { completion(result) }
        }
        return nil
    }
}
