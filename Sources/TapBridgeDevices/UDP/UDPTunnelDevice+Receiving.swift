import CTapBridge
import Glibc
public import Logging
public import TapBridgeCore

extension UDPTunnelDevice {
    // MARK: Receiving

    public func receive(into batch: FrameBatch) throws(PortError) -> Int {
        let now = ctb_monotonic_ns()
        let readBefore = messagesRead
        // a wake-up that found nothing to read was the error queue (POLLERR): errors whose
        // pending errno a send already took stay queued, and poll would report them forever
        defer { if messagesRead == readBefore { drainErrors() } }
        var frames = 0
        if let admission {
            // nothing is read while strangers wait for a decision, so what they sent waits too
            if admission.isWaiting { return 0 }
            if admission.holds {
                frames = deliverHeld(admission, into: batch, now: now)
                if admission.holds { return frames }
            }
        }
        if let trains { return try frames + trains.receive(into: batch, from: self, now: now) }
        // recvmmsg straight into the free slots, `receiveLead` bytes early (see the type's
        // comment), or as early as the batch's headroom allows: never before a slot's own bytes
        let lead = min(batch.headroom, Encapsulations.receiveLead)
        while !batch.isFull {
            let wanted = min(batch.remaining, Int(CTB_BATCH_MAX))
            let firstSlot = batch.used
            for k in 0..<wanted {
                let slot = batch.freeSlot(k)
                receiveQueue[k].data = slot.baseAddress! - lead
                receiveQueue[k].length = slot.count + lead
            }
            guard let got = try receiveMessages(into: receiveQueue, wanted) else { continue }
            if got < wanted { batch.drained = true }
            if got == 0 { return frames }
            for k in 0..<got {
                if deliver(receiveQueue[k], into: batch, freeSlot: firstSlot + k - batch.used, lead: lead, now: now) { frames += 1 }
            }
            batch.abandon(firstSlot + got - batch.used)
            if got < wanted || admission?.isWaiting == true { return frames }
        }
        return frames
    }

    /// The datagrams held for admission, once decided on, as frames into `batch` until it is
    /// full (the rest wait for the next call): an admitted sender's are delivered (copied), the
    /// others counted as refused.
    func deliverHeld(_ admission: PeerAdmission, into batch: FrameBatch, now: Int64) -> Int {
        var frames = 0
        while !batch.isFull, let (sender, data, length) = admission.nextHeld() {
            guard let (index, port) = peer(sentFrom: sender) else {
                counters.peersRefused &+= 1
                continue
            }
            guard let frame = innerFrame(data, length: length, peer: index, port: port, from: sender, batch: batch, now: now) else { continue }
            guard frame.count <= batch.frameCapacity else {
                batch.recordDrop(on: port, .truncated, bytes: length)
                continue
            }
            batch.append(UnsafeRawBufferPointer(frame), from: port)
            frames += 1
        }
        return frames
    }

    /// Turns one received datagram, read `lead` bytes before free slot `k`, into a frame in
    /// the batch (true), or counts why not.
    @inline(__always)
    func deliver(_ d: ctb_datagram, into batch: FrameBatch, freeSlot k: Int, lead: Int, now: Int64) -> Bool {
        guard let sender = withUnsafeBytes(of: d.peer, { SocketAddress($0.baseAddress!) }) else { return false }
        var roaming = false
        guard let (index, port) = peer(sentFrom: sender) ?? roamer(sender, d, roaming: &roaming) else {
            stranger(sender, d, now: now)
            return false
        }
        if d.length > batch.frameCapacity + lead {  // (MSG_TRUNC: longer than the buffer)
            batch.recordDrop(on: port, .truncated, bytes: d.length)
            return false
        }
        guard let frame = innerFrame(d.data, length: d.length, peer: index, port: port, from: sender, roaming: roaming, batch: batch, now: now) else { return false }
        // the slot starts `lead` bytes after the datagram
        batch.commit(length: frame.count, from: port, shift: frame.baseAddress! - (d.data + lead), freeSlot: k)
        return true
    }

