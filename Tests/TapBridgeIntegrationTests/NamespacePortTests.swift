import Foundation
import Glibc
import Testing

/// `--port NAME,netns=NS,addr=CIDR`: a lab in one command. The TAPs land in namespaces that
/// tapbridge makes (or finds), addressed and up; exiting removes what it made, and a start
/// after a SIGKILL takes over what the killed bridge left.
extension KernelTests {
@Suite("Ports straight into namespaces")
struct NamespacePortTests {
    /// ```
    ///  ns h1 (10.77.0.1) ── TAP 1 ── tapbridge ── TAP 2 ── ns h2 (10.77.0.2)     one command
    /// ```
    @Test func aTwoHostLabIsOneCommandAndLeavesNothing() throws {
        let lab = Lab()
        let (h1, h2, t1, t2) = (lab.namespaceName("h1"), lab.namespaceName("h2"), lab.link("1"), lab.link("2"))
        let args = ["--port", "\(t1),netns=\(h1),addr=10.77.0.1/24", "--port", "\(t2),netns=\(h2),addr=10.77.0.2/24,mac=02:00:00:77:00:02"]
        let bridge = try lab.bridge(args)
        #expect(Lab.eventually { lab.exec(h2, ["ip", "link", "show", t2]).output.contains("state UP") || lab.exec(h2, ["ip", "link", "show", t2]).output.contains(",UP") },
                "\(bridge.output)")
        #expect(bridge.output.contains("in namespace \(h1) as 10.77.0.1/24 (made: removed on exit)"), "\(bridge.output)")
        #expect(lab.exec(h2, ["ip", "link", "show", t2]).output.contains("02:00:00:77:00:02"), "mac= not set")
        #expect(lab.ping(from: h1, "10.77.0.2").received == 3 && lab.ping(from: h2, "10.77.0.1").received == 3, "\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, h1, h2, "10.77.0.2", context: bridge.output)
        #expect(bridge.stop() == 0)
        #expect(!Lab.namespaceExists(h1) && !Lab.namespaceExists(h2), "namespaces left after SIGTERM: \(bridge.output)")
        #expect(!FileManager.default.fileExists(atPath: "/run/tapbridge/netns/\(h1)"), "marker left")
    }

    /// SIGKILL leaves the namespaces (the TAPs go with the process); the next start with the
    /// same arguments takes them over, says so, and removes them on exit.
    @Test func aStartAfterSIGKILLTakesOverWhatWasLeft() throws {
        let lab = Lab()
        let (h1, h2, t1, t2) = (lab.namespaceName("h1"), lab.namespaceName("h2"), lab.link("1"), lab.link("2"))
        let args = ["--port", "\(t1),netns=\(h1),addr=10.77.0.1/24", "--port", "\(t2),netns=\(h2),addr=10.77.0.2/24"]
        let killed = try lab.bridge(args)
        #expect(Lab.eventually { lab.ping(from: h1, "10.77.0.2", count: 1).received == 1 }, "\(killed.output)")
        _ = killed.stop(signal: SIGKILL)
        #expect(Lab.namespaceExists(h1) && Lab.namespaceExists(h2), "SIGKILL leaves the namespaces")
        let again = try lab.bridge(args)
        #expect(Lab.eventually { lab.ping(from: h1, "10.77.0.2", count: 1).received == 1 }, "after the restart:\n\(again.output)")
        #expect(again.output.contains("namespace \(h1): left by a tapbridge that is gone"), "\(again.output)")
        #expect(again.stop() == 0)
        #expect(!Lab.namespaceExists(h1) && !Lab.namespaceExists(h2), "\(again.output)")
    }

    /// A namespace that existed is used and kept; refusals come before anything is made.
    @Test func anExistingNamespaceIsKeptAndBadInputMakesNothing() throws {
        let lab = Lab()
        let (h1, t1, t2) = (lab.namespace("h1"), lab.link("1"), lab.link("2"))
        let made = lab.namespaceName("h2")
        let bridge = try lab.bridge(["--port", "\(t1),netns=\(h1),addr=10.77.0.1/24", "--port", "\(t2),netns=\(made),addr=10.77.0.2/24"])
        #expect(Lab.eventually { lab.ping(from: h1, "10.77.0.2", count: 1).received == 1 }, "\(bridge.output)")
        #expect(bridge.output.contains("in namespace \(h1) as 10.77.0.1/24 (it existed: kept on exit)"), "\(bridge.output)")
        #expect(bridge.stop() == 0)
        #expect(Lab.namespaceExists(h1) && !Lab.namespaceExists(made))
        #expect(Lab.eventually { !lab.exec(h1, ["ip", "link", "show", t1]).ok }, "the TAP stays after exit")
        // a bad second port: the first port's namespace is not left behind
        let bad = lab.namespaceName("bad")
        let r = Host.run([Host.binary, "--port", "\(t1),netns=\(bad)", "--port", "lo,netns=\(bad)", "--name", lab.bridgeName()])
        #expect(r.status == 1 && r.output.contains("an interface lo exists here already"), "\(r.output)")
        #expect(!Lab.namespaceExists(bad), "a refused start left namespace \(bad)")
    }
}
}
