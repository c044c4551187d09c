import Foundation
import TapBridgePcap
import Testing

extension KernelTests {
/// Mirroring with libpcap. Every test pings a (10.77.0.1) -> b (10.77.0.2) across a real
/// bridge and reads the mirror back with tcpdump -r and with libpcap in-process.
/// ```
///  ns a ── tap a ┐                ┌─► pcap file / standard output / mirror interface
///                tapbridge ──────-┤
///  ns b ── tap b ┘                └─ (filter, port selection, rotation)
/// ```
@Suite("Mirroring")
struct MirrorTests {
    /// Lines of `tcpdump -n -r pcap` matching `text`.
    static func tcpdumpLines(_ pcap: String, containing text: String) -> Int {
        Host.run(["tcpdump", "-n", "-r", pcap]).output.split(separator: "\n").filter { $0.contains(text) }.count
    }

    @Test func pcapFileHoldsEveryEchoRequestAndReply() throws {
        let lab = Lab()
        let pcap = lab.temporaryPath("all.pcap")
        let (bridge, a, _, _, _) = try lab.pair(["--mirror", pcap])
        #expect(lab.ping(from: a, "10.77.0.2", count: 5, interval: "0.1").received == 5)
        // live: tcpdump sees the frames while tapbridge runs (flushed within a second)
        #expect(Lab.eventually(within: 1) { Self.tcpdumpLines(pcap, containing: "ICMP echo request") == 5 }, "not visible while running")
        #expect(bridge.stop() == 0)
        #expect(Self.tcpdumpLines(pcap, containing: "ICMP echo request") == 5)
        #expect(Self.tcpdumpLines(pcap, containing: "ICMP echo reply") == 5)
        #expect(try PcapMirror.count(file: pcap, filter: "icmp") == 10, "pcap_open_offline count")
        #expect(try PcapMirror.count(file: pcap, filter: "arp") >= 2, "ARP request and reply are mirrored too")
    }

    @Test func filterKeepsOnlyMatchingFrames() throws {
        let lab = Lab()
        let pcap = lab.temporaryPath("icmp.pcap")
        let (bridge, a, _, _, _) = try lab.pair(["--mirror", pcap, "--mirror-filter", "icmp"])
        #expect(lab.ping(from: a, "10.77.0.2", count: 3, interval: "0.1").received == 3)
        let m = Lab.statsSection(bridge, "mirror")
        #expect((m["filtered_out"] ?? 0) > 0, "ARP was sent, so something was filtered out: \(m)")
        #expect(bridge.stop() == 0)
        #expect(try PcapMirror.count(file: pcap, filter: "icmp") == 6)
        #expect(try PcapMirror.count(file: pcap) == 6, "something other than ICMP was mirrored")
        #expect(try PcapMirror.count(file: pcap, filter: "arp") == 0)
    }

    @Test(arguments: [false, true])
    func portSelectionMirrorsOnlyThatPortAndEgressOnRequest(egress: Bool) throws {
        let lab = Lab()
        let pcap = lab.temporaryPath("port.pcap")
        let extra = ["--mirror", pcap, "--mirror-filter", "icmp"] + (egress ? ["--mirror-egress"] : [])
        // args[1] is port a's name: mirror only port a
        let (bridge, a, _, _, _) = try lab.pair(extra) { args in try lab.bridge(args + ["--mirror-port", args[1]]) }
        #expect(lab.ping(from: a, "10.77.0.2", count: 4, interval: "0.1").received == 4)
        #expect(bridge.stop() == 0)
        let requests = Self.tcpdumpLines(pcap, containing: "ICMP echo request")
        let replies = Self.tcpdumpLines(pcap, containing: "ICMP echo reply")
        #expect(requests == 4, "got \(requests) requests entering port a, want 4")
        #expect(replies == (egress ? 4 : 0), "got \(replies) replies, want \(egress ? 4 : 0) (replies leave through port a)")
    }

