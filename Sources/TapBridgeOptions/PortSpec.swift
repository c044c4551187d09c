public import TapBridgeCore
public import TapBridgeDevices

/// How a `--port` reaches its interface.
public enum PortMode: String, Sendable, CaseIterable {
    /// Attach or create a TAP; if the interface exists but cannot be attached as a TAP (held by
    /// another program, or not a TAP), fall back to a packet socket.
    case auto
    /// Only a TAP (create or attach); anything else is an error.
    case tap
    /// Only a packet socket on an existing interface.
    case packet
}

/// One `--port NAME[,key=value...]` argument, parsed and validated.
///
/// Keys: `mode=auto|tap|packet`, `vlan=N` (access port), `trunk=V[:V...]` (tagged VLANs,
/// `:`-separated because `,` separates options; ranges allowed: `trunk=10:20-29`), `native=N`
/// (untagged VLAN of a trunk), `learning=on|off`, `flooding=on|off`, `mtu=N`, `offload=on|off`.
public struct PortSpec: Sendable, Equatable {
    public var name: String
    public var mode: PortMode = .auto
    public var configuration = PortConfiguration()
    /// MTU to set on the interface (IP MTU, as `ip link` shows it), or `nil` to leave it.
    public var mtu: Int? = nil
    /// Offloads on this port (`nil`: the bridge's `--offload`).
    public var offload: Bool? = nil
    /// `netns=NS`: the TAP is made here, then moved into network namespace NS (created if
    /// missing), addressed (`addr=`) and brought up there.
    public var namespace: String? = nil
    /// `addr=CIDR`: the address the TAP gets in its namespace (`10.0.0.1/24`, `fd00::1/64`).
    public var address: InterfaceAddress? = nil
    /// `mac=MAC`: the TAP's MAC address (else a stable one: `PortFactory.stableMAC`).
    public var mac: MACAddress? = nil
    /// `delay=`, `jitter=`, `loss=`, `duplicate=`, `corrupt=`, `reorder=`, `rate=`: a bad link
    /// on the way out of the port.
    public var impairment = Impairment()
    /// `stream=unix:PATH|HOST:PORT`: no interface; frames in QEMU's stream framing over a
    /// connection tapbridge opens there (and opens again when it closes).
    public var stream: StreamEndpoint? = nil

    public init(name: String, mode: PortMode = .auto, configuration: PortConfiguration = PortConfiguration(), mtu: Int? = nil) {
        self.name = name
        self.mode = mode
        self.configuration = configuration
        self.mtu = mtu
    }

    /// The syntax, for help texts and error messages.
    public static let syntax = "NAME[,mode=auto|tap|packet | ,stream=unix:PATH|HOST:PORT] [,netns=NS[,addr=CIDR][,mac=MAC]] [,vlan=N | ,trunk=V[:V...][,native=N]] [,learning=off][,flooding=off][,storm=PPS][,multicast=flood] [,mtu=N][,offload=off] [,delay=T][,jitter=T][,loss=P%][,duplicate=P%] [,corrupt=P%][,reorder=P%][,rate=R]"

