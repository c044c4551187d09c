import Dispatch
import Foundation
import Glibc
import Logging
import TapBridgeCore
@testable import TapBridgeDaemon
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions
import Testing

/// A kernel that records what it is asked, in order: each operation, and optionally fails the
/// ones `fails` picks or holds each until `release` (to see that the loop does not wait).
final class RecordingLinkKernel: LinkKernel, @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [LinkOperation] = []
    var fails: @Sendable (LinkOperation) -> Bool = { _ in false }
    /// What `forgetLearned` says it forgot.
    var forgets = 0
    /// How a namespace is joined, and the lock it is held by.
    var joins = NamespaceJoin(lock: 99, how: .made)
    /// When set, each operation waits for it (at most 5 s; `waitedOut` says if that ran out).
    var gate: DispatchSemaphore? = nil
    private(set) var waitedOut = false

    var performed: [LinkOperation] { lock.withLock { recorded } }

    func perform(_ operation: LinkOperation) throws(StartupError) -> LinkOutcome {
        lock.withLock { recorded.append(operation) }
        if let gate, gate.wait(timeout: .now() + 5) == .timedOut { lock.withLock { waitedOut = true } }
        if fails(operation) { throw StartupError("refused: \(operation)") }
        if case .forgetLearned = operation { return LinkOutcome(count: forgets) }
        if case .placeInNamespace(let p) = operation, p.join { return LinkOutcome(namespace: joins) }
        if case .leaveNamespace = operation { return LinkOutcome(count: 1) }
        return LinkOutcome()
    }
}

/// What `datapath=kernel` remotes ask of the kernel, over a fake `LinkKernel`, and how
/// `LinkControl` hands work over: no root, no device made.
@Suite("The control plane's worker")
struct LinkControlTests {
    static let logger = Logger(label: "test")

    static func remote(_ text: String) throws -> RemoteSpec { try RemoteSpec(parsing: text + ",datapath=kernel") }

    static func address(_ host: String, _ port: UInt16) throws -> SocketAddress { try SocketAddress.resolve(host: host, port: port, ipv4Only: false) }

    static func vxlan(_ fake: RecordingLinkKernel, _ remotes: [RemoteSpec] = []) throws -> (KernelVXLAN, LinkControl) {
        let control = try LinkControl(kernel: fake)
        let kernel = try KernelVXLAN(remotes: remotes, vni: VNI(1)!, local: nil, bridge: "lab", maximumAddresses: 8192, control: control, logger: logger)
        return (kernel, control)
    }

