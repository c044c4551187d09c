import CTapBridge
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices
import TapBridgeOptions

/// Answers the control socket's requests, between batches: `show` from the engine's registry
/// and the statistics model, `fdb` and `port` changes through the engine and the daemon.
final class ControlResponder {
    unowned let daemon: BridgeDaemon
    var engine: ForwardingEngine { daemon.engine }
    var logger: Logger { daemon.logger }

    init(daemon: BridgeDaemon) { self.daemon = daemon }

    /// A change that answers through `done` (at once, or when the worker is through).
    typealias Change = (_ done: @escaping (ControlResponse) -> Void) -> Void
    /// Changes of ports and remotes run one at a time: while one waits for the control-plane
    /// worker (a vxlan device made, a remote's learned MACs forgotten), those after it are held,
    /// in order, so each sees the state the one before left. (`show` is answered at once, and
    /// `fdb add|del|flush`, which touch only the table, too.)
    var changeUnderWay = false
    var held: [(change: Change, deliver: (ControlResponse) -> Void)] = []
    var runningHeld = false

    /// The commands held behind a change under way.
    static let orderedCommands: Set<String> = ["port-add", "port-del", "port-set", "remote-add", "remote-del"]

    /// The answer to `change`, run in its turn: later.
    func inTurn(_ change: @escaping Change) -> ControlServer.Reply {
        .later { [unowned self] deliver in schedule(change, deliver: deliver) }
    }

    /// Runs `change` after those held before it; its answer goes to `deliver`.
    func schedule(_ change: @escaping Change, deliver: @escaping (ControlResponse) -> Void) {
        held.append((change, deliver))
        runHeld()
    }

    private func runHeld() {
        guard !runningHeld else { return }  // (a change that answered at once: the loop below goes on)
        runningHeld = true
        defer { runningHeld = false }
        while !changeUnderWay, !held.isEmpty {
            let (change, deliver) = held.removeFirst()
            changeUnderWay = true
            change { [unowned self] response in
                deliver(response)
                changeUnderWay = false
                runHeld()
            }
        }
    }

    /// The response to a change's outcome.
    static func response(_ result: Result<String, StartupError>) -> ControlResponse {
        switch result {
        case .success(let line): .success(line)
        case .failure(let error): .failure(error.message)
        }
    }

    /// Entries per slice of a streamed `show fdb` answer (about 200 KB of JSON).
    static let fdbSliceEntries = 2048

    /// Slab positions an `fdb flush` slice visits (a few milliseconds of work).
    static let flushSlicePositions = 32_768