    /// pcapng (the default): tshark shows, for every frame, the port it was seen on (an
    /// interface named after the port) and whether it came in or went out; `--mirror-egress`
    /// copies are no longer indistinguishable duplicates.
    @Test func pcapngNamesEachFramesPortAndDirection() throws {
        let lab = Lab()
        let pcap = lab.temporaryPath("ng.pcapng")
        let (bridge, a, _, ta, tb) = try lab.pair(["--mirror", pcap, "--mirror-egress"])
        #expect(lab.ping(from: a, "10.77.0.2", count: 3, interval: "0.1").received == 3)
        #expect(bridge.stop() == 0)
        let magic = (FileManager.default.contents(atPath: pcap) ?? Data()).prefix(4)
        #expect(Array(magic) == [0x0A, 0x0D, 0x0D, 0x0A], "not a pcapng section header: \(Array(magic))")
        let r = Host.run(["tshark", "-r", pcap, "-Y", "icmp", "-T", "fields", "-e", "frame.interface_name", "-e", "frame.packet_flags_direction", "-e", "icmp.type"], timeout: 60)
        #expect(r.ok, "\(r.output)")
        var seen: [String: Int] = [:]
        for line in r.output.split(separator: "\n") where line.split(separator: "\t").count == 3 {
            let f = line.split(separator: "\t").map(String.init)
            let direction = Int(f[1].hasPrefix("0x") ? String(f[1].dropFirst(2)) : f[1], radix: f[1].hasPrefix("0x") ? 16 : 10)
            seen["\(f[0]) \(direction == 1 ? "in" : direction == 2 ? "out" : f[1]) \(f[2] == "8" ? "request" : "reply")", default: 0] += 1
        }
        // a request enters a and leaves b; its reply enters b and leaves a
        let want = ["\(ta) in request": 3, "\(tb) out request": 3, "\(tb) in reply": 3, "\(ta) out reply": 3]
        #expect(seen == want, "tshark:\n\(r.output)")
        #expect(Self.tcpdumpLines(pcap, containing: "ICMP echo request") == 6, "tcpdump reads pcapng too")
    }

    /// `--mirror-format pcap`: classic pcap for old readers.
    @Test func classicPcapStaysAvailable() throws {
        let lab = Lab()
        let pcap = lab.temporaryPath("classic.pcap")
        let (bridge, a, _, _, _) = try lab.pair(["--mirror", pcap, "--mirror-format", "pcap"])
        #expect(lab.ping(from: a, "10.77.0.2", count: 3, interval: "0.1").received == 3)
        #expect(bridge.stop() == 0)
        let magic = (FileManager.default.contents(atPath: pcap) ?? Data()).prefix(4)
        #expect(Array(magic) == [0xD4, 0xC3, 0xB2, 0xA1], "not a little-endian classic pcap: \(Array(magic))")
        #expect(Self.tcpdumpLines(pcap, containing: "ICMP echo request") == 3)
        #expect(try PcapMirror.count(file: pcap, filter: "icmp") == 6)
    }

    @Test func rotationKeepsTheConfiguredNumberOfFiles() throws {
        let lab = Lab()
        let pcap = lab.temporaryPath("rot.pcap")
        let (bridge, a, _, _, _) = try lab.pair(["--mirror", pcap, "--mirror-rotate", "20k,3"])
        // 60 echo requests and replies of ~1 KiB each: ~125 KiB, six or more files' worth
        let r = lab.exec(a, ["ping", "-c", "60", "-i", "0.01", "-s", "1000", "-W", "1", "10.77.0.2"], timeout: 20)
        #expect(r.output.contains(" 60 received"), "\(r.output)")
        let m = Lab.statsSection(bridge, "mirror")
        #expect((m["rotations"] ?? 0) >= 5, "\(m)")
        #expect(bridge.stop() == 0)
        for file in [pcap, pcap + ".1", pcap + ".2"] {
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? -1
            #expect(size > 24 && size <= 20 * 1024, "\(file): \(size) bytes, want a pcap of at most 20 KiB")
            #expect(((try? PcapMirror.count(file: file)) ?? 0) > 0, "\(file) is not a readable pcap with frames")
            let names = Host.run(["tshark", "-r", file, "-T", "fields", "-e", "frame.interface_name"], timeout: 60).output
            #expect(!names.isEmpty && !names.contains("port "), "\(file): each rotated file declares the ports again: \(names.prefix(200))")
        }
        #expect(!FileManager.default.fileExists(atPath: pcap + ".3"), "more than 3 files kept")
    }

