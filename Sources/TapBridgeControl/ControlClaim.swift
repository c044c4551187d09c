import Foundation
import Glibc
public import TapBridgeCore
import TapBridgeDevices

/// The right to a control socket path, and so to a bridge's name, held for the bridge's whole
/// life: an exclusive `flock` on `PATH.lock`, taken before any port is opened.
///
/// Checking that a name is free and binding its socket later was check-then-act: bridges
/// started at the same instant (a lab script with `&`, several systemd units) chose the same
/// free name and one of them died at the bind. A lock is taken or not in one step, and the
/// kernel drops it when its holder exits, however it exits:
/// ```
///   open(PATH.lock, O_CREAT) ──► flock(LOCK_EX | LOCK_NB) ──► EWOULDBLOCK: held by a running bridge
///                                        │
///                                        └─► still the file at PATH.lock (not unlinked by a
///                                            holder that was exiting)? yes: ours; no: again
/// ```
/// The holder unlinks the lock file before it lets go, so no file is left behind.
public final class ControlClaim {
    /// The control socket path claimed.
    public let path: String
    let lockPath: String
    let descriptor: Int32

    private init(path: String, lockPath: String, descriptor: Int32) {
        self.path = path
        self.lockPath = lockPath
        self.descriptor = descriptor
    }

    deinit {
        unlink(lockPath)
        close(descriptor)
    }

    /// Claims `path` (creating its directory); nil if a running bridge holds it. Throws when
    /// the lock file cannot be made (a read-only or unwritable directory), naming the cause.
    public static func take(_ path: String) throws(StartupError) -> ControlClaim? {
        try ControlSocket.makeDirectory(for: path)
        let lockPath = path + ".lock"
        for _ in 0..<100 {
            let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            if fd < 0 {
                let e = errno
                throw StartupError("--control '\(path)': cannot create the lock file \(lockPath): \(describeErrno(e))\(ControlSocket.unwritableHint(e))")
            }
            if flock(fd, LOCK_EX | LOCK_NB) != 0 {
                let e = errno
                close(fd)
                if e == EWOULDBLOCK { return nil }
                throw StartupError("--control '\(path)': cannot lock \(lockPath): \(describeErrno(e))")
            }
            // the holder before us may have unlinked the file as it let go: lock the new one
            var mine = stat(), current = stat()
            if fstat(fd, &mine) == 0, stat(lockPath, &current) == 0, mine.st_ino == current.st_ino, mine.st_dev == current.st_dev {
                return ControlClaim(path: path, lockPath: lockPath, descriptor: fd)
            }
            close(fd)
        }
        throw StartupError("--control '\(path)': the lock file \(lockPath) keeps changing")
    }

    /// `base` if free, else the first free of `base-2` ... `base-99`, with its claim; nil if
    /// all are taken.
    public static func takeFreeName(base: String) throws(StartupError) -> (name: String, claim: ControlClaim)? {
        for n in 1...99 {
            let name = n == 1 ? base : "\(base)-\(n)"
            if let claim = try take(ControlCoding.defaultPath(name: name)) { return (name, claim) }
        }
        return nil
    }
}
