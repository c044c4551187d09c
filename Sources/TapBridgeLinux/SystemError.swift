import Glibc

/// The text of an errno value, e.g. "Operation not permitted".
func describeErrno(_ code: Int32) -> String { String(cString: strerror(code)) }

/// An errno value as an error.
struct Errno: Error {
    var code: Int32
    init(_ code: Int32) { self.code = code }
}
