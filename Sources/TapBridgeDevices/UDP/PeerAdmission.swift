import CTapBridge
import TapBridgeCore

/// `--accept-peers`: senders that are not peers yet, and what they sent, waiting for the
/// daemon, which admits them after the batch that brought them (adds each as a port) or not.
///
/// ```
///   datagram from a stranger ──► well-formed, under the limit? ── no ──► counted, dropped
///                                        │ yes
///                                        ▼
///                              a candidate: its datagrams are held (copied: the plain receive
///                              path) or left where they are (the train path: the message stays
///                              pending); the device reads nothing more until the decision
///                                        │  take() (the daemon, after the batch)
///                                        ▼
///                              decided: admitted ──► every held datagram delivered, in order
///                                       not admitted ──► every one counted as peers_refused
/// ```
/// Nothing an admitted peer sent is lost: the device stops reading while a decision is
/// pending, so held datagrams are bounded by one receive call (at most 64 datagrams).
final class PeerAdmission {
    /// The format an unknown sender's datagram must be well-formed in (the bridge-wide
    /// encapsulation and VNI), and the most dynamic peers.
    let format: any EncapsulationFormat
    let limit: Int
    /// Senders waiting for the daemon's decision (since the last `take`).
    private(set) var candidates: [SocketAddress] = []
    /// Senders decided on at the last `take`: admitted ones are in the peer table now; the
    /// others are refused until the data read before the decision is used up.
    private(set) var decided: [SocketAddress] = []
    /// Held datagrams, in arrival order, datagram k in slot k of `area`; `delivered` of them
    /// are done.
    var held: [(sender: SocketAddress, length: Int)] = []
    var delivered = 0
    /// One receive call's worth of the largest datagrams, in slots of `TrainReceiver.slotSize`
    /// bytes (allocated when the first stranger is held).
    var area: UnsafeMutableRawPointer? = nil
    static let maximumHeld = Int(CTB_BATCH_MAX)

    init(format: any EncapsulationFormat, limit: Int) {
        self.format = format
        self.limit = limit
        held.reserveCapacity(Self.maximumHeld)
    }

    deinit {
        area?.deallocate()
        probe?.deallocate()
    }

    /// A decision is pending: the device reads nothing more until `take`.
    var isWaiting: Bool { !candidates.isEmpty }

    /// Held datagrams wait to be delivered.
    var holds: Bool { delivered < held.count }

    func isCandidate(_ sender: SocketAddress) -> Bool { candidates.contains(sender) }

    /// Whether `sender` (not a peer) was decided on and not admitted.
    func wasRefused(_ sender: SocketAddress) -> Bool { decided.contains(sender) }

    /// Makes `sender` a candidate (if it is not yet one).
    func propose(_ sender: SocketAddress) {
        if !candidates.contains(sender) { candidates.append(sender) }
    }

    /// Whether datagram `d` is a well-formed frame in the bridge-wide format with a station as
    /// its source (garbage from spoofed addresses must not fill the peer table). Opens a copy
    /// (opening may change a datagram's bytes, and a candidate's is opened again once admitted).
    func isWellFormed(_ d: ctb_datagram) -> Bool {
        guard d.length <= TrainReceiver.slotSize else { return false }
        let copy = probe ?? .allocate(byteCount: TrainReceiver.slotSize, alignment: 64)
        probe = copy
        if d.length > 0 { copy.copyMemory(from: d.data, byteCount: d.length) }
        guard case .frame(let frame) = format.open(UnsafeMutableRawBufferPointer(start: copy, count: d.length)),
            let header = EthernetHeader(UnsafeRawBufferPointer(frame))
        else { return false }
        return header.source.isValidSource
    }
    /// The copy `isWellFormed` opens (allocated at the first stranger).
    var probe: UnsafeMutableRawPointer? = nil

    /// Keeps a copy of a candidate's datagram (false: no room).
    func hold(_ d: ctb_datagram, from sender: SocketAddress) -> Bool {
        guard held.count < Self.maximumHeld, d.length <= TrainReceiver.slotSize else { return false }
        let area = self.area ?? .allocate(byteCount: Self.maximumHeld * TrainReceiver.slotSize, alignment: 64)
        self.area = area
        if d.length > 0 { (area + held.count * TrainReceiver.slotSize).copyMemory(from: d.data, byteCount: d.length) }
        held.append((sender, d.length))
        propose(sender)
        return true
    }

    /// The candidates so far, now decided on by the caller (forgotten as candidates).
    func take() -> [SocketAddress] {
        decided = candidates
        candidates.removeAll()
        return decided
    }

    /// Called before the device reads the socket again: everything read before the last
    /// decision is used up, so a refused sender may be considered afresh.
    func forgetDecisions() {
        if !decided.isEmpty { decided.removeAll() }
    }

    /// The next held datagram to deliver, once decided on (nil while a decision is pending or
    /// when none is left): the caller turns an admitted sender's into a frame and counts the
    /// others as refused. Its bytes stay valid until the next call.
    func nextHeld() -> (sender: SocketAddress, data: UnsafeMutableRawPointer, length: Int)? {
        guard !isWaiting, delivered < held.count else { return nil }
        let (sender, length) = held[delivered]
        let data = area! + delivered * TrainReceiver.slotSize
        delivered += 1
        if delivered == held.count {
            // the last one's bytes stay in the area until the next `hold`, after this delivery
            held.removeAll(keepingCapacity: true)
            delivered = 0
        }
        return (sender, data, length)
    }
}
