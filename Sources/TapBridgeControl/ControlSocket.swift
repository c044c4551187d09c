import CTapBridge
import Foundation
public import Glibc
public import TapBridgeCore
public import TapBridgeDevices

/// The control socket's place and how a client reaches it, shared by the bridge's server and
/// the command's client.
public enum ControlSocket {
    /// The requests that change the bridge (everything else only shows it).
    public static let changingCommands: Set<String> = ["fdb-add", "fdb-del", "fdb-flush", "port-add", "port-del", "port-set", "remote-add", "remote-del"]

    /// What to do when the control socket's place is not writable (`errno` EACCES or EROFS),
    /// as the end of an error line; nothing for other errors.
    public static func unwritableHint(_ errno: Int32) -> String {
        errno == EACCES || errno == EROFS ? " (give a writable --control PATH, like --control $XDG_RUNTIME_DIR/tapbridge.sock, or --control none)" : ""
    }

    /// Creates the directory of control socket `path` if missing (mode 0755); throws with the
    /// cause (a read-only /run, a missing parent) rather than a later bind's ENOENT.
    public static func makeDirectory(for path: String) throws(StartupError) {
        guard path.utf8.count < 108 else { throw StartupError("--control '\(path)': longer than a Unix socket path may be (107 bytes)") }
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty, mkdir(dir, 0o755) != 0, errno != EEXIST {
            let e = errno
            throw StartupError("--control '\(path)': cannot create the directory \(dir): \(describeErrno(e))\(unwritableHint(e))")
        }
    }

    /// The Unix socket address of `path` (cut to what `sun_path` holds).
    public static func address(_ path: String) -> sockaddr_un { StreamEndpoint.unixAddress(path) }

    /// A blocking stream socket connected to `path`, or the errno of the failure. Never waits
    /// longer than `timeout` seconds: the connect is non-blocking, and a full backlog (a bridge
    /// that is stopped or does not accept, EAGAIN) is retried until then and reported as EAGAIN.
    public static func connectTo(_ path: String, timeout: Double = 5) -> Result<Int32, Errno> {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .failure(Errno(errno)) }
        var address = address(path)
        let deadline = ctb_monotonic_ns() + Int64(timeout * 1e9)
        while true {
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { break }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN, ctb_monotonic_ns() < deadline {
                usleep(20_000)
                continue
            }
            Glibc.close(fd)
            return .failure(Errno(e))
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        return .success(fd)
    }
}
