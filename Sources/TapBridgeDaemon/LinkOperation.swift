import CTapBridge
import Foundation
import Glibc
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices

/// A vxlan device as `datapath=kernel` makes it.
struct VXLANDeviceSpec: Sendable, Equatable {
    var name: String
    var vni: UInt32
    var port: UInt16
    /// The first remote's address (the device's `remote`); `others` get all-zero FDB entries.
    var remote: String
    var others: [String] = []
    /// `--listen`'s address, the source of its datagrams.
    var local: String?
    var mtu: Int
    /// `maxaddress`: the most MACs it learns.
    var maximumAddresses: Int
    /// The bridge that makes it (named in its alias, with the pid).
    var bridge: String
}

/// What the control plane asks of the kernel's links, as a value: `SystemLinkKernel` performs
/// it, a test's fake records it (`LinkControl`).
enum LinkOperation: Sendable, Equatable, CustomStringConvertible {
    /// Makes a vxlan device: `ip link add ... type vxlan`, its alias (`tapbridge BRIDGE pid
    /// PID`), no IPv6 link-local address, an all-zero FDB entry to each of `others`, up; a
    /// device of that name that a killed run of this bridge left (its alias names a pid that is
    /// gone) is removed first (count 1), any other refused. Removed again if a step fails.
    case makeVXLAN(VXLANDeviceSpec)
    /// Deletes a link (`ip link del`).
    case deleteLink(String)
    /// Appends an all-zero entry to `destination` in `device`'s FDB (head-end replication of
    /// broadcast to one more remote); rtnetlink.
    case fdbAppend(device: String, destination: String)
    /// Deletes that entry; rtnetlink.
    case fdbDelete(device: String, destination: String)
    /// Deletes every MAC `device` learned behind `destination` (count: how many); one dump and
    /// batched deletions over rtnetlink.
    case forgetLearned(device: String, destination: String)
    /// Finds the process that holds TAP `name` (`TapHolder`: a read of every process's
    /// descriptors, which grows with the host).
    case findHolder(String)
    /// Places a `netns=` port's TAP in its namespace (joining the namespace first if asked:
    /// `Namespaces`), addressed and up.
    case placeInNamespace(NamespacePlacement)
    /// Leaves a namespace (closes the lock): removed if no other bridge is in it (count 1).
    case leaveNamespace(String, lock: Int32)
    /// Waits until TAP `name`, removed just before, is gone (`DescriptorCloser`: the kernel
    /// unregisters it in 14-40 ms), so that a TAP of that name can be made again.
    case waitForClose(String)

    var description: String {
        switch self {
        case .makeVXLAN(let d):
            "make vxlan \(d.name) vni \(d.vni) port \(d.port) remote \(d.remote)\(d.others.map { " +\($0)" }.joined())\(d.local.map { " local \($0)" } ?? "") mtu \(d.mtu) maxaddress \(d.maximumAddresses)"
        case .deleteLink(let name): "delete \(name)"
        case .fdbAppend(let device, let destination): "fdb append 00:00:00:00:00:00 dev \(device) dst \(destination)"
        case .fdbDelete(let device, let destination): "fdb del 00:00:00:00:00:00 dev \(device) dst \(destination)"
        case .forgetLearned(let device, let destination): "fdb forget dev \(device) dst \(destination)"
        case .findHolder(let name): "find the holder of \(name)"
        case .placeInNamespace(let p): "\(p.join ? "join namespace \(p.namespace), " : "")move \(p.link) into \(p.namespace)\(p.mac.map { " mac \($0)" } ?? "")\(p.address.map { " addr \($0)" } ?? "")"
        case .leaveNamespace(let ns, _): "leave namespace \(ns)"
        case .waitForClose(let name): "wait for \(name) to close"
        }
    }
}

/// What an operation found.
struct LinkOutcome: Sendable, Equatable {
    /// `forgetLearned`: how many MACs went; `makeVXLAN`: 1 if a left-over device was replaced.
    var count = 0
    /// `findHolder`: the process holding the TAP.
    var holder: TapHolder.Holder? = nil
    /// `placeInNamespace` that joined: how.
    var namespace: NamespaceJoin? = nil
}

/// Performs link operations; runs on `LinkControl`'s worker.
protocol LinkKernel: AnyObject, Sendable {
    func perform(_ operation: LinkOperation) throws(StartupError) -> LinkOutcome
}

/// The system's links, over rtnetlink (`netlink.c`: vxlan devices, links moved, addressed and
/// up, FDB entries; a remote's learned MACs are thousands), as iproute2 sends them; iproute2's
/// `ip` only for `ip netns add|del`, which needs its mounts.
final class SystemLinkKernel: LinkKernel {
    static let purpose = "datapath=kernel"

