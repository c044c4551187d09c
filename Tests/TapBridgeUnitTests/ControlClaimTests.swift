import Foundation
import Glibc
@testable import TapBridgeDaemon
import TapBridgeControl
import Testing

/// A control path is claimed in one step: while one claim holds it nobody else gets it, and
/// once it is released (or its holder dies) the next one does; no lock file is left behind.
@Suite("Control path claims")
struct ControlClaimTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tb-claim-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path

    @Test func aHeldPathIsNotGivenTwiceAndIsFreeOnceReleased() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/lab.sock"
        var first = try ControlClaim.take(path)
        #expect(first != nil)
        let again = try ControlClaim.take(path)
        #expect(again == nil, "a held path was claimed again")
        first = nil
        let second = try ControlClaim.take(path)
        #expect(second != nil, "a released path could not be claimed")
        _ = second
    }

    @Test func aDeadHoldersLockIsTakenOver() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/lab.sock"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // a lock file left by a bridge that was killed: nobody holds its lock
        FileManager.default.createFile(atPath: path + ".lock", contents: nil)
        let claim = try ControlClaim.take(path)
        #expect(claim != nil)
        _ = claim
    }

    @Test func releasingLeavesNoLockFile() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/lab.sock"
        do { _ = try ControlClaim.take(path) }
        #expect(!FileManager.default.fileExists(atPath: path + ".lock"))
    }
}
