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
/// has what that buys). What it gives up: encap=sealed and raw, counters per remote, and
/// --accept-peers; the device also takes VXLAN of its VNI from any sender, as
/// a Linux vxlan device does.
///
/// The remotes of one VNI and UDP port share one device and so one port (the first as the
/// device's `remote`, the others as all-zero FDB entries: head-end replication of broadcast,
/// unicast learned per remote by the device). Its MTU fits the narrowest of their paths.
/// `remote add` appends an FDB entry to the device of the remote's VNI and port, or makes one;
/// `remote del` deletes the entry, and the device with its last. A device is named
/// `vx-BRIDGE` (`vxN-BRIDGE` for the N+1th, a hash when the name would be longer than 15
/// bytes), marked with its bridge and pid in its alias, and removed at exit; a start that finds
/// one its killed predecessor left removes it first. It has no IPv6 link-local address.
final class KernelVXLAN {
    struct Device {
        let name: String
        let vni: VNI
        let port: UInt16
        /// Its remotes and their addresses, in the same order (each an all-zero FDB entry).
        var remotes: [RemoteSpec]
        var endpoints: [SocketAddress]
        /// The narrowest path's MTU at the device's making, and the device's MTU that fits it.
        let pathMTU: Int
        let mtu: Int
    }

    let bridge: String
    let logger: Logger
    let defaultVNI: VNI
    /// The address given with `--listen`, the devices' source address.
    let local: String?
    /// The most MACs a device it makes learns (`maxaddress`, the bridge's `--max-macs`): a
    /// device learns from any sender of its VNI, so without a bound anyone who reaches the UDP
    /// port decides how large its table grows.
    let maximumAddresses: Int
    private(set) var devices: [Device] = []

