import Foundation
import Testing

extension KernelTests {
/// No allocation per frame: the whole process's malloc/calloc/realloc calls (counted by an
/// LD_PRELOAD shim) must not grow with the traffic. Each case forwards 100 and then 1,000
/// pings (200 and 2,000 frames, one poll wake-up each) through a fresh bridge; the counts
/// may differ by a handful (timers, the log line of a slower run), not by hundreds.
@Suite("Allocations", .enabled(if: Host.has("cc"), "needs a C compiler (cc) to build the malloc-counting shim"),
       .disabled(if: Host.binaryIsSanitized, "the binary under test is a sanitizer build: its runtime owns malloc, which the counting shim needs"))
struct AllocationTests {
    static func shim(_ lab: Lab) throws -> String {
        let so = lab.temporaryPath("malloc_count.so")
        let r = Host.run(["cc", "-shared", "-fPIC", "-O2", "-o", so, Host.packageRoot.appendingPathComponent("Tests/Peers/malloc_count.c").path, "-ldl"])
        try #require(r.ok, "cannot build the shim: \(r.output)")
        return so
    }

    /// Allocations of a bridge (started with `extra`) that forwards `pings` echo requests and
    /// replies between two namespaces; to a second bridge over a remote when `remote` is
    /// "vxlan" or "sealed" (then every datagram is sealed and opened: the cipher must not
    /// allocate either).
    static func allocations(pings: Int, extra: [String], remote: String?) throws -> Int {
        let lab = Lab()
        let so = try shim(lab)
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        // (sealed: each bridge its own key, naming the other's)
        var (encap1, encap2, peer1, peer2) = (["--encap", remote ?? "vxlan"], ["--encap", remote ?? "vxlan"], "", "")
        if remote == "sealed" {
            let (k1, k2) = (try lab.sealedKey("one"), try lab.sealedKey("two"))
            (encap1, encap2, peer1, peer2) = (encap1 + ["--key-file", k1.path], encap2 + ["--key-file", k2.path], ",peer=\(k2.publicKey)", ",peer=\(k1.publicKey)")
        }
        let first = remote != nil ? ["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2)\(peer1)"] + encap1 : ["--port", ta, "--port", tb]
        let counted = try lab.background(["env", "LD_PRELOAD=\(so)", Host.binary] + lab.named(first + extra))
        if remote != nil { _ = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)\(peer2)"] + encap2) }
        #expect(lab.waitForLinks([ta, tb]), "\(counted.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        let r = lab.exec(a, ["ping", "-q", "-c", String(pings), "-i", "0.002", "-W", "1", "10.77.0.2"], timeout: 30)
        #expect(r.output.contains(" \(pings) received"), "\(r.output)")
        #expect(counted.stop() == 0)
        let line = counted.output.split(separator: "\n").last { $0.hasPrefix("ALLOCS ") } ?? ""
        return Int(line.dropFirst("ALLOCS ".count)) ?? -1
    }

    @Test(arguments: [
        ("TAP to TAP", [String](), nil),
        ("VXLAN remote", [], "vxlan"),
        ("sealed remote", [], "sealed"),
        ("VXLAN remote, mirrored through a filter", ["--mirror", "/dev/null", "--mirror-filter", "icmp"], "vxlan"),
    ] as [(String, [String], String?)])
    func allocationsDoNotGrowWithTraffic(_ name: String, _ extra: [String], _ remote: String?) throws {
        let few = try Self.allocations(pings: 100, extra: extra, remote: remote)
        let many = try Self.allocations(pings: 1000, extra: extra, remote: remote)
        #expect(few > 0 && many > 0, "no ALLOCS line")
        // sealed: one handshake per session costs about 440 allocations (Noise's arrays), and
        // when both bridges start sending at once their initiations cross and each completes
        // (as in WireGuard): one run may hold a handshake more than the other. 1,800 frames
        // more would show as 1,800 allocations more if any frame allocated.
        let slack = remote == "sealed" ? 500 : 20
        #expect(abs(many - few) <= slack, "\(name): \(few) allocations for 200 frames, \(many) for 2,000: per-frame allocation")
    }
}
}