    /// Start-up makes the devices at once; `remote add` joins a device (one FDB entry) or makes
    /// one; `remote del` deletes the entry and forgets the MACs learned behind it, or the device
    /// with its last remote; exit deletes what is left. Each answer comes with its completion,
    /// after the worker, never before.
    @Test func remotesAskTheKernelForWhatTheyNeedInOrder() throws {
        let fake = RecordingLinkKernel()
        fake.forgets = 3
        let (kernel, control) = try Self.vxlan(fake, [try Self.remote("127.0.0.2:4790")])
        guard case .makeVXLAN(let first) = fake.performed.first, fake.performed.count == 1 else {
            Issue.record("start-up asked \(fake.performed)")
            return
        }
        #expect(first.name == "vx-lab" && first.vni == 1 && first.port == 4790 && first.remote == "127.0.0.2" && first.maximumAddresses == 8192)

        var answers: [String] = []
        try kernel.add(try Self.remote("127.0.0.3:4790"), at: try Self.address("127.0.0.3", 4790)) { answers.append((try? $0.get().line) ?? "failed: \($0)") }
        try kernel.add(try Self.remote("127.0.0.4:4791"), at: try Self.address("127.0.0.4", 4791)) { answers.append((try? $0.get().line) ?? "failed: \($0)") }
        #expect(answers.isEmpty, "an answer came before the worker did the change")
        control.finish()
        #expect(answers.count == 2 && answers[0].contains("to vxlan device vx-lab") && answers[1].contains("vxlan device vx1-lab made"), "\(answers)")
        #expect(kernel.devices.map(\.name) == ["vx-lab", "vx1-lab"] && kernel.devices[0].remotes.count == 2)

        #expect(kernel.remove("127.0.0.3:4790", at: nil, removingPort: { _ in Issue.record("the device's port removed with a remote left") }) { answers.append((try? $0.get()) ?? "failed") })
        var removedPorts: [String] = []
        #expect(kernel.remove("127.0.0.4:4791", at: nil, removingPort: { removedPorts.append($0) }) { answers.append((try? $0.get()) ?? "failed") })
        #expect(!kernel.remove("nobody", at: nil, removingPort: { _ in }) { _ in })
        control.finish()
        #expect(answers.count == 4 && answers[2].contains("with the 3 MACs it learned") && answers[3].contains("with vxlan device vx1-lab"), "\(answers)")
        #expect(removedPorts == ["vx1-lab"])

        kernel.releaseAll()
        let asked = fake.performed.dropFirst().map(\.description)
        #expect(asked.count == 6 && asked[1].hasPrefix("make vxlan vx1-lab vni 1 port 4791 remote 127.0.0.4 mtu ") && asked[1].hasSuffix(" maxaddress 8192"), "\(asked)")
        #expect(asked.count == 6 && Array(asked[0...0] + asked[2...]) == [
            "fdb append 00:00:00:00:00:00 dev vx-lab dst 127.0.0.3",
            "fdb del 00:00:00:00:00:00 dev vx-lab dst 127.0.0.3",
            "fdb forget dev vx-lab dst 127.0.0.3",
            "delete vx1-lab",
            "delete vx-lab",
        ], "\(asked)")
    }

    /// A change the kernel refuses changes nothing and says why; the one after it goes on.
    @Test func aRefusedChangeChangesNothing() throws {
        let fake = RecordingLinkKernel()
        fake.fails = { if case .fdbAppend = $0 { true } else { false } }
        let (kernel, control) = try Self.vxlan(fake, [try Self.remote("127.0.0.2:4790")])
        var answers: [Result<String, StartupError>] = []
        try kernel.add(try Self.remote("127.0.0.3:4790"), at: try Self.address("127.0.0.3", 4790)) { answers.append($0.map(\.line)) }
        control.finish()
        guard case .failure(let error) = answers.first else {
            Issue.record("a refused FDB entry was taken as done: \(answers)")
            return
        }
        #expect(error.message.contains("refused: fdb append"), "\(error.message)")
        #expect(kernel.devices.count == 1 && kernel.devices[0].remotes.count == 1)
        // a start-up whose device cannot be made fails, naming why
        let refusing = RecordingLinkKernel()
        refusing.fails = { _ in true }
        #expect(throws: StartupError.self) { _ = try Self.vxlan(refusing, [try Self.remote("127.0.0.2:4790")]) }
    }

    /// `perform` hands the work over and returns: a kernel operation that takes its time (held
    /// here until released) does not hold the caller, the loop.
    @Test func theLoopDoesNotWaitForTheKernel() throws {
        let fake = RecordingLinkKernel()
        let gate = DispatchSemaphore(value: 0)
        fake.gate = gate
        let control = try LinkControl(kernel: fake)
        var done = false
        control.perform([.deleteLink("held")]) { _ in done = true }
        // had perform waited for the kernel, the kernel would have waited its 5 s out first
        #expect(!done)
        gate.signal()
        control.finish()
        #expect(done && !fake.waitedOut && fake.performed == [.deleteLink("held")])
    }

    /// `netns=` ports: the first port in a namespace joins it, the next ones only move their
    /// TAP; the last port out leaves it (on the worker at run time), exit leaves the rest.
    @Test func namespacePortsAskTheKernelForWhatTheyNeedInOrder() throws {
        let fake = RecordingLinkKernel()
        let control = try LinkControl(kernel: fake)
        let namespaces = Namespaces(control: control, logger: Self.logger)
        let one = try PortSpec(parsing: "p1,netns=x,addr=10.0.0.1/24")
        let two = try PortSpec(parsing: "p2,netns=x,mac=02:00:00:00:00:02")
        let three = try PortSpec(parsing: "p3,netns=y,addr=fd00::3/64")
        #expect(try namespaces.placeNow(one) == ", in namespace x as 10.0.0.1/24 (made: removed on exit, by the last bridge in it)")
        #expect(try namespaces.placeNow(two) == ", in namespace x")
        var placed: [String] = []
        namespaces.place(three) { placed.append((try? $0.get()) ?? "failed: \($0)") }
        #expect(placed.isEmpty, "placed before the worker did it")
        control.finish()
        #expect(placed == [", in namespace y as fd00::3/64 (made: removed on exit, by the last bridge in it)"], "\(placed)")
        namespaces.release(port: "p1")
        namespaces.release(port: "p2")
        control.finish()
        namespaces.releaseAll()
        #expect(fake.performed.map(\.description) == [
            "join namespace x, move p1 into x addr 10.0.0.1/24",
            "move p2 into x mac 02:00:00:00:00:02",
            "join namespace y, move p3 into y addr fd00::3/64",
            "leave namespace x",
            "leave namespace y",
        ], "\(fake.performed.map(\.description))")
        #expect(namespaces.joined.isEmpty)
    }

    /// Lookups of one name at once are one lookup, each asker gets its answer on the loop; a
    /// name that does not resolve says why.
    @Test func aNameAskedTwiceIsLookedUpOnce() throws {
        let control = try LinkControl(kernel: RecordingLinkKernel())
        var answers: [String] = []
        control.lookup(host: "127.0.0.9", port: 4789) { answers.append((try? $0.get().description) ?? "failed") }
        control.lookup(host: "127.0.0.9", port: 4789) { answers.append((try? $0.get().description) ?? "failed") }
        #expect(control.lookupWaiters.count == 1 && control.lookupWaiters.first?.value.count == 2)
        control.lookup(host: "no such host name.invalid", port: 1) { answers.append((try? $0.get().description) ?? "failed: \($0)") }
        for _ in 0..<100 where answers.count < 3 {
            var fd = pollfd(fd: control.mailbox.fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&fd, 1, 100)
            control.deliver()
        }
        #expect(answers.count == 3 && answers.filter { $0 == "127.0.0.9:4789" }.count == 2, "\(answers)")
        #expect(answers.contains { $0.hasPrefix("failed") && $0.contains("no such host name.invalid") }, "\(answers)")
        #expect(!control.isBusy)
    }
}
