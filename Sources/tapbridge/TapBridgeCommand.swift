import ArgumentParser
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDaemon
import TapBridgeOptions
import TapBridgePcap

#if canImport(Glibc)
import Glibc
#endif

/// `tapbridge [OPTIONS]`: runs a bridge. Its options are declared once, in `OptionTable`
/// (TapBridgeOptions), which gives this command its parsing, `--help`, config keys,
/// `--print-config` and man page; the control commands (`show`, `fdb`, `port`, `list`) are
/// ArgumentParser commands.
enum TapBridgeCommand {
    static let version = "0.1.0"
    /// The date the man page carries.
    static let date = "November 29, 2026"

    static let abstract = "A userspace Ethernet switch: links TAP devices, existing interfaces and remote peers over UDP into one L2 segment."

    static let discussion = """
            Each --port is a port of a learning switch (MAC table with ageing and a size limit, \
            flooding of unknown/broadcast/multicast, VLAN-aware). A port NAME that does not exist \
            is created as a TAP and removed again on exit; an existing free TAP is attached; an \
            interface that exists but cannot be a TAP here (a VM's tap held by QEMU, a veth, a \
            NIC) is reached through a packet socket. Needs CAP_NET_ADMIN (and CAP_NET_RAW for \
            packet sockets): run as root.

            EXAMPLES
              Link two TAPs (created if missing):
                tapbridge --port tap0 --port tap1
              A two-host lab: each TAP in a namespace of its own, addressed (gone on exit):
                tapbridge --port h1,netns=h1,addr=10.0.0.1/24 --port h2,netns=h2,addr=10.0.0.2/24
                ip netns exec h1 ping 10.0.0.2
              A VM's tap held by QEMU, bridged to a veth, with a 120 s ageing time:
                tapbridge --port vm0 --port veth-host,mode=packet --ageing 120
              Access port in VLAN 10; trunk with VLANs 10, 20 tagged and VLAN 1 untagged:
                tapbridge --port tap0,vlan=10 --port tap1,trunk=10:20,native=1
              Two hosts, one segment (VXLAN, VNI 1, UDP port 4789 on both):
                host1$ tapbridge --port tap0 --remote 192.0.2.2:4789
                host2$ tapbridge --port tap0 --remote 192.0.2.1:4789
              The same across a network you do not own: sealed (encrypted, authenticated), a
              key per host; each host names the other's public key:
                host1$ tapbridge genkey /etc/tapbridge/host.key
                host1$ tapbridge pubkey < /etc/tapbridge/host.key     (give this to host2)
                host1$ tapbridge --port tap0 --key-file /etc/tapbridge/host.key \\
                         --remote 192.0.2.2:4789,encap=sealed,peer=HOST2_PUBKEY
              A QEMU VM with no TAP at all (-netdev dgram speaks raw frames over UDP):
                tapbridge --port tap0 --listen 127.0.0.1:5555 \\
                  --remote 127.0.0.1:5556,encap=raw

            Remotes: VXLAN adds 50 bytes per frame on an IPv4 underlay (8 VXLAN + 8 UDP + 20 IP \
            + 14 inner Ethernet). tapbridge measures each remote's path: a TAP it creates gets \
            the MTU that fits (1450 on a 1500-byte underlay), TCP is cut to fit the path and \
            SYNs crossing a remote get their MSS lowered, so no mtu= is needed and TCP never \
            fragments. VXLAN remotes are a mesh: a frame from one is never forwarded to another \
            (split horizon; horizon= per remote, --no-split-horizon for all); raw remotes (QEMU \
            VMs) reach each other. Add and remove remotes at run time: tapbridge remote add|del. \
            Sealed remotes (tapbridge to tapbridge) add 32 bytes and drop, counted, every \
            datagram that was changed, replayed, sent back or meant for another host (Docs/Security.md).

            Mirroring: --mirror writes what the bridge receives to a pcap file every tool reads; \
            a mirror that cannot keep up (slow reader, full disk) drops and counts copies and \
            never slows forwarding. Watch a lab live: tapbridge --port a --port b --mirror - | \
            tcpdump -n -r -

            Inspect and steer a running bridge through its control socket: tapbridge show \
            ports|fdb|stats, tapbridge fdb add|del|flush, tapbridge port add|del, tapbridge \
            remote add|del (each with --help).

            SIGINT/SIGTERM stop the bridge cleanly (exit 0); SIGHUP is logged and ignored. \
            Logs go to standard error, one line per event, never one per frame at info level.
            """

