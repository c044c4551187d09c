import CTapBridge
import Foundation
import Glibc
import Logging
import TapBridgeCore
import TapBridgeDevices
import TapBridgeOptions

/// Remotes with `datapath=kernel`: the kernel's own VXLAN device carries their frames, and
/// tapbridge switches to and from it through a packet socket, as to any interface.
///
/// ```
///   TAP ◄─► tapbridge ◄─ packet socket, 64 KiB super-frames ─► vx-NAME (Linux vxlan)
///                                                              │ encapsulation, GSO and GRO
///                                                              ▼ in the kernel
///                                                      UDP 4789 ◄─► remotes (any VTEP)
/// ```
/// Open vSwitch does the same with its `vxlan_sys_4789` port. tapbridge's own UDP datapath
/// (`datapath=user`, the default) must cut every super-frame into VXLAN datagrams that are
/// valid frame by frame, checksum them, and coalesce them again on the far side, with every
/// byte crossing between tapbridge and the kernel; the vxlan device segments after
/// encapsulation and coalesces before decapsulation, inside the kernel (Docs/Benchmarks.md
/// has what that buys). What it gives up: encap=sealed and raw, `remote add`/`del`, counters
/// per remote, and --accept-peers; the device also takes VXLAN of its VNI from any sender, as
/// a Linux vxlan device does.
///
/// The remotes of one VNI and UDP port share one device and so one port (the first as the
/// device's `remote`, the others as all-zero FDB entries: head-end replication of broadcast,
/// unicast learned per remote by the device). Its MTU fits the narrowest of their paths. It is
/// made at start, named `vx-BRIDGE` (`vxN-BRIDGE` for the N+1th, a hash when the name would be
/// longer than 15 bytes), marked with its bridge and pid in its alias, and removed at exit; a
/// start that finds one its killed predecessor left removes it first.
final class KernelVXLAN {
    struct Device {
        let name: String
        let vni: VNI
        let port: UInt16
        let remotes: [RemoteSpec]
        let endpoints: [SocketAddress]
        /// The narrowest path's MTU, and the device's MTU that fits it.
        let pathMTU: Int
        let mtu: Int
    }

    let bridge: String
    let logger: Logger
    private(set) var devices: [Device] = []

    /// Makes the devices of `remotes` (all with `datapath=kernel`); removes what it made if any
    /// fails. `local`: the address given with `--listen`, the devices' source address.
    init(remotes: [RemoteSpec], vni defaultVNI: VNI, local: String?, bridge: String, logger: Logger) throws(StartupError) {
        self.bridge = bridge
        self.logger = logger
        var groups: [(vni: VNI, port: UInt16, remotes: [RemoteSpec])] = []
        for remote in remotes {
            let vni = remote.vni ?? defaultVNI
            if let i = groups.firstIndex(where: { $0.vni == vni && $0.port == remote.port }) {
                groups[i].remotes.append(remote)
            } else {
                groups.append((vni, remote.port, [remote]))
            }
        }
        do throws(StartupError) {
            for (index, group) in groups.enumerated() {
                devices.append(try make(Self.deviceName(bridge: bridge, index: index), vni: group.vni, port: group.port, remotes: group.remotes, local: local))
            }
        } catch {
            releaseAll()
            throw error
        }
    }

