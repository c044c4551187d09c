import Foundation
import Testing

extension KernelTests {
/// Every file under Examples/ runs here, so none of them can rot.
@Suite("Examples")
struct ExampleTests {
    static let examples = Host.packageRoot.appendingPathComponent("Examples").path

    static func runScript(_ name: String, lab: String? = nil, timeout: Int = 60) -> Host.Result {
        Host.run(["env", "TAPBRIDGE=\(Host.binary)"] + (lab.map { ["LAB=\($0)"] } ?? []) + ["bash", "\(examples)/lab/\(name)"], timeout: timeout)
    }

    /// A short name no other test or run uses (the lab's interfaces are NAME-a ..., at most 15 bytes).
    static func labName() -> String { "tl\(getpid() % 100_000)\(Int.random(in: 10...99))" }

    @Test func threeHostLabScriptReachesEveryPairAndCleansUp() {
        let name = Self.labName()
        let r = Self.runScript("three-hosts.sh", lab: name)
        #expect(r.ok && r.output.contains("6/6 host pairs reachable"), "\(r.output)")
        #expect(r.output.contains("learned"), "no MAC table shown: \(r.output)")
        #expect(!Host.run(["ip", "netns", "list"]).output.contains(name), "the lab script left namespaces behind")
    }

    /// The three-host lab file as it is, under a name of the test's own (`LAB`): the hosts
    /// exist, addressed; the link to host c is slow (its least RTT at least 35 ms: delay=40ms,
    /// jitter=5ms) and the others are not; TCP passes both ways across the lossy, rate-limited
    /// link with no checksum error; SIGTERM removes every namespace the file made.
    @Test func threeHostLabFileIsALabInOneCommand() throws {
        let lab = Lab()
        let name = Self.labName()
        let bridge = try lab.bridge(["--config", "\(Self.examples)/lab/three-hosts.yaml"], environment: ["LAB": name], unnamed: true)
        let wait = Host.run([Host.binary, "wait", "--name", name], timeout: 15)
        try #require(wait.ok, "\(wait.output)\n\(bridge.output)")
        let (a, b, c) = ("\(name)-a", "\(name)-b", "\(name)-c")
        func leastRTT(_ from: String, _ to: String) -> Double {
            let r = lab.exec(from, ["ping", "-c", "5", "-i", "0.2", "-W", "2", to], timeout: 20)
            return r.output.split(separator: "\n").first { $0.hasPrefix("rtt") }.flatMap { $0.split(separator: "=").last }?
                .split(separator: "/").first.flatMap { Double($0.trimmingCharacters(in: .whitespaces)) } ?? -1
        }
        let slow = leastRTT(a, "10.90.0.3"), fast = leastRTT(a, "10.90.0.2")
        #expect(slow >= 35 && fast >= 0 && fast < 5, "least RTT a->c \(slow) ms (the 40 ms link), a->b \(fast) ms\n\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, a, c, "10.90.0.3", context: bridge.output)
        #expect(bridge.output.contains("link delay=40ms jitter=5ms loss=2% rate=20mbit"), "\(bridge.output)")
        #expect(bridge.stop() == 0)
        #expect(![a, b, c].contains(where: Lab.namespaceExists), "namespaces left after SIGTERM")
    }

