#if canImport(Glibc)
import Glibc
#endif
import CSystemShims
import SyncSystem

/// Makes finished files durable before they are renamed into place, and the renames durable before they are
/// answered, without one journal commit per file.
///
/// A sealed file (written, checked, mode and mtime set, writeback started) is handed over with `add`. Small
/// files on the tree's own file system wait in a batch; the batch is made durable at once with one `syncfs` on a
/// worker thread when it reaches `Limits.files` files or `Limits.bytes` bytes, or as soon as the owner would wait
/// for input (`closeBatch`), so no answer waits for files that are not coming. A batch too small for `syncfs` to
/// pay, a large file, and a file on another file system (a mount inside the project) get an `fsync` of their own.
///
/// Once a file is durable the owner renames it and reports the rename with `renamed`. Its answer waits until the
/// rename is durable too: the next batch's `syncfs` covers every rename made before it started, and `flush` (when
/// the owner is idle, or at the end) syncs the directories touched, or the file system when they are many.
///
/// The guarantee: a final path only ever names a file whose data reached the disk, and an answer says applied
/// only for a rename that reached it. For the owner thread only.
public final class DurableBatches<Answer> {
    public struct Limits: Sendable {
        /// A batch is handed to `syncfs` at this many files...
        public var files = 2000
        /// ...or this many bytes.
        public var bytes: UInt64 = 256 << 20
        /// Files this large get an fsync of their own as soon as they are sealed: their data dominates, and
        /// syncing them alone keeps them independent of other writers.
        public var ownSyncBytes: UInt64 = 4 << 20
        /// A batch of fewer files is fsynced file by file (four at a time): one edit should not wait for all the
        /// dirty data on a busy file system.
        public var smallestBatch = 16
        /// Up to this many touched directories are fsynced one by one; more, and `flush` syncs the file system.
        public var directoriesPerFlush = 8
        public init() {}
    }

    /// What became durable since the last call.
    public struct Progress {
        /// Files whose data is durable (error 0) or failed to be made so (the errno): rename or discard them.
        public var durable: [(op: UInt32, error: Int32)] = []
        /// Answers whose renames are durable (error 0), or whose sync failed (the errno).
        public var answers: [(answer: Answer, error: Int32)] = []
        public var isEmpty: Bool { durable.isEmpty && answers.isEmpty }
    }

    private struct Batch {
        var files: [UInt32]
        var answers: [Answer]
    }

    public let limits: Limits
    private let flushes: FlushQueue
    /// The tree's root: its file system is the one `syncfs` covers.
    private let fileSystem: FileDescriptor
    private let device: UInt64
    /// Small files waiting to be synced together, and their bytes.
    private var filling: [UInt32] = []
    private var fillingBytes: UInt64 = 0
    /// Descriptors kept (duplicated) for files fsynced alone, or that may be: the first files of a batch that
    /// may stay small. Closed once their fsync completes, or when the batch grows past `smallestBatch`.
    private var kept: [UInt32: FileDescriptor] = [:]
    /// Renames done whose answers wait for durability, and the directories they touched: kept open only while
    /// they are few enough to be fsynced one by one (`manyDirectories` once they are not: then `flush` syncs the
    /// file system, and no descriptor is held for them).
    private var renames: [Answer] = []
    private var directories: [[UInt8]: FileDescriptor] = [:]
    private var manyDirectories = false
    /// `syncfs` jobs in flight, by token (per-file fsyncs use the operation id, below 2^32).
    private var batches: [UInt64: Batch] = [:]
    private var nextBatch: UInt64 = 1 << 32
    /// Batches made durable with one `syncfs`, and files fsynced alone (for benches and tests).
    public private(set) var batchesSynced = 0
    public private(set) var filesSyncedAlone = 0

    public init(fileSystem: FileDescriptor, limits: Limits = Limits(), workers: Int = 4) throws {
        self.fileSystem = fileSystem
        self.limits = limits
        device = try fileSystem.stat().device
        flushes = FlushQueue(workers: workers)
    }

    /// Stops the workers after what is queued.
    public func shutdown() { flushes.shutdown() }

    /// Readable while completions wait.
    public var completionFD: Int32 { flushes.completionFD }
    /// Syncs in flight.
    public var outstanding: Int { flushes.outstanding }
    /// True when files wait in a batch not yet handed over.
    public var hasOpenBatch: Bool { !filling.isEmpty }
    /// Renames whose answers wait and that no sync in flight covers yet.
    public var waitingRenames: Int { renames.count }

