import Logging
import TapBridgeCore
import TapBridgeDevices
import TapBridgeOptions

/// Ports that come and go while the bridge runs. Each port is one entry of the engine's
/// registry (`PortRecord`); nothing here keeps a list of its own.
extension BridgeDaemon {
    func attachPort(_ spec: PortSpec) throws(StartupError) {
        try PortFactory.attach(spec, to: engine, offload: options.offload, defaultMTU: remotes?.innerMTU, decorate: decorate, mirror: mirrorInterface,
                               logger: logger)
    }

    /// A device failed (its interface deleted underneath, an error): its ports go, forwarding
    /// goes on between the others.
    func portFailed(_ device: any PortDevice, _ error: PortError) {
        let names = engine.ports(of: device).map { engine.name(of: $0) }.joined(separator: ", ")
        logger.error("port \(names): \(error.kind == .deviceRemoved ? "interface is gone" : "device failed") (\(error.operation): \(describeErrno(error.code))); port removed, forwarding continues between the others")
        engine.removeDevice(device)
        if let remotes, device === remotes.handle {
            remotes.isActive = false
            self.remotes = nil
            ports.alwaysPolled = nil
        }
    }
}
