/// Which way a mirrored frame was going.
public enum MirrorDirection: Sendable {
    /// Received on the port, before the forwarding decision (so dropped frames show too).
    case ingress
    /// Handed to the port to send (after VLAN tagging or untagging), as tcpdump sees a NIC's
    /// outgoing packets: a frame the kernel then refuses (a remote's full or unreachable
    /// socket) still shows, and is counted as a drop on the port.
    case egress
}

/// Where mirrored frames go (a pcap file, an interface).
public protocol FrameSink: AnyObject {
    /// Sees one frame. Must not block, keep `frame`, or allocate per frame.
    func observe(_ frame: UnsafeRawBufferPointer, on port: PortID, direction: MirrorDirection)
    /// A port was added with this name (a pcapng file names its interfaces after the ports).
    func didAddPort(_ port: PortID, name: String)
}

extension FrameSink {
    public func didAddPort(_ port: PortID, name: String) {}
}

/// A decorator that shows the frames a device receives (and, optionally, sends) to a
/// `FrameSink`, for the ports it selects by name. Forwarding does not know it is there, and a
/// bridge without mirroring has no decorator at all: off costs nothing (smoltcp's `PcapWriter`,
/// gVisor's sniffer endpoint).
/// ```
///   engine ──receive──► MirroredDevice ──receive──► device     frames read ──► sink (ingress)
///   engine ──transmit─► MirroredDevice ──transmit─► device     if sent ──────► sink (egress)
/// ```
public final class MirroredDevice: PortDevice {
    /// The wrapped device.
    public let inner: any PortDevice
    let sink: any FrameSink
    let selection: Set<String>?
    let mirrorsEgress: Bool
    var selected: [Bool] = []
    /// Segments super-frames for the sink, which sees only complete frames.
    let finisher = OffloadFinisher()

    /// Wraps `inner`. `ports`: names of the ports to mirror (`nil`: all of the device's ports);
    /// `egress`: mirror frames sent out of them too.
    public init(_ inner: any PortDevice, sink: any FrameSink, ports: Set<String>?, egress: Bool) {
        self.inner = inner
        self.sink = sink
        selection = ports
        mirrorsEgress = egress
    }

    public var pollDescriptor: Int32? { inner.pollDescriptor }
    public var awaitsWritable: Bool { inner.awaitsWritable }
    public var mayAwaitWritable: Bool { inner.mayAwaitWritable }
    public func writable() { inner.writable() }

    @inline(__always) func isSelected(_ port: PortID) -> Bool { port.index < selected.count && selected[port.index] }

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        let first = batch.count
        let n = try inner.receive(into: batch)
        for i in first..<batch.count where isSelected(batch.ingressPort(i)) {
            // what a receiver gets: complete frames, super-frames as the kernel would cut them
            let port = batch.ingressPort(i)
            finisher.complete(batch.frame(i), batch.offload(i)) { sink.observe($0, on: port, direction: .ingress) }
        }
        return n
    }

    public var offloadCapabilities: OffloadCapabilities { inner.offloadCapabilities }

    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        transmit(frame, offload: .none, to: port)
    }

    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        let outcome = inner.transmit(frame, offload: offload, to: port)
        if mirrorsEgress, outcome == .sent || outcome == .queued, isSelected(port) {
            finisher.complete(frame, offload) { sink.observe($0, on: port, direction: .egress) }
        }
        return outcome
    }

    public func didAddPort(_ port: PortID, name: String) {
        if port.index >= selected.count { selected += Array(repeating: false, count: port.index + 1 - selected.count) }
        selected[port.index] = selection?.contains(name) ?? true
        sink.didAddPort(port, name: name)
        inner.didAddPort(port, name: name)
    }

    public func didRemovePort(_ port: PortID) {
        if port.index < selected.count { selected[port.index] = false }
        inner.didRemovePort(port)
    }

    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) { inner.flush(report) }
}
