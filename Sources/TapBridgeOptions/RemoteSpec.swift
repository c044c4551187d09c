public import TapBridgeCore
public import TapBridgeDevices

/// One `--remote HOST:PORT[,key=value...]` argument.
public struct RemoteSpec: Sendable, Equatable {
    /// `HOST:PORT` as written; the port's default name.
    public var endpoint: String
    public var host: String
    public var port: UInt16
    /// `nil`: the bridge-wide `--encap`.
    public var encapsulation: Encapsulation? = nil
    /// `nil`: the bridge-wide `--vni`.
    public var vni: VNI? = nil
    /// The port's name in logs (default: `endpoint`).
    public var name: String
    public var configuration = PortConfiguration()
    /// `horizon=`; nil: the default for the encapsulation (see `Horizon`).
    public var horizon: Horizon? = nil
    /// `key=PATH`: this host's key for a sealed remote; nil: the bridge-wide `--key-file`.
    public var keyFile: String? = nil
    /// The options of its encapsulation (sealed: `peer=`, `psk=`), checked by the kind that
    /// declares them (`EncapsulationKind.remoteOptions`).
    public var encapsulationOptions: [String: String] = [:]
    /// `datapath=`: who moves the remote's frames (see `Datapath`).
    public var datapath = Datapath.user

    public static let syntax = "HOST:PORT[,encap=\(Encapsulations.choices)][,vni=N][,datapath=user|kernel][,name=NAME][,horizon=mesh|off|N] [,peer=PUBKEY][,key=PATH][,psk=PATH][,keepalive=SECONDS] [,vlan=N | ,trunk=V[:V...][,native=N]][,learning=off][,flooding=off][,storm=PPS][,multicast=flood]"

    /// `defaultPort`: the port of a HOST given without one (`remote add 192.0.2.5`: the bridge's
    /// UDP port); nil: HOST:PORT is required. `flag` names the option in errors.
    public init(parsing text: String, defaultPort: UInt16? = nil, flag: String = "--remote") throws(PortSpecError) {
        var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        if let defaultPort, SocketAddress.split(parts[0]) == nil, !parts[0].isEmpty,
            !parts[0].contains(":") || (parts[0].hasPrefix("[") && parts[0].hasSuffix("]"))
        {
            parts[0] += ":\(defaultPort)"
        }
        guard let (host, port) = SocketAddress.split(parts[0]) else {
            throw PortSpecError(text, "expected HOST:PORT with PORT 1-65535 (IPv6 in brackets: [2001:db8::1]:4789), got '\(parts[0])'", flag: flag)
        }
        endpoint = parts[0]
        self.host = host
        self.port = port
        name = parts[0]
        var shared = SharedPortOptions()
        do throws(PortSpecError) {
            for (key, value) in try keyValues(parts.dropFirst(), in: text) {
                if try shared.take(key, value, in: text) { continue }
                switch key {
                case "encap":
                    guard let e = Encapsulations.named(value) else { throw PortSpecError(text, "encap must be \(Encapsulations.names()), got '\(value)'") }
                    encapsulation = e
                case "vni":
                    guard let v = Int(value).flatMap(VNI.init) else { throw PortSpecError(text, "vni must be 0-16777215, got '\(value)'") }
                    vni = v
                case "key":
                    guard !value.isEmpty else { throw PortSpecError(text, "key= needs the path of a key file (tapbridge genkey writes one)") }
                    keyFile = value
                case "horizon":
                    guard let h = Horizon(parsing: value) else { throw PortSpecError(text, "horizon must be mesh, off or a group number 1-65535, got '\(value)'") }
                    horizon = h
                case "name":
                    guard !value.isEmpty, value.count <= 64, !value.contains(where: \.isWhitespace) else {
                        throw PortSpecError(text, "name must be 1-64 characters without white space")
                    }
                    name = value
                case "datapath":
                    guard let d = Datapath(rawValue: value) else { throw PortSpecError(text, "datapath must be user or kernel, got '\(value)'") }
                    datapath = d
                default:
                    guard let kind = Encapsulations.all.first(where: { $0.remoteOptions.contains(key) }) else {
                        throw PortSpecError(text, "unknown option '\(key)' (known: encap, key, vni, datapath, name, horizon, \(Encapsulations.remoteOptions.joined(separator: ", ")), \(SharedPortOptions.keys))")
                    }
                    if let why = kind.check(option: key, value: value) { throw PortSpecError(text, why) }
                    encapsulationOptions[key] = value
                }
            }
            if let e = encapsulation, let why = optionsProblem(e) { throw PortSpecError(text, why) }
            if keyFile != nil, let e = encapsulation, !e.kind.needsKey {
                let keyed = Encapsulations.names { $0.needsKey }
                throw PortSpecError(text, "key= is for encap=\(keyed) (set encap=\(keyed) too)")
            }
            if datapath == .kernel {
                if let e = encapsulation, !e.kind.kernelDatapath {
                    throw PortSpecError(text, "datapath=kernel is the kernel's vxlan device: it carries encap=\(Encapsulations.names { $0.kernelDatapath }) only (\(e) remotes run in tapbridge, datapath=user)")
                }
                if let h = horizon, h != .mesh {
                    throw PortSpecError(text, "datapath=kernel remotes share one port, the kernel's vxlan device, which never forwards between them: horizon=\(h) cannot apply")
                }
            }
            configuration = try shared.configuration(in: text)
        } catch {
            throw PortSpecError(error.spec, error.reason, flag: flag)
        }
    }
}

