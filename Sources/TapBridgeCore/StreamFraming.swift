/// QEMU's stream framing (`-netdev stream`, `-netdev socket`, and vde's `-netdev vde` cousin
/// without the switch): each Ethernet frame follows its length, a 4-byte big-endian integer.
/// ```
///  [ length (4, big-endian) | frame (length bytes) ][ length | frame ] ...
/// ```
/// Nothing else: no version, no handshake, no virtio-net header (QEMU hands its guest's frames
/// over complete, so super-frames and partial checksums are finished before a stream port).
public enum StreamFraming {
    public static let headerLength = 4
    /// The largest frame a peer may send: QEMU's own receive limit (NET_BUFSIZE, 4096 + 65536);
    /// a longer length is a broken or hostile peer, and the connection closes.
    public static let maximumFrame = 69_632
}

/// Why a stream's byte sequence cannot be framed: the connection closes (the next length
/// could be anywhere).
public enum StreamFramingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A length of 0.
    case zeroLength
    /// A length above `StreamFraming.maximumFrame` (or the receiver's own limit).
    case oversized(Int)

    public var description: String {
        switch self {
        case .zeroLength: "a frame length of 0"
        case .oversized(let n): "a frame length of \(n) bytes (at most \(StreamFraming.maximumFrame))"
        }
    }
}

/// Reassembles frames from what a stream socket delivers, in any pieces: a read may end inside
/// a length or a frame, or hold many frames. One buffer, allocated once: room for the longest
/// frame plus one read; a frame is handed out in place, without a copy.
/// ```
///   recv ──► [ consumed | frames, part of one ........ | space ]
///                       ^ start                        ^ end
/// ```
public final class StreamReader {
    let storage: UnsafeMutableRawBufferPointer
    var start = 0
    var end = 0
    /// The longest frame taken.
    public let maximumFrame: Int

    /// `readSize`: the most one read asks for (beyond room for the longest frame).
    public init(maximumFrame: Int = StreamFraming.maximumFrame, readSize: Int = 128 * 1024) {
        precondition(maximumFrame > 0 && readSize > 0)
        self.maximumFrame = maximumFrame
        storage = .allocate(byteCount: StreamFraming.headerLength + maximumFrame + readSize, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Where the next read writes (never empty): the partial frame moves to the front first
    /// when the room behind it got short.
    public func space() -> UnsafeMutableRawBufferPointer {
        if start > 0 && storage.count - end < StreamFraming.headerLength + maximumFrame {
            let pending = end - start
            if pending > 0 { storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: pending) }
            start = 0
            end = pending
        }
        return UnsafeMutableRawBufferPointer(rebasing: storage[end...])
    }

    /// `n` bytes were read into `space()`.
    public func didRead(_ n: Int) {
        precondition(n >= 0 && end + n <= storage.count)
        end += n
    }

    /// Bytes held that are not yet a whole frame (a peer that closes now left mid-frame).
    public var pendingBytes: Int { end - start }

    /// The next whole frame (valid until the next call to `space()`), nil when more bytes are
    /// needed, or the reason the stream cannot be framed.
    public func next() throws(StreamFramingError) -> UnsafeRawBufferPointer? {
        let available = end - start
        guard available >= StreamFraming.headerLength else { return nil }
        let p = storage.baseAddress! + start
        let length = Int(UInt32(p.load(as: UInt8.self)) << 24 | UInt32(p.load(fromByteOffset: 1, as: UInt8.self)) << 16
            | UInt32(p.load(fromByteOffset: 2, as: UInt8.self)) << 8 | UInt32(p.load(fromByteOffset: 3, as: UInt8.self)))
        if length == 0 { throw .zeroLength }
        if length > maximumFrame { throw .oversized(length) }
        guard available >= StreamFraming.headerLength + length else { return nil }
        start += StreamFraming.headerLength + length
        if start == end { (start, end) = (0, 0) }
        return UnsafeRawBufferPointer(start: p + StreamFraming.headerLength, count: length)
    }
}

/// The bytes a stream port could not write yet (its peer reads slower than the bridge sends),
/// bounded: a frame that does not fit is refused whole (and counted by the caller), so a peer
/// that stops reading costs this much memory and no time. Allocated at the first frame that
/// has to wait.
public final class StreamWriteQueue {
    public let capacity: Int
    var storage: UnsafeMutableRawBufferPointer? = nil
    var start = 0
    var end = 0

    public init(capacity: Int = 512 * 1024) {
        precondition(capacity >= StreamFraming.headerLength + StreamFraming.maximumFrame)
        self.capacity = capacity
    }

    deinit { storage?.deallocate() }

    public var isEmpty: Bool { start == end }
    /// Bytes waiting.
    public var count: Int { end - start }

    /// The waiting bytes, oldest first.
    public var pending: UnsafeRawBufferPointer {
        guard let storage else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: storage[start..<end])
    }

    /// Appends `bytes` whole, or returns false (nothing appended) when they do not fit.
    public func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= capacity - count else { return false }
        let buffer = storage ?? .allocate(byteCount: capacity, alignment: 16)
        storage = buffer
        if capacity - end < bytes.count {
            let pending = end - start
            if pending > 0 { buffer.baseAddress!.copyMemory(from: buffer.baseAddress! + start, byteCount: pending) }
            (start, end) = (0, pending)
        }
        if let base = bytes.baseAddress, bytes.count > 0 { (buffer.baseAddress! + end).copyMemory(from: base, byteCount: bytes.count) }
        end += bytes.count
        return true
    }

    /// Appends a frame's length header and the frame, whole, or returns false.
    public func append(frame: UnsafeRawBufferPointer, skippingFirst written: Int = 0) -> Bool {
        let total = StreamFraming.headerLength + frame.count
        guard total - written <= capacity - count else { return false }
        var header = UInt32(frame.count).bigEndian
        let headerOK = withUnsafeBytes(of: &header) { h in
            written >= h.count || append(UnsafeRawBufferPointer(rebasing: h[written...]))
        }
        let skip = max(0, written - StreamFraming.headerLength)
        return headerOK && append(UnsafeRawBufferPointer(rebasing: frame[skip...]))
    }

    /// The first `n` waiting bytes were written.
    public func consumed(_ n: Int) {
        precondition(n >= 0 && n <= count)
        start += n
        if start == end { (start, end) = (0, 0) }
    }
}
