import CTapBridgeUring
import Glibc
public import TapBridgeCore

/// TAP writes batched: the frames a round sends to TAPs go out in one io_uring submission
/// (liburing) at the engine's flush, instead of one write(2) each.
///
/// A TAP takes one frame per write, and on a small frame the system call is much of the cost: a
/// minimal C relay moved 1.3 times the 64-byte datagrams with its writes batched this way
/// (netbench `relay-vnet-uring` against `relay-vnet`, Benchmarks.md). Each frame is copied,
/// behind its virtio-net header, into a slot of its own (256 slots of 2 KiB, one set for the
/// process), because the engine rewrites a flooded frame in place between ports. A frame too
/// large for a slot (a super-frame, a jumbo frame) is written at once, after the queued ones
/// (a TAP's frames keep their order). The ring being full flushes it early.
///
/// What a queued write did is reported at the flush: sent, or dropped with the reason its errno
/// gives. A TAP whose link is down (EIO: its host has not brought it up) is written to directly
/// until a write succeeds, so that the engine still tells a flood that leaves it out (no drop)
/// from a unicast to it (`link_down`). In the one round that finds a link gone down, a
/// broadcast or multicast frame is not counted (a flood), a unicast frame is (`link_down`, as
/// it would have been: only an unknown unicast flooded in that round is counted and was not).
///
/// One per process, used from the event loop's thread only. nil where io_uring is not to be had
/// (an old kernel, `io_uring_disabled`, a seccomp filter) or with `--no-io-uring`: one write
/// per frame, as before.
public final class TapWriter {
    /// The writer TAP devices use (nil: one write(2) per frame). Set once at start.
    nonisolated(unsafe) public static var shared: TapWriter? = nil

    /// Makes `shared`; returns nil, or why io_uring is not used.
    public static func start() -> String? {
        guard shared == nil else { return nil }
        guard let writer = make() else { return "io_uring: \(describeErrno(errno))" }
        shared = writer
        return nil
    }

    /// Slots, and the bytes each holds (header and frame).
    public static let slots = 256
    public static let slotSize = 2048

    let writer: OpaquePointer
    /// Each queued slot's port, frame length (without the header) and device.
    var ports: [PortID]
    var lengths: [Int]
    var devices: [TapDevice?]
    /// Each queued slot's frame is a broadcast or multicast (a flood: not a drop on a down link).
    var groupAddressed: [Bool]
    let results: UnsafeMutablePointer<Int32>
    /// Writes flushed before the engine asked (the ring was full, a frame had to go at once):
    /// reported at the next flush.
    var early: [(port: PortID, outcome: TransmitOutcome, bytes: Int)] = []
    /// The ring failed and could not be made again: nothing is queued any more.
    var broken = false

    /// A writer of its own (tests; the bridge uses `shared`), nil where io_uring is not to be had.
    static func make() -> TapWriter? { ctb_writer_open(UInt32(slots), UInt32(slotSize)).map(TapWriter.init) }

    init(_ writer: OpaquePointer) {
        self.writer = writer
        ports = Array(repeating: PortID(0), count: Self.slots)
        lengths = Array(repeating: 0, count: Self.slots)
        devices = Array(repeating: nil, count: Self.slots)
        groupAddressed = Array(repeating: false, count: Self.slots)
        results = .allocate(capacity: Self.slots)
        early.reserveCapacity(Self.slots)
    }

    deinit {
        ctb_writer_close(writer)
        results.deallocate()
    }

    /// Frames queued and not yet flushed.
    public var queued: Int { Int(ctb_writer_queued(writer)) }

    /// Queues `frame` (behind `header`, `headerLength` bytes) for descriptor `fd` (of `device`,
    /// told if its link is down); false if it must be written at once (too large for a slot; the
    /// ring broken). Flushes early if the ring is full.
    func queue(_ frame: UnsafeRawBufferPointer, header: UnsafeRawPointer?, headerLength: Int, port: PortID, fd: Int32, of device: TapDevice?) -> Bool {
        guard !broken, headerLength + frame.count <= Self.slotSize else { return false }
        var slot = ctb_writer_queue(writer, fd, header, headerLength, frame.baseAddress, frame.count)
        if slot < 0 {
            flushEarly()
            slot = ctb_writer_queue(writer, fd, header, headerLength, frame.baseAddress, frame.count)
            if slot < 0 { return false }
        }
        ports[Int(slot)] = port
        lengths[Int(slot)] = frame.count
        devices[Int(slot)] = device
        groupAddressed[Int(slot)] = !frame.isEmpty && frame[0] & 1 != 0
        return true
    }

    /// Sends what is queued now (before a frame that goes at once, or when the ring is full);
    /// the outcomes wait for `flush`.
    func flushEarly() {
        complete { port, outcome, bytes in early.append((port, outcome, bytes)) }
    }

    /// Sends what is queued, and reports every queued write's outcome (one frame each).
    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        for e in early { report(e.port, e.outcome, 1, e.bytes) }
        early.removeAll(keepingCapacity: true)
        complete { port, outcome, bytes in report(port, outcome, 1, bytes) }
    }

    func complete(_ each: (PortID, TransmitOutcome, Int) -> Void) {
        var lost: Int32 = 0
        let n = Int(ctb_writer_flush(writer, results, &lost))
        if lost != 0 { broken = true }
        for slot in 0..<n {
            let rc = results[slot]
            defer { devices[slot] = nil }
            if rc >= 0 {
                each(ports[slot], .sent, lengths[slot])
            } else if -rc == EIO {
                devices[slot]?.linkDown = true  // (written directly until a write succeeds)
                if !groupAddressed[slot] { each(ports[slot], .linkDown, lengths[slot]) }
            } else {
                each(ports[slot], DescriptorDevice.transmitOutcome(errno: -rc), lengths[slot])
            }
        }
    }
}