extension RemoteSpec {
    /// Why this remote's encapsulation options do not fit `encapsulation` (one it does not
    /// take, `peer=` on a VXLAN remote), or nil. At parse time, when encap= is given.
    public func optionsProblem(_ encapsulation: Encapsulation) -> String? {
        for key in encapsulationOptions.keys.sorted() where !encapsulation.kind.remoteOptions.contains(key) {
            let takes = Encapsulations.names { $0.remoteOptions.contains(key) }
            return "\(key)= is for encap=\(takes) (set encap=\(takes) too)"
        }
        return nil
    }

    /// Why this remote's options cannot run in `encapsulation`: one it does not take, or one it
    /// needs missing (sealed without `peer=`); nil if they can. At start and for `remote add`.
    public func encapsulationProblem(_ encapsulation: Encapsulation) -> String? {
        optionsProblem(encapsulation) ?? encapsulation.kind.missingOptions(encapsulationOptions)
    }

    /// Why this remote cannot run on a bridge whose `--encap` is `bridgeWide` (a
    /// `datapath=kernel` remote without encap= takes the bridge's, and carries VXLAN only); nil
    /// if it can. At start and for `remote add`.
    public func datapathProblem(bridgeWide: Encapsulation) -> String? {
        guard datapath == .kernel, encapsulation == nil, !bridgeWide.kind.kernelDatapath else { return nil }
        let kernel = Encapsulations.names { $0.kernelDatapath }
        return "datapath=kernel carries encap=\(kernel) only, and the bridge-wide --encap is \(bridgeWide) (set encap=\(kernel) on the remote)"
    }
}

/// Who moves a remote's frames.
/// ```
///   user     tapbridge's own UDP socket (every encapsulation; peers at run time, counters
///            per remote, --accept-peers)
///   kernel   a Linux vxlan device tapbridge makes for it, attached as a packet-socket port:
///            the kernel encapsulates, segments and coalesces (VXLAN only); remotes of one
///            VNI and UDP port share the device, and so one port
/// ```
public enum Datapath: String, Sendable, Equatable {
    case user, kernel
}

/// A remote's split horizon: which other remotes its frames are never forwarded to.
///
/// Split horizon keeps a mesh of bridges loop-free: a frame that came from one bridge of the
/// mesh is never sent to another (each already heard it from the sender directly). An
/// endpoint (a QEMU `-netdev dgram` VM) is not a bridge: it must reach the other endpoints.
/// ```
///   mesh   group 1: the default for VXLAN and sealed remotes (tapbridges, Linux vxlan devices)
///   off    no group: the default for raw remotes (QEMU VMs); reaches every port
///   N      group N (1-65535): remotes of one group are never forwarded to each other
/// ```
public enum Horizon: Equatable, Sendable, CustomStringConvertible {
    case mesh
    case off
    case group(UInt16)

