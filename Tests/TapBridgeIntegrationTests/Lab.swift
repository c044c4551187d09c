import Foundation
import Testing

/// Namespaces and links for one test; names are unique per process and test, and carry the
/// test suite's prefixes (namespaces `tbns-`, links `tt`), so that what a crashed run left
/// behind is removed when the next run starts.
final class Lab {
    nonisolated(unsafe) static var counter = 0

    /// Namespaces and root-namespace links of earlier runs (a run that was killed cannot clean
    /// up after itself); done once, before the first lab of this run.
    static let leftoversRemoved: Void = {
        for line in Host.run(["ip", "netns", "list"]).output.split(separator: "\n") {
            if let name = line.split(separator: " ").first, name.hasPrefix("tbns-") { Host.run(["ip", "netns", "del", String(name)]) }
        }
        // only what a lab makes: "tt" + lower-case letters and digits, a veth or a TAP
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/net")) ?? []
        where name.hasPrefix("tt") && name.count >= 5 && name.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber) }) {
            let isTap = FileManager.default.fileExists(atPath: "/sys/class/net/\(name)/tun_flags")
            if isTap || Host.run(["ip", "-d", "-o", "link", "show", "dev", name]).output.contains(" veth ") {
                Host.run(["ip", "link", "del", name])
            }
        }
    }()
    let tag: String
    private(set) var namespaces: [String] = []
    private(set) var links: [String] = []
    private(set) var processes: [Background] = []

    init() {
        _ = Lab.leftoversRemoved
        Lab.counter += 1
        tag = String(getpid() % 46_656, radix: 36) + String(Lab.counter, radix: 36)
    }

    /// A unique interface name (≤ 15 bytes): "tt" + tag + suffix.
    func link(_ suffix: String) -> String {
        let name = "tt\(tag)\(suffix)"
        precondition(name.utf8.count <= 15, "\(name) too long")
        links.append(name)
        return name
    }

    /// Creates a namespace with loopback up and IPv6 off (the tests speak IPv4; without IPv6
    /// a fresh interface sends no neighbour or multicast-listener frames, so counts are exact).
    func namespace(_ suffix: String) -> String {
        let name = "tbns-\(tag)-\(suffix)"
        Host.run(["ip", "netns", "add", name])
        Host.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])
        Host.run(["ip", "-n", name, "link", "set", "lo", "up"])
        namespaces.append(name)
        return name
    }

    /// A unique namespace name, not created (tapbridge's `netns=` makes it); removed at
    /// teardown if it is left.
    func namespaceName(_ suffix: String) -> String {
        let name = "tbns-\(tag)-\(suffix)"
        namespaces.append(name)
        return name
    }

    /// Whether namespace `name` exists.
    static func namespaceExists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: "/run/netns/\(name)") }

    /// Runs a command inside `ns`.
    @discardableResult
    func exec(_ ns: String, _ args: [String], timeout: Int = 20) -> Host.Result {
        Host.run(["ip", "netns", "exec", ns] + args, timeout: timeout)
    }

    /// A bridge name unique to this lab (its control socket is /run/tapbridge/NAME.sock).
    func bridgeName() -> String {
        bridges += 1
        return "tb-\(tag)-\(bridges)"
    }
    private var bridges = 0

    /// `args` with a unique `--name` unless it has one.
    func named(_ args: [String]) -> [String] { args.contains("--name") ? args : args + ["--name", bridgeName()] }

    /// Starts tapbridge with `args` (and a unique `--name`), in namespace `ns` if given.
    /// `unnamed`: no `--name` is added (the bridge picks its own).
    func bridge(_ args: [String], in ns: String? = nil, environment: [String: String] = [:], unnamed: Bool = false) throws -> Background {
        let args = unnamed ? args : named(args)
        let b = try ns.map { try Background(["ip", "netns", "exec", $0, Host.binary] + args, environment: environment) }
            ?? Background(args, executable: Host.binary, environment: environment)
        processes.append(b)
        return b
    }

    /// A UDP port for this lab's loopback sockets: `base + k`, with `base` picked at random
    /// from 30000-59000 per lab so that concurrent runs do not collide.
    lazy var udpBase = Int.random(in: 3000...5900) * 10
    func udpPort(_ k: Int) -> String { String(udpBase + k) }

    /// Starts a background command (killed at teardown if still running).
    func background(_ args: [String]) throws -> Background {
        let b = try Background(args)
        processes.append(b)
        return b
    }

    /// Starts tcpdump writing `filter`-matching frames of `interface` (in `ns`, or the root
    /// namespace) to `pcap`, and returns once it is listening ("listening on"), at most 10 s.
    func capture(in ns: String?, on interface: String, to pcap: String, filter: String) throws -> Background {
        let prefix = ns.map { ["ip", "netns", "exec", $0] } ?? []
        let tcpdump = try background(prefix + ["tcpdump", "-i", interface, "-n", "-U", "-w", pcap, filter])
        let deadline = Date().addingTimeInterval(10)
        while !tcpdump.output.contains("listening on"), tcpdump.isRunning, Date() < deadline { usleep(20_000) }
        return tcpdump
    }

    /// Waits until `condition` holds, checking every 20 ms, at most `seconds`; whether it did.
    /// Used instead of a fixed sleep wherever the outcome decides a test.
    static func eventually(within seconds: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if condition() { return true }
            if Date() >= deadline { return false }
            usleep(20_000)
        }
    }

    /// Waits until every interface in `names` exists in the root namespace (or in `ns`).
    func waitForLinks(_ names: [String], in ns: String? = nil, within seconds: Double = 10) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        let prefix = ns.map { ["ip", "-n", $0] } ?? ["ip"]
        while Date() < deadline {
            if names.allSatisfy({ Host.run(prefix + ["link", "show", $0]).ok }) { return true }
            usleep(50_000)
        }
        return false
    }

    /// Moves interface `name` (from the root namespace, or from `from`) into `ns`, gives it
    /// `address` (CIDR) and brings it up.
    func place(_ name: String, in ns: String, address: String, from: String? = nil) {
        Host.run((from.map { ["ip", "-n", $0] } ?? ["ip"]) + ["link", "set", name, "netns", ns])
        Host.run(["ip", "-n", ns, "addr", "add", address, "dev", name])
        Host.run(["ip", "-n", ns, "link", "set", name, "up"])
    }

    /// Two namespaces a (10.77.0.1) and b (10.77.0.2) joined by a tapbridge started with
    /// `--port A --port B` plus `extra`; returns once both TAPs are in place.
    func pair(_ extra: [String] = [], launcher: (([String]) throws -> Background)? = nil) throws -> (bridge: Background, a: String, b: String, ta: String, tb: String) {
        let (a, b) = (namespace("a"), namespace("b"))
        let (ta, tb) = (link("a"), link("b"))
        let args = named(["--port", ta, "--port", tb] + extra)
        let bridge = try launcher?(args) ?? self.bridge(args)
        if !waitForLinks([ta, tb]) { Issue.record("TAPs did not appear:\n\(bridge.output)") }
        place(ta, in: a, address: "10.77.0.1/24")
        place(tb, in: b, address: "10.77.0.2/24")
        return (bridge, a, b, ta, tb)
    }

    /// Turns IPv6 on in `ns` (namespaces start with it off) without duplicate address
    /// detection, so addresses are usable at once.
    func enableIPv6(_ ns: String) {
        exec(ns, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                  "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])
    }

    /// Adds `address` (CIDR, IPv4 or IPv6) to `interface` in `ns`; IPv6 without DAD.
    func addAddress(_ address: String, to interface: String, in ns: String) {
        exec(ns, ["ip", "addr", "add", address, "dev", interface] + (address.contains(":") ? ["nodad"] : []))
    }

    /// One iperf3 TCP run (`seconds` long) from `client` to the server at `address` in
    /// `server`; `reverse`: the server sends. Returns the received bit rate (0 when the run
    /// failed) and iperf3's output.
    func iperf(from client: String, to server: String, address: String, reverse: Bool = false, seconds: Int = 1) throws -> (bps: Double, output: String) {
        iperfPort += 1
        let port = String(iperfPort)
        let s = try background(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", port])
        // wait until the server listens (at most 5 s) instead of sleeping a fixed time
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, !exec(server, ["ss", "-Htln", "sport = :\(port)"]).output.contains(port) { usleep(50_000) }
        let r = exec(client, ["iperf3", "-c", address, "-p", port, "-t", String(seconds), "-J"] + (reverse ? ["-R"] : []), timeout: seconds + 15)
        _ = s.wait(within: 3)
        return (r.ok ? KernelTests.DataPlaneTests.receivedBitsPerSecond(r.output) : 0, String(r.output.prefix(600)))
    }
    private var iperfPort = 5400

    /// The checksum and header error counters of `ns` that are not zero (`nstat -az`: TCP, UDP,
    /// UDP6, ICMP, IP header and checksum errors): an empty dictionary is a clean stack.
    /// IP fragments the kernel of `ns` made (IPv4 and IPv6, `nstat` absolute counters).
    func fragmentsCreated(in ns: String) -> Int {
        exec(ns, ["nstat", "-az", "IpFragCreates", "Ip6FragCreates"]).output.split(separator: "\n").reduce(0) { sum, line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            return sum + (f.count >= 2 && f[0].hasSuffix("FragCreates") ? Int(f[1]) ?? 0 : 0)
        }
    }

    func checksumErrors(in ns: String) -> [String: Int] {
        var out: [String: Int] = [:]
        for line in exec(ns, ["nstat", "-az"]).output.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 2, let v = Int(f[1]), v != 0 else { continue }
            let name = String(f[0])
            if name.contains("CsumErr") || name.hasSuffix("InHdrErrors") { out[name] = v }
        }
        return out
    }

    /// A path for a temporary file of this lab (removed at teardown).
    func temporaryPath(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("tb-\(tag)-\(name)").path
        temporaryPaths.append(path)
        return path
    }
    private var temporaryPaths: [String] = []

    /// A sealed host key made by `tapbridge genkey` (a temporary file of this lab) and its
    /// public key as `tapbridge pubkey` prints it.
    func sealedKey(_ name: String) throws -> (path: String, publicKey: String) {
        let path = temporaryPath(name + ".key")
        let made = Host.run([Host.binary, "genkey", path])
        try #require(made.ok, "genkey: \(made.output)")
        let pub = Host.run(["sh", "-c", "\"$0\" pubkey < \"$1\"", Host.binary, path])
        let key = pub.output.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(pub.ok && key.count == 44, "pubkey: \(pub.output)")
        return (path, key)
    }

    /// A veth from namespace `t` (10.88.0.1/24) to namespace `u`, where nothing answers: what
    /// is sent to 10.88.0.99 there waits for an ARP answer that never comes.
    func silentLink(from t: String, to u: String) {
        let (d, e) = (link("d"), link("e"))
        #expect(Host.run(["ip", "link", "add", d, "netns", t, "type", "veth", "peer", "name", e, "netns", u]).ok)
        exec(t, ["ip", "addr", "add", "10.88.0.1/24", "dev", d])
        exec(t, ["ip", "link", "set", d, "up"])
        exec(u, ["ip", "link", "set", e, "up"])
    }

    /// `count` pings from `ns` to `address`, 100 ms apart: each reply's round trip (ms).
    func roundTrips(from ns: String, to address: String, count: Int) -> (rtts: [Double], output: String) {
        let r = exec(ns, ["ping", "-c", String(count), "-i", "0.1", "-W", "2", address], timeout: count / 10 + 15)
        let rtts = r.output.split(separator: "\n").compactMap { line -> Double? in
            guard let at = line.range(of: "time=") else { return nil }
            return Double(line[at.upperBound...].prefix { $0.isNumber || $0 == "." })
        }
        return (rtts, r.output)
    }

    /// The "N packets transmitted" figure of ping's summary (0 if absent).
    static func transmitted(_ pingOutput: String) -> Int {
        pingOutput.split(separator: "\n").first { $0.contains("packets transmitted") }?
            .split(separator: " ").first.flatMap { Int($0) } ?? 0
    }

    /// Pings from `ns` to `address`; returns (sent, received).
    func ping(from ns: String, _ address: String, count: Int = 3, interval: String = "0.2") -> (sent: Int, received: Int, output: String) {
        let r = exec(ns, ["ping", "-c", String(count), "-i", interval, "-W", "2", address], timeout: count + 10)
        // "3 packets transmitted, 3 received, 0% packet loss"
        let numbers = r.output.split(separator: "\n").first { $0.contains("packets transmitted") }?
            .split(separator: " ").compactMap { Int($0) } ?? []
        return (numbers.first ?? 0, numbers.count > 1 ? numbers[1] : 0, r.output)
    }

    /// A running bridge's counters for port `name`, from `show ports --json`: `rx_frames`,
    /// `rx_bytes`, `tx_frames`, `tx_bytes`, ..., and one entry per drop reason that happened.
    static func portCounters(_ bridge: Background, port name: String) -> [String: Int] {
        let r = Host.run([Host.binary, "show", "ports", "--json", "--name", KernelTests.ControlTests.name(bridge)])
        let list = (try? JSONSerialization.jsonObject(with: Data(r.output.utf8))) as? [[String: Any]] ?? []
        guard let port = list.first(where: { $0["name"] as? String == name }) else { return [:] }
        var out: [String: Int] = [:]
        for (k, v) in port { if let n = v as? Int { out[k] = n } }
        for (k, v) in port["drops"] as? [String: Int] ?? [:] { out[k] = v }
        return out
    }

    /// A running bridge's `show stats --json` section (`udp`, `fdb`, `mirror`).
    static func statsSection(_ bridge: Background, _ section: String) -> [String: Int] {
        let r = Host.run([Host.binary, "show", "stats", "--json", "--name", KernelTests.ControlTests.name(bridge)])
        let stats = (try? JSONSerialization.jsonObject(with: Data(r.output.utf8))) as? [String: Any] ?? [:]
        return (stats[section] as? [String: Any] ?? [:]).compactMapValues { $0 as? Int }
    }

    /// The counters of a section (`mirror`, `fdb`, `udp`, `port NAME`) tapbridge logged at
    /// exit: for what only exists once the bridge stopped (the mirror's final accounting after
    /// it closed); running bridges are read through `show ... --json`.
    static func counters(in output: String, section: String) -> [String: Int] {
        guard let line = output.split(separator: "\n").last(where: { $0.contains("counters \(section): ") }) else { return [:] }
        var out: [String: Int] = [:]
        for w in line.split(separator: " ") {
            let kv = w.split(separator: "=")
            if kv.count == 2, let n = Int(kv[1]) { out[String(kv[0])] = n }
        }
        return out
    }

    deinit {
        // SIGTERM first (a bridge then removes its TAPs and control socket), SIGKILL after 2 s
        for p in processes where p.isRunning { _ = p.stop(signal: SIGTERM, within: 2) }
        for n in 0...bridges { unlink("/run/tapbridge/tb-\(tag)-\(n).sock") }
        for path in temporaryPaths {
            for suffix in ["", ".1", ".2", ".3", ".4", ".5"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        }
        for ns in namespaces { Host.run(["ip", "netns", "del", ns]) }
        for l in links where Host.run(["ip", "link", "show", l]).ok { Host.run(["ip", "link", "del", l]) }
    }
}
