import Glibc
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions
import TapBridgePcap
import Testing

/// The parsers above the core, without root: `--port`, `--remote`, `--listen` specs, socket
/// addresses, `--mirror-rotate`.
@Suite("Specs and addresses")
struct SpecTests {
    @Test func aPortSpecSaysEverything() throws {
        let p = try PortSpec(parsing: "tap1,mode=tap,trunk=10:20-22,native=1,learning=off,flooding=no,mtu=9000,offload=off")
        #expect(p.name == "tap1" && p.mode == .tap && p.mtu == 9000 && p.offload == false)
        #expect(p.configuration.learning == false && p.configuration.flooding == false)
        #expect("\(p.configuration.vlanMode)" == "trunk VLANs 10,20-22 (native 1 untagged)")
        #expect(try PortSpec(parsing: "tap0").configuration.vlanMode.untaggedVLAN == VLANID(1))
        #expect("\(try PortSpec(parsing: "tap0,vlan=10").configuration.vlanMode)" == "access VLAN 10")
    }

    @Test(arguments: [
        ("", "interface name is empty"),
        ("abcdefghijklmnop", "is 16 bytes, longer than 15"),
        ("a/b", "contains '/'"),
        ("x,vlan=0", "vlan must be 1-4094, got '0'"),
        ("x,vlan=10,trunk=20", "exclude each other"),
        ("x,native=1", "native= needs trunk="),
        ("x,trunk=5000", "trunk must list VLANs 1-4094"),
        ("x,mtu=10", "mtu must be 68-65521"),
        ("x,speed=10", "unknown option 'speed'"),
        ("x,vlan=1,vlan=2", "'vlan' given twice"),
        ("x,vlan", "expected key=value, got 'vlan'"),
        ("x,mode=bridge", "mode must be auto, tap or packet"),
        ("x,netns=a/b", "netns name 'a/b' may hold only"),
        ("x,netns=", "netns name is empty"),
        ("x,netns=h1,addr=10.0.0.1", "addr must be an address with its prefix length"),
        ("x,netns=h1,addr=10.0.0.1/33", "addr must be"),
        ("x,netns=h1,addr=host/24", "addr must be"),
        ("x,netns=h1,mac=01:00:5e:00:00:01", "mac must be a unicast MAC address"),
        ("x,addr=10.0.0.1/24", "addr= and mac= go with netns="),
        ("x,netns=h1,mode=packet", "cannot go with mode=packet"),
    ])
    func badPortSpecsSayWhy(_ text: String, _ reason: String) {
        #expect(throws: PortSpecError.self) { try PortSpec(parsing: text) }
        do {
            _ = try PortSpec(parsing: text)
        } catch {
            #expect(error.description.hasPrefix("--port '\(text)': ") && error.reason.contains(reason), "got: \(error)")
        }
    }

    @Test func aPortIntoANamespace() throws {
        let p = try PortSpec(parsing: "h1,netns=lab-h1,addr=10.0.0.1/24,mac=02:00:00:00:00:01")
        #expect(p.namespace == "lab-h1" && p.address?.description == "10.0.0.1/24" && p.address?.isIPv6 == false && p.mac == MACAddress("02:00:00:00:00:01"))
        #expect(try PortSpec(parsing: "h2,netns=h2,addr=fd00::2/64").address?.isIPv6 == true)
        #expect(try PortSpec(parsing: "h3,netns=h3").address == nil)
    }

    @Test func remoteAndListenSpecs() throws {
        let r = try RemoteSpec(parsing: "[2001:db8::1]:4789,encap=raw,vni=7,name=vm1,vlan=10")
        #expect(r.host == "2001:db8::1" && r.port == 4789 && r.encapsulation == .raw && r.vni == VNI(7) && r.name == "vm1")
        #expect(try RemoteSpec(parsing: "192.0.2.5:9000").name == "192.0.2.5:9000")
        #expect(try ListenSpec(parsing: "4789") == ListenSpec(host: nil, port: 4789))
        #expect(try ListenSpec(parsing: "127.0.0.1:4789") == ListenSpec(host: "127.0.0.1", port: 4789))
        #expect(try RemoteSpec(parsing: "h:1").horizon == nil)
        #expect(try RemoteSpec(parsing: "h:1,horizon=mesh").horizon == .mesh && RemoteSpec(parsing: "h:1,horizon=1").horizon == .mesh)
        #expect(try RemoteSpec(parsing: "h:1,horizon=off").horizon == .off && RemoteSpec(parsing: "h:1,horizon=7").horizon == .group(7))
        #expect(Horizon.standard(for: .vxlan, splitHorizon: true) == .mesh && Horizon.standard(for: .raw, splitHorizon: true) == .off)
        #expect(Horizon.standard(for: .vxlan, splitHorizon: false) == .off && Horizon.standard(for: .sealed, splitHorizon: true) == .mesh)
        let sealed = try RemoteSpec(parsing: "h:1,encap=sealed,key=/etc/tapbridge/host.key,peer=\(OptionTableTests.peerKey),psk=/etc/tapbridge/psk")
        #expect(sealed.encapsulation == .sealed && sealed.keyFile == "/etc/tapbridge/host.key")
        #expect(sealed.encapsulationOptions == ["peer": OptionTableTests.peerKey, "psk": "/etc/tapbridge/psk"])
        #expect(try RemoteSpec(parsing: "h:1,key=/k").keyFile == "/k", "key= without encap=: the bridge-wide --encap decides (checked with the settings)")
        #expect(try RemoteSpec(parsing: "h:1").datapath == .user && RemoteSpec(parsing: "h:1,datapath=kernel,encap=vxlan,horizon=mesh").datapath == .kernel)
        for bad in ["::1:4789", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "h:1,encap=gre", "h:1,vni=16777216", "h:1,horizon=0", "h:1,horizon=x",
                    "h:1,horizon=65536", "h:1,encap=vxlan,key=/k", "h:1,encap=sealed,key=", "h:1,datapath=ebpf", "h:1,datapath=kernel,encap=raw",
                    "h:1,datapath=kernel,encap=sealed,key=/k", "h:1,datapath=kernel,horizon=7", "h:1,encap=vxlan,peer=\(OptionTableTests.peerKey)",
                    "h:1,encap=sealed,peer=nope", "h:1,encap=sealed,psk="] {
            #expect(throws: PortSpecError.self, "\(bad)") { try RemoteSpec(parsing: bad) }
        }
        #expect(throws: PortSpecError.self) { try ListenSpec(parsing: "nope") }
    }

