/// How a loop that moves no MAC shows itself: the same frame, byte for byte, flooded again and
/// again from one port.
///
/// `LoopWatch` finds loops by their MAC moves: a frame that goes round two ports is learned on
/// each in turn. A one-way loop moves nothing. Bridge both ends of one veth: a frame the veth's
/// own stack sends (a router solicitation) enters on the far end's port, is flooded out of the
/// near end's, crosses the veth and enters on the far end's port again, its source learned on
/// that same port every time. It went round at 122,000 frames a second for as long as the
/// bridge ran. In a loop-free network a flooded frame never comes back, and no host sends one
/// frame, identical to the byte, hundreds of times a second: `repeats` floods of one frame
/// from one port within `window` (320 a second) is a loop.
///
/// A frame is known by a fingerprint of its length and first 64 bytes (Ethernet, IP and
/// transport headers: identifiers, sequence numbers and checksums differ between frames that
/// are not copies). Flooded frames only, a few loads each, in a small direct-mapped table: a
/// few frames looping at once are each followed; unicast costs nothing.
public struct EchoWatch {
    static let repeats = 32
    /// The window, in words, for the log line.
    public static let windowDescription = "100 ms"
    static let window: Duration = .milliseconds(100)
    static let slots = 16

    struct Slot {
        var fingerprint: UInt64 = 0
        var port = PortID(.max)
        var count = 0
        var since: Int64 = 0
    }
    var table = [Slot](repeating: Slot(), count: EchoWatch.slots)

    /// Length and the first 64 bytes, mixed (not cryptographic: it tells copies apart from
    /// other frames, nothing more).
    @inline(__always)
    static func fingerprint(_ frame: UnsafeRawBufferPointer) -> UInt64 {
        var h = UInt64(truncatingIfNeeded: frame.count) &* 0x9E37_79B9_7F4A_7C15
        let words = min(frame.count, 64) / 8
        for k in 0..<words {
            h = (h ^ frame.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 33
        }
        return h
    }
}

extension Bridge {
    /// A frame from `ingress` is being flooded: counts it if it is the same frame as the last
    /// floods from that port; `repeats` within the window is a loop, reported and (with loop
    /// protection) broken by blocking `ingress`. Returns whether this frame is to be dropped
    /// (the port was blocked).
    @inline(__always)
    func watchEcho(_ frame: UnsafeRawBufferPointer, from ingress: PortID, at now: Instant) -> Bool {
        let f = EchoWatch.fingerprint(frame)
        let k = Int(truncatingIfNeeded: f & UInt64(EchoWatch.slots - 1))
        if echoWatch.table[k].fingerprint == f, echoWatch.table[k].port == ingress,
            now.nanoseconds &- echoWatch.table[k].since < EchoWatch.window.nanoseconds
        {
            echoWatch.table[k].count += 1
        } else {
            echoWatch.table[k] = EchoWatch.Slot(fingerprint: f, port: ingress, count: 1, since: now.nanoseconds)
            return false
        }
        guard echoWatch.table[k].count >= EchoWatch.repeats else { return false }
        let repeats = echoWatch.table[k].count
        echoWatch.table[k] = EchoWatch.Slot()
        var blocked: PortID? = nil
        if configuration.loopProtect, ports[ingress.index].blockedUntil == nil {
            blocked = ingress
            ports[ingress.index].blockedUntil = Instant(nanoseconds: now.nanoseconds &+ configuration.loopBlockTime.nanoseconds)
            loopStatistics.blocks &+= 1
            loopStatistics.portsBlocked &+= 1
        }
        let key = UInt32(ingress.rawValue) << 16 | UInt32(ingress.rawValue)
        if let last = loopWatch.reported[key], now.nanoseconds &- last.nanoseconds < configuration.loopBlockTime.nanoseconds, blocked == nil { return false }
        loopWatch.reported[key] = now
        loopStatistics.detected &+= 1
        loopHandler?(.echo(ingress, repeats: repeats, blocked: blocked))
        return blocked != nil
    }
}
