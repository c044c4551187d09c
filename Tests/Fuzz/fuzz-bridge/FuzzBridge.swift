import FuzzSupport
import TapBridgeCore
import TapBridgeTestSupport

/// Frames of any bytes, on any port, with any offload state, through a bridge of four ports
/// (access VLAN 1, access VLAN 10, a trunk of 10 and 20 with native 1, and one that learns
/// nothing) with a small MAC table: nothing traps, no frame ever leaves by the port it came
/// in on, and a frame never becomes more frames than the ports and its segments allow. Floods
/// to two ports or more wait in the flood backlog (a bridge's is 32), so its order, its tags
/// and its shares are fuzzed too.
/// Records: [port][flags][length][frame bytes...]; flags bit 0: a virtio-net header (10
/// bytes) follows, bit 1: advance the clock a minute, bit 2: send the backlog one copy at a
/// time, reading every port between copies.
@_silgen_name("tapbridge_fuzz_one")
func fuzz(_ data: UnsafeRawBufferPointer) {
    let lan = VirtualLAN(
        ports: 4, configuration: Bridge.Configuration(table: .init(ageingTime: .seconds(90), maximumEntries: 8, maximumEntriesPerPort: 4)),
        portConfigurations: [
            PortConfiguration(), PortConfiguration(vlanMode: .access(VLANID(10))),
            PortConfiguration(vlanMode: .trunk(allowed: VLANSet([VLANID(10), VLANID(20)]), native: VLANID(1))),
            PortConfiguration(learning: false),
        ])
    lan.engine.deferredFanOut = 2
    var k = 0
    while k + 3 <= data.count {
        let port = Int(data[k]) % 4
        let flags = data[k + 1]
        var length = Int(data[k + 2]) * 8 + 1
        k += 3
        var offload = FrameOffload.none
        if flags & 1 != 0, k + 10 <= data.count {
            offload = FrameOffload(virtioHeader: UnsafeRawBufferPointer(rebasing: data[k..<k + 10])) ?? .none
            k += 10
        }
        length = min(length, data.count - k)
        let frame = Array(data[k..<k + length])
        k += length
        if flags & 2 != 0 { lan.clock.advance(by: .seconds(60)) }
        lan.inject(frame, on: port, offload: offload)
        if flags & 4 != 0 {
            repeat {
                for d in lan.devices { _ = try? lan.engine.service(d, at: lan.clock.now) }
                lan.engine.drainBacklog(budget: 1)
            } while lan.engine.hasBacklog
        }
        lan.runUntilIdle()
        precondition(!lan.engine.hasBacklog, "frames left in the backlog")
        precondition(lan.transmitted(on: port).isEmpty, "a frame went back out of its ingress port \(port)")
        for other in 0..<4 {
            let sent = lan.transmitted(on: other)
            precondition(sent.count <= max(1, length / OffloadFinisher.minimumTCPSegmentSize + 1) || sent.count <= 128, "\(sent.count) frames out of one")
        }
        lan.engine.expire(at: lan.clock.now)
    }
}

#if !FUZZING
@main struct Replay { static func main() { FuzzDriver.replay("fuzz-bridge") } }
#endif
