import CTapBridge
import Foundation
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// Turns a `--port` spec into a port of the engine: a TAP, or a packet socket when the
/// interface cannot be one here; what the port is (`Joined`) goes to the daemon's
/// `PortDirectory`, the engine gets its name, device and configuration.
enum PortFactory {
    /// A port's device, opened and not yet joined.
    struct Opened {
        let spec: PortSpec
        let device: any PortDevice
        let kind: PortEntry.Kind
        /// The interface's index (TAP and packet ports).
        let interfaceIndex: Int32?
        let offload: Bool
        /// The port is on an interface tapbridge did not make (a packet socket, a TAP that
        /// existed): it comes back when its interface does.
        let comesBack: Bool
        /// What the start line says of it.
        var note: String
    }

    /// A port that joined the engine, and what it is.
    struct Joined {
        let spec: PortSpec
        let kind: PortEntry.Kind
        var interfaceIndex: Int32? = nil
        var offloadsOn = true
        /// Who is on the other end (a stream port).
        var peer: String? = nil
        /// Its emulated link, outermost around its device.
        let link: ImpairedDevice
        /// It comes back with its interface or its connection.
        let comesBack: Bool
    }

    /// Opens `spec` and adds it to `engine` (its device wrapped by `decorate`: the mirror), a
    /// `netns=` port's TAP placed in its namespace first, at once (start-up). `directory`: the
    /// ports already there (one interface is never attached twice).
    static func attach(_ spec: PortSpec, bridge: String, to engine: ForwardingEngine, directory: PortDirectory, offload defaultOffload: Bool,
                       defaultMTU: (mtu: Int, why: String)?, decorate: (any PortDevice) -> any PortDevice, mirror: MirrorInterface?,
                       namespaces: Namespaces, seed: UInt64, logger: Logger) throws(StartupError) -> Joined {
        var opened = try open(spec, bridge: bridge, directory: directory, offload: defaultOffload, defaultMTU: defaultMTU, mirror: mirror)
        do throws(StartupError) { opened.note += try namespaces.placeNow(spec) } catch { throw StartupError("port \(spec.name): \(error.message)") }
        return join(opened, to: engine, decorate: decorate, seed: seed, logger: logger)
    }

    /// Opens `spec`'s device. `mirror`: the interfaces the mirror injects into, which no port
    /// may be. `defaultMTU`: the MTU a TAP created here gets without `mtu=` (what fits the
    /// remotes' paths), and why.
    static func open(_ spec: PortSpec, bridge: String, directory: PortDirectory, offload defaultOffload: Bool, defaultMTU: (mtu: Int, why: String)?,
                     mirror: MirrorInterface?) throws(StartupError) -> Opened {
        // a TAP removed just before (port del) is gone once its descriptor is closed
        DescriptorCloser.finishPending(spec.name)
        // One interface attached twice (by an altname, or by its new name after a rename)
        // would loop every broadcast between its two ports: refuse it.
        let existing = ctb_if_index(spec.name)
        if existing > 0, let other = directory.name(onInterface: existing) {
            throw StartupError("port \(spec.name): that interface (ifindex \(existing)) is already attached as port \(other)")
        }
        if let mirror, let problem = mirror.conflict(withPort: spec.name, index: existing) { throw StartupError("port \(spec.name): \(problem)") }
        let offload = spec.offload ?? defaultOffload
        do throws(StartupError) {
            let (device, kind, index, existed, note) = try open(spec, offload: offload, defaultMTU: defaultMTU, mac: spec.mac ?? stableMAC(bridge: bridge, port: spec.name))
            if spec.namespace != nil, kind != .tap || existed {
                throw StartupError("netns= moves a TAP tapbridge makes, and an interface \(spec.name) exists here already; pick another name, or attach that one without netns=")
            }
            return Opened(spec: spec, device: device, kind: kind, interfaceIndex: index, offload: offload, comesBack: existed, note: note)
        } catch {
            throw StartupError("port \(spec.name): \(error.message)")
        }
    }

