import ArgumentParser
import Foundation
import TapBridgeCore
import TapBridgeControl
import TapBridgeDaemon
import TapBridgeDevices
import TapBridgeOptions

#if canImport(Glibc)
import Glibc
#endif

/// `tapbridge show|fdb|port ...`: clients of a running bridge's control socket.
struct ControlCommand: ParsableCommand {
    static let names: Set<String> = ["show", "fdb", "port", "remote", "list", "wait", "genkey", "pubkey"]

    /// Why `arguments` name no subcommand of a group (`show prots`), or nil. The argument
    /// parser would report the first option it cannot place instead (`Unknown option '--name'`).
    static func unknownSubcommand(_ arguments: [String]) -> String? {
        func name(_ command: any ParsableCommand.Type) -> String {
            command.configuration.commandName ?? String(describing: command).lowercased()
        }
        guard arguments.count >= 2, let group = configuration.subcommands.first(where: { name($0) == arguments[0] }) else { return nil }
        let known = group.configuration.subcommands.map { name($0) }
        let word = arguments[1]
        guard !known.isEmpty, !word.hasPrefix("-"), word != "help", !known.contains(word) else { return nil }
        return "unknown command 'tapbridge \(arguments[0]) \(word)' (known: \(known.map { "\(arguments[0]) \($0)" }.joined(separator: ", ")))"
    }
    static let configuration = CommandConfiguration(
        commandName: "tapbridge",
        abstract: "Inspect and steer a running tapbridge through its control socket.",
        subcommands: [Show.self, FDB.self, Port.self, Remote.self, List.self, Wait.self, Genkey.self, Pubkey.self])
}

/// `tapbridge genkey`: this host's private key for sealed remotes.
struct Genkey: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a fresh private key for encap=sealed (base64, readable by its owner alone: mode 0600).",
        discussion: """
            tapbridge genkey PATH creates the file (mode 0600; an existing file or a symbolic link is never written \
            through), or tapbridge genkey > PATH (standard output redirected to a file: the file is made mode 0600). \
            Each host has its own key: give the others its public key (tapbridge pubkey < PATH), never the file. \
            A pre-shared key for psk= is made the same way (any 32 random bytes), and copied to both ends. \
            See Docs/Security.md.
            """)
    @Argument(help: ArgumentHelp("The key file to create (default: standard output).", valueName: "path")) var path: String?

    func run() throws {
        let key = SealedIdentity.generate() + "\n"
        guard let path else {
            var st = stat()
            if fstat(1, &st) == 0, st.st_mode & S_IFMT == S_IFREG, fchmod(1, 0o600) != 0 {
                throw ValidationError("cannot make the key file readable by its owner alone: \(String(cString: strerror(errno)))")
            }
            print(key, terminator: "")
            return
        }
        do { try SealedKeyFile.create(path, holding: key) } catch { throw ValidationError(error.message) }
    }
}

/// `tapbridge pubkey`: the public key of a private key, for the peers' peer=.
struct Pubkey: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the public key of the private key on standard input (tapbridge pubkey < PATH), for the peers' peer=.",
        discussion: "As wg pubkey: the 32-byte public key in base64. It may be shown to anyone; the private key file never leaves its host.")

    func run() throws {
        let text = String(decoding: FileHandle.standardInput.readDataToEndOfFile().prefix(4096), as: UTF8.self)
        do { print(try SealedIdentity.publicKey(ofKeyText: text)) } catch { throw ValidationError(error.message) }
    }
}

