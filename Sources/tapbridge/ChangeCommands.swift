import ArgumentParser
import Foundation
import TapBridgeCore
import TapBridgeControl
import TapBridgeDaemon
import TapBridgeDevices
import TapBridgeOptions
import Glibc

struct FDB: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fdb", abstract: "Change a running bridge's MAC table.", subcommands: [Add.self, Del.self, Flush.self])

    /// MAC PORT [--vlan N] and the bridge to send them to.
    struct Entry: ParsableArguments {
        @OptionGroup var target: Target
        @Argument(help: "The MAC address, like 02:00:00:00:00:01.") var mac: String
        @Argument(help: "The port's name.") var port: String
        @Option(help: ArgumentHelp("VLAN (default: the port's untagged VLAN, its access VLAN or a trunk's native one; a trunk without one needs --vlan).", valueName: "n")) var vlan: Int?

        /// A malformed MAC or VLAN is a usage error (exit 64), caught before asking the bridge.
        func validate() throws {
            guard MACAddress(mac) != nil else { throw ValidationError("expected a MAC address like 02:00:00:00:00:01, got '\(mac)'") }
            if let vlan, VLANID(validating: vlan) == nil { throw ValidationError("--vlan must be 1-4094, got \(vlan)") }
        }

        func send(_ command: String) throws {
            print(try target.send(ControlRequest(command: command, mac: mac, port: port, vlan: vlan)).message ?? "ok")
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Pin MAC to PORT (a static entry: never ages, never moves).")
        @OptionGroup var entry: Entry
        func run() throws { try entry.send("fdb-add") }
    }

    struct Del: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove MAC's entry on PORT (static or learned).")
        @OptionGroup var entry: Entry
        func run() throws { try entry.send("fdb-del") }
    }

    struct Flush: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Forget learned entries (all, or on one port, or in one VLAN).")
        @OptionGroup var target: Target
        @Option(help: ArgumentHelp("Only entries on this port.", valueName: "name")) var port: String?
        @Option(help: ArgumentHelp("Only entries in this VLAN.", valueName: "n")) var vlan: Int?
        @Flag(name: .customLong("static"), help: "Remove static entries too.") var includeStatic = false
        func run() throws {
            let r = try target.send(ControlRequest(command: "fdb-flush", port: port, vlan: vlan, spec: includeStatic ? "static" : nil))
            print("flushed \(r.flushed ?? 0) entries")
        }
    }
}

struct Port: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "port", abstract: "Add, change or remove ports of a running bridge (VMs come and go).", subcommands: [Add.self, SetLink.self, Del.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a port: the same SPEC as --port (NAME[,mode=...][,vlan=N]...).")
        @OptionGroup var target: Target
        @Argument(help: "The port spec.") var spec: String
        func run() throws { print(try target.send(ControlRequest(command: "port-add", spec: spec)).message ?? "ok") }
    }

    struct SetLink: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Change a port's emulated link or storm limit: port set NAME delay=50ms jitter=5ms loss=1% rate=10mbit (the link as a whole: keys not given are off), port set NAME none, port set NAME storm=1000.")
        @OptionGroup var target: Target
        @Argument(help: "The port's name.") var name: String
        @Argument(help: "delay=T jitter=T loss=P%[:C%] duplicate=P% corrupt=P% reorder=P% rate=R storm=PPS|off, or none.") var options: [String]
        func run() throws {
            print(try target.send(ControlRequest(command: "port-set", port: name, spec: options.joined(separator: ","))).message ?? "ok")
        }
    }

    struct Del: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a port (its MAC entries go with it; a TAP tapbridge created disappears).")
        @OptionGroup var target: Target
        @Argument(help: "The port's name.") var name: String
        func run() throws { print(try target.send(ControlRequest(command: "port-del", port: name)).message ?? "ok") }
    }
}

struct Remote: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote", abstract: "Add or remove remote peers of a running bridge (hosts and VMs join a lab without a restart).",
        subcommands: [Add.self, Del.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a remote: the same SPEC as --remote, HOST[:PORT] and its keys (encap=, vni=, datapath=, name=, horizon=, peer=, key=, psk=, keepalive=, vlan=, ...); without PORT, the bridge's UDP port. datapath=kernel: into the vxlan device of its VNI and port, made if there is none.")
        @OptionGroup var target: Target
        @Argument(help: "The remote spec.") var spec: String
        func run() throws { print(try target.send(ControlRequest(command: "remote-add", spec: spec)).message ?? "ok") }
    }

    struct Del: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a remote, by name or by ADDRESS:PORT (its MAC entries go with it; a datapath=kernel remote's vxlan device goes with its last remote).")
        @OptionGroup var target: Target
        @Argument(help: "The remote's name or ADDRESS:PORT.") var remote: String
        func run() throws { print(try target.send(ControlRequest(command: "remote-del", port: remote)).message ?? "ok") }
    }
}
