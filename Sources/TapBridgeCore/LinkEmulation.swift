/// A bad link, on a port's egress, as netem and VDE's wirefilter make one: delay and jitter,
/// loss, duplication, corruption, reordering and a rate limit. Pure: driven by the clock it is
/// given and a seeded generator, so a run can be replayed and tests are exact.
public struct Impairment: Sendable, Equatable, CustomStringConvertible {
    /// Added to every frame's departure.
    public var delay: Duration = .zero
    /// Each frame's delay is `delay` ± up to this (uniform). Frames keep their order (a frame
    /// never leaves before the one ahead of it), as netem does with a rate.
    public var jitter: Duration = .zero
    /// Probability a frame is lost (0-1).
    public var loss = 0.0
    /// Probability a lost frame is followed by another loss: the correlation netem's
    /// `loss P% C%` gives (0: independent).
    public var lossCorrelation = 0.0
    /// Probability a frame is sent twice.
    public var duplicate = 0.0
    /// Probability one bit of a frame is flipped (in its payload, past the Ethernet header).
    public var corrupt = 0.0
    /// Probability a frame skips the delay and leaves at once, ahead of delayed ones.
    public var reorder = 0.0
    /// Bits a second the link carries (nil: no limit); frames wait their turn in a queue of
    /// at most 1000 frames (netem's default limit) and 16 MiB, and one that does not fit is
    /// dropped (tail drop).
    public var rate: UInt64? = nil

    public init() {}

    public var isNone: Bool { self == Impairment() }

    /// `delay=50ms jitter=5ms loss=1%`, the options as `--port` takes them.
    public var description: String {
        var parts: [String] = []
        func ms(_ d: Duration) -> String { Impairment.format(Double(d.nanoseconds) / 1e6) + "ms" }
        func pct(_ p: Double) -> String { Impairment.format(p * 100) + "%" }
        if delay != .zero { parts.append("delay=\(ms(delay))") }
        if jitter != .zero { parts.append("jitter=\(ms(jitter))") }
        if loss > 0 { parts.append("loss=\(pct(loss))" + (lossCorrelation > 0 ? ":\(pct(lossCorrelation))" : "")) }
        if duplicate > 0 { parts.append("duplicate=\(pct(duplicate))") }
        if corrupt > 0 { parts.append("corrupt=\(pct(corrupt))") }
        if reorder > 0 { parts.append("reorder=\(pct(reorder))") }
        if let rate {
            let unit = [(1_000_000_000, "gbit"), (1_000_000, "mbit"), (1_000, "kbit")].first { rate % UInt64($0.0) == 0 }
            parts.append("rate=" + (unit.map { "\(rate / UInt64($0.0))\($0.1)" } ?? "\(rate)bit"))
        }
        return parts.isEmpty ? "none" : parts.joined(separator: " ")
    }

    static func format(_ v: Double) -> String {
        v == v.rounded() ? String(Int64(v)) : String(v)
    }
}

/// SplitMix64: small, fast, and the same sequence for the same seed everywhere.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

/// One port's bad link: decides each frame's fate and keeps the delayed ones, in order of
/// departure, in a ring until their time. A class that owns its ring: there is one of it
/// (a copyable struct holding the ring could be freed twice, or release its frames twice).
public final class LinkEmulator {
    public struct Statistics: Sendable, Equatable {
        public var delayed: UInt64 = 0
        public var lost: UInt64 = 0
        public var duplicated: UInt64 = 0
        public var corrupted: UInt64 = 0
        public var reordered: UInt64 = 0
        /// Frames dropped because the queue was full (a rate limit's tail drop).
        public var queueFull: UInt64 = 0
        public init() {}
    }

    public private(set) var impairment: Impairment
    public private(set) var statistics = Statistics()
    var generator: SeededGenerator
    var lastLost = false
    /// When the link is free again (rate) and the last delayed frame's departure (order).
    var linkFree: Int64 = .min
    var lastDeparture: Int64 = .min

    /// The queue: frames' bytes in a ring of `capacity` bytes, taken in arrival order; the
    /// entries in arrival order too, each with its departure (a frame that skips the delay
    /// leaves before frames that came earlier, so release picks the due ones by departure).
    struct Entry {
        var offset: Int
        var length: Int
        var offload: FrameOffload
        var departure: Int64
        var released = false
    }
    /// Allocated at the first frame queued: a port without an impairment costs nothing.
    var ring: UnsafeMutableRawPointer? = nil
    let capacity: Int
    var entries: [Entry] = []
    var head = 0  // the oldest entry not released (its bytes are the oldest in use)
    var writeOffset = 0
    /// The earliest departure among the entries not released.
    var earliest: Int64? = nil
    var due: [Int] = []
    /// Frames it holds at most: netem's default limit.
    public static let maximumFrames = 1000

