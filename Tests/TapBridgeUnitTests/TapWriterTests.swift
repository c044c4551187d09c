import Glibc
import TapBridgeCore
@testable import TapBridgeDevices
import Testing

/// TAP writes batched through io_uring (`TapWriter`), on a pipe instead of a TAP (a TAP needs
/// root; the writer only needs a descriptor that takes writes): writes go out at the flush, in
/// order, each reported once with its port and length; a full ring flushes early and keeps the
/// order; what does not fit a slot is refused; a failed write is reported as its errno says.
@Suite("TAP writes through io_uring", .enabled(if: TapWriter.make() != nil, "io_uring is not available here (old kernel, io_uring_disabled or seccomp)"))
struct TapWriterTests {
    /// A non-blocking pipe with room for `bytes`; its (read, write) ends.
    static func pipe(bytes: Int32 = 1 << 20) throws -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        try #require(Glibc.pipe(&fds) == 0)
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        _ = fcntl(fds[1], 1031, bytes)  // F_SETPIPE_SZ
        return (fds[0], fds[1])
    }

    static func frame(_ k: Int, length: Int = 100) -> [UInt8] { (0..<length).map { UInt8(truncatingIfNeeded: k &+ $0) } }

    @Test func writesGoOutAtTheFlushInOrderEachReportedOnce() throws {
        let writer = try #require(TapWriter.make())
        let (r, w) = try Self.pipe()
        defer { close(r); close(w) }
        let header: [UInt8] = [0xEE, 0xEF]
        // more than the ring's slots: it flushes early once, and the order holds across it
        let n = TapWriter.slots + 44
        for k in 0..<n {
            let queued = Self.frame(k).withUnsafeBytes { f in
                header.withUnsafeBytes { h in writer.queue(f, header: h.baseAddress, headerLength: 2, port: PortID(UInt16(k % 3)), fd: w, of: nil) }
            }
            #expect(queued, "frame \(k) refused")
        }
        #expect(writer.queued == n - TapWriter.slots, "got \(writer.queued) queued, want the \(n - TapWriter.slots) after the early flush")
        var reports: [(PortID, TransmitOutcome, Int, Int)] = []
        writer.flush { reports.append(($0, $1, $2, $3)) }
        #expect(writer.queued == 0 && reports.count == n, "got \(reports.count) reports, want \(n)")
        #expect(reports.allSatisfy { $0.1 == .sent && $0.2 == 1 && $0.3 == 100 }, "every write sent, one frame of 100 bytes (the header not counted)")
        #expect(reports.enumerated().allSatisfy { $1.0 == PortID(UInt16($0 % 3)) }, "each report names its frame's port, in order")
        var got = [UInt8](repeating: 0, count: n * 102 + 1)
        let read = got.withUnsafeMutableBytes { Glibc.read(r, $0.baseAddress, $0.count) }
        #expect(read == n * 102, "got \(read) bytes in the pipe, want \(n * 102)")
        for k in 0..<n where Array(got[(k * 102)..<(k * 102 + 102)]) != header + Self.frame(k) {
            Issue.record("write \(k) is not frame \(k) behind its header")
            break
        }
    }

    @Test func aFrameLargerThanASlotIsRefusedAndAFailedWriteIsReported() throws {
        let writer = try #require(TapWriter.make())
        let large = Self.frame(1, length: TapWriter.slotSize + 1)
        #expect(!large.withUnsafeBytes { writer.queue($0, header: nil, headerLength: 0, port: PortID(0), fd: 1, of: nil) })
        // a descriptor open for reading only: the write fails with EBADF
        let readOnly = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(readOnly) }
        #expect(Self.frame(2).withUnsafeBytes { writer.queue($0, header: nil, headerLength: 0, port: PortID(7), fd: readOnly, of: nil) })
        var reports: [(PortID, TransmitOutcome)] = []
        writer.flush { port, outcome, _, _ in reports.append((port, outcome)) }
        #expect(reports.count == 1 && reports[0].0 == PortID(7) && reports[0].1 == .failed, "got \(reports)")
    }
}
