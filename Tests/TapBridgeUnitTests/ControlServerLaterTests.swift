import Foundation
import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import Testing

/// The control server's answers that come later, over a real Unix socket and the real loop
/// (no root): the client gets the answer when it is delivered, a timeout line when it does
/// not come in time, and an answer for a client that went away is dropped.
@Suite("Control answers that come later")
struct ControlServerLaterTests {
    /// A server at a fresh path whose every request is answered `.later`, handing the
    /// delivering function to `pending`; and a loop serving it.
    static func server(_ pending: @escaping (@escaping (ControlResponse) -> Void) -> Void) throws -> (ControlServer, EventLoop, String) {
        let path = "/tmp/tbl-\(getpid())-\(Int.random(in: 0..<1_000_000)).sock"
        let server = try ControlServer(path: path) { _ in .later(start: pending) }
        let loop = EventLoop(logger: Logger(label: "test"))
        loop.add(server)
        return (server, loop, path)
    }

    /// Connects and sends one request line; the blocking socket.
    static func ask(_ path: String) throws -> Int32 {
        let fd = try ControlSocket.connectTo(path, timeout: 2).get()
        var line = Array(#"{"command":"remote-add","spec":"h:1"}"#.utf8) + [10]
        #expect(send(fd, &line, line.count, 0) == line.count)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func read(_ fd: Int32) -> String {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            out += buffer[0..<n]
            if out.last == 10 { break }
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func theAnswerComesWhenItIsDelivered() throws {
        var deliver: ((ControlResponse) -> Void)? = nil
        let (server, loop, path) = try Self.server { deliver = $0 }
        let fd = try Self.ask(path)
        defer { close(fd) }
        for _ in 0..<20 where deliver == nil { _ = loop.runOnce() }
        let waiting = try #require(deliver, "the request was not taken")
        #expect(server.clients.count == 1 && server.clients[0].waiting)
        waiting(.success("done later"))
        let answer = Self.read(fd)
        #expect(answer.contains(#""message":"done later""#) && answer.contains(#""ok":true"#), "\(answer)")
        #expect(!server.clients[0].waiting)
    }

    @Test func anAnswerThatDoesNotComeInTimeIsATimeoutLine() throws {
        var deliver: ((ControlResponse) -> Void)? = nil
        let (server, loop, path) = try Self.server { deliver = $0 }
        server.laterTimeout = 50_000_000
        let fd = try Self.ask(path)
        defer { close(fd) }
        // (the loop sleeps until the client's 50 ms are up, then answers it)
        for _ in 0..<20 where server.clients.first?.answered != true || server.clients.first?.waiting == true { _ = loop.runOnce() }
        let answer = Self.read(fd)
        #expect(answer.contains("no answer within 0.05 s (the change may still take effect: show ports says)") && answer.contains(#""ok":false"#), "\(answer)")
        // the change's own answer, after: dropped
        deliver?(.success("too late"))
        #expect(server.clients.allSatisfy { !$0.waiting })
    }

    @Test func anAnswerForAClientThatWentAwayIsDropped() throws {
        var deliver: ((ControlResponse) -> Void)? = nil
        let (server, loop, path) = try Self.server { deliver = $0 }
        let fd = try Self.ask(path)
        for _ in 0..<20 where deliver == nil { _ = loop.runOnce() }
        close(fd)
        deliver?(.success("nobody reads this"))
        // it failed to write: the client is closed at the server's next pass
        #expect(server.clients.allSatisfy { $0.closing || !$0.waiting })
        let other = try Self.ask(path)
        defer { close(other) }
        for _ in 0..<20 where server.clients.contains(where: { $0.closing }) || server.clients.count < 1 { _ = loop.runOnce() }
        #expect(!server.clients.contains { $0.closing })
    }
}
