import Foundation
import Glibc
import TapBridgeDaemon
import TapBridgeControl
import Testing

/// Namespaces that several bridges use: each bridge with a port in one holds its lock shared,
/// and the last to leave removes it (the first to exit deleted it under the others, their
/// ports with it); a left-over namespace is taken over by exactly one of two bridges that
/// start at once (the take-over was check-then-act: both took it, and the first out deleted it).
extension KernelTests {
@Suite("Namespaces with owners")
struct NamespaceOwnerTests {
    static func files(_ ns: String) -> [String] {
        ["", ".lock", ".guard"].map { "/run/tapbridge/netns/\(ns)\($0)" }.filter { FileManager.default.fileExists(atPath: $0) }
    }

    /// ```
    ///  ns y (10.77.0.2) ── TAP ── tapbridge A ── TAP ── ns x (10.77.0.1)        A makes x
    ///  ns z (10.78.0.2) ── TAP ── tapbridge B ── TAP ── ns x (10.78.0.1)        B shares x
    /// ```
    /// A exits: x stays, with B's port in it, and B's hosts go on talking (TCP both ways);
    /// B exits: x goes, and its files in /run/tapbridge/netns with it.
    @Test func twoBridgesShareANamespaceAndTheLastOutRemovesIt() throws {
        let lab = Lab()
        let (x, y, z) = (lab.namespaceName("x"), lab.namespace("y"), lab.namespace("z"))
        let (t1, t2, t3, t4) = (lab.link("1"), lab.link("2"), lab.link("3"), lab.link("4"))
        let one = try lab.bridge(["--port", "\(t1),netns=\(x),addr=10.77.0.1/24", "--port", "\(t2),netns=\(y),addr=10.77.0.2/24"])
        #expect(Lab.eventually { lab.ping(from: y, "10.77.0.1", count: 1).received == 1 }, "\(one.output)")
        #expect(one.output.contains("in namespace \(x) as 10.77.0.1/24 (made: removed on exit, by the last bridge in it)"), "\(one.output)")
        let two = try lab.bridge(["--port", "\(t3),netns=\(x),addr=10.78.0.1/24", "--port", "\(t4),netns=\(z),addr=10.78.0.2/24"])
        #expect(Lab.eventually { lab.ping(from: z, "10.78.0.1", count: 1).received == 1 }, "\(two.output)")
        #expect(two.output.contains("in namespace \(x) as 10.78.0.1/24 (made by tapbridge pid \(one.pid), still in it: shared"), "\(two.output)")

        #expect(one.stop() == 0, "\(one.output)")
        #expect(one.output.contains("namespace \(x): left to the other bridges in it"), "\(one.output)")
        #expect(Lab.namespaceExists(x), "the first bridge out removed the namespace the other is in")
        #expect(lab.exec(x, ["ip", "link", "show", t3]).ok, "the other bridge's port went with the first bridge")
        #expect(lab.ping(from: z, "10.78.0.1", count: 2).received == 2, "\(two.output)")
        try OffloadTests.tcpBothWays(lab, z, x, "10.78.0.1", context: two.output)

        #expect(two.stop() == 0, "\(two.output)")
        #expect(two.output.contains("namespace \(x): removed"), "\(two.output)")
        #expect(!Lab.namespaceExists(x), "the last bridge out kept the namespace")
        #expect(Self.files(x).isEmpty, "left in /run/tapbridge/netns: \(Self.files(x))")
        #expect(Lab.namespaceExists(y) && Lab.namespaceExists(z), "a namespace that existed before was removed")
        #expect(Self.files(y).isEmpty && Self.files(z).isEmpty, "left for namespaces tapbridge did not make: \(Self.files(y) + Self.files(z))")
    }

    /// A bridge killed (SIGKILL) leaves its namespace; two bridges started at once into it:
    /// exactly one takes it over, the other shares it, both forward (TCP both ways through the
    /// second), and it goes with the last of them.
    /// ```
    ///  killed bridge ── ns x          then   ns a ── TAP ── tapbridge A ── TAP ── ns x
    ///                                        ns b ── TAP ── tapbridge B ── TAP ── ns x
    /// ```
    @Test func twoBridgesTakingOverALeftOverNamespaceAtOnceOneDoes() throws {
        let lab = Lab()
        let (x, a, b) = (lab.namespaceName("x"), lab.namespace("a"), lab.namespace("b"))
        let (t0, t1, t2, t3, t4) = (lab.link("0"), lab.link("1"), lab.link("2"), lab.link("3"), lab.link("4"))
        let killed = try lab.bridge(["--port", "\(t0),netns=\(x),addr=10.76.0.1/24"])
        #expect(Lab.eventually { lab.exec(x, ["ip", "link", "show", t0]).ok }, "\(killed.output)")
        _ = killed.stop(signal: SIGKILL)
        #expect(Lab.namespaceExists(x) && Self.files(x).contains("/run/tapbridge/netns/\(x)"), "SIGKILL leaves the namespace and its marker")

        let one = try lab.bridge(["--port", "\(t1),netns=\(x),addr=10.77.0.1/24", "--port", "\(t2),netns=\(a),addr=10.77.0.2/24"])
        let two = try lab.bridge(["--port", "\(t3),netns=\(x),addr=10.78.0.1/24", "--port", "\(t4),netns=\(b),addr=10.78.0.2/24"])
        #expect(Lab.eventually { lab.ping(from: a, "10.77.0.1", count: 1).received == 1 }, "\(one.output)")
        #expect(Lab.eventually { lab.ping(from: b, "10.78.0.1", count: 1).received == 1 }, "\(two.output)")
        let reused = [one, two].filter { $0.output.contains("namespace \(x): left by a tapbridge that is gone (pid \(killed.pid), killed?): reused") }
        let shared = [one, two].filter { $0.output.contains("in namespace \(x) as ") && $0.output.contains("still in it: shared") }
        #expect(reused.count == 1 && shared.count == 1 && reused.first !== shared.first, "one takes it over, the other shares:\n\(one.output)\n\(two.output)")
        guard let first = reused.first, let second = shared.first else { return }

        #expect(first.stop() == 0)
        #expect(Lab.namespaceExists(x), "the bridge that took it over removed it under the other")
        let (other, to) = second === one ? (a, "10.77.0.1") : (b, "10.78.0.1")
        try OffloadTests.tcpBothWays(lab, other, x, to, context: second.output)
        #expect(second.stop() == 0)
        #expect(!Lab.namespaceExists(x) && Self.files(x).isEmpty, "the last out kept it: \(Self.files(x))\n\(second.output)")
    }
}
}
