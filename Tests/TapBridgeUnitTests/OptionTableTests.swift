import Testing
import TapBridgeCore
@testable import TapBridgeOptions

/// The option table is the only declaration of the run form's options: the command line, the
/// config keys and `--print-config` all come from it. (The binary's `--help` and man page are
/// checked against it by the integration tests and CI.)
@Suite("Option table")
struct OptionTableTests {
    /// A valid value for every option, by name. A new option without one fails
    /// `everyOptionHasASample`, so it cannot escape the round trip below.
    static let samples: [String: [String]] = [
        "port": ["tap0", "tap1,vlan=10,mtu=1400,multicast=flood", "tap2,trunk=10:20,native=1,offload=off", "vm2,stream=unix:/run/lab/vm2.sock"], "offload": ["off"],
        "stream-listen": ["unix:/run/lab/vm.sock,vlan=10,max=8", "5555"], "stream-group": ["kvm"], "user": ["nobody"],
        "remote": ["127.0.0.1:4789,vni=42", "[::1]:5555,encap=raw,name=vm1"], "listen": ["127.0.0.1:4789"], "encap": ["raw"], "vni": ["7"],
        "accept-peers": ["true"], "key-file": ["/etc/tapbridge/lab.key"], "max-peers": ["9"], "peer-timeout": ["12.5"], "path-mtu-expiry": ["30"], "no-split-horizon": ["true"],
        "ageing": ["120"], "max-macs": ["1024"], "max-macs-per-port": ["16"], "move-hold-down": ["2"], "hub": ["true"], "loop-protect": ["off"], "seed": ["42"],
        "forward-link-local": ["true"], "no-multicast-snooping": ["true"], "multicast-querier": ["true"], "mirror": ["/tmp/x.pcap"], "mirror-filter": ["arp or icmp"], "mirror-port": ["tap0", "tap1"],
        "mirror-egress": ["true"], "mirror-iface": ["dummy0"], "mirror-rotate": ["10M,3"], "mirror-format": ["pcap"], "snaplen": ["128"], "name": ["lab"],
        "control": ["/tmp/lab.sock"], "control-group": ["netdev"], "control-admin-group": ["sudo"], "stats-interval": ["60"], "busy-poll": ["50ms"], "no-io-uring": ["true"], "log-level": ["debug"],
        "config": [], "print-config": [],
    ]

    @Test func everyOptionHasASample() {
        #expect(Set(Self.samples.keys) == Set(OptionTable.all.map(\.name)))
        let names = OptionTable.all.flatMap { [$0.name] + $0.aliases }
        #expect(Set(names).count == names.count, "a long name declared twice")
    }

    /// Every key in a file, the same words on the command line: the same settings, and the
    /// printed configuration is a file that reads back to itself.
    @Test func aConfigFileUsingEveryKeyRoundTrips() throws {
        var yaml = ""
        var argv: [String] = []
        for d in OptionTable.all where !d.commandLineOnly {
            let values = Self.samples[d.name] ?? []
            switch d.arity {
            case .flag:
                yaml += "\(d.name): \(values[0])\n"
                argv.append("--\(d.name)")
            case .value:
                yaml += "\(d.name): \"\(values[0])\"\n"
                argv += ["--\(d.name)", values[0]]
            case .list:
                yaml += "\(d.name):\n" + values.map { "  - \"\($0)\"\n" }.joined()
                argv += values.flatMap { ["--\(d.name)", $0] }
            }
        }
        let fromFile = try settings(fromYAML: yaml)
        let fromFlags = try settings(argv)
        let printed = OptionParser.yaml(fromFile)
        #expect(printed == OptionParser.yaml(fromFlags), "file:\n\(printed)\nflags:\n\(OptionParser.yaml(fromFlags))")
        #expect(OptionParser.yaml(try settings(fromYAML: printed)) == printed)
        for d in OptionTable.all where !d.commandLineOnly {
            #expect(printed.contains("\n\(d.name):") || printed.hasPrefix("\(d.name):"), "--print-config lacks \(d.name)")
        }
    }

