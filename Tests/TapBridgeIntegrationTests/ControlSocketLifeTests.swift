import Foundation
import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import Testing

extension KernelTests {
@Suite("Control socket: its life, names, readiness, groups")
struct ControlSocketLifeTests {
    @Test func controlCommandsHaveTheirOwnHelp() {
        for args in [["show", "--help"], ["help", "show", "ports"], ["fdb", "add", "--help"], ["port", "del", "--help"]] {
            let r = Host.run([Host.binary] + args)
            #expect(r.ok && r.output.contains("USAGE: tapbridge \(args.filter { $0 != "help" && $0 != "--help" }.joined(separator: " "))"), "\(args): \(r.output)")
        }
        let bad = Host.run([Host.binary, "show", "stats", "--format", "xml"])
        #expect(bad.status == 64 && bad.output.hasPrefix("tapbridge: error: --format must be text, json or prometheus"), "\(bad.output)")
    }

    /// A socket file left by a bridge that died (bound, never unlinked, nobody listening) is
    /// replaced.
    @Test func aStaleSocketFileIsReplaced() throws {
        let lab = Lab()
        let name = lab.bridgeName()
        let path = "/run/tapbridge/\(name).sock"
        let stale = Host.run(["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()", path])
        try #require(stale.ok && FileManager.default.fileExists(atPath: path), "\(stale.output)")
        let (bridge, a, _, _, _) = try lab.pair(["--name", name])
        #expect(lab.ping(from: a, "10.77.0.2", count: 1).received == 1)
        let r = ControlTests.client(["show", "ports"], name: name)
        #expect(r.ok && r.output.contains("PORT"), "the bridge did not take over the stale socket: \(r.output)\n\(bridge.output)")
        #expect(bridge.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test func aSecondBridgeWithTheSameNameIsRefused() throws {
        let lab = Lab()
        let (bridge, a, _, _, _) = try lab.pair()
        let name = ControlTests.name(bridge)
        let t = lab.link("x")
        let second = Host.run([Host.binary, "--name", name, "--port", t])
        #expect(second.status == 1, "\(second.output)")
        #expect(second.output == "tapbridge: error: --control '/run/tapbridge/\(name).sock': another tapbridge named '\(name)' is running (give this one a different --name or --control)\n")
        #expect(!Host.run(["ip", "link", "show", t]).ok, "the refused bridge created its TAP")
        #expect(lab.ping(from: a, "10.77.0.2", count: 2).received == 2, "the first bridge was disturbed")
        #expect(bridge.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: "/run/tapbridge/\(name).sock"), "control socket left behind")
    }

    @Test(arguments: [nil, "root"] as [String?])
    func controlSocketIsPrivateUnlessAGroupIsGiven(group: String?) throws {
        let lab = Lab()
        let (bridge, _, _, _, _) = try lab.pair(group.map { ["--control-group", $0] } ?? [])
        let path = "/run/tapbridge/\(ControlTests.name(bridge)).sock"
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        let mode = (attributes[.posixPermissions] as? Int) ?? -1
        #expect(mode == (group == nil ? 0o600 : 0o660), "mode \(String(mode, radix: 8))")
        #expect(attributes[.type] as? FileAttributeType == .typeSocket)
        #expect(bridge.stop() == 0)
    }

