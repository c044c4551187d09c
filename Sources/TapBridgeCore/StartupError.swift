/// A start-up failure: one line naming what failed and why; the process exits non-zero.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
