import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncRules
import SyncSystem

/// A large file cut while it is sent, so that its bytes are read once: the hasher thread puts each run of chunks
/// with the bytes they were cut from, and the sender takes them in order, lists them to the agent and keeps the
/// bytes until the agent has said what it lacks. The hasher waits while `aheadLimit` bytes wait to be taken.
final class FileStream: @unchecked Sendable {  // `condition` guards everything
    struct Batch {
        /// Offsets from the file's start.
        var chunks: [ChunkRef]
        /// The buffer the file was read into, and where in it the bytes of `chunks` are.
        var buffer: ReadBuffer
        var range: Range<Int>
    }

    /// How the hashing of a streamed file ended.
    enum End {
        case whole(CachedFile)
        /// The file's stat changed while it was read: what was sent may mix two versions.
        case changed
        case failed(String)
    }

    enum Next {
        case batch(Batch)
        case end(End)
        case nothingYet
    }

    static let aheadLimit = 16 << 20
    private let condition = NSCondition()
    private var batches: [Batch] = []
    private var queuedBytes = 0
    private var end: End?
    private var cancelled = false
    private var wake: (() -> Void)?

    /// Called (on the hasher's thread, holding no lock of the stream's) after each batch and at the end.
    func onReady(_ wake: @escaping () -> Void) {
        condition.lock()
        self.wake = wake
        condition.unlock()
    }

    /// Waits while the sender is `aheadLimit` behind; false once the stream was cancelled.
    func put(_ batch: Batch) -> Bool {
        condition.lock()
        while queuedBytes >= Self.aheadLimit && !cancelled { condition.wait() }
        if cancelled {
            condition.unlock()
            return false
        }
        batches.append(batch)
        queuedBytes += batch.range.count
        let wake = self.wake
        condition.unlock()
        wake?()
        return true
    }

    package func finish(_ end: End) {
        condition.lock()
        self.end = end
        let wake = self.wake
        condition.unlock()
        wake?()
    }

    /// The sender wants nothing more of this file: the hasher stops at its next batch.
    func cancel() {
        condition.lock()
        cancelled = true
        batches.removeAll()
        queuedBytes = 0
        condition.broadcast()
        condition.unlock()
    }

    func next() -> Next {
        condition.lock()
        defer { condition.unlock() }
        if !batches.isEmpty {
            let batch = batches.removeFirst()
            queuedBytes -= batch.range.count
            condition.broadcast()
            return .batch(batch)
        }
        return end.map { .end($0) } ?? .nothingYet
    }

    /// A batch or the end waits to be taken.
    var isReady: Bool {
        condition.lock()
        defer { condition.unlock() }
        return !batches.isEmpty || end != nil
    }
}

extension LocalScanner {
    private struct StreamCancelled: Error {}

    /// Cuts `entry`'s file (open as `fd`, without holes) into `stream` as it reads it, into buffers of `pool`.
    static func hashStreaming(_ entry: LocalEntry, _ fd: FileDescriptor, with chunker: FileChunker, pool: ReadBufferPool,
                              into stream: FileStream) -> FileStream.End {
        do {
            let content = try chunker.chunkStreaming(fd, pool: pool) { chunks, buffer, range in
                guard stream.put(FileStream.Batch(chunks: chunks, buffer: buffer, range: range)) else { throw StreamCancelled() }
            }
            let after = try fd.stat()
            guard after.sameContentIdentity(as: entry.stat) else { return .changed }
            return .whole(CachedFile(path: entry.path, stat: after, digest: content.digest, chunks: content.chunks,
                                     cachedAtNanos: wallClockNanos()))
        } catch is StreamCancelled {
            return .failed("cancelled")
        } catch {
            return .failed("cannot read \(entry.path): \(error)")
        }
    }
}