    /// `capacity`: bytes of frames it may hold (a rate limit's queue: its tail drop).
    public init(_ impairment: Impairment, seed: UInt64, capacity: Int = 16 << 20) {
        self.impairment = impairment
        generator = SeededGenerator(seed: seed)
        self.capacity = capacity
    }

    deinit { ring?.deallocate() }

    /// Changes the impairment; frames already waiting keep their departure.
    public func reconfigure(_ new: Impairment) { impairment = new }

    public var isEmpty: Bool { head == entries.count }
    /// When the next frame is due; nil when none waits.
    public var nextDeparture: Int64? { earliest }

    public enum Fate: Sendable, Equatable {
        /// Queued (twice if duplicated), to leave at its departure.
        case queued
        /// Lost on the emulated link.
        case lost
        /// The queue had no room (a rate limit's tail drop).
        case queueFull
    }

    /// What becomes of `frame` sent at `now`.
    public func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, now: Int64) -> Fate {
        let i = impairment
        if i.loss > 0 {
            let p = lastLost && i.lossCorrelation > 0 ? i.lossCorrelation + (1 - i.lossCorrelation) * i.loss : i.loss
            lastLost = generator.unit() < p
            if lastLost {
                statistics.lost &+= 1
                return .lost
            }
        }
        let copies = i.duplicate > 0 && generator.unit() < i.duplicate ? 2 : 1
        if copies == 2 { statistics.duplicated &+= 1 }
        for copy in 0..<copies {
            var departure = now
            let skips = i.reorder > 0 && generator.unit() < i.reorder
            if skips {
                statistics.reordered &+= 1
            } else {
                var delay = i.delay.nanoseconds
                if i.jitter != .zero {
                    let j = i.jitter.nanoseconds
                    delay += Int64((generator.unit() * 2 - 1) * Double(j))
                }
                departure = max(now &+ max(delay, 0), lastDeparture)
            }
            if let rate = i.rate, rate > 0 {
                let start = max(departure, linkFree)
                let serialization = Int64(Double(frame.count * 8) / Double(rate) * 1e9)
                departure = start &+ serialization
            }
            guard enqueue(frame, offload: offload, departure: departure, corrupt: i.corrupt > 0 && generator.unit() < i.corrupt) else {
                // a dropped frame takes no time on the link
                statistics.queueFull &+= 1
                return copy > 0 ? .queued : .queueFull
            }
            if i.rate != nil { linkFree = departure }
            if !skips { lastDeparture = departure }
            if departure > now { statistics.delayed &+= 1 }
        }
        return .queued
    }

    func enqueue(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, departure: Int64, corrupt: Bool) -> Bool {
        let n = frame.count
        guard n <= capacity, entries.count - head < Self.maximumFrames else { return false }
        let ring: UnsafeMutableRawPointer
        if let r = self.ring {
            ring = r
        } else {
            ring = .allocate(byteCount: capacity, alignment: 64)
            self.ring = ring
            entries.reserveCapacity(Self.maximumFrames)
            due.reserveCapacity(Self.maximumFrames)
        }
        let offset: Int
        if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            head = 0
            offset = 0
        } else {
            let start = entries[head].offset  // the oldest byte in use
            if writeOffset > start {
                // in use: [start, writeOffset); room after it, or before it from 0
                if writeOffset + n <= capacity { offset = writeOffset } else if n <= start { offset = 0 } else { return false }
            } else {
                // wrapped: in use [start, capacity) and [0, writeOffset); room between
                guard writeOffset + n <= start else { return false }
                offset = writeOffset
            }
        }
        if n > 0 { (ring + offset).copyMemory(from: frame.baseAddress!, byteCount: n) }
        if corrupt, n > 14 {
            let bit = Int(generator.next() % UInt64((n - 14) * 8))
            let byte = ring + offset + 14 + bit / 8
            byte.storeBytes(of: byte.load(as: UInt8.self) ^ (1 << (bit % 8)), as: UInt8.self)
            statistics.corrupted &+= 1
        }
        entries.append(Entry(offset: offset, length: n, offload: offload, departure: departure))
        writeOffset = offset + n
        earliest = min(earliest ?? departure, departure)
        return true
    }

    /// Hands every frame due at `now` to `body`, in order of departure (then of arrival).
    public func release(now: Int64, _ body: (UnsafeRawBufferPointer, FrameOffload) -> Void) {
        guard let first = earliest, first <= now else { return }
        due.removeAll(keepingCapacity: true)
        var next: Int64? = nil
        for k in head..<entries.count where !entries[k].released {
            if entries[k].departure <= now { due.append(k) } else { next = min(next ?? entries[k].departure, entries[k].departure) }
        }
        due.sort { entries[$0].departure != entries[$1].departure ? entries[$0].departure < entries[$1].departure : $0 < $1 }
        for k in due {
            entries[k].released = true
            let e = entries[k]
            body(UnsafeRawBufferPointer(start: ring! + e.offset, count: e.length), e.offload)
        }
        earliest = next
        while head < entries.count, entries[head].released { head += 1 }
        if head == entries.count {
            entries.removeAll(keepingCapacity: true)
            head = 0
            writeOffset = 0
        } else if head > 1024 {
            entries.removeFirst(head)
            head = 0
        }
    }
}

