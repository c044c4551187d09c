import Foundation

/// Who holds a TAP: the process with a /dev/net/tun descriptor attached to it (its
/// `/proc/PID/fdinfo/FD` says `iff:\tNAME`). Asked once per packet port that is a TAP, at start
/// or at `port add`, to say in the log and in `show ports` which program serves it.
public enum TapHolder {
    public struct Holder: Sendable, Equatable {
        public var pid: Int32
        public var command: String
        public init(pid: Int32, command: String) { (self.pid, self.command) = (pid, command) }
    }

    /// The first process holding TAP `name` (not this one), or nil (not a TAP, or no holder
    /// visible: another PID namespace, or no permission). Reads every process's descriptors:
    /// run it off the loop.
    public static func find(_ name: String) -> Holder? {
        guard FileManager.default.fileExists(atPath: "/sys/class/net/\(name)/tun_flags") else { return nil }  // not a TUN/TAP
        let me = getpid()
        let needle = "iff:\t\(name)\n"
        guard let pids = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for entry in pids {
            guard let pid = Int32(entry), pid != me,
                let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fdinfo")
            else { continue }
            for fd in fds {
                guard let info = try? String(contentsOfFile: "/proc/\(pid)/fdinfo/\(fd)", encoding: .utf8), info.contains(needle) else { continue }
                let command = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
                return Holder(pid: pid, command: command ?? "pid \(pid)")
            }
        }
        return nil
    }
}
