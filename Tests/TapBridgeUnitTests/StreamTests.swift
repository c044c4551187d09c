import Glibc
import TapBridgeCore
@testable import TapBridgeDevices
import TapBridgeOptions
import TapBridgeTestSupport
import Testing

/// QEMU's stream framing and the stream device, over a socketpair: no root, no network.
@Suite("Stream ports over a socketpair")
struct StreamTests {
    static func framed(_ frame: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt32(frame.count).bigEndian) { Array($0) } + frame
    }

    static func frame(_ seq: UInt8, size: Int = 60) -> [UInt8] {
        FrameFactory.frame(to: .broadcast, from: FrameFactory.host(1), etherType: 0x88B5, payload: [UInt8](repeating: seq, count: size - 14))
    }

    /// Frames in every cut: byte by byte, and many in one read.
    @Test func theReaderReassemblesFramesFromAnyPieces() throws {
        let frames = (0..<5).map { Self.frame(UInt8($0), size: 60 + 100 * Int($0)) }
        let bytes = frames.flatMap(Self.framed)
        for piece in [1, 3, 7, bytes.count] {
            let reader = StreamReader(maximumFrame: 2_000, readSize: 64)
            var got: [[UInt8]] = []
            var offset = 0
            while offset < bytes.count {
                let space = reader.space()
                let n = min(piece, space.count, bytes.count - offset)
                for k in 0..<n { space[k] = bytes[offset + k] }
                reader.didRead(n)
                offset += n
                while let f = try reader.next() { got.append(Array(f)) }
            }
            #expect(got == frames, "pieces of \(piece) bytes")
            #expect(reader.pendingBytes == 0)
        }
    }

    @Test(arguments: [(0, StreamFramingError.zeroLength), (70_000, .oversized(70_000))])
    func aZeroOrOversizedLengthIsAnError(_ c: (Int, StreamFramingError)) {
        let reader = StreamReader()
        let header = withUnsafeBytes(of: UInt32(c.0).bigEndian) { Array($0) }
        let space = reader.space()
        for k in 0..<4 { space[k] = header[k] }
        reader.didRead(4)
        #expect(throws: c.1) { _ = try reader.next() }
    }

    /// The queue takes a frame whole or not at all, and keeps its bound.
    @Test func theWriteQueueIsBoundedAndTakesFramesWhole() {
        let queue = StreamWriteQueue(capacity: 70_000)
        let big = [UInt8](repeating: 7, count: 40_000)
        #expect(big.withUnsafeBytes { queue.append(frame: $0) })
        #expect(!big.withUnsafeBytes { queue.append(frame: $0) }, "a second 40 KB frame does not fit in 70 KB")
        #expect(queue.count == 40_004)
        queue.consumed(30_000)
        #expect(big.withUnsafeBytes { queue.append(frame: $0) }, "room again once written")
        #expect(queue.count == 50_008)
        // the rest of a frame the socket took in part: from the byte after the part written
        let q2 = StreamWriteQueue(capacity: 70_000)
        let f: [UInt8] = [1, 2, 3, 4, 5, 6]
        #expect(f.withUnsafeBytes { q2.append(frame: $0, skippingFirst: 2) })
        #expect(Array(q2.pending) == [0, 6, 1, 2, 3, 4, 5, 6])
        let q3 = StreamWriteQueue(capacity: 70_000)
        #expect(f.withUnsafeBytes { q3.append(frame: $0, skippingFirst: 6) })
        #expect(Array(q3.pending) == [3, 4, 5, 6])
    }

    /// A socketpair: [0] the device's end, [1] the test's (the peer).
    static func pair(sendBuffer: Int32? = nil) -> (StreamDevice, Int32) {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &fds) == 0)
        if var size = sendBuffer { setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        let device = StreamDevice(fd: fds[0], peer: "test", queueBytes: 128 * 1024)
        device.didAddPort(PortID(3), name: "s0")
        return (device, fds[1])
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) {
        #expect(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } == bytes.count)
    }

    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n <= 0 { return out }
            out += buffer[0..<n]
        }
    }

    @Test func framesGoBothWays() throws {
        let (device, peer) = Self.pair()
        defer { close(peer) }
        let frames = (0..<3).map { Self.frame(UInt8($0)) }
        // a frame and a half, then the rest
        let bytes = frames.flatMap(Self.framed)
        Self.write(peer, Array(bytes[0..<100]))
        let batch = FrameBatch(capacity: 8, frameCapacity: 2048)
        #expect(try device.receive(into: batch) == 1 && batch.drained)
        #expect(Array(batch.frame(0)) == frames[0] && batch.ingressPort(0) == PortID(3))
        batch.reset()
        Self.write(peer, Array(bytes[100...]))
        #expect(try device.receive(into: batch) == 2)
        #expect(Array(batch.frame(1)) == frames[2])
        #expect(frames[1].withUnsafeBytes { device.transmit($0, to: PortID(3)) } == .sent)
        #expect(Self.readAll(peer) == Self.framed(frames[1]))
    }

    /// More frames than a batch holds in one read: the rest wait in the reader, and the device
    /// does not say it drained (it would not be asked again before the next poll).
    @Test func aFullBatchLeavesTheRestForTheNextOne() throws {
        let (device, peer) = Self.pair()
        defer { close(peer) }
        Self.write(peer, (0..<10).flatMap { Self.framed(Self.frame(UInt8($0))) })
        let batch = FrameBatch(capacity: 4, frameCapacity: 2048)
        #expect(try device.receive(into: batch) == 4 && !batch.drained)
        var total = 4
        while true {
            batch.reset()
            let n = try device.receive(into: batch)
            total += n
            if batch.drained { break }
        }
        #expect(total == 10)
    }

    /// A peer that never reads: the socket fills, then the bounded queue, then frames are
    /// refused (`wouldBlock`, counted by the engine as transmit_queue_full); transmit never
    /// blocks. Once the peer reads, `writable` sends the queue, in order.
    @Test func aPeerThatNeverReadsGetsABoundedQueue() throws {
        let (device, peer) = Self.pair(sendBuffer: 16_384)
        defer { close(peer) }
        let frame = [UInt8](repeating: 0x42, count: 1_400)
        var outcomes: [TransmitOutcome: Int] = [:]
        for _ in 0..<2_000 { outcomes[frame.withUnsafeBytes { device.transmit($0, to: PortID(3)) }, default: 0] += 1 }
        let sent = outcomes[.sent] ?? 0
        #expect(sent > 0 && (outcomes[.wouldBlock] ?? 0) == 2_000 - sent, "\(outcomes)")
        #expect(device.awaitsWritable && device.queuedBytes <= 128 * 1024 && device.queuedBytes > 100_000, "queued \(device.queuedBytes)")
        var received: [UInt8] = []
        for _ in 0..<1_000 where received.count < sent * 1_404 {
            received += Self.readAll(peer)
            device.writable()
        }
        #expect(!device.awaitsWritable && received.count == sent * 1_404, "\(received.count) of \(sent * 1_404) bytes")
        #expect(received == (0..<sent).flatMap { _ in Self.framed(frame) }, "every queued frame, whole and in order")
    }

    @Test func aPeerThatClosesMidFrameIsADisconnection() throws {
        let (device, peer) = Self.pair()
        let f = Self.framed(Self.frame(1))
        Self.write(peer, f + Array(f[0..<20]))
        close(peer)
        let batch = FrameBatch(capacity: 8, frameCapacity: 2048)
        #expect(try device.receive(into: batch) == 1 && !batch.drained, "the whole frame before the end is delivered first")
        batch.reset()
        do {
            _ = try device.receive(into: batch)
            Issue.record("no error")
        } catch {
            #expect(error.kind == .disconnected && error.operation.contains("in the middle of a frame (20 bytes of it)"), "\(error)")
        }
    }

    @Test func aZeroLengthClosesWithEPROTO() throws {
        let (device, peer) = Self.pair()
        defer { close(peer) }
        Self.write(peer, [0, 0, 0, 0])
        #expect {
            _ = try device.receive(into: FrameBatch(capacity: 8, frameCapacity: 2048))
        } throws: { ($0 as? PortError)?.kind == .disconnected && ($0 as? PortError)?.code == EPROTO }
    }

    @Test func specs() throws {
        let l = try StreamListenSpec(parsing: "unix:/run/lab/vm.sock,max=4,vlan=10,delay=5ms")
        #expect(l.endpoint == .unix("/run/lab/vm.sock") && l.maximumConnections == 4 && "\(l.port.configuration.vlanMode)" == "access VLAN 10")
        #expect(l.port.impairment.delay == .milliseconds(5))
        #expect(try StreamListenSpec(parsing: "4000").endpoint == .tcp(host: "127.0.0.1", port: 4000))
        #expect(try StreamListenSpec(parsing: "[::1]:4000").endpoint == .tcp(host: "::1", port: 4000))
        #expect(try PortSpec(parsing: "vm1,stream=unix:/tmp/q.sock").stream == .unix("/tmp/q.sock"))
        #expect(try PortSpec(parsing: "vm1,stream=127.0.0.1:4000").stream == .tcp(host: "127.0.0.1", port: 4000))
        #expect(throws: PortSpecError.self) { try PortSpec(parsing: "vm1,stream=4000") }  // a client needs a host
        #expect(throws: PortSpecError.self) { try PortSpec(parsing: "vm1,stream=unix:/x,netns=n") }
    }
}
