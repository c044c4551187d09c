import CTapBridge
import Glibc
public import TapBridgeCore

/// A TAP interface opened through /dev/net/tun (`IFF_TAP | IFF_NO_PI`, non-blocking):
/// one read(2) is one frame received, one write(2) one frame sent.
///
/// With offloads on (the default), the TAP is opened with `IFF_VNET_HDR` and tells the kernel
/// it takes partial checksums and TCP (and, where the kernel knows them, UDP) super-frames
/// (`TUNSETOFFLOAD`): the stack behind the TAP then hands over 64 KiB frames instead of 45
/// MTU-sized ones, and takes them the same way, each with its virtio-net header. A super-frame
/// goes from one such TAP to another untouched; the engine segments only for ports that cannot
/// take it. With offloads off, frames are complete and MTU-sized, as without the header.
///
/// If the TAP did not exist, opening creates it, non-persistent: the kernel deletes it when
/// the descriptor closes (on exit, or if tapbridge dies). A persistent TAP that existed before
/// (`ip tuntap add`) is attached and left in place.
public final class TapDevice: DescriptorDevice {
    /// The interface name.
    public let name: String
    /// Whether the TAP existed before tapbridge opened it (it then survives tapbridge).
    public let existedBefore: Bool
    /// The MTU at attach time (IP MTU: frames are up to MTU + 14, + 4 per VLAN tag).
    public let mtu: Int
    /// The MAC address given to the TAP it created (nil: the kernel's, or a TAP that existed).
    public let assignedMAC: MACAddress?
    /// The MTU was set from the bridge's default (the remotes' path), not by `mtu=`.
    public let mtuWasDefault: Bool
    /// The interface index.
    public let interfaceIndex: Int32
    /// What the TAP takes, as negotiated (`CTB_OFFLOAD_*` bits; 0 without the vnet header).
    public let offloads: Int32

    /// Why opening failed, for the caller's choice between an error and the packet fallback.
    public enum OpenError: Error {
        /// The interface exists but another process holds it (EBUSY).
        case busy
        /// The interface exists and is not a TAP (EINVAL on an existing name).
        case notATap
        /// Any other failure: a message naming the cause.
        case failed(String)
    }

    /// Whether interface `name` (which exists) is a TAP or TUN device: sysfs shows `tun_flags`
    /// for those only.
    public static func isTap(_ name: String) -> Bool {
        !name.contains("/") && access("/sys/class/net/\(name)/tun_flags", F_OK) == 0
    }

    /// Why opening TAP `name` was refused, with the fix that applies: the device node itself
    /// (`/dev/net/tun` not readable and writable by this user: a capability does not help),
    /// or the capability (creating a TAP, or attaching one this user does not own).
    static func permissionProblem(_ name: String, existed: Bool) -> String {
        if access("/dev/net/tun", R_OK | W_OK) != 0, errno == EACCES {
            var st = stat()
            let mode = stat("/dev/net/tun", &st) == 0 ? String(st.st_mode & 0o777, radix: 8) : "?"
            return "cannot open /dev/net/tun: permission denied (its mode is 0\(mode); a capability does not open it: run as root, or make it usable as most distributions ship it: chmod 0666 /dev/net/tun, where the kernel still checks CAP_NET_ADMIN or the TAP's owner)"
        }
        return existed
            ? "attaching TAP \(name) needs CAP_NET_ADMIN, or a persistent TAP made for your user (ip tuntap add dev \(name) mode tap user $USER); run as root, or: setcap cap_net_admin,cap_net_raw+ep $(command -v tapbridge)"
            : "creating TAP \(name) needs CAP_NET_ADMIN: run as root, or: setcap cap_net_admin,cap_net_raw+ep $(command -v tapbridge) (or pre-create it for your user: ip tuntap add dev \(name) mode tap user $USER)"
    }

    /// Attaches to (or creates) TAP `name`, brings it up, sets `mtu` if given (else
    /// `defaultMTU`, on a TAP it creates only: one that existed keeps its own); `offload`: open
    /// it with the vnet header and negotiate offloads.
    /// `mac`: the MAC address a TAP it creates gets (one that existed keeps its own).
    public init(name: String, mtu givenMTU: Int?, defaultMTU: Int? = nil, mac: MACAddress? = nil, offload: Bool = true) throws(OpenError) {
        existedBefore = ctb_if_index(name) > 0
        let requestedMTU = givenMTU ?? (existedBefore ? nil : defaultMTU)
        mtuWasDefault = givenMTU == nil && requestedMTU != nil
        let rc = ctb_tap_open(name, offload ? 1 : 0)
        if rc < 0 {
            switch -rc {
            case EBUSY: throw .busy
            case EINVAL where existedBefore: throw .notATap
            case EPERM, EACCES: throw .failed(Self.permissionProblem(name, existed: existedBefore))
            case ENOENT, ENODEV, ENXIO: throw .failed("/dev/net/tun is missing (load the tun module: modprobe tun)")
            default: throw .failed("TUNSETIFF failed: \(describeErrno(-rc))")
            }
        }
        if let mac, !existedBefore {
            let v = mac.rawValue
            let bytes = (0..<6).map { UInt8(truncatingIfNeeded: v >> (40 - 8 * UInt64($0))) }
            let e = ctb_if_set_mac(name, bytes)
            if e < 0 {
                close(rc)
                throw .failed("cannot set MAC \(mac): \(describeErrno(-e))")
            }
        }
        // a TAP that existed keeps living after us: its MTU is put back; a new one just goes
        let previousMTU = existedBefore ? Self.mtuToRestore(name, wanted: requestedMTU) : nil
        if let requestedMTU {
            let e = ctb_if_set_mtu(name, Int32(requestedMTU))
            if e < 0 {
                close(rc)
                throw .failed("cannot set MTU \(requestedMTU): \(describeErrno(-e))")
            }
        }
        func undo() {
            if let previousMTU { _ = ctb_if_set_mtu(name, previousMTU) }
            close(rc)
        }
        let up = ctb_if_set_up(name)
        if up < 0 {
            undo()
            throw .failed(-up == EPERM
                ? "the TAP is down, and bringing it up needs CAP_NET_ADMIN: bring it up once as root (ip link set \(name) up), or run with the capability"
                : "cannot bring the link up: \(describeErrno(-up))")
        }
        var negotiated: Int32 = 0
        if offload {
            negotiated = ctb_tap_negotiate_offload(rc)
            if negotiated < 0 {
                undo()
                throw .failed("cannot set up the vnet header: \(describeErrno(-negotiated)) (try offload=off)")
            }
        }
        self.name = name
        assignedMAC = existedBefore ? nil : mac
        mtu = Int(max(ctb_if_get_mtu(name), 0))
        interfaceIndex = ctb_if_index(name)
        offloads = offload ? negotiated : -1
        super.init(fd: rc)
        restoreMTU = previousMTU.map { (interfaceIndex, $0) }
        if !existedBefore {
            closesInterface = name
            // (failure only costs speed at exit: this TAP then goes when its descriptor closes)
            if ctb_if_set_group(interfaceIndex, Self.interfaceGroup) == 0 { Self.madeInGroup = true }
        }
    }

