public import TapBridgeCore

/// Key material read from a key file, shared by every remote whose encapsulation takes that
/// file (a sealed key's ring also holds the sessions and replay windows heard under it).
public protocol EncapsulationKey: AnyObject {}

/// What an encapsulation is, declared once, by the type that implements it: everything the
/// options, the specs, the control protocol and the remotes ask about an encapsulation is
/// asked here, never by its name. A new one is its own file (its format, this conformance and
/// its `Encapsulation` name) and one line in `Encapsulations.all`.
public protocol EncapsulationKind {
    /// Its name (`encap=NAME`).
    static var encapsulation: Encapsulation { get }
    /// What `--help` says of it after its name: `(RFC 7348, default)`.
    static var summary: String { get }
    /// Whether its datagrams carry a VNI (so `vni=` applies, and `show ports` shows it).
    static var carriesVNI: Bool { get }
    /// Its remotes' horizon when none is given: true, a mesh (a frame from one such remote is
    /// never sent to another: bridges that all reach each other); false, endpoints (VMs).
    static var meshByDefault: Bool { get }
    /// Whether `datapath=kernel` (a Linux vxlan device) can carry it.
    static var kernelDatapath: Bool { get }
    /// The most bytes its datagrams carry in front of a frame (`EncapsulationFormat.headerLength`
    /// of its data messages): the largest among the registered ones sets the receive lead.
    static var frameOffset: Int { get }
    /// Whether it needs a key file (`key=` or `--key-file`).
    static var needsKey: Bool { get }
    /// Whether `--accept-peers` can admit unknown senders in it (false: each peer is named).
    static var admitsStrangers: Bool { get }
    /// The options a remote spec takes for it beyond encap, key and vni (`peer`, `psk`).
    static var remoteOptions: [String] { get }
    /// Why `value` is wrong for `option` (one of `remoteOptions`), or nil: at parse time.
    static func check(option: String, value: String) -> String?
    /// Why a remote with these options cannot run (one it needs is missing), or nil.
    static func missingOptions(_ options: [String: String]) -> String?
    /// Reads a key file with a remote's options (for a kind that needs a key).
    static func key(file: String, options: [String: String]) throws(StartupError) -> any EncapsulationKey
    /// The format of one peer, with the key (for a kind that needs one); `probing`: the
    /// admission's, which checks a stranger's datagram without recording it.
    static func format(vni: VNI, key: (any EncapsulationKey)?, probing: Bool) -> any EncapsulationFormat
}

extension EncapsulationKind {
    public static var needsKey: Bool { false }
    public static var admitsStrangers: Bool { true }
    public static var remoteOptions: [String] { [] }
    public static func check(option: String, value: String) -> String? { nil }
    public static func missingOptions(_ options: [String: String]) -> String? { nil }
    public static func key(file: String, options: [String: String]) throws(StartupError) -> any EncapsulationKey {
        throw StartupError("encap=\(encapsulation) takes no key (key= is for an encapsulation that needs one)")
    }
}

/// The registry: every encapsulation the UDP device speaks.
public enum Encapsulations {
    /// Every encapsulation, in the order `--help` lists them: one line each.
    public static var all: [any EncapsulationKind.Type] { [VXLANFormat.self, RawFormat.self, SealedFormat.self, GeneveFormat.self] }

    /// The kind named `encapsulation` (every `Encapsulation` in use comes from `named`).
    public static func kind(_ encapsulation: Encapsulation) -> any EncapsulationKind.Type {
        guard let kind = all.first(where: { $0.encapsulation == encapsulation }) else { preconditionFailure("encapsulation \(encapsulation) is not registered") }
        return kind
    }

    /// The encapsulation called `name`, if one is registered.
    public static func named(_ name: String) -> Encapsulation? {
        for kind in all where kind.encapsulation.name == name { return kind.encapsulation }
        return nil
    }

