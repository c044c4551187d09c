import Glibc
import Logging
import TapBridgeCore
import TapBridgePcap
import TapBridgeTestSupport
import Testing

/// The mirror writer without root: a pipe whose reader is gone.
@Suite("Mirror writer")
struct MirrorWriterTests {
    /// Copies taken after a write error, then close "at the end of time": no crash (the retry
    /// deadline once overflowed), and every copy is written or dropped.
    @Test(arguments: [MirrorFormat.pcapng, .pcap])
    func closingAfterAWriteErrorWithCopiesPendingCountsThemDropped(_ format: MirrorFormat) throws {
        signal(SIGPIPE, SIG_IGN)
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        defer { close(ends[1]) }
        var options = MirrorOptions(path: "/proc/self/fd/\(ends[1])")
        options.format = format
        let mirror = try PcapMirror(options, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        close(ends[0])  // the reader goes away
        let frame = FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1))
        mirror.didAddPort(PortID(0), name: "tap0")
        frame.withUnsafeBytes { mirror.observe($0, on: PortID(0), direction: .ingress) }
        mirror.drain(at: Instant(nanoseconds: 1))  // EPIPE: the buffer is lost, a retry is due in 1 s
        #expect(mirror.statistics.writeErrors == 1 && mirror.statistics.dropped == 1)
        for _ in 0..<3 { frame.withUnsafeBytes { mirror.observe($0, on: PortID(0), direction: .egress) } }
        mirror.close()
        let s = mirror.statistics
        #expect(s.seen == 4 && s.written == 0 && s.dropped == 4, "\(s)")
    }
}