    /// Parses a `--port` value. VLAN lists in `trunk=` use `:` between items because `,`
    /// separates options: `trunk=10:20-29:100`.
    public init(parsing text: String) throws(PortSpecError) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let name = parts[0]
        if let problem = InterfaceName.problem(with: name) { throw PortSpecError(text, "interface name \(problem)") }
        self.init(name: name)
        var shared = SharedPortOptions()
        for (key, value) in try keyValues(parts.dropFirst(), in: text) {
            if try shared.take(key, value, in: text) { continue }
            switch key {
            case "mode":
                guard let m = PortMode(rawValue: value) else { throw PortSpecError(text, "mode must be auto, tap or packet, got '\(value)'") }
                mode = m
            case "mtu":
                guard let m = Int(value), (68...65_521).contains(m) else { throw PortSpecError(text, "mtu must be 68-65521, got '\(value)'") }
                mtu = m
            case "offload":
                guard let b = Self.boolean(value) else { throw PortSpecError(text, "offload must be on or off, got '\(value)'") }
                offload = b
            case "delay", "jitter":
                guard let d = Self.duration(value) else {
                    throw PortSpecError(text, "\(key) must be a time like 50ms, 1.5s or 200us (at most 60s), got '\(value)'")
                }
                if key == "delay" { impairment.delay = d } else { impairment.jitter = d }
            case "loss":
                let parts = value.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
                guard parts.count <= 2, let p = Self.percent(parts[0]), parts.count == 1 || Self.percent(parts[1]) != nil else {
                    throw PortSpecError(text, "loss must be a percentage like 1% (and optionally a correlation: 10%:25%), got '\(value)'")
                }
                impairment.loss = p
                impairment.lossCorrelation = parts.count == 2 ? Self.percent(parts[1])! : 0
            case "duplicate", "corrupt", "reorder":
                guard let p = Self.percent(value) else { throw PortSpecError(text, "\(key) must be a percentage like 1%, got '\(value)'") }
                switch key {
                case "duplicate": impairment.duplicate = p
                case "corrupt": impairment.corrupt = p
                default: impairment.reorder = p
                }
            case "rate":
                guard let r = Self.bitRate(value) else {
                    throw PortSpecError(text, "rate must be bits a second like 10mbit, 512kbit or 1gbit (at least 8bit), got '\(value)'")
                }
                impairment.rate = r
            case "netns":
                if let problem = NamespaceName.problem(with: value) { throw PortSpecError(text, "netns name \(problem)") }
                namespace = value
            case "addr":
                guard let a = InterfaceAddress(value) else {
                    throw PortSpecError(text, "addr must be an address with its prefix length (CIDR: 10.0.0.1/24, fd00::1/64), got '\(value)'")
                }
                address = a
            case "stream":
                do {
                    stream = try StreamEndpoint(parsing: value, listening: false)
                } catch {
                    throw PortSpecError(text, "stream: \(error.message)")
                }
            case "mac":
                guard let m = MACAddress(value), m.isValidSource else {
                    throw PortSpecError(text, "mac must be a unicast MAC address (02:00:00:00:00:01), got '\(value)'")
                }
                mac = m
            default:
                throw PortSpecError(text, "unknown option '\(key)' (known: mode, stream, netns, addr, mac, mtu, offload, delay, jitter, loss, duplicate, corrupt, reorder, rate, \(SharedPortOptions.keys))")
            }
        }
        if namespace == nil, address != nil || mac != nil {
            throw PortSpecError(text, "addr= and mac= go with netns= (the TAP tapbridge makes and moves there); for a TAP here, use ip addr / ip link")
        }
        if stream != nil {
            let interfaceKeys = ["mode", "netns", "mtu", "offload"].filter { k in parts.dropFirst().contains { $0.hasPrefix(k + "=") } }
            if let key = interfaceKeys.first { throw PortSpecError(text, "\(key)= is for interfaces; a stream= port has none (its peer sets its own MTU)") }
        }
        if namespace != nil, mode == .packet { throw PortSpecError(text, "netns= makes a TAP: it cannot go with mode=packet") }
        if impairment.jitter > impairment.delay { throw PortSpecError(text, "jitter= must not exceed delay= (a frame never leaves before it was sent)") }
        configuration = try shared.configuration(in: text)
    }

    /// `50ms`, `1.5s`, `200us`, `0`: at most 60 s.
    public static func duration(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("us", 1e-6), ("ms", 1e-3), ("s", 1)]
        if text == "0" { return .zero }
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let v = Double(text.dropLast(suffix.count)), v >= 0, v * scale <= 60 else { return nil }
            return .nanoseconds(Int64((v * scale * 1e9).rounded()))
        }
        return nil
    }

    /// `1%`, `0.5%`, `25` (percent): a probability 0-1.
    public static func percent(_ text: String) -> Double? {
        let t = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let v = Double(t), v >= 0, v <= 100 else { return nil }
        return v / 100
    }

    /// `10mbit`, `512kbit`, `1gbit`, `8000bit` (tc's units, powers of 1000): bits a second.
    public static func bitRate(_ text: String) -> UInt64? {
        let units: [(String, Double)] = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1)]
        for (suffix, scale) in units where text.lowercased().hasSuffix(suffix) {
            guard let v = Double(text.dropLast(suffix.count)), v * scale >= 8, v * scale <= 1e12 else { return nil }
            return UInt64(v * scale)
        }
        return nil
    }

    /// on/yes/true/1 or off/no/false/0 (any case); nil for anything else.
    public static func boolean(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "on", "yes", "true", "1": true
        case "off", "no", "false", "0": false
        default: nil
        }
    }
}

/// Splits `key=value` options, refusing a key given twice.
func keyValues(_ parts: ArraySlice<String>, in text: String) throws(PortSpecError) -> [(String, String)] {
    var seen: Set<String> = []
    var out: [(String, String)] = []
    for option in parts {
        let kv = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard kv.count == 2, !kv[0].isEmpty else { throw PortSpecError(text, "expected key=value, got '\(option)'") }
        guard seen.insert(kv[0]).inserted else { throw PortSpecError(text, "'\(kv[0])' given twice") }
        out.append((kv[0], kv[1]))
    }
    return out
}

/// The options every kind of port takes: VLAN membership, learning, flooding, storm control,
/// multicast snooping. (`list` is the one list of them: messages and config keys read it.)
struct SharedPortOptions {
    static let list = ["vlan", "trunk", "native", "learning", "flooding", "storm", "multicast"]
    static let keys = list.joined(separator: ", ")
    var access: VLANID? = nil
    var trunk: VLANSet? = nil
    var native: VLANID? = nil
    var learning = true
    var flooding = true
    var storm: Int? = nil
    var multicastFlood = false