    @Test func statsLineAndPrometheusExposition() throws {
        let lab = Lab()
        let (bridge, a, _, ta, _) = try lab.pair(["--stats-interval", "1"])
        #expect(lab.ping(from: a, "10.77.0.2", count: 3).received == 3)
        #expect(Lab.eventually { bridge.output.contains("stats: ports=2 rx_frames=") }, "no periodic stats line:\n\(bridge.output)")
        let prom = ControlTests.client(["show", "stats", "--format", "prometheus"], name: ControlTests.name(bridge))
        #expect(prom.ok)
        let samples = prom.output.split(separator: "\n").filter { !$0.hasPrefix("#") }
        let shape = #/^tapbridge_[a-z_]+\{bridge="[^"]+"(,[a-z]+="[^"]*")*\} [0-9.e+-]+$/#
        #expect(!samples.isEmpty && samples.allSatisfy { (try? shape.wholeMatch(in: String($0))) != nil }, "\(prom.output)")
        #expect(samples.contains { $0.hasPrefix("tapbridge_port_rx_frames_total{") && $0.contains("port=\"\(ta)\"") })
        #expect(samples.contains { $0.hasPrefix("tapbridge_fdb_entries{") && $0.hasSuffix(" 2") }, "\(prom.output)")
        #expect(bridge.stop() == 0)
        #expect(bridge.output.contains("stats: ports=2 rx_frames="), "no periodic stats line:\n\(bridge.output)")
    }

    /// `fdb add MAC PORT` pins in the port's own untagged VLAN (access, or a trunk's native
    /// one) rather than VLAN 1, and each refusal names its cause.
    @Test func fdbAddUsesThePortsVLANAndSaysWhyItRefuses() throws {
        let lab = Lab()
        let (x, y, z) = (lab.link("x"), lab.link("y"), lab.link("z"))
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", "\(x),vlan=10", "--port", "\(y),trunk=20:30", "--port", "\(z),trunk=20,native=5", "--name", name])
        #expect(lab.waitForLinks([x, y, z]), "\(bridge.output)")
        let mac = "02:00:00:00:aa:01"
        let access = ControlTests.client(["fdb", "add", mac, x], name: name)
        #expect(access.ok && access.output.contains("in VLAN 10"), "\(access.output)")
        let native = ControlTests.client(["fdb", "add", "02:00:00:00:aa:02", z], name: name)
        #expect(native.ok && native.output.contains("in VLAN 5"), "\(native.output)")
        let trunk = ControlTests.client(["fdb", "add", "02:00:00:00:aa:03", y], name: name)
        #expect(!trunk.ok && trunk.output.contains("trunk without a native VLAN: give --vlan N"), "\(trunk.output)")
        let wrong = ControlTests.client(["fdb", "add", "02:00:00:00:aa:03", y, "--vlan", "40"], name: name)
        #expect(!wrong.ok && wrong.output.contains("does not carry VLAN 40"), "\(wrong.output)")
        let tagged = ControlTests.client(["fdb", "add", "02:00:00:00:aa:03", y, "--vlan", "30"], name: name)
        #expect(tagged.ok && tagged.output.contains("in VLAN 30"), "\(tagged.output)")
        let entries = try ControlTests.decode([FDBReport].self, ControlTests.client(["show", "fdb", "--json"], name: name))
        // (the TAPs' own frames in the root namespace are learned too: only the pinned entries count)
        #expect(Set(entries.filter(\.static).map { "\($0.mac)@\($0.vlan)" }) == ["\(mac)@10", "02:00:00:00:aa:02@5", "02:00:00:00:aa:03@30"], "\(entries)")
        let removed = ControlTests.client(["fdb", "del", mac, x], name: name)
        #expect(removed.ok && removed.output.contains("removed from \(x) in VLAN 10"), "\(removed.output)")
        #expect(bridge.stop() == 0)
    }

