import CTapBridgePcap
import Glibc
public import Logging
public import TapBridgeCore

/// The file format of `--mirror` (`--mirror-format`).
public enum MirrorFormat: String, Sendable, CaseIterable {
    /// pcapng: each port is an interface named after it, and each frame says whether it was
    /// received (inbound) or sent (outbound, `--mirror-egress`), as Wireshark and tshark show.
    case pcapng
    /// Classic pcap, for old readers: no port, no direction.
    case pcap
}

/// What to mirror and where (`--mirror*`, `--snaplen`).
public struct MirrorOptions: Sendable, Equatable {
    /// pcap file, or "-" for standard output.
    public var path: String?
    /// Interface to inject mirrored frames into.
    public var interface: String?
    /// BPF expression (pcap syntax).
    public var filter: String?
    /// Port names to mirror; empty: all.
    public var ports: [String] = []
    /// Mirror frames leaving the selected ports too.
    public var egress = false
    /// Start a new file past this many bytes (0: never), keeping `rotateCount` files.
    public var rotateBytes: Int64 = 0
    public var rotateCount = 5
    /// Bytes of each frame kept (default 262,144, as tcpdump).
    public var snaplen = 262_144
    /// pcapng (default: one interface per port, each frame's direction) or classic pcap.
    public var format = MirrorFormat.pcapng

    public init(path: String? = nil, interface: String? = nil) {
        self.path = path
        self.interface = interface
    }

    /// The largest rotation size taken: 1 TiB (1024G).
    public static let maximumRotationBytes: Int64 = 1 << 40

    /// Parses `SIZE[,COUNT]` with SIZE like 10M, 512k, 1G, 100000, from 1k to 1024G; nil for
    /// anything else (a size that overflows included).
    public static func parseRotation(_ text: String) -> (bytes: Int64, count: Int)? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), var digits = parts.first, !digits.isEmpty else { return nil }
        var scale: Int64 = 1
        switch digits.last?.lowercased() {
        case "k": scale = 1 << 10
        case "m": scale = 1 << 20
        case "g": scale = 1 << 30
        default: break
        }
        if scale > 1 { digits = digits.dropLast() }
        guard let n = Int64(digits), n > 0 else { return nil }
        let (bytes, overflow) = n.multipliedReportingOverflow(by: scale)
        guard !overflow, (1024...maximumRotationBytes).contains(bytes) else { return nil }
        var count = 5
        if parts.count == 2 {
            guard let c = Int(parts[1]), (1...1000).contains(c) else { return nil }
            count = c
        }
        return (bytes, count)
    }
}

/// The mirror: a `FrameSink` that writes a pcap file (through libpcap, never blocking) and/or
/// injects into an interface, after an optional BPF filter.
public final class PcapMirror: FrameSink {
    /// Counters.
    public struct Statistics: Sendable, Equatable {
        /// Frames offered to the mirror.
        public var seen: UInt64 = 0
        /// Frames the filter did not match.
        public var filtered: UInt64 = 0
        /// Frames whose records reached the file (or pipe) whole.
        public var written: UInt64 = 0
        /// Frames dropped: refused because the writer could not keep up (buffer full) or is
        /// broken, or lost from the buffer when a write failed (a reader that went away, a
        /// full disk) or when the bridge stopped with a reader that did not read. Copies still
        /// buffered are neither written nor dropped yet.
        public var dropped: UInt64 = 0
        /// Write errors on the pcap descriptor (disk full...).
        public var writeErrors: UInt64 = 0
        /// Frames injected into the mirror interface, and those it refused.
        public var injected: UInt64 = 0
        public var injectDropped: UInt64 = 0
        /// New files started by rotation.
        public var rotations: UInt64 = 0
        public init() {}
    }

    public private(set) var statistics = Statistics()
    let options: MirrorOptions
    let logger: Logger
    var writer: OpaquePointer?
    var filter: OpaquePointer?
    var injector: OpaquePointer?
    var retryAfter: Int64 = 0
    var loggedWriteError = false
    /// Copies were taken since the last `drain`.
    var tookSinceDrain = false
    /// Frames taken into the writer's buffer, and refused by it.
    var taken: UInt64 = 0, refused: UInt64 = 0
    /// Buffer between libpcap and the descriptor: 4 MiB.
    static let bufferBytes = 4 << 20

