import TapBridgeCore
import TapBridgeControl
import TapBridgeOptions

/// What the daemon knows of one port beyond what the engine forwards with (a name, a device, a
/// switching configuration): how it reaches its network, who holds or feeds it, and what is
/// kept while it is away.
struct PortEntry {
    /// How a port reaches its network (`show ports`' kind).
    enum Kind: String {
        case tap, packet, stream, remote
    }

    var kind: Kind
    /// The interface's index (TAP and packet ports): one interface is never attached twice,
    /// and `show ports` names it after a rename.
    var interfaceIndex: Int32? = nil
    /// Offloads were asked for on this port.
    var offloadsOn = true
    /// A TAP reached through a packet socket because this program holds it:
    /// `qemu-system-x86, pid 812`.
    var heldBy: String? = nil
    /// Who is on the other end of a stream port: `unix:/run/lab/vm.sock, pid 812, uid 1000`.
    var peer: String? = nil
    /// Its emulated link, outermost around its device (every port but a remote has one).
    var link: ImpairedDevice? = nil
    /// The `--stream-listen` socket an accepted stream port came through.
    var origin: StreamListener? = nil
    /// The spec that attaches it again when its interface or its connection comes back (a
    /// port on an interface tapbridge did not make, a `stream=` port); nil: it goes for good
    /// with its device.
    var returns: PortSpec? = nil
    /// Set while the port is away (not in the engine), waiting for its interface or its
    /// connection: the spec that brings it back, and the ifindex an attach failed on (0:
    /// none), so that failure is logged once per appearance.
    var absence: (spec: PortSpec, failedIndex: Int32)? = nil
    /// What it counted before it was last away: its counters only grow, absences or not.
    var carried = PortCounters()
    /// Storm-control drops at the last log line, and when that was (`logStormDrops`).
    var storm: (count: UInt64, log: LogThrottle) = (0, LogThrottle())

    init(kind: Kind) { self.kind = kind }
}

/// The daemon's ports by name, present or away: one entry each (`PortEntry`), and the index
/// of those on an interface, so that finding one is no scan. Shared by the daemon and its
/// remotes (which add and remove their ports themselves); touched on the loop only.
final class PortDirectory {
    private(set) var entries: [String: PortEntry] = [:]
    private var byInterface: [Int32: String] = [:]
    /// The names of those away, waiting to come back.
    private(set) var absent: Set<String> = []
    /// The emulated links that have something to do (an impairment, or frames still queued):
    /// the event loop asks only these when the next frame is due, not every port's.
    private(set) var busyLinks: [ObjectIdentifier: ImpairedDevice] = [:]

    subscript(name: String) -> PortEntry? { entries[name] }

    /// Port `name` joined as `kind`, behind `link`; what it kept while away (its counts, its
    /// spec to come back with) stays.
    func joined(_ name: String, kind: PortEntry.Kind, interfaceIndex: Int32? = nil, offloadsOn: Bool = true, peer: String? = nil,
                link: ImpairedDevice? = nil) {
        var entry = entries[name] ?? PortEntry(kind: kind)
        if let old = entry.interfaceIndex, byInterface[old] == name { byInterface[old] = nil }
        entry.kind = kind
        entry.interfaceIndex = interfaceIndex
        entry.offloadsOn = offloadsOn
        entry.heldBy = nil
        entry.peer = peer
        entry.absence = nil
        absent.remove(name)
        if let old = entry.link { busyLinks[ObjectIdentifier(old)] = nil }
        entry.link = link
        entries[name] = entry
        if let interfaceIndex { byInterface[interfaceIndex] = name }
        if let link { linkChanged(link) }
    }

    /// Changes port `name`'s entry, if it has one.
    func update(_ name: String, _ change: (inout PortEntry) -> Void) {
        guard var entry = entries[name] else { return }
        change(&entry)
        entries[name] = entry
    }

    /// Port `name` left the engine and waits to come back with `spec` (keeping its counts,
    /// `carried` added to them).
    func away(_ name: String, spec: PortSpec, carried: PortCounters? = nil, kind: PortEntry.Kind) {
        var entry = entries[name] ?? PortEntry(kind: kind)
        left(&entry, name)
        entry.absence = (spec, 0)
        absent.insert(name)
        if let carried { entry.carried.add(carried) }
        entries[name] = entry
    }

    /// Port `name` is gone for good: its entry goes.
    func remove(_ name: String) {
        guard var entry = entries.removeValue(forKey: name) else { return }
        absent.remove(name)
        left(&entry, name)
    }

    /// What goes when a port leaves the engine: its interface's index and its link.
    private func left(_ entry: inout PortEntry, _ name: String) {
        if let index = entry.interfaceIndex, byInterface[index] == name { byInterface[index] = nil }
        entry.interfaceIndex = nil
        if let link = entry.link { busyLinks[ObjectIdentifier(link)] = nil }
        entry.link = nil
        entry.heldBy = nil
    }

    /// The port on interface `index`, if one is.
    func name(onInterface index: Int32) -> String? { byInterface[index] }

    /// The ports waiting to come back, by name.
    var absentNames: [String] { absent.sorted() }

    /// `link`'s impairment or queue changed: it is asked for its next departure while it has
    /// something to do.
    func linkChanged(_ link: ImpairedDevice) {
        busyLinks[ObjectIdentifier(link)] = link.emulator.impairment.isNone && link.nextDeparture == nil ? nil : link
    }

    /// Every entry goes (at exit).
    func removeAll() {
        entries = [:]
        byInterface = [:]
        absent = []
        busyLinks = [:]
    }

    /// Forgets the links that have nothing left to do (called after their due frames left).
    func settleLinks() {
        for (key, link) in busyLinks where link.emulator.impairment.isNone && link.nextDeparture == nil { busyLinks[key] = nil }
    }
}
