import Glibc

/// The text of an errno value, e.g. "Operation not permitted".
public func describeErrno(_ code: Int32) -> String { String(cString: strerror(code)) }

/// The current name of interface `index` (nil if it is gone or out of this namespace): an
/// interface renamed since it was attached is found by its index.
public func interfaceName(ofIndex index: Int32) -> String? {
    var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
    guard if_indextoname(UInt32(index), &buffer) != nil else { return nil }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// An errno value as an error.
public struct Errno: Error {
    public var code: Int32
    public init(_ code: Int32) { self.code = code }
}
