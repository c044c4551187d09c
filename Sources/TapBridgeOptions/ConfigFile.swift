import Foundation
import TapBridgeCore
import TapBridgeDevices
import Yams

/// `--config FILE`: a YAML file that says what the command line can say. Every key is a
/// long option without its dashes (`OptionTable`): `port`, `remote` and `mirror-port` take one
/// spec or a list (`ports`, `remotes`, `mirror-ports` are the same keys), flags take true or
/// false (`split-horizon: false`, from older files, is `no-split-horizon: true`). The file's
/// values go into the same settings as the command line's, through the same parsers, so a
/// value out of range is reported with the file, line and key.
///
/// ```yaml
/// name: lab
/// port:
///   - tap0                  # the --port syntax...
///   - name: tap1            # ...or a mapping with the same keys
///     vlan: 10
/// remote: 192.0.2.5:4789,vni=42
/// ageing: 300
/// mirror: /var/log/tapbridge/lab.pcap
/// ```
/// Unknown keys and values of the wrong type are errors naming the file, line and key.
public enum ConfigFile {
    /// One key of the file: its option (an index into `OptionTable.all`) and its values as
    /// text, each with its line (a flag's value is "true" or "false").
    struct Entry {
        var index: Int
        var key: String
        var values: [(text: String, line: Int?)]
    }

    static let portKeys = Set(["name", "mode", "mtu", "offload", "stream", "netns", "addr", "mac", "delay", "jitter", "loss", "duplicate", "corrupt", "reorder", "rate"]
                              + SharedPortOptions.list)
    static let remoteKeys = Set(["endpoint", "encap", "vni", "datapath", "name", "key", "horizon"] + SharedPortOptions.list)

    /// Largest config file read: 1 MiB (a real configuration is a few hundred bytes; a larger
    /// file is a mistake, and parsing it would take seconds and memory).
    public static let maximumBytes = 1 << 20

    static func entries(fromFile path: String) throws(StartupError) -> [Entry] {        var st = stat()
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
        return try entries(fromYAML: String(decoding: data, as: UTF8.self), file: path)
    }

    /// A YAML syntax error as `:LINE: not valid YAML: PROBLEM (CONTEXT)`, on one line (the
    /// parser's own text quotes the source over three lines, with a caret).
    static func oneLine(_ error: any Error) -> String {
        if let e = error as? YamlError {
            switch e {
            case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
                .composer(let context, let problem, let mark, _):
                return ":\(mark.line): not valid YAML: \(problem) at column \(mark.column)" + (context.map { " (\($0.text) at line \($0.mark.line))" } ?? "")
            default: break
            }
        }
        let text = "\(error)".split(separator: "\n").prefix(2).joined(separator: " ")
        return ": not valid YAML: \(text)"
    }

    /// `${NAME}` and `${NAME:-default}` in `text` replaced from `environment`, so one lab file
    /// serves several runs (`LAB=t1 tapbridge --config lab.yaml`); nil names the variable that
    /// is unset and has no default. `$$` is one `$`.
    static func expand(_ text: String, environment: [String: String]) -> Result<String, ExpansionError> {
        guard text.contains("$") else { return .success(text) }
        var out = ""
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            out += rest[..<dollar]
            let after = rest[rest.index(after: dollar)...]
            if after.hasPrefix("$") {
                out += "$"
                rest = after.dropFirst()
                continue
            }
            guard after.hasPrefix("{"), let close = after.firstIndex(of: "}") else {
                out += "$"
                rest = after
                continue
            }
            let body = after[after.index(after: after.startIndex)..<close]
            let (name, fallback): (Substring, Substring?) = body.range(of: ":-").map { (body[..<$0.lowerBound], body[$0.upperBound...]) } ?? (body, nil)
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else { return .failure(.badName(String(body))) }
            if let value = environment[String(name)], !value.isEmpty {
                out += value
            } else if let fallback {
                out += fallback
            } else {
                return .failure(.unset(String(name)))
            }
            rest = after[after.index(after: close)...]
        }
        return .success(out + rest)
    }

    enum ExpansionError: Error {
        case unset(String)
        case badName(String)
    }

    /// The entries of YAML text; `file` names it in errors.
    static func entries(fromYAML text: String, file: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(StartupError) -> [Entry] {
        func fail(_ node: Node?, _ message: String) -> StartupError {
            StartupError("config \(file)\(node?.mark.map { ":\($0.line)" } ?? ""): \(message)")
        }
        func expanded(_ text: String, _ node: Node) throws(StartupError) -> String {
            switch expand(text, environment: environment) {
            case .success(let s): return s
            case .failure(.unset(let name)): throw fail(node, "${\(name)} is not set (give it a default: ${\(name):-value})")
            case .failure(.badName(let body)): throw fail(node, "'${\(body)}': a variable is ${NAME} or ${NAME:-default}, NAME of letters, digits and _ ($$ is a $)")
            }
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw StartupError("config \(file)\(Self.oneLine(error))")
        }
        guard let root else { return [] }  // an empty file says nothing
        guard let mapping = root.mapping else { throw fail(root, "expected a mapping of option: value") }
        var entries: [Entry] = []
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else { throw fail(keyNode, "keys must be strings") }
            let line = value.mark?.line
            if key == "split-horizon" {  // older files: the flag's opposite
                guard let on = value.bool else { throw fail(value, "'\(key)' must be true or false, got '\(value.string ?? "a \(describe(value))")'") }
                entries.append(Entry(index: OptionTable.byKey["no-split-horizon"]!, key: key, values: [("\(!on)", line)]))
                continue
            }
            guard let index = OptionTable.byKey[key] else {
                // the near miss, not a list of 40 keys cut short by the error's length limit
                let near = OptionParser.nearest(key, among: OptionTable.configKeys).map { "did you mean '\($0)'? " } ?? ""
                throw fail(keyNode, OptionTable.byName[key] != nil ? "'\(key)' is for the command line only"
                    : "unknown key '\(key)' (\(near)every key is the long name of an option in tapbridge --help)")
            }
            let definition = OptionTable.all[index]
            switch definition.arity {
            case .value:
                guard case .scalar(let s) = value else { throw fail(value, "'\(key)' must be a single value, got a \(describe(value))") }
                entries.append(Entry(index: index, key: key, values: [(try expanded(s.string, value), line)]))
            case .flag:
                guard let on = value.bool else { throw fail(value, "'\(key)' must be true or false, got '\(value.string ?? "a \(describe(value))")'") }
                entries.append(Entry(index: index, key: key, values: [("\(on)", line)]))
            case .list:
                // one item alone, or a list of them
                let items = value.sequence.map(Array.init) ?? [value]
                var values: [(text: String, line: Int?)] = []
                for item in items {
                    switch (definition.name, item) {
                    case (_, .scalar(let s)):
                        values.append((try expanded(s.string, item), item.mark?.line))
                    case ("port", .mapping(let m)):
                        values.append((try expanded(try specFromMapping(m, first: "name", allowed: portKeys, key: key, fail: fail), item), item.mark?.line))
                    case ("remote", .mapping(let m)):
                        values.append((try expanded(try specFromMapping(m, first: "endpoint", allowed: remoteKeys, key: key, fail: fail), item), item.mark?.line))
                    default:
                        throw fail(item, "items of '\(key)' must be \(definition.name == "mirror-port" ? "strings" : "spec strings or mappings")")
                    }
                }
                entries.append(Entry(index: index, key: key, values: values))
            }
        }
        return entries
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