    /// How far before a batch slot a datagram is read (the largest `frameOffset`), so that the
    /// frame of every registered encapsulation lands in the slot or its headroom, never copied.
    public static let receiveLead = all.map { $0.frameOffset }.max() ?? 0

    /// Every option some encapsulation takes on a remote (`peer`, `psk`).
    public static var remoteOptions: [String] { all.flatMap { $0.remoteOptions } }

    /// `--help`'s words on them: `encap=vxlan (RFC 7348, default), raw (...) or sealed (...)`.
    public static var described: String {
        let each = all.map { "\($0.encapsulation.name) \($0.summary)" }
        return "encap=" + (each.count > 1 ? each.dropLast().joined(separator: ", ") + " or " + each[each.count - 1] : each.joined())
    }

    /// Their names for a syntax line: `vxlan|raw|sealed`.
    public static var choices: String { all.map { $0.encapsulation.name }.joined(separator: "|") }

    /// Their names for a message: `vxlan, raw or sealed`.
    public static func names() -> String { names { _ in true } }

    /// The names of those for which `holds` is true, for a message.
    public static func names(where holds: (any EncapsulationKind.Type) -> Bool) -> String {
        var n: [String] = []
        for kind in all where holds(kind) { n.append(kind.encapsulation.name) }
        return n.count > 1 ? n.dropLast().joined(separator: ", ") + " or " + n[n.count - 1] : n.joined()
    }
}

extension Encapsulation {
    /// What it is (the registry's entry).
    public var kind: any EncapsulationKind.Type { Encapsulations.kind(self) }
}

extension VXLANFormat: EncapsulationKind {
    public static var encapsulation: Encapsulation { .vxlan }
    public static var summary: String { "(RFC 7348, default)" }
    public static var carriesVNI: Bool { true }
    public static var meshByDefault: Bool { true }
    public static var kernelDatapath: Bool { true }
    public static var frameOffset: Int { VXLANHeader.length }
    public static func format(vni: VNI, key: (any EncapsulationKey)?, probing: Bool) -> any EncapsulationFormat { VXLANFormat(vni: vni) }
}

extension RawFormat: EncapsulationKind {
    public static var encapsulation: Encapsulation { .raw }
    public static var summary: String { "(one Ethernet frame per datagram, as QEMU's -netdev dgram speaks)" }
    public static var carriesVNI: Bool { false }
    public static var meshByDefault: Bool { false }
    public static var kernelDatapath: Bool { false }
    public static var frameOffset: Int { 0 }
    public static func format(vni: VNI, key: (any EncapsulationKey)?, probing: Bool) -> any EncapsulationFormat { RawFormat() }
}

/// What a remote's datagrams are made of: its encapsulation, its VNI and, for one that needs
/// it, its key. Each peer gets its own format from it (`make`).
public struct WireFormat {
    public let encapsulation: Encapsulation
    public let vni: VNI
    public let keyring: (any EncapsulationKey)?

    /// Throws for an encapsulation that needs a key, without one.
    public init(_ encapsulation: Encapsulation, vni: VNI, keyring: (any EncapsulationKey)? = nil) throws(StartupError) {
        guard !encapsulation.kind.needsKey || keyring != nil else {
            throw StartupError("encap=\(encapsulation) needs this host's key: --key-file PATH, or key=PATH on the remote (tapbridge genkey writes one)")
        }
        self.encapsulation = encapsulation
        self.vni = vni
        self.keyring = keyring
    }

    /// One that needs no key.
    public static func plain(_ encapsulation: Encapsulation, vni: VNI) -> WireFormat {
        precondition(!encapsulation.kind.needsKey, "encap=\(encapsulation) needs its key")
        return try! WireFormat(encapsulation, vni: vni)
    }

    /// A peer's format (`probing`: the admission's, which checks a stranger's datagram
    /// without recording it).
    public func make(probing: Bool = false) -> any EncapsulationFormat {
        encapsulation.kind.format(vni: vni, key: keyring, probing: probing)
    }
}
