import CTapBridge
import Glibc
import Logging
import TapBridgeCore
import TapBridgeControl
import TapBridgeDevices

/// Link events from rtnetlink (`RTMGRP_LINK`), for ports on interfaces tapbridge did not make.
///
/// A packet socket learns of its interface's end only once: the kernel reports ENETDOWN when
/// the interface goes *down*, which is also the first step of its deletion; by the time the
/// bridge reads that error the interface often still exists, so the error cannot tell a link
/// set down (which comes back by itself) from a deletion, and after the deletion the socket
/// stays silent (unbound, no second error). A deleted veth stayed `up`, dropping as
/// `link_down`, and was never attached again. rtnetlink says it plainly: `RTM_DELLINK` for the
/// ifindex, sent after the socket was unbound. And `RTM_NEWLINK` of a name an absent port
/// waits for attaches it at once, rather than at the next half-second look.
///
/// If the kernel dropped events (`ENOBUFS`: a burst larger than the socket's buffer), every
/// packet port's interface is looked up by index instead: one ioctl each, only then.
final class LinkMonitor: EventSource {
    let fd: Int32
    let logger: Logger
    /// An interface was deleted (or moved out of this namespace): its ifindex.
    let deleted: (Int32) -> Void
    /// An interface appeared or changed: its name.
    let appeared: (String) -> Void
    /// Events were lost: look at everything.
    let lost: () -> Void
    let events = UnsafeMutablePointer<ctb_link_event>.allocate(capacity: 64)

    /// Nil if the socket cannot be opened (logged; ports are then found gone only by their
    /// own descriptors' errors).
    init?(logger: Logger, deleted: @escaping (Int32) -> Void, appeared: @escaping (String) -> Void, lost: @escaping () -> Void) {
        let rc = ctb_link_monitor_open()
        guard rc >= 0 else {
            logger.warning("cannot listen to link events (rtnetlink: \(describeErrno(-rc))): a deleted veth or NIC under a packet port is noticed only by its socket's errors")
            return nil
        }
        fd = rc
        self.logger = logger
        self.deleted = deleted
        self.appeared = appeared
        self.lost = lost
    }

    deinit {
        close(fd)
        events.deallocate()
    }

    var steadyDescriptors: [Int32] { [fd] }
    func register(_ fds: inout [pollfd]) {}
    func deadline() -> Int64? { nil }

    func service(ready: ArraySlice<pollfd>, now: Instant) -> Int32? {
        // a bounded number per round: a host making thousands of interfaces cannot hold the loop
        for _ in 0..<8 {
            let n = ctb_link_monitor_read(fd, events, 64)
            if n < 0 {
                if -n == ENOBUFS { lost() } else { logger.warning("link events: \(describeErrno(-n))") }
                return nil
            }
            for k in 0..<Int(n) {
                let e = events[k]
                if e.deleted != 0 {
                    deleted(e.index)
                } else {
                    let name = withUnsafeBytes(of: e.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                    if !name.isEmpty { appeared(name) }
                }
            }
            if n < 64 { return nil }
        }
        return nil
    }
}

extension BridgeDaemon {
    /// Opens the link monitor (see `LinkMonitor`).
    func openLinkMonitor() {
        linkMonitor = LinkMonitor(
            logger: logger,
            deleted: { [unowned self] index in interfaceDeleted { $0 == index } },
            appeared: { [unowned self] name in
                if let away = directory[name]?.absence, away.spec.stream == nil { nextAbsentCheck = EventLoop.now().nanoseconds }
            },
            lost: { [unowned self] in
                interfaceDeleted { ctb_if_index_exists($0) == 0 }
                if !directory.absent.isEmpty { nextAbsentCheck = EventLoop.now().nanoseconds }
            })
    }

    /// The packet ports whose interface index `isGone` says is gone fail as removed (kept
    /// `absent` if their interface may come back). TAPs are left alone: their descriptor
    /// keeps working in another namespace, and reports its own deletion.
    func interfaceDeleted(_ isGone: (Int32) -> Bool) {
        var failed: [ObjectIdentifier: any PortDevice] = [:]
        for port in engine.ports {
            guard let entry = directory[engine.name(of: port)], entry.kind == .packet, let index = entry.interfaceIndex, isGone(index),
                let device = engine.device(of: port)
            else { continue }
            failed[ObjectIdentifier(device)] = device
        }
        for device in failed.values { portFailed(device, PortError(.deviceRemoved, code: ENODEV, operation: "rtnetlink RTM_DELLINK")) }
    }
}
