/// One entry of the port registry: what a port is, for everything that reports or looks up
/// ports (the device and the configuration are kept beside it).
public struct PortRecord: Sendable {
    /// How a port reaches its network.
    public enum Kind: String, Sendable {
        case tap, packet, remote, stream, virtual
    }

    public var name: String
    public var kind: Kind
    /// The interface's index (TAP and packet ports), to refuse attaching one interface twice
    /// and to show its current name after a rename.
    public var interfaceIndex: Int32?
    /// Offloads were asked for on this port.
    public var offloadsOn: Bool
    /// A TAP reached through a packet socket because this program holds it:
    /// `qemu-system-x86, pid 812`.
    public var heldBy: String?
    /// Who is on the other end of a stream port: `unix:/run/lab/vm.sock, pid 812, uid 1000`.
    public var peer: String?

    public init(name: String, kind: Kind = .virtual, interfaceIndex: Int32? = nil, offloadsOn: Bool = true, heldBy: String? = nil, peer: String? = nil) {
        self.peer = peer
        self.name = name
        self.kind = kind
        self.interfaceIndex = interfaceIndex
        self.offloadsOn = offloadsOn
        self.heldBy = heldBy
    }
}
