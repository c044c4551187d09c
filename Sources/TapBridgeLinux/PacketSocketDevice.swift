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
public final class PacketSocketDevice: DescriptorDevice {
    /// The interface name at attach time.
    public let name: String
    /// The interface index the socket is bound to.
    public let interfaceIndex: Int32

    /// Opens a packet socket on `name`, brings the link up, sets `mtu` if given.
    public init(name: String, mtu: Int?) throws(StartupError) {
        let index = ctb_if_index(name)
        if index < 0 {
            throw StartupError(-index == ENODEV ? "no interface named \(name)" : "cannot look up \(name): \(describeErrno(-index))")
        }
        if let mtu {
            let e = ctb_if_set_mtu(name, Int32(mtu))
            if e < 0 { throw StartupError("cannot set MTU \(mtu) on \(name): \(describeErrno(-e))") }
        }
        let up = ctb_if_set_up(name)
        if up < 0 {
            throw StartupError(-up == EPERM ? "bringing \(name) up needs CAP_NET_ADMIN (run as root)" : "cannot bring \(name) up: \(describeErrno(-up))")
        }
        let rc = ctb_packet_open(index)
        if rc < 0 {
            throw StartupError(-rc == EPERM ? "a packet socket needs CAP_NET_RAW (run as root)" : "packet socket on \(name) failed: \(describeErrno(-rc))")
        }
        self.name = name
        interfaceIndex = index
        super.init(fd: rc)
    }

    override func readFrame(into slot: UnsafeMutableRawBufferPointer, headroom: Int) throws(PortError) -> ReadOutcome {
        // The shim writes 4 bytes in front of the frame when it restores a VLAN tag the kernel
        // moved into metadata: give it the slot plus 4 bytes of headroom.
        precondition(headroom >= 4, "packet sockets need 4 bytes of headroom")
        let base = slot.baseAddress!.assumingMemoryBound(to: UInt8.self) - 4
        var offset = 0
        let got = ctb_packet_recv(fd, base, slot.count + 4, &offset)
        if got >= 0 { return .frame(length: got, shift: offset - 4) }
        switch Int32(-got) {
        case EAGAIN: return .drained
        case EMSGSIZE: return .skipped  // larger than any frame we carry: dropped
        case ENETDOWN, ENXIO, ENODEV:
            if ctb_if_index_exists(interfaceIndex) == 0 {
                throw PortError(.deviceRemoved, code: Int32(-got), operation: "recv")
            }
            return .drained  // link down: nothing to read, the port stays
        default: throw PortError(.failed, code: Int32(-got), operation: "recv")
        }
    }

    public override func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        while true {
            if send(fd, frame.baseAddress, frame.count, Int32(MSG_DONTWAIT)) >= 0 { return .sent }
            if errno != EINTR { return Self.transmitOutcome(errno: errno) }
        }
    }
}
