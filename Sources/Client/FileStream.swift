import Chunking
import Foundation
import LocalState
import ProjectScan
import SyncRules
import SyncSystem

/// A large file cut while it is sent, so that its bytes are read once: the hasher thread puts each run of chunks
/// with the bytes they were cut from, and the sender takes them in order, lists them to the agent and keeps the
/// bytes until the agent has said what it lacks. The hasher waits while `aheadLimit` bytes wait to be taken.
final class FileStream: Sendable {
    struct Batch {
        /// Offsets from the file's start.
        var chunks: [ChunkRef]
        /// The buffer the file was read into, and where in it the bytes of `chunks` are.
        var buffer: ReadBuffer
        var range: Range<Int>
    }

    /// How the hashing of a streamed file ended.
    enum End {
        /// Read whole and unchanged: its stat, size and digest, with an empty chunk list: the sender has the
        /// list from the batches, puts it in, and saves the file in the stat cache (`ContentHasher.saveStreamed`),
        /// so that a 16 GiB file's list (8 MB) is held once, not by the hasher as well.
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
    private enum Item {
        case batch(Batch)
        case end(End)
    }
    private let queue = BoundedQueue<Item>(limit: aheadLimit) { item in
        if case .batch(let batch) = item { return batch.range.count }
        return 0
    }
    private let wake = Locked<(() -> Void)?>(nil)

    /// Called (on the hasher's thread, holding no lock of the stream's) after each batch and at the end.
    func onReady(_ wake: @escaping () -> Void) { self.wake.withLock { $0 = wake } }

    /// Waits while the sender is `aheadLimit` behind; false once the stream was cancelled.
    func put(_ batch: Batch) -> Bool {
        guard queue.put(.batch(batch)) else { return false }
        wake.current?()
        return true
    }

    package func finish(_ end: End) {
        queue.put(.end(end))
        wake.current?()
    }

    /// The sender wants nothing more of this file: the hasher stops at its next batch.
    func cancel() { queue.discard() }

    func next() -> Next {
        switch queue.poll() {
        case .batch(let batch)?: return .batch(batch)
        case .end(let end)?: return .end(end)
        case nil: return .nothingYet
        }
    }

    /// A batch or the end waits to be taken.
    var isReady: Bool { !queue.isEmpty }
}

extension LocalScanner {
    private struct StreamCancelled: Error {}

    /// Cuts `entry`'s file (open as `fd`, without holes) into `stream` as it reads it, into buffers of `pool`.
    static func hashStreaming(_ entry: LocalEntry, _ fd: FileDescriptor, with chunker: FileChunker, pool: ReadBufferPool,
                              into stream: FileStream) -> FileStream.End {
        do {
            // The sender keeps the list it was given, and fills it in at the end (`FileStream.End.whole`).
            let content = try chunker.chunkStreaming(fd, pool: pool, keepingChunks: false) { chunks, buffer, range in
                guard stream.put(FileStream.Batch(chunks: chunks, buffer: buffer, range: range)) else { throw StreamCancelled() }
            }
            let after = try fd.stat()
            guard after.sameContentIdentity(as: entry.stat) else { return .changed }
            return .whole(CachedFile(path: entry.path, stat: after, digest: content.digest, chunks: [], cachedAtNanos: wallClockNanos()))
        } catch is StreamCancelled {
            return .failed("cancelled")
        } catch {
            return .failed("cannot read \(entry.path): \(error)")
        }
    }
}