    /// pcapng: each port's name (by port index), and its interface in the file once declared.
    var names: [String] = []
    var interfaces: [UInt32?] = []

    /// A port's name, for its pcapng interface: declared when its first frame is written.
    public func didAddPort(_ port: PortID, name: String) {
        if port.index >= names.count {
            names += Array(repeating: "", count: port.index + 1 - names.count)
            interfaces += Array(repeating: nil, count: port.index + 1 - interfaces.count)
        }
        names[port.index] = name
        interfaces[port.index] = nil  // a reused port ID: another port, another interface
    }

    /// The pcapng interface of `port`, declared now if it is not yet (nil: no room for it now).
    func interface(of port: PortID, _ writer: OpaquePointer) -> UInt32? {
        if port.index < interfaces.count, let id = interfaces[port.index] { return id }
        let name = port.index < names.count && !names[port.index].isEmpty ? names[port.index] : "port \(port.index)"
        let id = ctb_mirror_add_interface(writer, name)
        guard id >= 0 else { return nil }
        if port.index >= interfaces.count { didAddPort(port, name: name) }
        interfaces[port.index] = UInt32(id)
        return UInt32(id)
    }

    public init(_ options: MirrorOptions, logger: Logger) throws(StartupError) {
        self.options = options
        self.logger = logger
        var err = [CChar](repeating: 0, count: 512)
        if let expression = options.filter {
            filter = ctb_filter_compile(expression, Int32(options.snaplen), &err, err.count)
            if filter == nil { throw StartupError("--mirror-filter '\(expression)': \(Self.text(err))") }
        }
        if let path = options.path {
            writer = ctb_mirror_open(path, Int32(options.snaplen), Self.bufferBytes, options.rotateBytes, Int32(options.rotateCount),
                                     options.format == .pcapng ? 1 : 0, &err, err.count)
            if writer == nil {
                close()
                throw StartupError("--mirror '\(path)': cannot write: \(Self.text(err))")
            }
        }
        if let interface = options.interface {
            injector = ctb_injector_open(interface, &err, err.count)
            if injector == nil {
                close()
                throw StartupError("--mirror-iface '\(interface)': \(Self.text(err))")
            }
        }
    }

    deinit { close() }

