import Foundation
public import TapBridgeCore
import Yams

/// `--config FILE`: a YAML file that says what the command line can say. Every key is a
/// long option without its dashes (`port`, `remote` and `mirror-port` take one spec or a list;
/// `ports`, `remotes` and `mirror-ports` are the same keys, and `split-horizon: false` is
/// `no-split-horizon: true`); the file becomes the equivalent arguments, placed before
/// the real command line, so one parser validates both and the command line wins: a
/// single-valued option given on the command line replaces the file's, and `--port`,
/// `--remote` and `--mirror-port` given there are added to the file's lists.
///
/// ```yaml
/// name: lab
/// ports:
///   - tap0                  # the --port syntax...
///   - name: tap1            # ...or a mapping with the same keys
///     vlan: 10
/// remotes:
///   - 192.0.2.5:4789,vni=42
/// ageing: 300
/// mirror: /var/log/tapbridge/lab.pcap
/// ```
/// Unknown keys and values of the wrong type are errors naming the file, line and key.
public enum ConfigFile {
    enum Kind {
        case string, integer, number, flag, list, portList, remoteList
    }

    /// Keys and how their values turn into arguments.
    static let keys: [String: Kind] = [
        "port": .portList, "remote": .remoteList, "mirror-port": .list,
        "ports": .portList, "remotes": .remoteList, "mirror-ports": .list,
        "name": .string, "control": .string, "control-group": .string, "listen": .string, "encap": .string,
        "mirror": .string, "mirror-filter": .string, "mirror-iface": .string, "mirror-rotate": .string, "log-level": .string, "offload": .string,
        "max-macs": .integer, "max-macs-per-port": .integer, "vni": .integer, "max-peers": .integer, "snaplen": .integer,
        "ageing": .number, "move-hold-down": .number, "peer-timeout": .number, "stats-interval": .number,
        "hub": .flag, "forward-link-local": .flag, "accept-peers": .flag, "split-horizon": .flag, "no-split-horizon": .flag, "mirror-egress": .flag,
    ]

    static let portKeys: Set = ["name", "mode", "vlan", "trunk", "native", "learning", "flooding", "mtu", "offload"]
    static let remoteKeys: Set = ["endpoint", "encap", "vni", "name", "vlan", "trunk", "native", "learning", "flooding"]

    /// Reads `path` and returns the equivalent command-line arguments.
    /// Largest config file read: 1 MiB (a real configuration is a few hundred bytes; a larger
    /// file is a mistake, and parsing it would take seconds and memory).
    public static let maximumBytes = 1 << 20

    public static func arguments(fromFile path: String) throws(StartupError) -> [String] {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw StartupError("--config '\(path)': cannot read it: \(String(cString: strerror(errno)))")
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw StartupError("--config '\(path)': is a directory, not a YAML file")
        default: throw StartupError("--config '\(path)': is not a regular file (a device, socket or pipe)")
        }
        guard st.st_size <= maximumBytes else {
            throw StartupError("--config '\(path)': \(st.st_size) bytes, larger than the \(maximumBytes / 1024) KiB a config file may be")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw StartupError("--config '\(path)': cannot read it: \(String(cString: strerror(errno)))")
        }
        return try arguments(fromYAML: String(decoding: data, as: UTF8.self), file: path)
    }

    /// Turns YAML text into arguments; `file` names it in errors.
    public static func arguments(fromYAML text: String, file: String) throws(StartupError) -> [String] {
        func fail(_ node: Node?, _ message: String) -> StartupError {
            StartupError("config \(file)\(node?.mark.map { ":\($0.line)" } ?? ""): \(message)")
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw StartupError("config \(file): not valid YAML: \(error)")
        }
        guard let root else { return [] }  // an empty file says nothing
        guard let mapping = root.mapping else { throw fail(root, "expected a mapping of option: value") }
        var args: [String] = []
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw fail(keyNode, "keys must be strings") }
            guard let kind = keys[key] else {
                throw fail(keyNode, "unknown key '\(key)' (known: \(keys.keys.sorted().joined(separator: ", ")))")
            }
            func scalar(_ what: String) throws(StartupError) -> String {
                guard case .scalar(let s) = value, !s.string.isEmpty else { throw fail(value, "'\(key)' must be \(what)") }
                return s.string
            }
            switch kind {
            case .string:
                args += ["--\(key)", try scalar("a string")]
            case .integer:
                guard let n = value.int else { throw fail(value, "'\(key)' must be a whole number, got '\(value.string ?? "a \(describe(value))")'") }
                args += ["--\(key)", String(n)]
            case .number:
                guard let x = value.float ?? value.int.map(Double.init) else { throw fail(value, "'\(key)' must be a number, got '\(value.string ?? "a \(describe(value))")'") }
                args += ["--\(key)=\(x)"]
            case .flag:
                guard let on = value.bool else { throw fail(value, "'\(key)' must be true or false, got '\(value.string ?? "a \(describe(value))")'") }
                if key == "split-horizon" {
                    if !on { args.append("--no-split-horizon") }
                } else if key == "no-split-horizon" {
                    if on { args.append("--no-split-horizon") }
                } else if on {
                    args.append("--\(key)")
                }
            case .list, .portList, .remoteList:
                // one item alone, or a list of them
                let items = value.sequence.map(Array.init) ?? [value]
                let flag = kind == .portList ? "--port" : kind == .remoteList ? "--remote" : "--mirror-port"
                for item in items {
                    let spec: String
                    switch (kind, item) {
                    case (_, .scalar(let s)):
                        spec = s.string
                    case (.portList, .mapping(let m)):
                        spec = try specFromMapping(m, first: "name", allowed: portKeys, key: key, fail: fail)
                    case (.remoteList, .mapping(let m)):
                        spec = try specFromMapping(m, first: "endpoint", allowed: remoteKeys, key: key, fail: fail)
                    default:
                        throw fail(item, "items of '\(key)' must be \(kind == .list ? "strings" : "spec strings or mappings")")
                    }
                    args += [flag, spec]
                }
            }
        }
        return args
    }

    static func describe(_ node: Node) -> String {
        switch node {
        case .mapping: "mapping"
        case .sequence: "list"
        default: "value"
        }
    }

    /// `{name: tap1, vlan: 10, trunk: [10, 20]}` -> `tap1,vlan=10,trunk=10:20`.
    static func specFromMapping(_ m: Node.Mapping, first: String, allowed: Set<String>, key: String,
                                fail: (Node?, String) -> StartupError) throws(StartupError) -> String {
        var head: String? = nil
        var options: [String] = []
        for (k, v) in m {
            guard let name = k.string, allowed.contains(name) else {
                throw fail(k, "unknown key '\(k.string ?? "?")' in '\(key)' (known: \(allowed.sorted().joined(separator: ", ")))")
            }
            let text: String
            switch v {
            case .scalar(let s):
                text = v.bool.map { $0 ? "on" : "off" } ?? s.string
            case .sequence(let items) where name == "trunk":
                text = items.compactMap(\.string).joined(separator: ":")
            default:
                throw fail(v, "'\(name)' in '\(key)' must be a single value\(name == "trunk" ? " or a list of VLANs" : "")")
            }
            if name == first { head = text } else { options.append("\(name)=\(text)") }
        }
        guard let head else { throw fail(nil, "an item of '\(key)' has no '\(first)'") }
        return ([head] + options).joined(separator: ",")
    }
}