    static let usage = [
        "tapbridge --port <spec> [--port <spec> ...] [--remote <spec> ...] [<options>]",
        "tapbridge --config <file> [<options>]",
        "tapbridge list | show | fdb | port | remote | wait ...   (each with --help)",
        "tapbridge genkey [<path>] | pubkey < <path>   (a host's key for encap=sealed, and its public key)",
        "tapbridge manual   (this page as a man page: tapbridge manual | man -l -)",
    ]

    static func helpMessage() -> String { OptionParser.help(abstract: abstract, discussion: discussion, usage: usage) }

    static func run(_ settings: Settings) throws {
        if settings.printConfig { return print(OptionParser.yaml(settings)) }
        // Checked here rather than in validate(), so that --print-config prints an empty bridge.
        if settings.ports.isEmpty && settings.remotes.isEmpty && !settings.acceptPeers && settings.streamListen.isEmpty {
            throw OptionParser.Failure(message: "give at least one --port, --remote or --stream-listen (e.g. --port tap0 --port tap1)")
        }
        let level = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // every line names the bridge: two bridges' logs stay apart
        // without --name (and --control), a second bridge on this host takes the next free name
        // (the free name is claimed as it is chosen: bridges started at once get one each)
        let daemon: BridgeDaemon
        do {
            let free = settings.name == nil && settings.control == nil ? try ControlClaim.takeFreeName(base: settings.bridgeName) : nil
            let name = free?.name ?? settings.bridgeName
            let logger = Logger(label: "tapbridge[\(name)]")
            if name != settings.bridgeName { logger.notice("a bridge named \(settings.bridgeName) is running: this one is \(name) (tapbridge show ports --name \(name))") }
            daemon = try BridgeDaemon(settings: settings, name: name, version: version, logger: logger, claim: free?.claim)
        } catch {
            throw StartupFailure(message: error.message)
        }
        let status = daemon.run()
        if status != 0 { throw ExitCode(status) }
    }
}

/// A start-up failure: printed as one line, exit status 1.
struct StartupFailure: Error { var message: String }

@main
enum Main {
    static func main() {
        // `tapbridge show|fdb|port ...` talk to a running bridge; anything else runs one, with
        // exactly the run form's parsing and --help.
        let arguments = Array(CommandLine.arguments.dropFirst())
        // (return, not exit(0): main's locals are then released, and LeakSanitizer, in an
        // ASan build, does not take the arguments for a leak)
        if arguments == ["help"] {  // as `tapbridge --help`
            print(TapBridgeCommand.helpMessage())
            return
        }
        if arguments == ["manual"] {
            print(Manual.page(), terminator: "")
            return
        }
        if let first = arguments.first, ControlCommand.names.contains(first)
            || (first == "help" && arguments.count > 1 && ControlCommand.names.contains(arguments[1]))
        {
            if let problem = ControlCommand.unknownSubcommand(arguments) { fail(problem + " (see 'tapbridge \(arguments[0]) --help')", status: 64) }
            run(ControlCommand.self, arguments)
        }
        do {
            switch try OptionParser.parse(arguments) {
            case .help: print(TapBridgeCommand.helpMessage())
            case .version: print(TapBridgeCommand.version)
            case .run(let settings): try TapBridgeCommand.run(settings)
            }
            Glibc.exit(0)
        } catch let failure as OptionParser.Failure {
            fail(failure.message + " (see 'tapbridge --help')", status: 64)
        } catch let failure as StartupFailure {
            fail(failure.message, status: 1)
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch {
            fail("\(error)", status: 1)
        }
    }

    static func run<C: ParsableCommand>(_ type: C.Type, _ arguments: [String]) -> Never {
        do {
            var command = try type.parseAsRoot(arguments)
            try command.run()
            Glibc.exit(0)
        } catch let failure as StartupFailure {
            fail(failure.message, status: 1)
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch {
            let code = type.exitCode(for: error)
            if code == .success {
                print(type.fullMessage(for: error))
                Glibc.exit(0)
            }
            // Usage errors: one line, no usage dump (that is what --help is for).
            fail(type.message(for: error) + " (see 'tapbridge \(arguments.first.map { ControlCommand.names.contains($0) ? $0 + " " : "" } ?? "")--help')", status: code.rawValue)
        }
    }

    /// Longest error line printed: a value echoed from a huge argument or file is cut.
    static let maximumMessage = 400

    static func fail(_ message: String, status: Int32) -> Never {
        var message = message
        if message.utf8.count > maximumMessage {
            let bytes = Array(message.utf8)
            message = String(decoding: bytes.prefix(maximumMessage - 100), as: UTF8.self) + " … (\(bytes.count - maximumMessage + 40) bytes cut) … "
                + String(decoding: bytes.suffix(60), as: UTF8.self)
        }
        let line = Array("tapbridge: error: \(message)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        Glibc.exit(status)
    }
}
