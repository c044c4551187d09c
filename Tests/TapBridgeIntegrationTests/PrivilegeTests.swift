import Foundation
import Glibc
import TapBridgeDaemon
import TapBridgeControl
import Testing

/// Least privilege: `--user` drops root once everything is open; a user's own TAPs need no
/// root at all; every permission failure says its real cause and fix in one line.
extension KernelTests {
@Suite("Least privilege")
struct PrivilegeTests {
    /// `/proc/PID/status` lines of a running process, by key.
    static func status(_ pid: Int32) -> [String: String] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let kv = line.split(separator: ":", maxSplits: 1)
            if kv.count == 2 { out[String(kv[0])] = kv[1].trimmingCharacters(in: .whitespaces) }
        }
        return out
    }

    /// Runs `args` as nobody:nogroup with no capability, in a mount namespace whose
    /// /dev/net/tun is mode 0666 (as most distributions ship it; this machine's is 0600, and
    /// the test changes nothing outside its namespace).
    static func asNobody(_ args: [String], openTun: Bool = true) -> [String] {
        let drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
        guard openTun else { return drop + args }
        let quoted = (drop + args).map { "'\($0)'" }.joined(separator: " ")
        let node = "/tmp/tbtest-tun-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        return ["unshare", "-m", "sh", "-c", "mknod -m 666 \(node) c 10 200 && mount --bind \(node) /dev/net/tun && rm \(node) && exec \(quoted)"]
    }

    /// ```
    ///  ns a ── tap ── tapbridge --user nobody ── tap ── ns b
    /// ```
    /// It runs as nobody with CAP_NET_ADMIN and CAP_NET_RAW only and no new privileges, TCP
    /// passes both ways, and `show ports` answers root and nobody (the socket is nobody's now);
    /// nobody's other processes may not change the bridge (`port add`, `remote add`, `fdb
    /// flush` refused), root may.
    @Test func userNobodyForwardsTCPAndAnswersItsOwner() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", ta, "--port", tb, "--user", "nobody", "--name", name])
        #expect(lab.waitForLinks([ta, tb]), "\(bridge.output)")
        #expect(Lab.eventually { bridge.output.contains("running as nobody (uid 65534)") }, "\(bridge.output)")
        let s = Self.status(bridge.process.processIdentifier)
        #expect(s["Uid"]?.hasPrefix("65534\t65534\t65534") == true && s["CapEff"] == "0000000000003000" && s["CapBnd"] == "0000000000003000"
                && s["CapAmb"] == "0000000000000000" && s["NoNewPrivs"] == "1", "\(s.filter { ["Uid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs"].contains($0.key) })")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        let asRoot = ControlTests.client(["show", "ports"], name: name)
        let asUser = Host.run(Self.asNobody([Host.binary, "show", "ports", "--name", name], openTun: false))
        #expect(asRoot.ok && asRoot.output.contains(ta), "\(asRoot.output)")
        #expect(asUser.ok && asUser.output.contains(tb), "the bridge's own user: \(asUser.output)")
        // another process of that user may only show: it was handed every right (it could
        // attach eth0 as a packet port and read the host's traffic)
        for args in [["port", "add", "\(lab.link("x"))"], ["remote", "add", "127.0.0.1:4789"], ["fdb", "flush"]] {
            let r = Host.run(Self.asNobody([Host.binary] + args + ["--name", name], openTun: false))
            #expect(!r.ok && r.output.contains("permission denied") && r.output.contains("runs as --user"), "\(args) as nobody: \(r.output)")
        }
        let flushed = ControlTests.client(["fdb", "flush"], name: name)
        #expect(flushed.ok, "root still may: \(flushed.output)")
        #expect(bridge.stop() == 0)
    }

    /// Two TAPs made for nobody beforehand (`ip tuntap add ... user nobody`, up), and tapbridge
    /// run by nobody with no capability at all: TCP both ways.
    @Test func aUsersOwnTAPsNeedNoRoot() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        for t in [ta, tb] {
            #expect(Host.run(["ip", "tuntap", "add", "dev", t, "mode", "tap", "user", "nobody", "vnet_hdr"]).ok)
            #expect(Host.run(["ip", "link", "set", t, "up"]).ok)
        }
        let control = lab.temporaryPath("nobody-control")
        #expect(Host.run(["mkdir", "-m", "777", control]).ok)
        let bridge = try lab.background(Self.asNobody([Host.binary, "--port", ta, "--port", tb, "--control", "\(control)/x.sock"]))
        #expect(Lab.eventually { bridge.output.contains("forwarding between 2 port(s)") }, "\(bridge.output)")
        #expect(bridge.output.contains("port \(ta): TAP attached (kept on exit)"), "\(bridge.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        try OffloadTests.tcpBothWays(lab, a, b, "10.77.0.2", context: bridge.output)
        _ = bridge.stop()
        for t in [ta, tb] { _ = Host.run(["ip", "link", "del", t]) }
        _ = Host.run(["rm", "-rf", control])
    }

    /// Each permission failure: one line, its cause and its fix.
    @Test func permissionFailuresNameTheirCause() throws {
        let lab = Lab()
        let t = lab.link("p")
        // an interface that is no TAP: auto mode takes a packet socket, and the need is
        // CAP_NET_RAW, not /dev/net/tun (whose mode was named before)
        let (v, w) = (lab.link("v"), lab.link("w"))
        #expect(Host.run(["ip", "link", "add", v, "type", "veth", "peer", "name", w]).ok)
        Host.run(["ip", "link", "set", v, "up"])
        let dir = lab.temporaryPath("nobody-dir")
        #expect(Host.run(["mkdir", "-m", "777", dir]).ok)
        defer { _ = Host.run(["rm", "-rf", dir]) }
        let cases: [([String], String)] = [
            // the device node, whatever the capabilities
            (Self.asNobody([Host.binary, "--port", t, "--control", "none"], openTun: false), "cannot open /dev/net/tun: permission denied (its mode is 0600"),
            (Self.asNobody([Host.binary, "--port", v, "--control", "none"], openTun: false), "a packet socket needs CAP_NET_RAW"),
            // the capability, once the node opens
            (Self.asNobody([Host.binary, "--port", t, "--control", "none"]), "creating TAP \(t) needs CAP_NET_ADMIN"),
            // the control directory
            (Self.asNobody([Host.binary, "--port", t, "--name", "tbtest-nobody"]), "give a writable --control PATH"),
            // --user needs root to start
            (Self.asNobody([Host.binary, "--port", t, "--control", "\(dir)/x.sock", "--user", "nobody"]), "changing user needs root"),
            ([Host.binary, "--port", "\(t),netns=tbtest-nns", "--user", "nobody", "--control", "none"], "--user with netns="),
            ([Host.binary, "--port", t, "--user", "no-such-user-here", "--control", "none"], "--user 'no-such-user-here': no user named"),
        ]
        for (args, want) in cases {
            let r = Host.run(args, timeout: 10)
            let lines = r.output.split(separator: "\n").filter { $0.contains("error") }
            #expect(!r.ok && r.output.contains(want) && lines.count == 1, "\(args.suffix(6)): want '\(want)', got:\n\(r.output)")
        }
        #expect(!Host.run(["ip", "link", "show", t]).ok, "a failed start left \(t) behind")
        // a TAP of nobody's that is down: bringing it up is the capability's
        #expect(Host.run(["ip", "tuntap", "add", "dev", t, "mode", "tap", "user", "nobody"]).ok)
        defer { _ = Host.run(["ip", "link", "del", t]) }
        let down = Host.run(Self.asNobody([Host.binary, "--port", t, "--control", "none"]), timeout: 10)
        #expect(!down.ok && down.output.contains("the TAP is down, and bringing it up needs CAP_NET_ADMIN: bring it up once as root (ip link set \(t) up)"), "\(down.output)")
    }

    /// The systemd unit's way (`User=tapbridge`, `AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW
    /// CAP_CHOWN`, the same bounding set, `NoNewPrivileges`), played by setpriv with a system
    /// user of the test's own: the bridge makes its TAP, makes its `datapath=kernel` vxlan
    /// device at start and another at run time (over rtnetlink, from its control-plane thread),
    /// TCP passes both ways without fragments, and at exit both devices go.
    /// ```
    ///  ns a ── tap ── tapbridge [h1, user U] ── vx-NAME ══ veth ══ [h2] vx ── tapbridge ── tap ── ns b
    /// ```
    @Test func asTheUnitRunsItADedicatedUserRunsEverything() throws {
        let lab = Lab()
        let hosts = TwoHosts(lab)
        let user = "tbu\(getpid() % 100_000)"
        try #require(Host.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user]).ok)
        defer { _ = Host.run(["userdel", user]) }
        let dir = lab.temporaryPath("unit")
        #expect(Host.run(["install", "-d", "-o", user, "-g", user, "-m", "0700", dir]).ok)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let name = lab.bridgeName()
        let caps = "-all,+net_admin,+net_raw,+chown"
        let drop = ["setpriv", "--reuid=\(user)", "--regid=\(user)", "--init-groups", "--inh-caps=\(caps)", "--ambient-caps=\(caps)", "--bounding-set=\(caps)", "--no-new-privs"]
        let args = drop + [Host.binary, "--name", name, "--control", "\(dir)/\(name).sock", "--port", hosts.ta, "--remote", "10.76.0.2:4789,datapath=kernel,vni=77"]
        // (this machine's /dev/net/tun is 0600: a 0666 node in the bridge's mount namespace)
        let node = "/tmp/tbtest-tun-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        let quoted = args.map { "'\($0)'" }.joined(separator: " ")
        let one = try lab.background(["ip", "netns", "exec", hosts.h1, "unshare", "-m", "sh", "-c", "mknod -m 666 \(node) c 10 200 && mount --bind \(node) /dev/net/tun && rm \(node) && exec \(quoted)"])
        let two = try lab.bridge(["--port", hosts.tb, "--remote", "10.76.0.1:4789,datapath=kernel,vni=77"], in: hosts.h2)
        try hosts.waitForTaps(lab, one, two)
        // (ip netns exec, unshare and sh each exec the next: the process is the bridge)
        let uid = Host.run(["id", "-u", user]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Lab.eventually { Self.status(one.pid)["Name"] == "tapbridge" && Self.status(one.pid)["Uid"]?.hasPrefix("\(uid)\t") == true },
                "not running as \(user): \(Self.status(one.pid)["Name"] ?? "?") \(Self.status(one.pid)["Uid"] ?? "?")\n\(one.output)")
        #expect(Self.status(one.pid)["CapEff"] == "0000000000003001", "\(Self.status(one.pid)["CapEff"] ?? "?")")
        _ = try hosts.tcpWithoutFragments(lab, one, two)
        let added = Host.run([Host.binary, "remote", "add", "10.76.0.3:4790,datapath=kernel,vni=78", "--control", "\(dir)/\(name).sock"])
        #expect(added.ok && added.output.contains("vxlan device vx1-\(name) made"), "\(added.output)\n\(one.output)")
        #expect(lab.exec(hosts.h1, ["ip", "-d", "link", "show", "vx1-\(name)"]).output.contains("vxlan id 78"), "\(one.output)")
        #expect(one.stop() == 0, "\(one.output)")
        #expect(!lab.exec(hosts.h1, ["ip", "link", "show", "vx-\(name)"]).ok && !lab.exec(hosts.h1, ["ip", "link", "show", "vx1-\(name)"]).ok, "the devices outlived the bridge: \(one.output)")
        #expect(two.stop() == 0)
    }
}
}