    /// `tapbridge list` shows the running bridges, not a socket file whose bridge is gone.
    @Test func listShowsTheRunningBridges() throws {
        let lab = Lab()
        let (one, two) = (lab.bridgeName(), lab.bridgeName())
        let a = try lab.bridge(["--port", lab.link("a"), "--name", one])
        let b = try lab.bridge(["--port", lab.link("b"), "--port", lab.link("c"), "--name", two])
        let ready = Date().addingTimeInterval(10)
        while !(FileManager.default.fileExists(atPath: "/run/tapbridge/\(one).sock") && FileManager.default.fileExists(atPath: "/run/tapbridge/\(two).sock")),
            Date() < ready { usleep(20_000) }
        usleep(200_000)
        let stale = "/run/tapbridge/\(lab.bridgeName()).sock"
        Host.run(["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.close()", stale])
        defer { unlink(stale) }
        let r = Host.run([Host.binary, "list", "--json"], timeout: 60)
        let bridges = (try? ControlCoding.decoder().decode([StatsReport].self, from: Data(r.output.utf8))) ?? []
        let ports = Dictionary(bridges.map { ($0.name, $0.ports) }, uniquingKeysWith: { x, _ in x })
        #expect(ports[one] == 1 && ports[two] == 2, "tapbridge list: \(r.output.prefix(500))")
        #expect(!bridges.contains { "/run/tapbridge/\($0.name).sock" == stale }, "a dead socket was listed")
        let text = Host.run([Host.binary, "list"], timeout: 60)
        #expect(text.ok && text.output.contains(one) && text.output.contains(two), "\(text.output)")
        #expect(a.stop() == 0 && b.stop() == 0)
    }

    /// Under systemd (`Type=notify`) the bridge says READY=1 once its ports exist and its
    /// control socket answers: the TAPs are there when the notification arrives.
    @Test func readinessIsNotifiedOnceThePortsExist() throws {
        let lab = Lab()
        let notify = lab.temporaryPath("notify.sock")
        let tap = lab.link("a")
        let listener = try lab.background(["/usr/bin/python3", "-c", """
            import os, socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(20)
            print("listening", flush=True)
            msg = s.recv(4096).decode()
            print("got", msg.replace("\\n", " | "), "tap", os.path.exists("/sys/class/net/" + sys.argv[2]), flush=True)
            """, notify, tap])
        let ready = Date().addingTimeInterval(10)
        while !listener.output.contains("listening"), Date() < ready { usleep(20_000) }
        let bridge = try lab.bridge(["--port", tap], environment: ["NOTIFY_SOCKET": notify])
        _ = listener.wait(within: 20)
        #expect(listener.output.contains("got READY=1") && listener.output.contains("tap True"), "\(listener.output)\n\(bridge.output)")
        #expect(bridge.stop() == 0)
    }

    /// `tapbridge wait` returns once a starting bridge answers (its ports exist then), and
    /// gives up with exit 1 when none does.
    @Test func waitReturnsOnceTheBridgeIsReady() throws {
        let lab = Lab()
        let name = lab.bridgeName()
        let tap = lab.link("w")
        let bridge = try lab.background([Host.binary, "--port", tap, "--name", name])
        let wait = Host.run([Host.binary, "wait", "--name", name], timeout: 15)
        #expect(wait.ok && wait.output.contains("bridge \(name) is ready: 1 port(s)"), "\(wait.output)")
        #expect(Host.run(["ip", "link", "show", tap]).ok, "wait returned before the TAP existed")
        #expect(bridge.stop() == 0)
        let none = Host.run([Host.binary, "wait", "--name", lab.bridgeName(), "--timeout", "0.3"])
        #expect(none.status == 1 && none.output.contains("within 0.3 s"), "\(none.output)")
    }