    /// Adds an opened port to the engine and says so.
    static func join(_ opened: Opened, to engine: ForwardingEngine, decorate: (any PortDevice) -> any PortDevice, seed: UInt64,
                     logger: Logger) -> Joined {
        let link = join(opened.device, opened.spec, to: engine, decorate: decorate, seed: seed)
        announce(opened.spec, opened.note, logger: logger)
        return Joined(spec: opened.spec, kind: opened.kind, interfaceIndex: opened.interfaceIndex, offloadsOn: opened.offload, link: link,
                      comesBack: opened.kind == .packet || opened.comesBack)
    }

    /// A stream connection as port `spec.name`: one `stream=` made (`how`: "stream to
    /// ENDPOINT, connected"; it `comesBack`: connected again when the connection ends) or a
    /// listener accepted ("stream from PEER").
    static func attachStream(_ device: StreamDevice, _ spec: PortSpec, how: String, comesBack: Bool, to engine: ForwardingEngine,
                             decorate: (any PortDevice) -> any PortDevice, seed: UInt64, logger: Logger) -> Joined {
        let link = join(device, spec, to: engine, decorate: decorate, seed: seed)
        announce(spec, how, logger: logger)
        return Joined(spec: spec, kind: .stream, peer: device.peer, link: link, comesBack: comesBack)
    }

    /// The start line of a port that joined: what it is (`how`), its VLANs and its link.
    static func announce(_ spec: PortSpec, _ how: String, logger: Logger) {
        logger.info("port \(spec.name): \(how), \(describe(spec.configuration))\(spec.impairment.isNone ? "" : ", link \(spec.impairment)")")
    }

    /// Adds `device` to the engine as port `spec.name`, behind the mirror (`decorate`) and the emulated
    /// link, outermost (the mirror and the device see frames as they leave it): every port has
    /// one, so `port set` can give it a bad link at run time; without an impairment a frame
    /// passes straight through.
    private static func join(_ device: any PortDevice, _ spec: PortSpec, to engine: ForwardingEngine,
                             decorate: (any PortDevice) -> any PortDevice, seed: UInt64) -> ImpairedDevice {
        let impaired = ImpairedDevice(decorate(device), impairment: spec.impairment, seed: seed ^ fnv1a(spec.name), clock: EventLoop.now)
        engine.addPort(named: spec.name, configuration: spec.configuration, on: impaired)
        return impaired
    }

    /// A port's own seed from the bridge's: the same name gets the same choices.
    static func fnv1a(_ name: String) -> UInt64 {
        name.utf8.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
    }

    static func describe(_ c: PortConfiguration) -> String {
        "\(c.vlanMode)" + (c.learning ? "" : ", learning off") + (c.flooding ? "" : ", flooding off") + (c.stormLimit.map { ", storm \($0) frames/s" } ?? "")
    }

    /// The MAC a TAP tapbridge makes gets without `mac=`: the same on every start of this
    /// bridge on this machine (systemd's `MACAddressPolicy=persistent`), so a restart does not
    /// cost its hosts their neighbours' ARP entries: a locally administered unicast address
    /// from a hash of the machine's id (`/etc/machine-id`; two hosts running the same recipe
    /// must differ), the bridge's name and the port's.
    static func stableMAC(bridge: String, port: String) -> MACAddress {
        let hash = fnv1a("\(machineID)\u{0}\(bridge)\u{0}\(port)")
        // (fold the 64 bits into 48, then: locally administered, unicast)
        let folded = (hash ^ (hash >> 48)) & 0xFFFF_FFFF_FFFF
        return MACAddress(rawValue: folded & ~(UInt64(0x01) << 40) | (UInt64(0x02) << 40))
    }

