import TapBridgeCore
import TapBridgeDevices

/// The run form's command line and config file, read through `OptionTable` into `Settings`:
/// one linear pass over the arguments (20,000 `--port`s parse in milliseconds), the file's
/// entries first, then the command line's, which win (a list given on the command line
/// replaces the file's list).
public enum OptionParser {
    public enum Outcome: Sendable {
        case run(Settings)
        case help
        case version
    }

    /// A usage error: one line, exit status 64.
    public struct Failure: Error, Sendable {
        public var message: String
        public init(message: String) { self.message = message }
    }

    public static func parse(_ arguments: [String]) throws(Failure) -> Outcome {
        try parse(arguments) { path throws(StartupError) in try ConfigFile.entries(fromFile: path) }
    }

    /// `parse` with `--config FILE` whose text is `yaml` (read from nowhere): what a config
    /// file of that text and these arguments make (the config fuzz target's way in).
    public static func parse(_ arguments: [String], configText yaml: String, environment: [String: String] = [:]) throws(Failure) -> Outcome {
        try parse(["--config", "fuzz.yaml"] + arguments) { file throws(StartupError) in try ConfigFile.entries(fromYAML: yaml, file: file, environment: environment) }
    }

    /// `parse`, reading the `--config` file through `readConfig`.
    static func parse(_ arguments: [String], readConfig: (String) throws(StartupError) -> [ConfigFile.Entry]) throws(Failure) -> Outcome {
        // (definition, value, the name as written)
        var given: [(index: Int, value: String, written: String)] = []
        given.reserveCapacity(arguments.count)
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            i += 1
            if a == "-h" || a == "--help" { return .help }
            if a == "--version" { return .version }
            guard a.hasPrefix("--"), a.count > 2 else { throw Failure(message: "unexpected argument '\(a)'") }
            let parts = a.dropFirst(2).split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            guard let index = OptionTable.byName[name] else { throw Failure(message: "Unknown option '--\(name)'\(suggestion(for: name))") }
            let d = OptionTable.all[index]
            if d.arity == .flag {
                if parts.count == 2 { throw Failure(message: "--\(name) takes no value, got '\(parts[1])'") }
                given.append((index, "true", "--\(name)"))
                continue
            }
            if parts.count == 2 {
                given.append((index, String(parts[1]), "--\(name)"))
            } else if i < arguments.count, !arguments[i].hasPrefix("--") {
                given.append((index, arguments[i], "--\(name)"))
                i += 1
            } else {
                throw Failure(message: "--\(name) needs a value (<\(d.valueName)>)")
            }
        }
        var settings = Settings()
        if let path = given.last(where: { OptionTable.all[$0.index].name == "config" })?.value {
            do {
                for entry in try readConfig(path) { try apply(entry, to: &settings, file: path) }
            } catch {
                throw Failure(message: error.message)
            }
        }
        var replaced = Set<Int>()
        for g in given {
            let d = OptionTable.all[g.index]
            if let clear = d.clear, replaced.insert(g.index).inserted { clear(&settings) }
            do {
                try d.apply(&settings, g.value)
            } catch {
                throw Failure(message: error.message(flag: g.written))
            }
        }
        do {
            try settings.validate()
        } catch {
            throw Failure(message: error.reason)
        }
        return .run(settings)
    }

    /// Applies one entry of a config file; errors name the file, line and key.
    static func apply(_ entry: ConfigFile.Entry, to settings: inout Settings, file: String) throws(StartupError) {
        let d = OptionTable.all[entry.index]
        for value in entry.values {
            do {
                try d.apply(&settings, value.text)
            } catch {
                throw StartupError("config \(file)\(value.line.map { ":\($0)" } ?? ""): '\(entry.key)' \(error.isComplete ? ": " : "")\(error.reason)")
            }
        }
    }

    /// ` (did you mean '--ageing'?)` for a near miss, or nothing.
    static func suggestion(for name: String) -> String {
        nearest(name, among: OptionTable.byName.keys).map { " (did you mean '--\($0)'?)" } ?? ""
    }

    /// The one of `names` nearest to `name` if it is a near miss (a quarter of its letters
    /// off; at least one, two from four letters on, so that a swap like `prot` is one), else nil.
    static func nearest(_ name: String, among names: some Sequence<String>) -> String? {
        let best = names.map { ($0, distance($0, name)) }.min { $0.1 < $1.1 || ($0.1 == $1.1 && $0.0 < $1.0) }
        guard let best, best.1 <= max(name.count >= 4 ? 2 : 1, name.count / 4) else { return nil }
        return best.0
    }

    /// Levenshtein distance (names are short).
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard a.count < 64, b.count < 64 else { return Int.max }
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in stride(from: 1, through: b.count, by: 1) {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }

    // MARK: Printing

    /// The settings as a config file, in the table's order: valid `--config` input.
    public static func yaml(_ settings: Settings) -> String {
        func quoted(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        var lines: [String] = []
        for d in OptionTable.all where !d.commandLineOnly {
            // a `$` in a value is written `$$`, which the file's ${NAME} expansion reads as one `$`
            // (fuzz-specs found values with a `$` that did not print back to themselves)
            let values = d.render(settings).map { $0.replacingOccurrences(of: "$", with: "$$") }.map { d.quoted ? quoted($0) : $0 }
            switch d.arity {
            case .list: lines.append(values.isEmpty ? "\(d.name): []" : "\(d.name):\n" + values.map { "  - \($0)" }.joined(separator: "\n"))
            case .flag, .value: if let v = values.first { lines.append("\(d.name): \(v)") }
            }
        }
        return lines.joined(separator: "\n")
    }

    /// `--help`: the overview, then each group's options with their defaults, wrapped to 80
    /// columns.
    public static func help(abstract: String, discussion: String, usage: [String]) -> String {
        var out = "OVERVIEW: \(abstract)\n\n\(discussion)\n\n"
        out += "USAGE: " + usage.joined(separator: "\n       ") + "\n"
        for group in OptionDefinition.Group.allCases {
            out += "\n\(group.rawValue):\n"
            for d in OptionTable.all where d.group == group {
                let names = ([d.name] + d.aliases).map { d.arity == .flag ? "--\($0)" : "--\($0) <\(d.valueName)>" }.joined(separator: ", ")
                var text = d.help + (d.defaultValue.map { " (default: \($0))" } ?? "")
                if !d.discussion.isEmpty { text += "\n" + d.discussion }
                out += column(names, text)
            }
        }
        out += "\nOTHER:\n" + column("--version", "Show the version.") + column("-h, --help", "Show help information.")
        return out
    }

    /// `  NAMES   text...` with the text wrapped at 80 columns, indented 26.
    static func column(_ names: String, _ text: String) -> String {
        let indent = String(repeating: " ", count: 26)
        var lines: [String] = []
        for paragraph in text.split(separator: "\n") { lines += wrap(String(paragraph), width: 80 - 26) }
        let head = "  " + names
        var out = head.count < 25 ? head + String(repeating: " ", count: 26 - head.count) + (lines.first ?? "") + "\n" : head + "\n" + indent + (lines.first ?? "") + "\n"
        for line in lines.dropFirst() { out += indent + line + "\n" }
        return out
    }

    static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty, line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }
}
