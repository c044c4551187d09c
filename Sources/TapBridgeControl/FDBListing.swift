import Foundation
public import TapBridgeCore

/// `tapbridge show fdb` on the client side: the bridge's streamed answer read piece by piece
/// into compact entries, sorted by VLAN then MAC, and printed in bounded pieces.
///
/// A table of two million MACs is a 200 MB answer. Decoding it as one document and sorting
/// with a comparator that parsed MAC strings took 272 s and 1.5 GB; here each entry is parsed
/// once into 24 bytes (the MAC as a number, the port as an index into the port names seen),
/// the sort compares integers, and output leaves in 1 MiB writes:
/// ```
///   {"fdb":[ {entry},{entry},... ],"ok":true}      ──► feed(piece) ... feed(piece)
///     each {entry}: age_seconds, mac, port, static, vlan (any order)  ──► Entry
///   anything else ({"error":...,"ok":false}) ──► decoded whole, as any answer
/// ```
public struct FDBListing {
    public struct Entry {
        public var mac: UInt64
        public var age: Double
        public var port: UInt32
        public var vlan: UInt16
        public var isStatic: Bool
    }

    public private(set) var entries: [Entry] = []
    /// Port names by index (`Entry.port`).
    public private(set) var portNames: [String] = []
    var portIndex: [String: UInt32] = [:]
    /// Bytes of the answer that could not be used yet: the start of the answer (until its
    /// entry list opens), or an entry cut between two pieces.
    var pending: [UInt8] = []
    enum State { case start, entries, end, other }
    var state = State.start
    static let opening = Array(#"{"fdb":["#.utf8)

    public init() {}

    /// Whether the answer was not an entry list (an error): `other` holds it whole.
    public var isOther: Bool { state == .other }
    public var other: [UInt8] { state == .other ? pending : [] }
    /// The list was closed (`]`): the answer was complete.
    public var isComplete: Bool { state == .end }

    /// Takes the next piece of the answer. Throws on an entry that does not parse.
    public mutating func feed(_ piece: ArraySlice<UInt8>) throws(StartupError) {
        switch state {
        case .end: return
        case .other:
            pending += piece
            return
        case .start:
            pending += piece
            if pending.count < Self.opening.count { return }
            guard pending.starts(with: Self.opening) else {
                state = .other
                return
            }
            state = .entries
            let rest = pending[Self.opening.count...]
            pending = []
            try scan(rest)
        case .entries:
            if pending.isEmpty {
                try scan(piece)
            } else {
                pending += piece
                let all = pending
                pending = []
                try scan(all[...])
            }
        }
    }

    /// Takes the complete entries of `bytes`; keeps a cut one in `pending`.
    mutating func scan(_ bytes: ArraySlice<UInt8>) throws(StartupError) {
        var i = bytes.startIndex
        while i < bytes.endIndex {
            switch bytes[i] {
            case UInt8(ascii: ","), UInt8(ascii: " "), UInt8(ascii: "\n"):
                i += 1
            case UInt8(ascii: "]"):
                state = .end
                return
            case UInt8(ascii: "{"):
                guard let end = Self.objectEnd(bytes, from: i) else {
                    pending = Array(bytes[i...])
                    return
                }
                try parseEntry(bytes[i...end])
                i = end + 1
            default:
                throw StartupError("unreadable show fdb answer near byte \(i)")
            }
        }
    }

    /// The index of the `}` closing the object at `start`, or nil if it is not all here.
    static func objectEnd(_ bytes: ArraySlice<UInt8>, from start: Int) -> Int? {
        var inString = false, escaped = false
        var i = start + 1
        while i < bytes.endIndex {
            let b = bytes[i]
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
            } else if b == UInt8(ascii: "\"") {
                inString = true
            } else if b == UInt8(ascii: "}") {
                return i
            }
            i += 1
        }
        return nil
    }