    /// `tapbridge ... --mirror - | tcpdump -r -` (through a FIFO so the test can stop tapbridge
    /// by its own PID).
    /// A pair bridge mirroring to its standard output, a FIFO that `reader` (a shell command)
    /// reads from its standard input. Returns the reader, the bridge and namespace a.
    static func mirrorIntoPipe(_ lab: Lab, reader command: String) throws -> (reader: Background, bridge: Background, a: String) {
        let fifo = lab.temporaryPath("fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        let reader = try lab.background(["sh", "-c", "exec \(command) < \"$0\"", fifo])
        let (bridge, a, _, _, _) = try lab.pair(["--mirror", "-"]) { args in
            try lab.background(["sh", "-c", "exec \"$@\" > \"$0\"", fifo, Host.binary] + args)
        }
        return (reader, bridge, a)
    }

    @Test func standardOutputPipesIntoTcpdump() throws {
        let lab = Lab()
        let (reader, bridge, a) = try Self.mirrorIntoPipe(lab, reader: "tcpdump -n -r - icmp")
        #expect(lab.ping(from: a, "10.77.0.2", count: 3, interval: "0.1").received == 3)
        #expect(bridge.stop() == 0)
        #expect(reader.wait(within: 5) == 0, "tcpdump -r - did not finish cleanly: \(reader.output)")
        let lines = reader.output.split(separator: "\n")
        #expect(lines.filter { $0.contains("ICMP echo request") }.count == 3, "\(reader.output)")
        #expect(lines.filter { $0.contains("ICMP echo reply") }.count == 3, "\(reader.output)")
    }

    /// The mirror's reader goes away after 2,000 bytes: the copies then buffered are lost with
    /// the write error and counted as dropped, so every frame seen is written or dropped.
    @Test func aReaderThatGoesAwayLeavesEveryCopyCounted() throws {
        let lab = Lab()
        let (reader, bridge, a) = try Self.mirrorIntoPipe(lab, reader: "head -c 2000 > /dev/null")
        #expect(lab.ping(from: a, "10.77.0.2", count: 40, interval: "0.02").received == 40)
        #expect(reader.wait(within: 5) == 0)
        #expect(lab.ping(from: a, "10.77.0.2", count: 20, interval: "0.02").received == 20, "forwarding goes on without the reader")
        #expect(Lab.eventually { bridge.output.contains("mirror: the reader of standard output went away") }, "the reader's exit was not noticed:\n\(bridge.output)")
        // past the retry second: nothing reads, so nothing may claim it writes again
        #expect(lab.ping(from: a, "10.77.0.2", count: 10, interval: "0.2").received == 10)
        #expect(!bridge.output.contains("again"), "\(bridge.output)")
        #expect(bridge.stop() == 0, "\(bridge.output)")
        let m = Lab.counters(in: bridge.output, section: "mirror")
        func count(_ key: String) -> Int { m[key] ?? -1 }
        #expect(count("seen") >= 120 && count("seen") == count("written") + count("dropped") + count("filtered_out"), "\(m)")
        #expect(count("dropped") > 0 && count("write_errors") >= 1, "\(m)")
    }

    @Test func mirrorInterfaceReceivesTheCopies() throws {
        let lab = Lab()
        // a veth pair: tapbridge injects into one end, the "IDS" (tcpdump) reads the other
        let (span, ids) = (lab.link("m"), lab.link("i"))
        #expect(Host.run(["ip", "link", "add", span, "type", "veth", "peer", "name", ids]).ok)
        #expect(Host.run(["ip", "link", "set", span, "up"]).ok && Host.run(["ip", "link", "set", ids, "up"]).ok)
        let pcap = lab.temporaryPath("span.pcap")
        let capture = try lab.capture(in: nil, on: ids, to: pcap, filter: "icmp")
        let (bridge, a, _, _, _) = try lab.pair(["--mirror-iface", span])
        #expect(lab.ping(from: a, "10.77.0.2", count: 3, interval: "0.1").received == 3)
        _ = Lab.eventually { Self.tcpdumpLines(pcap, containing: "ICMP echo request") >= 3 }
        _ = capture.stop(signal: SIGINT)
        #expect(bridge.stop() == 0)
        #expect(Self.tcpdumpLines(pcap, containing: "ICMP echo request") == 3, "\(bridge.output)")
        #expect(Self.tcpdumpLines(pcap, containing: "ICMP echo reply") == 3)
    }

