import CTapBridge
import Glibc
public import TapBridgeCore

/// An existing interface reached through an AF_PACKET socket: a TAP another program holds
/// (a VM's tap held by QEMU), a veth, a NIC.
///
/// The socket is bound to the interface's ifindex (resolved once, at attach time), set
/// promiscuous, and ignores outgoing frames (`PACKET_IGNORE_OUTGOING`), so frames tapbridge
/// transmits are never read back as input. VLAN tags the kernel moved into packet metadata
/// (VLAN offload) are put back into the frame.
///
/// The socket reads with `PACKET_VNET_HDR`: a veth or a QEMU-held TAP hands over what the
/// sending stack left to "hardware" (a partial checksum, a GSO super-frame of up to 64 KiB),
/// and the virtio-net header in front of each frame says so. That state rides with the frame
/// (`FrameOffload`), and the engine completes or segments it before any port that cannot take
/// it. Without the header, such frames would leave with wrong checksums and TCP would stall.
public final class PacketSocketDevice: DescriptorDevice {
    /// The interface name at attach time.
    public let name: String
    /// The interface index the socket is bound to.
    public let interfaceIndex: Int32
    /// The interface's MTU at attach time.
    public let mtu: Int

    /// Whether frames with offload state are sent whole (the kernel finishes them for the
    /// interface, in hardware or in its own software fallback).
    public let sendsOffloads: Bool

    /// Opens a packet socket on `name`, brings the link up, sets `mtu` if given; `offload`:
    /// send partial checksums and super-frames as they are.
    public init(name: String, mtu: Int?, offload: Bool = true) throws(StartupError) {
        let index = ctb_if_index(name)
        if index < 0 {
            throw StartupError(-index == ENODEV ? "no interface named \(name)" : "cannot look up \(name): \(describeErrno(-index))")
        }
        let previousMTU = Self.mtuToRestore(name, wanted: mtu)
        if let mtu {
            let e = ctb_if_set_mtu(name, Int32(mtu))
            if e < 0 { throw StartupError("cannot set MTU \(mtu) on \(name): \(describeErrno(-e))") }
        }
        // a port that fails to open leaves the MTU as it found it too
        func undo() { if let previousMTU { _ = ctb_if_set_mtu(name, previousMTU) } }
        let up = ctb_if_set_up(name)
        if up < 0 {
            undo()
            throw StartupError(-up == EPERM ? "bringing \(name) up needs CAP_NET_ADMIN (run as root)" : "cannot bring \(name) up: \(describeErrno(-up))")
        }
        let rc = ctb_packet_open(index)
        if rc < 0 {
            undo()
            throw StartupError(-rc == EPERM ? "a packet socket needs CAP_NET_RAW (run as root)" : "packet socket on \(name) failed: \(describeErrno(-rc))")
        }
        self.name = name
        sendsOffloads = offload
        interfaceIndex = index
        self.mtu = Int(max(ctb_if_get_mtu(name), 0))
        super.init(fd: rc)
        restoreMTU = previousMTU.map { (index, $0) }
    }

    /// With offloads on, everything: `packet_snd` takes a frame with a virtio-net header, and
    /// the kernel completes or segments it for the interface if the interface cannot (a QEMU
    /// tap whose guest takes no offloads, a NIC without them). Off: complete frames, up to the
    /// MTU plus an Ethernet header with one tag.
    public override var offloadCapabilities: OffloadCapabilities {
        OffloadCapabilities(partialChecksum: sendsOffloads, tcpSegmentation: sendsOffloads, udpSegmentation: sendsOffloads, maximumFrameLength: mtu + 18, linkMTU: mtu)
    }

    /// The offloads in words.
    public var offloadDescription: String { OffloadCapabilities.describe(offloadCapabilities, on: sendsOffloads) }

    override func readFrame(into slot: UnsafeMutableRawBufferPointer, headroom: Int) throws(PortError) -> ReadOutcome {
        // The shim writes 4 bytes in front of the frame when it restores a VLAN tag the kernel
        // moved into metadata: give it the slot plus 4 bytes of headroom.
        precondition(headroom >= 4, "packet sockets need 4 bytes of headroom")
        let base = slot.baseAddress!.assumingMemoryBound(to: UInt8.self) - 4
        var offset = 0
        let got = ctb_packet_recv(fd, base, slot.count + 4, &offset, receiveHeader)
        if got >= 0 {
            var offload = FrameOffload(virtioHeader: UnsafeRawBufferPointer(start: receiveHeader, count: Int(CTB_VNET_HDR_LEN))) ?? .none
            // the kernel's offsets do not count a tag the shim put back in front of them
            if offset == 0 { offload = offload.shifted(by: 4) }
            return .frame(length: got, shift: offset - 4, offload: offload)
        }
        switch Int32(-got) {
        case EAGAIN: return .drained
        case EMSGSIZE: return .dropped(.truncated)  // larger than any frame we carry
        case EINVAL: return .dropped(.offloadUnsupported)  // a GSO type the header cannot express
        case ENETDOWN, ENXIO, ENODEV:
            if ctb_if_index_exists(interfaceIndex) == 0 {
                throw PortError(.deviceRemoved, code: Int32(-got), operation: "recv")
            }
            return .drained  // link down: nothing to read, the port stays
        default: throw PortError(.failed, code: Int32(-got), operation: "recv")
        }
    }

    public override func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        transmit(frame, offload: .none, to: port)
    }

    public override func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        let rc = ctb_packet_send(fd, header(for: offload), frame.baseAddress, frame.count)
        return rc >= 0 ? .sent : Self.transmitOutcome(errno: Int32(-rc))
    }
}
