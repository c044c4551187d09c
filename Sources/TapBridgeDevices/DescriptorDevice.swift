import CTapBridge
import Glibc
public import TapBridgeCore

/// What one non-blocking read of a descriptor gave.
enum ReadOutcome {
    /// A frame of `length` bytes, starting `shift` bytes from the slot's start (negative: in
    /// the headroom), with what is left to do to it (partial checksum, segmentation).
    case frame(length: Int, shift: Int, offload: FrameOffload)
    /// Nothing more to read now (EAGAIN).
    case drained
    /// Something was consumed that is not a frame for us (our own): read on.
    case skipped
    /// A frame was consumed and dropped for `reason` (too large, an offload the kernel could
    /// not describe): counted, read on.
    case dropped(DropReason)
}

/// The common part of the devices that are one file descriptor carrying one port (a TAP, a
/// packet socket): the descriptor's lifetime, the port ID, and the loop that reads one frame
/// per call into the batch until the descriptor is drained. Subclasses implement `readFrame`
/// and `transmit`.
public class DescriptorDevice: PortDevice {
    /// The MTU of interface `name` if `wanted` would change it: what to put back later.
    static func mtuToRestore(_ name: String, wanted: Int?) -> Int32? {
        guard let wanted else { return nil }
        let current = ctb_if_get_mtu(name)
        return current > 0 && Int(current) != wanted ? current : nil
    }

    /// The descriptor, closed on deinit.
    let fd: Int32
    /// The port the engine assigned.
    var port = PortID(0)
    /// The virtio-net header of the frame being read, and of the frame being written (for the
    /// subclasses that use one).
    let receiveHeader = UnsafeMutablePointer<UInt8>.allocate(capacity: Int(CTB_VNET_HDR_LEN))
    let sendHeader = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(CTB_VNET_HDR_LEN), alignment: 8)

    /// The MTU an existing interface had before `mtu=` changed it (its ifindex and MTU), put
    /// back when the port goes (removed, or the bridge stops): a port leaves its interface as
    /// it found it.
    var restoreMTU: (index: Int32, mtu: Int32)? = nil
    /// The interface that goes away when the descriptor closes (a TAP tapbridge created).
    var closesInterface: String? = nil

    init(fd: Int32) {
        self.fd = fd
        receiveHeader.initialize(repeating: 0, count: Int(CTB_VNET_HDR_LEN))
        sendHeader.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit {
        // by index: the interface may have been renamed since
        if let (index, mtu) = restoreMTU, let name = interfaceName(ofIndex: index) { _ = ctb_if_set_mtu(name, mtu) }
        DescriptorCloser.close(fd, interface: closesInterface)  // a TAP's interface goes away off the loop
        receiveHeader.deallocate()
        sendHeader.deallocate()
    }

    /// The header for a frame being sent with offload state `offload`.
    func header(for offload: FrameOffload) -> UnsafePointer<UInt8> {
        offload.writeVirtioHeader(to: sendHeader)
        return UnsafePointer(sendHeader.baseAddress!.assumingMemoryBound(to: UInt8.self))
    }

    public var pollDescriptor: Int32? { fd }

    public func didAddPort(_ port: PortID, name: String) { self.port = port }

    /// Complete frames only; subclasses say how large.
    public var offloadCapabilities: OffloadCapabilities { .none() }

    /// Reads one frame into `slot` (the slot's buffer; `headroom` bytes before it are usable).
    func readFrame(into slot: UnsafeMutableRawBufferPointer, headroom: Int) throws(PortError) -> ReadOutcome {
        fatalError("subclass must implement readFrame")
    }

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        var n = 0
        while !batch.isFull {
            switch try readFrame(into: batch.nextSlot(), headroom: batch.headroom) {
            case .frame(let length, let shift, let offload):
                batch.commit(length: length, from: port, shift: shift, offload: offload)
                n += 1
            case .dropped(let reason):
                batch.recordDrop(on: port, reason)
            case .drained:
                batch.drained = true
                return n
            case .skipped:
                continue
            }
        }
        return n
    }

    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        fatalError("subclass must implement transmit")
    }

    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        transmit(frame, to: port)
    }

    /// Nothing queued: every frame was written when it was sent (a subclass that queues says so).
    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {}

    /// Maps the errno of a failed write/send to a transmit outcome (EINTR is retried by the
    /// caller): a full queue is `wouldBlock`, a down link `linkDown`, a too-large frame `tooLarge`.
    static func transmitOutcome(errno code: Int32) -> TransmitOutcome {
        switch code {
        case EAGAIN, ENOBUFS: .wouldBlock
        case EIO, ENETDOWN, ENXIO: .linkDown
        case EINVAL, EMSGSIZE: .tooLarge
        default: .failed
        }
    }
}