extension LinkEmulator.Statistics: CounterOwner {
    public static let counters: [Counter<Self>] = [
        .init("delayed", \.delayed, "Frames held back by a port's emulated link (delay=, jitter=, rate=)."),
        .init("lost", \.lost, "Frames a port's emulated link lost (loss=)."),
        .init("duplicated", \.duplicated, "Frames a port's emulated link sent twice (duplicate=)."),
        .init("corrupted", \.corrupted, "Frames with a bit flipped by a port's emulated link (corrupt=)."),
        .init("reordered", \.reordered, "Frames that skipped the delay and overtook others (reorder=)."),
        .init("queue_full", \.queueFull, "Frames dropped because a port's emulated link queue was full (rate= tail drop)."),
    ]
}

/// A decorator that puts a bad link on the way out of a one-port device (a TAP, a packet
/// socket): frames are counted as sent when the emulated link takes them, and leave through
/// the device at their departure (`releaseDue`, from the event loop's timer; or at `flush`
/// for those due already). Receive is untouched.
/// ```
///   engine ──transmit─► ImpairedDevice ─(LinkEmulator: lost? duplicated? when?)─► device
/// ```
public final class ImpairedDevice: PortDevice {
    public let inner: any PortDevice
    public let emulator: LinkEmulator
    let clock: () -> Instant
    var port: PortID? = nil
    /// No impairment: frames go straight through (once the queue is empty).
    var isPlain: Bool

    public init(_ inner: any PortDevice, impairment: Impairment, seed: UInt64, clock: @escaping () -> Instant) {
        self.inner = inner
        self.clock = clock
        emulator = LinkEmulator(impairment, seed: seed)
        isPlain = impairment.isNone
    }

    public var pollDescriptor: Int32? { inner.pollDescriptor }
    public var offloadCapabilities: OffloadCapabilities { inner.offloadCapabilities }
    public var awaitsWritable: Bool { inner.awaitsWritable }
    public var mayAwaitWritable: Bool { inner.mayAwaitWritable }
    public func writable() { inner.writable() }
    public func receive(into batch: FrameBatch) throws(PortError) -> Int { try inner.receive(into: batch) }
    public func didAddPort(_ port: PortID, name: String) {
        self.port = port
        inner.didAddPort(port, name: name)
    }
    public func didRemovePort(_ port: PortID) { inner.didRemovePort(port) }

    public func transmit(_ frame: UnsafeRawBufferPointer, to port: PortID) -> TransmitOutcome {
        transmit(frame, offload: .none, to: port)
    }

    /// A lost frame counts as sent (it left, and the link lost it, as on a wire). Without an
    /// impairment (and nothing still queued) a frame goes straight to the device.
    public func transmit(_ frame: UnsafeRawBufferPointer, offload: FrameOffload, to port: PortID) -> TransmitOutcome {
        if isPlain && emulator.isEmpty { return inner.transmit(frame, offload: offload, to: port) }
        return switch emulator.send(frame, offload: offload, now: clock().nanoseconds) {
        case .queued, .lost: .sent
        case .queueFull: .wouldBlock
        }
    }

    /// Sends the frames due now (those without a delay leave at the end of the batch), and
    /// lets the device send what it queued.
    public func flush(_ report: (PortID, TransmitOutcome, _ frames: Int, _ bytes: Int) -> Void) {
        inner.flush(report)
        if !emulator.isEmpty { releaseDue(at: clock()) }
    }

    /// When the next delayed frame is due.
    public var nextDeparture: Instant? { emulator.nextDeparture.map { Instant(nanoseconds: $0) } }

    /// Sends every frame due at `now` through the device, and lets it send what it queued (a
    /// TAP batches its writes). They were counted when the link took them: what the device says
    /// of them now is not counted again (`flush` reports the engine's frames before this).
    public func releaseDue(at now: Instant) {
        guard let port else { return }
        emulator.release(now: now.nanoseconds) { frame, offload in
            _ = inner.transmit(frame, offload: offload, to: port)
        }
        inner.flush { _, _, _, _ in }
    }

    public func reconfigure(_ impairment: Impairment) {
        emulator.reconfigure(impairment)
        isPlain = impairment.isNone
    }
}