    func perform(_ operation: LinkOperation) throws(StartupError) -> LinkOutcome {
        switch operation {
        case .makeVXLAN(let device):
            let replaced = try takeOver(device)
            try make(device)
            return LinkOutcome(count: replaced ? 1 : 0)
        case .deleteLink(let name):
            try Self.delete(name)
            return LinkOutcome()
        case .findHolder(let name):
            return LinkOutcome(holder: TapHolder.find(name))
        case .placeInNamespace(let placement):
            return try place(placement)
        case .leaveNamespace(let ns, let lock):
            return try leave(ns, lock: lock)
        case .waitForClose(let name):
            DescriptorCloser.finishPending(name)
            return LinkOutcome()
        case .fdbAppend(let device, let destination), .fdbDelete(let device, let destination):
            let add = if case .fdbAppend = operation { true } else { false }
            let (index, family, bytes) = try Self.target(device, destination)
            let zero = [UInt8](repeating: 0, count: 6)
            let rc = ctb_fdb_change(add ? 1 : 0, index, zero, family, bytes)
            guard rc == 0 else { throw StartupError("bridge fdb \(add ? "append" : "del") 00:00:00:00:00:00 dev \(device) dst \(destination): \(describeErrno(-rc))") }
            return LinkOutcome()
        case .forgetLearned(let device, let destination):
            let (index, family, bytes) = try Self.target(device, destination)
            let n = ctb_fdb_forget(index, family, bytes)
            guard n >= 0 else { throw StartupError("vxlan device \(device): cannot forget the MACs learned behind \(destination): \(describeErrno(-n))") }
            return LinkOutcome(count: Int(n))
        }
    }

    /// The device's ifindex and the destination as rtnetlink takes it.
    private static func target(_ device: String, _ destination: String) throws(StartupError) -> (Int32, Int32, [UInt8]) {
        let index = ctb_if_index(device)
        guard index > 0 else { throw StartupError("vxlan device \(device): gone (\(describeErrno(-index)))") }
        guard let (family, bytes) = address(destination) else { throw StartupError("vxlan device \(device): '\(destination)' is not an IP address") }
        return (index, family, bytes)
    }

    /// An IP address's family (`AF_INET`, `AF_INET6`) and bytes, as rtnetlink takes them.
    static func address(_ text: String) -> (Int32, [UInt8])? {
        SocketAddress.numericHost(text).map { ($0.family == .v4 ? AF_INET : AF_INET6, $0.bytes) }
    }

    static func delete(_ name: String) throws(StartupError) {
        let rc = ctb_link_delete(name)
        guard rc == 0 else { throw StartupError("ip link del \(name): \(describeErrno(-rc))") }
    }

    private func make(_ device: VXLANDeviceSpec) throws(StartupError) {
        let what = "ip link add \(device.name) type vxlan id \(device.vni) remote \(device.remote)"
        guard let (family, remote) = Self.address(device.remote) else { throw StartupError("\(what): '\(device.remote)' is not an IP address") }
        var local: [UInt8]? = nil
        if let text = device.local {
            guard let (localFamily, bytes) = Self.address(text), localFamily == family else {
                throw StartupError("\(what): local \(text) is not an IPv\(family == AF_INET ? 4 : 6) address, as the remote is")
            }
            local = bytes
        }
        // (no IPv6 link-local address: the device is a bridge port, not a host on the lab's
        // segment; else it sends its own router solicitations, MLD reports and DAD probes to
        // every remote, and answers neighbour solicitations there)
        let rc = ctb_vxlan_create(device.name, UInt32(device.mtu), device.vni, device.port, family, remote, local, UInt32(device.maximumAddresses),
                                  "tapbridge \(device.bridge) pid \(getpid())")
        guard rc == 0 else { throw StartupError("\(what): \(describeErrno(-rc))") }
        do throws(StartupError) {
            for other in device.others { _ = try perform(.fdbAppend(device: device.name, destination: other)) }
        } catch {
            try? Self.delete(device.name)
            throw error
        }
    }

    /// A device named as `device` that a killed run of this bridge left (its alias names the
    /// bridge and a pid that is gone) is removed (true); any other interface of that name is
    /// refused.
    private func takeOver(_ device: VXLANDeviceSpec) throws(StartupError) -> Bool {
        let name = device.name
        guard ctb_if_index(name) > 0 else { return false }
        let alias = ((try? String(contentsOfFile: "/sys/class/net/\(name)/ifalias", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        let mark = "tapbridge \(device.bridge) pid "
        guard alias.hasPrefix(mark), let pid = Int32(alias.dropFirst(mark.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else {
            throw StartupError("datapath=kernel: an interface \(name) exists, and not as one a stopped tapbridge named '\(device.bridge)' left (its alias says '\(alias)'); remove it (ip link del \(name)) or give this bridge another --name")
        }
        try Self.delete(name)
        return true
    }
}
