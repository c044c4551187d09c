import CTapBridge
import Foundation
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
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
///
/// What this asks of the kernel goes through `LinkControl`: at start-up and exit at once, at
/// run time on its worker (the answer to `remote add|del` comes when the kernel has done it;
/// the control responder holds the next change meanwhile), so the loop never waits for `ip`
/// or for the thousands of FDB deletions of a remote's learned MACs.
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
    let control: LinkControl
    private(set) var devices: [Device] = []

    /// Makes the devices of `remotes` (all with `datapath=kernel`; none: `remote add` makes
    /// them); removes what it made if any fails.
    init(remotes: [RemoteSpec], vni defaultVNI: VNI, local: String?, bridge: String, maximumAddresses: Int, control: LinkControl,
         logger: Logger) throws(StartupError) {
        self.bridge = bridge
        self.control = control
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
                var addresses: [SocketAddress] = []
                for remote in group.remotes { addresses.append(try Self.resolve(remote)) }
                let (device, spec) = try plan(Self.deviceName(bridge: bridge, index: index), vni: group.vni, port: group.port, remotes: group.remotes, at: addresses)
                made(device, replaced: try control.performNow([.makeVXLAN(spec)])[0].count == 1)
                devices.append(device)
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

    /// The device `name` for `remotes` (at `addresses`), and what makes it: its MTU fits the
    /// narrowest of their paths.
    private func plan(_ name: String, vni: VNI, port: UInt16, remotes: [RemoteSpec], at addresses: [SocketAddress]) throws(StartupError) -> (Device, VXLANDeviceSpec) {
        for (remote, address) in zip(remotes, addresses) { try Self.check(remote, address, joining: remotes[0], addresses[0], vni: vni) }
        let v4 = addresses[0].isIPv4
        let paths = addresses.map { $0.pathMTU ?? 1500 }
        let narrowest = paths.indices.min { paths[$0] < paths[$1] }!
        let mtu = Self.deviceMTU(pathMTU: paths[narrowest], ipv4: v4, vni: vni)
        let overhead = min(paths[narrowest], 65_535) - mtu
        guard mtu >= 576 else {
            throw StartupError("remote \(remotes[narrowest].name): its path MTU is \(paths[narrowest]) bytes, too small for a vxlan device (\(overhead) bytes of headers)")
        }
        let spec = VXLANDeviceSpec(name: name, vni: vni.rawValue, port: port, remote: addresses[0].host, others: addresses.dropFirst().map(\.host), local: local,
                                   mtu: mtu, maximumAddresses: maximumAddresses, bridge: bridge)
        return (Device(name: name, vni: vni, port: port, remotes: remotes, endpoints: addresses, pathMTU: paths[narrowest], mtu: mtu), spec)
    }

    private func made(_ device: Device, replaced: Bool) {
        let narrowest = device.endpoints.min { ($0.pathMTU ?? 1500) < ($1.pathMTU ?? 1500) }.map(\.description) ?? "?"
        if replaced { logger.notice("vxlan device \(device.name): left by a tapbridge that is gone (killed?): removed, and made again") }
        logger.info("vxlan device \(device.name) (made: removed on exit): VNI \(device.vni.rawValue), UDP port \(device.port), remotes \(device.endpoints.map(\.description).joined(separator: ", ")), mtu \(device.mtu) (fits the \(device.pathMTU)-byte path to \(narrowest)), learns at most \(maximumAddresses) MACs; the kernel carries its frames (datapath=kernel)")
    }

    /// Each device as a port: a packet socket on it, with its remotes' VLAN and flooding settings.
    var ports: [PortSpec] { devices.map(Self.port) }

    private static func port(_ device: Device) -> PortSpec {
        PortSpec(name: device.name, mode: .packet, configuration: device.remotes[0].configuration)
    }

    /// Whether a remote is named `name`.
    func has(remoteNamed name: String) -> Bool { devices.contains { $0.remotes.contains { $0.name == name } } }

    /// `remote add ...,datapath=kernel`: `remote` (at `address`) joins the device of its VNI and
    /// UDP port (an all-zero FDB entry), or gets a device of its own, on the worker;
    /// `completion` gets the answer's line and the port to attach for a new device. Checks
    /// throw at once.
    func add(_ remote: RemoteSpec, at address: SocketAddress,
             _ completion: @escaping (Result<(line: String, newPort: PortSpec?), StartupError>) -> Void) throws(StartupError) {
        let vni = remote.vni ?? defaultVNI
        if has(remoteNamed: remote.name) || devices.contains(where: { $0.endpoints.contains(address) }) {
            throw StartupError("remote \(remote.name) (\(address)) exists")
        }
        guard let i = devices.firstIndex(where: { $0.vni == vni && $0.port == remote.port }) else {
            let used = Set(devices.map(\.name))
            let name = (0...).lazy.map { Self.deviceName(bridge: self.bridge, index: $0) }.first { !used.contains($0) }!
            let (device, spec) = try plan(name, vni: vni, port: remote.port, remotes: [remote], at: [address])
            control.perform([.makeVXLAN(spec)]) { [self] result in
                completion(result.map { outcomes in
                    made(device, replaced: outcomes.first?.count == 1)
                    devices.append(device)
                    return ("remote \(remote.name) added (\(address), vxlan device \(name) made, mtu \(device.mtu))", Self.port(device))
                })
            }
            return
        }
        let device = devices[i]
        try Self.check(remote, address, joining: device.remotes[0], device.endpoints[0], vni: vni)
        control.perform([.fdbAppend(device: device.name, destination: address.host)]) { [self] result in
            completion(result.flatMap { _ in
                guard let i = devices.firstIndex(where: { $0.name == device.name }) else { return .failure(StartupError("vxlan device \(device.name): removed meanwhile")) }
                devices[i].remotes.append(remote)
                devices[i].endpoints.append(address)
                var line = "remote \(remote.name) added (\(address), to vxlan device \(device.name))"
                if let path = address.pathMTU, case let fits = Self.deviceMTU(pathMTU: path, ipv4: address.isIPv4, vni: vni), fits < device.mtu {
                    line += "; its path MTU \(path) is narrower than the \(device.pathMTU) the device's MTU \(device.mtu) fits: frames larger than \(fits) bytes leave for it as IP fragments (restart the bridge to fit it)"
                }
                logger.info("vxlan device \(device.name): \(line)")
                return .success((line, nil))
            })
        }
    }

    /// `remote del NAME|ADDRESS:PORT` of a `datapath=kernel` remote (`address`: `which`
    /// resolved, if it is an address); false if it is none of these. Its FDB entry and the MACs
    /// the device learned behind it go, on the worker; with the device's last remote, the
    /// device goes too, after `removingPort` has removed its port. `completion` gets the
    /// answer's line.
    func remove(_ which: String, at address: SocketAddress?, removingPort: (String) -> Void,
                _ completion: @escaping (Result<String, StartupError>) -> Void) -> Bool {
        for i in devices.indices {
            guard let k = devices[i].remotes.indices.first(where: { devices[i].remotes[$0].name == which || devices[i].endpoints[$0] == address }) else { continue }
            let device = devices[i]
            let name = device.remotes[k].name
            if device.remotes.count == 1 {
                removingPort(device.name)
                devices.remove(at: i)
                control.perform([.deleteLink(device.name)]) { [self] result in
                    removed(device.name, result)
                    completion(.success("remote \(name) removed (with vxlan device \(device.name), its last remote)"))
                }
                return true
            }
            let host = device.endpoints[k].host
            control.perform([.fdbDelete(device: device.name, destination: host), .forgetLearned(device: device.name, destination: host)]) { [self] result in
                completion(result.map { outcomes in
                    if let i = devices.firstIndex(where: { $0.name == device.name }), let k = devices[i].remotes.firstIndex(where: { $0.name == name }) {
                        devices[i].remotes.remove(at: k)
                        devices[i].endpoints.remove(at: k)
                    }
                    let forgotten = outcomes.last?.count ?? 0
                    logger.info("vxlan device \(device.name): remote \(name) removed\(forgotten > 0 ? ", with the \(forgotten) MAC addresses learned behind it" : "")")
                    let macs = forgotten == 1 ? "the MAC" : "the \(forgotten) MACs"
                    return "remote \(name) removed (from vxlan device \(device.name)\(forgotten > 0 ? ", with \(macs) it learned behind it" : ""))"
                })
            }
            return true
        }
        return false
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

    /// At exit, or when start-up fails: every device made here (after what the worker still
    /// has, so a device it was making goes too).
    func releaseAll() {
        control.finish()
        for device in devices {
            removed(device.name, Result { () throws(StartupError) in try control.performNow([.deleteLink(device.name)]) })
        }
        devices.removeAll()
    }

    private func removed(_ name: String, _ result: Result<[LinkOutcome], StartupError>) {
        switch result {
        case .success: logger.info("vxlan device \(name): removed")
        case .failure(let error): logger.warning("vxlan device \(name): not removed: \(error.message)")
        }
    }
}
