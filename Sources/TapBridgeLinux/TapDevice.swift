import CTapBridge
import Glibc
public import TapBridgeCore

/// A TAP interface opened through /dev/net/tun (`IFF_TAP | IFF_NO_PI`, non-blocking):
/// one read(2) is one frame received, one write(2) one frame sent.
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
    /// The interface index.
    public let interfaceIndex: Int32

    /// Why opening failed, for the caller's choice between an error and the packet fallback.
    public enum OpenError: Error {
        /// The interface exists but another process holds it (EBUSY).
        case busy
        /// The interface exists and is not a TAP (EINVAL on an existing name).
        case notATap
        /// Any other failure: a message naming the cause.
        case failed(String)
    }

    /// Attaches to (or creates) TAP `name`, brings it up, sets `mtu` if given.
    public init(name: String, mtu requestedMTU: Int?) throws(OpenError) {
        existedBefore = ctb_if_index(name) > 0
        let rc = ctb_tap_open(name, 0)
        if rc < 0 {
            switch -rc {
            case EBUSY: throw .busy
            case EINVAL where existedBefore: throw .notATap
            case EPERM, EACCES: throw .failed("creating or attaching a TAP needs CAP_NET_ADMIN (run as root, or grant the capability: setcap cap_net_admin+ep tapbridge)")
            case ENOENT, ENODEV, ENXIO: throw .failed("/dev/net/tun is missing (load the tun module: modprobe tun)")
            default: throw .failed("TUNSETIFF failed: \(describeErrno(-rc))")
            }
        }
        if let requestedMTU {
            let e = ctb_if_set_mtu(name, Int32(requestedMTU))
            if e < 0 {
                close(rc)
                throw .failed("cannot set MTU \(requestedMTU): \(describeErrno(-e))")
            }
        }
        let up = ctb_if_set_up(name)
        if up < 0 {
            close(rc)
            throw .failed("cannot bring the link up: \(describeErrno(-up))")
        }
        self.name = name
        mtu = Int(max(ctb_if_get_mtu(name), 0))
        interfaceIndex = ctb_if_index(name)
        super.init(fd: rc)
    }

    /// Complete frames only (the TAP is opened without `IFF_VNET_HDR`), up to the MTU plus an
    /// Ethernet header with one tag.
    public override var offloadCapabilities: OffloadCapabilities { .none(maximumFrameLength: mtu + 18) }

    override func readFrame(into slot: UnsafeMutableRawBufferPointer, headroom: Int) throws(PortError) -> ReadOutcome {
        while true {
            let got = read(fd, slot.baseAddress, slot.count)
            if got >= 0 { return .frame(length: got, shift: 0, offload: .none) }
            switch errno {
            case EINTR: continue
            case EAGAIN: return .drained
            case EBADFD, ENODEV, ENXIO: throw PortError(.deviceRemoved, code: errno, operation: "read")
            default: throw PortError(.failed, code: errno, operation: "read")
            }
        }
    }

    public override func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        while true {
            if write(fd, frame.baseAddress, frame.count) >= 0 { return .sent }
            if errno != EINTR { return Self.transmitOutcome(errno: errno) }
        }
    }
}