    @Test func theCommandLineWinsListsIncluded() throws {
        let file = "port: [a, b]\nageing: 120\nname: lab\n"
        let s = try settings(fromYAML: file, then: ["--port", "c", "--ageing", "60"])
        #expect(s.ports.map(\.text) == ["c"] && s.ageing == 60 && s.name == "lab")
        let kept = try settings(fromYAML: file, then: ["--ageing", "60"])
        #expect(kept.ports.map(\.text) == ["a", "b"])
    }

    @Test(arguments: [
        ("ageing: soon\n", ":1: 'ageing' must be a number, got 'soon'"),
        ("ports: [a]\nageing: 0\n", ":2: 'ageing' must be more than 0 and at most 1000000 seconds, got 0"),
        ("port: [a]\nvni: 99999999\n", ":2: 'vni' must be 0-16777215, got 99999999"),
        ("port:\n  - a\n  - b,vlan=0\n", ":3: 'port' 'b,vlan=0': vlan must be 1-4094"),
        ("max-macs: 0\n", ":1: 'max-macs' must be at least 1, got 0"),
        ("print-config: true\n", ":1: 'print-config' is for the command line only"),
        ("ageng: 5\n", ":1: unknown key 'ageng' (did you mean 'ageing'?"),
        ("prot: [a]\n", ":1: unknown key 'prot' (did you mean 'port'?"),
        ("ports: [a\nageing: 5\n", ":2: not valid YAML: did not find expected ',' or ']' at column 7 (while parsing a flow sequence at line 1)"),
        ("hub: maybe\n", ":1: 'hub' must be true or false, got 'maybe'"),
        ("ageing: [1, 2]\n", ":1: 'ageing' must be a single value, got a list"),
    ])
    func configErrorsNameTheFileLineAndKey(_ yaml: String, _ message: String) {
        #expect(throws: OptionParser.Failure.self) { try settings(fromYAML: yaml) }
        do {
            _ = try settings(fromYAML: yaml)
        } catch {
            #expect(error.message.hasPrefix("config test.yaml\(message)"), "got: \(error.message)")
            #expect(!error.message.contains("\n") && error.message.utf8.count < 300, "one short line, got: \(error.message)")
        }
    }

    @Test(arguments: [
        (["--bogus"], "Unknown option '--bogus'"),
        (["--agein", "5"], "(did you mean '--ageing'?)"),
        (["--ageing"], "--ageing needs a value (<seconds>)"),
        (["--hub=yes"], "--hub takes no value"),
        (["--aging", "-1"], "--aging must be more than 0"),
        (["stray"], "unexpected argument 'stray'"),
        (["--port", "a", "--remote", "127.0.0.1:4789,name=a"], "port a: given twice"),
        (["--mirror-filter", "icmp", "--port", "a"], "--mirror-filter needs --mirror PATH or --mirror-iface IFACE"),
        (["--mirror", "-", "--mirror-rotate", "1M"], "--mirror-rotate needs --mirror with a file path"),
        (["--mirror-rotate", "12q", "--mirror", "/tmp/x"], "--mirror-rotate '12q': expected SIZE[,COUNT]"),
        (["--mirror-rotate", "8589934592G", "--mirror", "/tmp/x"], "--mirror-rotate '8589934592G': expected SIZE[,COUNT] with SIZE from 1k to 1024G"),
        (["--log-level", "loud"], "--log-level must be one of trace, debug"),
        (["--name", "a/b"], "--name must be 1-64 letters"),
        (["--mirror-iface", "abcdefghijklmnopq", "--mirror", "/tmp/x"], "--mirror-iface interface name"),
        (["--accept-peers"], "--accept-peers needs --listen"),
        (["--busy-poll", "50"], "--busy-poll must be a duration such as 200us, 50ms or 1s (at most 60s), or 0, got 50"),
        (["--busy-poll", "2min"], "--busy-poll must be a duration"),
        (["--busy-poll", "61s"], "--busy-poll must be a duration"),
    ])
    func commandLineErrorsSayWhatIsWrong(_ argv: [String], _ message: String) {
        do {
            _ = try settings(argv)
            Issue.record("\(argv) parsed")
        } catch {
            #expect(error.message.contains(message), "got: \(error.message)")
        }
    }