    /// A mirror interface that is also a port, or the veth peer of one, would send every copy
    /// back in to be mirrored again (one broadcast circulated at 150,000+ frames a second):
    /// refused at start-up (a TAP the bridge would create, a persistent TAP by its altname, a
    /// veth peer) and at `port add`, each in one line that says why.
    @Test func aMirrorInterfaceThatIsAlsoAPortIsRefused() throws {
        let lab = Lab()
        let (span, peer) = (lab.link("m"), lab.link("p"))
        #expect(Host.run(["ip", "link", "add", span, "type", "veth", "peer", "name", peer]).ok)
        let persistent = lab.link("q")
        #expect(Host.run(["ip", "tuntap", "add", "dev", persistent, "mode", "tap"]).ok)
        let alt = "tb\(lab.tag)alt"
        #expect(Host.run(["ip", "link", "property", "add", "dev", persistent, "altname", alt]).ok)
        for link in [span, peer, persistent] { Host.run(["ip", "link", "set", link, "up"]) }
        let fresh = lab.link("f")
        let cases: [(args: [String], message: String)] = [
            (["--port", fresh, "--mirror-iface", fresh], "--mirror-iface '\(fresh)': it is also a --port"),
            (["--port", persistent, "--mirror-iface", alt], "port \(persistent): it is the mirror interface (--mirror-iface \(alt))"),
            (["--port", "\(peer),mode=packet", "--mirror-iface", span], "port \(peer): it is the veth peer of the mirror interface"),
            (["--port", span, "--mirror-iface", peer], "port \(span): it is the veth peer of the mirror interface"),
        ]
        for c in cases {
            let r = Host.run([Host.binary] + c.args + ["--name", lab.bridgeName()])
            #expect(r.status == 1 && r.output.contains(c.message) && r.output.split(separator: "\n").count == 1,
                    "\(c.args): got status \(r.status): \(r.output)")
        }
        #expect(!Host.run(["ip", "link", "show", fresh]).ok, "the refused bridge left its TAP behind")
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", lab.link("t"), "--mirror-iface", span, "--name", name])
        #expect(Lab.eventually { Host.run([Host.binary, "show", "ports", "--name", name]).ok }, "\(bridge.output)")
        for candidate in ["\(peer),mode=packet", span] {
            let add = Host.run([Host.binary, "port", "add", candidate, "--name", name])
            #expect(!add.ok && add.output.contains("mirror interface"), "port add \(candidate): \(add.output)")
        }
        #expect(OffloadTests.ports(lab, name).count == 1)
        #expect(bridge.stop() == 0)
        Host.run(["ip", "link", "del", persistent])
    }

    /// The mirror's disk (a 64 KiB tmpfs in a private mount namespace) fills mid-run: forwarding
    /// goes on, the error is logged once, and once the 4 MiB mirror buffer is full too (8,000
    /// frames of ~1.4 KiB), the copies that do not fit are dropped and counted.
    @Test func aFullDiskDropsMirrorCopiesAndForwardingGoesOn() throws {
        let lab = Lab()
        let dir = lab.temporaryPath("tmpfs")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { rmdir(dir) }
        let (bridge, a, _, _, _) = try lab.pair(["--mirror", "\(dir)/m.pcap"]) { args in
            try lab.background(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                                "mount -t tmpfs -o size=64k none \"$0\" && exec \"$@\"", dir, Host.binary] + args)
        }
        let flood = lab.exec(a, ["ping", "-f", "-c", "4000", "-s", "1400", "-W", "1", "10.77.0.2"], timeout: 60)
        let received = flood.output.split(separator: "\n").first { $0.contains("packets transmitted") }?.split(separator: " ").dropFirst(3).first.flatMap { Int($0) } ?? 0
        #expect(received >= 3900, "flood ping: \(received)/4000 answered while the mirror's disk was full")
        #expect(lab.ping(from: a, "10.77.0.2", count: 3).received == 3, "forwarding stopped after the disk filled")
        // a retry after the error (one a second) fails again, and is not logged again
        func writeErrors() -> Int {
            let stats = Host.run([Host.binary, "show", "stats", "--json", "--name", ControlTests.name(bridge)]).output
            let mirror = ((try? JSONSerialization.jsonObject(with: Data(stats.utf8))) as? [String: Any])?["mirror"] as? [String: Any]
            return mirror?["write_errors"] as? Int ?? 0
        }
        #expect(Lab.eventually { writeErrors() >= 2 }, "no retry after the write error:\n\(bridge.output)")
        #expect(bridge.stop() == 0)
        let errors = bridge.output.split(separator: "\n").filter { $0.contains("mirror: write to") && $0.contains("No space left on device") }
        #expect(errors.count == 1, "want the write error logged once:\n\(bridge.output)")
        let m = Lab.counters(in: bridge.output, section: "mirror")
        #expect((m["dropped"] ?? 0) > 0 && (m["write_errors"] ?? 0) > 0, "\(m)")
    }

    static let badMirrors: [KernelTests.DataPlaneTests.BadStart] = [
        .init(name: "invalid filter", args: ["--port", "tbmf0", "--mirror", "/tmp/tb-unused.pcap", "--mirror-filter", "tcp prot 80"], status: 1,
              message: "--mirror-filter 'tcp prot 80': can't parse filter expression: syntax error"),
        .init(name: "unwritable path", args: ["--port", "tbmf0", "--mirror", "/nonexistent-tapbridge-dir/m.pcap"], status: 1,
              message: "--mirror '/nonexistent-tapbridge-dir/m.pcap': cannot write: /nonexistent-tapbridge-dir/m.pcap: No such file or directory"),
        .init(name: "unknown mirror port", args: ["--port", "tbmf0", "--mirror", "/tmp/tb-unused.pcap", "--mirror-port", "nope"], status: 1,
              message: "--mirror-port 'nope': no such port (ports: tbmf0)"),
        .init(name: "filter without a mirror", args: ["--port", "tbmf0", "--mirror-filter", "icmp"], status: 64,
              message: "--mirror-filter needs --mirror PATH or --mirror-iface IFACE"),
        .init(name: "rotation on standard output", args: ["--port", "tbmf0", "--mirror", "-", "--mirror-rotate", "1M"], status: 64,
              message: "--mirror-rotate needs --mirror with a file path"),
        .init(name: "bad rotation size", args: ["--port", "tbmf0", "--mirror", "/tmp/x.pcap", "--mirror-rotate", "12q"], status: 64,
              message: "--mirror-rotate '12q'"),
        .init(name: "missing mirror interface", args: ["--port", "tbmf0", "--mirror-iface", "tbnosuch9"], status: 1,
              message: "--mirror-iface 'tbnosuch9': "),
    ]

    @Test(arguments: badMirrors)
    func badMirrorInputGivesOneLineAndANonZeroExit(_ c: KernelTests.DataPlaneTests.BadStart) {
        try? FileManager.default.removeItem(atPath: "/tmp/tb-unused.pcap")
        let r = Host.run([Host.binary] + c.args)
        #expect(!FileManager.default.fileExists(atPath: "/tmp/tb-unused.pcap"), "a failed start created its mirror file")
        #expect(r.status == c.status, "got exit \(r.status), want \(c.status): \(r.output)")
        #expect(r.output.split(separator: "\n").count == 1 && r.output.contains(c.message), "got: \(r.output)")
        #expect(!Host.run(["ip", "link", "show", "tbmf0"]).ok, "a failed start left its TAP behind")
    }
}
}
