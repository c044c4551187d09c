import CTapBridge
import Glibc
import TapBridgeCore
import TapBridgeControl
import TapBridgeOptions
import TapBridgeDevices

extension RunAs {
    /// Whether `--user` can be done, before anything opens: it needs root, and no `netns=`
    /// port (removing the namespaces tapbridge made needs root at exit).
    func check(_ ports: [PortSpec]) throws(StartupError) {
        guard geteuid() == 0 else { throw StartupError("--user \(name): changing user needs root (tapbridge runs as uid \(geteuid()))") }
        if let spec = ports.first(where: { $0.namespace != nil }) {
            throw StartupError("--user with netns= (port \(spec.name)): the namespaces tapbridge makes are removed at exit, which needs root; make them beforehand (ip netns add) and move the TAPs yourself, or run without --user")
        }
    }

    /// Becomes this user; the process exits on failure (half dropped is no state to go on in).
    func drop() throws(StartupError) {
        func mask(_ capabilities: [(Int32, String)]) -> UInt64 { capabilities.reduce(0) { $0 | 1 << UInt64($1.0) } }
        let rc = groups.withUnsafeBufferPointer {
            ctb_drop_privileges(uid, gid, $0.baseAddress, Int32($0.count), mask(Self.keptCapabilities), mask(Self.ambientCapabilities))
        }
        if rc < 0 { throw StartupError("--user \(name): cannot drop privileges: \(describeErrno(-rc))") }
    }
}

extension BridgeDaemon {
    /// `--user`: hands the control socket to the user (so it, and root, may use it), then drops.
    func dropPrivileges(to runAs: RunAs) throws(StartupError) {
        if let path = controlPath, chown(path, runAs.uid, UInt32.max) != 0 {
            throw StartupError("--user \(runAs.name): cannot give the control socket \(path) to the user: \(describeErrno(errno))")
        }
        try runAs.drop()
        logger.info("running as \(runAs), with \(RunAs.keptCapabilities.map(\.1).joined(separator: " and ")) only (port add, ports coming back, MTUs put back, the vxlan devices of datapath=kernel remotes) and no new privileges")
    }
}