    /// The interface group of the TAPs this process creates: random, so no other program's
    /// interfaces share it. At exit they are deleted together (`deleteCreatedAtOnce`).
    public static let interfaceGroup = UInt32.random(in: 0x1000_0000...0xFFFF_FFF0)
    nonisolated(unsafe) static var madeInGroup = false

    /// Deletes every TAP this process created that is still in this namespace, in one
    /// rtnetlink request. Closing TAPs one by one costs an RCU grace period each (about
    /// 20 ms here): 500 TAPs took 11 s to stop; together they take about 50 ms. Their
    /// descriptors then close at once. Returns -errno on failure (the closes then do it).
    @discardableResult
    public static func deleteCreatedAtOnce() -> Int32 {
        guard madeInGroup else { return 0 }
        return ctb_links_delete_group(interfaceGroup)
    }

    /// Whether the TAP was opened with the vnet header.
    var hasVnetHeader: Bool { offloads >= 0 }

    /// The negotiated offloads in words (`csum tso uso`, or `off`).
    public var offloadDescription: String { OffloadCapabilities.describe(offloadCapabilities, on: hasVnetHeader) }

    /// What was negotiated; segments for it are cut to the MTU plus an Ethernet header with one
    /// tag.
    public override var offloadCapabilities: OffloadCapabilities {
        OffloadCapabilities(partialChecksum: offloads > 0 && offloads & CTB_OFFLOAD_CSUM != 0, tcpSegmentation: offloads > 0 && offloads & CTB_OFFLOAD_TSO != 0,
                            udpSegmentation: offloads > 0 && offloads & CTB_OFFLOAD_USO != 0, maximumFrameLength: mtu + 18, linkMTU: mtu)
    }

    override func readFrame(into slot: UnsafeMutableRawBufferPointer, headroom: Int) throws(PortError) -> ReadOutcome {
        let got: Int
        if hasVnetHeader {
            got = ctb_tap_read(fd, receiveHeader, slot.baseAddress, slot.count)
            if got >= 0 {
                let offload = FrameOffload(virtioHeader: UnsafeRawBufferPointer(start: receiveHeader, count: Int(CTB_VNET_HDR_LEN))) ?? .none
                return .frame(length: got, shift: 0, offload: offload)
            }
        } else {
            got = read(fd, slot.baseAddress, slot.count)
            if got >= 0 { return .frame(length: got, shift: 0, offload: .none) }
        }
        let code = hasVnetHeader ? Int32(-got) : errno
        switch code {
        case EINTR: return try readFrame(into: slot, headroom: headroom)
        case EAGAIN: return .drained
        case EBADFD, ENODEV, ENXIO: throw PortError(.deviceRemoved, code: code, operation: "read")
        default: throw PortError(.failed, code: code, operation: "read")
        }
    }

    /// The last write found the link down (EIO): written directly until one succeeds
    /// (`TapWriter`).
    var linkDown = true

    public override func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        if let writer = TapWriter.shared {
            if !linkDown, !offload.isSegmentation,
                writer.queue(frame, header: hasVnetHeader ? UnsafeRawPointer(header(for: offload)) : nil,
                             headerLength: hasVnetHeader ? Int(CTB_VNET_HDR_LEN) : 0, port: port, fd: fd, of: self) {
                return .queued
            }
            if writer.queued > 0 { writer.flushEarly() }  // (the queued frames first: a TAP's frames keep their order)
        }
        let outcome = write(frame, offload: offload)
        linkDown = outcome == .linkDown
        return outcome
    }

    public override func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        transmit(frame, offload: .none, to: port)
    }

    /// One write(2) of `frame` (behind its virtio-net header, if the TAP has them).
    func write(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) -> TransmitOutcome {
        if hasVnetHeader {
            let rc = ctb_tap_write(fd, header(for: offload), frame.baseAddress, frame.count)
            return rc >= 0 ? .sent : Self.transmitOutcome(errno: Int32(-rc))
        }
        while true {
            if Glibc.write(fd, frame.baseAddress, frame.count) >= 0 { return .sent }
            if errno != EINTR { return Self.transmitOutcome(errno: errno) }
        }
    }

    /// Reports the queued writes (`TapWriter`: one flush sends every TAP's).
    public override func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        TapWriter.shared?.flush(report)
    }
}