    @Test func helpAndVersionAreNotRuns() throws {
        #expect(try { if case .help = try OptionParser.parse(["--port", "a", "-h"]) { true } else { false } }())
        #expect(try { if case .version = try OptionParser.parse(["--version"]) { true } else { false } }())
        let help = OptionParser.help(abstract: "A", discussion: "B", usage: ["tapbridge"])
        for d in OptionTable.all { #expect(help.contains(d.usage), "--help lacks \(d.usage)") }
    }

    @Test func twentyThousandPortsParseOnceEach() throws {
        let s = try settings((0..<20_000).flatMap { ["--port", "p\($0)"] })
        #expect(s.ports.count == 20_000 && s.ports.last?.value.name == "p19999")
    }

    /// A sealed remote needs this host's key (key= or --key-file) and the peer's (peer=); key=,
    /// peer= or psk= on a remote that is not sealed, a peer= that is no public key (or a v1
    /// key), or --accept-peers sealed is refused before anything starts.
    static let peerKey = "7+Rhs1Gm3iY7q9HN0mQH5Uu4xKZ4Bz0fKqf/0n4Qmk0="
    @Test(arguments: [
        (["--remote", "127.0.0.1:4789,encap=sealed,peer=\(peerKey)"], "encap=sealed needs this host's key"),
        (["--encap", "sealed", "--remote", "127.0.0.1:4789,peer=\(peerKey)"], "encap=sealed needs this host's key"),
        (["--remote", "127.0.0.1:4789,encap=sealed,key=/k"], "encap=sealed needs peer=PUBKEY"),
        (["--remote", "127.0.0.1:4789,key=/k"], "key= is for encap=sealed"),
        (["--remote", "127.0.0.1:4789,peer=\(peerKey)"], "peer= is for encap=sealed"),
        (["--remote", "127.0.0.1:4789,encap=sealed,key=/k,peer=abc"], "peer= must be 32 bytes in base64"),
        (["--remote", "127.0.0.1:4789,encap=sealed,key=/k,peer=\(String(repeating: "5a", count: 32))"], "sealed v1 pre-shared key"),
        (["--encap", "sealed", "--listen", "4789", "--accept-peers"], "--accept-peers cannot admit encap=sealed peers"),
    ])
    func sealedRemotesNeedTheirKeys(_ argv: [String], _ message: String) {
        do {
            _ = try settings(argv)
            Issue.record("\(argv) was taken")
        } catch {
            #expect(error.message.contains(message), "\(error.message)")
        }
        #expect((try? settings(["--encap", "sealed", "--key-file", "/k", "--remote", "127.0.0.1:4789,peer=\(Self.peerKey)"])) != nil)
        #expect((try? settings(["--remote", "127.0.0.1:4789,encap=sealed,key=/k,peer=\(Self.peerKey),psk=/p"])) != nil)
    }

    // helpers

    /// A `$` in a value prints as `$$` (the config file's escape), so the printed file reads
    /// back to the same settings (fuzz-specs found the `$` printed alone).
    @Test func aDollarInAValuePrintsBackToItself() throws {
        let s = try settings(["--port", "a$b"])
        let yaml = OptionParser.yaml(s)
        #expect(yaml.contains("a$$b"), "\(yaml)")
        let again = try settings(fromYAML: yaml)
        #expect(again.ports.map(\.value.name) == ["a$b"] && OptionParser.yaml(again) == yaml, "\(yaml)")
    }

    /// An empty value is refused, given on the command line, as a YAML empty string or null, or
    /// made empty by `${NAME:-}`: fuzz-specs found `stream-group: ${0GROUP:-}` taken as "",
    /// which --print-config wrote as `stream-group: ""`, which did not parse back.
    @Test(arguments: ["\"\"", "", "${TAPBRIDGE_TEST_NEVER_SET:-}"])
    func anEmptyValueIsRefused(_ value: String) throws {
        let why = "'stream-group' needs a value, got an empty one"
        let error = #expect(throws: OptionParser.Failure.self, "\(value)") {
            _ = try settings(fromYAML: "stream-listen: unix:/tmp/t.sock\nstream-group: \(value)\n")
        }
        #expect(error?.message.contains(why) == true, "\(String(describing: error?.message))")
        #expect(throws: OptionParser.Failure.self) { _ = try settings(["--stream-listen", "unix:/tmp/t.sock", "--stream-group", ""]) }
    }

