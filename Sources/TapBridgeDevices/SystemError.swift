import Glibc

/// The text of an errno value, e.g. "Operation not permitted".
public func describeErrno(_ code: Int32) -> String { String(cString: strerror(code)) }

/// An errno value as an error.
public struct Errno: Error {
    public var code: Int32
    public init(_ code: Int32) { self.code = code }
}
