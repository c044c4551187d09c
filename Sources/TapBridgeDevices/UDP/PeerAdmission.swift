import CTapBridge
import TapBridgeCore

/// `--accept-peers`: senders that are not peers yet, and their datagrams, held until the
/// daemon admits them after the batch that brought them (it adds each as a port, then the
/// device delivers what was held). At most 16 datagrams are held per batch.
final class PeerAdmission {
    /// The encapsulation and VNI an unknown sender's datagram must be well-formed in, and the
    /// most dynamic peers.
    let encapsulation: Encapsulation
    let vni: VNI
    let limit: Int
    /// Senders waiting to become peers (since the last `take`).
    var candidates: [SocketAddress] = []
    /// Held datagrams, one slot of `TrainReceiver.slotSize` bytes each in `area`.
    var held: [(sender: SocketAddress, length: Int)] = []
    var area: UnsafeMutableRawPointer? = nil
    static let maximumHeld = 16

    init(encapsulation: Encapsulation, vni: VNI, limit: Int) {
        self.encapsulation = encapsulation
        self.vni = vni
        self.limit = limit
    }

    deinit { area?.deallocate() }

    /// Keeps a copy of a candidate's datagram (false: no room).
    func hold(_ d: ctb_datagram, from sender: SocketAddress) -> Bool {
        guard held.count < Self.maximumHeld, d.length <= TrainReceiver.slotSize else { return false }
        let area = self.area ?? .allocate(byteCount: Self.maximumHeld * TrainReceiver.slotSize, alignment: 64)
        self.area = area
        (area + held.count * TrainReceiver.slotSize).copyMemory(from: d.data, byteCount: d.length)
        held.append((sender, d.length))
        if !candidates.contains(sender) { candidates.append(sender) }
        return true
    }

    /// Held datagram `k`.
    func datagram(_ k: Int) -> (sender: SocketAddress, data: UnsafeMutableRawPointer, length: Int) {
        (held[k].sender, area! + k * TrainReceiver.slotSize, held[k].length)
    }

    /// The candidates so far, forgotten here.
    func take() -> [SocketAddress] {
        defer { candidates.removeAll() }
        return candidates
    }

    /// The held datagrams of admitted candidates, as frames into `batch` (those of senders
    /// not admitted count as refused).
    func deliverHeld(into batch: FrameBatch, from device: UDPTunnelDevice, now: Int64) -> Int {
        var frames = 0
        for k in held.indices {
            let (sender, data, length) = datagram(k)
            guard let index = device.table.index(for: sender) else {
                device.counters.peersRefused &+= 1
                continue
            }
            let port = device.table[index].port
            guard let frame = device.innerFrame(data, length: length, peer: index, port: port, batch: batch, now: now) else { continue }
            guard frame.count <= batch.frameCapacity else {
                batch.recordDrop(on: port, .truncated, bytes: length)
                continue
            }
            batch.nextSlot().baseAddress!.copyMemory(from: frame.baseAddress!, byteCount: frame.count)
            batch.commit(length: frame.count, from: port)
            frames += 1
        }
        held.removeAll(keepingCapacity: true)
        return frames
    }
}