    /// Two segments joined by a router namespace (Docs/Labs.md): VLANs 10 and 20 on one
    /// bridge, the router's two ports in one namespace. With the three route commands the file
    /// names, TCP passes both ways from a to b through the router; a and b never see each
    /// other's frames (the bridge learns a's MAC in VLAN 10 only).
    @Test func twoSegmentsJoinedByARouterNamespace() throws {
        let lab = Lab()
        let name = Self.labName()
        let bridge = try lab.bridge(["--config", "\(Self.examples)/lab/two-segments.yaml"], environment: ["LAB": name], unnamed: true)
        let wait = Host.run([Host.binary, "wait", "--name", name], timeout: 15)
        try #require(wait.ok, "\(wait.output)\n\(bridge.output)")
        let (a, b, r) = ("\(name)-a", "\(name)-b", "\(name)-r")
        #expect(lab.exec(a, ["ip", "route", "add", "default", "via", "10.1.0.1"]).ok && lab.exec(b, ["ip", "route", "add", "default", "via", "10.2.0.1"]).ok)
        #expect(lab.exec(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]).ok)
        #expect(lab.ping(from: a, "10.2.0.2").received == 3, "a -> b through the router\n\(bridge.output)")
        try OffloadTests.tcpBothWays(lab, a, b, "10.2.0.2", context: bridge.output)
        let fdb = Host.run([Host.binary, "show", "fdb", "--name", name]).output
        let aMAC = lab.exec(a, ["cat", "/sys/class/net/\(a)/address"]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        let aLines = fdb.split(separator: "\n").filter { $0.hasPrefix(aMAC) }
        #expect(aLines.count == 1 && aLines[0].split(separator: " ", omittingEmptySubsequences: true)[1] == "10", "a's MAC, in VLAN 10 only:\n\(fdb)")
        #expect(bridge.stop() == 0)
        #expect(![a, b, r].contains(where: Lab.namespaceExists), "namespaces left after SIGTERM")
    }

    /// The two-VM lab: its script boots two guests under QEMU as nobody on the file's stream
    /// socket; each reaches the other, and the namespace host reaches both.
    @Test func twoVMLabJoinsUnprivilegedVMsOverAStreamSocket() throws {
        try #require(Host.has("qemu-system-x86_64"), "needs qemu-system-x86 (CI installs it)")
        let name = Self.labName()
        let r = Self.runScript("two-vms.sh", lab: name, timeout: 300)
        #expect(r.ok && r.output.contains("2/2 reached the other, the host reached 2/2"), "\(r.output)")
        #expect(r.output.contains("uid 65534"), "the VMs' ports should name QEMU's user: \(r.output)")
        #expect(!Host.run(["ip", "netns", "list"]).output.contains(name) && !FileManager.default.fileExists(atPath: "/run/\(name).sock"), "the lab left things behind")
    }

    @Test func vxlanPairScriptPassesFullSizeFramesBothWays() {
        let name = Self.labName()
        let r = Self.runScript("vxlan-pair.sh", lab: name)
        #expect(r.ok && r.output.contains("vxlan pair: both ways"), "\(r.output)")
        #expect(!Host.run(["ip", "netns", "list"]).output.contains(name), "the script left namespaces behind")
    }

    @Test func exampleConfigIsTheSameBridgeAsItsCommandLine() throws {
        let file = Host.run([Host.binary, "--config", "\(Self.examples)/tapbridge.yaml", "--print-config"])
        let flags = Host.run([Host.binary, "--name", "example", "--port", "tbex0", "--port", "tbex1,vlan=10", "--port", "tbex2,trunk=10:20,native=1",
                              "--ageing", "120", "--max-macs", "1024", "--stats-interval", "60", "--print-config"])
        #expect(file.ok && flags.ok, "\(file.output)\(flags.output)")
        #expect(file.output == flags.output, "config file:\n\(file.output)\ncommand line:\n\(flags.output)")
        // the command line wins, lists included: the example's ports can be replaced
        let both = Host.run([Host.binary, "--config", "\(Self.examples)/tapbridge.yaml", "--ageing", "60", "--port", "tbex3", "--print-config"]).output
        #expect(both.split(separator: "\n").contains("ageing: 60") && !both.contains("ageing: 120") && !both.contains("\"tbex0\"") && both.contains("\"tbex3\""), "\(both)")
        #expect(both.contains("name: \"example\""), "the file's other values stay: \(both)")
        // and the printed configuration is itself a config file for the same bridge
        let lab = Lab()
        let printed = lab.temporaryPath("printed.yaml")
        try file.output.write(toFile: printed, atomically: true, encoding: .utf8)
        #expect(Host.run([Host.binary, "--config", printed, "--print-config"]).output == file.output)
        // and it starts that bridge
        let bridge = try lab.bridge(["--config", "\(Self.examples)/tapbridge.yaml", "--name", lab.bridgeName()])
        #expect(lab.waitForLinks(["tbex0", "tbex1", "tbex2"]), "\(bridge.output)")
        let name = ControlTests.name(bridge)
        let ports = Host.run([Host.binary, "show", "ports", "--name", name]).output
        #expect(ports.contains("tbex1") && ports.contains("access VLAN 10") && ports.contains("trunk VLANs 10,20 (native 1 untagged)"), "\(ports)")
        #expect(bridge.stop() == 0)
    }

    @Test func configErrorsNameTheFileLineAndKey() throws {
        let lab = Lab()
        let cases: [(String, String)] = [
            ("ports: [a]\nageng: 5\n", ":2: unknown key 'ageng'"),
            ("ports: [a]\nageing: soon\n", ":2: 'ageing' must be a number, got 'soon'"),
            ("ports:\n  - name: a\n    speed: 5\n", ":3: unknown key 'speed' in 'ports'"),
            ("mirror-port: [[a]]\n", ":1: items of 'mirror-port' must be strings"),
            ("hub: maybe\nports: [a]\n", ":1: 'hub' must be true or false"),
        ]
        for (yaml, message) in cases {
            let path = lab.temporaryPath("bad.yaml")
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            let r = Host.run([Host.binary, "--config", path])
            #expect(r.status == 64 && r.output.hasPrefix("tapbridge: error: config \(path)\(message)"), "got: \(r.output)")
            #expect(r.output.split(separator: "\n").count == 1, "\(r.output)")
        }
    }

    /// Every long option is a key, singular list keys included: the file below and the command
    /// line with the same words print the same configuration.
    @Test func configKeysAreTheLongOptions() throws {
        let lab = Lab()
        let path = lab.temporaryPath("long.yaml")
        try "port: tbex0\nremote: [127.0.0.1:4789]\nmirror-port: tbex0\nno-split-horizon: true\nmirror: /tmp/x.pcap\nlisten: 4790\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let file = Host.run([Host.binary, "--config", path, "--print-config"])
        let flags = Host.run([Host.binary, "--port", "tbex0", "--remote", "127.0.0.1:4789", "--mirror-port", "tbex0", "--no-split-horizon",
                              "--mirror", "/tmp/x.pcap", "--listen", "4790", "--print-config"])
        #expect(file.ok && flags.ok, "\(file.output)\(flags.output)")
        #expect(file.output == flags.output, "config file:\n\(file.output)\ncommand line:\n\(flags.output)")
        #expect(file.output.contains("no-split-horizon: true"), "\(file.output)")
    }

    /// README.md's "Join two network namespaces" recipe, pasted as one block into bash, as a
    /// newcomer would (with the release binary first on PATH): it pings, and leaves nothing.
    @Test func readmeRecipeRunsAsWritten() throws {
        let readme = try String(contentsOf: Host.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(readme.components(separatedBy: "## Join two network namespaces").dropFirst().first)
        let block = try #require(section.components(separatedBy: "```").dropFirst().first, "no code block in the recipe")
        let existing = Host.run(["ip", "netns", "list"]).output.split(separator: "\n").map { $0.split(separator: " ").first.map(String.init) ?? "" }
        try #require(!existing.contains("a") && !existing.contains("b"), "namespaces a or b exist already: the recipe would clash")
        let bin = URL(fileURLWithPath: Host.binary).deletingLastPathComponent().path
        let r = Host.run(["env", "PATH=\(bin):/usr/sbin:/usr/bin:/sbin:/bin", "bash", "-c", block], timeout: 60)
        #expect(r.ok && r.output.contains("3 packets transmitted, 3 received"), "\(r.output)")
        let after = Host.run(["ip", "netns", "list"]).output
        #expect(!after.split(separator: "\n").contains { $0.hasPrefix("a ") || $0 == "a" || $0.hasPrefix("b ") || $0 == "b" }, "\(after)")
        #expect(Lab.eventually { !FileManager.default.fileExists(atPath: "/sys/class/net/tbA") }, "the TAPs should vanish with tapbridge")
    }

    /// Examples/install.sh (--no-build) with PREFIX, UNITDIR and CONFDIR in a directory of the
    /// test's: the binary, the man page (which `man` finds under the prefix), the unit with
    /// ExecStart at the installed binary and --config in CONFDIR, which `systemd-analyze verify
    /// UNITDIR/tapbridge@.service` (the command install.sh and Operations.md give, no other
    /// flag) passes as installed and `systemd-analyze security` rates OK (below 3.0;
    /// Operations.md has the score); the unit's user is made, a system user without login
    /// (TAPBRIDGE_USER names one of the test's own); --uninstall removes them. DESTDIR stages the same files
    /// under a root, and a CONFDIR the unit could not read is refused.
    @Test func installedUnitVerifiesAndIsHardened() throws {
        let lab = Lab()
        let top = lab.temporaryPath("inst")
        defer { try? FileManager.default.removeItem(atPath: top) }
        let (prefix, unitdir, confdir) = ("\(top)/prefix", "\(top)/units", "\(top)/conf")
        // the unit's user, made by install.sh: one of the test's own, removed after
        let user = "tbi\(getpid() % 100_000)"
        defer { _ = Host.run(["userdel", user]) }
        let env = ["env", "PREFIX=\(prefix)", "UNITDIR=\(unitdir)", "CONFDIR=\(confdir)", "TAPBRIDGE_USER=\(user)"]
        // (--no-build: the binary under test; a build now would wait for this test's own swift)
        let installed = Host.run(env + ["bash", "\(Self.examples)/install.sh", "--no-build"], timeout: 30)
        try #require(installed.ok, "\(installed.output)")
        for file in ["\(prefix)/bin/tapbridge", "\(prefix)/share/man/man1/tapbridge.1", "\(unitdir)/tapbridge@.service", "\(confdir)/example.yaml"] {
            #expect(FileManager.default.fileExists(atPath: file), "not installed: \(file)")
        }
        let man = Host.run(["env", "MANPATH=\(prefix)/share/man", "man", "-w", "tapbridge"])
        #expect(man.output.contains("\(prefix)/share/man/man1/tapbridge.1"), "man -w: \(man.output)")
        let template = "\(unitdir)/tapbridge@.service"
        let unitText = try String(contentsOfFile: template, encoding: .utf8)
        #expect(unitText.contains("ExecStart=\(prefix)/bin/tapbridge --name %i --config \(confdir)/%i.yaml"), "ExecStart/--config not the installed paths: \(unitText.prefix(900))")
        #expect(unitText.contains("\nUser=\(user)\nGroup=\(user)\n") && installed.output.contains("as user \(user), user \(user) made"), "\(installed.output)")
        let made = Host.run(["getent", "passwd", user]).output
        #expect(made.contains(":/nonexistent:/usr/sbin/nologin") && Int(made.split(separator: ":")[2]) ?? 0 < 1000, "not a system user without a login: \(made)")
        // the man page is where man looks for a PREFIX of /usr/local; this one needs MANPATH
        let verify = Host.run(["env", "MANPATH=\(prefix)/share/man", "systemd-analyze", "verify", template])
        #expect(verify.ok && verify.output.isEmpty, "systemd-analyze verify: \(verify.output)")
        let security = Host.run(["systemd-analyze", "security", "--offline=yes", template])
        let score = security.output.split(separator: "\n").first { $0.contains("Overall exposure level") }
            .flatMap { $0.split(separator: ":").last?.split(separator: " ").first }.flatMap { Double($0) } ?? 99
        #expect(score < 3.0, "systemd-analyze security: \(score)\n\(security.output.suffix(600))")
        let removed = Host.run(env + ["bash", "\(Self.examples)/install.sh", "--uninstall"])
        #expect(removed.ok && !FileManager.default.fileExists(atPath: "\(prefix)/bin/tapbridge") && !FileManager.default.fileExists(atPath: template), "\(removed.output)")
        // DESTDIR: the default paths, under a staging root
        let stage = "\(top)/stage"
        let staged = Host.run(["env", "DESTDIR=\(stage)", "bash", "\(Self.examples)/install.sh", "--no-build"], timeout: 30)
        #expect(staged.ok && FileManager.default.fileExists(atPath: "\(stage)/usr/local/bin/tapbridge")
            && ((try? String(contentsOfFile: "\(stage)/etc/systemd/system/tapbridge@.service", encoding: .utf8)) ?? "").contains("--config /etc/tapbridge/%i.yaml"), "\(staged.output)")
        let hidden = Host.run(["env", "DESTDIR=\(stage)", "CONFDIR=/home/tb", "bash", "\(Self.examples)/install.sh", "--no-build"], timeout: 30)
        #expect(!hidden.ok && hidden.output.contains("ProtectHome"), "\(hidden.output)")
    }

    /// Recipe 1 of Examples/qemu/README.md with the real QEMU (paused, no disk): QEMU holds
    /// the TAP, tapbridge attaches it through a packet socket.
    @Test(.enabled(if: Host.has("qemu-system-x86_64"), "needs qemu-system-x86_64 (apt-get install qemu-system-x86)"))
    func qemuHoldsTheTapAndTapbridgeAttachesThroughAPacketSocket() throws {
        let lab = Lab()
        let vm = lab.link("q")
        let qemu = try lab.background(["qemu-system-x86_64", "-nodefaults", "-display", "none", "-S", "-m", "64",
                                       "-netdev", "tap,id=n0,ifname=\(vm),script=no,downscript=no", "-device", "virtio-net-pci,netdev=n0"])
        #expect(lab.waitForLinks([vm]), "QEMU did not create its TAP: \(qemu.output)")
        let other = lab.link("o")
        let bridge = try lab.bridge(["--port", vm, "--port", other])
        #expect(lab.waitForLinks([other]))
        #expect(Lab.eventually { bridge.output.contains("port \(vm): packet socket") && bridge.output.contains("held by another program") }, "\(bridge.output)")
        #expect(bridge.isRunning, "\(bridge.output)")
        #expect(bridge.stop() == 0)
        _ = qemu.stop()
    }

    /// Recipe 2: QEMU's `-netdev dgram` as a raw remote. QEMU binds its port (it would exit on
    /// bad options) and tapbridge sends to it without errors.
    @Test(.enabled(if: Host.has("qemu-system-x86_64"), "needs qemu-system-x86_64 (apt-get install qemu-system-x86)"))
    func qemuDgramNetdevIsARawRemote() throws {
        let lab = Lab()
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let qemu = try lab.background(["qemu-system-x86_64", "-nodefaults", "-display", "none", "-S", "-m", "64",
                                       "-netdev", "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=\(p2),remote.type=inet,remote.host=127.0.0.1,remote.port=\(p1)",
                                       "-device", "virtio-net-pci,netdev=n0"])
        let t = lab.link("d")
        let bridge = try lab.bridge(["--port", t, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2),encap=raw,name=vm1"])
        #expect(lab.waitForLinks([t]))
        // the new TAP's own broadcasts go to the VM
        #expect(Lab.eventually { (Lab.portCounters(bridge, port: "vm1")["tx_frames"] ?? 0) > 0 }, "nothing sent to the VM:\n\(bridge.output)")
        #expect(qemu.isRunning, "QEMU rejected the -netdev dgram recipe: \(qemu.output)")
        let c = Lab.portCounters(bridge, port: "vm1")
        #expect(bridge.stop() == 0)
        #expect((c["tx_frames"] ?? 0) > 0 && c["transmit_error"] == nil && c["link_down"] == nil, "\(c)\n\(bridge.output)")
        _ = qemu.stop()
    }
}
}
