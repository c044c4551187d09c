public import TapBridgeCore

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
/// (untagged VLAN of a trunk), `learning=on|off`, `flooding=on|off`, `mtu=N`.
public struct PortSpec: Sendable, Equatable {
    public var name: String
    public var mode: PortMode = .auto
    public var configuration = PortConfiguration()
    /// MTU to set on the interface (IP MTU, as `ip link` shows it), or `nil` to leave it.
    public var mtu: Int? = nil

    public init(name: String, mode: PortMode = .auto, configuration: PortConfiguration = PortConfiguration(), mtu: Int? = nil) {
        self.name = name
        self.mode = mode
        self.configuration = configuration
        self.mtu = mtu
    }

    /// The syntax, for help texts and error messages.
    public static let syntax = "NAME[,mode=auto|tap|packet][,vlan=N | ,trunk=V[:V...][,native=N]][,learning=off][,flooding=off][,mtu=N]"

    /// Parses a `--port` value. VLAN lists in `trunk=` use `:` between items because `,`
    /// separates options: `trunk=10:20-29:100`.
    public init(parsing text: String) throws(PortSpecError) {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let name = parts[0]
        if let problem = InterfaceName.problem(with: name) { throw PortSpecError(text, "interface name \(problem)") }
        self.init(name: name)
        var access: VLANID? = nil
        var trunk: VLANSet? = nil
        var native: VLANID? = nil
        var seen: Set<String> = []
        for option in parts.dropFirst() {
            let kv = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard kv.count == 2, !kv[0].isEmpty else { throw PortSpecError(text, "expected key=value, got '\(option)'") }
            let (key, value) = (kv[0], kv[1])
            guard seen.insert(key).inserted else { throw PortSpecError(text, "'\(key)' given twice") }
            switch key {
            case "mode":
                guard let m = PortMode(rawValue: value) else { throw PortSpecError(text, "mode must be auto, tap or packet, got '\(value)'") }
                mode = m
            case "vlan":
                guard let v = Int(value).flatMap(VLANID.init(validating:)) else { throw PortSpecError(text, "vlan must be 1-4094, got '\(value)'") }
                access = v
            case "trunk":
                guard let set = VLANSet(parsing: value.replacingColons()), !set.isEmpty else {
                    throw PortSpecError(text, "trunk must list VLANs 1-4094 like 10:20-29, got '\(value)'")
                }
                trunk = set
            case "native":
                guard let v = Int(value).flatMap(VLANID.init(validating:)) else { throw PortSpecError(text, "native must be 1-4094, got '\(value)'") }
                native = v
            case "learning", "flooding":
                guard let on = Self.boolean(value) else { throw PortSpecError(text, "\(key) must be on or off, got '\(value)'") }
                if key == "learning" { configuration.learning = on } else { configuration.flooding = on }
            case "mtu":
                guard let m = Int(value), (68...65_521).contains(m) else { throw PortSpecError(text, "mtu must be 68-65521, got '\(value)'") }
                mtu = m
            default:
                throw PortSpecError(text, "unknown option '\(key)' (known: mode, vlan, trunk, native, learning, flooding, mtu)")
            }
        }
        if access != nil, trunk != nil { throw PortSpecError(text, "vlan= (access port) and trunk= exclude each other") }
        if native != nil, trunk == nil { throw PortSpecError(text, "native= needs trunk=") }
        if let trunk {
            configuration.vlanMode = .trunk(allowed: trunk, native: native)
        } else if let access {
            configuration.vlanMode = .access(access)
        }
    }

    static func boolean(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "on", "yes", "true", "1": true
        case "off", "no", "false", "0": false
        default: nil
        }
    }
}

extension String {
    fileprivate func replacingColons() -> String { String(map { $0 == ":" ? "," : $0 }) }
}

/// A `--port` value that does not parse.
public struct PortSpecError: Error, CustomStringConvertible, Equatable {
    public var spec: String
    public var reason: String
    init(_ spec: String, _ reason: String) {
        self.spec = spec
        self.reason = reason
    }
    public var description: String { "--port '\(spec)': \(reason)" }
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