/// `tapbridge list`: the bridges running on this host (their sockets in /run/tapbridge).
struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the bridges running on this host: name, ports, uptime, control socket.")
    @Option(help: ArgumentHelp("Where the control sockets are.", valueName: "dir")) var directory = "/run/tapbridge"
    @Flag(help: "JSON: an array of the bridges' show stats answers.") var json = false

    func run() throws {
        var denied: [String] = []
        let running = Self.runningBridges(in: directory, denied: &denied)
        // bridges this user may not ask still run: say so (on standard error with --json)
        let note = denied.isEmpty ? nil : "\(denied.count) more bridge(s) run here that you may not ask (permission denied): \(denied.joined(separator: ", ")); run as root, or as a member of their --control-group"
        if json {
            if let note { FileHandle.standardError.write(Data(("tapbridge: " + note + "\n").utf8)) }
            return try ControlOutput.printJSON(running.map { var s = $0.stats; s.control = $0.path; return s })
        }
        if running.isEmpty {
            print(note ?? "no bridge is running (no control socket answers in \(directory))")
            return
        }
        print(table(["NAME", "PORTS", "UP", "CONTROL"], running.map { [$0.stats.name, "\($0.stats.ports)", "\(Int($0.stats.uptimeSeconds)) s", $0.path] }))
        if let note { print(note) }
    }

    /// The bridges whose control sockets in `directory` answer `show stats`, by socket name (a
    /// socket file whose bridge is gone does not answer, and is left out).
    static func runningBridges(in directory: String = "/run/tapbridge") -> [(path: String, stats: StatsReport)] {
        var denied: [String] = []
        return runningBridges(in: directory, denied: &denied)
    }

    /// The same; `denied` gets the sockets this user may not connect to or ask (a bridge runs
    /// behind each, but whose is not for us to see).
    static func runningBridges(in directory: String, denied: inout [String]) -> [(path: String, stats: StatsReport)] {
        var out: [(path: String, stats: StatsReport)] = []
        for file in ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter({ $0.hasSuffix(".sock") }).sorted() {
            let path = "\(directory)/\(file)"
            do {
                let r = try ControlClient.exchange(ControlRequest(command: "show-stats"), at: path)
                if let stats = r.stats {
                    out.append((path, stats))
                } else if r.error?.hasPrefix("permission denied") == true {
                    denied.append(path)
                }
            } catch {
                if error.message.hasPrefix("no permission") { denied.append(path) }
            }
        }
        return out
    }
}

/// `tapbridge wait`: returns once a bridge that is starting answers on its control socket,
/// which it does only when every port exists: `tapbridge --port a --port b & tapbridge wait`.
struct Wait: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until a starting bridge is ready (every port exists, the control socket answers); exit 1 after --timeout.")
    @Option(name: .customLong("name"), help: ArgumentHelp("The bridge's --name (default: tapbridge).", valueName: "name")) var name: String?
    @Option(name: .customLong("control"), help: ArgumentHelp("The bridge's control socket (default /run/tapbridge/NAME.sock).", valueName: "path"))
    var control: String?
    @Option(help: ArgumentHelp("Seconds to wait at most.", valueName: "seconds")) var timeout: Double = 10

    func validate() throws {
        guard timeout.isFinite, timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be more than 0 and at most 3600 seconds, got \(timeout)") }
    }

    func run() throws {
        let path = control ?? ControlCoding.defaultPath(name: name ?? "tapbridge")
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let stats = try? ControlClient.exchange(ControlRequest(command: "show-stats"), at: path).stats {
                return print("bridge \(stats.name) is ready: \(stats.ports) port(s)")
            }
            if Date() >= deadline { throw StartupFailure(message: "no bridge answered at \(path) within \(OptionTable.plain(timeout)) s") }
            usleep(20_000)
        }
    }
}

/// Where the bridge is: `--name` or `--control`.
struct Target: ParsableArguments {
    @Option(name: .customLong("name"), help: ArgumentHelp("The bridge's --name (default: tapbridge; `tapbridge list` shows the running ones).", valueName: "name"))
    var name: String?

    @Option(name: .customLong("control"), help: ArgumentHelp("The bridge's control socket (default /run/tapbridge/NAME.sock).", valueName: "path"))
    var control: String?

    /// The socket to ask: `--control`, `--name`'s, or without either the one bridge running
    /// here (`tapbridge` when none runs, for the usual error). Several running: which one?
    func path() throws -> String {
        if let control { return control }
        if let name { return ControlCoding.defaultPath(name: name) }
        let running = List.runningBridges()
        if running.count > 1 {
            throw StartupFailure(message: "\(running.count) bridges are running: \(running.map(\.stats.name).joined(separator: ", ")) (give --name)")
        }
        return running.first?.path ?? ControlCoding.defaultPath(name: "tapbridge")
    }

    /// Sends `request`, returns the response; a failure response or an unreachable bridge is
    /// a one-line error.
    func send(_ request: ControlRequest) throws -> ControlResponse {
        let response: ControlResponse
        let path = try path()
        do {
            response = try ControlClient.exchange(request, at: path)
        } catch {
            throw StartupFailure(message: error.message)
        }
        guard response.ok else { throw StartupFailure(message: response.error ?? "the bridge refused the request") }
        return response
    }
}