    /// This machine's id (`/etc/machine-id`, else the host name).
    static let machineID: String = {
        if let id = try? String(contentsOfFile: "/etc/machine-id", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !id.isEmpty { return id }
        return ProcessInfo.processInfo.hostName
    }()

    /// Opens `spec`'s device: returns it, its kind, its interface's index, whether the
    /// interface existed before (a TAP tapbridge did not make), and what the start line says.
    static func open(_ spec: PortSpec, offload: Bool, defaultMTU: (mtu: Int, why: String)?,
                     mac: MACAddress? = nil) throws(StartupError) -> (any PortDevice, PortEntry.Kind, Int32, Bool, String) {
        func tapNote(_ tap: TapDevice) -> String {
            (tap.existedBefore ? "TAP attached (kept on exit)" : "TAP created (removed on exit)\(tap.assignedMAC.map { ", mac \($0)" } ?? "")") + ", mtu \(tap.mtu)"
                + (tap.mtuWasDefault ? " (\(defaultMTU?.why ?? "default"); mtu=N sets another)" : "") + ", offloads \(tap.offloadDescription)"
        }
        func packet(_ why: String) throws(StartupError) -> (any PortDevice, PortEntry.Kind, Int32, Bool, String) {
            let device = try PacketSocketDevice(name: spec.name, mtu: spec.mtu, offload: offload)
            return (device, .packet, device.interfaceIndex, true, "packet socket on ifindex \(device.interfaceIndex)\(why), offloads \(device.offloadDescription)")
        }
        if spec.mode == .packet { return try packet("") }
        // an interface that exists and is no TAP (a veth, a NIC) is a packet socket's in auto
        // mode: trying /dev/net/tun first would answer with the TAP's permission problem, when
        // what it needs is CAP_NET_RAW
        if spec.mode == .auto, spec.namespace == nil, ctb_if_index(spec.name) > 0, !TapDevice.isTap(spec.name) { return try packet(" (not a TAP)") }
        if spec.namespace != nil, ctb_if_index(spec.name) > 0 {
            throw StartupError("netns= moves a TAP tapbridge makes, and an interface \(spec.name) exists here already; pick another name, or attach that one without netns=")
        }
        do {
            let tap = try TapDevice(name: spec.name, mtu: spec.mtu, defaultMTU: defaultMTU?.mtu, mac: mac, offload: offload)
            return (tap, .tap, tap.interfaceIndex, tap.existedBefore, tapNote(tap))
        } catch {
            switch (error, spec.mode) {
            case (.busy, .auto): return try packet(" (the TAP is held by another program)")
            case (.notATap, .auto): return try packet(" (not a TAP)")
            case (.busy, _):
                throw StartupError("TAP is held by another program (a VM?); use mode=packet or mode=auto to reach it through a packet socket")
            case (.notATap, _):
                throw StartupError("exists and is not a TAP; use mode=packet or mode=auto to attach it through a packet socket")
            case (.failed(let message), _): throw StartupError(message)
            }
        }
    }
}

/// The interface `--mirror-iface` injects copies into, and what it must never be: a port, or
/// the veth peer of one. A copy injected there would come back in as a frame from that port,
/// be mirrored again, and circulate for as long as the bridge runs (150,000-230,000 frames a
/// second, one core at 100 %, for one broadcast).
struct MirrorInterface {
    let name: String
    /// Its ifindex, and the ifindex of the device its frames come out of when that is another
    /// (a veth's peer: sysfs `iflink`); 0 when unknown.
    let index: Int32
    let peer: Int32

    /// Reads the indexes of `name` (which must exist: the mirror opened it).
    init(name: String) {
        self.name = name
        index = ctb_if_index(name)
        let iflink = (try? String(contentsOfFile: "/sys/class/net/\(name)/iflink", encoding: .utf8))
            .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        peer = iflink != index ? iflink : 0
    }

    /// Why a port on interface `port` (ifindex `index`, 0 if it does not exist yet) would loop
    /// through the mirror; nil if it would not.
    func conflict(withPort port: String, index portIndex: Int32) -> String? {
        if port == name || (portIndex > 0 && portIndex == index) {
            return "it is the mirror interface (--mirror-iface \(name)): mirrored frames injected into it would come back in on this port and loop forever; mirror to an interface no port uses (a dummy, or a veth whose peer is not a port)"
        }
        if portIndex > 0 && portIndex == peer {
            return "it is the veth peer of the mirror interface (--mirror-iface \(name)): mirrored frames injected there come out here and would loop forever; mirror to an interface no port uses"
        }
        return nil
    }
}