    /// Two bridges started without `--name` on one host (a lab with two segments): the second
    /// takes the next free name and says so, they link through `--remote` and ping, and
    /// `tapbridge show` without `--name` lists them and asks which (with one left, reaches it).
    @Test func twoBridgesWithoutANameBothRunAndLink() throws {
        let lab = Lab()
        let (a, b) = (lab.namespace("a"), lab.namespace("b"))
        let (ta, tb) = (lab.link("a"), lab.link("b"))
        let (p1, p2) = (lab.udpPort(1), lab.udpPort(2))
        let one = try lab.bridge(["--port", ta, "--listen", "127.0.0.1:\(p1)", "--remote", "127.0.0.1:\(p2)"], unnamed: true)
        #expect(lab.waitForLinks([ta]), "\(one.output)")
        let ready = Date().addingTimeInterval(10)
        while !one.output.contains("control socket"), Date() < ready { usleep(20_000) }
        let two = try lab.bridge(["--port", tb, "--listen", "127.0.0.1:\(p2)", "--remote", "127.0.0.1:\(p1)"], unnamed: true)
        #expect(lab.waitForLinks([tb]), "\(two.output)")
        lab.place(ta, in: a, address: "10.77.0.1/24")
        lab.place(tb, in: b, address: "10.77.0.2/24")
        #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(one.output)\n\(two.output)")
        #expect(two.output.contains("this one is tapbridge-2"), "the second bridge did not say its name:\n\(two.output)")
        // two running, no --name: which one? The answer lists them
        let show = Host.run([Host.binary, "show", "ports", "--json"])
        let listed = show.output.components(separatedBy: "running: ").last?.components(separatedBy: " (give --name)").first?.components(separatedBy: ", ") ?? []
        #expect(!show.ok && listed.contains("tapbridge") && listed.contains("tapbridge-2"), "show ports without --name: \(show.output.prefix(300))")
        let second = Host.run([Host.binary, "show", "ports", "--json", "--name", "tapbridge-2"])
        #expect(second.ok && second.output.contains(tb), "\(second.output.prefix(300))")
        #expect(one.stop() == 0)
        // one left: a bare `show` reaches it, whatever its name
        let bare = Host.run([Host.binary, "show", "ports", "--json"])
        #expect(bare.ok && bare.output.contains(tb), "\(bare.output)")
        #expect(two.stop() == 0)
    }

    /// Reading and changing are separate rights: --control-group may show, only
    /// --control-admin-group (and root) may change; whoever else can connect may do nothing.
    /// An interface's MTU set by `mtu=` is put back when its port goes, and at exit.
    @Test func theControlGroupMayOnlyShowAndTheAdminGroupMayChange() throws {
        let lab = Lab()
        let (readers, admins) = ("tbr\(lab.tag)", "tba\(lab.tag)")
        for g in [readers, admins] { try #require(Host.run(["groupadd", g]).ok, "groupadd \(g)") }
        defer { for g in [readers, admins] { Host.run(["groupdel", g]) } }
        func gid(_ group: String) -> String { Host.run(["getent", "group", group]).output.split(separator: ":").dropFirst(2).first.map(String.init) ?? "" }
        /// Runs the client as nobody (uid 65534) with `group` as its only group.
        func client(_ group: String?, _ args: [String], name: String) -> Host.Result {
            let g = group.map(gid) ?? "65534"
            return Host.run(["setpriv", "--reuid=65534", "--regid=\(g)", "--groups=\(g)", Host.binary] + args + ["--name", name])
        }
        let (vh, vk) = (lab.link("h"), lab.link("k"))
        #expect(Host.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vk]).ok)
        let name = lab.bridgeName()
        let bridge = try lab.bridge(["--port", lab.link("t"), "--control-group", readers, "--control-admin-group", admins, "--name", name])
        #expect(Lab.eventually { Host.run([Host.binary, "show", "ports", "--name", name]).ok }, "\(bridge.output)")

        let show = client(readers, ["show", "ports"], name: name)
        #expect(show.ok, "a reader cannot show: \(show.output)")
        for change in [["port", "add", "\(vk),mode=packet"], ["fdb", "flush"], ["port", "del", lab.link("t")]] {
            let r = client(readers, change, name: name)
            #expect(!r.ok && r.output.contains("permission denied") && r.output.contains("changes the bridge"), "reader \(change): \(r.output)")
        }
        let stranger = client(nil, ["show", "ports"], name: name)
        #expect(!stranger.ok && stranger.output.contains("permission denied"), "nobody in neither group: \(stranger.output)")
        // list: a bridge this user may not ask is still said to run (it once said "no bridge is
        // running"); as root, --json names each bridge's control socket as the text does
        let list = Host.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Host.binary, "list"])
        #expect(list.output.contains("that you may not ask (permission denied)") && list.output.contains("/run/tapbridge/\(name).sock"), "list as nobody: \(list.output)")
        let json = Host.run([Host.binary, "list", "--json"])
        let listed = (try? JSONSerialization.jsonObject(with: Data(json.output.utf8))) as? [[String: Any]] ?? []
        #expect(listed.contains { $0["name"] as? String == name && $0["control"] as? String == "/run/tapbridge/\(name).sock" }, "list --json: \(json.output.prefix(400))")
        #expect(OffloadTests.ports(lab, name).count == 1)