    /// Makes the devices of `remotes` (all with `datapath=kernel`; none: `remote add` makes
    /// them); removes what it made if any fails.
    init(remotes: [RemoteSpec], vni defaultVNI: VNI, local: String?, bridge: String, maximumAddresses: Int, logger: Logger) throws(StartupError) {
        self.bridge = bridge
        self.maximumAddresses = maximumAddresses
        self.logger = logger
        self.defaultVNI = defaultVNI
        self.local = local
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
                devices.append(try make(Self.deviceName(bridge: bridge, index: index), vni: group.vni, port: group.port, remotes: group.remotes))
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

    /// Why `remote` cannot share a device with `first`: one port has one VLAN and flooding
    /// setting, and one vxlan device one IP family.
    private static func check(_ remote: RemoteSpec, _ address: SocketAddress, joining first: RemoteSpec, _ firstAddress: SocketAddress, vni: VNI) throws(StartupError) {
        if remote.configuration != first.configuration {
            throw StartupError("remote \(remote.name): the datapath=kernel remotes of VNI \(vni.rawValue) on UDP port \(remote.port) share one vxlan device, and so one port, with \(first.name): give them the same vlan=, trunk=, native=, learning=, flooding= and storm=")
        }
        if address.isIPv4 != firstAddress.isIPv4 {
            throw StartupError("remote \(remote.name): one vxlan device carries one IP family, and \(first.name) is IPv\(firstAddress.isIPv4 ? 4 : 6); give it another vni= or port")
        }
    }

    private static func resolve(_ remote: RemoteSpec) throws(StartupError) -> SocketAddress {
        do {
            return try SocketAddress.resolve(host: remote.host, port: remote.port, ipv4Only: false)
        } catch {
            throw StartupError("remote \(remote.name): \(error.message)")
        }
    }

    /// The device MTU that fits a path of `pathMTU` bytes: less the outer IP header, UDP, VXLAN
    /// and the inner Ethernet header (50 bytes over IPv4, 70 over IPv6), as the Linux vxlan
    /// device computes it from its lower device.
    static func deviceMTU(pathMTU: Int, ipv4: Bool, vni: VNI) -> Int {
        VXLANFormat(vni: vni).frameLimit(pathMTU: min(pathMTU, 65_535), ipv4: ipv4) - 14
    }

    private func make(_ name: String, vni: VNI, port: UInt16, remotes: [RemoteSpec]) throws(StartupError) -> Device {
        var addresses: [SocketAddress] = []
        for remote in remotes {
            addresses.append(try Self.resolve(remote))
            try Self.check(remote, addresses.last!, joining: remotes[0], addresses[0], vni: vni)
        }
        let v4 = addresses[0].isIPv4
        let paths = addresses.map { $0.pathMTU ?? 1500 }
        let narrowest = paths.indices.min { paths[$0] < paths[$1] }!
        let mtu = Self.deviceMTU(pathMTU: paths[narrowest], ipv4: v4, vni: vni)
        let overhead = min(paths[narrowest], 65_535) - mtu
        guard mtu >= 576 else {
            throw StartupError("remote \(remotes[narrowest].name): its path MTU is \(paths[narrowest]) bytes, too small for a vxlan device (\(overhead) bytes of headers)")
        }
        try takeOver(name)
        var add = ["link", "add", name, "mtu", "\(mtu)", "type", "vxlan", "id", "\(vni.rawValue)", "dstport", "\(port)", "remote", addresses[0].host,
                   "maxaddress", "\(maximumAddresses)"]
        if let local { add += ["local", local] }
        try IPRoute.run("ip", add, for: "datapath=kernel")
        do throws(StartupError) {
            try IPRoute.run("ip", ["link", "set", "dev", name, "alias", "tapbridge \(bridge) pid \(getpid())"], for: "datapath=kernel")
            // no IPv6 link-local address: the device is a bridge port, not a host on the lab's
            // segment (else it sends its own router solicitations, MLD reports and DAD probes
            // to every remote, and answers neighbour solicitations there)
            try IPRoute.run("ip", ["link", "set", "dev", name, "addrgenmode", "none"], for: "datapath=kernel")
            for address in addresses.dropFirst() {
                try IPRoute.run("bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", name, "dst", address.host], for: "datapath=kernel")
            }
            try IPRoute.run("ip", ["link", "set", "dev", name, "up"], for: "datapath=kernel")
        } catch {
            remove(name)
            throw error
        }
        logger.info("vxlan device \(name) (made: removed on exit): VNI \(vni.rawValue), UDP port \(port), remotes \(addresses.map(\.description).joined(separator: ", ")), mtu \(mtu) (fits the \(paths[narrowest])-byte path to \(addresses[narrowest])), learns at most \(maximumAddresses) MACs; the kernel carries its frames (datapath=kernel)")
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
    var ports: [PortSpec] { devices.map(Self.port) }

    private static func port(_ device: Device) -> PortSpec {
        PortSpec(name: device.name, mode: .packet, configuration: device.remotes[0].configuration)
    }

    /// Whether a remote is named `name`.
    func has(remoteNamed name: String) -> Bool { devices.contains { $0.remotes.contains { $0.name == name } } }

    /// `remote add ...,datapath=kernel`: `remote` joins the device of its VNI and UDP port (an
    /// all-zero FDB entry; `bridge fdb append`), or gets a device of its own. Returns the
    /// answer's line, and the port to attach for a new device.
    func add(_ remote: RemoteSpec) throws(StartupError) -> (line: String, newPort: PortSpec?) {
        let vni = remote.vni ?? defaultVNI
        let address = try Self.resolve(remote)
        if has(remoteNamed: remote.name) || devices.contains(where: { $0.endpoints.contains(address) }) {
            throw StartupError("remote \(remote.name) (\(address)) exists")
        }
        guard let i = devices.firstIndex(where: { $0.vni == vni && $0.port == remote.port }) else {
            let used = Set(devices.map(\.name))
            let name = (0...).lazy.map { Self.deviceName(bridge: self.bridge, index: $0) }.first { !used.contains($0) }!
            let device = try make(name, vni: vni, port: remote.port, remotes: [remote])
            devices.append(device)
            return ("remote \(remote.name) added (\(address), vxlan device \(name) made, mtu \(device.mtu))", Self.port(device))
        }
        let device = devices[i]
        try Self.check(remote, address, joining: device.remotes[0], device.endpoints[0], vni: vni)
        try IPRoute.run("bridge", ["fdb", "append", "00:00:00:00:00:00", "dev", device.name, "dst", address.host], for: "datapath=kernel")
        devices[i].remotes.append(remote)
        devices[i].endpoints.append(address)
        var line = "remote \(remote.name) added (\(address), to vxlan device \(device.name))"
        if let path = address.pathMTU, case let fits = Self.deviceMTU(pathMTU: path, ipv4: address.isIPv4, vni: vni), fits < device.mtu {
            line += "; its path MTU \(path) is narrower than the \(device.pathMTU) the device's MTU \(device.mtu) fits: frames larger than \(fits) bytes leave for it as IP fragments (restart the bridge to fit it)"
        }
        logger.info("vxlan device \(device.name): \(line)")
        return (line, nil)
    }

    /// `remote del NAME|ADDRESS:PORT` of a `datapath=kernel` remote (nil: none of these): its
    /// FDB entry goes (`bridge fdb del`); with the device's last remote, the device goes too,
    /// after `removingPort` has removed its port.
    func remove(_ which: String, removingPort: (String) -> Void) throws(StartupError) -> String? {
        let address = SocketAddress.split(which).flatMap { try? SocketAddress.resolve(host: $0.0, port: $0.1, ipv4Only: false) }
        for i in devices.indices {
            guard let k = devices[i].remotes.indices.first(where: { devices[i].remotes[$0].name == which || devices[i].endpoints[$0] == address }) else { continue }
            let device = devices[i]
            let name = device.remotes[k].name
            if device.remotes.count == 1 {
                removingPort(device.name)
                remove(device.name)
                devices.remove(at: i)
                return "remote \(name) removed (with vxlan device \(device.name), its last remote)"
            }
            try IPRoute.run("bridge", ["fdb", "del", "00:00:00:00:00:00", "dev", device.name, "dst", device.endpoints[k].host], for: "datapath=kernel")
            devices[i].remotes.remove(at: k)
            devices[i].endpoints.remove(at: k)
            let forgotten = forgetLearned(behind: device.endpoints[k].host, on: device.name)
            logger.info("vxlan device \(device.name): remote \(name) removed\(forgotten > 0 ? ", with the \(forgotten) MAC addresses learned behind it" : "")")
            return "remote \(name) removed (from vxlan device \(device.name))"
        }
        return nil
    }

    /// Deletes the MAC addresses device `device` learned behind `host` (frames to them would go
    /// on going there); how many.
    private func forgetLearned(behind host: String, on device: String) -> Int {
        struct Entry: Decodable { let mac: String; let dst: String? }
        let entries: [Entry]
        do {
            let json = try IPRoute.output("bridge", ["-j", "fdb", "show", "dev", device], for: "datapath=kernel", capacity: 4 << 20)
            entries = try JSONDecoder().decode([Entry].self, from: Data(json.utf8))
        } catch {
            logger.warning("vxlan device \(device): cannot list the MAC addresses it learned behind \(host) (\(error)); they stay until they age out")
            return 0
        }
        var forgotten = 0
        for entry in entries where entry.dst == host && entry.mac != "00:00:00:00:00:00" {
            if (try? IPRoute.run("bridge", ["fdb", "del", entry.mac, "dev", device, "dst", host], for: "datapath=kernel")) != nil { forgotten += 1 }
        }
        return forgotten
    }

    /// The remotes' names, for errors.
    var remoteNames: [String] { devices.flatMap { $0.remotes.map(\.name) } }

    /// The IP MTU that fits every device's path (at most 1500, as for the other remotes), and why.
    var innerMTU: (mtu: Int, why: String)? {
        devices.min { $0.mtu < $1.mtu }.map { (min($0.mtu, 1500), "fits the \($0.pathMTU)-byte path of vxlan device \($0.name)") }
    }

    /// What is on the other end of port `name`, if it is a device of these (`show ports`).
    func peer(ofPort name: String) -> String? {
        devices.first { $0.name == name }.map {
            "Linux vxlan device (datapath=kernel): VNI \($0.vni.rawValue), UDP port \($0.port), remotes \($0.endpoints.map(\.description).joined(separator: ", ")), mtu \($0.mtu), learns at most \(maximumAddresses) MACs"
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
