import Foundation
import Glibc
public import TapBridgeCore
import TapBridgeDevices
import TapBridgeOptions

/// The client side of the control protocol (`tapbridge show|fdb|port`).
public enum ControlClient {
    /// Sends one request to the bridge at `path` and returns its response (within 5 s; 35 for a change).
    /// Throws a one-line message when the bridge cannot be reached or answers nonsense.
    public static func exchange(_ request: ControlRequest, at path: String) throws(StartupError) -> ControlResponse {
        var reply: [UInt8] = []
        let sendError = try converse(request, at: path) { reply += $0 }
        return try decode(reply, sendError: sendError, path: path)
    }

    /// `show fdb`: the streamed answer read into a listing as it arrives (see `FDBListing`);
    /// an error answer throws its message.
    public static func fdb(_ request: ControlRequest, at path: String) throws(StartupError) -> FDBListing {
        var listing = FDBListing()
        let sendError = try converse(request, at: path) { piece throws(StartupError) in try listing.feed(piece) }
        guard listing.isComplete else {
            let response = try decode(listing.other, sendError: sendError, path: path)
            throw StartupError(response.ok ? "unreadable answer from \(path)" : response.error ?? "the bridge refused the request")
        }
        return listing
    }

    /// The response in `reply`, or why there is none.
    static func decode(_ reply: [UInt8], sendError: Int32?, path: String) throws(StartupError) -> ControlResponse {
        guard let response = try? ControlCoding.decoder().decode(ControlResponse.self, from: Data(reply)) else {
            if let sendError, reply.isEmpty { throw StartupError("sending to \(path): \(describeErrno(sendError))") }
            throw StartupError("unreadable answer from \(path)")
        }
        return response
    }

    /// Sends `request` and hands each piece of the answer to `body` as it arrives (a long
    /// answer, `show fdb` of millions of entries, is never held whole). Returns the errno of a
    /// send that failed (the server may have answered before reading), or nil.
    public static func converse(_ request: ControlRequest, at path: String, _ body: (ArraySlice<UInt8>) throws(StartupError) -> Void) throws(StartupError) -> Int32? {
        guard path.utf8.count < 108 else { throw StartupError("control socket path too long: \(path)") }
        let fd: Int32
        switch ControlSocket.connectTo(path) {
        case .success(let connected): fd = connected
        case .failure(let e) where e.code == EAGAIN:
            throw StartupError("the bridge at \(path) does not take connections (stopped, or too busy): no answer within 5 s")
        case .failure(let e) where e.code == EACCES || e.code == EPERM:
            throw StartupError("no permission to use \(path): run as root, or as a member of the bridge's --control-group")
        case .failure(let e):
            throw StartupError("cannot reach the bridge at \(path): \(describeErrno(e.code)) (is it running? give its --name or --control)")
        }
        defer { close(fd) }
        // a change may wait for a name lookup or the kernel (the bridge answers within 30 s)
        var timeout = timeval(tv_sec: ControlSocket.changingCommands.contains(request.command) ? 35 : 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard var line = try? [UInt8](ControlCoding.encoder().encode(request)) else { throw StartupError("cannot encode the request") }
        line.append(UInt8(ascii: "\n"))
        var sent = 0
        var sendError: Int32? = nil
        while sent < line.count {
            let n = line.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 {
                // The server may have answered and closed before reading (too many clients):
                // its answer is still there to read.
                sendError = errno
                break
            }
            sent += n
        }
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                if received > 0 || sendError == nil { throw StartupError("reading from \(path): \(describeErrno(errno == EAGAIN ? ETIMEDOUT : errno))") }
                break
            }
            received += n
            try body(buffer[0..<n])
        }
        return sendError
    }
}