        // an admin adds the veth with another MTU and removes it: the MTU is back
        let add = client(admins, ["port", "add", "\(vk),mode=packet,mtu=1400"], name: name)
        #expect(add.ok, "an admin cannot add a port: \(add.output)")
        #expect(Host.run(["cat", "/sys/class/net/\(vk)/mtu"]).output.hasPrefix("1400"))
        let del = client(admins, ["port", "del", vk], name: name)
        #expect(del.ok, "\(del.output)")
        #expect(Lab.eventually { Host.run(["cat", "/sys/class/net/\(vk)/mtu"]).output.hasPrefix("1500") }, "the MTU was not put back after port del")
        #expect(bridge.stop() == 0)

        // set at start, put back at exit
        let second = try lab.bridge(["--port", "\(vk),mode=packet,mtu=1280", "--name", lab.bridgeName()])
        #expect(Lab.eventually { Host.run(["cat", "/sys/class/net/\(vk)/mtu"]).output.hasPrefix("1280") }, "\(second.output)")
        #expect(second.stop() == 0)
        #expect(Host.run(["cat", "/sys/class/net/\(vk)/mtu"]).output.hasPrefix("1500"), "the MTU was not put back at exit")
    }

    /// Bridges without --name started at the same instant each claim their own name (the free
    /// name was once chosen, then bound: of 4, 2 survived): five rounds of four, all up, four
    /// names, each answering on its control socket; then two with one --name at once: one
    /// runs, the other is refused in one line.
    @Test func bridgesStartedAtOnceAllComeUp() throws {
        for round in 1...5 {
            let lab = Lab()
            let taps = (1...4).map { lab.link("r\($0)") }
            let bridges = try taps.map { try lab.bridge(["--port", $0], unnamed: true) }
            #expect(lab.waitForLinks(taps), "round \(round): \(bridges.map(\.output))")
            let names = bridges.compactMap { b -> String? in
                var name: String? = nil
                _ = Lab.eventually { name = b.output.components(separatedBy: "control socket /run/tapbridge/").dropFirst().first?.components(separatedBy: ".sock").first; return name != nil }
                return name
            }
            let up = bridges.filter(\.isRunning).count
            #expect(up == 4, "round \(round): \(up) of 4 up:\n\(bridges.map(\.output).joined(separator: "\n"))")
            #expect(Set(names).count == 4, "round \(round): names \(names), want four different ones")
            for name in names {
                let r = Host.run([Host.binary, "show", "ports", "--json", "--name", name])
                #expect(r.ok, "round \(round): \(name) does not answer: \(r.output.prefix(200))")
            }
            for b in bridges { #expect(b.stop() == 0) }
        }
        let lab = Lab()
        let name = lab.bridgeName()
        let (t1, t2) = (lab.link("s1"), lab.link("s2"))
        let pair = [try lab.bridge(["--port", t1, "--name", name]), try lab.bridge(["--port", t2, "--name", name])]
        #expect(Lab.eventually { pair.filter(\.isRunning).count == 1 }, "\(pair.map(\.output))")
        let refused = pair.first { !$0.isRunning }
        #expect(refused?.output.contains("another tapbridge named '\(name)' is running") == true, "\(refused?.output ?? "")")
        for b in pair where b.isRunning { #expect(b.stop() == 0) }
    }
}
}