    /// The peer that sends from `sender`: its index in the table and its port; nil for a stranger.
    @inline(__always)
    func peer(sentFrom sender: SocketAddress) -> (index: Int, port: PortID)? {
        table.index(for: sender).map { ($0, table[$0].port) }
    }

    /// The peer whose format claims a stranger's datagram `d` (`owner(ofStranger:)`: a peer
    /// that roamed to `sender`), with `roaming` set; nil if none does. Nothing to ask without
    /// formats that roam.
    @inline(__always)
    func roamer(_ sender: SocketAddress, _ d: ctb_datagram, roaming: inout Bool) -> (index: Int, port: PortID)? {
        guard !roamingGroups.isEmpty else { return nil }
        let bytes = UnsafeRawBufferPointer(start: d.data, count: d.length)
        for (_, asked) in roamingGroups {
            guard let one = table.index(of: asked), let owner = table[one].format.owner(ofStranger: bytes), let index = table.index(of: owner) else { continue }
            roaming = true
            return (index, table[index].port)
        }
        return nil
    }

    /// The inner frame of one datagram of `length` bytes at `data` from peer `index`, sent
    /// from `sender`, or nil (the drop is recorded on `port`). A well-formed frame proves the
    /// peer alive; a partial checksum from a same-host VTEP is completed. `roaming`: the
    /// sender is not the peer's address; if the datagram authenticates, it is from now on.
    @inline(__always)
    func innerFrame(_ data: UnsafeMutableRawPointer, length: Int, peer index: Int, port: PortID, from sender: SocketAddress, roaming: Bool = false,
                    batch: FrameBatch, now: Int64) -> UnsafeMutableRawBufferPointer? {
        // a roaming peer is tried at the sender's address (what the format sends while opening,
        // a handshake response, goes there) and put back unless the datagram authenticates
        let before = table[index].address
        let roaming = roaming && before != sender  // (a train's later datagrams: moved already)
        if roaming, !table.move(index, to: sender, family: family) { return nil }
        let frame: UnsafeMutableRawBufferPointer
        let opened = sender.withBytes { table[index].format.open(UnsafeMutableRawBufferPointer(start: data, count: length), from: $0) }
        if roaming { settleMove(peer: index, from: before, taken: opened.isTaken) }
        switch opened {
        case .frame(let inner): frame = inner
        case .consumed: return nil
        case .reply(let answer, let reason):
            batch.recordDrop(on: port, reason, bytes: length)
            send(answer, to: sender)
            return nil
        case .drop(let reason):
            batch.recordDrop(on: port, reason, bytes: length)
            // (not for a stranger's datagram: anyone can send one, and the peer is not refusing)
            if !roaming, reason == .unauthenticated || reason == .badMAC1 { refused(peer: index, now: now) }
            return nil
        }
        // (one load on the data path: a peer's own count is read only while some peer refuses)
        if refusingPeers > 0, table[index].unauthenticated > 0 {
            logger.notice("remote \(table[index].address): its datagrams authenticate again (\(table[index].unauthenticated) refused before)")
            table[index].unauthenticated = 0
            table[index].refusalLog = LogThrottle(interval: .seconds(60))
            refusingPeers -= 1
        }
        // only a well-formed frame proves a peer alive (garbage must not keep a spoofed one)
        if let header = EthernetHeader(UnsafeRawBufferPointer(frame)), header.source.isValidSource {
            table[index].lastHeard = now
            if table[index].isUnreachable {
                table[index].isUnreachable = false
                logger.notice("remote \(table[index].address): reachable again (a frame arrived from it)")
            }
        }
        repairChecksum(frame.baseAddress!, length: frame.count, peer: index)
        return frame
    }

    /// Peer `index`, tried at a new address for a datagram from there: it stays there if the
    /// datagram was `taken` (authenticated: roaming, as WireGuard's endpoint follows the last
    /// authenticated packet), else it goes back to `address`.
    func settleMove(peer index: Int, from address: SocketAddress, taken: Bool) {
        let to = table[index].address
        guard taken else {
            _ = table.move(index, to: address, family: family)
            return
        }
        counters.peersMoved &+= 1
        logger.notice("remote \(address) moved to \(to) (an authenticated datagram came from there)")
    }

