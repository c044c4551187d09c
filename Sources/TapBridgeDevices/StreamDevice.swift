import CTapBridge
public import Glibc
public import TapBridgeCore

/// Where a stream port connects, or a stream listener listens: a Unix socket path or a TCP
/// address.
public enum StreamEndpoint: Sendable, Equatable, CustomStringConvertible {
    case unix(String)
    case tcp(host: String, port: UInt16)

    /// `unix:PATH`, `HOST:PORT`, `[IPV6]:PORT`; with `listening`, a bare `PORT` is loopback's
    /// (`127.0.0.1:PORT`: a listener reaches beyond the host only when given an address).
    public init(parsing text: String, listening: Bool) throws(StartupError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw StartupError("unix: needs a path (unix:/run/lab/vm.sock)") }
            guard path.utf8.count < 108 else { throw StartupError("\(path) is longer than a Unix socket path may be (107 bytes)") }
            self = .unix(path)
            return
        }
        if listening, let port = UInt16(text), port > 0 {
            self = .tcp(host: "127.0.0.1", port: port)
            return
        }
        guard let (host, port) = SocketAddress.split(text) else {
            throw StartupError("expected unix:PATH, HOST:PORT or [IPV6]:PORT\(listening ? " (or a PORT alone, on 127.0.0.1)" : ""), got '\(text)'")
        }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }

    /// The Unix socket address of `path` (cut to what `sun_path` holds).
    public static func unixAddress(_ path: String) -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    /// The socket address: `resolved` if given (a TCP host looked up off the loop), else
    /// resolved now.
    func address(resolved given: SocketAddress? = nil) throws(StartupError) -> (storage: sockaddr_storage, length: socklen_t, family: Int32) {
        var storage = sockaddr_storage()
        switch self {
        case .unix(let path):
            let sun = Self.unixAddress(path)
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: sun, as: sockaddr_un.self) }
            return (storage, socklen_t(MemoryLayout<sockaddr_un>.size), AF_UNIX)
        case .tcp(let host, let port):
            let resolved: SocketAddress
            if let given { resolved = given } else { resolved = try SocketAddress.resolve(host: host, port: port, ipv4Only: false) }
            let family = resolved.isIPv4 ? AF_INET : AF_INET6
            let length = withUnsafeMutableBytes(of: &storage) { resolved.write(family: family, to: $0.baseAddress!) }
            return (storage, length, family)
        }
    }

    /// TCP_NODELAY on a TCP stream socket (either end): frames go out as they come, not held
    /// for more.
    public static func sendAtOnce(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Starts connecting a non-blocking stream socket to this endpoint, never waiting: `fd` is
    /// connected, or (`connected` false: a TCP handshake under way) becomes writable once the
    /// connection is made or has failed (`StreamEndpoint.outcome(of:)` says which). Throws
    /// what fails at once (a Unix socket nobody listens on, a refused loopback port).
    public func connect(resolved: SocketAddress? = nil) throws(StartupError) -> (fd: Int32, connected: Bool) {
        var (storage, length, family) = try address(resolved: resolved)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StartupError("\(self): socket: \(describeErrno(errno))") }
        if family != AF_UNIX { Self.sendAtOnce(fd) }
        let rc = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) } }
        let e = rc == 0 ? 0 : errno
        if e == EINPROGRESS { return (fd, false) }
        if e != 0 {
            close(fd)
            throw failure(e)
        }
        return (fd, true)
    }

    /// How the connect under way on `fd` ended, once it is writable: nil if connected.
    public func outcome(of fd: Int32) -> StartupError? {
        var code: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &size) < 0 { code = errno }
        return code == 0 ? nil : failure(code)
    }

    func failure(_ e: Int32) -> StartupError {
        let hint = e == ENOENT || e == ECONNREFUSED ? " (nothing listens there yet)" : e == EACCES ? " (the socket's permissions keep this user out)" : ""
        return StartupError("cannot connect to \(self): \(describeErrno(e))\(hint)")
    }

    /// A non-blocking listening socket on this endpoint. A Unix path gets `mode` (and `group`,
    /// a gid, when given); a socket file already there is replaced only when nobody answers on
    /// it (a bridge that died), never when another program listens.
    public func listen(mode: UInt32, group: UInt32?) throws(StartupError) -> Int32 {
        var (storage, length, family) = try address()
        if case .unix(let path) = self {
            var st = stat()
            if lstat(path, &st) == 0 {
                guard st.st_mode & S_IFMT == S_IFSOCK else { throw StartupError("--stream-listen \(self): \(path) exists and is not a socket") }
                // (a Unix connect never waits: it is taken or refused at once)
                if let (fd, _) = try? StreamEndpoint.unix(path).connect() {
                    close(fd)
                    throw StartupError("--stream-listen \(self): another program listens on \(path) (another tapbridge?)")
                }
                unlink(path)  // left by a bridge that died
            }
        }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw StartupError("--stream-listen \(self): socket: \(describeErrno(errno))") }
        var one: Int32 = 1
        if family != AF_UNIX { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        // (a Unix socket is made with the umask's mode: none for others until chmod below)
        let mask = family == AF_UNIX ? umask(0o077) : 0
        let bound = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        let e = errno
        if family == AF_UNIX { umask(mask) }
        if bound < 0 || Glibc.listen(fd, 64) < 0 {
            let e = bound < 0 ? e : errno
            close(fd)
            let hint = e == EADDRINUSE ? " (another program listens there)" : e == EACCES ? " (the directory is not writable by this user)" : e == ENOENT ? " (its directory does not exist)" : ""
            throw StartupError("--stream-listen \(self): \(describeErrno(e))\(hint)")
        }
        if case .unix(let path) = self {
            if let group, chown(path, geteuid(), group) != 0 {
                let e = errno
                close(fd)
                unlink(path)
                throw StartupError("--stream-listen \(self): cannot give the socket to group \(group): \(describeErrno(e))")
            }
            chmod(path, mode)
        }
        return fd
    }
}

