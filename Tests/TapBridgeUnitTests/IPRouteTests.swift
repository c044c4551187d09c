import Foundation
import Glibc
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import Testing

/// The tools tapbridge runs (`ip`, `bridge`) through `IPRoute`: one that hangs is killed after
/// the timeout, with what it started, and says so; one that fails gives its error line. No
/// root: `sleep` and `sh` stand in for a hung and a failing `ip`.
@Suite("Running ip and bridge")
struct IPRouteTests {
    /// A tool that never finishes (here a shell that starts a `sleep` and waits for it) is
    /// killed at the timeout, its child with it, and the error says it did not finish.
    @Test func aToolThatHangsIsKilledWithWhatItStarted() throws {
        let seconds = "\(600_000 + Int(getpid()))"  // (a sleep no one else runs)
        let started = ContinuousClock.now
        #expect {
            try IPRoute.run("sh", ["-c", "sleep \(seconds) & wait"], for: "a test", timeout: .milliseconds(300))
        } throws: { error in
            (error as? StartupError)?.message.contains("did not finish within") == true
        }
        // (the bound is 100 times the timeout: what is checked is that it returned at all)
        #expect(ContinuousClock.now - started < .seconds(30))
        /// The processes still running `sleep SECONDS` (a killed one goes a moment later).
        /// (/proc read with read(2): Foundation's String(contentsOfFile:) leaks on procfs files,
        /// whose size says 0, and AddressSanitizer's leak check fails the run.)
        func orphans() -> [String] {
            let wanted = Array("sleep\0\(seconds)\0".utf8)
            return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { pid in
                guard Int32(pid) != nil else { return false }
                let fd = open("/proc/\(pid)/cmdline", O_RDONLY)
                guard fd >= 0 else { return false }
                defer { close(fd) }
                var buffer = [UInt8](repeating: 0, count: 256)
                let n = read(fd, &buffer, buffer.count)
                return n > 0 && Array(buffer.prefix(n)) == wanted
            }
        }
        for _ in 0..<100 where !orphans().isEmpty { usleep(50_000) }
        #expect(orphans().isEmpty, "the sleep the tool started is still running 5 s later: \(orphans())")
    }

    /// A tool that fails gives its error line; one that succeeds, nothing.
    @Test func aFailingToolGivesItsErrorLine() throws {
        #expect(throws: Never.self) { try IPRoute.run("sh", ["-c", "exit 0"], for: "a test") }
        #expect {
            try IPRoute.run("sh", ["-c", "echo 'RTNETLINK answers: File exists' >&2; exit 2"], for: "a test")
        } throws: { error in
            (error as? StartupError)?.message.hasSuffix("RTNETLINK answers: File exists") == true
        }
    }
}
