import Foundation
import Testing

extension KernelTests {
    /// TAP writes batched into one io_uring submission per round (`TapWriter`), and one write(2)
    /// per frame with `--no-io-uring`: the same frames, in the same order.
    @Suite("TAP writes")
    struct TapWriteTests {
        /// Sends `count` UDP datagrams to 10.77.0.2:7000, alternately 3,000 and 60 bytes, each
        /// starting with its number.
        static let sender = """
            import socket, struct, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for k in range(int(sys.argv[1])):
                s.sendto(struct.pack("!I", k) + b"x" * (2996 if k % 2 == 0 else 56), ("10.77.0.2", 7000))
            """
        /// Receives on 10.77.0.2:7000 until 2 s pass without a datagram; prints the numbers.
        static let receiver = """
            import socket, struct
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.bind(("10.77.0.2", 7000))
            s.settimeout(2)
            got = []
            try:
                while True:
                    got.append(struct.unpack("!I", s.recv(9000)[:4])[0])
            except socket.timeout:
                pass
            print(",".join(map(str, got)), flush=True)
            """

        /// Over TAPs of MTU 9000, the 3,000-byte datagrams do not fit a slot and are written at
        /// once, after the small ones queued before them: the receiver gets every datagram, in
        /// order. TCP both ways, with a clean stack on both sides.
        @Test(arguments: [false, true])
        func framesOfEverySizeArriveInOrderAndTCPRunsBothWays(oneWriteEach: Bool) throws {
            let lab = Lab()
            let (a, b) = (lab.namespace("a"), lab.namespace("b"))
            let (ta, tb) = (lab.link("a"), lab.link("b"))
            let bridge = try lab.bridge(["--port", ta + ",mtu=9000", "--port", tb + ",mtu=9000"] + (oneWriteEach ? ["--no-io-uring"] : []))
            #expect(lab.waitForLinks([ta, tb]), "TAPs did not appear: \(bridge.output)")
            lab.place(ta, in: a, address: "10.77.0.1/24")
            lab.place(tb, in: b, address: "10.77.0.2/24")
            #expect(lab.ping(from: a, "10.77.0.2").received == 3, "\(bridge.output)")
            #expect(!bridge.output.contains("one write(2) per frame"), "io_uring was not available, or --no-io-uring was not taken: \(bridge.output)")

            let receiver = try lab.background(["ip", "netns", "exec", b, "/usr/bin/python3", "-c", Self.receiver])
            _ = Lab.eventually { lab.exec(b, ["ss", "-Huln", "sport = :7000"]).output.contains("7000") }
            let sent = lab.exec(a, ["/usr/bin/python3", "-c", Self.sender, "600"])
            #expect(sent.ok, "\(sent.output)")
            _ = receiver.wait(within: 10)
            let got = receiver.output.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { Int($0) }
            #expect(got == Array(0..<600), "got \(got.count) datagrams; first out of order or missing at \(zip(got, 0...).first { $0 != $1 }.map { "\($1): \($0)" } ?? "the end")")

            for reverse in [false, true] {
                let run = try lab.iperf(from: a, to: b, address: "10.77.0.2", reverse: reverse)
                #expect(run.bps > 0, "iperf3 TCP \(reverse ? "b -> a" : "a -> b"): \(run.output)")
            }
            #expect(lab.checksumErrors(in: a).isEmpty && lab.checksumErrors(in: b).isEmpty, "a: \(lab.checksumErrors(in: a)) b: \(lab.checksumErrors(in: b))")
            let counters = Lab.portCounters(bridge, port: tb)
            #expect(counters["transmit_error"] == nil && counters["transmit_queue_full"] == nil, "\(counters)")
            #expect(bridge.stop() == 0, "\(bridge.output)")
        }
    }
}