    /// `vx-BRIDGE`, `vx1-BRIDGE`, ...; `vx` and a hash of the bridge's name where that would not
    /// be a valid interface name.
    static func deviceName(bridge: String, index: Int) -> String {
        let suffix = index == 0 ? "" : "\(index)"
        let plain = "vx\(suffix)-\(bridge)"
        if plain.utf8.count <= 15, !bridge.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace }) { return plain }
        let hash = PortFactory.fnv1a(bridge)
        return "vx" + String(UInt32(truncatingIfNeeded: hash ^ hash >> 32), radix: 16) + (index == 0 ? "" : "-\(index)")
    }

    private func make(_ name: String, vni: VNI, port: UInt16, remotes: [RemoteSpec], local: String?) throws(StartupError) -> Device {
        let first = remotes[0]
        for remote in remotes.dropFirst() where remote.configuration != first.configuration {
            throw StartupError("remote \(remote.name): the datapath=kernel remotes of VNI \(vni.rawValue) on UDP port \(port) share one vxlan device, and so one port, with \(first.name): give them the same vlan=, trunk=, native=, learning=, flooding= and storm=")
        }
        var addresses: [SocketAddress] = []
        for remote in remotes {
            do {
                addresses.append(try SocketAddress.resolve(host: remote.host, port: remote.port, ipv4Only: false))
            } catch {
                throw StartupError("remote \(remote.name): \(error.message)")
            }
        }
        let v4 = addresses[0].isIPv4
        if let i = addresses.firstIndex(where: { $0.isIPv4 != v4 }) {
            throw StartupError("remote \(remotes[i].name): one vxlan device carries one IP family, and \(first.name) is IPv\(v4 ? 4 : 6); give it another vni= or port")
        }
        let paths = addresses.map { $0.pathMTU ?? 1500 }
        let narrowest = paths.indices.min { paths[$0] < paths[$1] }!
        let overhead = v4 ? 50 : 70  // outer IP, UDP, VXLAN and the inner Ethernet header
        let mtu = min(paths[narrowest], 65_535) - overhead
        guard mtu >= 576 else {
            throw StartupError("remote \(remotes[narrowest].name): its path MTU is \(paths[narrowest]) bytes, too small for a vxlan device (\(overhead) bytes of headers)")
        }
        try takeOver(name)
        var add = ["link", "add", name, "mtu", "\(mtu)", "type", "vxlan", "id", "\(vni.rawValue)", "dstport", "\(port)", "remote", addresses[0].host]
        if let local { add += ["local", local] }
        try IPRoute.run("ip", add, for: "datapath=kernel")
        do throws(StartupError) {
            try IPRoute.run("ip", ["link", "set", "dev", name, "alias", "tapbridge \(bridge) pid \(getpid())"], for: "datapath=kernel")
            for address in addresses.dropFirst() {
                try IPRoute.run("bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", address.host], for: "datapath=kernel")
            }
            try IPRoute.run("ip", ["link", "set", "dev", name, "up"], for: "datapath=kernel")
        } catch {
            remove(name)
            throw error
        }
        logger.info("vxlan device \(name) (made: removed on exit): VNI \(vni.rawValue), UDP port \(port), remotes \(addresses.map(\.description).joined(separator: ", ")), mtu \(mtu) (fits the \(paths[narrowest])-byte path to \(addresses[narrowest])); the kernel carries its frames (datapath=kernel)")
        return Device(name: name, vni: vni, port: port, remotes: remotes, endpoints: addresses, pathMTU: paths[narrowest], mtu: mtu)
    }

    /// A device named `name` that a killed run of this bridge left (its alias names the
    /// bridge and a pid that is gone) is removed; any other interface of that name is refused.
    private func takeOver(_ name: String) throws(StartupError) {
        guard ctb_if_index(name) > 0 else { return }
        let alias = ((try? String(contentsOfFile: "/sys/class/net/\(name)/ifalias", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        let mark = "tapbridge \(bridge) pid "
        guard alias.hasPrefix(mark), let pid = Int32(alias.dropFirst(mark.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else {
            throw StartupError("datapath=kernel: an interface \(name) exists, and not as one a stopped tapbridge named '\(bridge)' left (its alias says '\(alias)'); remove it (ip link del \(name)) or give this bridge another --name")
        }
        logger.notice("vxlan device \(name): left by a tapbridge that is gone (pid \(pid), killed?): removed, and made again")
        try IPRoute.run("ip", ["link", "del", "dev", name], for: "datapath=kernel")
    }

    /// Each device as a port: a packet socket on it, with its remotes' VLAN and flooding settings.
    var ports: [PortSpec] {
        devices.map { PortSpec(name: $0.name, mode: .packet, configuration: $0.remotes[0].configuration) }
    }

    /// The IP MTU that fits every device's path (at most 1500, as for the other remotes), and why.
    var innerMTU: (mtu: Int, why: String)? {
        devices.min { $0.mtu < $1.mtu }.map { (min($0.mtu, 1500), "fits the \($0.pathMTU)-byte path of vxlan device \($0.name)") }
    }

    /// What is on the other end of port `name`, if it is a device of these (`show ports`).
    func peer(ofPort name: String) -> String? {
        devices.first { $0.name == name }.map {
            "Linux vxlan device (datapath=kernel): VNI \($0.vni.rawValue), UDP port \($0.port), remotes \($0.endpoints.map(\.description).joined(separator: ", ")), mtu \($0.mtu)"
        }
    }

    /// Whether a device listens on UDP `port` (where tapbridge's own socket cannot).
    func uses(port: UInt16) -> Bool { devices.contains { $0.port == port } }

    /// At exit, or when start-up fails: every device made here.
    func releaseAll() {
        for device in devices { remove(device.name) }
        devices.removeAll()
    }

    private func remove(_ name: String) {
        do {
            try IPRoute.run("ip", ["link", "del", "dev", name], for: "datapath=kernel")
            logger.info("vxlan device \(name): removed")
        } catch {
            logger.warning("vxlan device \(name): not removed: \(error.message)")
        }
    }
}
