import Chunking
import SyncSystem
import Wire

/// Sends chunks of local files: reads each one, checks it still matches its id, and queues it as a chunk-data
/// frame, compressed when that pays. One per sending thread: it owns the compressors.
public final class ChunkSender {
    /// zlib level 6 for the first `tightBudget` bytes of a session, level 1 after that: a small transfer (an edit,
    /// an appended log) is compressed as hard as rsync -z does, and a bulk transfer is not slowed to 12-26 MB/s
    /// per core (level 6 on CSV here; level 1 runs at 50-136 MB/s for 11% less gain). 2 MB holds the compare
    /// bench's edit (1.1 MB) and costs a fast link at most 0.2 s.
    /// Made when first used: a session that sends no chunk (a store push's, whose host reads the store) costs no
    /// zlib state (each compressor holds about 1 MB; 100 hosts took 200 MB of them).
    private lazy var tight = ChunkCompressor(level: 6)
    private lazy var fast = ChunkCompressor(level: 1)
    private static let tightBudget = 2 << 20
    private var bytesSeen = 0
    private var policy = CompressionPolicy()
    private let compression: Bool
    /// How fast the link carries what is written to it (`ByteStream.drainRate`), when that can be seen. Set, bulk
    /// data (past the first 2 MB) is compressed only while zlib runs faster than the link carries bytes:
    /// compression runs on the sending thread, so a link faster than zlib would wait for it. On loopback SSH the
    /// compare project's first push took 3.7-4.3 s compressing and 2.6-2.7 s not (Bench/RESULTS.md).
    public var linkRate: (() -> Double?)?
    /// Past the tight budget, whether zlib keeps ahead of the link, and the chunks it was tried on since it
    /// fell behind (every `probeEvery`th still is, so its speed on the data at hand stays known).
    private var bulkCompresses = true
    private var skippedSinceProbe = 0
    /// Whether a bulk chunk has been judged yet (the first verdict is traced, then each change).
    private var judged = false
    public static let probeEvery = 16

    /// `compress` false sends every chunk raw (a link faster than zlib; see `worthCompressing`).
    public init(compress: Bool = true, linkRate: (() -> Double?)? = nil) {
        compression = compress
        self.linkRate = linkRate
    }

    /// Sets `bulkCompresses` from what has been measured: level 1's speed on this session's data against the
    /// link's.
    /// - A link whose rate is unknown has never had a backlog: it takes bytes faster than they come, so waiting
    ///   for zlib only slows it. Raw, then, until it backs up.
    /// - A backed-up link with level 1's speed unknown: compressed, to learn it (1 MiB of deflates).
    /// - Both known: compressed while zlib is the faster, and compressed again only once it is a quarter faster,
    ///   so that two rates close to each other do not flip the choice chunk by chunk.
    private func judgeBulk() {
        guard let linkRate else { return }
        let link = linkRate()
        let zlib = fast.speed
        let compresses: Bool
        if let link, let zlib { compresses = zlib > (bulkCompresses ? link : link * 1.25) } else { compresses = link != nil }
        if compresses != bulkCompresses || !judged {
            judged = true
            bulkCompresses = compresses
            skippedSinceProbe = 0
            Trace.mark("compression: \(compresses ? "on" : "off") for bulk data (zlib \(Self.megabytes(zlib)), link \(Self.megabytes(link)))")
        }
    }

    private static func megabytes(_ rate: Double?) -> String { rate.map { "\(Int($0 / 1e6)) MB/s" } ?? "unknown" }

    /// Queues `chunk` (number `index` of file `op`) read from `file`, straight into the writer's buffer. Returns
    /// false, sending nothing, when the file no longer holds those bytes: it changed since it was chunked.
    public func send(_ chunk: ChunkRef, index: UInt32, op: UInt32, from file: FileDescriptor, to writer: FrameWriter) throws -> Bool {
        try writer.sendChunk(op: op, index: index, rawLength: chunk.length) { room in
            let n = try file.read(into: room, at: chunk.offset)
            let bytes = UnsafeRawBufferPointer(room)
            guard n == Int(chunk.length), ChunkID(hashing: bytes) == chunk.id else { return .nothing }
            return compressed(chunk, op: op, bytes: bytes).map { .compressed($0) } ?? .raw
        }
    }

