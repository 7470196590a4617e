#if canImport(Glibc)
import Glibc
#endif
import Chunking
import HTTP
import Store
import SyncSystem
import Wire

/// Reads chunks from the snapshot store for a push, on a few worker threads: ranged GETs of presigned pack URLs,
/// the chunks of one file that lie close together in a pack read in one request, each chunk inflated and checked
/// against its id. The owner (the session's thread) submits and collects completions, polling `completionFD` as
/// it does the fsync queue's; the workers touch only the shared queues, under the mutex.
final class StoreFetcher {
    struct Completion {
        let op: UInt32
        /// The chunks read (index in the file's chunk list, bytes), or why they could not be.
        let result: Result<[(index: Int, bytes: [UInt8])], StoreError>
    }

    private struct Job {
        let op: UInt32
        let pack: Int
        let range: Range<UInt64>
        let pieces: [(index: Int, chunk: StoreChunk)]
    }

    /// `s3://bucket/prefix`, for messages.
    let store: String
    private(set) var packs: [StorePack] = []
    private let mutex = Mutex()
    private let wake = Condition()
    private var jobs: [Job] = []
    private var completed: [Completion] = []
    private var stopping = false
    private var workers: [pthread_t] = []
    let completionFD: Int32
    private let signalFD: Int32
    /// Jobs submitted and not yet collected (owner thread only).
    private(set) var outstanding = 0
    /// Requests read no more than this, and chunks farther apart than `gap` are read separately.
    private static let maxRequest: UInt64 = 8 << 20
    private static let gap: UInt64 = 64 << 10

    init(store: String, workers count: Int = 4) throws {
        self.store = store
        let ends = try makePipe(nonBlocking: true)
        completionFD = ends.read
        signalFD = ends.write
        for _ in 0..<max(count, 1) { workers.append(try startThread { [self] in work() }) }
    }

    deinit {
        close(completionFD)
        close(signalFD)
    }

    func add(_ more: [StorePack]) {
        mutex.lock()
        packs += more
        mutex.unlock()
    }

    /// The store's name of a pack, for messages.
    func shown(_ pack: ChunkID) -> String { "\(store)/\(StoreKeys.pack(pack))" }

    /// Queues reads for chunks of file `op`; returns how many jobs that made (the completions to expect).
    func submit(op: UInt32, _ chunks: [(index: Int, chunk: StoreChunk)]) -> Int {
        var byPack: [UInt32: [(index: Int, chunk: StoreChunk)]] = [:]
        for piece in chunks { byPack[piece.chunk.pack, default: []].append(piece) }
        var made: [Job] = []
        for (pack, pieces) in byPack {
            let sorted = pieces.sorted { $0.chunk.offset < $1.chunk.offset }
            var group: [(index: Int, chunk: StoreChunk)] = []
            var start: UInt64 = 0, end: UInt64 = 0
            for piece in sorted {
                let pieceEnd = piece.chunk.offset + UInt64(piece.chunk.storedLength)
                if !group.isEmpty && (piece.chunk.offset > end + Self.gap || max(end, pieceEnd) - start > Self.maxRequest) {
                    made.append(Job(op: op, pack: Int(pack), range: start..<end, pieces: group))
                    group = []
                }
                if group.isEmpty { start = piece.chunk.offset; end = pieceEnd } else { end = max(end, pieceEnd) }
                group.append(piece)
            }
            if !group.isEmpty { made.append(Job(op: op, pack: Int(pack), range: start..<end, pieces: group)) }
        }
        mutex.lock()
        jobs += made
        wake.broadcast()
        mutex.unlock()
        outstanding += made.count
        return made.count
    }

    func takeCompletions() -> [Completion] {
        guard outstanding > 0 else { return [] }
        mutex.lock()
        let done = completed
        completed.removeAll(keepingCapacity: true)
        var sink: UInt8 = 0
        while read(completionFD, &sink, 1) == 1 {}
        mutex.unlock()
        outstanding -= done.count
        return done
    }

    /// Stops the workers after the jobs queued and waits for them.
    func shutdown() {
        mutex.lock()
        stopping = true
        wake.broadcast()
        mutex.unlock()
        for thread in workers { pthread_join(thread, nil) }
        workers.removeAll()
    }

    /// The `<Code>` of an S3 error answer.
    static func errorCode(_ body: [UInt8]) -> String? {
        guard let open = body.firstRange(of: Array("<Code>".utf8)),
              let close = body[open.upperBound...].firstRange(of: Array("</Code>".utf8)) else { return nil }
        return String(decoding: body[open.upperBound..<close.lowerBound], as: UTF8.self)
    }

    private func work() {
        var http: HTTPConnection?
        let decompressor = ChunkDecompressor()
        mutex.lock()
        while true {
            while jobs.isEmpty && !stopping { wake.wait(mutex) }
            if jobs.isEmpty { break }
            let job = jobs.removeFirst()
            let pack = job.pack < packs.count ? packs[job.pack] : nil
            mutex.unlock()
            let result = Result { () throws(StoreError) -> [(index: Int, bytes: [UInt8])] in
                guard let pack else { throw StoreError(object: store, reason: "chunk refers to pack \(job.pack), which the push did not name") }
                let object = shown(pack.digest)
                do {
                    if http == nil { http = try HTTPConnection() }
                    let response = try http!.perform(HTTPRequest(method: "GET", url: pack.url,
                                                                 headers: [("Range", "bytes=\(job.range.lowerBound)-\(job.range.upperBound - 1)")]))
                    var body = response.body
                    if response.status == 200 && body.count > Int(job.range.upperBound) {
                        body = Array(body[Int(job.range.lowerBound)..<Int(job.range.upperBound)])  // a server that sent it all
                    } else if response.status != 206 && response.status != 200 {
                        let code = Self.errorCode(response.body) ?? "HTTP \(response.status)"
                        throw StoreError(object: object, reason: "the store answered \(code) (HTTP \(response.status))")
                    }
                    guard body.count == Int(job.range.count) else {
                        throw StoreError(object: object, reason: "read \(body.count) bytes of \(job.range.count) at \(job.range.lowerBound) (truncated?); refused")
                    }
                    var out: [(index: Int, bytes: [UInt8])] = []
                    for piece in job.pieces {
                        let from = Int(piece.chunk.offset - job.range.lowerBound)
                        let stored = Array(body[from..<(from + Int(piece.chunk.storedLength))])
                        let entry = PackEntry(id: piece.chunk.id, offset: piece.chunk.offset, storedLength: piece.chunk.storedLength,
                                              rawLength: piece.chunk.rawLength, compressed: piece.chunk.compressed)
                        out.append((piece.index, try verifiedChunk(stored, entry: entry, object: object, decompressor: decompressor)))
                    }
                    return out
                } catch let e as StoreError {
                    throw e
                } catch {
                    throw StoreError(object: object, reason: "\(error)")
                }
            }
            mutex.lock()
            completed.append(Completion(op: job.op, result: result))
            if completed.count == 1 {
                var byte: UInt8 = 1
                _ = write(signalFD, &byte, 1)
            }
        }
        mutex.unlock()
    }
}
