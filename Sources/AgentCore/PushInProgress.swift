import Chunking
import Wire
import SnapshotFormat
import SyncSystem

/// The state of one push on the agent: the files in flight, what is asked of the client and of the store, the
/// extra streams. Made new when a push begins (`AgentSession.open`), so nothing of one push is left for the next.
final class PushInProgress {
    typealias PendingFile = AgentSession.PendingFile

    /// The client sent `endOfOperations`.
    var ended = false

    /// Files sealed and waiting to be durable, by operation id.
    var sealed: [UInt32: PendingFile] = [:]

    var pending: [UInt32: PendingFile] = [:]

    /// Data frames still to come for files sent with `dataFollows`: taken while the file is being built, dropped
    /// once it is placed, unchanged or refused.
    var eagerFrames: [UInt32: Int] = [:]

    /// Streamed files given up (answered failed) after chunks of theirs were asked for: data still on its way
    /// for them is dropped.
    var givenUp: Set<UInt32> = []

    /// Chunks asked of the client and not yet come, by operation.
    var asked: [UInt32: Int] = [:]

    /// Set while the push waits only for chunks asked for by files that failed since; when the last of them came.
    var onlyDraining = false
    var lastArrivalNanos: UInt64 = 0

    /// A push that reads chunks from the snapshot store: the reader, and where each chunk is.
    var fetcher: StoreFetcher?

    var storeChunks: [ChunkID: StoreChunk] = [:]
    /// A push the agent works out itself from a snapshot in the store (`applySnapshot`): its answers are kept for
    /// the summary rather than sent one by one.
    var apply: ApplyRun?

    /// Reads from the store that failed without an answer worth checking (no connection, a stall, an error
    /// status); at `maxStoreFailures` the push stops reading from the store (`storeGivenUp`) and asks the client
    /// for everything instead.
    var storeFailures = 0
    var storeGivenUp = false
    /// Damaged chunks already reported to the client in this push.
    var reportedDamage: Set<ChunkID> = []

    /// The client expected another instance of this project (it was wiped or replaced since): every operation
    /// of this push is refused unapplied, since its bases describe a remote that is gone.
    var refusing = false

    var openAssemblies: [UInt32] = []

    /// The push's extra connections, once the client asked for them.
    var joinedStreams: JoinedStreams?

    /// The highest operation id of a file begun in this push: chunk data a joined stream brings for an id up to it
    /// whose file is no longer pending arrived after the file was given up or finished, and is dropped.
    var highestBegun: UInt32 = 0

    /// Set when this push added to the cache; only then can it have outgrown its bound.
    var cacheGrew = false

    init(refusing: Bool) { self.refusing = refusing }
}