    /// One flat entry object: `"key":value` pairs, values strings, numbers or booleans.
    mutating func parseEntry(_ o: ArraySlice<UInt8>) throws(StartupError) {
        var entry = Entry(mac: 0, age: 0, port: 0, vlan: 0, isStatic: false)
        var seen = 0
        var i = o.startIndex + 1
        while i < o.endIndex - 1 {
            guard o[i] == UInt8(ascii: "\""), let keyEnd = o[(i + 1)...].firstIndex(of: UInt8(ascii: "\"")), keyEnd + 1 < o.endIndex,
                o[keyEnd + 1] == UInt8(ascii: ":")
            else { throw StartupError("unreadable show fdb entry: \(String(decoding: o.prefix(120), as: UTF8.self))") }
            let key = o[(i + 1)..<keyEnd]
            var v = keyEnd + 2
            let value: ArraySlice<UInt8>
            var text: String? = nil
            if o[v] == UInt8(ascii: "\"") {
                var s = v + 1, escaped = false
                while s < o.endIndex, escaped || o[s] != UInt8(ascii: "\"") {
                    escaped = !escaped && o[s] == UInt8(ascii: "\\")
                    s += 1
                }
                value = o[(v + 1)..<s]
                if value.contains(UInt8(ascii: "\\")) {
                    text = (try? JSONDecoder().decode(String.self, from: Data(o[v...s]))) ?? String(decoding: value, as: UTF8.self)
                }
                v = s + 1
            } else {
                var s = v
                while s < o.endIndex - 1, o[s] != UInt8(ascii: ",") { s += 1 }
                value = o[v..<s]
                v = s
            }
            switch Array(key) {
            case Array("mac".utf8):
                guard let mac = Self.mac(value) else { throw StartupError("unreadable MAC in show fdb: \(String(decoding: value, as: UTF8.self))") }
                entry.mac = mac
                seen |= 1
            case Array("vlan".utf8):
                guard let n = UInt16(String(decoding: value, as: UTF8.self)) else { throw StartupError("unreadable VLAN in show fdb") }
                entry.vlan = n
                seen |= 2
            case Array("port".utf8):
                let name = text ?? String(decoding: value, as: UTF8.self)
                if let k = portIndex[name] {
                    entry.port = k
                } else {
                    entry.port = UInt32(portNames.count)
                    portIndex[name] = entry.port
                    portNames.append(name)
                }
                seen |= 4
            case Array("age_seconds".utf8):
                entry.age = Double(String(decoding: value, as: UTF8.self)) ?? 0
            case Array("static".utf8):
                entry.isStatic = value.elementsEqual("true".utf8)
            default:
                break  // a field added later: the schema only grows
            }
            i = v
            if i < o.endIndex - 1, o[i] == UInt8(ascii: ",") { i += 1 }
        }
        guard seen == 7 else { throw StartupError("a show fdb entry without mac, vlan or port") }
        entries.append(entry)
    }