    /// Answers one control request: `show fdb` and `fdb flush` as streams of slices (a million
    /// entries must not stall forwarding nor be held in memory at once), the rest at once.
    func reply(to request: ControlRequest) -> ControlServer.Reply {
        if request.command == "fdb-flush" { return flush(request) }
        if request.command == "remote-add" || request.command == "remote-del" { return remoteChange(request) }
        if request.command == "port-add", let text = request.spec, let spec = try? PortSpec(parsing: text),
           spec.namespace != nil || DescriptorCloser.isPending(spec.name) {
            // a name whose TAP is still being closed (port del just before) waits for that on
            // the worker; a netns= port is placed in its namespace there: answered when done
            return inTurn { [unowned self] done in
                let add = { [unowned self] in
                    guard spec.namespace != nil else { return done(handle(request)) }
                    if let refusal = refusal(toAdd: spec) { return done(.failure(refusal)) }
                    daemon.attachPlaced(spec) { done(Self.response($0)) }
                }
                guard DescriptorCloser.isPending(spec.name) else { return add() }
                daemon.linkControl.perform([.waitForClose(spec.name)]) { _ in add() }
            }
        }
        if Self.orderedCommands.contains(request.command), changeUnderWay || !held.isEmpty {
            return inTurn { [unowned self] done in done(handle(request)) }
        }
        guard request.command == "show-fdb" else { return .response(handle(request)) }
        guard case .success(let port) = optionalPort(request.port) else { return .response(.failure("no port named '\(request.port ?? "")'")) }
        var position = 0
        var first = true  // no entry written yet
        var started = false
        return .stream { [unowned self] out in
            if !started { out += Array(#"{"fdb":["#.utf8) }
            started = true
            let now = Instant(nanoseconds: ctb_monotonic_ns())
            let (slice, next) = engine.bridge.table.entries(from: position, limit: Self.fdbSliceEntries, at: now)
            for e in slice where (port == nil || e.port == port) && (request.vlan == nil || Int(e.vlan.rawValue) == request.vlan) {
                let name = engine.name(of: e.port)
                if name.isEmpty { continue }  // the port went away while answering
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                ControlCoding.appendJSON(FDBReport(mac: "\(e.mac)", vlan: Int(e.vlan.rawValue), port: name,
                                                   ageSeconds: Double(e.age.nanoseconds) / 1e9, static: e.isStatic), to: &out)
            }
            if let next {
                position = next
                return true
            }
            out += Array(#"],"ok":true}"#.utf8)
            out.append(UInt8(ascii: "\n"))
            return false
        }
    }

    /// Answers one control request. Runs inside the poll loop, between batches.
    func handle(_ request: ControlRequest) -> ControlResponse {
        let now = Instant(nanoseconds: ctb_monotonic_ns())
        switch request.command {
        case "show-ports":
            var r = ControlResponse.success()
            r.ports = daemon.portReports()
            return r
        case "show-stats":
            var r = ControlResponse.success()
            r.stats = daemon.statsReport(at: now)
            return r
        case "show-mdb":
            var r = ControlResponse.success()
            r.mdb = daemon.mdbReport(at: now)
            return r
        case "fdb-add", "fdb-del":
            guard let text = request.mac, let mac = MACAddress(text) else { return .failure("expected a MAC address like 02:00:00:00:00:01, got '\(request.mac ?? "")'") }
            guard let name = request.port, let port = engine.port(named: name) else { return .failure("no port named '\(request.port ?? "")'") }
            // no --vlan: the port's untagged VLAN (its access VLAN, or a trunk's native one)
            let mode = engine.bridge.configuration(of: port)?.vlanMode
            guard let vlan = request.vlan.map({ VLANID(validating: $0) }) ?? mode?.untaggedVLAN else {
                if let v = request.vlan { return .failure("VLAN must be 1-4094, got \(v)") }
                return .failure("port \(name) is a trunk without a native VLAN: give --vlan N")
            }
            if request.command == "fdb-add" {
                guard mac.isValidSource else { return .failure("\(mac) is a group or all-zero address: it cannot be a station") }
                guard mode?.members.contains(vlan) == true else {
                    return .failure("cannot pin \(mac) to \(name) in VLAN \(vlan): the port does not carry VLAN \(vlan) (it is \(mode.map { "\($0)" } ?? "gone"))")
                }
                guard engine.bridge.addStaticEntry(mac, on: port, vlan: vlan) else {
                    return .failure("cannot pin \(mac) to \(name) in VLAN \(vlan): the table is full of static entries (--max-macs \(engine.bridge.table.configuration.maximumEntries))")
                }
                logger.info("control: \(mac) pinned to \(name), VLAN \(vlan)")
                return .success("\(mac) pinned to \(name) in VLAN \(vlan)")
            }
            guard engine.bridge.table.peek(mac, vlan: vlan, at: now) == port else { return .failure("\(mac) is not on \(name) in VLAN \(vlan)") }
            engine.bridge.removeEntry(mac, vlan: vlan)
            return .success("\(mac) removed from \(name) in VLAN \(vlan)")
        case "port-add":
            guard let text = request.spec else { return .failure("port-add needs a spec, like tap3,vlan=10") }
            let spec: PortSpec
            do {
                spec = try PortSpec(parsing: text)
            } catch {
                return .failure(error.description)
            }
            if let refusal = refusal(toAdd: spec) { return .failure(refusal) }
            return answer { () throws(StartupError) in
                try daemon.attachPort(spec)
                if let endpoint = spec.stream, engine.port(named: spec.name) == nil {
                    return "port \(spec.name) added, connecting to \(endpoint) (show ports says when it is up)"
                }
                return "port \(spec.name) added"
            }
        case "port-del":
            if let name = request.port, daemon.directory.absent.contains(name) {
                daemon.directory.remove(name)
                daemon.connector.cancel(name)
                logger.info("control: port \(name) (absent) removed")
                return .success("port \(name) removed (it was absent)")
            }
            guard let name = request.port, let port = engine.port(named: name) else {
                return .failure("no port named '\(request.port ?? "")'")
            }
            if let device = daemon.kernelRemotes?.devices.first(where: { $0.name == name }) {
                return .failure("port \(name) is the vxlan device of datapath=kernel remotes \(device.remotes.map(\.name).joined(separator: ", ")): remote del removes them, and the device with the last")
            }
            daemon.removePort(port)
            logger.info("control: port \(name) removed")
            return .success("port \(name) removed")
        case "port-set":
            guard let name = request.port, let text = request.spec else { return .failure("port-set needs a port and options, like delay=50ms loss=1%") }
            return answer { () throws(StartupError) in try daemon.setPort(name, text) }
        default:
            return .failure("unknown command '\(request.command)' (known: show-ports, show-fdb, show-stats, fdb-add, fdb-del, fdb-flush, port-add, port-del, remote-add, remote-del)")
        }
    }

    /// `remote add` and `remote del`: the host looked up on the worker (a resolver that does not
    /// answer holds this answer, never the loop), then the change in its turn; answered when
    /// it is done.
    func remoteChange(_ request: ControlRequest) -> ControlServer.Reply {
        if request.command == "remote-add" {
            guard let text = request.spec else { return .response(.failure("remote-add needs a spec, like 192.0.2.5:4789,vni=7")) }
            let spec: RemoteSpec
            do throws(StartupError) { spec = try daemon.parseRemote(text) } catch { return .response(.failure(error.message)) }
            return .later { [unowned self] deliver in
                daemon.linkControl.lookup(host: spec.host, port: spec.port, ipv4Only: daemon.looksUpIPv4Only(spec)) { [unowned self] found in
                    switch found {
                    case .failure(let error): deliver(.failure("remote \(spec.name): \(error.message)"))
                    case .success(let address):
                        schedule({ [unowned self] done in daemon.addRemote(spec, text, at: address) { done(Self.response($0)) } }, deliver: deliver)
                    }
                }
            }
        }
        guard let which = request.port else { return .response(.failure("remote-del needs a remote's name or ADDRESS:PORT")) }
        let remove: (SocketAddress?) -> Change = { [unowned self] address in { [unowned self] done in daemon.removeRemote(which, at: address) { done(Self.response($0)) } } }
        guard let (host, port) = SocketAddress.split(which) else {
            return inTurn(remove(nil))
        }
        return .later { [unowned self] deliver in
            daemon.linkControl.lookup(host: host, port: port) { [unowned self] found in
                // (not an address: a remote's name may still match)
                schedule(remove(try? found.get()), deliver: deliver)
            }
        }
    }

    /// Why `port add` of `spec` is refused: its name is taken.
    func refusal(toAdd spec: PortSpec) -> String? {
        if engine.port(named: spec.name) != nil { return "port \(spec.name) exists" }
        if daemon.directory.absent.contains(spec.name) { return "port \(spec.name) exists (absent: waiting for its interface; port del \(spec.name) first)" }
        return nil
    }

    /// The answer to a change that succeeds with a message or fails with a `StartupError`.
    func answer(_ change: () throws(StartupError) -> String) -> ControlResponse {
        do {
            return .success(try change())
        } catch {
            return .failure(error.message)
        }
    }

    /// `fdb flush`, a slice of the table per poll round; the answer (how many went) at the end.
    func flush(_ request: ControlRequest) -> ControlServer.Reply {
        guard case .success(let port) = optionalPort(request.port) else { return .response(.failure("no port named '\(request.port ?? "")'")) }
        var vlan: VLANID? = nil
        if let v = request.vlan {
            guard let id = VLANID(validating: v) else { return .response(.failure("VLAN must be 1-4094, got \(v)")) }
            vlan = id
        }
        var position = 0
        var flushed = 0
        return .stream { [unowned self] out in
            let (removed, next) = engine.bridge.flush(from: position, positions: Self.flushSlicePositions, port: port, vlan: vlan,
                                                      includingStatic: request.spec == "static")
            flushed += removed
            if let next {
                position = next
                return true
            }
            var r = ControlResponse.success()
            r.flushed = flushed
            out += ControlServer.encode(r)
            return false
        }
    }

    /// The port a request names: nil when it names none, failure when no port has that name.
    func optionalPort(_ name: String?) -> Result<PortID?, Errno> {
        guard let name else { return .success(nil) }
        return engine.port(named: name).map { .success($0) } ?? .failure(Errno(ENODEV))
    }
}
