#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Placement
import SyncSystem
import Testing

/// The leases of build sessions (`.syncd/sessions/`).
struct BuildSessionTests {
    /// A lease still being made (`<id>.new`, before its session locks and names it) is another live session's:
    /// a session looking for dead ones leaves it, and removes one only once it is a minute old (its maker died).
    @Test func aLeaseBeingMadeIsLeftAlone() throws {
        let dir = NSTemporaryDirectory() + "syncd-sessions-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let making = dir + "/0123456789abcdef.new"
        #expect(FileManager.default.createFile(atPath: making, contents: Data()))
        let session = try BuildSession(sessionsIn: try FileDescriptor.open(dir, flags: O_RDONLY | O_DIRECTORY), shown: dir)
        session.findDeadSessions()
        #expect(FileManager.default.fileExists(atPath: making), "a lease being made was removed under its session")
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -120)], ofItemAtPath: making)
        session.findDeadSessions()
        #expect(!FileManager.default.fileExists(atPath: making), "a lease its maker never named stays")
    }
}