    /// --busy-poll takes what link emulation's durations take, and --print-config writes it
    /// back in a form that parses to the same value.
    @Test(arguments: [("200us", "200us"), ("50ms", "50ms"), ("1.5s", "1500ms"), ("2s", "2s"), ("0", nil)] as [(String, String?)])
    func busyPollIsADuration(_ given: String, _ printed: String?) throws {
        let s = try settings(["--busy-poll", given])
        #expect(s.busyPoll == PortSpec.duration(given))
        let yaml = OptionParser.yaml(s)
        if let printed {
            #expect(yaml.contains("busy-poll: \(printed)"), "\(yaml)")
        } else {
            #expect(!yaml.contains("busy-poll"), "\(yaml)")
        }
    }

    func settings(_ argv: [String]) throws(OptionParser.Failure) -> Settings {
        guard case .run(let s) = try OptionParser.parse(argv) else { throw OptionParser.Failure(message: "not a run") }
        return s
    }

    /// The settings of `--config test.yaml` holding `yaml`, then `argv`, as the command reads them.
    /// `${NAME}` and `${NAME:-default}` in a file's values come from the environment, so one
    /// lab file serves several runs side by side; an unset one without a default is an error
    /// naming the line; `$$` is a `$`; comments and keys are left alone.
    @Test func aFileTakesVariablesFromTheEnvironment() throws {
        let yaml = """
            # ${NOT_EXPANDED} in a comment
            name: ${LAB:-lab}
            port:
              - name: ${LAB:-lab}-a
                netns: ${LAB:-lab}-a
                delay: 40ms
              - ${LAB}-b,vlan=${VLAN:-7}
            mirror: /tmp/$$x-${LAB}.pcap
            """
        let entries = try ConfigFile.entries(fromYAML: yaml, file: "lab.yaml", environment: ["LAB": "t1"])
        let values = entries.flatMap { $0.values.map(\.text) }
        #expect(values == ["t1", "t1-a,netns=t1-a,delay=40ms", "t1-b,vlan=7", "/tmp/$x-t1.pcap"], "\(values)")
        #expect {
            try ConfigFile.entries(fromYAML: "name: ${LAB}", file: "lab.yaml", environment: [:])
        } throws: { ($0 as? StartupError)?.message == "config lab.yaml:1: ${LAB} is not set (give it a default: ${LAB:-value})" }
        #expect(throws: StartupError.self) { try ConfigFile.entries(fromYAML: "name: ${A B}", file: "lab.yaml", environment: [:]) }
        #expect((try? ConfigFile.entries(fromYAML: "name: ${LAB:-}x", file: "f", environment: [:]))?.first?.values.first?.text == "x")
    }

    func settings(fromYAML yaml: String, then argv: [String] = []) throws(OptionParser.Failure) -> Settings {
        let outcome = try OptionParser.parse(["--config", "test.yaml"] + argv) { file throws(StartupError) in
            try ConfigFile.entries(fromYAML: yaml, file: file)
        }
        guard case .run(let s) = outcome else { throw OptionParser.Failure(message: "not a run") }
        return s
    }
}