    /// The chunks of file `op` that follow are of a file named `name` (its last component): its type may say
    /// they are not worth compressing (`CompressionHint`).
    public func begin(op: UInt32, name: some BidirectionalCollection<UInt8>) { policy.begin(op: op, name: name) }

    /// Queues `chunk` from `bytes`, which hold it as it was read when it was hashed (so it matches its id).
    public func send(_ chunk: ChunkRef, index: UInt32, op: UInt32, bytes: UnsafeRawBufferPointer, to writer: FrameWriter) throws {
        if let packed = compressed(chunk, op: op, bytes: bytes) {
            try packed.withUnsafeBytes { try writer.sendChunk(op: op, index: index, compressed: true, rawLength: chunk.length, bytes: $0) }
        } else {
            try writer.sendChunk(op: op, index: index, compressed: false, rawLength: chunk.length, bytes: bytes)
        }
    }

    /// `bytes` (chunk `chunk` of file `op`) compressed, when this session compresses it and that pays; nil to send
    /// it raw. Counts it toward the session's bytes either way.
    private func compressed(_ chunk: ChunkRef, op: UInt32, bytes: UnsafeRawBufferPointer) -> [UInt8]? {
        bytesSeen += bytes.count
        let bulk = bytesSeen > Self.tightBudget
        var tries = compression
        if tries && bulk && linkRate != nil {
            judgeBulk()
            if !bulkCompresses {
                skippedSinceProbe += 1
                if skippedSinceProbe >= Self.probeEvery { skippedSinceProbe = 0 } else { tries = false }
            }
        }
        guard tries else { return nil }
        return policy.compress(bytes, op: op, offset: chunk.offset, with: bulk ? fast : tight)
    }
}

/// Where the next chunk goes when a session sends over several streams: the writer with the fewest bytes waiting
/// to go out, `main` on a tie. Both sides choose so: the client for a push, the agent for a pull.
public func leastLoaded(main: FrameWriter, waiting mainWaiting: Int, others: [(writer: FrameWriter, waiting: Int)]) -> FrameWriter {
    var best = main
    var least = mainWaiting
    for other in others where other.waiting < least {
        least = other.waiting
        best = other.writer
    }
    return best
}

/// Serves chunks read from files of a tree, one file open at a time (a session asks for a file's chunks
/// together): the client's push for chunks it no longer holds in memory, the agent's pull for every chunk. Each
/// chunk is re-hashed as it is read (`ChunkSender`), so a file that changed since it was chunked is caught.
public final class FileChunkSource {
    public enum Outcome {
        case sent
        /// The file no longer holds the chunk: it changed since it was chunked. Nothing was sent.
        case changed
        /// The file cannot be opened. Nothing was sent.
        case unreadable(Error)
    }
    private let tree: Tree
    private var open: (op: UInt32, fd: FileDescriptor)?
    /// Chunks read from files so far.
    public private(set) var chunksRead = 0

    public init(tree: Tree) { self.tree = tree }

    /// Sends `chunk` (number `index` of file `op`, at `path`) by `sender` to `writer`.
    public func send(_ chunk: ChunkRef, index: UInt32, op: UInt32, path: RelativePath, by sender: ChunkSender,
                     to writer: FrameWriter) throws -> Outcome {
        let fd: FileDescriptor
        if let open, open.op == op { fd = open.fd } else {
            open = nil
            do { fd = try tree.openForReading(path) } catch { return .unreadable(error) }
            open = (op, fd)
        }
        chunksRead += 1
        return try sender.send(chunk, index: index, op: op, from: fd, to: writer) ? .sent : .changed
    }
}