    static func text(_ chars: [CChar]) -> String {
        String(decoding: chars.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func observe(_ frame: UnsafeRawBufferPointer, on port: PortID, direction: MirrorDirection) {
        statistics.seen &+= 1
        let base = frame.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let length = UInt32(frame.count)
        if let filter, ctb_filter_match(filter, base, length, min(length, UInt32(options.snaplen))) == 0 {
            statistics.filtered &+= 1
            return
        }
        if let writer {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            let rc: Int32
            if options.format == .pcapng {
                guard let interface = interface(of: port, writer) else {
                    refused &+= 1
                    statistics.dropped &+= 1
                    return
                }
                rc = ctb_mirror_write_ng(writer, interface, direction == .ingress ? 1 : 2, base, length, Int64(now.tv_sec), Int32(now.tv_nsec / 1000))
            } else {
                rc = ctb_mirror_write(writer, base, length, Int64(now.tv_sec), Int32(now.tv_nsec / 1000))
            }
            if rc == 0 {
                taken &+= 1
                tookSinceDrain = true
            } else {
                refused &+= 1
                statistics.dropped &+= 1
            }
        }
        if let injector {
            if ctb_injector_send(injector, base, length) == 0 {
                statistics.injected &+= 1
            } else {
                statistics.injectDropped &+= 1
            }
        }
    }

    /// The descriptor to poll for POLLOUT while bytes are pending, or nil (nothing pending,
    /// or waiting out a write error).
    public var pendingDescriptor: Int32? {
        guard let writer, pendingBytes > 0, retryAfter == 0 else { return nil }
        return ctb_mirror_fd(writer)
    }

    var pendingBytes: Int = 0

    /// When `drain` has work without waiting for the descriptor: at once after new copies
    /// (0), at the retry after a write error, or nil.
    public var drainDeadline: Int64? {
        if retryAfter != 0 { return retryAfter }
        return tookSinceDrain ? 0 : nil
    }

    /// Writes what is buffered without blocking. After a write error (a full disk), logs once,
    /// counts, and waits a second before trying again; meanwhile new copies fill the buffer
    /// and then are dropped (counted).
    public func drain(at now: Instant) {
        guard let writer else { return }
        tookSinceDrain = false
        if retryAfter != 0 {
            guard now.nanoseconds >= retryAfter else { return }
            retryAfter = 0
        }
        let left = ctb_mirror_drain(writer)
        statistics.rotations = UInt64(ctb_mirror_rotations(writer))
        let writtenBefore = statistics.written
        statistics.written = ctb_mirror_flushed(writer)
        statistics.dropped = refused &+ ctb_mirror_lost(writer)
        if left >= 0 {
            pendingBytes = left
            // (only once something was written again: nothing to write proves nothing)
            if loggedWriteError, left == 0, statistics.written != writtenBefore {
                logger.info("mirror: writing to \(options.path ?? "") again")
                loggedWriteError = false
            }
            return
        }
        statistics.writeErrors &+= 1
        pendingBytes = 1
        if -left == EPIPE {
            // the reader of the pipe is gone for good: no retries, no "again"
            retryAfter = .max
            if !loggedWriteError {
                logger.notice("mirror: the reader of \(options.path == "-" ? "standard output" : options.path ?? "the pipe") went away; mirroring stops (copies are dropped and counted), forwarding goes on")
                loggedWriteError = true
            }
            return
        }
        // (saturating: close drains "at the end of time" and may fail too)
        let (retry, overflow) = now.nanoseconds.addingReportingOverflow(1_000_000_000)
        retryAfter = overflow ? .max : retry
        if !loggedWriteError {
            logger.error("mirror: write to \(options.path ?? "") failed: \(String(cString: strerror(Int32(-left)))); mirror copies are dropped (and counted) until it recovers, forwarding goes on")
            loggedWriteError = true
        }
    }

    /// Flushes what it can (waiting up to `wait` milliseconds for a slow reader) and closes.
    public func close(waitMilliseconds wait: Int32 = 0) {
        if let writer {
            drain(at: Instant(nanoseconds: .max))  // counts what a write error lost
            let lost = ctb_mirror_lost(writer)
            let leftOver = ctb_mirror_close(writer, wait)
            // close wrote what it could: every frame taken in and neither lost nor left over
            statistics.written = taken &- lost &- leftOver
            statistics.dropped = refused &+ lost &+ leftOver
        }
        if let filter { ctb_filter_free(filter) }
        if let injector { ctb_injector_close(injector) }
        writer = nil
        filter = nil
        injector = nil
    }

    /// Counts the frames in a pcap file matching `filter` (pcap_open_offline); for tests and
    /// tools. Throws the libpcap message on failure.
    public static func count(file path: String, filter: String? = nil) throws(StartupError) -> Int {
        var err = [CChar](repeating: 0, count: 512)
        let n = ctb_pcap_file_count(path, filter, &err, err.count)
        if n < 0 { throw StartupError(text(err)) }
        return n
    }
}

extension PcapMirror.Statistics: CounterOwner {
    public static let counters: [Counter<Self>] = [
        .init("seen", \.seen, "Frames offered to the mirror."),
        .init("written", \.written, "Frames written to the pcap file."),
        .init("filtered_out", \.filtered, "Frames the mirror filter did not match."),
        .init("dropped", \.dropped, "Mirror copies dropped (slow reader, full disk)."),
        .init("write_errors", \.writeErrors, "Write errors on the pcap file."),
        .init("rotations", \.rotations, "pcap files started by rotation."),
        .init("injected", \.injected, "Frames injected into the mirror interface."),
        .init("inject_dropped", \.injectDropped, "Frames the mirror interface refused."),
    ]
}