    /// Consumes `key` if it is a shared option; `false` if it is not one.
    mutating func take(_ key: String, _ value: String, in text: String) throws(PortSpecError) -> Bool {
        switch key {
        case "vlan":
            guard let v = Int(value).flatMap(VLANID.init(validating:)) else { throw PortSpecError(text, "vlan must be 1-4094, got '\(value)'") }
            access = v
        case "trunk":
            guard let set = VLANSet(parsing: String(value.map { $0 == ":" ? "," : $0 })), !set.isEmpty else {
                throw PortSpecError(text, "trunk must list VLANs 1-4094 like 10:20-29, got '\(value)'")
            }
            trunk = set
        case "native":
            guard let v = Int(value).flatMap(VLANID.init(validating:)) else { throw PortSpecError(text, "native must be 1-4094, got '\(value)'") }
            native = v
        case "learning", "flooding":
            guard let on = PortSpec.boolean(value) else { throw PortSpecError(text, "\(key) must be on or off, got '\(value)'") }
            if key == "learning" { learning = on } else { flooding = on }
        case "storm":
            if value == "off" {
                storm = nil
            } else {
                guard let n = Int(value), (1...100_000_000).contains(n) else {
                    throw PortSpecError(text, "storm must be the most flooded frames a second (1-100000000) or off, got '\(value)'")
                }
                storm = n
            }
        case "multicast":
            guard value == "flood" || value == "snoop" else { throw PortSpecError(text, "multicast must be snoop (the groups its hosts joined) or flood (every group), got '\(value)'") }
            multicastFlood = value == "flood"
        default:
            return false
        }
        return true
    }

    func configuration(in text: String) throws(PortSpecError) -> PortConfiguration {
        if access != nil, trunk != nil { throw PortSpecError(text, "vlan= (access port) and trunk= exclude each other") }
        if native != nil, trunk == nil { throw PortSpecError(text, "native= needs trunk=") }
        var c = PortConfiguration(learning: learning, flooding: flooding, stormLimit: storm, multicastFlood: multicastFlood)
        if let trunk {
            c.vlanMode = .trunk(allowed: trunk, native: native)
        } else if let access {
            c.vlanMode = .access(access)
        }
        return c
    }
}

/// A `--port` value that does not parse.
public struct PortSpecError: Error, CustomStringConvertible, Equatable {
    public var spec: String
    public var reason: String
    /// The option the value was given to.
    public var flag: String
    init(_ spec: String, _ reason: String, flag: String = "--port") {
        self.spec = spec
        self.reason = reason
        self.flag = flag
    }
    public var description: String { "\(flag) '\(spec)': \(reason)" }
}

/// Linux interface name rules (`dev_valid_name` in net/core/dev.c).
public enum InterfaceName {
    /// Longest name: IFNAMSIZ (16) minus the terminating NUL.
    public static let maximumLength = 15

    /// Why `name` is not a valid interface name, or `nil` if it is.
    public static func problem(with name: String) -> String? {
        if name.isEmpty { return "is empty" }
        if name.utf8.count > maximumLength { return "'\(name)' is \(name.utf8.count) bytes, longer than \(maximumLength)" }
        if name == "." || name == ".." { return "'\(name)' is reserved" }
        if name.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace }) { return "'\(name)' contains '/', ':' or white space" }
        if name.utf8.contains(0) { return "contains a NUL byte" }
        return nil
    }
}

/// A network namespace name as `ip netns` takes it (a file in /run/netns).
public enum NamespaceName {
    /// Why `name` cannot name a namespace, or nil.
    public static func problem(with name: String) -> String? {
        if name.isEmpty { return "is empty" }
        if name.utf8.count > 64 { return "'\(name)' is longer than 64 bytes" }
        if name == "." || name == ".." { return "'\(name)' is reserved" }
        if name.contains(where: { !($0.isLetter || $0.isNumber || "-_.".contains($0)) || !$0.isASCII }) {
            return "'\(name)' may hold only letters, digits, '-', '_' and '.'"
        }
        return nil
    }
}

/// An interface address with its prefix length: `10.0.0.1/24`, `fd00::1/64`.
public struct InterfaceAddress: Sendable, Equatable, CustomStringConvertible {
    public let address: String
    public let prefixLength: Int
    public let isIPv6: Bool

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let length = Int(parts[1]), parts[1].allSatisfy(\.isNumber) else { return nil }
        let host = String(parts[0])
        guard let family = SocketAddress.family(ofNumericHost: host) else { return nil }
        isIPv6 = family == .v6
        guard (0...(isIPv6 ? 128 : 32)).contains(length) else { return nil }
        address = host
        prefixLength = length
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