    /// `02:00:00:00:00:01` as a number (big-endian order of its bytes).
    static func mac(_ s: ArraySlice<UInt8>) -> UInt64? {
        guard s.count == 17 else { return nil }
        var value: UInt64 = 0
        var k = 0
        for b in s {
            if k % 3 == 2 {
                guard b == UInt8(ascii: ":") else { return nil }
            } else {
                let digit: UInt8
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = b - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = b - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = b - UInt8(ascii: "A") + 10
                default: return nil
                }
                value = value << 4 | UInt64(digit)
            }
            k += 1
        }
        return value
    }

    /// Sorts by VLAN, then MAC.
    public mutating func sort() {
        entries.sort { ($0.vlan, $0.mac) < ($1.vlan, $1.mac) }
    }

    // MARK: Output

    static let hex = Array("0123456789abcdef".utf8)

    static func appendMAC(_ mac: UInt64, to out: inout [UInt8]) {
        for k in (0..<6).reversed() {
            let byte = UInt8(truncatingIfNeeded: mac >> (UInt64(k) * 8))
            out.append(hex[Int(byte >> 4)])
            out.append(hex[Int(byte & 0xF)])
            if k > 0 { out.append(UInt8(ascii: ":")) }
        }
    }

    static func appendPadded(_ bytes: some Collection<UInt8>, width: Int, to out: inout [UInt8]) {
        out += bytes
        if bytes.count < width { out += repeatElement(UInt8(ascii: " "), count: width - bytes.count) }
    }

    /// The text table (`MAC VLAN PORT AGE TYPE`, left-aligned columns two spaces apart, as the
    /// other `show` tables), handed to `write` in pieces of about 1 MiB.
    public func text(_ write: ([UInt8]) -> Void) {
        let names = portNames.map { Array($0.utf8) }
        let vlanWidth = max(4, entries.lazy.map { $0.vlan >= 1000 ? 4 : $0.vlan >= 100 ? 3 : $0.vlan >= 10 ? 2 : 1 }.max() ?? 0)
        // (every name was interned from an entry; the widest age is the oldest one's)
        let portWidth = max(4, names.lazy.map(\.count).max() ?? 0)
        let oldest = entries.lazy.filter { !$0.isStatic }.map(\.age).max()
        let ageWidth = max(3, oldest.map { Self.age($0).count } ?? 1)
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20 + 256)
        Self.appendPadded("MAC".utf8, width: 17, to: &out)
        out += Array("  ".utf8)
        Self.appendPadded("VLAN".utf8, width: vlanWidth, to: &out)
        out += Array("  ".utf8)
        Self.appendPadded("PORT".utf8, width: portWidth, to: &out)
        out += Array("  ".utf8)
        Self.appendPadded("AGE".utf8, width: ageWidth, to: &out)
        out += Array("  TYPE\n".utf8)
        for e in entries {
            Self.appendMAC(e.mac, to: &out)
            out += [UInt8(ascii: " "), UInt8(ascii: " ")]
            Self.appendPadded(String(e.vlan).utf8, width: vlanWidth, to: &out)
            out += [UInt8(ascii: " "), UInt8(ascii: " ")]
            Self.appendPadded(names[Int(e.port)], width: portWidth, to: &out)
            out += [UInt8(ascii: " "), UInt8(ascii: " ")]
            Self.appendPadded(e.isStatic ? Array("-".utf8) : Self.age(e.age), width: ageWidth, to: &out)
            out += Array(e.isStatic ? "  static\n".utf8 : "  learned\n".utf8)
            if out.count >= 1 << 20 {
                write(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        if !out.isEmpty { write(out) }
    }

    /// An age as `%.1fs`.
    static func age(_ seconds: Double) -> [UInt8] {
        let tenths = Int64((max(seconds, 0) * 10).rounded())
        return Array("\(tenths / 10).\(tenths % 10)s".utf8)
    }

    /// The entries as a pretty JSON array (the layout of the other `--json` outputs: two-space
    /// indents, `"key" : value`, keys sorted), handed to `write` in pieces of about 1 MiB.
    public func json(_ write: ([UInt8]) -> Void) {
        guard !entries.isEmpty else { return write(Array("[]\n".utf8)) }
        var out: [UInt8] = Array("[\n".utf8)
        out.reserveCapacity(1 << 20 + 256)
        var names: [[UInt8]] = []
        for name in portNames {
            var quoted: [UInt8] = []
            ControlCoding.appendString(name, to: &quoted)
            names.append(quoted)
        }
        for (k, e) in entries.enumerated() {
            out += Array("  {\n    \"age_seconds\" : ".utf8)
            out += Array((e.age == e.age.rounded() ? String(Int64(e.age)) : String(e.age)).utf8)
            out += Array(",\n    \"mac\" : \"".utf8)
            Self.appendMAC(e.mac, to: &out)
            out += Array("\",\n    \"port\" : ".utf8)
            out += names[Int(e.port)]
            out += Array(",\n    \"static\" : ".utf8)
            out += Array((e.isStatic ? "true" : "false").utf8)
            out += Array(",\n    \"vlan\" : ".utf8)
            out += Array(String(e.vlan).utf8)
            out += Array(k == entries.count - 1 ? "\n  }\n".utf8 : "\n  },\n".utf8)
            if out.count >= 1 << 20 {
                write(out)
                out.removeAll(keepingCapacity: true)
            }
        }
        out += Array("]\n".utf8)
        write(out)
    }
}
