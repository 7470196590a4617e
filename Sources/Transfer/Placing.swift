import Chunking
import Placement
import SyncSystem

// Placing a received file, the same way in both directions: sealed (its data, mode and mtime written), handed to
// `DurableBatches` to be made durable, and renamed into place only if its target is still what the decision saw.

extension DurableBatches {
    /// Seals a complete file and hands it over to be made durable as operation `op`; its rename waits for that.
    /// The file is closed (suspended) either way: `DurableBatches` keeps a descriptor of its own where it needs one.
    public func add(sealing assembly: FileAssembly, op: UInt32, permissions: UInt32, mtimeNanos: Int64) throws {
        let alone = syncsAlone(size: assembly.size, device: assembly.device)
        let fd = try assembly.seal(permissions: permissions, mtimeNanos: mtimeNanos, startWriteback: alone)
        defer { assembly.suspend() }
        try add(op: op, fd: fd, size: assembly.size, device: assembly.device)
    }
}

extension FileAssembly {
    /// True when what is at a file's target now (`now`, nil: nothing) is what the decision to place it saw
    /// (`expected`): the same kind of thing, the same inode, unchanged since. Anything else was made or changed
    /// there meanwhile, and is not replaced.
    public static func targetUnchanged(_ now: FileStat?, since expected: FileStat?) -> Bool {
        guard let now, let expected else { return now == nil && expected == nil }
        return now.kind == expected.kind && now.sameContentIdentity(as: expected)
    }
}
