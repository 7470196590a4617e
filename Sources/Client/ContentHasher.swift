import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncRules
import SyncSystem
import Transport
import Wire

/// Hashes the files a push has to identify, in push order, on a thread of its own, so that reading and chunking
/// overlap with connecting and sending instead of preceding them. Each result is handed over once (the sender
/// keeps it), and the records go to the stat cache in batches as they are made, so a push of 100k new files
/// does not hold them all twice.
final class ContentHasher: @unchecked Sendable {  // what the hasher thread and the sender share is in `shared` (Locked)
    private let project: Project
    private let state: LocalDatabase
    /// The files to hash: their path and stat only (a first push lists every file of the project here).
    private let entries: [(op: Int, path: RelativePath, stat: FileStat)]
    /// What the hasher thread and the sender share.
    private struct Shared {
        var results: [Int: Hashing] = [:]
        /// The file being streamed, cancelled by `stop`.
        var streaming: FileStream?
        var finished = false
        var cancelled = false
        /// Bytes of small files kept with their results so the sender need not read them again, at most
        /// `keptLimit` at once (beyond it a file is read again when sent).
        var keptBytes = 0
    }
    private let shared = Locked(Shared())
    /// Which files larger than what goes unasked are cut while they are sent (`FileStream`); nil when none are
    /// (the push does not read the local tree, or a store serves its chunks).
    private let streams: ((LocalEntry) -> Bool)?
    /// The buffers streamed files are read into (8 MiB each): a few are in use at once (the sender's kept parts
    /// and the stream's queue, 48 MiB), and idle ones are kept for the next part.
    private lazy var buffers = ReadBufferPool(size: max(8 << 20, 4 * project.chunking.maxSize), keep: 8)
    private static let saveBatch = 4096
    private static let keptLimit = 64 << 20
    /// Every file small enough to go with its data unasked is kept, so that its bytes are read once.
    static let keepFilesUpTo = Int(PushPipeline.eagerLimit)

    /// A file's content, and its bytes when it is small and was read whole.
    struct Hashed {
        var file: CachedFile
        var bytes: [UInt8]?
    }

    /// What the sender gets for a file: its content, or a stream of it.
    enum Hashing {
        case done(Result<Hashed, ScanWarning>)
        case streaming(FileStream)
    }

    /// `ops` indices whose file entries have no content yet.
    init(project: Project, state: LocalDatabase, ops: [PushOperation], streams: ((LocalEntry) -> Bool)? = nil) {
        self.streams = streams
        self.project = project
        self.state = state
        var list: [(Int, RelativePath, FileStat)] = []
        for (index, op) in ops.enumerated() {
            if case .file(let e, _) = op, e.content == nil { list.append((index, e.path, e.stat)) }
        }
        entries = list
    }

    func start() throws {
        try startDetachedThread(name: "hasher") { [self] in
            let chunker = FileChunker(project.chunking)
            var unsaved: [CachedFile] = []
            for (op, path, stat) in entries {
                let entry = LocalEntry(path: path, stat: stat, content: nil, linkTarget: nil)
                if shared.withLock({ $0.cancelled }) { break }
                if entry.stat.size > PushPipeline.eagerLimit, streams?(entry) == true,
                   let fd = try? project.tree.openForReading(entry.path), FileChunker.isDense(fd) {
                    let stream = FileStream()
                    let stop = shared.withLock { shared in
                        shared.results[op] = .streaming(stream)
                        shared.streaming = stream
                        return shared.cancelled
                    }
                    if stop { stream.cancel() }
                    // Saved by the sender, which has the chunk list (`FileStream.End.whole`).
                    stream.finish(LocalScanner.hashStreaming(entry, fd, with: chunker, pool: buffers, into: stream))
                    shared.withLock { $0.streaming = nil }
                    continue
                }
                let keep = shared.withLock { $0.keptBytes < Self.keptLimit ? Self.keepFilesUpTo : 0 }
                let result = LocalScanner.hash(entry, in: project, with: chunker, keepingUpTo: keep).map { Hashed(file: $0.file, bytes: $0.bytes) }
                if case .success(let hashed) = result { unsaved.append(hashed.file) }
                shared.withLock { shared in
                    shared.results[op] = .done(result)
                    if case .success(let hashed) = result { shared.keptBytes += hashed.bytes?.count ?? 0 }
                }
                if unsaved.count >= Self.saveBatch {
                    // The stat cache is an optimisation: a failed write only costs hashing again next time.
                    try? state.saveFiles(unsaved)
                    unsaved.removeAll(keepingCapacity: true)
                }
            }
            try? state.saveFiles(unsaved)
            shared.withLock { $0.finished = true }
        }
    }

    /// Saves a streamed file in the stat cache, its chunk list filled in by the sender; a failure only costs
    /// hashing it again next time. (The cache is a queue of its own: the hasher's thread may be saving too.)
    func saveStreamed(_ file: CachedFile) { try? state.saveFiles([file]) }

    /// The content of the file of operation `op`, waiting for it when needed; asked for once per operation.
    func result(for op: Int) -> Hashing {
        shared.withLock(when: { $0.results[op] != nil || $0.finished }) { shared in
            let result = shared.results.removeValue(forKey: op) ?? .done(.failure(ScanWarning(path: "?", message: "not hashed")))
            if case .done(.success(let hashed)) = result { shared.keptBytes -= hashed.bytes?.count ?? 0 }
            return result
        }
    }

    /// Stops hashing after the current file (a file being streamed is cut short) and waits until what was hashed
    /// is in the stat cache.
    func stop() {
        let stream = shared.withLock { shared in
            shared.cancelled = true
            return shared.streaming
        }
        stream?.cancel()
        shared.withLock(when: { $0.finished }) { _ in }
    }
}
