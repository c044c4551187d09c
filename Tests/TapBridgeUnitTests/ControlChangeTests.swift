import Foundation
import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import TapBridgeOptions
import Testing

/// Changes through the control socket's responder on a bridge without ports, over a fake
/// kernel, without root: `remote add|del` answer later (after the name's lookup, off the loop),
/// a datapath=user remote asks the kernel nothing, and changes of ports and remotes run one at
/// a time, in order, while one waits.
@Suite("Changes answered later, in order")
struct ControlChangeTests {
    static func daemon(_ fake: RecordingLinkKernel) throws -> BridgeDaemon {
        var settings = Settings()
        let tag = "\(getpid())-\(Int.random(in: 0..<1_000_000))"
        settings.control = "/tmp/tbu-\(tag).sock"
        return try BridgeDaemon(settings: settings, name: "tbu-\(tag)", version: "test", logger: Logger(label: "test"), kernel: fake)
    }

    /// Starts `reply`'s answer; what it answered (at once or later) lands in `answers`.
    static func start(_ reply: ControlServer.Reply, into answers: @escaping (ControlResponse) -> Void) {
        switch reply {
        case .response(let r): answers(r)
        case .later(let start): start(answers)
        case .stream: Issue.record("a streamed answer")
        }
    }

    /// Runs the loop's side of the worker until `done` holds (at most 10 s).
    static func pump(_ daemon: BridgeDaemon, until done: () -> Bool) {
        for _ in 0..<100 where !done() {
            var fd = pollfd(fd: daemon.linkControl.mailbox.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&fd, 1, 100)
            daemon.linkControl.deliver()
        }
    }

    @Test func aRemoteIsAddedAndRemovedWhenItsNameIsLookedUp() throws {
        let fake = RecordingLinkKernel()
        let daemon = try Self.daemon(fake)
        defer { daemon.shutdown() }
        let responder = ControlResponder(daemon: daemon)
        let port = 30_000 + Int(getpid() % 20_000)
        var answers: [ControlResponse] = []
        let add = responder.reply(to: ControlRequest(command: "remote-add", spec: "localhost:\(port),name=one"))
        guard case .later = add else {
            Issue.record("remote add answered at once: \(add)")
            return
        }
        Self.start(add) { answers.append($0) }
        Self.pump(daemon) { !answers.isEmpty }
        #expect(answers.first?.ok == true && answers.first?.message?.contains("remote one added") == true, "\(answers)")
        #expect(daemon.engine.port(named: "one") != nil && fake.performed.isEmpty, "\(fake.performed)")
        Self.start(responder.reply(to: ControlRequest(command: "remote-del", port: "one"))) { answers.append($0) }
        Self.pump(daemon) { answers.count == 2 }
        #expect(answers.count == 2 && answers[1].ok && daemon.engine.port(named: "one") == nil, "\(answers)")
        // a name that does not resolve: the resolver's error, nothing added
        Self.start(responder.reply(to: ControlRequest(command: "remote-add", spec: "no-such-host.invalid:\(port)"))) { answers.append($0) }
        Self.pump(daemon) { answers.count == 3 }
        #expect(answers.count == 3 && !answers[2].ok && answers[2].error?.contains("cannot resolve no-such-host.invalid") == true, "\(answers)")
    }

    /// While a change waits (held here until released), the changes after it wait their turn,
    /// in order; `show` and the table's own changes are answered at once.
    @Test func changesAfterOneUnderWayWaitTheirTurn() throws {
        let daemon = try Self.daemon(RecordingLinkKernel())
        defer { daemon.shutdown() }
        let responder = ControlResponder(daemon: daemon)
        var order: [String] = []
        var release: ((ControlResponse) -> Void)? = nil
        responder.schedule({ done in release = done }, deliver: { _ in order.append("first") })
        Self.start(responder.reply(to: ControlRequest(command: "port-del", port: "nothing"))) { order.append("port del: \($0.error ?? "ok")") }
        Self.start(responder.reply(to: ControlRequest(command: "port-set", port: "nothing", spec: "delay=1ms"))) { order.append("port set: \($0.ok)") }
        Self.start(responder.reply(to: ControlRequest(command: "show-ports"))) { order.append("show: \($0.ok)") }
        #expect(order == ["show: true"], "\(order)")
        release?(.success("done"))
        #expect(order == ["show: true", "first", "port del: no port named 'nothing'", "port set: false"], "\(order)")
        #expect(!responder.changeUnderWay && responder.held.isEmpty)
    }
}
