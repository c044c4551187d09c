// A three-port virtual LAN: three hosts on one tapbridge, no root, no kernel.
//
//    host A ── port v0 ┐
//    host B ── port v1 ┼── Bridge (learning switch)
//    host C ── port v2 ┘
//
// Run: swift run VirtualLAN
import TapBridgeCore
import TapBridgeTestSupport

let lan = VirtualLAN(ports: 3, configuration: .init(table: .init(ageingTime: .seconds(300))))
let names = ["A", "B", "C"]
let hosts = [MACAddress("02:00:00:00:00:0a")!, MACAddress("02:00:00:00:00:0b")!, MACAddress("02:00:00:00:00:0c")!]

@MainActor func step(_ title: String, from sender: Int, to destination: MACAddress) {
    let frame = FrameFactory.frame(to: destination, from: hosts[sender])
    let out = lan.send(frame, on: sender)
    let reached = out.indices.filter { !out[$0].isEmpty }.map { "\(names[$0]) (v\($0))" }
    print("\(lan.clock.now)  \(title)")
    print("        \(hosts[sender]) -> \(destination) enters v\(sender); delivered to: \(reached.isEmpty ? "nobody" : reached.joined(separator: ", "))")
    let table = lan.bridge.table.entries(at: lan.clock.now)
        .map { "\($0.mac)@\(lan.engine.name(of: $0.port))" }.joined(separator: " ")
    print("        FDB: \(table.isEmpty ? "(empty)" : table)\n")
}

step("A broadcasts (ARP who-has): flooded to B and C, A is learned", from: 0, to: .broadcast)
step("B answers A: A is known, so only A gets it; B is learned", from: 1, to: hosts[0])
step("A talks to B: unicast to exactly one port", from: 0, to: hosts[1])
step("A sends to C, never heard from: unknown unicast is flooded", from: 0, to: hosts[2])
lan.clock.advance(by: .seconds(301))
print("... 301 seconds pass without traffic: every entry ages out ...\n")
step("A talks to B again: B has aged out, so the frame is flooded", from: 0, to: hosts[1])

let c = lan.counters(0)
let s = lan.bridge.table.statistics
print("port v0: rx \(c.receivedFrames) frames / \(c.receivedBytes) bytes, drops \(c.totalDrops)")
print("FDB: learned \(s.learned), refreshed \(s.refreshed), moved \(s.moved), expired \(s.expired), evicted \(s.evicted)")