    /// True when a file of `size` bytes on `fileDevice` gets an fsync of its own rather than a place in a batch.
    public func syncsAlone(size: UInt64, device fileDevice: UInt64) -> Bool {
        size >= limits.ownSyncBytes || fileDevice != device
    }

    /// A sealed file, open as `fd` (which the caller may close once this returns), `size` bytes, on `device`.
    public func add(op: UInt32, fd: FileDescriptor, size: UInt64, device fileDevice: UInt64) throws {
        if syncsAlone(size: size, device: fileDevice) {
            try syncAlone(op, fd)
            return
        }
        filling.append(op)
        fillingBytes += size
        if filling.count < limits.smallestBatch {
            kept[op] = try duplicate(fd)
        } else if filling.count == limits.smallestBatch {
            for earlier in filling { kept.removeValue(forKey: earlier)?.close() }
        }
        if filling.count >= limits.files || fillingBytes >= limits.bytes { closeBatch() }
    }

    /// Hands the files waiting to the workers: one `syncfs` for a batch (which also covers every rename made so
    /// far), an fsync each for a small one.
    public func closeBatch() {
        guard !filling.isEmpty else { return }
        defer {
            filling.removeAll(keepingCapacity: true)
            fillingBytes = 0
        }
        if filling.count < limits.smallestBatch {
            for op in filling {
                guard let fd = kept[op] else { continue }
                flushes.submit(token: UInt64(op), fd: fd.raw)
                filesSyncedAlone += 1
            }
            return
        }
        let token = nextBatch
        nextBatch += 1
        batches[token] = Batch(files: filling, answers: renames)
        renames.removeAll(keepingCapacity: true)
        directories.removeAll()
        manyDirectories = false
        flushes.submitFileSystemSync(token: token, fd: fileSystem.raw)
    }

    /// A rename (or another change of a directory: a delete, a symlink, a new directory) is done; `answer` goes
    /// out once it is durable. `directory` is the parent it changed, keyed by its path.
    public func renamed(_ answer: Answer, directory: (key: [UInt8], fd: FileDescriptor)?) {
        renames.append(answer)
        guard let directory, !manyDirectories, directories[directory.key] == nil else { return }
        if directories.count >= limits.directoriesPerFlush {
            manyDirectories = true
            directories.removeAll()
        } else {
            directories[directory.key] = directory.fd
        }
    }

    /// Completions ready now, without waiting.
    public func take() -> Progress { collect(flushes.takeCompletions()) }

    /// Blocks until a sync completes (returns at once when none is in flight).
    public func wait() -> Progress { collect(flushes.waitForCompletions()) }

    /// Makes the renames reported so far durable now, on this thread, and returns their answers: an fsync of
    /// each directory they touched, or one `syncfs` when they are many.
    public func flush() -> [(answer: Answer, error: Int32)] {
        guard !renames.isEmpty || !directories.isEmpty else { return [] }
        var error: Int32 = 0
        if manyDirectories {
            if Platform.syncFileSystem(fileSystem.raw) != 0 { error = errno }
        } else {
            for directory in directories.values where fsync(directory.raw) != 0 && error == 0 { error = errno }
        }
        directories.removeAll()
        manyDirectories = false
        let answers = renames.map { (answer: $0, error: error) }
        renames.removeAll(keepingCapacity: true)
        return answers
    }

    private func syncAlone(_ op: UInt32, _ fd: FileDescriptor) throws {
        let copy = try duplicate(fd)
        kept[op] = copy
        flushes.submit(token: UInt64(op), fd: copy.raw)
        filesSyncedAlone += 1
    }

    private func duplicate(_ fd: FileDescriptor) throws -> FileDescriptor {
        FileDescriptor(raw: try syscall("dup", path: fd.path) { dup(fd.raw) }, path: fd.path)
    }

    private func collect(_ done: [FlushQueue.Completion]) -> Progress {
        var progress = Progress()
        for completion in done {
            if completion.token < 1 << 32 {
                let op = UInt32(completion.token)
                kept.removeValue(forKey: op)?.close()
                progress.durable.append((op, completion.error))
            } else if let batch = batches.removeValue(forKey: completion.token) {
                batchesSynced += 1
                progress.answers += batch.answers.map { ($0, completion.error) }
                progress.durable += batch.files.map { ($0, completion.error) }
            }
        }
        return progress
    }
}
