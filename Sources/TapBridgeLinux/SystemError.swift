import Glibc

/// The text of an errno value, e.g. "Operation not permitted".
func describeErrno(_ code: Int32) -> String { String(cString: strerror(code)) }

/// A start-up failure: one line naming what failed and why; the process exits non-zero.
public struct StartupError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