    @Test func socketAddressesRoundTripThroughSockaddrs() throws {
        for (text, family) in [("127.0.0.1:4789", AF_INET), ("[::1]:5555", AF_INET6), ("10.1.2.3:1", AF_INET6)] {
            let (host, port) = SocketAddress.split(text)!
            let a = try SocketAddress.resolve(host: host, port: port, ipv4Only: false)
            #expect("\(a)" == text)
            #expect(a.host == host)
            var storage = [UInt8](repeating: 0, count: 28)
            let length = storage.withUnsafeMutableBytes { a.write(family: family, to: $0.baseAddress!) }
            #expect(length > 0)
            #expect(storage.withUnsafeBytes { SocketAddress($0.baseAddress!) } == a, "\(text) as family \(family)")
        }
        // an IPv6 address cannot be written as IPv4
        let v6 = try SocketAddress.resolve(host: "::1", port: 1, ipv4Only: false)
        var storage = [UInt8](repeating: 0, count: 28)
        #expect(storage.withUnsafeMutableBytes { v6.write(family: AF_INET, to: $0.baseAddress!) } == 0)
        #expect(SocketAddress.split("[::1]4789") == nil && SocketAddress.split("::1:4789") == nil && SocketAddress.split(":4789") == nil)
        #expect(throws: StartupError.self) { try SocketAddress.resolve(host: "::1", port: 1, ipv4Only: true) }
    }

    @Test(arguments: [
        ("10M", Int64(10 << 20), 5), ("512k,3", 512 << 10, 3), ("1G,1000", 1 << 30, 1000), ("1024", 1024, 5),
        ("1024G", 1 << 40, 5),
    ])
    func rotationSizes(_ text: String, _ bytes: Int64, _ count: Int) {
        let r = MirrorOptions.parseRotation(text)
        #expect(r?.bytes == bytes && r?.count == count, "\(text): \(String(describing: r))")
    }

    @Test(arguments: ["", "12q", "1023", "0k", "10M,0", "10M,1001", "10M,3,4", "M",
                       // past 1 TiB, and sizes whose bytes overflow 64 bits (a crash once)
                       "1025G", "8589934592G", "9223372036854775807k", "99999999999999999999", "-5M"])
    func badRotations(_ text: String) {
        #expect(MirrorOptions.parseRotation(text) == nil, "\(text) parsed")
    }
}

@Suite("datapath=kernel device names")
struct KernelVXLANNameTests {
    @Test func namesAreValidInterfaceNamesAndDistinct() {
        #expect(KernelVXLAN.deviceName(bridge: "lab", index: 0) == "vx-lab")
        #expect(KernelVXLAN.deviceName(bridge: "lab", index: 2) == "vx2-lab")
        let long = ["a-very-long-bridge-name", "with:colon", "has space", "x/y"].map { KernelVXLAN.deviceName(bridge: $0, index: 0) }
        for name in long + [KernelVXLAN.deviceName(bridge: "a-very-long-bridge-name", index: 3)] {
            #expect(name.utf8.count <= 15 && name.hasPrefix("vx") && !name.contains(where: { $0 == "/" || $0 == ":" || $0.isWhitespace }), "\(name)")
        }
        #expect(Set(long).count == long.count)
        #expect(KernelVXLAN.deviceName(bridge: "a-very-long-bridge-name", index: 0) != KernelVXLAN.deviceName(bridge: "a-very-long-bridge-name", index: 1))
    }
}
