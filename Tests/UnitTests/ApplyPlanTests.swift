import Chunking
import SnapshotFormat
import SyncSystem
import Testing
import Wire

/// `ApplyPlan.steps`: what a host applying a snapshot changes, given the base snapshot and the exceptions.
struct ApplyPlanTests {
    private func file(_ path: String, _ digest: UInt64, mode: UInt32 = 0o644, mtime: Int64 = 1) throws -> ManifestEntry {
        ManifestEntry(path: try RelativePath(path), kind: .file, mode: mode, mtimeNanos: mtime, size: 1, digest: ChunkID(low: digest, high: 0),
                      chunks: [ChunkRef(id: ChunkID(low: digest, high: 0), offset: 0, length: 1)])
    }

    private func directory(_ path: String) throws -> ManifestEntry {
        ManifestEntry(path: try RelativePath(path), kind: .directory, mode: 0o755, mtimeNanos: 0, size: 0)
    }

    private func steps(new: [ManifestEntry], base: [ManifestEntry], exceptions: [(path: [UInt8], state: PathState?)] = []) throws -> [String] {
        var out: [String] = []
        try ApplyPlan.steps(new: new, base: base, exceptions: exceptions) { step in
            out.append("\(step.path) \(step.entry.map { "\(ApplyPlan.state(of: $0))" } ?? "delete") over \(step.base)")
        }
        return out
    }

    @Test func onlyWhatDiffersFromTheBaseIsAStep() throws {
        let base = [try directory("a"), try file("a/1", 1), try file("a/2", 2), try file("b", 3), try file("c", 4)]
        let new = [try directory("a"), try file("a/1", 1), try file("a/2", 9), try file("b", 3, mode: 0o755), try file("d", 5)]
        let d9 = ChunkID(low: 9, high: 0).hex.prefix(12), d3 = ChunkID(low: 3, high: 0).hex.prefix(12)
        let d4 = ChunkID(low: 4, high: 0).hex.prefix(12), d5 = ChunkID(low: 5, high: 0).hex.prefix(12)
        let d2 = ChunkID(low: 2, high: 0).hex.prefix(12)
        #expect(try steps(new: new, base: base) == [
            "a/2 file \(d9) over file \(d2)",
            "b file \(d3) over file \(d3)",  // its mode changed
            "c delete over file \(d4)",
            "d file \(d5) over absent",
        ])
        #expect(try steps(new: new, base: []).count == new.count, "a first push makes everything")
        #expect(try steps(new: new, base: new).isEmpty)
    }

    @Test func exceptionsReplaceTheBaseOrLeaveAPathAlone() throws {
        let base = [try file("a", 1), try file("b", 2), try file("c", 3)]
        let new = [try file("a", 1), try file("b", 2)]
        let d1 = ChunkID(low: 1, high: 0)
        // a: the host's record says absent (a failed push), so it is made; c: ignored now, left alone; e: recorded
        // only (a path the base never had), so it is deleted.
        let exceptions: [(path: [UInt8], state: PathState?)] = [(Array("a".utf8), .absent), (Array("c".utf8), nil),
                                                                (Array("e".utf8), .file(d1))]
        #expect(try steps(new: new, base: base, exceptions: exceptions) == [
            "a file \(d1.hex.prefix(12)) over absent",
            "e delete over file \(d1.hex.prefix(12))",
        ])
        // An exception that agrees with the snapshot is no step, whatever the base said.
        #expect(try steps(new: new, base: [], exceptions: [(Array("a".utf8), .file(d1)), (Array("b".utf8), .file(ChunkID(low: 2, high: 0)))]) == [])
    }

    @Test func listsOutOfPathOrderAreRefused() throws {
        #expect(throws: ProtocolError.self) { try steps(new: [try file("b", 1), try file("a", 2)], base: []) }
        #expect(throws: ProtocolError.self) { try steps(new: [], base: [], exceptions: [(Array("b".utf8), nil), (Array("a".utf8), nil)]) }
    }
}
