import Glibc

/// The text of an errno value, e.g. "Operation not permitted".
func describeErrno(_ code: Int32) -> String { String(cString: strerror(code)) }
