import Glibc
public import TapBridgeCore

/// `--user USER[:GROUP]`: once every port, socket and file is open, the bridge becomes that
/// user and keeps two capabilities, the ones its running work needs:
/// - CAP_NET_ADMIN: `port add` of a TAP, a port whose interface comes back (bringing it up),
///   `mtu=` and putting an interface's MTU back when its port goes;
/// - CAP_NET_RAW: packet-socket ports added, or coming back, while it runs.
/// None is ambient: under `--user` tapbridge runs no program (the vxlan devices of
/// `datapath=kernel` remotes are made, changed and removed over rtnetlink, by the bridge's
/// own control-plane thread; the only program it runs, `ip netns`, is for `netns=`, which
/// `--user` refuses).
/// Everything else (CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, setuid, ...) leaves the permitted,
/// effective and bounding sets, and no_new_privs is set: nothing it executes can gain more.
public struct RunAs: Sendable, Equatable, CustomStringConvertible {
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    public var name: String
    public var groupName: String

    public static let keptCapabilities: [(Int32, String)] = [(12, "CAP_NET_ADMIN"), (13, "CAP_NET_RAW")]
    /// Those of `keptCapabilities` the programs it runs inherit: none (it runs none).
    public static let ambientCapabilities: [(Int32, String)] = []

    /// Looks `USER[:GROUP]` up (names or numbers). Without GROUP: the user's primary group and
    /// its supplementary groups, as a login would have.
    public init(parsing text: String) throws(StartupError) {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard !parts[0].isEmpty, parts.count == 1 || !parts[1].isEmpty else { throw StartupError("--user '\(text)': expected USER or USER:GROUP") }
        let user = getpwnam(parts[0]) ?? UInt32(parts[0]).flatMap { getpwuid($0) }
        guard let user else { throw StartupError("--user '\(text)': no user named \(parts[0])") }
        uid = user.pointee.pw_uid
        name = String(cString: user.pointee.pw_name)
        if parts.count == 2 {
            let group = getgrnam(parts[1]) ?? UInt32(parts[1]).flatMap { getgrgid($0) }
            guard let group else { throw StartupError("--user '\(text)': no group named \(parts[1])") }
            gid = group.pointee.gr_gid
            groups = [gid]
        } else {
            gid = user.pointee.pw_gid
            var count: Int32 = 64
            var list = [gid_t](repeating: 0, count: 64)
            if getgrouplist(name, gid, &list, &count) < 0 {
                list = [gid_t](repeating: 0, count: Int(count))
                _ = getgrouplist(name, gid, &list, &count)
            }
            groups = Array(list.prefix(Int(max(count, 0))))
        }
        groupName = getgrgid(gid).map { String(cString: $0.pointee.gr_name) } ?? "\(gid)"
    }

    public var description: String { "\(name) (uid \(uid)), group \(groupName) (gid \(gid))" }
}