/// One connection carrying Ethernet frames in QEMU's stream framing (`StreamFraming`): a QEMU
/// `-netdev stream` or `-netdev socket` NIC, or another program speaking it. One port.
///
/// Reads reassemble frames from any pieces (`StreamReader`); a length of 0 or beyond QEMU's
/// own limit closes the connection (the framing is lost: nothing after it can be trusted).
/// Writes never block the loop: what the socket does not take waits in a bounded queue
/// (`StreamWriteQueue`, sent when the socket is writable again), and a frame that does not fit
/// there is dropped and counted, so a peer that stops reading costs the others nothing.
public final class StreamDevice: PortDevice {
    public let fd: Int32
    /// Who is on the other end, for logs and `show ports`: `unix:/run/lab/vm.sock, pid 812`,
    /// `127.0.0.1:40188`.
    public let peer: String
    var port = PortID(0)
    let reader = StreamReader()
    let queue: StreamWriteQueue

    public init(fd: Int32, peer: String, queueBytes: Int = 512 * 1024) {
        self.fd = fd
        self.peer = peer
        queue = StreamWriteQueue(capacity: queueBytes)
    }

    deinit { close(fd) }

    /// The peer of accepted connection `fd`: its address (TCP), or the process (Unix).
    public static func describePeer(_ fd: Int32, listening endpoint: StreamEndpoint) -> String {
        switch endpoint {
        case .unix(let path):
            var uid: UInt32 = 0
            let pid = ctb_peer_pid(fd, &uid)
            return pid > 0 ? "unix:\(path), pid \(pid), uid \(uid)" : "unix:\(path)"
        case .tcp:
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let ok = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) } } == 0
            return ok ? withUnsafeBytes(of: &storage) { SocketAddress($0.baseAddress!).map { "\($0)" } ?? "?" } : "?"
        }
    }

    /// The process on the other end of a Unix connection (SO_PEERCRED), 0 if unknown.
    public static func peerProcess(_ fd: Int32) -> Int32 {
        var uid: UInt32 = 0
        return max(0, ctb_peer_pid(fd, &uid))
    }

    public var pollDescriptor: Int32? { fd }
    /// Complete frames only (QEMU's stream carries no virtio-net header).
    public var offloadCapabilities: OffloadCapabilities { .none(maximumFrameLength: StreamFraming.maximumFrame) }
    public func didAddPort(_ port: PortID, name: String) { self.port = port }

    /// Bytes waiting for the peer to read (shown by `show ports`).
    public var queuedBytes: Int { queue.count }

    /// How the connection ended, once it did with frames of the same read still to deliver:
    /// they go through first, and the next call reports the end.
    var ended: PortError? = nil

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        if let ended { throw ended }
        var n = 0
        // the end of the connection, after the frames read before it
        func end(_ error: PortError) throws(PortError) -> Int {
            guard n > 0 else { throw error }
            ended = error
            return n
        }
        while !batch.isFull {
            let frame: UnsafeRawBufferPointer?
            do {
                frame = try reader.next()
            } catch {
                return try end(PortError(.disconnected, code: EPROTO, operation: "\(error): the framing is lost, connection closed"))
            }
            if let frame {
                // (a runt goes on: the bridge counts it as it does any port's)
                if frame.count > batch.frameCapacity {
                    batch.recordDrop(on: port, .oversized, bytes: frame.count)
                } else {
                    batch.append(frame, from: port)
                    n += 1
                }
                continue
            }
            let space = reader.space()
            let got = recv(fd, space.baseAddress, space.count, Int32(MSG_DONTWAIT))
            if got > 0 {
                reader.didRead(got)
                continue
            }
            if got == 0 {
                let mid = reader.pendingBytes
                return try end(PortError(.disconnected, operation: mid > 0 ? "the peer closed the connection in the middle of a frame (\(mid) bytes of it)" : "the peer closed the connection"))
            }
            switch errno {
            case EINTR: continue
            case EAGAIN:
                batch.drained = true
                return n
            case ECONNRESET, ETIMEDOUT, EPIPE: return try end(PortError(.disconnected, code: errno, operation: "the connection was reset"))
            case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH:
                return try end(PortError(.disconnected, code: errno, operation: "cannot connect: \(describeErrno(errno))"))
            default: return try end(PortError(.failed, code: errno, operation: "recv"))
            }
        }
        return n
    }

    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        // behind frames still waiting: in order, after them
        if !queue.isEmpty { return queue.append(frame: frame) ? .sent : .wouldBlock }
        var header = UInt32(frame.count).bigEndian
        let total = StreamFraming.headerLength + frame.count
        let written: Int = withUnsafeMutableBytes(of: &header) { h in
            var parts = [iovec(iov_base: h.baseAddress, iov_len: h.count), iovec(iov_base: UnsafeMutableRawPointer(mutating: frame.baseAddress), iov_len: frame.count)]
            return parts.withUnsafeMutableBufferPointer { iov in
                var message = msghdr()
                message.msg_iov = iov.baseAddress
                message.msg_iovlen = 2
                while true {
                    let n = sendmsg(fd, &message, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                    if n < 0 && errno == EINTR { continue }
                    return n < 0 ? -Int(errno) : n
                }
            }
        }
        if written == total { return .sent }
        if written >= 0 { return queue.append(frame: frame, skippingFirst: written) ? .sent : .wouldBlock }
        switch Int32(-written) {
        case EAGAIN: return queue.append(frame: frame) ? .sent : .wouldBlock
        case EPIPE, ECONNRESET, ENOTCONN: return .linkDown  // the read side reports it and the port goes
        default: return .failed
        }
    }

    public var awaitsWritable: Bool { !queue.isEmpty }
    public var mayAwaitWritable: Bool { true }

    public func writable() {
        while !queue.isEmpty {
            let pending = queue.pending
            let n = send(fd, pending.baseAddress, pending.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            if n > 0 {
                queue.consumed(n)
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                // EAGAIN: later; a broken connection: the read side reports it, the port goes,
                // and the queue with it (polling for POLLOUT on it would only spin)
                if n < 0 && errno != EAGAIN { queue.consumed(queue.count) }
                return
            }
        }
    }
}
