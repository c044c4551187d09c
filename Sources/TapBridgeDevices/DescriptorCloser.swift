import Dispatch
import Glibc

/// Closes port descriptors off the event loop.
///
/// Closing the last descriptor of a TAP unregisters its interface, and the kernel waits for
/// RCU grace periods before it returns (14-40 ms a TAP here): done inside the loop, every
/// `port del` (and every port added after one) stalled forwarding for as long. A serial queue
/// closes them instead. `port add` of a name whose TAP is still being closed waits for that
/// close first, so a TAP removed and added again finds the old one gone, as it would have;
/// adding any other name does not wait.
public enum DescriptorCloser {
    static let queue = DispatchQueue(label: "tapbridge.close")
    static let state = DispatchQueue(label: "tapbridge.close.state")
    nonisolated(unsafe) static var closing: [String: Int] = [:]

    /// Closes `fd` soon, on another thread; `interface`: the TAP interface it holds, which
    /// goes away with it.
    public static func close(_ fd: Int32, interface: String? = nil) {
        if let interface { state.sync { closing[interface, default: 0] += 1 } }
        queue.async {
            _ = Glibc.close(fd)
            if let interface {
                state.sync {
                    closing[interface, default: 1] -= 1
                    if closing[interface] == 0 { closing[interface] = nil }
                }
            }
        }
    }

    /// Whether the interface called `name` is being closed.
    public static func isPending(_ name: String) -> Bool { state.sync { closing[name] != nil } }

    /// Returns once the interface called `name` is no longer being closed.
    public static func finishPending(_ name: String) {
        if isPending(name) { queue.sync {} }
    }
}