/// Output helpers of the control commands.
enum ControlOutput {
    /// Prints a response as stable, pretty JSON.
    static func printJSON<T: Encodable>(_ value: T) throws {
        // Foundation prints an empty object or array over two lines with a blank one between
        let text = String(decoding: try ControlCoding.encoder(pretty: true).encode(value), as: UTF8.self)
        print(text.replacingOccurrences(of: #"\{\n\s*\n\s*\}"#, with: "{}", options: .regularExpression)
            .replacingOccurrences(of: #"\[\n\s*\n\s*\]"#, with: "[]", options: .regularExpression))
    }
}

/// `--json` or `--format text|json` of `show ports` and `show fdb`.
struct TextOrJSON: ParsableArguments {
    @Flag(help: "JSON (same as --format json; schema: Docs/Operations.md).") var json = false
    @Option(help: ArgumentHelp("text or json.", valueName: "format")) var format: String = "text"

    func validate() throws {
        guard ["text", "json"].contains(format) else { throw ValidationError("--format must be text or json, got '\(format)'") }
    }

    var isJSON: Bool { json || format == "json" }
}

/// Left-aligned columns.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = header.indices.map { c in all.map { $0[c].count }.max() ?? 0 }
    return all.map { row in
        row.indices.map { c in c == row.count - 1 ? row[c] : row[c].padding(toLength: widths[c], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a running bridge's ports, MAC table, multicast groups or counters.",
        subcommands: [Ports.self, Table.self, MDB.self, Stats.self])

    struct MDB: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "mdb", abstract: "IGMP/MLD snooping's multicast groups: each group's member ports per VLAN, and the multicast router ports, with the seconds each has left (as bridge mdb show).")
        @OptionGroup var target: Target
        @OptionGroup var output: TextOrJSON

        func run() throws {
            guard let m = try target.send(ControlRequest(command: "show-mdb")).mdb else { throw StartupFailure(message: "no mdb in the answer") }
            if output.isJSON { return try ControlOutput.printJSON(m) }
            guard m.snooping else { return print("multicast snooping is off (--no-multicast-snooping): every multicast frame is flooded") }
            print(m.groups.isEmpty ? "no group has members" : table(["VLAN", "GROUP", "PORT", "EXPIRES"], m.groups.map { ["\($0.vlan)", $0.group, $0.port, "\(Int($0.expiresSeconds.rounded(.up))) s"] }))
            if !m.routers.isEmpty {
                print("")
                print(table(["VLAN", "ROUTER PORT", "EXPIRES"], m.routers.map { ["\($0.vlan)", $0.port, "\(Int($0.expiresSeconds.rounded(.up))) s"] }))
            }
            if m.tableFull { return print("\nthe table is full (\(m.groups.count) groups): every multicast frame is flooded until groups age out") }
            let known = m.queriers.map { "\($0.ip == "ipv6" ? "MLD" : "IGMP") \($0.vlan.map { "in VLAN \($0)" } ?? "(this bridge's)")" }
            print("\nqueriers: " + (known.isEmpty ? "none yet: every multicast frame is flooded" + (m.querier ? " until hosts had 10 s to answer this bridge's first query" : " (--multicast-querier makes this bridge one)") : known.joined(separator: ", ")))
        }
    }

    struct Ports: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ports", abstract: "Each port: name, kind, state, VLANs, rx/tx frames and bytes, drops by reason; the peer of each stream port and datapath=kernel vxlan device; each remote's endpoint, encapsulation, VNI, horizon and path MTU.")
        @OptionGroup var target: Target
        @OptionGroup var output: TextOrJSON

        func run() throws {
            let r = try target.send(ControlRequest(command: "show-ports"))
            let ports = r.ports ?? []
            if output.isJSON { return try ControlOutput.printJSON(ports) }
            print(table(["PORT", "KIND", "STATE", "OFFLOADS", "VLANS", "RX FRAMES", "RX BYTES", "TX FRAMES", "TX BYTES", "DROPS"], ports.map { p in
                [p.name + (p.interface.map { $0 == p.name ? "" : " (now \($0))" } ?? "") + (p.heldBy.map { " (TAP held by \($0))" } ?? ""), p.kind, p.state, p.offloads, p.vlans + (p.learning ? "" : ", no learning") + (p.flooding ? "" : ", no flooding"),
                 "\(p.counters.receivedFrames)", "\(p.counters.receivedBytes)", "\(p.counters.transmittedFrames)", "\(p.counters.transmittedBytes)",
                 p.drops.isEmpty ? "-" : p.drops.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")]
            }))
            let links = ports.compactMap { p in p.link.map { (p.name, $0, p.emulation ?? .init()) } }
            if !links.isEmpty {
                print("")
                let columns = LinkEmulator.Statistics.counters
                print(table(["PORT", "LINK"] + columns.map { $0.name.replacingOccurrences(of: "_", with: " ").uppercased() }, links.map { name, link, stats in
                    [name, link] + columns.map { "\(stats[keyPath: $0.field])" }
                }))
            }
            let streams = ports.compactMap { p in p.peer.map { (p.name, $0) } }
            if !streams.isEmpty {
                print("")
                print(table(["PORT", "PEER"], streams.map { [$0.0, $0.1] }))
            }
            let remotes = ports.compactMap { p in p.remote.map { (p.name, $0) } }
            if !remotes.isEmpty {
                print("")
                print(table(["REMOTE", "ENDPOINT", "ENCAP", "VNI", "HORIZON", "PATH MTU", "FRAGMENTED", "UNREACHABLE", "ADDED"], remotes.map { name, r in
                    [name, r.endpoint, r.encapsulation, r.vni.map(String.init) ?? "-", r.horizon ?? "-", r.pathMtu.map(String.init) ?? "-", r.fragmented.map(String.init) ?? "-",
                     "\(r.unreachable)" + (r.why.map { " (now: \($0))" } ?? ""), r.dynamic ? "accepted (--accept-peers)" : "configured"]
                }))
                let sealed = remotes.filter { $0.1.peerKey != nil }
                if !sealed.isEmpty {
                    print("")
                    let names = sealed[0].1.messages?.keys.sorted() ?? []  // (what the bridge counts, the same for every sealed remote)
                    print(table(["REMOTE", "PEER KEY", "LAST HANDSHAKE"] + names.map { $0.replacingOccurrences(of: "_", with: " ").uppercased() }, sealed.map { name, r in
                        [name, r.peerKey ?? "-", r.lastHandshakeSeconds.map { String(format: "%.0f s ago", $0) } ?? "none yet"] + names.map { "\(r.messages?[$0] ?? 0)" }
                    }))
                }
            }
        }
    }

    struct Table: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "fdb", abstract: "The MAC table: MAC, VLAN, port, age, static or learned.")
        @OptionGroup var target: Target
        @Option(help: ArgumentHelp("Only entries on this port.", valueName: "name")) var port: String?
        @Option(help: ArgumentHelp("Only entries in this VLAN.", valueName: "n")) var vlan: Int?
        @OptionGroup var output: TextOrJSON

        func run() throws {
            // the bridge streams entries in table order: read as they come, in 24 bytes each,
            // and shown by VLAN, then MAC (two million entries in seconds, not minutes)
            let path = try target.path()
            var listing: FDBListing
            do {
                listing = try ControlClient.fdb(ControlRequest(command: "show-fdb", port: port, vlan: vlan), at: path)
            } catch {
                throw StartupFailure(message: error.message)
            }
            listing.sort()
            let write: ([UInt8]) -> Void = { bytes in
                var done = 0
                while done < bytes.count {
                    let n = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress! + done, $0.count - done) }
                    if n < 0, errno == EINTR { continue }
                    if n <= 0 { return }  // (a closed pipe: nothing more to say)
                    done += n
                }
            }
            if output.isJSON { listing.json(write) } else { listing.text(write) }
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stats", abstract: "Bridge-wide counters: MAC table, UDP socket, mirror.")
        @OptionGroup var target: Target
        @Flag(help: "JSON (same as --format json).") var json = false
        @Option(help: ArgumentHelp("text, json, or prometheus (text exposition format for node_exporter's textfile collector; includes the per-port counters).", valueName: "format"))
        var format: String = "text"

        func validate() throws {
            guard ["text", "json", "prometheus"].contains(format) else { throw ValidationError("--format must be text, json or prometheus, got '\(format)'") }
        }

        func run() throws {
            guard let s = try target.send(ControlRequest(command: "show-stats")).stats else { throw StartupFailure(message: "no stats in the answer") }
            if json || format == "json" { return try ControlOutput.printJSON(s) }
            if format == "prometheus" {
                let ports = try target.send(ControlRequest(command: "show-ports")).ports ?? []
                return print(Statistics(stats: s, ports: ports).prometheus, terminator: "")
            }
            print(Statistics(stats: s, ports: []).text)
        }
    }
}

