import CTapBridge
import Foundation
import Glibc
import TapBridgeCore

/// The control socket, served by the bridge's poll loop: a Unix stream socket where each
/// connection carries one request line and gets one response.
///
/// Nothing a client does can stall forwarding: sockets are non-blocking, a request may be at
/// most 64 KiB (larger: an error reply, then close), a client that has not sent a full line
/// within 5 s is dropped, at most 16 clients are served at once, and a response that the
/// client does not read is dropped with it after the same 5 s.
final class ControlServer {
    struct Client {
        var fd: Int32
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        var deadline: Int64
        var answered = false
        /// The response is written and the write side shut: discard input until the client
        /// closes (closing with unread input would reset the connection and lose the reply).
        var draining = false
    }

    static let maximumRequest = 64 * 1024
    static let maximumClients = 16
    static let timeoutNanoseconds: Int64 = 5_000_000_000

    let path: String
    let listener: Int32
    var clients: [Client] = []

    /// Binds `path` (mode 0600, or 0660 with `group`). A stale socket file (no process behind
    /// it) is replaced; a live one means another bridge has that name: refused.
    init(path: String, group: String?) throws(StartupError) {
        self.path = path
        guard path.utf8.count < 108 else { throw StartupError("--control '\(path)': longer than a Unix socket path may be (107 bytes)") }
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw StartupError("--control '\(path)': exists and is not a socket") }
            if Self.isLive(path) {
                throw StartupError("--control '\(path)': another tapbridge is running with this control socket (give a different --name or --control)")
            }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StartupError("--control '\(path)': socket: \(describeErrno(errno))") }
        var address = Self.address(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if bound < 0 || listen(fd, 16) < 0 {
            let e = errno
            close(fd)
            throw StartupError("--control '\(path)': \(describeErrno(e))")
        }
        var mode: mode_t = 0o600
        if let group {
            guard let g = getgrnam(group) else {
                close(fd)
                unlink(path)
                throw StartupError("--control-group '\(group)': no such group")
            }
            chown(path, getuid(), g.pointee.gr_gid)
            mode = 0o660
        }
        chmod(path, mode)
        listener = fd
    }

    deinit {
        for c in clients { close(c.fd) }
        close(listener)
        unlink(path)
    }

    static func address(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// A blocking stream socket connected to `path`, or the errno of the failure.
    static func connectTo(_ path: String) -> Result<Int32, Errno> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(Errno(errno)) }
        var address = address(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc < 0 {
            let e = errno
            close(fd)
            return .failure(Errno(e))
        }
        return .success(fd)
    }

    /// Whether a process accepts connections on `path`.
    static func isLive(_ path: String) -> Bool {
        guard case .success(let fd) = connectTo(path) else { return false }
        close(fd)
        return true
    }

    /// Appends the descriptors to poll.
    func appendPollEntries(to fds: inout [pollfd]) {
        fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0))
        for c in clients {
            fds.append(pollfd(fd: c.fd, events: Int16(c.answered && !c.draining ? POLLOUT : POLLIN), revents: 0))
        }
    }

    /// The earliest client deadline, for the poll timeout.
    var nextDeadline: Int64? { clients.lazy.map(\.deadline).min() }

    /// Serves what poll reported (`fds` holds exactly the entries `appendPollEntries` added,
    /// in order): accepts, reads, answers through `handle`, writes, times out.
    func service(_ fds: ArraySlice<pollfd>, now: Int64, handle: (ControlRequest) -> ControlResponse) {
        var index = fds.startIndex + 1
        for k in clients.indices {
            let revents = fds[index].revents
            index += 1
            if revents == 0 { continue }
            if clients[k].draining {
                discardInput(k)
            } else if clients[k].answered {
                writeOut(k)
            } else {
                readIn(k, handle: handle)
            }
        }
        if fds[fds.startIndex].revents & Int16(POLLIN) != 0 { acceptAll(now: now) }
        for k in clients.indices where clients[k].deadline <= now { clients[k].fd = -clients[k].fd - 1 }  // timed out
        if clients.contains(where: { $0.fd < 0 }) {
            for c in clients where c.fd < 0 { close(-c.fd - 1) }
            clients.removeAll { $0.fd < 0 }
        }
    }

    func acceptAll(now: Int64) {
        while true {
            let fd = ctb_accept(listener)
            if fd < 0 { return }
            var client = Client(fd: fd, deadline: now + Self.timeoutNanoseconds)
            if clients.count >= Self.maximumClients {
                client.output = Self.encode(.failure("too many control clients, try again"))
                _ = client.output.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                close(fd)
                continue
            }
            clients.append(client)
        }
    }

    func readIn(_ k: Int, handle: (ControlRequest) -> ControlResponse) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(clients[k].fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 { break }  // the client closed: answer what we have, if it is a line
            if n < 0 { if errno == EINTR { continue }; if errno == EAGAIN { return }; break }
            clients[k].input += buffer[0..<n]
            if clients[k].input.count > Self.maximumRequest {
                answer(k, .failure("request larger than \(Self.maximumRequest) bytes"))
                return
            }
            if clients[k].input.contains(UInt8(ascii: "\n")) { break }
        }
        let line = clients[k].input.prefix { $0 != UInt8(ascii: "\n") }
        guard !line.isEmpty else {
            clients[k].fd = -clients[k].fd - 1
            return
        }
        let response: ControlResponse
        do {
            let request = try ControlCoding.decoder().decode(ControlRequest.self, from: Data(line))
            response = handle(request)
        } catch {
            response = .failure("malformed request: expected one line of JSON like {\"command\":\"show-ports\"}")
        }
        answer(k, response)
    }

    func answer(_ k: Int, _ response: ControlResponse) {
        clients[k].output = Self.encode(response)
        clients[k].answered = true
        writeOut(k)
    }

    static func encode(_ response: ControlResponse) -> [UInt8] {
        var bytes = (try? [UInt8](ControlCoding.encoder().encode(response))) ?? Array("{\"ok\":false,\"error\":\"cannot encode\"}".utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }

    func writeOut(_ k: Int) {
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
            clients[k].fd = -clients[k].fd - 1  // the client went away: close
            return
        }
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
            clients[k].fd = -clients[k].fd - 1  // EOF or error: close
            return
        }
    }
}
