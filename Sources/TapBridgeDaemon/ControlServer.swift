import CTapBridge
import Foundation
import Glibc
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// The control socket, served by the bridge's poll loop: a Unix stream socket where each
/// connection carries one request line and gets one response.
///
/// Nothing a client does can stall forwarding: sockets are non-blocking, a request may be at
/// most 64 KiB (larger: an error reply, then close), a client that has not sent a full line
/// within 1 s is dropped (tapbridge's own client sends it at once), at most 16 clients are
/// served at once, and a response that the client does not read is dropped with it after 5 s
/// without progress. Slow clients cannot lock a well-behaved one out: when all 16 places are
/// taken, a new client takes the place of the oldest one that has its answer but lingers, or
/// else of the one that has waited longest without a complete request; only when all 16 are
/// being answered is a newcomer told "too many control clients" (and a newcomer beyond 16 of
/// those replaces the oldest of them, so every client gets an answer, never a reset). A large
/// answer (`show fdb` of a million entries, `fdb flush` of as many) is produced in bounded
/// slices, one slice per client per poll round and only once the previous one is written, so
/// forwarding goes on between slices and the server's memory stays bounded.
public final class ControlServer {
    /// What a request gets: a response, or a stream produced slice by slice.
    enum Reply {
        case response(ControlResponse)
        /// `next` appends the next slice of the answer to the buffer (a bounded amount: `show
        /// fdb` appends 2,048 entries, about 200 KB) and returns false once it appended the last
        /// one.
        case stream(next: (inout [UInt8]) -> Bool)
        /// The answer comes later: `start` is handed the function that delivers it (once, on
        /// the loop), as a change waiting for the control-plane worker does. The client waits
        /// without being polled, at most `laterTimeoutNanoseconds`.
        case later(start: (@escaping (ControlResponse) -> Void) -> Void)
    }

    struct Client {
        var fd: Int32
        /// Marked for closing at the end of this service pass (set once, never cleared).
        var closing = false
        /// Turned away (over the client limit): only waits to be closed.
        var rejected = false
        /// The rest of a streamed answer, while there is more.
        var stream: ((inout [UInt8]) -> Bool)? = nil
        /// Slices of the streamed answer produced so far (a slice may write nothing: a flush).
        var slices = 0
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        var deadline: Int64
        var answered = false
        /// What the client's credentials allow (SO_PEERCRED, read at accept).
        var rights = Rights.change
        /// The response is written and the write side shut: discard input until the client
        /// closes (closing with unread input would reset the connection and lose the reply).
        var draining = false
        /// Waiting for a `.later` answer (not polled meanwhile).
        var waiting = false
        /// Which client this is, for a `.later` answer (the index moves).
        var serial = 0
    }
    var nextSerial = 0

    /// What a client may do, from its credentials: root and the bridge's own user may change
    /// the bridge, members of `--control-admin-group` too; members of `--control-group` may only
    /// show it. (Whoever else can connect, with both groups given, may do nothing.) Under
    /// `--user`, the bridge's user is shared with whatever else runs as it, so its other
    /// processes may only show: changes take root or the admin group.
    enum Rights: Comparable {
        case none, show, change
    }

    /// The rights of the client on `fd`.
    func rights(of fd: Int32) -> Rights {
        var uid: UInt32 = 0
        var gids = [UInt32](repeating: 0, count: 257)
        let n = Int(ctb_peer_credentials(fd, &uid, &gids, Int32(gids.count)))
        guard n > 0 else { return .none }
        if uid == 0 { return .change }
        if uid == geteuid() { return userMayChange ? .change : .show }
        let groups = gids.prefix(n)
        if let adminGroup, groups.contains(adminGroup) { return .change }
        if let readerGroup, groups.contains(readerGroup) { return .show }
        // connecting at all took the file's permission: with one group, that group's
        return readerGroup != nil && adminGroup != nil ? .none : (adminGroup != nil ? .change : .show)
    }

    static let maximumRequest = 64 * 1024
    static let maximumClients = 16
    static let timeoutNanoseconds: Int64 = 5_000_000_000
    /// How long a client has to send its whole request line.
    static let requestTimeoutNanoseconds: Int64 = 1_000_000_000
    /// How long a `.later` answer may take: a name lookup's resolver gives up within
    /// seconds (5 per try, two tries by default), the kernel's changes take milliseconds.
    static let laterTimeoutNanoseconds: Int64 = 30_000_000_000
    /// This server's (a test's is shorter).
    var laterTimeout = laterTimeoutNanoseconds

    let path: String
    let listener: Int32
    /// `--control-group` (may show) and `--control-admin-group` (may change too), by gid.
    let readerGroup: gid_t?
    let adminGroup: gid_t?
    /// Whether the bridge's own user (not root) may change it: false under `--user`.
    let userMayChange: Bool
    /// Answers each request (the daemon).
    let respond: (ControlRequest) -> Reply
    var clients: [Client] = []