    /// recvmmsg of up to `count` messages into `queue` (buffers set by the caller): how many
    /// arrived (0: none waiting), or nil after an ICMP error for something we sent, which is
    /// charged to its peer and is never fatal (call again).
    func receiveMessages(into queue: UnsafeMutablePointer<ctb_datagram>, _ count: Int) throws(PortError) -> Int? {
        admission?.forgetDecisions()  // what was read before the last decision is used up
        let got = socket.receive(queue, count: count)
        guard got < 0 else {
            messagesRead &+= got
            return got
        }
        switch -Int32(got) {
        case ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, EHOSTDOWN, EMSGSIZE:
            drainErrors()
            return nil
        default: throw PortError(.failed, code: -Int32(got), operation: "recvmmsg")
        }
    }

    /// Completes an inner checksum a same-host kernel VTEP left partial (see
    /// `OffloadFinisher.repairPartialChecksum`): a Linux vxlan device whose underlay never
    /// leaves the host (a veth) sends inner frames whose checksum was offloaded to hardware that
    /// is not there, and the UDP socket does not carry the metadata that says so. Logged once
    /// per peer. (No remedy is advised: turning the peer's checksum offload off made TCP
    /// slower, since the kernel then checksums every segment where tapbridge passes once per
    /// 64 KiB frame.)
    @inline(__always)
    func repairChecksum(_ frame: UnsafeMutableRawPointer, length: Int, peer index: Int) {
        guard OffloadFinisher.repairPartialChecksum(UnsafeMutableRawBufferPointer(start: frame, count: length)) == .completed else { return }
        counters.checksumsCompleted &+= 1
        if !table[index].reportedPartialChecksums {
            table[index].reportedPartialChecksums = true
            logger.notice("remote \(table[index].address) sends inner frames with partial checksums (a kernel VTEP on the same host, with checksum offload on); tapbridge completes them (one pass over each such frame, counted as udp.checksums_completed in show stats); nothing needs changing")
        }
    }

    /// `datagrams` datagrams from a sender that is not a peer (`d` the first): dropped, counted
    /// and logged (at most one line per 10 s), unless `--accept-peers` lets the sender in.
    /// Then the datagram must be a well-formed frame in the bridge-wide encapsulation (empty or
    /// garbage datagrams from spoofed addresses cannot fill the peer table) and the limit must
    /// allow; the sender becomes a candidate that the daemon decides on after the batch, and
    /// true is returned. `holding`: the datagram is copied and held (the plain receive path);
    /// otherwise the caller keeps it where it is until the decision (the train path).
    @discardableResult
    func stranger(_ sender: SocketAddress, _ d: ctb_datagram, now: Int64, datagrams n: Int = 1, holding: Bool = true) -> Bool {
        let why: String
        let count = UInt64(max(n, 1))
        if let admission {
            let isNew = !admission.isCandidate(sender)
            if admission.wasRefused(sender) {
                counters.peersRefused &+= count
                why = "not admitted"
            } else if isNew && !admission.isWellFormed(d) {
                counters.unknownSender &+= count
                why = "not a well-formed \(admission.format.encapsulation) frame, so not accepted as a peer"
            } else if isNew && table.dynamicCount + admission.candidates.count >= admission.limit {
                counters.peersRefused &+= count
                why = "peer limit reached"
            } else if !holding {
                admission.propose(sender)
                return true
            } else if admission.hold(d, from: sender) {
                return true
            } else {
                counters.unknownSender &+= count
                why = "more datagrams from new peers than one read holds"
            }
        } else {
            counters.unknownSender &+= count
            why = "not a configured remote"
        }
        if let since = unknownLog.admit(count, at: Instant(nanoseconds: now)) {
            logger.warning("dropped datagram(s) from \(sender): \(why) (\(since) since the last such line)")
        }
        return false
    }
}