    /// `mesh`, `off`, or a group number 1-65535 (1 is `mesh`).
    public init?(parsing text: String) {
        switch text.lowercased() {
        case "mesh": self = .mesh
        case "off", "none": self = .off
        default:
            guard let n = UInt16(text), n > 0 else { return nil }
            self = n == 1 ? .mesh : .group(n)
        }
    }

    /// From a port's split-horizon group.
    public init(group: UInt16) { self = group == 0 ? .off : group == 1 ? .mesh : .group(group) }

    /// The default for a remote: its encapsulation's (`meshByDefault`: VXLAN and sealed peers
    /// are bridges, a mesh; raw ones endpoints, off); every remote is off with `--no-split-horizon`.
    public static func standard(for encapsulation: Encapsulation, splitHorizon: Bool) -> Horizon {
        splitHorizon && encapsulation.kind.meshByDefault ? .mesh : .off
    }

    /// The port's split-horizon group (`PortConfiguration.splitHorizonGroup`).
    public var group: UInt16 {
        switch self {
        case .mesh: 1
        case .off: 0
        case .group(let n): n
        }
    }

    public var description: String {
        switch self {
        case .mesh: "mesh"
        case .off: "off"
        case .group(let n): "group \(n)"
        }
    }
}

/// A `--stream-listen unix:PATH|[ADDR:]PORT[,max=N][,port options]` argument: where QEMU
/// stream NICs (and other stream peers) connect; each connection becomes a port with the
/// options given here (VLAN, learning, flooding, storm, the emulated link).
public struct StreamListenSpec: Sendable, Equatable {
    public var endpoint: StreamEndpoint
    /// What each connection's port gets (its name is made per connection).
    public var port: PortSpec
    /// The most connections served at once; more are refused (counted, logged).
    public var maximumConnections = 64

    public static let syntax = "unix:PATH|[ADDR:]PORT[,max=N][,vlan=N | ,trunk=...][,storm=PPS][,delay=T,...]"

    public init(parsing text: String) throws(PortSpecError) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        do {
            endpoint = try StreamEndpoint(parsing: parts[0], listening: true)
        } catch {
            throw PortSpecError(text, error.message, flag: "--stream-listen")
        }
        var rest: [String] = []
        for part in parts.dropFirst() {
            if part.hasPrefix("max=") {
                guard let n = Int(part.dropFirst(4)), (1...4096).contains(n) else {
                    throw PortSpecError(text, "max must be 1-4096 connections, got '\(part.dropFirst(4))'", flag: "--stream-listen")
                }
                maximumConnections = n
            } else if let key = ["mode", "netns", "addr", "mac", "mtu", "offload", "stream"].first(where: { part.hasPrefix($0 + "=") }) {
                throw PortSpecError(text, "\(key)= is for --port; a stream listener takes max=, the VLAN keys, learning, flooding, storm and the link keys", flag: "--stream-listen")
            } else {
                rest.append(part)
            }
        }
        do {
            port = try PortSpec(parsing: (["stream"] + rest).joined(separator: ","))
        } catch {
            throw PortSpecError(text, error.reason, flag: "--stream-listen")
        }
    }
}

/// A `--listen [ADDR:]PORT` argument.
public struct ListenSpec: Sendable, Equatable {
    /// `nil`: every address (IPv6 and IPv4).
    public var host: String?
    public var port: UInt16

    public init(host: String?, port: UInt16) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(PortSpecError) {
        if let port = UInt16(text), port > 0 {
            self.init(host: nil, port: port)
        } else if let (host, port) = SocketAddress.split(text) {
            self.init(host: host, port: port)
        } else {
            throw PortSpecError(text, "expected PORT, ADDR:PORT or [IPV6]:PORT with PORT 1-65535", flag: "--listen")
        }
    }
}