    /// Binds `path`: mode 0600; 0660 and the group's with one of `readers` (`--control-group`)
    /// and `admins` (`--control-admin-group`); 0666 with both, each request then checked
    /// against the client's credentials. The caller holds the path's `ControlClaim`, so a
    /// socket file already there is stale and is replaced.
    init(path: String, readers: String? = nil, admins: String? = nil, userMayChange: Bool = true,
         respond: @escaping (ControlRequest) -> Reply) throws(StartupError) {
        self.path = path
        self.userMayChange = userMayChange
        self.respond = respond
        func gid(_ group: String?, _ option: String) throws(StartupError) -> gid_t? {
            guard let group else { return nil }
            guard let g = getgrnam(group) else { throw StartupError("--\(option) '\(group)': no such group") }
            return g.pointee.gr_gid
        }
        readerGroup = try gid(readers, "control-group")
        adminGroup = try gid(admins, "control-admin-group")
        try ControlSocket.makeDirectory(for: path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw StartupError("--control '\(path)': exists and is not a socket") }
            // the caller holds the path's claim (`ControlClaim`): a socket there is a dead
            // bridge's, or an exiting one's that no longer answers for the name
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StartupError("--control '\(path)': socket: \(describeErrno(errno))") }
        var address = ControlSocket.address(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if bound < 0 || listen(fd, 16) < 0 {
            let e = errno
            close(fd)
            throw StartupError("--control '\(path)': \(describeErrno(e))\(ControlSocket.unwritableHint(e))")
        }
        // the file's mode is the first gate; with both groups no one group can be the file's,
        // so anyone may connect and each request is checked against the client's credentials
        switch (readerGroup, adminGroup) {
        case (nil, nil): chmod(path, 0o600)
        case (let g?, nil), (nil, let g?):
            chown(path, getuid(), g)
            chmod(path, 0o660)
        case (_?, _?): chmod(path, 0o666)
        }
        listener = fd
    }

    deinit {
        for c in clients { Glibc.close(c.fd) }
        Glibc.close(listener)
        unlink(path)
    }

    /// Appends the clients' entries (the listener's comes before them: a steady descriptor of
    /// the loop).
    func appendClientEntries(to fds: inout [pollfd]) {
        for c in clients {
            fds.append(pollfd(fd: c.closing || c.waiting ? -1 : c.fd, events: Int16(c.answered && !c.draining ? POLLOUT : POLLIN), revents: 0))
        }
    }

    /// The earliest client deadline, for the poll timeout.
    var nextDeadline: Int64? { clients.lazy.map(\.deadline).min() }

    /// Clients being turned away.
    var rejecting: Int { clients.lazy.filter { $0.rejected && !$0.closing }.count }

    /// Marks client `k` for closing at the end of the pass.
    func markClosing(_ k: Int) { clients[k].closing = true }

    /// Serves what the wait reported (`fds` holds the listener's entry, then those
    /// `appendClientEntries` added, in order): accepts, reads, answers through `handle`,
    /// writes, times out.
    func service(_ fds: ArraySlice<pollfd>, now: Int64, handle: (ControlRequest) -> Reply) {
        var index = fds.startIndex + 1
        for k in clients.indices {
            let revents = fds[index].revents
            index += 1
            if revents == 0 || clients[k].closing { continue }
            let before = (clients[k].written, clients[k].slices)
            if clients[k].draining {
                discardInput(k)
            } else if clients[k].answered {
                writeOut(k)
            } else {
                readIn(k, now: now, handle: handle)
            }
            // a streamed answer that moves on keeps its client alive
            if (clients[k].written, clients[k].slices) != before { clients[k].deadline = now + Self.timeoutNanoseconds }
        }
        if fds[fds.startIndex].revents & Int16(POLLIN) != 0 { acceptAll(now: now, handle: handle) }
        for k in clients.indices where clients[k].deadline <= now {  // timed out
            if clients[k].waiting, !clients[k].closing {
                clients[k].waiting = false
                answer(k, .failure("no answer within \(OptionTable.plain(Double(laterTimeout) / 1e9)) s (the change may still take effect: show ports says)"), now: now)
            } else {
                markClosing(k)
            }
        }
        if clients.contains(where: \.closing) {
            for c in clients where c.closing { Glibc.close(c.fd) }
            clients.removeAll(where: \.closing)
        }
    }

    func acceptAll(now: Int64, handle: (ControlRequest) -> Reply) {
        while true {
            let fd = ctb_accept(listener)
            if fd < 0 { return }
            nextSerial += 1
            var client = Client(fd: fd, deadline: now + Self.requestTimeoutNanoseconds, serial: nextSerial)
            client.rights = rights(of: fd)
            let served = clients.indices.filter { !clients[$0].rejected && !clients[$0].closing }
            if served.count >= Self.maximumClients {
                // full: the oldest client that has its whole answer but has not closed, else
                // the one waiting longest for its own request line makes room (the array is in
                // arrival order), so trickling or lingering clients cannot keep others out
                if let oldest = served.first(where: { clients[$0].draining }) ?? served.first(where: { !clients[$0].answered }) {
                    markClosing(oldest)
                } else {
                    // every place is being answered: say so at once, then drain the client's
                    // request until it closes (closing with its request unread would reset the
                    // connection and lose the answer); past as many more, the oldest of those
                    // (answered already) goes
                    if rejecting >= Self.maximumClients, let oldest = clients.indices.first(where: { clients[$0].rejected && !clients[$0].closing }) {
                        markClosing(oldest)
                    }
                    clients.append(client)
                    clients[clients.count - 1].rejected = true
                    answer(clients.count - 1, .failure("too many control clients (\(Self.maximumClients) at once), try again"), now: now)
                    continue
                }
            }
            clients.append(client)
            // tapbridge's own client has usually sent its request already
            readIn(clients.count - 1, now: now, handle: handle)
        }
    }

    func readIn(_ k: Int, now: Int64, handle: (ControlRequest) -> Reply) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(clients[k].fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 { break }  // the client closed: answer what we have, if it is a line
            if n < 0 { if errno == EINTR { continue }; if errno == EAGAIN { return }; break }
            clients[k].input += buffer[0..<n]
            if clients[k].input.count > Self.maximumRequest {
                answer(k, .failure("request larger than \(Self.maximumRequest) bytes"), now: now)
                return
            }
            if clients[k].input.contains(UInt8(ascii: "\n")) { break }
        }
        let line = clients[k].input.prefix { $0 != UInt8(ascii: "\n") }
        guard !line.isEmpty else {
            markClosing(k)
            return
        }
        guard let request = try? ControlCoding.decoder().decode(ControlRequest.self, from: Data(line)) else {
            return answer(k, .failure("malformed request: expected one line of JSON like {\"command\":\"show-ports\"}"), now: now)
        }
        let needed: Rights = ControlSocket.changingCommands.contains(request.command) ? .change : .show
        guard clients[k].rights >= needed else {
            let what = needed == .change ? "'\(request.command)' changes the bridge: only root, \(userMayChange ? "the bridge's user and " : "")members of --control-admin-group may\(userMayChange ? "" : " (the bridge runs as --user: other processes of that user may only show it)")" : "only root, the bridge's user and members of --control-group or --control-admin-group may use this bridge's control socket"
            return answer(k, .failure("permission denied: \(what)"), now: now)
        }
        switch handle(request) {
        case .response(let response): answer(k, response, now: now)
        case .stream(let next):
            clients[k].answered = true
            clients[k].deadline = now + Self.timeoutNanoseconds
            clients[k].stream = next
            writeOut(k)
        case .later(let start):
            // answered (so a newcomer does not take its place as one still sending its
            // request), waiting (not polled) until the answer comes
            clients[k].answered = true
            clients[k].waiting = true
            clients[k].deadline = now + laterTimeout
            let serial = clients[k].serial
            start { [weak self] response in self?.deliver(response, to: serial) }
        }
    }

    /// A `.later` answer for client `serial`, if it still waits.
    func deliver(_ response: ControlResponse, to serial: Int) {
        guard let k = clients.firstIndex(where: { $0.serial == serial }), clients[k].waiting, !clients[k].closing else { return }
        clients[k].waiting = false
        answer(k, response, now: ctb_monotonic_ns())
    }

    /// Starts writing `response` to client `k`; from now on it has 5 s per step of progress.
    func answer(_ k: Int, _ response: ControlResponse, now: Int64) {
        clients[k].output = Self.encode(response)
        clients[k].answered = true
        clients[k].deadline = now + Self.timeoutNanoseconds
        writeOut(k)
    }

    static func encode(_ response: ControlResponse) -> [UInt8] {
        var bytes = (try? [UInt8](ControlCoding.encoder().encode(response))) ?? Array("{\"ok\":false,\"error\":\"cannot encode\"}".utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    /// Writes what is pending; when a streamed answer's slice is written, produces the next one
    /// (one per call, so one per poll round).
    func writeOut(_ k: Int) {
        if clients[k].written == clients[k].output.count, let next = clients[k].stream {
            clients[k].output.removeAll(keepingCapacity: true)
            clients[k].written = 0
            clients[k].slices += 1
            if !next(&clients[k].output) { clients[k].stream = nil }
        }
        while clients[k].written < clients[k].output.count {
            let n = clients[k].output.withUnsafeBytes {
                send(clients[k].fd, $0.baseAddress! + clients[k].written, $0.count - clients[k].written, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { return }
                break
            }
            clients[k].written += n
        }
        if clients[k].written < clients[k].output.count {
            markClosing(k)  // the client went away
            return
        }
        if clients[k].stream != nil { return }  // the next slice at the next POLLOUT
        shutdown(clients[k].fd, Int32(SHUT_WR))
        clients[k].draining = true
        discardInput(k)
    }

    func discardInput(_ k: Int) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(clients[k].fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 { continue }
            if n < 0, errno == EINTR { continue }
            if n < 0, errno == EAGAIN { return }
            markClosing(k)  // EOF or error
            return
        }
    }
}
